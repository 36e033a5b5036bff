package node

import (
	"context"
	"errors"
	"fmt"
	"math"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/internal/keys"
	"github.com/shoaldb/shoal/internal/kv"
	"github.com/shoaldb/shoal/internal/metrics"
	"github.com/shoaldb/shoal/internal/raftstore"
	"github.com/shoaldb/shoal/internal/transport"
)

// maxHops bounds how many times a request is forwarded between nodes.
const maxHops = 2

// kvService serves the public KV API. It executes what this node can (writes
// where it leads, reads where it holds a replica) and forwards the rest to
// the shard's leader, unless the request asks to be answered directly.
type kvService struct {
	shoalpb.UnimplementedKVServer
	n *Node
	// peers are the connections to other nodes, for forwarding.
	peers transport.Conns
	// metrics records the commands of BatchCommands streams as their
	// unary methods (which the server's interceptor records); nil: none.
	metrics *metrics.GRPC
	// workers run the commands of BatchCommands streams, at most
	// streamCommands of a stream at once (maxStreamCommands).
	workers        *commandWorkers
	streamCommands int
}

// target is where a request for key goes.
type target struct {
	shard uint64
	// forward is the client of the node to forward to; nil (and no
	// error): this node executes it. release ends the use of its
	// connection (transport.Conns.Acquire).
	forward shoalpb.KVClient
	release func()
	// electing, with a NO_LEADER error, says the shard's replica here
	// serves the slot and has no leader yet: serve may wait for one.
	electing bool
}

// route decides where a request for a key in slot is served. write says
// whether it needs the leader; reads are served by any replica.
func (s *kvService) route(h *shoalpb.RequestHeader, slot uint16, write bool) (target, error) {
	if c := h.GetClusterId(); c != "" && c != s.n.cfg.ClusterID {
		return target{}, &routeError{detail: &shoalpb.ErrorDetail{Code: shoalpb.ErrorCode_ERROR_CODE_WRONG_CLUSTER},
			msg: fmt.Sprintf("node %d is in cluster %q, not %q", s.n.cfg.NodeID, s.n.cfg.ClusterID, c)}
	}
	store := s.n.store
	shard, err := store.ShardBySlot(slot)
	if err == nil {
		if h.GetShardId() != 0 && h.GetShardId() != shard {
			st, _ := store.Status(shard)
			return target{}, &routeError{detail: &shoalpb.ErrorDetail{
				Code: shoalpb.ErrorCode_ERROR_CODE_EPOCH_MISMATCH, ShardId: shard, Shard: st.Descriptor,
			}, msg: fmt.Sprintf("slot %d belongs to shard %d, not %d", slot, shard, h.GetShardId())}
		}
		st, err := store.Status(shard)
		if err == nil && !st.Removed {
			if (!write && !h.GetLeaderOnly()) || st.Role == raftstore.RoleLeader {
				return target{shard: shard}, nil
			}
			if st.LeaderNode == 0 {
				// This node's replica serves the slot and will learn the
				// next leader: serve may wait for it.
				return target{shard: shard, electing: true}, noLeader(shard)
			}
			return s.toLeader(h, shard, st.LeaderNode)
		}
	}
	// No replica here: the route table names the leader (master mode).
	shard, leader := s.n.routes.leaderOf(slot)
	// A table naming this node is behind: it led the shard and no longer
	// has it. Naming itself (NOT_LEADER) would send the client straight
	// back here.
	stale := leader == s.n.cfg.NodeID
	if stale {
		leader = 0
	}
	if shard == 0 || stale || h.GetDirect() || h.GetHops() >= maxHops {
		return target{}, &routeError{detail: &shoalpb.ErrorDetail{
			Code: shoalpb.ErrorCode_ERROR_CODE_SHARD_NOT_HERE, ShardId: shard, LeaderId: leader, LeaderAddr: s.addrOf(leader),
		}, msg: fmt.Sprintf("node %d has no replica of slot %d", s.n.cfg.NodeID, slot)}
	}
	return s.toLeader(h, shard, leader)
}

