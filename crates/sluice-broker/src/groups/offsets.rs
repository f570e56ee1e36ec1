//! Durable committed offsets: a [`crate::journal`], `offsets.journal`, in
//! the directory the broker gives the coordinator (`<data-dir>/groups`).
//!
//! Owns the records of that journal and the in-memory map of committed
//! offsets rebuilt from it. Never checks group membership or generations
//! (the coordinator does that before calling in) and never acknowledges a
//! commit before it is on disk.
//!
//! # Format (the payloads of the journal's records, magic "SLGROFS1")
//! ```text
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
use std::path::Path;
use std::sync::Mutex;

use sluice_log::common::mutex;

use super::error::GroupError;
use crate::journal::{Journal, JournalSpec, MAGIC_LEN, RECORD_HEADER, Reader, put_str};

static SPEC: JournalSpec = JournalSpec {
    what: "committed-offsets journal",
    file: "offsets.journal",
    compaction_file: "offsets.journal.tmp",
    magic: b"SLGROFS1",
};
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

/// Where a group stands on one partition, without the commit's metadata:
/// what the broker's status reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CommitPoint {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
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
            live_bytes: MAGIC_LEN,
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

    /// The whole map as the records of a compacted journal: one commit
    /// record per group.
    fn compacted_records(&self) -> Vec<Vec<u8>> {
        self.groups
            .iter()
            .map(|(group, offsets)| {
                encode_commit(
                    group,
                    offsets
                        .iter()
                        .map(|((t, p), c)| (t.as_str(), *p, c))
                        .collect::<Vec<_>>()
                        .as_slice(),
                )
            })
            .collect()
    }
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

/// A decoded record.
enum Record {
    Commit {
        group: String,
        entries: Vec<OffsetEntry>,
    },
    ForgetTopic(String),
}

fn decode_record(payload: &[u8]) -> Result<Record, String> {
    let mut r = Reader::new(payload);
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
    r.finish()?;
    Ok(record)
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
        let mut map = OffsetMap::new();
        let journal = Journal::open(dir, &SPEC, compact_min, |payload| {
            match decode_record(payload)? {
                Record::Commit { group, entries } => map.apply_commit(&group, entries),
                Record::ForgetTopic(topic) => {
                    map.forget_topic(&topic);
                }
            }
            Ok(())
        })?;
        tracing::debug!(groups = map.groups.len(), "committed offsets loaded");
        Ok(OffsetStore {
            journal: Mutex::new(journal),
            map: Mutex::new(map),
        })
    }

    /// Stores one OffsetCommit request's entries: one record, one fsync,
    /// then visible to fetches. On error nothing became visible.
    pub(crate) fn commit(&self, group: &str, entries: Vec<OffsetEntry>) -> Result<(), GroupError> {
        if entries.is_empty() {
            return Ok(());
        }
        let record = encode_commit(
            group,
            entries
                .iter()
                .map(|e| (e.topic.as_str(), e.partition, &e.committed))
                .collect::<Vec<_>>()
                .as_slice(),
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
        journal.append(&encode_forget_topic(topic))?;
        let dropped = mutex(&self.map).forget_topic(topic);
        self.maybe_compact(&mut journal);
        Ok(dropped)
    }

    fn maybe_compact(&self, journal: &mut Journal) {
        let records = {
            let map = mutex(&self.map);
            if !journal.needs_compaction(map.live_bytes) {
                return;
            }
            map.compacted_records()
        };
        journal.compact(records);
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

    /// Every group's committed partitions (each ordered by topic and
    /// partition), in one pass under the map lock.
    pub(crate) fn commit_points(&self) -> Vec<(String, Vec<CommitPoint>)> {
        mutex(&self.map)
            .groups
            .iter()
            .map(|(group, offsets)| {
                let points = offsets
                    .iter()
                    .map(|((topic, partition), c)| CommitPoint {
                        topic: topic.clone(),
                        partition: *partition,
                        offset: c.offset,
                        commit_timestamp_ms: c.commit_timestamp_ms,
                    })
                    .collect();
                (group.clone(), points)
            })
            .collect()
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
        Ok(mutex(&self.journal).close()?)
    }

    #[cfg(test)]
    fn journal_len(&self) -> u64 {
        mutex(&self.journal).len()
    }

    #[cfg(test)]
    fn live_bytes(&self) -> u64 {
        mutex(&self.map).live_bytes
    }

    #[cfg(test)]
    fn path(&self) -> std::path::PathBuf {
        mutex(&self.journal).path().to_path_buf()
    }
}

#[cfg(test)]
mod tests {
    use std::fs::{self, OpenOptions};
    use std::io::Write;

    use super::*;
    use crate::journal::{JournalError, frame};

    const JOURNAL: &str = SPEC.file;
    const JOURNAL_TMP: &str = SPEC.compaction_file;
    const MAGIC: &[u8; 8] = SPEC.magic;

    /// Size of a compacted journal of exactly the store's live entries.
    fn compacted_len(store: &OffsetStore) -> u64 {
        MAGIC_LEN
            + mutex(&store.map)
                .compacted_records()
                .iter()
                .map(|r| RECORD_HEADER + r.len() as u64)
                .sum::<u64>()
    }

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
                Err(GroupError::Journal(JournalError::Closed { .. }))
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
        assert_eq!(store.live_bytes(), compacted_len(&store));
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
        assert!(
            matches!(err, GroupError::Journal(JournalError::NotAJournal { .. })),
            "{err}"
        );
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
            matches!(
                err,
                GroupError::Journal(JournalError::Corrupt { position: 8, .. })
            ),
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
        assert_eq!(compacted_len(&store), store.live_bytes());
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
            assert_eq!(store.live_bytes(), compacted_len(&store));
        }
        let store = OffsetStore::open(dir.path()).expect("reopen");
        assert_eq!(offset(&store, "g1", "gone", 0), None);
        assert_eq!(offset(&store, "g2", "gone", 1), None);
        assert_eq!(offset(&store, "g1", "kept", 0), Some(2));
        assert!(!store.has_group("g2"));
    }
}
