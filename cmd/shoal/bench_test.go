package main

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/mvccpb"
	"google.golang.org/grpc"

	"github.com/shoaldb/shoal/internal/bench"
)

// benchPlayground starts a playground with 8 shards and returns the
// master's gRPC address and the nodes' Redis addresses; it stops with the
// test.
func benchPlayground(t *testing.T) (master string, resp []string) {
	t.Helper()
	out := runPlaygroundReady(t, "--shards", "8")
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) >= 4 && f[0] == "master" && f[2] == "gRPC":
			master = f[3]
		case len(f) == 6 && strings.HasPrefix(f[3], "http://"):
			resp = append(resp, f[2])
		}
	}
	if master == "" || len(resp) != 3 {
		t.Fatalf("master %q, Redis addresses %v from:\n%s", master, resp, out)
	}
	return master, resp
}

// runBenchJSON runs shoal bench with --json and decodes its result.
func runBenchJSON(t *testing.T, args ...string) benchResult {
	t.Helper()
	out, err := run(t, append([]string{"bench", "--json"}, args...)...)
	if err != nil {
		t.Fatalf("shoal bench %v: %v\n%s", args, err, out)
	}
	var res benchResult
	if err := json.Unmarshal([]byte(out), &res); err != nil || res.Result == nil {
		t.Fatalf("shoal bench %v: output %q: %v", args, out, err)
	}
	return res
}

