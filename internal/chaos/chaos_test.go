//go:build chaos

package chaos

import (
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/shoaldb/shoal/internal/testlog"
)

// The suite runs real processes and needs root (iptables). Knobs, by
// environment:
//
//	CHAOS_DURATION  faults per run (default 30s)
//	CHAOS_RUNS      runs per client (default 1)
//	CHAOS_CLIENTS   clients, comma separated (default go,redis)
//	CHAOS_FAULTS    faults, comma separated (default all the cluster has)
//	CHAOS_REPORTS   directory for one JSON report per run (default none)
//	CHAOS_SUMMARY   file for the summary table (markdown; default none)
//	CHAOS_BUG_RUNS  runs allowed to catch each planted bug (default 5)
//	CHAOS_SUBNET    the servers' 127.x.y (default 127.0.0), to run two at once

func envDuration(t *testing.T, name string, def time.Duration) time.Duration {
	if v := os.Getenv(name); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return d
	}
	return def
}

func envInt(t *testing.T, name string, def int) int {
	if v := os.Getenv(name); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		return n
	}
	return def
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("the chaos suite needs root for iptables (run it as root, e.g. in CI)")
	}
	if _, err := exec.LookPath("iptables"); err != nil {
		t.Fatal("the chaos suite needs iptables: apt-get install iptables")
	}
}

func buildShoal(t *testing.T, tags ...string) string {
	t.Helper()
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	bin, err := Build(ctx, root, t.TempDir(), tags...)
	if err != nil {
		t.Fatal(err)
	}
	return bin
}

// closeProc stops cl's processes and, if the test failed, logs the last
// lines of each server's log in dir.
func closeProc(t *testing.T, cl *ProcCluster, dir string, lines int) {
	if err := cl.Close(); err != nil {
		t.Error(err)
	}
	if !t.Failed() {
		return
	}
	for _, s := range cl.Servers() {
		if b, err := os.ReadFile(filepath.Join(dir, s.Name+".log")); err == nil {
			ls := strings.Split(strings.TrimSpace(string(b)), "\n")
			t.Logf("--- last lines of %s.log:\n%s", s.Name, strings.Join(ls[max(0, len(ls)-lines):], "\n"))
		}
	}
}

func logger(t *testing.T) *slog.Logger { return testlog.New(t, slog.LevelInfo) }

// startCluster starts 3 masters and 5 nodes and waits until they serve.
func startCluster(t *testing.T, bin string) *ProcCluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	// CHAOS_SUBNET lets two suites run at once on different addresses.
	subnet := os.Getenv("CHAOS_SUBNET")
	cl, err := StartProc(ctx, ProcOptions{Bin: bin, Dir: dir, Logger: logger(t), Subnet: subnet,
		Chain: "SHOAL-CHAOS" + strings.ReplaceAll(strings.TrimPrefix(subnet, "127.0"), ".", "-")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { closeProc(t, cl, dir, 30) })
	if err := WaitReady(ctx, cl); err != nil {
		t.Fatal(err)
	}
	return cl
}

