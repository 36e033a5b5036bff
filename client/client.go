package client

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/internal/keys"
)

// Errors a request can end with. They wrap the server's status, so the
// message says more; test them with errors.Is.
var (
	// ErrNotInteger: INCR on a value that is not a 64-bit decimal integer.
	ErrNotInteger = errors.New("shoal: value is not an integer or out of range")
	// ErrOverflow: the increment would overflow.
	ErrOverflow = errors.New("shoal: increment or decrement would overflow")
	// ErrTooLarge: the key or value is larger than the cluster accepts, the
	// values a batch would return exceed 16 MiB (then nothing was
	// applied), or a read's answer exceeds its limit (48 MiB of values for
	// a MultiGet). With ErrAmbiguous: a write was applied but its answer
	// was too large to send.
	ErrTooLarge = errors.New("shoal: key or value too large")
	// ErrCrossShard: a batch's keys are in more than one shard. Use hash tags
	// ({...}) to keep keys together.
	ErrCrossShard = errors.New("shoal: keys in more than one shard")
	// ErrInvalid: the request is malformed.
	ErrInvalid = errors.New("shoal: invalid request")
	// ErrTimeout: the context ended before the request succeeded; the
	// error wraps the context's cause (context.DeadlineExceeded or
	// Canceled unless the caller gave another) and the last attempt's
	// error. For a write, ErrAmbiguous says whether it may have been
	// applied.
	ErrTimeout = errors.New("shoal: timed out")
	// ErrAmbiguous: a write may or may not have been applied, and retrying
	// could not settle it (no session, or the deadline passed).
	ErrAmbiguous = errors.New("shoal: outcome unknown")
	// ErrDiskFull: the shard's leader has less free disk space than its
	// reserve. Nothing was written (unless ErrAmbiguous is set too: an
	// earlier attempt of the write may have been); deletes are still
	// accepted, and writes are again once space is freed.
	ErrDiskFull = errors.New("shoal: disk full")
	// ErrClosed: the client (or the MasterConn) is closed.
	ErrClosed = errors.New("shoal: client closed")
)

// DefaultTimeout bounds a request whose context has no deadline.
const DefaultTimeout = 10 * time.Second

// Option configures a Client.
type Option func(*options)

type options struct {
	dial           []grpc.DialOption
	defaultTimeout time.Duration
	attemptTimeout time.Duration
	maxBackoff     time.Duration
	stale          bool
	noSession      bool
	forward        bool
	noBatching     bool
	logger         *slog.Logger
}

// WithDialOptions sets the gRPC dial options for masters and nodes.
// Default: DefaultDialOptions. Stream interceptors among them see the
// messages the client sends on a node's KV.BatchCommands stream already
// encoded (not as proto messages); one that needs proto messages wants
// WithoutCommandBatching too.
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(o *options) { o.dial = opts }
}

// DefaultDialOptions are the dial options a Client uses unless
// WithDialOptions replaces them: insecure credentials, messages up to
// MaxMessageBytes, and fixed flow-control windows (2 MiB per stream, 8 MiB per connection: the
// nodes' servers use the same, internal/transport.StreamWindowBytes). Fixed windows turn off gRPC's bandwidth-delay
// estimator, which otherwise answers nearly every response with a PING
// and a window update: two more frames, and system calls on both ends,
// per request.
func DefaultDialOptions() []grpc.DialOption {
	return []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithInitialWindowSize(2 << 20),
		grpc.WithInitialConnWindowSize(8 << 20),
		// The nodes' message limit (internal/transport.MaxMessageBytes):
		// values go up to 8 MiB, and a scan page can hold more; gRPC's
		// default is 4 MiB.
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(MaxMessageBytes), grpc.MaxCallSendMsgSize(MaxMessageBytes)),
	}
}

// MaxMessageBytes bounds a request or response the client sends or takes,
// as the nodes do.
const MaxMessageBytes = 64 << 20

// WithDefaultTimeout bounds requests whose context has no deadline.
// Default DefaultTimeout.
func WithDefaultTimeout(d time.Duration) Option {
	return func(o *options) { o.defaultTimeout = d }
}

