package node_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/shoaldb/shoal/internal/kv"
	tc "github.com/shoaldb/shoal/internal/testcluster"
)

// TestDiskFullRefusesIncomingReplica adds a replica on a node whose disk
// is below its reserve: the snapshot that would create it is refused (the
// sender retries), so the replica does not move in until space is freed;
// then it does, with the shard's data.
func TestDiskFullRefusesIncomingReplica(t *testing.T) {
	c := tc.Start(t, tc.Options{Nodes: 4, Shards: 4, Replicas: 3, CrashableFS: true, DiskReserveBytes: 64 << 20})
	ctx := ctxFor(t, 60*time.Second)
	if err := c.WaitForLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	// A shard with no replica on some node: that node gets the full disk.
	var shard, target uint64
	for _, d := range c.Shards {
		on := map[uint64]bool{}
		for _, r := range d.Replicas {
			on[r.NodeId] = true
		}
		for _, id := range c.NodeIDs() {
			if !on[id] {
				shard, target = d.ShardId, id
			}
		}
	}
	if shard == 0 {
		t.Fatal("every shard has a replica on every node")
	}
	// Some data for the snapshot to carry.
	leader, err := c.Leader(shard)
	if err != nil {
		t.Fatal(err)
	}
	var keys [][]byte
	for i := 0; len(keys) < 20; i++ {
		if k := []byte(fmt.Sprintf("k%d", i)); c.ShardOf(k) == shard {
			keys = append(keys, k)
			if _, err := leader.KV().Put(ctx, k, k, kv.PutOptions{}); err != nil {
				t.Fatal(err)
			}
		}
	}
	full := c.Node(target)
	full.FS().(*vfs.MemFS).TestingSetDiskUsage(vfs.DiskUsage{AvailBytes: 40 << 20, TotalBytes: 1 << 40})
	if err := tc.WaitFor(ctx, func() error {
		if s := full.Node().DiskSpace(); !s.Full || s.Exhausted {
			return fmt.Errorf("disk space %+v, want full but not exhausted", s)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}

	added := make(chan error, 1)
	go func() {
		_, err := c.AddLearner(ctx, shard, target)
		added <- err
	}()
	leaderFailed := func() error {
		n, err := c.Leader(shard)
		if err != nil {
			return err
		}
		if n.Store().Stats().SnapshotsFailed == 0 {
			return errors.New("no snapshot refused yet")
		}
		return nil
	}
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	defer wcancel()
	if err := tc.WaitFor(wctx, leaderFailed); err != nil {
		n, _ := c.Leader(shard)
		st, serr := full.Store().Status(shard)
		t.Fatalf("%v; leader stats %+v; full node stats %+v; its replica %+v %v", err, n.Store().Stats(), full.Store().Stats(), st, serr)
	}
	if st, err := full.Store().Status(shard); err == nil && st.Applied > 0 {
		t.Fatalf("the full node's new replica applied up to %d", st.Applied)
	}
	select {
	case err := <-added:
		t.Fatalf("learner caught up on a full disk (%v)", err)
	default:
	}

	full.FS().(*vfs.MemFS).TestingSetDiskUsage(vfs.DiskUsage{AvailBytes: 1 << 30, TotalBytes: 1 << 40})
	if err := <-added; err != nil {
		t.Fatalf("adding the replica once space is back: %v", err)
	}
	if got := full.Store().Stats().SnapshotsApplied; got == 0 {
		t.Fatal("the replica moved in without a snapshot")
	}
	for _, k := range keys {
		v, ok, err := full.KV().Get(ctx, k, kv.ReadOptions{Stale: true})
		if err != nil || !ok || string(v.Data) != string(k) {
			t.Fatalf("the new replica's %s: %q %v %v", k, v.Data, ok, err)
		}
	}
}

// TestDiskExhaustedFollowersElectAndServeReads stops a shard's leader while
// its two followers, caught up, are below half their disk reserve (they
// drop appends that carry data). They elect a leader between them, and
// its first entry, which is empty, must still be taken: a leader serves
// reads only once an entry of its term is committed.
func TestDiskExhaustedFollowersElectAndServeReads(t *testing.T) {
	c := tc.Start(t, tc.Options{Nodes: 3, Shards: 1, Replicas: 3, CrashableFS: true, DiskReserveBytes: 64 << 20})
	ctx := ctxFor(t, 60*time.Second)
	if err := c.WaitForLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	shard := c.Shards[0].ShardId
	leader, err := c.Leader(shard)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := leader.KV().Put(ctx, []byte("k"), []byte("v"), kv.PutOptions{}); err != nil {
		t.Fatal(err)
	}
	// Every replica has applied the write: nothing with data is left for
	// the followers to take.
	applied := leader.Store().Replicas()[0].Applied
	if err := tc.WaitFor(ctx, func() error {
		for _, n := range c.Nodes {
			if st, err := n.Store().Status(shard); err != nil || st.Applied < applied {
				return fmt.Errorf("node %d applied %d of %d (%v)", n.ID, st.Applied, applied, err)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	var followers []*tc.Node
	for _, n := range c.Nodes {
		if n != leader {
			followers = append(followers, n)
			n.FS().(*vfs.MemFS).TestingSetDiskUsage(vfs.DiskUsage{AvailBytes: 10 << 20, TotalBytes: 1 << 40})
		}
	}
	for _, n := range followers {
		if err := tc.WaitFor(ctx, func() error {
			if !n.Node().DiskSpace().Exhausted {
				return errors.New("not exhausted yet")
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}

	leader.Stop()
	if err := tc.WaitFor(ctx, func() error {
		l, err := c.Leader(shard)
		if err != nil {
			return err
		}
		rctx, cancel := context.WithTimeout(ctx, time.Second)
		defer cancel()
		v, ok, err := l.KV().Get(rctx, []byte("k"), kv.ReadOptions{})
		if err != nil {
			return err
		}
		if !ok || string(v.Data) != "v" {
			t.Fatalf("k = %q, %v on the new leader", v.Data, ok)
		}
		return nil
	}); err != nil {
		t.Fatalf("a read on the exhausted followers' new leader: %v", err)
	}
	// Writes are refused there: the new leader's own disk is below its
	// reserve.
	l, err := c.Leader(shard)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := l.KV().Put(ctx, []byte("k"), []byte("w"), kv.PutOptions{}); !errors.Is(err, kv.ErrDiskFull) {
		t.Fatalf("write on an exhausted leader: %v, want ErrDiskFull", err)
	}
}
