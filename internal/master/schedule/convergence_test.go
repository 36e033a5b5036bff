package schedule

import (
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"testing"

	"github.com/shoaldb/shoal/api/shoalpb"
)

// run is the outcome of scheduling a cluster until nothing is left to do.
type run struct {
	rounds, ops, moves int
}

// runToFixpoint calls Schedule, checks its result, starts the operators
// and completes those in flight, until Schedule has nothing to add and
// nothing is in flight. With rng, each operator in flight completes with
// probability 3/4 per round, so later rounds see operators in flight;
// without, all complete at once.
func runToFixpoint(t *testing.T, name string, s *Snapshot, cfg Config, rng *rand.Rand) run {
	t.Helper()
	var r run
	for ; ; r.rounds++ {
		if r.rounds > 20000 {
			t.Fatalf("%s: no fixed point after %d rounds", name, r.rounds)
		}
		ops := Schedule(*s, cfg)
		if err := checkSchedule(*s, cfg, ops); err != nil {
			t.Fatalf("%s: round %d: %v", name, r.rounds, err)
		}
		startOps(s, ops)
		r.ops += len(ops)
		for _, op := range ops {
			if hasAdd(op) {
				r.moves++
			}
		}
		if len(s.Operators) == 0 {
			return r
		}
		done := slices.Clone(s.Operators)
		if rng != nil {
			done = slices.DeleteFunc(done, func(*shoalpb.Operator) bool { return rng.IntN(4) == 0 })
		}
		if err := applyOps(s, done); err != nil {
			t.Fatalf("%s: round %d: %v", name, r.rounds, err)
		}
	}
}

// randomCluster builds a cluster placed by PlaceInitial, then disturbed:
// nodes added (empty), drained, failed (down past RepairAfter) or removed,
// and weights changed. At most one node fails or is removed, and only
// with a replication factor of 3 or more, so no shard loses its quorum.
func randomCluster(rng *rand.Rand) (Snapshot, string) {
	rf := 1 + rng.IntN(5)
	zones := 1 + rng.IntN(4)
	roundRobin := rng.IntN(2) == 0
	zone := func(i int) string {
		if roundRobin {
			return fmt.Sprintf("z%d", i%zones)
		}
		return fmt.Sprintf("z%d", rng.IntN(zones))
	}
	weights := []float64{1, 1, 1, 2, 0.5, 3}
	var nodes []Node
	for i := range rf + 1 + rng.IntN(12) {
		nodes = append(nodes, Node{ID: uint64(i + 1), Zone: zone(i), Weight: weights[rng.IntN(len(weights))]})
	}
	shards := 64 << rng.IntN(4) // enough replicas per node to check balance
	if rng.IntN(4) == 0 {
		shards = 1 << rng.IntN(6)
	}
	descs, err := PlaceInitial(nodes, shards, rf, 1)
	if err != nil {
		panic(err)
	}
	s := Snapshot{NowMs: ddNow, ReplicationFactor: rf, NextReplicaID: uint64(shards*rf + 1), NextOperatorID: 1}
	for _, n := range nodes {
		s.Nodes = append(s.Nodes, NodeStatus{ID: n.ID, Zone: n.Zone, Weight: n.Weight, State: shoalpb.NodeState_NODE_STATE_UP})
	}
	for i := range rng.IntN(3) {
		s.Nodes = append(s.Nodes, NodeStatus{ID: uint64(len(nodes) + i + 1), Zone: zone(len(nodes) + i),
			Weight: weights[rng.IntN(len(weights))], State: shoalpb.NodeState_NODE_STATE_UP})
	}
	for i := range s.Nodes {
		n := &s.Nodes[i]
		switch x := rng.IntN(20); {
		case x < 2:
			n.State = shoalpb.NodeState_NODE_STATE_DRAINING
		case x < 4:
			n.Weight = weights[rng.IntN(len(weights))]
		}
	}
	if rf >= 3 && rng.IntN(3) == 0 {
		n := &s.Nodes[rng.IntN(len(nodes))]
		n.State, n.StateSinceMs = shoalpb.NodeState_NODE_STATE_DOWN, ddNow-3600_000
		if rng.IntN(2) == 0 {
			n.State = shoalpb.NodeState_NODE_STATE_REMOVED
		}
	}
	for _, d := range descs {
		ops := rng.ExpFloat64() * 100
		if rng.IntN(20) == 0 {
			ops *= 20
		}
		s.Shards = append(s.Shards, ShardStatus{Desc: d, LeaderReplica: d.Replicas[0].ReplicaId, OpsPerSec: ops, SizeBytes: uint64(rng.IntN(1 << 20))})
	}
	elect(&s)
	name := fmt.Sprintf("%d nodes, %d zones, %d shards, rf %d", len(s.Nodes), zones, shards, rf)
	return s, name
}

