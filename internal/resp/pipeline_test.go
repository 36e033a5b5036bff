package resp_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/internal/keys"
	"github.com/shoaldb/shoal/internal/resp"
)

// gateBackend is a KV backend for testing how a connection runs a
// pipeline. Its slots map onto gateShards shards. Put holds every call
// until gate calls are inside at once (then lets every call through), and
// records, per shard, the order of the keys and whether two calls ever
// overlapped.
type gateBackend struct {
	shoalpb.UnimplementedKVServer
	gate int
	// fickle makes ShardOf name a new shard on every call, as a node's
	// answer can change while a slot's replica arrives or leaves.
	fickle bool

	mu         sync.Mutex
	open       chan struct{}
	opened     bool // open is closed: it stays open
	inside     int
	active     map[uint64]int
	overlap    []string
	order      map[uint64][]string
	maxInTotal int
	calls      int
}

const gateShards = 4

func newGateBackend(gate int) *gateBackend {
	return &gateBackend{gate: gate, open: make(chan struct{}), active: map[uint64]int{}, order: map[uint64][]string{}}
}

func (b *gateBackend) Topology() resp.Topology { return resp.Topology{} }

func (b *gateBackend) ShardOf(slot uint16) uint64 {
	if b.fickle {
		b.mu.Lock()
		defer b.mu.Unlock()
		b.calls++
		return uint64(b.calls)
	}
	return gateShard(slot)
}

// gateShard is the shard of slot for the gate backend.
func gateShard(slot uint16) uint64 { return uint64(slot%gateShards) + 1 }

func (b *gateBackend) Put(ctx context.Context, req *shoalpb.PutRequest) (*shoalpb.PutResponse, error) {
	shard := gateShard(keys.Slot(req.Key))
	b.mu.Lock()
	b.active[shard]++
	if b.active[shard] > 1 {
		b.overlap = append(b.overlap, string(req.Key))
	}
	b.order[shard] = append(b.order[shard], string(req.Key))
	b.inside++
	b.maxInTotal = max(b.maxInTotal, b.inside)
	// Once open, the gate stays open: later calls can bring inside back
	// up to gate, and must not close it again.
	if b.inside == b.gate && !b.opened {
		b.opened = true
		close(b.open)
	}
	b.mu.Unlock()
	defer func() {
		b.mu.Lock()
		b.active[shard]--
		b.inside--
		b.mu.Unlock()
	}()
	select {
	case <-b.open:
		return &shoalpb.PutResponse{Applied: true}, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("held at the gate: %w", ctx.Err())
	}
}

// keysOnShards returns n keys for each of the gate backend's shards.
func keysOnShards(n int) map[uint64][]string {
	out := map[uint64][]string{}
	for i, full := 0, 0; full < gateShards; i++ {
		k := "k" + strconv.Itoa(i)
		s := gateShard(keys.Slot([]byte(k)))
		if len(out[s]) < n {
			out[s] = append(out[s], k)
			if len(out[s]) == n {
				full++
			}
		}
	}
	return out
}

// sendPipeline writes cmds in one write and reads one reply line per
// command.
func sendPipeline(t *testing.T, addr string, cmds [][]string) []string {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if err := nc.SetDeadline(time.Now().Add(20 * time.Second)); err != nil {
		t.Fatal(err)
	}
	var req strings.Builder
	for _, c := range cmds {
		fmt.Fprintf(&req, "*%d\r\n", len(c))
		for _, a := range c {
			fmt.Fprintf(&req, "$%d\r\n%s\r\n", len(a), a)
		}
	}
	if _, err := nc.Write([]byte(req.String())); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(nc)
	replies := make([]string, len(cmds))
	for i := range replies {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("reply %d of %d: %v", i+1, len(cmds), err)
		}
		replies[i] = strings.TrimRight(line, "\r\n")
	}
	return replies
}

