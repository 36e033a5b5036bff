//go:build docker

package chaos

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/client"
)

// DockerOptions configure a DockerCluster. Zero values take the defaults.
type DockerOptions struct {
	// Image is the image the containers run, built from deploy/Dockerfile.
	// Default "shoal:chaos".
	Image string
	// ModuleRoot, when set, is the root of a Shoal checkout: StartDocker
	// builds ./cmd/shoal from it (CGO_ENABLED=0) and tags the result Image.
	// When empty, Image must already exist (make docker-image builds
	// shoal:dev).
	ModuleRoot string
	// Go is the go command used to build. Default: go on PATH, else
	// $GOROOT/bin/go.
	Go string
	// Docker is the docker CLI. Default "docker".
	Docker string
	// RunID names everything the cluster creates: containers
	// shoal-chaos-<RunID>-m1.., network shoal-chaos-<RunID>, volumes
	// shoal-chaos-<RunID>-m1.., all labelled shoal.chaos.run=<RunID>.
	// Default: 8 random hex digits, so parallel runs do not collide.
	RunID string
	// Masters and Nodes count the servers. Defaults 3 and 5.
	Masters, Nodes int
	// Shards and Replicas are bootstrapped. Defaults 16 and 3.
	Shards, Replicas int
	// Subnet is the first three octets of the network's /24: master i is
	// Subnet.(10+i), node i is Subnet.(20+i), the host is Subnet.1.
	// Default: the first of 172.29.77 .. 172.29.126 that no other Docker
	// network uses (deploy/docker-compose.yml uses 172.29.70).
	Subnet string
	// NodeDownAfter and RepairAfter are the masters' settings. Defaults 3s
	// and 10m (no repair during ordinary faults).
	NodeDownAfter, RepairAfter time.Duration
	// KeepVolumes leaves the data volumes behind on Close, for inspection.
	// Default: Close removes them.
	KeepVolumes bool
	// Logger receives the harness's logs. Default: discarded.
	Logger *slog.Logger
}

// DockerCluster runs a cluster as containers of one image on a private
// bridge network: masters and nodes each in a container with a static IP,
// listening on it, and a named volume for its data. The host reaches every
// container IP (Linux routes a bridge network's subnet to the bridge), so
// a client on the host uses the addresses the nodes advertise. It needs a
// local Docker engine and its CLI, no registry: the image is FROM scratch.
//
// Faults: Kill is docker kill (SIGKILL) and Start docker start of the same
// container, with the same volume and IP; Pause and Resume are docker pause
// and unpause (the cgroup freezer). Network faults are limited to what a
// bridge network can do without touching the host's firewall: Isolate
// disconnects a container from the network, which cuts it off from every
// other server both ways, and from clients too; Cut accepts only that shape
// and returns ErrUnsupported for any other (one-way cuts, partitions of
// several servers). Heal reconnects every isolated container with its IP.
//
// A DockerCluster is safe for concurrent use.
type DockerCluster struct {
	topology
	opts    DockerOptions
	prefix  string // shoal-chaos-<RunID>
	network string
	image   string // the image ID the containers run
	log     *slog.Logger

	mu       sync.Mutex
	created  []string // containers created, to remove on Close
	volumes  []string
	netMade  bool
	isolated map[string]bool
}

var _ Cluster = (*DockerCluster)(nil)

// dockerLabel marks everything a DockerCluster creates, so leftovers of a
// crashed run can be found: docker ps -a --filter label=shoal.chaos.run.
const dockerLabel = "shoal.chaos.run"

