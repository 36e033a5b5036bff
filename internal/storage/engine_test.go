package storage_test

import (
	"bytes"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"github.com/shoaldb/shoal/internal/keys"
	"github.com/shoaldb/shoal/internal/storage"
	"github.com/shoaldb/shoal/internal/testlog"
)

// testLogger sends Pebble's warnings and errors to the test log.
func testLogger(t testing.TB) *slog.Logger { return testlog.New(t, slog.LevelWarn) }

func open(t testing.TB, fs vfs.FS) *storage.Engine {
	t.Helper()
	e, err := storage.Open(storage.Options{Dir: "db", FS: fs, CacheBytes: 1 << 20, MemTableBytes: 1 << 20, Logger: testLogger(t)})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { e.Close() })
	return e
}

func mustGet(t testing.TB, r storage.Reader, key []byte) (string, bool) {
	t.Helper()
	v, ok, err := storage.Get(r, key)
	if err != nil {
		t.Fatalf("Get(%q): %v", key, err)
	}
	return string(v), ok
}

func commit(t testing.TB, e *storage.Engine, sync bool, kv ...string) {
	t.Helper()
	b := e.NewBatch()
	defer b.Close()
	for i := 0; i < len(kv); i += 2 {
		if err := b.Set([]byte(kv[i]), []byte(kv[i+1]), nil); err != nil {
			t.Fatal(err)
		}
	}
	if err := b.Commit(sync); err != nil {
		t.Fatalf("Commit(%v): %v", sync, err)
	}
}

func TestOpenRequiresDir(t *testing.T) {
	if _, err := storage.Open(storage.Options{FS: vfs.NewMem()}); err == nil {
		t.Fatal("Open without Dir succeeded")
	}
}

func TestOpenCloseReopen(t *testing.T) {
	fs := vfs.NewMem()
	e := open(t, fs)
	// FS is the one passed in, wrapped by the stall detection.
	if e.Dir() != "db" || e.FS().Unwrap() != fs {
		t.Fatalf("Dir, FS = %q, %T; want db and the FS passed in, wrapped", e.Dir(), e.FS())
	}
	if err := e.Write(keys.IdentityKey("cluster"), []byte("c1")); err != nil {
		t.Fatal(err)
	}
	commit(t, e, false, "unsynced", "u") // Close, unlike a crash, keeps unsynced writes
	if err := e.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := e.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	b := e.NewBatch()
	_ = b.Set([]byte("late"), nil, nil)
	if err := b.Commit(true); !errors.Is(err, storage.ErrClosed) {
		t.Fatalf("Commit on a closed engine = %v, want ErrClosed", err)
	}
	if s := e.Stats(); s.Commits != 2 || s.Syncs != 1 || s.Records != 2 {
		t.Fatalf("Stats after a failed commit = %+v, want 2 commits, 1 sync, 2 records", s)
	}

	e2 := open(t, fs)
	for k, want := range map[string]string{string(keys.IdentityKey("cluster")): "c1", "unsynced": "u"} {
		if v, ok := mustGet(t, e2.Reader(), []byte(k)); !ok || v != want {
			t.Errorf("after reopen %q = %q, %v; want %q", k, v, ok, want)
		}
	}
	if _, ok := mustGet(t, e2.Reader(), []byte("late")); ok {
		t.Error("a write committed after Close is present")
	}
	if s := e2.Stats(); s != (storage.Stats{}) {
		t.Errorf("a reopened engine starts with Stats %+v, want zero", s)
	}
}

