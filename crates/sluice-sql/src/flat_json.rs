//! The fast path of JSON streams: flat JSON objects decoded in one pass
//! straight into Arrow columns, for streams whose columns are all scalars
//! (BIGINT, INT, DOUBLE, BOOLEAN, TEXT, TIMESTAMP: Nexmark's events, click
//! streams, most logs).
//!
//! arrow-json tokenizes every record into a tape, copies each string
//! twice (into the tape, then into the column), looks every key up and
//! parses timestamps with a general parser: two thirds of Nexmark q0's
//! CPU time. Here each value is scanned once and each string copied once.
//!
//! It only answers where its answer is certainly arrow-json's: anything
//! else (a string where a number is declared, a fraction in an integer
//! column, an escaped key, a field given twice, a nested value in a
//! declared column, a non-UTF-8 byte, malformed JSON) makes it give up on
//! the whole chunk, and the caller decodes that chunk with arrow-json,
//! which also tells good records from bad and names what is wrong. So a
//! stream decodes to the same rows with or without it.
//!
//! This module owns that fast path; it never decides what a bad record is
//! and never reports errors.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, BinaryViewArray, BooleanArray, BooleanBufferBuilder, Float64Array, Int32Array,
    Int64Array, NullBufferBuilder, StringArray, TimestampMicrosecondArray,
    TimestampMillisecondArray, TimestampNanosecondArray, TimestampSecondArray,
};
use datafusion::arrow::buffer::OffsetBuffer;
use datafusion::arrow::datatypes::{DataType, Field, TimeUnit};

/// A stream's columns, ready to decode chunks of JSON values.
#[derive(Debug)]
pub(crate) struct FlatJson {
    columns: Vec<Column>,
}

#[derive(Debug)]
struct Column {
    name: Box<[u8]>,
    kind: Kind,
    nullable: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Int64,
    Int32,
    Float64,
    Boolean,
    Utf8,
    Timestamp(TimeUnit),
}

/// The fast path cannot tell this chunk apart from what arrow-json would
/// make of it: decode it the general way.
#[derive(Debug)]
struct GiveUp;

type Step<T> = Result<T, GiveUp>;

/// Objects nest no deeper than this in fields no column reads; deeper
/// ones go the general way rather than deep into the stack.
const MAX_SKIPPED_DEPTH: u32 = 32;

impl FlatJson {
    /// The decoder of `fields`, or `None` when a field's type has no fast
    /// path (BYTEA) or there are more fields than one row's bit mask of
    /// seen fields holds.
    pub(crate) fn new(fields: &[Field]) -> Option<FlatJson> {
        if fields.is_empty() || fields.len() > 64 {
            return None;
        }
        let columns = fields
            .iter()
            .map(|f| {
                let kind = match f.data_type() {
                    DataType::Int64 => Kind::Int64,
                    DataType::Int32 => Kind::Int32,
                    DataType::Float64 => Kind::Float64,
                    DataType::Boolean => Kind::Boolean,
                    DataType::Utf8 => Kind::Utf8,
                    DataType::Timestamp(unit, None) => Kind::Timestamp(*unit),
                    _ => return None,
                };
                Some(Column {
                    name: f.name().as_bytes().into(),
                    kind,
                    nullable: f.is_nullable(),
                })
            })
            .collect::<Option<Vec<_>>>()?;
        Some(FlatJson { columns })
    }

    /// One column per field for every value of `values`, or `None` when
    /// some value is not certainly decoded as arrow-json would decode it.
    pub(crate) fn decode(&self, values: &BinaryViewArray) -> Option<Vec<ArrayRef>> {
        if values.null_count() > 0 {
            return None;
        }
        let rows = values.len();
        let mut builders: Vec<Builder> = self
            .columns
            .iter()
            .map(|c| Builder::new(c.kind, rows))
            .collect();
        for value in values.iter().flatten() {
            self.decode_object(value, &mut builders).ok()?;
        }
        builders
            .into_iter()
            .zip(&self.columns)
            .map(|(b, c)| b.finish(c.kind))
            .collect()
    }

