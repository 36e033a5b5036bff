package resp

import (
	"bufio"
	"bytes"
	"context"
	"crypto/subtle"
	"errors"
	"log/slog"
	"net"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/shoaldb/shoal/api/shoalpb"
)

// Backend executes commands: the node's KV service, called in process.
type Backend interface {
	shoalpb.KVServer
	// Topology returns the cluster as this node sees it now.
	Topology() Topology
	// ShardOf returns the shard that holds slot, or 0 if the node does not
	// know. It is called for every pipelined command, so it must be cheap.
	ShardOf(slot uint16) uint64
}

// Topology is the Redis Cluster view of a Shoal cluster.
type Topology struct {
	ClusterID string
	// Self is this node's ID.
	Self uint64
	// Shards in slot order.
	Shards []ShardInfo
	// Nodes by ID.
	Nodes map[uint64]NodeInfo
	// Epoch is a cluster-wide version (the route table's).
	Epoch uint64
}

// ShardInfo is one shard: a slot range, its leader (Redis's master) and
// the nodes of its other replicas.
type ShardInfo struct {
	ID         uint64
	Start, End uint32 // slots [Start, End)
	Leader     uint64 // node; 0 if unknown
	Followers  []uint64
}

// NodeInfo is how clients reach a node.
type NodeInfo struct {
	// RESPAddr is host:port of its Redis protocol server.
	RESPAddr string
	// Up is false for a node the master holds down.
	Up bool
}

// Options configure a Server. Zero values take the defaults.
type Options struct {
	// Password, when set, must be given (AUTH or HELLO AUTH) before any
	// command but AUTH, HELLO and QUIT.
	Password string
	// Proxy makes the server forward commands for shards this node does not
	// lead instead of answering -MOVED, for clients that do not follow
	// MOVED.
	Proxy bool
	// Limits bound requests; see Limits.
	Limits Limits
	// CommandTimeout bounds each backend call of a command (one for most
	// commands): the call fails after at least this long and at most 1.5
	// times it (see conn.ctx). Default 10s.
	CommandTimeout time.Duration
	// IdleTimeout closes connections idle this long; 0 keeps them.
	IdleTimeout time.Duration
	// CloseTimeout bounds how long Close lets connections finish the
	// commands they are running and send their replies before it closes
	// them. Default 2s.
	CloseTimeout time.Duration
	// MaxConns bounds concurrent connections. Default 10000.
	MaxConns int
	// MaxPipelined bounds the commands of one connection's pipeline that
	// run at the same time (see conn.serve); 1 runs every command alone.
	// Default 64.
	MaxPipelined int
	// MaxPipelinedBytes bounds what one connection's pipelined commands
	// hold: their arguments, and the replies of those that finished while
	// one before them still runs. A pipelined command that would go past
	// it first waits for those before it, so that a pipeline of large
	// values holds about this much (or one command) instead of
	// MaxPipelined values. (The replies of the commands running at once
	// are not known in advance: up to MaxPipelined large values can still
	// be read at once, as a Redis client's output buffer, unbounded by
	// default, can hold them.) Default 16 MiB.
	MaxPipelinedBytes int
	// MaxReplyBacklog bounds the replies a connection holds that the
	// client has not read yet. Replies the socket cannot take are queued
	// (see outbox) so that the connection goes on reading commands: a
	// client may send a whole pipeline before it reads a reply. Past
	// this many queued bytes the connection reads no more commands until
	// the client reads; a client that never reads then stalls, as it
	// would on a Redis server with client-output-buffer-limit set, which
	// closes it instead. A connection holds up to about twice this.
	// Default 256 MiB.
	MaxReplyBacklog int
	// Observe, when set, is called after every command with its name (in
	// lower case, "unknown" for commands the server does not know), its
	// result ("ok", or the first word of the error reply: "ERR", "MOVED",
	// "TRYAGAIN", ...) and how long it took.
	Observe func(command, result string, d time.Duration)
	// Logger receives the server's logs. Default: discarded.
	Logger *slog.Logger
}

