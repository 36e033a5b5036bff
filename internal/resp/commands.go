package resp

import (
	"bytes"
	"fmt"
	"math"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/internal/keys"
)

// command is one entry of the command table.
type command struct {
	name string
	// arity as Redis counts it (the command name included): n exactly, or
	// at least -n when negative.
	arity int
	// keys extracts the key arguments (nil: keyless command).
	keys func(args [][]byte) [][]byte
	run  func(c *conn, args [][]byte)
	// noAuth commands run before authentication.
	noAuth bool
	// readonly commands only read; COMMAND reports it, and Redis clients
	// route such commands to replicas in read-only mode.
	readonly bool
}

func firstKey(args [][]byte) [][]byte { return args[1:2] }
func allKeys(args [][]byte) [][]byte  { return args[1:] }
func everyOtherKey(args [][]byte) [][]byte {
	var ks [][]byte
	for i := 1; i < len(args); i += 2 {
		ks = append(ks, args[i])
	}
	return ks
}

// commands is built once per server: a table, not mutable state.
func commandTable() map[string]*command {
	cmds := []*command{
		{name: "ping", arity: -1, run: cmdPing, noAuth: false},
		{name: "echo", arity: 2, run: func(c *conn, a [][]byte) { c.wr.Bulk(a[1]) }},
		{name: "auth", arity: -2, run: cmdAuth, noAuth: true},
		{name: "hello", arity: -1, run: cmdHello, noAuth: true},
		{name: "quit", arity: -1, run: func(c *conn, _ [][]byte) { c.wr.OK() }, noAuth: true},
		{name: "select", arity: 2, run: cmdSelect},
		{name: "client", arity: -2, run: cmdClient},
		{name: "command", arity: -1, run: cmdCommand},
		{name: "info", arity: -1, run: cmdInfo},
		{name: "config", arity: -2, run: cmdConfig},
		{name: "readonly", arity: 1, run: func(c *conn, _ [][]byte) { c.readonly = true; c.wr.OK() }},
		{name: "readwrite", arity: 1, run: func(c *conn, _ [][]byte) { c.readonly = false; c.wr.OK() }},
		{name: "asking", arity: 1, run: func(c *conn, _ [][]byte) { c.wr.OK() }},
		{name: "cluster", arity: -2, run: cmdCluster},
		{name: "dbsize", arity: 1, readonly: true, run: cmdDBSize},
		{name: "scan", arity: -2, readonly: true, run: cmdScan},

		{name: "get", arity: 2, readonly: true, keys: firstKey, run: cmdGet},
		{name: "set", arity: -3, keys: firstKey, run: cmdSet},
		{name: "setnx", arity: 3, keys: firstKey, run: cmdSetNX},
		{name: "setex", arity: 4, keys: firstKey, run: func(c *conn, a [][]byte) { cmdSetEx(c, a, time.Second) }},
		{name: "psetex", arity: 4, keys: firstKey, run: func(c *conn, a [][]byte) { cmdSetEx(c, a, time.Millisecond) }},
		{name: "getdel", arity: 2, keys: firstKey, run: cmdGetDel},
		{name: "getex", arity: -2, keys: firstKey, run: cmdGetEx},
		{name: "getrange", arity: 4, readonly: true, keys: firstKey, run: cmdGetRange},
		{name: "substr", arity: 4, readonly: true, keys: firstKey, run: cmdGetRange},
		{name: "strlen", arity: 2, readonly: true, keys: firstKey, run: cmdStrlen},
		{name: "append", arity: 3, keys: firstKey, run: cmdAppend},
		{name: "incr", arity: 2, keys: firstKey, run: func(c *conn, a [][]byte) { c.incr(a[1], 1) }},
		{name: "decr", arity: 2, keys: firstKey, run: func(c *conn, a [][]byte) { c.incr(a[1], -1) }},
		{name: "incrby", arity: 3, keys: firstKey, run: func(c *conn, a [][]byte) { cmdIncrBy(c, a, 1) }},
		{name: "decrby", arity: 3, keys: firstKey, run: func(c *conn, a [][]byte) { cmdIncrBy(c, a, -1) }},
		{name: "incrbyfloat", arity: 3, keys: firstKey, run: cmdIncrByFloat},
		{name: "mget", arity: -2, readonly: true, keys: allKeys, run: cmdMGet},
		{name: "mset", arity: -3, keys: everyOtherKey, run: cmdMSet},
		{name: "del", arity: -2, keys: allKeys, run: cmdDel},
		{name: "unlink", arity: -2, keys: allKeys, run: cmdDel},
		{name: "exists", arity: -2, readonly: true, keys: allKeys, run: cmdExists},
		{name: "expire", arity: -3, keys: firstKey, run: func(c *conn, a [][]byte) { cmdExpire(c, a, time.Second, false) }},
		{name: "pexpire", arity: -3, keys: firstKey, run: func(c *conn, a [][]byte) { cmdExpire(c, a, time.Millisecond, false) }},
		{name: "expireat", arity: -3, keys: firstKey, run: func(c *conn, a [][]byte) { cmdExpire(c, a, time.Second, true) }},
		{name: "pexpireat", arity: -3, keys: firstKey, run: func(c *conn, a [][]byte) { cmdExpire(c, a, time.Millisecond, true) }},
		{name: "persist", arity: 2, keys: firstKey, run: cmdPersist},
		{name: "ttl", arity: 2, readonly: true, keys: firstKey, run: func(c *conn, a [][]byte) { cmdTTL(c, a, time.Second, false) }},
		{name: "pttl", arity: 2, readonly: true, keys: firstKey, run: func(c *conn, a [][]byte) { cmdTTL(c, a, time.Millisecond, false) }},
		{name: "expiretime", arity: 2, readonly: true, keys: firstKey, run: func(c *conn, a [][]byte) { cmdTTL(c, a, time.Second, true) }},
		{name: "pexpiretime", arity: 2, readonly: true, keys: firstKey, run: func(c *conn, a [][]byte) { cmdTTL(c, a, time.Millisecond, true) }},
		{name: "type", arity: 2, readonly: true, keys: firstKey, run: cmdType},
	}
	t := make(map[string]*command, len(cmds))
	for _, c := range cmds {
		t[c.name] = c
	}
	return t
}

