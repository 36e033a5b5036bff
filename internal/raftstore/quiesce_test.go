package raftstore_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/raft/v3/raftpb"

	"github.com/shoaldb/shoal/internal/raftstore"
	tc "github.com/shoaldb/shoal/internal/testcluster"
)

// waitQuiet waits until every running node has all its replicas quiet.
func waitQuiet(ctx context.Context, t *testing.T, c *tc.Cluster, perNode int) time.Duration {
	t.Helper()
	start := time.Now()
	if err := tc.WaitFor(ctx, func() error {
		for _, n := range c.Nodes {
			if !n.Running() {
				continue
			}
			if q := n.Store().Stats().QuietReplicas; q != perNode {
				return fmt.Errorf("node %d: %d of %d replicas quiet", n.ID, q, perNode)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return time.Since(start)
}

// TestQuiesce checks that idle shards go quiet on every replica, that a
// write or a read wakes a quiet shard and is served, and that the shard
// goes quiet again afterwards.
func TestQuiesce(t *testing.T) {
	const shards = 16
	c := tc.Start(t, tc.Options{Nodes: 3, Shards: shards, Replicas: 3, NewStateMachine: tc.NewRegisterSM})
	ctx := ctxFor(t, 60*time.Second)
	if err := c.WaitForLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	for _, d := range c.Shards {
		if _, err := c.Propose(ctx, d.ShardId, tc.PutCmd(keyInShard(c, d.ShardId, "q"), []byte("v1"))); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("all %d replicas of each node quiet %v after the last write", shards, waitQuiet(ctx, t, c, shards))
	for _, n := range c.Nodes {
		for _, st := range n.Store().Replicas() {
			if !st.Quiet {
				t.Fatalf("node %d shard %d: status not quiet", n.ID, st.ShardID)
			}
		}
	}

	// A write to a quiet shard wakes it and commits; so does a read on a
	// follower (a ReadIndex round through the leader).
	shard := c.Shards[0].ShardId
	k := keyInShard(c, shard, "q")
	if _, err := c.Propose(ctx, shard, tc.PutCmd(k, []byte("v2"))); err != nil {
		t.Fatal(err)
	}
	leader, follower := leaderAndOther(t, c, shard)
	waitRead(ctx, t, follower, shard, k, "v2")
	waitQuiet(ctx, t, c, shards)
	if q := leader.Store().Stats().Quiesced; q < shards+1 {
		t.Fatalf("leader node quiesced %d times, want at least %d", q, shards+1)
	}
}

// TestQuietLeaderFailover stops the node that leads the most shards once
// every shard is quiet: the followers notice its silence (no keepalives)
// and every shard elects a new leader and accepts a write. The limit is
// that of busy shards (TestLeaderFailover, 3 s) plus the 900 ms of silence
// a quiet follower waits for before its election clock runs (quiesce.go):
// alone on this machine the slowest shard takes 1.6-1.8 s, like busy ones,
// but a CI run with other packages' tests on the same two cores once took
// 3.3 s.
func TestQuietLeaderFailover(t *testing.T) {
	const shards = 64
	c := tc.Start(t, tc.Options{Nodes: 3, Shards: shards, Replicas: 3, NewStateMachine: tc.NewRegisterSM})
	ctx := ctxFor(t, 60*time.Second)
	if err := c.WaitForLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	waitQuiet(ctx, t, c, shards)
	stopBusiestLeader(ctx, t, c, "quiet ", 3*time.Second+900*time.Millisecond)
}

// TestQuietLeaderCutOff isolates the node that leads quiet shards: the
// followers notice its silence and elect a new leader that takes writes;
// the old leader serves no read (its lease ran out and it has no quorum),
// and, woken by the other nodes' silence, steps down by CheckQuorum.
func TestQuietLeaderCutOff(t *testing.T) {
	c := tc.Start(t, tc.Options{Nodes: 3, Shards: 4, Replicas: 3, NewStateMachine: tc.NewRegisterSM})
	ctx := ctxFor(t, 60*time.Second)
	if err := c.WaitForLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	shard := c.Shards[0].ShardId
	k := keyInShard(c, shard, "cut")
	if _, err := c.Propose(ctx, shard, tc.PutCmd(k, []byte("before"))); err != nil {
		t.Fatal(err)
	}
	waitQuiet(ctx, t, c, 4)
	old, err := c.Leader(shard)
	if err != nil {
		t.Fatal(err)
	}
	c.Net.Isolate(old.ID, c.NodeIDs())
	waitNewLeader(ctx, t, c, shard, old.ID)
	if _, err := c.Propose(ctx, shard, tc.PutCmd(k, []byte("after"))); err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	err = old.Store().ReadIndex(rctx, shard)
	cancel()
	if err == nil {
		v, _, _ := tc.ReadKey(old.Engine().Reader(), k)
		t.Fatalf("the cut-off quiet leader served a read (value %q)", v)
	}
	// The silence of the other nodes wakes the quiet old leader, and
	// CheckQuorum then steps it down without hearing from anyone.
	if err := tc.WaitFor(ctx, func() error {
		if st, _ := old.Store().Status(shard); st.Role == raftstore.RoleLeader {
			return errors.New("the cut-off quiet leader still leads")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	c.Net.Heal()
	waitRead(ctx, t, old, shard, k, "after")
	if st, _ := old.Store().Status(shard); st.Role == raftstore.RoleLeader {
		t.Fatal("the old leader still leads after healing")
	}
}

// TestFollowerWithReadInFlightStaysAwake loses a follower's ReadIndex
// request while its leader is about to quiesce. The follower must not go
// quiet on the leader's quiesce heartbeat: a quiet replica does not tick,
// so it would never ask again, and the read would wait for its deadline.
// Awake, it asks again after ReadRetryTicks, which wakes the leader.
//
// Awake, it also counts towards an election: the quiet leader sends it no
// heartbeats. With the default options the read is asked again after
// ElectionTicks/2, half an election timeout before the follower may
// campaign (its clock restarted at the leader's quiesce heartbeat, after
// the read was issued); a follower that campaigned would forget its
// leader and fail the read with ErrNoLeader. When reads were asked again
// only after ElectionTicks, the test lost that race under load (once, in
// a full `go test ./...`).
func TestFollowerWithReadInFlightStaysAwake(t *testing.T) {
	c := tc.Start(t, tc.Options{Nodes: 3, Shards: 1, Replicas: 3, NewStateMachine: tc.NewRegisterSM})
	ctx := ctxFor(t, 60*time.Second)
	if err := c.WaitForLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	shard := c.Shards[0].ShardId
	waitQuiet(ctx, t, c, 1)
	leader, follower := leaderAndOther(t, c, shard)
	c.Net.DropType(follower.ID, leader.ID, raftpb.MsgReadIndex)
	// A write wakes the shard; the leader quiesces again a few idle ticks
	// after it, having heard nothing of the read.
	if _, err := c.Propose(ctx, shard, tc.PutCmd(keyInShard(c, shard, "r"), []byte("v"))); err != nil {
		t.Fatal(err)
	}
	readErr := make(chan error, 1)
	go func() {
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		readErr <- follower.Store().ReadIndex(rctx, shard)
	}()
	if err := tc.WaitFor(ctx, func() error {
		if q := leader.Store().Stats().QuietReplicas; q != 1 {
			return fmt.Errorf("leader not quiet yet")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	c.Net.Heal()
	select {
	case err := <-readErr:
		if err != nil {
			t.Fatalf("follower read: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("follower read still waiting 5 s after its requests got through again (follower quiet: %v)",
			follower.Store().Stats().QuietReplicas == 1)
	}
}

// TestStuckLoopFailsOver blocks one node's loop in the middle of an
// iteration (a sync that never returns) while it leads quiet shards. Its
// ticker runs apart from the loop; were it to go on sending keepalives,
// the followers of those quiet shards would sleep on while nothing on the
// node answers. It stops once the iteration has run half an election
// timeout, so they notice the silence and elect new leaders that take
// writes.
func TestStuckLoopFailsOver(t *testing.T) {
	const shards = 8
	var stuckNode atomic.Uint64
	release := make(chan struct{})
	c := tc.Start(t, tc.Options{Nodes: 3, Shards: shards, Replicas: 3, NewStateMachine: tc.NewRegisterSM,
		StoreOptions: func(node uint64, o *raftstore.Options) {
			k := raftstore.Knobs{}
			if o.Knobs != nil {
				k = *o.Knobs
			}
			k.BeforeLogCommit = func() {
				if stuckNode.Load() == node {
					<-release
				}
			}
			o.Knobs = &k
		}})
	// Registered after the cluster's own cleanup, so it runs first and the
	// stuck loop can finish before its node stops.
	t.Cleanup(func() { close(release) })
	ctx := ctxFor(t, 60*time.Second)
	if err := c.WaitForLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	victim, led := busiestLeader(t, c)
	if len(led) < 2 {
		t.Fatalf("node %d leads %d shards, want 2 or more", victim, len(led))
	}
	waitQuiet(ctx, t, c, shards)
	// A write to one of its shards gets the node's loop stuck before its
	// sync; its other shards stay quiet.
	stuckNode.Store(victim)
	writeShard, quiet := led[0], led[1:]
	go func() {
		wctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		_, _ = c.Node(victim).Store().Propose(wctx, writeShard, tc.PutCmd(keyInShard(c, writeShard, "stuck"), []byte("v")))
	}()
	start := time.Now()
	for _, shard := range quiet {
		var leader *tc.Node
		if err := tc.WaitFor(ctxFor(t, 15*time.Second), func() error {
			for _, n := range c.Nodes {
				if n.ID == victim {
					continue
				}
				if st, err := n.Store().Status(shard); err == nil && st.Role == raftstore.RoleLeader {
					leader = n
					return nil
				}
			}
			return fmt.Errorf("shard %d: no leader besides stuck node %d", shard, victim)
		}); err != nil {
			t.Fatal(err)
		}
		if _, err := leader.Store().Propose(ctx, shard, tc.PutCmd(keyInShard(c, shard, "after"), []byte("v"))); err != nil {
			t.Fatalf("shard %d: write at new leader node %d: %v", shard, leader.ID, err)
		}
	}
	t.Logf("%d quiet shards of the stuck node failed over within %v", len(quiet), time.Since(start))
}
