//! Result tables as join sides: a DataFusion `TableProvider` over the
//! column family `table.<name>` of a job's checkpoint, read in every batch
//! whose query scans it.
//!
//! The checkpoint is opened as a RocksDB *secondary* instance, which takes
//! no lock: the job that writes the table may be running (or be this very
//! job), and every read first catches up with what that job has committed.
//! Nothing is read when a query is planned, only when it runs, so
//! submitting a job (and `sluice explain`) never needs the table's rows.
//!
//! Columns are typed by the type names the checkpoint records for the
//! table (see `data`): the key's columns, then the value's (a pair is
//! two columns, an `option<…>` nullable ones).
//!
//! Cost: a batch that runs a query scanning the table reads the whole
//! table once, building only the columns the query uses (no filter is
//! pushed into the scan); the rows are held in memory while the query
//! runs and kept until the next read, which is skipped while the
//! checkpoint has not changed (same RocksDB sequence number, e.g. the
//! other job is idle).
//!
//! This module owns reading result tables for queries; it never writes to
//! a checkpoint.

use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::{
    ArrayRef, BinaryBuilder, BooleanBuilder, Float64Builder, Int32Builder, Int64Builder,
    RecordBatch, RecordBatchOptions, StringBuilder, UInt32Builder, UInt64Builder,
};
use datafusion::arrow::compute::{CastOptions, cast_with_options};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::arrow::error::ArrowError;
use datafusion::catalog::{Session, TableProvider};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{Expr, TableType};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::memory::MemoryStream;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    SendableRecordBatchStream,
};
use rocksdb::{DB, IteratorMode, Options};

use crate::context::StaticTable;
use crate::decl::TableDecl;
use crate::error::SqlError;
use sluice_engine::checkpoint::{Checkpoint, CheckpointError, OperatorMeta, TABLE_CF_PREFIX};
use sluice_engine::data::{CodecError, Data};
use sluice_engine::sink::WriterId;

/// Rows per Arrow batch a scan produces.
const BATCH_ROWS: usize = 8192;

/// A result table of another job, checked now: its checkpoint exists in
/// `path` and belongs to `job`, and it registered table `table`.
pub(super) fn other_job(
    decl: &TableDecl,
    table: &str,
    job: &str,
    path: &Path,
) -> Result<StaticTable, SqlError> {
    let refuse = |message: String| SqlError::Unsupported {
        line: decl.line,
        message: format!("result table {}: {message}", decl.name),
    };
    // Read-only mode takes no lock: the other job may be running.
    let checkpoint = Checkpoint::open_read_only(path, job).map_err(|e| match e {
        CheckpointError::Missing { .. } => refuse(format!(
            "job {job} has no checkpoint in {}: run job {job} first, or set checkpoint_dir = '…' to the directory it keeps its checkpoint in (its --checkpoint-dir)",
            path.display()
        )),
        other => refuse(format!("cannot read the checkpoint of job {job}: {other}")),
    })?;
    let owner = WriterId::of(&checkpoint, table)
        .map_err(|e| refuse(format!("cannot read the checkpoint of job {job}: {e}")))?
        .job;
    if owner != job {
        return Err(refuse(format!(
            "the checkpoint in {} belongs to job {owner}, not {job}: set job = '{owner}', or point checkpoint_dir at job {job}'s checkpoint",
            path.display()
        )));
    }
    let tables = checkpoint
        .tables()
        .map_err(|e| refuse(format!("cannot read the checkpoint of job {job}: {e}")))?;
    let Some(meta) = tables.iter().find(|t| t.name == table) else {
        let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
        return Err(refuse(format!(
            "job {job} has no result table {table} (its tables: {}): name one with table = '…'",
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join(", ")
            }
        )));
    };
    let label = format!("result table {table} of job {job} ({})", path.display());
    let layout =
        Layout::new(decl, &label, &meta.key_type, Some(&meta.state_type), None).map_err(refuse)?;
    Ok(provider(
        decl,
        label,
        Some(path.to_path_buf()),
        table,
        layout,
    ))
}

