package kv

import (
	"bytes"
	"maps"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
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

// Results that return old values are bounded by size too: a session whose
// lowest write stays unacknowledged while others return large values keeps
// about maxSessionBytes of them, not maxSessionResults values of up to the
// value limit each (a record rewritten on every write, sent whole in
// snapshots). The older ones become stale-sequence results; the mark stays,
// so a sequence that had not arrived yet still applies.
func TestSessionResultsAreBoundedBySize(t *testing.T) {
	h := newHarness(t, allSlots())
	big := strings.Repeat("x", 1<<20)
	const n = 12
	// Sequences arrive out of order, as a session's writes from several
	// goroutines do; 0 arrives last.
	for i := 1; i < n; i++ {
		h.one(inSession(7, uint64(i), 0, cmdAt(t0, putOp("k", big+strconv.Itoa(i), returnOld))))
	}
	s, _ := h.session(1, 7)
	if size := proto.Size(s); size > maxSessionBytes+(2<<20) {
		t.Fatalf("session record of %d bytes with %d results, want about %d bytes", size, len(s.Results), maxSessionBytes)
	}
	if s.AckedBelow != 0 || len(s.Results) != n-1 || s.Results[n-1].GetError() != 0 {
		t.Fatalf("acked_below %d, %d results, last %v: want the mark at 0, every result, the last whole", s.AckedBelow, len(s.Results), s.Results[n-1].GetError())
	}
	if r := h.one(inSession(7, 1, 0, cmdAt(t0, putOp("k", "again", returnOld)))); r.Error != errStale {
		t.Fatalf("retry of a write whose result was dropped: %v, want STALE_SEQUENCE", r)
	}
	if r := h.one(inSession(7, 0, 0, cmdAt(t0, putOp("k", "zero", returnOld)))); r.Error != 0 || !r.Results[0].Applied {
		t.Fatalf("sequence 0, arriving after the others: %v, want it applied", r)
	}
	if data := dumpData(t, h.eng.Reader()); data["k"].value != "zero" {
		t.Fatalf("k = %.20q..., want zero", data["k"].value)
	}
	// The result just applied is kept whatever its size, even when it is
	// not the highest sequence.
	huge := strings.Repeat("y", maxSessionBytes+1)
	h.one(inSession(8, 0, 0, cmdAt(t0, putOp("h", huge))))
	h.one(inSession(8, 5, 0, cmdAt(t0, putOp("h", "small", returnOld))))
	if r := h.one(inSession(8, 5, 0, cmdAt(t0, putOp("h", "again", returnOld)))); r.Error != 0 || string(r.Results[0].Value) != huge {
		t.Fatalf("retry of the last write, its result over the bound: error %v, old value of %d bytes", r.Error, len(r.Results[0].GetValue()))
	}
	h.one(inSession(8, 3, 0, cmdAt(t0, putOp("h", "other", returnOld))))
	if r := h.one(inSession(8, 3, 0, cmdAt(t0, putOp("h", "again", returnOld)))); r.Error != 0 || string(r.Results[0].Value) != "small" {
		t.Fatalf("retry of the last write, below the highest: error %v, old value %.20q", r.Error, r.Results[0].GetValue())
	}
	if r := h.one(inSession(8, 5, 0, cmdAt(t0, putOp("h", "again", returnOld)))); r.Error != errStale {
		t.Fatalf("retry of the write whose large result was dropped: %v", r)
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

// TestSessionCacheMatchesUncached applies one random stream of session
// commands (retries, stale sequences, acknowledgements, failures, more
// sessions than the cache keeps and more results than it caches, idle
// session removal) to two state machines: one kept across batches, which
// caches session records, and one rebuilt before every batch, which reads
// every record from Pebble. Their results and stored bytes must be equal.
func TestSessionCacheMatchesUncached(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	cached := newHarness(t, allSlots())
	fresh := newHarness(t, allSlots())
	type sess struct{ next, acked uint64 }
	sessions := make([]sess, maxCachedSessions*2)
	now := int64(t0)
	for batch := range 400 {
		var cmds []*shoalpb.KVCommand
		for range 1 + rng.IntN(8) {
			now += int64(rng.IntN(3))
			id := uint64(1 + rng.IntN(len(sessions)))
			if rng.IntN(4) > 0 {
				id = uint64(1 + rng.IntN(4)) // a few busy sessions
			}
			s := &sessions[id-1]
			seq := s.next
			switch r := rng.IntN(10); {
			case r == 0 && seq > 0:
				seq = uint64(rng.IntN(int(seq))) // a retry, or a stale one
			case r == 1:
				s.acked = s.next // acknowledge all
			default:
				s.next++
			}
			// Up to maxCachedResults+8 unacknowledged: records cross the
			// cache's size bound both ways.
			if s.next > s.acked+maxCachedResults+8 {
				s.acked = s.next - uint64(rng.IntN(maxCachedResults+8))
			}
			var op *shoalpb.KVOp
			switch rng.IntN(4) {
			case 0:
				op = putOp("k"+strconv.Itoa(rng.IntN(20)), strconv.Itoa(batch))
			case 1:
				op = incrOp("n"+strconv.Itoa(rng.IntN(5)), 1)
			case 2:
				op = incrOp("k"+strconv.Itoa(rng.IntN(20)), 1) // fails on a non-integer
			default:
				op = &shoalpb.KVOp{Op: &shoalpb.KVOp_DeleteExpired{DeleteExpired: &shoalpb.DeleteExpiredOp{
					IdleSessions: []uint64{id, uint64(1 + rng.IntN(len(sessions)))}, SessionsIdleBeforeMs: now - 5}}}
				cmds = append(cmds, cmdAt(now, op))
				continue
			}
			cmds = append(cmds, inSession(id, seq, s.acked, cmdAt(now, op)))
		}
		fresh.sm = NewStateMachine(allSlots(), StateMachineOptions{Logger: discardLogger()})
		got, want := cached.apply(cmds...), fresh.apply(cmds...)
		for i := range got {
			if !proto.Equal(got[i], want[i]) {
				t.Fatalf("batch %d command %d (%v): cached %v, uncached %v", batch, i, cmds[i], got[i], want[i])
			}
		}
	}
	a, b := dumpAll(t, cached.eng), dumpAll(t, fresh.eng)
	if !slices.EqualFunc(a, b, func(x, y [2][]byte) bool { return bytes.Equal(x[0], y[0]) && bytes.Equal(x[1], y[1]) }) {
		t.Fatalf("stored state differs: %d records cached, %d uncached", len(a), len(b))
	}
	if n := len(cached.sm.(*stateMachine).sessions); n == 0 || n > maxCachedSessions {
		t.Fatalf("%d sessions cached; want 1..%d", n, maxCachedSessions)
	}
}

// TestSessionCacheBounds fills the session cache past each of its bounds:
// results per record, bytes per record, and results over the shard.
// checkSessionCache (after every batch) holds the cache to what is stored
// and to maxCachedShardResults.
func TestSessionCacheBounds(t *testing.T) {
	h := newHarness(t, allSlots())
	sm := h.sm.(*stateMachine)
	// Many results, never acknowledged: the 65th uncaches the record.
	for seq := range uint64(maxCachedResults + 1) {
		h.one(inSession(1, seq, 0, cmdAt(t0, putOp("a", "v"))))
		if _, ok := sm.sessions[1]; ok != (seq < maxCachedResults) {
			t.Fatalf("after %d results: cached %v", seq+1, ok)
		}
	}
	// A large result (the old value) keeps its record out of the cache.
	h.one(inSession(2, 0, 0, cmdAt(t0, putOp("b", strings.Repeat("x", maxCachedRecordBytes)))))
	if _, ok := sm.sessions[2]; !ok {
		t.Fatal("a small record was not cached")
	}
	h.one(inSession(2, 1, 0, cmdAt(t0, putOp("b", "small", returnOld))))
	if _, ok := sm.sessions[2]; ok {
		t.Fatalf("a record of more than %d bytes was cached", maxCachedRecordBytes)
	}
	// Sessions of up to maxCachedResults results each, more in all than
	// the shard keeps: the cache drops records rather than grow.
	// Once full, it drops as few as it must: a new session costs the
	// others one record, not their places.
	const full = maxCachedShardResults / maxCachedResults
	most, fewest := 0, maxCachedSessions
	for id := uint64(10); id < 10+2*full; id++ {
		for seq := range uint64(maxCachedResults) {
			h.one(inSession(id, seq, 0, cmdAt(t0, putOp("c", "v"))))
			most = max(most, sm.cachedResults)
			if id >= 10+full {
				fewest = min(fewest, len(sm.sessions))
			}
		}
	}
	if most <= maxCachedShardResults-maxCachedResults || sm.cachedResults > maxCachedShardResults || fewest < full-1 {
		t.Fatalf("cached results peaked at %d, now %d, want close to %d, never above; %d records cached at the fewest, want %d or more",
			most, sm.cachedResults, maxCachedShardResults, fewest, full-1)
	}
	// A retry is still answered from the record, cached or not.
	if r := h.one(inSession(10, 3, 0, cmdAt(t0, putOp("c", "again", returnOld)))); r.Error != 0 || r.Results[0].Value != nil {
		t.Fatalf("retry: %v", r)
	}
	// A record that comes back into a full cache with many results at
	// once (an uncached one of 70, acknowledged down to 41) makes room for
	// all of them: several small records go. A fresh state machine, so
	// that the cache fills without evicting (which records go is random).
	h = newHarness(t, allSlots())
	sm = h.sm.(*stateMachine)
	for seq := range uint64(70) {
		h.one(inSession(100, seq, 0, cmdAt(t0, putOp("d", "v"))))
	}
	for id := uint64(200); id < 200+maxCachedSessions; id++ {
		for seq := range uint64(maxCachedShardResults / maxCachedSessions) {
			h.one(inSession(id, seq, 0, cmdAt(t0, putOp("d", "v"))))
		}
	}
	if sm.cachedResults != maxCachedShardResults {
		t.Fatalf("%d results cached; want the cache full (%d)", sm.cachedResults, maxCachedShardResults)
	}
	h.one(inSession(100, 70, 30, cmdAt(t0, putOp("d", "v"))))
	if c, ok := sm.sessions[100]; !ok || len(c.rec.Results) != 41 || len(sm.sessions) != maxCachedSessions-2 {
		t.Fatalf("the record of 41 results cached: %v, with %d records; want it and %d others", ok, len(sm.sessions), maxCachedSessions-3)
	}
}