func TestStatsCountCommitsAndSyncs(t *testing.T) {
	e := open(t, vfs.NewMem())
	steps := []struct {
		sync                 bool
		wantCommits, wantSyn uint64
	}{
		{false, 1, 0},
		{true, 2, 1},
		{false, 3, 1},
		{false, 4, 1},
		{true, 5, 2},
		{true, 6, 3},
	}
	for i, s := range steps {
		commit(t, e, s.sync, fmt.Sprint("k", i), "v")
		if got := e.Stats(); got.Commits != s.wantCommits || got.Syncs != s.wantSyn {
			t.Fatalf("after step %d (sync=%v): Stats = %+v, want Commits=%d Syncs=%d", i, s.sync, got, s.wantCommits, s.wantSyn)
		}
	}
	// Write is a synced commit.
	if err := e.Write([]byte("w"), []byte("v")); err != nil {
		t.Fatal(err)
	}
	if got := e.Stats(); got.Commits != 7 || got.Syncs != 4 {
		t.Fatalf("after Write: Stats = %+v, want 7 commits, 4 syncs", got)
	}
	// An empty batch still counts: it is a commit the caller asked for.
	b := e.NewBatch()
	if err := b.Commit(true); err != nil {
		t.Fatal(err)
	}
	b.Close()
	if got := e.Stats(); got.Commits != 8 || got.Syncs != 5 {
		t.Fatalf("after an empty synced batch: Stats = %+v, want 8 commits, 5 syncs", got)
	}
	// Records: one per set, delete or range deletion committed.
	if got := e.Stats().Records; got != 7 {
		t.Fatalf("Records = %d after 7 single writes and an empty batch, want 7", got)
	}
	b = e.NewBatch()
	_ = b.Set([]byte("a"), []byte("1"), nil)
	_ = b.Delete([]byte("b"), nil)
	_ = b.DeleteSpan(keys.Span{Start: []byte("c"), End: []byte("d")})
	if err := b.Commit(false); err != nil {
		t.Fatal(err)
	}
	b.Close()
	if got := e.Stats().Records; got != 10 {
		t.Fatalf("Records = %d after a batch of a set, a delete and a range deletion, want 10", got)
	}
}

func TestIndexedBatchReadsOwnWrites(t *testing.T) {
	e := open(t, vfs.NewMem())
	commit(t, e, false, "a", "old-a", "b", "old-b", "c", "old-c")

	b := e.NewIndexedBatch()
	defer b.Close()
	_ = b.Set([]byte("a"), []byte("new-a"), nil)
	_ = b.Delete([]byte("b"), nil)
	_ = b.Set([]byte("d"), []byte("new-d"), nil)
	hs := &raftpb.HardState{Term: new(uint64(7)), Vote: new(uint64(2)), Commit: new(uint64(40))}
	if err := b.SetProto([]byte("hs"), hs); err != nil {
		t.Fatal(err)
	}

	want := map[string]string{"a": "new-a", "c": "old-c", "d": "new-d"}
	for _, k := range []string{"a", "b", "c", "d"} {
		v, ok := mustGet(t, b, []byte(k))
		if w, wok := want[k]; ok != wok || v != w {
			t.Errorf("batch Get(%q) = %q, %v; want %q, %v", k, v, ok, w, wok)
		}
	}
	var got raftpb.HardState
	if ok, err := storage.GetProto(b, []byte("hs"), &got); err != nil || !ok || !proto.Equal(&got, hs) {
		t.Errorf("batch GetProto(hs) = %v, %v, %v; want %v", &got, ok, err, hs)
	}
	// An iterator over the batch merges its writes with the engine's.
	it, err := storage.NewIter(b, keys.Span{Start: []byte("a"), End: []byte("e")})
	if err != nil {
		t.Fatal(err)
	}
	var seen []string
	for ok := it.First(); ok; ok = it.Next() {
		seen = append(seen, string(it.Key())+"="+string(it.Value()))
	}
	if err := it.Close(); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(seen) != "[a=new-a c=old-c d=new-d]" {
		t.Errorf("batch iterator saw %v", seen)
	}
	// The engine does not see the batch before it commits...
	if v, _ := mustGet(t, e.Reader(), []byte("a")); v != "old-a" {
		t.Errorf("engine sees uncommitted write: a = %q", v)
	}
	if _, ok := mustGet(t, e.Reader(), []byte("d")); ok {
		t.Error("engine sees uncommitted key d")
	}
	// ...and sees all of it after.
	if err := b.Commit(false); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"a", "b", "c", "d"} {
		v, ok := mustGet(t, e.Reader(), []byte(k))
		if w, wok := want[k]; ok != wok || v != w {
			t.Errorf("after commit Get(%q) = %q, %v; want %q, %v", k, v, ok, w, wok)
		}
	}
}

