package raftstore

import (
	"context"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"google.golang.org/protobuf/proto"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/internal/keys"
	"github.com/shoaldb/shoal/internal/storage"
)

// Snapshots move a whole replica: the shard's key-value data, its expiry
// index and its client sessions, as of an applied index.
//
// Sending: when Raft asks for a snapshot, the replica answers with metadata
// only (applied index, term, configuration, descriptor). When Raft then
// emits the MsgSnap, the worker opens a Pebble snapshot at once (nothing has
// been applied since the metadata was taken) and a goroutine streams the
// shard's key ranges in chunks over the transport's snapshot stream,
// throttled and bounded in number. Raft hears the outcome through
// ReportSnapshot.
//
// Receiving: chunks are written into SST files in a directory of their own,
// each file starting with range deletions that clear what the replica had.
// Only a complete, checksummed stream is handed to Raft; anything else
// deletes the directory. When Raft restores the snapshot, the files are
// ingested in one atomic, durable step: data, sessions, applied and
// truncated state and the descriptor appear together, and the HardState is
// kept (it carries the vote).

var crcTable = crc32.MakeTable(crc32.Castagnoli)

// snapshotDir is where received snapshots are built, under the engine's
// directory.
const snapshotDir = "snapshots"

// incomingSnapshot is a received snapshot whose files wait for Raft.
type incomingSnapshot struct {
	msg   *raftpb.Message
	data  *shoalpb.SnapshotData
	dir   string
	paths []string
}

func (in *incomingSnapshot) index() uint64 { return in.msg.GetSnapshot().GetMetadata().GetIndex() }

// snapReport is the outcome of sending a snapshot to replica to.
type snapReport struct {
	to     uint64
	failed bool
}

// SnapshotProgress describes a snapshot being sent or received by this node.
type SnapshotProgress struct {
	ID       string
	Shard    uint64
	FromNode uint64
	ToNode   uint64
	// Sending is true on the sender, false on the receiver.
	Sending bool
	// Bytes of keys and values so far, of TotalBytes in all (0 until the
	// sender has counted them).
	Bytes, TotalBytes int64
	// Queued is true on the sender while the snapshot waits for one of
	// Options.MaxSnapshotSends slots; Started is when it was queued until
	// it gets one, then when it started streaming.
	Queued  bool
	Started time.Time
}

type snapshotTracker struct {
	mu     sync.Mutex
	active map[string]*trackedSnapshot
	sent   atomic.Uint64
	recv   atomic.Uint64
	failed atomic.Uint64
}

type trackedSnapshot struct {
	mu sync.Mutex // guards SnapshotProgress.TotalBytes, Queued and Started
	SnapshotProgress
	bytes atomic.Int64
}

func (t *snapshotTracker) start(p SnapshotProgress) *trackedSnapshot {
	ts := &trackedSnapshot{SnapshotProgress: p}
	key := p.ID
	if p.Sending {
		key += "/send"
	}
	t.mu.Lock()
	if t.active == nil {
		t.active = map[string]*trackedSnapshot{}
	}
	t.active[key] = ts
	t.mu.Unlock()
	return ts
}

func (t *snapshotTracker) finish(ts *trackedSnapshot, err error) {
	key := ts.ID
	if ts.Sending {
		key += "/send"
	}
	t.mu.Lock()
	delete(t.active, key)
	t.mu.Unlock()
	switch {
	case err != nil:
		t.failed.Add(1)
	case ts.Sending:
		t.sent.Add(1)
	default:
		t.recv.Add(1)
	}
}

// Snapshots returns the snapshots this node is sending or receiving now.
func (s *Store) Snapshots() []SnapshotProgress {
	s.snaps.mu.Lock()
	defer s.snaps.mu.Unlock()
	out := make([]SnapshotProgress, 0, len(s.snaps.active))
	for _, ts := range s.snaps.active {
		ts.mu.Lock()
		p := ts.SnapshotProgress
		ts.mu.Unlock()
		p.Bytes = ts.bytes.Load()
		out = append(out, p)
	}
	return out
}

