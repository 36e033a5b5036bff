package main

import (
	"context"
	"net"
	"strings"
	"testing"
	"time"

	tc "github.com/shoaldb/shoal/internal/testcluster"
)

// runUntilReady runs the playground command until it reports every shard
// led, then interrupts it and returns its output.
func runUntilReady(t *testing.T, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out := &tc.SyncBuffer{}
	cmd := newRootCmd(out, &tc.SyncBuffer{})
	cmd.SetArgs(append([]string{"playground", "--master-port", "0", "--log-level", "error"}, args...))
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(ctx) }()
	deadline := time.After(60 * time.Second)
	for !strings.Contains(out.String(), "Every shard has a leader") {
		select {
		case err := <-done:
			t.Fatalf("playground exited early: %v\n%s", err, out)
		case <-deadline:
			t.Fatalf("playground not ready:\n%s", out)
		case <-time.After(10 * time.Millisecond):
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("playground: %v", err)
	}
	return out.String()
}

func TestPlaygroundStartsAndRestarts(t *testing.T) {
	dir := t.TempDir()
	out := runUntilReady(t, "--data-dir", dir, "--shards", "8")
	for _, want := range []string{"3 nodes, 8 shards, replication factor 3", "master 1", "NODE", "LEADERS", "stopping"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	// Started again on the same directory it comes back.
	runUntilReady(t, "--data-dir", dir, "--shards", "8")

	// Another shard count on the same directory is refused.
	cmd := newRootCmd(&tc.SyncBuffer{}, &tc.SyncBuffer{})
	cmd.SetArgs([]string{"playground", "--master-port", "0", "--data-dir", dir, "--shards", "16"})
	err := cmd.ExecuteContext(context.Background())
	if err == nil || !strings.Contains(err.Error(), "--shards 8") {
		t.Fatalf("changed layout: got %v, want an error naming the original flags", err)
	}
}

func TestPlaygroundFlagValidation(t *testing.T) {
	for _, args := range [][]string{
		{"--shards", "3"},
		{"--shards", "32768"},
		{"--nodes", "0"},
		{"--replicas", "4"},
		{"--log-level", "loud"},
		// Node 81's gRPC port would be node 1's HTTP port.
		{"--nodes", "81"},
		{"--resp-base-port", "7090", "--nodes", "20"},
		{"--node-base-port", "65530", "--nodes", "10"},
	} {
		cmd := newRootCmd(&tc.SyncBuffer{}, &tc.SyncBuffer{})
		cmd.SetArgs(append([]string{"playground", "--data-dir", t.TempDir()}, args...))
		if err := cmd.ExecuteContext(context.Background()); err == nil {
			t.Errorf("playground %v: no error", args)
		}
	}
}

// run executes a shoal command line and returns its output.
func run(t *testing.T, args ...string) (string, error) {
	t.Helper()
	out := &tc.SyncBuffer{}
	cmd := newRootCmd(out, &tc.SyncBuffer{})
	cmd.SetArgs(args)
	err := cmd.ExecuteContext(context.Background())
	return out.String(), err
}

func TestClientCommandsAgainstPlayground(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out := &tc.SyncBuffer{}
	cmd := newRootCmd(out, &tc.SyncBuffer{})
	cmd.SetArgs([]string{"playground", "--master-port", "0", "--log-level", "error", "--data-dir", t.TempDir(), "--shards", "8"})
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(ctx) }()
	deadline := time.After(60 * time.Second)
	for !strings.Contains(out.String(), "Every shard has a leader") {
		select {
		case err := <-done:
			t.Fatalf("playground exited: %v\n%s", err, out)
		case <-deadline:
			t.Fatalf("playground not ready:\n%s", out)
		case <-time.After(10 * time.Millisecond):
		}
	}
	var addr string
	for _, line := range strings.Split(out.String(), "\n") {
		if f := strings.Fields(line); len(f) >= 4 && f[0] == "master" && f[2] == "gRPC" {
			addr = f[3]
		}
	}
	if addr == "" {
		t.Fatalf("no master address in:\n%s", out)
	}
	m := "--master=" + addr
	for _, step := range []struct {
		args []string
		want string
	}{
		{[]string{"set", "k", "v1", m}, "OK"},
		{[]string{"set", "k", "v2", "--nx", m}, "not set"},
		{[]string{"get", "k", m}, "v1"},
		{[]string{"get", "k", "--json", m}, `"value": "v1"`},
		{[]string{"incr", "n", "--by", "5", m}, "5"},
		{[]string{"incr", "n", m}, "6"},
		{[]string{"scan", m}, "k\tv1"},
		{[]string{"del", "k", m}, "deleted"},
		{[]string{"del", "k", m}, "not found"},
		{[]string{"cluster", "status", m}, "SHARD"},
		{[]string{"cluster", "status", "--json", m}, `"cluster_id"`},
	} {
		got, err := run(t, step.args...)
		if err != nil || !strings.Contains(got, step.want) {
			t.Fatalf("shoal %v: %q, %v; want %q", step.args, got, err, step.want)
		}
	}
	if _, err := run(t, "get", "missing", m); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Fatalf("get of a missing key: %v", err)
	}
	if _, err := run(t, "incr", "n", "--by", "x", m); err == nil {
		t.Fatal("incr --by x accepted")
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// TestPlaygroundAdvertisesLoopbackForWildcard: with --host 0.0.0.0 (or ::)
// the playground's nodes advertise loopback, which a node on this machine
// can dial; any other host is advertised as it listens.
func TestPlaygroundAdvertisesLoopbackForWildcard(t *testing.T) {
	for _, c := range []struct {
		addr net.Addr
		want string
	}{
		{&net.TCPAddr{IP: net.IPv4zero, Port: 7101}, "127.0.0.1:7101"},
		{&net.TCPAddr{IP: net.IPv6unspecified, Port: 7102}, "127.0.0.1:7102"},
		{&net.TCPAddr{IP: net.ParseIP("127.0.0.1"), Port: 7103}, ""},
		{&net.TCPAddr{IP: net.ParseIP("10.1.2.3"), Port: 7104}, ""},
	} {
		if got := loopbackIfWildcard(c.addr); got != c.want {
			t.Errorf("loopbackIfWildcard(%v) = %q, want %q", c.addr, got, c.want)
		}
	}
}