func TestGetMissingAndCopies(t *testing.T) {
	e := open(t, vfs.NewMem())
	v, ok, err := e.Get([]byte("missing"))
	if v != nil || ok || err != nil {
		t.Fatalf("Get(missing) = %q, %v, %v; want nil, false, nil", v, ok, err)
	}
	hs := &raftpb.HardState{Term: new(uint64(3))}
	ok, err = storage.GetProto(e.Reader(), []byte("missing"), hs)
	if ok || err != nil {
		t.Fatalf("GetProto(missing) = %v, %v; want false, nil", ok, err)
	}
	if hs.GetTerm() != 3 {
		t.Fatalf("GetProto(missing) changed the message: %v", hs)
	}

	commit(t, e, false, "k", "value")
	v, ok, err = e.Get([]byte("k"))
	if !ok || err != nil || string(v) != "value" {
		t.Fatalf("Get(k) = %q, %v, %v", v, ok, err)
	}
	v[0] = 'X' // the caller owns the copy
	if v2, _ := mustGet(t, e.Reader(), []byte("k")); v2 != "value" {
		t.Fatalf("mutating Get's result changed the stored value to %q", v2)
	}
	commit(t, e, false, "empty", "")
	if v, ok := mustGet(t, e.Reader(), []byte("empty")); !ok || v != "" {
		t.Fatalf("Get(empty) = %q, %v; want present and empty", v, ok)
	}
}

func TestGetProto(t *testing.T) {
	e := open(t, vfs.NewMem())
	b := e.NewBatch()
	want := &raftpb.HardState{Term: new(uint64(9)), Commit: new(uint64(100))}
	if err := b.SetProto([]byte("hs"), want); err != nil {
		t.Fatal(err)
	}
	_ = b.Set([]byte("garbage"), []byte{0xff, 0xff, 0xff}, nil)
	if err := b.Commit(false); err != nil {
		t.Fatal(err)
	}
	b.Close()

	// GetProto replaces, not merges into, the message's old contents.
	got := &raftpb.HardState{Term: new(uint64(1)), Vote: new(uint64(5)), Commit: new(uint64(1000))}
	if ok, err := storage.GetProto(e.Reader(), []byte("hs"), got); !ok || err != nil {
		t.Fatalf("GetProto = %v, %v", ok, err)
	}
	if !proto.Equal(got, want) {
		t.Fatalf("GetProto = %v, want %v", got, want)
	}
	if _, err := storage.GetProto(e.Reader(), []byte("garbage"), &raftpb.HardState{}); err == nil {
		t.Fatal("GetProto of an undecodable value succeeded")
	}
}

