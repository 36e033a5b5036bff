package schedule

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
)

// checkPlacement verifies the invariants every placement must hold, and
// balance where the constraints allow it.
func checkPlacement(t *testing.T, name string, nodes []Node, shards, replicas int) {
	t.Helper()
	out, err := PlaceInitial(nodes, shards, replicas, 100)
	if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	if len(out) != shards {
		t.Fatalf("%s: %d shards, want %d", name, len(out), shards)
	}
	byID := map[uint64]Node{}
	zones := map[string]bool{}
	var totalW float64
	for _, n := range nodes {
		byID[n.ID] = n
		zones[n.Zone] = true
		totalW += n.Weight
	}
	count := map[uint64]int{}
	leaders := map[uint64]int{}
	seenReplica := map[uint64]bool{}
	next := uint32(0)
	for _, d := range out {
		if d.StartSlot != next || d.EndSlot <= d.StartSlot {
			t.Fatalf("%s: shard %d covers [%d, %d), want to start at %d", name, d.ShardId, d.StartSlot, d.EndSlot, next)
		}
		next = d.EndSlot
		if len(d.Replicas) != replicas {
			t.Fatalf("%s: shard %d has %d replicas", name, d.ShardId, len(d.Replicas))
		}
		onNode := map[uint64]bool{}
		inZone := map[string]int{}
		for _, r := range d.Replicas {
			if onNode[r.NodeId] {
				t.Fatalf("%s: shard %d has two replicas on node %d", name, d.ShardId, r.NodeId)
			}
			if seenReplica[r.ReplicaId] {
				t.Fatalf("%s: replica ID %d used twice", name, r.ReplicaId)
			}
			seenReplica[r.ReplicaId] = true
			onNode[r.NodeId] = true
			inZone[byID[r.NodeId].Zone]++
			count[r.NodeId]++
		}
		leaders[d.Replicas[0].NodeId]++
		limit := zoneLimit(nodes, replicas)
		for z, n := range inZone {
			if n > limit {
				t.Fatalf("%s: shard %d has %d replicas in zone %q with %d zones (limit %d)", name, d.ShardId, n, z, len(zones), limit)
			}
		}
	}
	if next != 16384 {
		t.Fatalf("%s: shards end at slot %d", name, next)
	}
	if len(zones) > 1 {
		return // balance is not promised against zone constraints
	}
	for _, n := range nodes {
		if float64(shards*replicas)*n.Weight/totalW > float64(shards) {
			return // a node cannot hold two replicas of a shard: balance is capped
		}
	}
	for _, n := range nodes {
		ideal := float64(shards*replicas) * n.Weight / totalW
		if d := math.Abs(float64(count[n.ID]) - ideal); d > 1.5 {
			t.Fatalf("%s: node %d (weight %v) holds %d replicas, ideal %.1f", name, n.ID, n.Weight, count[n.ID], ideal)
		}
		idealLeaders := float64(shards) * n.Weight / totalW
		// A shard's leader is one of its replicas, so leaders follow
		// weights a little less exactly than replicas do.
		if d := math.Abs(float64(leaders[n.ID]) - idealLeaders); d > max(2, 0.05*idealLeaders) {
			t.Fatalf("%s: node %d (weight %v) leads %d shards, ideal %.1f", name, n.ID, n.Weight, leaders[n.ID], idealLeaders)
		}
	}
}

// zoneLimit is the fewest replicas of one shard that the fullest zone can
// hold: the smallest L with sum over zones of min(nodes in zone, L) >= R.
func zoneLimit(nodes []Node, replicas int) int {
	size := map[string]int{}
	for _, n := range nodes {
		size[n.Zone]++
	}
	for l := 1; ; l++ {
		total := 0
		for _, s := range size {
			total += min(s, l)
		}
		if total >= replicas {
			return l
		}
	}
}

func TestPlaceInitialExamples(t *testing.T) {
	even := []Node{{1, "", 1}, {2, "", 1}, {3, "", 1}}
	checkPlacement(t, "3 even nodes", even, 64, 3)
	out, _ := PlaceInitial(even, 64, 3, 1)
	leaders := map[uint64]int{}
	for _, d := range out {
		leaders[d.Replicas[0].NodeId]++
	}
	if leaders[1] < 21 || leaders[2] < 21 || leaders[3] < 21 {
		t.Fatalf("leaders %v, want 21-22 each", leaders)
	}
	checkPlacement(t, "weights 1:2:3:2", []Node{{1, "", 1}, {2, "", 2}, {3, "", 3}, {4, "", 2}}, 256, 3)
	checkPlacement(t, "three zones", []Node{{1, "a", 1}, {2, "a", 1}, {3, "b", 1}, {4, "b", 1}, {5, "c", 1}, {6, "c", 1}}, 128, 3)
	checkPlacement(t, "two zones for three replicas", []Node{{1, "a", 1}, {2, "a", 1}, {3, "b", 1}, {4, "b", 1}}, 64, 3)
	checkPlacement(t, "one replica", []Node{{7, "", 1}}, 16, 1)
	checkPlacement(t, "one shard", []Node{{1, "", 1}, {2, "", 1}, {3, "", 1}}, 1, 3)
	checkPlacement(t, "16384 shards", []Node{{1, "", 1}, {2, "", 1}, {3, "", 1}, {4, "", 1}, {5, "", 1}}, 16384, 3)
}

func TestPlaceInitialErrors(t *testing.T) {
	if _, err := PlaceInitial([]Node{{1, "", 1}, {2, "", 1}}, 8, 3, 1); !errors.Is(err, ErrNotEnoughNodes) {
		t.Fatalf("2 nodes, 3 replicas: %v", err)
	}
	if _, err := PlaceInitial([]Node{{1, "", 0}}, 8, 1, 1); err == nil {
		t.Fatal("weight 0 accepted")
	}
}

// TestPlaceInitialProperties checks the invariants over many random
// clusters: node counts, weights, zones, shard counts, replication factors.
func TestPlaceInitialProperties(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	for c := range 500 {
		nNodes := 1 + rng.IntN(20)
		nZones := 1 + rng.IntN(5)
		nodes := make([]Node, nNodes)
		for i := range nodes {
			nodes[i] = Node{
				ID:     uint64(100 + rng.IntN(1000)*10 + i),
				Zone:   fmt.Sprintf("z%d", rng.IntN(nZones)),
				Weight: []float64{1, 1, 2, 0.5, 4}[rng.IntN(5)],
			}
		}
		replicas := 1 + rng.IntN(min(nNodes, 5))
		shards := 1 << rng.IntN(10)
		checkPlacement(t, fmt.Sprintf("case %d (%d nodes, %d zones, %d shards, %d replicas)", c, nNodes, nZones, shards, replicas),
			nodes, shards, replicas)
	}
}