// TestPipelineRunsShardsAtOnce sends a pipeline of SETs over all the
// backend's shards. The backend holds every Put until one per shard is
// inside at once: a connection that ran its pipeline one command at a time
// would time out at the gate. Commands on one shard must still reach the
// backend one at a time, in the order sent.
func TestPipelineRunsShardsAtOnce(t *testing.T) {
	b := newGateBackend(gateShards)
	addr := startServerOn(t, b, resp.Options{CommandTimeout: 2 * time.Second})
	perShard := keysOnShards(5)
	var cmds [][]string
	var sent []string
	for i := range 5 {
		for s := uint64(1); s <= gateShards; s++ {
			k := perShard[s][i]
			cmds = append(cmds, []string{"SET", k, "v"})
			sent = append(sent, k)
		}
	}
	for i, r := range sendPipeline(t, addr, cmds) {
		if r != "+OK" {
			t.Fatalf("reply %d (SET %s): %q; the pipeline's shards did not run at once", i, sent[i], r)
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.overlap) > 0 {
		t.Fatalf("commands on one shard overlapped: %v", b.overlap)
	}
	for s, ks := range perShard {
		if !slices.Equal(b.order[s], ks) {
			t.Fatalf("shard %d saw %v, sent %v", s, b.order[s], ks)
		}
	}
	if b.maxInTotal > gateShards {
		t.Fatalf("%d commands ran at once over %d shards", b.maxInTotal, gateShards)
	}
}

// TestPipelineRepliesInOrder mixes pipelined commands with commands that
// run alone (unknown commands, a wrong arity, PING): every reply comes in
// the order of the commands.
func TestPipelineRepliesInOrder(t *testing.T) {
	b := newGateBackend(2)
	addr := startServerOn(t, b, resp.Options{CommandTimeout: 2 * time.Second})
	ks := keysOnShards(2)
	cmds := [][]string{
		{"SET", ks[1][0], "v"},
		{"SET", ks[2][0], "v"}, // with the one above, opens the gate
		{"NOSUCHCOMMAND", "x"},
		{"SET", ks[3][0], "v"},
		{"GET"},
		{"SET", ks[4][0], "v"},
		{"PING"},
		{"SET", ks[1][1], "v"},
	}
	want := []string{"+OK", "+OK", "-ERR unknown command 'NOSUCHCOMMAND', with args beginning with: 'x' ", "+OK",
		"-ERR wrong number of arguments for 'get' command", "+OK", "+PONG", "+OK"}
	got := sendPipeline(t, addr, cmds)
	if !slices.Equal(got, want) {
		t.Fatalf("replies\n%q\nwant\n%q", got, want)
	}
}

// TestPipelineBounds checks the options that bound a pipeline: with
// MaxPipelined 1, or a MaxPipelinedBytes below two commands' arguments,
// commands run one at a time, so a backend that waits for two calls at
// once never sees them and each times out.
func TestPipelineBounds(t *testing.T) {
	for _, tt := range []struct {
		name string
		opts resp.Options
	}{
		{"MaxPipelined=1", resp.Options{MaxPipelined: 1}},
		{"MaxPipelinedBytes=150", resp.Options{MaxPipelinedBytes: 150}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			b := newGateBackend(2)
			tt.opts.CommandTimeout = 300 * time.Millisecond
			addr := startServerOn(t, b, tt.opts)
			ks := keysOnShards(1)
			value := strings.Repeat("v", 100)
			got := sendPipeline(t, addr, [][]string{{"SET", ks[1][0], value}, {"SET", ks[2][0], value}})
			for i, r := range got {
				if !strings.HasPrefix(r, "-") {
					t.Fatalf("reply %d: %q; want the gate's timeout, as commands run one at a time", i, r)
				}
			}
			b.mu.Lock()
			defer b.mu.Unlock()
			if b.maxInTotal != 1 {
				t.Fatalf("%d commands ran at once", b.maxInTotal)
			}
		})
	}
}

