//! Streams: how a topic's records decode into a stream's columns
//! (Kafka's metadata columns included), the checking of `CREATE STREAM`
//! options, and what happens to records that do not decode (`on_error`).
//!
//! A record is *bad* when its value does not decode into the declared
//! columns: not one JSON object (`json`), not one CSV row with the
//! declared number of fields (`csv`), or a field that does not parse as
//! its column's type. `text` streams have no bad records (invalid UTF-8
//! is replaced). Per stream, `on_error` decides:
//!
//! * `skip` (default): dropped, and counted in the batch's progress as
//!   `bad records`;
//! * `fail`: the batch fails with the stream, topic, partition and offset
//!   of the first bad record; restarting retries the same batch;
//! * `dead_letter`: the original record (key, value, headers, timestamp)
//!   is written to `dead_letter_topic` with two more headers,
//!   `sluice.error` (why it did not decode) and `sluice.source`
//!   (`topic/partition/offset`), exactly once per batch id like a topic
//!   sink ([`sluice_engine::sink::topic`]), and counted.
//!
//! This module owns record decoding; it never runs queries, and writes
//! only dead letters.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BinaryViewArray, BooleanArray, RecordBatch,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::error::ArrowError;

use crate::decl::StreamDecl;
use crate::error::SqlError;
use crate::flat_json::FlatJson;
use crate::options::{check_known, choice, topic_option};
use crate::topics::Topics;
use sluice_engine::data::Data;
use sluice_engine::plan::{BatchCx, PlanError};
use sluice_engine::sink::WriterId;
use sluice_engine::sink::topic::{OutRecord, TopicTarget, TopicWriter, partition_of};
use sluice_engine::source::{Record, SourceError, record};

/// How a stream's record values decode into its columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Format {
    /// The value as UTF-8 text (invalid bytes replaced).
    Text,
    /// The value is a JSON object with the declared fields.
    Json,
    /// The value is one CSV row (no header line) with the declared
    /// columns in order; empty fields are NULL.
    Csv { delimiter: u8 },
}

/// What happens to records that do not decode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum OnError {
    Skip,
    Fail,
    /// Written to this topic.
    DeadLetter(String),
}

/// Options `CREATE STREAM … WITH (…)` accepts.
pub(crate) const STREAM_OPTIONS: [&str; 6] = [
    "topic",
    "format",
    "on_error",
    "dead_letter_topic",
    "delimiter",
    "idle_timeout",
];

/// A `CREATE STREAM`'s options, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StreamSpec {
    pub(crate) format: Format,
    pub(crate) on_error: OnError,
}

