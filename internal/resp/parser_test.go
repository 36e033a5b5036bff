package resp_test

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"runtime"
	"strings"
	"testing"
	"testing/iotest"
	"time"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/internal/resp"
	tc "github.com/shoaldb/shoal/internal/testcluster"
)

// readAll reads every command in input. Each command is shown as its
// arguments joined by "|" ("<empty>" for an empty command); the error is
// the one that stopped the reading (io.EOF at a clean end).
func readAll(input string, lim resp.Limits) ([]string, error) {
	rd := resp.NewReader(strings.NewReader(input))
	var cmds []string
	for {
		args, err := rd.ReadCommand(lim)
		if err != nil {
			return cmds, err
		}
		if args == nil {
			cmds = append(cmds, "<empty>")
			continue
		}
		parts := make([]string, len(args))
		for i, a := range args {
			parts[i] = string(a)
		}
		cmds = append(cmds, strings.Join(parts, "|"))
	}
}

func TestReadCommand(t *testing.T) {
	for _, tt := range []struct {
		name  string
		input string
		want  []string
	}{
		{"multibulk", "*1\r\n$4\r\nPING\r\n", []string{"PING"}},
		{"multibulk with args", "*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\n", []string{"SET|key|value"}},
		{"empty argument", "*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n", []string{"SET|k|"}},
		{"binary argument with CRLF inside", "*2\r\n$4\r\nECHO\r\n$6\r\na\r\nb\x00\xff\r\n", []string{"ECHO|a\r\nb\x00\xff"}},
		{"empty multibulk", "*0\r\n", []string{"<empty>"}},
		{"negative multibulk is empty, as in Redis", "*-1\r\n*1\r\n$4\r\nPING\r\n", []string{"<empty>", "PING"}},
		{"largest allowed bulk length syntax", "*1\r\n$10\r\n0123456789\r\n", []string{"0123456789"}},
		{"pipelined", "*1\r\n$4\r\nPING\r\n*2\r\n$4\r\nECHO\r\n$2\r\nhi\r\nPING\r\n*1\r\n$4\r\nQUIT\r\n",
			[]string{"PING", "ECHO|hi", "PING", "QUIT"}},

		{"inline", "PING\r\n", []string{"PING"}},
		{"inline with LF only", "PING\n", []string{"PING"}},
		{"inline spaces and tabs", "  set \t k   v \r\n", []string{"set|k|v"}},
		{"inline blank line", "\r\n\n   \r\nPING\r\n", []string{"<empty>", "<empty>", "<empty>", "PING"}},
		{"inline double quotes", `set k "hello world"` + "\r\n", []string{"set|k|hello world"}},
		{"inline escapes", `echo "a\x41\x7a\n\r\t\b\a\\\"q"` + "\r\n", []string{"echo|aAz\n\r\t\b\a\\\"q"}},
		{"inline bad hex escape is literal", `echo "a\x4Gb"` + "\r\n", []string{"echo|ax4Gb"}},
		{"inline single quotes", `echo 'it\'s "x" \n'` + "\r\n", []string{`echo|it's "x" \n`}},
		{"inline empty quoted", `echo "" ''` + "\r\n", []string{"echo||"}},
		{"inline quote inside a word", `echo ab"c d" e` + "\r\n", []string{"echo|abc d|e"}},
		{"inline vertical tab stays in the word", "echo a\vb\r\n", []string{"echo|a\vb"}},
		{"inline closing quote then tab", "echo \"a\"\tb\r\n", []string{"echo|a|b"}},
		{"mixed pipeline", "PING\r\n*2\r\n$4\r\nECHO\r\n$1\r\nx\r\nECHO 'y z'\n", []string{"PING", "ECHO|x", "ECHO|y z"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := readAll(tt.input, resp.Limits{})
			if !errors.Is(err, io.EOF) {
				t.Fatalf("read %q: %v after %q", tt.input, err, got)
			}
			if fmt.Sprintf("%q", got) != fmt.Sprintf("%q", tt.want) {
				t.Fatalf("read %q:\n got %q\nwant %q", tt.input, got, tt.want)
			}
		})
	}
}

