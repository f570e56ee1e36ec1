//! Per-batch execution: nodes push chunks of one partition into a sink;
//! the batch context holds the batch's ranges, its pending RocksDB writes
//! and the outputs of nodes computed once per batch.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use rayon::prelude::*;
use rocksdb::WriteBatch;

use super::{PlanError, Result};
use crate::checkpoint::{Checkpoint, OperatorMeta, PlannedBatch};
use crate::sink::Transactions;
use crate::source::{ReadError, Source, read_with};

/// Receives the chunks of one partition of a node's output, in order.
pub type ChunkSink<'a> = dyn FnMut(RecordBatch) -> Result<()> + 'a;

/// Name, schema and consumer count of a node.
pub struct NodeInfo {
    name: Mutex<String>,
    pub schema: SchemaRef,
    consumers: AtomicUsize,
    pub id: usize,
    /// The operator kind (`map`, `reduce_by_key`, …).
    kind: &'static str,
    /// On many workers, the stage whose tasks produce this node's rows: 0
    /// for the source and what is computed from it, one more below each
    /// cut.
    level: AtomicUsize,
    /// Whether each of this node's rows is in the bucket of its key (below
    /// a keyed shuffle, through operators that keep the key): a keyed
    /// shuffle of such a node stays inside its task on many workers.
    keyed: AtomicBool,
    /// The shuffles where this operator cuts the job on many workers, as
    /// suffixes of its name (`""`, or a join's `-left`/`-right`) with the
    /// level (stage) that reads them.
    cuts: Vec<(&'static str, usize)>,
}

static NEXT_NODE_ID: AtomicUsize = AtomicUsize::new(1);

impl NodeInfo {
    pub fn new(name: String, schema: SchemaRef) -> Self {
        NodeInfo {
            name: Mutex::new(name),
            schema,
            consumers: AtomicUsize::new(0),
            id: NEXT_NODE_ID.fetch_add(1, Ordering::Relaxed),
            kind: "source",
            level: AtomicUsize::new(0),
            keyed: AtomicBool::new(false),
            cuts: Vec::new(),
        }
    }
    pub(crate) fn with_kind(mut self, kind: &'static str) -> Self {
        self.kind = kind;
        self
    }
    /// Where the node's rows are produced and which of its shuffles cut
    /// the job (see the fields).
    pub(crate) fn placed(
        mut self,
        level: usize,
        keyed: bool,
        cuts: Vec<(&'static str, usize)>,
    ) -> Self {
        self.level = AtomicUsize::new(level);
        self.keyed = AtomicBool::new(keyed);
        self.cuts = cuts;
        self
    }
    /// The names of the shuffles where this operator cuts the job, with
    /// the stage that reads each.
    pub fn cuts(&self) -> Vec<(String, usize)> {
        let name = self.name();
        self.cuts
            .iter()
            .map(|(s, level)| (format!("{name}{s}"), *level))
            .collect()
    }
    /// The stage reading the shuffle `suffix` of this operator if it cuts
    /// the job there.
    pub(crate) fn cut_level(&self, suffix: &str) -> Option<usize> {
        self.cuts
            .iter()
            .find(|(s, _)| *s == suffix)
            .map(|(_, level)| *level)
    }
    pub fn level(&self) -> usize {
        self.level.load(Ordering::Relaxed)
    }
    pub fn keyed(&self) -> bool {
        self.keyed.load(Ordering::Relaxed)
    }
    pub fn kind(&self) -> &'static str {
        self.kind
    }
    pub(crate) fn set_placement(&self, level: usize, keyed: bool) {
        self.level.store(level, Ordering::Relaxed);
        self.keyed.store(keyed, Ordering::Relaxed);
    }
    pub fn name(&self) -> String {
        sluice_log::common::mutex(&self.name).clone()
    }
    pub fn rename(&self, name: &str) {
        *sluice_log::common::mutex(&self.name) = name.to_owned();
    }
    pub fn add_consumer(&self) {
        self.consumers.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn shared(&self) -> bool {
        self.consumers.load(Ordering::Relaxed) > 1
    }
}

/// A node of the job graph.
pub trait Node: Send + Sync {
    fn info(&self) -> &NodeInfo;
    /// Partitions of this node's output in the current batch.
    fn partitions(&self, cx: &BatchCx) -> Result<usize>;
    /// Pushes partition `p`'s chunks into `out`.
    fn run(&self, cx: &BatchCx, p: usize, out: &mut ChunkSink<'_>) -> Result<()>;
    /// The state this node keeps, if any (checked against the checkpoint).
    fn state_meta(&self) -> Option<OperatorMeta> {
        None
    }
    /// Whether this node's output in a batch is a function of the batch's
    /// planned ranges alone: it reads no state, no table and no clock,
    /// reports nothing to the batch and has no effect outside it. Such a
    /// node may be computed before its batch is written ahead (while the
    /// batch before commits), or computed and thrown away.
    fn pure(&self) -> bool {
        false
    }
    /// Whether [`Node::compute_ahead`] does anything: a pure node whose
    /// output is computed whole, once per batch (a shuffle and what it
    /// reduces), not one computed chunk by chunk inside its consumer's
    /// task.
    fn computes_ahead(&self) -> bool {
        false
    }
    /// Computes this node's whole output for `cx`'s batch now, if
    /// [`Node::computes_ahead`].
    fn compute_ahead(&self, _cx: &BatchCx) {}
}

/// An output operation, run once per batch before the commit.
pub struct Output {
    pub name: String,
    /// The result table it writes, if it is a table sink.
    pub table: Option<OperatorMeta>,
    /// The operator state it keeps (a column family `state.<name>` each).
    pub state: Vec<OperatorMeta>,
    pub run: OutputFn,
}

/// The body of an output operation.
pub type OutputFn = Box<dyn Fn(&BatchCx) -> Result<()> + Send + Sync>;

/// What user callbacks learn about the batch.
#[derive(Debug, Clone, Copy)]
pub struct BatchInfo {
    pub batch_id: u64,
    pub batch_time_ms: i64,
}

type Memo = Arc<OnceLock<std::result::Result<Arc<Vec<RecordBatch>>, String>>>;
type WideMemo = Arc<OnceLock<std::result::Result<Arc<Vec<Vec<RecordBatch>>>, String>>>;

/// Outputs of pure nodes computed for a batch before it ran
/// ([`Node::compute_ahead`]), by node id.
#[derive(Default)]
pub struct ComputedAhead(HashMap<usize, WideMemo>);

impl ComputedAhead {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// The most room a batch's writes start with: a larger batch grows its
/// buffer as before.
pub const WRITE_CAPACITY_MAX: usize = 256 << 20;

/// Bytes of printed text a batch keeps for the web console.
const PRINTED_BYTES_KEPT: usize = 64 << 10;

/// What a batch's outputs left once they all ran.
pub struct BatchOutcome {
    /// Results and state, for the commit.
    pub writes: WriteBatch,
    /// Operators' counts (late records, bad records, …).
    pub counters: std::collections::BTreeMap<String, u64>,
    /// Event time per stream.
    pub watermarks: std::collections::BTreeMap<String, i64>,
    /// What console sinks printed.
    pub printed: String,
    /// Time spent in sinks outside the process (console output).
    pub sink_time: std::time::Duration,
}

/// Everything one batch's execution needs.
pub struct BatchCx<'a> {
    pub batch_id: u64,
    /// The batch this one follows (`batch_id - 1` in one process; on many
    /// workers batch ids follow the clock, and a task that was stopped
    /// skips some).
    pub previous_batch_id: u64,
    pub batch_time_ms: i64,
    pub interval_ms: i64,
    pub planned: &'a PlannedBatch,
    pub checkpoint: &'a Checkpoint,
    /// The job's Kafka transactions of this batch, which topic writers
    /// join and the driver commits before the checkpoint.
    pub transactions: &'a Transactions,
    /// Shuffle width: tasks per wide operator.
    pub parallelism: usize,
    writes: Mutex<WriteBatch>,
    /// Per-batch counts operators report (late records, bad records, …),
    /// shown in the batch's progress.
    counters: Mutex<std::collections::BTreeMap<String, u64>>,
    /// Event time per stream after this batch (the smallest, when several
    /// queries read one stream).
    watermarks: Mutex<std::collections::BTreeMap<String, i64>>,
    /// What console sinks printed, for the web console.
    printed: Mutex<String>,
    /// Time spent writing to sinks outside the process.
    sink_nanos: std::sync::atomic::AtomicU64,
    memo: Mutex<HashMap<(usize, usize), Memo>>,
    wide: Mutex<HashMap<usize, WideMemo>>,
    /// Which side of the job's shuffles this batch runs when the job runs
    /// on many workers (`None`: the whole job, in process).
    pub(crate) stage: Option<StageRole>,
    /// Changes whenever the state this batch runs over may have changed
    /// outside the job's own commits (a task moved between workers): caches
    /// of committed state filled under another epoch are dropped.
    pub task_epoch: u64,
}

/// One task's part of a job cut at its shuffles (many workers). Stage 0
/// has a task per source partition; stage `s ≥ 1` a task per bucket,
/// reading the repartition topics of the cuts of level `s`. A shuffle cut
/// at level `s` yields `inbox` (what those topics held for the bucket)
/// instead of running its parent; one cut deeper sends its buckets to
/// `outbox`, to be written to its repartition topic, and nothing below it
/// runs; one cut shallower yields nothing.
pub struct StageRole {
    stage: usize,
    /// Stage ≥ 1: the task's bucket.
    bucket: Option<usize>,
    inbox: HashMap<String, Vec<RecordBatch>>,
    /// Progress records read for this bucket per operator, in order.
    progress_in: HashMap<String, Vec<Vec<u8>>>,
    /// How many partitions each source has, by name: stage 0 has a task for
    /// each, and each may send progress.
    source_partitions: HashMap<String, u32>,
    outbox: Mutex<Vec<(String, usize, RecordBatch)>>,
    /// Progress an operator sends to every bucket of its repartition topic
    /// after its rows (its partition's event time: Flink's watermarks
    /// travel the same way, inside the data channels).
    progress_out: Mutex<Vec<(String, Vec<u8>)>>,
}

/// What a task sends on: repartition chunks (operator, bucket, rows) and
/// progress (operator, payload).
pub type Sent = (Vec<(String, usize, RecordBatch)>, Vec<(String, Vec<u8>)>);

impl StageRole {
    /// A stage-0 task's role, with nothing sent yet.
    pub fn map() -> Self {
        StageRole {
            stage: 0,
            bucket: None,
            inbox: HashMap::new(),
            progress_in: HashMap::new(),
            source_partitions: HashMap::new(),
            outbox: Mutex::new(Vec::new()),
            progress_out: Mutex::new(Vec::new()),
        }
    }

