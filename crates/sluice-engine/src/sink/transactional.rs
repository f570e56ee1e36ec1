//! A job's Kafka transactions (KIP-98): each batch's records — every
//! topic sink's and every dead-letter topic's — are written in one
//! transaction per Kafka cluster, committed by the driver just before the
//! batch's checkpoint commit, and the batch id is recorded with it, so a
//! replayed batch knows after a crash whether its transaction committed.
//!
//! The transactional id and the group that records the batches are both
//! `sluice-<job>-<run>`: stable across restarts of one job (so a restarted
//! job fences its predecessor and aborts whatever transaction it left
//! open), new when the job's checkpoint is recreated (whose batch ids start
//! again at 1). The batch id rides on the transaction as the group's
//! committed offset of partition 0 of each topic the batch wrote
//! (TxnOffsetCommit), which becomes visible exactly when the transaction
//! commits: committed offset of a writer's topic ≥ batch id ⇔ the batch's
//! records for that topic are in it. A writer with nothing to write in a
//! batch stays out of its transaction, and a batch that writes nothing
//! through a cluster opens none there.
//!
//! This module owns the transactional producers and the groups' consumer
//! handles; it never decides partitions or encodes records (the topic
//! writers do), and never trusts anything but the broker's committed
//! offsets about what was written.

use std::collections::btree_map::Entry;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::topic::{DeliveryErrors, acknowledged, producer_config};
use super::{SinkError, WriterId, crash_point};

/// init_transactions, commit and abort: long enough for a loaded cluster
/// (a commit waits for every record's acknowledgement).
const TXN_TIMEOUT: Duration = Duration::from_secs(90);
/// Offset lookups of the recording group.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(15);
/// `transaction.timeout.ms`: a crashed writer's open transaction blocks
/// read_committed readers of the topic at most this long before the broker
/// aborts it (if no restarted writer fences it sooner). Below Kafka's
/// default `transaction.max.timeout.ms` (15 minutes).
const TRANSACTION_TIMEOUT_MS: &str = "120000";

/// One job's transactional producer at one cluster.
struct TxnSession {
    producer: BaseProducer<DeliveryErrors>,
    group: BaseConsumer,
    /// The transactional id, also the recording group's id.
    id: String,
}

impl TxnSession {
    /// Creates the producer and fences every earlier one with the same id
    /// (init_transactions aborts a transaction a crash left open).
    fn open(brokers: &str, id: String, what: &str) -> Result<TxnSession, String> {
        let producer: BaseProducer<DeliveryErrors> = producer_config(brokers)
            .set("transactional.id", &id)
            .set("transaction.timeout.ms", TRANSACTION_TIMEOUT_MS)
            .create_with_context(DeliveryErrors::new(what))
            .map_err(|e| {
                format!("cannot create a transactional Kafka producer for {brokers}: {e}")
            })?;
        producer.init_transactions(TXN_TIMEOUT).map_err(|e| {
            format!(
                "cannot start transactions with transactional id {id} at {brokers}: {e} (does the broker support transactions? use delivery = 'idempotent' otherwise)"
            )
        })?;
        let group: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", &id)
            .set("enable.auto.commit", "false")
            // Never a committed offset some open transaction may still change.
            .set("isolation.level", "read_committed")
            .create()
            .map_err(|e| format!("cannot create a Kafka consumer for {brokers}: {e}"))?;
        Ok(TxnSession {
            producer,
            group,
            id,
        })
    }

    fn producer(&self) -> &BaseProducer<DeliveryErrors> {
        &self.producer
    }

    /// The last batch whose transaction committed records to `topic`, if
    /// any.
    fn committed_batch(&self, topic: &str) -> Result<Option<u64>, String> {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(topic, 0);
        let got = self
            .group
            .committed_offsets(tpl, LOOKUP_TIMEOUT)
            .map_err(|e| format!("cannot read group {}'s committed offset: {e}", self.id))?;
        Ok(match got.find_partition(topic, 0).map(|e| e.offset()) {
            Some(Offset::Offset(o)) if o >= 0 => Some(o as u64),
            _ => None,
        })
    }

    fn begin(&self) -> Result<(), String> {
        self.producer
            .begin_transaction()
            .map_err(|e| format!("cannot begin a transaction: {e}"))
    }

