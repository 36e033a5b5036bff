package storage

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/shoaldb/shoal/internal/faultfs"
)

// A real Pebble whose disk fails the tables a flush creates: an I/O error
// or a read-only filesystem is reported once as ErrDiskFailed (Pebble alone
// would retry the flush for ever while its memtables fill), a full disk is
// not; the retries' errors are logged at most every 10 s; and once the
// disk is healed the flush goes through and nothing written is lost.
func TestEngineReportsFailedDisk(t *testing.T) {
	for _, c := range []struct {
		name  string
		err   error
		fails bool
	}{
		{"EIO", syscall.EIO, true},
		{"EROFS", syscall.EROFS, true},
		{"EUCLEAN", syscall.EUCLEAN, true},
		{"ENOSPC", syscall.ENOSPC, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			fs := faultfs.New(vfs.NewMem())
			failed := make(chan error, 10)
			logs := &lockedBuffer{wrote: make(chan struct{}, 1)}
			e, err := Open(Options{Dir: "db", FS: fs, CacheBytes: 1 << 20, MemTableBytes: 1 << 20,
				OnFailure: func(err error) { failed <- err }, Logger: slog.New(slog.NewTextHandler(logs, nil))})
			if err != nil {
				t.Fatal(err)
			}
			defer e.Close()

			fs.FailCreates(".sst", c.err)
			start := time.Now()
			// 1.5 MiB: more than a memtable, which Pebble then flushes to a
			// table, and less than two, so that writes do not stop.
			val := bytes.Repeat([]byte("v"), 1024)
			for i := range 1536 {
				b := e.NewBatch()
				if err := b.Set(fmt.Appendf(nil, "key-%04d", i), val, nil); err != nil {
					t.Fatal(err)
				}
				if err := b.Commit(false); err != nil {
					t.Fatalf("commit %d: %v", i, err)
				}
				b.Close()
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			// Each retry creates the table anew after the previous
			// attempt's error was handed to the listener.
			waitUntil(t, ctx, "the flush to fail twice", func() bool { return fs.Failed() >= 2 })
			if c.fails {
				select {
				case err := <-failed:
					if !errors.Is(err, ErrDiskFailed) || !errors.Is(err, c.err) {
						t.Fatalf("OnFailure got %v, want ErrDiskFailed wrapping %v", err, c.err)
					}
					t.Logf("reported: %v", err)
				case <-ctx.Done():
					t.Fatal("no failure reported")
				}
			} else {
				select {
				case err := <-failed:
					t.Fatalf("a full disk reported as a failure: %v", err)
				default:
				}
			}

			fs.Heal()
			waitUntil(t, ctx, "a flush once the disk is healed", func() bool { return e.Metrics().Flush.Count > 0 })
			elapsed := time.Since(start)
			for _, i := range []int{0, 1535} {
				if v, ok, err := e.Get(fmt.Appendf(nil, "key-%04d", i)); err != nil || !ok || !bytes.Equal(v, val) {
					t.Fatalf("key-%04d after the flush: %d bytes, %v, %v", i, len(v), ok, err)
				}
			}
			select {
			case err := <-failed:
				t.Fatalf("a second failure reported: %v", err)
			default:
			}
			// The first error is logged (on a goroutine of its own); the
			// hundreds of retries after it within 10 s are not.
			waitUntil(t, ctx, "the first error's log", func() bool { return strings.Contains(logs.String(), "background error") })
			if n, most := strings.Count(logs.String(), "background error"), 1+int(elapsed/(10*time.Second)); n > most {
				t.Fatalf("%d background errors logged in %v for %d failed flushes, want at most %d:\n%s",
					n, elapsed, fs.Failed(), most, logs.String())
			}
			t.Logf("%d failed flushes in %v", fs.Failed(), elapsed.Round(time.Millisecond))
		})
	}
}

func TestLogLimiter(t *testing.T) {
	l := &logLimiter{every: 10 * time.Second}
	t0 := time.Unix(1000, 0)
	for _, c := range []struct {
		at      time.Duration
		ok      bool
		dropped int
	}{{0, true, 0}, {time.Second, false, 0}, {9 * time.Second, false, 0}, {10 * time.Second, true, 2}, {11 * time.Second, false, 0}, {time.Minute, true, 1}} {
		if ok, dropped := l.allow(t0.Add(c.at)); ok != c.ok || dropped != c.dropped {
			t.Fatalf("at %v: allow = %v, %d; want %v, %d", c.at, ok, dropped, c.ok, c.dropped)
		}
	}
}

// waitUntil polls cond until it holds or ctx ends.
func waitUntil(t *testing.T, ctx context.Context, what string, cond func() bool) {
	t.Helper()
	for !cond() {
		select {
		case <-ctx.Done():
			t.Fatalf("waiting for %s: %v", what, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}
