package bench

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
)

// Target is the store a workload drives. Get of a missing key is not an
// error. Implementations must be safe for concurrent use: every client of
// a Run calls the same Target.
type Target interface {
	Get(ctx context.Context, key []byte) error
	Put(ctx context.Context, key, value []byte) error
}

// Op is one operation of a pipeline.
type Op struct {
	Read  bool
	Key   []byte
	Value []byte // for updates
	// Err is set by Pipeline when this operation failed.
	Err error
}

// Pipeliner is a Target that can send several operations in one round
// trip (Options.Pipeline > 1).
type Pipeliner interface {
	Target
	// Pipeline sends ops together and waits for every reply. It sets the
	// Err of each operation that failed; an error it returns fails every
	// operation whose Err it left nil.
	Pipeline(ctx context.Context, ops []Op) error
}

// Workload is a mix of operations, named after YCSB's core workloads.
type Workload struct {
	Name string
	// ReadFraction of the operations are reads; the rest update.
	ReadFraction float64
	// Load inserts records 0..Records-1 once each, then stops.
	Load bool
}

// LookupWorkload returns the workload with a name: load (insert every
// record once), a (50% reads, 50% updates), b (95/5), c (reads only), w
// (updates only).
func LookupWorkload(name string) (Workload, error) {
	switch name {
	case "load":
		return Workload{Name: name, Load: true}, nil
	case "a":
		return Workload{Name: name, ReadFraction: 0.5}, nil
	case "b":
		return Workload{Name: name, ReadFraction: 0.95}, nil
	case "c":
		return Workload{Name: name, ReadFraction: 1}, nil
	case "w":
		return Workload{Name: name}, nil
	}
	return Workload{}, fmt.Errorf("bench: unknown workload %q: want load, a, b, c or w", name)
}

// Options configure a Run. Zero values take the defaults.
type Options struct {
	Workload Workload
	// Records is the number of keys (user0000000000 ...). Default 100000.
	Records int
	// ValueSize is the size of written values in bytes. Default 100.
	ValueSize int
	// Concurrency is the number of concurrent clients. Default 64.
	Concurrency int
	// Duration bounds the run (not the load phase). Default 30s.
	Duration time.Duration
	// Ops, when positive, ends the run after about this many operations
	// (each client finishes the round trip it is in).
	Ops int
	// Pipeline is how many operations a client sends per round trip;
	// above 1 the Target must be a Pipeliner. Each operation of a
	// pipeline is recorded with the latency of the whole round trip.
	// Default 1.
	Pipeline int
	// Zipfian picks keys with a Zipf distribution (s = 1.01, close to
	// YCSB's 0.99, which Go's generator cannot take) instead of uniformly.
	// Unlike YCSB's default it is not scrambled, and it spans the records
	// only, so it is more skewed: the hottest of 50,000 keys gets about 9%
	// of the operations (YCSB's, about 4%).
	Zipfian bool
	// Rate, when positive, makes the run open-loop: operations are sent at
	// this many per second in all, each client on a fixed schedule, and an
	// operation's latency counts from its scheduled start, so that a
	// stall shows in every operation it delays, not only in the one
	// round trip per client a closed loop would have sent meanwhile
	// (coordinated omission). A client that falls behind sends at once.
	// Default 0: closed loop, each client sends when its last answer came.
	Rate float64
	// Timeout bounds one operation. Default 10s.
	Timeout time.Duration
	// Seed makes key choices reproducible. Default 1.
	Seed uint64
	// Progress, when set, is called about once a second.
	Progress func(Progress)
}

// Progress is a run's state so far.
type Progress struct {
	Elapsed   time.Duration
	Ops       uint64
	Errors    uint64
	OpsPerSec float64 // over the last interval
}

// Latency summarizes one operation type, in milliseconds.
type Latency struct {
	Count uint64  `json:"count"`
	Mean  float64 `json:"mean_ms"`
	P50   float64 `json:"p50_ms"`
	P99   float64 `json:"p99_ms"`
	P999  float64 `json:"p999_ms"`
	Max   float64 `json:"max_ms"`
}