    fn decode_object(&self, value: &[u8], builders: &mut [Builder]) -> Step<()> {
        // Every string arrow-json reads must be UTF-8, skipped ones too.
        // (simdutf8: std's check was a twentieth of a top-N query's time.)
        if simdutf8::basic::from_utf8(value).is_err() {
            return Err(GiveUp);
        }
        let mut cur = Cursor {
            bytes: value,
            at: 0,
        };
        cur.skip_ws();
        cur.expect(b'{')?;
        let mut seen = 0u64;
        // Fields usually come in the declared order: try the next one first.
        let mut next_column = 0;
        cur.skip_ws();
        if cur.peek() == Some(b'}') {
            cur.at += 1;
        } else {
            loop {
                cur.expect(b'"')?;
                let key = cur.plain_key()?;
                cur.skip_ws();
                cur.expect(b':')?;
                cur.skip_ws();
                match self.column_of(key, next_column) {
                    Some(i) => {
                        if seen & (1 << i) != 0 {
                            return Err(GiveUp);
                        }
                        seen |= 1 << i;
                        let column = &self.columns[i];
                        if cur.take_literal(b"null") {
                            if !column.nullable {
                                return Err(GiveUp);
                            }
                            builders[i].push_null();
                        } else {
                            builders[i].push(column.kind, &mut cur)?;
                        }
                        next_column = i + 1;
                    }
                    None => cur.skip_value(0)?,
                }
                cur.skip_ws();
                match cur.next_byte()? {
                    b',' => cur.skip_ws(),
                    b'}' => break,
                    _ => return Err(GiveUp),
                }
            }
        }
        cur.skip_ws();
        if cur.at != value.len() {
            return Err(GiveUp);
        }
        // Fields the object does not have are NULL.
        for (i, column) in self.columns.iter().enumerate() {
            if seen & (1 << i) == 0 {
                if !column.nullable {
                    return Err(GiveUp);
                }
                builders[i].push_null();
            }
        }
        Ok(())
    }

    fn column_of(&self, key: &[u8], hint: usize) -> Option<usize> {
        if self.columns.get(hint).is_some_and(|c| &*c.name == key) {
            return Some(hint);
        }
        self.columns.iter().position(|c| &*c.name == key)
    }
}

