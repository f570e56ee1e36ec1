//! The batch loop of one worker of a job on many workers.
//!
//! The job is cut at its shuffles into stages: stage 0 has one task per
//! partition of the input topics and runs everything above the first
//! shuffles (narrow operators, the map-side combine); each later stage has
//! one task per partition of its repartition topics (`P` of them, fixed
//! when the job is created) and runs what lies between its shuffles and
//! the next ones. Tasks are spread over the workers
//! by the group of [`crate::workers`]; each task keeps its own RocksDB
//! under `<checkpoint>/tasks/<stage>_<partition>/`.
//!
//! Every batch of a task is one Kafka transaction of the task's own
//! transactional producer (`sluice-<job>-<stage>_<partition>`): the
//! repartition records it sends on (Arrow IPC, one record per bucket's
//! chunk), the changelog records of every state write (compacted topic per
//! column family, partition = bucket), and its input offsets, committed to
//! the job's group. A task's new owner initialises the same transactional
//! id, which fences the old owner and aborts what it left open; it then
//! reads the committed offsets and replays the changelog into its local
//! database from where that database stopped. The local commit follows
//! the Kafka commit and is only a cache of it.
//!
//! Operators may send progress (their partition's event time) after their
//! rows to every bucket, as records keyed `sluice.progress` in the same
//! transaction; stage-1 tasks of jobs that keep event time run every
//! batch, even without input, so time passing can close windows.
//!
//! Jobs whose result depends on which rows share a batch run their stages
//! batch-aligned ([`super::aligned`]): batch ids follow the clock, travel
//! with the rows, and a later stage runs a batch once every task before it
//! is done with it.
//!
//! This module owns the tasks' producers, databases and offsets; it never
//! decides the assignment (the group's leader does) and never interprets
//! records beyond the repartition and changelog encodings it writes.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use arrow::array::{Array, BinaryViewArray, Int64Array, RecordBatch};
use rayon::prelude::*;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer, ProducerContext};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaErrorCode;
use rocksdb::WriteBatch;

use super::aligned;
use super::progress::{BatchProgress, PartitionProgress};
use super::{DriverError, JobConfig, RunSummary};
use crate::checkpoint::{Checkpoint, CommittedBatch, PlannedBatch, Range, TABLE_CF_PREFIX};
use crate::plan::{BatchCx, Output, PlanError, SharedGraph, StageRole};
use crate::sink::topic::DeliveryErrors;
use crate::source::kafka::KafkaSource;
use crate::source::record::{KEY, OFFSET, VALUE};
use crate::source::{Source, StartingPosition};
use crate::workers::{GroupMember, LocalTasks, TaskId, WorkerConfig};

/// Kafka requests of the runtime (offsets, transactions): long enough for
/// a loaded cluster.
const KAFKA_TIMEOUT: Duration = Duration::from_secs(60);
/// A repartition record holds at most about this many bytes of Arrow
/// data (below every broker's default `message.max.bytes` of 1 MB).
const REPARTITION_RECORD_BYTES: usize = 512 * 1024;
/// Rows per write while a task's state is restored from its changelog.
const RESTORE_WRITE_ROWS: usize = 64 * 1024;
/// The local database's key for the changelog offsets it has reached.
const CHANGELOG_OFFSETS_KEY: &[u8] = b"worker.changelog-offsets";
/// The key of a progress record in a repartition topic (rows have none).
const PROGRESS_KEY: &[u8] = b"sluice.progress";
/// A task that fails this many times in a row (its batch, or opening it)
/// ends the worker with the last error; below that it is closed and opened
/// again from its last commit, so a broker restart or a moved coordinator
/// does not end the worker.
const MAX_TASK_FAILURES: u32 = 5;
/// Threads opening a rebalance's gained tasks.
const OPEN_THREADS: usize = 8;
/// Changelog offsets a standby copy replays per column family per batch.
const STANDBY_RECORDS_PER_BATCH: i64 = 200_000;

/// Stage-1 tasks purge their repartition input (DeleteRecords) every this
/// many batches.
const PURGE_EVERY_BATCHES: u64 = 10;

/// How a job runs on many workers ([`JobConfig::workers`]).
#[derive(Debug, Clone)]
pub struct WorkersOptions {
    /// `host:port` of the Kafka cluster (or `sluice broker`) the job's
    /// input, internal topics, group and transactions live on.
    pub brokers: String,
    /// The group every worker of the job joins (default `sluice-<job>`).
    pub group: Option<String>,
    /// Names this worker in the group (default: host and checkpoint
    /// directory); stable across restarts.
    pub worker_id: Option<String>,
    /// Partitions of the repartition and changelog topics: the most stage-1
    /// tasks the job can have. Fixed when the job is created (default: the
    /// input topic's partition count); a different value is refused.
    pub partitions: Option<u32>,
    /// A worker silent this long loses its tasks to the others.
    pub session_timeout: Duration,
    /// Warm copies of each stage-1 task's state on other workers (the group
    /// leader's value counts).
    pub standby_replicas: u32,
}

impl WorkersOptions {
    pub fn new(brokers: impl Into<String>) -> Self {
        WorkersOptions {
            brokers: brokers.into(),
            group: None,
            worker_id: None,
            partitions: None,
            session_timeout: Duration::from_secs(10),
            standby_replicas: 0,
        }
    }
}

/// Topic names may hold letters, digits, `.`, `_` and `-`.
fn topic_safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The internal topic carrying operator `op`'s shuffle.
pub fn repartition_topic(job: &str, op: &str) -> String {
    format!("sluice-{}-{}-repartition", topic_safe(job), topic_safe(op))
}

/// The compacted topic every write of column family `cf` goes to (a result
/// table `t`'s is `sluice-<job>-table.t-changelog`: the table itself, last
/// value per key).
pub fn changelog_topic(job: &str, cf: &str) -> String {
    format!("sluice-{}-{}-changelog", topic_safe(job), topic_safe(cf))
}

/// The compacted topic where a job on many workers records its result
/// tables' types (table name → JSON), so readers of the changelogs can
/// decode them (`sluice state scan --brokers`).
pub fn tables_topic(job: &str) -> String {
    format!("sluice-{}-tables", topic_safe(job))
}

/// Records the job's result tables in [`tables_topic`].
fn publish_tables(
    producer: &BaseProducer<DeliveryErrors>,
    brokers: &str,
    job: &str,
    tables: &[crate::checkpoint::OperatorMeta],
) -> Result<(), DriverError> {
    if tables.is_empty() {
        return Ok(());
    }
    let topic = tables_topic(job);
    crate::sink::topic::kafka_topic_partitions(
        producer,
        brokers,
        &topic,
        1,
        &[("cleanup.policy", "compact")],
    )
    .map_err(DriverError::Other)?;
    for meta in tables {
        let json = serde_json::to_vec(meta).map_err(other)?;
        send(
            producer,
            BaseRecord::<str, [u8]>::to(&topic)
                .partition(0)
                .key(meta.name.as_str())
                .payload(&json[..]),
        )
        .map_err(|e| match e {
            TaskFailure::Fenced(m) => other(m),
            TaskFailure::Failed(e) => e,
        })?;
    }
    producer
        .flush(KAFKA_TIMEOUT)
        .map_err(|e| other(format!("cannot record the job's tables in {topic}: {e}")))?;
    if let Some(e) = sluice_log::common::mutex(&producer.context().first).take() {
        return Err(other(format!(
            "cannot record the job's tables in {topic}: {e}"
        )));
    }
    Ok(())
}

/// A table's entries: encoded key → encoded value, in key order.
pub type Entries = BTreeMap<Vec<u8>, Vec<u8>>;

/// Every record of `topic` (read_committed, from the log start to the last
/// stable offset) folded into its last value per key; a key whose last
/// record is a tombstone is absent.
fn last_values(brokers: &str, topic: &str) -> Result<Entries, DriverError> {
    let source = kafka_source(brokers, topic)?;
    let mut entries = BTreeMap::new();
    for info in source.partitions()? {
        if info.high_watermark <= info.log_start {
            continue;
        }
        for_each_keyed(
            &*source,
            info.partition,
            info.log_start,
            info.high_watermark,
            |key, value| {
                match value {
                    Some(v) => {
                        entries.insert(key.to_vec(), v.to_vec());
                    }
                    None => {
                        entries.remove(key);
                    }
                }
                Ok(())
            },
        )
        .map_err(|e| other(format!("cannot read {topic}: {e}")))?;
    }
    Ok(entries)
}

