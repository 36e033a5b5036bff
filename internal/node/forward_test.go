package node_test

import (
	"testing"
	"time"

	"github.com/shoaldb/shoal/api/shoalpb"
	tc "github.com/shoaldb/shoal/internal/testcluster"
)

// A request forwarded to a leader the node cannot connect to (stopped,
// not yet known to be gone) was never received: a write is answered
// UNAVAILABLE, not "outcome unknown", and the client may send it again.
func TestForwardToUnreachableLeaderIsNotAmbiguous(t *testing.T) {
	c := tc.Start(t, tc.Options{Nodes: 3, Shards: 1, Replicas: 3})
	ctx := ctxFor(t, 30*time.Second)
	if err := c.WaitForLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	leader, err := c.Leader(1)
	if err != nil {
		t.Fatal(err)
	}
	var follower *tc.Node
	for _, n := range c.Nodes {
		if n != leader {
			follower = n
			break
		}
	}
	kvc := kvClient(t, follower.Addr)
	leader.Stop()
	// The follower still names the stopped leader: the next election is
	// an election timeout away.
	if st, err := follower.Store().Status(1); err != nil || st.LeaderNode != leader.ID {
		t.Fatalf("the follower names leader %d (%v): the test shows nothing", st.LeaderNode, err)
	}
	_, err = kvc.Put(ctx, &shoalpb.PutRequest{Key: []byte("k"), Value: []byte("v")})
	d := shoalpb.DetailOf(err)
	if d.GetCode() != shoalpb.ErrorCode_ERROR_CODE_UNAVAILABLE || d.GetAmbiguous() {
		t.Fatalf("write forwarded to a stopped leader: %v (code %v, ambiguous %v), want UNAVAILABLE, not ambiguous", err, d.GetCode(), d.GetAmbiguous())
	}
}