func TestDeleteSpan(t *testing.T) {
	e := open(t, vfs.NewMem())
	b := e.NewBatch()
	for slot := range uint16(5) {
		for _, k := range []string{"", "a", "\xff"} {
			_ = b.Set(keys.DataKey(slot, []byte(k)), []byte("v"), nil)
		}
	}
	_ = b.Set(keys.RaftLogKey(1, 1), []byte("other family"), nil)
	if err := b.Commit(false); err != nil {
		t.Fatal(err)
	}
	b.Close()

	b = e.NewBatch()
	if err := b.DeleteSpan(keys.DataSpan(1, 3)); err != nil {
		t.Fatal(err)
	}
	// In one batch, a later Set survives an earlier DeleteSpan over its key.
	_ = b.Set(keys.DataKey(2, []byte("re")), []byte("v"), nil)
	if err := b.Commit(true); err != nil {
		t.Fatal(err)
	}
	b.Close()

	for slot := range uint16(5) {
		for _, k := range []string{"", "a", "\xff"} {
			_, ok := mustGet(t, e.Reader(), keys.DataKey(slot, []byte(k)))
			if want := slot < 1 || slot >= 3; ok != want {
				t.Errorf("slot %d key %q present = %v, want %v", slot, k, ok, want)
			}
		}
	}
	if _, ok := mustGet(t, e.Reader(), keys.DataKey(2, []byte("re"))); !ok {
		t.Error("Set after DeleteSpan in the same batch was lost")
	}
	if _, ok := mustGet(t, e.Reader(), keys.RaftLogKey(1, 1)); !ok {
		t.Error("DeleteSpan of data removed a raft key")
	}

	// A DeleteSpan after a Set in the same batch deletes it.
	b = e.NewBatch()
	_ = b.Set(keys.DataKey(4, []byte("new")), []byte("v"), nil)
	_ = b.DeleteSpan(keys.DataSpan(4, keys.SlotCount))
	if err := b.Commit(false); err != nil {
		t.Fatal(err)
	}
	b.Close()
	it, err := e.NewIter(keys.DataSpan(0, keys.SlotCount))
	if err != nil {
		t.Fatal(err)
	}
	defer it.Close()
	n := 0
	for ok := it.First(); ok; ok = it.Next() {
		slot, k, err := keys.DecodeDataKey(it.Key())
		if err != nil || slot == 1 || slot == 2 && string(k) != "re" || slot >= 4 {
			t.Errorf("unexpected key %q after deletes", it.Key())
		}
		n++
	}
	if n != 7 { // slot 0: 3 keys; slot 2: "re"; slot 3: 3 keys
		t.Errorf("iterated %d data keys, want 7", n)
	}
}

func TestSnapshotIsolation(t *testing.T) {
	e := open(t, vfs.NewMem())
	commit(t, e, false, "k", "v1")
	snap := e.NewSnapshot()
	defer snap.Close()
	commit(t, e, false, "k", "v2", "new", "x")
	if v, _ := mustGet(t, snap, []byte("k")); v != "v1" {
		t.Errorf("snapshot sees k = %q, want v1", v)
	}
	if _, ok := mustGet(t, snap, []byte("new")); ok {
		t.Error("snapshot sees a later key")
	}
	if v, _ := mustGet(t, e.Reader(), []byte("k")); v != "v2" {
		t.Errorf("engine sees k = %q, want v2", v)
	}
}

// TestCrashKeepsExactlySyncedBatches checks the crash filesystem and the
// engine's durability contract: a crash keeps every batch up to the last
// synced one (including unsynced batches before it, since the WAL is
// ordered) and, with no unsynced data surviving, nothing after it.
func TestCrashKeepsExactlySyncedBatches(t *testing.T) {
	fs := vfs.NewCrashableMem()
	e := open(t, fs)
	commit(t, e, true, "synced", "1")
	commit(t, e, false, "before-sync", "2")
	commit(t, e, true, "synced-2", "3")
	commit(t, e, false, "unsynced", "4", "synced", "overwritten-unsynced")

	crashed := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 0})
	// Writes after the clone do not reach it.
	commit(t, e, true, "after-crash", "5")
	if err := e.Close(); err != nil {
		t.Fatal(err)
	}

	e2 := open(t, crashed)
	want := map[string]string{"synced": "1", "before-sync": "2", "synced-2": "3"}
	for _, k := range []string{"synced", "before-sync", "synced-2", "unsynced", "after-crash"} {
		v, ok := mustGet(t, e2.Reader(), []byte(k))
		if w, wok := want[k]; ok != wok || v != w {
			t.Errorf("after crash %q = %q, %v; want %q, %v", k, v, ok, w, wok)
		}
	}
}

