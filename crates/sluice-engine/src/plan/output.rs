//! Outputs a stream registers with its graph: printing each batch and
//! writing result tables. The plan decides what a batch writes and when
//! (rows collected, pairs shuffled by key, merged with committed values);
//! the sinks only format and write what they are handed.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, OnceLock};

use super::wide::{partition_by_key, rayon_map};
use super::{BatchCx, DStream, Node, Output};
use crate::checkpoint::sums::{self, Summable};
use crate::checkpoint::{OperatorMeta, TABLE_CF_PREFIX};
use crate::data::{Data, Key, decode_all, encode_to_vec};
use crate::sink::topic::{OutRecord, TopicWriter, partition_of};
use crate::sink::{WriterId, console};

/// Bytes a cached value costs besides its key and encoded value (the
/// map's slot, the key's allocation).
const HOT_ENTRY_OVERHEAD: usize = 64;

/// Keys per multi-get call.
const MULTI_GET_KEYS: usize = 4096;

/// One merge task's cache of committed values (RocksDB stays the truth),
/// bounded in bytes: keys enter the young generation; when it is full it
/// becomes the old one and the previous old one is dropped, so keys used
/// within the last half of the budget stay (an LRU's effect at a hash
/// map's cost). Valid for the task epoch it was filled in (on many
/// workers a bucket's state can move away and come back changed).
///
/// Admission: a key enters on its second sight (it had a committed value),
/// so keys written once — most of them, with millions — cost nothing
/// here. When the keys a batch reads are mostly not in a cache that is
/// already full (the working set is larger than the budget), nothing new
/// is admitted for a while: inserts would only evict other misses.
struct HotValues<V> {
    epoch: u64,
    budget: usize,
    young: HashMap<Box<[u8]>, V, foldhash::fast::RandomState>,
    old: HashMap<Box<[u8]>, V, foldhash::fast::RandomState>,
    young_bytes: usize,
    /// The young generation has turned over at least once.
    full: bool,
    /// Batches left without admitting new keys.
    closed_for: u32,
}

/// Batches a cache that missed most of a batch's keys stays closed.
const CLOSED_BATCHES: u32 = 8;

impl<V: Data> HotValues<V> {
    fn new(epoch: u64, budget: usize) -> Self {
        HotValues {
            epoch,
            budget,
            young: HashMap::default(),
            old: HashMap::default(),
            young_bytes: 0,
            full: false,
            closed_for: 0,
        }
    }

    /// The young generation's value shadows a stale one in the old.
    fn get(&self, key: &[u8]) -> Option<&V> {
        self.young.get(key).or_else(|| self.old.get(key))
    }

    /// Whether keys may enter after a batch that looked up `lookups` keys
    /// and found `hits` here.
    fn admits(&mut self, lookups: usize, hits: usize) -> bool {
        if self.closed_for > 0 {
            self.closed_for -= 1;
            return false;
        }
        if self.full && lookups >= 1024 && hits * 4 < lookups {
            self.closed_for = CLOSED_BATCHES;
            return false;
        }
        true
    }

    /// Stores `value` for a key that was cached or committed before.
    fn insert(&mut self, key: &[u8], value: V, encoded_len: usize, admit: bool) {
        if let Some(v) = self.young.get_mut(key) {
            *v = value;
            return;
        }
        if !admit {
            // A stale copy in the old generation must not outlive this write.
            self.old.remove(key);
            return;
        }
        let cost = key.len() + encoded_len + HOT_ENTRY_OVERHEAD;
        if cost > self.budget / 2 {
            return;
        }
        if self.young_bytes + cost > self.budget / 2 {
            self.old = std::mem::take(&mut self.young);
            self.young_bytes = 0;
            self.full = true;
        }
        self.young.insert(key.into(), value);
        self.young_bytes += cost;
    }
}