/// A result table of a job on many workers, read from its changelog: the
/// table's types and its last value per key, in key order. `table`
/// defaults to the one named like the job, or the job's only table.
pub fn read_table(
    brokers: &str,
    job: &str,
    table: Option<&str>,
) -> Result<(crate::checkpoint::OperatorMeta, Entries), DriverError> {
    let recorded = last_values(brokers, &tables_topic(job))?;
    let metas: Vec<crate::checkpoint::OperatorMeta> = recorded
        .values()
        .filter_map(|v| serde_json::from_slice(v).ok())
        .collect();
    let names = || {
        metas
            .iter()
            .map(|m| m.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let meta = match table {
        Some(t) => metas.iter().find(|m| m.name == t),
        None => metas
            .iter()
            .find(|m| m.name == job)
            .or(if metas.len() == 1 { metas.first() } else { None }),
    }
    .cloned()
    .ok_or_else(|| {
        other(if metas.is_empty() {
            format!(
                "job {job} has recorded no result tables at {brokers} (is it a job run with --workers-group, and has a worker started?)"
            )
        } else {
            format!("choose one of job {job}'s result tables with --table: {}", names())
        })
    })?;
    let changelog = changelog_topic(job, &format!("{TABLE_CF_PREFIX}{}", meta.name));
    let entries = last_values(brokers, &changelog)?;
    Ok((meta, entries))
}

/// One input topic of a job on many workers.
struct InputTopic {
    source: Arc<dyn Source>,
    topic: String,
    partitions: u32,
}

/// What the job graph means on many workers: its inputs, its cuts and its
/// state.
struct WorkerPlan {
    /// The job's input topics: stage-0 task `p` reads partition `p` of
    /// each that has it (Kafka Streams groups a subtopology's source
    /// partitions into tasks the same way).
    inputs: Vec<InputTopic>,
    /// Stage-0 tasks: the most partitions of an input topic.
    input_partitions: u32,
    /// Shuffling operators whose input comes from the source.
    /// Repartition topics by the operator writing them, with the stage
    /// reading each (1 for the first shuffle, one more per shuffle below).
    cuts: Vec<(String, usize)>,
    /// The last stage (0: no shuffle).
    stages: usize,
    /// Column families of state and result tables, each with a changelog.
    state_cfs: Vec<String>,
    metas: Vec<crate::checkpoint::OperatorMeta>,
    tables: Vec<crate::checkpoint::OperatorMeta>,
    /// P.
    partitions: u32,
    /// Stage-1 tasks run every batch, even without input.
    reduce_every_batch: bool,
    /// The job's stages run batch-aligned ([`super::aligned`]).
    aligned: bool,
    fingerprint: String,
}

fn invalid(config: &JobConfig, errors: Vec<String>) -> DriverError {
    DriverError::InvalidJob {
        job: config.name.clone(),
        errors,
    }
}

impl WorkerPlan {
    fn new(
        config: &JobConfig,
        options: &WorkersOptions,
        graph: &SharedGraph,
        producer: &BaseProducer<DeliveryErrors>,
    ) -> Result<WorkerPlan, DriverError> {
        let (sources, metas, tables) = super::checked_job(config, graph)?;
        let g = sluice_log::common::mutex(graph);
        let mut errors = Vec::new();
        let mut inputs = Vec::new();
        for source in &sources {
            match source.kafka_topic() {
                Some(t) => inputs.push(InputTopic {
                    source: source.clone(),
                    topic: t.to_owned(),
                    partitions: 0,
                }),
                None => errors.push(format!(
                    "source {} is not a Kafka topic: a job on many workers reads its input through --brokers",
                    source.name()
                )),
            }
        }
        let aligned = g
            .nodes
            .iter()
            .any(|n| crate::plan::BATCH_ALIGNED_KINDS.contains(&n.info().kind()));
        errors.extend(g.worker_refusals.iter().cloned());
        if !errors.is_empty() {
            return Err(invalid(config, errors));
        }
        let mut cuts: Vec<(String, usize)> = g.nodes.iter().flat_map(|n| n.info().cuts()).collect();
        cuts.extend(g.output_cuts.iter().cloned());
        let stages = cuts.iter().map(|(_, level)| *level).max().unwrap_or(0);
        let reduce_every_batch = g.reduce_every_batch || aligned;
        let mut state_cfs = super::state_column_families(&metas, &tables);
        if aligned {
            state_cfs.extend((1..=stages).map(aligned::buffer_cf));
        }
        let description = format!(
            "{}|{}|{}|{}",
            inputs
                .iter()
                .map(|i| i.topic.as_str())
                .collect::<Vec<_>>()
                .join(","),
            g.nodes
                .iter()
                .map(|n| format!("{}:{}", n.info().kind(), n.info().name()))
                .collect::<Vec<_>>()
                .join(","),
            g.outputs
                .iter()
                .map(|o| o.name.clone())
                .collect::<Vec<_>>()
                .join(","),
            cuts.iter()
                .map(|(op, level)| format!("{op}@{level}"))
                .collect::<Vec<_>>()
                .join(",")
        );
        drop(g);
        for input in &mut inputs {
            input.partitions = input.source.partitions()?.len() as u32;
            if input.partitions == 0 {
                return Err(DriverError::Other(format!(
                    "topic {} has no partitions at {}",
                    input.topic, options.brokers
                )));
            }
        }
        let input_partitions = inputs.iter().map(|i| i.partitions).max().unwrap_or(0);
        let partitions = Self::internal_partitions(
            config,
            options,
            producer,
            &cuts,
            &state_cfs,
            input_partitions,
        )?;
        Ok(WorkerPlan {
            inputs,
            input_partitions,
            cuts,
            stages,
            state_cfs,
            metas,
            tables,
            partitions,
            reduce_every_batch,
            aligned,
            fingerprint: format!(
                "{:016x}",
                fnv1a(format!("{description}|P={partitions}").as_bytes())
            ),
        })
    }

    /// P: the partition count of the job's internal topics, which are
    /// created here with it when missing; existing ones must agree.
    fn internal_partitions(
        config: &JobConfig,
        options: &WorkersOptions,
        producer: &BaseProducer<DeliveryErrors>,
        cuts: &[(String, usize)],
        state_cfs: &[String],
        input_partitions: u32,
    ) -> Result<u32, DriverError> {
        let topics: Vec<(String, [(&str, &str); 2])> = cuts
            .iter()
            .map(|(op, _)| {
                (
                    repartition_topic(&config.name, op),
                    [("cleanup.policy", "delete"), ("retention.ms", "-1")],
                )
            })
            .chain(state_cfs.iter().map(|cf| {
                (
                    changelog_topic(&config.name, cf),
                    [
                        ("cleanup.policy", "compact"),
                        ("min.compaction.lag.ms", "0"),
                    ],
                )
            }))
            .collect();
        let mut existing: Option<(String, u32)> = None;
        for (topic, _) in &topics {
            if let Some(n) = existing_partitions(producer, topic)? {
                existing = Some((topic.clone(), n));
                break;
            }
        }
        let partitions = match (&existing, options.partitions) {
            (Some((topic, n)), Some(wanted)) if *n != wanted => {
                return Err(invalid(
                    config,
                    vec![format!(
                        "the job was created with {n} partitions for its internal topics ({topic}), not {wanted}: the partition count is fixed when a job is created (it is how keys are spread over tasks); keep {n} or start a new job under another name"
                    )],
                ));
            }
            (Some((_, n)), _) => *n,
            (None, Some(wanted)) => wanted,
            (None, None) => input_partitions,
        };
        if partitions == 0 {
            return Err(invalid(
                config,
                vec!["the internal topics need at least one partition".into()],
            ));
        }
        for (topic, configs) in &topics {
            let n = crate::sink::topic::kafka_topic_partitions(
                producer,
                &options.brokers,
                topic,
                partitions,
                configs,
            )
            .map_err(DriverError::Other)?;
            if n != partitions {
                return Err(invalid(
                    config,
                    vec![format!(
                        "internal topic {topic} has {n} partitions, the job's other internal topics {partitions}: delete the job's internal topics or use another job name"
                    )],
                ));
            }
        }
        Ok(partitions)
    }

    fn tasks(&self) -> Vec<TaskId> {
        let mut tasks: Vec<TaskId> = (0..self.input_partitions)
            .map(|p| TaskId {
                stage: 0,
                partition: p,
            })
            .collect();
        for stage in 1..=self.stages as u32 {
            tasks.extend((0..self.partitions).map(|partition| TaskId { stage, partition }));
        }
        tasks
    }
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// The partition count of `topic`, if it exists.
fn existing_partitions<C: ProducerContext>(
    producer: &BaseProducer<C>,
    topic: &str,
) -> Result<Option<u32>, DriverError> {
    let md = producer
        .client()
        .fetch_metadata(Some(topic), KAFKA_TIMEOUT)
        .map_err(|e| {
            DriverError::Other(format!(
                "cannot read the metadata of topic {topic}: {e} (is the broker running?)"
            ))
        })?;
    Ok(md
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty())
        .map(|t| t.partitions().len() as u32))
}

/// Why a task's batch failed.
enum TaskFailure {
    /// Another worker owns the task now (its producer was fenced): drop
    /// the task and rejoin.
    Fenced(String),
    Failed(DriverError),
}

impl From<DriverError> for TaskFailure {
    fn from(e: DriverError) -> Self {
        TaskFailure::Failed(e)
    }
}

impl From<crate::checkpoint::CheckpointError> for TaskFailure {
    fn from(e: crate::checkpoint::CheckpointError) -> Self {
        TaskFailure::Failed(e.into())
    }
}

impl From<PlanError> for TaskFailure {
    fn from(e: PlanError) -> Self {
        TaskFailure::Failed(DriverError::Other(e.to_string()))
    }
}

/// Whether a transactional producer's error means another producer with
/// the same transactional id took over.
fn fenced(e: &KafkaError) -> bool {
    matches!(
        e.rdkafka_error_code(),
        Some(RDKafkaErrorCode::ProducerFenced)
            | Some(RDKafkaErrorCode::InvalidProducerEpoch)
            | Some(RDKafkaErrorCode::Fenced)
            | Some(RDKafkaErrorCode::InvalidProducerIdMapping)
    ) || e.to_string().contains("fenced")
}

/// One task this worker runs.
struct Task {
    id: TaskId,
    producer: Arc<BaseProducer<DeliveryErrors>>,
    db: Checkpoint,
    /// Input topic partitions (the source's, or the repartition topics'
    /// with their cut operator) and the next offset of each.
    inputs: Vec<Input>,
    /// Column family id → name, for turning a batch's writes into
    /// changelog records.
    cf_names: HashMap<u32, String>,
    /// Next changelog offset per column family the local database holds.
    changelog_next: BTreeMap<String, i64>,
    batch_id: u64,
    epoch: u64,
    /// Offsets up to which this task's repartition input may be purged.
    purge: Vec<(String, i32, i64)>,
    /// A batch-aligned stage-0 task told the next stage its input is
    /// caught up (`--until-caught-up`).
    finished: bool,
}

/// What a stage-≥1 task read from its repartition topics.
#[derive(Default)]
struct Inbox {
    /// Rows by cut operator.
    rows: HashMap<String, Vec<RecordBatch>>,
    /// Event-time progress records by cut operator.
    progress: HashMap<String, Vec<Vec<u8>>>,
    /// Batch-aligned rows: (operator, batch id, offset, Arrow IPC).
    aligned_rows: Vec<(String, u64, i64, Vec<u8>)>,
    /// Batch-aligned progress: (operator, sending partition, batch id).
    aligned_progress: Vec<(String, u32, u64)>,
}

/// One transaction of a task.
struct TaskBatch {
    batch_id: u64,
    batch_time_ms: i64,
    /// `None`: the outputs do not run (a batch-aligned task buffering what
    /// it read).
    role: Option<StageRole>,
    /// In a batch-aligned job, how the rows it sends are tagged.
    tag: Option<Tag>,
}

/// The batch id tagging a batch-aligned task's rows, and the progress it
/// reports after them.
#[derive(Clone, Copy)]
struct Tag {
    rows: u64,
    progress: u64,
}

fn task_cf<'a>(task: &'a Task, name: &str) -> Result<&'a rocksdb::ColumnFamily, TaskFailure> {
    task.db
        .cf(name)
        .map_err(|e| TaskFailure::Failed(other(format!("task {}: {e}", task.id))))
}

