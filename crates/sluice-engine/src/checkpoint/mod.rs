//! The job's checkpoint: one RocksDB database per job
//! (`checkpoints/<job>/`) holding offsets, the planned batch, operator
//! state and result tables, so that one synced write batch commits a
//! batch's results, state and next offsets together.
//!
//! Schema (version [`SCHEMA_VERSION`]; documented in ARCHITECTURE.md):
//!
//! | where                     | key                 | value (JSON unless noted)           |
//! |---------------------------|---------------------|-------------------------------------|
//! | default CF                | `schema`            | `{version, job, created_ms}`        |
//! | default CF                | `batch.planned`     | [`PlannedBatch`]                    |
//! | default CF                | `batch.committed`   | [`CommittedBatch`]                  |
//! | default CF                | `operator.<name>`   | [`OperatorMeta`]                    |
//! | default CF                | `table.<name>`      | [`OperatorMeta`] of the table       |
//! | CF `state.<operator>`     | encoded key         | encoded state (see `data`)    |
//! | CF `table.<name>`         | encoded key         | encoded value, or [`sums`] operands |
//!
//! The exactly-once protocol (PRODUCT.md): the driver writes
//! `batch.planned` (synced) before any task runs, then commits results,
//! state and `batch.committed` (with the next offsets) in one synced
//! `WriteBatch`. What to do at start-up is decided by the pure function
//! [`decide_resume`].
//!
//! This module owns the database and its schema; it never interprets
//! operator state (the `state` and `plan` modules do).

mod memory;
pub mod sums;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use memory::{DEFAULT_STATE_MEMORY, MIN_STATE_MEMORY, StateMemory};

use rocksdb::{ColumnFamily, DB, Options, WriteBatch, WriteOptions};
use serde::{Deserialize, Serialize};

/// Version of the layout above. Bumped on any incompatible change; a
/// checkpoint written by a newer version is refused, never rewritten.
/// Version 2: result tables may hold `sums` merge operands.
pub const SCHEMA_VERSION: u32 = 2;

const KEY_SCHEMA: &[u8] = b"schema";
const KEY_PLANNED: &[u8] = b"batch.planned";
const KEY_COMMITTED: &[u8] = b"batch.committed";
const OPERATOR_PREFIX: &str = "operator.";
const TABLE_PREFIX: &str = "table.";
/// Column family prefix of operator state.
pub const STATE_CF_PREFIX: &str = "state.";
/// Column family prefix of result tables.
pub const TABLE_CF_PREFIX: &str = "table.";

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint {path}: {context}: {source}")]
    Rocks {
        path: PathBuf,
        context: &'static str,
        source: rocksdb::Error,
    },
    #[error(
        "checkpoint {path} has schema version {found}, this build understands up to {supported}; use a newer sluice or start a new job"
    )]
    NewerSchema {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("checkpoint {path} belongs to job {found:?}, not {expected:?}")]
    OtherJob {
        path: PathBuf,
        found: String,
        expected: String,
    },
    #[error(
        "operator {operator:?} changed incompatibly: the checkpoint holds {stored}, the job now declares {now}. Rename the operator to start it fresh, or rerun with --reset-state to drop all operator state (offsets and result tables are kept)"
    )]
    IncompatibleOperator {
        operator: String,
        stored: String,
        now: String,
    },
    #[error(
        "result table {table:?} holds {stored}, the job now writes {now}; write to a table with another name, or start the job with a new checkpoint"
    )]
    IncompatibleTable {
        table: String,
        stored: String,
        now: String,
    },
    #[error("checkpoint {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    #[error("no checkpoint for job {job:?} in {path}")]
    Missing { job: String, path: PathBuf },
}

pub type Result<T, E = CheckpointError> = std::result::Result<T, E>;

/// One partition's planned range `[from, until)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Range {
    pub partition: i32,
    pub from: i64,
    pub until: i64,
}

/// A batch whose ranges are fixed before it runs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedBatch {
    pub batch_id: u64,
    pub batch_time_ms: i64,
    /// Ranges per source name.
    pub ranges: BTreeMap<String, Vec<Range>>,
    /// Records skipped because retention deleted them (on-data-loss=skip).
    #[serde(default)]
    pub lost: BTreeMap<String, Vec<Range>>,
}

/// The last batch whose results, state and offsets are committed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommittedBatch {
    pub batch_id: u64,
    pub batch_time_ms: i64,
    /// Next offset to read, per source and partition.
    pub offsets: BTreeMap<String, BTreeMap<i32, i64>>,
    /// Records lost to retention so far (on-data-loss=skip), cumulative.
    #[serde(default)]
    pub lost_records: u64,
}

/// What a stateful operator or result table stores, by type name (see
/// `data::Data::type_name`). Changing any field is incompatible.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorMeta {
    pub name: String,
    pub kind: String,
    pub key_type: String,
    pub state_type: String,
}

