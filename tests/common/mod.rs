//! Helpers shared by the integration tests: store options, batch encoding
//! through the producer's `BatchBuilder`, a full, strictly checked read of
//! a partition back into `(offset, key, value, timestamp)` records,
//! appending to a topic, and the `sluice` command builder.

#![allow(dead_code)]

pub mod broker;
pub mod console;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::RecordBatchDecoder;
use sluice::log::{
    BatchHeader, HEADER_LEN, LogStore, Partition, StoreOptions, Topic, TopicConfig, compute_crc,
    peek_frame,
};
use sluice::producer::{BatchBuilder, Compression};

/// Every codec Kafka producers use.
pub const COMPRESSIONS: [Compression; 5] = [
    Compression::None,
    Compression::Gzip,
    Compression::Snappy,
    Compression::Lz4,
    Compression::Zstd,
];

/// The value of the environment variable `name` (the knobs for longer or
/// reproducible runs), else `default`.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// `SLUICE_CRASH_SEED`, else a fresh seed from the clock (print it, so a
/// failing run can be repeated).
pub fn crash_seed() -> u64 {
    std::env::var("SLUICE_CRASH_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        })
}

/// Store options for tests: no maintenance thread, so nothing flushes,
/// checkpoints or deletes behind the test's back.
pub fn quiet() -> StoreOptions {
    StoreOptions {
        background: false,
        ..Default::default()
    }
}

/// One record as a test wrote it or read it back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rec {
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub timestamp: i64,
}

/// One record read back from a partition, with the offset the store gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Vec<u8>,
    pub timestamp: i64,
}

impl Stored {
    pub fn rec(&self) -> Rec {
        Rec {
            key: self.key.clone(),
            value: self.value.clone(),
            timestamp: self.timestamp,
        }
    }
}

/// Encodes `records` as ONE RecordBatch v2 with `compression`, as a producer
/// would send it (base offset 0).
pub fn encode_batch(records: &[Rec], compression: Compression) -> BytesMut {
    assert!(!records.is_empty(), "a batch needs at least one record");
    let mut b = BatchBuilder::new(compression);
    for r in records {
        b.push(r.key.as_deref(), &r.value, r.timestamp);
    }
    let bytes = b.finish().expect("BatchBuilder encodes");
    let (_, total) = peek_frame(&bytes).expect("encoded batch has a frame");
    assert_eq!(
        total,
        bytes.len(),
        "BatchBuilder must produce exactly one batch"
    );
    bytes
}

/// One batch of a read, its header checked and its records decoded.
#[derive(Debug, Clone)]
pub struct ReadBatch {
    pub header: BatchHeader,
    pub records: Vec<Stored>,
}

/// Splits `bytes` (whole batches, as a read returns them) into batches,
/// checking framing, magic and CRC-32C of each, then decodes each batch on
/// its own and checks that its records occupy exactly
/// `base_offset..=last_offset`. Panics with `what` in the message otherwise.
pub fn decode_batches(bytes: &[u8], what: &str) -> Vec<ReadBatch> {
    // Framing, magic and CRC-32C of every batch, by hand.
    let mut headers = Vec::new();
    let mut pos = 0usize;
    while pos < bytes.len() {
        let rest = &bytes[pos..];
        assert!(
            rest.len() >= HEADER_LEN,
            "{what}: {} trailing bytes at {pos}",
            rest.len()
        );
        let (_, total) =
            peek_frame(rest).unwrap_or_else(|e| panic!("{what}: bad frame at {pos}: {e}"));
        assert!(
            total <= rest.len(),
            "{what}: batch at {pos} of {total} bytes is cut ({} left)",
            rest.len()
        );
        let header =
            BatchHeader::parse(rest).unwrap_or_else(|e| panic!("{what}: bad header at {pos}: {e}"));
        assert_eq!(
            compute_crc(&rest[..total]),
            header.crc,
            "{what}: CRC mismatch in batch at byte {pos}"
        );
        headers.push((pos, header));
        pos += total;
    }
    // Then the Kafka decoder must accept the whole buffer (it checks every
    // CRC again and decompresses).
    let mut all = Bytes::copy_from_slice(bytes);
    let sets = RecordBatchDecoder::decode_all(&mut all)
        .unwrap_or_else(|e| panic!("{what}: decode_all failed on {} bytes: {e:#}", bytes.len()));
    assert_eq!(
        headers.len(),
        sets.len(),
        "{what}: decode_all saw a different number of batches"
    );
    let mut out = Vec::with_capacity(sets.len());
    for ((pos, header), set) in headers.into_iter().zip(sets) {
        assert_eq!(
            set.records.len() as i64,
            header.records_count as i64,
            "{what}: batch at byte {pos} record count"
        );
        let records: Vec<Stored> = set
            .records
            .into_iter()
            .map(|r| Stored {
                offset: r.offset,
                key: r.key.map(|k| k.to_vec()),
                value: r
                    .value
                    .map(|v| v.to_vec())
                    .expect("test records always have a value"),
                timestamp: r.timestamp,
            })
            .collect();
        for (i, r) in records.iter().enumerate() {
            assert_eq!(
                r.offset,
                header.base_offset + i as i64,
                "{what}: record {i} of batch at byte {pos} (base {}) has the wrong offset",
                header.base_offset
            );
        }
        assert_eq!(
            records.last().map(|r| r.offset),
            Some(header.last_offset()),
            "{what}: batch at byte {pos}: last offset delta disagrees with its records"
        );
        out.push(ReadBatch { header, records });
    }
    out
}

