package kv

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/internal/keys"
	"github.com/shoaldb/shoal/internal/raftstore"
)

// DB is the key-value interface of one node: it routes each key to the
// local replica of its shard, turns calls into KVCommands stamped with the
// node's clock and limits, proposes them, and reads the engine. Writes must
// reach the shard's leader (otherwise they fail with an error matching
// raftstore.ErrNotLeader, carrying a hint); reads work on any replica.
//
// The store's replicas must run the state machine of NewStateMachine. DB
// also runs the expiry sweeper: one goroutine for the whole node that
// deletes expired keys and idle sessions in the shards this node leads.
type DB struct {
	store *raftstore.Store
	opts  Options
	log   *slog.Logger

	stopSweeper context.CancelFunc
	sweeperDone chan struct{}
	closeOnce   sync.Once
}

// New returns a DB over store, which the caller starts and stops. Close
// stops the DB's sweeper.
func New(store *raftstore.Store, opts Options) *DB {
	opts.EnsureDefaults()
	ctx, cancel := context.WithCancel(context.Background())
	d := &DB{
		store:       store,
		opts:        opts,
		log:         opts.Logger,
		stopSweeper: cancel,
		sweeperDone: make(chan struct{}),
	}
	if opts.SweepInterval > 0 {
		go d.runSweeper(ctx)
	} else {
		close(d.sweeperDone)
	}
	return d
}

// Close stops the sweeper and waits for it. It does not stop the store. It
// is safe to call more than once.
func (d *DB) Close() {
	d.closeOnce.Do(func() {
		d.stopSweeper()
		<-d.sweeperDone
	})
}

// Value is a key's value and its expiry (zero if it has no TTL).
type Value struct {
	Data     []byte
	ExpireAt time.Time
}

// ReadOptions adjust a read.
type ReadOptions struct {
	// Stale skips the ReadIndex barrier: the read sees this replica's state,
	// which may lag the leader's. By default reads are linearizable.
	Stale bool
	// ExistsOnly makes MultiGet answer whether each key exists (and its
	// expiry) without reading its value out: EXISTS. Other reads ignore it.
	ExistsOnly bool
}

// Session identifies a write in a client session so that it applies at most
// once however often it is retried: retry with the same ID and Seq. ID must
// not be 0. AckedBelow tells the shard that the client has the results of
// every Seq below it, so it may forget them; a Seq below a shard's mark is
// refused with ErrStaleSequence.
type Session struct {
	ID, Seq, AckedBelow uint64
}

// Condition restricts a Put to when the key exists or not.
type Condition int

// Conditions of a Put.
const (
	// Unconditional writes whether the key exists or not.
	Unconditional Condition = iota
	// IfNotExists writes only if the key does not exist (SET NX).
	IfNotExists
	// IfExists writes only if the key exists (SET XX).
	IfExists
)

// PutOptions adjust a Put. At most one of TTL, ExpireAt and KeepTTL may be
// set; with none of them the key loses any TTL it had.
type PutOptions struct {
	Condition Condition
	// TTL makes the key expire this long after the leader's clock (SET PX),
	// rounded up to a millisecond. It must not be negative.
	TTL time.Duration
	// ExpireAt makes the key expire at this time (SET PXAT); a time in the
	// past leaves the key absent.
	ExpireAt time.Time
	// KeepTTL keeps the key's current TTL (SET KEEPTTL).
	KeepTTL bool
	// ReturnOld returns the previous value (SET GET).
	ReturnOld bool
	Session   *Session
}

// PutResult is the outcome of a Put.
type PutResult struct {
	// Applied is false when the condition was not met; nothing was written.
	Applied bool
	// Found says whether the key existed before.
	Found bool
	// Old is the previous value, when ReturnOld was set.
	Old []byte
}

// DeleteOptions adjust a Delete.
type DeleteOptions struct {
	// ReturnOld returns the deleted value (GETDEL).
	ReturnOld bool
	Session   *Session
}