/// A warm copy of a task another worker runs: its database, caught up
/// from the changelogs every batch, never run (Kafka Streams' standby
/// task). Promoted, it is closed and the task opens over the same
/// directory with almost nothing left to restore.
struct Standby {
    db: Checkpoint,
    /// Next changelog offset per column family the database holds.
    changelog_next: BTreeMap<String, i64>,
}

struct Input {
    /// The cut operator whose shuffle this repartition topic carries
    /// (none for the source).
    op: Option<String>,
    topic: String,
    source: Arc<dyn Source>,
    next: i64,
}

/// How far a catch-up with the changelogs got.
struct CaughtUp {
    /// Next changelog offset per column family.
    next: BTreeMap<String, i64>,
    records: u64,
    bytes: u64,
}

/// What one task's batch did.
#[derive(Default)]
struct TaskReport {
    records: u64,
    source_records: u64,
    transactions: u64,
    repartition_bytes: u64,
    changelog_records: u64,
    counters: BTreeMap<String, u64>,
    /// Each stream's event time on this worker's tasks (the smallest).
    watermarks: BTreeMap<String, i64>,
    partitions: Vec<PartitionProgress>,
}

/// What every task of this worker reads and never changes.
struct Env {
    config: JobConfig,
    options: WorkersOptions,
    plan: WorkerPlan,
    outputs: Vec<Arc<Output>>,
    /// The job's group, for committed offsets and the group metadata sent
    /// with each transaction's offsets.
    group: BaseConsumer,
    group_id: String,
    /// (cut operator, topic, reader) of each repartition topic.
    /// (cut operator, topic, reader, stage reading it) of each repartition
    /// topic.
    repartition_sources: Vec<(String, String, Arc<dyn Source>, usize)>,
    changelog_sources: BTreeMap<String, Arc<dyn Source>>,
    /// With --until-caught-up: where each input partition ended at start.
    targets: Option<BTreeMap<(String, i32), i64>>,
    /// The generation and member id this worker holds in the job's group,
    /// which its transactions' offset commits carry (KIP-447).
    generation: Option<(i32, String)>,
}

/// One worker's run of a job (see the module doc).
struct Worker {
    env: Env,
    member: GroupMember,
    runtime: tokio::runtime::Runtime,
    tasks: BTreeMap<TaskId, Task>,
    standbys: BTreeMap<TaskId, Standby>,
    /// How far the local copies of tasks this worker does not run now have
    /// read their changelogs (sum over column families): told to the
    /// group's leader, which prefers the worker furthest ahead.
    local_state: BTreeMap<TaskId, i64>,
    /// Consecutive failures of a task (or of a look at the topics: `None`).
    failures: HashMap<Option<TaskId>, u32>,
    epoch: u64,
    pool: rayon::ThreadPool,
    admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext>,
}

pub(crate) fn run(
    config: JobConfig,
    graph: SharedGraph,
    options: WorkersOptions,
) -> Result<RunSummary, DriverError> {
    let monitor = config.progress.monitor.clone();
    if let Some(monitor) = &monitor {
        let group = options
            .group
            .clone()
            .unwrap_or_else(|| format!("sluice-{}", config.name));
        monitor.running(
            format!("worker of group {group}"),
            config.batch_interval,
            Some(sluice_log::common::mutex(&graph).describe()),
        );
    }
    let result = Worker::start(config, graph, options).and_then(|mut worker| {
        let result = worker.run();
        worker.leave();
        result
    });
    if let Some(monitor) = &monitor {
        if let Err(e) = &result {
            monitor.error(e.to_string());
        }
        monitor.stopped(result.is_err());
    }
    result
}

fn kafka_source(brokers: &str, topic: &str) -> Result<Arc<dyn Source>, DriverError> {
    Ok(Arc::new(KafkaSource::new(
        topic.to_owned(),
        brokers,
        topic,
        None,
        Vec::new(),
    )?))
}

fn other(e: impl std::fmt::Display) -> DriverError {
    DriverError::Other(e.to_string())
}

impl Worker {
    fn start(
        config: JobConfig,
        graph: SharedGraph,
        options: WorkersOptions,
    ) -> Result<Worker, DriverError> {
        let brokers = options.brokers.clone();
        let meta_producer: BaseProducer<DeliveryErrors> =
            crate::sink::topic::producer_config(&brokers)
                .create_with_context(DeliveryErrors::new("the job's metadata"))
                .map_err(|e| other(format!("cannot create a Kafka client for {brokers}: {e}")))?;
        let plan = WorkerPlan::new(&config, &options, &graph, &meta_producer)?;
        publish_tables(&meta_producer, &brokers, &config.name, &plan.tables)?;
        let outputs = sluice_log::common::mutex(&graph).outputs.clone();
        let group_id = options
            .group
            .clone()
            .unwrap_or_else(|| format!("sluice-{}", config.name));
        let worker_id = options.worker_id.clone().unwrap_or_else(|| {
            format!(
                "{}:{}",
                std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into()),
                config.checkpoint_path().display()
            )
        });
        let mut member_config =
            WorkerConfig::new(&brokers, &group_id, &worker_id, &plan.fingerprint);
        member_config.session_timeout = options.session_timeout;
        member_config.heartbeat_interval =
            (options.session_timeout / 4).max(Duration::from_millis(100));
        member_config.rebalance_timeout = options.session_timeout.max(Duration::from_secs(5)) * 3;
        member_config.standby_replicas = options.standby_replicas;
        let member = GroupMember::new(member_config, plan.tasks());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("sluice-worker-group")
            .enable_all()
            .build()
            .map_err(|e| other(format!("cannot start the worker's group runtime: {e}")))?;
        let group: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("group.id", &group_id)
            .set("enable.auto.commit", "false")
            // Committed offsets only once their transaction committed.
            .set("isolation.level", "read_committed")
            .create()
            .map_err(|e| other(format!("cannot create a Kafka consumer for {brokers}: {e}")))?;
        let admin = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .create()
            .map_err(|e| {
                other(format!(
                    "cannot create a Kafka admin client for {brokers}: {e}"
                ))
            })?;
        let mut repartition_sources = Vec::new();
        for (op, level) in &plan.cuts {
            let topic = repartition_topic(&config.name, op);
            let source = kafka_source(&brokers, &topic)?;
            repartition_sources.push((op.clone(), topic, source, *level));
        }
        let mut changelog_sources = BTreeMap::new();
        for cf in &plan.state_cfs {
            let topic = changelog_topic(&config.name, cf);
            changelog_sources.insert(cf.clone(), kafka_source(&brokers, &topic)?);
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(config.parallelism.max(1))
            .thread_name(|i| format!("sluice-task-{i}"))
            .build()
            .map_err(|e| other(format!("cannot start task threads: {e}")))?;
        let targets = if config.until_caught_up {
            let mut targets = BTreeMap::new();
            for input in &plan.inputs {
                for p in input.source.partitions()? {
                    targets.insert((input.topic.clone(), p.partition), p.high_watermark);
                }
            }
            Some(targets)
        } else {
            None
        };
        tracing::info!(
            group = %group_id,
            worker = %worker_id,
            tasks = plan.tasks().len(),
            partitions = plan.partitions,
            "starting as a worker of job {}",
            config.name
        );
        Ok(Worker {
            env: Env {
                config,
                options,
                plan,
                outputs,
                group,
                group_id,
                repartition_sources,
                changelog_sources,
                targets,
                generation: None,
            },
            member,
            runtime,
            tasks: BTreeMap::new(),
            standbys: BTreeMap::new(),
            local_state: BTreeMap::new(),
            failures: HashMap::new(),
            epoch: 0,
            pool,
            admin,
        })
    }

    fn stopping(&self) -> bool {
        self.env
            .config
            .stop
            .as_ref()
            .is_some_and(|s| s.load(Ordering::Relaxed))
    }

    /// The batch loop: rejoin when the group rebalances, run every task's
    /// batch, report, pace.
    fn run(&mut self) -> Result<RunSummary, DriverError> {
        let started = Instant::now();
        let mut progress = self.env.config.progress.open()?;
        let mut summary = RunSummary::default();
        let interval = self.env.config.batch_interval;
        let mut next_start = Instant::now();
        let mut tick: u64 = 0;
        while !self.stopping() {
            if self.member.needs_rejoin() {
                self.rebalance()?;
            }
            let batch_started = Instant::now();
            tick += 1;
            let report = self.run_tasks()?;
            self.update_standbys();
            let processing = batch_started.elapsed();
            if report.records > 0 {
                summary.batches += 1;
                summary.records += report.source_records;
                summary.last_batch_id = tick;
                self.purge_repartition_input();
                let mut counters = report.counters;
                counters.insert("tasks".into(), self.tasks.len() as u64);
                counters.insert("transactions".into(), report.transactions);
                counters.insert("repartition bytes".into(), report.repartition_bytes);
                counters.insert("changelog records".into(), report.changelog_records);
                let batch_time_ms = sluice_log::common::now_ms();
                progress.emit(BatchProgress {
                    batch_id: tick,
                    batch_time_ms,
                    input_rows: report.records,
                    arrival_rows_per_s: report.records as f64 / interval.as_secs_f64().max(1e-3),
                    input_rows_per_s: report.records as f64 / processing.as_secs_f64().max(1e-6),
                    processing_ms: processing.as_secs_f64() * 1000.0,
                    scheduling_delay_ms: batch_started
                        .saturating_duration_since(next_start)
                        .as_secs_f64()
                        * 1000.0,
                    total_delay_ms: batch_started.elapsed().as_secs_f64() * 1000.0,
                    committed_at_ms: sluice_log::common::now_ms(),
                    phases: None,
                    partitions: report.partitions,
                    state_bytes: self.tasks.values().map(|t| t.db.state_size_bytes()).sum(),
                    state: if progress.monitor.is_some() {
                        self.state_sizes()
                    } else {
                        Vec::new()
                    },
                    watermarks: super::watermark_progress(report.watermarks, batch_time_ms),
                    lost_records: 0,
                    counters,
                    replayed: false,
                    estimated_rate: None,
                    caught_up_fraction: None,
                })?;
            } else if self.env.targets.is_some() {
                match self.env.caught_up() {
                    Ok(true) => break,
                    Ok(false) => {}
                    Err(e) => self.task_failed(None, e)?,
                }
            }
            if self
                .env
                .config
                .max_batches
                .is_some_and(|m| summary.batches >= m)
            {
                break;
            }
            next_start += interval;
            // Catching up does not wait between batches that had work.
            // Batch-aligned jobs take one batch id per interval.
            let busy = report.records > 0 && self.env.targets.is_some() && !self.env.plan.aligned;
            while !busy
                && Instant::now() < next_start
                && !self.stopping()
                && !self.member.needs_rejoin()
            {
                std::thread::sleep((next_start - Instant::now()).min(Duration::from_millis(50)));
            }
            if Instant::now() > next_start + interval {
                next_start = Instant::now();
            }
        }
        summary.elapsed = started.elapsed();
        progress.finish(&summary);
        Ok(summary)
    }

