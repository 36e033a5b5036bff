package storage

import (
	"errors"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
)

// fakeClock is a clock the test moves by hand (advance), safe to read
// from the guard's background measurements.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func TestSpaceGuardRefusesBelowReserve(t *testing.T) {
	fs := vfs.NewMem()
	clock := &fakeClock{now: time.Unix(1000, 0)}
	fs.TestingSetDiskUsage(vfs.DiskUsage{AvailBytes: 200 << 20, TotalBytes: 1 << 40})
	g := NewSpaceGuard(fs, "/data", SpaceOptions{Reserve: 100 << 20, Clock: clock.Now})
	if err := g.Check(); err != nil {
		t.Fatalf("200 MiB free, 100 reserved: %v", err)
	}

	// The measurement is kept for MaxAge (100ms by default): a change is
	// seen only once it has passed.
	fs.TestingSetDiskUsage(vfs.DiskUsage{AvailBytes: 99 << 20, TotalBytes: 1 << 40})
	clock.advance(99 * time.Millisecond)
	if err := g.Check(); err != nil {
		t.Fatalf("within MaxAge of the last measurement: %v", err)
	}
	clock.advance(time.Millisecond)
	g.Status() // Check answers from the last measurement: take one now
	err := g.Check()
	if !errors.Is(err, ErrDiskFull) {
		t.Fatalf("99 MiB free, 100 reserved: got %v, want ErrDiskFull", err)
	}
	if want := "disk full: 99 MiB free, below the reserve of 100 MiB; only deletes are accepted until space is freed"; err.Error() != want {
		t.Fatalf("message %q, want %q", err, want)
	}
	if s := g.Status(); !s.Full || !s.Known || s.Available != 99<<20 || s.Reserve != 100<<20 {
		t.Fatalf("status %+v", s)
	}

	if g.Exhausted() {
		t.Fatal("99 MiB free, 100 reserved: replication refused; it should be only below half")
	}
	fs.TestingSetDiskUsage(vfs.DiskUsage{AvailBytes: 49 << 20, TotalBytes: 1 << 40})
	clock.advance(100 * time.Millisecond)
	g.Status()
	if !g.Exhausted() {
		t.Fatal("49 MiB free, 100 reserved: replication still taken")
	}
	if s := g.Status(); !s.Full || !s.Exhausted {
		t.Fatalf("status %+v", s)
	}
	// Once exhausted, until 10% more than half the reserve is free.
	fs.TestingSetDiskUsage(vfs.DiskUsage{AvailBytes: 54 << 20, TotalBytes: 1 << 40})
	clock.advance(100 * time.Millisecond)
	g.Status()
	if !g.Exhausted() {
		t.Fatal("54 MiB free after being exhausted, 100 reserved: replication taken again before 55 MiB")
	}
	fs.TestingSetDiskUsage(vfs.DiskUsage{AvailBytes: 56 << 20, TotalBytes: 1 << 40})
	clock.advance(100 * time.Millisecond)
	g.Status()
	if g.Exhausted() {
		t.Fatal("56 MiB free, 100 reserved: replication still refused")
	}

	// Once full, the disk stays so until 10% more than the reserve is
	// free.
	fs.TestingSetDiskUsage(vfs.DiskUsage{AvailBytes: 109 << 20, TotalBytes: 1 << 40})
	clock.advance(100 * time.Millisecond)
	g.Status()
	if err := g.Check(); !errors.Is(err, ErrDiskFull) {
		t.Fatalf("109 MiB free after being full, 100 reserved: got %v, want still ErrDiskFull", err)
	}
	if g.Exhausted() {
		t.Fatal("109 MiB free: replication refused")
	}
	fs.TestingSetDiskUsage(vfs.DiskUsage{AvailBytes: 110 << 20, TotalBytes: 1 << 40})
	clock.advance(100 * time.Millisecond)
	g.Status()
	if err := g.Check(); err != nil {
		t.Fatalf("110 MiB free, 100 reserved: %v", err)
	}
	// And a fresh fall below the reserve counts again at the reserve.
	fs.TestingSetDiskUsage(vfs.DiskUsage{AvailBytes: 100 << 20, TotalBytes: 1 << 40})
	clock.advance(100 * time.Millisecond)
	g.Status()
	if err := g.Check(); err != nil {
		t.Fatalf("exactly the reserve free, not full before: %v", err)
	}
	// A snapshot needs room for itself above the reserve.
	if err := g.CheckRoom(1 << 20); !errors.Is(err, ErrDiskFull) {
		t.Fatalf("room for 1 MiB with the reserve just free: %v, want ErrDiskFull", err)
	}
	fs.TestingSetDiskUsage(vfs.DiskUsage{AvailBytes: 101 << 20, TotalBytes: 1 << 40})
	clock.advance(100 * time.Millisecond)
	if err := g.CheckRoom(1 << 20); err != nil {
		t.Fatalf("room for 1 MiB with 101 MiB free, 100 reserved: %v", err)
	}
}

