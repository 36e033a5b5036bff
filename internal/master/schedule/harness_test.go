package schedule

import (
	"fmt"
	"slices"
	"strings"

	"github.com/shoaldb/shoal/api/shoalpb"
)

// checkSchedule verifies the invariants every result of Schedule must
// keep, independently of how Schedule computes it:
//
//   - operator IDs and new replica IDs are consecutive from the snapshot's
//     allocators, in order;
//   - one operator per shard, none for a shard with one in flight;
//   - every step is valid on the descriptor left by the previous ones
//     (ApplyStep), and no descriptor along the way has two replicas on one
//     node;
//   - new replicas and new leaders only go to up nodes;
//   - every voter change keeps a healthy majority of the voters before and
//     after it (new voters count as healthy);
//   - outside repair and drain, no zone gets more of a shard's replicas
//     than the zone limit;
//   - at most MaxOperators operators in flight, and no new data move
//     makes a live node take part in more than MaxOperatorsPerNode,
//     counting the ones in flight.
func checkSchedule(s Snapshot, cfg Config, ops []*shoalpb.Operator) error {
	cfg.EnsureDefaults()
	state := map[uint64]NodeStatus{}
	for _, n := range s.Nodes {
		state[n.ID] = n
	}
	up := func(id uint64) bool { return state[id].State == shoalpb.NodeState_NODE_STATE_UP }
	live := func(id uint64) bool {
		st := state[id].State
		return st == shoalpb.NodeState_NODE_STATE_UP || st == shoalpb.NodeState_NODE_STATE_DRAINING
	}
	shards := map[uint64]ShardStatus{}
	for _, sh := range s.Shards {
		shards[sh.Desc.ShardId] = sh
	}
	busy := map[uint64]bool{}
	// moving counts data moves per live node, in flight and new; touched
	// only the new ones.
	moving, touched := map[uint64]int{}, map[uint64]int{}
	active := 0
	for _, op := range s.Operators {
		if op.Outcome == "" {
			active++
			busy[op.ShardId] = true
			countMoving(op, shards[op.ShardId].Desc, live, moving)
		}
	}
	if active+len(ops) > cfg.MaxOperators {
		return fmt.Errorf("%d operators in flight and %d new, limit %d", active, len(ops), cfg.MaxOperators)
	}
	limit := zoneLimitOf(s, cfg)
	nextR, nextOp := s.NextReplicaID, s.NextOperatorID
	for _, op := range ops {
		if op.Id != nextOp {
			return fmt.Errorf("operator ID %d, want %d", op.Id, nextOp)
		}
		nextOp++
		sh, ok := shards[op.ShardId]
		switch {
		case !ok:
			return fmt.Errorf("op %d: unknown shard %d", op.Id, op.ShardId)
		case busy[op.ShardId]:
			return fmt.Errorf("op %d: shard %d already has an operator", op.Id, op.ShardId)
		case op.Epoch != sh.Desc.Epoch || op.CreatedMs != s.NowMs:
			return fmt.Errorf("op %d: epoch %d created %d, want %d, %d", op.Id, op.Epoch, op.CreatedMs, sh.Desc.Epoch, s.NowMs)
		case op.Kind == shoalpb.OperatorKind_OPERATOR_KIND_UNSPECIFIED || op.Reason == "" || len(op.Steps) == 0:
			return fmt.Errorf("op %d: kind %v, reason %q, %d steps", op.Id, op.Kind, op.Reason, len(op.Steps))
		}
		busy[op.ShardId] = true
		d, leader := sh.Desc, sh.LeaderReplica
		for _, step := range op.Steps {
			if al := step.GetAddLearner(); al != nil {
				if al.ReplicaId != nextR {
					return fmt.Errorf("op %d: new replica r%d, want r%d", op.Id, al.ReplicaId, nextR)
				}
				nextR++
				if !up(al.NodeId) {
					return fmt.Errorf("op %d: adds a replica on n%d, which is %v", op.Id, al.NodeId, state[al.NodeId].State)
				}
			}
			if tl := step.GetTransferLeader(); tl != nil {
				if r := d.Replica(tl.ToReplica); r == nil || !up(r.NodeId) {
					return fmt.Errorf("op %d: transfers the leadership to r%d, not on an up node", op.Id, tl.ToReplica)
				}
			}
			next, nextLeader, err := ApplyStep(d, leader, step)
			if err != nil {
				return fmt.Errorf("op %d: %v", op.Id, err)
			}
			if err := checkQuorum(d, next, live); err != nil {
				return fmt.Errorf("op %d: %v", op.Id, err)
			}
			if err := checkDistinct(next); err != nil {
				return fmt.Errorf("op %d: %v", op.Id, err)
			}
			d, leader = next, nextLeader
		}
		if err := checkZones(op, sh.Desc, d, state, limit); err != nil {
			return err
		}
		countMoving(op, sh.Desc, live, moving)
		countMoving(op, sh.Desc, live, touched)
	}
	for _, id := range sortedIDs(touched) {
		if moving[id] > cfg.MaxOperatorsPerNode {
			return fmt.Errorf("n%d takes part in %d data moves, limit %d", id, moving[id], cfg.MaxOperatorsPerNode)
		}
	}
	return nil
}

