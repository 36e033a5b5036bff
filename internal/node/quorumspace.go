package node

import (
	"fmt"
	"slices"
	"time"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/internal/kv"
	"github.com/shoaldb/shoal/internal/raftstore"
)

// A node whose disk is below half its reserve drops the entries other
// leaders send it (storage.SpaceGuard.Exhausted): its replicas count for no
// quorum. A leader on a node with room would accept writes for a shard
// whose other voters are mostly on such nodes, and they would time out,
// their outcome unknown. The masters pass on, with every heartbeat answer,
// the nodes whose latest heartbeat said so; the node keeps that list here
// and refuses those writes at once, with DISK_FULL.

// exhaustedNodes is the masters' latest list and when it came.
type exhaustedNodes struct {
	nodes []uint64
	at    time.Time
}

// setExhausted records the masters' latest list of exhausted nodes.
func (n *Node) setExhausted(nodes []uint64) {
	if len(nodes) == 0 {
		n.exhausted.Store(nil)
		return
	}
	n.exhausted.Store(&exhaustedNodes{nodes: slices.Clone(nodes), at: time.Now()})
}

// quorumSpace refuses a command for shard when the voters on exhausted
// nodes other than this one leave either majority of its configuration
// (both, in a joint configuration) without enough voters that take
// entries. This node's own disk is the SpaceGuard's business. A list older
// than three heartbeats (the masters cannot be reached) is not trusted:
// the nodes on it may have room again, and a write that cannot commit
// times out as it would without the list.
func (n *Node) quorumSpace(shard uint64) error {
	ex := n.exhausted.Load()
	if ex == nil || time.Since(ex.at) > 3*n.cfg.HeartbeatInterval {
		return nil
	}
	st, err := n.store.Status(shard)
	if err != nil || st.Role != raftstore.RoleLeader {
		return nil // the proposal reports it
	}
	return quorumSpace(st.Descriptor, n.cfg.NodeID, ex.nodes)
}

func quorumSpace(d *shoalpb.ShardDescriptor, self uint64, exhausted []uint64) error {
	cs := raftstore.ConfStateOf(d)
	for _, voters := range [][]uint64{cs.Voters, cs.VotersOutgoing} {
		var lacking []uint64
		for _, id := range voters {
			if node := d.Replica(id).GetNodeId(); node != self && slices.Contains(exhausted, node) {
				lacking = append(lacking, node)
			}
		}
		if len(voters) > 0 && len(voters)-len(lacking) < len(voters)/2+1 {
			slices.Sort(lacking)
			return fmt.Errorf("%w: shard %d cannot commit: %d of its %d voters are on nodes %v, below half their disk reserve, which take no entries; give those nodes more disk",
				kv.ErrDiskFull, d.GetShardId(), len(lacking), len(voters), lacking)
		}
	}
	return nil
}
