package resp

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"math"
	"strings"
)

// Limits bound what one command may be. Zero fields take the defaults.
type Limits struct {
	// MaxArgs bounds the arguments of one command. Default 1048576.
	MaxArgs int
	// MaxBulkBytes bounds one argument. Default 16 MiB (above the largest
	// value the cluster stores, 8 MiB by default, so that an oversized value
	// gets the key-value layer's clear error rather than a protocol error).
	MaxBulkBytes int
	// MaxInlineBytes bounds an inline (telnet-style) command line.
	// Default 64 KiB.
	MaxInlineBytes int
	// MaxQueryBytes bounds all the arguments of one command together.
	// Default 64 MiB.
	MaxQueryBytes int
}

func (l *Limits) ensureDefaults() {
	if l.MaxArgs <= 0 {
		l.MaxArgs = 1 << 20
	}
	if l.MaxBulkBytes <= 0 {
		l.MaxBulkBytes = 16 << 20
	}
	if l.MaxInlineBytes <= 0 {
		l.MaxInlineBytes = 64 << 10
	}
	if l.MaxQueryBytes <= 0 {
		l.MaxQueryBytes = 64 << 20
	}
}

// unauthLimits are the limits for a client that has not authenticated on a
// server with a password, as Redis does since CVE-2021-32675.
var unauthLimits = Limits{MaxArgs: 10, MaxBulkBytes: 16 << 10, MaxInlineBytes: 16 << 10, MaxQueryBytes: 160 << 10}

// ProtocolError is a malformed request; the connection is closed after it.
type ProtocolError struct{ msg string }

func (e *ProtocolError) Error() string { return "Protocol error: " + e.msg }

func protoErr(format string, args ...any) error {
	return &ProtocolError{msg: fmt.Sprintf(format, args...)}
}

// chunk is how much the parser allocates ahead of what it has received.
const chunk = 64 << 10

// Reader reads commands from a client.
type Reader struct {
	r *bufio.Reader
}

// NewReader returns a Reader over r.
func NewReader(r io.Reader) *Reader { return &Reader{r: bufio.NewReaderSize(r, 16<<10)} }

// Buffered reports whether more input is already buffered (a pipeline).
func (rd *Reader) Buffered() bool { return rd.r.Buffered() > 0 }

// ReadCommand reads one command within lim (zero fields take the
// defaults). It returns nil args for an empty command (a blank line, "*0"),
// a *ProtocolError for malformed input, and otherwise the reader's error:
// io.EOF between commands, io.ErrUnexpectedEOF inside one.
func (rd *Reader) ReadCommand(lim Limits) ([][]byte, error) {
	lim.ensureDefaults()
	b, err := rd.r.Peek(1)
	if err != nil {
		return nil, err
	}
	if b[0] != '*' {
		return rd.readInline(lim)
	}
	line, err := rd.readLine(32)
	if err != nil {
		return nil, err
	}
	n, err := parseLen(line[1:])
	if err != nil {
		return nil, protoErr("invalid multibulk length")
	}
	if n <= 0 {
		return nil, nil
	}
	if n > lim.MaxArgs {
		return nil, protoErr("invalid multibulk length")
	}
	args := make([][]byte, 0, min(n, 1024))
	total := 0
	for range n {
		line, err := rd.readLine(32)
		if err != nil {
			return nil, err
		}
		if len(line) == 0 || line[0] != '$' {
			return nil, protoErr("expected '$', got '%s'", printable(line, 1))
		}
		size, err := parseLen(line[1:])
		if err != nil || size < 0 || size > lim.MaxBulkBytes {
			return nil, protoErr("invalid bulk length")
		}
		if total += size; total > lim.MaxQueryBytes {
			return nil, protoErr("query larger than %d bytes", lim.MaxQueryBytes)
		}
		arg, err := rd.readN(size)
		if err != nil {
			return nil, err
		}
		if err := rd.readCRLF(); err != nil {
			return nil, err
		}
		args = append(args, arg)
	}
	return args, nil
}

// readN reads exactly n bytes, growing its buffer with what arrives so that
// a declared length costs memory only once it is sent.
func (rd *Reader) readN(n int) ([]byte, error) {
	buf := make([]byte, 0, min(n, chunk))
	for len(buf) < n {
		if len(buf) == cap(buf) {
			// Double what has arrived (at least a chunk), up to n.
			grown := make([]byte, len(buf), len(buf)+min(n-len(buf), max(len(buf), chunk)))
			copy(grown, buf)
			buf = grown
		}
		m, err := rd.r.Read(buf[len(buf):min(cap(buf), n)])
		buf = buf[:len(buf)+m]
		if err != nil {
			return nil, unexpectedEOF(err)
		}
	}
	return buf, nil
}

// readCRLF reads the CRLF that ends a bulk string. (Redis does not check
// it; a client that sends other bytes there is broken, and reading on would
// misparse everything after.)
func (rd *Reader) readCRLF() error {
	for _, want := range []byte{'\r', '\n'} {
		c, err := rd.r.ReadByte()
		if err != nil {
			return unexpectedEOF(err)
		}
		if c != want {
			return protoErr("bulk not terminated by CRLF")
		}
	}
	return nil
}

// readLine reads a CRLF-terminated line of at most max bytes, without the
// CRLF.
func (rd *Reader) readLine(max int) ([]byte, error) {
	line, err := rd.r.ReadSlice('\n')
	if errors.Is(err, bufio.ErrBufferFull) || len(line) > max+2 {
		return nil, protoErr("too big line")
	}
	if err != nil {
		return nil, unexpectedEOF(err)
	}
	if len(line) < 2 || line[len(line)-2] != '\r' {
		return nil, protoErr("line not terminated by CRLF")
	}
	return line[:len(line)-2], nil
}

