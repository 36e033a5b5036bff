package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/client"
	"github.com/shoaldb/shoal/internal/kv"
	"github.com/shoaldb/shoal/internal/metrics"
	"github.com/shoaldb/shoal/internal/raftstore"
	"github.com/shoaldb/shoal/internal/resp"
	"github.com/shoaldb/shoal/internal/storage"
	"github.com/shoaldb/shoal/internal/transport"
)

// DefaultRowCacheBytes is Config.RowCacheBytes's default.
const DefaultRowCacheBytes = 64 << 20

// Config configures a node. Zero values take the documented defaults.
//
// A node runs in one of two modes. With Masters set it joins a cluster run
// by masters: it registers (getting its node ID and the cluster ID, which it
// keeps in its database), heartbeats, creates the replicas the master
// places on it and learns other nodes' addresses from the route table;
// NodeID, ClusterID, Resolve and Shards must be empty. Without Masters its
// identity, peers and shards are static (tests, and clusters without a
// master).
type Config struct {
	// Masters are the masters' gRPC addresses.
	Masters []string
	// Zone and Weight are what the node registers with (master mode).
	// Weight defaults to 1.
	Zone   string
	Weight float64
	// AdvertiseAddr is the gRPC address other nodes and clients use, a
	// host:port whose host is not a wildcard. Default: the address it
	// listens on, which must then not be a wildcard (0.0.0.0, ::): Start
	// refuses to advertise one, since a peer dialing it reaches itself.
	AdvertiseAddr string
	// RESPAddr is where the node serves the Redis protocol; "" serves none.
	// Ignored when RESPListener is set (whose address is used instead).
	RESPAddr     string
	RESPListener net.Listener
	// RESPAdvertiseAddr is the Redis address clients are sent to (CLUSTER
	// SLOTS, CLUSTER SHARDS, CLUSTER NODES, MOVED and ASK), like Redis's
	// cluster-announce-ip and -port: set it when clients reach the node
	// through another address (NAT, a container's published port).
	// Default: the RESP address, with a wildcard host replaced by
	// AdvertiseAddr's. The HTTP address is advertised the same way.
	RESPAdvertiseAddr string
	// RESP configures the Redis protocol server (password, proxy mode,
	// limits).
	RESP resp.Options
	// HTTPAddr serves /healthz and /status (JSON); "" serves no HTTP.
	// Ignored when HTTPListener is set (whose address is used instead).
	// The node advertises it with a wildcard host replaced by
	// AdvertiseAddr's.
	HTTPAddr     string
	HTTPListener net.Listener
	// HeartbeatInterval is how often the node heartbeats the master.
	// Default 1s.
	HeartbeatInterval time.Duration
	// LeaderWait is how long a request for a shard that is electing a
	// leader waits here for the election to end before it fails with
	// NO_LEADER (Redis: -TRYAGAIN). Default the election timeout (1s with
	// the store's default timing): most elections end within it, and a
	// Redis client's read timeout (go-redis 3s, Jedis 2s) is longer. A
	// request with a deadline waits at most a third of the time it had
	// left when its first wait began, in all. Negative fails at once.
	LeaderWait time.Duration

	// NodeID is this node's ID, never 0 (static mode).
	NodeID uint64
	// ClusterID names the cluster; Raft streams from other clusters are
	// refused (static mode).
	ClusterID string
	// DataDir holds the node's database. Required.
	DataDir string
	// FS is the filesystem DataDir is on. Default vfs.Default.
	FS vfs.FS
	// ListenAddr is the gRPC address. Default "127.0.0.1:7100". Ignored when
	// Listener is set.
	ListenAddr string
	// Listener, if set, is used instead of listening on ListenAddr.
	Listener net.Listener
	// Resolve returns the gRPC address of another node (static mode).
	Resolve func(node uint64) (string, error)
	// Shards are the shards placed on the cluster; the node bootstraps its
	// replicas of those it does not hold yet.
	Shards []*shoalpb.ShardDescriptor
	// CacheBytes and MemTableBytes size Pebble, and MinSyncInterval paces
	// its log syncs; see storage.Options for them and their defaults.
	CacheBytes      int64
	MemTableBytes   uint64
	MinSyncInterval time.Duration
	// RowCacheBytes bounds the row cache, which serves reads of recently
	// read keys from memory (kv.RowCache). Default 64 MiB; negative turns
	// it off. It is used only with the default state machine.
	RowCacheBytes int64
	// DiskReserveBytes is the free space kept on DataDir's filesystem:
	// below it the node refuses writes to the shards it leads (deletes are
	// accepted) with DISK_FULL and replicas moving in; below half of it,
	// it also stops taking entries from other leaders (its replicas fall
	// behind, and catch up once space is freed). So the disk does not fill
	// in the middle of a Raft log write (Pebble then stops the process),
	// and compactions keep room to reclaim deleted keys. Default (0):
	// storage.DefaultSpaceReserve (1 GiB), or 5% of the filesystem when
	// that is less. Negative: writes are never refused.
	DiskReserveBytes int64
	// MaxDiskStall is how long a disk operation (a write, a sync, a file
	// creation) may hang before the node fails: it stops heartbeating, so
	// the masters count it down and, after their repair delay, replace its
	// replicas, its /healthz answers 503, and Err delivers the error
	// (`shoal node` exits on it, for a supervisor to restart). The Raft
	// groups it leads elect new leaders elsewhere once they stop hearing
	// from it. Default (0): storage.DefaultMaxStall (20s). Negative: slow
	// operations are only logged.
	MaxDiskStall time.Duration
	// Store adjusts the store's options (timing, limits, knobs) before it is
	// created.
	Store func(o *raftstore.Options)
	// KV configures the key-value layer.
	KV kv.Options
	// NewStateMachine replaces the key-value state machine; tests about
	// replication use it. Default: kv.NewStateMachine.
	NewStateMachine func(desc *shoalpb.ShardDescriptor) raftstore.StateMachine
	// Dialer, if set, opens every outgoing connection (to other nodes and
	// to the masters); `--dial-from` uses it to leave from the node's own
	// address. Default: the system dialer.
	Dialer func(ctx context.Context, addr string) (net.Conn, error)
	// WrapTransport, if set, wraps the Raft sender of the node with the
	// given ID; tests inject faults here.
	WrapTransport func(nodeID uint64, s transport.Sender) transport.Sender
	// Logger receives the node's logs. Default: discarded.
	Logger *slog.Logger
}

