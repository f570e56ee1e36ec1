//! SQL over streams: a job written in SQL runs on the same driver,
//! sources, checkpoint and atomic commit as a Rust job.
//!
//! A script declares streams over topics (`CREATE STREAM … WITH (topic,
//! format)`), sinks (`CREATE SINK … WITH (type = 'console' | 'table')`) and
//! queries (`INSERT INTO sink SELECT …`, or a bare `SELECT` for the
//! console). Every batch, each stream's records are decoded into its
//! declared columns, DataFusion plans and runs each query over them, and
//! `GROUP BY` aggregates are merged with their state in RocksDB
//! ([`incremental`]); result-table writes and aggregate state join the
//! batch's commit. Queries that cannot run incrementally are refused when
//! the job is submitted, before any record is read.
//!
//! This module owns the SQL surface; it never chooses offsets or commits
//! (the driver does), and never touches segment files.

mod incremental;
pub mod script;

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::physical_plan::{ExecutionPlan, collect};
use datafusion::prelude::{SessionConfig, SessionContext};

use crate::checkpoint::{OperatorMeta, STATE_CF_PREFIX, TABLE_CF_PREFIX};
use crate::driver::StreamingContext;
use crate::log::LogStore;
use crate::plan::{BatchCx, PlanError};
use crate::source::record;
pub use script::Script;

