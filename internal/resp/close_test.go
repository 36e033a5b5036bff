package resp_test

import (
	"bufio"
	"context"
	"io"
	"net"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/internal/resp"
)

// heldBackend holds every Put until release is closed, after telling
// entered.
type heldBackend struct {
	noBackend
	entered chan struct{}
	release chan struct{}
	puts    atomic.Int64
}

func (b *heldBackend) Put(ctx context.Context, _ *shoalpb.PutRequest) (*shoalpb.PutResponse, error) {
	b.puts.Add(1)
	b.entered <- struct{}{}
	select {
	case <-b.release:
		return &shoalpb.PutResponse{Applied: true}, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// Close lets a command in flight finish and sends its reply before it
// closes the connection: a client that saw the connection close under a
// write that was applied would send it again. It starts no command after.
func TestCloseAnswersCommandsInFlight(t *testing.T) {
	for _, tc := range []struct {
		name, send, want string
	}{
		{"alone", "*3\r\n$3\r\nSET\r\n$1\r\na\r\n$1\r\n1\r\n", "+OK\r\n"},
		// In a pipeline, replies wait in the connection's buffer until the
		// pipeline is read: the SET's and the first PING's are not lost
		// with the second PING, which does not run.
		{"in a pipeline", "*3\r\n$3\r\nSET\r\n$1\r\na\r\n$1\r\n1\r\nPING\r\nPING\r\n", "+OK\r\n+PONG\r\n"},
	} {
		t.Run(tc.name, func(t *testing.T) { closeWithCommandInFlight(t, tc.send, tc.want) })
	}
}

func closeWithCommandInFlight(t *testing.T, send, want string) {
	b := &heldBackend{entered: make(chan struct{}, 1), release: make(chan struct{})}
	srv := resp.NewServer(b, resp.Options{CloseTimeout: time.Minute})
	nc, served := serveOne(t, srv)
	nc.SetDeadline(time.Now().Add(30 * time.Second))
	if _, err := io.WriteString(nc, send); err != nil {
		t.Fatal(err)
	}
	<-b.entered
	closed := make(chan struct{})
	go func() {
		srv.Close()
		close(closed)
	}()
	// Serve returns once Close has closed the listener, under the lock
	// Close holds while it stops the connections' reads.
	if err := <-served; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	close(b.release)
	rd := bufio.NewReader(nc)
	got := make([]byte, len(want))
	if _, err := io.ReadFull(rd, got); err != nil || string(got) != want {
		t.Fatalf("replies of the commands run at Close: %q, %v; want %q", got, err, want)
	}
	// Sent after the reply: not run.
	io.WriteString(nc, "*3\r\n$3\r\nSET\r\n$1\r\nb\r\n$1\r\n2\r\n")
	if line, err := rd.ReadString('\n'); err == nil {
		t.Fatalf("a command after Close was answered %q", line)
	}
	<-closed
	if n := b.puts.Load(); n != 1 {
		t.Fatalf("the backend saw %d puts, want the one in flight", n)
	}
}

// serveOne serves srv on a loopback port, which the test closes, and
// returns a connection to it (closed when the test ends) and what Serve
// returns.
func serveOne(t *testing.T, srv *resp.Server) (net.Conn, <-chan error) {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(lis) }()
	nc, err := net.Dial("tcp", lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	return nc, served
}

// A connection whose client does not read is closed CloseTimeout after
// Close, which then returns.
func TestCloseTimeout(t *testing.T) {
	srv := resp.NewServer(noBackend{}, resp.Options{CloseTimeout: 100 * time.Millisecond})
	nc, served := serveOne(t, srv)
	// Replies the client never reads, more than the socket buffers hold
	// (the connection queues them, so it goes on reading), then a PING
	// whose reply waits behind them.
	ping := "*2\r\n$4\r\nECHO\r\n$65536\r\n" + string(make([]byte, 65536)) + "\r\n"
	for range 256 {
		if _, err := io.WriteString(nc, ping); err != nil {
			t.Fatal(err)
		}
	}
	start := time.Now()
	srv.Close()
	if d := time.Since(start); d > 20*time.Second {
		t.Fatalf("Close took %v with a client that does not read", d)
	}
	if err := <-served; err != nil {
		t.Fatalf("Serve: %v", err)
	}
}

// failingListener fails its first accepts as a process out of file
// descriptors does.
type failingListener struct {
	net.Listener
	fails atomic.Int64
}

func (l *failingListener) Accept() (net.Conn, error) {
	if l.fails.Add(-1) >= 0 {
		return nil, &net.OpError{Op: "accept", Net: "tcp", Err: syscall.EMFILE}
	}
	return l.Listener.Accept()
}

// An accept error that is not a timeout (EMFILE) does not stop the
// server: it backs off and accepts again. It used to return from Serve,
// leaving the port open with nobody accepting.
func TestAcceptErrorsAreRetried(t *testing.T) {
	addr := startServerWrapped(t, noBackend{}, resp.Options{}, func(l net.Listener) net.Listener {
		fl := &failingListener{Listener: l}
		fl.fails.Store(3)
		return fl
	})
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(30 * time.Second))
	io.WriteString(nc, "PING\r\n")
	if line, err := bufio.NewReader(nc).ReadString('\n'); err != nil || line != "+PONG\r\n" {
		t.Fatalf("PING after failed accepts: %q, %v", line, err)
	}
}

// COMMAND, COMMAND INFO without names (Redis 7) and COMMAND COUNT agree;
// COMMAND INFO answers nil for a command it does not know.
func TestCommandInfo(t *testing.T) {
	rc := redis.NewClient(&redis.Options{Addr: startServer(t, resp.Options{}), Protocol: 2})
	t.Cleanup(func() { rc.Close() })
	ctx := context.Background()
	count, err := rc.Do(ctx, "command", "count").Int()
	if err != nil || count < 40 {
		t.Fatalf("COMMAND COUNT: %d, %v", count, err)
	}
	for _, args := range [][]any{{"command"}, {"command", "info"}} {
		all, err := rc.Do(ctx, args...).Slice()
		if err != nil || len(all) != count {
			t.Fatalf("%v: %d commands, %v; want %d", args, len(all), err, count)
		}
	}
	some, err := rc.Do(ctx, "command", "info", "get", "nosuch").Slice()
	if err != nil || len(some) != 2 || some[0] == nil || some[1] != nil {
		t.Fatalf("COMMAND INFO get nosuch: %v, %v", some, err)
	}
}
