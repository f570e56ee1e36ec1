//! The log cleaner: compaction of `cleanup.policy=compact` partitions, as
//! Kafka's `LogCleaner` does it.
//!
//! Owns the decisions of one cleaning pass — which records a key map says
//! are superseded, which tombstones are old enough to go, which batches of
//! aborted transactions are dropped — the grouping of small sealed segments,
//! and the rewrite of a group into one `.cleaned` file beside it, with its
//! index. It never swaps files into a partition (the partition and the
//! segment do that under the writer lock) and never touches the active
//! segment.
//!
//! The rules are Kafka's: the last record of each key survives (older ones
//! may survive too: compaction is a lower bound, never a promise of one
//! record per key); offsets never change, so a compacted log has gaps; a
//! tombstone (null value) stays until its segment was last written more than
//! `delete.retention.ms` ago (Kafka before 3.1 counted the same way), so a
//! reader that started before the delete still sees it; keyless records are
//! dropped (appends to a compacted topic refuse them); transaction markers
//! stay while their transaction has data left (then go with the tombstones),
//! and batches of aborted transactions go; each producer's last batch
//! keeps at least its header (an empty batch), so producer state and the
//! batch's offset range survive, as in Kafka.
//!
//! Memory is bounded: the key map holds a 128-bit hash and an offset per key
//! and stops growing at [`CleanerOptions::dedupe_buffer_bytes`]; a pass then
//! cleans only the segments it mapped and the next pass goes on from there.

use std::collections::HashMap;
use std::collections::hash_map::RandomState;
use std::fs::{self, File};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher};
use std::io::{self, BufWriter, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::batch::{BatchHeader, HEADER_LEN};
use super::error::{LogError, Result};
use super::index::{IndexBuilder, SparseIndex};
use super::records::{self, RawRecord};
use super::segment::{Segment, file_stem};
use super::txn::AbortedTxn;

/// Store-wide cleaner settings (Kafka's broker-level `log.cleaner.*`).
#[derive(Debug, Clone)]
pub struct CleanerOptions {
    /// Pause between passes over the compacted partitions
    /// (`log.cleaner.backoff.ms`, 15 s).
    pub backoff: Duration,
    /// Bytes read plus written per second, at most
    /// (`log.cleaner.io.max.bytes.per.second`); `None` is unthrottled.
    pub io_max_bytes_per_second: Option<u64>,
    /// Memory for the key map of one pass (`log.cleaner.dedupe.buffer.size`).
    pub dedupe_buffer_bytes: usize,
}

impl Default for CleanerOptions {
    fn default() -> Self {
        CleanerOptions {
            backoff: Duration::from_secs(15),
            // Kafka leaves it unthrottled; a cleaner rewriting a 1 GiB
            // segment at full disk speed would stall the producers and
            // consumers this machine also serves.
            io_max_bytes_per_second: Some(128 << 20),
            dedupe_buffer_bytes: 128 << 20,
        }
    }
}

/// What one cleaning pass over a partition did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CleanOutcome {
    /// Sealed segments read (the clean head and the mapped dirty ones).
    pub segments_cleaned: usize,
    /// Segments whose file was replaced (some record went).
    pub segments_rewritten: usize,
    /// Segments left with no batch at all and removed.
    pub segments_removed: usize,
    pub bytes_before: u64,
    pub bytes_after: u64,
    pub records_removed: u64,
    /// Transaction markers whose transactions have no data left.
    pub markers_removed: u64,
    /// Everything below this offset is clean now.
    pub clean_upto: i64,
}

/// Identity hasher for keys that are already hashes.
#[derive(Default)]
struct PassThrough(u64);

impl Hasher for PassThrough {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }
    fn write_u128(&mut self, n: u128) {
        self.0 = n as u64;
    }
}

/// Bytes one key-map entry costs, with the hash table's overhead.
const KEY_MAP_ENTRY_BYTES: usize = 32;

/// Key → offset of its latest record in the dirty range. Keys are stored
/// as two independent 64-bit SipHashes (random keys per pass): a wrong
/// match needs a 128-bit collision.
pub(crate) struct KeyMap {
    latest: HashMap<u128, i64, BuildHasherDefault<PassThrough>>,
    hashers: (RandomState, RandomState),
    capacity: usize,
}

impl KeyMap {
    pub fn new(memory_bytes: usize) -> KeyMap {
        KeyMap {
            latest: HashMap::default(),
            hashers: (RandomState::new(), RandomState::new()),
            capacity: (memory_bytes / KEY_MAP_ENTRY_BYTES).max(1),
        }
    }

    fn hash(&self, key: &[u8]) -> u128 {
        let a = self.hashers.0.hash_one(key) as u128;
        let b = self.hashers.1.hash_one(key) as u128;
        (a << 64) | b
    }

