//! Log compaction (`cleanup.policy=compact`) against a model of Kafka's
//! semantics: a property test of the cleaner (random keyed appends with
//! tombstones under every codec, cleaning passes, reopens and simulated
//! crashes) and a crash test that SIGKILLs a process while it appends and
//! cleans.
//!
//! The model is the full log as appended. What a compacted log must be:
//! - a subsequence of it (same record at the same offset, offsets never
//!   move, the high-water mark and log start never change);
//! - replaying it (a put sets the key, a tombstone removes it) ends in the
//!   same table as replaying the full log;
//! - below the cleaner's first dirty offset, at most one record per key.
//!
//! Env: `PROPTEST_CASES` (default 32), `SLUICE_COMPACTION_CRASHES`
//! (default 12), `SLUICE_CRASH_SEED`.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::records::RecordBatchDecoder;
use proptest::prelude::*;
use proptest::test_runner::Config as ProptestConfig;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sluice::log::{
    BatchHeader, CleanupPolicy, FlushPolicy, LogError, LogStore, Partition, TopicConfig,
};
use sluice::producer::{BatchBuilder, Compression};

use crate::common;
use crate::common::{COMPRESSIONS, quiet};

pub(crate) const TOPIC: &str = "compacted";

/// One record of the model or of the log: `None` value is a tombstone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Kv {
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

pub(crate) fn config(delete_retention_ms: i64, dirty_ratio: f64) -> TopicConfig {
    TopicConfig {
        segment_bytes: 1024,
        index_interval_bytes: 128,
        retention_ms: -1,
        cleanup_policy: CleanupPolicy::COMPACT,
        delete_retention_ms,
        min_cleanable_dirty_ratio: dirty_ratio,
        ..TopicConfig::default()
    }
}

pub(crate) fn encode(records: &[Kv], compression: Compression) -> Vec<u8> {
    let mut b = BatchBuilder::new(compression);
    for (i, r) in records.iter().enumerate() {
        b.push_record(
            Some(&r.key),
            r.value.as_deref(),
            1_700_000_000_000 + i as i64,
            &[],
        );
    }
    b.finish().expect("encodes").to_vec()
}

/// Every record of the partition with its offset, read as a Kafka consumer
/// would: batch by batch from the log start, empty batches and gaps
/// included, each batch's CRC checked by the decoder.
pub(crate) fn read_log(p: &Partition) -> BTreeMap<i64, Kv> {
    let what = format!("{}-{}", p.topic(), p.id());
    let hw = p.high_watermark();
    let mut next = p.log_start_offset();
    let mut out = BTreeMap::new();
    while next < hw {
        let mut buf = Vec::new();
        let info = p
            .read_into(next, 64 << 10, &mut buf)
            .unwrap_or_else(|e| panic!("{what}: read at {next}: {e}"));
        assert!(
            info.next_offset > next,
            "{what}: read at {next} made no progress"
        );
        let mut pos = 0;
        while pos < buf.len() {
            let h = BatchHeader::parse(&buf[pos..]).expect("batch header");
            let mut one = Bytes::copy_from_slice(&buf[pos..pos + h.total_len()]);
            let set = RecordBatchDecoder::decode(&mut one)
                .unwrap_or_else(|e| panic!("{what}: batch at {}: {e:#}", h.base_offset));
            for r in set.records {
                assert!(
                    (h.base_offset..=h.last_offset()).contains(&r.offset),
                    "{what}: record {} outside its batch {}..={}",
                    r.offset,
                    h.base_offset,
                    h.last_offset()
                );
                let kv = Kv {
                    key: r.key.expect("compacted records have keys").to_vec(),
                    value: r.value.map(|v| v.to_vec()),
                };
                assert!(
                    out.insert(r.offset, kv).is_none(),
                    "{what}: offset {} twice",
                    r.offset
                );
            }
            pos += h.total_len();
        }
        next = info.next_offset;
    }
    out
}

fn replay<'a>(records: impl Iterator<Item = &'a Kv>) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut table = BTreeMap::new();
    for r in records {
        match &r.value {
            Some(v) => table.insert(r.key.clone(), v.clone()),
            None => table.remove(&r.key),
        };
    }
    table
}

