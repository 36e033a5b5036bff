package kv

import (
	"bytes"
	"context"
	"fmt"
	"time"

	"github.com/shoaldb/shoal/internal/keys"
	"github.com/shoaldb/shoal/internal/storage"
)

// Get reads key, which lives in slot, from r as of nowMs (Unix
// milliseconds): a key whose expiry is not after nowMs is not found. The
// value is a copy the caller owns; expireAtMs is 0 when the key has no TTL.
func Get(r storage.Reader, slot uint16, key []byte, nowMs int64) (value []byte, expireAtMs int64, found bool, err error) {
	raw, ok, err := storage.Get(r, keys.DataKey(slot, key))
	if err != nil || !ok {
		return nil, 0, false, err
	}
	return decodeLive(key, raw, nowMs)
}

// exists reports whether key, which lives in slot, is live in r as of
// nowMs, and its expiry, without copying its value.
func exists(r storage.Reader, slot uint16, key []byte, nowMs int64) (expireAtMs int64, found bool, err error) {
	err = storage.View(r, keys.DataKey(slot, key), func(raw []byte) error {
		_, expireAtMs, found, err = decodeLive(key, raw, nowMs)
		return err
	})
	return expireAtMs, found, err
}

// decodeLive decodes key's stored record raw as of nowMs.
func decodeLive(key, raw []byte, nowMs int64) (value []byte, expireAtMs int64, found bool, err error) {
	v, at, err := DecodeValue(raw)
	if err != nil {
		return nil, 0, false, fmt.Errorf("kv: key %q: %w", key, err)
	}
	if expired(at, nowMs) {
		return nil, 0, false, nil
	}
	return v, at, true, nil
}

// RowCacheStats returns the counters and size of the DB's row cache (zero
// without one).
func (d *DB) RowCacheStats() RowCacheStats { return d.opts.RowCache.Stats() }

// get reads key, in slot, from the row cache or else the engine (filling
// the cache), as Get does. The value is a copy the caller owns.
func (d *DB) get(slot uint16, key []byte) (value []byte, expireAtMs int64, found bool, err error) {
	c := d.opts.RowCache
	if c == nil {
		return Get(d.store.Engine().Reader(), slot, key, d.nowMs())
	}
	dk := keys.DataKey(slot, key)
	raw, t, hit := c.lookup(dk)
	if !hit {
		var ok bool
		if raw, ok, err = storage.Get(d.store.Engine().Reader(), dk); err != nil || !ok {
			return nil, 0, false, err
		}
		c.fill(slot, dk, raw, t) // raw is this read's own copy: the cache keeps it
	}
	// raw is the cache's now: the caller gets a copy of the value.
	v, at, ok, err := decodeLive(key, raw, d.nowMs())
	if !ok || err != nil {
		return nil, 0, ok, err
	}
	return bytes.Clone(v), at, true, nil
}

// ScanResult is one page of a scan.
type ScanResult struct {
	Keys, Values [][]byte
	// Cursor resumes the scan after the last key; nil when the range is
	// done.
	Cursor []byte

	lastKey []byte
}

// MaxScanLimit bounds the keys one Scan call returns.
const MaxScanLimit = 10000

// MaxScanPageBytes ends a page once its keys and values reach it (the
// page then has a cursor), well within the 64 MiB of a gRPC message: a
// thousand 8 MiB values would not fit.
const MaxScanPageBytes = 16 << 20

// maxScanSkipped ends a scan page after this many expired records not
// yet swept, so that a page's work is bounded however many there are.
const maxScanSkipped = 10000

// Scan returns up to limit live keys (and values unless keysOnly) of the
// local replica of shard whose slots are in [startSlot, endSlot), in slot
// order then key order, after cursor (from a previous page; nil to start),
// ending the page early at MaxScanPageBytes, or after 10,000 expired
// records it skipped (a page may then hold no key, and has a cursor).
// Like Get it is linearizable unless o.Stale. Expired keys are skipped.
func (d *DB) Scan(ctx context.Context, shard uint64, startSlot, endSlot uint32, cursor []byte, limit int, keysOnly bool, o ReadOptions) (ScanResult, error) {
	// A replica without data (waiting for its first snapshot) fails
	// Serving; not worth a read barrier, which would wait for the snapshot.
	if err := d.store.Serving(shard); err != nil {
		return ScanResult{}, fmt.Errorf("kv: scan: %w", err)
	}
	if !o.Stale {
		if err := d.store.ReadIndex(ctx, shard); err != nil {
			return ScanResult{}, fmt.Errorf("kv: scan: %w", err)
		}
	}
	// Checked again after the barrier: a replica without data has no slots,
	// and an empty last page would make the caller skip the shard's keys.
	if err := d.store.Serving(shard); err != nil {
		return ScanResult{}, fmt.Errorf("kv: scan: %w", err)
	}
	// The slots after the barrier: those the replica serves at the read's
	// index.
	st, err := d.store.Status(shard)
	if err != nil {
		return ScanResult{}, fmt.Errorf("kv: scan: %w", err)
	}
	desc := st.Descriptor
	startSlot, endSlot = max(startSlot, desc.GetStartSlot()), min(endSlot, desc.GetEndSlot())
	if startSlot >= endSlot {
		return ScanResult{}, nil
	}
	if limit <= 0 || limit > MaxScanLimit {
		limit = min(max(limit, 1000), MaxScanLimit)
	}
	span := keys.DataSpan(startSlot, endSlot)
	if len(cursor) > 0 {
		if !span.Contains(cursor) && string(cursor) >= string(span.End) {
			return ScanResult{}, nil
		}
		// Resume strictly after the cursor.
		if after := append(cursor[:len(cursor):len(cursor)], 0); string(after) > string(span.Start) {
			span.Start = after
		}
	}
	it, err := d.store.Engine().NewIter(span)
	if err != nil {
		return ScanResult{}, fmt.Errorf("kv: scan: %w", err)
	}
	defer it.Close()
	now := d.nowMs()
	var res ScanResult
	size, skipped := 0, 0
	for ok := it.First(); ok; ok = it.Next() {
		if len(res.Keys) == limit || size >= MaxScanPageBytes || skipped >= maxScanSkipped {
			res.Cursor = append([]byte(nil), res.lastKey...)
			break
		}
		v, at, err := DecodeValue(it.Value())
		if err != nil {
			return ScanResult{}, fmt.Errorf("kv: scan: %q: %w", it.Key(), err)
		}
		if expired(at, now) {
			// Resume after it: a page past maxScanSkipped of them ends
			// here, maybe with no key (as a Redis SCAN page may).
			skipped++
			res.lastKey = append(res.lastKey[:0], it.Key()...)
			continue
		}
		_, k, err := keys.DecodeDataKey(it.Key())
		if err != nil {
			return ScanResult{}, fmt.Errorf("kv: scan: %w", err)
		}
		res.Keys = append(res.Keys, append([]byte(nil), k...))
		size += len(k)
		if !keysOnly {
			res.Values = append(res.Values, append([]byte(nil), v...))
			size += len(v)
		}
		res.lastKey = append(res.lastKey[:0], it.Key()...)
	}
	if err := it.Error(); err != nil {
		return ScanResult{}, fmt.Errorf("kv: scan: %w", err)
	}
	if err := d.store.Serving(shard); err != nil {
		return ScanResult{}, fmt.Errorf("kv: scan: %w", err)
	}
	return res, nil
}

