package master

import (
	"log/slog"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/internal/storage"
	"github.com/shoaldb/shoal/internal/testlog"
)

// TestFinishedOperatorsAsLoaded: the finished operators a master keeps in
// memory, and so the ones it trims from the meta group's engine, are what
// load() rebuilds from that engine, whatever order the operators finish
// in. They were kept in finish order while load() read them in ID order,
// so a master that had restarted or installed a snapshot trimmed other
// records than its peers, and their engines diverged; then in ID order,
// so an operator with a low ID that finished last was dropped at once.
func TestFinishedOperatorsAsLoaded(t *testing.T) {
	eng, m := openMeta(t)
	const n = 3 * keepFinished
	ids := make([]uint64, n)
	for i := range ids {
		ids[i] = uint64(i + 1)
		m.mu.ops[ids[i]] = &shoalpb.Operator{Id: ids[i], ShardId: ids[i]}
	}
	rand.New(rand.NewPCG(3, 4)).Shuffle(n, func(i, j int) { ids[i], ids[j] = ids[j], ids[i] })
	for k, id := range ids {
		b := eng.NewBatch()
		// Finish times go back now and then (a new leader's clock behind
		// the old one's): the operator finishing is kept all the same.
		now := int64(k)
		if k%7 == 3 {
			now -= 100
		}
		if res, err := m.updateOperatorLocked(b, &shoalpb.UpdateOperator{Id: id, Outcome: "succeeded"}, now); err != nil || res.GetError() != "" {
			t.Fatalf("finish operator %d: %v %v", id, res, err)
		}
		if err := b.Commit(false); err != nil {
			t.Fatal(err)
		}
		b.Close()
		reloaded := newMetaState(eng)
		if err := reloaded.load(); err != nil {
			t.Fatal(err)
		}
		opIDs := func(ops []*shoalpb.Operator) []uint64 {
			out := make([]uint64, len(ops))
			for i, op := range ops {
				out[i] = op.Id
			}
			return out
		}
		if live, loaded := opIDs(m.mu.finished), opIDs(reloaded.mu.finished); !slices.Equal(live, loaded) {
			t.Fatalf("after %d finished: kept %v in memory, %v on the engine", k+1, live, loaded)
		}
		// The last keepFinished to finish are kept, whatever their IDs:
		// one that ran long is not dropped as it finishes.
		if want := ids[max(0, k+1-keepFinished) : k+1]; !sameIDs(opIDs(m.mu.finished), want) {
			t.Fatalf("after %d finished: kept %v, want the last %d to finish %v", k+1, opIDs(m.mu.finished), len(want), want)
		}
	}
}

// sameIDs reports whether a and b hold the same IDs, in any order.
func sameIDs(a, b []uint64) bool {
	return slices.Equal(slices.Sorted(slices.Values(a)), slices.Sorted(slices.Values(b)))
}

// openMeta opens an empty meta state on an engine in memory.
func openMeta(t *testing.T) (*storage.Engine, *metaState) {
	t.Helper()
	eng, err := storage.Open(storage.Options{Dir: "db", FS: vfs.NewMem(), CacheBytes: 1 << 20, MemTableBytes: 256 << 10,
		Logger: testlog.New(t, slog.LevelWarn)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { eng.Close() })
	m := newMetaState(eng)
	if err := m.load(); err != nil {
		t.Fatal(err)
	}
	return eng, m
}

// TestNodeStateChangesCheckedAtApply: node state changes proposed from a
// state the node has since left are refused as they apply. A live node
// holding replicas is never removed (an administrator removing it while
// it was down, with its heartbeat bringing it up first, removed it); a
// failure detector's "down", or a heartbeat's "up", does not overwrite
// an administrator's drain.
func TestNodeStateChangesCheckedAtApply(t *testing.T) {
	eng, m := openMeta(t)
	m.mu.nodes[1] = &shoalpb.NodeInfo{Id: 1, State: shoalpb.NodeState_NODE_STATE_DOWN}
	m.mu.routes[1] = &shoalpb.ShardRoute{Shard: &shoalpb.ShardDescriptor{ShardId: 1,
		Replicas: []*shoalpb.ReplicaDescriptor{{NodeId: 1, ReplicaId: 1}}}}
	set := func(state, from shoalpb.NodeState) *shoalpb.MetaResult {
		t.Helper()
		b := eng.NewBatch()
		defer b.Close()
		res, err := m.apply(b, &shoalpb.MetaCommand{Cmd: &shoalpb.MetaCommand_SetNodeState{SetNodeState: &shoalpb.SetNodeStateRequest{
			NodeId: 1, State: state, OnlyFrom: from}}})
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Commit(false); err != nil {
			t.Fatal(err)
		}
		return res
	}
	const (
		none     = shoalpb.NodeState_NODE_STATE_UNSPECIFIED
		up       = shoalpb.NodeState_NODE_STATE_UP
		down     = shoalpb.NodeState_NODE_STATE_DOWN
		draining = shoalpb.NodeState_NODE_STATE_DRAINING
		removed  = shoalpb.NodeState_NODE_STATE_REMOVED
	)
	// The heartbeat's "up" lands first; then the administrator's removal.
	if res := set(up, down); res.GetError() != "" {
		t.Fatalf("up from down: %s", res.GetError())
	}
	if res := set(removed, none); res.GetError() == "" || m.mu.nodes[1].State != up {
		t.Fatalf("removing an up node that holds a replica: %q, now %v; want it refused", res.GetError(), m.mu.nodes[1].State)
	}
	// The administrator drains it; a "down" proposed from up is refused.
	if res := set(draining, none); res.GetError() != "" {
		t.Fatalf("drain: %s", res.GetError())
	}
	if res := set(down, up); res.GetError() == "" || m.mu.nodes[1].State != draining {
		t.Fatalf("down from up on a draining node: %q, now %v; want the drain kept", res.GetError(), m.mu.nodes[1].State)
	}
	// Down nodes holding replicas can be removed: that is how an
	// administrator gives up on a dead node.
	m.mu.nodes[1].State = down
	if res := set(removed, none); res.GetError() != "" || m.mu.nodes[1].State != removed {
		t.Fatalf("removing a down node: %q, now %v; want it removed", res.GetError(), m.mu.nodes[1].State)
	}
}
