package raftstore

import (
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"go.etcd.io/raft/v3/tracker"

	"github.com/shoaldb/shoal/api/shoalpb"
)

// Quiescing: a shard with nothing to do stops ticking, so an idle node
// spends no CPU on its heartbeats and elections.
//
// A leader quiesces when, for quiesceTicks ticks in a row, its shard has
// been idle: nothing proposed, read or transferred, every entry committed,
// applied here and replicated to every member, no lease in use, not in a
// joint configuration (a leader leaves one from its ticks if Raft's own
// leave was dropped: maybeLeaveJoint). It marks
// its next heartbeats "quiesce" and stops ticking after sending them. A
// follower that gets such a heartbeat from its leader while its own log
// ends at the heartbeat's commit index, and no read of its own is in
// flight, stops ticking too, remembering the leader's node. Anything else
// a quiet replica gets wakes it: a proposal, a read that finds no lease, a
// transfer, any Raft message other than a heartbeat answer (on the leader)
// or the quiesce heartbeat itself (on a follower).
//
// Failure detection moves from the shard to the node. Every tick a store
// sends a keepalive to the nodes it shares shards with (unless its loop is
// stuck, see loopStuck), and notes when it last heard anything from each
// node. A quiet follower whose leader's node
// has been silent for quietSilence (default 900 ms) wakes and advances its
// election clock to one tick short of the timeout, so it campaigns within
// the next election timeout instead of waiting a whole one more: idle
// shards fail over under a second later than busy ones. That is safe for
// leases (lease.go): the leader's node has been silent for a tick longer
// than any lease it can hold, since leases are confirmed by messages from
// it, the same margin a busy follower keeps.
//
// Work that runs on ticks is done before going quiet: a replica checks
// whether its log needs truncating as it quiesces.
//
// A quiet leader does not tick, so CheckQuorum cannot step it down while
// it sleeps; it wakes like a follower when another member's node falls
// silent, and CheckQuorum then steps it down if it is cut off (meanwhile
// its lease has run out and it has no quorum, so it serves nothing stale).

// quiesceTicks is how many ticks in a row a leader must find its shard idle
// before it quiesces.
const quiesceTicks = 5

// peerClock records when this store last heard from each node.
type peerClock struct {
	start time.Time
	mu    sync.RWMutex
	seen  map[uint64]*atomic.Int64 // nanoseconds since start
}

func newPeerClock() *peerClock {
	return &peerClock{start: time.Now(), seen: map[uint64]*atomic.Int64{}}
}

// heard notes a message from node at now.
func (c *peerClock) heard(node uint64, now time.Time) {
	c.mu.RLock()
	v := c.seen[node]
	c.mu.RUnlock()
	if v == nil {
		c.mu.Lock()
		if v = c.seen[node]; v == nil {
			v = new(atomic.Int64)
			c.seen[node] = v
		}
		c.mu.Unlock()
	}
	v.Store(int64(now.Sub(c.start)))
}

// silence returns how long nothing has been heard from node up to now
// (counting from the store's start for a node never heard from).
func (c *peerClock) silence(node uint64, now time.Time) time.Duration {
	c.mu.RLock()
	v := c.seen[node]
	c.mu.RUnlock()
	last := time.Duration(0)
	if v != nil {
		last = time.Duration(v.Load())
	}
	return now.Sub(c.start) - last
}

// silentFor reports whether nothing was heard from node for d up to now.
func (c *peerClock) silentFor(node uint64, d time.Duration, now time.Time) bool {
	return c.silence(node, now) >= d
}