/// The topic `name` of `store`, created with `partitions` partitions (and
/// the default config) when it does not exist yet.
pub fn topic(store: &LogStore, name: &str, partitions: i64) -> Arc<Topic> {
    store
        .topic(name)
        .or_else(|_| store.create_topic(name, partitions, TopicConfig::default()))
        .unwrap()
}

/// Appends ONE uncompressed batch of unkeyed `values`, each stamped
/// `timestamp`, to partition `partition` of `topic`.
pub fn append_values<V: AsRef<[u8]>>(
    topic: &Topic,
    partition: i32,
    values: impl IntoIterator<Item = V>,
    timestamp: i64,
) {
    let mut b = BatchBuilder::new(Compression::None);
    for v in values {
        b.push(None, v.as_ref(), timestamp);
    }
    let mut bytes = b.finish().unwrap();
    topic
        .partition(partition)
        .unwrap()
        .append(&mut bytes)
        .unwrap();
}

/// Appends `values` in batches of `per_batch` (see [`append_values`]), the
/// i-th batch to partition i modulo the topic's partition count.
pub fn append_round_robin<V: AsRef<[u8]>>(
    topic: &Topic,
    per_batch: usize,
    values: &[V],
    timestamp: i64,
) {
    let n = topic.partition_count();
    for (i, chunk) in values.chunks(per_batch).enumerate() {
        append_values(topic, (i % n) as i32, chunk, timestamp);
    }
}

/// Reads the whole partition from its log start to its high-water mark in
/// chunks of `chunk` bytes, checking every batch (see [`decode_batches`]),
/// that each read starts with the batch holding the requested offset, and
/// that offsets are contiguous with no gaps or duplicates. Returns every
/// record with its offset.
pub fn read_all_with(p: &Partition, chunk: usize) -> Vec<Stored> {
    let start = p.log_start_offset();
    let hw = p.high_watermark();
    let what = format!("{}-{}", p.topic(), p.id());
    let mut out: Vec<Stored> = Vec::new();
    let mut next = start;
    let mut first_batch = true;
    while next < hw {
        let (bytes, info) = p
            .read(next, chunk)
            .unwrap_or_else(|e| panic!("{what}: read at {next} failed: {e}"));
        assert!(
            !bytes.is_empty(),
            "{what}: read at {next} below the high-water mark {hw} returned nothing"
        );
        let batches = decode_batches(&bytes, &format!("{what} read at {next}"));
        let b0 = &batches[0].header;
        assert!(
            b0.base_offset <= next && next <= b0.last_offset(),
            "{what}: read at {next} began with batch {}..={}",
            b0.base_offset,
            b0.last_offset()
        );
        if first_batch {
            // DeleteRecords may put the log start inside a batch: the batch
            // is served whole and a reader skips what lies below the start.
            assert!(
                b0.base_offset <= start && start <= b0.last_offset(),
                "{what}: the first batch {}..={} does not hold the log start {start}",
                b0.base_offset,
                b0.last_offset()
            );
            first_batch = false;
        } else {
            assert_eq!(
                b0.base_offset, next,
                "{what}: chunked read did not resume at a batch boundary"
            );
        }
        for b in batches {
            for r in b.records.into_iter().filter(|r| r.offset >= start) {
                if let Some(prev) = out.last() {
                    assert_eq!(r.offset, prev.offset + 1, "{what}: offsets not contiguous");
                }
                out.push(r);
            }
        }
        let last = out.last().expect("non-empty").offset;
        assert_eq!(
            info.next_offset,
            last + 1,
            "{what}: ReadInfo.next_offset after a read at {next}"
        );
        next = info.next_offset;
    }
    assert_eq!(next, hw, "{what}: read past the high-water mark");
    out
}

