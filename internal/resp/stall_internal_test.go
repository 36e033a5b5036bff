package resp

import (
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

// A client that sends a pipeline, closes its side and never reads the
// replies does not keep its connection (and the replies queued for it)
// for ever: the connection gives them up after stallTimeout without
// progress.
func TestEndedConnectionGivesUpUnreadReplies(t *testing.T) {
	s := NewServer(topologyBackend{}, Options{})
	s.stallTimeout = 200 * time.Millisecond
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	served := make(chan error, 1)
	go func() { served <- s.Serve(lis) }()
	t.Cleanup(func() {
		s.Close()
		<-served
	})
	nc, err := net.Dial("tcp", lis.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	// More replies than the two sockets' buffers hold.
	echo := "*2\r\n$4\r\nECHO\r\n$65536\r\n" + strings.Repeat("x", 65536) + "\r\n"
	for range 256 {
		if _, err := io.WriteString(nc, echo); err != nil {
			t.Fatal(err)
		}
	}
	nc.(*net.TCPConn).CloseWrite()
	deadline := time.After(20 * time.Second)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		s.mu.Lock()
		n := len(s.conns)
		s.mu.Unlock()
		if n == 0 {
			return
		}
		select {
		case <-deadline:
			t.Fatalf("%d connection(s) still open 20 s after their client stopped reading", n)
		case <-tick.C:
		}
	}
}
