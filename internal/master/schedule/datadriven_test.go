package schedule

import (
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cockroachdb/datadriven"

	"github.com/shoaldb/shoal/api/shoalpb"
)

// TestScheduleDataDriven runs the scenarios in testdata/. Regenerate the
// expected output with
//
//	go test ./internal/master/schedule/ -run DataDriven -rewrite
//
// Commands:
//
//	cluster [rf=3] [next-replica=N]
//	node <id> [zone=a] [weight=1] [state=up|down|draining|removed] [for=12m]
//	shard <id> n1* n2 n3~ [ops=100] [size=1024] [epoch=1]
//	place shards=64 [nodes=(1,2,3)]
//	op <id> shard=<id> kind=<kind> add(n5,r40) voters(+r40,-r301) [current=1]
//	----
//	<the cluster, as show prints it>
//
// declares a cluster (input lines in any order, nodes before the shards
// that use them). A replica is n<node>, with * for the leader and ~ for a
// learner; its ID is 100*shard+node unless written n<node>:r<id>. place
// adds shards placed by PlaceInitial over the given nodes (default all),
// taken as equal in weight. op declares an operator in flight, in the
// format schedule prints. "for" is how long the node has been in its state.
//
//	config [repair-after=10m] [replica-tol=1.05] [leader-tol=1.1]
//	       [max-node-ops=2] [max-ops=16] [hot=8] [hot-ratio=2]
//
// sets Config fields for the following commands (unset: defaults).
//
//	schedule
//
// runs Schedule, checks the invariants (checkSchedule), prints one
// operator per line, and records them as in flight:
//
//	op <id> shard <id> <kind> <steps...> (<reason>)
//
// with steps add(n<node>,r<new>), voters(+r<promoted>,-r<removed>),
// lead(r<to>) and remove(r<id>).
//
//	apply [ids=(1,2)]
//
// completes the operators in flight (all, or those listed) and shows the
// cluster.
//
//	abort ids=(1,2)
//
// drops operators in flight without running their remaining steps, as a
// rollback of operators that had run none would.
//
//	set-node <id> [state=...] [for=...] [weight=...] [zone=...]
//
// changes a node; leaders on nodes that stop being live move to a live
// voter, as Raft would move them.
//
//	advance <duration>
//
// moves the clock.
//
//	converge [rounds=1000]
//
// schedules and applies until nothing is left to do, checking every
// round, and prints the number of rounds, operators by kind and data
// moves, then the cluster.
//
//	show [shards]
//	obsolete
//	_breakpoint
//
// print the cluster (nodes, and with shards its shards and operators in
// flight), print Obsolete's answer, and do nothing (a place for a
// debugger breakpoint).
func TestScheduleDataDriven(t *testing.T) {
	datadriven.Walk(t, "testdata", func(t *testing.T, path string) {
		e := &ddEnv{}
		datadriven.RunTest(t, path, func(t *testing.T, td *datadriven.TestData) string {
			out, err := e.run(t, td)
			if err != nil {
				return "error: " + err.Error() + "\n"
			}
			return out
		})
	})
}

// ddNow is the clock at the start of every scenario.
const ddNow = 1_000_000_000

type ddEnv struct {
	s   Snapshot
	cfg Config
}

func (e *ddEnv) run(t *testing.T, td *datadriven.TestData) (string, error) {
	switch td.Cmd {
	case "cluster":
		return e.cluster(t, td)
	case "config":
		return e.config(t, td)
	case "schedule":
		return e.schedule()
	case "apply":
		return e.apply(t, td)
	case "abort":
		return e.abort(td)
	case "set-node":
		return e.setNode(td)
	case "advance":
		d, err := time.ParseDuration(td.CmdArgs[0].Key)
		if err != nil {
			return "", err
		}
		e.s.NowMs += d.Milliseconds()
		return "", nil
	case "converge":
		return e.converge(t, td)
	case "show":
		return e.show(td.HasArg("shards")), nil
	case "obsolete":
		return fmt.Sprintf("%v\n", Obsolete(e.s)), nil
	case "_breakpoint":
		return "", nil
	}
	return "", fmt.Errorf("unknown command %q", td.Cmd)
}

