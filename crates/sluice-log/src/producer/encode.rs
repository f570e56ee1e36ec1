//! Encoding one partition's records as a single Kafka RecordBatch v2.
//!
//! [`BatchBuilder`] collects records for ONE partition and turns them into
//! the bytes a Kafka producer would send in a Produce request: magic 2,
//! CreateTime timestamps, no idempotence (producer id/epoch and base
//! sequence -1), partition leader epoch -1, and base offset 0, which the
//! log store replaces with the real offset when it appends the batch.
//!
//! It only produces bytes; writing them anywhere is the caller's job.

use std::ops::Range;

use bytes::{Bytes, BytesMut};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, NO_PARTITION_LEADER_EPOCH, NO_PRODUCER_EPOCH, NO_PRODUCER_ID, Record,
    RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

/// Bytes of a RecordBatch v2 header, from base offset to record count.
pub const BATCH_HEADER_BYTES: usize = 61;

/// Why a batch could not be encoded.
#[derive(Debug, thiserror::Error)]
pub enum EncodeError {
    /// `finish` was called with no records; a RecordBatch cannot be empty.
    #[error("cannot encode an empty record batch")]
    Empty,
    /// The codec (compression, or a size limit of the format) failed.
    #[error("encoding a record batch of {records} records with {compression:?} failed")]
    Codec {
        records: usize,
        compression: Compression,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
}

/// A compression name that is not one of Kafka's codecs.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown compression `{0}`; valid values are: none, gzip, snappy, lz4, zstd")]
pub struct ParseCompressionError(pub String);

/// Parses a Kafka `compression.type` name (ASCII case-insensitive):
/// `none`, `gzip`, `snappy`, `lz4` or `zstd`.
///
/// # Errors
///
/// Any other name; the message lists the valid ones.
pub fn parse_compression(s: &str) -> Result<Compression, ParseCompressionError> {
    let c = match s.trim().to_ascii_lowercase().as_str() {
        "none" => Compression::None,
        "gzip" => Compression::Gzip,
        "snappy" => Compression::Snappy,
        "lz4" => Compression::Lz4,
        "zstd" => Compression::Zstd,
        _ => return Err(ParseCompressionError(s.to_owned())),
    };
    Ok(c)
}

/// One pushed record; key, value and headers live in the builder's arena.
#[derive(Debug)]
struct Pending {
    key: Option<Range<usize>>,
    value: Option<Range<usize>>,
    timestamp_ms: i64,
    headers: Vec<(String, Option<Range<usize>>)>,
}

/// Accumulates records for one partition and encodes them as one batch.
///
/// Keys, values and header values are copied once into a shared arena, so a
/// batch costs one growing buffer rather than two allocations per record.
#[derive(Debug)]
pub struct BatchBuilder {
    compression: Compression,
    arena: BytesMut,
    pending: Vec<Pending>,
    size_bytes: usize,
    first_timestamp: Option<i64>,
}

/// One uncompressed batch of `records` records with `value_bytes`-byte
/// values and no keys: the fixed workload of the log benchmarks.
pub fn uniform_batch(
    records: usize,
    value_bytes: usize,
    timestamp_ms: i64,
) -> Result<BytesMut, EncodeError> {
    let mut builder = BatchBuilder::new(Compression::None);
    let mut value = vec![0u8; value_bytes];
    for i in 0..records {
        for (j, b) in value.iter_mut().enumerate() {
            *b = b'a' + ((i + j) % 26) as u8;
        }
        builder.push(None, &value, timestamp_ms);
    }
    builder.finish()
}

impl BatchBuilder {
    /// An empty builder that will encode with `compression`.
    pub fn new(compression: Compression) -> Self {
        Self {
            compression,
            arena: BytesMut::new(),
            pending: Vec::new(),
            size_bytes: 0,
            first_timestamp: None,
        }
    }

    /// The codec this builder encodes with.
    pub fn compression(&self) -> Compression {
        self.compression
    }

    /// Adds a record with no headers. `timestamp_ms` is the CreateTime in
    /// milliseconds since the Unix epoch.
    pub fn push(&mut self, key: Option<&[u8]>, value: &[u8], timestamp_ms: i64) {
        self.push_with_headers(key, value, timestamp_ms, &[]);
    }

