//! `sluice-bench log`: append and read throughput of the log store, measured
//! side by side with `dd … conv=fdatasync` on the same disk in the same run.
//!
//! Appends use pre-encoded batches of uncompressed records, as a producer
//! would send them, so the numbers are the store's own cost: CRC check,
//! offset assignment, write, index, flush.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, bail};

use crate::util::open_store;
use sluice::log::{FlushPolicy, LogStore, TopicConfig};
use sluice::producer::uniform_batch;
use sluice::units::format_bytes;

/// One timed pass.
#[derive(Debug, Clone, Copy)]
struct Sample {
    records: u64,
    bytes: u64,
    secs: f64,
}

impl Sample {
    fn records_per_sec(&self) -> f64 {
        self.records as f64 / self.secs
    }
    fn mb_per_sec(&self) -> f64 {
        self.bytes as f64 / self.secs / 1e6
    }
}

fn median(samples: Vec<Sample>) -> Sample {
    crate::util::median_by(samples, |s| s.secs)
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    NoFlush,
    FlushAtEnd,
    FlushPerBatch,
}

fn append_run(
    store: &LogStore,
    batch: &[u8],
    total_bytes: u64,
    mode: Mode,
) -> anyhow::Result<(Sample, Sample)> {
    let name = "bench";
    let _ = store.delete_topic(name);
    let mut config = TopicConfig {
        retention_ms: -1,
        ..TopicConfig::default()
    };
    config.set_flush_policy(if mode == Mode::FlushPerBatch {
        FlushPolicy::EveryAppend
    } else {
        FlushPolicy::Os
    });
    store.create_topic(name, 1, config)?;
    let p = store.partition(name, 0)?;
    let batches = (total_bytes / batch.len() as u64).max(1);
    let records_per_batch = sluice::log::BatchHeader::parse(batch)
        .map_err(|e| anyhow::anyhow!("{e}"))?
        .records_count as u64;
    let mut buf = batch.to_vec();
    let started = Instant::now();
    for _ in 0..batches {
        p.append(&mut buf)?;
    }
    if mode == Mode::FlushAtEnd {
        p.flush()?;
    }
    let write = Sample {
        records: batches * records_per_batch,
        bytes: batches * batch.len() as u64,
        secs: started.elapsed().as_secs_f64(),
    };
    // Sequential read of what was just written: the segments are in the page cache.
    let mut out = Vec::with_capacity(2 << 20);
    let mut offset = 0;
    let mut read_bytes = 0u64;
    let started = Instant::now();
    while offset < p.high_watermark() {
        out.clear();
        let info = p.read_into(offset, 1 << 20, &mut out)?;
        read_bytes += info.bytes as u64;
        offset = info.next_offset;
    }
    let read = Sample {
        records: offset as u64,
        bytes: read_bytes,
        secs: started.elapsed().as_secs_f64(),
    };
    store.delete_topic(name)?;
    Ok((write, read))
}

/// `dd if=/dev/zero bs=1M count=N conv=fdatasync` into `dir`, timed by us.
fn dd_run(dir: &Path, bytes: u64) -> anyhow::Result<Sample> {
    let file = dir.join("dd.tmp");
    let count = (bytes / (1 << 20)).max(1);
    let started = Instant::now();
    let out = Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", file.display()))
        .args([
            "bs=1M",
            &format!("count={count}"),
            "conv=fdatasync",
            "status=none",
        ])
        .output()
        .context("cannot run dd")?;
    let secs = started.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&file);
    if !out.status.success() {
        bail!("dd failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(Sample {
        records: 0,
        bytes: count << 20,
        secs,
    })
}

pub fn run(
    dir: &Path,
    bytes: u64,
    record_sizes: &[usize],
    batch_records: usize,
    runs: usize,
    flush_per_batch_bytes: u64,
    no_dd: bool,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let store = open_store(&dir.join("store"), false)?;
    println!(
        "sluice bench log: {} per run, batches of {batch_records} records, median of {runs} runs, dir {}",
        format_bytes(bytes),
        dir.display()
    );
    println!(
        "{:<8} {:<22} {:>14} {:>10} {:>12}",
        "record", "mode", "records/s", "MB/s", "vs dd"
    );
    for &size in record_sizes {
        let batch = uniform_batch(batch_records, size, sluice::common::now_ms())
            .context("cannot encode the benchmark batch")?;
        let mut no_flush = Vec::new();
        let mut at_end = Vec::new();
        let mut per_batch = Vec::new();
        let mut reads = Vec::new();
        let mut dd = Vec::new();
        for _ in 0..runs {
            // Interleave the modes and dd so drift in the machine's load
            // affects them alike.
            if !no_dd {
                dd.push(dd_run(dir, bytes)?);
            }
            let (w, r) = append_run(&store, &batch, bytes, Mode::FlushAtEnd)?;
            at_end.push(w);
            reads.push(r);
            no_flush.push(append_run(&store, &batch, bytes, Mode::NoFlush)?.0);
            per_batch
                .push(append_run(&store, &batch, flush_per_batch_bytes, Mode::FlushPerBatch)?.0);
        }
        let dd_mbs = (!dd.is_empty()).then(|| median(dd).mb_per_sec());
        let label = format!("{size} B");
        let row = |mode: &str, s: Sample, vs_dd: bool| {
            let ratio = match (vs_dd, dd_mbs) {
                (true, Some(d)) => format!("{:.0}%", 100.0 * s.mb_per_sec() / d),
                _ => String::new(),
            };
            println!(
                "{:<8} {:<22} {:>14.0} {:>10.0} {:>12}",
                label,
                mode,
                s.records_per_sec(),
                s.mb_per_sec(),
                ratio
            );
        };
        row("append, no flush", median(no_flush), false);
        row("append, fsync at end", median(at_end), true);
        row("append, fsync per batch", median(per_batch), true);
        row("read (page cache)", median(reads), false);
        if let Some(d) = dd_mbs {
            println!(
                "{:<8} {:<22} {:>14} {:>10.0}",
                label, "dd conv=fdatasync", "", d
            );
        }
    }
    store.close()?;
    let _ = std::fs::remove_dir_all(dir.join("store"));
    Ok(())
}
