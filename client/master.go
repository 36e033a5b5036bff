package client

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/shoaldb/shoal/api/shoalpb"
)

// Errors a MasterConn returns. Errors from the masters keep their gRPC
// status; these wrap them so callers can test with errors.Is.
var (
	// ErrWrongCluster: the masters belong to another cluster than the one
	// the caller named.
	ErrWrongCluster = errors.New("client: wrong cluster")
	// ErrNotBootstrapped: the cluster has not been bootstrapped yet.
	ErrNotBootstrapped = errors.New("client: cluster not bootstrapped")
	// ErrUnknownNode: the masters do not know the node (or it was removed).
	ErrUnknownNode = errors.New("client: unknown node")
	// ErrStaleData: the node's data directory is older than the one it
	// last ran with (restored from an old copy); the masters refuse it.
	ErrStaleData = errors.New("client: the node's data is older than the masters have seen")
	// ErrBootstrapMismatch: bootstrap parameters differ from the cluster's.
	ErrBootstrapMismatch = errors.New("client: bootstrap parameters differ from the cluster's")
	// ErrNoMasters: no master could be reached before the context ended.
	ErrNoMasters = errors.New("client: no master reachable")
)

// MasterConn talks to a group of masters.
type MasterConn struct {
	addrs []string
	opts  []grpc.DialOption

	mu     sync.Mutex
	conns  map[string]*grpc.ClientConn
	leader string
	// closed is set by Close: no connection is made after it.
	closed bool
}

// DialMasters returns a connection to the masters at addrs. It does not
// wait for any to answer. Without opts it uses DefaultDialOptions.
func DialMasters(addrs []string, opts ...grpc.DialOption) (*MasterConn, error) {
	if len(addrs) == 0 {
		return nil, errors.New("client: no master addresses")
	}
	if len(opts) == 0 {
		opts = DefaultDialOptions()
	}
	return &MasterConn{addrs: addrs, opts: opts, conns: map[string]*grpc.ClientConn{}}, nil
}

// Close closes every connection. Calls after it fail with ErrClosed.
func (m *MasterConn) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closed = true
	var err error
	for a, c := range m.conns {
		if cerr := c.Close(); err == nil {
			err = cerr
		}
		delete(m.conns, a)
	}
	return err
}

func (m *MasterConn) conn(addr string) (*grpc.ClientConn, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, ErrClosed
	}
	if c := m.conns[addr]; c != nil {
		return c, nil
	}
	c, err := grpc.NewClient(addr, m.opts...)
	if err != nil {
		return nil, err
	}
	m.conns[addr] = c
	return c, nil
}

// candidates returns the addresses to try, the known leader first.
func (m *MasterConn) candidates() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]string, 0, len(m.addrs)+1)
	if m.leader != "" {
		out = append(out, m.leader)
	}
	for _, a := range m.addrs {
		if a != m.leader {
			out = append(out, a)
		}
	}
	return out
}

func (m *MasterConn) setLeader(addr string) {
	m.mu.Lock()
	m.leader = addr
	m.mu.Unlock()
}

// Call runs f against the leader master: it follows NOT_LEADER answers,
// moves on from masters that cannot be reached, and backs off between
// rounds, until f succeeds, fails with an error that retrying cannot fix,
// ctx ends, or m is closed (ErrClosed).
func (m *MasterConn) Call(ctx context.Context, f func(ctx context.Context, c shoalpb.MasterClient) error) error {
	backoff := 20 * time.Millisecond
	var last error
	for {
		tried := map[string]bool{}
		queue := m.candidates()
		for len(queue) > 0 {
			addr := queue[0]
			queue = queue[1:]
			if tried[addr] {
				continue
			}
			tried[addr] = true
			conn, err := m.conn(addr)
			if errors.Is(err, ErrClosed) {
				return err
			}
			if err != nil {
				last = err
				continue
			}
			err = f(ctx, shoalpb.NewMasterClient(conn))
			if err == nil {
				m.setLeader(addr)
				return nil
			}
			last = err
			d := Detail(err)
			switch {
			case d.GetCode() == shoalpb.ErrorCode_ERROR_CODE_NOT_LEADER:
				if d.LeaderAddr != "" && !tried[d.LeaderAddr] {
					queue = append([]string{d.LeaderAddr}, queue...)
				}
				continue
			case d != nil:
				return classify(err, d)
			}
			switch status.Code(err) {
			case codes.Unavailable, codes.DeadlineExceeded, codes.Canceled:
				if ctx.Err() != nil {
					return fmt.Errorf("%w: %w", ErrNoMasters, last)
				}
				continue
			}
			return err
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last: %w)", ErrNoMasters, last)
		case <-time.After(backoff):
		}
		backoff = min(2*backoff, time.Second)
	}
}

// Detail returns the ErrorDetail a server attached to err, or nil.
func Detail(err error) *shoalpb.ErrorDetail { return shoalpb.DetailOf(err) }

func classify(err error, d *shoalpb.ErrorDetail) error {
	switch d.Code {
	case shoalpb.ErrorCode_ERROR_CODE_WRONG_CLUSTER:
		return fmt.Errorf("%w: %w", ErrWrongCluster, err)
	case shoalpb.ErrorCode_ERROR_CODE_NOT_BOOTSTRAPPED:
		return fmt.Errorf("%w: %w", ErrNotBootstrapped, err)
	case shoalpb.ErrorCode_ERROR_CODE_UNKNOWN_NODE:
		return fmt.Errorf("%w: %w", ErrUnknownNode, err)
	case shoalpb.ErrorCode_ERROR_CODE_BOOTSTRAP_MISMATCH:
		return fmt.Errorf("%w: %w", ErrBootstrapMismatch, err)
	case shoalpb.ErrorCode_ERROR_CODE_STALE_DATA:
		return fmt.Errorf("%w: %w", ErrStaleData, err)
	}
	return err
}

// GetRoutes returns the route table from any master (followers serve it).
func (m *MasterConn) GetRoutes(ctx context.Context) (*shoalpb.RouteTable, error) {
	var t *shoalpb.RouteTable
	err := m.Call(ctx, func(ctx context.Context, c shoalpb.MasterClient) error {
		var err error
		t, err = c.GetRoutes(ctx, &shoalpb.GetRoutesRequest{})
		return err
	})
	return t, err
}
