package client_test

import (
	"context"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/client"
	"github.com/shoaldb/shoal/internal/keys"
)

// fakeMaster serves one fixed route table. The retry tests are about the
// client's choices, so the nodes behind the table are scripted.
type fakeMaster struct {
	shoalpb.UnimplementedMasterServer
	table *shoalpb.RouteTable
}

func (m *fakeMaster) GetRoutes(context.Context, *shoalpb.GetRoutesRequest) (*shoalpb.RouteTable, error) {
	return m.table, nil
}

func (m *fakeMaster) WatchRoutes(_ *shoalpb.WatchRoutesRequest, s grpc.ServerStreamingServer[shoalpb.RouteTable]) error {
	<-s.Context().Done()
	return nil
}

// scriptedNode answers Put with whatever its script returns.
type scriptedNode struct {
	shoalpb.UnimplementedKVServer
	put   func(n int64) error
	calls atomic.Int64
	// cluster is the cluster ID of the last request.
	cluster atomic.Pointer[string]

	mu sync.Mutex
	// seqs are the session sequences of the requests, in order.
	seqs []uint64
}

func (s *scriptedNode) Put(_ context.Context, req *shoalpb.PutRequest) (*shoalpb.PutResponse, error) {
	id := req.GetHeader().GetClusterId()
	s.cluster.Store(&id)
	s.mu.Lock()
	s.seqs = append(s.seqs, req.GetHeader().GetSession().GetSeq())
	s.mu.Unlock()
	if err := s.put(s.calls.Add(1)); err != nil {
		return nil, err
	}
	return &shoalpb.PutResponse{Header: &shoalpb.ResponseHeader{}, Applied: true}, nil
}

func serve(t testing.TB, register func(*grpc.Server)) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	register(s)
	go s.Serve(lis)
	t.Cleanup(s.Stop)
	return lis.Addr().String()
}

