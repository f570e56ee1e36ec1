//! The records inside one RecordBatch v2, walked as raw bytes: what the
//! cleaner needs to compact a batch and what a compacted topic needs to
//! check keys on append.
//!
//! Owns decompressing a batch's records section, walking its records
//! (offset delta, key, value) without materializing them, and rebuilding a
//! batch from a subset of its raw records. A rebuilt batch keeps the
//! original base offset, last offset delta, base sequence, producer and
//! attributes, as Kafka's cleaner does (v2 batches keep their offset range
//! even when records are removed, so consumers and producer state still see
//! where the batch ended). Kept records are copied byte for byte, headers
//! included. Its varint, field and decompression primitives are the ones
//! the engine's Arrow decoder uses too. Never touches files.

use bytes::{Bytes, BytesMut};
use kafka_protocol::compression::{Compressor, Decompressor, Gzip, Lz4, Snappy, Zstd};

use super::batch::{self, BatchHeader, Codec, HEADER_LEN};

/// Where one record lies in a batch's (decompressed) records section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RawRecord {
    pub offset_delta: i32,
    /// Byte range of the key (`None` for a null key).
    pub key: Option<(usize, usize)>,
    /// The value is null: a tombstone on a compacted topic.
    pub tombstone: bool,
    /// The whole record, length prefix included.
    pub start: usize,
    pub end: usize,
}

/// The records section of `batch` (a whole batch), decompressed.
pub(crate) fn records_section(header: &BatchHeader, batch: &[u8]) -> Result<Bytes, String> {
    let codec = header.codec().map_err(|e| e.to_string())?;
    decompress(codec, Bytes::copy_from_slice(&batch[HEADER_LEN..]))
}

/// A batch's records section as `codec` compressed it, inflated
/// (`Codec::None` hands it back as it is).
pub fn decompress(codec: Codec, mut input: Bytes) -> Result<Bytes, String> {
    let take = |buf: &mut Bytes| Ok(std::mem::take(buf));
    match codec {
        Codec::Gzip => Gzip::decompress(&mut input, take),
        Codec::Snappy => Snappy::decompress(&mut input, take),
        Codec::Lz4 => Lz4::decompress(&mut input, take),
        Codec::Zstd => Zstd::decompress(&mut input, take),
        Codec::None => Ok(input),
    }
    .map_err(|e| format!("{codec} decompression failed: {e:#}"))
}

/// A zigzag varint as Kafka encodes record fields, read at `*pos`.
#[inline(always)]
pub fn varint(buf: &[u8], pos: &mut usize) -> Result<i64, String> {
    // One or two bytes: a record's deltas, and lengths under 64 bytes
    // (one byte) or 8 KiB (two). Inlined without the error paths: the
    // general loop, called for every field, was 5 % of a word count.
    let at = *pos;
    if let Some(&b0) = buf.get(at) {
        if b0 < 0x80 {
            *pos = at + 1;
            return Ok(unzigzag(u64::from(b0)));
        }
        if let Some(&b1) = buf.get(at + 1)
            && b1 < 0x80
        {
            *pos = at + 2;
            return Ok(unzigzag(u64::from(b0 & 0x7f) | u64::from(b1) << 7));
        }
    }
    varint_long(buf, pos)
}

#[inline(always)]
fn unzigzag(value: u64) -> i64 {
    ((value >> 1) as i64) ^ -((value & 1) as i64)
}

#[cold]
#[inline(never)]
fn varint_long(buf: &[u8], pos: &mut usize) -> Result<i64, String> {
    let mut value: u64 = 0;
    let mut shift = 0;
    loop {
        let &b = buf.get(*pos).ok_or("truncated varint")?;
        *pos += 1;
        value |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(unzigzag(value));
        }
        shift += 7;
        if shift > 63 {
            return Err("varint longer than 10 bytes".into());
        }
    }
}

/// A length-prefixed field at `*pos`: `None` for length -1, else its
/// (start, length) in `buf`.
#[inline]
pub fn field(buf: &[u8], pos: &mut usize) -> Result<Option<(usize, usize)>, String> {
    let len = varint(buf, pos)?;
    if len < 0 {
        return Ok(None);
    }
    let len = len as usize;
    if buf.len() - *pos < len {
        return Err(format!("field of {len} bytes runs past the batch"));
    }
    let start = *pos;
    *pos += len;
    Ok(Some((start, len)))
}