// countMoving counts a data-moving operator against the live nodes it
// adds a replica to or removes one from.
func countMoving(op *shoalpb.Operator, d *shoalpb.ShardDescriptor, live func(uint64) bool, moving map[uint64]int) {
	node := map[uint64]uint64{}
	for _, r := range d.GetReplicas() {
		node[r.ReplicaId] = r.NodeId
	}
	var touched []uint64
	adds := false
	for _, s := range op.Steps {
		if al := s.GetAddLearner(); al != nil {
			adds = true
			node[al.ReplicaId] = al.NodeId
			touched = append(touched, al.NodeId)
		}
		for _, id := range append(slices.Clone(s.GetChangeVoters().GetRemove()), s.GetRemoveReplica().GetReplicaId()) {
			if n, ok := node[id]; ok && id != 0 {
				touched = append(touched, n)
			}
		}
	}
	if !adds {
		return
	}
	for _, n := range dedup(touched) {
		if live(n) {
			moving[n]++
		}
	}
}

// checkQuorum checks that a voter change from a to b keeps a healthy
// majority of both voter sets; a voter of b that is not in a is new and
// counts as healthy.
func checkQuorum(a, b *shoalpb.ShardDescriptor, live func(uint64) bool) error {
	va, vb := voterIDs(a), voterIDs(b)
	if slices.Equal(va, vb) {
		return nil
	}
	healthy := func(d *shoalpb.ShardDescriptor, vs []uint64) int {
		n := 0
		for _, id := range vs {
			if !slices.Contains(va, id) || live(d.Replica(id).NodeId) {
				n++
			}
		}
		return n
	}
	if ha, hb := healthy(a, va), healthy(b, vb); 2*ha <= len(va) || 2*hb <= len(vb) {
		return fmt.Errorf("shard %d: voters %v (%d healthy) -> %v (%d healthy)", a.ShardId, va, ha, vb, hb)
	}
	return nil
}

func checkDistinct(d *shoalpb.ShardDescriptor) error {
	seen := map[uint64]bool{}
	for _, r := range d.Replicas {
		if seen[r.NodeId] {
			return fmt.Errorf("shard %d: two replicas on n%d", d.ShardId, r.NodeId)
		}
		seen[r.NodeId] = true
	}
	return nil
}

// checkZones checks that an operator other than repair or drain leaves no
// zone it adds to with more replicas of the shard than the zone limit.
func checkZones(op *shoalpb.Operator, before, after *shoalpb.ShardDescriptor, state map[uint64]NodeStatus, limit int) error {
	if op.Kind == shoalpb.OperatorKind_OPERATOR_KIND_REPAIR || op.Kind == shoalpb.OperatorKind_OPERATOR_KIND_DRAIN {
		return nil
	}
	zc := map[string]int{}
	for _, r := range after.Replicas {
		zc[state[r.NodeId].Zone]++
	}
	for _, r := range after.Replicas {
		if before.Replica(r.ReplicaId) == nil && zc[state[r.NodeId].Zone] > limit {
			return fmt.Errorf("op %d: zone %q gets replica %d of shard %d, limit %d", op.Id, state[r.NodeId].Zone, zc[state[r.NodeId].Zone], after.ShardId, limit)
		}
	}
	return nil
}

// zoneLimitOf computes the zone limit as the package documents it: the
// smallest L with sum over zones of min(nodes, L) >= RF, over the nodes
// that are up or down for less than RepairAfterMs.
func zoneLimitOf(s Snapshot, cfg Config) int {
	size := map[string]int{}
	for _, n := range s.Nodes {
		switch {
		case n.State == shoalpb.NodeState_NODE_STATE_UP && n.Weight > 0,
			n.State == shoalpb.NodeState_NODE_STATE_DOWN && s.NowMs-n.StateSinceMs < cfg.RepairAfterMs:
			size[n.Zone]++
		}
	}
	for l := 1; l < s.ReplicationFactor; l++ {
		total := 0
		for _, n := range size {
			total += min(n, l)
		}
		if total >= s.ReplicationFactor {
			return l
		}
	}
	return max(s.ReplicationFactor, 1)
}

