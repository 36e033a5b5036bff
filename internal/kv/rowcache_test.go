package kv

import (
	"bytes"
	"fmt"
	"testing"

	"github.com/shoaldb/shoal/internal/keys"
	"github.com/shoaldb/shoal/internal/storage"
)

func cached(c *RowCache, dk []byte) (string, bool) {
	raw, _, hit := c.lookup(dk)
	return string(raw), hit
}

func TestRowCacheFillAndLookup(t *testing.T) {
	c := NewRowCache(1 << 20)
	dk := keys.DataKey(7, []byte("k"))
	if _, hit := cached(c, dk); hit {
		t.Fatal("hit in an empty cache")
	}
	_, tk, _ := c.lookup(dk)
	c.fill(7, dk, []byte("v1"), tk)
	if v, hit := cached(c, dk); !hit || v != "v1" {
		t.Fatalf("after fill: %q, %v", v, hit)
	}
	st := c.Stats()
	if st.Entries != 1 || st.Hits != 1 || st.Misses != 2 || st.Fills != 1 {
		t.Fatalf("stats %+v", st)
	}
	_, hitTicket, _ := c.lookup(dk)
	c.fill(7, dk, []byte("other"), hitTicket) // a hit's ticket fills nothing
	if v, _ := cached(c, dk); v != "v1" {
		t.Fatalf("a fill with a hit's ticket replaced the entry: %q", v)
	}
	if NewRowCache(0) != nil || NewRowCache(-1) != nil {
		t.Fatal("a cache of no bytes is not nil")
	}
	var none *RowCache
	none.BlockSlots(0, 10)() // a nil cache's BlockSlots does nothing
	if none.Stats() != (RowCacheStats{}) {
		t.Fatal("a nil cache has stats")
	}
}

// A fill whose engine read may predate a write of its key, or a change of
// its slots, is refused; one that follows them is accepted.
func TestRowCacheRefusesStaleFills(t *testing.T) {
	c := NewRowCache(1 << 20)
	dk := keys.DataKey(7, []byte("k"))
	fillAfter := func(between func()) bool {
		_, tk, hit := c.lookup(dk)
		if hit {
			t.Fatal("unexpected hit")
		}
		between()
		c.fill(7, dk, []byte("v"), tk)
		_, hit = cached(c, dk)
		if hit {
			c.begin(dk) // empty it again for the next case
			c.end(dk)
		}
		return hit
	}
	if !fillAfter(func() {}) {
		t.Fatal("a fill with nothing in between was refused")
	}
	// Ticket, then a write begins (and ends): the read may be older.
	if fillAfter(func() { c.begin(dk); c.end(dk) }) {
		t.Fatal("a fill across a write was accepted")
	}
	// A write under way: the ticket itself refuses.
	c.begin(dk)
	if fillAfter(func() {}) {
		t.Fatal("a fill during a write was accepted")
	}
	c.end(dk)
	// Two writes of one key under way: fills stay refused until both end.
	c.begin(dk)
	c.begin(dk)
	c.end(dk)
	if fillAfter(func() {}) {
		t.Fatal("a fill while a second write was under way was accepted")
	}
	c.end(dk)
	if !fillAfter(func() {}) {
		t.Fatal("a fill after the writes ended was refused")
	}
	// A write of another key of the same stripe also refuses (coarse, but
	// never stale).
	other := sameStripe(t, c, dk)
	if fillAfter(func() { c.begin(other); c.end(other) }) {
		t.Fatal("a fill across a write in its stripe was accepted")
	}
	// Slots blocked between ticket and fill, or blocked at fill time.
	if fillAfter(func() { c.BlockSlots(0, 100)() }) {
		t.Fatal("a fill across a block of its slots was accepted")
	}
	unblock := c.BlockSlots(5, 8)
	if fillAfter(func() {}) {
		t.Fatal("a fill of a blocked slot was accepted")
	}
	unblock()
	unblock() // idempotent
	if !fillAfter(func() {}) {
		t.Fatal("a fill after unblocking was refused")
	}
}

func sameStripe(t *testing.T, c *RowCache, dk []byte) []byte {
	for i := range 10000 {
		o := keys.DataKey(7, fmt.Appendf(nil, "other-%d", i))
		if c.stripe(o) == c.stripe(dk) {
			return o
		}
	}
	t.Fatal("no key in the same stripe")
	return nil
}

