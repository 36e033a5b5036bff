package testcluster

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/internal/keys"
	"github.com/shoaldb/shoal/internal/kv"
	"github.com/shoaldb/shoal/internal/master"
	"github.com/shoaldb/shoal/internal/node"
	"github.com/shoaldb/shoal/internal/raftstore"
	"github.com/shoaldb/shoal/internal/resp"
	"github.com/shoaldb/shoal/internal/storage"
	"github.com/shoaldb/shoal/internal/transport"
)

// Options configure a Cluster. Zero values take the documented defaults.
type Options struct {
	// Nodes is the number of stores. Default 3.
	Nodes int
	// Shards is the number of shards, a power of two. Default 64.
	Shards int
	// Replicas is the replication factor. Default 3 (at most Nodes).
	Replicas int
	// NewStateMachine builds each replica's state machine. Default: the
	// key-value state machine (internal/kv); NewRegisterSM is a minimal one
	// for tests about replication alone.
	NewStateMachine func(desc *shoalpb.ShardDescriptor) raftstore.StateMachine
	// KV configures each node's key-value layer.
	KV kv.Options
	// StoreOptions, if set, adjusts each node's store options.
	StoreOptions func(node uint64, o *raftstore.Options)
	// CrashableFS puts every node's engine on vfs.NewCrashableMem instead of
	// a temporary directory, so CrashNode can drop unsynced writes.
	CrashableFS bool
	// Masters, when positive, runs that many masters (1, 3 or 5): nodes
	// register with them, and the master places the shards (the static
	// placement is not used). Node IDs are then assigned at registration,
	// in the order nodes start.
	Masters int
	// Master adjusts every master's configuration.
	Master func(cfg *master.Config)
	// Zones and Weights give node i (0-based) its zone and weight in master
	// mode, when long enough.
	Zones   []string
	Weights []float64
	// HeartbeatInterval is the nodes' heartbeat interval in master mode.
	// Default 200ms.
	HeartbeatInterval time.Duration
	// RESP serves the Redis protocol on every node (master mode), with
	// these options.
	RESP     bool
	RESPOpts resp.Options
	// HTTP serves HTTP (/healthz, /status, /metrics, /debug/pprof/) on
	// every node, on Node.HTTPAddr.
	HTTP bool
	// DiskReserveBytes is every node's node.Config.DiskReserveBytes, except
	// that 0 turns the reserve off: tests that are not about disk space
	// must not depend on the free space of the machine they run on.
	DiskReserveBytes int64
	// PrepareDir, if set, is called with each node's index (0-based) and
	// data directory before the node first starts; a test mounts a small
	// filesystem there, say.
	PrepareDir func(i int, dir string) error
	// WrapFS, if set, gives node i (0-based) the filesystem it returns in
	// place of the one it is passed; a test injects disk faults with it
	// (internal/faultfs).
	WrapFS func(i int, fs vfs.FS) vfs.FS
	// MaxDiskStall, if set, gives node i (0-based) its
	// node.Config.MaxDiskStall.
	MaxDiskStall func(i int) time.Duration
	// LeaderWait is every node's node.Config.LeaderWait.
	LeaderWait time.Duration
	// Logger receives every node's logs. Default: errors only, to stderr.
	Logger *slog.Logger
}

// Cluster is a set of in-process nodes with statically placed shards.
type Cluster struct {
	t      testing.TB
	opts   Options
	Net    *transport.Network
	Shards []*shoalpb.ShardDescriptor
	Nodes  []*Node
	// Masters are the masters in master mode.
	Masters []*Master

	mu         sync.Mutex
	addrs      map[uint64]string
	replicaSeq uint64
	base       string
}

// AddNode starts one more node (master mode: it registers and gets its ID).
// It is safe to call concurrently.
func (c *Cluster) AddNode() (*Node, error) {
	c.mu.Lock()
	i := len(c.Nodes)
	n := &Node{ID: uint64(i + 1), c: c, dir: filepath.Join(c.base, fmt.Sprintf("node%d", i+1)), fs: vfs.Default}
	if c.opts.CrashableFS {
		n.fs = vfs.NewCrashableMem()
	}
	if c.opts.WrapFS != nil {
		n.fs = c.opts.WrapFS(i, n.fs)
	}
	c.Nodes = append(c.Nodes, n)
	c.mu.Unlock()
	if err := n.start(); err != nil {
		return nil, err
	}
	return n, nil
}

