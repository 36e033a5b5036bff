// Package metrics owns Shoal's Prometheus metrics and the debugging
// endpoints served next to them. Every server (node or master) builds its
// own Registry with NewRegistry and registers what it has; nothing here is
// package-level state, so several servers in one process (the playground,
// tests) keep separate metrics.
//
// Names: shoal_grpc_* for gRPC requests, shoal_resp_* for Redis commands,
// shoal_raft_* for the multi-Raft store, shoal_storage_* for Pebble,
// shoal_kv_* for the key-value layer and
// shoal_master_* for the master's view of the cluster. Counters read
// cumulative values that the store keeps anyway (Store.Stats), so a scrape
// costs one pass over them and nothing on the hot path.
package metrics

import (
	"context"
	"net/http"
	"net/http/pprof"
	"path"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/status"

	"github.com/shoaldb/shoal/internal/kv"
	"github.com/shoaldb/shoal/internal/raftstore"
	"github.com/shoaldb/shoal/internal/storage"
)

// NewRegistry returns a registry with the Go runtime and process
// collectors.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// Mount serves /metrics from reg and /debug/pprof/ on mux, except
// /debug/pprof/cmdline: a process's arguments can hold a password
// (--resp-password), and this port is scraped by monitoring.
func Mount(mux *http.ServeMux, reg *prometheus.Registry) {
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
}

// latencyBuckets spans 50µs to about 13 s.
var latencyBuckets = prometheus.ExponentialBuckets(50e-6, 2, 18)

// requests counts requests by what they were and their result, and times
// them by what they were. Both label sets are small and fixed (command or
// method names, result words), so the children are looked up once each and
// kept in seen: a request then costs two atomic updates, not two label
// hashes and map lookups under the vectors' locks.
type requests struct {
	count   *prometheus.CounterVec
	latency *prometheus.HistogramVec
	seen    *sync.Map // requestLabels -> *requestMetrics
}

type requestLabels struct{ what, result string }

type requestMetrics struct {
	count   prometheus.Counter
	latency prometheus.Observer
}

// newRequests registers <name>_total{what, result} and <name>_seconds{what}.
func newRequests(reg prometheus.Registerer, name, what, result, help string) requests {
	r := requests{
		count: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: name + "_total", Help: help + ", by " + what + " and " + result + ".",
		}, []string{what, result}),
		latency: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: name + "_seconds", Help: help + " latency, by " + what + ".", Buckets: latencyBuckets,
		}, []string{what}),
		seen: &sync.Map{},
	}
	reg.MustRegister(r.count, r.latency)
	return r
}

func (r requests) observe(what, result string, d time.Duration) {
	k := requestLabels{what, result}
	m, ok := r.seen.Load(k)
	if !ok {
		m, _ = r.seen.LoadOrStore(k, &requestMetrics{
			count:   r.count.WithLabelValues(what, result),
			latency: r.latency.WithLabelValues(what),
		})
	}
	rm := m.(*requestMetrics)
	rm.count.Inc()
	rm.latency.Observe(d.Seconds())
}

// GRPC counts and times a gRPC server's unary requests by method and
// status code: shoal_grpc_requests_total and shoal_grpc_requests_seconds.
type GRPC struct{ r requests }

// NewGRPC registers the gRPC request metrics on reg.
func NewGRPC(reg prometheus.Registerer) *GRPC {
	return &GRPC{newRequests(reg, "shoal_grpc_requests", "method", "code", "gRPC requests served")}
}

// Unary returns the interceptor that records every unary request.
func (g *GRPC) Unary() grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		start := time.Now()
		resp, err := handler(ctx, req)
		g.r.observe(path.Base(info.FullMethod), status.Code(err).String(), time.Since(start))
		return resp, err
	}
}

// Observe records one request of method (its bare name, as "Get") that
// was not served as its own unary call: a command of a KV.BatchCommands
// stream. It counts as the unary call would have.
func (g *GRPC) Observe(method string, err error, d time.Duration) {
	g.r.observe(method, status.Code(err).String(), d)
}

// Commands counts and times Redis commands by name and result (ok or the
// error's first word): shoal_resp_commands_total and
// shoal_resp_commands_seconds.
type Commands struct{ r requests }

// NewCommands registers the Redis command metrics on reg.
func NewCommands(reg prometheus.Registerer) *Commands {
	return &Commands{newRequests(reg, "shoal_resp_commands", "command", "result", "Redis commands served")}
}

// Observe records one command.
func (c *Commands) Observe(command, result string, d time.Duration) { c.r.observe(command, result, d) }

// RegisterStore registers the multi-Raft store's counters and gauges.
func RegisterStore(reg prometheus.Registerer, st *raftstore.Store) {
	reg.MustRegister(storeCollector{st})
}