func summarize(t *testing.T, rep *Report) {
	t.Helper()
	t.Logf("client %s: %v, %d register ops (%d unknown), %d inserts (%d acked, %d unknown, %d of those present), warmup %.0f ops/s, run %.0f ops/s, linearizability %s, lost %d, final replication %v",
		rep.Client, rep.Elapsed.Round(time.Second), rep.Linearizability.Ops, rep.Linearizability.Unknown, rep.Inserts, rep.Acked,
		rep.UnknownInserts, rep.MaybePresent, rep.WarmupOpsPerSec, rep.OpsPerSec, rep.Linearizability.Result, len(rep.Lost), rep.FinalReplication.Round(time.Millisecond))
	for _, f := range rep.Faults {
		var fw []string
		for _, p := range f.FirstWrite {
			fw = append(fw, p.After.Round(time.Millisecond).String())
		}
		t.Logf("  %-9s %-40s availability %.2f (%d/%d)  first writes [%s]  full replication %v %s", f.Fault, f.Target,
			f.Availability(), f.OK, f.Attempted, strings.Join(fw, " "), f.FullReplication.Round(time.Millisecond), f.Err)
	}
	if !rep.Linearizability.OK() {
		path := filepath.Join(os.TempDir(), fmt.Sprintf("shoal-chaos-%s-%d.html", rep.Client, time.Now().UnixNano()))
		if err := rep.Linearizability.Visualize(path); err == nil {
			t.Logf("history not linearizable: see %s", path)
		}
	}
	if dir := os.Getenv("CHAOS_REPORTS"); dir != "" {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			t.Fatal(err)
		}
		b, err := json.MarshalIndent(rep, "", "  ")
		if err != nil {
			t.Fatal(err)
		}
		name := fmt.Sprintf("%s-%s-%d.json", strings.ReplaceAll(t.Name(), "/", "_"), rep.Client, time.Now().UnixNano())
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestChaos runs the workloads through the Go client and go-redis under
// every fault, and requires: traffic flowed, the register history is
// linearizable, no acknowledged insert is lost, every fault was undone and
// the cluster got back to full replication.
func TestChaos(t *testing.T) {
	requireRoot(t)
	bin := buildShoal(t)
	clients := strings.Split(os.Getenv("CHAOS_CLIENTS"), ",")
	if os.Getenv("CHAOS_CLIENTS") == "" {
		clients = []string{"go", "redis"}
	}
	runs := envInt(t, "CHAOS_RUNS", 1)
	var reports []*Report
	defer func() {
		sum := Summarize(reports).Markdown()
		t.Logf("summary:\n%s", sum)
		if f := os.Getenv("CHAOS_SUMMARY"); f != "" {
			if err := os.WriteFile(f, []byte(sum), 0o644); err != nil {
				t.Error(err)
			}
		}
	}()
	for _, cname := range clients {
		for run := range runs {
			t.Run(fmt.Sprintf("%s/%d", cname, run), func(t *testing.T) {
				cl := startCluster(t, bin)
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
				defer cancel()
				o := RunOptions{Client: cname, Duration: envDuration(t, "CHAOS_DURATION", 30*time.Second),
					Seed: uint64(time.Now().UnixNano()), Logger: logger(t)}
				if f := os.Getenv("CHAOS_FAULTS"); f != "" {
					for _, name := range strings.Split(f, ",") {
						o.Faults = append(o.Faults, Fault(name))
					}
				}
				rep, err := Run(ctx, cl, o)
				if err != nil {
					t.Fatal(err)
				}
				reports = append(reports, rep)
				summarize(t, rep)
				if p := rep.Problems(50); len(p) > 0 {
					t.Fatalf("seed %d: %s", o.Seed, strings.Join(p, "; "))
				}
			})
		}
	}
}

// TestPlantedBugs proves the checker can fail: a build whose leaders serve
// reads without ReadIndex, and one that acknowledges writes before a
// majority has them, must each be caught within CHAOS_BUG_RUNS runs.
func TestPlantedBugs(t *testing.T) {
	requireRoot(t)
	for _, bug := range []struct {
		tag    string
		faults []Fault
	}{
		{"shoal_bug_stale_reads", []Fault{FaultTransfer, FaultIsolate, FaultPause}},
		{"shoal_bug_early_ack", []Fault{FaultIsolate, FaultPartition, FaultKill}},
	} {
		t.Run(bug.tag, func(t *testing.T) {
			bin := buildShoal(t, bug.tag)
			runs := envInt(t, "CHAOS_BUG_RUNS", 5)
			for run := 1; run <= runs; run++ {
				caught := func() []string {
					cl := startCluster(t, bin)
					defer cl.Close()
					ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
					defer cancel()
					rep, err := Run(ctx, cl, RunOptions{Faults: bug.faults, Duration: 20 * time.Second,
						Seed: uint64(run), Logger: logger(t), CheckTimeout: time.Minute,
						// Few keys, many readers: stale reads show.
						Workload: WorkloadOptions{Keys: 4}})
					if err != nil {
						t.Fatal(err)
					}
					summarize(t, rep)
					return slices.DeleteFunc(rep.Problems(1), func(p string) bool { return strings.HasPrefix(p, "fault ") })
				}()
				if len(caught) > 0 {
					t.Logf("planted bug %s caught in run %d of %d: %s", bug.tag, run, runs, strings.Join(caught, "; "))
					return
				}
			}
			t.Fatalf("planted bug %s not caught in %d runs", bug.tag, runs)
		})
	}
}
