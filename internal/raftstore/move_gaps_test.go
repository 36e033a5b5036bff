package raftstore_test

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/internal/keys"
	"github.com/shoaldb/shoal/internal/raftstore"
	"github.com/shoaldb/shoal/internal/storage"
	tc "github.com/shoaldb/shoal/internal/testcluster"
	"github.com/shoaldb/shoal/internal/transport"
)

// rogueTransport is a real gRPC transport that poses as node as, to
// deliver hand-built Raft messages and snapshot streams to node to (at
// addr) the way a peer would: through the node's RaftStream and Snapshot
// services.
func rogueTransport(t *testing.T, as, to uint64, addr string) *transport.Transport {
	t.Helper()
	tr, err := transport.New(transport.Options{
		NodeID: as, ClusterID: "testcluster",
		Resolve: func(id uint64) (string, error) {
			if id != to {
				return "", fmt.Errorf("rogue transport: no address for node %d", id)
			}
			return addr, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(tr.Close)
	return tr
}

// staleMessages are what the leader (replica from on node fromNode, at
// term) would have sent to replica to when it was a member: an append
// with one entry and a heartbeat, each stamped with the old epoch and
// again with the current one.
func staleMessages(shard, fromNode, toNode, from, to, term, index uint64, epochs ...uint64) []*shoalpb.RaftMessage {
	var out []*shoalpb.RaftMessage
	for _, epoch := range epochs {
		app := &raftpb.Message{
			Type: raftpb.MsgApp.Enum(), To: new(to), From: new(from), Term: new(term),
			LogTerm: new(term), Index: new(index), Commit: new(index),
			Entries: []*raftpb.Entry{{Term: new(term), Index: new(index + 1), Type: raftpb.EntryNormal.Enum(), Data: []byte("stale")}},
		}
		hb := &raftpb.Message{Type: raftpb.MsgHeartbeat.Enum(), To: new(to), From: new(from), Term: new(term), Commit: new(index)}
		for _, m := range []*raftpb.Message{app, hb} {
			out = append(out, &shoalpb.RaftMessage{ShardId: shard, FromNode: fromNode, ToNode: toNode, Epoch: epoch, Message: m})
		}
	}
	return out
}

// staleSnapshot streams a complete, well-formed snapshot of desc (one key,
// right checksum) to replica to on node toNode, as the leader would have
// sent it when to was a member. It returns the stream's outcome.
func staleSnapshot(ctx context.Context, tr *transport.Transport, desc *shoalpb.ShardDescriptor, fromNode, toNode, from, to, term, index uint64) error {
	data, err := proto.Marshal(&shoalpb.SnapshotData{Shard: desc, Id: fmt.Sprintf("stale-s%d-r%d", desc.ShardId, to)})
	if err != nil {
		return err
	}
	cs := &raftpb.ConfState{}
	for _, r := range desc.Replicas {
		if r.Role == shoalpb.ReplicaRole_REPLICA_ROLE_LEARNER {
			cs.Learners = append(cs.Learners, r.ReplicaId)
		} else {
			cs.Voters = append(cs.Voters, r.ReplicaId)
		}
	}
	msg := &raftpb.Message{
		Type: raftpb.MsgSnap.Enum(), To: new(to), From: new(from), Term: new(term),
		Snapshot: &raftpb.Snapshot{Data: data, Metadata: &raftpb.SnapshotMetadata{ConfState: cs, Index: new(index), Term: new(term)}},
	}
	k := keys.DataKey(uint16(desc.StartSlot), []byte("stale-key"))
	v := []byte("stale-value")
	crc := crc32.Update(crc32.Update(0, crc32.MakeTable(crc32.Castagnoli), k), crc32.MakeTable(crc32.Castagnoli), v)
	first := &shoalpb.SnapshotChunk{
		Header:     &shoalpb.RaftMessage{ShardId: desc.ShardId, FromNode: fromNode, ToNode: toNode, Epoch: desc.Epoch, Message: msg},
		TotalBytes: uint64(len(k) + len(v)),
	}
	sent := false
	return tr.SendSnapshot(ctx, toNode, first, func() (*shoalpb.SnapshotChunk, error) {
		if sent {
			return nil, io.EOF
		}
		sent = true
		return &shoalpb.SnapshotChunk{Keys: [][]byte{k}, Values: [][]byte{v}, Done: true, Checksum: crc}, nil
	})
}

// TestLateMessagesDoNotRecreateRemovedReplica removes a replica, then
// delivers to its node, over gRPC as its old leader would, the messages
// that create a replica on a node that has none (an append, a heartbeat)
// and a whole snapshot, all addressed to the removed replica, with the
// epoch it was removed at and the current one; then restarts the node and
// does it again. The tombstone must refuse them all: no replica, no
// data, no Raft state, and the snapshot refused before a byte is taken.
func TestLateMessagesDoNotRecreateRemovedReplica(t *testing.T) {
	c := tc.Start(t, tc.Options{Nodes: 4, Shards: 1, Replicas: 3, NewStateMachine: tc.NewRegisterSM})
	ctx := ctxFor(t, 60*time.Second)
	if err := c.WaitForLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	load(ctx, t, c, 1, "k", 50, 100)
	leader, err := c.Leader(1)
	if err != nil {
		t.Fatal(err)
	}
	victim := c.Node(3)
	if leader == victim {
		victim = c.Node(2)
	}
	was, err := victim.Store().Status(1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.MoveReplica(ctx, 1, victim.ID, 4); err != nil {
		t.Fatal(err)
	}
	if err := tc.WaitFor(ctx, func() error {
		if _, err := victim.Store().Status(1); !errors.Is(err, raftstore.ErrShardNotFound) {
			return fmt.Errorf("node %d still has replica %d (%v)", victim.ID, was.ReplicaID, err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	ld, err := c.Leader(1)
	if err != nil {
		t.Fatal(err)
	}
	now, err := ld.Store().Status(1)
	if err != nil {
		t.Fatal(err)
	}
	if now.Descriptor.Epoch <= was.Descriptor.Epoch {
		t.Fatalf("epoch %d after the move, %d before", now.Descriptor.Epoch, was.Descriptor.Epoch)
	}

	// check asserts that nothing of the removed replica is on the victim:
	// no replica, none ever created for a message, no data, no Raft state,
	// and the tombstone for its replica ID.
	check := func(when string) {
		t.Helper()
		s := victim.Store()
		if st, err := s.Status(1); !errors.Is(err, raftstore.ErrShardNotFound) {
			t.Fatalf("%s: node %d has a replica of shard 1 again: %+v (%v)", when, victim.ID, st, err)
		}
		if got := s.Stats().ReplicasCreated; got != 0 {
			t.Fatalf("%s: node %d created %d replicas", when, victim.ID, got)
		}
		if n := keysIn(t, victim, keys.DataSpan(was.Descriptor.StartSlot, was.Descriptor.EndSlot)); n != 0 {
			t.Fatalf("%s: node %d holds %d keys of the shard", when, victim.ID, n)
		}
		if n := keysIn(t, victim, keys.ShardRaftSpan(1)); n != 0 {
			t.Fatalf("%s: node %d holds %d Raft keys of the shard", when, victim.ID, n)
		}
		var rs shoalpb.LocalReplicaState
		if ok, err := storage.GetProto(victim.Engine().Reader(), keys.ReplicaStateKey(1), &rs); err != nil || !ok ||
			!rs.Tombstone || rs.TombstoneReplicaId != was.ReplicaID {
			t.Fatalf("%s: node %d replica state %v (%v, %v), want a tombstone for replica %d", when, victim.ID, &rs, ok, err, was.ReplicaID)
		}
		if left := snapshotDirEntries(t, victim); len(left) != 0 {
			t.Fatalf("%s: node %d kept snapshot files: %v", when, victim.ID, left)
		}
	}

	deliver := func(when string) {
		t.Helper()
		check(when + ", before the late messages")
		s := victim.Store()
		before := s.Stats()
		tr := rogueTransport(t, ld.ID, victim.ID, victim.Addr)
		msgs := staleMessages(1, ld.ID, victim.ID, now.ReplicaID, was.ReplicaID, now.Term, now.Applied, was.Descriptor.Epoch, now.Descriptor.Epoch)
		if err := tr.Send(victim.ID, msgs); err != nil {
			t.Fatal(err)
		}
		// The messages went over gRPC: they were handled once the store
		// has counted them dropped (it holds no replica, so nothing else
		// is dropped on it).
		if err := tc.WaitFor(ctx, func() error {
			if got := s.Stats().MessagesDropped - before.MessagesDropped; got < uint64(len(msgs)) {
				return fmt.Errorf("node %d dropped %d of the %d late messages", victim.ID, got, len(msgs))
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if got := s.Stats().MessagesReceived - before.MessagesReceived; got != 0 {
			t.Fatalf("%s: node %d handed %d late messages to a replica", when, victim.ID, got)
		}
		err := staleSnapshot(ctx, tr, was.Descriptor, ld.ID, victim.ID, now.ReplicaID, was.ReplicaID, now.Term, now.Applied)
		if err == nil {
			t.Fatalf("%s: node %d accepted a snapshot for its removed replica %d", when, victim.ID, was.ReplicaID)
		}
		if errors.Is(err, transport.ErrSnapshotRefused) && !strings.Contains(err.Error(), "was removed") {
			t.Fatalf("%s: snapshot refused for another reason than the tombstone: %v", when, err)
		}
		// Refused at the door: not even counted as a snapshot received
		// (or one that failed part-way).
		if st := s.Stats(); st.SnapshotsReceived != before.SnapshotsReceived || st.SnapshotsFailed != before.SnapshotsFailed || len(s.Snapshots()) != 0 {
			t.Fatalf("%s: node %d took the snapshot in: %+v, %v", when, victim.ID, st, s.Snapshots())
		}
		tr.Close()
		check(when + ", after the late messages")
		t.Logf("%s: %d late messages dropped, snapshot refused: %v", when, len(msgs), err)
	}

	deliver("before a restart")
	victim.Stop()
	if err := victim.Restart(); err != nil {
		t.Fatal(err)
	}
	deliver("after a restart")
	// The shard goes on without the victim.
	load(ctx, t, c, 1, "later", 20, 100)
	check("at the end")
	checkSame(ctx, t, c, 1, 3)
}

// snapshotLimitCluster starts 5 nodes and 2 shards (shard 1 on nodes 1-3,
// shard 2 on nodes 2-4) whose snapshots move at 2 MiB/s, with every
// node's limits on concurrent snapshots set by limits, and loads each
// shard with perShard bytes: a snapshot takes perShard/2MiB seconds.
func snapshotLimitCluster(ctx context.Context, t *testing.T, perShard int, limits func(o *raftstore.Options)) *tc.Cluster {
	t.Helper()
	c := tc.Start(t, tc.Options{Nodes: 5, Shards: 2, Replicas: 3, NewStateMachine: tc.NewRegisterSM,
		StoreOptions: func(_ uint64, o *raftstore.Options) {
			o.SnapshotBytesPerSec = 2 << 20
			o.SnapshotChunkBytes = 128 << 10
			limits(o)
		}})
	if err := c.WaitForLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	const valueSize = 64 << 10
	for _, shard := range []uint64{1, 2} {
		load(ctx, t, c, shard, "k", perShard/valueSize, valueSize)
	}
	return c
}

// snapshotWatch polls a node's snapshots until stopped, recording the most
// it saw at once.
type snapshotWatch struct {
	stop chan struct{}
	done chan struct{}
	// Written by the watcher, read after done.
	maxListed    int // listed (sending or receiving, as watched)
	maxStreaming int // that have the slot and data left to move
	waitedBehind bool
	// queuedWithData: a snapshot listed as queued had counted or sent data.
	queuedWithData bool
}

// watchSnapshots watches n's sending (or receiving) snapshots. A received
// snapshot is listed only while it holds a receiving slot. A sending one is
// listed from the MsgSnap on, Queued while it waits for a sending slot, and
// still for a moment after giving its slot back, when all its data is sent.
// So "streaming", holding a slot for sure, is not queued with data left to
// send.
func watchSnapshots(n *tc.Node, sending bool) *snapshotWatch {
	w := &snapshotWatch{stop: make(chan struct{}), done: make(chan struct{})}
	s := n.Store()
	go func() {
		defer close(w.done)
		for {
			listed, streaming, waiting := 0, 0, 0
			for _, p := range s.Snapshots() {
				if p.Sending != sending {
					continue
				}
				listed++
				switch {
				case p.Queued:
					waiting++
					if p.TotalBytes != 0 || p.Bytes != 0 {
						w.queuedWithData = true
					}
				case p.TotalBytes == 0 || p.Bytes < p.TotalBytes:
					streaming++
				}
			}
			w.maxListed = max(w.maxListed, listed)
			w.maxStreaming = max(w.maxStreaming, streaming)
			if waiting > 0 && streaming > 0 {
				w.waitedBehind = true
			}
			select {
			case <-w.stop:
				return
			case <-time.After(time.Millisecond):
			}
		}
	}()
	return w
}

func (w *snapshotWatch) finish() *snapshotWatch {
	close(w.stop)
	<-w.done
	return w
}

// ensureLeader makes node lead shard (by transferring its leadership).
func ensureLeader(ctx context.Context, t *testing.T, c *tc.Cluster, shard, node uint64) {
	t.Helper()
	if err := tc.WaitFor(ctx, func() error {
		ld, err := c.Leader(shard)
		if err != nil {
			return err
		}
		if ld.ID == node {
			return nil
		}
		st, err := c.Node(node).Store().Status(shard)
		if err != nil {
			return err
		}
		return errors.Join(ld.Store().TransferLeader(ctx, shard, st.ReplicaID), fmt.Errorf("node %d leads shard %d", ld.ID, shard))
	}); err != nil {
		t.Fatal(err)
	}
}

// TestSnapshotSendLimit: with MaxSnapshotSends 1, a node that must send
// two snapshots at once (it leads two shards that each get a learner)
// streams one, holds the other back until the first is done, and both
// learners catch up.
func TestSnapshotSendLimit(t *testing.T) {
	ctx := ctxFor(t, 2*time.Minute)
	c := snapshotLimitCluster(ctx, t, 6<<20, func(o *raftstore.Options) { o.MaxSnapshotSends = 1 })
	// Node 2 leads both shards; shard 1 gets a learner on node 5, shard 2
	// on node 1: two receivers, each well within its own limit.
	ensureLeader(ctx, t, c, 1, 2)
	ensureLeader(ctx, t, c, 2, 2)
	sender := c.Node(2)
	w := watchSnapshots(sender, true)
	errs := make(chan error, 2)
	go func() {
		_, err := c.AddLearner(ctx, 1, 5)
		errs <- err
	}()
	// The second move starts while the first snapshot streams (it has
	// seconds to go), so its snapshot is due while the slot is taken.
	first := waitSnapshotBytes(ctx, t, sender, true, 256<<10)
	go func() {
		_, err := c.AddLearner(ctx, 2, 1)
		errs <- err
	}()
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	w.finish()
	if w.maxStreaming > 1 {
		t.Fatalf("node 2 streamed %d snapshots at once with MaxSnapshotSends 1", w.maxStreaming)
	}
	if w.maxListed < 2 || !w.waitedBehind {
		t.Fatalf("the second snapshot never waited behind the first (at most %d listed at once)", w.maxListed)
	}
	if w.queuedWithData {
		t.Fatal("a snapshot listed as queued had counted or sent data")
	}
	if st := sender.Store().Stats(); st.SnapshotsSent < 2 {
		t.Fatalf("node 2 sent %d snapshots, want 2", st.SnapshotsSent)
	}
	checkSame(ctx, t, c, 1, 4)
	checkSame(ctx, t, c, 2, 4)
	t.Logf("first snapshot %d bytes; at most %d listed on the sender, %d streaming", first.TotalBytes, w.maxListed, w.maxStreaming)
}

// TestSnapshotReceiveLimit: with MaxSnapshotReceives 1, a node that gets
// two learners at once (one per shard, from two leaders) takes one
// snapshot at a time: the other sender is refused, retries, and gets in
// once the first is done. Both learners catch up.
func TestSnapshotReceiveLimit(t *testing.T) {
	ctx := ctxFor(t, 2*time.Minute)
	c := snapshotLimitCluster(ctx, t, 6<<20, func(o *raftstore.Options) { o.MaxSnapshotReceives = 1 })
	// Two senders, so that the send limit plays no part.
	ensureLeader(ctx, t, c, 1, 1)
	ensureLeader(ctx, t, c, 2, 4)
	receiver := c.Node(5)
	w := watchSnapshots(receiver, false)
	errs := make(chan error, 2)
	go func() {
		_, err := c.AddLearner(ctx, 1, 5)
		errs <- err
	}()
	waitSnapshotBytes(ctx, t, receiver, false, 256<<10)
	second := time.Now()
	go func() {
		_, err := c.AddLearner(ctx, 2, 5)
		errs <- err
	}()
	// The second snapshot is due while the first is received: it is
	// refused (its sender counts a failed snapshot) and sent again later.
	refused := func() (n uint64) {
		for _, id := range []uint64{1, 2, 3, 4} {
			n += c.Node(id).Store().Stats().SnapshotsFailed
		}
		return n
	}
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	took := time.Since(second)
	w.finish()
	if w.maxListed != 1 {
		t.Fatalf("node 5 received %d snapshots at once with MaxSnapshotReceives 1", w.maxListed)
	}
	if refused() == 0 {
		t.Fatal("no snapshot was refused: the second never came while the first was received")
	}
	// Each refused attempt read the whole shard; the sender waits before
	// trying again, instead of trying every heartbeat.
	if n, most := refused(), uint64(took/raftstore.SnapshotRetryDelay)+1; n > most {
		t.Fatalf("the second snapshot was refused %d times in %v: more than one attempt per %v", n, took, raftstore.SnapshotRetryDelay)
	}
	// Each shard's snapshot was received once, whole; the refusals came
	// before any byte was taken (they are not failures of the receiver).
	if st := receiver.Store().Stats(); st.SnapshotsReceived != 2 || st.SnapshotsFailed != 0 || st.SnapshotsApplied != 2 {
		t.Fatalf("node 5: %d snapshots received, %d failed, %d applied; want 2, 0, 2", st.SnapshotsReceived, st.SnapshotsFailed, st.SnapshotsApplied)
	}
	checkSame(ctx, t, c, 1, 4)
	checkSame(ctx, t, c, 2, 4)
	t.Logf("the second snapshot was refused %d times while node 5 received the first", refused())
}

// TestLogBoundedByBytes: with an entry bound the test never reaches and a
// byte bound of 256 KiB, a shard written 16 KiB at a time while a
// follower is down keeps its log within twice the byte bound (rechecked
// after every 512 KiB), and the follower, which returns behind the
// truncation point, catches up by snapshot.
func TestLogBoundedByBytes(t *testing.T) {
	const (
		maxEntries = 100000
		maxBytes   = 256 << 10
		valueSize  = 16 << 10
		perRound   = 2 * maxBytes / valueSize
		rounds     = 8
	)
	c := tc.Start(t, tc.Options{Nodes: 3, Shards: 1, Replicas: 3, NewStateMachine: tc.NewRegisterSM,
		StoreOptions: func(_ uint64, o *raftstore.Options) { o.MaxLogEntries = maxEntries; o.MaxLogBytes = maxBytes }})
	ctx := ctxFor(t, 2*time.Minute)
	if err := c.WaitForLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	leader, err := c.Leader(1)
	if err != nil {
		t.Fatal(err)
	}
	down := c.Nodes[0]
	if down == leader {
		down = c.Nodes[1]
	}
	down.Stop()
	// Record the largest the leader's log got, for the log.
	var peak atomic.Uint64
	stopPeak := make(chan struct{})
	peakDone := make(chan struct{})
	go func() {
		defer close(peakDone)
		for {
			if st, err := leader.Store().Status(1); err == nil && st.LogBytes > peak.Load() {
				peak.Store(st.LogBytes)
			}
			select {
			case <-stopPeak:
				return
			case <-time.After(time.Millisecond):
			}
		}
	}()
	for round := range rounds {
		load(ctx, t, c, 1, fmt.Sprintf("r%d", round), perRound, valueSize)
		// Within a truncation period (a second) every running replica's
		// log is back within twice the byte bound (a leader keeps what a
		// follower in the replicate state lacks, up to twice the bounds).
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := tc.WaitFor(rctx, func() error {
			for _, n := range c.Nodes {
				if !n.Running() {
					continue
				}
				st, err := n.Store().Status(1)
				if err != nil {
					return err
				}
				if st.LogBytes > 2*maxBytes {
					return fmt.Errorf("round %d: node %d's log holds %d entries, %d bytes", round, n.ID, st.LogEntries, st.LogBytes)
				}
			}
			return nil
		})
		cancel()
		if err != nil {
			t.Fatal(err)
		}
	}
	close(stopPeak)
	<-peakDone
	// Far fewer entries were written than the entry bound: every
	// truncation was the byte bound's.
	written := rounds * perRound
	if written >= maxEntries/10 {
		t.Fatalf("wrote %d entries, too close to the entry bound %d", written, maxEntries)
	}
	if tr := leader.Store().Stats().Truncations; tr == 0 {
		t.Fatal("the leader never truncated its log")
	}
	if err := down.Restart(); err != nil {
		t.Fatal(err)
	}
	checkSame(ctx, t, c, 1, 3)
	if got := down.Store().Stats().SnapshotsApplied; got == 0 {
		t.Fatal("the follower caught up without a snapshot")
	}
	t.Logf("%d entries of %d KiB (%d MiB); the leader's log peaked at %d KiB (bound %d KiB); %d truncations",
		written, valueSize>>10, written*valueSize>>20, peak.Load()>>10, maxBytes>>10, leader.Store().Stats().Truncations)
}

// crashSnapshotCluster is the cluster of the kill tests on crashable
// filesystems: 30 MiB (8 MiB under the race detector) in shard 1 on nodes
// 1-3, snapshots at 8 MiB/s.
func crashSnapshotCluster(ctx context.Context, t *testing.T) *tc.Cluster {
	t.Helper()
	c := tc.Start(t, tc.Options{Nodes: 4, Shards: 1, Replicas: 3, CrashableFS: true, NewStateMachine: tc.NewRegisterSM, StoreOptions: slowSnapshots})
	if err := c.WaitForLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	n := 480
	if raceEnabled {
		n = 128
	}
	load(ctx, t, c, 1, "k", n, 64<<10)
	return c
}

// waitNoSnapshotFiles waits until node n holds no received snapshot's
// files (a failed stream deletes its directory as it ends).
func waitNoSnapshotFiles(ctx context.Context, t *testing.T, n *tc.Node) {
	t.Helper()
	if err := tc.WaitFor(ctx, func() error {
		if left := snapshotDirEntries(t, n); len(left) != 0 {
			return fmt.Errorf("node %d keeps snapshot files: %v", n.ID, left)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// TestCrashTargetMidSnapshot cuts the power of the node receiving a
// learner's snapshot halfway, once losing every unsynced write and once
// keeping them all (the half-written snapshot files survive, as after a
// kill -9). Restarted, it holds nothing of the shard: no data, no replica,
// no snapshot files. Let in again, it gets a new snapshot and the move
// completes with every replica's checksum equal.
func TestCrashTargetMidSnapshot(t *testing.T) {
	for _, keep := range []int{0, 100} {
		t.Run(fmt.Sprintf("unsynced-kept-%d%%", keep), func(t *testing.T) {
			ctx := ctxFor(t, 2*time.Minute)
			c := crashSnapshotCluster(ctx, t)
			moved := make(chan error, 1)
			go func() {
				_, err := c.MoveReplica(ctx, 1, 2, 4)
				moved <- err
			}()
			target := c.Node(4)
			waitSnapshotBytes(ctx, t, target, false, 2<<20)
			for _, id := range []uint64{1, 2, 3} {
				c.Net.Block(id, 4)
			}
			target.CrashKeeping(keep, 1)
			if err := target.Restart(); err != nil {
				t.Fatal(err)
			}
			if n := keysIn(t, target, keys.DataSpan(0, keys.SlotCount)); n != 0 {
				t.Fatalf("node 4 holds %d keys of an interrupted snapshot", n)
			}
			if n := keysIn(t, target, keys.ShardRaftSpan(1)); n > 1 {
				// At most the HardState of the empty replica (its vote).
				t.Fatalf("node 4 holds %d Raft keys of the shard", n)
			}
			if st, err := target.Store().Status(1); err == nil {
				t.Fatalf("node 4 has a replica after the crash: %+v", st)
			}
			if left := snapshotDirEntries(t, target); len(left) != 0 {
				t.Fatalf("node 4 kept snapshot files: %v", left)
			}
			c.Net.Heal()
			if err := <-moved; err != nil {
				t.Fatal(err)
			}
			sums := checkSame(ctx, t, c, 1, 3)
			if _, ok := sums[4]; !ok {
				t.Fatalf("node 4 has no state after the move: %v", sums)
			}
			if got := target.Store().Stats().SnapshotsApplied; got != 1 {
				t.Fatalf("node 4 applied %d snapshots since its restart, want 1", got)
			}
			waitNoSnapshotFiles(ctx, t, target)
		})
	}
}

// TestCrashSourceLeaderMidMove cuts the power of the leader while it
// streams the learner's snapshot: a new leader sends a new one and the
// move completes; the half-received snapshot leaves nothing behind on the
// target, and the crashed leader comes back to the same state.
func TestCrashSourceLeaderMidMove(t *testing.T) {
	ctx := ctxFor(t, 2*time.Minute)
	c := crashSnapshotCluster(ctx, t)
	leader, err := c.Leader(1)
	if err != nil {
		t.Fatal(err)
	}
	from := uint64(2)
	if leader.ID == from {
		from = 3
	}
	moved := make(chan error, 1)
	go func() {
		_, err := c.MoveReplica(ctx, 1, from, 4)
		moved <- err
	}()
	target := c.Node(4)
	waitSnapshotBytes(ctx, t, target, false, 2<<20)
	leader.Crash()
	if err := <-moved; err != nil {
		t.Fatal(err)
	}
	d, err := c.Descriptor(1)
	if err != nil {
		t.Fatal(err)
	}
	roles := onNodes(d)
	if role, ok := roles[4]; len(roles) != 3 || !ok || role != shoalpb.ReplicaRole_REPLICA_ROLE_VOTER {
		t.Fatalf("after the move: %v", d)
	}
	if _, ok := roles[from]; ok {
		t.Fatalf("node %d still in %v", from, d)
	}
	waitNoSnapshotFiles(ctx, t, target)
	if err := leader.Restart(); err != nil {
		t.Fatal(err)
	}
	checkSame(ctx, t, c, 1, 3)
	if st := target.Store().Stats(); st.SnapshotsApplied != 1 || st.SnapshotsReceived != 1 {
		t.Fatalf("node 4 received %d and applied %d snapshots, want 1 and 1 (the interrupted one must not count)", st.SnapshotsReceived, st.SnapshotsApplied)
	}
}
