package node_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/shoaldb/shoal/internal/kv"
	"github.com/shoaldb/shoal/internal/raftstore"
	"github.com/shoaldb/shoal/internal/storage"
	tc "github.com/shoaldb/shoal/internal/testcluster"
)

// router sends each key to the node leading its shard, caching leaders and
// following NotLeader hints, like a smart client would.
type router struct {
	c       *tc.Cluster
	mu      sync.RWMutex
	leaders map[uint64]uint64
}

func newRouter(c *tc.Cluster) *router { return &router{c: c, leaders: map[uint64]uint64{}} }

func (r *router) put(ctx context.Context, key, value []byte) error {
	shard := r.c.ShardOf(key)
	for {
		r.mu.RLock()
		id := r.leaders[shard]
		r.mu.RUnlock()
		if id == 0 {
			n, err := r.c.Leader(shard)
			if err != nil {
				select {
				case <-ctx.Done():
					return err
				case <-time.After(5 * time.Millisecond):
				}
				continue
			}
			id = n.ID
		}
		_, err := r.c.Node(id).KV().Put(ctx, key, value, kv.PutOptions{})
		var nl *raftstore.NotLeaderError
		switch {
		case err == nil:
			r.mu.Lock()
			r.leaders[shard] = id
			r.mu.Unlock()
			return nil
		case errors.As(err, &nl) && nl.LeaderNode != 0:
			r.mu.Lock()
			r.leaders[shard] = nl.LeaderNode
			r.mu.Unlock()
		case tc.Retryable(err):
			r.mu.Lock()
			delete(r.leaders, shard)
			r.mu.Unlock()
		default:
			return err
		}
	}
}

// processCPU returns the CPU time (user and system) this process has used.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkReplicatedWrites measures replicated writes of 100-byte values
// on 3 in-process nodes x 64 shards x 3 replicas over gRPC on loopback, with
// real Pebble on disk, for 1, 16, 64 and 256 concurrent writers. Besides ns/op
// it reports ops/s, p50/p99 latency in microseconds, and syncs per 1000
// writes summed over the three nodes (group commit keeps it far below 3000,
// which is one sync per write per replica), the Pebble records (memtable
// inserts) per write on the three nodes, and the CPU time per write of the
// whole process (nodes, gRPC between them, and the writers).
//
//	go test -run '^$' -bench BenchmarkReplicatedWrites -benchtime 5s ./internal/node/
func BenchmarkReplicatedWrites(b *testing.B) {
	for _, writers := range []int{1, 16, 64, 256} {
		b.Run(fmt.Sprintf("writers=%d", writers), func(b *testing.B) {
			c := tc.Start(b, tc.Options{Nodes: 3, Shards: 64, Replicas: 3})
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
			defer cancel()
			if err := c.WaitForLeaders(ctx); err != nil {
				b.Fatal(err)
			}
			r := newRouter(c)
			value := make([]byte, 100)
			// Warm up: learn every leader and open every stream.
			for i := range 1024 {
				if err := r.put(ctx, fmt.Appendf(nil, "warm-%d", i), value); err != nil {
					b.Fatal(err)
				}
			}
			var before storage.Stats
			for _, n := range c.Nodes {
				st := n.Engine().Stats()
				before.Syncs += st.Syncs
				before.Records += st.Records
			}
			cpuBefore := processCPU(b)
			lat := make([][]time.Duration, writers)
			var next atomic.Int64
			var failed atomic.Int64
			b.ResetTimer()
			start := time.Now()
			var wg sync.WaitGroup
			for w := range writers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						i := next.Add(1)
						if i > int64(b.N) {
							return
						}
						t0 := time.Now()
						if err := r.put(ctx, fmt.Appendf(nil, "key-%d-%d", w, i), value); err != nil {
							failed.Add(1)
							continue
						}
						lat[w] = append(lat[w], time.Since(t0))
					}
				}()
			}
			wg.Wait()
			elapsed := time.Since(start)
			b.StopTimer()
			if f := failed.Load(); f > 0 {
				b.Fatalf("%d writes failed", f)
			}
			cpu := processCPU(b) - cpuBefore
			var after storage.Stats
			for _, n := range c.Nodes {
				st := n.Engine().Stats()
				after.Syncs += st.Syncs
				after.Records += st.Records
			}
			syncs := after.Syncs - before.Syncs
			all := slices.Concat(lat...)
			slices.Sort(all)
			pct := func(p float64) float64 {
				return float64(all[min(len(all)-1, int(p*float64(len(all))))].Microseconds())
			}
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "ops/s")
			b.ReportMetric(pct(0.50), "p50-µs")
			b.ReportMetric(pct(0.99), "p99-µs")
			b.ReportMetric(float64(syncs)*1000/float64(b.N), "syncs/1000-writes")
			b.ReportMetric(float64(after.Records-before.Records)/float64(b.N), "records/write")
			b.ReportMetric(float64(cpu.Microseconds())/float64(b.N), "cpu-µs/write")
		})
	}
}