func TestReadCommandProtocolErrors(t *testing.T) {
	small := resp.Limits{MaxArgs: 3, MaxBulkBytes: 8, MaxInlineBytes: 16, MaxQueryBytes: 12}
	for _, tt := range []struct {
		name  string
		input string
		lim   resp.Limits
		// before are the commands read before the error.
		before []string
		want   string
	}{
		{name: "bad prefix of an argument", input: "*1\r\n+PING\r\n", want: "expected '$', got '+'"},
		{name: "inline inside multibulk", input: "*1\r\nPING\r\n", want: "expected '$', got 'P'"},
		{name: "empty argument line", input: "*1\r\n\r\n", want: "expected '$', got ''"},
		{name: "control byte as argument prefix", input: "*1\r\n\r\r\n", want: `expected '$', got '\x0d'`},
		{name: "non-numeric multibulk length", input: "*abc\r\n", want: "invalid multibulk length"},
		{name: "empty multibulk length", input: "*\r\n", want: "invalid multibulk length"},
		{name: "multibulk length with plus", input: "*+1\r\n", want: "invalid multibulk length"},
		{name: "multibulk length with leading zero", input: "*01\r\n$4\r\nPING\r\n", want: "invalid multibulk length"},
		{name: "multibulk length minus zero", input: "*-0\r\n", want: "invalid multibulk length"},
		{name: "multibulk length with trailing space", input: "*1 \r\n", want: "invalid multibulk length"},
		{name: "multibulk length overflowing int64", input: "*9999999999999999999\r\n", want: "invalid multibulk length"},
		{name: "too many arguments", input: "*1048577\r\n", want: "invalid multibulk length"},
		{name: "too many arguments, small limit", input: "*4\r\n$1\r\na\r\n", lim: small, want: "invalid multibulk length"},
		{name: "non-numeric bulk length", input: "*1\r\n$x\r\n", want: "invalid bulk length"},
		{name: "empty bulk length", input: "*1\r\n$\r\n", want: "invalid bulk length"},
		{name: "bulk length with leading zero", input: "*1\r\n$04\r\nPING\r\n", want: "invalid bulk length"},
		{name: "negative bulk length", input: "*1\r\n$-1\r\n", want: "invalid bulk length"},
		{name: "bulk length beyond the limit", input: "*1\r\n$16777217\r\n", want: "invalid bulk length"},
		{name: "bulk length beyond a small limit", input: "*1\r\n$9\r\n", lim: small, want: "invalid bulk length"},
		{name: "bulk length overflowing int64", input: "*1\r\n$99999999999999999999\r\n", want: "invalid bulk length"},
		{name: "query beyond the limit", input: "*2\r\n$8\r\naaaaaaaa\r\n$5\r\n", lim: small, want: "query larger than 12 bytes"},
		{name: "multibulk length line too long", input: "*" + strings.Repeat("1", 40) + "\r\n", want: "too big line"},
		{name: "bulk length line too long", input: "*1\r\n$" + strings.Repeat("1", 40) + "\r\n", want: "too big line"},
		{name: "multibulk length line without end", input: "*" + strings.Repeat("1", 20000), want: "too big line"},
		{name: "multibulk length without CR", input: "*1\n$4\r\nPING\r\n", want: "line not terminated by CRLF"},
		{name: "bulk length without CR", input: "*1\r\n$4\nPING\r\n", want: "line not terminated by CRLF"},
		{name: "bulk not terminated", input: "*1\r\n$4\r\nPINGxx\r\n", want: "bulk not terminated by CRLF"},
		{name: "bulk terminated by CR and garbage", input: "*1\r\n$4\r\nPING\rx", want: "bulk not terminated by CRLF"},
		{name: "bulk longer than declared", input: "*1\r\n$3\r\nPING\r\n", want: "bulk not terminated by CRLF"},
		{name: "error after a valid command", input: "*1\r\n$4\r\nPING\r\n*x\r\n", before: []string{"PING"}, want: "invalid multibulk length"},
		{name: "inline too long", input: strings.Repeat("a", 64<<10) + "\r\n", want: "too big inline request"},
		{name: "inline too long without newline", input: strings.Repeat("a", 100<<10), want: "too big inline request"},
		{name: "inline beyond a small limit", input: "echo 0123456789abcdef\r\n", lim: small, want: "too big inline request"},
		{name: "inline too many arguments", input: "a b c d\r\n", lim: small, want: "too many arguments"},
		{name: "inline unbalanced double quote", input: "echo \"abc\r\n", want: "unbalanced quotes in request"},
		{name: "inline unbalanced single quote", input: "echo 'abc\r\n", want: "unbalanced quotes in request"},
		{name: "inline closing quote followed by a letter", input: "echo \"a\"b\r\n", want: "unbalanced quotes in request"},
		{name: "inline escaped closing quote", input: "echo \"a\\\"\r\n", want: "unbalanced quotes in request"},
		{name: "inline backslash at the end of a quote", input: "echo \"a\\\r\n", want: "unbalanced quotes in request"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			got, err := readAll(tt.input, tt.lim)
			var pe *resp.ProtocolError
			if !errors.As(err, &pe) {
				t.Fatalf("read %.60q: got %v (%T) after %q, want a *ProtocolError", tt.input, err, err, got)
			}
			if want := "Protocol error: " + tt.want; err.Error() != want {
				t.Fatalf("read %.60q: error %q, want %q", tt.input, err, want)
			}
			if fmt.Sprint(got) != fmt.Sprint(tt.before) {
				t.Fatalf("read %.60q: commands before the error %q, want %q", tt.input, got, tt.before)
			}
		})
	}
}