// DeleteResult is the outcome of a Delete.
type DeleteResult struct {
	// Found says whether the key existed (and so was deleted).
	Found bool
	// Old is the deleted value, when ReturnOld was set.
	Old []byte
}

// CASOptions adjust a CompareAndSet.
type CASOptions struct {
	// TTL is the new value's TTL; 0 for none.
	TTL     time.Duration
	Session *Session
}

// CASResult is the outcome of a CompareAndSet.
type CASResult struct {
	// Swapped says whether the value was written.
	Swapped bool
	// Current and Found are the key's value and existence when it was not
	// swapped.
	Current []byte
	Found   bool
}

// WriteOptions adjust a write that has no other options.
type WriteOptions struct {
	Session *Session
}

// Get returns key's value. By default the read is linearizable: it waits for
// a ReadIndex barrier of key's shard, on a leader or a follower.
func (d *DB) Get(ctx context.Context, key []byte, o ReadOptions) (Value, bool, error) {
	slot := keys.Slot(key)
	shard, err := d.store.ShardBySlot(slot)
	if err != nil {
		return Value{}, false, fmt.Errorf("kv: get: %w", err)
	}
	if !o.Stale {
		if err := d.store.ReadIndex(ctx, shard); err != nil {
			return Value{}, false, fmt.Errorf("kv: get: %w", err)
		}
	}
	v, at, ok, err := d.get(slot, key)
	if err == nil {
		err = d.store.Serving(shard)
	}
	if err != nil || !ok {
		return Value{}, false, err
	}
	val := Value{Data: v}
	if at != 0 {
		val.ExpireAt = time.UnixMilli(at)
	}
	return val, true, nil
}

// Put sets key to value.
func (d *DB) Put(ctx context.Context, key, value []byte, o PutOptions) (PutResult, error) {
	if err := d.checkWrite(key, value); err != nil {
		return PutResult{}, fmt.Errorf("kv: put: %w", err)
	}
	cond, err := o.Condition.proto()
	if err != nil {
		return PutResult{}, fmt.Errorf("kv: put: %w", err)
	}
	if o.KeepTTL && (o.TTL != 0 || !o.ExpireAt.IsZero()) {
		return PutResult{}, fmt.Errorf("kv: put: %w: KeepTTL with a TTL or ExpireAt", ErrInvalid)
	}
	now := d.nowMs()
	at, err := expiryMs(now, o.TTL, o.ExpireAt)
	if err != nil {
		return PutResult{}, fmt.Errorf("kv: put: %w", err)
	}
	r, err := d.writeOne(ctx, key, now, o.Session, &shoalpb.KVOp{Op: &shoalpb.KVOp_Put{Put: &shoalpb.PutOp{
		Key: key, Value: value, Condition: cond, ExpireAtMs: at, KeepTtl: o.KeepTTL, ReturnOld: o.ReturnOld,
	}}})
	if err != nil {
		return PutResult{}, fmt.Errorf("kv: put: %w", err)
	}
	return PutResult{Applied: r.Applied, Found: r.Found, Old: r.Value}, nil
}

// Delete deletes key.
func (d *DB) Delete(ctx context.Context, key []byte, o DeleteOptions) (DeleteResult, error) {
	if err := d.checkWrite(key, nil); err != nil {
		return DeleteResult{}, fmt.Errorf("kv: delete: %w", err)
	}
	r, err := d.writeOne(ctx, key, d.nowMs(), o.Session, &shoalpb.KVOp{Op: &shoalpb.KVOp_Delete{Delete: &shoalpb.DeleteOp{
		Key: key, ReturnOld: o.ReturnOld,
	}}})
	if err != nil {
		return DeleteResult{}, fmt.Errorf("kv: delete: %w", err)
	}
	return DeleteResult{Found: r.Found, Old: r.Value}, nil
}

