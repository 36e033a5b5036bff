package client_test

import (
	"context"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shoaldb/shoal/client"
	tc "github.com/shoaldb/shoal/internal/testcluster"
)

// A node stopped while it serves reads that need no Raft round (stale
// reads, scans of its own replica) stops cleanly: its engine closes only
// once the last of them returned.
func TestNodeStopsUnderStaleReads(t *testing.T) {
	c, cl := startCluster(t, 3)
	ctx := ctxFor(t, 60*time.Second)
	value := make([]byte, 16<<10)
	for i := range 400 {
		if _, err := cl.Put(ctx, []byte("k"+strconv.Itoa(i)), value); err != nil {
			t.Fatal(err)
		}
	}
	stale, err := client.Open(ctx, c.MasterAddrs(), client.WithStaleReads())
	if err != nil {
		t.Fatal(err)
	}
	defer stale.Close()
	rctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var reads atomic.Int64
	for g := range 16 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := g; rctx.Err() == nil; i++ {
				if i%2 == 0 {
					_, _, _ = stale.Get(rctx, []byte("k"+strconv.Itoa(i%400)))
				} else {
					sc := stale.Scan(rctx, client.ScanOptions{})
					for sc.Next() {
					}
				}
				reads.Add(1)
			}
		}()
	}
	// Reads are flowing before the stop.
	if err := tc.WaitFor(ctx, func() error {
		if n := reads.Load(); n < 100 {
			return fmt.Errorf("%d reads", n)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	c.Nodes[0].Stop()
	cancel()
	wg.Wait()
}
