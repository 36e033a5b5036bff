package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/shoaldb/shoal/internal/keys"
	"github.com/shoaldb/shoal/internal/resp"
	tc "github.com/shoaldb/shoal/internal/testcluster"
)

// scriptedNode is a Redis Cluster node for testing how RESPCluster reacts
// to what a node answers (redirections, error replies, AUTH), which a real
// cluster does not produce on demand. reply answers one command on a
// connection (asking is whether ASKING came just before); it runs under
// the node's lock.
type scriptedNode struct {
	ln    net.Listener
	addr  string
	mu    sync.Mutex
	reply func(args []string, asking bool) string
	// seen counts the commands received, by "NAME key" (or "NAME").
	seen map[string]int
}

func newScriptedNode(t *testing.T) *scriptedNode {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	n := &scriptedNode{ln: ln, addr: ln.Addr().String(), seen: map[string]int{}}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns []net.Conn
	)
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, nc := range conns {
			nc.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			nc, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, nc)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				n.serve(nc)
			}()
		}
	}()
	return n
}

func (n *scriptedNode) serve(nc net.Conn) {
	rd := resp.NewReader(nc)
	asking := false
	for {
		raw, err := rd.ReadCommand(resp.Limits{})
		if err != nil {
			return
		}
		args := make([]string, len(raw))
		for i, a := range raw {
			args[i] = string(a)
		}
		args[0] = strings.ToUpper(args[0])
		n.mu.Lock()
		name := args[0]
		if len(args) > 1 && name != "CLUSTER" && name != "AUTH" {
			name += " " + args[1]
		}
		n.seen[name]++
		out := "+OK\r\n"
		if args[0] != "ASKING" {
			out = n.reply(args, asking)
		}
		n.mu.Unlock()
		asking = args[0] == "ASKING"
		if _, err := nc.Write([]byte(out)); err != nil {
			return
		}
	}
}

func (n *scriptedNode) count(name string) int {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.seen[name]
}

// slotsReply is CLUSTER SLOTS' reply giving every slot to addr but those
// in except, which go to the address named there.
func slotsReply(addr string, except map[uint16]string) string {
	type rng struct {
		start, end int
		addr       string
	}
	var rs []rng
	for s := 0; s < keys.SlotCount; s++ {
		a := addr
		if e, ok := except[uint16(s)]; ok {
			a = e
		}
		if len(rs) > 0 && rs[len(rs)-1].addr == a {
			rs[len(rs)-1].end = s
			continue
		}
		rs = append(rs, rng{s, s, a})
	}
	var b strings.Builder
	fmt.Fprintf(&b, "*%d\r\n", len(rs))
	for _, r := range rs {
		host, port, _ := net.SplitHostPort(r.addr)
		fmt.Fprintf(&b, "*3\r\n:%d\r\n:%d\r\n*3\r\n$%d\r\n%s\r\n:%s\r\n$2\r\nid\r\n", r.start, r.end, len(host), host, port)
	}
	return b.String()
}

