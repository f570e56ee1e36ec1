//! Fetch (with long polling) and ListOffsets.
//!
//! A fetch answers with the stored batch bytes as they are on disk: no
//! decoding, no re-encoding. It returns at once when `min_bytes` are there,
//! and otherwise waits, woken by every append, until they are or
//! `max_wait_ms` passes. Sizes follow Kafka (KIP-74): per-partition and
//! response limits, except that the first batch of the first non-empty
//! partition is always returned whole so a consumer can make progress.
//!
//! Fetch sessions (KIP-227) are not kept: every fetch is answered in full
//! with session id 0, which clients treat as "no session".

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::fetch_response::{FetchableTopicResponse, PartitionData};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{
    FetchRequest, FetchResponse, ListOffsetsRequest, ListOffsetsResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use uuid::Uuid;

use super::error::code_for;
use super::server::Shared;
use sluice_log::log::{LogError, Topic};

/// Kafka caps long polls at the request timeout; so do we, generously.
const MAX_WAIT_CAP: Duration = Duration::from_secs(30);

struct Target {
    topic: Option<Arc<Topic>>,
    name: TopicName,
    id: Uuid,
    /// (partition, fetch offset, partition max bytes)
    partitions: Vec<(i32, i64, i32)>,
}

pub(crate) async fn fetch(
    shared: &Arc<Shared>,
    req: FetchRequest,
    version: i16,
) -> Result<FetchResponse, String> {
    let by_id = version >= 13;
    let topics = shared.store.topics();
    let targets: Vec<Target> = req
        .topics
        .into_iter()
        .map(|t| {
            let topic = if by_id {
                topics.iter().find(|x| x.id() == t.topic_id).cloned()
            } else {
                topics
                    .iter()
                    .find(|x| x.name() == t.topic.as_str())
                    .cloned()
            };
            Target {
                name: topic.as_ref().map_or(t.topic.clone(), |x| {
                    TopicName(StrBytes::from_string(x.name().into()))
                }),
                id: t.topic_id,
                topic,
                partitions: t
                    .partitions
                    .iter()
                    .map(|p| (p.partition, p.fetch_offset, p.partition_max_bytes))
                    .collect(),
            }
        })
        .collect();
    drop(topics);
    let targets = Arc::new(targets);
    let max_bytes = if req.max_bytes <= 0 {
        i32::MAX as usize
    } else {
        req.max_bytes as usize
    };
    let min_bytes = req.min_bytes.max(0) as usize;
    let wait = Duration::from_millis(req.max_wait_ms.max(0) as u64).min(MAX_WAIT_CAP);
    let deadline = tokio::time::Instant::now() + wait;
    let mut shutdown = shared.shutdown.clone();
    loop {
        // Register for the wake-up before reading, so an append between the
        // read and the wait is not missed.
        let notified = shared.data_ready.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let t = targets.clone();
        let (responses, bytes, errors) =
            tokio::task::spawn_blocking(move || read_all(&t, by_id, version, max_bytes))
                .await
                .map_err(|e| format!("fetch task failed: {e}"))?;
        let done = bytes >= min_bytes
            || errors
            || tokio::time::Instant::now() >= deadline
            || *shutdown.borrow();
        if done {
            return Ok(FetchResponse::default().with_responses(responses));
        }
        tokio::select! {
            _ = &mut notified => {}
            _ = tokio::time::sleep_until(deadline) => {}
            _ = shutdown.changed() => {}
        }
    }
}

fn read_all(
    targets: &[Target],
    by_id: bool,
    version: i16,
    max_bytes: usize,
) -> (Vec<FetchableTopicResponse>, usize, bool) {
    let mut budget = max_bytes;
    let mut total = 0usize;
    let mut errors = false;
    let mut first_batch_pending = true;
    let responses = targets
        .iter()
        .map(|t| {
            let partitions = t
                .partitions
                .iter()
                .map(|&(index, offset, part_max)| {
                    let mut pd = PartitionData::default()
                        .with_partition_index(index)
                        .with_high_watermark(-1)
                        .with_last_stable_offset(-1)
                        .with_log_start_offset(-1)
                        .with_records(Some(Bytes::new()));
                    if version >= 4 {
                        pd = pd.with_aborted_transactions(Some(Vec::new()));
                    }
                    let Some(topic) = &t.topic else {
                        errors = true;
                        let code = if by_id {
                            ResponseError::UnknownTopicId.code()
                        } else {
                            ResponseError::UnknownTopicOrPartition.code()
                        };
                        return pd.with_error_code(code);
                    };
                    let partition = match topic.partition(index) {
                        Ok(p) => p,
                        Err(e) => {
                            errors = true;
                            return pd.with_error_code(code_for(&e));
                        }
                    };
                    let hw = partition.high_watermark();
                    pd = pd
                        .with_high_watermark(hw)
                        .with_last_stable_offset(hw)
                        .with_log_start_offset(partition.log_start_offset());
                    if offset == hw {
                        return pd;
                    }
                    let limit = (part_max.max(0) as usize).min(budget);
                    if limit == 0 && !first_batch_pending {
                        return pd;
                    }
                    let mut buf = Vec::new();
                    match partition.read_into(offset, limit, &mut buf) {
                        Ok(info) => {
                            if info.bytes > 0 {
                                first_batch_pending = false;
                            }
                            budget = budget.saturating_sub(info.bytes);
                            total += info.bytes;
                            pd.with_records(Some(Bytes::from(buf)))
                        }
                        Err(e @ LogError::OffsetOutOfRange { .. }) => {
                            errors = true;
                            pd.with_error_code(code_for(&e))
                        }
                        Err(e) => {
                            errors = true;
                            tracing::warn!("fetch from {}-{index} failed: {e}", topic.name());
                            pd.with_error_code(code_for(&e))
                        }
                    }
                })
                .collect();
            let mut r = FetchableTopicResponse::default().with_partitions(partitions);
            if by_id {
                r = r.with_topic_id(t.id);
            } else {
                r = r.with_topic(t.name.clone());
            }
            r
        })
        .collect();
    (responses, total, errors)
}

/// Kafka's special ListOffsets timestamps.
const LATEST: i64 = -1;
const EARLIEST: i64 = -2;

pub(crate) async fn list_offsets(
    shared: &Arc<Shared>,
    req: ListOffsetsRequest,
    version: i16,
) -> ListOffsetsResponse {
    let s = shared.clone();
    let topics = tokio::task::spawn_blocking(move || {
        req.topics
            .into_iter()
            .map(|t| {
                let topic = s.store.topic(t.name.as_str());
                let partitions = t
                    .partitions
                    .into_iter()
                    .map(|p| {
                        let mut r = ListOffsetsPartitionResponse::default()
                            .with_partition_index(p.partition_index)
                            .with_timestamp(-1)
                            .with_offset(-1);
                        let partition = match &topic {
                            Ok(topic) => topic.partition(p.partition_index),
                            Err(e) => return r.with_error_code(code_for(e)),
                        };
                        let partition = match partition {
                            Ok(partition) => partition,
                            Err(e) => return r.with_error_code(code_for(&e)),
                        };
                        if version >= 4 {
                            r = r.with_leader_epoch(0);
                        }
                        match p.timestamp {
                            LATEST => r.with_offset(partition.high_watermark()),
                            EARLIEST => r.with_offset(partition.log_start_offset()),
                            ts if ts >= 0 => match partition.offset_for_time(ts) {
                                Ok(Some((offset, found_ts))) => {
                                    r.with_offset(offset).with_timestamp(found_ts)
                                }
                                Ok(None) => r,
                                Err(e) => r.with_error_code(code_for(&e)),
                            },
                            _ => r.with_error_code(ResponseError::UnsupportedVersion.code()),
                        }
                    })
                    .collect();
                ListOffsetsTopicResponse::default()
                    .with_name(t.name)
                    .with_partitions(partitions)
            })
            .collect()
    })
    .await
    .unwrap_or_else(|e| {
        tracing::error!("list offsets task failed: {e}");
        Vec::new()
    });
    ListOffsetsResponse::default().with_topics(topics)
}