/// A result table of this job, which the table sink `table` writes with
/// the columns of `writer` (the query that writes it) as `meta` records.
pub(super) fn own_job(
    decl: &TableDecl,
    table: &str,
    meta: &OperatorMeta,
    writer: &Schema,
    checkpoint: Option<&PathBuf>,
) -> Result<StaticTable, SqlError> {
    let label = format!("result table {table} of this job");
    let names: Vec<String> = writer.fields().iter().map(|f| f.name().clone()).collect();
    // A key-only table stores a placeholder value, which is no column.
    let value_type = (names.len() > 1).then_some(meta.state_type.as_str());
    let layout =
        Layout::new(decl, &label, &meta.key_type, value_type, Some(names)).map_err(|message| {
            SqlError::Unsupported {
                line: decl.line,
                message: format!("result table {}: {message}", decl.name),
            }
        })?;
    Ok(provider(decl, label, checkpoint.cloned(), table, layout))
}

fn provider(
    decl: &TableDecl,
    label: String,
    path: Option<PathBuf>,
    table: &str,
    layout: Layout,
) -> StaticTable {
    StaticTable {
        name: decl.name.clone(),
        reading: "a result table, re-read each batch as of its job's last commit",
        table: Arc::new(ResultTable {
            reader: Arc::new(Reader {
                label,
                path,
                cf: format!("{TABLE_CF_PREFIX}{table}"),
                layout,
                state: Mutex::new(ReadState::default()),
            }),
        }),
    }
}

/// A stored type (a `data` type name).
#[derive(Debug, Clone, PartialEq)]
enum Ty {
    Leaf(Leaf),
    Pair(Box<Ty>, Box<Ty>),
    Opt(Box<Ty>),
}

/// A stored scalar: one column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leaf {
    U64,
    U32,
    I64,
    I32,
    F64,
    Bool,
    Str,
    Bytes,
}

impl Ty {
    fn parse(name: &str) -> Option<Ty> {
        let name = name.trim();
        let leaf = match name {
            "u64" => Leaf::U64,
            "u32" => Leaf::U32,
            "i64" => Leaf::I64,
            "i32" => Leaf::I32,
            "f64" => Leaf::F64,
            "bool" => Leaf::Bool,
            "string" => Leaf::Str,
            "bytes" => Leaf::Bytes,
            _ => {
                if let Some(inner) = name
                    .strip_prefix("option<")
                    .and_then(|t| t.strip_suffix('>'))
                {
                    return Some(Ty::Opt(Box::new(Ty::parse(inner)?)));
                }
                let (a, b) = split_pair(name.strip_prefix('(')?.strip_suffix(')')?)?;
                return Some(Ty::Pair(Box::new(Ty::parse(a)?), Box::new(Ty::parse(b)?)));
            }
        };
        Some(Ty::Leaf(leaf))
    }

    /// Its columns in encoding order, each nullable when inside an option.
    fn leaves(&self, nullable: bool, out: &mut Vec<(Leaf, bool)>) {
        match self {
            Ty::Leaf(l) => out.push((*l, nullable)),
            Ty::Pair(a, b) => {
                a.leaves(nullable, out);
                b.leaves(nullable, out);
            }
            Ty::Opt(inner) => inner.leaves(true, out),
        }
    }

    fn width(&self) -> usize {
        match self {
            Ty::Leaf(_) => 1,
            Ty::Pair(a, b) => a.width() + b.width(),
            Ty::Opt(inner) => inner.width(),
        }
    }
}

/// Splits `a,b` at its top-level comma.
fn split_pair(inner: &str) -> Option<(&str, &str)> {
    let mut depth = 0i32;
    for (i, c) in inner.char_indices() {
        match c {
            '(' | '<' => depth += 1,
            ')' | '>' => depth -= 1,
            ',' if depth == 0 => return Some((&inner[..i], &inner[i + 1..])),
            _ => {}
        }
    }
    None
}

impl Leaf {
    fn data_type(self) -> DataType {
        match self {
            Leaf::U64 => DataType::UInt64,
            Leaf::U32 => DataType::UInt32,
            Leaf::I64 => DataType::Int64,
            Leaf::I32 => DataType::Int32,
            Leaf::F64 => DataType::Float64,
            Leaf::Bool => DataType::Boolean,
            Leaf::Str => DataType::Utf8,
            Leaf::Bytes => DataType::Binary,
        }
    }
}