impl OperatorMeta {
    fn signature(&self) -> String {
        format!(
            "{} keyed by {} with state {}",
            self.kind, self.key_type, self.state_type
        )
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct SchemaRecord {
    version: u32,
    job: String,
    created_ms: i64,
}

/// What the driver does first, from what the checkpoint holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resume {
    /// A new job: no batch committed yet, nothing planned.
    Fresh,
    /// A batch was planned but not committed: run it again, same ranges
    /// and batch time.
    Replay(PlannedBatch),
    /// Plan batch `committed.batch_id + 1` from the committed offsets.
    Next(CommittedBatch),
}

/// The start-up decision of the exactly-once protocol, without I/O.
pub fn decide_resume(
    committed: Option<CommittedBatch>,
    planned: Option<PlannedBatch>,
) -> std::result::Result<Resume, String> {
    match (committed, planned) {
        (None, None) => Ok(Resume::Fresh),
        (None, Some(p)) if p.batch_id == 1 => Ok(Resume::Replay(p)),
        (None, Some(p)) => Err(format!(
            "batch {} is planned but no earlier batch was ever committed",
            p.batch_id
        )),
        (Some(c), None) => Ok(Resume::Next(c)),
        (Some(c), Some(p)) if p.batch_id == c.batch_id + 1 => Ok(Resume::Replay(p)),
        (Some(c), Some(p)) if p.batch_id <= c.batch_id => Ok(Resume::Next(c)),
        (Some(c), Some(p)) => Err(format!(
            "batch {} is planned but only batch {} is committed",
            p.batch_id, c.batch_id
        )),
    }
}

/// The size of one column family of operator state or one result table.
#[derive(Debug, Clone, Serialize)]
pub struct StateSize {
    pub name: String,
    /// `table` or `state`.
    pub kind: &'static str,
    /// RocksDB's estimate.
    pub keys: u64,
    pub bytes: u64,
}

/// An open checkpoint database.
pub struct Checkpoint {
    /// Shared with read-only views ([`Checkpoint::view`]).
    db: std::sync::Arc<DB>,
    path: PathBuf,
    /// Column families besides `default`, as opened.
    column_families: Vec<String>,
    /// The process's state memory budget this database draws from.
    memory: StateMemory,
}

impl std::fmt::Debug for Checkpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Checkpoint")
            .field("path", &self.path)
            .finish()
    }
}

fn db_options(memory: &StateMemory) -> Options {
    let mut opts = Options::default();
    memory.apply(&mut opts);
    opts.create_if_missing(true);
    opts.create_missing_column_families(true);
    // One job per database; keep RocksDB's own threads and logs small.
    opts.increase_parallelism(2);
    opts.set_keep_log_file_num(3);
    opts.set_max_log_file_size(8 << 20);
    let mut opts = match with_string_options(&mut opts) {
        Ok(hinted) => hinted,
        Err(e) => {
            tracing::warn!("RocksDB options without the insert hint and level-0 triggers: {e}");
            opts
        }
    };
    // After the hint: `get_options_from_string` copies only what RocksDB's
    // options string knows, not a Rust merge callback.
    sums::install(&mut opts);
    opts
}

/// Batches of writes a result table's memtable is sized to hold
/// ([`Checkpoint::table_memtable_bytes`]).
pub const TABLE_MEMTABLE_BATCHES: usize = 2;

/// The smallest memtable a result table is given: a flush has a fixed
/// cost (a file, its filter and index, two syncs).
const TABLE_MEMTABLE_MIN_BYTES: usize = 4 << 20;

/// Level-0 files from which RocksDB compacts them into the level below.
/// A batch that updates most keys of a table (every word again) leaves
/// level-0 files that each span the whole table, and each compaction from
/// level 0 rewrites all of it: from 16 files instead of RocksDB's 4 the
/// table is rewritten about a third as often (5 M updated keys, three
/// passes: 16.2 -> 12.6 s). Point reads check the extra files' pinned
/// filters first.
pub(crate) const LEVEL0_COMPACTION_TRIGGER: usize = 16;

/// `opts` with what rust-rocksdb has no setters for, and the level-0
/// triggers. The memtable insert hint: a batch writes its result-table
/// keys in key order (`merge_bucket` sorts each bucket), and by default
/// each insert searches the skip list from the top, since older versions
/// of a key always lie between two of a batch's keys: with the hint it
/// starts from the previous insert. Half of the demo's per-batch time was
/// its commit of ~26 k keys, two thirds of that the search.
fn with_string_options(opts: &mut Options) -> std::result::Result<Options, rocksdb::Error> {
    // The returned options share the block cache and write buffer manager
    // with `opts` (shared pointers on the C++ side); the process's
    // `StateMemory` keeps their Rust handles alive as well.
    opts.get_options_from_string(format!(
        "memtable_insert_with_hint_prefix_extractor=rocksdb.FixedPrefix.0;\
         level0_file_num_compaction_trigger={LEVEL0_COMPACTION_TRIGGER};\
         level0_slowdown_writes_trigger={};\
         level0_stop_writes_trigger={}",
        LEVEL0_COMPACTION_TRIGGER * 5 / 2,
        LEVEL0_COMPACTION_TRIGGER * 4,
    ))
}