// balanceStats collects the worst balance seen over many fixed points.
type balanceStats struct {
	checked, skipped         map[string]int
	worstReplica, worstLeads float64
}

// TestConvergence schedules random clusters to a fixed point and checks
// the result: every shard has RF voters on distinct up nodes, spread over
// zones as the zone limit says, and, where the cluster can be balanced,
// replicas and leaders per unit of weight are within 1.10x and 1.20x of
// the mean. See balanceable for when balance is not checked.
func TestConvergence(t *testing.T) {
	// SCHED_SEED picks another family of random clusters, SCHED_CLUSTERS
	// checks more of them (1500 is a good soak), SCHED_ONLY reruns one.
	seed, _ := strconv.ParseUint(os.Getenv("SCHED_SEED"), 10, 64)
	clusters := 150
	if n, err := strconv.Atoi(os.Getenv("SCHED_CLUSTERS")); err == nil && n > 0 {
		clusters = n
	}
	if testing.Short() || raceEnabled {
		clusters = 30
	}
	st := balanceStats{checked: map[string]int{}, skipped: map[string]int{}}
	var rounds, moves, maxRounds int
	for i := range clusters {
		rng := rand.New(rand.NewPCG(seed, uint64(i)))
		s, name := randomCluster(rng)
		name = fmt.Sprintf("cluster %d (%s)", i, name)
		if only := os.Getenv("SCHED_ONLY"); only != "" && only != strconv.Itoa(i) {
			continue
		}
		cfg := Config{}
		if i%2 == 1 {
			cfg = Config{MaxOperators: 64, MaxOperatorsPerNode: 8}
		}
		r := runToFixpoint(t, name, &s, cfg, rng)
		rounds += r.rounds
		moves += r.moves
		maxRounds = max(maxRounds, r.rounds)
		checkFixpoint(t, name, s, cfg, &st)
	}
	t.Logf("%d clusters: %d rounds (at most %d), %d data moves", clusters, rounds, maxRounds, moves)
	t.Logf("balance checked: %v; skipped: %v", st.checked, st.skipped)
	t.Logf("worst replicas per weight %.3fx the mean, leaders %.3fx", st.worstReplica, st.worstLeads)
}

