//! The transaction coordinator (KIP-98, KIP-447): transactional ids and
//! their producer ids and epochs, each open transaction's partitions and
//! pending group offsets, and ending transactions with COMMIT/ABORT markers.
//!
//! One file per request, as in [`crate::groups`]: [`init`] (InitProducerId
//! with a transactional id), [`add`] (AddPartitionsToTxn,
//! AddOffsetsToTxn), [`offset_commit`] (TxnOffsetCommit), [`end`] (EndTxn
//! and the marker writing every ending shares), [`describe`]
//! (DescribeTransactions, ListTransactions), [`timers`] (timeouts, retrying
//! unfinished endings, expiring idle ids). [`meta`] is the state and its
//! record layout.
//!
//! Durability: every state change is a record in the transaction log
//! (`<data-dir>/transactions/txn.journal`, a [`crate::journal`]) written
//! before the request is answered, and fsynced as the transaction's
//! partitions are (see [`TxnCoordinator::needs_sync`]). Ending a
//! transaction is two records around the markers, as in Kafka:
//! PrepareCommit/PrepareAbort, then every marker appended (and, for a
//! commit, the pending offsets stored), then CompleteCommit/CompleteAbort. A marker is as durable as its partition's
//! data (its flush policy: with `flush.messages=1` it is fsynced before the
//! Complete record; under the default, like every record, it survives a
//! killed process but not a lost machine). After a crash, a prepared
//! transaction is finished at startup; an ongoing one stays open until its
//! producer ends it or its timeout aborts it. So a transaction ends
//! committed or aborted, never half.
//!
//! Locking: one mutex per transactional id, held for a whole request
//! (including a produce's append to a transactional partition, so an append
//! never lands after its transaction's marker); then the log's mutex. The
//! map of ids is locked only to find or insert an entry (a first
//! InitProducerId holds it across its log write: map, then log).
//!
//! Never decides what a partition stores beyond its markers (the log store
//! tracks each partition's open transactions and last stable offset), and
//! never answers group membership itself (it asks the group coordinator).

mod add;
mod describe;
mod end;
mod init;
mod meta;
mod offset_commit;
#[cfg(test)]
mod tests;
mod timers;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::ApiKey;

use crate::groups::GroupCoordinator;
use crate::journal::{Journal, JournalError, JournalSpec, MAGIC_LEN, RECORD_HEADER};
use crate::producers::ProducerIds;
use crate::topics::Topics;
use meta::TxnRecord;
use sluice_log::common::mutex;

pub(crate) use meta::{TxnMeta, TxnState};

static SPEC: JournalSpec = JournalSpec {
    what: "transaction log",
    file: "txn.journal",
    compaction_file: "txn.journal.tmp",
    magic: b"SLTXNLG1",
};
/// Compaction floor of the transaction log (see [`Journal::needs_compaction`]).
const COMPACT_MIN_BYTES: u64 = 8 << 20;

/// The request versions the coordinator answers: `(api, min, max)`. None
/// of transaction version 2 (KIP-890: EndTxn v5, AddPartitionsToTxn v4+,
/// which moves partition registration into produce) is served.
pub fn supported_versions() -> [(ApiKey, i16, i16); 6] {
    [
        (ApiKey::AddPartitionsToTxn, 0, 3),
        (ApiKey::AddOffsetsToTxn, 0, 3),
        (ApiKey::EndTxn, 0, 4),
        (ApiKey::TxnOffsetCommit, 0, 4),
        (ApiKey::DescribeTransactions, 0, 0),
        (ApiKey::ListTransactions, 0, 1),
    ]
}

/// The coordinator's settings.
#[derive(Debug, Clone)]
pub struct TxnConfig {
    /// `transaction.max.timeout.ms`: a producer asking for a longer
    /// `transaction.timeout.ms` is refused with INVALID_TRANSACTION_TIMEOUT.
    pub max_timeout: Duration,
    /// `transactional.id.expiration.ms`: ids idle this long are forgotten.
    pub id_expiration: Duration,
    /// How often open transactions are checked against their timeouts.
    pub check_interval: Duration,
}

impl Default for TxnConfig {
    fn default() -> Self {
        // Kafka's defaults: 15 minutes, 7 days, 10 seconds.
        TxnConfig {
            max_timeout: Duration::from_secs(15 * 60),
            id_expiration: Duration::from_secs(7 * 24 * 3600),
            check_interval: Duration::from_secs(10),
        }
    }
}

