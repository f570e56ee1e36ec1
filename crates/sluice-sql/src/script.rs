//! SQL job files: statements, and the DDL DataFusion does not know.
//!
//! ```sql
//! CREATE STREAM lines (line TEXT) WITH (topic = 'lines', format = 'text');
//! CREATE SINK counts WITH (type = 'table');
//! INSERT INTO counts SELECT word, count(*) AS n FROM … GROUP BY word;
//! ```
//!
//! `CREATE STREAM` is parsed by DataFusion's SQL parser as a `CREATE TABLE`
//! (same column and `WITH` syntax as Flink SQL); `CREATE SINK` and
//! `INSERT INTO` are split off here; the query text goes to DataFusion
//! unchanged so its errors keep their line and column.

use std::collections::BTreeMap;

use datafusion::arrow::datatypes::{DataType, Field};
use datafusion::sql::sqlparser::ast::{
    ColumnDef, CreateTableOptions, Expr, SqlOption, Statement, Value,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::parser::Parser;

pub use crate::decl::{QueryDecl, Script, SinkDecl, StreamDecl, TableDecl};
use crate::error::SqlError;

/// Line and column (1-based) where `part`, a suffix of `stmt`, starts,
/// given the line `stmt` starts on (columns on that first line count from
/// the statement's first character).
fn position(stmt: &str, part: &str, line: usize) -> (usize, usize) {
    let before = &stmt[..stmt.len() - part.len()];
    let lines = before.matches('\n').count();
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line + lines, column)
}

/// Splits a script at top-level semicolons (not inside quotes or
/// comments), keeping each statement's starting line.
fn split_statements(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let (mut current, mut start_line, mut line) = (String::new(), 1usize, 1usize);
    let mut chars = text.chars().peekable();
    let (mut in_single, mut in_double) = (false, false);
    while let Some(c) = chars.next() {
        if c == '\n' {
            line += 1;
        }
        if !in_single && !in_double && c == '-' && chars.peek() == Some(&'-') {
            // Line comment: skip to the end of the line.
            for c2 in chars.by_ref() {
                if c2 == '\n' {
                    line += 1;
                    current.push('\n');
                    break;
                }
            }
            continue;
        }
        match c {
            '\'' if !in_double => in_single = !in_single,
            '"' if !in_single => in_double = !in_double,
            ';' if !in_single && !in_double => {
                if !current.trim().is_empty() {
                    out.push((start_line, std::mem::take(&mut current)));
                }
                current.clear();
                start_line = line;
                continue;
            }
            _ => {}
        }
        if current.trim().is_empty() && !c.is_whitespace() {
            start_line = line;
        }
        current.push(c);
    }
    if !current.trim().is_empty() {
        out.push((start_line, current));
    }
    out
}

fn options(list: &[SqlOption], line: usize) -> Result<BTreeMap<String, String>, SqlError> {
    let mut out = BTreeMap::new();
    for o in list {
        match o {
            SqlOption::KeyValue { key, value } => {
                let v = match value {
                    Expr::Value(v) => match &v.value {
                        Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => s.clone(),
                        Value::Number(n, _) => n.clone(),
                        Value::Boolean(b) => b.to_string(),
                        other => other.to_string(),
                    },
                    Expr::Identifier(i) => i.value.clone(),
                    other => other.to_string(),
                };
                out.insert(key.value.to_lowercase(), v);
            }
            other => {
                return Err(SqlError::Syntax {
                    line,
                    message: format!("unsupported option {other}: use key = 'value'"),
                });
            }
        }
    }
    Ok(out)
}

fn column(def: &ColumnDef, line: usize) -> Result<Field, SqlError> {
    use datafusion::sql::sqlparser::ast::DataType as S;
    let data_type = match &def.data_type {
        S::Text | S::Varchar(_) | S::String(_) | S::Char(_) => DataType::Utf8,
        S::BigInt(_) | S::Int8(_) | S::Int64 => DataType::Int64,
        S::Int(_) | S::Integer(_) | S::Int4(_) | S::Int32 => DataType::Int32,
        S::Double(_) | S::DoublePrecision | S::Float8 | S::Float64 | S::Real | S::Float(_) => {
            DataType::Float64
        }
        S::Boolean | S::Bool => DataType::Boolean,
        S::Timestamp(_, _) => {
            DataType::Timestamp(datafusion::arrow::datatypes::TimeUnit::Millisecond, None)
        }
        S::Bytea | S::Blob(_) | S::Binary(_) | S::Varbinary(_) => DataType::Binary,
        other => {
            return Err(SqlError::Syntax {
                line,
                message: format!(
                    "column {} has type {other}, which streams do not support yet (use TEXT, BIGINT, INT, DOUBLE, BOOLEAN, TIMESTAMP or BYTEA)",
                    def.name
                ),
            });
        }
    };
    Ok(Field::new(def.name.value.clone(), data_type, true))
}

