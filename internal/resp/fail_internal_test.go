package resp

import (
	"bytes"
	"context"
	"testing"

	"github.com/shoaldb/shoal/api/shoalpb"
)

// topologyBackend is a Backend that only knows a topology: what fail
// needs to word a redirection.
type topologyBackend struct {
	shoalpb.UnimplementedKVServer
	t Topology
}

func (b topologyBackend) Topology() Topology    { return b.t }
func (b topologyBackend) ShardOf(uint16) uint64 { return 1 }

// TestFailWordsRedirections: how a routing error becomes -MOVED, and when
// it must not.
func TestFailWordsRedirections(t *testing.T) {
	topo := Topology{Self: 1, Shards: []ShardInfo{{ID: 1, Start: 0, End: 16384, Leader: 1}}, Nodes: map[uint64]NodeInfo{
		1: {RESPAddr: "127.0.0.1:7001", Up: true}, 2: {RESPAddr: "127.0.0.2:7002", Up: true}, 3: {RESPAddr: "[::1]:7003", Up: true},
	}}
	s := NewServer(topologyBackend{t: topo}, Options{})
	for _, tt := range []struct {
		name    string
		d       *shoalpb.ErrorDetail
		keyless bool
		want    string
	}{
		{"not leader, names node 2", &shoalpb.ErrorDetail{Code: shoalpb.ErrorCode_ERROR_CODE_NOT_LEADER, LeaderId: 2}, false,
			"-MOVED 42 127.0.0.2:7002\r\n"},
		// As Redis words an IPv6 address, without brackets: clients split
		// at the last colon.
		{"not leader, names an IPv6 node", &shoalpb.ErrorDetail{Code: shoalpb.ErrorCode_ERROR_CODE_NOT_LEADER, LeaderId: 3}, false,
			"-MOVED 42 ::1:7003\r\n"},
		// The write was in the log of a leader that lost its place: it may
		// still be applied, and a client sent elsewhere would run it again.
		{"not leader, ambiguous", &shoalpb.ErrorDetail{Code: shoalpb.ErrorCode_ERROR_CODE_NOT_LEADER, LeaderId: 2, Ambiguous: true}, false,
			"-" + errAmbiguous + "\r\n"},
		// A stale route table names this node: never redirect to itself.
		{"not here, names this node", &shoalpb.ErrorDetail{Code: shoalpb.ErrorCode_ERROR_CODE_SHARD_NOT_HERE, LeaderId: 1}, false,
			"-" + errTryAgain + "\r\n"},
		{"no leader", &shoalpb.ErrorDetail{Code: shoalpb.ErrorCode_ERROR_CODE_NO_LEADER}, false,
			"-" + errTryAgain + "\r\n"},
		// SCAN or DBSIZE meeting a shard that moved away: MOVED would name
		// the slot of an earlier command, which the client would remap.
		{"not here, keyless command", &shoalpb.ErrorDetail{Code: shoalpb.ErrorCode_ERROR_CODE_SHARD_NOT_HERE, LeaderId: 2}, true,
			"-" + errTryAgain + "\r\n"},
	} {
		var buf bytes.Buffer
		c := &conn{s: s, wr: NewWriter(&buf), slot: 42, keyed: !tt.keyless, cmdCtx: context.Background()}
		c.fail(shoalpb.StatusError(tt.d, "test"))
		if err := c.wr.Flush(); err != nil {
			t.Fatal(err)
		}
		if got := buf.String(); got != tt.want {
			t.Errorf("%s: wrote %q, want %q", tt.name, got, tt.want)
		}
	}
}
