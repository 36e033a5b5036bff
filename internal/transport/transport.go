package transport

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/shoaldb/shoal/api/shoalpb"
)

// Errors returned by Send.
var (
	// ErrQueueFull: the destination's queue is full; the messages were dropped.
	ErrQueueFull = errors.New("transport: send queue full")
	// ErrUnreachable: the destination could not be reached recently; the
	// messages were dropped.
	ErrUnreachable = errors.New("transport: node unreachable")
	// ErrClosed: the transport is closed.
	ErrClosed = errors.New("transport: closed")
)

// MaxMessageBytes is the gRPC message limit on Raft streams, above the
// largest batch the sender builds.
const MaxMessageBytes = 64 << 20

// Flow-control windows of every connection the transport opens or serves.
// Fixed windows turn off gRPC's bandwidth-delay estimator, which otherwise
// answers a received data frame with a PING (and its ACK, and a window
// update) whenever no such ping is outstanding: on a Raft stream, where a
// batch of a few hundred bytes goes out on every loop iteration, that was
// nearly a frame in each direction per batch, a write and a read system
// call on both nodes. With these windows a receiver sends a window update
// after a quarter of them is consumed. The estimator would grow the window
// to at most 16 MiB; 2 MiB per stream is what TiKV configures for its
// Raft and client streams, and the connection's window covers a snapshot
// chunk (1 MiB) arriving alongside Raft traffic.
const (
	StreamWindowBytes = 2 << 20
	ConnWindowBytes   = 8 << 20
)

// Handler receives what arrives from, or is learned about, other nodes.
// *raftstore.Store implements it.
type Handler interface {
	HandleRaftBatch(msgs []*shoalpb.RaftMessage)
	HandleUnreachable(node uint64)
	// HandleSnapshot receives one snapshot stream: first is its header
	// chunk, recv returns the following chunks and io.EOF after the last.
	// A nil return accepts the snapshot; an error refuses it, with a reason
	// the sender sees.
	HandleSnapshot(ctx context.Context, first *shoalpb.SnapshotChunk, recv func() (*shoalpb.SnapshotChunk, error)) error
}

// Sender is what a store needs from a transport; it matches
// raftstore.Transport.
type Sender interface {
	Send(to uint64, msgs []*shoalpb.RaftMessage) error
	SendSnapshot(ctx context.Context, to uint64, first *shoalpb.SnapshotChunk, next func() (*shoalpb.SnapshotChunk, error)) error
}

// ErrSnapshotRefused is returned by SendSnapshot when the receiver refused
// the snapshot; the error text says why.
var ErrSnapshotRefused = errors.New("transport: snapshot refused")

// clusterMD is the gRPC metadata key carrying the sender's cluster ID on
// snapshot streams.
const clusterMD = "shoal-cluster-id"

// Options configure a Transport. Zero values take the documented defaults.
type Options struct {
	// NodeID is the local node. Required.
	NodeID uint64
	// ClusterID is checked on every incoming stream. Required.
	ClusterID string
	// Resolve returns the gRPC address of a node. Required.
	Resolve func(node uint64) (string, error)
	// Handler receives incoming messages. It may be set after New with
	// SetHandler, before the first message arrives.
	Handler Handler
	// QueueBatches bounds the batches queued per destination. Default 4096.
	QueueBatches int
	// QueueBytes bounds the entry bytes queued per destination (as
	// MaxBatchBytes counts them); a batch that finds the queue empty is
	// taken whatever its size. Default 64 MiB: followers that lag on a slow
	// link would otherwise queue every shard's appends in flight to them.
	QueueBytes int
	// MaxBatchMessages bounds the Raft messages coalesced into one stream
	// message. Default 4096.
	MaxBatchMessages int
	// MaxBatchBytes bounds the entry bytes coalesced into one stream message.
	// Default 16 MiB.
	MaxBatchBytes int
	// BackoffMin and BackoffMax bound the wait between reconnection attempts.
	// Defaults 50ms and 2s.
	BackoffMin, BackoffMax time.Duration
	// PeerIdleTimeout ends the sender of a destination nothing was sent to
	// for this long: its stream closes and its goroutine, which would
	// otherwise redial a node removed from the cluster for ever, ends.
	// The next Send to it starts a new one. It is checked every half of
	// it, so a sender ends 1 to 1.5 times it after its last Send. Default
	// 5 minutes; an idle shard's leader stops heartbeating (quiescing), so
	// a shorter time closes streams between live nodes more often.
	PeerIdleTimeout time.Duration
	// Dialer opens connections; tests and multi-address deployments use it to
	// dial from a chosen local address. Default: the system dialer.
	Dialer func(ctx context.Context, addr string) (net.Conn, error)
	// Logger receives the transport's logs. Default: discarded.
	Logger *slog.Logger
}

