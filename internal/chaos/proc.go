package chaos

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/shoaldb/shoal/client"
)

// ProcOptions configure a ProcCluster. Zero values take the defaults.
type ProcOptions struct {
	// Bin is the shoal binary to run. Required (see Build).
	Bin string
	// Dir holds each server's data directory and log. Required.
	Dir string
	// Masters and Nodes count the servers. Defaults 3 and 5.
	Masters, Nodes int
	// Shards and Replicas are bootstrapped. Defaults 16 and 3.
	Shards, Replicas int
	// Subnet is the first three octets of the servers' loopback addresses:
	// master i is Subnet.(10+i), node i is Subnet.(20+i). Default "127.0.0".
	Subnet string
	// NodeDownAfter and RepairAfter are the masters' settings. Defaults 3s
	// and 10m (no repair during ordinary faults).
	NodeDownAfter, RepairAfter time.Duration
	// Chain is the iptables chain the cluster's cuts go in; it is created,
	// hooked into INPUT and removed on Close. Default "SHOAL-CHAOS".
	Chain string
	// NodeArgs, if set, returns what to add to the named node's `shoal
	// node` command line.
	NodeArgs func(name string) []string
	// Logger receives the harness's logs. Default: discarded.
	Logger *slog.Logger
}

// ProcCluster runs a cluster as real `shoal master` and `shoal node`
// processes, each listening on and dialling from its own 127.0.0.x address,
// so that an iptables rule on addresses cuts exactly the links a test
// names. It needs root for iptables.
type ProcCluster struct {
	topology
	opts ProcOptions
	log  *slog.Logger

	mu     sync.Mutex
	procs  map[string]*proc
	cuts   bool
	closed bool
}

type proc struct {
	cmd  *exec.Cmd
	done chan struct{}
	// err is what Wait returned, set before done is closed.
	err    error
	paused bool
}