// CompareAndSet sets key to value if its current value is exactly expected,
// or, when expected is nil, if key does not exist. (A non-nil empty expected
// matches an existing empty value.)
func (d *DB) CompareAndSet(ctx context.Context, key, expected, value []byte, o CASOptions) (CASResult, error) {
	if err := d.checkWrite(key, value); err != nil {
		return CASResult{}, fmt.Errorf("kv: compare-and-set: %w", err)
	}
	now := d.nowMs()
	at, err := expiryMs(now, o.TTL, time.Time{})
	if err != nil {
		return CASResult{}, fmt.Errorf("kv: compare-and-set: %w", err)
	}
	r, err := d.writeOne(ctx, key, now, o.Session, &shoalpb.KVOp{Op: &shoalpb.KVOp_CompareAndSet{CompareAndSet: &shoalpb.CompareAndSetOp{
		Key: key, Expected: expected, ExpectAbsent: expected == nil, Value: value, ExpireAtMs: at,
	}}})
	if err != nil {
		return CASResult{}, fmt.Errorf("kv: compare-and-set: %w", err)
	}
	if r.Applied {
		return CASResult{Swapped: true}, nil
	}
	return CASResult{Current: r.Value, Found: r.Found}, nil
}

// IncrBy adds delta to the decimal integer stored at key (0 if absent) and
// returns the result (INCRBY). The key keeps its TTL. It fails with
// ErrNotInteger or ErrOverflow.
func (d *DB) IncrBy(ctx context.Context, key []byte, delta int64, o WriteOptions) (int64, error) {
	if err := d.checkWrite(key, nil); err != nil {
		return 0, fmt.Errorf("kv: incrby: %w", err)
	}
	r, err := d.writeOne(ctx, key, d.nowMs(), o.Session, &shoalpb.KVOp{Op: &shoalpb.KVOp_IncrBy{IncrBy: &shoalpb.IncrByOp{
		Key: key, Delta: delta,
	}}})
	if err != nil {
		return 0, fmt.Errorf("kv: incrby: %w", err)
	}
	return r.IntValue, nil
}

// Append appends value to key's value, creating it if absent, and returns
// the new length (APPEND). The key keeps its TTL. It fails with ErrTooLarge
// if the result would exceed Limits.MaxValueBytes.
func (d *DB) Append(ctx context.Context, key, value []byte, o WriteOptions) (int64, error) {
	if err := d.checkWrite(key, value); err != nil {
		return 0, fmt.Errorf("kv: append: %w", err)
	}
	r, err := d.writeOne(ctx, key, d.nowMs(), o.Session, &shoalpb.KVOp{Op: &shoalpb.KVOp_Append{Append: &shoalpb.AppendOp{
		Key: key, Value: value,
	}}})
	if err != nil {
		return 0, fmt.Errorf("kv: append: %w", err)
	}
	return r.IntValue, nil
}

// Expire makes key expire at at (PEXPIREAT), or removes its TTL when at is
// zero (PERSIST); a time not after the leader's clock deletes the key. It
// reports what Redis replies: whether the key existed and the TTL was set or
// the key deleted, and for PERSIST whether a TTL was removed.
func (d *DB) Expire(ctx context.Context, key []byte, at time.Time, o WriteOptions) (bool, error) {
	if err := d.checkWrite(key, nil); err != nil {
		return false, fmt.Errorf("kv: expire: %w", err)
	}
	var ms int64
	if !at.IsZero() {
		// A time at or before the epoch is in the past; 0 would mean PERSIST.
		if ms = at.UnixMilli(); ms <= 0 {
			ms = -1
		}
	}
	r, err := d.writeOne(ctx, key, d.nowMs(), o.Session, &shoalpb.KVOp{Op: &shoalpb.KVOp_Expire{Expire: &shoalpb.ExpireOp{
		Key: key, ExpireAtMs: ms,
	}}})
	if err != nil {
		return false, fmt.Errorf("kv: expire: %w", err)
	}
	return r.Applied, nil
}

