package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/shoaldb/shoal/internal/metrics"
	"github.com/shoaldb/shoal/internal/raftstore"
)

// statusJSON is what /status reports.
type statusJSON struct {
	NodeID    uint64                       `json:"node_id"`
	ClusterID string                       `json:"cluster_id"`
	Addr      string                       `json:"addr"`
	Replicas  []replicaJSON                `json:"replicas"`
	Store     raftstore.Stats              `json:"store"`
	Snapshots []raftstore.SnapshotProgress `json:"snapshots"`
}

type replicaJSON struct {
	Shard      uint64 `json:"shard"`
	Replica    uint64 `json:"replica"`
	Role       string `json:"role"`
	Term       uint64 `json:"term"`
	Applied    uint64 `json:"applied"`
	Epoch      uint64 `json:"epoch"`
	LeaderNode uint64 `json:"leader_node"`
	StartSlot  uint32 `json:"start_slot"`
	EndSlot    uint32 `json:"end_slot"`
	LogEntries uint64 `json:"log_entries"`
}

func (n *Node) serveHTTP(lis net.Listener) {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		if err := n.Failure(); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/status", func(w http.ResponseWriter, _ *http.Request) {
		st := statusJSON{NodeID: n.cfg.NodeID, ClusterID: n.cfg.ClusterID, Addr: n.addr, Store: n.store.Stats(),
			Snapshots: n.store.Snapshots()}
		for _, r := range n.store.Replicas() {
			st.Replicas = append(st.Replicas, replicaJSON{
				Shard: r.ShardID, Replica: r.ReplicaID, Role: string(r.Role), Term: r.Term, Applied: r.Applied,
				Epoch: r.Descriptor.GetEpoch(), LeaderNode: r.LeaderNode, StartSlot: r.Descriptor.GetStartSlot(),
				EndSlot: r.Descriptor.GetEndSlot(), LogEntries: r.LogEntries,
			})
		}
		w.Header().Set("Content-Type", "application/json")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(st)
	})
	metrics.Mount(mux, n.metrics)
	// Requests' contexts end when the node stops, so that a long one (a
	// CPU profile) does not hold the stop.
	base, cancel := context.WithCancel(context.Background())
	n.httpCancel = cancel
	n.http = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second,
		BaseContext: func(net.Listener) context.Context { return base }}
	go func() {
		if err := n.http.Serve(lis); err != nil && !errors.Is(err, http.ErrServerClosed) {
			n.log.Error("http server failed", "err", err)
		}
	}()
}

// Metrics returns the node's Prometheus registry (served on /metrics).
func (n *Node) Metrics() *prometheus.Registry { return n.metrics }

// HTTPAddr returns the address the node serves HTTP on, "" if none.
func (n *Node) HTTPAddr() string { return n.cfg.HTTPAddr }

// RESPAddr returns the address the node serves the Redis protocol on, ""
// if none.
func (n *Node) RESPAddr() string { return n.cfg.RESPAddr }