func bulk(s string) string { return fmt.Sprintf("$%d\r\n%s\r\n", len(s), s) }

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestRESPClusterRedirections(t *testing.T) {
	a, b := newScriptedNode(t), newScriptedNode(t)
	moved := "moved-key"
	asked := "asked-key"
	movedSlot, askedSlot := keys.Slot([]byte(moved)), keys.Slot([]byte(asked))
	// a holds every slot but moved-key's, which went to b (after the first
	// CLUSTER SLOTS, which still gives it to a), and asked-key's, which is
	// migrating to b (ASK). b serves asked-key only after ASKING.
	slotsAsked := 0
	a.reply = func(args []string, _ bool) string {
		switch {
		case args[0] == "CLUSTER":
			if slotsAsked++; slotsAsked == 1 {
				return slotsReply(a.addr, nil)
			}
			return slotsReply(a.addr, map[uint16]string{movedSlot: b.addr})
		case len(args) > 1 && args[1] == moved:
			return fmt.Sprintf("-MOVED %d %s\r\n", movedSlot, b.addr)
		case len(args) > 1 && args[1] == asked:
			return fmt.Sprintf("-ASK %d %s\r\n", askedSlot, b.addr)
		case args[0] == "GET":
			return bulk("a")
		case args[0] == "SET" && args[2] == "fail":
			return "-ERR boom\r\n"
		}
		return "+OK\r\n"
	}
	b.reply = func(args []string, asking bool) string {
		switch {
		case args[0] == "CLUSTER":
			return slotsReply(a.addr, map[uint16]string{movedSlot: b.addr})
		case len(args) > 1 && args[1] == asked && !asking:
			return fmt.Sprintf("-MOVED %d %s\r\n", askedSlot, a.addr)
		case args[0] == "GET":
			return bulk("b")
		}
		return "+OK\r\n"
	}
	ctx := testCtx(t)
	c, err := NewRESPCluster(ctx, RESPOptions{Addrs: []string{a.addr}})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()

	// MOVED: followed, and the slot now goes straight to b.
	for range 3 {
		if err := c.Get(ctx, []byte(moved)); err != nil {
			t.Fatalf("GET %s: %v", moved, err)
		}
	}
	if got := a.count("GET " + moved); got != 1 {
		t.Fatalf("a saw GET %s %d times; want once, then the slot map goes to b", moved, got)
	}
	if got := b.count("GET " + moved); got != 3 {
		t.Fatalf("b saw GET %s %d times, want 3", moved, got)
	}

	// ASK: followed with ASKING, and the slot map keeps a.
	for range 2 {
		if err := c.Put(ctx, []byte(asked), []byte("v")); err != nil {
			t.Fatalf("SET %s: %v", asked, err)
		}
	}
	if a.count("SET "+asked) != 2 || b.count("SET "+asked) != 2 || b.count("ASKING") != 2 {
		t.Fatalf("SET %s: a saw %d, b %d after %d ASKING; want 2, 2, 2", asked, a.count("SET "+asked), b.count("SET "+asked), b.count("ASKING"))
	}

	// An error reply fails the operation, and the connection stays usable.
	if err := c.Put(ctx, []byte("k"), []byte("fail")); err == nil || !strings.Contains(err.Error(), "ERR boom") {
		t.Fatalf("SET with an error reply: %v", err)
	}
	if err := c.Get(ctx, []byte("k")); err != nil {
		t.Fatalf("GET after an error reply: %v", err)
	}

	// A pipeline: the redirected operations are sent again, the failed one
	// fails alone.
	ops := []Op{{Read: true, Key: []byte("k1")}, {Key: []byte(moved), Value: []byte("v")},
		{Key: []byte("k2"), Value: []byte("fail")}, {Read: true, Key: []byte(asked)}, {Key: []byte("k3"), Value: []byte("v")}}
	if err := c.Pipeline(ctx, ops); err != nil {
		t.Fatal(err)
	}
	for i, op := range ops {
		if wantErr := i == 2; (op.Err != nil) != wantErr {
			t.Fatalf("pipeline op %d (%s): %v", i, op.Key, op.Err)
		}
	}
	if b.count("SET "+moved) != 1 || b.count("GET "+asked) != 1 {
		t.Fatalf("b saw SET %s %d times, GET %s %d times; want 1, 1", moved, b.count("SET "+moved), asked, b.count("GET "+asked))
	}
	// MOVED once, ASK twice, then ASK in the pipeline and again when the
	// operation was sent alone.
	if got := c.Redirects(); got != 5 {
		t.Fatalf("%d redirections followed, want 5", got)
	}
}

func TestParseRedirect(t *testing.T) {
	for _, tt := range []struct {
		msg, kind, addr string
		ok              bool
	}{
		{"MOVED 3999 127.0.0.2:6381", "MOVED", "127.0.0.2:6381", true},
		{"ASK 3999 127.0.0.2:6381", "ASK", "127.0.0.2:6381", true},
		{"MOVED 3999 :6381", "MOVED", "127.0.0.9:6381", true}, // unknown endpoint: the replying node's host
		{"MOVED 3999", "", "", false},
		{"ERR MOVED 1 2", "", "", false},
	} {
		kind, addr, ok := parseRedirect(tt.msg, "127.0.0.9:6380")
		if kind != tt.kind || addr != tt.addr || ok != tt.ok {
			t.Errorf("parseRedirect(%q) = %q, %q, %v; want %q, %q, %v", tt.msg, kind, addr, ok, tt.kind, tt.addr, tt.ok)
		}
	}
}

func TestRESPClusterRedirectLoop(t *testing.T) {
	a, b := newScriptedNode(t), newScriptedNode(t)
	a.reply = func(args []string, _ bool) string {
		if args[0] == "CLUSTER" {
			return slotsReply(a.addr, nil)
		}
		return fmt.Sprintf("-MOVED %d %s\r\n", keys.Slot([]byte(args[1])), b.addr)
	}
	b.reply = func(args []string, _ bool) string {
		return fmt.Sprintf("-MOVED %d %s\r\n", keys.Slot([]byte(args[1])), a.addr)
	}
	ctx := testCtx(t)
	c, err := NewRESPCluster(ctx, RESPOptions{Addrs: []string{a.addr}, MaxRedirects: 3})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Get(ctx, []byte("k")); !errors.Is(err, ErrRedirects) {
		t.Fatalf("GET bounced between two nodes: %v, want ErrRedirects", err)
	}
	if n := a.count("GET k") + b.count("GET k"); n != 4 {
		t.Fatalf("GET sent %d times; want 4 (the first and 3 redirections)", n)
	}
}

