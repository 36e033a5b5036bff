package raftstore

import (
	"sync"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/internal/storage"
)

// scheduler is the queue of replicas with work to do. A replica is queued at
// most once; the store's loop takes the whole queue each iteration, so a
// replica is processed by one worker at a time and never concurrently.
type scheduler struct {
	mu      sync.Mutex
	cond    sync.Cond
	queue   []*Replica
	stopped bool
}

func newScheduler() *scheduler {
	s := &scheduler{}
	s.cond.L = &s.mu
	return s
}

// enqueue queues r unless it is already queued.
func (s *scheduler) enqueue(r *Replica) {
	s.mu.Lock()
	if !r.queued && !s.stopped {
		r.queued = true
		s.queue = append(s.queue, r)
		if len(s.queue) == 1 {
			s.cond.Signal()
		}
	}
	s.mu.Unlock()
}

// enqueueAll queues every replica in rs.
func (s *scheduler) enqueueAll(rs []*Replica) {
	s.mu.Lock()
	if !s.stopped {
		for _, r := range rs {
			if !r.queued {
				r.queued = true
				s.queue = append(s.queue, r)
			}
		}
		s.cond.Signal()
	}
	s.mu.Unlock()
}

// take waits for queued replicas and moves them all into dst. It returns
// nil once the scheduler is stopped.
func (s *scheduler) take(dst []*Replica) []*Replica {
	s.mu.Lock()
	defer s.mu.Unlock()
	for len(s.queue) == 0 && !s.stopped {
		s.cond.Wait()
	}
	if s.stopped {
		return nil
	}
	dst = append(dst, s.queue...)
	for _, r := range s.queue {
		r.queued = false
	}
	clear(s.queue)
	s.queue = s.queue[:0]
	return dst
}

func (s *scheduler) stop() {
	s.mu.Lock()
	s.stopped = true
	s.cond.Broadcast()
	s.mu.Unlock()
}

// worker is the per-goroutine scratch state of one pool worker. Only the
// goroutine running a task touches it.
type worker struct {
	store *Store
	// apply is the indexed batch that collects the state machine writes of
	// every replica this worker applies in one phase.
	apply *storage.Batch
	// results are delivered to proposers once apply is committed.
	results []delivery
	// applied are the replicas that applied entries or learned read indexes
	// in this phase; their reads are served after apply is committed.
	applied []*Replica
	// committers are the state machines that staged writes in apply and
	// asked to learn when it is committed (Committer).
	committers []Committer
	// destroy are replicas to destroy after the phase 3 apply commit.
	destroy []*Replica
	// outbox holds outgoing messages by destination node.
	outbox map[uint64][]*shoalpb.RaftMessage
	// cmds is scratch space for Apply.
	cmds   []Command
	owners []*proposal
	// failed is the error of a replica's phase on this worker, if one
	// failed: its apply batch is then dropped (finishApply).
	failed error
}

type delivery struct {
	p *proposal
	r result
}

// pool runs tasks over a fixed set of worker goroutines.
type pool struct {
	workers []*worker
	tasks   []chan poolTask
	wg      sync.WaitGroup
}

type poolTask struct {
	lo, hi int
	fn     func(w *worker, i int)
	finish func(w *worker)
	done   *sync.WaitGroup
}

func newPool(s *Store, n int) *pool {
	p := &pool{}
	for i := range n {
		w := &worker{store: s, outbox: map[uint64][]*shoalpb.RaftMessage{}}
		p.workers = append(p.workers, w)
		if i == 0 {
			// Worker 0 runs on the loop goroutine itself.
			p.tasks = append(p.tasks, nil)
			continue
		}
		ch := make(chan poolTask)
		p.tasks = append(p.tasks, ch)
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			for t := range ch {
				t.run(w)
			}
		}()
	}
	return p
}

func (t poolTask) run(w *worker) {
	for i := t.lo; i < t.hi; i++ {
		t.fn(w, i)
	}
	if t.finish != nil {
		t.finish(w)
	}
	if t.done != nil {
		t.done.Done()
	}
}

// run calls fn for every i in [0, n), spreading contiguous chunks over the
// workers, then finish once on every worker that got a chunk. It returns when
// all are done.
func (p *pool) run(n int, fn func(w *worker, i int), finish func(w *worker)) {
	if n == 0 {
		return
	}
	nw := min(len(p.workers), n)
	// Small batches are not worth a hand-off.
	if n < 8 {
		nw = 1
	}
	chunk := (n + nw - 1) / nw
	var wg sync.WaitGroup
	for i := 1; i < nw; i++ {
		lo, hi := i*chunk, min((i+1)*chunk, n)
		if lo >= hi {
			break
		}
		wg.Add(1)
		p.tasks[i] <- poolTask{lo: lo, hi: hi, fn: fn, finish: finish, done: &wg}
	}
	poolTask{lo: 0, hi: min(chunk, n), fn: fn, finish: finish}.run(p.workers[0])
	wg.Wait()
}

func (p *pool) stop() {
	for _, ch := range p.tasks {
		if ch != nil {
			close(ch)
		}
	}
	p.wg.Wait()
}
