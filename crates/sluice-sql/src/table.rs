//! Tables that queries join with their streams (Spark's stream–static
//! join), declared with `CREATE TABLE`:
//!
//! * **File tables**: `CREATE TABLE products (id BIGINT, name TEXT) WITH
//!   (path = 'products.csv', format = 'csv' | 'json' | 'parquet', header =
//!   'true')` is read once, when the job starts, into memory; every batch's
//!   query sees the same rows, so a stream joins it like a dimension table.
//!   Changing the file takes a restart.
//! * **Result tables**: `CREATE TABLE totals [(columns)] WITH (type =
//!   'result', table = 'per_user' [, job = 'other' [, checkpoint_dir =
//!   'dir']])` is a RocksDB result table that a `table` sink writes, read
//!   again in every batch that queries it, as of the last batch committed
//!   by the job that writes it (Spark's stream–static join against a Delta
//!   table). Without `job` it is this job's own table, written by a query
//!   of the same script: the batch's own writes are not committed while
//!   its queries run, so a batch sees what the batches before it wrote.
//!   With `job` it is another job's, read from its checkpoint
//!   (`checkpoint_dir`, default `checkpoints/<job>`) while that job may be
//!   running ([`result`]).
//!
//! Options are checked when the script is parsed, the files and the other
//! job's checkpoint when the job is submitted, before any record is read.
//!
//! This module owns declaring and loading tables; it never reads streams
//! and never writes to a checkpoint.

mod result;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::datasource::MemTable;
use datafusion::prelude::{CsvReadOptions, JsonReadOptions, ParquetReadOptions, SessionContext};

use crate::context::StaticTable;
use crate::decl::{QueryDecl, Script, TableDecl};
use crate::error::SqlError;
use crate::options::{check_known, choice};
use crate::sinks::{Sink, SinkSpec};
use crate::topics::Topics;

/// How a file table's file is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileFormat {
    Csv,
    Json,
    Parquet,
}

/// A `CREATE TABLE`'s options, checked.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum TableSpec {
    File {
        path: String,
        format: FileFormat,
        header: bool,
    },
    Result {
        /// The result table's name in the checkpoint.
        table: String,
        /// The job that writes it; `None`: this job.
        job: Option<String>,
        /// Where that job keeps its checkpoint (its `--checkpoint-dir`).
        checkpoint_dir: Option<PathBuf>,
    },
}

const TABLE_TYPES: [&str; 2] = ["file", "result"];
const FILE_OPTIONS: [&str; 4] = ["type", "path", "format", "header"];
const RESULT_OPTIONS: [&str; 4] = ["type", "table", "job", "checkpoint_dir"];

/// A non-empty text option, trimmed.
fn text_option(
    what: &str,
    decl: &TableDecl,
    key: &str,
    accepted: &str,
) -> Result<Option<String>, String> {
    match decl.options.get(key).map(|v| v.trim()) {
        None => Ok(None),
        Some("") => Err(format!(
            "{what}: {key} = '' is empty (accepted: {accepted})"
        )),
        Some(v) => Ok(Some(v.to_owned())),
    }
}

impl TableSpec {
    /// Checks a table's options; the error names the table, the option and
    /// what is accepted.
    pub(crate) fn parse(decl: &TableDecl) -> Result<TableSpec, String> {
        let what = format!("table {}", decl.name);
        match choice(&what, &decl.options, "type", &TABLE_TYPES, Some("file"))? {
            Some("result") => TableSpec::parse_result(decl),
            _ => TableSpec::parse_file(&what, decl),
        }
    }

    /// `type = 'result'`: a table sink's table, of this job or another.
    fn parse_result(decl: &TableDecl) -> Result<TableSpec, String> {
        let o = &decl.options;
        let what = format!("result table {}", decl.name);
        check_known(&what, o, &RESULT_OPTIONS)?;
        let table = text_option(&what, decl, "table", "the name of a table sink")?
            .unwrap_or_else(|| decl.name.clone());
        let job = text_option(
            &what,
            decl,
            "job",
            "the name of the job that writes the table",
        )?;
        let checkpoint_dir = text_option(
            &what,
            decl,
            "checkpoint_dir",
            "the directory the other job keeps its checkpoint in",
        )?
        .map(PathBuf::from);
        if checkpoint_dir.is_some() && job.is_none() {
            return Err(format!(
                "{what}: checkpoint_dir says where another job keeps its checkpoint: name that job with job = '…' (this job's own tables are read from its own checkpoint)"
            ));
        }
        Ok(TableSpec::Result {
            table,
            job,
            checkpoint_dir,
        })
    }