type storeCollector struct{ st *raftstore.Store }

var (
	storeCounters = []struct {
		name, help string
		get        func(raftstore.Stats) uint64
	}{
		{"shoal_raft_proposals_total", "Commands accepted by Raft.", func(s raftstore.Stats) uint64 { return s.Proposals }},
		{"shoal_raft_applied_entries_total", "Raft entries applied.", func(s raftstore.Stats) uint64 { return s.Applied }},
		{"shoal_raft_loop_iterations_total", "Store loop iterations.", func(s raftstore.Stats) uint64 { return s.Iterations }},
		{"shoal_raft_log_syncs_total", "Group commits that synced the Raft log.", func(s raftstore.Stats) uint64 { return s.LogSyncs }},
		{"shoal_raft_log_sync_replicas_total", "Replicas whose log writes group commits carried.", func(s raftstore.Stats) uint64 { return s.LogSyncReplicas }},
		{"shoal_raft_messages_sent_total", "Raft messages sent.", func(s raftstore.Stats) uint64 { return s.MessagesSent }},
		{"shoal_raft_messages_dropped_total", "Raft messages dropped (queue full, peer unreachable).", func(s raftstore.Stats) uint64 { return s.MessagesDropped }},
		{"shoal_raft_empty_appends_sent_total", "Raft appends sent with no entries (a leader's notices of a new commit index, and probes).", func(s raftstore.Stats) uint64 { return s.EmptyAppendsSent }},
		{"shoal_raft_appends_refused_disk_full_total", "Received appends with entries dropped because the disk was below half its reserve.", func(s raftstore.Stats) uint64 { return s.AppendsRefusedDiskFull }},
		{"shoal_raft_commit_notices_dropped_total", "Commit-index notices a leader did not send, to followers that had acknowledged every entry.", func(s raftstore.Stats) uint64 { return s.CommitNoticesDropped }},
		{"shoal_raft_messages_received_total", "Raft messages received.", func(s raftstore.Stats) uint64 { return s.MessagesReceived }},
		{"shoal_raft_snapshots_sent_total", "Snapshots streamed to other nodes.", func(s raftstore.Stats) uint64 { return s.SnapshotsSent }},
		{"shoal_raft_snapshots_received_total", "Snapshots received.", func(s raftstore.Stats) uint64 { return s.SnapshotsReceived }},
		{"shoal_raft_snapshots_failed_total", "Snapshot streams that failed.", func(s raftstore.Stats) uint64 { return s.SnapshotsFailed }},
		{"shoal_raft_snapshots_applied_total", "Snapshots restored.", func(s raftstore.Stats) uint64 { return s.SnapshotsApplied }},
		{"shoal_raft_log_truncations_total", "Raft log truncations.", func(s raftstore.Stats) uint64 { return s.Truncations }},
		{"shoal_raft_replicas_created_total", "Replicas created empty for a snapshot.", func(s raftstore.Stats) uint64 { return s.ReplicasCreated }},
		{"shoal_raft_replicas_removed_total", "Replicas destroyed.", func(s raftstore.Stats) uint64 { return s.ReplicasRemoved }},
		{"shoal_raft_elections_total", "Elections started by replicas here (became candidate).", func(s raftstore.Stats) uint64 { return s.Campaigns }},
		{"shoal_raft_proposals_held_total", "Proposals that reached a leader while it handed its leadership over and waited for the transfer to end (each counted once).", func(s raftstore.Stats) uint64 { return s.ProposalsHeld }},
		{"shoal_raft_transfers_requested_total", "Leadership transfers asked of leaders on this node.", func(s raftstore.Stats) uint64 { return s.TransfersRequested }},
		{"shoal_raft_transfers_started_total", "Leadership transfers handed to Raft (target close enough, or answering after an election timeout).", func(s raftstore.Stats) uint64 { return s.TransfersStarted }},
		{"shoal_raft_transfers_given_up_total", "Leadership transfers dropped: the target was still far behind and silent, or needed a snapshot, after an election timeout.", func(s raftstore.Stats) uint64 { return s.TransfersGivenUp }},
		{"shoal_raft_transfers_cancelled_total", "Leadership transfers withdrawn before they reached Raft because their caller gave up.", func(s raftstore.Stats) uint64 { return s.TransfersCancelled }},
		{"shoal_raft_transfers_aborted_total", "Leadership transfers Raft ran, aborted because nothing was heard from the target's node for half an election timeout.", func(s raftstore.Stats) uint64 { return s.TransfersAborted }},
		{"shoal_raft_leader_waits_total", "Waits of requests that found their shard electing a leader (node --leader-wait); a request can wait more than once.", func(s raftstore.Stats) uint64 { return s.LeaderWaits }},
		{"shoal_raft_leader_changes_total", "Times a replica here became leader (election or transfer).", func(s raftstore.Stats) uint64 { return s.Leaderships }},
	}
	descReplicas = prometheus.NewDesc("shoal_raft_replicas", "Replicas on this node, by Raft role.", []string{"role"}, nil)
	descTerms    = prometheus.NewDesc("shoal_raft_term_sum", "Sum of the Raft terms of this node's replicas: it grows with every election.", nil, nil)
	descCache    = prometheus.NewDesc("shoal_raft_entry_cache_bytes", "Bytes held by the replicas' Raft entry caches.", nil, nil)
	descSentType = prometheus.NewDesc("shoal_raft_messages_sent_by_type_total", "Raft messages sent, by Raft message type (Removed: notices to removed replicas).", []string{"type"}, nil)
)