// Error replies, worded as Redis words them.
const (
	errSyntax     = "ERR syntax error"
	errNotInt     = "ERR value is not an integer or out of range"
	errOverflow   = "ERR increment or decrement would overflow"
	errTooLarge   = "ERR string exceeds maximum allowed size (proto-max-bulk-len)"
	errCrossSlot  = "CROSSSLOT Keys in request don't hash to the same slot"
	errNoAuth     = "NOAUTH Authentication required."
	errWrongPass  = "WRONGPASS invalid username-password pair or user is disabled."
	errTryAgain   = "TRYAGAIN the shard has no leader right now (an election is in progress), try again"
	errAmbiguous  = "ERR timed out before the write's outcome was known: it may or may not have been applied"
	errUnavailble = "TRYAGAIN the node could not serve the request right now, try again"
	errContended  = "TRYAGAIN other writes changed the key during every attempt, try again"
)

// oneIf is 1 for true: SETNX, EXPIRE and PERSIST answer integers, in
// RESP3 too (Redis 7 does not turn them into booleans).
func oneIf(b bool) int64 {
	if b {
		return 1
	}
	return 0
}

func wrongArgs(name string) string {
	return fmt.Sprintf("ERR wrong number of arguments for '%s' command", name)
}

func unknownCommand(args [][]byte) string {
	var b strings.Builder
	fmt.Fprintf(&b, "ERR unknown command '%s', with args beginning with: ", truncate(args[0], 128))
	for _, a := range args[1:] {
		if b.Len() > 256 {
			break
		}
		fmt.Fprintf(&b, "'%s' ", truncate(a, 128))
	}
	return b.String()
}

func truncate(b []byte, n int) string {
	if len(b) > n {
		b = b[:n]
	}
	return string(b)
}

// resolved is a command looked up and checked before it runs.
type resolved struct {
	cmd *command
	// name is the command's name in lower case ("unknown" for a command
	// the server does not know).
	name string
	// slot is the slot of its keys (keyed commands only).
	slot uint16
	// reject, when set, is the error reply the command gets instead of
	// running: unknown, not authenticated, a wrong arity or CROSSSLOT.
	reject string
}

// resolve looks args up in the command table and checks them.
func (c *conn) resolve(args [][]byte) resolved {
	r := resolved{name: strings.ToLower(string(args[0]))}
	r.cmd = c.s.table()[r.name]
	switch {
	case r.cmd == nil:
		r.name, r.reject = "unknown", unknownCommand(args)
		if !c.authed {
			r.reject = errNoAuth
		}
		return r
	case !c.authed && !r.cmd.noAuth:
		r.reject = errNoAuth
		return r
	case (r.cmd.arity > 0 && len(args) != r.cmd.arity) || (r.cmd.arity < 0 && len(args) < -r.cmd.arity):
		r.reject = wrongArgs(r.name)
		return r
	case r.cmd.keys == nil:
		return r
	}
	ks := r.cmd.keys(args)
	if len(ks) == 0 {
		r.reject = wrongArgs(r.name)
		return r
	}
	r.slot = keys.Slot(ks[0])
	for _, k := range ks[1:] {
		if keys.Slot(k) != r.slot {
			r.reject = errCrossSlot
			return r
		}
	}
	return r
}

// run runs a resolved command on c, or answers why it cannot run.
func (c *conn) run(r resolved, args [][]byte) {
	if r.reject != "" {
		c.wr.Error(r.reject)
		return
	}
	c.slot, c.keyed = r.slot, r.cmd.keys != nil
	r.cmd.run(c, args)
}

// header is the KV request header of this connection's commands. Until
// READONLY, reads too go to the shard's leader (a Redis Cluster replica
// answers them -MOVED); after it a follower serves them, linearizably.
func (c *conn) header() *shoalpb.RequestHeader {
	return &shoalpb.RequestHeader{Direct: !c.s.opts.Proxy, LeaderOnly: !c.readonly}
}

