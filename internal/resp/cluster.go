package resp

import (
	"crypto/sha1"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/internal/keys"
)

// table returns the command table; it is read-only once built.
func (s *Server) table() map[string]*command {
	s.tableOnce.Do(func() { s.cmds = commandTable() })
	return s.cmds
}

// RedisID returns the stable 40-hex Redis Cluster node ID of a Shoal node.
func RedisID(clusterID string, node uint64) string {
	h := sha1.Sum([]byte(fmt.Sprintf("%s/%d", clusterID, node)))
	return hex.EncodeToString(h[:])
}

// leaderAddr returns the RESP address to send a key of slot to: the node
// the error named, or the leader the topology knows; never this node's own
// (a stale route table can name it), "" when there is none.
func (s *Server) leaderAddr(slot uint16, leader uint64) string {
	t := s.backend.Topology()
	if leader != 0 && leader != t.Self {
		if n, ok := t.Nodes[leader]; ok && n.RESPAddr != "" {
			return n.RESPAddr
		}
	}
	for _, sh := range t.Shards {
		if uint32(slot) >= sh.Start && uint32(slot) < sh.End && sh.Leader != 0 && sh.Leader != t.Self {
			return t.Nodes[sh.Leader].RESPAddr
		}
	}
	return ""
}

func splitAddr(addr string) (string, int) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr, 0
	}
	p, _ := strconv.Atoi(port)
	return host, p
}

func cmdCluster(c *conn, a [][]byte) {
	t := c.s.backend.Topology()
	switch sub := strings.ToLower(string(a[1])); sub {
	case "keyslot":
		if len(a) != 3 {
			c.wr.Error(wrongArgs("cluster|keyslot"))
			return
		}
		c.wr.Int(int64(keys.Slot(a[2])))
	case "myid":
		c.wr.BulkString(RedisID(t.ClusterID, t.Self))
	case "slots":
		clusterSlots(c, t)
	case "shards":
		clusterShards(c, t)
	case "nodes":
		c.wr.BulkString(clusterNodes(t))
	case "info":
		c.wr.Verbatim(clusterInfo(t))
	case "countkeysinslot", "getkeysinslot":
		slotKeys(c, a, sub == "countkeysinslot")
	default:
		c.wr.Error(fmt.Sprintf("ERR unknown subcommand '%s'. Try CLUSTER HELP.", truncate(a[1], 128)))
	}
}

// shardNodes returns the shard's master (its leader, or its first replica
// while it has none) and the others.
func shardNodes(sh ShardInfo) (master uint64, replicas []uint64) {
	master = sh.Leader
	for _, f := range sh.Followers {
		if master == 0 {
			master = f
			continue
		}
		if f != master {
			replicas = append(replicas, f)
		}
	}
	return master, replicas
}

func (c *conn) writeNode(t Topology, id uint64) {
	host, port := splitAddr(t.Nodes[id].RESPAddr)
	c.wr.Array(3)
	c.wr.BulkString(host)
	c.wr.Int(int64(port))
	c.wr.BulkString(RedisID(t.ClusterID, id))
}

func clusterSlots(c *conn, t Topology) {
	c.wr.Array(len(t.Shards))
	for _, sh := range t.Shards {
		master, replicas := shardNodes(sh)
		var live []uint64
		for _, r := range replicas {
			if t.Nodes[r].Up {
				live = append(live, r)
			}
		}
		c.wr.Array(3 + len(live))
		c.wr.Int(int64(sh.Start))
		c.wr.Int(int64(sh.End - 1))
		c.writeNode(t, master)
		for _, r := range live {
			c.writeNode(t, r)
		}
	}
}

