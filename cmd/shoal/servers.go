package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/shoaldb/shoal/internal/master"
	"github.com/shoaldb/shoal/internal/master/schedule"
	"github.com/shoaldb/shoal/internal/node"
	"github.com/shoaldb/shoal/internal/raftstore"
	"github.com/shoaldb/shoal/internal/storage"
	"github.com/shoaldb/shoal/internal/transport"
)

// envDuration, envInt, envFloat and envBool read SHOAL_* fallbacks for
// flags; a malformed value is reported before the command runs (checkEnv).
func envInt(name string, def int) int {
	if v, ok := os.LookupEnv(name); ok {
		if n, err := strconv.Atoi(v); err == nil {
			return n
		}
	}
	return def
}

func envFloat(name string, def float64) float64 {
	if v, ok := os.LookupEnv(name); ok {
		if f, err := strconv.ParseFloat(v, 64); err == nil {
			return f
		}
	}
	return def
}

func envBool(name string) bool {
	v, _ := strconv.ParseBool(os.Getenv(name))
	return v
}

func envDuration(name string, def time.Duration) time.Duration {
	if v, ok := os.LookupEnv(name); ok {
		if d, err := time.ParseDuration(v); err == nil {
			return d
		}
	}
	return def
}

// parsePeers parses "1=host:port,2=host:port".
func parsePeers(s string) (map[uint64]string, error) {
	out := map[uint64]string{}
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		id, addr, ok := strings.Cut(part, "=")
		n, err := strconv.ParseUint(id, 10, 64)
		if !ok || err != nil || n == 0 || addr == "" {
			return nil, fmt.Errorf("--peers: %q is not id=host:port", part)
		}
		out[n] = addr
	}
	return out, nil
}