// A write drops the key at once; BlockSlots drops exactly its slots.
func TestRowCacheDrops(t *testing.T) {
	c := NewRowCache(1 << 20)
	fill := func(slot uint16, k string) []byte {
		dk := keys.DataKey(slot, []byte(k))
		_, tk, _ := c.lookup(dk)
		c.fill(slot, dk, []byte(k), tk)
		if _, hit := cached(c, dk); !hit {
			t.Fatalf("%s not cached", k)
		}
		return dk
	}
	a := fill(1, "a")
	c.begin(a)
	if _, hit := cached(c, a); hit {
		t.Fatal("a written key is still cached")
	}
	c.end(a)
	var in, out [][]byte
	for i := range 50 {
		in = append(in, fill(10+uint16(i%5), fmt.Sprintf("in-%d", i)))
		out = append(out, fill(20+uint16(i%5), fmt.Sprintf("out-%d", i)))
	}
	unblock := c.BlockSlots(10, 15)
	defer unblock()
	for _, dk := range in {
		if _, hit := cached(c, dk); hit {
			t.Fatalf("%q survived BlockSlots", dk)
		}
	}
	for _, dk := range out {
		if _, hit := cached(c, dk); !hit {
			t.Fatalf("%q outside the blocked slots was dropped", dk)
		}
	}
	if st := c.Stats(); st.Entries != int64(len(out)) {
		t.Fatalf("%d entries, want %d", st.Entries, len(out))
	}
}

// The cache stays within its bytes, and keeps entries that are read over
// ones that are not (second chance).
func TestRowCacheEvicts(t *testing.T) {
	const budget = 64 << 10
	c := NewRowCache(budget)
	val := make([]byte, 100)
	hot := keys.DataKey(1, []byte("hot"))
	_, tk, _ := c.lookup(hot)
	c.fill(1, hot, val, tk)
	for i := range 5000 {
		dk := keys.DataKey(1, fmt.Appendf(nil, "cold-%d", i))
		_, tk, _ := c.lookup(dk)
		c.fill(1, dk, val, tk)
		if _, hit := cached(c, hot); !hit {
			t.Fatalf("the hot key was evicted after %d cold fills", i)
		}
		if st := c.Stats(); st.Bytes > budget {
			t.Fatalf("%d bytes cached, over the budget of %d", st.Bytes, budget)
		}
	}
	st := c.Stats()
	if st.Evictions == 0 || st.Entries < 100 {
		t.Fatalf("stats %+v: want evictions and a cache still in use", st)
	}
	// Values too large for a quarter of a stripe's share are not cached.
	big := keys.DataKey(1, []byte("big"))
	_, tk, _ = c.lookup(big)
	c.fill(1, big, make([]byte, 200), tk) // over a quarter of a stripe's 1 KiB with its key and overhead
	if _, hit := cached(c, big); hit {
		t.Fatal("a value over a quarter of its stripe's share was cached")
	}
}

// BenchmarkRowCache measures a hit, and a miss followed by its fill (with
// evictions once the cache is full), on 100-byte values; the engine read a
// hit saves is in BenchmarkEngineGet.
//
//	go test -run '^$' -bench 'RowCache|EngineGet' ./internal/kv/
func BenchmarkRowCache(b *testing.B) {
	val := make([]byte, 100)
	dks := make([][]byte, 100000)
	for i := range dks {
		dks[i] = keys.DataKey(uint16(i%keys.SlotCount), fmt.Appendf(nil, "key-%d", i))
	}
	b.Run("hit", func(b *testing.B) {
		c := NewRowCache(64 << 20)
		for i, dk := range dks {
			_, tk, _ := c.lookup(dk)
			c.fill(uint16(i%keys.SlotCount), dk, val, tk)
		}
		b.ResetTimer()
		b.RunParallel(func(pb *testing.PB) {
			i := 0
			for pb.Next() {
				if _, _, hit := c.lookup(dks[i%len(dks)]); !hit {
					b.Fatal("miss")
				}
				i += 7919
			}
		})
	})
	b.Run("miss-fill-evict", func(b *testing.B) {
		c := NewRowCache(1 << 20) // holds about 4,000 of the 100,000 keys
		b.ResetTimer()
		for i := 0; i < b.N; i++ {
			dk := dks[i%len(dks)]
			if _, tk, hit := c.lookup(dk); !hit {
				c.fill(uint16(i%keys.SlotCount), dk, bytes.Clone(val), tk)
			}
		}
	})
}

// BenchmarkEngineGet reads 100-byte values of 100,000 keys just written to
// an engine sized as a node's (32 MiB memtables, 128 MiB cache): what a
// row cache miss costs beside the cache's own work.
func BenchmarkEngineGet(b *testing.B) {
	eng, err := storage.Open(storage.Options{Dir: b.TempDir(), CacheBytes: 128 << 20, MemTableBytes: 32 << 20, Logger: discardLogger()})
	if err != nil {
		b.Fatal(err)
	}
	defer eng.Close()
	val := make([]byte, 100)
	dks := make([][]byte, 100000)
	for i := range dks {
		dks[i] = keys.DataKey(uint16(i%keys.SlotCount), fmt.Appendf(nil, "key-%d", i))
	}
	for i := 0; i < len(dks); i += 1000 {
		bt := eng.NewBatch()
		for _, dk := range dks[i : i+1000] {
			if err := bt.Set(dk, val, nil); err != nil {
				b.Fatal(err)
			}
		}
		if err := bt.Commit(false); err != nil {
			b.Fatal(err)
		}
		bt.Close()
	}
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		i := 0
		for pb.Next() {
			if _, ok, err := eng.Get(dks[i%len(dks)]); err != nil || !ok {
				b.Fatal("missing key", err)
			}
			i += 7919
		}
	})
}
