//! Kafka transactions as the log sees them (KIP-98): control batches
//! (COMMIT/ABORT markers), each partition's open transactions and last
//! stable offset, the aborted-transaction index, and the read_committed
//! filter a reader of raw batches applies.
//!
//! Owns the marker format (Kafka's, so any client or tool reading the log
//! understands it), the `.txnindex` entry layout (Kafka's: version i16,
//! producer id i64, first offset i64, last offset i64, last stable offset
//! i64, big-endian, 34 bytes) and the `txn-snapshot` file. Never decides
//! when a transaction ends: the broker's transaction coordinator appends
//! the markers; this module only follows them.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs;
use std::path::Path;

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

use super::batch::{BatchHeader, Codec, HEADER_LEN};

/// What a control batch says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlType {
    Abort,
    Commit,
}

impl ControlType {
    fn code(self) -> i16 {
        match self {
            ControlType::Abort => 0,
            ControlType::Commit => 1,
        }
    }
}

/// An aborted transaction of one producer in one partition: its records
/// lie in `first_offset..last_offset`, the ABORT marker at `last_offset`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AbortedTxn {
    pub producer_id: i64,
    pub first_offset: i64,
    pub last_offset: i64,
}

/// Size of one `.txnindex` entry.
pub(crate) const TXN_INDEX_ENTRY: usize = 34;

impl AbortedTxn {
    pub(crate) fn encode(&self, last_stable_offset: i64, out: &mut Vec<u8>) {
        out.extend_from_slice(&0i16.to_be_bytes());
        out.extend_from_slice(&self.producer_id.to_be_bytes());
        out.extend_from_slice(&self.first_offset.to_be_bytes());
        out.extend_from_slice(&self.last_offset.to_be_bytes());
        out.extend_from_slice(&last_stable_offset.to_be_bytes());
    }

    /// Entries of a `.txnindex` file; a torn last entry is ignored (the
    /// recovery scan rebuilds what the file lacks).
    pub(crate) fn decode_all(bytes: &[u8]) -> Vec<AbortedTxn> {
        let be = |b: &[u8]| i64::from_be_bytes(b.try_into().unwrap_or([0; 8]));
        bytes
            .chunks_exact(TXN_INDEX_ENTRY)
            .filter(|e| e[..2] == [0, 0])
            .map(|e| AbortedTxn {
                producer_id: be(&e[2..10]),
                first_offset: be(&e[10..18]),
                last_offset: be(&e[18..26]),
            })
            .collect()
    }
}

/// One control batch with base offset 0: magic 2, uncompressed,
/// transactional and control, base sequence -1, one record whose key is
/// (version 0, type) and value (version 0, coordinator epoch).
pub fn encode_control_batch(
    producer_id: i64,
    producer_epoch: i16,
    control: ControlType,
    coordinator_epoch: i32,
    timestamp_ms: i64,
) -> Vec<u8> {
    let mut key = Vec::with_capacity(4);
    key.extend_from_slice(&0i16.to_be_bytes());
    key.extend_from_slice(&control.code().to_be_bytes());
    let mut value = Vec::with_capacity(6);
    value.extend_from_slice(&0i16.to_be_bytes());
    value.extend_from_slice(&coordinator_epoch.to_be_bytes());
    let record = Record {
        transactional: true,
        control: true,
        delete_horizon: false,
        partition_leader_epoch: -1,
        producer_id,
        producer_epoch,
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence: -1,
        timestamp: timestamp_ms,
        key: Some(Bytes::from(key)),
        value: Some(Bytes::from(value)),
        headers: Default::default(),
    };
    let mut buf = BytesMut::with_capacity(HEADER_LEN + 32);
    RecordBatchEncoder::encode(
        &mut buf,
        [&record],
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    // Encoding one uncompressed record into memory cannot fail.
    .expect("a control record always encodes");
    buf.to_vec()
}

/// Reads an unsigned varint (zig-zag decoded, as Kafka's record fields).
fn varint(buf: &[u8], pos: &mut usize) -> Option<i64> {
    let mut value: u64 = 0;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos)?;
        *pos += 1;
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(((value >> 1) as i64) ^ -((value & 1) as i64));
        }
    }
    None
}

