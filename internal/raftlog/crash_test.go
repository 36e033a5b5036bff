package raftlog

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/internal/keys"
	"github.com/shoaldb/shoal/internal/storage"
	"github.com/shoaldb/shoal/internal/testlog"
)

// The crash tests write a replica's Raft state the way internal/raftstore
// does (log entries and HardState in synced batches; the applied state, with
// the state machine's writes, in separate unsynced batches, covering only
// entries that were synced before), cut the power with
// MemFS.CrashClone at UnsyncedDataPercent 0, 50 and 100, then load the
// crashed copy and check it.

const crashShard = 1

// smKey is the state machine's one record: the index of the last entry
// applied to it, written in the same batch as the applied state.
var smKey = keys.DataKey(0, []byte("applied-by-sm"))

// crashModel is what the writer believes is committed to the engine.
type crashModel struct {
	trunc   *shoalpb.TruncatedState
	ents    []*raftpb.Entry   // indexes trunc.Index+1 ... last; never mutated in place
	hs      *raftpb.HardState // as written
	commit  uint64            // Raft's commit index, which may be ahead of hs's
	applied *shoalpb.AppliedState
}

func (m *crashModel) last() uint64 {
	if len(m.ents) == 0 {
		return m.trunc.GetIndex()
	}
	return m.ents[len(m.ents)-1].GetIndex()
}

func (m *crashModel) term(i uint64) uint64 {
	if i == m.trunc.GetIndex() {
		return m.trunc.GetTerm()
	}
	return m.ents[i-m.trunc.GetIndex()-1].GetTerm()
}

// fingerprint identifies a whole Raft state.
func fingerprint(trunc *shoalpb.TruncatedState, ents []*raftpb.Entry, hs *raftpb.HardState, applied *shoalpb.AppliedState) string {
	var b strings.Builder
	fmt.Fprintf(&b, "trunc %d/%d hs %d/%d/%d applied %d/%d %v log",
		trunc.GetIndex(), trunc.GetTerm(), hs.GetTerm(), hs.GetVote(), hs.GetCommit(),
		applied.GetIndex(), applied.GetTerm(), applied.GetConfState().GetVoters())
	for _, e := range ents {
		fmt.Fprintf(&b, " %d/%d/%x", e.GetIndex(), e.GetTerm(), crc32.ChecksumIEEE(e.GetData()))
	}
	return b.String()
}

func (m *crashModel) fingerprint() string { return fingerprint(m.trunc, m.ents, m.hs, m.applied) }

// crashWriter drives one replica and records every state it committed.
type crashWriter struct {
	t   *testing.T
	rng *rand.Rand
	eng *storage.Engine
	s   *Storage

	m           crashModel
	hist        []string // fingerprint after each commit, in commit order
	synced      int      // hist index of the state the last sync made durable
	syncedModel crashModel
	term        uint64
	voters      []uint64

	// For the planted bug's last Ready: overwrite the uncommitted tail
	// rather than extend the log; make the apply batch big.
	plantOverwrite, plantBig bool

	stats *crashStats
}

type crashStats struct {
	runs, readys, syncedReadys, unsyncedReadys, unsyncedAppends, applies, truncates, crashesInsideReady int
	recoveredPastSync, commitRaised, truncatedRecovered                                                 int
}

func (w *crashWriter) commit(b *storage.Batch, sync bool) {
	w.t.Helper()
	must(w.t, b.Commit(sync))
	b.Close()
	w.hist = append(w.hist, w.m.fingerprint())
	if sync {
		w.markSynced()
	}
}

func (w *crashWriter) markSynced() {
	w.synced = len(w.hist) - 1
	w.syncedModel = w.m
}

func (w *crashWriter) newEnts(start uint64, n int) []*raftpb.Entry {
	ents := make([]*raftpb.Entry, n)
	for i := range ents {
		size := w.rng.IntN(400)
		if w.rng.IntN(15) == 0 {
			size = 20_000 + w.rng.IntN(40_000) // spans WAL blocks
		}
		ents[i] = &raftpb.Entry{Index: new(start + uint64(i)), Term: new(w.term), Data: randBytes(w.rng, size)}
	}
	return ents
}

