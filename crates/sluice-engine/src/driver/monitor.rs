//! What a running job shows its watchers (the web console, `/metrics`):
//! the last N progress records, totals since start, errors and retries,
//! lines console sinks printed, checkpoint facts, and the top rows of its
//! result tables.
//!
//! The batch loop only pushes into it, under a lock held for a push
//! (progress records are shared as `Arc`s, so a reader's copy is cheap),
//! and memory is bounded by the history length whatever the run length.
//! Result tables are read by the watcher's thread, never the loop's, at
//! most once per committed batch and no more often than their last scan
//! cost allows. It never changes the job, its state or its offsets.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::progress::BatchProgress;
use crate::checkpoint::{Checkpoint, CommittedBatch, OperatorMeta, SCHEMA_VERSION};
use crate::sink::table::{TableError, TableReader};
use sluice_log::common::{mutex, now_ms};

/// Progress records kept unless told otherwise.
pub const DEFAULT_HISTORY: usize = 300;
const ERRORS_KEPT: usize = 50;
const PRINTED_LINES_KEPT: usize = 100;
/// Rows per result table the console shows.
pub const TOP_ROWS: usize = 20;
/// A table is read again no sooner than this many times its last scan took,
/// so reading the top rows costs at most 2 % of a core whatever the
/// table's size, and at most once a second.
const SCAN_COST_FACTOR: u32 = 50;
const MIN_RESCAN: Duration = Duration::from_secs(1);

/// Bucket bounds, seconds, of the batch-duration histograms.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Counts of observations at or below each of [`DURATION_BUCKETS`] (not
/// cumulative), their sum and count: Prometheus's histogram.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DurationHistogram {
    pub counts: [u64; DURATION_BUCKETS.len()],
    pub count: u64,
    pub sum_seconds: f64,
}

impl DurationHistogram {
    pub fn observe(&mut self, ms: f64) {
        let seconds = (ms / 1000.0).max(0.0);
        if let Some(i) = DURATION_BUCKETS.iter().position(|le| seconds <= *le) {
            self.counts[i] += 1;
        }
        self.count += 1;
        self.sum_seconds += seconds;
    }

    /// `(upper bound, observations at or below it)`, as Prometheus exposes
    /// them; `+Inf` is [`DurationHistogram::count`].
    pub fn cumulative(&self) -> Vec<(f64, u64)> {
        let mut total = 0;
        DURATION_BUCKETS
            .iter()
            .zip(self.counts)
            .map(|(le, n)| {
                total += n;
                (*le, total)
            })
            .collect()
    }
}

/// Everything counted since the process started (for `/metrics`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    pub batches: u64,
    pub input_rows: u64,
    pub replayed_batches: u64,
    /// Operators' counters summed over batches (`late records`, …).
    pub counters: BTreeMap<String, u64>,
    pub processing: DurationHistogram,
    /// By phase name: `plan`, `compute`, `sink`, `commit`.
    pub phases: BTreeMap<&'static str, DurationHistogram>,
    pub scheduling_delay: DurationHistogram,
    pub errors: u64,
}

/// The job's last commit.
#[derive(Debug, Clone, Serialize)]
pub struct CheckpointFacts {
    pub path: String,
    pub schema_version: u32,
    pub last_committed_batch: Option<u64>,
    pub committed_ms: Option<i64>,
    /// Source → partition → the next offset to read.
    pub offsets: BTreeMap<String, BTreeMap<i32, i64>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ErrorEntry {
    pub at_ms: i64,
    pub message: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct PrintedLine {
    pub batch_id: u64,
    pub line: String,
}

/// One row of a result table as shown: its key and value as text, and the
/// value as a number when it is one.
#[derive(Debug, Clone, Serialize)]
pub struct ShownRow {
    pub key: String,
    pub value: String,
    pub number: Option<f64>,
}

/// The top rows of one result table, read at a committed batch.
#[derive(Debug, Clone, Serialize)]
pub struct TableTop {
    pub table: String,
    pub key_type: String,
    pub value_type: String,
    pub refreshed_batch: Option<u64>,
    pub rows: Vec<ShownRow>,
}

/// What `/api/job` returns.
#[derive(Debug, Clone, Serialize)]
pub struct JobSnapshot {
    pub job: String,
    pub mode: String,
    pub status: &'static str,
    pub started_ms: i64,
    pub now_ms: i64,
    pub batch_interval_ms: u64,
    pub history: usize,
    pub plan: String,
    pub checkpoint: Option<CheckpointFacts>,
    pub batches: Vec<Arc<BatchProgress>>,
    pub errors: Vec<ErrorEntry>,
    pub results: Vec<TableTop>,
    pub printed: Vec<PrintedLine>,
    #[serde(skip)]
    pub totals: Totals,
}

struct Inner {
    mode: String,
    status: &'static str,
    batch_interval_ms: u64,
    plan: String,
    checkpoint: Option<CheckpointFacts>,
    batches: VecDeque<Arc<BatchProgress>>,
    errors: VecDeque<ErrorEntry>,
    printed: VecDeque<PrintedLine>,
    totals: Totals,
}

/// Where result tables are read from: the job's own database, shared
/// until the job stops.
struct Tables {
    checkpoint: Option<Checkpoint>,
    metas: Vec<OperatorMeta>,
    cache: Vec<TableTop>,
    /// When the cache was filled, and how long that took.
    scanned: Option<(Instant, Duration)>,
}

/// A running job's bounded record for its watchers.
pub struct JobMonitor {
    job: String,
    history: usize,
    started_ms: i64,
    inner: Mutex<Inner>,
    tables: Mutex<Option<Tables>>,
}

impl std::fmt::Debug for JobMonitor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JobMonitor")
            .field("job", &self.job)
            .field("history", &self.history)
            .finish()
    }
}