// TestReadCommandTruncated: a stream that ends inside a command is the
// client going away, not malformed input: io.ErrUnexpectedEOF, and a
// stream that ends between commands is io.EOF.
func TestReadCommandTruncated(t *testing.T) {
	for _, input := range []string{
		"*1", "*1\r", "*1\r\n", "*1\r\n$4", "*1\r\n$4\r\n", "*1\r\n$4\r\nPI", "*1\r\n$4\r\nPING",
		"*1\r\n$4\r\nPING\r", "*2\r\n$3\r\nfoo\r\n", "PING", "echo \"abc",
	} {
		got, err := readAll(input, resp.Limits{})
		if !errors.Is(err, io.ErrUnexpectedEOF) || len(got) != 0 {
			t.Errorf("read %q: %q, %v; want io.ErrUnexpectedEOF", input, got, err)
		}
	}
	if got, err := readAll("", resp.Limits{}); err != io.EOF || len(got) != 0 {
		t.Errorf("empty stream: %q, %v; want io.EOF", got, err)
	}
}

// TestReadCommandSlowReader reads large arguments that arrive in small
// pieces: the parser must assemble them exactly.
func TestReadCommandSlowReader(t *testing.T) {
	big := make([]byte, 300<<10)
	for i := range big {
		big[i] = byte(i * 7)
	}
	input := fmt.Sprintf("*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$%d\r\n%s\r\nPING\r\n", len(big), big)
	for name, r := range map[string]io.Reader{
		"one byte":    iotest.OneByteReader(strings.NewReader(input)),
		"half":        iotest.HalfReader(strings.NewReader(input)),
		"data+EOF":    iotest.DataErrReader(strings.NewReader(input)),
		"all at once": strings.NewReader(input),
	} {
		rd := resp.NewReader(r)
		args, err := rd.ReadCommand(resp.Limits{})
		if err != nil || len(args) != 3 || string(args[2]) != string(big) {
			t.Fatalf("%s: %d args, %v", name, len(args), err)
		}
		if args, err := rd.ReadCommand(resp.Limits{}); err != nil || len(args) != 1 || string(args[0]) != "PING" {
			t.Fatalf("%s: then %q, %v", name, args, err)
		}
		if _, err := rd.ReadCommand(resp.Limits{}); err != io.EOF {
			t.Fatalf("%s: at the end %v", name, err)
		}
	}
}

// allocatedPerRun returns the bytes f allocates on average.
func allocatedPerRun(runs int, f func()) uint64 {
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for range runs {
		f()
	}
	runtime.ReadMemStats(&after)
	return (after.TotalAlloc - before.TotalAlloc) / uint64(runs)
}

