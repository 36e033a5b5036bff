package node

import (
	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/internal/keys"
)

// StaticPlacement returns the shard table of a cluster placed without a
// master: shards shards (a power of two) over nodes nodes 1..nodes, shard i
// on nodes i, i+1, ... (mod nodes), so that each node leads as many shards
// as the next once each shard's first replica campaigns. Replica IDs are
// 1, 2, ... in shard order.
func StaticPlacement(nodes, shards, replicas int) []*shoalpb.ShardDescriptor {
	out := make([]*shoalpb.ShardDescriptor, 0, shards)
	replicaID := uint64(0)
	for i := range shards {
		start, end := keys.ShardSlots(i, shards)
		d := &shoalpb.ShardDescriptor{ShardId: uint64(i + 1), StartSlot: uint32(start), EndSlot: uint32(end), Epoch: 1}
		for j := range replicas {
			replicaID++
			d.Replicas = append(d.Replicas, &shoalpb.ReplicaDescriptor{
				NodeId: uint64((i+j)%nodes + 1), ReplicaId: replicaID,
			})
		}
		out = append(out, d)
	}
	return out
}
