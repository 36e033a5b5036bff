// Package testlog gives tests a log/slog logger that writes to the test's
// own log (t.Log) until the test ends and drops lines after that.
//
// Servers log from goroutines of their own (Pebble's disk monitors, Raft
// loops, a stall detector's deferred lines), some of which outlive the test
// by a moment; testing panics on a t.Log after its test has completed.
// Writes hold a lock that the test's cleanup takes, so a line being written
// when the test ends is either in the log or dropped, never a panic.
package testlog

import (
	"bytes"
	"log/slog"
	"sync"
	"testing"
)

// New returns a text logger of level and above that writes to t's log.
func New(t testing.TB, level slog.Level) *slog.Logger {
	w := &writer{t: t}
	t.Cleanup(func() {
		w.mu.Lock()
		defer w.mu.Unlock()
		w.done = true
	})
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: level}))
}

type writer struct {
	t    testing.TB
	mu   sync.Mutex
	done bool
}

func (w *writer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.done {
		w.t.Log(string(bytes.TrimRight(p, "\n")))
	}
	return len(p), nil
}