// cluster handles "cluster".
func (e *ddEnv) cluster(t *testing.T, td *datadriven.TestData) (string, error) {
	e.s = Snapshot{NowMs: ddNow, ReplicationFactor: 3, NextOperatorID: 1}
	e.cfg = Config{}
	td.MaybeScanArgs(t, "rf", &e.s.ReplicationFactor)
	for _, line := range strings.Split(td.Input, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		var err error
		switch f[0] {
		case "node":
			err = e.addNode(f[1:])
		case "shard":
			err = e.addShard(f[1:])
		case "place":
			err = e.place(f[1:])
		case "op":
			err = e.addOp(f[1:])
		default:
			err = fmt.Errorf("unknown line %q", line)
		}
		if err != nil {
			return "", err
		}
	}
	e.s.NextReplicaID = 1000 * (e.maxReplicaID()/1000 + 1)
	td.MaybeScanArgs(t, "next-replica", &e.s.NextReplicaID)
	for _, op := range e.s.Operators {
		e.s.NextOperatorID = max(e.s.NextOperatorID, op.Id+1)
	}
	return e.show(false), nil
}

func (e *ddEnv) maxReplicaID() uint64 {
	var m uint64
	for _, sh := range e.s.Shards {
		for _, r := range sh.Desc.Replicas {
			m = max(m, r.ReplicaId)
		}
	}
	for _, op := range e.s.Operators {
		for _, s := range op.Steps {
			m = max(m, s.GetAddLearner().GetReplicaId())
		}
	}
	return m
}

// args splits key=value fields; fields without "=" are returned apart.
func args(fields []string) (kv map[string]string, rest []string) {
	kv = map[string]string{}
	for _, f := range fields {
		if k, v, ok := strings.Cut(f, "="); ok {
			kv[k] = v
		} else {
			rest = append(rest, f)
		}
	}
	return kv, rest
}

func (e *ddEnv) addNode(f []string) error {
	id, err := strconv.ParseUint(f[0], 10, 64)
	if err != nil {
		return err
	}
	n := NodeStatus{ID: id, Weight: 1, State: shoalpb.NodeState_NODE_STATE_UP, StateSinceMs: e.s.NowMs}
	kv, _ := args(f[1:])
	if err := e.updateNode(&n, kv); err != nil {
		return err
	}
	e.s.Nodes = append(e.s.Nodes, n)
	return nil
}

func (e *ddEnv) updateNode(n *NodeStatus, kv map[string]string) error {
	for k, v := range kv {
		switch k {
		case "zone":
			n.Zone = v
		case "weight":
			w, err := strconv.ParseFloat(v, 64)
			if err != nil {
				return err
			}
			n.Weight = w
		case "state":
			st, ok := shoalpb.NodeState_value["NODE_STATE_"+strings.ToUpper(v)]
			if !ok {
				return fmt.Errorf("unknown state %q", v)
			}
			n.State = shoalpb.NodeState(st)
			n.StateSinceMs = e.s.NowMs
		case "disk":
			if v != "full" && v != "exhausted" && v != "ok" {
				return fmt.Errorf("disk=%s: want full, exhausted or ok", v)
			}
			n.DiskFull, n.DiskExhausted = v != "ok", v == "exhausted"
		case "silent":
			n.Silent = v == "true"
		case "for":
		default:
			return fmt.Errorf("unknown node field %q", k)
		}
	}
	if v, ok := kv["for"]; ok {
		d, err := time.ParseDuration(v)
		if err != nil {
			return err
		}
		n.StateSinceMs = e.s.NowMs - d.Milliseconds()
	}
	return nil
}

var replicaToken = regexp.MustCompile(`^n(\d+)([*~]?)(?::r(\d+))?$`)

