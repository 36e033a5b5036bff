package schedule

import (
	"fmt"
	"slices"
	"time"

	"github.com/shoaldb/shoal/api/shoalpb"
)

// Schedule returns the operators to start now, in priority order, as many
// as the concurrency limits allow:
//
//  1. repair: replace replicas on nodes down for RepairAfterMs or longer, on
//     removed nodes or on unknown nodes, and add voters to shards with fewer
//     than the replication factor; most endangered shards (fewest healthy
//     voters) first;
//  2. placement: remove surplus voters, and move replicas so that no node
//     holds two of a shard and a shard's replicas spread over zones;
//  3. drain: move replicas off draining nodes;
//  4. replica balance: move replicas from nodes holding more than their
//     share (by weight) to nodes holding less, within ReplicaTolerance;
//     skipped in a round that plans (or holds back for the limits) any
//     repair, placement or drain;
//  5. leader balance: move leaders off draining nodes, then even out
//     leaders per unit of weight within LeaderTolerance;
//  6. hot shards: spread the leaders of the HotShards busiest shards.
//
// Operator IDs and new replica IDs are taken from s.NextOperatorID and
// s.NextReplicaID upward, in the order of the result; the caller advances
// its allocators past them. Schedule is deterministic and does not modify s.
func Schedule(s Snapshot, cfg Config) []*shoalpb.Operator {
	cfg.EnsureDefaults()
	c := newCluster(&s, cfg)
	c.repair()
	c.placement()
	c.drain()
	if !c.pending {
		c.balanceReplicas()
	}
	c.drainLeaders()
	c.balanceLeaders()
	c.spreadHot()
	return c.out
}

// Obsolete returns the IDs of in-flight operators that can no longer
// finish because a step still to run adds a learner on, promotes a
// replica on, or hands the leadership to a replica on a node that is not
// up (it went down, draining or removed since). The master aborts (rolls
// back) them; Schedule then plans afresh.
func Obsolete(s Snapshot) []uint64 {
	up := map[uint64]bool{}
	for _, n := range s.Nodes {
		up[n.ID] = n.State == shoalpb.NodeState_NODE_STATE_UP
	}
	node := map[uint64]uint64{} // replica ID -> node ID
	for _, sh := range s.Shards {
		for _, r := range sh.Desc.GetReplicas() {
			node[r.ReplicaId] = r.NodeId
		}
	}
	var out []uint64
	for _, op := range s.Operators {
		if op.Outcome == "" && !stepsFeasible(op, node, up) {
			out = append(out, op.Id)
		}
	}
	slices.Sort(out)
	return out
}

// stepsFeasible reports whether the steps op still has to run only need
// up nodes for the replicas they add, promote or make leader.
func stepsFeasible(op *shoalpb.Operator, node map[uint64]uint64, up map[uint64]bool) bool {
	for _, step := range op.Steps {
		if al := step.GetAddLearner(); al != nil {
			node[al.ReplicaId] = al.NodeId
		}
	}
	for _, step := range op.Steps[min(int(op.Current), len(op.Steps)):] {
		needed := slices.Clone(step.GetChangeVoters().GetPromote())
		if al := step.GetAddLearner(); al != nil {
			needed = append(needed, al.ReplicaId)
		}
		if tl := step.GetTransferLeader(); tl != nil {
			needed = append(needed, tl.ToReplica)
		}
		for _, id := range needed {
			if !up[node[id]] {
				return false
			}
		}
	}
	return true
}

// cluster is Schedule's working state: the snapshot indexed, plus the
// projected effect of every operator in flight or created so far.
type cluster struct {
	cfg     Config
	now     int64
	rf      int
	nodes   map[uint64]NodeStatus
	nodeIDs []uint64 // sorted
	shards  []*shard // sorted by shard ID
	// busy holds the shards with an operator, in flight or new.
	busy map[uint64]bool
	// replicas, leaders and hotLeaders count, per node, the replicas,
	// leaderships and leaderships of hot shards it will have once the
	// operators in flight or created are done.
	replicas, leaders, hotLeaders map[uint64]int
	// moving counts the data-moving operators touching each node.
	moving map[uint64]int
	// ops counts operators in flight or created.
	ops int
	// zoneLimit is the most replicas of one shard a zone should hold.
	zoneLimit int
	// pending is set when repair, placement or drain work was planned or
	// held back by the limits: replica balancing waits for a round
	// without any.
	pending bool

	nextReplica, nextOp uint64
	out                 []*shoalpb.Operator
}

