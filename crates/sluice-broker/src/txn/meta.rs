//! One transactional id's state, as Kafka's `TransactionMetadata` keeps it,
//! and its encoding as a record of the transaction log.
//!
//! Owns the state machine's names and the record layout; never touches a
//! file or a partition. Each record is a whole snapshot of one id's state,
//! so replaying the log is "the last record per id wins" and compaction is
//! one record per live id.
//!
//! ```text
//! payload := 1 txn_id:str producer_id:i64 epoch:i16 timeout_ms:i32 state:u8
//!              start_ms:i64 update_ms:i64
//!              partitions:u32 (topic:str partition:i32)*
//!              groups:u32 (group:str offsets:u32 (topic:str partition:i32 offset:i64 leader_epoch:i32 metadata:str)*)*
//!          | 2 txn_id:str                                -- forgotten (expired id)
//! str     := len u32 LE | UTF-8 bytes
//! ```

use std::collections::{BTreeMap, BTreeSet};

use crate::journal::{Reader, put_str};

const KIND_STATE: u8 = 1;
const KIND_FORGET: u8 = 2;

/// Kafka's transaction states (`TransactionState`), minus the ones only a
/// multi-broker coordinator needs (Dead, PrepareEpochFence).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TxnState {
    /// Has a producer id; no transaction begun since.
    Empty,
    /// Partitions or a group were added: a transaction is open.
    Ongoing,
    /// EndTxn(commit) is durable; markers are being written.
    PrepareCommit,
    /// EndTxn(abort) (or a timeout, or a fencing) is durable; markers are
    /// being written.
    PrepareAbort,
    CompleteCommit,
    CompleteAbort,
}

impl TxnState {
    fn code(self) -> u8 {
        match self {
            TxnState::Empty => 0,
            TxnState::Ongoing => 1,
            TxnState::PrepareCommit => 2,
            TxnState::PrepareAbort => 3,
            TxnState::CompleteCommit => 4,
            TxnState::CompleteAbort => 5,
        }
    }

    fn from_code(code: u8) -> Result<TxnState, String> {
        Ok(match code {
            0 => TxnState::Empty,
            1 => TxnState::Ongoing,
            2 => TxnState::PrepareCommit,
            3 => TxnState::PrepareAbort,
            4 => TxnState::CompleteCommit,
            5 => TxnState::CompleteAbort,
            other => return Err(format!("unknown transaction state {other}")),
        })
    }

    /// The name DescribeTransactions and ListTransactions use (Kafka's).
    pub fn name(self) -> &'static str {
        match self {
            TxnState::Empty => "Empty",
            TxnState::Ongoing => "Ongoing",
            TxnState::PrepareCommit => "PrepareCommit",
            TxnState::PrepareAbort => "PrepareAbort",
            TxnState::CompleteCommit => "CompleteCommit",
            TxnState::CompleteAbort => "CompleteAbort",
        }
    }

    pub fn from_name(name: &str) -> Option<TxnState> {
        [
            TxnState::Empty,
            TxnState::Ongoing,
            TxnState::PrepareCommit,
            TxnState::PrepareAbort,
            TxnState::CompleteCommit,
            TxnState::CompleteAbort,
        ]
        .into_iter()
        .find(|s| s.name() == name)
    }

    pub fn is_prepared(self) -> bool {
        matches!(self, TxnState::PrepareCommit | TxnState::PrepareAbort)
    }
}

/// An offset committed inside a transaction (TxnOffsetCommit): invisible
/// until the transaction commits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PendingOffset {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
}

/// Pending offsets of one group: (topic, partition) → offset.
pub(crate) type GroupOffsets = BTreeMap<(String, i32), PendingOffset>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TxnMeta {
    pub transactional_id: String,
    pub producer_id: i64,
    pub epoch: i16,
    pub timeout_ms: i32,
    pub state: TxnState,
    /// Wall clock when the open transaction began (its first add), -1 if none.
    pub start_ms: i64,
    pub update_ms: i64,
    /// Partitions the open transaction writes to.
    pub partitions: BTreeSet<(String, i32)>,
    /// Groups added with AddOffsetsToTxn, with the offsets committed so far.
    pub groups: BTreeMap<String, GroupOffsets>,
}