    /// Records `batch_id` for every topic in `topics` with the open
    /// transaction and commits it.
    fn commit(&self, topics: &BTreeSet<String>, batch_id: u64, run: &str) -> Result<(), String> {
        let offset = i64::try_from(batch_id)
            .map_err(|_| format!("batch id {batch_id} does not fit a Kafka offset"))?;
        let mut offsets = TopicPartitionList::new();
        for topic in topics {
            offsets
                .add_partition_offset(topic, 0, Offset::Offset(offset))
                .map_err(|e| format!("cannot record batch {batch_id}: {e}"))?;
            if let Some(mut e) = offsets.find_partition(topic, 0) {
                // For people reading the group with admin tools.
                e.set_metadata(format!("sluice batch {batch_id} of run {run}"));
            }
        }
        let group = self
            .group
            .group_metadata()
            .ok_or_else(|| format!("no group metadata for group {}", self.id))?;
        self.producer
            .send_offsets_to_transaction(&offsets, &group, TXN_TIMEOUT)
            .map_err(|e| txn_error("record the batch id with", batch_id, &e))?;
        self.producer
            .commit_transaction(TXN_TIMEOUT)
            .map_err(|e| txn_error("commit", batch_id, &e))
    }

    /// Best effort after a failure: the session is dropped afterwards, and
    /// the next one's init_transactions aborts whatever is still open.
    fn abort(&self) {
        if let Err(e) = self.producer.abort_transaction(TXN_TIMEOUT) {
            tracing::debug!(transactional_id = %self.id, "abort after a failed batch: {e}");
        }
    }
}

fn txn_error(action: &str, batch_id: u64, e: &KafkaError) -> String {
    format!("cannot {action} the transaction of batch {batch_id}: {e}")
}

/// The transactions of one job, one per Kafka cluster its topic writers
/// write to; the driver owns it for the job's run and commits it before
/// each batch's checkpoint commit.
#[derive(Default)]
pub struct Transactions {
    /// By (brokers, transactional id).
    by_cluster: Mutex<BTreeMap<(String, String), Cluster>>,
    /// Set for a task of a job on many workers: writers join the task's
    /// own transaction, which its worker begins and commits.
    task: Option<TaskTxn>,
}

/// A task's producer at its job's cluster, in the task's open transaction.
struct TaskTxn {
    brokers: String,
    producer: Arc<BaseProducer<DeliveryErrors>>,
}

impl std::fmt::Debug for Transactions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let clusters = sluice_log::common::mutex(&self.by_cluster);
        f.debug_struct("Transactions")
            .field("clusters", &clusters.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// The job's producer at one cluster and its open transaction, if any.
pub(super) struct Cluster {
    session: TxnSession,
    open: Option<OpenTxn>,
}

/// The transaction of batch `batch_id`: the topics it wrote, recorded with
/// it at commit.
struct OpenTxn {
    batch_id: u64,
    run: String,
    topics: BTreeSet<String>,
}

/// A writer's view of its job's transaction at one cluster, for one batch.
pub(super) enum InTxn<'a> {
    Job {
        cluster: &'a mut Cluster,
        batch_id: u64,
        run: &'a str,
    },
    /// A task's transaction on many workers: its worker's committed offsets,
    /// not batch ids, say what is done, so no batch is ever replayed into
    /// it.
    Task(&'a BaseProducer<DeliveryErrors>),
}

impl InTxn<'_> {
    /// The last batch whose transaction committed records to `topic`.
    pub fn committed_batch(&self, topic: &str) -> Result<Option<u64>, String> {
        match self {
            InTxn::Job { cluster, .. } => cluster.session.committed_batch(topic),
            InTxn::Task(_) => Ok(None),
        }
    }

    /// The producer, in batch `batch_id`'s transaction (begun now if this
    /// is its first write at this cluster), which will record `topic`.
    pub fn join(&mut self, topic: &str) -> Result<&BaseProducer<DeliveryErrors>, String> {
        let (cluster, batch_id, run) = match self {
            InTxn::Task(producer) => return Ok(*producer),
            InTxn::Job {
                cluster,
                batch_id,
                run,
            } => (cluster, batch_id, run),
        };
        match &mut cluster.open {
            Some(open) if open.batch_id == *batch_id => {
                open.topics.insert(topic.to_owned());
            }
            Some(open) => {
                return Err(format!(
                    "batch {}'s transaction is still open at batch {} (the driver commits or aborts every batch's transactions)",
                    open.batch_id, batch_id
                ));
            }
            None => {
                cluster.session.begin()?;
                cluster.open = Some(OpenTxn {
                    batch_id: *batch_id,
                    run: (*run).to_owned(),
                    topics: BTreeSet::from([topic.to_owned()]),
                });
            }
        }
        Ok(cluster.session.producer())
    }
}