/// Errors of SQL jobs, with the line of the statement.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    #[error("line {line}: {message}")]
    Syntax { line: usize, message: String },
    #[error("line {line}: {message}")]
    Unsupported { line: usize, message: String },
    #[error("line {line}: {message}")]
    Plan { line: usize, message: String },
    #[error(transparent)]
    DataFusion(#[from] datafusion::error::DataFusionError),
    #[error(transparent)]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
    #[error("state store: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error(transparent)]
    Engine(#[from] PlanError),
}

impl From<SqlError> for PlanError {
    fn from(e: SqlError) -> PlanError {
        match e {
            SqlError::Engine(p) => p,
            other => PlanError::Invalid(other.to_string()),
        }
    }
}

/// How a stream's record values decode into its columns.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
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
struct StreamShape {
    name: String,
    format: Format,
    value_fields: Vec<Field>,
    schema: SchemaRef,
}

impl StreamShape {
    fn new(decl: &script::StreamDecl, line: usize) -> Result<StreamShape, SqlError> {
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
    fn decode(&self, chunks: &[RecordBatch]) -> Result<(RecordBatch, u64), SqlError> {
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
        let decoder =
            || datafusion::arrow::json::ReaderBuilder::new(value_schema.clone()).build_decoder();
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

/// How a SQL job reaches its topics.
pub enum Topics {
    Embedded(Arc<LogStore>),
    Brokers(String),
}

/// Builds the streaming job of a script on `ctx`.
pub fn build(ctx: &StreamingContext, script: &Script, topics: &Topics) -> Result<(), SqlError> {
    let runtime = Arc::new(
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| SqlError::Plan {
                line: 1,
                message: format!("cannot start the query runtime: {e}"),
            })?,
    );
    for (n, query) in script.queries.iter().enumerate() {
        let line = query.line;
        let stream_decl = script
            .streams
            .iter()
            .find(|s| contains_word(&query.sql, &s.name))
            .ok_or_else(|| SqlError::Plan {
                line,
                message: format!(
                    "the query reads no declared stream (streams: {})",
                    script
                        .streams
                        .iter()
                        .map(|s| s.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            })?;
        let shape = StreamShape::new(stream_decl, line)?;
        let topic = stream_decl
            .options
            .get("topic")
            .cloned()
            .unwrap_or_else(|| shape.name.clone());
        let records = match topics {
            Topics::Embedded(store) => {
                ctx.embedded(store.clone(), &topic)
                    .map_err(|e| SqlError::Plan {
                        line,
                        message: format!("stream {}: {e}", shape.name),
                    })?
            }
            Topics::Brokers(brokers) => ctx.source(
                crate::source::kafka::KafkaSource::new(
                    topic.clone(),
                    brokers.clone(),
                    &topic,
                    None,
                    Vec::new(),
                )
                .map_err(|e| SqlError::Plan {
                    line,
                    message: format!("stream {}: {e}", shape.name),
                })?,
            ),
        };
        // Plan once over an empty batch: refuses what cannot run
        // incrementally before any record is read.
        let session =
            SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
        session.register_batch(&shape.name, RecordBatch::new_empty(shape.schema.clone()))?;
        let (logical, plan) = runtime
            .block_on(async {
                let df = session.sql(&query.sql).await?;
                let logical = df.logical_plan().clone();
                Ok::<_, datafusion::error::DataFusionError>((
                    logical,
                    df.create_physical_plan().await?,
                ))
            })
            .map_err(|e| SqlError::Plan {
                line,
                message: format!("{e}"),
            })?;
        incremental::check_logical(&logical)
            .map_err(|message| SqlError::Unsupported { line, message })?;
        let aggregation = incremental::analyze(&plan)
            .map_err(|message| SqlError::Unsupported { line, message })?;
        let operator = query
            .sink
            .clone()
            .map_or_else(|| format!("query-{}", n + 1), |s| format!("insert-{s}"));
        let state = aggregation.as_ref().map(|a| {
            let (key_type, state_type) = incremental::state_signature(a);
            OperatorMeta {
                name: operator.clone(),
                kind: "sql aggregate".into(),
                key_type,
                state_type,
            }
        });
        let sink = match &query.sink {
            None => Sink::Console,
            Some(name) => {
                let decl = script
                    .sinks
                    .iter()
                    .find(|s| &s.name == name)
                    .ok_or_else(|| SqlError::Plan {
                        line,
                        message: format!("no sink {name}"),
                    })?;
                match decl.options.get("type").map(String::as_str) {
                    None | Some("console") => Sink::Console,
                    Some("table") => {
                        Sink::Table(name.clone(), table_meta(name, &plan.schema(), line)?)
                    }
                    Some(other) => {
                        return Err(SqlError::Unsupported {
                            line,
                            message: format!(
                                "sink {name}: type {other:?} is not supported yet (use 'console' or 'table')"
                            ),
                        });
                    }
                }
            }
        };
        let table = match &sink {
            Sink::Table(_, meta) => Some(meta.clone()),
            Sink::Console => None,
        };
        let runner = Arc::new(QueryRunner {
            sql: query.sql.clone(),
            line,
            shape,
            runtime: runtime.clone(),
            operator: operator.clone(),
            aggregating: aggregation.is_some(),
            sink,
        });
        records.output_with_context(operator, state, table, move |cx, chunks| {
            runner.run(cx, &chunks).map_err(PlanError::from)
        });
    }
    Ok(())
}

fn contains_word(sql: &str, word: &str) -> bool {
    sql.split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .any(|w| w.eq_ignore_ascii_case(word))
}

enum Sink {
    Console,
    /// Keyed by the first column; the other columns are the value.
    Table(String, OperatorMeta),
}

/// Our codec's type name for an Arrow type, if a table can store it.
fn type_name(dt: &DataType, nullable: bool) -> Option<String> {
    let base = match dt {
        DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 => "string",
        DataType::Int64 => "i64",
        DataType::UInt64 => "u64",
        DataType::Int32 => "i32",
        DataType::UInt32 => "u32",
        DataType::Float64 => "f64",
        DataType::Boolean => "bool",
        DataType::Binary | DataType::BinaryView | DataType::LargeBinary => "bytes",
        _ => return None,
    };
    Some(if nullable {
        format!("option<{base}>")
    } else {
        base.to_owned()
    })
}

fn table_meta(name: &str, schema: &SchemaRef, line: usize) -> Result<OperatorMeta, SqlError> {
    let bad = |f: &Field| SqlError::Unsupported {
        line,
        message: format!(
            "table sink {name}: column {} of type {} cannot be stored in a table yet",
            f.name(),
            f.data_type()
        ),
    };
    let fields = schema.fields();
    let Some((key, values)) = fields.split_first() else {
        return Err(SqlError::Plan {
            line,
            message: "the query has no columns".into(),
        });
    };
    let key_type = type_name(key.data_type(), false).ok_or_else(|| bad(key))?;
    let mut value_types = values
        .iter()
        .map(|f| type_name(f.data_type(), f.is_nullable()).ok_or_else(|| bad(f)))
        .collect::<Result<Vec<_>, _>>()?;
    if value_types.is_empty() {
        value_types.push("bool".into());
    }
    let state_type = value_types
        .iter()
        .rev()
        .cloned()
        .reduce(|acc, t| format!("({t},{acc})"))
        .unwrap_or_default();
    Ok(OperatorMeta {
        name: name.to_owned(),
        kind: "table".into(),
        key_type,
        state_type,
    })
}

/// Encodes one cell with the codec of `plan::data` (see `type_name`).
fn encode_cell(
    array: &ArrayRef,
    row: usize,
    optional: bool,
    last: bool,
    out: &mut Vec<u8>,
) -> bool {
    use crate::plan::data::Data;
    use datafusion::arrow::array::{
        BooleanArray, Float64Array, Int32Array, Int64Array, UInt32Array, UInt64Array,
    };
    if optional {
        if array.is_null(row) {
            out.push(0);
            return true;
        }
        out.push(1);
    } else if array.is_null(row) {
        return false;
    }
    let any = array.as_any();
    match array.data_type() {
        DataType::Utf8 => String::encode(array.as_string::<i32>().value(row), last, out),
        DataType::LargeUtf8 => String::encode(array.as_string::<i64>().value(row), last, out),
        DataType::Utf8View => String::encode(array.as_string_view().value(row), last, out),
        DataType::Binary => Vec::<u8>::encode(array.as_binary::<i32>().value(row), last, out),
        DataType::LargeBinary => Vec::<u8>::encode(array.as_binary::<i64>().value(row), last, out),
        DataType::BinaryView => Vec::<u8>::encode(array.as_binary_view().value(row), last, out),
        DataType::Int64 => i64::encode(
            any.downcast_ref::<Int64Array>().map_or(0, |a| a.value(row)),
            last,
            out,
        ),
        DataType::UInt64 => u64::encode(
            any.downcast_ref::<UInt64Array>()
                .map_or(0, |a| a.value(row)),
            last,
            out,
        ),
        DataType::Int32 => i32::encode(
            any.downcast_ref::<Int32Array>().map_or(0, |a| a.value(row)),
            last,
            out,
        ),
        DataType::UInt32 => u32::encode(
            any.downcast_ref::<UInt32Array>()
                .map_or(0, |a| a.value(row)),
            last,
            out,
        ),
        DataType::Float64 => f64::encode(
            any.downcast_ref::<Float64Array>()
                .map_or(0.0, |a| a.value(row)),
            last,
            out,
        ),
        DataType::Boolean => bool::encode(
            any.downcast_ref::<BooleanArray>()
                .is_some_and(|a| a.value(row)),
            last,
            out,
        ),
        _ => return false,
    }
    true
}

struct QueryRunner {
    sql: String,
    line: usize,
    shape: StreamShape,
    runtime: Arc<tokio::runtime::Runtime>,
    operator: String,
    aggregating: bool,
    sink: Sink,
}

impl QueryRunner {
    fn run(&self, cx: &BatchCx, chunks: &[RecordBatch]) -> Result<(), SqlError> {
        let (batch, _bad) = self.shape.decode(chunks)?;
        let session =
            SessionContext::new_with_config(SessionConfig::new().with_target_partitions(1));
        session.register_batch(&self.shape.name, batch)?;
        let output = self.runtime.block_on(async {
            let plan: Arc<dyn ExecutionPlan> =
                session.sql(&self.sql).await?.create_physical_plan().await?;
            if !self.aggregating {
                return Ok::<_, SqlError>(collect(plan, session.task_ctx()).await?);
            }
            let agg = incremental::analyze(&plan)
                .map_err(|message| SqlError::Unsupported {
                    line: self.line,
                    message,
                })?
                .ok_or_else(|| SqlError::Plan {
                    line: self.line,
                    message: "the query lost its aggregation between batches".into(),
                })?;
            let cf = cx
                .checkpoint
                .cf(&format!("{STATE_CF_PREFIX}{}", self.operator))
                .map_err(PlanError::from)?;
            incremental::run_batch(&session, &plan, &agg, cx, cf).await
        })?;
        match &self.sink {
            Sink::Console => {
                let rows: usize = output.iter().map(|b| b.num_rows()).sum();
                if rows > 0 {
                    let table = datafusion::arrow::util::pretty::pretty_format_batches(&output)?;
                    println!(
                        "{}\n{table}",
                        crate::sink::console::header(cx.batch_id, cx.batch_time_ms)
                    );
                }
            }
            Sink::Table(name, _) => {
                let cf = cx
                    .checkpoint
                    .cf(&format!("{TABLE_CF_PREFIX}{name}"))
                    .map_err(PlanError::from)?;
                let mut puts = Vec::new();
                for b in &output {
                    let schema = b.schema();
                    for row in 0..b.num_rows() {
                        let mut key = Vec::new();
                        if !encode_cell(b.column(0), row, false, true, &mut key) {
                            continue; // NULL keys are not stored
                        }
                        let mut value = Vec::new();
                        let n = b.num_columns();
                        if n == 1 {
                            value.push(1); // a key-only table stores `true`
                        }
                        for c in 1..n {
                            encode_cell(
                                b.column(c),
                                row,
                                schema.field(c).is_nullable(),
                                c == n - 1,
                                &mut value,
                            );
                        }
                        puts.push((key, value));
                    }
                }
                cx.write(|w| puts.iter().for_each(|(k, v)| w.put_cf(cf, k, v)));
            }
        }
        Ok(())
    }
}
