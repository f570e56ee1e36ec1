//! Property test of the log store: random appends (every codec, keys present
//! or absent, empty and non-empty values, random timestamps), random reads,
//! clean reopens and simulated crashes on stores with small segments and
//! small index intervals, checked after every operation against a model of
//! every acknowledged record.
//!
//! Cases default to 48; `PROPTEST_CASES=N` overrides.

use std::sync::Arc;

use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sluice::log::{FlushPolicy, LogStore, Partition, TopicConfig};

use crate::common;
use crate::common::{
    COMPRESSIONS, Rec, Stored, decode_batches, encode_batch, quiet, read_all_with,
};

const TOPIC: &str = "props";

/// A record as generated: the value's bytes are derived from `seed` so that
/// shrinking works on lengths, not on hundreds of individual bytes.
#[derive(Debug, Clone)]
struct GenRec {
    key: Option<Vec<u8>>,
    value_len: usize,
    seed: u64,
    timestamp: i64,
}

impl GenRec {
    fn rec(&self) -> Rec {
        let mut rng = SmallRng::seed_from_u64(self.seed);
        let value: Vec<u8> = if self.seed.is_multiple_of(3) {
            // Compressible.
            (0..self.value_len).map(|i| b"abcab"[i % 5]).collect()
        } else {
            (0..self.value_len).map(|_| rng.random()).collect()
        };
        Rec {
            key: self.key.clone(),
            value,
            timestamp: self.timestamp,
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    /// One records blob of one to three batches (a producer may send
    /// several batches for a partition in one request), each with its own
    /// codec.
    Append {
        partition: usize,
        batches: Vec<(usize, Vec<GenRec>)>,
    },
    Read {
        partition: usize,
        /// Picks an offset in `[log start, high-water mark]`.
        at: u64,
        max_bytes: usize,
    },
    /// Clean close, then open again.
    Reopen,
    /// `abandon_without_closing` (no flush, no index files, no recovery
    /// points), then open again.
    Crash,
}

#[derive(Debug, Clone)]
struct Case {
    partitions: usize,
    segment_bytes: u64,
    index_interval_bytes: u32,
    flush: FlushPolicy,
    /// Each op comes with a seed for the checks that follow it.
    ops: Vec<(Op, u64)>,
}

fn timestamp() -> impl Strategy<Value = i64> {
    prop_oneof![
        3 => 0i64..5_000,
        1 => 1_700_000_000_000i64..1_700_000_005_000,
    ]
}

fn gen_rec() -> impl Strategy<Value = GenRec> {
    (
        prop::option::of(prop::collection::vec(any::<u8>(), 0..12)),
        prop_oneof![1 => Just(0usize), 6 => 0usize..300],
        any::<u64>(),
        timestamp(),
    )
        .prop_map(|(key, value_len, seed, timestamp)| GenRec {
            key,
            value_len,
            seed,
            timestamp,
        })
}

fn batch() -> impl Strategy<Value = (usize, Vec<GenRec>)> {
    (
        0usize..COMPRESSIONS.len(),
        prop::collection::vec(gen_rec(), 1..50),
    )
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        10 => (0usize..4, prop::collection::vec(batch(), 1..=3)).prop_map(
            |(partition, batches)| Op::Append { partition, batches }
        ),
        4 => (0usize..4, any::<u64>(), prop_oneof![0usize..200, 0usize..100_000]).prop_map(
            |(partition, at, max_bytes)| Op::Read {
                partition,
                at,
                max_bytes
            }
        ),
        1 => Just(Op::Reopen),
        1 => Just(Op::Crash),
    ]
}

fn flush_policy() -> impl Strategy<Value = FlushPolicy> {
    prop_oneof![
        Just(FlushPolicy::Os),
        Just(FlushPolicy::EveryAppend),
        (2u64..10).prop_map(FlushPolicy::Messages),
        Just(FlushPolicy::Interval(std::time::Duration::from_secs(3600))),
    ]
}

fn case() -> impl Strategy<Value = Case> {
    (
        1usize..=4,
        1024u64..=65_536,
        64u32..=4096,
        flush_policy(),
        prop::collection::vec((op(), any::<u64>()), 1..40),
    )
        .prop_map(
            |(partitions, segment_bytes, index_interval_bytes, flush, ops)| Case {
                partitions,
                segment_bytes,
                index_interval_bytes,
                flush,
                ops,
            },
        )
}

fn config() -> ProptestConfig {
    let cases = common::env_or("PROPTEST_CASES", 48);
    ProptestConfig {
        cases,
        // Only tests/*.rs may be written by this suite: print failures
        // (with the minimal case) instead of saving regression files.
        failure_persistence: None,
        max_shrink_time: 60_000,
        ..ProptestConfig::default()
    }
}

/// The model: every acknowledged record of each partition, in offset order
/// from offset 0 (nothing here deletes segments, so the log starts at 0).
type Model = Vec<Vec<Rec>>;

fn partitions(store: &LogStore, n: usize) -> Vec<Arc<Partition>> {
    let t = store.topic(TOPIC).expect("topic exists");
    assert_eq!(t.partition_count(), n, "partition count after reopen");
    (0..n as i32).map(|i| t.partition(i).unwrap()).collect()
}

/// The brute-force answer to `offset_for_time(t)`.
fn expected_offset_for_time(model: &[Rec], t: i64) -> Option<(i64, i64)> {
    model
        .iter()
        .enumerate()
        .find(|(_, r)| r.timestamp >= t)
        .map(|(o, r)| (o as i64, r.timestamp))
}

fn check_records(got: &[Stored], model: &[Rec], from: i64, what: &str) {
    for (i, g) in got.iter().enumerate() {
        let offset = from + i as i64;
        assert_eq!(g.offset, offset, "{what}: offsets must be contiguous");
        let want = model.get(offset as usize).unwrap_or_else(|| {
            panic!(
                "{what}: offset {offset} was never acknowledged (model has {})",
                model.len()
            )
        });
        assert_eq!(&g.rec(), want, "{what}: record at offset {offset}");
    }
}

/// Every invariant over the whole store.
fn check_all(parts: &[Arc<Partition>], model: &Model, seed: u64, step: &str) {
    let mut rng = SmallRng::seed_from_u64(seed);
    for (i, p) in parts.iter().enumerate() {
        let m = &model[i];
        let what = format!("{step}: partition {i}");
        assert_eq!(p.log_start_offset(), 0, "{what}: log start");
        assert_eq!(
            p.high_watermark(),
            m.len() as i64,
            "{what}: high-water mark"
        );
        let info = p.info();
        assert_eq!(info.high_watermark, m.len() as i64, "{what}: info()");
        // A full read, in chunks that vary from "one batch at a time" up.
        let chunk = [0usize, 1, 700, 5_000, 1 << 20][rng.random_range(0..5)];
        let got = read_all_with(p, chunk);
        assert_eq!(
            got.len(),
            m.len(),
            "{what}: full read (chunk {chunk}) returned a different number of records"
        );
        check_records(&got, m, 0, &what);
        // Time lookups: existing timestamps (exact hits), their neighbours,
        // and values below/above everything.
        for _ in 0..4 {
            let t = match (rng.random_range(0..4), m.is_empty()) {
                (0, false) | (1, false) => {
                    let r = &m[rng.random_range(0..m.len())];
                    r.timestamp + rng.random_range(-1..=1)
                }
                (2, _) => rng.random_range(0..6_000),
                _ => [i64::MIN, -1, 0, 1_700_000_002_500, i64::MAX][rng.random_range(0..5)],
            };
            let want = expected_offset_for_time(m, t);
            let got = p
                .offset_for_time(t)
                .unwrap_or_else(|e| panic!("{what}: offset_for_time({t}) failed: {e}"));
            assert_eq!(got, want, "{what}: offset_for_time({t})");
        }
    }
}

fn open(dir: &std::path::Path) -> LogStore {
    LogStore::open(dir, quiet()).unwrap_or_else(|e| panic!("opening the store failed: {e}"))
}

fn run_case(case: &Case) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = TopicConfig {
        segment_bytes: case.segment_bytes,
        index_interval_bytes: case.index_interval_bytes,
        retention_ms: -1,
        ..TopicConfig::default()
    };
    cfg.set_flush_policy(case.flush);
    let mut store = open(dir.path());
    store
        .create_topic(TOPIC, case.partitions as i64, cfg)
        .unwrap();
    let mut parts = partitions(&store, case.partitions);
    let mut model: Model = vec![Vec::new(); case.partitions];

