//! Streams: how a topic's records decode into a stream's columns
//! (Kafka's metadata columns included), and what happens to records that
//! do not decode.
//!
//! This module owns record decoding; it never runs queries or writes.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};

use super::{SqlError, script};
use crate::source::record;

/// How a stream's record values decode into its columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// The value as UTF-8 text (invalid bytes replaced).
    Text,
    /// The value is a JSON object with the declared fields.
    Json,
}

/// Kafka's metadata columns, available in every stream.
fn metadata_fields() -> Vec<Field> {
    vec![
        Field::new("_topic", DataType::Utf8, false),
        Field::new("_partition", DataType::Int32, false),
        Field::new("_offset", DataType::Int64, false),
        Field::new(
            "_timestamp",
            DataType::Timestamp(datafusion::arrow::datatypes::TimeUnit::Millisecond, None),
            false,
        ),
        Field::new("_key", DataType::Utf8, true),
    ]
}

/// A stream's decoder: its schema and format.
#[derive(Debug, Clone)]
pub(crate) struct StreamShape {
    pub(crate) name: String,
    pub(crate) format: Format,
    pub(crate) value_fields: Vec<Field>,
    pub(crate) schema: SchemaRef,
}

impl StreamShape {
    pub(crate) fn new(decl: &script::StreamDecl, line: usize) -> Result<StreamShape, SqlError> {
        let format = match decl.options.get("format").map(String::as_str) {
            None | Some("text") | Some("raw") => Format::Text,
            Some("json") => Format::Json,
            Some(other) => {
                return Err(SqlError::Unsupported {
                    line,
                    message: format!(
                        "stream {}: format {other:?} is not supported (use 'text' or 'json')",
                        decl.name
                    ),
                });
            }
        };
        let value_fields = match format {
            Format::Text => match decl.columns.as_slice() {
                [] => vec![Field::new("value", DataType::Utf8, true)],
                [one] if one.data_type() == &DataType::Utf8 => vec![one.clone()],
                _ => {
                    return Err(SqlError::Unsupported {
                        line,
                        message: format!(
                            "stream {}: a text stream has one TEXT column (the record value); use format = 'json' for several columns",
                            decl.name
                        ),
                    });
                }
            },
            Format::Json => decl.columns.clone(),
        };
        let mut fields = value_fields.clone();
        fields.extend(metadata_fields());
        Ok(StreamShape {
            name: decl.name.clone(),
            format,
            value_fields,
            schema: Arc::new(Schema::new(fields)),
        })
    }

    /// Decodes source chunks (Kafka columns) into the stream's columns.
    /// Records that do not decode are skipped and counted.
    pub(crate) fn decode(&self, chunks: &[RecordBatch]) -> Result<(RecordBatch, u64), SqlError> {
        let mut out = Vec::with_capacity(chunks.len());
        let mut bad = 0u64;
        for chunk in chunks {
            let values = chunk.column(record::VALUE).as_binary_view();
            let (mut columns, chunk) = match self.format {
                Format::Text => (vec![lossy_text(values)], chunk.clone()),
                Format::Json => match self.decode_json(values)? {
                    (columns, None) => (columns, chunk.clone()),
                    (columns, Some(kept)) => {
                        bad += kept.false_count() as u64;
                        (
                            columns,
                            datafusion::arrow::compute::filter_record_batch(chunk, &kept)?,
                        )
                    }
                },
            };
            let topic =
                datafusion::arrow::compute::cast(chunk.column(record::TOPIC), &DataType::Utf8)?;
            let key = lossy_text(chunk.column(record::KEY).as_binary_view());
            columns.extend([
                topic,
                chunk.column(record::PARTITION).clone(),
                chunk.column(record::OFFSET).clone(),
                chunk.column(record::TIMESTAMP).clone(),
                key,
            ]);
            out.push(RecordBatch::try_new(self.schema.clone(), columns)?);
        }
        let batch = datafusion::arrow::compute::concat_batches(&self.schema, &out)?;
        Ok((batch, bad))
    }

    /// JSON values → the declared columns, and which records were kept
    /// (`None`: all). A chunk decodes in one pass; only when that fails is
    /// it decoded record by record to skip the bad ones.
    fn decode_json(
        &self,
        values: &datafusion::arrow::array::BinaryViewArray,
    ) -> Result<
        (
            Vec<ArrayRef>,
            Option<datafusion::arrow::array::BooleanArray>,
        ),
        SqlError,
    > {
        let value_schema = Arc::new(Schema::new(self.value_fields.clone()));
        let decoder = || {
            // One batch for the whole chunk: the decoder otherwise stops
            // at its default batch size and drops the rest.
            datafusion::arrow::json::ReaderBuilder::new(value_schema.clone())
                .with_batch_size(values.len().max(1))
                .build_decoder()
        };
        let columns_of = |batch: Option<RecordBatch>| {
            batch.map_or_else(
                || {
                    RecordBatch::new_empty(value_schema.clone())
                        .columns()
                        .to_vec()
                },
                |b| b.columns().to_vec(),
            )
        };
        let mut all = decoder()?;
        let whole = values.iter().try_for_each(|v| {
            all.decode(v.unwrap_or(b"null"))?;
            all.decode(b"\n").map(|_| ())
        });
        if whole.is_ok()
            && let Ok(batch) = all.flush()
            && batch.as_ref().map_or(0, |b| b.num_rows()) == values.len()
        {
            return Ok((columns_of(batch), None));
        }
        let mut good = decoder()?;
        let mut kept = Vec::with_capacity(values.len());
        for v in values.iter() {
            let bytes = v.unwrap_or(b"null");
            let mut one = decoder()?;
            let ok = one.decode(bytes).is_ok()
                && one.decode(b"\n").is_ok()
                && matches!(one.flush(), Ok(Some(b)) if b.num_rows() == 1);
            if ok {
                good.decode(bytes)?;
                good.decode(b"\n")?;
            }
            kept.push(ok);
        }
        Ok((columns_of(good.flush()?), Some(kept.into())))
    }
}

/// Bytes as text, invalid UTF-8 replaced; valid values (nearly all) are
/// copied into the column without a temporary string each.
fn lossy_text(values: &datafusion::arrow::array::BinaryViewArray) -> ArrayRef {
    let mut out = datafusion::arrow::array::StringBuilder::with_capacity(
        values.len(),
        values.total_buffer_bytes_used(),
    );
    for v in values.iter() {
        out.append_option(v.map(String::from_utf8_lossy));
    }
    Arc::new(out.finish())
}