// TestPipelineOrderBySlot sends two SETs of one key while the backend
// names a different shard for the key each time it is asked: they must
// still run one after the other, so the gate, which waits for two calls at
// once, never opens.
func TestPipelineOrderBySlot(t *testing.T) {
	b := newGateBackend(2)
	b.fickle = true
	addr := startServerOn(t, b, resp.Options{CommandTimeout: 300 * time.Millisecond})
	got := sendPipeline(t, addr, [][]string{{"SET", "k", "1"}, {"SET", "k", "2"}})
	for i, r := range got {
		if !strings.HasPrefix(r, "-") {
			t.Fatalf("reply %d: %q; two commands on one key ran at once", i, r)
		}
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.maxInTotal != 1 || len(b.overlap) > 0 {
		t.Fatalf("%d commands at once, overlapping %v", b.maxInTotal, b.overlap)
	}
}

// TestPipelineOrderOnCluster pipelines, through go-redis's ClusterClient
// against a real cluster, INCRs of one key between SETs and GETs of
// others: the INCRs reply 1, 2, 3, ... in order, and every GET sees the
// SET sent before it.
func TestPipelineOrderOnCluster(t *testing.T) {
	c := startCluster(t, resp.Options{})
	ctx := ctxFor(t, 60*time.Second)
	rc := clusterClient(t, c, nil)
	const n = 300
	incrs := make([]*redis.IntCmd, n)
	gets := make([]*redis.StringCmd, n)
	_, err := rc.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i := range n {
			k := "order-" + strconv.Itoa(i%40)
			p.Set(ctx, k, i, 0)
			incrs[i] = p.Incr(ctx, "order-counter")
			gets[i] = p.Get(ctx, k)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		if v, err := incrs[i].Result(); err != nil || v != int64(i+1) {
			t.Fatalf("INCR %d replied %d, %v; want %d", i, v, err, i+1)
		}
		if v, err := gets[i].Int(); err != nil || v != i {
			t.Fatalf("GET after SET %d replied %v, %v", i, gets[i].Val(), err)
		}
	}
	if v, err := rc.Get(ctx, "order-counter").Int(); err != nil || v != n {
		t.Fatalf("counter %d, %v; want %d", v, err, n)
	}
}

// TestCommandTimeoutOnReusedContext checks the bound a connection's
// commands get from the context it reuses (conn.ctx): a command sent while
// most of CommandTimeout has gone since the context was made still gets at
// least CommandTimeout, not what is left of it.
func TestCommandTimeoutOnReusedContext(t *testing.T) {
	const timeout = 400 * time.Millisecond
	b := newGateBackend(2) // a lone SET waits at the gate until its deadline
	addr := startServerOn(t, b, resp.Options{CommandTimeout: timeout})
	rc := redis.NewClient(&redis.Options{Addr: addr, PoolSize: 1, ReadTimeout: 20 * time.Second, MaxRetries: -1})
	defer rc.Close()
	ctx := ctxFor(t, 30*time.Second)
	// GET fails at once (the backend has none) but makes the connection's
	// context; more GETs, for 60% of the timeout, reuse it or (past half
	// of it) renew it. A connection that renewed its context only when it
	// ran out would give the SET below 40% of the timeout.
	if err := rc.Get(ctx, "k").Err(); err == nil || errors.Is(err, redis.Nil) {
		t.Fatalf("GET: %v; want the backend's error", err)
	}
	start := time.Now()
	for time.Since(start) < timeout*6/10 {
		if err := rc.Get(ctx, "k").Err(); err == nil || errors.Is(err, redis.Nil) {
			t.Fatalf("GET: %v; want the backend's error", err)
		}
	}
	sent := time.Now()
	err := rc.Set(ctx, "k", "v", 0).Err()
	took := time.Since(sent)
	if err == nil {
		t.Fatal("SET passed a gate that never opens")
	}
	if took < timeout {
		t.Fatalf("SET timed out after %v (%v); want at least the command timeout, %v", took, err, timeout)
	}
	if took > 10*time.Second {
		t.Fatalf("SET took %v to time out", took)
	}
}

// bigGetBackend is the gate backend whose Get answers every key with
// getValue (64 KiB), for tests of large replies.
type bigGetBackend struct {
	*gateBackend
	gets *atomic.Int64
}

func newBigGetBackend() bigGetBackend { return bigGetBackend{newGateBackend(1), new(atomic.Int64)} }

func (b bigGetBackend) Get(ctx context.Context, req *shoalpb.GetRequest) (*shoalpb.GetResponse, error) {
	b.gets.Add(1)
	return &shoalpb.GetResponse{Found: true, Value: getValue}, nil
}

var getValue = bytes.Repeat([]byte{'g'}, 64<<10)

// smallBuffers is a listener whose connections have socket buffers of
// sockBuf, fixed rather than grown by the kernel, so that what the
// sockets can hold, and so a test of what happens past it, does not
// depend on the machine's settings.
type smallBuffers struct{ net.Listener }

const sockBuf = 64 << 10

func (l smallBuffers) Accept() (net.Conn, error) {
	nc, err := l.Listener.Accept()
	if tc, ok := nc.(*net.TCPConn); ok {
		tc.SetReadBuffer(sockBuf)
		tc.SetWriteBuffer(sockBuf)
	}
	return nc, err
}

// dialSmallBuffers starts a server on backend whose connections, and the
// client connection it returns, have socket buffers of sockBuf.
func dialSmallBuffers(t *testing.T, backend resp.Backend, opts resp.Options) *net.TCPConn {
	t.Helper()
	addr := startServerWrapped(t, backend, opts, func(l net.Listener) net.Listener { return smallBuffers{l} })
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	tc := nc.(*net.TCPConn)
	if err := errors.Join(tc.SetReadBuffer(sockBuf), tc.SetWriteBuffer(sockBuf), tc.SetDeadline(time.Now().Add(20*time.Second))); err != nil {
		t.Fatal(err)
	}
	return tc
}

// bigPipeline is a pipeline of pairs ECHO of 64 KiB and GET of a key,
// whose replies are 64 KiB each: 8 MiB of commands and 16 MiB of
// replies, far more than sockets of sockBuf hold.
func bigPipeline() (cmds []byte, pairs int, echo []byte) {
	pairs = 128
	echo = bytes.Repeat([]byte{'e'}, 64<<10)
	var b bytes.Buffer
	for i := range pairs {
		fmt.Fprintf(&b, "*2\r\n$4\r\nECHO\r\n$%d\r\n%s\r\n", len(echo), echo)
		k := "k" + strconv.Itoa(i)
		fmt.Fprintf(&b, "*2\r\n$3\r\nGET\r\n$%d\r\n%s\r\n", len(k), k)
	}
	return b.Bytes(), pairs, echo
}

// readBigPipeline reads and checks bigPipeline's replies.
func readBigPipeline(t *testing.T, br *bufio.Reader, pairs int, echo []byte) {
	t.Helper()
	for i := range 2 * pairs {
		want := echo
		if i%2 == 1 {
			want = getValue
		}
		head, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("reply %d of %d: %v", i+1, 2*pairs, err)
		}
		if head != "$"+strconv.Itoa(len(want))+"\r\n" {
			t.Fatalf("reply %d: %q", i+1, head)
		}
		got := make([]byte, len(want)+2)
		if _, err := io.ReadFull(br, got); err != nil {
			t.Fatalf("reply %d: %v", i+1, err)
		}
		if !bytes.Equal(got[:len(want)], want) || string(got[len(want):]) != "\r\n" {
			t.Fatalf("reply %d: wrong contents", i+1)
		}
	}
}

