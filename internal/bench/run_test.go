package bench

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// mapTarget is an in-memory target: these tests are about the runner.
type mapTarget struct {
	mu           sync.Mutex
	m            map[string]int
	gets, puts   int
	failEveryNth int
}

func (t *mapTarget) Get(_ context.Context, key []byte) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.gets++
	return t.maybeFail()
}

func (t *mapTarget) Put(_ context.Context, key, _ []byte) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.puts++
	t.m[string(key)]++
	return t.maybeFail()
}

func (t *mapTarget) maybeFail() error {
	if t.failEveryNth > 0 && (t.gets+t.puts)%t.failEveryNth == 0 {
		return errors.New("injected failure")
	}
	return nil
}

func TestLoadInsertsEveryRecordOnce(t *testing.T) {
	tg := &mapTarget{m: map[string]int{}}
	w, _ := LookupWorkload("load")
	res, err := Run(context.Background(), tg, Options{Workload: w, Records: 5000, Concurrency: 8})
	if err != nil {
		t.Fatal(err)
	}
	if res.Ops != 5000 || len(tg.m) != 5000 || tg.gets != 0 {
		t.Fatalf("ops %d, keys %d, gets %d", res.Ops, len(tg.m), tg.gets)
	}
	for k, n := range tg.m {
		if n != 1 {
			t.Fatalf("%s written %d times", k, n)
		}
	}
	if res.Update.Count != 5000 || res.All.P99 < res.All.P50 {
		t.Fatalf("latency summary %+v", res.Update)
	}
}

func TestMixAndOpsBound(t *testing.T) {
	tg := &mapTarget{m: map[string]int{}}
	w, _ := LookupWorkload("b")
	res, err := Run(context.Background(), tg, Options{Workload: w, Records: 1000, Concurrency: 4, Ops: 20000, Zipfian: true,
		Duration: time.Minute, Progress: func(Progress) {}})
	if err != nil {
		t.Fatal(err)
	}
	if res.Ops < 20000 || res.Ops > 20000+4 {
		t.Fatalf("%d ops, want 20000 (+ at most one per client)", res.Ops)
	}
	if f := float64(tg.gets) / float64(tg.gets+tg.puts); f < 0.93 || f > 0.97 {
		t.Fatalf("reads are %.3f of the operations, want 0.95", f)
	}
	if res.Read.Count+res.Update.Count != res.Ops {
		t.Fatalf("histograms count %d+%d of %d ops", res.Read.Count, res.Update.Count, res.Ops)
	}
}

func TestErrorsCounted(t *testing.T) {
	tg := &mapTarget{m: map[string]int{}, failEveryNth: 10}
	w, _ := LookupWorkload("w")
	res, err := Run(context.Background(), tg, Options{Workload: w, Records: 100, Concurrency: 1, Ops: 900})
	if err != nil {
		t.Fatal(err)
	}
	// One client: every 10th call fails, and only successes count as ops.
	if calls := res.Ops + res.Errors; res.Ops != 900 || res.Errors != calls/10 || res.FirstError != "injected failure" {
		t.Fatalf("%d ops, %d errors (%q); want 900 ops and one error per 10 calls", res.Ops, res.Errors, res.FirstError)
	}
	if _, err := LookupWorkload("z"); err == nil {
		t.Fatal("unknown workload accepted")
	}
}

// pipeTarget is a mapTarget that takes pipelines and records their sizes.
type pipeTarget struct {
	mapTarget
	sizes    map[int]int
	failKeys map[string]bool
}

func (t *pipeTarget) Pipeline(ctx context.Context, ops []Op) error {
	t.mu.Lock()
	t.sizes[len(ops)]++
	t.mu.Unlock()
	for i := range ops {
		var err error
		if ops[i].Read {
			err = t.Get(ctx, ops[i].Key)
		} else {
			err = t.Put(ctx, ops[i].Key, ops[i].Value)
		}
		if t.failKeys[string(ops[i].Key)] {
			err = errors.New("injected failure")
		}
		ops[i].Err = err
	}
	return nil
}

func TestPipelinedLoadInsertsEveryRecordOnce(t *testing.T) {
	tg := &pipeTarget{mapTarget: mapTarget{m: map[string]int{}}, sizes: map[int]int{}}
	w, _ := LookupWorkload("load")
	// 1003 records in pipelines of 10: 100 full pipelines and one of 3.
	res, err := Run(context.Background(), tg, Options{Workload: w, Records: 1003, Concurrency: 4, Pipeline: 10})
	if err != nil {
		t.Fatal(err)
	}
	if res.Ops != 1003 || len(tg.m) != 1003 || res.Pipeline != 10 {
		t.Fatalf("ops %d, keys %d, pipeline %d", res.Ops, len(tg.m), res.Pipeline)
	}
	for k, n := range tg.m {
		if n != 1 {
			t.Fatalf("%s written %d times", k, n)
		}
	}
	if tg.sizes[10] != 100 || tg.sizes[3] != 1 || len(tg.sizes) != 2 {
		t.Fatalf("pipeline sizes %v, want 100 of 10 and 1 of 3", tg.sizes)
	}
}

