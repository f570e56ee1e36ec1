//! One segment: a `.log` file of RecordBatch v2 bytes named by its base offset
//! (20 digits, as Kafka names them), with its sparse index.
//!
//! Owns the segment's file handle, its byte counters, its index and its
//! aborted-transaction index (`.txnindex`: the transactions whose ABORT
//! marker lies in this segment); knows how to validate and truncate its own
//! tail. It never decides when to roll, flush or delete — the partition
//! does — and never decodes records.
//!
//! Three byte counters describe the file, each only growing during a run:
//! `written` (whole batches in the file), `flushed` (of those, fsynced) and
//! `visible` (of those, readable by consumers). Readers never look past
//! `visible`, so a half-written or rolled-back append is never seen.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::batch::{self, BatchHeader, HEADER_LEN};
use super::error::{LogError, Result};
use super::index::{IndexBuilder, NO_TIMESTAMP, SparseIndex};
use super::txn::AbortedTxn;
use crate::common::{mutex, read_lock, write_lock};

pub(crate) fn file_stem(base_offset: i64) -> String {
    format!("{base_offset:020}")
}

/// Suffix of a cleaned segment between its commit and its rename into place.
pub(crate) const SWAP_SUFFIX: &str = ".swap";

/// Finishes the cleaning passes a crash interrupted after their commit
/// point: for each `<base>.log.swap`, the segments whose offsets it covers
/// (bases from its own up to its last batch's last offset) are deleted
/// and the swap becomes `<base>.log`. A swap was fsynced before it was
/// named so: it is whole.
pub(crate) fn finish_swaps(dir: &Path) -> Result<()> {
    let entries = fs::read_dir(dir).map_err(|e| LogError::io("listing partition", dir, e))?;
    let mut swaps = Vec::new();
    let mut logs = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| LogError::io("listing partition", dir, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(log_name) = name.strip_suffix(SWAP_SUFFIX)
            && let Some(base) = parse_log_file_name(log_name)
        {
            swaps.push((base, entry.path()));
        } else if let Some(base) = parse_log_file_name(&name) {
            logs.push(base);
        }
    }
    for (base, swap) in swaps {
        let mut last = base;
        let file = File::open(&swap).map_err(|e| LogError::io("opening swap file", &swap, e))?;
        let len = file
            .metadata()
            .map_err(|e| LogError::io("inspecting swap file", &swap, e))?
            .len();
        let mut pos = 0u64;
        let mut head = [0u8; HEADER_LEN];
        while pos + HEADER_LEN as u64 <= len {
            file.read_exact_at(&mut head, pos)
                .map_err(|e| LogError::io("reading swap file", &swap, e))?;
            let h = BatchHeader::parse(&head).map_err(|e| LogError::CorruptSegment {
                file: swap.clone(),
                position: pos,
                reason: e.to_string(),
            })?;
            last = last.max(h.last_offset());
            pos += h.total_len() as u64;
        }
        for &covered in logs.iter().filter(|&&b| b >= base && b <= last) {
            let stem = file_stem(covered);
            for ext in ["index", "timeindex", "txnindex", "log"] {
                let path = dir.join(format!("{stem}.{ext}"));
                match fs::remove_file(&path) {
                    Ok(()) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => return Err(LogError::io("deleting a swapped segment", &path, e)),
                }
            }
        }
        let target = dir.join(format!("{}.log", file_stem(base)));
        fs::rename(&swap, &target).map_err(|e| LogError::io("finishing a swap", &target, e))?;
        tracing::warn!(segment = %target.display(), "finished a cleaning pass a crash interrupted");
    }
    super::partition::sync_dir(dir)
}

/// Parses `00000000000000001234.log` into 1234.
pub(crate) fn parse_log_file_name(name: &str) -> Option<i64> {
    let stem = name.strip_suffix(".log")?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// What recovery found in a segment's tail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TailRecovery {
    /// Bytes cut off the end of the file (0 when the tail was whole).
    pub truncated_bytes: u64,
    /// Why the first cut-off byte was rejected.
    pub reason: Option<String>,
    pub index_rebuilt: bool,
}