impl StreamSpec {
    /// Checks a stream's options; the error names the stream, the option
    /// and what is accepted.
    pub(crate) fn parse(decl: &StreamDecl) -> Result<StreamSpec, String> {
        let o = &decl.options;
        let what = format!("stream {}", decl.name);
        check_known(&what, o, &STREAM_OPTIONS)?;
        topic_option(&what, o, "topic", None)?;
        let format = choice(
            &what,
            o,
            "format",
            &["text", "raw", "json", "csv"],
            Some("text"),
        )?;
        let delimiter = match o.get("delimiter") {
            None => b',',
            Some(_) if format != Some("csv") => {
                return Err(format!(
                    "{what}: option delimiter applies to format = 'csv' only"
                ));
            }
            Some(d) => match d.as_bytes() {
                [b] if b.is_ascii() && *b != b'"' && *b != b'\n' && *b != b'\r' => *b,
                b"\\t" => b'\t',
                _ => {
                    return Err(format!(
                        "{what}: delimiter = {d:?} is not supported (accepted: one ASCII character other than a quote or line break, or '\\t' for a tab)"
                    ));
                }
            },
        };
        let format = match format {
            Some("json") => Format::Json,
            Some("csv") => Format::Csv { delimiter },
            _ => Format::Text,
        };
        let dead_letter_topic = topic_option(&what, o, "dead_letter_topic", None)?;
        let default_policy = if dead_letter_topic.is_some() {
            "dead_letter"
        } else {
            "skip"
        };
        let on_error = match choice(
            &what,
            o,
            "on_error",
            &["skip", "fail", "dead_letter"],
            Some(default_policy),
        )? {
            Some("dead_letter") => OnError::DeadLetter(dead_letter_topic.ok_or_else(|| {
                format!(
                    "{what}: on_error = 'dead_letter' needs dead_letter_topic = 'NAME' (the topic bad records go to)"
                )
            })?),
            Some(policy) if dead_letter_topic.is_some() => {
                return Err(format!(
                    "{what}: dead_letter_topic is set but on_error = '{policy}' (accepted: on_error = 'dead_letter' with a dead_letter_topic, or no dead_letter_topic)"
                ));
            }
            Some("fail") => OnError::Fail,
            _ => OnError::Skip,
        };
        Ok(StreamSpec { format, on_error })
    }
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

/// A stream's columns: the value's fields, its processing time (if it
/// declares one), then Kafka's metadata.
fn shape_fields(value_fields: &[Field], proctime: Option<&str>) -> Vec<Field> {
    let mut fields = value_fields.to_vec();
    if let Some(p) = proctime {
        fields.push(Field::new(
            p,
            DataType::Timestamp(datafusion::arrow::datatypes::TimeUnit::Millisecond, None),
            false,
        ));
    }
    fields.extend(metadata_fields());
    fields
}

/// Where a stream's bad records go with `on_error = 'dead_letter'`.
#[derive(Debug)]
struct DeadLetters {
    writer: TopicWriter,
    id: OnceLock<WriterId>,
}

/// A stream's decoder: its schema, format and bad-record policy.
#[derive(Debug, Clone)]
pub(crate) struct StreamShape {
    pub(crate) name: String,
    pub(crate) format: Format,
    pub(crate) on_error: OnError,
    pub(crate) value_fields: Vec<Field>,
    /// `name AS PROCTIME()`: a column after the value fields holding the
    /// batch's time.
    pub(crate) proctime: Option<String>,
    pub(crate) schema: SchemaRef,
    dead_letters: Option<Arc<DeadLetters>>,
}

/// A record that did not decode: its chunk, row and the reason.
struct Bad {
    chunk: usize,
    row: usize,
    reason: String,
}

/// Decoded values of one chunk: the columns of the records kept, which
/// were kept (`None`: all), and why the others were not.
struct Decoded {
    columns: Vec<ArrayRef>,
    kept: Option<BooleanArray>,
    bad: Vec<(usize, String)>,
}

impl StreamShape {
    /// The same stream decoding only the JSON fields a query uses
    /// (`used`; at least one): arrow-json skips the others' values, and
    /// a query cannot see them. Other formats decode every field.
    pub(crate) fn project(&self, used: &std::collections::BTreeSet<String>) -> StreamShape {
        if self.format != Format::Json {
            return self.clone();
        }
        let mut value_fields: Vec<Field> = self
            .value_fields
            .iter()
            .filter(|f| used.contains(f.name()))
            .cloned()
            .collect();
        if value_fields.is_empty()
            && let Some(first) = self.value_fields.first()
        {
            value_fields.push(first.clone());
        }
        let fields = shape_fields(&value_fields, self.proctime.as_deref());
        StreamShape {
            value_fields,
            schema: Arc::new(Schema::new(fields)),
            ..self.clone()
        }
    }

