package schedule

import (
	"cmp"
	"fmt"
	"math"
	"slices"

	"github.com/shoaldb/shoal/api/shoalpb"
)

// repair replaces replicas on lost nodes and adds missing voters, the
// shards with the fewest healthy voters first.
func (c *cluster) repair() {
	type candidate struct {
		sh              *shard
		voters, healthy int
	}
	var cands []candidate
	for _, sh := range c.shards {
		if c.busy[sh.id()] {
			continue
		}
		v, h := c.voters(sh.Desc)
		if r, _ := c.lostReplica(sh); r != nil || v < c.rf {
			cands = append(cands, candidate{sh, v, h})
		}
	}
	slices.SortStableFunc(cands, func(a, b candidate) int {
		return cmp.Or(cmp.Compare(a.healthy, b.healthy), cmp.Compare(a.voters, b.voters))
	})
	for _, x := range cands {
		c.repairShard(x.sh, x.voters)
	}
}

// repairShard plans one repair of a shard with v voters: replace a voter
// on a lost node, else add a missing voter, else remove a learner on a
// lost node (a learner outside an operator is one a rollback left, which
// placement would remove anyway: copying it elsewhere first would stream
// a snapshot for nothing).
func (c *cluster) repairShard(sh *shard, v int) {
	r, why := c.lostReplica(sh)
	switch {
	case r != nil && r.Role == shoalpb.ReplicaRole_REPLICA_ROLE_VOTER && v > c.rf:
		c.shed(sh, r, shoalpb.OperatorKind_OPERATOR_KIND_REPAIR, why)
	case r != nil && r.Role == shoalpb.ReplicaRole_REPLICA_ROLE_VOTER:
		c.relocate(sh, r, shoalpb.OperatorKind_OPERATOR_KIND_REPAIR, why, true)
	case v < c.rf:
		c.relocate(sh, nil, shoalpb.OperatorKind_OPERATOR_KIND_REPAIR,
			fmt.Sprintf("%d voters, replication factor %d", v, c.rf), true)
	case r != nil:
		c.shed(sh, r, shoalpb.OperatorKind_OPERATOR_KIND_REPAIR, why)
	}
}

// lostReplica returns a replica of sh on a lost node, voters first, and
// why the node is lost; nil if there is none.
func (c *cluster) lostReplica(sh *shard) (*shoalpb.ReplicaDescriptor, string) {
	var lost *shoalpb.ReplicaDescriptor
	why := ""
	for _, r := range sh.Desc.Replicas {
		w := c.lost(r.NodeId)
		if w == "" {
			continue
		}
		if lost == nil || r.Role == shoalpb.ReplicaRole_REPLICA_ROLE_VOTER && lost.Role != shoalpb.ReplicaRole_REPLICA_ROLE_VOTER {
			lost, why = r, w
		}
	}
	return lost, why
}

// placement fixes the placement rules: no more voters than the
// replication factor, no node with two replicas of a shard, no zone with
// more than zoneLimit replicas of a shard.
func (c *cluster) placement() {
	for _, sh := range c.shards {
		if !c.busy[sh.id()] {
			c.placeShard(sh)
		}
	}
}

func (c *cluster) placeShard(sh *shard) {
	const kind = shoalpb.OperatorKind_OPERATOR_KIND_PLACEMENT
	// Learners exist only while an operator moves a replica; placement
	// runs on shards without one in flight, so a learner here was left by
	// an operator whose rollback could not remove it (its step timed
	// out). It takes the log and disk space and keeps the shard from
	// settling, so it is never balanced again: remove it.
	for _, r := range sh.Desc.Replicas {
		if r.Role == shoalpb.ReplicaRole_REPLICA_ROLE_LEARNER {
			c.shed(sh, r, kind, fmt.Sprintf("learner r%d on node %d belongs to no operator", r.ReplicaId, r.NodeId))
			return
		}
	}
	if v, _ := c.voters(sh.Desc); v > c.rf {
		c.shed(sh, c.surplusVoter(sh), kind, fmt.Sprintf("%d voters, replication factor %d", v, c.rf))
		return
	}
	if r := duplicate(sh); r != nil {
		c.relocate(sh, r, kind, fmt.Sprintf("node %d holds two replicas", r.NodeId), false)
		return
	}
	if r, zone, n := c.crowded(sh); r != nil {
		c.relocate(sh, r, kind, fmt.Sprintf("%d replicas in zone %q, limit %d", n, zone, c.zoneLimit), false)
	}
}

// duplicate returns a non-leader replica on a node that holds another
// replica of sh, or nil.
func duplicate(sh *shard) *shoalpb.ReplicaDescriptor {
	seen := map[uint64]*shoalpb.ReplicaDescriptor{}
	for _, r := range sh.Desc.Replicas {
		prev, ok := seen[r.NodeId]
		if !ok {
			seen[r.NodeId] = r
			continue
		}
		if prev == sh.leader() {
			return r
		}
		return prev
	}
	return nil
}

// crowded returns a replica of sh to move out of the zone holding the most
// of its replicas, if that is more than zoneLimit: the non-leader on the
// most loaded node. It returns the zone and its count too.
func (c *cluster) crowded(sh *shard) (*shoalpb.ReplicaDescriptor, string, int) {
	zc := c.zoneCounts(sh.Desc, nil)
	zone, n := "", 0
	for _, z := range sortedKeys(zc) {
		if zc[z] > n {
			zone, n = z, zc[z]
		}
	}
	if n <= c.zoneLimit {
		return nil, "", 0
	}
	var pick *shoalpb.ReplicaDescriptor
	for _, r := range sh.Desc.Replicas {
		if c.nodes[r.NodeId].Zone == zone && (pick == nil || c.evictFirst(sh, r, pick)) {
			pick = r
		}
	}
	return pick, zone, n
}

