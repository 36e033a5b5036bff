package schedule

import (
	"strings"
	"testing"

	"github.com/shoaldb/shoal/api/shoalpb"
)

// An administrator's transfer to a node under which the shard could not
// commit (a majority of its voters on nodes below half their disk reserve)
// is refused; to a node under which it could, it is planned.
func TestTransferLeaderRefusedWhereTheShardCannotCommit(t *testing.T) {
	snap := threeVoters(3)
	snap.Nodes[0].DiskFull, snap.Nodes[0].DiskExhausted = true, true
	// One voter exhausted: the others make a majority.
	if _, err := TransferLeader(snap, 1, 2); err != nil {
		t.Fatalf("transfer with one voter exhausted: %v", err)
	}
	snap.Nodes[2].DiskFull, snap.Nodes[2].DiskExhausted = true, true
	// Two exhausted: under node 2 only node 2 itself takes entries. Node 1
	// (the leader) counts its own log, and commits with node 2.
	_, err := TransferLeader(snap, 1, 2)
	if err == nil || !strings.Contains(err.Error(), "could not commit with its leader on node 2") {
		t.Fatalf("transfer to node 2 with nodes 1 and 3 exhausted: %v, want refused", err)
	}
}

// An administrator's move of a replica of a shard that has lost its quorum
// is refused at once: its steps could not commit, and it would hold the
// shard until its step timeout and rollback. With a majority live it is
// planned.
func TestMoveReplicaRefusedWithoutQuorum(t *testing.T) {
	snap := threeVoters(4)
	snap.Nodes[1].State = shoalpb.NodeState_NODE_STATE_DOWN
	if _, err := MoveReplica(snap, 1, 2, 4); err != nil {
		t.Fatalf("move off a down node with two of three voters live: %v", err)
	}
	snap.Nodes[2].State = shoalpb.NodeState_NODE_STATE_DOWN
	if _, err := MoveReplica(snap, 1, 2, 4); err == nil || !strings.Contains(err.Error(), "1 of 3 voters on live nodes") {
		t.Fatalf("move with one of three voters live: %v, want refused", err)
	}
}

// threeVoters is a snapshot of nodes up nodes (weight 1) and one shard
// whose voters are on nodes 1, 2 and 3 (replicas 11, 12, 13), led by 11.
func threeVoters(nodes int) Snapshot {
	d := &shoalpb.ShardDescriptor{ShardId: 1, StartSlot: 0, EndSlot: 16384, Epoch: 3}
	for n := uint64(1); n <= 3; n++ {
		d.Replicas = append(d.Replicas, &shoalpb.ReplicaDescriptor{NodeId: n, ReplicaId: 10 + n})
	}
	snap := Snapshot{ReplicationFactor: 3, NextReplicaID: 100, NextOperatorID: 1,
		Shards: []ShardStatus{{Desc: d, LeaderReplica: 11}}}
	for n := 1; n <= nodes; n++ {
		snap.Nodes = append(snap.Nodes, NodeStatus{ID: uint64(n), Weight: 1, State: shoalpb.NodeState_NODE_STATE_UP})
	}
	return snap
}

// An administrator's move that would put two of a shard's replicas in one
// zone while the zones can hold one each is refused: placement would move
// one out again, a second copy of the shard for nothing. Within a zone it
// is planned.
func TestMoveReplicaKeepsZones(t *testing.T) {
	snap := threeVoters(4)
	for i, z := range []string{"a", "b", "c", "a"} {
		snap.Nodes[i].Zone = z
	}
	if _, err := MoveReplica(snap, 1, 3, 4); err == nil || !strings.Contains(err.Error(), `zone "a" would hold more than 1`) {
		t.Fatalf("move from zone c to a second replica in zone a: %v, want refused", err)
	}
	if _, err := MoveReplica(snap, 1, 1, 4); err != nil {
		t.Fatalf("move within zone a: %v", err)
	}
}
