//go:build chaos && docker

package chaos

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/shoaldb/shoal/client"
	"github.com/shoaldb/shoal/internal/keys"
)

// TestDockerCluster runs writers against a DockerCluster while it kills
// the node leading the most shards (and starts it again), pauses a node and
// isolates one, checks that writes go on during and after each fault and
// that every acknowledged write reads back at the end, and reports how long
// the killed leader's shards took to take a write again.
//
// It builds the image from this checkout (tag shoal:chaos) unless
// SHOAL_DOCKER_IMAGE names one to reuse (make docker-image: shoal:dev).
//
//	go test -tags 'chaos docker' -count=1 -run TestDocker -v -timeout 20m ./internal/chaos/
func TestDockerCluster(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Minute)
	defer cancel()
	began := time.Now()
	dc := startDockerCluster(ctx, t)
	t.Logf("cluster %s (network %s) serving %v after start", dc.RunID(), dc.Network(), time.Since(began).Round(time.Millisecond))

	cl, err := client.Open(ctx, dc.MasterAddrs())
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()

	w := startDockerWriters(ctx, cl, 8)
	defer w.stop()
	dockerAwaitWrites(ctx, t, w, "before any fault", time.Time{}, 100)

	// Kill the node leading the most shards, measure, start it again.
	victim, led := dockerTopLeader(t, dc, cl, nil)
	// Times run from the moment the fault is in place (docker kill and
	// docker wait, docker pause, docker network disconnect returned).
	k0 := time.Now()
	if err := dc.Kill(ctx, victim); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	t.Logf("docker kill + wait took %v", t0.Sub(k0).Round(time.Millisecond))
	t.Logf("killed %s, leader of %d shards %v", victim, len(led), led)
	first, all := w.recovery(ctx, t, "kill "+victim, t0, led)
	t.Logf("kill %s: first write on its shards %v after it was dead (%v after docker kill began), every one of its %d shards written again after %v",
		victim, first.Round(time.Millisecond), (first + t0.Sub(k0)).Round(time.Millisecond), len(led), all.Round(time.Millisecond))
	dockerAwaitWrites(ctx, t, w, "while "+victim+" is down", t0, 200)
	t1 := time.Now()
	if err := dc.Start(ctx, victim); err != nil {
		t.Fatal(err)
	}
	dockerAwaitHealthy(ctx, t, dc)
	t.Logf("%s back: every node up and every shard led %v after docker start", victim, time.Since(t1).Round(time.Millisecond))
	dockerAwaitWrites(ctx, t, w, "after "+victim+" restarted", t1, 200)

	// Pause the busiest leader other than the one just killed.
	paused, led := dockerTopLeader(t, dc, cl, []string{victim})
	if err := dc.Pause(ctx, paused); err != nil {
		t.Fatal(err)
	}
	t0 = time.Now()
	first, all = w.recovery(ctx, t, "pause "+paused, t0, led)
	t.Logf("pause %s (leader of %d shards): first write on its shards after %v, all after %v",
		paused, len(led), first.Round(time.Millisecond), all.Round(time.Millisecond))
	dockerAwaitWrites(ctx, t, w, "while "+paused+" is paused", t0, 200)
	t1 = time.Now()
	if err := dc.Resume(ctx, paused); err != nil {
		t.Fatal(err)
	}
	dockerAwaitHealthy(ctx, t, dc)
	dockerAwaitWrites(ctx, t, w, "after "+paused+" resumed", t1, 200)

	// Cut another leader off the network, then reconnect it.
	isolated, led := dockerTopLeader(t, dc, cl, []string{victim, paused})
	if err := dc.Cut(ctx, []string{isolated}, dockerOthers(dc, isolated)); err != nil {
		t.Fatal(err)
	}
	if err := dc.Cut(ctx, dockerOthers(dc, isolated), []string{isolated}); err != nil {
		t.Fatal(err)
	}
	t0 = time.Now()
	first, all = w.recovery(ctx, t, "isolate "+isolated, t0, led)
	t.Logf("isolate %s (leader of %d shards): first write on its shards after %v, all after %v",
		isolated, len(led), first.Round(time.Millisecond), all.Round(time.Millisecond))
	dockerAwaitWrites(ctx, t, w, "while "+isolated+" is isolated", t0, 200)
	t1 = time.Now()
	if err := dc.Heal(ctx); err != nil {
		t.Fatal(err)
	}
	dockerAwaitHealthy(ctx, t, dc)
	dockerAwaitWrites(ctx, t, w, "after "+isolated+" rejoined", t1, 200)

	if err := dc.Cut(ctx, []string{"m1", "m2"}, []string{"n1"}); err == nil {
		t.Error("a one-way cut between some servers succeeded; want ErrUnsupported")
	}

	w.stop()
	acked, failed := w.results()
	t.Logf("%d writes acknowledged, %d failed or timed out (maybe applied)", len(acked), failed)
	dockerVerifyAcked(ctx, t, cl, acked)
}

