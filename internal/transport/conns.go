package transport

import (
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// Conns pools client connections to other servers' gRPC services (the KV
// service a node forwards to, the node service the master drives), one per
// address, made on first use. The zero value is ready; Close closes them all.
type Conns struct {
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
	c, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
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