// fail answers a backend error: -MOVED to the leader's node for a key this
// node does not serve, -TRYAGAIN while the shard has no leader, and the
// Redis error for everything else.
func (c *conn) fail(err error) {
	d := shoalpb.DetailOf(err)
	msg := errMessage(err)
	switch d.GetCode() {
	case shoalpb.ErrorCode_ERROR_CODE_NOT_LEADER, shoalpb.ErrorCode_ERROR_CODE_SHARD_NOT_HERE, shoalpb.ErrorCode_ERROR_CODE_EPOCH_MISMATCH:
		if d.Ambiguous {
			// The leader lost its place after the write was in its log
			// (a snapshot replaced it): it may yet be applied. A client
			// sent -MOVED would run it again, twice for an INCR.
			c.wr.Error(errAmbiguous)
			return
		}
		// Only a key's command can be redirected: MOVED names the
		// key's slot, and a client remaps that slot to the node named.
		// A keyless one (SCAN, DBSIZE, ...) that met a shard moving
		// away is asked to try again.
		if addr := c.s.leaderAddr(c.slot, d.GetLeaderId()); addr != "" && c.keyed {
			host, port := splitAddr(addr)
			c.wr.Error(fmt.Sprintf("MOVED %d %s:%d", c.slot, host, port))
			return
		}
		c.wr.Error(errTryAgain)
	case shoalpb.ErrorCode_ERROR_CODE_NO_LEADER, shoalpb.ErrorCode_ERROR_CODE_OVERLOADED:
		c.wr.Error(errTryAgain)
	case shoalpb.ErrorCode_ERROR_CODE_NOT_INTEGER:
		c.wr.Error(errNotInt)
	case shoalpb.ErrorCode_ERROR_CODE_OVERFLOW:
		c.wr.Error(errOverflow)
	case shoalpb.ErrorCode_ERROR_CODE_TOO_LARGE:
		c.wr.Error(errTooLarge)
	case shoalpb.ErrorCode_ERROR_CODE_CROSS_SHARD:
		c.wr.Error(errCrossSlot)
	case shoalpb.ErrorCode_ERROR_CODE_DISK_FULL:
		// "ERR disk full: 12 MiB free, below the reserve of …", without
		// the layers the message went through.
		if i := strings.Index(msg, "disk full"); i >= 0 {
			msg = msg[i:]
		}
		c.wr.Error("ERR " + msg)
	case shoalpb.ErrorCode_ERROR_CODE_TIMEOUT, shoalpb.ErrorCode_ERROR_CODE_UNAVAILABLE:
		if d.Ambiguous {
			c.wr.Error(errAmbiguous)
		} else {
			c.wr.Error(errUnavailble)
		}
	default:
		c.wr.Error("ERR " + msg)
	}
}

func errMessage(err error) string {
	s := err.Error()
	if i := strings.Index(s, "desc = "); i >= 0 {
		s = s[i+len("desc = "):]
	}
	return s
}

func cmdPing(c *conn, a [][]byte) {
	switch len(a) {
	case 1:
		c.wr.Simple("PONG")
	case 2:
		c.wr.Bulk(a[1])
	default:
		c.wr.Error(wrongArgs("ping"))
	}
}

func cmdAuth(c *conn, a [][]byte) {
	if len(a) > 3 {
		c.wr.Error(errSyntax)
		return
	}
	if c.s.opts.Password == "" {
		c.wr.Error("ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?")
		return
	}
	pass := a[len(a)-1]
	if (len(a) == 3 && string(a[1]) != "default") || !c.checkPassword(pass) {
		c.wr.Error(errWrongPass)
		return
	}
	c.authed = true
	c.wr.OK()
}

func cmdHello(c *conn, a [][]byte) {
	proto := c.wr.Proto()
	i := 1
	if len(a) > 1 {
		v, err := strconv.Atoi(string(a[1]))
		if err != nil {
			c.wr.Error("ERR Protocol version is not an integer or out of range")
			return
		}
		if v != 2 && v != 3 {
			c.wr.Error("NOPROTO unsupported protocol version")
			return
		}
		proto, i = v, 2
	}
	// Every option is checked before any takes effect, as Redis does: a
	// HELLO that fails changes nothing.
	var user, pass, name []byte
	for ; i < len(a); i++ {
		opt := strings.ToLower(string(a[i]))
		switch {
		case opt == "auth" && i+2 < len(a):
			user, pass = a[i+1], a[i+2]
			i += 2
		case opt == "setname" && i+1 < len(a):
			name = a[i+1]
			i++
		default:
			c.wr.Error(fmt.Sprintf("ERR Syntax error in HELLO option '%s'", a[i]))
			return
		}
	}
	if name != nil && bytes.ContainsAny(name, " \n") {
		c.wr.Error("ERR Client names cannot contain spaces, newlines or special characters.")
		return
	}
	if user != nil {
		if c.s.opts.Password != "" && (string(user) != "default" || !c.checkPassword(pass)) {
			c.wr.Error(errWrongPass)
			return
		}
		c.authed = true
	}
	if !c.authed {
		c.wr.Error("NOAUTH HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and select the RESP protocol version at the same time")
		return
	}
	if name != nil {
		c.name = string(name)
	}
	c.wr.SetProto(proto)
	c.wr.Map(7)
	c.wr.BulkString("server")
	c.wr.BulkString("redis")
	c.wr.BulkString("version")
	c.wr.BulkString(redisVersion)
	c.wr.BulkString("proto")
	c.wr.Int(int64(proto))
	c.wr.BulkString("id")
	c.wr.Int(c.id)
	c.wr.BulkString("mode")
	c.wr.BulkString("cluster")
	c.wr.BulkString("role")
	c.wr.BulkString("master")
	c.wr.BulkString("modules")
	c.wr.Array(0)
}

