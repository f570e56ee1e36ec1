//! `sluice-bench compaction`: what the log cleaner costs and what it buys a
//! changelog, side by side in one run on the same data.
//!
//! For each key count: a compacted topic gets `--bytes` of updates, every
//! key updated many times in random order (a changelog of a busy table).
//! Then, timed: (1) reading the whole uncompacted log and rebuilding the
//! table from it (what restoring a task's state costs without compaction);
//! (2) one unthrottled cleaning pass over every sealed segment; (3) the
//! same restore from the compacted log. Reported: the cleaner's input
//! MB/s, how much of the log it kept, and restore time per GiB of
//! changelog and per million keys, before and after.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use kafka_protocol::records::RecordBatchDecoder;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sluice::log::{CleanerOptions, CleanupPolicy, LogStore, Partition, StoreOptions, TopicConfig};
use sluice::producer::{BatchBuilder, Compression};
use sluice::units::{format_bytes, parse_bytes};

#[derive(Debug, clap::Args)]
pub struct CompactionBenchArgs {
    /// Directory for the benchmark's store (on the disk to measure).
    #[arg(long, default_value = "./bench-compaction-data")]
    dir: PathBuf,
    /// Bytes of updates written per key count.
    #[arg(long, default_value = "1GiB", value_parser = parse_bytes)]
    bytes: u64,
    /// Distinct keys, comma-separated: one measurement each.
    #[arg(long, default_value = "100000,1000000", value_delimiter = ',')]
    keys: Vec<u64>,
    /// Bytes of each value.
    #[arg(long, default_value_t = 100)]
    value_bytes: usize,
    /// Segment size of the changelog topic.
    #[arg(long, default_value = "64MiB", value_parser = parse_bytes)]
    segment_bytes: u64,
}

/// Rebuilds the table a changelog describes, as a restoring task would:
/// every batch read from the log start, decoded, each record put (or a
/// tombstone removing its key). Returns (records read, keys, bytes read).
fn restore(p: &Partition) -> anyhow::Result<(u64, usize, u64)> {
    let mut table: HashMap<Bytes, Bytes> = HashMap::new();
    let mut next = p.log_start_offset();
    let end = p.high_watermark();
    let (mut records, mut bytes) = (0u64, 0u64);
    let mut buf = Vec::with_capacity(8 << 20);
    while next < end {
        buf.clear();
        let info = p.read_into(next, 8 << 20, &mut buf)?;
        if info.next_offset <= next {
            break;
        }
        bytes += buf.len() as u64;
        let mut block = Bytes::from(std::mem::take(&mut buf));
        for set in RecordBatchDecoder::decode_all(&mut block)
            .map_err(|e| anyhow::anyhow!("decoding the changelog: {e:#}"))?
        {
            for r in set.records {
                records += 1;
                let key = r.key.context("a changelog record without a key")?;
                match r.value {
                    Some(v) => table.insert(key, v),
                    None => table.remove(&key),
                };
            }
        }
        next = info.next_offset;
    }
    Ok((records, table.len(), bytes))
}

fn fill(p: &Partition, bytes: u64, keys: u64, value_bytes: usize) -> anyhow::Result<u64> {
    let mut rng = SmallRng::seed_from_u64(keys);
    let mut value = vec![b'v'; value_bytes];
    let mut written = 0u64;
    let mut records = 0u64;
    while written < bytes {
        let mut b = BatchBuilder::new(Compression::None);
        for _ in 0..1000 {
            let k = rng.random_range(0..keys);
            let n = records.to_le_bytes();
            value[..8.min(value_bytes)].copy_from_slice(&n[..8.min(value_bytes)]);
            b.push(
                Some(format!("key-{k:012}").as_bytes()),
                &value,
                records as i64,
            );
            records += 1;
        }
        let mut batch = b.finish()?;
        written += batch.len() as u64;
        p.append(&mut batch)?;
    }
    p.flush()?;
    Ok(records)
}

fn per_gib(d: Duration, bytes: u64) -> f64 {
    d.as_secs_f64() / (bytes as f64 / (1u64 << 30) as f64)
}

fn measure(store: &LogStore, args: &CompactionBenchArgs, keys: u64) -> anyhow::Result<()> {
    let name = format!("changelog-{keys}");
    let config = TopicConfig {
        segment_bytes: args.segment_bytes,
        retention_ms: -1,
        cleanup_policy: CleanupPolicy::COMPACT,
        ..TopicConfig::default()
    };
    store.create_topic(&name, 1, config)?;
    let p = store.partition(&name, 0)?;
    let written = fill(&p, args.bytes, keys, args.value_bytes)?;
    let before_bytes = p.info().size_bytes;

    let started = Instant::now();
    let (read_before, table_before, bytes_before) = restore(&p)?;
    let restore_before = started.elapsed();

    let options = CleanerOptions {
        io_max_bytes_per_second: None,
        ..CleanerOptions::default()
    };
    let started = Instant::now();
    let outcome = p
        .clean(sluice::common::now_ms(), &options, true)?
        .context("the cleaner found nothing to clean")?;
    let clean = started.elapsed();

    let started = Instant::now();
    let (read_after, table_after, bytes_after) = restore(&p)?;
    let restore_after = started.elapsed();
    anyhow::ensure!(
        table_before == table_after,
        "the compacted changelog restores {table_after} keys, the full one {table_before}"
    );
    let after_bytes = p.info().size_bytes;
    println!(
        "{keys} keys, {written} updates, {} log ({} sealed cleaned in {:.2} s = {:.0} MB/s of input, {} records removed); log now {} ({:.1} %)",
        format_bytes(before_bytes),
        format_bytes(outcome.bytes_before),
        clean.as_secs_f64(),
        outcome.bytes_before as f64 / clean.as_secs_f64() / 1e6,
        outcome.records_removed,
        format_bytes(after_bytes),
        100.0 * after_bytes as f64 / before_bytes as f64,
    );
    println!(
        "  restore {table_before} keys: uncompacted {read_before} records, {} in {:.2} s ({:.2} s/GiB read); compacted {read_after} records, {} in {:.2} s ({:.2} s/GiB read) -> {:.1}x faster",
        format_bytes(bytes_before),
        restore_before.as_secs_f64(),
        per_gib(restore_before, bytes_before),
        format_bytes(bytes_after),
        restore_after.as_secs_f64(),
        per_gib(restore_after, bytes_after),
        restore_before.as_secs_f64() / restore_after.as_secs_f64(),
    );
    store.delete_topic(&name)?;
    Ok(())
}

pub fn run(args: CompactionBenchArgs) -> anyhow::Result<()> {
    let dir: &Path = &args.dir;
    let _ = std::fs::remove_dir_all(dir);
    let store = LogStore::open(
        dir,
        StoreOptions {
            background: false,
            ..StoreOptions::default()
        },
    )
    .with_context(|| format!("cannot open the store in {}", dir.display()))?;
    for &keys in &args.keys {
        measure(&store, &args, keys)?;
    }
    store.close()?;
    drop(store);
    let _ = std::fs::remove_dir_all(dir);
    Ok(())
}