    pub fn put(&mut self, key: &[u8], offset: i64) {
        let h = self.hash(key);
        let slot = self.latest.entry(h).or_insert(offset);
        *slot = (*slot).max(offset);
    }

    pub fn latest(&self, key: &[u8]) -> Option<i64> {
        self.latest.get(&self.hash(key)).copied()
    }

    pub fn is_full(&self) -> bool {
        self.latest.len() >= self.capacity
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.latest.len()
    }
}

/// Spreads I/O so that it stays under a rate.
pub(crate) struct Throttle {
    limit: Option<u64>,
    started: Instant,
    bytes: u64,
}

impl Throttle {
    pub fn new(limit: Option<u64>) -> Throttle {
        Throttle {
            limit: limit.filter(|&l| l > 0),
            started: Instant::now(),
            bytes: 0,
        }
    }

    pub fn charge(&mut self, bytes: u64) {
        let Some(limit) = self.limit else { return };
        self.bytes += bytes;
        let due = Duration::from_secs_f64(self.bytes as f64 / limit as f64);
        if let Some(wait) = due.checked_sub(self.started.elapsed()) {
            std::thread::sleep(wait);
        }
    }
}

/// Aborted transactions of the cleaned range, by producer.
#[derive(Default)]
pub(crate) struct AbortedRanges(HashMap<i64, Vec<(i64, i64)>>);

impl AbortedRanges {
    pub fn new(aborted: &[AbortedTxn]) -> AbortedRanges {
        let mut map: HashMap<i64, Vec<(i64, i64)>> = HashMap::new();
        for a in aborted {
            map.entry(a.producer_id)
                .or_default()
                .push((a.first_offset, a.last_offset));
        }
        AbortedRanges(map)
    }

    /// Whether a data batch belongs to an aborted transaction (its marker
    /// lies after it, its first offset at or before it).
    pub fn contains(&self, h: &BatchHeader) -> bool {
        h.is_transactional()
            && !h.is_control()
            && self.0.get(&h.producer_id).is_some_and(|ranges| {
                ranges
                    .iter()
                    .any(|&(first, marker)| first <= h.base_offset && h.base_offset < marker)
            })
    }
}

/// Everything a pass decides records by.
pub(crate) struct Rules<'a> {
    pub keys: &'a KeyMap,
    pub aborted: &'a AbortedRanges,
    /// Producer id → base offset of its last data batch in the cleaned range.
    pub producers_last: &'a HashMap<i64, i64>,
}

/// Per producer, whether a data batch of its current transaction survives
/// the pass so far: a transaction marker with no surviving data before it
/// serves no reader and, past `delete.retention.ms`, goes (as in Kafka), so
/// a changelog written one transaction per batch does not keep a marker per
/// batch forever. Carried across the groups of one pass, in offset order.
#[derive(Default)]
pub(crate) struct Markers(HashMap<i64, bool>);

/// What becomes of one batch.
enum Fate {
    Keep,
    Drop,
    Rewrite(Vec<u8>),
}

impl Rules<'_> {
    fn batch(
        &self,
        h: &BatchHeader,
        bytes: &[u8],
        drop_tombstones: bool,
        markers: &mut Markers,
        removed: &mut u64,
    ) -> std::result::Result<Fate, String> {
        if h.is_control() {
            let had_data = markers.0.remove(&h.producer_id).unwrap_or(false);
            return Ok(if had_data || !drop_tombstones {
                Fate::Keep
            } else {
                Fate::Drop
            });
        }
        let fate = self.data_batch(h, bytes, drop_tombstones, removed)?;
        if h.is_transactional() && !matches!(fate, Fate::Drop) {
            markers.0.insert(h.producer_id, true);
        }
        Ok(fate)
    }

    fn data_batch(
        &self,
        h: &BatchHeader,
        bytes: &[u8],
        drop_tombstones: bool,
        removed: &mut u64,
    ) -> std::result::Result<Fate, String> {
        let producers_last =
            h.producer_id >= 0 && self.producers_last.get(&h.producer_id) == Some(&h.base_offset);
        let section = records::records_section(h, bytes)?;
        let mut kept: Vec<RawRecord> = Vec::new();
        let mut total = 0u64;
        let aborted = self.aborted.contains(h);
        records::walk(&section, h.records_count, |r| {
            total += 1;
            let Some((start, len)) = r.key else {
                return Ok(());
            };
            let offset = h.base_offset + i64::from(r.offset_delta);
            let superseded = self
                .keys
                .latest(&section[start..start + len])
                .is_some_and(|latest| latest > offset);
            if !(aborted || superseded || (r.tombstone && drop_tombstones)) {
                kept.push(r);
            }
            Ok(())
        })?;
        *removed += total - kept.len() as u64;
        if kept.len() as u64 == total {
            return Ok(Fate::Keep);
        }
        if kept.is_empty() && !producers_last {
            return Ok(Fate::Drop);
        }
        records::rebuild(h, bytes, &section, &kept).map(Fate::Rewrite)
    }
}