func (o *Options) validate() error {
	switch {
	case o.NodeID == 0:
		return errors.New("transport: Options.NodeID is required")
	case o.ClusterID == "":
		return errors.New("transport: Options.ClusterID is required")
	case o.Resolve == nil:
		return errors.New("transport: Options.Resolve is required")
	}
	if o.QueueBatches <= 0 {
		o.QueueBatches = 4096
	}
	if o.QueueBytes <= 0 {
		o.QueueBytes = 64 << 20
	}
	if o.MaxBatchMessages <= 0 {
		o.MaxBatchMessages = 4096
	}
	if o.MaxBatchBytes <= 0 {
		o.MaxBatchBytes = 16 << 20
	}
	if o.BackoffMin <= 0 {
		o.BackoffMin = 50 * time.Millisecond
	}
	if o.PeerIdleTimeout <= 0 {
		o.PeerIdleTimeout = 5 * time.Minute
	}
	o.PeerIdleTimeout = max(o.PeerIdleTimeout, 2*time.Millisecond) // checked every half of it
	if o.BackoffMax <= 0 {
		o.BackoffMax = 2 * time.Second
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// Stats are cumulative counters of a Transport.
type Stats struct {
	// BatchesSent counts stream messages sent; MessagesSent the Raft
	// messages in them; MessagesDropped those dropped before sending.
	BatchesSent, MessagesSent, MessagesDropped uint64
	// BatchesReceived and MessagesReceived count what arrived.
	BatchesReceived, MessagesReceived uint64
	// Connects counts streams opened; StreamErrors streams that failed.
	Connects, StreamErrors uint64
	// PeersRetired counts destinations whose sender ended idle
	// (Options.PeerIdleTimeout).
	PeersRetired uint64
}

// Transport is a node's Raft transport: the client side towards every peer
// and the RaftTransport service for incoming streams.
type Transport struct {
	shoalpb.UnimplementedRaftTransportServer
	opts    Options
	log     *slog.Logger
	handler atomic.Pointer[Handler]
	codec   *Codec

	mu struct {
		sync.Mutex
		peers  map[uint64]*peer
		closed bool
	}
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	stats struct {
		batchesSent, sent, dropped, batchesRecv, recv, connects, streamErrs, retired atomic.Uint64
	}
}

// New returns a Transport. Register it on a gRPC server to receive.
func New(opts Options) (*Transport, error) {
	if err := opts.validate(); err != nil {
		return nil, err
	}
	t := &Transport{opts: opts, log: opts.Logger.With("component", "transport"), codec: NewCodec()}
	t.mu.peers = map[uint64]*peer{}
	t.ctx, t.cancel = context.WithCancel(context.Background())
	if opts.Handler != nil {
		t.SetHandler(opts.Handler)
	}
	return t, nil
}

// SetHandler sets the receiver of incoming messages.
func (t *Transport) SetHandler(h Handler) { t.handler.Store(&h) }

// Register adds the RaftTransport service to srv.
func (t *Transport) Register(srv *grpc.Server) { shoalpb.RegisterRaftTransportServer(srv, t) }

// ServerOptions are the gRPC server options Raft streams need: message
// limits, fixed flow-control windows (StreamWindowBytes), keepalive
// enforcement that admits the client's pings, and the
// codec that decodes Raft batches by hand (Codec; any other message goes
// to the stock proto codec).
func ServerOptions() []grpc.ServerOption { return serverOptions(NewCodec()) }

func serverOptions(c *Codec) []grpc.ServerOption {
	return []grpc.ServerOption{
		grpc.ForceServerCodecV2(c),
		grpc.InitialWindowSize(StreamWindowBytes),
		grpc.InitialConnWindowSize(ConnWindowBytes),
		grpc.MaxRecvMsgSize(MaxMessageBytes),
		grpc.MaxSendMsgSize(MaxMessageBytes),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: time.Second, PermitWithoutStream: true}),
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 2 * time.Second, Timeout: 2 * time.Second}),
	}
}