impl Checkpoint {
    /// Opens (or creates) the checkpoint of `job` in `path`, with a column
    /// family for every name in `column_families` (created if missing),
    /// under a budget of its own ([`Checkpoint::open_within`] shares one).
    pub fn open(path: &Path, job: &str, column_families: &[String]) -> Result<Checkpoint> {
        Self::open_within(path, job, column_families, &StateMemory::default())
    }

    /// [`Checkpoint::open`] drawing on the process's state memory budget.
    pub fn open_within(
        path: &Path,
        job: &str,
        column_families: &[String],
        memory: &StateMemory,
    ) -> Result<Checkpoint> {
        std::fs::create_dir_all(path).map_err(|e| CheckpointError::Corrupt {
            path: path.to_path_buf(),
            reason: format!("cannot create the directory: {e}"),
        })?;
        let rocks = |context| {
            move |source| CheckpointError::Rocks {
                path: path.to_path_buf(),
                context,
                source,
            }
        };
        let mut names: Vec<String> = DB::list_cf(&Options::default(), path).unwrap_or_default();
        for cf in column_families {
            if !names.contains(cf) {
                names.push(cf.clone());
            }
        }
        names.retain(|n| n != "default");
        // Each column family gets the budget's options too (`open_cf`
        // would give them RocksDB's defaults: no filters, 64 MiB memtables
        // and a block cache of their own), `default` (the batch records)
        // included: rust-rocksdb adds it with the defaults when it is not
        // named.
        let opts = db_options(memory);
        let db = DB::open_cf_with_opts(
            &opts,
            path,
            std::iter::once("default")
                .chain(names.iter().map(String::as_str))
                .map(|n| (n, opts.clone())),
        )
        .map_err(rocks("cannot open"))?;
        let checkpoint = Checkpoint {
            db: std::sync::Arc::new(db),
            path: path.to_path_buf(),
            column_families: names,
            memory: memory.clone(),
        };
        match checkpoint.get_json::<SchemaRecord>(KEY_SCHEMA)? {
            Some(s) if s.version > SCHEMA_VERSION => Err(CheckpointError::NewerSchema {
                path: path.to_path_buf(),
                found: s.version,
                supported: SCHEMA_VERSION,
            }),
            Some(s) if s.job != job => Err(CheckpointError::OtherJob {
                path: path.to_path_buf(),
                found: s.job,
                expected: job.to_owned(),
            }),
            Some(s) if s.version < SCHEMA_VERSION => {
                // Version 1 never held merge operands, so it reads as
                // version 2; once this build writes, tables may hold
                // operands older builds cannot fold, and they must refuse.
                let record = SchemaRecord {
                    version: SCHEMA_VERSION,
                    ..s
                };
                checkpoint.put_json_synced(KEY_SCHEMA, &record)?;
                Ok(checkpoint)
            }
            Some(_) => Ok(checkpoint),
            None => {
                let record = SchemaRecord {
                    version: SCHEMA_VERSION,
                    job: job.to_owned(),
                    created_ms: sluice_log::common::now_ms(),
                };
                checkpoint.put_json_synced(KEY_SCHEMA, &record)?;
                Ok(checkpoint)
            }
        }
    }

