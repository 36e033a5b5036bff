package raftstore_test

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/internal/raftstore"
	tc "github.com/shoaldb/shoal/internal/testcluster"
)

// writeLoad runs writers that put unique keys into shard until stopped. A
// write fails only if the client gives up, which it does only for errors
// that leave the outcome unknown: a move must cause none. The client
// (c.ProposeObserved) retries, at the leader it is pointed to, the errors
// that say the write was not applied; retries counts them by kind.
type writeLoad struct {
	c      *tc.Cluster
	shard  uint64
	stop   chan struct{}
	done   chan struct{}
	acked  []string
	failed []error

	mu      sync.Mutex
	retries map[string]int
}

// retryKind names the kind of an error a client retried.
func retryKind(err error) string {
	switch {
	case errors.Is(err, raftstore.ErrNotLeader):
		return "NotLeader"
	case errors.Is(err, raftstore.ErrNoLeader):
		return "NoLeader"
	case errors.Is(err, raftstore.ErrLeadershipLost):
		return "LeadershipLost"
	case errors.Is(err, raftstore.ErrShardNotFound):
		return "ShardNotFound"
	case errors.Is(err, raftstore.ErrOverloaded):
		return "Overloaded"
	case errors.Is(err, raftstore.ErrStopped):
		return "Stopped"
	}
	return "other: " + err.Error()
}

// retried returns the retries so far by kind.
func (l *writeLoad) retried() map[string]int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return maps.Clone(l.retries)
}

// checkRetries fails the test if the client retried any kind of error but
// those allowed.
func (l *writeLoad) checkRetries(t *testing.T, allowed ...string) {
	t.Helper()
	for kind, n := range l.retried() {
		if !slices.Contains(allowed, kind) {
			t.Errorf("the client retried %d %s errors; only %v are expected", n, kind, allowed)
		}
	}
}

type writeResult struct {
	key string
	err error
}

func startLoad(ctx context.Context, c *tc.Cluster, shard uint64, writers int) *writeLoad {
	l := &writeLoad{c: c, shard: shard, stop: make(chan struct{}), done: make(chan struct{}), retries: map[string]int{}}
	count := func(_ uint64, err error) {
		l.mu.Lock()
		l.retries[retryKind(err)]++
		l.mu.Unlock()
	}
	results := make(chan writeResult, 1024)
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-l.stop:
					return
				default:
				}
				k := keyInShard(c, shard, fmt.Sprintf("load-%d-%d", w, i))
				_, err := c.ProposeObserved(ctx, shard, tc.PutCmd(k, []byte("v")), count)
				results <- writeResult{string(k), err}
			}
		}()
	}
	go func() {
		wg.Wait()
		close(results)
	}()
	go func() {
		defer close(l.done)
		for r := range results {
			if r.err != nil {
				l.failed = append(l.failed, r.err)
			} else {
				l.acked = append(l.acked, r.key)
			}
		}
	}()
	return l
}

// finish stops the load and checks that no write failed and every
// acknowledged one is readable at the leader.
func (l *writeLoad) finish(ctx context.Context, t *testing.T) int {
	t.Helper()
	close(l.stop)
	<-l.done
	if len(l.failed) > 0 {
		t.Fatalf("%d client writes failed, first: %v", len(l.failed), l.failed[0])
	}
	n, err := l.c.Leader(l.shard)
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Store().ReadIndex(ctx, l.shard); err != nil {
		t.Fatal(err)
	}
	for _, k := range l.acked {
		if _, ok, err := tc.ReadKey(n.Engine().Reader(), []byte(k)); err != nil || !ok {
			t.Fatalf("acknowledged write %s lost (%v)", k, err)
		}
	}
	return len(l.acked)
}