// redisVersion is the Redis version Shoal answers as: the command set and
// replies follow Redis 7.2.
const redisVersion = "7.2.0"

func cmdSelect(c *conn, a [][]byte) {
	if string(a[1]) == "0" {
		c.wr.OK()
		return
	}
	if _, err := strconv.Atoi(string(a[1])); err != nil {
		c.wr.Error(errNotInt)
		return
	}
	c.wr.Error("ERR SELECT is not allowed in cluster mode")
}

func cmdClient(c *conn, a [][]byte) {
	switch strings.ToLower(string(a[1])) {
	case "id":
		c.wr.Int(c.id)
	case "setname":
		if len(a) != 3 {
			c.wr.Error(wrongArgs("client|setname"))
			return
		}
		if bytes.ContainsAny(a[2], " \n") {
			c.wr.Error("ERR Client names cannot contain spaces, newlines or special characters.")
			return
		}
		c.name = string(a[2])
		c.wr.OK()
	case "getname":
		if c.name == "" {
			c.wr.Null()
			return
		}
		c.wr.BulkString(c.name)
	case "setinfo":
		if len(a) != 4 {
			c.wr.Error(wrongArgs("client|setinfo"))
			return
		}
		switch strings.ToLower(string(a[2])) {
		case "lib-name":
			c.libName = string(a[3])
		case "lib-ver":
			c.libVer = string(a[3])
		default:
			c.wr.Error(fmt.Sprintf("ERR Unrecognized option '%s'", a[2]))
			return
		}
		c.wr.OK()
	case "info":
		c.wr.BulkString(c.describe() + "\n")
	default:
		c.wr.Error(fmt.Sprintf("ERR unknown subcommand '%s'. Try CLIENT HELP.", truncate(a[1], 128)))
	}
}

func (c *conn) describe() string {
	return fmt.Sprintf("id=%d addr=%s name=%s db=0 resp=%d lib-name=%s lib-ver=%s", c.id, c.nc.RemoteAddr(), c.name, c.wr.Proto(), c.libName, c.libVer)
}

func cmdCommand(c *conn, a [][]byte) {
	table := c.s.table()
	// COMMAND, and COMMAND INFO without names (Redis 7): every command.
	if len(a) == 1 || len(a) == 2 && strings.EqualFold(string(a[1]), "info") {
		names := make([]string, 0, len(table))
		for n := range table {
			names = append(names, n)
		}
		sort.Strings(names)
		c.wr.Array(len(names))
		for _, n := range names {
			c.commandInfo(table[n])
		}
		return
	}
	switch strings.ToLower(string(a[1])) {
	case "count":
		c.wr.Int(int64(len(table)))
	case "docs":
		c.wr.Map(0)
	case "info":
		c.wr.Array(len(a) - 2)
		for _, n := range a[2:] {
			if cmd := table[strings.ToLower(string(n))]; cmd != nil {
				c.commandInfo(cmd)
			} else {
				c.wr.NullArray()
			}
		}
	default:
		c.wr.Error(fmt.Sprintf("ERR unknown subcommand '%s'. Try COMMAND HELP.", truncate(a[1], 128)))
	}
}

// commandInfo writes one COMMAND entry in Redis 6's form: name, arity,
// flags, first key, last key, key step, ACL categories.
func (c *conn) commandInfo(cmd *command) {
	first, last, step := 0, 0, 0
	if cmd.keys != nil {
		// Every keyed command's keys start at argument 1; they run to the end
		// unless the command takes exactly one.
		probe := [][]byte{nil, []byte("a"), []byte("b"), []byte("c"), []byte("d")}
		switch n := len(cmd.keys(probe)); n {
		case 1:
			first, last, step = 1, 1, 1
		case 2:
			first, last, step = 1, -1, 2
		default:
			first, last, step = 1, -1, 1
		}
	}
	flag := "write"
	if cmd.readonly {
		flag = "readonly"
	}
	if cmd.keys == nil {
		flag = "fast"
	}
	c.wr.Array(7)
	c.wr.BulkString(cmd.name)
	c.wr.Int(int64(cmd.arity))
	c.wr.Set(1)
	c.wr.Simple(flag)
	c.wr.Int(int64(first))
	c.wr.Int(int64(last))
	c.wr.Int(int64(step))
	c.wr.Set(0)
}

