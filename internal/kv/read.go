package kv

import (
	"fmt"

	"github.com/shoaldb/shoal/internal/keys"
	"github.com/shoaldb/shoal/internal/storage"
)

// Get reads key, which lives in slot, from r as of nowMs (Unix
// milliseconds): a key whose expiry is not after nowMs is not found. The
// value is a copy the caller owns; expireAtMs is 0 when the key has no TTL.
func Get(r storage.Reader, slot uint16, key []byte, nowMs int64) (value []byte, expireAtMs int64, found bool, err error) {
	raw, ok, err := storage.Get(r, keys.DataKey(slot, key))
	if err != nil || !ok {
		return nil, 0, false, err
	}
	v, at, err := DecodeValue(raw)
	if err != nil {
		return nil, 0, false, fmt.Errorf("kv: key %q: %w", key, err)
	}
	if expired(at, nowMs) {
		return nil, 0, false, nil
	}
	return v, at, true, nil
}