// raftSnapshot answers Raft's request for a snapshot with its metadata; the
// data is read when the MsgSnap goes out (sendSnapshot).
func (r *Replica) raftSnapshot() (*raftpb.Snapshot, error) {
	if !r.initialized {
		return nil, raft.ErrSnapshotTemporarilyUnavailable
	}
	as := r.storage.Applied()
	data, err := proto.Marshal(&shoalpb.SnapshotData{
		Shard: r.desc,
		Id:    fmt.Sprintf("s%d-i%d-%x", r.shardID, as.Index, r.store.proposalSeq.Add(1)),
	})
	if err != nil {
		return nil, err
	}
	return &raftpb.Snapshot{Data: data, Metadata: &raftpb.SnapshotMetadata{
		ConfState: as.ConfState, Index: new(as.Index), Term: new(as.Term),
	}}, nil
}

// sendSnapshot starts streaming the snapshot that MsgSnap m describes. It
// runs on the worker, before anything else is applied to the replica.
func (r *Replica) sendSnapshot(m *raftpb.Message, toNode uint64) {
	s := r.store
	meta := m.GetSnapshot().GetMetadata()
	var data shoalpb.SnapshotData
	if err := proto.Unmarshal(m.GetSnapshot().GetData(), &data); err != nil || meta.GetIndex() != r.applied {
		// INVARIANT: Raft emits the MsgSnap in the Ready right after it
		// asked for the snapshot, before this replica applies anything.
		r.log.Error("snapshot out of step with the applied state", "snapshot_index", meta.GetIndex(), "applied", r.applied, "err", err)
		r.queueSnapReport(m.GetTo(), true)
		return
	}
	snap := s.eng.NewSnapshot()
	spans := []keys.Span{
		keys.DataSpan(r.desc.StartSlot, r.desc.EndSlot),
		keys.SessionSpan(r.shardID),
		keys.ExpirySpan(r.desc.StartSlot, r.desc.EndSlot),
	}
	header := &shoalpb.SnapshotChunk{
		Header: &shoalpb.RaftMessage{
			ShardId: r.shardID, FromNode: s.opts.NodeID, ToNode: toNode, Epoch: r.desc.Epoch, Message: m,
		},
	}
	ts := s.snaps.start(SnapshotProgress{
		ID: data.Id, Shard: r.shardID, FromNode: s.opts.NodeID, ToNode: toNode, Sending: true, Queued: true, Started: time.Now(),
	})
	to := m.GetTo()
	log := r.log.With("snapshot", data.Id, "to_node", toNode)
	s.done.Add(1)
	go func() {
		defer s.done.Done()
		err := s.streamSnapshot(header, snap, spans, ts)
		snap.Close()
		s.snaps.finish(ts, err)
		if err != nil {
			log.Warn("snapshot send failed", "err", err, "bytes", ts.bytes.Load(), "retry_in", snapshotRetryDelay)
			// Raft asks for another snapshot as soon as it hears this one
			// failed, and each attempt reads the whole shard: a receiver
			// that refuses (no slot, no room) would have it read again
			// every heartbeat.
			select {
			case <-time.After(snapshotRetryDelay):
			case <-s.stopC:
			}
		} else {
			log.Info("snapshot sent", "bytes", ts.bytes.Load(), "took", time.Since(ts.Started).Round(time.Millisecond))
		}
		r.queueSnapReport(to, err != nil)
	}()
}

// snapshotRetryDelay is how long a failed snapshot send waits before Raft
// hears of the failure (and may ask for another).
const snapshotRetryDelay = time.Second

func (r *Replica) queueSnapReport(to uint64, failed bool) {
	r.mu.Lock()
	r.mu.snapReports = append(r.mu.snapReports, snapReport{to: to, failed: failed})
	r.mu.Unlock()
	r.store.sched.enqueue(r)
}