    /// Adds a record with headers, in the order given.
    ///
    /// Kafka allows repeated header keys, but the codec we use keeps headers
    /// in a map, so for a repeated key only the last value is kept.
    pub fn push_with_headers(
        &mut self,
        key: Option<&[u8]>,
        value: &[u8],
        timestamp_ms: i64,
        headers: &[(&str, Option<&[u8]>)],
    ) {
        self.push_record(key, Some(value), timestamp_ms, headers);
    }

    /// Adds a record whose value may be null (a tombstone), with headers.
    pub fn push_record(
        &mut self,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        timestamp_ms: i64,
        headers: &[(&str, Option<&[u8]>)],
    ) {
        let first_ts = *self.first_timestamp.get_or_insert(timestamp_ms);
        let offset_delta = self.pending.len() as i64;

        let key = key.map(|k| self.copy_in(k));
        let value = value.map(|v| self.copy_in(v));
        let mut header_bytes = varint_len(headers.len() as i64);
        let headers = headers
            .iter()
            .map(|&(name, v)| {
                header_bytes += varint_len(name.len() as i64) + name.len();
                header_bytes += v.map_or(1, |v| varint_len(v.len() as i64) + v.len());
                (name.to_owned(), v.map(|v| self.copy_in(v)))
            })
            .collect();

        // The body of a v2 record as the encoder lays it out, with the
        // timestamp delta taken from the first record: exact unless
        // timestamps go backwards, when it is off by a byte or two.
        let body = 1
            + varint_len(timestamp_ms.wrapping_sub(first_ts))
            + varint_len(offset_delta)
            + key
                .as_ref()
                .map_or(1, |k| varint_len(k.len() as i64) + k.len())
            + value
                .as_ref()
                .map_or(1, |v| varint_len(v.len() as i64) + v.len())
            + header_bytes;
        self.size_bytes += varint_len(body as i64) + body;

        self.pending.push(Pending {
            key,
            value,
            timestamp_ms,
            headers,
        });
    }

    fn copy_in(&mut self, data: &[u8]) -> Range<usize> {
        let start = self.arena.len();
        self.arena.extend_from_slice(data);
        start..self.arena.len()
    }

    /// Number of records pushed since the last `finish`.
    pub fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether no records were pushed since the last `finish`.
    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Approximate size of the batch before compression, header included
    /// (0 when empty), for capping batches at e.g. `max.request.size`.
    pub fn size_bytes(&self) -> usize {
        if self.pending.is_empty() {
            0
        } else {
            BATCH_HEADER_BYTES + self.size_bytes
        }
    }

    /// Encodes the pushed records as one RecordBatch v2 and empties the
    /// builder. On error the records are dropped too, since retrying the
    /// same records with the same codec would fail the same way.
    ///
    /// # Errors
    ///
    /// [`EncodeError::Empty`] if nothing was pushed; [`EncodeError::Codec`]
    /// if compression fails or the batch exceeds the format's limits.
    pub fn finish(&mut self) -> Result<BytesMut, EncodeError> {
        if self.pending.is_empty() {
            return Err(EncodeError::Empty);
        }
        let arena = std::mem::take(&mut self.arena).freeze();
        let pending = std::mem::take(&mut self.pending);
        self.size_bytes = 0;
        self.first_timestamp = None;

        let records: Vec<Record> = pending
            .into_iter()
            .enumerate()
            .map(|(i, p)| to_record(&arena, i as i64, p))
            .collect();
        let count = records.len();
        let options = RecordEncodeOptions {
            version: 2,
            compression: self.compression,
        };
        let codec_err = |source: Box<dyn std::error::Error + Send + Sync>| EncodeError::Codec {
            records: count,
            compression: self.compression,
            source,
        };
        if count > i32::MAX as usize {
            return Err(codec_err("more than i32::MAX records in one batch".into()));
        }

        let mut buf = BytesMut::with_capacity(BATCH_HEADER_BYTES + arena.len() + 16 * count);
        RecordBatchEncoder::encode(&mut buf, &records, &options)
            .map_err(|e| codec_err(e.into()))?;

        // The encoder silently starts a new batch whenever a record's
        // batch-level fields differ from the first one's; ours never do, but
        // one batch in must be one batch out, so check rather than hope.
        let batch_len = buf
            .get(8..12)
            .and_then(|b| usize::try_from(i32::from_be_bytes([b[0], b[1], b[2], b[3]])).ok());
        if batch_len != Some(buf.len().saturating_sub(12)) {
            return Err(codec_err(
                "encoder split the records into several batches".into(),
            ));
        }
        Ok(buf)
    }
}

/// Builds the codec's record for the record at `offset` within the batch.
fn to_record(arena: &Bytes, offset: i64, p: Pending) -> Record {
    let mut headers = kafka_protocol::indexmap::IndexMap::with_capacity(p.headers.len());
    for (name, value) in p.headers {
        headers.insert(StrBytes::from_string(name), value.map(|r| arena.slice(r)));
    }
    Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: NO_PARTITION_LEADER_EPOCH,
        producer_id: NO_PRODUCER_ID,
        producer_epoch: NO_PRODUCER_EPOCH,
        timestamp_type: TimestampType::Creation,
        offset,
        // The encoder writes `first.sequence - (first.offset - base)` as the
        // base sequence and starts a new batch whenever `offset - sequence`
        // changes. Giving record i the sequence i - 1 keeps that difference
        // constant (one batch) and makes the base sequence -1 (no
        // idempotence); a constant -1 here would give one batch per record.
        sequence: (offset as i32).wrapping_sub(1),
        timestamp: p.timestamp_ms,
        key: p.key.map(|r| arena.slice(r)),
        value: p.value.map(|r| arena.slice(r)),
        headers,
    }
}

