package kv

import (
	"bytes"
	"math"
	"strconv"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/internal/keys"
	"github.com/shoaldb/shoal/internal/storage"
)

// applyOp stages one op of cmd in the overlay. A failure by the command's
// own rules is an opError; any other error is a storage failure.
func (sm *stateMachine) applyOp(b *storage.Batch, cmd *shoalpb.KVCommand, op *shoalpb.KVOp) (*shoalpb.KVOpResult, error) {
	now, limit := cmd.NowMs, cmd.MaxValueBytes
	switch o := op.GetOp().(type) {
	case *shoalpb.KVOp_Put:
		return sm.put(b, now, limit, o.Put)
	case *shoalpb.KVOp_Delete:
		return sm.delete(b, now, o.Delete)
	case *shoalpb.KVOp_CompareAndSet:
		return sm.compareAndSet(b, now, limit, o.CompareAndSet)
	case *shoalpb.KVOp_IncrBy:
		return sm.incrBy(b, now, limit, o.IncrBy)
	case *shoalpb.KVOp_Append:
		return sm.append(b, now, limit, o.Append)
	case *shoalpb.KVOp_Expire:
		return sm.expire(b, now, o.Expire)
	case *shoalpb.KVOp_DeleteExpired:
		return sm.deleteExpired(b, now, o.DeleteExpired)
	}
	return nil, invalidf("%s: empty or unknown op", msgMalformed)
}

// record returns key's record, checking that the shard owns it.
func (sm *stateMachine) record(b *storage.Batch, key []byte, nowMs int64) (*record, error) {
	slot, err := sm.slotOf(key)
	if err != nil {
		return nil, err
	}
	return sm.ov.get(b, slot, key, nowMs)
}

// checkSize fails when a write would leave a value longer than limit bytes
// (no limit when limit <= 0).
func checkSize(n int, limit int64) error {
	if limit > 0 && int64(n) > limit {
		return opError{code: shoalpb.KVErrorCode_KV_ERROR_TOO_LARGE, msg: msgTooLarge}
	}
	return nil
}

// put is SET with NX/XX, PXAT, KEEPTTL and GET.
func (sm *stateMachine) put(b *storage.Batch, now, limit int64, op *shoalpb.PutOp) (*shoalpb.KVOpResult, error) {
	if op.KeepTtl && op.ExpireAtMs != 0 {
		return nil, invalidf("ERR syntax error: KEEPTTL with an expiry")
	}
	if err := checkSize(len(op.Value), limit); err != nil {
		return nil, err
	}
	if op.Condition == shoalpb.Condition_CONDITION_NONE && !op.ReturnOld && !op.KeepTtl && op.ExpireAtMs == 0 {
		// A plain SET: nothing in the result or the write depends on the
		// current record, so it is not read (found stays false). A SET
		// with an expiry still reads, to replace the key's index entry:
		// otherwise a key rewritten often with a long TTL would pile up
		// entries until its old expiries pass.
		slot, err := sm.slotOf(op.Key)
		if err != nil {
			return nil, err
		}
		sm.ov.blind(slot, op.Key).set(op.Value, op.ExpireAtMs, now)
		return &shoalpb.KVOpResult{Applied: true}, nil
	}
	rec, err := sm.record(b, op.Key, now)
	if err != nil {
		return nil, err
	}
	res := &shoalpb.KVOpResult{Found: rec.exists}
	if op.ReturnOld {
		res.Value = rec.value
	}
	switch op.Condition {
	case shoalpb.Condition_CONDITION_NONE:
	case shoalpb.Condition_CONDITION_NOT_EXISTS:
		if rec.exists {
			return res, nil
		}
	case shoalpb.Condition_CONDITION_EXISTS:
		if !rec.exists {
			return res, nil
		}
	default:
		return nil, invalidf("%s: unknown condition %d", msgMalformed, op.Condition)
	}
	at := op.ExpireAtMs
	if op.KeepTtl {
		at = rec.expireAt
	}
	rec.set(op.Value, at, now)
	res.Applied = true
	return res, nil
}

// delete is DEL (GETDEL with return_old). Deleting an expired key removes its
// stale record but reports it absent.
func (sm *stateMachine) delete(b *storage.Batch, now int64, op *shoalpb.DeleteOp) (*shoalpb.KVOpResult, error) {
	rec, err := sm.record(b, op.Key, now)
	if err != nil {
		return nil, err
	}
	res := &shoalpb.KVOpResult{Found: rec.exists, Applied: rec.exists}
	if op.ReturnOld {
		res.Value = rec.value
	}
	if rec.exists || rec.stored {
		rec.del()
	}
	return res, nil
}