func counterDesc(i int) *prometheus.Desc {
	return prometheus.NewDesc(storeCounters[i].name, storeCounters[i].help, nil, nil)
}

func (c storeCollector) Describe(ch chan<- *prometheus.Desc) {
	for i := range storeCounters {
		ch <- counterDesc(i)
	}
	ch <- descReplicas
	ch <- descTerms
	ch <- descCache
	ch <- descSentType
}

func (c storeCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.st.Stats()
	for i, sc := range storeCounters {
		ch <- prometheus.MustNewConstMetric(counterDesc(i), prometheus.CounterValue, float64(sc.get(s)))
	}
	roles := map[string]float64{}
	var terms float64
	for _, r := range c.st.Replicas() {
		roles[string(r.Role)]++
		terms += float64(r.Term)
	}
	for role, n := range roles {
		ch <- prometheus.MustNewConstMetric(descReplicas, prometheus.GaugeValue, n, role)
	}
	ch <- prometheus.MustNewConstMetric(descTerms, prometheus.GaugeValue, terms)
	ch <- prometheus.MustNewConstMetric(descCache, prometheus.GaugeValue, float64(s.EntryCacheBytes))
	for t, n := range s.MessagesSentByType {
		ch <- prometheus.MustNewConstMetric(descSentType, prometheus.CounterValue, float64(n), t)
	}
}

// RegisterEngine registers Pebble's statistics, the WAL fsync latency
// among them.
func RegisterEngine(reg prometheus.Registerer, eng *storage.Engine) {
	reg.MustRegister(engineCollector{eng})
}

type engineCollector struct{ eng *storage.Engine }

var (
	descDisk        = prometheus.NewDesc("shoal_storage_disk_bytes", "Bytes Pebble uses on disk.", nil, nil)
	descMemtable    = prometheus.NewDesc("shoal_storage_memtable_bytes", "Bytes in memtables.", nil, nil)
	descCompactions = prometheus.NewDesc("shoal_storage_compactions_total", "Compactions run.", nil, nil)
	descFlushes     = prometheus.NewDesc("shoal_storage_flushes_total", "Memtable flushes.", nil, nil)
	descL0Files     = prometheus.NewDesc("shoal_storage_l0_files", "Files in level 0 (a read amplification signal).", nil, nil)
	descReadAmp     = prometheus.NewDesc("shoal_storage_read_amplification", "Sublevels a read may visit.", nil, nil)
	descCacheHits   = prometheus.NewDesc("shoal_storage_block_cache_hits_total", "Block cache hits.", nil, nil)
	descCacheMisses = prometheus.NewDesc("shoal_storage_block_cache_misses_total", "Block cache misses.", nil, nil)
	descWALBytes    = prometheus.NewDesc("shoal_storage_wal_bytes_written_total", "Bytes written to the WAL.", nil, nil)
	descFsync       = prometheus.NewDesc("shoal_storage_wal_fsync_seconds", "WAL fsync latency.", nil, nil)
)

func (c engineCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descDisk, descMemtable, descCompactions, descFlushes, descL0Files, descReadAmp,
		descCacheHits, descCacheMisses, descWALBytes, descFsync} {
		ch <- d
	}
}

func (c engineCollector) Collect(ch chan<- prometheus.Metric) {
	m := c.eng.Metrics()
	gauge := func(d *prometheus.Desc, v float64) { ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v) }
	counter := func(d *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v)
	}
	gauge(descDisk, float64(m.DiskSpaceUsage()))
	gauge(descMemtable, float64(m.MemTable.Size))
	counter(descCompactions, float64(m.Compact.Count))
	counter(descFlushes, float64(m.Flush.Count))
	gauge(descL0Files, float64(m.Levels[0].TablesCount))
	gauge(descReadAmp, float64(m.ReadAmp()))
	counter(descCacheHits, float64(m.BlockCache.Hits))
	counter(descCacheMisses, float64(m.BlockCache.Misses))
	counter(descWALBytes, float64(m.WAL.BytesWritten))
	if h, ok := m.LogWriter.FsyncLatency.(prometheus.Metric); ok && h != nil {
		if hm := nsToSeconds(h); hm != nil {
			ch <- hm
		}
	}
}