// DefaultAttemptTimeout bounds one attempt of a request at one node.
const DefaultAttemptTimeout = time.Second

// WithAttemptTimeout bounds each attempt at one node: a node that does not
// answer in time (frozen, cut off, overloaded) is left for another replica,
// which names the current leader, instead of holding the request until its
// deadline. A write retried this way is still applied once (the client
// session). A large request gets d again per MiB of its keys and values:
// one given up on while it is still replicated would be sent again, and
// its copy would add as much work again. 0 lets one attempt use the whole
// deadline. Default DefaultAttemptTimeout.
func WithAttemptTimeout(d time.Duration) Option {
	return func(o *options) { o.attemptTimeout = d }
}

// attemptFor is the bound of one attempt of a request of size bytes; see
// WithAttemptTimeout.
func (o *options) attemptFor(size int) time.Duration {
	d := o.attemptTimeout
	return d + time.Duration(int64(d)*int64(size)>>20)
}

// WithMaxBackoff caps the wait between retries while a shard has no
// leader. Default 200ms.
func WithMaxBackoff(d time.Duration) Option {
	return func(o *options) { o.maxBackoff = d }
}

// WithStaleReads makes reads served by any replica without a round trip to
// the leader: faster, but they may miss recent writes. Default: linearizable
// reads.
func WithStaleReads() Option { return func(o *options) { o.stale = true } }

// WithoutSession sends writes without a client session: a write retried
// after an ambiguous failure could then apply twice, so the client returns
// ErrAmbiguous instead of retrying it. Default: with a session.
func WithoutSession() Option { return func(o *options) { o.noSession = true } }

// WithForwarding sends requests to any node and lets it forward them to the
// leader, instead of routing by the shard table. Default: direct routing.
func WithForwarding() Option { return func(o *options) { o.forward = true } }

// WithoutCommandBatching sends every request as its own unary gRPC call.
// Default: requests to a node (all but Scan) share one KV.BatchCommands
// stream, and those in flight together share its messages, which costs
// the client and the node less CPU per request than a unary call each;
// a node that does not serve the stream gets unary calls.
func WithoutCommandBatching() Option { return func(o *options) { o.noBatching = true } }

// WithLogger sets the client's logger. Default: discarded.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.logger = l } }

// Client is a connection to a Shoal cluster.
type Client struct {
	opts    options
	masters *MasterConn
	routes  *routeCache
	session *sessionTracker

	mu     sync.Mutex
	nodes  map[string]*nodeConn
	closed bool
	// refreshing is closed when the route fetch in flight (refresh) ends;
	// nil when none is.
	refreshing chan struct{}

	// ctx ends at Close, and with it the watch and the batchers' streams.
	ctx  context.Context
	stop context.CancelFunc
	wg   sync.WaitGroup
}

