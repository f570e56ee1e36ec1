//! Scalar functions Sluice adds to DataFusion's.
//!
//! `split(text, delimiter)` is `string_to_array` without copying: the
//! pieces are string views into the text's own buffers, so splitting a
//! batch of lines into words (and unnesting them) moves 16 bytes per word
//! instead of the word's bytes, twice.
//!
//! `split_index(text, delimiter, index)` and `regexp_extract(text,
//! pattern[, group])` are Flink's, with Flink's answers (NULL where Flink
//! gives NULL), so Nexmark q21 and q22 run as published; so are
//! `date_format(ts, 'yyyy-MM-dd')` (Java's date patterns, rewritten into
//! DataFusion's `to_char` when the query is planned) and `hour(ts)`.
//!
//! This module owns these functions; it never touches state.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, ListArray, StringBuilder, StringViewArray,
};
use datafusion::arrow::buffer::{OffsetBuffer, ScalarBuffer};
use datafusion::arrow::datatypes::{DataType, Field};
use datafusion::common::{ScalarValue, exec_err, plan_err};
use datafusion::error::Result;
use datafusion::logical_expr::simplify::{ExprSimplifyResult, SimplifyContext};
use datafusion::logical_expr::{
    ColumnarValue, Expr, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};

/// `split(text, delimiter)` → the pieces between delimiters, as a list of
/// string views (empty pieces kept, as `string_to_array`).
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct Split {
    signature: Signature,
}

pub(crate) fn split() -> ScalarUDF {
    ScalarUDF::from(Split {
        signature: Signature::string(2, Volatility::Immutable),
    })
}

fn list_type() -> DataType {
    DataType::List(Arc::new(Field::new_list_field(DataType::Utf8View, true)))
}

impl ScalarUDFImpl for Split {
    fn name(&self) -> &str {
        "split"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(list_type())
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [text, delimiter] = args.args.as_slice() else {
            return exec_err!("split(text, delimiter) takes two arguments");
        };
        let delimiter = match delimiter {
            ColumnarValue::Scalar(
                ScalarValue::Utf8(Some(d))
                | ScalarValue::Utf8View(Some(d))
                | ScalarValue::LargeUtf8(Some(d)),
            ) => d.clone(),
            _ => return exec_err!("split(text, delimiter): the delimiter must be a constant text"),
        };
        let text = text.to_array(args.number_rows)?;
        // Utf8 → Utf8View points at the same bytes.
        let text = datafusion::arrow::compute::cast(&text, &DataType::Utf8View)?;
        let text = text
            .as_any()
            .downcast_ref::<StringViewArray>()
            .ok_or_else(|| {
                datafusion::error::DataFusionError::Execution("split: not a text column".into())
            })?;
        Ok(ColumnarValue::Array(split_views(text, &delimiter)))
    }
}

fn split_views(text: &StringViewArray, delimiter: &str) -> ArrayRef {
    use datafusion::arrow::array::builder::make_view;
    let views = text.views();
    let mut out: Vec<u128> = Vec::with_capacity(text.len() * 4);
    let mut offsets: Vec<i32> = Vec::with_capacity(text.len() + 1);
    offsets.push(0);
    for (i, &raw) in views.iter().enumerate() {
        if text.is_null(i) {
            offsets.push(out.len() as i32);
            continue;
        }
        let s = text.value(i);
        let len = raw as u32;
        // Where the value's bytes live (long values only; short ones are
        // inline, and so are all their pieces).
        let (buffer, base) = if len > 12 {
            ((raw >> 64) as u32, (raw >> 96) as u32)
        } else {
            (0, 0)
        };
        let mut push = |piece: &[u8]| {
            let start = piece.as_ptr() as usize - s.as_ptr() as usize;
            out.push(make_view(piece, buffer, base + start as u32));
        };
        match delimiter.as_bytes() {
            [] => push(s.as_bytes()),
            // One ASCII byte (a space, a comma): a plain byte scan, far
            // cheaper per short word than a substring search. Splitting
            // at an ASCII byte keeps every piece valid UTF-8.
            &[d] if d.is_ascii() => {
                let bytes = s.as_bytes();
                let mut start = 0;
                for (at, &b) in bytes.iter().enumerate() {
                    if b == d {
                        push(&bytes[start..at]);
                        start = at + 1;
                    }
                }
                push(&bytes[start..]);
            }
            _ => s.split(delimiter).for_each(|piece| push(piece.as_bytes())),
        }
        offsets.push(out.len() as i32);
    }
    // SAFETY: every view is either inline or points at a valid UTF-8 range
    // (a piece of a valid string split at a UTF-8 delimiter) of a buffer
    // the new array shares with the input.
    let values = unsafe {
        StringViewArray::new_unchecked(ScalarBuffer::from(out), text.data_buffers().to_vec(), None)
    };
    Arc::new(ListArray::new(
        Arc::new(Field::new_list_field(DataType::Utf8View, true)),
        OffsetBuffer::new(ScalarBuffer::from(offsets)),
        Arc::new(values),
        text.nulls().cloned(),
    ))
}