impl JobMonitor {
    /// A monitor keeping the last `history` batches (at least one).
    pub fn new(job: impl Into<String>, history: usize) -> Arc<JobMonitor> {
        Arc::new(JobMonitor {
            job: job.into(),
            history: history.max(1),
            started_ms: now_ms(),
            inner: Mutex::new(Inner {
                mode: "one process".into(),
                status: "starting",
                batch_interval_ms: 0,
                plan: String::new(),
                checkpoint: None,
                batches: VecDeque::new(),
                errors: VecDeque::new(),
                printed: VecDeque::new(),
                totals: Totals::default(),
            }),
            tables: Mutex::new(None),
        })
    }

    pub fn job(&self) -> &str {
        &self.job
    }

    pub fn batch_interval(&self) -> Duration {
        Duration::from_millis(mutex(&self.inner).batch_interval_ms)
    }

    /// The job's plan as text (the Rust job's graph, or `sluice explain`).
    pub fn set_plan(&self, plan: String) {
        mutex(&self.inner).plan = plan;
    }

    /// Called by the driver once the job runs.
    pub(crate) fn running(&self, mode: String, batch_interval: Duration, plan: Option<String>) {
        let mut inner = mutex(&self.inner);
        inner.mode = mode;
        inner.status = "running";
        inner.batch_interval_ms = batch_interval.as_millis() as u64;
        if let Some(plan) = plan
            && inner.plan.is_empty()
        {
            inner.plan = plan;
        }
    }

    /// The run ended (`failed`: with an error). The job's database is let
    /// go (after a read in progress ends), so it closes with the job and a
    /// watcher never reads it while the process exits; the last rows read
    /// stay shown.
    pub fn stopped(&self, failed: bool) {
        mutex(&self.inner).status = if failed { "failed" } else { "stopped" };
        if let Some(tables) = mutex(&self.tables).as_mut() {
            tables.checkpoint = None;
        }
    }

    /// Result tables are read from the job's database (shared with the
    /// loop, read on the watcher's thread).
    pub(crate) fn attach_tables(&self, checkpoint: Checkpoint, metas: Vec<OperatorMeta>) {
        *mutex(&self.tables) = Some(Tables {
            checkpoint: Some(checkpoint),
            metas,
            cache: Vec::new(),
            scanned: None,
        });
    }

    pub(crate) fn batch(&self, progress: BatchProgress) {
        let progress = Arc::new(progress);
        let mut inner = mutex(&self.inner);
        let totals = &mut inner.totals;
        totals.batches += 1;
        totals.input_rows += progress.input_rows;
        totals.replayed_batches += u64::from(progress.replayed);
        for (name, n) in &progress.counters {
            *totals.counters.entry(name.clone()).or_default() += n;
        }
        totals.processing.observe(progress.processing_ms);
        totals
            .scheduling_delay
            .observe(progress.scheduling_delay_ms);
        if let Some(p) = &progress.phases {
            for (name, ms) in p.named() {
                totals.phases.entry(name).or_default().observe(ms);
            }
        }
        if inner.batches.len() == self.history {
            inner.batches.pop_front();
        }
        inner.batches.push_back(progress);
    }

    pub(crate) fn committed(&self, path: &std::path::Path, committed: &CommittedBatch) {
        mutex(&self.inner).checkpoint = Some(CheckpointFacts {
            path: path.display().to_string(),
            schema_version: SCHEMA_VERSION,
            last_committed_batch: Some(committed.batch_id),
            committed_ms: Some(now_ms()),
            offsets: committed.offsets.clone(),
        });
    }

    /// An error the job survived (a retried task) or ended with.
    pub fn error(&self, message: String) {
        let mut inner = mutex(&self.inner);
        inner.totals.errors += 1;
        if inner.errors.len() == ERRORS_KEPT {
            inner.errors.pop_front();
        }
        inner.errors.push_back(ErrorEntry {
            at_ms: now_ms(),
            message,
        });
    }

