package raftstore_test

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shoaldb/shoal/internal/raftstore"
	tc "github.com/shoaldb/shoal/internal/testcluster"
)

// parkedLeader is a 3-node, 1-shard cluster whose leader's loop can be
// parked in the group commit of an iteration, so that proposals queue up
// and the next iteration takes them together.
type parkedLeader struct {
	c       *tc.Cluster
	leader  *tc.Node
	armed   atomic.Bool
	blocked chan struct{}
	release chan struct{}
}

func startParkedLeader(t *testing.T, adjust func(o *raftstore.Options)) *parkedLeader {
	t.Helper()
	p := &parkedLeader{blocked: make(chan struct{}), release: make(chan struct{})}
	var leader atomic.Uint64
	p.c = tc.Start(t, tc.Options{Nodes: 3, Shards: 1, Replicas: 3, NewStateMachine: tc.NewRegisterSM,
		StoreOptions: func(id uint64, o *raftstore.Options) {
			if adjust != nil {
				adjust(o)
			}
			o.Knobs = &raftstore.Knobs{BeforeLogCommit: func() {
				if id == leader.Load() && p.armed.CompareAndSwap(true, false) {
					close(p.blocked)
					<-p.release
				}
			}}
		}})
	ctx := ctxFor(t, 30*time.Second)
	if err := p.c.WaitForLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := p.c.Propose(ctx, 1, tc.PutCmd([]byte("k"), []byte("v0"))); err != nil {
		t.Fatal(err)
	}
	var err error
	if p.leader, err = p.c.Leader(1); err != nil {
		t.Fatal(err)
	}
	leader.Store(p.leader.ID)
	return p
}

// park proposes trigger on the leader, with a deadline of timeout, and
// returns once the leader's loop is parked in that proposal's group
// commit; the proposal's outcome goes to errs. The loop stays parked until
// unpark (or the test's end).
func (p *parkedLeader) park(ctx context.Context, t *testing.T, trigger []byte, timeout time.Duration, errs chan<- error) {
	t.Helper()
	p.armed.Store(true)
	t.Cleanup(p.unpark)
	go func() {
		pctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		_, err := p.leader.Store().Propose(pctx, 1, trigger)
		errs <- err
	}()
	select {
	case <-p.blocked:
	case <-ctx.Done():
		t.Fatal("the leader's loop never parked")
	}
}

func (p *parkedLeader) unpark() {
	select {
	case <-p.release:
	default:
		close(p.release)
	}
}

// queue proposes each of cmds on the parked leader, each from its own
// goroutine with its own deadline, and waits until all are queued for the
// loop. Their outcomes go to errs.
func (p *parkedLeader) queue(ctx context.Context, t *testing.T, cmds [][]byte, timeout time.Duration, errs chan<- error) {
	t.Helper()
	for _, cmd := range cmds {
		go func() {
			pctx, cancel := context.WithTimeout(ctx, timeout)
			defer cancel()
			_, err := p.leader.Store().Propose(pctx, 1, cmd)
			errs <- err
		}()
	}
	if err := tc.WaitFor(ctx, func() error {
		if q := raftstore.QueuedRequests(p.leader.Store(), 1); q != len(cmds) {
			return fmt.Errorf("%d proposals queued, want %d", q, len(cmds))
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// TestProposalsShareAnAppend checks that the proposals a leader takes in
// one iteration reach each follower in one append: etcd raft sends an
// append per MsgProp it steps, so a MsgProp each would cost an append (and
// an answer) per proposal.
func TestProposalsShareAnAppend(t *testing.T) {
	p := startParkedLeader(t, nil)
	ctx := ctxFor(t, 30*time.Second)
	const n = 40
	errs := make(chan error, n+1)
	p.park(ctx, t, tc.PutCmd([]byte("k"), []byte("parks the loop")), 20*time.Second, errs)
	was := p.leader.Store().Stats()
	cmds := make([][]byte, n)
	for i := range cmds {
		cmds[i] = tc.PutCmd(fmt.Appendf(nil, "k%d", i), []byte("v"))
	}
	p.queue(ctx, t, cmds, 20*time.Second, errs)
	p.unpark()
	for i := range n + 1 {
		if err := <-errs; err != nil {
			t.Fatalf("proposal %d: %v", i, err)
		}
	}
	st := p.leader.Store().Stats()
	appends := st.MessagesSentByType["MsgApp"] - was.MessagesSentByType["MsgApp"]
	withEntries := appends - (st.EmptyAppendsSent - was.EmptyAppendsSent)
	t.Logf("%d proposals taken together went out in %d appends with entries (%d in all)", n, withEntries, appends)
	// One append per follower; a few more would be a margin for appends
	// Raft resends, never one per proposal (2*n).
	if withEntries > 6 {
		t.Errorf("%d proposals taken in one iteration went out in %d appends with entries, want 2 (one per follower)", n, withEntries)
	}
}

// TestRefusedProposalsGoAlone checks that when Raft refuses a group of
// proposals taken together (here: they would overflow what is left of
// the uncommitted log's budget), each is offered alone, so that those that
// fit are still proposed and only the rest fail as overloaded.
func TestRefusedProposalsGoAlone(t *testing.T) {
	p := startParkedLeader(t, func(o *raftstore.Options) {
		o.MaxUncommittedBytes = 64 << 10
		// The isolated leader keeps leading for the test's length
		// (CheckQuorum steps it down after an election timeout).
		o.ElectionTicks = 50
	})
	ctx := ctxFor(t, 30*time.Second)
	// Cut off, the leader commits nothing: what it proposes stays
	// uncommitted and counts against the budget.
	p.c.Net.Isolate(p.leader.ID, p.c.NodeIDs())
	const n = 8
	errs := make(chan error, n+1)
	// The parking proposal takes 36 KiB of the 64 KiB budget.
	p.park(ctx, t, tc.PutCmd([]byte("k"), make([]byte, 36<<10)), time.Second, errs)
	cmds := make([][]byte, n)
	for i := range cmds {
		cmds[i] = tc.PutCmd(fmt.Appendf(nil, "big%d", i), make([]byte, 12<<10))
	}
	// The first five (60 KiB) fit the budget and go as one group, which
	// Raft refuses: with the 36 KiB already there they would overflow it.
	// Alone, the first two fit; the rest are refused.
	p.queue(ctx, t, cmds, time.Second, errs)
	p.unpark()
	var proposed, overloaded int
	for range n + 1 {
		err := <-errs
		switch {
		case errors.Is(err, raftstore.ErrOverloaded) && !errors.Is(err, raftstore.ErrAmbiguous):
			overloaded++
		case errors.Is(err, raftstore.ErrAmbiguous):
			proposed++ // in the isolated leader's log, never committed
		default:
			t.Errorf("proposal on the isolated leader: %v, want ErrOverloaded or an ambiguous outcome", err)
		}
	}
	t.Logf("%d proposals refused, %d proposed (with the one that parked the loop)", overloaded, proposed)
	// The parked one and the big ones that fit.
	if proposed < 2 || overloaded < 1 {
		t.Errorf("%d proposed and %d refused as overloaded, want the big proposals that fit proposed and the rest refused", proposed, overloaded)
	}
}