/// The type of a control batch (whole batch bytes), read from its one
/// uncompressed record's key (version 0, as Kafka writes it); `None` if it
/// is not a well-formed one.
pub fn control_type(batch: &[u8]) -> Option<ControlType> {
    let header = BatchHeader::parse(batch).ok()?;
    if !header.is_control()
        || header.records_count < 1
        || batch.len() < header.total_len()
        || !matches!(header.codec(), Ok(Codec::None))
    {
        return None;
    }
    let records = &batch[HEADER_LEN..header.total_len()];
    let mut pos = 0;
    let _length = varint(records, &mut pos)?;
    pos += 1; // attributes
    let _timestamp_delta = varint(records, &mut pos)?;
    let _offset_delta = varint(records, &mut pos)?;
    let key_len = varint(records, &mut pos)?;
    if key_len < 4 {
        return None;
    }
    let key = records.get(pos..pos + 4)?;
    if i16::from_be_bytes([key[0], key[1]]) != 0 {
        return None;
    }
    match i16::from_be_bytes([key[2], key[3]]) {
        0 => Some(ControlType::Abort),
        1 => Some(ControlType::Commit),
        _ => None,
    }
}

/// A partition's open transactions: producer id → first offset.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct OngoingTxns {
    by_producer: HashMap<i64, i64>,
}

impl OngoingTxns {
    /// Follows one appended batch at `base_offset`; returns the aborted
    /// transaction an ABORT marker ended.
    pub fn on_batch(
        &mut self,
        header: &BatchHeader,
        batch: &[u8],
        base_offset: i64,
    ) -> Option<AbortedTxn> {
        if !header.is_transactional() {
            return None;
        }
        if !header.is_control() {
            self.by_producer
                .entry(header.producer_id)
                .or_insert(base_offset);
            return None;
        }
        let first = self.by_producer.remove(&header.producer_id)?;
        (control_type(batch) == Some(ControlType::Abort)).then_some(AbortedTxn {
            producer_id: header.producer_id,
            first_offset: first,
            last_offset: base_offset,
        })
    }

    pub fn contains(&self, producer_id: i64) -> bool {
        self.by_producer.contains_key(&producer_id)
    }

    /// First offset of the oldest open transaction.
    pub fn first_offset(&self) -> Option<i64> {
        self.by_producer.values().min().copied()
    }

    /// (producer id, first offset), oldest first.
    pub fn list(&self) -> Vec<(i64, i64)> {
        let mut v: Vec<(i64, i64)> = self.by_producer.iter().map(|(p, f)| (*p, *f)).collect();
        v.sort_by_key(|(p, f)| (*f, *p));
        v
    }
}

/// `txn-snapshot`: the open transactions when every offset below `offset`
/// was on disk. Format: `v1 <offset>` then one `<producer id> <first offset>`
/// per line.
pub(crate) const SNAPSHOT: &str = "txn-snapshot";

pub(crate) fn encode_snapshot(offset: i64, ongoing: &OngoingTxns) -> Vec<u8> {
    let mut text = format!("v1 {offset}\n");
    for (pid, first) in ongoing.list() {
        text.push_str(&format!("{pid} {first}\n"));
    }
    text.into_bytes()
}

/// The snapshot in `dir`, if there is a readable one.
pub(crate) fn read_snapshot(dir: &Path) -> Option<(i64, OngoingTxns)> {
    let text = fs::read_to_string(dir.join(SNAPSHOT)).ok()?;
    let mut lines = text.lines();
    let offset = lines.next()?.strip_prefix("v1 ")?.trim().parse().ok()?;
    let mut ongoing = OngoingTxns::default();
    for line in lines {
        let (pid, first) = line.split_once(' ')?;
        ongoing
            .by_producer
            .insert(pid.parse().ok()?, first.parse().ok()?);
    }
    Some((offset, ongoing))
}