// ready runs one Raft Ready the way internal/raftstore handles it:
//
//  1. stage the new entries and HardState in the log batch;
//  2. apply CommittedEntries into an apply batch (state machine write plus
//     applied state, sometimes a truncation) and commit it, unsynced;
//  3. commit the log batch, synced if MustSync (entries, term or vote).
//
// CommittedEntries hold only entries made stable by earlier Readys, unless
// applyUnstable (raft's applyUnstableEntries, which raftstore gets because
// it does not use AsyncStorageWrites) lets them include this Ready's own.
// With crashInside the power fails between steps 2 and 3.
func (w *crashWriter) ready(applyUnstable, crashInside bool) {
	commit, last := w.m.commit, w.m.last()
	stable := w.syncedModel.last()
	next := w.m // the model once the log batch is in
	var ents []*raftpb.Entry
	planted := crashInside && applyUnstable
	if w.rng.IntN(100) < 60 || planted {
		start := commit + 1 + uint64(w.rng.IntN(int(last-commit)+1))
		if planted {
			start = last + 1
			if w.plantOverwrite && last > commit {
				start = commit + 1 + uint64(w.rng.IntN(int(last-commit)))
			}
		}
		if start <= last || w.rng.IntN(4) == 0 {
			w.term++
		}
		ents = w.newEnts(start, 1+w.rng.IntN(4))
		keep := start - w.m.trunc.GetIndex() - 1
		next.ents = append(w.m.ents[:keep:keep], ents...)
		stable = min(stable, start-1)
	}
	newCommit := commit
	if w.rng.IntN(2) == 0 || crashInside {
		newCommit += uint64(w.rng.IntN(int(next.last()-commit) + 1))
	}
	if planted {
		newCommit = next.last()
	}
	mustSync := ents != nil || w.term != w.m.hs.GetTerm()
	logBatch := w.eng.NewBatch()
	if ents != nil {
		must(w.t, w.s.Append(logBatch, ents))
	}
	next.commit = newCommit
	hs := &raftpb.HardState{Term: new(w.term), Vote: w.m.hs.Vote, Commit: new(newCommit)}
	if w.term != w.m.hs.GetTerm() {
		// A new term, with a vote: written.
		hs.Vote = new(uint64(1 + w.rng.IntN(3)))
	}
	if !w.s.CommitOnly(hs) {
		next.hs = hs
		must(w.t, w.s.SetHardState(logBatch, next.hs))
	}

	applyTo := min(newCommit, stable)
	if applyUnstable {
		applyTo = newCommit
	}
	if applied := w.m.applied.GetIndex(); applyTo > applied && (w.rng.IntN(4) != 0 || crashInside) {
		big := planted && w.plantBig || crashInside && w.rng.IntN(2) == 0 || w.rng.IntN(10) == 0
		w.apply(applyTo, next.term(applyTo), big, !applyUnstable)
		// A truncation in the apply batch drops entries below any the log
		// batch writes.
		next.applied, next.trunc = w.m.applied, w.m.trunc
		next.ents = next.ents[len(next.ents)-int(next.last()-w.m.trunc.GetIndex()):]
		w.stats.applies++
	}
	if crashInside {
		logBatch.Close()
		return
	}
	w.m = next
	w.commit(logBatch, mustSync)
	if mustSync {
		w.stats.syncedReadys++
	} else {
		w.stats.unsyncedReadys++
	}
}

// apply commits an apply batch for entries up to idx (of term term): the
// state machine's write (big ones exceed Pebble's large-batch threshold,
// which rotates, and so syncs, the WAL), the applied state, and sometimes a
// truncation.
func (w *crashWriter) apply(idx, term uint64, big, mayTruncate bool) {
	w.t.Helper()
	b := w.eng.NewBatch()
	must(w.t, b.Set(smKey, binary.BigEndian.AppendUint64(nil, idx), nil))
	if big {
		must(w.t, b.Set(keys.DataKey(1, []byte("blob")), make([]byte, 140_000+w.rng.IntN(60_000)), nil))
	}
	if w.rng.IntN(5) == 0 {
		w.voters = append(slices.Clone(w.voters), uint64(len(w.voters)+1))
	}
	as := &shoalpb.AppliedState{Index: idx, Term: term, ConfState: &raftpb.ConfState{Voters: w.voters}}
	must(w.t, w.s.SetApplied(b, as))
	w.m.applied = as
	if ti := w.m.trunc.GetIndex(); mayTruncate && idx > ti && w.rng.IntN(3) == 0 {
		to := ti + 1 + uint64(w.rng.IntN(int(idx-ti)))
		must(w.t, w.s.Truncate(b, to))
		term := w.m.term(to)
		w.m.ents = w.m.ents[to-ti:]
		w.m.trunc = &shoalpb.TruncatedState{Index: to, Term: term}
		if term != w.s.Truncated().GetTerm() {
			w.t.Fatalf("harness bug: truncated term %d, storage says %d", term, w.s.Truncated().GetTerm())
		}
		w.stats.truncates++
	}
	w.commit(b, false)
}

