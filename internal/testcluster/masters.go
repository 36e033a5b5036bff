package testcluster

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"time"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/internal/master"
)

// Master is one master of a cluster in master mode.
type Master struct {
	ID   uint64
	Addr string
	c    *Cluster
	dir  string

	mu      sync.Mutex
	running bool
	srv     *master.Server
}

// startMasters starts the masters; the first one bootstraps the cluster.
func (c *Cluster) startMasters(base string) {
	peers := map[uint64]string{}
	var lis []net.Listener
	for i := range c.opts.Masters {
		l, err := listen("")
		if err != nil {
			c.t.Fatal(err)
		}
		lis = append(lis, l)
		id := uint64(i + 1)
		peers[id] = l.Addr().String()
		c.Masters = append(c.Masters, &Master{ID: id, Addr: peers[id], c: c, dir: filepath.Join(base, fmt.Sprintf("master%d", id))})
	}
	for i, m := range c.Masters {
		if err := m.start(peers, lis[i]); err != nil {
			c.t.Fatalf("start master %d: %v", m.ID, err)
		}
	}
}

func (m *Master) start(peers map[uint64]string, lis net.Listener) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.running {
		return nil
	}
	if lis == nil {
		var err error
		if lis, err = listen(m.Addr); err != nil {
			return err
		}
	}
	cfg := master.Config{
		ID: m.ID, Peers: peers, Listener: lis, DataDir: m.dir,
		Bootstrap: m.ID == 1, Shards: m.c.opts.Shards, Replicas: m.c.opts.Replicas,
		NodeDownAfter: 3 * time.Second, PlacementDelay: 300 * time.Millisecond, ScheduleInterval: 100 * time.Millisecond,
		Logger: m.c.opts.Logger.With("master", m.ID),
	}
	if m.c.opts.Master != nil {
		m.c.opts.Master(&cfg)
	}
	srv, err := master.Start(context.Background(), cfg)
	if err != nil {
		lis.Close()
		return err
	}
	m.srv, m.running = srv, true
	return nil
}

func (c *Cluster) masterPeers() map[uint64]string {
	peers := map[uint64]string{}
	for _, m := range c.Masters {
		peers[m.ID] = m.Addr
	}
	return peers
}

// MasterAddrs returns every master's address.
func (c *Cluster) MasterAddrs() []string {
	var out []string
	for _, m := range c.Masters {
		out = append(out, m.Addr)
	}
	return out
}

// Dir returns the master's data directory.
func (m *Master) Dir() string { return m.dir }

// Server returns the master's current server.
func (m *Master) Server() *master.Server {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.srv
}

// Running reports whether the master is up.
func (m *Master) Running() bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.running
}

// Stop stops the master; Restart brings it back on its data.
func (m *Master) Stop() {
	m.mu.Lock()
	defer m.mu.Unlock()
	if !m.running {
		return
	}
	m.running = false
	m.srv.Stop()
}

// Restart starts a stopped master on its data and address.
func (m *Master) Restart() error { return m.start(m.c.masterPeers(), nil) }

// MasterLeader returns the running master that leads the meta group.
func (c *Cluster) MasterLeader() (*Master, error) {
	for _, m := range c.Masters {
		if m.Running() && m.Server().IsLeader() {
			return m, nil
		}
	}
	return nil, fmt.Errorf("no master leads")
}

// MasterFollower returns a running master that does not lead, nil if
// there is none.
func (c *Cluster) MasterFollower() *Master {
	for _, m := range c.Masters {
		if m.Running() && !m.Server().IsLeader() {
			return m
		}
	}
	return nil
}

// ClusterState returns the meta state as the leading master has it.
func (c *Cluster) ClusterState() (*shoalpb.ClusterState, error) {
	m, err := c.MasterLeader()
	if err != nil {
		return nil, err
	}
	return m.Server().GetCluster(context.Background(), &shoalpb.GetClusterRequest{})
}

// WaitPlaced waits (master mode) until the master has placed every shard
// and each has a leader on a node; it then records the shard table in
// c.Shards.
func (c *Cluster) WaitPlaced(ctx context.Context) error {
	return WaitFor(ctx, func() error {
		st, err := c.ClusterState()
		if err != nil {
			return err
		}
		if len(st.Routes.Shards) != c.opts.Shards {
			return fmt.Errorf("%d of %d shards placed", len(st.Routes.Shards), c.opts.Shards)
		}
		c.Shards = c.Shards[:0]
		for _, rt := range st.Routes.Shards {
			c.Shards = append(c.Shards, rt.Shard)
		}
		return c.WaitForLeaders(ctx)
	})
}

// NodeByID returns the node with a given ID (master mode assigns IDs in
// registration order).
func (c *Cluster) NodeByID(id uint64) *Node {
	for _, n := range c.Nodes {
		if n.ID == id {
			return n
		}
	}
	return nil
}
