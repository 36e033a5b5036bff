package chaos

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/client"
)

// KV is what a workload needs from a client: the Go client and go-redis
// both provide it.
type KV interface {
	// Name is "go" or "redis".
	Name() string
	Get(ctx context.Context, key string) (value string, found bool, err error)
	Put(ctx context.Context, key, value string) error
	// CAS sets key to value if it holds expect; ErrUnsupported if the
	// client cannot.
	CAS(ctx context.Context, key, expect, value string) (bool, error)
	// Definite reports whether a write that returned err certainly did not
	// apply. When unsure it says false: the write is then maybe-applied.
	Definite(err error) bool
	Close() error
}

// GoClient adapts the Go client. When Stray is set, some reads go instead
// to a random node, which forwards them to the leader it knows: like a
// client with an old route table, they rely on the server alone to stay
// linearizable.
type GoClient struct {
	C     *client.Client
	Stray []shoalpb.KVClient
}

// StrayGet reads key through a random node (see GoClient).
func (g GoClient) StrayGet(ctx context.Context, rng *rand.Rand, key string) (string, bool, error) {
	if len(g.Stray) == 0 {
		return g.Get(ctx, key)
	}
	resp, err := g.Stray[rng.IntN(len(g.Stray))].Get(ctx, &shoalpb.GetRequest{Header: &shoalpb.RequestHeader{}, Key: []byte(key)})
	if err != nil {
		return "", false, err
	}
	return string(resp.GetValue()), resp.GetFound(), nil
}

// Name is "go".
func (GoClient) Name() string { return "go" }

// Get reads key (linearizable).
func (g GoClient) Get(ctx context.Context, key string) (string, bool, error) {
	it, ok, err := g.C.Get(ctx, []byte(key))
	if err != nil || !ok {
		return "", false, err
	}
	return string(it.Value), true, nil
}

// Put writes key.
func (g GoClient) Put(ctx context.Context, key, value string) error {
	_, err := g.C.Put(ctx, []byte(key), []byte(value))
	return err
}

// CAS compares and sets.
func (g GoClient) CAS(ctx context.Context, key, expect, value string) (bool, error) {
	return g.C.CompareAndSet(ctx, []byte(key), []byte(expect), []byte(value))
}

// Definite: only errors the client says were refused before proposing.
func (GoClient) Definite(err error) bool {
	return errors.Is(err, client.ErrTooLarge) || errors.Is(err, client.ErrInvalid) || errors.Is(err, client.ErrCrossShard)
}

// Close closes the client.
func (g GoClient) Close() error { return g.C.Close() }

// RedisClient adapts go-redis's cluster client against the nodes' RESP
// ports. It has no compare-and-set; it never retries a command on its own
// (a retried SET could apply twice), only follows MOVED/ASK.
type RedisClient struct{ C *redis.ClusterClient }

// NewRedisClient connects to the nodes' RESP addresses.
func NewRedisClient(addrs []string) RedisClient {
	return RedisClient{C: redis.NewClusterClient(&redis.ClusterOptions{
		Addrs: addrs, MaxRetries: -1, MaxRedirects: 8,
		DialTimeout: time.Second, ReadTimeout: 2 * time.Second, WriteTimeout: 2 * time.Second,
	})}
}

// Name is "redis".
func (RedisClient) Name() string { return "redis" }

// Get reads key.
func (r RedisClient) Get(ctx context.Context, key string) (string, bool, error) {
	v, err := r.C.Get(ctx, key).Result()
	if errors.Is(err, redis.Nil) {
		return "", false, nil
	}
	if err != nil {
		return "", false, err
	}
	return v, true, nil
}

// Put is SET.
func (r RedisClient) Put(ctx context.Context, key, value string) error {
	return r.C.Set(ctx, key, value, 0).Err()
}

// CAS is unsupported over RESP.
func (RedisClient) CAS(context.Context, string, string, string) (bool, error) {
	return false, ErrUnsupported
}

// Definite: never sure over RESP (a timeout or a dropped connection may
// follow an applied SET).
func (RedisClient) Definite(error) bool { return false }

// Close closes the client.
func (r RedisClient) Close() error { return r.C.Close() }

// History collects what workers did, safe for concurrent use.
type History struct {
	start time.Time

	mu      sync.Mutex
	reg     []RegisterOp
	inserts []InsertOp
	clients atomic.Int64
}

// NewHistory starts the clock of a history.
func NewHistory() *History { return &History{start: time.Now()} }

func (h *History) now() int64 { return int64(time.Since(h.start)) }

// InsertOp is one write of the unique-insert workload.
type InsertOp struct {
	Key          string
	Outcome      Outcome
	Call, Return int64
}

// Register returns the register operations recorded so far.
func (h *History) Register() []RegisterOp {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]RegisterOp(nil), h.reg...)
}

// Inserts returns the insert operations recorded so far.
func (h *History) Inserts() []InsertOp {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]InsertOp(nil), h.inserts...)
}

// WorkloadOptions configure the register and insert workers.
type WorkloadOptions struct {
	// Keys is the number of registers. Default 16.
	Keys int
	// RegisterWorkers and InsertWorkers count the workers. Defaults 8, 4.
	RegisterWorkers, InsertWorkers int
	// OpTimeout bounds each operation. Default 2s.
	OpTimeout time.Duration
	// Prefix makes the keys of one run unique. Default "r".
	Prefix string
}