// canQuiesce reports whether the leader's shard is idle (see above).
func (r *Replica) canQuiesce() bool {
	if r.state != raft.StateLeader || !r.initialized || r.campaignAt > 0 ||
		len(r.proposals) > 0 || len(r.pendingReads) > 0 || len(r.readBatches) > 0 || len(r.waitingReads) > 0 ||
		len(r.pendingSnaps) > 0 || len(r.applyAfterSync) > 0 || r.leaseUsed.Load() ||
		r.wantTransfer != 0 || len(r.heldProps) > 0 || IsJoint(r.desc) {
		return false
	}
	st := r.raw.Status()
	if st.LeadTransferee != 0 || st.Applied != st.GetCommit() {
		return false
	}
	last := st.Progress[r.replicaID].Match
	if st.GetCommit() != last {
		return false
	}
	for _, pr := range st.Progress {
		if pr.Match != last || pr.State != tracker.StateReplicate || !pr.RecentActive {
			return false
		}
	}
	return true
}

// quiesceTick is the leader's part of a tick: count idle ticks and, after
// quiesceTicks, ask for the next heartbeats to quiesce the followers.
func (r *Replica) quiesceTick() {
	if r.store.opts.DisableQuiesce {
		return
	}
	if !r.canQuiesce() {
		r.idleTicks, r.quiesceNext = 0, false
		return
	}
	r.idleTicks++
	if r.idleTicks >= quiesceTicks {
		r.quiesceNext = true
	}
}

// maybeQuiesceLeader runs before a leader sends rd's messages: if a quiesce
// was asked for and rd holds only heartbeats, they are marked and the
// replica goes quiet once they are sent. It reports whether to mark them.
func (r *Replica) maybeQuiesceLeader(rd *raft.Ready) bool {
	if !r.quiesceNext || len(rd.Entries) > 0 || len(rd.CommittedEntries) > 0 || len(rd.Messages) == 0 || len(rd.ReadStates) > 0 {
		return false
	}
	for _, m := range rd.Messages {
		if m.GetType() != raftpb.MsgHeartbeat {
			return false
		}
	}
	if !r.canQuiesce() {
		r.quiesceNext = false
		return false
	}
	r.quiesceNext, r.idleTicks = false, 0
	// Truncation is checked on ticks, which stop now.
	r.maybeTruncateLog()
	r.quiet.Store(true)
	r.store.stats.quiesced.Add(1)
	return true
}

// maybeQuiesceFollower runs after a follower stepped m: a quiesce heartbeat
// from its leader quiets it if its log ends at the leader's commit.
func (r *Replica) maybeQuiesceFollower(m *shoalpb.RaftMessage) {
	if !m.Quiesce || m.Message.GetType() != raftpb.MsgHeartbeat || r.store.opts.DisableQuiesce {
		return
	}
	if len(r.pendingReads) > 0 || len(r.readBatches) > 0 || len(r.waitingReads) > 0 {
		// A read in flight needs the ticks: a ReadIndex request that got
		// no answer is asked again on a tick (retryReads).
		return
	}
	bs := r.raw.BasicStatus()
	if bs.RaftState != raft.StateFollower || bs.Lead != m.Message.GetFrom() || bs.GetCommit() != m.Message.GetCommit() {
		return
	}
	if last, err := r.storage.LastIndex(); err != nil || last != bs.GetCommit() {
		return
	}
	r.maybeTruncateLog()
	r.quietLeaderNode.Store(m.FromNode)
	r.quiet.Store(true)
	r.store.stats.quiesced.Add(1)
}

// anyWakes reports whether one of msgs wakes a quiet replica: anything but
// the answers to heartbeats and the quiesce heartbeat itself.
func anyWakes(msgs []*shoalpb.RaftMessage) bool {
	for _, m := range msgs {
		switch m.Message.GetType() {
		case raftpb.MsgHeartbeatResp:
		case raftpb.MsgHeartbeat:
			if !m.Quiesce {
				return true
			}
		default:
			return true
		}
	}
	return false
}