// checkFixpoint checks a cluster that Schedule has nothing more to do for.
func checkFixpoint(t *testing.T, name string, s Snapshot, cfg Config, st *balanceStats) {
	t.Helper()
	cfg.EnsureDefaults()
	up := map[uint64]NodeStatus{}
	for _, n := range s.Nodes {
		if n.State == shoalpb.NodeState_NODE_STATE_UP && n.Weight > 0 {
			up[n.ID] = n
		}
	}
	limit := zoneLimitOf(s, cfg)
	replicas, leaders := map[uint64]int{}, map[uint64]int{}
	for _, sh := range s.Shards {
		d := sh.Desc
		if err := checkDistinct(d); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		zones := map[string]int{}
		for _, r := range d.Replicas {
			if _, ok := up[r.NodeId]; len(up) < s.ReplicationFactor && !ok {
				continue // nowhere to move it
			}
			if _, ok := up[r.NodeId]; !ok || r.Role != shoalpb.ReplicaRole_REPLICA_ROLE_VOTER {
				t.Fatalf("%s: shard %d: r%d on n%d is %v, want a voter on an up node", name, d.ShardId, r.ReplicaId, r.NodeId, r.Role)
			}
			zones[up[r.NodeId].Zone]++
			replicas[r.NodeId]++
			if r.ReplicaId == sh.LeaderReplica {
				leaders[r.NodeId]++
			}
		}
		if len(up) >= s.ReplicationFactor && len(d.Replicas) != s.ReplicationFactor {
			t.Fatalf("%s: shard %d has %d replicas, want %d", name, d.ShardId, len(d.Replicas), s.ReplicationFactor)
		}
		for z, n := range zones {
			if n > limit {
				t.Fatalf("%s: shard %d has %d replicas in zone %q, limit %d", name, d.ShardId, n, z, limit)
			}
		}
	}
	// Zones constrain replica moves between them (a move needs a shard
	// the target zone may take more of), not within them; leaders can
	// only go where a chain of transfers takes them.
	sameZone := func(a, b uint64) bool { return up[a].Zone == up[b].Zone }
	reach := transferReach(s, up)
	reachable := func(a, b uint64) bool { return reach[a][b] }
	checkBalance(t, name, "replicas", s, up, limit, replicas, 20, 1.10, sameZone, st)
	checkBalance(t, name, "leaders", s, up, limit, leaders, 10*float64(s.ReplicationFactor), 1.20, reachable, st)
}

// transferReach returns, for every up node a, the up nodes that a chain
// of leader transfers can take a leadership from a to: a leads a shard
// with a voter on u1, u1 leads another with a voter on u2, and so on.
func transferReach(s Snapshot, up map[uint64]NodeStatus) map[uint64]map[uint64]bool {
	edges := map[uint64][]uint64{}
	for _, sh := range s.Shards {
		l := sh.Desc.Replica(sh.LeaderReplica)
		if l == nil {
			continue
		}
		for _, r := range sh.Desc.Replicas {
			if _, ok := up[r.NodeId]; ok && r.NodeId != l.NodeId && r.Role == shoalpb.ReplicaRole_REPLICA_ROLE_VOTER {
				edges[l.NodeId] = append(edges[l.NodeId], r.NodeId)
			}
		}
	}
	reach := map[uint64]map[uint64]bool{}
	for a := range up {
		seen := map[uint64]bool{a: true}
		stack := []uint64{a}
		for len(stack) > 0 {
			u := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			for _, v := range edges[u] {
				if !seen[v] {
					seen[v] = true
					stack = append(stack, v)
				}
			}
		}
		reach[a] = seen
	}
	return reach
}

// checkBalance checks that count per unit of weight is at most tol times
// the mean on every up node, where balanceable says it must be. Where the
// nodes' shares are too small for that, it checks instead that every node
// above tol is within one replica of every other node b it could hand
// one to (pair): its density exceeds b's by less than 1/w_a + 1/w_b (the
// scheduler stops when a move would overshoot). Where the zone limit
// decides the zones' loads, it checks the balance within zones.
func checkBalance(t *testing.T, name, what string, s Snapshot, up map[uint64]NodeStatus, limit int, count map[uint64]int,
	minShare, tol float64, pair func(a, b uint64) bool, st *balanceStats) {
	t.Helper()
	why := balanceable(s, up, limit, minShare)
	switch why {
	case "":
		st.checked[what]++
		r := worstRatio(up, count)
		if what == "replicas" {
			st.worstReplica = max(st.worstReplica, r)
		} else {
			st.worstLeads = max(st.worstLeads, r)
		}
		if r > tol {
			t.Fatalf("%s: a node has %.3fx its share of %s:\n%s", name, r, what, describe(s, up, count))
		}
	case tooFew:
		st.checked[what+" (one-replica bound)"]++
		if err := oneReplicaBound(up, count, tol, pair); err != nil {
			t.Fatalf("%s: %s: %v\n%s", name, what, err, describe(s, up, count))
		}
	case zoneForced:
		st.skipped[what+": "+why]++
		checkZoneBalance(t, name, what, s, up, count, minShare, tol, st)
	default:
		st.skipped[what+": "+why]++
	}
}