    /// The decoder of a declared stream; `topics` is where a dead-letter
    /// topic lives, `line` the line of the query reading the stream.
    pub(crate) fn new(
        decl: &StreamDecl,
        topics: &Topics,
        line: usize,
    ) -> Result<StreamShape, SqlError> {
        let unsupported = |message: String| SqlError::Unsupported { line, message };
        let spec = StreamSpec::parse(decl).map_err(unsupported)?;
        let value_fields = match spec.format {
            Format::Text => match decl.columns.as_slice() {
                // Text values are views into the records' bytes (no copy).
                [] => vec![Field::new("value", DataType::Utf8View, true)],
                [one] if one.data_type() == &DataType::Utf8 => {
                    vec![Field::new(one.name(), DataType::Utf8View, true)]
                }
                _ => {
                    return Err(unsupported(format!(
                        "stream {}: a text stream has one TEXT column (the record value); use format = 'json' or 'csv' for several columns",
                        decl.name
                    )));
                }
            },
            Format::Csv { .. } if decl.columns.is_empty() => {
                return Err(unsupported(format!(
                    "stream {}: format = 'csv' needs the columns in their order in the row, e.g. CREATE STREAM {} (user TEXT, ms BIGINT) WITH (format = 'csv', …)",
                    decl.name, decl.name
                )));
            }
            Format::Json | Format::Csv { .. } => decl.columns.clone(),
        };
        let dead_letters = match &spec.on_error {
            OnError::DeadLetter(topic) => {
                let target = match topics {
                    Topics::Embedded(store) => TopicTarget::Embedded(store.clone()),
                    Topics::Brokers(b) => TopicTarget::Kafka(b.clone()),
                };
                let what = format!("dead-letter topic {topic} of stream {}", decl.name);
                let writer =
                    TopicWriter::open(&target, topic, 1, &what).map_err(|e| SqlError::Plan {
                        line,
                        message: e.to_string(),
                    })?;
                Some(Arc::new(DeadLetters {
                    writer,
                    id: OnceLock::new(),
                }))
            }
            _ => None,
        };
        if let Some(p) = &decl.proctime
            && value_fields.iter().any(|f| f.name() == p)
        {
            return Err(unsupported(format!(
                "stream {}: {p} AS PROCTIME() names a declared column",
                decl.name
            )));
        }
        let fields = shape_fields(&value_fields, decl.proctime.as_deref());
        Ok(StreamShape {
            name: decl.name.clone(),
            format: spec.format,
            on_error: spec.on_error,
            value_fields,
            proctime: decl.proctime.clone(),
            schema: Arc::new(Schema::new(fields)),
            dead_letters,
        })
    }

    /// Decodes source chunks (Kafka columns) into the stream's columns,
    /// in `slices` parallel slices (one batch each). Records that do not
    /// decode are handled by the stream's `on_error` — once for the whole
    /// batch, so dead letters are written once per batch id — and counted
    /// in `cx` as `bad records`.
    pub(crate) fn decode(
        &self,
        cx: &BatchCx,
        chunks: &[RecordBatch],
        slices: usize,
    ) -> Result<Vec<RecordBatch>, SqlError> {
        use rayon::prelude::*;
        let per_slice = chunks.len().div_ceil(slices.max(1)).max(1);
        let decoded: Vec<(RecordBatch, Vec<Bad>)> = if chunks.is_empty() {
            vec![self.decode_slice(chunks, 0, cx.batch_time_ms)?]
        } else {
            chunks
                .par_chunks(per_slice)
                .enumerate()
                .map(|(i, slice)| self.decode_slice(slice, i * per_slice, cx.batch_time_ms))
                .collect::<Result<_, _>>()?
        };
        let mut parts = Vec::with_capacity(decoded.len());
        let mut bad = Vec::new();
        for (part, b) in decoded {
            parts.push(part);
            bad.extend(b);
        }
        if !bad.is_empty() {
            self.dead_letter(cx, chunks, &bad)?;
            cx.count("bad records", bad.len() as u64);
        }
        Ok(parts)
    }

    /// Decodes chunks `first..` of a batch; bad records carry their
    /// chunk's index in the batch.
    fn decode_slice(
        &self,
        chunks: &[RecordBatch],
        first: usize,
        batch_time_ms: i64,
    ) -> Result<(RecordBatch, Vec<Bad>), SqlError> {
        let mut out = Vec::with_capacity(chunks.len());
        let mut bad: Vec<Bad> = Vec::new();
        for (c, chunk) in chunks.iter().enumerate() {
            let (batch, rejected) = self.decode_chunk(chunk, batch_time_ms)?;
            bad.extend(rejected.into_iter().map(|(row, reason)| Bad {
                chunk: first + c,
                row,
                reason,
            }));
            out.push(batch);
        }
        let batch = datafusion::arrow::compute::concat_batches(&self.schema, &out)?;
        Ok((batch, bad))
    }