func clusterShards(c *conn, t Topology) {
	c.wr.Array(len(t.Shards))
	for _, sh := range t.Shards {
		master, replicas := shardNodes(sh)
		c.wr.Map(2)
		c.wr.BulkString("slots")
		c.wr.Array(2)
		c.wr.Int(int64(sh.Start))
		c.wr.Int(int64(sh.End - 1))
		c.wr.BulkString("nodes")
		nodes := append([]uint64{master}, replicas...)
		c.wr.Array(len(nodes))
		for i, id := range nodes {
			n := t.Nodes[id]
			host, port := splitAddr(n.RESPAddr)
			role, health := "replica", "online"
			if i == 0 {
				role = "master"
			}
			if !n.Up {
				health = "failed"
			}
			c.wr.Map(7)
			for _, kv := range [][2]string{{"id", RedisID(t.ClusterID, id)}, {"ip", host}, {"endpoint", host}, {"role", role}, {"health", health}} {
				c.wr.BulkString(kv[0])
				c.wr.BulkString(kv[1])
			}
			c.wr.BulkString("port")
			c.wr.Int(int64(port))
			c.wr.BulkString("replication-offset")
			c.wr.Int(0)
		}
	}
}

// clusterNodes lists every node as a master with the slot ranges it leads:
// a Shoal node leads some shards and follows others, which Redis's format
// cannot say, and clients need the masters.
func clusterNodes(t Topology) string {
	led := map[uint64][]string{}
	for _, sh := range t.Shards {
		if sh.Leader == 0 {
			continue
		}
		r := strconv.Itoa(int(sh.Start))
		if sh.End-sh.Start > 1 {
			r += "-" + strconv.Itoa(int(sh.End-1))
		}
		led[sh.Leader] = append(led[sh.Leader], r)
	}
	ids := make([]uint64, 0, len(t.Nodes))
	for id := range t.Nodes {
		ids = append(ids, id)
	}
	sort.Slice(ids, func(i, j int) bool { return ids[i] < ids[j] })
	var b strings.Builder
	for _, id := range ids {
		n := t.Nodes[id]
		host, port := splitAddr(n.RESPAddr)
		flags := "master"
		if id == t.Self {
			flags = "myself,master"
		}
		if !n.Up {
			flags += ",fail"
		}
		link := "connected"
		if !n.Up {
			link = "disconnected"
		}
		fmt.Fprintf(&b, "%s %s:%d@%d %s - 0 0 %d %s", RedisID(t.ClusterID, id), host, port, port+10000, flags, t.Epoch, link)
		for _, r := range led[id] {
			b.WriteString(" " + r)
		}
		b.WriteString("\n")
	}
	return b.String()
}

func clusterInfo(t Topology) string {
	ok, masters := 0, map[uint64]bool{}
	for _, sh := range t.Shards {
		if sh.Leader != 0 {
			ok += int(sh.End - sh.Start)
			masters[sh.Leader] = true
		}
	}
	state := "ok"
	if ok < keys.SlotCount {
		state = "fail"
	}
	lines := []string{
		"cluster_state:" + state,
		"cluster_slots_assigned:" + strconv.Itoa(keys.SlotCount),
		"cluster_slots_ok:" + strconv.Itoa(ok),
		"cluster_slots_pfail:0",
		"cluster_slots_fail:" + strconv.Itoa(keys.SlotCount-ok),
		"cluster_known_nodes:" + strconv.Itoa(len(t.Nodes)),
		"cluster_size:" + strconv.Itoa(len(masters)),
		"cluster_current_epoch:" + strconv.FormatUint(t.Epoch, 10),
		"cluster_my_epoch:" + strconv.FormatUint(t.Epoch, 10),
		"cluster_stats_messages_sent:0",
		"cluster_stats_messages_received:0",
		"total_cluster_links_buffer_limit_exceeded:0",
	}
	return strings.Join(lines, "\r\n") + "\r\n"
}

