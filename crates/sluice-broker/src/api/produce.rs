//! Produce.
//!
//! Stores each partition's records blob as it arrived, after the log store
//! has checked framing and CRC-32C of every batch; a blob with one bad
//! batch stores nothing. acks maps onto durability: 0 and 1 answer once the
//! bytes are in the log (page cache), `all` (-1) once they are fsynced.
//! Batches from idempotent producers are checked against the partition's
//! producer state under one lock with the append, so a retry is answered
//! with the original offset and never stored twice.
//!
//! Transactional batches are refused with a message saying so: this
//! handler must never store one.

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::produce_request::PartitionProduceData;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ProduceRequest, ProduceResponse, TopicName};
use kafka_protocol::protocol::StrBytes;

use crate::blocking::logged_blocking;
use crate::error::code_for;
use crate::metrics::Metrics;
use crate::producers::{ProducerStates, SeqCheck};
use crate::topics::{Topics, topic_error_message};
use sluice_log::common::now_ms;
use sluice_log::log::{BatchHeader, LogError, Partition, Topic};

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

type TopicOutcomes = Vec<(TopicName, Vec<PartitionOutcome>)>;

/// Handles a Produce request; `None` for acks=0 (no response is sent).
pub(crate) async fn produce(
    topics: &Topics,
    producers: &Arc<ProducerStates>,
    metrics: &Metrics,
    req: ProduceRequest,
    version: i16,
) -> Option<ProduceResponse> {
    let acks = req.acks;
    let (t, p) = (topics.clone(), producers.clone());
    let (outcomes, records) = logged_blocking("produce", move || append_all(&t, &p, req))
        .await
        .unwrap_or_default();
    metrics.records_in.fetch_add(records, Relaxed);
    if acks == 0 {
        return None;
    }
    let responses = outcomes
        .into_iter()
        .map(|(name, parts)| {
            TopicProduceResponse::default()
                .with_name(name)
                .with_partition_responses(
                    parts
                        .into_iter()
                        .map(|p| partition_response(p, version))
                        .collect(),
                )
        })
        .collect();
    Some(ProduceResponse::default().with_responses(responses))
}

fn partition_response(p: PartitionOutcome, version: i16) -> PartitionProduceResponse {
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
}

/// Appends every partition of the request; returns the outcomes and the
/// number of records stored.
fn append_all(
    topics: &Topics,
    producers: &ProducerStates,
    req: ProduceRequest,
) -> (TopicOutcomes, u64) {
    let acks = req.acks;
    let transactional = req.transactional_id.is_some();
    // acks=all: (topic slot, partition slot) in `out` of each stored append.
    let mut written: Vec<(usize, usize, Arc<Partition>)> = Vec::new();
    let mut records = 0;
    let mut out = Vec::with_capacity(req.topic_data.len());
    for topic in req.topic_data {
        let name = topic.name.clone();
        let resolved = topics.resolve_for_write(name.as_str());
        let mut parts = Vec::with_capacity(topic.partition_data.len());
        for pd in topic.partition_data {
            let refused = if !matches!(acks, -1..=1) {
                Some((
                    ResponseError::InvalidRequiredAcks.code(),
                    format!("acks must be -1 (all), 0 or 1, got {acks}"),
                ))
            } else if transactional {
                Some((
                    ResponseError::TransactionalIdAuthorizationFailed.code(),
                    "transactions are not supported by sluice broker yet".to_string(),
                ))
            } else {
                None
            };
            let outcome = match refused {
                Some((code, message)) => Err(PartitionOutcome::error(pd.index, code, message)),
                None => append_partition(producers, &resolved, name.as_str(), pd),
            };
            match outcome {
                Ok((outcome, stored, partition)) => {
                    records += stored;
                    // A retried duplicate is flushed too: its original may
                    // not have reached the disk before a crash.
                    if acks == -1 {
                        written.push((out.len(), parts.len(), partition));
                    }
                    parts.push(outcome);
                }
                Err(outcome) => parts.push(outcome),
            }
        }
        out.push((name, parts));
    }
    topics.notify_appended();
    flush_written(&mut out, written);
    (out, records)
}

/// acks=all: answer only once the bytes are on disk. One fsync per
/// partition per request; concurrent producers share them.
fn flush_written(out: &mut TopicOutcomes, written: Vec<(usize, usize, Arc<Partition>)>) {
    for (topic_slot, part_slot, p) in written {
        if let Err(e) = p.flush() {
            let part = &mut out[topic_slot].1[part_slot];
            *part = PartitionOutcome::error(part.index, code_for(&e), e.to_string());
        }
    }
}

/// Stores one partition's blob: its outcome, the records stored and the
/// partition (to flush), or the outcome refusing it.
fn append_partition(
    producers: &ProducerStates,
    resolved: &Result<Arc<Topic>, LogError>,
    topic_name: &str,
    pd: PartitionProduceData,
) -> Result<(PartitionOutcome, u64, Arc<Partition>), PartitionOutcome> {
    let index = pd.index;
    let topic = resolved
        .as_ref()
        .map_err(|e| PartitionOutcome::error(index, code_for(e), topic_error_message(e)))?;
    let partition = topic
        .partition(index)
        .map_err(|e| PartitionOutcome::error(index, code_for(&e), e.to_string()))?;
    let records = pd.records.unwrap_or_default();
    match append_one(producers, topic.id(), &partition, &records) {
        Ok((base_offset, stored)) => {
            let outcome = PartitionOutcome {
                index,
                error_code: 0,
                message: None,
                base_offset,
                log_start_offset: partition.log_start_offset(),
            };
            Ok((outcome, stored, partition))
        }
        Err((code, message)) => {
            tracing::debug!("produce to {topic_name}-{index} refused: {message}");
            Err(PartitionOutcome::error(index, code, message))
        }
    }
}

/// Appends one partition's blob; returns (base offset, records stored).
fn append_one(
    producers: &ProducerStates,
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
    let state = producers
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