/// The arguments of a function as arrays of one type each (scalars
/// repeated), for functions that go row by row anyway.
fn text_arg(arg: &ColumnarValue, rows: usize) -> Result<ArrayRef> {
    Ok(datafusion::arrow::compute::cast(
        &arg.to_array(rows)?,
        &DataType::Utf8,
    )?)
}

fn int_arg(arg: &ColumnarValue, rows: usize) -> Result<ArrayRef> {
    Ok(datafusion::arrow::compute::cast(
        &arg.to_array(rows)?,
        &DataType::Int64,
    )?)
}

/// `split_index(text, delimiter, index)`: the `index`-th (from 0) piece
/// of `text` split at every `delimiter`, empty pieces kept; NULL when
/// the index is negative or past the last piece, when `text` is empty,
/// or when an argument is NULL (Flink's `SPLIT_INDEX`).
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct SplitIndex {
    signature: Signature,
}

pub(crate) fn split_index() -> ScalarUDF {
    ScalarUDF::from(SplitIndex {
        signature: Signature::user_defined(Volatility::Immutable),
    })
}

impl ScalarUDFImpl for SplitIndex {
    fn name(&self) -> &str {
        "split_index"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, args: &[DataType]) -> Result<Vec<DataType>> {
        if args.len() != 3 {
            return plan_err!("split_index(text, delimiter, index) takes three arguments");
        }
        Ok(vec![DataType::Utf8, DataType::Utf8, DataType::Int64])
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn simplify(&self, args: Vec<Expr>, _info: &SimplifyContext) -> Result<ExprSimplifyResult> {
        if let Some(Expr::Literal(ScalarValue::Utf8(Some(d)), _)) = args.get(1)
            && d.is_empty()
        {
            return plan_err!("split_index(text, delimiter, index): the delimiter is empty");
        }
        Ok(ExprSimplifyResult::Original(args))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [text, delimiter, index] = args.args.as_slice() else {
            return exec_err!("split_index(text, delimiter, index) takes three arguments");
        };
        let rows = args.number_rows;
        let (text, delimiter, index) = (
            text_arg(text, rows)?,
            text_arg(delimiter, rows)?,
            int_arg(index, rows)?,
        );
        let (text, delimiter) = (text.as_string::<i32>(), delimiter.as_string::<i32>());
        let index = index.as_primitive::<datafusion::arrow::datatypes::Int64Type>();
        let mut out = StringBuilder::with_capacity(rows, 0);
        for row in 0..rows {
            if text.is_null(row) || delimiter.is_null(row) || index.is_null(row) {
                out.append_null();
                continue;
            }
            let (t, d) = (text.value(row), delimiter.value(row));
            if d.is_empty() {
                return exec_err!("split_index(text, delimiter, index): the delimiter is empty");
            }
            let piece = usize::try_from(index.value(row))
                .ok()
                .filter(|_| !t.is_empty())
                .and_then(|i| t.split(d).nth(i));
            out.append_option(piece);
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

/// `regexp_extract(text, pattern[, group])`: the text of capture group
/// `group` (0, the default: the whole match) of the first match of
/// `pattern` in `text`; NULL when nothing matches, the group did not take
/// part in the match or does not exist, or an argument is NULL (Flink's
/// `REGEXP_EXTRACT`). Patterns are Rust's `regex` syntax, which has no
/// look-around or backreferences; a pattern it cannot compile is refused
/// when the query is planned (or, when it comes from a column, fails the
/// batch naming it).
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct RegexpExtract {
    signature: Signature,
}

pub(crate) fn regexp_extract() -> ScalarUDF {
    ScalarUDF::from(RegexpExtract {
        signature: Signature::user_defined(Volatility::Immutable),
    })
}

fn compile(pattern: &str) -> Result<regex::Regex> {
    regex::Regex::new(pattern).map_err(|e| {
        datafusion::error::DataFusionError::Plan(format!(
            "regexp_extract: pattern {pattern:?} does not compile: {e}"
        ))
    })
}

impl ScalarUDFImpl for RegexpExtract {
    fn name(&self) -> &str {
        "regexp_extract"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, args: &[DataType]) -> Result<Vec<DataType>> {
        match args.len() {
            2 => Ok(vec![DataType::Utf8, DataType::Utf8]),
            3 => Ok(vec![DataType::Utf8, DataType::Utf8, DataType::Int64]),
            _ => plan_err!("regexp_extract(text, pattern[, group]) takes two or three arguments"),
        }
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn simplify(&self, args: Vec<Expr>, _info: &SimplifyContext) -> Result<ExprSimplifyResult> {
        if let Some(Expr::Literal(ScalarValue::Utf8(Some(pattern)), _)) = args.get(1) {
            compile(pattern)?;
        }
        Ok(ExprSimplifyResult::Original(args))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let rows = args.number_rows;
        let (text, pattern, group) = match args.args.as_slice() {
            [t, p] => (t, p, None),
            [t, p, g] => (t, p, Some(g)),
            _ => {
                return exec_err!(
                    "regexp_extract(text, pattern[, group]) takes two or three arguments"
                );
            }
        };
        // A constant pattern compiles once per call, not per row.
        let constant = match pattern {
            ColumnarValue::Scalar(ScalarValue::Utf8(Some(p))) => Some(compile(p)?),
            _ => None,
        };
        let text = text_arg(text, rows)?;
        let text = text.as_string::<i32>();
        let patterns = text_arg(pattern, rows)?;
        let patterns = patterns.as_string::<i32>();
        let groups = group.map(|g| int_arg(g, rows)).transpose()?;
        let groups = groups
            .as_ref()
            .map(|g| g.as_primitive::<datafusion::arrow::datatypes::Int64Type>());
        let mut out = StringBuilder::with_capacity(rows, 0);
        for row in 0..rows {
            if text.is_null(row) || patterns.is_null(row) || groups.is_some_and(|g| g.is_null(row))
            {
                out.append_null();
                continue;
            }
            let compiled;
            let re = match &constant {
                Some(re) => re,
                None => {
                    compiled = compile(patterns.value(row))?;
                    &compiled
                }
            };
            let group = groups.map_or(0, |g| g.value(row));
            let found = usize::try_from(group).ok().and_then(|g| {
                re.captures(text.value(row))
                    .and_then(|c| c.get(g))
                    .map(|m| m.as_str())
            });
            out.append_option(found);
        }
        Ok(ColumnarValue::Array(Arc::new(out.finish())))
    }
}

/// `date_format(ts, pattern)`: Flink's `DATE_FORMAT` with a Java
/// (`SimpleDateFormat`) pattern, constant, checked when the query is
/// planned (letters it does not know are refused then, naming them).
/// A pattern of numbers and text only ('yyyy-MM-dd', 'HH:mm': Nexmark's)
/// over a timestamp without a time zone is formatted here, digit by digit;
/// any other is rewritten into DataFusion's `to_char` (strftime), which
/// parses its format again for every value (a twentieth of Nexmark q16).
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct DateFormat {
    signature: Signature,
}

pub(crate) fn date_format() -> ScalarUDF {
    ScalarUDF::from(DateFormat {
        signature: Signature::any(2, Volatility::Immutable),
    })
}

/// A piece of a Java date pattern: text (quoted or not a letter), or a run
/// of one pattern letter.
enum JavaToken {
    Text(String),
    Letters(char, usize),
}

/// A Java (`SimpleDateFormat`) pattern in pieces: `'…'` quotes text, `''`
/// is a quote, a run of one letter is a field.
fn java_tokens(pattern: &str) -> Vec<JavaToken> {
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = Vec::new();
    let mut text = String::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' {
            let mut j = i + 1;
            if chars.get(j) == Some(&'\'') {
                text.push('\'');
                i += 2;
                continue;
            }
            while j < chars.len() && chars[j] != '\'' {
                text.push(chars[j]);
                j += 1;
            }
            i = j + 1;
            continue;
        }
        if !c.is_ascii_alphabetic() {
            text.push(c);
            i += 1;
            continue;
        }
        let mut run = 1;
        while chars.get(i + run) == Some(&c) {
            run += 1;
        }
        if !text.is_empty() {
            out.push(JavaToken::Text(std::mem::take(&mut text)));
        }
        out.push(JavaToken::Letters(c, run));
        i += run;
    }
    if !text.is_empty() {
        out.push(JavaToken::Text(text));
    }
    out
}

/// A Java date pattern as a strftime one.
pub(crate) fn java_to_strftime(pattern: &str) -> std::result::Result<String, String> {
    let mut out = String::new();
    for token in java_tokens(pattern) {
        let (c, run) = match token {
            JavaToken::Text(text) => {
                out.push_str(&text.replace('%', "%%"));
                continue;
            }
            JavaToken::Letters(c, run) => (c, run),
        };
        let spec = match (c, run) {
            ('y', 2) => "%y",
            ('y', _) => "%Y",
            ('M', 1) => "%-m",
            ('M', 2) => "%m",
            ('M', 3) => "%b",
            ('M', _) => "%B",
            ('d', 1) => "%-d",
            ('d', _) => "%d",
            ('H', 1) => "%-H",
            ('H', _) => "%H",
            ('h', 1) => "%-I",
            ('h', _) => "%I",
            ('m', 1) => "%-M",
            ('m', _) => "%M",
            ('s', 1) => "%-S",
            ('s', _) => "%S",
            ('S', 3) => "%3f",
            ('a', _) => "%p",
            ('E', 1..=3) => "%a",
            ('E', _) => "%A",
            ('D', _) => "%j",
            _ => {
                return Err(format!(
                    "date_format: the pattern letter {} is not supported (supported: y, M, d, H, h, m, s, SSS, a, E, D and quoted text)",
                    c.to_string().repeat(run)
                ));
            }
        };
        out.push_str(spec);
    }
    Ok(out)
}

impl ScalarUDFImpl for DateFormat {
    fn name(&self) -> &str {
        "date_format"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Utf8)
    }

    fn simplify(&self, args: Vec<Expr>, info: &SimplifyContext) -> Result<ExprSimplifyResult> {
        let [ts, Expr::Literal(ScalarValue::Utf8(Some(pattern)), _)] = args.as_slice() else {
            return plan_err!("date_format(ts, pattern): the pattern must be a constant text");
        };
        let strftime =
            java_to_strftime(pattern).map_err(datafusion::error::DataFusionError::Plan)?;
        let naive = matches!(info.get_data_type(ts), Ok(DataType::Timestamp(_, None)));
        if naive && numeric_pattern(pattern).is_some() {
            return Ok(ExprSimplifyResult::Original(args));
        }
        Ok(ExprSimplifyResult::Simplified(
            datafusion::functions::datetime::expr_fn::to_char(
                ts.clone(),
                datafusion::logical_expr::lit(strftime),
            ),
        ))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        let [ts, ColumnarValue::Scalar(ScalarValue::Utf8(Some(pattern)))] = args.args.as_slice()
        else {
            return exec_err!("date_format(ts, pattern): the pattern must be a constant text");
        };
        let Some(parts) = numeric_pattern(pattern) else {
            return exec_err!("date_format: the pattern {pattern:?} reached execution unplanned");
        };
        let is_scalar = matches!(ts, ColumnarValue::Scalar(_));
        let array = ts.to_array(args.number_rows)?;
        let Some(formatted) = format_timestamps(array.as_ref(), &parts)? else {
            // A year outside 0–9999: chrono's way of writing it.
            let strftime =
                java_to_strftime(pattern).map_err(datafusion::error::DataFusionError::Plan)?;
            return datafusion::functions::datetime::to_char().invoke_with_args(
                ScalarFunctionArgs {
                    args: vec![
                        ts.clone(),
                        ColumnarValue::Scalar(ScalarValue::Utf8(Some(strftime))),
                    ],
                    ..args
                },
            );
        };
        Ok(if is_scalar {
            ColumnarValue::Scalar(ScalarValue::try_from_array(&formatted, 0)?)
        } else {
            ColumnarValue::Array(Arc::new(formatted))
        })
    }
}

/// A piece of a pattern made of numbers and text.
#[derive(Debug, Clone, PartialEq)]
enum DatePart {
    /// A field, zero-padded to `width` digits (1: no padding).
    Number(DateField, usize),
    Text(String),
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum DateField {
    Year,
    /// The year's last two digits (`yy`).
    YearOfCentury,
    Month,
    Day,
    Hour,
    Minute,
    Second,
    Millisecond,
}

/// A Java date pattern as numbers and text, if it has nothing else (names
/// of months or days, AM/PM, 12-hour clocks, days of the year: those go to
/// `to_char`).
fn numeric_pattern(pattern: &str) -> Option<Vec<DatePart>> {
    java_tokens(pattern)
        .into_iter()
        .map(|token| {
            let (c, run) = match token {
                JavaToken::Text(text) => return Some(DatePart::Text(text)),
                JavaToken::Letters(c, run) => (c, run),
            };
            Some(match (c, run) {
                ('y', 2) => DatePart::Number(DateField::YearOfCentury, 2),
                ('y', _) => DatePart::Number(DateField::Year, 4),
                ('M', 1 | 2) => DatePart::Number(DateField::Month, run),
                ('d', _) => DatePart::Number(DateField::Day, run.min(2)),
                ('H', _) => DatePart::Number(DateField::Hour, run.min(2)),
                ('m', _) => DatePart::Number(DateField::Minute, run.min(2)),
                ('s', _) => DatePart::Number(DateField::Second, run.min(2)),
                ('S', 3) => DatePart::Number(DateField::Millisecond, 3),
                _ => return None,
            })
        })
        .collect()
}

/// Formats timestamps (any unit, no time zone) by `parts`; `None` when a
/// year falls outside 0–9999, whose writing is left to chrono.
fn format_timestamps(
    array: &dyn Array,
    parts: &[DatePart],
) -> Result<Option<datafusion::arrow::array::StringArray>> {
    use datafusion::arrow::datatypes::{
        ArrowPrimitiveType, TimeUnit, TimestampMicrosecondType, TimestampMillisecondType,
        TimestampNanosecondType, TimestampSecondType,
    };
    fn values<T: ArrowPrimitiveType<Native = i64>>(array: &dyn Array) -> Vec<Option<i64>> {
        array.as_primitive::<T>().iter().collect()
    }
    let (values, per_second): (Vec<Option<i64>>, i64) = match array.data_type() {
        DataType::Timestamp(TimeUnit::Second, None) => (values::<TimestampSecondType>(array), 1),
        DataType::Timestamp(TimeUnit::Millisecond, None) => {
            (values::<TimestampMillisecondType>(array), 1_000)
        }
        DataType::Timestamp(TimeUnit::Microsecond, None) => {
            (values::<TimestampMicrosecondType>(array), 1_000_000)
        }
        DataType::Timestamp(TimeUnit::Nanosecond, None) => {
            (values::<TimestampNanosecondType>(array), 1_000_000_000)
        }
        other => return exec_err!("date_format(ts, pattern): ts is a {other}, not a timestamp"),
    };
    let width: usize = parts
        .iter()
        .map(|p| match p {
            DatePart::Number(_, w) => (*w).max(2),
            DatePart::Text(t) => t.len(),
        })
        .sum();
    let mut out = StringBuilder::with_capacity(values.len(), values.len() * width);
    let mut text = String::with_capacity(width);
    for value in values {
        let Some(value) = value else {
            out.append_null();
            continue;
        };
        let seconds = value.div_euclid(per_second);
        let millis = value.rem_euclid(per_second) * 1000 / per_second;
        let (days, second_of_day) = (seconds.div_euclid(86_400), seconds.rem_euclid(86_400));
        let (year, month, day) = sluice_log::common::civil_from_days(days);
        if !(0..=9999).contains(&year) {
            return Ok(None);
        }
        text.clear();
        for part in parts {
            match part {
                DatePart::Text(t) => text.push_str(t),
                DatePart::Number(field, width) => {
                    let n = match field {
                        DateField::Year => year,
                        DateField::YearOfCentury => year % 100,
                        DateField::Month => month,
                        DateField::Day => day,
                        DateField::Hour => second_of_day / 3600,
                        DateField::Minute => second_of_day / 60 % 60,
                        DateField::Second => second_of_day % 60,
                        DateField::Millisecond => millis,
                    };
                    push_padded(&mut text, n, *width);
                }
            }
        }
        out.append_value(&text);
    }
    Ok(Some(out.finish()))
}

/// `n` (0 ≤ n < 10,000) in decimal, zero-padded to `width` digits.
fn push_padded(text: &mut String, n: i64, width: usize) {
    let digits = match n {
        0..=9 => 1,
        10..=99 => 2,
        100..=999 => 3,
        _ => 4,
    };
    for _ in digits..width {
        text.push('0');
    }
    let mut div = 10i64.pow(digits as u32 - 1);
    while div > 0 {
        text.push(char::from(b'0' + (n / div % 10) as u8));
        div /= 10;
    }
}

/// `hour(ts)`: Flink's `HOUR`, the hour of the day (0–23) as a BIGINT;
/// planned as `date_part('hour', ts)`.
#[derive(Debug, PartialEq, Eq, Hash)]
pub(crate) struct Hour {
    signature: Signature,
}

pub(crate) fn hour() -> ScalarUDF {
    ScalarUDF::from(Hour {
        signature: Signature::any(1, Volatility::Immutable),
    })
}

impl ScalarUDFImpl for Hour {
    fn name(&self) -> &str {
        "hour"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> Result<DataType> {
        Ok(DataType::Int64)
    }

    fn simplify(&self, args: Vec<Expr>, _info: &SimplifyContext) -> Result<ExprSimplifyResult> {
        let [ts] = args.as_slice() else {
            return plan_err!("hour(ts) takes one argument");
        };
        let part = datafusion::functions::datetime::expr_fn::date_part(
            datafusion::logical_expr::lit("hour"),
            ts.clone(),
        );
        Ok(ExprSimplifyResult::Simplified(Expr::Cast(
            datafusion::logical_expr::Cast::new(Box::new(part), DataType::Int64),
        )))
    }

    fn invoke_with_args(&self, _args: ScalarFunctionArgs) -> Result<ColumnarValue> {
        exec_err!("hour(ts) is planned as date_part('hour', ts)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::AsArray;

    /// Runs one of the functions through DataFusion's SQL.
    fn sql(query: &str) -> std::result::Result<Vec<Option<String>>, String> {
        let ctx = datafusion::prelude::SessionContext::new();
        for f in crate::scalar_functions() {
            ctx.register_udf(f);
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .map_err(|e| e.to_string())?;
        let batches = rt
            .block_on(async { ctx.sql(query).await?.collect().await })
            .map_err(|e| e.to_string())?;
        let mut out = Vec::new();
        for b in batches {
            let column = datafusion::arrow::compute::cast(b.column(0), &DataType::Utf8)
                .map_err(|e| e.to_string())?;
            out.extend(
                column
                    .as_string::<i32>()
                    .iter()
                    .map(|v| v.map(str::to_owned)),
            );
        }
        Ok(out)
    }

    fn one(query: &str) -> Option<String> {
        let rows = sql(query).unwrap_or_else(|e| panic!("{query}: {e}"));
        assert_eq!(rows.len(), 1, "{query}");
        rows.into_iter().next().flatten()
    }

    #[test]
    fn split_index_answers_as_flink() {
        let url = "'https://www.nexmark.com/abc/def/ghi/item.htm?query=1'";
        let at = |i: i64| one(&format!("SELECT split_index({url}, '/', {i})"));
        assert_eq!(at(0).as_deref(), Some("https:"));
        assert_eq!(at(1).as_deref(), Some(""));
        assert_eq!(at(3).as_deref(), Some("abc"));
        assert_eq!(at(6).as_deref(), Some("item.htm?query=1"));
        assert_eq!(at(7), None);
        assert_eq!(at(-1), None);
        assert_eq!(
            one("SELECT split_index('a::b', '::', 1)").as_deref(),
            Some("b")
        );
        assert_eq!(
            one("SELECT split_index('a,b', ',', CAST(1 AS INT))").as_deref(),
            Some("b")
        );
        assert_eq!(one("SELECT split_index('', ',', 0)"), None);
        assert_eq!(one("SELECT split_index(NULL, ',', 0)"), None);
        let e = sql("SELECT split_index('a', '', 0)").unwrap_err();
        assert!(e.contains("the delimiter is empty"), "{e}");
    }

    #[test]
    fn date_format_takes_java_patterns_and_hour_the_hour() {
        let ts = "TIMESTAMP '2015-07-15 09:05:07.042'";
        let fmt = |p: &str| {
            let quoted = p.replace('\'', "''");
            one(&format!("SELECT date_format({ts}, '{quoted}')"))
        };
        assert_eq!(fmt("yyyy-MM-dd").as_deref(), Some("2015-07-15"));
        assert_eq!(fmt("HH:mm").as_deref(), Some("09:05"));
        assert_eq!(
            fmt("yyyy-MM-dd HH:mm:ss.SSS").as_deref(),
            Some("2015-07-15 09:05:07.042")
        );
        assert_eq!(fmt("d/M/yy 'at' H%").as_deref(), Some("15/7/15 at 9%"));
        assert_eq!(
            one(&format!("SELECT CAST(hour({ts}) AS VARCHAR)")).as_deref(),
            Some("9")
        );
        // Names and 12-hour clocks go to to_char; a date before 1970, a
        // leap day and the end of a day through the digit path.
        assert_eq!(
            fmt("EEE d MMM yyyy, h a").as_deref(),
            Some("Wed 15 Jul 2015, 9 AM")
        );
        let at = |ts: &str, p: &str| one(&format!("SELECT date_format(TIMESTAMP '{ts}', '{p}')"));
        assert_eq!(
            at("1969-12-31 23:59:59.999", "yyyy-MM-dd HH:mm:ss.SSS").as_deref(),
            Some("1969-12-31 23:59:59.999")
        );
        assert_eq!(
            at("2024-02-29 00:00:00", "yy/M/d").as_deref(),
            Some("24/2/29")
        );
        assert_eq!(at("1700-03-01 00:00:00", "yyyy").as_deref(), Some("1700"));
        // Year 10000 (milliseconds reach it): written by to_char, as before.
        assert_eq!(
            one("SELECT date_format(to_timestamp_millis(253402300800000), 'yyyy-MM')").as_deref(),
            Some("+10000-01")
        );
        let e = sql(&format!("SELECT date_format({ts}, 'yyyy-ww')")).unwrap_err();
        assert!(e.contains("the pattern letter ww is not supported"), "{e}");
    }

    #[test]
    fn numeric_patterns_format_as_to_char_does() {
        use datafusion::arrow::array::TimestampMillisecondArray;
        use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
        // Every day from 1600 to 2400 at a changing time of day, against
        // arrow's (chrono's) formatting of the same strftime pattern.
        let step = 86_400_000 + 3_601_007;
        let values: Vec<i64> = (-11_676_096_000_000i64..13_569_465_600_000)
            .step_by(step)
            .collect();
        let array = TimestampMillisecondArray::from(values);
        for pattern in [
            "yyyy-MM-dd",
            "HH:mm",
            "yy/M/d H:m:s.SSS",
            "'at' yyyyMMddHHmmss",
        ] {
            let parts = numeric_pattern(pattern).unwrap();
            let ours = format_timestamps(&array, &parts).unwrap().unwrap();
            let strftime = java_to_strftime(pattern).unwrap();
            let options = FormatOptions::default().with_timestamp_format(Some(&strftime));
            let chrono = ArrayFormatter::try_new(&array, &options).unwrap();
            for i in 0..array.len() {
                assert_eq!(
                    ours.value(i),
                    chrono.value(i).to_string(),
                    "{pattern} at {i}"
                );
            }
        }
        assert_eq!(numeric_pattern("EEE"), None);
        assert_eq!(numeric_pattern("h:mm a"), None);
    }

    #[test]
    fn regexp_extract_answers_as_flink() {
        let q21 = |url: &str| {
            one(&format!(
                "SELECT regexp_extract('{url}', '(&|^)channel_id=([^&]*)', 2)"
            ))
        };
        assert_eq!(q21("channel_id=77&x=1").as_deref(), Some("77"));
        assert_eq!(q21("a=1&channel_id=&b").as_deref(), Some(""));
        assert_eq!(q21("a=1&xchannel_id=5"), None);
        assert_eq!(
            one("SELECT regexp_extract('foo123bar', '[0-9]+')").as_deref(),
            Some("123")
        );
        // A group that does not exist, or took no part in the match.
        assert_eq!(one("SELECT regexp_extract('ab', '(a)|(b)', 2)"), None);
        assert_eq!(one("SELECT regexp_extract('ab', '(a)', 5)"), None);
        assert_eq!(one("SELECT regexp_extract(NULL, 'a')"), None);
        let e = sql("SELECT regexp_extract('ab', '(a')").unwrap_err();
        assert!(e.contains("does not compile"), "{e}");
    }

    #[test]
    fn pieces_are_views_into_the_text() {
        let text = StringViewArray::from(vec![
            Some("a  bb a-word-longer-than-twelve"),
            None,
            Some(""),
            Some("one"),
        ]);
        let list = split_views(&text, " ");
        let list = list.as_list::<i32>();
        let pieces = |i: usize| -> Vec<String> {
            list.value(i)
                .as_string_view()
                .iter()
                .map(|p| p.unwrap_or("").to_string())
                .collect()
        };
        assert_eq!(pieces(0), vec!["a", "", "bb", "a-word-longer-than-twelve"]);
        assert!(list.is_null(1));
        assert_eq!(pieces(2), vec![""]);
        assert_eq!(pieces(3), vec!["one"]);
        // The long word was not copied: its view points into the input.
        assert_eq!(
            list.values().as_string_view().data_buffers().len(),
            text.data_buffers().len()
        );
        // Same pieces as str::split, multi-byte delimiters included.
        let text = StringViewArray::from(vec!["x::yy::z-longer-than-12-bytes::"]);
        let list = split_views(&text, "::");
        let first = list.as_list::<i32>().value(0);
        let got: Vec<&str> = first
            .as_string_view()
            .iter()
            .map(|p| p.unwrap_or(""))
            .collect();
        assert_eq!(got, vec!["x", "yy", "z-longer-than-12-bytes", ""]);
    }
}