/// The compacted-log properties (see the module doc) of `p` against `model`.
pub(crate) fn check(p: &Partition, model: &[Kv], what: &str) -> BTreeMap<i64, Kv> {
    assert_eq!(
        p.high_watermark(),
        model.len() as i64,
        "{what}: high-water mark"
    );
    assert_eq!(p.log_start_offset(), 0, "{what}: log start");
    let log = read_log(p);
    for (&offset, kv) in &log {
        assert_eq!(
            Some(kv),
            model.get(offset as usize),
            "{what}: record at offset {offset} is not the one appended there"
        );
    }
    assert_eq!(
        replay(log.values()),
        replay(model.iter()),
        "{what}: replaying the compacted log gives another table than the full log"
    );
    let first_dirty = p.first_dirty_offset();
    let mut seen = HashMap::new();
    for (&offset, kv) in log.range(..first_dirty) {
        if let Some(prev) = seen.insert(kv.key.clone(), offset) {
            panic!(
                "{what}: key {:?} at offsets {prev} and {offset}, both below the first dirty offset {first_dirty}",
                String::from_utf8_lossy(&kv.key)
            );
        }
    }
    log
}

#[derive(Debug, Clone)]
enum Op {
    /// One batch: (key index, tombstone) per record, and a codec.
    Append(Vec<(u8, bool)>, usize),
    /// A cleaner pass that honours the dirty ratio, or a forced one.
    Clean {
        force: bool,
    },
    Reopen,
    Crash,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (prop::collection::vec((0u8..12, prop::bool::weighted(0.15)), 1..8), 0..COMPRESSIONS.len())
            .prop_map(|(recs, c)| Op::Append(recs, c)),
        2 => any::<bool>().prop_map(|force| Op::Clean { force }),
        1 => Just(Op::Reopen),
        1 => Just(Op::Crash),
    ]
}

fn run_ops(ops: &[Op], delete_retention_ms: i64, dirty_ratio: f64) -> sluice::log::PartitionInfo {
    let dir = tempfile::tempdir().unwrap();
    let mut store = LogStore::open(dir.path(), quiet()).unwrap();
    store
        .create_topic(TOPIC, 1, config(delete_retention_ms, dirty_ratio))
        .unwrap();
    let mut model: Vec<Kv> = Vec::new();
    for (step, op) in ops.iter().enumerate() {
        let what = format!("step {step} ({op:?})");
        let p = store.partition(TOPIC, 0).unwrap();
        match op {
            Op::Append(recs, c) => {
                let batch: Vec<Kv> = recs
                    .iter()
                    .enumerate()
                    .map(|(i, &(k, tomb))| Kv {
                        key: format!("key-{k}").into_bytes(),
                        value: (!tomb).then(|| {
                            format!("v{}-{i}-{}", model.len(), "x".repeat(k as usize * 9))
                                .into_bytes()
                        }),
                    })
                    .collect();
                let info = p.append(&mut encode(&batch, COMPRESSIONS[*c])).unwrap();
                assert_eq!(info.base_offset, model.len() as i64, "{what}");
                model.extend(batch);
            }
            Op::Clean { force } => {
                let before = read_log(&p);
                let outcome = p
                    .clean(
                        sluice::common::now_ms(),
                        &sluice::log::CleanerOptions {
                            io_max_bytes_per_second: None,
                            ..Default::default()
                        },
                        *force,
                    )
                    .unwrap_or_else(|e| panic!("{what}: {e}"));
                let after = check(&p, &model, &what);
                if let Some(o) = outcome {
                    assert_eq!(
                        o.records_removed as usize,
                        before.len() - after.len(),
                        "{what}: records the pass says it removed"
                    );
                }
            }
            Op::Reopen | Op::Crash => {
                let before = read_log(&p);
                drop(p);
                if matches!(op, Op::Crash) {
                    store.abandon_without_closing();
                } else {
                    store.close().unwrap();
                    drop(store);
                }
                store = LogStore::open(dir.path(), quiet()).unwrap();
                let p = store.partition(TOPIC, 0).unwrap();
                assert_eq!(
                    read_log(&p),
                    before,
                    "{what}: the log changed across a reopen"
                );
            }
        }
        let p = store.partition(TOPIC, 0).unwrap();
        check(&p, &model, &what);
    }
    // A last forced pass over everything sealed must leave one record per
    // key below the first dirty offset (checked) and never grow the log.
    let p = store.partition(TOPIC, 0).unwrap();
    let before = read_log(&p).len();
    p.clean(sluice::common::now_ms(), &Default::default(), true)
        .unwrap();
    let after = check(&p, &model, "final pass");
    assert!(after.len() <= before);
    p.info()
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: common::env_or("PROPTEST_CASES", 32),
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_cleaner_keeps_the_last_record_of_every_key(
        ops in prop::collection::vec(op(), 1..60),
        keep_tombstones in any::<bool>(),
        dirty_ratio in prop_oneof![Just(0.0), Just(0.5), Just(0.9)],
    ) {
        run_ops(&ops, if keep_tombstones { 86_400_000 } else { 0 }, dirty_ratio);
    }
}

