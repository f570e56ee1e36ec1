//! Sources in direct mode: partitions with offsets, read by explicit ranges.
//!
//! The driver owns positions. At every batch it asks each [`Source`] for
//! its partitions and their earliest/latest offsets, decides a range
//! `[from, until)` per partition, writes it to the checkpoint, and then one
//! task per partition calls [`Source::read`] for exactly that range. A
//! source never tracks what was consumed, never commits, and never decides
//! how much to read: re-running a batch after a crash reads the same range.
//!
//! Records arrive as Arrow columns in Kafka's shape ([`record`]).
//! Sources: the bundled log store in-process ([`embedded`]), any Kafka
//! broker through rdkafka ([`kafka`]), a seeded generator ([`generator`]),
//! and two sources that cannot replay a range after a restart: a TCP text
//! socket ([`socket`]) and a directory of text files ([`files`]).

pub mod decode;
pub mod embedded;
pub mod files;
pub mod generator;
pub mod kafka;
pub mod record;
pub mod socket;

use arrow::array::RecordBatch;

pub use record::{Record, RecordRef, source_schema};

/// One partition as the driver sees it at planning time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionInfo {
    pub partition: i32,
    /// The earliest offset still readable (retention moves it forward).
    pub log_start: i64,
    /// The offset after the last readable record: the last stable offset,
    /// so a plan never reaches into an open transaction.
    pub high_watermark: i64,
}

/// Where a job starts reading partitions it has no offsets for.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum StartingPosition {
    #[default]
    Earliest,
    Latest,
    /// The first offset whose timestamp is at or after this (ms since epoch).
    Timestamp(i64),
    /// Explicit offsets per partition; partitions not listed start earliest.
    Offsets(Vec<(i32, i64)>),
}

impl std::str::FromStr for StartingPosition {
    type Err = String;
    /// `earliest`, `latest`, `timestamp:MS` or `offsets:P=O,P=O`.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "earliest" => Ok(Self::Earliest),
            "latest" => Ok(Self::Latest),
            _ => {
                if let Some(ms) = s.strip_prefix("timestamp:") {
                    return sluice_log::units::parse_timestamp_ms(ms).map(Self::Timestamp);
                }
                if let Some(list) = s.strip_prefix("offsets:") {
                    return list
                        .split(',')
                        .map(|pair| {
                            let (p, o) = pair
                                .split_once('=')
                                .ok_or_else(|| format!("{pair:?} is not PARTITION=OFFSET"))?;
                            Ok((
                                p.trim()
                                    .parse()
                                    .map_err(|_| format!("bad partition {p:?}"))?,
                                o.trim().parse().map_err(|_| format!("bad offset {o:?}"))?,
                            ))
                        })
                        .collect::<Result<_, String>>()
                        .map(Self::Offsets);
                }
                Err(format!(
                    "{s:?} is not a starting position: use earliest, latest, timestamp:MS|RFC3339 or offsets:P=O,P=O"
                ))
            }
        }
    }
}

/// Errors from a source. They name the source and, where there is one, the
/// partition.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("source {source_name}: {message}")]
    Unavailable {
        source_name: String,
        message: String,
    },
    #[error("source {source_name}, partition {partition}: {message}")]
    Partition {
        source_name: String,
        partition: i32,
        message: String,
    },
    #[error(transparent)]
    Decode(#[from] decode::DecodeError),
    #[error(transparent)]
    Log(#[from] sluice_log::log::LogError),
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
    #[error(transparent)]
    Stopped(#[from] ReadStopped),
}

/// The receiver of a range's chunks refused one (it failed, or needs no
/// more): the source stops reading and returns it. The receiver keeps its
/// own reason; the source never needs to know it.
#[derive(Debug, thiserror::Error)]
#[error("the reader of the range stopped the read")]
pub struct ReadStopped;

/// Receives the chunks of one task's range, in offset order.
pub type ChunkSink<'a> = dyn FnMut(RecordBatch) -> Result<(), ReadStopped> + 'a;

/// A read through [`read_with`] failed: in the source, or in the consumer
/// of its chunks (with the consumer's own error).
#[derive(Debug)]
pub enum ReadError<E> {
    Source(SourceError),
    Consumer(E),
}

/// Reads `[from, until)` of `partition` into `each`, which may fail with
/// an error of its own: the source is told to stop, and that error comes
/// back as it was.
pub fn read_with<E>(
    source: &dyn Source,
    partition: i32,
    from: i64,
    until: i64,
    mut each: impl FnMut(RecordBatch) -> Result<(), E>,
) -> Result<(), ReadError<E>> {
    let mut refused = None;
    let read = source.read(partition, from, until, &mut |chunk| {
        each(chunk).map_err(|e| {
            refused = Some(e);
            ReadStopped
        })
    });
    match (refused, read) {
        (Some(e), _) => Err(ReadError::Consumer(e)),
        (None, read) => read.map_err(ReadError::Source),
    }
}

/// A partitioned, offset-addressed input. See the module docs.
pub trait Source: Send + Sync {
    /// The name offsets are stored under in the checkpoint: keep it stable.
    fn name(&self) -> &str;
    /// Whether `read` returns the same records for a range after a restart.
    /// Non-replayable sources (socket, files) give at-most-once input.
    fn replayable(&self) -> bool {
        true
    }
    /// Partitions now, with their readable offsets. New partitions may
    /// appear between calls; the driver picks them up.
    fn partitions(&self) -> Result<Vec<PartitionInfo>, SourceError>;
    /// Told the job's committed offsets once, before the first batch.
    fn resume(&self, _committed: &[(i32, i64)]) {}
    /// Told the next offsets after every commit (e.g. to report them to a
    /// broker's group coordinator for lag monitors; never read back).
    fn committed(&self, _next: &[(i32, i64)]) {}
    /// The Kafka topic this source reads, if it reads one through a broker:
    /// only such sources can feed a job on many workers, whose progress is
    /// committed to the broker.
    fn kafka_topic(&self) -> Option<&str> {
        None
    }
    /// The first offset at or after `timestamp_ms` (the high-water mark if
    /// none).
    fn offset_for_time(&self, partition: i32, timestamp_ms: i64) -> Result<i64, SourceError>;
    /// Reads exactly the records with offsets in `[from, until)` and passes
    /// them on in chunks. Called from a task thread; may block.
    fn read(
        &self,
        partition: i32,
        from: i64,
        until: i64,
        out: &mut ChunkSink<'_>,
    ) -> Result<(), SourceError>;
}
