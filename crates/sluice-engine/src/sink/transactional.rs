//! A topic sink's Kafka transactions (KIP-98): each batch's records are
//! written in one transaction, and the batch id is recorded with it, so the
//! writer knows after a crash whether a replayed batch's transaction
//! committed.
//!
//! The transactional id and the group that records the batches are both
//! `sluice-<job>-<writer>-<run>`: stable across restarts of one job (so a
//! restarted writer fences its predecessor and aborts whatever transaction
//! it left open), new when the job's checkpoint is recreated (whose batch
//! ids start again at 1). The batch id rides on the transaction as the
//! group's committed offset of the sink topic's partition 0
//! (TxnOffsetCommit), which becomes visible exactly when the transaction
//! commits: committed offset ≥ batch id ⇔ the batch is in the topic.
//!
//! This module owns the transactional producer and the group's consumer
//! handle; it never decides partitions or encodes records (the topic
//! writer does), and never trusts anything but the broker's committed
//! offset about what was written.

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::WriterId;
use super::topic::{DeliveryErrors, producer_config};

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

/// One writer's transactional producer, ready for the next batch.
pub(super) struct TxnSession {
    producer: BaseProducer<DeliveryErrors>,
    group: BaseConsumer,
    /// The transactional id, also the recording group's id.
    id: String,
}

impl TxnSession {
    /// Creates the producer and fences every earlier one with the same id
    /// (init_transactions aborts a transaction a crash left open).
    pub fn open(brokers: &str, writer: &WriterId, what: &str) -> Result<TxnSession, String> {
        let id = format!("sluice-{}-{}-{}", writer.job, writer.name, writer.run);
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

    pub fn producer(&self) -> &BaseProducer<DeliveryErrors> {
        &self.producer
    }

    /// The last batch whose transaction committed, if any.
    pub fn committed_batch(&self, topic: &str) -> Result<Option<u64>, String> {
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

    pub fn begin(&self) -> Result<(), String> {
        self.producer
            .begin_transaction()
            .map_err(|e| format!("cannot begin a transaction: {e}"))
    }

    /// Records `batch_id` with the open transaction and commits it.
    pub fn commit(&self, topic: &str, batch_id: u64, run: &str) -> Result<(), String> {
        let mut offsets = TopicPartitionList::new();
        let offset = i64::try_from(batch_id)
            .map_err(|_| format!("batch id {batch_id} does not fit a Kafka offset"))?;
        offsets
            .add_partition_offset(topic, 0, Offset::Offset(offset))
            .map_err(|e| format!("cannot record batch {batch_id}: {e}"))?;
        if let Some(mut e) = offsets.find_partition(topic, 0) {
            // For people reading the group with admin tools.
            e.set_metadata(format!("sluice batch {batch_id} of run {run}"));
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
    pub fn abort(&self) {
        if let Err(e) = self.producer.abort_transaction(TXN_TIMEOUT) {
            tracing::debug!(transactional_id = %self.id, "abort after a failed batch: {e}");
        }
    }
}

fn txn_error(action: &str, batch_id: u64, e: &KafkaError) -> String {
    format!("cannot {action} the transaction of batch {batch_id}: {e}")
}