// Stats returns the transport's counters.
func (t *Transport) Stats() Stats {
	return Stats{
		BatchesSent:      t.stats.batchesSent.Load(),
		MessagesSent:     t.stats.sent.Load(),
		MessagesDropped:  t.stats.dropped.Load(),
		BatchesReceived:  t.stats.batchesRecv.Load(),
		MessagesReceived: t.stats.recv.Load(),
		Connects:         t.stats.connects.Load(),
		StreamErrors:     t.stats.streamErrs.Load(),
		PeersRetired:     t.stats.retired.Load(),
	}
}

// Close stops every sender and closes their connections.
func (t *Transport) Close() {
	t.mu.Lock()
	if t.mu.closed {
		t.mu.Unlock()
		return
	}
	t.mu.closed = true
	t.mu.Unlock()
	t.cancel()
	t.wg.Wait()
}

// Send implements Sender: it queues msgs for node to without blocking.
func (t *Transport) Send(to uint64, msgs []*shoalpb.RaftMessage) error {
	if len(msgs) == 0 {
		return nil
	}
	b := queuedBatch{msgs: msgs, bytes: batchBytes(msgs)} // sized before the lock is taken
	// The lookup and the enqueue (which does not block) are one critical
	// section, so that a sender retiring (retire) never leaves messages in
	// its queue.
	t.mu.Lock()
	if t.mu.closed {
		t.mu.Unlock()
		t.stats.dropped.Add(uint64(len(msgs)))
		return ErrClosed
	}
	p := t.mu.peers[to]
	if p == nil {
		p = &peer{t: t, to: to, queue: make(chan queuedBatch, t.opts.QueueBatches)}
		t.mu.peers[to] = p
		t.wg.Add(1)
		go p.run()
	}
	err := p.enqueue(b)
	t.mu.Unlock()
	if err != nil {
		t.stats.dropped.Add(uint64(len(msgs)))
		return fmt.Errorf("transport: to node %d: %w", to, err)
	}
	return nil
}

// retire ends p if nothing was sent to it for PeerIdleTimeout and nothing
// waits in its queue: it leaves the transport's peers, so that the next
// Send starts a new one. Called by p's goroutine, which ends if it
// returns true.
func (t *Transport) retire(p *peer) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	if time.Since(time.Unix(0, p.lastUse.Load())) < t.opts.PeerIdleTimeout || len(p.queue) > 0 || len(p.carry) > 0 {
		return false
	}
	delete(t.mu.peers, p.to)
	t.stats.retired.Add(1)
	return true
}

