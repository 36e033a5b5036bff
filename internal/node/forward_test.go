package node_test

import (
	"bytes"
	"context"
	"fmt"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/internal/keys"
	"github.com/shoaldb/shoal/internal/node"
	"github.com/shoaldb/shoal/internal/raftstore"
	tc "github.com/shoaldb/shoal/internal/testcluster"
)

// A request forwarded to a leader the node cannot connect to (stopped,
// not yet known to be gone) was never received: a write is answered
// UNAVAILABLE, not "outcome unknown", and the client may send it again.
func TestForwardToUnreachableLeaderIsNotAmbiguous(t *testing.T) {
	// A long election timeout: the follower names the stopped leader for
	// seconds.
	ctx, leader, follower := leaderAndFollower(t, tc.Options{Nodes: 3, Shards: 1, Replicas: 3,
		StoreOptions: func(_ uint64, o *raftstore.Options) { o.ElectionTicks = 50 }})
	kvc := kvClient(t, follower.Addr)
	leader.Stop()
	// The follower still names the stopped leader: the next election is
	// an election timeout away.
	if st, err := follower.Store().Status(1); err != nil || st.LeaderNode != leader.ID {
		t.Fatalf("the follower names leader %d (%v): the test shows nothing", st.LeaderNode, err)
	}
	_, err := kvc.Put(ctx, &shoalpb.PutRequest{Key: []byte("k"), Value: []byte("v")})
	d := shoalpb.DetailOf(err)
	if d.GetCode() != shoalpb.ErrorCode_ERROR_CODE_UNAVAILABLE || d.GetAmbiguous() {
		t.Fatalf("write forwarded to a stopped leader: %v (code %v, ambiguous %v), want UNAVAILABLE, not ambiguous", err, d.GetCode(), d.GetAmbiguous())
	}
}

// A node forwarding to the leader takes answers as large as a value (up to
// 8 MiB; gRPC's default limit is 4): a read, and a write returning the old
// value, served by the leader through a follower.
func TestForwardLargeAnswers(t *testing.T) {
	_, leader, follower := leaderAndFollower(t, tc.Options{Nodes: 3, Shards: 1, Replicas: 3})
	// 36 MiB written to three replicas and 30 read back: under the race
	// detector on two cores that took 13-24 s, and once over the usual 30.
	// Writes that large can cost the leader its lease or its leadership
	// (a heartbeat waits behind them), so each call is sent again while
	// it fails without having been applied.
	ctx := ctxFor(t, 90*time.Second)
	big := bytes.Repeat([]byte("v"), 6<<20)
	lkv, kvc := kvClient(t, leader.Addr), kvClient(t, follower.Addr)
	if err := untilLeader(ctx, func() error {
		_, err := lkv.Put(ctx, &shoalpb.PutRequest{Key: []byte("k"), Value: big})
		return err
	}); err != nil {
		t.Fatal(err)
	}
	var got *shoalpb.GetResponse
	err := untilLeader(ctx, func() (err error) {
		got, err = kvc.Get(ctx, &shoalpb.GetRequest{Header: &shoalpb.RequestHeader{LeaderOnly: true}, Key: []byte("k")})
		return err
	})
	if err != nil || !bytes.Equal(got.GetValue(), big) {
		t.Fatalf("get of a 6 MiB value through a follower: %d bytes, %v", len(got.GetValue()), err)
	}
	var put *shoalpb.PutResponse
	err = untilLeader(ctx, func() (err error) {
		put, err = kvc.Put(ctx, &shoalpb.PutRequest{Key: []byte("k"), Value: []byte("small"), ReturnOld: true})
		return err
	})
	if err != nil || !bytes.Equal(put.GetOld(), big) {
		t.Fatalf("put returning a 6 MiB old value through a follower: %d bytes, %v (ambiguous %v)", len(put.GetOld()), err, shoalpb.DetailOf(err).GetAmbiguous())
	}
	// A scan page ends at 16 MiB of keys and values: "k", then three of
	// four 6 MiB values in its slot, and a cursor.
	for i := 1; i <= 4; i++ {
		if err := untilLeader(ctx, func() error {
			_, err := lkv.Put(ctx, &shoalpb.PutRequest{Key: fmt.Appendf(nil, "{k}-%d", i), Value: big})
			return err
		}); err != nil {
			t.Fatal(err)
		}
	}
	slot := uint32(keys.Slot([]byte("k")))
	var page *shoalpb.ScanResponse
	err = untilLeader(ctx, func() (err error) {
		page, err = kvc.Scan(ctx, &shoalpb.ScanRequest{StartSlot: slot, EndSlot: slot + 1, Limit: 1000})
		return err
	})
	if err != nil || len(page.GetKeys()) != 4 || len(page.GetCursor()) == 0 {
		t.Fatalf("scan of 24 MiB in one slot: %d keys, cursor %q, %v; want 4 and a cursor", len(page.GetKeys()), page.GetCursor(), err)
	}
}