    /// Text a console sink printed for `batch_id`.
    pub(crate) fn printed(&self, batch_id: u64, text: &str) {
        let mut inner = mutex(&self.inner);
        for line in text.lines().filter(|l| !l.is_empty()) {
            if inner.printed.len() == PRINTED_LINES_KEPT {
                inner.printed.pop_front();
            }
            inner.printed.push_back(PrintedLine {
                batch_id,
                line: line.to_owned(),
            });
        }
    }

    /// Everything but the result tables: what the loop last pushed.
    pub fn snapshot(&self) -> JobSnapshot {
        let inner = mutex(&self.inner);
        JobSnapshot {
            job: self.job.clone(),
            mode: inner.mode.clone(),
            status: inner.status,
            started_ms: self.started_ms,
            now_ms: now_ms(),
            batch_interval_ms: inner.batch_interval_ms,
            history: self.history,
            plan: inner.plan.clone(),
            checkpoint: inner.checkpoint.clone(),
            batches: inner.batches.iter().cloned().collect(),
            errors: inner.errors.iter().cloned().collect(),
            results: Vec::new(),
            printed: inner.printed.iter().cloned().collect(),
            totals: inner.totals.clone(),
        }
    }

    /// The top rows of every result table, read again when a batch
    /// committed since the last read and the last read's cost allows
    /// (blocking: call it off async threads). Errors reading a table show
    /// as the table's only row rather than failing the page.
    pub fn results(&self) -> Vec<TableTop> {
        let committed = mutex(&self.inner)
            .checkpoint
            .as_ref()
            .and_then(|c| c.last_committed_batch);
        let mut guard = mutex(&self.tables);
        let Some(tables) = guard.as_mut() else {
            return Vec::new();
        };
        let stale = tables
            .cache
            .first()
            .is_none_or(|t| t.refreshed_batch != committed);
        let due = tables
            .scanned
            .is_none_or(|(at, took)| at.elapsed() >= (took * SCAN_COST_FACTOR).max(MIN_RESCAN));
        if let (true, true, Some(checkpoint)) = (stale, due, &tables.checkpoint) {
            let started = Instant::now();
            tables.cache = tables
                .metas
                .iter()
                .map(|meta| top_of(checkpoint, meta, committed))
                .collect();
            tables.scanned = Some((Instant::now(), started.elapsed()));
        }
        tables.cache.clone()
    }
}

fn top_of(checkpoint: &Checkpoint, meta: &OperatorMeta, batch: Option<u64>) -> TableTop {
    let rows = TableReader::open(checkpoint, &meta.name)
        .and_then(|reader| reader.top(TOP_ROWS, None))
        .map(|rows| {
            rows.into_iter()
                .map(|(k, v)| ShownRow {
                    key: k.text,
                    value: v.text,
                    number: v.number,
                })
                .collect()
        })
        .unwrap_or_else(|e: TableError| {
            vec![ShownRow {
                key: "(error)".into(),
                value: e.to_string(),
                number: None,
            }]
        });
    TableTop {
        table: meta.name.clone(),
        key_type: meta.key_type.clone(),
        value_type: meta.state_type.clone(),
        refreshed_batch: batch,
        rows,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::progress::tests::sample;

    #[test]
    fn history_is_bounded_and_totals_are_not() {
        let monitor = JobMonitor::new("j", 3);
        for id in 1..=10 {
            let mut p = sample();
            p.batch_id = id;
            monitor.batch(p);
        }
        let s = monitor.snapshot();
        let ids: Vec<u64> = s.batches.iter().map(|b| b.batch_id).collect();
        assert_eq!(ids, [8, 9, 10]);
        assert_eq!(s.totals.batches, 10);
        assert_eq!(s.totals.input_rows, 400_000);
        assert_eq!(s.totals.counters["late records"], 30);
        assert_eq!(s.totals.processing.count, 10);
    }

    #[test]
    fn histogram_is_cumulative_with_inf_as_count() {
        let mut h = DurationHistogram::default();
        for ms in [0.5, 3.0, 3.0, 70.0, 100_000.0] {
            h.observe(ms);
        }
        let c = h.cumulative();
        assert_eq!(c[0], (0.001, 1));
        assert_eq!(c[2], (0.005, 3));
        assert_eq!(c[6], (0.1, 4));
        assert_eq!(c.last().map(|x| x.1), Some(4));
        assert_eq!(h.count, 5);
    }

    #[test]
    fn errors_and_printed_lines_are_bounded() {
        let monitor = JobMonitor::new("j", 3);
        for i in 0..(ERRORS_KEPT + 5) {
            monitor.error(format!("e{i}"));
        }
        monitor.printed(1, &"line\n".repeat(PRINTED_LINES_KEPT + 7));
        let s = monitor.snapshot();
        assert_eq!(s.errors.len(), ERRORS_KEPT);
        assert_eq!(s.errors[0].message, "e5");
        assert_eq!(s.printed.len(), PRINTED_LINES_KEPT);
        assert_eq!(s.totals.errors, (ERRORS_KEPT + 5) as u64);
    }
}