// Exec applies ops atomically: all of them or, if one fails, none. Every key
// must belong to the same shard (ErrCrossShard otherwise), and expiry times
// in the ops are absolute Unix milliseconds. DeleteExpiredOp is reserved for
// the sweeper. When an op fails by the command's rules, Exec returns the
// result too, with an error wrapping a *CommandError that names the op.
func (d *DB) Exec(ctx context.Context, ops []*shoalpb.KVOp, o WriteOptions) (*shoalpb.KVCommandResult, error) {
	shard, err := d.checkBatch(ops)
	if err != nil {
		return nil, fmt.Errorf("kv: exec: %w", err)
	}
	cmd := &shoalpb.KVCommand{NowMs: d.nowMs(), Ops: ops}
	res, err := d.propose(ctx, shard, cmd, o.Session)
	if err != nil {
		return res, fmt.Errorf("kv: exec: %w", err)
	}
	return res, nil
}

// checkBatch validates ops and returns the one shard that owns their keys.
func (d *DB) checkBatch(ops []*shoalpb.KVOp) (uint64, error) {
	if len(ops) == 0 {
		return 0, fmt.Errorf("%w: no ops", ErrInvalid)
	}
	var shard uint64
	for i, op := range ops {
		key, value, err := opKeyValue(op)
		if err != nil {
			return 0, fmt.Errorf("op %d: %w", i, err)
		}
		if err := d.checkWrite(key, value); err != nil {
			return 0, fmt.Errorf("op %d: %w", i, err)
		}
		s, err := d.store.ShardBySlot(keys.Slot(key))
		switch {
		case i == 0 && err != nil:
			return 0, err
		case i == 0:
			shard = s
		case err != nil || s != shard:
			// The first key's shard is local, so a key no local shard owns
			// is in another shard too.
			return 0, fmt.Errorf("%w: op %d's key is not in shard %d", ErrCrossShard, i, shard)
		}
	}
	return shard, nil
}

// opKeyValue returns the key and the value an op a caller may send writes.
func opKeyValue(op *shoalpb.KVOp) (key, value []byte, err error) {
	switch o := op.GetOp().(type) {
	case *shoalpb.KVOp_Put:
		return o.Put.GetKey(), o.Put.GetValue(), nil
	case *shoalpb.KVOp_Delete:
		return o.Delete.GetKey(), nil, nil
	case *shoalpb.KVOp_CompareAndSet:
		return o.CompareAndSet.GetKey(), o.CompareAndSet.GetValue(), nil
	case *shoalpb.KVOp_IncrBy:
		return o.IncrBy.GetKey(), nil, nil
	case *shoalpb.KVOp_Append:
		return o.Append.GetKey(), o.Append.GetValue(), nil
	case *shoalpb.KVOp_Expire:
		return o.Expire.GetKey(), nil, nil
	case *shoalpb.KVOp_DeleteExpired:
		return nil, nil, fmt.Errorf("%w: DeleteExpiredOp is reserved for the sweeper", ErrInvalid)
	}
	return nil, nil, fmt.Errorf("%w: empty op", ErrInvalid)
}

// checkWrite enforces the limits before anything is proposed.
func (d *DB) checkWrite(key, value []byte) error {
	if l := d.opts.Limits.MaxKeyBytes; len(key) > l {
		return fmt.Errorf("%w: key is %d bytes, limit %d", ErrTooLarge, len(key), l)
	}
	if l := d.opts.Limits.MaxValueBytes; len(value) > l {
		return fmt.Errorf("%w: value is %d bytes, limit %d", ErrTooLarge, len(value), l)
	}
	return nil
}

