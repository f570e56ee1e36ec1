//! `sluice-bench latency`: end-to-end latency of small batches — from the
//! moment a record is appended to the log to the moment the batch that
//! counted it is committed — per batch interval.
//!
//! A producer thread appends text lines to a 4-partition topic of an
//! embedded store at a steady rate (every millisecond, what is owed by
//! then, each append stamped with its wall-clock time), while the word
//! count runs on the same store in this process, as `sluice wordcount`
//! would. Each batch's progress record says which offsets it took and when
//! its checkpoint commit returned (`committed_at_ms`); every record's
//! latency is that minus its append time. Reported: the p50, p99 and
//! largest record latency, the p99 of the batches' processing time, and
//! whether the job kept up.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;

use sluice::corpus::CorpusGenerator;
use sluice::log::{LogStore, Partition, StoreOptions, TopicConfig};

const PARTITIONS: usize = 4;
/// Batches at the start whose records waited for the job to start.
const WARM_UP_BATCHES: usize = 3;

#[derive(Debug, clap::Args)]
pub struct LatencyBenchArgs {
    /// Total input rate, records per second (over 4 partitions).
    #[arg(long, default_value_t = 100_000)]
    pub rate: u64,
    /// Batch intervals to try, longest first.
    #[arg(long, default_value = "1s,200ms,50ms,20ms", value_delimiter = ',', value_parser = humantime::parse_duration)]
    pub intervals: Vec<Duration>,
    /// How long each interval runs.
    #[arg(long, default_value = "8s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Work directory (the store and the checkpoints).
    #[arg(long, default_value = "./bench-data/latency")]
    pub dir: PathBuf,
}

/// Appended offsets `[from, until)` of one partition at `at_ms` (Unix ms).
#[derive(Debug, Clone, Copy)]
struct Append {
    from: i64,
    until: i64,
    at_ms: f64,
}

fn unix_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64() * 1000.0)
}

/// Appends `rate` lines per second over the partitions until `stop`, and
/// returns, per partition, when each run of offsets was appended.
fn produce(
    partitions: Vec<Arc<Partition>>,
    rate: u64,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<Vec<Vec<Append>>> {
    let mut corpus = CorpusGenerator::new(7);
    let lines: Vec<Vec<u8>> = (0..4096)
        .map(|_| {
            let mut line = Vec::new();
            corpus.next_line(&mut line);
            line
        })
        .collect();
    let mut appends = vec![Vec::new(); partitions.len()];
    let started = Instant::now();
    let mut sent: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        let owed = (started.elapsed().as_secs_f64() * rate as f64) as u64;
        let mut builders: Vec<_> = partitions
            .iter()
            .map(|_| sluice::producer::BatchBuilder::new(sluice::producer::Compression::None))
            .collect();
        let now = unix_ms();
        while sent < owed {
            let line = &lines[sent as usize % lines.len()];
            builders[sent as usize % partitions.len()].push(None, line, now as i64);
            sent += 1;
        }
        for (p, builder) in builders.iter_mut().enumerate() {
            if builder.is_empty() {
                continue;
            }
            let mut bytes = builder.finish()?;
            let info = partitions[p].append(&mut bytes)?;
            appends[p].push(Append {
                from: info.base_offset,
                until: info.last_offset + 1,
                at_ms: now,
            });
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    Ok(appends)
}

/// One interval's outcome.
struct Measured {
    batches: usize,
    records: u64,
    /// (latency ms, records) over every record of the measured batches.
    latencies: Vec<(f64, u64)>,
    processing_ms: Vec<f64>,
    /// Records appended but not yet taken when the run stopped.
    behind: i64,
}

/// The latency below which `q` of the records were committed.
fn weighted_quantile(sorted: &[(f64, u64)], q: f64) -> f64 {
    let total: u64 = sorted.iter().map(|(_, n)| n).sum();
    let target = (q * total as f64).ceil().max(1.0) as u64;
    let mut seen = 0;
    for &(latency, n) in sorted {
        seen += n;
        if seen >= target {
            return latency;
        }
    }
    f64::NAN
}

fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1]
}

