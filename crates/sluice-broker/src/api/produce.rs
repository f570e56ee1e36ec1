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
//! A transactional batch is stored only while its producer's transaction is
//! open and has added the partition (AddPartitionsToTxn), with the
//! producer's current epoch; the transaction's lock is held across the
//! check and the append, so no batch lands after its transaction's marker.
//! Control batches come from the transaction coordinator only.

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
use crate::txn::{TxnCoordinator, TxnState};
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
    txns: &Arc<TxnCoordinator>,
    metrics: &Metrics,
    req: ProduceRequest,
    version: i16,
) -> Option<ProduceResponse> {
    let acks = req.acks;
    let (t, p, x) = (topics.clone(), producers.clone(), txns.clone());
    let (outcomes, records) = logged_blocking("produce", move || append_all(&t, &p, &x, req))
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
    txns: &TxnCoordinator,
    req: ProduceRequest,
) -> (TopicOutcomes, u64) {
    let acks = req.acks;
    let transactional_id = req.transactional_id.as_ref().map(|t| t.0.to_string());
    // acks=all: (topic slot, partition slot) in `out` of each stored append.
    let mut written: Vec<(usize, usize, Arc<Partition>)> = Vec::new();
    let mut records = 0;
    let mut out = Vec::with_capacity(req.topic_data.len());
    for topic in req.topic_data {
        let name = topic.name.clone();
        let resolved = topics.resolve_for_write(name.as_str());
        let mut parts = Vec::with_capacity(topic.partition_data.len());
        for pd in topic.partition_data {
            let outcome = if !matches!(acks, -1..=1) {
                Err(PartitionOutcome::error(
                    pd.index,
                    ResponseError::InvalidRequiredAcks.code(),
                    format!("acks must be -1 (all), 0 or 1, got {acks}"),
                ))
            } else {
                let writer = Writer {
                    producers,
                    txns,
                    transactional_id: transactional_id.as_deref(),
                };
                writer.append_partition(&resolved, name.as_str(), pd)
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

/// What a produce request's appends need besides the partition.
struct Writer<'a> {
    producers: &'a ProducerStates,
    txns: &'a TxnCoordinator,
    transactional_id: Option<&'a str>,
}

impl Writer<'_> {
    /// Stores one partition's blob: its outcome, the records stored and the
    /// partition (to flush), or the outcome refusing it.
    fn append_partition(
        &self,
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
        match self.append_one(topic, &partition, &records) {
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
        &self,
        topic: &Topic,
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
        if first.is_control() {
            return Err((
                ResponseError::InvalidRecord.code(),
                "control batches are written by the transaction coordinator, never produced".into(),
            ));
        }
        // The transaction stays locked until the append is done.
        let txn = match first.is_transactional() {
            true => Some(self.open_transaction(topic.name(), partition.id())?),
            false => None,
        };
        let txn_guard = txn.as_ref().map(|t| sluice_log::common::mutex(t));
        if let Some(guard) = &txn_guard {
            check_transaction(guard, &first, topic.name(), partition.id())?;
        }
        let mut blob = records.to_vec();
        if first.producer_id < 0 {
            let info = partition.append(&mut blob).map_err(log_err)?;
            return Ok((info.base_offset, info.record_count as u64));
        }
        // Idempotent producer: check sequences and append as one step.
        let now = now_ms();
        let state = self
            .producers
            .for_partition(topic.id(), partition, now)
            .map_err(log_err)?;
        let mut state = sluice_log::common::mutex(&state);
        let headers = batch_headers(&blob)?;
        if headers.iter().any(|h| {
            h.producer_id != first.producer_id || h.is_transactional() != first.is_transactional()
        }) {
            return Err((
                ResponseError::InvalidRecord.code(),
                "a produce blob mixes producers or transactional and plain batches".into(),
            ));
        }
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

    /// The transaction a transactional batch claims to belong to.
    fn open_transaction(
        &self,
        topic: &str,
        partition: u32,
    ) -> Result<crate::txn::SharedMeta, (i16, String)> {
        let id = self.transactional_id.ok_or_else(|| {
        (
            ResponseError::InvalidTxnState.code(),
            format!("transactional batch for {topic}-{partition} in a produce request without a transactional id"),
        )
    })?;
        self.txns.get(id).ok_or_else(|| {
            (
                ResponseError::InvalidProducerIdMapping.code(),
                format!("unknown transactional id {id:?}: call InitProducerId first"),
            )
        })
    }
}

/// Kafka's checks of a transactional append: the producer's current id and
/// epoch, and an open transaction that added this partition.
fn check_transaction(
    meta: &crate::txn::TxnMeta,
    first: &BatchHeader,
    topic: &str,
    partition: u32,
) -> Result<(), (i16, String)> {
    let id = &meta.transactional_id;
    if first.producer_id != meta.producer_id {
        return Err((
            ResponseError::InvalidProducerIdMapping.code(),
            format!(
                "producer id {} is not the one of transactional id {id:?}",
                first.producer_id
            ),
        ));
    }
    if first.producer_epoch != meta.epoch {
        return Err((
            ResponseError::InvalidProducerEpoch.code(),
            format!(
                "producer epoch {} of transactional id {id:?} is fenced by epoch {}",
                first.producer_epoch, meta.epoch
            ),
        ));
    }
    if meta.state != TxnState::Ongoing
        || !meta
            .partitions
            .contains(&(topic.to_owned(), partition as i32))
    {
        return Err((
            ResponseError::InvalidTxnState.code(),
            format!(
                "{topic}-{partition} was not added to the open transaction of {id:?} (AddPartitionsToTxn first)"
            ),
        ));
    }
    Ok(())
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
