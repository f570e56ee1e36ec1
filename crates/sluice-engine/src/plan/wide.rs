//! Wide operators: shuffles by key hash, per-batch aggregation and joins.

use std::sync::{Arc, Mutex};

use arrow::array::{RecordBatch, UInt32Array};
use arrow::datatypes::SchemaRef;
use hashbrown::HashTable;

use super::exec::{BatchCx, Node, NodeInfo, Wide};
use super::{DStream, PlanError, Result};
use crate::data::{Data, Emitter, Key, hash_one};

/// Rows per output chunk of a wide operator.
pub(crate) const OUT_CHUNK: usize = 64 * 1024;

/// A hash aggregation of `(K, V)` rows into owned keys and values.
pub(crate) struct Aggregate<K: Key, V: Data> {
    table: HashTable<(u64, K, V)>,
    /// Keys with a 16-byte inline form (short strings), found by comparing
    /// and mixing that form instead of hashing and comparing the bytes.
    /// The form is the key: no owned copy, and 24-byte entries for a `u64`
    /// value (a word count's table stays in cache longer; most of its time
    /// was waiting for entries).
    short: HashTable<([u64; 2], V)>,
}

#[inline]
fn pack(k: u128) -> [u64; 2] {
    [k as u64, (k >> 64) as u64]
}

#[inline]
fn unpack(k: [u64; 2]) -> u128 {
    k[0] as u128 | (k[1] as u128) << 64
}

/// A cheap, fixed mix of an inline key for the in-memory table only (the
/// shuffle still uses the key's full hash).
#[inline]
fn mix(v: u128) -> u64 {
    let folded = (v as u64) ^ ((v >> 64) as u64).rotate_left(29);
    (folded ^ (folded >> 31)).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

impl<K: Key, V: Data> Aggregate<K, V> {
    pub fn new() -> Self {
        Aggregate {
            table: HashTable::new(),
            short: HashTable::new(),
        }
    }

    /// Sized for the keys `hint` expects, so a batch like the last one
    /// does not rehash its way up from nothing.
    fn with_hint(hint: &TableSizes) -> Self {
        let (short, long) = hint.expected();
        Aggregate {
            table: HashTable::with_capacity(long),
            short: HashTable::with_capacity(short),
        }
    }

    #[inline]
    fn add_short(
        &mut self,
        inline: u128,
        value: V::View<'_>,
        f: &impl for<'a, 'b> Fn(V::View<'a>, V::View<'b>) -> V,
    ) {
        let h = mix(inline);
        let packed = pack(inline);
        match self.short.find_mut(h, |(k, _)| *k == packed) {
            Some((_, acc)) => *acc = f(acc.view(), value),
            None => {
                self.short
                    .insert_unique(h, (packed, V::to_owned_value(value)), |(k, _)| {
                        mix(unpack(*k))
                    });
            }
        }
    }

    #[inline]
    pub fn add(
        &mut self,
        key: K::View<'_>,
        value: V::View<'_>,
        f: &impl for<'a, 'b> Fn(V::View<'a>, V::View<'b>) -> V,
    ) {
        let hash = hash_one::<K>(key);
        match self
            .table
            .find_mut(hash, |(h, k, _)| *h == hash && K::eq_view(k.view(), key))
        {
            Some((_, _, acc)) => *acc = f(acc.view(), value),
            None => {
                self.table.insert_unique(
                    hash,
                    (hash, K::to_owned_value(key), V::to_owned_value(value)),
                    |(h, _, _)| *h,
                );
            }
        }
    }

    pub fn add_chunk(
        &mut self,
        chunk: &RecordBatch,
        f: &impl for<'a, 'b> Fn(V::View<'a>, V::View<'b>) -> V,
    ) -> Result<()> {
        let rows = <(K, V)>::reader(chunk.columns())?;
        for i in 0..chunk.num_rows() {
            let (k, v) = <(K, V)>::get(&rows, i);
            match K::inline_key(&rows.0, i) {
                Some(inline) => self.add_short(inline, v, f),
                None => self.add(k, v, f),
            }
        }
        Ok(())
    }

    /// Distinct keys so far.
    pub fn len(&self) -> usize {
        self.table.len() + self.short.len()
    }

    /// Splits the entries into `buckets` chunks by key hash.
    pub fn into_buckets(
        self,
        buckets: usize,
        schema: &SchemaRef,
    ) -> Result<Vec<Option<RecordBatch>>> {
        let entries = self.table.len() + self.short.len();
        let mut builders: Vec<Emitter<(K, V)>> = (0..buckets)
            .map(|_| Emitter::with_capacity(entries / buckets + 1))
            .collect();
        for (hash, k, v) in &self.table {
            builders[bucket_of(*hash, buckets)].push_view((k.view(), v.view()));
        }
        for (k, v) in &self.short {
            K::with_inline(unpack(*k), |k| {
                builders[bucket_of(hash_one::<K>(k), buckets)]
                    .push_view((K::shorten(k), V::shorten(v.view())));
            })
            .ok_or_else(|| PlanError::Invalid("a short key lost its inline form".into()))?;
        }
        builders
            .into_iter()
            .map(|b| {
                if b.len() == 0 {
                    Ok(None)
                } else {
                    Ok(Some(RecordBatch::try_new(schema.clone(), b.finish())?))
                }
            })
            .collect()
    }
}

/// Keys a hash table of an operator held last batch (short keys, other
/// keys): the next batch's tables start at that size. Bounded, so one huge
/// batch does not make every later one allocate for it.
#[derive(Default)]
pub(crate) struct TableSizes {
    short: std::sync::atomic::AtomicUsize,
    long: std::sync::atomic::AtomicUsize,
}

/// The largest table a hint asks for up front.
const MAX_HINTED_KEYS: usize = 1 << 20;

impl TableSizes {
    fn expected(&self) -> (usize, usize) {
        use std::sync::atomic::Ordering::Relaxed;
        (
            self.short.load(Relaxed).min(MAX_HINTED_KEYS),
            self.long.load(Relaxed).min(MAX_HINTED_KEYS),
        )
    }

    fn remember(&self, short: usize, long: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        self.short.store(short, Relaxed);
        self.long.store(long, Relaxed);
    }
}

/// The reduce side of an aggregation over one bucket's chunks: an entry
/// holds its key's place in the chunks instead of a copy, so a distinct
/// key costs no allocation (with millions of keys per batch, the copies
/// and their frees were a fifth of the job's time).
struct ReduceTable<'c, K: Key, V: Data> {
    chunks: &'c [RecordBatch],
    readers: Vec<<(K, V) as Data>::Reader<'c>>,
    /// (hash, chunk, row, value so far).
    table: HashTable<(u64, u32, u32, V)>,
    /// Keys with a 16-byte inline form: (inline, chunk, row, value).
    short: HashTable<(u128, u32, u32, V)>,
}

