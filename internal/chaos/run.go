package chaos

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"slices"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/client"
)

// RunOptions configure one run: a workload against a cluster while a
// nemesis injects faults. Zero values take the defaults.
type RunOptions struct {
	// Client is "go" (the Go client, with compare-and-set) or "redis"
	// (go-redis against the RESP ports). Default "go".
	Client string
	// Faults are injected one after another, in order, round and round,
	// until Duration. Default: every fault the cluster supports.
	Faults []Fault
	// Warmup runs the workload without faults first; it must reach
	// MinOpsPerSec or the run fails (traffic that starved proves nothing).
	// Default 3s.
	Warmup time.Duration
	// Duration is how long faults are injected. Default 30s.
	Duration time.Duration
	// FaultFor is how long each fault lasts; Recover how long the cluster
	// then runs unharmed. Defaults 4s and 3s.
	FaultFor, Recover time.Duration
	// MinOpsPerSec is the successful operations per second the warmup must
	// show, and the whole run on average. Default 50.
	MinOpsPerSec float64
	// Workload sizes the workers.
	Workload WorkloadOptions
	// CheckTimeout bounds porcupine. Default 2m.
	CheckTimeout time.Duration
	// Seed makes the nemesis's choices repeatable. Default 1.
	Seed uint64
	// Logger receives progress. Default: discarded.
	Logger *slog.Logger
}

// FaultRecord is one injected fault and what was measured around it.
type FaultRecord struct {
	Fault  Fault
	Target string
	// Start and End are since the start of the history.
	Start, End time.Duration
	// OK and Attempted count workload operations whose call fell in the
	// window.
	OK, Attempted int
	// FirstWrite: for a fault on a node that led shards, how long after the
	// fault began each of those shards took a write; for a partition, the
	// same for every shard (every shard keeps a majority on one side that
	// clients reach, so every shard must take writes during it).
	FirstWrite []probeResult
	// FullReplication is how long after the fault was undone every replica
	// had caught up (0 when not measured).
	FullReplication time.Duration
	// Err is what went wrong injecting or undoing the fault, if anything.
	Err string
}

// Availability is the fraction of operations in the window that succeeded.
func (f FaultRecord) Availability() float64 {
	if f.Attempted == 0 {
		return 0
	}
	return float64(f.OK) / float64(f.Attempted)
}

// Report is the result of a run.
type Report struct {
	Client             string
	Elapsed            time.Duration
	WarmupOpsPerSec    float64
	OpsPerSec          float64
	RegisterOps, OKOps int
	Linearizability    LinearizabilityResult
	Inserts, Acked     int
	UnknownInserts     int
	MaybePresent       int
	Lost               []string
	Faults             []FaultRecord
	FinalReplication   time.Duration
}

// Problems lists why the run failed; empty means it passed.
func (r *Report) Problems(minOps float64) []string {
	var p []string
	if r.WarmupOpsPerSec < minOps {
		p = append(p, fmt.Sprintf("warmup throughput %.0f ops/s below the minimum %.0f", r.WarmupOpsPerSec, minOps))
	}
	if r.OpsPerSec < minOps {
		p = append(p, fmt.Sprintf("throughput %.0f ops/s below the minimum %.0f", r.OpsPerSec, minOps))
	}
	if !r.Linearizability.OK() {
		p = append(p, fmt.Sprintf("linearizability: %s over %d ops", r.Linearizability.Result, r.Linearizability.Ops))
	}
	if len(r.Lost) > 0 {
		p = append(p, fmt.Sprintf("%d acknowledged inserts lost (e.g. %s)", len(r.Lost), r.Lost[0]))
	}
	for _, f := range r.Faults {
		if f.Err != "" {
			p = append(p, fmt.Sprintf("fault %s on %s: %s", f.Fault, f.Target, f.Err))
		}
	}
	return p
}

