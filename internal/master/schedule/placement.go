package schedule

import (
	"errors"
	"fmt"
	"slices"

	"github.com/shoaldb/shoal/api/shoalpb"
)

// Node is what placement needs to know of a storage node.
type Node struct {
	ID     uint64
	Zone   string
	Weight float64
}

// ErrNotEnoughNodes is returned when there are fewer nodes than replicas.
var ErrNotEnoughNodes = errors.New("schedule: fewer nodes than replicas")

// PlaceInitial places shards shards (a power of two; shard i owns slots
// [i*16384/shards, (i+1)*16384/shards)) with replicas replicas each on
// nodes. Replica IDs are firstReplicaID, firstReplicaID+1, ... Each shard's
// first replica is the one meant to lead; leaders are spread by weight too.
func PlaceInitial(nodes []Node, shards, replicas int, firstReplicaID uint64) ([]*shoalpb.ShardDescriptor, error) {
	if replicas < 1 || len(nodes) < replicas {
		return nil, fmt.Errorf("%w: %d nodes for %d replicas", ErrNotEnoughNodes, len(nodes), replicas)
	}
	for _, n := range nodes {
		if n.Weight <= 0 {
			return nil, fmt.Errorf("schedule: node %d has weight %v, want > 0", n.ID, n.Weight)
		}
	}
	nodes = slices.Clone(nodes)
	slices.SortFunc(nodes, func(a, b Node) int { return cmpU64(a.ID, b.ID) })
	zones := map[string]bool{}
	for _, n := range nodes {
		zones[n.Zone] = true
	}
	count := map[uint64]int{}
	leaders := map[uint64]int{}
	id := firstReplicaID
	out := make([]*shoalpb.ShardDescriptor, 0, shards)
	for i := range shards {
		start, end := i*16384/shards, (i+1)*16384/shards
		chosen := pickReplicas(nodes, replicas, count, len(zones))
		for _, n := range chosen {
			count[n.ID]++
		}
		// The leader: the chosen node with the fewest leaders per weight.
		lead := 0
		for j, n := range chosen {
			if load(leaders[n.ID], n.Weight) < load(leaders[chosen[lead].ID], chosen[lead].Weight) {
				lead = j
			}
		}
		leaders[chosen[lead].ID]++
		chosen[0], chosen[lead] = chosen[lead], chosen[0]
		d := &shoalpb.ShardDescriptor{ShardId: uint64(i + 1), StartSlot: uint32(start), EndSlot: uint32(end), Epoch: 1}
		for _, n := range chosen {
			d.Replicas = append(d.Replicas, &shoalpb.ReplicaDescriptor{NodeId: n.ID, ReplicaId: id})
			id++
		}
		out = append(out, d)
	}
	return out, nil
}

// pickReplicas chooses replicas distinct nodes for one shard: each pick
// takes a zone with the fewest of this shard's replicas so far, and in it
// the node whose turn it is by weight (see load).
func pickReplicas(nodes []Node, replicas int, count map[uint64]int, zones int) []Node {
	chosen := make([]Node, 0, replicas)
	inZone := map[string]int{}
	used := map[uint64]bool{}
	for range replicas {
		best := -1
		for j, n := range nodes {
			if used[n.ID] {
				continue
			}
			if best < 0 || better(n, nodes[best], inZone, count) {
				best = j
			}
		}
		n := nodes[best]
		used[n.ID] = true
		inZone[n.Zone]++
		chosen = append(chosen, n)
	}
	return chosen
}

// better reports whether a is a better next pick than b: first the zone
// least used by the shard, then the lower load, then the lower ID.
func better(a, b Node, inZone map[string]int, count map[uint64]int) bool {
	if za, zb := inZone[a.Zone], inZone[b.Zone]; za != zb {
		return za < zb
	}
	la, lb := load(count[a.ID], a.Weight), load(count[b.ID], b.Weight)
	if la != lb {
		return la < lb
	}
	return a.ID < b.ID
}

// load is a node's priority for its next replica: Sainte-Laguë's divisor,
// (count + 1/2) / weight, which shares out seats in proportion to weights
// without favouring heavy or light nodes.
func load(n int, weight float64) float64 { return (float64(n) + 0.5) / weight }

func cmpU64(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
