//! The sparse offset and time index of one segment.
//!
//! Owns the in-memory index and its two files; never reads or writes the
//! segment's `.log` (the segment feeds it batch positions as it learns them).
//!
//! On disk, beside `00000000000000001234.log`:
//! - `.index`: 8-byte entries, `relative offset: u32 BE` then `file position: u32 BE`
//!   (Kafka's layout): the batch at that position starts at `base + relative offset`.
//! - `.timeindex`: 12-byte entries, `timestamp: i64 BE` then `relative offset: u32 BE`:
//!   every record in the batches *before* that offset has a timestamp <= the
//!   entry's timestamp, so a lookup for time `t` may skip them when `timestamp < t`.
//!
//! An entry is added after at least `index.interval.bytes` of batches since
//! the last one. The files are written whole (temp file, fsync, rename) when
//! a segment is rolled and when the store closes; the active segment's tail
//! index is rebuilt from the log on recovery. A file that fails the sanity
//! checks in [`SparseIndex::decode`] is ignored and rebuilt, never trusted.

/// One index point: a batch boundary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    pub rel_offset: u32,
    pub position: u32,
    /// Largest timestamp of any record before this batch in the segment
    /// ([`NO_TIMESTAMP`] if none).
    pub max_ts_before: i64,
}

/// Kafka's "no timestamp" value.
pub const NO_TIMESTAMP: i64 = -1;

#[derive(Debug, Default, Clone)]
pub struct SparseIndex {
    entries: Vec<IndexEntry>,
}

impl SparseIndex {
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn last(&self) -> Option<IndexEntry> {
        self.entries.last().copied()
    }

    /// Appends a point. Points must arrive in log order.
    pub fn push(&mut self, entry: IndexEntry) {
        debug_assert!(
            self.entries
                .last()
                .is_none_or(|l| l.rel_offset < entry.rel_offset
                    && l.position < entry.position
                    && l.max_ts_before <= entry.max_ts_before)
        );
        self.entries.push(entry);
    }

    /// Position of the last indexed batch starting at or before `rel_offset`
    /// (0 when none is): a reader scans forward from there.
    pub fn position_for_offset(&self, rel_offset: u32) -> u32 {
        let n = self.entries.partition_point(|e| e.rel_offset <= rel_offset);
        if n == 0 {
            0
        } else {
            self.entries[n - 1].position
        }
    }

    /// Position from which to scan for the first record at or after `ts`:
    /// everything before it is known to be older than `ts`.
    pub fn position_for_timestamp(&self, ts: i64) -> u32 {
        let n = self.entries.partition_point(|e| e.max_ts_before < ts);
        if n == 0 {
            0
        } else {
            self.entries[n - 1].position
        }
    }

    /// Drops points at or beyond `position` (after the log was truncated).
    pub fn truncate_to_position(&mut self, position: u64) {
        let keep = self
            .entries
            .partition_point(|e| (e.position as u64) < position);
        self.entries.truncate(keep);
    }

    /// Encodes the `.index` and `.timeindex` file contents.
    pub fn encode(&self) -> (Vec<u8>, Vec<u8>) {
        let mut offsets = Vec::with_capacity(self.entries.len() * 8);
        let mut times = Vec::with_capacity(self.entries.len() * 12);
        for e in &self.entries {
            offsets.extend_from_slice(&e.rel_offset.to_be_bytes());
            offsets.extend_from_slice(&e.position.to_be_bytes());
            times.extend_from_slice(&e.max_ts_before.to_be_bytes());
            times.extend_from_slice(&e.rel_offset.to_be_bytes());
        }
        (offsets, times)
    }

    /// Decodes both files, or returns why they cannot be trusted for a log
    /// of `log_size` bytes: sizes not whole entries, the two files disagreeing,
    /// entries out of order, or positions past the end of the log.
    pub fn decode(offsets: &[u8], times: &[u8], log_size: u64) -> Result<Self, String> {
        if !offsets.len().is_multiple_of(8) || !times.len().is_multiple_of(12) {
            return Err(format!(
                "sizes {} and {} are not whole entries",
                offsets.len(),
                times.len()
            ));
        }
        if offsets.len() / 8 != times.len() / 12 {
            return Err("the offset and time index have different lengths".into());
        }
        let mut entries: Vec<IndexEntry> = Vec::with_capacity(offsets.len() / 8);
        for (o, t) in offsets.chunks_exact(8).zip(times.chunks_exact(12)) {
            let rel_offset = u32::from_be_bytes(o[0..4].try_into().expect("4 bytes"));
            let position = u32::from_be_bytes(o[4..8].try_into().expect("4 bytes"));
            let max_ts_before = i64::from_be_bytes(t[0..8].try_into().expect("8 bytes"));
            let time_rel = u32::from_be_bytes(t[8..12].try_into().expect("4 bytes"));
            if time_rel != rel_offset {
                return Err(format!(
                    "time index entry for offset {time_rel} pairs with offset entry {rel_offset}"
                ));
            }
            if position as u64 >= log_size {
                return Err(format!(
                    "entry points at byte {position}, past the log's {log_size} bytes"
                ));
            }
            if let Some(prev) = entries.last()
                && !(prev.rel_offset < rel_offset
                    && prev.position < position
                    && prev.max_ts_before <= max_ts_before)
            {
                return Err(format!("entries out of order at offset {rel_offset}"));
            }
            entries.push(IndexEntry {
                rel_offset,
                position,
                max_ts_before,
            });
        }
        Ok(SparseIndex { entries })
    }
}

