package node

import (
	"testing"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/internal/raftstore"
)

// TestHandoverTarget: a node shutting down hands each leadership to the
// voter furthest along among those it is replicating to; a voter in probe
// (its node down, its messages unanswered) is picked only if no other is
// left, even when its match ties or leads.
func TestHandoverTarget(t *testing.T) {
	voter := func(id uint64) *shoalpb.ReplicaDescriptor {
		return &shoalpb.ReplicaDescriptor{ReplicaId: id, NodeId: id, Role: shoalpb.ReplicaRole_REPLICA_ROLE_VOTER}
	}
	desc := &shoalpb.ShardDescriptor{Replicas: []*shoalpb.ReplicaDescriptor{voter(1), voter(2), voter(3),
		{ReplicaId: 4, NodeId: 4, Role: shoalpb.ReplicaRole_REPLICA_ROLE_LEARNER}}}
	for _, tt := range []struct {
		name     string
		progress map[uint64]raftstore.Progress
		want     uint64
	}{
		{"idle shard, first voter down", map[uint64]raftstore.Progress{
			2: {Match: 10, State: "probe"}, 3: {Match: 10, State: "replicate"}, 4: {Match: 10, State: "replicate"}}, 3},
		{"the down voter was further along", map[uint64]raftstore.Progress{
			2: {Match: 12, State: "probe"}, 3: {Match: 10, State: "replicate"}}, 3},
		{"both replicating: the one further along", map[uint64]raftstore.Progress{
			2: {Match: 12, State: "replicate"}, 3: {Match: 10, State: "replicate"}}, 2},
		{"none replicating: the one further along", map[uint64]raftstore.Progress{
			2: {Match: 9, State: "probe"}, 3: {Match: 10, State: "snapshot"}}, 3},
	} {
		st := raftstore.ReplicaStatus{ReplicaID: 1, Descriptor: desc, Progress: tt.progress}
		if got := handoverTarget(st); got != tt.want {
			t.Errorf("%s: handover to %d, want %d", tt.name, got, tt.want)
		}
	}
}
