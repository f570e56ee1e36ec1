//! Sinks of SQL queries: where each batch's result rows go, and the
//! checking of `CREATE SINK` options.
//!
//! A `table` sink joins the batch's atomic commit (a RocksDB result table
//! read by `sluice state`); `console` prints; `topic` appends one record
//! per row to a topic of the bundled store or a Kafka broker and `file`
//! writes Parquet/JSON/CSV files with a manifest, both idempotently per
//! batch id ([`sluice_engine::sink::topic`], [`sluice_engine::sink::file`]).
//! A batch's result is a [`Changelog`]: upserts, and deletes of rows whose
//! group is gone (a table deletes the key, a keyed topic gets a
//! tombstone; a file sink only appends and is refused such queries). This
//! module owns the row → sink encoding; it never plans queries or chooses
//! offsets.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::OnceLock;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::row::{RowConverter, SortField};

use crate::decl::SinkDecl;
use crate::error::SqlError;
use crate::options::{check_known, choice, topic_option};
use crate::topics::Topics;
use sluice_engine::checkpoint::{OperatorMeta, TABLE_CF_PREFIX};
use sluice_engine::plan::{BatchCx, PlanError};
use sluice_engine::sink::file::{FileFormat, FileOutcome, FileWriter};
use sluice_engine::sink::topic::{Delivery, OutRecord, TopicTarget, TopicWriter, partition_of};
use sluice_engine::sink::{SinkError, WriterId};

/// A batch's result for its sink: rows that insert or replace the row of
/// their key, and rows whose key is gone (Flink's changelog of upserts
/// and deletes). Most queries only ever upsert.
#[derive(Default)]
pub(crate) struct Changelog {
    pub upserts: Vec<RecordBatch>,
    /// Rows of the keys to delete (the key columns hold the key; the rest
    /// is what the query computes over no rows).
    pub deletes: Vec<RecordBatch>,
}

impl From<Vec<RecordBatch>> for Changelog {
    fn from(upserts: Vec<RecordBatch>) -> Self {
        Changelog {
            upserts,
            deletes: Vec::new(),
        }
    }
}

/// The rows of `before` whose key (the columns `key`; none: the whole
/// row) no row of `after` has: what left a query's output, to delete.
pub(crate) fn gone(
    before: &[RecordBatch],
    after: &[RecordBatch],
    key: &[usize],
) -> Result<Vec<RecordBatch>, SqlError> {
    let Some(schema) = before.first().map(|b| b.schema()) else {
        return Ok(Vec::new());
    };
    let key: Vec<usize> = if key.is_empty() {
        (0..schema.fields().len()).collect()
    } else {
        key.to_vec()
    };
    let converter = RowConverter::new(
        key.iter()
            .map(|&i| SortField::new(schema.field(i).data_type().clone()))
            .collect(),
    )?;
    let key_rows = |b: &RecordBatch| {
        let columns: Vec<ArrayRef> = key.iter().map(|&i| b.column(i).clone()).collect();
        converter.convert_columns(&columns)
    };
    let mut kept: hashbrown::HashSet<Vec<u8>> = hashbrown::HashSet::new();
    for b in after {
        kept.extend(key_rows(b)?.iter().map(|r| r.as_ref().to_vec()));
    }
    let mut out = Vec::new();
    for b in before {
        let left: datafusion::arrow::array::BooleanArray = key_rows(b)?
            .iter()
            .map(|r| Some(!kept.contains(r.as_ref())))
            .collect();
        out.push(datafusion::arrow::compute::filter_record_batch(b, &left)?);
    }
    Ok(out)
}

pub(crate) enum Sink {
    Console,
    /// Keyed by the first column; the other columns are the value.
    Table(String, OperatorMeta),
    /// Discards the rows (benchmarks measure the query alone, as Flink's
    /// `blackhole` connector).
    Blackhole,
    /// One record per row in a topic.
    Topic(Box<TopicSink>),
    /// Files per batch plus a manifest entry.
    File(FileSink),
}

/// How a topic sink encodes a row as a record value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RowFormat {
    /// A JSON object with every column.
    Json,
    /// One column's value as text.
    Text,
}

/// A `CREATE SINK`'s options, checked.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum SinkSpec {
    Console,
    Table,
    Blackhole,
    Topic(TopicSpec),
    File {
        path: PathBuf,
        format: FileFormat,
        /// Columns whose values name the directories (Hive's layout).
        partition_by: Vec<String>,
    },
}