// shard is one shard of the snapshot.
type shard struct {
	ShardStatus
	hot bool
}

func (sh *shard) id() uint64 { return sh.Desc.ShardId }

// leaderOrNil is leader, or nil for a nil shard.
func (sh *shard) leaderOrNil() *shoalpb.ReplicaDescriptor {
	if sh == nil {
		return nil
	}
	return sh.leader()
}

// leader returns the leader's replica, or nil if unknown or not a voter.
func (sh *shard) leader() *shoalpb.ReplicaDescriptor {
	r := sh.Desc.Replica(sh.LeaderReplica)
	if r == nil || r.Role != shoalpb.ReplicaRole_REPLICA_ROLE_VOTER {
		return nil
	}
	return r
}

func newCluster(s *Snapshot, cfg Config) *cluster {
	c := &cluster{
		cfg: cfg, now: s.NowMs, rf: s.ReplicationFactor,
		nodes: map[uint64]NodeStatus{}, busy: map[uint64]bool{},
		replicas: map[uint64]int{}, leaders: map[uint64]int{}, hotLeaders: map[uint64]int{},
		moving:      map[uint64]int{},
		nextReplica: s.NextReplicaID, nextOp: s.NextOperatorID,
	}
	for _, n := range s.Nodes {
		c.nodes[n.ID] = n
		c.nodeIDs = append(c.nodeIDs, n.ID)
	}
	slices.Sort(c.nodeIDs)
	for _, st := range s.Shards {
		if st.Desc != nil {
			c.shards = append(c.shards, &shard{ShardStatus: st})
		}
	}
	slices.SortFunc(c.shards, func(a, b *shard) int { return cmpU64(a.id(), b.id()) })
	c.markHot()
	for _, sh := range c.shards {
		c.countShard(sh)
	}
	for _, op := range s.Operators {
		if op.Outcome == "" {
			c.countInFlight(op)
		}
	}
	c.zoneLimit = c.computeZoneLimit()
	return c
}

// markHot flags the HotShards busiest shards whose ops/s are at least
// HotRatio times the mean.
func (c *cluster) markHot() {
	if c.cfg.HotShards <= 0 || len(c.shards) == 0 {
		return
	}
	var total float64
	for _, sh := range c.shards {
		total += sh.OpsPerSec
	}
	threshold := c.cfg.HotRatio * total / float64(len(c.shards))
	byOps := slices.Clone(c.shards)
	slices.SortStableFunc(byOps, func(a, b *shard) int {
		switch {
		case a.OpsPerSec > b.OpsPerSec:
			return -1
		case a.OpsPerSec < b.OpsPerSec:
			return 1
		}
		return 0
	})
	for _, sh := range byOps[:min(c.cfg.HotShards, len(byOps))] {
		sh.hot = sh.OpsPerSec > 0 && sh.OpsPerSec >= max(threshold, c.cfg.HotMinOpsPerSec)
	}
}

// countShard adds a shard's replicas and leader to the per-node counts;
// a shard in a joint configuration is being changed and gets no operator.
func (c *cluster) countShard(sh *shard) {
	for _, r := range sh.Desc.Replicas {
		c.replicas[r.NodeId]++
		if r.Role != shoalpb.ReplicaRole_REPLICA_ROLE_VOTER && r.Role != shoalpb.ReplicaRole_REPLICA_ROLE_LEARNER {
			c.busy[sh.id()] = true
		}
	}
	if l := sh.leader(); l != nil {
		c.addLeader(sh, l.NodeId, 1)
	}
}

func (c *cluster) addLeader(sh *shard, node uint64, delta int) {
	c.leaders[node] += delta
	if sh.hot {
		c.hotLeaders[node] += delta
	}
}

