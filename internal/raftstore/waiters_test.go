package raftstore_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/raft/v3/raftpb"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/internal/raftstore"
	tc "github.com/shoaldb/shoal/internal/testcluster"
)

// isolatedLeader starts a 3-node cluster of one shard whose leader stays
// leader for a while once cut off (a long election timeout delays
// CheckQuorum), cuts the leader off, and returns it: proposals on it can
// neither commit nor fail by themselves for about three seconds.
func isolatedLeader(t *testing.T, ctx context.Context) (*tc.Cluster, *tc.Node) {
	t.Helper()
	c := tc.Start(t, tc.Options{Nodes: 3, Shards: 1, Replicas: 3, NewStateMachine: tc.NewRegisterSM,
		StoreOptions: func(_ uint64, o *raftstore.Options) { o.ElectionTicks = 30 }})
	if err := c.WaitForLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Propose(ctx, 1, tc.PutCmd([]byte("k"), []byte("v0"))); err != nil {
		t.Fatal(err)
	}
	ld, err := c.Leader(1)
	if err != nil {
		t.Fatal(err)
	}
	c.Net.Isolate(ld.ID, c.NodeIDs())
	return c, ld
}

// proposeInFlight starts n proposals on node's replica of shard 1 and
// waits until none is queued any more: Raft has them, uncommitted.
func proposeInFlight(ctx context.Context, t *testing.T, node *tc.Node, n int) <-chan error {
	t.Helper()
	st, err := node.Store().Status(1)
	if err != nil {
		t.Fatal(err)
	}
	before := st.LogEntries
	errs := make(chan error, n)
	for i := range n {
		go func() {
			_, err := node.Store().Propose(ctx, 1, tc.PutCmd([]byte("k"), fmt.Appendf(nil, "in flight %d", i)))
			errs <- err
		}()
	}
	if err := tc.WaitFor(ctx, func() error {
		st, err := node.Store().Status(1)
		if err != nil {
			return err
		}
		if st.LogEntries < before+uint64(n) {
			return fmt.Errorf("%d of %d proposals in the log", st.LogEntries-before, n)
		}
		if st.Role != raftstore.RoleLeader {
			return errors.New("the isolated leader stepped down before the proposals were in flight")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return errs
}

// collect waits for n results, each of which must match want.
func collect(t *testing.T, errs <-chan error, n int, want error, what string) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for i := range n {
		select {
		case err := <-errs:
			if !errors.Is(err, want) || !errors.Is(err, raftstore.ErrAmbiguous) {
				t.Fatalf("proposal %d in flight at %s: %v, want %v and ambiguous", i, what, err, want)
			}
		case <-deadline:
			t.Fatalf("%d of %d proposals in flight at %s never completed", n-i, n, what)
		}
	}
}

// TestStopCompletesProposalsInFlight: stopping a store completes every
// proposal Raft holds but has not committed, as ambiguous (it may still
// commit through a later leader), instead of leaving callers to their
// deadlines.
func TestStopCompletesProposalsInFlight(t *testing.T) {
	ctx := ctxFor(t, 60*time.Second)
	_, ld := isolatedLeader(t, ctx)
	errs := proposeInFlight(ctx, t, ld, 5)
	ld.Stop()
	collect(t, errs, 5, raftstore.ErrStopped, "stop")
}

// TestRemovalCompletesProposalsInFlight: a leader that learns it was
// removed from its shard (the majority went on without it) completes the
// proposals it holds with ErrShardRemoved and is gone.
func TestRemovalCompletesProposalsInFlight(t *testing.T) {
	ctx := ctxFor(t, 60*time.Second)
	c, ld := isolatedLeader(t, ctx)
	errs := proposeInFlight(ctx, t, ld, 5)
	st, err := ld.Store().Status(1)
	if err != nil {
		t.Fatal(err)
	}
	other := c.Nodes[0]
	if other == ld {
		other = c.Nodes[1]
	}
	ld.Store().HandleRaftBatch([]*shoalpb.RaftMessage{{
		ShardId: 1, FromNode: other.ID, ToNode: ld.ID, Epoch: st.Descriptor.Epoch + 1, Removed: true,
		Message: &raftpb.Message{To: new(st.ReplicaID), From: new(uint64(1))},
	}})
	collect(t, errs, 5, raftstore.ErrShardRemoved, "removal")
	if _, err := ld.Store().Status(1); !errors.Is(err, raftstore.ErrShardNotFound) {
		t.Fatalf("status of the removed replica: %v, want ErrShardNotFound", err)
	}
}

// TestQueuedProposalsBounded: proposals waiting for a busy replica's loop
// are bounded by MaxQueuedProposals; the next one fails at once with
// ErrOverloaded (not ambiguous: nothing was proposed), and the queued ones
// complete once the loop goes on.
func TestQueuedProposalsBounded(t *testing.T) {
	const bound = 4
	var armed atomic.Bool
	blocked := make(chan struct{})
	release := make(chan struct{})
	var leader atomic.Uint64
	c := tc.Start(t, tc.Options{Nodes: 3, Shards: 1, Replicas: 3, NewStateMachine: tc.NewRegisterSM,
		StoreOptions: func(id uint64, o *raftstore.Options) {
			o.MaxQueuedProposals = bound
			o.Knobs = &raftstore.Knobs{BeforeLogCommit: func() {
				if id == leader.Load() && armed.CompareAndSwap(true, false) {
					close(blocked)
					<-release
				}
			}}
		}})
	ctx := ctxFor(t, 60*time.Second)
	if err := c.WaitForLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	ld, err := c.Leader(1)
	if err != nil {
		t.Fatal(err)
	}
	leader.Store(ld.ID)
	armed.Store(true)
	errs := make(chan error, bound+1)
	propose := func(v string) {
		_, err := ld.Store().Propose(ctx, 1, tc.PutCmd([]byte("k"), []byte(v)))
		errs <- err
	}
	go propose("parks the loop")
	<-blocked
	released := false
	defer func() {
		if !released {
			close(release)
		}
	}()
	for i := range bound {
		go propose(fmt.Sprint("queued ", i))
	}
	if err := tc.WaitFor(ctx, func() error {
		if q := raftstore.QueuedRequests(ld.Store(), 1); q != bound {
			return fmt.Errorf("%d proposals queued, want %d", q, bound)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	_, err = ld.Store().Propose(ctx, 1, tc.PutCmd([]byte("k"), []byte("one too many")))
	if !errors.Is(err, raftstore.ErrOverloaded) || errors.Is(err, raftstore.ErrAmbiguous) {
		t.Fatalf("proposal over the queue bound: %v, want ErrOverloaded, not ambiguous", err)
	}
	close(release)
	released = true
	for i := range bound + 1 {
		select {
		case err := <-errs:
			if err != nil {
				t.Fatalf("queued proposal %d: %v", i, err)
			}
		case <-ctx.Done():
			t.Fatal("queued proposals never completed")
		}
	}
}

// TestPreVoteKeepsTerm: a follower cut off from its leader campaigns only
// as a pre-candidate, without raising its term, so when it comes back it
// does not depose the leader.
func TestPreVoteKeepsTerm(t *testing.T) {
	c := tc.Start(t, tc.Options{Nodes: 3, Shards: 1, Replicas: 3, NewStateMachine: tc.NewRegisterSM,
		StoreOptions: func(_ uint64, o *raftstore.Options) { o.DisableQuiesce = true }})
	ctx := ctxFor(t, 60*time.Second)
	if err := c.WaitForLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	ld, err := c.Leader(1)
	if err != nil {
		t.Fatal(err)
	}
	before, _ := ld.Store().Status(1)
	f := c.Nodes[0]
	if f == ld {
		f = c.Nodes[1]
	}
	c.Net.Isolate(f.ID, c.NodeIDs())
	// Wait until the follower has been a pre-candidate for three election
	// timeouts (it stays one from one failed pre-campaign to the next).
	var firstPre time.Time
	raised := uint64(0)
	if err := tc.WaitFor(ctx, func() error {
		st, err := f.Store().Status(1)
		if err != nil {
			return err
		}
		if st.Term != before.Term {
			raised = st.Term
			return nil
		}
		switch {
		case st.Role != raftstore.RolePreCandidate:
			return fmt.Errorf("the cut-off follower is a %s", st.Role)
		case firstPre.IsZero():
			firstPre = time.Now()
		}
		if time.Since(firstPre) < 3*time.Second {
			return errors.New("not a pre-candidate for long enough yet")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if raised != 0 {
		t.Fatalf("the cut-off follower raised its term from %d to %d: it campaigned without a pre-vote", before.Term, raised)
	}
	c.Net.Heal()
	k := []byte("after")
	if _, err := ld.Store().Propose(ctx, 1, tc.PutCmd(k, []byte("heal"))); err != nil {
		t.Fatal(err)
	}
	waitRead(ctx, t, f, 1, k, "heal")
	after, _ := ld.Store().Status(1)
	if after.Role != raftstore.RoleLeader || after.Term != before.Term {
		t.Fatalf("leader after the follower came back: %s in term %d, was leader in term %d", after.Role, after.Term, before.Term)
	}
}

// TestReadIndexWithoutLease: with leases off every linearizable read on a
// leader or a follower takes a ReadIndex round, and a leader cut off from
// its followers serves no read, even before CheckQuorum deposes it.
func TestReadIndexWithoutLease(t *testing.T) {
	c := tc.Start(t, tc.Options{Nodes: 3, Shards: 1, Replicas: 3, NewStateMachine: tc.NewRegisterSM,
		StoreOptions: func(_ uint64, o *raftstore.Options) { o.ReadLease = -1; o.ElectionTicks = 30 }})
	ctx := ctxFor(t, 60*time.Second)
	if err := c.WaitForLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	ld, err := c.Leader(1)
	if err != nil {
		t.Fatal(err)
	}
	k := []byte("k")
	for i := range 5 {
		v := fmt.Sprint("v", i)
		if _, err := ld.Store().Propose(ctx, 1, tc.PutCmd(k, []byte(v))); err != nil {
			t.Fatal(err)
		}
		// Read right after the write, on every node: a read that missed
		// it would not be linearizable.
		for _, n := range c.Nodes {
			got, _, err := readAt(ctx, n, 1, k)
			if err != nil || got != v {
				t.Fatalf("read on node %d after writing %q: %q, %v", n.ID, v, got, err)
			}
		}
	}
	var rounds uint64
	for _, n := range c.Nodes {
		st := n.Store().Stats()
		if st.LeaseReads != 0 {
			t.Fatalf("node %d served %d reads under a lease with leases off", n.ID, st.LeaseReads)
		}
		rounds += st.ReadRounds
	}
	if rounds == 0 {
		t.Fatal("no ReadIndex round was counted")
	}
	c.Net.Isolate(ld.ID, c.NodeIDs())
	short, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
	defer cancel()
	if err := ld.Store().ReadIndex(short, 1); err == nil {
		t.Fatal("a leader cut off from every follower served a read")
	}
	if st, _ := ld.Store().Status(1); st.Role != raftstore.RoleLeader {
		t.Logf("the cut-off leader stepped down within the read's deadline (%s): the read could not pass anyway", st.Role)
	}
}
