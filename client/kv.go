package client

import (
	"context"
	"fmt"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/internal/keys"
)

// PutOption qualifies a Put.
type PutOption func(*shoalpb.PutRequest)

// WithTTL makes the key expire after d (rounded up to a millisecond). d
// must be positive: otherwise the Put fails with ErrInvalid, as Redis
// refuses SET EX 0.
func WithTTL(d time.Duration) PutOption {
	return func(r *shoalpb.PutRequest) {
		r.TtlMs = -1 // refused by the node
		if d > 0 {
			r.TtlMs = (d.Nanoseconds() + 999999) / 1e6
		}
	}
}

// WithExpireAt makes the key expire at t, which must be after the Unix
// epoch (otherwise the Put fails with ErrInvalid). A time already past
// writes nothing that stays: the key expires at once.
func WithExpireAt(t time.Time) PutOption {
	return func(r *shoalpb.PutRequest) {
		r.ExpireAtMs = -1 // refused by the node; 0 would mean no expiry
		if ms := t.UnixMilli(); ms > 0 {
			r.ExpireAtMs = ms
		}
	}
}

// IfNotExists writes only if the key does not exist (SET NX).
func IfNotExists() PutOption {
	return func(r *shoalpb.PutRequest) { r.Condition = shoalpb.Condition_CONDITION_NOT_EXISTS }
}

// IfExists writes only if the key exists (SET XX).
func IfExists() PutOption {
	return func(r *shoalpb.PutRequest) { r.Condition = shoalpb.Condition_CONDITION_EXISTS }
}

// KeepTTL keeps the key's current expiry (SET KEEPTTL).
func KeepTTL() PutOption { return func(r *shoalpb.PutRequest) { r.KeepTtl = true } }

// Item is a key's value as read.
type Item struct {
	Value []byte
	// ExpireAt is zero for a key without a TTL.
	ExpireAt time.Time
}

// Get returns key's value and whether it exists.
func (c *Client) Get(ctx context.Context, key []byte) (Item, bool, error) {
	var resp *shoalpb.GetResponse
	err := c.do(ctx, keys.Slot(key), false, len(key), func(ctx context.Context, kc shoalpb.KVClient, h *shoalpb.RequestHeader) (*shoalpb.ResponseHeader, error) {
		var err error
		resp, err = kc.Get(ctx, &shoalpb.GetRequest{Header: h, Key: key})
		return resp.GetHeader(), err
	})
	if err != nil {
		return Item{}, false, fmt.Errorf("shoal: get %q: %w", key, err)
	}
	it := Item{Value: resp.Value}
	if resp.ExpireAtMs != 0 {
		it.ExpireAt = time.UnixMilli(resp.ExpireAtMs)
	}
	return it, resp.Found, nil
}

// Put sets key to value and reports whether it did (a condition may stop
// it).
func (c *Client) Put(ctx context.Context, key, value []byte, opts ...PutOption) (bool, error) {
	req := &shoalpb.PutRequest{Key: key, Value: value}
	for _, o := range opts {
		o(req)
	}
	var resp *shoalpb.PutResponse
	err := c.do(ctx, keys.Slot(key), true, len(key)+len(value), func(ctx context.Context, kc shoalpb.KVClient, h *shoalpb.RequestHeader) (*shoalpb.ResponseHeader, error) {
		req.Header = h
		var err error
		resp, err = kc.Put(ctx, req)
		return resp.GetHeader(), err
	})
	if err != nil {
		return false, fmt.Errorf("shoal: put %q: %w", key, err)
	}
	return resp.Applied, nil
}

// Delete deletes key and reports whether it existed.
func (c *Client) Delete(ctx context.Context, key []byte) (bool, error) {
	var resp *shoalpb.DeleteResponse
	err := c.do(ctx, keys.Slot(key), true, len(key), func(ctx context.Context, kc shoalpb.KVClient, h *shoalpb.RequestHeader) (*shoalpb.ResponseHeader, error) {
		var err error
		resp, err = kc.Delete(ctx, &shoalpb.DeleteRequest{Header: h, Key: key})
		return resp.GetHeader(), err
	})
	if err != nil {
		return false, fmt.Errorf("shoal: delete %q: %w", key, err)
	}
	return resp.Found, nil
}

// CompareAndSet sets key to value if it currently holds expected (nil:
// if it does not exist), and reports whether it did.
func (c *Client) CompareAndSet(ctx context.Context, key, expected, value []byte) (bool, error) {
	req := &shoalpb.CompareAndSetRequest{Key: key, Expected: expected, ExpectAbsent: expected == nil, Value: value}
	var resp *shoalpb.CompareAndSetResponse
	err := c.do(ctx, keys.Slot(key), true, len(key)+len(expected)+len(value), func(ctx context.Context, kc shoalpb.KVClient, h *shoalpb.RequestHeader) (*shoalpb.ResponseHeader, error) {
		req.Header = h
		var err error
		resp, err = kc.CompareAndSet(ctx, req)
		return resp.GetHeader(), err
	})
	if err != nil {
		return false, fmt.Errorf("shoal: compare-and-set %q: %w", key, err)
	}
	return resp.Swapped, nil
}

// Incr adds delta to the integer at key (0 if absent) and returns the sum.
func (c *Client) Incr(ctx context.Context, key []byte, delta int64) (int64, error) {
	var resp *shoalpb.IncrResponse
	err := c.do(ctx, keys.Slot(key), true, len(key), func(ctx context.Context, kc shoalpb.KVClient, h *shoalpb.RequestHeader) (*shoalpb.ResponseHeader, error) {
		var err error
		resp, err = kc.Incr(ctx, &shoalpb.IncrRequest{Header: h, Key: key, Delta: delta})
		return resp.GetHeader(), err
	})
	if err != nil {
		return 0, fmt.Errorf("shoal: incr %q: %w", key, err)
	}
	return resp.Value, nil
}