// toLeader forwards to the leader node, or answers NOT_LEADER / NO_LEADER
// when asked to be direct, when the leader is unknown, or after maxHops.
func (s *kvService) toLeader(h *shoalpb.RequestHeader, shard, leader uint64) (target, error) {
	if leader == 0 {
		return target{}, noLeader(shard)
	}
	addr := s.addrOf(leader)
	if h.GetDirect() || h.GetHops() >= maxHops || addr == "" || leader == s.n.cfg.NodeID {
		return target{}, &routeError{detail: &shoalpb.ErrorDetail{
			Code: shoalpb.ErrorCode_ERROR_CODE_NOT_LEADER, ShardId: shard, LeaderId: leader, LeaderAddr: addr,
		}, msg: fmt.Sprintf("node %d does not lead shard %d; node %d does", s.n.cfg.NodeID, shard, leader)}
	}
	// The leader checks the cluster as this node would: a request that
	// named none names this node's (the Redis front end's, say), so that
	// an address reused by another cluster's node is refused there too.
	if h.ClusterId == "" {
		h.ClusterId = s.n.cfg.ClusterID
	}
	conn, release, err := s.peers.Acquire(addr)
	if err != nil {
		return target{}, &routeError{detail: &shoalpb.ErrorDetail{Code: shoalpb.ErrorCode_ERROR_CODE_UNAVAILABLE, ShardId: shard},
			msg: fmt.Sprintf("forwarding to node %d, shard %d's leader: %v", leader, shard, err)}
	}
	h.Hops++
	return target{shard: shard, forward: shoalpb.NewKVClient(conn), release: release}, nil
}

// forwardError gives a forwarded request's failure without the leader's
// detail (the leader did not answer) a detail: a timeout or unavailable,
// ambiguous only for a write the leader may have received (not when the
// connection could not be made). An answer with a detail passes as it is,
// but WRONG_CLUSTER, which is about this node's table, becomes
// UNAVAILABLE.
func forwardError(err error, write bool) error {
	if err == nil {
		return nil
	}
	if d := shoalpb.DetailOf(err); d != nil {
		if d.Code != shoalpb.ErrorCode_ERROR_CODE_WRONG_CLUSTER {
			return err
		}
		// The leader's address is another cluster's node now: this node's
		// table is behind, not the caller's. It did nothing.
		return shoalpb.StatusError(&shoalpb.ErrorDetail{Code: shoalpb.ErrorCode_ERROR_CODE_UNAVAILABLE},
			fmt.Sprintf("forwarding to the leader: %v", err))
	}
	d := &shoalpb.ErrorDetail{Code: shoalpb.ErrorCode_ERROR_CODE_UNAVAILABLE,
		// ResourceExhausted: the answer was larger than the connection takes.
		Ambiguous: write && (shoalpb.MayBeServed(err) || status.Code(err) == codes.ResourceExhausted)}
	if status.Code(err) == codes.DeadlineExceeded {
		d.Code = shoalpb.ErrorCode_ERROR_CODE_TIMEOUT
	}
	return shoalpb.StatusError(d, fmt.Sprintf("forwarding to the leader: %v", err))
}

func noLeader(shard uint64) error {
	return &routeError{detail: &shoalpb.ErrorDetail{Code: shoalpb.ErrorCode_ERROR_CODE_NO_LEADER, ShardId: shard},
		msg: fmt.Sprintf("shard %d has no leader", shard)}
}

func (s *kvService) addrOf(node uint64) string {
	if node == 0 {
		return ""
	}
	if s.n.cfg.Resolve != nil && s.n.masters == nil {
		a, _ := s.n.cfg.Resolve(node)
		return a
	}
	a, _ := s.n.routes.resolve(node)
	return a
}

// routeError is a routing answer with its wire detail.
type routeError struct {
	detail *shoalpb.ErrorDetail
	msg    string
}

func (e *routeError) Error() string { return e.msg }

// header fills the response header: this node, the leader it knows, and
// the current descriptor when the client's is older.
func (s *kvService) header(h *shoalpb.RequestHeader, shard uint64) *shoalpb.ResponseHeader {
	rh := &shoalpb.ResponseHeader{NodeId: s.n.cfg.NodeID}
	if st, err := s.n.store.Status(shard); err == nil {
		rh.LeaderNodeId = st.LeaderNode
		if h.GetEpoch() < st.Descriptor.GetEpoch() {
			rh.Shard = st.Descriptor
		}
	}
	return rh
}

func session(h *shoalpb.RequestHeader) *kv.Session {
	if s := h.GetSession(); s != nil && s.Id != 0 {
		return &kv.Session{ID: s.Id, Seq: s.Seq, AckedBelow: s.AckedBelow}
	}
	return nil
}

