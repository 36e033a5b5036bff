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
