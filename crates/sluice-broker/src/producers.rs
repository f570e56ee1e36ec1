//! Idempotent-producer state: producer-id allocation and, per partition, the
//! epoch and the last five batches' sequence ranges of every producer, so a
//! retried batch is answered with its original offset instead of being
//! appended twice, and a gap in sequences is refused.
//!
//! The rules are Kafka's (`ProducerStateManager`): a higher epoch must start
//! at sequence 0, a lower one is fenced, within an epoch each batch must
//! continue the previous one, and a producer the partition has no state for
//! may start anywhere. State is rebuilt after a restart from the batch
//! headers of the newest segments, which carry producer id, epoch and base
//! sequence; it is never trusted from anywhere else.
//!
//! This module never appends: the caller checks, appends and records while
//! holding the partition's state lock, so check and append are one step.

use std::collections::{HashMap, VecDeque};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use kafka_protocol::error::ResponseError;
use uuid::Uuid;

use crate::error::BrokerError;
use sluice_log::log::{BatchHeader, Partition, write_atomically};

/// Kafka keeps the last five batches per producer (`max.in.flight` ≤ 5).
const CACHED_BATCHES: usize = 5;
/// Producer ids are reserved durably in blocks, so a restart never reuses one.
const ID_BLOCK: i64 = 1000;
/// Only this much of the newest log is scanned to rebuild state after a
/// restart (the active segment, plus the previous one when the active one
/// is smaller than this).
const REBUILD_SPAN_BYTES: u64 = 64 << 20;
/// Producers silent this long are forgotten (Kafka's producer.id.expiration.ms).
pub(crate) const PRODUCER_EXPIRY_MS: i64 = 24 * 3600 * 1000;

#[derive(Debug, Clone, Copy)]
struct BatchSeq {
    first_seq: i32,
    last_seq: i32,
    base_offset: i64,
}

#[derive(Debug)]
struct ProducerEntry {
    epoch: i16,
    batches: VecDeque<BatchSeq>,
    last_seen_ms: i64,
}

/// What to do with one produced batch.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum SeqCheck {
    Append,
    /// Already stored at this base offset: acknowledge without appending.
    Duplicate {
        base_offset: i64,
    },
    Reject {
        code: i16,
        message: String,
    },
}

fn last_seq(h: &BatchHeader) -> i32 {
    // Sequences wrap from i32::MAX to 0, as Kafka's do. The offset delta,
    // not the record count: a batch the log cleaner emptied keeps its range.
    ((h.base_sequence as i64 + h.last_offset_delta as i64) % (i32::MAX as i64 + 1)) as i32
}

fn next_seq(seq: i32) -> i32 {
    if seq == i32::MAX { 0 } else { seq + 1 }
}

/// Sequence state of every producer writing to one partition.
#[derive(Debug, Default)]
pub(crate) struct PartitionProducers {
    entries: HashMap<i64, ProducerEntry>,
}

impl PartitionProducers {
    pub fn check(&self, h: &BatchHeader) -> SeqCheck {
        if h.producer_id < 0 {
            return SeqCheck::Append;
        }
        let Some(e) = self.entries.get(&h.producer_id) else {
            return SeqCheck::Append;
        };
        if h.producer_epoch < e.epoch {
            return SeqCheck::Reject {
                code: ResponseError::InvalidProducerEpoch.code(),
                message: format!(
                    "producer {} epoch {} is fenced by epoch {}",
                    h.producer_id, h.producer_epoch, e.epoch
                ),
            };
        }
        if h.producer_epoch > e.epoch {
            return if h.base_sequence == 0 {
                SeqCheck::Append
            } else {
                SeqCheck::Reject {
                    code: ResponseError::OutOfOrderSequenceNumber.code(),
                    message: format!(
                        "producer {} started epoch {} at sequence {} (must be 0)",
                        h.producer_id, h.producer_epoch, h.base_sequence
                    ),
                }
            };
        }
        let last = last_seq(h);
        if let Some(b) = e
            .batches
            .iter()
            .find(|b| b.first_seq == h.base_sequence && b.last_seq == last)
        {
            return SeqCheck::Duplicate {
                base_offset: b.base_offset,
            };
        }
        let expected = e
            .batches
            .back()
            .map_or(h.base_sequence, |b| next_seq(b.last_seq));
        if h.base_sequence != expected {
            return SeqCheck::Reject {
                code: ResponseError::OutOfOrderSequenceNumber.code(),
                message: format!(
                    "producer {} epoch {}: expected sequence {expected}, got {}",
                    h.producer_id, h.producer_epoch, h.base_sequence
                ),
            };
        }
        SeqCheck::Append
    }