func (e *ddEnv) addShard(f []string) error {
	id, err := strconv.ParseUint(f[0], 10, 64)
	if err != nil {
		return err
	}
	sh := ShardStatus{Desc: &shoalpb.ShardDescriptor{ShardId: id, Epoch: 1}}
	kv, rest := args(f[1:])
	for _, tok := range rest {
		m := replicaToken.FindStringSubmatch(tok)
		if m == nil {
			return fmt.Errorf("bad replica %q", tok)
		}
		node, _ := strconv.ParseUint(m[1], 10, 64)
		r := &shoalpb.ReplicaDescriptor{NodeId: node, ReplicaId: 100*id + node}
		if m[3] != "" {
			r.ReplicaId, _ = strconv.ParseUint(m[3], 10, 64)
		}
		switch m[2] {
		case "*":
			sh.LeaderReplica = r.ReplicaId
		case "~":
			r.Role = shoalpb.ReplicaRole_REPLICA_ROLE_LEARNER
		}
		sh.Desc.Replicas = append(sh.Desc.Replicas, r)
	}
	for k, v := range kv {
		var err error
		switch k {
		case "ops":
			sh.OpsPerSec, err = strconv.ParseFloat(v, 64)
		case "size":
			sh.SizeBytes, err = strconv.ParseUint(v, 10, 64)
		case "epoch":
			sh.Desc.Epoch, err = strconv.ParseUint(v, 10, 64)
		default:
			err = fmt.Errorf("unknown shard field %q", k)
		}
		if err != nil {
			return err
		}
	}
	e.s.Shards = append(e.s.Shards, sh)
	return nil
}

// place handles "place shards=N [nodes=(1,2,3)]" in a cluster's input.
func (e *ddEnv) place(f []string) error {
	kv, _ := args(f)
	n, err := strconv.Atoi(kv["shards"])
	if err != nil {
		return err
	}
	var nodes []Node
	for _, nd := range e.s.Nodes {
		nodes = append(nodes, Node{ID: nd.ID, Zone: nd.Zone, Weight: 1})
	}
	if list, ok := kv["nodes"]; ok {
		nodes = slices.DeleteFunc(nodes, func(nd Node) bool {
			return !slices.Contains(strings.Split(strings.Trim(list, "()"), ","), strconv.FormatUint(nd.ID, 10))
		})
	}
	descs, err := PlaceInitial(nodes, n, e.s.ReplicationFactor, 1)
	if err != nil {
		return err
	}
	for _, d := range descs {
		for _, r := range d.Replicas {
			r.ReplicaId = 100*d.ShardId + r.NodeId
		}
		e.s.Shards = append(e.s.Shards, ShardStatus{Desc: d, LeaderReplica: d.Replicas[0].ReplicaId})
	}
	return nil
}

var stepToken = regexp.MustCompile(`^(add|voters|lead|remove)\(([^)]*)\)$`)

func (e *ddEnv) addOp(f []string) error {
	id, err := strconv.ParseUint(f[0], 10, 64)
	if err != nil {
		return err
	}
	kv, rest := args(f[1:])
	op := &shoalpb.Operator{Id: id, CreatedMs: e.s.NowMs}
	if op.ShardId, err = strconv.ParseUint(kv["shard"], 10, 64); err != nil {
		return err
	}
	if c, ok := kv["current"]; ok {
		n, err := strconv.Atoi(c)
		if err != nil {
			return err
		}
		op.Current = uint32(n)
	}
	for k, name := range kindList() {
		if name == kv["kind"] {
			op.Kind = k
		}
	}
	for _, tok := range rest {
		s, err := parseStep(tok)
		if err != nil {
			return err
		}
		op.Steps = append(op.Steps, s)
	}
	for _, sh := range e.s.Shards {
		if sh.Desc.ShardId == op.ShardId {
			op.Epoch = sh.Desc.Epoch
		}
	}
	e.s.Operators = append(e.s.Operators, op)
	return nil
}

func kindList() map[shoalpb.OperatorKind]string {
	m := map[shoalpb.OperatorKind]string{}
	for k := range shoalpb.OperatorKind_name {
		m[shoalpb.OperatorKind(k)] = shoalpb.OperatorKind(k).Name()
	}
	return m
}