    /// Opens an existing checkpoint without writing (the CLI's `state`
    /// commands; works while the job runs).
    pub fn open_read_only(path: &Path, job: &str) -> Result<Checkpoint> {
        if !path.join("CURRENT").exists() {
            return Err(CheckpointError::Missing {
                job: job.to_owned(),
                path: path.to_path_buf(),
            });
        }
        let names =
            DB::list_cf(&Options::default(), path).map_err(|source| CheckpointError::Rocks {
                path: path.to_path_buf(),
                context: "cannot list column families",
                source,
            })?;
        let mut opts = Options::default();
        sums::install(&mut opts);
        let db = DB::open_cf_with_opts_for_read_only(
            &opts,
            path,
            names.iter().map(|n| (n, opts.clone())),
            false,
        )
        .map_err(|source| CheckpointError::Rocks {
            path: path.to_path_buf(),
            context: "cannot open read-only",
            source,
        })?;
        Ok(Checkpoint {
            db: std::sync::Arc::new(db),
            path: path.to_path_buf(),
            column_families: names.into_iter().filter(|n| n != "default").collect(),
            memory: StateMemory::default(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn db(&self) -> &DB {
        &self.db
    }

    /// The state memory budget this database draws from.
    pub fn memory(&self) -> &StateMemory {
        &self.memory
    }

    /// Another handle on the same open database, for reading from another
    /// thread while the job writes (the web console's result tables).
    /// RocksDB reads see the last commit; this handle must never write.
    pub(crate) fn view(&self) -> Checkpoint {
        Checkpoint {
            db: self.db.clone(),
            path: self.path.clone(),
            column_families: self.column_families.clone(),
            memory: self.memory.clone(),
        }
    }

    fn rocks(&self, context: &'static str) -> impl FnOnce(rocksdb::Error) -> CheckpointError + '_ {
        move |source| CheckpointError::Rocks {
            path: self.path.clone(),
            context,
            source,
        }
    }

    fn corrupt(&self, reason: String) -> CheckpointError {
        CheckpointError::Corrupt {
            path: self.path.clone(),
            reason,
        }
    }

    fn get_json<T: for<'de> Deserialize<'de>>(&self, key: &[u8]) -> Result<Option<T>> {
        match self.db.get(key).map_err(self.rocks("cannot read"))? {
            None => Ok(None),
            Some(bytes) => serde_json::from_slice(&bytes)
                .map(Some)
                .map_err(|e| self.corrupt(format!("{}: {e}", String::from_utf8_lossy(key)))),
        }
    }

    fn put_json_synced<T: Serialize>(&self, key: &[u8], value: &T) -> Result<()> {
        let mut batch = WriteBatch::default();
        batch.put(key, json(value));
        self.write(batch)
    }

    /// Writes a batch durably (fsync of the WAL before returning).
    pub fn write(&self, batch: WriteBatch) -> Result<()> {
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.db
            .write_opt(batch, &opts)
            .map_err(self.rocks("cannot write"))
    }

    /// Writes a batch without waiting for the WAL's fsync: for a database
    /// that is a cache of a record kept elsewhere (a task of a job on many
    /// workers, whose Kafka transaction committed first). A crash may lose
    /// the last such writes, never part of one.
    pub fn write_unsynced(&self, batch: WriteBatch) -> Result<()> {
        self.db
            .write_opt(batch, &WriteOptions::default())
            .map_err(self.rocks("cannot write"))
    }

    /// [`Checkpoint::commit`] without the fsync (see
    /// [`Checkpoint::write_unsynced`]).
    pub fn commit_unsynced(
        &self,
        mut writes: WriteBatch,
        committed: &CommittedBatch,
    ) -> Result<()> {
        writes.put(KEY_COMMITTED, json(committed));
        self.write_unsynced(writes)
    }

    pub fn committed(&self) -> Result<Option<CommittedBatch>> {
        self.get_json(KEY_COMMITTED)
    }

    pub fn planned(&self) -> Result<Option<PlannedBatch>> {
        self.get_json(KEY_PLANNED)
    }

    /// Start-up decision; see [`decide_resume`].
    pub fn resume(&self) -> Result<Resume> {
        decide_resume(self.committed()?, self.planned()?).map_err(|r| self.corrupt(r))
    }

    /// Step 1 of the protocol: the batch's ranges and time, synced.
    pub fn write_planned(&self, planned: &PlannedBatch) -> Result<()> {
        self.put_json_synced(KEY_PLANNED, planned)
    }

    /// Step 3: adds `committed` to the batch's writes and syncs them all.
    pub fn commit(&self, mut writes: WriteBatch, committed: &CommittedBatch) -> Result<()> {
        writes.put(KEY_COMMITTED, json(committed));
        self.write(writes)
    }

    /// The memtable size for result tables whose batches write
    /// `batch_write_bytes`: room for about [`TABLE_MEMTABLE_BATCHES`]
    /// batches, a power of two between 4 MiB and the budget's memtable
    /// size.
    ///
    /// A result table's batch rewrites the same keys as the batch before
    /// (every word seen again), and its memtable keeps every version: each
    /// insert walks past the older versions of the keys around it, further
    /// as the memtable fills. The demo's commit of ~26 k counts went from
    /// 6 ms after a flush to 14 ms before the next one in a 24 MiB
    /// memtable. A memtable of two batches' writes flushes a small file
    /// every few batches instead; a batch that writes as much as the
    /// budget's memtable (millions of keys) keeps the size it had.
    pub fn table_memtable_bytes(&self, batch_write_bytes: usize) -> usize {
        let most = self.memory.write_buffer_bytes();
        batch_write_bytes
            .saturating_mul(TABLE_MEMTABLE_BATCHES)
            .checked_next_power_of_two()
            .unwrap_or(most)
            .clamp(TABLE_MEMTABLE_MIN_BYTES.min(most), most)
    }

    /// Every result table's column family.
    fn table_cfs(&self) -> impl Iterator<Item = Result<&ColumnFamily>> {
        self.column_families
            .iter()
            .filter(|n| n.starts_with(TABLE_CF_PREFIX))
            .map(|n| self.cf(n))
    }

    /// Sets the memtable size of every result table (RocksDB's mutable
    /// `write_buffer_size`; each call also rewrites RocksDB's options file,
    /// so callers change it only when the size moves).
    pub fn set_table_memtables(&self, bytes: usize) -> Result<()> {
        let value = bytes.to_string();
        for cf in self.table_cfs() {
            let cf = cf?;
            self.db
                .set_options_cf(&cf, &[("write_buffer_size", value.as_str())])
                .map_err(self.rocks("cannot size the result tables' memtables"))?;
        }
        Ok(())
    }

    /// Starts, without waiting, the flush of every result table whose
    /// memtable is within an eighth of `memtable_bytes`: right after a
    /// commit, so that it runs while the job waits for its next batch.
    /// RocksDB would start it at the next write, the next batch's plan,
    /// and on two cores the flush then took one of them for most of that
    /// batch's compute (the demo's tasks shared the other).
    pub fn flush_filled_tables(&self, memtable_bytes: usize) -> Result<()> {
        self.flush_tables_holding(memtable_bytes - memtable_bytes / 8)
    }

    /// Starts, without waiting, the flush of every result table whose
    /// active memtable holds at least `bytes`.
    pub fn flush_tables_holding(&self, bytes: usize) -> Result<()> {
        let mut opts = rocksdb::FlushOptions::default();
        opts.set_wait(false);
        for cf in self.table_cfs() {
            let cf = cf?;
            let active = self
                .db
                .property_int_value_cf(&cf, "rocksdb.cur-size-active-mem-table")
                .map_err(self.rocks("cannot read a memtable's size"))?
                .unwrap_or(0);
            if active as usize >= bytes.max(1) {
                self.db
                    .flush_cf_opt(&cf, &opts)
                    .map_err(self.rocks("cannot start a memtable flush"))?;
            }
        }
        Ok(())
    }

    /// For a clean stop: flushes the memtables, then lets running and
    /// pending compactions finish (for at most `limit`). Closing the
    /// database aborts a compaction midway, and a job that runs until
    /// caught up and stops, again and again, would start the same
    /// compaction at each open and abort it at each close: its level-0
    /// files, and its disk, grew by a pass of every key per run (5 M keys:
    /// 110 MB), until RocksDB stopped writes altogether.
    pub fn settle(&self, limit: std::time::Duration) -> Result<()> {
        self.flush()?;
        let busy = |property: &str| {
            self.column_families.iter().any(|n| {
                self.db.cf_handle(n).is_some_and(|cf| {
                    matches!(self.db.property_int_value_cf(&cf, property), Ok(Some(n)) if n > 0)
                })
            })
        };
        if !busy("rocksdb.compaction-pending") && !busy("rocksdb.num-running-compactions") {
            return Ok(());
        }
        tracing::info!(
            "finishing the checkpoint's compactions before stopping (at most {})",
            humantime::format_duration(limit)
        );
        let mut opts = rocksdb::WaitForCompactOptions::default();
        opts.set_timeout(limit.as_micros().try_into().unwrap_or(u64::MAX));
        self.db
            .wait_for_compact(&opts)
            .map_err(self.rocks("cannot finish compactions"))
    }

    /// Writes every column family's memtable to table files and waits:
    /// for a clean stop, so the next open has no log to replay.
    pub fn flush(&self) -> Result<()> {
        let cfs: Vec<&ColumnFamily> = self
            .column_families
            .iter()
            .filter_map(|n| self.db.cf_handle(n))
            .collect();
        let mut opts = rocksdb::FlushOptions::default();
        opts.set_wait(true);
        self.db
            .flush_opt(&opts)
            .and_then(|()| self.db.flush_cfs_opt(&cfs, &opts))
            .map_err(self.rocks("cannot flush"))
    }

    pub fn cf(&self, name: &str) -> Result<&ColumnFamily> {
        self.db
            .cf_handle(name)
            .ok_or_else(|| self.corrupt(format!("column family {name} is missing")))
    }

    /// Records the job's stateful operators and result tables, refusing an
    /// incompatible change. With `reset_state`, operator state is dropped
    /// first (offsets and result tables stay).
    pub fn register(
        &mut self,
        metas: &[OperatorMeta],
        tables: &[OperatorMeta],
        reset_state: bool,
    ) -> Result<()> {
        if reset_state {
            self.reset_state()?;
        }
        let mut batch = WriteBatch::default();
        for (prefix, list) in [(OPERATOR_PREFIX, metas), (TABLE_PREFIX, tables)] {
            for meta in list {
                let key = format!("{prefix}{}", meta.name);
                match self.get_json::<OperatorMeta>(key.as_bytes())? {
                    Some(stored) if stored != *meta => {
                        return Err(if prefix == TABLE_PREFIX {
                            CheckpointError::IncompatibleTable {
                                table: meta.name.clone(),
                                stored: stored.signature(),
                                now: meta.signature(),
                            }
                        } else {
                            CheckpointError::IncompatibleOperator {
                                operator: meta.name.clone(),
                                stored: stored.signature(),
                                now: meta.signature(),
                            }
                        });
                    }
                    Some(_) => {}
                    None => batch.put(key.as_bytes(), json(meta)),
                }
            }
        }
        self.write(batch)
    }

    fn reset_state(&mut self) -> Result<()> {
        let names = self.column_families.clone();
        let path = self.path.clone();
        let rocks = |context| {
            let path = path.clone();
            move |source| CheckpointError::Rocks {
                path,
                context,
                source,
            }
        };
        // Before the job runs nothing else holds the database.
        let db = std::sync::Arc::get_mut(&mut self.db).ok_or_else(|| CheckpointError::Corrupt {
            path: path.clone(),
            reason: "state can only be reset before the job runs".into(),
        })?;
        for name in names.iter().filter(|n| n.starts_with(STATE_CF_PREFIX)) {
            db.drop_cf(name).map_err(rocks("cannot drop state"))?;
            db.create_cf(name, &db_options(&self.memory))
                .map_err(rocks("cannot recreate state"))?;
        }
        let mut batch = WriteBatch::default();
        for item in self.db.prefix_iterator(OPERATOR_PREFIX.as_bytes()) {
            let (key, _) = item.map_err(self.rocks("cannot scan operators"))?;
            if !key.starts_with(OPERATOR_PREFIX.as_bytes()) {
                break;
            }
            batch.delete(&key);
        }
        self.write(batch)
    }

    /// Registered result tables (for the CLI).
    pub fn tables(&self) -> Result<Vec<OperatorMeta>> {
        let mut out = Vec::new();
        for item in self.db.prefix_iterator(TABLE_PREFIX.as_bytes()) {
            let (key, value) = item.map_err(self.rocks("cannot scan tables"))?;
            if !key.starts_with(TABLE_PREFIX.as_bytes()) {
                break;
            }
            out.push(
                serde_json::from_slice(&value)
                    .map_err(|e| self.corrupt(format!("table metadata: {e}")))?,
            );
        }
        Ok(out)
    }

    /// Estimated keys and bytes of each column family of state and of
    /// each result table (cheap: RocksDB's properties, no scan).
    pub fn state_sizes(&self) -> Vec<StateSize> {
        self.column_families
            .iter()
            .filter_map(|name| {
                let (short, kind) = if let Some(t) = name.strip_prefix(TABLE_CF_PREFIX) {
                    (t, "table")
                } else {
                    (name.strip_prefix(STATE_CF_PREFIX)?, "state")
                };
                let cf = self.db.cf_handle(name)?;
                let property = |p: &str| {
                    self.db
                        .property_int_value_cf(cf, p)
                        .ok()
                        .flatten()
                        .unwrap_or(0)
                };
                Some(StateSize {
                    name: short.to_owned(),
                    kind,
                    keys: property("rocksdb.estimate-num-keys"),
                    bytes: property("rocksdb.estimate-live-data-size")
                        + property("rocksdb.cur-size-all-mem-tables"),
                })
            })
            .collect()
    }

    /// Approximate bytes of live state and tables (progress reports).
    pub fn state_size_bytes(&self) -> u64 {
        std::iter::once("default")
            .chain(self.column_families.iter().map(String::as_str))
            .filter_map(|n| self.db.cf_handle(n))
            .filter_map(|cf| {
                self.db
                    .property_int_value_cf(cf, "rocksdb.estimate-live-data-size")
                    .ok()
                    .flatten()
                    .zip(
                        self.db
                            .property_int_value_cf(cf, "rocksdb.cur-size-all-mem-tables")
                            .ok()
                            .flatten(),
                    )
                    .map(|(a, b)| a + b)
            })
            .sum()
    }
}

fn json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).unwrap_or_else(|e| unreachable!("checkpoint records serialize: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn planned(id: u64) -> PlannedBatch {
        PlannedBatch {
            batch_id: id,
            batch_time_ms: 1000 * id as i64,
            ranges: BTreeMap::from([(
                "t".into(),
                vec![Range {
                    partition: 0,
                    from: 0,
                    until: 10,
                }],
            )]),
            lost: BTreeMap::new(),
        }
    }

    fn committed(id: u64) -> CommittedBatch {
        CommittedBatch {
            batch_id: id,
            batch_time_ms: 1000 * id as i64,
            ..Default::default()
        }
    }

    #[test]
    fn resume_decisions() {
        assert_eq!(decide_resume(None, None), Ok(Resume::Fresh));
        assert_eq!(
            decide_resume(None, Some(planned(1))),
            Ok(Resume::Replay(planned(1)))
        );
        assert!(decide_resume(None, Some(planned(2))).is_err());
        assert_eq!(
            decide_resume(Some(committed(3)), None),
            Ok(Resume::Next(committed(3)))
        );
        assert_eq!(
            decide_resume(Some(committed(3)), Some(planned(4))),
            Ok(Resume::Replay(planned(4)))
        );
        assert_eq!(
            decide_resume(Some(committed(3)), Some(planned(3))),
            Ok(Resume::Next(committed(3)))
        );
        assert!(decide_resume(Some(committed(3)), Some(planned(5))).is_err());
    }

    #[test]
    fn the_string_options_are_options_rocksdb_knows() {
        let mut opts = Options::default();
        assert!(with_string_options(&mut opts).is_ok());
    }

    #[test]
    fn result_tables_get_memtables_of_two_batches_within_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let table = format!("{TABLE_CF_PREFIX}counts");
        let cfs = vec![table.clone(), "state.other".to_string()];
        let cp = Checkpoint::open(dir.path(), "job", &cfs).unwrap();
        let most = cp.memory().write_buffer_bytes();
        assert_eq!(most, 24 << 20, "the default budget's memtable");
        assert_eq!(cp.table_memtable_bytes(0), 4 << 20);
        assert_eq!(cp.table_memtable_bytes(1_500_000), 4 << 20);
        assert_eq!(cp.table_memtable_bytes(3_000_000), 8 << 20);
        assert_eq!(cp.table_memtable_bytes(40 << 20), most);
        assert_eq!(cp.table_memtable_bytes(usize::MAX), most);
        let small = StateMemory::new(16 << 20);
        let tiny = Checkpoint::open_within(&dir.path().join("tiny"), "job", &cfs, &small).unwrap();
        assert!(tiny.table_memtable_bytes(0) <= small.write_buffer_bytes());

        // 6 MiB into a table sized for 4 MiB flushes a file; the same into
        // a state column family (left at 24 MiB) does not.
        cp.set_table_memtables(4 << 20).unwrap();
        let level0 = |name: &str| {
            cp.db
                .property_int_value_cf(cp.cf(name).unwrap(), "rocksdb.num-files-at-level0")
                .unwrap()
                .unwrap()
        };
        for name in [&table, "state.other"] {
            let cf = cp.cf(name).unwrap();
            for i in 0..6u32 << 10 {
                cp.db.put_cf(cf, i.to_be_bytes(), [7u8; 1024]).unwrap();
            }
        }
        let flushed = (0..200).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(10));
            level0(&table) > 0
        });
        assert!(
            flushed,
            "the result table's 4 MiB memtable was never flushed"
        );
        assert_eq!(level0("state.other"), 0);
    }

