package storage

import (
	"context"
	"fmt"

	"github.com/cockroachdb/pebble/v2/objstorage/objstorageprovider"
	"github.com/cockroachdb/pebble/v2/sstable"
	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/shoaldb/shoal/internal/keys"
)

// SSTWriter builds one SST file for Ingest. Point keys must be added in
// strictly increasing order; range deletions in increasing, non-overlapping
// order. A range deletion and points in the same file do not affect each
// other: once ingested, the deletion removes only older data.
type SSTWriter struct {
	w      *sstable.Writer
	closed bool
	path   string
	keys   int
	bytes  int64
}

// CreateSST creates an SST file at path on the engine's filesystem.
func (e *Engine) CreateSST(path string) (*SSTWriter, error) {
	f, err := e.fs.Create(path, "")
	if err != nil {
		return nil, fmt.Errorf("storage: create sst %s: %w", path, err)
	}
	// Synced every 512 KiB on the way, as Pebble syncs its own tables, so
	// that the final sync of a large file is short: a sync hung for
	// Options.MaxStall fails the engine.
	f = vfs.NewSyncingFile(f, vfs.SyncingFileOptions{BytesPerSync: sstBytesPerSync})
	opts := e.po.MakeWriterOptions(0, e.db.FormatMajorVersion().MaxTableFormat())
	return &SSTWriter{w: sstable.NewWriter(objstorageprovider.NewFileWritable(f), opts), path: path}, nil
}

const sstBytesPerSync = 512 << 10

// Set adds a key.
func (w *SSTWriter) Set(key, value []byte) error {
	w.keys++
	w.bytes += int64(len(key) + len(value))
	if err := w.w.Set(key, value); err != nil {
		return fmt.Errorf("storage: sst %s: %w", w.path, err)
	}
	return nil
}

// DeleteSpan adds a deletion of every older key in span.
func (w *SSTWriter) DeleteSpan(span keys.Span) error {
	if err := w.w.DeleteRange(span.Start, span.End); err != nil {
		return fmt.Errorf("storage: sst %s: %w", w.path, err)
	}
	return nil
}

// Keys returns how many keys were added; Bytes their total size.
func (w *SSTWriter) Keys() int { return w.keys }

// Bytes returns the total size of the keys and values added.
func (w *SSTWriter) Bytes() int64 { return w.bytes }

// Path returns the file's path.
func (w *SSTWriter) Path() string { return w.path }

// Abort closes the file, if Close has not been called, so that its handle
// (and the disk health check watching it) is released; the caller removes
// it. The writer writes blocks on a goroutine of its own, so the file is
// finished as by Close rather than closed under it.
func (w *SSTWriter) Abort() {
	if !w.closed {
		_ = w.Close()
	}
}

// Close finishes and syncs the file.
func (w *SSTWriter) Close() error {
	w.closed = true
	if err := w.w.Close(); err != nil {
		return fmt.Errorf("storage: finish sst %s: %w", w.path, err)
	}
	return nil
}

// Ingest adds the SST files at paths to the database atomically and
// durably: afterwards each file's range deletions and keys are visible
// together, above every earlier write. The files must not overlap each
// other. They are moved into the database (or copied, then may be removed).
func (e *Engine) Ingest(ctx context.Context, paths []string) error {
	if err := e.db.Ingest(ctx, paths); err != nil {
		return fmt.Errorf("storage: ingest: %w", err)
	}
	return nil
}

// EstimateDiskUsage returns an estimate of the bytes span takes on disk.
func (e *Engine) EstimateDiskUsage(span keys.Span) (uint64, error) {
	n, err := e.db.EstimateDiskUsage(span.Start, span.End)
	if err != nil {
		return 0, fmt.Errorf("storage: estimate: %w", err)
	}
	return n, nil
}
