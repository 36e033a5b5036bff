package node_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/shoaldb/shoal/internal/kv"
	tc "github.com/shoaldb/shoal/internal/testcluster"
)

// TestRowCacheAcrossReplicaMoves caches a key on a follower, moves the
// follower's replica away, changes the key, and moves a replica back: the
// node then holds the new value by snapshot, and its reads must return it,
// not what its row cache held before the replica left. (The store drops a
// shard's slots from the cache when it deletes a removed replica's data and
// when it ingests a snapshot; without both, this read returns "v1".)
func TestRowCacheAcrossReplicaMoves(t *testing.T) {
	c := tc.Start(t, tc.Options{Nodes: 4, Shards: 1, Replicas: 3})
	ctx := ctxFor(t, 60*time.Second)
	if err := c.WaitForLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	r := newRouter(c)
	key := []byte("cached-key")
	if err := r.put(ctx, key, []byte("v1")); err != nil {
		t.Fatal(err)
	}
	// A follower of the shard, read twice: the second read is a cache hit.
	leader, err := c.Leader(1)
	if err != nil {
		t.Fatal(err)
	}
	var follower uint64
	for _, rd := range c.Shards[0].Replicas {
		if rd.NodeId != leader.ID {
			follower = rd.NodeId
			break
		}
	}
	read := func(want string) {
		t.Helper()
		v, ok, err := c.Node(follower).KV().Get(ctx, key, kv.ReadOptions{})
		if err != nil || !ok || string(v.Data) != want {
			t.Fatalf("node %d: get %q = %q, %v, %v; want %q", follower, key, v.Data, ok, err, want)
		}
	}
	read("v1")
	hits := c.Node(follower).KV().RowCacheStats().Hits
	read("v1")
	if c.Node(follower).KV().RowCacheStats().Hits == hits {
		t.Fatal("the second read missed the row cache")
	}
	// Move the follower's replica to the spare node, write, move it back.
	spare := uint64(0)
	for _, n := range c.Nodes {
		if _, err := n.Store().Status(1); err != nil {
			spare = n.ID
		}
	}
	if _, err := c.MoveReplica(ctx, 1, follower, spare); err != nil {
		t.Fatal(err)
	}
	if err := tc.WaitFor(ctx, func() error {
		if _, err := c.Node(follower).Store().Status(1); err == nil {
			return fmt.Errorf("node %d still has the replica", follower)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if err := r.put(ctx, key, []byte("v2")); err != nil {
		t.Fatal(err)
	}
	if _, err := c.MoveReplica(ctx, 1, spare, follower); err != nil {
		t.Fatal(err)
	}
	if err := tc.WaitFor(ctx, func() error {
		_, err := c.Node(follower).Store().Status(1)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	read("v2")
}
