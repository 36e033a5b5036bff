package storage_test

import (
	"errors"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/shoaldb/shoal/internal/faultfs"
	"github.com/shoaldb/shoal/internal/storage"
)

// A real Pebble whose disk stops answering a sync reports ErrDiskStalled
// once the sync has hung for MaxStall, while the commit still waits; when
// the disk answers again the commit completes.
func TestEngineReportsStalledDisk(t *testing.T) {
	fs := faultfs.New(vfs.NewMem())
	stalled := make(chan error, 1)
	e, err := storage.Open(storage.Options{Dir: "db", FS: fs, CacheBytes: 1 << 20, MemTableBytes: 1 << 20,
		MaxStall: time.Second, OnFailure: func(err error) { stalled <- err }, Logger: testLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	commit(t, e, true, "before", "1")

	fs.Stall()
	committed := make(chan error, 1)
	start := time.Now()
	go func() {
		b := e.NewBatch()
		defer b.Close()
		if err := b.Set([]byte("during"), []byte("2"), nil); err != nil {
			committed <- err
			return
		}
		committed <- b.Commit(true)
	}()
	select {
	case err := <-stalled:
		if !errors.Is(err, storage.ErrDiskStalled) {
			t.Fatalf("OnFailure got %v, want ErrDiskStalled", err)
		}
		if d := time.Since(start); d < time.Second {
			t.Fatalf("reported a stall after %v, before MaxStall (1s)", d)
		}
		t.Logf("stall reported after %v: %v", time.Since(start).Round(time.Millisecond), err)
	case err := <-committed:
		t.Fatalf("the commit returned (%v) while the disk was stalled", err)
	case <-time.After(30 * time.Second):
		t.Fatal("no stall reported 30s after the disk stopped answering")
	}
	if fs.Held() == 0 {
		t.Fatal("nothing is held by the stalled disk")
	}
	select {
	case err := <-committed:
		t.Fatalf("the commit returned (%v) while the disk was stalled", err)
	default:
	}

	fs.Resume()
	select {
	case err := <-committed:
		if err != nil {
			t.Fatalf("commit after the disk answered again: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the commit did not return once the disk answered again")
	}
	if v, ok, err := e.Get([]byte("during")); err != nil || !ok || string(v) != "2" {
		t.Fatalf("during = %q, %v, %v after the stall; want 2", v, ok, err)
	}
	select {
	case err := <-stalled:
		t.Fatalf("a second stall reported: %v", err)
	default:
	}
}