// RaftStream implements the receiving side of shoalpb.RaftTransportServer.
func (t *Transport) RaftStream(stream shoalpb.RaftTransport_RaftStreamServer) error {
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	if first.ClusterId != t.opts.ClusterID {
		return status.Errorf(codes.FailedPrecondition,
			"transport: stream from node %d is for cluster %q, this is cluster %q", first.FromNode, first.ClusterId, t.opts.ClusterID)
	}
	if first.ToNode != t.opts.NodeID {
		return status.Errorf(codes.FailedPrecondition,
			"transport: stream from node %d is for node %d, this is node %d", first.FromNode, first.ToNode, t.opts.NodeID)
	}
	hp := t.handler.Load()
	if hp == nil {
		return status.Error(codes.Unavailable, "transport: not ready")
	}
	h := *hp
	for b := first; ; {
		t.stats.batchesRecv.Add(1)
		t.stats.recv.Add(uint64(len(b.Messages)))
		h.HandleRaftBatch(b.Messages)
		if b, err = stream.Recv(); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
	}
}

// SendSnapshot streams a snapshot to node to on its own gRPC stream: first,
// then every chunk next returns until it returns io.EOF. It returns once the
// receiver accepted the whole snapshot, or with the error that ended it.
func (t *Transport) SendSnapshot(ctx context.Context, to uint64, first *shoalpb.SnapshotChunk, next func() (*shoalpb.SnapshotChunk, error)) error {
	addr, err := t.opts.Resolve(to)
	if err != nil {
		return fmt.Errorf("transport: snapshot to node %d: %w", to, err)
	}
	conn, err := grpc.NewClient(addr, t.dialOptions()...)
	if err != nil {
		return fmt.Errorf("transport: snapshot to node %d: dial %s: %w", to, addr, err)
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(metadata.AppendToOutgoingContext(ctx, clusterMD, t.opts.ClusterID))
	defer cancel()
	stream, err := shoalpb.NewRaftTransportClient(conn).Snapshot(ctx)
	if err != nil {
		return fmt.Errorf("transport: snapshot to node %d: %w", to, err)
	}
	for c := first; ; {
		if err := stream.Send(c); err != nil {
			// The receiver's answer or status says why it stopped reading.
			resp, rerr := stream.CloseAndRecv()
			switch {
			case rerr != nil:
				err = rerr
			case resp != nil && !resp.Accepted:
				return fmt.Errorf("%w by node %d: %s", ErrSnapshotRefused, to, resp.Reason)
			}
			return fmt.Errorf("transport: snapshot to node %d: %w", to, err)
		}
		if c, err = next(); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return err
		}
	}
	resp, err := stream.CloseAndRecv()
	if err != nil {
		return fmt.Errorf("transport: snapshot to node %d: %w", to, err)
	}
	if !resp.Accepted {
		return fmt.Errorf("%w by node %d: %s", ErrSnapshotRefused, to, resp.Reason)
	}
	return nil
}

// Snapshot implements the receiving side of snapshot streams.
func (t *Transport) Snapshot(stream shoalpb.RaftTransport_SnapshotServer) error {
	md, _ := metadata.FromIncomingContext(stream.Context())
	if got := md.Get(clusterMD); len(got) != 1 || got[0] != t.opts.ClusterID {
		return status.Errorf(codes.FailedPrecondition, "transport: snapshot for cluster %q, this is cluster %q", got, t.opts.ClusterID)
	}
	first, err := stream.Recv()
	if err != nil {
		return err
	}
	if h := first.GetHeader(); h == nil || h.ToNode != t.opts.NodeID {
		return status.Errorf(codes.FailedPrecondition, "transport: snapshot for node %d, this is node %d", first.GetHeader().GetToNode(), t.opts.NodeID)
	}
	hp := t.handler.Load()
	if hp == nil {
		return status.Error(codes.Unavailable, "transport: not ready")
	}
	recv := func() (*shoalpb.SnapshotChunk, error) { return stream.Recv() }
	if err := (*hp).HandleSnapshot(stream.Context(), first, recv); err != nil {
		return stream.SendAndClose(&shoalpb.SnapshotResponse{Reason: err.Error()})
	}
	return stream.SendAndClose(&shoalpb.SnapshotResponse{Accepted: true})
}

func (t *Transport) dialOptions() []grpc.DialOption {
	return append(baseDialOptions(t.opts.Dialer), // messages up to MaxMessageBytes
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 2 * time.Second, Timeout: 2 * time.Second, PermitWithoutStream: true}),
	)
}

