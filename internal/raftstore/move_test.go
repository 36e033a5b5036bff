package raftstore_test

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/internal/keys"
	"github.com/shoaldb/shoal/internal/raftstore"
	tc "github.com/shoaldb/shoal/internal/testcluster"
)

// load writes n keys of size bytes to shard.
func load(ctx context.Context, t *testing.T, c *tc.Cluster, shard uint64, prefix string, n, size int) {
	t.Helper()
	v := make([]byte, size)
	for i := range n {
		k := keyInShard(c, shard, fmt.Sprintf("%s-%d", prefix, i))
		if _, err := c.Propose(ctx, shard, tc.PutCmd(k, v)); err != nil {
			t.Fatal(err)
		}
	}
}

func checkSame(ctx context.Context, t *testing.T, c *tc.Cluster, shard uint64, wantReplicas int) map[uint64]raftstore.Checksum {
	t.Helper()
	sums, err := c.Checksums(ctx, shard)
	if err != nil {
		t.Fatal(err)
	}
	if len(sums) != wantReplicas {
		t.Fatalf("shard %d has %d replicas with state, want %d: %v", shard, len(sums), wantReplicas, sums)
	}
	var first *raftstore.Checksum
	for node, s := range sums {
		if first == nil {
			first = &s
			continue
		}
		if s != *first {
			t.Fatalf("shard %d: replicas differ: node %d has %+v, another %+v", shard, node, s, *first)
		}
	}
	return sums
}

func onNodes(d *shoalpb.ShardDescriptor) map[uint64]shoalpb.ReplicaRole {
	out := map[uint64]shoalpb.ReplicaRole{}
	for _, r := range d.Replicas {
		out[r.NodeId] = r.Role
	}
	return out
}

// TestAddLearnerBySnapshotAndMove adds a learner to a shard whose log is
// truncated, so it can only catch up by snapshot, then moves a replica.
//
// It also checks that the store brackets both changes of the shard's data
// made outside Apply (the learner's snapshot, node 2's removal) with
// Options.BeforeDataReset: before the engine changes, and done after.
func TestAddLearnerBySnapshotAndMove(t *testing.T) {
	var mu sync.Mutex
	var resets []string
	var calls int            // BeforeDataReset calls whose done has not run
	probe := []byte("k-0-0") // the first key load writes
	c := tc.Start(t, tc.Options{Nodes: 4, Shards: 1, Replicas: 3, NewStateMachine: tc.NewRegisterSM, Logger: debugLogger(t),
		StoreOptions: func(node uint64, o *raftstore.Options) {
			o.MaxLogEntries = 50
			eng := o.Engine
			o.BeforeDataReset = func(start, end uint32) func() {
				_, before, _ := tc.ReadKey(eng.Reader(), probe)
				mu.Lock()
				calls++
				mu.Unlock()
				return func() {
					_, after, _ := tc.ReadKey(eng.Reader(), probe)
					mu.Lock()
					defer mu.Unlock()
					calls--
					resets = append(resets, fmt.Sprintf("node %d slots [%d,%d): %v -> %v", node, start, end, before, after))
				}
			}
		}})
	// sawReset waits for a bracket of BeforeDataReset and its done (the
	// store calls done after its other work for the change).
	sawReset := func(ctx context.Context, want string) {
		t.Helper()
		if err := tc.WaitFor(ctx, func() error {
			mu.Lock()
			defer mu.Unlock()
			if !slices.Contains(resets, want) {
				return fmt.Errorf("BeforeDataReset calls %q, want one %q", resets, want)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	ctx := ctxFor(t, 60*time.Second)
	if err := c.WaitForLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	load(ctx, t, c, 1, "k", 500, 100)
	// The logs were truncated: entries beyond the bound are gone.
	if err := tc.WaitFor(ctx, func() error {
		for _, n := range c.Nodes[:3] {
			if tr := n.Store().Stats().Truncations; tr == 0 {
				return fmt.Errorf("node %d has not truncated", n.ID)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.AddLearner(ctx, 1, 4); err != nil {
		t.Fatal(err)
	}
	if got := c.Node(4).Store().Stats().SnapshotsApplied; got == 0 {
		t.Fatal("learner caught up without a snapshot")
	}
	sawReset(ctx, fmt.Sprintf("node 4 slots [0,%d): false -> true", keys.SlotCount))
	checkSame(ctx, t, c, 1, 4)

	d, err := c.MoveReplica(ctx, 1, 2, 4)
	if err != nil {
		t.Fatal(err)
	}
	roles := onNodes(d)
	if len(roles) != 3 || roles[4] != shoalpb.ReplicaRole_REPLICA_ROLE_VOTER {
		t.Fatalf("after the move: %v", d)
	}
	if _, ok := roles[2]; ok {
		t.Fatalf("node 2 still in %v", d)
	}
	// Node 2 destroys its replica and its data.
	if err := tc.WaitFor(ctx, func() error {
		if _, err := c.Node(2).Store().Status(1); err == nil {
			return fmt.Errorf("node 2 still has the replica")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if v, ok, _ := tc.ReadKey(c.Node(2).Engine().Reader(), keyInShard(c, 1, "k-0")); ok {
		t.Fatalf("node 2 still holds data: %q", v)
	}
	sawReset(ctx, fmt.Sprintf("node 2 slots [0,%d): true -> false", keys.SlotCount))
	load(ctx, t, c, 1, "after", 20, 100)
	checkSame(ctx, t, c, 1, 3)
	// Every bracket is closed.
	if err := tc.WaitFor(ctx, func() error {
		mu.Lock()
		defer mu.Unlock()
		if calls != 0 {
			return fmt.Errorf("%d BeforeDataReset calls without their done", calls)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

func debugLogger(t *testing.T) *slog.Logger {
	if os.Getenv("SHOAL_TEST_DEBUG") == "" {
		return nil
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
}