// untilLeader calls f until it succeeds, fails otherwise than for want of
// a leader, or fails after it may have been applied (ambiguous), or ctx
// ends; it returns f's last error.
func untilLeader(ctx context.Context, f func() error) error {
	for {
		err := f()
		d := shoalpb.DetailOf(err)
		switch {
		case err == nil, d.GetAmbiguous():
			return err
		case d.GetCode() != shoalpb.ErrorCode_ERROR_CODE_NOT_LEADER &&
			d.GetCode() != shoalpb.ErrorCode_ERROR_CODE_NO_LEADER &&
			d.GetCode() != shoalpb.ErrorCode_ERROR_CODE_UNAVAILABLE:
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// leaderAndFollower starts a cluster of one shard with opts and returns a
// context for the test, the shard's leader and another node.
func leaderAndFollower(t *testing.T, opts tc.Options) (context.Context, *tc.Node, *tc.Node) {
	t.Helper()
	c := tc.Start(t, opts)
	ctx := ctxFor(t, 30*time.Second)
	if err := c.WaitForLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	leader, err := c.Leader(1)
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range c.Nodes {
		if n != leader {
			return ctx, leader, n
		}
	}
	t.Fatal("a single node")
	return nil, nil, nil
}

// A node forwarding a request that named no cluster (one from the Redis
// front end, say) names its own: a leader address that now belongs to a
// node of another cluster refuses it, and the caller hears UNAVAILABLE,
// not a write applied to the other cluster's data.
func TestForwardNamesThisCluster(t *testing.T) {
	ctx, c, st := startPlaced(t, tc.Options{Masters: 1, Nodes: 3, Shards: 1, Replicas: 3})
	shard := st.Routes.Shards[0].Shard.ShardId
	other := tc.Start(t, tc.Options{Nodes: 1, Shards: 1, Replicas: 1})
	if err := other.WaitForLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	// A follower whose table gives the leader's node the other cluster's
	// address, as if the leader had moved and its address been reused.
	var leader, follower *tc.Node
	var err error
	if err := tc.WaitFor(ctx, func() error {
		if leader, err = c.Leader(shard); err != nil {
			return err
		}
		for _, n := range c.Nodes {
			if s, err := n.Store().Status(shard); n != leader && err == nil && s.LeaderNode == leader.ID {
				follower = n
				return nil
			}
		}
		return fmt.Errorf("no follower of shard %d knows its leader %d", shard, leader.ID)
	}); err != nil {
		t.Fatal(err)
	}
	table := proto.Clone(follower.Node().Routes()).(*shoalpb.RouteTable)
	table.Version += 1000
	for _, n := range table.Nodes {
		if n.Id == leader.ID {
			n.Addr = other.Nodes[0].Addr
		}
	}
	node.SetRoutes(follower.Node(), table)

	_, err = kvClient(t, follower.Addr).Put(ctx, &shoalpb.PutRequest{Key: []byte("k"), Value: []byte("v")})
	if d := shoalpb.DetailOf(err); d.GetCode() != shoalpb.ErrorCode_ERROR_CODE_UNAVAILABLE || d.GetAmbiguous() {
		t.Fatalf("put forwarded to another cluster's node: %v (code %v, ambiguous %v), want UNAVAILABLE, not ambiguous", err, d.GetCode(), d.GetAmbiguous())
	}
	got, err := kvClient(t, other.Nodes[0].Addr).Get(ctx, &shoalpb.GetRequest{Key: []byte("k")})
	if err != nil || got.GetFound() {
		t.Fatalf("the other cluster's node: found %v, %v; want the forwarded put refused", got.GetFound(), err)
	}
}

// startPlaced starts a cluster in master mode with opts, waits until the
// master has placed every shard, and returns a context for the test, the
// cluster and the master's state then.
func startPlaced(t *testing.T, opts tc.Options) (context.Context, *tc.Cluster, *shoalpb.ClusterState) {
	t.Helper()
	c := tc.Start(t, opts)
	ctx := ctxFor(t, 60*time.Second)
	if err := c.WaitPlaced(ctx); err != nil {
		t.Fatal(err)
	}
	st, err := c.ClusterState()
	if err != nil {
		t.Fatal(err)
	}
	return ctx, c, st
}
