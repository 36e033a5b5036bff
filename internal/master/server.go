package master

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/cockroachdb/pebble/v2/vfs"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/internal/keys"
	"github.com/shoaldb/shoal/internal/master/schedule"
	"github.com/shoaldb/shoal/internal/metrics"
	"github.com/shoaldb/shoal/internal/raftstore"
	"github.com/shoaldb/shoal/internal/storage"
	"github.com/shoaldb/shoal/internal/transport"
)

// Config configures a master. Zero values take the documented defaults.
type Config struct {
	// ID is this master's ID (its replica ID in the meta group). Required.
	ID uint64
	// Peers maps every master's ID, this one's included, to its gRPC
	// address. Required. The meta group's membership is this set.
	Peers map[uint64]string
	// ListenAddr is the gRPC address to listen on. Default Peers[ID].
	// Ignored when Listener is set.
	ListenAddr string
	Listener   net.Listener
	// HTTPAddr serves /healthz and /status (JSON); "" serves no HTTP.
	// Ignored when HTTPListener is set.
	HTTPAddr     string
	HTTPListener net.Listener
	// DataDir holds the master's database. Required.
	DataDir string
	// FS is the filesystem of DataDir. Default vfs.Default.
	FS vfs.FS
	// MaxDiskStall is how long a disk operation may hang before the
	// master fails (Err delivers storage.ErrDiskStalled; `shoal master`
	// exits on it). Default (0): storage.DefaultMaxStall (20s); negative:
	// only logged.
	MaxDiskStall time.Duration
	// Bootstrap makes this master bootstrap the cluster with Shards shards
	// (a power of two, default 64) and Replicas replicas per shard
	// (default 3). Bootstrapping again with the same numbers is harmless;
	// with other numbers it is an error.
	Bootstrap bool
	Shards    int
	Replicas  int
	// NodeDownAfter: a node with no heartbeat for this long is down.
	// Default 30s.
	NodeDownAfter time.Duration
	// PlacementDelay: the first placement waits until at least Replicas
	// nodes are up and no node has registered for this long, so that nodes
	// started together all get shards. Default 2s.
	PlacementDelay time.Duration
	// ScheduleInterval is how often the leader runs the failure detector,
	// placement and route updates. Default 500ms.
	ScheduleInterval time.Duration
	// DataSeqRecordInterval is how often the leader records in the meta
	// group the data sequences the nodes' heartbeats carried, so that
	// a master that leads later still refuses a node started on a copy
	// of its data older than them (RecordDataSeqs). A copy newer than the
	// last record escapes a leader that did not receive the heartbeats
	// itself. Default 1s.
	DataSeqRecordInterval time.Duration
	// RepairAfter: the replicas of a node down this long are replaced on
	// other nodes. Default 10m (Scheduler.RepairAfterMs is set from it).
	RepairAfter time.Duration
	// OperatorStepTimeout bounds one step of an operator (a new replica's
	// snapshot and catch-up included); a step that takes longer rolls the
	// operator back. Default 10m.
	OperatorStepTimeout time.Duration
	// Scheduler tunes the checkers and schedulers; see schedule.Config for
	// the defaults.
	Scheduler schedule.Config
	// Store adjusts the meta group's store options.
	Store func(o *raftstore.Options)
	// Dialer, if set, opens every outgoing connection (to the other
	// masters and to nodes); `--dial-from` uses it to leave from the
	// master's own address. Default: the system dialer.
	Dialer func(ctx context.Context, addr string) (net.Conn, error)
	// Logger receives the master's logs. Default: discarded.
	Logger *slog.Logger
}