impl<'c, K: Key, V: Data> ReduceTable<'c, K, V> {
    fn new(chunks: &'c [RecordBatch], hint: &TableSizes) -> Result<Self> {
        let (short, long) = hint.expected();
        Ok(ReduceTable {
            chunks,
            readers: chunks
                .iter()
                .map(|c| <(K, V)>::reader(c.columns()))
                .collect::<std::result::Result<_, _>>()?,
            table: HashTable::with_capacity(long),
            short: HashTable::with_capacity(short),
        })
    }

    fn add_chunk(&mut self, chunk: usize, f: &impl for<'a, 'b> Fn(V::View<'a>, V::View<'b>) -> V) {
        let ReduceTable {
            chunks,
            readers,
            table,
            short,
        } = self;
        let reader = &readers[chunk];
        for i in 0..chunks[chunk].num_rows() {
            let (k, v) = <(K, V)>::get(reader, i);
            if let Some(inline) = K::inline_key(&reader.0, i) {
                let h = mix(inline);
                match short.find_mut(h, |e| e.0 == inline) {
                    Some(e) => e.3 = f(e.3.view(), v),
                    None => {
                        short.insert_unique(
                            h,
                            (inline, chunk as u32, i as u32, V::to_owned_value(v)),
                            |e| mix(e.0),
                        );
                    }
                }
            } else {
                let hash = hash_one::<K>(k);
                let found = table.find_mut(hash, |e| {
                    e.0 == hash && K::eq_view(K::get(&readers[e.1 as usize].0, e.2 as usize), k)
                });
                match found {
                    Some(e) => e.3 = f(e.3.view(), v),
                    None => {
                        table.insert_unique(
                            hash,
                            (hash, chunk as u32, i as u32, V::to_owned_value(v)),
                            |e| e.0,
                        );
                    }
                }
            }
        }
    }