// dockerWriters put unique keys from several goroutines and remember which
// were acknowledged, when, and on which shard.
type dockerWriters struct {
	cancel context.CancelFunc
	wg     sync.WaitGroup
	shards map[uint16]uint64 // slot -> shard, fixed: this cluster never splits

	mu     sync.Mutex
	acked  map[string][]byte
	writes []dockerWrite
	failed int
}

// dockerWriteTimeout bounds each write. The client sends a request to the
// node it believes leads and waits for it until the deadline (a paused or
// cut-off leader neither answers nor resets), so this also bounds how long
// a writer stays stuck on a frozen leader, and with it the recovery times
// measured for pause and isolate.
const dockerWriteTimeout = time.Second

type dockerWrite struct {
	start, end time.Time
	shard      uint64
}

func startDockerWriters(ctx context.Context, cl *client.Client, n int) *dockerWriters {
	wctx, cancel := context.WithCancel(ctx)
	w := &dockerWriters{cancel: cancel, shards: map[uint16]uint64{}, acked: map[string][]byte{}}
	for _, sr := range cl.Routes().GetShards() {
		for s := sr.GetShard().GetStartSlot(); s < sr.GetShard().GetEndSlot(); s++ {
			w.shards[uint16(s)] = sr.GetShard().GetShardId()
		}
	}
	for i := range n {
		w.wg.Go(func() {
			for seq := 0; wctx.Err() == nil; seq++ {
				key := fmt.Sprintf("docker-w%d-%d", i, seq)
				val := []byte(fmt.Sprintf("v%d-%d", i, seq))
				start := time.Now()
				octx, ocancel := context.WithTimeout(wctx, dockerWriteTimeout)
				_, err := cl.Put(octx, []byte(key), val)
				ocancel()
				end := time.Now()
				w.mu.Lock()
				if err == nil {
					w.acked[key] = val
					w.writes = append(w.writes, dockerWrite{start: start, end: end, shard: w.shards[keys.Slot([]byte(key))]})
				} else if wctx.Err() == nil {
					w.failed++
				}
				w.mu.Unlock()
			}
		})
	}
	return w
}

func (w *dockerWriters) stop() {
	w.cancel()
	w.wg.Wait()
}

// ackedSince counts the acknowledged writes started at or after t.
func (w *dockerWriters) ackedSince(t time.Time) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for i := len(w.writes) - 1; i >= 0; i-- {
		if !w.writes[i].start.Before(t) {
			n++
		}
	}
	return n
}

// firstAfter returns, for each of shards, when the first write started at
// or after t was acknowledged on it (shards without one are missing).
func (w *dockerWriters) firstAfter(t time.Time, shards []uint64) map[uint64]time.Time {
	want := map[uint64]bool{}
	for _, s := range shards {
		want[s] = true
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	out := map[uint64]time.Time{}
	for _, a := range w.writes {
		if !want[a.shard] || a.start.Before(t) {
			continue
		}
		if e, ok := out[a.shard]; !ok || a.end.Before(e) {
			out[a.shard] = a.end
		}
	}
	return out
}

// recovery waits until every one of shards took a write started after t0
// and returns how long after t0 the first and the last of them did.
func (w *dockerWriters) recovery(ctx context.Context, t *testing.T, what string, t0 time.Time, shards []uint64) (first, all time.Duration) {
	t.Helper()
	if len(shards) == 0 {
		dockerAwaitWrites(ctx, t, w, what, t0, 1)
		return 0, 0
	}
	var got map[uint64]time.Time
	waitDocker(ctx, t, fmt.Sprintf("%s: a write on each of shards %v", what, shards), 60*time.Second, func() (bool, string) {
		got = w.firstAfter(t0, shards)
		return len(got) == len(shards), fmt.Sprintf("%d shards written", len(got))
	})
	first, all = time.Duration(1<<62), 0
	for _, e := range got {
		first, all = min(first, e.Sub(t0)), max(all, e.Sub(t0))
	}
	return first, all
}

func (w *dockerWriters) results() (map[string][]byte, int) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.acked, w.failed
}

// dockerAwaitWrites waits until n writes started at or after since were
// acknowledged.
func dockerAwaitWrites(ctx context.Context, t *testing.T, w *dockerWriters, what string, since time.Time, n int) {
	t.Helper()
	waitDocker(ctx, t, fmt.Sprintf("%d writes %s", n, what), 60*time.Second, func() (bool, string) {
		got := w.ackedSince(since)
		return got >= n, fmt.Sprintf("%d acknowledged", got)
	})
}

// dockerAwaitHealthy waits until the masters see every node up and every
// shard led.
func dockerAwaitHealthy(ctx context.Context, t *testing.T, dc *DockerCluster) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, 90*time.Second)
	defer cancel()
	if err := dc.WaitHealthy(ctx); err != nil {
		t.Fatal(err)
	}
}

