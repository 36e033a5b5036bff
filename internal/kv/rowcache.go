package kv

import (
	"hash/maphash"
	"sync"
	"sync/atomic"
)

// RowCache keeps the stored values of recently read keys in memory, so
// that a read of a hot key does not search Pebble's memtables and tables:
// on a loaded node that search (a skiplist walk per memtable, then the LSM
// levels) is a third of the CPU a GET costs. One RowCache serves all the
// replicas of a node; a nil *RowCache caches nothing.
//
// What is cached is a data key's raw record (value and expiry), never its
// absence. Readers decode it as they would the engine's, so an expired
// record is not found whether it came from here or from Pebble.
//
// INVARIANT: a read never returns an older value than a read that finished
// before it started. Pebble alone gives that; the cache keeps it by never
// holding a value the engine has replaced, and by never serving a value
// while the engine may already hold its replacement:
//   - a write of a key drops the key and holds off fills of it (begin)
//     before the apply batch that writes it is committed, and releases them
//     (end) once the batch is committed. In between, readers of the key go
//     to Pebble, which moves from old to new once.
//   - a fill carries a ticket taken before its engine read (its stripe's
//     generation and the cache's epoch) and is refused if a write of the
//     stripe began or ended, or a slot range was blocked or unblocked,
//     since then: the value it read may be older than the engine's.
//   - data changed outside Apply (a snapshot ingested, a removed replica's
//     data deleted) is bracketed by BlockSlots: the range's entries are
//     dropped and fills of it refused before the engine changes, until the
//     change is done.
type RowCache struct {
	seed    maphash.Seed
	stripes [rowCacheStripes]rowStripe
	// budget is each stripe's share of the cache's bytes.
	budget int64

	// epoch moves on every BlockSlots and unblock; blocked holds the slot
	// ranges blocked now (an immutable slice, replaced under blockMu).
	epoch   atomic.Uint64
	blockMu sync.Mutex
	blocked atomic.Pointer[[]slotRange]
}

// rowCacheStripes is the number of independently locked parts of a cache.
const rowCacheStripes = 64

// rowEntryOverhead approximates the memory of an entry beside its key and
// value: the entry, its map slot and its clock slot.
const rowEntryOverhead = 112

type rowStripe struct {
	// mu is held for reading by lookups, for writing by everything else.
	mu sync.RWMutex
	// gen moves whenever a write of one of the stripe's keys begins or
	// ends, or a BlockSlots drops entries.
	gen     uint64
	entries map[string]*rowEntry
	// clock holds the entries in the order the clock hand visits them
	// (second-chance eviction); entry.pos is its index here.
	clock []*rowEntry
	hand  int
	bytes int64
	// writing counts the writes of each key that began and have not ended.
	writing map[string]int
	// Counters, per stripe so that readers on different cores do not
	// share one cache line: hits and misses are counted under the read
	// lock, fills and evictions under the write lock.
	hits, misses     atomic.Uint64
	fills, evictions uint64
	_                [64]byte // keeps stripes' locks on separate cache lines
}

type rowEntry struct {
	key  string
	slot uint16
	raw  []byte
	pos  int
	// used is set by lookups (under the read lock), cleared by eviction.
	used atomic.Bool
}

type slotRange struct{ start, end uint32 }

// rowTicket is what a reader learns before it reads the engine, for fill.
type rowTicket struct {
	stripe     *rowStripe
	gen, epoch uint64
	// refused: a write of the key is under way.
	refused bool
}

// RowCacheStats are a cache's counters and size.
type RowCacheStats struct {
	Hits, Misses, Fills, Evictions uint64
	Entries, Bytes                 int64
}

// NewRowCache returns a cache of about maxBytes (keys, values and
// bookkeeping); maxBytes <= 0 returns nil, which caches nothing.
func NewRowCache(maxBytes int64) *RowCache {
	if maxBytes <= 0 {
		return nil
	}
	c := &RowCache{seed: maphash.MakeSeed(), budget: max(maxBytes/rowCacheStripes, 1)}
	for i := range c.stripes {
		c.stripes[i].entries = map[string]*rowEntry{}
		c.stripes[i].writing = map[string]int{}
	}
	return c
}

func (c *RowCache) stripe(dk []byte) *rowStripe {
	return &c.stripes[maphash.Bytes(c.seed, dk)%rowCacheStripes]
}

// lookup returns the cached record of data key dk, or a ticket for fill.
// The record is shared: the caller must not modify it.
func (c *RowCache) lookup(dk []byte) (raw []byte, t rowTicket, hit bool) {
	s := c.stripe(dk)
	s.mu.RLock()
	if e := s.entries[string(dk)]; e != nil {
		if !e.used.Load() {
			e.used.Store(true)
		}
		raw = e.raw
		s.mu.RUnlock()
		s.hits.Add(1)
		return raw, rowTicket{}, true
	}
	t = rowTicket{stripe: s, gen: s.gen, epoch: c.epoch.Load(), refused: s.writing[string(dk)] > 0}
	s.mu.RUnlock()
	s.misses.Add(1)
	return nil, t, false
}