// Op is one operation of a Batch.
type Op = shoalpb.KVOp

// PutOp sets key to value in a batch.
func PutOp(key, value []byte) *Op {
	return &Op{Op: &shoalpb.KVOp_Put{Put: &shoalpb.PutOp{Key: key, Value: value}}}
}

// DeleteOp deletes key in a batch.
func DeleteOp(key []byte) *Op {
	return &Op{Op: &shoalpb.KVOp_Delete{Delete: &shoalpb.DeleteOp{Key: key}}}
}

// IncrOp adds delta to the integer at key in a batch.
func IncrOp(key []byte, delta int64) *Op {
	return &Op{Op: &shoalpb.KVOp_IncrBy{IncrBy: &shoalpb.IncrByOp{Key: key, Delta: delta}}}
}

// Batch applies ops atomically: all of them, or none if one fails. Their
// keys must be in one shard (ErrCrossShard): give related keys the same
// hash tag, as in "{user42}:name" and "{user42}:email".
func (c *Client) Batch(ctx context.Context, ops ...*Op) ([]*shoalpb.KVOpResult, error) {
	if len(ops) == 0 {
		return nil, nil
	}
	key, err := opKey(ops[0])
	if err != nil {
		return nil, err
	}
	size := 0
	for _, op := range ops {
		size += proto.Size(op)
	}
	var resp *shoalpb.BatchResponse
	err = c.do(ctx, keys.Slot(key), true, size, func(ctx context.Context, kc shoalpb.KVClient, h *shoalpb.RequestHeader) (*shoalpb.ResponseHeader, error) {
		var err error
		resp, err = kc.Batch(ctx, &shoalpb.BatchRequest{Header: h, Ops: ops})
		return resp.GetHeader(), err
	})
	if err != nil {
		return nil, fmt.Errorf("shoal: batch of %d: %w", len(ops), err)
	}
	return resp.Results, nil
}

func opKey(op *Op) ([]byte, error) {
	switch o := op.GetOp().(type) {
	case *shoalpb.KVOp_Put:
		return o.Put.Key, nil
	case *shoalpb.KVOp_Delete:
		return o.Delete.Key, nil
	case *shoalpb.KVOp_CompareAndSet:
		return o.CompareAndSet.Key, nil
	case *shoalpb.KVOp_IncrBy:
		return o.IncrBy.Key, nil
	case *shoalpb.KVOp_Append:
		return o.Append.Key, nil
	case *shoalpb.KVOp_Expire:
		return o.Expire.Key, nil
	}
	return nil, fmt.Errorf("%w: op %T", ErrInvalid, op.GetOp())
}

// ScanOptions bound a Scan.
type ScanOptions struct {
	// StartSlot and EndSlot restrict the scan to slots [StartSlot, EndSlot).
	// Default: every slot.
	StartSlot, EndSlot uint32
	// PageSize is how many keys one request brings. Default 1000.
	PageSize uint32
	// KeysOnly leaves values out.
	KeysOnly bool
}

// Scanner walks the keys of a Scan, in slot order then key order within a
// slot. Keys written while it runs may or may not be seen.
type Scanner struct {
	c      *Client
	ctx    context.Context
	opts   ScanOptions
	shards []*shoalpb.ShardDescriptor
	cursor []byte
	keys   [][]byte
	values [][]byte
	i      int
	err    error
}

// Scan returns a Scanner over the cluster's keys.
func (c *Client) Scan(ctx context.Context, opts ScanOptions) *Scanner {
	if opts.EndSlot == 0 || opts.EndSlot > keys.SlotCount {
		opts.EndSlot = keys.SlotCount
	}
	if opts.PageSize == 0 {
		opts.PageSize = 1000
	}
	return &Scanner{c: c, ctx: ctx, opts: opts, shards: c.routes.shardsIn(opts.StartSlot, opts.EndSlot), i: -1}
}

// Next advances to the next key; it returns false at the end or on an
// error (see Err).
func (s *Scanner) Next() bool {
	for {
		if s.i+1 < len(s.keys) {
			s.i++
			return true
		}
		if s.err != nil || len(s.shards) == 0 {
			return false
		}
		s.fetch()
	}
}

func (s *Scanner) fetch() {
	d := s.shards[0]
	start, end := max(d.StartSlot, s.opts.StartSlot), min(d.EndSlot, s.opts.EndSlot)
	var resp *shoalpb.ScanResponse
	err := s.c.do(s.ctx, uint16(start), false, 0, func(ctx context.Context, kc shoalpb.KVClient, h *shoalpb.RequestHeader) (*shoalpb.ResponseHeader, error) {
		var err error
		resp, err = kc.Scan(ctx, &shoalpb.ScanRequest{Header: h, StartSlot: start, EndSlot: end, Cursor: s.cursor,
			Limit: s.opts.PageSize, KeysOnly: s.opts.KeysOnly})
		return resp.GetHeader(), err
	})
	if err != nil {
		s.err = fmt.Errorf("shoal: scan shard %d: %w", d.ShardId, err)
		return
	}
	s.keys, s.values, s.i = resp.Keys, resp.Values, -1
	s.cursor = resp.Cursor
	if len(s.cursor) == 0 {
		s.shards = s.shards[1:]
	}
}

// Key returns the current key.
func (s *Scanner) Key() []byte { return s.keys[s.i] }

// Value returns the current value (nil with KeysOnly).
func (s *Scanner) Value() []byte {
	if s.i < len(s.values) {
		return s.values[s.i]
	}
	return nil
}

// Err returns the error that ended the scan, if any.
func (s *Scanner) Err() error { return s.err }