func cmdConfig(c *conn, a [][]byte) {
	if strings.ToLower(string(a[1])) != "get" || len(a) < 3 {
		c.wr.Error("ERR CONFIG supports only GET here")
		return
	}
	// Answers for what tools ask: Shoal always persists every write.
	known := map[string]string{
		"save": "", "appendonly": "yes", "appendfsync": "always", "cluster-enabled": "yes",
		"databases": "1", "maxmemory": "0", "proto-max-bulk-len": strconv.Itoa(c.s.opts.Limits.MaxBulkBytes),
	}
	var pairs [][2]string
	for _, p := range a[2:] {
		pat := strings.ToLower(string(p))
		for _, k := range sortedKeys(known) {
			if globMatch(pat, k) {
				pairs = append(pairs, [2]string{k, known[k]})
			}
		}
	}
	c.wr.Map(len(pairs))
	for _, p := range pairs {
		c.wr.BulkString(p[0])
		c.wr.BulkString(p[1])
	}
}

// getItem reads one key.
func (c *conn) getItem(key []byte) (*shoalpb.GetResponse, bool) {
	ctx, cancel := c.ctx()
	defer cancel()
	resp, err := c.s.backend.Get(ctx, &shoalpb.GetRequest{Header: c.header(), Key: key})
	if err != nil {
		c.fail(err)
		return nil, false
	}
	return resp, true
}

func cmdGet(c *conn, a [][]byte) {
	resp, ok := c.getItem(a[1])
	if !ok {
		return
	}
	if !resp.Found {
		c.wr.Null()
		return
	}
	c.wr.Bulk(resp.Value)
}

// expiry options shared by SET, GETEX and SETEX.
type expiry struct {
	ttlMs, atMs int64
	keepTTL     bool
	persist     bool
	set         bool
	// opt is the option that set it: "ex", "px", "exat" or "pxat". As in
	// Redis, an option may come again (the last one counts), but two
	// different ones conflict.
	opt string
}

// maxRelativeTTLMs is the longest TTL sent as relative (PutRequest.ttl_ms,
// a time.Duration on the node): about 146 years. Longer ones, which Redis
// accepts, are sent as an absolute time instead.
const maxRelativeTTLMs = math.MaxInt64 / int64(time.Millisecond) / 2

// parseExpiry reads the value of an EX/PX/EXAT/PXAT option. Redis rejects
// values that are not positive or that overflow, also once added to the
// current time, with "invalid expire time".
func parseExpiry(opt string, v []byte, cmd string) (expiry, string) {
	n, err := strconv.ParseInt(string(v), 10, 64)
	if err != nil || !canonicalInt(v) {
		return expiry{}, errNotInt
	}
	invalid := fmt.Sprintf("ERR invalid expire time in '%s' command", cmd)
	if n <= 0 {
		return expiry{}, invalid
	}
	switch opt {
	case "ex", "px":
		ms := n
		if opt == "ex" {
			if n > math.MaxInt64/1000 {
				return expiry{}, invalid
			}
			ms = n * 1000
		}
		now := time.Now().UnixMilli()
		if ms > math.MaxInt64-now {
			return expiry{}, invalid
		}
		if ms > maxRelativeTTLMs {
			return expiry{atMs: now + ms, set: true, opt: opt}, ""
		}
		return expiry{ttlMs: ms, set: true, opt: opt}, ""
	case "exat":
		if n > math.MaxInt64/1000 {
			return expiry{}, invalid
		}
		return expiry{atMs: n * 1000, set: true, opt: opt}, ""
	default: // pxat
		return expiry{atMs: n, set: true, opt: opt}, ""
	}
}

func cmdSet(c *conn, a [][]byte) {
	req := &shoalpb.PutRequest{Header: c.header(), Key: a[1], Value: a[2]}
	var exp expiry
	withGet := false
	for i := 3; i < len(a); i++ {
		opt := strings.ToLower(string(a[i]))
		switch opt {
		case "nx", "xx":
			cond := shoalpb.Condition_CONDITION_NOT_EXISTS
			if opt == "xx" {
				cond = shoalpb.Condition_CONDITION_EXISTS
			}
			if req.Condition != shoalpb.Condition_CONDITION_NONE && req.Condition != cond {
				c.wr.Error(errSyntax)
				return
			}
			req.Condition = cond
		case "get":
			withGet = true
		case "keepttl":
			if exp.set {
				c.wr.Error(errSyntax)
				return
			}
			exp.keepTTL = true
		case "ex", "px", "exat", "pxat":
			if exp.set && exp.opt != opt || exp.keepTTL || i+1 >= len(a) {
				c.wr.Error(errSyntax)
				return
			}
			e, msg := parseExpiry(opt, a[i+1], "set")
			if msg != "" {
				c.wr.Error(msg)
				return
			}
			exp = e
			i++
		default:
			c.wr.Error(errSyntax)
			return
		}
	}
	req.TtlMs, req.ExpireAtMs, req.KeepTtl, req.ReturnOld = exp.ttlMs, exp.atMs, exp.keepTTL, withGet
	ctx, cancel := c.ctx()
	defer cancel()
	resp, err := c.s.backend.Put(ctx, req)
	if err != nil {
		c.fail(err)
		return
	}
	switch {
	case withGet && resp.Found:
		c.wr.Bulk(resp.Old)
	case withGet:
		c.wr.Null()
	case resp.Applied:
		c.wr.OK()
	default:
		c.wr.Null()
	}
}

