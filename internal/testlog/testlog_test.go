package testlog

import (
	"fmt"
	"log/slog"
	"strings"
	"testing"
)

// fakeTB records Log and Cleanup; everything else is the real test's.
type fakeTB struct {
	testing.TB
	lines    []string
	cleanups []func()
}

func (f *fakeTB) Log(args ...any)   { f.lines = append(f.lines, fmt.Sprint(args...)) }
func (f *fakeTB) Cleanup(fn func()) { f.cleanups = append(f.cleanups, fn) }

// Lines reach the test's log while it runs and are dropped once its
// cleanup has run, where t.Log would panic.
func TestDropsLinesAfterTheTest(t *testing.T) {
	tb := &fakeTB{TB: t}
	log := New(tb, slog.LevelInfo)
	log.Debug("below the level")
	log.Info("during the test")
	for _, fn := range tb.cleanups {
		fn()
	}
	log.Info("after the test")
	if len(tb.lines) != 1 || !strings.Contains(tb.lines[0], "msg=\"during the test\"") {
		t.Fatalf("logged %q, want the line written during the test alone", tb.lines)
	}
}