/// How to declare a column of type `dt` in `CREATE TABLE`.
fn sql_type(dt: &DataType) -> String {
    match dt {
        DataType::UInt64 | DataType::Int64 | DataType::UInt32 => "BIGINT".into(),
        DataType::Int32 => "INT".into(),
        DataType::Float64 => "DOUBLE".into(),
        DataType::Boolean => "BOOLEAN".into(),
        DataType::Utf8 => "TEXT".into(),
        DataType::Binary => "BYTEA".into(),
        other => other.to_string(),
    }
}

/// Whether a stored column of type `stored` can be read as `declared`:
/// the same type, any number as any number, or an i64 as a TIMESTAMP
/// (milliseconds).
fn readable_as(stored: &DataType, declared: &DataType) -> bool {
    stored == declared
        || (stored.is_numeric() && declared.is_numeric())
        || (stored == &DataType::Int64 && matches!(declared, DataType::Timestamp(_, _)))
}

/// How stored rows become the table's columns.
#[derive(Debug)]
struct Layout {
    key: Ty,
    /// `None`: only keys are read (a key-only table).
    value: Option<Ty>,
    /// The stored scalar of each column, keys first.
    leaves: Vec<Leaf>,
    key_width: usize,
    /// What queries see: declared names and types, or the stored ones.
    schema: SchemaRef,
    /// `key_type` → `value_type`, for messages.
    types: String,
}

impl Layout {
    /// The columns of a table stored as `key_type` → `value_type`: named
    /// `names` (or `key`, `value`, `value_1`, …), unless `decl` declares
    /// its columns, which must match in number and be readable as
    /// declared.
    fn new(
        decl: &TableDecl,
        what: &str,
        key_type: &str,
        value_type: Option<&str>,
        names: Option<Vec<String>>,
    ) -> Result<Layout, String> {
        let parse = |name: &str| {
            Ty::parse(name)
                .ok_or_else(|| format!("{what} stores {name}, which cannot be read as columns yet"))
        };
        let key = parse(key_type)?;
        let value = value_type.map(parse).transpose()?;
        let mut leaves = Vec::new();
        key.leaves(false, &mut leaves);
        let key_width = leaves.len();
        if let Some(v) = &value {
            v.leaves(false, &mut leaves);
        }
        let numbered = |base: &str, n: usize| -> Vec<String> {
            if n == 1 {
                vec![base.to_owned()]
            } else {
                (1..=n).map(|i| format!("{base}_{i}")).collect()
            }
        };
        let names = names.unwrap_or_else(|| {
            let mut names = numbered("key", key_width);
            names.extend(numbered("value", leaves.len() - key_width));
            names
        });
        let stored: Vec<DataType> = leaves.iter().map(|(l, _)| l.data_type()).collect();
        let described = names
            .iter()
            .zip(&stored)
            .map(|(n, t)| format!("{n} {}", sql_type(t)))
            .collect::<Vec<_>>()
            .join(", ");
        let fields: Vec<Field> = if decl.columns.is_empty() {
            names
                .iter()
                .zip(&leaves)
                .map(|(n, (l, nullable))| Field::new(n, l.data_type(), *nullable))
                .collect()
        } else {
            if decl.columns.len() != stored.len() {
                return Err(format!(
                    "{what} has {} columns ({described}), but CREATE TABLE declares {}: declare {}, or none to take them as they are",
                    stored.len(),
                    decl.columns.len(),
                    stored.len()
                ));
            }
            for (field, (name, stored)) in decl.columns.iter().zip(names.iter().zip(&stored)) {
                if !readable_as(stored, field.data_type()) {
                    return Err(format!(
                        "column {} is declared {}, but {what} stores {} there (its column {name}): declare it {}",
                        field.name(),
                        sql_type(field.data_type()),
                        sql_type(stored),
                        sql_type(stored)
                    ));
                }
            }
            decl.columns.clone()
        };
        Ok(Layout {
            key,
            value,
            leaves: leaves.iter().map(|(l, _)| *l).collect(),
            key_width,
            schema: Arc::new(Schema::new(fields)),
            types: format!("{key_type} → {}", value_type.unwrap_or("(no value)")),
        })
    }

