//! The source schema: every source delivers records as Arrow columns with
//! Kafka's shape — topic, partition, offset, timestamp, key, value, headers —
//! and [`Record`] is that row (its encoding as a DStream element lives with
//! the other data types, in `data::record`).

use std::sync::{Arc, LazyLock};

use arrow::array::{
    Array, ArrayBuilder, ArrayRef, AsArray, BinaryBuilder, BinaryViewBuilder, Int32Builder,
    Int64Builder, ListArray, StringBuilder, StringViewBuilder, StructArray,
    TimestampMillisecondBuilder,
};
use arrow::buffer::OffsetBuffer;
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};

pub const TOPIC: usize = 0;
pub const PARTITION: usize = 1;
pub const OFFSET: usize = 2;
pub const TIMESTAMP: usize = 3;
pub const KEY: usize = 4;
pub const VALUE: usize = 5;
pub const HEADERS: usize = 6;

pub(crate) fn header_fields() -> Fields {
    Fields::from(vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("value", DataType::Binary, true),
    ])
}

fn headers_type() -> DataType {
    DataType::List(Arc::new(Field::new(
        "item",
        DataType::Struct(header_fields()),
        false,
    )))
}

pub(crate) fn record_fields() -> Vec<Field> {
    vec![
        Field::new("topic", DataType::Utf8View, false),
        Field::new("partition", DataType::Int32, false),
        Field::new("offset", DataType::Int64, false),
        Field::new(
            "timestamp",
            DataType::Timestamp(TimeUnit::Millisecond, None),
            false,
        ),
        Field::new("key", DataType::BinaryView, true),
        Field::new("value", DataType::BinaryView, true),
        Field::new("headers", headers_type(), false),
    ]
}

/// Kafka's source schema, shared by every source.
pub fn source_schema() -> SchemaRef {
    static SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| Arc::new(Schema::new(record_fields())));
    SCHEMA.clone()
}

/// One record, owned (state, tests). Streams carry [`RecordRef`] views.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// Milliseconds since the epoch.
    pub timestamp: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

/// A record borrowed from a batch's columns.
#[derive(Clone, Copy)]
pub struct RecordRef<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub timestamp: i64,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub(crate) headers: HeadersRef<'a>,
}

/// Where a record's headers live: in a batch's list column, or in an owned
/// [`Record`].
#[derive(Clone, Copy)]
pub(crate) enum HeadersRef<'a> {
    Column(&'a ListArray, usize),
    Owned(&'a [(String, Option<Vec<u8>>)]),
}

impl<'a> RecordRef<'a> {
    /// The value as text (lossy: invalid UTF-8 yields an empty string, so a
    /// bad record cannot stop a text job; count them with `filter` if it
    /// matters).
    #[inline]
    pub fn value_str(&self) -> &'a str {
        // SIMD validation: std's was 6 % of a word count's CPU.
        simdutf8::basic::from_utf8(self.value.unwrap_or_default()).unwrap_or_default()
    }

    pub fn key_str(&self) -> Option<&'a str> {
        self.key.and_then(|k| std::str::from_utf8(k).ok())
    }

    /// The record's headers in order.
    pub fn headers(&self) -> Box<dyn Iterator<Item = (&'a str, Option<&'a [u8]>)> + 'a> {
        match self.headers {
            HeadersRef::Column(list, row) => {
                let offsets = list.value_offsets();
                let (start, end) = (offsets[row] as usize, offsets[row + 1] as usize);
                let entries = list.values().as_struct();
                let keys = entries.column(0).as_string::<i32>();
                let values = entries.column(1).as_binary::<i32>();
                Box::new(
                    (start..end).map(move |i| {
                        (keys.value(i), (!values.is_null(i)).then(|| values.value(i)))
                    }),
                )
            }
            HeadersRef::Owned(headers) => {
                Box::new(headers.iter().map(|(k, v)| (k.as_str(), v.as_deref())))
            }
        }
    }
}

impl std::fmt::Debug for RecordRef<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Record")
            .field("topic", &self.topic)
            .field("partition", &self.partition)
            .field("offset", &self.offset)
            .field("timestamp", &self.timestamp)
            .field("key", &self.key.map(String::from_utf8_lossy))
            .field("value", &self.value.map(String::from_utf8_lossy))
            .finish()
    }
}

/// Builds source columns row by row (generator, socket, file and rdkafka
/// sources; the embedded source writes views straight into its blocks).
pub struct RecordColumns {
    pub topic: StringViewBuilder,
    pub partition: Int32Builder,
    pub offset: Int64Builder,
    pub timestamp: TimestampMillisecondBuilder,
    pub key: BinaryViewBuilder,
    pub value: BinaryViewBuilder,
    header_offsets: Vec<i32>,
    header_keys: StringBuilder,
    header_values: BinaryBuilder,
    rows: usize,
}

impl RecordColumns {
    pub fn with_capacity(rows: usize) -> Self {
        RecordColumns {
            topic: StringViewBuilder::with_capacity(rows),
            partition: Int32Builder::with_capacity(rows),
            offset: Int64Builder::with_capacity(rows),
            timestamp: TimestampMillisecondBuilder::with_capacity(rows),
            key: BinaryViewBuilder::with_capacity(rows),
            value: BinaryViewBuilder::with_capacity(rows),
            header_offsets: {
                let mut v = Vec::with_capacity(rows + 1);
                v.push(0);
                v
            },
            header_keys: StringBuilder::new(),
            header_values: BinaryBuilder::new(),
            rows: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Appends the fixed fields of one row; key and value must be appended
    /// by the caller (as views or values) before the next row.
    #[inline]
    pub fn begin_row(&mut self, topic: &str, partition: i32, offset: i64, timestamp: i64) {
        self.topic.append_value(topic);
        self.partition.append_value(partition);
        self.offset.append_value(offset);
        self.timestamp.append_value(timestamp);
    }

    /// Adds one header to the current row.
    pub fn push_header(&mut self, key: &str, value: Option<&[u8]>) {
        self.header_keys.append_value(key);
        self.header_values.append_option(value);
    }

    /// Ends the current row (after its key, value and headers).
    #[inline]
    pub fn end_row(&mut self) {
        self.header_offsets.push(self.header_keys.len() as i32);
        self.rows += 1;
    }

    /// Appends a whole row with copied key and value.
    pub fn push(&mut self, r: &Record) {
        self.begin_row(&r.topic, r.partition, r.offset, r.timestamp);
        self.key.append_option(r.key.as_deref());
        self.value.append_option(r.value.as_deref());
        for (k, v) in &r.headers {
            self.push_header(k, v.as_deref());
        }
        self.end_row();
    }

    pub fn finish(mut self) -> Vec<ArrayRef> {
        let entries = StructArray::new(
            header_fields(),
            vec![
                Arc::new(self.header_keys.finish()) as ArrayRef,
                Arc::new(self.header_values.finish()),
            ],
            None,
        );
        let headers = ListArray::new(
            Arc::new(Field::new("item", DataType::Struct(header_fields()), false)),
            OffsetBuffer::new(self.header_offsets.into()),
            Arc::new(entries),
            None,
        );
        vec![
            Arc::new(self.topic.finish()),
            Arc::new(self.partition.finish()),
            Arc::new(self.offset.finish()),
            Arc::new(self.timestamp.finish()),
            Arc::new(self.key.finish()),
            Arc::new(self.value.finish()),
            Arc::new(headers),
        ]
    }
}