/// [`read_all_with`] with 1 MiB reads.
pub fn read_all(p: &Partition) -> Vec<Stored> {
    read_all_with(p, 1 << 20)
}

/// The `.log` files of a partition directory, oldest first.
pub fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut logs: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("listing {}: {e}", dir.display()))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    logs
}

/// The newest (active) segment file of a partition directory.
pub fn last_segment(dir: &Path) -> PathBuf {
    segment_files(dir)
        .pop()
        .expect("a partition has at least one segment")
}

/// Total bytes of all `.log` files in a partition directory.
pub fn log_bytes(dir: &Path) -> u64 {
    segment_files(dir)
        .iter()
        .map(|p| fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum()
}

/// `path` in the repository (job files, client scripts), wherever the
/// test runs from.
pub fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// The `sluice` binary: the one way the tests start it. None of the
/// caller's `SLUICE_*` or `FAILPOINTS` variables leak in; a test sets what
/// it needs on the returned command.
pub fn sluice() -> Command {
    sluice_under(&[])
}

/// [`sluice`] run by a wrapper, e.g. `["prlimit", "--fsize=1048576"]`.
pub fn sluice_under(wrapper: &[&str]) -> Command {
    let bin = env!("CARGO_BIN_EXE_sluice");
    let mut c = match wrapper.split_first() {
        None => Command::new(bin),
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(bin);
            c
        }
    };
    for var in [
        "SLUICE_LOG",
        "SLUICE_DATA_DIR",
        "SLUICE_BOOTSTRAP",
        "FAILPOINTS",
    ] {
        c.env_remove(var);
    }
    c
}

/// [`sluice`] over the data directory `data` (as `SLUICE_DATA_DIR`).
pub fn sluice_in(data: &Path) -> Command {
    let mut c = sluice();
    c.env("SLUICE_DATA_DIR", data);
    c
}

/// `sluice run JOB --data-dir DATA --checkpoint-dir CHECKPOINT
/// --until-caught-up`: a job run to the end of its topics (add flags).
pub fn sluice_run(job: &Path, data: &Path, checkpoint: &Path) -> Command {
    let mut c = sluice();
    c.arg("run")
        .arg(job)
        .arg("--data-dir")
        .arg(data)
        .arg("--checkpoint-dir")
        .arg(checkpoint)
        .arg("--until-caught-up");
    c
}

/// `sluice state scan` of job `job` in `checkpoint` (its table `table`, or
/// its only one): the (key, value) lines it prints, in its order.
pub fn state_scan(checkpoint: &Path, job: &str, table: Option<&str>) -> Vec<(String, String)> {
    let mut c = sluice();
    c.args(["state", "scan", "--job", job]);
    if let Some(table) = table {
        c.args(["--table", table]);
    }
    c.arg("--checkpoint-dir")
        .arg(checkpoint)
        .ok()
        .lines()
        .map(|l| {
            let (k, v) = l
                .split_once('\t')
                .unwrap_or_else(|| panic!("state scan printed {l:?}"));
            (k.to_string(), v.to_string())
        })
        .collect()
}

/// Runs a command to its end (stdin closed, output captured) and checks
/// how it ended; the messages name the command and show its stderr.
pub trait Run {
    /// Runs it; its output.
    fn run(&mut self) -> Output;

    /// Runs it and requires success; (stdout, stderr).
    fn ok_both(&mut self) -> (String, String);

    /// Runs it and requires success; stdout.
    fn ok(&mut self) -> String {
        self.ok_both().0
    }

    /// Runs it and requires failure; stderr.
    fn fails(&mut self) -> String;
}

impl Run for Command {
    fn run(&mut self) -> Output {
        self.output()
            .unwrap_or_else(|e| panic!("cannot run {self:?}: {e}"))
    }

    fn ok_both(&mut self) -> (String, String) {
        let out = self.run();
        assert!(
            out.status.success(),
            "{self:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        (utf8(out.stdout, "stdout"), utf8(out.stderr, "stderr"))
    }

    fn fails(&mut self) -> String {
        let out = self.run();
        assert!(
            !out.status.success(),
            "{self:?} should have failed; stdout:\n{}",
            String::from_utf8_lossy(&out.stdout)
        );
        utf8(out.stderr, "stderr")
    }
}

fn utf8(bytes: Vec<u8>, what: &str) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| panic!("{what} is not UTF-8: {e}"))
}