// dockerTopLeader returns the node (not in skip) leading the most shards, by the
// client's route table, and those shards.
func dockerTopLeader(t *testing.T, dc *DockerCluster, cl *client.Client, skip []string) (string, []uint64) {
	t.Helper()
	rt := cl.Routes()
	byAddr := map[string]string{}
	for _, s := range dc.Servers() {
		byAddr[s.GRPCAddr] = s.Name
	}
	nodeName := map[uint64]string{}
	for _, n := range rt.GetNodes() {
		nodeName[n.GetId()] = byAddr[n.GetAddr()]
	}
	led := map[string][]uint64{}
	for _, sr := range rt.GetShards() {
		for _, r := range sr.GetShard().GetReplicas() {
			if r.GetReplicaId() == sr.GetLeaderReplica() {
				name := nodeName[r.GetNodeId()]
				led[name] = append(led[name], sr.GetShard().GetShardId())
			}
		}
	}
	var names []string
	for _, s := range dc.Servers() {
		if s.Role == RoleNode && !slices.Contains(skip, s.Name) {
			names = append(names, s.Name)
		}
	}
	sort.SliceStable(names, func(i, j int) bool { return len(led[names[i]]) > len(led[names[j]]) })
	if len(names) == 0 {
		t.Fatal("no node to pick")
	}
	return names[0], led[names[0]]
}

// dockerOthers names every server of dc but name.
func dockerOthers(dc *DockerCluster, name string) []string {
	var out []string
	for _, s := range dc.Servers() {
		if s.Name != name {
			out = append(out, s.Name)
		}
	}
	return out
}

// dockerVerifyAcked reads every acknowledged key back, from 8 goroutines.
func dockerVerifyAcked(ctx context.Context, t *testing.T, cl *client.Client, acked map[string][]byte) {
	t.Helper()
	ks := make(chan string)
	var mu sync.Mutex
	var bad []string
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for k := range ks {
				rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				it, found, err := cl.Get(rctx, []byte(k))
				cancel()
				var problem string
				switch {
				case err != nil:
					problem = fmt.Sprintf("%s: %v", k, err)
				case !found:
					problem = fmt.Sprintf("%s: acknowledged but missing", k)
				case !bytes.Equal(it.Value, acked[k]):
					problem = fmt.Sprintf("%s: read %q, wrote %q", k, it.Value, acked[k])
				}
				if problem != "" {
					mu.Lock()
					bad = append(bad, problem)
					mu.Unlock()
				}
			}
		})
	}
	for k := range acked {
		ks <- k
	}
	close(ks)
	wg.Wait()
	if len(bad) > 0 {
		sort.Strings(bad)
		t.Errorf("%d of %d acknowledged writes do not read back, e.g. %v", len(bad), len(acked), bad[:min(len(bad), 10)])
	} else {
		t.Logf("all %d acknowledged writes read back", len(acked))
	}
}

// waitDocker polls cond until it holds, failing the test after timeout
// with what and cond's last description of the state.
func waitDocker(ctx context.Context, t *testing.T, what string, timeout time.Duration, cond func() (bool, string)) {
	t.Helper()
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		ok, state := cond()
		if ok {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: not within %v (%s): %v", what, timeout, state, ctx.Err())
		case <-tick.C:
		}
	}
}

func dumpDockerLogs(t *testing.T, dc *DockerCluster) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, s := range dc.Servers() {
		out, err := dc.Logs(ctx, s.Name, 40)
		if err != nil {
			t.Logf("logs of %s: %v", s.Name, err)
			continue
		}
		t.Logf("--- %s (last 40 lines)\n%s", s.Name, out)
	}
}

// dockerModuleRoot finds the checkout's go.mod above the test's directory.
func dockerModuleRoot(t *testing.T) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("go.mod not found")
		}
		dir = parent
	}
}

// TestDockerChaos runs the checked workload (registers through the Go
// client, checked by porcupine; unique inserts checked for loss) against
// the containers while they are killed, paused and disconnected.
func TestDockerChaos(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Minute)
	defer cancel()
	dc := startDockerCluster(ctx, t)
	rep, err := Run(ctx, dc, RunOptions{Duration: envDuration(t, "CHAOS_DURATION", 30*time.Second),
		Seed: uint64(time.Now().UnixNano()), Logger: logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	summarize(t, rep)
	if p := rep.Problems(50); len(p) > 0 {
		t.Fatal(strings.Join(p, "; "))
	}
}

// startDockerCluster starts the containers (building the image from this
// checkout unless SHOAL_DOCKER_IMAGE names one) and removes them when the
// test ends, after printing their logs if it failed.
func startDockerCluster(ctx context.Context, t *testing.T) *DockerCluster {
	t.Helper()
	opts := DockerOptions{ModuleRoot: dockerModuleRoot(t), Logger: slog.New(slog.NewTextHandler(t.Output(), nil))}
	if img := os.Getenv("SHOAL_DOCKER_IMAGE"); img != "" {
		opts.Image, opts.ModuleRoot = img, ""
	}
	dc, err := StartDocker(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			dumpDockerLogs(t, dc)
		}
		if err := dc.Close(); err != nil {
			t.Errorf("close: %v", err)
		}
	})
	return dc
}
