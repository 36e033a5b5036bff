package shoalpb

import (
	"fmt"
	"strings"
)

// Name is the state in lower case without its prefix: "up", "down",
// "draining", "removed".
func (s NodeState) Name() string {
	return strings.ToLower(strings.TrimPrefix(s.String(), "NODE_STATE_"))
}

// Name is the kind as operators of the cluster read it: "repair",
// "replica-balance", "hot-shard", ...
func (k OperatorKind) Name() string {
	return strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(k.String(), "OPERATOR_KIND_")), "_", "-")
}

// Describe says what the step does, for logs and tables.
func (s *OperatorStep) Describe() string {
	switch st := s.GetStep().(type) {
	case *OperatorStep_AddLearner:
		return fmt.Sprintf("add learner r%d on node %d", st.AddLearner.ReplicaId, st.AddLearner.NodeId)
	case *OperatorStep_ChangeVoters:
		var parts []string
		if len(st.ChangeVoters.Promote) > 0 {
			parts = append(parts, fmt.Sprintf("promote %v", st.ChangeVoters.Promote))
		}
		if len(st.ChangeVoters.Remove) > 0 {
			parts = append(parts, fmt.Sprintf("remove voter %v", st.ChangeVoters.Remove))
		}
		return strings.Join(parts, ", ")
	case *OperatorStep_TransferLeader:
		return fmt.Sprintf("transfer leader to r%d", st.TransferLeader.ToReplica)
	case *OperatorStep_RemoveReplica:
		return fmt.Sprintf("remove r%d", st.RemoveReplica.ReplicaId)
	}
	return "empty step"
}

// DescribeSteps describes each step.
func DescribeSteps(steps []*OperatorStep) []string {
	out := make([]string, len(steps))
	for i, st := range steps {
		out[i] = st.Describe()
	}
	return out
}

// Replica returns the replica with ID id, nil if d has none.
func (d *ShardDescriptor) Replica(id uint64) *ReplicaDescriptor {
	for _, r := range d.GetReplicas() {
		if r.ReplicaId == id {
			return r
		}
	}
	return nil
}
