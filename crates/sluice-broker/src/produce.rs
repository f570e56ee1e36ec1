//! Produce and InitProducerId.
//!
//! Produce stores each partition's records blob as it arrived, after the
//! log store has checked framing and CRC-32C of every batch; a blob with one
//! bad batch stores nothing. acks maps onto durability: 0 and 1 answer once
//! the bytes are in the log (page cache), `all` (-1) once they are fsynced.
//! Batches from idempotent producers are checked against the partition's
//! producer state under one lock with the append, so a retry is answered
//! with the original offset and never stored twice.
//!
//! Transactions are not implemented: transactional batches are refused with
//! a message saying so, and InitProducerId with a transactional id fails.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{
    InitProducerIdRequest, InitProducerIdResponse, ProduceRequest, ProduceResponse, ProducerId,
};
use kafka_protocol::protocol::StrBytes;

use super::admin::{resolve_for_write, topic_error_message};
use super::error::code_for;
use super::producers::SeqCheck;
use super::server::Shared;
use sluice_log::common::now_ms;
use sluice_log::log::{BatchHeader, LogError, Partition};

struct PartitionOutcome {
    index: i32,
    error_code: i16,
    message: Option<String>,
    base_offset: i64,
    log_start_offset: i64,
}

impl PartitionOutcome {
    fn error(index: i32, code: i16, message: impl Into<String>) -> PartitionOutcome {
        PartitionOutcome {
            index,
            error_code: code,
            message: Some(message.into()),
            base_offset: -1,
            log_start_offset: -1,
        }
    }
}

/// Handles a Produce request; `None` for acks=0 (no response is sent).
pub(crate) async fn produce(
    shared: &Arc<Shared>,
    req: ProduceRequest,
    version: i16,
) -> Option<ProduceResponse> {
    let acks = req.acks;
    let s = shared.clone();
    let outcome = tokio::task::spawn_blocking(move || append_all(&s, req)).await;
    let topics = match outcome {
        Ok(topics) => topics,
        Err(e) => {
            tracing::error!("produce task failed: {e}");
            Vec::new()
        }
    };
    if acks == 0 {
        return None;
    }
    let responses = topics
        .into_iter()
        .map(|(name, parts)| {
            TopicProduceResponse::default()
                .with_name(name)
                .with_partition_responses(
                    parts
                        .into_iter()
                        .map(|p| {
                            let mut r = PartitionProduceResponse::default()
                                .with_index(p.index)
                                .with_error_code(p.error_code)
                                .with_base_offset(p.base_offset)
                                .with_log_append_time_ms(-1);
                            if version >= 5 {
                                r = r.with_log_start_offset(p.log_start_offset);
                            }
                            if version >= 8 {
                                r = r.with_error_message(p.message.map(StrBytes::from_string));
                            }
                            r
                        })
                        .collect(),
                )
        })
        .collect();
    Some(ProduceResponse::default().with_responses(responses))
}

type TopicOutcomes = Vec<(kafka_protocol::messages::TopicName, Vec<PartitionOutcome>)>;

fn append_all(shared: &Shared, req: ProduceRequest) -> TopicOutcomes {
    let acks = req.acks;
    let transactional = req.transactional_id.is_some();
    // acks=all: (topic slot, partition slot) in `out` of each stored append.
    let mut written: Vec<(usize, usize, Arc<Partition>)> = Vec::new();
    let mut out = Vec::with_capacity(req.topic_data.len());
    for topic in req.topic_data {
        let name = topic.name.clone();
        let resolved = resolve_for_write(shared, name.as_str());
        let mut parts = Vec::with_capacity(topic.partition_data.len());
        for pd in topic.partition_data {
            let index = pd.index;
            if !matches!(acks, -1..=1) {
                parts.push(PartitionOutcome::error(
                    index,
                    ResponseError::InvalidRequiredAcks.code(),
                    format!("acks must be -1 (all), 0 or 1, got {acks}"),
                ));
                continue;
            }
            if transactional {
                parts.push(PartitionOutcome::error(
                    index,
                    ResponseError::TransactionalIdAuthorizationFailed.code(),
                    "transactions are not supported by sluice broker yet",
                ));
                continue;
            }
            let topic_handle = match &resolved {
                Ok(t) => t,
                Err(e) => {
                    parts.push(PartitionOutcome::error(
                        index,
                        code_for(e),
                        topic_error_message(e),
                    ));
                    continue;
                }
            };
            let partition = match topic_handle.partition(index) {
                Ok(p) => p,
                Err(e) => {
                    parts.push(PartitionOutcome::error(index, code_for(&e), e.to_string()));
                    continue;
                }
            };
            let records = pd.records.unwrap_or_default();
            let result = append_one(shared, topic_handle.id(), &partition, &records);
            match result {
                Ok((base_offset, records_in)) => {
                    shared.metrics.records_in.fetch_add(records_in, Relaxed);
                    // A retried duplicate is flushed too: its original may
                    // not have reached the disk before a crash.
                    if acks == -1 {
                        written.push((out.len(), parts.len(), partition.clone()));
                    }
                    parts.push(PartitionOutcome {
                        index,
                        error_code: 0,
                        message: None,
                        base_offset,
                        log_start_offset: partition.log_start_offset(),
                    });
                }
                Err((code, message)) => {
                    tracing::debug!("produce to {}-{index} refused: {message}", name.as_str());
                    parts.push(PartitionOutcome::error(index, code, message));
                }
            }
        }
        out.push((name, parts));
    }
    shared.data_ready.notify_waiters();
    // acks=all: answer only once the bytes are on disk. One fsync per
    // partition per request; concurrent producers share them.
    for (topic_slot, part_slot, p) in written {
        if let Err(e) = p.flush() {
            let part = &mut out[topic_slot].1[part_slot];
            *part = PartitionOutcome::error(part.index, code_for(&e), e.to_string());
        }
    }
    out
}

