//! The driver: the [`StreamingContext`] a job is built on, and the batch
//! loop that keeps the exactly-once protocol.
//!
//! Every batch interval: plan a range `[from, until)` per source partition
//! (rate limits, data-loss policy, new partitions) → write the planned
//! batch to the checkpoint (synced) → run the job's outputs, one task per
//! partition on a dedicated thread pool → commit results, state and the
//! next offsets in one synced RocksDB write → report progress. After a
//! crash, a planned but uncommitted batch is re-run with the same ranges
//! and batch time ([`crate::checkpoint::decide_resume`]). When the next
//! batch starts right after a commit, its pure operators (reading,
//! parsing, shuffling: nothing that reads state) run during that commit;
//! it is written ahead only once the commit is done.
//!
//! The driver owns offsets and time; it never looks inside records.

mod aligned;
pub mod monitor;
pub mod progress;
pub mod rate;
pub mod txn_offsets;
pub mod worker;

pub use worker::WorkersOptions;

// Every DStream operator through real jobs of this driver.
#[cfg(test)]
mod plan_tests;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::checkpoint::{
    Checkpoint, CheckpointError, CommittedBatch, OperatorMeta, PlannedBatch, Range, Resume,
    STATE_CF_PREFIX, TABLE_CF_PREFIX,
};
use crate::plan::{BatchCx, ComputedAhead, DStream, Graph, PlanError, SharedGraph};
use crate::source::{PartitionInfo, Record, Source, SourceError, StartingPosition};
use progress::{BatchProgress, PartitionProgress, Phases, ProgressSink, WatermarkProgress};
use rate::RateLimiter;
use sluice_log::log::LogStore;

/// How long a clean stop waits for the checkpoint's compactions: longer
/// than any compaction of a state within a budget takes on one core, short
/// enough that a stop never seems to hang.
const SETTLE_LIMIT: Duration = Duration::from_secs(120);

/// What to do when retention deleted records the job has not read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnDataLoss {
    /// Stop with an error naming the partition and the lost range.
    #[default]
    Fail,
    /// Jump to the earliest offset still there and count the loss.
    Skip,
}

/// How a job runs. Defaults suit a long-running job.
#[derive(Debug, Clone)]
pub struct JobConfig {
    pub name: String,
    pub batch_interval: Duration,
    /// Default: `checkpoints/<name>`.
    pub checkpoint_dir: Option<PathBuf>,
    pub starting_position: StartingPosition,
    /// Spark's `maxRatePerPartition`, records per second.
    pub max_rate_per_partition: Option<f64>,
    /// Adapt the rate to the processing speed (Spark's PID estimator).
    pub backpressure: bool,
    /// Total records/s before the controller has measured anything.
    pub initial_rate: f64,
    /// Hard cap per partition per batch, so a batch's memory stays bounded
    /// whatever the backlog.
    pub max_records_per_batch: Option<u64>,
    /// Cap over all of a source's partitions per batch (Spark's
    /// maxOffsetsPerTrigger), split evenly among them. `None`: as many
    /// records as keep a batch's state writes within `state_memory`'s
    /// share, judged from the writes per record of the batches before.
    pub max_offsets_per_batch: Option<u64>,
    /// The process's state memory budget (`--state-memory`): RocksDB's
    /// block cache and memtables, the merges' hot values. Clones share it.
    pub state_memory: crate::checkpoint::StateMemory,
    pub on_data_loss: OnDataLoss,
    /// Tasks per wide operator; default: the machine's cores.
    pub parallelism: usize,
    pub reset_state: bool,
    /// Drain what is available at start-up, then stop (Spark's
    /// availableNow trigger).
    pub until_caught_up: bool,
    /// Stop after this many batches (tests, demos).
    pub max_batches: Option<u64>,
    pub progress: ProgressSink,
    /// Set by SIGINT/SIGTERM: finish the running batch, commit, stop.
    pub stop: Option<Arc<AtomicBool>>,
    /// Run as one of many worker processes sharing the job through Kafka
    /// ([`worker`]) instead of alone.
    pub workers: Option<WorkersOptions>,
}

impl JobConfig {
    pub fn new(name: impl Into<String>, batch_interval: Duration) -> Self {
        JobConfig {
            name: name.into(),
            batch_interval,
            checkpoint_dir: None,
            starting_position: StartingPosition::Earliest,
            max_rate_per_partition: None,
            backpressure: false,
            initial_rate: 10_000.0,
            max_records_per_batch: Some(1_000_000),
            max_offsets_per_batch: None,
            state_memory: crate::checkpoint::StateMemory::default(),
            on_data_loss: OnDataLoss::Fail,
            parallelism: std::thread::available_parallelism().map_or(2, |n| n.get()),
            reset_state: false,
            until_caught_up: false,
            max_batches: None,
            progress: ProgressSink::default(),
            stop: None,
            workers: None,
        }
    }