    /// Decodes one stored entry into the columns' builders.
    fn push(&self, key: &[u8], value: &[u8], columns: &mut [Column]) -> Result<(), CodecError> {
        let (keys, values) = columns.split_at_mut(self.key_width);
        if keys.iter().any(Column::wanted) {
            decode_all(&self.key, key, keys)?;
        }
        if let Some(v) = &self.value
            && values.iter().any(Column::wanted)
        {
            decode_all(v, value, values)?;
        }
        Ok(())
    }
}

/// Decodes a whole stored key or value.
fn decode_all(ty: &Ty, mut bytes: &[u8], columns: &mut [Column]) -> Result<(), CodecError> {
    decode(ty, &mut bytes, true, columns)?;
    if bytes.is_empty() {
        Ok(())
    } else {
        Err(CodecError {
            type_name: "row",
            reason: "trailing bytes",
        })
    }
}

fn decode(
    ty: &Ty,
    input: &mut &[u8],
    last: bool,
    columns: &mut [Column],
) -> Result<(), CodecError> {
    match ty {
        Ty::Leaf(_) => match columns.first_mut() {
            Some(c) => c.push(input, last),
            None => Err(CodecError {
                type_name: "row",
                reason: "more values than columns",
            }),
        },
        Ty::Pair(a, b) => {
            let (first, second) = columns.split_at_mut(a.width().min(columns.len()));
            decode(a, input, false, first)?;
            decode(b, input, last, second)
        }
        Ty::Opt(inner) => {
            let Some((&tag, rest)) = input.split_first() else {
                return Err(CodecError {
                    type_name: "option",
                    reason: "truncated",
                });
            };
            *input = rest;
            match tag {
                0 => {
                    columns.iter_mut().for_each(Column::push_null);
                    Ok(())
                }
                1 => decode(inner, input, last, columns),
                _ => Err(CodecError {
                    type_name: "option",
                    reason: "bad tag",
                }),
            }
        }
    }
}

/// One column being built, or one the query does not use (its bytes are
/// only skipped).
enum Column {
    Skip(Leaf),
    U64(UInt64Builder),
    U32(UInt32Builder),
    I64(Int64Builder),
    I32(Int32Builder),
    F64(Float64Builder),
    Bool(BooleanBuilder),
    Str(StringBuilder),
    Bytes(BinaryBuilder),
}

impl Column {
    fn new(leaf: Leaf, wanted: bool) -> Column {
        if !wanted {
            return Column::Skip(leaf);
        }
        match leaf {
            Leaf::U64 => Column::U64(UInt64Builder::new()),
            Leaf::U32 => Column::U32(UInt32Builder::new()),
            Leaf::I64 => Column::I64(Int64Builder::new()),
            Leaf::I32 => Column::I32(Int32Builder::new()),
            Leaf::F64 => Column::F64(Float64Builder::new()),
            Leaf::Bool => Column::Bool(BooleanBuilder::new()),
            Leaf::Str => Column::Str(StringBuilder::new()),
            Leaf::Bytes => Column::Bytes(BinaryBuilder::new()),
        }
    }

    fn wanted(&self) -> bool {
        !matches!(self, Column::Skip(_))
    }

    fn push(&mut self, input: &mut &[u8], last: bool) -> Result<(), CodecError> {
        match self {
            Column::Skip(leaf) => match leaf {
                Leaf::U64 => u64::decode(input, last).map(drop),
                Leaf::U32 => u32::decode(input, last).map(drop),
                Leaf::I64 => i64::decode(input, last).map(drop),
                Leaf::I32 => i32::decode(input, last).map(drop),
                Leaf::F64 => f64::decode(input, last).map(drop),
                Leaf::Bool => bool::decode(input, last).map(drop),
                Leaf::Str | Leaf::Bytes => Vec::<u8>::decode(input, last).map(drop),
            },
            Column::U64(b) => u64::decode(input, last).map(|v| b.append_value(v)),
            Column::U32(b) => u32::decode(input, last).map(|v| b.append_value(v)),
            Column::I64(b) => i64::decode(input, last).map(|v| b.append_value(v)),
            Column::I32(b) => i32::decode(input, last).map(|v| b.append_value(v)),
            Column::F64(b) => f64::decode(input, last).map(|v| b.append_value(v)),
            Column::Bool(b) => bool::decode(input, last).map(|v| b.append_value(v)),
            Column::Str(b) => String::decode(input, last).map(|v| b.append_value(v)),
            Column::Bytes(b) => Vec::<u8>::decode(input, last).map(|v| b.append_value(v)),
        }
    }