// checkZoneBalance checks, where the zone limit decides how much each zone
// holds, that the nodes within each zone share their zone's load by
// weight within tol (for zones whose lightest node's share is at least
// minShare and where no node's share is (nearly) every shard).
func checkZoneBalance(t *testing.T, name, what string, s Snapshot, up map[uint64]NodeStatus, count map[uint64]int,
	minShare, tol float64, st *balanceStats) {
	t.Helper()
	byZone := map[string]map[uint64]NodeStatus{}
	for id, n := range up {
		if byZone[n.Zone] == nil {
			byZone[n.Zone] = map[uint64]NodeStatus{}
		}
		byZone[n.Zone][id] = n
	}
	for _, z := range sortedKeys(byZone) {
		nodes := byZone[z]
		var n, w float64
		wMin := math.Inf(1)
		for id, nd := range nodes {
			n += float64(count[id])
			w += nd.Weight
			wMin = min(wMin, nd.Weight)
		}
		capped := false
		for _, nd := range nodes {
			capped = capped || n/w*nd.Weight > 0.9*float64(len(s.Shards))
		}
		if len(nodes) < 2 || n/w*wMin < minShare || capped {
			continue
		}
		st.checked[what+" (within zones)"]++
		if r := worstRatio(nodes, count); r > tol {
			t.Fatalf("%s: a node of zone %s has %.3fx the zone's share of %s:\n%s", name, z, r, what, describe(s, up, count))
		}
	}
}

// oneReplicaBound checks that no node a above tol times the mean holds a
// full replica (per unit of weight: 1/w_a + 1/w_b) more than a node b
// for which pair(a, b) holds.
func oneReplicaBound(up map[uint64]NodeStatus, count map[uint64]int, tol float64, pair func(a, b uint64) bool) error {
	var n, w float64
	for id, nd := range up {
		n += float64(count[id])
		w += nd.Weight
	}
	for _, a := range sortedIDs(up) {
		da := float64(count[a]) / up[a].Weight
		if da <= tol*n/w {
			continue
		}
		for _, b := range sortedIDs(up) {
			db := float64(count[b]) / up[b].Weight
			if pair(a, b) && da-db >= 1/up[a].Weight+1/up[b].Weight {
				return fmt.Errorf("n%d has %.3fx its share, %.2f per unit of weight more than n%d", a, da/(n/w), da-db, b)
			}
		}
	}
	return nil
}

const (
	tooFew     = "too few replicas per node"
	zoneForced = "the zone limit forces the balance"
)

// balanceable says why the cluster's fixed point need not be balanced
// within tolerance, or "" if it must be. It is not checked when:
//
//   - the lightest up node's share is under minShare replicas: a node
//     holds whole replicas, and at the fixed point the most and least
//     loaded nodes may differ by about 1/w_max + 1/w_min replicas per unit
//     of weight, which is within 10% of the mean only from about 20
//     replicas per node (for leaders, about 10 leaders, that is
//     10*RF replicas);
//   - a node's share is more than 90% of one replica of every shard: it
//     must hold (nearly) every shard, so only a few shards can move to it
//     and balancing needs chains of moves that the scheduler, moving one
//     replica from an overloaded node or to an underloaded one at a time,
//     does not look for;
//   - a zone's share by weight is outside what the zone limit lets it
//     hold: at most min(nodes in zone, limit) and at least RF minus what
//     the other zones can hold, per shard.
func balanceable(s Snapshot, up map[uint64]NodeStatus, limit int, minShare float64) string {
	rf, shards := float64(s.ReplicationFactor), float64(len(s.Shards))
	var w float64
	wMin := math.Inf(1)
	zoneW, zoneN := map[string]float64{}, map[string]int{}
	for _, n := range up {
		w += n.Weight
		wMin = min(wMin, n.Weight)
		zoneW[n.Zone] += n.Weight
		zoneN[n.Zone]++
	}
	mean := rf * shards / w
	if len(up) < s.ReplicationFactor {
		return "fewer up nodes than RF"
	}
	for _, n := range up {
		if mean*n.Weight > 0.9*shards {
			return "a node's share is (nearly) one replica of every shard"
		}
	}
	for z, zw := range zoneW {
		others := 0
		for o, n := range zoneN {
			if o != z {
				others += min(n, limit)
			}
		}
		lo, hi := max(0, s.ReplicationFactor-others), min(zoneN[z], limit)
		if share := mean * zw / shards; share < float64(lo) || share > float64(hi) {
			return zoneForced
		}
	}
	if mean*wMin < minShare {
		return tooFew
	}
	return ""
}