/// Reads `seg` whole batch by batch, calling `f` with each header and its
/// bytes, charging the throttle.
pub(crate) fn for_each_batch(
    seg: &Segment,
    throttle: &mut Throttle,
    mut f: impl FnMut(&BatchHeader, &[u8]) -> Result<()>,
) -> Result<()> {
    const CHUNK: u64 = 4 << 20;
    let end = seg.written();
    let mut pos = 0u64;
    let mut buf = Vec::new();
    while pos < end {
        let want = CHUNK.min(end - pos) as usize;
        buf.resize(want, 0);
        seg.read_at(pos, &mut buf)?;
        throttle.charge(want as u64);
        let mut at = 0usize;
        while buf.len() - at >= HEADER_LEN {
            let h = BatchHeader::parse(&buf[at..]).map_err(|e| LogError::CorruptSegment {
                file: seg.log_path().to_path_buf(),
                position: pos + at as u64,
                reason: e.to_string(),
            })?;
            let len = h.total_len();
            if buf.len() - at < len {
                break;
            }
            f(&h, &buf[at..at + len])?;
            at += len;
        }
        if at == 0 {
            // One batch larger than the chunk: read it whole.
            let mut head = [0u8; HEADER_LEN];
            seg.read_at(pos, &mut head)?;
            let h = BatchHeader::parse(&head).map_err(|e| LogError::CorruptSegment {
                file: seg.log_path().to_path_buf(),
                position: pos,
                reason: e.to_string(),
            })?;
            let mut whole = vec![0u8; h.total_len()];
            seg.read_at(pos, &mut whole)?;
            throttle.charge(whole.len() as u64);
            f(&h, &whole)?;
            at = whole.len();
        }
        pos += at as u64;
    }
    Ok(())
}

/// Adds the keys of the records in `seg` that a reader would see (not
/// aborted, not markers) to `map`.
pub(crate) fn map_segment(
    seg: &Segment,
    aborted: &AbortedRanges,
    map: &mut KeyMap,
    throttle: &mut Throttle,
) -> Result<()> {
    for_each_batch(seg, throttle, |h, bytes| {
        if h.is_control() || aborted.contains(h) {
            return Ok(());
        }
        let section =
            records::records_section(h, bytes).map_err(|reason| corrupt(seg, h, reason))?;
        records::walk(&section, h.records_count, |r| {
            if let Some((start, len)) = r.key {
                map.put(
                    &section[start..start + len],
                    h.base_offset + i64::from(r.offset_delta),
                );
            }
            Ok(())
        })
        .map_err(|reason| corrupt(seg, h, reason))
    })
}

fn corrupt(seg: &Segment, h: &BatchHeader, reason: String) -> LogError {
    LogError::CorruptSegment {
        file: seg.log_path().to_path_buf(),
        position: 0,
        reason: format!("batch at offset {}: {reason}", h.base_offset),
    }
}

/// A segment's compacted replacement, written beside it and fsynced.
pub(crate) struct Cleaned {
    pub log: PathBuf,
    pub index: PathBuf,
    pub timeindex: PathBuf,
    pub bytes: u64,
    pub removed: u64,
    /// Transaction markers dropped.
    pub markers_dropped: u64,
}

impl Cleaned {
    /// Removes the files (the swap was abandoned).
    pub fn discard(&self) {
        for p in [&self.log, &self.index, &self.timeindex] {
            let _ = fs::remove_file(p);
        }
    }
}

/// Suffix of files a pass writes before they replace a segment's files.
pub(crate) const CLEANED_SUFFIX: &str = ".cleaned";

/// The `.cleaned` twin of a segment file: `<stem>.<ext>.cleaned`.
pub(crate) fn cleaned_path(dir: &Path, base_offset: i64, ext: &str) -> PathBuf {
    dir.join(format!("{}.{ext}{CLEANED_SUFFIX}", file_stem(base_offset)))
}