    for (step, (op, seed)) in case.ops.iter().enumerate() {
        let label = format!(
            "step {step} ({})",
            match op {
                Op::Append { .. } => "append",
                Op::Read { .. } => "read",
                Op::Reopen => "reopen",
                Op::Crash => "crash",
            }
        );
        match op {
            Op::Append { partition, batches } => {
                let pi = partition % case.partitions;
                let mut recs: Vec<Rec> = Vec::new();
                let mut bytes = bytes::BytesMut::new();
                for (compression, records) in batches {
                    let batch: Vec<Rec> = records.iter().map(GenRec::rec).collect();
                    bytes.extend_from_slice(&encode_batch(&batch, COMPRESSIONS[*compression]));
                    recs.extend(batch);
                }
                let info = parts[pi]
                    .append(&mut bytes)
                    .unwrap_or_else(|e| panic!("{label}: append to partition {pi} failed: {e}"));
                let base = model[pi].len() as i64;
                assert_eq!(info.base_offset, base, "{label}: base offset");
                assert_eq!(
                    info.last_offset,
                    base + recs.len() as i64 - 1,
                    "{label}: last offset"
                );
                assert_eq!(
                    info.record_count,
                    recs.len() as i64,
                    "{label}: record count"
                );
                model[pi].extend(recs);
            }
            Op::Read {
                partition,
                at,
                max_bytes,
            } => {
                let pi = partition % case.partitions;
                let p = &parts[pi];
                let m = &model[pi];
                let hw = m.len() as i64;
                let offset = (*at % (hw as u64 + 1)) as i64;
                let what = format!("{label}: read({offset}, {max_bytes}) of partition {pi}");
                // Half the reads go through `read_into` with a buffer that
                // already holds bytes, which must be left alone.
                let prefix = if at % 2 == 0 { 0 } else { (at % 97) as usize };
                let (bytes, info) = if prefix == 0 {
                    p.read(offset, *max_bytes)
                        .unwrap_or_else(|e| panic!("{what} failed: {e}"))
                } else {
                    let mut buf = vec![0xA5u8; prefix];
                    let info = p
                        .read_into(offset, *max_bytes, &mut buf)
                        .unwrap_or_else(|e| panic!("{what} via read_into failed: {e}"));
                    assert!(
                        buf[..prefix].iter().all(|&b| b == 0xA5),
                        "{what}: read_into changed the caller's bytes"
                    );
                    (bytes::Bytes::copy_from_slice(&buf[prefix..]), info)
                };
                assert_eq!(info.high_watermark, hw, "{what}: ReadInfo.high_watermark");
                assert_eq!(
                    info.log_start_offset, 0,
                    "{what}: ReadInfo.log_start_offset"
                );
                assert_eq!(info.bytes, bytes.len(), "{what}: ReadInfo.bytes");
                if offset == hw {
                    assert!(
                        bytes.is_empty(),
                        "{what}: a read at the high-water mark returns nothing"
                    );
                    assert_eq!(info.next_offset, hw, "{what}: next offset");
                } else {
                    assert!(
                        !bytes.is_empty(),
                        "{what}: returned nothing below the high-water mark"
                    );
                    let batches = decode_batches(&bytes, &what);
                    let first = batches[0].header;
                    assert!(
                        first.base_offset <= offset && offset <= first.last_offset(),
                        "{what}: first batch {}..={} does not contain the offset",
                        first.base_offset,
                        first.last_offset()
                    );
                    assert!(
                        bytes.len() <= *max_bytes || batches.len() == 1,
                        "{what}: {} bytes in {} batches exceed max_bytes",
                        bytes.len(),
                        batches.len()
                    );
                    let got: Vec<Stored> = batches.into_iter().flat_map(|b| b.records).collect();
                    check_records(&got, m, first.base_offset, &what);
                    let last = got.last().unwrap().offset;
                    assert!(
                        last < hw,
                        "{what}: returned offset {last} at or past the high-water mark"
                    );
                    assert_eq!(info.next_offset, last + 1, "{what}: next offset");
                }
            }
            Op::Reopen => {
                drop(parts);
                store
                    .close()
                    .unwrap_or_else(|e| panic!("{label}: close failed: {e}"));
                drop(store);
                store = open(dir.path());
                parts = partitions(&store, case.partitions);
            }
            Op::Crash => {
                drop(parts);
                store.abandon_without_closing();
                store = open(dir.path());
                parts = partitions(&store, case.partitions);
            }
        }
        check_all(&parts, &model, *seed, &label);
    }
    // Appends keep working at the right offsets after whatever happened.
    for (pi, p) in parts.iter().enumerate() {
        let rec = Rec {
            key: None,
            value: b"last".to_vec(),
            timestamp: 1,
        };
        let info = p
            .append(&mut encode_batch(
                std::slice::from_ref(&rec),
                COMPRESSIONS[0],
            ))
            .unwrap();
        assert_eq!(
            info.base_offset,
            model[pi].len() as i64,
            "final append to partition {pi}"
        );
        model[pi].push(rec);
    }
    check_all(&parts, &model, 7, "final");
    drop(parts);
    store.close().unwrap();
}

