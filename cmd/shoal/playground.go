package main

import (
	"context"
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
	"github.com/shoaldb/shoal/internal/master"
	"github.com/shoaldb/shoal/internal/node"
	"github.com/shoaldb/shoal/internal/raftstore"
	"github.com/shoaldb/shoal/internal/resp"
)

type playgroundFlags struct {
	nodes, shards, replicas int
	dataDir                 string
	host                    string
	masterPort, httpPort    int
	nodeBasePort            int
	nodeHTTPBasePort        int
	respBasePort            int
	respPassword            string
	respProxy               bool
	readyTimeout            time.Duration
}

func newPlaygroundCmd(g *globalFlags) *cobra.Command {
	f := &playgroundFlags{}
	cmd := &cobra.Command{
		Use:   "playground",
		Short: "Run a whole local cluster in one process",
		Long: `Start a local Shoal cluster in this process: one master and --nodes storage
nodes on loopback, --shards shards each replicated on --replicas nodes, data
under --data-dir. Started again on the same directory it brings the data
back. Ctrl-C stops it cleanly.

Ports: master gRPC 7000 and HTTP 7080; node i gRPC 7100+i, Redis protocol
6379+i and HTTP 7180+i. --master-port 0 picks free ports for everything.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runPlayground(cmd.Context(), g, f, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	fl := cmd.Flags()
	fl.IntVar(&f.nodes, "nodes", 3, "number of storage nodes")
	fl.IntVar(&f.shards, "shards", 64, "number of shards (a power of two, 1..16384), fixed when the directory is first used")
	fl.IntVar(&f.replicas, "replicas", 3, "replicas per shard (1..7, at most --nodes), fixed when the directory is first used")
	fl.StringVar(&f.dataDir, "data-dir", envOr("SHOAL_DATA_DIR", "./shoal-data"), "directory for the master's and every node's data (env SHOAL_DATA_DIR)")
	fl.StringVar(&f.host, "host", "127.0.0.1", "address to listen on")
	fl.IntVar(&f.masterPort, "master-port", 7000, "master gRPC port; 0 picks free ports for everything")
	fl.IntVar(&f.httpPort, "http-port", 7080, "master HTTP port")
	fl.IntVar(&f.nodeBasePort, "node-base-port", 7100, "node i's gRPC port is node-base-port+i")
	fl.IntVar(&f.nodeHTTPBasePort, "node-http-base-port", 7180, "node i's HTTP port is node-http-base-port+i")
	fl.IntVar(&f.respBasePort, "resp-base-port", 6379, "node i's Redis protocol port is resp-base-port+i")
	fl.StringVar(&f.respPassword, "resp-password", envOr("SHOAL_RESP_PASSWORD", ""), "password Redis clients must give (AUTH) (env SHOAL_RESP_PASSWORD)")
	fl.BoolVar(&f.respProxy, "resp-proxy", envBool("SHOAL_RESP_PROXY"), "serve every key from any node (forwarding) instead of answering MOVED (env SHOAL_RESP_PROXY)")
	fl.DurationVar(&f.readyTimeout, "ready-timeout", time.Minute, "how long to wait for every shard to be placed and led")
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
	if f.masterPort == 0 {
		return nil // every port is picked free
	}
	// The ports the nodes take, base+1 .. base+nodes for each base, and
	// the master's two must not meet (with 81 nodes, node 81's gRPC port
	// would be node 1's HTTP port).
	type span struct {
		flag     string
		from, to int
	}
	spans := []span{
		{"--master-port", f.masterPort, f.masterPort},
		{"--http-port", f.httpPort, f.httpPort},
		{"--node-base-port", f.nodeBasePort + 1, f.nodeBasePort + f.nodes},
		{"--node-http-base-port", f.nodeHTTPBasePort + 1, f.nodeHTTPBasePort + f.nodes},
		{"--resp-base-port", f.respBasePort + 1, f.respBasePort + f.nodes},
	}
	if f.httpPort == 0 {
		spans = spans[:1+copy(spans[1:], spans[2:])] // a free port
	}
	for i, a := range spans {
		if a.from < 1 || a.to > 65535 {
			return fmt.Errorf("%s: ports %d..%d for %d nodes are not all valid ports", a.flag, a.from, a.to, f.nodes)
		}
		for _, b := range spans[i+1:] {
			if a.from <= b.to && b.from <= a.to {
				return fmt.Errorf("%s and %s: with %d nodes their ports overlap (%d..%d and %d..%d)", a.flag, b.flag, f.nodes, a.from, a.to, b.from, b.to)
			}
		}
	}
	return nil
}

func (f *playgroundFlags) listen(ctx context.Context, port int) (net.Listener, error) {
	if f.masterPort == 0 {
		port = 0
	}
	var lc net.ListenConfig
	return lc.Listen(ctx, "tcp", net.JoinHostPort(f.host, strconv.Itoa(port)))
}

// playgroundStopTimeout bounds the stop of the playground's processes,
// together: a healthy stop takes well under a second.
const playgroundStopTimeout = 30 * time.Second

func runPlayground(ctx context.Context, g *globalFlags, f *playgroundFlags, stdout, stderr io.Writer) error {
	if err := f.validate(); err != nil {
		return err
	}
	log, err := g.logger(stderr)
	if err != nil {
		return err
	}
	ctx, stop := signal.NotifyContext(ctx, os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := os.MkdirAll(f.dataDir, 0o755); err != nil {
		return err
	}

	mlis, err := f.listen(ctx, f.masterPort)
	if err != nil {
		return fmt.Errorf("master: %w", err)
	}
	hlis, err := f.listen(ctx, f.httpPort)
	if err != nil {
		mlis.Close()
		return fmt.Errorf("master http: %w", err)
	}
	m, err := master.Start(ctx, master.Config{
		ID: 1, Peers: map[uint64]string{1: mlis.Addr().String()}, Listener: mlis, HTTPListener: hlis,
		DataDir: filepath.Join(f.dataDir, "master"), Bootstrap: true, Shards: f.shards, Replicas: f.replicas,
		NodeDownAfter: 10 * time.Second, PlacementDelay: time.Second, Logger: log,
	})
	if err != nil {
		mlis.Close()
		hlis.Close()
		return err
	}
	var nodes []*node.Node
	// Every process stops, the nodes first, within playgroundStopTimeout:
	// a stalled disk keeps a stop from returning.
	defer stopWithin(playgroundStopTimeout, log, func() {
		for i := len(nodes) - 1; i >= 0; i-- {
			if err := nodes[i].Stop(); err != nil {
				log.Error("node stop", "node", nodes[i].ID(), "err", err)
			}
		}
		m.Stop()
	})
	for i := range f.nodes {
		lis, err := f.listen(ctx, f.nodeBasePort+i+1)
		if err != nil {
			return fmt.Errorf("node %d: %w", i+1, err)
		}
		hl, err := f.listen(ctx, f.nodeHTTPBasePort+i+1)
		if err != nil {
			lis.Close()
			return fmt.Errorf("node %d http: %w", i+1, err)
		}
		rl, err := f.listen(ctx, f.respBasePort+i+1)
		if err != nil {
			lis.Close()
			hl.Close()
			return fmt.Errorf("node %d redis protocol: %w", i+1, err)
		}
		n, err := node.Start(ctx, node.Config{
			Masters:       []string{m.Addr()},
			DataDir:       filepath.Join(f.dataDir, fmt.Sprintf("node%d", i+1)),
			AdvertiseAddr: loopbackIfWildcard(lis.Addr()),
			Listener:      lis,
			HTTPListener:  hl,
			RESPListener:  rl,
			RESP:          resp.Options{Password: f.respPassword, Proxy: f.respProxy},
			Logger:        log,
		})
		if err != nil {
			lis.Close()
			hl.Close()
			rl.Close()
			return fmt.Errorf("node %d: %w", i+1, err)
		}
		nodes = append(nodes, n)
	}

	readyCtx, cancel := context.WithTimeout(ctx, f.readyTimeout)
	defer cancel()
	if err := waitReady(readyCtx, m, nodes); err != nil {
		return fmt.Errorf("cluster did not become ready: %w", err)
	}
	printPlayground(stdout, f, m, hlis.Addr().String(), nodes)
	failed := make(chan error, len(nodes)+1)
	go func() {
		select {
		case err := <-m.Err():
			failed <- fmt.Errorf("master failed: %w", err)
		case <-ctx.Done():
		}
	}()
	for _, n := range nodes {
		go func() {
			select {
			case err := <-n.Err():
				failed <- fmt.Errorf("node %d failed: %w", n.ID(), err)
			case <-ctx.Done():
			}
		}()
	}
	select {
	case <-ctx.Done():
		stop() // a second Ctrl-C ends the process at once
	case err := <-failed:
		// The playground's processes share one disk: one failing says
		// the others cannot be trusted either.
		stop()
		return err
	}
	fmt.Fprintln(stdout, "\nstopping...")
	return nil
}

// waitReady waits until the master has placed every shard and each has a
// leader.
func waitReady(ctx context.Context, m *master.Server, nodes []*node.Node) error {
	t := time.NewTicker(20 * time.Millisecond)
	defer t.Stop()
	for {
		st, err := m.GetCluster(ctx, &shoalpb.GetClusterRequest{})
		missing := -1
		if err == nil && st.Cluster != nil && len(st.Routes.Shards) == int(st.Cluster.Shards) {
			missing = 0
			for _, rt := range st.Routes.Shards {
				if leaderOf(nodes, rt.Shard.ShardId) == 0 {
					missing++
				}
			}
			if missing == 0 {
				return nil
			}
		}
		select {
		case <-ctx.Done():
			if missing < 0 {
				return fmt.Errorf("shards not placed: %w", ctx.Err())
			}
			return fmt.Errorf("%d shards without a leader: %w", missing, ctx.Err())
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

func printPlayground(w io.Writer, f *playgroundFlags, m *master.Server, httpAddr string, nodes []*node.Node) {
	cl := m.Cluster()
	st, _ := m.GetCluster(context.Background(), &shoalpb.GetClusterRequest{})
	leaders := map[uint64]int{}
	for _, rt := range st.GetRoutes().GetShards() {
		leaders[leaderOf(nodes, rt.Shard.ShardId)]++
	}
	fmt.Fprintf(w, "Shoal playground: cluster %s, %d nodes, %d shards, replication factor %d, data in %s\n\n",
		cl.ClusterId, len(nodes), cl.Shards, cl.Replicas, f.dataDir)
	fmt.Fprintf(w, "master 1   gRPC %s   HTTP http://%s/status\n\n", m.Addr(), httpAddr)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tGRPC\tREDIS\tHTTP\tREPLICAS\tLEADERS")
	for _, n := range nodes {
		fmt.Fprintf(tw, "%d\t%s\t%s\thttp://%s/status\t%d\t%d\n", n.ID(), n.Addr(), n.RESPAddr(), n.HTTPAddr(), len(n.Store().Replicas()), leaders[n.ID()])
	}
	tw.Flush()
	fmt.Fprintf(w, `
Every shard has a leader. Try, from another terminal:

  shoal set hello world --master %[1]s
  shoal get hello --master %[1]s
  shoal cluster status --master %[1]s
  redis-cli -c -p %[2]s set hello world

or the Go client: client.Open(ctx, []string{%[1]q}), or any Redis Cluster client.
Ctrl-C stops the cluster; starting again on the same --data-dir brings the data back.
`, m.Addr(), portOf(nodes[0].RESPAddr()))
}

// loopbackIfWildcard returns "" (advertise the listen address) unless addr
// is a wildcard address (--host 0.0.0.0), then loopback with its port: the
// playground's nodes all run on this machine, and a node refuses to
// advertise a wildcard address.
func loopbackIfWildcard(addr net.Addr) string {
	a, ok := addr.(*net.TCPAddr)
	if !ok || !a.IP.IsUnspecified() {
		return ""
	}
	// A wildcard listener, IPv4 or dual-stack, takes IPv4 loopback.
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(a.Port))
}

func portOf(addr string) string {
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	return p
}