func (o *WorkloadOptions) defaults() {
	if o.Keys == 0 {
		o.Keys = 16
	}
	if o.RegisterWorkers == 0 {
		o.RegisterWorkers = 8
	}
	if o.InsertWorkers == 0 {
		o.InsertWorkers = 4
	}
	if o.OpTimeout == 0 {
		o.OpTimeout = 2 * time.Second
	}
	if o.Prefix == "" {
		o.Prefix = "r"
	}
}

// RunWorkload runs register and insert workers against kv until ctx ends,
// recording into h.
func RunWorkload(ctx context.Context, kv KV, o WorkloadOptions, h *History, seed uint64) {
	o.defaults()
	var wg sync.WaitGroup
	for w := range o.RegisterWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			registerWorker(ctx, kv, o, h, rand.New(rand.NewPCG(seed, uint64(w))), w)
		}()
	}
	for w := range o.InsertWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			insertWorker(ctx, kv, o, h, w)
		}()
	}
	wg.Wait()
}

func registerWorker(ctx context.Context, kv KV, o WorkloadOptions, h *History, rng *rand.Rand, w int) {
	clientID := int(h.clients.Add(1)) - 1
	for n := 0; ctx.Err() == nil; n++ {
		op := RegisterOp{Client: clientID, Key: fmt.Sprintf("%s-%s-%d", o.Prefix, kv.Name(), rng.IntN(o.Keys))}
		value := fmt.Sprintf("%d.%d", w, n)
		octx, cancel := context.WithTimeout(ctx, o.OpTimeout)
		op.Call = h.now()
		switch p := rng.IntN(10); {
		case p < 5:
			op.Kind = OpGet
			get := kv.Get
			if g, ok := kv.(GoClient); ok && rng.IntN(4) == 0 {
				get = func(ctx context.Context, key string) (string, bool, error) { return g.StrayGet(ctx, rng, key) }
			}
			v, found, err := get(octx, op.Key)
			op.Out, op.Found = v, found
			op.Outcome = outcomeOf(kv, err, true)
		case p < 8 || kv.Name() == "redis":
			op.Kind, op.Value = OpPut, value
			err := kv.Put(octx, op.Key, value)
			op.Outcome = outcomeOf(kv, err, false)
		default:
			op.Kind, op.Value = OpCAS, value
			// Expect a value some worker may have written: ours or another's.
			op.Expect = fmt.Sprintf("%d.%d", rng.IntN(o.RegisterWorkers), max(0, n-rng.IntN(3)))
			if rng.IntN(2) == 0 {
				// Or the current one, read first (a read-modify-write).
				if v, found, err := kv.Get(octx, op.Key); err == nil && found {
					op.Expect = v
				}
				op.Call = h.now()
			}
			swapped, err := kv.CAS(octx, op.Key, op.Expect, value)
			op.Swapped = swapped
			op.Outcome = outcomeOf(kv, err, false)
		}
		op.Return = h.now()
		cancel()
		if ctx.Err() != nil && op.Outcome != OutcomeOK {
			// Cut short by the end of the run: a maybe-applied write still
			// counts, a read does not.
			if op.Kind == OpGet {
				return
			}
		}
		h.mu.Lock()
		h.reg = append(h.reg, op)
		h.mu.Unlock()
		if op.Outcome == OutcomeUnknown {
			// Like Jepsen's crashed process: the op may still be in flight,
			// so this worker carries on under a new client identity.
			clientID = int(h.clients.Add(1)) - 1
		}
	}
}

func insertWorker(ctx context.Context, kv KV, o WorkloadOptions, h *History, w int) {
	for n := 0; ctx.Err() == nil; n++ {
		op := InsertOp{Key: fmt.Sprintf("%s-ins-%s-%d-%d", o.Prefix, kv.Name(), w, n)}
		octx, cancel := context.WithTimeout(ctx, o.OpTimeout)
		op.Call = h.now()
		err := kv.Put(octx, op.Key, op.Key)
		op.Return = h.now()
		cancel()
		op.Outcome = outcomeOf(kv, err, false)
		h.mu.Lock()
		h.inserts = append(h.inserts, op)
		h.mu.Unlock()
	}
}

func outcomeOf(kv KV, err error, read bool) Outcome {
	switch {
	case err == nil:
		return OutcomeOK
	case read || kv.Definite(err):
		return OutcomeFailed
	}
	return OutcomeUnknown
}

// LostWrites reads back every acknowledged insert and returns those that
// are missing, and how many maybe-applied inserts turned out applied. It
// retries a key's read until readTimeout (the cluster must be healed).
func LostWrites(ctx context.Context, kv KV, ops []InsertOp, readTimeout time.Duration) (lost []string, maybePresent int, err error) {
	for _, op := range ops {
		if op.Outcome == OutcomeFailed {
			continue
		}
		var found bool
		deadline := time.Now().Add(readTimeout)
		for {
			rctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			var v string
			v, found, err = kv.Get(rctx, op.Key)
			cancel()
			if err == nil {
				if found && v != op.Key {
					return nil, 0, fmt.Errorf("chaos: insert %s reads back %q", op.Key, v)
				}
				break
			}
			if time.Now().After(deadline) || ctx.Err() != nil {
				return nil, 0, fmt.Errorf("chaos: reading back %s: %w", op.Key, err)
			}
			select {
			case <-ctx.Done():
			case <-time.After(50 * time.Millisecond):
			}
		}
		switch {
		case op.Outcome == OutcomeOK && !found:
			lost = append(lost, op.Key)
		case op.Outcome == OutcomeUnknown && found:
			maybePresent++
		}
	}
	return lost, maybePresent, nil
}
