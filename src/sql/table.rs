//! Static tables for stream–table joins: `CREATE TABLE products (id
//! BIGINT, name TEXT) WITH (path = 'products.csv', format = 'csv')`.
//!
//! A table is read once, when the job starts, into memory; every batch's
//! query sees the same rows, so a stream joins it like a dimension table
//! (Spark's stream–static join). Changing the file takes a restart.
//!
//! This module owns loading those files; it never reads streams or
//! writes state.

use std::sync::Arc;

use datafusion::arrow::datatypes::Schema;
use datafusion::datasource::MemTable;
use datafusion::prelude::{CsvReadOptions, JsonReadOptions, ParquetReadOptions, SessionContext};

use super::SqlError;
use super::script::TableDecl;

/// A loaded table.
pub(crate) struct StaticTable {
    pub name: String,
    pub table: Arc<MemTable>,
}

/// Reads the table `decl` declares.
pub(crate) fn load(
    decl: &TableDecl,
    runtime: &tokio::runtime::Runtime,
) -> Result<StaticTable, SqlError> {
    let line = decl.line;
    let err = |message: String| SqlError::Plan {
        line,
        message: format!("table {}: {message}", decl.name),
    };
    let path = decl
        .options
        .get("path")
        .ok_or_else(|| err("needs path = 'file or directory'".into()))?;
    let format = decl.options.get("format").map_or_else(
        || {
            std::path::Path::new(path)
                .extension()
                .and_then(|e| e.to_str())
                .unwrap_or("")
                .to_ascii_lowercase()
        },
        |f| f.to_ascii_lowercase(),
    );
    if !std::path::Path::new(path).exists() {
        return Err(err(format!("{path} does not exist")));
    }
    let header = match decl.options.get("header").map(String::as_str) {
        None | Some("true") => true,
        Some("false") => false,
        Some(other) => return Err(err(format!("header = {other:?}: use 'true' or 'false'"))),
    };
    let schema = Schema::new(decl.columns.clone());
    let needs_columns = |format: &str| {
        if decl.columns.is_empty() {
            Err(err(format!(
                "a {format} table declares its columns: CREATE TABLE {} (id BIGINT, name TEXT) WITH (…)",
                decl.name
            )))
        } else {
            Ok(())
        }
    };
    // A file is read whatever its extension; a directory by the format's.
    let is_file = std::path::Path::new(path).is_file();
    let extension = |default: &'static str| -> String {
        if is_file {
            std::path::Path::new(path)
                .extension()
                .and_then(|e| e.to_str())
                .map_or(String::new(), |e| format!(".{e}"))
        } else {
            default.to_owned()
        }
    };
    let (csv_ext, json_ext, parquet_ext) =
        (extension(".csv"), extension(".json"), extension(".parquet"));
    let ctx = SessionContext::new();
    let batches = runtime
        .block_on(async {
            let frame = match format.as_str() {
                "csv" => {
                    needs_columns("csv")?;
                    ctx.read_csv(
                        path,
                        CsvReadOptions::new()
                            .has_header(header)
                            .schema(&schema)
                            .file_extension(&csv_ext),
                    )
                    .await?
                }
                "json" | "jsonl" | "ndjson" => {
                    needs_columns("json")?;
                    ctx.read_json(
                        path,
                        JsonReadOptions::default()
                            .schema(&schema)
                            .file_extension(&json_ext),
                    )
                    .await?
                }
                "parquet" => {
                    let frame = ctx
                        .read_parquet(
                            path,
                            ParquetReadOptions::default().file_extension(&parquet_ext),
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
                other => {
                    return Err(err(format!(
                        "format {other:?} is not supported: use 'csv', 'json' or 'parquet'"
                    )));
                }
            };
            Ok::<_, SqlError>(frame.collect().await?)
        })
        .map_err(|e| match e {
            SqlError::DataFusion(d) => err(format!("cannot read {path}: {d}")),
            other => other,
        })?;
    let schema = batches
        .first()
        .map(|b| b.schema())
        .unwrap_or_else(|| Arc::new(schema));
    Ok(StaticTable {
        name: decl.name.clone(),
        table: Arc::new(MemTable::try_new(schema, vec![batches])?),
    })
}