pub(crate) struct Segment {
    pub base_offset: i64,
    log_path: PathBuf,
    file: File,
    written: AtomicU64,
    flushed: AtomicU64,
    visible: AtomicU64,
    next_offset: AtomicI64,
    max_timestamp: AtomicI64,
    /// Wall-clock basis for `segment.ms` and for retention of segments whose
    /// records carry no timestamps.
    created_ms: i64,
    index: RwLock<SparseIndex>,
    /// Transactions aborted by a marker in this segment, in marker order,
    /// each with the partition's last stable offset after it.
    aborted: Mutex<Vec<(AbortedTxn, i64)>>,
}

/// A batch header met while scanning, with where it lies.
pub(crate) struct ScannedBatch {
    pub position: u64,
    pub header: BatchHeader,
}

impl Segment {
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Acquire)
    }

    pub fn flushed(&self) -> u64 {
        self.flushed.load(Ordering::Acquire)
    }

    pub fn visible(&self) -> u64 {
        self.visible.load(Ordering::Acquire)
    }

    pub fn next_offset(&self) -> i64 {
        self.next_offset.load(Ordering::Acquire)
    }

    pub fn max_timestamp(&self) -> i64 {
        self.max_timestamp.load(Ordering::Acquire)
    }

    /// The time retention.ms counts from: the newest record timestamp, or,
    /// when the records carry none (-1), the file's last modification, as
    /// in Kafka.
    pub fn retention_timestamp(&self, now_ms: i64) -> i64 {
        let max_ts = self.max_timestamp();
        if max_ts != NO_TIMESTAMP {
            return max_ts;
        }
        self.file
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(now_ms, |d| d.as_millis() as i64)
    }

    pub fn created_ms(&self) -> i64 {
        self.created_ms
    }

    pub fn index(&self) -> RwLockReadGuard<'_, SparseIndex> {
        read_lock(&self.index)
    }

    pub fn index_mut(&self) -> RwLockWriteGuard<'_, SparseIndex> {
        write_lock(&self.index)
    }

    /// The in-memory state of a segment with no batches yet.
    fn empty(base_offset: i64, log_path: PathBuf, file: File, created_ms: i64) -> Segment {
        Segment {
            base_offset,
            log_path,
            file,
            written: AtomicU64::new(0),
            flushed: AtomicU64::new(0),
            visible: AtomicU64::new(0),
            next_offset: AtomicI64::new(base_offset),
            max_timestamp: AtomicI64::new(NO_TIMESTAMP),
            created_ms,
            index: RwLock::new(SparseIndex::default()),
            aborted: Mutex::new(Vec::new()),
        }
    }

    /// Records a transaction aborted by a marker appended to this segment.
    pub fn add_aborted(&self, txn: AbortedTxn, last_stable_offset: i64) {
        mutex(&self.aborted).push((txn, last_stable_offset));
    }

    /// Aborted transactions with `last_offset >= from` and
    /// `first_offset < upto`.
    pub fn aborted_overlapping(&self, from: i64, upto: i64, out: &mut Vec<AbortedTxn>) {
        out.extend(
            mutex(&self.aborted)
                .iter()
                .map(|(a, _)| *a)
                .filter(|a| a.last_offset >= from && a.first_offset < upto),
        );
    }

    /// Forgets entries whose marker is at or after `offset` (recovery
    /// rebuilds them from the log).
    pub fn drop_aborted_from(&self, offset: i64) {
        mutex(&self.aborted).retain(|(a, _)| a.last_offset < offset);
    }

    fn txn_index_path(&self) -> PathBuf {
        self.log_path.with_extension("txnindex")
    }

    /// Loads `.txnindex` (missing means no aborted transaction), keeping
    /// only entries whose marker lies in this segment's offsets.
    pub fn load_txn_index(&self) -> Result<()> {
        let path = self.txn_index_path();
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(LogError::io("reading transaction index", &path, e)),
        };
        let end = self.next_offset();
        let entries = AbortedTxn::decode_all(&bytes)
            .into_iter()
            .filter(|a| (self.base_offset..end).contains(&a.last_offset))
            .map(|a| (a, a.last_offset + 1));
        mutex(&self.aborted).extend(entries);
        Ok(())
    }

    /// Writes `.txnindex` whole (temp file, fsync, rename), or removes it
    /// when the segment aborted nothing.
    pub fn persist_txn_index(&self) -> Result<()> {
        let path = self.txn_index_path();
        let entries = mutex(&self.aborted).clone();
        if entries.is_empty() {
            return match fs::remove_file(&path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(LogError::io("removing transaction index", &path, e)),
            };
        }
        let mut data = Vec::with_capacity(entries.len() * super::txn::TXN_INDEX_ENTRY);
        for (a, lso) in &entries {
            a.encode(*lso, &mut data);
        }
        let tmp = path.with_extension("txnindex.tmp");
        fs::write(&tmp, &data).map_err(|e| LogError::io("writing transaction index", &tmp, e))?;
        File::open(&tmp)
            .and_then(|f| f.sync_all())
            .map_err(|e| LogError::io("syncing transaction index", &tmp, e))?;
        fs::rename(&tmp, &path).map_err(|e| LogError::io("renaming transaction index", &path, e))
    }

    /// Creates an empty segment file. A leftover file of the same name (from a
    /// roll that crashed before its first append) is reused if empty.
    pub fn create(dir: &Path, base_offset: i64, now_ms: i64) -> Result<Segment> {
        let log_path = dir.join(format!("{}.log", file_stem(base_offset)));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&log_path)
            .map_err(|e| LogError::io("creating segment", &log_path, e))?;
        let len = file
            .metadata()
            .map_err(|e| LogError::io("inspecting segment", &log_path, e))?
            .len();
        if len != 0 {
            return Err(LogError::CorruptSegment {
                file: log_path,
                position: 0,
                reason: "a new segment's file already exists and is not empty".into(),
            });
        }
        Ok(Segment::empty(base_offset, log_path, file, now_ms))
    }

    /// Opens an existing segment.
    ///
    /// `validate_from` is `None` for a sealed segment, whose bytes were
    /// fsynced when it was rolled: its index is loaded, or rebuilt from batch
    /// headers if missing or damaged. For the last segment of a partition it
    /// is `Some(position)`, a batch boundary known to be on disk: every batch
    /// after it is checked (framing, magic, CRC-32C, offset continuity) and a
    /// torn or corrupt tail is cut off.
    pub fn open(
        dir: &Path,
        base_offset: i64,
        index_interval: u32,
        validate_from: Option<u64>,
        now_ms: i64,
    ) -> Result<(Segment, TailRecovery, IndexBuilder)> {
        let stem = file_stem(base_offset);
        let log_path = dir.join(format!("{stem}.log"));
        let (file, file_len, mtime_ms) = open_log_file(&log_path, now_ms)?;
        let (mut index, index_rebuilt) = load_or_rebuild_index(dir, &stem, &log_path, file_len);
        // CRCs are checked from the trusted boundary on; a boundary past the
        // end of the file means the file shrank behind our back: check it all.
        let crc_from = match validate_from {
            Some(pos) if pos <= file_len => pos,
            Some(_) => 0,
            None => u64::MAX,
        };
        if crc_from != u64::MAX {
            index.truncate_to_position(crc_from);
        }
        // Re-scan headers from the last kept point so the rebuilt points'
        // timestamps account for every batch before them.
        let (scan_from, expected_offset, resumed_ts) = match index.last() {
            Some(e) => (
                e.position as u64,
                base_offset + e.rel_offset as i64,
                e.max_ts_before,
            ),
            None => (0, base_offset, NO_TIMESTAMP),
        };
        let mut seg = Segment::empty(base_offset, log_path, file, mtime_ms.min(now_ms));
        let mut builder = IndexBuilder::resume(index_interval, 0, resumed_ts);
        let (end_pos, next_offset, error) =
            seg.scan(scan_from, file_len, expected_offset, crc_from, |b| {
                builder.on_batch(
                    &mut index,
                    (b.header.base_offset - base_offset) as u32,
                    b.position as u32,
                    b.header.total_len() as u64,
                    b.header.max_timestamp,
                );
            })?;
        let mut recovery = TailRecovery {
            truncated_bytes: 0,
            reason: None,
            index_rebuilt,
        };
        if let Some(reason) = error {
            // Bytes that were fsynced are damaged: that is not a torn write,
            // so refuse to open rather than silently cut data.
            let trusted_damaged = validate_from.is_none() || end_pos < crc_from;
            seg.cut_tail(end_pos, file_len, reason.clone(), trusted_damaged)?;
            recovery.truncated_bytes = file_len - end_pos;
            recovery.reason = Some(reason);
        }
        if end_pos >= HEADER_LEN as u64 {
            seg.date_from_first_batch(now_ms)?;
        }
        let max_ts = builder.max_timestamp();
        seg.written.store(end_pos, Ordering::Release);
        seg.flushed.store(end_pos, Ordering::Release);
        seg.visible.store(end_pos, Ordering::Release);
        seg.next_offset.store(next_offset, Ordering::Release);
        seg.max_timestamp.store(max_ts, Ordering::Release);
        *seg.index_mut() = index;
        Ok((seg, recovery, builder))
    }

    /// Cuts the file at `end_pos`, where validation stopped for `reason`,
    /// unless the damage lies in bytes that were fsynced.
    fn cut_tail(
        &mut self,
        end_pos: u64,
        file_len: u64,
        reason: String,
        trusted_damaged: bool,
    ) -> Result<()> {
        if trusted_damaged {
            return Err(LogError::CorruptSegment {
                file: self.log_path.clone(),
                position: end_pos,
                reason,
            });
        }
        tracing::warn!(
            segment = %self.log_path.display(),
            position = end_pos,
            cut_bytes = file_len - end_pos,
            "cutting off a torn or corrupt tail: {reason}"
        );
        self.file
            .set_len(end_pos)
            .and_then(|()| self.file.sync_all())
            .map_err(|e| LogError::io("truncating torn tail of", &self.log_path, e))
    }

    /// Age-based rolling counts from the first batch's timestamp, as in
    /// Kafka; without one, the file's modification time stands in.
    fn date_from_first_batch(&mut self, now_ms: i64) -> Result<()> {
        let mut head = [0u8; HEADER_LEN];
        self.read_at(0, &mut head)?;
        if let Ok(h) = BatchHeader::parse(&head)
            && h.max_timestamp > 0
            && h.max_timestamp <= now_ms
        {
            self.created_ms = h.max_timestamp;
        }
        Ok(())
    }

    /// Walks batches from `from` to `to`, calling `f` for each valid one.
    /// Returns where the valid run ends, the next offset, and why it stopped
    /// early (if it did). Batches at or after `crc_from` are read whole and
    /// their CRC checked; before it only headers are read.
    // Kept whole (~90 lines): recovery's one pass over the file, where each
    // stop (torn header, bad CRC, offset gap) must return the same trio of
    // position, offset and reason from the loop's own state.
    fn scan(
        &self,
        from: u64,
        to: u64,
        mut expected_offset: i64,
        crc_from: u64,
        mut f: impl FnMut(&ScannedBatch),
    ) -> Result<(u64, i64, Option<String>)> {
        let mut pos = from;
        let mut reader = io::BufReader::with_capacity(
            1 << 20,
            FileReader {
                file: &self.file,
                pos: from,
            },
        );
        let mut buf = vec![0u8; HEADER_LEN];
        while pos < to {
            let remaining = to - pos;
            if remaining < HEADER_LEN as u64 {
                return Ok((
                    pos,
                    expected_offset,
                    Some(format!(
                        "{remaining} trailing bytes, less than a batch header"
                    )),
                ));
            }
            buf.resize(HEADER_LEN, 0);
            reader
                .read_exact(&mut buf)
                .map_err(|e| LogError::io("reading segment", &self.log_path, e))?;
            let header = match BatchHeader::parse(&buf) {
                Ok(h) => h,
                Err(e) => return Ok((pos, expected_offset, Some(e.to_string()))),
            };
            let len = header.total_len() as u64;
            if len > remaining {
                return Ok((
                    pos,
                    expected_offset,
                    Some(format!(
                        "batch of {len} bytes runs past the end of the file ({remaining} left)"
                    )),
                ));
            }
            // A compacted segment has gaps between batches; offsets never
            // go back.
            if header.base_offset < expected_offset {
                return Ok((
                    pos,
                    expected_offset,
                    Some(format!(
                        "batch starts at offset {}, expected {expected_offset} or later",
                        header.base_offset
                    )),
                ));
            }
            if header.last_offset_delta < 0 {
                return Ok((
                    pos,
                    expected_offset,
                    Some(format!(
                        "negative last offset delta {}",
                        header.last_offset_delta
                    )),
                ));
            }
            let body = len as usize - HEADER_LEN;
            if pos >= crc_from {
                buf.resize(len as usize, 0);
                reader
                    .read_exact(&mut buf[HEADER_LEN..])
                    .map_err(|e| LogError::io("reading segment", &self.log_path, e))?;
                if let Err(e) = batch::verify_crc(&header, &buf) {
                    return Ok((pos, expected_offset, Some(e.to_string())));
                }
            } else {
                reader
                    .seek_relative(body as i64)
                    .map_err(|e| LogError::io("reading segment", &self.log_path, e))?;
            }
            f(&ScannedBatch {
                position: pos,
                header,
            });
            expected_offset = header.last_offset() + 1;
            pos += len;
        }
        Ok((pos, expected_offset, None))
    }

    /// Writes whole batches at the end of the file. On failure the file is
    /// cut back so that a later append or a recovery never meets the partial
    /// bytes; if even that fails the caller must take the partition offline.
    pub fn append(&self, bytes: &[u8]) -> Result<u64, (LogError, bool)> {
        let pos = self.written();
        match self.write_at(bytes, pos) {
            Ok(()) => {
                self.written
                    .store(pos + bytes.len() as u64, Ordering::Release);
                Ok(pos)
            }
            Err(e) => {
                let rolled_back = self.file.set_len(pos).is_ok();
                Err((LogError::io("appending to", &self.log_path, e), rolled_back))
            }
        }
    }

    fn write_at(&self, bytes: &[u8], pos: u64) -> io::Result<()> {
        fail::fail_point!("segment::write", |arg| {
            // "partial": half the bytes reach the file, then the disk is full.
            if arg.as_deref() == Some("partial") {
                let _ = self.file.write_all_at(&bytes[..bytes.len() / 2], pos);
            }
            Err(io::Error::from(io::ErrorKind::StorageFull))
        });
        self.file.write_all_at(bytes, pos)
    }

    /// Records a new batch in the in-memory state after a successful write.
    pub fn on_appended(&self, next_offset: i64, max_ts: i64) {
        self.next_offset.store(next_offset, Ordering::Release);
        self.max_timestamp.fetch_max(max_ts, Ordering::AcqRel);
    }

    /// fsyncs the data written so far and returns how much that covers.
    pub fn sync(&self) -> Result<u64> {
        let upto = self.written();
        (|| -> io::Result<()> {
            fail::fail_point!("segment::sync", |_| Err(io::Error::other(
                "injected fsync failure"
            )));
            self.file.sync_data()
        })()
        .map_err(|e| LogError::io("syncing", &self.log_path, e))?;
        self.flushed.fetch_max(upto, Ordering::AcqRel);
        Ok(upto)
    }

    pub fn publish(&self, upto: u64) {
        self.visible.fetch_max(upto, Ordering::AcqRel);
    }

    /// Reads up to `buf.len()` bytes at `pos`, never past `limit`.
    pub fn read_at(&self, pos: u64, buf: &mut [u8]) -> Result<()> {
        self.file
            .read_exact_at(buf, pos)
            .map_err(|e| LogError::io("reading segment", &self.log_path, e))
    }

    /// Appends the `len` bytes at `pos` to `out`, or nothing on error.
    ///
    /// Reads into `out`'s spare capacity instead of zeroing the space
    /// first: reads are up to a MiB each, and zeroing them was 3–8 % of a
    /// pass-through query's CPU time.
    pub fn read_appending(&self, pos: u64, len: usize, out: &mut Vec<u8>) -> Result<()> {
        let error = |e: std::io::Error| LogError::io("reading segment", &self.log_path, e);
        out.reserve(len);
        let start = out.len();
        let mut filled = 0;
        while filled < len {
            let spare = &mut out.spare_capacity_mut()[filled..len];
            match rustix::io::pread(&self.file, spare, pos + filled as u64) {
                Ok(([], _)) => {
                    return Err(error(std::io::ErrorKind::UnexpectedEof.into()));
                }
                Ok((read, _)) => filled += read.len(),
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(error(e.into())),
            }
        }
        // SAFETY: the loop ran until `pread` had initialised all `len`
        // bytes of spare capacity after `start`.
        unsafe { out.set_len(start + len) };
        Ok(())
    }

    /// Finds the first batch whose last offset is >= `offset`, scanning
    /// headers from the nearest index point, never past `limit` bytes.
    /// Returns its position and header, or `None` when the offset lies beyond.
    pub fn locate(&self, offset: i64, limit: u64) -> Result<Option<ScannedBatch>> {
        let rel = (offset - self.base_offset).clamp(0, u32::MAX as i64) as u32;
        let start = self.index().position_for_offset(rel) as u64;
        self.scan_headers_from(start, limit, |h| h.last_offset() >= offset)
    }

    /// Finds the first batch with a record timestamp that may be >= `ts`.
    pub fn locate_time(&self, ts: i64, limit: u64) -> Result<Option<ScannedBatch>> {
        let start = self.index().position_for_timestamp(ts) as u64;
        self.scan_headers_from(start, limit, |h| h.max_timestamp >= ts)
    }

    /// Calls `f` with every batch header in the segment, reading nothing else.
    pub fn for_each_header(&self, mut f: impl FnMut(&BatchHeader)) -> Result<()> {
        self.scan_headers_from(0, self.written(), |h| {
            f(h);
            false
        })
        .map(|_| ())
    }

    fn scan_headers_from(
        &self,
        mut pos: u64,
        limit: u64,
        mut found: impl FnMut(&BatchHeader) -> bool,
    ) -> Result<Option<ScannedBatch>> {
        let mut buf = [0u8; HEADER_LEN];
        while pos + HEADER_LEN as u64 <= limit {
            self.read_at(pos, &mut buf)?;
            let header = BatchHeader::parse(&buf).map_err(|e| LogError::CorruptSegment {
                file: self.log_path.clone(),
                position: pos,
                reason: e.to_string(),
            })?;
            if found(&header) {
                return Ok(Some(ScannedBatch {
                    position: pos,
                    header,
                }));
            }
            pos += header.total_len() as u64;
        }
        Ok(None)
    }

    /// Writes the index files whole: temp files, fsync, rename. A crash
    /// leaves either the old files or the new ones, and both are checked on
    /// load anyway.
    pub fn persist_index(&self) -> Result<()> {
        let dir = self.log_path.parent().unwrap_or(Path::new("."));
        let stem = file_stem(self.base_offset);
        let (offsets, times) = self.index().encode();
        for (ext, data) in [("index", offsets), ("timeindex", times)] {
            let path = dir.join(format!("{stem}.{ext}"));
            let tmp = dir.join(format!("{stem}.{ext}.tmp"));
            fs::write(&tmp, &data).map_err(|e| LogError::io("writing index", &tmp, e))?;
            File::open(&tmp)
                .and_then(|f| f.sync_all())
                .map_err(|e| LogError::io("syncing index", &tmp, e))?;
            fs::rename(&tmp, &path).map_err(|e| LogError::io("renaming index", &path, e))?;
        }
        Ok(())
    }

    /// When the `.log` file was last modified.
    pub fn modified(&self) -> Option<std::time::SystemTime> {
        self.file.metadata().and_then(|m| m.modified()).ok()
    }

    /// Removes one of the segment's index files, if it is there.
    fn remove_file_of(&self, ext: &str) -> Result<()> {
        let path = self.log_path.with_extension(ext);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(LogError::io("deleting segment file", &path, e)),
        }
    }

    /// Replaces the files of `group` (consecutive sealed segments) with the
    /// cleaned copy written beside the first, and returns the segment over
    /// the new files (with no aborted-transaction entries: see below).
    ///
    /// Crash-safe as Kafka's swap: the cleaned log is renamed to
    /// `<first>.log.swap` (the commit point), then the group's old files are
    /// deleted, then the swap becomes `<first>.log`. Before the commit point
    /// a crash leaves the old segments (the `.cleaned` files are leftovers);
    /// after it, opening the partition finishes the swap ([`finish_swaps`]).
    /// Readers holding old segments keep reading their files.
    pub fn install_cleaned(
        group: &[std::sync::Arc<Segment>],
        cleaned: &super::cleaner::Cleaned,
        index_interval: u32,
        now_ms: i64,
    ) -> Result<Segment> {
        let first = &group[0];
        let dir = first
            .log_path
            .parent()
            .unwrap_or(Path::new("."))
            .to_path_buf();
        let stem = file_stem(first.base_offset);
        let swap = dir.join(format!("{stem}.log{SWAP_SUFFIX}"));
        fail::fail_point!("cleaner::before_rename", |_| Err(LogError::io(
            "renaming cleaned segment",
            &swap,
            io::Error::other("injected failure")
        )));
        fs::rename(&cleaned.log, &swap)
            .map_err(|e| LogError::io("renaming cleaned segment", &swap, e))?;
        super::partition::sync_dir(&dir)?;
        fail::fail_point!("cleaner::after_rename", |_| Err(LogError::io(
            "deleting cleaned segments",
            &swap,
            io::Error::other("injected failure")
        )));
        for (i, seg) in group.iter().enumerate() {
            seg.remove_file_of("index")?;
            seg.remove_file_of("timeindex")?;
            // A cleaned segment holds no aborted data (the cleaner drops
            // it), so it needs no aborted-transaction index; an old entry
            // whose ABORT marker went would leave read_committed readers
            // skipping the producer's later batches.
            seg.remove_file_of("txnindex")?;
            if i > 0 {
                seg.remove_file_of("log")?;
            }
        }
        fs::rename(&swap, &first.log_path)
            .map_err(|e| LogError::io("renaming cleaned segment", &first.log_path, e))?;
        for (from, ext) in [(&cleaned.index, "index"), (&cleaned.timeindex, "timeindex")] {
            let to = dir.join(format!("{stem}.{ext}"));
            fs::rename(from, &to).map_err(|e| LogError::io("renaming cleaned index", &to, e))?;
        }
        super::partition::sync_dir(&dir)?;
        let (seg, _, _) = Segment::open(&dir, first.base_offset, index_interval, None, now_ms)?;
        Ok(seg)
    }

    /// Removes the segment's files. Readers holding this segment keep reading
    /// through their open handle until they drop it.
    pub fn delete_files(&self) -> Result<()> {
        for ext in ["index", "timeindex", "txnindex", "log"] {
            self.remove_file_of(ext)?;
        }
        Ok(())
    }
}