// TestPipelineLargerThanSocketBuffers sends a whole pipeline before it
// reads any reply, as go-redis's Pipeline does, with more commands and
// more replies than the sockets buffer. A connection that stopped reading
// commands while the client did not read replies would leave the client's
// write stuck until its deadline.
func TestPipelineLargerThanSocketBuffers(t *testing.T) {
	nc := dialSmallBuffers(t, newBigGetBackend(), resp.Options{})
	cmds, pairs, echo := bigPipeline()
	if _, err := nc.Write(cmds); err != nil {
		t.Fatalf("writing the pipeline before reading: %v", err)
	}
	readBigPipeline(t, bufio.NewReader(nc), pairs, echo)
}

// TestReplyBacklogBound checks MaxReplyBacklog: with 1 MiB, the same
// pipeline cannot all be sent before the client reads (the connection
// stops reading commands once 1 MiB of replies waits, with about 2 MiB
// more of them in the sockets), and it all arrives once the client reads.
func TestReplyBacklogBound(t *testing.T) {
	b := newBigGetBackend()
	nc := dialSmallBuffers(t, b, resp.Options{MaxReplyBacklog: 1 << 20})
	cmds, pairs, echo := bigPipeline()
	// The connection stops reading with about 1 MiB of commands taken
	// (and 256 KiB in the sockets) of 8 MiB.
	written := writeUntilBacklogWait(t, nc, cmds, "")
	if n := b.gets.Load(); n >= int64(pairs)/2 {
		t.Fatalf("%d of %d GETs ran before any reply was read", n, pairs)
	}
	readBigPipeline(t, bufio.NewReader(nc), pairs, echo)
	if err := <-written; err != nil {
		t.Fatal(err)
	}
}

// writeUntilBacklogWait writes p to nc without reading, until the server
// counts a connection that stopped reading at its reply backlog (INFO's
// reply_backlog_waits, asked on a connection of its own). The write must
// still be under way then: p is larger than what the server took before
// it stopped. The write's error comes on the channel returned.
func writeUntilBacklogWait(t *testing.T, nc net.Conn, p []byte, password string) <-chan error {
	t.Helper()
	written := make(chan error, 1)
	go func() {
		_, err := nc.Write(p)
		written <- err
	}()
	waitBacklogWait(t, nc, password)
	select {
	case err := <-written:
		t.Fatalf("the whole pipeline was taken before any reply was read (write error %v): the backlog is not bounded", err)
	default:
	}
	return written
}