// unsyncedAppend appends at the end of the log without a sync: harsher than
// raftstore, which syncs every entry write.
func (w *crashWriter) unsyncedAppend() {
	b := w.eng.NewBatch()
	ents := w.newEnts(w.m.last()+1, 1+w.rng.IntN(3))
	must(w.t, w.s.Append(b, ents))
	w.m.ents = append(w.m.ents[:len(w.m.ents):len(w.m.ents)], ents...)
	w.commit(b, false)
	w.stats.unsyncedAppends++
}

func crashEngine(t *testing.T, fs vfs.FS) (*storage.Engine, error) {
	return storage.Open(storage.Options{
		Dir: "db", FS: fs, CacheBytes: 1 << 20, MemTableBytes: 256 << 10,
		Logger: testlog.New(t, slog.LevelError),
	})
}

// runCrash runs the writer for one seed, crashes, and returns what the
// checker found wrong with the recovered state, or nil. With
// plantApplyBeforeLog the writer has a bug on purpose: it applies entries
// of the Ready that writes them, committing their applied state before
// their log batch (which is what raftstore does when a Ready's
// CommittedEntries include its own Entries); the last Ready's apply batch is
// made durable (by its size rotating the WAL, or by another replica's sync)
// and the power fails before its log batch commits.
func runCrash(t *testing.T, seed uint64, pct int, plantApplyBeforeLog bool, st *crashStats) error {
	t.Helper()
	stream := uint64(pct) << 1
	if plantApplyBeforeLog {
		stream |= 1
	}
	rng := rand.New(rand.NewPCG(seed, stream))
	fs := vfs.NewCrashableMem()
	eng, err := crashEngine(t, fs)
	must(t, err)
	defer eng.Close()

	voters := []uint64{1}
	b := eng.NewBatch()
	must(t, Bootstrap(b, crashShard, &raftpb.ConfState{Voters: voters}))
	must(t, b.Commit(true))
	b.Close()
	s, err := Load(eng, crashShard, []int{1, 1000, DefaultCacheBytes}[rng.IntN(3)])
	must(t, err)
	hs, _, err := s.InitialState()
	must(t, err)
	w := &crashWriter{t: t, rng: rng, eng: eng, s: s, term: InitialIndex, voters: voters, stats: st,
		m: crashModel{trunc: s.Truncated(), hs: s.HardState(), commit: hs.GetCommit(), applied: s.Applied()}}
	w.hist = []string{w.m.fingerprint()}
	w.markSynced()

	steps := 10 + rng.IntN(60)
	for range steps {
		if rng.IntN(10) == 0 {
			w.unsyncedAppend()
		} else {
			w.ready(plantApplyBeforeLog, false)
		}
	}
	st.runs++
	st.readys += steps
	switch {
	case plantApplyBeforeLog:
		// The power fails in the middle of a Ready whose CommittedEntries
		// include its own entries (extending the log, or overwriting its
		// uncommitted tail): the apply batch is in, the log batch is not.
		// Something made the apply batch durable: it was big enough to
		// rotate the WAL, or another replica's group commit synced it.
		w.plantOverwrite, w.plantBig = seed%4 >= 2, seed%2 == 0
		w.ready(true, true)
		if !w.plantBig {
			must(t, eng.Write(keys.HardStateKey(crashShard+1), nil))
			w.markSynced()
		}
	case rng.IntN(2) == 0:
		// The power fails between the apply batch and the log batch.
		w.ready(false, true)
		st.crashesInsideReady++
	}

	crashed := fs.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: pct, RNG: rand.New(rand.NewPCG(seed, 77))})
	must(t, eng.Close())
	return checkRecovered(t, crashed, w)
}