func (o *Options) ensureDefaults() {
	o.Limits.ensureDefaults()
	if o.CommandTimeout <= 0 {
		o.CommandTimeout = 10 * time.Second
	}
	if o.CloseTimeout <= 0 {
		o.CloseTimeout = 2 * time.Second
	}
	if o.MaxConns <= 0 {
		o.MaxConns = 10000
	}
	if o.MaxPipelined <= 0 {
		o.MaxPipelined = 64
	}
	if o.MaxPipelinedBytes <= 0 {
		o.MaxPipelinedBytes = 16 << 20
	}
	if o.MaxReplyBacklog <= 0 {
		o.MaxReplyBacklog = 256 << 20
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// Server serves the Redis protocol on one listener.
type Server struct {
	opts    Options
	backend Backend
	log     *slog.Logger
	started time.Time

	mu     sync.Mutex
	lis    net.Listener
	conns  map[*conn]struct{}
	closed bool
	wg     sync.WaitGroup
	// closing is set by Close before it interrupts the connections'
	// reads: a connection checks it after it sets its read deadline, so
	// either it sees it or Close's deadline comes after its own.
	closing atomic.Bool
	// done is closed by Close.
	done chan struct{}
	// stallTimeout is replyStall, shorter in tests.
	stallTimeout time.Duration

	nextID    atomic.Int64
	cursors   *cursorCache
	tableOnce sync.Once
	cmds      map[string]*command
	stats     struct{ commands, conns, rejected, backlogWaits atomic.Int64 }
}

// NewServer returns a server executing commands on backend.
func NewServer(backend Backend, opts Options) *Server {
	opts.ensureDefaults()
	return &Server{opts: opts, backend: backend, log: opts.Logger.With("component", "resp"), started: time.Now(),
		conns: map[*conn]struct{}{}, cursors: newCursorCache(10000, 10*time.Minute), done: make(chan struct{}),
		stallTimeout: replyStall}
}

// Serve accepts connections on lis until Close, which closes lis. On a
// server already closed it closes lis and returns net.ErrClosed.
func (s *Server) Serve(lis net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		lis.Close()
		return net.ErrClosed
	}
	s.lis = lis
	s.mu.Unlock()
	var backoff time.Duration
	for {
		nc, err := lis.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed {
				return nil
			}
			if errors.Is(err, net.ErrClosed) {
				return err // closed by its owner, not by Close
			}
			// Anything else may pass (out of file descriptors, a
			// connection reset before it was accepted): keep accepting,
			// backing off, as net/http does for such errors. Returning
			// would leave the port open with nobody accepting.
			backoff = min(max(2*backoff, 5*time.Millisecond), time.Second)
			s.log.Warn("accept failed, retrying", "err", err, "in", backoff)
			select {
			case <-time.After(backoff):
			case <-s.done:
			}
			continue
		}
		backoff = 0
		s.mu.Lock()
		if s.closed || len(s.conns) >= s.opts.MaxConns {
			s.mu.Unlock()
			s.stats.rejected.Add(1)
			w := NewWriter(nc)
			w.Error("ERR max number of clients reached")
			w.Flush()
			nc.Close()
			continue
		}
		c := &conn{s: s, nc: nc, id: s.nextID.Add(1), rd: NewReader(nc), out: newOutbox(nc, s.opts.MaxReplyBacklog, &s.stats.backlogWaits)}
		c.wr = NewWriter(c.out)
		c.authed = s.opts.Password == ""
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		s.stats.conns.Add(1)
		go c.serve()
	}
}

// Close stops accepting and ends every connection: each stops reading
// commands, finishes those it is running and sends their replies, then
// closes; after Options.CloseTimeout those left are closed at once. A
// write that was applied keeps its reply: a client that saw the
// connection close instead would send the write again (go-redis retries
// on EOF). Commands read but not started get no reply.
func (s *Server) Close() error {
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		close(s.done)
	}
	if s.lis != nil {
		s.lis.Close()
	}
	s.closing.Store(true)
	now := time.Now()
	for c := range s.conns {
		c.nc.SetReadDeadline(now)
		c.nc.SetWriteDeadline(now.Add(s.opts.CloseTimeout))
	}
	s.mu.Unlock()
	finished := make(chan struct{})
	go func() {
		s.wg.Wait()
		close(finished)
	}()
	select {
	case <-finished:
		return nil
	case <-time.After(s.opts.CloseTimeout):
	}
	s.mu.Lock()
	for c := range s.conns {
		c.nc.Close()
	}
	s.mu.Unlock()
	<-finished
	return nil
}