// slotKeys answers COUNTKEYSINSLOT and GETKEYSINSLOT from this node's
// replica of the slot (0 keys when it has none, as Redis does).
func slotKeys(c *conn, a [][]byte, count bool) {
	want := 3
	if !count {
		want = 4
	}
	if len(a) != want {
		c.wr.Error(wrongArgs("cluster|" + strings.ToLower(string(a[1]))))
		return
	}
	slot, err := strconv.Atoi(string(a[2]))
	if err != nil || slot < 0 || slot >= keys.SlotCount {
		c.wr.Error("ERR Invalid slot")
		return
	}
	limit := -1
	if !count {
		if limit, err = strconv.Atoi(string(a[3])); err != nil || limit < 0 {
			c.wr.Error("ERR Invalid number of keys")
			return
		}
	}
	var found [][]byte
	n := 0
	var cursor []byte
	for limit != 0 {
		ctx, cancel := c.ctx()
		resp, err := c.s.backend.Scan(ctx, &shoalpb.ScanRequest{
			Header:    &shoalpb.RequestHeader{Direct: true},
			StartSlot: uint32(slot), EndSlot: uint32(slot) + 1, Cursor: cursor, KeysOnly: true, Limit: 10000,
		})
		cancel()
		if d := shoalpb.DetailOf(err); d.GetCode() == shoalpb.ErrorCode_ERROR_CODE_SHARD_NOT_HERE {
			break
		} else if err != nil {
			c.fail(err)
			return
		}
		for _, k := range resp.Keys {
			if limit >= 0 && len(found) == limit {
				break
			}
			n++
			if !count {
				found = append(found, k)
			}
		}
		if len(resp.Cursor) == 0 || (limit >= 0 && len(found) == limit) {
			break
		}
		cursor = resp.Cursor
	}
	if count {
		c.wr.Int(int64(n))
		return
	}
	c.wr.Array(len(found))
	for _, k := range found {
		c.wr.Bulk(k)
	}
}

// ledShards returns the shards this node leads, in slot order: what a
// Redis master's keyspace commands (SCAN, DBSIZE) cover.
func ledShards(t Topology) []ShardInfo {
	var out []ShardInfo
	for _, sh := range t.Shards {
		if sh.Leader == t.Self {
			out = append(out, sh)
		}
	}
	return out
}

func cmdDBSize(c *conn, _ [][]byte) {
	t := c.s.backend.Topology()
	total := int64(0)
	for _, sh := range ledShards(t) {
		var cursor []byte
		for {
			ctx, cancel := c.ctx()
			resp, err := c.s.backend.Scan(ctx, &shoalpb.ScanRequest{
				Header:    &shoalpb.RequestHeader{Direct: true},
				StartSlot: sh.Start, EndSlot: sh.End, Cursor: cursor, KeysOnly: true, Limit: 10000,
			})
			cancel()
			if err != nil {
				c.fail(err)
				return
			}
			total += int64(len(resp.Keys))
			if len(resp.Cursor) == 0 {
				break
			}
			cursor = resp.Cursor
		}
	}
	c.wr.Int(total)
}

// cursorCache keeps SCAN positions: Redis cursors are numbers, a position
// in Shoal is a slot and a key, so the number names a remembered position.
type cursorCache struct {
	mu    sync.Mutex
	max   int
	ttl   time.Duration
	next  uint64
	items map[uint64]scanPos
}

type scanPos struct {
	slot   uint32
	cursor []byte
	at     time.Time
}

func newCursorCache(max int, ttl time.Duration) *cursorCache {
	return &cursorCache{max: max, ttl: ttl, items: map[uint64]scanPos{}}
}

// put remembers p under a new number. When full, it forgets the expired
// positions and, if still full, the oldest (lowest number).
func (cc *cursorCache) put(p scanPos) uint64 {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	p.at = time.Now()
	if len(cc.items) >= cc.max {
		oldest := uint64(0)
		for id, it := range cc.items {
			if time.Since(it.at) > cc.ttl {
				delete(cc.items, id)
			} else if oldest == 0 || id < oldest {
				oldest = id
			}
		}
		if len(cc.items) >= cc.max {
			delete(cc.items, oldest)
		}
	}
	cc.next++
	cc.items[cc.next] = p
	return cc.next
}