// unquiesce makes a quiet replica tick again. A follower advances its
// election clock by the whole ticks its leader's node has been silent, up
// to one short of the election timeout, whatever woke it (the ticker
// noticing the silence, a candidate's vote, the transport reporting the
// node unreachable): its clock then reads as if it had ticked all along
// since it last heard from its leader, as a busy follower's does, so the
// followers of a failed leader agree on when to elect and grant each
// other's votes. That is as safe for leases as ticking (lease.go): the
// clock never counts time after a message from the leader's node.
func (r *Replica) unquiesce() {
	leaderNode := r.quietLeaderNode.Load()
	r.quiet.Store(false)
	r.quietLeaderNode.Store(0)
	r.idleTicks, r.quiesceNext = 0, false
	r.tickPending.Store(true)
	s := r.store
	if r.state != raft.StateFollower || leaderNode == 0 {
		return
	}
	n := min(int(s.peers.silence(leaderNode, time.Now())/s.opts.TickInterval), s.opts.ElectionTicks-1)
	for range n {
		r.raw.Tick()
	}
}

// tickQuiet decides, on the ticker goroutine, whether a replica ticks: a
// quiet one does not, unless a peer it depends on fell silent, which wakes
// it.
func (s *Store) tickQuiet(r *Replica, now time.Time) (tick bool) {
	return !r.quiet.Load() || r.peerSilent(now)
}

// peerSilent reports whether a quiet replica must wake because a node has
// been silent for quietSilence: for a follower its leader's node (it then
// elects); for a leader any other member's node (it then ticks again, so
// CheckQuorum steps it down if it has lost its quorum, and it stays awake
// while a member is down).
func (r *Replica) peerSilent(now time.Time) bool {
	s := r.store
	if n := r.quietLeaderNode.Load(); n != 0 {
		return s.peers.silentFor(n, s.quietSilence(), now)
	}
	st := r.status.Load()
	if st == nil || st.Descriptor == nil {
		return false
	}
	for _, rd := range st.Descriptor.Replicas {
		if rd.NodeId != s.opts.NodeID && s.peers.silentFor(rd.NodeId, s.quietSilence(), now) {
			return true
		}
	}
	return false
}

// loopStuck reports whether the loop's current iteration has run for half
// an election timeout or more (a disk that stopped answering a sync, a
// deadlock). The ticker runs apart from the loop, so its keepalives would
// otherwise keep the followers of this node's quiet shards asleep while
// nothing here answers them; without keepalives they notice the silence
// and elect new leaders, as the followers of its busy shards do when its
// heartbeats stop.
func (s *Store) loopStuck(now time.Time) bool {
	start := s.iterStart.Load()
	if start == 0 {
		return false
	}
	ran := now.Sub(s.peers.start) - time.Duration(start)
	return ran >= time.Duration(s.opts.ElectionTicks/2)*s.opts.TickInterval
}

// quietSilence is how long a quiet follower's leader's node must be silent
// before the follower wakes and advances its election clock: longer than
// any lease by a tick, and at least (ElectionTicks-1) ticks, the least a
// follower that hears its leader waits before it votes for another.
func (s *Store) quietSilence() time.Duration {
	d := time.Duration(s.opts.ElectionTicks-1) * s.opts.TickInterval
	if s.opts.ReadLease > 0 {
		d = max(d, s.opts.ReadLease+s.opts.TickInterval)
	}
	return d
}

// sendKeepalives tells every node this store shares a shard with that it is
// alive; quiet followers there watch for it. The list of nodes is refreshed
// every ElectionTicks ticks; peers is the ticker goroutine's.
func (s *Store) sendKeepalives(rs []*Replica, ticks int, peers *[]uint64) {
	if s.loopStuck(time.Now()) {
		return
	}
	if ticks%s.opts.ElectionTicks == 0 {
		seen := map[uint64]bool{}
		*peers = (*peers)[:0]
		for _, r := range rs {
			st := r.status.Load()
			if st == nil || st.Descriptor == nil {
				continue
			}
			for _, rd := range st.Descriptor.Replicas {
				if rd.NodeId != s.opts.NodeID && !seen[rd.NodeId] {
					seen[rd.NodeId] = true
					*peers = append(*peers, rd.NodeId)
				}
			}
		}
	}
	for _, n := range *peers {
		_ = s.opts.Transport.Send(n, []*shoalpb.RaftMessage{{FromNode: s.opts.NodeID, ToNode: n}})
	}
}
