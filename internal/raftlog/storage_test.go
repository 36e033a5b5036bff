package raftlog

import (
	"errors"
	"fmt"
	"slices"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/internal/keys"
)

// The tests in this file follow etcd raft's storage_test.go for
// MemoryStorage: a log truncated at index 3 (term 3) and holding entries
// 4, 5, ... plays the part of MemoryStorage{ents: index(3).terms(3, 4, 5...)}.

func TestTerm(t *testing.T) {
	tests := []struct {
		i     uint64
		werr  error
		wterm uint64
	}{
		{0, raft.ErrCompacted, 0},
		{2, raft.ErrCompacted, 0},
		{3, nil, 3}, // the truncated index keeps its term
		{4, nil, 4},
		{5, nil, 5},
		{6, raft.ErrUnavailable, 0},
		{1 << 40, raft.ErrUnavailable, 0},
	}
	for _, mode := range allModes {
		_, s := newLog(t, mode, 3, 3, 3, entsAt(4, 4, 5))
		for _, tt := range tests {
			term, err := s.Term(tt.i)
			if !errors.Is(err, tt.werr) || (tt.werr == nil) != (err == nil) || term != tt.wterm {
				t.Errorf("%v: Term(%d) = %d, %v; want %d, %v", mode, tt.i, term, err, tt.wterm, tt.werr)
			}
		}
	}
}

func TestEntries(t *testing.T) {
	ents := entsAt(4, 4, 5, 6) // MemoryStorage's index(3).terms(3, 4, 5, 6) minus the dummy
	s4, s5, s6 := sizeOf(ents[0]), sizeOf(ents[1]), sizeOf(ents[2])
	tests := []struct {
		lo, hi, maxSize uint64
		werr            error
		want            []*raftpb.Entry
	}{
		{2, 6, noLimit, raft.ErrCompacted, nil},
		{3, 4, noLimit, raft.ErrCompacted, nil},
		{4, 5, noLimit, nil, ents[:1]},
		{4, 6, noLimit, nil, ents[:2]},
		{4, 7, noLimit, nil, ents[:3]},
		{5, 7, noLimit, nil, ents[1:]},
		{6, 7, noLimit, nil, ents[2:]},
		// Even with maxSize 0 the first entry is returned.
		{4, 7, 0, nil, ents[:1]},
		{6, 7, 0, nil, ents[2:]},
		{4, 7, s4 - 1, nil, ents[:1]},
		{4, 7, s4, nil, ents[:1]},
		{4, 7, s4 + s5, nil, ents[:2]},
		{4, 7, s4 + s5 + s6/2, nil, ents[:2]},
		{4, 7, s4 + s5 + s6 - 1, nil, ents[:2]},
		{4, 7, s4 + s5 + s6, nil, ents[:3]},
		{5, 7, s5 + s6, nil, ents[1:]},
		{5, 7, s5 + s6 - 1, nil, ents[1:2]},
		// Beyond the last index.
		{4, 8, noLimit, raft.ErrUnavailable, nil},
		{7, 8, noLimit, raft.ErrUnavailable, nil},
		// Empty ranges.
		{5, 5, noLimit, nil, nil},
		{7, 7, noLimit, nil, nil},
	}
	for _, mode := range allModes {
		_, s := newLog(t, mode, 3, 3, 3, ents)
		for _, tt := range tests {
			got, err := s.Entries(tt.lo, tt.hi, tt.maxSize)
			if !errors.Is(err, tt.werr) || (tt.werr == nil) != (err == nil) {
				t.Errorf("%v: Entries(%d, %d, %d) err = %v, want %v", mode, tt.lo, tt.hi, tt.maxSize, err, tt.werr)
				continue
			}
			if err != nil {
				if got != nil {
					t.Errorf("%v: Entries(%d, %d, %d) returned %s with an error", mode, tt.lo, tt.hi, tt.maxSize, fmtEnts(got))
				}
				continue
			}
			t.Run(fmt.Sprintf("%v/%d-%d-%d", mode, tt.lo, tt.hi, tt.maxSize), func(t *testing.T) {
				assertEntries(t, got, tt.want)
			})
		}
	}
}

