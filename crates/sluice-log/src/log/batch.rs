//! Kafka RecordBatch v2 framing: the header fields the log store needs, the
//! CRC check, and the base-offset rewrite.
//!
//! This module owns the byte layout of one batch as it travels on the wire and
//! as it lies in a segment file. It never decodes or decompresses records: the
//! store keeps batches exactly as producers sent them so that a fetch can be
//! answered by copying byte ranges.
//!
//! ```text
//! offset  size  field                  covered by CRC
//!      0     8  base offset            no   (rewritten by the store on append)
//!      8     4  batch length           no   (bytes after this field)
//!     12     4  partition leader epoch no
//!     16     1  magic (= 2)            no
//!     17     4  CRC-32C                -    (over bytes 21..end)
//!     21     2  attributes             yes  (bits 0-2 codec, 3 ts type, 4 txn, 5 control)
//!     23     4  last offset delta      yes
//!     27     8  base timestamp         yes
//!     35     8  max timestamp          yes
//!     43     8  producer id            yes
//!     51     2  producer epoch         yes
//!     53     4  base sequence          yes
//!     57     4  records count          yes
//!     61     …  records (possibly compressed)
//! ```

use std::fmt;

/// Size of the fixed RecordBatch v2 header.
pub const HEADER_LEN: usize = 61;
/// Bytes before the `batch length` field's payload: base offset + length.
pub const LOG_OVERHEAD: usize = 12;
/// The only record-batch format the store accepts.
pub const MAGIC_V2: i8 = 2;

const BASE_OFFSET: usize = 0;
const BATCH_LENGTH: usize = 8;
const LEADER_EPOCH: usize = 12;
const MAGIC: usize = 16;
const CRC: usize = 17;
const ATTRIBUTES: usize = 21;
const LAST_OFFSET_DELTA: usize = 23;
const BASE_TIMESTAMP: usize = 27;
const MAX_TIMESTAMP: usize = 35;
const PRODUCER_ID: usize = 43;
const PRODUCER_EPOCH: usize = 51;
const BASE_SEQUENCE: usize = 53;
const RECORDS_COUNT: usize = 57;

/// Why a byte range is not a valid RecordBatch v2.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("truncated batch: {needed} bytes needed, {available} available")]
    Truncated { needed: usize, available: usize },
    #[error("batch length {0} is smaller than the 49-byte v2 header remainder")]
    BadLength(i32),
    #[error("unsupported record batch magic {0} (only v2 record batches are accepted)")]
    BadMagic(i8),
    #[error("CRC-32C mismatch: batch says {stored:#010x}, bytes give {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error("batch claims {count} records with last offset delta {last_offset_delta}")]
    BadRecordCount { count: i32, last_offset_delta: i32 },
    #[error("unknown compression codec {0} in batch attributes")]
    BadCompression(u8),
    #[error("batch of {size} bytes exceeds max.message.bytes = {max}")]
    TooLarge { size: usize, max: usize },
    #[error(
        "control batch (a transaction marker of producer {0}): markers are written by the transaction coordinator, never produced"
    )]
    ControlBatch(i64),
    #[error(
        "the record at offset delta {offset_delta} has no key: a compacted topic (cleanup.policy=compact) keeps the last record per key, so every record needs one"
    )]
    KeylessRecord { offset_delta: i32 },
    #[error("cannot read the records of the batch: {0}")]
    BadRecords(String),
}

/// The compression codec named by a batch's attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Codec::None => "none",
            Codec::Gzip => "gzip",
            Codec::Snappy => "snappy",
            Codec::Lz4 => "lz4",
            Codec::Zstd => "zstd",
        })
    }
}

/// The fixed header of one RecordBatch v2, parsed without touching records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub records_count: i32,
}

