package kafka

// KeyPartition returns the partition, out of partitions, that the Java
// client's default partitioner (and this package's Publisher) chooses for a
// record with a non-empty key: the murmur2 hash of the key bytes with the
// sign bit cleared, modulo the partition count. Producers in different
// languages that use Kafka's default partitioner therefore place a key on the
// same partition, and messages of one key stay in order across them. It
// returns -1 when partitions < 1 or key is empty (keyless records are spread
// by the sticky partitioner instead).
func KeyPartition(key string, partitions int) int32 {
	if partitions < 1 || key == "" {
		return -1
	}
	return int32(int64(murmur2([]byte(key))&0x7fffffff) % int64(partitions))
}

// murmur2 is Kafka's Utils.murmur2 (MurmurHash2, seed 0x9747b28c).
func murmur2(b []byte) uint32 {
	const (
		seed uint32 = 0x9747b28c
		m    uint32 = 0x5bd1e995
		r           = 24
	)
	h := seed ^ uint32(len(b))
	for len(b) >= 4 {
		k := uint32(b[0]) | uint32(b[1])<<8 | uint32(b[2])<<16 | uint32(b[3])<<24
		b = b[4:]
		k *= m
		k ^= k >> r
		k *= m
		h *= m
		h ^= k
	}
	switch len(b) {
	case 3:
		h ^= uint32(b[2]) << 16
		fallthrough
	case 2:
		h ^= uint32(b[1]) << 8
		fallthrough
	case 1:
		h ^= uint32(b[0])
		h *= m
	}
	h ^= h >> 13
	h *= m
	h ^= h >> 15
	return h
}