/// A long deterministic run that surely rolls many segments and cleans
/// them several times, with every key overwritten many times.
#[test]
fn many_passes_over_many_overwrites_compact_to_one_record_per_key() {
    let mut ops = Vec::new();
    for i in 0..400usize {
        ops.push(Op::Append(
            (0..5)
                .map(|j| (((i * 5 + j) % 12) as u8, (i + j) % 17 == 0))
                .collect(),
            i % COMPRESSIONS.len(),
        ));
        if i % 50 == 49 {
            ops.push(Op::Clean {
                force: i % 100 == 99,
            });
        }
    }
    ops.push(Op::Reopen);
    let info = run_ops(&ops, 0, 0.5);
    // 2,000 records of ~60 bytes went through 1 KiB segments (over 100 of
    // them); cleaned segments are merged, so the files follow the live
    // data, not the history.
    assert!(
        info.segments <= 12,
        "{} segments hold {} bytes of compacted log",
        info.segments,
        info.size_bytes
    );
}

#[test]
fn keyless_records_are_refused_by_a_compacted_topic_and_nothing_is_appended() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(dir.path(), quiet()).unwrap();
    store.create_topic(TOPIC, 1, config(0, 0.5)).unwrap();
    let p = store.partition(TOPIC, 0).unwrap();
    let mut b = BatchBuilder::new(Compression::Lz4);
    b.push(Some(b"k"), b"v", 1);
    b.push(None, b"no key", 2);
    let err = p.append(&mut b.finish().unwrap()).unwrap_err();
    assert!(
        matches!(&err, LogError::InvalidBatch { .. }) && err.to_string().contains("has no key"),
        "{err}"
    );
    assert_eq!(p.high_watermark(), 0);
}

// ---------------------------------------------------------------------------
// SIGKILL while cleaning.

const CHILD_DIR_ENV: &str = "SLUICE_COMPACTION_CHILD_DIR";
const KEYS: u64 = 40;

/// The record at `offset` of the crash test's log: everything derives from
/// the offset, so any record found can be checked.
fn crash_record(offset: u64) -> Kv {
    Kv {
        key: format!("key-{}", (offset * 7919) % KEYS).into_bytes(),
        value: (offset % 13 != 5)
            .then(|| format!("value-{offset}-{}", "v".repeat((offset % 50) as usize)).into_bytes()),
    }
}

fn crash_config() -> TopicConfig {
    let mut cfg = config(0, 0.3);
    cfg.segment_bytes = 4096;
    cfg.set_flush_policy(FlushPolicy::EveryAppend);
    cfg
}