// fill caches raw, the record of dk in slot that the engine held when read
// after lookup returned t, unless something may have changed it since.
// raw must not be modified afterwards.
func (c *RowCache) fill(slot uint16, dk, raw []byte, t rowTicket) {
	if t.stripe == nil || t.refused || c.isBlocked(slot) {
		return // t is a hit's, or refuses
	}
	size := int64(len(dk)+len(raw)) + rowEntryOverhead
	if size > c.budget/4 {
		return // one large value would evict a stripe's worth of small ones
	}
	s := t.stripe
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.gen != t.gen || c.epoch.Load() != t.epoch || s.entries[string(dk)] != nil {
		return
	}
	e := &rowEntry{key: string(dk), slot: slot, raw: raw, pos: len(s.clock)}
	s.entries[e.key] = e
	s.clock = append(s.clock, e)
	s.bytes += size
	s.fills++
	for s.bytes > c.budget && len(s.clock) > 1 {
		if s.hand >= len(s.clock) {
			s.hand = 0
		}
		v := s.clock[s.hand]
		if v.used.Load() || v == e {
			v.used.Store(false)
			s.hand++
			continue
		}
		s.remove(v)
		s.evictions++
	}
}

// remove drops e; the caller holds s.mu.
func (s *rowStripe) remove(e *rowEntry) {
	delete(s.entries, e.key)
	last := s.clock[len(s.clock)-1]
	s.clock[e.pos], last.pos = last, e.pos
	s.clock[len(s.clock)-1] = nil
	s.clock = s.clock[:len(s.clock)-1]
	s.bytes -= int64(len(e.key)+len(e.raw)) + rowEntryOverhead
}

// begin is called when a write of dk is staged, before the batch holding it
// is committed: it drops dk and refuses its fills until end.
func (c *RowCache) begin(dk []byte) {
	s := c.stripe(dk)
	s.mu.Lock()
	s.gen++
	if e := s.entries[string(dk)]; e != nil {
		s.remove(e)
	}
	s.writing[string(dk)]++
	s.mu.Unlock()
}

// end is called once the batch holding a write of dk that begin announced
// is committed.
func (c *RowCache) end(dk []byte) {
	s := c.stripe(dk)
	s.mu.Lock()
	s.gen++
	if n := s.writing[string(dk)]; n <= 1 {
		delete(s.writing, string(dk))
	} else {
		s.writing[string(dk)] = n - 1
	}
	s.mu.Unlock()
}

func (c *RowCache) isBlocked(slot uint16) bool {
	if b := c.blocked.Load(); b != nil {
		for _, r := range *b {
			if uint32(slot) >= r.start && uint32(slot) < r.end {
				return true
			}
		}
	}
	return false
}

// BlockSlots drops the cached keys of slots [start, end) and refuses fills
// of them until the returned function is called. Call it before the
// engine's data of those slots changes other than through a state
// machine's Apply (a snapshot ingested, a removed replica's data deleted),
// and call the function once the change is done. A nil cache returns a
// function that does nothing.
func (c *RowCache) BlockSlots(start, end uint32) (unblock func()) {
	if c == nil {
		return func() {}
	}
	r := slotRange{start, end}
	c.blockMu.Lock()
	next := []slotRange{r}
	if b := c.blocked.Load(); b != nil {
		next = append(next, *b...)
	}
	c.blocked.Store(&next)
	c.epoch.Add(1)
	c.blockMu.Unlock()
	for i := range c.stripes {
		s := &c.stripes[i]
		s.mu.Lock()
		s.gen++
		for j := 0; j < len(s.clock); {
			if e := s.clock[j]; uint32(e.slot) >= start && uint32(e.slot) < end {
				s.remove(e) // moves the last entry to j
			} else {
				j++
			}
		}
		s.mu.Unlock()
	}
	var once sync.Once
	return func() {
		once.Do(func() {
			c.blockMu.Lock()
			defer c.blockMu.Unlock()
			cur := *c.blocked.Load()
			next := make([]slotRange, 0, len(cur))
			removed := false
			for _, b := range cur {
				if !removed && b == r {
					removed = true
					continue
				}
				next = append(next, b)
			}
			if len(next) == 0 {
				c.blocked.Store(nil)
			} else {
				c.blocked.Store(&next)
			}
			c.epoch.Add(1)
		})
	}
}

// Stats returns the cache's counters and size; zero for a nil cache.
func (c *RowCache) Stats() RowCacheStats {
	if c == nil {
		return RowCacheStats{}
	}
	var st RowCacheStats
	for i := range c.stripes {
		s := &c.stripes[i]
		s.mu.RLock()
		st.Hits += s.hits.Load()
		st.Misses += s.misses.Load()
		st.Fills += s.fills
		st.Evictions += s.evictions
		st.Entries += int64(len(s.clock))
		st.Bytes += s.bytes
		s.mu.RUnlock()
	}
	return st
}