/// The transaction log and the last record of every live id (so that
/// compaction never needs another id's lock).
struct TxnLog {
    journal: Journal,
    latest: HashMap<String, Vec<u8>>,
    live_bytes: u64,
}

impl TxnLog {
    fn record_size(payload: &[u8]) -> u64 {
        RECORD_HEADER + payload.len() as u64
    }

    fn remember(&mut self, id: &str, payload: Option<Vec<u8>>) {
        let old = match payload {
            Some(p) => {
                self.live_bytes += Self::record_size(&p);
                self.latest.insert(id.to_owned(), p)
            }
            None => self.latest.remove(id),
        };
        if let Some(old) = old {
            self.live_bytes -= Self::record_size(&old);
        }
    }
}

/// The producer id of an entry forgotten while a request waited for it.
const FORGOTTEN: i64 = -1;

pub(crate) type SharedMeta = Arc<Mutex<TxnMeta>>;

pub(crate) struct TxnCoordinator {
    config: TxnConfig,
    txns: Mutex<HashMap<String, SharedMeta>>,
    log: Mutex<TxnLog>,
    topics: Topics,
    groups: Arc<GroupCoordinator>,
    producer_ids: Arc<ProducerIds>,
    closed: AtomicBool,
}

impl TxnCoordinator {
    /// Replays the transaction log in `dir`, finishes every transaction a
    /// crash left prepared, and aborts open transactions the log store holds
    /// for producers no transaction claims (so no partition's last stable
    /// offset stays stuck). Blocking.
    pub fn open(
        dir: &Path,
        config: TxnConfig,
        topics: Topics,
        groups: Arc<GroupCoordinator>,
        producer_ids: Arc<ProducerIds>,
    ) -> Result<Arc<TxnCoordinator>, JournalError> {
        let mut metas: HashMap<String, TxnMeta> = HashMap::new();
        let mut latest: HashMap<String, Vec<u8>> = HashMap::new();
        let journal = Journal::open(dir, &SPEC, COMPACT_MIN_BYTES, |payload| {
            match meta::decode(payload)? {
                TxnRecord::State(m) => {
                    latest.insert(m.transactional_id.clone(), payload.to_vec());
                    metas.insert(m.transactional_id.clone(), m);
                }
                TxnRecord::Forget(id) => {
                    latest.remove(&id);
                    metas.remove(&id);
                }
            }
            Ok(())
        })?;
        let live_bytes = MAGIC_LEN + latest.values().map(|p| TxnLog::record_size(p)).sum::<u64>();
        let coordinator = Arc::new(TxnCoordinator {
            config,
            txns: Mutex::new(
                metas
                    .into_iter()
                    .map(|(id, m)| (id, Arc::new(Mutex::new(m))))
                    .collect(),
            ),
            log: Mutex::new(TxnLog {
                journal,
                latest,
                live_bytes,
            }),
            topics,
            groups,
            producer_ids,
            closed: AtomicBool::new(false),
        });
        coordinator.finish_prepared();
        coordinator.abort_unclaimed();
        Ok(coordinator)
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// The entry of `id`, if the coordinator knows it.
    pub fn get(&self, id: &str) -> Option<SharedMeta> {
        mutex(&self.txns).get(id).cloned()
    }

    fn all(&self) -> Vec<SharedMeta> {
        mutex(&self.txns).values().cloned().collect()
    }

    /// Makes `next` the state of its id: one record, fsynced when the
    /// transaction writes a partition whose records are fsynced
    /// ([`TxnCoordinator::needs_sync`]). The caller swaps it into memory
    /// only after this succeeds, so a failed write changes nothing.
    fn persist(&self, next: &TxnMeta) -> Result<(), ResponseError> {
        self.persist_with(next, self.needs_sync(next))
    }

    /// A transaction's state is as durable as the records it covers. Its
    /// partitions' flush policy decides: if any fsyncs every append
    /// (`flush.messages=1`), every record of the transaction is fsynced
    /// before it is answered (with its markers fsynced before the Complete
    /// record, the transaction survives a lost machine whole). Otherwise
    /// its records, like the partitions' own, reach the page cache only:
    /// they survive a killed broker, and a lost machine loses them with the
    /// data (as in Kafka, whose transaction log is not fsynced either).
    /// Records of no partition (producer ids, offsets-only transactions)
    /// are always fsynced: they are rare.
    fn needs_sync(&self, meta: &TxnMeta) -> bool {
        meta.partitions.is_empty()
            || meta.partitions.iter().any(|(topic, _)| {
                self.topics.store.topic(topic).is_ok_and(|t| {
                    t.config().flush_policy() == sluice_log::log::FlushPolicy::EveryAppend
                })
            })
    }

    fn persist_with(&self, next: &TxnMeta, sync: bool) -> Result<(), ResponseError> {
        if self.is_closed() {
            return Err(ResponseError::CoordinatorNotAvailable);
        }
        let payload = next.encode();
        let mut log = mutex(&self.log);
        if let Err(e) = log.journal.append_with(&payload, sync) {
            tracing::error!(transactional_id = %next.transactional_id, error = %e, "writing the transaction log failed");
            return Err(ResponseError::CoordinatorNotAvailable);
        }
        log.remember(&next.transactional_id, Some(payload));
        self.maybe_compact(&mut log);
        Ok(())
    }

    /// Forgets an id durably (an expired, idle id). The caller holds the
    /// id's lock; a request that found the entry before it went sees a
    /// producer id of -1 and starts over.
    fn forget(&self, meta: &mut TxnMeta) -> Result<(), ResponseError> {
        let id = meta.transactional_id.clone();
        {
            let mut log = mutex(&self.log);
            if let Err(e) = log.journal.append(&meta::encode_forget(&id)) {
                tracing::error!(transactional_id = %id, error = %e, "writing the transaction log failed");
                return Err(ResponseError::CoordinatorNotAvailable);
            }
            log.remember(&id, None);
            self.maybe_compact(&mut log);
        }
        // Lock order is ids map, then log: never both the other way round.
        mutex(&self.txns).remove(&id);
        meta.producer_id = FORGOTTEN;
        Ok(())
    }

    fn maybe_compact(&self, log: &mut TxnLog) {
        if log.journal.needs_compaction(log.live_bytes) {
            let records: Vec<Vec<u8>> = log.latest.values().cloned().collect();
            log.journal.compact(records);
        }
    }

    /// Stops answering (graceful shutdown) and closes the log.
    pub fn close(&self) -> Result<(), JournalError> {
        self.closed.store(true, Ordering::Release);
        mutex(&self.log).journal.close()
    }
}

/// Who a transactional request says it is: its transactional id, producer
/// id and epoch, and the code a stale epoch gets at its version.
pub(crate) struct Claim<'a> {
    pub id: &'a str,
    pub producer_id: i64,
    pub epoch: i16,
    pub fenced: ResponseError,
}