// peer owns the stream to one destination node.
type peer struct {
	t     *Transport
	to    uint64
	queue chan queuedBatch
	// carry holds messages that did not fit in the last stream message;
	// only the peer's goroutine touches it.
	carry []*shoalpb.RaftMessage
	// downUntil is the UnixNano time before which Send fails fast, set
	// while the peer is unreachable.
	downUntil atomic.Int64
	// queued is the bytes of the batches in queue (batchBytes).
	queued atomic.Int64
	// lastUse is the UnixNano time of the last Send to the peer.
	lastUse atomic.Int64
}

// errRetired ends a stream whose peer retired idle.
var errRetired = errors.New("transport: destination idle")

// batchBytes is the size of msgs as QueueBytes counts it.
func batchBytes(msgs []*shoalpb.RaftMessage) int64 {
	n := 0
	for _, m := range msgs {
		n += messageBytes(m)
	}
	return int64(n)
}

// queuedBatch is a batch in a peer's queue with its size as QueueBytes
// counts it (batchBytes), computed once, when Send is given the batch.
type queuedBatch struct {
	msgs  []*shoalpb.RaftMessage
	bytes int64
}

// dequeued accounts for b taken off the queue and returns its messages.
func (p *peer) dequeued(b queuedBatch) []*shoalpb.RaftMessage {
	p.queued.Add(-b.bytes)
	return b.msgs
}

func (p *peer) enqueue(b queuedBatch) error {
	now := time.Now().UnixNano()
	p.lastUse.Store(now)
	if now < p.downUntil.Load() {
		return ErrUnreachable
	}
	if q := p.queued.Add(b.bytes); q > int64(p.t.opts.QueueBytes) && q > b.bytes {
		p.queued.Add(-b.bytes)
		return ErrQueueFull
	}
	select {
	case p.queue <- b:
		return nil
	default:
		p.queued.Add(-b.bytes)
		return ErrQueueFull
	}
}

func (p *peer) run() {
	defer p.t.wg.Done()
	log := p.t.log.With("peer", p.to)
	backoff := p.t.opts.BackoffMin
	for {
		worked, err := p.connectAndSend(log)
		if p.t.ctx.Err() != nil || errors.Is(err, errRetired) {
			return
		}
		if worked {
			backoff = p.t.opts.BackoffMin
		}
		p.t.stats.streamErrs.Add(1)
		log.Debug("raft stream to peer failed", "err", err, "retry_in", backoff)
		// Fail sends fast while down, drop what is queued, and tell the
		// store so Raft stops pipelining to the peer.
		wait := backoff/2 + rand.N(backoff/2+1)
		p.downUntil.Store(time.Now().Add(wait).UnixNano())
		p.drain()
		if hp := p.t.handler.Load(); hp != nil {
			(*hp).HandleUnreachable(p.to)
		}
		select {
		case <-p.t.ctx.Done():
			return
		case <-time.After(wait):
		}
		// A destination no longer sent to (a node removed from the
		// cluster) is not redialled for ever.
		if p.t.retire(p) {
			log.Debug("raft sender to peer ended", "idle_for", p.t.opts.PeerIdleTimeout)
			return
		}
		backoff = min(backoff*2, p.t.opts.BackoffMax)
	}
}

func (p *peer) drain() {
	p.t.stats.dropped.Add(uint64(len(p.carry)))
	p.carry = nil
	for {
		select {
		case b := <-p.queue:
			p.t.stats.dropped.Add(uint64(len(p.dequeued(b))))
		default:
			return
		}
	}
}

