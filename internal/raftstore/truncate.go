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
// has applied. A leader keeps what its followers in the replicate state
// still lack, unless that would keep more than twice the bounds: then the
// laggards will get a snapshot instead.
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
		keep := target
		r.raw.WithProgress(func(id uint64, _ raft.ProgressType, pr tracker.Progress) {
			if id != r.replicaID && pr.State == tracker.StateReplicate {
				keep = min(keep, pr.Match)
			}
		})
		last, _ := r.storage.LastIndex()
		if last-keep <= 2*uint64(o.MaxLogEntries) && (entries == 0 || bytes/entries*(last-keep) <= 2*o.MaxLogBytes) {
			target = keep
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