/// A topic sink's options, checked.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct TopicSpec {
    topic: String,
    format: RowFormat,
    /// The columns whose values are the record key (Flink's
    /// `key.fields`): one column's value as text, several as a JSON object.
    key: Vec<String>,
    /// A Kafka cluster of its own instead of the job's topics.
    brokers: Option<String>,
    /// Used when the sink creates the topic.
    partitions: u32,
    /// Through a Kafka broker: a transaction per batch, or header tags.
    delivery: Delivery,
}

const SINK_TYPES: [&str; 5] = ["console", "table", "blackhole", "topic", "file"];
const TOPIC_OPTIONS: [&str; 9] = [
    "type",
    "topic",
    "format",
    "key",
    "brokers",
    "partitions",
    "delivery",
    "mode",
    "state_ttl",
];
const FILE_OPTIONS: [&str; 6] = [
    "type",
    "path",
    "format",
    "partition_by",
    "mode",
    "state_ttl",
];

impl SinkSpec {
    /// Checks a sink's options; the error names the sink, the option and
    /// what is accepted.
    pub(crate) fn parse(decl: &SinkDecl) -> Result<SinkSpec, String> {
        let o = &decl.options;
        let what = format!("sink {}", decl.name);
        let kind = choice(&what, o, "type", &SINK_TYPES, Some("console"))?.unwrap_or("console");
        let what = format!("{kind} sink {}", decl.name);
        match kind {
            "console" | "table" | "blackhole" => {
                check_known(&what, o, &["type", "mode", "state_ttl"])?;
                Ok(match kind {
                    "console" => SinkSpec::Console,
                    "table" => SinkSpec::Table,
                    _ => SinkSpec::Blackhole,
                })
            }
            "topic" => Ok(SinkSpec::Topic(TopicSpec::parse(&what, decl)?)),
            _ => parse_file(&what, o),
        }
    }

    /// Whether the sink writes outside the checkpoint per batch id, so that
    /// only one query may write to it.
    pub(crate) fn single_writer(&self) -> bool {
        matches!(self, SinkSpec::Topic { .. } | SinkSpec::File { .. })
    }
}

impl TopicSpec {
    fn parse(what: &str, decl: &SinkDecl) -> Result<TopicSpec, String> {
        let o = &decl.options;
        check_known(what, o, &TOPIC_OPTIONS)?;
        let topic = topic_option(what, o, "topic", Some(&decl.name))?.unwrap_or_default();
        let format = match choice(what, o, "format", &["json", "text"], Some("json"))? {
            Some("text") => RowFormat::Text,
            _ => RowFormat::Json,
        };
        let key: Vec<String> = match o.get("key") {
            None => Vec::new(),
            Some(k) => {
                let names: Vec<String> = k.split(',').map(|n| n.trim().to_owned()).collect();
                if names.iter().any(String::is_empty) {
                    return Err(format!(
                        "{what}: key = '{}' names no column (accepted: the name of one of the query's columns, or several separated by commas)",
                        k.trim()
                    ));
                }
                names
            }
        };
        let brokers = match o.get("brokers").map(|b| b.trim()) {
            Some("") => {
                return Err(format!(
                    "{what}: brokers = '' is empty (accepted: host:port[,host:port…]; leave it out to use the job's store or --brokers)"
                ));
            }
            b => b.map(str::to_owned),
        };
        let partitions = match o.get("partitions") {
            None => 1,
            Some(p) => p
                .trim()
                .parse::<u32>()
                .ok()
                .filter(|n| (1..=sluice_log::log::MAX_PARTITIONS as u32).contains(n))
                .ok_or_else(|| {
                    format!(
                        "{what}: partitions = {p:?} is not a partition count (accepted: a whole number from 1 to {}; used when the sink creates the topic)",
                        sluice_log::log::MAX_PARTITIONS
                    )
                })?,
        };
        let delivery = match choice(
            what,
            o,
            "delivery",
            &["transactional", "idempotent"],
            Some("transactional"),
        )? {
            Some("idempotent") => Delivery::Idempotent,
            _ => Delivery::Transactional,
        };
        Ok(TopicSpec {
            topic,
            format,
            key,
            brokers,
            partitions,
            delivery,
        })
    }
}