// countInFlight records an operator in flight: its shard is busy, what
// it still has to do is projected onto the counts, and its data movement
// counts against the limits of the live nodes it touches.
func (c *cluster) countInFlight(op *shoalpb.Operator) {
	c.ops++
	c.busy[op.ShardId] = true
	sh := c.shard(op.ShardId)
	var desc *shoalpb.ShardDescriptor
	if sh != nil {
		desc = sh.Desc
	}
	e := effectOf(op, desc)
	for _, n := range e.gain {
		c.replicas[n]++
	}
	for _, n := range e.lose {
		c.replicas[n]--
	}
	for _, n := range e.touched {
		if c.live(n) {
			c.moving[n]++
		}
	}
	if l := sh.leaderOrNil(); l != nil && e.leader != 0 && e.leader != l.NodeId {
		c.addLeader(sh, l.NodeId, -1)
		c.addLeader(sh, e.leader, 1)
	}
}

// effect is what an operator in flight has still to do.
type effect struct {
	// gain and lose list the nodes that get a new replica, or lose one
	// that the descriptor still has.
	gain, lose []uint64
	// touched lists, once each, the nodes a data move adds a replica to
	// or removes one from; nil unless the operator adds a replica.
	touched []uint64
	// leader is the node the leadership ends on, 0 if the operator does
	// not transfer it.
	leader uint64
}

func effectOf(op *shoalpb.Operator, desc *shoalpb.ShardDescriptor) effect {
	var e effect
	node := map[uint64]uint64{} // replica ID -> node, with new learners
	for _, r := range desc.GetReplicas() {
		node[r.ReplicaId] = r.NodeId
	}
	for _, step := range op.Steps {
		if al := step.GetAddLearner(); al != nil {
			if _, ok := node[al.ReplicaId]; !ok {
				e.gain = append(e.gain, al.NodeId)
			}
			node[al.ReplicaId] = al.NodeId
			e.touched = append(e.touched, al.NodeId)
		}
		if tl := step.GetTransferLeader(); tl != nil {
			e.leader = node[tl.ToReplica]
		}
	}
	for _, step := range op.Steps {
		for _, id := range append(slices.Clone(step.GetChangeVoters().GetRemove()), step.GetRemoveReplica().GetReplicaId()) {
			if n, ok := node[id]; ok {
				if desc.Replica(id) != nil {
					e.lose = append(e.lose, n)
				}
				e.touched = append(e.touched, n)
			}
		}
	}
	if !hasAdd(op) {
		e.touched = nil
	}
	e.touched = dedup(e.touched)
	return e
}

func hasAdd(op *shoalpb.Operator) bool {
	for _, s := range op.Steps {
		if s.GetAddLearner() != nil {
			return true
		}
	}
	return false
}

func dedup(ids []uint64) []uint64 {
	ids = slices.Clone(ids)
	slices.Sort(ids)
	return slices.Compact(ids)
}

func (c *cluster) shard(id uint64) *shard {
	i, ok := slices.BinarySearchFunc(c.shards, id, func(sh *shard, id uint64) int { return cmpU64(sh.id(), id) })
	if !ok {
		return nil
	}
	return c.shards[i]
}

// state returns a node's state; an unknown node counts as removed.
func (c *cluster) state(id uint64) shoalpb.NodeState {
	n, ok := c.nodes[id]
	if !ok {
		return shoalpb.NodeState_NODE_STATE_REMOVED
	}
	return n.State
}

// placeable reports whether a node may receive replicas and leaders.
func (c *cluster) placeable(id uint64) bool {
	return c.state(id) == shoalpb.NodeState_NODE_STATE_UP && c.nodes[id].Weight > 0 && !c.nodes[id].DiskFull
}

// live reports whether a node is heartbeating: its replicas are healthy
// and it does work for data moves.
func (c *cluster) live(id uint64) bool {
	s := c.state(id)
	return s == shoalpb.NodeState_NODE_STATE_UP || s == shoalpb.NodeState_NODE_STATE_DRAINING && !c.nodes[id].Silent
}

