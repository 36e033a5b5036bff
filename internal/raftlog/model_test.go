package raftlog

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"

	"github.com/cockroachdb/pebble/v2/vfs"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"github.com/shoaldb/shoal/api/shoalpb"
)

// TestMatchesMemoryStorage drives a Storage and etcd's MemoryStorage with
// the same random appends (overwrites, appends partly below the truncation
// point) and truncations, with random cache bounds and engine reopens, and
// checks after every step that the two answer every raft.Storage query the
// same way. After each reopen it also checks that the HardState, applied and
// truncated state survived.
func TestMatchesMemoryStorage(t *testing.T) {
	seeds := 24
	if testing.Short() || raceEnabled {
		seeds = 6
	}
	for seed := range uint64(seeds) {
		t.Run(fmt.Sprint("seed=", seed), func(t *testing.T) {
			rng := rand.New(rand.NewPCG(seed, 0x5eed))
			cacheBytes := func() int { return []int{1, 150, 600, 1 << 20}[rng.IntN(4)] }
			fs := vfs.NewMem()
			eng, s := bootstrapped(t, fs, cacheBytes())
			ms := raft.NewMemoryStorage()
			must(t, ms.ApplySnapshot(&raftpb.Snapshot{Metadata: &raftpb.SnapshotMetadata{
				Index: new(uint64(InitialIndex)), Term: new(uint64(InitialIndex)),
				ConfState: &raftpb.ConfState{Voters: []uint64{1}},
			}}))
			term := uint64(InitialIndex)
			hs := &raftpb.HardState{Term: new(term), Commit: new(uint64(InitialIndex))}
			for step := range 150 {
				fi, _ := ms.FirstIndex()
				li, _ := ms.LastIndex()
				var op string
				switch r := rng.IntN(10); {
				case r < 6:
					// Start anywhere from a little below the first index to
					// one past the last.
					start := max(1, fi+uint64(rng.IntN(int(li-fi)+4))-2)
					if start <= li || rng.IntN(4) == 0 {
						term++
					}
					ents := make([]*raftpb.Entry, 1+rng.IntN(6))
					for i := range ents {
						ents[i] = &raftpb.Entry{Index: new(start + uint64(i)), Term: new(term), Data: randBytes(rng, 300)}
					}
					b := eng.NewBatch()
					must(t, s.Append(b, ents))
					hs = &raftpb.HardState{Term: new(term), Vote: new(uint64(1 + rng.IntN(3))), Commit: new(fi - 1)}
					must(t, s.SetHardState(b, hs))
					must(t, b.Commit(rng.IntN(2) == 0))
					b.Close()
					must(t, ms.Append(ents))
					op = fmt.Sprintf("append %d..%d term %d", start, start+uint64(len(ents))-1, term)
				case r < 8:
					if li < fi {
						continue
					}
					// Truncate at an applied index; later appends never
					// reach at or below it, so applied <= last holds.
					idx := fi + uint64(rng.IntN(int(li-fi)+1))
					b := eng.NewBatch()
					must(t, s.SetApplied(b, &shoalpb.AppliedState{Index: idx, Term: mustTerm(t, ms, idx)}))
					must(t, s.Truncate(b, idx))
					must(t, b.Commit(false))
					b.Close()
					must(t, ms.Compact(idx))
					op = fmt.Sprintf("truncate %d", idx)
				default:
					applied, truncated := s.Applied(), s.Truncated()
					must(t, eng.Close())
					eng = openEngine(t, fs)
					var err error
					if s, err = Load(eng, 1, cacheBytes()); err != nil {
						t.Fatalf("step %d: Load after reopen: %v", step, err)
					}
					if !proto.Equal(s.HardState(), hs) || !proto.Equal(s.Applied(), applied) || !proto.Equal(s.Truncated(), truncated) {
						t.Fatalf("step %d: after reopen HardState %v applied %v truncated %v; want %v, %v, %v",
							step, s.HardState(), s.Applied(), s.Truncated(), hs, applied, truncated)
					}
					op = "reopen"
				}
				compareStorage(t, fmt.Sprintf("step %d (%s)", step, op), s, ms, rng)
			}
		})
	}
}

func mustTerm(t *testing.T, s raft.Storage, i uint64) uint64 {
	t.Helper()
	term, err := s.Term(i)
	must(t, err)
	return term
}

func randBytes(rng *rand.Rand, max int) []byte {
	b := make([]byte, rng.IntN(max+1))
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

// compareStorage checks that s answers like the reference ms.
func compareStorage(t *testing.T, when string, s *Storage, ms *raft.MemoryStorage, rng *rand.Rand) {
	t.Helper()
	fi, _ := ms.FirstIndex()
	li, _ := ms.LastIndex()
	if got, _ := s.FirstIndex(); got != fi {
		t.Fatalf("%s: FirstIndex = %d, MemoryStorage %d", when, got, fi)
	}
	if got, _ := s.LastIndex(); got != li {
		t.Fatalf("%s: LastIndex = %d, MemoryStorage %d", when, got, li)
	}
	for i := max(fi, 4) - 3; i <= li+3; i++ {
		got, err := s.Term(i)
		want, werr := ms.Term(i)
		if got != want || !sameErr(err, werr) {
			t.Fatalf("%s: Term(%d) = %d, %v; MemoryStorage %d, %v", when, i, got, err, want, werr)
		}
	}
	for range 20 {
		// hi <= last+1: MemoryStorage panics beyond it.
		lo := max(fi, 3) - 2 + uint64(rng.IntN(int(li-fi)+3))
		if lo > li {
			lo = li
		}
		hi := lo + 1 + uint64(rng.IntN(int(li-lo)+1))
		maxSize := []uint64{0, noLimit, uint64(rng.IntN(2000))}[rng.IntN(3)]
		got, err := s.Entries(lo, hi, maxSize)
		want, werr := ms.Entries(lo, hi, maxSize)
		if !sameErr(err, werr) {
			t.Fatalf("%s: Entries(%d, %d, %d) err = %v, MemoryStorage %v", when, lo, hi, maxSize, err, werr)
		}
		if len(got) != len(want) {
			t.Fatalf("%s: Entries(%d, %d, %d) = %s, MemoryStorage %s", when, lo, hi, maxSize, fmtEnts(got), fmtEnts(want))
		}
		for i := range got {
			if !proto.Equal(got[i], want[i]) {
				t.Fatalf("%s: Entries(%d, %d, %d)[%d] = %v, MemoryStorage %v", when, lo, hi, maxSize, i, got[i], want[i])
			}
		}
	}
	checkCache(t, s)
}

func sameErr(a, b error) bool {
	for _, e := range []error{raft.ErrCompacted, raft.ErrUnavailable} {
		if errors.Is(a, e) != errors.Is(b, e) {
			return false
		}
	}
	return (a == nil) == (b == nil)
}