func cmdSetNX(c *conn, a [][]byte) {
	ctx, cancel := c.ctx()
	defer cancel()
	resp, err := c.s.backend.Put(ctx, &shoalpb.PutRequest{Header: c.header(), Key: a[1], Value: a[2],
		Condition: shoalpb.Condition_CONDITION_NOT_EXISTS})
	if err != nil {
		c.fail(err)
		return
	}
	c.wr.Int(oneIf(resp.Applied))
}

func cmdSetEx(c *conn, a [][]byte, unit time.Duration) {
	opt, name := "ex", "setex"
	if unit == time.Millisecond {
		opt, name = "px", "psetex"
	}
	exp, msg := parseExpiry(opt, a[2], name)
	if msg != "" {
		c.wr.Error(msg)
		return
	}
	ctx, cancel := c.ctx()
	defer cancel()
	if _, err := c.s.backend.Put(ctx, &shoalpb.PutRequest{Header: c.header(), Key: a[1], Value: a[3], TtlMs: exp.ttlMs, ExpireAtMs: exp.atMs}); err != nil {
		c.fail(err)
		return
	}
	c.wr.OK()
}

func cmdGetDel(c *conn, a [][]byte) {
	ctx, cancel := c.ctx()
	defer cancel()
	resp, err := c.s.backend.Delete(ctx, &shoalpb.DeleteRequest{Header: c.header(), Key: a[1], ReturnOld: true})
	if err != nil {
		c.fail(err)
		return
	}
	if !resp.Found {
		c.wr.Null()
		return
	}
	c.wr.Bulk(resp.Old)
}

func cmdGetEx(c *conn, a [][]byte) {
	var exp expiry
	for i := 2; i < len(a); i++ {
		opt := strings.ToLower(string(a[i]))
		switch opt {
		case "persist":
			if exp.set {
				c.wr.Error(errSyntax)
				return
			}
			exp.persist = true
		case "ex", "px", "exat", "pxat":
			if exp.set && exp.opt != opt || exp.persist || i+1 >= len(a) {
				c.wr.Error(errSyntax)
				return
			}
			e, msg := parseExpiry(opt, a[i+1], "getex")
			if msg != "" {
				c.wr.Error(msg)
				return
			}
			exp = e
			i++
		default:
			c.wr.Error(errSyntax)
			return
		}
	}
	if !exp.set && !exp.persist {
		cmdGet(c, a[:2])
		return
	}
	op := &shoalpb.ExpireOp{Key: a[1], ReturnValue: true}
	switch {
	case exp.persist:
		op.ExpireAtMs = 0
	case exp.atMs != 0:
		op.ExpireAtMs = exp.atMs
	default:
		op.ExpireAtMs = time.Now().UnixMilli() + exp.ttlMs
	}
	res, ok := c.batch1(&shoalpb.KVOp{Op: &shoalpb.KVOp_Expire{Expire: op}})
	if !ok {
		return
	}
	if !res.Found {
		c.wr.Null()
		return
	}
	c.wr.Bulk(res.Value)
}

// batch1 runs one op as a batch and returns its result.
func (c *conn) batch1(op *shoalpb.KVOp) (*shoalpb.KVOpResult, bool) {
	ctx, cancel := c.ctx()
	defer cancel()
	resp, err := c.s.backend.Batch(ctx, &shoalpb.BatchRequest{Header: c.header(), Ops: []*shoalpb.KVOp{op}})
	if err != nil {
		c.fail(err)
		return nil, false
	}
	return resp.Results[0], true
}

func cmdGetRange(c *conn, a [][]byte) {
	start, err1 := strconv.ParseInt(string(a[2]), 10, 64)
	end, err2 := strconv.ParseInt(string(a[3]), 10, 64)
	if err1 != nil || err2 != nil {
		c.wr.Error(errNotInt)
		return
	}
	resp, ok := c.getItem(a[1])
	if !ok {
		return
	}
	c.wr.Bulk(substr(resp.Value, start, end))
}

// substr is GETRANGE's slice: negative offsets count from the end, the end
// is inclusive and clamped.
func substr(v []byte, start, end int64) []byte {
	n := int64(len(v))
	if start < 0 && end < 0 && start > end {
		return nil
	}
	if start < 0 {
		start = max(n+start, 0)
	}
	if end < 0 {
		end = max(n+end, 0)
	}
	end = min(end, n-1)
	if n == 0 || start > end {
		return []byte{}
	}
	return v[start : end+1]
}

