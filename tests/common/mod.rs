//! Helpers shared by the integration tests: store options, batch encoding
//! through the producer's `BatchBuilder`, a full, strictly checked read of
//! a partition back into `(offset, key, value, timestamp)` records, and
//! running the `sluice` binary.

#![allow(dead_code)]

pub mod broker;

use std::fs;
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::RecordBatchDecoder;
use sluice::log::{BatchHeader, HEADER_LEN, Partition, StoreOptions, compute_crc, peek_frame};
use sluice::producer::{BatchBuilder, Compression};

/// Every codec Kafka producers use.
pub const COMPRESSIONS: [Compression; 5] = [
    Compression::None,
    Compression::Gzip,
    Compression::Snappy,
    Compression::Lz4,
    Compression::Zstd,
];

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
            // A log start inside a batch is possible in Kafka after
            // DeleteRecords; this store only moves it to segment bases.
            assert_eq!(
                b0.base_offset, start,
                "{what}: the log does not start at a batch boundary"
            );
            first_batch = false;
        } else {
            assert_eq!(
                b0.base_offset, next,
                "{what}: chunked read did not resume at a batch boundary"
            );
        }
        for b in batches {
            for r in b.records {
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

/// Runs the `sluice` binary in `dir` and requires success; (stdout,
/// stderr).
pub fn sluice_ok(dir: &Path, args: &[&str]) -> (String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "sluice {args:?}: {stderr}");
    (stdout, stderr)
}

/// Runs a SQL job in process over the embedded `store` until caught up (1
/// ms batches, no progress lines): job `job`, checkpoint `checkpoint`, at
/// most `batch_records` records per partition per batch (None: the
/// engine's default) and `max_batches` batches.
pub fn run_sql(
    store: &std::sync::Arc<sluice::log::LogStore>,
    checkpoint: &Path,
    job: &str,
    script: &sluice::sql::Script,
    batch_records: Option<u64>,
    max_batches: Option<u64>,
) {
    let mut config = sluice::driver::JobConfig::new(job, std::time::Duration::from_millis(1));
    config.checkpoint_dir = Some(checkpoint.to_path_buf());
    config.until_caught_up = true;
    if batch_records.is_some() {
        config.max_records_per_batch = batch_records;
    }
    config.max_batches = max_batches;
    config.progress.lines = false;
    let ctx = sluice::driver::StreamingContext::new(config);
    sluice::sql::build(&ctx, script, &sluice::sql::Topics::Embedded(store.clone())).unwrap();
    ctx.run().unwrap();
}