// writeOne proposes a command of one op on key, stamped with nowMs, and
// returns the op's result.
func (d *DB) writeOne(ctx context.Context, key []byte, nowMs int64, s *Session, op *shoalpb.KVOp) (*shoalpb.KVOpResult, error) {
	shard, err := d.store.ShardBySlot(keys.Slot(key))
	if err != nil {
		return nil, err
	}
	res, err := d.propose(ctx, shard, &shoalpb.KVCommand{NowMs: nowMs, Ops: []*shoalpb.KVOp{op}}, s)
	if err != nil {
		return nil, err
	}
	if len(res.Results) != 1 {
		return nil, fmt.Errorf("kv: shard %d: %d results for one op", shard, len(res.Results))
	}
	return res.Results[0], nil
}

// propose stamps cmd with the session and the value limit, replicates it
// through shard's log and returns its result. A result that reports an
// error is returned with that error as a *CommandError.
func (d *DB) propose(ctx context.Context, shard uint64, cmd *shoalpb.KVCommand, s *Session) (*shoalpb.KVCommandResult, error) {
	if s != nil {
		if s.ID == 0 {
			return nil, fmt.Errorf("%w: session ID 0", ErrInvalid)
		}
		cmd.SessionId, cmd.Seq, cmd.AckedBelow = s.ID, s.Seq, s.AckedBelow
	}
	if grows(cmd) {
		if err := d.opts.Space.Check(); err != nil {
			return nil, err
		}
	}
	if f := d.opts.QuorumSpace; f != nil {
		if err := f(shard); err != nil {
			return nil, err
		}
	}
	cmd.MaxValueBytes = int64(d.opts.Limits.MaxValueBytes)
	data, err := proto.Marshal(cmd)
	if err != nil {
		return nil, fmt.Errorf("kv: encode command: %w", err)
	}
	v, err := d.proposeCmd(ctx, shard, data, len(cmd.GetOps()))
	if err != nil {
		return nil, err
	}
	res, ok := v.(*shoalpb.KVCommandResult)
	if !ok {
		return nil, fmt.Errorf("kv: shard %d: unexpected result %T (is the store running the kv state machine?)", shard, v)
	}
	return res, resultError(res)
}

// grows reports whether cmd may add data: everything but deletes (an
// expiry already past deletes too), which a node whose disk is full still
// accepts so that space can be freed.
func grows(cmd *shoalpb.KVCommand) bool {
	for _, op := range cmd.GetOps() {
		switch o := op.GetOp().(type) {
		case *shoalpb.KVOp_Delete, *shoalpb.KVOp_DeleteExpired:
		case *shoalpb.KVOp_Expire:
			if !expired(o.Expire.GetExpireAtMs(), cmd.GetNowMs()) {
				return true
			}
		default:
			return true
		}
	}
	return false
}

func (d *DB) nowMs() int64 { return d.opts.Clock().UnixMilli() }

// expiryMs returns the absolute expiry, Unix milliseconds, of a write at
// nowMs with a relative ttl or an absolute at (at most one set); 0 for none.
func expiryMs(nowMs int64, ttl time.Duration, at time.Time) (int64, error) {
	switch {
	case ttl < 0:
		return 0, fmt.Errorf("%w: negative TTL %v", ErrInvalid, ttl)
	case ttl > 0 && !at.IsZero():
		return 0, fmt.Errorf("%w: both TTL and ExpireAt", ErrInvalid)
	case ttl > 0:
		ms := int64(ttl / time.Millisecond)
		if ttl%time.Millisecond != 0 {
			ms++
		}
		return nowMs + ms, nil
	case !at.IsZero():
		ms := at.UnixMilli()
		if ms <= 0 {
			return 0, fmt.Errorf("%w: expiry %v is not after the epoch", ErrInvalid, at)
		}
		return ms, nil
	}
	return 0, nil
}

func (c Condition) proto() (shoalpb.Condition, error) {
	switch c {
	case Unconditional:
		return shoalpb.Condition_CONDITION_NONE, nil
	case IfNotExists:
		return shoalpb.Condition_CONDITION_NOT_EXISTS, nil
	case IfExists:
		return shoalpb.Condition_CONDITION_EXISTS, nil
	}
	return 0, fmt.Errorf("%w: unknown condition %d", ErrInvalid, c)
}