// keyPositions finds the first position of a key named more than once in
// a list: by comparing with the keys before it in a short list (no
// allocation), through a map in a long one.
type keyPositions struct{ m map[string]int }

// shortKeyList is the longest list searched without a map.
const shortKeyList = 16

func newKeyPositions(n int) keyPositions {
	if n <= shortKeyList {
		return keyPositions{}
	}
	return keyPositions{m: make(map[string]int, n)}
}

// first returns the first position before i of ks[i], or -1 (and then
// remembers i as its first).
func (p keyPositions) first(ks [][]byte, i int) int {
	if p.m == nil {
		for j := range i {
			if bytes.Equal(ks[j], ks[i]) {
				return j
			}
		}
		return -1
	}
	if j, ok := p.m[string(ks[i])]; ok {
		return j
	}
	p.m[string(ks[i])] = i
	return -1
}

// MaxMultiGetBytes bounds the values one MultiGet answers, a value named
// twice counted twice: the answer must fit a gRPC message (64 MiB), and
// the front end builds its reply whole.
const MaxMultiGetBytes = 48 << 20

// MultiGet reads several keys of one shard as of one moment: after one
// ReadIndex barrier (unless o.Stale), from one engine snapshot, so a
// command that wrote several of them is seen whole or not at all. Keys in
// different shards fail with ErrCrossShard. A key named more than once is
// read once, and its positions share one value: EXISTS or MGET of one 8
// MiB key named a thousand times must not copy it a thousand times. With
// o.ExistsOnly no value is copied out at all (Value.Data is nil). An
// answer whose values, each position counted, exceed MaxMultiGetBytes
// fails with ErrTooLarge.
func (d *DB) MultiGet(ctx context.Context, ks [][]byte, o ReadOptions) ([]Value, []bool, error) {
	if len(ks) == 0 {
		return nil, nil, nil
	}
	shard, err := d.store.ShardBySlot(keys.Slot(ks[0]))
	if err != nil {
		return nil, nil, fmt.Errorf("kv: mget: %w", err)
	}
	for _, k := range ks[1:] {
		if s, err := d.store.ShardBySlot(keys.Slot(k)); err != nil || s != shard {
			return nil, nil, fmt.Errorf("kv: mget: %w", ErrCrossShard)
		}
	}
	if !o.Stale {
		if err := d.store.ReadIndex(ctx, shard); err != nil {
			return nil, nil, fmt.Errorf("kv: mget: %w", err)
		}
	}
	snap := d.store.Engine().NewSnapshot()
	defer snap.Close()
	now := d.nowMs()
	vals, found := make([]Value, len(ks)), make([]bool, len(ks))
	seen := newKeyPositions(len(ks))
	size := 0
	for i, k := range ks {
		if j := seen.first(ks, i); j >= 0 {
			vals[i], found[i] = vals[j], found[j]
			if size += len(vals[i].Data); size > MaxMultiGetBytes {
				return nil, nil, fmt.Errorf("kv: mget: %w: the values answered exceed %d bytes", ErrTooLarge, MaxMultiGetBytes)
			}
			continue
		}
		var v []byte
		var at int64
		var ok bool
		if o.ExistsOnly {
			at, ok, err = exists(snap, keys.Slot(k), k, now)
		} else {
			v, at, ok, err = Get(snap, keys.Slot(k), k, now)
		}
		if err != nil {
			return nil, nil, fmt.Errorf("kv: mget: %w", err)
		}
		vals[i], found[i] = Value{Data: v}, ok
		if at != 0 {
			vals[i].ExpireAt = time.UnixMilli(at)
		}
		if size += len(v); size > MaxMultiGetBytes {
			return nil, nil, fmt.Errorf("kv: mget: %w: the values answered exceed %d bytes", ErrTooLarge, MaxMultiGetBytes)
		}
	}
	if err := d.store.Serving(shard); err != nil {
		return nil, nil, fmt.Errorf("kv: mget: %w", err)
	}
	return vals, found, nil
}