// toStatus maps the errors of routing, the store and the key-value layer to
// wire errors: the node's half of the one table in shoalpb.
func (s *kvService) toStatus(err error) error {
	if err == nil {
		return nil
	}
	var re *routeError
	if errors.As(err, &re) {
		return shoalpb.StatusError(re.detail, re.msg)
	}
	d := &shoalpb.ErrorDetail{Ambiguous: errors.Is(err, raftstore.ErrAmbiguous)}
	var nl *raftstore.NotLeaderError
	var em *raftstore.EpochMismatchError
	switch {
	case errors.As(err, &em):
		d.Code, d.ShardId, d.Shard = shoalpb.ErrorCode_ERROR_CODE_EPOCH_MISMATCH, em.Current.GetShardId(), em.Current
	case errors.Is(err, raftstore.ErrInvalidChange):
		d.Code = shoalpb.ErrorCode_ERROR_CODE_INVALID
	case errors.Is(err, raftstore.ErrNotCaughtUp), errors.Is(err, raftstore.ErrTransferFailed):
		d.Code = shoalpb.ErrorCode_ERROR_CODE_TIMEOUT
	case errors.As(err, &nl):
		d.Code, d.ShardId, d.LeaderId, d.LeaderAddr = shoalpb.ErrorCode_ERROR_CODE_NOT_LEADER, nl.Shard, nl.LeaderNode, s.addrOf(nl.LeaderNode)
	case errors.Is(err, raftstore.ErrNoLeader):
		d.Code = shoalpb.ErrorCode_ERROR_CODE_NO_LEADER
	case errors.Is(err, raftstore.ErrLeadershipLost):
		d.Code = shoalpb.ErrorCode_ERROR_CODE_NOT_LEADER
	case errors.Is(err, raftstore.ErrShardNotFound), errors.Is(err, raftstore.ErrShardRemoved):
		d.Code = shoalpb.ErrorCode_ERROR_CODE_SHARD_NOT_HERE
	case errors.Is(err, raftstore.ErrOverloaded):
		d.Code = shoalpb.ErrorCode_ERROR_CODE_OVERLOADED
	case errors.Is(err, raftstore.ErrTimeout), errors.Is(err, context.DeadlineExceeded):
		d.Code = shoalpb.ErrorCode_ERROR_CODE_TIMEOUT
	case errors.Is(err, raftstore.ErrStopped), errors.Is(err, context.Canceled):
		d.Code = shoalpb.ErrorCode_ERROR_CODE_UNAVAILABLE
	case errors.Is(err, raftstore.ErrConfChangeInProgress):
		d.Code = shoalpb.ErrorCode_ERROR_CODE_OVERLOADED
	case errors.Is(err, kv.ErrNotInteger):
		d.Code = shoalpb.ErrorCode_ERROR_CODE_NOT_INTEGER
	case errors.Is(err, kv.ErrOverflow):
		d.Code = shoalpb.ErrorCode_ERROR_CODE_OVERFLOW
	case errors.Is(err, kv.ErrTooLarge), errors.Is(err, raftstore.ErrEntryTooLarge):
		d.Code = shoalpb.ErrorCode_ERROR_CODE_TOO_LARGE
	case errors.Is(err, kv.ErrDiskFull):
		d.Code = shoalpb.ErrorCode_ERROR_CODE_DISK_FULL
	case errors.Is(err, kv.ErrCrossShard):
		d.Code = shoalpb.ErrorCode_ERROR_CODE_CROSS_SHARD
	case errors.Is(err, kv.ErrStaleSequence):
		d.Code = shoalpb.ErrorCode_ERROR_CODE_STALE_SEQUENCE
	case errors.Is(err, kv.ErrInvalid):
		d.Code = shoalpb.ErrorCode_ERROR_CODE_INVALID
	default:
		if shoalpb.DetailOf(err) != nil {
			return err // a forwarded answer: pass it on as it is
		}
		d.Code = shoalpb.ErrorCode_ERROR_CODE_UNAVAILABLE
		d.Ambiguous = true
	}
	return shoalpb.StatusError(d, err.Error())
}

// ttl turns a request's relative TTL into a duration, or an invalid
// argument beyond what a duration holds (about 292 years; the Redis front
// end sends longer TTLs as absolute times).
func ttl(ms int64) (time.Duration, error) {
	if ms > math.MaxInt64/int64(time.Millisecond) {
		return 0, fmt.Errorf("%w: TTL of %d ms is too long; give an absolute expiry", kv.ErrInvalid, ms)
	}
	return time.Duration(ms) * time.Millisecond, nil
}

