//! Kafka RecordBatch v2 bytes → Arrow columns, without a copy per record.
//!
//! A task reads whole batches of its partition into one buffer (a
//! "block"). For uncompressed batches the key and value columns are Arrow
//! *views* into that block: each record costs a 16-byte view, and its bytes
//! are never copied. Compressed batches are decompressed once into a new
//! block and viewed the same way. Only records inside the task's
//! `[from, until)` range are kept; control batches (transaction markers)
//! and the batches of aborted transactions are skipped (the caller's
//! [`CommittedFilter`] decides, as a read_committed Kafka consumer does).
//!
//! This module decodes; it never reads files or sockets.

use arrow::buffer::Buffer;
use bytes::Bytes;

use super::record::RecordColumns;
use sluice_log::log::records::{self, field, varint};
use sluice_log::log::{BatchHeader, Codec, CommittedFilter, HEADER_LEN};

/// A stored batch that cannot be decoded.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{topic}/{partition}: cannot decode the batch at offset {base_offset}: {reason}")]
pub struct DecodeError {
    pub topic: String,
    pub partition: i32,
    pub base_offset: i64,
    pub reason: String,
}

/// Decodes every whole batch in `block` into `out`, keeping offsets in
/// `[from, until)` of the batches `committed` keeps. Returns the offset after the last record seen (the next
/// offset to read), which may be below `until` if the block ends first.
// Kept whole (~85 lines): one walk over the block on the read hot path,
// whose position, next offset and lazily registered plain block would
// otherwise be threaded through a helper per batch.
pub fn decode_block(
    block: &Buffer,
    topic: &str,
    partition: i32,
    from: i64,
    until: i64,
    committed: &mut CommittedFilter,
    out: &mut RecordColumns,
) -> Result<i64, DecodeError> {
    let bytes = block.as_slice();
    let mut pos = 0usize;
    let mut next = from;
    // Views into `block` are registered lazily: a block of only
    // compressed batches never needs to be kept alive by the columns.
    let mut plain_block: Option<(u32, u32)> = None;
    while bytes.len() - pos >= HEADER_LEN {
        let fail = |base_offset: i64, reason: String| DecodeError {
            topic: topic.to_owned(),
            partition,
            base_offset,
            reason,
        };
        let header = BatchHeader::parse(&bytes[pos..]).map_err(|e| fail(-1, e.to_string()))?;
        let total = header.total_len();
        if pos + total > bytes.len() {
            break;
        }
        let batch_end_offset = header.last_offset() + 1;
        // Every batch goes through the filter, in order: its aborted-producer
        // set follows the markers it sees.
        let kept = committed.keep(&header, &bytes[pos..pos + total]);
        if batch_end_offset <= from || !kept {
            pos += total;
            next = next.max(batch_end_offset.min(until));
            continue;
        }
        if header.base_offset >= until {
            break;
        }
        let records = &bytes[pos + HEADER_LEN..pos + total];
        let codec = header
            .codec()
            .map_err(|e| fail(header.base_offset, e.to_string()))?;
        let result = if codec == Codec::None {
            let (key_block, value_block) = *plain_block.get_or_insert_with(|| {
                (
                    out.key.append_block(block.clone()),
                    out.value.append_block(block.clone()),
                )
            });
            decode_records(
                records,
                (pos + HEADER_LEN) as u32,
                (key_block, value_block),
                &header,
                topic,
                partition,
                from,
                until,
                out,
            )
        } else {
            let inflated = decompress(
                codec,
                block.slice_with_length(pos + HEADER_LEN, total - HEADER_LEN),
            )
            .map_err(|reason| fail(header.base_offset, reason))?;
            let inflated = Buffer::from(inflated);
            let blocks = (
                out.key.append_block(inflated.clone()),
                out.value.append_block(inflated.clone()),
            );
            decode_records(
                inflated.as_slice(),
                0,
                blocks,
                &header,
                topic,
                partition,
                from,
                until,
                out,
            )
        };
        result.map_err(|reason| fail(header.base_offset, reason))?;
        next = next.max(batch_end_offset.min(until));
        pos += total;
    }
    Ok(next)
}

/// Lets `bytes` borrow an Arrow buffer without copying it.
struct Owned(Buffer);

impl AsRef<[u8]> for Owned {
    fn as_ref(&self) -> &[u8] {
        self.0.as_slice()
    }
}

fn decompress(codec: Codec, compressed: Buffer) -> Result<Bytes, String> {
    records::decompress(codec, Bytes::from_owner(Owned(compressed)))
}

