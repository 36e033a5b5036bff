// Command tracewaits lists the long waits in Go execution traces of Shoal
// nodes (bench/compare.sh TRACE=1): every time a goroutine whose stack
// contains -match stayed blocked (on a channel, a lock, a condition, a
// system call) for at least -min, with when it began, counted from the
// trace's start, and the innermost frames of its stack; then the longest.
// docs/benchmarks.md's figures for the open-loop write tail came from it:
//
//	cd bench/tracewaits
//	go run . -min 25ms -match commitPipeline /tmp/r1/shoal-resp-w.node*.trace
//	go run . -min 30ms -match 'raftstore.(*proposal).wait' /tmp/r1/shoal-resp-w.node1.trace
//	go run . -min 15ms -match Fdatasync /tmp/r1/shoal-resp-w.node1.trace
//
// It is a module of its own so that Shoal does not depend on
// golang.org/x/exp, where the trace reader lives.
package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	"golang.org/x/exp/trace"
)

func main() {
	min := flag.Duration("min", 25*time.Millisecond, "shortest wait listed")
	match := flag.String("match", "", "list only goroutines whose stack, at the wait, has a function containing this")
	frames := flag.Int("frames", 6, "innermost stack frames printed")
	flag.Parse()
	if flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: tracewaits [-min D] [-match S] TRACE...")
		os.Exit(2)
	}
	for _, path := range flag.Args() {
		if err := list(path, *min, *match, *frames); err != nil {
			fmt.Fprintf(os.Stderr, "%s: %v\n", path, err)
			os.Exit(1)
		}
	}
}

// wait is one blocked stretch of a goroutine.
type wait struct {
	at, d time.Duration // since the trace's start; how long
	state trace.GoState
	g     trace.GoID
	stack string
}

func list(path string, min time.Duration, match string, frames int) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	r, err := trace.NewReader(f)
	if err != nil {
		return err
	}
	type blocked struct {
		since trace.Time
		state trace.GoState
		stack string
	}
	var start trace.Time
	open := map[trace.GoID]blocked{}
	var waits []wait
	for {
		ev, err := r.ReadEvent()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return err
		}
		if start == 0 {
			start = ev.Time()
		}
		if ev.Kind() != trace.EventStateTransition {
			continue
		}
		st := ev.StateTransition()
		if st.Resource.Kind != trace.ResourceGoroutine {
			continue
		}
		g := st.Resource.Goroutine()
		from, to := st.Goroutine()
		if b, ok := open[g]; ok && b.state == from {
			delete(open, g)
			if d := ev.Time().Sub(b.since); d >= min && strings.Contains(b.stack, match) {
				waits = append(waits, wait{at: b.since.Sub(start), d: d, state: from, g: g, stack: b.stack})
			}
		}
		if to == trace.GoWaiting || to == trace.GoSyscall {
			open[g] = blocked{since: ev.Time(), state: to, stack: stackOf(ev.Stack(), frames)}
		}
	}
	sort.Slice(waits, func(i, j int) bool { return waits[i].at < waits[j].at })
	fmt.Printf("== %s: %d waits of at least %v\n", path, len(waits), min)
	var longest wait
	for _, w := range waits {
		fmt.Printf("%8.3fs %7.1fms g%-6d %-7v %s\n", w.at.Seconds(), float64(w.d)/1e6, w.g, w.state, w.stack)
		if w.d > longest.d {
			longest = w
		}
	}
	if longest.d > 0 {
		fmt.Printf("longest: %.1f ms at %.3f s\n", float64(longest.d)/1e6, longest.at.Seconds())
	}
	return nil
}

// stackOf gives the innermost n frames of s, innermost first.
func stackOf(s trace.Stack, n int) string {
	var fns []string
	for fr := range s.Frames() {
		fn := strings.ReplaceAll(fr.Func, "github.com/cockroachdb/pebble/v2", "pebble")
		fns = append(fns, strings.ReplaceAll(fn, "github.com/shoaldb/shoal/internal/", ""))
		if len(fns) == n {
			break
		}
	}
	return strings.Join(fns, " < ")
}
