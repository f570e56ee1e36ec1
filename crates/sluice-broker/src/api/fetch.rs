//! Fetch, with long polling.
//!
//! A fetch answers with the stored batch bytes as they are on disk: no
//! decoding, no re-encoding. It returns at once when `min_bytes` are there,
//! and otherwise waits, woken by every append, until they are or
//! `max_wait_ms` passes. Sizes follow Kafka (KIP-74): per-partition and
//! response limits, except that the first batch of the first non-empty
//! partition is always returned whole so a consumer can make progress.
//!
//! A read_committed fetch (isolation level 1) stops at the partition's last
//! stable offset and lists the aborted transactions overlapping what it
//! returns, so the client drops their records (Kafka's protocol: the
//! records themselves are sent as stored). Every fetch reports the last
//! stable offset.
//!
//! Fetch sessions (KIP-227) are not kept: every fetch is answered in full
//! with session id 0, which clients treat as "no session". A waiting fetch
//! never outlives shutdown.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::fetch_response::{
    AbortedTransaction, FetchableTopicResponse, PartitionData,
};
use kafka_protocol::messages::{FetchRequest, FetchResponse, ProducerId, TopicName};
use tokio::sync::watch;
use uuid::Uuid;

use crate::blocking::run_blocking;
use crate::error::code_for;
use crate::metrics::Metrics;
use crate::topics::Topics;
use crate::wire::topic_name;
use sluice_log::log::{LogError, Topic};

/// Kafka caps long polls at the request timeout; so do we, generously.
const MAX_WAIT_CAP: Duration = Duration::from_secs(30);
/// Kafka's isolation level for read_committed consumers.
const READ_COMMITTED: i8 = 1;

struct Target {
    topic: Option<Arc<Topic>>,
    name: TopicName,
    id: Uuid,
    /// (partition, fetch offset, partition max bytes)
    partitions: Vec<(i32, i64, i32)>,
}

