package client

import "sync"

// sessionTracker numbers a client's writes for its session and knows the
// lowest sequence still in flight: every one below it has its answer, so the
// shards may forget their results.
type sessionTracker struct {
	id uint64

	mu          sync.Mutex
	next        uint64
	outstanding map[uint64]struct{}
}

func newSessionTracker(id uint64) *sessionTracker {
	return &sessionTracker{id: id, outstanding: map[uint64]struct{}{}}
}

// begin returns a new sequence number and the acknowledged mark to send
// with it.
func (s *sessionTracker) begin() (seq, ackedBelow uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.next++
	seq = s.next
	s.outstanding[seq] = struct{}{}
	ackedBelow = seq
	for o := range s.outstanding {
		ackedBelow = min(ackedBelow, o)
	}
	return seq, ackedBelow
}

// end marks seq answered (or given up).
func (s *sessionTracker) end(seq uint64) {
	s.mu.Lock()
	delete(s.outstanding, seq)
	s.mu.Unlock()
}