// streamSnapshot sends the key ranges of snap after header, within the
// store's concurrency and bandwidth limits.
func (s *Store) streamSnapshot(header *shoalpb.SnapshotChunk, snap *storage.Snapshot, spans []keys.Span, ts *trackedSnapshot) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-s.stopC:
			cancel()
		case <-ctx.Done():
		}
	}()
	select {
	case s.sendSlots <- struct{}{}:
		defer func() { <-s.sendSlots }()
	case <-ctx.Done():
		return ErrStopped
	}
	ts.mu.Lock()
	ts.Queued, ts.Started = false, time.Now()
	ts.mu.Unlock()
	// Count what will be sent, so that both ends can show progress against
	// an exact total. Reading is much faster than sending; this costs a
	// fraction of the stream's time.
	total, err := countSpans(snap, spans)
	if err != nil {
		return err
	}
	header.TotalBytes = uint64(total)
	ts.mu.Lock()
	ts.TotalBytes = total
	ts.mu.Unlock()
	var (
		span int
		it   *storageIter
		crc  uint32
		done bool
	)
	defer func() {
		if it != nil {
			it.close()
		}
	}()
	next := func() (*shoalpb.SnapshotChunk, error) {
		if done {
			return nil, io.EOF
		}
		c := &shoalpb.SnapshotChunk{}
		size := 0
		for size < s.opts.SnapshotChunkBytes {
			if it == nil {
				if span == len(spans) {
					c.Done, c.Checksum, done = true, crc, true
					break
				}
				var err error
				if it, err = newStorageIter(snap, spans[span]); err != nil {
					return nil, err
				}
				span++
			}
			k, v, ok := it.next()
			if !ok {
				err := it.close()
				it = nil
				if err != nil {
					return nil, err
				}
				continue
			}
			c.Keys = append(c.Keys, k)
			c.Values = append(c.Values, v)
			crc = crc32.Update(crc32.Update(crc, crcTable, k), crcTable, v)
			size += len(k) + len(v)
		}
		if err := s.snapLimit.wait(ctx, size); err != nil {
			return nil, err
		}
		ts.bytes.Add(int64(size))
		return c, nil
	}
	return s.opts.Transport.SendSnapshot(ctx, header.Header.ToNode, header, next)
}

// countSpans returns the total size of the keys and values in spans.
func countSpans(r storage.Reader, spans []keys.Span) (int64, error) {
	var n int64
	for _, sp := range spans {
		it, err := storage.NewIter(r, sp)
		if err != nil {
			return 0, err
		}
		for ok := it.First(); ok; ok = it.Next() {
			n += int64(len(it.Key()) + len(it.Value()))
		}
		err = it.Error()
		if cerr := it.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return 0, err
		}
	}
	return n, nil
}

// storageIter walks one span of a snapshot, copying keys and values.
type storageIter struct {
	it      *storage.Iterator
	started bool
}

func newStorageIter(r storage.Reader, span keys.Span) (*storageIter, error) {
	it, err := storage.NewIter(r, span)
	if err != nil {
		return nil, err
	}
	return &storageIter{it: it}, nil
}

func (si *storageIter) next() ([]byte, []byte, bool) {
	var ok bool
	if !si.started {
		si.started, ok = true, si.it.First()
	} else {
		ok = si.it.Next()
	}
	if !ok {
		return nil, nil, false
	}
	return append([]byte(nil), si.it.Key()...), append([]byte(nil), si.it.Value()...), true
}

func (si *storageIter) close() error {
	err := si.it.Error()
	if cerr := si.it.Close(); err == nil {
		err = cerr
	}
	return err
}