/// `CREATE SINK name WITH (k = 'v', …)`.
fn parse_sink(text: &str, line: usize) -> Result<SinkDecl, SqlError> {
    // Reuse the CREATE TABLE parser for the option list.
    let rewritten = format!(
        "CREATE TABLE {}",
        text.trim_start()["CREATE SINK".len()..].trim()
    );
    let stmt = Parser::parse_sql(&GenericDialect {}, &rewritten)
        .map_err(|e| SqlError::Syntax {
            line,
            message: format!(
                "{e}; expected CREATE SINK name WITH (type = 'console' | 'table' | 'topic' | 'file', …)"
            ),
        })?
        .pop();
    match stmt {
        Some(Statement::CreateTable(t)) => {
            let list = match &t.table_options {
                CreateTableOptions::With(list) => list.clone(),
                CreateTableOptions::None => Vec::new(),
                _ => Vec::new(),
            };
            Ok(SinkDecl {
                name: t.name.to_string(),
                options: options(&list, line)?,
            })
        }
        _ => Err(SqlError::Syntax {
            line,
            message:
                "expected CREATE SINK name WITH (type = 'console' | 'table' | 'topic' | 'file', …)"
                    .into(),
        }),
    }
}

fn starts_with_words(text: &str, words: &[&str]) -> bool {
    let mut rest = text.trim_start();
    for w in words {
        let Some(head) = rest.get(..w.len()) else {
            return false;
        };
        if !head.eq_ignore_ascii_case(w) {
            return false;
        }
        rest = &rest[w.len()..];
        if !rest.starts_with(char::is_whitespace) && !rest.is_empty() && !rest.starts_with('(') {
            return false;
        }
        rest = rest.trim_start();
    }
    true
}

/// Cuts a `WATERMARK FOR column AS expression` clause out of a `CREATE
/// STREAM` column list (the SQL parser does not know it) and returns the
/// statement without it, the column and the expression.
#[allow(clippy::type_complexity)]
fn take_watermark(stmt: &str, line: usize) -> Result<(String, Option<(String, String)>), SqlError> {
    let upper = stmt.to_ascii_uppercase();
    // Top-level positions: depth of parentheses outside quotes.
    let bytes = stmt.as_bytes();
    let (mut depth, mut quoted) = (0i32, false);
    let mut clause_start = None;
    let mut last_comma = None;
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c == b'\'' {
            quoted = !quoted;
        } else if !quoted {
            match c {
                b'(' => depth += 1,
                b')' => {
                    depth -= 1;
                    if let Some(start) = clause_start
                        && depth == 0
                    {
                        return finish(stmt, start, last_comma, i, line);
                    }
                }
                b',' if depth == 1 => {
                    if let Some(start) = clause_start {
                        return finish(stmt, start, last_comma, i, line);
                    }
                    last_comma = Some(i);
                }
                _ if depth == 1
                    && clause_start.is_none()
                    && upper[i..].starts_with("WATERMARK")
                    && (i == 0 || !bytes[i - 1].is_ascii_alphanumeric()) =>
                {
                    clause_start = Some(i);
                }
                _ => {}
            }
        }
        i += 1;
    }
    if clause_start.is_some() {
        return Err(SqlError::Syntax {
            line,
            message: "WATERMARK clause not closed: expected WATERMARK FOR ts AS ts - INTERVAL '5' SECOND inside the column list".into(),
        });
    }
    Ok((stmt.to_owned(), None))
}