// Result is what a Run measured.
type Result struct {
	Workload    string  `json:"workload"`
	Records     int     `json:"records"`
	ValueSize   int     `json:"value_size"`
	Concurrency int     `json:"concurrency"`
	Pipeline    int     `json:"pipeline"`
	Zipfian     bool    `json:"zipfian"`
	Rate        float64 `json:"rate,omitempty"`
	Seconds     float64 `json:"seconds"`
	Ops         uint64  `json:"ops"`
	Errors      uint64  `json:"errors"`
	FirstError  string  `json:"first_error,omitempty"`
	OpsPerSec   float64 `json:"ops_per_sec"`
	Read        Latency `json:"read"`
	Update      Latency `json:"update"`
	All         Latency `json:"all"`
}

func (o *Options) ensureDefaults() {
	if o.Records <= 0 {
		o.Records = 100000
	}
	if o.ValueSize <= 0 {
		o.ValueSize = 100
	}
	if o.Concurrency <= 0 {
		o.Concurrency = 64
	}
	if o.Duration <= 0 {
		o.Duration = 30 * time.Second
	}
	if o.Timeout <= 0 {
		o.Timeout = 10 * time.Second
	}
	if o.Seed == 0 {
		o.Seed = 1
	}
	if o.Pipeline <= 0 {
		o.Pipeline = 1
	}
}

// Key returns the name of record i.
func Key(i int) []byte { return fmt.Appendf(nil, "user%010d", i) }