fn be_i64(b: &[u8], at: usize) -> i64 {
    i64::from_be_bytes(b[at..at + 8].try_into().expect("8-byte slice"))
}
fn be_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes(b[at..at + 4].try_into().expect("4-byte slice"))
}
fn be_i16(b: &[u8], at: usize) -> i16 {
    i16::from_be_bytes(b[at..at + 2].try_into().expect("2-byte slice"))
}

/// Reads the base offset and total length (including the 12-byte overhead)
/// from the first [`LOG_OVERHEAD`] bytes of a batch. This is all a reader
/// needs to walk from one batch to the next.
pub fn peek_frame(buf: &[u8]) -> Result<(i64, usize), BatchError> {
    if buf.len() < LOG_OVERHEAD {
        return Err(BatchError::Truncated {
            needed: LOG_OVERHEAD,
            available: buf.len(),
        });
    }
    let length = be_i32(buf, BATCH_LENGTH);
    if length < (HEADER_LEN - LOG_OVERHEAD) as i32 {
        return Err(BatchError::BadLength(length));
    }
    Ok((be_i64(buf, BASE_OFFSET), LOG_OVERHEAD + length as usize))
}

impl BatchHeader {
    /// Parses the header at the start of `buf`. `buf` may hold more than one
    /// batch; only the first [`HEADER_LEN`] bytes are read.
    pub fn parse(buf: &[u8]) -> Result<Self, BatchError> {
        let (_, _) = peek_frame(buf)?;
        if buf.len() < HEADER_LEN {
            return Err(BatchError::Truncated {
                needed: HEADER_LEN,
                available: buf.len(),
            });
        }
        let magic = buf[MAGIC] as i8;
        if magic != MAGIC_V2 {
            return Err(BatchError::BadMagic(magic));
        }
        Ok(BatchHeader {
            base_offset: be_i64(buf, BASE_OFFSET),
            batch_length: be_i32(buf, BATCH_LENGTH),
            partition_leader_epoch: be_i32(buf, LEADER_EPOCH),
            magic,
            crc: u32::from_be_bytes(buf[CRC..CRC + 4].try_into().expect("4-byte slice")),
            attributes: be_i16(buf, ATTRIBUTES),
            last_offset_delta: be_i32(buf, LAST_OFFSET_DELTA),
            base_timestamp: be_i64(buf, BASE_TIMESTAMP),
            max_timestamp: be_i64(buf, MAX_TIMESTAMP),
            producer_id: be_i64(buf, PRODUCER_ID),
            producer_epoch: be_i16(buf, PRODUCER_EPOCH),
            base_sequence: be_i32(buf, BASE_SEQUENCE),
            records_count: be_i32(buf, RECORDS_COUNT),
        })
    }

    /// Total bytes of this batch, including the 12-byte offset+length prefix.
    pub fn total_len(&self) -> usize {
        LOG_OVERHEAD + self.batch_length as usize
    }

    /// Offset of the last record in the batch.
    pub fn last_offset(&self) -> i64 {
        self.base_offset + self.last_offset_delta as i64
    }

    /// Number of offsets the batch occupies in the log.
    pub fn offset_count(&self) -> i64 {
        self.last_offset_delta as i64 + 1
    }

    pub fn codec(&self) -> Result<Codec, BatchError> {
        match (self.attributes & 0x7) as u8 {
            0 => Ok(Codec::None),
            1 => Ok(Codec::Gzip),
            2 => Ok(Codec::Snappy),
            3 => Ok(Codec::Lz4),
            4 => Ok(Codec::Zstd),
            other => Err(BatchError::BadCompression(other)),
        }
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes & (1 << 4) != 0
    }

    pub fn is_control(&self) -> bool {
        self.attributes & (1 << 5) != 0
    }

    /// True when the batch carries LogAppendTime rather than CreateTime.
    pub fn is_log_append_time(&self) -> bool {
        self.attributes & (1 << 3) != 0
    }
}