    /// Records an appended batch (`base_offset` is where it was stored).
    pub fn record(&mut self, h: &BatchHeader, base_offset: i64, now_ms: i64) {
        if h.producer_id < 0 {
            return;
        }
        let e = self.entries.entry(h.producer_id).or_insert(ProducerEntry {
            epoch: h.producer_epoch,
            batches: VecDeque::with_capacity(CACHED_BATCHES),
            last_seen_ms: now_ms,
        });
        if h.producer_epoch != e.epoch {
            e.epoch = h.producer_epoch;
            e.batches.clear();
        }
        if e.batches.len() == CACHED_BATCHES {
            e.batches.pop_front();
        }
        e.batches.push_back(BatchSeq {
            first_seq: h.base_sequence,
            last_seq: last_seq(h),
            base_offset,
        });
        e.last_seen_ms = now_ms;
    }

    pub fn expire(&mut self, now_ms: i64) {
        self.entries
            .retain(|_, e| now_ms - e.last_seen_ms < PRODUCER_EXPIRY_MS);
    }

    /// Rebuilds state from the newest batches of `partition`.
    pub fn rebuild(
        partition: &Partition,
        now_ms: i64,
    ) -> sluice_log::log::Result<PartitionProducers> {
        let mut state = PartitionProducers::default();
        let bases = partition.segment_bases();
        let hw = partition.high_watermark();
        let Some(&active) = bases.last() else {
            return Ok(state);
        };
        // Start one segment earlier when the active one holds little, so a
        // restart right after a roll still knows the producers.
        let mut from = active;
        if bases.len() >= 2 {
            let active_bytes = partition
                .locate(hw - 1)
                .ok()
                .flatten()
                .map_or(0, |(_, pos)| pos);
            if active_bytes < REBUILD_SPAN_BYTES {
                from = bases[bases.len() - 2];
            }
        }
        let mut offset = from.max(partition.log_start_offset());
        let mut buf = Vec::with_capacity(1 << 20);
        while offset < hw {
            buf.clear();
            let info = partition.read_into(offset, 4 << 20, &mut buf)?;
            if info.bytes == 0 || info.next_offset <= offset {
                break;
            }
            let mut pos = 0;
            while pos < buf.len() {
                let Ok(h) = BatchHeader::parse(&buf[pos..]) else {
                    break;
                };
                if h.producer_id >= 0 && !h.is_control() {
                    state.record(&h, h.base_offset, now_ms);
                }
                pos += h.total_len();
            }
            offset = info.next_offset;
        }
        Ok(state)
    }
}

type SharedProducers = Arc<Mutex<PartitionProducers>>;

/// Per-partition producer state, created (and rebuilt from the log) the
/// first time an idempotent producer writes to the partition. Keyed by topic
/// id so a deleted and re-created topic starts clean.
#[derive(Default)]
pub(crate) struct ProducerStates {
    partitions: Mutex<HashMap<(Uuid, u32), SharedProducers>>,
}

impl ProducerStates {
    pub fn for_partition(
        &self,
        topic_id: Uuid,
        partition: &Partition,
        now_ms: i64,
    ) -> sluice_log::log::Result<SharedProducers> {
        let key = (topic_id, partition.id());
        if let Some(s) = sluice_log::common::mutex(&self.partitions).get(&key) {
            return Ok(s.clone());
        }
        // Rebuilding reads the log: do it outside the map lock. Two racing
        // rebuilds produce the same state; the first one inserted wins.
        let rebuilt = Arc::new(Mutex::new(PartitionProducers::rebuild(partition, now_ms)?));
        Ok(sluice_log::common::mutex(&self.partitions)
            .entry(key)
            .or_insert(rebuilt)
            .clone())
    }

    pub fn expire(&self, now_ms: i64) {
        let all: Vec<_> = sluice_log::common::mutex(&self.partitions)
            .values()
            .cloned()
            .collect();
        for p in all {
            sluice_log::common::mutex(&p).expire(now_ms);
        }
    }
}

/// Hands out producer ids, reserving blocks durably in `<dir>/producer-ids`.
pub(crate) struct ProducerIds {
    path: PathBuf,
    /// (next id to hand out, end of the durably reserved block)
    next: Mutex<(i64, i64)>,
}

