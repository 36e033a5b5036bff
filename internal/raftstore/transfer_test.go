package raftstore_test

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"go.etcd.io/raft/v3/raftpb"

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

// electionTicks sets the shard's election timeout (ticks of 100 ms): Raft
// abandons a transfer after one, and each test leaves itself room before
// that.
func startStuckTransfer(ctx context.Context, t *testing.T, electionTicks int, more ...func(*raftstore.Options)) *transferSetup {
	t.Helper()
	c, leader, target, targetReplica := startTransferCluster(ctx, t, electionTicks, more...)
	s := &transferSetup{c: c, leader: leader, target: target, targetReplica: targetReplica, transfer: make(chan error, 1)}
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
// redirections. Here the transfer is aborted (nothing is heard from its
// cut-off target for half an election timeout, sooner than Raft would
// abandon it), and the write is then made by the leader that kept its
// place.
func TestProposalDuringTransferWaits(t *testing.T) {
	ctx := ctxFor(t, 60*time.Second)
	s := startStuckTransfer(ctx, t, 20)
	before := s.leader.Store().Stats()
	heldBefore := before.ProposalsHeld

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
	if got := s.leader.Store().Stats().ProposalsHeld - heldBefore; got != 1 {
		t.Fatalf("%d writes counted as held after %v; want the one (once, however long it waited)", got, waited)
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
	if got := s.leader.Store().Stats().TransfersAborted - before.TransfersAborted; got != 1 {
		t.Fatalf("%d transfers aborted; want the one whose target fell silent", got)
	}
	t.Logf("the write waited %v for the transfer to be aborted", waited)
}

// TestProposalDuringCompletedTransferNamesNewLeader: when the handover
// succeeds, a write held during it fails with the new leader's name (or
// no leader, while the old one has not yet heard who won), never with a
// replica that names the old leader back, and it was never proposed.
func TestProposalDuringCompletedTransferNamesNewLeader(t *testing.T) {
	ctx := ctxFor(t, 60*time.Second)
	// An election timeout of 5 s: the target, back, catches up and wins
	// long before Raft would abandon the transfer.
	s := startStuckTransfer(ctx, t, 50)
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
	s.c.Net.Heal()
	err := <-done
	if err == nil {
		t.Fatalf("the held write was made by the old leader: the transfer was abandoned (%v)", <-s.transfer)
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
	// The target publishes its status after sending the messages that
	// told the old leader it leads (see TestTransferWaitsForLaggingTarget).
	if err := tc.WaitFor(ctx, func() error {
		if st, serr := s.target.Store().Status(1); serr != nil || st.Role != raftstore.RoleLeader {
			return fmt.Errorf("the target is %v (%v) after the transfer", st.Role, serr)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if v, _, rerr := readAt(ctx, s.target, 1, []byte("k")); rerr != nil || v != "v0" {
		t.Fatalf("read on the new leader: %q, %v; want v0 (the held write failed, so it must not be there)", v, rerr)
	}
}

// behindEntries is how far a lagging target falls behind: more than the
// 128 entries a transfer may start at.
const behindEntries = 200

// startLaggingTarget starts a one-shard cluster with the given election
// timeout (ticks of 100 ms), cuts a follower off and writes behindEntries
// entries without it. It returns the cluster, the leader, the follower and
// the follower's replica ID.
func startLaggingTarget(ctx context.Context, t *testing.T, electionTicks int) (*tc.Cluster, *tc.Node, *tc.Node, uint64) {
	t.Helper()
	c, leader, target, targetReplica := startTransferCluster(ctx, t, electionTicks)
	c.Net.Isolate(target.ID, c.NodeIDs())
	writeBehind(ctx, t, leader.Store())
	return c, leader, target, targetReplica
}

// writeBehind makes behindEntries writes through s, the shard's leader.
func writeBehind(ctx context.Context, t *testing.T, s *raftstore.Store) {
	t.Helper()
	for i := range behindEntries {
		if _, err := s.Propose(ctx, 1, tc.PutCmd([]byte("k"), []byte(fmt.Sprint("v", i)))); err != nil {
			t.Fatal(err)
		}
	}
}

// startTransferCluster starts a one-shard cluster of three with the given
// election timeout (ticks of 100 ms) and more of the store options, and
// returns it, the shard's leader, a follower and the follower's replica
// ID.
func startTransferCluster(ctx context.Context, t *testing.T, electionTicks int, more ...func(*raftstore.Options)) (*tc.Cluster, *tc.Node, *tc.Node, uint64) {
	t.Helper()
	c := tc.Start(t, tc.Options{Nodes: 3, Shards: 1, Replicas: 3, NewStateMachine: tc.NewRegisterSM,
		StoreOptions: func(_ uint64, o *raftstore.Options) {
			o.ElectionTicks = electionTicks
			for _, f := range more {
				f(o)
			}
		}})
	if err := c.WaitForLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	leader, target := leaderAndOther(t, c, 1)
	st, err := target.Store().Status(1)
	if err != nil {
		t.Fatal(err)
	}
	return c, leader, target, st.ReplicaID
}

// TestTransferWaitsForLaggingTarget: a transfer to a replica far behind
// the leader's log is handed to Raft only once the replica is close, since
// Raft refuses every write from then until the target has caught up and
// won. Meanwhile writes go on as usual.
func TestTransferWaitsForLaggingTarget(t *testing.T) {
	ctx := ctxFor(t, 60*time.Second)
	c, leader, target, targetReplica := startLaggingTarget(ctx, t, 50)
	s := leader.Store()
	before := s.Stats()
	transfer := make(chan error, 1)
	go func() { transfer <- s.TransferLeader(ctx, 1, targetReplica) }()
	waitRequested(ctx, t, s, before)
	for i := range 20 {
		if _, err := s.Propose(ctx, 1, tc.PutCmd([]byte("k"), []byte(fmt.Sprint("w", i)))); err != nil {
			t.Fatalf("write %d while the transfer waits for its target: %v", i, err)
		}
		if st, err := s.Status(1); err != nil || st.LeadTransferee != 0 {
			t.Fatalf("the transfer was handed to Raft with the target %d entries behind (%v)", behindEntries, err)
		}
	}
	if held := s.Stats().ProposalsHeld - before.ProposalsHeld; held != 0 {
		t.Fatalf("%d writes were held while the target was far behind", held)
	}
	// Back, the target catches up; the transfer goes to Raft and completes.
	c.Net.Heal()
	if err := <-transfer; err != nil {
		t.Fatalf("transfer after the target came back: %v", err)
	}
	// TransferLeader returned once the old leader heard from the target
	// as leader; the target publishes its own status after it has sent
	// those messages, so it may still read as a candidate for a moment.
	if err := tc.WaitFor(ctx, func() error {
		if st, err := target.Store().Status(1); err != nil || st.Role != raftstore.RoleLeader {
			return fmt.Errorf("target is %v (%v) after the transfer", st.Role, err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if v, _, err := readAt(ctx, target, 1, []byte("k")); err != nil || v != "w19" {
		t.Fatalf("read on the new leader: %q, %v; want w19", v, err)
	}
	if after := s.Stats(); after.TransfersStarted != before.TransfersStarted+1 || after.TransfersGivenUp != before.TransfersGivenUp {
		t.Fatalf("transfers started %d, given up %d; want one started", after.TransfersStarted-before.TransfersStarted,
			after.TransfersGivenUp-before.TransfersGivenUp)
	}
}

// waitRequested waits until s has taken the transfer asked for since before.
func waitRequested(ctx context.Context, t *testing.T, s *raftstore.Store, before raftstore.Stats) {
	t.Helper()
	if err := tc.WaitFor(ctx, func() error {
		if s.Stats().TransfersRequested == before.TransfersRequested {
			return errors.New("transfer not taken yet")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// TestTransferToSilentLaggingTargetGivesUp: a transfer to a replica far
// behind that does not answer is given up after an election timeout
// without ever being handed to Raft, so no write waits for it.
func TestTransferToSilentLaggingTargetGivesUp(t *testing.T) {
	ctx := ctxFor(t, 60*time.Second)
	_, leader, _, targetReplica := startLaggingTarget(ctx, t, 20)
	s := leader.Store()
	before := s.Stats()
	transfer := make(chan error, 1)
	go func() { transfer <- s.TransferLeader(ctx, 1, targetReplica) }()
	waitRequested(ctx, t, s, before)
	// Writes go on until TransferLeader gives up (three election timeouts),
	// past the point where the transfer could have been handed to Raft.
	writes := 0
	for done := false; !done; writes++ {
		select {
		case err := <-transfer:
			if !errors.Is(err, raftstore.ErrTransferFailed) {
				t.Fatalf("transfer to a silent replica far behind: %v; want ErrTransferFailed", err)
			}
			done = true
		default:
		}
		if _, err := s.Propose(ctx, 1, tc.PutCmd([]byte("k"), []byte(fmt.Sprint("w", writes)))); err != nil {
			t.Fatalf("write %d while a transfer to a silent replica was asked for: %v", writes, err)
		}
		if st, err := s.Status(1); err != nil || st.LeadTransferee != 0 {
			t.Fatalf("the transfer was handed to Raft although its target was silent and behind (%v)", err)
		}
	}
	after := s.Stats()
	if held := after.ProposalsHeld - before.ProposalsHeld; held != 0 {
		t.Fatalf("%d of %d writes were held for a transfer to a silent replica", held, writes)
	}
	if after.TransfersGivenUp != before.TransfersGivenUp+1 || after.TransfersStarted != before.TransfersStarted {
		t.Fatalf("transfers given up %d, started %d; want one given up", after.TransfersGivenUp-before.TransfersGivenUp,
			after.TransfersStarted-before.TransfersStarted)
	}
	t.Logf("%d writes while the transfer waited and was given up", writes)
}

// TestTransferToActiveLaggingTargetIsForced: a target that still answers
// (its heartbeats do) but stays far behind (its appends are lost) gets the
// transfer handed to Raft after an election timeout, as etcd raft would
// have at once: it may be slow rather than gone. Here it never catches
// up, so Raft abandons the transfer and the leader keeps its place.
func TestTransferToActiveLaggingTargetIsForced(t *testing.T) {
	ctx := ctxFor(t, 60*time.Second)
	c, leader, target, targetReplica := startTransferCluster(ctx, t, 20)
	s := leader.Store()
	c.Net.DropType(leader.ID, target.ID, raftpb.MsgApp)
	writeBehind(ctx, t, s)
	before := s.Stats()
	if err := s.TransferLeader(ctx, 1, targetReplica); !errors.Is(err, raftstore.ErrTransferFailed) {
		t.Fatalf("transfer to a replica whose appends are lost: %v; want ErrTransferFailed", err)
	}
	after := s.Stats()
	if after.TransfersStarted != before.TransfersStarted+1 || after.TransfersGivenUp != before.TransfersGivenUp {
		t.Fatalf("transfers started %d, given up %d; want one started (the target answers)",
			after.TransfersStarted-before.TransfersStarted, after.TransfersGivenUp-before.TransfersGivenUp)
	}
	if st, err := s.Status(1); err != nil || st.Role != raftstore.RoleLeader {
		t.Fatalf("the leader is %v (%v) after a transfer its target could not take", st.Role, err)
	}
}

// TestHeldProposalsBounded: no more than MaxQueuedProposals wait for a
// transfer; the next fails at once as overloaded, and those held are made
// once the transfer is abandoned.
func TestHeldProposalsBounded(t *testing.T) {
	ctx := ctxFor(t, 60*time.Second)
	s := startStuckTransfer(ctx, t, 20, func(o *raftstore.Options) { o.MaxQueuedProposals = 2 })
	st := s.leader.Store()
	before := st.Stats().ProposalsHeld
	held := make(chan error, 2)
	for i := range 2 {
		go func() {
			_, err := st.Propose(ctx, 1, tc.PutCmd([]byte("k"), []byte(fmt.Sprint("held", i))))
			held <- err
		}()
	}
	if err := tc.WaitFor(ctx, func() error {
		if n := st.Stats().ProposalsHeld - before; n < 2 {
			return fmt.Errorf("%d writes held", n)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := st.Propose(ctx, 1, tc.PutCmd([]byte("k"), []byte("third"))); !errors.Is(err, raftstore.ErrOverloaded) {
		t.Fatalf("a third write with two held and a bound of two: %v; want ErrOverloaded", err)
	}
	for range 2 {
		if err := <-held; err != nil {
			t.Fatalf("a held write after the transfer was abandoned: %v", err)
		}
	}
}

// TestAbandonedHeldWriteFailsPlainly: a write whose caller gives up while
// it is held for a transfer fails as a plain timeout, not as ambiguous,
// and is never applied: it had not reached Raft, and the store drops it
// instead of proposing it once the transfer ends. A Redis client told so
// (TRYAGAIN) may safely run it again; told "outcome unknown" it could not.
func TestAbandonedHeldWriteFailsPlainly(t *testing.T) {
	ctx := ctxFor(t, 60*time.Second)
	s := startStuckTransfer(ctx, t, 20)
	st := s.leader.Store()
	before := st.Stats()
	wctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer cancel()
	_, err := st.Propose(wctx, 1, tc.PutCmd([]byte("gone"), []byte("x")))
	if !errors.Is(err, raftstore.ErrTimeout) || errors.Is(err, raftstore.ErrAmbiguous) {
		t.Fatalf("a write given up while held: %v; want ErrTimeout without ErrAmbiguous", err)
	}
	if got := st.Stats().ProposalsHeld - before.ProposalsHeld; got != 1 {
		t.Fatalf("%d writes held; the test needs its write to have been held", got)
	}
	if err := <-s.transfer; !errors.Is(err, raftstore.ErrTransferFailed) {
		t.Fatalf("transfer to a cut-off replica: %v; want ErrTransferFailed", err)
	}
	// Held writes are proposed, when the transfer ends, before anything
	// that arrives later: once this one is applied, the given-up one would
	// have been too.
	if _, err := st.Propose(ctx, 1, tc.PutCmd([]byte("k"), []byte("after"))); err != nil {
		t.Fatalf("write after the transfer: %v", err)
	}
	if v, found, err := readAt(ctx, s.leader, 1, []byte("gone")); err != nil || found {
		t.Fatalf("the given-up write: %q (found %v, %v); it must never be applied", v, found, err)
	}
	if got := st.Stats().Proposals - before.Proposals; got != 1 {
		t.Fatalf("%d proposals handed to Raft; want 1 (the later write)", got)
	}
}

// TestCancelledTransferDoesNotHappen: a TransferLeader whose caller gives
// up while the transfer waits for its target to catch up withdraws it;
// the target, back and caught up, does not take over later, when the
// caller has been told the transfer failed.
func TestCancelledTransferDoesNotHappen(t *testing.T) {
	ctx := ctxFor(t, 60*time.Second)
	c, leader, target, targetReplica := startLaggingTarget(ctx, t, 50)
	s := leader.Store()
	before := s.Stats()
	tctx, cancel := context.WithCancel(ctx)
	transfer := make(chan error, 1)
	go func() { transfer <- s.TransferLeader(tctx, 1, targetReplica) }()
	waitRequested(ctx, t, s, before)
	cancel()
	if err := <-transfer; !errors.Is(err, raftstore.ErrTimeout) {
		t.Fatalf("transfer whose caller gave up: %v; want ErrTimeout", err)
	}
	if err := tc.WaitFor(ctx, func() error {
		if s.Stats().TransfersCancelled == before.TransfersCancelled {
			return errors.New("transfer not withdrawn yet")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// Back, the target catches up; had the request stayed, the leader
	// would hand it over at its next iteration, which the write makes.
	c.Net.Heal()
	if err := tc.WaitFor(ctx, func() error {
		st, err := s.Status(1)
		if err != nil {
			return err
		}
		if m, last := st.Progress[targetReplica].Match, st.Progress[st.ReplicaID].Match; m < last {
			return fmt.Errorf("target at %d of %d", m, last)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Propose(ctx, 1, tc.PutCmd([]byte("k"), []byte("after"))); err != nil {
		t.Fatalf("write after the target caught up: %v", err)
	}
	st, err := s.Status(1)
	if err != nil {
		t.Fatal(err)
	}
	if st.Role != raftstore.RoleLeader || st.LeadTransferee != 0 || s.Stats().TransfersStarted != before.TransfersStarted {
		t.Fatalf("after its caller gave up, the transfer went on: leader is %v, handing over to %d, %d started",
			st.Role, st.LeadTransferee, s.Stats().TransfersStarted-before.TransfersStarted)
	}
	if tst, err := target.Store().Status(1); err != nil || tst.Role == raftstore.RoleLeader {
		t.Fatalf("target became %v (%v)", tst.Role, err)
	}
}