pub(crate) fn print<T: Data>(stream: &DStream<T>, n: usize) {
    let node = stream.node.clone();
    node.info().add_consumer();
    let name = format!("print-{}", node.info().name());
    sluice_log::common::mutex(&stream.graph)
        .outputs
        .push(Arc::new(Output {
            name,
            table: None,
            state: Vec::new(),
            run: Box::new(move |cx: &BatchCx| {
                let chunks = cx.collect(&node)?;
                let mut text = console::header(cx.batch_id, cx.batch_time_ms);
                text.push('\n');
                let mut shown = 0;
                let total: usize = chunks.iter().map(|c| c.num_rows()).sum();
                'outer: for c in &chunks {
                    let reader = T::reader(c.columns())?;
                    for i in 0..c.num_rows() {
                        if shown == n {
                            break 'outer;
                        }
                        text.push_str(&format!("{:?}\n", T::get(&reader, i)));
                        shown += 1;
                    }
                }
                if total > shown {
                    text.push_str(&format!("… {} more\n", total - shown));
                }
                text.push('\n');
                cx.print(&text);
                Ok(())
            }),
        }));
}

/// Every element of each batch, encoded by `encode`, written to the topic
/// of `writer` in the batch's order (deterministic on replay, which the
/// tags of the bundled store's records rely on).
pub(crate) fn save_to_topic<T: Data>(
    stream: &DStream<T>,
    writer: TopicWriter,
    encode: impl for<'a> Fn(T::View<'a>) -> (Option<Vec<u8>>, Option<Vec<u8>>) + Send + Sync + 'static,
) {
    let node = stream.node.clone();
    node.info().add_consumer();
    let name = format!("topic-{}", writer.topic());
    let id: OnceLock<WriterId> = OnceLock::new();
    sluice_log::common::mutex(&stream.graph)
        .outputs
        .push(Arc::new(Output {
            name: name.clone(),
            table: None,
            state: Vec::new(),
            run: Box::new(move |cx: &BatchCx| {
                let chunks = cx.collect(&node)?;
                let partitions = writer.partitions();
                let mut records: BTreeMap<i32, Vec<OutRecord>> = BTreeMap::new();
                for c in &chunks {
                    let reader = T::reader(c.columns())?;
                    for i in 0..c.num_rows() {
                        let (key, value) = encode(T::get(&reader, i));
                        records
                            .entry(partition_of(key.as_deref(), partitions))
                            .or_default()
                            .push(OutRecord {
                                key,
                                value,
                                timestamp_ms: cx.batch_time_ms,
                                headers: Vec::new(),
                            });
                    }
                }
                let id = match id.get() {
                    Some(id) => id,
                    None => {
                        let fresh = WriterId::of(cx.checkpoint, &name)?;
                        id.get_or_init(|| fresh)
                    }
                };
                let report = writer.write(cx.transactions, id, cx.batch_id, &records)?;
                cx.count(
                    &format!("already in topic {}", writer.topic()),
                    report.skipped as u64,
                );
                Ok(())
            }),
        }));
}

/// Writes one bucket of a merge without reading committed values.
type BlindFold =
    fn(&BatchCx, &rocksdb::ColumnFamily, &[arrow::array::RecordBatch]) -> super::Result<()>;

/// `sum_into_table`: `merge_into_table` with addition, written as merge
/// operands (blind) when the job runs in one process. On many workers
/// every write becomes a changelog record of the key's value, which an
/// operand is not, so there it reads and merges like any merge table.
pub(crate) fn save_sum<K: Key, V: Summable>(stream: &DStream<(K, V)>, table: &str) {
    let add = |a: V::View<'_>, b: V::View<'_>| V::add(V::to_owned_value(a), V::to_owned_value(b));
    save_folding(stream, table, Some(add), Some(sum_bucket::<K, V>))
}

/// `save_to_table` (no `merge`: each batch's pairs overwrite) and
/// `merge_into_table` (each key's value merged with its committed one).
pub(crate) fn save<K: Key, V: Data, F>(stream: &DStream<(K, V)>, table: &str, merge: Option<F>)
where
    F: for<'a, 'b> Fn(V::View<'a>, V::View<'b>) -> V + Send + Sync + 'static,
{
    save_folding(stream, table, merge, None)
}

