package kv

import (
	"maps"
	"slices"
	"strconv"
	"testing"

	"google.golang.org/protobuf/proto"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/internal/keys"
	"github.com/shoaldb/shoal/internal/storage"
)

func inSession(id, seq, ackedBelow uint64, c *shoalpb.KVCommand) *shoalpb.KVCommand {
	c.SessionId, c.Seq, c.AckedBelow = id, seq, ackedBelow
	return c
}

func (h *harness) session(shard, id uint64) (*shoalpb.SessionRecord, bool) {
	h.t.Helper()
	s := &shoalpb.SessionRecord{}
	ok, err := storage.GetProto(h.eng.Reader(), keys.SessionKey(shard, id), s)
	if err != nil {
		h.t.Fatal(err)
	}
	return s, ok
}

func TestSessionRetryAppliesOnce(t *testing.T) {
	h := newHarness(t, allSlots())
	first := h.one(inSession(7, 0, 0, cmdAt(t0, incrOp("n", 1))))
	// The retry may even land in a later batch on a later leader's clock.
	retry := h.one(inSession(7, 0, 0, cmdAt(t0+100, incrOp("n", 1))))
	if !proto.Equal(first, retry) || first.Results[0].IntValue != 1 {
		t.Fatalf("first %v, retry %v; want the same result, 1", first, retry)
	}
	// Retries in one batch with the original are also applied once.
	res := h.apply(
		inSession(7, 1, 0, cmdAt(t0, incrOp("n", 1))),
		inSession(7, 1, 0, cmdAt(t0, incrOp("n", 1))),
	)
	if res[0].Results[0].IntValue != 2 || !proto.Equal(res[0], res[1]) {
		t.Fatalf("seq 1 results %v", res)
	}
	if data := dumpData(t, h.eng.Reader()); data["n"].value != "2" {
		t.Fatalf("n = %v, want 2: a retry applied twice", data["n"])
	}
	// Another session's seq 0 is a different command.
	if r := h.one(inSession(8, 0, 0, cmdAt(t0, incrOp("n", 1)))); r.Results[0].IntValue != 3 {
		t.Fatalf("session 8: %v", r)
	}
	s, ok := h.session(1, 7)
	if !ok || s.AckedBelow != 0 || s.LastActiveMs != t0 || !slices.Equal(slices.Sorted(maps.Keys(s.Results)), []uint64{0, 1}) {
		t.Fatalf("session record %v", s)
	}
}

func TestSessionAcknowledgedResultsAreDropped(t *testing.T) {
	h := newHarness(t, allSlots())
	for seq := range uint64(3) {
		h.one(inSession(7, seq, 0, cmdAt(t0, incrOp("n", 1))))
	}
	r := h.one(inSession(7, 3, 2, cmdAt(t0+5, incrOp("n", 1))))
	if r.Results[0].IntValue != 4 {
		t.Fatalf("seq 3: %v", r)
	}
	s, _ := h.session(1, 7)
	if s.AckedBelow != 2 || s.LastActiveMs != t0+5 || !slices.Equal(slices.Sorted(maps.Keys(s.Results)), []uint64{2, 3}) {
		t.Fatalf("session record %v, want acked_below 2 and results {2, 3}", s)
	}
	for _, seq := range []uint64{0, 1} {
		r := h.one(inSession(7, seq, 0, cmdAt(t0, incrOp("n", 1))))
		if r.Error != errStale {
			t.Fatalf("retry of acknowledged seq %d: %v, want STALE_SEQUENCE", seq, r)
		}
	}
	if r := h.one(inSession(7, 2, 0, cmdAt(t0, incrOp("n", 1)))); r.Results[0].IntValue != 3 {
		t.Fatalf("retry of seq 2: %v, want its cached 3", r)
	}
	// A lower acked_below does not lower the mark.
	if s, _ := h.session(1, 7); s.AckedBelow != 2 {
		t.Fatalf("acked_below went down to %d", s.AckedBelow)
	}
	if data := dumpData(t, h.eng.Reader()); data["n"].value != "4" {
		t.Fatalf("n = %v, want 4", data["n"])
	}
}

func TestSessionCachesFailures(t *testing.T) {
	h := newHarness(t, allSlots())
	h.one(cmdAt(t0, putOp("n", "text")))
	first := h.one(inSession(7, 0, 0, cmdAt(t0, incrOp("n", 1))))
	if first.Error != errNotInteger {
		t.Fatalf("first: %v", first)
	}
	h.one(cmdAt(t0, putOp("n", "5")))
	// The retry gets the first outcome; it is not applied against the new
	// value.
	if r := h.one(inSession(7, 0, 0, cmdAt(t0, incrOp("n", 1)))); !proto.Equal(r, first) {
		t.Fatalf("retry: %v, want %v", r, first)
	}
	if data := dumpData(t, h.eng.Reader()); data["n"].value != "5" {
		t.Fatalf("n = %v, want 5", data["n"])
	}
}

func TestSessionResultsAreBounded(t *testing.T) {
	h := newHarness(t, allSlots())
	const n = maxSessionResults + 6
	cmds := make([]*shoalpb.KVCommand, n)
	for i := range cmds {
		cmds[i] = inSession(7, uint64(i), 0, cmdAt(t0, incrOp("n", 1)))
	}
	h.apply(cmds...)
	s, _ := h.session(1, 7)
	if len(s.Results) != maxSessionResults || s.AckedBelow != n-maxSessionResults {
		t.Fatalf("%d results, acked_below %d; want %d, %d", len(s.Results), s.AckedBelow, maxSessionResults, n-maxSessionResults)
	}
	if r := h.one(inSession(7, 0, 0, cmdAt(t0, incrOp("n", 1)))); r.Error != errStale {
		t.Fatalf("retry of a dropped result: %v, want STALE_SEQUENCE (never a second apply)", r)
	}
	if data := dumpData(t, h.eng.Reader()); data["n"].value != strconv.Itoa(n) {
		t.Fatalf("n = %v, want %d", data["n"], n)
	}
}

func TestDeleteExpiredRemovesIdleSessions(t *testing.T) {
	h := newHarness(t, allSlots())
	h.one(inSession(1, 0, 0, cmdAt(t0, putOp("a", "1"))))
	h.one(inSession(2, 0, 0, cmdAt(t0+10, putOp("b", "1"))))
	op := &shoalpb.DeleteExpiredOp{IdleSessions: []uint64{1, 2, 3}, SessionsIdleBeforeMs: t0 + 10}
	r := h.one(cmdAt(t0+20, &shoalpb.KVOp{Op: &shoalpb.KVOp_DeleteExpired{DeleteExpired: op}}))
	if !proto.Equal(r, ok(opRes(true, false, "", 0))) {
		t.Fatalf("result %v", r)
	}
	if _, ok := h.session(1, 1); ok {
		t.Fatal("idle session 1 survived")
	}
	if _, ok := h.session(1, 2); !ok {
		t.Fatal("session 2, active since the cutoff, was removed")
	}
	// Removing a session forgets its results: the same seq applies afresh.
	if r := h.one(inSession(1, 0, 0, cmdAt(t0+30, incrOp("c", 1)))); r.Error != 0 || r.Results[0].IntValue != 1 {
		t.Fatalf("after removal: %v", r)
	}
}