impl Transactions {
    /// The transactions of one task of a job on many workers: every topic
    /// write joins `producer`'s transaction, which the worker has begun and
    /// commits with the task's other records and offsets.
    pub(crate) fn in_task(brokers: &str, producer: Arc<BaseProducer<DeliveryErrors>>) -> Self {
        Transactions {
            by_cluster: Mutex::default(),
            task: Some(TaskTxn {
                brokers: brokers.to_owned(),
                producer,
            }),
        }
    }

    /// Runs `write` with the job's transaction at `brokers` for batch
    /// `batch_id` (the producer is created, fencing the job's earlier
    /// ones, on first use). A failed write aborts the transaction and
    /// drops the producer: the batch fails, and its replay starts from a
    /// fenced, clean one.
    pub(super) fn write<R>(
        &self,
        brokers: &str,
        id: &WriterId,
        batch_id: u64,
        write: impl FnOnce(&mut InTxn<'_>) -> Result<R, SinkError>,
    ) -> Result<R, SinkError> {
        if let Some(task) = &self.task {
            if task.brokers != brokers {
                return Err(SinkError::new(
                    format!("topic writes at {brokers}"),
                    format!(
                        "a job on many workers writes topics only at its own cluster ({}), inside each task's transaction",
                        task.brokers
                    ),
                ));
            }
            return write(&mut InTxn::Task(&task.producer));
        }
        let mut clusters = sluice_log::common::mutex(&self.by_cluster);
        let key = (brokers.to_owned(), format!("sluice-{}-{}", id.job, id.run));
        let cluster = match clusters.entry(key.clone()) {
            Entry::Occupied(e) => e.into_mut(),
            Entry::Vacant(v) => {
                let what = format!("Kafka transactions of job {} at {brokers}", id.job);
                let session = TxnSession::open(brokers, key.1.clone(), &what)
                    .map_err(|m| SinkError::new(&what, m))?;
                v.insert(Cluster {
                    session,
                    open: None,
                })
            }
        };
        let outcome = write(&mut InTxn::Job {
            cluster,
            batch_id,
            run: &id.run,
        });
        if outcome.is_err()
            && let Some(failed) = clusters.remove(&key)
        {
            failed.session.abort();
        }
        outcome
    }

    /// Commits batch `batch_id`'s transactions: waits for every record's
    /// acknowledgement, records the batch id for each topic written, and
    /// commits. Called by the driver once every output of the batch has
    /// run, before its checkpoint commit. Any failure aborts what is still
    /// open and drops the producers.
    pub fn commit(&self, batch_id: u64) -> Result<(), SinkError> {
        if self.task.is_some() {
            // The worker commits the task's transaction.
            return Ok(());
        }
        let mut clusters = sluice_log::common::mutex(&self.by_cluster);
        let mut failed = None;
        for (key, cluster) in clusters.iter_mut() {
            let Some(open) = &cluster.open else {
                continue;
            };
            if let Err(message) = commit_one(&cluster.session, open, batch_id) {
                // Still open: `abort_locked` aborts it with the others.
                failed = Some((key.clone(), message));
                break;
            }
            cluster.open = None;
        }
        if let Some((key, message)) = failed {
            self.abort_locked(&mut clusters);
            return Err(SinkError::new(
                format!("Kafka transaction of batch {batch_id} at {}", key.0),
                message,
            ));
        }
        Ok(())
    }

    /// Aborts every open transaction (a batch failed) and drops the
    /// producers; best effort, the next run's producers fence them anyway.
    pub fn abort(&self) {
        let mut clusters = sluice_log::common::mutex(&self.by_cluster);
        self.abort_locked(&mut clusters);
    }

    fn abort_locked(&self, clusters: &mut BTreeMap<(String, String), Cluster>) {
        for (_, cluster) in std::mem::take(clusters) {
            if cluster.open.is_some() {
                cluster.session.abort();
            }
        }
    }
}

fn commit_one(session: &TxnSession, open: &OpenTxn, batch_id: u64) -> Result<(), String> {
    if open.batch_id != batch_id {
        return Err(format!(
            "the open transaction is batch {}'s, not batch {batch_id}'s",
            open.batch_id
        ));
    }
    acknowledged(session.producer(), batch_id)?;
    // Every record is in the log, the transaction still open.
    crash_point("sink::topic::before_commit", batch_id);
    session.commit(&open.topics, batch_id, &open.run)?;
    crash_point("sink::topic::after_commit", batch_id);
    Ok(())
}
