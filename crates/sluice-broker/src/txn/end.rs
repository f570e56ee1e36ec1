//! EndTxn, and ending a transaction however it ends (the producer's
//! commit or abort, a new producer fencing the old one, a timeout, recovery
//! after a crash): Prepare record, markers, pending offsets, Complete record.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{EndTxnRequest, EndTxnResponse};

use super::meta::{TxnMeta, TxnState};
use super::{Claim, TxnCoordinator, fenced_code};
use crate::blocking::run_blocking;
use sluice_log::common::{mutex, now_ms};
use sluice_log::log::{ControlType, LogError};

/// Markers carry the coordinator epoch; a single node never changes it.
const COORDINATOR_EPOCH: i32 = 0;

impl TxnCoordinator {
    pub async fn end_txn(
        self: &std::sync::Arc<Self>,
        req: EndTxnRequest,
        version: i16,
    ) -> EndTxnResponse {
        let this = self.clone();
        let code = run_blocking("end transaction", move || {
            this.end_txn_blocking(&req, version)
        })
        .await
        .unwrap_or_else(|e| {
            tracing::error!("{e}");
            Err(ResponseError::UnknownServerError)
        })
        .err()
        .map_or(0, |e| e.code());
        EndTxnResponse::default().with_error_code(code)
    }

    pub(super) fn end_txn_blocking(
        &self,
        req: &EndTxnRequest,
        version: i16,
    ) -> Result<(), ResponseError> {
        let claim = Claim {
            id: req.transactional_id.0.as_str(),
            producer_id: req.producer_id.0,
            epoch: req.producer_epoch,
            fenced: fenced_code(version, 2),
        };
        let commit = req.committed;
        self.with_producer(claim, |meta| match (meta.state, commit) {
            (TxnState::Ongoing, _) => {
                let ending = if commit {
                    TxnState::PrepareCommit
                } else {
                    TxnState::PrepareAbort
                };
                self.prepare(meta, ending, false)?;
                self.complete(meta)
            }
            // A retried EndTxn whose first attempt completed.
            (TxnState::CompleteCommit, true) | (TxnState::CompleteAbort, false) => Ok(()),
            // A crash or a failed marker write left it half-way: finish it.
            (TxnState::PrepareCommit, true) | (TxnState::PrepareAbort, false) => {
                self.complete(meta)
            }
            _ => Err(ResponseError::InvalidTxnState),
        })
    }

    /// Durably decides how the open transaction ends (`bump_epoch` fences
    /// its producer first: timeouts and a new InitProducerId do that).
    pub(super) fn prepare(
        &self,
        meta: &mut TxnMeta,
        ending: TxnState,
        bump_epoch: bool,
    ) -> Result<(), ResponseError> {
        let mut next = meta.clone();
        next.state = ending;
        next.update_ms = now_ms();
        if bump_epoch {
            next.epoch = next.epoch.saturating_add(1);
        }
        self.persist(&next)?;
        *meta = next;
        Ok(())
    }

    /// Writes the markers of a prepared transaction, stores its offsets if
    /// it commits, and records it complete. Safe to repeat: a partition
    /// appends a marker only while the producer has a transaction open
    /// there, and storing the same offsets twice changes nothing.
    pub(super) fn complete(&self, meta: &mut TxnMeta) -> Result<(), ResponseError> {
        let commit = match meta.state {
            TxnState::PrepareCommit => true,
            TxnState::PrepareAbort => false,
            _ => return Ok(()),
        };
        let control = if commit {
            ControlType::Commit
        } else {
            ControlType::Abort
        };
        for (topic, partition) in &meta.partitions {
            self.write_marker(topic, *partition, meta.producer_id, meta.epoch, control)?;
        }
        if commit {
            for (group, offsets) in &meta.groups {
                let entries = offsets.iter().map(|((t, p), o)| {
                    (t.clone(), *p, o.offset, o.leader_epoch, o.metadata.clone())
                });
                if let Err(e) = self.groups.commit_offsets(group, entries.collect()) {
                    tracing::error!(group, error = %e, "storing a committed transaction's offsets failed");
                    return Err(ResponseError::CoordinatorNotAvailable);
                }
            }
        }
        let mut next = meta.clone();
        next.state = if commit {
            TxnState::CompleteCommit
        } else {
            TxnState::CompleteAbort
        };
        next.partitions.clear();
        next.groups.clear();
        next.start_ms = -1;
        next.update_ms = now_ms();
        // Never fsynced on its own: lost in a crash, it leaves the Prepare
        // record, and startup completes the transaction again (no partition
        // still has it open, and storing its offsets again changes
        // nothing); any later record's fsync makes it durable first.
        self.persist_with(&next, false)?;
        *meta = next;
        // Read-committed fetches waiting at the old last stable offset.
        self.topics.notify_appended();
        Ok(())
    }

