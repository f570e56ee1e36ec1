//! A deterministic, seeded generator of text lines for demos and
//! benchmarks, in direct mode: the line at (partition, offset) is a pure
//! function of the seed, so any range can be re-read after a crash and
//! gives the same records.
//!
//! Offsets grow with wall-clock time at `rate` lines per second per
//! partition (or are all available at once with `rate = None`), up to an
//! optional `limit` per partition.

use std::sync::Mutex;
use std::time::Instant;

use arrow::array::RecordBatch;

use super::record::RecordColumns;
use super::{ChunkSink, PartitionInfo, Source, SourceError, source_schema};
use crate::corpus::CorpusGenerator;

/// Timestamps are synthetic too (2026-01-01T00:00:00Z plus one millisecond
/// per offset), so a replayed range is identical in every column.
const ORIGIN_MS: i64 = 1_767_225_600_000;
const CHUNK_ROWS: usize = 8192;

pub struct GeneratorSource {
    name: String,
    partitions: i32,
    rate: Option<f64>,
    limit: Option<i64>,
    corpus: CorpusGenerator,
    /// Offsets already available at `started` (resume points).
    base: Mutex<Vec<i64>>,
    started: Instant,
}

impl GeneratorSource {
    /// `rate`: lines per second per partition (`None`: unbounded, all of
    /// `limit` at once). `limit`: lines per partition.
    pub fn new(
        name: impl Into<String>,
        seed: u64,
        partitions: i32,
        rate: Option<f64>,
        limit: Option<i64>,
    ) -> Result<Self, SourceError> {
        let name = name.into();
        if partitions < 1 {
            return Err(SourceError::Unavailable {
                source_name: name,
                message: "a generator needs at least one partition".into(),
            });
        }
        if rate.is_none() && limit.is_none() {
            return Err(SourceError::Unavailable {
                source_name: name,
                message: "an unbounded generator needs a rate or a limit".into(),
            });
        }
        Ok(GeneratorSource {
            name,
            partitions,
            rate,
            limit,
            corpus: CorpusGenerator::new(seed),
            base: Mutex::new(vec![0; partitions as usize]),
            started: Instant::now(),
        })
    }

    fn line_index(partition: i32, offset: i64) -> u64 {
        ((partition as u64) << 40) | offset as u64
    }
}

impl Source for GeneratorSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn resume(&self, committed: &[(i32, i64)]) {
        let mut base = sluice_log::common::mutex(&self.base);
        for &(p, offset) in committed {
            if let Some(b) = base.get_mut(p as usize) {
                *b = (*b).max(offset);
            }
        }
    }

    fn partitions(&self) -> Result<Vec<PartitionInfo>, SourceError> {
        let base = sluice_log::common::mutex(&self.base);
        let elapsed = self.started.elapsed().as_secs_f64();
        Ok((0..self.partitions)
            .map(|p| {
                let grown = match self.rate {
                    Some(rate) => base[p as usize] + (elapsed * rate) as i64,
                    None => i64::MAX,
                };
                PartitionInfo {
                    partition: p,
                    log_start: 0,
                    high_watermark: self.limit.map_or(grown, |l| grown.min(l)),
                }
            })
            .collect())
    }

    fn offset_for_time(&self, _partition: i32, timestamp_ms: i64) -> Result<i64, SourceError> {
        Ok((timestamp_ms - ORIGIN_MS).max(0))
    }

    fn read(
        &self,
        partition: i32,
        from: i64,
        until: i64,
        out: &mut ChunkSink<'_>,
    ) -> Result<(), SourceError> {
        let mut line = Vec::with_capacity(256);
        let mut offset = from;
        while offset < until {
            let end = until.min(offset + CHUNK_ROWS as i64);
            let mut columns = RecordColumns::with_capacity((end - offset) as usize);
            for o in offset..end {
                line.clear();
                self.corpus
                    .line_at(Self::line_index(partition, o), &mut line);
                columns.begin_row(&self.name, partition, o, ORIGIN_MS + o);
                columns.key.append_null();
                columns.value.append_value(&line);
                columns.end_row();
            }
            out(RecordBatch::try_new(source_schema(), columns.finish())?)?;
            offset = end;
        }
        Ok(())
    }
}
