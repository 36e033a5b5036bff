package master_test

import (
	"errors"
	"testing"
	"time"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/internal/master"
	tc "github.com/shoaldb/shoal/internal/testcluster"
)

// An admin request that reaches a new leader before its first scheduling
// round or heartbeat (the leader's memory of nodes not set up for its
// term yet) is served. With a node draining it wrote to a map that did
// not exist yet: the master panicked, or, over HTTP, stayed leader with
// its locks held.
func TestAdminRequestBeforeLeadersFirstRound(t *testing.T) {
	interval := 100 * time.Millisecond
	c := tc.Start(t, tc.Options{Masters: 1, Nodes: 4, Shards: 4, Replicas: 3,
		Master: func(cfg *master.Config) { cfg.ScheduleInterval = interval }})
	ctx := ctxFor(t, 60*time.Second)
	if err := c.WaitPlaced(ctx); err != nil {
		t.Fatal(err)
	}
	m := c.Masters[0]
	// Paused, so that the drain moves nothing: the move below is the only
	// operator.
	if _, err := m.Server().SetScheduling(ctx, &shoalpb.SetSchedulingRequest{Paused: true}); err != nil {
		t.Fatal(err)
	}
	st, err := c.ClusterState()
	if err != nil {
		t.Fatal(err)
	}
	sh := st.Routes.Shards[0].Shard
	from, drained := sh.Replicas[0].NodeId, sh.Replicas[1].NodeId
	to := uint64(0) // the node without a replica of the shard
	for _, n := range c.Nodes {
		held := false
		for _, r := range sh.Replicas {
			held = held || r.NodeId == n.ID
		}
		if !held {
			to = n.ID
		}
	}
	if _, err := m.Server().SetNodeState(ctx, &shoalpb.SetNodeStateRequest{NodeId: drained, State: shoalpb.NodeState_NODE_STATE_DRAINING}); err != nil {
		t.Fatal(err)
	}
	// No heartbeat and no round will set the new leadership up.
	for _, n := range c.Nodes {
		n.Stop()
	}
	m.Stop()
	interval = time.Hour
	if err := m.Restart(); err != nil {
		t.Fatal(err)
	}
	if err := tc.WaitFor(ctx, func() error {
		if !m.Server().IsLeader() {
			return errors.New("the master does not lead yet")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	_, err = m.Server().MoveReplica(ctx, &shoalpb.MoveReplicaRequest{ShardId: sh.ShardId, FromNode: from, ToNode: to})
	if err != nil {
		t.Fatalf("move on a leader before its first round: %v", err)
	}
}
