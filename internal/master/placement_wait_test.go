package master_test

import (
	"fmt"
	"testing"
	"time"

	tc "github.com/shoaldb/shoal/internal/testcluster"
)

// TestPlacementWaitsForReplicationFactor: with fewer nodes up than the
// replication factor the master places nothing, however long it waits
// (it would have to put two replicas of a shard on one node, or leave
// shards under-replicated from birth); the node that makes the count
// triggers the placement, with every shard's replicas on distinct nodes.
func TestPlacementWaitsForReplicationFactor(t *testing.T) {
	const shards, replicas = 8, 3
	c := tc.Start(t, tc.Options{Masters: 3, Nodes: replicas - 1, Shards: shards, Replicas: replicas})
	ctx := ctxFor(t, 60*time.Second)
	// PlacementDelay is 300 ms in testcluster: wait until both nodes have
	// heartbeated the leading master well after the placement could have
	// happened.
	after := time.Now().Add(time.Second)
	if err := tc.WaitFor(ctx, func() error {
		m, err := c.MasterLeader()
		if err != nil {
			return err
		}
		hb := m.Server().Heartbeats()
		for _, n := range c.Nodes {
			if !hb[n.ID].After(after) {
				return fmt.Errorf("node %d last heartbeated at %v", n.ID, hb[n.ID])
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	st, err := c.ClusterState()
	if err != nil {
		t.Fatal(err)
	}
	if n := len(st.Routes.GetShards()); n != 0 {
		t.Fatalf("%d shards placed on %d nodes with replication factor %d", n, len(st.Nodes), replicas)
	}
	if _, err := c.AddNode(); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitPlaced(ctx); err != nil {
		t.Fatal(err)
	}
	st, err = c.ClusterState()
	if err != nil {
		t.Fatal(err)
	}
	for _, rt := range st.Routes.Shards {
		on := map[uint64]bool{}
		for _, r := range rt.Shard.Replicas {
			on[r.NodeId] = true
		}
		if len(rt.Shard.Replicas) != replicas || len(on) != replicas {
			t.Fatalf("shard %d placed as %v", rt.Shard.ShardId, rt.Shard.Replicas)
		}
	}
}