// checkRecovered opens and loads the crashed filesystem and checks it
// against what the writer committed and synced.
func checkRecovered(t *testing.T, fs vfs.FS, w *crashWriter) error {
	t.Helper()
	eng, err := crashEngine(t, fs)
	if err != nil {
		return fmt.Errorf("engine does not open after the crash: %w", err)
	}
	defer eng.Close()
	s, err := Load(eng, crashShard, []int{1, 1000, DefaultCacheBytes}[w.rng.IntN(3)])
	if err != nil {
		return fmt.Errorf("Load: %w", err)
	}
	fi, _ := s.FirstIndex()
	li, _ := s.LastIndex()
	applied, trunc, stored := s.Applied(), s.Truncated(), s.HardState()
	synced := &w.syncedModel

	if applied.GetIndex() > li {
		return fmt.Errorf("applied index %d beyond last index %d", applied.GetIndex(), li)
	}
	// The applied state names an entry of the log (or the truncation
	// point): otherwise the state machine holds an entry the log does not,
	// and raft, told that index is committed, panics when the leader's
	// entries conflict with it.
	if term, err := s.Term(applied.GetIndex()); err != nil || term != applied.GetTerm() {
		return fmt.Errorf("applied state %d/%d, but the log has term %d there (%v)", applied.GetIndex(), applied.GetTerm(), term, err)
	}
	// The log is contiguous from the first to the last index, and Term
	// agrees with the entries.
	ents, err := s.Entries(fi, li+1, noLimit)
	if err != nil {
		return fmt.Errorf("log [%d, %d] not readable: %w", fi, li, err)
	}
	if uint64(len(ents)) != li-fi+1 {
		return fmt.Errorf("log [%d, %d] has %d entries", fi, li, len(ents))
	}
	for i, e := range ents {
		if e.GetIndex() != fi+uint64(i) {
			return fmt.Errorf("log not contiguous: %s", fmtEnts(ents))
		}
		if term, err := s.Term(e.GetIndex()); err != nil || term != e.GetTerm() {
			return fmt.Errorf("Term(%d) = %d, %v; entry has term %d", e.GetIndex(), term, err, e.GetTerm())
		}
	}
	// Every synced entry is there (unless truncated since: truncation only
	// removes applied entries).
	if li < synced.last() {
		return fmt.Errorf("last index %d below the synced last index %d", li, synced.last())
	}
	for _, e := range synced.ents {
		if e.GetIndex() <= trunc.GetIndex() {
			continue
		}
		if got := ents[e.GetIndex()-fi]; !proto.Equal(got, e) {
			return fmt.Errorf("synced entry %d/%d recovered as %d/%d", e.GetIndex(), e.GetTerm(), got.GetIndex(), got.GetTerm())
		}
	}
	if trunc.GetIndex() < synced.trunc.GetIndex() {
		return fmt.Errorf("truncated index went back from %d to %d", synced.trunc.GetIndex(), trunc.GetIndex())
	}
	// The synced HardState is there; only its commit index can have moved
	// on, through unsynced commit-only writes.
	if stored.GetTerm() != synced.hs.GetTerm() || stored.GetVote() != synced.hs.GetVote() || stored.GetCommit() < synced.hs.GetCommit() {
		return fmt.Errorf("HardState %v, synced %v", stored, synced.hs)
	}
	// Applied state: never behind what the sync covered, and the state
	// machine's write went with it.
	if applied.GetIndex() < synced.applied.GetIndex() {
		return fmt.Errorf("applied index %d behind the synced %d", applied.GetIndex(), synced.applied.GetIndex())
	}
	if v, ok, err := eng.Get(smKey); err != nil || (ok && binary.BigEndian.Uint64(v) != applied.GetIndex()) || (!ok && applied.GetIndex() != InitialIndex) {
		return fmt.Errorf("state machine at %x (%v, %v), applied index %d", v, ok, err, applied.GetIndex())
	}
	// What raft is told on restart: commit covers everything applied and
	// nothing beyond the log (raft panics if commit > last index).
	hs, cs, err := s.InitialState()
	if err != nil {
		return fmt.Errorf("InitialState: %w", err)
	}
	if hs.GetCommit() < applied.GetIndex() || hs.GetCommit() > li {
		return fmt.Errorf("InitialState commit %d outside [applied %d, last %d]", hs.GetCommit(), applied.GetIndex(), li)
	}
	if !slices.Equal(cs.GetVoters(), applied.GetConfState().GetVoters()) {
		return fmt.Errorf("InitialState ConfState %v, applied state has %v", cs, applied.GetConfState())
	}
	// The whole state is one the writer committed at or after the last
	// sync: batches are atomic and the WAL keeps their order.
	fp := fingerprint(trunc, ents, stored, applied)
	k := slices.Index(w.hist[w.synced:], fp)
	if k < 0 {
		return fmt.Errorf("recovered state is not one committed since the last sync:\n got  %s\n sync %s\n last %s", fp, w.hist[w.synced], w.hist[len(w.hist)-1])
	}
	if k > 0 {
		w.stats.recoveredPastSync++
	}
	if stored.GetCommit() < applied.GetIndex() {
		w.stats.commitRaised++
	}
	if trunc.GetIndex() > InitialIndex {
		w.stats.truncatedRecovered++
	}
	// The recovered replica can go on.
	b := eng.NewBatch()
	defer b.Close()
	next := &raftpb.Entry{Index: new(li + 1), Term: new(max(w.term, s.HardState().GetTerm())), Data: []byte("after")}
	if err := s.Append(b, []*raftpb.Entry{next}); err != nil {
		return fmt.Errorf("append after recovery: %w", err)
	}
	if err := b.Commit(true); err != nil {
		return fmt.Errorf("commit after recovery: %w", err)
	}
	s2, err := Load(eng, crashShard, 0)
	if err != nil {
		return fmt.Errorf("reload after recovery: %w", err)
	}
	if l, _ := s2.LastIndex(); l != li+1 {
		return fmt.Errorf("after recovery and one append, last index %d, want %d", l, li+1)
	}
	return nil
}

