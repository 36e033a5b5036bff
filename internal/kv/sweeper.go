package kv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/internal/keys"
	"github.com/shoaldb/shoal/internal/raftstore"
	"github.com/shoaldb/shoal/internal/storage"
)

const (
	// sweepProposeTimeout bounds one sweep proposal, so that a shard that
	// lost its quorum does not hold up the sweep of the others.
	sweepProposeTimeout = 5 * time.Second
	// maxSweepRounds bounds the batches one shard proposes per interval
	// when it has a backlog of expired keys.
	maxSweepRounds = 8
	// sessionSweepsPerTTL is how many times per SessionTTL idle sessions are
	// looked for, rather than at every sweep: it reads every session record.
	// An idle session so outlives SessionTTL by at most SessionTTL/16 plus
	// one SweepInterval, unless more sessions went idle than the sweeps
	// remove (see sweeper.sessionsFrom).
	sessionSweepsPerTTL = 16
)

// sweeper is the state of the DB's one sweeper goroutine.
type sweeper struct {
	d *DB
	// lastSessionSweep is when idle sessions were last looked for, by the
	// DB's clock.
	lastSessionSweep time.Time
	// sessionsFrom holds, for each shard whose last look for idle sessions
	// stopped at a full batch in its last round, the session ID to go on
	// from: that shard looks again at the next sweep, not SessionTTL/16
	// later, so that a backlog of idle sessions (short-lived clients each
	// leave one per shard they wrote to) is removed at up to SweepBatch
	// per round instead of growing without bound.
	sessionsFrom map[uint64]uint64
}

func (d *DB) runSweeper(ctx context.Context) {
	defer close(d.sweeperDone)
	s := &sweeper{d: d, sessionsFrom: map[uint64]uint64{}}
	t := time.NewTicker(d.opts.SweepInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			s.sweep(ctx)
		}
	}
}

// sweep sweeps every shard this node leads.
func (s *sweeper) sweep(ctx context.Context) {
	now := s.d.opts.Clock()
	sessions := now.Sub(s.lastSessionSweep) >= s.d.opts.SessionTTL/sessionSweepsPerTTL
	if sessions {
		s.lastSessionSweep = now
	}
	for _, st := range s.d.store.Replicas() {
		if ctx.Err() != nil {
			return
		}
		if st.Role != raftstore.RoleLeader {
			delete(s.sessionsFrom, st.ShardID)
			continue
		}
		if err := s.sweepShard(ctx, st.Descriptor, sessions); err != nil {
			s.report(st.ShardID, err)
		}
	}
	// Shards this node no longer holds.
	for shard := range s.sessionsFrom {
		if _, err := s.d.store.Status(shard); err != nil {
			delete(s.sessionsFrom, shard)
		}
	}
}

// report logs a failed sweep: quietly when the failure is an expected part
// of running a cluster (leadership moved, the node is stopping).
func (s *sweeper) report(shard uint64, err error) {
	expected := []error{
		raftstore.ErrNotLeader, raftstore.ErrNoLeader, raftstore.ErrLeadershipLost,
		raftstore.ErrStopped, raftstore.ErrTimeout, raftstore.ErrShardNotFound,
		raftstore.ErrShardRemoved, raftstore.ErrOverloaded, context.Canceled,
		// A majority of the shard's voters take no entries (QuorumSpace).
		ErrDiskFull,
	}
	for _, e := range expected {
		if errors.Is(err, e) {
			s.d.log.Debug("expiry sweep skipped", "shard", shard, "err", err)
			return
		}
	}
	s.d.log.Warn("expiry sweep failed", "shard", shard, "err", err)
}

// sweepShard proposes deletes of the shard's expired keys, in batches of
// up to SweepBatch, and of its idle sessions when asked to or when its
// last look stopped at a full batch (sessionsFrom).
func (s *sweeper) sweepShard(ctx context.Context, desc *shoalpb.ShardDescriptor, sessions bool) error {
	limit := s.d.opts.SweepBatch
	shard := desc.ShardId
	from, pending := s.sessionsFrom[shard]
	withSessions := sessions || pending
	if sessions {
		from = 0 // a new look starts from the first session
	}
	for round := 0; round < maxSweepRounds; round++ {
		nowMs := s.d.nowMs()
		op, next, err := s.collect(desc, nowMs, withSessions, from)
		if err != nil {
			return err
		}
		if withSessions {
			// Go on from next in the next round, or at the next sweep if
			// this was the last round; next is 0 once the look is done.
			withSessions, from = next != 0, next
			if withSessions {
				s.sessionsFrom[shard] = next
			} else {
				delete(s.sessionsFrom, shard)
			}
		}
		if len(op.Keys) == 0 && len(op.IdleSessions) == 0 && !withSessions {
			return nil
		}
		if len(op.Keys) > 0 || len(op.IdleSessions) > 0 {
			cmd := &shoalpb.KVCommand{NowMs: nowMs, Ops: []*shoalpb.KVOp{
				{Op: &shoalpb.KVOp_DeleteExpired{DeleteExpired: op}},
			}}
			pctx, cancel := context.WithTimeout(ctx, sweepProposeTimeout)
			_, err = s.d.propose(pctx, shard, cmd, nil)
			cancel()
			if err != nil {
				return err
			}
		}
		if len(op.Keys) < limit && !withSessions {
			return nil
		}
	}
	return nil
}