func newMasterCmd(g *globalFlags) *cobra.Command {
	var (
		cfg      master.Config
		peers    string
		dialFrom string
		id       int
		stall    time.Duration
	)
	cmd := &cobra.Command{
		Use:   "master",
		Short: "Run a master (the control server)",
		Long: `Run one master. Masters form a Raft group of 1, 3 or 5 (--peers lists them
all, this one included) that keeps the cluster's metadata: the storage nodes
and their states, the shard table, and the placement decisions.

Without --listen a master listens on its own address in --peers.

Start the first time with --bootstrap on one master to fix the shard count and
the replication factor (--shards, --replicas: only with --bootstrap); they
cannot change afterwards.

  shoal master --id 1 --peers 1=127.0.0.1:7000 --bootstrap --shards 64 --replicas 3`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := g.logger(cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			if err := finishMasterConfig(cmd.Flags(), &cfg, id, peers); err != nil {
				return err
			}
			if cfg.DataDir == "" {
				cfg.DataDir = fmt.Sprintf("./shoal-master-%d", cfg.ID)
			}
			cfg.Logger = log
			if cfg.Dialer, err = transport.DialerFrom(dialFrom); err != nil {
				return err
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			if cfg.MaxDiskStall, err = maxDiskStall(stall); err != nil {
				return err
			}
			srv, err := master.Start(ctx, cfg)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "master %d serving gRPC on %s", srv.ID(), srv.Addr())
			if cfg.HTTPAddr != "" {
				fmt.Fprintf(cmd.OutOrStdout(), ", HTTP on %s", cfg.HTTPAddr)
			}
			fmt.Fprintln(cmd.OutOrStdout())
			select {
			case <-ctx.Done():
				stop() // a second SIGTERM or Ctrl-C ends the process at once
				return finishStop(stopTimeout, failedStopGrace, log, srv.Err(), func() error { srv.Stop(); return nil })
			case err := <-srv.Err():
				stopWithin(stopTimeout, log, srv.Stop)
				return fmt.Errorf("master failed: %w", err)
			}
		},
	}
	f := cmd.Flags()
	f.IntVar(&id, "id", envInt("SHOAL_MASTER_ID", 1), "this master's ID, one of --peers (env SHOAL_MASTER_ID)")
	f.StringVar(&cfg.ListenAddr, "listen", envOr("SHOAL_LISTEN", "127.0.0.1:7000"), "gRPC address; when not given, this master's address in --peers, or 127.0.0.1:7000 without --peers (env SHOAL_LISTEN)")
	f.StringVar(&cfg.HTTPAddr, "http", envOr("SHOAL_HTTP", "127.0.0.1:7080"), "HTTP address for /status, /healthz, /metrics, /debug/pprof and the admin API; empty for none (env SHOAL_HTTP)")
	f.StringVar(&dialFrom, "dial-from", envOr("SHOAL_DIAL_FROM", ""), "local IP address outgoing connections leave from; default: the system's choice (env SHOAL_DIAL_FROM)")
	f.StringVar(&peers, "peers", envOr("SHOAL_PEERS", ""), "every master as id=host:port, comma separated; default: this one alone (env SHOAL_PEERS)")
	f.StringVar(&cfg.DataDir, "data-dir", envOr("SHOAL_DATA_DIR", ""), "data directory (default ./shoal-master-<id>) (env SHOAL_DATA_DIR)")
	f.BoolVar(&cfg.Bootstrap, "bootstrap", envBool("SHOAL_BOOTSTRAP"), "bootstrap the cluster with --shards and --replicas (env SHOAL_BOOTSTRAP)")
	f.IntVar(&cfg.Shards, "shards", envInt("SHOAL_SHARDS", 64), "shards at bootstrap, a power of two; only with --bootstrap (env SHOAL_SHARDS)")
	f.IntVar(&cfg.Replicas, "replicas", envInt("SHOAL_REPLICAS", 3), "replicas per shard at bootstrap, 1..7; only with --bootstrap (env SHOAL_REPLICAS)")
	f.DurationVar(&cfg.NodeDownAfter, "node-down-after", envDuration("SHOAL_NODE_DOWN_AFTER", 30*time.Second), "a node silent this long is down (env SHOAL_NODE_DOWN_AFTER)")
	f.DurationVar(&cfg.RepairAfter, "repair-after", envDuration("SHOAL_REPAIR_AFTER", 10*time.Minute), "replace the replicas of a node down this long (env SHOAL_REPAIR_AFTER)")
	f.DurationVar(&cfg.OperatorStepTimeout, "operator-step-timeout", envDuration("SHOAL_OPERATOR_STEP_TIMEOUT", 10*time.Minute), "roll back an operator whose step (a snapshot included) takes longer (env SHOAL_OPERATOR_STEP_TIMEOUT)")
	f.IntVar(&cfg.Scheduler.MaxOperators, "max-operators", envInt("SHOAL_MAX_OPERATORS", schedule.DefaultMaxOperators), "operators in flight in the cluster at most (env SHOAL_MAX_OPERATORS)")
	maxDiskStallFlag(f, &stall)
	f.IntVar(&cfg.Scheduler.MaxOperatorsPerNode, "max-operators-per-node", envInt("SHOAL_MAX_OPERATORS_PER_NODE", schedule.DefaultMaxOperatorsPerNode), "replica moves touching one node at most (env SHOAL_MAX_OPERATORS_PER_NODE)")
	return cmd
}