// Node returns the running node (or the last one).
func (n *Node) Node() *node.Node { return n.current() }

// FS returns the filesystem the node's engine is on: a *vfs.MemFS with
// Options.CrashableFS, else vfs.Default, either wrapped by Options.WrapFS.
func (n *Node) FS() vfs.FS { return n.fs }

// Dir returns the node's data directory.
func (n *Node) Dir() string { return n.dir }

// Node is one storage node of the cluster, running or down. Its data
// survives Stop and Crash for Restart.
type Node struct {
	ID   uint64
	Addr string
	// RESPAddr is where the node serves the Redis protocol (Options.RESP).
	RESPAddr string
	// HTTPAddr is where the node serves HTTP (Options.HTTP).
	HTTPAddr string
	c        *Cluster
	dir      string
	fs       vfs.FS

	mu      sync.Mutex
	running bool
	// n is the current node, or the last one while down (its calls then fail
	// with raftstore.ErrStopped).
	n *node.Node
}

// Start starts a cluster whose shards are placed statically: shard i's
// replicas go on nodes i, i+1, ... (mod Nodes), so leaders spread evenly.
// It is stopped by t.Cleanup.
func Start(t testing.TB, opts Options) *Cluster {
	t.Helper()
	if opts.Nodes <= 0 && opts.Masters == 0 {
		opts.Nodes = 3
	}
	if opts.Shards <= 0 {
		opts.Shards = 64
	}
	if opts.Replicas <= 0 {
		opts.Replicas = 3
		if opts.Masters == 0 {
			opts.Replicas = min(3, opts.Nodes)
		}
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelError}))
	}
	c := &Cluster{t: t, opts: opts, Net: transport.NewNetwork(), addrs: map[uint64]string{}}
	base := t.TempDir()
	c.base = base
	for i := range opts.Nodes {
		n := &Node{ID: uint64(i + 1), c: c, dir: filepath.Join(base, fmt.Sprintf("node%d", i+1))}
		if opts.CrashableFS {
			n.fs = vfs.NewCrashableMem()
		} else {
			n.fs = vfs.Default
		}
		if opts.WrapFS != nil {
			n.fs = opts.WrapFS(i, n.fs)
		}
		if opts.PrepareDir != nil {
			if err := os.MkdirAll(n.dir, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := opts.PrepareDir(i, n.dir); err != nil {
				t.Fatal(err)
			}
		}
		c.Nodes = append(c.Nodes, n)
	}
	if opts.Masters == 0 {
		c.Shards = node.StaticPlacement(opts.Nodes, opts.Shards, opts.Replicas)
	}
	t.Cleanup(c.Stop)
	if opts.Masters > 0 {
		c.startMasters(base)
	}
	for _, n := range c.Nodes {
		if err := n.start(); err != nil {
			t.Fatalf("start node %d: %v", n.ID, err)
		}
	}
	return c
}

// Stop stops every running node and master.
func (c *Cluster) Stop() {
	for _, n := range c.Nodes {
		n.Stop()
	}
	for _, m := range c.Masters {
		m.Stop()
	}
}

func (c *Cluster) resolve(node uint64) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if a, ok := c.addrs[node]; ok {
		return a, nil
	}
	return "", fmt.Errorf("testcluster: no address for node %d", node)
}

// Node returns the node with id.
func (c *Cluster) Node(id uint64) *Node { return c.Nodes[id-1] }

// NodeIDs returns every node's ID.
func (c *Cluster) NodeIDs() []uint64 {
	ids := make([]uint64, len(c.Nodes))
	for i, n := range c.Nodes {
		ids[i] = n.ID
	}
	return ids
}

// ShardOf returns the shard that owns key.
func (c *Cluster) ShardOf(key []byte) uint64 {
	slot := uint32(keys.Slot(key))
	for _, d := range c.Shards {
		if slot >= d.StartSlot && slot < d.EndSlot {
			return d.ShardId
		}
	}
	panic("testcluster: slot not covered")
}