// TestDeclaredLengthsCostNothing: a client declaring huge lengths (within
// the limits or beyond) and sending little makes the parser allocate about
// what it sent plus its fixed buffers, never what it declared.
func TestDeclaredLengthsCostNothing(t *testing.T) {
	const budget = 256 << 10 // the read buffer (16 KiB), one chunk (64 KiB), slack
	sent1M := "*1\r\n$16777216\r\n" + strings.Repeat("x", 1<<20)
	for _, tt := range []struct {
		name  string
		input string
		// limit is the most the parsing may allocate.
		limit uint64
	}{
		{"16 MiB argument declared, 3 bytes sent", "*1\r\n$16777216\r\nabc", budget},
		{"16 MiB argument declared, nothing sent", "*1\r\n$16777216\r\n", budget},
		{"argument beyond the limit declared", "*1\r\n$1099511627776\r\n", budget},
		{"1M arguments declared, one sent", "*1048576\r\n$1\r\na\r\n", budget},
		{"arguments beyond the limit declared", "*1099511627776\r\n", budget},
		{"64 MiB query declared in 4 arguments", "*5\r\n$16777216\r\n" + strings.Repeat("y", 100) + "\r\n$16777216\r\n", budget},
		// What arrives is kept in a buffer that doubles as data arrives:
		// 1 MiB sent costs at most 2 MiB live and about 4 MiB allocated in
		// all (64 KiB + 128 KiB + ... + 2 MiB), not the 16 MiB declared.
		{"16 MiB argument declared, 1 MiB sent", sent1M, 5 << 20},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var err error
			got := allocatedPerRun(5, func() {
				rd := resp.NewReader(strings.NewReader(tt.input))
				for err = nil; err == nil; {
					_, err = rd.ReadCommand(resp.Limits{})
				}
			})
			if err == nil || err == io.EOF {
				t.Fatalf("parsing ended with %v, want an error", err)
			}
			t.Logf("%d bytes allocated per run", got)
			if got > tt.limit {
				t.Fatalf("parsing allocated %d bytes per run, want at most %d", got, tt.limit)
			}
		})
	}
}

// noBackend serves connection commands only; every key command fails.
type noBackend struct{ shoalpb.UnimplementedKVServer }

func (noBackend) Topology() resp.Topology { return resp.Topology{} }
func (noBackend) ShardOf(uint16) uint64   { return 0 }

func startServer(t *testing.T, opts resp.Options) string {
	t.Helper()
	return startServerOn(t, noBackend{}, opts)
}

// startServerOn serves RESP on a loopback port with backend until the test
// ends, and returns the address.
func startServerOn(t *testing.T, backend resp.Backend, opts resp.Options) string {
	t.Helper()
	return startServerWrapped(t, backend, opts, func(l net.Listener) net.Listener { return l })
}

// startServerWrapped is startServerOn serving on wrap of the listener.
func startServerWrapped(t *testing.T, backend resp.Backend, opts resp.Options, wrap func(net.Listener) net.Listener) string {
	t.Helper()
	srv := resp.NewServer(backend, opts)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(wrap(lis)) }()
	t.Cleanup(func() {
		srv.Close()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
	return lis.Addr().String()
}

// A server closed before it serves closes the listener it is then given:
// a node stopped while starting leaves no port open.
func TestServeAfterClose(t *testing.T) {
	srv := resp.NewServer(noBackend{}, resp.Options{})
	srv.Close()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Serve(lis); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Serve after Close: %v, want net.ErrClosed", err)
	}
	if _, err := lis.Accept(); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("the listener is still open: Accept gave %v", err)
	}
}

// rawConn is a client speaking raw bytes.
type rawConn struct {
	t  *testing.T
	nc net.Conn
	br *bufio.Reader
}

func dialRaw(t *testing.T, addr string) *rawConn {
	t.Helper()
	nc, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { nc.Close() })
	if err := nc.SetDeadline(time.Now().Add(20 * time.Second)); err != nil {
		t.Fatal(err)
	}
	return &rawConn{t: t, nc: nc, br: bufio.NewReader(nc)}
}

// roundTrip sends a request and returns the first reply line.
func (c *rawConn) roundTrip(req string) string {
	c.t.Helper()
	if _, err := io.WriteString(c.nc, req); err != nil {
		c.t.Fatal(err)
	}
	line, err := c.br.ReadString('\n')
	if err != nil {
		c.t.Fatalf("reply to %q: %v", req, err)
	}
	return line
}