    /// Decodes one chunk of records into the stream's rows (a processing
    /// time column holds `batch_time_ms`); the records that did not
    /// decode, by row, with why (with `on_error = 'fail'`, the first is an
    /// error).
    pub(crate) fn decode_chunk(
        &self,
        chunk: &RecordBatch,
        batch_time_ms: i64,
    ) -> Result<(RecordBatch, Vec<(usize, String)>), SqlError> {
        let values = chunk.column(record::VALUE).as_binary_view();
        let decoded = match self.format {
            Format::Text => Decoded {
                columns: vec![text_view(values)],
                kept: None,
                bad: Vec::new(),
            },
            Format::Json => self.decode_json(values)?,
            Format::Csv { delimiter } => self.decode_csv(values, delimiter)?,
        };
        if self.on_error == OnError::Fail
            && let Some((row, reason)) = decoded.bad.first()
        {
            return Err(self.failure(chunk, *row, reason));
        }
        let kept_chunk;
        let chunk = match &decoded.kept {
            None => chunk,
            Some(kept) => {
                kept_chunk = datafusion::arrow::compute::filter_record_batch(chunk, kept)?;
                &kept_chunk
            }
        };
        let mut columns = decoded.columns;
        if self.proctime.is_some() {
            columns.push(Arc::new(
                datafusion::arrow::array::TimestampMillisecondArray::from_value(
                    batch_time_ms,
                    chunk.num_rows(),
                ),
            ));
        }
        let topic = datafusion::arrow::compute::cast(chunk.column(record::TOPIC), &DataType::Utf8)?;
        let key = lossy_text(chunk.column(record::KEY).as_binary_view());
        columns.extend([
            topic,
            chunk.column(record::PARTITION).clone(),
            chunk.column(record::OFFSET).clone(),
            chunk.column(record::TIMESTAMP).clone(),
            key,
        ]);
        Ok((
            RecordBatch::try_new(self.schema.clone(), columns)?,
            decoded.bad,
        ))
    }

    fn format_name(&self) -> &'static str {
        match self.format {
            Format::Text => "text",
            Format::Json => "JSON",
            Format::Csv { .. } => "CSV",
        }
    }

    /// The error of `on_error = 'fail'` for the bad record at `row`.
    fn failure(&self, chunk: &RecordBatch, row: usize, reason: &str) -> SqlError {
        let topic = chunk.column(record::TOPIC);
        let topic = datafusion::arrow::compute::cast(topic, &DataType::Utf8)
            .ok()
            .map(|t| t.as_string::<i32>().value(row).to_owned())
            .unwrap_or_default();
        let partition = chunk
            .column(record::PARTITION)
            .as_primitive::<datafusion::arrow::datatypes::Int32Type>()
            .value(row);
        let offset = chunk
            .column(record::OFFSET)
            .as_primitive::<datafusion::arrow::datatypes::Int64Type>()
            .value(row);
        SqlError::Engine(PlanError::Source(SourceError::Partition {
            source_name: topic,
            partition,
            message: format!(
                "the record at offset {offset} does not decode as {} for stream {}: {reason}. The stream has on_error = 'fail', so the job stops at its first bad record, and stops there again when restarted. To go on, set on_error = 'skip' (drop and count bad records) or on_error = 'dead_letter' with dead_letter_topic = 'NAME' (keep them in a topic) in CREATE STREAM {}, then run the job again: it resumes with this batch",
                self.format_name(),
                self.name,
                self.name
            ),
        }))
    }

    /// Writes the bad records to the dead-letter topic, if the stream has
    /// one, once per batch id.
    fn dead_letter(
        &self,
        cx: &BatchCx,
        chunks: &[RecordBatch],
        bad: &[Bad],
    ) -> Result<(), SqlError> {
        let Some(dl) = &self.dead_letters else {
            return Ok(());
        };
        let failed = |message: String| {
            SqlError::Engine(PlanError::Source(SourceError::Unavailable {
                source_name: self.name.clone(),
                message,
            }))
        };
        let mut readers = Vec::with_capacity(chunks.len());
        for chunk in chunks {
            readers.push(Record::reader(chunk.columns()).map_err(PlanError::from)?);
        }
        let mut records: BTreeMap<i32, Vec<OutRecord>> = BTreeMap::new();
        for b in bad {
            let r = Record::get(&readers[b.chunk], b.row);
            let mut headers: Vec<(String, Option<Vec<u8>>)> = r
                .headers()
                .map(|(k, v)| (k.to_owned(), v.map(<[u8]>::to_vec)))
                .collect();
            headers.push((
                "sluice.error".into(),
                Some(
                    format!(
                        "{} (stream {}, format {})",
                        b.reason,
                        self.name,
                        self.format_name()
                    )
                    .into_bytes(),
                ),
            ));
            headers.push((
                "sluice.source".into(),
                Some(format!("{}/{}/{}", r.topic, r.partition, r.offset).into_bytes()),
            ));
            let key = r.key.map(<[u8]>::to_vec);
            records
                .entry(partition_of(key.as_deref(), dl.writer.partitions()))
                .or_default()
                .push(OutRecord {
                    key,
                    value: r.value.map(<[u8]>::to_vec),
                    timestamp_ms: r.timestamp,
                    headers,
                });
        }
        let id = match dl.id.get() {
            Some(id) => id,
            None => {
                let id =
                    WriterId::of(cx.checkpoint, &self.name).map_err(|e| failed(e.to_string()))?;
                dl.id.get_or_init(|| id)
            }
        };
        let report = dl
            .writer
            .write(cx.transactions, id, cx.batch_id, &records)
            .map_err(|e| failed(e.to_string()))?;
        cx.count(
            &format!("already in topic {}", dl.writer.topic()),
            report.skipped as u64,
        );
        Ok(())
    }

