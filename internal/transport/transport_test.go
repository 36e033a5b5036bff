package transport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/grpc"

	"github.com/shoaldb/shoal/api/shoalpb"
)

// recorder is a Handler that records what it receives.
type recorder struct {
	mu          sync.Mutex
	msgs        []*shoalpb.RaftMessage
	unreachable map[uint64]int
	// snapshots records the keys of every accepted snapshot stream;
	// refuse makes HandleSnapshot refuse.
	snapshots [][]string
	refuse    error
	// refuseAtOnce makes HandleSnapshot refuse before reading past the
	// header (as a receiver with no slot or no room does).
	refuseAtOnce error
}

func (r *recorder) HandleSnapshot(_ context.Context, first *shoalpb.SnapshotChunk, recv func() (*shoalpb.SnapshotChunk, error)) error {
	r.mu.Lock()
	early := r.refuseAtOnce
	r.mu.Unlock()
	if early != nil {
		return early
	}
	var got []string
	for c := first; ; {
		for _, k := range c.Keys {
			got = append(got, string(k))
		}
		if c.Done {
			break
		}
		var err error
		if c, err = recv(); err != nil {
			return err
		}
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.refuse != nil {
		return r.refuse
	}
	r.snapshots = append(r.snapshots, got)
	return nil
}

func newRecorder() *recorder { return &recorder{unreachable: map[uint64]int{}} }

func (r *recorder) HandleRaftBatch(msgs []*shoalpb.RaftMessage) {
	r.mu.Lock()
	r.msgs = append(r.msgs, msgs...)
	r.mu.Unlock()
}

func (r *recorder) HandleUnreachable(node uint64) {
	r.mu.Lock()
	r.unreachable[node]++
	r.mu.Unlock()
}

func (r *recorder) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.msgs)
}

func (r *recorder) unreachableCount(node uint64) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.unreachable[node]
}

// endpoint is one node: a transport, its server and its recorder.
type endpoint struct {
	t    *Transport
	rec  *recorder
	srv  *grpc.Server
	addr string
}

type book struct {
	mu    sync.Mutex
	addrs map[uint64]string
}

func (b *book) resolve(n uint64) (string, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if a, ok := b.addrs[n]; ok {
		return a, nil
	}
	return "", fmt.Errorf("unknown node %d", n)
}

func (b *book) set(n uint64, a string) {
	b.mu.Lock()
	b.addrs[n] = a
	b.mu.Unlock()
}

func startEndpoint(t *testing.T, bk *book, id uint64, cluster, addr string) *endpoint {
	t.Helper()
	return startEndpointWith(t, bk, id, cluster, addr, nil)
}

// startEndpointWith is startEndpoint with adjust applied to the options.
func startEndpointWith(t *testing.T, bk *book, id uint64, cluster, addr string, adjust func(*Options)) *endpoint {
	t.Helper()
	if addr == "" {
		// Not 127.0.0.1, where every outgoing connection takes its
		// ephemeral port: an endpoint restarted on its old address must
		// find the port free (see testcluster.Loopback).
		addr = "127.0.0.2:0"
	}
	lis, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	rec := newRecorder()
	o := Options{NodeID: id, ClusterID: cluster, Resolve: bk.resolve, Handler: rec,
		BackoffMin: 5 * time.Millisecond, BackoffMax: 50 * time.Millisecond}
	if adjust != nil {
		adjust(&o)
	}
	tr, err := New(o)
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(ServerOptions()...)
	tr.Register(srv)
	go srv.Serve(lis)
	e := &endpoint{t: tr, rec: rec, srv: srv, addr: lis.Addr().String()}
	bk.set(id, e.addr)
	t.Cleanup(e.stop)
	return e
}

func (e *endpoint) stop() {
	e.srv.Stop()
	e.t.Close()
}

func msg(shard, from, to uint64, i int) *shoalpb.RaftMessage {
	return &shoalpb.RaftMessage{ShardId: shard, FromNode: from, ToNode: to, Message: &raftpb.Message{
		Type: raftpb.MsgApp.Enum(), Index: new(uint64(i)),
		Entries: []*raftpb.Entry{{Index: new(uint64(i)), Data: []byte("payload")}},
	}}
}