/// Bytes of a zigzag varint/varlong encoding of `v`.
fn varint_len(v: i64) -> usize {
    let zigzag = ((v << 1) ^ (v >> 63)) as u64;
    let bits = 64 - (zigzag | 1).leading_zeros() as usize;
    bits.div_ceil(7)
}

#[cfg(test)]
mod tests {
    use kafka_protocol::records::RecordBatchDecoder;

    use super::*;

    const ALL: [Compression; 5] = [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ];

    fn sample(builder: &mut BatchBuilder) -> Vec<(Option<Vec<u8>>, Vec<u8>, i64)> {
        let records: Vec<(Option<Vec<u8>>, Vec<u8>, i64)> = (0..100)
            .map(|i| {
                let key = (i % 3 != 0).then(|| format!("key-{i}").into_bytes());
                let value = format!("the quick brown fox {i} jumps").into_bytes();
                // Not monotonic: base timestamp must be the minimum.
                let ts = 1_700_000_000_000 + ((i * 37) % 100) as i64;
                (key, value, ts)
            })
            .collect();
        for (k, v, ts) in &records {
            builder.push(k.as_deref(), v, *ts);
        }
        records
    }

    #[test]
    fn round_trips_through_the_decoder_for_every_codec() {
        for compression in ALL {
            let mut b = BatchBuilder::new(compression);
            let expected = sample(&mut b);
            assert_eq!(b.len(), expected.len());
            let encoded = b.finish().expect("encode").freeze();
            assert!(b.is_empty());

            let mut buf = encoded.clone();
            let set = RecordBatchDecoder::decode(&mut buf).expect("decode");
            assert!(buf.is_empty(), "{compression:?}: exactly one batch");
            assert_eq!(set.compression, compression);
            assert_eq!(set.version, 2);
            assert_eq!(set.records.len(), expected.len());
            for (i, (rec, (k, v, ts))) in set.records.iter().zip(&expected).enumerate() {
                assert_eq!(rec.offset, i as i64);
                assert_eq!(rec.key.as_deref(), k.as_deref());
                assert_eq!(rec.value.as_deref(), Some(v.as_slice()));
                assert_eq!(rec.timestamp, *ts);
                assert_eq!(rec.timestamp_type, TimestampType::Creation);
                assert_eq!(rec.producer_id, -1);
                assert_eq!(rec.producer_epoch, -1);
                assert_eq!(rec.partition_leader_epoch, -1);
            }
        }
    }

    #[test]
    fn header_fields_match_the_v2_layout() {
        for compression in ALL {
            let mut b = BatchBuilder::new(compression);
            let expected = sample(&mut b);
            let bytes = b.finish().expect("encode");
            let be32 = |at: usize| i32::from_be_bytes(bytes[at..at + 4].try_into().unwrap());
            let be64 = |at: usize| i64::from_be_bytes(bytes[at..at + 8].try_into().unwrap());
            let be16 = |at: usize| i16::from_be_bytes(bytes[at..at + 2].try_into().unwrap());

            assert_eq!(be64(0), 0, "base offset");
            assert_eq!(be32(8) as usize, bytes.len() - 12, "batch length");
            assert_eq!(be32(12), -1, "partition leader epoch");
            assert_eq!(bytes[16], 2, "magic");
            let crc = u32::from_be_bytes(bytes[17..21].try_into().unwrap());
            assert_eq!(crc, crc32c::crc32c(&bytes[21..]), "crc32c");
            assert_eq!(
                be16(21),
                compression as i16,
                "attributes: codec, CreateTime"
            );
            assert_eq!(be32(23), expected.len() as i32 - 1, "last offset delta");
            let min = expected.iter().map(|r| r.2).min().unwrap();
            let max = expected.iter().map(|r| r.2).max().unwrap();
            assert_eq!(be64(27), min, "base timestamp");
            assert_eq!(be64(35), max, "max timestamp");
            assert_eq!(be64(43), -1, "producer id");
            assert_eq!(be16(51), -1, "producer epoch");
            assert_eq!(be32(53), -1, "base sequence");
            assert_eq!(be32(57), expected.len() as i32, "record count");
        }
    }