// Open connects to the cluster whose masters are at masterAddrs and waits
// (within ctx) until it has a shard table with every shard placed.
func Open(ctx context.Context, masterAddrs []string, opts ...Option) (*Client, error) {
	o := options{defaultTimeout: DefaultTimeout, attemptTimeout: DefaultAttemptTimeout, maxBackoff: 200 * time.Millisecond, logger: slog.New(slog.DiscardHandler)}
	for _, f := range opts {
		f(&o)
	}
	if len(o.dial) == 0 {
		o.dial = DefaultDialOptions()
	}
	m, err := DialMasters(masterAddrs, o.dial...)
	if err != nil {
		return nil, err
	}
	c := &Client{opts: o, masters: m, routes: newRouteCache(), nodes: map[string]*nodeConn{}}
	c.ctx, c.stop = context.WithCancel(context.Background())
	if !o.noSession {
		var b [8]byte
		if _, err := rand.Read(b[:]); err != nil {
			return nil, err
		}
		c.session = newSessionTracker(binary.BigEndian.Uint64(b[:]) | 1)
	}
	for {
		t, err := m.GetRoutes(ctx)
		if err != nil {
			c.stop()
			m.Close()
			return nil, fmt.Errorf("shoal: open: %w", err)
		}
		if complete(t) {
			c.routes.replace(t)
			break
		}
		select {
		case <-ctx.Done():
			c.stop()
			m.Close()
			return nil, fmt.Errorf("shoal: open: the cluster has not placed its shards yet: %w", ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
	c.wg.Add(1)
	go c.watch(c.ctx)
	return c, nil
}

// complete reports whether t's shards cover every slot.
func complete(t *shoalpb.RouteTable) bool {
	covered := 0
	for _, rt := range t.GetShards() {
		covered += int(rt.Shard.EndSlot - rt.Shard.StartSlot)
	}
	return covered == keys.SlotCount
}

// Close closes the client's connections.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	c.mu.Unlock()
	c.stop()
	c.wg.Wait()
	c.mu.Lock()
	for a, n := range c.nodes {
		n.close()
		delete(c.nodes, a)
	}
	c.mu.Unlock()
	return c.masters.Close()
}

// Routes returns the client's copy of the shard table.
func (c *Client) Routes() *shoalpb.RouteTable { return c.routes.current() }

// watch keeps the shard table current from the masters' WatchRoutes stream.
func (c *Client) watch(ctx context.Context) {
	defer c.wg.Done()
	for ctx.Err() == nil {
		err := c.masters.Call(ctx, func(ctx context.Context, mc shoalpb.MasterClient) error {
			w, err := mc.WatchRoutes(ctx, &shoalpb.WatchRoutesRequest{AfterVersion: c.routes.version()})
			if err != nil {
				return err
			}
			for {
				t, err := w.Recv()
				if err != nil {
					return err
				}
				c.routes.replace(t)
				c.pruneNodes()
			}
		})
		if ctx.Err() != nil {
			return
		}
		c.opts.logger.Debug("route watch ended; reconnecting", "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// node returns the connection to the node at addr, made the first time,
// for one attempt: the caller calls release when the attempt is over.
func (c *Client) node(addr string) (*nodeConn, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil, ErrClosed
	}
	n, ok := c.nodes[addr]
	if !ok {
		conn, err := grpc.NewClient(addr, c.opts.dial...)
		if err != nil {
			return nil, err
		}
		n = &nodeConn{addr: addr, conn: conn, kv: shoalpb.NewKVClient(conn)}
		if !c.opts.noBatching {
			bctx, cancel := context.WithCancel(c.ctx)
			n.batch = &batcher{kc: n.kv, addr: addr, ctx: bctx, cancel: cancel}
			n.kv = batchKV{KVClient: n.kv, b: n.batch}
		}
		c.nodes[addr] = n
	}
	// A retired connection still serves this attempt; it closes after the
	// last, and a later attempt makes a new one if the address is named
	// again.
	n.inUse.Add(1)
	return n, nil
}

// release ends an attempt's use of n (node).
func (c *Client) release(n *nodeConn) {
	if n.inUse.Add(-1) == 0 && n.retired.Load() {
		c.closeRetired(n)
	}
}

// nodeConn is the client's connection to one node.
type nodeConn struct {
	addr string
	conn *grpc.ClientConn
	// kv sends the node's KV requests: through batch unless the client
	// batches none (WithoutCommandBatching; batch is nil then).
	kv    shoalpb.KVClient
	batch *batcher
	// inUse counts the attempts using the connection; retired is set once
	// the route table no longer names its address. The connection closes
	// when both hold: closing it under an attempt would make a write that
	// went out read as possibly applied.
	inUse   atomic.Int64
	retired atomic.Bool
}

// pruneNodes retires the connections to addresses the route table no
// longer names (a node removed, or moved to another address): each closes
// once no attempt uses it, so that a client outliving many nodes does not
// keep a connection, and a stream with its goroutines, to each.
func (c *Client) pruneNodes() {
	known := c.routes.addrs()
	var unused []*nodeConn
	c.mu.Lock()
	for addr, n := range c.nodes {
		if known[addr] {
			n.retired.Store(false) // named again before its last use ended
			continue
		}
		n.retired.Store(true)
		if n.inUse.Load() == 0 {
			delete(c.nodes, addr)
			unused = append(unused, n)
		}
	}
	c.mu.Unlock()
	for _, n := range unused {
		n.close()
	}
}

// closeRetired closes n if it is retired, unused and still the client's.
func (c *Client) closeRetired(n *nodeConn) {
	c.mu.Lock()
	if c.nodes[n.addr] != n || !n.retired.Load() || n.inUse.Load() != 0 {
		c.mu.Unlock()
		return
	}
	delete(c.nodes, n.addr)
	c.mu.Unlock()
	n.close()
}

func (n *nodeConn) close() {
	if n.batch != nil {
		n.batch.close()
	}
	n.conn.Close()
}

// call is one attempt of a request against one node.
type call func(ctx context.Context, kc shoalpb.KVClient, h *shoalpb.RequestHeader) (*shoalpb.ResponseHeader, error)

// do runs a request for a key in slot until it succeeds, fails for good,
// or ctx ends; see the package doc for how it retries.
//
// size is the request's keys and values in bytes; it lengthens each
// attempt's bound (WithAttemptTimeout).
func (c *Client) do(ctx context.Context, slot uint16, write bool, size int, f call) error {
	// The request's bound: ctx's deadline, else the default timeout. A
	// context carrying the default one (a timer) is made only if the first
	// attempt does not settle the request; that attempt's own context
	// carries the bound until then.
	deadline, bounded := ctx.Deadline()
	var release context.CancelFunc
	if !bounded {
		deadline = time.Now().Add(c.opts.defaultTimeout)
		defer func() {
			if release != nil {
				release()
			}
		}()
	}
	bound := func() {
		if !bounded {
			ctx, release = context.WithDeadline(ctx, deadline)
			bounded = true
		}
	}
	var sess *shoalpb.Session
	if write && c.session != nil {
		seq, acked := c.session.begin()
		sess = &shoalpb.Session{Id: c.session.id, Seq: seq, AckedBelow: acked}
		defer func() { c.session.end(sess.Seq) }()
	}
	backoff := 2 * time.Millisecond
	var last error
	mayHaveApplied := false
	var exclude map[string]bool // made at the first node excluded
	// silent holds the nodes that let an attempt time out, and when: a
	// replica naming one of them as leader is, for a while, more likely
	// stale (the leader froze or was cut off and the others have not
	// elected yet) than right, so the client asks the replica again
	// rather than going back to wait on the silent node.
	var silent map[string]time.Time
	// immediate counts the retries sent at once since the last wait. Two
	// replicas can each name the other as leader for a while (a leader
	// handover in flight, or a stale replica), so after
	// maxImmediateRetries in a row the client waits its backoff even for
	// news, rather than bounce between them as fast as the network allows.
	immediate := 0
	for {
		rt, addr, _ := c.routes.target(slot, c.opts.forward, exclude)
		if addr == "" {
			// Every node of the shard failed to answer: start over with the
			// freshest table.
			clear(exclude)
			bound()
			c.refresh(ctx)
			rt, addr, _ = c.routes.target(slot, c.opts.forward, exclude)
		}
		var err error
		sent := false // the request went to a node (it may have been served)
		if addr == "" {
			err = status.Error(codes.Unavailable, fmt.Sprintf("no node known for slot %d", slot))
		} else {
			h := &shoalpb.RequestHeader{ShardId: rt.GetShardId(), Epoch: rt.GetEpoch(),
				Direct: !c.opts.forward, Session: sess, ClusterId: c.routes.clusterID()}
			if c.opts.stale {
				h.Consistency = shoalpb.ReadConsistency_READ_CONSISTENCY_STALE
			}
			var n *nodeConn
			if n, err = c.node(addr); err == nil {
				var rh *shoalpb.ResponseHeader
				actx, cancel := ctx, context.CancelFunc(nil)
				d := deadline
				if c.opts.attemptTimeout > 0 {
					if t := time.Now().Add(c.opts.attemptFor(size)); t.Before(d) {
						d = t
					}
				}
				if d.Before(deadline) || !bounded {
					actx, cancel = context.WithDeadline(ctx, d)
				}
				rh, err = f(actx, n.kv, h)
				c.release(n)
				if cancel != nil {
					cancel()
				}
				// A command the caller gave up on while it was still
				// queued for the node's stream never left.
				sent = !errors.Is(err, errNotSent)
				if err == nil {
					c.routes.learn(h.ShardId, rh)
					return nil
				}
				if errors.Is(err, ErrClosed) {
					// Closed under the call, before it went out: this
					// attempt did nothing, and there is no retrying.
					if write && mayHaveApplied {
						return fmt.Errorf("%w: %w", ErrAmbiguous, err)
					}
					return err
				}
			}
		}
		last = err
		bound()
		if exclude == nil {
			exclude = map[string]bool{}
		}
		d := shoalpb.DetailOf(err)
		if write && (d.GetAmbiguous() || d == nil && sent && shoalpb.MayBeServed(err)) {
			// The node said the write may yet be applied (it was in the
			// log of a leader that lost its place, or its outcome was not
			// known in time), or no answer came for a request that went
			// out. Only a session makes running it again safe.
			mayHaveApplied = true
			if sess == nil {
				if ctx.Err() != nil {
					return timedOut(ctx, true, err)
				}
				return fmt.Errorf("%w: %w", ErrAmbiguous, err)
			}
		}
		retryNow := false
		switch d.GetCode() {
		case shoalpb.ErrorCode_ERROR_CODE_NOT_LEADER:
			retryNow = c.routes.setLeader(slot, d.LeaderId, d.LeaderAddr)
			// The hint is fresher than whatever made us skip that node
			// earlier (say, it had not created its replica yet), unless
			// that node has just let us time out.
			if a := c.routes.addrOf(d.LeaderId); a != "" && exclude[a] {
				if at, ok := silent[a]; ok && time.Since(at) < c.opts.attemptTimeout {
					retryNow = false
				} else {
					delete(exclude, a)
				}
			}
		case shoalpb.ErrorCode_ERROR_CODE_EPOCH_MISMATCH:
			retryNow = c.routes.setShard(d.Shard)
		case shoalpb.ErrorCode_ERROR_CODE_SHARD_NOT_HERE, shoalpb.ErrorCode_ERROR_CODE_WRONG_CLUSTER:
			// WRONG_CLUSTER: the address is a node of another cluster now
			// (it did nothing); the table is stale.
			exclude[addr] = true
			c.refresh(ctx)
		case shoalpb.ErrorCode_ERROR_CODE_NO_LEADER:
			// The node knows no leader: it may be one cut off from its
			// peers that the client still reaches. Ask another replica,
			// which names the new leader once there is one.
			exclude[addr] = true
			c.routes.forgetLeader(slot)
		case shoalpb.ErrorCode_ERROR_CODE_STALE_SEQUENCE:
			if !write || sess == nil || mayHaveApplied {
				return c.final(d, err)
			}
			// The shard's acknowledged mark passed this sequence while it
			// waited to be retried (a shard forgets the oldest of a
			// session's results past 256 and raises its mark past them),
			// so the shard refuses it now and at any later apply. No
			// attempt of it may have been applied: the write goes again
			// under a new sequence.
			c.session.end(sess.Seq)
			seq, acked := c.session.begin()
			sess = &shoalpb.Session{Id: c.session.id, Seq: seq, AckedBelow: acked}
			retryNow = true
		case shoalpb.ErrorCode_ERROR_CODE_OVERLOADED:
		case shoalpb.ErrorCode_ERROR_CODE_TIMEOUT, shoalpb.ErrorCode_ERROR_CODE_UNAVAILABLE:
			exclude[addr] = true
		case shoalpb.ErrorCode_ERROR_CODE_UNSPECIFIED:
			// No answer from the node (connection refused, reset, deadline):
			// try another replica.
			if ctx.Err() != nil {
				break
			}
			if code := status.Code(err); code != codes.Unavailable && code != codes.DeadlineExceeded && code != codes.Canceled {
				if write && mayHaveApplied {
					return fmt.Errorf("%w: %w", ErrAmbiguous, err)
				}
				return err
			}
			exclude[addr] = true
			if status.Code(err) == codes.DeadlineExceeded {
				if silent == nil {
					silent = map[string]time.Time{}
				}
				silent[addr] = time.Now()
			}
			c.routes.forgetLeader(slot)
			retryNow = true
		default:
			if write && mayHaveApplied {
				// A refusal speaks for this attempt only: an earlier one
				// may have been applied (DISK_FULL is checked before the
				// session could say so).
				return fmt.Errorf("%w: %w", ErrAmbiguous, c.final(d, err))
			}
			return c.final(d, err)
		}
		if ctx.Err() != nil {
			return timedOut(ctx, write && mayHaveApplied, last)
		}
		if retryNow && immediate < maxImmediateRetries {
			immediate++
			continue
		}
		immediate = 0
		select {
		case <-ctx.Done():
			// Not another attempt: one with no time left would fail
			// before it went out, yet read as a write that may have.
			return timedOut(ctx, write && mayHaveApplied, last)
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, c.opts.maxBackoff)
	}
}

// timedOut is the error of a request whose context ended after its last
// attempt failed with last: ErrTimeout (and ErrAmbiguous when an attempt
// may have been applied), the context's error and last.
func timedOut(ctx context.Context, ambiguous bool, last error) error {
	if ambiguous {
		return fmt.Errorf("%w, %w, %w: %w", ErrTimeout, ErrAmbiguous, context.Cause(ctx), last)
	}
	return fmt.Errorf("%w, %w: %w", ErrTimeout, context.Cause(ctx), last)
}

// maxImmediateRetries is how many retries in a row a request sends without
// waiting, when each answer brought news (a new leader, a newer shard
// descriptor, another replica to try).
const maxImmediateRetries = 3

// final maps a wire error that retrying cannot fix.
func (c *Client) final(d *shoalpb.ErrorDetail, err error) error {
	switch d.Code {
	case shoalpb.ErrorCode_ERROR_CODE_NOT_INTEGER:
		return fmt.Errorf("%w: %w", ErrNotInteger, err)
	case shoalpb.ErrorCode_ERROR_CODE_OVERFLOW:
		return fmt.Errorf("%w: %w", ErrOverflow, err)
	case shoalpb.ErrorCode_ERROR_CODE_TOO_LARGE:
		return fmt.Errorf("%w: %w", ErrTooLarge, err)
	case shoalpb.ErrorCode_ERROR_CODE_CROSS_SHARD:
		return fmt.Errorf("%w: %w", ErrCrossShard, err)
	case shoalpb.ErrorCode_ERROR_CODE_DISK_FULL:
		return fmt.Errorf("%w: %w", ErrDiskFull, err)
	case shoalpb.ErrorCode_ERROR_CODE_STALE_SEQUENCE:
		// The write's sequence was already settled, after an attempt that
		// may have been applied: it was, and its result is gone, or the
		// shard's mark passed it first.
		return fmt.Errorf("%w: %w", ErrAmbiguous, err)
	case shoalpb.ErrorCode_ERROR_CODE_WRONG_CLUSTER:
		return fmt.Errorf("%w: %w", ErrWrongCluster, err)
	}
	return fmt.Errorf("%w: %w", ErrInvalid, err)
}

// refresh fetches the shard table from the masters now, and waits for it
// (or for ctx). Requests that need it at once share one fetch: during an
// election every request whose replicas all failed asks, and each used to
// send the masters a GetRoutes of its own.
func (c *Client) refresh(ctx context.Context) {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	done := c.refreshing
	if done == nil {
		done = make(chan struct{})
		c.refreshing = done
		c.wg.Add(1)
		go c.fetchRoutes(done)
	}
	c.mu.Unlock()
	select {
	case <-done:
	case <-ctx.Done():
	}
}

// fetchRoutes is refresh's shared fetch, bounded by a second and by the
// client's life, not by any one caller's context: a caller that gives up
// does not end it for the others.
func (c *Client) fetchRoutes(done chan struct{}) {
	defer c.wg.Done()
	rctx, cancel := context.WithTimeout(c.ctx, time.Second)
	if t, err := c.masters.GetRoutes(rctx); err == nil {
		c.routes.replace(t)
		c.pruneNodes()
	}
	cancel()
	c.mu.Lock()
	c.refreshing = nil
	c.mu.Unlock()
	close(done)
}