/// Writes the compacted copy of a group of consecutive sealed segments as
/// one file named after the first (Kafka groups small cleaned segments the
/// same way, so a compacted log does not keep a file per segment ever
/// written). `drop_tombstones[i]` says whether segment i's tombstones are
/// past `delete.retention.ms`. `None` when the group is one segment and
/// nothing would be removed (it stays as it is).
pub(crate) fn rewrite_group(
    group: &[Arc<Segment>],
    rules: &Rules<'_>,
    drop_tombstones: &[bool],
    markers: &mut Markers,
    index_interval: u32,
    throttle: &mut Throttle,
) -> Result<Option<Cleaned>> {
    let first = &group[0];
    let dir = first
        .log_path()
        .parent()
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let base = first.base_offset;
    let log = cleaned_path(&dir, base, "log");
    let out = File::create(&log).map_err(|e| LogError::io("creating cleaned segment", &log, e))?;
    let mut writer = BufWriter::with_capacity(1 << 20, out);
    let mut index = SparseIndex::default();
    let mut builder = IndexBuilder::new(index_interval);
    let mut written = 0u64;
    let mut removed = 0u64;
    let mut markers_dropped = 0u64;
    let mut result = Ok(());
    for (seg, &drop_tombstones) in group.iter().zip(drop_tombstones) {
        result = for_each_batch(seg, throttle, |h, bytes| {
            let fate = rules
                .batch(h, bytes, drop_tombstones, markers, &mut removed)
                .map_err(|reason| corrupt(seg, h, reason))?;
            let kept: &[u8] = match &fate {
                Fate::Keep => bytes,
                Fate::Drop => {
                    markers_dropped += u64::from(h.is_control());
                    return Ok(());
                }
                Fate::Rewrite(b) => b,
            };
            builder.on_batch(
                &mut index,
                (h.base_offset - base) as u32,
                written as u32,
                kept.len() as u64,
                h.max_timestamp,
            );
            writer
                .write_all(kept)
                .map_err(|e| LogError::io("writing cleaned segment", &log, e))?;
            written += kept.len() as u64;
            Ok(())
        });
        if result.is_err() {
            break;
        }
    }
    let finished = result.and_then(|()| {
        let file = writer
            .into_inner()
            .map_err(|e| LogError::io("writing cleaned segment", &log, e.into_error()))?;
        fail::fail_point!("cleaner::after_write", |_| Err(LogError::io(
            "writing cleaned segment",
            &log,
            io::Error::other("injected failure")
        )));
        file.sync_all()
            .map_err(|e| LogError::io("syncing cleaned segment", &log, e))?;
        // Kafka keeps a cleaned segment's modification time (the newest of
        // its group's): retention and the tombstone horizon count from when
        // it was written, not cleaned.
        if let Some(mtime) = group.last().and_then(|s| s.modified()) {
            let _ = file.set_modified(mtime);
        }
        Ok(())
    });
    let cleaned = Cleaned {
        index: cleaned_path(&dir, base, "index"),
        timeindex: cleaned_path(&dir, base, "timeindex"),
        log,
        bytes: written,
        removed,
        markers_dropped,
    };
    if let Err(e) = finished {
        cleaned.discard();
        return Err(e);
    }
    if removed + markers_dropped == 0 && group.len() == 1 {
        cleaned.discard();
        return Ok(None);
    }
    let (offsets, times) = index.encode();
    for (path, data) in [(&cleaned.index, offsets), (&cleaned.timeindex, times)] {
        let write = || -> io::Result<()> {
            let mut f = File::create(path)?;
            f.write_all(&data)?;
            f.sync_all()
        };
        if let Err(e) = write() {
            cleaned.discard();
            return Err(LogError::io("writing cleaned index", path, e));
        }
    }
    throttle.charge(written);
    Ok(Some(cleaned))
}

/// Splits `segments` into runs of consecutive segments that fit one
/// segment together: at most `max_bytes` (their current sizes) and a span
/// of offsets the index's 32-bit relative offsets can address. `ends[i]`
/// is where segment i's offsets end.
pub(crate) fn group_by_size(
    segments: &[Arc<Segment>],
    ends: &[i64],
    max_bytes: u64,
) -> Vec<Range<usize>> {
    let mut groups = Vec::new();
    let mut start = 0;
    while start < segments.len() {
        let mut end = start + 1;
        let mut bytes = segments[start].written();
        while end < segments.len()
            && bytes + segments[end].written() <= max_bytes
            && ends[end] - segments[start].base_offset < i64::from(u32::MAX)
        {
            bytes += segments[end].written();
            end += 1;
        }
        groups.push(start..end);
        start = end;
    }
    groups
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_map_keeps_the_latest_offset_and_knows_when_it_is_full() {
        let mut m = KeyMap::new(3 * KEY_MAP_ENTRY_BYTES);
        m.put(b"a", 5);
        m.put(b"a", 3);
        m.put(b"b", 7);
        assert_eq!(m.latest(b"a"), Some(5));
        assert_eq!(m.latest(b"c"), None);
        assert!(!m.is_full());
        m.put(b"c", 9);
        assert!(m.is_full());
        assert_eq!(m.len(), 3);
    }

    #[test]
    fn the_throttle_holds_the_rate() {
        let mut t = Throttle::new(Some(1_000_000));
        let start = Instant::now();
        t.charge(100_000);
        assert!(start.elapsed() >= Duration::from_millis(95));
        let mut free = Throttle::new(None);
        let start = Instant::now();
        free.charge(u64::MAX / 2);
        assert!(start.elapsed() < Duration::from_secs(1));
    }
}
