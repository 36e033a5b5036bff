package client

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/shoaldb/shoal/api/shoalpb"
)

// TestMasterConnClosed: a call after Close fails at once with ErrClosed and
// opens no connection (a client's request retrying as it closes refreshes
// its routes through the masters; that used to dial again, and the new
// connection was never closed).
func TestMasterConnClosed(t *testing.T) {
	m, err := DialMasters([]string{"127.0.0.1:1"})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	calls := 0
	err = m.Call(ctx, func(context.Context, shoalpb.MasterClient) error { calls++; return nil })
	if !errors.Is(err, ErrClosed) || calls != 0 || ctx.Err() != nil {
		t.Fatalf("Call after Close: %v after %d calls (context: %v); want ErrClosed at once", err, calls, ctx.Err())
	}
	m.mu.Lock()
	n := len(m.conns)
	m.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d connections opened after Close", n)
	}
}