    pub fn checkpoint_path(&self) -> PathBuf {
        self.checkpoint_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("checkpoints").join(&self.name))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("job {job} is invalid: {}", .errors.join("; "))]
    InvalidJob { job: String, errors: Vec<String> },
    #[error(
        "data lost in {source_name} partition {partition}: offsets {from}..{log_start} were deleted by retention before the job read them. Restart with --on-data-loss skip to continue from offset {log_start}"
    )]
    DataLost {
        source_name: String,
        partition: i32,
        from: i64,
        log_start: i64,
    },
    #[error(
        "{source_name} partition {partition} ends at offset {high_watermark}, but the job already read up to {committed}: the topic was truncated or recreated. Use a new job name or --on-data-loss skip"
    )]
    OffsetAhead {
        source_name: String,
        partition: i32,
        committed: i64,
        high_watermark: i64,
    },
    // Not `source`: the message already carries it, and a source would
    // print it twice in an error chain.
    #[error("batch {batch_id} failed: {error}")]
    Batch { batch_id: u64, error: PlanError },
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("{0}")]
    Other(String),
}

/// A stop flag set by SIGINT or SIGTERM, for [`JobConfig::stop`]: the
/// running batch finishes and commits, then `run` returns.
pub fn stop_on_signals() -> std::io::Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, flag.clone())?;
    }
    Ok(flag)
}

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct RunSummary {
    pub batches: u64,
    pub records: u64,
    pub elapsed: Duration,
    pub last_batch_id: u64,
    /// Batches whose pure operators ran while the batch before committed.
    pub computed_ahead: u64,
}

/// Builds a job: sources and the DStreams derived from them.
pub struct StreamingContext {
    config: JobConfig,
    graph: SharedGraph,
}

impl StreamingContext {
    pub fn new(config: JobConfig) -> Self {
        let interval_ms = config.batch_interval.as_millis() as i64;
        StreamingContext {
            graph: Arc::new(Mutex::new(Graph::new(interval_ms))),
            config,
        }
    }

    pub fn config(&self) -> &JobConfig {
        &self.config
    }

    pub fn config_mut(&mut self) -> &mut JobConfig {
        &mut self.config
    }

    /// A stream of records from any direct-mode source.
    pub fn source(&self, source: impl Source + 'static) -> DStream<Record> {
        crate::plan::source_stream(&self.graph, Arc::new(source))
    }

    /// A stream of a topic of the bundled log store, read in-process.
    pub fn embedded(
        &self,
        store: Arc<LogStore>,
        topic: &str,
    ) -> Result<DStream<Record>, SourceError> {
        Ok(self.source(crate::source::embedded::EmbeddedSource::new(store, topic)?))
    }

    /// Declares that output operator `op` shuffles its source-partitioned
    /// input itself through [`crate::plan::exchange`]: on many workers the
    /// job is cut there (a repartition topic of its own).
    pub fn exchange_on_workers(&self, op: &str) {
        self.exchange_on_workers_at(op, 1);
    }

    /// [`StreamingContext::exchange_on_workers`] through a cut read by
    /// stage `level` ([`crate::plan::exchange_at`]).
    pub fn exchange_on_workers_at(&self, op: &str, level: usize) {
        sluice_log::common::mutex(&self.graph)
            .output_cuts
            .push((op.to_owned(), level));
    }

    /// Declares that on many workers the job's stage-1 tasks must run
    /// every batch, even without input (event time that moves on when the
    /// input goes idle); in one process every batch runs anyway.
    pub fn reduce_every_batch_on_workers(&self) {
        sluice_log::common::mutex(&self.graph).reduce_every_batch = true;
    }

    /// Records why part of the job cannot run on many workers: a job with
    /// such a part is refused there with this reason, and runs in one
    /// process as before.
    pub fn refuse_on_workers(&self, reason: String) {
        sluice_log::common::mutex(&self.graph)
            .worker_refusals
            .push(reason);
    }

    /// Runs the job until it is stopped (or caught up, or `max_batches`).
    pub fn run(mut self) -> Result<RunSummary, DriverError> {
        if let Some(workers) = self.config.workers.take() {
            return worker::run(self.config, self.graph, workers);
        }
        Driver::start(self.config, self.graph)?.run()
    }
}

struct Driver {
    config: JobConfig,
    graph: SharedGraph,
    checkpoint: Checkpoint,
    sources: Vec<Arc<dyn Source>>,
    offsets: BTreeMap<String, BTreeMap<i32, i64>>,
    lost_records: u64,
    next_batch_id: u64,
    replay: Option<PlannedBatch>,
    pool: rayon::ThreadPool,
    rate: RateLimiter,
    targets: Option<BTreeMap<String, BTreeMap<i32, i64>>>,
    fresh_job: bool,
    /// The job's Kafka transactions (topic sinks, dead letters), committed
    /// just before each batch's checkpoint.
    transactions: crate::sink::Transactions,
    /// The last batch's write batch size: the next one starts with that
    /// much room, so RocksDB's buffer is not regrown (and each growth
    /// copied into freshly faulted pages) many times per batch.
    last_write_bytes: usize,
    /// The result tables' memtable size as last set (RocksDB's own until
    /// the first batch).
    table_memtable_bytes: Option<usize>,
    /// The next batch, planned while the last one committed and not yet
    /// written ahead, with its pure nodes' outputs
    /// ([`Driver::commit_computing_ahead`]).
    ahead: Option<NextBatch>,
    /// The nodes computed for the next batch while a batch commits, in
    /// the order they were built (parents first).
    computed_ahead: Vec<Arc<dyn crate::plan::Node>>,
}