// finishMasterConfig fills in cfg's ID, peers and listen address from the
// flags, and refuses bootstrap settings given without --bootstrap.
func finishMasterConfig(f *pflag.FlagSet, cfg *master.Config, id int, peers string) error {
	if id <= 0 {
		return fmt.Errorf("--id %d: want a positive master ID", id)
	}
	cfg.ID = uint64(id)
	var err error
	if cfg.Peers, err = parsePeers(peers); err != nil {
		return err
	}
	_, listenEnv := os.LookupEnv("SHOAL_LISTEN")
	listenSet := f.Changed("listen") || listenEnv
	switch {
	case len(cfg.Peers) == 0:
		cfg.Peers = map[uint64]string{cfg.ID: cfg.ListenAddr}
	case cfg.Peers[cfg.ID] == "":
		return fmt.Errorf("--id %d is not one of --peers %s", cfg.ID, peers)
	case !listenSet:
		// Listen where the other masters reach this one.
		cfg.ListenAddr = cfg.Peers[cfg.ID]
	}
	// Given on the command line (or in --config) they would be silently
	// ignored; SHOAL_SHARDS and SHOAL_REPLICAS may be set for every master
	// alike, and only the bootstrapping one reads them.
	if !cfg.Bootstrap && (f.Changed("shards") || f.Changed("replicas")) {
		return errors.New("--shards and --replicas are fixed at bootstrap; pass them with --bootstrap only")
	}
	return nil
}

