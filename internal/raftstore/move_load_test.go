package raftstore_test

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/internal/raftstore"
	tc "github.com/shoaldb/shoal/internal/testcluster"
)

// writeLoad runs writers that put unique keys into shard until stopped. A
// write fails only if c.Propose gives up, which it does only for errors
// that leave the outcome unknown: a move must cause none.
type writeLoad struct {
	c      *tc.Cluster
	shard  uint64
	stop   chan struct{}
	done   chan struct{}
	acked  []string
	failed []error
}

type writeResult struct {
	key string
	err error
}

func startLoad(ctx context.Context, c *tc.Cluster, shard uint64, writers int) *writeLoad {
	l := &writeLoad{c: c, shard: shard, stop: make(chan struct{}), done: make(chan struct{})}
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
				_, err := c.Propose(ctx, shard, tc.PutCmd(k, []byte("v")))
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
// writes, then compares every replica's checksum.
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
	l := startLoad(ctx, c, 1, 8)
	start := time.Now()
	d, err := c.MoveReplica(ctx, 1, 1, 4)
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	writes := l.finish(ctx, t)
	roles := onNodes(d)
	if _, still := roles[1]; len(roles) != 3 || roles[4] != shoalpb.ReplicaRole_REPLICA_ROLE_VOTER || still {
		t.Fatalf("after the move: %v", d)
	}
	sums := checkSame(ctx, t, c, 1, 3)
	if _, ok := sums[1]; ok {
		t.Fatal("node 1 still has a replica")
	}
	t.Logf("moved %d MiB in %v under load: %d writes, none failed; checksums %v", keys*valueSize>>20, took.Round(time.Millisecond), writes, sums)
}

// TestMoveLeaderReplica moves the replica of the shard's leader: the
// leader hands over first, and the move goes on at the new leader.
func TestMoveLeaderReplica(t *testing.T) {
	c := tc.Start(t, tc.Options{Nodes: 4, Shards: 1, Replicas: 3, NewStateMachine: tc.NewRegisterSM})
	ctx := ctxFor(t, 60*time.Second)
	if err := c.WaitForLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	load(ctx, t, c, 1, "k", 200, 1000)
	leader, err := c.Leader(1)
	if err != nil {
		t.Fatal(err)
	}
	l := startLoad(ctx, c, 1, 4)
	d, err := c.MoveReplica(ctx, 1, leader.ID, 4)
	if err != nil {
		t.Fatal(err)
	}
	l.finish(ctx, t)
	if _, ok := onNodes(d)[leader.ID]; ok {
		t.Fatalf("old leader's node still in %v", d)
	}
	now, err := c.Leader(1)
	if err != nil || now.ID == leader.ID {
		t.Fatalf("leader %v, %v", now, err)
	}
	checkSame(ctx, t, c, 1, 3)
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