func (c *Config) validate() error {
	switch {
	case c.ID == 0:
		return errors.New("master: Config.ID is required")
	case c.Peers[c.ID] == "":
		return fmt.Errorf("master: Config.Peers has no address for this master (%d)", c.ID)
	case c.DataDir == "":
		return errors.New("master: Config.DataDir is required")
	}
	if n := len(c.Peers); n != 1 && n != 3 && n != 5 {
		return fmt.Errorf("master: %d masters; run 1, 3 or 5", n)
	}
	if c.ListenAddr == "" {
		c.ListenAddr = c.Peers[c.ID]
	}
	if c.FS == nil {
		c.FS = vfs.Default
	}
	if c.Shards == 0 {
		c.Shards = 64
	}
	if c.Replicas == 0 {
		c.Replicas = 3
	}
	if c.Shards < 1 || c.Shards > keys.SlotCount || c.Shards&(c.Shards-1) != 0 {
		return fmt.Errorf("master: %d shards: want a power of two in 1..%d", c.Shards, keys.SlotCount)
	}
	if c.Replicas < 1 || c.Replicas > 7 {
		return fmt.Errorf("master: %d replicas: want 1..7", c.Replicas)
	}
	if c.NodeDownAfter <= 0 {
		c.NodeDownAfter = 30 * time.Second
	}
	if c.PlacementDelay <= 0 {
		c.PlacementDelay = 2 * time.Second
	}
	if c.ScheduleInterval <= 0 {
		c.ScheduleInterval = 500 * time.Millisecond
	}
	if c.DataSeqRecordInterval <= 0 {
		c.DataSeqRecordInterval = time.Second
	}
	if c.RepairAfter <= 0 {
		c.RepairAfter = 10 * time.Minute
	}
	if c.OperatorStepTimeout <= 0 {
		c.OperatorStepTimeout = 10 * time.Minute
	}
	c.Scheduler.RepairAfterMs = c.RepairAfter.Milliseconds()
	c.Scheduler.EnsureDefaults()
	if err := c.Scheduler.Validate(); err != nil {
		return err
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	return nil
}

// metaClusterID names the meta group's Raft transport; the storage
// cluster's ID does not exist until bootstrap.
const metaClusterID = "shoal-masters"

// Server is a running master.
type Server struct {
	shoalpb.UnimplementedMasterServer
	cfg       Config
	log       *slog.Logger
	eng       *storage.Engine
	store     *raftstore.Store
	transport *transport.Transport
	meta      *metaState
	grpc      *grpc.Server
	http      *http.Server
	addr      string

	// Leader-only memory, rebuilt by each new leader.
	lmu struct {
		sync.Mutex
		// term is the meta group's term when this master last became
		// leader; 0 while it is not leader.
		term uint64
		// since is when it became leader.
		since time.Time
		// lastSeen is when each node last heartbeated.
		lastSeen map[uint64]time.Time
		// dataSeqs are the highest data sequences each node's heartbeats
		// carried during this leadership (registerStale), recorded in the
		// meta group by recordDataSeqs, last at lastSeqRecord.
		dataSeqs      map[uint64]uint64
		lastSeqRecord time.Time
		// lastRegistered is when a node last registered (placement waits).
		lastRegistered time.Time
		// hints are leader hints and descriptors reported since the last
		// route update was proposed.
		hints map[uint64]*shoalpb.ShardRoute
		// ctx ends when this leadership does; operators' runners use it.
		ctx    context.Context
		cancel context.CancelFunc
		// running holds the runners of operators in flight.
		running map[uint64]*runner
		// leaderNodes are leaders that nodes named in errors, by shard.
		leaderNodes map[uint64]uint64
		// shardStats is the load shard leaders report.
		shardStats map[uint64]shardStat
		// snaps are the snapshots nodes report sending, by shard and
		// receiving node.
		snaps map[snapKey]*snapReport
		// beats are the nodes' last heartbeats: when they arrived and
		// what they said (stats, replica and leader counts).
		beats map[uint64]nodeBeat
	}

	// baseCtx ends when the master stops.
	baseCtx    context.Context
	baseCancel context.CancelFunc

	// conns are the connections to storage nodes (NodeAdmin).
	conns transport.Conns

	// metrics is the master's Prometheus registry (/metrics);
	// opsFinished counts the operators this master finished as leader.
	metrics     *prometheus.Registry
	opsFinished *prometheus.CounterVec

	// planMu makes planning and recording operators one at a time (the
	// scheduler's rounds and administrators' requests).
	planMu sync.Mutex

	stopOnce sync.Once
	stopC    chan struct{}
	wg       sync.WaitGroup
	errC     chan error
}

// Start starts a master.
func Start(ctx context.Context, cfg Config) (_ *Server, err error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: cfg.Logger.With("master", cfg.ID), stopC: make(chan struct{}), errC: make(chan error, 1),
		opsFinished: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "shoal_master_operators_finished_total", Help: "Operators this master finished as leader, by kind and outcome (done, rolled-back, failed).",
		}, []string{"kind", "outcome"})}
	s.conns.Dialer = cfg.Dialer
	s.baseCtx, s.baseCancel = context.WithCancel(context.Background())
	var cleanups []func()
	defer func() {
		if err != nil {
			for i := len(cleanups) - 1; i >= 0; i-- {
				cleanups[i]()
			}
		}
	}()
	s.eng, err = storage.Open(storage.Options{Dir: cfg.DataDir, FS: cfg.FS, CacheBytes: 32 << 20, MemTableBytes: 16 << 20,
		MaxStall: cfg.MaxDiskStall, OnFailure: s.failed, Logger: s.log})
	if err != nil {
		return nil, err
	}
	cleanups = append(cleanups, func() { s.eng.Close() })
	s.meta = newMetaState(s.eng)

	lis := cfg.Listener
	if lis == nil {
		var lc net.ListenConfig
		if lis, err = lc.Listen(ctx, "tcp", cfg.ListenAddr); err != nil {
			return nil, fmt.Errorf("master: listen %s: %w", cfg.ListenAddr, err)
		}
	}
	cleanups = append(cleanups, func() { lis.Close() })
	s.addr = lis.Addr().String()

	s.transport, err = transport.New(transport.Options{
		NodeID: cfg.ID, ClusterID: metaClusterID, Logger: s.log, Dialer: cfg.Dialer,
		Resolve: func(id uint64) (string, error) {
			if a, ok := cfg.Peers[id]; ok {
				return a, nil
			}
			return "", fmt.Errorf("no master %d", id)
		},
	})
	if err != nil {
		return nil, err
	}
	cleanups = append(cleanups, s.transport.Close)
	so := raftstore.Options{
		NodeID: cfg.ID, Engine: s.eng, Transport: s.transport, NewStateMachine: s.meta.newStateMachine, Logger: s.log,
		OnFailure: s.failed,
		// The meta group's log is small and truncated early.
		MaxLogEntries: 1000,
		// A quiet leader does not run CheckQuorum: a master leader cut off
		// from the other masters but not from the nodes would go on
		// answering them as the leader while another is elected. One group
		// costs little to keep ticking.
		DisableQuiesce: true,
	}
	if cfg.Store != nil {
		cfg.Store(&so)
	}
	s.store, err = raftstore.NewStore(so)
	if err != nil {
		return nil, err
	}
	cleanups = append(cleanups, s.store.Stop)
	if _, err := s.store.Status(MetaShard); err != nil {
		desc := &shoalpb.ShardDescriptor{ShardId: MetaShard, StartSlot: 0, EndSlot: keys.SlotCount, Epoch: 1}
		ids := make([]uint64, 0, len(cfg.Peers))
		for id := range cfg.Peers {
			ids = append(ids, id)
		}
		slices.Sort(ids)
		for _, id := range ids {
			desc.Replicas = append(desc.Replicas, &shoalpb.ReplicaDescriptor{NodeId: id, ReplicaId: id})
		}
		if err := s.store.BootstrapReplica(desc); err != nil {
			return nil, fmt.Errorf("master: create the meta group: %w", err)
		}
	} else if err := s.checkPeers(); err != nil {
		return nil, err
	}
	if cl := s.meta.cluster(); cl != nil && cfg.Bootstrap && (int(cl.Shards) != cfg.Shards || int(cl.Replicas) != cfg.Replicas) {
		return nil, fmt.Errorf("master: cluster %s was bootstrapped with --shards %d --replicas %d; they cannot change (asked for %d and %d)",
			cl.ClusterId, cl.Shards, cl.Replicas, cfg.Shards, cfg.Replicas)
	}
	s.transport.SetHandler(s.store)
	s.metrics = metrics.NewRegistry()
	grpcMetrics := metrics.NewGRPC(s.metrics)
	metrics.RegisterEngine(s.metrics, s.eng)
	// The meta group's Raft counters (elections, snapshots, truncations).
	metrics.RegisterStore(s.metrics, s.store)
	s.metrics.MustRegister(masterCollector{s}, s.opsFinished)
	s.grpc = grpc.NewServer(append(transport.ServerOptions(), grpc.ChainUnaryInterceptor(grpcMetrics.Unary()))...)
	s.transport.Register(s.grpc)
	shoalpb.RegisterMasterServer(s.grpc, s)
	go func() {
		if err := s.grpc.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			s.log.Error("grpc server failed", "err", err)
		}
	}()
	if err := s.startHTTP(ctx); err != nil {
		s.grpc.Stop()
		return nil, err
	}
	s.store.Start()
	s.wg.Add(1)
	go s.run()
	if cfg.Bootstrap {
		s.wg.Add(1)
		go s.bootstrap()
	}
	s.log.Info("master started", "addr", s.addr, "peers", len(cfg.Peers))
	return s, nil
}

