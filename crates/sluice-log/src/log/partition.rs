//! One partition: an ordered list of segments in a directory, with the
//! partition's offsets (log start, high-water mark) and its append path.
//!
//! Owns offset assignment, rolling, flushing, reading, time lookup,
//! retention and recovery of its directory, and the partition's side of
//! Kafka transactions: its open transactions and last stable offset, the
//! markers the transaction coordinator appends, the aborted transactions a
//! read_committed reader must skip ([`super::txn`]). It never decodes
//! records except to answer a timestamp lookup inside one batch and to read
//! a marker's type.
//!
//! Transaction state survives restarts as Kafka's does: `txn-snapshot`
//! holds the open transactions at an offset below which everything is on
//! disk (written at creation, at each roll and at a clean close), each
//! sealed segment's `.txnindex` its aborted transactions, and opening
//! replays the batch headers after the snapshot to rebuild the rest.
//!
//! Locking: appends take the partition's `writer` mutex (so partitions never
//! contend with each other); fsyncs take `flush_lock`, after the writer lock
//! is released, so appends that arrive during an fsync are covered by the
//! next one (group commit). Readers take no partition lock beyond a brief
//! read of the segment list and only see bytes below `visible`.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use kafka_protocol::records::RecordBatchDecoder;

use super::batch::{self, ValidBatch};
use super::cleaner::{self, AbortedRanges, CleanOutcome, CleanerOptions, KeyMap, Rules, Throttle};
use super::config::{FlushPolicy, TopicConfig};
use super::error::{LogError, Result};
use super::index::IndexBuilder;
use super::records;
use super::segment::{self, Segment, TailRecovery};
use super::txn::{self, AbortedTxn, ControlType, OngoingTxns};
use crate::common::{mutex, now_ms, read_lock, write_lock};

pub(crate) type SharedConfig = Arc<RwLock<Arc<TopicConfig>>>;

/// What an append stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendInfo {
    pub base_offset: i64,
    pub last_offset: i64,
    pub record_count: i64,
    pub log_start_offset: i64,
}

/// What a read returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadInfo {
    /// Bytes of whole batches appended to the caller's buffer.
    pub bytes: usize,
    /// Offset after the last returned batch (the next offset to ask for).
    pub next_offset: i64,
    pub high_watermark: i64,
    pub log_start_offset: i64,
}

/// What retention removed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionOutcome {
    pub segments_deleted: usize,
    pub bytes_deleted: u64,
    pub log_start_offset: i64,
}

/// A snapshot of a partition for `topic describe`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    pub partition: u32,
    pub log_start_offset: i64,
    pub high_watermark: i64,
    pub segments: usize,
    pub size_bytes: u64,
}

struct Writer {
    active: Arc<Segment>,
    next_offset: i64,
    builder: IndexBuilder,
    /// Open transactions: producer id → first offset.
    txns: OngoingTxns,
}

/// No open transaction: the last stable offset is the high-water mark.
const NO_OPEN_TXN: i64 = i64::MAX;

pub struct Partition {
    topic: String,
    id: u32,
    dir: PathBuf,
    config: SharedConfig,
    segments: RwLock<Vec<Arc<Segment>>>,
    log_start: AtomicI64,
    high_watermark: AtomicI64,
    /// Offsets below this are known to be on disk.
    flushed_offset: AtomicI64,
    /// Wall-clock ms of the oldest unflushed append (0 when all is flushed).
    dirty_since_ms: AtomicI64,
    writer: Mutex<Writer>,
    /// First offset of the oldest open transaction ([`NO_OPEN_TXN`] if
    /// none): what readers need of the writer's transaction state.
    first_unstable: AtomicI64,
    flush_lock: Mutex<()>,
    offline: RwLock<Option<String>>,
    deleted: AtomicBool,
    /// The log cleaner's progress: offsets below this were compacted
    /// (persisted in [`CLEANER_CHECKPOINT`]).
    first_dirty: AtomicI64,
    /// One cleaning pass at a time.
    cleaning: Mutex<()>,
    /// (active segment, its length) when this partition was opened from a
    /// clean stop with nothing to recover: while the active segment is
    /// still that one at that length, its files on disk are current and a
    /// clean close has nothing to write. A job that only reads a topic
    /// closed it with five fsyncs per partition.
    opened_clean: Option<(i64, u64)>,
}

pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| LogError::io("syncing directory", dir, e))
}

fn store_txn_snapshot(dir: &Path, offset: i64, ongoing: &OngoingTxns) -> Result<()> {
    super::write_atomically(
        &dir.join(txn::SNAPSHOT),
        &txn::encode_snapshot(offset, ongoing),
    )
}

