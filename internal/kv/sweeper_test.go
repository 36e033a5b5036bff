package kv

import (
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"testing"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/internal/keys"
)

// keysInSlots returns n distinct keys for each of slots, found by search.
func keysInSlots(n int, slots ...uint16) map[uint16][]string {
	out := map[uint16][]string{}
	for _, s := range slots {
		for i := 0; len(out[s]) < n; i++ {
			// A hash tag pins the slot; search for a tag that hashes to s.
			tag := fmt.Sprint(i)
			if keys.Slot([]byte(tag)) != s {
				continue
			}
			for j := range n {
				out[s] = append(out[s], fmt.Sprintf("{%s}k%d", tag, j))
			}
		}
	}
	return out
}

func TestSweeperCollectsExpiredKeysInOrder(t *testing.T) {
	h := newHarness(t, allSlots())
	// The shard under sweep owns [100, 300); slot 50 belongs to another.
	desc := &shoalpb.ShardDescriptor{ShardId: 1, StartSlot: 100, EndSlot: 300}
	ks := keysInSlots(3, 50, 100, 150, 299)
	h.one(cmdAt(t0,
		putOp(ks[50][0], "v", withTTLAt(t0+1)), // other shard
		putOp(ks[100][0], "v", withTTLAt(t0+1)),
		putOp(ks[100][1], "v", withTTLAt(t0+5)),
		putOp(ks[100][2], "v", withTTLAt(t0+100)), // not yet: the scan skips to slot 150
		putOp(ks[150][0], "v", withTTLAt(t0+200)), // not yet
		putOp(ks[150][1], "v"),                    // no TTL
		putOp(ks[299][0], "v", withTTLAt(t0+2)),
		putOp(ks[299][1], "v", withTTLAt(t0+6)), // not yet
	))
	warnings := &strings.Builder{}
	s := &sweeper{d: &DB{opts: Options{SweepBatch: 10}, log: slog.New(slog.NewTextHandler(warnings, nil))}}
	got, err := s.expiredKeys(h.eng.Reader(), desc, t0+5)
	if err != nil {
		t.Fatal(err)
	}
	want := []indexEntry{{ks[100][0], t0 + 1}, {ks[100][1], t0 + 5}, {ks[299][0], t0 + 2}}
	if !slices.Equal(entries(got), want) {
		t.Fatalf("collected %v, want %v", entries(got), want)
	}
	// The batch limit cuts the list in index order.
	s.d.opts.SweepBatch = 2
	got, err = s.expiredKeys(h.eng.Reader(), desc, t0+5)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(entries(got), want[:2]) {
		t.Fatalf("collected %v with a limit of 2, want %v", entries(got), want[:2])
	}
	if warnings.Len() != 0 {
		t.Fatalf("warnings: %s", warnings)
	}
	// What the sweeper collects, the state machine deletes.
	r := h.one(cmdAt(t0+5, &shoalpb.KVOp{Op: &shoalpb.KVOp_DeleteExpired{DeleteExpired: &shoalpb.DeleteExpiredOp{Keys: got}}}))
	if r.Error != 0 || r.Results[0].IntValue != 2 {
		t.Fatalf("delete: %v", r)
	}
	s.d.opts.SweepBatch = 10
	if got, _ := s.expiredKeys(h.eng.Reader(), desc, t0+5); !slices.Equal(entries(got), want[2:]) {
		t.Fatalf("after the delete: %v, want %v", entries(got), want[2:])
	}
	// An orphaned index entry (a plain SET leaves one) is listed, so that
	// the state machine removes it.
	ghost := ks[150][2]
	if err := h.eng.Write(keys.ExpiryKey(150, uint64(t0+3), []byte(ghost)), nil); err != nil {
		t.Fatal(err)
	}
	got, _ = s.expiredKeys(h.eng.Reader(), desc, t0+5)
	if want := []indexEntry{{ghost, t0 + 3}, want[2]}; !slices.Equal(entries(got), want) {
		t.Fatalf("with an orphan: %v, want %v", entries(got), want)
	}
}

func TestSweeperCollectsIdleSessions(t *testing.T) {
	h := newHarness(t, allSlots())
	for id := uint64(1); id <= 4; id++ {
		h.one(inSession(id, 0, 0, cmdAt(t0+int64(id)*10, putOp("k", "v"))))
	}
	s := &sweeper{d: &DB{opts: Options{SweepBatch: 10}, log: discardLogger()}}
	got, next, err := s.idleSessions(h.eng.Reader(), 1, t0+30, 0)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(got, []uint64{1, 2}) || next != 0 {
		t.Fatalf("idle sessions %v, go on from %d; want [1 2], done", got, next)
	}
	if got, _, _ := s.idleSessions(h.eng.Reader(), 2, t0+1000, 0); len(got) != 0 {
		t.Fatalf("another shard's sessions: %v", got)
	}
	// A full batch says where to go on from; going on from there finds
	// the rest.
	s.d.opts.SweepBatch = 2
	got, next, _ = s.idleSessions(h.eng.Reader(), 1, t0+1000, 0)
	if !slices.Equal(got, []uint64{1, 2}) || next != 3 {
		t.Fatalf("idle sessions %v, go on from %d; want [1 2], from 3", got, next)
	}
	got, next, _ = s.idleSessions(h.eng.Reader(), 1, t0+1000, next)
	if !slices.Equal(got, []uint64{3, 4}) || next != 0 {
		t.Fatalf("going on: %v, go on from %d; want [3 4], done", got, next)
	}
}

func entries(eks []*shoalpb.ExpiredKey) []indexEntry {
	var out []indexEntry
	for _, e := range eks {
		out = append(out, indexEntry{string(e.Key), e.ExpireAtMs})
	}
	return out
}