impl ProducerIds {
    pub fn open(dir: &Path) -> Result<ProducerIds, BrokerError> {
        let path = dir.join("producer-ids");
        let state_err = |reason: String| BrokerError::State {
            path: path.clone(),
            reason,
        };
        let reserved = match fs::read_to_string(&path) {
            Ok(text) => text
                .trim()
                .strip_prefix("v1 ")
                .and_then(|n| n.parse::<i64>().ok())
                .ok_or_else(|| state_err(format!("unreadable contents {text:?}")))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => return Err(state_err(e.to_string())),
        };
        // Ids up to the reserved end may have been handed out before a crash.
        Ok(ProducerIds {
            path,
            next: Mutex::new((reserved, reserved)),
        })
    }

    pub fn allocate(&self) -> Result<i64, BrokerError> {
        let mut next = sluice_log::common::mutex(&self.next);
        if next.0 >= next.1 {
            let end = next.1 + ID_BLOCK;
            write_atomically(&self.path, format!("v1 {end}\n").as_bytes()).map_err(|e| {
                BrokerError::State {
                    path: self.path.clone(),
                    reason: format!("cannot reserve producer ids: {e}"),
                }
            })?;
            next.1 = end;
        }
        let id = next.0;
        next.0 += 1;
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(pid: i64, epoch: i16, seq: i32, count: i32) -> BatchHeader {
        BatchHeader {
            base_offset: 0,
            batch_length: 100,
            partition_leader_epoch: 0,
            magic: 2,
            crc: 0,
            attributes: 0,
            last_offset_delta: count - 1,
            base_timestamp: 0,
            max_timestamp: 0,
            producer_id: pid,
            producer_epoch: epoch,
            base_sequence: seq,
            records_count: count,
        }
    }

    #[test]
    fn sequences_dedupe_gaps_and_epochs() {
        let mut s = PartitionProducers::default();
        let b0 = header(7, 0, 0, 10);
        assert_eq!(s.check(&b0), SeqCheck::Append);
        s.record(&b0, 100, 0);
        // A retry of the same batch is a duplicate with its original offset.
        assert_eq!(s.check(&b0), SeqCheck::Duplicate { base_offset: 100 });
        let b1 = header(7, 0, 10, 5);
        assert_eq!(s.check(&b1), SeqCheck::Append);
        s.record(&b1, 110, 0);
        // A gap is refused.
        assert!(
            matches!(s.check(&header(7, 0, 16, 1)), SeqCheck::Reject { code, .. } if code == ResponseError::OutOfOrderSequenceNumber.code())
        );
        // An older epoch is fenced; a newer one must start at 0.
        assert!(
            matches!(s.check(&header(7, -1, 15, 1)), SeqCheck::Reject { code, .. } if code == ResponseError::InvalidProducerEpoch.code())
        );
        assert!(matches!(
            s.check(&header(7, 1, 15, 1)),
            SeqCheck::Reject { .. }
        ));
        assert_eq!(s.check(&header(7, 1, 0, 1)), SeqCheck::Append);
        // Unknown producers and non-idempotent batches go through.
        assert_eq!(s.check(&header(8, 0, 500, 1)), SeqCheck::Append);
        assert_eq!(s.check(&header(-1, -1, -1, 1)), SeqCheck::Append);
        // Only the last five batches are remembered.
        for i in 0..6 {
            let h = header(7, 0, 15 + i, 1);
            assert_eq!(s.check(&h), SeqCheck::Append);
            s.record(&h, 115 + i as i64, 0);
        }
        assert!(matches!(s.check(&b1), SeqCheck::Reject { .. }));
        assert_eq!(
            s.check(&header(7, 0, 20, 1)),
            SeqCheck::Duplicate { base_offset: 120 }
        );
        s.expire(PRODUCER_EXPIRY_MS + 1);
        assert_eq!(s.check(&header(7, 0, 999, 1)), SeqCheck::Append);
    }

    #[test]
    fn sequence_wraps_at_i32_max() {
        let mut s = PartitionProducers::default();
        let h = header(1, 0, i32::MAX - 1, 2);
        s.record(&h, 0, 0);
        assert_eq!(s.check(&header(1, 0, 0, 1)), SeqCheck::Append);
    }

    #[test]
    fn producer_ids_are_never_reused_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let ids = ProducerIds::open(dir.path()).unwrap();
        let a = ids.allocate().unwrap();
        let b = ids.allocate().unwrap();
        assert_eq!(b, a + 1);
        drop(ids);
        let ids = ProducerIds::open(dir.path()).unwrap();
        assert!(ids.allocate().unwrap() >= ID_BLOCK);
    }
}
