package transport

import (
	"context"
	"fmt"
	"net"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// Conns pools client connections to other servers' gRPC services (the KV
// service a node forwards to, the node service the master drives), one per
// address, made on first use. The zero value is ready; Close closes them all.
//
// Connections taken with Acquire are counted while in use, so that Keep
// can close those to addresses no longer wanted without cutting a call
// short: a forwarded write cut off would read as possibly applied.
type Conns struct {
	// Dialer, if set, opens the connections (to dial from a chosen local
	// address). Set it before the first Get.
	Dialer func(ctx context.Context, addr string) (net.Conn, error)

	mu    sync.Mutex
	conns map[string]*pooledConn
}

type pooledConn struct {
	addr string
	conn *grpc.ClientConn
	// inUse counts the Acquires not yet released; retired is set by Keep
	// for an address no longer wanted: the connection closes with its
	// last release. Both under Conns.mu.
	inUse   int
	retired bool
}

// Get returns the connection to addr, dialling it (lazily) the first time.
func (p *Conns) Get(addr string) (*grpc.ClientConn, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	pc, err := p.getLocked(addr)
	if err != nil {
		return nil, err
	}
	return pc.conn, nil
}

func (p *Conns) getLocked(addr string) (*pooledConn, error) {
	if pc := p.conns[addr]; pc != nil {
		return pc, nil
	}
	c, err := grpc.NewClient(addr, baseDialOptions(p.Dialer)...)
	if err != nil {
		return nil, err
	}
	if p.conns == nil {
		p.conns = map[string]*pooledConn{}
	}
	pc := &pooledConn{addr: addr, conn: c}
	p.conns[addr] = pc
	return pc, nil
}

// Acquire returns the connection to addr, as Get, for one use: the caller
// calls release once the use is over.
func (p *Conns) Acquire(addr string) (conn *grpc.ClientConn, release func(), err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	pc, err := p.getLocked(addr)
	if err != nil {
		return nil, nil, err
	}
	pc.inUse++
	return pc.conn, func() { p.release(pc) }, nil
}

func (p *Conns) release(pc *pooledConn) {
	p.mu.Lock()
	pc.inUse--
	done := pc.inUse == 0 && pc.retired && p.conns[pc.addr] == pc
	if done {
		delete(p.conns, pc.addr)
	}
	p.mu.Unlock()
	if done {
		pc.conn.Close()
	}
}

// Keep closes the connections to the addresses wanted does not want, each
// once no Acquire uses it; a later Get or Acquire dials again. A
// connection handed out by Get is not counted: call Keep only on a pool
// whose users Acquire.
func (p *Conns) Keep(wanted func(addr string) bool) {
	var unused []*grpc.ClientConn
	p.mu.Lock()
	for a, pc := range p.conns {
		if wanted(a) {
			pc.retired = false // wanted again before its last use ended
			continue
		}
		pc.retired = true
		if pc.inUse == 0 {
			delete(p.conns, a)
			unused = append(unused, pc.conn)
		}
	}
	p.mu.Unlock()
	for _, c := range unused {
		c.Close()
	}
}

// Close closes every connection.
func (p *Conns) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for a, pc := range p.conns {
		pc.conn.Close()
		delete(p.conns, a)
	}
}

// DialerFrom returns a dialer whose connections leave from the local IP
// address ip (so that a server on 127.0.0.5 also dials from 127.0.0.5, and
// a firewall rule on addresses cuts it off both ways), or nil for "".
func DialerFrom(ip string) (func(ctx context.Context, addr string) (net.Conn, error), error) {
	if ip == "" {
		return nil, nil
	}
	a := net.ParseIP(ip)
	if a == nil {
		return nil, fmt.Errorf("transport: dial from %q: not an IP address", ip)
	}
	d := &net.Dialer{LocalAddr: &net.TCPAddr{IP: a}}
	return func(ctx context.Context, addr string) (net.Conn, error) {
		return d.DialContext(ctx, "tcp", addr)
	}, nil
}

// baseDialOptions are the options of every connection this package dials:
// plaintext, messages up to MaxMessageBytes both ways (gRPC's default
// takes 4 MiB, less than a value or a scan page forwarded to a leader),
// the fixed flow-control windows, and d as the dialer if set.
func baseDialOptions(d func(ctx context.Context, addr string) (net.Conn, error)) []grpc.DialOption {
	opts := []grpc.DialOption{
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithInitialWindowSize(StreamWindowBytes),
		grpc.WithInitialConnWindowSize(ConnWindowBytes),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(MaxMessageBytes), grpc.MaxCallSendMsgSize(MaxMessageBytes)),
	}
	if d != nil {
		opts = append(opts, grpc.WithContextDialer(d))
	}
	return opts
}