// collect finds, on a snapshot of the engine, up to SweepBatch keys of the
// shard that expired at or before nowMs and, when withSessions is set, up
// to SweepBatch of its sessions idle for longer than SessionTTL, looking
// from session ID from on. next is the session ID to go on from when the
// look stopped at a full batch, else 0.
func (s *sweeper) collect(desc *shoalpb.ShardDescriptor, nowMs int64, withSessions bool, from uint64) (op *shoalpb.DeleteExpiredOp, next uint64, err error) {
	snap := s.d.store.Engine().NewSnapshot()
	defer snap.Close()
	op = &shoalpb.DeleteExpiredOp{}
	if op.Keys, err = s.expiredKeys(snap, desc, nowMs); err != nil {
		return nil, 0, err
	}
	if withSessions {
		op.SessionsIdleBeforeMs = nowMs - s.d.opts.SessionTTL.Milliseconds()
		if op.IdleSessions, next, err = s.idleSessions(snap, desc.ShardId, op.SessionsIdleBeforeMs, from); err != nil {
			return nil, 0, err
		}
	}
	return op, next, nil
}

// expiredKeys scans the shard's expiry index. Entries are ordered by slot,
// then expiry, so the scan skips to the next slot at the first entry of a
// slot that has not expired yet.
func (s *sweeper) expiredKeys(r storage.Reader, desc *shoalpb.ShardDescriptor, nowMs int64) ([]*shoalpb.ExpiredKey, error) {
	it, err := storage.NewIter(r, keys.ExpirySpan(desc.StartSlot, desc.EndSlot))
	if err != nil {
		return nil, err
	}
	defer it.Close()
	var out []*shoalpb.ExpiredKey
	for ok := it.First(); ok && len(out) < s.d.opts.SweepBatch; {
		slot, at, key, err := keys.DecodeExpiryKey(it.Key())
		if err != nil {
			return nil, err
		}
		if int64(at) > nowMs {
			if uint32(slot)+1 >= desc.EndSlot {
				break
			}
			ok = it.SeekGE(keys.ExpiryKey(slot+1, 0, nil))
			continue
		}
		if err := s.checkIndexed(r, slot, key, int64(at)); err != nil {
			// An orphaned entry, left by a plain SET of a key that had
			// an expiry (overlay.blind): list it anyway, the state
			// machine removes it.
			s.d.log.Debug("expiry index entry without its data", "shard", desc.ShardId, "err", err)
		}
		out = append(out, &shoalpb.ExpiredKey{Key: bytes.Clone(key), ExpireAtMs: int64(at)})
		ok = it.Next()
	}
	return out, it.Error()
}

// checkIndexed verifies that key's data record carries the expiry its index
// entry names.
func (s *sweeper) checkIndexed(r storage.Reader, slot uint16, key []byte, at int64) error {
	raw, ok, err := storage.Get(r, keys.DataKey(slot, key))
	if err != nil {
		return err
	}
	if !ok {
		return fmt.Errorf("key %q expiring at %d has no data record", key, at)
	}
	_, stored, err := DecodeValue(raw)
	if err != nil {
		return fmt.Errorf("key %q: %w", key, err)
	}
	if stored != at {
		return fmt.Errorf("key %q is indexed at %d but expires at %d", key, at, stored)
	}
	return nil
}

// idleSessions returns up to SweepBatch sessions of shard, from session ID
// from on, last active before idleBeforeMs, and the ID to go on from when
// it stopped at SweepBatch (0 when it read them all).
func (s *sweeper) idleSessions(r storage.Reader, shard uint64, idleBeforeMs int64, from uint64) ([]uint64, uint64, error) {
	span := keys.SessionSpan(shard)
	if from > 0 {
		span.Start = keys.SessionKey(shard, from)
	}
	it, err := storage.NewIter(r, span)
	if err != nil {
		return nil, 0, err
	}
	defer it.Close()
	var out []uint64
	for ok := it.First(); ok; ok = it.Next() {
		_, id, err := keys.DecodeSessionKey(it.Key())
		if err != nil {
			return nil, 0, err
		}
		if len(out) == s.d.opts.SweepBatch {
			return out, id, nil
		}
		v, err := it.ValueAndErr()
		if err != nil {
			return nil, 0, err
		}
		var rec shoalpb.SessionRecord
		if err := proto.Unmarshal(v, &rec); err != nil {
			return nil, 0, fmt.Errorf("session %d: %w", id, err)
		}
		if rec.LastActiveMs < idleBeforeMs {
			out = append(out, id)
		}
	}
	return out, 0, it.Error()
}