    fn value_schema(&self) -> SchemaRef {
        Arc::new(Schema::new(self.value_fields.clone()))
    }

    /// JSON values → the declared columns. A chunk decodes in one pass,
    /// by [`FlatJson`] when it can, else by arrow-json; only when that
    /// fails is it decoded record by record to find the bad ones.
    fn decode_json(&self, values: &BinaryViewArray) -> Result<Decoded, SqlError> {
        if let Some(columns) =
            FlatJson::new(&self.value_fields).and_then(|flat| flat.decode(values))
        {
            return Ok(Decoded {
                columns,
                kept: None,
                bad: Vec::new(),
            });
        }
        let value_schema = self.value_schema();
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
            return Ok(Decoded {
                columns: columns_of(batch),
                kept: None,
                bad: Vec::new(),
            });
        }
        let mut good = decoder()?;
        let mut kept = Vec::with_capacity(values.len());
        let mut bad = Vec::new();
        for (row, v) in values.iter().enumerate() {
            let bytes = v.unwrap_or(b"null");
            let mut one = decoder()?;
            let result = one
                .decode(bytes)
                .and_then(|_| one.decode(b"\n"))
                .and_then(|_| one.flush());
            let ok = match result {
                Ok(Some(b)) if b.num_rows() == 1 => true,
                Ok(other) => {
                    bad.push((
                        row,
                        format!(
                            "the value holds {} JSON values, not one object",
                            other.map_or(0, |b| b.num_rows())
                        ),
                    ));
                    false
                }
                Err(e) => {
                    bad.push((row, e.to_string()));
                    false
                }
            };
            if ok {
                good.decode(bytes)?;
                good.decode(b"\n")?;
            }
            kept.push(ok);
        }
        Ok(Decoded {
            columns: columns_of(good.flush()?),
            kept: Some(kept.into()),
            bad,
        })
    }

    /// CSV rows → the declared columns, like [`Self::decode_json`]. BYTEA
    /// columns take the field's bytes as they are.
    fn decode_csv(&self, values: &BinaryViewArray, delimiter: u8) -> Result<Decoded, SqlError> {
        let csv = CsvShape::new(&self.value_fields, delimiter);
        // All values at once, the common case; only a batch with a bad
        // value is decoded again value by value, to tell which.
        let mut all = csv.decoder(values.len() + 1);
        let whole = values
            .iter()
            .try_for_each(|v| feed_csv_row(&mut all, v.unwrap_or_default()))
            .and_then(|()| all.flush());
        match whole {
            Ok(None) if values.is_empty() => Ok(Decoded {
                columns: RecordBatch::new_empty(self.value_schema())
                    .columns()
                    .to_vec(),
                kept: None,
                bad: Vec::new(),
            }),
            Ok(Some(batch)) if batch.num_rows() == values.len() => Ok(Decoded {
                columns: csv.columns(batch, &self.value_fields)?,
                kept: None,
                bad: Vec::new(),
            }),
            _ => self.decode_csv_value_by_value(values, &csv),
        }
    }

    /// Decodes each value alone, keeping the good ones and saying what is
    /// wrong with each bad one.
    fn decode_csv_value_by_value(
        &self,
        values: &BinaryViewArray,
        csv: &CsvShape,
    ) -> Result<Decoded, SqlError> {
        let mut good = Vec::new();
        let mut kept = Vec::with_capacity(values.len());
        let mut bad = Vec::new();
        for (row, v) in values.iter().enumerate() {
            let mut one = csv.decoder(2);
            let result = feed_csv_row(&mut one, v.unwrap_or_default()).and_then(|()| one.flush());
            let ok = match result {
                Ok(Some(b)) if b.num_rows() == 1 => {
                    good.push(b);
                    true
                }
                Ok(None) => {
                    bad.push((row, "the value is empty".to_owned()));
                    false
                }
                Ok(Some(b)) => {
                    bad.push((
                        row,
                        format!("the value holds {} CSV rows, not one", b.num_rows()),
                    ));
                    false
                }
                Err(e) => {
                    bad.push((row, e.to_string()));
                    false
                }
            };
            kept.push(ok);
        }
        let columns = if good.is_empty() {
            RecordBatch::new_empty(self.value_schema())
                .columns()
                .to_vec()
        } else {
            csv.columns(
                datafusion::arrow::compute::concat_batches(&csv.schema, &good)?,
                &self.value_fields,
            )?
        };
        Ok(Decoded {
            columns,
            kept: Some(kept.into()),
            bad,
        })
    }
}

