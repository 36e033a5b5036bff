package node

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/shoaldb/shoal/api/shoalpb"
)

// A key-value request that came without a deadline gets one; one with a
// deadline keeps it, and other services are left alone.
func TestBoundKVRequests(t *testing.T) {
	deadlineOf := func(ctx context.Context, method string) (time.Time, bool) {
		var d time.Time
		var ok bool
		_, _ = boundKVRequests(ctx, nil, &grpc.UnaryServerInfo{FullMethod: method}, func(ctx context.Context, _ any) (any, error) {
			d, ok = ctx.Deadline()
			return nil, nil
		})
		return d, ok
	}
	start := time.Now()
	if d, ok := deadlineOf(context.Background(), shoalpb.KV_Put_FullMethodName); !ok || d.Before(start.Add(maxKVRequestTime)) || d.After(time.Now().Add(maxKVRequestTime)) {
		t.Fatalf("KV request without a deadline: deadline %v (%v), want %v from now", d, ok, maxKVRequestTime)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Hour)
	defer cancel()
	want, _ := ctx.Deadline()
	if d, ok := deadlineOf(ctx, shoalpb.KV_Get_FullMethodName); !ok || !d.Equal(want) {
		t.Fatalf("KV request with a deadline: %v, want its own %v", d, want)
	}
	if _, ok := deadlineOf(context.Background(), shoalpb.NodeAdmin_RunStep_FullMethodName); ok {
		t.Fatal("an admin request was given a deadline")
	}
}