fn finish(
    stmt: &str,
    start: usize,
    last_comma: Option<usize>,
    end: usize,
    line: usize,
) -> Result<(String, Option<(String, String)>), SqlError> {
    let clause = stmt[start..end].trim();
    let usage = || SqlError::Syntax {
        line,
        message: format!("{clause:?}: expected WATERMARK FOR ts AS ts - INTERVAL '5' SECOND"),
    };
    let words: Vec<&str> = clause.splitn(4, char::is_whitespace).collect();
    let [w, f, column, rest] = words.as_slice() else {
        return Err(usage());
    };
    let rest = rest.trim_start();
    if !w.eq_ignore_ascii_case("WATERMARK")
        || !f.eq_ignore_ascii_case("FOR")
        || rest.len() < 3
        || !rest[..2].eq_ignore_ascii_case("AS")
    {
        return Err(usage());
    }
    let expr = rest[2..].trim().to_owned();
    // Remove the clause with the comma that separated it.
    let cut_from = last_comma.unwrap_or(start);
    let mut out = String::with_capacity(stmt.len());
    out.push_str(&stmt[..cut_from]);
    if last_comma.is_none() && stmt[end..].starts_with(',') {
        out.push_str(&stmt[end + 1..]);
    } else {
        out.push_str(&stmt[end..]);
    }
    Ok((out, Some((column.trim_matches('"').to_owned(), expr))))
}

/// A `CREATE TABLE`'s name, columns and `WITH` options (streams and
/// static tables share the syntax); `usage` is the error when it is not one.
#[allow(clippy::type_complexity)]
fn parse_create(
    text: &str,
    line: usize,
    usage: &str,
) -> Result<(String, Vec<Field>, BTreeMap<String, String>), SqlError> {
    let parsed = Parser::parse_sql(&GenericDialect {}, text).map_err(|e| SqlError::Syntax {
        line,
        message: e.to_string(),
    })?;
    let Some(Statement::CreateTable(t)) = parsed.into_iter().next() else {
        return Err(SqlError::Syntax {
            line,
            message: usage.into(),
        });
    };
    let list = match &t.table_options {
        CreateTableOptions::With(list) => list.clone(),
        _ => Vec::new(),
    };
    Ok((
        t.name.to_string(),
        t.columns
            .iter()
            .map(|c| column(c, line))
            .collect::<Result<_, _>>()?,
        options(&list, line)?,
    ))
}

impl Script {
    /// Makes a scalar function (DataFusion's `ScalarUDF`, e.g. from
    /// `create_udf`) callable by name in every query of the script, as
    /// Flink's `CREATE FUNCTION`: the job that builds the script brings
    /// the code. A function of the same name as one of Sluice's or
    /// DataFusion's replaces it.
    pub fn register_udf(&mut self, function: datafusion::logical_expr::ScalarUDF) {
        self.functions.retain(|f| f.name() != function.name());
        self.functions.push(function);
    }

    /// Parses a SQL job script.
    pub fn parse(text: &str) -> Result<Script, SqlError> {
        let mut script = Script::default();
        for (line, stmt) in split_statements(text) {
            script.add_statement(stmt.trim(), line)?;
        }
        script.check_queries()?;
        Ok(script)
    }

    /// Adds one statement; each declaration's options are checked as it
    /// is read, so an error names the statement's line.
    fn add_statement(&mut self, stmt: &str, line: usize) -> Result<(), SqlError> {
        let unsupported = |message: String| SqlError::Unsupported { line, message };
        if starts_with_words(stmt, &["CREATE", "STREAM"]) {
            let decl = parse_stream(stmt, line)?;
            crate::stream::StreamSpec::parse(&decl).map_err(unsupported)?;
            self.streams.push(decl);
        } else if starts_with_words(stmt, &["CREATE", "TABLE"]) {
            let decl = parse_table(stmt, line)?;
            crate::table::TableSpec::parse(&decl).map_err(unsupported)?;
            self.tables.push(decl);
        } else if starts_with_words(stmt, &["CREATE", "SINK"]) {
            let decl = parse_sink(stmt, line)?;
            crate::sinks::SinkSpec::parse(&decl).map_err(unsupported)?;
            self.sinks.push(decl);
        } else if starts_with_words(stmt, &["SET"]) {
            self.set(stmt, line)?;
        } else if starts_with_words(stmt, &["INSERT", "INTO"]) {
            self.queries.push(parse_insert(stmt, line));
        } else if starts_with_words(stmt, &["SELECT"]) || starts_with_words(stmt, &["WITH"]) {
            self.queries.push(QueryDecl {
                sink: None,
                sql: stmt.to_owned(),
                line,
                column: 1,
            });
        } else {
            return Err(SqlError::Syntax {
                line,
                message: format!(
                    "unexpected statement {:?}: a job has CREATE STREAM, CREATE TABLE, CREATE SINK, SET 'key' = 'value', INSERT INTO sink SELECT … and SELECT statements",
                    stmt.split_whitespace()
                        .take(3)
                        .collect::<Vec<_>>()
                        .join(" ")
                ),
            });
        }
        Ok(())
    }

