//! The bundled log store, read in-process: a task reads its partition's
//! segment files directly (no network, no broker) and decodes the batches
//! into Arrow views over the bytes it read.
//!
//! Committed data only, as a read_committed Kafka consumer sees it: a
//! partition is readable up to its last stable offset (never into an open
//! transaction), and the records of aborted transactions and the markers
//! are skipped while their offsets still count. Below the last stable
//! offset every transaction has ended, so a replayed range decodes to the
//! same rows.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::buffer::Buffer;

use super::decode::decode_block;
use super::record::RecordColumns;
use super::{ChunkSink, PartitionInfo, Source, SourceError, source_schema};
use sluice_log::log::{CommittedFilter, LogStore};

/// Bytes read per chunk: big enough to amortise a read, small enough that
/// a chunk's columns stay in cache while operators run over them.
const READ_CHUNK_BYTES: usize = 1 << 20;

/// A topic of an embedded [`LogStore`].
pub struct EmbeddedSource {
    name: String,
    topic: String,
    store: Arc<LogStore>,
}

impl EmbeddedSource {
    /// Reads `topic`; offsets are checkpointed under the topic's name.
    pub fn new(store: Arc<LogStore>, topic: impl Into<String>) -> Result<Self, SourceError> {
        let topic = topic.into();
        store.topic(&topic)?;
        Ok(EmbeddedSource {
            name: topic.clone(),
            topic,
            store,
        })
    }
}

impl Source for EmbeddedSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn partitions(&self) -> Result<Vec<PartitionInfo>, SourceError> {
        Ok(self
            .store
            .topic(&self.topic)?
            .partitions()
            .iter()
            .map(|p| PartitionInfo {
                partition: p.id() as i32,
                log_start: p.log_start_offset(),
                high_watermark: p.last_stable_offset(),
            })
            .collect())
    }

    fn offset_for_time(&self, partition: i32, timestamp_ms: i64) -> Result<i64, SourceError> {
        let p = self.store.partition(&self.topic, partition)?;
        Ok(match p.offset_for_time(timestamp_ms)? {
            Some((offset, _)) => offset,
            None => p.last_stable_offset(),
        })
    }

    fn read(
        &self,
        partition: i32,
        from: i64,
        until: i64,
        out: &mut ChunkSink<'_>,
    ) -> Result<(), SourceError> {
        let p = self
            .store
            .partition(&self.topic, partition)
            .map_err(SourceError::from)?;
        let mut position = from;
        let mut committed = CommittedFilter::new(p.aborted_transactions(from, until));
        while position < until {
            let mut bytes = Vec::with_capacity(READ_CHUNK_BYTES + (64 << 10));
            let info = p
                .read_into(position, READ_CHUNK_BYTES, &mut bytes)
                .map_err(SourceError::from)?;
            if info.bytes == 0 {
                return Err(SourceError::Partition {
                    source_name: self.name.clone(),
                    partition,
                    message: format!(
                        "offsets {position}..{until} were planned but the log ends at {}",
                        info.high_watermark
                    ),
                });
            }
            let block = Buffer::from_vec(bytes);
            let mut columns = RecordColumns::with_capacity(16 * 1024);
            let next = decode_block(
                &block,
                &self.topic,
                partition,
                position,
                until,
                &mut committed,
                &mut columns,
            )
            .map_err(SourceError::from)?;
            if next <= position {
                return Err(SourceError::Partition {
                    source_name: self.name.clone(),
                    partition,
                    message: format!("no progress reading at offset {position}"),
                });
            }
            position = next;
            if !columns.is_empty() {
                out(RecordBatch::try_new(source_schema(), columns.finish())?)?;
            }
        }
        Ok(())
    }
}