func cmdStrlen(c *conn, a [][]byte) {
	resp, ok := c.getItem(a[1])
	if !ok {
		return
	}
	c.wr.Int(int64(len(resp.Value)))
}

func cmdAppend(c *conn, a [][]byte) {
	res, ok := c.batch1(&shoalpb.KVOp{Op: &shoalpb.KVOp_Append{Append: &shoalpb.AppendOp{Key: a[1], Value: a[2]}}})
	if !ok {
		return
	}
	c.wr.Int(res.IntValue)
}

func (c *conn) incr(key []byte, delta int64) {
	ctx, cancel := c.ctx()
	defer cancel()
	resp, err := c.s.backend.Incr(ctx, &shoalpb.IncrRequest{Header: c.header(), Key: key, Delta: delta})
	if err != nil {
		c.fail(err)
		return
	}
	c.wr.Int(resp.Value)
}

func cmdIncrBy(c *conn, a [][]byte, sign int64) {
	d, err := strconv.ParseInt(string(a[2]), 10, 64)
	if err != nil || !canonicalInt(a[2]) {
		c.wr.Error(errNotInt)
		return
	}
	if sign < 0 {
		if d == math.MinInt64 {
			c.wr.Error("ERR decrement would overflow")
			return
		}
		d = -d
	}
	c.incr(a[1], d)
}

// canonicalInt reports whether b is written as Redis's string2ll accepts:
// no '+', no leading zeros, no spaces.
func canonicalInt(b []byte) bool {
	s := string(b)
	if s == "0" {
		return true
	}
	s = strings.TrimPrefix(s, "-")
	return len(s) > 0 && s[0] >= '1' && s[0] <= '9'
}

// cmdIncrByFloat adds a float with Redis's arithmetic and formatting (see
// longdouble.go): read, compute, compare-and-set, retried when another
// write got in between. The key keeps its TTL, as in Redis. Every replica
// applies the same bytes.
func cmdIncrByFloat(c *conn, a [][]byte) {
	const (
		notFloat = "ERR value is not a valid float"
		nanOrInf = "ERR increment would produce NaN or Infinity"
	)
	incr, ok := parseLongDouble(a[2])
	if !ok {
		c.wr.Error(notFloat)
		return
	}
	for attempt := 0; attempt < 100; attempt++ {
		resp, ok := c.getItem(a[1])
		if !ok {
			return
		}
		cur := longDouble{f: newLongDouble()}
		if resp.Found {
			if cur, ok = parseLongDouble(resp.Value); !ok {
				c.wr.Error(notFloat)
				return
			}
		}
		sum, ok := addLongDouble(cur, incr)
		if !ok {
			c.wr.Error(nanOrInf)
			return
		}
		op := &shoalpb.CompareAndSetOp{Key: a[1], Value: []byte(sum), ExpireAtMs: resp.ExpireAtMs}
		if resp.Found {
			op.Expected = resp.Value
		} else {
			op.ExpectAbsent = true
		}
		res, ok := c.batch1(&shoalpb.KVOp{Op: &shoalpb.KVOp_CompareAndSet{CompareAndSet: op}})
		if !ok {
			return
		}
		if res.Applied {
			c.wr.BulkString(sum)
			return
		}
	}
	c.wr.Error(errContended)
}

func cmdMGet(c *conn, a [][]byte) {
	ctx, cancel := c.ctx()
	defer cancel()
	resp, err := c.s.backend.MultiGet(ctx, &shoalpb.MultiGetRequest{Header: c.header(), Keys: a[1:]})
	if shoalpb.DetailOf(err).GetCode() == shoalpb.ErrorCode_ERROR_CODE_TOO_LARGE {
		// Not a value over the limit (what TOO_LARGE says otherwise): the
		// answer, "the values answered exceed … bytes".
		msg := errMessage(err)
		if i := strings.Index(msg, "the values answered"); i >= 0 {
			msg = msg[i:]
		}
		c.wr.Error("ERR MGET: " + msg)
		return
	}
	if err != nil {
		c.fail(err)
		return
	}
	c.wr.Array(len(a) - 1)
	for i := range a[1:] {
		if i < len(resp.Found) && resp.Found[i] {
			c.wr.Bulk(resp.Values[i])
		} else {
			c.wr.Null()
		}
	}
}

func cmdMSet(c *conn, a [][]byte) {
	if len(a)%2 != 1 {
		c.wr.Error(wrongArgs("mset"))
		return
	}
	ops := make([]*shoalpb.KVOp, 0, len(a)/2)
	for i := 1; i < len(a); i += 2 {
		ops = append(ops, &shoalpb.KVOp{Op: &shoalpb.KVOp_Put{Put: &shoalpb.PutOp{Key: a[i], Value: a[i+1]}}})
	}
	ctx, cancel := c.ctx()
	defer cancel()
	if _, err := c.s.backend.Batch(ctx, &shoalpb.BatchRequest{Header: c.header(), Ops: ops}); err != nil {
		c.fail(err)
		return
	}
	c.wr.OK()
}

