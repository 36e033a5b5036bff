package storage

import (
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// The detector fails the engine once an operation has been in flight for
// maxStall and it has watched the stall, with reports 2 seconds apart as
// Pebble sends them, for maxStall less the slow threshold.
func TestStallDetectorFailsOnceAfterMaxStall(t *testing.T) {
	clock := &fakeClock{now: time.Unix(1000, 0)}
	var got []error
	d := newStallDetector(20*time.Second, slog.New(slog.DiscardHandler), func(err error) { got = append(got, err) })
	d.now = clock.Now
	if d.slow != 5*time.Second {
		t.Fatalf("slow threshold %v, want 5s", d.slow)
	}
	info := vfs.DiskSlowInfo{Path: "/data/000012.log", OpType: vfs.OpTypeSync}
	// A sync starts at 1000 s; Pebble reports it from 5 s on, every 2 s.
	for age := 5 * time.Second; age <= 30*time.Second; age += 2 * time.Second {
		clock.now = time.Unix(1000, 0).Add(age)
		info.Duration = age
		d.report(info)
		if age < 20*time.Second && len(got) > 0 {
			t.Fatalf("failed after %v, before the 20s limit: %v", age, got[0])
		}
	}
	if len(got) != 1 {
		t.Fatalf("failures reported: %d, want exactly 1", len(got))
	}
	if !errors.Is(got[0], ErrDiskStalled) || !strings.Contains(got[0].Error(), "sync of /data/000012.log has not returned for 21s") {
		t.Fatalf("error %q: want ErrDiskStalled naming the sync, its file and 21s", got[0])
	}
}

// A process that was stopped (SIGSTOP) during a sync sees, once resumed, a
// sync as old as the pause: that alone is not a stall.
func TestStallDetectorIgnoresAStoppedProcess(t *testing.T) {
	clock := &fakeClock{now: time.Unix(1000, 0)}
	failed := 0
	d := newStallDetector(20*time.Second, slog.New(slog.DiscardHandler), func(error) { failed++ })
	d.now = clock.Now
	info := vfs.DiskSlowInfo{Path: "/data/000012.log", OpType: vfs.OpTypeSync}

	// Stopped for a minute in the middle of a sync; resumed, the monitor
	// reports it once before the sync returns.
	clock.advance(60 * time.Second)
	info.Duration = 60 * time.Second
	d.report(info)
	if failed != 0 {
		t.Fatal("a sync as old as a stop of the whole process failed the engine")
	}
	// A real stall watched from then on fails it once the watch has
	// lasted the limit less the slow threshold (15 s).
	for i := 0; i < 7; i++ {
		clock.advance(2 * time.Second)
		info.Duration += 2 * time.Second
		d.report(info)
	}
	if failed != 0 {
		t.Fatal("failed after watching the stall for 14s, less than 15s")
	}
	clock.advance(2 * time.Second)
	info.Duration += 2 * time.Second
	d.report(info)
	if failed != 1 {
		t.Fatalf("failures after watching the stall for 16s: %d, want 1", failed)
	}

	// A gap longer than reportGap starts the watch again.
	d2 := newStallDetector(20*time.Second, slog.New(slog.DiscardHandler), func(error) { failed++ })
	d2.now = clock.Now
	info.Duration = 10 * time.Second
	d2.report(info)
	clock.advance(10 * time.Second)
	info.Duration = 50 * time.Second
	d2.report(info)
	if failed != 1 {
		t.Fatal("a watch broken by a 10 s silence counted as continuous")
	}
}

func TestStallDetectorOffOnlyLogs(t *testing.T) {
	clock := &fakeClock{now: time.Unix(1000, 0)}
	logs := &lockedBuffer{wrote: make(chan struct{}, 100)}
	d := newStallDetector(-1, slog.New(slog.NewTextHandler(logs, nil)), func(error) { t.Fatal("failed with the limit off") })
	d.now = clock.Now
	info := vfs.DiskSlowInfo{Path: "/data/000012.log", OpType: vfs.OpTypeWrite}
	for i := 0; i < 30; i++ { // a minute of reports
		info.Duration = 5*time.Second + time.Duration(i)*2*time.Second
		d.report(info)
		clock.advance(2 * time.Second)
	}
	// Logged at most every 10 s: 6 lines for 60 s. They are written on
	// goroutines of their own: wait for them (no more can come).
	deadline := time.After(10 * time.Second)
	for strings.Count(logs.String(), "disk slow") < 6 {
		select {
		case <-logs.wrote:
		case <-deadline:
			t.Fatalf("log lines after 10 s:\n%s", logs.String())
		}
	}
	if n := strings.Count(logs.String(), "disk slow"); n != 6 {
		t.Fatalf("%d log lines for a minute of slow writes, want 6:\n%s", n, logs.String())
	}
}

// lockedBuffer is a log destination safe for concurrent writers.
type lockedBuffer struct {
	mu    sync.Mutex
	b     strings.Builder
	wrote chan struct{} // a value per write, if there is room
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	n, err := l.b.Write(p)
	l.mu.Unlock()
	select {
	case l.wrote <- struct{}{}:
	default:
	}
	return n, err
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}