proptest! {
    #![proptest_config(config())]

    /// After every operation, every acknowledged record reads back with its
    /// offset, key, value and timestamp, in order without gaps or
    /// duplicates; reads start at the batch holding the requested offset;
    /// time lookups agree with brute force.
    #[test]
    fn random_appends_reads_reopens_and_crashes_keep_every_acknowledged_record(case in case()) {
        run_case(&case);
    }
}

/// Records without timestamps (Kafka's `NO_TIMESTAMP`, -1) must not make a
/// segment look infinitely old to time-based retention: like Kafka, the store
/// documents that such segments are aged by the file's time instead
/// (`Segment::created_ms`, and `Segment::open` substitutes the file's mtime).
/// A freshly written segment must survive a retention pass well within
/// `retention.ms`, before and after a reopen alike.
#[test]
fn time_retention_keeps_fresh_segments_whose_records_have_no_timestamp() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = TopicConfig {
        segment_bytes: 1024,
        retention_ms: 3_600_000,
        ..TopicConfig::default()
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let no_ts = |tag: &str| -> Vec<Rec> {
        (0..5)
            .map(|i| Rec {
                key: None,
                value: format!("{tag}-{i}-{}", "x".repeat(100)).into_bytes(),
                timestamp: -1,
            })
            .collect()
    };
    let mut model = Vec::new();
    {
        let store = open(dir.path());
        store.create_topic(TOPIC, 1, cfg).unwrap();
        let p = store.partition(TOPIC, 0).unwrap();
        for i in 0..6 {
            let recs = no_ts(&format!("b{i}"));
            p.append(&mut encode_batch(&recs, COMPRESSIONS[0])).unwrap();
            model.extend(recs);
        }
        assert!(p.info().segments >= 2);
        let out = p.enforce_retention(now).unwrap();
        assert_eq!(
            (out.segments_deleted, p.log_start_offset()),
            (0, 0),
            "a retention pass right after writing deleted segments of records without timestamps \
             (retention.ms is one hour): {out:?}"
        );
        store.close().unwrap();
    }
    let store = open(dir.path());
    let p = store.partition(TOPIC, 0).unwrap();
    let out = p.enforce_retention(now).unwrap();
    assert_eq!(out.segments_deleted, 0, "after a reopen: {out:?}");
    let got: Vec<Rec> = common::read_all(&p).iter().map(|s| s.rec()).collect();
    assert_eq!(got, model);
}