/// Rebuilds the open transactions and the aborted-transaction indexes of a
/// partition being opened: each segment's `.txnindex`, then the batch
/// headers from the snapshot's offset to the end of the log.
fn recover_transactions(dir: &Path, segments: &[Arc<Segment>]) -> Result<OngoingTxns> {
    let (Some(first), Some(last)) = (segments.first(), segments.last()) else {
        return Ok(OngoingTxns::default());
    };
    let end = last.next_offset();
    let (from, mut ongoing) = match txn::read_snapshot(dir) {
        Some((offset, ongoing)) if offset <= end && offset >= first.base_offset => {
            (offset, ongoing)
        }
        Some((offset, _)) => {
            tracing::warn!(
                partition = %dir.display(),
                "transaction snapshot at offset {offset} lies outside the log ({}..{end}); replaying the whole log",
                first.base_offset
            );
            (first.base_offset, OngoingTxns::default())
        }
        // Written before transactions existed: only the active segment
        // can matter (the broker refused transactional batches then).
        None => (last.base_offset, OngoingTxns::default()),
    };
    for seg in segments {
        seg.load_txn_index()?;
        seg.drop_aborted_from(from);
    }
    let mut header = [0u8; batch::HEADER_LEN];
    let mut control = Vec::new();
    let start = segments
        .partition_point(|s| s.base_offset <= from)
        .saturating_sub(1);
    for seg in &segments[start..] {
        let limit = seg.written();
        let Some(found) = seg.locate(from, limit)? else {
            continue;
        };
        let mut pos = found.position;
        let mut touched = false;
        while pos + batch::HEADER_LEN as u64 <= limit {
            seg.read_at(pos, &mut header)?;
            let h = batch::BatchHeader::parse(&header).map_err(|e| LogError::CorruptSegment {
                file: seg.log_path().to_path_buf(),
                position: pos,
                reason: e.to_string(),
            })?;
            if h.is_transactional() && h.base_offset >= from {
                let bytes: &[u8] = if h.is_control() {
                    control.resize(h.total_len(), 0);
                    seg.read_at(pos, &mut control)?;
                    &control
                } else {
                    &header
                };
                if let Some(aborted) = ongoing.on_batch(&h, bytes, h.base_offset) {
                    let lso = ongoing.first_offset().unwrap_or(h.base_offset + 1);
                    seg.add_aborted(aborted, lso.min(h.base_offset + 1));
                    touched = true;
                }
            }
            pos += h.total_len() as u64;
        }
        if touched && !Arc::ptr_eq(seg, last) {
            seg.persist_txn_index()?;
        }
    }
    if !ongoing.list().is_empty() {
        tracing::info!(
            partition = %dir.display(),
            open = ongoing.list().len(),
            "open transactions recovered"
        );
    }
    Ok(ongoing)
}

/// Recovery-point file: the last (segment, byte position) known to be on disk.
/// Recovery validates batches after it. Format: `v1 <segment base> <position>`.
const RECOVERY_POINT: &str = "recovery-point";

/// Cleaner checkpoint: `v1 <first dirty offset>`. Missing means nothing
/// was cleaned yet (the first pass reads the whole log).
const CLEANER_CHECKPOINT: &str = "cleaner-checkpoint";

/// The offset in a `v1 <offset>` file of the partition; 0 when it is
/// missing or unreadable (both files mean "nothing yet" then).
fn read_offset_file(dir: &Path, name: &str) -> i64 {
    fs::read_to_string(dir.join(name))
        .ok()
        .and_then(|text| text.trim().strip_prefix("v1 ")?.parse().ok())
        .unwrap_or(0)
}

/// Log start offset set by DeleteRecords: `v1 <offset>`. Missing means the
/// first segment's base offset is the log start.
const LOG_START_OFFSET: &str = "log-start-offset";