func newNodeCmd(g *globalFlags) *cobra.Command {
	var (
		cfg             node.Config
		masters         string
		dialFrom        string
		shutdownTimeout time.Duration
		readLease       time.Duration
		cacheMiB        int
		rowCacheMiB     int
		diskReserveMiB  int
		stall           time.Duration
		memtableMiB     int
		entryCacheKiB   int
		snapMiBps       int
		maxSnapshots    int
		replyBacklogMiB int
	)
	cmd := &cobra.Command{
		Use:   "node",
		Short: "Run a storage node",
		Long: `Run a storage node. It registers with the masters (the first time it gets its
node ID, which it keeps in --data-dir), heartbeats them every second, and hosts
the replicas they place on it.

  shoal node --master 127.0.0.1:7000 --listen 127.0.0.1:7101 --data-dir ./node1`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			log, err := g.logger(cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			for _, m := range strings.Split(masters, ",") {
				if m = strings.TrimSpace(m); m != "" {
					cfg.Masters = append(cfg.Masters, m)
				}
			}
			if len(cfg.Masters) == 0 {
				return fmt.Errorf("--master: no master address")
			}
			cfg.Logger = log
			if cfg.Dialer, err = transport.DialerFrom(dialFrom); err != nil {
				return err
			}
			if cacheMiB < 1 || memtableMiB < 1 || memtableMiB >= 4096 || entryCacheKiB < 1 {
				return fmt.Errorf("--cache-mb and --raft-entry-cache-kb must be at least 1, --memtable-mb between 1 and 4095")
			}
			cfg.CacheBytes, cfg.MemTableBytes = int64(cacheMiB)<<20, uint64(memtableMiB)<<20
			if rowCacheMiB < 0 {
				return fmt.Errorf("--row-cache-mb %d: want 0 (no row cache) or more", rowCacheMiB)
			}
			cfg.RowCacheBytes = int64(rowCacheMiB) << 20
			if replyBacklogMiB < 1 || replyBacklogMiB > 1<<20 {
				return fmt.Errorf("--resp-max-reply-backlog-mb %d: want 1 to 1048576", replyBacklogMiB)
			}
			cfg.RESP.MaxReplyBacklog = replyBacklogMiB << 20
			if rowCacheMiB == 0 {
				cfg.RowCacheBytes = -1
			}
			if cfg.MaxDiskStall, err = maxDiskStall(stall); err != nil {
				return err
			}
			switch {
			case diskReserveMiB < -1 || diskReserveMiB > 1<<30:
				return fmt.Errorf("--disk-reserve-mb %d: want -1 (the default reserve), 0 (none) or up to %d", diskReserveMiB, 1<<30)
			case diskReserveMiB == -1:
				cfg.DiskReserveBytes = 0 // node's default
			case diskReserveMiB == 0:
				cfg.DiskReserveBytes = -1 // off
			default:
				cfg.DiskReserveBytes = int64(diskReserveMiB) << 20
			}
			if maxSnapshots < 1 {
				return fmt.Errorf("--max-snapshots %d: want at least 1", maxSnapshots)
			}
			cfg.Store = func(o *raftstore.Options) {
				o.ReadLease = readLease
				o.EntryCacheBytes = entryCacheKiB << 10
				o.SnapshotBytesPerSec = int64(snapMiBps) << 20 // 0: default; negative: unlimited
				o.MaxSnapshotSends, o.MaxSnapshotReceives = maxSnapshots, maxSnapshots
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			n, err := node.Start(ctx, cfg)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "node %d of cluster %s serving gRPC on %s\n", n.ID(), n.ClusterID(), n.Addr())
			select {
			case <-ctx.Done():
			case err := <-n.Err():
				// A supervisor (systemd, Kubernetes) restarts the node; if
				// it cannot come back, the masters count it down and move
				// its replicas.
				stopWithin(stopTimeout, log, func() { n.Stop() })
				return fmt.Errorf("node failed: %w", err)
			}
			stop() // a second SIGTERM or Ctrl-C ends the process at once
			// Hand the leaderships over before going, so clients see a
			// leader change rather than an election.
			sctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
			defer cancel()
			return finishStop(shutdownTimeout+stopTimeout, failedStopGrace, log, n.Err(), func() error {
				still, err := n.Shutdown(sctx)
				if still > 0 {
					log.Warn("stopped while still leading shards; they elect new leaders", "shards", still)
				}
				return err
			})
		},
	}
	addNodeAdminCmds(cmd)
	f := cmd.Flags()
	f.DurationVar(&shutdownTimeout, "shutdown-timeout", envDuration("SHOAL_SHUTDOWN_TIMEOUT", 10*time.Second), "on SIGTERM or Ctrl-C, hand leaderships to other nodes for at most this long before stopping; the stop itself gets 5s more, then the process exits without it (a stalled disk); a second SIGTERM or Ctrl-C exits at once (env SHOAL_SHUTDOWN_TIMEOUT)")
	f.StringVar(&masters, "master", envOr("SHOAL_MASTER", "127.0.0.1:7000"), "masters' gRPC addresses, comma separated (env SHOAL_MASTER)")
	f.StringVar(&cfg.ListenAddr, "listen", envOr("SHOAL_LISTEN", "127.0.0.1:7100"), "gRPC address (env SHOAL_LISTEN)")
	f.StringVar(&dialFrom, "dial-from", envOr("SHOAL_DIAL_FROM", ""), "local IP address outgoing connections leave from; default: the system's choice (env SHOAL_DIAL_FROM)")
	f.StringVar(&cfg.AdvertiseAddr, "advertise", envOr("SHOAL_ADVERTISE", ""), "gRPC address other nodes and clients use; default --listen, which must then not be a wildcard address such as 0.0.0.0 (env SHOAL_ADVERTISE)")
	f.StringVar(&cfg.DataDir, "data-dir", envOr("SHOAL_DATA_DIR", "./shoal-node"), "data directory (env SHOAL_DATA_DIR)")
	f.StringVar(&cfg.Zone, "zone", envOr("SHOAL_ZONE", ""), "zone (rack, availability zone): replicas spread over zones (env SHOAL_ZONE)")
	f.Float64Var(&cfg.Weight, "weight", envFloat("SHOAL_WEIGHT", 1), "capacity weight: replicas in proportion to it (env SHOAL_WEIGHT)")
	f.StringVar(&cfg.RESPAddr, "resp", envOr("SHOAL_RESP", "127.0.0.1:6379"), "Redis protocol (RESP) address; empty for none (env SHOAL_RESP)")
	f.StringVar(&cfg.RESPAdvertiseAddr, "resp-advertise", envOr("SHOAL_RESP_ADVERTISE", ""), "Redis address clients are sent to (CLUSTER SLOTS, MOVED), like Redis's cluster-announce-ip and -port; default --resp, with a wildcard host (0.0.0.0) replaced by --advertise's (env SHOAL_RESP_ADVERTISE)")
	f.StringVar(&cfg.RESP.Password, "resp-password", envOr("SHOAL_RESP_PASSWORD", ""), "password Redis clients must give with AUTH; empty for none (env SHOAL_RESP_PASSWORD)")
	f.BoolVar(&cfg.RESP.Proxy, "resp-proxy", envBool("SHOAL_RESP_PROXY"), "serve every key from this node by forwarding, for clients that do not follow MOVED (env SHOAL_RESP_PROXY)")
	f.IntVar(&cfg.RESP.MaxPipelined, "resp-max-pipelined", envInt("SHOAL_RESP_MAX_PIPELINED", 64), "commands of one Redis connection's pipeline that run at once (commands on one shard still run in order); 1 runs every command alone (env SHOAL_RESP_MAX_PIPELINED)")
	f.IntVar(&replyBacklogMiB, "resp-max-reply-backlog-mb", envInt("SHOAL_RESP_MAX_REPLY_BACKLOG_MB", 256), "MiB of replies one Redis connection holds that its client has not read; past it the connection reads no more commands until the client reads (env SHOAL_RESP_MAX_REPLY_BACKLOG_MB)")
	f.StringVar(&cfg.HTTPAddr, "http", envOr("SHOAL_HTTP", "127.0.0.1:7180"), "HTTP address for /status, /healthz, /metrics and /debug/pprof; empty for none (env SHOAL_HTTP)")
	f.DurationVar(&cfg.LeaderWait, "leader-wait", envDuration("SHOAL_LEADER_WAIT", 0), "how long a request for a shard that is electing a leader waits for the election to end before failing (Redis: -TRYAGAIN); 0: the default, the election timeout, 1s; negative (-1ns) fails at once (env SHOAL_LEADER_WAIT)")
	f.DurationVar(&cfg.HeartbeatInterval, "heartbeat", envDuration("SHOAL_HEARTBEAT", time.Second), "heartbeat interval (env SHOAL_HEARTBEAT)")
	f.IntVar(&cacheMiB, "cache-mb", envInt("SHOAL_CACHE_MB", 128), "Pebble block cache, MiB (env SHOAL_CACHE_MB); see docs/operations.md for the node's memory bound")
	f.IntVar(&diskReserveMiB, "disk-reserve-mb", envInt("SHOAL_DISK_RESERVE_MB", -1), "free disk space the node keeps, MiB: below it the node refuses writes to the shards it leads (deletes are accepted) and replicas moving in until space is freed, and below half of it stops taking other leaders' entries; -1 for 1024 or 5% of the disk, whichever is less; 0 turns it off (env SHOAL_DISK_RESERVE_MB); see docs/operations.md")
	maxDiskStallFlag(f, &stall)
	f.IntVar(&rowCacheMiB, "row-cache-mb", envInt("SHOAL_ROW_CACHE_MB", node.DefaultRowCacheBytes>>20), "values of recently read keys kept in memory, so that reading a hot key skips the storage engine, MiB; 0 turns it off (env SHOAL_ROW_CACHE_MB)")
	f.IntVar(&memtableMiB, "memtable-mb", envInt("SHOAL_MEMTABLE_MB", 32), "size of one Pebble memtable, MiB; up to two are held (env SHOAL_MEMTABLE_MB)")
	f.DurationVar(&cfg.MinSyncInterval, "wal-min-sync-interval", envDuration("SHOAL_WAL_MIN_SYNC_INTERVAL", 0), "least time between two syncs of the write-ahead log: a write waits at most this long for others to share its sync, and is acknowledged only once synced; 0: the default, 300µs; negative (-1ns) syncs at once (env SHOAL_WAL_MIN_SYNC_INTERVAL)")
	f.IntVar(&entryCacheKiB, "raft-entry-cache-kb", envInt("SHOAL_RAFT_ENTRY_CACHE_KB", 1024), "per replica, the most recent Raft log entries kept in memory, KiB; only entries not yet applied and acknowledged everywhere stay (env SHOAL_RAFT_ENTRY_CACHE_KB)")
	f.IntVar(&snapMiBps, "snapshot-mb-per-sec", envInt("SHOAL_SNAPSHOT_MB_PER_SEC", 128), "the rate this node sends replica snapshots at (moves, repair), all together, MiB/s; -1 for no limit (env SHOAL_SNAPSHOT_MB_PER_SEC)")
	f.IntVar(&maxSnapshots, "max-snapshots", envInt("SHOAL_MAX_SNAPSHOTS", 2), "snapshots this node sends at once (more wait) and receives at once (more are refused; their senders retry) (env SHOAL_MAX_SNAPSHOTS)")
	f.DurationVar(&readLease, "read-lease", envDuration("SHOAL_READ_LEASE", 0), "how long a shard leader serves linearizable reads from its own state after its followers confirmed it; 0: the default and most, 700ms; negative (-1s) turns leases off, every read then asks the followers: for hosts that can be frozen with their monotonic clock stopped, e.g. suspended or live-migrated VMs (env SHOAL_READ_LEASE)")
	return cmd
}

