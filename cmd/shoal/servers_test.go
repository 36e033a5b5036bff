package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/internal/master"
	tc "github.com/shoaldb/shoal/internal/testcluster"
)

// unsetEnv removes environment variables for the test (they are restored
// after it): the flags' defaults read them.
func unsetEnv(t *testing.T, names ...string) {
	t.Helper()
	for _, n := range names {
		t.Setenv(n, "")
		os.Unsetenv(n)
	}
}

var serverEnv = []string{"SHOAL_LISTEN", "SHOAL_HTTP", "SHOAL_RESP", "SHOAL_MASTER", "SHOAL_PEERS", "SHOAL_MASTER_ID",
	"SHOAL_SHARDS", "SHOAL_REPLICAS", "SHOAL_BOOTSTRAP", "SHOAL_DATA_DIR", "SHOAL_CONFIG"}

func subcommand(t *testing.T, name string) *cobra.Command {
	t.Helper()
	root := newRootCmd(&bytes.Buffer{}, &bytes.Buffer{})
	for _, c := range root.Commands() {
		if c.Name() == name {
			return c
		}
	}
	t.Fatalf("no command %q", name)
	return nil
}

// TestServerAddressDefaults: the addresses `shoal master` and `shoal node`
// use when given none, as their flags declare them.
func TestServerAddressDefaults(t *testing.T) {
	unsetEnv(t, serverEnv...)
	for _, c := range []struct{ cmd, flag, want string }{
		{"master", "listen", "127.0.0.1:7000"},
		{"master", "http", "127.0.0.1:7080"},
		{"master", "peers", ""},
		{"master", "id", "1"},
		{"node", "listen", "127.0.0.1:7100"},
		{"node", "resp", "127.0.0.1:6379"},
		{"node", "http", "127.0.0.1:7180"},
		// A node finds a master with the defaults of both.
		{"node", "master", "127.0.0.1:7000"},
	} {
		f := subcommand(t, c.cmd).Flags().Lookup(c.flag)
		if f == nil {
			t.Errorf("shoal %s has no --%s", c.cmd, c.flag)
			continue
		}
		if f.DefValue != c.want {
			t.Errorf("shoal %s --%s defaults to %q, want %q", c.cmd, c.flag, f.DefValue, c.want)
		}
	}
}

// masterConfigFrom parses a `shoal master` command line and finishes its
// configuration as the command does before starting the master.
func masterConfigFrom(t *testing.T, args ...string) (master.Config, error) {
	t.Helper()
	cmd := subcommand(t, "master")
	if err := cmd.ParseFlags(args); err != nil {
		t.Fatal(err)
	}
	f := cmd.Flags()
	id, _ := f.GetInt("id")
	peers, _ := f.GetString("peers")
	listen, _ := f.GetString("listen")
	bootstrap, _ := f.GetBool("bootstrap")
	shards, _ := f.GetInt("shards")
	replicas, _ := f.GetInt("replicas")
	cfg := master.Config{ListenAddr: listen, Bootstrap: bootstrap, Shards: shards, Replicas: replicas}
	err := finishMasterConfig(f, &cfg, id, peers)
	return cfg, err
}

// TestMasterListenAddress: without --listen a master listens on its own
// address in --peers, and on 127.0.0.1:7000 without --peers; --listen or
// SHOAL_LISTEN win.
func TestMasterListenAddress(t *testing.T) {
	unsetEnv(t, serverEnv...)
	const peers = "--peers=1=10.0.0.1:7000,2=10.0.0.2:7001,3=10.0.0.3:7002"
	for _, c := range []struct {
		args []string
		env  string
		want string
	}{
		{args: []string{"--id", "2", peers}, want: "10.0.0.2:7001"},
		{args: []string{"--id", "3", peers}, want: "10.0.0.3:7002"},
		{args: []string{peers}, want: "10.0.0.1:7000"},
		{args: []string{"--id", "2", peers, "--listen", "0.0.0.0:9000"}, want: "0.0.0.0:9000"},
		{args: []string{"--id", "2", peers}, env: "0.0.0.0:9001", want: "0.0.0.0:9001"},
		{args: nil, want: "127.0.0.1:7000"},
		{args: []string{"--id", "4", "--listen", "127.0.0.1:7004"}, want: "127.0.0.1:7004"},
	} {
		t.Run(strings.Join(c.args, " ")+" env="+c.env, func(t *testing.T) {
			if c.env != "" {
				t.Setenv("SHOAL_LISTEN", c.env)
			}
			cfg, err := masterConfigFrom(t, c.args...)
			if err != nil {
				t.Fatal(err)
			}
			if cfg.ListenAddr != c.want {
				t.Fatalf("listens on %s, want %s", cfg.ListenAddr, c.want)
			}
			if len(cfg.Peers) == 1 && cfg.Peers[cfg.ID] != cfg.ListenAddr {
				t.Fatalf("a master alone has peers %v, listens on %s", cfg.Peers, cfg.ListenAddr)
			}
		})
	}
	if _, err := masterConfigFrom(t, "--id", "4", peers); err == nil || !strings.Contains(err.Error(), "--id 4 is not one of --peers") {
		t.Fatalf("--id outside --peers: %v", err)
	}
}