/// The child: appends batches of the records `crash_record` defines and
/// runs a cleaning pass every few appends, until killed.
#[test]
fn compaction_child() {
    let Some(dir) = std::env::var_os(CHILD_DIR_ENV) else {
        return;
    };
    let store = LogStore::open(&dir, quiet()).expect("child: open");
    let topic = match store.topic(TOPIC) {
        Ok(t) => t,
        Err(_) => store
            .create_topic(TOPIC, 1, crash_config())
            .expect("child: create"),
    };
    let p = topic.partition(0).unwrap();
    let options = sluice::log::CleanerOptions {
        io_max_bytes_per_second: None,
        ..Default::default()
    };
    let mut out = std::io::stdout().lock();
    writeln!(out, "\nREADY").unwrap();
    let started = Instant::now();
    let mut appends = 0u64;
    while started.elapsed() < Duration::from_secs(30) {
        if appends >= 4_000 {
            // Bounds the parent's checks; wait to be killed.
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        let next = p.high_watermark() as u64;
        let batch: Vec<Kv> = (next..next + 1 + next % 9).map(crash_record).collect();
        let info = p
            .append(&mut encode(&batch, COMPRESSIONS[(next % 5) as usize]))
            .expect("child: append");
        writeln!(out, "ACK {}", info.last_offset).unwrap();
        appends += 1;
        if appends.is_multiple_of(8) {
            p.clean(
                sluice::common::now_ms(),
                &options,
                appends.is_multiple_of(16),
            )
            .expect("child: clean");
        }
    }
    store.abandon_without_closing();
}

#[test]
fn sigkill_while_cleaning_keeps_a_valid_compacted_log() {
    if std::env::var_os(CHILD_DIR_ENV).is_some() {
        return;
    }
    let kills: u64 = common::env_or("SLUICE_COMPACTION_CRASHES", 12);
    let seed = common::crash_seed();
    println!("compaction crash test: seed {seed}, {kills} kills");
    let mut rng = SmallRng::seed_from_u64(seed);
    let exe = std::env::current_exe().unwrap();
    let module = module_path!().split_once("::").map_or("", |(_, m)| m);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut acked = 0i64;
    let mut records_removed = 0usize;
    for run in 0..kills {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                &format!("{module}::compaction_child"),
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DIR_ENV, dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawning the child");
        let stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut last = -1i64;
            for line in BufReader::new(stdout).split(b'\n').map_while(Result::ok) {
                if let Some(o) = std::str::from_utf8(&line)
                    .ok()
                    .and_then(|l| l.strip_prefix("ACK "))
                {
                    last = o.trim().parse().unwrap_or(last);
                }
            }
            last
        });
        std::thread::sleep(Duration::from_millis(rng.random_range(150..=900)));
        assert!(
            child.try_wait().unwrap().is_none(),
            "run {run}: the child exited before the kill"
        );
        child.kill().unwrap();
        child.wait().unwrap();
        let last_ack = reader.join().unwrap();
        acked = acked.max(last_ack + 1);
        check_crashed(dir, acked, run, &mut records_removed);
        println!("kill {run}: {acked} records acknowledged, {records_removed} compacted away");
    }
    assert!(
        records_removed > 0,
        "the cleaner never removed anything: the test tested nothing"
    );
}

/// Recovery after a kill: no `.cleaned` file left, every acknowledged
/// offset below the high-water mark, and the compacted-log properties.
fn check_crashed(dir: &Path, acked: i64, run: u64, records_removed: &mut usize) {
    let part_dir = dir.join("topics").join(TOPIC).join("0");
    if std::fs::read_dir(&part_dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok())
        .any(|e| e.file_name().to_string_lossy().ends_with(".cleaned"))
    {
        println!("kill {run} landed inside a cleaning pass (a .cleaned file was left)");
    }
    let store = LogStore::open(dir, quiet()).unwrap();
    let p = store.partition(TOPIC, 0).unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(p.dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".cleaned"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "run {run}: {leftovers:?} left after recovery"
    );
    let hw = p.high_watermark();
    assert!(
        hw >= acked,
        "run {run}: high-water mark {hw} below the acknowledged {acked}"
    );
    let model: Vec<Kv> = (0..hw as u64).map(crash_record).collect();
    let log = check(&p, &model, &format!("after kill {run}"));
    *records_removed = model.len() - log.len();
    store.close().unwrap();
}

#[test]
fn retention_deletes_only_when_the_policy_says_delete() {
    for (policy, deletes) in [
        ("compact", false),
        ("compact,delete", true),
        ("delete", true),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(dir.path(), quiet()).unwrap();
        let mut cfg = config(0, 0.5);
        cfg.set("cleanup.policy", policy).unwrap();
        cfg.retention_ms = 0;
        store.create_topic(TOPIC, 1, cfg).unwrap();
        let p = store.partition(TOPIC, 0).unwrap();
        for i in 0..40 {
            let batch = vec![Kv {
                key: format!("k{i}").into_bytes(),
                value: Some(vec![b'v'; 100]),
            }];
            p.append(&mut encode(&batch, Compression::None)).unwrap();
        }
        assert!(p.segment_bases().len() > 2);
        let outcome = p
            .enforce_retention(sluice::common::now_ms() + 1_000)
            .unwrap();
        assert_eq!(
            outcome.segments_deleted > 0,
            deletes,
            "cleanup.policy={policy}"
        );
    }
}

