//! The one error type of SQL jobs: every refusal names the script's line
//! (and column, where DataFusion or the parser says), and what to do.
//!
//! This module owns no behaviour beyond locating and converting errors; it
//! never imports another module of the crate.

use sluice_engine::plan::PlanError;

/// Errors of SQL jobs, with the line of the statement.
#[derive(Debug, thiserror::Error)]
pub enum SqlError {
    #[error("line {line}: {message}")]
    Syntax { line: usize, message: String },
    #[error("line {line}: {message}")]
    Unsupported { line: usize, message: String },
    #[error("line {line}: {message}")]
    Plan { line: usize, message: String },
    #[error("line {line}, column {column}: {message}")]
    At {
        line: usize,
        column: usize,
        message: String,
    },
    #[error(transparent)]
    DataFusion(#[from] datafusion::error::DataFusionError),
    #[error(transparent)]
    Arrow(#[from] datafusion::arrow::error::ArrowError),
    #[error("state store: {0}")]
    Rocks(#[from] rocksdb::Error),
    /// Stored state that does not decode (written by something else).
    #[error("state store: {message}")]
    State { message: String },
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

/// A planning error at the script's line and column when DataFusion or
/// the SQL parser says where in the query it is.
/// `line` and `column` are where the query starts in the script.
pub(crate) fn located(
    e: &datafusion::error::DataFusionError,
    line: usize,
    column: usize,
) -> SqlError {
    let message = e.to_string();
    let at = e
        .diagnostic()
        .and_then(|d| d.span)
        .map(|span| (span.start.line as usize, span.start.column as usize))
        .or_else(|| {
            // sqlparser: "… at Line: 2, Column: 8".
            let rest = &message[message.find("Line: ")? + 6..];
            let (l, rest) = rest.split_once(", Column: ")?;
            let c: String = rest.chars().take_while(char::is_ascii_digit).collect();
            Some((l.parse().ok()?, c.parse().ok()?))
        })
        .filter(|(l, _)| *l >= 1);
    match at {
        Some((l, c)) => SqlError::At {
            line: line + l - 1,
            column: if l == 1 { column + c - 1 } else { c },
            message,
        },
        None => SqlError::Plan { line, message },
    }
}