    #[test]
    fn a_result_table_memtable_a_batch_nearly_filled_is_flushed_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let table = format!("{TABLE_CF_PREFIX}counts");
        let cp = Checkpoint::open(dir.path(), "job", std::slice::from_ref(&table)).unwrap();
        // RocksDB's own size far above the one asked about, so that only
        // `flush_filled_tables` can flush.
        cp.set_table_memtables(24 << 20).unwrap();
        let cf = cp.cf(&table).unwrap();
        let level0 = || {
            cp.db
                .property_int_value_cf(cf, "rocksdb.num-files-at-level0")
                .unwrap()
                .unwrap()
        };
        let write = |from: u32, kib: u32| {
            for i in from..from + kib {
                cp.db.put_cf(cf, i.to_be_bytes(), [7u8; 1024]).unwrap();
            }
        };
        // Half of 4 MiB: left alone.
        write(0, 2 << 10);
        cp.flush_filled_tables(4 << 20).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert_eq!(level0(), 0);
        // Past seven eighths of it.
        write(2 << 10, 2 << 10);
        assert_eq!(level0(), 0);
        cp.flush_filled_tables(4 << 20).unwrap();
        let flushed = (0..300).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(10));
            level0() > 0
        });
        assert!(flushed, "a memtable past 3.5 MiB of 4 was not flushed");
        // Between batches: whatever holds at least the amount asked about
        // (as RocksDB counts it: the memtable's arena blocks).
        let files = level0();
        write(0, 256);
        let active = cp
            .db
            .property_int_value_cf(cf, "rocksdb.cur-size-active-mem-table")
            .unwrap()
            .unwrap() as usize;
        cp.flush_tables_holding(active + 1).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert_eq!(level0(), files, "flushed below the amount asked for");
        cp.flush_tables_holding(active).unwrap();
        let flushed = (0..300).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(10));
            level0() > files
        });
        assert!(
            flushed,
            "a memtable holding the amount asked for was not flushed"
        );
    }

    /// Every column family, `default` (the batch records) included, reads
    /// through the budget's one block cache: none has a cache of its own.
    #[test]
    fn every_column_family_draws_on_the_budget() {
        let dir = tempfile::tempdir().unwrap();
        let memory = StateMemory::new(64 << 20);
        let cfs = vec!["state.counts".to_string(), "table.words".to_string()];
        let cp = Checkpoint::open_within(dir.path(), "job", &cfs, &memory).unwrap();
        let capacity = |name: &str| {
            let cf = cp.db().cf_handle(name).unwrap();
            cp.db()
                .property_int_value_cf(&cf, "rocksdb.block-cache-capacity")
                .unwrap()
                .unwrap()
        };
        let shared = capacity("state.counts");
        assert_eq!(shared, memory.bytes() / 4 * 3, "the budget's cache");
        for name in ["default", "table.words"] {
            assert_eq!(capacity(name), shared, "column family {name}");
        }
    }

    #[test]
    fn plan_commit_and_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let cfs = vec!["state.counts".to_string()];
        {
            let cp = Checkpoint::open(dir.path(), "job", &cfs).unwrap();
            assert_eq!(cp.resume().unwrap(), Resume::Fresh);
            cp.write_planned(&planned(1)).unwrap();
            let mut writes = WriteBatch::default();
            writes.put_cf(cp.cf("state.counts").unwrap(), b"k", b"v");
            cp.commit(writes, &committed(1)).unwrap();
            cp.write_planned(&planned(2)).unwrap();
        }
        let cp = Checkpoint::open(dir.path(), "job", &cfs).unwrap();
        assert_eq!(cp.resume().unwrap(), Resume::Replay(planned(2)));
        let cf = cp.cf("state.counts").unwrap();
        assert_eq!(
            cp.db().get_cf(cf, b"k").unwrap().as_deref(),
            Some(&b"v"[..])
        );
        drop(cp);
        let err = Checkpoint::open(dir.path(), "other", &cfs).unwrap_err();
        assert!(err.to_string().contains("belongs to job"), "{err}");
    }

    /// A version 1 checkpoint (no merge operands) opens and is marked
    /// version 2 once this build may write operands; a version 3 one is
    /// refused with both versions named.
    #[test]
    fn an_older_schema_is_upgraded_on_open_and_a_newer_one_refused() {
        let dir = tempfile::tempdir().unwrap();
        let record = |version| SchemaRecord {
            version,
            job: "job".into(),
            created_ms: 7,
        };
        {
            let cp = Checkpoint::open(dir.path(), "job", &[]).unwrap();
            cp.put_json_synced(KEY_SCHEMA, &record(1)).unwrap();
        }
        let cp = Checkpoint::open(dir.path(), "job", &[]).unwrap();
        let s = cp.get_json::<SchemaRecord>(KEY_SCHEMA).unwrap().unwrap();
        assert_eq!((s.version, s.created_ms), (SCHEMA_VERSION, 7));
        cp.put_json_synced(KEY_SCHEMA, &record(SCHEMA_VERSION + 1))
            .unwrap();
        drop(cp);
        let err = Checkpoint::open(dir.path(), "job", &[]).unwrap_err();
        assert!(err.to_string().contains("schema version 3"), "{err}");
    }

    #[test]
    fn incompatible_operator_is_refused_and_reset_state_clears_it() {
        let dir = tempfile::tempdir().unwrap();
        let cfs = vec!["state.sessions".to_string()];
        let meta = |state: &str| OperatorMeta {
            name: "sessions".into(),
            kind: "map_with_state".into(),
            key_type: "string".into(),
            state_type: state.into(),
        };
        let mut cp = Checkpoint::open(dir.path(), "job", &cfs).unwrap();
        cp.register(&[meta("u64")], &[], false).unwrap();
        let mut w = WriteBatch::default();
        w.put_cf(cp.cf("state.sessions").unwrap(), b"k", b"v");
        cp.write(w).unwrap();
        cp.register(&[meta("u64")], &[], false).unwrap();
        let err = cp.register(&[meta("string")], &[], false).unwrap_err();
        assert!(
            err.to_string()
                .contains("operator \"sessions\" changed incompatibly"),
            "{err}"
        );
        cp.register(&[meta("string")], &[], true).unwrap();
        let cf = cp.cf("state.sessions").unwrap();
        assert_eq!(cp.db().get_cf(cf, b"k").unwrap(), None);
    }
}