/// Walks the `count` records of a decompressed records section.
pub(crate) fn walk(
    section: &[u8],
    count: i32,
    mut f: impl FnMut(RawRecord) -> Result<(), String>,
) -> Result<(), String> {
    let mut pos = 0usize;
    for _ in 0..count.max(0) {
        let start = pos;
        let length = varint(section, &mut pos)?;
        if length < 0 || (section.len() - pos) < length as usize {
            return Err(format!("record length {length} runs past the batch"));
        }
        let end = pos + length as usize;
        let record = &section[..end];
        pos += 1; // attributes
        varint(record, &mut pos)?; // timestamp delta
        let offset_delta = varint(record, &mut pos)?;
        let key = field(record, &mut pos)?;
        let value = field(record, &mut pos)?;
        f(RawRecord {
            offset_delta: i32::try_from(offset_delta)
                .map_err(|_| format!("offset delta {offset_delta} out of range"))?,
            key,
            tombstone: value.is_none(),
            start,
            end,
        })?;
        pos = end;
    }
    Ok(())
}

/// The first record of `batch` without a key, as its offset delta.
pub(crate) fn first_keyless(header: &BatchHeader, batch: &[u8]) -> Result<Option<i32>, String> {
    let section = records_section(header, batch)?;
    let mut found = None;
    walk(&section, header.records_count, |r| {
        if r.key.is_none() && found.is_none() {
            found = Some(r.offset_delta);
        }
        Ok(())
    })?;
    Ok(found)
}