    /// Flink's `SET 'key' = 'value';` (quotes optional): a setting of the
    /// whole job.
    fn set(&mut self, stmt: &str, line: usize) -> Result<(), SqlError> {
        let bad = |message: String| SqlError::Syntax { line, message };
        let body = stmt.trim_end_matches(';').trim()["SET".len()..].trim();
        let unquote = |t: &str| t.trim().trim_matches('\'').to_owned();
        let (key, value) = body
            .split_once('=')
            .map(|(k, v)| (unquote(k), unquote(v)))
            .ok_or_else(|| bad(format!("expected SET 'key' = 'value', got {stmt:?}")))?;
        match key.as_str() {
            "max_records_per_batch" => {
                let n: u64 = value.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                    bad(format!(
                        "SET 'max_records_per_batch' takes a positive number of records per partition per batch, got {value:?}"
                    ))
                })?;
                self.max_records_per_batch = Some(n);
                Ok(())
            }
            other => Err(SqlError::Unsupported {
                line,
                message: format!(
                    "unknown setting {other:?}: a job sets 'max_records_per_batch' (records per partition per batch)"
                ),
            }),
        }
    }

    /// The checks over the whole script: it has a query, every `INSERT
    /// INTO` names a sink, and a topic or file sink has one writer.
    fn check_queries(&self) -> Result<(), SqlError> {
        if self.queries.is_empty() {
            return Err(SqlError::Syntax {
                line: 1,
                message: "the job has no query: add INSERT INTO sink SELECT … or SELECT …".into(),
            });
        }
        for q in &self.queries {
            if let Some(sink) = &q.sink
                && !self.sinks.iter().any(|s| &s.name == sink)
            {
                return Err(SqlError::Syntax {
                    line: q.line,
                    message: format!(
                        "INSERT INTO {sink}: no sink {sink} was created (CREATE SINK {sink} WITH (type = 'table'))"
                    ),
                });
            }
        }
        // A topic or file sink tags what it writes with its batch ids, so
        // a second query writing the same batch would be taken for a
        // replay and dropped.
        for decl in &self.sinks {
            let single = crate::sinks::SinkSpec::parse(decl).is_ok_and(|s| s.single_writer());
            let lines: Vec<usize> = self
                .queries
                .iter()
                .filter(|q| q.sink.as_deref() == Some(decl.name.as_str()))
                .map(|q| q.line)
                .collect();
            if single && let [first, second, ..] = lines[..] {
                return Err(SqlError::Unsupported {
                    line: second,
                    message: format!(
                        "sink {} is written by the queries at lines {first} and {second}: a topic or file sink takes one query (it writes each batch once); give each query its own sink, or combine them with UNION ALL",
                        decl.name
                    ),
                });
            }
        }
        Ok(())
    }
}

/// `CREATE STREAM name (columns[, WATERMARK FOR …]) WITH (…)`.
fn parse_stream(stmt: &str, line: usize) -> Result<StreamDecl, SqlError> {
    let (without, watermark) = take_watermark(stmt, line)?;
    let (without, proctime) = take_proctime(&without, line)?;
    let rewritten = format!("CREATE TABLE{}", &without["CREATE STREAM".len()..]);
    let (name, columns, options) = parse_create(
        &rewritten,
        line,
        "expected CREATE STREAM name (columns) WITH (topic = '…', format = '…')",
    )?;
    if let (Some(p), Some((column, _))) = (&proctime, &watermark) {
        return Err(SqlError::Syntax {
            line,
            message: format!(
                "stream {name} declares both {p} AS PROCTIME() and WATERMARK FOR {column}: a stream has one time, processing or event time"
            ),
        });
    }
    Ok(StreamDecl {
        name,
        columns,
        options,
        watermark,
        proctime,
    })
}