/// Builds index points while batches are appended or scanned.
#[derive(Debug, Clone)]
pub struct IndexBuilder {
    interval: u64,
    bytes_since_entry: u64,
    max_ts: i64,
}

impl IndexBuilder {
    pub fn new(interval_bytes: u32) -> Self {
        IndexBuilder {
            interval: interval_bytes as u64,
            bytes_since_entry: 0,
            max_ts: NO_TIMESTAMP,
        }
    }

    /// Resumes after `index` was loaded and the bytes after its last point
    /// were scanned. `max_ts` is the largest timestamp in the segment so far.
    pub fn resume(interval_bytes: u32, bytes_since_entry: u64, max_ts: i64) -> Self {
        IndexBuilder {
            interval: interval_bytes as u64,
            bytes_since_entry,
            max_ts,
        }
    }

    /// Largest timestamp seen in the segment so far.
    pub fn max_timestamp(&self) -> i64 {
        self.max_ts
    }

    /// Records one batch at `position`; adds an index point when at least an
    /// interval's worth of bytes has passed since the last one. The first
    /// batch of a segment needs no point: lookups default to position 0.
    pub fn on_batch(
        &mut self,
        index: &mut SparseIndex,
        rel_offset: u32,
        position: u32,
        len: u64,
        batch_max_ts: i64,
    ) {
        if self.bytes_since_entry >= self.interval && position > 0 {
            index.push(IndexEntry {
                rel_offset,
                position,
                max_ts_before: self.max_ts,
            });
            self.bytes_since_entry = 0;
        }
        self.bytes_since_entry += len;
        self.max_ts = self.max_ts.max(batch_max_ts);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SparseIndex {
        let mut idx = SparseIndex::default();
        let mut b = IndexBuilder::new(100);
        // Ten batches of 60 bytes, 10 offsets each, timestamps rising by 5.
        for i in 0..10u32 {
            b.on_batch(&mut idx, i * 10, i * 60, 60, 1000 + i as i64 * 5);
        }
        idx
    }

    #[test]
    fn lookups_find_the_nearest_point_at_or_before() {
        let idx = sample();
        assert_eq!(idx.len(), 4, "a point every ~100 bytes of 60-byte batches");
        assert_eq!(idx.position_for_offset(0), 0);
        assert_eq!(idx.position_for_offset(19), 0);
        assert_eq!(idx.position_for_offset(20), 120);
        assert_eq!(idx.position_for_offset(95), 480);
        // Timestamps: batch i has max 1000 + 5i.
        assert_eq!(idx.position_for_timestamp(0), 0);
        assert_eq!(idx.position_for_timestamp(1011), 120);
        assert_eq!(idx.position_for_timestamp(1045), 480);
    }

    #[test]
    fn round_trips_and_rejects_damaged_files() {
        let idx = sample();
        let (o, t) = idx.encode();
        let back = SparseIndex::decode(&o, &t, 600).unwrap();
        assert_eq!(back.entries, idx.entries);
        assert!(SparseIndex::decode(&o[..o.len() - 3], &t, 600).is_err());
        assert!(SparseIndex::decode(&o, &t[..12], 600).is_err());
        assert!(
            SparseIndex::decode(&o, &t, 300).is_err(),
            "positions past the log end"
        );
        let mut swapped = o.clone();
        swapped[..8].copy_from_slice(&o[8..16]);
        swapped[8..16].copy_from_slice(&o[..8]);
        assert!(SparseIndex::decode(&swapped, &t, 600).is_err());
    }

    #[test]
    fn truncation_drops_points_past_the_cut() {
        let mut idx = sample();
        idx.truncate_to_position(240);
        assert_eq!(idx.last().map(|e| e.position), Some(120));
    }
}