/// The batch to run next.
struct NextBatch {
    planned: PlannedBatch,
    parts: Vec<PartitionProgress>,
    /// A batch a crash left planned, run again over the same ranges.
    replayed: bool,
    /// What was computed for it while the batch before committed.
    computed: ComputedAhead,
    /// How long the batch before waited for that after its commit: work
    /// of this batch.
    computing_ahead: Duration,
}

/// When a batch's commit returned.
struct CommitDone {
    at: Instant,
    at_ms: i64,
}

impl CommitDone {
    fn now() -> Self {
        CommitDone {
            at: Instant::now(),
            at_ms: sluice_log::common::now_ms(),
        }
    }
}

impl Driver {
    /// Checks the job, opens its checkpoint and resumes from it: the next
    /// batch id, committed offsets, and a planned batch to replay if a crash
    /// left one.
    fn start(config: JobConfig, graph: SharedGraph) -> Result<Driver, DriverError> {
        let (sources, metas, tables) = checked_job(&config, &graph)?;
        let cfs = state_column_families(&metas, &tables);
        let mut checkpoint = Checkpoint::open_within(
            &config.checkpoint_path(),
            &config.name,
            &cfs,
            &config.state_memory,
        )?;
        checkpoint.register(&metas, &tables, config.reset_state)?;
        let (offsets, lost_records, next_batch_id, replay, fresh_job) = match checkpoint.resume()? {
            Resume::Fresh => (BTreeMap::new(), 0, 1, None, true),
            Resume::Next(c) => (c.offsets, c.lost_records, c.batch_id + 1, None, false),
            Resume::Replay(p) => {
                let committed = checkpoint.committed()?.unwrap_or_default();
                (
                    committed.offsets,
                    committed.lost_records,
                    p.batch_id,
                    Some(p),
                    committed.batch_id == 0,
                )
            }
        };
        for s in &sources {
            if let Some(o) = offsets.get(s.name()) {
                let list: Vec<(i32, i64)> = o.iter().map(|(p, o)| (*p, *o)).collect();
                s.resume(&list);
            }
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(config.parallelism.max(1))
            .thread_name(|i| format!("sluice-task-{i}"))
            .build()
            .map_err(|e| DriverError::Other(format!("cannot start task threads: {e}")))?;
        let interval_ms = config.batch_interval.as_millis() as i64;
        let rate = RateLimiter::new(
            config.max_rate_per_partition,
            config.max_records_per_batch,
            config.max_offsets_per_batch,
            config
                .backpressure
                .then_some((interval_ms, config.initial_rate)),
        )
        .with_state_writes_per_batch(config.state_memory.writes_per_batch());
        let targets = if config.until_caught_up {
            Some(high_watermarks(&sources)?)
        } else {
            None
        };
        let computed_ahead = sluice_log::common::mutex(&graph)
            .nodes
            .iter()
            .filter(|n| n.computes_ahead())
            .cloned()
            .collect();
        Ok(Driver {
            config,
            graph,
            checkpoint,
            sources,
            offsets,
            lost_records,
            next_batch_id,
            replay,
            pool,
            rate,
            targets,
            fresh_job,
            transactions: crate::sink::Transactions::default(),
            last_write_bytes: 0,
            table_memtable_bytes: None,
            ahead: None,
            computed_ahead,
        })
    }

    fn stopping(&self) -> bool {
        self.config
            .stop
            .as_ref()
            .is_some_and(|s| s.load(Ordering::Relaxed))
    }

    fn interval_ms(&self) -> i64 {
        self.config.batch_interval.as_millis().max(1) as i64
    }

    /// The first offset for a partition the job has no offset for.
    fn start_offset(&self, source: &dyn Source, info: &PartitionInfo) -> Result<i64, DriverError> {
        // Once a job has committed, a partition without an offset was added
        // since: it is read from the start, whatever the job's starting
        // position (as Spark does).
        if !self.fresh_job {
            return Ok(info.log_start);
        }
        Ok(match &self.config.starting_position {
            StartingPosition::Earliest => info.log_start,
            StartingPosition::Latest => info.high_watermark,
            StartingPosition::Timestamp(ts) => source.offset_for_time(info.partition, *ts)?,
            StartingPosition::Offsets(list) => list
                .iter()
                .find(|(p, _)| *p == info.partition)
                .map_or(info.log_start, |(_, o)| *o)
                .clamp(info.log_start, info.high_watermark),
        })
    }

    fn plan(
        &mut self,
        batch_id: u64,
    ) -> Result<(PlannedBatch, Vec<PartitionProgress>), DriverError> {
        let now = sluice_log::common::now_ms();
        let interval = self.interval_ms();
        let mut planned = PlannedBatch {
            batch_id,
            batch_time_ms: now - now.rem_euclid(interval),
            ranges: BTreeMap::new(),
            lost: BTreeMap::new(),
        };
        let mut parts_progress = Vec::new();
        for source in self.sources.clone() {
            let mut infos = source.partitions()?;
            infos.sort_by_key(|i| i.partition);
            let backlog = infos.len();
            let limit = self.rate.limit(interval, backlog);
            let mut ranges = Vec::new();
            for info in &infos {
                let (range, lost) = self.plan_partition(source.as_ref(), info, limit)?;
                if let Some(lost) = lost {
                    planned
                        .lost
                        .entry(source.name().to_owned())
                        .or_default()
                        .push(lost);
                }
                parts_progress.push(PartitionProgress {
                    source: source.name().to_owned(),
                    partition: info.partition,
                    from: range.from,
                    until: range.until,
                    lag: (info.high_watermark - range.until).max(0),
                    lag_ms: None,
                });
                ranges.push(range);
            }
            planned.ranges.insert(source.name().to_owned(), ranges);
        }
        Ok((planned, parts_progress))
    }

    /// One partition's range for the next batch: from the committed offset
    /// (or the start position) up to the high-water mark, capped by the
    /// rate limit and the caught-up target. Records retention deleted below
    /// `from` fail the job or come back as the lost range.
    fn plan_partition(
        &self,
        source: &dyn Source,
        info: &PartitionInfo,
        limit: Option<u64>,
    ) -> Result<(Range, Option<Range>), DriverError> {
        let mut lost = None;
        let committed = self
            .offsets
            .get(source.name())
            .and_then(|o| o.get(&info.partition))
            .copied();
        let mut from = match committed {
            Some(o) => o,
            None => self.start_offset(source, info)?,
        };
        if from < info.log_start {
            if self.config.on_data_loss == OnDataLoss::Fail && source.replayable() {
                return Err(DriverError::DataLost {
                    source_name: source.name().to_owned(),
                    partition: info.partition,
                    from,
                    log_start: info.log_start,
                });
            }
            lost = Some(Range {
                partition: info.partition,
                from,
                until: info.log_start,
            });
            from = info.log_start;
        }
        if from > info.high_watermark {
            if self.config.on_data_loss == OnDataLoss::Fail && source.replayable() {
                return Err(DriverError::OffsetAhead {
                    source_name: source.name().to_owned(),
                    partition: info.partition,
                    committed: from,
                    high_watermark: info.high_watermark,
                });
            }
            from = info.high_watermark;
        }
        let mut until = info.high_watermark;
        if let Some(targets) = &self.targets {
            let target = targets
                .get(source.name())
                .and_then(|t| t.get(&info.partition))
                .copied()
                .unwrap_or(from);
            until = until.min(target.max(from));
        }
        if let Some(limit) = limit {
            until = until.min(from.saturating_add(limit as i64));
        }
        Ok((
            Range {
                partition: info.partition,
                from,
                until,
            },
            lost,
        ))
    }

    fn caught_up(&self) -> bool {
        let Some(targets) = &self.targets else {
            return false;
        };
        targets.iter().all(|(source, parts)| {
            parts.iter().all(|(p, target)| {
                self.offsets
                    .get(source)
                    .and_then(|o| o.get(p))
                    .is_some_and(|o| o >= target)
                    || *target == 0
            })
        })
    }

    /// The batch loop: plan → execute → commit → report → pace, until
    /// stopped, caught up or out of batches.
    fn run(mut self) -> Result<RunSummary, DriverError> {
        let mut run = RunClock::new(&self);
        let outputs = sluice_log::common::mutex(&self.graph).outputs.clone();
        let mut progress = self.config.progress.open()?;
        self.note_non_replayable(&mut progress);
        if let Some(monitor) = &progress.monitor {
            let (_, tables) = sluice_log::common::mutex(&self.graph).metas();
            monitor.attach_tables(self.checkpoint.view(), tables);
            let plan = sluice_log::common::mutex(&self.graph).describe();
            monitor.running("one process".into(), self.config.batch_interval, Some(plan));
        }
        let mut summary = RunSummary::default();
        let result = self.batches(&mut run, &outputs, &mut progress, &mut summary);
        if let Some(monitor) = &progress.monitor {
            if let Err(e) = &result {
                monitor.error(e.to_string());
            }
            monitor.stopped(result.is_err());
        }
        result?;
        // A clean stop leaves the state in table files: the next start
        // would otherwise replay every write since the last flush from the
        // write-ahead log into a memtable (5 M keys: a second of CPU) only
        // to flush it again. What the log holds is durable either way.
        // Compactions under way finish too, or each short run would abort
        // the one the last run started.
        if let Err(e) = self.checkpoint.settle(SETTLE_LIMIT) {
            tracing::warn!("the checkpoint is left unsettled (nothing is lost): {e}");
        }
        summary.elapsed = run.started.elapsed();
        progress.finish(&summary);
        Ok(summary)
    }

    fn batches(
        &mut self,
        run: &mut RunClock,
        outputs: &[Arc<crate::plan::Output>],
        progress: &mut progress::Progress,
        summary: &mut RunSummary,
    ) -> Result<(), DriverError> {
        // A batch computed ahead started when the one before committed.
        let mut started_at_commit = None;
        while !self.finished(summary) {
            let planning = Instant::now();
            let batch_started = started_at_commit.take().unwrap_or(planning);
            let NextBatch {
                planned,
                parts,
                replayed,
                computed,
                computing_ahead,
            } = self.next_batch()?;
            summary.computed_ahead += u64::from(!computed.is_empty());
            fail::fail_point!("driver::after_plan", |_| Err(DriverError::Other(
                "failpoint".into()
            )));
            let plan_ms = ms(planning.elapsed());
            let another = !self.stopping()
                && self
                    .config
                    .max_batches
                    .is_none_or(|m| summary.batches + 1 < m);
            // `next_start` is this batch's start time until `pace`.
            let next_due = run.next_start + self.config.batch_interval;
            let executed =
                self.execute_and_commit(&planned, computed, outputs, another.then_some(next_due))?;
            if let Some(monitor) = &progress.monitor {
                monitor.committed(self.checkpoint.path(), &executed.committed);
                if !executed.printed.is_empty() {
                    monitor.printed(planned.batch_id, &executed.printed);
                }
            }
            let timing = run.batch_done(batch_started, executed.committed_at);
            if self.ahead.is_some() {
                started_at_commit = Some(executed.committed_at);
            }
            let records = planned_records(&planned.ranges);
            self.rate.on_batch_completed(
                timing.since_start_ms,
                records,
                timing.processing.as_secs_f64() * 1000.0,
                timing.scheduling_delay.as_secs_f64() * 1000.0,
            );
            let phases = Phases {
                plan_ms,
                compute_ms: executed.phases.compute_ms + ms(computing_ahead),
                ..executed.phases
            };
            self.report(
                progress, run, &planned, parts, replayed, &timing, phases, executed,
            )?;
            summary.batches += 1;
            summary.records += records;
            summary.last_batch_id = planned.batch_id;
            self.pace(run);
        }
        Ok(())
    }

    /// Whether the loop ends before another batch. A planned batch that a
    /// crash left uncommitted always runs first.
    fn finished(&self, summary: &RunSummary) -> bool {
        self.stopping()
            || (self.replay.is_none()
                && (self.caught_up()
                    || self
                        .config
                        .max_batches
                        .is_some_and(|m| summary.batches >= m)))
    }

    fn note_non_replayable(&self, progress: &mut progress::Progress) {
        let non_replayable: Vec<String> = self
            .sources
            .iter()
            .filter(|s| !s.replayable())
            .map(|s| s.name().to_owned())
            .collect();
        if !non_replayable.is_empty() {
            progress.note(&format!(
                "{} {} cannot replay a batch after a crash: records that arrived but were not committed are lost then (at most once)",
                if non_replayable.len() == 1 { "source" } else { "sources" },
                non_replayable.join(", ")
            ));
        }
    }

    /// Sizes the result tables' memtables to the batches being written
    /// ([`Checkpoint::table_memtable_bytes`]): up at once, down only when
    /// a quarter of the size would do, so a load near a boundary does not
    /// rewrite RocksDB's options file every batch. A memtable this batch
    /// filled is flushed now, between batches
    /// ([`Checkpoint::flush_filled_tables`]).
    fn fit_table_memtables(&mut self) {
        let fitted = self.checkpoint.table_memtable_bytes(self.last_write_bytes);
        // A size RocksDB refused leaves the old one, and a flush it did not
        // start happens at the next write: neither is worth failing a
        // committed batch for, nor retrying every batch.
        let result = match self.table_memtable_bytes {
            Some(now) if fitted <= now && fitted > now / 4 => {
                self.checkpoint.flush_filled_tables(now)
            }
            _ => {
                self.table_memtable_bytes = Some(fitted);
                self.checkpoint.set_table_memtables(fitted)
            }
        };
        if let Err(e) = result {
            tracing::warn!("{e}");
        }
    }

    /// Phase 1, plan: the batch a crash left planned but uncommitted (over
    /// exactly its ranges), or a new one, written ahead to the checkpoint.
    fn next_batch(&mut self) -> Result<NextBatch, DriverError> {
        if let Some(ahead) = self.ahead.take() {
            // Written ahead only now: the last batch's commit is durable,
            // and nothing of this one has left the process yet.
            self.checkpoint.write_planned(&ahead.planned)?;
            return Ok(ahead);
        }
        if let Some(p) = self.replay.take() {
            // Lag is only known from a fresh look at the partitions.
            let parts = p
                .ranges
                .iter()
                .flat_map(|(s, r)| {
                    r.iter().map(|r| PartitionProgress {
                        source: s.clone(),
                        partition: r.partition,
                        from: r.from,
                        until: r.until,
                        lag: 0,
                        lag_ms: None,
                    })
                })
                .collect();
            return Ok(NextBatch {
                planned: p,
                parts,
                replayed: true,
                computed: ComputedAhead::default(),
                computing_ahead: Duration::ZERO,
            });
        }
        let (p, parts) = self.plan(self.next_batch_id)?;
        self.checkpoint.write_planned(&p)?;
        Ok(NextBatch {
            planned: p,
            parts,
            replayed: false,
            computed: ComputedAhead::default(),
            computing_ahead: Duration::ZERO,
        })
    }

    /// Phases 2 and 3, execute and commit: every output runs over the
    /// planned ranges on the task pool, the batch's Kafka transactions
    /// commit, then results, state and the next offsets go to the
    /// checkpoint in one atomic write.
    fn execute_and_commit(
        &mut self,
        planned: &PlannedBatch,
        computed: ComputedAhead,
        outputs: &[Arc<crate::plan::Output>],
        next_due: Option<Instant>,
    ) -> Result<Executed, DriverError> {
        let started = Instant::now();
        let cx = BatchCx::new(
            planned,
            &self.checkpoint,
            &self.transactions,
            self.interval_ms(),
            self.config.parallelism,
        )
        .with_write_capacity(self.last_write_bytes)
        .with_computed_ahead(computed);
        let result: Result<(), PlanError> = self.pool.install(|| {
            for output in outputs {
                (output.run)(&cx).map_err(|e| match e {
                    PlanError::Operator { .. } => e,
                    other => PlanError::Operator {
                        operator: output.name.clone(),
                        message: other.to_string(),
                    },
                })?;
            }
            Ok(())
        });
        // The batch's Kafka transactions commit before its checkpoint: a
        // crash between the two replays the batch, whose writers then find
        // the batch id recorded with the transaction and skip.
        let computed = started.elapsed();
        let result = result.and_then(|()| {
            self.transactions
                .commit(planned.batch_id)
                .map_err(PlanError::from)
        });
        let transactions = started.elapsed() - computed;
        if let Err(error) = result {
            self.transactions.abort();
            return Err(DriverError::Batch {
                batch_id: planned.batch_id,
                error,
            });
        }
        let outcome = cx.finish();
        for (source, ranges) in &planned.ranges {
            let entry = self.offsets.entry(source.clone()).or_default();
            for r in ranges {
                entry.insert(r.partition, r.until);
            }
        }
        self.lost_records += planned_records(&planned.lost);
        let committed = CommittedBatch {
            batch_id: planned.batch_id,
            batch_time_ms: planned.batch_time_ms,
            offsets: self.offsets.clone(),
            lost_records: self.lost_records,
        };
        self.rate.on_state_writes(
            planned_records(&planned.ranges),
            outcome.writes.len() as u64,
        );
        self.last_write_bytes = outcome.writes.size_in_bytes();
        let before_commit = Instant::now();
        let done = self.commit_computing_ahead(outcome.writes, &committed, next_due)?;
        let commit_ms = ms(done.at - before_commit);
        self.fit_table_memtables();
        self.next_batch_id = planned.batch_id + 1;
        for s in &self.sources {
            if let Some(o) = self.offsets.get(s.name()) {
                let list: Vec<(i32, i64)> = o.iter().map(|(p, o)| (*p, *o)).collect();
                s.committed(&list);
            }
        }
        let sink = outcome.sink_time.min(computed) + transactions;
        Ok(Executed {
            counters: outcome.counters,
            watermarks: outcome.watermarks,
            printed: outcome.printed,
            committed,
            committed_at_ms: done.at_ms,
            committed_at: done.at,
            phases: Phases {
                plan_ms: 0.0,
                compute_ms: ms(computed.saturating_sub(outcome.sink_time)),
                sink_ms: ms(sink),
                commit_ms,
            },
        })
    }

    /// Commits a batch; when the next batch runs right after it (a job
    /// catching up, or behind its schedule), plans that batch and computes
    /// its pure nodes (reading, parsing and shuffling its records) on the
    /// task threads meanwhile, instead of leaving them idle through the
    /// synced write. The next batch is written ahead only when it starts
    /// ([`Driver::next_batch`]), after this commit, as the protocol wants;
    /// until then nothing of it is visible, and a stop or a crash throws
    /// it away.
    fn commit_computing_ahead(
        &mut self,
        writes: rocksdb::WriteBatch,
        committed: &CommittedBatch,
        next_due: Option<Instant>,
    ) -> Result<CommitDone, DriverError> {
        let next = next_due
            .filter(|due| self.targets.is_some() || Instant::now() >= *due)
            .filter(|_| self.replay.is_none() && !self.caught_up())
            .filter(|_| !self.computed_ahead.is_empty())
            // A plan that fails now is made again, and fails there.
            .and_then(|_| self.plan(committed.batch_id + 1).ok());
        let Some((planned, parts)) = next else {
            self.checkpoint.commit(writes, committed)?;
            return Ok(CommitDone::now());
        };
        let cx = BatchCx::new(
            &planned,
            &self.checkpoint,
            &self.transactions,
            self.interval_ms(),
            self.config.parallelism,
        );
        let result = self.pool.in_place_scope(|scope| {
            scope.spawn(|_| {
                for node in &self.computed_ahead {
                    node.compute_ahead(&cx);
                }
            });
            self.checkpoint
                .commit(writes, committed)
                .map(|()| CommitDone::now())
        });
        let computed = cx.into_computed_ahead();
        let done = result?;
        self.ahead = Some(NextBatch {
            planned,
            parts,
            replayed: false,
            computed,
            computing_ahead: done.at.elapsed(),
        });
        Ok(done)
    }

    /// Phase 4, report: one progress record for the committed batch.
    #[allow(clippy::too_many_arguments)]
    fn report(
        &self,
        progress: &mut progress::Progress,
        run: &RunClock,
        planned: &PlannedBatch,
        parts: Vec<PartitionProgress>,
        replayed: bool,
        timing: &BatchTiming,
        phases: Phases,
        executed: Executed,
    ) -> Result<(), DriverError> {
        let records = planned_records(&planned.ranges);
        let done_total: i64 = self.offsets.values().flat_map(|p| p.values()).sum();
        progress.emit(BatchProgress {
            batch_id: planned.batch_id,
            batch_time_ms: planned.batch_time_ms,
            input_rows: records,
            arrival_rows_per_s: records as f64 * 1000.0 / self.interval_ms() as f64,
            input_rows_per_s: records as f64 / timing.processing.as_secs_f64().max(1e-6),
            processing_ms: timing.processing.as_secs_f64() * 1000.0,
            scheduling_delay_ms: timing.scheduling_delay.as_secs_f64() * 1000.0,
            total_delay_ms: (timing.scheduling_delay + timing.processing).as_secs_f64() * 1000.0,
            committed_at_ms: executed.committed_at_ms,
            phases: Some(phases),
            partitions: parts,
            state_bytes: self.checkpoint.state_size_bytes(),
            state: if progress.monitor.is_some() {
                self.checkpoint.state_sizes()
            } else {
                Vec::new()
            },
            watermarks: watermark_progress(executed.watermarks, planned.batch_time_ms),
            lost_records: self.lost_records,
            counters: executed.counters,
            replayed,
            estimated_rate: self.rate.estimated_rate(),
            caught_up_fraction: self.targets.as_ref().map(|_| {
                let want = (run.total_target - run.start_total).max(1) as f64;
                ((done_total - run.start_total) as f64 / want).clamp(0.0, 1.0)
            }),
        })?;
        Ok(())
    }

    /// Phase 5, pace: wait for the next batch time (a job catching up does
    /// not wait), and when far behind, schedule from now rather than burst.
    fn pace(&mut self, run: &mut RunClock) {
        let interval = self.config.batch_interval;
        run.next_start = run.scheduled + interval;
        if self.targets.is_none() {
            if Instant::now() < run.next_start {
                // Planned before a wait, the next batch would miss what
                // arrives meanwhile (computing ahead is for a job that
                // starts its next batch at once).
                self.ahead = None;
            }
            if run.next_start.saturating_duration_since(Instant::now()) >= IDLE_FLUSH_MIN_WAIT {
                // Each commit inserts its keys into the result tables'
                // memtables, and an insert walks past the versions earlier
                // batches left there: the demo's commit took 5 ms into an
                // empty memtable and 8-14 ms into one holding three
                // batches. With this much time before the next batch the
                // flush costs the job nothing.
                if let Err(e) = self.checkpoint.flush_tables_holding(IDLE_FLUSH_MIN_BYTES) {
                    tracing::warn!("{e}");
                }
            }
            // Sleep until the next batch time, waking for a stop.
            while Instant::now() < run.next_start && !self.stopping() {
                std::thread::sleep(
                    (run.next_start - Instant::now()).min(Duration::from_millis(50)),
                );
            }
        }
        if Instant::now() > run.next_start + interval {
            run.next_start = Instant::now();
        }
    }
}

/// A job that will wait at least this long for its next batch flushes its
/// result tables' memtables first (a few times a second at most, so a job
/// with short batches does not write a table file per batch).
const IDLE_FLUSH_MIN_WAIT: Duration = Duration::from_millis(250);

/// Memtables smaller than this are left to fill: a commit into them is
/// cheap already, and each flush writes a file.
const IDLE_FLUSH_MIN_BYTES: usize = 1 << 20;

/// What executing and committing a batch left to report.
struct Executed {
    counters: BTreeMap<String, u64>,
    watermarks: BTreeMap<String, i64>,
    printed: String,
    committed: CommittedBatch,
    committed_at_ms: i64,
    committed_at: Instant,
    /// All but planning, which happens before.
    phases: Phases,
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Each stream's watermark and how far it trails the batch's time.
fn watermark_progress(marks: BTreeMap<String, i64>, batch_time_ms: i64) -> Vec<WatermarkProgress> {
    marks
        .into_iter()
        .map(|(stream, watermark_ms)| WatermarkProgress {
            stream,
            watermark_ms,
            gap_ms: batch_time_ms - watermark_ms,
        })
        .collect()
}

/// When the run started and when the next batch is due.
struct RunClock {
    started: Instant,
    /// When the batch now running was due.
    scheduled: Instant,
    next_start: Instant,
    /// Offsets summed over every partition: where `--until-caught-up` ends,
    /// and where this run began (for the fraction done).
    total_target: i64,
    start_total: i64,
}

/// How long one batch took and how late it started.
struct BatchTiming {
    processing: Duration,
    scheduling_delay: Duration,
    since_start_ms: f64,
}

impl RunClock {
    fn new(driver: &Driver) -> RunClock {
        let now = Instant::now();
        RunClock {
            started: now,
            scheduled: now,
            next_start: now,
            total_target: driver
                .targets
                .as_ref()
                .map_or(0, |t| t.values().flat_map(|p| p.values()).sum::<i64>()),
            start_total: driver.offsets.values().flat_map(|p| p.values()).sum(),
        }
    }