func TestCrashBeforeAnySync(t *testing.T) {
	fs := vfs.NewCrashableMem()
	e := open(t, fs)
	commit(t, e, false, "unsynced", "1")
	crashed := fs.CrashClone(vfs.CrashCloneCfg{})
	e2 := open(t, crashed)
	if _, ok := mustGet(t, e2.Reader(), []byte("unsynced")); ok {
		t.Fatal("an unsynced batch survived a crash that keeps no unsynced data")
	}
	// The crashed engine is usable.
	commit(t, e2, true, "k", "v")
	if v, ok := mustGet(t, e2.Reader(), []byte("k")); !ok || v != "v" {
		t.Fatalf("write after recovery: %q, %v", v, ok)
	}
}

// TestCrashPrefix checks, over random crash clones with some unsynced data
// kept, that what survives is always a prefix of the commit sequence that
// includes every synced commit: batches are atomic and never reordered.
func TestCrashPrefix(t *testing.T) {
	for _, pct := range []int{0, 50, 100} {
		for seed := range uint64(8) {
			t.Run(fmt.Sprintf("pct=%d/seed=%d", pct, seed), func(t *testing.T) {
				rng := rand.New(rand.NewPCG(seed, uint64(pct)))
				fs := vfs.NewCrashableMem()
				e := open(t, fs)
				n := 20 + rng.IntN(40)
				lastSynced := -1
				for i := range n {
					sync := rng.IntN(3) == 0
					// Each batch writes its own key and rewrites "last",
					// so a torn batch or a reordering is visible.
					// Some batches span several 32 KiB WAL blocks: Pebble
					// hands full blocks to its flusher without a sync, so
					// unsynced data can reach the file (and a crash clone
					// with pct > 0) only that way.
					size := rng.IntN(3000)
					if rng.IntN(4) == 0 {
						size = 40_000 + rng.IntN(100_000)
					}
					commit(t, e, sync, fmt.Sprintf("k%03d", i), string(bytes.Repeat([]byte{'v'}, size)), "last", fmt.Sprint(i))
					if sync {
						lastSynced = i
					}
				}
				crashed := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: pct, RNG: rand.New(rand.NewPCG(seed, 99))})
				e2 := open(t, crashed)
				last := -1
				if v, ok := mustGet(t, e2.Reader(), []byte("last")); ok {
					fmt.Sscan(v, &last)
				}
				if last < lastSynced {
					t.Fatalf("recovered up to batch %d, but batch %d was synced", last, lastSynced)
				}
				// Even at pct=0 the prefix may end after lastSynced: a
				// memtable rotation closes (and so syncs) the old WAL with
				// whatever unsynced batches it holds.
				for i := range n {
					_, ok := mustGet(t, e2.Reader(), []byte(fmt.Sprintf("k%03d", i)))
					if ok != (i <= last) {
						t.Fatalf("batch %d present = %v, but recovered prefix ends at %d", i, ok, last)
					}
				}
			})
		}
	}
}

// Synced commits are paced by MinSyncInterval: each sync waits until the
// interval since the previous one has passed, so n synced commits in a row
// take at least n-1 intervals; unsynced commits do not wait.
func TestMinSyncIntervalPacesSyncs(t *testing.T) {
	const interval = 40 * time.Millisecond
	e, err := storage.Open(storage.Options{Dir: "db", FS: vfs.NewMem(), MinSyncInterval: interval, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	commit(t, e, true, "k0", "v")
	start := time.Now()
	for i := 1; i <= 4; i++ {
		commit(t, e, true, fmt.Sprint("k", i), "v")
	}
	// Each of the 4 syncs waited for the interval since the one before
	// (less the time the first took to return, which is why the bound is
	// 3.5 intervals rather than 4).
	if took := time.Since(start); took < 7*interval/2 {
		t.Fatalf("4 synced commits took %v, want at least %v with MinSyncInterval %v", took, 7*interval/2, interval)
	}
	if s := e.Stats(); s.Syncs != 5 {
		t.Fatalf("Syncs = %d, want 5", s.Syncs)
	}
	for i := range 5 {
		if v, ok := mustGet(t, e.Reader(), fmt.Appendf(nil, "k%d", i)); !ok || v != "v" {
			t.Fatalf("k%d = %q, %v after its synced commit", i, v, ok)
		}
	}
}