// conn is one client connection. Its commands take effect in order, as
// Redis's do, with one relaxation for pipelines (see serve): commands on
// different shards may take effect in any order. Replies always come in
// order.
type conn struct {
	s  *Server
	nc net.Conn
	id int64
	rd *Reader
	// wr buffers replies until a flush hands them to out.
	wr       *Writer
	out      *outbox
	authed   bool
	readonly bool
	// slot is the slot of the command being run (for -MOVED), if keyed:
	// it has keys.
	slot    uint16
	keyed   bool
	name    string
	libName string
	libVer  string
	// inflight are the pipelined commands running, in the order they were
	// read; their replies are written in that order (drain).
	inflight []*pipelined
	// inflightBytes is the argument bytes of inflight.
	inflightBytes int
	// spare are finished pipelined commands kept for reuse.
	spare []*pipelined
	// cmdCtx is the context commands run under (see ctx); cmdCancel
	// cancels it when the connection ends.
	cmdCtx    context.Context
	cmdCancel context.CancelFunc
}

// A connection keeps up to maxSpares finished pipelined commands whose
// reply buffers grew to at most maxSpareReply, for its next pipeline: an
// idle connection holds at most about 36 KiB of them.
const (
	maxSpares     = 8
	maxSpareReply = 4 << 10
)

// pipelined is a command of a pipeline that runs while the connection reads
// the commands after it. It writes its reply into buf.
type pipelined struct {
	shard uint64
	slot  uint16
	size  int // argument bytes
	// reply is the size of the reply, set before done is closed.
	reply int
	done  chan struct{}
	buf   bytes.Buffer
	wr    *Writer
	// c is a copy of the connection's state for the command to run on:
	// only commands that leave the connection's state alone run pipelined.
	c conn
}

func (c *conn) serve() {
	defer func() {
		c.drain()
		// The replies of what ran go out: a command answered into the
		// buffer in a pipeline is flushed only once the pipeline is read.
		c.wr.Flush()
		if c.cmdCancel != nil {
			c.cmdCancel()
		}
		// What was flushed reaches the client before the socket closes
		// (a QUIT's +OK, an error before a protocol error's close), as
		// long as the client reads it.
		c.awaitOut(c.s.stallTimeout)
		c.nc.Close()
		c.s.mu.Lock()
		delete(c.s.conns, c)
		c.s.mu.Unlock()
		c.s.wg.Done()
	}()
	for {
		if t := c.s.opts.IdleTimeout; t > 0 {
			c.nc.SetReadDeadline(time.Now().Add(t))
		}
		if c.s.closing.Load() {
			// Close: no new command (the deferred drain answers those
			// running).
			return
		}
		lim := c.s.opts.Limits
		c.out.limit = c.s.opts.MaxReplyBacklog
		if !c.authed {
			lim, c.out.limit = unauthLimits, unauthBacklog
		}
		args, err := c.rd.ReadCommand(lim)
		if err != nil {
			c.drain()
			var pe *ProtocolError
			if errors.As(err, &pe) {
				c.wr.Error("ERR " + pe.Error())
				if c.wr.Flush() == nil {
					c.lingerClose()
				}
				return
			}
			c.wr.Flush()
			return
		}
		if args != nil {
			c.s.stats.commands.Add(1)
			// A pipeline's keyed commands run at once, so that its writes
			// share Raft rounds instead of waiting for one each; on one
			// shard they still run one after another, in order.
			r := c.resolve(args)
			if (len(c.inflight) > 0 || c.rd.Buffered()) && c.pipelinable(r) {
				c.launch(r, args)
			} else {
				c.drain()
				c.observed(r.name, c.wr, func() { c.run(r, args) })
				if r.name == "quit" {
					c.wr.Flush()
					return
				}
			}
		}
		// Answer a pipeline in one write: flush when nothing more is
		// waiting.
		if !c.rd.Buffered() {
			c.drain()
			if err := c.wr.Flush(); err != nil {
				return
			}
		}
	}
}

// observed runs fn, a command writing its reply to w, and reports it to
// Options.Observe.
func (c *conn) observed(name string, w *Writer, fn func()) {
	obs := c.s.opts.Observe
	if obs == nil {
		fn()
		return
	}
	start := time.Now()
	w.lastErr = ""
	fn()
	result := "ok"
	if w.lastErr != "" {
		result, _, _ = strings.Cut(w.lastErr, " ")
	}
	obs(name, result, time.Since(start))
}