func TestFirstLastIndexAfterBootstrapAppendTruncate(t *testing.T) {
	fs := vfs.NewMem()
	eng := openEngine(t, fs)
	const shard = 3
	cs := &raftpb.ConfState{Voters: []uint64{1, 2, 3}}
	b := eng.NewBatch()
	must(t, Bootstrap(b, shard, cs))
	must(t, b.Commit(true))
	b.Close()

	if _, err := Load(eng, shard+1, 0); !errors.Is(err, ErrNotBootstrapped) {
		t.Fatalf("Load of another shard = %v, want ErrNotBootstrapped", err)
	}
	s, err := Load(eng, shard, 0)
	must(t, err)
	if s.Shard() != shard {
		t.Fatalf("Shard() = %d", s.Shard())
	}
	// Bootstrapped: empty log truncated at InitialIndex.
	wantLog(t, s, InitialIndex, InitialIndex, nil)
	if ents, err := s.Entries(InitialIndex+1, InitialIndex+1, noLimit); err != nil || len(ents) != 0 {
		t.Fatalf("Entries on an empty log = %v, %v", ents, err)
	}
	if _, err := s.Entries(InitialIndex, InitialIndex+1, noLimit); !errors.Is(err, raft.ErrCompacted) {
		t.Fatalf("Entries(%d, ...) = %v, want ErrCompacted", InitialIndex, err)
	}
	if _, err := s.Snapshot(); !errors.Is(err, raft.ErrSnapshotTemporarilyUnavailable) {
		t.Fatalf("Snapshot() = %v, want ErrSnapshotTemporarilyUnavailable", err)
	}

	ents := entsAt(6, 5, 5, 6, 6, 7)
	appendCommit(t, eng, s, ents...)
	wantLog(t, s, 5, 5, ents)

	b = eng.NewBatch()
	must(t, s.SetApplied(b, &shoalpb.AppliedState{Index: 9, Term: 6, ConfState: cs}))
	must(t, s.Truncate(b, 8))
	must(t, b.Commit(false))
	b.Close()
	wantLog(t, s, 8, 6, ents[3:])

	// All of it on disk: reopen the engine and load.
	must(t, eng.Close())
	eng = openEngine(t, fs)
	s, err = Load(eng, shard, 0)
	must(t, err)
	wantLog(t, s, 8, 6, ents[3:])
	if got := diskLog(t, eng, shard); !slices.Equal(got, []uint64{9, 10}) {
		t.Fatalf("log keys on disk = %v, want [9 10]", got)
	}
}

// TestAppend is etcd's TestStorageAppend, plus checks that what the Storage
// reports is what is on disk after a commit.
func TestAppend(t *testing.T) {
	tests := []struct {
		name    string
		entries []*raftpb.Entry
		want    []*raftpb.Entry // the log after index 3
	}{
		{"all below truncated", entsAt(1, 1, 2), entsAt(4, 4, 5)},
		{"truncated point and same entries", entsAt(3, 3, 4, 5), entsAt(4, 4, 5)},
		{"same entries", entsAt(4, 4, 5), entsAt(4, 4, 5)},
		{"overwrite all", entsAt(3, 3, 6, 6), entsAt(4, 6, 6)},
		{"overwrite and extend", entsAt(3, 3, 4, 5, 5), entsAt(4, 4, 5, 5)},
		{"below truncated, overwrite, shorter", entsAt(2, 3, 3, 5), entsAt(4, 5)},
		{"overwrite shorter", entsAt(4, 5), entsAt(4, 5)},
		{"overwrite last", entsAt(5, 6), entsAt(4, 4, 6)},
		{"overwrite last, extend", entsAt(5, 6, 6, 6), entsAt(4, 4, 6, 6, 6)},
		{"direct append", entsAt(6, 5), entsAt(4, 4, 5, 5)},
		{"empty", nil, entsAt(4, 4, 5)},
	}
	for _, mode := range allModes {
		for _, tt := range tests {
			t.Run(mode.String()+"/"+tt.name, func(t *testing.T) {
				eng, s := newLog(t, mode, 3, 3, 3, entsAt(4, 4, 5))
				b := eng.NewBatch()
				defer b.Close()
				must(t, s.Append(b, tt.entries))
				// The in-memory picture is updated at once.
				if li, _ := s.LastIndex(); li != 3+uint64(len(tt.want)) {
					t.Fatalf("LastIndex before commit = %d, want %d", li, 3+len(tt.want))
				}
				must(t, b.Commit(true))
				wantLog(t, s, 3, 3, tt.want)

				// A fresh Load sees the same log, and the disk holds
				// exactly its keys: the old tail beyond the new last
				// entry is gone, nothing below the truncation point was
				// written.
				s2, err := Load(eng, s.Shard(), 0)
				must(t, err)
				wantLog(t, s2, 3, 3, tt.want)
				if got := diskLog(t, eng, s.Shard()); !slices.Equal(got, indexRange(4, 3+uint64(len(tt.want)))) {
					t.Fatalf("log keys on disk = %v, want 4..%d", got, 3+len(tt.want))
				}
			})
		}
	}
}

