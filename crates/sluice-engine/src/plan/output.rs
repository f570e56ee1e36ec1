//! Outputs a stream registers with its graph: printing each batch and
//! writing result tables. The plan decides what a batch writes and when
//! (rows collected, pairs shuffled by key, merged with committed values);
//! the sinks only format and write what they are handed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};

use super::wide::{partition_by_key, rayon_map};
use super::{BatchCx, DStream, Node, Output};
use crate::checkpoint::{OperatorMeta, TABLE_CF_PREFIX};
use crate::data::{Data, Key, decode_all, encode_to_vec};
use crate::sink::topic::{OutRecord, TopicWriter, partition_of};
use crate::sink::{WriterId, console};

/// Hot values kept in memory per merge task (a cache of committed values;
/// RocksDB stays the truth).
const CACHE_ENTRIES_PER_TASK: usize = 1 << 20;

/// One merge task's cache: encoded key → committed value, valid for the
/// task epoch it was filled in (on many workers a bucket's state can move
/// away and come back changed).
type HotValues<V> = Mutex<(u64, HashMap<Vec<u8>, V>)>;

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

/// `save_to_table` (no `merge`: each batch's pairs overwrite) and
/// `merge_into_table` (each key's value merged with its committed one).
pub(crate) fn save<K: Key, V: Data, F>(stream: &DStream<(K, V)>, table: &str, merge: Option<F>)
where
    F: for<'a, 'b> Fn(V::View<'a>, V::View<'b>) -> V + Send + Sync + 'static,
{
    let node = stream.node.clone();
    node.info().add_consumer();
    let caches: OnceLock<Vec<HotValues<V>>> = OnceLock::new();
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
            let caches = caches.get_or_init(|| {
                (0..cx.parallelism)
                    .map(|_| Mutex::new((cx.task_epoch, HashMap::new())))
                    .collect()
            });
            rayon_map(buckets.into_iter().enumerate().collect(), |(b, chunks)| {
                // Keys go to the same bucket every batch, so this task owns
                // its bucket's cache of hot values.
                let mut cache = sluice_log::common::mutex(&caches[b % caches.len()]);
                if cache.0 != cx.task_epoch {
                    *cache = (cx.task_epoch, HashMap::new());
                }
                merge_bucket::<K, V, F>(cx, cf, &chunks, &mut cache.1, merge)
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

/// One bucket of a merge: read the committed values the cache lacks,
/// merge the batch's pairs into them, stage the writes, remember them.
fn merge_bucket<K: Key, V: Data, F>(
    cx: &BatchCx,
    cf: &rocksdb::ColumnFamily,
    chunks: &[arrow::array::RecordBatch],
    cache: &mut HashMap<Vec<u8>, V>,
    merge: &F,
) -> super::Result<()>
where
    F: for<'a, 'b> Fn(V::View<'a>, V::View<'b>) -> V + Send + Sync + 'static,
{
    let loaded = committed_values::<K, V>(cx, cf, chunks, cache)?;
    let mut merged: HashMap<Vec<u8>, V> = HashMap::new();
    for c in chunks {
        let rows = <(K, V)>::reader(c.columns())?;
        for i in 0..c.num_rows() {
            let (k, v) = <(K, V)>::get(&rows, i);
            let key = encode_to_vec::<K>(k);
            let old = merged
                .get(&key)
                .or_else(|| cache.get(&key))
                .or_else(|| loaded.get(&key));
            let new = match old {
                Some(old) => merge(old.view(), v),
                None => V::to_owned_value(v),
            };
            merged.insert(key, new);
        }
    }
    // In key order: RocksDB inserts a write batch's keys into its memtable
    // skip list one after the other, and each search starts from where
    // the previous insert ended, so sorted keys find their place in a few
    // steps where hash-ordered ones walk down from the top every time.
    let mut sorted: Vec<(&Vec<u8>, &V)> = merged.iter().collect();
    sorted.sort_unstable_by(|a, b| a.0.cmp(b.0));
    cx.write(|w| {
        for (k, v) in sorted {
            w.put_cf(cf, k, encode_to_vec::<V>(v.view()));
        }
    });
    // The batch either commits these values or the job stops (and the
    // cache with it), so caching them now is safe.
    if cache.len() + merged.len() > CACHE_ENTRIES_PER_TASK {
        cache.clear();
    }
    cache.extend(merged);
    Ok(())
}

/// The committed values of the batch's keys that `cache` does not hold,
/// in one multi-get.
fn committed_values<K: Key, V: Data>(
    cx: &BatchCx,
    cf: &rocksdb::ColumnFamily,
    chunks: &[arrow::array::RecordBatch],
    cache: &HashMap<Vec<u8>, V>,
) -> super::Result<HashMap<Vec<u8>, V>> {
    let mut misses: Vec<Vec<u8>> = Vec::new();
    let mut seen: HashSet<Vec<u8>> = HashSet::new();
    for c in chunks {
        let rows = K::reader(c.columns())?;
        for i in 0..c.num_rows() {
            let key = encode_to_vec::<K>(K::get(&rows, i));
            if !cache.contains_key(&key) && seen.insert(key.clone()) {
                misses.push(key);
            }
        }
    }
    let mut loaded: HashMap<Vec<u8>, V> = HashMap::with_capacity(misses.len());
    for (key, found) in misses
        .iter()
        .zip(cx.checkpoint.db().batched_multi_get_cf(cf, &misses, false))
    {
        if let Some(bytes) = found? {
            loaded.insert(key.clone(), decode_all::<V>(&bytes)?);
        }
    }
    Ok(loaded)
}