fn save_folding<K: Key, V: Data, F>(
    stream: &DStream<(K, V)>,
    table: &str,
    merge: Option<F>,
    blind: Option<BlindFold>,
) where
    F: for<'a, 'b> Fn(V::View<'a>, V::View<'b>) -> V + Send + Sync + 'static,
{
    let node = stream.node.clone();
    node.info().add_consumer();
    let caches: OnceLock<Vec<Mutex<HotValues<V>>>> = OnceLock::new();
    let table = table.to_owned();
    let table_name = table.clone();
    let cf_name = format!("{TABLE_CF_PREFIX}{table}");
    let meta = OperatorMeta {
        name: table.clone(),
        kind: if merge.is_some() {
            "merge table"
        } else {
            "table"
        }
        .into(),
        key_type: K::type_name(),
        state_type: V::type_name(),
    };
    let mut graph = sluice_log::common::mutex(&stream.graph);
    if graph
        .outputs
        .iter()
        .any(|o| o.table.as_ref().is_some_and(|t| t.name == table))
    {
        graph
            .errors
            .push(format!("two outputs write result table {table:?}"));
    }
    // Rows not yet in their key's bucket are shuffled to the next stage.
    let cut = (merge.is_some() && !node.info().keyed()).then(|| node.info().level() + 1);
    if let Some(level) = cut {
        graph.output_cuts.push((format!("table-{table}"), level));
    }
    graph.outputs.push(Arc::new(Output {
        name: format!("table:{table}"),
        table: Some(meta),
        state: Vec::new(),
        run: Box::new(move |cx: &BatchCx| {
            let cf = cx.checkpoint.cf(&cf_name)?;
            let Some(merge) = &merge else {
                return overwrite::<K, V>(cx, &node, cf);
            };
            // Merging reads the committed value: each key must be handled
            // by one task, so the pairs are shuffled by key first.
            let buckets = partition_by_key::<K>(cx, &format!("table-{table_name}"), cut, &node)?;
            if let (Some(blind), None) = (blind, &cx.stage) {
                rayon_map(buckets, |chunks| blind(cx, cf, &chunks))?;
                return Ok(());
            }
            let budget =
                (cx.checkpoint.memory().hot_values_bytes() / cx.parallelism.max(1) as u64) as usize;
            let caches = caches.get_or_init(|| {
                (0..cx.parallelism)
                    .map(|_| Mutex::new(HotValues::new(cx.task_epoch, budget)))
                    .collect()
            });
            rayon_map(buckets.into_iter().enumerate().collect(), |(b, chunks)| {
                // Keys go to the same bucket every batch, so this task owns
                // its bucket's cache of hot values.
                let mut cache = sluice_log::common::mutex(&caches[b % caches.len()]);
                if cache.epoch != cx.task_epoch {
                    *cache = HotValues::new(cx.task_epoch, budget);
                }
                merge_bucket::<K, V, F>(cx, cf, &chunks, &mut cache, merge)
            })?;
            Ok(())
        }),
    }));
}

/// Stages a put of every pair of the batch (the last one of a key wins).
fn overwrite<K: Key, V: Data>(
    cx: &BatchCx,
    node: &Arc<dyn Node>,
    cf: &rocksdb::ColumnFamily,
) -> super::Result<()> {
    let chunks = cx.collect(node)?;
    let mut puts = Vec::new();
    for c in &chunks {
        let rows = <(K, V)>::reader(c.columns())?;
        for i in 0..c.num_rows() {
            let (k, v) = <(K, V)>::get(&rows, i);
            puts.push((encode_to_vec::<K>(k), encode_to_vec::<V>(v)));
        }
    }
    cx.write(|w| puts.iter().for_each(|(k, v)| w.put_cf(cf, k, v)));
    Ok(())
}

/// A pair of a merge's batch: where its encoded key is in the bucket's
/// buffer, its first 8 bytes as a number (their order is the bytes'
/// order), and its row.
struct Pair {
    prefix: u64,
    start: u32,
    end: u32,
    chunk: u32,
    row: u32,
}

impl Pair {
    /// The first 8 bytes of `key`, big-endian, zero-padded: comparing two
    /// prefixes orders the keys unless the prefixes are equal.
    fn prefix_of(key: &[u8]) -> u64 {
        let mut bytes = [0u8; 8];
        let n = key.len().min(8);
        bytes[..n].copy_from_slice(&key[..n]);
        u64::from_be_bytes(bytes)
    }
}

