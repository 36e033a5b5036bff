package keys

// SlotCount is the number of hash slots, as in Redis Cluster.
const SlotCount = 16384

// crcTable is the CRC-16/XMODEM table (polynomial 0x1021, no reflection).
// It is computed at compile time by crc16Table and never written afterwards.
var crcTable = crc16Table()

func crc16Table() [256]uint16 {
	var t [256]uint16
	for i := range t {
		crc := uint16(i) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
		t[i] = crc
	}
	return t
}

// CRC16 returns the CRC-16/XMODEM checksum of b (polynomial 0x1021, initial
// value 0, no reflection, no final XOR). CRC16("123456789") is 0x31C3.
func CRC16(b []byte) uint16 {
	var crc uint16
	for _, c := range b {
		crc = crc<<8 ^ crcTable[byte(crc>>8)^c]
	}
	return crc
}

// HashTag returns the part of key that decides its slot: the bytes between
// the first '{' and the first '}' after it, when that is non-empty; otherwise
// the whole key. This is Redis Cluster's rule, so "{user1000}.following" and
// "{user1000}.followers" share a slot, "foo{}{bar}" hashes the whole key and
// "foo{{bar}}zap" hashes "{bar".
func HashTag(key []byte) []byte {
	for s := 0; s < len(key); s++ {
		if key[s] != '{' {
			continue
		}
		for e := s + 1; e < len(key); e++ {
			if key[e] == '}' {
				if e == s+1 {
					return key
				}
				return key[s+1 : e]
			}
		}
		return key
	}
	return key
}

// Slot returns the hash slot of key, in [0, SlotCount).
func Slot(key []byte) uint16 {
	return CRC16(HashTag(key)) & (SlotCount - 1)
}

// ShardSlots returns the slot range [start, end) that shard i of n owns when a
// cluster is bootstrapped with n shards: [i*16384/n, (i+1)*16384/n). n must be
// a power of two in [1, SlotCount] and i < n.
func ShardSlots(i, n int) (start, end uint16) {
	return uint16(i * SlotCount / n), uint16((i + 1) * SlotCount / n)
}