// compareAndSet writes only if the key is absent (expect_absent) or holds
// exactly the expected bytes; otherwise it reports the current value.
func (sm *stateMachine) compareAndSet(b *storage.Batch, now, limit int64, op *shoalpb.CompareAndSetOp) (*shoalpb.KVOpResult, error) {
	if op.ExpectAbsent && len(op.Expected) > 0 {
		return nil, invalidf("%s: compare-and-set expects both absence and a value", msgMalformed)
	}
	if err := checkSize(len(op.Value), limit); err != nil {
		return nil, err
	}
	rec, err := sm.record(b, op.Key, now)
	if err != nil {
		return nil, err
	}
	res := &shoalpb.KVOpResult{Found: rec.exists}
	match := !rec.exists
	if !op.ExpectAbsent {
		match = rec.exists && bytes.Equal(rec.value, op.Expected)
	}
	if !match {
		res.Value = rec.value
		return res, nil
	}
	rec.set(op.Value, op.ExpireAtMs, now)
	res.Applied = true
	return res, nil
}

// incrBy is INCRBY: an absent key counts as 0 and the key keeps its TTL.
func (sm *stateMachine) incrBy(b *storage.Batch, now, limit int64, op *shoalpb.IncrByOp) (*shoalpb.KVOpResult, error) {
	rec, err := sm.record(b, op.Key, now)
	if err != nil {
		return nil, err
	}
	var cur int64
	if rec.exists {
		v, ok := parseInt(rec.value)
		if !ok {
			return nil, opError{code: shoalpb.KVErrorCode_KV_ERROR_NOT_INTEGER, msg: msgNotInteger}
		}
		cur = v
	}
	d := op.Delta
	if (d < 0 && cur < 0 && d < math.MinInt64-cur) || (d > 0 && cur > 0 && d > math.MaxInt64-cur) {
		return nil, opError{code: shoalpb.KVErrorCode_KV_ERROR_OVERFLOW, msg: msgOverflow}
	}
	n := cur + d
	v := strconv.AppendInt(nil, n, 10)
	if err := checkSize(len(v), limit); err != nil {
		return nil, err
	}
	res := &shoalpb.KVOpResult{Applied: true, Found: rec.exists, IntValue: n}
	rec.set(v, rec.expireAt, now)
	return res, nil
}

// append is APPEND: it creates an absent key and keeps the key's TTL.
func (sm *stateMachine) append(b *storage.Batch, now, limit int64, op *shoalpb.AppendOp) (*shoalpb.KVOpResult, error) {
	rec, err := sm.record(b, op.Key, now)
	if err != nil {
		return nil, err
	}
	n := len(rec.value) + len(op.Value)
	if err := checkSize(n, limit); err != nil {
		return nil, err
	}
	v := make([]byte, 0, n)
	v = append(append(v, rec.value...), op.Value...)
	res := &shoalpb.KVOpResult{Applied: true, Found: rec.exists, IntValue: int64(n)}
	rec.set(v, rec.expireAt, now)
	return res, nil
}

// expire is PEXPIREAT (expire_at_ms > now), PERSIST (0), or a delete when the
// time has already passed, as Redis does for an expiry in the past. applied
// is what Redis replies: 1 if the expiry was set or the key deleted, and for
// PERSIST 1 only if the key had a TTL.
func (sm *stateMachine) expire(b *storage.Batch, now int64, op *shoalpb.ExpireOp) (*shoalpb.KVOpResult, error) {
	rec, err := sm.record(b, op.Key, now)
	if err != nil {
		return nil, err
	}
	res := &shoalpb.KVOpResult{Found: rec.exists}
	if !rec.exists {
		return res, nil
	}
	if op.ReturnValue {
		res.Value = append([]byte(nil), rec.value...)
	}
	if !expireAllowed(op.Condition, rec.expireAt, op.ExpireAtMs) {
		return res, nil
	}
	switch {
	case op.ExpireAtMs == 0:
		if rec.expireAt != 0 {
			rec.set(rec.value, 0, now)
			res.Applied = true
		}
	case expired(op.ExpireAtMs, now):
		rec.del()
		res.Applied = true
	default:
		rec.set(rec.value, op.ExpireAtMs, now)
		res.Applied = true
	}
	return res, nil
}