/// A batch holding `kept` (raw records of `section`, in order) with the
/// header of `header`/`original`: same base offset, last offset delta,
/// sequence, producer, timestamps and attributes; new length, count and
/// CRC. With no records kept it is Kafka's empty batch: the header alone,
/// uncompressed, so the producer's last sequence and the batch's offset
/// range survive the records.
pub(crate) fn rebuild(
    header: &BatchHeader,
    original: &[u8],
    section: &[u8],
    kept: &[RawRecord],
) -> Result<Vec<u8>, String> {
    let mut records = BytesMut::new();
    for r in kept {
        records.extend_from_slice(&section[r.start..r.end]);
    }
    let codec = header.codec().map_err(|e| e.to_string())?;
    let mut out = BytesMut::with_capacity(HEADER_LEN + records.len());
    out.extend_from_slice(&original[..HEADER_LEN]);
    let mut attributes = header.attributes;
    if kept.is_empty() || codec == Codec::None {
        attributes &= !0x7;
        out.extend_from_slice(&records);
    } else {
        let put = |buf: &mut BytesMut| {
            buf.extend_from_slice(&records);
            Ok(())
        };
        match codec {
            Codec::Gzip => Gzip::compress(&mut out, put),
            Codec::Snappy => Snappy::compress(&mut out, put),
            Codec::Lz4 => Lz4::compress(&mut out, put),
            Codec::Zstd => Zstd::compress(&mut out, put),
            Codec::None => unreachable!("handled above"),
        }
        .map_err(|e| format!("{codec} compression failed: {e:#}"))?;
    }
    let mut out = out.to_vec();
    let length = i32::try_from(out.len() - batch::LOG_OVERHEAD)
        .map_err(|_| "rebuilt batch larger than 2 GiB".to_string())?;
    let count = i32::try_from(kept.len()).map_err(|_| "too many records".to_string())?;
    batch::set_rebuilt_fields(&mut out, length, attributes, count);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::producer::{BatchBuilder, Compression};

    fn sample(compression: Compression) -> Vec<u8> {
        let mut b = BatchBuilder::new(compression);
        b.push_record(Some(b"a"), Some(b"1"), 10, &[("h", Some(b"x"))]);
        b.push_record(Some(b"b"), None, 11, &[]);
        b.push_record(None, Some(b"3"), 12, &[]);
        b.push_record(Some(b"a"), Some(b"4"), 13, &[]);
        let mut bytes = b.finish().unwrap().to_vec();
        batch::set_base_offset(&mut bytes, 100);
        bytes
    }

    #[test]
    fn varints_of_every_length_decode_as_kafka_encodes_them() {
        // Kafka's encoding: zigzag, then 7 bits a byte, low bits first.
        let encode = |v: i64, out: &mut Vec<u8>| {
            let mut z = ((v << 1) ^ (v >> 63)) as u64;
            while z >= 0x80 {
                out.push(z as u8 | 0x80);
                z >>= 7;
            }
            out.push(z as u8);
        };
        let mut values = vec![0i64, 1, -1, 63, -64, 64, -65, 8191, -8192, 8192, -8193];
        values.extend([i32::MAX as i64, i32::MIN as i64, i64::MAX, i64::MIN]);
        values.extend((0..40).map(|shift| (1i64 << shift) + 3));
        for v in values {
            let mut buf = Vec::new();
            encode(v, &mut buf);
            buf.extend_from_slice(&[0xff, 0xff]); // what follows is not read
            let mut pos = 0;
            assert_eq!(varint(&buf, &mut pos), Ok(v), "{v}");
            assert_eq!(pos, buf.len() - 2, "{v}");
            // Cut short, at any length: an error, never a value.
            for cut in 0..pos {
                assert!(varint(&buf[..cut], &mut 0).is_err(), "{v} cut at {cut}");
            }
        }
        assert!(varint(&[0xff; 11], &mut 0).is_err(), "longer than 10 bytes");
    }

    #[test]
    fn walks_keys_values_and_tombstones_under_every_codec() {
        for c in [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let bytes = sample(c);
            let h = BatchHeader::parse(&bytes).unwrap();
            let section = records_section(&h, &bytes).unwrap();
            let mut seen = Vec::new();
            walk(&section, h.records_count, |r| {
                seen.push((
                    r.offset_delta,
                    r.key.map(|(s, l)| section[s..s + l].to_vec()),
                    r.tombstone,
                ));
                Ok(())
            })
            .unwrap();
            assert_eq!(
                seen,
                vec![
                    (0, Some(b"a".to_vec()), false),
                    (1, Some(b"b".to_vec()), true),
                    (2, None, false),
                    (3, Some(b"a".to_vec()), false),
                ],
                "{c:?}"
            );
            assert_eq!(first_keyless(&h, &bytes).unwrap(), Some(2));
        }
    }

    #[test]
    fn a_rebuilt_batch_keeps_its_offsets_and_decodes_as_kafka_would() {
        for c in [Compression::None, Compression::Lz4, Compression::Zstd] {
            let bytes = sample(c);
            let h = BatchHeader::parse(&bytes).unwrap();
            let section = records_section(&h, &bytes).unwrap();
            let mut all = Vec::new();
            walk(&section, h.records_count, |r| {
                all.push(r);
                Ok(())
            })
            .unwrap();
            let kept = [all[1], all[3]];
            let rebuilt = rebuild(&h, &bytes, &section, &kept).unwrap();
            let nh = BatchHeader::parse(&rebuilt).unwrap();
            batch::verify_crc(&nh, &rebuilt).unwrap();
            assert_eq!((nh.base_offset, nh.last_offset()), (100, 103));
            assert_eq!(nh.records_count, 2);
            assert_eq!(nh.total_len(), rebuilt.len());
            let mut b = Bytes::from(rebuilt);
            let set = kafka_protocol::records::RecordBatchDecoder::decode(&mut b).unwrap();
            let got: Vec<_> = set
                .records
                .iter()
                .map(|r| (r.offset, r.value.clone(), r.timestamp))
                .collect();
            assert_eq!(
                got,
                vec![(101, None, 11), (103, Some(Bytes::from_static(b"4")), 13)]
            );
            let empty = rebuild(&h, &bytes, &section, &[]).unwrap();
            let eh = BatchHeader::parse(&empty).unwrap();
            batch::verify_crc(&eh, &empty).unwrap();
            assert_eq!(
                (eh.records_count, eh.last_offset(), empty.len()),
                (0, 103, HEADER_LEN)
            );
        }
    }
}