// TestMoveShardUnderLoad moves a replica of a shard holding 100 MB from
// node 1 to node 4 while writers keep writing, with zero failed client
// writes, then compares every replica's checksum. The writers' client
// retries only what says "not applied, ask the leader": NotLeader (a
// follower, or a leader handing over, names the leader) and NoLeader
// (between the handover and the new leader's first message).
func TestMoveShardUnderLoad(t *testing.T) {
	c := tc.Start(t, tc.Options{Nodes: 4, Shards: 1, Replicas: 3, NewStateMachine: tc.NewRegisterSM, Logger: debugLogger(t)})
	ctx := ctxFor(t, 3*time.Minute)
	if err := c.WaitForLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	const valueSize = 64 << 10
	keys := 1600 // 100 MiB
	if raceEnabled {
		keys = 400
	}
	load(ctx, t, c, 1, "big", keys, valueSize)
	leader, err := c.Leader(1)
	if err != nil {
		t.Fatal(err)
	}
	l := startLoad(ctx, c, 1, 8)
	start := time.Now()
	d, err := c.MoveReplica(ctx, 1, 1, 4)
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	writes := l.finish(ctx, t)
	// LeadershipLost is not allowed even when node 1 leads and the move
	// hands its leadership over: Raft sends TimeoutNow only once the
	// transferee has the leader's whole log, and drops proposals (NotLeader)
	// meanwhile, so no entry the old leader appended is ever replaced. Only
	// an election (a leader cut off) replaces entries, and a move must not
	// cause one. ShardNotFound, Overloaded and Stopped have no cause here.
	l.checkRetries(t, "NotLeader", "NoLeader")
	roles := onNodes(d)
	if _, still := roles[1]; len(roles) != 3 || roles[4] != shoalpb.ReplicaRole_REPLICA_ROLE_VOTER || still {
		t.Fatalf("after the move: %v", d)
	}
	sums := checkSame(ctx, t, c, 1, 3)
	if _, ok := sums[1]; ok {
		t.Fatal("node 1 still has a replica")
	}
	t.Logf("moved %d MiB in %v under load (node %d led, moved the leader: %v): %d writes, none failed; retries by kind %v; checksums %v",
		keys*valueSize>>20, took.Round(time.Millisecond), leader.ID, leader.ID == 1, writes, l.retried(), sums)
}

