package client

import (
	"context"
	"errors"
	"reflect"
	"testing"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/shoaldb/shoal/api/shoalpb"
)

// TestWaitingShrinksAfterBurst: a stream's map of waiting commands, grown
// by a burst past shrinkWaitingAt, is made again once the last of them
// is answered (a Go map keeps its size); a smaller one is kept.
func TestWaitingShrinksAfterBurst(t *testing.T) {
	s := &commandStream{waiting: map[uint64]*pendingCommand{}}
	addr := func() uintptr { return uintptr(reflect.ValueOf(s.waiting).UnsafePointer()) }
	burst := func(n uint64) {
		for id := range n {
			s.await(id, &pendingCommand{})
		}
	}
	burst(shrinkWaitingAt)
	small := addr()
	for id := range uint64(shrinkWaitingAt) {
		s.forget(id)
	}
	if addr() != small || s.peak != shrinkWaitingAt {
		t.Fatalf("a map of %d commands at its peak was made again", shrinkWaitingAt)
	}
	burst(shrinkWaitingAt + 1)
	big := addr()
	for id := range uint64(shrinkWaitingAt) {
		s.forget(id)
		if addr() != big {
			t.Fatalf("made again with %d commands still waiting", len(s.waiting))
		}
	}
	s.forget(shrinkWaitingAt)
	if addr() == big || s.peak != 0 || len(s.waiting) != 0 {
		t.Fatalf("after a burst of %d, with none waiting: same map %v, peak %d", shrinkWaitingAt+1, addr() == big, s.peak)
	}
}

// stalledKV is a node whose BatchCommands stream never opens: it waits
// for its caller to give up, as one behind a dropped route would.
type stalledKV struct {
	shoalpb.KVClient
	opening chan struct{}
}

func (k stalledKV) BatchCommands(ctx context.Context, _ ...grpc.CallOption) (shoalpb.KV_BatchCommandsClient, error) {
	k.opening <- struct{}{}
	<-ctx.Done()
	return nil, ctx.Err()
}

// TestGivingUpUnsent: a caller that gives up while its command is still
// queued (the stream not open yet) learns that it was not sent (so a
// write is not taken as possibly applied), and its command leaves the
// queue at once rather than wait there for the stalled sender.
func TestGivingUpUnsent(t *testing.T) {
	bctx, closeClient := context.WithCancel(context.Background())
	kc := stalledKV{opening: make(chan struct{}, 1)}
	b := &batcher{kc: kc, ctx: bctx}
	t.Cleanup(func() {
		closeClient()
		b.streams.Wait()
	})
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := b.call(ctx, &shoalpb.BatchCommandsRequest_Command{Request: &shoalpb.BatchCommandsRequest_Command_Put{
			Put: &shoalpb.PutRequest{Key: []byte("k"), Value: []byte("v")}}})
		errc <- err
	}()
	<-kc.opening
	cancel()
	err := <-errc
	if !errors.Is(err, errNotSent) || status.Code(err) != codes.Canceled {
		t.Fatalf("call given up while queued: %v; want errNotSent and Canceled", err)
	}
	b.mu.Lock()
	s := b.stream
	b.mu.Unlock()
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.queue) != 0 || len(s.waiting) != 0 {
		t.Fatalf("after giving up: %d queued, %d waiting; want none", len(s.queue), len(s.waiting))
	}
}
