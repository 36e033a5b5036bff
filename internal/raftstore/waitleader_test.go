package raftstore_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/shoaldb/shoal/internal/raftstore"
	tc "github.com/shoaldb/shoal/internal/testcluster"
)

// TestWaitLeader waits on a replica whose shard cannot elect a leader (two
// of its three nodes stopped): WaitLeader returns no leader only once its
// context ends, and a wait in progress returns with the leader as soon as
// a node is back and the shard elects one.
func TestWaitLeader(t *testing.T) {
	c := tc.Start(t, tc.Options{Nodes: 3, Shards: 1, Replicas: 3, NewStateMachine: tc.NewRegisterSM})
	ctx := ctxFor(t, 60*time.Second)
	if err := c.WaitForLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	shard := c.Shards[0].ShardId
	survivor := c.Nodes[0]
	if err := tc.WaitFor(ctx, func() error {
		st, err := survivor.Store().WaitLeader(ctx, shard)
		if err != nil || st.LeaderReplica == 0 {
			return fmt.Errorf("with a leader elected: %+v, %v", st, err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := survivor.Store().WaitLeader(ctx, 999); err == nil {
		t.Fatal("WaitLeader on a shard this node has no replica of: no error")
	}

	c.Nodes[1].Stop()
	c.Nodes[2].Stop()
	// The survivor names the stopped leader until it campaigns.
	if err := survivor.WaitLeaderless(ctx); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	st, err := survivor.Store().WaitLeader(short, shard)
	cancel()
	if err != nil || st.LeaderReplica != 0 || short.Err() == nil {
		t.Fatalf("without a quorum: WaitLeader returned %+v, %v before its context ended (%v)", st, err, short.Err())
	}
	if n := survivor.Store().Stats().LeaderWaits; n != 1 {
		t.Fatalf("Stats.LeaderWaits = %d after one wait without a leader, want 1", n)
	}

	done := make(chan raftstore.ReplicaStatus, 1)
	go func() {
		st, _ := survivor.Store().WaitLeader(ctx, shard)
		done <- st
	}()
	if err := c.Nodes[1].Restart(); err != nil {
		t.Fatal(err)
	}
	select {
	case st := <-done:
		if st.LeaderReplica == 0 || st.LeaderNode == 0 {
			t.Fatalf("the wait returned without a leader: %+v", st)
		}
	case <-ctx.Done():
		t.Fatal("the wait did not return once the shard elected a leader")
	}
}
