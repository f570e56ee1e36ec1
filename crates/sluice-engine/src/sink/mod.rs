//! Sinks: where a batch's results go.
//!
//! * [`console`] prints the first rows of every batch under a header (like
//!   Spark's `print()`); a batch replayed after a crash prints again.
//! * [`table`] writes key/value results into a RocksDB result table of the
//!   job's checkpoint, in the same atomic write as the batch's offsets and
//!   state, so the table always reflects exactly the committed batches.
//!   `sluice state get|scan` reads it while the job runs or after.
//! * [`topic`] appends records to a topic of the bundled store or of a
//!   Kafka broker, at most once per batch id: through a broker, one Kafka
//!   transaction per batch and cluster for all of the job's topic writers
//!   (sinks and dead-letter topics), committed by the driver with the
//!   batch id recorded alongside ([`Transactions`]); on the bundled store (or with delivery =
//!   'idempotent') every record is tagged with its writer and batch, and a
//!   replayed batch skips what the topic already holds (SQL topic sinks and
//!   dead-letter topics).
//! * [`file`] writes each batch as Parquet, JSON-lines or CSV files plus a
//!   manifest entry (Spark's `_spark_metadata`), so readers that follow the
//!   manifest never see a partial or repeated batch.
//!
//! Sinks never choose offsets or commit on their own; the driver commits.
//! The topic and file sinks write before the commit, so their
//! exactly-once rests on the driver's promise that a planned batch is
//! re-run with identical input after a crash.

pub mod console;
pub mod file;
pub mod table;
pub mod topic;
mod transactional;

pub use transactional::Transactions;

use crate::checkpoint::Checkpoint;

/// A write to an external system that failed; `what` names the sink
/// ("topic sink out", "dead-letter topic bad of stream clicks").
#[derive(Debug, thiserror::Error)]
#[error("{what}: {message}")]
pub struct SinkError {
    pub what: String,
    pub message: String,
}

impl SinkError {
    pub fn new(what: impl Into<String>, message: impl Into<String>) -> SinkError {
        SinkError {
            what: what.into(),
            message: message.into(),
        }
    }
}

/// Who writes a batch: the job, which run of its checkpoint, and the sink
/// (or stream, for dead letters). Written next to every batch so that a
/// replay recognises its own earlier writes, and only those.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriterId {
    pub job: String,
    /// The checkpoint's creation time (ms): a job whose checkpoint was
    /// deleted and recreated starts again at batch 1 and must not take the
    /// old run's batches for its own.
    pub run: String,
    pub name: String,
}

impl WriterId {
    /// The writer `name` of the job that owns `checkpoint` (read from the
    /// checkpoint's `schema` record).
    pub fn of(checkpoint: &Checkpoint, name: &str) -> Result<WriterId, SinkError> {
        #[derive(serde::Deserialize)]
        struct Schema {
            job: String,
            created_ms: i64,
        }
        let bad = |m: String| SinkError::new(format!("sink {name}"), m);
        let bytes = checkpoint
            .db()
            .get(b"schema")
            .map_err(|e| bad(format!("cannot read the checkpoint's schema record: {e}")))?
            .ok_or_else(|| bad("the checkpoint has no schema record".into()))?;
        let schema: Schema = serde_json::from_slice(&bytes)
            .map_err(|e| bad(format!("the checkpoint's schema record is unreadable: {e}")))?;
        Ok(WriterId {
            job: schema.job,
            run: schema.created_ms.to_string(),
            name: name.to_owned(),
        })
    }

    /// `<job>/<name>`: the part of a batch tag that names the writer.
    pub fn prefix(&self) -> String {
        format!("{}/{}", self.job, self.name)
    }

    /// `<job>/<name>/<batch id>`.
    pub fn batch_tag(&self, batch_id: u64) -> String {
        format!("{}/{}/{batch_id}", self.job, self.name)
    }
}

/// Kills the process with SIGKILL when failpoint `name` is configured as
/// `return(N)` and `batch_id` is N (crash tests: `FAILPOINTS=name=return(3)`).
#[cfg(feature = "failpoints")]
pub(crate) fn crash_point(name: &str, batch_id: u64) {
    let hit = fail::eval(name, |arg| arg.and_then(|a| a.trim().parse::<u64>().ok()));
    if hit.flatten() == Some(batch_id) {
        eprintln!("failpoint {name}: killing the process after batch {batch_id}'s write");
        // SAFETY: sending a signal to our own process has no memory-safety
        // preconditions.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub(crate) fn crash_point(_name: &str, _batch_id: u64) {}
