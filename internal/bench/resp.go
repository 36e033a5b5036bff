package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/shoaldb/shoal/internal/keys"
)

// RESPOptions configure a RESPCluster. Zero values take the defaults.
type RESPOptions struct {
	// Addrs are the nodes to read the slot map from first (CLUSTER SLOTS);
	// at least one is required.
	Addrs []string
	// Password, when set, is sent with AUTH on every new connection.
	Password string
	// DialTimeout bounds connecting and AUTH, and a reload of the slot
	// map in the background (after MOVED). Default 5s.
	DialTimeout time.Duration
	// MaxRedirects bounds the MOVED and ASK redirections one command
	// follows, at once, as Redis clients do. Default 5.
	MaxRedirects int
}

func (o *RESPOptions) ensureDefaults() {
	if o.DialTimeout <= 0 {
		o.DialTimeout = 5 * time.Second
	}
	if o.MaxRedirects <= 0 {
		o.MaxRedirects = 5
	}
}

// ErrRedirects is returned for a command still redirected after
// RESPOptions.MaxRedirects redirections.
var ErrRedirects = errors.New("bench: too many redirections")

// RESPCluster is a Target (and Pipeliner) for a Redis Cluster: Shoal's
// Redis front end or Redis itself. It does the least client work per
// operation the protocol allows, so that on a machine shared with the
// servers the load generator takes as little CPU from them as it can:
// one reused buffer per connection, the command written with one write(2),
// the reply read and skipped without being decoded into values. It speaks
// RESP2, GET and SET only, at each slot's master.
//
// It keeps a slot map read with CLUSTER SLOTS, follows MOVED (updating the
// slot and reloading the map in the background) and ASK (sending ASKING
// first), and keeps idle connections per node for reuse; each operation
// uses one connection by itself. A command that fails otherwise (an error
// reply, a broken connection) fails the operation: it is not retried.
//
// Invariant: a connection in a node's idle list has no reply pending.
type RESPCluster struct {
	o RESPOptions

	mu    sync.RWMutex
	slots [keys.SlotCount]*respNode // nil: not known
	nodes map[string]*respNode
	// closed is set by Close (and then on every node, under its lock).
	closed bool

	// reloading is set while a background reload of the slot map runs.
	reloading atomic.Bool
	// lastReload is when the last reload started (UnixNano), so that a
	// storm of MOVED replies reloads at most once per reloadEvery.
	lastReload atomic.Int64
	wg         sync.WaitGroup
	// redirects counts the MOVED and ASK replies followed.
	redirects atomic.Uint64
}

// reloadEvery is the least time between two background reloads of the
// slot map.
const reloadEvery = 100 * time.Millisecond

type respNode struct {
	addr string
	mu   sync.Mutex
	idle []*respConn
	// closed is set by Close: a connection given back is closed, not kept.
	closed bool
}

type respConn struct {
	nc  net.Conn
	br  *bufio.Reader
	buf []byte // the commands being written
	// deadline is the connection's read and write deadline as last set.
	deadline time.Time
}