/// How a stream's CSV values are read: arrow's CSV reader has no binary
/// columns, so BYTEA columns are read as text and cast back.
struct CsvShape {
    schema: SchemaRef,
    delimiter: u8,
}

impl CsvShape {
    fn new(value_fields: &[Field], delimiter: u8) -> CsvShape {
        let schema = Arc::new(Schema::new(
            value_fields
                .iter()
                .map(|f| match f.data_type() {
                    DataType::Binary => f.clone().with_data_type(DataType::Utf8),
                    _ => f.clone(),
                })
                .collect::<Vec<_>>(),
        ));
        CsvShape { schema, delimiter }
    }

    fn decoder(&self, rows: usize) -> datafusion::arrow::csv::reader::Decoder {
        datafusion::arrow::csv::ReaderBuilder::new(self.schema.clone())
            .with_header(false)
            .with_delimiter(self.delimiter)
            .with_batch_size(rows.max(1))
            .build_decoder()
    }

    /// The decoded batch's columns as the declared types.
    fn columns(
        &self,
        batch: RecordBatch,
        value_fields: &[Field],
    ) -> Result<Vec<ArrayRef>, ArrowError> {
        batch
            .columns()
            .iter()
            .zip(value_fields)
            .map(|(c, f)| {
                if c.data_type() == f.data_type() {
                    Ok(c.clone())
                } else {
                    datafusion::arrow::compute::cast(c, f.data_type())
                }
            })
            .collect()
    }
}

/// Feeds one record's value to a CSV decoder as one line (a trailing line
/// break in the value is not a second, empty row).
fn feed_csv_row(
    decoder: &mut datafusion::arrow::csv::reader::Decoder,
    value: &[u8],
) -> Result<(), ArrowError> {
    let value = value
        .strip_suffix(b"\n")
        .map(|v| v.strip_suffix(b"\r").unwrap_or(v))
        .unwrap_or(value);
    for mut buf in [value, b"\n".as_slice()] {
        while !buf.is_empty() {
            let n = decoder.decode(buf)?;
            if n == 0 {
                return Err(ArrowError::CsvError(
                    "the value holds more than one CSV row".into(),
                ));
            }
            buf = &buf[n..];
        }
    }
    Ok(())
}

/// Bytes as text, invalid UTF-8 replaced; valid values (nearly all) are
/// copied into the column without a temporary string each.
/// Bytes as text views sharing the records' buffers when they are valid
/// UTF-8 (nearly always); otherwise a copy with invalid bytes replaced.
fn text_view(values: &BinaryViewArray) -> ArrayRef {
    match values.clone().to_string_view() {
        Ok(text) => Arc::new(text),
        Err(_) => {
            let mut out = datafusion::arrow::array::StringViewBuilder::with_capacity(values.len());
            for v in values.iter() {
                out.append_option(v.map(String::from_utf8_lossy));
            }
            Arc::new(out.finish())
        }
    }
}

