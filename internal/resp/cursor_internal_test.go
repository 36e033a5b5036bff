package resp

import (
	"testing"
	"time"
)

// TestCursorCache: a SCAN cursor can be used again until its command has
// answered (a SCAN that failed with TRYAGAIN is sent again with the same
// cursor), and a full cache forgets its oldest cursors first, never one
// a scan has just been given.
func TestCursorCache(t *testing.T) {
	cc := newCursorCache(3, time.Hour)
	a := cc.put(scanPos{slot: 1})
	if _, ok := cc.get(a); !ok {
		t.Fatal("cursor gone after its first use")
	}
	if p, ok := cc.get(a); !ok || p.slot != 1 {
		t.Fatalf("cursor used again: %v %v; want slot 1", p, ok)
	}
	cc.drop(a)
	if _, ok := cc.get(a); ok {
		t.Fatal("cursor still there after its command answered")
	}
	ids := []uint64{cc.put(scanPos{slot: 2}), cc.put(scanPos{slot: 3}), cc.put(scanPos{slot: 4})}
	newest := cc.put(scanPos{slot: 5})
	if _, ok := cc.get(ids[0]); ok {
		t.Fatal("the oldest cursor was kept in a full cache")
	}
	for _, id := range append(ids[1:], newest) {
		if _, ok := cc.get(id); !ok {
			t.Fatalf("cursor %d forgotten while an older one was there", id)
		}
	}
	expired := newCursorCache(3, -time.Nanosecond)
	if _, ok := expired.get(expired.put(scanPos{})); ok {
		t.Fatal("an expired cursor was accepted")
	}
}