func parseStep(tok string) (*shoalpb.OperatorStep, error) {
	m := stepToken.FindStringSubmatch(tok)
	if m == nil {
		return nil, fmt.Errorf("bad step %q", tok)
	}
	num := func(s, prefix string) uint64 {
		v, _ := strconv.ParseUint(strings.TrimPrefix(s, prefix), 10, 64)
		return v
	}
	parts := strings.Split(m[2], ",")
	switch m[1] {
	case "add":
		if len(parts) != 2 {
			return nil, fmt.Errorf("bad step %q", tok)
		}
		return addLearnerStep(num(parts[0], "n"), num(parts[1], "r")), nil
	case "voters":
		var promote, remove []uint64
		for _, p := range parts {
			if strings.HasPrefix(p, "+") {
				promote = append(promote, num(p, "+r"))
			} else {
				remove = append(remove, num(p, "-r"))
			}
		}
		return changeVotersStep(promote, remove), nil
	case "lead":
		return transferLeaderStep(num(m[2], "r")), nil
	}
	return removeReplicaStep(num(m[2], "r")), nil
}

// config handles "config".
func (e *ddEnv) config(t *testing.T, td *datadriven.TestData) (string, error) {
	e.cfg = Config{}
	for _, a := range td.CmdArgs {
		v := a.Vals[0]
		var err error
		switch a.Key {
		case "repair-after":
			var d time.Duration
			d, err = time.ParseDuration(v)
			e.cfg.RepairAfterMs = d.Milliseconds()
		case "replica-tol":
			e.cfg.ReplicaTolerance, err = strconv.ParseFloat(v, 64)
		case "leader-tol":
			e.cfg.LeaderTolerance, err = strconv.ParseFloat(v, 64)
		case "max-node-ops":
			e.cfg.MaxOperatorsPerNode, err = strconv.Atoi(v)
		case "max-ops":
			e.cfg.MaxOperators, err = strconv.Atoi(v)
		case "hot":
			e.cfg.HotShards, err = strconv.Atoi(v)
		case "hot-ratio":
			e.cfg.HotRatio, err = strconv.ParseFloat(v, 64)
		default:
			err = fmt.Errorf("unknown config %q", a.Key)
		}
		if err != nil {
			return "", err
		}
	}
	return "", nil
}

// schedule handles "schedule".
func (e *ddEnv) schedule() (string, error) {
	ops, err := e.scheduleOnce()
	if err != nil {
		return "", err
	}
	if len(ops) == 0 {
		return "no operators\n", nil
	}
	var b strings.Builder
	for _, op := range ops {
		b.WriteString(formatOp(op) + "\n")
	}
	return b.String(), nil
}

// scheduleOnce runs Schedule, checks its result, and starts the operators.
func (e *ddEnv) scheduleOnce() ([]*shoalpb.Operator, error) {
	ops := Schedule(e.s, e.cfg)
	if err := checkSchedule(e.s, e.cfg, ops); err != nil {
		return nil, fmt.Errorf("invariant violated: %v", err)
	}
	startOps(&e.s, ops)
	return ops, nil
}

// apply handles "apply".
func (e *ddEnv) apply(t *testing.T, td *datadriven.TestData) (string, error) {
	ops := slices.Clone(e.s.Operators)
	if td.HasArg("ids") {
		var want []uint64
		arg, _ := td.Arg("ids")
		for _, v := range arg.Vals {
			id, _ := strconv.ParseUint(v, 10, 64)
			want = append(want, id)
		}
		ops = slices.DeleteFunc(ops, func(op *shoalpb.Operator) bool { return !slices.Contains(want, op.Id) })
	}
	if err := applyOps(&e.s, ops); err != nil {
		return "", err
	}
	return e.show(true), nil
}

// abort handles "abort".
func (e *ddEnv) abort(td *datadriven.TestData) (string, error) {
	arg, ok := td.Arg("ids")
	if !ok {
		return "", fmt.Errorf("abort needs ids")
	}
	e.s.Operators = slices.DeleteFunc(e.s.Operators, func(op *shoalpb.Operator) bool {
		return slices.Contains(arg.Vals, strconv.FormatUint(op.Id, 10))
	})
	return e.show(true), nil
}

// setNode handles "set-node".
func (e *ddEnv) setNode(td *datadriven.TestData) (string, error) {
	id, err := strconv.ParseUint(td.CmdArgs[0].Key, 10, 64)
	if err != nil {
		return "", err
	}
	kv := map[string]string{}
	for _, a := range td.CmdArgs[1:] {
		kv[a.Key] = a.Vals[0]
	}
	i := slices.IndexFunc(e.s.Nodes, func(n NodeStatus) bool { return n.ID == id })
	if i < 0 {
		return "", fmt.Errorf("unknown node %d", id)
	}
	if err := e.updateNode(&e.s.Nodes[i], kv); err != nil {
		return "", err
	}
	elect(&e.s)
	return e.show(false), nil
}