func (c *Config) validate() error {
	if c.DataDir == "" {
		return errors.New("node: Config.DataDir is required")
	}
	for _, a := range []struct{ name, flag, addr string }{
		{"AdvertiseAddr", "--advertise", c.AdvertiseAddr},
		{"RESPAdvertiseAddr", "--resp-advertise", c.RESPAdvertiseAddr},
	} {
		if a.addr == "" {
			continue
		}
		if _, port, err := net.SplitHostPort(a.addr); err != nil || port == "" {
			return fmt.Errorf("node: Config.%s (%s) %q: want host:port", a.name, a.flag, a.addr)
		}
		if isWildcard(a.addr) {
			return fmt.Errorf("node: Config.%s (%s) %q: a wildcard host cannot be dialed; give the address others reach this node at", a.name, a.flag, a.addr)
		}
	}
	if len(c.Masters) > 0 {
		if c.NodeID != 0 || c.ClusterID != "" || c.Resolve != nil || len(c.Shards) > 0 {
			return errors.New("node: with Masters, the node's ID, cluster, peers and shards come from the masters")
		}
		if c.Weight == 0 {
			c.Weight = 1
		}
		if c.Weight < 0 {
			return fmt.Errorf("node: weight %v: want > 0", c.Weight)
		}
	} else {
		switch {
		case c.NodeID == 0:
			return errors.New("node: Config.NodeID is required without Masters")
		case c.ClusterID == "":
			return errors.New("node: Config.ClusterID is required without Masters")
		case c.Resolve == nil:
			return errors.New("node: Config.Resolve is required without Masters")
		}
	}
	if c.HeartbeatInterval <= 0 {
		c.HeartbeatInterval = time.Second
	}
	if c.FS == nil {
		c.FS = vfs.Default
	}
	if c.ListenAddr == "" {
		c.ListenAddr = "127.0.0.1:7100"
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// Node is a running storage node.
type Node struct {
	cfg  Config
	log  *slog.Logger
	addr string
	// httpAdvertise is the HTTP address the node registers (HTTPAddr with
	// a wildcard host replaced by AdvertiseAddr's), "" without HTTP.
	httpAdvertise string
	engine        *storage.Engine
	space         *storage.SpaceGuard
	store         *raftstore.Store
	transport     *transport.Transport
	kv            *kv.DB
	server        *grpc.Server

	kvsvc *kvService
	// leaderWait is Config.LeaderWait with its default.
	leaderWait time.Duration

	http *http.Server
	// httpCancel ends the HTTP requests' contexts.
	httpCancel context.CancelFunc
	resp       *resp.Server
	// metrics is the node's Prometheus registry (/metrics).
	metrics *prometheus.Registry

	// Master mode.
	masters *client.MasterConn
	routes  *routeCache
	stopC   chan struct{}
	// beatNow asks for a heartbeat before the next tick (a replica became
	// leader); one pending request stands for any number.
	beatNow chan struct{}
	wg      sync.WaitGroup

	// failure is the first error the node cannot continue past (its store
	// failed, its disk stalled); errC delivers it once.
	failure atomic.Pointer[error]
	// dataSeqMu serializes advanceDataSeq (registration, heartbeats).
	dataSeqMu sync.Mutex
	errC      chan error
	failedC   chan struct{} // closed on failure

	// exhausted is the masters' latest list of nodes below half their
	// disk reserve (quorumspace.go), nil when there are none.
	exhausted atomic.Pointer[exhaustedNodes]

	stopOnce sync.Once
}

// Start starts a node; Stop releases everything it holds.
func Start(ctx context.Context, cfg Config) (_ *Node, err error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	n := &Node{cfg: cfg, log: cfg.Logger, stopC: make(chan struct{}), routes: newRouteCache(), beatNow: make(chan struct{}, 1),
		errC: make(chan error, 1), failedC: make(chan struct{})}
	var cleanups []func()
	defer func() {
		if err != nil {
			for i := len(cleanups) - 1; i >= 0; i-- {
				cleanups[i]()
			}
		}
	}()

	n.engine, err = storage.Open(storage.Options{
		Dir: cfg.DataDir, FS: cfg.FS, CacheBytes: cfg.CacheBytes, MemTableBytes: cfg.MemTableBytes,
		MinSyncInterval: cfg.MinSyncInterval, MaxStall: cfg.MaxDiskStall, OnFailure: n.fail, Logger: n.log,
	})
	if err != nil {
		return nil, err
	}
	cleanups = append(cleanups, func() { n.engine.Close() })

	lis := cfg.Listener
	if lis == nil {
		var lc net.ListenConfig
		lis, err = lc.Listen(ctx, "tcp", cfg.ListenAddr)
		if err != nil {
			return nil, fmt.Errorf("node: listen %s: %w", cfg.ListenAddr, err)
		}
	}
	cleanups = append(cleanups, func() { lis.Close() })
	n.addr = lis.Addr().String()
	if cfg.AdvertiseAddr == "" {
		if isWildcard(n.addr) {
			return nil, fmt.Errorf("node: listening on %s, a wildcard address, with no Config.AdvertiseAddr (--advertise): give the address other nodes and clients reach this node at", n.addr)
		}
		n.cfg.AdvertiseAddr = n.addr
	}

	if cfg.HTTPListener == nil && cfg.HTTPAddr != "" {
		var lc net.ListenConfig
		if n.cfg.HTTPListener, err = lc.Listen(ctx, "tcp", cfg.HTTPAddr); err != nil {
			return nil, fmt.Errorf("node: listen %s: %w", cfg.HTTPAddr, err)
		}
	}
	if n.cfg.HTTPListener != nil {
		cleanups = append(cleanups, func() { n.cfg.HTTPListener.Close() })
		n.cfg.HTTPAddr = n.cfg.HTTPListener.Addr().String()
		n.httpAdvertise = advertised(n.cfg.HTTPAddr, n.cfg.AdvertiseAddr)
	}
	if cfg.RESPListener == nil && cfg.RESPAddr != "" {
		var lc net.ListenConfig
		if n.cfg.RESPListener, err = lc.Listen(ctx, "tcp", cfg.RESPAddr); err != nil {
			return nil, fmt.Errorf("node: listen %s: %w", cfg.RESPAddr, err)
		}
	}
	if n.cfg.RESPListener != nil {
		cleanups = append(cleanups, func() { n.cfg.RESPListener.Close() })
		n.cfg.RESPAddr = n.cfg.RESPListener.Addr().String()
		if n.cfg.RESPAdvertiseAddr == "" {
			n.cfg.RESPAdvertiseAddr = advertised(n.cfg.RESPAddr, n.cfg.AdvertiseAddr)
		}
	} else {
		n.cfg.RESPAdvertiseAddr = ""
	}

	resolve := cfg.Resolve
	if len(cfg.Masters) > 0 {
		var dopts []grpc.DialOption
		if cfg.Dialer != nil {
			dopts = append(client.DefaultDialOptions(), grpc.WithContextDialer(cfg.Dialer))
		}
		if n.masters, err = client.DialMasters(cfg.Masters, dopts...); err != nil {
			return nil, err
		}
		cleanups = append(cleanups, func() { n.masters.Close() })
		if err := n.join(ctx); err != nil {
			return nil, err
		}
		resolve = n.routes.resolve
	}
	n.log = n.log.With("node", n.cfg.NodeID)

	n.transport, err = transport.New(transport.Options{
		NodeID: n.cfg.NodeID, ClusterID: n.cfg.ClusterID, Resolve: resolve, Logger: n.log, Dialer: cfg.Dialer,
	})
	if err != nil {
		return nil, err
	}
	cleanups = append(cleanups, n.transport.Close)
	var sender transport.Sender = n.transport
	if cfg.WrapTransport != nil {
		sender = cfg.WrapTransport(n.cfg.NodeID, sender)
	}

	newSM := cfg.NewStateMachine
	var rows *kv.RowCache // stays nil with another state machine: it would not keep the cache in step
	if newSM == nil {
		rowBytes := cfg.RowCacheBytes
		if rowBytes == 0 {
			rowBytes = DefaultRowCacheBytes
		}
		rows = kv.NewRowCache(rowBytes)
		smOpts := kv.StateMachineOptions{Logger: n.log, RowCache: rows}
		newSM = func(desc *shoalpb.ShardDescriptor) raftstore.StateMachine { return kv.NewStateMachine(desc, smOpts) }
	}
	n.space = storage.NewSpaceGuard(n.engine.FS(), n.cfg.DataDir, storage.SpaceOptions{Reserve: cfg.DiskReserveBytes, Logger: n.log})
	if st := n.space.Status(); !st.Known && st.Reserve >= 0 {
		n.log.Warn("cannot measure free disk space: writes will not be refused when the disk fills", "dir", n.cfg.DataDir, "err", st.Err)
	}
	so := raftstore.Options{
		Space:           n.space,
		NodeID:          n.cfg.NodeID,
		Engine:          n.engine,
		Transport:       sender,
		NewStateMachine: newSM,
		BeforeDataReset: rows.BlockSlots,
		OnFailure:       n.fail,
		Logger:          n.log,
		// A new leader heartbeats at once, so that the masters (and through
		// them clients and CLUSTER SLOTS) learn it without waiting a beat.
		OnLeader: func(uint64) {
			select {
			case n.beatNow <- struct{}{}:
			default:
			}
		},
	}
	if cfg.Store != nil {
		cfg.Store(&so)
	}
	n.store, err = raftstore.NewStore(so)
	if err != nil {
		return nil, err
	}
	cleanups = append(cleanups, n.store.Stop)
	n.leaderWait = cfg.LeaderWait
	if n.leaderWait == 0 {
		n.leaderWait = n.store.ElectionTimeout()
	}
	for _, d := range cfg.Shards {
		if !placedOn(d, cfg.NodeID) {
			continue
		}
		if _, err := n.store.Status(d.ShardId); err == nil {
			continue
		}
		if err := n.store.BootstrapReplica(d); errors.Is(err, raftstore.ErrShardRemoved) {
			// Moved away since the static placement: not ours any more.
			continue
		} else if err != nil {
			return nil, fmt.Errorf("node: bootstrap shard %d: %w", d.ShardId, err)
		}
	}
	n.transport.SetHandler(n.store)

	n.metrics = metrics.NewRegistry()
	grpcMetrics := metrics.NewGRPC(n.metrics)
	metrics.RegisterStore(n.metrics, n.store)
	metrics.RegisterEngine(n.metrics, n.engine)
	// Stop waits for the handlers to return (WaitForHandlers): the engine
	// closes after the server stops, and a read that needs no Raft round
	// (a stale read, a scan) would otherwise still be reading it.
	n.server = grpc.NewServer(append(transport.ServerOptions(), grpc.ChainUnaryInterceptor(grpcMetrics.Unary(), boundKVRequests), grpc.WaitForHandlers(true))...)
	n.transport.Register(n.server)
	n.kvsvc = &kvService{n: n, metrics: grpcMetrics, workers: newCommandWorkers(), streamCommands: maxStreamCommands}
	n.kvsvc.peers.Dialer = cfg.Dialer
	shoalpb.RegisterKVServer(n.server, n.kvsvc)
	shoalpb.RegisterNodeAdminServer(n.server, &adminService{n: n})

	kvOpts := cfg.KV
	if kvOpts.Logger == nil {
		kvOpts.Logger = n.log
	}
	kvOpts.RowCache = rows
	metrics.RegisterRowCache(n.metrics, rows)
	kvOpts.Space = n.space
	kvOpts.QuorumSpace = n.quorumSpace
	metrics.RegisterSpace(n.metrics, n.space)
	n.store.Start()
	n.kv = kv.New(n.store, kvOpts)
	// Serve only once everything the services use exists.
	go func() {
		if err := n.server.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			n.log.Error("grpc server failed", "err", err)
		}
	}()
	if n.cfg.HTTPListener != nil {
		n.serveHTTP(n.cfg.HTTPListener)
	}
	if n.cfg.RESPListener != nil {
		ro := cfg.RESP
		if ro.Logger == nil {
			ro.Logger = n.log
		}
		if ro.Observe == nil {
			ro.Observe = metrics.NewCommands(n.metrics).Observe
		}
		n.resp = resp.NewServer(respBackend{n.kvsvc}, ro)
		go func() {
			if err := n.resp.Serve(n.cfg.RESPListener); err != nil && !errors.Is(err, net.ErrClosed) {
				n.log.Error("resp server failed", "err", err)
			}
		}()
	}
	if n.masters != nil {
		n.wg.Add(1)
		go n.heartbeatLoop()
	}
	n.log.Info("node started", "addr", n.addr, "cluster", n.cfg.ClusterID, "replicas", len(n.store.Replicas()))
	return n, nil
}

func placedOn(d *shoalpb.ShardDescriptor, node uint64) bool {
	for _, r := range d.Replicas {
		if r.NodeId == node {
			return true
		}
	}
	return false
}

// ID returns the node's ID.
func (n *Node) ID() uint64 { return n.cfg.NodeID }

// ClusterID returns the ID of the node's cluster.
func (n *Node) ClusterID() string { return n.cfg.ClusterID }

// Addr returns the gRPC address the node listens on.
func (n *Node) Addr() string { return n.addr }

// Store returns the node's multi-Raft store.
func (n *Node) Store() *raftstore.Store { return n.store }

// KV returns the node's key-value layer.
func (n *Node) KV() *kv.DB { return n.kv }

// Engine returns the node's database.
func (n *Node) Engine() *storage.Engine { return n.engine }

// Shutdown hands every leadership this node holds to another voter of the
// shard (the one whose log is furthest along), waiting at most until ctx
// ends, and then stops the node. Clients see a leader change, which they
// follow at once, instead of an election after the node is gone. It
// returns how many shards it still led when it stopped, and Stop's error.
func (n *Node) Shutdown(ctx context.Context) (int, error) {
	var (
		wg    sync.WaitGroup
		slots = make(chan struct{}, 16)
	)
	n.store.RefuseLeadership()
	for _, st := range n.store.Replicas() {
		if st.Role != raftstore.RoleLeader {
			continue
		}
		target := handoverTarget(st)
		if target == 0 {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			select {
			case slots <- struct{}{}:
				defer func() { <-slots }()
			case <-ctx.Done():
				return
			}
			if err := n.store.TransferLeader(ctx, st.ShardID, target); err != nil {
				n.log.Debug("leadership handover failed", "shard", st.ShardID, "to", target, "err", err)
			}
		}()
	}
	wg.Wait()
	still := 0
	for _, st := range n.store.Replicas() {
		if st.Role == raftstore.RoleLeader {
			still++
		}
	}
	n.log.Info("leaderships handed over", "still_leading", still)
	return still, n.Stop()
}

// handoverTarget picks the voter (other than this replica) whose log is
// furthest along among those the leader is replicating to, 0 if there is
// none. A voter on a node that is down is in Raft's probe state (its
// messages went unanswered); on an idle shard every follower has the same
// match, and the first in the descriptor, down or not, would win.
func handoverTarget(st raftstore.ReplicaStatus) uint64 {
	var best, match uint64
	bestReplicating := false
	for _, r := range st.Descriptor.GetReplicas() {
		if r.ReplicaId == st.ReplicaID || r.Role != shoalpb.ReplicaRole_REPLICA_ROLE_VOTER {
			continue
		}
		pr := st.Progress[r.ReplicaId]
		replicating := pr.State == "replicate"
		if best == 0 || replicating && !bestReplicating || replicating == bestReplicating && pr.Match > match {
			best, match, bestReplicating = r.ReplicaId, pr.Match, replicating
		}
	}
	return best
}

// maxKVRequestTime bounds a key-value request that came without a deadline
// (a raw gRPC caller; the Go client sets one, DefaultTimeout, as does the
// Redis front end): a write to a shard without a quorum would otherwise
// wait for ever, and with it a forward to a leader that stopped answering.
const maxKVRequestTime = 10 * time.Second

// boundKVRequests gives a key-value request without a deadline one of
// maxKVRequestTime.
func boundKVRequests(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
	if _, ok := ctx.Deadline(); !ok && strings.HasPrefix(info.FullMethod, "/"+shoalpb.KV_ServiceDesc.ServiceName+"/") {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, maxKVRequestTime)
		defer cancel()
	}
	return handler(ctx, req)
}

