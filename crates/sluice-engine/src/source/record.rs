//! The source schema: every source delivers records as Arrow columns with
//! Kafka's shape — topic, partition, offset, timestamp, key, value, headers —
//! and [`Record`] is that row (its encoding as a DStream element lives with
//! the other data types, in `data::record`).

use std::sync::{Arc, LazyLock};

use arrow::array::{
    Array, ArrayBuilder, ArrayRef, AsArray, BinaryBuilder, BinaryViewArray, BinaryViewBuilder,
    Int32Array, Int64Array, ListArray, StringBuilder, StringViewArray, StringViewBuilder,
    StructArray, TimestampMillisecondArray,
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

    /// The value's words, split on ASCII whitespace, each valid UTF-8: a
    /// word with a byte that is not (a corrupt or binary record) is
    /// skipped, and the record's other words still count. For a value
    /// that is valid text, the words of [`RecordRef::value_str`].
    #[inline]
    pub fn value_words(&self) -> AsciiWords<'a> {
        AsciiWords {
            bytes: self.value.unwrap_or_default(),
            pos: 0,
        }
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
///
/// The fixed fields go into plain vectors, and the topic is kept as runs
/// of equal rows (a chunk is one topic's records): four Arrow builder
/// appends per record, one of them building a string view of the same
/// topic every time, were a twentieth of a word count's CPU.
pub struct RecordColumns {
    topics: Vec<(String, usize)>,
    partition: Vec<i32>,
    offset: Vec<i64>,
    timestamp: Vec<i64>,
    pub key: KeyColumn,
    pub value: BinaryViewBuilder,
    header_offsets: Vec<i32>,
    header_keys: StringBuilder,
    header_values: BinaryBuilder,
    rows: usize,
}

impl RecordColumns {
    pub fn with_capacity(rows: usize) -> Self {
        RecordColumns {
            topics: Vec::new(),
            partition: Vec::with_capacity(rows),
            offset: Vec::with_capacity(rows),
            timestamp: Vec::with_capacity(rows),
            key: KeyColumn {
                views: BinaryViewBuilder::with_capacity(rows),
                leading_nulls: 0,
            },
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
        self.enter_topic(topic);
        self.begin_row_in_topic(partition, offset, timestamp);
    }

    /// The rows begun next with [`RecordColumns::begin_row_in_topic`] are
    /// `topic`'s: a decoder of a stored batch compares the topic once,
    /// not once per record.
    #[inline]
    pub(crate) fn enter_topic(&mut self, topic: &str) {
        if self.topics.last().is_none_or(|(run, _)| run != topic) {
            self.topics.push((topic.to_owned(), 0));
        }
    }

    /// [`RecordColumns::begin_row`] in the topic last entered (there is
    /// one: a row without its topic would leave the columns uneven).
    #[inline]
    pub(crate) fn begin_row_in_topic(&mut self, partition: i32, offset: i64, timestamp: i64) {
        debug_assert!(!self.topics.is_empty(), "a row begun before its topic");
        if let Some((_, rows)) = self.topics.last_mut() {
            *rows += 1;
        }
        self.partition.push(partition);
        self.offset.push(offset);
        self.timestamp.push(timestamp);
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
            Arc::new(topic_column(&self.topics)),
            Arc::new(Int32Array::from(self.partition)),
            Arc::new(Int64Array::from(self.offset)),
            Arc::new(TimestampMillisecondArray::from(self.timestamp)),
            Arc::new(self.key.finish()),
            Arc::new(self.value.finish()),
            Arc::new(headers),
        ]
    }
}

/// The key column: views like the value's, but nulls before the first key
/// are counted instead of appended (a bit and a view each), and a chunk
/// without keys — most topics' — becomes one all-null array.
pub struct KeyColumn {
    views: BinaryViewBuilder,
    leading_nulls: usize,
}

impl KeyColumn {
    #[inline]
    pub fn append_null(&mut self) {
        if self.views.is_empty() {
            self.leading_nulls += 1;
        } else {
            self.views.append_null();
        }
    }

    pub fn append_option(&mut self, key: Option<impl AsRef<[u8]>>) {
        match key {
            Some(key) => {
                self.catch_up();
                self.views.append_value(key.as_ref());
            }
            None => self.append_null(),
        }
    }

    /// As [`BinaryViewBuilder::append_block`].
    pub fn append_block(&mut self, block: arrow::buffer::Buffer) -> u32 {
        self.views.append_block(block)
    }

    /// As [`BinaryViewBuilder::append_view_unchecked`].
    ///
    /// # Safety
    /// `block` was returned by [`KeyColumn::append_block`] and
    /// `offset..offset + len` lies inside it.
    #[inline]
    pub unsafe fn append_view_unchecked(&mut self, block: u32, offset: u32, len: u32) {
        self.catch_up();
        // SAFETY: the caller's promise, passed on.
        unsafe { self.views.append_view_unchecked(block, offset, len) }
    }

    fn catch_up(&mut self) {
        for _ in 0..std::mem::take(&mut self.leading_nulls) {
            self.views.append_null();
        }
    }

    fn finish(mut self) -> BinaryViewArray {
        if self.views.is_empty() && self.leading_nulls > 0 {
            BinaryViewArray::new_null(self.leading_nulls)
        } else {
            self.views.finish()
        }
    }
}

/// The topic column of `runs` (a topic and its number of rows each): one
/// string view, copied into every row of its run.
fn topic_column(runs: &[(String, usize)]) -> StringViewArray {
    let mut distinct = StringViewBuilder::with_capacity(runs.len());
    for (topic, _) in runs {
        distinct.append_value(topic);
    }
    let distinct = distinct.finish();
    let mut views = Vec::with_capacity(runs.iter().map(|(_, rows)| rows).sum());
    for (&(_, rows), &view) in runs.iter().zip(distinct.views().iter()) {
        views.extend(std::iter::repeat_n(view, rows));
    }
    // SAFETY: every view is one of `distinct`'s valid views, over the
    // same buffers, and there are no nulls.
    unsafe { StringViewArray::new_unchecked(views.into(), distinct.data_buffers().to_vec(), None) }
}

/// The words of `text` split on ASCII whitespace: the same words as
/// [`str::split_ascii_whitespace`], found eight bytes at a time instead of
/// one (std's byte loop was a tenth of a word count's CPU).
#[inline]
pub fn ascii_words(text: &str) -> AsciiWords<'_> {
    AsciiWords {
        bytes: text.as_bytes(),
        pos: 0,
    }
}