func waitFor(t *testing.T, d time.Duration, cond func() error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	defer cancel()
	for {
		err := cond()
		if err == nil {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatal(err)
		case <-time.After(2 * time.Millisecond):
		}
	}
}

func TestDeliversInOrderAndCoalesces(t *testing.T) {
	bk := &book{addrs: map[uint64]string{}}
	a := startEndpoint(t, bk, 1, "c", "")
	b := startEndpoint(t, bk, 2, "c", "")
	const n = 2000
	for i := range n {
		if err := a.t.Send(2, []*shoalpb.RaftMessage{msg(7, 1, 2, i)}); err != nil {
			// The first sends race the dial; the queue is large enough.
			t.Fatalf("send %d: %v", i, err)
		}
	}
	waitFor(t, 10*time.Second, func() error {
		if c := b.rec.count(); c != n {
			return fmt.Errorf("received %d of %d", c, n)
		}
		return nil
	})
	b.rec.mu.Lock()
	for i, m := range b.rec.msgs {
		if got := m.GetMessage().GetIndex(); got != uint64(i) {
			t.Fatalf("message %d has index %d: out of order", i, got)
		}
	}
	b.rec.mu.Unlock()
	st := a.t.Stats()
	if st.MessagesSent != n || st.MessagesDropped != 0 {
		t.Fatalf("stats %+v", st)
	}
	if st.BatchesSent >= n {
		t.Errorf("%d stream messages for %d batches: nothing was coalesced", st.BatchesSent, n)
	}
	t.Logf("%d batches sent as %d stream messages", n, st.BatchesSent)
	if got := b.t.Stats().MessagesReceived; got != n {
		t.Errorf("receiver counted %d messages", got)
	}
}

func TestRefusesWrongClusterAndWrongNode(t *testing.T) {
	for _, tc := range []struct {
		name, cluster string
		to            uint64
	}{
		{"wrong cluster", "other", 2},
		{"wrong node", "c", 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			bk := &book{addrs: map[uint64]string{}}
			a := startEndpoint(t, bk, 1, tc.cluster, "")
			b := startEndpoint(t, bk, 2, "c", "")
			// Node 3's address is node 2's: a node replaced on the same
			// address must not get its predecessor's messages.
			bk.set(3, b.addr)
			waitFor(t, 10*time.Second, func() error {
				_ = a.t.Send(tc.to, []*shoalpb.RaftMessage{msg(1, 1, tc.to, 1)})
				if a.rec.unreachableCount(tc.to) == 0 {
					return errors.New("sender not told the peer is unreachable")
				}
				return nil
			})
			if c := b.rec.count(); c != 0 {
				t.Fatalf("receiver accepted %d messages from a refused stream", c)
			}
			if st := a.t.Stats(); st.StreamErrors == 0 {
				t.Fatalf("no stream error counted: %+v", st)
			}
		})
	}
}

func TestReconnectsAfterPeerRestart(t *testing.T) {
	bk := &book{addrs: map[uint64]string{}}
	a := startEndpoint(t, bk, 1, "c", "")
	b := startEndpoint(t, bk, 2, "c", "")
	send := func(i int) error { return a.t.Send(2, []*shoalpb.RaftMessage{msg(1, 1, 2, i)}) }
	waitFor(t, 10*time.Second, func() error {
		_ = send(0)
		if b.rec.count() == 0 {
			return errors.New("nothing received")
		}
		return nil
	})
	addr := b.addr
	b.stop()
	// While the peer is down, sends fail (fast, after the stream breaks)
	// and the store hears the peer is unreachable.
	waitFor(t, 10*time.Second, func() error {
		err := send(1)
		if err == nil {
			return errors.New("send to a stopped peer succeeded")
		}
		if !errors.Is(err, ErrUnreachable) && !errors.Is(err, ErrQueueFull) {
			return fmt.Errorf("unexpected error %v", err)
		}
		if a.rec.unreachableCount(2) == 0 {
			return errors.New("not reported unreachable")
		}
		return nil
	})
	b2 := startEndpoint(t, bk, 2, "c", addr)
	waitFor(t, 10*time.Second, func() error {
		_ = send(2)
		if b2.rec.count() == 0 {
			return errors.New("nothing received after restart")
		}
		return nil
	})
}

