package resp_test

import (
	"bytes"
	"errors"
	"io"
	"strconv"
	"strings"
	"testing"

	"github.com/shoaldb/shoal/internal/resp"
)

// encodeCommand writes args as a RESP multibulk command.
func encodeCommand(args [][]byte) []byte {
	var b bytes.Buffer
	b.WriteString("*" + strconv.Itoa(len(args)) + "\r\n")
	for _, a := range args {
		b.WriteString("$" + strconv.Itoa(len(a)) + "\r\n")
		b.Write(a)
		b.WriteString("\r\n")
	}
	return b.Bytes()
}

// fuzzLimits are the limits each input is parsed under: the defaults, and
// limits small enough for fuzzed inputs to cross every one of them.
var fuzzLimits = []resp.Limits{
	{},
	{MaxArgs: 4, MaxBulkBytes: 8, MaxInlineBytes: 32, MaxQueryBytes: 20},
}

// FuzzReadCommand reads every command of an input, under each of
// fuzzLimits. It must not panic; every error is the end of the input or a
// *ProtocolError; every command respects the limits; and a command
// re-encoded as a multibulk command parses back to the same arguments.
// The seed corpus is in testdata/fuzz/FuzzReadCommand.
//
//	go test -run '^$' -fuzz FuzzReadCommand -fuzztime 3m ./internal/resp/
func FuzzReadCommand(f *testing.F) {
	for _, s := range []string{
		"*1\r\n$4\r\nPING\r\n",
		"PING\r\n",
		"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\nECHO \"a b\" 'c\\'d'\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		for _, configured := range fuzzLimits {
			lim := configured
			if lim.MaxArgs == 0 {
				lim = resp.Limits{MaxArgs: 1 << 20, MaxBulkBytes: 16 << 20, MaxInlineBytes: 64 << 10, MaxQueryBytes: 64 << 20}
			}
			rd := resp.NewReader(bytes.NewReader(data))
			for {
				args, err := rd.ReadCommand(configured)
				if err != nil {
					var pe *resp.ProtocolError
					switch {
					case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
					case errors.As(err, &pe):
						if msg := pe.Error(); !strings.HasPrefix(msg, "Protocol error: ") || len(msg) == len("Protocol error: ") || strings.ContainsAny(msg, "\r\n") {
							t.Fatalf("protocol error without a one-line text: %q", msg)
						}
					default:
						t.Fatalf("unexpected error %T %v", err, err)
					}
					break
				}
				if args == nil {
					continue
				}
				if len(args) == 0 || len(args) > lim.MaxArgs {
					t.Fatalf("%d arguments, limit %d", len(args), lim.MaxArgs)
				}
				total := 0
				for _, a := range args {
					total += len(a)
					if len(a) > lim.MaxBulkBytes {
						t.Fatalf("argument of %d bytes, limit %d", len(a), lim.MaxBulkBytes)
					}
				}
				if total > lim.MaxQueryBytes {
					t.Fatalf("command of %d bytes, limit %d", total, lim.MaxQueryBytes)
				}
				again := resp.NewReader(bytes.NewReader(encodeCommand(args)))
				back, err := again.ReadCommand(configured)
				if err != nil {
					t.Fatalf("re-encoded %q: %v", args, err)
				}
				if len(back) != len(args) {
					t.Fatalf("re-encoded %q parsed as %q", args, back)
				}
				for i := range args {
					if !bytes.Equal(back[i], args[i]) {
						t.Fatalf("re-encoded %q parsed as %q", args, back)
					}
				}
				if _, err := again.ReadCommand(configured); err != io.EOF {
					t.Fatalf("re-encoded %q: then %v, want io.EOF", args, err)
				}
			}
		}
	})
}