// HandleSnapshot receives a snapshot stream (transport.Handler). It writes
// the SST files, and once the stream is complete and its checksum right,
// hands the snapshot to the replica (created empty if this node has none).
func (s *Store) HandleSnapshot(ctx context.Context, first *shoalpb.SnapshotChunk, recv func() (*shoalpb.SnapshotChunk, error)) (err error) {
	h := first.GetHeader()
	m := h.GetMessage()
	if m.GetType() != raftpb.MsgSnap || m.GetSnapshot() == nil {
		return fmt.Errorf("raftstore: snapshot stream without a MsgSnap header")
	}
	data := &shoalpb.SnapshotData{}
	if err := proto.Unmarshal(m.GetSnapshot().GetData(), data); err != nil {
		return fmt.Errorf("raftstore: snapshot data: %w", err)
	}
	desc := data.GetShard()
	if desc.GetShardId() != h.ShardId || h.ShardId == 0 || h.ShardId > keys.MaxShardID {
		return fmt.Errorf("raftstore: snapshot for shard %d carries shard %d", h.ShardId, desc.GetShardId())
	}
	if want := ConfStateOf(desc); !sameConfState(want, m.GetSnapshot().GetMetadata().GetConfState()) {
		return fmt.Errorf("raftstore: snapshot %s: descriptor and configuration disagree", data.Id)
	}
	if err := s.admitReplica(h.ShardId, m.GetTo(), h.Epoch); err != nil {
		return err
	}
	select {
	case s.recvSlots <- struct{}{}:
		defer func() { <-s.recvSlots }()
	default:
		return fmt.Errorf("%w: node %d is receiving %d snapshots already", ErrOverloaded, s.opts.NodeID, cap(s.recvSlots))
	}
	// Room for this snapshot and the others being received, above the
	// disk's reserve; the sender tries again later.
	size := first.TotalBytes
	if err := s.opts.Space.CheckRoom(s.recvBytes.Add(size)); err != nil {
		s.recvBytes.Add(-size)
		return fmt.Errorf("raftstore: node %d refuses snapshot %s: %w", s.opts.NodeID, data.Id, err)
	}
	defer s.recvBytes.Add(-size)
	ts := s.snaps.start(SnapshotProgress{
		ID: data.Id, Shard: h.ShardId, FromNode: h.FromNode, ToNode: s.opts.NodeID,
		TotalBytes: int64(first.TotalBytes), Started: time.Now(),
	})
	defer func() { s.snaps.finish(ts, err) }()

	in, err := s.writeSnapshot(ctx, m, data, recv, ts)
	if err != nil {
		return err
	}
	r, err := s.replicaForSnapshot(h.ShardId, m.GetTo())
	if err != nil {
		s.removeAll(in.dir)
		return err
	}
	r.mu.Lock()
	if r.mu.gone || s.stopping.Load() {
		r.mu.Unlock()
		s.removeAll(in.dir)
		return fmt.Errorf("%w: shard %d", ErrShardRemoved, h.ShardId)
	}
	r.mu.snaps = append(r.mu.snaps, in)
	r.mu.Unlock()
	s.sched.enqueue(r)
	return nil
}