// expireAllowed applies an ExpireCondition to a key whose expiry is cur
// (0: none) and the requested next one.
func expireAllowed(c shoalpb.ExpireCondition, cur, next int64) bool {
	// A key without an expiry counts as expiring never.
	const never = int64(^uint64(0) >> 1)
	if cur == 0 {
		cur = never
	}
	if next == 0 {
		next = never
	}
	switch c {
	case shoalpb.ExpireCondition_EXPIRE_CONDITION_NO_TTL:
		return cur == never
	case shoalpb.ExpireCondition_EXPIRE_CONDITION_HAS_TTL:
		return cur != never
	case shoalpb.ExpireCondition_EXPIRE_CONDITION_GREATER:
		return next > cur
	case shoalpb.ExpireCondition_EXPIRE_CONDITION_LESS:
		return next < cur
	case shoalpb.ExpireCondition_EXPIRE_CONDITION_LESS_HAS_TTL:
		return cur != never && next < cur
	case shoalpb.ExpireCondition_EXPIRE_CONDITION_NONE:
		return true
	}
	// A condition this build does not know (from a newer proposer) is not
	// met, rather than ignored: every replica of this build decides alike.
	return false
}

// deleteExpired is the sweeper's op. A key is deleted only if its record
// still has exactly the listed expiry and that expiry is not after now; an
// index entry whose data record disagrees (which the invariant forbids) is
// removed. A listed session is removed only if it is still idle. int_value
// counts the keys deleted; applied says whether anything was removed.
func (sm *stateMachine) deleteExpired(b *storage.Batch, now int64, op *shoalpb.DeleteExpiredOp) (*shoalpb.KVOpResult, error) {
	res := &shoalpb.KVOpResult{}
	for _, ek := range op.Keys {
		n, err := sm.deleteExpiredKey(b, now, ek)
		if err != nil {
			return nil, err
		}
		if n {
			res.IntValue++
		}
	}
	res.Applied = res.IntValue > 0
	for _, id := range op.IdleSessions {
		removed, err := sm.deleteIdleSession(b, id, op.SessionsIdleBeforeMs)
		if err != nil {
			return nil, err
		}
		res.Applied = res.Applied || removed
	}
	return res, nil
}

// deleteExpiredKey deletes one listed key if it is still expired at ek's
// time, and reports whether it did.
func (sm *stateMachine) deleteExpiredKey(b *storage.Batch, now int64, ek *shoalpb.ExpiredKey) (bool, error) {
	rec, err := sm.record(b, ek.Key, now)
	if err != nil {
		return false, err
	}
	at := ek.ExpireAtMs
	if at <= 0 || at > now || rec.dirty {
		return false, nil
	}
	if rec.stored && rec.storedExpireAt == at {
		rec.del()
		return true, nil
	}
	// The data record does not carry this expiry: the entry is an orphan.
	ik := keys.ExpiryKey(rec.slot, uint64(at), rec.key)
	_, ok, err := storage.Get(b, ik)
	if err != nil {
		return false, err
	}
	if ok {
		// Normal after a plain SET replaced a key that had an expiry
		// (overlay.blind).
		sm.log.Debug("removing orphaned expiry index entry", "key", rec.key, "expire_at_ms", at)
		sm.ov.deleteRaw(ik)
	}
	return false, nil
}

// deleteIdleSession removes session id if its last activity is still
// before idleBeforeMs.
func (sm *stateMachine) deleteIdleSession(b *storage.Batch, id uint64, idleBeforeMs int64) (bool, error) {
	k := keys.SessionKey(sm.shard, id)
	var s shoalpb.SessionRecord
	ok, err := storage.GetProto(b, k, &s)
	if err != nil || !ok || s.LastActiveMs >= idleBeforeMs {
		return false, err
	}
	// Staged in the overlay: written only if the whole command succeeds.
	// Dropping the cached record either way is safe.
	sm.uncacheSession(id)
	sm.ov.deleteRaw(k)
	return true, nil
}

// parseInt parses b as Redis's string2ll does: an optional '-', then "0" or
// a digit 1-9 followed by digits, at most 20 bytes in all, no '+', no
// spaces, no leading zeros, no "-0", within int64.
func parseInt(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 20 {
		return 0, false
	}
	if len(b) == 1 && b[0] == '0' {
		return 0, true
	}
	neg := b[0] == '-'
	if neg {
		b = b[1:]
	}
	if len(b) == 0 || b[0] < '1' || b[0] > '9' {
		return 0, false
	}
	var v uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		d := uint64(c - '0')
		if v > (math.MaxUint64-d)/10 {
			return 0, false
		}
		v = v*10 + d
	}
	if neg {
		if v > 1<<63 {
			return 0, false
		}
		return int64(-v), true
	}
	if v > math.MaxInt64 {
		return 0, false
	}
	return int64(v), true
}
