//! Where a keyed record belongs: Kafka's default partitioner (murmur2 of the key, as the Java
//! client, Kafka Streams and librdkafka's `murmur2_random` compute it).
//!
//! Requests are keyed by tenant, and a tenant's quota is decided on one partition's ordered
//! stream (see `streamscore_ingest::decide::partition_refusal`): a record of a tenant on
//! another partition of the same topic is refused, whatever client wrote it, so that spreading
//! a tenant over partitions cannot multiply its quota.

/// Kafka's `Utils.murmur2`: the 32-bit MurmurHash2 of `data` with Kafka's seed.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;
    #[allow(clippy::cast_possible_truncation)] // Kafka mixes in the length as a 32-bit int
    let mut h: u32 = SEED ^ (data.len() as u32);
    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = chunks.remainder();
    if !tail.is_empty() {
        if tail.len() == 3 {
            h ^= u32::from(tail[2]) << 16;
        }
        if tail.len() >= 2 {
            h ^= u32::from(tail[1]) << 8;
        }
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    i32::from_ne_bytes(h.to_ne_bytes())
}

/// The partition of `partitions` a record keyed `key` goes to with Kafka's default
/// partitioner: `(murmur2(key) & 0x7fffffff) % partitions`.
pub fn partition_for(key: &[u8], partitions: i32) -> i32 {
    if partitions <= 1 {
        return 0;
    }
    (murmur2(key) & 0x7fff_ffff) % partitions
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur2_is_kafkas() {
        // Kafka's own cases (clients/src/test/java/org/apache/kafka/common/utils/UtilsTest.java).
        let cases: [(&[u8], i32); 6] = [
            (b"21", -973_932_308),
            (b"foobar", -790_332_482),
            (b"a-little-bit-long-string", -985_981_536),
            (b"a-little-bit-longer-string", -1_486_304_829),
            (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58_897_971),
            (b"abc", 479_470_107),
        ];
        for (data, expected) in cases {
            assert_eq!(murmur2(data), expected, "{}", String::from_utf8_lossy(data));
        }
    }

    #[test]
    fn one_partition_takes_everything() {
        assert_eq!(partition_for(b"tenant-01", 1), 0);
        assert_eq!(partition_for(b"", 0), 0);
        let spread: std::collections::HashSet<i32> =
            (0..60).map(|i| partition_for(format!("tenant-{i:02}").as_bytes(), 6)).collect();
        assert_eq!(spread.len(), 6, "tenants spread over every partition");
    }
}