fn run_interval(args: &LatencyBenchArgs, interval: Duration) -> anyhow::Result<Measured> {
    use sluice::driver::{JobConfig, StreamingContext};
    use sluice::source::embedded::EmbeddedSource;

    let work = args.dir.join(format!("{}ms", interval.as_millis()));
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    let store = Arc::new(
        LogStore::open(work.join("store"), StoreOptions::default())
            .context("cannot open the bench's log store")?,
    );
    let topic = store.create_topic("events", PARTITIONS as i64, TopicConfig::default())?;
    let progress_file = work.join("progress.jsonl");
    let mut config = JobConfig::new("latency", interval);
    config.checkpoint_dir = Some(work.join("checkpoint"));
    config.progress.lines = false;
    config.progress.json = Some(progress_file.clone());
    let stop = Arc::new(AtomicBool::new(false));
    config.stop = Some(stop.clone());
    let ctx = StreamingContext::new(config);
    let lines = ctx.source(EmbeddedSource::new(store.clone(), "events")?);
    sluice::cli::wordcount(&lines, "latency");

    let producer = {
        let (partitions, stop) = (topic.partitions(), stop.clone());
        let rate = args.rate;
        std::thread::spawn(move || produce(partitions, rate, stop))
    };
    let duration = args.duration;
    let timer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let until = Instant::now() + duration;
            while Instant::now() < until && !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(10));
            }
            stop.store(true, Ordering::Relaxed);
        })
    };
    let ran = ctx.run();
    stop.store(true, Ordering::Relaxed);
    let _ = timer.join();
    let appends = producer
        .join()
        .map_err(|_| anyhow::anyhow!("the producer thread panicked"))??;
    ran.context("the word count failed")?;

    let mut measured = Measured {
        batches: 0,
        records: 0,
        latencies: Vec::new(),
        processing_ms: Vec::new(),
        behind: 0,
    };
    let mut taken = vec![0i64; PARTITIONS];
    for line in std::fs::read_to_string(&progress_file)?.lines() {
        let batch: serde_json::Value = serde_json::from_str(line)?;
        let field = |name: &str| batch.get(name).and_then(|v| v.as_f64());
        // Binaries from before `committed_at_ms` give the batch's time and
        // its delay from then to the end of its commit.
        let committed = field("committed_at_ms")
            .or_else(|| Some(field("batch_time_ms")? + field("total_delay_ms")?))
            .context("a progress record without its commit time")?;
        let ranges = batch
            .get("partitions")
            .and_then(|p| p.as_array())
            .cloned()
            .unwrap_or_default();
        measured.batches += 1;
        let warm = measured.batches > WARM_UP_BATCHES;
        if warm {
            measured
                .processing_ms
                .push(field("processing_ms").unwrap_or(f64::NAN));
        }
        for range in ranges {
            let p = range.get("partition").and_then(|v| v.as_u64()).unwrap_or(0) as usize;
            let from = range.get("from").and_then(|v| v.as_i64()).unwrap_or(0);
            let until = range.get("until").and_then(|v| v.as_i64()).unwrap_or(0);
            if let Some(t) = taken.get_mut(p) {
                *t = (*t).max(until);
            }
            if !warm || until <= from {
                continue;
            }
            let runs = appends.get(p).map(Vec::as_slice).unwrap_or_default();
            let first = runs.partition_point(|a| a.until <= from);
            for run in &runs[first..] {
                if run.from >= until {
                    break;
                }
                let n = (run.until.min(until) - run.from.max(from)) as u64;
                measured.latencies.push((committed - run.at_ms, n));
                measured.records += n;
            }
        }
    }
    measured.behind = appends
        .iter()
        .zip(&taken)
        .map(|(runs, t)| runs.last().map_or(0, |a| a.until) - t)
        .sum();
    store.close()?;
    let _ = std::fs::remove_dir_all(&work);
    Ok(measured)
}

pub fn latency(args: LatencyBenchArgs) -> anyhow::Result<()> {
    println!(
        "{:>9}  {:>8}  {:>10}  {:>13}  {:>13}  {:>13}  {:>15}  {:>9}",
        "interval",
        "batches",
        "records",
        "p50 latency",
        "p99 latency",
        "max latency",
        "p99 processing",
        "behind"
    );
    for &interval in &args.intervals {
        let mut m = run_interval(&args, interval)?;
        m.latencies.sort_by(|a, b| a.0.total_cmp(&b.0));
        m.processing_ms.sort_by(f64::total_cmp);
        println!(
            "{:>9}  {:>8}  {:>10}  {:>10.1} ms  {:>10.1} ms  {:>10.1} ms  {:>12.1} ms  {:>9}",
            humantime::format_duration(interval).to_string(),
            m.batches,
            m.records,
            weighted_quantile(&m.latencies, 0.5),
            weighted_quantile(&m.latencies, 0.99),
            m.latencies.last().map_or(f64::NAN, |l| l.0),
            quantile(&m.processing_ms, 0.99),
            m.behind,
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_weigh_each_run_of_records_by_its_count() {
        let sorted = [(10.0, 98), (40.0, 1), (90.0, 1)];
        assert_eq!(weighted_quantile(&sorted, 0.5), 10.0);
        assert_eq!(weighted_quantile(&sorted, 0.98), 10.0);
        assert_eq!(weighted_quantile(&sorted, 0.99), 40.0);
        assert_eq!(weighted_quantile(&sorted, 1.0), 90.0);
        assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0], 0.5), 2.0);
        assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0], 0.99), 4.0);
    }
}
