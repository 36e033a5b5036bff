package master

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/shoaldb/shoal/api/shoalpb"
)

// masterCollector reports the master's view of the cluster: nodes by
// state, operators in flight by kind, and whether this master leads.
type masterCollector struct{ s *Server }

var (
	descNodes     = prometheus.NewDesc("shoal_master_nodes", "Storage nodes, by state.", []string{"state"}, nil)
	descOps       = prometheus.NewDesc("shoal_master_operators_in_flight", "Operators in flight, by kind.", []string{"kind"}, nil)
	descLeader    = prometheus.NewDesc("shoal_master_is_leader", "1 if this master leads the meta group.", nil, nil)
	descShards    = prometheus.NewDesc("shoal_master_shards", "Shards in the route table.", nil, nil)
	descUnderRepl = prometheus.NewDesc("shoal_master_shards_under_replicated", "Shards with fewer voters on up nodes than the replication factor.", nil, nil)
)

func (c masterCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descNodes, descOps, descLeader, descShards, descUnderRepl} {
		ch <- d
	}
}

func (c masterCollector) Collect(ch chan<- prometheus.Metric) {
	states := map[string]float64{}
	up := map[uint64]bool{}
	for _, n := range c.s.meta.nodes() {
		states[n.State.Name()]++
		up[n.Id] = n.State == shoalpb.NodeState_NODE_STATE_UP
	}
	for st, n := range states {
		ch <- prometheus.MustNewConstMetric(descNodes, prometheus.GaugeValue, n, st)
	}
	kinds := map[string]float64{}
	inFlight, _ := c.s.meta.operators()
	for _, op := range inFlight {
		kinds[op.Kind.Name()]++
	}
	for k, n := range kinds {
		ch <- prometheus.MustNewConstMetric(descOps, prometheus.GaugeValue, n, k)
	}
	leader := 0.0
	if c.s.IsLeader() {
		leader = 1
	}
	ch <- prometheus.MustNewConstMetric(descLeader, prometheus.GaugeValue, leader)
	t, _ := c.s.meta.routeTable()
	rf := int(c.s.meta.cluster().GetReplicas())
	under := 0
	for _, rt := range t.Shards {
		voters := 0
		for _, r := range rt.Shard.Replicas {
			if r.Role == shoalpb.ReplicaRole_REPLICA_ROLE_VOTER && up[r.NodeId] {
				voters++
			}
		}
		if voters < rf {
			under++
		}
	}
	ch <- prometheus.MustNewConstMetric(descShards, prometheus.GaugeValue, float64(len(t.Shards)))
	ch <- prometheus.MustNewConstMetric(descUnderRepl, prometheus.GaugeValue, float64(under))
}