/// Kafka consumers' read_committed filtering over raw batches: given the
/// aborted transactions of a fetched range, it says which batches are
/// delivered. Control batches never are; a transactional batch is not when
/// its producer has an aborted transaction that began at or before it and
/// whose ABORT marker has not been passed yet.
#[derive(Debug, Default)]
pub struct CommittedFilter {
    /// Not yet started aborted transactions, by first offset.
    pending: BTreeMap<(i64, i64), AbortedTxn>,
    aborting: HashSet<i64>,
}

impl CommittedFilter {
    pub fn new(aborted: Vec<AbortedTxn>) -> CommittedFilter {
        CommittedFilter {
            pending: aborted
                .into_iter()
                .map(|a| ((a.first_offset, a.producer_id), a))
                .collect(),
            aborting: HashSet::new(),
        }
    }

    /// Whether `batch` (its whole bytes, `header` parsed from them) is
    /// delivered; feed batches in offset order.
    pub fn keep(&mut self, header: &BatchHeader, batch: &[u8]) -> bool {
        while let Some((&(first, pid), _)) = self.pending.first_key_value() {
            if first > header.last_offset() {
                break;
            }
            self.pending.remove(&(first, pid));
            self.aborting.insert(pid);
        }
        if header.is_control() {
            if control_type(batch) == Some(ControlType::Abort) {
                self.aborting.remove(&header.producer_id);
            }
            return false;
        }
        !(header.is_transactional() && self.aborting.contains(&header.producer_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_batches_round_trip_their_type() {
        for t in [ControlType::Abort, ControlType::Commit] {
            let b = encode_control_batch(42, 3, t, 0, 1_700_000_000_000);
            let h = BatchHeader::parse(&b).expect("parses");
            assert!(h.is_control() && h.is_transactional());
            assert_eq!(
                (h.producer_id, h.producer_epoch, h.base_sequence),
                (42, 3, -1)
            );
            assert_eq!(control_type(&b), Some(t));
        }
        let plain = super::super::batch::tests::raw_batch(1, 0, 0, b"x");
        assert_eq!(control_type(&plain), None);
        // A key version this code does not know is not read as a type.
        let mut b = encode_control_batch(42, 3, ControlType::Commit, 0, 0).to_vec();
        let records = &b[HEADER_LEN..];
        let mut pos = 0;
        varint(records, &mut pos).expect("record length");
        pos += 1; // attributes
        varint(records, &mut pos).expect("timestamp delta");
        varint(records, &mut pos).expect("offset delta");
        let key_len = varint(records, &mut pos).expect("key length");
        assert_eq!(key_len, 4);
        b[HEADER_LEN + pos + 1] = 1;
        assert_eq!(control_type(&b), None);
    }

    #[test]
    fn index_entries_and_snapshots_round_trip() {
        let a = AbortedTxn {
            producer_id: 7,
            first_offset: 10,
            last_offset: 20,
        };
        let mut bytes = Vec::new();
        a.encode(15, &mut bytes);
        assert_eq!(bytes.len(), TXN_INDEX_ENTRY);
        bytes.extend_from_slice(&[0, 0, 1]); // a torn entry
        assert_eq!(AbortedTxn::decode_all(&bytes), vec![a]);

        let dir = tempfile::tempdir().expect("tempdir");
        let mut o = OngoingTxns::default();
        let h = |pid: i64| BatchHeader {
            base_offset: 0,
            batch_length: 49,
            partition_leader_epoch: -1,
            magic: 2,
            crc: 0,
            attributes: 1 << 4,
            last_offset_delta: 0,
            base_timestamp: 0,
            max_timestamp: 0,
            producer_id: pid,
            producer_epoch: 0,
            base_sequence: 0,
            records_count: 1,
        };
        assert_eq!(o.on_batch(&h(5), &[], 30), None);
        assert_eq!(o.on_batch(&h(5), &[], 31), None);
        assert_eq!(o.on_batch(&h(9), &[], 32), None);
        fs::write(dir.path().join(SNAPSHOT), encode_snapshot(40, &o)).expect("write");
        let (offset, back) = read_snapshot(dir.path()).expect("readable");
        assert_eq!(offset, 40);
        assert_eq!(back.list(), vec![(5, 30), (9, 32)]);
        assert_eq!(back.first_offset(), Some(30));
    }
}