func (n *Node) start() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.running {
		return nil
	}
	c := n.c
	// Reuse the node's address across restarts so peers find it again.
	lis, err := listen(n.Addr)
	if err != nil {
		return err
	}
	n.Addr = lis.Addr().String()
	c.mu.Lock()
	c.addrs[n.ID] = n.Addr
	c.mu.Unlock()
	cfg := node.Config{
		DataDir:         n.dir,
		FS:              n.fs,
		Listener:        lis,
		CacheBytes:      8 << 20,
		MemTableBytes:   4 << 20,
		NewStateMachine: c.opts.NewStateMachine,
		KV:              c.opts.KV,
		LeaderWait:      c.opts.LeaderWait,
		Logger:          c.opts.Logger,
	}
	if c.opts.MaxDiskStall != nil {
		cfg.MaxDiskStall = c.opts.MaxDiskStall(c.index(n))
	}
	if cfg.DiskReserveBytes = c.opts.DiskReserveBytes; cfg.DiskReserveBytes == 0 {
		cfg.DiskReserveBytes = -1
	}
	// The fault network and store options are keyed by the node's ID,
	// which in master mode is known only once it has registered.
	cfg.WrapTransport = func(id uint64, s transport.Sender) transport.Sender { return c.Net.Wrap(id, s) }
	if c.opts.StoreOptions != nil {
		cfg.Store = func(o *raftstore.Options) { c.opts.StoreOptions(o.NodeID, o) }
	}
	if c.opts.RESP {
		rl, err := listen(n.RESPAddr)
		if err != nil {
			lis.Close()
			return err
		}
		n.RESPAddr = rl.Addr().String()
		cfg.RESPListener, cfg.RESP = rl, c.opts.RESPOpts
	}
	if c.opts.HTTP {
		hl, err := listen(n.HTTPAddr)
		if err != nil {
			lis.Close()
			if cfg.RESPListener != nil {
				cfg.RESPListener.Close()
			}
			return err
		}
		n.HTTPAddr = hl.Addr().String()
		cfg.HTTPListener = hl
	}
	if c.opts.Masters > 0 {
		cfg.Masters = c.MasterAddrs()
		cfg.HeartbeatInterval = c.opts.HeartbeatInterval
		if cfg.HeartbeatInterval == 0 {
			cfg.HeartbeatInterval = 200 * time.Millisecond
		}
		if i := c.index(n); i < len(c.opts.Zones) {
			cfg.Zone = c.opts.Zones[i]
		}
		if i := c.index(n); i < len(c.opts.Weights) {
			cfg.Weight = c.opts.Weights[i]
		}
	} else {
		cfg.NodeID, cfg.ClusterID, cfg.Resolve, cfg.Shards = n.ID, "testcluster", c.resolve, c.Shards
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	nd, err := node.Start(ctx, cfg)
	if err != nil {
		lis.Close()
		return err
	}
	if c.opts.Masters > 0 {
		n.ID = nd.ID()
		c.mu.Lock()
		c.addrs[n.ID] = n.Addr
		c.mu.Unlock()
	}
	n.n, n.running = nd, true
	return nil
}

func (c *Cluster) index(n *Node) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i, m := range c.Nodes {
		if m == n {
			return i
		}
	}
	return -1
}

func (n *Node) current() *node.Node {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.n
}

// Store returns the node's most recent store. Once the node is down its
// calls fail with raftstore.ErrStopped.
func (n *Node) Store() *raftstore.Store { return n.current().Store() }

// KV returns the node's most recent key-value layer.
func (n *Node) KV() *kv.DB { return n.current().KV() }

// Engine returns the node's most recent engine.
func (n *Node) Engine() *storage.Engine { return n.current().Engine() }

// Running reports whether the node is up.
func (n *Node) Running() bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.running
}

// Stop shuts the node down cleanly; its data stays for Restart. A node
// that had failed fails the test (StopFailed is for tests that fail one).
func (n *Node) Stop() {
	if err := n.StopFailed(); err != nil {
		n.c.t.Errorf("node %d failed: %v", n.ID, err)
	}
}

// StopFailed shuts the node down like Stop and returns the error that had
// stopped its store, if any, for a test that made it fail on purpose.
func (n *Node) StopFailed() error {
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.running {
		return nil
	}
	n.running = false
	return n.n.Stop()
}

