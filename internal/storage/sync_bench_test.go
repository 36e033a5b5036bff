package storage_test

import (
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// BenchmarkSyncCPU measures what one fdatasync of a 2 KiB write costs this
// process in CPU time (user and system), on the disk under the test's
// temporary directory: overwriting a file whose size does not change (as a
// recycled WAL) and appending to one (as a new WAL). It is why
// Options.MinSyncInterval pays: a sync is not only waiting.
//
//	go test -run '^$' -bench SyncCPU -benchtime 3s ./internal/storage/
func BenchmarkSyncCPU(b *testing.B) {
	for _, mode := range []string{"overwrite", "append"} {
		b.Run(mode, func(b *testing.B) {
			f, err := os.Create(filepath.Join(b.TempDir(), "wal"))
			if err != nil {
				b.Fatal(err)
			}
			defer f.Close()
			buf := make([]byte, 2<<10)
			if mode == "overwrite" {
				if _, err := f.Write(make([]byte, 64<<20)); err != nil {
					b.Fatal(err)
				}
				if err := f.Sync(); err != nil {
					b.Fatal(err)
				}
			}
			cpu0 := cpuTime(b)
			b.ResetTimer()
			for i := range b.N {
				if mode == "overwrite" && i > 0 && i%(64<<20/len(buf)) == 0 {
					if _, err := f.Seek(0, 0); err != nil {
						b.Fatal(err)
					}
				}
				if _, err := f.Write(buf); err != nil {
					b.Fatal(err)
				}
				if err := syscall.Fdatasync(int(f.Fd())); err != nil {
					b.Fatal(err)
				}
			}
			b.StopTimer()
			b.ReportMetric(float64((cpuTime(b)-cpu0).Microseconds())/float64(b.N), "cpu-µs/sync")
		})
	}
}

func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