// A stream that worked starts the reconnection backoff over when it ends:
// a peer that restarts many times over the process's life is reconnected to
// at once each time, not after the longest backoff once a few restarts have
// added up (meanwhile every send to it fails).
func TestBackoffRestartsAfterAStreamThatWorked(t *testing.T) {
	bk := &book{addrs: map[uint64]string{}}
	a := startEndpointWith(t, bk, 1, "c", "", func(o *Options) {
		o.BackoffMin, o.BackoffMax = 10*time.Millisecond, 10*time.Second
	})
	b := startEndpoint(t, bk, 2, "c", "")
	i := 0
	deliver := func(to *endpoint) {
		t.Helper()
		waitFor(t, 30*time.Second, func() error {
			i++
			_ = a.t.Send(2, []*shoalpb.RaftMessage{msg(1, 1, 2, i)})
			if to.rec.count() == 0 {
				return errors.New("nothing received")
			}
			return nil
		})
	}
	deliver(b)
	// Twelve restarts: with the backoff doubling from 10 ms and never
	// starting over, the waits add up to over 15 s (the last ones 5-10 s).
	start := time.Now()
	for range 12 {
		addr := b.addr
		b.stop()
		b = startEndpoint(t, bk, 2, "c", addr)
		deliver(b)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("12 peer restarts took %v to reconnect to", d)
	}

	// A stream the peer refuses (another cluster) did not work: the
	// backoff goes on growing. Eight refusals take at least the first
	// seven waits, 5+10+...+320 ms at their shortest; starting over each
	// time they took about 10 ms each.
	other := startEndpointWith(t, bk, 3, "other", "", func(o *Options) {
		o.BackoffMin, o.BackoffMax = 10*time.Millisecond, 10*time.Second
	})
	start = time.Now()
	waitFor(t, 30*time.Second, func() error {
		i++
		_ = other.t.Send(2, []*shoalpb.RaftMessage{msg(1, 3, 2, i)})
		if n := other.t.Stats().StreamErrors; n < 8 {
			return fmt.Errorf("%d stream errors", n)
		}
		return nil
	})
	if d := time.Since(start); d < 600*time.Millisecond {
		t.Fatalf("8 refused streams in %v: the backoff started over after refusals", d)
	}
}

