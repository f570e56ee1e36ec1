//! The bundled log store: topics → partitions → segments of Kafka RecordBatch
//! v2 bytes, with a sparse offset index, retention and crash recovery.
//!
//! This module owns everything under a data directory and is the only code
//! that reads or writes those files. It is synchronous: async callers (the
//! broker) reach it through `spawn_blocking` or a dedicated thread. It never
//! decodes records on the read path — batches are stored and served as the
//! producer sent them — nor on the append path, except to check that every
//! record of a compacted topic has a key; the log cleaner rewrites sealed
//! segments of compacted topics in the background. It knows nothing of the
//! network.
//!
//! ```text
//! <data-dir>/
//!   .lock                       held (flock) by the process that has the store open
//!   topics/<topic>/topic.json   name, id (UUID), partition count, config
//!   topics/<topic>/<p>/         one directory per partition
//!       00000000000000000000.log        batches, named by base offset
//!       00000000000000000000.index      offset → position (sparse)
//!       00000000000000000000.timeindex  timestamp → offset (sparse)
//!       00000000000000000000.txnindex   aborted transactions whose marker is here
//!       recovery-point                  last position known to be on disk
//!       txn-snapshot                    open transactions at an offset on disk
//!       cleaner-checkpoint              compacted topics: offsets below this were cleaned
//!       log-start-offset                set by DeleteRecords (else the first segment's base)
//!       *.cleaned                       a cleaning pass's new segment files, before its commit
//!       *.log.swap                      a committed cleaned segment, before its rename into place
//!   trash/                      topics being deleted
//! ```
//!
//! Durability: an append under the `always` flush policy returns after an
//! fsync and only then becomes visible to readers; other policies flush by
//! record count, by age, or leave it to the OS (as Kafka does). On open, each
//! partition's last segment is validated batch by batch after its recovery
//! point and a torn or corrupt tail is cut off; damaged indexes are rebuilt.
//!
//! ```
//! use sluice_log::log::{LogStore, StoreOptions, TopicConfig};
//! use sluice_log::producer::{BatchBuilder, Compression};
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let dir = tempfile::tempdir()?;
//! let store = LogStore::open(dir.path(), StoreOptions::default())?;
//! store.create_topic("clicks", 4, TopicConfig::default())?;
//!
//! // A producer's RecordBatch v2, stored as it is; the store assigns offsets.
//! let mut batch = BatchBuilder::new(Compression::Lz4);
//! batch.push(Some(b"user-1"), b"/home", 1_700_000_000_000);
//! batch.push(Some(b"user-2"), b"/cart", 1_700_000_000_005);
//! let partition = store.partition("clicks", 0)?;
//! let appended = partition.append(&mut batch.finish()?)?;
//! assert_eq!((appended.base_offset, appended.last_offset), (0, 1));
//!
//! // Reads return whole batches from the one holding the offset.
//! let (bytes, info) = partition.read(1, 1 << 20)?;
//! assert_eq!(info.next_offset, 2);
//! assert!(!bytes.is_empty());
//! assert_eq!(partition.offset_for_time(1_700_000_000_001)?, Some((1, 1_700_000_000_005)));
//! store.close()?;
//! # Ok(())
//! # }
//! ```

mod batch;
mod cleaner;
mod config;
mod error;
mod index;
mod partition;
pub mod records;
mod segment;
mod txn;

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, RwLock, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use batch::{BatchError, BatchHeader, Codec, HEADER_LEN, compute_crc, peek_frame};
pub use cleaner::{CleanOutcome, CleanerOptions};
pub use config::{CleanupPolicy, FlushPolicy, TopicConfig, validate_topic_name};
pub use error::{LogError, Result};
pub use partition::{AppendInfo, Partition, PartitionInfo, ReadInfo, RetentionOutcome};
pub use segment::TailRecovery;
pub use txn::{AbortedTxn, CommittedFilter, ControlType, control_type, encode_control_batch};

use crate::common::{mutex, now_ms, read_lock, write_lock};
use partition::{SharedConfig, sync_dir};