// converge handles "converge".
func (e *ddEnv) converge(t *testing.T, td *datadriven.TestData) (string, error) {
	limit := 1000
	td.MaybeScanArgs(t, "rounds", &limit)
	kinds := map[string]int{}
	moves, rounds := 0, 0
	for ; ; rounds++ {
		if rounds == limit {
			return "", fmt.Errorf("no fixed point after %d rounds", limit)
		}
		ops, err := e.scheduleOnce()
		if err != nil {
			return "", err
		}
		if len(e.s.Operators) == 0 {
			break
		}
		for _, op := range ops {
			kinds[op.Kind.Name()]++
			if hasAdd(op) {
				moves++
			}
		}
		if err := applyOps(&e.s, slices.Clone(e.s.Operators)); err != nil {
			return "", err
		}
	}
	var b strings.Builder
	fmt.Fprintf(&b, "rounds: %d, data moves: %d\n", rounds, moves)
	for _, k := range sortedKeys(kinds) {
		fmt.Fprintf(&b, "  %s: %d\n", k, kinds[k])
	}
	b.WriteString(e.show(false))
	return b.String(), nil
}

// show prints one line per node (its replicas and leaders, with the
// ratio to its share by weight among up nodes), then with shards one line
// per shard and per operator in flight.
func (e *ddEnv) show(shards bool) string {
	rep, lead := map[uint64]int{}, map[uint64]int{}
	for _, sh := range e.s.Shards {
		for _, r := range sh.Desc.Replicas {
			rep[r.NodeId]++
			if r.ReplicaId == sh.LeaderReplica {
				lead[r.NodeId]++
			}
		}
	}
	var upW, upR, upL float64
	for _, n := range e.s.Nodes {
		if n.State == shoalpb.NodeState_NODE_STATE_UP {
			upW += n.Weight
			upR += float64(rep[n.ID])
			upL += float64(lead[n.ID])
		}
	}
	ratio := func(n NodeStatus, count int, total float64) string {
		if n.State != shoalpb.NodeState_NODE_STATE_UP || total == 0 {
			return ""
		}
		return fmt.Sprintf(" (%.2fx)", float64(count)/n.Weight/(total/upW))
	}
	var b strings.Builder
	for _, n := range e.s.Nodes {
		state := n.State.Name()
		if n.State != shoalpb.NodeState_NODE_STATE_UP && n.StateSinceMs != e.s.NowMs {
			state += " for " + (time.Duration(e.s.NowMs-n.StateSinceMs) * time.Millisecond).String()
		}
		zone := ""
		if n.Zone != "" {
			zone = " zone=" + n.Zone
		}
		if n.Silent {
			state += " silent"
		}
		switch {
		case n.DiskExhausted:
			state += " disk-exhausted"
		case n.DiskFull:
			state += " disk-full"
		}
		fmt.Fprintf(&b, "n%d%s weight=%v %s: %d replicas%s, %d leaders%s\n", n.ID, zone, n.Weight, state,
			rep[n.ID], ratio(n, rep[n.ID], upR), lead[n.ID], ratio(n, lead[n.ID], upL))
	}
	if !shards {
		return b.String()
	}
	for _, sh := range e.s.Shards {
		fmt.Fprintf(&b, "shard %d", sh.Desc.ShardId)
		for _, r := range sh.Desc.Replicas {
			fmt.Fprintf(&b, " n%d", r.NodeId)
			if r.ReplicaId == sh.LeaderReplica {
				b.WriteString("*")
			}
			if r.Role == shoalpb.ReplicaRole_REPLICA_ROLE_LEARNER {
				b.WriteString("~")
			}
			if r.ReplicaId != 100*sh.Desc.ShardId+r.NodeId {
				fmt.Fprintf(&b, ":r%d", r.ReplicaId)
			}
		}
		fmt.Fprintf(&b, " epoch=%d\n", sh.Desc.Epoch)
	}
	for _, op := range e.s.Operators {
		b.WriteString("in flight: " + formatOp(op) + "\n")
	}
	return b.String()
}
