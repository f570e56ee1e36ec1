//! The state memory budget: one setting (`--state-memory`) bounds what a
//! process's state costs in memory, whatever the number of keys, as
//! Flink's managed memory does for its RocksDB backend. Every checkpoint
//! database a process opens (the job's, or each task's on many workers)
//! shares one RocksDB block cache; memtables are charged to that cache
//! through one write buffer manager, and index and filter blocks live in
//! it too, so a table of 50 M keys holds no more memory than one of 50 k.
//! A share is left for the merge tasks' caches of hot values, and the
//! size of a batch is derived from the budget.
//!
//! This module only sizes things; it never reads or writes state.

use std::sync::Arc;

use rocksdb::{BlockBasedOptions, Cache, Options, WriteBufferManager};

/// Default budget: enough for the hot keys of most jobs, small next to a
/// server's memory.
pub const DEFAULT_STATE_MEMORY: u64 = 256 << 20;

/// The smallest budget accepted: below it RocksDB's fixed costs (a few
/// memtables' arenas, table readers) dominate and nothing is bounded.
pub const MIN_STATE_MEMORY: u64 = 16 << 20;

/// Estimated bytes one key written by a batch holds on its way through
/// (its encoded key and value in the write batch and memtable, the
/// batch's aggregation and the merge's sort): what turns the budget into
/// a number of writes per batch.
const BYTES_PER_BATCH_RECORD: u64 = 256;

/// A process's state memory: share it by cloning (all clones are one
/// budget).
#[derive(Clone)]
pub struct StateMemory {
    inner: Arc<Shared>,
}

struct Shared {
    bytes: u64,
    cache: Cache,
    write_buffers: WriteBufferManager,
}

impl std::fmt::Debug for StateMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StateMemory")
            .field("bytes", &self.inner.bytes)
            .finish()
    }
}

impl Default for StateMemory {
    fn default() -> Self {
        StateMemory::new(DEFAULT_STATE_MEMORY)
    }
}

impl StateMemory {
    /// A budget of `bytes` (raised to [`MIN_STATE_MEMORY`]).
    ///
    /// Split: three quarters to RocksDB's block cache, which also carries
    /// the memtables (at most half of it, flushed beyond that) and the
    /// index and filter blocks; one quarter to the hot-value caches of
    /// result-table merges.
    pub fn new(bytes: u64) -> StateMemory {
        let bytes = bytes.max(MIN_STATE_MEMORY);
        let rocks = rocks_share(bytes);
        let cache = Cache::new_lru_cache(rocks);
        // Without stalls: a batch's writes are applied whole, and the
        // flush they trigger runs on RocksDB's threads.
        let write_buffers = WriteBufferManager::new_write_buffer_manager_with_cache(
            rocks / 2,
            false,
            cache.clone(),
        );
        StateMemory {
            inner: Arc::new(Shared {
                bytes,
                cache,
                write_buffers,
            }),
        }
    }

    /// The whole budget in bytes.
    pub fn bytes(&self) -> u64 {
        self.inner.bytes
    }

    /// Bytes the result-table merges may keep in their caches of hot
    /// values, over all their tasks.
    pub fn hot_values_bytes(&self) -> u64 {
        self.inner.bytes / 4
    }

    /// Most state writes (keys written) one batch may stage so that its
    /// way through state stays within the budget; the driver turns it into
    /// records per batch by the writes per record it sees.
    pub fn writes_per_batch(&self) -> u64 {
        (self.inner.bytes / BYTES_PER_BATCH_RECORD).max(10_000)
    }

    /// The most one memtable holds before it is flushed: several smaller
    /// memtables flush sooner than one large one, so the memtables' share
    /// is never far exceeded.
    pub(crate) fn write_buffer_bytes(&self) -> usize {
        (rocks_share(self.inner.bytes) / 8).clamp(1 << 20, 64 << 20)
    }

    /// Applies the budget to a database's (and its column families')
    /// options.
    pub(crate) fn apply(&self, opts: &mut Options) {
        let mut table = BlockBasedOptions::default();
        table.set_block_cache(&self.inner.cache);
        // A key a merge has never seen (most keys, when there are
        // millions) is refused by a filter instead of a block read.
        table.set_bloom_filter(10.0, false);
        table.set_format_version(5);
        // Index and filter blocks count against the budget instead of
        // growing with the number of keys, and in 4 KiB partitions: a
        // file's whole filter is ~1.2 MiB per million keys, and reloading
        // it for a lookup after an eviction (read, checksummed) cost three
        // quarters of the time of updating 5 M keys. Only each file's
        // small top-level index stays pinned (Flink's partitioned
        // index/filters under managed memory).
        table.set_index_type(rocksdb::BlockBasedIndexType::TwoLevelIndexSearch);
        table.set_partition_filters(true);
        table.set_metadata_block_size(4096);
        table.set_cache_index_and_filter_blocks(true);
        table.set_cache_index_and_filter_blocks_with_high_priority(true);
        table.set_pin_top_level_index_and_filter(true);
        table.set_pin_l0_filter_and_index_blocks_in_cache(true);
        opts.set_block_based_table_factory(&table);
        opts.set_write_buffer_manager(&self.inner.write_buffers);
        opts.set_write_buffer_size(self.write_buffer_bytes());
        opts.set_max_write_buffer_number(3);
    }
}

/// RocksDB's share of a budget: its block cache, which also carries the
/// memtables.
fn rocks_share(bytes: u64) -> usize {
    (bytes / 4 * 3) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_is_split_and_bounded_below() {
        let m = StateMemory::new(256 << 20);
        assert_eq!(m.bytes(), 256 << 20);
        assert_eq!(m.hot_values_bytes(), 64 << 20);
        assert_eq!(m.writes_per_batch(), 1 << 20);
        assert_eq!(StateMemory::new(1).bytes(), MIN_STATE_MEMORY);
        let clone = m.clone();
        assert!(
            Arc::ptr_eq(&clone.inner, &m.inner),
            "clones share one budget"
        );
    }
}
