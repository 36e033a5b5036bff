package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/internal/keys"
	"github.com/shoaldb/shoal/internal/node"
	"github.com/shoaldb/shoal/internal/raftstore"
)

type playgroundFlags struct {
	nodes, shards, replicas int
	dataDir                 string
	host                    string
	basePort                int
	readyTimeout            time.Duration
}

// layout is what a playground directory was created with; it must not
// change across restarts, because the shards were bootstrapped from it.
type layout struct {
	Nodes    int `json:"nodes"`
	Shards   int `json:"shards"`
	Replicas int `json:"replicas"`
}

func newPlaygroundCmd(g *globalFlags) *cobra.Command {
	f := &playgroundFlags{}
	cmd := &cobra.Command{
		Use:   "playground",
		Short: "Run a whole local cluster in one process",
		Long: `Start a local Shoal cluster in this process: storage nodes on loopback, every
shard replicated on --replicas of them, data under --data-dir. Started again
on the same directory it brings the data back. Ctrl-C stops it cleanly.

Node i listens for gRPC on --base-port+i (7101, 7102, ... by default).

Placement is static until the master exists (a later issue): shard i's
replicas are on nodes i, i+1, ... and that layout is fixed when the
directory is first used.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runPlayground(cmd.Context(), g, f, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	fl := cmd.Flags()
	fl.IntVar(&f.nodes, "nodes", 3, "number of storage nodes")
	fl.IntVar(&f.shards, "shards", 64, "number of shards (a power of two, 1..16384)")
	fl.IntVar(&f.replicas, "replicas", 3, "replicas per shard (1..7, at most --nodes)")
	fl.StringVar(&f.dataDir, "data-dir", envOr("SHOAL_DATA_DIR", "./shoal-data"), "directory for every node's data (env SHOAL_DATA_DIR)")
	fl.StringVar(&f.host, "host", "127.0.0.1", "address to listen on")
	fl.IntVar(&f.basePort, "base-port", 7100, "node i's gRPC port is base-port+i; 0 picks free ports")
	fl.DurationVar(&f.readyTimeout, "ready-timeout", 30*time.Second, "how long to wait for every shard to elect a leader")
	return cmd
}

func (f *playgroundFlags) validate() error {
	switch {
	case f.nodes < 1 || f.nodes > 100:
		return fmt.Errorf("--nodes %d: want 1..100", f.nodes)
	case f.shards < 1 || f.shards > keys.SlotCount || f.shards&(f.shards-1) != 0:
		return fmt.Errorf("--shards %d: want a power of two in 1..%d", f.shards, keys.SlotCount)
	case f.replicas < 1 || f.replicas > 7 || f.replicas > f.nodes:
		return fmt.Errorf("--replicas %d: want 1..7 and at most --nodes (%d)", f.replicas, f.nodes)
	}
	return nil
}

// loadLayout returns the layout a directory was created with, recording
// the flags' layout if the directory is new, and refusing a changed one.
func loadLayout(dir string, want layout) error {
	path := filepath.Join(dir, "playground.json")
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return err
		}
		b, _ := json.MarshalIndent(want, "", "  ")
		return os.WriteFile(path, append(b, '\n'), 0o644)
	}
	if err != nil {
		return err
	}
	var have layout
	if err := json.Unmarshal(b, &have); err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	if have != want {
		return fmt.Errorf("%s was created with --nodes %d --shards %d --replicas %d; start with those, or use another --data-dir",
			dir, have.Nodes, have.Shards, have.Replicas)
	}
	return nil
}

func runPlayground(ctx context.Context, g *globalFlags, f *playgroundFlags, stdout, stderr io.Writer) error {
	if err := f.validate(); err != nil {
		return err
	}
	log, err := g.logger(stderr)
	if err != nil {
		return err
	}
	l := layout{Nodes: f.nodes, Shards: f.shards, Replicas: f.replicas}
	if err := loadLayout(f.dataDir, l); err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()

	// Listen for every node first, so that the address book is complete
	// before any node starts (and --base-port 0 picks free ports).
	lis := make([]net.Listener, f.nodes)
	defer func() {
		for _, l := range lis {
			if l != nil {
				l.Close()
			}
		}
	}()
	addrs := map[uint64]string{}
	for i := range f.nodes {
		port := 0
		if f.basePort != 0 {
			port = f.basePort + i + 1
		}
		var lc net.ListenConfig
		l, err := lc.Listen(ctx, "tcp", net.JoinHostPort(f.host, strconv.Itoa(port)))
		if err != nil {
			return fmt.Errorf("node %d: %w", i+1, err)
		}
		lis[i] = l
		addrs[uint64(i+1)] = l.Addr().String()
	}
	resolve := func(id uint64) (string, error) {
		if a, ok := addrs[id]; ok {
			return a, nil
		}
		return "", fmt.Errorf("no node %d", id)
	}
	shards := node.StaticPlacement(l.Nodes, l.Shards, l.Replicas)
	var nodes []*node.Node
	defer func() {
		for i := len(nodes) - 1; i >= 0; i-- {
			if err := nodes[i].Stop(); err != nil {
				log.Error("node stop", "node", nodes[i].ID(), "err", err)
			}
		}
	}()
	for i := range f.nodes {
		id := uint64(i + 1)
		n, err := node.Start(ctx, node.Config{
			NodeID:    id,
			ClusterID: "playground",
			DataDir:   filepath.Join(f.dataDir, fmt.Sprintf("node%d", id)),
			Listener:  lis[i],
			Resolve:   resolve,
			Shards:    shards,
			Logger:    log,
		})
		if err != nil {
			return fmt.Errorf("node %d: %w", id, err)
		}
		lis[i] = nil // the node owns it now
		nodes = append(nodes, n)
	}

	readyCtx, cancel := context.WithTimeout(ctx, f.readyTimeout)
	defer cancel()
	if err := waitForLeaders(readyCtx, nodes, shards); err != nil {
		return fmt.Errorf("cluster did not become ready: %w", err)
	}
	printPlayground(stdout, f, nodes, shards)
	<-ctx.Done()
	fmt.Fprintln(stdout, "\nstopping...")
	return nil
}

func waitForLeaders(ctx context.Context, nodes []*node.Node, shards []*shoalpb.ShardDescriptor) error {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		missing := 0
		for _, d := range shards {
			if leaderOf(nodes, d.ShardId) == 0 {
				missing++
			}
		}
		if missing == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d of %d shards without a leader: %w", missing, len(shards), ctx.Err())
		case <-t.C:
		}
	}
}

func leaderOf(nodes []*node.Node, shard uint64) uint64 {
	for _, n := range nodes {
		if st, err := n.Store().Status(shard); err == nil && st.Role == raftstore.RoleLeader {
			return n.ID()
		}
	}
	return 0
}

func printPlayground(w io.Writer, f *playgroundFlags, nodes []*node.Node, shards []*shoalpb.ShardDescriptor) {
	leaders := map[uint64]int{}
	for _, d := range shards {
		leaders[leaderOf(nodes, d.ShardId)]++
	}
	fmt.Fprintf(w, "Shoal playground: %d nodes, %d shards, replication factor %d, data in %s\n\n",
		f.nodes, f.shards, f.replicas, f.dataDir)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tGRPC\tREPLICAS\tLEADERS")
	for _, n := range nodes {
		fmt.Fprintf(tw, "%d\t%s\t%d\t%d\n", n.ID(), n.Addr(), len(n.Store().Replicas()), leaders[n.ID()])
	}
	tw.Flush()
	fmt.Fprintln(w, "\nEvery shard has a leader. Ctrl-C stops the cluster; starting again on the same --data-dir brings the data back.")
}
