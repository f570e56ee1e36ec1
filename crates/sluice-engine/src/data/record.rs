//! [`Record`] as a DStream element: read as views out of the source
//! schema's columns, built back into them, and encoded for state.

use arrow::array::{
    Array, ArrayRef, BinaryViewArray, Int32Array, Int64Array, ListArray, StringViewArray,
    TimestampMillisecondArray,
};
use arrow::datatypes::Field;

use super::{CodecError, Data, SchemaError};
use crate::source::record::{
    HEADERS, HeadersRef, KEY, OFFSET, PARTITION, Record, RecordColumns, RecordRef, TIMESTAMP,
    TOPIC, VALUE, record_fields,
};

#[derive(Clone, Copy)]
pub struct RecordReader<'a> {
    topic: &'a StringViewArray,
    partition: &'a Int32Array,
    offset: &'a Int64Array,
    timestamp: &'a TimestampMillisecondArray,
    key: &'a BinaryViewArray,
    value: &'a BinaryViewArray,
    headers: &'a ListArray,
}

fn column<'a, A: 'static>(
    columns: &'a [ArrayRef],
    i: usize,
    name: &str,
) -> Result<&'a A, SchemaError> {
    columns
        .get(i)
        .and_then(|c| c.as_any().downcast_ref::<A>())
        .ok_or_else(|| SchemaError(format!("source column {name} missing or of the wrong type")))
}

impl Data for Record {
    type View<'a> = RecordRef<'a>;
    type Reader<'a> = RecordReader<'a>;
    type Builder = RecordColumns;
    const WIDTH: usize = 7;

    fn type_name() -> String {
        "record".into()
    }
    fn fields(_name: &str, out: &mut Vec<Field>) {
        out.extend(record_fields());
    }
    fn reader(columns: &[ArrayRef]) -> Result<RecordReader<'_>, SchemaError> {
        Ok(RecordReader {
            topic: column(columns, TOPIC, "topic")?,
            partition: column(columns, PARTITION, "partition")?,
            offset: column(columns, OFFSET, "offset")?,
            timestamp: column(columns, TIMESTAMP, "timestamp")?,
            key: column(columns, KEY, "key")?,
            value: column(columns, VALUE, "value")?,
            headers: column(columns, HEADERS, "headers")?,
        })
    }
    #[inline]
    fn get<'a>(r: &Self::Reader<'a>, row: usize) -> Self::View<'a> {
        RecordRef {
            topic: r.topic.value(row),
            partition: r.partition.value(row),
            offset: r.offset.value(row),
            timestamp: r.timestamp.value(row),
            key: (!r.key.is_null(row)).then(|| r.key.value(row)),
            value: (!r.value.is_null(row)).then(|| r.value.value(row)),
            headers: HeadersRef::Column(r.headers, row),
        }
    }
    fn builder(capacity: usize) -> RecordColumns {
        RecordColumns::with_capacity(capacity)
    }
    fn push(b: &mut RecordColumns, r: RecordRef<'_>) {
        b.begin_row(r.topic, r.partition, r.offset, r.timestamp);
        b.key.append_option(r.key);
        b.value.append_option(r.value);
        for (k, v) in r.headers() {
            b.push_header(k, v);
        }
        b.end_row();
    }
    fn finish(builder: RecordColumns, out: &mut Vec<ArrayRef>) {
        out.extend(builder.finish());
    }
    #[inline]
    fn shorten<'a: 'b, 'b>(view: RecordRef<'a>) -> RecordRef<'b> {
        view
    }
    fn view(&self) -> RecordRef<'_> {
        RecordRef {
            topic: &self.topic,
            partition: self.partition,
            offset: self.offset,
            timestamp: self.timestamp,
            key: self.key.as_deref(),
            value: self.value.as_deref(),
            headers: HeadersRef::Owned(&self.headers),
        }
    }
    fn to_owned_value(r: RecordRef<'_>) -> Record {
        Record {
            topic: r.topic.to_owned(),
            partition: r.partition,
            offset: r.offset,
            timestamp: r.timestamp,
            key: r.key.map(<[u8]>::to_vec),
            value: r.value.map(<[u8]>::to_vec),
            headers: r
                .headers()
                .map(|(k, v)| (k.to_owned(), v.map(<[u8]>::to_vec)))
                .collect(),
        }
    }
    fn encode(r: RecordRef<'_>, last: bool, out: &mut Vec<u8>) {
        <(String, (i32, i64))>::encode((r.topic, (r.partition, r.offset)), false, out);
        i64::encode(r.timestamp, false, out);
        <Option<Vec<u8>>>::encode(r.key, false, out);
        <Option<Vec<u8>>>::encode(r.value, last, out);
    }
    fn decode(input: &mut &[u8], last: bool) -> Result<Record, CodecError> {
        let (topic, (partition, offset)) = <(String, (i32, i64))>::decode(input, false)?;
        Ok(Record {
            topic,
            partition,
            offset,
            timestamp: i64::decode(input, false)?,
            key: <Option<Vec<u8>>>::decode(input, false)?,
            value: <Option<Vec<u8>>>::decode(input, last)?,
            headers: Vec::new(),
        })
    }
    fn hash_view(r: RecordRef<'_>, state: &mut impl std::hash::Hasher) {
        use std::hash::Hash;
        (r.topic, r.partition, r.offset).hash(state)
    }
    fn eq_view(a: RecordRef<'_>, b: RecordRef<'_>) -> bool {
        (a.topic, a.partition, a.offset) == (b.topic, b.partition, b.offset)
    }
}