    #[test]
    fn size_estimate_matches_uncompressed_encoding() {
        let mut b = BatchBuilder::new(Compression::None);
        b.push(None, b"", 5);
        b.push(Some(b"k"), &[b'x'; 300], 5);
        b.push_with_headers(
            Some(b"k2"),
            b"v",
            1_000_000,
            &[("h", Some(b"hv")), ("n", None)],
        );
        b.push_record(Some(b"gone"), None, 7, &[]);
        let estimate = b.size_bytes();
        let bytes = b.finish().expect("encode");
        assert_eq!(estimate, bytes.len());
        assert_eq!(b.size_bytes(), 0);
    }

    #[test]
    fn headers_round_trip() {
        let mut b = BatchBuilder::new(Compression::Lz4);
        b.push_with_headers(None, b"v", 1, &[("trace", Some(b"abc")), ("empty", None)]);
        let mut bytes = b.finish().expect("encode").freeze();
        let set = RecordBatchDecoder::decode(&mut bytes).expect("decode");
        let h = &set.records[0].headers;
        assert_eq!(h.len(), 2);
        assert_eq!(
            h.get(&StrBytes::from_static_str("trace")),
            Some(&Some(Bytes::from_static(b"abc")))
        );
        assert_eq!(h.get(&StrBytes::from_static_str("empty")), Some(&None));
    }

    #[test]
    fn null_values_are_tombstones() {
        let mut b = BatchBuilder::new(Compression::None);
        b.push_record(Some(b"k"), None, 1, &[("h", Some(b"v"))]);
        b.push(None, b"", 2);
        let mut bytes = b.finish().expect("encode").freeze();
        let set = RecordBatchDecoder::decode(&mut bytes).expect("decode");
        assert_eq!(set.records[0].value, None);
        assert_eq!(set.records[0].key.as_deref(), Some(&b"k"[..]));
        assert_eq!(set.records[1].value.as_deref(), Some(&b""[..]));
    }

    #[test]
    fn builder_is_reusable_and_rejects_empty() {
        let mut b = BatchBuilder::new(Compression::Zstd);
        assert!(matches!(b.finish(), Err(EncodeError::Empty)));
        b.push(None, b"one", 1);
        b.finish().expect("first");
        b.push(Some(b"k"), b"two", 2);
        let mut bytes = b.finish().expect("second").freeze();
        let set = RecordBatchDecoder::decode(&mut bytes).expect("decode");
        assert_eq!(set.records.len(), 1);
        assert_eq!(set.records[0].value.as_deref(), Some(&b"two"[..]));
        assert_eq!(set.records[0].offset, 0);
    }

    #[test]
    fn parses_compression_names() {
        assert_eq!(parse_compression("none"), Ok(Compression::None));
        assert_eq!(parse_compression("GZIP"), Ok(Compression::Gzip));
        assert_eq!(parse_compression("snappy"), Ok(Compression::Snappy));
        assert_eq!(parse_compression(" lz4 "), Ok(Compression::Lz4));
        assert_eq!(parse_compression("zstd"), Ok(Compression::Zstd));
        let err = parse_compression("brotli").unwrap_err().to_string();
        assert!(
            err.contains("brotli") && err.contains("none, gzip, snappy, lz4, zstd"),
            "{err}"
        );
    }

    #[test]
    fn varint_lengths() {
        assert_eq!(varint_len(0), 1);
        assert_eq!(varint_len(-1), 1);
        assert_eq!(varint_len(63), 1);
        assert_eq!(varint_len(64), 2);
        assert_eq!(varint_len(-65), 2);
        assert_eq!(varint_len(i64::MAX), 10);
        assert_eq!(varint_len(i64::MIN), 10);
    }
}