// TestMoveLeaderReplica moves the replica of the shard's leader: the
// leader hands over first, and the move goes on at the new leader. The
// change that removes the leader is asked of the leader itself: it must
// come back with NotLeader naming another node that leads while the old
// leader is still a voter (a leader that removed itself and stepped down
// would have made the change), and the old leader must never lead again
// (so the removal was not its own proposal).
func TestMoveLeaderReplica(t *testing.T) {
	c := tc.Start(t, tc.Options{Nodes: 4, Shards: 1, Replicas: 3, NewStateMachine: tc.NewRegisterSM})
	ctx := ctxFor(t, 60*time.Second)
	if err := c.WaitForLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	load(ctx, t, c, 1, "k", 200, 1000)
	l := startLoad(ctx, c, 1, 4)
	learner, err := c.AddLearner(ctx, 1, 4)
	if err != nil {
		t.Fatal(err)
	}
	var (
		old      *tc.Node
		oldSt    raftstore.ReplicaStatus
		handedTo *raftstore.NotLeaderError
	)
	if err := tc.WaitFor(ctx, func() error {
		ld, err := c.Leader(1)
		if err != nil {
			return err
		}
		st, err := ld.Store().Status(1)
		if err != nil {
			return err
		}
		_, err = ld.Store().ChangeReplicas(ctx, 1, st.Descriptor.Epoch, []raftstore.ReplicaChange{
			{Type: raftstore.PromoteLearner, NodeID: 4, ReplicaID: learner},
			{Type: raftstore.RemoveReplica, NodeID: ld.ID, ReplicaID: st.ReplicaID},
		})
		if err == nil {
			t.Fatalf("node %d removed its own leading replica without handing over first", ld.ID)
		}
		var nl *raftstore.NotLeaderError
		if errors.As(err, &nl) && nl.LeaderNode != 0 && nl.LeaderNode != ld.ID {
			old, oldSt, handedTo = ld, st, nl
			return nil
		}
		return err // a transfer that failed under load: ask again
	}); err != nil {
		t.Fatal(err)
	}
	oldLeaderships := old.Store().Stats().Leaderships
	// The handover is done and nothing was removed: the new leader leads
	// in a later term and every replica still has the old leader's as a
	// voter, at the epoch the change was asked at.
	newSt, err := c.Node(handedTo.LeaderNode).Store().Status(1)
	if err != nil {
		t.Fatal(err)
	}
	if newSt.Term <= oldSt.Term || newSt.ReplicaID != handedTo.LeaderReplica {
		t.Fatalf("handed over to %+v; the new leader is at term %d (old %d), replica %d", handedTo, newSt.Term, oldSt.Term, newSt.ReplicaID)
	}
	for _, n := range c.Nodes {
		st, err := n.Store().Status(1)
		if err != nil {
			t.Fatalf("node %d: %v", n.ID, err) // node 4 holds the learner
		}
		if role, ok := onNodes(st.Descriptor)[old.ID]; st.Descriptor.Epoch != oldSt.Descriptor.Epoch || !ok || role != shoalpb.ReplicaRole_REPLICA_ROLE_VOTER {
			t.Fatalf("node %d: after the handover the descriptor is %v, want epoch %d with node %d a voter", n.ID, st.Descriptor, oldSt.Descriptor.Epoch, old.ID)
		}
	}
	if st, err := old.Store().Status(1); err != nil || st.Removed || st.Role == raftstore.RoleLeader {
		t.Fatalf("old leader after the handover: %+v, %v", st, err)
	}
	d, err := c.MoveReplica(ctx, 1, old.ID, 4)
	if err != nil {
		t.Fatal(err)
	}
	l.finish(ctx, t)
	// The leader's move hands over once: NotLeader and NoLeader, nothing
	// else (see TestMoveShardUnderLoad).
	l.checkRetries(t, "NotLeader", "NoLeader")
	if _, ok := onNodes(d)[old.ID]; ok || d.Epoch != oldSt.Descriptor.Epoch+2 {
		t.Fatalf("old leader's node still in %v, or not one joint change (epoch %d, was %d)", d, d.Epoch, oldSt.Descriptor.Epoch)
	}
	if got := old.Store().Stats().Leaderships; got != oldLeaderships {
		t.Fatalf("the old leader led again (%d leaderships, %d at the handover)", got, oldLeaderships)
	}
	now, err := c.Leader(1)
	if err != nil || now.ID == old.ID {
		t.Fatalf("leader %v, %v", now, err)
	}
	checkSame(ctx, t, c, 1, 3)
	t.Logf("handed over from node %d (term %d) to node %d (term %d); retries by kind %v", old.ID, oldSt.Term, handedTo.LeaderNode, newSt.Term, l.retried())
}

// TestJointConsensusReplaceTwo replaces two voters at once: one joint
// configuration promotes two learners and removes two voters.
func TestJointConsensusReplaceTwo(t *testing.T) {
	c := tc.Start(t, tc.Options{Nodes: 5, Shards: 1, Replicas: 3, NewStateMachine: tc.NewRegisterSM})
	ctx := ctxFor(t, 60*time.Second)
	if err := c.WaitForLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	load(ctx, t, c, 1, "k", 100, 1000)
	for _, n := range []uint64{4, 5} {
		if _, err := c.AddLearner(ctx, 1, n); err != nil {
			t.Fatal(err)
		}
	}
	before, err := c.Descriptor(1)
	if err != nil {
		t.Fatal(err)
	}
	leader, _ := c.Leader(1)
	remove := map[uint64]bool{}
	for _, r := range before.Replicas {
		if r.NodeId != leader.ID && r.Role == shoalpb.ReplicaRole_REPLICA_ROLE_VOTER {
			remove[r.NodeId] = true
		}
	}
	d, err := c.ChangeReplicas(ctx, 1, func(d *shoalpb.ShardDescriptor) []raftstore.ReplicaChange {
		var ch []raftstore.ReplicaChange
		for _, r := range d.Replicas {
			switch {
			case (r.NodeId == 4 || r.NodeId == 5) && r.Role == shoalpb.ReplicaRole_REPLICA_ROLE_LEARNER:
				ch = append(ch, raftstore.ReplicaChange{Type: raftstore.PromoteLearner, NodeID: r.NodeId, ReplicaID: r.ReplicaId})
			case remove[r.NodeId]:
				ch = append(ch, raftstore.ReplicaChange{Type: raftstore.RemoveReplica, NodeID: r.NodeId, ReplicaID: r.ReplicaId})
			}
		}
		return ch
	})
	if err != nil {
		t.Fatal(err)
	}
	if raftstore.IsJoint(d) || d.Epoch != before.Epoch+2 {
		t.Fatalf("want the final (non-joint) descriptor two epochs on: %v", d)
	}
	roles := onNodes(d)
	if len(roles) != 3 || roles[4] != shoalpb.ReplicaRole_REPLICA_ROLE_VOTER || roles[5] != shoalpb.ReplicaRole_REPLICA_ROLE_VOTER {
		t.Fatalf("after the joint change: %v", d)
	}
	load(ctx, t, c, 1, "after", 10, 100)
	checkSame(ctx, t, c, 1, 3)
}