// StartProc starts the cluster and returns once every server was started
// (not once it serves: use WaitReady).
func StartProc(ctx context.Context, opts ProcOptions) (*ProcCluster, error) {
	if opts.Bin == "" || opts.Dir == "" {
		return nil, errors.New("chaos: ProcOptions.Bin and Dir are required")
	}
	if opts.Masters == 0 {
		opts.Masters = 3
	}
	if opts.Nodes == 0 {
		opts.Nodes = 5
	}
	if opts.Shards == 0 {
		opts.Shards = 16
	}
	if opts.Replicas == 0 {
		opts.Replicas = 3
	}
	if opts.Subnet == "" {
		opts.Subnet = "127.0.0"
	}
	if opts.NodeDownAfter == 0 {
		opts.NodeDownAfter = 3 * time.Second
	}
	if opts.RepairAfter == 0 {
		opts.RepairAfter = 10 * time.Minute
	}
	if opts.Chain == "" {
		opts.Chain = "SHOAL-CHAOS"
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	c := &ProcCluster{topology: newTopology(opts.Subnet, opts.Masters, opts.Nodes), opts: opts, log: opts.Logger,
		procs: map[string]*proc{}}
	if err := c.setupChain(ctx); err != nil {
		return nil, err
	}
	for _, s := range c.servers {
		if err := c.Start(ctx, s.Name); err != nil {
			c.Close()
			return nil, err
		}
	}
	return c, nil
}

// Faults: every fault of the suite.
func (c *ProcCluster) Faults() []Fault {
	return []Fault{FaultKill, FaultPause, FaultIsolate, FaultPartition, FaultOneWay, FaultBridge, FaultTransfer, FaultMove}
}

func (c *ProcCluster) args(s Server) []string {
	dir := filepath.Join(c.opts.Dir, s.Name)
	common := []string{"--log-level", "info", "--listen", s.GRPCAddr, "--http", s.HTTPAddr, "--data-dir", dir, "--dial-from", s.IP}
	if s.Role == RoleMaster {
		var peers []string
		for _, m := range c.servers {
			if m.Role == RoleMaster {
				peers = append(peers, strings.TrimPrefix(m.Name, "m")+"="+m.GRPCAddr)
			}
		}
		return append([]string{"master", "--id", strings.TrimPrefix(s.Name, "m"), "--peers", strings.Join(peers, ","),
			"--bootstrap", "--shards", strconv.Itoa(c.opts.Shards), "--replicas", strconv.Itoa(c.opts.Replicas),
			"--node-down-after", c.opts.NodeDownAfter.String(), "--repair-after", c.opts.RepairAfter.String()}, common...)
	}
	// No disk reserve: these runs are about faults, not free space, and
	// must not depend on the free space of the machine they run on.
	args := append([]string{"node", "--master", strings.Join(c.MasterAddrs(), ","), "--resp", s.RESPAddr,
		"--shutdown-timeout", "2s", "--disk-reserve-mb", "0"}, common...)
	if c.opts.NodeArgs != nil {
		args = append(args, c.opts.NodeArgs(s.Name)...)
	}
	return args
}

// Start starts the named server (again) from its data directory. Its
// output goes to <Dir>/<name>.log, appended across restarts.
func (c *ProcCluster) Start(ctx context.Context, name string) error {
	s, err := c.server(name)
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if p := c.procs[name]; p != nil {
		select {
		case <-p.done:
		default:
			return fmt.Errorf("chaos: %s is running", name)
		}
	}
	logf, err := os.OpenFile(filepath.Join(c.opts.Dir, name+".log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("chaos: %s log: %w", name, err)
	}
	cmd := exec.Command(c.opts.Bin, c.args(s)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group, so that a signal to the test does not reach it
	// and SIGSTOP stops only it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		logf.Close()
		return fmt.Errorf("chaos: start %s: %w", name, err)
	}
	p := &proc{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		logf.Close()
		close(p.done)
	}()
	c.procs[name] = p
	c.log.Info("started", "server", name, "pid", cmd.Process.Pid)
	return nil
}

// Running reports whether the named server's process is alive.
func (c *ProcCluster) Running(_ context.Context, name string) (bool, error) {
	if _, err := c.server(name); err != nil {
		return false, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.procs[name]
	if p == nil {
		return false, nil
	}
	select {
	case <-p.done:
		return false, nil
	default:
		return true, nil
	}
}

// Exited returns, once the named server's process has exited by itself or
// been killed, what its Wait returned (an *exec.ExitError for a non-zero
// status); exited is false while it runs.
func (c *ProcCluster) Exited(name string) (exited bool, err error) {
	c.mu.Lock()
	p := c.procs[name]
	c.mu.Unlock()
	if p == nil {
		return false, nil
	}
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// Kill sends SIGKILL and waits for the process to be gone.
func (c *ProcCluster) Kill(ctx context.Context, name string) error {
	c.mu.Lock()
	p := c.procs[name]
	c.mu.Unlock()
	if p == nil {
		return fmt.Errorf("chaos: %s was never started", name)
	}
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	select {
	case <-p.done:
	case <-ctx.Done():
		return fmt.Errorf("chaos: kill %s: %w", name, ctx.Err())
	}
	c.mu.Lock()
	p.paused = false
	c.mu.Unlock()
	c.log.Info("killed", "server", name)
	return nil
}

// Pause sends SIGSTOP.
func (c *ProcCluster) Pause(_ context.Context, name string) error {
	return c.signal(name, syscall.SIGSTOP, true)
}

// Resume sends SIGCONT.
func (c *ProcCluster) Resume(_ context.Context, name string) error {
	return c.signal(name, syscall.SIGCONT, false)
}

func (c *ProcCluster) signal(name string, sig syscall.Signal, paused bool) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.procs[name]
	if p == nil {
		return fmt.Errorf("chaos: %s was never started", name)
	}
	if !paused && !p.paused {
		return nil
	}
	if err := p.cmd.Process.Signal(sig); err != nil {
		return fmt.Errorf("chaos: %v to %s: %w", sig, name, err)
	}
	p.paused = paused
	c.log.Info("signalled", "server", name, "signal", sig)
	return nil
}

func (c *ProcCluster) iptables(ctx context.Context, args ...string) error {
	out, err := exec.CommandContext(ctx, "iptables", append([]string{"-w"}, args...)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("chaos: iptables %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

func (c *ProcCluster) setupChain(ctx context.Context) error {
	if _, err := exec.LookPath("iptables"); err != nil {
		return fmt.Errorf("chaos: partitions need iptables (apt-get install iptables): %w", err)
	}
	// Left over from a run that was itself killed: start clean.
	_ = c.iptables(ctx, "-D", "INPUT", "-j", c.opts.Chain)
	_ = c.iptables(ctx, "-F", c.opts.Chain)
	_ = c.iptables(ctx, "-X", c.opts.Chain)
	if err := c.iptables(ctx, "-N", c.opts.Chain); err != nil {
		return err
	}
	return c.iptables(ctx, "-I", "INPUT", "-j", c.opts.Chain)
}

// Cut drops packets from each server in from to each server in to. On
// loopback every packet passes INPUT once, so one rule per ordered pair
// cuts that direction; clients (on 127.0.0.1) are not affected.
func (c *ProcCluster) Cut(ctx context.Context, from, to []string) error {
	for _, f := range from {
		fs, err := c.server(f)
		if err != nil {
			return err
		}
		for _, t := range to {
			ts, err := c.server(t)
			if err != nil {
				return err
			}
			if fs.IP == ts.IP {
				continue
			}
			if err := c.iptables(ctx, "-A", c.opts.Chain, "-s", fs.IP, "-d", ts.IP, "-j", "DROP"); err != nil {
				return err
			}
		}
	}
	c.mu.Lock()
	c.cuts = true
	c.mu.Unlock()
	c.log.Info("cut", "from", from, "to", to)
	return nil
}

// Heal removes every cut.
func (c *ProcCluster) Heal(ctx context.Context) error {
	if err := c.iptables(ctx, "-F", c.opts.Chain); err != nil {
		return err
	}
	c.mu.Lock()
	c.cuts = false
	c.mu.Unlock()
	c.log.Info("healed")
	return nil
}

// Close kills every server (resuming paused ones first, so they die) and
// removes the iptables chain.
func (c *ProcCluster) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	procs := make([]*proc, 0, len(c.procs))
	for _, p := range c.procs {
		procs = append(procs, p)
	}
	c.mu.Unlock()
	for _, p := range procs {
		_ = p.cmd.Process.Signal(syscall.SIGCONT)
		_ = p.cmd.Process.Signal(syscall.SIGKILL)
	}
	var errs []error
	for _, p := range procs {
		select {
		case <-p.done:
		case <-ctx.Done():
			errs = append(errs, fmt.Errorf("chaos: process %d did not exit", p.cmd.Process.Pid))
		}
	}
	_ = c.iptables(ctx, "-D", "INPUT", "-j", c.opts.Chain)
	_ = c.iptables(ctx, "-F", c.opts.Chain)
	if err := c.iptables(ctx, "-X", c.opts.Chain); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// Build compiles the shoal binary (static, with the given build tags, for
// planted bugs) into dir and returns its path.
func Build(ctx context.Context, moduleRoot, dir string, tags ...string) (string, error) {
	bin := filepath.Join(dir, "shoal")
	if len(tags) > 0 {
		bin += "-" + strings.Join(tags, "-")
	}
	args := []string{"build", "-o", bin}
	if len(tags) > 0 {
		args = append(args, "-tags", strings.Join(tags, ","))
	}
	args = append(args, "./cmd/shoal")
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = moduleRoot
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("chaos: go build: %w: %s", err, out)
	}
	return bin, nil
}

// WaitReady waits until the cluster serves: a client can open it (every
// shard placed and led) and write.
func WaitReady(ctx context.Context, cl Cluster) error {
	c, err := client.Open(ctx, cl.MasterAddrs())
	if err != nil {
		return fmt.Errorf("chaos: cluster not ready: %w", err)
	}
	defer c.Close()
	for {
		wctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := c.Put(wctx, []byte("chaos-ready"), []byte("1"))
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("chaos: cluster not ready: %w", err)
		}
	}
}
