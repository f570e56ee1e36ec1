//! Per-batch progress: one compact line on stderr, JSON lines to a file,
//! the job's [`JobMonitor`] (web console, metrics), and how far a bounded
//! drain (`--until-caught-up`) has come. The JSON lines and the console
//! carry the same [`BatchProgress`] records.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::File;
use std::io::{BufWriter, IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;

use serde::Serialize;

use super::monitor::JobMonitor;
use super::{DriverError, RunSummary};
pub use crate::checkpoint::StateSize;
use sluice_log::units::{format_bytes, format_count};

/// One partition's part in a batch.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionProgress {
    pub source: String,
    pub partition: i32,
    pub from: i64,
    pub until: i64,
    /// Records available after `until` when the batch was planned.
    pub lag: i64,
    /// How long ago the first of those records arrived, estimated from
    /// how the partition's end moved over recent batches (as
    /// kafka-lag-exporter interpolates its offset/time table); `None`
    /// before the partition's end has been seen to move.
    pub lag_ms: Option<f64>,
}

/// Where a batch's time went, wall clock on the driver's thread.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Phases {
    /// Planning the ranges and writing them ahead to the checkpoint.
    pub plan_ms: f64,
    /// Reading the ranges and running the operators (result-table merges
    /// included: they stage their writes into the commit).
    pub compute_ms: f64,
    /// Sinks that leave the process: console output and the batch's Kafka
    /// transactions (topic sinks, dead letters).
    pub sink_ms: f64,
    /// The checkpoint's one atomic write of results, state and offsets.
    pub commit_ms: f64,
}

impl Phases {
    pub fn named(&self) -> [(&'static str, f64); 4] {
        [
            ("plan", self.plan_ms),
            ("compute", self.compute_ms),
            ("sink", self.sink_ms),
            ("commit", self.commit_ms),
        ]
    }
}

/// A stream's event-time watermark after the batch.
#[derive(Debug, Clone, Serialize)]
pub struct WatermarkProgress {
    pub stream: String,
    pub watermark_ms: i64,
    /// How far the watermark trails the batch's time.
    pub gap_ms: i64,
}

/// The progress record of one batch.
#[derive(Debug, Clone, Serialize)]
pub struct BatchProgress {
    pub batch_id: u64,
    pub batch_time_ms: i64,
    pub input_rows: u64,
    /// Input rows over the batch interval (Spark's input rate).
    pub arrival_rows_per_s: f64,
    /// Input rows over the processing time (Spark's processing rate).
    pub input_rows_per_s: f64,
    pub processing_ms: f64,
    pub scheduling_delay_ms: f64,
    pub total_delay_ms: f64,
    /// Wall clock (Unix milliseconds) when the batch's checkpoint commit
    /// returned: its results became visible then. A record's end-to-end
    /// latency is this minus the time it was appended.
    pub committed_at_ms: i64,
    /// In one process; on many workers tasks overlap and only the total is
    /// kept.
    pub phases: Option<Phases>,
    pub partitions: Vec<PartitionProgress>,
    pub state_bytes: u64,
    pub state: Vec<StateSize>,
    pub watermarks: Vec<WatermarkProgress>,
    pub lost_records: u64,
    /// Counts operators reported for this batch (e.g. `late records`,
    /// `bad records`).
    pub counters: BTreeMap<String, u64>,
    /// Re-run after a restart with the ranges planned before the crash.
    pub replayed: bool,
    pub estimated_rate: Option<f64>,
    /// With `--until-caught-up`: the share of the backlog drained.
    pub caught_up_fraction: Option<f64>,
}

/// Where progress goes.
#[derive(Debug, Clone)]
pub struct ProgressSink {
    /// One line per batch on stderr.
    pub lines: bool,
    /// JSON lines, one per batch.
    pub json: Option<PathBuf>,
    /// The web console's and `/metrics`' view of the job.
    pub monitor: Option<Arc<JobMonitor>>,
}

impl Default for ProgressSink {
    fn default() -> Self {
        ProgressSink {
            lines: true,
            json: None,
            monitor: None,
        }
    }
}

impl ProgressSink {
    pub(crate) fn open(&self) -> Result<Progress, DriverError> {
        let json = match &self.json {
            Some(path) => Some(BufWriter::new(
                File::options()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| {
                        DriverError::Other(format!(
                            "cannot open progress file {}: {e}",
                            path.display()
                        ))
                    })?,
            )),
            None => None,
        };
        Ok(Progress {
            lines: self.lines,
            json,
            tty: std::io::stderr().is_terminal(),
            monitor: self.monitor.clone(),
            lag_clock: LagClock::default(),
        })
    }
}

