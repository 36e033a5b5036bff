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
type Conns struct {
	// Dialer, if set, opens the connections (to dial from a chosen local
	// address). Set it before the first Get.
	Dialer func(ctx context.Context, addr string) (net.Conn, error)

	mu    sync.Mutex
	conns map[string]*grpc.ClientConn
}

// Get returns the connection to addr, dialling it (lazily) the first time.
func (p *Conns) Get(addr string) (*grpc.ClientConn, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if c := p.conns[addr]; c != nil {
		return c, nil
	}
	c, err := grpc.NewClient(addr, baseDialOptions(p.Dialer)...)
	if err != nil {
		return nil, err
	}
	if p.conns == nil {
		p.conns = map[string]*grpc.ClientConn{}
	}
	p.conns[addr] = c
	return c, nil
}

// Close closes every connection.
func (p *Conns) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for a, c := range p.conns {
		c.Close()
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