// pipelinable reports whether r may run pipelined: a keyed command that
// passed its checks (anything else runs alone, so that its reply, and its
// effect on the connection, stay in order), with pipelining on.
func (c *conn) pipelinable(r resolved) bool {
	return r.reject == "" && r.cmd.keys != nil && c.s.opts.MaxPipelined > 1
}

// launch starts a pipelined command. It first waits for this connection's
// running command on the same shard (or slot: a slot's shard as this node
// knows it can change between two commands), so that commands on one shard
// take effect in the order they were sent, and for all of them when
// MaxPipelined or MaxPipelinedBytes would be exceeded.
func (c *conn) launch(r resolved, args [][]byte) {
	slot := r.slot
	shard := c.s.backend.ShardOf(slot)
	if shard == 0 {
		// Unknown: order by slot instead (shard IDs start at 1).
		shard = 1<<63 | uint64(slot)
	}
	size := 0
	for _, a := range args {
		size += len(a)
	}
	c.writeFinished()
	if len(c.inflight) >= c.s.opts.MaxPipelined || c.heldBytes()+size > c.s.opts.MaxPipelinedBytes {
		c.drain()
	}
	for _, p := range c.inflight {
		if p.shard == shard || p.slot == slot {
			<-p.done
		}
	}
	p := c.newPipelined()
	p.shard, p.slot, p.size = shard, slot, size
	c.inflightBytes += size
	c.ctx() // renewed here if due, so that the copy below seldom must (if it does, its context runs out at its deadline)
	p.c = conn{s: c.s, id: c.id, authed: c.authed, readonly: c.readonly, slot: slot, keyed: true,
		name: c.name, libName: c.libName, libVer: c.libVer, wr: p.wr, cmdCtx: c.cmdCtx}
	p.wr.SetProto(c.wr.Proto())
	c.inflight = append(c.inflight, p)
	go func() {
		defer close(p.done)
		c.observed(r.name, p.wr, func() { r.cmd.run(&p.c, args) })
		p.wr.w.Flush() // into p.buf, which cannot fail
		p.reply = p.buf.Len()
	}()
}

// heldBytes is what the pipelined commands hold: their arguments and the
// replies of those finished.
func (c *conn) heldBytes() int {
	n := c.inflightBytes
	for _, p := range c.inflight {
		if finished(p) {
			n += p.reply
		}
	}
	return n
}

func (c *conn) newPipelined() *pipelined {
	var p *pipelined
	if n := len(c.spare); n > 0 {
		p = c.spare[n-1]
		c.spare = c.spare[:n-1]
		p.buf.Reset()
		p.wr.w.Reset(&p.buf)
	} else {
		p = &pipelined{}
		p.wr = &Writer{w: bufio.NewWriterSize(&p.buf, 512)}
	}
	p.done = make(chan struct{})
	return p
}

// drain waits for the running pipelined commands and writes their replies,
// in order.
func (c *conn) drain() {
	for _, p := range c.inflight {
		<-p.done
		c.finish(p)
	}
	clear(c.inflight)
	c.inflight = c.inflight[:0]
}

// writeFinished writes the replies of the pipelined commands that have
// finished in order (all before them have too), so that their memory goes
// before more commands start.
func (c *conn) writeFinished() {
	n := 0
	for n < len(c.inflight) && finished(c.inflight[n]) {
		c.finish(c.inflight[n])
		n++
	}
	if n > 0 {
		m := copy(c.inflight, c.inflight[n:])
		clear(c.inflight[m:])
		c.inflight = c.inflight[:m]
	}
}

func finished(p *pipelined) bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// finish writes the reply of p, which has finished, and keeps p for reuse.
func (c *conn) finish(p *pipelined) {
	c.wr.raw(p.buf.Bytes())
	c.inflightBytes -= p.size
	p.c = conn{}
	if p.buf.Cap() <= maxSpareReply && len(c.spare) < maxSpares {
		c.spare = append(c.spare, p)
	}
}

// How long, and how much of what the client still sends, lingerClose
// waits for and discards.
const (
	lingerTime  = time.Second
	lingerBytes = 256 << 10
)

