package schedule

import (
	"cmp"
	"fmt"
	"slices"

	"github.com/shoaldb/shoal/api/shoalpb"
)

// balanceReplicas moves replicas from nodes holding more than their share
// to nodes holding less until every node is within ReplicaTolerance of its
// share, or no move helps.
//
// A move from s to t is made only when s is overloaded or t underloaded,
// and only if s keeps at least as many replicas per unit of weight as t
// gets: (n_s-1)/w_s >= (n_t+1)/w_t. The second rule makes the sum of
// n²/w fall with every move, so balancing ends, and keeps moves from
// bouncing back.
//
// When no shard can go straight from s to t (t holds all of s's movable
// shards, or the zone limit forbids), and no other pair has a move, the
// replica goes through a third node u: one shard moves from s to u and
// another from u to t. That costs two moves for one, so it is the last
// resort; it matters when nodes hold few replicas or most shards.
func (c *cluster) balanceReplicas() {
	onNode := map[uint64][]*shard{}
	for _, sh := range c.shards {
		if c.busy[sh.id()] || !c.settled(sh) {
			continue
		}
		for _, r := range sh.Desc.Replicas {
			onNode[r.NodeId] = append(onNode[r.NodeId], sh)
		}
	}
	for c.room() {
		chain := c.replicaMove(onNode, false)
		if chain == nil {
			chain = c.replicaMove(onNode, true)
		}
		if chain == nil || c.ops+len(chain) > c.cfg.MaxOperators {
			return
		}
		for _, m := range chain {
			c.admit(m)
		}
	}
}

// settled reports whether sh may be moved for balance: every replica is a
// voter on an up node, it has exactly the replication factor of them, and
// its placement is fine.
func (c *cluster) settled(sh *shard) bool {
	if len(sh.Desc.Replicas) != c.rf || duplicate(sh) != nil {
		return false
	}
	for _, r := range sh.Desc.Replicas {
		if r.Role != shoalpb.ReplicaRole_REPLICA_ROLE_VOTER || !c.placeable(r.NodeId) {
			return false
		}
	}
	r, _, _ := c.crowded(sh)
	return r == nil
}

// replicaMove finds the next balancing move: from the most loaded source
// to the least loaded target that qualify and share a movable shard, or
// with via, through a third node.
func (c *cluster) replicaMove(onNode map[uint64][]*shard, via bool) []move {
	nodes := c.placeableNodes()
	mean := meanOf(nodes, c.replicas, c.nodes)
	if mean == 0 {
		return nil
	}
	tol := c.cfg.ReplicaTolerance
	bySrc := slices.Clone(nodes)
	slices.SortStableFunc(bySrc, func(a, b uint64) int { return cmp.Compare(c.density(b, 0), c.density(a, 0)) })
	byDst := slices.Clone(nodes)
	slices.SortStableFunc(byDst, func(a, b uint64) int { return cmp.Compare(c.density(a, 0), c.density(b, 0)) })
	for _, s := range bySrc {
		if !c.canMove(s) {
			continue
		}
		for _, t := range byDst {
			ds, dt := c.density(s, 0), c.density(t, 0)
			if t == s || !c.canMove(t) || ds <= tol*mean && dt >= mean/tol || c.density(s, -1) < c.density(t, 1) {
				continue
			}
			var chain []move
			if via {
				chain = c.movesVia(onNode, s, t)
			} else if m, ok := c.replicaHop(onNode, s, t, 0); ok {
				chain = []move{m}
			}
			if chain == nil {
				continue
			}
			reason := fmt.Sprintf("node %d holds %.2fx its share of replicas", s, ds/mean)
			if ds <= tol*mean {
				reason = fmt.Sprintf("node %d holds %.2fx its share of replicas", t, dt/mean)
			}
			for i := range chain {
				chain[i].reason = reason
			}
			return chain
		}
	}
	return nil
}

// movesVia finds two moves that take a replica from s to t through a
// third node u that has room for both.
func (c *cluster) movesVia(onNode map[uint64][]*shard, s, t uint64) []move {
	for _, u := range c.placeableNodes() {
		if u == s || u == t || c.moving[u]+2 > c.cfg.MaxOperatorsPerNode {
			continue
		}
		first, ok := c.replicaHop(onNode, s, u, 0)
		if !ok {
			continue
		}
		if second, ok := c.replicaHop(onNode, u, t, first.sh.id()); ok {
			return []move{first, second}
		}
	}
	return nil
}

// replicaHop plans moving a replica from s to t, of a shard other than
// skip.
func (c *cluster) replicaHop(onNode map[uint64][]*shard, s, t, skip uint64) (move, bool) {
	sh, r := c.movable(onNode[s], s, t, skip)
	if sh == nil {
		return move{}, false
	}
	m := move{sh: sh, kind: shoalpb.OperatorKind_OPERATOR_KIND_REPLICA_BALANCE, from: r, to: t}
	if r == sh.leader() {
		m.lead = c.successor(sh, r.ReplicaId)
	}
	return m, true
}

// movable picks, among shards (those with a replica on s), the one whose
// replica on s is best moved to t: not busy nor skip, t holds none of it, the zone
// limit holds after the move; a non-leader before a leader, then the
// smallest, then the lowest ID.
func (c *cluster) movable(shards []*shard, s, t, skip uint64) (*shard, *shoalpb.ReplicaDescriptor) {
	var best *shard
	var bestR *shoalpb.ReplicaDescriptor
	for _, sh := range shards {
		if c.busy[sh.id()] || sh.id() == skip || holds(sh.Desc, t) {
			continue
		}
		r := replicaOn(sh.Desc, s)
		if c.zoneCounts(sh.Desc, r)[c.nodes[t].Zone]+1 > c.zoneLimit {
			continue
		}
		if best == nil || c.moveFirst(sh, r, best, bestR) {
			best, bestR = sh, r
		}
	}
	return best, bestR
}

// moveFirst reports whether replica a of shard x is a better one to move
// than replica b of shard y.
func (c *cluster) moveFirst(x *shard, a *shoalpb.ReplicaDescriptor, y *shard, b *shoalpb.ReplicaDescriptor) bool {
	if la, lb := a == x.leader(), b == y.leader(); la != lb {
		return lb
	}
	if x.SizeBytes != y.SizeBytes {
		return x.SizeBytes < y.SizeBytes
	}
	return x.id() < y.id()
}

func replicaOn(d *shoalpb.ShardDescriptor, node uint64) *shoalpb.ReplicaDescriptor {
	for _, r := range d.Replicas {
		if r.NodeId == node {
			return r
		}
	}
	return nil
}

// placeableNodes returns the IDs of the nodes that may take replicas.
func (c *cluster) placeableNodes() []uint64 {
	var out []uint64
	for _, id := range c.nodeIDs {
		if c.placeable(id) {
			out = append(out, id)
		}
	}
	return out
}

// meanOf is the mean of count per unit of weight over nodes.
func meanOf(nodes []uint64, count map[uint64]int, info map[uint64]NodeStatus) float64 {
	var n, w float64
	for _, id := range nodes {
		n += float64(count[id])
		w += info[id].Weight
	}
	if w == 0 {
		return 0
	}
	return n / w
}
