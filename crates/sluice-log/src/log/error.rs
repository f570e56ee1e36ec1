//! The log store's error type. Every variant names what went wrong and, where
//! the caller can act, what to do; I/O errors carry the file they touched.

use std::io;
use std::path::PathBuf;

use super::batch::BatchError;

pub type Result<T, E = LogError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("invalid topic name {name:?}: {reason}")]
    InvalidTopicName { name: String, reason: String },

    #[error("a topic needs at least one partition, got {0}")]
    InvalidPartitionCount(i64),

    #[error("topic {0:?} already exists")]
    TopicExists(String),

    #[error("unknown topic {0:?} (list topics with `sluice topic list`)")]
    UnknownTopic(String),

    #[error("topic {topic:?} has no partition {partition} (it has {count})")]
    UnknownPartition {
        topic: String,
        partition: i32,
        count: usize,
    },

    #[error(
        "offset {offset} is out of range for {topic}-{partition}: valid offsets are {log_start}..={log_end} (log start to log end)"
    )]
    OffsetOutOfRange {
        topic: String,
        partition: u32,
        offset: i64,
        log_start: i64,
        log_end: i64,
    },

    #[error("rejected a corrupt or malformed record batch for {topic}-{partition}: {source}")]
    InvalidBatch {
        topic: String,
        partition: u32,
        #[source]
        source: BatchError,
    },

    #[error("corrupt segment {file} at byte {position}: {reason}")]
    CorruptSegment {
        file: PathBuf,
        position: u64,
        reason: String,
    },

    #[error("invalid topic config: {0}")]
    InvalidConfig(String),

    #[error(
        "data directory {path} is already in use by another process{}; stop it or use another --data-dir",
        holder.as_ref().map(|h| format!(" ({h})")).unwrap_or_default()
    )]
    DirectoryInUse {
        path: PathBuf,
        holder: Option<String>,
    },

    #[error(
        "no space left on device (or file size limit reached) while writing {file}; the append was rolled back and nothing was stored"
    )]
    DiskFull { file: PathBuf },

    #[error(
        "{topic}-{partition} is offline after an I/O error that may have lost unflushed data ({reason}); restart to run recovery"
    )]
    PartitionOffline {
        topic: String,
        partition: u32,
        reason: String,
    },

    #[error("the log store is closed")]
    Closed,

    #[error("{context} {path}: {source}")]
    Io {
        context: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl LogError {
    /// Wraps an I/O error with the operation and file it concerns, turning
    /// "no space left" into [`LogError::DiskFull`] so callers can tell it apart.
    pub fn io(context: &'static str, path: impl Into<PathBuf>, source: io::Error) -> Self {
        let path = path.into();
        if is_disk_full(&source) {
            return LogError::DiskFull { file: path };
        }
        LogError::Io {
            context,
            path,
            source,
        }
    }
}

/// ENOSPC, EDQUOT and EFBIG all mean "this write cannot grow the file".
pub(crate) fn is_disk_full(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded
    ) || matches!(e.kind(), io::ErrorKind::FileTooLarge)
}