/// Computes the CRC-32C Kafka stores in a batch: over attributes to the end.
pub fn compute_crc(batch: &[u8]) -> u32 {
    crc32c::crc32c(&batch[ATTRIBUTES..])
}

/// Checks a whole batch (exactly one, `batch.len() == header.total_len()`).
pub fn verify_crc(header: &BatchHeader, batch: &[u8]) -> Result<(), BatchError> {
    let computed = compute_crc(batch);
    if computed != header.crc {
        return Err(BatchError::CrcMismatch {
            stored: header.crc,
            computed,
        });
    }
    Ok(())
}

/// Overwrites the base offset. The field lies outside the CRC, so the batch
/// stays valid and nothing else needs re-encoding.
pub fn set_base_offset(batch: &mut [u8], base_offset: i64) {
    batch[BASE_OFFSET..BASE_OFFSET + 8].copy_from_slice(&base_offset.to_be_bytes());
}

/// Sets the fields a rebuilt batch (see `records::rebuild`) changes:
/// batch length, attributes and record count, then recomputes the CRC.
pub(crate) fn set_rebuilt_fields(batch: &mut [u8], length: i32, attributes: i16, count: i32) {
    batch[BATCH_LENGTH..BATCH_LENGTH + 4].copy_from_slice(&length.to_be_bytes());
    batch[ATTRIBUTES..ATTRIBUTES + 2].copy_from_slice(&attributes.to_be_bytes());
    batch[RECORDS_COUNT..RECORDS_COUNT + 4].copy_from_slice(&count.to_be_bytes());
    let crc = compute_crc(batch);
    batch[CRC..CRC + 4].copy_from_slice(&crc.to_be_bytes());
}

/// A batch accepted for append: where it lies in the caller's buffer and its
/// parsed header.
#[derive(Debug, Clone, Copy)]
pub struct ValidBatch {
    pub start: usize,
    pub header: BatchHeader,
}

