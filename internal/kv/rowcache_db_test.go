package kv_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shoaldb/shoal/internal/kv"
)

// Every kind of write is seen by the next read of a key the row cache
// holds, and repeated reads are served by the cache.
func TestDBRowCacheFollowsWrites(t *testing.T) {
	e := startDB(t, kv.Options{})
	ctx := testCtx(t)
	k := keyInShard(2, "rc")
	e.mustPut(t, k, "v1", kv.PutOptions{})
	// cache reads k, checking its value, and that the second read hit.
	cache := func(want string, wantFound bool) {
		t.Helper()
		for i := range 2 {
			before := e.rows.Stats().Hits
			v, found := e.mustGet(t, k)
			if found != wantFound || v != want {
				t.Fatalf("get %q: %q, %v; want %q, %v", k, v, found, want, wantFound)
			}
			if hit := e.rows.Stats().Hits > before; wantFound && i == 1 && !hit {
				t.Fatalf("the second read of %q missed the row cache", k)
			}
		}
	}
	cache("v1", true)
	e.mustPut(t, k, "v2", kv.PutOptions{})
	cache("v2", true)
	if _, err := e.db.IncrBy(ctx, []byte(k), 1, kv.WriteOptions{}); !errors.Is(err, kv.ErrNotInteger) {
		t.Fatalf("incr of a string: %v", err)
	}
	cache("v2", true) // a failed command writes nothing
	e.mustPut(t, k, "10", kv.PutOptions{})
	if _, err := e.db.IncrBy(ctx, []byte(k), 5, kv.WriteOptions{}); err != nil {
		t.Fatal(err)
	}
	cache("15", true)
	if _, err := e.db.Append(ctx, []byte(k), []byte("x"), kv.WriteOptions{}); err != nil {
		t.Fatal(err)
	}
	cache("15x", true)
	if _, err := e.db.CompareAndSet(ctx, []byte(k), []byte("15x"), []byte("cas"), kv.CASOptions{}); err != nil {
		t.Fatal(err)
	}
	cache("cas", true)
	// A cached value expires by the clock, as a stored one does.
	if _, err := e.db.Expire(ctx, []byte(k), e.clock.Now().Add(time.Second), kv.WriteOptions{}); err != nil {
		t.Fatal(err)
	}
	cache("cas", true)
	e.clock.Advance(2 * time.Second)
	cache("", false)
	e.mustPut(t, k, "back", kv.PutOptions{})
	cache("back", true)
	if _, err := e.db.Delete(ctx, []byte(k), kv.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	cache("", false)
	// The caller owns what Get returns: changing it changes nothing cached.
	e.mustPut(t, k, "mine", kv.PutOptions{})
	cache("mine", true)
	v, _, err := e.db.Get(ctx, []byte(k), kv.ReadOptions{})
	if err != nil {
		t.Fatal(err)
	}
	copy(v.Data, "XXXX")
	cache("mine", true)
}

// Reads never go back in time: once a write of a counter is acknowledged,
// every read that starts later returns it or a later one, and each
// reader's values never decrease, while one writer moves the counter on
// and readers fill and hit the row cache. A write that does not drop its
// key from the cache fails this at once (checked by removing the state
// machine's begin calls); races in the narrow window between an engine
// read and a write's commit it catches only by chance, which the ticket
// tests in rowcache_test.go pin down instead.
func TestDBRowCacheReadsNeverGoBack(t *testing.T) {
	e := startDB(t, kv.Options{})
	// A generous deadline: under the race detector on a loaded machine the
	// readers slow the writers down a lot.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const writes, readers = 400, 6
	// Several keys, some sharing a shard, so that batches hold several
	// writes and readers of different keys share cache stripes.
	ks := []string{keyInShard(1, "c"), keyInShard(1, "d"), keyInShard(3, "c")}
	acked := make([]atomic.Int64, len(ks))
	for _, k := range ks {
		e.mustPut(t, k, "0", kv.PutOptions{})
	}
	var wg, writers sync.WaitGroup
	errc := make(chan error, readers+len(ks))
	done := make(chan struct{})
	for i, k := range ks {
		writers.Add(1)
		go func() {
			defer writers.Done()
			for n := int64(1); n <= writes; n++ {
				if _, err := e.db.Put(ctx, []byte(k), []byte(strconv.FormatInt(n, 10)), kv.PutOptions{}); err != nil {
					errc <- fmt.Errorf("put %s=%d: %w", k, n, err)
					return
				}
				acked[i].Store(n)
			}
		}()
	}
	for r := range readers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			last := make([]int64, len(ks))
			for j := 0; ; j++ {
				select {
				case <-done:
					return
				default:
				}
				i := (j + r) % len(ks)
				floor := acked[i].Load()
				v, found, err := e.db.Get(ctx, []byte(ks[i]), kv.ReadOptions{})
				if err != nil || !found {
					errc <- fmt.Errorf("get %s: found %v, %v", ks[i], found, err)
					return
				}
				n, _ := strconv.ParseInt(string(v.Data), 10, 64)
				if n < floor || n < last[i] {
					errc <- fmt.Errorf("reader %d: %s read %d after %d was acknowledged and %d read", r, ks[i], n, floor, last[i])
					return
				}
				last[i] = n
			}
		}()
	}
	// Stop the readers once the writers are done.
	writers.Wait()
	close(done)
	wg.Wait()
	close(errc)
	for err := range errc {
		t.Fatal(err)
	}
	st := e.rows.Stats()
	if st.Hits == 0 || st.Fills == 0 {
		t.Fatalf("row cache stats %+v: the test did not use the cache", st)
	}
	t.Logf("row cache: %+v", st)
}
