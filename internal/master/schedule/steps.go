package schedule

import (
	"fmt"
	"slices"

	"google.golang.org/protobuf/proto"

	"github.com/shoaldb/shoal/api/shoalpb"
)

// ApplyStep returns the shard's descriptor and leader replica after step
// has run on d led by leader, or an error if the step is not valid there.
// d is not modified. Membership changes bump the epoch; ChangeVoters is
// applied as a whole (a joint configuration, if one is used, has been left).
//
// The rules are those the master's executor relies on: a learner is added
// with a fresh replica ID on a node that holds no replica of the shard;
// only learners are promoted and only voters removed by ChangeVoters; the
// leader is never removed (it must hand over first); a leader transfer
// targets a voter; at least one voter always remains.
func ApplyStep(d *shoalpb.ShardDescriptor, leader uint64, step *shoalpb.OperatorStep) (*shoalpb.ShardDescriptor, uint64, error) {
	d = proto.Clone(d).(*shoalpb.ShardDescriptor)
	var err error
	switch s := step.GetStep().(type) {
	case *shoalpb.OperatorStep_AddLearner:
		err = addLearner(d, s.AddLearner)
	case *shoalpb.OperatorStep_ChangeVoters:
		err = changeVoters(d, leader, s.ChangeVoters)
	case *shoalpb.OperatorStep_TransferLeader:
		r := d.Replica(s.TransferLeader.ToReplica)
		if r == nil || r.Role != shoalpb.ReplicaRole_REPLICA_ROLE_VOTER {
			return nil, 0, fmt.Errorf("schedule: shard %d: transfer leader to r%d, not a voter", d.ShardId, s.TransferLeader.ToReplica)
		}
		return d, r.ReplicaId, nil
	case *shoalpb.OperatorStep_RemoveReplica:
		err = removeReplica(d, leader, s.RemoveReplica.ReplicaId)
	default:
		err = fmt.Errorf("schedule: shard %d: empty step", d.ShardId)
	}
	if err != nil {
		return nil, 0, err
	}
	d.Epoch++
	return d, leader, nil
}

func addLearner(d *shoalpb.ShardDescriptor, s *shoalpb.AddLearnerStep) error {
	for _, r := range d.Replicas {
		if r.NodeId == s.NodeId {
			return fmt.Errorf("schedule: shard %d: add learner on n%d, which holds r%d", d.ShardId, s.NodeId, r.ReplicaId)
		}
		if r.ReplicaId == s.ReplicaId {
			return fmt.Errorf("schedule: shard %d: add learner r%d, already in use", d.ShardId, s.ReplicaId)
		}
	}
	if s.ReplicaId == 0 || s.NodeId == 0 {
		return fmt.Errorf("schedule: shard %d: add learner r%d on n%d", d.ShardId, s.ReplicaId, s.NodeId)
	}
	d.Replicas = append(d.Replicas, &shoalpb.ReplicaDescriptor{
		NodeId: s.NodeId, ReplicaId: s.ReplicaId, Role: shoalpb.ReplicaRole_REPLICA_ROLE_LEARNER,
	})
	return nil
}

func changeVoters(d *shoalpb.ShardDescriptor, leader uint64, s *shoalpb.ChangeVotersStep) error {
	if len(s.Promote)+len(s.Remove) == 0 {
		return fmt.Errorf("schedule: shard %d: empty voter change", d.ShardId)
	}
	for _, id := range s.Promote {
		r := d.Replica(id)
		if r == nil || r.Role != shoalpb.ReplicaRole_REPLICA_ROLE_LEARNER {
			return fmt.Errorf("schedule: shard %d: promote r%d, not a learner", d.ShardId, id)
		}
		r.Role = shoalpb.ReplicaRole_REPLICA_ROLE_VOTER
	}
	for _, id := range s.Remove {
		r := d.Replica(id)
		switch {
		case r == nil || r.Role != shoalpb.ReplicaRole_REPLICA_ROLE_VOTER || slices.Contains(s.Promote, id):
			return fmt.Errorf("schedule: shard %d: remove voter r%d, not a voter", d.ShardId, id)
		case id == leader:
			return fmt.Errorf("schedule: shard %d: remove voter r%d, the leader", d.ShardId, id)
		}
		dropReplica(d, id)
	}
	if len(voterIDs(d)) == 0 {
		return fmt.Errorf("schedule: shard %d: no voter left", d.ShardId)
	}
	return nil
}

func removeReplica(d *shoalpb.ShardDescriptor, leader, id uint64) error {
	r := d.Replica(id)
	switch {
	case r == nil:
		return fmt.Errorf("schedule: shard %d: remove r%d, no such replica", d.ShardId, id)
	case id == leader:
		return fmt.Errorf("schedule: shard %d: remove r%d, the leader", d.ShardId, id)
	}
	dropReplica(d, id)
	if len(voterIDs(d)) == 0 {
		return fmt.Errorf("schedule: shard %d: no voter left", d.ShardId)
	}
	return nil
}

func dropReplica(d *shoalpb.ShardDescriptor, id uint64) {
	d.Replicas = slices.DeleteFunc(d.Replicas, func(r *shoalpb.ReplicaDescriptor) bool { return r.ReplicaId == id })
}

func voterIDs(d *shoalpb.ShardDescriptor) []uint64 {
	var ids []uint64
	for _, r := range d.Replicas {
		if r.Role == shoalpb.ReplicaRole_REPLICA_ROLE_VOTER {
			ids = append(ids, r.ReplicaId)
		}
	}
	return ids
}

func addLearnerStep(node, id uint64) *shoalpb.OperatorStep {
	return &shoalpb.OperatorStep{Step: &shoalpb.OperatorStep_AddLearner{
		AddLearner: &shoalpb.AddLearnerStep{NodeId: node, ReplicaId: id}}}
}

func changeVotersStep(promote, remove []uint64) *shoalpb.OperatorStep {
	return &shoalpb.OperatorStep{Step: &shoalpb.OperatorStep_ChangeVoters{
		ChangeVoters: &shoalpb.ChangeVotersStep{Promote: promote, Remove: remove}}}
}

func transferLeaderStep(to uint64) *shoalpb.OperatorStep {
	return &shoalpb.OperatorStep{Step: &shoalpb.OperatorStep_TransferLeader{
		TransferLeader: &shoalpb.TransferLeaderStep{ToReplica: to}}}
}

func removeReplicaStep(id uint64) *shoalpb.OperatorStep {
	return &shoalpb.OperatorStep{Step: &shoalpb.OperatorStep_RemoveReplica{
		RemoveReplica: &shoalpb.RemoveReplicaStep{ReplicaId: id}}}
}

// ids returns the replica IDs as a slice, or nil for none.
func ids(id ...uint64) []uint64 {
	id = slices.DeleteFunc(id, func(x uint64) bool { return x == 0 })
	if len(id) == 0 {
		return nil
	}
	return id
}