// Shutdown stops the node gracefully (node.Node.Shutdown: leaderships are
// handed over first) and returns how many shards it still led.
func (n *Node) Shutdown(ctx context.Context) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	if !n.running {
		return 0
	}
	n.running = false
	still, err := n.n.Shutdown(ctx)
	if err != nil {
		n.c.t.Errorf("node %d failed: %v", n.ID, err)
	}
	return still
}

// Crash simulates a power loss: the node stops at once and loses every
// write that was not synced. It needs Options.CrashableFS.
func (n *Node) Crash() { n.CrashKeeping(0, 0) }

// CrashImage returns what the node's filesystem would hold after a power
// loss now: exactly what was synced. It needs Options.CrashableFS. Freeze
// the node's network first if the image must not lag what peers heard.
func (n *Node) CrashImage() *vfs.MemFS {
	mem, ok := n.fs.(*vfs.MemFS)
	if !ok {
		n.c.t.Fatalf("testcluster: CrashImage needs Options.CrashableFS")
	}
	return mem.CrashClone(vfs.CrashCloneCfg{UnsyncedDataPercent: 0})
}

// CrashTo stops the node as if it had crashed at the moment img was taken
// (see CrashImage); Restart brings it back on img. The node's network stays
// frozen until then.
func (n *Node) CrashTo(img *vfs.MemFS) {
	n.c.Net.Freeze(n.ID)
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.running {
		n.running = false
		_ = n.n.Stop()
	}
	n.fs = img
}

// Restart starts a stopped or crashed node from its data.
func (n *Node) Restart() error {
	if err := n.start(); err != nil {
		return err
	}
	n.c.Net.Thaw(n.ID)
	return nil
}

// WaitFor polls cond every few milliseconds until it returns nil or ctx
// ends, and returns cond's last error then.
func WaitFor(ctx context.Context, cond func() error) error {
	delay := time.Millisecond
	for {
		err := cond()
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last: %w)", ctx.Err(), err)
		case <-time.After(delay):
		}
		delay = min(2*delay, 20*time.Millisecond)
	}
}

// Leader returns the node whose replica leads shard, as that replica sees
// it, or an error if no running node leads it.
func (c *Cluster) Leader(shard uint64) (*Node, error) {
	var found *Node
	var term uint64
	for _, n := range c.Nodes {
		if !n.Running() {
			continue
		}
		st, err := n.Store().Status(shard)
		if err != nil {
			continue
		}
		if st.Role == raftstore.RoleLeader && st.Term >= term {
			found, term = n, st.Term
		}
	}
	if found == nil {
		return nil, fmt.Errorf("shard %d has no leader", shard)
	}
	return found, nil
}

// WaitLeaderless waits until none of n's replicas names a leader: each
// has campaigned (say, once the nodes holding the rest of its shards
// stopped) and no election has ended.
func (n *Node) WaitLeaderless(ctx context.Context) error {
	return WaitFor(ctx, func() error {
		for _, st := range n.Store().Replicas() {
			if st.LeaderReplica != 0 {
				return fmt.Errorf("node %d: shard %d still names leader r%d", n.ID, st.ShardID, st.LeaderReplica)
			}
		}
		return nil
	})
}

// WaitForLeaders waits until every shard has a leader among running nodes.
func (c *Cluster) WaitForLeaders(ctx context.Context) error {
	return WaitFor(ctx, func() error {
		for _, d := range c.Shards {
			if _, err := c.Leader(d.ShardId); err != nil {
				return err
			}
		}
		return nil
	})
}

// Retryable reports whether err means "try again, maybe elsewhere" and the
// command was certainly not applied.
func Retryable(err error) bool {
	if errors.Is(err, raftstore.ErrAmbiguous) {
		return false
	}
	return errors.Is(err, raftstore.ErrNotLeader) || errors.Is(err, raftstore.ErrNoLeader) ||
		errors.Is(err, raftstore.ErrLeadershipLost) || errors.Is(err, raftstore.ErrShardNotFound) ||
		errors.Is(err, raftstore.ErrOverloaded) || errors.Is(err, raftstore.ErrStopped)
}

// Propose proposes cmd to shard at its leader, following NotLeader hints and
// retrying while there is no leader, until ctx ends. Errors that leave the
// outcome unknown (timeouts, a store stopping) are returned, not retried.
func (c *Cluster) Propose(ctx context.Context, shard uint64, cmd []byte) (any, error) {
	return c.ProposeObserved(ctx, shard, cmd, nil)
}
