//! Scalar functions Sluice adds to DataFusion's.
//!
//! `split(text, delimiter)` is `string_to_array` without copying: the
//! pieces are string views into the text's own buffers, so splitting a
//! batch of lines into words (and unnesting them) moves 16 bytes per word
//! instead of the word's bytes, twice.
//!
//! This module owns these functions; it never touches state.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, ListArray, StringViewArray};
use datafusion::arrow::buffer::{OffsetBuffer, ScalarBuffer};
use datafusion::arrow::datatypes::{DataType, Field};
use datafusion::common::{ScalarValue, exec_err};
use datafusion::error::Result;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
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

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::array::AsArray;

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