impl TxnCoordinator {
    /// Runs `f` on the claimed id's state, under its lock, once the claim
    /// passed Kafka's producer id and epoch check.
    pub(crate) fn with_producer<T>(
        &self,
        claim: Claim<'_>,
        f: impl FnOnce(&mut TxnMeta) -> Result<T, ResponseError>,
    ) -> Result<T, ResponseError> {
        if self.is_closed() {
            return Err(ResponseError::CoordinatorNotAvailable);
        }
        let shared = self
            .get(claim.id)
            .ok_or(ResponseError::InvalidProducerIdMapping)?;
        let mut meta = mutex(&shared);
        check_producer(&meta, claim.producer_id, claim.epoch, claim.fenced)?;
        f(&mut meta)
    }
}

/// Kafka's check of a request's producer id and epoch against the id's
/// state (`TransactionCoordinator`): `fenced` is the code a stale epoch gets
/// at this request's version (PRODUCER_FENCED, or INVALID_PRODUCER_EPOCH for
/// clients older than KIP-588).
pub(crate) fn check_producer(
    meta: &TxnMeta,
    producer_id: i64,
    epoch: i16,
    fenced: ResponseError,
) -> Result<(), ResponseError> {
    if producer_id != meta.producer_id {
        return Err(ResponseError::InvalidProducerIdMapping);
    }
    if epoch != meta.epoch {
        return Err(fenced);
    }
    Ok(())
}

/// PRODUCER_FENCED from `since` on, INVALID_PRODUCER_EPOCH before (what
/// Kafka answers clients that predate the newer code).
pub(crate) fn fenced_code(version: i16, since: i16) -> ResponseError {
    if version >= since {
        ResponseError::ProducerFenced
    } else {
        ResponseError::InvalidProducerEpoch
    }
}