    /// One chunk of every key with its value.
    fn finish(self, schema: &SchemaRef, sizes: &TableSizes) -> Result<Option<RecordBatch>> {
        sizes.remember(self.short.len(), self.table.len());
        let entries = self.table.len() + self.short.len();
        if entries == 0 {
            return Ok(None);
        }
        let ReduceTable {
            chunks,
            table,
            short,
            ..
        } = self;
        // Readers as long-lived as the entries (a GAT's view does not
        // shorten by itself; the chunks' reference does).
        let chunks: &[RecordBatch] = chunks;
        let keys = chunks
            .iter()
            .map(|c| K::reader(&c.columns()[..K::WIDTH]))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let mut out: Emitter<(K, V)> = Emitter::with_capacity(entries);
        for (_, c, r, v) in &table {
            out.push_view((K::get(&keys[*c as usize], *r as usize), v.view()));
        }
        for (_, c, r, v) in &short {
            out.push_view((K::get(&keys[*c as usize], *r as usize), v.view()));
        }
        Ok(Some(RecordBatch::try_new(schema.clone(), out.finish())?))
    }
}

/// Rows a map-side combine sees before judging whether it pays.
const COMBINE_TRIAL_ROWS: usize = 64 * 1024;

/// The map side of a shuffle that aggregates: rows are combined by key
/// before they are split into buckets, unless the first
/// [`COMBINE_TRIAL_ROWS`] showed that nearly every key is distinct — then
/// the combine only costs a hash table of every row, and the rest are
/// split as they are (Spark's and Flink's adaptive partial aggregation);
/// the reduce side aggregates them all the same.
struct Combine<K: Key, V: Data> {
    agg: Aggregate<K, V>,
    buckets: usize,
    seen: usize,
    /// Rows passed through uncombined, by bucket.
    passed: Option<Vec<Vec<RecordBatch>>>,
    /// The same for rows that came one by one (from a fused `flat_map`).
    passed_rows: Option<Vec<Emitter<'static, (K, V)>>>,
}

impl<K: Key, V: Data> Combine<K, V> {
    fn new(buckets: usize, hint: &TableSizes) -> Self {
        Combine {
            agg: Aggregate::with_hint(hint),
            buckets,
            seen: 0,
            passed: None,
            passed_rows: None,
        }
    }

    /// Whether the trial rows showed that combining does not pay.
    fn nearly_all_distinct(&self) -> bool {
        self.seen >= COMBINE_TRIAL_ROWS && self.agg.len() * 10 > self.seen * 9
    }

    /// One row from a fused operator: combined, or, once the combine has
    /// stepped aside, kept for its bucket.
    #[inline]
    fn add_row<'r>(
        &mut self,
        key: K::View<'r>,
        value: V::View<'r>,
        f: &impl for<'a, 'b> Fn(V::View<'a>, V::View<'b>) -> V,
    ) {
        if let Some(rows) = &mut self.passed_rows {
            rows[bucket_of(hash_one::<K>(key), self.buckets)].push_view((key, value));
            return;
        }
        match K::inline_of(key) {
            Some(inline) => self.agg.add_short(inline, value, f),
            None => self.agg.add(key, value, f),
        }
        self.seen += 1;
        if self.seen.is_multiple_of(4096) && self.nearly_all_distinct() {
            self.passed_rows = Some(
                (0..self.buckets)
                    .map(|_| Emitter::with_capacity(4096))
                    .collect(),
            );
        }
    }

    fn add_chunk(
        &mut self,
        chunk: &RecordBatch,
        f: &impl for<'a, 'b> Fn(V::View<'a>, V::View<'b>) -> V,
    ) -> Result<()> {
        if let Some(passed) = &mut self.passed {
            for (b, piece) in split_by_key::<K>(chunk, self.buckets)? {
                passed[b].push(piece);
            }
            return Ok(());
        }
        self.agg.add_chunk(chunk, f)?;
        self.seen += chunk.num_rows();
        if self.nearly_all_distinct() {
            self.passed = Some(vec![Vec::new(); self.buckets]);
        }
        Ok(())
    }

    fn into_buckets(
        self,
        schema: &SchemaRef,
        sizes: &TableSizes,
    ) -> Result<Vec<Option<RecordBatch>>> {
        sizes.remember(self.agg.short.len(), self.agg.table.len());
        let combined = self.agg.into_buckets(self.buckets, schema)?;
        if self.passed.is_none() && self.passed_rows.is_none() {
            return Ok(combined);
        }
        let mut passed = self
            .passed
            .unwrap_or_else(|| vec![Vec::new(); self.buckets]);
        for (b, rows) in self.passed_rows.into_iter().flatten().enumerate() {
            passed[b].extend(rows.into_batches(schema)?);
        }
        combined
            .into_iter()
            .zip(passed)
            .map(|(c, p)| {
                // The combined rows came first.
                let mut p: Vec<RecordBatch> = c.into_iter().chain(p).collect();
                match p.len() {
                    0 => Ok(None),
                    1 => Ok(p.pop()),
                    _ => Ok(Some(arrow::compute::concat_batches(schema, &p)?)),
                }
            })
            .collect()
    }
}

