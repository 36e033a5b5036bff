package testcluster

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/shoaldb/shoal/api/shoalpb"
	"github.com/shoaldb/shoal/internal/keys"
	"github.com/shoaldb/shoal/internal/raftstore"
	"github.com/shoaldb/shoal/internal/storage"
)

// RegisterSM is a minimal state machine for store-level tests: commands put
// or append a value under a key (stored as a data key of its slot), and
// return the value the key had before. It keeps tests about replication
// independent of the real key-value state machine.
type RegisterSM struct{}

// NewRegisterSM returns a RegisterSM; it fits Options.NewStateMachine.
func NewRegisterSM(*shoalpb.ShardDescriptor) raftstore.StateMachine { return RegisterSM{} }

const (
	opPut    byte = 'p'
	opAppend byte = 'a'
)

// PutCmd encodes "set key to value".
func PutCmd(key, value []byte) []byte { return encodeCmd(opPut, key, value) }

// AppendCmd encodes "append value to key".
func AppendCmd(key, value []byte) []byte { return encodeCmd(opAppend, key, value) }

func encodeCmd(op byte, key, value []byte) []byte {
	b := make([]byte, 0, 3+len(key)+len(value))
	b = append(b, op)
	b = binary.BigEndian.AppendUint16(b, uint16(len(key)))
	b = append(b, key...)
	return append(b, value...)
}

// Apply implements raftstore.StateMachine. The result of each command is
// the key's previous value as a string ("" if absent).
func (RegisterSM) Apply(b *storage.Batch, cmds []raftstore.Command) ([]any, error) {
	out := make([]any, len(cmds))
	for i, c := range cmds {
		if len(c.Data) < 3 {
			out[i] = errors.New("short command")
			continue
		}
		op, n := c.Data[0], int(binary.BigEndian.Uint16(c.Data[1:]))
		if len(c.Data) < 3+n {
			out[i] = errors.New("short command")
			continue
		}
		key, value := c.Data[3:3+n], c.Data[3+n:]
		dk := keys.DataKey(keys.Slot(key), key)
		old, _, err := storage.Get(b, dk)
		if err != nil {
			return nil, err
		}
		switch op {
		case opPut:
			err = b.Set(dk, value, nil)
		case opAppend:
			err = b.Set(dk, append(old[:len(old):len(old)], value...), nil)
		default:
			out[i] = fmt.Errorf("unknown op %q", op)
			continue
		}
		if err != nil {
			return nil, err
		}
		out[i] = string(old)
	}
	return out, nil
}

// ReadKey reads key as RegisterSM stored it from r.
func ReadKey(r storage.Reader, key []byte) (string, bool, error) {
	v, ok, err := storage.Get(r, keys.DataKey(keys.Slot(key), key))
	return string(v), ok, err
}