#[allow(clippy::too_many_arguments)]
fn decode_records(
    buf: &[u8],
    block_base: u32,
    (key_block, value_block): (u32, u32),
    header: &BatchHeader,
    topic: &str,
    partition: i32,
    from: i64,
    until: i64,
    out: &mut RecordColumns,
) -> Result<(), String> {
    let log_append_time = header.is_log_append_time();
    let mut pos = 0usize;
    out.enter_topic(topic);
    for _ in 0..header.records_count.max(0) {
        let length = varint(buf, &mut pos)?;
        if length < 0 || (buf.len() - pos) < length as usize {
            return Err(format!("record length {length} runs past the batch"));
        }
        let end = pos + length as usize;
        let record = &buf[..end];
        pos += 1; // attributes
        let timestamp_delta = varint(record, &mut pos)?;
        let offset_delta = varint(record, &mut pos)?;
        let offset = header.base_offset + offset_delta;
        if offset < from {
            pos = end;
            continue;
        }
        if offset >= until {
            return Ok(());
        }
        let timestamp = if log_append_time {
            header.max_timestamp
        } else {
            header.base_timestamp + timestamp_delta
        };
        let key = field(record, &mut pos)?;
        let value = field(record, &mut pos)?;
        out.begin_row_in_topic(partition, offset, timestamp);
        // SAFETY: `field` checked each range lies inside `buf`, which is the
        // block registered as `*_block` starting at `block_base`.
        unsafe {
            match key {
                Some((start, len)) => {
                    out.key
                        .append_view_unchecked(key_block, block_base + start as u32, len as u32)
                }
                None => out.key.append_null(),
            }
            match value {
                Some((start, len)) => out.value.append_view_unchecked(
                    value_block,
                    block_base + start as u32,
                    len as u32,
                ),
                None => out.value.append_null(),
            }
        }
        let headers = varint(record, &mut pos)?;
        for _ in 0..headers.max(0) {
            let key = field(record, &mut pos)?.ok_or("header with a null key")?;
            let value = field(record, &mut pos)?;
            let key = std::str::from_utf8(&record[key.0..key.0 + key.1])
                .map_err(|_| "header key is not UTF-8")?;
            out.push_header(key, value.map(|(s, l)| &record[s..s + l]));
        }
        out.end_row();
        pos = end;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::Data;
    use crate::source::record::Record;
    use kafka_protocol::records::{
        Compression, Record as KRecord, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };

    fn encode(base: i64, values: &[&str], compression: Compression) -> Vec<u8> {
        let records: Vec<KRecord> = values
            .iter()
            .enumerate()
            .map(|(i, v)| KRecord {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: 0,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: base + i as i64,
                sequence: -1,
                timestamp: 1_000 + i as i64,
                key: (i % 2 == 0).then(|| Bytes::from(format!("k{i}"))),
                value: Some(Bytes::from(v.to_string())),
                headers: if i == 1 {
                    [("h".into(), Some(Bytes::from_static(b"x")))]
                        .into_iter()
                        .collect()
                } else {
                    Default::default()
                },
            })
            .collect();
        let mut buf = bytes::BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            &records,
            &RecordEncodeOptions {
                version: 2,
                compression,
            },
        )
        .unwrap();
        buf.to_vec()
    }

    #[test]
    fn decodes_plain_and_compressed_batches_within_the_range() {
        for compression in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let mut bytes = encode(10, &["a", "bb", "ccc"], compression);
            bytes.extend(encode(13, &["dddd", "e"], compression));
            let block = Buffer::from_vec(bytes);
            let mut cols = RecordColumns::with_capacity(8);
            let next = decode_block(
                &block,
                "t",
                3,
                11,
                14,
                &mut CommittedFilter::new(Vec::new()),
                &mut cols,
            )
            .unwrap();
            assert_eq!(next, 14, "{compression:?}");
            let columns = cols.finish();
            let reader = Record::reader(&columns).unwrap();
            let rows: Vec<Record> = (0..3)
                .map(|i| Record::to_owned_value(Record::get(&reader, i)))
                .collect();
            assert_eq!(
                rows.iter()
                    .map(|r| (r.offset, r.value.clone().unwrap()))
                    .collect::<Vec<_>>(),
                vec![
                    (11, b"bb".to_vec()),
                    (12, b"ccc".to_vec()),
                    (13, b"dddd".to_vec())
                ]
            );
            assert_eq!(rows[0].key, None);
            assert_eq!(rows[1].key.as_deref(), Some(&b"k2"[..]));
            assert_eq!(rows[0].timestamp, 1_001);
            assert_eq!(
                rows[0].headers,
                vec![("h".to_string(), Some(b"x".to_vec()))]
            );
            assert_eq!(rows[0].partition, 3);
            assert_eq!(rows[0].topic, "t");
        }
    }

    #[test]
    fn corrupt_record_is_an_error_not_a_panic() {
        let mut bytes = encode(0, &["hello", "world"], Compression::None);
        // The header claims more records than the batch holds.
        bytes[57..61].copy_from_slice(&100i32.to_be_bytes());
        let block = Buffer::from_vec(bytes);
        let mut cols = RecordColumns::with_capacity(2);
        let err = decode_block(
            &block,
            "t",
            0,
            0,
            10,
            &mut CommittedFilter::new(Vec::new()),
            &mut cols,
        )
        .unwrap_err();
        assert!(err.to_string().contains("t/0"), "{err}");
    }
}