    /// The role of the task of `bucket` in `stage` (≥ 1), with what its
    /// repartition topics held for it.
    pub fn reduce(
        stage: usize,
        bucket: usize,
        inbox: HashMap<String, Vec<RecordBatch>>,
        progress: HashMap<String, Vec<Vec<u8>>>,
        source_partitions: HashMap<String, u32>,
    ) -> Self {
        StageRole {
            stage,
            bucket: Some(bucket),
            inbox,
            progress_in: progress,
            source_partitions,
            ..StageRole::map()
        }
    }

    /// What the task's batch sends on.
    pub fn into_sent(self) -> Sent {
        (
            self.outbox.into_inner().unwrap_or_else(|p| p.into_inner()),
            self.progress_out
                .into_inner()
                .unwrap_or_else(|p| p.into_inner()),
        )
    }

    pub(crate) fn stage(&self) -> usize {
        self.stage
    }

    pub(crate) fn bucket(&self) -> Option<usize> {
        self.bucket
    }

    pub(crate) fn inbox(&self, op: &str) -> Vec<RecordBatch> {
        self.inbox.get(op).cloned().unwrap_or_default()
    }

    pub(crate) fn send(&self, op: &str, bucket: usize, rows: RecordBatch) {
        sluice_log::common::mutex(&self.outbox).push((op.to_owned(), bucket, rows));
    }
}

impl<'a> BatchCx<'a> {
    pub fn new(
        planned: &'a PlannedBatch,
        checkpoint: &'a Checkpoint,
        transactions: &'a Transactions,
        interval_ms: i64,
        parallelism: usize,
    ) -> Self {
        BatchCx {
            batch_id: planned.batch_id,
            previous_batch_id: planned.batch_id.saturating_sub(1),
            batch_time_ms: planned.batch_time_ms,
            interval_ms,
            planned,
            checkpoint,
            transactions,
            parallelism: parallelism.max(1),
            writes: Mutex::new(WriteBatch::default()),
            counters: Mutex::new(std::collections::BTreeMap::new()),
            watermarks: Mutex::new(std::collections::BTreeMap::new()),
            printed: Mutex::new(String::new()),
            sink_nanos: std::sync::atomic::AtomicU64::new(0),
            memo: Mutex::new(HashMap::new()),
            wide: Mutex::new(HashMap::new()),
            stage: None,
            task_epoch: 0,
        }
    }