func TestRESPClusterAuth(t *testing.T) {
	a := newScriptedNode(t)
	a.reply = func(args []string, _ bool) string {
		switch args[0] {
		case "AUTH":
			if args[1] != "secret" {
				return "-WRONGPASS invalid username-password pair\r\n"
			}
			return "+OK\r\n"
		case "CLUSTER":
			return slotsReply(a.addr, nil)
		}
		return bulk("v")
	}
	ctx := testCtx(t)
	if _, err := NewRESPCluster(ctx, RESPOptions{Addrs: []string{a.addr}, Password: "wrong"}); err == nil || !strings.Contains(err.Error(), "WRONGPASS") {
		t.Fatalf("wrong password: %v", err)
	}
	c, err := NewRESPCluster(ctx, RESPOptions{Addrs: []string{a.addr}, Password: "secret"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Get(ctx, []byte("k")); err != nil {
		t.Fatal(err)
	}
}

func TestRESPClusterNoNode(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	if _, err := NewRESPCluster(testCtx(t), RESPOptions{Addrs: []string{addr}, DialTimeout: time.Second}); err == nil || !strings.Contains(err.Error(), "CLUSTER SLOTS") {
		t.Fatalf("no node listening: %v", err)
	}
}

// TestRESPClusterOnShoal drives a real Shoal cluster's Redis front end
// with a slot map in which every slot names a node that does not lead it:
// commands are redirected by real MOVED replies, and every value written
// reads back.
func TestRESPClusterOnShoal(t *testing.T) {
	c := tc.Start(t, tc.Options{Masters: 1, Nodes: 3, Replicas: 3, Shards: 8, RESP: true})
	ctx := testCtx(t)
	if err := c.WaitPlaced(ctx); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitForLeaders(ctx); err != nil {
		t.Fatal(err)
	}
	var addrs []string
	for _, n := range c.Nodes {
		addrs = append(addrs, n.RESPAddr)
	}
	rc, err := NewRESPCluster(ctx, RESPOptions{Addrs: addrs})
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	// Every node must be the master of some slots before the map is
	// scrambled, or the scramble could leave slots right.
	if err := tc.WaitFor(ctx, func() error {
		if err := rc.reload(ctx); err != nil {
			return err
		}
		masters := map[*respNode]bool{}
		for _, n := range rc.slots {
			if n == nil {
				return errors.New("a slot has no master")
			}
			masters[n] = true
		}
		if len(masters) != len(addrs) {
			return fmt.Errorf("%d masters", len(masters))
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	scramble := func() {
		rc.mu.Lock()
		defer rc.mu.Unlock()
		for s, n := range rc.slots {
			for _, a := range addrs {
				if a != n.addr {
					rc.slots[s] = rc.nodes[a]
					break
				}
			}
		}
		// No background reload to put it right meanwhile.
		rc.lastReload.Store(time.Now().Add(time.Hour).UnixNano())
	}
	scramble()
	const n = 200
	key := func(i int) []byte { return []byte("resp-bench-" + strconv.Itoa(i)) }
	for i := range n {
		if err := rc.Put(ctx, key(i), []byte("v"+strconv.Itoa(i))); err != nil {
			t.Fatalf("SET %s: %v", key(i), err)
		}
	}
	afterSets := rc.Redirects()
	if afterSets == 0 {
		t.Fatal("the writes followed no redirection")
	}
	scramble()
	ops := make([]Op, n)
	for i := range ops {
		ops[i] = Op{Read: true, Key: key(i)}
	}
	if err := rc.Pipeline(ctx, ops); err != nil {
		t.Fatal(err)
	}
	for _, op := range ops {
		if op.Err != nil {
			t.Fatalf("pipelined GET %s: %v", op.Key, op.Err)
		}
	}
	// Leaders may still move (the master balances them), so a scrambled
	// slot can turn out right: each phase must have been redirected, not
	// every command of it.
	if got := rc.Redirects(); got <= afterSets {
		t.Fatalf("the pipelined reads followed no redirection (%d before, %d after)", afterSets, got)
	}
	// The values, read back by a full client.
	gr := redis.NewClusterClient(&redis.ClusterOptions{Addrs: addrs})
	defer gr.Close()
	for i := range n {
		if v, err := gr.Get(ctx, string(key(i))).Result(); err != nil || v != "v"+strconv.Itoa(i) {
			t.Fatalf("GET %s read back %q, %v", key(i), v, err)
		}
	}
}