// TestServerProtocolErrors sends malformed input over real connections:
// each gets "-ERR Protocol error: ..." and is closed by the server, and the
// server goes on serving the other connections.
func TestServerProtocolErrors(t *testing.T) {
	addr := startServer(t, resp.Options{})
	other := dialRaw(t, addr)
	if got := other.roundTrip("PING\r\n"); got != "+PONG\r\n" {
		t.Fatalf("PING: %q", got)
	}
	// Garbage after the malformed part: the client is still writing when
	// the server gives up, and must still read the error.
	garbage := strings.Repeat("garbage ", 8<<10)
	for _, tt := range []struct{ input, want string }{
		{"*1\r\n$abc\r\n", "invalid bulk length"},
		{"*1\r\n$4\r\nPING\r\n*2\r\n+x\r\n", "expected '$', got '+'"},
		{"*2\r\n$4\r\nECHO\r\n$1\r\nabc\r\n" + garbage, "bulk not terminated by CRLF"},
		{"*99999999999999999999\r\n" + garbage, "invalid multibulk length"},
		{"*1\r\n$99999999999\r\n" + garbage, "invalid bulk length"},
		{"ECHO \"unbalanced\r\n" + garbage, "unbalanced quotes in request"},
		{strings.Repeat("x", 100<<10), "too big inline request"},
	} {
		c := dialRaw(t, addr)
		go io.WriteString(c.nc, tt.input) // may fail once the server closes
		reply, err := io.ReadAll(c.br)
		want := ""
		if strings.HasPrefix(tt.input, "*1\r\n$4\r\nPING\r\n") {
			want = "+PONG\r\n"
		}
		want += "-ERR Protocol error: " + tt.want + "\r\n"
		if err != nil || string(reply) != want {
			t.Errorf("input %.40q: reply %q, %v; want %q and the end of the stream", tt.input, reply, err, want)
		}
	}
	// The server closes the connections itself (the clients above keep
	// theirs open): only `other` remains.
	if err := tc.WaitFor(ctxFor(t, 15*time.Second), func() error {
		info := other.roundTrip("INFO clients\r\n")
		if !strings.HasPrefix(info, "$") {
			t.Fatalf("INFO: %q", info)
		}
		var body strings.Builder
		for {
			line, err := other.br.ReadString('\n')
			if err != nil {
				t.Fatal(err)
			}
			if line == "\r\n" {
				break
			}
			body.WriteString(line)
		}
		if !strings.Contains(body.String(), "connected_clients:1\r\n") {
			return fmt.Errorf("connections still open after protocol errors:\n%s", body.String())
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if got := other.roundTrip("*2\r\n$4\r\nECHO\r\n$2\r\nok\r\n"); got != "$2\r\n" {
		t.Fatalf("ECHO on the surviving connection: %q", got)
	}
	if got := dialRaw(t, addr).roundTrip("PING\r\n"); got != "+PONG\r\n" {
		t.Fatalf("PING on a new connection: %q", got)
	}
}

// TestServerUnauthenticatedLimits: before AUTH a client gets Redis's small
// limits (10 arguments, 16 KiB per argument), after it the configured ones.
func TestServerUnauthenticatedLimits(t *testing.T) {
	addr := startServer(t, resp.Options{Password: "pw"})
	for _, tt := range []struct{ input, want string }{
		{"*11\r\n", "-ERR Protocol error: invalid multibulk length\r\n"},
		{"*2\r\n$4\r\nAUTH\r\n$16385\r\n", "-ERR Protocol error: invalid bulk length\r\n"},
	} {
		c := dialRaw(t, addr)
		if got := c.roundTrip(tt.input); got != tt.want {
			t.Errorf("unauthenticated %q: %q, want %q", tt.input, got, tt.want)
		}
	}
	c := dialRaw(t, addr)
	if got := c.roundTrip("AUTH pw\r\n"); got != "+OK\r\n" {
		t.Fatalf("AUTH: %q", got)
	}
	big := strings.Repeat("v", 20000)
	if got := c.roundTrip(fmt.Sprintf("*2\r\n$4\r\nECHO\r\n$%d\r\n%s\r\n", len(big), big)); got != "$20000\r\n" {
		t.Fatalf("20000-byte ECHO after AUTH: %q", got)
	}
}
