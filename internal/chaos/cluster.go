// Package chaos owns Shoal's fault-tolerance harness: real `shoal`
// processes (or containers) under crashes, pauses and partitions, client
// workloads whose histories are checked for linearizability (porcupine) and
// for lost acknowledged writes, and the measurements docs/reliability.md
// reports (availability during each fault, time to the first write after a
// leader's node dies, time back to full replication).
//
// Invariants: a check never passes on a history it could not decide (a
// porcupine timeout is a failure); an operation whose outcome the client
// could not learn is treated as maybe-applied, never as failed; every fault
// a run injects is undone (processes resumed, restarted, firewall rules
// removed) before its final reads. The tests live behind the `chaos` build
// tag (make chaos-short, make chaos-long) because they need root, iptables
// and a built binary; the checker's own tests run everywhere.
package chaos

import (
	"context"
	"errors"
	"fmt"
	"slices"
)

// Role says what a server runs.
type Role string

// The two kinds of server.
const (
	RoleMaster Role = "master"
	RoleNode   Role = "node"
)

// Server is one process (or container) of a cluster under test.
type Server struct {
	// Name is unique in the cluster: m1..m3 for masters, n1..n5 for nodes.
	Name string
	Role Role
	// IP is the server's own address; it listens and dials from it.
	IP string
	// GRPCAddr, HTTPAddr and RESPAddr (nodes only) are where it serves.
	GRPCAddr, HTTPAddr, RESPAddr string
}

// Fault is a kind of fault a cluster can inject.
type Fault string

// The faults of the suite.
const (
	FaultKill      Fault = "kill"      // kill -9, restart from its data later
	FaultPause     Fault = "pause"     // SIGSTOP / docker pause, resume later
	FaultIsolate   Fault = "isolate"   // cut one server off from every other server, both ways
	FaultPartition Fault = "partition" // two-way majority/minority split of the servers
	FaultOneWay    Fault = "one-way"   // traffic from one set of servers to another dropped, the reverse kept
	FaultBridge    Fault = "bridge"    // two halves that see one bridge server but not each other
	FaultTransfer  Fault = "transfer"  // leader transfers started by an administrator
	FaultMove      Fault = "move"      // replica moves started by an administrator
)

// ErrUnsupported is returned for a fault a cluster cannot inject (a
// one-way partition between containers, for one).
var ErrUnsupported = errors.New("chaos: fault not supported by this cluster")

// Cluster is a running Shoal cluster whose servers a test can crash, pause
// and cut off. Names are Server.Name. Implementations: ProcCluster (real
// processes on their own loopback addresses, iptables for partitions) and
// DockerCluster (containers on a private network).
type Cluster interface {
	// Servers lists every server, masters first.
	Servers() []Server
	// MasterAddrs are the masters' gRPC addresses, for clients.
	MasterAddrs() []string
	// Faults are the faults this cluster can inject.
	Faults() []Fault

	// Kill stops the server at once (SIGKILL) and waits until it is gone.
	Kill(ctx context.Context, name string) error
	// Start starts a killed server again from its data.
	Start(ctx context.Context, name string) error
	// Running reports whether the server runs (paused included).
	Running(ctx context.Context, name string) (bool, error)
	// Pause freezes the server (SIGSTOP); Resume thaws it.
	Pause(ctx context.Context, name string) error
	Resume(ctx context.Context, name string) error
	// Cut drops all traffic from each server in from to each server in to
	// (one way; call it twice for both ways). Clients are not cut off
	// unless the implementation cannot tell them apart (containers).
	Cut(ctx context.Context, from, to []string) error
	// Heal removes every cut.
	Heal(ctx context.Context) error

	// Close stops every server and removes what the cluster made (firewall
	// rules, containers, networks). ProcCluster leaves the data directories
	// for inspection; DockerCluster removes its volumes unless told to keep
	// them.
	Close() error
}

// topology is a cluster's servers: masters m1..mM on subnet.(10+i), nodes
// n1..nN on subnet.(20+i), each on the default ports at its own address.
// Both clusters embed it.
type topology struct{ servers []Server }

func newTopology(subnet string, masters, nodes int) topology {
	var t topology
	for i := 1; i <= masters; i++ {
		ip := fmt.Sprintf("%s.%d", subnet, 10+i)
		t.servers = append(t.servers, Server{Name: fmt.Sprintf("m%d", i), Role: RoleMaster, IP: ip,
			GRPCAddr: ip + ":7000", HTTPAddr: ip + ":7080"})
	}
	for i := 1; i <= nodes; i++ {
		ip := fmt.Sprintf("%s.%d", subnet, 20+i)
		t.servers = append(t.servers, Server{Name: fmt.Sprintf("n%d", i), Role: RoleNode, IP: ip,
			GRPCAddr: ip + ":7100", HTTPAddr: ip + ":7180", RESPAddr: ip + ":6379"})
	}
	return t
}

// Servers lists every server, masters first.
func (t topology) Servers() []Server { return slices.Clone(t.servers) }

// MasterAddrs are the masters' gRPC addresses.
func (t topology) MasterAddrs() []string {
	var out []string
	for _, s := range t.servers {
		if s.Role == RoleMaster {
			out = append(out, s.GRPCAddr)
		}
	}
	return out
}

func (t topology) server(name string) (Server, error) {
	for _, s := range t.servers {
		if s.Name == name {
			return s, nil
		}
	}
	return Server{}, fmt.Errorf("chaos: no server %q", name)
}