func TestAppendGapIsError(t *testing.T) {
	for _, mode := range allModes {
		eng, s := newLog(t, mode, 3, 3, 3, entsAt(4, 4, 5))
		b := eng.NewBatch()
		if err := s.Append(b, entsAt(7, 5)); err == nil {
			t.Fatalf("%v: Append at 7 after last index 5 succeeded", mode)
		}
		if !b.Empty() {
			t.Fatalf("%v: a failed Append staged writes", mode)
		}
		b.Close()
		wantLog(t, s, 3, 3, entsAt(4, 4, 5))
	}
	// A gap right after a truncation that emptied the log.
	eng, s := newLog(t, fromCache, 3, 3, 5, entsAt(4, 4, 5))
	b := eng.NewBatch()
	must(t, s.Truncate(b, 5))
	must(t, b.Commit(true))
	if err := s.Append(b, entsAt(7, 6)); err == nil {
		t.Fatal("Append at 7 after an empty log truncated at 5 succeeded")
	}
	appendCommit(t, eng, s, entsAt(6, 6)...)
	wantLog(t, s, 5, 5, entsAt(6, 6))
}

func TestAppendPartlyBelowTruncated(t *testing.T) {
	for _, mode := range allModes {
		t.Run(mode.String(), func(t *testing.T) {
			eng, s := newLog(t, mode, 5, 5, 5, entsAt(6, 5, 5, 6, 6, 7))
			b := eng.NewBatch()
			must(t, s.SetApplied(b, &shoalpb.AppliedState{Index: 8, Term: 6}))
			must(t, s.Truncate(b, 8))
			must(t, b.Commit(true))
			b.Close()
			wantLog(t, s, 8, 6, entsAt(9, 6, 7))

			// A leader re-sends 6..12: 6..8 are below the truncation, 9
			// matches, 10 conflicts (term 8), 11 and 12 are new.
			appendCommit(t, eng, s, entsAt(6, 5, 5, 6, 6, 8, 8, 8)...)
			want := entsAt(9, 6, 8, 8, 8)
			wantLog(t, s, 8, 6, want)
			if got := diskLog(t, eng, s.Shard()); !slices.Equal(got, indexRange(9, 12)) {
				t.Fatalf("log keys on disk = %v, want 9..12 (nothing at or below the truncation)", got)
			}
			s2, err := Load(eng, s.Shard(), 0)
			must(t, err)
			wantLog(t, s2, 8, 6, want)
		})
	}
}

