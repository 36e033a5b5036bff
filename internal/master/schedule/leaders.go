package schedule

import (
	"cmp"
	"fmt"
	"slices"

	"github.com/shoaldb/shoal/api/shoalpb"
)

// drainLeaders hands the leadership of shards led from draining nodes, and
// from nodes whose disk is full (their leaders refuse writes), to voters
// on up nodes with room.
func (c *cluster) drainLeaders() {
	for _, sh := range c.shards {
		if !c.room() {
			return
		}
		l := sh.leader()
		if c.busy[sh.id()] || l == nil {
			continue
		}
		reason := ""
		switch {
		case c.state(l.NodeId) == shoalpb.NodeState_NODE_STATE_DRAINING:
			reason = fmt.Sprintf("node %d is draining", l.NodeId)
		case c.nodes[l.NodeId].DiskFull:
			reason = fmt.Sprintf("node %d's disk is full", l.NodeId)
		default:
			continue
		}
		if to := c.successor(sh, l.ReplicaId); to != 0 {
			c.admit(move{sh: sh, kind: shoalpb.OperatorKind_OPERATOR_KIND_LEADER_BALANCE, reason: reason, lead: to})
		}
	}
}

// balanceLeaders moves leaderships from nodes leading more than their
// share to nodes leading less, by the rules balanceReplicas follows for
// replicas, within LeaderTolerance. It moves the leaders of the least busy
// shards, and a hot shard's only if that does not unbalance hot shards.
//
// When the source leads no shard with a voter on the target, the move
// may be a chain: s hands a shard to u, u hands another to t. Leader
// transfers are cheap and the nodes in between keep their count, so this
// reaches balances that single transfers cannot when shards have few
// voters.
func (c *cluster) balanceLeaders() {
	led := map[uint64][]*shard{}
	for _, sh := range c.shards {
		if l := sh.leader(); l != nil && !c.busy[sh.id()] {
			led[l.NodeId] = append(led[l.NodeId], sh)
		}
	}
	for _, id := range sortedIDs(led) {
		slices.SortStableFunc(led[id], func(a, b *shard) int { return cmp.Compare(a.OpsPerSec, b.OpsPerSec) })
	}
	for c.room() {
		chain := c.leaderMove(led)
		if len(chain) == 0 || c.ops+len(chain) > c.cfg.MaxOperators {
			return
		}
		for _, m := range chain {
			c.admit(m)
		}
	}
}

// leaderMove finds the next leader balancing move, a chain of transfers
// from an overloaded node or to an underloaded one.
func (c *cluster) leaderMove(led map[uint64][]*shard) []move {
	nodes := c.placeableNodes()
	mean := meanOf(nodes, c.leaders, c.nodes)
	if mean == 0 {
		return nil
	}
	tol := c.cfg.LeaderTolerance
	bySrc := slices.Clone(nodes)
	slices.SortStableFunc(bySrc, func(a, b uint64) int { return cmp.Compare(c.leaderDensity(b, 0), c.leaderDensity(a, 0)) })
	byDst := slices.Clone(nodes)
	slices.SortStableFunc(byDst, func(a, b uint64) int { return cmp.Compare(c.leaderDensity(a, 0), c.leaderDensity(b, 0)) })
	for _, s := range bySrc {
		var hops map[uint64]move
		for _, t := range byDst {
			ds, dt := c.leaderDensity(s, 0), c.leaderDensity(t, 0)
			if t == s || ds <= tol*mean && dt >= mean/tol || c.leaderDensity(s, -1) < c.leaderDensity(t, 1) {
				continue
			}
			if hops == nil {
				hops = c.transferTree(s, led)
			}
			if _, ok := hops[t]; !ok {
				continue
			}
			reason := fmt.Sprintf("node %d leads %.2fx its share of leaders", s, ds/mean)
			if ds <= tol*mean {
				reason = fmt.Sprintf("node %d leads %.2fx its share of leaders", t, dt/mean)
			}
			var chain []move
			for n := t; n != s; {
				m := hops[n]
				m.reason = reason
				chain = append(chain, m)
				n = m.sh.leader().NodeId
			}
			slices.Reverse(chain)
			return chain
		}
	}
	return nil
}