fn lossy_text(values: &BinaryViewArray) -> ArrayRef {
    let mut out = datafusion::arrow::array::StringBuilder::with_capacity(
        values.len(),
        values.total_buffer_bytes_used(),
    );
    for v in values.iter() {
        out.append_option(v.map(String::from_utf8_lossy));
    }
    Arc::new(out.finish())
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::datatypes::Int64Type;

    use super::*;

    fn decl(columns: &[(&str, DataType)], options: &[(&str, &str)]) -> StreamDecl {
        StreamDecl {
            name: "s".into(),
            columns: columns
                .iter()
                .map(|(n, t)| Field::new(*n, t.clone(), true))
                .collect(),
            options: options
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            watermark: None,
            proctime: None,
        }
    }

    #[test]
    fn stream_options_have_defaults() {
        let spec = |o: &[(&str, &str)]| StreamSpec::parse(&decl(&[], o));
        assert_eq!(
            spec(&[]),
            Ok(StreamSpec {
                format: Format::Text,
                on_error: OnError::Skip
            })
        );
        assert_eq!(
            spec(&[("format", "csv"), ("delimiter", "\\t")])
                .unwrap()
                .format,
            Format::Csv { delimiter: b'\t' }
        );
        assert_eq!(
            spec(&[("format", "json"), ("dead_letter_topic", "dlq")])
                .unwrap()
                .on_error,
            OnError::DeadLetter("dlq".into()),
            "a dead-letter topic alone means on_error = 'dead_letter'"
        );
        assert_eq!(
            spec(&[("on_error", "FAIL")]).unwrap().on_error,
            OnError::Fail
        );
    }

    fn values(v: &[Option<&str>]) -> BinaryViewArray {
        v.iter().map(|s| s.map(str::as_bytes)).collect()
    }

    #[test]
    fn csv_values_decode_and_bad_ones_are_told_apart() {
        let shape = StreamShape::new(
            &decl(
                &[("name", DataType::Utf8), ("n", DataType::Int64)],
                &[("format", "csv")],
            ),
            &Topics::Brokers("unused:9092".into()),
            1,
        )
        .unwrap();
        // All good, one pass; a trailing line break is not an empty row.
        let d = shape
            .decode_csv(&values(&[Some("a,1"), Some("b,2\r\n")]), b',')
            .unwrap();
        assert!(d.kept.is_none() && d.bad.is_empty());
        assert_eq!(d.columns[1].as_primitive::<Int64Type>().values(), &[1, 2]);

        let d = shape
            .decode_csv(
                &values(&[
                    Some("a,1"),
                    Some("b,x"),
                    Some("\"q,r\",3"),
                    Some(""),
                    None,
                    Some("c,4,extra"),
                    Some("d,5\ne,6"),
                    Some(",7"),
                ]),
                b',',
            )
            .unwrap();
        let kept: Vec<bool> = d.kept.unwrap().iter().map(Option::unwrap).collect();
        assert_eq!(kept, [true, false, true, false, false, false, false, true]);
        assert_eq!(
            d.columns[0].as_string::<i32>().iter().collect::<Vec<_>>(),
            [Some("a"), Some("q,r"), None]
        );
        let reasons: BTreeMap<usize, String> = d.bad.into_iter().collect();
        assert!(reasons[&1].contains("parsing"), "{}", reasons[&1]);
        assert_eq!(reasons[&3], "the value is empty");
        assert!(reasons[&5].contains("fields"), "{}", reasons[&5]);
        assert!(reasons[&6].contains("CSV rows, not one"), "{}", reasons[&6]);
    }

    #[test]
    fn json_bad_values_say_why() {
        let shape = StreamShape::new(
            &decl(&[("n", DataType::Int64)], &[("format", "json")]),
            &Topics::Brokers("unused:9092".into()),
            1,
        )
        .unwrap();
        let d = shape
            .decode_json(&values(&[
                Some(r#"{"n": 1}"#),
                Some("{"),
                Some(r#"{"n": "x"}"#),
            ]))
            .unwrap();
        let kept: Vec<bool> = d.kept.unwrap().iter().map(Option::unwrap).collect();
        assert_eq!(kept, [true, false, false]);
        assert_eq!(d.bad.len(), 2);
        assert!(d.bad[1].1.contains("'n'"), "{}", d.bad[1].1);
    }
}