func waitBacklogWait(t *testing.T, nc net.Conn, password string) {
	t.Helper()
	rc := redis.NewClient(&redis.Options{Addr: nc.RemoteAddr().String(), Password: password, MaxRetries: -1})
	defer rc.Close()
	ctx := ctxFor(t, 20*time.Second)
	for {
		info, err := rc.Info(ctx, "stats").Result()
		if err == nil && !strings.Contains(info, "reply_backlog_waits:0\r\n") && strings.Contains(info, "reply_backlog_waits:") {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("no connection stopped at its reply backlog: %v, %q", err, info)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// TestUnauthenticatedBacklog: before AUTH, on a server with a password, a
// connection queues little: the same pipeline, answered -NOAUTH, stalls
// far sooner than the default backlog would let it.
func TestUnauthenticatedBacklog(t *testing.T) {
	nc := dialSmallBuffers(t, newBigGetBackend(), resp.Options{Password: "secret"})
	// Commands with longer replies: 1 MiB of PING x (21 bytes), each
	// answered "-NOAUTH Authentication required." (34 bytes).
	cmd := "*2\r\n$4\r\nPING\r\n$1\r\nx\r\n"
	n := (1 << 20) / len(cmd)
	// The connection stops reading once 64 KiB of replies are queued, a
	// few hundred KiB into the 1 MiB (what the sockets hold included).
	written := writeUntilBacklogWait(t, nc, []byte(strings.Repeat(cmd, n)), "secret")
	br := bufio.NewReader(nc)
	for i := range n {
		line, err := br.ReadString('\n')
		if err != nil || !strings.HasPrefix(line, "-NOAUTH") {
			t.Fatalf("reply %d of %d: %q, %v", i+1, n, line, err)
		}
	}
	if err := <-written; err != nil {
		t.Fatal(err)
	}
}

// TestProtocolErrorAfterLargePipeline: a client writes a pipeline whose
// replies outgrow the sockets, then a malformed command and more bytes
// than the connection discards after its FIN, before it reads anything. It
// still gets every reply, then the protocol error, then the end of the
// connection: the connection discards what follows the error while the
// replies go out, not only after.
// A client that reads slowly, for longer than the connection waits for a
// client that does nothing (lingerTime, 1 s), still gets them all.
func TestProtocolErrorAfterLargePipeline(t *testing.T) {
	t.Run("reading at once", func(t *testing.T) { testProtocolErrorAfterLargePipeline(t, 0) })
	// 64 replies, 30 ms apart: about 2 s.
	t.Run("reading slowly", func(t *testing.T) { testProtocolErrorAfterLargePipeline(t, 30*time.Millisecond) })
}

func testProtocolErrorAfterLargePipeline(t *testing.T, pause time.Duration) {
	nc := dialSmallBuffers(t, newBigGetBackend(), resp.Options{})
	echo := bytes.Repeat([]byte{'e'}, 64<<10)
	const n = 64
	var req bytes.Buffer
	for range n {
		fmt.Fprintf(&req, "*2\r\n$4\r\nECHO\r\n$%d\r\n%s\r\n", len(echo), echo)
	}
	req.WriteString("*1\r\n$x\r\n")
	req.Write(bytes.Repeat([]byte{'j'}, 1<<20)) // over lingerBytes (256 KiB)
	if _, err := nc.Write(req.Bytes()); err != nil {
		t.Fatalf("writing the pipeline before reading: %v", err)
	}
	br := bufio.NewReader(nc)
	for i := range n {
		head, err := br.ReadString('\n')
		if err != nil || head != "$"+strconv.Itoa(len(echo))+"\r\n" {
			t.Fatalf("reply %d of %d: %q, %v", i+1, n, head, err)
		}
		if _, err := br.Discard(len(echo) + 2); err != nil {
			t.Fatalf("reply %d: %v", i+1, err)
		}
		if pause > 0 {
			<-time.After(pause) // the client's pace is what the test is about
		}
	}
	line, err := br.ReadString('\n')
	if err != nil || !strings.HasPrefix(line, "-ERR Protocol error") {
		t.Fatalf("after the replies: %q, %v; want the protocol error", line, err)
	}
	if rest, err := io.ReadAll(br); err != nil || len(rest) != 0 {
		t.Fatalf("after the protocol error: %q, %v; want the connection's end", rest, err)
	}
}
