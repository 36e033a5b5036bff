package raftstore_test

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/shoaldb/shoal/internal/raftstore"
	tc "github.com/shoaldb/shoal/internal/testcluster"
)

// TestLeaseReads checks that a leader serves reads under its lease, with no
// ReadIndex round, and that once it is cut off it serves none after the
// majority has elected a new leader and acknowledged a write: a read
// started after that write would return the old value.
func TestLeaseReads(t *testing.T) {
	c := tc.Start(t, tc.Options{Nodes: 3, Shards: 1, Replicas: 3, NewStateMachine: tc.NewRegisterSM})
	ctx := ctxFor(t, 60*time.Second)
	if err := c.WaitForLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	k := []byte("lease")
	if _, err := c.Propose(ctx, 1, tc.PutCmd(k, []byte("before"))); err != nil {
		t.Fatal(err)
	}
	old, err := c.Leader(1)
	if err != nil {
		t.Fatal(err)
	}
	s := old.Store()

	// The first read takes a ReadIndex round, whose answer grants the
	// lease; reads after it are served locally.
	if err := tc.WaitFor(ctx, func() error {
		v, _, err := readAt(ctx, old, 1, k)
		if err != nil {
			return err
		}
		if v != "before" {
			return fmt.Errorf("read %q", v)
		}
		if s.Stats().LeaseReads == 0 {
			return errors.New("no read served under a lease yet")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if held, _ := raftstore.LeaseState(s, 1); !held {
		t.Fatal("lease reads were served but no lease is held")
	}
	// A write through this leader is visible to its next lease read.
	if _, err := s.Propose(ctx, 1, tc.PutCmd(k, []byte("through leader"))); err != nil {
		t.Fatal(err)
	}
	before := s.Stats().LeaseReads
	if v, _, err := readAt(ctx, old, 1, k); err != nil || v != "through leader" {
		t.Fatalf("read after write on the leader: %q, %v", v, err)
	}
	t.Logf("lease reads %d, read rounds %d", s.Stats().LeaseReads, s.Stats().ReadRounds)

	// Cut the leader off while a reader keeps reading from it.
	type served struct {
		start time.Time
		value string
	}
	var (
		mu   sync.Mutex
		seen []served
	)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			start := time.Now()
			rctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
			v, _, err := readAt(rctx, old, 1, k)
			cancel()
			if err == nil {
				mu.Lock()
				seen = append(seen, served{start, v})
				mu.Unlock()
			}
		}
	}()
	c.Net.Isolate(old.ID, c.NodeIDs())
	isolated := time.Now()
	waitNewLeader(ctx, t, c, 1, old.ID)
	if _, err := c.Propose(ctx, 1, tc.PutCmd(k, []byte("after"))); err != nil {
		t.Fatal(err)
	}
	acked := time.Now()
	// A read started now must not be served by the isolated node.
	rctx, cancel := context.WithTimeout(ctx, time.Second)
	err = s.ReadIndex(rctx, 1)
	cancel()
	close(stop)
	wg.Wait()
	if err == nil {
		v, _, _ := tc.ReadKey(old.Engine().Reader(), k)
		t.Fatalf("the isolated old leader served a read (value %q) after the new leader acknowledged a write", v)
	}
	var last time.Time
	for _, r := range seen {
		if r.start.After(acked) {
			t.Fatalf("a read started %v after the new leader's write was acknowledged was served: %q", r.start.Sub(acked), r.value)
		}
		if r.value != "through leader" {
			t.Fatalf("isolated leader served %q", r.value)
		}
		if r.start.After(isolated) && r.start.After(last) {
			last = r.start
		}
	}
	if !last.IsZero() {
		t.Logf("the isolated leader served reads until %v after the cut; the new leader's first write was acknowledged %v after it",
			last.Sub(isolated), acked.Sub(isolated))
	}
	if s.Stats().LeaseReads <= before {
		t.Fatal("no lease reads counted")
	}
}

// TestRestartedReplicaIgnoresVotes checks the guard that keeps a restarted
// follower from voting while a lease it may have confirmed runs on: a
// replica that has a term ignores votes for an election timeout after it
// starts, and takes part in elections again afterwards.
func TestRestartedReplicaIgnoresVotes(t *testing.T) {
	c := tc.Start(t, tc.Options{Nodes: 3, Shards: 1, Replicas: 3, NewStateMachine: tc.NewRegisterSM})
	ctx := ctxFor(t, 60*time.Second)
	if err := c.WaitForLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	// Freshly bootstrapped replicas are in the bootstrap term, which no
	// leader has: they must not ignore the first campaign.
	for _, n := range c.Nodes {
		if raftstore.VoteGuardSet(n.Store(), 1) {
			t.Fatalf("node %d: a bootstrapped replica ignored votes", n.ID)
		}
	}
	if _, err := c.Propose(ctx, 1, tc.PutCmd([]byte("k"), []byte("v"))); err != nil {
		t.Fatal(err)
	}
	_, follower := leaderAndOther(t, c, 1)
	follower.Stop()
	if err := follower.Restart(); err != nil {
		t.Fatal(err)
	}
	if _, guard := raftstore.LeaseState(follower.Store(), 1); !guard {
		t.Fatal("a restarted follower with a term does not ignore votes")
	}
	// The guard ends: the shard still works with the restarted node.
	if err := tc.WaitFor(ctx, func() error {
		if _, guard := raftstore.LeaseState(follower.Store(), 1); guard {
			return errors.New("still guarded")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Propose(ctx, 1, tc.PutCmd([]byte("k"), []byte("v2"))); err != nil {
		t.Fatal(err)
	}
}

// TestLeaseAfterAbandonedTransfer: a leader whose transfer is abandoned
// before its target was told to campaign (the target never caught up)
// takes leases again in the same term; one that did tell its target
// (MsgTimeoutNow, here lost on the way) takes none for the rest of the
// term, since the target may still campaign with votes that leases do not
// hold back.
func TestLeaseAfterAbandonedTransfer(t *testing.T) {
	c := tc.Start(t, tc.Options{Nodes: 3, Shards: 1, Replicas: 3, NewStateMachine: tc.NewRegisterSM})
	ctx := ctxFor(t, 60*time.Second)
	if err := c.WaitForLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	k := []byte("k")
	if _, err := c.Propose(ctx, 1, tc.PutCmd(k, []byte("v0"))); err != nil {
		t.Fatal(err)
	}
	leader, err := c.Leader(1)
	if err != nil {
		t.Fatal(err)
	}
	s := leader.Store()
	var target *tc.Node
	for _, id := range c.NodeIDs() {
		if id != leader.ID {
			target = c.Node(id)
			break
		}
	}
	targetReplica := func() uint64 {
		st, err := target.Store().Status(1)
		if err != nil {
			t.Fatal(err)
		}
		return st.ReplicaID
	}()
	term := func() uint64 {
		st, err := s.Status(1)
		if err != nil {
			t.Fatal(err)
		}
		return st.Term
	}
	leased := func(ctx context.Context) error {
		return tc.WaitFor(ctx, func() error {
			if _, _, err := readAt(ctx, leader, 1, k); err != nil {
				return err
			}
			if held, _ := raftstore.LeaseState(s, 1); !held {
				return errors.New("no lease")
			}
			return nil
		})
	}
	if err := leased(ctx); err != nil {
		t.Fatal(err)
	}
	term0 := term()

	// The target is cut off and falls behind: Raft never tells it to
	// campaign, and abandons the transfer after an election timeout.
	c.Net.Isolate(target.ID, c.NodeIDs())
	if _, err := s.Propose(ctx, 1, tc.PutCmd(k, []byte("v1"))); err != nil {
		t.Fatal(err)
	}
	if err := s.TransferLeader(ctx, 1, targetReplica); !errors.Is(err, raftstore.ErrTransferFailed) {
		t.Fatalf("transfer to a cut-off replica: %v; want ErrTransferFailed", err)
	}
	lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err = leased(lctx)
	cancel()
	if err != nil {
		t.Fatalf("no lease again after a transfer abandoned before MsgTimeoutNow: %v", err)
	}
	if term() != term0 {
		t.Fatalf("term moved from %d to %d: the test needs the same term", term0, term())
	}

	// The target catches up, then is cut off again: the transfer sends it
	// MsgTimeoutNow at once, which is lost, and is abandoned too.
	c.Net.Heal()
	if err := tc.WaitFor(ctx, func() error {
		st, err := s.Status(1)
		if err != nil {
			return err
		}
		if got, want := st.Progress[targetReplica].Match, st.Progress[st.ReplicaID].Match; got != want {
			return fmt.Errorf("target matches %d of %d", got, want)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	c.Net.Isolate(target.ID, c.NodeIDs())
	if err := s.TransferLeader(ctx, 1, targetReplica); !errors.Is(err, raftstore.ErrTransferFailed) {
		t.Fatalf("transfer to a replica cut off after catching up: %v; want ErrTransferFailed", err)
	}
	// TransferLeader gives up on wall-clock time, Raft on processed ticks:
	// wait until Raft has abandoned the transfer too (it refuses
	// proposals while one runs), so that the reads below could be granted
	// a lease if one were allowed.
	if err := tc.WaitFor(ctx, func() error {
		_, err := s.Propose(ctx, 1, tc.PutCmd(k, []byte("v2")))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if term() != term0 {
		t.Fatalf("term moved from %d to %d: the test needs the same term", term0, term())
	}
	// Each read takes a ReadIndex round whose answer would grant a lease
	// if one could be taken.
	before := s.Stats().LeaseReads
	for i := range 3 {
		if v, _, err := readAt(ctx, leader, 1, k); err != nil || v != "v2" {
			t.Fatalf("read %d: %q, %v", i, v, err)
		}
		if held, _ := raftstore.LeaseState(s, 1); held {
			t.Fatalf("a lease was taken in term %d after MsgTimeoutNow was sent in it", term0)
		}
	}
	if got := s.Stats().LeaseReads; got != before {
		t.Fatalf("%d reads served under a lease after MsgTimeoutNow", got-before)
	}
}