/// A file sink's options.
fn parse_file(what: &str, o: &BTreeMap<String, String>) -> Result<SinkSpec, String> {
    check_known(what, o, &FILE_OPTIONS)?;
    let path = match o.get("path").map(|p| p.trim()) {
        None | Some("") => {
            return Err(format!(
                "{what}: option path is required (accepted: a directory, e.g. path = 'out/clicks')"
            ));
        }
        Some(p) => PathBuf::from(p),
    };
    let format = match choice(
        what,
        o,
        "format",
        &["parquet", "json", "csv"],
        Some("parquet"),
    )? {
        Some("json") => FileFormat::Json,
        Some("csv") => FileFormat::Csv,
        _ => FileFormat::Parquet,
    };
    let partition_by: Vec<String> = o
        .get("partition_by")
        .map(|list| {
            list.split(',')
                .map(|c| c.trim().trim_matches('"').to_owned())
                .collect()
        })
        .unwrap_or_default();
    if let Some(twice) = partition_by
        .iter()
        .enumerate()
        .find(|(i, c)| partition_by[..*i].contains(c))
    {
        return Err(format!("{what}: partition_by names {} twice", twice.1));
    }
    if partition_by.iter().any(String::is_empty) {
        return Err(format!(
            "{what}: partition_by must name columns separated by commas, e.g. partition_by = 'dt, hm'"
        ));
    }
    Ok(SinkSpec::File {
        path,
        format,
        partition_by,
    })
}

impl Sink {
    /// The sink a `CREATE SINK` declares, for a query whose output has
    /// `schema`; `line` is the query's.
    pub(crate) fn new(
        decl: &SinkDecl,
        schema: &SchemaRef,
        topics: &Topics,
        line: usize,
    ) -> Result<Sink, SqlError> {
        let name = &decl.name;
        let spec =
            SinkSpec::parse(decl).map_err(|message| SqlError::Unsupported { line, message })?;
        Ok(match spec {
            SinkSpec::Console => Sink::Console,
            SinkSpec::Table => Sink::Table(name.clone(), table_meta(name, schema, line)?),
            SinkSpec::Blackhole => Sink::Blackhole,
            SinkSpec::Topic(spec) => {
                Sink::Topic(Box::new(TopicSink::open(name, spec, schema, topics, line)?))
            }
            SinkSpec::File {
                path,
                format,
                partition_by,
            } => Sink::File(FileSink::open(
                name,
                &path,
                format,
                partition_by,
                schema,
                line,
            )?),
        })
    }

    /// The result table this sink writes, for the checkpoint's registry.
    pub(crate) fn table_meta(&self) -> Option<OperatorMeta> {
        match self {
            Sink::Table(_, meta) => Some(meta.clone()),
            _ => None,
        }
    }
}

/// The writer identity of sink `name` in the job of `cx`, read once.
fn writer_id<'a>(
    cell: &'a OnceLock<WriterId>,
    cx: &BatchCx,
    name: &str,
) -> Result<&'a WriterId, SinkError> {
    if let Some(id) = cell.get() {
        return Ok(id);
    }
    let id = WriterId::of(cx.checkpoint, name)?;
    Ok(cell.get_or_init(|| id))
}

/// A sink's failure, attributed to the query's output operator.
fn sink_failed(sink: &str, e: impl std::fmt::Display) -> SqlError {
    SqlError::Engine(PlanError::Operator {
        operator: format!("insert-{sink}"),
        message: e.to_string(),
    })
}

/// Writes each result row as a record of a topic.
pub(crate) struct TopicSink {
    name: String,
    writer: TopicWriter,
    format: RowFormat,
    /// The key columns, if any.
    key: Vec<usize>,
    /// The value column with [`RowFormat::Text`].
    value: usize,
    id: OnceLock<WriterId>,
}

impl TopicSink {
    /// Whether its records join a Kafka transaction.
    pub(crate) fn transactional(&self) -> bool {
        self.writer.transactional()
    }
}

impl TopicSink {
    /// Opens the topic (creating it with `spec.partitions`) for a query
    /// whose output has `schema`.
    fn open(
        name: &str,
        spec: TopicSpec,
        schema: &SchemaRef,
        topics: &Topics,
        line: usize,
    ) -> Result<TopicSink, SqlError> {
        let what = format!("topic sink {name}");
        let (key, value) = record_columns(&what, &spec, schema)
            .map_err(|message| SqlError::Unsupported { line, message })?;
        let target = match (&spec.brokers, topics) {
            (Some(b), _) => TopicTarget::Kafka(b.clone()),
            (None, Topics::Brokers(b)) => TopicTarget::Kafka(b.clone()),
            (None, Topics::Embedded(store)) => TopicTarget::Embedded(store.clone()),
        };
        let writer =
            TopicWriter::open_with(&target, &spec.topic, spec.partitions, &what, spec.delivery)
                .map_err(|e| SqlError::Plan {
                    line,
                    message: e.to_string(),
                })?;
        Ok(TopicSink {
            name: name.to_owned(),
            writer,
            format: spec.format,
            key,
            value,
            id: OnceLock::new(),
        })
    }
}