/// Takes `name AS PROCTIME()` (Flink's processing-time attribute) out of
/// a `CREATE STREAM`'s column list: the column's name, and the statement
/// without it.
fn take_proctime(stmt: &str, line: usize) -> Result<(String, Option<String>), SqlError> {
    let bytes = stmt.as_bytes();
    let (mut depth, mut quoted) = (0i32, false);
    // Items of the column list: (start, end) between top-level commas.
    let mut items: Vec<(usize, usize)> = Vec::new();
    let mut start = None;
    for (i, &c) in bytes.iter().enumerate() {
        if c == b'\'' {
            quoted = !quoted;
            continue;
        }
        if quoted {
            continue;
        }
        match c {
            b'(' => {
                depth += 1;
                if depth == 1 {
                    start = Some(i + 1);
                }
            }
            b')' => {
                if depth == 1 {
                    if let Some(s) = start.take() {
                        items.push((s, i));
                    }
                    break;
                }
                depth -= 1;
            }
            b',' if depth == 1 => {
                if let Some(s) = start {
                    items.push((s, i));
                }
                start = Some(i + 1);
            }
            _ => {}
        }
    }
    let mut found: Option<(String, usize)> = None;
    for (n, &(s, e)) in items.iter().enumerate() {
        let words: Vec<&str> = stmt[s..e].split_whitespace().collect();
        let call: String = words.get(2..).map(|w| w.concat()).unwrap_or_default();
        if words.len() >= 3
            && words[1].eq_ignore_ascii_case("AS")
            && call.eq_ignore_ascii_case("PROCTIME()")
        {
            if found.is_some() {
                return Err(SqlError::Syntax {
                    line,
                    message: "a stream has at most one AS PROCTIME() column".into(),
                });
            }
            found = Some((words[0].trim_matches('"').to_owned(), n));
        }
    }
    let Some((name, n)) = found else {
        return Ok((stmt.to_owned(), None));
    };
    // Cut the item with the comma before it (or after it, when first).
    let (s, e) = items[n];
    let (cut_from, cut_to) = if n > 0 {
        (items[n - 1].1, e)
    } else if items.len() > 1 {
        (s, items[1].0)
    } else {
        (s, e)
    };
    Ok((
        format!("{}{}", &stmt[..cut_from], &stmt[cut_to..]),
        Some(name),
    ))
}

/// `CREATE TABLE name (columns) WITH (…)`.
fn parse_table(stmt: &str, line: usize) -> Result<TableDecl, SqlError> {
    let (name, columns, options) = parse_create(
        stmt,
        line,
        "expected CREATE TABLE name (columns) WITH (path = '…', format = 'csv' | 'json' | 'parquet') or CREATE TABLE name WITH (type = 'result', table = '…')",
    )?;
    Ok(TableDecl {
        name,
        columns,
        options,
        line,
    })
}

