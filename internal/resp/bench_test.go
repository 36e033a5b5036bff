package resp_test

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/shoaldb/shoal/internal/resp"
	tc "github.com/shoaldb/shoal/internal/testcluster"
)

// BenchmarkRedis measures go-redis's ClusterClient against an in-process
// cluster like the playground's: a master and 3 nodes, 64 shards of 3
// replicas, real gRPC between the nodes and each node's Pebble on disk.
// 50 clients (goroutines sharing one ClusterClient that keeps up to 50
// connections per node) SET and GET 100-byte values on 10,000 keys, one
// command per round trip or in pipelines of 16. It reports commands per
// second and the p50 and p99 latency of one round trip (a command, or a
// whole pipeline).
//
//	go test -run '^$' -bench BenchmarkRedis -benchtime 10s ./internal/resp/
//
// As in the tests, the master's scheduler is paused once the leaders are
// even (21 or 22 per node), so that no leader moves during a measurement
// (docs/benchmarks.md).
func BenchmarkRedis(b *testing.B) {
	const (
		clients  = 50
		keyspace = 10000
		shards   = 64
	)
	c := startClusterShards(b, shards, resp.Options{})
	ctx := ctxFor(b, time.Hour)
	rc := clusterClient(b, c, &redis.ClusterOptions{PoolSize: clients})
	value := bytes.Repeat([]byte("v"), 100)
	key := func(i int) string { return "bench:" + strconv.Itoa(i) }
	// GET reads existing keys. (The last leader moves may still be
	// settling: retry through them.)
	for start := 0; start < keyspace; start += 500 {
		if err := tc.WaitFor(ctx, func() error {
			_, err := rc.Pipelined(ctx, func(p redis.Pipeliner) error {
				for i := start; i < start+500; i++ {
					p.Set(ctx, key(i), value, 0)
				}
				return nil
			})
			return err
		}); err != nil {
			b.Fatal(err)
		}
	}
	for _, depth := range []int{1, 16} {
		for _, op := range []string{"SET", "GET"} {
			b.Run(fmt.Sprintf("%s/pipeline=%d", op, depth), func(b *testing.B) {
				// one is a round trip: a command, or a pipeline of depth.
				one := func(rng *rand.Rand) error {
					if depth == 1 {
						k := key(rng.IntN(keyspace))
						if op == "SET" {
							return rc.Set(ctx, k, value, 0).Err()
						}
						return rc.Get(ctx, k).Err()
					}
					_, err := rc.Pipelined(ctx, func(p redis.Pipeliner) error {
						for range depth {
							if k := key(rng.IntN(keyspace)); op == "SET" {
								p.Set(ctx, k, value, 0)
							} else {
								p.Get(ctx, k)
							}
						}
						return nil
					})
					return err
				}
				var (
					next      atomic.Int64 // commands handed out
					mu        sync.Mutex
					latencies []time.Duration
					failed    error
					wg        sync.WaitGroup
				)
				b.ResetTimer()
				start := time.Now()
				for range clients {
					wg.Add(1)
					go func() {
						defer wg.Done()
						rng := rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))
						var mine []time.Duration
						var err error
						// Round trips until b.N commands are handed out.
						for err == nil && next.Add(int64(depth))-int64(depth) < int64(b.N) {
							t0 := time.Now()
							err = one(rng)
							mine = append(mine, time.Since(t0))
						}
						mu.Lock()
						defer mu.Unlock()
						latencies = append(latencies, mine...)
						if err != nil && failed == nil {
							failed = err
						}
					}()
				}
				wg.Wait()
				elapsed := time.Since(start)
				b.StopTimer()
				if failed != nil {
					b.Fatal(failed)
				}
				slices.Sort(latencies)
				pct := func(p float64) float64 {
					return float64(latencies[int(p*float64(len(latencies)-1))].Microseconds()) / 1000
				}
				b.ReportMetric(float64(len(latencies)*depth)/elapsed.Seconds(), "ops/s")
				b.ReportMetric(pct(0.50), "p50-ms")
				b.ReportMetric(pct(0.99), "p99-ms")
			})
		}
	}
}