/// Validates a producer's records blob (one or more whole batches) before
/// anything is appended: framing, magic, CRC, record count, codec and size.
/// Returns the batches in order; any failure rejects the whole blob.
pub fn validate_for_append(
    buf: &[u8],
    max_batch_bytes: usize,
    out: &mut Vec<ValidBatch>,
) -> Result<(), BatchError> {
    out.clear();
    let mut pos = 0;
    while pos < buf.len() {
        let rest = &buf[pos..];
        let header = BatchHeader::parse(rest)?;
        let len = header.total_len();
        if len > max_batch_bytes {
            return Err(BatchError::TooLarge {
                size: len,
                max: max_batch_bytes,
            });
        }
        if rest.len() < len {
            return Err(BatchError::Truncated {
                needed: len,
                available: rest.len(),
            });
        }
        if header.records_count <= 0
            || header.last_offset_delta < 0
            || header.records_count - 1 != header.last_offset_delta
        {
            return Err(BatchError::BadRecordCount {
                count: header.records_count,
                last_offset_delta: header.last_offset_delta,
            });
        }
        header.codec()?;
        verify_crc(&header, &rest[..len])?;
        out.push(ValidBatch { start: pos, header });
        pos += len;
    }
    if out.is_empty() {
        return Err(BatchError::Truncated {
            needed: HEADER_LEN,
            available: 0,
        });
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a structurally valid, uncompressed batch whose "records" are
    /// opaque bytes: enough for framing tests without a record codec.
    pub(crate) fn raw_batch(count: i32, base_ts: i64, max_ts: i64, payload: &[u8]) -> Vec<u8> {
        let mut b = vec![0u8; HEADER_LEN];
        b.extend_from_slice(payload);
        let len = (b.len() - LOG_OVERHEAD) as i32;
        b[BATCH_LENGTH..BATCH_LENGTH + 4].copy_from_slice(&len.to_be_bytes());
        b[LEADER_EPOCH..LEADER_EPOCH + 4].copy_from_slice(&(-1i32).to_be_bytes());
        b[MAGIC] = 2;
        b[LAST_OFFSET_DELTA..LAST_OFFSET_DELTA + 4].copy_from_slice(&(count - 1).to_be_bytes());
        b[BASE_TIMESTAMP..BASE_TIMESTAMP + 8].copy_from_slice(&base_ts.to_be_bytes());
        b[MAX_TIMESTAMP..MAX_TIMESTAMP + 8].copy_from_slice(&max_ts.to_be_bytes());
        b[PRODUCER_ID..PRODUCER_ID + 8].copy_from_slice(&(-1i64).to_be_bytes());
        b[PRODUCER_EPOCH..PRODUCER_EPOCH + 2].copy_from_slice(&(-1i16).to_be_bytes());
        b[BASE_SEQUENCE..BASE_SEQUENCE + 4].copy_from_slice(&(-1i32).to_be_bytes());
        b[RECORDS_COUNT..RECORDS_COUNT + 4].copy_from_slice(&count.to_be_bytes());
        let crc = compute_crc(&b);
        b[CRC..CRC + 4].copy_from_slice(&crc.to_be_bytes());
        b
    }

    #[test]
    fn parses_and_validates_a_batch() {
        let b = raw_batch(3, 10, 12, b"abc");
        let h = BatchHeader::parse(&b).unwrap();
        assert_eq!(h.records_count, 3);
        assert_eq!(h.total_len(), b.len());
        assert_eq!(h.max_timestamp, 12);
        let mut out = Vec::new();
        validate_for_append(&b, 1 << 20, &mut out).unwrap();
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn rewriting_the_base_offset_keeps_the_crc_valid() {
        let mut b = raw_batch(2, 0, 0, b"xy");
        set_base_offset(&mut b, 4242);
        let h = BatchHeader::parse(&b).unwrap();
        assert_eq!(h.base_offset, 4242);
        assert_eq!(h.last_offset(), 4243);
        verify_crc(&h, &b).unwrap();
    }

    #[test]
    fn rejects_corruption_truncation_and_bad_counts() {
        let mut out = Vec::new();
        let mut b = raw_batch(1, 0, 0, b"payload");
        let last = b.len() - 1;
        b[last] ^= 0xff;
        assert!(matches!(
            validate_for_append(&b, 1 << 20, &mut out),
            Err(BatchError::CrcMismatch { .. })
        ));
        let b = raw_batch(1, 0, 0, b"payload");
        assert!(matches!(
            validate_for_append(&b[..b.len() - 1], 1 << 20, &mut out),
            Err(BatchError::Truncated { .. })
        ));
        assert!(matches!(
            validate_for_append(&b, 10, &mut out),
            Err(BatchError::TooLarge { .. })
        ));
        let mut b = raw_batch(2, 0, 0, b"");
        b[RECORDS_COUNT..RECORDS_COUNT + 4].copy_from_slice(&5i32.to_be_bytes());
        let crc = compute_crc(&b);
        b[CRC..CRC + 4].copy_from_slice(&crc.to_be_bytes());
        assert!(matches!(
            validate_for_append(&b, 1 << 20, &mut out),
            Err(BatchError::BadRecordCount { .. })
        ));
        let mut b = raw_batch(1, 0, 0, b"");
        b[MAGIC] = 1;
        assert_eq!(BatchHeader::parse(&b), Err(BatchError::BadMagic(1)));
        assert!(validate_for_append(&[], 1 << 20, &mut out).is_err());
    }

    #[test]
    fn validates_several_batches_in_one_blob() {
        let mut blob = raw_batch(2, 0, 1, b"ab");
        blob.extend(raw_batch(5, 2, 9, b"cdefg"));
        let mut out = Vec::new();
        validate_for_append(&blob, 1 << 20, &mut out).unwrap();
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].start, HEADER_LEN + 2);
        assert_eq!(out[1].header.records_count, 5);
    }
}