/// A failed read task closes the connection (the `Err`): the client retries.
pub(crate) async fn fetch(
    topics: &Topics,
    shutdown: &watch::Receiver<bool>,
    metrics: &Metrics,
    req: FetchRequest,
    version: i16,
) -> Result<FetchResponse, String> {
    let by_id = version >= 13;
    let read_committed = req.isolation_level == READ_COMMITTED;
    let targets = Arc::new(targets(topics, &req, by_id));
    let max_bytes = if req.max_bytes <= 0 {
        i32::MAX as usize
    } else {
        req.max_bytes as usize
    };
    let min_bytes = req.min_bytes.max(0) as usize;
    let wait = Duration::from_millis(req.max_wait_ms.max(0) as u64).min(MAX_WAIT_CAP);
    let deadline = tokio::time::Instant::now() + wait;
    let mut shutdown = shutdown.clone();
    loop {
        // Register for the wake-up before reading, so an append between the
        // read and the wait is not missed.
        let notified = topics.appended().notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let t = targets.clone();
        let how = How {
            by_id,
            version,
            read_committed,
        };
        let read = run_blocking("fetch", move || read_all(&t, how, max_bytes)).await?;
        let done = read.bytes >= min_bytes
            || read.errors
            || tokio::time::Instant::now() >= deadline
            || *shutdown.borrow();
        if done {
            metrics
                .fetched
                .add(&fetched_bytes(&targets, &read.responses));
            return Ok(FetchResponse::default().with_responses(read.responses));
        }
        tokio::select! {
            _ = &mut notified => {}
            _ = tokio::time::sleep_until(deadline) => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// The topics the request names (by name, or by id from v13), resolved once.
fn targets(topics: &Topics, req: &FetchRequest, by_id: bool) -> Vec<Target> {
    let known = topics.store.topics();
    req.topics
        .iter()
        .map(|t| {
            let topic = if by_id {
                known.iter().find(|x| x.id() == t.topic_id).cloned()
            } else {
                known.iter().find(|x| x.name() == t.topic.as_str()).cloned()
            };
            Target {
                name: topic
                    .as_ref()
                    .map_or(t.topic.clone(), |x| topic_name(x.name())),
                id: t.topic_id,
                topic,
                partitions: t
                    .partitions
                    .iter()
                    .map(|p| (p.partition, p.fetch_offset, p.partition_max_bytes))
                    .collect(),
            }
        })
        .collect()
}

/// The bytes a response carries per partition of a known topic, for the
/// per-partition counters: one entry per partition, not per batch.
fn fetched_bytes(
    targets: &[Target],
    responses: &[FetchableTopicResponse],
) -> Vec<(Uuid, i32, u64)> {
    // `read_all` answers the targets in order, partitions in request order.
    targets
        .iter()
        .zip(responses)
        .filter_map(|(t, r)| Some((t.topic.as_ref()?.id(), r)))
        .flat_map(|(id, r)| {
            r.partitions.iter().map(move |p| {
                let bytes = p.records.as_ref().map_or(0, |b| b.len() as u64);
                (id, p.partition_index, bytes)
            })
        })
        .filter(|f| f.2 > 0)
        .collect()
}

/// One pass over every requested partition.
struct Read {
    responses: Vec<FetchableTopicResponse>,
    bytes: usize,
    errors: bool,
}

/// What is left of the response's size limit as partitions are read.
struct Budget {
    left: usize,
    total: usize,
    errors: bool,
    first_batch_pending: bool,
}

/// How the request asks to be answered.
#[derive(Clone, Copy)]
struct How {
    by_id: bool,
    version: i16,
    read_committed: bool,
}

fn read_all(targets: &[Target], how: How, max_bytes: usize) -> Read {
    let mut budget = Budget {
        left: max_bytes,
        total: 0,
        errors: false,
        first_batch_pending: true,
    };
    let responses = targets
        .iter()
        .map(|t| {
            let partitions = t
                .partitions
                .iter()
                .map(|&p| budget.read_partition(t.topic.as_ref(), how, p))
                .collect();
            let r = FetchableTopicResponse::default().with_partitions(partitions);
            if how.by_id {
                r.with_topic_id(t.id)
            } else {
                r.with_topic(t.name.clone())
            }
        })
        .collect();
    Read {
        responses,
        bytes: budget.total,
        errors: budget.errors,
    }
}

impl Budget {
    fn read_partition(
        &mut self,
        topic: Option<&Arc<Topic>>,
        how: How,
        (index, offset, part_max): (i32, i64, i32),
    ) -> PartitionData {
        let mut pd = PartitionData::default()
            .with_partition_index(index)
            .with_high_watermark(-1)
            .with_last_stable_offset(-1)
            .with_log_start_offset(-1)
            .with_records(Some(Bytes::new()));
        if how.version >= 4 {
            pd = pd.with_aborted_transactions(Some(Vec::new()));
        }
        let Some(topic) = topic else {
            self.errors = true;
            let code = if how.by_id {
                ResponseError::UnknownTopicId.code()
            } else {
                ResponseError::UnknownTopicOrPartition.code()
            };
            return pd.with_error_code(code);
        };
        let partition = match topic.partition(index) {
            Ok(p) => p,
            Err(e) => {
                self.errors = true;
                return pd.with_error_code(code_for(&e));
            }
        };
        let hw = partition.high_watermark();
        let lso = partition.last_stable_offset();
        pd = pd
            .with_high_watermark(hw)
            .with_last_stable_offset(lso)
            .with_log_start_offset(partition.log_start_offset());
        // A read_committed client may stand anywhere up to the high-water
        // mark, but is served nothing at or past the last stable offset.
        let upper = if how.read_committed { lso } else { hw };
        if offset >= upper && offset <= hw {
            return pd;
        }
        let limit = (part_max.max(0) as usize).min(self.left);
        if limit == 0 && !self.first_batch_pending {
            return pd;
        }
        let mut buf = Vec::new();
        match partition.read_into_below(offset, upper, limit, &mut buf) {
            Ok(info) => {
                if info.bytes > 0 {
                    self.first_batch_pending = false;
                }
                self.left = self.left.saturating_sub(info.bytes);
                self.total += info.bytes;
                if how.read_committed && info.bytes > 0 {
                    let aborted = partition
                        .aborted_transactions(offset, info.next_offset)
                        .into_iter()
                        .map(|a| {
                            AbortedTransaction::default()
                                .with_producer_id(ProducerId(a.producer_id))
                                .with_first_offset(a.first_offset)
                        })
                        .collect();
                    pd = pd.with_aborted_transactions(Some(aborted));
                }
                pd.with_records(Some(Bytes::from(buf)))
            }
            Err(e) => {
                self.errors = true;
                if !matches!(e, LogError::OffsetOutOfRange { .. }) {
                    tracing::warn!("fetch from {}-{index} failed: {e}", topic.name());
                }
                pd.with_error_code(code_for(&e))
            }
        }
    }
}