func TestBenchShoalAndRESPTargets(t *testing.T) {
	master, resp := benchPlayground(t)
	m := "--master=" + master
	eps := "--endpoints=" + strings.Join(resp, ",")

	res := runBenchJSON(t, "--workload", "load", "--records", "300", "--concurrency", "8", m)
	if res.Target != "shoal" || res.Ops != 300 || res.Errors != 0 || res.Update.Count != 300 {
		t.Fatalf("load through the Go client: %+v", res.Result)
	}
	// Reads through the Redis port with the built-in client, without
	// errors. With the load generator's own CPU profile, a gzipped pprof
	// file.
	prof := filepath.Join(t.TempDir(), "client.pprof")
	res = runBenchJSON(t, "--target", "resp", eps, "--workload", "c", "--records", "300", "--ops", "500", "--concurrency", "4",
		"--cpu-profile", prof)
	if res.Target != "resp" || res.Ops < 500 || res.Errors != 0 || res.Read.Count != res.Ops || res.Pipeline != 1 {
		t.Fatalf("reads through the Redis port: %+v", res.Result)
	}
	if b, err := os.ReadFile(prof); err != nil || len(b) < 2 || b[0] != 0x1f || b[1] != 0x8b {
		t.Fatalf("--cpu-profile %s: %d bytes, %v; want a gzipped pprof profile", prof, len(b), err)
	}
	// Pipelined load through the Redis port, then check through the Go
	// client that every record of it is there with its 100 bytes.
	res = runBenchJSON(t, "--target", "resp", eps, "--workload", "load", "--records", "250", "--pipeline", "16", "--concurrency", "3")
	if res.Ops != 250 || res.Errors != 0 || res.Pipeline != 16 {
		t.Fatalf("pipelined load through the Redis port: %+v", res.Result)
	}
	c, ctx, done, err := (&clientFlags{masters: master, timeout: 10 * time.Second}).open(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer done()
	for _, i := range []int{0, 1, 17, 128, 249} {
		key := bench.Key(i)
		it, found, err := c.Get(ctx, key)
		if err != nil || !found || len(it.Value) != 100 {
			t.Fatalf("%s after the pipelined load: found %v, %d bytes, %v", key, found, len(it.Value), err)
		}
	}
	for _, client := range []string{"builtin", "go-redis"} {
		res = runBenchJSON(t, "--target", "resp", eps, "--resp-client", client, "--workload", "a", "--records", "250", "--pipeline", "8", "--ops", "800",
			"--concurrency", "4")
		if res.Ops < 800 || res.Errors != 0 || res.Read.Count == 0 || res.Update.Count == 0 {
			t.Fatalf("pipelined mix through the Redis port, %s client: %+v", client, res.Result)
		}
		res = runBenchJSON(t, "--target", "resp", eps, "--resp-client", client, "--workload", "w", "--records", "250", "--ops", "300",
			"--concurrency", "4")
		if res.Ops < 300 || res.Errors != 0 || res.Update.Count != res.Ops {
			t.Fatalf("writes through the Redis port, %s client: %+v", client, res.Result)
		}
	}
}

// fakeEtcd is an etcd KV service in memory that records what the target
// asks of it.
type fakeEtcd struct {
	etcdserverpb.UnimplementedKVServer
	mu           sync.Mutex
	m            map[string][]byte
	ranges, puts int
	serializable int
}

func (f *fakeEtcd) Range(_ context.Context, r *etcdserverpb.RangeRequest) (*etcdserverpb.RangeResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.ranges++
	if r.Serializable {
		f.serializable++
	}
	resp := &etcdserverpb.RangeResponse{Header: &etcdserverpb.ResponseHeader{}}
	if v, ok := f.m[string(r.Key)]; ok && len(r.RangeEnd) == 0 {
		resp.Kvs = []*mvccpb.KeyValue{{Key: r.Key, Value: v}}
		resp.Count = 1
	}
	return resp, nil
}

func (f *fakeEtcd) Put(_ context.Context, r *etcdserverpb.PutRequest) (*etcdserverpb.PutResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.puts++
	f.m[string(r.Key)] = r.Value
	return &etcdserverpb.PutResponse{Header: &etcdserverpb.ResponseHeader{}}, nil
}

func startFakeEtcd(t *testing.T) (*fakeEtcd, string) {
	t.Helper()
	var lc net.ListenConfig
	lis, err := lc.Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeEtcd{m: map[string][]byte{}}
	s := grpc.NewServer()
	etcdserverpb.RegisterKVServer(s, f)
	go s.Serve(lis) //nolint:errcheck // ends with Stop
	t.Cleanup(s.Stop)
	return f, lis.Addr().String()
}

func TestBenchEtcdTarget(t *testing.T) {
	a, addrA := startFakeEtcd(t)
	b, addrB := startFakeEtcd(t)
	eps := "--endpoints=http://" + addrA + "," + addrB

	res := runBenchJSON(t, "--target", "etcd", eps, "--workload", "load", "--records", "200", "--concurrency", "4")
	if res.Target != "etcd" || res.Ops != 200 || res.Errors != 0 {
		t.Fatalf("load: %+v", res.Result)
	}
	a.mu.Lock()
	keys := len(a.m)
	a.mu.Unlock()
	b.mu.Lock()
	keys += len(b.m)
	b.mu.Unlock()
	if keys != 200 {
		t.Fatalf("%d keys stored over both members, want 200", keys)
	}
	res = runBenchJSON(t, "--target", "etcd", eps, "--workload", "c", "--records", "200", "--ops", "400", "--concurrency", "4")
	if res.Ops < 400 || res.Errors != 0 || res.Read.Count != res.Ops {
		t.Fatalf("reads: %+v", res.Result)
	}
	for name, f := range map[string]*fakeEtcd{"a": a, "b": b} {
		f.mu.Lock()
		ranges, puts, ser := f.ranges, f.puts, f.serializable
		f.mu.Unlock()
		// Both members get a share of each kind; every Range is
		// linearizable (the probe at start included).
		if ranges < 100 || puts < 50 || ser != 0 {
			t.Errorf("member %s: %d ranges (%d serializable), %d puts", name, ranges, ser, puts)
		}
	}
}

func TestBenchFlagErrors(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--target", "mysql"}, "want shoal, resp or etcd"},
		{[]string{"--target", "shoal", "--pipeline", "4"}, "only --target resp pipelines"},
		{[]string{"--target", "etcd", "--pipeline", "4"}, "only --target resp pipelines"},
		{[]string{"--target", "resp", "--pipeline", "0"}, "want 1 or more"},
		{[]string{"--endpoints", "127.0.0.1:1", "--master", "127.0.0.1:1"}, "--endpoints is for"},
		{[]string{"--workload", "q"}, "unknown workload"},
		{[]string{"--target", "resp", "--resp-client", "hiredis"}, "want builtin or go-redis"},
		{[]string{"--distribution", "normal"}, "want uniform or zipfian"},
		{[]string{"--cpu-profile", "/nonexistent/dir/cpu.pprof"}, "--cpu-profile"},
	} {
		_, err := run(t, append([]string{"bench", "--timeout", "2s"}, c.args...)...)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("bench %v: %v, want an error with %q", c.args, err, c.want)
		}
	}
}