/// Which of `buckets` a hash goes to (the high bits: the low bits already
/// chose the hash-table slot in the map-side combine).
#[inline]
pub(crate) fn bucket_of(hash: u64, buckets: usize) -> usize {
    ((hash >> 32) as usize * buckets) >> 32
}

/// The shuffle: each parent task runs `map_side` over its chunks, which
/// returns one optional chunk per bucket; chunks are regrouped by bucket.
///
/// On many workers (`cx.stage`), a shuffle that cuts the job (`cut`: the
/// stage reading it) yields, in that stage's task, what its repartition
/// topic held for the task's bucket; in an earlier stage it runs its
/// parent and sends the buckets to the repartition topic, yielding
/// nothing; in a later stage it yields nothing. A shuffle that does not
/// cut stays in the task, and must keep every row in the task's bucket.
pub(crate) fn shuffle(
    cx: &BatchCx,
    op: &str,
    cut: Option<usize>,
    parent: &Arc<dyn Node>,
    map_side: impl Fn(
        &mut dyn FnMut(&mut super::ChunkSink<'_>) -> Result<()>,
    ) -> Result<Vec<Option<RecordBatch>>>
    + Sync,
) -> Result<Vec<Vec<RecordBatch>>> {
    let mut buckets: Vec<Vec<RecordBatch>> = vec![Vec::new(); cx.parallelism];
    if let (Some(role), Some(level)) = (&cx.stage, cut) {
        if level == role.stage() {
            if let Some(bucket) = role.bucket() {
                buckets[bucket] = role.inbox(op);
            }
            return Ok(buckets);
        }
        if level < role.stage() {
            return Ok(buckets);
        }
    }
    let per_task = cx.for_each_partition(parent, |_, run| map_side(run))?;
    for task in per_task {
        for (b, chunk) in task.into_iter().enumerate() {
            if let Some(chunk) = chunk {
                buckets[b].push(chunk);
            }
        }
    }
    let Some(role) = &cx.stage else {
        return Ok(buckets);
    };
    if cut.is_some() {
        for (b, chunks) in buckets.iter_mut().enumerate() {
            for chunk in chunks.drain(..) {
                role.send(op, b, chunk);
            }
        }
    } else if let Some(bucket) = role.bucket()
        && let Some((b, _)) = buckets
            .iter()
            .enumerate()
            .find(|(b, chunks)| *b != bucket && !chunks.is_empty())
    {
        return Err(PlanError::Invalid(format!(
            "operator {op} moved a row of bucket {bucket} to bucket {b}: its input is not split by the key it shuffles by, which the job's plan should have made a cut"
        )));
    }
    Ok(buckets)
}

/// Rows whose operator needs no key (a window over whole batches, one
/// side of a union) moved through a cut read by stage `level`, spread
/// evenly over its buckets: each chunk is cut into contiguous slices, the
/// first going to a bucket that turns with the batch. On the stage
/// reading the cut, this task's share; elsewhere nothing.
pub(crate) fn spread(
    cx: &BatchCx,
    op: &str,
    level: usize,
    parent: &Arc<dyn Node>,
) -> Result<Vec<RecordBatch>> {
    let buckets = cx.parallelism;
    let turn = cx.batch_id as usize;
    let split = shuffle(cx, op, Some(level), parent, |run| {
        let mut out: Vec<Vec<RecordBatch>> = vec![Vec::new(); buckets];
        run(&mut |chunk: RecordBatch| {
            let rows = chunk.num_rows();
            let per = rows.div_ceil(buckets).max(1);
            for (i, start) in (0..rows).step_by(per).enumerate() {
                out[(turn + i) % buckets].push(chunk.slice(start, per.min(rows - start)));
            }
            Ok(())
        })?;
        out.into_iter()
            .map(|chunks| match chunks.first() {
                None => Ok(None),
                Some(first) => Ok(Some(arrow::compute::concat_batches(
                    &first.schema(),
                    &chunks,
                )?)),
            })
            .collect()
    })?;
    Ok(split.into_iter().flatten().collect())
}

/// `stream`'s rows carried to stage `level` on many workers (a union of
/// streams from different stages meets in the later one); in one process
/// they stay where they are.
pub(crate) fn moved_to<T: Data>(stream: &DStream<T>, level: usize) -> DStream<T> {
    let parent = stream.node.clone();
    let moved: DStream<T> = stream.derive("move", move |info| {
        Arc::new(Wide {
            info: info.placed(level, false, vec![("", level)]),
            state: None,
            pure: parent.pure(),
            compute: move |cx: &BatchCx, info: &NodeInfo| {
                if !cx.on_workers() {
                    return chunks_by_partition(cx, &parent);
                }
                Ok(vec![spread(cx, &info.name(), level, &parent)?])
            },
        })
    });
    moved
}

/// `node`'s chunks in this batch, partition by partition.
fn chunks_by_partition(cx: &BatchCx, node: &Arc<dyn Node>) -> Result<Vec<Vec<RecordBatch>>> {
    cx.for_each_partition(node, |_, run| {
        let mut chunks = Vec::new();
        run(&mut |chunk| {
            chunks.push(chunk);
            Ok(())
        })?;
        Ok(chunks)
    })
}

/// The rows of `batch` split into `buckets` by `hash_of(row)`: one piece
/// per non-empty bucket, rows in their order.
fn split_by_bucket(
    batch: &RecordBatch,
    buckets: usize,
    hash_of: impl Fn(usize) -> u64,
) -> Result<Vec<(usize, RecordBatch)>> {
    let mut indices: Vec<Vec<u32>> = vec![Vec::new(); buckets];
    for row in 0..batch.num_rows() {
        indices[bucket_of(hash_of(row), buckets)].push(row as u32);
    }
    let mut pieces = Vec::new();
    for (b, idx) in indices.into_iter().enumerate() {
        if idx.is_empty() {
            continue;
        }
        let idx = UInt32Array::from(idx);
        let columns = batch
            .columns()
            .iter()
            .map(|c| arrow::compute::take(c, &idx, None))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        pieces.push((b, RecordBatch::try_new(batch.schema(), columns)?));
    }
    Ok(pieces)
}

/// The rows of `batch` split into `buckets` by the hash of their key (its
/// leading columns).
fn split_by_key<K: Key>(batch: &RecordBatch, buckets: usize) -> Result<Vec<(usize, RecordBatch)>> {
    let keys = K::reader(batch.columns())?;
    split_by_bucket(batch, buckets, |row| hash_one::<K>(K::get(&keys, row)))
}

/// The shuffle of rows an output computed itself (SQL's partial
/// aggregates), `hashes` holding a machine-independent hash of each row's
/// key. In one process it is the identity; on many workers a stage-0 task
/// sends the rows to `op`'s repartition topic by bucket (and gets none
/// back), a stage-1 task gets what that topic held for its bucket.
pub fn exchange(
    cx: &BatchCx,
    op: &str,
    batch: RecordBatch,
    hashes: &[u64],
) -> Result<Vec<RecordBatch>> {
    exchange_at(cx, op, 1, batch, hashes)
}

/// [`exchange`] through a cut read by stage `level`: a task of the stage
/// before sends, one of that stage receives, any other gets nothing.
pub fn exchange_at(
    cx: &BatchCx,
    op: &str,
    level: usize,
    batch: RecordBatch,
    hashes: &[u64],
) -> Result<Vec<RecordBatch>> {
    match &cx.stage {
        None => Ok(vec![batch]),
        Some(role) if role.stage() == level => Ok(role.inbox(op)),
        Some(role) if role.stage() + 1 != level => Ok(Vec::new()),
        Some(role) => {
            if hashes.len() != batch.num_rows() {
                return Err(PlanError::Invalid(format!(
                    "operator {op}: {} key hashes for {} rows",
                    hashes.len(),
                    batch.num_rows()
                )));
            }
            for (b, piece) in split_by_bucket(&batch, cx.parallelism, |row| hashes[row])? {
                role.send(op, b, piece);
            }
            Ok(Vec::new())
        }
    }
}

/// Splits rows by key hash without combining (joins, stateful operators).
pub(crate) fn partition_by_key<K: Key>(
    cx: &BatchCx,
    op: &str,
    cut: Option<usize>,
    parent: &Arc<dyn Node>,
) -> Result<Vec<Vec<RecordBatch>>> {
    let buckets = cx.parallelism;
    // Rows a shuffle by this key already put in their buckets (a
    // `reduce_by_key` and what keeps its key) are handed over as they
    // are: hashing and copying each row again would put it where it is
    // (5 M new keys: 2-3 % of the run). On many workers the shuffle below
    // checks that they stay.
    if cut.is_none()
        && cx.stage.is_none()
        && parent.info().keyed()
        && parent.partitions(cx)? == buckets
    {
        return chunks_by_partition(cx, parent);
    }
    shuffle(cx, op, cut, parent, |run| {
        let pieces: Mutex<Vec<Vec<RecordBatch>>> = Mutex::new(vec![Vec::new(); buckets]);
        run(&mut |chunk| {
            let split = split_by_key::<K>(&chunk, buckets)?;
            let mut pieces = sluice_log::common::mutex(&pieces);
            for (b, piece) in split {
                pieces[b].push(piece);
            }
            Ok(())
        })?;
        let pieces = pieces.into_inner().unwrap_or_else(|p| p.into_inner());
        pieces
            .into_iter()
            .map(|chunks| {
                if chunks.is_empty() {
                    Ok(None)
                } else {
                    let schema = chunks[0].schema();
                    Ok(Some(arrow::compute::concat_batches(&schema, &chunks)?))
                }
            })
            .collect()
    })
}

pub(crate) fn reduce_by_key<K: Key, V: Data>(
    stream: &DStream<(K, V)>,
    f: impl for<'a, 'b> Fn(V::View<'a>, V::View<'b>) -> V + Send + Sync + 'static,
) -> DStream<(K, V)> {
    let parent = stream.node.clone();
    let rows = stream.row_pusher();
    stream.derive("reduce_by_key", move |info| {
        let (map_sizes, reduce_sizes) = (TableSizes::default(), TableSizes::default());
        Arc::new(Wide {
            info,
            state: None,
            pure: parent.pure(),
            compute: move |cx: &BatchCx, info: &NodeInfo| {
                let buckets = cx.parallelism;
                let (op, cut) = (info.name(), info.cut_level(""));
                // A `map`/`flat_map` read by nothing else runs inside the
                // combine: its rows are combined as they are made.
                let fused = rows.as_ref().filter(|_| !parent.info().shared());
                let pieces = match fused {
                    Some(rows) => shuffle(cx, &op, cut, rows.input(), |run| {
                        let mut combine = Combine::<K, V>::new(buckets, &map_sizes);
                        run(&mut |chunk| {
                            rows.push(&chunk, &mut |(k, v)| combine.add_row(k, v, &f))
                                .map_err(|e| super::exec::operator_error(parent.info(), e))
                        })?;
                        combine.into_buckets(&info.schema, &map_sizes)
                    })?,
                    None => shuffle(cx, &op, cut, &parent, |run| {
                        let mut combine = Combine::<K, V>::new(buckets, &map_sizes);
                        run(&mut |chunk| combine.add_chunk(&chunk, &f))?;
                        combine.into_buckets(&info.schema, &map_sizes)
                    })?,
                };
                rayon_map(pieces, |chunks| {
                    let mut table = ReduceTable::<K, V>::new(&chunks, &reduce_sizes)?;
                    for c in 0..chunks.len() {
                        table.add_chunk(c, &f);
                    }
                    Ok(table
                        .finish(&info.schema, &reduce_sizes)?
                        .into_iter()
                        .collect())
                })
            },
        })
    })
}

/// Runs `f` over each bucket in parallel, keeping bucket order.
pub(crate) fn rayon_map<T: Send, R: Send>(
    items: Vec<T>,
    f: impl Fn(T) -> Result<R> + Sync + Send,
) -> Result<Vec<R>> {
    use rayon::prelude::*;
    items.into_par_iter().map(f).collect()
}

/// A global merge's partials, one per partition, all in bucket 0: on many
/// workers the stage-1 task of bucket 0 merges them, the others see none.
/// `None`: this task emits nothing (a stage-1 task of another bucket).
fn to_bucket_zero(
    cx: &BatchCx,
    op: &str,
    cut: Option<usize>,
    parent: &Arc<dyn Node>,
    partial: impl Fn(
        &mut dyn FnMut(&mut super::ChunkSink<'_>) -> Result<()>,
    ) -> Result<Option<RecordBatch>>
    + Sync,
) -> Result<Option<Vec<RecordBatch>>> {
    let buckets = cx.parallelism;
    let mut pieces = shuffle(cx, op, cut, parent, |run| {
        let mut out: Vec<Option<RecordBatch>> = vec![None; buckets];
        out[0] = partial(run)?;
        Ok(out)
    })?;
    // Only the merging stage's task of bucket 0 merges: other stages sent
    // their partials on or had none, other buckets get none.
    if cx.task_stage().is_some() && (cx.task_stage() != cut || cx.reduce_bucket() != Some(0)) {
        return Ok(None);
    }
    Ok(Some(std::mem::take(&mut pieces[0])))
}

pub(crate) fn count<T: Data>(stream: &DStream<T>) -> DStream<u64> {
    let parent = stream.node.clone();
    stream.derive("count", move |info| {
        Arc::new(Wide {
            info,
            state: None,
            pure: parent.pure(),
            compute: move |cx: &BatchCx, info: &NodeInfo| {
                let schema = info.schema.clone();
                let partials =
                    to_bucket_zero(cx, &info.name(), info.cut_level(""), &parent, |run| {
                        let mut n = 0u64;
                        run(&mut |chunk| {
                            n += chunk.num_rows() as u64;
                            Ok(())
                        })?;
                        Ok(Some(RecordBatch::try_new(
                            schema.clone(),
                            vec![Arc::new(arrow::array::UInt64Array::from(vec![n]))],
                        )?))
                    })?;
                let Some(partials) = partials else {
                    return Ok(vec![Vec::new()]);
                };
                let mut total = 0u64;
                for p in &partials {
                    let counts = p
                        .column(0)
                        .as_any()
                        .downcast_ref::<arrow::array::UInt64Array>()
                        .ok_or_else(|| PlanError::Invalid("a partial count is not a u64".into()))?;
                    total += counts.iter().flatten().sum::<u64>();
                }
                let batch = RecordBatch::try_new(
                    info.schema.clone(),
                    vec![Arc::new(arrow::array::UInt64Array::from(vec![total]))],
                )?;
                Ok(vec![vec![batch]])
            },
        })
    })
}

pub(crate) fn reduce<T: Data>(
    stream: &DStream<T>,
    f: impl for<'a, 'b> Fn(T::View<'a>, T::View<'b>) -> T + Send + Sync + 'static,
) -> DStream<T> {
    let parent = stream.node.clone();
    stream.derive("reduce", move |info| {
        Arc::new(Wide {
            info,
            state: None,
            pure: parent.pure(),
            compute: move |cx: &BatchCx, info: &NodeInfo| {
                let schema = info.schema.clone();
                let partials =
                    to_bucket_zero(cx, &info.name(), info.cut_level(""), &parent, |run| {
                        let mut acc: Option<T> = None;
                        run(&mut |chunk| {
                            let reader = T::reader(chunk.columns())?;
                            for i in 0..chunk.num_rows() {
                                let v = T::get(&reader, i);
                                acc = Some(match &acc {
                                    None => T::to_owned_value(v),
                                    Some(a) => f(a.view(), v),
                                });
                            }
                            Ok(())
                        })?;
                        let Some(acc) = acc else { return Ok(None) };
                        let mut out = Emitter::<T>::with_capacity(1);
                        out.push_view(acc.view());
                        Ok(Some(RecordBatch::try_new(schema.clone(), out.finish())?))
                    })?;
                let mut total: Option<T> = None;
                for p in partials.iter().flatten() {
                    let reader = T::reader(p.columns())?;
                    for i in 0..p.num_rows() {
                        let v = T::get(&reader, i);
                        total = Some(match &total {
                            None => T::to_owned_value(v),
                            Some(t) => f(t.view(), v),
                        });
                    }
                }
                let Some(total) = total else {
                    return Ok(vec![Vec::new()]);
                };
                let mut out = Emitter::<T>::with_capacity(1);
                out.push_view(total.view());
                Ok(vec![vec![RecordBatch::try_new(
                    info.schema.clone(),
                    out.finish(),
                )?]])
            },
        })
    })
}

/// Hash join per bucket: the right side is built into a table, the left
/// side probes it in order.
fn join_impl<K: Key, V: Data, W: Data, O: Data>(
    left: &DStream<(K, V)>,
    right: &DStream<(K, W)>,
    kind: &'static str,
    emit: impl for<'a> Fn(K::View<'a>, V::View<'a>, Option<W::View<'a>>, &mut Emitter<O>)
    + Send
    + Sync
    + 'static,
) -> DStream<O> {
    right.node.info().add_consumer();
    let (lp, rp) = (left.node.clone(), right.node.clone());
    // Both sides meet in one stage: the later of the stages where each
    // side's rows are (or, not yet split by key, will be after a cut) in
    // their key's bucket; a side not there already is a cut.
    let ready = |p: &Arc<dyn Node>| p.info().level() + usize::from(!p.info().keyed());
    let level = ready(&lp).max(ready(&rp));
    let cuts: Vec<(&'static str, usize)> = [("-left", &lp), ("-right", &rp)]
        .into_iter()
        .filter(|(_, p)| !(p.info().keyed() && p.info().level() == level))
        .map(|(suffix, _)| (suffix, level))
        .collect();
    left.derive(kind, move |info| {
        Arc::new(Wide {
            info: info.placed(level, true, cuts),
            state: None,
            pure: lp.pure() && rp.pure(),
            compute: move |cx: &BatchCx, info: &NodeInfo| {
                let name = info.name();
                let l = partition_by_key::<K>(
                    cx,
                    &format!("{name}-left"),
                    info.cut_level("-left"),
                    &lp,
                )?;
                let r = partition_by_key::<K>(
                    cx,
                    &format!("{name}-right"),
                    info.cut_level("-right"),
                    &rp,
                )?;
                let pairs: Vec<_> = l.into_iter().zip(r).collect();
                rayon_map(pairs, |(lchunks, rchunks)| {
                    let readers = rchunks
                        .iter()
                        .map(|c| <(K, W)>::reader(c.columns()))
                        .collect::<std::result::Result<Vec<_>, _>>()?;
                    let mut table: HashTable<(u64, usize, usize)> = HashTable::new();
                    for (ci, (c, reader)) in rchunks.iter().zip(&readers).enumerate() {
                        for row in 0..c.num_rows() {
                            let h = hash_one::<K>(<(K, W)>::get(reader, row).0);
                            table.insert_unique(h, (h, ci, row), |e| e.0);
                        }
                    }
                    let mut out = Emitter::<O>::with_capacity(OUT_CHUNK);
                    for c in &lchunks {
                        let lr = <(K, V)>::reader(c.columns())?;
                        for row in 0..c.num_rows() {
                            let (k, v) = <(K, V)>::get(&lr, row);
                            let h = hash_one::<K>(k);
                            let mut matched = false;
                            for &(eh, ci, rrow) in table.iter_hash(h) {
                                let (rk, w) = <(K, W)>::get(&readers[ci], rrow);
                                if eh == h && K::eq_view(rk, k) {
                                    matched = true;
                                    emit(k, v, Some(w), &mut out);
                                }
                            }
                            if !matched {
                                emit(k, v, None, &mut out);
                            }
                        }
                    }
                    Ok(out.into_batches(&info.schema)?)
                })
            },
        })
    })
}

pub(crate) fn join<K: Key, V: Data, W: Data>(
    left: &DStream<(K, V)>,
    right: &DStream<(K, W)>,
) -> DStream<(K, (V, W))> {
    join_impl(
        left,
        right,
        "join",
        |k, v, w, out: &mut Emitter<(K, (V, W))>| {
            if let Some(w) = w {
                out.push_view((k, (v, w)));
            }
        },
    )
}

pub(crate) fn left_outer_join<K: Key, V: Data, W: Data>(
    left: &DStream<(K, V)>,
    right: &DStream<(K, W)>,
) -> DStream<(K, (V, Option<W>))> {
    join_impl(
        left,
        right,
        "left_outer_join",
        |k, v, w, out: &mut Emitter<(K, (V, Option<W>))>| {
            out.push_view((k, (v, w)));
        },
    )
}
