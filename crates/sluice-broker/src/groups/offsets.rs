//! Durable committed offsets: an append-only journal, `offsets.journal`, in
//! the directory the broker gives the coordinator (`<data-dir>/groups`).
//!
//! Owns that file and its compaction temp file, and the in-memory map of
//! committed offsets rebuilt from it. Never checks group membership or
//! generations (the coordinator does that before calling in) and never
//! acknowledges a commit before it is on disk.
//!
//! # Format
//! ```text
//! file    := MAGIC (8 bytes "SLGROFS1") record*
//! record  := payload_len u32 LE | crc32c(payload) u32 LE | payload
//! payload := 1 group:str count:u32 entry*count    -- one OffsetCommit request
//!          | 2 topic:str                          -- topic deleted: forget its offsets
//! entry   := topic:str partition:i32 offset:i64 leader_epoch:i32 commit_ms:i64 metadata:str
//! str     := len u32 LE | UTF-8 bytes
//! ```
//! One record per OffsetCommit request, fsynced before the request is
//! answered, so a request is either wholly durable or (torn tail) wholly
//! absent after a crash. On open, the first record that is incomplete or
//! fails its CRC ends the journal: it and everything after it are cut.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use sluice_log::common::mutex;

use super::error::GroupError;

const JOURNAL: &str = "offsets.journal";
const JOURNAL_TMP: &str = "offsets.journal.tmp";
const MAGIC: &[u8; 8] = b"SLGROFS1";
const RECORD_HEADER: u64 = 8;
const KIND_COMMIT: u8 = 1;
const KIND_FORGET_TOPIC: u8 = 2;

/// The journal is rewritten with only live entries once it is larger than
/// this and than four times the live size: small journals are not worth the
/// rewrite, large ones must not grow without bound.
pub(crate) const COMPACT_MIN_BYTES: u64 = 16 << 20;

/// What a group committed for one partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CommittedOffset {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: String,
    pub commit_timestamp_ms: i64,
}

/// One partition's commit inside an OffsetCommit request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct OffsetEntry {
    pub topic: String,
    pub partition: i32,
    pub committed: CommittedOffset,
}

type PartitionKey = (String, i32);

/// Committed offsets in memory, plus the size a freshly compacted journal of
/// exactly these entries would have (to decide when compaction pays off).
struct OffsetMap {
    groups: HashMap<String, BTreeMap<PartitionKey, CommittedOffset>>,
    live_bytes: u64,
}

/// Encoded size of one entry inside a commit record.
fn entry_size(topic: &str, c: &CommittedOffset) -> u64 {
    (4 + topic.len() + 4 + 8 + 4 + 8 + 4 + c.metadata.len()) as u64
}

/// Encoded size of a commit record with no entries for `group`.
fn group_overhead(group: &str) -> u64 {
    RECORD_HEADER + (1 + 4 + group.len() + 4) as u64
}

impl OffsetMap {
    fn new() -> OffsetMap {
        OffsetMap {
            groups: HashMap::new(),
            live_bytes: MAGIC.len() as u64,
        }
    }

    fn apply_commit(&mut self, group: &str, entries: Vec<OffsetEntry>) {
        if entries.is_empty() {
            return;
        }
        let offsets = match self.groups.get_mut(group) {
            Some(o) => o,
            None => {
                self.live_bytes += group_overhead(group);
                self.groups.entry(group.to_owned()).or_default()
            }
        };
        for e in entries {
            let topic_len = e.topic.len();
            self.live_bytes += entry_size(&e.topic, &e.committed);
            if let Some(old) = offsets.insert((e.topic, e.partition), e.committed) {
                self.live_bytes -= entry_size("", &old) + topic_len as u64;
            }
        }
    }

    /// Drops every group's offsets for `topic`; returns how many went.
    fn forget_topic(&mut self, topic: &str) -> usize {
        let mut dropped = 0;
        let mut freed = 0;
        self.groups.retain(|group, offsets| {
            offsets.retain(|(t, _), c| {
                if t == topic {
                    dropped += 1;
                    freed += entry_size(t, c);
                    false
                } else {
                    true
                }
            });
            if offsets.is_empty() {
                freed += group_overhead(group);
                false
            } else {
                true
            }
        });
        self.live_bytes -= freed;
        dropped
    }

