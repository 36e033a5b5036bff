package kv

import (
	"fmt"
	"maps"
	"slices"

	"google.golang.org/protobuf/proto"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/internal/keys"
	"github.com/shoaldb/shoal/internal/storage"
)

// maxSessionResults bounds the results one session keeps for retries. It is
// part of the replicated semantics (every replica must trim alike), so
// changing it is a format change.
const maxSessionResults = 256

// maxSessionBytes bounds the encoded size of the results one session keeps
// (a write that returns the old value, GETDEL or SET with GET, keeps that
// value): the record is rewritten on every write in the session and sent
// whole in snapshots, whose messages are at most 64 MiB. Older results
// beyond it are kept as a small stale-sequence result (trimSessionBytes); the
// last one whatever its size. Replicated semantics too, as
// maxSessionResults: a replica of an older build keeps the results whole,
// so its session record, and what a retry of such a write is told, differ.
const maxSessionBytes = 4 << 20

// The state machine keeps up to maxCachedSessions session records of its
// shard decoded in memory, each with the encoding of its results, so that
// a write in a session neither reads and decodes its record from Pebble
// (in a profile of Go client writes that was about 8% of the nodes' CPU)
// nor encodes every result the record holds again (6%). A record holding
// more than maxCachedResults results or encoded in more than
// maxCachedRecordBytes is not kept, and no more than maxCachedShardResults
// results over the shard's records: each is held twice (decoded and
// encoded), so a shard's cache holds at most about 1024 results, and at
// most 64 × 16 KiB of encodings however large its results are. A client's
// session keeps a result per write in flight, so 64 concurrent writes
// over 8 shards leave about 8-25 in each record.
const (
	maxCachedSessions     = 64
	maxCachedResults      = 64
	maxCachedShardResults = 1024
	maxCachedRecordBytes  = 16 << 10
)

// cachedSession is a session record as the apply batch holds it, with
// the encoding of its results (sessionEncoder.appendCached).
type cachedSession struct {
	rec *shoalpb.SessionRecord
	// enc holds, by sequence, the encoded map entry of the result it was
	// made from; an entry whose result is no longer the record's is
	// stale and made again.
	enc map[uint64]encodedResult
}

type encodedResult struct {
	res   *shoalpb.KVCommandResult
	entry []byte
}

// session returns the record of session id as the batch b holds it: from
// the cache, else read from b. The caller may change its record and must
// then write it to b and pass it to cacheSession, or drop it from the
// cache.
func (sm *stateMachine) session(b *storage.Batch, id uint64) (*cachedSession, error) {
	if s, ok := sm.sessions[id]; ok {
		return s, nil
	}
	s := &cachedSession{rec: &shoalpb.SessionRecord{}}
	if _, err := storage.GetProto(b, keys.SessionKey(sm.shard, id), s.rec); err != nil {
		return nil, err
	}
	return s, nil
}

// cacheSession records s as what b now holds for session id.
//
// INVARIANT: a cached record is exactly what the apply batch (and so, once
// it commits, Pebble) holds for its session. Every write of a session
// record goes through here and every delete through uncacheSession; a
// snapshot replaces the state machine, and with it the cache.
//
// size is the length of the record's encoding.
func (sm *stateMachine) cacheSession(id uint64, s *cachedSession, size int) {
	sm.uncacheSession(id)
	n := len(s.rec.Results)
	if !cacheable(n, size) {
		return
	}
	full := func() bool {
		return len(sm.sessions) >= maxCachedSessions || sm.cachedResults+n > maxCachedShardResults
	}
	if full() {
		// Make room by dropping other records (any: the cache only saves
		// work, it never changes what is stored).
		for evict, c := range sm.sessions {
			sm.cachedResults -= len(c.rec.Results)
			delete(sm.sessions, evict)
			if !full() {
				break
			}
		}
	}
	if sm.sessions == nil {
		sm.sessions = make(map[uint64]*cachedSession)
	}
	sm.cachedResults += n
	sm.sessions[id] = s
}

// cacheable reports whether a record of n results, size bytes encoded,
// may be cached.
func cacheable(n, size int) bool { return n <= maxCachedResults && size <= maxCachedRecordBytes }

// uncacheSession drops session id's record from the cache. A record is
// not changed while it is cached (applyInSession drops it first), so its
// len(Results) stays what it added to cachedResults.
func (sm *stateMachine) uncacheSession(id uint64) {
	if s, ok := sm.sessions[id]; ok {
		sm.cachedResults -= len(s.rec.Results)
		delete(sm.sessions, id)
	}
}