/// The columns of `schema` a topic sink writes as each record's key (if
/// any) and, for `format = 'text'`, its value.
fn record_columns(
    what: &str,
    spec: &TopicSpec,
    schema: &SchemaRef,
) -> Result<(Vec<usize>, usize), String> {
    let columns = || {
        schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut key = Vec::with_capacity(spec.key.len());
    for k in &spec.key {
        let i = schema.index_of(k).map_err(|_| {
            format!(
                "{what}: key = {k:?} is not a column of the query (columns: {})",
                columns()
            )
        })?;
        if key.contains(&i) {
            return Err(format!("{what}: key names column {k} twice"));
        }
        text_cells_supported(schema.field(i)).map_err(|t| {
            format!(
                "{what}: key column {} has type {t}, which cannot be a record key (use a text, number, boolean, timestamp or binary column)",
                schema.field(i).name()
            )
        })?;
        key.push(i);
    }
    if spec.format == RowFormat::Json {
        return Ok((key, 0));
    }
    let rest: Vec<usize> = (0..schema.fields().len())
        .filter(|i| !key.contains(i))
        .collect();
    let [value] = rest[..] else {
        let names: Vec<&str> = key
            .iter()
            .map(|&k| schema.field(k).name().as_str())
            .collect();
        return Err(format!(
            "{what}: format = 'text' writes one column as the record value, but the query has columns {}{}: select one column (besides the key), or use format = 'json'",
            columns(),
            if names.is_empty() {
                String::new()
            } else {
                format!(" (key: {})", names.join(", "))
            }
        ));
    };
    text_cells_supported(schema.field(value)).map_err(|t| {
        format!(
            "{what}: column {} has type {t}, which format = 'text' cannot write (use format = 'json')",
            schema.field(value).name()
        )
    })?;
    Ok((key, value))
}

impl TopicSink {
    /// Each row's record key: its one key column as text, or its key
    /// columns as a JSON object (Flink's upsert-kafka with a JSON key
    /// format); none without key columns.
    fn keys(&self, b: &RecordBatch) -> Result<Vec<Option<Vec<u8>>>, SqlError> {
        match self.key[..] {
            [] => Ok(vec![None; b.num_rows()]),
            [k] => text_cells(b.column(k)),
            _ => Ok(json_lines(&b.project(&self.key)?)?
                .into_iter()
                .map(Some)
                .collect()),
        }
    }

    /// The batch's records by partition, in row order.
    fn records(
        &self,
        output: &[RecordBatch],
        timestamp_ms: i64,
    ) -> Result<BTreeMap<i32, Vec<OutRecord>>, SqlError> {
        let mut out: BTreeMap<i32, Vec<OutRecord>> = BTreeMap::new();
        for b in output.iter().filter(|b| b.num_rows() > 0) {
            let keys = self.keys(b)?;
            let values = match self.format {
                RowFormat::Json => json_lines(b)?.into_iter().map(Some).collect(),
                RowFormat::Text => text_cells(b.column(self.value))?,
            };
            for (key, value) in keys.into_iter().zip(values) {
                out.entry(partition_of(key.as_deref(), self.writer.partitions()))
                    .or_default()
                    .push(OutRecord {
                        key,
                        value,
                        timestamp_ms,
                        headers: Vec::new(),
                    });
            }
        }
        Ok(out)
    }

    /// Writes a batch's rows and, after them, tombstones (a key without a
    /// value) for the keys of `deletes`, as Kafka's compacted topics and
    /// Flink's upsert-kafka read a delete: one write per batch, which the
    /// writer makes idempotent by the batch's id.
    fn write(
        &self,
        cx: &BatchCx,
        output: &[RecordBatch],
        deletes: &[&RecordBatch],
    ) -> Result<(), SqlError> {
        let mut records = self.records(output, cx.batch_time_ms)?;
        if deletes.is_empty() {
            return self.send(cx, &records);
        }
        if self.key.is_empty() {
            return Err(sink_failed(
                &self.name,
                "a topic sink without a key cannot delete rows (refused at submission)",
            ));
        }
        for b in deletes {
            for key in self.keys(b)?.into_iter().flatten() {
                records
                    .entry(partition_of(Some(&key), self.writer.partitions()))
                    .or_default()
                    .push(OutRecord {
                        key: Some(key),
                        value: None,
                        timestamp_ms: cx.batch_time_ms,
                        headers: Vec::new(),
                    });
            }
        }
        self.send(cx, &records)
    }

    fn send(&self, cx: &BatchCx, records: &BTreeMap<i32, Vec<OutRecord>>) -> Result<(), SqlError> {
        let id = writer_id(&self.id, cx, &self.name).map_err(|e| sink_failed(&self.name, e))?;
        let report = self
            .writer
            .write(cx.transactions, id, cx.batch_id, records)
            .map_err(|e| sink_failed(&self.name, e))?;
        cx.count(
            &format!("already in topic {}", self.writer.topic()),
            report.skipped as u64,
        );
        Ok(())
    }
}

/// Writes each batch's rows as files listed in a manifest.
pub(crate) struct FileSink {
    name: String,
    writer: FileWriter,
    id: OnceLock<WriterId>,
}

impl FileSink {
    /// Opens the sink's directory for a query whose output has `schema`.
    fn open(
        name: &str,
        path: &std::path::Path,
        format: FileFormat,
        partition_by: Vec<String>,
        schema: &SchemaRef,
        line: usize,
    ) -> Result<FileSink, SqlError> {
        let what = format!("file sink {name}");
        let refuse = |message: String| SqlError::Unsupported { line, message };
        for column in &partition_by {
            let Ok(field) = schema.field_with_name(column) else {
                let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
                return Err(refuse(format!(
                    "{what}: partition_by names {column}, which the query does not return (its columns: {})",
                    names.join(", ")
                )));
            };
            if text_cells_supported(field).is_err() {
                return Err(refuse(format!(
                    "{what}: partition column {column} has type {}, which cannot name a directory",
                    field.data_type()
                )));
            }
        }
        if !partition_by.is_empty() && partition_by.len() >= schema.fields().len() {
            return Err(refuse(format!(
                "{what}: partition_by takes every column of the query, so the files would hold none"
            )));
        }
        if format == FileFormat::Csv
            && let Some(f) = schema.fields().iter().find(|f| f.data_type().is_nested())
        {
            return Err(SqlError::Unsupported {
                line,
                message: format!(
                    "{what}: column {} has type {}, which CSV cannot hold (use format = 'parquet' or 'json')",
                    f.name(),
                    f.data_type()
                ),
            });
        }
        let writer = FileWriter::open(path, format, &what)
            .map_err(|e| SqlError::Plan {
                line,
                message: e.to_string(),
            })?
            .partitioned_by(partition_by);
        Ok(FileSink {
            name: name.to_owned(),
            writer,
            id: OnceLock::new(),
        })
    }
}

impl FileSink {
    fn write(&self, cx: &BatchCx, output: &[RecordBatch]) -> Result<(), SqlError> {
        let id = writer_id(&self.id, cx, &self.name).map_err(|e| sink_failed(&self.name, e))?;
        let batches = output
            .iter()
            .filter(|b| b.num_rows() > 0)
            .map(plain_types)
            .collect::<Result<Vec<_>, _>>()?;
        let outcome = self
            .writer
            .write(id, cx.batch_id, cx.batch_time_ms, &batches)
            .map_err(|e| sink_failed(&self.name, e))?;
        if outcome == FileOutcome::AlreadyWritten {
            cx.count(
                &format!("batch already in {}", self.writer.dir().display()),
                1,
            );
        }
        Ok(())
    }
}

/// The batch with view types as their plain equivalents (`Utf8View` →
/// `Utf8`, `BinaryView` → `Binary`), which every reader of files knows.
fn plain_types(b: &RecordBatch) -> Result<RecordBatch, SqlError> {
    let plain = |dt: &DataType| match dt {
        DataType::Utf8View => DataType::Utf8,
        DataType::BinaryView => DataType::Binary,
        other => other.clone(),
    };
    if !b
        .schema()
        .fields()
        .iter()
        .any(|f| plain(f.data_type()) != *f.data_type())
    {
        return Ok(b.clone());
    }
    let fields: Vec<Field> = b
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone().with_data_type(plain(f.data_type())))
        .collect();
    let columns = b
        .columns()
        .iter()
        .zip(&fields)
        .map(|(c, f)| datafusion::arrow::compute::cast(c, f.data_type()))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RecordBatch::try_new(
        std::sync::Arc::new(Schema::new(fields)),
        columns,
    )?)
}

