package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"runtime/pprof"
	"strings"
	"sync/atomic"
	"text/tabwriter"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/spf13/cobra"
	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/shoaldb/shoal/client"
	"github.com/shoaldb/shoal/internal/bench"
)

// clientTarget drives the cluster through the Go client.
type clientTarget struct{ c *client.Client }

func (t clientTarget) Get(ctx context.Context, key []byte) error {
	_, _, err := t.c.Get(ctx, key)
	return err
}

func (t clientTarget) Put(ctx context.Context, key, value []byte) error {
	_, err := t.c.Put(ctx, key, value)
	return err
}

// respTarget drives a Redis Cluster (Shoal's Redis front end or a real one)
// through go-redis's ClusterClient: GET and SET, reads at each slot's
// master (no READONLY), pipelines with Pipelined.
type respTarget struct{ c *redis.ClusterClient }

func (t respTarget) Get(ctx context.Context, key []byte) error {
	if err := t.c.Get(ctx, string(key)).Err(); err != nil && !errors.Is(err, redis.Nil) {
		return fmt.Errorf("GET: %w", err)
	}
	return nil
}

func (t respTarget) Put(ctx context.Context, key, value []byte) error {
	if err := t.c.Set(ctx, string(key), value, 0).Err(); err != nil {
		return fmt.Errorf("SET: %w", err)
	}
	return nil
}

// Pipeline sends the operations with one Pipelined call: go-redis groups
// them by node and writes each node's group in one round trip.
func (t respTarget) Pipeline(ctx context.Context, ops []bench.Op) error {
	cmds := make([]redis.Cmder, len(ops))
	_, err := t.c.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, op := range ops {
			if op.Read {
				cmds[i] = p.Get(ctx, string(op.Key))
			} else {
				cmds[i] = p.Set(ctx, string(op.Key), op.Value, 0)
			}
		}
		return nil
	})
	for i, c := range cmds {
		if c == nil {
			continue
		}
		if e := c.Err(); e != nil && !errors.Is(e, redis.Nil) {
			ops[i].Err = fmt.Errorf("%s: %w", strings.ToUpper(c.Name()), e)
		}
	}
	if err != nil && !errors.Is(err, redis.Nil) {
		return fmt.Errorf("pipeline: %w", err)
	}
	return nil
}

// etcdTarget drives an etcd cluster through its v3 KV API over gRPC, one
// connection per endpoint, the operations spread over them in turn (as
// etcd's own client balances). Ranges are linearizable (Serializable
// false, etcd's default): a member confirms with the leader (ReadIndex)
// before it answers.
type etcdTarget struct {
	kvs   []etcdserverpb.KVClient
	conns []*grpc.ClientConn
	next  atomic.Uint64
}

func newEtcdTarget(endpoints []string) (*etcdTarget, error) {
	t := &etcdTarget{}
	for _, ep := range endpoints {
		addr := strings.TrimPrefix(strings.TrimPrefix(ep, "http://"), "https://")
		if strings.HasPrefix(ep, "https://") {
			t.Close()
			return nil, fmt.Errorf("etcd endpoint %s: TLS is not supported", ep)
		}
		cc, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Close()
			return nil, fmt.Errorf("etcd endpoint %s: %w", ep, err)
		}
		t.conns = append(t.conns, cc)
		t.kvs = append(t.kvs, etcdserverpb.NewKVClient(cc))
	}
	return t, nil
}

func (t *etcdTarget) kv() etcdserverpb.KVClient {
	return t.kvs[int((t.next.Add(1)-1)%uint64(len(t.kvs)))]
}

func (t *etcdTarget) Get(ctx context.Context, key []byte) error {
	if _, err := t.kv().Range(ctx, &etcdserverpb.RangeRequest{Key: key}); err != nil {
		return fmt.Errorf("etcd range: %w", err)
	}
	return nil
}

func (t *etcdTarget) Put(ctx context.Context, key, value []byte) error {
	if _, err := t.kv().Put(ctx, &etcdserverpb.PutRequest{Key: key, Value: value}); err != nil {
		return fmt.Errorf("etcd put: %w", err)
	}
	return nil
}

