package transport

import (
	"testing"

	"google.golang.org/grpc/connectivity"
)

// Keep closes a connection to an address no longer wanted once its last
// use is released, never under a use, and at once when unused; the
// address is dialled again if asked for later.
func TestConnsKeep(t *testing.T) {
	var p Conns
	defer p.Close()
	a, releaseA, err := p.Acquire("127.0.0.1:1")
	if err != nil {
		t.Fatal(err)
	}
	b, releaseB, err := p.Acquire("127.0.0.1:2")
	if err != nil {
		t.Fatal(err)
	}
	releaseB()
	p.Keep(func(string) bool { return false })
	if a.GetState() == connectivity.Shutdown {
		t.Fatal("a connection in use was closed")
	}
	if b.GetState() != connectivity.Shutdown {
		t.Fatalf("an unused connection no longer wanted is %v, want closed", b.GetState())
	}
	releaseA()
	if a.GetState() != connectivity.Shutdown {
		t.Fatalf("a connection no longer wanted is %v after its last use, want closed", a.GetState())
	}
	again, err := p.Get("127.0.0.1:1")
	if err != nil {
		t.Fatal(err)
	}
	if again == a || again.GetState() == connectivity.Shutdown {
		t.Fatal("the address asked for again got the closed connection")
	}
	// A wanted one stays.
	p.Keep(func(string) bool { return true })
	if again.GetState() == connectivity.Shutdown {
		t.Fatal("a wanted connection was closed")
	}
	// One dropped while in use and wanted again before the use ends stays
	// open after it.
	c, release, err := p.Acquire("127.0.0.1:3")
	if err != nil {
		t.Fatal(err)
	}
	p.Keep(func(string) bool { return false })
	p.Keep(func(string) bool { return true })
	release()
	if c.GetState() == connectivity.Shutdown {
		t.Fatal("a connection wanted again was closed after its use")
	}
}