    /// A file or directory of CSV, JSON or Parquet files.
    fn parse_file(what: &str, decl: &TableDecl) -> Result<TableSpec, String> {
        let o = &decl.options;
        check_known(what, o, &FILE_OPTIONS)?;
        let path = text_option(what, decl, "path", "a file or a directory of files")?
            .ok_or_else(|| {
                format!(
                    "{what}: needs path = 'file or directory' (or type = 'result' for a table a table sink writes)"
                )
            })?;
        let format = match o.get("format") {
            Some(f) => f.trim().to_ascii_lowercase(),
            None => Path::new(&path)
                .extension()
                .and_then(|e| e.to_str())
                .unwrap_or("")
                .to_ascii_lowercase(),
        };
        let format = match format.as_str() {
            "csv" => FileFormat::Csv,
            "json" | "jsonl" | "ndjson" => FileFormat::Json,
            "parquet" => FileFormat::Parquet,
            other => {
                return Err(format!(
                    "{what}: format {other:?} is not supported: use 'csv', 'json' or 'parquet'"
                ));
            }
        };
        let header = match o.get("header").map(|h| h.trim().to_ascii_lowercase()) {
            None => true,
            Some(h) if h == "true" => true,
            Some(h) if h == "false" => false,
            Some(other) => {
                return Err(format!("{what}: header = {other:?}: use 'true' or 'false'"));
            }
        };
        if format != FileFormat::Parquet && decl.columns.is_empty() {
            return Err(format!(
                "{what}: a {} table declares its columns: CREATE TABLE {} (id BIGINT, name TEXT) WITH (…)",
                if format == FileFormat::Csv {
                    "csv"
                } else {
                    "json"
                },
                decl.name
            ));
        }
        Ok(TableSpec::File {
            path,
            format,
            header,
        })
    }
}

/// The job being built, which owns the result tables declared without
/// `job` (absent when only explaining a script).
pub(crate) struct OwnJob {
    pub name: String,
    pub checkpoint: PathBuf,
}

/// Loads every table of `script`: files are read now; result tables are
/// checked now (the other job's checkpoint and table, or this job's table
/// sink) and read per batch. A result table of this job takes its columns
/// from the query that writes it, whose output schema `writer_schema`
/// plans over the tables loaded so far.
pub(crate) fn load_all(
    script: &Script,
    runtime: &tokio::runtime::Runtime,
    topics: &Topics,
    own: Option<&OwnJob>,
    mut writer_schema: impl FnMut(&QueryDecl, &[StaticTable]) -> Result<SchemaRef, SqlError>,
) -> Result<Vec<StaticTable>, SqlError> {
    let mut loaded: Vec<(usize, StaticTable)> = Vec::new();
    let mut own_tables = Vec::new();
    for (n, decl) in script.tables.iter().enumerate() {
        let spec = TableSpec::parse(decl).map_err(|message| SqlError::Unsupported {
            line: decl.line,
            message,
        })?;
        match spec {
            TableSpec::File {
                path,
                format,
                header,
            } => loaded.push((n, load_file(decl, &path, format, header, runtime)?)),
            TableSpec::Result {
                table,
                job,
                checkpoint_dir,
            } => match job {
                Some(job) if own.is_none_or(|o| o.name != job) => {
                    let path =
                        checkpoint_dir.unwrap_or_else(|| PathBuf::from("checkpoints").join(&job));
                    loaded.push((n, result::other_job(decl, &table, &job, &path)?));
                }
                _ if checkpoint_dir.is_some() => {
                    return Err(SqlError::Unsupported {
                        line: decl.line,
                        message: format!(
                            "result table {}: job = '{}' is this job, whose tables are read from its own checkpoint: leave checkpoint_dir out",
                            decl.name,
                            own.map_or("", |o| o.name.as_str())
                        ),
                    });
                }
                _ => own_tables.push((n, decl, table)),
            },
        }
    }
    for (n, decl, table) in own_tables {
        let known: Vec<StaticTable> = loaded.iter().map(|(_, t)| t.clone()).collect();
        let own_table = load_own(script, decl, &table, topics, own, |writer| {
            writer_schema(writer, &known)
        })?;
        loaded.push((n, own_table));
    }
    loaded.sort_by_key(|(n, _)| *n);
    Ok(loaded.into_iter().map(|(_, t)| t).collect())
}

/// A result table this job writes (table sink `table`), read per batch
/// from its own checkpoint; its columns are those of the query that
/// writes it (`writer_schema`).
fn load_own(
    script: &Script,
    decl: &TableDecl,
    table: &str,
    topics: &Topics,
    own: Option<&OwnJob>,
    writer_schema: impl FnOnce(&QueryDecl) -> Result<SchemaRef, SqlError>,
) -> Result<StaticTable, SqlError> {
    let refuse = |message: String| SqlError::Unsupported {
        line: decl.line,
        message: format!("result table {}: {message}", decl.name),
    };
    let table_sinks: Vec<&str> = script
        .sinks
        .iter()
        .filter(|s| SinkSpec::parse(s).is_ok_and(|spec| spec == SinkSpec::Table))
        .map(|s| s.name.as_str())
        .collect();
    let Some(sink) = script.sinks.iter().find(|s| s.name == table) else {
        return Err(refuse(format!(
            "this job has no table sink {table} (its table sinks: {}); name one with table = '…', or add job = '…' to read another job's table",
            if table_sinks.is_empty() {
                "none".to_owned()
            } else {
                table_sinks.join(", ")
            }
        )));
    };
    if !table_sinks.contains(&table) {
        return Err(refuse(format!(
            "sink {table} is not a table sink, so it keeps no table to read: declare it CREATE SINK {table} WITH (type = 'table')"
        )));
    }
    let Some(writer) = script
        .queries
        .iter()
        .find(|q| q.sink.as_deref() == Some(table))
    else {
        return Err(refuse(format!(
            "no query writes table sink {table}: add INSERT INTO {table} SELECT …"
        )));
    };
    let schema = writer_schema(writer)?;
    let meta = Sink::new(sink, &schema, topics, writer.line)?
        .table_meta()
        .ok_or_else(|| refuse(format!("sink {table} stores no table")))?;
    result::own_job(decl, table, &meta, &schema, own.map(|o| &o.checkpoint))
}