    /// Starts the batch's writes with room for `bytes` (a guess from the
    /// last batch; at most [`WRITE_CAPACITY_MAX`]).
    pub fn with_write_capacity(self, bytes: usize) -> Self {
        if bytes > 0 {
            *sluice_log::common::mutex(&self.writes) =
                WriteBatch::with_capacity_bytes(bytes.min(WRITE_CAPACITY_MAX));
        }
        self
    }

    /// Starts the batch with the outputs [`Node::compute_ahead`] computed
    /// for it (under a context over the same planned batch).
    pub fn with_computed_ahead(self, ahead: ComputedAhead) -> Self {
        *sluice_log::common::mutex(&self.wide) = ahead.0;
        self
    }

    /// The pure nodes' outputs this context computed; a node that failed
    /// is left out, to be computed again (and its error reported) when
    /// the batch runs.
    pub fn into_computed_ahead(self) -> ComputedAhead {
        let wide = self.wide.into_inner().unwrap_or_else(|p| p.into_inner());
        ComputedAhead(
            wide.into_iter()
                .filter(|(_, memo)| matches!(memo.get(), Some(Ok(_))))
                .collect(),
        )
    }

    /// Runs this batch as one task of a job cut at its shuffles.
    pub fn with_stage(mut self, stage: StageRole, task_epoch: u64) -> Self {
        self.stage = Some(stage);
        self.task_epoch = task_epoch;
        self
    }