// openOneShard opens a client on a fake master whose route table has one
// shard, all slots, with a voter on each of the nodes at addrs (node i+1 at
// addrs[i]); it names node 1 the leader.
func openOneShard(ctx context.Context, t testing.TB, addrs []string, opts ...client.Option) *client.Client {
	t.Helper()
	desc := &shoalpb.ShardDescriptor{ShardId: 1, StartSlot: 0, EndSlot: keys.SlotCount, Epoch: 1}
	table := &shoalpb.RouteTable{ClusterId: "c", Version: 1, Shards: []*shoalpb.ShardRoute{{Shard: desc, LeaderReplica: 1}}}
	for i, addr := range addrs {
		desc.Replicas = append(desc.Replicas, &shoalpb.ReplicaDescriptor{NodeId: uint64(i + 1), ReplicaId: uint64(i + 1), Role: shoalpb.ReplicaRole_REPLICA_ROLE_VOTER})
		table.Nodes = append(table.Nodes, &shoalpb.NodeInfo{Id: uint64(i + 1), Addr: addr})
	}
	masterAddr := serve(t, func(s *grpc.Server) { shoalpb.RegisterMasterServer(s, &fakeMaster{table: table}) })
	c, err := client.Open(ctx, []string{masterAddr}, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestNotLeaderHintOverridesExclusion reproduces a fresh cluster in which
// the leader-to-be answered "no replica here" before it had created its
// replica: the client must go back to it once another replica names it
// the leader, rather than bounce off the follower until the deadline.
func TestNotLeaderHintOverridesExclusion(t *testing.T) {
	var nodes [3]*scriptedNode
	var addrs [3]string
	for i := range nodes {
		nodes[i] = &scriptedNode{}
		addrs[i] = serve(t, func(s *grpc.Server) { shoalpb.RegisterKVServer(s, nodes[i]) })
	}
	// Node 1 leads; its first answer is that it has no replica yet.
	nodes[0].put = func(n int64) error {
		if n == 1 {
			return shoalpb.StatusError(&shoalpb.ErrorDetail{Code: shoalpb.ErrorCode_ERROR_CODE_SHARD_NOT_HERE}, "node 1 has no replica of the slot")
		}
		return nil
	}
	for i := 1; i < 3; i++ {
		nodes[i].put = func(int64) error {
			return shoalpb.StatusError(&shoalpb.ErrorDetail{Code: shoalpb.ErrorCode_ERROR_CODE_NOT_LEADER, LeaderId: 1, LeaderAddr: addrs[0]}, "node 1 leads")
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c := openOneShard(ctx, t, addrs[:])
	applied, err := c.Put(ctx, []byte("k"), []byte("v"))
	if err != nil || !applied {
		t.Fatalf("Put = %v, %v; want applied", applied, err)
	}
	if n := nodes[0].calls.Load(); n != 2 {
		t.Errorf("the leader saw %d attempts, want 2 (refused, then served)", n)
	}
	if n := nodes[1].calls.Load() + nodes[2].calls.Load(); n > 4 {
		t.Errorf("followers saw %d attempts; the client should have gone back to the named leader", n)
	}
}

// TestNotLeaderPingPongBacksOff reproduces a leader handover seen from the
// client: for a while each of two replicas names the other as leader.
// Every answer is news, but the client must not bounce between them as
// fast as the network allows: after a few immediate retries it waits its
// backoff, and once the new leader serves, the write succeeds.
func TestNotLeaderPingPongBacksOff(t *testing.T) {
	const handover = 300 * time.Millisecond
	var nodes [2]*scriptedNode
	var addrs [2]string
	for i := range nodes {
		nodes[i] = &scriptedNode{}
		addrs[i] = serve(t, func(s *grpc.Server) { shoalpb.RegisterKVServer(s, nodes[i]) })
	}
	var start atomic.Pointer[time.Time]
	names := func(other int) func(int64) error {
		return func(int64) error {
			now := time.Now()
			start.CompareAndSwap(nil, &now)
			if other == 0 || time.Since(*start.Load()) < handover {
				return shoalpb.StatusError(&shoalpb.ErrorDetail{Code: shoalpb.ErrorCode_ERROR_CODE_NOT_LEADER,
					LeaderId: uint64(other + 1), LeaderAddr: addrs[other]}, "the other node leads")
			}
			return nil // node 2 has taken over
		}
	}
	nodes[0].put, nodes[1].put = names(1), names(0)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c := openOneShard(ctx, t, addrs[:])
	applied, err := c.Put(ctx, []byte("k"), []byte("v"))
	if err != nil || !applied {
		t.Fatalf("Put = %v, %v; want applied once node 2 leads", applied, err)
	}
	// Waits of 2, 4, ... 128 ms fill the handover with at most 4 attempts
	// each (one, then 3 immediate retries): about 30. Bouncing without
	// waits makes one attempt per round trip, hundreds in 300 ms.
	if n := nodes[0].calls.Load() + nodes[1].calls.Load(); n > 45 {
		t.Errorf("%d attempts during a %v handover; want the client to back off (at most 45)", n, handover)
	}
}

// TestDiskFullAfterAmbiguousAttempt: a write whose first attempt timed out
// on the leader (it may have been applied) and whose retry is refused for
// disk space is ambiguous, not "nothing written"; a write refused at once
// is plainly ErrDiskFull and not retried.
func TestDiskFullAfterAmbiguousAttempt(t *testing.T) {
	full := shoalpb.StatusError(&shoalpb.ErrorDetail{Code: shoalpb.ErrorCode_ERROR_CODE_DISK_FULL}, "disk full: 40 MiB free")
	for _, tc := range []struct {
		name          string
		first         error
		wantAmbiguous bool
		wantCalls     int64
	}{
		{"refused at once", full, false, 1},
		{"refused on the retry", shoalpb.StatusError(&shoalpb.ErrorDetail{Code: shoalpb.ErrorCode_ERROR_CODE_TIMEOUT, Ambiguous: true}, "timed out"), true, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			node := &scriptedNode{put: func(n int64) error {
				if n == 1 {
					return tc.first
				}
				return full
			}}
			addr := serve(t, func(s *grpc.Server) { shoalpb.RegisterKVServer(s, node) })
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			c := openOneShard(ctx, t, []string{addr})
			_, err := c.Put(ctx, []byte("k"), []byte("v"))
			if !errors.Is(err, client.ErrDiskFull) || errors.Is(err, client.ErrAmbiguous) != tc.wantAmbiguous {
				t.Fatalf("Put: %v; want ErrDiskFull, ambiguous %v", err, tc.wantAmbiguous)
			}
			if n := node.calls.Load(); n != tc.wantCalls {
				t.Errorf("%d attempts, want %d", n, tc.wantCalls)
			}
		})
	}
}

// TestAmbiguousNotLeader: a leader that lost its place after the write was
// in its log (a snapshot replaced the entry) answers NOT_LEADER marked
// ambiguous: the write may still be applied. Without a session the
// client must not run it again on the leader named; with one it may (the
// session applies it once).
func TestAmbiguousNotLeader(t *testing.T) {
	for _, tc := range []struct {
		name          string
		opts          []client.Option
		wantAmbiguous bool
		wantLeader    int64 // attempts on the named leader
	}{
		{"without a session", []client.Option{client.WithoutSession()}, true, 0},
		{"with a session", nil, false, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var nodes [2]*scriptedNode
			var addrs [2]string
			for i := range nodes {
				nodes[i] = &scriptedNode{put: func(int64) error { return nil }}
				addrs[i] = serve(t, func(s *grpc.Server) { shoalpb.RegisterKVServer(s, nodes[i]) })
			}
			nodes[0].put = func(int64) error {
				return shoalpb.StatusError(&shoalpb.ErrorDetail{Code: shoalpb.ErrorCode_ERROR_CODE_NOT_LEADER, LeaderId: 2,
					LeaderAddr: addrs[1], Ambiguous: true}, "leadership lost: replaced by a snapshot")
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			c := openOneShard(ctx, t, addrs[:], tc.opts...)
			_, err := c.Put(ctx, []byte("k"), []byte("v"))
			if errors.Is(err, client.ErrAmbiguous) != tc.wantAmbiguous || !tc.wantAmbiguous && err != nil {
				t.Fatalf("Put: %v; want ambiguous %v", err, tc.wantAmbiguous)
			}
			if n := nodes[1].calls.Load(); n != tc.wantLeader {
				t.Errorf("the named leader saw %d attempts, want %d", n, tc.wantLeader)
			}
		})
	}
}

// TestUnansweredWriteIsAmbiguous: a write that went out and got no answer
// may have been applied, whether the caller's deadline ended the wait or
// the connection broke with the call in flight (gRPC says Unavailable for
// both that and a failure to connect). Only a failure to connect says the
// write never left, and then the client tries another replica.
func TestUnansweredWriteIsAmbiguous(t *testing.T) {
	t.Run("caller's deadline", func(t *testing.T) {
		stuck := make(chan struct{})
		t.Cleanup(func() { close(stuck) })
		node := &scriptedNode{put: func(int64) error { <-stuck; return nil }}
		addr := serve(t, func(s *grpc.Server) { shoalpb.RegisterKVServer(s, node) })
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c := openOneShard(ctx, t, []string{addr})
		wctx, wcancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer wcancel()
		_, err := c.Put(wctx, []byte("k"), []byte("v"))
		if !errors.Is(err, client.ErrTimeout) || !errors.Is(err, client.ErrAmbiguous) {
			t.Fatalf("Put whose only attempt outlived the caller: %v; want ErrTimeout and ErrAmbiguous", err)
		}
	})
	t.Run("connection broken in flight", func(t *testing.T) {
		inCall := make(chan struct{}, 1)
		release := make(chan struct{})
		t.Cleanup(func() { close(release) })
		first := &scriptedNode{put: func(int64) error { inCall <- struct{}{}; <-release; return nil }}
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		srv := grpc.NewServer()
		shoalpb.RegisterKVServer(srv, first)
		go srv.Serve(lis)
		t.Cleanup(srv.Stop)
		other := &scriptedNode{put: func(int64) error { return nil }}
		addrs := []string{lis.Addr().String(), serve(t, func(s *grpc.Server) { shoalpb.RegisterKVServer(s, other) })}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c := openOneShard(ctx, t, addrs, client.WithoutSession())
		go func() { <-inCall; srv.Stop() }() // the node goes down with the write in flight
		_, err = c.Put(ctx, []byte("k"), []byte("v"))
		if !errors.Is(err, client.ErrAmbiguous) {
			t.Fatalf("Put cut off in flight, without a session: %v; want ErrAmbiguous", err)
		}
		if n := other.calls.Load(); n != 0 {
			t.Fatalf("the write was sent again to another replica (%d attempts) though the first may have applied it", n)
		}
	})
	t.Run("no connection", func(t *testing.T) {
		lis, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		down := lis.Addr().String()
		lis.Close() // nothing listens there
		other := &scriptedNode{put: func(int64) error { return nil }}
		addrs := []string{down, serve(t, func(s *grpc.Server) { shoalpb.RegisterKVServer(s, other) })}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c := openOneShard(ctx, t, addrs, client.WithoutSession())
		if applied, err := c.Put(ctx, []byte("k"), []byte("v")); err != nil || !applied {
			t.Fatalf("Put with the leader's node down: %v, %v; want it served by another replica", applied, err)
		}
	})
}

// TestNoLeaderAsksAnotherReplica: a node that answers NO_LEADER may be a
// leader cut off from its peers that the client still reaches; the client
// asks another replica instead of waiting on it until the route table
// changes.
func TestNoLeaderAsksAnotherReplica(t *testing.T) {
	cutOff := &scriptedNode{put: func(int64) error {
		return shoalpb.StatusError(&shoalpb.ErrorDetail{Code: shoalpb.ErrorCode_ERROR_CODE_NO_LEADER}, "no leader")
	}}
	other := &scriptedNode{put: func(int64) error { return nil }}
	addrs := []string{
		serve(t, func(s *grpc.Server) { shoalpb.RegisterKVServer(s, cutOff) }),
		serve(t, func(s *grpc.Server) { shoalpb.RegisterKVServer(s, other) }),
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c := openOneShard(ctx, t, addrs)
	if applied, err := c.Put(ctx, []byte("k"), []byte("v")); err != nil || !applied {
		t.Fatalf("Put with the named leader answering NO_LEADER: %v, %v; want it served by the other replica", applied, err)
	}
	if n := cutOff.calls.Load(); n != 1 {
		t.Errorf("the node without a leader saw %d attempts, want 1", n)
	}
}

// A node answering WRONG_CLUSTER (its address now belongs to another
// cluster) did nothing: the client goes to another replica, and every
// request named the cluster of the client's table.
func TestWrongClusterAsksAnotherReplica(t *testing.T) {
	foreign := &scriptedNode{put: func(int64) error {
		return shoalpb.StatusError(&shoalpb.ErrorDetail{Code: shoalpb.ErrorCode_ERROR_CODE_WRONG_CLUSTER}, "another cluster")
	}}
	other := &scriptedNode{put: func(int64) error { return nil }}
	addrs := []string{
		serve(t, func(s *grpc.Server) { shoalpb.RegisterKVServer(s, foreign) }),
		serve(t, func(s *grpc.Server) { shoalpb.RegisterKVServer(s, other) }),
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c := openOneShard(ctx, t, addrs)
	if applied, err := c.Put(ctx, []byte("k"), []byte("v")); err != nil || !applied {
		t.Fatalf("Put with the named leader in another cluster: %v, %v; want it served by the other replica", applied, err)
	}
	for _, n := range []*scriptedNode{foreign, other} {
		if id := n.cluster.Load(); id == nil || *id != "c" {
			t.Fatalf("a request named cluster %v, want the table's c", id)
		}
	}
}

// TestRequestBounds: a request whose context has no deadline ends at the
// client's default timeout (WithDefaultTimeout), and an attempt at a node
// that does not answer ends at the attempt timeout (WithAttemptTimeout),
// after which another replica serves the write.
func TestRequestBounds(t *testing.T) {
	stuck := make(chan struct{})
	var once sync.Once
	thaw := func() { once.Do(func() { close(stuck) }) }
	t.Cleanup(thaw)
	// Without its bounds a request would wait for this, then succeed:
	// the test fails instead of hanging.
	time.AfterFunc(8*time.Second, thaw)
	frozen := &scriptedNode{put: func(int64) error { <-stuck; return nil }}
	frozenAddr := serve(t, func(s *grpc.Server) { shoalpb.RegisterKVServer(s, frozen) })
	t.Run("default timeout", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c := openOneShard(ctx, t, []string{frozenAddr}, client.WithDefaultTimeout(300*time.Millisecond), client.WithAttemptTimeout(time.Minute))
		start := time.Now()
		_, err := c.Put(context.Background(), []byte("k"), []byte("v"))
		if took := time.Since(start); !errors.Is(err, client.ErrTimeout) || took < 300*time.Millisecond || took > 5*time.Second {
			t.Fatalf("Put with no deadline against a frozen node: %v after %v; want ErrTimeout after about 300ms", err, took)
		}
	})
	t.Run("attempt timeout", func(t *testing.T) {
		other := &scriptedNode{put: func(int64) error { return nil }}
		addrs := []string{frozenAddr, serve(t, func(s *grpc.Server) { shoalpb.RegisterKVServer(s, other) })}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		c := openOneShard(ctx, t, addrs, client.WithDefaultTimeout(time.Minute), client.WithAttemptTimeout(200*time.Millisecond))
		start := time.Now()
		applied, err := c.Put(context.Background(), []byte("k"), []byte("v"))
		if took := time.Since(start); err != nil || !applied || took > 5*time.Second {
			t.Fatalf("Put with the leader frozen: %v, %v after %v; want it served by the other replica", applied, err, took)
		}
		if other.calls.Load() == 0 {
			t.Fatal("the other replica saw no attempt")
		}
	})
}

// TestClose: a request in flight when the client closes returns at once
// with ErrClosed (with ErrAmbiguous for a write the node may have
// applied), and every request after Close fails with ErrClosed without
// reaching a node.
func TestClose(t *testing.T) {
	stuck := make(chan struct{})
	t.Cleanup(func() { close(stuck) })
	inCall := make(chan struct{}, 1)
	node := &scriptedNode{put: func(n int64) error {
		if n == 1 {
			inCall <- struct{}{}
			<-stuck
		}
		return nil
	}}
	addr := serve(t, func(s *grpc.Server) { shoalpb.RegisterKVServer(s, node) })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// The attempt must still be in flight at Close, however slow the
	// machine.
	c := openOneShard(ctx, t, []string{addr}, client.WithAttemptTimeout(time.Minute))
	errc := make(chan error, 1)
	go func() {
		_, err := c.Put(ctx, []byte("k"), []byte("v"))
		errc <- err
	}()
	select {
	case <-inCall:
	case err := <-errc:
		t.Fatalf("Put returned before it reached the node: %v", err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-errc:
		if !errors.Is(err, client.ErrClosed) || !errors.Is(err, client.ErrAmbiguous) {
			t.Fatalf("Put in flight at Close: %v; want ErrClosed and ErrAmbiguous", err)
		}
	case <-ctx.Done():
		t.Fatal("Put in flight at Close did not return")
	}
	if _, err := c.Put(ctx, []byte("k"), []byte("v")); !errors.Is(err, client.ErrClosed) || errors.Is(err, client.ErrAmbiguous) {
		t.Fatalf("Put after Close: %v; want ErrClosed alone", err)
	}
	if _, _, err := c.Get(ctx, []byte("k")); !errors.Is(err, client.ErrClosed) {
		t.Fatalf("Get after Close: %v; want ErrClosed", err)
	}
	if n := node.calls.Load(); n != 1 {
		t.Fatalf("the node saw %d calls; want the one in flight", n)
	}
	if err := c.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

// TestStaleSequenceAfterRefusals: a shard refuses a write's sequence as
// stale once its acknowledged mark has passed it (it forgets the oldest of
// a session's results past 256). If every earlier attempt was refused
// unapplied, the write never ran and never will: the client sends it
// again under a new sequence, instead of reporting an outcome it does not
// know. After an attempt that may have been applied, it is ambiguous.
func TestStaleSequenceAfterRefusals(t *testing.T) {
	stale := shoalpb.StatusError(&shoalpb.ErrorDetail{Code: shoalpb.ErrorCode_ERROR_CODE_STALE_SEQUENCE}, "sequence below the acknowledged mark")
	for _, tc := range []struct {
		name          string
		first         error
		wantAmbiguous bool
		wantCalls     int64
	}{
		{"refused unapplied", shoalpb.StatusError(&shoalpb.ErrorDetail{Code: shoalpb.ErrorCode_ERROR_CODE_OVERLOADED}, "overloaded"), false, 3},
		{"maybe applied", shoalpb.StatusError(&shoalpb.ErrorDetail{Code: shoalpb.ErrorCode_ERROR_CODE_TIMEOUT, Ambiguous: true}, "timed out"), true, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			node := &scriptedNode{}
			node.put = func(n int64) error {
				switch n {
				case 1:
					return tc.first
				case 2:
					return stale
				}
				return nil
			}
			addr := serve(t, func(s *grpc.Server) { shoalpb.RegisterKVServer(s, node) })
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			c := openOneShard(ctx, t, []string{addr})
			_, err := c.Put(ctx, []byte("k"), []byte("v"))
			if errors.Is(err, client.ErrAmbiguous) != tc.wantAmbiguous || !tc.wantAmbiguous && err != nil {
				t.Fatalf("Put: %v; want ambiguous %v", err, tc.wantAmbiguous)
			}
			node.mu.Lock()
			defer node.mu.Unlock()
			if int64(len(node.seqs)) != tc.wantCalls {
				t.Fatalf("the node saw sequences %v, want %d attempts", node.seqs, tc.wantCalls)
			}
			if s := node.seqs; s[0] == 0 || s[1] != s[0] || len(s) > 2 && s[2] <= s[1] {
				t.Fatalf("sequences %v: want a retry under the same one, then a new one", s)
			}
		})
	}
}

// TestTimeoutAfterRefusals: a write refused unapplied until its deadline
// passed (during a backoff) times out, not ambiguous: no attempt is made
// with no time left, which would fail before it left yet read as one that
// may have been served. The error says the context's and the last
// refusal.
func TestTimeoutAfterRefusals(t *testing.T) {
	node := &scriptedNode{put: func(int64) error {
		return shoalpb.StatusError(&shoalpb.ErrorDetail{Code: shoalpb.ErrorCode_ERROR_CODE_OVERLOADED}, "overloaded")
	}}
	addr := serve(t, func(s *grpc.Server) { shoalpb.RegisterKVServer(s, node) })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c := openOneShard(ctx, t, []string{addr})
	pctx, pcancel := context.WithTimeout(ctx, 200*time.Millisecond)
	defer pcancel()
	_, err := c.Put(pctx, []byte("k"), []byte("v"))
	if !errors.Is(err, client.ErrTimeout) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Put: %v; want ErrTimeout and context.DeadlineExceeded", err)
	}
	// The deadline passes in a backoff, unless a slow machine had an
	// attempt out as it passed: that one may have been served.
	if refused := shoalpb.DetailOf(err).GetCode() == shoalpb.ErrorCode_ERROR_CODE_OVERLOADED; refused == errors.Is(err, client.ErrAmbiguous) {
		t.Fatalf("Put: %v; want the last refusal (OVERLOADED) and not ErrAmbiguous, or an attempt cut short and ErrAmbiguous", err)
	}
	if node.calls.Load() < 2 {
		t.Fatalf("%d attempts: the test shows nothing without a retry", node.calls.Load())
	}
}