// RegisterSpace registers what the node's disk-space guard measured: free
// bytes, the reserve, and whether writes are refused (nil: nothing).
func RegisterSpace(reg prometheus.Registerer, g *storage.SpaceGuard) {
	if g != nil {
		reg.MustRegister(spaceCollector{g})
	}
}

type spaceCollector struct{ g *storage.SpaceGuard }

var (
	descDiskFree    = prometheus.NewDesc("shoal_disk_free_bytes", "Free bytes on the data directory's filesystem (absent when it cannot be measured).", nil, nil)
	descDiskReserve = prometheus.NewDesc("shoal_disk_reserve_bytes", "Free space below which the node refuses writes (deletes are accepted); negative when off.", nil, nil)
	descDiskFull    = prometheus.NewDesc("shoal_disk_full", "1 while the node refuses writes because its disk is below the reserve.", nil, nil)
)

func (c spaceCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- descDiskFree
	ch <- descDiskReserve
	ch <- descDiskFull
}

func (c spaceCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.g.Cached() // a scrape must not hang on statfs

	if s.Known {
		ch <- prometheus.MustNewConstMetric(descDiskFree, prometheus.GaugeValue, float64(s.Available))
	}
	ch <- prometheus.MustNewConstMetric(descDiskReserve, prometheus.GaugeValue, float64(s.Reserve))
	full := 0.0
	if s.Full {
		full = 1
	}
	ch <- prometheus.MustNewConstMetric(descDiskFull, prometheus.GaugeValue, full)
}

// RegisterRowCache registers the statistics of the key-value layer's row
// cache (nil: nothing).
func RegisterRowCache(reg prometheus.Registerer, c *kv.RowCache) {
	if c != nil {
		reg.MustRegister(rowCacheCollector{c})
	}
}

type rowCacheCollector struct{ c *kv.RowCache }

var (
	descRowHits      = prometheus.NewDesc("shoal_kv_row_cache_hits_total", "Reads served by the row cache.", nil, nil)
	descRowMisses    = prometheus.NewDesc("shoal_kv_row_cache_misses_total", "Reads that went to the engine.", nil, nil)
	descRowEvictions = prometheus.NewDesc("shoal_kv_row_cache_evictions_total", "Entries evicted to stay within the cache's size.", nil, nil)
	descRowBytes     = prometheus.NewDesc("shoal_kv_row_cache_bytes", "Bytes the row cache holds (keys, values, bookkeeping).", nil, nil)
	descRowEntries   = prometheus.NewDesc("shoal_kv_row_cache_entries", "Keys the row cache holds.", nil, nil)
)

func (c rowCacheCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descRowHits, descRowMisses, descRowEvictions, descRowBytes, descRowEntries} {
		ch <- d
	}
}

func (c rowCacheCollector) Collect(ch chan<- prometheus.Metric) {
	st := c.c.Stats()
	ch <- prometheus.MustNewConstMetric(descRowHits, prometheus.CounterValue, float64(st.Hits))
	ch <- prometheus.MustNewConstMetric(descRowMisses, prometheus.CounterValue, float64(st.Misses))
	ch <- prometheus.MustNewConstMetric(descRowEvictions, prometheus.CounterValue, float64(st.Evictions))
	ch <- prometheus.MustNewConstMetric(descRowBytes, prometheus.GaugeValue, float64(st.Bytes))
	ch <- prometheus.MustNewConstMetric(descRowEntries, prometheus.GaugeValue, float64(st.Entries))
}

// nsToSeconds re-emits Pebble's unnamed fsync histogram (in nanoseconds)
// under Shoal's name, in seconds.
func nsToSeconds(h prometheus.Metric) prometheus.Metric {
	var m dto.Metric
	if err := h.Write(&m); err != nil || m.Histogram == nil {
		return nil
	}
	buckets := map[float64]uint64{}
	for _, b := range m.Histogram.Bucket {
		buckets[b.GetUpperBound()/1e9] = b.GetCumulativeCount()
	}
	cm, err := prometheus.NewConstHistogram(descFsync, m.Histogram.GetSampleCount(), m.Histogram.GetSampleSum()/1e9, buckets)
	if err != nil {
		return nil
	}
	return cm
}
