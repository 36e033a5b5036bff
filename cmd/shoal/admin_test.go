package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protojson"

	"github.com/shoaldb/shoal/api/shoalpb"
	tc "github.com/shoaldb/shoal/internal/testcluster"
)

// startPlayground runs the playground with args until every shard is led
// and returns the master's address; the playground stops with the test.
func startPlayground(t *testing.T, args ...string) string {
	t.Helper()
	out := runPlaygroundReady(t, args...)
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) >= 4 && f[0] == "master" && f[2] == "gRPC" {
			return f[3]
		}
	}
	t.Fatalf("no master address in:\n%s", out)
	return ""
}

// runPlaygroundReady runs `shoal playground` in process (free ports, a
// temporary data directory) until the test ends, and returns what it
// printed once every shard has a leader.
func runPlaygroundReady(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	out := &tc.SyncBuffer{}
	cmd := newRootCmd(out, &tc.SyncBuffer{})
	cmd.SetArgs(append([]string{"playground", "--master-port", "0", "--log-level", "error", "--data-dir", t.TempDir()}, args...))
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("playground: %v", err)
		}
	})
	deadline := time.After(60 * time.Second)
	for !strings.Contains(out.String(), "Every shard has a leader") {
		select {
		case err := <-done:
			done <- err
			t.Fatalf("playground exited: %v\n%s", err, out)
		case <-deadline:
			t.Fatalf("playground not ready:\n%s", out)
		case <-time.After(10 * time.Millisecond):
		}
	}
	return out.String()
}

func clusterJSON(t *testing.T, m string) *shoalpb.ClusterState {
	t.Helper()
	got, err := run(t, "cluster", "status", "--json", m)
	if err != nil {
		t.Fatal(err)
	}
	st := &shoalpb.ClusterState{}
	if err := protojson.Unmarshal([]byte(got), st); err != nil {
		t.Fatalf("cluster status --json: %v\n%s", err, got)
	}
	return st
}