// get returns the position numbered id. It stays until its command has
// answered (drop): a command that fails (TRYAGAIN during an election) can
// be sent again with the same cursor.
func (cc *cursorCache) get(id uint64) (scanPos, bool) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	p, ok := cc.items[id]
	if ok && time.Since(p.at) > cc.ttl {
		delete(cc.items, id)
		return scanPos{}, false
	}
	return p, ok
}

// drop forgets the position numbered id, once a command went past it.
func (cc *cursorCache) drop(id uint64) {
	cc.mu.Lock()
	defer cc.mu.Unlock()
	delete(cc.items, id)
}

func cmdScan(c *conn, a [][]byte) {
	id, err := strconv.ParseUint(string(a[1]), 10, 64)
	if err != nil {
		c.wr.Error("ERR invalid cursor")
		return
	}
	count, match, typ := 10, "", ""
	for i := 2; i < len(a); i += 2 {
		if i+1 >= len(a) {
			c.wr.Error(errSyntax)
			return
		}
		switch strings.ToLower(string(a[i])) {
		case "count":
			if count, err = strconv.Atoi(string(a[i+1])); err != nil {
				c.wr.Error(errNotInt)
				return
			}
			if count < 1 {
				c.wr.Error(errSyntax)
				return
			}
		case "match":
			match = string(a[i+1])
		case "type":
			typ = strings.ToLower(string(a[i+1]))
		default:
			c.wr.Error(errSyntax)
			return
		}
	}
	pos := scanPos{}
	if id != 0 {
		var ok bool
		if pos, ok = c.s.cursors.get(id); !ok {
			c.wr.Error("ERR invalid cursor")
			return
		}
	}
	var out [][]byte
	shards := ledShards(c.s.backend.Topology())
	done := true
	for i, sh := range shards {
		if sh.End <= pos.slot {
			continue
		}
		start := max(sh.Start, pos.slot)
		ctx, cancel := c.ctx()
		resp, err := c.s.backend.Scan(ctx, &shoalpb.ScanRequest{
			Header:    &shoalpb.RequestHeader{Direct: true},
			StartSlot: start, EndSlot: sh.End, Cursor: pos.cursor, KeysOnly: true, Limit: uint32(count),
		})
		cancel()
		if err != nil {
			c.fail(err)
			return
		}
		for _, k := range resp.Keys {
			if (match == "" || globMatch(match, string(k))) && (typ == "" || typ == "string") {
				out = append(out, k)
			}
		}
		if len(resp.Cursor) > 0 {
			pos = scanPos{slot: start, cursor: resp.Cursor}
			done = false
			break
		}
		pos = scanPos{slot: sh.End}
		if len(out) >= count {
			done = i == len(shards)-1
			break
		}
	}
	next := uint64(0)
	if !done {
		next = c.s.cursors.put(pos)
	}
	if id != 0 {
		c.s.cursors.drop(id)
	}
	c.wr.Array(2)
	c.wr.BulkString(strconv.FormatUint(next, 10))
	c.wr.Array(len(out))
	for _, k := range out {
		c.wr.Bulk(k)
	}
}