// transferTree finds, breadth first from s, the shortest chains of leader
// transfers from s to every node they reach: hops[v] is the transfer that
// brings a leadership to v, from the node that leads its shard.
func (c *cluster) transferTree(s uint64, led map[uint64][]*shard) map[uint64]move {
	hops := map[uint64]move{}
	queue := []uint64{s}
	for len(queue) > 0 {
		u := queue[0]
		queue = queue[1:]
		for _, sh := range led[u] {
			if c.busy[sh.id()] {
				continue
			}
			for _, r := range sh.Desc.Replicas {
				v := r.NodeId
				if _, seen := hops[v]; seen || v == s || r.Role != shoalpb.ReplicaRole_REPLICA_ROLE_VOTER ||
					!c.placeable(v) || !c.commitsUnder(sh, v) || sh.hot && !c.hotStaysSpread(u, v) {
					continue
				}
				hops[v] = move{sh: sh, kind: shoalpb.OperatorKind_OPERATOR_KIND_LEADER_BALANCE, lead: r.ReplicaId}
				queue = append(queue, v)
			}
		}
	}
	return hops
}

// hotStaysSpread reports whether moving a hot shard's leadership from s
// to t leaves t with no more hot leaders per unit of weight than s had.
func (c *cluster) hotStaysSpread(s, t uint64) bool {
	return c.hotDensity(t, 1) <= c.hotDensity(s, 0)
}

func (c *cluster) hotDensity(id uint64, delta int) float64 {
	return float64(c.hotLeaders[id]+delta) / c.nodes[id].Weight
}

// spreadHot moves the leaderships of hot shards from nodes leading more
// of them per unit of weight to voters on nodes leading fewer. If the
// target would then lead more than LeaderTolerance of its share of all
// leaders (and more than the source did), it hands the source the
// leadership of one of its cold shards in exchange.
func (c *cluster) spreadHot() {
	for c.room() {
		chain := c.hotMove()
		if len(chain) == 0 || c.ops+len(chain) > c.cfg.MaxOperators {
			return
		}
		for _, m := range chain {
			c.admit(m)
		}
	}
}

// hotMove finds the hot shard transfer that gains the most (then the
// busiest shard), with its exchange if one is needed.
func (c *cluster) hotMove() []move {
	mean := meanOf(c.placeableNodes(), c.leaders, c.nodes)
	var best []move
	var bestGain float64
	for _, sh := range c.shards {
		l := sh.leader()
		if !sh.hot || c.busy[sh.id()] || l == nil || !c.placeable(l.NodeId) {
			continue
		}
		s := l.NodeId
		for _, r := range sh.Desc.Replicas {
			t := r.NodeId
			if t == s || r.Role != shoalpb.ReplicaRole_REPLICA_ROLE_VOTER || !c.placeable(t) || c.hotDensity(s, -1) < c.hotDensity(t, 1) {
				continue
			}
			gain := c.hotDensity(s, 0) - c.hotDensity(t, 1)
			if best != nil && (gain < bestGain || gain == bestGain && sh.OpsPerSec <= best[0].sh.OpsPerSec) {
				continue
			}
			reason := fmt.Sprintf("node %d leads %d hot shards", s, c.hotLeaders[s])
			chain := []move{{sh: sh, kind: shoalpb.OperatorKind_OPERATOR_KIND_HOT_SHARD, lead: r.ReplicaId, reason: reason}}
			if c.leaderDensity(t, 1) > max(c.cfg.LeaderTolerance*mean, c.leaderDensity(s, 0)) {
				back := c.coldLedBy(t, s)
				if back == nil {
					continue
				}
				chain = append(chain, move{sh: back, kind: shoalpb.OperatorKind_OPERATOR_KIND_HOT_SHARD,
					lead: replicaOn(back.Desc, s).ReplicaId, reason: reason + ", exchanged"})
			}
			best, bestGain = chain, gain
		}
	}
	return best
}

// coldLedBy returns the least busy shard that t leads, that is not hot and
// has a voter on s, or nil.
func (c *cluster) coldLedBy(t, s uint64) *shard {
	var best *shard
	for _, sh := range c.shards {
		l, r := sh.leader(), replicaOn(sh.Desc, s)
		if sh.hot || c.busy[sh.id()] || l == nil || l.NodeId != t || r == nil || r.Role != shoalpb.ReplicaRole_REPLICA_ROLE_VOTER {
			continue
		}
		if best == nil || sh.OpsPerSec < best.OpsPerSec {
			best = sh
		}
	}
	return best
}