// applyOps runs the remaining steps of the operators on the snapshot's
// shards (as the master's executor would, all at once) and drops them
// from the in-flight list.
func applyOps(s *Snapshot, ops []*shoalpb.Operator) error {
	for _, op := range ops {
		i := slices.IndexFunc(s.Shards, func(sh ShardStatus) bool { return sh.Desc.ShardId == op.ShardId })
		if i < 0 {
			return fmt.Errorf("op %d: unknown shard %d", op.Id, op.ShardId)
		}
		sh := &s.Shards[i]
		for _, step := range op.Steps[op.Current:] {
			d, l, err := ApplyStep(sh.Desc, sh.LeaderReplica, step)
			if err != nil {
				return fmt.Errorf("op %d: %v", op.Id, err)
			}
			sh.Desc, sh.LeaderReplica = d, l
		}
		s.Operators = slices.DeleteFunc(s.Operators, func(x *shoalpb.Operator) bool { return x == op })
	}
	return nil
}

// startOps records operators returned by Schedule as in flight and
// advances the snapshot's allocators past them.
func startOps(s *Snapshot, ops []*shoalpb.Operator) {
	for _, op := range ops {
		s.Operators = append(s.Operators, op)
		s.NextOperatorID = max(s.NextOperatorID, op.Id+1)
		for _, step := range op.Steps {
			if al := step.GetAddLearner(); al != nil {
				s.NextReplicaID = max(s.NextReplicaID, al.ReplicaId+1)
			}
		}
	}
}

// elect gives every shard whose leader is not on a live node a new
// leader, as Raft would: its live voter with the lowest replica ID, if
// the shard still has a healthy majority.
func elect(s *Snapshot) {
	live := map[uint64]bool{}
	for _, n := range s.Nodes {
		live[n.ID] = n.State == shoalpb.NodeState_NODE_STATE_UP || n.State == shoalpb.NodeState_NODE_STATE_DRAINING
	}
	for i := range s.Shards {
		sh := &s.Shards[i]
		if r := sh.Desc.Replica(sh.LeaderReplica); r != nil && live[r.NodeId] {
			continue
		}
		sh.LeaderReplica = 0
		var healthy []uint64
		voters := voterIDs(sh.Desc)
		for _, id := range voters {
			if live[sh.Desc.Replica(id).NodeId] {
				healthy = append(healthy, id)
			}
		}
		if 2*len(healthy) > len(voters) {
			sh.LeaderReplica = slices.Min(healthy)
		}
	}
}

// formatOp prints an operator on one line: ID, shard, kind, steps, reason.
func formatOp(op *shoalpb.Operator) string {
	var b strings.Builder
	fmt.Fprintf(&b, "op %d shard %d %s", op.Id, op.ShardId, op.Kind.Name())
	for i, s := range op.Steps {
		sep := " "
		if i == int(op.Current) && op.Current > 0 {
			sep = " | "
		}
		b.WriteString(sep + formatStep(s))
	}
	if op.Reason != "" {
		fmt.Fprintf(&b, " (%s)", op.Reason)
	}
	return b.String()
}

func formatStep(s *shoalpb.OperatorStep) string {
	switch {
	case s.GetAddLearner() != nil:
		return fmt.Sprintf("add(n%d,r%d)", s.GetAddLearner().NodeId, s.GetAddLearner().ReplicaId)
	case s.GetChangeVoters() != nil:
		var parts []string
		for _, id := range s.GetChangeVoters().Promote {
			parts = append(parts, fmt.Sprintf("+r%d", id))
		}
		for _, id := range s.GetChangeVoters().Remove {
			parts = append(parts, fmt.Sprintf("-r%d", id))
		}
		return "voters(" + strings.Join(parts, ",") + ")"
	case s.GetTransferLeader() != nil:
		return fmt.Sprintf("lead(r%d)", s.GetTransferLeader().ToReplica)
	case s.GetRemoveReplica() != nil:
		return fmt.Sprintf("remove(r%d)", s.GetRemoveReplica().ReplicaId)
	}
	return "?"
}