// applyInSession applies cmd at most once per (session_id, seq): a retry
// gets the first result back, a sequence the client already acknowledged is
// refused, and anything else is applied and its result remembered in the
// session record, written in the same batch as the command's effects.
func (sm *stateMachine) applyInSession(b *storage.Batch, cmd *shoalpb.KVCommand) (*shoalpb.KVCommandResult, error) {
	key := keys.SessionKey(sm.shard, cmd.SessionId)
	cs, err := sm.session(b, cmd.SessionId)
	if err != nil {
		return nil, err
	}
	s := cs.rec
	if cmd.Seq < s.AckedBelow {
		return &shoalpb.KVCommandResult{
			Error: shoalpb.KVErrorCode_KV_ERROR_STALE_SEQUENCE,
			ErrorMessage: fmt.Sprintf("ERR session %d: sequence %d is below the acknowledged mark %d",
				cmd.SessionId, cmd.Seq, s.AckedBelow),
		}, nil
	}
	if res, ok := s.Results[cmd.Seq]; ok {
		return res, nil
	}
	res, err := sm.execute(b, cmd)
	if err != nil {
		return nil, err
	}
	// s changes now: until it is written, it must not stay cached.
	sm.uncacheSession(cmd.SessionId)
	if s.Results == nil {
		s.Results = make(map[uint64]*shoalpb.KVCommandResult)
	}
	s.Results[cmd.Seq] = res
	s.AckedBelow = max(s.AckedBelow, cmd.AckedBelow)
	s.LastActiveMs = max(s.LastActiveMs, cmd.NowMs)
	trimSessionCount(s)
	// Deterministic: map order must not make replicas store different
	// bytes (sessionEncoder).
	sm.buf, err = sm.sessionEnc.appendCached(sm.buf[:0], cs)
	if err != nil {
		return nil, fmt.Errorf("encode session %d: %w", cmd.SessionId, err)
	}
	// The encoded record holds every result whole, so its size bounds
	// theirs: only a record this large can need trimSessionBytes, which
	// sizes each result (that was a third of the cost of a session's
	// bookkeeping when done on every write).
	if len(sm.buf) > maxSessionBytes && trimSessionBytes(s, cmd.SessionId, cmd.Seq) {
		sm.buf, err = sm.sessionEnc.appendCached(sm.buf[:0], cs)
		if err != nil {
			return nil, fmt.Errorf("encode session %d: %w", cmd.SessionId, err)
		}
	}
	if err := b.Set(key, sm.buf, nil); err != nil {
		return nil, err
	}
	sm.cacheSession(cmd.SessionId, cs, len(sm.buf))
	return res, nil
}

// trimSessionCount forgets the results the client acknowledged and, beyond
// maxSessionResults, the oldest ones, raising the acknowledged mark past
// them so that a late retry is refused instead of applied twice.
func trimSessionCount(s *shoalpb.SessionRecord) {
	for seq := range s.Results {
		if seq < s.AckedBelow {
			delete(s.Results, seq)
		}
	}
	for len(s.Results) > maxSessionResults {
		oldest := uint64(0)
		first := true
		for seq := range s.Results {
			if first || seq < oldest {
				oldest, first = seq, false
			}
		}
		delete(s.Results, oldest)
		s.AckedBelow = max(s.AckedBelow, oldest+1)
	}
}

// trimSessionBytes, beyond maxSessionBytes of results (each sized on its
// own, proto.Size), replaces the oldest ones, except the result of last
// (the command just applied), with a small stale-sequence result: a retry
// of such a write learns it was applied and that its result is gone, and
// the mark stays where it was, since a sequence below it may not have
// arrived yet (a session's writes come from many goroutines, in any
// order). It reports whether it changed s.
func trimSessionBytes(s *shoalpb.SessionRecord, sessionID, last uint64) bool {
	size := 0
	for _, r := range s.Results {
		size += proto.Size(r)
	}
	if size <= maxSessionBytes {
		return false
	}
	changed := false
	for _, seq := range slices.Sorted(maps.Keys(s.Results)) {
		r := s.Results[seq]
		if seq == last || r.Error == shoalpb.KVErrorCode_KV_ERROR_STALE_SEQUENCE {
			continue
		}
		dropped := &shoalpb.KVCommandResult{
			Error:        shoalpb.KVErrorCode_KV_ERROR_STALE_SEQUENCE,
			ErrorMessage: fmt.Sprintf("ERR session %d: sequence %d was applied; its result was too large to keep", sessionID, seq),
		}
		size += proto.Size(dropped) - proto.Size(r)
		s.Results[seq], changed = dropped, true
		if size <= maxSessionBytes {
			break
		}
	}
	return changed
}