pub(crate) struct Progress {
    lines: bool,
    json: Option<BufWriter<File>>,
    tty: bool,
    pub monitor: Option<Arc<JobMonitor>>,
    lag_clock: LagClock,
}

/// Points `(time, end offset)` kept per partition for lag in time.
const LAG_POINTS: usize = 64;

/// Each partition's end offset as seen at recent batches: a record at
/// offset `o` arrived about when the end passed `o`.
#[derive(Default)]
struct LagClock {
    seen: HashMap<(String, i32), VecDeque<(i64, i64)>>,
}

impl LagClock {
    /// Notes the end offset seen at `at_ms` and estimates how long ago the
    /// record at `position` arrived.
    fn lag_ms(
        &mut self,
        source: &str,
        partition: i32,
        at_ms: i64,
        position: i64,
        end: i64,
    ) -> Option<f64> {
        let points = self.seen.entry((source.to_owned(), partition)).or_default();
        if points.back().is_none_or(|&(_, e)| end > e) {
            if points.len() == LAG_POINTS {
                points.pop_front();
            }
            points.push_back((at_ms, end));
        }
        if position >= end {
            return Some(0.0);
        }
        arrival_time(points.make_contiguous(), position).map(|t| (at_ms - t).max(0) as f64)
    }
}

/// When the end offset passed `position`, interpolated between the
/// points around it; before the first point, extrapolated from the
/// oldest rate seen; `None` when the end was never seen to move. Points
/// are in time order with growing offsets.
fn arrival_time(points: &[(i64, i64)], position: i64) -> Option<i64> {
    let &(last_t, last_end) = points.last()?;
    if position >= last_end {
        return Some(last_t);
    }
    if let Some(w) = points
        .windows(2)
        .find(|w| w[0].1 <= position && position < w[1].1)
    {
        let ((t0, e0), (t1, e1)) = (w[0], w[1]);
        return Some(t0 + ((position - e0) as f64 * (t1 - t0) as f64 / (e1 - e0) as f64) as i64);
    }
    let (&(t0, e0), &(t1, e1)) = (points.first()?, points.get(1)?);
    let per_ms = (e1 - e0) as f64 / (t1 - t0).max(1) as f64;
    Some(t0 - ((e0 - position) as f64 / per_ms.max(1e-9)) as i64)
}

fn bar(fraction: f64) -> String {
    let filled = (fraction * 20.0).round() as usize;
    format!(
        "[{}{}] {:>3.0}%",
        "#".repeat(filled),
        ".".repeat(20 - filled.min(20)),
        fraction * 100.0
    )
}

/// The compact line for one batch.
pub fn format_line(p: &BatchProgress) -> String {
    let lag: i64 = p.partitions.iter().map(|x| x.lag).sum();
    let time = sluice_log::units::format_time(p.batch_time_ms);
    let mut line = format!(
        "batch {} · {} · {} rows ({}/s) · processing {:.0} ms · delay {:.0} ms · lag {} · state {}",
        p.batch_id,
        time.get(11..).unwrap_or(&time),
        format_count(p.input_rows as f64),
        format_count(p.input_rows_per_s),
        p.processing_ms,
        p.scheduling_delay_ms,
        format_count(lag as f64),
        format_bytes(p.state_bytes),
    );
    if p.lost_records > 0 {
        line.push_str(&format!(
            " · LOST {} (retention)",
            format_count(p.lost_records as f64)
        ));
    }
    if p.replayed {
        line.push_str(" · replayed after restart");
    }
    for (name, n) in &p.counters {
        line.push_str(&format!(" · {} {name}", format_count(*n as f64)));
    }
    if let Some(f) = p.caught_up_fraction {
        line.push_str(&format!(" · {}", bar(f)));
    }
    line
}