func expireAt(ms int64) time.Time {
	if ms == 0 {
		return time.Time{}
	}
	return time.UnixMilli(ms)
}

func readOptions(h *shoalpb.RequestHeader) kv.ReadOptions {
	return kv.ReadOptions{Stale: h.GetConsistency() == shoalpb.ReadConsistency_READ_CONSISTENCY_STALE}
}

// serve runs one request: routed, then forwarded to the shard's leader or
// run here by local, which returns the response for the shard it ran on.
// A request that finds its shard electing a leader (NO_LEADER, which is
// never an ambiguous failure: nothing was proposed) waits for the election
// to end, up to Config.LeaderWait from its first such answer (and a third
// of the time left before its deadline, awaitLeader), and is
// routed again, so that a short election costs a client time rather than
// an error (Redis clients give up on -TRYAGAIN after a few quick retries).
func serve[R any](ctx context.Context, s *kvService, h *shoalpb.RequestHeader, slot uint16, write bool,
	forward func(c shoalpb.KVClient) (R, error), local func(shard uint64) (R, error)) (R, error) {
	var until time.Time
	for {
		var resp R
		t, err := s.route(h, slot, write)
		switch {
		case err == nil && t.forward != nil:
			func() {
				defer t.release()
				resp, err = forward(t.forward)
			}()
			return resp, s.toStatus(forwardError(err, write))
		case err == nil:
			if resp, err = local(t.shard); err == nil || !electing(err) {
				return resp, s.toStatus(err)
			}
		case !t.electing:
			// A NO_LEADER from the route table (no replica here serves the
			// slot) is not waited for: a replica here that does not serve
			// it yet (an empty one, waiting for its snapshot) may keep
			// naming a leader that is gone, which would end every wait at
			// once.
			return resp, s.toStatus(err)
		}
		if !s.awaitLeader(ctx, t.shard, &until) {
			return resp, s.toStatus(err)
		}
	}
}

// electing reports whether a request failed only because its shard's
// leadership moved before the request was proposed (or read): no leader
// known, or a leader that stepped down with the request never in its log.
// Routed again once a leader is known, it goes to the new one; answered
// at once, the client would be told of no leader, or of a stale one from
// the route table.
func electing(err error) bool {
	return errors.Is(err, raftstore.ErrNoLeader) ||
		errors.Is(err, raftstore.ErrLeadershipLost) && !errors.Is(err, raftstore.ErrAmbiguous)
}

// awaitLeader waits until this node's replica of shard knows a leader,
// until *until, set on the first call of a request to LeaderWait from then
// or, with ctx's deadline, a third of the time left then (the same end for
// every later wait of the request): the rest is
// left to run the request and answer before the caller gives up (the Go
// client's attempt timeout would take a late answer for a lost node, and
// a write's for an ambiguous one). It reports whether a leader is known,
// so the request can be routed again; false once *until has passed or ctx
// has ended, so a request never loops past them.
func (s *kvService) awaitLeader(ctx context.Context, shard uint64, until *time.Time) bool {
	if s.n.leaderWait <= 0 || ctx.Err() != nil {
		return false
	}
	now := time.Now()
	if until.IsZero() {
		// Fixed at the first wait, however many follow (elections that
		// flap): a third of the time left then at most, so that the
		// answer comes in time.
		*until = now.Add(s.n.leaderWait)
		if d, ok := ctx.Deadline(); ok {
			if third := now.Add(d.Sub(now) / 3); third.Before(*until) {
				*until = third
			}
		}
	}
	end := *until
	if !now.Before(end) {
		return false
	}
	wctx, cancel := context.WithDeadline(ctx, end)
	defer cancel()
	st, err := s.n.store.WaitLeader(wctx, shard)
	return err == nil && st.LeaderNode != 0 && !st.Removed
}

// Get implements shoalpb.KVServer.
func (s *kvService) Get(ctx context.Context, req *shoalpb.GetRequest) (*shoalpb.GetResponse, error) {
	h := ensureHeader(&req.Header)
	return serve(ctx, s, h, keys.Slot(req.Key), false,
		func(c shoalpb.KVClient) (*shoalpb.GetResponse, error) { return c.Get(ctx, req) },
		func(shard uint64) (*shoalpb.GetResponse, error) {
			v, found, err := s.n.kv.Get(ctx, req.Key, readOptions(h))
			if err != nil {
				return nil, err
			}
			resp := &shoalpb.GetResponse{Header: s.header(h, shard), Found: found, Value: v.Data}
			if !v.ExpireAt.IsZero() {
				resp.ExpireAtMs = v.ExpireAt.UnixMilli()
			}
			return resp, nil
		})
}