    /// Follows batch `previous` (the last one this task ran), not
    /// necessarily `batch_id - 1`.
    pub fn after_batch(mut self, previous: u64) -> Self {
        self.previous_batch_id = previous.min(self.batch_id.saturating_sub(1));
        self
    }

    /// Whether a batch id that is a multiple of `every` lies in
    /// `(previous_batch_id, batch_id]`: a sliding window due at a batch a
    /// task skipped fires at the next one it runs.
    pub fn passes_multiple_of(&self, every: u64) -> bool {
        let every = every.max(1);
        self.batch_id / every > self.previous_batch_id / every
    }

    /// Whether this batch runs as one task of a job on many workers.
    pub fn on_workers(&self) -> bool {
        self.stage.is_some()
    }

    /// On a task of stage ≥ 1, its bucket; elsewhere `None`.
    pub fn reduce_bucket(&self) -> Option<usize> {
        self.stage.as_ref().and_then(StageRole::bucket)
    }

    /// On many workers, the stage this task runs; in one process `None`.
    pub fn task_stage(&self) -> Option<usize> {
        self.stage.as_ref().map(StageRole::stage)
    }

    /// Whether this batch is a stage-0 task's (source partition in,
    /// repartition records out).
    pub fn in_map_stage(&self) -> bool {
        self.task_stage() == Some(0)
    }

