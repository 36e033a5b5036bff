package schedule

import (
	"fmt"

	"github.com/shoaldb/shoal/api/shoalpb"
)

// NodeStatus is what the scheduler knows of one storage node.
type NodeStatus struct {
	ID   uint64
	Zone string
	// Weight is the node's capacity weight: replicas and leaders are
	// balanced in proportion to it. A node with Weight <= 0 gets no new
	// replicas or leaders.
	Weight float64
	State  shoalpb.NodeState
	// StateSinceMs is when the node entered State (Unix ms).
	StateSinceMs int64
	// DiskFull is set when the node's last heartbeat said its disk is
	// below its reserve: like a node without weight, it gets no new
	// replicas (it would refuse their snapshots) or leaders (they would
	// refuse writes).
	DiskFull bool
	// DiskExhausted is set when the node's last heartbeat said its disk is
	// below half its reserve: it drops the entries leaders send it, so its
	// voters count for no quorum of a leader elsewhere.
	DiskExhausted bool
	// Silent is set for a draining node that has not heartbeated for the
	// master's NodeDownAfter. A draining node is never marked down (a
	// restart must not end its drain), but a silent one's replicas are not
	// healthy: they count for no quorum a move needs, and the node does no
	// work for moves.
	Silent bool
}

// ShardStatus is one shard as the master leader sees it: the descriptor
// from the shard table and what the shard's leader last reported.
type ShardStatus struct {
	Desc *shoalpb.ShardDescriptor
	// LeaderReplica is the replica believed to lead, 0 if unknown.
	LeaderReplica uint64
	// OpsPerSec is the rate of commands the shard applies.
	OpsPerSec float64
	// SizeBytes is the approximate size of one replica; among otherwise
	// equal candidates, smaller shards are moved first.
	SizeBytes uint64
}

// Snapshot is the master leader's view of the cluster at one moment. The
// scheduler only reads it.
type Snapshot struct {
	// NowMs is the time of the snapshot (Unix ms); the scheduler reads no
	// clock.
	NowMs int64
	// ReplicationFactor is the number of voters every shard should have.
	ReplicationFactor int
	Nodes             []NodeStatus
	Shards            []ShardStatus
	// Operators are the operators in flight. A shard with one gets no
	// other; their effects count as done when balancing, and the data
	// moves among them count against the concurrency limits. Operators
	// with an Outcome are finished and ignored.
	Operators []*shoalpb.Operator
	// NextReplicaID is the first free replica ID: new AddLearner steps
	// take NextReplicaID, NextReplicaID+1, ... in the order returned.
	NextReplicaID uint64
	// NextOperatorID is the first free operator ID, used the same way.
	NextOperatorID uint64
}

// Config tunes the scheduler. The zero value means the defaults, which
// each field's comment states; EnsureDefaults fills them in.
type Config struct {
	// RepairAfterMs is how long a node must be down before its replicas
	// are replaced on other nodes. Default 10 minutes.
	RepairAfterMs int64
	// ReplicaTolerance is how far replicas per unit of weight may stray
	// from the cluster mean before replicas move: a node is overloaded
	// above mean*ReplicaTolerance and underloaded below
	// mean/ReplicaTolerance. Default 1.05.
	ReplicaTolerance float64
	// LeaderTolerance is the same for leaders per unit of weight.
	// Default 1.10.
	LeaderTolerance float64
	// MaxOperatorsPerNode caps the data-moving operators (those that add
	// a replica) touching one live node as the target or as the node a
	// replica is removed from, counting operators in flight. Down and
	// removed nodes do no work and are not limited. Default 2.
	MaxOperatorsPerNode int
	// MaxOperators caps all operators in flight in the cluster,
	// including leader transfers. Default 16.
	MaxOperators int
	// HotShards is how many of the busiest shards have their leaders
	// spread over the nodes. Default 8; negative disables it.
	HotShards int
	// HotRatio is how much busier than the mean shard a shard must be to
	// count as hot: its ops/s must be at least HotRatio times the mean
	// over all shards. Default 2.
	HotRatio float64
	// HotMinOpsPerSec is the least ops/s for a shard to count as hot, so
	// that the noise of lightly loaded shards does not move leaders about.
	// Default 100; negative for no minimum.
	HotMinOpsPerSec float64
}

// Default values of Config.
const (
	DefaultRepairAfterMs       = 10 * 60 * 1000
	DefaultReplicaTolerance    = 1.05
	DefaultLeaderTolerance     = 1.10
	DefaultMaxOperatorsPerNode = 2
	DefaultMaxOperators        = 16
	DefaultHotShards           = 8
	DefaultHotRatio            = 2.0
	DefaultHotMinOpsPerSec     = 100.0
)

// EnsureDefaults replaces zero fields with their defaults.
func (c *Config) EnsureDefaults() {
	if c.RepairAfterMs == 0 {
		c.RepairAfterMs = DefaultRepairAfterMs
	}
	if c.ReplicaTolerance == 0 {
		c.ReplicaTolerance = DefaultReplicaTolerance
	}
	if c.LeaderTolerance == 0 {
		c.LeaderTolerance = DefaultLeaderTolerance
	}
	if c.MaxOperatorsPerNode == 0 {
		c.MaxOperatorsPerNode = DefaultMaxOperatorsPerNode
	}
	if c.MaxOperators == 0 {
		c.MaxOperators = DefaultMaxOperators
	}
	if c.HotShards == 0 {
		c.HotShards = DefaultHotShards
	}
	if c.HotRatio == 0 {
		c.HotRatio = DefaultHotRatio
	}
	if c.HotMinOpsPerSec == 0 {
		c.HotMinOpsPerSec = DefaultHotMinOpsPerSec
	}
}

// Validate reports a configuration that makes no sense. It expects
// EnsureDefaults to have run.
func (c *Config) Validate() error {
	switch {
	case c.RepairAfterMs < 0:
		return fmt.Errorf("schedule: RepairAfterMs %d < 0", c.RepairAfterMs)
	case c.ReplicaTolerance < 1:
		return fmt.Errorf("schedule: ReplicaTolerance %v < 1", c.ReplicaTolerance)
	case c.LeaderTolerance < 1:
		return fmt.Errorf("schedule: LeaderTolerance %v < 1", c.LeaderTolerance)
	case c.MaxOperatorsPerNode < 1:
		return fmt.Errorf("schedule: MaxOperatorsPerNode %d < 1", c.MaxOperatorsPerNode)
	case c.MaxOperators < 1:
		return fmt.Errorf("schedule: MaxOperators %d < 1", c.MaxOperators)
	case c.HotRatio < 1:
		return fmt.Errorf("schedule: HotRatio %v < 1", c.HotRatio)
	}
	return nil
}