// TestMasterBootstrapFlags: --shards and --replicas are refused without
// --bootstrap, accepted with it; SHOAL_SHARDS set for every master alike
// is not an error.
func TestMasterBootstrapFlags(t *testing.T) {
	unsetEnv(t, serverEnv...)
	for _, args := range [][]string{{"--shards", "8"}, {"--replicas", "5"}, {"--shards=8", "--replicas=1"}} {
		_, err := masterConfigFrom(t, args...)
		if err == nil || !strings.Contains(err.Error(), "--shards and --replicas are fixed at bootstrap; pass them with --bootstrap only") {
			t.Errorf("shoal master %v: %v", args, err)
		}
		if _, err := masterConfigFrom(t, append(args, "--bootstrap")...); err != nil {
			t.Errorf("shoal master %v --bootstrap: %v", args, err)
		}
	}
	t.Setenv("SHOAL_SHARDS", "8")
	if cfg, err := masterConfigFrom(t, "--id", "2"); err != nil || cfg.Shards != 8 {
		t.Fatalf("SHOAL_SHARDS without --bootstrap: %v (shards %d)", err, cfg.Shards)
	}
	// The real command refuses before it starts anything.
	_, err := run(t, "master", "--shards", "8", "--data-dir", filepath.Join(t.TempDir(), "m"), "--http", "")
	if err == nil || !strings.Contains(err.Error(), "fixed at bootstrap") {
		t.Fatalf("shoal master --shards 8: %v", err)
	}
}

// freeAddr returns an address on 127.0.0.2 with a port free right now.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// TestMasterServesOnItsPeerAddress runs `shoal master --id 2 --peers ...`
// without --listen: it serves on master 2's address.
func TestMasterServesOnItsPeerAddress(t *testing.T) {
	unsetEnv(t, serverEnv...)
	addrs := []string{freeAddr(t), freeAddr(t), freeAddr(t)}
	peers := fmt.Sprintf("1=%s,2=%s,3=%s", addrs[0], addrs[1], addrs[2])
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	out := &tc.SyncBuffer{}
	cmd := newRootCmd(out, &tc.SyncBuffer{})
	cmd.SetArgs([]string{"master", "--id", "2", "--peers", peers, "--http", "", "--log-level", "error",
		"--data-dir", filepath.Join(t.TempDir(), "m2")})
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(ctx) }()
	want := "master 2 serving gRPC on " + addrs[1]
	deadline := time.After(30 * time.Second)
	for !strings.Contains(out.String(), want) {
		select {
		case err := <-done:
			t.Fatalf("master exited: %v\n%s", err, out)
		case <-deadline:
			t.Fatalf("no %q in:\n%s", want, out)
		case <-time.After(10 * time.Millisecond):
		}
	}
	// It really listens there.
	conn, err := net.DialTimeout("tcp", addrs[1], 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	conn.Close()
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("master: %v", err)
	}
}