/// One transactional batch of keyed records (a changelog written in a
/// Kafka transaction per batch, as the engine's sinks write).
fn txn_batch(producer_id: i64, sequence: i32, records: &[(String, String)]) -> Vec<u8> {
    use kafka_protocol::records::{
        Compression as WireCompression, Record, RecordBatchEncoder, RecordEncodeOptions,
        TimestampType,
    };
    let records: Vec<Record> = records
        .iter()
        .enumerate()
        .map(|(i, (k, v))| Record {
            transactional: true,
            control: false,
            partition_leader_epoch: -1,
            producer_id,
            producer_epoch: 0,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: sequence + i as i32,
            timestamp: 1_700_000_000_000 + i as i64,
            key: Some(Bytes::from(k.clone())),
            value: Some(Bytes::from(v.clone())),
            headers: Default::default(),
            delete_horizon: false,
        })
        .collect();
    let mut buf = bytes::BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression: WireCompression::None,
        },
    )
    .unwrap();
    buf.to_vec()
}

/// What a read_committed consumer of the whole partition sees, as a table,
/// and how many transaction markers the log holds.
fn read_committed(p: &Partition) -> (BTreeMap<Vec<u8>, Vec<u8>>, usize) {
    let mut filter = sluice::log::CommittedFilter::new(
        p.aborted_transactions(p.log_start_offset(), p.high_watermark()),
    );
    let mut table = BTreeMap::new();
    let mut markers = 0;
    let mut next = p.log_start_offset();
    while next < p.last_stable_offset() {
        let mut buf = Vec::new();
        let info = p.read_into(next, 1 << 20, &mut buf).unwrap();
        let mut pos = 0;
        while pos < buf.len() {
            let h = BatchHeader::parse(&buf[pos..]).unwrap();
            let bytes = &buf[pos..pos + h.total_len()];
            markers += usize::from(h.is_control());
            if filter.keep(&h, bytes) {
                let mut one = Bytes::copy_from_slice(bytes);
                for r in RecordBatchDecoder::decode(&mut one).unwrap().records {
                    table.insert(r.key.unwrap().to_vec(), r.value.unwrap().to_vec());
                }
            }
            pos += h.total_len();
        }
        next = info.next_offset;
    }
    (table, markers)
}

#[test]
fn a_transactional_changelog_compacts_to_its_committed_table_and_sheds_its_markers() {
    use sluice::log::ControlType;
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(dir.path(), quiet()).unwrap();
    store.create_topic(TOPIC, 1, config(0, 0.5)).unwrap();
    let p = store.partition(TOPIC, 0).unwrap();
    let (producer, mut sequence) = (7i64, 0i32);
    let mut committed: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    for txn in 0..80 {
        let records: Vec<(String, String)> = (0..3)
            .map(|i| (format!("k{}", (txn * 3 + i) % 6), format!("t{txn}-{i}")))
            .collect();
        p.append(&mut txn_batch(producer, sequence, &records))
            .unwrap();
        sequence += 3;
        let abort = txn % 5 == 4;
        let control = if abort {
            ControlType::Abort
        } else {
            ControlType::Commit
        };
        p.append_marker(producer, 0, control, 0)
            .unwrap()
            .expect("an open transaction");
        if !abort {
            for (k, v) in records {
                committed.insert(k.into_bytes(), v.into_bytes());
            }
        }
    }
    let (before, markers_before) = read_committed(&p);
    assert_eq!(before, committed);
    assert_eq!(markers_before, 80);

    let outcome = p
        .clean(sluice::common::now_ms() + 1, &Default::default(), true)
        .unwrap()
        .expect("a pass");
    let (after, markers_after) = read_committed(&p);
    assert_eq!(after, committed, "read_committed table after compaction");
    assert!(
        outcome.markers_removed > 0 && markers_after < markers_before / 2,
        "markers of transactions without data left stay: {markers_after} of {markers_before} ({outcome:?})"
    );
    assert_eq!(p.last_stable_offset(), p.high_watermark());

    // A crash and a reopen replays what it must; no transaction is left
    // open by a marker that went, and the producer goes on.
    drop(p);
    store.abandon_without_closing();
    let store = LogStore::open(dir.path(), quiet()).unwrap();
    let p = store.partition(TOPIC, 0).unwrap();
    assert_eq!(
        p.last_stable_offset(),
        p.high_watermark(),
        "no transaction stuck open"
    );
    assert!(p.ongoing_transactions().is_empty());
    assert_eq!(read_committed(&p).0, committed);
}
