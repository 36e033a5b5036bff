package node

import (
	"fmt"
	"slices"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/internal/kv"
)

// A node whose disk is below half its reserve drops the entries other
// leaders send it (storage.SpaceGuard.Exhausted): its replicas count for no
// quorum. A leader on a node with room would accept writes for a shard
// whose other voters are mostly on such nodes, and they would time out,
// their outcome unknown. The masters pass on, with every heartbeat answer,
// the nodes whose latest heartbeat said so; the node keeps that list here
// and refuses those writes at once, with DISK_FULL.

// setExhausted records the masters' latest list of exhausted nodes.
func (n *Node) setExhausted(nodes []uint64) {
	if len(nodes) == 0 {
		if n.exhausted.Load() != nil {
			n.exhausted.Store(nil)
		}
		return
	}
	if old := n.exhausted.Load(); old != nil && slices.Equal(*old, nodes) {
		return
	}
	c := slices.Clone(nodes)
	n.exhausted.Store(&c)
}

// quorumSpace refuses a command for shard when the voters on exhausted
// nodes other than this one leave either majority of its configuration
// (both, in a joint configuration) without enough voters that take
// entries. This node's own disk is the SpaceGuard's business.
func (n *Node) quorumSpace(shard uint64) error {
	ex := n.exhausted.Load()
	if ex == nil {
		return nil
	}
	st, err := n.store.Status(shard)
	if err != nil {
		return nil // the proposal reports it
	}
	return quorumSpace(st.Descriptor, n.cfg.NodeID, *ex)
}

func quorumSpace(d *shoalpb.ShardDescriptor, self uint64, exhausted []uint64) error {
	incoming := func(r shoalpb.ReplicaRole) bool {
		return r == shoalpb.ReplicaRole_REPLICA_ROLE_VOTER || r == shoalpb.ReplicaRole_REPLICA_ROLE_VOTER_INCOMING
	}
	outgoing := func(r shoalpb.ReplicaRole) bool {
		return r == shoalpb.ReplicaRole_REPLICA_ROLE_VOTER || r == shoalpb.ReplicaRole_REPLICA_ROLE_VOTER_OUTGOING ||
			r == shoalpb.ReplicaRole_REPLICA_ROLE_VOTER_DEMOTING
	}
	for _, in := range []func(shoalpb.ReplicaRole) bool{incoming, outgoing} {
		voters := 0
		var lacking []uint64
		for _, r := range d.GetReplicas() {
			if !in(r.Role) {
				continue
			}
			voters++
			if r.NodeId != self && slices.Contains(exhausted, r.NodeId) {
				lacking = append(lacking, r.NodeId)
			}
		}
		if voters > 0 && voters-len(lacking) < voters/2+1 {
			slices.Sort(lacking)
			return fmt.Errorf("%w: shard %d cannot commit: %d of its %d voters are on nodes %v, below half their disk reserve, which take no entries; free space there or move the replicas off them",
				kv.ErrDiskFull, d.GetShardId(), len(lacking), voters, lacking)
		}
	}
	return nil
}