// StartDocker builds or finds the image, creates the network, volumes and
// containers, and returns once the cluster serves: every shard placed and
// led (see WaitReady). On an error it removes what it made.
func StartDocker(ctx context.Context, opts DockerOptions) (*DockerCluster, error) {
	if opts.Image == "" {
		opts.Image = "shoal:chaos"
	}
	if opts.Docker == "" {
		opts.Docker = "docker"
	}
	if opts.RunID == "" {
		var b [4]byte
		if _, err := rand.Read(b[:]); err != nil {
			return nil, fmt.Errorf("chaos: run ID: %w", err)
		}
		opts.RunID = hex.EncodeToString(b[:])
	}
	if opts.Masters == 0 {
		opts.Masters = 3
	}
	if opts.Nodes == 0 {
		opts.Nodes = 5
	}
	if opts.Masters > 9 || opts.Nodes > 9 {
		return nil, errors.New("chaos: a DockerCluster has at most 9 masters and 9 nodes")
	}
	if opts.Shards == 0 {
		opts.Shards = 16
	}
	if opts.Replicas == 0 {
		opts.Replicas = 3
	}
	if opts.NodeDownAfter == 0 {
		opts.NodeDownAfter = 3 * time.Second
	}
	if opts.RepairAfter == 0 {
		opts.RepairAfter = 10 * time.Minute
	}
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	prefix := "shoal-chaos-" + opts.RunID
	c := &DockerCluster{opts: opts, prefix: prefix, network: prefix, log: opts.Logger, isolated: map[string]bool{}}

	if _, err := c.docker(ctx, "version", "--format", "{{.Server.Version}}"); err != nil {
		return nil, fmt.Errorf("chaos: no Docker engine: %w", err)
	}
	var err error
	if opts.ModuleRoot != "" {
		c.image, err = c.buildImage(ctx)
	} else {
		c.image, err = c.docker(ctx, "image", "inspect", "--format", "{{.Id}}", opts.Image)
	}
	if err != nil {
		return nil, err
	}
	if err := c.createNetwork(ctx); err != nil {
		c.Close()
		return nil, err
	}
	for _, s := range c.servers {
		if err := c.create(ctx, s); err != nil {
			c.Close()
			return nil, err
		}
	}
	if err := c.WaitReady(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// docker runs the docker CLI and returns its trimmed standard output.
func (c *DockerCluster) docker(ctx context.Context, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, c.opts.Docker, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("chaos: docker %s: %w: %s", strings.Join(args[:min(len(args), 3)], " "), err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(stdout.String()), nil
}

// buildImage builds a static shoal from ModuleRoot into a temporary build
// context, builds deploy/Dockerfile over it, tags it Image and returns its
// ID (containers run the ID, so that a parallel rebuild of the tag does not
// change what this cluster runs).
func (c *DockerCluster) buildImage(ctx context.Context) (string, error) {
	goCmd := c.opts.Go
	if goCmd == "" {
		if p, err := exec.LookPath("go"); err == nil {
			goCmd = p
		} else if root := os.Getenv("GOROOT"); root != "" {
			goCmd = filepath.Join(root, "bin", "go")
		} else {
			return "", errors.New("chaos: no go command on PATH (set DockerOptions.Go)")
		}
	}
	dockerfile := filepath.Join(c.opts.ModuleRoot, "deploy", "Dockerfile")
	if _, err := os.Stat(dockerfile); err != nil {
		return "", fmt.Errorf("chaos: image: %w", err)
	}
	dir, err := os.MkdirTemp("", "shoal-docker-")
	if err != nil {
		return "", fmt.Errorf("chaos: image: %w", err)
	}
	defer os.RemoveAll(dir)
	build := exec.CommandContext(ctx, goCmd, "build", "-trimpath", "-o", filepath.Join(dir, "shoal"), "./cmd/shoal")
	build.Dir = c.opts.ModuleRoot
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		return "", fmt.Errorf("chaos: go build ./cmd/shoal: %w: %s", err, bytes.TrimSpace(out))
	}
	c.log.Info("building image", "tag", c.opts.Image)
	id, err := c.docker(ctx, "build", "-q", "-t", c.opts.Image, "-f", dockerfile, dir)
	if err != nil {
		return "", err
	}
	// -q prints the ID last (the legacy builder may print warnings first).
	lines := strings.Fields(id)
	if len(lines) == 0 {
		return "", errors.New("chaos: docker build printed no image ID")
	}
	return lines[len(lines)-1], nil
}

// subnetsToTry are the /24s StartDocker tries in turn when
// DockerOptions.Subnet is empty.
func subnetsToTry() []string {
	var out []string
	for i := 77; i <= 126; i++ {
		out = append(out, fmt.Sprintf("172.29.%d", i))
	}
	return out
}

// createNetwork creates the bridge network on the first free subnet and
// lays out the servers' addresses on it.
func (c *DockerCluster) createNetwork(ctx context.Context) error {
	candidates := subnetsToTry()
	if c.opts.Subnet != "" {
		candidates = []string{c.opts.Subnet}
	}
	var subnet string
	var errs []error
	for _, sn := range candidates {
		_, err := c.docker(ctx, "network", "create", "--driver", "bridge", "--subnet", sn+".0/24",
			"--label", dockerLabel+"="+c.opts.RunID, c.network)
		if err == nil {
			subnet = sn
			break
		}
		errs = append(errs, err)
		// Another network (a parallel run, a compose project) holds this
		// subnet: try the next one. Anything else is fatal.
		if !strings.Contains(err.Error(), "overlaps") || ctx.Err() != nil {
			break
		}
	}
	if subnet == "" {
		return fmt.Errorf("chaos: no network created: %w", errors.Join(errs...))
	}
	c.mu.Lock()
	c.netMade = true
	c.mu.Unlock()
	c.topology = newTopology(subnet, c.opts.Masters, c.opts.Nodes)
	return nil
}

// args are the server's command line after the image's entrypoint.
func (c *DockerCluster) args(s Server) []string {
	if s.Role == RoleMaster {
		var peers []string
		for i, m := range c.servers {
			if m.Role == RoleMaster {
				peers = append(peers, fmt.Sprintf("%d=%s", i+1, m.GRPCAddr))
			}
		}
		a := []string{"master", "--id", strings.TrimPrefix(s.Name, "m"),
			"--listen", s.GRPCAddr, "--http", s.HTTPAddr, "--peers", strings.Join(peers, ","),
			"--data-dir", "/data",
			"--node-down-after", c.opts.NodeDownAfter.String(), "--repair-after", c.opts.RepairAfter.String()}
		if s.Name == "m1" {
			a = append(a, "--bootstrap", "--shards", fmt.Sprint(c.opts.Shards), "--replicas", fmt.Sprint(c.opts.Replicas))
		}
		return a
	}
	// No disk reserve: these runs are about faults, not free space, and
	// must not depend on the free space of the machine they run on.
	return []string{"node", "--master", strings.Join(c.MasterAddrs(), ","),
		"--listen", s.GRPCAddr, "--http", s.HTTPAddr, "--resp", s.RESPAddr, "--data-dir", "/data", "--disk-reserve-mb", "0"}
}

// create makes the server's volume and starts its container.
func (c *DockerCluster) create(ctx context.Context, s Server) error {
	vol := c.Container(s.Name)
	if _, err := c.docker(ctx, "volume", "create", "--label", dockerLabel+"="+c.opts.RunID, vol); err != nil {
		return err
	}
	c.mu.Lock()
	c.volumes = append(c.volumes, vol)
	c.mu.Unlock()
	args := []string{"create", "--name", c.Container(s.Name), "--hostname", s.Name,
		"--label", dockerLabel + "=" + c.opts.RunID, "--network", c.network, "--ip", s.IP,
		"--volume", vol + ":/data", c.image}
	if _, err := c.docker(ctx, append(args, c.args(s)...)...); err != nil {
		return err
	}
	c.mu.Lock()
	c.created = append(c.created, c.Container(s.Name))
	c.mu.Unlock()
	if _, err := c.docker(ctx, "start", c.Container(s.Name)); err != nil {
		return err
	}
	c.log.Info("started", "server", s.Name, "ip", s.IP)
	return nil
}

// WaitReady returns once the cluster serves: a client opens (every shard
// placed) and every shard has a leader in the route table.
func (c *DockerCluster) WaitReady(ctx context.Context) error {
	var last error
	for {
		actx, cancel := context.WithTimeout(ctx, 5*time.Second)
		cl, err := client.Open(actx, c.MasterAddrs())
		cancel()
		if err == nil {
			err = waitLed(ctx, cl)
			cl.Close()
			if err == nil {
				return nil
			}
		}
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("chaos: cluster %s not ready: %w (last: %w)", c.opts.RunID, ctx.Err(), last)
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// waitLed waits until every shard in cl's route table has a leader.
func waitLed(ctx context.Context, cl *client.Client) error {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		leaderless := 0
		for _, sr := range cl.Routes().GetShards() {
			if sr.GetLeaderReplica() == 0 {
				leaderless++
			}
		}
		if leaderless == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d shards without a leader: %w", leaderless, ctx.Err())
		case <-tick.C:
		}
	}
}

// WaitHealthy returns once the leading master sees every node up and
// every shard led by a replica on an up node: after a fault is undone, the
// cluster is whole again. On ctx's end the error says what was missing.
func (c *DockerCluster) WaitHealthy(ctx context.Context) error {
	m, err := client.DialMasters(c.MasterAddrs())
	if err != nil {
		return fmt.Errorf("chaos: dial masters: %w", err)
	}
	defer m.Close()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		missing, err := c.unhealthy(ctx, m)
		if err == nil && missing == "" {
			return nil
		}
		if err != nil {
			missing = err.Error()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("chaos: cluster %s not healthy (%s): %w", c.opts.RunID, missing, ctx.Err())
		case <-tick.C:
		}
	}
}

// unhealthy describes what keeps the cluster from being healthy, "" if
// nothing does.
func (c *DockerCluster) unhealthy(ctx context.Context, m *client.MasterConn) (string, error) {
	cctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	var st *shoalpb.ClusterState
	err := m.Call(cctx, func(ctx context.Context, mc shoalpb.MasterClient) error {
		var err error
		st, err = mc.GetCluster(ctx, &shoalpb.GetClusterRequest{})
		return err
	})
	if err != nil {
		return "", err
	}
	up := map[uint64]bool{}
	var problems []string
	for _, n := range st.GetNodes() {
		if n.GetState() == shoalpb.NodeState_NODE_STATE_UP {
			up[n.GetId()] = true
		} else {
			problems = append(problems, fmt.Sprintf("node %d (%s) %s", n.GetId(), n.GetAddr(), n.GetState()))
		}
	}
	if len(up) < c.opts.Nodes {
		problems = append(problems, fmt.Sprintf("%d of %d nodes up", len(up), c.opts.Nodes))
	}
	var leaderless []uint64
	for _, sr := range st.GetRoutes().GetShards() {
		led := false
		for _, r := range sr.GetShard().GetReplicas() {
			if r.GetReplicaId() == sr.GetLeaderReplica() && up[r.GetNodeId()] {
				led = true
			}
		}
		if !led {
			leaderless = append(leaderless, sr.GetShard().GetShardId())
		}
	}
	if len(leaderless) > 0 {
		problems = append(problems, fmt.Sprintf("shards without a live leader %v", leaderless))
	}
	if len(st.GetRoutes().GetShards()) == 0 {
		problems = append(problems, "no shards yet")
	}
	return strings.Join(problems, "; "), nil
}

// RunID is what the cluster's containers, network and volumes are named
// and labelled by.
func (c *DockerCluster) RunID() string { return c.opts.RunID }

// Network is the name of the cluster's Docker network.
func (c *DockerCluster) Network() string { return c.network }

// Container is the name of the server's container (and of its volume).
func (c *DockerCluster) Container(name string) string { return c.prefix + "-" + name }

// Faults are kill, pause and isolate (network faults other than one server
// cut off both ways need a firewall), and the administrator's transfers
// and moves, which any cluster supports.
func (c *DockerCluster) Faults() []Fault {
	return []Fault{FaultKill, FaultPause, FaultIsolate, FaultTransfer, FaultMove}
}

// Kill sends SIGKILL to the server's container (paused or not) and waits
// until it has stopped. Its container, volume and IP stay for Start.
func (c *DockerCluster) Kill(ctx context.Context, name string) error {
	if _, err := c.server(name); err != nil {
		return err
	}
	if _, err := c.docker(ctx, "kill", "--signal", "KILL", c.Container(name)); err != nil {
		return err
	}
	_, err := c.docker(ctx, "wait", c.Container(name))
	return err
}

// Start starts the server's stopped container again, from its volume and
// with its IP. A server isolated before it was killed stays isolated until
// Heal or Rejoin. Starting a running server does nothing.
func (c *DockerCluster) Start(ctx context.Context, name string) error {
	if _, err := c.server(name); err != nil {
		return err
	}
	_, err := c.docker(ctx, "start", c.Container(name))
	return err
}

// Running reports whether the server's container runs (paused included).
func (c *DockerCluster) Running(ctx context.Context, name string) (bool, error) {
	if _, err := c.server(name); err != nil {
		return false, err
	}
	out, err := c.docker(ctx, "inspect", "--format", "{{.State.Running}}", c.Container(name))
	return out == "true", err
}

// Pause freezes every process of the server's container (docker pause).
func (c *DockerCluster) Pause(ctx context.Context, name string) error {
	if _, err := c.server(name); err != nil {
		return err
	}
	_, err := c.docker(ctx, "pause", c.Container(name))
	return err
}

// Resume thaws a paused server (docker unpause).
func (c *DockerCluster) Resume(ctx context.Context, name string) error {
	if _, err := c.server(name); err != nil {
		return err
	}
	_, err := c.docker(ctx, "unpause", c.Container(name))
	return err
}

// Isolate disconnects the server's container from the network: it can
// reach no other server and no other server can reach it, and clients on
// the host cannot reach it either. Heal or Rejoin undo it.
func (c *DockerCluster) Isolate(ctx context.Context, name string) error {
	if _, err := c.server(name); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.isolated[name] {
		return nil
	}
	if _, err := c.docker(ctx, "network", "disconnect", c.network, c.Container(name)); err != nil {
		return err
	}
	c.isolated[name] = true
	return nil
}

// Rejoin reconnects an isolated server with its IP.
func (c *DockerCluster) Rejoin(ctx context.Context, name string) error {
	s, err := c.server(name)
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.rejoinLocked(ctx, s)
}

func (c *DockerCluster) rejoinLocked(ctx context.Context, s Server) error {
	if !c.isolated[s.Name] {
		return nil
	}
	if _, err := c.docker(ctx, "network", "connect", "--ip", s.IP, c.network, c.Container(s.Name)); err != nil {
		return err
	}
	delete(c.isolated, s.Name)
	return nil
}

// Cut supports one shape: one server on one side and every other server on
// the other, in either order. It isolates that server both ways (and from
// clients: see Isolate), so Cut({x}, others) and Cut(others, {x}) do the
// same and calling both is harmless. Any other shape (one-way cuts, a
// split of several servers, a bridge) returns an error wrapping
// ErrUnsupported: a bridge network cannot drop only some of a container's
// traffic without the host's firewall.
func (c *DockerCluster) Cut(ctx context.Context, from, to []string) error {
	for _, n := range slices.Concat(from, to) {
		if _, err := c.server(n); err != nil {
			return err
		}
	}
	others := func(name string) []string {
		var out []string
		for _, s := range c.servers {
			if s.Name != name {
				out = append(out, s.Name)
			}
		}
		return out
	}
	same := func(a, b []string) bool {
		a, b = slices.Clone(a), slices.Clone(b)
		slices.Sort(a)
		slices.Sort(b)
		return slices.Equal(slices.Compact(a), slices.Compact(b))
	}
	switch {
	case len(from) == 1 && same(to, others(from[0])):
		return c.Isolate(ctx, from[0])
	case len(to) == 1 && same(from, others(to[0])):
		return c.Isolate(ctx, to[0])
	}
	return fmt.Errorf("%w: containers can only be cut off one at a time from all the others, both ways (cut %v -> %v)",
		ErrUnsupported, from, to)
}

// Heal reconnects every isolated server.
func (c *DockerCluster) Heal(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	var errs []error
	for _, s := range c.servers {
		if err := c.rejoinLocked(ctx, s); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// removeNetwork removes the cluster's network. The daemon can still count
// an endpoint of a container that `docker rm --force` has just removed
// (seen after the isolate fault's disconnect and reconnect), and refuses
// with "has active endpoints". Then the containers it still lists are
// disconnected by force and the removal tried again for up to 10 s. If the
// daemon keeps refusing while listing no container, the endpoint is its
// own stale record: the network is left behind with a warning (it holds
// nothing, and the next cluster takes another subnet), rather than failing
// a test over the daemon's bookkeeping.
func (c *DockerCluster) removeNetwork(ctx context.Context) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		_, err := c.docker(ctx, "network", "rm", c.network)
		if err == nil || !strings.Contains(err.Error(), "active endpoints") {
			return err
		}
		out, ierr := c.docker(ctx, "network", "inspect", "-f", "{{range .Containers}}{{.Name}} {{end}}", c.network)
		names := strings.Fields(out)
		for _, name := range names {
			_, _ = c.docker(ctx, "network", "disconnect", "--force", c.network, name)
		}
		if time.Now().After(deadline) {
			if ierr == nil && len(names) == 0 {
				c.log.Warn("docker keeps a stale endpoint on the network, which lists no container; network left behind",
					"network", c.network, "err", err)
				return nil
			}
			return err
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Logs returns the last tail lines the server wrote (both streams).
func (c *DockerCluster) Logs(ctx context.Context, name string, tail int) (string, error) {
	if _, err := c.server(name); err != nil {
		return "", err
	}
	cmd := exec.CommandContext(ctx, c.opts.Docker, "logs", "--tail", fmt.Sprint(tail), c.Container(name))
	out, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("chaos: docker logs %s: %w: %s", c.Container(name), err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

// Close removes the containers (killing them, paused or not), the network
// and, unless KeepVolumes, the volumes. The image stays, for the next run.
// Unlike ProcCluster, the data does not outlive Close by default: use
// KeepVolumes (or Logs before Close) to inspect a failed run.
func (c *DockerCluster) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c.mu.Lock()
	created, volumes, netMade := c.created, c.volumes, c.netMade
	c.created, c.volumes, c.netMade = nil, nil, false
	c.mu.Unlock()
	var errs []error
	if len(created) > 0 {
		if _, err := c.docker(ctx, append([]string{"rm", "--force"}, created...)...); err != nil {
			errs = append(errs, err)
		}
	}
	if netMade {
		if err := c.removeNetwork(ctx); err != nil {
			errs = append(errs, err)
		}
	}
	if len(volumes) > 0 && !c.opts.KeepVolumes {
		if _, err := c.docker(ctx, append([]string{"volume", "rm", "--force"}, volumes...)...); err != nil {
			errs = append(errs, err)
		}
	} else if len(volumes) > 0 {
		c.log.Info("volumes kept", "volumes", volumes)
	}
	return errors.Join(errs...)
}
