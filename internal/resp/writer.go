package resp

import (
	"bufio"
	"io"
	"strconv"
)

// Writer writes replies in RESP2 or RESP3. Replies are buffered until
// Flush. Types RESP2 lacks are written as the nearest RESP2 type, as Redis
// does: a map as a flat array, a null as a null bulk string, a double as a
// bulk string, a boolean as an integer.
type Writer struct {
	w     *bufio.Writer
	proto int
	buf   []byte
	// lastErr is the last error reply written; the server clears it
	// before each command to tell whether the command failed.
	lastErr string
}

// NewWriter returns a RESP2 writer on w.
func NewWriter(w io.Writer) *Writer { return &Writer{w: bufio.NewWriterSize(w, 32<<10), proto: 2} }

// SetProto switches between RESP2 and RESP3.
func (w *Writer) SetProto(p int) { w.proto = p }

// Proto returns the protocol version.
func (w *Writer) Proto() int { return w.proto }

// Flush sends what is buffered.
func (w *Writer) Flush() error { return w.w.Flush() }

func (w *Writer) line(prefix byte, s string) {
	w.w.WriteByte(prefix)
	w.w.WriteString(s)
	w.w.WriteString("\r\n")
}

func (w *Writer) num(prefix byte, n int64) {
	w.buf = strconv.AppendInt(append(w.buf[:0], prefix), n, 10)
	w.buf = append(w.buf, '\r', '\n')
	w.w.Write(w.buf)
}

// Simple writes a simple string (+OK).
func (w *Writer) Simple(s string) { w.line('+', s) }

// OK writes +OK.
func (w *Writer) OK() { w.Simple("OK") }

// Error writes an error; msg starts with its code (ERR, MOVED, ...).
func (w *Writer) Error(msg string) {
	w.lastErr = msg
	w.line('-', sanitize(msg))
}

// Int writes an integer.
func (w *Writer) Int(n int64) { w.num(':', n) }

// Bulk writes a bulk string.
func (w *Writer) Bulk(b []byte) {
	w.num('$', int64(len(b)))
	w.w.Write(b)
	w.w.WriteString("\r\n")
}

// BulkString writes a bulk string.
func (w *Writer) BulkString(s string) {
	w.num('$', int64(len(s)))
	w.w.WriteString(s)
	w.w.WriteString("\r\n")
}

// Null writes a null (a missing value).
func (w *Writer) Null() {
	if w.proto >= 3 {
		w.w.WriteString("_\r\n")
		return
	}
	w.w.WriteString("$-1\r\n")
}

// NullArray writes a null array (RESP2's *-1).
func (w *Writer) NullArray() {
	if w.proto >= 3 {
		w.w.WriteString("_\r\n")
		return
	}
	w.w.WriteString("*-1\r\n")
}

// Array starts an array of n elements.
func (w *Writer) Array(n int) { w.num('*', int64(n)) }

// Map starts a map of n key-value pairs.
func (w *Writer) Map(n int) {
	if w.proto >= 3 {
		w.num('%', int64(n))
		return
	}
	w.num('*', int64(2*n))
}

// Set starts a set of n elements.
func (w *Writer) Set(n int) {
	if w.proto >= 3 {
		w.num('~', int64(n))
		return
	}
	w.num('*', int64(n))
}

// Verbatim writes text (INFO); RESP3 marks it as a verbatim "txt" string.
func (w *Writer) Verbatim(s string) {
	if w.proto >= 3 {
		w.num('=', int64(len(s)+4))
		w.w.WriteString("txt:")
		w.w.WriteString(s)
		w.w.WriteString("\r\n")
		return
	}
	w.BulkString(s)
}

// sanitize keeps an error on one line.
func sanitize(s string) string {
	for i := 0; i < len(s); i++ {
		if s[i] == '\r' || s[i] == '\n' {
			b := []byte(s)
			for j := range b {
				if b[j] == '\r' || b[j] == '\n' {
					b[j] = ' '
				}
			}
			return string(b)
		}
	}
	return s
}

// raw writes b, replies already encoded, as they are.
func (w *Writer) raw(b []byte) { w.w.Write(b) }
