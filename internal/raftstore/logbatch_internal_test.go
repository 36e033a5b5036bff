package raftstore

import (
	"errors"
	"testing"

	"github.com/shoaldb/shoal/internal/storage"
)

// A write that fails halfway through staging into the shared log batch
// (a truncation that deleted its entries and then failed to record the
// new first index, say) keeps the whole batch from being committed.
func TestLogBatchDroppedAfterFailedWrite(t *testing.T) {
	eng, err := storage.Open(storage.Options{Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer eng.Close()
	s := &Store{eng: eng}
	if err := s.stageLog(false, func(b *storage.Batch) error { return b.Set([]byte("a"), []byte("1"), nil) }); err != nil {
		t.Fatal(err)
	}
	failed := errors.New("failed halfway")
	if err := s.stageLog(true, func(b *storage.Batch) error {
		if err := b.Set([]byte("b"), []byte("2"), nil); err != nil {
			return err
		}
		return failed
	}); !errors.Is(err, failed) {
		t.Fatalf("stageLog: %v", err)
	}
	if err := s.commitLog(); !errors.Is(err, failed) {
		t.Fatalf("commitLog after a failed write: %v, want that failure", err)
	}
	for _, k := range []string{"a", "b"} {
		if _, ok, err := storage.Get(eng.Reader(), []byte(k)); ok || err != nil {
			t.Fatalf("key %q was committed (%v)", k, err)
		}
	}
	// The next iteration's batch is a new one.
	if err := s.stageLog(false, func(b *storage.Batch) error { return b.Set([]byte("c"), []byte("3"), nil) }); err != nil {
		t.Fatal(err)
	}
	if err := s.commitLog(); err != nil {
		t.Fatal(err)
	}
	if _, ok, err := storage.Get(eng.Reader(), []byte("c")); !ok || err != nil {
		t.Fatalf("key c: %v %v", ok, err)
	}
}