// worstRatio returns the largest count per unit of weight over up nodes,
// divided by the mean.
func worstRatio(up map[uint64]NodeStatus, count map[uint64]int) float64 {
	var n, w, worst float64
	for id, nd := range up {
		n += float64(count[id])
		w += nd.Weight
	}
	for id, nd := range up {
		worst = max(worst, float64(count[id])/nd.Weight/(n/w))
	}
	return worst
}

func describe(s Snapshot, up map[uint64]NodeStatus, count map[uint64]int) string {
	out := ""
	for _, n := range s.Nodes {
		_, isUp := up[n.ID]
		out += fmt.Sprintf("  n%d zone=%s weight=%v %v up=%v: %d\n", n.ID, n.Zone, n.Weight, n.State, isUp, count[n.ID])
	}
	for _, sh := range s.Shards {
		out += fmt.Sprintf("  shard %d leader %d ops %.0f %v\n", sh.Desc.ShardId, sh.LeaderReplica, sh.OpsPerSec, sh.Desc.Replicas)
	}
	return out
}

// TestScaleOutMoves adds one node to balanced clusters of N equal nodes
// and compares the data moves the scheduler makes with the fewest that
// reach the same tolerance band, and with the moves to a perfect balance.
func TestScaleOutMoves(t *testing.T) {
	for _, tc := range []struct{ nodes, shards, rf int }{
		{3, 64, 3}, {3, 512, 3}, {4, 256, 3}, {5, 512, 3}, {6, 512, 3}, {7, 512, 3},
		{8, 512, 5}, {10, 512, 3}, {12, 512, 3}, {15, 512, 1}, {20, 512, 3},
	} {
		name := fmt.Sprintf("%d->%d nodes, %d shards, rf %d", tc.nodes, tc.nodes+1, tc.shards, tc.rf)
		var nodes []Node
		for i := range tc.nodes {
			nodes = append(nodes, Node{ID: uint64(i + 1), Weight: 1})
		}
		descs, err := PlaceInitial(nodes, tc.shards, tc.rf, 1)
		if err != nil {
			t.Fatal(err)
		}
		s := Snapshot{NowMs: ddNow, ReplicationFactor: tc.rf, NextReplicaID: uint64(tc.shards*tc.rf + 1), NextOperatorID: 1}
		for _, n := range nodes {
			s.Nodes = append(s.Nodes, NodeStatus{ID: n.ID, Weight: 1, State: shoalpb.NodeState_NODE_STATE_UP})
		}
		for _, d := range descs {
			s.Shards = append(s.Shards, ShardStatus{Desc: d, LeaderReplica: d.Replicas[0].ReplicaId})
		}
		if r := runToFixpoint(t, name, &s, Config{}, nil); r.moves != 0 {
			t.Fatalf("%s: %d data moves before scaling out", name, r.moves)
		}
		s.Nodes = append(s.Nodes, NodeStatus{ID: uint64(tc.nodes + 1), Weight: 1, State: shoalpb.NodeState_NODE_STATE_UP})
		counts := replicaCounts(s)
		counts[uint64(tc.nodes+1)] = 0
		least, perfect := minMoves(counts, DefaultReplicaTolerance), tc.shards*tc.rf/(tc.nodes+1)
		r := runToFixpoint(t, name, &s, Config{}, nil)
		up := map[uint64]NodeStatus{}
		for _, n := range s.Nodes {
			up[n.ID] = n
		}
		ratio := float64(r.moves) / float64(least)
		t.Logf("%s: %d data moves, %d rounds; fewest for the band %d (%.2fx), for perfect balance %d; "+
			"replicas %.3fx, leaders %.3fx the mean at most",
			name, r.moves, r.rounds, least, ratio, perfect, worstRatio(up, replicaCounts(s)), worstRatio(up, leaderCounts(s)))
		if ratio > 1.5 {
			t.Errorf("%s: %d data moves, %.2fx the fewest (%d)", name, r.moves, ratio, least)
		}
	}
}