func (o *RunOptions) defaults(cl Cluster) {
	if o.Client == "" {
		o.Client = "go"
	}
	if len(o.Faults) == 0 {
		o.Faults = cl.Faults()
	}
	if o.Warmup == 0 {
		o.Warmup = 3 * time.Second
	}
	if o.Duration == 0 {
		o.Duration = 30 * time.Second
	}
	if o.FaultFor == 0 {
		o.FaultFor = 4 * time.Second
	}
	if o.Recover == 0 {
		o.Recover = 3 * time.Second
	}
	if o.MinOpsPerSec == 0 {
		o.MinOpsPerSec = 50
	}
	if o.CheckTimeout == 0 {
		o.CheckTimeout = 2 * time.Minute
	}
	if o.Seed == 0 {
		o.Seed = 1
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
}

// Run runs the workload against cl while injecting faults, undoes every
// fault, waits for full replication, and checks the history. It returns an
// error only when the run could not be carried out; what the checks found
// is in the Report (see Problems).
func Run(ctx context.Context, cl Cluster, o RunOptions) (*Report, error) {
	o.defaults(cl)
	log := o.Logger
	c, err := client.Open(ctx, cl.MasterAddrs())
	if err != nil {
		return nil, fmt.Errorf("chaos: open client: %w", err)
	}
	defer c.Close()
	masters, err := client.DialMasters(cl.MasterAddrs())
	if err != nil {
		return nil, err
	}
	defer masters.Close()
	obs := &observer{cl: cl, masters: masters, http: &http.Client{}}

	var kv KV
	if o.Client == "go" {
		g := GoClient{C: c}
		for _, s := range cl.Servers() {
			if s.Role != RoleNode {
				continue
			}
			conn, err := grpc.NewClient(s.GRPCAddr, grpc.WithTransportCredentials(insecure.NewCredentials()))
			if err != nil {
				return nil, err
			}
			defer conn.Close()
			g.Stray = append(g.Stray, shoalpb.NewKVClient(conn))
		}
		kv = g
	} else {
		var addrs []string
		for _, s := range cl.Servers() {
			if s.RESPAddr != "" {
				addrs = append(addrs, s.RESPAddr)
			}
		}
		rc := NewRedisClient(addrs)
		defer rc.Close()
		kv = rc
	}
	if o.Workload.Prefix == "" {
		o.Workload.Prefix = fmt.Sprintf("s%d", o.Seed)
	}

	h := NewHistory()
	wctx, stopWork := context.WithCancel(ctx)
	workDone := make(chan struct{})
	go func() {
		defer close(workDone)
		RunWorkload(wctx, kv, o.Workload, h, o.Seed)
	}()
	defer func() { stopWork(); <-workDone }()

	rep := &Report{Client: kv.Name()}
	select {
	case <-time.After(o.Warmup):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	warmOK, _ := countWindow(h, 0, h.now())
	rep.WarmupOpsPerSec = float64(warmOK) / o.Warmup.Seconds()
	log.Info("warmup", "ok_ops_per_sec", int(rep.WarmupOpsPerSec))

	n := &nemesis{cl: cl, obs: obs, c: c, o: o, h: h, rng: rand.New(rand.NewPCG(o.Seed, 0x5eed)), log: log, rounds: map[Fault]int{}}
	end := time.Now().Add(o.Duration)
	for i := 0; time.Now().Before(end) && ctx.Err() == nil; i++ {
		f := o.Faults[i%len(o.Faults)]
		rec := n.inject(ctx, f, n.rounds[f])
		n.rounds[f]++
		rep.Faults = append(rep.Faults, rec)
		log.Info("fault done", "fault", rec.Fault, "target", rec.Target, "availability", fmt.Sprintf("%.2f", rec.Availability()),
			"full_replication", rec.FullReplication, "err", rec.Err)
		select {
		case <-time.After(o.Recover):
		case <-ctx.Done():
		}
	}
	stopWork()
	<-workDone
	elapsed := time.Duration(h.now())
	rep.Elapsed = elapsed

	// Undo anything left (a failed undo above) and let every replica catch up.
	if err := n.undoAll(ctx); err != nil {
		return rep, err
	}
	if rep.FinalReplication, err = obs.waitFullReplication(ctx, 2*time.Minute); err != nil {
		return rep, err
	}

	reg := h.Register()
	for _, op := range reg {
		if op.Outcome == OutcomeOK {
			rep.OKOps++
		}
	}
	ins := h.Inserts()
	for _, op := range ins {
		switch op.Outcome {
		case OutcomeOK:
			rep.Acked++
			rep.OKOps++
		case OutcomeUnknown:
			rep.UnknownInserts++
		}
	}
	rep.RegisterOps, rep.Inserts = len(reg), len(ins)
	rep.OpsPerSec = float64(rep.OKOps) / elapsed.Seconds()
	if rep.Lost, rep.MaybePresent, err = LostWrites(ctx, kv, ins, time.Minute); err != nil {
		return rep, err
	}
	rep.Linearizability = CheckLinearizable(reg, o.CheckTimeout)
	return rep, nil
}

// countWindow counts workload operations called in [from, to): the
// successful ones and all of them.
func countWindow(h *History, from, to int64) (ok, all int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, op := range h.reg {
		if op.Call >= from && op.Call < to {
			all++
			if op.Outcome == OutcomeOK {
				ok++
			}
		}
	}
	for _, op := range h.inserts {
		if op.Call >= from && op.Call < to {
			all++
			if op.Outcome == OutcomeOK {
				ok++
			}
		}
	}
	return ok, all
}

type nemesis struct {
	cl  Cluster
	obs *observer
	c   *client.Client
	o   RunOptions
	h   *History
	rng *rand.Rand
	log *slog.Logger
	// rounds counts each fault's injections, to vary its target.
	rounds map[Fault]int
}

// inject applies fault f, keeps it for FaultFor, undoes it and measures.
func (n *nemesis) inject(ctx context.Context, f Fault, round int) FaultRecord {
	rec := FaultRecord{Fault: f, Start: time.Duration(n.h.now())}
	st, err := n.obs.state(ctx)
	if err != nil {
		rec.Err = err.Error()
		return rec
	}
	servers := n.cl.Servers()
	masters, nodes := namesOf(servers, RoleMaster), namesOf(servers, RoleNode)
	// Node faults alternate: the node leading the most shards, a random
	// node, and (every third round) the master leader.
	target := n.obs.busiestNode(st)
	switch round % 3 {
	case 1:
		target = nodes[n.rng.IntN(len(nodes))]
	case 2:
		target = n.obs.masterLeader(st)
	}
	var led []*shoalpb.ShardDescriptor
	if id, ok := n.obs.nodeIDs(st)[target]; ok {
		led = ledBy(st, id)
	}
	began := time.Now()
	var probes chan []probeResult
	startProbes := func() {
		if len(led) == 0 {
			return
		}
		probes = make(chan []probeResult, 1)
		go func() { probes <- firstWrites(ctx, n.c, led, began, 30*time.Second) }()
	}
	var undo func() error
	switch f {
	case FaultKill:
		rec.Target = target
		err = n.cl.Kill(ctx, target)
		startProbes()
		undo = func() error { return n.cl.Start(ctx, target) }
	case FaultPause:
		rec.Target = target
		err = n.cl.Pause(ctx, target)
		startProbes()
		undo = func() error { return n.cl.Resume(ctx, target) }
	case FaultIsolate:
		rec.Target = target
		others := slices.DeleteFunc(slices.Concat(masters, nodes), func(s string) bool { return s == target })
		if err = n.cl.Cut(ctx, []string{target}, others); err == nil {
			err = n.cl.Cut(ctx, others, []string{target})
		}
		startProbes()
		undo = func() error { return n.cl.Heal(ctx) }
	case FaultPartition, FaultOneWay:
		mMin, mMaj := split(n.rng, masters)
		nMin, nMaj := split(n.rng, nodes)
		minority, majority := slices.Concat(mMin, nMin), slices.Concat(mMaj, nMaj)
		rec.Target = fmt.Sprintf("%v | %v", minority, majority)
		if f == FaultOneWay {
			if n.rng.IntN(2) == 0 {
				minority, majority = majority, minority
			}
			rec.Target = fmt.Sprintf("%v -/-> %v", minority, majority)
		}
		err = n.cl.Cut(ctx, minority, majority)
		if err == nil && f == FaultPartition {
			err = n.cl.Cut(ctx, majority, minority)
		}
		led = allShards(st)
		startProbes()
		undo = func() error { return n.cl.Heal(ctx) }
	case FaultBridge:
		a, b := bridge(n.rng, masters, nodes)
		rec.Target = fmt.Sprintf("%v <bridge> %v", a, b)
		if err = n.cl.Cut(ctx, a, b); err == nil {
			err = n.cl.Cut(ctx, b, a)
		}
		led = allShards(st)
		startProbes()
		undo = func() error { return n.cl.Heal(ctx) }
	case FaultTransfer, FaultMove:
		actx, cancel := context.WithTimeout(ctx, n.o.FaultFor)
		rec.Target = n.admin(actx, f)
		cancel()
		undo = func() error { return nil }
	default:
		err = fmt.Errorf("%w: %s", ErrUnsupported, f)
	}
	if err != nil {
		rec.Err = err.Error()
		_ = n.undoAll(ctx)
		return rec
	}
	if f != FaultTransfer && f != FaultMove {
		select {
		case <-time.After(n.o.FaultFor):
		case <-ctx.Done():
		}
	}
	if err := undo(); err != nil {
		rec.Err = "undo: " + err.Error()
		_ = n.undoAll(ctx)
	}
	rec.End = time.Duration(n.h.now())
	if probes != nil {
		rec.FirstWrite = <-probes
	}
	rec.OK, rec.Attempted = countWindow(n.h, int64(rec.Start), int64(rec.End))
	if d, err := n.obs.waitFullReplication(ctx, time.Minute); err != nil {
		rec.Err = err.Error()
	} else {
		rec.FullReplication = d
	}
	return rec
}

// admin starts leader transfers or replica moves for the fault's duration.
func (n *nemesis) admin(ctx context.Context, f Fault) string {
	started := 0
	for ctx.Err() == nil {
		st, err := n.obs.state(ctx)
		if err != nil {
			break
		}
		routes := st.GetRoutes().GetShards()
		r := routes[n.rng.IntN(len(routes))]
		d := r.GetShard()
		var up []uint64
		for _, ni := range st.GetNodes() {
			if ni.GetState() == shoalpb.NodeState_NODE_STATE_UP {
				up = append(up, ni.GetId())
			}
		}
		var holders []uint64
		for _, rep := range d.GetReplicas() {
			if rep.GetReplicaId() != r.GetLeaderReplica() {
				holders = append(holders, rep.GetNodeId())
			}
		}
		err = n.obs.masters.Call(ctx, func(ctx context.Context, c shoalpb.MasterClient) error {
			if f == FaultTransfer {
				if len(holders) == 0 {
					return errors.New("no follower")
				}
				_, err := c.TransferShardLeader(ctx, &shoalpb.TransferShardLeaderRequest{ShardId: d.GetShardId(), ToNode: holders[n.rng.IntN(len(holders))]})
				return err
			}
			free := slices.DeleteFunc(slices.Clone(up), func(id uint64) bool { return replicaOn(d, id) != 0 })
			all := d.GetReplicas()
			if len(free) == 0 || len(all) == 0 {
				return errors.New("nowhere to move")
			}
			_, err := c.MoveReplica(ctx, &shoalpb.MoveReplicaRequest{ShardId: d.GetShardId(),
				FromNode: all[n.rng.IntN(len(all))].GetNodeId(), ToNode: free[n.rng.IntN(len(free))]})
			return err
		})
		if err == nil {
			started++
		}
		wait := 300 * time.Millisecond
		if f == FaultMove {
			wait = time.Second
		}
		select {
		case <-ctx.Done():
		case <-time.After(wait):
		}
	}
	return fmt.Sprintf("%d started", started)
}

// replicaOn is the ID of d's replica on node, or 0.
func replicaOn(d *shoalpb.ShardDescriptor, node uint64) uint64 {
	for _, r := range d.GetReplicas() {
		if r.GetNodeId() == node {
			return r.GetReplicaId()
		}
	}
	return 0
}

// bridge splits masters and nodes into two halves that will not see each
// other; one master and one node (the bridge) see both.
func bridge(rng *rand.Rand, masters, nodes []string) (a, b []string) {
	for _, names := range [][]string{masters, nodes} {
		names = slices.Clone(names)
		rng.Shuffle(len(names), func(i, j int) { names[i], names[j] = names[j], names[i] })
		rest := names[1:] // names[0] is the bridge
		a = append(a, rest[:len(rest)/2]...)
		b = append(b, rest[len(rest)/2:]...)
	}
	return a, b
}

// undoAll resumes, restarts and heals whatever is still faulty.
func (n *nemesis) undoAll(ctx context.Context) error {
	var errs []error
	for _, s := range n.cl.Servers() {
		if err := n.cl.Resume(ctx, s.Name); err != nil && !errors.Is(err, ErrUnsupported) {
			n.log.Debug("resume", "server", s.Name, "err", err)
		}
	}
	for _, s := range n.cl.Servers() {
		if up, err := n.cl.Running(ctx, s.Name); err != nil {
			errs = append(errs, err)
		} else if !up {
			if err := n.cl.Start(ctx, s.Name); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if err := n.cl.Heal(ctx); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func allShards(st *shoalpb.ClusterState) []*shoalpb.ShardDescriptor {
	var out []*shoalpb.ShardDescriptor
	for _, r := range st.GetRoutes().GetShards() {
		out = append(out, r.GetShard())
	}
	return out
}