// checkPeers refuses to start with a set of masters other than the one the
// meta group was created with.
func (s *Server) checkPeers() error {
	st, err := s.store.Status(MetaShard)
	if err != nil {
		return err
	}
	have := map[uint64]bool{}
	for _, r := range st.Descriptor.Replicas {
		have[r.ReplicaId] = true
	}
	if len(have) != len(s.cfg.Peers) {
		return fmt.Errorf("master: the meta group has masters %v; --peers names %d", keysOf(have), len(s.cfg.Peers))
	}
	for id := range s.cfg.Peers {
		if !have[id] {
			return fmt.Errorf("master: the meta group has masters %v; --peers names master %d", keysOf(have), id)
		}
	}
	return nil
}

func keysOf(m map[uint64]bool) []uint64 {
	out := make([]uint64, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// Addr returns the master's gRPC address.
func (s *Server) Addr() string { return s.addr }

// ID returns the master's ID.
func (s *Server) ID() uint64 { return s.cfg.ID }

// Err returns a channel that receives the error that stops the master by
// itself (a failed bootstrap, a storage failure).
func (s *Server) Err() <-chan error { return s.errC }

func (s *Server) failed(err error) {
	select {
	case s.errC <- err:
	default:
	}
}

// Heartbeats returns when each node last heartbeated, as this master has
// seen as leader (empty on a follower).
func (s *Server) Heartbeats() map[uint64]time.Time {
	s.lmu.Lock()
	defer s.lmu.Unlock()
	out := map[uint64]time.Time{}
	for id, t := range s.lmu.lastSeen {
		if t.After(s.lmu.since) {
			out[id] = t
		}
	}
	return out
}

// nodeBeat is a node's last heartbeat to this master as leader.
type nodeBeat struct {
	at time.Time
	hb *shoalpb.NodeHeartbeat
}

// IsLeader reports whether this master leads the meta group.
func (s *Server) IsLeader() bool {
	st, err := s.store.Status(MetaShard)
	return err == nil && st.Role == raftstore.RoleLeader
}

// Cluster returns the cluster's identity, nil before bootstrap.
func (s *Server) Cluster() *shoalpb.ClusterInfo { return s.meta.cluster() }

// Stop stops the master: HTTP and gRPC first, then the scheduler, the meta
// store, and the engine.
func (s *Server) Stop() {
	s.stopOnce.Do(func() {
		close(s.stopC)
		s.baseCancel()
		if s.http != nil {
			s.http.Close()
		}
		s.grpc.Stop()
		s.transport.Close()
		s.wg.Wait()
		s.conns.Close()
		s.store.Stop()
		s.eng.Close()
		s.log.Info("master stopped")
	})
}

// bootstrap asks the leader to bootstrap the cluster, until it answers.
func (s *Server) bootstrap() {
	defer s.wg.Done()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() {
		select {
		case <-s.stopC:
			cancel()
		case <-ctx.Done():
		}
	}()
	for {
		cl, err := s.proposeBootstrap(ctx)
		if err == nil {
			s.log.Info("cluster bootstrapped", "cluster", cl.ClusterId, "shards", cl.Shards, "replicas", cl.Replicas)
			return
		}
		var ce *codedError
		if errors.As(err, &ce) && ce.code == shoalpb.ErrorCode_ERROR_CODE_BOOTSTRAP_MISMATCH {
			s.log.Error("bootstrap refused", "err", err)
			s.failed(err)
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(100 * time.Millisecond):
		}
	}
}

// proposeBootstrap bootstraps through this master if it leads, or asks the
// leader.
func (s *Server) proposeBootstrap(ctx context.Context) (*shoalpb.ClusterInfo, error) {
	req := &shoalpb.BootstrapRequest{Shards: uint32(s.cfg.Shards), Replicas: uint32(s.cfg.Replicas)}
	if s.IsLeader() {
		return s.doBootstrap(ctx, req)
	}
	st, err := s.store.Status(MetaShard)
	if err != nil || st.LeaderReplica == 0 {
		return nil, errNoMetaLeader
	}
	conn, err := s.conns.Get(s.cfg.Peers[st.LeaderReplica])
	if err != nil {
		return nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	cl, err := shoalpb.NewMasterClient(conn).Bootstrap(cctx, req)
	if err != nil {
		return nil, fromStatus(err)
	}
	return cl, nil
}

func (s *Server) doBootstrap(ctx context.Context, req *shoalpb.BootstrapRequest) (*shoalpb.ClusterInfo, error) {
	if cl := s.meta.cluster(); cl != nil && cl.Shards == req.Shards && cl.Replicas == req.Replicas {
		return cl, nil
	}
	id := make([]byte, 8)
	if _, err := rand.Read(id); err != nil {
		return nil, err
	}
	res, err := s.propose(ctx, &shoalpb.MetaCommand{Cmd: &shoalpb.MetaCommand_Bootstrap{Bootstrap: &shoalpb.ClusterInfo{
		ClusterId: hex.EncodeToString(id), Shards: req.Shards, Replicas: req.Replicas,
	}}})
	if err != nil {
		return nil, err
	}
	return res.Cluster, nil
}

// propose replicates cmd through the meta group and returns its result, or
// its failure as an error.
func (s *Server) propose(ctx context.Context, cmd *shoalpb.MetaCommand) (*shoalpb.MetaResult, error) {
	cmd.NowMs = time.Now().UnixMilli()
	data, err := proto.Marshal(cmd)
	if err != nil {
		return nil, err
	}
	v, err := s.store.Propose(ctx, MetaShard, data)
	if err != nil {
		return nil, err
	}
	res := v.(*shoalpb.MetaResult)
	if res.Code != shoalpb.ErrorCode_ERROR_CODE_UNSPECIFIED {
		return nil, &codedError{code: res.Code, msg: res.Error}
	}
	return res, nil
}

func (s *Server) startHTTP(ctx context.Context) error {
	lis := s.cfg.HTTPListener
	if lis == nil {
		if s.cfg.HTTPAddr == "" {
			return nil
		}
		var lc net.ListenConfig
		var err error
		if lis, err = lc.Listen(ctx, "tcp", s.cfg.HTTPAddr); err != nil {
			return fmt.Errorf("master: listen %s: %w", s.cfg.HTTPAddr, err)
		}
	}
	s.http = &http.Server{Handler: s.HTTPHandler(), ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := s.http.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error("http server failed", "err", err)
		}
	}()
	return nil
}
