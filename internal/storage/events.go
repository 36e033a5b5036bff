package storage

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/cockroachdb/pebble/v2"
)

// pebbleLogger adapts slog to Pebble's printf-style Logger.
type pebbleLogger struct{ l *slog.Logger }

func (p pebbleLogger) Infof(format string, args ...any) {
	p.l.Debug(fmt.Sprintf(format, args...))
}

func (p pebbleLogger) Errorf(format string, args ...any) {
	p.l.Error(fmt.Sprintf(format, args...))
}

// Fatalf is called by Pebble when it cannot continue; the process exits as
// Pebble requires.
func (p pebbleLogger) Fatalf(format string, args ...any) {
	p.l.Error("fatal: " + fmt.Sprintf(format, args...))
	os.Exit(1)
}

// ErrDiskFailed reports that the engine's disk failed in a way the engine
// cannot get past by itself: Pebble's background work (a flush, a
// compaction) met an I/O error (EIO), a filesystem remounted read-only
// (EROFS, as ext4 does on disk errors with errors=remount-ro), a corrupt
// filesystem or a device that is gone (diskFailureErrnos), or Pebble found
// corrupt data, in the background or in a read. Pebble would retry a failed flush for ever while its memtables
// fill and writes stop; the owner should stop the process instead, so that
// the cluster counts the node down and rebuilds its replicas from the
// others. A full disk (ENOSPC) is not such a failure: Pebble retries, and
// space freed lets it go on.
var ErrDiskFailed = errors.New("storage: disk failed")

// diskFailure reports whether err, from Pebble's background work, is one
// ErrDiskFailed stands for.
func diskFailure(err error) bool {
	for _, errno := range diskFailureErrnos {
		if errors.Is(err, errno) {
			return true
		}
	}
	return pebble.IsCorruptionError(err)
}

// diskFailureErrnos are the system errors that say the disk or its
// filesystem is broken rather than busy or full: an I/O error, a
// filesystem remounted read-only, one that found itself corrupt (ext4 and
// XFS report EUCLEAN, EFSCORRUPTED, and EBADMSG, EFSBADCRC), a device that
// is gone.
var diskFailureErrnos = [...]syscall.Errno{syscall.EIO, syscall.EROFS, syscall.EUCLEAN, syscall.EBADMSG, syscall.ENODEV, syscall.ENXIO}

// logLimiter lets through at most one log line per interval and counts
// those it held back. A failing flush is retried at once, again and again:
// its errors must not flood the log (and the disk it may be on).
type logLimiter struct {
	every time.Duration

	mu      sync.Mutex
	last    time.Time
	dropped int
}

// allow reports whether a line may be logged now, and how many were held
// back since the last one.
func (l *logLimiter) allow(now time.Time) (bool, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if !l.last.IsZero() && now.Sub(l.last) < l.every {
		l.dropped++
		return false, 0
	}
	n := l.dropped
	l.last, l.dropped = now, 0
	return true, n
}

// reportFailure hands the engine's first failure (ErrDiskStalled,
// ErrDiskFailed) to Options.OnFailure, once.
func (e *Engine) reportFailure(err error) {
	e.failOnce.Do(func() {
		if e.onFailure != nil {
			e.onFailure(err)
		}
	})
}

// eventListener turns the Pebble events an operator cares about into logs,
// and those that say the disk failed into a report (reportFailure).
func (e *Engine) eventListener() *pebble.EventListener {
	l := e.log
	bgLogs, corruptLogs := &logLimiter{every: 10 * time.Second}, &logLimiter{every: 10 * time.Second}
	return &pebble.EventListener{
		BackgroundError: func(err error) {
			if diskFailure(err) {
				e.reportFailure(fmt.Errorf("%w: %w", ErrDiskFailed, err))
			}
			// Off Pebble's goroutine, as the stall's logs: the log may
			// be on the failing disk.
			if ok, dropped := bgLogs.allow(time.Now()); ok {
				go l.Error("background error", "err", err, "not_logged_since_last", dropped)
			}
		},
		DataCorruption: func(info pebble.DataCorruptionInfo) {
			e.reportFailure(fmt.Errorf("%w: corrupt data in %s: %w", ErrDiskFailed, info.Path, info.Details))
			// Every read of a corrupt table says so: limited like the
			// background errors.
			if ok, dropped := corruptLogs.allow(time.Now()); ok {
				go l.Error("data corruption", "path", info.Path, "err", info.Details, "not_logged_since_last", dropped)
			}
		},
		WriteStallBegin: func(info pebble.WriteStallBeginInfo) { l.Warn("write stall begin", "reason", info.Reason) },
		WriteStallEnd:   func() { l.Info("write stall end") },
	}
}