// writeSnapshot builds the SST files of a snapshot from its stream.
func (s *Store) writeSnapshot(ctx context.Context, m *raftpb.Message, data *shoalpb.SnapshotData, recv func() (*shoalpb.SnapshotChunk, error), ts *trackedSnapshot) (*incomingSnapshot, error) {
	desc := data.GetShard()
	meta := m.GetSnapshot().GetMetadata()
	shard := desc.ShardId
	// The directory is named here: the sender's ID is only for the logs
	// (as a path, ".." would make the failure cleanup below remove the
	// engine's own directory).
	dir := filepath.Join(s.eng.Dir(), snapshotDir, fmt.Sprintf("s%d-i%d-r%d-%x", shard, meta.GetIndex(), m.GetFrom(), s.proposalSeq.Add(1)))
	fs := s.eng.FS()
	if err := fs.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("raftstore: snapshot dir: %w", err)
	}
	ok := false
	var ws []*storage.SSTWriter
	defer func() {
		if !ok {
			for _, w := range ws {
				w.Abort()
			}
			s.removeAll(dir)
		}
	}()
	dataSpan := keys.DataSpan(desc.StartSlot, desc.EndSlot)
	expSpan := keys.ExpirySpan(desc.StartSlot, desc.EndSlot)
	sessSpan := keys.SessionSpan(shard)
	raftSpan := keys.ShardRaftSpan(shard)
	hsKey := keys.HardStateKey(shard)

	create := func(name string) (*storage.SSTWriter, error) {
		w, err := s.eng.CreateSST(fs.PathJoin(dir, name))
		if err == nil {
			ws = append(ws, w)
		}
		return w, err
	}
	dw, err := create("1-data.sst")
	if err != nil {
		return nil, err
	}
	mw, err := create("2-replica.sst")
	if err != nil {
		return nil, err
	}
	rw, err := create("3-raft.sst")
	if err != nil {
		return nil, err
	}
	xw, err := create("4-expiry.sst")
	if err != nil {
		return nil, err
	}
	// Clear what the replica had, keeping its HardState (its vote).
	if err := dw.DeleteSpan(dataSpan); err != nil {
		return nil, err
	}
	if err := rw.DeleteSpan(keys.Span{Start: raftSpan.Start, End: hsKey}); err != nil {
		return nil, err
	}
	if err := rw.DeleteSpan(keys.Span{Start: append(hsKey[:len(hsKey):len(hsKey)], 0), End: raftSpan.End}); err != nil {
		return nil, err
	}
	if err := xw.DeleteSpan(expSpan); err != nil {
		return nil, err
	}
	applied := &shoalpb.AppliedState{Index: meta.GetIndex(), Term: meta.GetTerm(), ConfState: meta.GetConfState()}
	if err := setProto(rw, keys.AppliedStateKey(shard), applied); err != nil {
		return nil, err
	}
	state := &shoalpb.LocalReplicaState{ReplicaId: m.GetTo(), Shard: desc}
	if err := setProto(mw, keys.ReplicaStateKey(shard), state); err != nil {
		return nil, err
	}

	var crc uint32
	for c := (*shoalpb.SnapshotChunk)(nil); c == nil || !c.Done; {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if c, err = recv(); err != nil {
			if errors.Is(err, io.EOF) {
				err = fmt.Errorf("raftstore: snapshot %s ended before its last chunk", data.Id)
			}
			return nil, err
		}
		if len(c.Keys) != len(c.Values) {
			return nil, fmt.Errorf("raftstore: snapshot %s: %d keys, %d values", data.Id, len(c.Keys), len(c.Values))
		}
		n := 0
		for i, k := range c.Keys {
			v := c.Values[i]
			var w *storage.SSTWriter
			switch {
			case dataSpan.Contains(k):
				w = dw
			case sessSpan.Contains(k):
				w = rw
			case expSpan.Contains(k):
				w = xw
			default:
				return nil, fmt.Errorf("raftstore: snapshot %s: key %q outside shard %d", data.Id, k, shard)
			}
			if err := w.Set(k, v); err != nil {
				return nil, err
			}
			crc = crc32.Update(crc32.Update(crc, crcTable, k), crcTable, v)
			n += len(k) + len(v)
		}
		ts.bytes.Add(int64(n))
		if c.Done && c.Checksum != crc {
			return nil, fmt.Errorf("raftstore: snapshot %s: checksum %08x, computed %08x", data.Id, c.Checksum, crc)
		}
	}
	trunc := &shoalpb.TruncatedState{Index: meta.GetIndex(), Term: meta.GetTerm()}
	if err := setProto(rw, keys.TruncatedStateKey(shard), trunc); err != nil {
		return nil, err
	}
	in := &incomingSnapshot{msg: m, data: data, dir: dir}
	for _, w := range ws {
		if err := w.Close(); err != nil {
			return nil, err
		}
		in.paths = append(in.paths, w.Path())
	}
	ok = true
	return in, nil
}