/// Most partitions one topic may have; a guard against typos like `--partitions 10000000`.
pub const MAX_PARTITIONS: i64 = 10_000;

/// Store-wide settings (Kafka's broker-level `log.*` settings).
#[derive(Debug, Clone)]
pub struct StoreOptions {
    /// How often retention runs (Kafka `log.retention.check.interval.ms`, 5 min).
    pub retention_check_interval: Duration,
    /// How often recovery points are written (Kafka's 60 s).
    pub recovery_point_interval: Duration,
    /// How often `flush.ms` deadlines are checked.
    pub flush_check_interval: Duration,
    /// Run the maintenance and log-cleaner threads. Short-lived CLI
    /// commands turn them off.
    pub background: bool,
    /// Compaction of `cleanup.policy=compact` topics.
    pub cleaner: CleanerOptions,
}

impl Default for StoreOptions {
    fn default() -> Self {
        StoreOptions {
            retention_check_interval: Duration::from_secs(300),
            recovery_point_interval: Duration::from_secs(60),
            flush_check_interval: Duration::from_millis(50),
            background: true,
            cleaner: CleanerOptions::default(),
        }
    }
}

/// `topic.json`: the durable description of a topic.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct TopicMeta {
    version: u32,
    name: String,
    id: Uuid,
    partitions: u32,
    created_ms: i64,
    config: TopicConfig,
}

/// A topic and its partitions.
pub struct Topic {
    name: String,
    id: Uuid,
    dir: PathBuf,
    created_ms: i64,
    config: SharedConfig,
    partitions: RwLock<Vec<Arc<Partition>>>,
}

impl Topic {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Stable topic ID, as Kafka's Metadata and Fetch v13+ use.
    pub fn id(&self) -> Uuid {
        self.id
    }

    pub fn config(&self) -> Arc<TopicConfig> {
        read_lock(&self.config).clone()
    }

    pub fn partition_count(&self) -> usize {
        read_lock(&self.partitions).len()
    }

    pub fn partitions(&self) -> Vec<Arc<Partition>> {
        read_lock(&self.partitions).clone()
    }

    pub fn partition(&self, id: i32) -> Result<Arc<Partition>> {
        let parts = read_lock(&self.partitions);
        usize::try_from(id)
            .ok()
            .and_then(|i| parts.get(i).cloned())
            .ok_or_else(|| LogError::UnknownPartition {
                topic: self.name.clone(),
                partition: id,
                count: parts.len(),
            })
    }

    fn meta(&self, partitions: u32) -> TopicMeta {
        TopicMeta {
            version: 1,
            name: self.name.clone(),
            id: self.id,
            partitions,
            created_ms: self.created_ms,
            config: (*self.config()).clone(),
        }
    }
}

struct Inner {
    root: PathBuf,
    options: StoreOptions,
    topics: RwLock<BTreeMap<String, Arc<Topic>>>,
    /// Serializes topic creation and deletion (metadata changes), never appends.
    admin: Mutex<()>,
    closed: AtomicBool,
    stop: (Mutex<bool>, Condvar),
    maintenance: Mutex<Option<JoinHandle<()>>>,
    cleaner: Mutex<Option<JoinHandle<()>>>,
    _lock: File,
}

/// An open data directory. Cheap to clone; the store closes cleanly (flush,
/// recovery points) when the last clone is dropped or [`LogStore::close`] is
/// called.
#[derive(Clone)]
pub struct LogStore {
    inner: Arc<Inner>,
}

/// Writes a file so that a crash leaves either the old or the new contents.
/// Replaces `path` with `data` so that a crash leaves the old or the new
/// contents, never a mix (temp file, fsync, rename, fsync of the directory).
pub fn write_atomically(path: &Path, data: &[u8]) -> Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let write = || -> io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    };
    write().map_err(|e| LogError::io("writing", path, e))?;
    sync_dir(path.parent().unwrap_or(Path::new(".")))
}