    /// On many workers, sends `progress` after the batch's rows to every
    /// bucket of `op`'s repartition topic; in one process nothing is sent.
    pub fn send_progress(&self, op: &str, progress: Vec<u8>) {
        if let Some(role) = &self.stage {
            sluice_log::common::mutex(&role.progress_out).push((op.to_owned(), progress));
        }
    }

    /// On a stage-1 task, the progress stage-0 tasks sent `op`'s bucket
    /// that this batch read, in order; elsewhere `None`.
    pub fn received_progress(&self, op: &str) -> Option<&[Vec<u8>]> {
        match &self.stage {
            Some(role) if role.stage > 0 => {
                Some(role.progress_in.get(op).map_or(&[][..], |p| p.as_slice()))
            }
            _ => None,
        }
    }

    /// On a stage-1 task, how many partitions source `name` has (each a
    /// stage-0 task that may send progress); elsewhere `None`.
    pub fn source_partitions(&self, name: &str) -> Option<u32> {
        match &self.stage {
            Some(role) if role.stage > 0 => role.source_partitions.get(name).copied(),
            _ => None,
        }
    }

    /// The stage role, to take the outbox back after the batch ran.
    pub fn take_stage(&mut self) -> Option<StageRole> {
        self.stage.take()
    }

    pub fn info(&self) -> BatchInfo {
        BatchInfo {
            batch_id: self.batch_id,
            batch_time_ms: self.batch_time_ms,
        }
    }

    /// Adds writes to the batch's atomic commit.
    pub fn write(&self, f: impl FnOnce(&mut WriteBatch)) {
        f(&mut sluice_log::common::mutex(&self.writes))
    }

    /// Adds `n` to the batch's counter `name` (shown in progress).
    pub fn count(&self, name: &str, n: u64) {
        if n > 0 {
            *sluice_log::common::mutex(&self.counters)
                .entry(name.to_owned())
                .or_default() += n;
        }
    }

    /// Notes stream `stream`'s watermark after this batch.
    pub fn watermark(&self, stream: &str, event_time_ms: i64) {
        let mut marks = sluice_log::common::mutex(&self.watermarks);
        let mark = marks.entry(stream.to_owned()).or_insert(event_time_ms);
        *mark = (*mark).min(event_time_ms);
    }

    /// Prints a console sink's text for this batch on stdout (kept for the
    /// web console too).
    pub fn print(&self, text: &str) {
        let started = std::time::Instant::now();
        crate::sink::console::write(text);
        self.sink_time(started.elapsed());
        let mut printed = sluice_log::common::mutex(&self.printed);
        // A batch's print can be huge; the console shows the last lines.
        if printed.len() < PRINTED_BYTES_KEPT {
            printed.push_str(text);
        }
    }

