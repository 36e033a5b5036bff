package node

import (
	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/internal/resp"
)

// respBackend serves the Redis protocol front end: commands go to the
// node's KV service in process; the topology combines the master's route
// table with what this node's own replicas know of their leaders (fresher
// than the table's hints).
type respBackend struct {
	*kvService
}

var _ resp.Backend = respBackend{}

func (b respBackend) Topology() resp.Topology {
	n := b.n
	t := resp.Topology{ClusterID: n.cfg.ClusterID, Self: n.cfg.NodeID, Nodes: map[uint64]resp.NodeInfo{}}
	table := n.Routes()
	t.Epoch = table.GetVersion()
	for _, ni := range table.GetNodes() {
		t.Nodes[ni.Id] = resp.NodeInfo{RESPAddr: ni.RespAddr,
			Up: ni.State == shoalpb.NodeState_NODE_STATE_UP || ni.State == shoalpb.NodeState_NODE_STATE_DRAINING}
	}
	if _, ok := t.Nodes[n.cfg.NodeID]; !ok {
		t.Nodes[n.cfg.NodeID] = resp.NodeInfo{RESPAddr: n.cfg.RESPAdvertiseAddr, Up: true}
	}
	for _, rt := range table.GetShards() {
		d := rt.Shard
		sh := resp.ShardInfo{ID: d.ShardId, Start: d.StartSlot, End: d.EndSlot}
		if st, err := n.store.Status(d.ShardId); err == nil && !st.Removed && st.Descriptor.GetEpoch() >= d.Epoch {
			d = st.Descriptor
			sh.Leader = st.LeaderNode
		} else {
			for _, r := range d.Replicas {
				if r.ReplicaId == rt.LeaderReplica {
					sh.Leader = r.NodeId
				}
			}
		}
		for _, r := range d.Replicas {
			if r.NodeId != sh.Leader && r.Role != shoalpb.ReplicaRole_REPLICA_ROLE_LEARNER {
				sh.Followers = append(sh.Followers, r.NodeId)
			}
		}
		t.Shards = append(t.Shards, sh)
	}
	return t
}

// ShardOf returns the shard of slot: the local replica's, else the route
// table's.
func (b respBackend) ShardOf(slot uint16) uint64 {
	if shard, err := b.n.store.ShardBySlot(slot); err == nil {
		return shard
	}
	shard, _ := b.n.routes.leaderOf(slot)
	return shard
}