// stopTimeout bounds a server's Stop (after a node's leadership handover):
// with a stalled disk, Stop may never return, and nothing acknowledged
// needs it, since every acknowledged write is already synced.
const stopTimeout = 5 * time.Second

// failedStopGrace is how long a stop that is under way when the server
// fails may still take: one about to finish finishes, a stalled one does
// not hold the process.
const failedStopGrace = time.Second

// finishStop runs graceful, the stop that follows SIGTERM or Ctrl-C, for at
// most bound. It returns graceful's error; or, if the server fails first
// (failed: its Err channel, e.g. a disk that stalls during the stop), that
// failure, after giving graceful at most grace more; or, if
// graceful has not returned within bound, an error saying so. The process
// then exits without waiting further.
func finishStop(bound, grace time.Duration, log *slog.Logger, failed <-chan error, graceful func() error) error {
	done := make(chan error, 1)
	go func() { done <- graceful() }()
	t := time.NewTimer(bound)
	defer t.Stop()
	select {
	case err := <-done:
		// A failure reported as the stop ended still counts.
		select {
		case ferr := <-failed:
			return fmt.Errorf("failed while stopping: %w", ferr)
		default:
		}
		return err
	case err := <-failed:
		g := time.NewTimer(grace)
		defer g.Stop()
		select {
		case <-done:
		case <-g.C:
		case <-t.C:
		}
		return fmt.Errorf("failed while stopping: %w", err)
	case <-t.C:
		log.Error("stop did not finish; exiting without it", "waited", bound)
		return fmt.Errorf("stop did not finish within %v; exiting without it (every acknowledged write is on disk)", bound)
	}
}