    /// Appends one marker, made durable as the partition's flush policy
    /// says (as Kafka does: a marker is data of its partition; fsyncing it
    /// regardless would fsync the whole transaction's records on every
    /// commit, a cost the idempotent producer on the same topic never pays).
    /// A partition that no longer exists (its topic was deleted) needs none.
    fn write_marker(
        &self,
        topic: &str,
        partition: i32,
        producer_id: i64,
        epoch: i16,
        control: ControlType,
    ) -> Result<(), ResponseError> {
        let p = match self.topics.store.partition(topic, partition) {
            Ok(p) => p,
            Err(LogError::UnknownTopic(_) | LogError::UnknownPartition { .. }) => return Ok(()),
            Err(e) => {
                tracing::error!(topic, partition, error = %e, "cannot write a transaction marker");
                return Err(ResponseError::KafkaStorageError);
            }
        };
        p.append_marker(producer_id, epoch, control, COORDINATOR_EPOCH)
            .map(|_| ())
            .map_err(|e| {
            tracing::error!(topic, partition, error = %e, "writing a transaction marker failed");
            ResponseError::KafkaStorageError
        })
    }

    /// Startup: finishes every transaction a crash left prepared.
    pub(super) fn finish_prepared(&self) {
        for shared in self.all() {
            let mut meta = mutex(&shared);
            if meta.state.is_prepared() {
                let id = meta.transactional_id.clone();
                match self.complete(&mut meta) {
                    Ok(()) => {
                        tracing::info!(transactional_id = %id, state = meta.state.name(), "finished a transaction prepared before a restart")
                    }
                    Err(e) => {
                        tracing::warn!(transactional_id = %id, error = ?e, "could not finish a prepared transaction yet; retrying later")
                    }
                }
            }
        }
    }

    /// Startup: a partition with an open transaction of a producer that no
    /// open transaction of this coordinator writes to there (its
    /// transaction log was lost or replaced) would hold its last stable
    /// offset back forever; such transactions are aborted.
    pub(super) fn abort_unclaimed(&self) {
        let mut claimed = std::collections::HashSet::new();
        for shared in self.all() {
            let meta = mutex(&shared);
            if meta.state == TxnState::Ongoing || meta.state.is_prepared() {
                for (t, p) in &meta.partitions {
                    claimed.insert((meta.producer_id, t.clone(), *p));
                }
            }
        }
        for topic in self.topics.store.topics() {
            for p in topic.partitions() {
                for (producer_id, first_offset) in p.ongoing_transactions() {
                    if claimed.contains(&(producer_id, topic.name().to_owned(), p.id() as i32)) {
                        continue;
                    }
                    tracing::warn!(
                        topic = topic.name(),
                        partition = p.id(),
                        producer_id,
                        first_offset,
                        "aborting a transaction no transactional id claims"
                    );
                    let aborted =
                        p.append_marker(producer_id, -1, ControlType::Abort, COORDINATOR_EPOCH);
                    if let Err(e) = aborted {
                        tracing::error!(topic = topic.name(), partition = p.id(), error = %e, "could not abort an unclaimed transaction");
                    }
                }
            }
        }
    }
}