// Run drives t with the workload until it is done (load), the duration
// passes, Ops operations are done, or ctx ends, and returns what it
// measured. A failed operation is counted, not retried.
func Run(ctx context.Context, t Target, o Options) (*Result, error) {
	o.ensureDefaults()
	if o.Workload.Name == "" {
		return nil, errors.New("bench: no workload")
	}
	pt, canPipeline := t.(Pipeliner)
	if o.Pipeline > 1 && !canPipeline {
		return nil, fmt.Errorf("bench: pipeline %d: this target sends one operation per round trip", o.Pipeline)
	}
	var (
		ops, errs atomic.Uint64
		firstErr  atomic.Value
		next      atomic.Int64 // load: next record to insert
		mu        sync.Mutex
		reads     Histogram
		updates   Histogram
	)
	runCtx := ctx
	var cancel context.CancelFunc
	if !o.Workload.Load {
		runCtx, cancel = context.WithTimeout(ctx, o.Duration)
	} else {
		runCtx, cancel = context.WithCancel(ctx)
	}
	defer cancel()
	// ended tells whether the run is over. A client library may fail a call
	// for the run's deadline (gRPC checks it when it starts a call) before
	// the context's timer has fired, so the deadline is checked too.
	deadline, hasDeadline := runCtx.Deadline()
	ended := func() bool { return runCtx.Err() != nil || hasDeadline && !time.Now().Before(deadline) }
	start := time.Now()
	var wg sync.WaitGroup
	for w := range o.Concurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(o.Seed, uint64(w)))
			var zipf *rand.Zipf
			if o.Zipfian {
				zipf = rand.NewZipf(rng, 1.01, 1, uint64(o.Records-1))
			}
			// One value buffer per pipelined operation: a pipeline holds
			// them all until it is sent.
			batch := make([]Op, o.Pipeline)
			for i := range batch {
				batch[i].Value = make([]byte, o.ValueSize)
			}
			// The open loop's schedule: one round trip every interval,
			// the clients' schedules spread over it.
			var interval time.Duration
			var scheduled time.Time
			if o.Rate > 0 {
				interval = time.Duration(float64(time.Second) * float64(o.Concurrency*o.Pipeline) / o.Rate)
				scheduled = start.Add(interval * time.Duration(w) / time.Duration(o.Concurrency))
			}
			var r, u Histogram
			defer func() {
				mu.Lock()
				reads.Merge(&r)
				updates.Merge(&u)
				mu.Unlock()
			}()
			for !ended() {
				n := o.Pipeline
				switch {
				case o.Workload.Load:
					first := int(next.Add(int64(n)) - int64(n))
					if first >= o.Records {
						return
					}
					n = min(n, o.Records-first)
					for j := range n {
						batch[j].Key, batch[j].Read = Key(first+j), false
					}
				default:
					if o.Ops > 0 && ops.Load() >= uint64(o.Ops) {
						cancel()
						return
					}
					for j := range n {
						i := rng.IntN(o.Records)
						if zipf != nil {
							i = int(zipf.Uint64())
						}
						batch[j].Key = Key(i)
						batch[j].Read = rng.Float64() < o.Workload.ReadFraction
					}
				}
				for j := range n {
					batch[j].Err = nil
					if !batch[j].Read {
						for i := range batch[j].Value {
							batch[j].Value[i] = byte('a' + rng.IntN(26))
						}
					}
				}
				t0 := time.Now()
				if interval > 0 {
					if wait := scheduled.Sub(t0); wait > 0 {
						timer := time.NewTimer(wait)
						select {
						case <-runCtx.Done():
						case <-timer.C:
						}
						timer.Stop()
						if ended() {
							return
						}
					}
					t0 = scheduled
					scheduled = scheduled.Add(interval)
				}
				octx, ocancel := context.WithTimeout(runCtx, o.Timeout)
				var err error
				switch {
				case o.Pipeline > 1:
					err = pt.Pipeline(octx, batch[:n])
				case batch[0].Read:
					err = t.Get(octx, batch[0].Key)
				default:
					err = t.Put(octx, batch[0].Key, batch[0].Value)
				}
				d := time.Since(t0)
				ocancel()
				for j := range n {
					opErr := batch[j].Err
					if opErr == nil {
						opErr = err
					}
					if opErr != nil {
						if ended() {
							continue // the run ended under it: not the store's failure
						}
						errs.Add(1)
						firstErr.CompareAndSwap(nil, opErr.Error())
						continue
					}
					ops.Add(1)
					if batch[j].Read {
						r.Record(d)
					} else {
						u.Record(d)
					}
				}
			}
		}()
	}
	if o.Progress != nil {
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		tick := time.NewTicker(time.Second)
		last, lastAt := uint64(0), start
		for running := true; running; {
			select {
			case <-done:
				running = false
			case now := <-tick.C:
				n := ops.Load()
				o.Progress(Progress{Elapsed: now.Sub(start), Ops: n, Errors: errs.Load(),
					OpsPerSec: float64(n-last) / now.Sub(lastAt).Seconds()})
				last, lastAt = n, now
			}
		}
		tick.Stop()
	} else {
		wg.Wait()
	}
	elapsed := time.Since(start)
	var all Histogram
	all.Merge(&reads)
	all.Merge(&updates)
	res := &Result{
		Workload: o.Workload.Name, Records: o.Records, ValueSize: o.ValueSize, Concurrency: o.Concurrency,
		Pipeline: o.Pipeline, Zipfian: o.Zipfian, Rate: o.Rate,
		Seconds: elapsed.Seconds(), Ops: ops.Load(), Errors: errs.Load(),
		OpsPerSec: float64(ops.Load()) / elapsed.Seconds(),
		Read:      summarize(&reads), Update: summarize(&updates), All: summarize(&all),
	}
	if e, ok := firstErr.Load().(string); ok {
		res.FirstError = e
	}
	return res, nil
}

func summarize(h *Histogram) Latency {
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	return Latency{Count: h.Count(), Mean: ms(h.Mean()), P50: ms(h.Quantile(0.5)), P99: ms(h.Quantile(0.99)),
		P999: ms(h.Quantile(0.999)), Max: ms(h.Max())}
}