// DiskSpace measures the free space of the node's data directory (at most
// every 100ms) and says whether the node is refusing writes for it
// (Config.DiskReserveBytes).
func (n *Node) DiskSpace() storage.SpaceStatus { return n.space.Status() }

// fail records an error the node cannot continue past; the first one is
// delivered by Err and stops the heartbeats. It does not stop the node:
// with a stalled disk, Stop could wait forever.
func (n *Node) fail(err error) {
	if !n.failure.CompareAndSwap(nil, &err) {
		return
	}
	close(n.failedC)
	n.errC <- err
	// Not on this goroutine: a log on the stalled disk would hold it.
	go n.log.Error("node failed: it stops heartbeating; restart it once the cause is mended", "err", err)
}

// Err delivers the first error the node cannot continue past: its store
// failed (a storage error), a disk operation stalled for
// Config.MaxDiskStall (storage.ErrDiskStalled), or the disk failed under
// the storage engine (storage.ErrDiskFailed). The node then no longer
// heartbeats and /healthz
// reports the error. A process should exit: Stop may wait for the
// stalled disk.
func (n *Node) Err() <-chan error { return n.errC }

// Failure returns the error Err delivered, or nil.
func (n *Node) Failure() error {
	if p := n.failure.Load(); p != nil {
		return *p
	}
	return nil
}