/// `INSERT INTO sink query`: the query keeps its own line and column.
fn parse_insert(stmt: &str, line: usize) -> QueryDecl {
    let rest = stmt["INSERT".len()..].trim_start()["INTO".len()..].trim_start();
    let name_end = rest.find(char::is_whitespace).unwrap_or(rest.len());
    let (sink, query) = rest.split_at(name_end);
    let query = query.trim();
    let (line, column) = position(stmt, query, line);
    QueryDecl {
        sink: Some(sink.to_owned()),
        sql: query.to_owned(),
        line,
        column,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proctime_column_leaves_the_column_list() {
        let parse = |columns: &str| {
            Script::parse(&format!(
                "CREATE STREAM s ({columns}) WITH (topic = 's', format = 'json');\nSELECT * FROM s;"
            ))
        };
        for columns in [
            "a BIGINT, p AS PROCTIME(), b TEXT",
            "p AS proctime ( ), a BIGINT, b TEXT",
            "a BIGINT, b TEXT, p AS PROCTIME()",
        ] {
            let script = parse(columns).unwrap_or_else(|e| panic!("{columns}: {e}"));
            let stream = &script.streams[0];
            assert_eq!(stream.proctime.as_deref(), Some("p"), "{columns}");
            let names: Vec<&str> = stream.columns.iter().map(|c| c.name().as_str()).collect();
            assert_eq!(names, ["a", "b"], "{columns}");
        }
        let e = parse("p AS PROCTIME(), q AS PROCTIME()").unwrap_err();
        assert!(e.to_string().contains("at most one AS PROCTIME()"), "{e}");
        let e = parse("ts TIMESTAMP, p AS PROCTIME(), WATERMARK FOR ts AS ts").unwrap_err();
        assert!(
            e.to_string().contains("one time, processing or event time"),
            "{e}"
        );
    }

    #[test]
    fn a_job_sets_its_batch_size_as_flink_sets_options() {
        let parse = |set: &str| {
            Script::parse(&format!(
                "CREATE STREAM s (a BIGINT) WITH (topic = 's');\n{set}\nSELECT a FROM s;"
            ))
        };
        for set in [
            "SET 'max_records_per_batch' = '20000';",
            "SET max_records_per_batch = 20000;",
            "set 'max_records_per_batch'='20000';",
        ] {
            let script = parse(set).unwrap_or_else(|e| panic!("{set}: {e}"));
            assert_eq!(script.max_records_per_batch, Some(20_000), "{set}");
        }
        let e = parse("SET 'max_records_per_batch' = '0';")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 2") && e.contains("positive number"), "{e}");
        let e = parse("SET 'parallelism.default' = '4';")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown setting \"parallelism.default\""), "{e}");
        let e = parse("SET max_records_per_batch;").unwrap_err().to_string();
        assert!(e.contains("expected SET 'key' = 'value'"), "{e}");
    }

    #[test]
    fn parses_a_job() {
        let script = Script::parse(
            "-- word count\nCREATE STREAM lines (line TEXT) WITH (topic = 'lines', format = 'text');\n\
             CREATE SINK counts WITH (type = 'table');\n\
             INSERT INTO counts\nSELECT word, count(*) AS n FROM (SELECT unnest(string_to_array(line, ' ')) AS word FROM lines) GROUP BY word;\n",
        )
        .unwrap();
        assert_eq!(script.streams[0].name, "lines");
        assert_eq!(script.streams[0].options["topic"], "lines");
        assert_eq!(script.streams[0].columns[0].name(), "line");
        assert_eq!(script.sinks[0].options["type"], "table");
        assert_eq!(script.queries[0].sink.as_deref(), Some("counts"));
        // The query's own position: SELECT starts line 5.
        assert_eq!((script.queries[0].line, script.queries[0].column), (5, 1));
        assert!(script.queries[0].sql.starts_with("SELECT word"));
    }

    #[test]
    fn errors_name_the_line() {
        let err =
            Script::parse("CREATE SINK s WITH (type = 'table');\n\nINSERT INTO nope SELECT 1;")
                .unwrap_err();
        assert!(
            err.to_string().contains("line 3") && err.to_string().contains("no sink nope"),
            "{err}"
        );
        let err = Script::parse("SELECT 1;\nDROP TABLE x;").unwrap_err();
        assert!(err.to_string().contains("line 2"), "{err}");
        let err =
            Script::parse("CREATE STREAM s (a TEXT, WATERMARK a AS a) WITH (topic='t');SELECT 1")
                .unwrap_err();
        assert!(err.to_string().contains("expected WATERMARK FOR"), "{err}");
    }

    #[test]
    fn watermark_clause_is_cut_out_of_the_column_list() {
        let script = Script::parse(
            "CREATE STREAM clicks (url TEXT, ts TIMESTAMP,\n  WATERMARK FOR ts AS ts - INTERVAL '5' SECOND\n) WITH (topic = 'clicks', format = 'json');\nSELECT url FROM clicks",
        )
        .unwrap();
        let s = &script.streams[0];
        assert_eq!(s.columns.len(), 2);
        assert_eq!(
            s.watermark,
            Some(("ts".into(), "ts - INTERVAL '5' SECOND".into()))
        );
        let script = Script::parse(
            "CREATE STREAM c (WATERMARK FOR ts AS ts, ts TIMESTAMP) WITH (topic = 'c');SELECT 1",
        )
        .unwrap();
        assert_eq!(script.streams[0].columns.len(), 1);
        assert_eq!(
            script.streams[0].watermark,
            Some(("ts".into(), "ts".into()))
        );
    }

    #[test]
    fn semicolons_in_strings_do_not_split() {
        let parts = split_statements("SELECT ';' AS a; SELECT 2");
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[0].1.trim(), "SELECT ';' AS a");
    }
}