/// The encoded keys of a bucket's pairs in one buffer, the pairs sorted
/// by key (stably, so a key's values keep the batch's order), and one
/// `(first pair, end pair)` range per distinct key, in key order.
#[allow(clippy::type_complexity)]
fn sorted_keys<K: Key, V: Data>(
    chunks: &[arrow::array::RecordBatch],
    readers: &[<(K, V) as Data>::Reader<'_>],
) -> super::Result<(Vec<u8>, Vec<Pair>, Vec<(usize, usize)>)> {
    // Every key encoded into one buffer, each pair pointing at its key.
    let rows: usize = chunks.iter().map(|c| c.num_rows()).sum();
    let mut keys: Vec<u8> = Vec::with_capacity(rows * 16);
    let mut pairs: Vec<Pair> = Vec::with_capacity(rows);
    for (ci, reader) in readers.iter().enumerate() {
        for row in 0..chunks[ci].num_rows() {
            let start = keys.len();
            K::encode(<(K, V)>::get(reader, row).0, true, &mut keys);
            let (Ok(start), Ok(end)) = (u32::try_from(start), u32::try_from(keys.len())) else {
                return Err(super::PlanError::Invalid(format!(
                    "a merge task's keys passed 4 GiB in one batch; lower --max-records-per-batch ({} rows so far)",
                    pairs.len()
                )));
            };
            pairs.push(Pair {
                prefix: Pair::prefix_of(&keys[start as usize..]),
                start,
                end,
                chunk: ci as u32,
                row: row as u32,
            });
        }
    }
    let key_of = |p: &Pair| &keys[p.start as usize..p.end as usize];
    // A key's values keep their order: pairs were pushed in (chunk, row)
    // order, and the last comparison makes the unstable sort give the
    // stable one's result (22 % faster for 625 k keys of a 5 M key
    // table). Most comparisons end at the prefix, without reaching into
    // the buffer.
    pairs.sort_unstable_by(|a, b| {
        a.prefix
            .cmp(&b.prefix)
            .then_with(|| key_of(a).cmp(key_of(b)))
            .then_with(|| (a.chunk, a.row).cmp(&(b.chunk, b.row)))
    });
    // One entry per distinct key, in key order: (first pair, end pair).
    let mut groups: Vec<(usize, usize)> = Vec::new();
    for i in 0..pairs.len() {
        let same = i > 0
            && pairs[i].prefix == pairs[i - 1].prefix
            && key_of(&pairs[i]) == key_of(&pairs[i - 1]);
        if !same {
            groups.push((i, i + 1));
        } else if let Some(g) = groups.last_mut() {
            g.1 = i + 1;
        }
    }
    Ok((keys, pairs, groups))
}

/// One bucket of `sum_into_table` in one process: each key's values of
/// the batch added up and written as one merge operand, in key order,
/// without reading what the table holds.
fn sum_bucket<K: Key, V: Summable>(
    cx: &BatchCx,
    cf: &rocksdb::ColumnFamily,
    chunks: &[arrow::array::RecordBatch],
) -> super::Result<()> {
    let readers = chunks
        .iter()
        .map(|c| <(K, V)>::reader(c.columns()))
        .collect::<Result<Vec<_>, _>>()?;
    let (keys, pairs, groups) = sorted_keys::<K, V>(chunks, &readers)?;
    let mut operand = Vec::with_capacity(16);
    cx.write(|w| {
        for &(first, end) in &groups {
            let mut sum = V::default();
            for p in &pairs[first..end] {
                let v = <(K, V)>::get(&readers[p.chunk as usize], p.row as usize).1;
                sum = V::add(sum, V::to_owned_value(v));
            }
            operand.clear();
            sums::encode_operand(sum, &mut operand);
            let p = &pairs[first];
            w.merge_cf(cf, &keys[p.start as usize..p.end as usize], &operand);
        }
    });
    Ok(())
}

/// One bucket of a merge, without a hash map per batch: the pairs'
/// encoded keys are sorted (stably, so a key's values merge in the
/// batch's order), the committed values the cache lacks are read in one
/// multi-get over sorted keys, and the merged values are written in key
/// order — RocksDB's memtable skip list then finds each insert's place
/// from the previous one instead of from the top.
fn merge_bucket<K: Key, V: Data, F>(
    cx: &BatchCx,
    cf: &rocksdb::ColumnFamily,
    chunks: &[arrow::array::RecordBatch],
    cache: &mut HotValues<V>,
    merge: &F,
) -> super::Result<()>
where
    F: for<'a, 'b> Fn(V::View<'a>, V::View<'b>) -> V + Send + Sync + 'static,
{
    let readers = chunks
        .iter()
        .map(|c| <(K, V)>::reader(c.columns()))
        .collect::<Result<Vec<_>, _>>()?;
    let (keys, pairs, groups) = sorted_keys::<K, V>(chunks, &readers)?;
    let key_of = |p: &Pair| &keys[p.start as usize..p.end as usize];
    let mut committed: Vec<Option<V>> = Vec::with_capacity(groups.len());
    let mut misses: Vec<(usize, &[u8])> = Vec::new();
    for (g, &(first, _)) in groups.iter().enumerate() {
        let key = key_of(&pairs[first]);
        let hot = cache.get(key).cloned();
        if hot.is_none() {
            misses.push((g, key));
        }
        committed.push(hot);
    }
    let admit = cache.admits(groups.len(), groups.len() - misses.len());
    // In slices, so RocksDB's per-key lookup contexts stay small.
    for slice in misses.chunks(MULTI_GET_KEYS) {
        let found = cx
            .checkpoint
            .db()
            .batched_multi_get_cf(cf, slice.iter().map(|m| m.1), true);
        for (&(g, _), found) in slice.iter().zip(found) {
            if let Some(bytes) = found? {
                committed[g] = Some(decode_all::<V>(&bytes)?);
            }
        }
    }
    // Keys seen before (cached or committed) may be cached; new ones not.
    let mut merged: Vec<(&[u8], V, bool)> = Vec::with_capacity(groups.len());
    for (&(first, end), mut value) in groups.iter().zip(committed) {
        let seen = value.is_some();
        let key = key_of(&pairs[first]);
        for p in &pairs[first..end] {
            let v = <(K, V)>::get(&readers[p.chunk as usize], p.row as usize).1;
            value = Some(match value {
                Some(old) => merge(old.view(), v),
                None => V::to_owned_value(v),
            });
        }
        if let Some(value) = value {
            merged.push((key, value, seen));
        }
    }
    let mut encoded = Vec::new();
    let mut lens = Vec::with_capacity(merged.len());
    cx.write(|w| {
        for (k, v, _) in &merged {
            encoded.clear();
            V::encode(v.view(), true, &mut encoded);
            w.put_cf(cf, k, &encoded);
            lens.push(encoded.len());
        }
    });
    // The batch either commits these values or the job stops (and the
    // cache with it), so caching them now is safe.
    for ((k, v, seen), len) in merged.into_iter().zip(lens) {
        if seen {
            cache.insert(k, v, len, admit);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::Pair;

    /// Ordering by prefix, then bytes, is the bytes' order, also for keys
    /// shorter than 8 bytes, with zero bytes, and with equal prefixes.
    #[test]
    fn prefix_then_bytes_is_byte_order() {
        let mut keys: Vec<Vec<u8>> = vec![
            b"".to_vec(),
            b"\0".to_vec(),
            b"\0\0".to_vec(),
            b"a".to_vec(),
            b"a\0".to_vec(),
            b"ab".to_vec(),
            b"abcdefgh".to_vec(),
            b"abcdefgh\0".to_vec(),
            b"abcdefghi".to_vec(),
            b"abcdefgz".to_vec(),
            vec![0xff; 9],
            b"w1".to_vec(),
            b"w10".to_vec(),
            b"w1000000".to_vec(),
            b"w999999".to_vec(),
        ];
        let mut want = keys.clone();
        want.sort();
        keys.reverse();
        keys.sort_by(|a, b| {
            Pair::prefix_of(a)
                .cmp(&Pair::prefix_of(b))
                .then_with(|| a.cmp(b))
        });
        assert_eq!(keys, want);
    }
}