    /// Leaves the group so the others take the tasks over at once instead
    /// of after the session timeout.
    fn leave(&mut self) {
        self.tasks.clear();
        self.runtime.block_on(self.member.leave());
    }

    /// Rejoins the group at a batch boundary: revoked tasks close, gained
    /// ones open (fencing their previous owner) and restore their state.
    fn rebalance(&mut self) -> Result<(), DriverError> {
        if self.epoch == 0 {
            self.local_state = self.env.state_on_disk();
        }
        for (id, task) in &self.tasks {
            self.local_state
                .insert(*id, task.changelog_next.values().sum::<i64>());
        }
        for (id, standby) in &self.standbys {
            self.local_state
                .insert(*id, standby.changelog_next.values().sum::<i64>());
        }
        let local = LocalTasks {
            owned: self.tasks.keys().copied().collect(),
            state: self.local_state.clone(),
        };
        let generation = self
            .runtime
            .block_on(self.member.join(&local))
            .map_err(other)?;
        self.env.generation = Some((generation.generation_id, generation.member_id.clone()));
        let assigned: BTreeSet<TaskId> = generation.tasks.iter().copied().collect();
        self.tasks.retain(|id, _| assigned.contains(id));
        // A standby promoted to active closes first: the task opens over
        // its directory.
        let standbys: BTreeSet<TaskId> = generation
            .standbys
            .iter()
            .filter(|t| !assigned.contains(t))
            .copied()
            .collect();
        self.standbys.retain(|id, _| standbys.contains(id));
        let gained: Vec<TaskId> = assigned
            .iter()
            .filter(|t| !self.tasks.contains_key(t))
            .copied()
            .collect();
        self.epoch += 1;
        let (env, epoch) = (&self.env, self.epoch);
        // One look at every topic's partitions for all the tasks opened.
        let layout = if gained.is_empty() {
            Layout::new()
        } else {
            match env.layout() {
                Ok(layout) => layout,
                Err(e) => {
                    self.task_failed(None, e)?;
                    return Ok(());
                }
            }
        };
        // Opening is mostly waiting on the broker (a producer's
        // init_transactions, offset lookups): more threads than cores.
        let opened: Vec<(TaskId, Result<Task, DriverError>)> = std::thread::scope(|scope| {
            let per_thread = gained.len().div_ceil(OPEN_THREADS).max(1);
            let handles: Vec<_> = gained
                .chunks(per_thread)
                .map(|ids| {
                    let layout = &layout;
                    scope.spawn(move || {
                        ids.iter()
                            .map(|id| (*id, env.open_task(*id, epoch, layout)))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| {
                    h.join()
                        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
                })
                .collect()
        });
        for (id, task) in opened {
            match task {
                Ok(task) => {
                    self.tasks.insert(id, task);
                }
                Err(e) => self.task_failed(Some(id), e)?,
            }
        }
        for id in standbys {
            if self.standbys.contains_key(&id) {
                continue;
            }
            match self.env.open_standby(id) {
                Ok(standby) => {
                    self.standbys.insert(id, standby);
                }
                // A copy is an optimisation: the task restores without it.
                Err(e) => tracing::warn!(task = %id, "cannot keep a standby copy: {e}"),
            }
        }
        let owned: Vec<String> = self.tasks.keys().map(ToString::to_string).collect();
        let mut owned = if owned.is_empty() {
            "none".to_owned()
        } else {
            owned.join(",")
        };
        if !self.standbys.is_empty() {
            let copies: Vec<String> = self.standbys.keys().map(ToString::to_string).collect();
            owned.push_str(&format!(" · standby copies: {}", copies.join(",")));
        }
        tracing::info!(
            generation = generation.generation_id,
            "tasks of this worker: {owned}"
        );
        if self.env.config.progress.lines {
            eprintln!(
                "group {} · generation {} · this worker's tasks: {owned}",
                self.env.group_id, generation.generation_id
            );
        }
        Ok(())
    }

    /// Keys and bytes per column family, summed over this worker's tasks.
    fn state_sizes(&self) -> Vec<super::progress::StateSize> {
        let mut sizes: BTreeMap<String, super::progress::StateSize> = BTreeMap::new();
        for size in self.tasks.values().flat_map(|t| t.db.state_sizes()) {
            match sizes.get_mut(&size.name) {
                Some(sum) => {
                    sum.keys += size.keys;
                    sum.bytes += size.bytes;
                }
                None => {
                    sizes.insert(size.name.clone(), size);
                }
            }
        }
        sizes.into_values().collect()
    }

    /// Counts a failure of task `id` (`None`: of looking at the topics).
    /// Below [`MAX_TASK_FAILURES`] in a row the task is closed, the worker
    /// waits a moment and rejoins, and the task opens again from its last
    /// commit; at the limit the error ends the worker.
    fn task_failed(&mut self, id: Option<TaskId>, error: DriverError) -> Result<(), DriverError> {
        let n = self.failures.entry(id).or_default();
        *n += 1;
        let what = id.map_or_else(
            || "looking at the job's topics".to_owned(),
            |id| format!("task {id}"),
        );
        if *n >= MAX_TASK_FAILURES {
            return Err(other(format!("{what} failed {n} times in a row: {error}")));
        }
        tracing::warn!("{what} failed (attempt {n} of {MAX_TASK_FAILURES}): {error}");
        if let Some(monitor) = &self.env.config.progress.monitor {
            monitor.error(format!(
                "{what} failed (attempt {n} of {MAX_TASK_FAILURES}), retrying from its last commit: {error}"
            ));
        }
        if self.env.config.progress.lines {
            eprintln!(
                "{what} failed (attempt {n} of {MAX_TASK_FAILURES}), retrying from its last commit: {error}"
            );
        }
        if let Some(id) = id {
            self.tasks.remove(&id);
        }
        self.member.request_rejoin();
        std::thread::sleep(Duration::from_millis(500 * u64::from(*n)));
        Ok(())
    }

    /// Runs one batch of every task with input waiting, in parallel.
    fn run_tasks(&mut self) -> Result<TaskReport, DriverError> {
        let ends = match self.env.input_ends(&self.tasks) {
            Ok(ends) => {
                self.failures.remove(&None);
                ends
            }
            Err(e) => {
                self.task_failed(None, e)?;
                return Ok(TaskReport::default());
            }
        };
        let env = &self.env;
        let limit = env.config.max_records_per_batch.unwrap_or(u64::MAX) as i64;
        let now = sluice_log::common::now_ms();
        let interval = env.config.batch_interval.as_millis().max(1) as i64;
        let batch_time_ms = now - now.rem_euclid(interval);
        let mut work: Vec<(&mut Task, Vec<Range>)> = Vec::new();
        for task in self.tasks.values_mut() {
            let partition = task.id.partition as i32;
            let ranges: Vec<Range> = task
                .inputs
                .iter()
                .map(|i| {
                    let end = ends
                        .get(&i.topic)
                        .and_then(|e| e.get(&partition))
                        .copied()
                        .unwrap_or(i.next);
                    Range {
                        partition,
                        from: i.next,
                        until: end.max(i.next).min(i.next.saturating_add(limit)),
                    }
                })
                .collect();
            // Batch-aligned stage-0 tasks report their progress every batch,
            // and later stages run every batch even without input.
            let tick = env.plan.aligned || (task.id.stage >= 1 && env.plan.reduce_every_batch);
            if tick || ranges.iter().any(|r| r.until > r.from) {
                work.push((task, ranges));
            }
        }
        let results: Vec<(TaskId, Result<TaskReport, TaskFailure>)> = self.pool.install(|| {
            work.into_par_iter()
                .map(|(task, ranges)| (task.id, env.run_task(task, ranges, batch_time_ms)))
                .collect()
        });
        let mut total = TaskReport::default();
        for (id, result) in results {
            match result {
                Ok(r) => {
                    self.failures.remove(&Some(id));
                    total.add(r);
                }
                Err(TaskFailure::Fenced(why)) => {
                    tracing::warn!(task = %id, "another worker took the task over: {why}");
                    if self.env.config.progress.lines {
                        eprintln!("task {id} was taken over by another worker ({why}); rejoining");
                    }
                    self.tasks.remove(&id);
                    self.member.request_rejoin();
                }
                Err(TaskFailure::Failed(e)) => self.task_failed(Some(id), e)?,
            }
        }
        Ok(total)
    }

    /// Catches the standby copies up with their changelogs, a bounded
    /// stretch per batch so the active tasks are not held up.
    fn update_standbys(&mut self) {
        if self.standbys.is_empty() {
            return;
        }
        let layout = match self.env.changelog_layout() {
            Ok(layout) => layout,
            Err(e) => {
                tracing::warn!("standby copies wait: {e}");
                return;
            }
        };
        for (id, standby) in &mut self.standbys {
            match self
                .env
                .catch_up(*id, &standby.db, &layout, Some(STANDBY_RECORDS_PER_BATCH))
            {
                Ok(caught) => standby.changelog_next = caught.next,
                Err(e) => tracing::warn!(task = %id, "standby copy behind: {e}"),
            }
        }
    }

    /// Deletes the repartition records every stage-1 task of this worker
    /// has committed past (Kafka Streams purges them the same way).
    fn purge_repartition_input(&mut self) {
        let mut tpl = TopicPartitionList::new();
        for task in self.tasks.values_mut() {
            for (topic, partition, offset) in task.purge.drain(..) {
                let _ = tpl.add_partition_offset(&topic, partition, Offset::Offset(offset));
            }
        }
        if tpl.count() == 0 {
            return;
        }
        let opts = rdkafka::admin::AdminOptions::new().operation_timeout(Some(KAFKA_TIMEOUT));
        match self
            .runtime
            .block_on(self.admin.delete_records(&tpl, &opts))
        {
            Ok(_) => {}
            // Only disk space is at stake: the next purge retries.
            Err(e) => tracing::warn!("purging repartition topics: {e}"),
        }
    }
}

impl TaskReport {
    fn add(&mut self, r: TaskReport) {
        self.records += r.records;
        self.source_records += r.source_records;
        self.transactions += r.transactions;
        self.repartition_bytes += r.repartition_bytes;
        self.changelog_records += r.changelog_records;
        self.partitions.extend(r.partitions);
        for (k, v) in r.counters {
            *self.counters.entry(k).or_default() += v;
        }
        for (stream, w) in r.watermarks {
            let mark = self.watermarks.entry(stream).or_insert(w);
            *mark = (*mark).min(w);
        }
    }
}

impl Env {
    /// Whether the whole job (every worker's part) has read the input as
    /// far as it reached at start and moved all of it through the
    /// repartition topics: the group's committed offsets say so.
    fn caught_up(&self) -> Result<bool, DriverError> {
        let Some(targets) = &self.targets else {
            return Ok(false);
        };
        let mut wanted: Vec<(String, i32, i64)> = targets
            .iter()
            .filter(|(_, t)| **t > 0)
            .map(|((topic, p), t)| (topic.clone(), *p, *t))
            .collect();
        for (_, topic, source, _) in &self.repartition_sources {
            for info in source.partitions()? {
                if info.high_watermark > info.log_start {
                    wanted.push((topic.clone(), info.partition, info.high_watermark));
                }
            }
        }
        if wanted.is_empty() {
            return Ok(true);
        }
        let committed = self.committed(wanted.iter().map(|(t, p, _)| (t.as_str(), *p)))?;
        Ok(wanted
            .iter()
            .all(|(t, p, want)| committed.get(&(t.clone(), *p)).is_some_and(|c| c >= want)))
    }

    /// The group's committed offsets (of committed transactions only).
    fn committed<'a>(
        &self,
        partitions: impl Iterator<Item = (&'a str, i32)>,
    ) -> Result<HashMap<(String, i32), i64>, DriverError> {
        let mut tpl = TopicPartitionList::new();
        for (t, p) in partitions {
            tpl.add_partition(t, p);
        }
        let got = self
            .group
            .committed_offsets(tpl, KAFKA_TIMEOUT)
            .map_err(|e| {
                other(format!(
                    "cannot read group {}'s committed offsets: {e}",
                    self.group_id
                ))
            })?;
        Ok(got
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) if o >= 0 => Some(((e.topic().to_owned(), e.partition()), o)),
                _ => None,
            })
            .collect())
    }

