package node

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"

	"github.com/cockroachdb/pebble/v2/vfs"
	"google.golang.org/grpc"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/internal/kv"
	"github.com/shoaldb/shoal/internal/raftstore"
	"github.com/shoaldb/shoal/internal/storage"
	"github.com/shoaldb/shoal/internal/transport"
)

// Config configures a node. Zero values take the documented defaults.
type Config struct {
	// NodeID is this node's ID, never 0. Required.
	NodeID uint64
	// ClusterID names the cluster; Raft streams from other clusters are
	// refused. Required.
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
	// Resolve returns the gRPC address of another node. Required.
	Resolve func(node uint64) (string, error)
	// Shards are the shards placed on the cluster; the node bootstraps its
	// replicas of those it does not hold yet.
	Shards []*shoalpb.ShardDescriptor
	// CacheBytes and MemTableBytes size Pebble; see storage.Options.
	CacheBytes    int64
	MemTableBytes uint64
	// Store adjusts the store's options (timing, limits, knobs) before it is
	// created.
	Store func(o *raftstore.Options)
	// KV configures the key-value layer.
	KV kv.Options
	// NewStateMachine replaces the key-value state machine; tests about
	// replication use it. Default: kv.NewStateMachine.
	NewStateMachine func(desc *shoalpb.ShardDescriptor) raftstore.StateMachine
	// WrapTransport, if set, wraps the Raft sender; tests inject faults here.
	WrapTransport func(transport.Sender) transport.Sender
	// Logger receives the node's logs. Default: discarded.
	Logger *slog.Logger
}

func (c *Config) validate() error {
	switch {
	case c.NodeID == 0:
		return errors.New("node: Config.NodeID is required")
	case c.ClusterID == "":
		return errors.New("node: Config.ClusterID is required")
	case c.DataDir == "":
		return errors.New("node: Config.DataDir is required")
	case c.Resolve == nil:
		return errors.New("node: Config.Resolve is required")
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
	cfg       Config
	log       *slog.Logger
	addr      string
	engine    *storage.Engine
	store     *raftstore.Store
	transport *transport.Transport
	kv        *kv.DB
	server    *grpc.Server

	stopOnce sync.Once
}

// Start starts a node; Stop releases everything it holds.
func Start(ctx context.Context, cfg Config) (_ *Node, err error) {
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	n := &Node{cfg: cfg, log: cfg.Logger.With("node", cfg.NodeID)}
	var cleanups []func()
	defer func() {
		if err != nil {
			for i := len(cleanups) - 1; i >= 0; i-- {
				cleanups[i]()
			}
		}
	}()

	n.engine, err = storage.Open(storage.Options{
		Dir: cfg.DataDir, FS: cfg.FS, CacheBytes: cfg.CacheBytes, MemTableBytes: cfg.MemTableBytes, Logger: n.log,
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

	n.transport, err = transport.New(transport.Options{
		NodeID: cfg.NodeID, ClusterID: cfg.ClusterID, Resolve: cfg.Resolve, Logger: n.log,
	})
	if err != nil {
		return nil, err
	}
	cleanups = append(cleanups, n.transport.Close)
	var sender transport.Sender = n.transport
	if cfg.WrapTransport != nil {
		sender = cfg.WrapTransport(sender)
	}

	newSM := cfg.NewStateMachine
	if newSM == nil {
		smOpts := kv.StateMachineOptions{Logger: n.log}
		newSM = func(desc *shoalpb.ShardDescriptor) raftstore.StateMachine { return kv.NewStateMachine(desc, smOpts) }
	}
	so := raftstore.Options{
		NodeID:          cfg.NodeID,
		Engine:          n.engine,
		Transport:       sender,
		NewStateMachine: newSM,
		Logger:          n.log,
	}
	if cfg.Store != nil {
		cfg.Store(&so)
	}
	n.store, err = raftstore.NewStore(so)
	if err != nil {
		return nil, err
	}
	cleanups = append(cleanups, n.store.Stop)
	for _, d := range cfg.Shards {
		if !placedOn(d, cfg.NodeID) {
			continue
		}
		if _, err := n.store.Status(d.ShardId); err == nil {
			continue
		}
		if err := n.store.BootstrapReplica(d); err != nil {
			return nil, fmt.Errorf("node: bootstrap shard %d: %w", d.ShardId, err)
		}
	}
	n.transport.SetHandler(n.store)

	n.server = grpc.NewServer(transport.ServerOptions()...)
	n.transport.Register(n.server)
	go func() {
		if err := n.server.Serve(lis); err != nil && !errors.Is(err, grpc.ErrServerStopped) {
			n.log.Error("grpc server failed", "err", err)
		}
	}()

	kvOpts := cfg.KV
	if kvOpts.Logger == nil {
		kvOpts.Logger = n.log
	}
	n.store.Start()
	n.kv = kv.New(n.store, kvOpts)
	n.log.Info("node started", "addr", n.addr, "replicas", len(n.store.Replicas()))
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

// Addr returns the gRPC address the node listens on.
func (n *Node) Addr() string { return n.addr }

// Store returns the node's multi-Raft store.
func (n *Node) Store() *raftstore.Store { return n.store }

// KV returns the node's key-value layer.
func (n *Node) KV() *kv.DB { return n.kv }

// Engine returns the node's database.
func (n *Node) Engine() *storage.Engine { return n.engine }

// Stop shuts the node down; see the package doc for the order. It returns
// the error that stopped the store, if any.
func (n *Node) Stop() error {
	var err error
	n.stopOnce.Do(func() {
		n.server.Stop()
		n.transport.Close()
		n.kv.Close()
		n.store.Stop()
		err = n.store.Err()
		if cerr := n.engine.Close(); err == nil {
			err = cerr
		}
		n.log.Info("node stopped")
	})
	return err
}