    /// Counts time spent writing to a sink outside the process.
    pub fn sink_time(&self, spent: std::time::Duration) {
        self.sink_nanos.fetch_add(
            u64::try_from(spent.as_nanos()).unwrap_or(u64::MAX),
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// The batch's writes and what it reports, once every output has run.
    pub fn finish(self) -> BatchOutcome {
        fn inner<T>(m: Mutex<T>) -> T {
            m.into_inner().unwrap_or_else(|p| p.into_inner())
        }
        BatchOutcome {
            writes: inner(self.writes),
            counters: inner(self.counters),
            watermarks: inner(self.watermarks),
            printed: inner(self.printed),
            sink_time: std::time::Duration::from_nanos(self.sink_nanos.into_inner()),
        }
    }

    /// Runs partition `p` of `node`, from its kept output if it has
    /// several consumers.
    pub fn run_node(&self, node: &Arc<dyn Node>, p: usize, out: &mut ChunkSink<'_>) -> Result<()> {
        if !node.info().shared() {
            return node.run(self, p, out);
        }
        let cell = sluice_log::common::mutex(&self.memo)
            .entry((node.info().id, p))
            .or_default()
            .clone();
        let chunks = cell.get_or_init(|| {
            let mut chunks = Vec::new();
            node.run(self, p, &mut |c| {
                chunks.push(c);
                Ok(())
            })
            .map(|_| Arc::new(chunks))
            .map_err(|e| e.to_string())
        });
        match chunks {
            Ok(chunks) => {
                for c in chunks.iter() {
                    out(c.clone())?;
                }
                Ok(())
            }
            Err(e) => Err(PlanError::Operator {
                operator: node.info().name(),
                message: e.clone(),
            }),
        }
    }

    /// Computes a wide node's whole output once per batch.
    pub fn wide_output(
        &self,
        node: &NodeInfo,
        compute: impl FnOnce() -> Result<Vec<Vec<RecordBatch>>>,
    ) -> Result<Arc<Vec<Vec<RecordBatch>>>> {
        let cell = sluice_log::common::mutex(&self.wide)
            .entry(node.id)
            .or_default()
            .clone();
        cell.get_or_init(|| compute().map(Arc::new).map_err(|e| e.to_string()))
            .clone()
            .map_err(|message| PlanError::Operator {
                operator: node.name(),
                message,
            })
    }

    /// All of `node`'s output for this batch, partitions in order.
    pub fn collect(&self, node: &Arc<dyn Node>) -> Result<Vec<RecordBatch>> {
        let n = node.partitions(self)?;
        let parts: Vec<Result<Vec<RecordBatch>>> = (0..n)
            .into_par_iter()
            .map(|p| {
                let mut chunks = Vec::new();
                self.run_node(node, p, &mut |c| {
                    chunks.push(c);
                    Ok(())
                })?;
                Ok(chunks)
            })
            .collect();
        let mut all = Vec::new();
        for part in parts {
            all.extend(part?);
        }
        Ok(all)
    }

    /// Runs `task` over every partition of `node` in parallel; each task
    /// receives that partition's chunks one by one.
    pub fn for_each_partition<R: Send>(
        &self,
        node: &Arc<dyn Node>,
        task: impl Fn(usize, &mut dyn FnMut(&mut ChunkSink<'_>) -> Result<()>) -> Result<R> + Sync,
    ) -> Result<Vec<R>> {
        let n = node.partitions(self)?;
        (0..n)
            .into_par_iter()
            .map(|p| task(p, &mut |sink| self.run_node(node, p, sink)))
            .collect()
    }
}

struct Narrow<F> {
    info: NodeInfo,
    parent: Arc<dyn Node>,
    f: F,
}

impl<F> Node for Narrow<F>
where
    F: Fn(&RecordBatch) -> Result<Option<RecordBatch>> + Send + Sync,
{
    fn info(&self) -> &NodeInfo {
        &self.info
    }
    fn partitions(&self, cx: &BatchCx) -> Result<usize> {
        self.parent.partitions(cx)
    }
    fn pure(&self) -> bool {
        self.parent.pure()
    }
    fn run(&self, cx: &BatchCx, p: usize, out: &mut ChunkSink<'_>) -> Result<()> {
        cx.run_node(&self.parent, p, &mut |chunk| {
            let mapped = (self.f)(&chunk).map_err(|e| operator_error(&self.info, e))?;
            match mapped {
                Some(mapped) => out(mapped),
                None => Ok(()),
            }
        })
    }
}

/// `e` naming the operator of `info` (by its current name), unless it
/// already names one.
pub(crate) fn operator_error(info: &NodeInfo, e: PlanError) -> PlanError {
    match e {
        PlanError::Operator { .. } => e,
        other => PlanError::Operator {
            operator: info.name(),
            message: other.to_string(),
        },
    }
}

/// A chunk-to-chunk operator fused into its parent's task.
pub fn narrow(
    info: NodeInfo,
    parent: Arc<dyn Node>,
    f: impl Fn(&RecordBatch) -> Result<Option<RecordBatch>> + Send + Sync + 'static,
) -> Arc<dyn Node> {
    Arc::new(Narrow { info, parent, f })
}

struct Union {
    info: NodeInfo,
    parents: Vec<Arc<dyn Node>>,
}

impl Node for Union {
    fn info(&self) -> &NodeInfo {
        &self.info
    }
    fn partitions(&self, cx: &BatchCx) -> Result<usize> {
        self.parents.iter().map(|p| p.partitions(cx)).sum()
    }
    fn pure(&self) -> bool {
        self.parents.iter().all(|p| p.pure())
    }
    fn run(&self, cx: &BatchCx, mut p: usize, out: &mut ChunkSink<'_>) -> Result<()> {
        for parent in &self.parents {
            let n = parent.partitions(cx)?;
            if p < n {
                return cx.run_node(parent, p, out);
            }
            p -= n;
        }
        Ok(())
    }
}

pub fn union(info: NodeInfo, parents: Vec<Arc<dyn Node>>) -> Arc<dyn Node> {
    Arc::new(Union { info, parents })
}

struct SourceNode {
    info: NodeInfo,
    source: Arc<dyn Source>,
}

impl Node for SourceNode {
    fn info(&self) -> &NodeInfo {
        &self.info
    }
    fn partitions(&self, cx: &BatchCx) -> Result<usize> {
        Ok(cx
            .planned
            .ranges
            .get(self.source.name())
            .map_or(0, Vec::len))
    }
    /// A replayable source reads the same records for a range every time;
    /// one that is not (a socket) consumes them.
    fn pure(&self) -> bool {
        self.source.replayable()
    }
    fn run(&self, cx: &BatchCx, p: usize, out: &mut ChunkSink<'_>) -> Result<()> {
        let Some(range) = cx
            .planned
            .ranges
            .get(self.source.name())
            .and_then(|r| r.get(p))
        else {
            return Ok(());
        };
        if range.from < range.until {
            read_range(&*self.source, range.partition, range.from, range.until, out)?;
        }
        Ok(())
    }
}

/// Reads `[from, until)` of a source partition into `out`. When `out`
/// fails, the source is told to stop and `out`'s own error is returned.
pub fn read_range(
    source: &dyn Source,
    partition: i32,
    from: i64,
    until: i64,
    out: &mut ChunkSink<'_>,
) -> Result<()> {
    read_with(source, partition, from, until, out).map_err(|e| match e {
        ReadError::Source(e) => e.into(),
        ReadError::Consumer(e) => e,
    })
}

pub fn source(info: NodeInfo, source: Arc<dyn Source>) -> Arc<dyn Node> {
    Arc::new(SourceNode { info, source })
}

/// A node whose output is computed whole, once per batch.
pub struct Wide<F> {
    pub info: NodeInfo,
    pub compute: F,
    pub state: Option<OperatorMeta>,
    /// See [`Node::pure`]: `compute` reads nothing but its parents, and
    /// they are pure.
    pub pure: bool,
}

impl<F> Node for Wide<F>
where
    F: Fn(&BatchCx, &NodeInfo) -> Result<Vec<Vec<RecordBatch>>> + Send + Sync,
{
    fn info(&self) -> &NodeInfo {
        &self.info
    }
    fn partitions(&self, cx: &BatchCx) -> Result<usize> {
        Ok(cx
            .wide_output(&self.info, || (self.compute)(cx, &self.info))?
            .len())
    }
    fn run(&self, cx: &BatchCx, p: usize, out: &mut ChunkSink<'_>) -> Result<()> {
        let parts = cx.wide_output(&self.info, || (self.compute)(cx, &self.info))?;
        if let Some(chunks) = parts.get(p) {
            for c in chunks {
                out(c.clone())?;
            }
        }
        Ok(())
    }
    fn pure(&self) -> bool {
        self.pure
    }
    fn computes_ahead(&self) -> bool {
        self.pure
    }
    fn compute_ahead(&self, cx: &BatchCx) {
        if self.pure {
            // A failure is kept out of what is handed on and met again
            // when the batch runs.
            let _ = cx.wide_output(&self.info, || (self.compute)(cx, &self.info));
        }
    }
    fn state_meta(&self) -> Option<OperatorMeta> {
        self.state.clone().map(|mut m| {
            m.name = self.info.name();
            m
        })
    }
}