func crashSeeds() int {
	switch {
	case testing.Short():
		return 8
	case raceEnabled:
		return 16
	}
	return 40
}

func TestCrashRecovery(t *testing.T) {
	total := &crashStats{}
	for _, pct := range []int{0, 50, 100} {
		t.Run(fmt.Sprint("unsynced=", pct), func(t *testing.T) {
			st := &crashStats{}
			for seed := range uint64(crashSeeds()) {
				if err := runCrash(t, seed, pct, false, st); err != nil {
					t.Errorf("seed %d: %v", seed, err)
				}
			}
			t.Logf("%+v", *st)
			total.add(st)
		})
	}
	// The runs exercised what they are meant to: every kind of write, and
	// the recoveries that need care (a truncated log; an apply batch that
	// reached the disk without the HardState recording its commit; state
	// made durable past the last explicit sync by a WAL rotation).
	if c := total; c.syncedReadys == 0 || c.unsyncedReadys == 0 || c.unsyncedAppends == 0 || c.applies == 0 ||
		c.truncates == 0 || c.crashesInsideReady == 0 || c.truncatedRecovered == 0 || c.commitRaised == 0 || c.recoveredPastSync == 0 {
		t.Errorf("the writer did not exercise every kind of write and recovery: %+v", *c)
	}
}

func (c *crashStats) add(o *crashStats) {
	c.runs += o.runs
	c.readys += o.readys
	c.syncedReadys += o.syncedReadys
	c.unsyncedReadys += o.unsyncedReadys
	c.unsyncedAppends += o.unsyncedAppends
	c.applies += o.applies
	c.truncates += o.truncates
	c.crashesInsideReady += o.crashesInsideReady
	c.recoveredPastSync += o.recoveredPastSync
	c.commitRaised += o.commitRaised
	c.truncatedRecovered += o.truncatedRecovered
}

// TestCrashCheckerCatchesApplyBeforeLog shows that the harness can fail: a
// writer that commits an applied state before the log entries it covers are
// synced produces crashed states that violate applied <= last, which Load
// reports.
func TestCrashCheckerCatchesApplyBeforeLog(t *testing.T) {
	for _, pct := range []int{0, 50, 100} {
		t.Run(fmt.Sprint("unsynced=", pct), func(t *testing.T) {
			st := &crashStats{}
			caught := 0
			n := crashSeeds() / 4
			for seed := range uint64(n) {
				err := runCrash(t, seed, pct, true, st)
				if err == nil {
					continue
				}
				if msg := err.Error(); !strings.Contains(msg, "Load: ") || !strings.Contains(msg, "the log lost synced entries") {
					t.Errorf("seed %d: the planted bug was reported as %v, want Load to refuse an applied state beyond or not matching the log", seed, err)
				}
				t.Logf("seed %d: %v", seed, err)
				caught++
			}
			// The log batch never committed, so every crash, whatever
			// unsynced data it keeps, has the durable apply batch without
			// the entries it applied.
			if caught != n {
				t.Errorf("planted bug caught in %d of %d crashes, want all", caught, n)
			}
		})
	}
}
