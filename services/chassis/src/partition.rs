//! The partition of a key: FNV-1a 64-bit of the key's UTF-8 bytes, modulo the
//! partition count. Every stage and every tool computes it here, so they agree;
//! changing it re-partitions every stored stream.

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

pub fn fnv1a64(bytes: &[u8]) -> u64 {
    bytes.iter().fold(FNV_OFFSET, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(FNV_PRIME)
    })
}

/// The partition `key` belongs to; `partitions` of 0 is treated as 1.
pub fn partition_of(key: &str, partitions: u32) -> u32 {
    let n = u64::from(partitions.max(1));
    // The remainder is below `partitions`, so it fits in u32.
    (fnv1a64(key.as_bytes()) % n) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv1a64_matches_the_published_test_vectors() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn partition_is_stable_and_in_range() {
        for key in ["EWR", "JFK", "LGA", "N14228", ""] {
            let p = partition_of(key, 8);
            assert!(p < 8);
            assert_eq!(p, partition_of(key, 8));
        }
        assert_eq!(partition_of("anything", 0), 0);
        assert_eq!(partition_of("anything", 1), 0);
    }
}