    /// Where each input partition of the worker's tasks ends now (the last
    /// stable offset; for the source, capped by the caught-up target).
    fn input_ends(
        &self,
        tasks: &BTreeMap<TaskId, Task>,
    ) -> Result<HashMap<String, HashMap<i32, i64>>, DriverError> {
        let mut topics: Vec<(&str, &Arc<dyn Source>)> = self
            .plan
            .inputs
            .iter()
            .map(|i| (i.topic.as_str(), &i.source))
            .collect();
        for (_, t, s, _) in &self.repartition_sources {
            topics.push((t.as_str(), s));
        }
        let mut ends = HashMap::new();
        for (topic, source) in topics {
            if !tasks
                .values()
                .any(|t| t.inputs.iter().any(|i| i.topic == topic))
            {
                continue;
            }
            let mut by_partition = HashMap::new();
            for info in source.partitions()? {
                let mut end = info.high_watermark;
                if let Some(t) = self
                    .targets
                    .as_ref()
                    .and_then(|t| t.get(&(topic.to_owned(), info.partition)))
                {
                    end = end.min(*t);
                }
                by_partition.insert(info.partition, end);
            }
            ends.insert(topic.to_owned(), by_partition);
        }
        Ok(ends)
    }

    /// The stage-1 task databases a previous run of this worker left in
    /// its checkpoint directory, and how far each read its changelogs.
    fn state_on_disk(&self) -> BTreeMap<TaskId, i64> {
        let mut found = BTreeMap::new();
        let Ok(dirs) = std::fs::read_dir(self.config.checkpoint_path().join("tasks")) else {
            return found;
        };
        for dir in dirs.flatten() {
            let name = dir.file_name();
            let Some((stage, partition)) = name.to_str().and_then(|n| n.split_once('_')) else {
                continue;
            };
            let (Ok(stage), Ok(partition)) = (stage.parse::<u32>(), partition.parse::<u32>())
            else {
                continue;
            };
            if stage == 0 {
                continue;
            }
            let Ok(db) = Checkpoint::open_read_only(&dir.path(), &self.config.name) else {
                continue;
            };
            let offsets: BTreeMap<String, i64> = match db.db().get(CHANGELOG_OFFSETS_KEY) {
                Ok(Some(bytes)) => serde_json::from_slice(&bytes).unwrap_or_default(),
                _ => continue,
            };
            found.insert(TaskId { stage, partition }, offsets.values().sum());
        }
        found
    }

    fn task_dir(&self, id: TaskId) -> PathBuf {
        self.config
            .checkpoint_path()
            .join("tasks")
            .join(format!("{}_{}", id.stage, id.partition))
    }

    /// The partitions of the input, repartition and changelog topics now.
    fn layout(&self) -> Result<Layout, DriverError> {
        let mut layout = Layout::new();
        for input in &self.plan.inputs {
            layout.insert(input.topic.clone(), input.source.partitions()?);
        }
        for (_, topic, source, _) in &self.repartition_sources {
            layout.insert(topic.clone(), source.partitions()?);
        }
        for source in self.changelog_sources.values() {
            layout.insert(source.name().to_owned(), source.partitions()?);
        }
        Ok(layout)
    }

    /// Takes a task over: its producer fences the previous owner (aborting
    /// what it left open), its offsets come from the group, its state from
    /// the changelog.
    fn open_task(&self, id: TaskId, epoch: u64, layout: &Layout) -> Result<Task, DriverError> {
        let txn_id = format!(
            "sluice-{}-{}_{}",
            topic_safe(&self.config.name),
            id.stage,
            id.partition
        );
        let producer: BaseProducer<DeliveryErrors> =
            crate::sink::topic::producer_config(&self.options.brokers)
                .set("transactional.id", &txn_id)
                .set("transaction.timeout.ms", "60000")
                .set("compression.type", "lz4")
                .set("linger.ms", "1")
                .create_with_context(DeliveryErrors::tracking_offsets(&txn_id))
                .map_err(|e| other(format!("cannot create the producer of task {id}: {e}")))?;
        producer.init_transactions(KAFKA_TIMEOUT).map_err(|e| {
            other(format!(
                "task {id}: cannot start transactions with transactional id {txn_id}: {e}"
            ))
        })?;
        let db = self.open_task_db(id)?;
        let mut cf_names = HashMap::new();
        for cf in &self.plan.state_cfs {
            cf_names.insert(cf_id(&db, cf)?, cf.clone());
        }
        let mut inputs = Vec::new();
        if id.stage == 0 {
            for input in self
                .plan
                .inputs
                .iter()
                .filter(|i| i.partitions > id.partition)
            {
                inputs.push(Input {
                    op: None,
                    topic: input.topic.clone(),
                    source: input.source.clone(),
                    next: 0,
                });
            }
        } else {
            let read_here = self
                .repartition_sources
                .iter()
                .filter(|(_, _, _, level)| *level == id.stage as usize);
            for (op, topic, source, _) in read_here {
                inputs.push(Input {
                    op: Some(op.clone()),
                    topic: topic.clone(),
                    source: source.clone(),
                    next: 0,
                });
            }
        }
        let partition = id.partition as i32;
        let committed = self.committed(inputs.iter().map(|i| (i.topic.as_str(), partition)))?;
        for input in &mut inputs {
            let info = partition_info(layout, &input.topic, partition)?;
            input.next = match committed.get(&(input.topic.clone(), partition)) {
                Some(o) => *o,
                None if input.op.is_none() => match &self.config.starting_position {
                    StartingPosition::Latest => info.high_watermark,
                    StartingPosition::Timestamp(ts) => {
                        input.source.offset_for_time(partition, *ts)?
                    }
                    StartingPosition::Offsets(list) => list
                        .iter()
                        .find(|(p, _)| *p == partition)
                        .map_or(info.log_start, |(_, o)| *o),
                    StartingPosition::Earliest => info.log_start,
                },
                None => info.log_start,
            };
            if input.next < info.log_start {
                return Err(DriverError::DataLost {
                    source_name: input.topic.clone(),
                    partition,
                    from: input.next,
                    log_start: info.log_start,
                });
            }
        }
        let batch_id = db.committed()?.map_or(0, |c| c.batch_id);
        let mut task = Task {
            id,
            producer: Arc::new(producer),
            db,
            inputs,
            cf_names,
            changelog_next: BTreeMap::new(),
            batch_id,
            epoch,
            purge: Vec::new(),
            finished: false,
        };
        if id.stage >= 1 {
            self.restore(&mut task, layout)?;
        }
        Ok(task)
    }

    /// Replays the task's changelogs into its database, from where the
    /// database stopped up to the last stable offset.
    fn restore(&self, task: &mut Task, layout: &Layout) -> Result<(), DriverError> {
        let started = Instant::now();
        let caught = self.catch_up(task.id, &task.db, layout, None)?;
        task.changelog_next = caught.next;
        if caught.records > 0 {
            let secs = started.elapsed().as_secs_f64();
            let (records, bytes) = (caught.records, caught.bytes);
            tracing::info!(task = %task.id, records, bytes, secs, "restored state from the changelog");
            if self.config.progress.lines {
                eprintln!(
                    "task {} restored {records} state records ({:.1} MiB) from its changelog in {secs:.2} s",
                    task.id,
                    bytes as f64 / f64::from(1 << 20),
                );
            }
        }
        Ok(())
    }