/// Reads the file table `decl` declares.
fn load_file(
    decl: &TableDecl,
    path: &str,
    format: FileFormat,
    header: bool,
    runtime: &tokio::runtime::Runtime,
) -> Result<StaticTable, SqlError> {
    let line = decl.line;
    let err = |message: String| SqlError::Plan {
        line,
        message: format!("table {}: {message}", decl.name),
    };
    if !Path::new(path).exists() {
        return Err(err(format!("{path} does not exist")));
    }
    let schema = Schema::new(decl.columns.clone());
    // A file is read whatever its extension; a directory by the format's.
    let is_file = Path::new(path).is_file();
    let extension = |default: &'static str| -> String {
        if is_file {
            Path::new(path)
                .extension()
                .and_then(|e| e.to_str())
                .map_or(String::new(), |e| format!(".{e}"))
        } else {
            default.to_owned()
        }
    };
    let ctx = SessionContext::new();
    let batches = runtime
        .block_on(async {
            let frame = match format {
                FileFormat::Csv => {
                    ctx.read_csv(
                        path,
                        CsvReadOptions::new()
                            .has_header(header)
                            .schema(&schema)
                            .file_extension(&extension(".csv")),
                    )
                    .await?
                }
                FileFormat::Json => {
                    ctx.read_json(
                        path,
                        JsonReadOptions::default()
                            .schema(&schema)
                            .file_extension(&extension(".json")),
                    )
                    .await?
                }
                FileFormat::Parquet => {
                    let frame = ctx
                        .read_parquet(
                            path,
                            ParquetReadOptions::default().file_extension(&extension(".parquet")),
                        )
                        .await?;
                    if decl.columns.is_empty() {
                        frame
                    } else {
                        let names: Vec<&str> =
                            decl.columns.iter().map(|f| f.name().as_str()).collect();
                        frame.select_columns(&names)?
                    }
                }
            };
            frame.collect().await
        })
        .map_err(|e| err(format!("cannot read {path}: {e}")))?;
    let schema = batches
        .first()
        .map(|b| b.schema())
        .unwrap_or_else(|| Arc::new(schema));
    Ok(StaticTable {
        name: decl.name.clone(),
        table: Arc::new(MemTable::try_new(schema, vec![batches])?),
        reading: "a file, loaded once at start",
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn decl(columns: bool, options: &[(&str, &str)]) -> TableDecl {
        TableDecl {
            name: "t".into(),
            columns: if columns {
                vec![datafusion::arrow::datatypes::Field::new(
                    "id",
                    datafusion::arrow::datatypes::DataType::Int64,
                    true,
                )]
            } else {
                Vec::new()
            },
            options: options
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            line: 1,
        }
    }

    #[test]
    fn table_options_have_defaults_and_are_checked() {
        assert_eq!(
            TableSpec::parse(&decl(true, &[("path", "u.CSV")])),
            Ok(TableSpec::File {
                path: "u.CSV".into(),
                format: FileFormat::Csv,
                header: true,
            })
        );
        assert_eq!(
            TableSpec::parse(&decl(false, &[("type", "Result")])),
            Ok(TableSpec::Result {
                table: "t".into(),
                job: None,
                checkpoint_dir: None,
            })
        );
        let refused =
            |options: &[(&str, &str)]| TableSpec::parse(&decl(true, options)).expect_err("refused");
        assert!(refused(&[("type", "kafka")]).contains("(accepted: 'file', 'result')"));
        assert!(
            refused(&[("type", "result"), ("path", "x")])
                .contains("unknown option \"path\" (accepted: type, table, job, checkpoint_dir)")
        );
        assert!(refused(&[("path", "x.csv"), ("table", "x")]).contains("unknown option \"table\""));
        assert!(refused(&[("type", "result"), ("job", " ")]).contains("job = '' is empty"));
        assert!(
            refused(&[("type", "result"), ("checkpoint_dir", "cp")])
                .contains("name that job with job = '…'")
        );
        assert!(refused(&[("path", "x.txt")]).contains("format \"txt\" is not supported"));
        assert!(refused(&[("path", "x.csv"), ("header", "yes")]).contains("use 'true' or 'false'"));
        assert!(
            TableSpec::parse(&decl(false, &[("path", "x.csv")]))
                .expect_err("no columns")
                .contains("a csv table declares its columns")
        );
    }
}