func setProto(w *storage.SSTWriter, key []byte, m proto.Message) error {
	v, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		return err
	}
	return w.Set(key, v)
}

func (s *Store) removeAll(dir string) {
	if err := s.eng.FS().RemoveAll(dir); err != nil {
		s.log.Warn("cannot remove snapshot directory", "dir", dir, "err", err)
	}
}

// stepSnapshot hands a received snapshot to Raft, keeping its files until
// Raft restores it or it is obsolete.
func (r *Replica) stepSnapshot(in *incomingSnapshot) {
	r.pendingSnaps = append(r.pendingSnaps, in)
	_ = r.raw.Step(in.msg)
}

// discardSnapshots deletes the files of received snapshots at or below
// index (0: all of them).
func (r *Replica) discardSnapshots(index uint64) {
	keep := r.pendingSnaps[:0]
	for _, in := range r.pendingSnaps {
		if index == 0 || in.index() <= index {
			r.store.removeAll(in.dir)
		} else {
			keep = append(keep, in)
		}
	}
	clear(r.pendingSnaps[len(keep):])
	r.pendingSnaps = keep
}

// applySnapshot persists the snapshot Raft restores: its files are ingested
// at once, atomically and durably, then the replica takes on its state.
func (r *Replica) applySnapshot(snap *raftpb.Snapshot) error {
	meta := snap.GetMetadata()
	var in *incomingSnapshot
	for _, p := range r.pendingSnaps {
		pm := p.msg.GetSnapshot().GetMetadata()
		if pm.GetIndex() == meta.GetIndex() && pm.GetTerm() == meta.GetTerm() {
			in = p
		}
	}
	if in == nil {
		return fmt.Errorf("raftstore: shard %d: Raft restores snapshot %d/%d that was never received",
			r.shardID, meta.GetIndex(), meta.GetTerm())
	}
	start := time.Now()
	// The snapshot replaces the data of its shard's slots (which never
	// change: shards move whole, they are not split).
	defer r.store.beforeDataReset(in.data.Shard)()
	if err := r.store.eng.Ingest(context.Background(), in.paths); err != nil {
		return fmt.Errorf("raftstore: shard %d: ingest snapshot: %w", r.shardID, err)
	}
	as := &shoalpb.AppliedState{Index: meta.GetIndex(), Term: meta.GetTerm(), ConfState: meta.GetConfState()}
	// A truncation staged earlier in this phase (on a tick) would commit
	// after the ingest and put back an older truncated state, leaving a
	// hole in the log: stage the snapshot's after it in the same batch.
	trunc := &shoalpb.TruncatedState{Index: as.Index, Term: as.Term}
	if err := r.store.stageLog(false, func(b *storage.Batch) error {
		return b.SetProto(keys.TruncatedStateKey(r.shardID), trunc)
	}); err != nil {
		return fmt.Errorf("raftstore: shard %d: stage snapshot truncation: %w", r.shardID, err)
	}
	r.storage.ResetToSnapshot(as)
	r.applied, r.confState = as.Index, as.ConfState
	r.desc = in.data.Shard
	r.sm = r.store.opts.NewStateMachine(r.desc)
	wasInitialized := r.initialized
	r.initialized = true
	// Published before the slots are: a read that finds the shard by its
	// slots then finds it initialized when it checks Serving (else it
	// would fail until this iteration's phase 3).
	r.publishStatus()
	r.store.setSlots(r)
	// Proposals at or below the snapshot may or may not be in it.
	for idx, p := range r.byIndex {
		if idx <= as.Index {
			delete(r.byIndex, idx)
			delete(r.proposals, p.id)
			p.finish(result{err: ambiguous(fmt.Errorf("%w: shard %d: replaced by a snapshot", ErrLeadershipLost, r.shardID))})
		}
	}
	r.discardSnapshots(as.Index)
	r.store.stats.snapshotsApplied.Add(1)
	r.log.Info("snapshot applied", "index", as.Index, "epoch", r.desc.Epoch, "was_initialized", wasInitialized,
		"took", time.Since(start).Round(time.Millisecond))
	return nil
}

