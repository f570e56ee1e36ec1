//! Streaming a batch through a query without holding it whole.
//!
//! A query over one stream that needs the batch's rows only once (no
//! window function, no join, no watermark to apply before it runs) reads
//! the batch as it is fetched: the source's partitions are read in
//! parallel and each chunk goes, in turn, to one of a few bounded
//! channels; each channel is a partition of the table DataFusion scans,
//! which decodes its chunks (on the query's threads, so decoding stays
//! parallel whatever the topic's partition count) and passes them on in
//! cache-sized pieces. Memory is then bounded by the channels, not by the
//! batch: the bounded channels hold back the reader when the query falls
//! behind.
//!
//! This module owns that bridge; it never decides what a query means
//! (the caller plans and runs it) and never commits.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::streaming::StreamingTable;
use datafusion::error::DataFusionError;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use tokio::sync::mpsc;

use super::stream::StreamShape;
use crate::error::SqlError;
use sluice_engine::plan::{OutputInputs, PlanError};

/// Rows per piece handed to the query (as the in-memory scan's pieces).
const PIECE_ROWS: usize = 8192;
/// Chunks (about 1 MiB each) waiting per channel.
const CHANNEL_CHUNKS: usize = 4;

/// What the partitions share: the decoder, and what decoding saw.
struct Decoding {
    shape: StreamShape,
    /// The batch's time (a processing-time column's value).
    batch_time_ms: i64,
    /// Records skipped because they did not decode.
    bad: AtomicU64,
    /// The first decoding error (`on_error = 'fail'`), reported as is.
    failure: Mutex<Option<SqlError>>,
}

/// One partition of the scanned table: the chunks sent to one channel.
struct ChannelPartition {
    decoding: Arc<Decoding>,
    chunks: Mutex<Option<mpsc::Receiver<RecordBatch>>>,
}

impl std::fmt::Debug for ChannelPartition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelPartition")
            .field("stream", &self.decoding.shape.name)
            .finish()
    }
}

impl PartitionStream for ChannelPartition {
    fn schema(&self) -> &SchemaRef {
        &self.decoding.shape.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        let schema = self.decoding.shape.schema.clone();
        let chunks = sluice_log::common::mutex(&self.chunks).take();
        let decoding = self.decoding.clone();
        let pieces: std::collections::VecDeque<RecordBatch> = Default::default();
        let stream = futures::stream::unfold(
            (chunks, pieces, decoding),
            |(mut chunks, mut pieces, decoding)| async move {
                loop {
                    if let Some(piece) = pieces.pop_front() {
                        return Some((Ok(piece), (chunks, pieces, decoding)));
                    }
                    let Some(rx) = chunks.as_mut() else {
                        let e = DataFusionError::Execution(format!(
                            "stream {} was scanned twice in one batch",
                            decoding.shape.name
                        ));
                        return Some((Err(e), (None, pieces, decoding)));
                    };
                    let chunk = rx.recv().await?;
                    match decoding.shape.decode_chunk(&chunk, decoding.batch_time_ms) {
                        Ok((rows, bad)) => {
                            decoding.bad.fetch_add(bad.len() as u64, Ordering::Relaxed);
                            let n = rows.num_rows();
                            pieces.extend(
                                (0..n)
                                    .step_by(PIECE_ROWS)
                                    .map(|at| rows.slice(at, PIECE_ROWS.min(n - at))),
                            );
                        }
                        Err(e) => {
                            let message = e.to_string();
                            sluice_log::common::mutex(&decoding.failure).get_or_insert(e);
                            // Ends this partition after the error; dropping
                            // the receiver stops the reader.
                            pieces.clear();
                            return Some((
                                Err(DataFusionError::Execution(message)),
                                (Some(closed()), pieces, decoding),
                            ));
                        }
                    }
                }
            },
        );
        Box::pin(RecordBatchStreamAdapter::new(schema, stream))
    }
}

/// A receiver that yields nothing more.
fn closed() -> mpsc::Receiver<RecordBatch> {
    let (_, rx) = mpsc::channel(1);
    rx
}

/// A batch of one stream on its way into a query: the table to register
/// under the stream's name, and the reading to run while the query does.
pub(crate) struct Streamed {
    decoding: Arc<Decoding>,
    senders: Vec<mpsc::Sender<RecordBatch>>,
    pub(crate) table: Arc<StreamingTable>,
}

/// The channels and table for a batch of `shape`, in `slices` partitions.
pub(crate) fn streamed(
    shape: &StreamShape,
    slices: usize,
    batch_time_ms: i64,
) -> Result<Streamed, SqlError> {
    let decoding = Arc::new(Decoding {
        shape: shape.clone(),
        batch_time_ms,
        bad: AtomicU64::new(0),
        failure: Mutex::new(None),
    });
    let mut senders = Vec::new();
    let mut partitions: Vec<Arc<dyn PartitionStream>> = Vec::new();
    for _ in 0..slices.max(1) {
        let (tx, rx) = mpsc::channel(CHANNEL_CHUNKS);
        senders.push(tx);
        partitions.push(Arc::new(ChannelPartition {
            decoding: decoding.clone(),
            chunks: Mutex::new(Some(rx)),
        }));
    }
    let table = Arc::new(StreamingTable::try_new(shape.schema.clone(), partitions)?);
    Ok(Streamed {
        decoding,
        senders,
        table,
    })
}

impl Streamed {
    /// Reads input `input` into the channels on a thread of its own while
    /// `query` runs here; the query's result, or what stopped the reading
    /// or the decoding. `query` must drop every reference to the table
    /// before it returns (the reader waits on full channels until then).
    /// Returns the number of records skipped as undecodable too.
    pub(crate) fn run<R>(
        self,
        inputs: &OutputInputs,
        input: usize,
        query: impl FnOnce() -> Result<R, SqlError>,
    ) -> Result<(R, u64), SqlError> {
        let Streamed {
            decoding,
            senders,
            table,
        } = self;
        drop(table);
        // Set when the query stopped reading before the end (it needed no
        // more rows, or failed): the reader stops quietly.
        let stopped = AtomicBool::new(false);
        let (read, result) = std::thread::scope(|scope| {
            let stopped = &stopped;
            let reader = scope.spawn(move || {
                let next = AtomicUsize::new(0);
                inputs.for_each_chunk(input, |_, chunk| {
                    if chunk.num_rows() == 0 {
                        return Ok(());
                    }
                    let to = next.fetch_add(1, Ordering::Relaxed) % senders.len();
                    senders[to].blocking_send(chunk).map_err(|_| {
                        stopped.store(true, Ordering::Relaxed);
                        PlanError::Invalid("the query stopped reading".into())
                    })
                })
                // `senders` drop here: the partitions see their ends.
            });
            let result = query();
            (reader.join(), result)
        });
        let read = match read {
            Ok(read) => read,
            Err(_) => {
                return Err(SqlError::Plan {
                    line: 0,
                    message: "reading the batch panicked".into(),
                });
            }
        };
        if let Some(failure) = sluice_log::common::mutex(&decoding.failure).take() {
            return Err(failure);
        }
        if let Err(e) = read
            && !stopped.load(Ordering::Relaxed)
        {
            return Err(SqlError::from(e));
        }
        let result = result?;
        Ok((result, decoding.bad.load(Ordering::Relaxed)))
    }
}