    /// The local database of task `id`, its operators and tables
    /// registered, drawing on the process's state memory.
    fn open_task_db(&self, id: TaskId) -> Result<Checkpoint, DriverError> {
        let mut db = Checkpoint::open_within(
            &self.task_dir(id),
            &self.config.name,
            &self.plan.state_cfs,
            &self.config.state_memory,
        )?;
        db.register(&self.plan.metas, &self.plan.tables, self.config.reset_state)?;
        Ok(db)
    }

    /// Opens a standby copy of task `id` over its directory; it catches up
    /// batch by batch ([`Worker::update_standbys`]).
    fn open_standby(&self, id: TaskId) -> Result<Standby, DriverError> {
        let db = self.open_task_db(id)?;
        let changelog_next = match db.db().get(CHANGELOG_OFFSETS_KEY).map_err(other)? {
            Some(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
            None => BTreeMap::new(),
        };
        Ok(Standby { db, changelog_next })
    }

    /// The partitions of the changelog topics now.
    fn changelog_layout(&self) -> Result<Layout, DriverError> {
        let mut layout = Layout::new();
        for source in self.changelog_sources.values() {
            layout.insert(source.name().to_owned(), source.partitions()?);
        }
        Ok(layout)
    }

    /// Replays task `id`'s changelogs into `db` from where it stopped, up
    /// to the last stable offset (at most `limit` offsets per column
    /// family), and records how far it got.
    fn catch_up(
        &self,
        id: TaskId,
        db: &Checkpoint,
        layout: &Layout,
        limit: Option<i64>,
    ) -> Result<CaughtUp, DriverError> {
        let partition = id.partition as i32;
        let mut known: BTreeMap<String, i64> =
            match db.db().get(CHANGELOG_OFFSETS_KEY).map_err(other)? {
                Some(bytes) => serde_json::from_slice(&bytes).unwrap_or_default(),
                None => BTreeMap::new(),
            };
        let (mut restored, mut bytes) = (0u64, 0u64);
        for (cf_name, source) in &self.changelog_sources {
            let info = partition_info(layout, source.name(), partition)?;
            let cf = db.cf(cf_name)?;
            let mut from = known.get(cf_name).copied().unwrap_or(0);
            if from > info.high_watermark {
                // The changelog was recreated: the local copy is not of it.
                tracing::warn!(task = %id, "local state of {cf_name} is ahead of its changelog; rebuilding it");
                let mut wipe = WriteBatch::default();
                wipe.delete_range_cf(cf, Vec::<u8>::new(), vec![0xffu8; 256]);
                db.write(wipe)?;
                from = 0;
            }
            let from = from.max(info.log_start);
            let until = limit.map_or(info.high_watermark, |l| {
                info.high_watermark.min(from.saturating_add(l))
            });
            if from < until {
                let mut batch = WriteBatch::default();
                for_each_keyed(&**source, partition, from, until, |key, value| {
                    match value {
                        Some(v) => {
                            bytes += (key.len() + v.len()) as u64;
                            batch.put_cf(cf, key, v);
                        }
                        None => batch.delete_cf(cf, key),
                    }
                    restored += 1;
                    if batch.len() >= RESTORE_WRITE_ROWS {
                        db.write_unsynced(std::mem::take(&mut batch))?;
                    }
                    Ok(())
                })
                .map_err(|e| other(format!("task {id}: cannot restore {cf_name}: {e}")))?;
                db.write_unsynced(batch)?;
            }
            known.insert(cf_name.clone(), until.max(from));
        }
        let mut record = WriteBatch::default();
        record.put(
            CHANGELOG_OFFSETS_KEY,
            serde_json::to_vec(&known).map_err(other)?,
        );
        db.write_unsynced(record)?;
        Ok(CaughtUp {
            next: known,
            records: restored,
            bytes,
        })
    }

    /// One batch of one task, as one Kafka transaction, then the local
    /// commit.
    fn run_task(
        &self,
        task: &mut Task,
        ranges: Vec<Range>,
        batch_time_ms: i64,
    ) -> Result<TaskReport, TaskFailure> {
        if self.plan.aligned {
            return self.run_aligned_task(task, ranges, batch_time_ms);
        }
        let stage = if task.id.stage == 0 {
            StageRole::map()
        } else {
            let inbox = self.read_inbox(task, &ranges)?;
            self.reduce_role(task, inbox.rows, inbox.progress)
        };
        let batch = TaskBatch {
            batch_id: task.batch_id + 1,
            batch_time_ms,
            role: Some(stage),
            tag: None,
        };
        self.transact(task, batch, &ranges, |_, _| Ok(()))
    }

    fn reduce_role(
        &self,
        task: &Task,
        inbox: HashMap<String, Vec<RecordBatch>>,
        progress: HashMap<String, Vec<Vec<u8>>>,
    ) -> StageRole {
        StageRole::reduce(
            task.id.stage as usize,
            task.id.partition as usize,
            inbox,
            progress,
            self.plan
                .inputs
                .iter()
                .map(|i| (i.source.name().to_owned(), i.partitions))
                .collect(),
        )
    }

    /// What a stage-≥1 task's repartition topics held in `ranges`.
    fn read_inbox(&self, task: &Task, ranges: &[Range]) -> Result<Inbox, TaskFailure> {
        let mut inbox = Inbox::default();
        let partition = task.id.partition as i32;
        for (input, range) in task.inputs.iter().zip(ranges) {
            if range.until <= range.from {
                continue;
            }
            let op = input.op.clone().unwrap_or_default();
            crate::plan::read_range(
                &*input.source,
                partition,
                range.from,
                range.until,
                &mut |chunk: RecordBatch| {
                    let keys = binary_column(&chunk, KEY)?;
                    let values = binary_column(&chunk, VALUE)?;
                    let offsets = chunk
                        .column(OFFSET)
                        .as_any()
                        .downcast_ref::<Int64Array>()
                        .ok_or_else(|| {
                            PlanError::Schema("a record batch without an offset column".into())
                        })?;
                    for i in 0..chunk.num_rows() {
                        if values.is_null(i) {
                            continue;
                        }
                        let key = (!keys.is_null(i)).then(|| keys.value(i));
                        let value = values.value(i);
                        match key {
                            Some(PROGRESS_KEY) => inbox
                                .progress
                                .entry(op.clone())
                                .or_default()
                                .push(value.to_vec()),
                            Some(aligned::PROGRESS_KEY) => {
                                let (from, id) = aligned::parse_progress(value).ok_or_else(|| {
                                    PlanError::Invalid(format!(
                                        "a malformed batch progress record in the repartition topic of {op}"
                                    ))
                                })?;
                                inbox.aligned_progress.push((op.clone(), from, id));
                            }
                            _ => match key.and_then(aligned::parse_rows_key) {
                                Some(id) => inbox.aligned_rows.push((
                                    op.clone(),
                                    id,
                                    offsets.value(i),
                                    value.to_vec(),
                                )),
                                None => {
                                    decode_ipc(value, inbox.rows.entry(op.clone()).or_default())?
                                }
                            },
                        }
                    }
                    Ok(())
                },
            )?;
        }
        Ok(inbox)
    }

    /// A task's batch in a batch-aligned job (see [`super::aligned`]):
    /// stage 0 runs batch `batch time / interval` over its source and tags
    /// what it sends with it; a later stage buffers what it read in one
    /// transaction, then runs each batch every task of the previous stage
    /// is done with, one transaction each.
    fn run_aligned_task(
        &self,
        task: &mut Task,
        ranges: Vec<Range>,
        batch_time_ms: i64,
    ) -> Result<TaskReport, TaskFailure> {
        let interval = self.config.batch_interval.as_millis().max(1) as i64;
        if task.id.stage == 0 {
            let batch_id = aligned::batch_id_at(batch_time_ms, interval);
            let moved = ranges.iter().any(|r| r.until > r.from);
            // One batch per id: a task ahead of the clock waits for it. A
            // task done with its input (--until-caught-up) said so once.
            if batch_id <= task.batch_id || (task.finished && !moved) {
                return Ok(TaskReport::default());
            }
            let finished = self.source_caught_up(task, &ranges);
            let batch = TaskBatch {
                batch_id,
                batch_time_ms,
                role: Some(StageRole::map()),
                tag: Some(Tag {
                    rows: batch_id,
                    progress: if finished {
                        aligned::FINISHED
                    } else {
                        batch_id
                    },
                }),
            };
            let report = self.transact(task, batch, &ranges, |_, _| Ok(()))?;
            task.finished = finished;
            return Ok(report);
        }
        let stage = task.id.stage as usize;
        let inbox = self.read_inbox(task, &ranges)?;
        let cf_name = aligned::buffer_cf(stage);
        let mut buffer = self.load_buffer(task, &cf_name)?;
        // The read, buffered, with the input offsets.
        let mut report = if ranges.iter().any(|r| r.until > r.from) {
            let mut buffered = BTreeMap::<Vec<u8>, Vec<u8>>::new();
            for (op, id, offset, payload) in inbox.aligned_rows {
                buffered.insert(aligned::buffered_rows_key(id, offset, &op), payload);
            }
            for (op, from, id) in inbox.aligned_progress {
                if id != aligned::FINISHED {
                    buffered.insert(aligned::reported_key(id), Vec::new());
                }
                let before = buffer.progress.get(&(op.clone(), from)).copied();
                if before.is_none_or(|b| b < id) {
                    buffered.insert(
                        aligned::buffered_progress_key(&op, from),
                        id.to_be_bytes().to_vec(),
                    );
                }
            }
            let batch = TaskBatch {
                batch_id: task.batch_id,
                batch_time_ms,
                role: None,
                tag: None,
            };
            let report = self.transact(task, batch, &ranges, |task, w| {
                let cf = task_cf(task, &cf_name)?;
                for (k, v) in &buffered {
                    w.put_cf(cf, k, v);
                }
                Ok(())
            })?;
            // Committed: the buffer as the column family now holds it.
            for (k, v) in &buffered {
                buffer
                    .apply(k, v)
                    .map_err(|e| TaskFailure::Failed(other(format!("task {}: {e}", task.id))))?;
            }
            report
        } else {
            TaskReport::default()
        };
        // Every batch the previous stage is done with.
        let ops: Vec<String> = self
            .plan
            .cuts
            .iter()
            .filter(|(_, level)| *level == stage)
            .map(|(op, _)| op.clone())
            .collect();
        let upstream = if stage == 1 {
            self.plan.input_partitions
        } else {
            self.plan.partitions
        };
        let stay: Vec<Range> = task
            .inputs
            .iter()
            .map(|i| Range {
                partition: task.id.partition as i32,
                from: i.next,
                until: i.next,
            })
            .collect();
        for ready in buffer.ready(buffer.complete(&ops, upstream)) {
            let mut rows: HashMap<String, Vec<RecordBatch>> = HashMap::new();
            for &i in &ready.rows {
                let r = &buffer.rows[i];
                decode_ipc(&r.payload, rows.entry(r.op.clone()).or_default())?;
            }
            let previous = task.batch_id;
            let batch = TaskBatch {
                batch_id: ready.id,
                batch_time_ms: ready.id as i64 * interval,
                role: Some(self.reduce_role(task, rows, HashMap::new())),
                tag: (stage < self.plan.stages).then_some(Tag {
                    rows: ready.id,
                    progress: ready.progress,
                }),
            };
            let ran = self.transact_after(task, batch, previous, &stay, |task, w| {
                let cf = task_cf(task, &cf_name)?;
                for &i in &ready.rows {
                    w.delete_cf(cf, &buffer.rows[i].key);
                }
                for &id in &ready.reported {
                    w.delete_cf(cf, aligned::reported_key(id));
                }
                w.put_cf(cf, aligned::last_run_key(), ready.id.to_be_bytes());
                if ready.progress == aligned::FINISHED {
                    w.put_cf(cf, aligned::finished_sent_key(), []);
                }
                Ok(())
            })?;
            report.add(ran);
        }
        Ok(report)
    }

    /// Whether this batch reads a stage-0 task's input up to where it
    /// ended when the worker started (`--until-caught-up`).
    fn source_caught_up(&self, task: &Task, ranges: &[Range]) -> bool {
        let Some(targets) = &self.targets else {
            return false;
        };
        task.inputs.iter().zip(ranges).all(|(input, range)| {
            targets
                .get(&(input.topic.clone(), range.partition))
                .is_none_or(|t| range.until >= *t)
        })
    }

    fn load_buffer(&self, task: &Task, cf_name: &str) -> Result<aligned::Buffer, TaskFailure> {
        let cf = task_cf(task, cf_name)?;
        let entries = task
            .db
            .db()
            .iterator_cf(cf, rocksdb::IteratorMode::Start)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| TaskFailure::Failed(other(format!("task {}: {e}", task.id))))?;
        aligned::Buffer::load(entries.into_iter())
            .map_err(|e| TaskFailure::Failed(other(format!("task {}: {e}", task.id))))
    }