// TestStatusShowsHeartbeats: the node table of `cluster status` shows each
// node's last heartbeat, used and free bytes (marked when the disk is full
// or exhausted)
// and hosted replicas and leaders, "-" for a node without a heartbeat.
func TestStatusShowsHeartbeats(t *testing.T) {
	st := &shoalpb.ClusterState{
		Cluster: &shoalpb.ClusterInfo{ClusterId: "c1", Shards: 8, Replicas: 3},
		Nodes: []*shoalpb.NodeInfo{
			{Id: 1, Addr: "10.0.0.1:7100", Weight: 1, State: shoalpb.NodeState_NODE_STATE_UP},
			{Id: 2, Addr: "10.0.0.2:7100", Weight: 1, State: shoalpb.NodeState_NODE_STATE_DOWN},
			{Id: 3, Addr: "10.0.0.3:7100", Weight: 1, State: shoalpb.NodeState_NODE_STATE_UP},
			{Id: 4, Addr: "10.0.0.4:7100", Weight: 1, State: shoalpb.NodeState_NODE_STATE_UP},
		},
		Routes: &shoalpb.RouteTable{},
		NodeHeartbeats: map[uint64]*shoalpb.NodeHeartbeat{
			1: {LastHeartbeatMs: 1, AgeMs: 1500, Stats: &shoalpb.NodeStats{UsedBytes: 3 << 20, CapacityBytes: 1 << 30, FreeBytes: 5 << 20}, Replicas: 7, Leaders: 2},
			3: {LastHeartbeatMs: 1, AgeMs: 500, Stats: &shoalpb.NodeStats{UsedBytes: 3 << 20, FreeBytes: 1 << 20, DiskFull: true}, Replicas: 7, Leaders: 2},
			4: {LastHeartbeatMs: 1, AgeMs: 500, Stats: &shoalpb.NodeStats{UsedBytes: 3 << 20, FreeBytes: 1 << 19, DiskFull: true, DiskExhausted: true}, Replicas: 7, Leaders: 2},
		},
	}
	var b bytes.Buffer
	printStatus(&b, st)
	rows := map[string][]string{}
	for _, line := range strings.Split(b.String(), "\n") {
		if f := strings.Fields(line); len(f) > 0 {
			rows[f[0]] = f
		}
	}
	header := strings.Join(rows["NODE"], " ")
	if !strings.HasSuffix(header, "REPLICAS LEADERS HEARTBEAT USED FREE HOSTED") {
		t.Fatalf("node table header %q\n%s", header, b.String())
	}
	if got := strings.Join(rows["1"][len(rows["1"])-7:], " "); got != "1.5s ago 3.0 MiB 5.0 MiB 7/2" {
		t.Fatalf("node 1 row ends %q, want heartbeat, used, free and hosted\n%s", got, b.String())
	}
	if got := strings.Join(rows["2"][len(rows["2"])-4:], " "); got != "- - - -" {
		t.Fatalf("node 2 (no heartbeat) row ends %q\n%s", got, b.String())
	}
	if got := strings.Join(rows["3"][len(rows["3"])-8:], " "); got != "0.5s ago 3.0 MiB 1.0 MiB (full) 7/2" {
		t.Fatalf("node 3 (disk full) row ends %q\n%s", got, b.String())
	}
	if got := strings.Join(rows["4"][len(rows["4"])-8:], " "); got != "0.5s ago 3.0 MiB 512.0 KiB (exhausted) 7/2" {
		t.Fatalf("node 4 (disk exhausted) row ends %q\n%s", got, b.String())
	}
}

// TestNodeFlagErrors: sizes a node cannot use, and addresses it cannot
// advertise, are refused before it starts, with the flag named.
func TestNodeFlagErrors(t *testing.T) {
	unsetEnv(t, append(serverEnv, "SHOAL_ROW_CACHE_MB", "SHOAL_CACHE_MB", "SHOAL_MAX_SNAPSHOTS", "SHOAL_DISK_RESERVE_MB", "SHOAL_ADVERTISE", "SHOAL_RESP_ADVERTISE", "SHOAL_MAX_DISK_STALL")...)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--row-cache-mb", "-1"}, "--row-cache-mb -1: want 0 (no row cache) or more"},
		{[]string{"--cache-mb", "0"}, "--cache-mb and --raft-entry-cache-kb must be at least 1"},
		{[]string{"--max-snapshots", "0"}, "--max-snapshots 0: want at least 1"},
		{[]string{"--disk-reserve-mb", "-2"}, "--disk-reserve-mb -2: want -1 (the default reserve), 0 (none) or up to 1073741824"},
		{[]string{"--max-disk-stall", "-1s"}, "--max-disk-stall -1s: want 0 (off) or more"},
		{[]string{"--max-disk-stall", "500ms"}, "--max-disk-stall 500ms: want at least 1s"},
		{[]string{"--advertise", "10.0.0.5"}, `Config.AdvertiseAddr (--advertise) "10.0.0.5": want host:port`},
		{[]string{"--advertise", "0.0.0.0:7100"}, "a wildcard host cannot be dialed"},
		{[]string{"--resp-advertise", "[::]:6379"}, `Config.RESPAdvertiseAddr (--resp-advertise) "[::]:6379": a wildcard host`},
	} {
		args := append([]string{"node", "--data-dir", t.TempDir(), "--http", "", "--log-level", "error"}, c.args...)
		if _, err := run(t, args...); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("shoal %v: %v, want an error with %q", args, err, c.want)
		}
	}
}

// A failed server is stopped if it can be, but a Stop that hangs (a
// stalled disk) does not keep the process from exiting.
func TestStopWithin(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	stopped := false
	stopWithin(time.Minute, log, func() { stopped = true })
	if !stopped {
		t.Fatal("stop did not run")
	}
	hang := make(chan struct{})
	defer close(hang)
	start := time.Now()
	stopWithin(50*time.Millisecond, log, func() { <-hang })
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("stopWithin(50ms) returned after %v", d)
	}
}

