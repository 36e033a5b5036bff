package client

import (
	"reflect"
	"testing"
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