func TestTruncate(t *testing.T) {
	log := entsAt(4, 4, 4, 5, 5, 6) // 4..8
	tests := []struct {
		name     string
		applied  uint64
		index    uint64
		wantErr  bool
		noop     bool
		ti, tt   uint64
		wantEnts []*raftpb.Entry
	}{
		{"beyond applied", 6, 7, true, false, 3, 3, log},
		{"beyond last", 8, 9, true, false, 3, 3, log},
		{"below truncated", 6, 2, false, true, 3, 3, log},
		{"at truncated", 6, 3, false, true, 3, 3, log},
		{"first entry", 6, 4, false, false, 4, 4, log[1:]},
		{"at applied", 6, 6, false, false, 6, 5, log[3:]},
		{"middle, cached or not", 8, 7, false, false, 7, 5, log[4:]},
		{"whole log", 8, 8, false, false, 8, 6, nil},
	}
	for _, mode := range allModes {
		for _, tt := range tests {
			t.Run(mode.String()+"/"+tt.name, func(t *testing.T) {
				eng, s := newLog(t, mode, 3, 3, tt.applied, log)
				b := eng.NewBatch()
				defer b.Close()
				err := s.Truncate(b, tt.index)
				if (err != nil) != tt.wantErr {
					t.Fatalf("Truncate(%d) with applied %d = %v, want error %v", tt.index, tt.applied, err, tt.wantErr)
				}
				if (tt.wantErr || tt.noop) && !b.Empty() {
					t.Fatalf("Truncate(%d) staged writes but should not have", tt.index)
				}
				must(t, b.Commit(true))
				wantLog(t, s, tt.ti, tt.tt, tt.wantEnts)
				if tt.ti > 3 {
					if _, err := s.Term(tt.ti - 1); !errors.Is(err, raft.ErrCompacted) {
						t.Fatalf("Term(%d) below the truncation = %v, want ErrCompacted", tt.ti-1, err)
					}
					if _, err := s.Entries(tt.ti, 9, noLimit); !errors.Is(err, raft.ErrCompacted) {
						t.Fatalf("Entries(%d, 9) = %v, want ErrCompacted", tt.ti, err)
					}
				}
				if ts := s.Truncated(); ts.GetIndex() != tt.ti || ts.GetTerm() != tt.tt {
					t.Fatalf("Truncated() = %v, want %d/%d", ts, tt.ti, tt.tt)
				}
				// On disk, after a fresh Load.
				s2, err := Load(eng, s.Shard(), 0)
				must(t, err)
				wantLog(t, s2, tt.ti, tt.tt, tt.wantEnts)
				if got, want := diskLog(t, eng, s.Shard()), indexRange(tt.ti+1, 8); !slices.Equal(got, want) {
					t.Fatalf("log keys on disk = %v, want %v", got, want)
				}
				// The log continues after the truncation.
				appendCommit(t, eng, s2, ent(9, 6))
				wantLog(t, s2, tt.ti, tt.tt, append(slices.Clone(tt.wantEnts), ent(9, 6)))
			})
		}
	}
}