// TestRemovedReplicaNotResurrected removes a replica while its node is
// down; restarted with its old data, the node learns of the removal from
// its old peers, deletes the replica's data and never brings it back.
func TestRemovedReplicaNotResurrected(t *testing.T) {
	c := tc.Start(t, tc.Options{Nodes: 4, Shards: 1, Replicas: 3, NewStateMachine: tc.NewRegisterSM})
	ctx := ctxFor(t, 60*time.Second)
	if err := c.WaitForLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	load(ctx, t, c, 1, "k", 100, 100)
	victim := uint64(3)
	if l, _ := c.Leader(1); l.ID == victim {
		victim = 2
	}
	c.Node(victim).Stop()
	if _, err := c.MoveReplica(ctx, 1, victim, 4); err != nil {
		t.Fatal(err)
	}
	if err := c.Node(victim).Restart(); err != nil {
		t.Fatal(err)
	}
	n := c.Node(victim)
	if err := tc.WaitFor(ctx, func() error {
		if _, err := n.Store().Status(1); err == nil {
			return fmt.Errorf("node %d still has its old replica", victim)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if v, ok, _ := tc.ReadKey(n.Engine().Reader(), keyInShard(c, 1, "k-0")); ok {
		t.Fatalf("the removed replica's data is still there: %q", v)
	}
	// The shard goes on; nothing its members send brings the replica back.
	load(ctx, t, c, 1, "later", 50, 100)
	if _, err := n.Store().Status(1); err == nil {
		t.Fatal("removed replica came back")
	}
	if got := n.Store().Stats().ReplicasRemoved; got != 1 {
		t.Fatalf("node %d removed %d replicas, want 1", victim, got)
	}
	checkSame(ctx, t, c, 1, 3)
}

// TestLogBoundedFollowerCatchesUpBySnapshot keeps writing while a follower
// is down: the log stays within its bounds, and the follower, behind the
// truncation point when it returns, catches up by snapshot.
func TestLogBoundedFollowerCatchesUpBySnapshot(t *testing.T) {
	c := tc.Start(t, tc.Options{Nodes: 3, Shards: 1, Replicas: 3, NewStateMachine: tc.NewRegisterSM,
		StoreOptions: func(_ uint64, o *raftstore.Options) { o.MaxLogEntries = 100; o.MaxLogBytes = 1 << 20 }})
	ctx := ctxFor(t, 60*time.Second)
	if err := c.WaitForLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	leader, _ := c.Leader(1)
	down := c.Nodes[0]
	if down == leader {
		down = c.Nodes[1]
	}
	down.Stop()
	load(ctx, t, c, 1, "k", 1000, 1000)
	// Within a truncation period the leader's log is back within bounds.
	if err := tc.WaitFor(ctx, func() error {
		st, err := leader.Store().Status(1)
		if err != nil {
			return err
		}
		if st.LogEntries > 200 || st.LogBytes > 2<<20 {
			return fmt.Errorf("leader log holds %d entries, %d bytes", st.LogEntries, st.LogBytes)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := down.Restart(); err != nil {
		t.Fatal(err)
	}
	checkSame(ctx, t, c, 1, 3)
	if got := down.Store().Stats().SnapshotsApplied; got == 0 {
		t.Fatal("the follower caught up without a snapshot")
	}
}