/// Iterator of [`ascii_words`] and [`RecordRef::value_words`].
#[derive(Clone, Debug)]
pub struct AsciiWords<'a> {
    bytes: &'a [u8],
    pos: usize,
}

const EACH_BYTE: u64 = 0x0101_0101_0101_0101;
const HIGH_BITS: u64 = 0x8080_8080_8080_8080;

/// The high bit of each byte of `w` (little-endian) that is at most b' ':
/// exact for the lowest such byte, which is all a caller may use (a
/// borrow only runs towards higher bytes).
#[inline]
fn control_or_space(w: u64) -> u64 {
    w.wrapping_sub(EACH_BYTE * 0x21) & !w & HIGH_BITS
}

/// The low `n` bytes of a word (`n` < 8).
#[inline]
fn low_bytes(n: usize) -> u64 {
    (1u64 << (8 * n)) - 1
}

impl<'a> AsciiWords<'a> {
    /// The next word's range and whether all its bytes are ASCII. The
    /// bytes are OR-ed as they are scanned for the word's end, so an
    /// ASCII word (nearly every word of most text) needs no UTF-8
    /// validation pass of its own: validating each value with simdutf8
    /// before cutting it was 6-7 % of a word count's CPU.
    #[inline]
    fn next_range(&mut self) -> Option<(usize, usize, bool)> {
        let bytes = self.bytes;
        let mut i = self.pos;
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        if i == bytes.len() {
            self.pos = i;
            return None;
        }
        let start = i;
        let mut seen = 0u64;
        let end = 'found: {
            while let Some(chunk) = bytes[i..].first_chunk::<8>() {
                let w = u64::from_le_bytes(*chunk);
                let flagged = control_or_space(w);
                if flagged == 0 {
                    seen |= w;
                    i += 8;
                    continue;
                }
                let n = (flagged.trailing_zeros() / 8) as usize;
                // The bytes before the flagged one (it is ASCII itself).
                seen |= w & low_bytes(n);
                let at = i + n;
                if bytes[at].is_ascii_whitespace() {
                    break 'found at;
                }
                // A control byte inside a word.
                i = at + 1;
            }
            while i < bytes.len() && !bytes[i].is_ascii_whitespace() {
                seen |= u64::from(bytes[i]);
                i += 1;
            }
            i
        };
        self.pos = end;
        Some((start, end, seen & HIGH_BITS == 0))
    }
}

impl<'a> Iterator for AsciiWords<'a> {
    type Item = &'a str;

