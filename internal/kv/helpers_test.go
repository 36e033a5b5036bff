package kv

import (
	"bytes"
	"fmt"
	"log/slog"
	"maps"
	"slices"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"google.golang.org/protobuf/proto"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/internal/keys"
	"github.com/shoaldb/shoal/internal/raftstore"
	"github.com/shoaldb/shoal/internal/storage"
)

// t0 is the base time of apply-level tests, Unix milliseconds.
const t0 int64 = 1_700_000_000_000

func discardLogger() *slog.Logger { return slog.New(slog.DiscardHandler) }

func openEngine(t testing.TB) *storage.Engine {
	t.Helper()
	eng, err := storage.Open(storage.Options{
		Dir: "db", FS: vfs.NewMem(), CacheBytes: 1 << 20, MemTableBytes: 1 << 20, Logger: discardLogger(),
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { eng.Close() })
	return eng
}

// allSlots is a shard that owns every slot.
func allSlots() *shoalpb.ShardDescriptor {
	return &shoalpb.ShardDescriptor{ShardId: 1, StartSlot: 0, EndSlot: keys.SlotCount}
}

// harness applies commands to one state machine on a real engine.
type harness struct {
	t     testing.TB
	eng   *storage.Engine
	sm    raftstore.StateMachine
	index uint64
}

func newHarness(t testing.TB, desc *shoalpb.ShardDescriptor) *harness {
	return &harness{t: t, eng: openEngine(t), sm: NewStateMachine(desc, StateMachineOptions{Logger: discardLogger()})}
}

// apply applies cmds in one batch, commits it, checks the expiry index and
// returns the results.
func (h *harness) apply(cmds ...*shoalpb.KVCommand) []*shoalpb.KVCommandResult {
	h.t.Helper()
	data := make([][]byte, len(cmds))
	for i, c := range cmds {
		b, err := proto.Marshal(c)
		if err != nil {
			h.t.Fatal(err)
		}
		data[i] = b
	}
	return h.applyRaw(data...)
}

func (h *harness) applyRaw(data ...[]byte) []*shoalpb.KVCommandResult {
	h.t.Helper()
	b := h.eng.NewIndexedBatch()
	defer b.Close()
	cmds := make([]raftstore.Command, len(data))
	for i, d := range data {
		h.index++
		cmds[i] = raftstore.Command{Index: h.index, Term: 1, Data: d}
	}
	res, err := h.sm.Apply(b, cmds)
	if err != nil {
		h.t.Fatalf("Apply: %v", err)
	}
	if len(res) != len(cmds) {
		h.t.Fatalf("Apply returned %d results for %d commands", len(res), len(cmds))
	}
	if err := b.Commit(false); err != nil {
		h.t.Fatal(err)
	}
	checkExpiryIndex(h.t, h.eng.Reader())
	checkSessionCache(h.t, h.sm, h.eng.Reader())
	out := make([]*shoalpb.KVCommandResult, len(res))
	for i, r := range res {
		kr, ok := r.(*shoalpb.KVCommandResult)
		if !ok {
			h.t.Fatalf("result %d is %T", i, r)
		}
		out[i] = kr
	}
	return out
}

// checkSessionCache fails unless every session record sm caches is the one
// stored (session.go's invariant).
func checkSessionCache(t testing.TB, sm raftstore.StateMachine, r storage.Reader) {
	t.Helper()
	ksm, ok := sm.(*stateMachine)
	if !ok {
		return
	}
	total := 0
	for id, cached := range ksm.sessions {
		stored := &shoalpb.SessionRecord{}
		found, err := storage.GetProto(r, keys.SessionKey(ksm.shard, id), stored)
		if err != nil {
			t.Fatal(err)
		}
		if !found || !proto.Equal(cached.rec, stored) {
			t.Fatalf("session %d: cached %v, stored (found %v) %v", id, cached.rec, found, stored)
		}
		// The cached encodings of its results make the stored bytes.
		raw, _, err := storage.Get(r, keys.SessionKey(ksm.shard, id))
		if err != nil {
			t.Fatal(err)
		}
		var e sessionEncoder
		enc, err := e.append(nil, cached.rec, maps.Clone(cached.enc))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(enc, raw) {
			t.Fatalf("session %d: from its cached result encodings\n%x\nstored\n%x", id, enc, raw)
		}
		if len(cached.enc) > len(cached.rec.Results) {
			t.Fatalf("session %d: %d result encodings kept for %d results", id, len(cached.enc), len(cached.rec.Results))
		}
		total += len(cached.rec.Results)
	}
	if total != ksm.cachedResults {
		t.Fatalf("cached records hold %d results, counted %d: one changed while cached?", total, ksm.cachedResults)
	}
	if total > maxCachedShardResults {
		t.Fatalf("cached records hold %d results, over the bound of %d", total, maxCachedShardResults)
	}
}

// one applies a single command and returns its result.
func (h *harness) one(c *shoalpb.KVCommand) *shoalpb.KVCommandResult {
	h.t.Helper()
	return h.apply(c)[0]
}

// checkExpiryIndex fails unless every data record with an expiry has its
// index entry. Other index entries are orphans left by plain SETs of keys
// that had an expiry (overlay.blind), removed by the sweeper; orphans
// reports how many there are.
func checkExpiryIndex(t testing.TB, r storage.Reader) (orphans int) {
	t.Helper()
	data := dumpData(t, r)
	for k, v := range data {
		if v.at == 0 {
			continue
		}
		if _, ok, err := storage.Get(r, keys.ExpiryKey(keys.Slot([]byte(k)), uint64(v.at), []byte(k))); err != nil || !ok {
			t.Fatalf("key %q expires at %d but has no index entry (err %v)", k, v.at, err)
		}
	}
	for _, e := range dumpIndex(t, r) {
		v, ok := data[e.key]
		if !ok || v.at != e.at {
			orphans++
		}
	}
	return orphans
}

type stored struct {
	value string
	at    int64
}

func (s stored) String() string { return fmt.Sprintf("%q@%d", s.value, s.at) }

// dumpData returns every stored data record, expired or not.
func dumpData(t testing.TB, r storage.Reader) map[string]stored {
	t.Helper()
	it, err := storage.NewIter(r, keys.DataSpan(0, keys.SlotCount))
	if err != nil {
		t.Fatal(err)
	}
	defer it.Close()
	out := map[string]stored{}
	for ok := it.First(); ok; ok = it.Next() {
		slot, k, err := keys.DecodeDataKey(it.Key())
		if err != nil {
			t.Fatal(err)
		}
		if slot != keys.Slot(k) {
			t.Fatalf("key %q stored in slot %d, belongs in %d", k, slot, keys.Slot(k))
		}
		raw, err := it.ValueAndErr()
		if err != nil {
			t.Fatal(err)
		}
		v, at, err := DecodeValue(raw)
		if err != nil {
			t.Fatalf("key %q: %v", k, err)
		}
		out[string(k)] = stored{string(v), at}
	}
	if err := it.Error(); err != nil {
		t.Fatal(err)
	}
	return out
}

type indexEntry struct {
	key string
	at  int64
}

// dumpIndex returns every expiry-index entry in key order.
func dumpIndex(t testing.TB, r storage.Reader) []indexEntry {
	t.Helper()
	it, err := storage.NewIter(r, keys.ExpirySpan(0, keys.SlotCount))
	if err != nil {
		t.Fatal(err)
	}
	defer it.Close()
	var out []indexEntry
	for ok := it.First(); ok; ok = it.Next() {
		slot, at, k, err := keys.DecodeExpiryKey(it.Key())
		if err != nil {
			t.Fatal(err)
		}
		if slot != keys.Slot(k) {
			t.Fatalf("index entry of %q in slot %d, belongs in %d", k, slot, keys.Slot(k))
		}
		out = append(out, indexEntry{string(k), int64(at)})
	}
	if err := it.Error(); err != nil {
		t.Fatal(err)
	}
	slices.SortFunc(out, func(a, b indexEntry) int {
		if a.key != b.key {
			if a.key < b.key {
				return -1
			}
			return 1
		}
		return int(a.at - b.at)
	})
	return out
}

// Command builders.

func cmdAt(now int64, ops ...*shoalpb.KVOp) *shoalpb.KVCommand {
	return &shoalpb.KVCommand{NowMs: now, Ops: ops}
}

func putOp(key, value string, mods ...func(*shoalpb.PutOp)) *shoalpb.KVOp {
	p := &shoalpb.PutOp{Key: []byte(key), Value: []byte(value)}
	for _, m := range mods {
		m(p)
	}
	return &shoalpb.KVOp{Op: &shoalpb.KVOp_Put{Put: p}}
}

func withTTLAt(at int64) func(*shoalpb.PutOp) { return func(p *shoalpb.PutOp) { p.ExpireAtMs = at } }
func withCond(c shoalpb.Condition) func(*shoalpb.PutOp) {
	return func(p *shoalpb.PutOp) { p.Condition = c }
}
func keepTTL(p *shoalpb.PutOp)   { p.KeepTtl = true }
func returnOld(p *shoalpb.PutOp) { p.ReturnOld = true }

func delOp(key string, old bool) *shoalpb.KVOp {
	return &shoalpb.KVOp{Op: &shoalpb.KVOp_Delete{Delete: &shoalpb.DeleteOp{Key: []byte(key), ReturnOld: old}}}
}

func casOp(key string, expected []byte, value string, at int64) *shoalpb.KVOp {
	return &shoalpb.KVOp{Op: &shoalpb.KVOp_CompareAndSet{CompareAndSet: &shoalpb.CompareAndSetOp{
		Key: []byte(key), Expected: expected, ExpectAbsent: expected == nil, Value: []byte(value), ExpireAtMs: at,
	}}}
}

func incrOp(key string, delta int64) *shoalpb.KVOp {
	return &shoalpb.KVOp{Op: &shoalpb.KVOp_IncrBy{IncrBy: &shoalpb.IncrByOp{Key: []byte(key), Delta: delta}}}
}

func appendOp(key, value string) *shoalpb.KVOp {
	return &shoalpb.KVOp{Op: &shoalpb.KVOp_Append{Append: &shoalpb.AppendOp{Key: []byte(key), Value: []byte(value)}}}
}

func expireOp(key string, at int64) *shoalpb.KVOp {
	return &shoalpb.KVOp{Op: &shoalpb.KVOp_Expire{Expire: &shoalpb.ExpireOp{Key: []byte(key), ExpireAtMs: at}}}
}

func deleteExpiredOp(entries ...indexEntry) *shoalpb.KVOp {
	op := &shoalpb.DeleteExpiredOp{}
	for _, e := range entries {
		op.Keys = append(op.Keys, &shoalpb.ExpiredKey{Key: []byte(e.key), ExpireAtMs: e.at})
	}
	return &shoalpb.KVOp{Op: &shoalpb.KVOp_DeleteExpired{DeleteExpired: op}}
}

// ok builds the result of a successful command.
func ok(results ...*shoalpb.KVOpResult) *shoalpb.KVCommandResult {
	return &shoalpb.KVCommandResult{Results: results}
}

func fail(code shoalpb.KVErrorCode, msg string, op int32) *shoalpb.KVCommandResult {
	return &shoalpb.KVCommandResult{Error: code, ErrorMessage: msg, FailedOp: op}
}

func opRes(applied, found bool, value string, intValue int64) *shoalpb.KVOpResult {
	r := &shoalpb.KVOpResult{Applied: applied, Found: found, IntValue: intValue}
	if value != "" {
		r.Value = []byte(value)
	}
	return r
}
