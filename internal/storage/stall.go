package storage

import (
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// ErrDiskStalled reports that a disk operation of the engine (a write, a
// sync, creating or renaming a file) has not returned for Options.MaxStall.
// The engine cannot be trusted to make progress: its owner should stop the
// process, as CockroachDB does past storage.max_sync_duration, so that a
// supervisor restarts it and, if the disk stays stalled, the cluster treats
// the node as down and moves its replicas.
var ErrDiskStalled = errors.New("storage: disk stalled")

// Pebble's disk health checks look at the operations in flight every 2
// seconds (vfs.defaultTickInterval) and report each one older than the
// threshold, so a stall is reported every 2 seconds while it lasts.
// reportGap is the longest silence between two reports of one stall; a
// longer one means the stall ended, or the whole process was stopped
// (SIGSTOP, docker pause) and did not see the time pass.
const reportGap = 6 * time.Second

// slowThreshold is the age at which an operation in flight is reported as
// slow (logged) and starts to count towards maxStall.
func slowThreshold(maxStall time.Duration) time.Duration {
	if maxStall <= 0 {
		return 5 * time.Second
	}
	// Never 0, which would turn Pebble's checks off.
	return max(min(5*time.Second, maxStall/2), time.Nanosecond)
}

// stallDetector receives Pebble's reports of slow disk operations, logs them
// and fails the engine once one has lasted maxStall.
//
// A report carries how long its operation has been in flight by the clock.
// A process that was stopped (SIGSTOP, docker pause) in the middle of a sync
// sees, once resumed, a sync as old as the pause although the disk is fine,
// so the detector also requires that it has itself watched the stall, with
// reports no more than reportGap apart, for maxStall less the threshold at
// which reports begin. A stop of the process during a real stall only delays
// its detection.
type stallDetector struct {
	maxStall time.Duration // <= 0: only log
	slow     time.Duration
	now      func() time.Time
	log      *slog.Logger
	onStall  func(error)

	mu         sync.Mutex
	runStart   time.Time // first report of the stall being watched
	lastReport time.Time
	lastLog    time.Time
	fired      bool
}

func newStallDetector(maxStall time.Duration, log *slog.Logger, onStall func(error)) *stallDetector {
	return &stallDetector{maxStall: maxStall, slow: slowThreshold(maxStall), now: time.Now, log: log, onStall: onStall}
}

// report is Pebble's onSlowDisk callback; it runs on Pebble's monitoring
// goroutines.
func (d *stallDetector) report(info vfs.DiskSlowInfo) {
	now := d.now()
	d.mu.Lock()
	if d.lastReport.IsZero() || now.Sub(d.lastReport) > reportGap {
		d.runStart = now
	}
	d.lastReport = now
	logIt := d.lastLog.IsZero() || now.Sub(d.lastLog) >= 10*time.Second
	if logIt {
		d.lastLog = now
	}
	fire := d.maxStall > 0 && !d.fired && info.Duration >= d.maxStall && now.Sub(d.runStart) >= d.maxStall-d.slow
	if fire {
		d.fired = true
	}
	d.mu.Unlock()
	// Logs are written on goroutines of their own, after the failure is
	// reported: a log on the stalled disk (or a full pipe to one) must
	// not hold up Pebble's monitor, or the report.
	if fire {
		err := fmt.Errorf("%w: %s of %s has not returned for %v (the limit is %v)",
			ErrDiskStalled, info.OpType, info.Path, info.Duration.Round(time.Millisecond), d.maxStall)
		if d.onStall != nil {
			d.onStall(err)
		}
		go d.log.Error("disk stalled", "err", err)
	} else if logIt {
		go d.log.Warn("disk slow", "op", info.OpType.String(), "path", info.Path, "duration", info.Duration.Round(time.Millisecond))
	}
}