// evictFirst reports whether replica a of sh should leave before b:
// non-leaders first, then those on the more loaded node, then the lower
// node ID.
func (c *cluster) evictFirst(sh *shard, a, b *shoalpb.ReplicaDescriptor) bool {
	if la, lb := a == sh.leader(), b == sh.leader(); la != lb {
		return lb
	}
	if da, db := c.loadOf(a.NodeId), c.loadOf(b.NodeId); da != db {
		return da > db
	}
	return a.NodeId < b.NodeId
}

// loadOf is a node's replicas per unit of weight, or +Inf for a node
// without weight.
func (c *cluster) loadOf(id uint64) float64 {
	if c.nodes[id].Weight <= 0 {
		return math.Inf(1)
	}
	return c.density(id, 0)
}

// surplusVoter picks the voter to remove from an over-replicated shard:
// one on a node that is not live, else on a draining node, else in the
// most crowded zone, else as evictFirst says.
func (c *cluster) surplusVoter(sh *shard) *shoalpb.ReplicaDescriptor {
	zc := c.zoneCounts(sh.Desc, nil)
	rank := func(r *shoalpb.ReplicaDescriptor) [3]int {
		return [3]int{
			btoi(c.live(r.NodeId)),
			btoi(c.state(r.NodeId) != shoalpb.NodeState_NODE_STATE_DRAINING),
			-zc[c.nodes[r.NodeId].Zone],
		}
	}
	var pick *shoalpb.ReplicaDescriptor
	for _, r := range sh.Desc.Replicas {
		if r.Role != shoalpb.ReplicaRole_REPLICA_ROLE_VOTER {
			continue
		}
		if pick == nil {
			pick = r
			continue
		}
		ra, rb := rank(r), rank(pick)
		if o := slices.Compare(ra[:], rb[:]); o < 0 || o == 0 && c.evictFirst(sh, r, pick) {
			pick = r
		}
	}
	return pick
}

// drain moves replicas off draining nodes.
func (c *cluster) drain() {
	for _, id := range c.nodeIDs {
		if c.state(id) != shoalpb.NodeState_NODE_STATE_DRAINING {
			continue
		}
		for _, sh := range c.shards {
			if c.busy[sh.id()] {
				continue
			}
			for _, r := range sh.Desc.Replicas {
				if r.NodeId == id {
					c.relocate(sh, r, shoalpb.OperatorKind_OPERATOR_KIND_DRAIN, fmt.Sprintf("node %d is draining", id), true)
					break
				}
			}
		}
	}
}

// relocate plans moving replica from of sh (nil: adding a voter) to the
// best node that can take it, and starts it if the limits allow. Unless
// the move is impossible, the schedule is then pending. With relax, a
// target that breaks the zone limit is accepted when no other exists.
func (c *cluster) relocate(sh *shard, from *shoalpb.ReplicaDescriptor, kind shoalpb.OperatorKind, reason string, relax bool) {
	if !c.keepsQuorum(sh.Desc, from, true) {
		return
	}
	if !c.room() || from != nil && !c.canMove(from.NodeId) {
		c.pending = true
		return
	}
	to, held := c.target(sh, from, relax)
	if to == 0 {
		c.pending = c.pending || held
		return
	}
	m := move{sh: sh, kind: kind, reason: reason, from: from, to: to}
	if from != nil && from == sh.leader() {
		m.lead = c.successor(sh, from.ReplicaId)
	}
	c.admit(m)
	c.pending = true
}

// shed plans removing voter from of sh without a replacement.
func (c *cluster) shed(sh *shard, from *shoalpb.ReplicaDescriptor, kind shoalpb.OperatorKind, reason string) {
	if !c.keepsQuorum(sh.Desc, from, false) {
		return
	}
	if !c.room() {
		c.pending = true
		return
	}
	m := move{sh: sh, kind: kind, reason: reason, from: from}
	if from == sh.leader() {
		if m.lead = c.successor(sh, from.ReplicaId); m.lead == 0 {
			return
		}
	}
	c.admit(m)
	c.pending = true
}

// target picks the node for a new replica of sh replacing from (nil:
// none): an up node without a replica of sh, in the zone with the fewest
// of the shard's other replicas, then the least loaded, then the lowest
// ID. Only nodes that keep the zone limit qualify, unless relax is set
// and there are none. It returns 0 if no node qualifies, with held set
// when some did but were at their limit of data moves.
func (c *cluster) target(sh *shard, from *shoalpb.ReplicaDescriptor, relax bool) (node uint64, held bool) {
	type cand struct {
		id     uint64
		inZone int
		load   float64
	}
	zc := c.zoneCounts(sh.Desc, from)
	var ok, over []cand
	for _, id := range c.nodeIDs {
		if !c.placeable(id) || holds(sh.Desc, id) {
			continue
		}
		x := cand{id, zc[c.nodes[id].Zone], c.density(id, 1)}
		if x.inZone+1 <= c.zoneLimit {
			ok = append(ok, x)
		} else {
			over = append(over, x)
		}
	}
	if len(ok) == 0 && relax {
		ok = over
	}
	slices.SortFunc(ok, func(a, b cand) int {
		return cmp.Or(cmp.Compare(a.inZone, b.inZone), cmp.Compare(a.load, b.load), cmp.Compare(a.id, b.id))
	})
	for _, x := range ok {
		if c.canMove(x.id) {
			return x.id, false
		}
	}
	return 0, len(ok) > 0
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

func sortedIDs[V any](m map[uint64]V) []uint64 {
	out := make([]uint64, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
