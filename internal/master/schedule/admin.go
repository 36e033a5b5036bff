package schedule

import (
	"errors"
	"fmt"
	"slices"

	"github.com/shoaldb/shoal/api/shoalpb"
)

// ErrRefused is returned when an administrator's request cannot be planned:
// the shard or node is unknown, the shard is busy, or the change would
// break a placement rule. The error text says which.
var ErrRefused = errors.New("schedule: refused")

func refused(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrRefused, fmt.Sprintf(format, args...))
}

// MoveReplica plans an administrator's move of shard's replica on node
// from to node to, as an operator with the ID s.NextOperatorID (the new
// replica takes s.NextReplicaID). When the replica leaving leads, the
// leadership goes to the voter with the fewest leaders per weight, or to
// the new replica if there is no other.
func MoveReplica(s Snapshot, shard, from, to uint64) (*shoalpb.Operator, error) {
	c := newCluster(&s, Config{})
	sh, err := c.adminShard(shard)
	if err != nil {
		return nil, err
	}
	var leaving *shoalpb.ReplicaDescriptor
	for _, r := range sh.Desc.Replicas {
		if r.NodeId == from {
			leaving = r
		}
		if r.NodeId == to {
			return nil, refused("node %d already holds replica %d of shard %d", to, r.ReplicaId, shard)
		}
	}
	switch {
	case leaving == nil:
		return nil, refused("node %d holds no replica of shard %d", from, shard)
	case !c.placeable(to):
		return nil, refused("node %d is not up (or has no weight, or its disk is full): it cannot take a replica", to)
	case !c.keepsQuorum(sh.Desc, leaving, true):
		v, h := c.voters(sh.Desc)
		return nil, refused("shard %d has %d of %d voters on live nodes: the move could not commit (it would wait out its step timeout and roll back); bring its nodes back first", shard, h, v)
	case c.zoneCounts(sh.Desc, leaving)[c.nodes[to].Zone]+1 > c.zoneLimit:
		// Placement would move a replica out of the zone again.
		return nil, refused("zone %q would hold more than %d of shard %d's replicas", c.nodes[to].Zone, c.zoneLimit, shard)
	}
	m := move{sh: sh, kind: shoalpb.OperatorKind_OPERATOR_KIND_ADMIN, from: leaving, to: to,
		reason: fmt.Sprintf("administrator: move shard %d from node %d to node %d", shard, from, to)}
	if sh.leader() == leaving {
		m.lead = c.successor(sh, leaving.ReplicaId)
	}
	c.admit(m)
	return c.out[0], nil
}

// TransferLeader plans an administrator's transfer of shard's leadership to
// its voter on node to.
func TransferLeader(s Snapshot, shard, to uint64) (*shoalpb.Operator, error) {
	c := newCluster(&s, Config{})
	sh, err := c.adminShard(shard)
	if err != nil {
		return nil, err
	}
	var target *shoalpb.ReplicaDescriptor
	for _, r := range sh.Desc.Replicas {
		if r.NodeId == to && r.Role == shoalpb.ReplicaRole_REPLICA_ROLE_VOTER {
			target = r
		}
	}
	switch {
	case target == nil:
		return nil, refused("node %d holds no voter of shard %d", to, shard)
	case !c.placeable(to):
		return nil, refused("node %d is not up (or has no weight, or its disk is full): it cannot take the leadership", to)
	case sh.LeaderReplica == target.ReplicaId:
		return nil, refused("node %d already leads shard %d", to, shard)
	case !c.commitsUnder(sh, to):
		return nil, refused("shard %d could not commit with its leader on node %d: too many of its voters are on nodes below half their disk reserve", shard, to)
	}
	c.admit(move{sh: sh, kind: shoalpb.OperatorKind_OPERATOR_KIND_ADMIN, lead: target.ReplicaId,
		reason: fmt.Sprintf("administrator: shard %d leader to node %d", shard, to)})
	return c.out[0], nil
}

func (c *cluster) adminShard(id uint64) (*shard, error) {
	sh := c.shard(id)
	switch {
	case sh == nil:
		return nil, refused("no shard %d", id)
	case c.busy[id]:
		return nil, refused("shard %d has an operator in flight; wait for it or cancel it", id)
	}
	return sh, nil
}

// StepDone reports whether step's effect is already visible in d led by
// leader, so that an executor that resumes an operator (after a master
// failover, or a reply that was lost) does not run it twice.
func StepDone(d *shoalpb.ShardDescriptor, leader uint64, step *shoalpb.OperatorStep) bool {
	switch s := step.GetStep().(type) {
	case *shoalpb.OperatorStep_AddLearner:
		r := d.Replica(s.AddLearner.ReplicaId)
		return r != nil
	case *shoalpb.OperatorStep_ChangeVoters:
		for _, id := range s.ChangeVoters.Promote {
			if r := d.Replica(id); r == nil || r.Role != shoalpb.ReplicaRole_REPLICA_ROLE_VOTER {
				return false
			}
		}
		for _, id := range s.ChangeVoters.Remove {
			if d.Replica(id) != nil {
				return false
			}
		}
		return true
	case *shoalpb.OperatorStep_TransferLeader:
		return leader == s.TransferLeader.ToReplica
	case *shoalpb.OperatorStep_RemoveReplica:
		return d.Replica(s.RemoveReplica.ReplicaId) == nil
	}
	return false
}

// Rollback returns the steps that undo what op has done so far: every
// replica it added (or may have added: the step in progress counts) is
// removed again, as a RemoveReplica step. The executor runs such a step
// during a rollback only while the replica is still a learner: a replica
// already promoted stays (the shard has full strength with it, and taking a
// voter away is itself a risk; the scheduler balances afterwards), and one
// that is not there is confirmed absent by the shard's leader. Leadership
// changes are not undone.
func Rollback(op *shoalpb.Operator) []*shoalpb.OperatorStep {
	var out []*shoalpb.OperatorStep
	for i, step := range op.Steps {
		al := step.GetAddLearner()
		if al == nil || i > int(op.Current) {
			continue
		}
		if !slices.ContainsFunc(out, func(s *shoalpb.OperatorStep) bool { return s.GetRemoveReplica().GetReplicaId() == al.ReplicaId }) {
			out = append(out, removeReplicaStep(al.ReplicaId))
		}
	}
	return out
}
