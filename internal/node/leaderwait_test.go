package node_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/internal/node"
	tc "github.com/shoaldb/shoal/internal/testcluster"
)

// leaderlessSurvivor starts 3 nodes with one shard and a LeaderWait of a
// minute, stops two, and returns the third once its replica names no
// leader (it cannot elect one).
func leaderlessSurvivor(t *testing.T) (context.Context, *tc.Node) {
	t.Helper()
	c := tc.Start(t, tc.Options{Nodes: 3, Shards: 1, Replicas: 3, LeaderWait: time.Minute})
	ctx := ctxFor(t, 60*time.Second)
	if err := c.WaitForLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	survivor := c.Nodes[0]
	c.Nodes[1].Stop()
	c.Nodes[2].Stop()
	if err := survivor.WaitLeaderless(ctx); err != nil {
		t.Fatal(err)
	}
	return ctx, survivor
}

// TestLeaderWaitLeavesTimeToAnswer sends a write with a deadline to a node
// whose shard cannot elect a leader, with a LeaderWait far longer than
// the deadline: the node waits only a third of the time left and answers
// NO_LEADER before the deadline, so the caller learns the write was not
// made instead of timing out on an ambiguous one (the Go client's attempt
// timeout).
func TestLeaderWaitLeavesTimeToAnswer(t *testing.T) {
	ctx, survivor := leaderlessSurvivor(t)
	kvc := kvClient(t, survivor.Addr)

	const deadline = 2 * time.Second
	rctx, cancel := context.WithTimeout(ctx, deadline)
	defer cancel()
	start := time.Now()
	_, err := kvc.Put(rctx, &shoalpb.PutRequest{Key: []byte("k"), Value: []byte("v")})
	took := time.Since(start)
	if d := shoalpb.DetailOf(err); d.GetCode() != shoalpb.ErrorCode_ERROR_CODE_NO_LEADER || d.GetAmbiguous() {
		t.Fatalf("write without a leader, %v deadline: %v (code %v, ambiguous %v), want NO_LEADER, not ambiguous",
			deadline, err, d.GetCode(), d.GetAmbiguous())
	}
	if status.Code(err) == codes.DeadlineExceeded || errors.Is(rctx.Err(), context.DeadlineExceeded) {
		t.Fatalf("the answer came after the deadline (%v)", took)
	}
	// The wait itself: no answer before a quarter of the deadline has
	// passed (the wait is a third of it, less the time the request took
	// to arrive).
	if took < deadline/4 {
		t.Fatalf("answered NO_LEADER after %v, without waiting for the election", took)
	}
	if n := survivor.Store().Stats().LeaderWaits; n == 0 {
		t.Fatal("no leader wait counted")
	}
}

// A request that waits for an election more than once (elections that
// flap) waits a third of the time it had left at its first wait in all,
// not a third of what is left at each: the waits would add up to nearly
// the whole deadline, and the answer come too late.
func TestLeaderWaitsAddUpToAThird(t *testing.T) {
	ctx, survivor := leaderlessSurvivor(t)
	const deadline = 6 * time.Second
	rctx, cancel := context.WithTimeout(ctx, deadline)
	defer cancel()
	var until time.Time
	start := time.Now()
	if node.AwaitLeader(rctx, survivor.Node(), 1, &until) {
		t.Fatal("a leader without a quorum")
	}
	first := time.Since(start)
	if node.AwaitLeader(rctx, survivor.Node(), 1, &until) {
		t.Fatal("a leader without a quorum")
	}
	if total := time.Since(start); total > deadline/3+deadline/10 {
		t.Fatalf("two waits took %v (the first %v) of a %v deadline, want a third of it in all", total, first, deadline)
	}
}