// TestSpaceGuardChecksDoNotWait: a check that finds a measurement due
// starts it in the background and answers from the last one, full or
// not, so a filesystem that hangs stalls no write.
func TestSpaceGuardChecksDoNotWait(t *testing.T) {
	fs := &blockingUsageFS{FS: vfs.NewMem(), asked: make(chan struct{}), release: make(chan struct{})}
	clock := &fakeClock{now: time.Unix(1000, 0)}
	g := NewSpaceGuard(fs, "/data", SpaceOptions{Reserve: 100 << 20, Clock: clock.Now}) // 1 GiB free
	clock.advance(100 * time.Millisecond)
	if err := g.Check(); err != nil {
		t.Fatalf("1 GiB free: %v", err)
	}
	<-fs.asked // the background measurement is stuck in statfs
	if err, ex := g.Check(), g.Exhausted(); err != nil || ex {
		t.Fatalf("while statfs hangs: %v, exhausted %v; want the last answer", err, ex)
	}
	fs.release <- struct{}{} // it finds 1 MiB free
	// Status waits for the measurement under way, which holds the lock,
	// and (the clock standing still) takes no other.
	if s := g.Status(); !s.Full || !s.Exhausted {
		t.Fatalf("after the background measurement (1 MiB free): %+v", s)
	}

	// The background measurement may still be returning (it clears its
	// flag after Status); until it has, no check starts another.
	for deadline := time.Now().Add(10 * time.Second); g.measuring.Load(); {
		if time.Now().After(deadline) {
			t.Fatal("the background measurement did not finish")
		}
		runtime.Gosched()
	}

	// Full, the answer (with its message) does not wait either.
	clock.advance(100 * time.Millisecond)
	if err := g.Check(); !errors.Is(err, ErrDiskFull) {
		t.Fatalf("1 MiB free: %v", err)
	}
	<-fs.asked
	if err, ex := g.Check(), g.Exhausted(); !errors.Is(err, ErrDiskFull) || !ex {
		t.Fatalf("full, while statfs hangs: %v, exhausted %v", err, ex)
	}
	// Heartbeats and metrics read Cached, which does not wait either and
	// gives the last measurement whole.
	done := make(chan SpaceStatus, 1)
	go func() { done <- g.Cached() }()
	select {
	case s := <-done:
		if !s.Known || !s.Full || s.Available != 1<<20 {
			t.Fatalf("cached status while statfs hangs: %+v, want the last measurement (1 MiB free, full)", s)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Cached waited for a hung statfs")
	}
	fs.release <- struct{}{}
	g.Status()
}

// blockingUsageFS reports 1 GiB free when first asked; each later call
// says it was asked, waits to be released and reports 1 MiB free.
type blockingUsageFS struct {
	vfs.FS
	calls   atomic.Int32
	asked   chan struct{}
	release chan struct{}
}

func (f *blockingUsageFS) GetDiskUsage(string) (vfs.DiskUsage, error) {
	if f.calls.Add(1) == 1 {
		return vfs.DiskUsage{AvailBytes: 1 << 30, TotalBytes: 1 << 40}, nil
	}
	f.asked <- struct{}{}
	<-f.release
	return vfs.DiskUsage{AvailBytes: 1 << 20, TotalBytes: 1 << 40}, nil
}

func TestSpaceGuardDefaultsAndOff(t *testing.T) {
	fs := vfs.NewMem()
	// Unmeasurable (MemFS without usage): nothing is refused.
	if err := NewSpaceGuard(fs, "/data", SpaceOptions{}).Check(); err != nil {
		t.Fatalf("unknown free space: %v", err)
	}
	for _, tc := range []struct {
		total, want uint64
	}{
		{total: 1 << 40, want: DefaultSpaceReserve}, // 1 TiB: the cap
		{total: 4 << 30, want: (4 << 30) / 20},      // 4 GiB: 5%
	} {
		fs.TestingSetDiskUsage(vfs.DiskUsage{AvailBytes: 1, TotalBytes: tc.total})
		g := NewSpaceGuard(fs, "/data", SpaceOptions{})
		if s := g.Status(); s.Reserve != int64(tc.want) || !s.Full {
			t.Errorf("total %d: status %+v, want reserve %d and full", tc.total, s, tc.want)
		}
	}
	g := NewSpaceGuard(fs, "/data", SpaceOptions{Reserve: -1})
	if err, ex := g.Check(), g.Exhausted(); err != nil || ex {
		t.Fatalf("reserve off, 1 byte free: %v, exhausted %v", err, ex)
	}
	var none *SpaceGuard
	if err, ex := none.Check(), none.Exhausted(); err != nil || ex {
		t.Fatalf("nil guard: %v, exhausted %v", err, ex)
	}
}

// TestSpaceGuardOnTmpfs fills a real (tmpfs) filesystem past the reserve
// and frees it again. It needs to mount, so it runs as root only.
func TestSpaceGuardOnTmpfs(t *testing.T) {
	dir := t.TempDir()
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=64m"); err != nil {
		t.Skipf("cannot mount a tmpfs (needs root): %v", err)
	}
	t.Cleanup(func() { _ = syscall.Unmount(dir, 0) })
	clock := &fakeClock{now: time.Unix(1000, 0)}
	g := NewSpaceGuard(vfs.Default, dir, SpaceOptions{Reserve: 16 << 20, Clock: clock.Now})
	g.Status()
	if err := g.Check(); err != nil {
		t.Fatalf("empty 64 MiB tmpfs: %v", err)
	}
	filler := filepath.Join(dir, "filler")
	if err := os.WriteFile(filler, make([]byte, 56<<20), 0o600); err != nil {
		t.Fatal(err)
	}
	clock.advance(time.Second)
	g.Status()
	if err := g.Check(); !errors.Is(err, ErrDiskFull) {
		t.Fatalf("8 MiB free of 64, 16 reserved: got %v, want ErrDiskFull", err)
	}
	if err := os.Remove(filler); err != nil {
		t.Fatal(err)
	}
	clock.advance(time.Second)
	g.Status()
	if err := g.Check(); err != nil {
		t.Fatalf("after freeing: %v", err)
	}
}

// BenchmarkSpaceGuardCheck is what every write pays for the guard while the
// disk has room: a clock read and two atomic loads, measuring the real
// filesystem every 100ms.
func BenchmarkSpaceGuardCheck(b *testing.B) {
	g := NewSpaceGuard(vfs.Default, b.TempDir(), SpaceOptions{Reserve: 1})
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			if err := g.Check(); err != nil {
				b.Fatal(err)
			}
		}
	})
}
