package raftstore

// QueuedRequests returns how many proposals and reads wait in the queues of
// this node's replica of shard: tests use it to order events without
// sleeping.
func QueuedRequests(s *Store, shard uint64) int {
	r, err := s.replica(shard)
	if err != nil {
		return 0
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.mu.props) + len(r.mu.reads)
}
