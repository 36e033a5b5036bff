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
// in. They were kept in finish order while load() reads them in ID order,
// so a master that had restarted or installed a snapshot trimmed other
// records than its peers, and their engines diverged.
func TestFinishedOperatorsAsLoaded(t *testing.T) {
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
	const n = 3 * keepFinished
	ids := make([]uint64, n)
	for i := range ids {
		ids[i] = uint64(i + 1)
		m.mu.ops[ids[i]] = &shoalpb.Operator{Id: ids[i], ShardId: ids[i]}
	}
	rand.New(rand.NewPCG(3, 4)).Shuffle(n, func(i, j int) { ids[i], ids[j] = ids[j], ids[i] })
	for k, id := range ids {
		b := eng.NewBatch()
		if res, err := m.updateOperatorLocked(b, &shoalpb.UpdateOperator{Id: id, Outcome: "succeeded"}, int64(k)); err != nil || res.GetError() != "" {
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
	}
}
