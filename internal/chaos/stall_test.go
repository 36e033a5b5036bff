//go:build chaos

package chaos

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/client"
	"github.com/shoaldb/shoal/internal/keys"
	tc "github.com/shoaldb/shoal/internal/testcluster"
)

// TestDiskStallProcess runs real processes, one node's data directory on
// its own ext4 filesystem (a loop device), and freezes that filesystem
// (fsfreeze) under writes: the node's writes hang as on a disk that stopped
// answering. Once it has hung for --max-disk-stall (checked every 2 s) the
// node must log the stall and stop heartbeating, so the master counts it down, the shards take writes
// without it, and once the disk answers again the process exits with status
// 1 instead of carrying on.
func TestDiskStallProcess(t *testing.T) {
	requireRoot(t)
	for _, tool := range []string{"mkfs.ext4", "fsfreeze", "mount", "umount"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Fatalf("needs %s (e2fsprogs, util-linux)", tool)
		}
	}
	bin := buildShoal(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dir := t.TempDir()
	mnt := filepath.Join(dir, "n1")
	img := filepath.Join(dir, "n1.img")
	run := func(name string, args ...string) error {
		out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, out)
		}
		return nil
	}
	if err := os.MkdirAll(mnt, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := run("truncate", "-s", "256M", img); err != nil {
		t.Fatal(err)
	}
	if err := run("mkfs.ext4", "-q", "-F", img); err != nil {
		t.Fatal(err)
	}
	if err := run("mount", "-o", "loop", img, mnt); err != nil {
		t.Skipf("cannot loop-mount a filesystem here: %v", err)
	}
	t.Cleanup(func() { _ = exec.Command("umount", "-l", mnt).Run() })

	subnet := "127.0.93"
	cl, err := StartProc(ctx, ProcOptions{Bin: bin, Dir: dir, Logger: logger(t), Subnet: subnet, Chain: "SHOAL-STALL",
		Masters: 1, Nodes: 3, Shards: 8, Replicas: 3, NodeDownAfter: 2 * time.Second,
		// Only n1's limit is short: the others keep the default, so that a
		// slow sync on the machine's own disk cannot fail them.
		NodeArgs: func(name string) []string {
			if name == "n1" {
				return []string{"--max-disk-stall", "2s"}
			}
			return nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	frozen := false
	t.Cleanup(func() { closeProc(t, cl, dir, 20) })
	// Runs before Close: a process waiting on a frozen filesystem cannot
	// be killed until it thaws.
	t.Cleanup(func() {
		if frozen {
			_ = exec.Command("fsfreeze", "-u", mnt).Run()
		}
	})
	if err := WaitReady(ctx, cl); err != nil {
		t.Fatal(err)
	}
	c, err := client.Open(ctx, cl.MasterAddrs())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	put := func(k string) error {
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		_, err := c.Put(pctx, []byte(k), []byte("v"))
		return err
	}
	// A key on each shard, every one writable before the stall.
	var shardKeys []string
	seen := map[uint16]bool{}
	for i := 0; len(shardKeys) < 8; i++ {
		k := fmt.Sprintf("stall-%d", i)
		if s := keys.Slot([]byte(k)) / (keys.SlotCount / 8); !seen[s] {
			seen[s] = true
			shardKeys = append(shardKeys, k)
		}
	}
	for _, k := range shardKeys {
		if err := tc.WaitFor(ctx, func() error { return put(k) }); err != nil {
			t.Fatal(err)
		}
	}

	if err := run("fsfreeze", "-f", mnt); err != nil {
		t.Fatal(err)
	}
	frozen = true
	frozenAt := time.Now()
	// Every shard has a replica on n1: these writes make it write.
	go func() {
		for _, k := range shardKeys {
			_ = put(k)
		}
	}()
	logPath := filepath.Join(dir, "n1.log")
	if err := tc.WaitFor(ctx, func() error {
		b, err := os.ReadFile(logPath)
		if err != nil {
			return err
		}
		if !strings.Contains(string(b), "disk stalled") {
			return errors.New("n1 has not logged a stalled disk")
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("n1 reported its stalled disk %v after the freeze", time.Since(frozenAt).Round(100*time.Millisecond))

	// The master counts it down: it heartbeats no more.
	masters, err := client.DialMasters(cl.MasterAddrs())
	if err != nil {
		t.Fatal(err)
	}
	defer masters.Close()
	o := &observer{cl: cl, masters: masters}
	if err := tc.WaitFor(ctx, func() error {
		st, err := o.state(ctx)
		if err != nil {
			return err
		}
		id, ok := o.nodeIDs(st)["n1"]
		if !ok {
			return errors.New("n1 not registered")
		}
		for _, n := range st.GetNodes() {
			if n.GetId() == id && n.GetState() != shoalpb.NodeState_NODE_STATE_DOWN {
				return fmt.Errorf("n1 is %v", n.GetState())
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	// Every shard takes writes without it.
	for _, k := range shardKeys {
		if err := tc.WaitFor(ctx, func() error { return put(k) }); err != nil {
			t.Fatalf("%s after n1 stalled: %v", k, err)
		}
	}

	// Thawed, the disk answers again; the node had given up, and exits.
	if err := run("fsfreeze", "-u", mnt); err != nil {
		t.Fatal(err)
	}
	frozen = false
	var exitErr error
	if err := tc.WaitFor(ctx, func() error {
		exited, err := cl.Exited("n1")
		if !exited {
			return errors.New("n1 still runs after its disk thawed")
		}
		exitErr = err
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	var ee *exec.ExitError
	if !errors.As(exitErr, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("n1 exited with %v, want status 1", exitErr)
	}
	b, err := os.ReadFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(b), "node failed: storage: disk stalled") {
		t.Fatalf("n1's log does not end with the reason it exited:\n%s", b[max(0, len(b)-2000):])
	}
}