    /// The timing of a batch that started at `batch_started` and whose
    /// commit returned at `committed_at`.
    fn batch_done(&mut self, batch_started: Instant, committed_at: Instant) -> BatchTiming {
        self.scheduled = self.next_start;
        BatchTiming {
            processing: committed_at.saturating_duration_since(batch_started),
            scheduling_delay: batch_started.saturating_duration_since(self.scheduled),
            since_start_ms: self.started.elapsed().as_secs_f64() * 1000.0,
        }
    }
}

/// Records in a batch's ranges (or lost ranges).
fn planned_records(ranges: &BTreeMap<String, Vec<Range>>) -> u64 {
    ranges
        .values()
        .flat_map(|r| r.iter())
        .map(|r| (r.until - r.from).max(0) as u64)
        .sum()
}

/// The job's sources and the state and tables it keeps, once the graph is
/// known to be runnable: no errors found while building it, at least one
/// output, no two sources of one name.
#[allow(clippy::type_complexity)]
fn checked_job(
    config: &JobConfig,
    graph: &SharedGraph,
) -> Result<(Vec<Arc<dyn Source>>, Vec<OperatorMeta>, Vec<OperatorMeta>), DriverError> {
    let invalid = |errors: Vec<String>| DriverError::InvalidJob {
        job: config.name.clone(),
        errors,
    };
    let (sources, metas, tables) = {
        let g = sluice_log::common::mutex(graph);
        if !g.errors.is_empty() {
            return Err(invalid(g.errors.clone()));
        }
        if g.outputs.is_empty() {
            return Err(invalid(vec![
                "it has no output: add print, foreach_batch or a result table".into(),
            ]));
        }
        let (metas, tables) = g.metas();
        (g.sources.clone(), metas, tables)
    };
    let mut names = std::collections::HashSet::new();
    for s in &sources {
        if !names.insert(s.name().to_owned()) {
            return Err(invalid(vec![format!(
                "two sources are named {:?}",
                s.name()
            )]));
        }
    }
    Ok((sources, metas, tables))
}

/// The checkpoint's column families of operator state and result tables.
fn state_column_families(metas: &[OperatorMeta], tables: &[OperatorMeta]) -> Vec<String> {
    metas
        .iter()
        .map(|m| format!("{STATE_CF_PREFIX}{}", m.name))
        .chain(
            tables
                .iter()
                .map(|t| format!("{TABLE_CF_PREFIX}{}", t.name)),
        )
        .collect()
}

/// Every partition's high-water mark now: where `--until-caught-up` stops.
fn high_watermarks(
    sources: &[Arc<dyn Source>],
) -> Result<BTreeMap<String, BTreeMap<i32, i64>>, DriverError> {
    let mut targets = BTreeMap::new();
    for s in sources {
        let parts = s.partitions()?;
        targets.insert(
            s.name().to_owned(),
            parts
                .iter()
                .map(|p| (p.partition, p.high_watermark))
                .collect(),
        );
    }
    Ok(targets)
}