/// Whether a column can be written as text (a key, or a text value); the
/// type's name if not.
fn text_cells_supported(field: &Field) -> Result<(), String> {
    let dt = field.data_type();
    let ok = matches!(
        dt,
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView
    ) || (!dt.is_nested()
        && datafusion::arrow::compute::can_cast_types(dt, &DataType::Utf8));
    if ok { Ok(()) } else { Err(dt.to_string()) }
}

/// A column's cells as bytes: binary as is, anything else as its text.
fn text_cells(array: &ArrayRef) -> Result<Vec<Option<Vec<u8>>>, SqlError> {
    let binary = match array.data_type() {
        DataType::Binary => Some(array.as_binary::<i32>().iter().collect::<Vec<_>>()),
        DataType::LargeBinary => Some(array.as_binary::<i64>().iter().collect()),
        DataType::BinaryView => Some(array.as_binary_view().iter().collect()),
        _ => None,
    };
    if let Some(cells) = binary {
        return Ok(cells.into_iter().map(|c| c.map(<[u8]>::to_vec)).collect());
    }
    let text = datafusion::arrow::compute::cast(array, &DataType::Utf8)?;
    Ok(text
        .as_string::<i32>()
        .iter()
        .map(|c| c.map(|s| s.as_bytes().to_vec()))
        .collect())
}