    fn has_topic(&self, topic: &str) -> bool {
        self.groups
            .values()
            .any(|o| o.keys().any(|(t, _)| t == topic))
    }

    /// The whole map as a compacted journal: magic, then one commit record
    /// per group.
    fn encode_compacted(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.live_bytes as usize);
        out.extend_from_slice(MAGIC);
        for (group, offsets) in &self.groups {
            let payload = encode_commit(
                group,
                offsets
                    .iter()
                    .map(|((t, p), c)| (t.as_str(), *p, c))
                    .collect::<Vec<_>>()
                    .as_slice(),
            );
            frame(&payload, &mut out);
        }
        out
    }
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u32).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

fn encode_commit(group: &str, entries: &[(&str, i32, &CommittedOffset)]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(
        group_overhead(group) as usize
            + entries
                .iter()
                .map(|(t, _, c)| entry_size(t, c) as usize)
                .sum::<usize>(),
    );
    buf.push(KIND_COMMIT);
    put_str(&mut buf, group);
    buf.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for (topic, partition, c) in entries {
        put_str(&mut buf, topic);
        buf.extend_from_slice(&partition.to_le_bytes());
        buf.extend_from_slice(&c.offset.to_le_bytes());
        buf.extend_from_slice(&c.leader_epoch.to_le_bytes());
        buf.extend_from_slice(&c.commit_timestamp_ms.to_le_bytes());
        put_str(&mut buf, &c.metadata);
    }
    buf
}

fn encode_forget_topic(topic: &str) -> Vec<u8> {
    let mut buf = vec![KIND_FORGET_TOPIC];
    put_str(&mut buf, topic);
    buf
}

/// Appends `len | crc | payload` to `out`.
fn frame(payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// A decoded record.
enum Record {
    Commit {
        group: String,
        entries: Vec<OffsetEntry>,
    },
    ForgetTopic(String),
}

/// Bounds-checked little-endian reader over one record's payload.
struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.buf.len() < n {
            return Err(format!(
                "record ends early (needed {n} more bytes, {} left)",
                self.buf.len()
            ));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.array::<1>()?[0])
    }
    fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    fn i32(&mut self) -> Result<i32, String> {
        Ok(i32::from_le_bytes(self.array()?))
    }
    fn i64(&mut self) -> Result<i64, String> {
        Ok(i64::from_le_bytes(self.array()?))
    }
    fn string(&mut self) -> Result<String, String> {
        let len = self.u32()? as usize;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| "string is not UTF-8".to_owned())
    }
}

fn decode_record(payload: &[u8]) -> Result<Record, String> {
    let mut r = Reader { buf: payload };
    let record = match r.u8()? {
        KIND_COMMIT => {
            let group = r.string()?;
            let count = r.u32()? as usize;
            // Each entry takes at least 32 bytes, which bounds a bogus count.
            let mut entries = Vec::with_capacity(count.min(payload.len() / 32));
            for _ in 0..count {
                let topic = r.string()?;
                let partition = r.i32()?;
                let offset = r.i64()?;
                let leader_epoch = r.i32()?;
                let commit_timestamp_ms = r.i64()?;
                let metadata = r.string()?;
                entries.push(OffsetEntry {
                    topic,
                    partition,
                    committed: CommittedOffset {
                        offset,
                        leader_epoch,
                        metadata,
                        commit_timestamp_ms,
                    },
                });
            }
            Record::Commit { group, entries }
        }
        KIND_FORGET_TOPIC => Record::ForgetTopic(r.string()?),
        other => return Err(format!("unknown record kind {other}")),
    };
    if !r.buf.is_empty() {
        return Err(format!("{} unexpected bytes after the record", r.buf.len()));
    }
    Ok(record)
}

/// Result of replaying a journal image.
struct Replay {
    map: OffsetMap,
    /// Bytes of valid journal (magic and whole, CRC-clean records).
    valid_len: u64,
    /// Why the tail after `valid_len` was cut, if it was.
    cut_reason: Option<String>,
}