func unexpectedEOF(err error) error {
	if errors.Is(err, io.EOF) {
		return io.ErrUnexpectedEOF
	}
	return err
}

// readInline reads a telnet-style command: one line, arguments split on
// spaces, with Redis's quoting rules.
func (rd *Reader) readInline(lim Limits) ([][]byte, error) {
	var line []byte
	for {
		part, err := rd.r.ReadSlice('\n')
		if len(line)+len(part) > lim.MaxInlineBytes {
			return nil, protoErr("too big inline request")
		}
		line = append(line, part...)
		if err == nil {
			break
		}
		if !errors.Is(err, bufio.ErrBufferFull) {
			return nil, unexpectedEOF(err)
		}
	}
	line = line[:len(line)-1]
	if len(line) > 0 && line[len(line)-1] == '\r' {
		line = line[:len(line)-1]
	}
	args, err := splitArgs(line)
	if err != nil {
		return nil, err
	}
	if len(args) > lim.MaxArgs {
		return nil, protoErr("too many arguments")
	}
	// An inline command obeys the multibulk limits too (they can be set
	// below MaxInlineBytes).
	total := 0
	for _, a := range args {
		if total += len(a); len(a) > lim.MaxBulkBytes || total > lim.MaxQueryBytes {
			return nil, protoErr("too big inline request")
		}
	}
	return args, nil
}

// splitArgs splits an inline command as Redis's sdssplitargs does: white
// space separates (within a word only space, tab, CR and LF end it; vertical
// tab and form feed are part of the word, as in Redis); "..." allows \n \r
// \t \b \a \\ \" and \xHH escapes; '...' allows \'; a closing quote must
// be followed by white space or the end.
func splitArgs(line []byte) ([][]byte, error) {
	var args [][]byte
	i := 0
	for {
		for i < len(line) && isSpace(line[i]) {
			i++
		}
		if i == len(line) {
			return args, nil
		}
		var cur []byte
		inDq, inSq := false, false
		for done := false; !done; {
			if i == len(line) {
				if inDq || inSq {
					return nil, protoErr("unbalanced quotes in request")
				}
				break
			}
			c := line[i]
			switch {
			case inDq:
				switch {
				case c == '\\' && i+3 < len(line) && line[i+1] == 'x' && isHex(line[i+2]) && isHex(line[i+3]):
					cur = append(cur, hexVal(line[i+2])<<4|hexVal(line[i+3]))
					i += 3
				case c == '\\' && i+1 < len(line):
					i++
					switch line[i] {
					case 'n':
						cur = append(cur, '\n')
					case 'r':
						cur = append(cur, '\r')
					case 't':
						cur = append(cur, '\t')
					case 'b':
						cur = append(cur, '\b')
					case 'a':
						cur = append(cur, '\a')
					default:
						cur = append(cur, line[i])
					}
				case c == '"':
					if i+1 < len(line) && !isSpace(line[i+1]) {
						return nil, protoErr("unbalanced quotes in request")
					}
					done = true
				default:
					cur = append(cur, c)
				}
			case inSq:
				switch {
				case c == '\\' && i+1 < len(line) && line[i+1] == '\'':
					i++
					cur = append(cur, '\'')
				case c == '\'':
					if i+1 < len(line) && !isSpace(line[i+1]) {
						return nil, protoErr("unbalanced quotes in request")
					}
					done = true
				default:
					cur = append(cur, c)
				}
			default:
				switch {
				case c == ' ' || c == '\t' || c == '\r' || c == '\n':
					done = true
				case c == '"':
					inDq = true
				case c == '\'':
					inSq = true
				default:
					cur = append(cur, c)
				}
			}
			if i < len(line) {
				i++
			}
		}
		if cur == nil {
			cur = []byte{}
		}
		args = append(args, cur)
	}
}

func isSpace(c byte) bool {
	return c == ' ' || c == '\n' || c == '\r' || c == '\t' || c == '\v' || c == '\f'
}

func isHex(c byte) bool {
	return ('0' <= c && c <= '9') || ('a' <= c && c <= 'f') || ('A' <= c && c <= 'F')
}

func hexVal(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c <= 'F':
		return c - 'A' + 10
	}
	return c - 'a' + 10
}

var errBadLength = errors.New("bad length")

// parseLen parses a length as Redis's string2ll does: an optional '-' and
// decimal digits, no '+', no leading zeros, no "-0", and no overflow (a
// length that does not fit is an error, never a wrapped-around number).
func parseLen(b []byte) (int, error) {
	neg := len(b) > 0 && b[0] == '-'
	if neg {
		b = b[1:]
	}
	if len(b) == 0 || (b[0] == '0' && (len(b) > 1 || neg)) {
		return 0, errBadLength
	}
	n := 0
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, errBadLength
		}
		d := int(c - '0')
		if n > (math.MaxInt-d)/10 {
			return 0, errBadLength
		}
		n = n*10 + d
	}
	if neg {
		n = -n
	}
	return n, nil
}

// printable returns b's first n bytes for an error message, with bytes
// other than printable ASCII written \xHH (the message must stay one line).
func printable(b []byte, n int) string {
	if len(b) > n {
		b = b[:n]
	}
	var sb strings.Builder
	for _, c := range b {
		if c >= ' ' && c <= '~' {
			sb.WriteByte(c)
		} else {
			fmt.Fprintf(&sb, "\\x%02x", c)
		}
	}
	return sb.String()
}