/// Each row as a JSON object with every column (nulls written as `null`).
fn json_lines(b: &RecordBatch) -> Result<Vec<Vec<u8>>, SqlError> {
    let mut w = datafusion::arrow::json::WriterBuilder::new()
        .with_explicit_nulls(true)
        .build::<_, datafusion::arrow::json::writer::LineDelimited>(Vec::new());
    w.write(b)?;
    w.finish()?;
    let bytes = w.into_inner();
    let lines: Vec<Vec<u8>> = bytes
        .split(|&c| c == b'\n')
        .filter(|l| !l.is_empty())
        .map(<[u8]>::to_vec)
        .collect();
    if lines.len() != b.num_rows() {
        return Err(SqlError::Arrow(
            datafusion::arrow::error::ArrowError::JsonError(format!(
                "encoding {} rows as JSON gave {} lines",
                b.num_rows(),
                lines.len()
            )),
        ));
    }
    Ok(lines)
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

/// Encodes one cell with the codec of `data` (see `type_name`).
fn encode_cell(
    array: &ArrayRef,
    row: usize,
    optional: bool,
    last: bool,
    out: &mut Vec<u8>,
) -> bool {
    use datafusion::arrow::array::{
        BooleanArray, Float64Array, Int32Array, Int64Array, UInt32Array, UInt64Array,
    };
    use sluice_engine::data::Data;
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

/// Prints a batch's rows on the console under the batch's header.
fn print_rows(cx: &BatchCx, rows: &[RecordBatch], what: &str) -> Result<(), SqlError> {
    let table = datafusion::arrow::util::pretty::pretty_format_batches(rows)?;
    cx.print(&format!(
        "{}{what}\n{table}\n",
        sluice_engine::sink::console::header(cx.batch_id, cx.batch_time_ms)
    ));
    Ok(())
}

/// The column family of the result table `name`.
fn table_cf<'a>(cx: &'a BatchCx, name: &str) -> Result<&'a rocksdb::ColumnFamily, SqlError> {
    Ok(cx
        .checkpoint
        .cf(&format!("{TABLE_CF_PREFIX}{name}"))
        .map_err(PlanError::from)?)
}

/// A result table's key of row `row`: its first column (NULL keys are
/// not stored).
fn table_key(b: &RecordBatch, row: usize) -> Option<Vec<u8>> {
    let mut key = Vec::new();
    encode_cell(b.column(0), row, false, true, &mut key).then_some(key)
}

