package node_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/client"
	"github.com/shoaldb/shoal/internal/faultfs"
	"github.com/shoaldb/shoal/internal/master"
	"github.com/shoaldb/shoal/internal/storage"
	tc "github.com/shoaldb/shoal/internal/testcluster"
)

// TestDiskStallFailsNode stalls one node's disk in the middle of a write:
// once a write has hung for MaxDiskStall the node fails (Err delivers
// ErrDiskStalled), stops heartbeating so that the master counts it down,
// and the shards it led elect leaders on the other nodes and take writes.
func TestDiskStallFailsNode(t *testing.T) {
	var disk *faultfs.FS
	c := tc.Start(t, tc.Options{
		Masters: 1, Nodes: 3, Shards: 8, CrashableFS: true,
		// The others keep the default, so that only the stalled disk fails.
		MaxDiskStall: func(i int) time.Duration {
			if i == 0 {
				return time.Second
			}
			return 0
		},
		WrapFS: func(i int, fs vfs.FS) vfs.FS {
			if i != 0 {
				return fs
			}
			disk = faultfs.New(fs)
			return disk
		},
		Master: func(cfg *master.Config) { cfg.NodeDownAfter = 2 * time.Second },
	})
	// Let the node's writes go before the cluster stops: Stop waits for
	// them.
	t.Cleanup(disk.Resume)
	ctx := ctxFor(t, 90*time.Second)
	if err := c.WaitPlaced(ctx); err != nil {
		t.Fatal(err)
	}
	cl, err := client.Open(ctx, c.MasterAddrs())
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	// One key per shard, written before the stall.
	keys := map[uint64][]byte{}
	for i := 0; len(keys) < 8; i++ {
		k := fmt.Appendf(nil, "key-%d", i)
		if _, ok := keys[c.ShardOf(k)]; !ok {
			keys[c.ShardOf(k)] = k
		}
	}
	put := func(k []byte, v string) error {
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		_, err := cl.Put(pctx, k, []byte(v))
		return err
	}
	for _, k := range keys {
		if err := tc.WaitFor(ctx, func() error { return put(k, "before") }); err != nil {
			t.Fatal(err)
		}
	}

	victim := c.Nodes[0]
	if victim.Node().Failure() != nil {
		t.Fatalf("node failed before its disk stalled: %v", victim.Node().Failure())
	}
	disk.Stall()
	stalledAt := time.Now()
	// Every shard has a replica on every node: any write makes the victim
	// write to its disk.
	go func() {
		for _, k := range keys {
			_ = put(k, "during")
		}
	}()
	select {
	case err := <-victim.Node().Err():
		if !errors.Is(err, storage.ErrDiskStalled) {
			t.Fatalf("node failed with %v, want ErrDiskStalled", err)
		}
		if d := time.Since(stalledAt); d < time.Second {
			t.Fatalf("node failed %v after the stall, before MaxDiskStall (1s)", d)
		}
		t.Logf("node failed %v after its disk stalled: %v", time.Since(stalledAt).Round(time.Millisecond), err)
	case <-ctx.Done():
		t.Fatalf("node did not fail; %d writes held by its disk", disk.Held())
	}
	if victim.Node().Failure() == nil {
		t.Fatal("Failure() is nil after Err delivered")
	}

	// The master hears nothing more from it and counts it down.
	if err := tc.WaitFor(ctx, func() error {
		st, err := c.ClusterState()
		if err != nil {
			return err
		}
		for _, n := range st.Nodes {
			if n.Id == victim.ID && n.State != shoalpb.NodeState_NODE_STATE_DOWN {
				return fmt.Errorf("node %d is %v", n.Id, n.State)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// Every shard takes writes without it: those it led elected leaders
	// on the other nodes.
	for shard, k := range keys {
		if err := tc.WaitFor(ctx, func() error { return put(k, "after") }); err != nil {
			t.Fatalf("shard %d: %v", shard, err)
		}
	}
	if disk.Held() == 0 {
		t.Fatal("the stalled disk holds no write: the node failed for another reason")
	}
}