// NewRESPCluster connects to the first of o.Addrs that answers and reads
// the slot map from it.
func NewRESPCluster(ctx context.Context, o RESPOptions) (*RESPCluster, error) {
	o.ensureDefaults()
	if len(o.Addrs) == 0 {
		return nil, errors.New("bench: no Redis Cluster address")
	}
	c := &RESPCluster{o: o, nodes: map[string]*respNode{}}
	if err := c.reload(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// Close closes the idle connections and those given back later, and waits
// for a background reload of the slot map.
func (c *RESPCluster) Close() error {
	c.mu.Lock()
	c.closed = true
	nodes := make([]*respNode, 0, len(c.nodes))
	for _, n := range c.nodes {
		nodes = append(nodes, n)
	}
	c.mu.Unlock()
	for _, n := range nodes {
		n.mu.Lock()
		n.closed = true
		for _, cn := range n.idle {
			cn.nc.Close()
		}
		n.idle = nil
		n.mu.Unlock()
	}
	c.wg.Wait()
	return nil
}

// Redirects returns how many MOVED and ASK replies were followed.
func (c *RESPCluster) Redirects() uint64 { return c.redirects.Load() }

// Get reads key with GET; a missing key is not an error.
func (c *RESPCluster) Get(ctx context.Context, key []byte) error {
	if err := c.do(ctx, Op{Read: true, Key: key}); err != nil {
		return fmt.Errorf("GET: %w", err)
	}
	return nil
}

// Put writes key with SET.
func (c *RESPCluster) Put(ctx context.Context, key, value []byte) error {
	if err := c.do(ctx, Op{Key: key, Value: value}); err != nil {
		return fmt.Errorf("SET: %w", err)
	}
	return nil
}

// Pipeline sends the operations grouped by node: every node's group is
// written before any reply is read, so the nodes work on them at once. An
// operation redirected by MOVED or ASK is then sent again by itself.
func (c *RESPCluster) Pipeline(ctx context.Context, ops []Op) error {
	type group struct {
		node *respNode
		cn   *respConn
		ops  []int
	}
	var groups []group
	for i := range ops {
		n, err := c.nodeFor(ctx, keys.Slot(ops[i].Key))
		if err != nil {
			return err
		}
		g := 0
		for g < len(groups) && groups[g].node != n {
			g++
		}
		if g == len(groups) {
			groups = append(groups, group{node: n})
		}
		groups[g].ops = append(groups[g].ops, i)
	}
	failGroup := func(g *group, err error) {
		for _, i := range g.ops {
			if ops[i].Err == nil {
				ops[i].Err = fmt.Errorf("%s: %w", opName(ops[i]), err)
			}
		}
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	for gi := range groups {
		g := &groups[gi]
		cn, err := c.conn(ctx, g.node)
		if err != nil {
			failGroup(g, err)
			continue
		}
		cn.buf = cn.buf[:0]
		for _, i := range g.ops {
			cn.buf = appendOp(cn.buf, ops[i])
		}
		if err := cn.send(ctx); err != nil {
			cn.nc.Close()
			failGroup(g, fmt.Errorf("%s: %w", g.node.addr, err))
			continue
		}
		g.cn = cn
	}
	var redirected []int
	for gi := range groups {
		g := &groups[gi]
		if g.cn == nil {
			continue
		}
		for k, i := range g.ops {
			msg, err := g.cn.readReply()
			if err != nil {
				g.cn.nc.Close()
				g.cn = nil
				for _, j := range g.ops[k:] {
					ops[j].Err = fmt.Errorf("%s: %s: %w", opName(ops[j]), g.node.addr, err)
				}
				break
			}
			if msg == "" {
				continue
			}
			kind, addr, ok := parseRedirect(msg, g.node.addr)
			if !ok {
				ops[i].Err = fmt.Errorf("%s: %s", opName(ops[i]), msg)
				continue
			}
			redirected = append(redirected, i)
			c.redirects.Add(1)
			if kind == "MOVED" {
				c.moved(keys.Slot(ops[i].Key), addr)
			}
		}
		if g.cn != nil {
			c.release(g.node, g.cn)
		}
	}
	for _, i := range redirected {
		if err := c.do(ctx, ops[i]); err != nil {
			ops[i].Err = fmt.Errorf("%s: %w", opName(ops[i]), err)
		}
	}
	return nil
}

func opName(op Op) string {
	if op.Read {
		return "GET"
	}
	return "SET"
}

// do runs one GET or SET, following redirections.
func (c *RESPCluster) do(ctx context.Context, op Op) error {
	slot := keys.Slot(op.Key)
	n, err := c.nodeFor(ctx, slot)
	if err != nil {
		return err
	}
	asking := false
	for redirects := 0; ; redirects++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		cn, err := c.conn(ctx, n)
		if err != nil {
			return err
		}
		cn.buf = cn.buf[:0]
		if asking {
			cn.buf = append(cn.buf, "*1\r\n$6\r\nASKING\r\n"...)
		}
		cn.buf = appendOp(cn.buf, op)
		msg, err := cn.roundTrip(ctx, asking)
		if err != nil {
			cn.nc.Close()
			c.reloadSoon()
			return fmt.Errorf("%s: %w", n.addr, err)
		}
		c.release(n, cn)
		if msg == "" {
			return nil
		}
		kind, addr, ok := parseRedirect(msg, n.addr)
		if !ok {
			return errors.New(msg)
		}
		if redirects >= c.o.MaxRedirects {
			return fmt.Errorf("%w: %d, last: %s", ErrRedirects, redirects, msg)
		}
		c.redirects.Add(1)
		asking = kind == "ASK"
		if asking {
			n = c.node(addr)
		} else {
			n = c.moved(slot, addr)
		}
	}
}

// moved records that slot is at addr (a MOVED reply) and reloads the slot
// map in the background, since a slot seldom moves alone.
func (c *RESPCluster) moved(slot uint16, addr string) *respNode {
	n := c.node(addr)
	c.mu.Lock()
	c.slots[slot] = n
	c.mu.Unlock()
	c.reloadSoon()
	return n
}

// parseRedirect reads "MOVED <slot> <addr>" or "ASK <slot> <addr>", from
// the node at from: an address with no host (":port", the node's endpoint
// being unknown) is on from's host.
func parseRedirect(msg, from string) (kind, addr string, ok bool) {
	f := strings.Fields(msg)
	if len(f) != 3 || f[0] != "MOVED" && f[0] != "ASK" {
		return "", "", false
	}
	addr = f[2]
	if strings.HasPrefix(addr, ":") {
		host, _, _ := net.SplitHostPort(from)
		addr = net.JoinHostPort(host, addr[1:])
	}
	return f[0], addr, true
}

// appendOp appends op as a RESP command: GET key or SET key value.
func appendOp(b []byte, op Op) []byte {
	if op.Read {
		b = append(b, "*2\r\n$3\r\nGET\r\n"...)
		return appendBulk(b, op.Key)
	}
	b = append(b, "*3\r\n$3\r\nSET\r\n"...)
	b = appendBulk(b, op.Key)
	return appendBulk(b, op.Value)
}

func appendBulk(b, s []byte) []byte {
	b = append(b, '$')
	b = strconv.AppendInt(b, int64(len(s)), 10)
	b = append(b, '\r', '\n')
	b = append(b, s...)
	return append(b, '\r', '\n')
}

// nodeFor returns the node serving slot, reading the slot map first if the
// slot is not in it (at most once per reloadEvery); with no node known for
// it, a seed address (which redirects if it must).
func (c *RESPCluster) nodeFor(ctx context.Context, slot uint16) (*respNode, error) {
	c.mu.RLock()
	n := c.slots[slot]
	c.mu.RUnlock()
	if n != nil {
		return n, nil
	}
	if time.Since(time.Unix(0, c.lastReload.Load())) >= reloadEvery {
		if err := c.reload(ctx); err != nil {
			return nil, err
		}
	}
	c.mu.RLock()
	n = c.slots[slot]
	c.mu.RUnlock()
	if n == nil {
		n = c.node(c.o.Addrs[0])
	}
	return n, nil
}

// node returns the node at addr, adding it if new.
func (c *RESPCluster) node(addr string) *respNode {
	c.mu.RLock()
	n := c.nodes[addr]
	c.mu.RUnlock()
	if n != nil {
		return n
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if n = c.nodes[addr]; n == nil {
		n = &respNode{addr: addr, closed: c.closed}
		c.nodes[addr] = n
	}
	return n
}

// conn takes an idle connection to n or opens one (with AUTH if a
// password is set).
func (c *RESPCluster) conn(ctx context.Context, n *respNode) (*respConn, error) {
	n.mu.Lock()
	if k := len(n.idle); k > 0 {
		cn := n.idle[k-1]
		n.idle[k-1] = nil
		n.idle = n.idle[:k-1]
		n.mu.Unlock()
		return cn, nil
	}
	n.mu.Unlock()
	dctx, cancel := context.WithTimeout(ctx, c.o.DialTimeout)
	defer cancel()
	var d net.Dialer
	nc, err := d.DialContext(dctx, "tcp", n.addr)
	if err != nil {
		return nil, err
	}
	cn := &respConn{nc: nc, br: bufio.NewReaderSize(nc, 4<<10), buf: make([]byte, 0, 256)}
	if c.o.Password != "" {
		cn.buf = append(cn.buf, "*2\r\n$4\r\nAUTH\r\n"...)
		cn.buf = appendBulk(cn.buf, []byte(c.o.Password))
		msg, err := cn.roundTrip(dctx, false)
		if err == nil && msg != "" {
			err = fmt.Errorf("AUTH: %s", msg)
		}
		if err != nil {
			nc.Close()
			return nil, fmt.Errorf("%s: %w", n.addr, err)
		}
	}
	return cn, nil
}

// release gives back a connection with no reply pending.
func (c *RESPCluster) release(n *respNode, cn *respConn) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.closed {
		cn.nc.Close()
		return
	}
	n.idle = append(n.idle, cn)
}

// reloadSoon reloads the slot map in the background, unless a reload runs
// or started less than reloadEvery ago.
func (c *RESPCluster) reloadSoon() {
	if time.Since(time.Unix(0, c.lastReload.Load())) < reloadEvery || !c.reloading.CompareAndSwap(false, true) {
		return
	}
	c.mu.RLock()
	closed := c.closed
	if !closed {
		c.wg.Add(1)
	}
	c.mu.RUnlock()
	if closed {
		c.reloading.Store(false)
		return
	}
	go func() {
		defer c.wg.Done()
		defer c.reloading.Store(false)
		ctx, cancel := context.WithTimeout(context.Background(), c.o.DialTimeout)
		defer cancel()
		_ = c.reload(ctx) // MOVED replies keep working until one succeeds
	}()
}

// reload reads the slot map with CLUSTER SLOTS from the first node that
// answers: the seed addresses, then the nodes known.
func (c *RESPCluster) reload(ctx context.Context) error {
	c.lastReload.Store(time.Now().UnixNano())
	addrs := append([]string(nil), c.o.Addrs...)
	c.mu.RLock()
	for a := range c.nodes {
		addrs = append(addrs, a)
	}
	c.mu.RUnlock()
	var errs []error
	for _, a := range addrs {
		ranges, err := c.clusterSlots(ctx, a)
		if err == nil && len(ranges) == 0 {
			err = fmt.Errorf("%s: CLUSTER SLOTS: no slot is served", a)
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		var slots [keys.SlotCount]*respNode
		for _, r := range ranges {
			n := c.node(r.addr)
			for s := r.start; s <= r.end; s++ {
				slots[s] = n
			}
		}
		c.mu.Lock()
		c.slots = slots
		c.mu.Unlock()
		return nil
	}
	return fmt.Errorf("bench: no node answered CLUSTER SLOTS: %w", errors.Join(errs...))
}

type slotRange struct {
	start, end int
	addr       string
}

// clusterSlots asks the node at addr for its slot map.
func (c *RESPCluster) clusterSlots(ctx context.Context, addr string) ([]slotRange, error) {
	n := c.node(addr)
	cn, err := c.conn(ctx, n)
	if err != nil {
		return nil, err
	}
	cn.buf = append(cn.buf[:0], "*2\r\n$7\r\nCLUSTER\r\n$5\r\nSLOTS\r\n"...)
	if err := cn.send(ctx); err != nil {
		cn.nc.Close()
		return nil, err
	}
	line, err := cn.line()
	var v any
	if err == nil {
		v, err = cn.value(line, 0, true)
	}
	if err != nil {
		cn.nc.Close()
		return nil, fmt.Errorf("%s: CLUSTER SLOTS: %w", addr, err)
	}
	c.release(n, cn)
	host, _, _ := net.SplitHostPort(addr)
	ranges, err := parseSlots(v, host)
	if err != nil {
		return nil, fmt.Errorf("%s: CLUSTER SLOTS: %w", addr, err)
	}
	return ranges, nil
}

// parseSlots reads CLUSTER SLOTS' reply: [start, end, [host, port, ...],
// replicas...] per range. An empty host means the node asked (host).
func parseSlots(v any, host string) ([]slotRange, error) {
	if msg, ok := v.(respErr); ok {
		return nil, errors.New(string(msg))
	}
	entries, ok := v.([]any)
	if !ok {
		return nil, fmt.Errorf("reply %T, want an array", v)
	}
	var out []slotRange
	for _, e := range entries {
		f, ok := e.([]any)
		if !ok || len(f) < 3 {
			return nil, errors.New("malformed range")
		}
		start, ok1 := f[0].(int64)
		end, ok2 := f[1].(int64)
		master, ok3 := f[2].([]any)
		if !ok1 || !ok2 || !ok3 || len(master) < 2 || start < 0 || end < start || end >= keys.SlotCount {
			return nil, errors.New("malformed range")
		}
		h, ok4 := master[0].(string)
		port, ok5 := master[1].(int64)
		if !ok4 && master[0] == nil {
			h, ok4 = "", true // NULL: the endpoint is unknown
		}
		if !ok4 || !ok5 {
			return nil, errors.New("malformed node")
		}
		if h == "" || h == "?" {
			h = host
		}
		out = append(out, slotRange{start: int(start), end: int(end), addr: net.JoinHostPort(h, strconv.FormatInt(port, 10))})
	}
	return out, nil
}

// setDeadline gives the connection a deadline between ctx's and a second
// after it: to spare a timer update per operation, it is moved only when
// it falls outside that window. An operation may time out up to a second
// late, never early.
func (cn *respConn) setDeadline(ctx context.Context) error {
	dl, ok := ctx.Deadline()
	if !ok {
		if cn.deadline.IsZero() {
			return nil
		}
	} else if !cn.deadline.IsZero() && !cn.deadline.Before(dl) && cn.deadline.Sub(dl) <= time.Second {
		return nil
	} else {
		dl = dl.Add(time.Second)
	}
	if err := cn.nc.SetDeadline(dl); err != nil {
		return err
	}
	cn.deadline = dl
	return nil
}

// send writes cn.buf.
func (cn *respConn) send(ctx context.Context) error {
	if err := cn.setDeadline(ctx); err != nil {
		return err
	}
	_, err := cn.nc.Write(cn.buf)
	return err
}

// roundTrip writes cn.buf and reads the reply (after that of ASKING, if
// asking): the error reply's message, or "".
func (cn *respConn) roundTrip(ctx context.Context, asking bool) (string, error) {
	if err := cn.send(ctx); err != nil {
		return "", err
	}
	if asking {
		msg, err := cn.readReply()
		if err != nil {
			return "", err
		}
		if msg != "" {
			// ASKING refused: the command's reply follows; read it so
			// the connection stays usable, and report the first error.
			if _, err := cn.readReply(); err != nil {
				return "", err
			}
			return msg, nil
		}
	}
	return cn.readReply()
}

// readReply reads one reply and returns its message if it is an error
// reply; anything else is skipped.
func (cn *respConn) readReply() (string, error) {
	line, err := cn.line()
	if err != nil {
		return "", err
	}
	if line[0] == '-' {
		return string(line[1:]), nil
	}
	_, err = cn.value(line, 0, false)
	return "", err
}

// maxDepth bounds the nesting of replies read.
const maxDepth = 8

// respErr is an error reply read by value.
type respErr string

// value reads the rest of the reply whose header line is line. With keep
// it returns it: a string (simple or bulk), int64, []any, respErr, or nil;
// without, it skips it, decoding nothing it need not.
func (cn *respConn) value(line []byte, depth int, keep bool) (any, error) {
	switch line[0] {
	case '+', '-', ':':
		if !keep {
			return nil, nil
		}
		switch line[0] {
		case '+':
			return string(line[1:]), nil
		case '-':
			return respErr(line[1:]), nil
		}
		n, err := strconv.ParseInt(string(line[1:]), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("bench: bad integer %q", line)
		}
		return n, nil
	case '$':
		n, err := strconv.Atoi(string(line[1:]))
		if err != nil || n < -1 || n > 64<<20 {
			return nil, fmt.Errorf("bench: bad bulk length %q", line)
		}
		if n < 0 {
			return nil, nil
		}
		if !keep {
			_, err = cn.br.Discard(n + 2)
			return nil, err
		}
		b := make([]byte, n+2)
		if _, err := io.ReadFull(cn.br, b); err != nil {
			return nil, err
		}
		return string(b[:n]), nil
	case '*':
		n, err := strconv.Atoi(string(line[1:]))
		if err != nil || n < -1 || n > 1<<20 || depth >= maxDepth {
			return nil, fmt.Errorf("bench: bad array %q", line)
		}
		if n < 0 {
			return nil, nil
		}
		var out []any
		if keep {
			out = make([]any, n)
		}
		for i := range n {
			l, err := cn.line()
			if err != nil {
				return nil, err
			}
			v, err := cn.value(l, depth+1, keep)
			if err != nil {
				return nil, err
			}
			if keep {
				out[i] = v
			}
		}
		return out, nil
	}
	return nil, fmt.Errorf("bench: unexpected reply %q", line)
}

// line reads a reply's header line without its CRLF. It is valid until
// the next read.
func (cn *respConn) line() ([]byte, error) {
	b, err := cn.br.ReadSlice('\n')
	if err != nil {
		if errors.Is(err, bufio.ErrBufferFull) {
			return nil, errors.New("bench: reply line too long")
		}
		return nil, err
	}
	if len(b) < 3 || b[len(b)-2] != '\r' {
		return nil, fmt.Errorf("bench: malformed reply line %q", b)
	}
	return b[:len(b)-2], nil
}