// lingerClose ends a connection after a protocol error so that the error
// reply, and the replies before it, reach the client: closing a socket
// with unread input makes the kernel reset the connection, and a client
// writing the rest of a pipeline sees the reset before it reads the
// replies. So it discards what the client still sends while the replies go
// out (a client that writes its whole pipeline before it reads would
// otherwise never read them), then sends FIN and discards at most
// lingerBytes more until the client closes too. A client that neither
// reads nor sends for lingerTime is cut off; one that reads slowly gets
// every reply, since the deadline moves on while they go out.
func (c *conn) lingerClose() {
	if c.nc.SetDeadline(time.Now().Add(lingerTime)) != nil {
		return
	}
	// finSent: the replies are out and FIN sent; stop: they will not go
	// out. Until either, a read that times out is retried: the deadline
	// moves on while replies go out.
	var finSent, stop atomic.Bool
	discarded := make(chan struct{})
	go func() {
		defer close(discarded)
		buf := make([]byte, 32<<10)
		after := 0
		for {
			n, err := c.nc.Read(buf)
			if finSent.Load() {
				if after += n; after >= lingerBytes {
					return
				}
			}
			// A deadline that passed is retried (the deadline moves on
			// while replies go out), unless the server is closing: it set
			// every read deadline to now, which would make this spin.
			if err != nil && (!errors.Is(err, os.ErrDeadlineExceeded) || finSent.Load() || stop.Load() || c.s.closing.Load()) {
				return
			}
		}
	}()
	err := c.waitSent(lingerTime, c.nc.SetDeadline)
	if hc, ok := c.nc.(interface{ CloseWrite() error }); ok && err == nil {
		finSent.Store(true)
		_ = hc.CloseWrite()
		_ = c.nc.SetDeadline(time.Now().Add(lingerTime))
	} else {
		stop.Store(true)
		_ = c.nc.SetReadDeadline(time.Now())
	}
	<-discarded
}

// waitSent waits for the replies queued to reach the socket and returns
// the first write error; while bytes go out it moves the deadline (set)
// to window from now, every window/4, so a client that reads slowly is
// waited for and one that takes nothing for window is given up.
func (c *conn) waitSent(window time.Duration, set func(time.Time) error) error {
	sent := make(chan error, 1)
	go func() { sent <- c.out.wait() }()
	tick := time.NewTicker(window / 4)
	defer tick.Stop()
	last := c.out.sent.Load()
	for {
		select {
		case err := <-sent:
			return err
		case <-tick.C:
			if n := c.out.sent.Load(); n != last {
				last = n
				_ = set(time.Now().Add(window))
			}
		}
	}
}

// awaitOut waits for the replies queued to reach the socket while the
// client reads them: the write deadline moves on while bytes go out, and a
// client that takes nothing for stall is given up. A connection ending
// after its client closed its side, or stopped reading, would otherwise
// wait for ever with its queued replies (up to MaxReplyBacklog).
func (c *conn) awaitOut(stall time.Duration) {
	if !c.out.busy() {
		return
	}
	_ = c.nc.SetWriteDeadline(time.Now().Add(stall))
	_ = c.waitSent(stall, c.nc.SetWriteDeadline)
}

// replyStall is how long a connection that ends waits for its client to
// read any of its queued replies before it gives them up.
const replyStall = 10 * time.Second

// ctx returns the context for a command and the function to call when the
// command is done. Its deadline is at least CommandTimeout away and at most
// half as much again: a context per command cost 5% of a node's CPU serving
// GETs (a timer and three allocations each), so a connection keeps one and
// makes a new one, with the deadline 1.5 × CommandTimeout away, once less
// than CommandTimeout is left. The old one is not cancelled (a pipelined
// command may still run under it); it runs out at its deadline.
func (c *conn) ctx() (context.Context, context.CancelFunc) {
	t := c.s.opts.CommandTimeout
	if c.cmdCtx != nil {
		if end, _ := c.cmdCtx.Deadline(); time.Until(end) >= t {
			return c.cmdCtx, noCancel
		}
	}
	c.cmdCtx, c.cmdCancel = context.WithTimeout(context.Background(), t+t/2)
	return c.cmdCtx, noCancel
}

// noCancel is ctx's done function: there is nothing to release.
func noCancel() {}

func (c *conn) checkPassword(pass []byte) bool {
	return subtle.ConstantTimeCompare(pass, []byte(c.s.opts.Password)) == 1
}