fn replay(bytes: &[u8], path: &Path) -> Result<Replay, GroupError> {
    let mut map = OffsetMap::new();
    let mut pos = MAGIC.len();
    let mut cut_reason = None;
    while pos < bytes.len() {
        let rest = &bytes[pos..];
        if rest.len() < RECORD_HEADER as usize {
            cut_reason = Some(format!("incomplete record header ({} bytes)", rest.len()));
            break;
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
        // A zero-filled tail (a crash after the file grew but before the data
        // reached the disk) reads as an empty record whose CRC matches.
        if len == 0 {
            cut_reason = Some("zero-length record (zero-filled tail)".to_owned());
            break;
        }
        if len > rest.len() - RECORD_HEADER as usize {
            cut_reason = Some(format!(
                "record of {len} bytes runs past the end of the file ({} bytes left)",
                rest.len() - RECORD_HEADER as usize
            ));
            break;
        }
        let payload = &rest[RECORD_HEADER as usize..RECORD_HEADER as usize + len];
        if crc32c::crc32c(payload) != crc {
            cut_reason = Some("CRC-32C mismatch".to_owned());
            break;
        }
        // A record whose CRC is right but that does not decode was written
        // by something else (another format version): refusing to open is
        // safer than silently dropping acknowledged offsets.
        match decode_record(payload) {
            Ok(Record::Commit { group, entries }) => map.apply_commit(&group, entries),
            Ok(Record::ForgetTopic(topic)) => {
                map.forget_topic(&topic);
            }
            Err(reason) => {
                return Err(GroupError::CorruptJournal {
                    file: path.to_path_buf(),
                    position: pos as u64,
                    reason,
                });
            }
        }
        pos += RECORD_HEADER as usize + len;
    }
    Ok(Replay {
        map,
        valid_len: pos as u64,
        cut_reason,
    })
}

fn sync_dir(dir: &Path) -> Result<(), GroupError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| GroupError::io("syncing directory", dir, e))
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
}

/// The journal file and what is known about it.
struct Journal {
    dir: PathBuf,
    path: PathBuf,
    /// `None` once closed or broken.
    file: Option<File>,
    /// Bytes of valid journal; the file is cut back to this after a failed write.
    len: u64,
    /// Set when a write or fsync failed in a way that leaves the file's
    /// contents uncertain; every later commit is refused until restart.
    broken: Option<String>,
    compact_min: u64,
    /// After a failed compaction, do not retry before the journal reaches
    /// this size (so a persistent problem does not cost a rewrite per commit).
    compact_retry_at: u64,
}

impl Journal {
    fn usable(&mut self) -> Result<&mut File, GroupError> {
        if let Some(reason) = &self.broken {
            return Err(GroupError::JournalBroken {
                file: self.path.clone(),
                reason: reason.clone(),
            });
        }
        let path = self.path.clone();
        self.file.as_mut().ok_or(GroupError::Closed { file: path })
    }

    /// Appends one framed record and fsyncs it.
    fn append(&mut self, record: &[u8]) -> Result<(), GroupError> {
        let old_len = self.len;
        let file = self.usable()?;
        if let Err(e) = file.write_all(record) {
            // Roll back a partial write so the next record starts clean; if
            // even that fails the tail is unknown and the journal is unusable.
            if let Err(e2) = file.set_len(old_len) {
                self.broken = Some(format!(
                    "a failed append ({e}) could not be rolled back ({e2})"
                ));
                self.file = None;
            }
            return Err(GroupError::io("appending to", &self.path, e));
        }
        if let Err(e) = file.sync_data() {
            // After a failed fsync the kernel may have dropped the dirty pages
            // and cleared the error: nothing written since the last good fsync
            // can be trusted, so stop accepting commits.
            self.broken = Some(format!("fsync failed: {e}"));
            self.file = None;
            return Err(GroupError::io("syncing", &self.path, e));
        }
        self.len += record.len() as u64;
        Ok(())
    }

    fn needs_compaction(&self, live_bytes: u64) -> bool {
        self.len > self.compact_min.max(live_bytes.saturating_mul(4))
            && self.len >= self.compact_retry_at
    }