/// Appends one partition's blob; returns (base offset, records stored).
fn append_one(
    shared: &Shared,
    topic_id: uuid::Uuid,
    partition: &Partition,
    records: &Bytes,
) -> Result<(i64, u64), (i16, String)> {
    let log_err = |e: LogError| (code_for(&e), e.to_string());
    if records.is_empty() {
        return Err((
            ResponseError::CorruptMessage.code(),
            "empty records: a produce request must carry at least one record batch".into(),
        ));
    }
    let first = BatchHeader::parse(records).map_err(|e| {
        (
            ResponseError::CorruptMessage.code(),
            format!("malformed record batch: {e}"),
        )
    })?;
    if first.is_transactional() || first.is_control() {
        return Err((
            ResponseError::TransactionalIdAuthorizationFailed.code(),
            "transactional batches are not supported by sluice broker yet".into(),
        ));
    }
    let mut blob = records.to_vec();
    if first.producer_id < 0 {
        let info = partition.append(&mut blob).map_err(log_err)?;
        return Ok((info.base_offset, info.record_count as u64));
    }
    // Idempotent producer: check sequences and append as one step.
    let now = now_ms();
    let state = shared
        .producer_states
        .for_partition(topic_id, partition, now)
        .map_err(log_err)?;
    let mut state = sluice_log::common::mutex(&state);
    let headers = batch_headers(&blob)?;
    for (i, h) in headers.iter().enumerate() {
        match state.check(h) {
            SeqCheck::Append => {}
            // Kafka answers a retried batch with its original offset.
            SeqCheck::Duplicate { base_offset } if i == 0 && headers.len() == 1 => {
                return Ok((base_offset, 0));
            }
            SeqCheck::Duplicate { .. } => {
                return Err((
                    ResponseError::DuplicateSequenceNumber.code(),
                    "a multi-batch produce partly repeats earlier batches".into(),
                ));
            }
            SeqCheck::Reject { code, message } => return Err((code, message)),
        }
    }
    let info = partition.append(&mut blob).map_err(log_err)?;
    let mut offset = info.base_offset;
    for h in &headers {
        state.record(h, offset, now);
        offset += h.offset_count();
    }
    Ok((info.base_offset, info.record_count as u64))
}

fn batch_headers(blob: &[u8]) -> Result<Vec<BatchHeader>, (i16, String)> {
    let mut headers = Vec::with_capacity(1);
    let mut pos = 0;
    while pos < blob.len() {
        let h = BatchHeader::parse(&blob[pos..]).map_err(|e| {
            (
                ResponseError::CorruptMessage.code(),
                format!("malformed record batch at byte {pos}: {e}"),
            )
        })?;
        pos += h.total_len();
        headers.push(h);
    }
    Ok(headers)
}

pub(crate) async fn init_producer_id(
    shared: &Arc<Shared>,
    req: InitProducerIdRequest,
    _version: i16,
) -> InitProducerIdResponse {
    if req
        .transactional_id
        .as_ref()
        .is_some_and(|t| t.0.is_empty())
    {
        // Kafka: an empty transactional id is not a valid one.
        return InitProducerIdResponse::default()
            .with_error_code(ResponseError::InvalidRequest.code())
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1);
    }
    if req.transactional_id.is_some() {
        tracing::warn!(
            "refused InitProducerId for transactional id {:?}: transactions are not supported yet",
            req.transactional_id.as_ref().map(|t| t.as_str())
        );
        return InitProducerIdResponse::default()
            .with_error_code(ResponseError::TransactionalIdAuthorizationFailed.code())
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1);
    }
    let s = shared.clone();
    // A fresh id (epoch 0) also answers a KIP-360 epoch-bump request: the
    // client then starts new sequences, which the partitions accept.
    match tokio::task::spawn_blocking(move || s.producer_ids.allocate()).await {
        Ok(Ok(id)) => InitProducerIdResponse::default()
            .with_producer_id(ProducerId(id))
            .with_producer_epoch(0),
        Ok(Err(e)) => {
            tracing::error!("{e}");
            InitProducerIdResponse::default()
                .with_error_code(ResponseError::KafkaStorageError.code())
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1)
        }
        Err(e) => {
            tracing::error!("producer id task failed: {e}");
            InitProducerIdResponse::default()
                .with_error_code(ResponseError::UnknownServerError.code())
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1)
        }
    }
}