impl Progress {
    pub fn note(&mut self, text: &str) {
        if self.lines {
            eprintln!("note: {text}");
        }
    }

    /// Reports a committed batch: estimates each partition's lag in time,
    /// then the line, the JSON record and the monitor.
    pub fn emit(&mut self, mut p: BatchProgress) -> Result<(), DriverError> {
        let planned_at = sluice_log::common::now_ms() - p.processing_ms as i64;
        for part in &mut p.partitions {
            part.lag_ms = self.lag_clock.lag_ms(
                &part.source,
                part.partition,
                planned_at,
                part.until,
                part.until + part.lag,
            );
        }
        if self.lines {
            let line = format_line(&p);
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "{line}");
        }
        if let Some(json) = &mut self.json {
            let write = serde_json::to_writer(&mut *json, &p)
                .map_err(std::io::Error::other)
                .and_then(|_| json.write_all(b"\n"))
                .and_then(|_| json.flush());
            write.map_err(|e| DriverError::Other(format!("cannot write progress: {e}")))?;
        }
        let _ = self.tty;
        if let Some(monitor) = &self.monitor {
            monitor.batch(p);
        }
        Ok(())
    }

    pub fn finish(&mut self, summary: &RunSummary) {
        if self.lines {
            let secs = summary.elapsed.as_secs_f64().max(1e-9);
            eprintln!(
                "stopped after {} batches: {} records in {:.1}s ({}/s), last committed batch {}",
                summary.batches,
                format_count(summary.records as f64),
                secs,
                format_count(summary.records as f64 / secs),
                summary.last_batch_id
            );
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn sample() -> BatchProgress {
        BatchProgress {
            batch_id: 12,
            batch_time_ms: 1_795_255_201_000,
            input_rows: 40_000,
            arrival_rows_per_s: 40_000.0,
            input_rows_per_s: 400_000.0,
            processing_ms: 100.0,
            scheduling_delay_ms: 3.0,
            total_delay_ms: 103.0,
            committed_at_ms: 1_795_255_201_103,
            phases: None,
            partitions: vec![PartitionProgress {
                source: "t".into(),
                partition: 0,
                from: 0,
                until: 40_000,
                lag: 1234,
                lag_ms: None,
            }],
            state_bytes: 2048,
            state: Vec::new(),
            watermarks: Vec::new(),
            lost_records: 0,
            counters: [("late records".to_string(), 3)].into_iter().collect(),
            replayed: false,
            estimated_rate: None,
            caught_up_fraction: Some(0.5),
        }
    }

    #[test]
    fn line_has_the_numbers() {
        let p = sample();
        let line = format_line(&p);
        assert!(line.starts_with("batch 12 · "), "{line}");
        assert!(line.contains("40,000 rows (400,000/s)"), "{line}");
        assert!(line.contains("lag 1,234"), "{line}");
        assert!(line.contains("50%"), "{line}");
        assert!(line.contains("· 3 late records"), "{line}");
    }

    #[test]
    fn lag_in_time_interpolates_between_ends_seen() {
        // The end moved 1000 records per second.
        let points = [(10_000, 0), (11_000, 1000), (12_000, 2000)];
        assert_eq!(arrival_time(&points, 1500), Some(11_500));
        assert_eq!(arrival_time(&points, 2000), Some(12_000));
        // Before the first point: the oldest rate, backwards.
        let later = [(10_000, 1000), (11_000, 2000)];
        assert_eq!(arrival_time(&later, 500), Some(9_500));
        assert_eq!(arrival_time(&[(10_000, 1000)], 500), None);
        assert_eq!(arrival_time(&[], 0), None);
    }

    #[test]
    fn lag_clock_keeps_points_only_when_the_end_moves() {
        let mut clock = LagClock::default();
        assert_eq!(clock.lag_ms("t", 0, 1_000, 0, 100), None);
        // Caught up: no lag, whatever the clock says.
        assert_eq!(clock.lag_ms("t", 0, 2_000, 100, 100), Some(0.0));
        // The end moved by 100 in a second; the reader is 50 behind.
        assert_eq!(clock.lag_ms("t", 0, 2_000, 150, 200), Some(500.0));
        assert_eq!(clock.seen[&("t".to_owned(), 0)].len(), 2);
    }
}
