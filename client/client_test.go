package client_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shoaldb/shoal/client"
	tc "github.com/shoaldb/shoal/internal/testcluster"
)

func ctxFor(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func startCluster(t *testing.T, nodes int) (*tc.Cluster, *client.Client) {
	t.Helper()
	c := tc.Start(t, tc.Options{Masters: 1, Nodes: nodes, Shards: 16, Replicas: 3})
	ctx := ctxFor(t, 60*time.Second)
	if err := c.WaitPlaced(ctx); err != nil {
		t.Fatal(err)
	}
	cl, err := client.Open(ctx, c.MasterAddrs())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return c, cl
}

func TestOperations(t *testing.T) {
	_, cl := startCluster(t, 3)
	ctx := ctxFor(t, 30*time.Second)
	k := []byte("greeting")
	if ok, err := cl.Put(ctx, k, []byte("hello")); err != nil || !ok {
		t.Fatalf("put: %v %v", ok, err)
	}
	if it, ok, err := cl.Get(ctx, k); err != nil || !ok || string(it.Value) != "hello" {
		t.Fatalf("get: %q %v %v", it.Value, ok, err)
	}
	if ok, err := cl.Put(ctx, k, []byte("again"), client.IfNotExists()); err != nil || ok {
		t.Fatalf("put if not exists over an existing key: %v %v", ok, err)
	}
	if ok, err := cl.CompareAndSet(ctx, k, []byte("hello"), []byte("bonjour")); err != nil || !ok {
		t.Fatalf("cas: %v %v", ok, err)
	}
	if ok, err := cl.CompareAndSet(ctx, k, []byte("hello"), []byte("hola")); err != nil || ok {
		t.Fatalf("cas with a wrong expected value: %v %v", ok, err)
	}
	if _, err := cl.Put(ctx, []byte("ttl"), []byte("x"), client.WithTTL(time.Hour)); err != nil {
		t.Fatal(err)
	}
	// A TTL that is not positive, or an expiry at the epoch, is refused:
	// it once became a TTL of 1 ms, or no expiry at all.
	for name, opt := range map[string]client.PutOption{
		"TTL 0": client.WithTTL(0), "TTL -5s": client.WithTTL(-5 * time.Second), "at the epoch": client.WithExpireAt(time.UnixMilli(0)),
	} {
		if _, err := cl.Put(ctx, []byte("ttl"), []byte("y"), opt); !errors.Is(err, client.ErrInvalid) {
			t.Fatalf("put with %s: %v; want ErrInvalid", name, err)
		}
	}
	if it, _, err := cl.Get(ctx, []byte("ttl")); err != nil || it.ExpireAt.Before(time.Now().Add(59*time.Minute)) {
		t.Fatalf("ttl: %v %v", it.ExpireAt, err)
	}
	if n, err := cl.Incr(ctx, []byte("n"), 5); err != nil || n != 5 {
		t.Fatalf("incr: %d %v", n, err)
	}
	if _, err := cl.Incr(ctx, k, 1); !errors.Is(err, client.ErrNotInteger) {
		t.Fatalf("incr of a string: %v", err)
	}
	res, err := cl.Batch(ctx, client.PutOp([]byte("{u1}:a"), []byte("1")), client.IncrOp([]byte("{u1}:n"), 2))
	if err != nil || len(res) != 2 || res[1].IntValue != 2 {
		t.Fatalf("batch: %v %v", res, err)
	}
	if _, err := cl.Batch(ctx, client.PutOp([]byte("a"), nil), client.PutOp([]byte("b"), nil)); !errors.Is(err, client.ErrCrossShard) {
		t.Fatalf("cross-shard batch: %v", err)
	}
	if _, err := cl.Put(ctx, make([]byte, 70<<10), nil); !errors.Is(err, client.ErrTooLarge) {
		t.Fatalf("oversized key: %v", err)
	}
	if ok, err := cl.Delete(ctx, k); err != nil || !ok {
		t.Fatalf("delete: %v %v", ok, err)
	}
	if _, ok, err := cl.Get(ctx, k); err != nil || ok {
		t.Fatalf("get after delete: %v %v", ok, err)
	}
}

func TestScan(t *testing.T) {
	_, cl := startCluster(t, 3)
	ctx := ctxFor(t, 30*time.Second)
	want := map[string]bool{}
	for i := range 500 {
		k := "scan-" + strconv.Itoa(i)
		want[k] = true
		if _, err := cl.Put(ctx, []byte(k), []byte(k)); err != nil {
			t.Fatal(err)
		}
	}
	s := cl.Scan(ctx, client.ScanOptions{PageSize: 37})
	got := map[string]bool{}
	for s.Next() {
		if string(s.Key()) != string(s.Value()) {
			t.Fatalf("%q has value %q", s.Key(), s.Value())
		}
		if got[string(s.Key())] {
			t.Fatalf("%q scanned twice", s.Key())
		}
		got[string(s.Key())] = true
	}
	if err := s.Err(); err != nil {
		t.Fatal(err)
	}
	for k := range want {
		if !got[k] {
			t.Fatalf("%q not scanned", k)
		}
	}
	// A slot range sees exactly the keys of its slots.
	s = cl.Scan(ctx, client.ScanOptions{StartSlot: 0, EndSlot: 8192, KeysOnly: true})
	n := 0
	for s.Next() {
		n++
		if s.Value() != nil {
			t.Fatal("values in a keys-only scan")
		}
	}
	if s.Err() != nil || n == 0 || n >= len(want) {
		t.Fatalf("half the slots: %d keys, %v", n, s.Err())
	}
}

// TestForwarding sends every request to whatever node the client picks
// first, and lets nodes forward them, including nodes with no replica.
func TestForwarding(t *testing.T) {
	c, _ := startCluster(t, 5)
	ctx := ctxFor(t, 30*time.Second)
	cl, err := client.Open(ctx, c.MasterAddrs(), client.WithForwarding())
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	for i := range 100 {
		k := []byte("fwd-" + strconv.Itoa(i))
		if _, err := cl.Put(ctx, k, k); err != nil {
			t.Fatal(err)
		}
		if it, ok, err := cl.Get(ctx, k); err != nil || !ok || string(it.Value) != string(k) {
			t.Fatalf("get %s: %q %v %v", k, it.Value, ok, err)
		}
	}
}

// classified reports whether err says why it failed in a way a caller can
// act on.
func classified(err error) bool {
	for _, s := range []error{client.ErrTimeout, client.ErrAmbiguous, client.ErrNotInteger, client.ErrOverflow,
		client.ErrTooLarge, client.ErrCrossShard, client.ErrInvalid, client.ErrClosed} {
		if errors.Is(err, s) {
			return true
		}
	}
	return false
}

// TestClientThroughFailures runs writers and readers while leaders move and
// a node is killed and restarted: every operation succeeds or fails with an
// error that says why, and no increment is lost or applied twice.
func TestClientThroughFailures(t *testing.T) {
	c, cl := startCluster(t, 4)
	ctx := ctxFor(t, 120*time.Second)
	const workers = 16
	var (
		ops, failed atomic.Int64
		mu          sync.Mutex
		unexplained []error
		acked       = make([]int64, workers)
		ambiguous   = make([]int64, workers)
	)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			key := []byte(fmt.Sprintf("counter-%d", w))
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				octx, cancel := context.WithTimeout(ctx, 10*time.Second)
				var err error
				if i%3 == 2 {
					_, _, err = cl.Get(octx, key)
				} else {
					_, err = cl.Incr(octx, key, 1)
					if err == nil {
						acked[w]++
					} else if errors.Is(err, client.ErrAmbiguous) {
						ambiguous[w]++
					}
				}
				cancel()
				ops.Add(1)
				if err != nil {
					failed.Add(1)
					if !classified(err) {
						mu.Lock()
						unexplained = append(unexplained, err)
						mu.Unlock()
					}
				}
			}
		}()
	}
	waitOps := func(n int64) {
		t.Helper()
		base := ops.Load()
		if err := tc.WaitFor(ctx, func() error {
			if got := ops.Load() - base; got < n {
				return fmt.Errorf("%d operations", got)
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	waitOps(200)
	// Move some leaders.
	for _, d := range c.Shards[:8] {
		n, err := c.Leader(d.ShardId)
		if err != nil {
			continue
		}
		st, _ := n.Store().Status(d.ShardId)
		for _, r := range d.Replicas {
			if r.ReplicaId != st.ReplicaID {
				_ = n.Store().TransferLeader(ctx, d.ShardId, r.ReplicaId)
				break
			}
		}
	}
	waitOps(200)
	victim := c.Nodes[1]
	victim.Stop()
	waitOps(300)
	if err := victim.Restart(); err != nil {
		t.Fatal(err)
	}
	waitOps(200)
	close(stop)
	wg.Wait()
	if len(unexplained) > 0 {
		t.Fatalf("%d of %d operations failed without a reason a caller can act on; first: %v", len(unexplained), ops.Load(), unexplained[0])
	}
	for w := range workers {
		it, _, err := cl.Get(ctx, []byte(fmt.Sprintf("counter-%d", w)))
		if err != nil {
			t.Fatal(err)
		}
		v, _ := strconv.ParseInt(string(it.Value), 10, 64)
		if v < acked[w] || v > acked[w]+ambiguous[w] {
			t.Fatalf("counter %d is %d: %d increments acknowledged, %d ambiguous", w, v, acked[w], ambiguous[w])
		}
	}
	t.Logf("%d operations, %d failed (all with a reason)", ops.Load(), failed.Load())
}

// Values up to the nodes' 8 MiB limit, and scan pages of many kilobyte
// values, come back whole, directly and through a forwarding node: gRPC's
// default receive limit is 4 MiB.
func TestLargeValues(t *testing.T) {
	c, cl := startCluster(t, 3)
	ctx := ctxFor(t, 60*time.Second)
	fwd, err := client.Open(ctx, c.MasterAddrs(), client.WithForwarding())
	if err != nil {
		t.Fatal(err)
	}
	defer fwd.Close()
	big := bytes.Repeat([]byte("v"), 6<<20)
	if _, err := cl.Put(ctx, []byte("big"), big); err != nil {
		t.Fatal(err)
	}
	for name, x := range map[string]*client.Client{"direct": cl, "forwarded": fwd} {
		it, ok, err := x.Get(ctx, []byte("big"))
		if err != nil || !ok || !bytes.Equal(it.Value, big) {
			t.Fatalf("%s: get of a 6 MiB value: %d bytes, found %v, %v", name, len(it.Value), ok, err)
		}
	}
	// 80 values of 64 KiB in one slot: one scan page of 5 MiB.
	v := bytes.Repeat([]byte("s"), 64<<10)
	for i := range 80 {
		if _, err := cl.Put(ctx, []byte("{page}-"+strconv.Itoa(i)), v); err != nil {
			t.Fatal(err)
		}
	}
	sc := cl.Scan(ctx, client.ScanOptions{})
	n := 0
	for sc.Next() {
		if bytes.HasPrefix(sc.Key(), []byte("{page}-")) && len(sc.Value()) == len(v) {
			n++
		}
	}
	if err := sc.Err(); err != nil || n != 80 {
		t.Fatalf("scan: %d of the 80 large values, %v", n, err)
	}
}