func TestPipelinedMixCountsEachOperation(t *testing.T) {
	tg := &pipeTarget{mapTarget: mapTarget{m: map[string]int{}}, sizes: map[int]int{},
		failKeys: map[string]bool{string(Key(7)): true}}
	w, _ := LookupWorkload("a")
	res, err := Run(context.Background(), tg, Options{Workload: w, Records: 100, Concurrency: 2, Pipeline: 16, Ops: 10000,
		Duration: time.Minute})
	if err != nil {
		t.Fatal(err)
	}
	if len(tg.sizes) != 1 || tg.sizes[16] == 0 {
		t.Fatalf("pipeline sizes %v, want only 16", tg.sizes)
	}
	// A failure in a pipeline that was in flight when the run ended (the
	// other worker used up the budget) is counted as neither: at most one
	// pipeline per worker.
	calls := uint64(tg.gets + tg.puts)
	if res.Ops+res.Errors > calls || calls-res.Ops-res.Errors > 2*16 || res.Ops < 10000 || res.Errors == 0 || res.FirstError != "injected failure" {
		t.Fatalf("%d ops + %d errors (%q) for %d calls", res.Ops, res.Errors, res.FirstError, calls)
	}
	if res.Read.Count+res.Update.Count != res.Ops || res.Read.Count == 0 || res.Update.Count == 0 {
		t.Fatalf("histograms count %d+%d of %d ops", res.Read.Count, res.Update.Count, res.Ops)
	}
}

func TestPipelineNeedsPipeliner(t *testing.T) {
	w, _ := LookupWorkload("c")
	_, err := Run(context.Background(), &mapTarget{m: map[string]int{}}, Options{Workload: w, Pipeline: 4, Ops: 10})
	if err == nil {
		t.Fatal("pipeline 4 accepted by a target without Pipeline")
	}
}

// deadlineTarget fails a call whose context's deadline has passed, without
// waiting for the context's timer, as gRPC does when it starts a call.
type deadlineTarget struct{ calls atomic.Uint64 }

func (t *deadlineTarget) Get(ctx context.Context, _ []byte) error {
	t.calls.Add(1)
	if d, ok := ctx.Deadline(); ok && !time.Now().Before(d) {
		return context.DeadlineExceeded
	}
	return nil
}

func (t *deadlineTarget) Put(ctx context.Context, key, _ []byte) error { return t.Get(ctx, key) }

func TestRunEndIsNotAnError(t *testing.T) {
	w, _ := LookupWorkload("a")
	for range 5 {
		tg := &deadlineTarget{}
		res, err := Run(context.Background(), tg, Options{Workload: w, Records: 10, Concurrency: 8, Duration: 20 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		if res.Errors != 0 || res.Ops == 0 {
			t.Fatalf("%d ops, %d errors (%s): the run's own deadline counted as failures", res.Ops, res.Errors, res.FirstError)
		}
	}
}

// stallTarget answers in about a millisecond, except one call, made after
// stallAfter, that takes stall: a pause of the store.
type stallTarget struct {
	start      time.Time
	stallAfter time.Duration
	stall      time.Duration
	stalled    atomic.Bool
}

// wait takes the target's service time: a simulated latency, not a wait
// for an event.
func (t *stallTarget) wait() {
	d := time.Millisecond
	if time.Since(t.start) > t.stallAfter && t.stalled.CompareAndSwap(false, true) {
		d = t.stall
	}
	<-time.After(d)
}

func (t *stallTarget) Get(context.Context, []byte) error         { t.wait(); return nil }
func (t *stallTarget) Put(context.Context, []byte, []byte) error { t.wait(); return nil }

// An open-loop run (Rate) sends on schedule and counts latency from each
// operation's scheduled start: a 300 ms stall of one client shows in every
// operation it delayed, and so in the p99; a closed loop records it once,
// far below its p99. The rate is kept.
func TestOpenLoopCountsStalls(t *testing.T) {
	w, _ := LookupWorkload("w")
	run := func(rate float64) *Result {
		t.Helper()
		tg := &stallTarget{start: time.Now(), stallAfter: 200 * time.Millisecond, stall: 300 * time.Millisecond}
		res, err := Run(context.Background(), tg, Options{Workload: w, Records: 1000, Concurrency: 4, Duration: time.Second, Rate: rate})
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	open := run(200)
	if open.Ops < 150 || open.Ops > 220 {
		t.Errorf("open loop at 200 ops/s for 1 s: %d ops", open.Ops)
	}
	if open.All.P99 < 100 {
		t.Errorf("open loop: p99 %.1f ms with a 300 ms stall in 1 s at 200 ops/s, want it to show", open.All.P99)
	}
	closed := run(0)
	if closed.All.P99 >= 100 {
		t.Errorf("closed loop: p99 %.1f ms over %d ops; the stall was expected to hide", closed.All.P99, closed.Ops)
	}
	t.Logf("p99: open loop %.1f ms over %d ops, closed loop %.1f ms over %d ops", open.All.P99, open.Ops, closed.All.P99, closed.Ops)
}