// Put implements shoalpb.KVServer.
func (s *kvService) Put(ctx context.Context, req *shoalpb.PutRequest) (*shoalpb.PutResponse, error) {
	h := ensureHeader(&req.Header)
	return serve(ctx, s, h, keys.Slot(req.Key), true,
		func(c shoalpb.KVClient) (*shoalpb.PutResponse, error) { return c.Put(ctx, req) },
		func(shard uint64) (*shoalpb.PutResponse, error) {
			var cond kv.Condition
			switch req.Condition {
			case shoalpb.Condition_CONDITION_NONE:
			case shoalpb.Condition_CONDITION_NOT_EXISTS:
				cond = kv.IfNotExists
			case shoalpb.Condition_CONDITION_EXISTS:
				cond = kv.IfExists
			default:
				// One this build does not know (a newer client's) is not
				// taken for none: that would write unconditionally.
				return nil, fmt.Errorf("%w: unknown condition %d", kv.ErrInvalid, req.Condition)
			}
			d, err := ttl(req.TtlMs)
			if err != nil {
				return nil, err
			}
			r, err := s.n.kv.Put(ctx, req.Key, req.Value, kv.PutOptions{
				Condition: cond, TTL: d, ExpireAt: expireAt(req.ExpireAtMs), KeepTTL: req.KeepTtl,
				ReturnOld: req.ReturnOld, Session: session(h),
			})
			if err != nil {
				return nil, err
			}
			return &shoalpb.PutResponse{Header: s.header(h, shard), Applied: r.Applied, Found: r.Found, Old: r.Old}, nil
		})
}

// Delete implements shoalpb.KVServer.
func (s *kvService) Delete(ctx context.Context, req *shoalpb.DeleteRequest) (*shoalpb.DeleteResponse, error) {
	h := ensureHeader(&req.Header)
	return serve(ctx, s, h, keys.Slot(req.Key), true,
		func(c shoalpb.KVClient) (*shoalpb.DeleteResponse, error) { return c.Delete(ctx, req) },
		func(shard uint64) (*shoalpb.DeleteResponse, error) {
			r, err := s.n.kv.Delete(ctx, req.Key, kv.DeleteOptions{ReturnOld: req.ReturnOld, Session: session(h)})
			if err != nil {
				return nil, err
			}
			return &shoalpb.DeleteResponse{Header: s.header(h, shard), Found: r.Found, Old: r.Old}, nil
		})
}

// CompareAndSet implements shoalpb.KVServer.
func (s *kvService) CompareAndSet(ctx context.Context, req *shoalpb.CompareAndSetRequest) (*shoalpb.CompareAndSetResponse, error) {
	h := ensureHeader(&req.Header)
	return serve(ctx, s, h, keys.Slot(req.Key), true,
		func(c shoalpb.KVClient) (*shoalpb.CompareAndSetResponse, error) { return c.CompareAndSet(ctx, req) },
		func(shard uint64) (*shoalpb.CompareAndSetResponse, error) {
			expected := req.Expected
			if req.ExpectAbsent {
				if len(expected) > 0 {
					return nil, fmt.Errorf("%w: expect_absent with an expected value", kv.ErrInvalid)
				}
				expected = nil
			} else if expected == nil {
				expected = []byte{}
			}
			d, err := ttl(req.TtlMs)
			if err != nil {
				return nil, err
			}
			r, err := s.n.kv.CompareAndSet(ctx, req.Key, expected, req.Value, kv.CASOptions{TTL: d, Session: session(h)})
			if err != nil {
				return nil, err
			}
			return &shoalpb.CompareAndSetResponse{Header: s.header(h, shard), Swapped: r.Swapped, Found: r.Found, Current: r.Current}, nil
		})
}