func TestQueueFull(t *testing.T) {
	bk := &book{addrs: map[uint64]string{2: "127.0.0.1:1"}} // nothing listens there
	tr, err := New(Options{NodeID: 1, ClusterID: "c", Resolve: bk.resolve, QueueBatches: 4,
		BackoffMin: time.Hour, BackoffMax: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	var full, other int
	for i := range 100 {
		switch err := tr.Send(2, []*shoalpb.RaftMessage{msg(1, 1, 2, i)}); {
		case err == nil:
		case errors.Is(err, ErrQueueFull):
			full++
		case errors.Is(err, ErrUnreachable):
			other++
		default:
			t.Fatalf("unexpected error %v", err)
		}
	}
	if full+other == 0 {
		t.Fatal("100 sends to a dead peer with a queue of 4 all succeeded")
	}
	if tr.Stats().MessagesDropped == 0 {
		t.Fatal("drops not counted")
	}
}

// The queue to a peer is bounded in bytes too: batches of large appends
// to a peer that takes nothing fill it long before QueueBatches.
func TestQueueFullByBytes(t *testing.T) {
	// A peer that accepts connections and never answers: the dial hangs,
	// and everything sent waits in the queue.
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer lis.Close()
	var conns []net.Conn
	var mu sync.Mutex
	go func() {
		for {
			c, err := lis.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
		}
	}()
	defer func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range conns {
			c.Close()
		}
	}()
	bk := &book{addrs: map[uint64]string{2: lis.Addr().String()}}
	tr, err := New(Options{NodeID: 1, ClusterID: "c", Resolve: bk.resolve, QueueBytes: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	big := func(i int) []*shoalpb.RaftMessage {
		m := msg(1, 1, 2, i)
		m.Message.Entries[0].Data = make([]byte, 64<<10)
		return []*shoalpb.RaftMessage{m}
	}
	accepted := 0
	for i := range 100 {
		err := tr.Send(2, big(i))
		if errors.Is(err, ErrQueueFull) {
			break
		}
		if err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
		accepted++
	}
	// 1 MiB holds 15 of these (64 KiB and the per-message estimate).
	if accepted < 10 || accepted > 16 {
		t.Fatalf("%d batches of 64 KiB accepted by a 1 MiB queue", accepted)
	}
	// One batch larger than the bound goes into an empty queue only: this
	// one is refused, the queue being full.
	huge := big(1000)
	huge[0].Message.Entries[0].Data = make([]byte, 2<<20)
	if err := tr.Send(2, huge); !errors.Is(err, ErrQueueFull) {
		t.Fatalf("a 2 MiB batch into a full queue: %v", err)
	}
	bk.set(3, lis.Addr().String())
	if err := tr.Send(3, huge); err != nil {
		t.Fatalf("a 2 MiB batch into an empty queue: %v", err)
	}
}

func TestOptionsValidate(t *testing.T) {
	for _, o := range []Options{
		{ClusterID: "c", Resolve: (&book{}).resolve},
		{NodeID: 1, Resolve: (&book{}).resolve},
		{NodeID: 1, ClusterID: "c"},
	} {
		if _, err := New(o); err == nil {
			t.Errorf("New(%+v) succeeded", o)
		}
	}
}

func snapshotChunks(n int) (*shoalpb.SnapshotChunk, func() (*shoalpb.SnapshotChunk, error)) {
	first := &shoalpb.SnapshotChunk{Header: &shoalpb.RaftMessage{ShardId: 1, FromNode: 1, ToNode: 2}}
	i := 0
	return first, func() (*shoalpb.SnapshotChunk, error) {
		if i == n {
			return nil, io.EOF
		}
		i++
		return &shoalpb.SnapshotChunk{Keys: [][]byte{fmt.Appendf(nil, "k%03d", i)}, Values: [][]byte{[]byte("v")}, Done: i == n}, nil
	}
}

func TestSnapshotStream(t *testing.T) {
	bk := &book{addrs: map[uint64]string{}}
	a := startEndpoint(t, bk, 1, "c", "")
	b := startEndpoint(t, bk, 2, "c", "")
	ctx := context.Background()
	first, next := snapshotChunks(100)
	if err := a.t.SendSnapshot(ctx, 2, first, next); err != nil {
		t.Fatal(err)
	}
	b.rec.mu.Lock()
	if len(b.rec.snapshots) != 1 || len(b.rec.snapshots[0]) != 100 || b.rec.snapshots[0][99] != "k100" {
		t.Fatalf("received %v", b.rec.snapshots)
	}
	b.rec.refuse = errors.New("busy")
	b.rec.mu.Unlock()

	first, next = snapshotChunks(3)
	err := a.t.SendSnapshot(ctx, 2, first, next)
	if !errors.Is(err, ErrSnapshotRefused) || !strings.Contains(err.Error(), "busy") {
		t.Fatalf("refused snapshot: %v", err)
	}
	// A refusal before the stream is read gets its reason to the sender
	// too, not the end of the stream its next chunk found.
	b.rec.mu.Lock()
	b.rec.refuseAtOnce = errors.New("no room for it")
	b.rec.mu.Unlock()
	first, next = snapshotChunks(64)
	bigNext := func() (*shoalpb.SnapshotChunk, error) {
		c, err := next()
		if c != nil {
			c.Values[0] = make([]byte, 1<<20)
		}
		return c, err
	}
	err = a.t.SendSnapshot(ctx, 2, first, bigNext)
	if !errors.Is(err, ErrSnapshotRefused) || !strings.Contains(err.Error(), "no room for it") {
		t.Fatalf("snapshot refused at once: %v", err)
	}
	b.rec.mu.Lock()
	b.rec.refuseAtOnce = nil
	b.rec.mu.Unlock()
	// A sender of another cluster, or one aiming at another node, is
	// refused before the handler sees anything.
	other := startEndpoint(t, bk, 3, "other", "")
	first, next = snapshotChunks(3)
	if err := other.t.SendSnapshot(ctx, 2, first, next); err == nil {
		t.Fatal("snapshot from another cluster accepted")
	}
	first, next = snapshotChunks(3)
	first.Header.ToNode = 9
	if err := a.t.SendSnapshot(ctx, 2, first, next); err == nil {
		t.Fatal("snapshot for another node accepted")
	}
	b.rec.mu.Lock()
	defer b.rec.mu.Unlock()
	if len(b.rec.snapshots) != 1 {
		t.Fatalf("handler accepted %d snapshots, want 1", len(b.rec.snapshots))
	}
}

// TestLargeBatchesSplit hands the transport a batch far above the stream
// message limit: it goes out as several stream messages, and nothing is
// dropped.
func TestLargeBatchesSplit(t *testing.T) {
	bk := &book{addrs: map[uint64]string{}}
	a := startEndpoint(t, bk, 1, "c", "")
	b := startEndpoint(t, bk, 2, "c", "")
	var batch []*shoalpb.RaftMessage
	for i := range 8 {
		m := msg(1, 1, 2, i)
		m.Message.Entries[0].Data = make([]byte, 9<<20)
		batch = append(batch, m)
	}
	batch = append(batch, msg(2, 1, 2, 8)) // a small one, e.g. a heartbeat
	if err := a.t.Send(2, batch); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, func() error {
		if c := b.rec.count(); c != len(batch) {
			return fmt.Errorf("received %d of %d", c, len(batch))
		}
		return nil
	})
	st := a.t.Stats()
	if st.StreamErrors != 0 || st.MessagesDropped != 0 || st.BatchesSent < 5 {
		t.Fatalf("stats %+v: want no errors or drops, and the batch split in several", st)
	}
}

// countingConn counts the bytes read from a connection.
type countingConn struct {
	net.Conn
	read *atomic.Int64
}

func (c countingConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	c.read.Add(int64(n))
	return n, err
}

// TestStreamQuietBackwards checks that a Raft stream's receiver sends its
// sender next to nothing: no bandwidth-delay pings or window updates for
// each batch (StreamWindowBytes), which cost a write and a read system
// call on both nodes per batch.
func TestStreamQuietBackwards(t *testing.T) {
	bk := &book{addrs: map[uint64]string{}}
	b := startEndpoint(t, bk, 2, "c", "")
	var read atomic.Int64
	var d net.Dialer
	a, err := New(Options{NodeID: 1, ClusterID: "c", Resolve: bk.resolve, Handler: newRecorder(),
		Dialer: func(ctx context.Context, addr string) (net.Conn, error) {
			c, err := d.DialContext(ctx, "tcp", addr)
			if err != nil {
				return nil, err
			}
			return countingConn{Conn: c, read: &read}, nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Close)
	// One batch at a time, each received before the next is sent, so that
	// every batch is a data frame of its own.
	const n = 500
	for i := range n {
		if err := a.Send(2, []*shoalpb.RaftMessage{msg(7, 1, 2, i)}); err != nil {
			t.Fatalf("send %d: %v", i, err)
		}
		waitFor(t, 10*time.Second, func() error {
			if c := b.rec.count(); c != i+1 {
				return fmt.Errorf("received %d of %d", c, i+1)
			}
			return nil
		})
	}
	if st := a.Stats(); st.BatchesSent != n || st.Connects != 1 {
		t.Fatalf("stats %+v: want %d stream messages on one connection", st, n)
	}
	// The connection's preface, settings and their acks, and a keepalive
	// ping or two take a few hundred bytes; a ping per batch would be
	// 17 bytes each, 8.5 KB.
	if got := read.Load(); got > 1024 {
		t.Errorf("sender read %d bytes from the receiver for %d batches (%.1f per batch)", got, n, float64(got)/n)
	}
	t.Logf("sender read %d bytes for %d batches", read.Load(), n)
}

// The bytes a peer counts as queued go back to zero however batches leave
// the queue: taken into a stream message, carried to the next one, dropped
// while the peer is down, or refused.
func TestQueuedBytesBalance(t *testing.T) {
	tr, err := New(Options{NodeID: 1, ClusterID: "c", Resolve: (&book{}).resolve, QueueBytes: 1 << 20, MaxBatchBytes: 100 << 10})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	p := &peer{t: tr, to: 2, queue: make(chan queuedBatch, 8)} // no goroutine takes from it
	batch := func(i, size int) queuedBatch {
		m := msg(1, 1, 2, i)
		m.Message.Entries[0].Data = make([]byte, size)
		msgs := []*shoalpb.RaftMessage{m}
		return queuedBatch{msgs: msgs, bytes: batchBytes(msgs)}
	}
	for i := range 8 {
		if err := p.enqueue(batch(i, 64<<10)); err != nil {
			t.Fatalf("enqueue %d: %v", i, err)
		}
	}
	if err := p.enqueue(batch(8, 1)); !errors.Is(err, ErrQueueFull) {
		t.Fatalf("enqueue into a full channel: %v", err)
	}
	if err := p.enqueue(batch(9, 2<<20)); !errors.Is(err, ErrQueueFull) {
		t.Fatalf("enqueue past the byte bound: %v", err)
	}
	if want := 8 * batch(0, 64<<10).bytes; p.queued.Load() != want {
		t.Fatalf("queued %d bytes, want %d", p.queued.Load(), want)
	}
	// A stream message of 100 KiB takes one batch and carries the next.
	first := p.dequeued(<-p.queue)
	if b := p.coalesce(first); len(b.Messages) != 1 || len(p.carry) != 1 {
		t.Fatalf("coalesced %d messages, carried %d", len(b.Messages), len(p.carry))
	}
	p.drain()
	if n := p.queued.Load(); n != 0 {
		t.Fatalf("%d bytes still counted after the queue was drained", n)
	}
}

// TestIdlePeerRetires: the sender of a destination nothing is sent to ends
// after PeerIdleTimeout, whether its stream is open (a live node no shard
// talks to now) or it is redialling (a node removed from the cluster), and
// a later Send starts a new one that delivers.
func TestIdlePeerRetires(t *testing.T) {
	bk := &book{addrs: map[uint64]string{}}
	const idle = 200 * time.Millisecond
	a := startEndpointWith(t, bk, 1, "c", "", func(o *Options) { o.PeerIdleTimeout = idle })
	b := startEndpoint(t, bk, 2, "c", "")
	if err := a.t.Send(2, []*shoalpb.RaftMessage{msg(7, 1, 2, 0)}); err != nil {
		t.Fatal(err)
	}
	// Node 3 has no address: its sender redials until it retires.
	if err := a.t.Send(3, []*shoalpb.RaftMessage{msg(7, 1, 3, 0)}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, func() error {
		if st := a.t.Stats(); st.PeersRetired != 2 {
			return fmt.Errorf("%d of 2 idle senders ended: %+v", st.PeersRetired, st)
		}
		return nil
	})
	a.t.mu.Lock()
	left := len(a.t.mu.peers)
	a.t.mu.Unlock()
	if left != 0 {
		t.Fatalf("%d senders left after both retired", left)
	}
	if err := a.t.Send(2, []*shoalpb.RaftMessage{msg(7, 1, 2, 1)}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 10*time.Second, func() error {
		if c := b.rec.count(); c != 2 {
			return fmt.Errorf("received %d of 2", c)
		}
		return nil
	})
	if st := a.t.Stats(); st.Connects != 2 || st.MessagesDropped != 1 {
		t.Fatalf("stats %+v: want 2 streams to node 2 and node 3's message dropped", st)
	}
}

// TestBusyPeerStays: a destination sent to more often than
// PeerIdleTimeout keeps its sender and its one stream.
func TestBusyPeerStays(t *testing.T) {
	bk := &book{addrs: map[uint64]string{}}
	const idle = 2 * time.Second
	a := startEndpointWith(t, bk, 1, "c", "", func(o *Options) { o.PeerIdleTimeout = idle })
	b := startEndpoint(t, bk, 2, "c", "")
	const n = 10
	for i := range n {
		if err := a.t.Send(2, []*shoalpb.RaftMessage{msg(7, 1, 2, i)}); err != nil {
			t.Fatal(err)
		}
		<-time.After(idle / 20) // the pace of the sends is what the test is about
	}
	waitFor(t, 10*time.Second, func() error {
		if c := b.rec.count(); c != n {
			return fmt.Errorf("received %d of %d", c, n)
		}
		return nil
	})
	if st := a.t.Stats(); st.PeersRetired != 0 || st.Connects != 1 {
		t.Fatalf("stats %+v: a sender sent to every %v retired", st, idle/20)
	}
}