    fn transact(
        &self,
        task: &mut Task,
        batch: TaskBatch,
        ranges: &[Range],
        stage_writes: impl FnOnce(&Task, &mut WriteBatch) -> Result<(), TaskFailure>,
    ) -> Result<TaskReport, TaskFailure> {
        let previous = task.batch_id;
        self.transact_after(task, batch, previous, ranges, stage_writes)
    }

    /// Runs `batch` (its outputs, if it has a role) as one Kafka
    /// transaction with `stage_writes` and the offsets of `ranges`, then
    /// commits it locally.
    fn transact_after(
        &self,
        task: &mut Task,
        batch: TaskBatch,
        previous: u64,
        ranges: &[Range],
        stage_writes: impl FnOnce(&Task, &mut WriteBatch) -> Result<(), TaskFailure>,
    ) -> Result<TaskReport, TaskFailure> {
        let mut report = TaskReport::default();
        let TaskBatch {
            batch_id,
            batch_time_ms,
            role,
            tag,
        } = batch;
        let partition = task.id.partition as i32;
        let mut planned = PlannedBatch {
            batch_id,
            batch_time_ms,
            ranges: BTreeMap::new(),
            lost: BTreeMap::new(),
        };
        if task.id.stage == 0 {
            for (input, range) in task.inputs.iter().zip(ranges) {
                planned
                    .ranges
                    .entry(input.source.name().to_owned())
                    .or_default()
                    .push(*range);
            }
        }
        let txn = |what: &str, e: KafkaError| -> TaskFailure {
            if fenced(&e) {
                TaskFailure::Fenced(e.to_string())
            } else {
                TaskFailure::Failed(other(format!("task {}: {what}: {e}", task.id)))
            }
        };
        // The transaction is open while the outputs run: topic sinks write
        // into it (`Transactions::in_task`).
        task.producer
            .begin_transaction()
            .map_err(|e| txn("cannot begin a transaction", e))?;
        let transactions =
            crate::sink::Transactions::in_task(&self.options.brokers, task.producer.clone());
        let mut cx = BatchCx::new(
            &planned,
            &task.db,
            &transactions,
            self.config.batch_interval.as_millis().max(1) as i64,
            self.plan.partitions as usize,
        )
        .after_batch(previous);
        let runs_outputs = role.is_some();
        if let Some(role) = role {
            cx = cx.with_stage(role, task.epoch);
        }
        let ran: Result<(), PlanError> = if runs_outputs {
            self.outputs.iter().try_for_each(|output| {
                (output.run)(&cx).map_err(|e| match e {
                    PlanError::Operator { .. } => e,
                    other => PlanError::Operator {
                        operator: output.name.clone(),
                        message: other.to_string(),
                    },
                })
            })
        } else {
            Ok(())
        };
        if let Err(e) = ran {
            let _ = task.producer.abort_transaction(Duration::from_secs(10));
            return Err(e.into());
        }
        let stage = cx.take_stage();
        let outcome = cx.finish();
        let mut writes = outcome.writes;
        if let Err(e) = stage_writes(task, &mut writes) {
            let _ = task.producer.abort_transaction(Duration::from_secs(10));
            return Err(e);
        }
        report.counters = outcome.counters;
        report.watermarks = outcome.watermarks;
        let producer = &task.producer;
        let sent = self.send_batch_records(task, stage, tag, &writes, &mut report);
        let moved = ranges.iter().any(|r| r.until > r.from);
        let sent = sent.and_then(|()| {
            if !moved {
                // An idle tick adds no offsets: with nothing else sent, the
                // producer commits the empty transaction without a round
                // trip.
                return producer
                    .commit_transaction(KAFKA_TIMEOUT)
                    .map_err(|e| txn("cannot commit the transaction", e));
            }
            let mut offsets = TopicPartitionList::new();
            for (input, range) in task.inputs.iter().zip(ranges) {
                offsets
                    .add_partition_offset(&input.topic, partition, Offset::Offset(range.until))
                    .map_err(|e| txn("cannot list the offsets", e))?;
            }
            // Committed as the member this worker is in its generation
            // (KIP-447): the coordinator refuses a zombie's offsets.
            let Some((generation, member)) = &self.generation else {
                return Err(TaskFailure::Failed(other(format!(
                    "task {}: the worker holds no generation of group {}",
                    task.id, self.group_id
                ))));
            };
            super::txn_offsets::send_offsets(
                producer.client(),
                &offsets,
                &self.group_id,
                *generation,
                member,
                KAFKA_TIMEOUT,
            )
            .map_err(|e| {
                if e.out_of_generation() {
                    TaskFailure::Fenced(format!(
                        "the group moved on from generation {generation}: {e}"
                    ))
                } else {
                    TaskFailure::Failed(other(format!(
                        "task {}: cannot add the offsets to the transaction: {e}",
                        task.id
                    )))
                }
            })?;
            producer
                .commit_transaction(KAFKA_TIMEOUT)
                .map_err(|e| txn("cannot commit the transaction", e))
        });
        if let Err(e) = sent {
            let _ = producer.abort_transaction(Duration::from_secs(10));
            return Err(e);
        }
        report.transactions = 1;
        // The transaction committed: the local database catches up with it.
        {
            let last = sluice_log::common::mutex(&producer.context().last_offsets);
            for (cf, next) in task.changelog_next.iter_mut() {
                let topic = changelog_topic(&self.config.name, cf);
                if let Some(o) = last.get(&(topic, partition)) {
                    *next = (*next).max(o + 1);
                }
            }
        }
        if task.id.stage >= 1 {
            writes.put(
                CHANGELOG_OFFSETS_KEY,
                serde_json::to_vec(&task.changelog_next).map_err(other)?,
            );
        }
        let mut offsets: BTreeMap<String, BTreeMap<i32, i64>> = BTreeMap::new();
        for (input, range) in task.inputs.iter_mut().zip(ranges) {
            offsets
                .entry(input.topic.clone())
                .or_default()
                .insert(partition, range.until);
            input.next = range.until;
            if moved && input.op.is_some() && task.batch_id.is_multiple_of(PURGE_EVERY_BATCHES) {
                task.purge
                    .push((input.topic.clone(), partition, range.until));
            }
            report.partitions.push(PartitionProgress {
                source: input.topic.clone(),
                partition,
                from: range.from,
                until: range.until,
                lag: 0,
                lag_ms: None,
            });
        }
        task.db.commit_unsynced(
            writes,
            &CommittedBatch {
                batch_id,
                batch_time_ms,
                offsets,
                lost_records: 0,
            },
        )?;
        task.batch_id = batch_id;
        report.records = ranges
            .iter()
            .map(|r| (r.until - r.from).max(0) as u64)
            .sum();
        if task.id.stage == 0 {
            report.source_records = report.records;
        }
        Ok(report)
    }