impl Sink {
    /// Why this sink cannot apply deletes (`None`: it can): a table
    /// deletes the key (its first column), a keyed topic writes a
    /// tombstone, the console prints them, a blackhole drops them; files
    /// only append.
    pub(crate) fn deletes_refusal(&self) -> Option<&'static str> {
        match self {
            Sink::Console | Sink::Blackhole | Sink::Table(..) => None,
            Sink::Topic(t) if !t.key.is_empty() => None,
            Sink::Topic(_) => Some(
                "its topic sink has no key: a delete is a tombstone (a record without a value) for the row's key: set key = '<column>' on the sink",
            ),
            Sink::File(_) => Some(
                "a file sink only appends: write the query to a table or a keyed topic sink (upserts and tombstones)",
            ),
        }
    }

    /// The columns that key the sink's rows: a table's first, a topic's
    /// `key`.
    pub(crate) fn key_columns(&self) -> Vec<usize> {
        match self {
            Sink::Table(..) => vec![0],
            Sink::Topic(t) => t.key.clone(),
            _ => Vec::new(),
        }
    }

    /// Writes one batch's changelog: its upserts, then its deletes (a
    /// key is either upserted or deleted in one batch).
    pub(crate) fn apply(&self, cx: &BatchCx, changes: &Changelog) -> Result<(), SqlError> {
        let deletes: Vec<&RecordBatch> = changes
            .deletes
            .iter()
            .filter(|b| b.num_rows() > 0)
            .collect();
        if let Sink::Topic(t) = self {
            return t.write(cx, &changes.upserts, &deletes);
        }
        self.write(cx, &changes.upserts)?;
        if deletes.is_empty() {
            return Ok(());
        }
        match self {
            Sink::Blackhole => {}
            Sink::Console => {
                let owned: Vec<RecordBatch> = deletes.into_iter().cloned().collect();
                print_rows(cx, &owned, " (deleted)")?;
            }
            Sink::Table(name, _) => {
                let cf = table_cf(cx, name)?;
                let keys: Vec<Vec<u8>> = deletes
                    .iter()
                    .flat_map(|b| (0..b.num_rows()).filter_map(|row| table_key(b, row)))
                    .collect();
                cx.write(|w| keys.iter().for_each(|k| w.delete_cf(cf, k)));
            }
            Sink::Topic(_) => {}
            Sink::File(f) => {
                return Err(sink_failed(
                    &f.name,
                    "a file sink cannot delete rows (refused at submission)",
                ));
            }
        }
        Ok(())
    }

    /// Writes one batch's result rows.
    pub(crate) fn write(&self, cx: &BatchCx, output: &[RecordBatch]) -> Result<(), SqlError> {
        match self {
            Sink::Blackhole => {}
            Sink::Console => {
                if output.iter().any(|b| b.num_rows() > 0) {
                    print_rows(cx, output, "")?;
                }
            }
            Sink::Table(name, _) => {
                let cf = table_cf(cx, name)?;
                let mut puts = Vec::new();
                for b in output {
                    let schema = b.schema();
                    for row in 0..b.num_rows() {
                        let Some(key) = table_key(b, row) else {
                            continue;
                        };
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
            Sink::Topic(t) => t.write(cx, output, &[])?,
            Sink::File(f) => f.write(cx, output)?,
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use datafusion::arrow::array::{Int64Array, StringArray, StringViewArray};

    use super::*;
    use sluice_log::log::{LogStore, StoreOptions};

    fn decl(options: &[(&str, &str)]) -> SinkDecl {
        SinkDecl {
            name: "s".into(),
            options: options
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    #[test]
    fn sink_options_have_defaults() {
        assert_eq!(SinkSpec::parse(&decl(&[])), Ok(SinkSpec::Console));
        assert_eq!(
            SinkSpec::parse(&decl(&[("type", "TOPIC")])),
            Ok(SinkSpec::Topic(TopicSpec {
                topic: "s".into(),
                format: RowFormat::Json,
                key: Vec::new(),
                brokers: None,
                partitions: 1,
                delivery: Delivery::Transactional,
            }))
        );
        match SinkSpec::parse(&decl(&[("type", "topic"), ("delivery", "idempotent")])) {
            Ok(SinkSpec::Topic(t)) => assert_eq!(t.delivery, Delivery::Idempotent),
            other => panic!("delivery = 'idempotent': {other:?}"),
        }
        let refused = SinkSpec::parse(&decl(&[("type", "topic"), ("delivery", "twice")]));
        assert!(
            refused
                .as_ref()
                .is_err_and(|e| e.contains("delivery") && e.contains("transactional")),
            "{refused:?}"
        );
        assert_eq!(
            SinkSpec::parse(&decl(&[("type", "file"), ("path", "out")])),
            Ok(SinkSpec::File {
                path: "out".into(),
                format: FileFormat::Parquet,
                partition_by: Vec::new(),
            })
        );
        assert!(
            SinkSpec::parse(&decl(&[("type", "file"), ("path", "o")]))
                .unwrap()
                .single_writer()
        );
        assert!(!SinkSpec::Table.single_writer());
    }

    fn rows() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("user", DataType::Utf8View, true),
            Field::new("n", DataType::Int64, true),
            Field::new("note", DataType::Utf8, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringViewArray::from(vec![Some("a"), Some("b"), None])),
                Arc::new(Int64Array::from(vec![Some(1), None, Some(3)])),
                Arc::new(StringArray::from(vec![Some("x"), None, Some("z")])),
            ],
        )
        .unwrap()
    }

    fn sink(format: RowFormat, key: Vec<usize>, value: usize) -> (TopicSink, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(
            LogStore::open(
                dir.path(),
                StoreOptions {
                    background: false,
                    ..Default::default()
                },
            )
            .unwrap(),
        );
        let writer =
            TopicWriter::open(&TopicTarget::Embedded(store), "out", 4, "topic sink s").unwrap();
        let sink = TopicSink {
            name: "s".into(),
            writer,
            format,
            key,
            value,
            id: OnceLock::new(),
        };
        (sink, dir)
    }

    #[test]
    fn json_rows_have_every_column_and_explicit_nulls() {
        let (sink, _dir) = sink(RowFormat::Json, vec![0], 0);
        let records = sink.records(&[rows()], 77).unwrap();
        let all: Vec<&OutRecord> = records.values().flatten().collect();
        assert_eq!(all.len(), 3);
        let by_key = |k: Option<&[u8]>| {
            all.iter()
                .find(|r| r.key.as_deref() == k)
                .map(|r| String::from_utf8(r.value.clone().unwrap()).unwrap())
                .unwrap()
        };
        assert_eq!(by_key(Some(b"a")), r#"{"user":"a","n":1,"note":"x"}"#);
        assert_eq!(by_key(Some(b"b")), r#"{"user":"b","n":null,"note":null}"#);
        // A NULL key: no key, partition 0.
        assert_eq!(records[&0].iter().filter(|r| r.key.is_none()).count(), 1);
        for (p, recs) in &records {
            for r in recs {
                assert_eq!(r.timestamp_ms, 77);
                assert_eq!(*p, partition_of(r.key.as_deref(), 4));
            }
        }
    }

    #[test]
    fn several_key_columns_make_a_json_object_key() {
        let (sink, _dir) = sink(RowFormat::Json, vec![1, 0], 0);
        let records = sink.records(&[rows()], 0).unwrap();
        let mut keys: Vec<String> = records
            .values()
            .flatten()
            .map(|r| String::from_utf8(r.key.clone().unwrap()).unwrap())
            .collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                r#"{"n":1,"user":"a"}"#,
                r#"{"n":3,"user":null}"#,
                r#"{"n":null,"user":"b"}"#
            ]
        );
        let spec = |key: &str| SinkSpec::parse(&decl(&[("type", "topic"), ("key", key)]));
        match spec(" auction , rank_number") {
            Ok(SinkSpec::Topic(t)) => assert_eq!(t.key, ["auction", "rank_number"]),
            other => panic!("{other:?}"),
        }
        assert!(spec("auction,").unwrap_err().contains("names no column"));
    }

    #[test]
    fn text_rows_write_one_column_and_null_is_a_tombstone() {
        let (sink, _dir) = sink(RowFormat::Text, Vec::new(), 1);
        let records = sink.records(&[rows()], 0).unwrap();
        assert_eq!(records.len(), 1, "no key: partition 0 only");
        let values: Vec<Option<Vec<u8>>> = records[&0].iter().map(|r| r.value.clone()).collect();
        assert_eq!(values, [Some(b"1".to_vec()), None, Some(b"3".to_vec())]);
    }

    #[test]
    fn files_get_plain_string_types() {
        let plain = plain_types(&rows()).unwrap();
        assert_eq!(plain.schema().field(0).data_type(), &DataType::Utf8);
        assert_eq!(plain.column(0).as_string::<i32>().value(1), "b");
        assert!(text_cells_supported(&Field::new("b", DataType::Binary, true)).is_ok());
        let list = DataType::new_list(DataType::Int64, true);
        assert_eq!(
            text_cells_supported(&Field::new("l", list.clone(), true)),
            Err(list.to_string())
        );
    }
}