func TestInitialState(t *testing.T) {
	fs := vfs.NewMem()
	eng := openEngine(t, fs)
	const shard = 11
	cs := &raftpb.ConfState{Voters: []uint64{1, 2, 3}, Learners: []uint64{4}}
	b := eng.NewBatch()
	must(t, Bootstrap(b, shard, cs))
	must(t, b.Commit(true))
	b.Close()
	s, err := Load(eng, shard, 0)
	must(t, err)

	hs, gotCS, err := s.InitialState()
	must(t, err)
	if hs.GetTerm() != InitialIndex || hs.GetCommit() != InitialIndex || hs.GetVote() != 0 {
		t.Fatalf("bootstrap HardState = %v, want term and commit %d", hs, InitialIndex)
	}
	if !proto.Equal(gotCS, cs) {
		t.Fatalf("bootstrap ConfState = %v, want %v", gotCS, cs)
	}
	if a := s.Applied(); a.GetIndex() != InitialIndex || a.GetTerm() != InitialIndex || !proto.Equal(a.GetConfState(), cs) {
		t.Fatalf("bootstrap applied state = %v", a)
	}
	// The results are copies.
	hs.Commit = new(uint64(99))
	gotCS.Voters[0] = 99
	if hs2, cs2, _ := s.InitialState(); hs2.GetCommit() != InitialIndex || cs2.GetVoters()[0] != 1 {
		t.Fatalf("mutating InitialState's results changed the Storage: %v, %v", hs2, cs2)
	}

	// HardState round trip, through a reopen.
	appendCommit(t, eng, s, entsAt(6, 6, 6, 7, 7, 7)...)
	want := &raftpb.HardState{Term: new(uint64(7)), Vote: new(uint64(2)), Commit: new(uint64(8))}
	writeHardState(t, eng, s, want)
	if got := s.HardState(); !proto.Equal(got, want) {
		t.Fatalf("HardState() = %v, want %v", got, want)
	}
	*want.Commit = 1 // SetHardState keeps its own copy
	if got := s.HardState(); got.GetCommit() != 8 {
		t.Fatalf("mutating the HardState passed to SetHardState changed the Storage: %v", got)
	}
	*want.Commit = 8
	must(t, eng.Close())
	eng = openEngine(t, fs)
	s, err = Load(eng, shard, 0)
	must(t, err)
	if hs, _, _ := s.InitialState(); !proto.Equal(hs, want) {
		t.Fatalf("InitialState HardState after reopen = %v, want %v", hs, want)
	}

	// The applied state is ahead of the HardState's commit (the apply batch
	// reached the disk, the HardState recording the commit did not): the
	// commit reported is the applied index; term and vote are kept.
	cs2 := &raftpb.ConfState{Voters: []uint64{1, 2, 3, 4}}
	b = eng.NewBatch()
	must(t, s.SetApplied(b, &shoalpb.AppliedState{Index: 10, Term: 7, ConfState: cs2}))
	must(t, b.Commit(false))
	b.Close()
	must(t, eng.Close())
	eng = openEngine(t, fs)
	s, err = Load(eng, shard, 0)
	must(t, err)
	hs, gotCS, err = s.InitialState()
	must(t, err)
	if hs.GetCommit() != 10 || hs.GetTerm() != 7 || hs.GetVote() != 2 {
		t.Fatalf("InitialState HardState = %v, want term 7 vote 2 commit 10", hs)
	}
	if !proto.Equal(gotCS, cs2) {
		t.Fatalf("InitialState ConfState = %v, want the applied state's %v", gotCS, cs2)
	}
	if s.HardState().GetCommit() != 8 {
		t.Fatalf("HardState() = %v: the stored HardState must not change", s.HardState())
	}
	if s.AppliedIndex() != 10 {
		t.Fatalf("AppliedIndex() = %d, want 10", s.AppliedIndex())
	}

	// An applied state without a ConfState yields an empty, non-nil one.
	b = eng.NewBatch()
	must(t, s.SetApplied(b, &shoalpb.AppliedState{Index: 10, Term: 7}))
	must(t, b.Commit(false))
	b.Close()
	if _, cs, err := s.InitialState(); err != nil || cs == nil || len(cs.GetVoters()) != 0 {
		t.Fatalf("InitialState ConfState = %v, %v; want empty, non-nil", cs, err)
	}
}

func TestLoadRejectsAppliedAheadOfLog(t *testing.T) {
	eng := openEngine(t, vfs.NewMem())
	b := eng.NewBatch()
	must(t, b.SetProto(keys.TruncatedStateKey(1), &shoalpb.TruncatedState{Index: 5, Term: 5}))
	must(t, b.SetProto(keys.AppliedStateKey(1), &shoalpb.AppliedState{Index: 7, Term: 5}))
	v, _ := proto.Marshal(ent(6, 5))
	must(t, b.Set(keys.RaftLogKey(1, 6), v, nil))
	must(t, b.Commit(true))
	if _, err := Load(eng, 1, 0); err == nil {
		t.Fatal("Load with applied index 7 and last index 6 succeeded")
	}
	// Once the entry is there, it loads.
	v, _ = proto.Marshal(ent(7, 5))
	must(t, eng.Write(keys.RaftLogKey(1, 7), v))
	if _, err := Load(eng, 1, 0); err != nil {
		t.Fatalf("Load with applied == last: %v", err)
	}
}