impl LogStore {
    /// Opens (creating if needed) the store in `root`, recovering every
    /// partition. Fails with [`LogError::DirectoryInUse`] if another process
    /// has it open.
    pub fn open(root: impl AsRef<Path>, options: StoreOptions) -> Result<LogStore> {
        let root = root.as_ref().to_path_buf();
        for dir in [root.join("topics"), root.join("trash")] {
            fs::create_dir_all(&dir)
                .map_err(|e| LogError::io("creating data directory", &dir, e))?;
        }
        let lock = acquire_lock(&root)?;
        // Finish deletions and creations that a crash interrupted.
        let trash = root.join("trash");
        if let Ok(entries) = fs::read_dir(&trash) {
            for e in entries.flatten() {
                let _ = fs::remove_dir_all(e.path());
            }
        }
        let topics_dir = root.join("topics");
        let mut topics = BTreeMap::new();
        let entries = fs::read_dir(&topics_dir)
            .map_err(|e| LogError::io("listing topics", &topics_dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| LogError::io("listing topics", &topics_dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(".creating-") {
                let _ = fs::remove_dir_all(entry.path());
                continue;
            }
            if !entry.path().is_dir() {
                continue;
            }
            let topic = open_topic(&entry.path())?;
            topics.insert(topic.name.clone(), Arc::new(topic));
        }
        let inner = Arc::new(Inner {
            root,
            options: options.clone(),
            topics: RwLock::new(topics),
            admin: Mutex::new(()),
            closed: AtomicBool::new(false),
            stop: (Mutex::new(false), Condvar::new()),
            maintenance: Mutex::new(None),
            cleaner: Mutex::new(None),
            _lock: lock,
        });
        if options.background {
            let weak = Arc::downgrade(&inner);
            let handle = std::thread::Builder::new()
                .name("sluice-log-maintenance".into())
                .spawn(move || maintenance_loop(weak))
                .map_err(|e| {
                    LogError::io("starting maintenance thread for", PathBuf::from("."), e)
                })?;
            *mutex(&inner.maintenance) = Some(handle);
            let weak = Arc::downgrade(&inner);
            let handle = std::thread::Builder::new()
                .name("sluice-log-cleaner".into())
                .spawn(move || cleaner_loop(weak))
                .map_err(|e| {
                    LogError::io("starting log cleaner thread for", PathBuf::from("."), e)
                })?;
            *mutex(&inner.cleaner) = Some(handle);
        }
        Ok(LogStore { inner })
    }

    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    fn check_open(&self) -> Result<()> {
        if self.inner.closed.load(Ordering::Acquire) {
            return Err(LogError::Closed);
        }
        Ok(())
    }

    /// Creates a topic with `partitions` partitions. The topic appears whole
    /// or not at all, even across a crash.
    pub fn create_topic(
        &self,
        name: &str,
        partitions: i64,
        config: TopicConfig,
    ) -> Result<Arc<Topic>> {
        self.check_open()?;
        validate_topic_name(name)?;
        if partitions <= 0 || partitions > MAX_PARTITIONS {
            return Err(LogError::InvalidPartitionCount(partitions));
        }
        config.validate()?;
        let _admin = mutex(&self.inner.admin);
        if read_lock(&self.inner.topics).contains_key(name) {
            return Err(LogError::TopicExists(name.to_string()));
        }
        let topics_dir = self.inner.root.join("topics");
        let staging = topics_dir.join(format!(".creating-{}", Uuid::new_v4()));
        let final_dir = topics_dir.join(name);
        let result = (|| {
            fs::create_dir_all(&staging)
                .map_err(|e| LogError::io("creating topic directory", &staging, e))?;
            let shared: SharedConfig = Arc::new(RwLock::new(Arc::new(config.clone())));
            let meta = TopicMeta {
                version: 1,
                name: name.to_string(),
                id: Uuid::new_v4(),
                partitions: partitions as u32,
                created_ms: now_ms(),
                config,
            };
            for p in 0..partitions as u32 {
                Partition::create(name, p, staging.join(p.to_string()), shared.clone())?;
            }
            let json = serde_json::to_vec_pretty(&meta).expect("topic metadata serializes");
            write_atomically(&staging.join("topic.json"), &json)?;
            fs::rename(&staging, &final_dir)
                .map_err(|e| LogError::io("publishing topic directory", &final_dir, e))?;
            sync_dir(&topics_dir)?;
            open_topic(&final_dir)
        })();
        let topic = match result {
            Ok(t) => Arc::new(t),
            Err(e) => {
                let _ = fs::remove_dir_all(&staging);
                return Err(e);
            }
        };
        write_lock(&self.inner.topics).insert(name.to_string(), topic.clone());
        Ok(topic)
    }

    /// Deletes a topic and all its data. Appends in flight fail with
    /// "unknown topic"; readers holding segments finish what they read.
    pub fn delete_topic(&self, name: &str) -> Result<()> {
        self.check_open()?;
        let _admin = mutex(&self.inner.admin);
        let topic = write_lock(&self.inner.topics)
            .remove(name)
            .ok_or_else(|| LogError::UnknownTopic(name.to_string()))?;
        for p in topic.partitions() {
            p.mark_deleted();
        }
        let trash = self
            .inner
            .root
            .join("trash")
            .join(format!("{name}-{}", topic.id));
        fs::rename(&topic.dir, &trash)
            .map_err(|e| LogError::io("moving topic to trash", &topic.dir, e))?;
        sync_dir(&self.inner.root.join("topics"))?;
        fs::remove_dir_all(&trash)
            .map_err(|e| LogError::io("removing deleted topic", &trash, e))?;
        Ok(())
    }

    /// Grows a topic to `total` partitions (Kafka's CreatePartitions).
    pub fn add_partitions(&self, name: &str, total: i64) -> Result<()> {
        self.check_open()?;
        let _admin = mutex(&self.inner.admin);
        let topic = self.topic(name)?;
        let current = topic.partition_count() as i64;
        if total <= current || total > MAX_PARTITIONS {
            return Err(LogError::InvalidPartitionCount(total));
        }
        let mut created = Vec::new();
        for p in current as u32..total as u32 {
            let dir = topic.dir.join(p.to_string());
            let _ = fs::remove_dir_all(&dir);
            created.push(Arc::new(Partition::create(
                name,
                p,
                dir,
                topic.config.clone(),
            )?));
        }
        sync_dir(&topic.dir)?;
        let json = serde_json::to_vec_pretty(&topic.meta(total as u32))
            .expect("topic metadata serializes");
        write_atomically(&topic.dir.join("topic.json"), &json)?;
        write_lock(&topic.partitions).extend(created);
        Ok(())
    }

    /// Changes a topic's configs (Kafka's AlterConfigs): `change` edits a
    /// copy, which must validate; it is written to `topic.json` (atomically)
    /// before anything uses it. Partitions see it at their next append,
    /// roll, retention or cleaning pass. Returns the new config.
    pub fn alter_topic_config(
        &self,
        name: &str,
        change: impl FnOnce(&mut TopicConfig) -> Result<()>,
    ) -> Result<TopicConfig> {
        self.check_open()?;
        let _admin = mutex(&self.inner.admin);
        let topic = self.topic(name)?;
        let mut config = (*topic.config()).clone();
        change(&mut config)?;
        config.validate()?;
        let mut meta = topic.meta(topic.partition_count() as u32);
        meta.config = config.clone();
        let json = serde_json::to_vec_pretty(&meta).expect("topic metadata serializes");
        write_atomically(&topic.dir.join("topic.json"), &json)?;
        *write_lock(&topic.config) = Arc::new(config.clone());
        tracing::info!(topic = name, "topic configs changed");
        Ok(config)
    }

    pub fn topic(&self, name: &str) -> Result<Arc<Topic>> {
        read_lock(&self.inner.topics)
            .get(name)
            .cloned()
            .ok_or_else(|| LogError::UnknownTopic(name.to_string()))
    }

    pub fn topics(&self) -> Vec<Arc<Topic>> {
        read_lock(&self.inner.topics).values().cloned().collect()
    }

    pub fn partition(&self, topic: &str, partition: i32) -> Result<Arc<Partition>> {
        self.topic(topic)?.partition(partition)
    }

    /// Runs retention on every partition now.
    pub fn enforce_retention(&self) -> Result<Vec<(String, u32, RetentionOutcome)>> {
        self.check_open()?;
        let now = now_ms();
        let mut out = Vec::new();
        for topic in self.topics() {
            for p in topic.partitions() {
                let outcome = p.enforce_retention(now)?;
                if outcome.segments_deleted > 0 {
                    out.push((topic.name.clone(), p.id(), outcome));
                }
            }
        }
        Ok(out)
    }

    /// Runs the log cleaner on every partition of every compacted topic
    /// now, whatever its dirty ratio (the lag settings and the last stable
    /// offset still hold). Returns what each pass that did something did.
    pub fn clean_now(&self) -> Result<Vec<(String, u32, CleanOutcome)>> {
        self.check_open()?;
        let mut out = Vec::new();
        for topic in self.topics() {
            for p in topic.partitions() {
                if let Some(outcome) = p.clean(now_ms(), &self.inner.options.cleaner, true)? {
                    out.push((topic.name.clone(), p.id(), outcome));
                }
            }
        }
        Ok(out)
    }

    /// Flushes every partition.
    pub fn flush(&self) -> Result<()> {
        for topic in self.topics() {
            for p in topic.partitions() {
                p.flush()?;
            }
        }
        Ok(())
    }

    /// Drops the store as a crash would: no flush, no recovery points, no
    /// index files. Only for tests of recovery inside one process.
    #[doc(hidden)]
    pub fn abandon_without_closing(self) {
        self.inner.closed.store(true, Ordering::Release);
        let (stopped, cv) = &self.inner.stop;
        *mutex(stopped) = true;
        cv.notify_all();
    }

    /// Flushes everything, writes recovery points and stops the maintenance
    /// thread. Further calls fail with [`LogError::Closed`].
    pub fn close(&self) -> Result<()> {
        self.inner.close()
    }
}

impl Inner {
    fn close(&self) -> Result<()> {
        if self.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        {
            let (stopped, cv) = &self.stop;
            *mutex(stopped) = true;
            cv.notify_all();
        }
        for thread in [&self.maintenance, &self.cleaner] {
            if let Some(handle) = mutex(thread).take()
                && handle.thread().id() != std::thread::current().id()
            {
                let _ = handle.join();
            }
        }
        let mut first_err = None;
        for topic in read_lock(&self.topics).values() {
            for p in topic.partitions() {
                if let Err(e) = p.close() {
                    tracing::error!("closing {}-{}: {e}", p.topic(), p.id());
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Err(e) = self.close() {
            tracing::error!("log store did not close cleanly: {e}");
        }
    }
}

fn maintenance_loop(weak: Weak<Inner>) {
    let mut last_retention = std::time::Instant::now();
    let mut last_checkpoint = std::time::Instant::now();
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let tick = inner.options.flush_check_interval;
        {
            let (stopped, cv) = &inner.stop;
            let guard = mutex(stopped);
            if *guard {
                return;
            }
            let (guard, _) = cv
                .wait_timeout(guard, tick)
                .unwrap_or_else(|p| p.into_inner());
            if *guard {
                return;
            }
        }
        let now = now_ms();
        let retention_due = last_retention.elapsed() >= inner.options.retention_check_interval;
        let checkpoint_due = last_checkpoint.elapsed() >= inner.options.recovery_point_interval;
        let topics: Vec<_> = read_lock(&inner.topics).values().cloned().collect();
        for topic in topics {
            for p in topic.partitions() {
                if let Err(e) = p.flush_if_due(now) {
                    tracing::error!("scheduled flush of {}-{} failed: {e}", p.topic(), p.id());
                }
                if retention_due && let Err(e) = p.enforce_retention(now) {
                    tracing::error!("retention on {}-{} failed: {e}", p.topic(), p.id());
                }
                if checkpoint_due && let Err(e) = p.write_recovery_point() {
                    tracing::warn!("recovery point of {}-{}: {e}", p.topic(), p.id());
                }
            }
        }
        if retention_due {
            last_retention = std::time::Instant::now();
        }
        if checkpoint_due {
            last_checkpoint = std::time::Instant::now();
        }
    }
}

/// Waits `timeout` or until the store stops; true when it stopped.
fn wait_for_stop(inner: &Inner, timeout: Duration) -> bool {
    let (stopped, cv) = &inner.stop;
    let guard = mutex(stopped);
    if *guard {
        return true;
    }
    let (guard, _) = cv
        .wait_timeout(guard, timeout)
        .unwrap_or_else(|p| p.into_inner());
    *guard
}

/// The log cleaner's thread: a pass over every compacted partition, then a
/// pause of `cleaner.backoff`. Its own thread, as Kafka's, so a long
/// rewrite never delays the flush deadlines of the maintenance thread.
fn cleaner_loop(weak: Weak<Inner>) {
    let mut last_pass = std::time::Instant::now();
    loop {
        let Some(inner) = weak.upgrade() else { return };
        let options = inner.options.cleaner.clone();
        // Short waits: the last handle to the store may go meanwhile, and
        // this thread must not keep the store open past it.
        if wait_for_stop(
            &inner,
            inner
                .options
                .flush_check_interval
                .max(Duration::from_millis(100)),
        ) {
            return;
        }
        if last_pass.elapsed() < options.backoff {
            continue;
        }
        last_pass = std::time::Instant::now();
        let topics: Vec<_> = read_lock(&inner.topics)
            .values()
            .filter(|t| t.config().cleanup_policy.compact)
            .cloned()
            .collect();
        drop(inner);
        for topic in topics {
            for p in topic.partitions() {
                if let Err(e) = p.clean(now_ms(), &options, false) {
                    tracing::error!("log cleaner on {}-{} failed: {e}", p.topic(), p.id());
                }
            }
        }
    }
}

fn open_topic(dir: &Path) -> Result<Topic> {
    let meta_path = dir.join("topic.json");
    let bytes =
        fs::read(&meta_path).map_err(|e| LogError::io("reading topic metadata", &meta_path, e))?;
    let meta: TopicMeta = serde_json::from_slice(&bytes).map_err(|e| LogError::CorruptSegment {
        file: meta_path.clone(),
        position: e.column() as u64,
        reason: format!("topic metadata is not valid: {e}"),
    })?;
    meta.config.validate()?;
    let shared: SharedConfig = Arc::new(RwLock::new(Arc::new(meta.config.clone())));
    let mut partitions = Vec::with_capacity(meta.partitions as usize);
    for p in 0..meta.partitions {
        let (partition, recovery) =
            Partition::open(&meta.name, p, dir.join(p.to_string()), shared.clone())?;
        if let Some(r) = recovery
            && r.truncated_bytes > 0
        {
            tracing::warn!(
                topic = %meta.name,
                partition = p,
                cut_bytes = r.truncated_bytes,
                "recovered partition after an unclean shutdown: {}",
                r.reason.unwrap_or_default()
            );
        }
        partitions.push(Arc::new(partition));
    }
    Ok(Topic {
        name: meta.name,
        id: meta.id,
        dir: dir.to_path_buf(),
        created_ms: meta.created_ms,
        config: shared,
        partitions: RwLock::new(partitions),
    })
}

/// Takes an exclusive advisory lock on `<root>/.lock` and writes our pid in it
/// so that the error seen by a second process can name the holder.
fn acquire_lock(root: &Path) -> Result<File> {
    let path = root.join(".lock");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| LogError::io("opening lock file", &path, e))?;
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = (&file).read_to_string(&mut holder);
            let holder = holder.trim();
            return Err(LogError::DirectoryInUse {
                path: root.to_path_buf(),
                holder: (!holder.is_empty()).then(|| holder.to_string()),
            });
        }
        Err(fs::TryLockError::Error(e)) => return Err(LogError::io("locking", &path, e)),
    }
    let stamp = format!("pid {}", std::process::id());
    file.set_len(0)
        .and_then(|()| std::os::unix::fs::FileExt::write_all_at(&file, stamp.as_bytes(), 0))
        .map_err(|e| LogError::io("writing lock file", &path, e))?;
    Ok(file)
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod txn_tests;