func cmdDel(c *conn, a [][]byte) {
	ops := make([]*shoalpb.KVOp, 0, len(a)-1)
	for _, k := range a[1:] {
		ops = append(ops, &shoalpb.KVOp{Op: &shoalpb.KVOp_Delete{Delete: &shoalpb.DeleteOp{Key: k}}})
	}
	ctx, cancel := c.ctx()
	defer cancel()
	resp, err := c.s.backend.Batch(ctx, &shoalpb.BatchRequest{Header: c.header(), Ops: ops})
	if err != nil {
		c.fail(err)
		return
	}
	n := int64(0)
	for _, r := range resp.Results {
		if r.Found {
			n++
		}
	}
	c.wr.Int(n)
}

func cmdExists(c *conn, a [][]byte) {
	ctx, cancel := c.ctx()
	defer cancel()
	resp, err := c.s.backend.MultiGet(ctx, &shoalpb.MultiGetRequest{Header: c.header(), Keys: a[1:], ExistsOnly: true})
	if err != nil {
		c.fail(err)
		return
	}
	n := int64(0)
	for _, f := range resp.Found {
		if f {
			n++
		}
	}
	c.wr.Int(n)
}

func cmdExpire(c *conn, a [][]byte, unit time.Duration, absolute bool) {
	n, err := strconv.ParseInt(string(a[2]), 10, 64)
	if err != nil || !canonicalInt(a[2]) {
		c.wr.Error(errNotInt)
		return
	}
	name := strings.ToLower(string(a[0]))
	// Options combine as in Redis 7: NX alone, GT or LT, each with XX or
	// not (XX GT is GT: a key without an expiry never passes GT).
	var nx, xx, gt, lt bool
	for _, o := range a[3:] {
		switch strings.ToLower(string(o)) {
		case "nx":
			nx = true
		case "xx":
			xx = true
		case "gt":
			gt = true
		case "lt":
			lt = true
		default:
			c.wr.Error(fmt.Sprintf("ERR Unsupported option %s", o))
			return
		}
	}
	var cond shoalpb.ExpireCondition
	switch {
	case nx && (xx || gt || lt):
		c.wr.Error("ERR NX and XX, GT or LT options at the same time are not compatible")
		return
	case gt && lt:
		c.wr.Error("ERR GT and LT options at the same time are not compatible")
		return
	case nx:
		cond = shoalpb.ExpireCondition_EXPIRE_CONDITION_NO_TTL
	case gt:
		cond = shoalpb.ExpireCondition_EXPIRE_CONDITION_GREATER
	case lt && xx:
		cond = shoalpb.ExpireCondition_EXPIRE_CONDITION_LESS_HAS_TTL
	case lt:
		cond = shoalpb.ExpireCondition_EXPIRE_CONDITION_LESS
	case xx:
		cond = shoalpb.ExpireCondition_EXPIRE_CONDITION_HAS_TTL
	}
	ms := n
	if unit == time.Second {
		if n > math.MaxInt64/1000 || n < math.MinInt64/1000 {
			c.wr.Error(fmt.Sprintf("ERR invalid expire time in '%s' command", name))
			return
		}
		ms = n * 1000
	}
	if !absolute {
		now := time.Now().UnixMilli()
		if ms > math.MaxInt64-now {
			c.wr.Error(fmt.Sprintf("ERR invalid expire time in '%s' command", name))
			return
		}
		ms += now
	}
	if ms <= 0 {
		// In the past: the key is deleted (a time of 0 would mean PERSIST).
		ms = -1
	}
	res, ok := c.batch1(&shoalpb.KVOp{Op: &shoalpb.KVOp_Expire{Expire: &shoalpb.ExpireOp{Key: a[1], ExpireAtMs: ms, Condition: cond}}})
	if !ok {
		return
	}
	c.wr.Int(oneIf(res.Applied))
}

func cmdPersist(c *conn, a [][]byte) {
	res, ok := c.batch1(&shoalpb.KVOp{Op: &shoalpb.KVOp_Expire{Expire: &shoalpb.ExpireOp{Key: a[1]}}})
	if !ok {
		return
	}
	c.wr.Int(oneIf(res.Applied))
}

func cmdTTL(c *conn, a [][]byte, unit time.Duration, absolute bool) {
	resp, ok := c.getItem(a[1])
	if !ok {
		return
	}
	switch {
	case !resp.Found:
		c.wr.Int(-2)
	case resp.ExpireAtMs == 0:
		c.wr.Int(-1)
	case absolute && unit == time.Second:
		c.wr.Int((resp.ExpireAtMs + 500) / 1000)
	case absolute:
		c.wr.Int(resp.ExpireAtMs)
	case unit == time.Second:
		c.wr.Int(max(0, (resp.ExpireAtMs-time.Now().UnixMilli()+500)/1000))
	default:
		c.wr.Int(max(0, resp.ExpireAtMs-time.Now().UnixMilli()))
	}
}

func cmdType(c *conn, a [][]byte) {
	resp, ok := c.getItem(a[1])
	if !ok {
		return
	}
	if resp.Found {
		c.wr.Simple("string")
	} else {
		c.wr.Simple("none")
	}
}
