package schedule

import (
	"github.com/shoaldb/shoal/api/shoalpb"
)

// move is one planned change of a shard, before it becomes an operator:
// from leaves, a new replica is added on to, and the leadership goes to
// lead. Any of the three may be absent.
type move struct {
	sh     *shard
	kind   shoalpb.OperatorKind
	reason string
	// from is the replica that leaves the shard (nil: none).
	from *shoalpb.ReplicaDescriptor
	// to is the node that gets a new voter (0: none).
	to uint64
	// lead is the voter that takes over the leadership (0: none). When
	// from is the leader and lead is 0, the new voter takes over.
	lead uint64
}

// steps returns the operator's steps, with newID the new replica's ID:
//
//	add a voter:            AddLearner, ChangeVoters{promote}
//	move a learner:         AddLearner, RemoveReplica
//	move a voter:           AddLearner, ChangeVoters{promote, remove}
//	move the leader:        AddLearner, TransferLeader, ChangeVoters{promote, remove}
//	... with no successor:  AddLearner, ChangeVoters{promote}, TransferLeader{new}, ChangeVoters{remove}
//	remove a voter:         [TransferLeader,] ChangeVoters{remove}
//	transfer the leader:    TransferLeader
func (m move) steps(newID uint64) []*shoalpb.OperatorStep {
	var steps []*shoalpb.OperatorStep
	if m.to != 0 {
		steps = append(steps, addLearnerStep(m.to, newID))
	}
	from := m.from
	switch {
	case from == nil:
		if m.to != 0 {
			steps = append(steps, changeVotersStep(ids(newID), nil))
		}
		if m.lead != 0 {
			steps = append(steps, transferLeaderStep(m.lead))
		}
	case from.Role == shoalpb.ReplicaRole_REPLICA_ROLE_LEARNER:
		steps = append(steps, removeReplicaStep(from.ReplicaId))
	case m.sh.leader() != from:
		steps = append(steps, changeVotersStep(ids(newID), ids(from.ReplicaId)))
	case m.lead != 0:
		steps = append(steps, transferLeaderStep(m.lead), changeVotersStep(ids(newID), ids(from.ReplicaId)))
	default:
		steps = append(steps,
			changeVotersStep(ids(newID), nil),
			transferLeaderStep(newID),
			changeVotersStep(nil, ids(from.ReplicaId)))
	}
	return steps
}

// admit turns m into an operator, takes its IDs, and accounts for its
// effects: the shard becomes busy and the per-node counts move.
func (c *cluster) admit(m move) {
	var newID uint64
	if m.to != 0 {
		newID = c.nextReplica
		c.nextReplica++
	}
	d := m.sh.Desc
	c.out = append(c.out, &shoalpb.Operator{
		Id:        c.nextOp,
		ShardId:   d.ShardId,
		Kind:      m.kind,
		Reason:    m.reason,
		Steps:     m.steps(newID),
		Epoch:     d.Epoch,
		CreatedMs: c.now,
	})
	c.nextOp++
	c.ops++
	c.busy[d.ShardId] = true
	if m.to != 0 {
		c.replicas[m.to]++
		c.moving[m.to]++
		if m.from != nil && c.live(m.from.NodeId) {
			c.moving[m.from.NodeId]++
		}
	}
	if m.from != nil {
		c.replicas[m.from.NodeId]--
	}
	c.moveLeader(m)
}

// moveLeader accounts for the leadership changing hands under m.
func (c *cluster) moveLeader(m move) {
	old := m.sh.leader()
	if old == nil {
		return
	}
	var to uint64
	switch {
	case m.lead != 0:
		to = m.sh.Desc.Replica(m.lead).NodeId
	case m.from == old:
		to = m.to
	}
	if to != 0 {
		c.addLeader(m.sh, old.NodeId, -1)
		c.addLeader(m.sh, to, 1)
	}
}

// successor picks the voter to take the leadership from the replica
// leaving: a voter on an up node with the fewest leaders (of hot shards,
// for a hot shard) per unit of weight. It returns 0 if there is none.
func (c *cluster) successor(sh *shard, leaving uint64) uint64 {
	var best *shoalpb.ReplicaDescriptor
	for _, r := range sh.Desc.Replicas {
		if r.ReplicaId == leaving || r.Role != shoalpb.ReplicaRole_REPLICA_ROLE_VOTER || !c.placeable(r.NodeId) ||
			!c.commitsUnder(sh, r.NodeId) {
			continue
		}
		if best == nil || c.lessLed(sh, r.NodeId, best.NodeId) {
			best = r
		}
	}
	if best == nil {
		return 0
	}
	return best.ReplicaId
}

// commitsUnder reports whether sh could commit with its leader on node: a
// majority of its voters must take entries, and those on nodes whose disks
// are exhausted do not (a leader's own entries are kept whatever its
// disk). A leader moved where it cannot commit refuses every command, and
// with followers behind it cannot commit even the first entry of its term,
// which it must before it serves reads.
func (c *cluster) commitsUnder(sh *shard, node uint64) bool {
	voters, take := 0, 0
	for _, r := range sh.Desc.Replicas {
		if r.Role != shoalpb.ReplicaRole_REPLICA_ROLE_VOTER {
			continue
		}
		voters++
		if r.NodeId == node || !c.nodes[r.NodeId].DiskExhausted {
			take++
		}
	}
	return take >= voters/2+1
}

// lessLed reports whether node a is a better new leader for sh than b.
func (c *cluster) lessLed(sh *shard, a, b uint64) bool {
	wa, wb := c.nodes[a].Weight, c.nodes[b].Weight
	if sh.hot {
		ha, hb := float64(c.hotLeaders[a]+1)/wa, float64(c.hotLeaders[b]+1)/wb
		if ha != hb {
			return ha < hb
		}
	}
	la, lb := c.leaderDensity(a, 1), c.leaderDensity(b, 1)
	if la != lb {
		return la < lb
	}
	return a < b
}