    fn push_null(&mut self) {
        match self {
            Column::Skip(_) => {}
            Column::U64(b) => b.append_null(),
            Column::U32(b) => b.append_null(),
            Column::I64(b) => b.append_null(),
            Column::I32(b) => b.append_null(),
            Column::F64(b) => b.append_null(),
            Column::Bool(b) => b.append_null(),
            Column::Str(b) => b.append_null(),
            Column::Bytes(b) => b.append_null(),
        }
    }

    /// The column's rows so far (the builder starts over).
    fn finish(&mut self) -> Option<ArrayRef> {
        Some(match self {
            Column::Skip(_) => return None,
            Column::U64(b) => Arc::new(b.finish()),
            Column::U32(b) => Arc::new(b.finish()),
            Column::I64(b) => Arc::new(b.finish()),
            Column::I32(b) => Arc::new(b.finish()),
            Column::F64(b) => Arc::new(b.finish()),
            Column::Bool(b) => Arc::new(b.finish()),
            Column::Str(b) => Arc::new(b.finish()),
            Column::Bytes(b) => Arc::new(b.finish()),
        })
    }
}

/// Why a result table could not be read during a batch.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ReadError {
    #[error("{table}: no checkpoint to read it from (only a running job reads its own tables)")]
    NoCheckpoint { table: String },
    #[error("{table}: cannot make a scratch directory to read {path}: {source}")]
    Scratch {
        table: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{table}: cannot {action} the checkpoint {path}: {source}")]
    Rocks {
        table: String,
        action: &'static str,
        path: PathBuf,
        source: rocksdb::Error,
    },
    #[error("{table}: the checkpoint {path} has no column family {cf}")]
    MissingTable {
        table: String,
        path: PathBuf,
        cf: String,
    },
    #[error("{table}: a stored row does not decode as {types}: {source}")]
    Decode {
        table: String,
        types: String,
        source: CodecError,
    },
    #[error("{table}: {source}")]
    Arrow { table: String, source: ArrowError },
}

/// A directory for the secondary instance's own files (its info log),
/// removed with it.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new() -> std::io::Result<ScratchDir> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "sluice-result-table-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir)?;
        Ok(ScratchDir(dir))
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        // Only a log file is in it; a leftover is harmless.
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A secondary instance of a checkpoint. Fields drop in order: the
/// database closes before its directory goes.
struct Secondary {
    db: DB,
    _dir: ScratchDir,
}

#[derive(Default)]
struct ReadState {
    db: Option<Secondary>,
    /// The last read: the checkpoint's sequence number, the projection and
    /// the rows.
    last: Option<(u64, Vec<usize>, Vec<RecordBatch>)>,
}

/// Reads one result table; shared by every plan that scans it.
struct Reader {
    /// "result table per_user of job totals (checkpoints/totals)".
    label: String,
    /// The checkpoint; `None` when only explaining a script.
    path: Option<PathBuf>,
    cf: String,
    layout: Layout,
    state: Mutex<ReadState>,
}

impl fmt::Debug for Reader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reader")
            .field("label", &self.label)
            .field("path", &self.path)
            .finish()
    }
}

impl Reader {
    fn open(&self) -> Result<Secondary, ReadError> {
        let path = self.path.as_ref().ok_or_else(|| ReadError::NoCheckpoint {
            table: self.label.clone(),
        })?;
        let dir = ScratchDir::new().map_err(|source| ReadError::Scratch {
            table: self.label.clone(),
            path: path.clone(),
            source,
        })?;
        let mut opts = Options::default();
        // The writing job deletes files compaction replaced; a secondary
        // keeps reading them only if it holds every file open.
        opts.set_max_open_files(-1);
        // A table a Rust job fills with `sum_into_table` holds operands.
        sluice_engine::checkpoint::sums::install(&mut opts);
        let cf = rocksdb::ColumnFamilyDescriptor::new(&self.cf, opts.clone());
        let db =
            DB::open_cf_descriptors_as_secondary(&opts, path, &dir.0, [cf]).map_err(|source| {
                ReadError::Rocks {
                    table: self.label.clone(),
                    action: "open",
                    path: path.clone(),
                    source,
                }
            })?;
        Ok(Secondary { db, _dir: dir })
    }

