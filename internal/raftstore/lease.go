package raftstore

import (
	"encoding/binary"
	"time"

	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
)

// Leader leases: a leader serves linearizable reads from its own state,
// with no round of messages, for Options.ReadLease after a quorum confirmed
// its leadership.
//
// Why it is safe. A ReadIndex round the leader issued at time t comes back
// once a quorum of voters answered the heartbeat that carried it, so each of
// them received that heartbeat after t and reset its election clock then.
// With CheckQuorum on, a follower that has a leader ignores (pre-)votes
// until its election clock reaches ElectionTicks; its ticks come from a
// ticker that never runs fast, but a tick that fired just before the
// heartbeat may be processed after it and a delayed ticker hands over one
// buffered tick early, so that is at least (ElectionTicks-2) ticks of
// wall-clock time after the heartbeat. Any new leader needs a vote from one
// of that quorum, so none can be elected before t + (ElectionTicks-2)
// ticks; the lease ends one tick earlier, at t + ReadLease (at most
// (ElectionTicks-3) ticks, 700 ms by default), measured on the monotonic
// clock, which keeps running while the process is stopped
// (SIGSTOP) — unlike Raft's own tick-based lease, which is why Shoal does
// not use raft.ReadOnlyLeaseBased. Three things would break the argument
// and are closed off:
//
//   - A leadership transfer makes its target campaign with a vote that
//     followers grant despite their lease. A leader drops its lease before
//     it starts a transfer and takes none while the transfer runs. Once it
//     has told the target to campaign (MsgTimeoutNow) it takes none for the
//     rest of that term, even if the transfer is abandoned: the message may
//     still arrive. A transfer abandoned before that (the target never
//     caught up within an election timeout) sent nothing that makes anyone
//     campaign, so leases resume.
//   - A follower that restarts forgets its leader and would vote at once. A
//     replica that has voted or followed before (its HardState has a term)
//     ignores (pre-)votes for ElectionTicks after it starts.
//   - Reads must see every write acknowledged before them, and every write
//     another read saw. Writes this leader acknowledged were applied here
//     first. Writes of earlier terms are below the index of the leader's
//     first ReadIndex round of its term (Raft answers ReadIndex only once
//     the leader committed an entry of its term). A follower's linearizable
//     read waits for the leader's commit index, which the leader may not
//     have applied yet (Raft hands a leader at most MaxCommittedSizePerReady
//     of committed entries per Ready). So a lease read is served only once
//     this leader has applied both that first index and the commit index it
//     has published to followers; otherwise it takes a ReadIndex round.
//
// The lease assumes the machines' clocks run at nearly the same rate (the
// margin is one tick in ElectionTicks) and that a machine is not suspended
// in a way that stops its monotonic clock; Options.ReadLease < 0 turns
// leases off where that cannot be assumed.

// lease is a leader's permission to serve reads locally until until.
type lease struct {
	term  uint64
	until time.Time
	// index must be applied before a read is served under the lease.
	index uint64
}

// campaignTransfer is the context etcd raft gives the votes of a
// leadership transfer's campaign; followers grant them despite a lease.
const campaignTransfer = "CampaignTransfer"

// leaseRead reports whether the replica can serve a linearizable read at
// now from its state, without a ReadIndex round. Any goroutine may call it.
func (r *Replica) leaseRead(now time.Time) bool {
	l := r.lease.Load()
	if l == nil || !now.Before(l.until) {
		return false
	}
	if applied := r.appliedPub.Load(); applied < l.index || applied < r.commitPub.Load() {
		return false
	}
	r.leaseUsed.Store(true)
	return true
}

// grantLease extends the lease after the ReadIndex round b came back with
// read index index, if the replica is still the leader of the term that
// issued it and is not handing its leadership over.
func (r *Replica) grantLease(b *readBatch, index uint64) {
	if r.store.opts.ReadLease <= 0 || b.term == 0 {
		return
	}
	bs := r.raw.BasicStatus()
	if bs.RaftState != raft.StateLeader || bs.GetTerm() != b.term || bs.LeadTransferee != 0 || r.noLeaseTerm == bs.GetTerm() {
		return
	}
	until := b.issuedAt.Add(r.store.opts.ReadLease)
	if cur := r.lease.Load(); cur != nil && cur.term == bs.GetTerm() {
		if !until.After(cur.until) {
			return
		}
		index = min(index, cur.index)
	}
	r.lease.Store(&lease{term: bs.GetTerm(), until: until, index: index})
}

// revokeLease drops the lease: a leadership transfer is starting, and
// grantLease takes none until it ends.
func (r *Replica) revokeLease() { r.lease.Store(nil) }

// sentTimeoutNow records that this leader told a transfer's target to
// campaign in term: no lease is taken for the rest of it.
func (r *Replica) sentTimeoutNow(term uint64) {
	r.lease.Store(nil)
	r.noLeaseTerm = max(r.noLeaseTerm, term)
}

// renewLease issues a ReadIndex round with no reads when the lease is in
// use and has less than half of its length left, so that a leader serving
// a steady stream of reads keeps its lease without any read waiting.
func (r *Replica) renewLease(now time.Time) {
	l := r.lease.Load()
	if l == nil || l.until.Sub(now) > r.store.opts.ReadLease/2 || !r.leaseUsed.Swap(false) {
		return
	}
	r.issueReadRound(nil, now)
}

// issueReadRound starts a ReadIndex round for reads (none for a lease
// renewal); a leader records the term and time it was issued at, from
// which its answer extends the lease.
func (r *Replica) issueReadRound(reads []*readRequest, now time.Time) {
	id := r.store.proposalSeq.Add(1)
	b := &readBatch{reads: reads, issued: r.ticks}
	if r.store.opts.ReadLease > 0 {
		if bs := r.raw.BasicStatus(); bs.RaftState == raft.StateLeader && bs.LeadTransferee == 0 {
			b.term, b.issuedAt = bs.GetTerm(), now
		}
	}
	r.readBatches[id] = b
	r.store.stats.readRounds.Add(1)
	r.raw.ReadIndex(binary.BigEndian.AppendUint64(nil, id))
}

// ignoreVote reports whether a (pre-)vote request must be dropped because
// this replica may have acknowledged a heartbeat of a leader whose lease is
// still running before it restarted (see the comment at the top of this
// file).
func (r *Replica) ignoreVote(m *raftpb.Message) bool {
	t := m.GetType()
	if t != raftpb.MsgVote && t != raftpb.MsgPreVote || r.voteGuardUntil.IsZero() {
		return false
	}
	if string(m.GetContext()) == campaignTransfer {
		return false
	}
	return time.Now().Before(r.voteGuardUntil)
}
