package client_test

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc"

	"github.com/shoaldb/shoal/api/shoalpb"
)

// BenchmarkPut measures the client's own cost of a write that succeeds at
// once, against a node over loopback gRPC that answers every Put at once
// (the node does not serve BatchCommands, so each is a unary call), from
// parallel goroutines, the callers' contexts without a deadline.
func BenchmarkPut(b *testing.B) {
	node := &scriptedNode{put: func(int64) error { return nil }}
	addr := serve(b, func(s *grpc.Server) { shoalpb.RegisterKVServer(s, node) })
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c := openOneShard(ctx, b, []string{addr})
	key, val := []byte("k"), []byte("v")
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if _, err := c.Put(context.Background(), key, val); err != nil {
				b.Error(err)
				return
			}
		}
	})
}