    fn rocks(&self, action: &'static str, source: rocksdb::Error) -> ReadError {
        ReadError::Rocks {
            table: self.label.clone(),
            action,
            path: self.path.clone().unwrap_or_default(),
            source,
        }
    }

    /// The table's rows as of the last commit, with the columns
    /// `projection` names (indices into the table's schema).
    fn read(
        &self,
        projection: &[usize],
        schema: &SchemaRef,
    ) -> Result<Vec<RecordBatch>, ReadError> {
        let mut state = sluice_log::common::mutex(&self.state);
        // Reopened after a failure: the instance may be what failed.
        let secondary = match state.db.take() {
            Some(s) => s,
            None => self.open()?,
        };
        secondary
            .db
            .try_catch_up_with_primary()
            .map_err(|e| self.rocks("catch up with", e))?;
        let sequence = secondary.db.latest_sequence_number();
        let rows = match &state.last {
            Some((s, p, rows)) if *s == sequence && p == projection => rows.clone(),
            _ => {
                let rows = self.scan(&secondary.db, projection, schema)?;
                state.last = Some((sequence, projection.to_vec(), rows.clone()));
                rows
            }
        };
        state.db = Some(secondary);
        Ok(rows)
    }

    fn scan(
        &self,
        db: &DB,
        projection: &[usize],
        schema: &SchemaRef,
    ) -> Result<Vec<RecordBatch>, ReadError> {
        let layout = &self.layout;
        let cf = db
            .cf_handle(&self.cf)
            .ok_or_else(|| ReadError::MissingTable {
                table: self.label.clone(),
                path: self.path.clone().unwrap_or_default(),
                cf: self.cf.clone(),
            })?;
        let mut columns: Vec<Column> = layout
            .leaves
            .iter()
            .enumerate()
            .map(|(i, leaf)| Column::new(*leaf, projection.contains(&i)))
            .collect();
        let arrow = |source| ReadError::Arrow {
            table: self.label.clone(),
            source,
        };
        let mut out = Vec::new();
        let mut rows = 0usize;
        for item in db.iterator_cf(cf, IteratorMode::Start) {
            let (key, value) = item.map_err(|e| self.rocks("read", e))?;
            layout
                .push(&key, &value, &mut columns)
                .map_err(|source| ReadError::Decode {
                    table: self.label.clone(),
                    types: layout.types.clone(),
                    source,
                })?;
            rows += 1;
            if rows == BATCH_ROWS {
                out.push(batch(&mut columns, rows, projection, schema).map_err(arrow)?);
                rows = 0;
            }
        }
        if rows > 0 {
            out.push(batch(&mut columns, rows, projection, schema).map_err(arrow)?);
        }
        Ok(out)
    }
}