// The stop after SIGTERM is bounded: a stop that hangs (a stalled disk)
// or a failure during it ends the process with an error, not never.
func TestFinishStop(t *testing.T) {
	log := slog.New(slog.DiscardHandler)
	errStop := errors.New("stop failed")
	if err := finishStop(time.Minute, time.Minute, log, nil, func() error { return nil }); err != nil {
		t.Fatalf("clean stop: %v", err)
	}
	if err := finishStop(time.Minute, time.Minute, log, nil, func() error { return errStop }); !errors.Is(err, errStop) {
		t.Fatalf("stop error: %v, want %v", err, errStop)
	}

	hang := make(chan struct{})
	defer close(hang)
	start := time.Now()
	err := finishStop(50*time.Millisecond, time.Minute, log, nil, func() error { <-hang; return nil })
	if err == nil || !strings.Contains(err.Error(), "stop did not finish within 50ms") {
		t.Fatalf("hung stop: %v", err)
	}
	if d := time.Since(start); d > 10*time.Second {
		t.Fatalf("hung stop returned after %v", d)
	}

	// A failure during the stop: the stop that then finishes is waited
	// for, one that hangs is not (beyond failedStopGrace), and the failure
	// is the error either way. A failure reported as the stop ends counts
	// too.
	errDisk := errors.New("disk stalled")
	for _, finishes := range []bool{true, false} {
		failed := make(chan error) // unbuffered: the stop goes on once finishStop has the failure
		stopped := make(chan struct{})
		// A bound far above the grace: the stop that hangs is let go
		// after the grace, not the bound; the one that finishes gets all
		// the grace it needs.
		grace := 50 * time.Millisecond
		if finishes {
			grace = time.Minute
		}
		start := time.Now()
		err := finishStop(time.Hour, grace, log, failed, func() error {
			failed <- errDisk
			if !finishes {
				<-hang
			}
			close(stopped)
			return nil
		})
		if d := time.Since(start); d > 30*time.Second {
			t.Fatalf("finishStop returned %v after a failure during the stop (stop finishes: %v)", d, finishes)
		}
		if !errors.Is(err, errDisk) {
			t.Fatalf("failure during the stop (stop finishes: %v): %v, want %v", finishes, err, errDisk)
		}
		select {
		case <-stopped:
			if !finishes {
				t.Fatal("a hung stop finished")
			}
		default:
			if finishes {
				t.Fatal("finishStop returned before a stop that finishes")
			}
		}
	}
	failed := make(chan error, 1)
	failed <- errDisk
	if err := finishStop(time.Minute, time.Minute, log, failed, func() error { return nil }); !errors.Is(err, errDisk) {
		t.Fatalf("a failure reported as the stop ended: %v, want %v", err, errDisk)
	}
}

func TestMaxDiskStall(t *testing.T) {
	for _, c := range []struct {
		in, want time.Duration
	}{{0, -1}, {time.Second, time.Second}, {20 * time.Second, 20 * time.Second}} {
		if got, err := maxDiskStall(c.in); err != nil || got != c.want {
			t.Errorf("maxDiskStall(%v) = %v, %v; want %v", c.in, got, err, c.want)
		}
	}
}

// TestMalformedEnvironment: a SHOAL_* variable that does not parse as its
// flag's type is an error naming it, not a silent fall back to the
// default; the command line still wins over it.
func TestMalformedEnvironment(t *testing.T) {
	unsetEnv(t, append(serverEnv, "SHOAL_MAX_DISK_STALL", "SHOAL_WEIGHT")...)
	for _, c := range []struct {
		env, value string
		args       []string
		want       string // "" for no error about the variable
	}{
		{"SHOAL_MAX_DISK_STALL", "60", nil, `SHOAL_MAX_DISK_STALL="60": not a valid --max-disk-stall (duration)`},
		{"SHOAL_WEIGHT", "heavy", nil, `SHOAL_WEIGHT="heavy": not a valid --weight (float64)`},
		{"SHOAL_MAX_DISK_STALL", "60", []string{"--max-disk-stall", "30s"}, ""},
	} {
		t.Setenv(c.env, c.value)
		args := append([]string{"node", "--data-dir", t.TempDir(), "--http", "", "--log-level", "error", "--max-snapshots", "0"}, c.args...)
		_, err := run(t, args...)
		switch {
		case c.want != "" && (err == nil || !strings.Contains(err.Error(), c.want)):
			t.Errorf("%s=%s shoal %v: %v, want an error with %q", c.env, c.value, args, err, c.want)
		case c.want == "" && (err == nil || strings.Contains(err.Error(), c.env)):
			// --max-snapshots 0 makes the command fail after the check.
			t.Errorf("%s=%s shoal %v: %v, want only the --max-snapshots error", c.env, c.value, args, err)
		}
		os.Unsetenv(c.env)
	}
}