// stopWithin runs stop, waiting for it at most d.
func stopWithin(d time.Duration, log *slog.Logger, stop func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		stop()
	}()
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		log.Error("stop did not finish; exiting without it", "waited", d)
	}
}

// maxDiskStallFlag adds --max-disk-stall, shared by `shoal master` and
// `shoal node`.
func maxDiskStallFlag(f *pflag.FlagSet, d *time.Duration) {
	f.DurationVar(d, "max-disk-stall", envDuration("SHOAL_MAX_DISK_STALL", storage.DefaultMaxStall),
		"a disk write or sync that has not returned after this long makes the process exit with an error, for a supervisor to restart it (the masters move a node's replicas once it stays down); 0 only logs slow disk operations (env SHOAL_MAX_DISK_STALL); see docs/operations.md")
}

// maxDiskStall turns --max-disk-stall into the Config field (negative: off).
func maxDiskStall(d time.Duration) (time.Duration, error) {
	switch {
	case d < 0:
		return 0, fmt.Errorf("--max-disk-stall %v: want 0 (off) or more", d)
	case d == 0:
		return -1, nil
	case d < time.Second:
		return 0, fmt.Errorf("--max-disk-stall %v: want at least 1s (disk operations are checked every 2s)", d)
	}
	return d, nil
}