// check reads one key through every endpoint, so that a wrong address
// fails before the run instead of as a run of errors.
func (t *etcdTarget) check(ctx context.Context) error {
	for i, kv := range t.kvs {
		if _, err := kv.Range(ctx, &etcdserverpb.RangeRequest{Key: []byte("shoal-bench-probe")}); err != nil {
			return fmt.Errorf("etcd %s: %w", t.conns[i].Target(), err)
		}
	}
	return nil
}

func (t *etcdTarget) Close() error {
	var errs []error
	for _, cc := range t.conns {
		errs = append(errs, cc.Close())
	}
	return errors.Join(errs...)
}

// benchFlags are bench's own flags beside the client flags.
type benchFlags struct {
	o         bench.Options
	workload  string
	dist      string
	target    string
	endpoints string
	password  string
	// respClient is the Redis Cluster client of --target resp: builtin or
	// go-redis.
	respClient string
	// cpuProfile names a file for the load generator's own CPU profile.
	cpuProfile string
	// unary turns off the Go client's command batching.
	unary bool
}

func newBenchCmd() *cobra.Command {
	f := &clientFlags{}
	b := &benchFlags{}
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Load a cluster (or etcd, or Redis Cluster) with a YCSB-style workload and measure it",
		Long: `Drive a store with a YCSB-style workload and report throughput and latency
(p50, p99, p99.9, max from a histogram with 1.6% resolution). Workloads: load
(insert every record once), a (50% reads, 50% updates), b (95/5), c (reads
only), w (updates only). Run load first so that reads find their keys.

--target chooses the store and the client:

  shoal  Shoal through the Go client (default), at --master.
  resp   a Redis Cluster: Shoal's Redis port or a real Redis Cluster, at
         --endpoints (default 127.0.0.1:6380); GET and SET at each slot's
         master. --resp-client builtin (default) is a minimal cluster
         client that follows MOVED and ASK and costs little CPU per
         operation, so that on a machine shared with the servers the load
         generator takes less from them; go-redis is go-redis's
         ClusterClient, a full client as applications use.
  etcd   etcd's v3 KV API over gRPC (Put and linearizable Range), one
         connection per member, at --endpoints (default 127.0.0.1:2379).

--pipeline N sends N operations per round trip, grouped by node (resp
only); each operation is counted, and its latency is that of its
pipeline's round trip. The Go client and etcd's KV API send one request per
call (a Shoal Batch or an etcd Txn is atomic, not a pipeline), so shoal and
etcd take only --pipeline 1: raise --concurrency for more requests in flight.

  shoal bench --workload load --records 100000
  shoal bench --workload a --duration 30s --concurrency 64 --distribution zipfian
  shoal bench --target resp --endpoints 127.0.0.1:6380 --workload c --pipeline 16
  shoal bench --target etcd --endpoints 127.0.0.1:2379,127.0.0.1:22379 --workload w

By default the loop is closed: each client sends its next operation when
the last one was answered, so the latencies follow the throughput and a
stall delays only one operation per client. --rate R sends R operations a
second on a fixed schedule instead and counts each latency from the
operation's scheduled start (run below the target's capacity, the same R
for every system compared).

A progress line is printed every second on stderr; --json prints the result
for scripts.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runBench(cmd.Context(), f, b, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	f.add(cmd)
	fl := cmd.Flags()
	fl.StringVar(&b.target, "target", "shoal", "what to drive: shoal (Go client), resp (Redis Cluster protocol) or etcd")
	fl.StringVar(&b.endpoints, "endpoints", "", "resp and etcd: comma-separated addresses of the cluster's members (default 127.0.0.1:6380 for resp, 127.0.0.1:2379 for etcd)")
	fl.StringVar(&b.respClient, "resp-client", "builtin", "resp: the client, builtin (least CPU per operation) or go-redis")
	fl.StringVar(&b.password, "password", envOr("SHOAL_RESP_PASSWORD", ""), "resp: password for AUTH (env SHOAL_RESP_PASSWORD)")
	fl.StringVar(&b.workload, "workload", "a", "load, a, b, c or w")
	fl.IntVar(&b.o.Records, "records", 100000, "number of keys")
	fl.IntVar(&b.o.ValueSize, "value-size", 100, "bytes per written value")
	fl.IntVar(&b.o.Concurrency, "concurrency", 64, "concurrent clients")
	fl.IntVar(&b.o.Pipeline, "pipeline", 1, "operations per round trip per client (above 1: resp only)")
	fl.DurationVar(&b.o.Duration, "duration", 30*time.Second, "how long to run (not for load)")
	fl.IntVar(&b.o.Ops, "ops", 0, "stop after this many operations (0: run for --duration)")
	fl.StringVar(&b.dist, "distribution", "uniform", "key distribution: uniform or zipfian")
	fl.Float64Var(&b.o.Rate, "rate", 0, "open loop: send this many operations per second in all, and count each one's latency from its scheduled start, so that stalls show in every operation they delay (0: closed loop, each client sends when its last answer came)")
	fl.BoolVar(&b.unary, "unary", false, "shoal: send every request as its own unary gRPC call, not over the node's BatchCommands stream (client.WithoutCommandBatching), to measure what batching saves")
	fl.StringVar(&b.cpuProfile, "cpu-profile", "", "write the load generator's own CPU profile (pprof) to this file, to see what driving the target costs")
	return cmd
}

// benchResult is what --json prints: the run's result and its target.
type benchResult struct {
	Target string `json:"target"`
	*bench.Result
}

func runBench(ctx context.Context, f *clientFlags, b *benchFlags, out, errw io.Writer) error {
	o := b.o
	w, err := bench.LookupWorkload(b.workload)
	if err != nil {
		return err
	}
	o.Workload = w
	switch b.dist {
	case "uniform":
	case "zipfian":
		o.Zipfian = true
	default:
		return fmt.Errorf("--distribution %q: want uniform or zipfian", b.dist)
	}
	if o.Pipeline < 1 {
		return fmt.Errorf("--pipeline %d: want 1 or more", o.Pipeline)
	}
	if o.Rate < 0 {
		return fmt.Errorf("--rate %g: want 0 (closed loop) or more", o.Rate)
	}
	if o.Pipeline > 1 && b.target != "resp" {
		return fmt.Errorf("--pipeline %d: only --target resp pipelines; the Go client and etcd's KV API send one request per call (raise --concurrency instead)", o.Pipeline)
	}
	if b.unary && b.target != "shoal" {
		return fmt.Errorf("--unary is for --target shoal (the Go client), not %s", b.target)
	}
	if b.target != "shoal" && b.target != "resp" && b.target != "etcd" {
		return fmt.Errorf("--target %q: want shoal, resp or etcd", b.target)
	}
	if b.respClient != "builtin" && b.respClient != "go-redis" {
		return fmt.Errorf("--resp-client %q: want builtin or go-redis", b.respClient)
	}
	if o.Concurrency < 1 {
		return fmt.Errorf("--concurrency %d: want 1 or more", o.Concurrency)
	}
	o.Timeout = f.timeout
	var pf *os.File
	if b.cpuProfile != "" {
		if pf, err = os.Create(b.cpuProfile); err != nil {
			return fmt.Errorf("--cpu-profile: %w", err)
		}
		defer pf.Close()
	}
	target, closeTarget, err := openBenchTarget(ctx, f, b, o.Concurrency)
	if err != nil {
		return err
	}
	defer closeTarget()
	if pf != nil {
		if err := pprof.StartCPUProfile(pf); err != nil {
			return fmt.Errorf("--cpu-profile: %w", err)
		}
		defer pprof.StopCPUProfile()
	}
	o.Progress = func(p bench.Progress) {
		fmt.Fprintf(errw, "%6.0fs  %10d ops  %9.0f ops/s  %d errors\n", p.Elapsed.Seconds(), p.Ops, p.OpsPerSec, p.Errors)
	}
	res, err := bench.Run(ctx, target, o)
	if err != nil {
		return err
	}
	if f.json {
		if err := printJSON(out, benchResult{Target: b.target, Result: res}); err != nil {
			return err
		}
	} else {
		fmt.Fprintf(out, "%s, workload %s: %d records, %d-byte values, %d clients, pipeline %d, %s keys\n", b.target, res.Workload,
			res.Records, res.ValueSize, res.Concurrency, res.Pipeline, b.dist)
		fmt.Fprintf(out, "%d ops in %.1fs: %.0f ops/s, %d errors\n\n", res.Ops, res.Seconds, res.OpsPerSec, res.Errors)
		tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "OP\tCOUNT\tMEAN ms\tP50 ms\tP99 ms\tP99.9 ms\tMAX ms\t")
		for _, row := range []struct {
			name string
			l    bench.Latency
		}{{"read", res.Read}, {"update", res.Update}, {"all", res.All}} {
			if row.l.Count == 0 {
				continue
			}
			fmt.Fprintf(tw, "%s\t%d\t%.2f\t%.2f\t%.2f\t%.2f\t%.2f\t\n", row.name, row.l.Count, row.l.Mean, row.l.P50, row.l.P99, row.l.P999, row.l.Max)
		}
		tw.Flush()
	}
	if res.Errors > 0 {
		return fmt.Errorf("%d operations failed; first: %s", res.Errors, res.FirstError)
	}
	return nil
}

// openBenchTarget connects to the target within --timeout and returns it
// with the function that closes it.
func openBenchTarget(ctx context.Context, f *clientFlags, b *benchFlags, concurrency int) (bench.Target, func(), error) {
	octx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	switch b.target {
	case "resp":
		addrs := splitList(b.endpoints, "127.0.0.1:6380")
		if b.respClient == "builtin" {
			c, err := bench.NewRESPCluster(octx, bench.RESPOptions{Addrs: addrs, Password: b.password, DialTimeout: f.timeout})
			if err != nil {
				return nil, nil, fmt.Errorf("redis cluster %s: %w", strings.Join(addrs, ","), err)
			}
			return c, func() { c.Close() }, nil
		}
		c := redis.NewClusterClient(&redis.ClusterOptions{
			Addrs:    addrs,
			Password: b.password,
			// Every client may need a connection to every node at once.
			PoolSize:     concurrency,
			ReadTimeout:  f.timeout,
			WriteTimeout: f.timeout,
		})
		if err := c.ForEachShard(octx, func(ctx context.Context, n *redis.Client) error { return n.Ping(ctx).Err() }); err != nil {
			c.Close()
			return nil, nil, fmt.Errorf("redis cluster %s: %w", strings.Join(addrs, ","), err)
		}
		return respTarget{c}, func() { c.Close() }, nil
	case "etcd":
		t, err := newEtcdTarget(splitList(b.endpoints, "127.0.0.1:2379"))
		if err != nil {
			return nil, nil, err
		}
		if err := t.check(octx); err != nil {
			t.Close()
			return nil, nil, err
		}
		return t, func() { t.Close() }, nil
	}
	if b.endpoints != "" {
		return nil, nil, errors.New("--endpoints is for --target resp and etcd; the Go client finds the nodes through --master")
	}
	var opts []client.Option
	if b.unary {
		opts = append(opts, client.WithoutCommandBatching())
	}
	c, err := client.Open(octx, f.addrs(), opts...)
	if err != nil {
		return nil, nil, err
	}
	return clientTarget{c}, func() { c.Close() }, nil
}

// splitList splits a comma-separated list, def when it is empty.
func splitList(s, def string) []string {
	var out []string
	for _, a := range strings.Split(s, ",") {
		if a = strings.TrimSpace(a); a != "" {
			out = append(out, a)
		}
	}
	if len(out) == 0 {
		out = []string{def}
	}
	return out
}