    /// Sends the batch's repartition records (stage 0) and changelog
    /// records (every state write) into the open transaction.
    fn send_batch_records(
        &self,
        task: &Task,
        stage: Option<StageRole>,
        tag: Option<Tag>,
        writes: &WriteBatch,
        report: &mut TaskReport,
    ) -> Result<(), TaskFailure> {
        let partition = task.id.partition as i32;
        if let Some(role) = stage {
            let (outbox, progress) = role.into_sent();
            for (op, bucket, batch) in outbox {
                let topic = repartition_topic(&self.config.name, &op);
                let key = tag.map(|t| aligned::rows_key(t.rows));
                for payload in encode_ipc(&batch)? {
                    report.repartition_bytes += payload.len() as u64;
                    let mut record = BaseRecord::<[u8], [u8]>::to(&topic)
                        .partition(bucket as i32)
                        .payload(&payload[..]);
                    if let Some(key) = &key {
                        record = record.key(&key[..]);
                    }
                    send(&task.producer, record)?;
                }
            }
            // After the rows, in the same transaction: a stage-1 task that
            // reads a progress record has read the rows it covers.
            for (op, payload) in progress {
                let topic = repartition_topic(&self.config.name, &op);
                for bucket in 0..self.plan.partitions as i32 {
                    report.repartition_bytes += payload.len() as u64;
                    send(
                        &task.producer,
                        BaseRecord::<[u8], [u8]>::to(&topic)
                            .partition(bucket)
                            .key(PROGRESS_KEY)
                            .payload(&payload[..]),
                    )?;
                }
            }
        }
        // A batch-aligned task tells every bucket of the next stage how far
        // it got, after its rows.
        if let Some(tag) = tag {
            let value = aligned::progress_value(task.id.partition, tag.progress);
            let next = task.id.stage as usize + 1;
            for (op, _) in self.plan.cuts.iter().filter(|(_, l)| *l == next) {
                let topic = repartition_topic(&self.config.name, op);
                for bucket in 0..self.plan.partitions as i32 {
                    send(
                        &task.producer,
                        BaseRecord::<[u8], [u8]>::to(&topic)
                            .partition(bucket)
                            .key(aligned::PROGRESS_KEY)
                            .payload(&value[..]),
                    )?;
                }
            }
        }
        if writes.is_empty() {
            return Ok(());
        }
        if task.id.stage == 0 {
            return Err(TaskFailure::Failed(other(format!(
                "task {}: an operator above the job's shuffles writes state, which cannot run on many workers yet (put state after reduce_by_key)",
                task.id
            ))));
        }
        let mut changes = ChangelogRecords {
            cf_names: &task.cf_names,
            records: Vec::new(),
            unknown: None,
            seen: 0,
        };
        writes.iterate_cf(&mut changes);
        if changes.seen != writes.len() {
            // RocksDB stops iterating at an operation the iterator does not
            // know (a range delete): what follows would be lost.
            return Err(TaskFailure::Failed(other(format!(
                "task {}: a state write has no changelog record (a range delete?): {} of {} writes turned into records",
                task.id,
                changes.seen,
                writes.len()
            ))));
        }
        if let Some(id) = changes.unknown {
            return Err(TaskFailure::Failed(other(format!(
                "task {}: a state write went to column family {id}, which has no changelog",
                task.id
            ))));
        }
        for (cf, key, value) in &changes.records {
            let topic = changelog_topic(&self.config.name, cf);
            let mut record = BaseRecord::<[u8], [u8]>::to(&topic)
                .partition(partition)
                .key(&key[..]);
            if let Some(v) = value {
                record = record.payload(&v[..]);
            }
            send(&task.producer, record)?;
            report.changelog_records += 1;
        }
        if let Some(e) = sluice_log::common::mutex(&task.producer.context().first).take() {
            return Err(TaskFailure::Failed(other(format!(
                "task {}: a record was refused: {e}",
                task.id
            ))));
        }
        Ok(())
    }
}

/// Partitions of each topic the worker reads, by topic name.
type Layout = HashMap<String, Vec<crate::source::PartitionInfo>>;

fn partition_info(
    layout: &Layout,
    topic: &str,
    partition: i32,
) -> Result<crate::source::PartitionInfo, DriverError> {
    layout
        .get(topic)
        .and_then(|infos| infos.iter().find(|i| i.partition == partition))
        .cloned()
        .ok_or_else(|| other(format!("topic {topic} has no partition {partition}")))
}

/// Sends one record, waiting while the producer's queue is full.
fn send<K: rdkafka::message::ToBytes + ?Sized, P: rdkafka::message::ToBytes + ?Sized>(
    producer: &BaseProducer<DeliveryErrors>,
    mut record: BaseRecord<'_, K, P>,
) -> Result<(), TaskFailure> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                record = back;
                producer.poll(Duration::from_millis(10));
            }
            Err((e, _)) => {
                return Err(if fenced(&e) {
                    TaskFailure::Fenced(e.to_string())
                } else {
                    TaskFailure::Failed(other(format!("cannot send a record: {e}")))
                });
            }
        }
    }
}

/// Column family, key, and value (none for a delete).
type ChangelogRecord<'a> = (&'a str, Vec<u8>, Option<Vec<u8>>);

/// A batch's state writes as changelog records.
struct ChangelogRecords<'a> {
    cf_names: &'a HashMap<u32, String>,
    records: Vec<ChangelogRecord<'a>>,
    unknown: Option<u32>,
    /// Operations iterated, every column family's.
    seen: usize,
}

impl rocksdb::WriteBatchIteratorCf for ChangelogRecords<'_> {
    fn put_cf(&mut self, cf_id: u32, key: &[u8], value: &[u8]) {
        self.seen += 1;
        match self.cf_names.get(&cf_id) {
            Some(cf) => self.records.push((cf, key.to_vec(), Some(value.to_vec()))),
            // The default column family holds the checkpoint's own keys.
            None if cf_id == 0 => {}
            None => self.unknown = Some(cf_id),
        }
    }
    fn delete_cf(&mut self, cf_id: u32, key: &[u8]) {
        self.seen += 1;
        match self.cf_names.get(&cf_id) {
            Some(cf) => self.records.push((cf, key.to_vec(), None)),
            None if cf_id == 0 => {}
            None => self.unknown = Some(cf_id),
        }
    }
    fn merge_cf(&mut self, cf_id: u32, _key: &[u8], _value: &[u8]) {
        self.seen += 1;
        // Operators never merge; a merge would not replay from a changelog.
        self.unknown = Some(cf_id);
    }
}

/// The id RocksDB gave column family `name` (learned from a write batch,
/// which is where the ids appear).
fn cf_id(db: &Checkpoint, name: &str) -> Result<u32, DriverError> {
    struct Probe(Option<u32>);
    impl rocksdb::WriteBatchIteratorCf for Probe {
        fn put_cf(&mut self, cf_id: u32, _: &[u8], _: &[u8]) {
            self.0 = Some(cf_id);
        }
        fn delete_cf(&mut self, _: u32, _: &[u8]) {}
        fn merge_cf(&mut self, _: u32, _: &[u8], _: &[u8]) {}
    }
    let mut batch = WriteBatch::default();
    batch.put_cf(db.cf(name)?, b"", b"");
    let mut probe = Probe(None);
    batch.iterate_cf(&mut probe);
    probe
        .0
        .ok_or_else(|| other(format!("column family {name} has no id")))
}

/// Passes every keyed record of `[from, until)` of a partition to `each`
/// as (key, value; none for a tombstone); keyless records are skipped.
fn for_each_keyed(
    source: &dyn Source,
    partition: i32,
    from: i64,
    until: i64,
    mut each: impl FnMut(&[u8], Option<&[u8]>) -> Result<(), PlanError>,
) -> Result<(), PlanError> {
    crate::plan::read_range(source, partition, from, until, &mut |chunk: RecordBatch| {
        let keys = binary_column(&chunk, KEY)?;
        let values = binary_column(&chunk, VALUE)?;
        for i in 0..chunk.num_rows() {
            if !keys.is_null(i) {
                each(keys.value(i), (!values.is_null(i)).then(|| values.value(i)))?;
            }
        }
        Ok(())
    })
}

fn binary_column(chunk: &RecordBatch, index: usize) -> Result<&BinaryViewArray, PlanError> {
    chunk
        .column(index)
        .as_any()
        .downcast_ref::<BinaryViewArray>()
        .ok_or_else(|| PlanError::Schema(format!("record column {index} is not binary")))
}

/// A chunk as Arrow IPC stream messages of at most about
/// [`REPARTITION_RECORD_BYTES`] each.
fn encode_ipc(batch: &RecordBatch) -> Result<Vec<Vec<u8>>, TaskFailure> {
    let rows = batch.num_rows();
    let size = batch.get_array_memory_size().max(1);
    let pieces = size
        .div_ceil(REPARTITION_RECORD_BYTES)
        .clamp(1, rows.max(1));
    let per_piece = rows.div_ceil(pieces).max(1);
    let mut out = Vec::with_capacity(pieces);
    let mut start = 0;
    while start < rows {
        let len = per_piece.min(rows - start);
        let slice = batch.slice(start, len);
        let mut buf = Vec::new();
        let mut writer = arrow::ipc::writer::StreamWriter::try_new(&mut buf, &slice.schema())
            .map_err(|e| TaskFailure::Failed(other(e)))?;
        writer
            .write(&slice)
            .map_err(|e| TaskFailure::Failed(other(e)))?;
        writer.finish().map_err(|e| TaskFailure::Failed(other(e)))?;
        drop(writer);
        out.push(buf);
        start += len;
    }
    Ok(out)
}

fn decode_ipc(bytes: &[u8], out: &mut Vec<RecordBatch>) -> Result<(), PlanError> {
    let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)?;
    for batch in reader {
        out.push(batch?);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repartition_records_round_trip_and_stay_small() {
        let words: Vec<String> = (0..200_000).map(|i| format!("word-{i}")).collect();
        let counts: Vec<u64> = (0..200_000).collect();
        let batch = RecordBatch::try_from_iter([
            (
                "key",
                Arc::new(arrow::array::StringArray::from(words)) as arrow::array::ArrayRef,
            ),
            (
                "value",
                Arc::new(arrow::array::UInt64Array::from(counts)) as _,
            ),
        ])
        .unwrap();
        let Ok(pieces) = encode_ipc(&batch) else {
            panic!("encoding failed")
        };
        assert!(pieces.len() > 1, "a 200k-row chunk is split");
        assert!(
            pieces.iter().all(|p| p.len() < 1_000_000),
            "every record fits 1 MB"
        );
        let mut back = Vec::new();
        for p in &pieces {
            decode_ipc(p, &mut back).unwrap();
        }
        let back = arrow::compute::concat_batches(&batch.schema(), &back).unwrap();
        assert_eq!(back, batch);
    }

    #[test]
    fn internal_topic_names_are_legal() {
        assert_eq!(
            repartition_topic("word count", "reduce_by_key-1"),
            "sluice-word_count-reduce_by_key-1-repartition"
        );
        assert_eq!(
            changelog_topic("wc", "table.counts"),
            "sluice-wc-table.counts-changelog"
        );
    }
}