func cmdInfo(c *conn, a [][]byte) {
	section := "default"
	if len(a) > 1 {
		section = strings.ToLower(string(a[1]))
	}
	all := section == "all" || section == "everything" || section == "default"
	var b strings.Builder
	add := func(name string, lines ...string) {
		if !all && section != name {
			return
		}
		if b.Len() > 0 {
			b.WriteString("\r\n")
		}
		b.WriteString("# " + strings.ToUpper(name[:1]) + name[1:] + "\r\n")
		for _, l := range lines {
			b.WriteString(l + "\r\n")
		}
	}
	t := c.s.backend.Topology()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	c.s.mu.Lock()
	clients := len(c.s.conns)
	c.s.mu.Unlock()
	// The port this node listens on, as Redis reports it, not the one it
	// advertises (they differ behind NAT or a published container port).
	port := 0
	if a, ok := c.nc.LocalAddr().(*net.TCPAddr); ok {
		port = a.Port
	} else {
		_, port = splitAddr(t.Nodes[t.Self].RESPAddr)
	}
	add("server",
		"redis_version:"+redisVersion, "redis_mode:cluster", "server_name:shoal",
		"os:"+runtime.GOOS, "arch_bits:64", "process_id:"+strconv.Itoa(os.Getpid()),
		"run_id:"+RedisID(t.ClusterID, t.Self), "tcp_port:"+strconv.Itoa(port),
		"uptime_in_seconds:"+strconv.Itoa(int(time.Since(c.s.started).Seconds())))
	add("clients", "connected_clients:"+strconv.Itoa(clients))
	add("memory", "used_memory:"+strconv.FormatUint(ms.Alloc, 10))
	add("persistence", "loading:0", "aof_enabled:1", "rdb_changes_since_last_save:0")
	add("stats",
		"total_connections_received:"+strconv.FormatInt(c.s.stats.conns.Load(), 10),
		"total_commands_processed:"+strconv.FormatInt(c.s.stats.commands.Load(), 10),
		"rejected_connections:"+strconv.FormatInt(c.s.stats.rejected.Load(), 10),
		// Shoal's own: commands a connection stopped reading until its
		// client read its replies (Options.MaxReplyBacklog).
		"reply_backlog_waits:"+strconv.FormatInt(c.s.stats.backlogWaits.Load(), 10))
	add("replication", "role:master", "connected_slaves:0")
	add("cluster", "cluster_enabled:1")
	if b.Len() == 0 {
		c.wr.Verbatim("")
		return
	}
	c.wr.Verbatim(b.String())
}

func sortedKeys(m map[string]string) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// globMatch matches Redis glob patterns: * ? [abc] [^a] [a-z] and \x. A
// class without its closing ] runs to the end of the pattern, as in Redis.
//
// It backtracks only to the last *, so it takes O(len(pattern)*len(s))
// steps whatever the pattern: trying every split at every * is exponential
// in the number of stars, and a pattern such as *a*a*a*a*a*a*a*a*a*a*b
// against a long run of a's could hold a connection's goroutine for hours
// (Redis fixed the same in 7.0.10, CVE-2022-36021).
func globMatch(pattern, s string) bool {
	p, i := 0, 0
	star, mark := -1, 0 // where the pattern resumes after the last *, and the byte of s it was tried at
	for i < len(s) {
		if p < len(pattern) && pattern[p] == '*' {
			for p < len(pattern) && pattern[p] == '*' {
				p++
			}
			star, mark = p, i
			continue
		}
		if p < len(pattern) {
			if next, ok := globByte(pattern, p, s[i]); ok {
				p, i = next, i+1
				continue
			}
		}
		if star < 0 {
			return false
		}
		// Let the last * take one more byte and try again from there.
		mark++
		p, i = star, mark
	}
	for p < len(pattern) && pattern[p] == '*' {
		p++
	}
	return p == len(pattern)
}

// globByte matches c against the pattern element at p (anything but *)
// and returns where the next element starts.
func globByte(pattern string, p int, c byte) (int, bool) {
	switch pattern[p] {
	case '?':
		return p + 1, true
	case '\\':
		if p+1 < len(pattern) {
			return p + 2, pattern[p+1] == c
		}
		return p + 1, c == '\\'
	case '[':
		j := p + 1
		neg := j < len(pattern) && pattern[j] == '^'
		if neg {
			j++
		}
		hit := false
		for j < len(pattern) && pattern[j] != ']' {
			switch {
			case pattern[j] == '\\' && j+1 < len(pattern):
				hit = hit || pattern[j+1] == c
				j += 2
			case j+2 < len(pattern) && pattern[j+1] == '-' && pattern[j+2] != ']':
				lo, hi := pattern[j], pattern[j+2]
				if lo > hi {
					lo, hi = hi, lo
				}
				hit = hit || (c >= lo && c <= hi)
				j += 3
			default:
				hit = hit || pattern[j] == c
				j++
			}
		}
		if j < len(pattern) {
			j++ // the closing ]
		}
		return j, hit != neg
	default:
		return p + 1, pattern[p] == c
	}
}