// lost returns why a node's replicas must be replaced, or "" if they need
// not be: the node is removed or unknown, or down for RepairAfterMs.
func (c *cluster) lost(id uint64) string {
	n, ok := c.nodes[id]
	switch {
	case !ok:
		return fmt.Sprintf("node %d unknown", id)
	case n.State == shoalpb.NodeState_NODE_STATE_REMOVED:
		return fmt.Sprintf("node %d removed", id)
	case n.State == shoalpb.NodeState_NODE_STATE_DOWN && c.now-n.StateSinceMs >= c.cfg.RepairAfterMs:
		return fmt.Sprintf("node %d down for %v", id, time.Duration(c.now-n.StateSinceMs)*time.Millisecond)
	}
	return ""
}

// computeZoneLimit is the most replicas of one shard that a zone should
// hold: the smallest L with sum over zones of min(nodes, L) >= RF,
// counting the nodes that hold replicas for good (up, or down but not yet
// repaired). With at least RF zones it is 1.
func (c *cluster) computeZoneLimit() int {
	size := map[string]int{}
	for _, id := range c.nodeIDs {
		if c.placeable(id) || c.state(id) == shoalpb.NodeState_NODE_STATE_DOWN && c.lost(id) == "" {
			size[c.nodes[id].Zone]++
		}
	}
	for l := 1; l < c.rf; l++ {
		total := 0
		for _, s := range size {
			total += min(s, l)
		}
		if total >= c.rf {
			return l
		}
	}
	return max(c.rf, 1)
}

// zoneCounts counts a shard's replicas per zone, leaving out skip.
func (c *cluster) zoneCounts(d *shoalpb.ShardDescriptor, skip *shoalpb.ReplicaDescriptor) map[string]int {
	zc := map[string]int{}
	for _, r := range d.Replicas {
		if r != skip {
			zc[c.nodes[r.NodeId].Zone]++
		}
	}
	return zc
}

// density is a node's replicas per unit of weight, with delta more.
func (c *cluster) density(id uint64, delta int) float64 {
	return float64(c.replicas[id]+delta) / c.nodes[id].Weight
}

// leaderDensity is a node's leaders per unit of weight, with delta more.
func (c *cluster) leaderDensity(id uint64, delta int) float64 {
	return float64(c.leaders[id]+delta) / c.nodes[id].Weight
}

// room reports whether another operator fits under MaxOperators.
func (c *cluster) room() bool { return c.ops < c.cfg.MaxOperators }

// canMove reports whether a node may take part in one more data move.
func (c *cluster) canMove(id uint64) bool {
	return !c.live(id) || c.moving[id] < c.cfg.MaxOperatorsPerNode
}

// holds reports whether node holds a replica of d.
func holds(d *shoalpb.ShardDescriptor, node uint64) bool {
	for _, r := range d.Replicas {
		if r.NodeId == node {
			return true
		}
	}
	return false
}

// voters returns a shard's voters and how many of them are on live nodes.
func (c *cluster) voters(d *shoalpb.ShardDescriptor) (voters, healthy int) {
	for _, r := range d.Replicas {
		if r.Role == shoalpb.ReplicaRole_REPLICA_ROLE_VOTER {
			voters++
			if c.live(r.NodeId) {
				healthy++
			}
		}
	}
	return voters, healthy
}

// keepsQuorum reports whether a change that removes voter from (nil: none)
// and adds a voter (add) keeps a healthy majority of the voters both before
// and after, so that joint consensus can commit it. A new voter counts as
// healthy: it is on an up node and is promoted once caught up.
func (c *cluster) keepsQuorum(d *shoalpb.ShardDescriptor, from *shoalpb.ReplicaDescriptor, add bool) bool {
	v, h := c.voters(d)
	if 2*h <= v {
		return false
	}
	if from != nil && from.Role == shoalpb.ReplicaRole_REPLICA_ROLE_VOTER {
		v--
		if c.live(from.NodeId) {
			h--
		}
	}
	if add {
		v++
		h++
	}
	return v > 0 && 2*h > v
}
