package kv

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// ErrCorruptValue is returned when a stored value does not decode.
var ErrCorruptValue = errors.New("kv: corrupt stored value")

// Value header flags. Bits not listed here are reserved and make a stored
// value invalid, so that a value written by a newer format is never misread.
const (
	flagExpire byte = 1 << iota // an 8-byte expire-at follows the flags

	knownFlags = flagExpire
)

// AppendValue appends the stored form of value with expiry expireAtMs (Unix
// milliseconds, 0 for none) to dst and returns it:
//
//	flags(1) | expire-at ms (8, big-endian, only if flags&1) | value
//
// expireAtMs must not be negative.
func AppendValue(dst []byte, value []byte, expireAtMs int64) []byte {
	if expireAtMs == 0 {
		dst = append(dst, 0)
	} else {
		dst = append(dst, flagExpire)
		dst = binary.BigEndian.AppendUint64(dst, uint64(expireAtMs))
	}
	return append(dst, value...)
}

// DecodeValue splits a stored value into the user's value (aliasing b) and
// its expiry in Unix milliseconds (0 for none). It returns an error wrapping
// ErrCorruptValue for any input AppendValue cannot produce.
func DecodeValue(b []byte) (value []byte, expireAtMs int64, err error) {
	if len(b) == 0 {
		return nil, 0, fmt.Errorf("%w: empty", ErrCorruptValue)
	}
	flags := b[0]
	if flags&^knownFlags != 0 {
		return nil, 0, fmt.Errorf("%w: unknown flags %#02x", ErrCorruptValue, flags)
	}
	if flags&flagExpire == 0 {
		return b[1:], 0, nil
	}
	if len(b) < 9 {
		return nil, 0, fmt.Errorf("%w: %d bytes, expiry truncated", ErrCorruptValue, len(b))
	}
	at := int64(binary.BigEndian.Uint64(b[1:]))
	if at <= 0 {
		return nil, 0, fmt.Errorf("%w: expiry %d is not positive", ErrCorruptValue, at)
	}
	return b[9:], at, nil
}

// expired reports whether a key with expiry expireAtMs is gone at nowMs.
func expired(expireAtMs, nowMs int64) bool {
	return expireAtMs != 0 && expireAtMs <= nowMs
}