// TestLoadRejectsAppliedTermMismatch: a crash that keeps an apply batch but
// not the log batch that overwrote the uncommitted tail leaves an applied
// state naming an entry the log does not hold. Load refuses it.
func TestLoadRejectsAppliedTermMismatch(t *testing.T) {
	tests := []struct {
		name    string
		applied *shoalpb.AppliedState
		ok      bool
	}{
		{"matches entry", &shoalpb.AppliedState{Index: 7, Term: 6}, true},
		{"matches truncation point", &shoalpb.AppliedState{Index: 5, Term: 5}, true},
		{"matches last entry", &shoalpb.AppliedState{Index: 8, Term: 6}, true},
		{"entry of another term", &shoalpb.AppliedState{Index: 7, Term: 7}, false},
		{"older term", &shoalpb.AppliedState{Index: 8, Term: 5}, false},
		{"truncation point of another term", &shoalpb.AppliedState{Index: 5, Term: 4}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			eng := openEngine(t, vfs.NewMem())
			seedState(t, eng, 1, 5, 5, 5, entsAt(6, 5, 6, 6), 0)
			must(t, eng.Write(keys.AppliedStateKey(1), mustMarshal(t, tt.applied)))
			_, err := Load(eng, 1, 0)
			if (err == nil) != tt.ok {
				t.Fatalf("Load with applied state %v over log 6/5 7/6 8/6 = %v, want ok=%v", tt.applied, err, tt.ok)
			}
		})
	}
}

func mustMarshal(t *testing.T, m proto.Message) []byte {
	t.Helper()
	b, err := proto.Marshal(m)
	must(t, err)
	return b
}

func TestLoadCorruptState(t *testing.T) {
	for _, key := range [][]byte{keys.TruncatedStateKey(1), keys.HardStateKey(1), keys.AppliedStateKey(1), keys.RaftLogKey(1, 6)} {
		eng := openEngine(t, vfs.NewMem())
		b := eng.NewBatch()
		must(t, Bootstrap(b, 1, &raftpb.ConfState{Voters: []uint64{1}}))
		must(t, b.Commit(true))
		s, err := Load(eng, 1, 0)
		must(t, err)
		appendCommit(t, eng, s, ent(6, 5))
		must(t, eng.Write(key, []byte{0xff, 0xff, 0xff}))
		if _, err := Load(eng, 1, 0); err == nil {
			t.Errorf("Load with an undecodable %q succeeded", key)
		}
	}
}

// TestShardsIsolated checks that two replicas sharing one engine do not see
// or disturb each other's records.
func TestShardsIsolated(t *testing.T) {
	eng := openEngine(t, vfs.NewMem())
	shards := []uint64{0, 1, 2, keys.MaxShardID}
	logs := map[uint64]*Storage{}
	b := eng.NewBatch()
	for _, sh := range shards {
		must(t, Bootstrap(b, sh, &raftpb.ConfState{Voters: []uint64{sh + 1}}))
	}
	must(t, b.Commit(true))
	b.Close()
	for _, sh := range shards {
		s, err := Load(eng, sh, 0)
		must(t, err)
		logs[sh] = s
	}
	// Shard 1 gets a longer log (6..11), truncated; its neighbours get
	// short ones.
	appendCommit(t, eng, logs[1], entsAt(6, 6, 6, 6, 6, 6, 6)...)
	appendCommit(t, eng, logs[0], entsAt(6, 9)...)
	appendCommit(t, eng, logs[2], entsAt(6, 8, 8)...)
	appendCommit(t, eng, logs[keys.MaxShardID], entsAt(6, 7, 7, 7)...)
	b = eng.NewBatch()
	must(t, logs[1].SetApplied(b, &shoalpb.AppliedState{Index: 9, Term: 6, ConfState: &raftpb.ConfState{Voters: []uint64{2}}}))
	must(t, logs[1].Truncate(b, 9))
	must(t, logs[1].SetHardState(b, &raftpb.HardState{Term: new(uint64(6)), Commit: new(uint64(10))}))
	// Shard 2 overwrites its tail with a shorter one.
	must(t, logs[2].Append(b, entsAt(7, 9)))
	must(t, b.Commit(true))
	b.Close()

	want := map[uint64]struct {
		ti, tt uint64
		ents   []*raftpb.Entry
	}{
		0:               {5, 5, entsAt(6, 9)},
		1:               {9, 6, entsAt(10, 6, 6)},
		2:               {5, 5, entsAt(6, 8, 9)},
		keys.MaxShardID: {5, 5, entsAt(6, 7, 7, 7)},
	}
	for _, sh := range shards {
		s, err := Load(eng, sh, 0)
		must(t, err)
		w := want[sh]
		wantLog(t, s, w.ti, w.tt, w.ents)
		if got, wantIdx := diskLog(t, eng, sh), indexRange(w.ti+1, w.ti+uint64(len(w.ents))); !slices.Equal(got, wantIdx) {
			t.Errorf("shard %d: log keys on disk %v, want %v", sh, got, wantIdx)
		}
		if c := s.HardState().GetCommit(); (sh == 1) != (c == 10) {
			t.Errorf("shard %d: HardState commit %d", sh, c)
		}
		if _, cs, _ := s.InitialState(); !slices.Equal(cs.GetVoters(), []uint64{sh + 1}) {
			t.Errorf("shard %d: ConfState %v", sh, cs)
		}
	}
}

