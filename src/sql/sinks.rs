//! Sinks of SQL queries: where each batch's result rows go.
//!
//! A `table` sink joins the batch's atomic commit (a RocksDB result table
//! read by `sluice state`); `console` prints. This module owns the row →
//! sink encoding; it never plans queries or chooses offsets.

use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, SchemaRef};

use super::script::SinkDecl;
use super::{SqlError, Topics};
use crate::checkpoint::{OperatorMeta, TABLE_CF_PREFIX};
use crate::plan::{BatchCx, PlanError};

pub(crate) enum Sink {
    Console,
    /// Keyed by the first column; the other columns are the value.
    Table(String, OperatorMeta),
    /// Discards the rows (benchmarks measure the query alone, as Flink's
    /// `blackhole` connector).
    Blackhole,
}

impl Sink {
    /// The sink a `CREATE SINK` declares, for a query whose output has
    /// `schema`.
    pub(crate) fn new(
        decl: &SinkDecl,
        schema: &SchemaRef,
        _topics: &Topics,
        line: usize,
    ) -> Result<Sink, SqlError> {
        let name = &decl.name;
        Ok(match decl.options.get("type").map(String::as_str) {
            None | Some("console") => Sink::Console,
            Some("table") => Sink::Table(name.clone(), table_meta(name, schema, line)?),
            Some("blackhole") => Sink::Blackhole,
            Some(other) => {
                return Err(SqlError::Unsupported {
                    line,
                    message: format!(
                        "sink {name}: type {other:?} is not supported (use 'console', 'table' or 'blackhole')"
                    ),
                });
            }
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

impl Sink {
    /// Writes one batch's result rows.
    pub(crate) fn write(&self, cx: &BatchCx, output: &[RecordBatch]) -> Result<(), SqlError> {
        match self {
            Sink::Blackhole => {}
            Sink::Console => {
                let rows: usize = output.iter().map(|b| b.num_rows()).sum();
                if rows > 0 {
                    let table = datafusion::arrow::util::pretty::pretty_format_batches(output)?;
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
                for b in output {
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
