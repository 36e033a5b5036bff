package raftstore_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/shoaldb/shoal/internal/raftstore"
	tc "github.com/shoaldb/shoal/internal/testcluster"
)

// transferSetup is a one-shard cluster whose leader has started handing
// its leadership to a follower cut off from everyone (and one write
// behind), so that the transfer stays in flight until Raft abandons it or
// the follower comes back.
type transferSetup struct {
	c              *tc.Cluster
	leader, target *tc.Node
	targetReplica  uint64
	transfer       chan error
}

func startStuckTransfer(ctx context.Context, t *testing.T) *transferSetup {
	t.Helper()
	c := tc.Start(t, tc.Options{Nodes: 3, Shards: 1, Replicas: 3, NewStateMachine: tc.NewRegisterSM})
	if err := c.WaitForLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	leader, target := leaderAndOther(t, c, 1)
	st, err := target.Store().Status(1)
	if err != nil {
		t.Fatal(err)
	}
	s := &transferSetup{c: c, leader: leader, target: target, targetReplica: st.ReplicaID, transfer: make(chan error, 1)}
	// The target must name the leader before it is cut off: that is the
	// view a client sent to it meets.
	if err := tc.WaitFor(ctx, func() error {
		if st, err := target.Store().Status(1); err != nil || st.LeaderNode != leader.ID {
			return fmt.Errorf("target names node %d (%v)", st.LeaderNode, err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	c.Net.Isolate(target.ID, c.NodeIDs())
	if _, err := leader.Store().Propose(ctx, 1, tc.PutCmd([]byte("k"), []byte("v0"))); err != nil {
		t.Fatal(err)
	}
	go func() { s.transfer <- leader.Store().TransferLeader(ctx, 1, s.targetReplica) }()
	if err := tc.WaitFor(ctx, func() error {
		if st, err := leader.Store().Status(1); err != nil || st.LeadTransferee != s.targetReplica {
			return fmt.Errorf("leader's transfer goes to replica %d (%v), want %d", st.LeadTransferee, err, s.targetReplica)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return s
}

// TestProposalDuringTransferWaits: a write that reaches a leader handing
// its leadership over waits for the handover to end. Failing it at once
// named the transferee, which still named the old leader: a Redis client
// was sent back and forth between the two until it ran out of
// redirections. Here the transfer is abandoned (its target is cut off),
// and the write is then made by the leader that kept its place.
func TestProposalDuringTransferWaits(t *testing.T) {
	ctx := ctxFor(t, 60*time.Second)
	s := startStuckTransfer(ctx, t)
	heldBefore := s.leader.Store().Stats().ProposalsHeld

	if st, err := s.target.Store().Status(1); err != nil || st.LeaderNode != s.leader.ID {
		t.Fatalf("the cut-off target names node %d (%v); the test needs it to name the leader %d", st.LeaderNode, err, s.leader.ID)
	}
	start := time.Now()
	if _, err := s.leader.Store().Propose(ctx, 1, tc.PutCmd([]byte("k"), []byte("v1"))); err != nil {
		var nl *raftstore.NotLeaderError
		if errors.As(err, &nl) && nl.LeaderNode == s.target.ID {
			t.Fatalf("the leader sent the write to node %d, which sends it back: %v", nl.LeaderNode, err)
		}
		t.Fatalf("write during the transfer: %v", err)
	}
	waited := time.Since(start)
	if got := s.leader.Store().Stats().ProposalsHeld - heldBefore; got == 0 {
		t.Fatalf("the write succeeded after %v without being held: the transfer had ended before it", waited)
	}
	if err := <-s.transfer; !errors.Is(err, raftstore.ErrTransferFailed) {
		t.Fatalf("transfer to a cut-off replica: %v; want ErrTransferFailed", err)
	}
	st, err := s.leader.Store().Status(1)
	if err != nil {
		t.Fatal(err)
	}
	if st.Role != raftstore.RoleLeader || st.LeadTransferee != 0 {
		t.Fatalf("after the abandoned transfer the old leader is %v, handing over to %d", st.Role, st.LeadTransferee)
	}
	if v, _, err := readAt(ctx, s.leader, 1, []byte("k")); err != nil || v != "v1" {
		t.Fatalf("read after the held write: %q, %v; want v1", v, err)
	}
	t.Logf("the write waited %v for the transfer to be abandoned", waited)
}

// TestProposalDuringCompletedTransferNamesNewLeader: when the handover
// succeeds, a write held during it fails with the new leader's name (or
// no leader, while the old one has not yet heard who won), never with a
// replica that names the old leader back, and it was never proposed.
func TestProposalDuringCompletedTransferNamesNewLeader(t *testing.T) {
	ctx := ctxFor(t, 60*time.Second)
	s := startStuckTransfer(ctx, t)
	heldBefore := s.leader.Store().Stats().ProposalsHeld
	done := make(chan error, 1)
	go func() {
		_, err := s.leader.Store().Propose(ctx, 1, tc.PutCmd([]byte("k"), []byte("held")))
		done <- err
	}()
	if err := tc.WaitFor(ctx, func() error {
		if s.leader.Store().Stats().ProposalsHeld == heldBefore {
			return errors.New("write not held yet")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// The target comes back, catches up and takes over; if Raft abandons
	// the transfer first (an election timeout), the held write is made
	// and the test cannot tell.
	s.c.Net.Heal()
	err := <-done
	if err == nil {
		if terr := <-s.transfer; terr == nil {
			t.Fatal("the held write was made although the transfer completed")
		}
		t.Skip("Raft abandoned the transfer before the target caught up; the held write was made by the old leader")
	}
	if terr := <-s.transfer; terr != nil {
		t.Fatalf("transfer after the target came back: %v", terr)
	}
	var nl *raftstore.NotLeaderError
	switch {
	case errors.As(err, &nl):
		if nl.LeaderNode != s.target.ID {
			t.Fatalf("held write failed naming node %d; the new leader is %d: %v", nl.LeaderNode, s.target.ID, err)
		}
	case errors.Is(err, raftstore.ErrNoLeader):
	default:
		t.Fatalf("held write failed with %v; want NotLeaderError naming node %d or ErrNoLeader", err, s.target.ID)
	}
	if errors.Is(err, raftstore.ErrAmbiguous) {
		t.Fatalf("held write failed as ambiguous, but it was never proposed: %v", err)
	}
	st, serr := s.target.Store().Status(1)
	if serr != nil || st.Role != raftstore.RoleLeader {
		t.Fatalf("the target is %v (%v) after the transfer", st.Role, serr)
	}
	if v, _, rerr := readAt(ctx, s.target, 1, []byte("k")); rerr != nil || v != "v0" {
		t.Fatalf("read on the new leader: %q, %v; want v0 (the held write failed, so it must not be there)", v, rerr)
	}
}
