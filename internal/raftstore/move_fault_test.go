package raftstore_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/cockroachdb/errors/oserror"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/internal/keys"
	"github.com/shoaldb/shoal/internal/raftstore"
	tc "github.com/shoaldb/shoal/internal/testcluster"
)

// slowSnapshots makes snapshots take seconds: 30 MiB of data at 8 MiB/s.
func slowSnapshots(_ uint64, o *raftstore.Options) {
	o.SnapshotBytesPerSec = 8 << 20
	o.SnapshotChunkBytes = 256 << 10
}

// waitSnapshotBytes waits until node n is receiving (or sending) a
// snapshot and has moved at least min bytes of it.
func waitSnapshotBytes(ctx context.Context, t *testing.T, n *tc.Node, sending bool, min int64) raftstore.SnapshotProgress {
	t.Helper()
	var got raftstore.SnapshotProgress
	if err := tc.WaitFor(ctx, func() error {
		for _, p := range n.Store().Snapshots() {
			if p.Sending == sending && p.Bytes >= min {
				got = p
				return nil
			}
		}
		return fmt.Errorf("node %d: no snapshot past %d bytes: %v", n.ID, min, n.Store().Snapshots())
	}); err != nil {
		t.Fatal(err)
	}
	return got
}

// keysIn counts the keys of a span on a node.
func keysIn(t *testing.T, n *tc.Node, span keys.Span) int {
	t.Helper()
	it, err := n.Engine().NewIter(span)
	if err != nil {
		t.Fatal(err)
	}
	defer it.Close()
	c := 0
	for ok := it.First(); ok; ok = it.Next() {
		c++
	}
	return c
}

// snapshotDirEntries lists what is left of received snapshots on a node.
func snapshotDirEntries(t *testing.T, n *tc.Node) []string {
	t.Helper()
	fs := n.Engine().FS()
	dir := fs.PathJoin(n.Engine().Dir(), "snapshots")
	names, err := fs.List(dir)
	if err != nil && !oserror.IsNotExist(err) {
		t.Fatal(err)
	}
	return names
}

// TestSnapshotProgressAndThrottle checks a snapshot's progress is visible on
// both ends while it runs, and that the bandwidth bound holds.
func TestSnapshotProgressAndThrottle(t *testing.T) {
	c := tc.Start(t, tc.Options{Nodes: 4, Shards: 1, Replicas: 3, NewStateMachine: tc.NewRegisterSM, StoreOptions: slowSnapshots})
	ctx := ctxFor(t, 2*time.Minute)
	if err := c.WaitForLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	load(ctx, t, c, 1, "k", 480, 64<<10) // 30 MiB
	leader, _ := c.Leader(1)
	start := time.Now()
	done := make(chan error, 1)
	go func() {
		_, err := c.AddLearner(ctx, 1, 4)
		done <- err
	}()
	sent := waitSnapshotBytes(ctx, t, leader, true, 4<<20)
	recv := waitSnapshotBytes(ctx, t, c.Node(4), false, 4<<20)
	if sent.TotalBytes < 30<<20 || recv.TotalBytes != sent.TotalBytes || sent.ToNode != 4 || recv.FromNode != leader.ID || recv.Shard != 1 {
		t.Fatalf("progress: sending %+v, receiving %+v", sent, recv)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	// 30 MiB at 8 MiB/s cannot take less than about 3.5 s.
	if took < 3*time.Second {
		t.Fatalf("snapshot of 30 MiB at 8 MiB/s took %v", took)
	}
	if len(c.Node(4).Store().Snapshots()) != 0 || len(leader.Store().Snapshots()) != 0 {
		t.Fatal("finished snapshots still listed")
	}
	t.Logf("30 MiB snapshot at 8 MiB/s took %v; total %d bytes", took.Round(time.Millisecond), sent.TotalBytes)
	checkSame(ctx, t, c, 1, 4)
}

// TestKillTargetMidSnapshot stops the node receiving a learner's snapshot
// halfway: it keeps no partial data, and once restarted it gets a new
// snapshot and the move completes.
func TestKillTargetMidSnapshot(t *testing.T) {
	c := tc.Start(t, tc.Options{Nodes: 4, Shards: 1, Replicas: 3, NewStateMachine: tc.NewRegisterSM, StoreOptions: slowSnapshots})
	ctx := ctxFor(t, 2*time.Minute)
	if err := c.WaitForLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	load(ctx, t, c, 1, "k", 480, 64<<10)
	moved := make(chan error, 1)
	go func() {
		_, err := c.MoveReplica(ctx, 1, 2, 4)
		moved <- err
	}()
	target := c.Node(4)
	waitSnapshotBytes(ctx, t, target, false, 4<<20)
	target.Stop()
	// While it is down nothing reaches it; restarted, it must hold no part
	// of the interrupted snapshot (block new snapshots to look).
	for _, id := range []uint64{1, 2, 3} {
		c.Net.Block(id, 4)
	}
	if err := target.Restart(); err != nil {
		t.Fatal(err)
	}
	data := keys.DataSpan(0, keys.SlotCount)
	if n := keysIn(t, target, data); n != 0 {
		t.Fatalf("node 4 holds %d keys of an interrupted snapshot", n)
	}
	if left := snapshotDirEntries(t, target); len(left) != 0 {
		t.Fatalf("node 4 kept snapshot files: %v", left)
	}
	c.Net.Heal()
	if err := <-moved; err != nil {
		t.Fatal(err)
	}
	checkSame(ctx, t, c, 1, 3)
	if got := target.Store().Stats().SnapshotsApplied; got != 1 {
		t.Fatalf("node 4 applied %d snapshots, want 1", got)
	}
}

// TestKillSourceLeaderMidMove stops the leader while it streams the
// learner's snapshot: a new leader sends a new one and the move completes.
func TestKillSourceLeaderMidMove(t *testing.T) {
	c := tc.Start(t, tc.Options{Nodes: 4, Shards: 1, Replicas: 3, NewStateMachine: tc.NewRegisterSM, StoreOptions: slowSnapshots})
	ctx := ctxFor(t, 2*time.Minute)
	if err := c.WaitForLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	load(ctx, t, c, 1, "k", 480, 64<<10)
	leader, _ := c.Leader(1)
	from := uint64(2)
	if leader.ID == from {
		from = 3
	}
	moved := make(chan error, 1)
	go func() {
		_, err := c.MoveReplica(ctx, 1, from, 4)
		moved <- err
	}()
	waitSnapshotBytes(ctx, t, c.Node(4), false, 4<<20)
	leader.Stop()
	if err := <-moved; err != nil {
		t.Fatal(err)
	}
	if err := leader.Restart(); err != nil {
		t.Fatal(err)
	}
	d, err := c.Descriptor(1)
	if err != nil {
		t.Fatal(err)
	}
	// VOTER is the zero role: check node 4 is in the descriptor at all.
	roles := onNodes(d)
	if _, ok := roles[from]; ok {
		t.Fatalf("node %d still in %v", from, d)
	}
	if role, ok := roles[4]; len(roles) != 3 || !ok || role != shoalpb.ReplicaRole_REPLICA_ROLE_VOTER {
		t.Fatalf("after the move node 4 is not a voter of 3: %v", d)
	}
	checkSame(ctx, t, c, 1, 3)
	if got := c.Node(4).Store().Stats().SnapshotsApplied; got != 1 {
		t.Fatalf("node 4 applied %d snapshots, want 1 (the interrupted one must not count)", got)
	}
}
