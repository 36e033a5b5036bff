package raftstore

import (
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/tracker"

	"github.com/shoaldb/shoal/internal/storage"
)

// truncateEveryTicks is how often a replica considers truncating its log.
const truncateEveryTicks = 10

// maybeTruncateLog truncates the log once it holds more than
// Options.MaxLogEntries entries or Options.MaxLogBytes bytes. Every replica
// truncates its own log; nothing is proposed. A follower keeps nothing it
// has applied. A leader keeps what its followers in the replicate or probe
// state still lack, unless that would keep more than twice the bounds: then the
// laggards will get a snapshot instead. It also keeps the entries after a
// snapshot it is sending, as long as they are within twice the byte bound
// (whatever their number): the receiver goes on from the log once the
// snapshot is in, instead of needing another snapshot because the writes
// that came during the first one were truncated.
//
// The truncation goes into this iteration's log batch. Everything up to the
// applied index was applied by a batch committed before it, so the log is
// never truncated past what is durably applied.
func (r *Replica) maybeTruncateLog() {
	if !r.initialized {
		return
	}
	o := &r.store.opts
	entries, bytes := r.storage.LogSize()
	if entries <= uint64(o.MaxLogEntries) && bytes <= o.MaxLogBytes {
		return
	}
	first, _ := r.storage.FirstIndex()
	target := r.applied
	if r.state == raft.StateLeader {
		keep, keepSnap := target, target
		r.raw.WithProgress(func(id uint64, _ raft.ProgressType, pr tracker.Progress) {
			switch {
			case id == r.replicaID:
			case pr.State == tracker.StateReplicate:
				keep = min(keep, pr.Match)
			case pr.State == tracker.StateProbe && pr.Match+1 >= first:
				// A follower in probe whose messages went unanswered (its
				// node restarts, its stream was reset) still has its
				// match. Not one the leader has not heard from yet (a new
				// leader's, a new learner: match 0), nor one the log no
				// longer reaches.
				keep = min(keep, pr.Match)
			case pr.State == tracker.StateSnapshot && pr.PendingSnapshot > 0:
				keepSnap = min(keepSnap, pr.PendingSnapshot)
			}
		})
		last, _ := r.storage.LastIndex()
		avg := uint64(0)
		if entries > 0 {
			avg = bytes / entries
		}
		if last-keep <= 2*uint64(o.MaxLogEntries) && avg*(last-keep) <= 2*o.MaxLogBytes {
			target = keep
		}
		if keepSnap < target && avg*(last-keepSnap) <= 2*o.MaxLogBytes {
			target = keepSnap
		}
	}
	if target < first {
		return
	}
	err := r.store.stageLog(false, func(b *storage.Batch) error { return r.storage.Truncate(b, target) })
	if err != nil {
		r.store.fatal(err)
		return
	}
	r.store.stats.truncations.Add(1)
}
