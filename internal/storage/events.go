package storage

import (
	"fmt"
	"log/slog"
	"os"

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

// eventListener turns the Pebble events an operator cares about into logs.
func (e *Engine) eventListener() *pebble.EventListener {
	l := e.log
	return &pebble.EventListener{
		BackgroundError: func(err error) { l.Error("background error", "err", err) },
		DataCorruption: func(info pebble.DataCorruptionInfo) {
			l.Error("data corruption", "path", info.Path, "err", info.Details)
		},
		WriteStallBegin: func(info pebble.WriteStallBeginInfo) { l.Warn("write stall begin", "reason", info.Reason) },
		WriteStallEnd:   func() { l.Info("write stall end") },
	}
}
