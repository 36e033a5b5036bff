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

// TestJointLeftAfterDroppedAutoLeave: Raft proposes leaving a joint
// configuration when it applies the entry that entered it, but drops that
// proposal while a leadership transfer runs, and tries again only when it
// next applies an entry. If the transfer then fails and no write comes, the
// leader must still leave: a shard left joint refuses every later change
// and needs both majorities.
func TestJointLeftAfterDroppedAutoLeave(t *testing.T) {
	c := tc.Start(t, tc.Options{Nodes: 4, Shards: 1, Replicas: 3, NewStateMachine: tc.NewRegisterSM,
		// A transfer Raft hands over runs for an election timeout: long
		// enough here for the joint entry to commit and apply meanwhile.
		StoreOptions: func(_ uint64, o *raftstore.Options) { o.ElectionTicks = 30 }})
	ctx := ctxFor(t, time.Minute)
	if err := c.WaitForLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	const shard = 1
	learner, err := c.AddLearner(ctx, shard, 4)
	if err != nil {
		t.Fatal(err)
	}
	leader, err := c.Leader(shard)
	if err != nil {
		t.Fatal(err)
	}
	st, err := leader.Store().Status(shard)
	if err != nil {
		t.Fatal(err)
	}
	epoch := st.Descriptor.Epoch
	var target, outgoing *tc.Node
	for _, n := range c.Nodes[:3] {
		switch {
		case n == leader:
		case target == nil:
			target = n
		default:
			outgoing = n
		}
	}
	targetReplica, outgoingReplica := replicaOn(t, st.Descriptor, target.ID), replicaOn(t, st.Descriptor, outgoing.ID)
	// The target will not take over; the voters' acknowledgements of the
	// joint entry are held back until the transfer is in Raft's hands.
	target.Store().RefuseLeadership()
	for _, n := range []*tc.Node{target, outgoing} {
		c.Net.DropType(n.ID, leader.ID, raftpb.MsgAppResp)
	}
	changed := make(chan error, 1)
	go func() {
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		_, err := leader.Store().ChangeReplicas(cctx, shard, st.Descriptor.Epoch, []raftstore.ReplicaChange{
			{Type: raftstore.PromoteLearner, NodeID: 4, ReplicaID: learner},
			{Type: raftstore.RemoveReplica, NodeID: outgoing.ID, ReplicaID: outgoingReplica},
		})
		changed <- err
	}()
	lastBefore := st.Progress[st.ReplicaID].Match
	if err := tc.WaitFor(ctx, func() error {
		st, err := leader.Store().Status(shard)
		if err != nil {
			return err
		}
		if st.Progress[st.ReplicaID].Match == lastBefore {
			return errors.New("the joint entry is not in the leader's log yet")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	go func() { _ = leader.Store().TransferLeader(ctx, shard, targetReplica) }()
	if err := tc.WaitFor(ctx, func() error {
		st, err := leader.Store().Status(shard)
		if err != nil {
			return err
		}
		if st.LeadTransferee != targetReplica {
			return errors.New("the transfer has not started")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	c.Net.Heal() // the joint entry commits and applies during the transfer
	if err := <-changed; err != nil {
		t.Logf("ChangeReplicas: %v", err)
	}
	// The leader (still the same: the target refused) leaves the joint
	// configuration: the learner is a voter, the outgoing voter is gone.
	if err := tc.WaitFor(ctx, func() error {
		for _, n := range []*tc.Node{leader, target, c.Nodes[3]} {
			st, err := n.Store().Status(shard)
			if err != nil {
				return err
			}
			if raftstore.IsJoint(st.Descriptor) || st.Descriptor.Epoch < epoch+2 {
				return fmt.Errorf("node %d: shard at epoch %d, joint %v (leader transferring to %d, quiet %v)",
					n.ID, st.Descriptor.Epoch, raftstore.IsJoint(st.Descriptor), st.LeadTransferee, st.Quiet)
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}