    /// Replaces the journal with `image` (a compacted journal): temp file,
    /// fsync, rename, fsync directory, reopen.
    fn replace_with(&mut self, image: &[u8]) -> Result<(), GroupError> {
        let tmp = self.dir.join(JOURNAL_TMP);
        let write = || -> io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(image)?;
            f.sync_all()
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp);
            return Err(GroupError::io("writing compacted journal", &tmp, e));
        }
        if let Err(e) = fs::rename(&tmp, &self.path) {
            let _ = fs::remove_file(&tmp);
            return Err(GroupError::io(
                "renaming compacted journal onto",
                &self.path,
                e,
            ));
        }
        // From here the new file is the journal: failing to make the rename
        // durable or to reopen leaves us unable to append safely.
        let reopen = sync_dir(&self.dir).and_then(|()| {
            open_append(&self.path).map_err(|e| GroupError::io("reopening", &self.path, e))
        });
        match reopen {
            Ok(f) => {
                self.file = Some(f);
                self.len = image.len() as u64;
                Ok(())
            }
            Err(e) => {
                self.broken = Some(format!("compaction could not be completed: {e}"));
                self.file = None;
                Err(e)
            }
        }
    }
}

/// The committed-offset store: the journal plus the in-memory map it
/// rebuilds. Commits take the journal lock for the write and fsync; readers
/// take only the map lock, so fetches never wait for a disk flush. Lock
/// order: journal, then map.
pub(crate) struct OffsetStore {
    journal: Mutex<Journal>,
    map: Mutex<OffsetMap>,
}

impl OffsetStore {
    pub(crate) fn open(dir: &Path) -> Result<OffsetStore, GroupError> {
        OffsetStore::open_with(dir, COMPACT_MIN_BYTES)
    }

    /// [`OffsetStore::open`] with a different compaction floor (tests use a
    /// small one to exercise compaction).
    pub(crate) fn open_with(dir: &Path, compact_min: u64) -> Result<OffsetStore, GroupError> {
        fs::create_dir_all(dir).map_err(|e| GroupError::io("creating directory", dir, e))?;
        let path = dir.join(JOURNAL);
        // A temp file is only ever a compaction that did not reach its
        // rename; the journal itself is still complete.
        let tmp = dir.join(JOURNAL_TMP);
        if tmp.exists() {
            fs::remove_file(&tmp)
                .map_err(|e| GroupError::io("removing stale compaction file", &tmp, e))?;
        }
        let existed = path.exists();
        let mut file = open_append(&path).map_err(|e| GroupError::io("opening", &path, e))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| GroupError::io("reading", &path, e))?;

        if bytes.len() < MAGIC.len() {
            // Empty or a header torn while the journal was being created:
            // only a prefix of our magic counts as that, anything else is
            // someone else's file.
            if !MAGIC.starts_with(&bytes) {
                return Err(GroupError::NotAJournal {
                    file: path,
                    found: bytes,
                });
            }
            let mut init = || -> io::Result<()> {
                file.set_len(0)?;
                file.write_all(MAGIC)?;
                file.sync_all()
            };
            init().map_err(|e| GroupError::io("initialising", &path, e))?;
            if !existed {
                sync_dir(dir)?;
            }
            bytes = MAGIC.to_vec();
        } else if &bytes[..MAGIC.len()] != MAGIC {
            return Err(GroupError::NotAJournal {
                file: path,
                found: bytes[..MAGIC.len()].to_vec(),
            });
        }

