//! Choosing a partition for a record the way Kafka's Java client does.
//!
//! Keyed records go to `to_positive(murmur2(key)) % partitions`, bit-for-bit
//! the same as `org.apache.kafka.clients.producer.internals.BuiltInPartitioner`,
//! so that a key produced by `sluice produce` lands on the same partition as
//! the same key produced by a Java, librdkafka (`murmur2_random`) or
//! kafka-python client. Unkeyed records are spread either "sticky" (one
//! partition per batch, like the Java client since KIP-480) or round-robin.
//!
//! This module is pure computation: it never does I/O and never uses
//! randomness, so a run can be replayed exactly.

/// Kafka's 32-bit murmur2 hash, exactly as `org.apache.kafka.common.utils.Utils.murmur2`.
///
/// The Java code works on signed `int`s with `>>>` (logical shift); doing
/// the arithmetic on `u32` with wrapping multiplication gives identical bits,
/// which we reinterpret as `i32` at the end.
pub fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;

    // Java takes `data.length` as an int; truncating matches it for every
    // length Java can represent.
    let length = data.len() as u32;
    let mut h: u32 = SEED ^ length;

    let mut chunks = data.chunks_exact(4);
    for chunk in &mut chunks {
        let mut k = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }

    // The Java `switch` falls through from case 3 to 2 to 1, and only the
    // last case multiplies; a zero-length tail does not multiply at all.
    let tail = chunks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }

    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// Kafka's `Utils.toPositive`: clears the sign bit (it is not `abs`, so
/// `i32::MIN` maps to 0 rather than overflowing).
pub fn to_positive(n: i32) -> i32 {
    n & 0x7fff_ffff
}

/// The partition Kafka's default partitioner assigns to `key`.
///
/// # Panics
///
/// If `num_partitions` is 0. A topic always has at least one partition, so
/// a zero here is a bug in the caller, not bad input.
pub fn partition_for_key(key: &[u8], num_partitions: u32) -> u32 {
    assert!(num_partitions > 0, "a topic has at least one partition");
    // to_positive makes the hash non-negative, so the cast is lossless.
    (to_positive(murmur2(key)) as u32) % num_partitions
}

/// How records without a key are spread over partitions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UnkeyedStrategy {
    /// Stay on one partition until the caller finishes a batch, then move on
    /// to the next partition in rotation. Fewer, larger batches: this is
    /// what the Java client has done by default since Kafka 2.4 (KIP-480).
    #[default]
    Sticky,
    /// Move to the next partition for every record. Even spread, but many
    /// small batches when records are produced one at a time.
    RoundRobin,
}

/// Assigns partitions to records: murmur2 for keyed records, the chosen
/// [`UnkeyedStrategy`] for the rest.
///
/// The partition count is passed on every call rather than fixed at
/// construction, so a topic that gains partitions needs no new partitioner.
/// Unlike the Java client, the first unkeyed partition is not random but
/// `start % partitions`, so runs are reproducible.
#[derive(Debug, Clone)]
pub struct Partitioner {
    strategy: UnkeyedStrategy,
    /// Rotation counter for unkeyed records; reduced modulo the partition
    /// count at use time.
    counter: u32,
}

impl Partitioner {
    /// A partitioner whose first unkeyed record goes to partition
    /// `start % partitions`.
    pub fn new(strategy: UnkeyedStrategy, start: u32) -> Self {
        Self {
            strategy,
            counter: start,
        }
    }

    /// The strategy used for unkeyed records.
    pub fn strategy(&self) -> UnkeyedStrategy {
        self.strategy
    }

    /// The partition for a record with `key` in a topic of `num_partitions`.
    ///
    /// # Panics
    ///
    /// If `num_partitions` is 0 (see [`partition_for_key`]).
    pub fn partition(&mut self, key: Option<&[u8]>, num_partitions: u32) -> u32 {
        assert!(num_partitions > 0, "a topic has at least one partition");
        match (key, self.strategy) {
            (Some(key), _) => partition_for_key(key, num_partitions),
            (None, UnkeyedStrategy::Sticky) => self.counter % num_partitions,
            (None, UnkeyedStrategy::RoundRobin) => {
                let p = self.counter % num_partitions;
                self.counter = self.counter.wrapping_add(1);
                p
            }
        }
    }

    /// Tells a sticky partitioner that the batch for the current partition
    /// was sent, so the next unkeyed record starts a batch on the next
    /// partition. Does nothing for round-robin.
    pub fn on_batch_complete(&mut self) {
        if self.strategy == UnkeyedStrategy::Sticky {
            self.counter = self.counter.wrapping_add(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The published vectors from Kafka's `UtilsTest.testMurmur2`.
    #[test]
    fn murmur2_matches_kafka_test_vectors() {
        let cases: &[(&str, i32)] = &[
            ("21", -973932308),
            ("foobar", -790332482),
            ("a-little-bit-long-string", -985981536),
            ("a-little-bit-longer-string", -1486304829),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58897971,
            ),
            ("abc", 479470107),
        ];
        for &(input, expected) in cases {
            assert_eq!(murmur2(input.as_bytes()), expected, "murmur2({input:?})");
        }
    }

    #[test]
    fn murmur2_covers_every_tail_length() {
        // Lengths 0..=7 exercise the empty tail and each fall-through case;
        // the values only have to be stable and distinct.
        let data = b"abcdefg";
        let hashes: Vec<i32> = (0..=data.len()).map(|n| murmur2(&data[..n])).collect();
        for (i, a) in hashes.iter().enumerate() {
            for b in &hashes[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn to_positive_clears_only_the_sign_bit() {
        assert_eq!(to_positive(-1), i32::MAX);
        assert_eq!(to_positive(i32::MIN), 0);
        assert_eq!(to_positive(42), 42);
        assert_eq!(to_positive(-973932308), -973932308 & 0x7fffffff);
    }

    #[test]
    fn keyed_partition_is_murmur2_modulo_partitions() {
        // to_positive(-790332482) = 1357151166; 1357151166 % 12 = 6.
        assert_eq!(partition_for_key(b"foobar", 12), 6);
        assert_eq!(partition_for_key(b"foobar", 1), 0);
        let mut p = Partitioner::new(UnkeyedStrategy::RoundRobin, 0);
        for _ in 0..5 {
            assert_eq!(p.partition(Some(b"foobar"), 12), 6);
        }
    }

    #[test]
    fn sticky_stays_until_batch_complete_then_rotates() {
        let mut p = Partitioner::new(UnkeyedStrategy::Sticky, 2);
        assert_eq!(p.partition(None, 3), 2);
        assert_eq!(p.partition(None, 3), 2);
        // Keyed records in between do not move the sticky partition.
        p.partition(Some(b"k"), 3);
        assert_eq!(p.partition(None, 3), 2);
        p.on_batch_complete();
        assert_eq!(p.partition(None, 3), 0);
        p.on_batch_complete();
        assert_eq!(p.partition(None, 3), 1);
    }

    #[test]
    fn round_robin_moves_every_record() {
        let mut p = Partitioner::new(UnkeyedStrategy::RoundRobin, 0);
        let got: Vec<u32> = (0..7).map(|_| p.partition(None, 3)).collect();
        assert_eq!(got, [0, 1, 2, 0, 1, 2, 0]);
        // Batch completion is irrelevant to round-robin.
        p.on_batch_complete();
        assert_eq!(p.partition(None, 3), 1);
    }

    #[test]
    #[should_panic(expected = "at least one partition")]
    fn zero_partitions_is_a_caller_bug() {
        partition_for_key(b"k", 0);
    }
}