func replicaCounts(s Snapshot) map[uint64]int {
	m := map[uint64]int{}
	for _, sh := range s.Shards {
		for _, r := range sh.Desc.Replicas {
			m[r.NodeId]++
		}
	}
	return m
}

func leaderCounts(s Snapshot) map[uint64]int {
	m := map[uint64]int{}
	for _, sh := range s.Shards {
		if r := sh.Desc.Replica(sh.LeaderReplica); r != nil {
			m[r.NodeId]++
		}
	}
	return m
}

// minMoves is the fewest replica moves that bring every node (all of
// weight 1, IDs 1..len(counts)) within the tolerance band
// [mean/tol, mean*tol]: each move takes one replica from a node above the
// band or gives one to a node below it, so it is the larger of the total
// excess and the total deficit.
func minMoves(counts map[uint64]int, tol float64) int {
	total := 0
	for _, c := range counts {
		total += c
	}
	n := len(counts)
	mean := float64(total) / float64(n)
	excess, deficit := 0, 0
	for _, c := range counts {
		excess += max(0, c-int(math.Floor(mean*tol)))
		deficit += max(0, int(math.Ceil(mean/tol))-c)
	}
	return max(excess, deficit)
}

// TestScheduleDeterministic checks that Schedule gives the same answer
// for the same snapshot, including when its slices come in another order.
func TestScheduleDeterministic(t *testing.T) {
	rng := rand.New(rand.NewPCG(5, 6))
	for i := range 40 {
		s, name := randomCluster(rng)
		// Some operators in flight, from a first round.
		startOps(&s, Schedule(s, Config{MaxOperators: 8}))
		cfg := Config{MaxOperators: 32, MaxOperatorsPerNode: 4}
		want := formatOps(Schedule(s, cfg))
		shuffled := s
		shuffled.Nodes = slices.Clone(s.Nodes)
		shuffled.Shards = slices.Clone(s.Shards)
		rng.Shuffle(len(shuffled.Nodes), func(i, j int) { shuffled.Nodes[i], shuffled.Nodes[j] = shuffled.Nodes[j], shuffled.Nodes[i] })
		rng.Shuffle(len(shuffled.Shards), func(i, j int) { shuffled.Shards[i], shuffled.Shards[j] = shuffled.Shards[j], shuffled.Shards[i] })
		for range 3 {
			if got := formatOps(Schedule(s, cfg)); got != want {
				t.Fatalf("cluster %d (%s): Schedule differs between runs", i, name)
			}
			if got := formatOps(Schedule(shuffled, cfg)); got != want {
				t.Fatalf("cluster %d (%s): Schedule depends on the order of nodes or shards", i, name)
			}
		}
	}
}

func formatOps(ops []*shoalpb.Operator) string {
	out := ""
	for _, op := range ops {
		out += fmt.Sprintf("%s epoch=%d created=%d\n", formatOp(op), op.Epoch, op.CreatedMs)
	}
	return out
}