        let replay = replay(&bytes, &path)?;
        if let Some(reason) = &replay.cut_reason {
            tracing::warn!(
                file = %path.display(),
                position = replay.valid_len,
                cut_bytes = bytes.len() as u64 - replay.valid_len,
                reason = %reason,
                "cutting torn or corrupt tail of the committed-offsets journal"
            );
            file.set_len(replay.valid_len)
                .and_then(|()| file.sync_all())
                .map_err(|e| GroupError::io("truncating torn tail of", &path, e))?;
        }
        tracing::debug!(
            file = %path.display(),
            groups = replay.map.groups.len(),
            bytes = replay.valid_len,
            "replayed committed-offsets journal"
        );
        Ok(OffsetStore {
            journal: Mutex::new(Journal {
                dir: dir.to_path_buf(),
                path,
                file: Some(file),
                len: replay.valid_len,
                broken: None,
                compact_min,
                compact_retry_at: 0,
            }),
            map: Mutex::new(replay.map),
        })
    }

    /// Stores one OffsetCommit request's entries: one record, one fsync,
    /// then visible to fetches. On error nothing became visible.
    pub(crate) fn commit(&self, group: &str, entries: Vec<OffsetEntry>) -> Result<(), GroupError> {
        if entries.is_empty() {
            return Ok(());
        }
        let mut record = Vec::new();
        frame(
            &encode_commit(
                group,
                entries
                    .iter()
                    .map(|e| (e.topic.as_str(), e.partition, &e.committed))
                    .collect::<Vec<_>>()
                    .as_slice(),
            ),
            &mut record,
        );
        let mut journal = mutex(&self.journal);
        journal.append(&record)?;
        mutex(&self.map).apply_commit(group, entries);
        self.maybe_compact(&mut journal);
        Ok(())
    }

    /// Forgets every group's offsets for a deleted topic (durably: a
    /// tombstone record). Returns how many entries were dropped.
    pub(crate) fn forget_topic(&self, topic: &str) -> Result<usize, GroupError> {
        let mut journal = mutex(&self.journal);
        if !mutex(&self.map).has_topic(topic) {
            return Ok(0);
        }
        let mut record = Vec::new();
        frame(&encode_forget_topic(topic), &mut record);
        journal.append(&record)?;
        let dropped = mutex(&self.map).forget_topic(topic);
        self.maybe_compact(&mut journal);
        Ok(dropped)
    }

    fn maybe_compact(&self, journal: &mut Journal) {
        let image = {
            let map = mutex(&self.map);
            if !journal.needs_compaction(map.live_bytes) {
                return;
            }
            map.encode_compacted()
        };
        let before = journal.len;
        match journal.replace_with(&image) {
            Ok(()) => tracing::info!(
                file = %journal.path.display(),
                before,
                after = journal.len,
                "compacted committed-offsets journal"
            ),
            Err(e) => {
                journal.compact_retry_at = journal.len.saturating_mul(2);
                tracing::warn!(error = %e, "compacting the committed-offsets journal failed");
            }
        }
    }

    /// The committed offset of one partition, if any.
    pub(crate) fn get(&self, group: &str, topic: &str, partition: i32) -> Option<CommittedOffset> {
        mutex(&self.map)
            .groups
            .get(group)?
            .get(&(topic.to_owned(), partition))
            .cloned()
    }

    /// Every committed partition of `group`, ordered by topic and partition.
    pub(crate) fn group_offsets(&self, group: &str) -> Vec<(String, i32, CommittedOffset)> {
        mutex(&self.map)
            .groups
            .get(group)
            .map(|o| {
                o.iter()
                    .map(|((t, p), c)| (t.clone(), *p, c.clone()))
                    .collect()
            })
            .unwrap_or_default()
    }

    pub(crate) fn has_group(&self, group: &str) -> bool {
        mutex(&self.map).groups.contains_key(group)
    }

    /// Ids of all groups with committed offsets.
    pub(crate) fn group_ids(&self) -> Vec<String> {
        mutex(&self.map).groups.keys().cloned().collect()
    }

    /// Syncs and closes the journal; later commits fail with `Closed`.
    pub(crate) fn close(&self) -> Result<(), GroupError> {
        let mut journal = mutex(&self.journal);
        match journal.file.take() {
            Some(f) => f
                .sync_all()
                .map_err(|e| GroupError::io("syncing", &journal.path, e)),
            None => Ok(()),
        }
    }

    #[cfg(test)]
    fn journal_len(&self) -> u64 {
        mutex(&self.journal).len
    }

    #[cfg(test)]
    fn live_bytes(&self) -> u64 {
        mutex(&self.map).live_bytes
    }

    #[cfg(test)]
    fn path(&self) -> PathBuf {
        mutex(&self.journal).path.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(topic: &str, partition: i32, offset: i64, metadata: &str) -> OffsetEntry {
        OffsetEntry {
            topic: topic.to_owned(),
            partition,
            committed: CommittedOffset {
                offset,
                leader_epoch: 3,
                metadata: metadata.to_owned(),
                commit_timestamp_ms: 1_700_000_000_000 + offset,
            },
        }
    }

    fn offset(store: &OffsetStore, group: &str, topic: &str, partition: i32) -> Option<i64> {
        store.get(group, topic, partition).map(|c| c.offset)
    }

    fn append_raw(path: &Path, bytes: &[u8]) {
        let mut f = OpenOptions::new()
            .append(true)
            .open(path)
            .expect("open journal");
        f.write_all(bytes).expect("append");
    }

    #[test]
    fn commits_survive_reopen_and_later_commits_win() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = OffsetStore::open(dir.path()).expect("open");
            store
                .commit("g1", vec![entry("t", 0, 10, "a"), entry("t", 1, 11, "")])
                .expect("commit");
            store
                .commit("g1", vec![entry("t", 0, 20, "bb")])
                .expect("commit");
            store
                .commit("g2", vec![entry("u", 0, 5, "")])
                .expect("commit");
            store.commit("g3", vec![]).expect("empty commit is a no-op");
            store.close().expect("close");
            assert!(matches!(
                store.commit("g1", vec![entry("t", 0, 30, "")]),
                Err(GroupError::Closed { .. })
            ));
        }
        let store = OffsetStore::open(dir.path()).expect("reopen");
        assert_eq!(offset(&store, "g1", "t", 0), Some(20));
        assert_eq!(
            store.get("g1", "t", 0).map(|c| c.metadata),
            Some("bb".to_owned())
        );
        assert_eq!(store.get("g1", "t", 0).map(|c| c.leader_epoch), Some(3));
        assert_eq!(offset(&store, "g1", "t", 1), Some(11));
        assert_eq!(offset(&store, "g2", "u", 0), Some(5));
        assert!(!store.has_group("g3"));
        let mut ids = store.group_ids();
        ids.sort();
        assert_eq!(ids, vec!["g1", "g2"]);
        assert_eq!(
            store
                .group_offsets("g1")
                .iter()
                .map(|(t, p, c)| (t.as_str(), *p, c.offset))
                .collect::<Vec<_>>(),
            vec![("t", 0, 20), ("t", 1, 11)]
        );
        // The incremental live size is exactly a compacted journal's size.
        assert_eq!(
            store.live_bytes(),
            mutex(&store.map).encode_compacted().len() as u64
        );
    }

    #[test]
    fn a_torn_or_corrupt_tail_is_cut_and_appends_continue() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path;
        let good_len;
        {
            let store = OffsetStore::open(dir.path()).expect("open");
            store
                .commit("g", vec![entry("t", 0, 1, "")])
                .expect("commit");
            store
                .commit("g", vec![entry("t", 0, 2, "")])
                .expect("commit");
            path = store.path();
            good_len = store.journal_len();
        }
        let mut record = Vec::new();
        frame(
            &encode_commit("g", &[("t", 0, &entry("t", 0, 3, "").committed)]),
            &mut record,
        );

        // A record cut short by a crash.
        append_raw(&path, &record[..record.len() - 3]);
        let store = OffsetStore::open(dir.path()).expect("reopen after torn write");
        assert_eq!(offset(&store, "g", "t", 0), Some(2));
        assert_eq!(fs::metadata(&path).expect("stat").len(), good_len);
        drop(store);

        // A whole record with a flipped bit, followed by a good one: the
        // first bad record ends the journal.
        let mut bad = record.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0x40;
        append_raw(&path, &bad);
        append_raw(&path, &record);
        let store = OffsetStore::open(dir.path()).expect("reopen after corruption");
        assert_eq!(offset(&store, "g", "t", 0), Some(2));
        assert_eq!(fs::metadata(&path).expect("stat").len(), good_len);
        drop(store);

        // A zero-filled tail, and a lone partial header.
        append_raw(&path, &[0u8; 64]);
        let store = OffsetStore::open(dir.path()).expect("reopen after zero tail");
        assert_eq!(fs::metadata(&path).expect("stat").len(), good_len);
        drop(store);
        append_raw(&path, &[7, 0, 0]);
        let store = OffsetStore::open(dir.path()).expect("reopen after partial header");
        assert_eq!(fs::metadata(&path).expect("stat").len(), good_len);

        // The cut journal takes new commits that survive the next reopen.
        store
            .commit("g", vec![entry("t", 0, 4, "")])
            .expect("commit");
        drop(store);
        let store = OffsetStore::open(dir.path()).expect("reopen");
        assert_eq!(offset(&store, "g", "t", 0), Some(4));
    }

    #[test]
    fn a_torn_header_of_a_new_journal_is_rewritten() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::write(dir.path().join(JOURNAL), &MAGIC[..3]).expect("write");
        let store = OffsetStore::open(dir.path()).expect("open");
        store
            .commit("g", vec![entry("t", 0, 1, "")])
            .expect("commit");
        drop(store);
        let store = OffsetStore::open(dir.path()).expect("reopen");
        assert_eq!(offset(&store, "g", "t", 0), Some(1));
    }

    #[test]
    fn foreign_or_undecodable_files_are_refused_with_the_file_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(JOURNAL);
        fs::write(&path, b"PK\x03\x04 some zip file").expect("write");
        let err = OffsetStore::open(dir.path()).err().expect("must fail");
        assert!(matches!(err, GroupError::NotAJournal { .. }), "{err}");
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );

        // A CRC-clean record of an unknown kind is not a torn write.
        let mut bytes = MAGIC.to_vec();
        frame(&[9, 1, 2, 3], &mut bytes);
        fs::write(&path, &bytes).expect("write");
        let err = OffsetStore::open(dir.path()).err().expect("must fail");
        assert!(
            matches!(err, GroupError::CorruptJournal { position: 8, .. }),
            "{err}"
        );
        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
        assert!(err.to_string().contains("unknown record kind 9"), "{err}");
    }

    #[test]
    fn compaction_keeps_only_live_entries() {
        let dir = tempfile::tempdir().expect("tempdir");
        let compact_min = 4096;
        {
            let store = OffsetStore::open_with(dir.path(), compact_min).expect("open");
            for i in 0..500 {
                store
                    .commit("g", vec![entry("t", i % 3, i as i64, "meta")])
                    .expect("commit");
                assert!(
                    store.journal_len() <= compact_min.max(4 * store.live_bytes()) + 256,
                    "journal grew to {} bytes",
                    store.journal_len()
                );
            }
            store
                .commit("other", vec![entry("u", 0, 1, "")])
                .expect("commit");
            assert_eq!(offset(&store, "g", "t", 0), Some(498));
        }
        assert!(!dir.path().join(JOURNAL_TMP).exists());
        let store = OffsetStore::open_with(dir.path(), compact_min).expect("reopen");
        assert_eq!(offset(&store, "g", "t", 0), Some(498));
        assert_eq!(offset(&store, "g", "t", 1), Some(499));
        assert_eq!(offset(&store, "g", "t", 2), Some(497));
        assert_eq!(offset(&store, "other", "u", 0), Some(1));
        assert_eq!(
            store.get("g", "t", 2).map(|c| c.metadata),
            Some("meta".to_owned())
        );

        // A compacted journal holds exactly the live entries.
        let image = mutex(&store.map).encode_compacted();
        assert_eq!(image.len() as u64, store.live_bytes());
    }

    #[test]
    fn a_stale_compaction_file_is_removed_on_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = OffsetStore::open(dir.path()).expect("open");
            store
                .commit("g", vec![entry("t", 0, 1, "")])
                .expect("commit");
        }
        fs::write(dir.path().join(JOURNAL_TMP), b"half a rewrite").expect("write");
        let store = OffsetStore::open(dir.path()).expect("reopen");
        assert!(!dir.path().join(JOURNAL_TMP).exists());
        assert_eq!(offset(&store, "g", "t", 0), Some(1));
    }

    #[test]
    fn forgotten_topics_stay_forgotten() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let store = OffsetStore::open(dir.path()).expect("open");
            store
                .commit("g1", vec![entry("gone", 0, 1, ""), entry("kept", 0, 2, "")])
                .expect("commit");
            store
                .commit("g2", vec![entry("gone", 1, 3, "")])
                .expect("commit");
            let len = store.journal_len();
            assert_eq!(store.forget_topic("never-seen").expect("forget"), 0);
            assert_eq!(
                store.journal_len(),
                len,
                "nothing to forget, nothing written"
            );
            assert_eq!(store.forget_topic("gone").expect("forget"), 2);
            assert!(!store.has_group("g2"));
            assert_eq!(
                store.live_bytes(),
                mutex(&store.map).encode_compacted().len() as u64
            );
        }
        let store = OffsetStore::open(dir.path()).expect("reopen");
        assert_eq!(offset(&store, "g1", "gone", 0), None);
        assert_eq!(offset(&store, "g2", "gone", 1), None);
        assert_eq!(offset(&store, "g1", "kept", 0), Some(2));
        assert!(!store.has_group("g2"));
    }
}
