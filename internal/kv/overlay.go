package kv

import (
	"bytes"
	"fmt"

	"github.com/shoaldb/shoal/internal/keys"
	"github.com/shoaldb/shoal/internal/storage"
)

// record is one key as a command sees it: what the apply batch held when the
// command first touched the key, and what the command's ops so far made of
// it.
type record struct {
	slot    uint16
	key     []byte
	dataKey []byte

	// stored and storedExpireAt describe the record in the batch, expired or
	// not. They decide which stale data and index entries a write removes.
	stored         bool
	storedExpireAt int64

	// exists, value and expireAt are the key's logical state: an expired
	// record does not exist.
	exists   bool
	value    []byte
	expireAt int64
	// dirty is set once an op changed the key; only dirty records are
	// written.
	dirty bool
}

// set gives the key value and expiry. An expiry not after nowMs leaves the
// key deleted, as a write followed at once by its expiry would.
func (r *record) set(value []byte, expireAtMs, nowMs int64) {
	if expired(expireAtMs, nowMs) {
		r.del()
		return
	}
	r.exists, r.value, r.expireAt, r.dirty = true, value, expireAtMs, true
}

// del deletes the key, and its stale record if it had expired.
func (r *record) del() {
	r.exists, r.value, r.expireAt, r.dirty = false, nil, 0, true
}

// overlay stages one command's writes in memory so that they reach the apply
// batch only if every op of the command succeeds. It is reused across
// commands: the state machine resets it after each one, so that it neither
// leaks into the next command nor pins the last command's values.
//
// INVARIANT: records holds each key at most once, at index[string(key)].
type overlay struct {
	index   map[string]int
	records []record
	// deletes are raw keys to delete on flush: orphaned expiry-index
	// entries and idle sessions.
	deletes [][]byte
	// written collects, when track is set, the data keys flush wrote or
	// deleted; reset leaves it to its owner, the state machine, which
	// tells the row cache of them and empties it once their batch is
	// committed.
	track   bool
	written [][]byte
}

func (o *overlay) reset() {
	clear(o.index)
	clear(o.records)
	o.records = o.records[:0]
	clear(o.deletes)
	o.deletes = o.deletes[:0]
}

// get returns the record of key in slot, reading it through r the first
// time. The pointer is valid until the next call to get.
func (o *overlay) get(r storage.Reader, slot uint16, key []byte, nowMs int64) (*record, error) {
	if i, ok := o.index[string(key)]; ok {
		return &o.records[i], nil
	}
	rec := record{slot: slot, key: key, dataKey: keys.DataKey(slot, key)}
	raw, ok, err := storage.Get(r, rec.dataKey)
	if err != nil {
		return nil, err
	}
	if ok {
		v, at, err := DecodeValue(raw)
		if err != nil {
			return nil, fmt.Errorf("key %q: %w", key, err)
		}
		rec.stored, rec.storedExpireAt = true, at
		if !expired(at, nowMs) {
			rec.exists, rec.value, rec.expireAt = true, v, at
		}
	}
	o.index[string(key)] = len(o.records)
	o.records = append(o.records, rec)
	return &o.records[len(o.records)-1], nil
}

// blind returns the record of key in slot for a write that does not depend
// on the key's current state (a SET with no condition and no expiry),
// without reading it:
// reading costs a lookup in the memtable and maybe the LSM on every replica
// for every write. Not knowing what is stored, the record assumes a data
// record with no expiry, so a later delete in the same command still
// removes the data, and an index entry of an earlier expiry is left for the
// sweeper, which removes entries whose data record no longer carries their
// expiry (deleteExpiredKey) once that expiry passes. So besides the entry of
// each key's current expiry the index may hold one orphan for every expiry
// a plain SET replaced and that has not passed yet: a key cycled through
// SET and EXPIRE (or SET EX) at rate r with a TTL t leaves about r×t of
// them, each removed by the sweeper (one Raft command per batch) when its
// time comes. A key the command already touched is returned
// as it stands. The pointer is valid until the next call to get or blind.
func (o *overlay) blind(slot uint16, key []byte) *record {
	if i, ok := o.index[string(key)]; ok {
		return &o.records[i]
	}
	o.index[string(key)] = len(o.records)
	o.records = append(o.records, record{slot: slot, key: key, dataKey: keys.DataKey(slot, key), stored: true})
	return &o.records[len(o.records)-1]
}

// deleteRaw stages the deletion of a key outside the data family. Staging
// the same key twice is harmless.
func (o *overlay) deleteRaw(k []byte) {
	for _, d := range o.deletes {
		if bytes.Equal(d, k) {
			return
		}
	}
	o.deletes = append(o.deletes, k)
}

// flush writes every change to b, keeping the expiry index in step with the
// data: a key's old index entry goes whenever its expiry changes or it is
// deleted, and a new one is added for a new expiry. buf is scratch space for
// encoding values. Records are written in the order the command first
// touched them, so every replica writes the same batch.
func (o *overlay) flush(b *storage.Batch, buf []byte) ([]byte, error) {
	for i := range o.records {
		r := &o.records[i]
		if !r.dirty {
			continue
		}
		keepIndex := r.exists && r.expireAt == r.storedExpireAt
		if r.stored && r.storedExpireAt != 0 && !keepIndex {
			if err := b.Delete(keys.ExpiryKey(r.slot, uint64(r.storedExpireAt), r.key), nil); err != nil {
				return buf, err
			}
		}
		switch {
		case r.exists:
			buf = AppendValue(buf[:0], r.value, r.expireAt)
			if err := b.Set(r.dataKey, buf, nil); err != nil {
				return buf, err
			}
			if r.expireAt != 0 && !keepIndex {
				if err := b.Set(keys.ExpiryKey(r.slot, uint64(r.expireAt), r.key), nil, nil); err != nil {
					return buf, err
				}
			}
		case r.stored:
			if err := b.Delete(r.dataKey, nil); err != nil {
				return buf, err
			}
		default:
			continue
		}
		if o.track {
			o.written = append(o.written, r.dataKey)
		}
	}
	for _, k := range o.deletes {
		if err := b.Delete(k, nil); err != nil {
			return buf, err
		}
	}
	return buf, nil
}