func TestAdminCommandsAgainstPlayground(t *testing.T) {
	m := "--master=" + startPlayground(t, "--nodes", "4", "--shards", "8")
	mustRun := func(want string, args ...string) string {
		t.Helper()
		got, err := run(t, append(args, m)...)
		if err != nil || !strings.Contains(got, want) {
			t.Fatalf("shoal %v: %q, %v; want %q", args, got, err, want)
		}
		return got
	}
	// Every node's last heartbeat, as the leading master has it.
	for deadline := time.Now().Add(30 * time.Second); ; {
		st := clusterJSON(t, m)
		ok := len(st.NodeHeartbeats) == 4
		for _, hb := range st.NodeHeartbeats {
			ok = ok && hb.Stats.GetUsedBytes() > 0 && hb.Replicas > 0 && hb.LastHeartbeatMs > 0
		}
		if ok {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("cluster status --json: heartbeats %v", st.NodeHeartbeats)
		}
		<-time.After(100 * time.Millisecond)
	}
	if out := mustRun("HEARTBEAT", "cluster", "status"); !strings.Contains(out, "s ago") {
		t.Fatalf("status shows no heartbeat age:\n%s", out)
	}
	mustRun("scheduling paused", "schedule", "pause")
	if st := clusterJSON(t, m); !st.SchedulingPaused {
		t.Fatal("status does not say scheduling is paused")
	}
	st := clusterJSON(t, m)
	shard := st.Routes.Shards[0].Shard
	holds := map[uint64]bool{}
	for _, r := range shard.Replicas {
		holds[r.NodeId] = true
	}
	var from, to uint64
	for _, n := range st.Nodes {
		if holds[n.Id] && from == 0 {
			from = n.Id
		} else if !holds[n.Id] {
			to = n.Id
		}
	}
	id := fmt.Sprint(shard.ShardId)
	if _, err := run(t, "shard", "move", id, "--from", fmt.Sprint(to), "--to", fmt.Sprint(from), m); err == nil ||
		!strings.Contains(err.Error(), "refused: node") || strings.Contains(err.Error(), "rpc error") {
		t.Fatalf("a move from a node without the replica: %v", err)
	}
	mustRun("done", "shard", "move", id, "--from", fmt.Sprint(from), "--to", fmt.Sprint(to), "--wait")
	mustRun("done", "shard", "transfer-leader", id, "--to", fmt.Sprint(to), "--wait")
	mustRun("admin", "operator", "list", "--all")
	// shoal bench: load 500 records, then a short mixed run.
	var res struct {
		Ops    int `json:"ops"`
		Errors int `json:"errors"`
		All    struct {
			P99 float64 `json:"p99_ms"`
		} `json:"all"`
	}
	for _, args := range [][]string{
		{"bench", "--workload", "load", "--records", "500", "--concurrency", "8", "--json"},
		{"bench", "--workload", "a", "--records", "500", "--concurrency", "8", "--ops", "400", "--json"},
	} {
		out := mustRun(`"ops"`, args...)
		if err := json.Unmarshal([]byte(out), &res); err != nil {
			t.Fatalf("shoal %v: %v\n%s", args, err, out)
		}
		if res.Ops < 400 || res.Errors != 0 || res.All.P99 <= 0 {
			t.Fatalf("shoal %v: %s", args, out)
		}
	}
	// The load wrote every record: the last one reads back with 100 bytes.
	if got := strings.TrimSpace(mustRun("", "get", string(benchKey(499)))); len(got) != 100 {
		t.Fatalf("record 499 reads back as %q", got)
	}
	mustRun(`"finished"`, "operator", "list", "--all", "--json")
	mustRun("weight 2", "node", "set", fmt.Sprint(to), "--weight", "2")
	mustRun("scheduling resumed", "schedule", "resume")
	if out := mustRun(`"paused"`, "schedule", "resume", "--json"); !strings.Contains(strings.Join(strings.Fields(out), ""), `"paused":false`) {
		t.Fatalf("schedule resume --json: %s", out)
	}
	mustRun("draining", "node", "drain", fmt.Sprint(from))
	deadline := time.After(60 * time.Second)
	for {
		st := clusterJSON(t, m)
		var state shoalpb.NodeState
		for _, n := range st.Nodes {
			if n.Id == from {
				state = n.State
			}
		}
		if state == shoalpb.NodeState_NODE_STATE_REMOVED {
			break
		}
		select {
		case <-deadline:
			t.Fatalf("node %d is %v after the drain:\n%s", from, state, mustRun("OPERATORS", "cluster", "status"))
		case <-time.After(100 * time.Millisecond):
		}
	}
	out := mustRun("OPERATORS", "cluster", "status")
	if !strings.Contains(out, "removed") {
		t.Fatalf("status does not show the removed node:\n%s", out)
	}

	// A config file supplies what the command line does not.
	dir := t.TempDir()
	cfg := filepath.Join(dir, "shoal.conf")
	write := func(text string) {
		t.Helper()
		if err := os.WriteFile(cfg, []byte(text), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	write("# from a file\nmaster = \"" + strings.TrimPrefix(m, "--master=") + "\"\njson = true\n")
	if got, err := run(t, "cluster", "status", "--config", cfg); err != nil || !strings.Contains(got, `"cluster_id"`) {
		t.Fatalf("status with a config file: %q, %v", got, err)
	}
	write("master = 127.0.0.1:1\n")
	if got, err := run(t, "cluster", "status", "--config", cfg, m); err != nil || !strings.Contains(got, "OPERATORS") {
		t.Fatalf("the command line must win over the file: %q, %v", got, err)
	}
	write("mastr = 127.0.0.1:1\n")
	if _, err := run(t, "cluster", "status", "--config", cfg, m); err == nil || !strings.Contains(err.Error(), `"mastr" is not a setting`) {
		t.Fatalf("a misspelled setting: %v", err)
	}
}

func benchKey(i int) []byte { return fmt.Appendf(nil, "user%010d", i) }