// byteLimiter is a token bucket in bytes per second shared by a node's
// snapshot senders. A zero rate means unlimited.
type byteLimiter struct {
	mu     sync.Mutex
	rate   float64
	tokens float64
	last   time.Time
}

func newByteLimiter(bytesPerSec int64) *byteLimiter {
	return &byteLimiter{rate: float64(bytesPerSec), last: time.Now()}
}

// wait blocks until n bytes may be sent.
func (l *byteLimiter) wait(ctx context.Context, n int) error {
	if l.rate <= 0 || n == 0 {
		return nil
	}
	l.mu.Lock()
	now := time.Now()
	// The bucket holds at most an eighth of a second of sending, so a
	// snapshot cannot start with a long burst.
	l.tokens = min(l.rate/8, l.tokens+now.Sub(l.last).Seconds()*l.rate)
	l.last = now
	l.tokens -= float64(n)
	var d time.Duration
	if l.tokens < 0 {
		d = time.Duration(-l.tokens / l.rate * float64(time.Second))
	}
	l.mu.Unlock()
	if d == 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}

// Checksum is a digest of one replica's state machine at an applied index.
type Checksum struct {
	Applied uint64
	Keys    int
	CRC     uint32
}

// Checksum digests this node's replica of shard: every key and value of
// its data, expiry index and sessions, read from a Pebble snapshot taken by
// the replica's worker, so that it matches the applied index exactly.
// Replicas at the same applied index must have the same checksum.
func (s *Store) Checksum(ctx context.Context, shard uint64) (Checksum, error) {
	r, err := s.replica(shard)
	if err != nil {
		return Checksum{}, err
	}
	req := &checksumRequest{done: make(chan struct{})}
	if err := enqueue(r, &r.mu.checksums, req, "checksum requests"); err != nil {
		return Checksum{}, err
	}
	select {
	case <-req.done:
	case <-ctx.Done():
		// The worker may be taking the snapshot right now: whoever comes
		// second closes it.
		req.mu.Lock()
		req.abandoned = true
		if req.snap != nil {
			req.snap.Close()
			req.snap = nil
		}
		req.mu.Unlock()
		return Checksum{}, timeoutError(ctx.Err())
	}
	if req.snap == nil {
		return Checksum{}, fmt.Errorf("%w: shard %d has no state yet", ErrShardNotFound, shard)
	}
	defer req.snap.Close()
	sum := Checksum{Applied: req.applied}
	for _, sp := range req.spans {
		it, err := newStorageIter(req.snap, sp)
		if err != nil {
			return Checksum{}, err
		}
		for {
			k, v, ok := it.next()
			if !ok {
				break
			}
			sum.Keys++
			sum.CRC = crc32.Update(crc32.Update(sum.CRC, crcTable, k), crcTable, v)
		}
		if err := it.close(); err != nil {
			return Checksum{}, err
		}
	}
	return sum, nil
}

type checksumRequest struct {
	// mu guards snap and abandoned between the worker and a requester
	// that gave up.
	mu        sync.Mutex
	abandoned bool
	snap      *storage.Snapshot
	applied   uint64
	spans     []keys.Span
	done      chan struct{}
}

// takeChecksums answers checksum requests on the worker, where the engine
// holds exactly what the replica applied.
func (r *Replica) takeChecksums(reqs []*checksumRequest) {
	for _, req := range reqs {
		req.mu.Lock()
		if r.initialized && !req.abandoned {
			req.snap = r.store.eng.NewSnapshot()
			req.applied = r.applied
			req.spans = []keys.Span{
				keys.DataSpan(r.desc.StartSlot, r.desc.EndSlot),
				keys.SessionSpan(r.shardID),
				keys.ExpirySpan(r.desc.StartSlot, r.desc.EndSlot),
			}
		}
		req.mu.Unlock()
		close(req.done)
	}
}