    #[inline]
    fn next(&mut self) -> Option<&'a str> {
        loop {
            let (start, end, ascii) = self.next_range()?;
            let word = &self.bytes[start..end];
            if ascii {
                // SAFETY: ASCII bytes are UTF-8.
                return Some(unsafe { std::str::from_utf8_unchecked(word) });
            }
            if let Ok(word) = simdutf8::basic::from_utf8(word) {
                return Some(word);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn same_as_std(text: &str) {
        let ours: Vec<&str> = ascii_words(text).collect();
        let std: Vec<&str> = text.split_ascii_whitespace().collect();
        assert_eq!(ours, std, "{text:?}");
        assert_eq!(value_words(text.as_bytes()), std, "{text:?} as bytes");
    }

    fn value_words(bytes: &[u8]) -> Vec<&str> {
        let value = RecordRef {
            topic: "t",
            partition: 0,
            offset: 0,
            timestamp: 0,
            key: None,
            value: Some(bytes),
            headers: HeadersRef::Owned(&[]),
        };
        value.value_words().collect()
    }

    #[test]
    fn rows_keep_their_topic_partition_and_key_across_runs() {
        use crate::data::Data;
        let rows = [
            ("clicks", 0),
            ("clicks", 0),
            ("a-topic-name-longer-than-twelve-bytes", 0),
            ("clicks", 1),
            ("clicks", 0),
        ];
        // No keys at all, and keys after leading nulls.
        for keyed_row in [None, Some(3)] {
            let key_of = |i: usize| (Some(i) == keyed_row).then(|| format!("k{i}").into_bytes());
            let mut columns = RecordColumns::with_capacity(1);
            for (i, &(topic, partition)) in rows.iter().enumerate() {
                columns.push(&Record {
                    topic: topic.into(),
                    partition,
                    offset: i as i64,
                    timestamp: 100 + i as i64,
                    key: key_of(i),
                    value: Some(vec![b'v'; i]),
                    headers: Vec::new(),
                });
            }
            let columns = columns.finish();
            let reader = Record::reader(&columns).unwrap();
            for (i, &(topic, partition)) in rows.iter().enumerate() {
                let r = Record::get(&reader, i);
                assert_eq!((r.topic, r.partition), (topic, partition), "row {i}");
                assert_eq!((r.offset, r.timestamp), (i as i64, 100 + i as i64));
                assert_eq!(r.key, key_of(i).as_deref(), "row {i}");
                assert_eq!(r.value.map(<[u8]>::len), Some(i));
            }
        }
    }

    #[test]
    fn a_word_that_is_not_utf8_is_skipped_and_the_others_count() {
        // A lone continuation byte, a truncated two-byte character, an
        // overlong encoding: at the start, inside and past eight bytes.
        assert_eq!(value_words(b"ok \x80bad fine"), ["ok", "fine"]);
        assert_eq!(value_words(b"caf\xc3 caf\xc3\xa9"), ["café"]);
        assert_eq!(value_words(b"\xc0\xafslash eightbyt\xffe tail"), ["tail"]);
        assert_eq!(value_words(b"\xff"), Vec::<&str>::new());
        assert_eq!(value_words(b"longer-than-eight-bytes\xfe x"), ["x"]);
        // Bytes of an invalid word never leak into the next one.
        assert_eq!(value_words(b"\xe2\x82 \xac"), Vec::<&str>::new());
    }

    #[test]
    fn ascii_words_are_std_split_ascii_whitespace() {
        for text in [
            "",
            " ",
            "a",
            "  leading and trailing  ",
            "one\ttab\nnew\x0cline\rreturn",
            "control\x01bytes\x1fstay\x7finside words",
            "exactly8 exactly8",
            "a-word-much-longer-than-sixteen-bytes and\u{a0}non-breaking",
            "naïve café ünïcödé\u{2003}em-space",
            "\x0b vertical tab is not ASCII whitespace in Rust",
        ] {
            same_as_std(text);
        }
        // Every short string over a small alphabet that has all the byte
        // classes: whitespace, control, letters, a multi-byte character.
        let alphabet = [" ", "\t", "\x01", "a", "b", "é", "\n", "zzzzzzz"];
        let mut text = String::new();
        for n in 0..5u32 {
            for mut code in 0..alphabet.len().pow(n) {
                text.clear();
                for _ in 0..n {
                    text.push_str(alphabet[code % alphabet.len()]);
                    code /= alphabet.len();
                }
                same_as_std(&text);
            }
        }
    }
}