/// A position in one JSON value.
struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn next_byte(&mut self) -> Step<u8> {
        let b = self.peek().ok_or(GiveUp)?;
        self.at += 1;
        Ok(b)
    }

    fn expect(&mut self, byte: u8) -> Step<()> {
        if self.next_byte()? == byte {
            Ok(())
        } else {
            Err(GiveUp)
        }
    }

    fn skip_ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    fn take_literal(&mut self, literal: &[u8]) -> bool {
        let found = self.bytes[self.at..].starts_with(literal);
        if found {
            self.at += literal.len();
        }
        found
    }

    /// The rest of a string just opened, up to its closing quote, when it
    /// has no escape and no control character (else: give up).
    fn plain_key(&mut self) -> Step<&'a [u8]> {
        let (text, escaped) = self.string_run()?;
        if escaped {
            return Err(GiveUp);
        }
        self.at += 1;
        Ok(text)
    }

    /// From inside a string: the bytes up to the next quote or backslash,
    /// which the cursor is left on, and whether it is a backslash.
    fn string_run(&mut self) -> Step<(&'a [u8], bool)> {
        let rest = &self.bytes[self.at..];
        let end = memchr::memchr2(b'"', b'\\', rest).ok_or(GiveUp)?;
        let run = &rest[..end];
        // Raw control characters are not JSON.
        if run.iter().fold(false, |any, &b| any | (b < 0x20)) {
            return Err(GiveUp);
        }
        self.at += end;
        Ok((run, rest[end] == b'\\'))
    }

    /// After a backslash: the character it escapes, appended to `out`.
    fn unescape_into(&mut self, out: &mut Vec<u8>) -> Step<()> {
        self.expect(b'\\')?;
        let c = match self.next_byte()? {
            b'"' => '"',
            b'\\' => '\\',
            b'/' => '/',
            b'b' => '\u{8}',
            b'f' => '\u{c}',
            b'n' => '\n',
            b'r' => '\r',
            b't' => '\t',
            b'u' => {
                let high = self.hex4()?;
                let code = match high {
                    0xD800..=0xDBFF => {
                        if !self.take_literal(b"\\u") {
                            return Err(GiveUp);
                        }
                        let low = self.hex4()?;
                        if !(0xDC00..=0xDFFF).contains(&low) {
                            return Err(GiveUp);
                        }
                        0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00)
                    }
                    0xDC00..=0xDFFF => return Err(GiveUp),
                    c => c,
                };
                char::from_u32(code).ok_or(GiveUp)?
            }
            _ => return Err(GiveUp),
        };
        out.extend_from_slice(c.encode_utf8(&mut [0; 4]).as_bytes());
        Ok(())
    }

    fn hex4(&mut self) -> Step<u32> {
        let digits = self.bytes.get(self.at..self.at + 4).ok_or(GiveUp)?;
        let mut v = 0;
        for &d in digits {
            v = v << 4 | (d as char).to_digit(16).ok_or(GiveUp)?;
        }
        self.at += 4;
        Ok(v)
    }

    /// A string's content, unescaped, appended to `out` (the opening
    /// quote already read; the closing one is consumed).
    fn string_into(&mut self, out: &mut Vec<u8>) -> Step<()> {
        loop {
            let (run, escaped) = self.string_run()?;
            out.extend_from_slice(run);
            if !escaped {
                self.at += 1;
                return Ok(());
            }
            self.unescape_into(out)?;
        }
    }

    /// Skips a whole string (opening quote already read), checking its
    /// escapes.
    fn skip_string(&mut self, scratch: &mut Vec<u8>) -> Step<()> {
        loop {
            let (_, escaped) = self.string_run()?;
            if !escaped {
                self.at += 1;
                return Ok(());
            }
            scratch.clear();
            self.unescape_into(scratch)?;
        }
    }

    /// Where the JSON number starting here ends (the grammar of RFC 8259:
    /// no leading zeros, digits on both sides of a point).
    fn number_end(&self) -> Step<usize> {
        let b = self.bytes;
        let mut i = self.at;
        let digits = |mut i: usize| {
            let start = i;
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
            if i == start { Err(GiveUp) } else { Ok(i) }
        };
        if b.get(i) == Some(&b'-') {
            i += 1;
        }
        match b.get(i) {
            Some(b'0') => {
                i += 1;
                if b.get(i).is_some_and(u8::is_ascii_digit) {
                    return Err(GiveUp);
                }
            }
            Some(b'1'..=b'9') => i = digits(i)?,
            _ => return Err(GiveUp),
        }
        if b.get(i) == Some(&b'.') {
            i = digits(i + 1)?;
        }
        if let Some(b'e' | b'E') = b.get(i) {
            i += 1;
            if let Some(b'+' | b'-') = b.get(i) {
                i += 1;
            }
            i = digits(i)?;
        }
        Ok(i)
    }

    /// An integer literal (no fraction, no exponent) as an i64.
    fn integer(&mut self) -> Step<i64> {
        let end = self.number_end()?;
        let text = &self.bytes[self.at..end];
        let (negative, digits) = match text.split_first() {
            Some((b'-', rest)) => (true, rest),
            _ => (false, text),
        };
        let mut v: i64 = 0;
        for &d in digits {
            if !d.is_ascii_digit() {
                // A fraction or an exponent: arrow-json's float route.
                return Err(GiveUp);
            }
            let d = i64::from(d - b'0');
            v = v.checked_mul(10).ok_or(GiveUp)?;
            v = if negative {
                v.checked_sub(d)
            } else {
                v.checked_add(d)
            }
            .ok_or(GiveUp)?;
        }
        self.at = end;
        Ok(v)
    }

    fn float(&mut self) -> Step<f64> {
        let end = self.number_end()?;
        let text = std::str::from_utf8(&self.bytes[self.at..end]).map_err(|_| GiveUp)?;
        let v: f64 = text.parse().map_err(|_| GiveUp)?;
        if !v.is_finite() {
            return Err(GiveUp);
        }
        self.at = end;
        Ok(v)
    }

    /// A timestamp string `YYYY-MM-DD HH:MM:SS[.fraction][Z]` (or with a
    /// `T`), in `unit` since the epoch, UTC.
    fn timestamp(&mut self, unit: TimeUnit) -> Step<i64> {
        self.expect(b'"')?;
        let rest = &self.bytes[self.at..];
        let end = memchr::memchr(b'"', rest).ok_or(GiveUp)?;
        let v = parse_timestamp(&rest[..end], unit)?;
        self.at += end + 1;
        Ok(v)
    }

    /// Skips any JSON value, checking it is well formed.
    fn skip_value(&mut self, depth: u32) -> Step<()> {
        if depth > MAX_SKIPPED_DEPTH {
            return Err(GiveUp);
        }
        let mut scratch = Vec::new();
        match self.peek().ok_or(GiveUp)? {
            b'"' => {
                self.at += 1;
                self.skip_string(&mut scratch)
            }
            b'{' => {
                self.at += 1;
                self.skip_ws();
                if self.peek() == Some(b'}') {
                    self.at += 1;
                    return Ok(());
                }
                loop {
                    self.expect(b'"')?;
                    self.skip_string(&mut scratch)?;
                    self.skip_ws();
                    self.expect(b':')?;
                    self.skip_ws();
                    self.skip_value(depth + 1)?;
                    self.skip_ws();
                    match self.next_byte()? {
                        b',' => self.skip_ws(),
                        b'}' => return Ok(()),
                        _ => return Err(GiveUp),
                    }
                }
            }
            b'[' => {
                self.at += 1;
                self.skip_ws();
                if self.peek() == Some(b']') {
                    self.at += 1;
                    return Ok(());
                }
                loop {
                    self.skip_value(depth + 1)?;
                    self.skip_ws();
                    match self.next_byte()? {
                        b',' => self.skip_ws(),
                        b']' => return Ok(()),
                        _ => return Err(GiveUp),
                    }
                }
            }
            b't' | b'f' | b'n' => {
                if self.take_literal(b"true")
                    || self.take_literal(b"false")
                    || self.take_literal(b"null")
                {
                    Ok(())
                } else {
                    Err(GiveUp)
                }
            }
            _ => {
                self.at = self.number_end()?;
                Ok(())
            }
        }
    }
}