// A HardState whose commit index alone moved need not be written: the commit
// index lives in memory until the next term or vote change writes it, and
// a reopened Storage reports the commit index from the applied state.
func TestCommitOnlyHardStateNotWritten(t *testing.T) {
	fs := vfs.NewMem()
	eng := openEngine(t, fs)
	const shard = 12
	b := eng.NewBatch()
	must(t, Bootstrap(b, shard, &raftpb.ConfState{Voters: []uint64{1, 2, 3}}))
	must(t, b.Commit(true))
	b.Close()
	s, err := Load(eng, shard, 0)
	must(t, err)
	appendCommit(t, eng, s, entsAt(6, 6, 6, 7, 7, 7)...)
	written := &raftpb.HardState{Term: new(uint64(7)), Vote: new(uint64(2)), Commit: new(uint64(8))}
	writeHardState(t, eng, s, written)

	// A new term or vote must be written: CommitOnly says so and changes
	// nothing, not even the commit index it carries.
	for _, hs := range []*raftpb.HardState{
		{Term: new(uint64(8)), Vote: new(uint64(2)), Commit: new(uint64(11))},
		{Term: new(uint64(7)), Vote: new(uint64(3)), Commit: new(uint64(11))},
		{Term: new(uint64(8)), Commit: new(uint64(11))},
	} {
		if s.CommitOnly(hs) {
			t.Errorf("CommitOnly(%v) after writing %v = true, want false", hs, written)
		}
	}
	if hs := s.HardState(); !proto.Equal(hs, written) {
		t.Fatalf("HardState() after refused CommitOnly calls = %v, want %v", hs, written)
	}
	// The same term and vote: only the commit index moved, kept in memory.
	for _, commit := range []uint64{8, 11} {
		if !s.CommitOnly(&raftpb.HardState{Term: new(uint64(7)), Vote: new(uint64(2)), Commit: new(commit)}) {
			t.Fatalf("CommitOnly(term 7, vote 2, commit %d) = false, want true", commit)
		}
	}
	if hs := s.HardState(); hs.GetCommit() != 11 || hs.GetTerm() != 7 || hs.GetVote() != 2 {
		t.Fatalf("HardState() after CommitOnly(commit 11) = %v, want term 7 vote 2 commit 11", hs)
	}
	if hs, _, _ := s.InitialState(); hs.GetCommit() != 11 {
		t.Fatalf("InitialState commit after CommitOnly(commit 11) = %d", hs.GetCommit())
	}
	// Entries up to 10 applied (unsynced, like an apply batch); then the
	// node restarts: the disk has commit 8, and Raft is told 10, the
	// applied index.
	b = eng.NewBatch()
	must(t, s.SetApplied(b, &shoalpb.AppliedState{Index: 10, Term: 7, ConfState: &raftpb.ConfState{Voters: []uint64{1, 2, 3}}}))
	must(t, b.Commit(false))
	b.Close()
	must(t, eng.Close())
	eng = openEngine(t, fs)
	s, err = Load(eng, shard, 0)
	must(t, err)
	if hs := s.HardState(); !proto.Equal(hs, written) {
		t.Fatalf("HardState on disk = %v, want the one written, %v", hs, written)
	}
	if hs, _, _ := s.InitialState(); hs.GetCommit() != 10 || hs.GetTerm() != 7 || hs.GetVote() != 2 {
		t.Fatalf("InitialState after restart = %v, want term 7 vote 2 commit 10 (the applied index)", hs)
	}
}
