package node

import (
	"errors"
	"strings"
	"testing"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/internal/kv"
)

func TestQuorumSpace(t *testing.T) {
	const (
		voter    = shoalpb.ReplicaRole_REPLICA_ROLE_VOTER
		learner  = shoalpb.ReplicaRole_REPLICA_ROLE_LEARNER
		incoming = shoalpb.ReplicaRole_REPLICA_ROLE_VOTER_INCOMING
		outgoing = shoalpb.ReplicaRole_REPLICA_ROLE_VOTER_OUTGOING
	)
	shard := func(roles map[uint64]shoalpb.ReplicaRole) *shoalpb.ShardDescriptor {
		d := &shoalpb.ShardDescriptor{ShardId: 7}
		for node := uint64(1); node <= 9; node++ {
			if r, ok := roles[node]; ok {
				d.Replicas = append(d.Replicas, &shoalpb.ReplicaDescriptor{NodeId: node, ReplicaId: 100 + node, Role: r})
			}
		}
		return d
	}
	three := shard(map[uint64]shoalpb.ReplicaRole{1: voter, 2: voter, 3: voter})
	for _, c := range []struct {
		name      string
		d         *shoalpb.ShardDescriptor
		exhausted []uint64
		refused   string // "" when accepted
	}{
		{"none exhausted", three, nil, ""},
		{"one follower exhausted: the other makes the quorum", three, []uint64{2}, ""},
		{"both followers exhausted", three, []uint64{2, 3}, "2 of its 3 voters are on nodes [2 3]"},
		{"this node's own disk is not counted here", three, []uint64{1, 2}, ""},
		{"nodes of other shards", three, []uint64{5, 6}, ""},
		{"learners count for no quorum", shard(map[uint64]shoalpb.ReplicaRole{1: voter, 2: voter, 3: voter, 4: learner}),
			[]uint64{4, 2}, ""},
		{"five voters, two exhausted", shard(map[uint64]shoalpb.ReplicaRole{1: voter, 2: voter, 3: voter, 4: voter, 5: voter}),
			[]uint64{2, 3}, ""},
		{"five voters, three exhausted", shard(map[uint64]shoalpb.ReplicaRole{1: voter, 2: voter, 3: voter, 4: voter, 5: voter}),
			[]uint64{2, 3, 4}, "3 of its 5 voters are on nodes [2 3 4]"},
		// Joint configuration {1,2,3} -> {1,2,4}: both majorities must
		// take entries.
		{"joint: the outgoing majority lacks", shard(map[uint64]shoalpb.ReplicaRole{1: voter, 2: voter, 3: outgoing, 4: incoming}),
			[]uint64{2, 3}, "2 of its 3 voters are on nodes [2 3]"},
		{"joint: the incoming majority lacks", shard(map[uint64]shoalpb.ReplicaRole{1: voter, 2: voter, 3: outgoing, 4: incoming}),
			[]uint64{2, 4}, "2 of its 3 voters are on nodes [2 4]"},
		{"joint: each majority has room", shard(map[uint64]shoalpb.ReplicaRole{1: voter, 2: voter, 3: outgoing, 4: incoming}),
			[]uint64{3, 4}, ""},
	} {
		err := quorumSpace(c.d, 1, c.exhausted)
		switch {
		case c.refused == "" && err != nil:
			t.Errorf("%s: refused: %v", c.name, err)
		case c.refused != "" && (err == nil || !errors.Is(err, kv.ErrDiskFull) || !strings.Contains(err.Error(), c.refused)):
			t.Errorf("%s: %v, want ErrDiskFull with %q", c.name, err, c.refused)
		}
	}
}
