package node_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shoaldb/shoal/internal/raftstore"
	tc "github.com/shoaldb/shoal/internal/testcluster"
)

// measureWrites runs writers putting 100-byte values into the cluster until
// stop closes, and returns ops/s and p99 latency.
func measureWrites(ctx context.Context, b *testing.B, r *router, writers int, stop <-chan struct{}) (opsPerSec float64, p99 time.Duration) {
	lat := make([][]time.Duration, writers)
	var n atomic.Int64
	value := make([]byte, 100)
	start := time.Now()
	var wg sync.WaitGroup
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				t0 := time.Now()
				if err := r.put(ctx, fmt.Appendf(nil, "w-%d-%d-%d", w, i, t0.UnixNano()), value); err != nil {
					b.Errorf("write failed: %v", err)
					return
				}
				lat[w] = append(lat[w], time.Since(t0))
				n.Add(1)
			}
		}()
	}
	wg.Wait()
	all := slices.Concat(lat...)
	slices.Sort(all)
	if len(all) == 0 {
		return 0, 0
	}
	return float64(n.Load()) / time.Since(start).Seconds(), all[len(all)*99/100]
}

// BenchmarkMoveShard moves one replica of a shard holding SHOAL_BENCH_MOVE_MB
// MiB (default 1024) from node 1 to node 4 of a 4-node in-process
// cluster, while 16 writers write to the same shard. It reports the move's
// time and MiB/s, and the writers' throughput and p99 latency during the
// move against the same measured for 5 s before it (once the load's
// compactions are done). Run it once:
//
//	go test -run '^$' -bench BenchmarkMoveShard -benchtime 1x -timeout 30m ./internal/node/
func BenchmarkMoveShard(b *testing.B) {
	mb := 1024
	if v, err := strconv.Atoi(os.Getenv("SHOAL_BENCH_MOVE_MB")); err == nil && v > 0 {
		mb = v
	}
	for _, tt := range []struct {
		name string
		rate int64
	}{{"throttle=128MiBps", 0}, {"throttle=none", -1}} {
		b.Run(tt.name, func(b *testing.B) {
			c := tc.Start(b, tc.Options{Nodes: 4, Shards: 1, Replicas: 3,
				StoreOptions: func(_ uint64, o *raftstore.Options) { o.SnapshotBytesPerSec = tt.rate }})
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
			defer cancel()
			if err := c.WaitForLeaders(ctx); err != nil {
				b.Fatal(err)
			}
			r := newRouter(c)
			// Load with 64 KiB values from 16 writers.
			value := make([]byte, 64<<10)
			for i := range value {
				value[i] = byte(i * 7)
			}
			keys := mb * 16
			var next atomic.Int64
			var wg sync.WaitGroup
			for range 16 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						i := next.Add(1)
						if i > int64(keys) {
							return
						}
						if err := r.put(ctx, fmt.Appendf(nil, "big-%d", i), value); err != nil {
							b.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			// Let compactions of the load finish, so that "before" measures
			// the cluster at rest, not digesting a gigabyte: none running,
			// and the estimated debt gone or (below Pebble's thresholds for
			// compacting, where it can stay) unchanged for 2 s.
			var debt uint64
			var since time.Time
			if err := tc.WaitFor(ctx, func() error {
				total := uint64(0)
				for _, n := range c.Nodes {
					m := n.Engine().Metrics()
					if m.Compact.NumInProgress > 0 {
						return fmt.Errorf("node %d compacting", n.ID)
					}
					total += m.Compact.EstimatedDebt
				}
				if total != debt || since.IsZero() {
					debt, since = total, time.Now()
				}
				if debt > 0 && time.Since(since) < 2*time.Second {
					return fmt.Errorf("compaction debt %d bytes", debt)
				}
				return nil
			}); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()

			stop := make(chan struct{})
			time.AfterFunc(5*time.Second, func() { close(stop) })
			beforeOps, beforeP99 := measureWrites(ctx, b, r, 16, stop)

			stop = make(chan struct{})
			type res struct {
				ops float64
				p99 time.Duration
			}
			during := make(chan res, 1)
			go func() {
				o, p := measureWrites(ctx, b, r, 16, stop)
				during <- res{o, p}
			}()
			start := time.Now()
			if _, err := c.MoveReplica(ctx, 1, 1, 4); err != nil {
				b.Fatal(err)
			}
			took := time.Since(start)
			close(stop)
			d := <-during
			b.StopTimer()
			b.ReportMetric(took.Seconds(), "move-s")
			b.ReportMetric(float64(mb)/took.Seconds(), "move-MiB/s")
			b.ReportMetric(beforeOps, "ops/s-before")
			b.ReportMetric(d.ops, "ops/s-during")
			b.ReportMetric(float64(beforeP99.Microseconds())/1000, "p99-ms-before")
			b.ReportMetric(float64(d.p99.Microseconds())/1000, "p99-ms-during")
		})
	}
}
