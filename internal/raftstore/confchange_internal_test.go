package raftstore

import (
	"errors"
	"testing"

	"github.com/shoaldb/shoal/api/shoalpb"
)

// TestPlanChangeAgreesWithRaft: every change planChange accepts makes the
// membership its descriptor says, as etcd raft computes it; one Raft would
// read differently is refused before it is proposed. Two learner changes
// at once were accepted: Raft makes any change of several a joint
// configuration, the descriptor did not, and every replica stopped on
// applying it (and again after each restart).
func TestPlanChangeAgreesWithRaft(t *testing.T) {
	desc := &shoalpb.ShardDescriptor{ShardId: 1, Epoch: 5, Replicas: []*shoalpb.ReplicaDescriptor{
		{NodeId: 1, ReplicaId: 1, Role: roleVoter}, {NodeId: 2, ReplicaId: 2, Role: roleVoter},
		{NodeId: 3, ReplicaId: 3, Role: roleVoter}, {NodeId: 4, ReplicaId: 4, Role: roleLearner},
	}}
	for _, tt := range []struct {
		name    string
		changes []ReplicaChange
		ok      bool
	}{
		{"add a learner", []ReplicaChange{{Type: AddLearner, NodeID: 10, ReplicaID: 10}}, true},
		{"remove a learner", []ReplicaChange{{Type: RemoveReplica, ReplicaID: 4}}, true},
		{"promote one, remove a voter (joint)", []ReplicaChange{{Type: PromoteLearner, ReplicaID: 4}, {Type: RemoveReplica, ReplicaID: 3}}, true},
		{"demote a voter, promote a learner (joint)", []ReplicaChange{{Type: DemoteVoter, ReplicaID: 3}, {Type: PromoteLearner, ReplicaID: 4}}, true},
		{"add a learner and promote another (joint)", []ReplicaChange{{Type: AddLearner, NodeID: 10, ReplicaID: 10}, {Type: PromoteLearner, ReplicaID: 4}}, true},
		{"two learners at once", []ReplicaChange{{Type: AddLearner, NodeID: 10, ReplicaID: 10}, {Type: AddLearner, NodeID: 11, ReplicaID: 11}}, false},
		{"add one learner, remove another", []ReplicaChange{{Type: AddLearner, NodeID: 10, ReplicaID: 10}, {Type: RemoveReplica, ReplicaID: 4}}, false},
	} {
		next, cc, err := planChange(desc, tt.changes)
		if !tt.ok {
			if !errors.Is(err, ErrInvalidChange) {
				t.Errorf("%s: %v, want ErrInvalidChange", tt.name, err)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", tt.name, err)
			continue
		}
		got, err := raftConfAfter(desc, cc)
		if err != nil || !sameConfState(got, ConfStateOf(next)) {
			t.Errorf("%s: Raft makes %v (%v), the descriptor says %v", tt.name, got, err, ConfStateOf(next))
		}
	}
}
