package bench

import (
	"context"
	"errors"
	"sync"
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