fn read_recovery_point(dir: &Path) -> Option<(i64, u64)> {
    let text = fs::read_to_string(dir.join(RECOVERY_POINT)).ok()?;
    let mut parts = text.split_whitespace();
    if parts.next()? != "v1" {
        return None;
    }
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

impl Partition {
    /// Creates the directory and first segment of a new partition.
    pub(crate) fn create(topic: &str, id: u32, dir: PathBuf, config: SharedConfig) -> Result<Self> {
        fs::create_dir_all(&dir)
            .map_err(|e| LogError::io("creating partition directory", &dir, e))?;
        let seg = Arc::new(Segment::create(&dir, 0, now_ms())?);
        store_txn_snapshot(&dir, 0, &OngoingTxns::default())?;
        sync_dir(&dir)?;
        let interval = read_lock(&config).index_interval_bytes;
        Ok(Self::assemble(
            topic,
            id,
            dir,
            config,
            vec![seg],
            IndexBuilder::new(interval),
            OngoingTxns::default(),
        ))
    }

    /// Opens an existing partition directory, recovering its last segment.
    pub(crate) fn open(
        topic: &str,
        id: u32,
        dir: PathBuf,
        config: SharedConfig,
    ) -> Result<(Self, Option<TailRecovery>)> {
        let interval = read_lock(&config).index_interval_bytes;
        if !dir.exists() {
            tracing::warn!(dir = %dir.display(), "partition directory missing; starting it empty");
            return Ok((Self::create(topic, id, dir, config)?, None));
        }
        segment::finish_swaps(&dir)?;
        let mut bases = Vec::new();
        let entries = fs::read_dir(&dir).map_err(|e| LogError::io("listing partition", &dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| LogError::io("listing partition", &dir, e))?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Some(base) = segment::parse_log_file_name(&name) {
                bases.push(base);
            } else if name.ends_with(".tmp") || name.ends_with(cleaner::CLEANED_SUFFIX) {
                // An index or metadata write, or a cleaning pass, that
                // crashed midway: the files they would replace are whole.
                let _ = fs::remove_file(entry.path());
            }
        }
        bases.sort_unstable();
        if bases.is_empty() {
            return Ok((Self::create(topic, id, dir, config)?, None));
        }
        let now = now_ms();
        let hint = read_recovery_point(&dir);
        let last = *bases.last().expect("non-empty");
        let mut segments = Vec::with_capacity(bases.len());
        let mut tail = None;
        let mut builder = IndexBuilder::new(interval);
        for &base in &bases {
            let validate_from = (base == last).then_some(match hint {
                Some((hint_base, pos)) if hint_base == base => pos,
                _ => 0,
            });
            let (seg, recovery, b) = Segment::open(&dir, base, interval, validate_from, now)?;
            // Compaction leaves gaps between segments; overlaps are damage.
            if let Some(prev) = segments.last().map(|s: &Arc<Segment>| s.next_offset())
                && prev > base
            {
                tracing::warn!(
                    partition = %dir.display(),
                    "segment {base} overlaps the previous segment, which ends at {prev}"
                );
            }
            if base == last {
                tail = Some(recovery);
                builder = b;
            }
            segments.push(Arc::new(seg));
        }
        let txns = recover_transactions(&dir, &segments)?;
        let end = segments.last().map(|s| s.written());
        let opened_clean = match (&tail, hint, end) {
            (Some(t), Some((base, pos)), Some(end))
                if base == last && pos == end && t.truncated_bytes == 0 && !t.index_rebuilt =>
            {
                Some((base, pos))
            }
            _ => None,
        };
        let mut partition = Self::assemble(topic, id, dir, config, segments, builder, txns);
        partition.opened_clean = opened_clean;
        Ok((partition, tail))
    }

    fn assemble(
        topic: &str,
        id: u32,
        dir: PathBuf,
        config: SharedConfig,
        segments: Vec<Arc<Segment>>,
        builder: IndexBuilder,
        txns: OngoingTxns,
    ) -> Self {
        let active = segments
            .last()
            .expect("a partition always has a segment")
            .clone();
        let next = active.next_offset();
        // DeleteRecords may have moved the log start inside a segment.
        let start = segments[0]
            .base_offset
            .max(read_offset_file(&dir, LOG_START_OFFSET).min(next));
        let first_dirty = read_offset_file(&dir, CLEANER_CHECKPOINT);
        Partition {
            topic: topic.to_string(),
            id,
            dir,
            config,
            log_start: AtomicI64::new(start),
            high_watermark: AtomicI64::new(next),
            flushed_offset: AtomicI64::new(next),
            dirty_since_ms: AtomicI64::new(0),
            segments: RwLock::new(segments),
            first_unstable: AtomicI64::new(txns.first_offset().unwrap_or(NO_OPEN_TXN)),
            writer: Mutex::new(Writer {
                active,
                next_offset: next,
                builder,
                txns,
            }),
            flush_lock: Mutex::new(()),
            offline: RwLock::new(None),
            deleted: AtomicBool::new(false),
            first_dirty: AtomicI64::new(first_dirty),
            cleaning: Mutex::new(()),
            opened_clean: None,
        }
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// First offset still in the log.
    pub fn log_start_offset(&self) -> i64 {
        self.log_start.load(Ordering::Acquire)
    }

    /// Offset after the last record readers may see (Kafka's high-water mark,
    /// the "log end offset" of a single-replica partition).
    pub fn high_watermark(&self) -> i64 {
        self.high_watermark.load(Ordering::Acquire)
    }

    /// Kafka's last stable offset: the first offset of the oldest open
    /// transaction, or the high-water mark. read_committed readers stop here.
    pub fn last_stable_offset(&self) -> i64 {
        let hw = self.high_watermark();
        self.first_unstable
            .load(Ordering::Acquire)
            .min(hw)
            .max(self.log_start_offset().min(hw))
    }

    /// (producer id, first offset) of every open transaction, oldest first.
    pub fn ongoing_transactions(&self) -> Vec<(i64, i64)> {
        mutex(&self.writer).txns.list()
    }

    /// The aborted transactions a read of `[from, upto)` overlaps
    /// (`last_offset >= from`, `first_offset < upto`), by first offset:
    /// what a read_committed fetch lists. Only the segment holding `from`
    /// and later ones can hold such markers.
    pub fn aborted_transactions(&self, from: i64, upto: i64) -> Vec<AbortedTxn> {
        let segments = self.segments_snapshot();
        let first = segments
            .partition_point(|s| s.base_offset <= from)
            .saturating_sub(1);
        let mut out = Vec::new();
        // A transaction's marker may lie far past `upto`: every later
        // segment is asked (their indexes are small and in memory).
        for seg in &segments[first..] {
            seg.aborted_overlapping(from, upto, &mut out);
        }
        out.sort_by_key(|a| (a.first_offset, a.producer_id));
        out
    }

    fn config(&self) -> Arc<TopicConfig> {
        read_lock(&self.config).clone()
    }

    /// Base offsets of the segments, oldest first (the last is the active one).
    pub fn segment_bases(&self) -> Vec<i64> {
        read_lock(&self.segments)
            .iter()
            .map(|s| s.base_offset)
            .collect()
    }

    fn segments_snapshot(&self) -> Vec<Arc<Segment>> {
        read_lock(&self.segments).clone()
    }

    fn check_writable(&self) -> Result<()> {
        if self.deleted.load(Ordering::Acquire) {
            return Err(LogError::UnknownTopic(self.topic.clone()));
        }
        if let Some(reason) = read_lock(&self.offline).as_ref() {
            return Err(LogError::PartitionOffline {
                topic: self.topic.clone(),
                partition: self.id,
                reason: reason.clone(),
            });
        }
        Ok(())
    }

    fn take_offline(&self, err: &LogError) {
        tracing::error!(topic = %self.topic, partition = self.id, "taking partition offline: {err}");
        *write_lock(&self.offline) = Some(err.to_string());
    }

    pub(crate) fn mark_deleted(&self) {
        self.deleted.store(true, Ordering::Release);
    }

    /// Appends one or more whole RecordBatch v2 batches (a producer's records
    /// blob). The store assigns consecutive offsets by rewriting each batch's
    /// base offset in `records`, then writes the bytes as they are. Nothing is
    /// stored unless every batch passes validation.
    pub fn append(&self, records: &mut [u8]) -> Result<AppendInfo> {
        self.append_at(records, now_ms())
    }

    /// [`Partition::append`] with an explicit wall clock (for time-based rolls).
    pub fn append_at(&self, records: &mut [u8], now_ms: i64) -> Result<AppendInfo> {
        self.check_writable()?;
        let config = self.config();
        // Validation reads every byte (CRC-32C), so it runs before the writer
        // lock: producers to one partition only serialize on the write itself.
        let mut batches = Vec::with_capacity(1);
        batch::validate_for_append(records, config.max_message_bytes as usize, &mut batches)
            .and_then(|()| match batches.iter().find(|b| b.header.is_control()) {
                // Markers come only from the transaction coordinator.
                Some(b) => Err(batch::BatchError::ControlBatch(b.header.producer_id)),
                None => Ok(()),
            })
            .and_then(|()| {
                if config.cleanup_policy.compact {
                    require_keys(records, &batches)
                } else {
                    Ok(())
                }
            })
            .map_err(|source| LogError::InvalidBatch {
                topic: self.topic.clone(),
                partition: self.id,
                source,
            })?;
        let mut w = mutex(&self.writer);
        let (info, active, needs_sync) =
            self.append_locked(&mut w, records, &batches, &config, now_ms)?;
        drop(w);
        if needs_sync {
            self.sync_segment(&active)?;
        }
        Ok(info)
    }

    /// Appends a COMMIT or ABORT marker ending `producer_id`'s open
    /// transaction; `None` (nothing appended) when it has none here, so the
    /// coordinator can repeat markers after a crash without doubling them.
    /// Durable only after [`Partition::flush`], like any append.
    pub fn append_marker(
        &self,
        producer_id: i64,
        producer_epoch: i16,
        control: ControlType,
        coordinator_epoch: i32,
    ) -> Result<Option<AppendInfo>> {
        self.check_writable()?;
        let config = self.config();
        let now = now_ms();
        let mut records =
            txn::encode_control_batch(producer_id, producer_epoch, control, coordinator_epoch, now);
        let mut batches = Vec::with_capacity(1);
        batch::validate_for_append(&records, usize::MAX, &mut batches).map_err(|source| {
            LogError::InvalidBatch {
                topic: self.topic.clone(),
                partition: self.id,
                source,
            }
        })?;
        let mut w = mutex(&self.writer);
        if !w.txns.contains(producer_id) {
            return Ok(None);
        }
        let (info, active, needs_sync) =
            self.append_locked(&mut w, &mut records, &batches, &config, now)?;
        drop(w);
        if needs_sync {
            self.sync_segment(&active)?;
        }
        Ok(Some(info))
    }

    fn append_locked(
        &self,
        w: &mut Writer,
        records: &mut [u8],
        batches: &[ValidBatch],
        config: &TopicConfig,
        now_ms: i64,
    ) -> Result<(AppendInfo, Arc<Segment>, bool)> {
        let offsets: i64 = batches.iter().map(|b| b.header.offset_count()).sum();
        let len = records.len() as u64;
        let active = &w.active;
        let full = active.written() + len > config.segment_bytes;
        let aged = now_ms - active.created_ms() >= config.segment_ms as i64;
        // Relative offsets in the index are 32-bit.
        let offsets_overflow = w.next_offset + offsets - active.base_offset > u32::MAX as i64;
        if active.written() > 0 && (full || aged || offsets_overflow) {
            self.roll(w, now_ms)?;
        }
        let base_offset = w.next_offset;
        let mut next = base_offset;
        let mut max_ts = i64::MIN;
        for b in batches {
            batch::set_base_offset(&mut records[b.start..], next);
            next += b.header.offset_count();
            max_ts = max_ts.max(b.header.max_timestamp);
        }
        let active = w.active.clone();
        let pos = match active.append(records) {
            Ok(pos) => pos,
            Err((err, rolled_back)) => {
                if !rolled_back {
                    self.take_offline(&err);
                }
                return Err(err);
            }
        };
        {
            let mut index = active.index_mut();
            let mut offset = base_offset;
            for b in batches {
                w.builder.on_batch(
                    &mut index,
                    (offset - active.base_offset) as u32,
                    (pos + b.start as u64) as u32,
                    b.header.total_len() as u64,
                    b.header.max_timestamp,
                );
                offset += b.header.offset_count();
            }
        }
        active.on_appended(next, max_ts);
        w.next_offset = next;
        self.follow_transactions(w, records, batches, base_offset);
        let policy = config.flush_policy();
        let needs_sync = match policy {
            FlushPolicy::EveryAppend => true,
            FlushPolicy::Messages(n) => {
                (next - self.flushed_offset.load(Ordering::Acquire)) as u64 >= n
            }
            FlushPolicy::Interval(_) | FlushPolicy::Os => false,
        };
        if policy != FlushPolicy::EveryAppend {
            // Under every other policy consumers may read unflushed data, as
            // in Kafka; only "every append" waits for the disk first.
            active.publish(active.written());
            self.high_watermark.fetch_max(next, Ordering::AcqRel);
        }
        let _ = self.dirty_since_ms.compare_exchange(
            0,
            now_ms.max(1),
            Ordering::AcqRel,
            Ordering::Acquire,
        );
        let info = AppendInfo {
            base_offset,
            last_offset: next - 1,
            record_count: batches.iter().map(|b| b.header.records_count as i64).sum(),
            log_start_offset: self.log_start_offset(),
        };
        Ok((info, active, needs_sync))
    }

    /// Updates the open transactions after an append: transactional batches
    /// open one for their producer, markers end it (an ABORT is indexed).
    fn follow_transactions(
        &self,
        w: &mut Writer,
        records: &[u8],
        batches: &[ValidBatch],
        base_offset: i64,
    ) {
        if !batches.iter().any(|b| b.header.is_transactional()) {
            return;
        }
        let mut offset = base_offset;
        for b in batches {
            let bytes = &records[b.start..b.start + b.header.total_len()];
            if let Some(aborted) = w.txns.on_batch(&b.header, bytes, offset) {
                let lso = w.txns.first_offset().unwrap_or(offset + 1).min(offset + 1);
                w.active.add_aborted(aborted, lso);
            }
            offset += b.header.offset_count();
        }
        self.first_unstable.store(
            w.txns.first_offset().unwrap_or(NO_OPEN_TXN),
            Ordering::Release,
        );
    }

    /// fsyncs `seg` up to what has been written, then publishes it. Appends
    /// that land while another thread syncs are covered by one later fsync.
    fn sync_segment(&self, seg: &Arc<Segment>) -> Result<()> {
        let _flush = mutex(&self.flush_lock);
        // After a failed fsync, a later one that succeeds proves nothing about
        // the pages the kernel dropped: never publish or checkpoint them.
        self.check_writable()?;
        let (still_active, next) = {
            let w = mutex(&self.writer);
            (Arc::ptr_eq(&w.active, seg), w.next_offset)
        };
        if !still_active {
            // A roll synced and published the whole segment already.
            return Ok(());
        }
        let upto = seg.written();
        if seg.flushed() >= upto && seg.visible() >= upto {
            return Ok(());
        }
        match seg.sync() {
            Ok(upto) => {
                seg.publish(upto);
                self.high_watermark.fetch_max(next, Ordering::AcqRel);
                self.flushed_offset.fetch_max(next, Ordering::AcqRel);
                if self.flushed_offset.load(Ordering::Acquire) >= mutex(&self.writer).next_offset {
                    self.dirty_since_ms.store(0, Ordering::Release);
                }
                Ok(())
            }
            Err(err) => {
                // After a failed fsync the page cache can no longer be
                // trusted to reach the disk (PostgreSQL's "fsyncgate"): stop
                // acknowledging writes until recovery has run.
                self.take_offline(&err);
                Err(err)
            }
        }
    }

    /// Forces everything appended so far to disk.
    pub fn flush(&self) -> Result<()> {
        let active = mutex(&self.writer).active.clone();
        self.sync_segment(&active)
    }

    /// Flushes if `flush.ms` says the oldest unflushed data is due.
    pub(crate) fn flush_if_due(&self, now_ms: i64) -> Result<()> {
        let since = self.dirty_since_ms.load(Ordering::Acquire);
        if since == 0 || self.check_writable().is_err() {
            // Offline partitions were reported once when they went offline.
            return Ok(());
        }
        if let FlushPolicy::Interval(d) = self.config().flush_policy()
            && now_ms - since >= d.as_millis() as i64
        {
            return self.flush();
        }
        Ok(())
    }

    /// Seals the active segment (fsynced, fully visible, index persisted) and
    /// starts a new one at the next offset.
    fn roll(&self, w: &mut Writer, now_ms: i64) -> Result<()> {
        let old = w.active.clone();
        let upto = old.sync().inspect_err(|e| self.take_offline(e))?;
        old.publish(upto);
        self.high_watermark
            .fetch_max(w.next_offset, Ordering::AcqRel);
        self.flushed_offset
            .fetch_max(w.next_offset, Ordering::AcqRel);
        if let Err(e) = old.persist_index() {
            // The index is rebuilt from the log when missing: not fatal.
            tracing::warn!(
                "could not persist index of {}: {e}",
                old.log_path().display()
            );
        }
        // The sealed segment's aborted transactions, and the open ones at
        // the new segment's start, are what recovery starts from: both must
        // be on disk before anything is appended past them.
        old.persist_txn_index()
            .inspect_err(|e| self.take_offline(e))?;
        store_txn_snapshot(&self.dir, w.next_offset, &w.txns)?;
        let seg = Arc::new(Segment::create(&self.dir, w.next_offset, now_ms)?);
        sync_dir(&self.dir)?;
        let interval = self.config().index_interval_bytes;
        write_lock(&self.segments).push(seg.clone());
        w.active = seg;
        w.builder = IndexBuilder::new(interval);
        // Everything before the new segment is on disk now.
        self.store_recovery_point(w.active.base_offset, 0)
    }

    /// Reads whole batches starting with the one that contains `offset`,
    /// appending them to `out`: at most `max_bytes`, except that the first
    /// batch is always returned whole so a consumer can make progress (as
    /// Kafka does since KIP-74). Returns nothing at the high-water mark.
    pub fn read_into(&self, offset: i64, max_bytes: usize, out: &mut Vec<u8>) -> Result<ReadInfo> {
        self.read_into_below(offset, self.high_watermark(), max_bytes, out)
    }

    /// [`Partition::read_into`], returning no batch that starts at or after
    /// `upper` (the last stable offset, for read_committed readers); `upper`
    /// above the high-water mark is lowered to it. Offsets up to the
    /// high-water mark stay valid positions.
    pub fn read_into_below(
        &self,
        offset: i64,
        upper: i64,
        max_bytes: usize,
        out: &mut Vec<u8>,
    ) -> Result<ReadInfo> {
        let real_hw = self.high_watermark();
        let hw = upper.min(real_hw);
        let log_start = self.log_start_offset();
        let mut info = ReadInfo {
            bytes: 0,
            next_offset: offset,
            high_watermark: real_hw,
            log_start_offset: log_start,
        };
        if offset < log_start || offset > real_hw {
            return Err(self.out_of_range(offset));
        }
        let segments = self.segments_snapshot();
        let first = segments
            .partition_point(|s| s.base_offset <= offset)
            .saturating_sub(1);
        for seg in &segments[first..] {
            if info.next_offset >= hw || (info.bytes >= max_bytes && info.bytes > 0) {
                break;
            }
            let limit = seg.visible();
            let Some(found) = seg.locate(info.next_offset, limit)? else {
                continue;
            };
            let first_len = found.header.total_len() as u64;
            let budget = (max_bytes - info.bytes.min(max_bytes)) as u64;
            let want = (limit - found.position).min(budget.max(if info.bytes == 0 {
                first_len
            } else {
                0
            }));
            if want == 0 {
                break;
            }
            let start = out.len();
            seg.read_appending(found.position, want as usize, out)?;
            // Keep only whole batches below the high-water mark.
            let mut pos = 0usize;
            let region = &out[start..];
            while region.len() - pos >= batch::HEADER_LEN {
                let header = batch::BatchHeader::parse(&region[pos..]).map_err(|e| {
                    LogError::CorruptSegment {
                        file: seg.log_path().to_path_buf(),
                        position: found.position + pos as u64,
                        reason: e.to_string(),
                    }
                })?;
                let total = header.total_len();
                if header.base_offset >= hw || pos + total > region.len() {
                    break;
                }
                info.next_offset = header.last_offset() + 1;
                pos += total;
            }
            out.truncate(start + pos);
            info.bytes += pos;
            if (pos as u64) < want {
                break;
            }
        }
        Ok(info)
    }

    /// Like [`Partition::read_into`], into a fresh buffer.
    pub fn read(&self, offset: i64, max_bytes: usize) -> Result<(Bytes, ReadInfo)> {
        let mut buf = Vec::new();
        let info = self.read_into(offset, max_bytes, &mut buf)?;
        Ok((Bytes::from(buf), info))
    }

    fn out_of_range(&self, offset: i64) -> LogError {
        LogError::OffsetOutOfRange {
            topic: self.topic.clone(),
            partition: self.id,
            offset,
            log_start: self.log_start_offset(),
            log_end: self.high_watermark(),
        }
    }

    /// Checks that `offset` is within `[log start, high-water mark]`.
    pub fn check_offset(&self, offset: i64) -> Result<()> {
        if offset < self.log_start_offset() || offset > self.high_watermark() {
            return Err(self.out_of_range(offset));
        }
        Ok(())
    }

    /// The segment file and byte position of the batch holding `offset`,
    /// so an error about that batch can name where it lies.
    pub fn locate(&self, offset: i64) -> Result<Option<(PathBuf, u64)>> {
        let segments = self.segments_snapshot();
        let idx = segments
            .partition_point(|s| s.base_offset <= offset)
            .saturating_sub(1);
        let Some(seg) = segments.get(idx) else {
            return Ok(None);
        };
        Ok(seg
            .locate(offset, seg.visible())?
            .map(|b| (seg.log_path().to_path_buf(), b.position)))
    }

    /// The first offset whose record timestamp is at or after `ts` (ms), with
    /// that timestamp, as Kafka's ListOffsets answers; `None` if no record is
    /// that recent.
    pub fn offset_for_time(&self, ts: i64) -> Result<Option<(i64, i64)>> {
        let hw = self.high_watermark();
        for seg in self.segments_snapshot() {
            if seg.max_timestamp() < ts || seg.base_offset >= hw {
                continue;
            }
            let limit = seg.visible();
            let Some(found) = seg.locate_time(ts, limit)? else {
                continue;
            };
            if found.header.base_offset >= hw {
                return Ok(None);
            }
            let mut buf = vec![0u8; found.header.total_len()];
            seg.read_at(found.position, &mut buf)?;
            let mut bytes = Bytes::from(buf);
            // Only this one batch is decoded (and decompressed if need be).
            let exact = RecordBatchDecoder::decode(&mut bytes).ok().and_then(|set| {
                set.records
                    .iter()
                    .find(|r| r.timestamp >= ts)
                    .map(|r| (r.offset, r.timestamp))
            });
            let start = self.log_start_offset();
            return Ok(Some(match exact {
                Some((offset, t)) => (offset.max(start), t),
                None => (
                    found.header.base_offset.max(start),
                    found.header.max_timestamp,
                ),
            }));
        }
        Ok(None)
    }

    /// Deletes whole segments past `retention.ms` (by their newest record)
    /// or beyond `retention.bytes`, oldest first, and advances the log start.
    /// An expired active segment is rolled first so it can go too.
    pub fn enforce_retention(&self, now_ms: i64) -> Result<RetentionOutcome> {
        let config = self.config();
        if !config.cleanup_policy.delete {
            // cleanup.policy=compact: the cleaner alone removes records.
            return Ok(RetentionOutcome {
                log_start_offset: self.log_start_offset(),
                ..Default::default()
            });
        }
        let mut w = mutex(&self.writer);
        let segments = self.segments_snapshot();
        let mut remaining: u64 = segments.iter().map(|s| s.written()).sum();
        let mut delete = 0;
        for (i, seg) in segments.iter().enumerate() {
            // An empty active segment has nothing to expire; an empty sealed
            // one (compaction emptied it) goes with its neighbours.
            let empty_active = seg.written() == 0 && i + 1 == segments.len();
            let by_time = config.retention_ms >= 0
                && seg.retention_timestamp(now_ms) < now_ms - config.retention_ms;
            let by_size = config.retention_bytes >= 0
                && remaining.saturating_sub(seg.written()) >= config.retention_bytes as u64;
            if !(by_time || by_size) || empty_active {
                break;
            }
            remaining -= seg.written();
            delete += 1;
        }
        if delete == 0 {
            return Ok(RetentionOutcome {
                log_start_offset: self.log_start_offset(),
                ..Default::default()
            });
        }
        if delete == segments.len() {
            self.roll(&mut w, now_ms)?;
        }
        let removed: Vec<Arc<Segment>> = {
            let mut list = write_lock(&self.segments);
            let removed = list.drain(..delete).collect();
            self.log_start
                .fetch_max(list[0].base_offset, Ordering::AcqRel);
            removed
        };
        drop(w);
        let mut outcome = RetentionOutcome {
            log_start_offset: self.log_start_offset(),
            ..Default::default()
        };
        for seg in removed {
            outcome.segments_deleted += 1;
            outcome.bytes_deleted += seg.written();
            seg.delete_files()?;
        }
        tracing::info!(
            topic = %self.topic,
            partition = self.id,
            segments = outcome.segments_deleted,
            bytes = outcome.bytes_deleted,
            log_start = outcome.log_start_offset,
            "retention deleted old segments"
        );
        Ok(outcome)
    }

    /// Records how far the active segment is known to be on disk, so that
    /// recovery after a crash validates only what comes after.
    pub(crate) fn write_recovery_point(&self) -> Result<()> {
        let (base, pos) = {
            let w = mutex(&self.writer);
            (w.active.base_offset, w.active.flushed())
        };
        self.store_recovery_point(base, pos)
    }

    fn store_recovery_point(&self, base: i64, pos: u64) -> Result<()> {
        let path = self.dir.join(RECOVERY_POINT);
        let tmp = self.dir.join(format!("{RECOVERY_POINT}.tmp"));
        let write = || -> io::Result<()> {
            fs::write(&tmp, format!("v1 {base} {pos}\n"))?;
            File::open(&tmp)?.sync_all()?;
            fs::rename(&tmp, &path)
        };
        write().map_err(|e| LogError::io("writing recovery point", &path, e))
    }

    /// Clean shutdown: flush, persist the active index, and record that the
    /// whole log is on disk so the next open validates nothing.
    pub(crate) fn close(&self) -> Result<()> {
        let offline = read_lock(&self.offline).is_some();
        if self.deleted.load(Ordering::Acquire) || offline {
            // An offline partition keeps its old recovery point, so the next
            // open validates everything written since.
            return Ok(());
        }
        {
            let w = mutex(&self.writer);
            if self.opened_clean == Some((w.active.base_offset, w.active.written())) {
                return Ok(());
            }
        }
        self.flush()?;
        {
            let w = mutex(&self.writer);
            w.active.persist_index()?;
            w.active.persist_txn_index()?;
            // Everything below the end is on disk: the next open replays
            // nothing.
            store_txn_snapshot(&self.dir, w.next_offset, &w.txns)?;
        }
        self.write_recovery_point()
    }

    /// Kafka's DeleteRecords: makes `before` the log start offset (records
    /// below it are gone for readers at once) and deletes the sealed
    /// segments wholly below it. `None` means the high-water mark (delete
    /// everything). Offsets at or below the log start change nothing; past
    /// the high-water mark they are out of range. Returns the new log start
    /// (Kafka's low watermark), persisted before this returns.
    pub fn delete_records(&self, before: Option<i64>) -> Result<i64> {
        self.check_writable()?;
        let w = mutex(&self.writer);
        let hw = self.high_watermark();
        let before = before.unwrap_or(hw);
        if before < 0 || before > hw {
            return Err(self.out_of_range(before));
        }
        if before <= self.log_start_offset() {
            return Ok(self.log_start_offset());
        }
        super::write_atomically(
            &self.dir.join(LOG_START_OFFSET),
            format!("v1 {before}\n").as_bytes(),
        )?;
        self.log_start.fetch_max(before, Ordering::AcqRel);
        let removed: Vec<Arc<Segment>> = {
            let mut list = write_lock(&self.segments);
            // A sealed segment goes when the next one starts at or below
            // the new log start; the active segment always stays.
            let wholly_below = list
                .windows(2)
                .take_while(|pair| pair[1].base_offset <= before)
                .count();
            list.drain(..wholly_below).collect()
        };
        drop(w);
        for seg in &removed {
            seg.delete_files()?;
        }
        tracing::info!(
            topic = %self.topic,
            partition = self.id,
            log_start = before,
            segments_deleted = removed.len(),
            "records deleted below the new log start"
        );
        Ok(self.log_start_offset())
    }

    /// The log cleaner's progress: offsets below this are compacted.
    pub fn first_dirty_offset(&self) -> i64 {
        self.first_dirty
            .load(Ordering::Acquire)
            .max(self.log_start_offset())
    }

    /// One log-cleaner pass (see [`super::cleaner`]) when the topic's
    /// cleanup policy includes `compact`: keeps the last record of every key
    /// in the sealed segments below the last stable offset and older than
    /// `min.compaction.lag.ms`. Runs when the dirty share of those segments
    /// reaches `min.cleanable.dirty.ratio`, their oldest dirty record is
    /// past `max.compaction.lag.ms`, or `force` says so. `None` when there
    /// was nothing to do.
    pub fn clean(
        &self,
        now_ms: i64,
        options: &CleanerOptions,
        force: bool,
    ) -> Result<Option<CleanOutcome>> {
        let config = self.config();
        if !config.cleanup_policy.compact || self.check_writable().is_err() {
            return Ok(None);
        }
        let _pass = mutex(&self.cleaning);
        let segments = self.segments_snapshot();
        let lso = self.last_stable_offset();
        // Cleanable: sealed segments wholly below the last stable offset and
        // past the compaction lag. `ends[i]` is where segment i's offsets end.
        let ends: Vec<i64> = segments.iter().skip(1).map(|s| s.base_offset).collect();
        let lag_horizon = now_ms.saturating_sub(config.min_compaction_lag_ms);
        let cleanable = ends
            .iter()
            .zip(&segments)
            .take_while(|&(&end, seg)| {
                end <= lso
                    && (config.min_compaction_lag_ms == 0 || seg.max_timestamp() <= lag_horizon)
            })
            .count();
        let first_dirty = self.first_dirty_offset();
        let dirty_from = segments[..cleanable]
            .iter()
            .position(|s| s.base_offset >= first_dirty || s.next_offset() > first_dirty)
            .unwrap_or(cleanable);
        if dirty_from >= cleanable {
            return Ok(None);
        }
        let bytes = |range: &[Arc<Segment>]| range.iter().map(|s| s.written()).sum::<u64>();
        let dirty_bytes = bytes(&segments[dirty_from..cleanable]);
        let total_bytes = bytes(&segments[..cleanable]).max(1);
        let ratio_due = dirty_bytes as f64 / total_bytes as f64 >= config.min_cleanable_dirty_ratio;
        let lag_due = config.max_compaction_lag_ms < i64::MAX
            && segments[dirty_from].max_timestamp() >= 0
            && segments[dirty_from].max_timestamp()
                < now_ms.saturating_sub(config.max_compaction_lag_ms);
        if !(force || ratio_due || lag_due) {
            return Ok(None);
        }
        let mut throttle = Throttle::new(options.io_max_bytes_per_second);
        let aborted = AbortedRanges::new(
            &self.aborted_transactions(segments[0].base_offset, ends[cleanable - 1]),
        );
        // Map whole dirty segments while the map has room (at least one).
        let mut keys = KeyMap::new(options.dedupe_buffer_bytes);
        let mut mapped = dirty_from;
        while mapped < cleanable && (mapped == dirty_from || !keys.is_full()) {
            cleaner::map_segment(&segments[mapped], &aborted, &mut keys, &mut throttle)?;
            mapped += 1;
        }
        let clean_upto = ends[mapped - 1];
        let mut producers_last = std::collections::HashMap::new();
        for seg in &segments[..mapped] {
            seg.for_each_header(|h| {
                if h.producer_id >= 0 && !h.is_control() {
                    producers_last.insert(h.producer_id, h.base_offset);
                }
            })?;
        }
        let rules = Rules {
            keys: &keys,
            aborted: &aborted,
            producers_last: &producers_last,
        };
        let mut outcome = CleanOutcome {
            clean_upto,
            ..Default::default()
        };
        let tombstone_horizon = now_ms.saturating_sub(config.delete_retention_ms);
        let cleaned_range = &segments[..mapped];
        let mut markers = cleaner::Markers::default();
        for group in cleaner::group_by_size(cleaned_range, &ends, config.segment_bytes) {
            if self.deleted.load(Ordering::Acquire) {
                return Ok(None);
            }
            let group = &cleaned_range[group];
            outcome.segments_cleaned += group.len();
            let before: u64 = group.iter().map(|s| s.written()).sum();
            outcome.bytes_before += before;
            let drop_tombstones: Vec<bool> = group
                .iter()
                .map(|seg| {
                    let written_ms = seg
                        .modified()
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map_or(now_ms, |d| d.as_millis() as i64);
                    written_ms < tombstone_horizon
                })
                .collect();
            let Some(cleaned) = cleaner::rewrite_group(
                group,
                &rules,
                &drop_tombstones,
                &mut markers,
                config.index_interval_bytes,
                &mut throttle,
            )?
            else {
                outcome.bytes_after += before;
                continue;
            };
            outcome.records_removed += cleaned.removed;
            outcome.markers_removed += cleaned.markers_dropped;
            let first_of_log = Arc::ptr_eq(&group[0], &segments[0]);
            match self.install_cleaned(group, first_of_log, &cleaned, &config, now_ms)? {
                Installed::Replaced => {
                    outcome.segments_rewritten += 1;
                    outcome.segments_removed += group.len() - 1;
                    outcome.bytes_after += cleaned.bytes;
                }
                Installed::Removed => outcome.segments_removed += group.len(),
                Installed::Gone => {}
            }
        }
        super::write_atomically(
            &self.dir.join(CLEANER_CHECKPOINT),
            format!("v1 {clean_upto}\n").as_bytes(),
        )?;
        self.first_dirty.fetch_max(clean_upto, Ordering::AcqRel);
        tracing::info!(
            topic = %self.topic,
            partition = self.id,
            segments = outcome.segments_cleaned,
            rewritten = outcome.segments_rewritten,
            removed_segments = outcome.segments_removed,
            records_removed = outcome.records_removed,
            markers_removed = outcome.markers_removed,
            bytes_before = outcome.bytes_before,
            bytes_after = outcome.bytes_after,
            clean_upto,
            "log cleaner compacted the partition"
        );
        Ok(Some(outcome))
    }

    /// Puts a cleaned copy in the place of `group`, under the writer lock so
    /// that retention and rolls see the list before or after, never during.
    fn install_cleaned(
        &self,
        group: &[Arc<Segment>],
        first_of_log: bool,
        cleaned: &cleaner::Cleaned,
        config: &TopicConfig,
        now_ms: i64,
    ) -> Result<Installed> {
        let _w = mutex(&self.writer);
        let mut list = write_lock(&self.segments);
        let Some(at) = list.iter().position(|s| Arc::ptr_eq(s, &group[0])) else {
            // Retention deleted it while it was being cleaned.
            cleaned.discard();
            return Ok(Installed::Gone);
        };
        let still_there = list.len() >= at + group.len()
            && group
                .iter()
                .zip(&list[at..])
                .all(|(a, b)| Arc::ptr_eq(a, b));
        if !still_there {
            cleaned.discard();
            return Ok(Installed::Gone);
        }
        if cleaned.bytes == 0 && !first_of_log {
            // Nothing left: the next segment takes over their offsets. The
            // first segment of the log stays, empty, to hold the log start.
            list.drain(at..at + group.len());
            drop(list);
            cleaned.discard();
            for seg in group {
                seg.delete_files()?;
            }
            return Ok(Installed::Removed);
        }
        let new = Segment::install_cleaned(group, cleaned, config.index_interval_bytes, now_ms)
            .inspect_err(|e| {
                cleaned.discard();
                tracing::error!(
                    topic = %self.topic,
                    partition = self.id,
                    "installing a cleaned segment failed; the old ones stay in use until restart, which finishes or forgets the swap: {e}"
                );
            })?;
        list.splice(at..at + group.len(), [Arc::new(new)]);
        Ok(Installed::Replaced)
    }

    pub fn info(&self) -> PartitionInfo {
        let segments = self.segments_snapshot();
        PartitionInfo {
            partition: self.id,
            log_start_offset: self.log_start_offset(),
            high_watermark: self.high_watermark(),
            segments: segments.len(),
            size_bytes: segments.iter().map(|s| s.written()).sum(),
        }
    }
}

/// What became of a segment the cleaner rewrote.
enum Installed {
    Replaced,
    /// It had no batch left and was removed.
    Removed,
    /// Retention removed it during the pass.
    Gone,
}

/// Compacted topics need a key on every record (Kafka refuses keyless
/// records with INVALID_RECORD): the cleaner keeps one record per key.
fn require_keys(
    records: &[u8],
    batches: &[ValidBatch],
) -> std::result::Result<(), batch::BatchError> {
    for b in batches {
        let bytes = &records[b.start..b.start + b.header.total_len()];
        match records::first_keyless(&b.header, bytes) {
            Ok(None) => {}
            Ok(Some(offset_delta)) => {
                return Err(batch::BatchError::KeylessRecord { offset_delta });
            }
            Err(reason) => return Err(batch::BatchError::BadRecords(reason)),
        }
    }
    Ok(())
}