/// The rows built so far as one batch of the projected columns, cast
/// to the declared types.
fn batch(
    columns: &mut [Column],
    rows: usize,
    projection: &[usize],
    schema: &SchemaRef,
) -> Result<RecordBatch, ArrowError> {
    let built: Vec<Option<ArrayRef>> = columns.iter_mut().map(Column::finish).collect();
    let strict = CastOptions {
        safe: false,
        ..Default::default()
    };
    let arrays = projection
        .iter()
        .zip(schema.fields())
        .map(|(&i, field)| {
            let array = built.get(i).cloned().flatten().ok_or_else(|| {
                ArrowError::InvalidArgumentError(format!("column {i} was not read"))
            })?;
            if array.data_type() == field.data_type() {
                Ok(array)
            } else {
                cast_with_options(&array, field.data_type(), &strict)
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    RecordBatch::try_new_with_options(
        schema.clone(),
        arrays,
        &RecordBatchOptions::new().with_row_count(Some(rows)),
    )
}

/// The `TableProvider` queries see.
#[derive(Debug)]
struct ResultTable {
    reader: Arc<Reader>,
}

impl TableProvider for ResultTable {
    fn schema(&self) -> SchemaRef {
        self.reader.layout.schema.clone()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    // `async fn scan` as `#[async_trait]` expands it (the crate is not a
    // dependency of ours): planning reads nothing, so the future is ready.
    fn scan<'life0, 'life1, 'life2, 'life3, 'async_trait>(
        &'life0 self,
        _state: &'life1 dyn Session,
        projection: Option<&'life2 Vec<usize>>,
        _filters: &'life3 [Expr],
        _limit: Option<usize>,
    ) -> Pin<Box<dyn Future<Output = DfResult<Arc<dyn ExecutionPlan>>> + Send + 'async_trait>>
    where
        'life0: 'async_trait,
        'life1: 'async_trait,
        'life2: 'async_trait,
        'life3: 'async_trait,
        Self: 'async_trait,
    {
        let plan = ResultTableExec::new(self.reader.clone(), projection)
            .map(|p| Arc::new(p) as Arc<dyn ExecutionPlan>);
        Box::pin(std::future::ready(plan))
    }
}

/// Scans a result table when the query runs.
#[derive(Debug)]
struct ResultTableExec {
    reader: Arc<Reader>,
    projection: Vec<usize>,
    schema: SchemaRef,
    properties: Arc<PlanProperties>,
}

impl ResultTableExec {
    fn new(reader: Arc<Reader>, projection: Option<&Vec<usize>>) -> DfResult<ResultTableExec> {
        let full = reader.layout.schema.clone();
        let projection: Vec<usize> = match projection {
            Some(p) => p.clone(),
            None => (0..full.fields().len()).collect(),
        };
        let schema = Arc::new(full.project(&projection)?);
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Ok(ResultTableExec {
            reader,
            projection,
            schema,
            properties,
        })
    }
}

impl DisplayAs for ResultTableExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut fmt::Formatter) -> fmt::Result {
        let columns: Vec<&str> = self
            .schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        match t {
            DisplayFormatType::Default | DisplayFormatType::Verbose => write!(
                f,
                "ResultTableExec: {}, projection=[{}]",
                self.reader.label,
                columns.join(", ")
            ),
            DisplayFormatType::TreeRender => write!(f, "{}", self.reader.label),
        }
    }
}

impl ExecutionPlan for ResultTableExec {
    fn name(&self) -> &str {
        "ResultTableExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        Vec::new()
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> DfResult<TreeNodeRecursion>,
    ) -> DfResult<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn with_new_children(
        self: Arc<Self>,
        _children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(
        &self,
        partition: usize,
        _context: Arc<TaskContext>,
    ) -> DfResult<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!(
                "{} has one partition, not {partition}",
                self.reader.label
            )));
        }
        // A local sequential scan, like a MemTable's copy: done on the
        // query's own thread rather than handed to another pool.
        let rows = self
            .reader
            .read(&self.projection, &self.schema)
            .map_err(|e| DataFusionError::External(Box::new(e)))?;
        Ok(Box::pin(MemoryStream::try_new(
            rows,
            self.schema.clone(),
            None,
        )?))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use datafusion::arrow::array::{Array, AsArray, Int64Array};
    use datafusion::arrow::datatypes::Int64Type;
    use datafusion::prelude::SessionContext;
    use rocksdb::WriteBatch;

    use super::*;
    use sluice_engine::checkpoint::CommittedBatch;
    use sluice_engine::data::encode_to_vec;

    #[test]
    fn type_names_become_columns() {
        let ty = Ty::parse("(option<i64>,(string,option<(u64,bool)>))").unwrap();
        let mut leaves = Vec::new();
        ty.leaves(false, &mut leaves);
        assert_eq!(
            leaves,
            [
                (Leaf::I64, true),
                (Leaf::Str, false),
                (Leaf::U64, true),
                (Leaf::Bool, true)
            ]
        );
        assert_eq!(ty.width(), 4);
        assert_eq!(Ty::parse("map<string>"), None);
        assert_eq!(Ty::parse("(u64)"), None);
    }

    fn decl(columns: Vec<Field>) -> TableDecl {
        TableDecl {
            name: "t".into(),
            columns,
            options: BTreeMap::new(),
            line: 1,
        }
    }

    #[test]
    fn declared_columns_must_match_the_stored_ones() {
        let what = "result table x";
        let layout = Layout::new(
            &decl(vec![]),
            what,
            "string",
            Some("(u64,option<string>)"),
            None,
        )
        .unwrap();
        let names: Vec<&str> = layout
            .schema
            .fields()
            .iter()
            .map(|f| f.name().as_str())
            .collect();
        assert_eq!(names, ["key", "value_1", "value_2"]);
        let err = Layout::new(
            &decl(vec![Field::new("k", DataType::Utf8, true)]),
            what,
            "string",
            Some("u64"),
            None,
        )
        .unwrap_err();
        assert!(
            err.contains("has 2 columns (key TEXT, value BIGINT), but CREATE TABLE declares 1"),
            "{err}"
        );
        let err = Layout::new(
            &decl(vec![
                Field::new("k", DataType::Int64, true),
                Field::new("n", DataType::Int64, true),
            ]),
            what,
            "string",
            Some("u64"),
            None,
        )
        .unwrap_err();
        assert!(
            err.contains("column k is declared BIGINT, but result table x stores TEXT there (its column key): declare it TEXT"),
            "{err}"
        );
        // Numbers read as any number.
        Layout::new(
            &decl(vec![
                Field::new("k", DataType::Utf8, true),
                Field::new("n", DataType::Float64, true),
            ]),
            what,
            "string",
            Some("u64"),
            None,
        )
        .unwrap();
    }

    /// A table written by a primary (as a job does), read by the provider
    /// while the primary stays open, then read again after another commit.
    #[test]
    fn reads_what_the_writer_committed_while_it_holds_the_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let cf_name = format!("{TABLE_CF_PREFIX}totals");
        let primary =
            Checkpoint::open(dir.path(), "writer", std::slice::from_ref(&cf_name)).unwrap();
        let put = |rows: &[(&str, Option<i64>)], batch: u64| {
            let mut w = WriteBatch::default();
            let cf = primary.cf(&cf_name).unwrap();
            for (k, v) in rows {
                w.put_cf(
                    cf,
                    encode_to_vec::<String>(k),
                    encode_to_vec::<Option<i64>>(*v),
                );
            }
            primary
                .commit(
                    w,
                    &CommittedBatch {
                        batch_id: batch,
                        ..Default::default()
                    },
                )
                .unwrap();
        };
        put(&[("a", Some(1)), ("b", None)], 1);
        let layout = Layout::new(&decl(vec![]), "t", "string", Some("option<i64>"), None).unwrap();
        let table = provider(
            &decl(vec![]),
            "result table totals".into(),
            Some(dir.path().to_path_buf()),
            "totals",
            layout,
        );
        let ctx = SessionContext::new();
        ctx.register_table("t", table.table.clone()).unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let query = |sql: &str| -> Vec<(String, Option<i64>)> {
            let batches = runtime
                .block_on(async { ctx.sql(sql).await?.collect().await })
                .unwrap();
            batches
                .iter()
                .flat_map(|b| {
                    let k = b.column(0).as_string::<i32>().clone();
                    let v = b.column(1).as_primitive::<Int64Type>().clone();
                    (0..b.num_rows())
                        .map(move |i| (k.value(i).to_owned(), (!v.is_null(i)).then(|| v.value(i))))
                        .collect::<Vec<_>>()
                })
                .collect()
        };
        assert_eq!(
            query("SELECT key, value FROM t ORDER BY key"),
            [("a".to_owned(), Some(1)), ("b".to_owned(), None)]
        );
        put(&[("b", Some(5)), ("c", Some(7))], 2);
        assert_eq!(
            query("SELECT key, value FROM t WHERE value > 1 ORDER BY key"),
            [("b".to_owned(), Some(5)), ("c".to_owned(), Some(7))]
        );
        // Only the value column: the key is skipped, not built.
        let sums = runtime
            .block_on(async { ctx.sql("SELECT sum(value) FROM t").await?.collect().await })
            .unwrap();
        let sum = sums[0]
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!(sum.value(0), 13);
    }
}
