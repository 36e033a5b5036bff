package client_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/shoaldb/shoal/client"
	tc "github.com/shoaldb/shoal/internal/testcluster"
)

// pingCounter reads the HTTP/2 frames one connection writes (gRPC's loopy
// writer is its only writer) and counts the PINGs that are not
// acknowledgements, and the DATA frames.
type pingCounter struct {
	net.Conn
	pending     []byte
	preface     bool
	pings, data *atomic.Int64
}

func (c *pingCounter) Write(p []byte) (int, error) {
	c.pending = append(c.pending, p...)
	if !c.preface {
		const preface = len("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
		if len(c.pending) >= preface {
			c.pending, c.preface = c.pending[preface:], true
		}
	}
	for c.preface && len(c.pending) >= 9 {
		n := int(binary.BigEndian.Uint32(append([]byte{0}, c.pending[:3]...)))
		if len(c.pending) < 9+n {
			break
		}
		switch typ, flags := c.pending[3], c.pending[4]; {
		case typ == 0x0:
			c.data.Add(1)
		case typ == 0x6 && flags&0x1 == 0:
			c.pings.Add(1)
		}
		c.pending = c.pending[9+n:]
	}
	return c.Conn.Write(p)
}

// TestNoPingPerRequest checks that the client's default dial options do
// not answer every response with a bandwidth-delay PING (gRPC's dynamic
// flow control; DefaultDialOptions fixes the windows).
func TestNoPingPerRequest(t *testing.T) {
	c := tc.Start(t, tc.Options{Masters: 1, Nodes: 3, Shards: 4, Replicas: 3})
	ctx := ctxFor(t, 60*time.Second)
	if err := c.WaitPlaced(ctx); err != nil {
		t.Fatal(err)
	}
	var pings, data atomic.Int64
	var d net.Dialer
	dial := func(ctx context.Context, addr string) (net.Conn, error) {
		conn, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return nil, err
		}
		return &pingCounter{Conn: conn, pings: &pings, data: &data}, nil
	}
	cl, err := client.Open(ctx, c.MasterAddrs(), client.WithDialOptions(append(client.DefaultDialOptions(), grpc.WithContextDialer(dial))...))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	const n = 300
	for i := range n {
		k := []byte(fmt.Sprintf("k%d", i%10))
		if _, err := cl.Put(ctx, k, []byte("v")); err != nil {
			t.Fatal(err)
		}
		if _, _, err := cl.Get(ctx, k); err != nil {
			t.Fatal(err)
		}
	}
	if data.Load() < 2*n {
		t.Fatalf("%d DATA frames seen for %d requests: the count is broken", data.Load(), 2*n)
	}
	// Each connection may ping once or twice; with the estimator on, the
	// client pings after nearly every response.
	if got := pings.Load(); got > 20 {
		t.Errorf("the client sent %d PINGs for %d requests", got, 2*n)
	}
	t.Logf("%d PINGs and %d DATA frames for %d requests", pings.Load(), data.Load(), 2*n)
}