impl TxnMeta {
    pub fn new(transactional_id: String, producer_id: i64, timeout_ms: i32, now_ms: i64) -> Self {
        TxnMeta {
            transactional_id,
            producer_id,
            epoch: 0,
            timeout_ms,
            state: TxnState::Empty,
            start_ms: -1,
            update_ms: now_ms,
            partitions: BTreeSet::new(),
            groups: BTreeMap::new(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut buf = Vec::with_capacity(64 + self.partitions.len() * 24);
        buf.push(KIND_STATE);
        put_str(&mut buf, &self.transactional_id);
        buf.extend_from_slice(&self.producer_id.to_le_bytes());
        buf.extend_from_slice(&self.epoch.to_le_bytes());
        buf.extend_from_slice(&self.timeout_ms.to_le_bytes());
        buf.push(self.state.code());
        buf.extend_from_slice(&self.start_ms.to_le_bytes());
        buf.extend_from_slice(&self.update_ms.to_le_bytes());
        buf.extend_from_slice(&(self.partitions.len() as u32).to_le_bytes());
        for (topic, partition) in &self.partitions {
            put_str(&mut buf, topic);
            buf.extend_from_slice(&partition.to_le_bytes());
        }
        buf.extend_from_slice(&(self.groups.len() as u32).to_le_bytes());
        for (group, offsets) in &self.groups {
            put_str(&mut buf, group);
            buf.extend_from_slice(&(offsets.len() as u32).to_le_bytes());
            for ((topic, partition), o) in offsets {
                put_str(&mut buf, topic);
                buf.extend_from_slice(&partition.to_le_bytes());
                buf.extend_from_slice(&o.offset.to_le_bytes());
                buf.extend_from_slice(&o.leader_epoch.to_le_bytes());
                put_str(&mut buf, &o.metadata);
            }
        }
        buf
    }
}

pub(crate) fn encode_forget(transactional_id: &str) -> Vec<u8> {
    let mut buf = vec![KIND_FORGET];
    put_str(&mut buf, transactional_id);
    buf
}

/// A decoded transaction-log record.
#[derive(Debug)]
pub(crate) enum TxnRecord {
    State(TxnMeta),
    Forget(String),
}

pub(crate) fn decode(payload: &[u8]) -> Result<TxnRecord, String> {
    let mut r = Reader::new(payload);
    let record = match r.u8()? {
        KIND_STATE => {
            let transactional_id = r.string()?;
            let producer_id = r.i64()?;
            let epoch = r.i16()?;
            let timeout_ms = r.i32()?;
            let state = TxnState::from_code(r.u8()?)?;
            let start_ms = r.i64()?;
            let update_ms = r.i64()?;
            let count = r.u32()? as usize;
            let mut partitions = BTreeSet::new();
            for _ in 0..count.min(r.remaining()) {
                let topic = r.string()?;
                partitions.insert((topic, r.i32()?));
            }
            let count = r.u32()? as usize;
            let mut groups = BTreeMap::new();
            for _ in 0..count.min(r.remaining()) {
                let group = r.string()?;
                let n = r.u32()? as usize;
                let mut offsets = GroupOffsets::new();
                for _ in 0..n.min(r.remaining()) {
                    let topic = r.string()?;
                    let partition = r.i32()?;
                    let offset = r.i64()?;
                    let leader_epoch = r.i32()?;
                    let metadata = r.string()?;
                    offsets.insert(
                        (topic, partition),
                        PendingOffset {
                            offset,
                            leader_epoch,
                            metadata,
                        },
                    );
                }
                groups.insert(group, offsets);
            }
            TxnRecord::State(TxnMeta {
                transactional_id,
                producer_id,
                epoch,
                timeout_ms,
                state,
                start_ms,
                update_ms,
                partitions,
                groups,
            })
        }
        KIND_FORGET => TxnRecord::Forget(r.string()?),
        other => return Err(format!("unknown record kind {other}")),
    };
    r.finish()?;
    Ok(record)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let mut m = TxnMeta::new("tx-1".into(), 42, 60_000, 1_000);
        m.epoch = 7;
        m.state = TxnState::PrepareCommit;
        m.start_ms = 900;
        m.partitions.insert(("out".into(), 3));
        m.partitions.insert(("out".into(), 0));
        m.groups.entry("g".into()).or_default().insert(
            ("in".into(), 1),
            PendingOffset {
                offset: 17,
                leader_epoch: -1,
                metadata: "batch=5".into(),
            },
        );
        match decode(&m.encode()) {
            Ok(TxnRecord::State(back)) => assert_eq!(back, m),
            _ => panic!("state record did not decode"),
        }
        match decode(&encode_forget("tx-1")) {
            Ok(TxnRecord::Forget(id)) => assert_eq!(id, "tx-1"),
            _ => panic!("forget record did not decode"),
        }
        let mut bad = m.encode();
        bad.push(0);
        assert!(decode(&bad).is_err());
        assert!(decode(&[9]).unwrap_err().contains("unknown record kind 9"));
    }
}
