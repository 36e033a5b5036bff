package raftstore_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/shoaldb/shoal/internal/raftstore"
	tc "github.com/shoaldb/shoal/internal/testcluster"
)

// TestPlainTimeoutsAreNeverApplied: writes whose contexts end within a
// couple of milliseconds, some before the worker reaches them, some while
// Raft has them. A write that fails as a plain ErrTimeout (without
// ErrAmbiguous) tells its caller nothing was applied, and it must never be;
// one that succeeded must be there. Without the worker's context check
// and proposal.submit, hundreds of such writes were applied; submit alone
// keeps them out (the context check only saves Raft the work), and closes
// the window between the check and the proposal.
func TestPlainTimeoutsAreNeverApplied(t *testing.T) {
	ctx := ctxFor(t, 120*time.Second)
	c := tc.Start(t, tc.Options{Nodes: 3, Shards: 1, Replicas: 3, NewStateMachine: tc.NewRegisterSM})
	if err := c.WaitForLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	leader, err := c.Leader(1)
	if err != nil {
		t.Fatal(err)
	}
	const writers, each = 16, 300
	type outcome int
	const (
		applied outcome = iota
		plain
		unknown
	)
	outcomes := make([][]outcome, writers)
	var wg sync.WaitGroup
	errc := make(chan error, writers)
	for g := range writers {
		outcomes[g] = make([]outcome, each)
		wg.Go(func() {
			r := rand.New(rand.NewPCG(uint64(g), 1))
			for i := range each {
				wctx, cancel := context.WithTimeout(ctx, time.Duration(r.IntN(2000))*time.Microsecond)
				_, err := leader.Store().Propose(wctx, 1, tc.PutCmd(fmt.Appendf(nil, "w%d-%d", g, i), []byte("x")))
				cancel()
				switch {
				case err == nil:
					outcomes[g][i] = applied
				case errors.Is(err, raftstore.ErrAmbiguous):
					outcomes[g][i] = unknown
				case errors.Is(err, raftstore.ErrTimeout):
					outcomes[g][i] = plain
				default:
					errc <- fmt.Errorf("write %d-%d: %w", g, i, err)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	if err := leader.Store().ReadIndex(ctx, 1); err != nil {
		t.Fatal(err)
	}
	count := map[outcome]int{}
	for g := range writers {
		for i, o := range outcomes[g] {
			count[o]++
			key := fmt.Appendf(nil, "w%d-%d", g, i)
			_, found, err := tc.ReadKey(leader.Engine().Reader(), key)
			if err != nil {
				t.Fatal(err)
			}
			if o == plain && found {
				t.Errorf("write %s failed as a plain timeout but was applied", key)
			}
			if o == applied && !found {
				t.Errorf("write %s succeeded but is not there", key)
			}
		}
	}
	t.Logf("%d applied, %d plain timeouts, %d ambiguous", count[applied], count[plain], count[unknown])
	if count[plain] == 0 {
		t.Fatal("no write timed out before reaching Raft; the test shows nothing")
	}
}