// Incr implements shoalpb.KVServer.
func (s *kvService) Incr(ctx context.Context, req *shoalpb.IncrRequest) (*shoalpb.IncrResponse, error) {
	h := ensureHeader(&req.Header)
	return serve(ctx, s, h, keys.Slot(req.Key), true,
		func(c shoalpb.KVClient) (*shoalpb.IncrResponse, error) { return c.Incr(ctx, req) },
		func(shard uint64) (*shoalpb.IncrResponse, error) {
			v, err := s.n.kv.IncrBy(ctx, req.Key, req.Delta, kv.WriteOptions{Session: session(h)})
			if err != nil {
				return nil, err
			}
			return &shoalpb.IncrResponse{Header: s.header(h, shard), Value: v}, nil
		})
}

// Batch implements shoalpb.KVServer.
func (s *kvService) Batch(ctx context.Context, req *shoalpb.BatchRequest) (*shoalpb.BatchResponse, error) {
	h := ensureHeader(&req.Header)
	if len(req.Ops) == 0 {
		return nil, s.toStatus(fmt.Errorf("%w: empty batch", kv.ErrInvalid))
	}
	key, err := opKey(req.Ops[0])
	if err != nil {
		return nil, s.toStatus(err)
	}
	return serve(ctx, s, h, keys.Slot(key), true,
		func(c shoalpb.KVClient) (*shoalpb.BatchResponse, error) { return c.Batch(ctx, req) },
		func(shard uint64) (*shoalpb.BatchResponse, error) {
			res, err := s.n.kv.Exec(ctx, req.Ops, kv.WriteOptions{Session: session(h)})
			if err != nil {
				return nil, err
			}
			return &shoalpb.BatchResponse{Header: s.header(h, shard), Results: res.Results}, nil
		})
}

func opKey(op *shoalpb.KVOp) ([]byte, error) {
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
	return nil, fmt.Errorf("%w: op %T not allowed in a batch", kv.ErrInvalid, op.GetOp())
}

// Scan implements shoalpb.KVServer.
func (s *kvService) Scan(ctx context.Context, req *shoalpb.ScanRequest) (*shoalpb.ScanResponse, error) {
	h := ensureHeader(&req.Header)
	if req.StartSlot >= req.EndSlot || req.EndSlot > keys.SlotCount {
		return nil, s.toStatus(fmt.Errorf("%w: slots [%d, %d)", kv.ErrInvalid, req.StartSlot, req.EndSlot))
	}
	return serve(ctx, s, h, uint16(req.StartSlot), false,
		func(c shoalpb.KVClient) (*shoalpb.ScanResponse, error) { return c.Scan(ctx, req) },
		func(shard uint64) (*shoalpb.ScanResponse, error) {
			res, err := s.n.kv.Scan(ctx, shard, req.StartSlot, req.EndSlot, req.Cursor, int(req.Limit), req.KeysOnly, readOptions(h))
			if err != nil {
				return nil, err
			}
			return &shoalpb.ScanResponse{Header: s.header(h, shard), Keys: res.Keys, Values: res.Values, Cursor: res.Cursor}, nil
		})
}

func ensureHeader(h **shoalpb.RequestHeader) *shoalpb.RequestHeader {
	if *h == nil {
		*h = &shoalpb.RequestHeader{}
	}
	return *h
}

// MultiGet implements shoalpb.KVServer.
func (s *kvService) MultiGet(ctx context.Context, req *shoalpb.MultiGetRequest) (*shoalpb.MultiGetResponse, error) {
	h := ensureHeader(&req.Header)
	if len(req.Keys) == 0 {
		return &shoalpb.MultiGetResponse{Header: &shoalpb.ResponseHeader{NodeId: s.n.cfg.NodeID}}, nil
	}
	// Keys in other shards than the first's fail where the keys are read.
	return serve(ctx, s, h, keys.Slot(req.Keys[0]), false,
		func(c shoalpb.KVClient) (*shoalpb.MultiGetResponse, error) { return c.MultiGet(ctx, req) },
		func(shard uint64) (*shoalpb.MultiGetResponse, error) {
			o := readOptions(h)
			o.ExistsOnly = req.ExistsOnly
			vals, found, err := s.n.kv.MultiGet(ctx, req.Keys, o)
			if err != nil {
				return nil, err
			}
			resp := &shoalpb.MultiGetResponse{Header: s.header(h, shard), Found: found}
			for _, v := range vals {
				resp.Values = append(resp.Values, v.Data)
				at := int64(0)
				if !v.ExpireAt.IsZero() {
					at = v.ExpireAt.UnixMilli()
				}
				resp.ExpireAtMs = append(resp.ExpireAtMs, at)
			}
			return resp, nil
		})
}
