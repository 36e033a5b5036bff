package node_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/internal/kv"
	"github.com/shoaldb/shoal/internal/raftstore"
	tc "github.com/shoaldb/shoal/internal/testcluster"
)

// A replica created for a learner whose snapshot has not arrived has no
// data and no slots yet. A scan of it, stale or not, must fail rather than
// return an empty last page: SCAN would take the shard's range as done and
// skip its keys.
func TestScanOfReplicaWithoutData(t *testing.T) {
	c := tc.Start(t, tc.Options{Nodes: 4, Shards: 1, Replicas: 3,
		// The learner's snapshot (about 100 KiB) would take minutes.
		StoreOptions: func(_ uint64, o *raftstore.Options) { o.SnapshotBytesPerSec = 1 << 10 }})
	ctx := ctxFor(t, time.Minute)
	if err := c.WaitForLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	r := newRouter(c)
	value := make([]byte, 2<<10)
	for i := range 50 {
		if err := r.put(ctx, fmt.Appendf(nil, "key-%d", i), value); err != nil {
			t.Fatal(err)
		}
	}
	id := c.NextReplicaID()
	if _, err := c.ChangeReplicas(ctx, 1, func(*shoalpb.ShardDescriptor) []raftstore.ReplicaChange {
		return []raftstore.ReplicaChange{{Type: raftstore.AddLearner, NodeID: 4, ReplicaID: id}}
	}); err != nil {
		t.Fatal(err)
	}
	learner := c.Node(4)
	if err := tc.WaitFor(ctx, func() error {
		st, err := learner.Store().Status(1)
		if err != nil {
			return err
		}
		if st.Initialized {
			return errors.New("the learner got its snapshot: the test shows nothing")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	res, err := learner.KV().Scan(ctx, 1, 0, 16384, nil, 100, false, kv.ReadOptions{Stale: true})
	if err == nil {
		t.Fatalf("stale scan of a replica without data: %d keys, cursor %q and no error", len(res.Keys), res.Cursor)
	}
	sctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if res, err := learner.KV().Scan(sctx, 1, 0, 16384, nil, 100, false, kv.ReadOptions{}); err == nil {
		t.Fatalf("scan of a replica without data: %d keys, cursor %q and no error", len(res.Keys), res.Cursor)
	}
	// Every read checks Serving after it read the engine: a replica
	// without data, which is what a replica removed and created again
	// between a read's barrier and its read looks like, fails it.
	if err := learner.Store().Serving(1); !errors.Is(err, raftstore.ErrShardNotFound) {
		t.Fatalf("Serving of a replica without data: %v, want ErrShardNotFound", err)
	}
	if st, _ := learner.Store().Status(1); st.Initialized {
		t.Fatal("the learner got its snapshot during the test: it shows nothing")
	}
}
