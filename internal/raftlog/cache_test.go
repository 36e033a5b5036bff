package raftlog

import (
	"fmt"
	"slices"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"go.etcd.io/raft/v3/raftpb"

	"github.com/shoaldb/shoal/internal/storage"
)

// bootstrapped returns a Storage of shard 1, bootstrapped with one voter, on
// a fresh in-memory engine, with the given cache bound.
func bootstrapped(t *testing.T, fs vfs.FS, cacheBytes int) (*storage.Engine, *Storage) {
	t.Helper()
	eng := openEngine(t, fs)
	b := eng.NewBatch()
	defer b.Close()
	must(t, Bootstrap(b, 1, &raftpb.ConfState{Voters: []uint64{1}}))
	must(t, b.Commit(true))
	s, err := Load(eng, 1, cacheBytes)
	must(t, err)
	return eng, s
}

// limitSize is raft's rule for maxSize: at least one entry, then as many as
// fit.
func limitSize(ents []*raftpb.Entry, maxSize uint64) []*raftpb.Entry {
	if len(ents) == 0 {
		return ents
	}
	size := sizeOf(ents[0])
	n := 1
	for ; n < len(ents); n++ {
		size += sizeOf(ents[n])
		if size > maxSize {
			break
		}
	}
	return ents[:n]
}

func (s *Storage) cacheFirst() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.mu.cache.first()
}

// TestEntriesAcrossCacheBoundary reads every range of a log whose older part
// is only in Pebble and whose newer part is cached, and checks where each
// entry came from: cached entries are the very values appended, Pebble's are
// fresh decodes.
func TestEntriesAcrossCacheBoundary(t *testing.T) {
	entSize := int(sizeOf(ent(10, 5)))
	eng, s := bootstrapped(t, vfs.NewMem(), 3*entSize)
	var all []*raftpb.Entry // all[i] has index 6+i
	for i := uint64(6); i <= 25; {
		n := min(1+i%3, 26-i)
		batch := entsAt(i, slices.Repeat([]uint64{5}, int(n))...)
		appendCommit(t, eng, s, batch...)
		all = append(all, batch...)
		i += n
		checkCache(t, s)
	}
	cf := s.cacheFirst()
	if n, _ := s.CacheStats(); n != 3 || cf != 23 {
		t.Fatalf("cache holds %d entries from %d, want 3 from 23", n, cf)
	}
	maxSizes := []uint64{noLimit, 0, uint64(entSize), uint64(3*entSize) - 1, uint64(5 * entSize)}
	for lo := uint64(6); lo <= 25; lo++ {
		for hi := lo + 1; hi <= 26; hi++ {
			for _, maxSize := range maxSizes {
				got, err := s.Entries(lo, hi, maxSize)
				if err != nil {
					t.Fatalf("Entries(%d, %d, %d): %v", lo, hi, maxSize, err)
				}
				want := limitSize(all[lo-6:hi-6], maxSize)
				assertEntries(t, got, want)
				for j, e := range got {
					idx := lo + uint64(j)
					if cached := e == all[idx-6]; cached != (idx >= cf) {
						t.Fatalf("Entries(%d, %d): entry %d from the cache = %v, but the cache starts at %d", lo, hi, idx, cached, cf)
					}
				}
			}
		}
	}
	// Terms come from either place too.
	for i := uint64(6); i <= 25; i++ {
		if term, err := s.Term(i); err != nil || term != 5 {
			t.Fatalf("Term(%d) = %d, %v", i, term, err)
		}
	}

	// After Load the cache is empty and everything comes from Pebble.
	s2, err := Load(eng, 1, 3*entSize)
	must(t, err)
	if n, b := s2.CacheStats(); n != 0 || b != 0 {
		t.Fatalf("cache after Load holds %d entries, %d bytes", n, b)
	}
	got, err := s2.Entries(6, 26, noLimit)
	must(t, err)
	assertEntries(t, got, all)
	for _, e := range got {
		if slices.Contains(all, e) {
			t.Fatalf("entry %d after Load is a cached value", e.GetIndex())
		}
	}
	// An append after Load starts a new cache at the end of the log.
	appendCommit(t, eng, s2, ent(26, 6))
	got, err = s2.Entries(24, 27, noLimit)
	must(t, err)
	assertEntries(t, got, append(slices.Clone(all[18:]), ent(26, 6)))
	if s2.cacheFirst() != 26 {
		t.Fatalf("cache after Load and one append starts at %d, want 26", s2.cacheFirst())
	}
}

