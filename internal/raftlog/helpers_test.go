package raftlog

import (
	"bytes"
	"fmt"
	"log/slog"
	"math"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/internal/keys"
	"github.com/shoaldb/shoal/internal/storage"
	"github.com/shoaldb/shoal/internal/testlog"
)

const noLimit = math.MaxUint64

// openEngine opens a Pebble engine in dir "db" of fs, closed at the end of
// the test. Pebble's warnings and errors go to the test log.
func openEngine(t testing.TB, fs vfs.FS) *storage.Engine {
	t.Helper()
	e, err := storage.Open(storage.Options{
		Dir: "db", FS: fs, CacheBytes: 1 << 20, MemTableBytes: 256 << 10,
		Logger: testlog.New(t, slog.LevelWarn),
	})
	if err != nil {
		t.Fatalf("open engine: %v", err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

// ent returns entry i of term; its data depends on both, so an overwritten
// entry is told apart from the original even at the same term.
func ent(i, term uint64) *raftpb.Entry {
	return &raftpb.Entry{Index: new(i), Term: new(term), Data: fmt.Appendf(nil, "entry %d of term %d", i, term)}
}

// entsAt returns entries first, first+1, ... with the given terms, like
// etcd raft's index(first).terms(...).
func entsAt(first uint64, terms ...uint64) []*raftpb.Entry {
	out := make([]*raftpb.Entry, len(terms))
	for i, term := range terms {
		out[i] = ent(first+uint64(i), term)
	}
	return out
}

func sizeOf(ents ...*raftpb.Entry) uint64 {
	var n uint64
	for _, e := range ents {
		n += uint64(proto.Size(e))
	}
	return n
}

// seedState writes, in one synced batch, the raw Raft state of shard as if
// the log had been truncated at (ti, tt) and then held ents, with the given
// applied index; then loads it. Entries written this way reach the Storage
// only through Pebble (its cache starts empty), which is how the contract
// tests model etcd's MemoryStorage{ents: ...}.
func seedState(t testing.TB, eng *storage.Engine, shard, ti, tt, applied uint64, ents []*raftpb.Entry, cacheBytes int) *Storage {
	t.Helper()
	b := eng.NewBatch()
	defer b.Close()
	must(t, b.SetProto(keys.TruncatedStateKey(shard), &shoalpb.TruncatedState{Index: ti, Term: tt}))
	last, lastTerm := ti, tt
	if n := len(ents); n > 0 {
		last, lastTerm = ents[n-1].GetIndex(), ents[n-1].GetTerm()
	}
	must(t, b.SetProto(keys.HardStateKey(shard), &raftpb.HardState{Term: new(lastTerm), Commit: new(min(applied, last))}))
	must(t, b.SetProto(keys.AppliedStateKey(shard), &shoalpb.AppliedState{Index: applied, Term: termAt(ti, tt, ents, applied)}))
	for _, e := range ents {
		v, err := proto.Marshal(e)
		must(t, err)
		must(t, b.Set(keys.RaftLogKey(shard, e.GetIndex()), v, nil))
	}
	must(t, b.Commit(true))
	s, err := Load(eng, shard, cacheBytes)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	return s
}

// newLog returns a Storage truncated at (ti, tt) holding ents, in one of
// three ways, so that every contract test runs against each read path.
type logMode int

const (
	fromPebble logMode = iota // entries written to Pebble, then Load: empty cache
	fromCache                 // entries appended through the Storage: all cached
	mixed                     // appended with a 1-byte cache: only the last entry cached
)

func (m logMode) String() string { return [...]string{"pebble", "cache", "mixed"}[m] }

var allModes = []logMode{fromPebble, fromCache, mixed}

func newLog(t testing.TB, mode logMode, ti, tt, applied uint64, ents []*raftpb.Entry) (*storage.Engine, *Storage) {
	t.Helper()
	eng := openEngine(t, vfs.NewMem())
	const shard = 7
	switch mode {
	case fromPebble:
		return eng, seedState(t, eng, shard, ti, tt, applied, ents, 0)
	}
	cacheBytes := 1 << 20
	if mode == mixed {
		cacheBytes = 1
	}
	s := seedState(t, eng, shard, ti, tt, ti, nil, cacheBytes)
	b := eng.NewBatch()
	defer b.Close()
	must(t, s.Append(b, ents))
	must(t, s.SetApplied(b, &shoalpb.AppliedState{Index: applied, Term: termAt(ti, tt, ents, applied)}))
	must(t, b.Commit(true))
	n, _ := s.CacheStats()
	if want := min(len(ents), map[logMode]int{fromCache: len(ents), mixed: 1}[mode]); n != want {
		t.Fatalf("%v mode: %d entries cached, want %d", mode, n, want)
	}
	return eng, s
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// appendCommit appends ents in one synced batch.
// writeHardState writes hs with a synced commit.
func writeHardState(t testing.TB, eng *storage.Engine, s *Storage, hs *raftpb.HardState) {
	t.Helper()
	b := eng.NewBatch()
	defer b.Close()
	must(t, s.SetHardState(b, hs))
	must(t, b.Commit(true))
}

func appendCommit(t testing.TB, eng *storage.Engine, s *Storage, ents ...*raftpb.Entry) {
	t.Helper()
	b := eng.NewBatch()
	defer b.Close()
	must(t, s.Append(b, ents))
	must(t, b.Commit(true))
}

// wantLog asserts that s holds exactly ents after a truncation at (ti, tt):
// bounds, Term of every index, Entries of the whole log, and the cache
// invariants.
func wantLog(t testing.TB, s *Storage, ti, tt uint64, ents []*raftpb.Entry) {
	t.Helper()
	last := ti
	if len(ents) > 0 {
		last = ents[len(ents)-1].GetIndex()
	}
	if fi, _ := s.FirstIndex(); fi != ti+1 {
		t.Fatalf("FirstIndex = %d, want %d", fi, ti+1)
	}
	if li, _ := s.LastIndex(); li != last {
		t.Fatalf("LastIndex = %d, want %d", li, last)
	}
	if term, err := s.Term(ti); err != nil || term != tt {
		t.Fatalf("Term(%d) (truncated) = %d, %v; want %d", ti, term, err, tt)
	}
	for _, e := range ents {
		if term, err := s.Term(e.GetIndex()); err != nil || term != e.GetTerm() {
			t.Fatalf("Term(%d) = %d, %v; want %d", e.GetIndex(), term, err, e.GetTerm())
		}
	}
	got, err := s.Entries(ti+1, last+1, noLimit)
	if err != nil {
		t.Fatalf("Entries(%d, %d) = %v", ti+1, last+1, err)
	}
	assertEntries(t, got, ents)
	checkCache(t, s)
}

func assertEntries(t testing.TB, got, want []*raftpb.Entry) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("got %d entries %s, want %d %s", len(got), fmtEnts(got), len(want), fmtEnts(want))
	}
	for i := range got {
		if !proto.Equal(got[i], want[i]) {
			t.Fatalf("entry %d = %v, want %v", i, got[i], want[i])
		}
	}
}

func fmtEnts(ents []*raftpb.Entry) string {
	var b bytes.Buffer
	b.WriteByte('[')
	for i, e := range ents {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%d/%d", e.GetIndex(), e.GetTerm())
	}
	b.WriteByte(']')
	return b.String()
}

// checkCache asserts the entry cache's invariants: contiguous, ending at the
// last index, byte count equal to the sum of its entries' sizes, within its
// bound unless it holds a single entry, and never below the first index.
func checkCache(t testing.TB, s *Storage) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	c := &s.mu.cache
	if len(c.ents) != len(c.sizes) {
		t.Fatalf("cache: %d entries, %d sizes", len(c.ents), len(c.sizes))
	}
	if len(c.ents) == 0 {
		if c.bytes != 0 {
			t.Fatalf("empty cache counts %d bytes", c.bytes)
		}
		return
	}
	sum := 0
	for i, e := range c.ents {
		if e.GetIndex() != c.ents[0].GetIndex()+uint64(i) {
			t.Fatalf("cache not contiguous: %s", fmtEnts(c.ents))
		}
		if c.sizes[i] != proto.Size(e) {
			t.Fatalf("cache size of entry %d = %d, want %d", e.GetIndex(), c.sizes[i], proto.Size(e))
		}
		sum += c.sizes[i]
	}
	if sum != c.bytes {
		t.Fatalf("cache counts %d bytes, entries sum to %d", c.bytes, sum)
	}
	if c.bytes > c.maxBytes && len(c.ents) > 1 {
		t.Fatalf("cache holds %d bytes in %d entries, bound %d", c.bytes, len(c.ents), c.maxBytes)
	}
	if end := c.ents[len(c.ents)-1].GetIndex(); end != s.mu.lastIndex {
		t.Fatalf("cache ends at %d, last index is %d", end, s.mu.lastIndex)
	}
	if c.first() <= s.mu.truncated.Index {
		t.Fatalf("cache starts at %d, at or below the truncated index %d", c.first(), s.mu.truncated.Index)
	}
}

// diskLog returns the indexes of every log key of shard in Pebble.
func diskLog(t testing.TB, eng *storage.Engine, shard uint64) []uint64 {
	t.Helper()
	it, err := eng.NewIter(keys.ShardRaftSpan(shard))
	must(t, err)
	defer it.Close()
	var out []uint64
	for ok := it.First(); ok; ok = it.Next() {
		if _, idx, err := keys.DecodeRaftLogKey(it.Key()); err == nil {
			out = append(out, idx)
		}
	}
	must(t, it.Error())
	return out
}

func indexRange(lo, hi uint64) []uint64 {
	var out []uint64
	for i := lo; i <= hi; i++ {
		out = append(out, i)
	}
	return out
}

// appliedAt is an applied state at index i of term 5 with one voter.
func appliedAt(i uint64) *shoalpb.AppliedState {
	return &shoalpb.AppliedState{Index: i, Term: 5, ConfState: &raftpb.ConfState{Voters: []uint64{1}}}
}

// termAt is the term of index i in a log truncated at (ti, tt) holding ents.
func termAt(ti, tt uint64, ents []*raftpb.Entry, i uint64) uint64 {
	if i <= ti {
		return tt
	}
	for _, e := range ents {
		if e.GetIndex() == i {
			return e.GetTerm()
		}
	}
	return 0
}