/// `YYYY-MM-DD[ T]HH:MM:SS[.1 to 9 digits][Z]`, the form event streams
/// write; other forms (dates alone, offsets, leap seconds) give up.
fn parse_timestamp(s: &[u8], unit: TimeUnit) -> Step<i64> {
    if s.len() < 19 {
        return Err(GiveUp);
    }
    let num = |range: std::ops::Range<usize>| -> Step<u32> {
        s[range].iter().try_fold(0u32, |v, &d| {
            if d.is_ascii_digit() {
                Ok(v * 10 + u32::from(d - b'0'))
            } else {
                Err(GiveUp)
            }
        })
    };
    let separators_ok = s[4] == b'-'
        && s[7] == b'-'
        && matches!(s[10], b' ' | b'T' | b't')
        && s[13] == b':'
        && s[16] == b':';
    if !separators_ok {
        return Err(GiveUp);
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month)
        || day == 0
        || day > days_in_month(year, month)
        || hour > 23
        || minute > 59
        || second > 59
    {
        return Err(GiveUp);
    }
    let mut rest = &s[19..];
    let mut nanos = 0u32;
    if let Some((b'.', fraction)) = rest.split_first() {
        let digits = fraction.iter().take_while(|d| d.is_ascii_digit()).count();
        if digits == 0 || digits > 9 {
            return Err(GiveUp);
        }
        nanos = num(20..20 + digits)? * 10u32.pow(9 - digits as u32);
        rest = &fraction[digits..];
    }
    if !matches!(rest, [] | [b'Z' | b'z']) {
        return Err(GiveUp);
    }
    let seconds = days_from_civil(i64::from(year), month, day) * 86_400
        + i64::from(hour * 3600 + minute * 60 + second);
    let nanos = i64::from(nanos);
    Ok(match unit {
        TimeUnit::Second => seconds,
        TimeUnit::Millisecond => seconds * 1_000 + nanos / 1_000_000,
        TimeUnit::Microsecond => seconds * 1_000_000 + nanos / 1_000,
        TimeUnit::Nanosecond => seconds
            .checked_mul(1_000_000_000)
            .and_then(|n| n.checked_add(nanos))
            .ok_or(GiveUp)?,
    })
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if year.is_multiple_of(4) && (!year.is_multiple_of(100) || year.is_multiple_of(400)) => {
            29
        }
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month_from_march = i64::from((month + 9) % 12);
    let day_of_year = (153 * month_from_march + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// One column's values as they are decoded.
enum Builder {
    Int64(Vec<i64>, NullBufferBuilder),
    Int32(Vec<i32>, NullBufferBuilder),
    Float64(Vec<f64>, NullBufferBuilder),
    Boolean(BooleanBufferBuilder, NullBufferBuilder),
    Utf8 {
        offsets: Vec<i32>,
        data: Vec<u8>,
        nulls: NullBufferBuilder,
    },
}

impl Builder {
    fn new(kind: Kind, rows: usize) -> Builder {
        let nulls = NullBufferBuilder::new(rows);
        match kind {
            Kind::Int64 | Kind::Timestamp(_) => Builder::Int64(Vec::with_capacity(rows), nulls),
            Kind::Int32 => Builder::Int32(Vec::with_capacity(rows), nulls),
            Kind::Float64 => Builder::Float64(Vec::with_capacity(rows), nulls),
            Kind::Boolean => Builder::Boolean(BooleanBufferBuilder::new(rows), nulls),
            Kind::Utf8 => {
                let mut offsets = Vec::with_capacity(rows + 1);
                offsets.push(0);
                Builder::Utf8 {
                    offsets,
                    data: Vec::with_capacity(rows * 16),
                    nulls,
                }
            }
        }
    }

    fn push_null(&mut self) {
        match self {
            Builder::Int64(v, n) => {
                v.push(0);
                n.append_null();
            }
            Builder::Int32(v, n) => {
                v.push(0);
                n.append_null();
            }
            Builder::Float64(v, n) => {
                v.push(0.0);
                n.append_null();
            }
            Builder::Boolean(v, n) => {
                v.append(false);
                n.append_null();
            }
            Builder::Utf8 {
                offsets,
                data,
                nulls,
            } => {
                offsets.push(data.len() as i32);
                nulls.append_null();
            }
        }
    }

    fn push(&mut self, kind: Kind, cur: &mut Cursor<'_>) -> Step<()> {
        match self {
            Builder::Int64(v, n) => {
                v.push(match kind {
                    Kind::Timestamp(unit) => cur.timestamp(unit)?,
                    _ => cur.integer()?,
                });
                n.append_non_null();
            }
            Builder::Int32(v, n) => {
                v.push(i32::try_from(cur.integer()?).map_err(|_| GiveUp)?);
                n.append_non_null();
            }
            Builder::Float64(v, n) => {
                v.push(cur.float()?);
                n.append_non_null();
            }
            Builder::Boolean(v, n) => {
                if cur.take_literal(b"true") {
                    v.append(true);
                } else if cur.take_literal(b"false") {
                    v.append(false);
                } else {
                    return Err(GiveUp);
                }
                n.append_non_null();
            }
            Builder::Utf8 {
                offsets,
                data,
                nulls,
            } => {
                cur.expect(b'"')?;
                cur.string_into(data)?;
                offsets.push(i32::try_from(data.len()).map_err(|_| GiveUp)?);
                nulls.append_non_null();
            }
        }
        Ok(())
    }

    fn finish(self, kind: Kind) -> Option<ArrayRef> {
        Some(match self {
            Builder::Int64(v, mut n) => {
                let nulls = n.finish();
                match kind {
                    Kind::Timestamp(TimeUnit::Second) => {
                        Arc::new(TimestampSecondArray::new(v.into(), nulls))
                    }
                    Kind::Timestamp(TimeUnit::Millisecond) => {
                        Arc::new(TimestampMillisecondArray::new(v.into(), nulls))
                    }
                    Kind::Timestamp(TimeUnit::Microsecond) => {
                        Arc::new(TimestampMicrosecondArray::new(v.into(), nulls))
                    }
                    Kind::Timestamp(TimeUnit::Nanosecond) => {
                        Arc::new(TimestampNanosecondArray::new(v.into(), nulls))
                    }
                    _ => Arc::new(Int64Array::new(v.into(), nulls)),
                }
            }
            Builder::Int32(v, mut n) => Arc::new(Int32Array::new(v.into(), n.finish())),
            Builder::Float64(v, mut n) => Arc::new(Float64Array::new(v.into(), n.finish())),
            Builder::Boolean(mut v, mut n) => Arc::new(BooleanArray::new(v.finish(), n.finish())),
            Builder::Utf8 {
                offsets,
                data,
                mut nulls,
            } => {
                // Checks the offsets and the UTF-8 once more; the values
                // were validated on the way in, so this never fails.
                let offsets = OffsetBuffer::new(offsets.into());
                Arc::new(StringArray::try_new(offsets, data.into(), nulls.finish()).ok()?)
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::Schema;
    use datafusion::arrow::record_batch::RecordBatch;

    fn fields() -> Vec<Field> {
        vec![
            Field::new("auction", DataType::Int64, true),
            Field::new("n", DataType::Int32, true),
            Field::new("price", DataType::Float64, true),
            Field::new("ok", DataType::Boolean, true),
            Field::new("url", DataType::Utf8, true),
            Field::new(
                "date_time",
                DataType::Timestamp(TimeUnit::Millisecond, None),
                true,
            ),
        ]
    }

    /// What arrow-json makes of `values` (all rows, or an error).
    fn arrow_json(fields: &[Field], values: &[&str]) -> Option<Vec<ArrayRef>> {
        let schema = Arc::new(Schema::new(fields.to_vec()));
        let mut decoder = datafusion::arrow::json::ReaderBuilder::new(schema.clone())
            .with_batch_size(values.len().max(1))
            .build_decoder()
            .ok()?;
        for v in values {
            decoder.decode(v.as_bytes()).ok()?;
            decoder.decode(b"\n").ok()?;
        }
        let batch = decoder
            .flush()
            .ok()?
            .unwrap_or(RecordBatch::new_empty(schema));
        (batch.num_rows() == values.len()).then(|| batch.columns().to_vec())
    }

    fn fast(fields: &[Field], values: &[&str]) -> Option<Vec<ArrayRef>> {
        let array = BinaryViewArray::from_iter_values(values.iter().map(|v| v.as_bytes()));
        FlatJson::new(fields)?.decode(&array)
    }

    /// Whenever the fast path answers, arrow-json gives the same columns.
    fn agrees(fields: &[Field], values: &[&str]) -> bool {
        let fast = fast(fields, values);
        if let Some(columns) = &fast {
            assert_eq!(
                Some(columns),
                arrow_json(fields, values).as_ref(),
                "{values:?}"
            );
        }
        fast.is_some()
    }

    #[test]
    fn decodes_flat_objects_as_arrow_json_does() {
        let values = [
            r#"{"auction":1000,"n":-7,"price":12.5,"ok":true,"url":"https://x/y?z=1","date_time":"2015-07-15 00:00:00.123"}"#,
            r#" { "url" : "esc \"q\" \\ \/ \n\t \u00e9 \ud83d\ude00 é" , "auction" : -9223372036854775808 , "extra": {"a":[1,2.5e-3,{"b":null}],"c":"\u0041"} , "date_time":"1969-12-31T23:59:59.9995Z" } "#,
            r#"{"auction":null,"price":1e300,"ok":false,"date_time":"2000-02-29 23:59:59"}"#,
            r#"{}"#,
            r#"{"date_time":"1600-03-01 12:00:00.000000001","price":-0,"n":2147483647}"#,
        ];
        assert!(agrees(&fields(), &values));
        // Each alone, too.
        for v in values {
            assert!(agrees(&fields(), &[v]), "{v}");
        }
        assert!(agrees(&fields(), &[]));
    }

    #[test]
    fn gives_up_where_arrow_json_coerces_or_rejects() {
        for v in [
            r#"{"auction":"12"}"#,      // a string for a number: arrow-json parses it
            r#"{"auction":1.0}"#,       // a fraction in an integer column
            r#"{"auction":1e3}"#,       // an exponent in an integer column
            r#"{"n":2147483648}"#,      // beyond INT
            r#"{"auction":01}"#,        // a leading zero
            r#"{"url":5}"#,             // a number for a string
            r#"{"url":"a","url":"b"}"#, // a field twice: the last wins there
            r#"{"u\u0072l":"a"}"#,      // an escaped key
            r#"{"url":"tab	inside"}"#,  // a raw control character
            r#"{"url":"\ud800"}"#,      // a lone surrogate
            r#"{"date_time":"2015-07-15"}"#,
            r#"{"date_time":"2015-07-15 00:00:00+02:00"}"#,
            r#"{"date_time":"2015-02-29 00:00:00"}"#,
            r#"{"date_time":"2015-07-15 00:00:60"}"#,
            r#"{"date_time":1436918400000}"#,
            r#"{"ok":1}"#,
            r#"{"auction":1}{"auction":2}"#,
            r#"{"auction":1,}"#,
            r#"{"extra":[1,]}"#,
            r#"{"extra":tru}"#,
            r#"[1]"#,
            r#"null"#,
            "",
            r#"{"auction":1"#,
        ] {
            assert!(!agrees(&fields(), &[v]), "{v}");
        }
        let bad_utf8 = BinaryViewArray::from_iter_values([&b"{\"x\":\"\xff\"}"[..]]);
        assert!(
            FlatJson::new(&fields())
                .unwrap()
                .decode(&bad_utf8)
                .is_none()
        );
    }

    #[test]
    fn non_nullable_columns_need_their_value() {
        let fields = vec![Field::new("id", DataType::Int64, false)];
        assert!(agrees(&fields, &[r#"{"id":3}"#]));
        assert!(!agrees(&fields, &[r#"{"id":null}"#]));
        assert!(!agrees(&fields, &[r#"{"other":1}"#]));
    }

    #[test]
    fn other_column_types_take_the_general_path() {
        assert!(FlatJson::new(&[Field::new("b", DataType::Binary, true)]).is_none());
        assert!(FlatJson::new(&[]).is_none());
    }

    #[test]
    fn timestamps_agree_with_arrow_over_the_calendar() {
        // Every day of four centuries' worth of leap-year rules, at
        // several times and precisions.
        let field = [Field::new(
            "t",
            DataType::Timestamp(TimeUnit::Nanosecond, None),
            true,
        )];
        let mut values = Vec::new();
        for year in [1, 1600, 1899, 1900, 1970, 1999, 2000, 2024, 2100, 2262] {
            for month in 1..=12u32 {
                for day in 1..=days_in_month(year, month) {
                    let frac = ["", ".5", ".123", ".123456", ".987654321"]
                        [(day as usize + month as usize) % 5];
                    values.push(format!(
                        r#"{{"t":"{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}{frac}"}}"#,
                        day % 24,
                        (day * 7) % 60,
                        (day * 13) % 60
                    ));
                }
            }
        }
        // Nanoseconds overflow i64 outside 1677..2262: those give up.
        let in_range: Vec<&str> = values
            .iter()
            .map(String::as_str)
            .filter(|v| !v.contains("\"0001") && !v.contains("\"1600"))
            .filter(|v| !v.contains("\"2262-") || v.contains("\"2262-01"))
            .collect();
        assert!(agrees(&field, &in_range));
        for unit in [
            TimeUnit::Second,
            TimeUnit::Millisecond,
            TimeUnit::Microsecond,
        ] {
            let field = [Field::new("t", DataType::Timestamp(unit, None), true)];
            let all: Vec<&str> = values.iter().map(String::as_str).collect();
            assert!(agrees(&field, &all));
        }
    }
}