// TestCacheOverwrite overwrites the log at positions inside, at the start
// of, and before the cached part.
func TestCacheOverwrite(t *testing.T) {
	entSize := int(sizeOf(ent(10, 5)))
	base := entsAt(6, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5) // 6..15; the cache holds 11..15
	tests := []struct {
		name  string
		start uint64
		terms []uint64
	}{
		{"last entry", 15, []uint64{6}},
		{"inside, shorter", 13, []uint64{6}},
		{"inside, longer", 12, []uint64{6, 6, 6, 6, 6, 6, 6}},
		{"at cache start", 11, []uint64{6, 6}},
		{"before cache, shorter", 8, []uint64{6}},
		{"before cache, into cache", 9, []uint64{6, 6, 6, 6}},
		{"before cache, beyond old end", 7, slices.Repeat([]uint64{7}, 12)},
		{"whole log", 6, []uint64{6}},
		{"append", 16, []uint64{5, 5}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			eng, s := bootstrapped(t, vfs.NewMem(), 5*entSize)
			appendCommit(t, eng, s, base...)
			if cf := s.cacheFirst(); cf != 11 {
				t.Fatalf("cache starts at %d, want 11", cf)
			}
			repl := entsAt(tt.start, tt.terms...)
			appendCommit(t, eng, s, repl...)
			want := append(slices.Clone(base[:tt.start-6]), repl...)
			wantLog(t, s, 5, 5, want)
			// Every sub-range, to cross whatever boundary the cache has now.
			last := want[len(want)-1].GetIndex()
			for lo := uint64(6); lo <= last; lo++ {
				got, err := s.Entries(lo, last+1, noLimit)
				must(t, err)
				assertEntries(t, got, want[lo-6:])
			}
			s2, err := Load(eng, 1, 5*entSize)
			must(t, err)
			wantLog(t, s2, 5, 5, want)
			if got := diskLog(t, eng, 1); !slices.Equal(got, indexRange(6, last)) {
				t.Fatalf("log keys on disk = %v, want 6..%d", got, last)
			}
		})
	}
}

// TestEntriesResultIsCallersToAppend checks the raft.Storage rule that the
// caller owns the returned slice and may append to it.
func TestEntriesResultIsCallersToAppend(t *testing.T) {
	for _, cacheBytes := range []int{1 << 20, 1} {
		t.Run(fmt.Sprint("cache=", cacheBytes), func(t *testing.T) {
			eng, s := bootstrapped(t, vfs.NewMem(), cacheBytes)
			want := entsAt(6, 5, 5, 6, 6, 6, 7)
			appendCommit(t, eng, s, want...)
			for lo := uint64(6); lo <= 11; lo++ {
				for hi := lo + 1; hi <= 11; hi++ {
					got, err := s.Entries(lo, hi, noLimit)
					must(t, err)
					// Append into whatever capacity the result has, and
					// overwrite its elements.
					got = append(got, ent(hi, 99), ent(hi+1, 99))
					got[0] = ent(lo, 98)
					all, err := s.Entries(6, 12, noLimit)
					must(t, err)
					assertEntries(t, all, want)
				}
			}
			checkCache(t, s)
		})
	}
}

func TestCacheEvictionAndTruncate(t *testing.T) {
	eng, s := bootstrapped(t, vfs.NewMem(), 100)
	small := entsAt(6, 5, 5, 5)
	appendCommit(t, eng, s, small...)
	checkCache(t, s)
	// An entry bigger than the bound evicts everything else but stays.
	big := &raftpb.Entry{Index: new(uint64(9)), Term: new(uint64(5)), Data: make([]byte, 500)}
	appendCommit(t, eng, s, big)
	if n, b := s.CacheStats(); n != 1 || b != int(sizeOf(big)) {
		t.Fatalf("cache = %d entries, %d bytes; want only the big entry (%d bytes)", n, b, sizeOf(big))
	}
	checkCache(t, s)
	appendCommit(t, eng, s, entsAt(10, 5)...)
	if n, _ := s.CacheStats(); n != 1 || s.cacheFirst() != 10 {
		t.Fatalf("cache = %d entries from %d; want only entry 10", n, s.cacheFirst())
	}
	wantLog(t, s, 5, 5, append(append(slices.Clone(small), big), ent(10, 5)))

	// Truncating drops the cached front; truncating everything empties it.
	eng, s = bootstrapped(t, vfs.NewMem(), 1<<20)
	appendCommit(t, eng, s, entsAt(6, 5, 5, 5, 5, 5)...)
	for _, tr := range []struct {
		index uint64
		n     int
	}{{7, 3}, {7, 3}, {9, 1}, {10, 0}} {
		b := eng.NewBatch()
		must(t, s.SetApplied(b, appliedAt(tr.index)))
		must(t, s.Truncate(b, tr.index))
		must(t, b.Commit(false))
		b.Close()
		if n, _ := s.CacheStats(); n != tr.n {
			t.Fatalf("after Truncate(%d) the cache holds %d entries, want %d", tr.index, n, tr.n)
		}
		checkCache(t, s)
	}
	wantLog(t, s, 10, 5, nil)
	appendCommit(t, eng, s, ent(11, 6))
	wantLog(t, s, 10, 5, entsAt(11, 6))
}