// Stop shuts the node down; see the package doc for the order. It returns
// the error that stopped the store, if any.
func (n *Node) Stop() error {
	var err error
	n.stopOnce.Do(func() {
		close(n.stopC)
		n.wg.Wait()
		if n.http != nil {
			// Shutdown waits for the requests in flight (/metrics reads
			// the engine), their contexts ended, a second at most.
			n.httpCancel()
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			if n.http.Shutdown(ctx) != nil {
				n.http.Close()
			}
			cancel()
		}
		if n.resp != nil {
			n.resp.Close()
		}
		n.server.Stop()
		n.kvsvc.workers.close()
		n.kvsvc.peers.Close()
		n.transport.Close()
		n.kv.Close()
		n.store.Stop()
		err = n.store.Err()
		if cerr := n.engine.Close(); err == nil {
			err = cerr
		}
		if n.masters != nil {
			n.masters.Close()
		}
		n.log.Info("node stopped")
	})
	return err
}

// isWildcard reports whether addr (host:port) names every local address:
// no host, 0.0.0.0 or ::.
func isWildcard(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsUnspecified()
}

// advertised returns addr (a listener's), or if its host is a wildcard,
// addr's port on the host of like (AdvertiseAddr, which validate and Start
// made a host:port).
func advertised(addr, like string) string {
	if !isWildcard(addr) {
		return addr
	}
	_, port, _ := net.SplitHostPort(addr) // parsed by isWildcard
	host, _, _ := net.SplitHostPort(like)
	return net.JoinHostPort(host, port)
}