fn load_index_files(
    dir: &Path,
    stem: &str,
    log_size: u64,
) -> std::result::Result<SparseIndex, String> {
    let read = |ext: &str| {
        let path = dir.join(format!("{stem}.{ext}"));
        fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))
    };
    let offsets = read("index")?;
    let times = read("timeindex")?;
    SparseIndex::decode(&offsets, &times, log_size)
}

/// Sequential reads through `pread`, so scanning never moves a shared cursor.
struct FileReader<'a> {
    file: &'a File,
    pos: u64,
}

impl Read for FileReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl io::Seek for FileReader<'_> {
    fn seek(&mut self, pos: io::SeekFrom) -> io::Result<u64> {
        match pos {
            io::SeekFrom::Current(d) => self.pos = self.pos.wrapping_add_signed(d),
            io::SeekFrom::Start(p) => self.pos = p,
            io::SeekFrom::End(_) => return Err(io::Error::other("seek from end unsupported")),
        }
        Ok(self.pos)
    }
}

/// Opens a segment's `.log` for reading and appending: the file, its
/// length and its modification time (`now_ms` if the file system has none).
fn open_log_file(log_path: &Path, now_ms: i64) -> Result<(File, u64, i64)> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(log_path)
        .map_err(|e| LogError::io("opening segment", log_path, e))?;
    let meta = file
        .metadata()
        .map_err(|e| LogError::io("inspecting segment", log_path, e))?;
    let mtime_ms = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(now_ms, |d| d.as_millis() as i64);
    Ok((file, meta.len(), mtime_ms))
}

/// The segment's index files, or an empty index to rebuild from the batch
/// headers when they are missing or damaged (then `true`, unless the
/// segment is empty and there is nothing to rebuild).
fn load_or_rebuild_index(
    dir: &Path,
    stem: &str,
    log_path: &Path,
    file_len: u64,
) -> (SparseIndex, bool) {
    match load_index_files(dir, stem, file_len) {
        Ok(index) => (index, false),
        Err(why) => {
            if file_len > 0 {
                tracing::info!(segment = %log_path.display(), "rebuilding index: {why}");
            }
            (SparseIndex::default(), file_len > 0)
        }
    }
}