// connectAndSend dials the peer, opens a stream and sends queued batches
// until the stream fails or the transport closes, and returns why. worked
// says the stream carried batches and was not refused (another cluster,
// another node): the peer was there, and the backoff starts over.
func (p *peer) connectAndSend(log *slog.Logger) (worked bool, err error) {
	addr, err := p.t.opts.Resolve(p.to)
	if err != nil {
		return false, fmt.Errorf("resolve node %d: %w", p.to, err)
	}
	conn, err := grpc.NewClient(addr, p.t.dialOptions()...)
	if err != nil {
		return false, fmt.Errorf("dial %s: %w", addr, err)
	}
	defer conn.Close()
	ctx, cancel := context.WithCancel(p.t.ctx)
	defer cancel()
	stream, err := shoalpb.NewRaftTransportClient(conn).RaftStream(ctx, p.t.codec.callOption())
	if err != nil {
		return false, fmt.Errorf("open stream to %s: %w", addr, err)
	}
	refused := func(err error) bool { return status.Code(err) == codes.FailedPrecondition }
	// The receiver only ever ends the stream; watch for that.
	recvErr := make(chan error, 1)
	go func() {
		for {
			if _, err := stream.Recv(); err != nil {
				recvErr <- err
				cancel()
				return
			}
		}
	}()
	p.t.stats.connects.Add(1)
	log.Debug("raft stream open", "addr", addr)
	idle := time.NewTicker(p.t.opts.PeerIdleTimeout / 2)
	defer idle.Stop()
	first := true
	for {
		var msgs []*shoalpb.RaftMessage
		if len(p.carry) == 0 {
			select {
			case <-ctx.Done():
				select {
				case err := <-recvErr:
					return worked && !refused(err), fmt.Errorf("stream to %s ended: %w", addr, err)
				default:
				}
				return worked, ctx.Err()
			case <-idle.C:
				if p.t.retire(p) {
					log.Debug("raft stream to idle peer closed", "addr", addr)
					return worked, errRetired
				}
				continue
			case b := <-p.queue:
				msgs = p.dequeued(b)
			}
		}
		b := p.coalesce(msgs)
		if first {
			b.ClusterId, b.FromNode, b.ToNode = p.t.opts.ClusterID, p.t.opts.NodeID, p.to
		}
		if err := stream.Send(b); err != nil {
			p.t.stats.dropped.Add(uint64(len(b.Messages)))
			// A failed Send says only io.EOF; the stream's status, which
			// the receiving goroutine gets once the stream ends (gRPC ends
			// it on any Send error), says why: a refusal, say.
			select {
			case rerr := <-recvErr:
				err = rerr
			case <-time.After(time.Second):
				cancel()
			}
			return worked && !refused(err), fmt.Errorf("send to %s: %w", addr, err)
		}
		first, worked = false, true
		p.t.stats.batchesSent.Add(1)
		p.t.stats.sent.Add(uint64(len(b.Messages)))
	}
}

// coalesce builds one stream message from what is left of the previous
// one, msgs, and whatever else is queued, within MaxBatchMessages and
// MaxBatchBytes: what does not fit waits in p.carry for the next message. A
// single message larger than the bound goes alone.
func (p *peer) coalesce(msgs []*shoalpb.RaftMessage) *shoalpb.RaftMessageBatch {
	pending := append(p.carry, msgs...)
	p.carry = nil
	b := &shoalpb.RaftMessageBatch{}
	size := 0
	for {
		for i, m := range pending {
			ms := messageBytes(m)
			if len(b.Messages) > 0 && (size+ms > p.t.opts.MaxBatchBytes || len(b.Messages) >= p.t.opts.MaxBatchMessages) {
				p.carry = append([]*shoalpb.RaftMessage(nil), pending[i:]...)
				return b
			}
			b.Messages = append(b.Messages, m)
			size += ms
		}
		select {
		case b := <-p.queue:
			pending = p.dequeued(b)
		default:
			return b
		}
	}
}

// messageBytes approximates the encoded size of a message by its payload.
func messageBytes(m *shoalpb.RaftMessage) int {
	n := 64
	for _, e := range m.GetMessage().GetEntries() {
		n += len(e.GetData()) + 16
	}
	return n + len(m.GetMessage().GetSnapshot().GetData())
}
