package node_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"syscall"
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
	var stalledAt time.Time
	testDiskFaultFailsNode(t, diskFault{
		maxStall: time.Second,
		inject: func(disk *faultfs.FS) {
			disk.Stall()
			stalledAt = time.Now()
		},
		heal: (*faultfs.FS).Resume,
		check: func(t *testing.T, disk *faultfs.FS, err error) {
			if !errors.Is(err, storage.ErrDiskStalled) {
				t.Fatalf("node failed with %v, want ErrDiskStalled", err)
			}
			if d := time.Since(stalledAt); d < time.Second {
				t.Fatalf("node failed %v after the stall, before MaxDiskStall (1s)", d)
			}
			t.Logf("node failed %v after its disk stalled: %v", time.Since(stalledAt).Round(time.Millisecond), err)
			if disk.Held() == 0 {
				t.Fatal("the stalled disk holds no write: the node failed for another reason")
			}
		},
	})
}

// TestDiskErrorFailsNode makes one node's disk fail the tables its
// flushes create with an I/O error: Pebble alone would retry for ever
// while the node's memtables fill and its writes stop; instead the node
// fails (Err delivers ErrDiskFailed), the master counts it down, and
// every shard takes writes without it.
func TestDiskErrorFailsNode(t *testing.T) {
	testDiskFaultFailsNode(t, diskFault{
		inject: func(disk *faultfs.FS) { disk.FailCreates(".sst", syscall.EIO) },
		heal:   (*faultfs.FS).Heal,
		// The nodes' memtables are 4 MiB (testcluster): these fill one
		// on every node, which then flushes it.
		value: bytes.Repeat([]byte("v"), 256<<10),
		check: func(t *testing.T, disk *faultfs.FS, err error) {
			if !errors.Is(err, storage.ErrDiskFailed) || !errors.Is(err, syscall.EIO) {
				t.Fatalf("node failed with %v, want ErrDiskFailed wrapping EIO", err)
			}
			if disk.Failed() == 0 {
				t.Fatal("no table creation failed: the node failed for another reason")
			}
			t.Logf("node failed: %v", err)
		},
	})
}

// diskFault is a fault of node 0's disk, for testDiskFaultFailsNode.
type diskFault struct {
	maxStall time.Duration // node 0's MaxDiskStall; 0 for the default
	inject   func(*faultfs.FS)
	heal     func(*faultfs.FS)
	value    []byte // written, over and over, once the fault is in; default "during"
	check    func(t *testing.T, disk *faultfs.FS, err error)
}

// testDiskFaultFailsNode starts 3 nodes and a master, writes a key to every
// shard, injects the fault into node 0's disk and writes on until node 0
// fails; it then checks the failure (fault.check), that the master counts
// the node down, and that every shard takes writes on the other two.
func testDiskFaultFailsNode(t *testing.T, fault diskFault) {
	var disk *faultfs.FS
	c := tc.Start(t, tc.Options{
		Masters: 1, Nodes: 3, Shards: 8, CrashableFS: true,
		// The others keep the default, so that only the faulty disk fails.
		MaxDiskStall: func(i int) time.Duration {
			if i == 0 {
				return fault.maxStall
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
	// Heal the disk before the cluster stops: Stop waits for the node's
	// writes (and flushes).
	t.Cleanup(func() { fault.heal(disk) })
	ctx := ctxFor(t, 90*time.Second)
	if err := c.WaitPlaced(ctx); err != nil {
		t.Fatal(err)
	}
	cl, err := client.Open(ctx, c.MasterAddrs())
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	// One key per shard, written before the fault.
	keys := map[uint64][]byte{}
	for i := 0; len(keys) < 8; i++ {
		k := fmt.Appendf(nil, "key-%d", i)
		if _, ok := keys[c.ShardOf(k)]; !ok {
			keys[c.ShardOf(k)] = k
		}
	}
	put := func(k, v []byte) error {
		pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		_, err := cl.Put(pctx, k, v)
		return err
	}
	for _, k := range keys {
		if err := tc.WaitFor(ctx, func() error { return put(k, []byte("before")) }); err != nil {
			t.Fatal(err)
		}
	}

	victim := c.Nodes[0]
	if victim.Node().Failure() != nil {
		t.Fatalf("node failed before its disk did: %v", victim.Node().Failure())
	}
	fault.inject(disk)
	// Every shard has a replica on every node: any write makes the victim
	// write to its disk.
	value := fault.value
	if value == nil {
		value = []byte("during")
	}
	writing := make(chan struct{})
	defer func() { <-writing }()
	go func() {
		defer close(writing)
		for victim.Node().Failure() == nil && ctx.Err() == nil {
			for _, k := range keys {
				_ = put(k, value)
			}
		}
	}()
	select {
	case err := <-victim.Node().Err():
		fault.check(t, disk, err)
	case <-ctx.Done():
		t.Fatalf("node did not fail (%d writes held, %d creations failed by its disk)", disk.Held(), disk.Failed())
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
		if err := tc.WaitFor(ctx, func() error { return put(k, []byte("after")) }); err != nil {
			t.Fatalf("shard %d: %v", shard, err)
		}
	}
}
