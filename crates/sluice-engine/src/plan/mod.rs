//! The DStream API and the job graph it builds.
//!
//! A [`DStream<T>`] is a node in the job's graph. Every batch, the driver
//! evaluates the graph's outputs (`print`, `foreach_batch`, result
//! tables) over the batch's planned source ranges:
//!
//! * **Narrow** operators (`map`, `flat_map`, `filter`, `map_values`, …)
//!   run inside the task of their input partition, chunk by chunk, fused
//!   with the source read: a chunk of records is decoded, transformed and
//!   aggregated while it is in cache, and never materialised in full.
//! * **Wide** operators (`reduce_by_key`, `count_by_value`, `join`,
//!   stateful operators) end a stage: each input task combines its rows by
//!   key and splits them into `parallelism` buckets by a fixed hash of the
//!   key (the shuffle), then one task per bucket merges them. Their output
//!   is computed once per batch and kept for every consumer.
//! * Nodes with several consumers keep their output for the batch, so a
//!   source is read once even when two outputs use it.
//!
//! Operators with state (`window`, `reduce_by_key_and_window`,
//! `update_state_by_key`, `map_with_state`) keep it in the checkpoint's
//! RocksDB column family `state.<operator name>`; their reads see the last
//! committed batch and their writes join the batch's atomic commit.
//! Operator names are derived from the job's structure (`<kind>-<n>`, the
//! n-th operator of that kind in declaration order) unless set with
//! [`DStream::named`]; name stateful operators explicitly in jobs that will
//! evolve.
//!
//! This module plans and executes per batch; it never chooses offsets,
//! never commits and never sleeps (the driver does).

mod exec;
mod output;
mod stateful;
mod wide;
mod window;

use std::marker::PhantomData;
use std::sync::{Arc, Mutex};

use arrow::array::RecordBatch;
use arrow::datatypes::{Field, Schema, SchemaRef};
use arrow::error::ArrowError;

pub use crate::checkpoint::sums::Summable;
pub use crate::data::{Data, Emit, Emitter, Key};
pub use exec::{BatchCx, BatchInfo, BatchOutcome, ChunkSink, ComputedAhead, StageRole, read_range};
pub(crate) use exec::{Node, NodeInfo, Output};
pub use stateful::State;
pub use wide::{exchange, exchange_at};

use crate::checkpoint::{CheckpointError, OperatorMeta};
use crate::source::{Record, Source, SourceError};

/// Errors while building or running a job's batch. Each names what failed.
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("schema mismatch: {0}")]
    Schema(String),
    #[error("invalid job: {0}")]
    Invalid(String),
    #[error("operator {operator}: {message}")]
    Operator { operator: String, message: String },
    #[error(transparent)]
    Arrow(#[from] ArrowError),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Codec(#[from] crate::data::CodecError),
    #[error("state store: {0}")]
    Rocks(#[from] rocksdb::Error),
    #[error(transparent)]
    Sink(#[from] crate::sink::SinkError),
}

impl From<crate::data::SchemaError> for PlanError {
    fn from(e: crate::data::SchemaError) -> PlanError {
        PlanError::Schema(e.0)
    }
}

pub type Result<T, E = PlanError> = std::result::Result<T, E>;

/// The inverse of a reduce function (`a - b` for `a + b`), for
/// [`DStream::reduce_by_key_and_window`].
pub type InverseFn<V> =
    Box<dyn for<'a, 'b> Fn(<V as Data>::View<'a>, <V as Data>::View<'b>) -> V + Send + Sync>;

/// The job as built so far: sources, nodes, outputs, and the errors found
/// while building (reported when the job starts).
#[derive(Default)]
pub(crate) struct Graph {
    pub sources: Vec<Arc<dyn Source>>,
    pub nodes: Vec<Arc<dyn Node>>,
    pub outputs: Vec<Arc<Output>>,
    pub errors: Vec<String>,
    pub interval_ms: i64,
    /// Outputs that shuffle rows not yet split by their key themselves
    /// (merge tables as `table-<name>`, SQL aggregations and joins through
    /// [`exchange`]), with the stage reading each: on many workers, where
    /// the job is cut.
    pub output_cuts: Vec<(String, usize)>,
    /// Why parts of the job cannot run on many workers.
    pub worker_refusals: Vec<String>,
    /// On many workers, stage-1 tasks run every batch even when nothing
    /// reached them: event time moves on when the input goes idle, and
    /// closes windows.
    pub reduce_every_batch: bool,
    kind_counts: std::collections::HashMap<&'static str, usize>,
}

impl Graph {
    pub fn new(interval_ms: i64) -> Self {
        Graph {
            interval_ms,
            ..Default::default()
        }
    }

    fn next_name(&mut self, kind: &'static str) -> String {
        let n = self.kind_counts.entry(kind).or_default();
        *n += 1;
        format!("{kind}-{n}")
    }

    /// The job's graph as text: sources, operators in the order they were
    /// built (with their schema and, when it cuts the job on many workers,
    /// their stage), outputs with the tables and state they keep.
    pub fn describe(&self) -> String {
        let mut text = String::from("sources:\n");
        for s in &self.sources {
            text.push_str(&format!("  {}\n", s.name()));
        }
        text.push_str("operators:\n");
        for n in &self.nodes {
            let info = n.info();
            let fields: Vec<String> = info
                .schema
                .fields()
                .iter()
                .map(|f| format!("{}: {}", f.name(), f.data_type()))
                .collect();
            text.push_str(&format!(
                "  {} ({}) -> [{}]",
                info.name(),
                info.kind(),
                fields.join(", ")
            ));
            if info.level() > 0 {
                text.push_str(&format!(" · stage {}", info.level()));
            }
            if let Some(meta) = n.state_meta() {
                text.push_str(&format!(
                    " · state {}: {} -> {}",
                    meta.name, meta.key_type, meta.state_type
                ));
            }
            text.push('\n');
        }
        text.push_str("outputs:\n");
        for o in &self.outputs {
            text.push_str(&format!("  {}", o.name));
            if let Some(t) = &o.table {
                text.push_str(&format!(
                    " · {} {}: {} -> {}",
                    t.kind, t.name, t.key_type, t.state_type
                ));
            }
            for st in &o.state {
                text.push_str(&format!(" · state {}", st.name));
            }
            text.push('\n');
        }
        text
    }

    /// Stateful operators and result tables, by their current names.
    pub fn metas(&self) -> (Vec<OperatorMeta>, Vec<OperatorMeta>) {
        let state = self
            .nodes
            .iter()
            .filter_map(|n| n.state_meta())
            .chain(self.outputs.iter().flat_map(|o| o.state.iter().cloned()))
            .collect();
        let tables = self
            .outputs
            .iter()
            .filter_map(|o| o.table.clone())
            .collect();
        (state, tables)
    }
}

/// Per-key shuffles: on many workers, a cut (a stage boundary) unless
/// their input is already in its key's bucket.
const KEYED_KINDS: [&str; 3] = ["reduce_by_key", "map_with_state", "update_state_by_key"];

/// Wide operators merging every row into one: on many workers always a
/// cut, whose reduce side is the next stage's task of bucket 0.
const GLOBAL_MERGE_KINDS: [&str; 2] = ["count", "reduce"];

/// Narrow operators whose rows keep their input's key.
const KEY_KEEPING_KINDS: [&str; 3] = ["filter", "map_values", "flat_map_values"];

/// Operators whose result depends on which rows share a batch (windows
/// numbered by batch id, per-batch joins): on many workers such a job runs
/// its stages batch-aligned (see `driver::worker`).
pub(crate) const BATCH_ALIGNED_KINDS: [&str; 4] = [
    "window",
    "reduce_by_key_and_window",
    "join",
    "left_outer_join",
];

/// Windows: their state lives with the rows they keep, which stay in
/// their key's bucket; over rows not yet shuffled, a window is a cut
/// (stage 0 keeps no state).
const WINDOW_KINDS: [&str; 2] = ["window", "reduce_by_key_and_window"];

pub(crate) type SharedGraph = Arc<Mutex<Graph>>;

fn lock_graph(g: &SharedGraph) -> std::sync::MutexGuard<'_, Graph> {
    sluice_log::common::mutex(g)
}

/// The schema of a stream of `T`.
pub fn schema_of<T: Data>() -> SchemaRef {
    let mut fields: Vec<Field> = Vec::with_capacity(T::WIDTH);
    T::fields("value", &mut fields);
    Arc::new(Schema::new(fields))
}

/// A stream of `T`, one set of Arrow batches per batch interval. Cheap to
/// clone; each use adds a consumer of the same node.
pub struct DStream<T: Data> {
    pub(crate) node: Arc<dyn Node>,
    pub(crate) graph: SharedGraph,
    /// For a `map` or `flat_map`: an `Arc<dyn PushRows<T>>`, so an
    /// aggregation right after it can take its rows one by one.
    pub(crate) rows: Option<Arc<dyn std::any::Any + Send + Sync>>,
    _t: PhantomData<fn() -> T>,
}

impl<T: Data> Clone for DStream<T> {
    fn clone(&self) -> Self {
        DStream {
            node: self.node.clone(),
            graph: self.graph.clone(),
            rows: self.rows.clone(),
            _t: PhantomData,
        }
    }
}

/// A narrow operator that can hand its output to the operator after it
/// one row at a time instead of building columns: `flat_map` feeding
/// `reduce_by_key` counts words where they are cut, without a column of
/// words in between.
pub(crate) trait PushRows<U: Data>: Send + Sync {
    /// The operator's input.
    fn input(&self) -> &Arc<dyn Node>;
    /// Runs the operator over one input chunk, each output row to `sink`.
    fn push(&self, chunk: &RecordBatch, sink: &mut dyn for<'v> FnMut(U::View<'v>)) -> Result<()>;
}

/// [`PushRows`] of a chunk-to-chunk closure (`map`, `flat_map`).
struct ChunkMapRows<T, F> {
    input: Arc<dyn Node>,
    f: Arc<F>,
    _t: PhantomData<fn() -> T>,
}

impl<T: Data, U: Data, F> PushRows<U> for ChunkMapRows<T, F>
where
    F: for<'a, 'e, 's> Fn(&T::Reader<'a>, usize, &'e mut Emitter<'s, U>) + Send + Sync,
{
    fn input(&self) -> &Arc<dyn Node> {
        &self.input
    }

    fn push(&self, chunk: &RecordBatch, sink: &mut dyn for<'v> FnMut(U::View<'v>)) -> Result<()> {
        let reader = T::reader(chunk.columns())?;
        let mut out = Emitter::into_rows(sink);
        (self.f)(&reader, chunk.num_rows(), &mut out);
        Ok(())
    }
}

impl<T: Data> DStream<T> {
    pub(crate) fn from_node(graph: SharedGraph, node: Arc<dyn Node>) -> Self {
        lock_graph(&graph).nodes.push(node.clone());
        DStream {
            node,
            graph,
            rows: None,
            _t: PhantomData,
        }
    }

    /// This stream's rows one by one, when its operator can hand them so.
    pub(crate) fn row_pusher(&self) -> Option<Arc<dyn PushRows<T>>> {
        self.rows
            .as_ref()?
            .downcast_ref::<Arc<dyn PushRows<T>>>()
            .cloned()
    }

    /// Starts a new node fed by this one.
    pub(crate) fn derive<U: Data>(
        &self,
        kind: &'static str,
        build: impl FnOnce(NodeInfo) -> Arc<dyn Node>,
    ) -> DStream<U> {
        self.node.info().add_consumer();
        let name = lock_graph(&self.graph).next_name(kind);
        let (level, keyed) = (self.node.info().level(), self.node.info().keyed());
        // Where the rows are produced on many workers (joins place
        // themselves from both sides).
        let (level, keyed, cuts) = if KEYED_KINDS.contains(&kind) {
            if keyed {
                (level, true, Vec::new())
            } else {
                (level + 1, true, vec![("", level + 1)])
            }
        } else if GLOBAL_MERGE_KINDS.contains(&kind) {
            (level + 1, false, vec![("", level + 1)])
        } else if WINDOW_KINDS.contains(&kind) {
            if level == 0 {
                (1, false, vec![("", 1)])
            } else {
                (level, keyed, Vec::new())
            }
        } else {
            (
                level,
                keyed && KEY_KEEPING_KINDS.contains(&kind),
                Vec::new(),
            )
        };
        let node = build(
            NodeInfo::new(name, schema_of::<U>())
                .with_kind(kind)
                .placed(level, keyed, cuts),
        );
        DStream::from_node(self.graph.clone(), node)
    }

    pub(crate) fn invalid(&self, message: String) {
        lock_graph(&self.graph).errors.push(message);
    }

    pub(crate) fn interval_ms(&self) -> i64 {
        lock_graph(&self.graph).interval_ms
    }

    /// Gives this stream's operator a stable name: the name its state and
    /// progress are recorded under. Names must be unique in a job.
    pub fn named(self, name: &str) -> Self {
        let mut g = lock_graph(&self.graph);
        let taken = g
            .nodes
            .iter()
            .any(|n| !Arc::ptr_eq(n, &self.node) && n.info().name() == name);
        if taken {
            g.errors.push(format!(
                "two operators are named {name:?}; names must be unique"
            ));
        }
        drop(g);
        self.node.info().rename(name);
        self
    }

    /// The operator's name (derived or given).
    pub fn name(&self) -> String {
        self.node.info().name()
    }

    /// Applies `f` to every element.
    pub fn map<R: Emit + 'static>(
        &self,
        f: impl for<'a> Fn(T::View<'a>) -> R + Send + Sync + 'static,
    ) -> DStream<R::Owned> {
        self.chunk_map("map", move |reader, rows, out: &mut Emitter<R::Owned>| {
            for i in 0..rows {
                out.push(f(T::get(reader, i)));
            }
        })
    }

    /// Applies `f` to every element; `f` pushes any number of outputs,
    /// which may borrow from the input (no copy until Arrow's builders).
    pub fn flat_map<U: Data>(
        &self,
        f: impl for<'a, 'e, 's> Fn(T::View<'a>, &'e mut Emitter<'s, U>) + Send + Sync + 'static,
    ) -> DStream<U> {
        self.chunk_map("flat_map", move |reader, rows, out: &mut Emitter<U>| {
            for i in 0..rows {
                f(T::get(reader, i), out);
            }
        })
    }

    fn chunk_map<U: Data>(
        &self,
        kind: &'static str,
        f: impl for<'a, 'e, 's> Fn(&T::Reader<'a>, usize, &'e mut Emitter<'s, U>)
        + Send
        + Sync
        + 'static,
    ) -> DStream<U> {
        let parent = self.node.clone();
        let f = Arc::new(f);
        let rows: Arc<dyn PushRows<U>> = Arc::new(ChunkMapRows::<T, _> {
            input: parent.clone(),
            f: f.clone(),
            _t: PhantomData,
        });
        let mut stream = self.derive(kind, move |info| {
            let schema = info.schema.clone();
            exec::narrow(info, parent, move |chunk: &RecordBatch| {
                let reader = T::reader(chunk.columns())?;
                let mut out = Emitter::<U>::with_capacity(chunk.num_rows());
                f(&reader, chunk.num_rows(), &mut out);
                if out.len() == 0 {
                    return Ok(None);
                }
                Ok(Some(RecordBatch::try_new(schema.clone(), out.finish())?))
            })
        });
        stream.rows = Some(Arc::new(rows));
        stream
    }

    /// Keeps the elements for which `f` is true (Arrow's filter kernel:
    /// columns are not rebuilt element by element).
    pub fn filter(
        &self,
        f: impl for<'a> Fn(T::View<'a>) -> bool + Send + Sync + 'static,
    ) -> DStream<T> {
        let parent = self.node.clone();
        self.derive("filter", move |info| {
            exec::narrow(info, parent, move |chunk: &RecordBatch| {
                let reader = T::reader(chunk.columns())?;
                let mask: arrow::array::BooleanArray = (0..chunk.num_rows())
                    .map(|i| Some(f(T::get(&reader, i))))
                    .collect();
                let kept = arrow::compute::filter_record_batch(chunk, &mask)?;
                Ok((kept.num_rows() > 0).then_some(kept))
            })
        })
    }

    /// Any function over one partition's chunk of this batch, as Arrow.
    /// The output must have the schema of `U` ([`schema_of`]).
    pub fn transform<U: Data>(
        &self,
        f: impl Fn(&RecordBatch) -> Result<RecordBatch> + Send + Sync + 'static,
    ) -> DStream<U> {
        let parent = self.node.clone();
        self.derive("transform", move |info| {
            let schema = info.schema.clone();
            exec::narrow(info, parent, move |chunk: &RecordBatch| {
                let out = f(chunk)?;
                if out.schema().fields() != schema.fields() {
                    return Err(PlanError::Schema(format!(
                        "transform returned columns {:?}, expected {:?}",
                        out.schema().fields(),
                        schema.fields()
                    )));
                }
                Ok((out.num_rows() > 0).then_some(out))
            })
        })
    }

    /// Both streams' elements.
    pub fn union(&self, other: &DStream<T>) -> DStream<T> {
        // On many workers, streams produced in different stages meet in the
        // later one: the earlier stream's rows are carried there.
        let level = self.node.info().level().max(other.node.info().level());
        let at_level = |s: &DStream<T>| {
            if s.node.info().level() < level {
                wide::moved_to(s, level)
            } else {
                s.clone()
            }
        };
        let (first, second) = (at_level(self), at_level(other));
        second.node.info().add_consumer();
        let parents = vec![first.node.clone(), second.node.clone()];
        let keyed = first.node.info().keyed() && second.node.info().keyed();
        let union: DStream<T> = first.derive("union", move |info| exec::union(info, parents));
        union.node.info().set_placement(level, keyed);
        union
    }

    /// Counts each distinct element in this batch.
    pub fn count_by_value(&self) -> DStream<(T, u64)>
    where
        T: Key,
    {
        self.pair_with_one().reduce_by_key(|a, b| a + b)
    }

    /// `(element, 1)` without touching the element's columns.
    fn pair_with_one(&self) -> DStream<(T, u64)> {
        let parent = self.node.clone();
        self.derive("pair", move |info| {
            let schema = info.schema.clone();
            exec::narrow(info, parent, move |chunk: &RecordBatch| {
                let ones = arrow::array::UInt64Array::from_value(1, chunk.num_rows());
                let mut columns = chunk.columns().to_vec();
                columns.push(Arc::new(ones));
                Ok(Some(RecordBatch::try_new(schema.clone(), columns)?))
            })
        })
    }

    /// The number of elements in this batch, as a stream of one element.
    pub fn count(&self) -> DStream<u64> {
        wide::count(self)
    }

    /// Combines all elements of the batch into one with `f` (associative).
    pub fn reduce(
        &self,
        f: impl for<'a, 'b> Fn(T::View<'a>, T::View<'b>) -> T + Send + Sync + 'static,
    ) -> DStream<T> {
        wide::reduce(self, f)
    }

    /// The union of the last `length` of batches, every `slide` (both
    /// multiples of the batch interval). Buffered batches live in RocksDB.
    pub fn window(&self, length: std::time::Duration, slide: std::time::Duration) -> DStream<T> {
        window::window(self, length, slide)
    }

    /// The number of elements in a sliding window.
    pub fn count_by_window(
        &self,
        length: std::time::Duration,
        slide: std::time::Duration,
    ) -> DStream<u64> {
        self.count().window(length, slide).reduce(|a, b| a + b)
    }

    /// Runs `f` on every batch with all of its data (partitions in order).
    /// It runs before the batch commits and runs again if the batch is
    /// replayed after a crash: make external writes idempotent by batch id.
    pub fn foreach_batch(
        &self,
        f: impl Fn(&BatchInfo, &[RecordBatch]) -> Result<()> + Send + Sync + 'static,
    ) {
        self.whole_batch_output("foreach_batch", move |cx, chunks| f(&cx.info(), chunks));
    }

    /// An output named after `kind` that runs `f` over all of every
    /// batch's data.
    fn whole_batch_output(
        &self,
        kind: &'static str,
        f: impl Fn(&BatchCx, &[RecordBatch]) -> Result<()> + Send + Sync + 'static,
    ) {
        let node = self.node.clone();
        node.info().add_consumer();
        let name = lock_graph(&self.graph).next_name(kind);
        lock_graph(&self.graph).outputs.push(Arc::new(Output {
            name,
            table: None,
            state: Vec::new(),
            run: Box::new(move |cx: &BatchCx| f(cx, &cx.collect(&node)?)),
        }));
    }

    /// An output over several streams that sees the batch context: it
    /// reads each input's chunks (whole, or one by one as they are read),
    /// may read its state (CF `state.<state.name>`) and add writes to the
    /// batch's atomic commit. The SQL layer runs its queries through this.
    pub fn output_with_context(
        inputs: &[DStream<T>],
        name: String,
        state: Vec<OperatorMeta>,
        table: Option<OperatorMeta>,
        f: impl Fn(&BatchCx, &OutputInputs) -> Result<()> + Send + Sync + 'static,
    ) {
        let Some(first) = inputs.first() else {
            return;
        };
        let nodes: Vec<Arc<dyn Node>> = inputs.iter().map(|i| i.node.clone()).collect();
        for node in &nodes {
            node.info().add_consumer();
        }
        lock_graph(&first.graph).outputs.push(Arc::new(Output {
            name,
            table,
            state,
            run: Box::new(move |cx: &BatchCx| f(cx, &OutputInputs { cx, nodes: &nodes })),
        }));
    }

    /// Prints the first `n` elements of every batch under a header.
    pub fn print(&self, n: usize) {
        output::print::<T>(self, n)
    }

    /// A console sink that prints the text `f` makes of every batch (all
    /// of its data, partitions in order); the web console shows it too.
    pub fn print_with(
        &self,
        f: impl Fn(&BatchInfo, &[RecordBatch]) -> Result<String> + Send + Sync + 'static,
    ) {
        self.whole_batch_output("print", move |cx, chunks| {
            cx.print(&f(&cx.info(), chunks)?);
            Ok(())
        });
    }

    /// Writes every element of each batch to `writer`'s topic once per
    /// batch id (Spark's and Flink's Kafka sinks): `encode` turns an
    /// element into a record's key and value (`None`: no key, or a
    /// tombstone). Keyed records go to Kafka's murmur2 partition of the key
    /// among the topic's partitions, unkeyed ones to partition 0; the
    /// timestamp is the batch time. Through a Kafka broker the records go
    /// into the job's transaction of the batch (with every other topic
    /// writer's), committed just before the checkpoint; on the bundled store
    /// they are tagged and a replay skips what is there (see
    /// [`crate::sink::topic`]). Open the writer with
    /// [`TopicWriter::open`](crate::sink::topic::TopicWriter::open); one
    /// `save_to_topic` per topic and job.
    pub fn save_to_topic(
        &self,
        writer: crate::sink::topic::TopicWriter,
        encode: impl for<'a> Fn(T::View<'a>) -> (Option<Vec<u8>>, Option<Vec<u8>>)
        + Send
        + Sync
        + 'static,
    ) {
        output::save_to_topic::<T>(self, writer, encode)
    }
}

/// The inputs of an output with context, read on demand.
pub struct OutputInputs<'c, 'a> {
    cx: &'c BatchCx<'a>,
    nodes: &'c [Arc<dyn Node>],
}

impl OutputInputs<'_, '_> {
    /// Every chunk of input `i` in this batch.
    pub fn collect(&self, i: usize) -> Result<Vec<RecordBatch>> {
        self.cx.collect(&self.nodes[i])
    }

    /// Reads input `i`'s partitions in parallel, handing each chunk to
    /// `each(partition, chunk)` as it is read (in offset order within a
    /// partition), so a batch need not be held whole.
    pub fn for_each_chunk(
        &self,
        i: usize,
        each: impl Fn(usize, RecordBatch) -> Result<()> + Sync,
    ) -> Result<()> {
        self.cx
            .for_each_partition(&self.nodes[i], |p, run| run(&mut |chunk| each(p, chunk)))
            .map(|_| ())
    }
}

impl<K: Key, V: Data> DStream<(K, V)> {
    /// Applies `f` to every value, keeping keys (their columns are reused).
    pub fn map_values<R: Emit + 'static>(
        &self,
        f: impl for<'a> Fn(V::View<'a>) -> R + Send + Sync + 'static,
    ) -> DStream<(K, R::Owned)> {
        let parent = self.node.clone();
        self.derive("map_values", move |info| {
            let schema = info.schema.clone();
            exec::narrow(info, parent, move |chunk: &RecordBatch| {
                let values = V::reader(&chunk.columns()[K::WIDTH..])?;
                let mut out = Emitter::<R::Owned>::with_capacity(chunk.num_rows());
                for i in 0..chunk.num_rows() {
                    out.push(f(V::get(&values, i)));
                }
                let mut columns = chunk.columns()[..K::WIDTH].to_vec();
                columns.extend(out.finish());
                Ok(Some(RecordBatch::try_new(schema.clone(), columns)?))
            })
        })
    }

    /// Applies `f` to every value; each output keeps the input's key.
    pub fn flat_map_values<U: Data>(
        &self,
        f: impl for<'a, 'e> Fn(V::View<'a>, &'e mut Emitter<U>) + Send + Sync + 'static,
    ) -> DStream<(K, U)> {
        let parent = self.node.clone();
        self.derive("flat_map_values", move |info| {
            let schema = info.schema.clone();
            exec::narrow(info, parent, move |chunk: &RecordBatch| {
                let keys = K::reader(&chunk.columns()[..K::WIDTH])?;
                let values = V::reader(&chunk.columns()[K::WIDTH..])?;
                let mut key_out = K::builder(chunk.num_rows());
                let mut out = Emitter::<U>::with_capacity(chunk.num_rows());
                for i in 0..chunk.num_rows() {
                    let before = out.len();
                    f(V::get(&values, i), &mut out);
                    for _ in before..out.len() {
                        K::push(&mut key_out, K::get(&keys, i));
                    }
                }
                if out.len() == 0 {
                    return Ok(None);
                }
                let mut columns = Vec::with_capacity(K::WIDTH + U::WIDTH);
                K::finish(key_out, &mut columns);
                columns.extend(out.finish());
                Ok(Some(RecordBatch::try_new(schema.clone(), columns)?))
            })
        })
    }

    /// Combines the values of each key in this batch with `f`
    /// (associative and commutative), with map-side combining.
    pub fn reduce_by_key(
        &self,
        f: impl for<'a, 'b> Fn(V::View<'a>, V::View<'b>) -> V + Send + Sync + 'static,
    ) -> DStream<(K, V)> {
        wide::reduce_by_key(self, f)
    }

    /// Pairs values of equal keys from both streams in this batch.
    pub fn join<W: Data>(&self, other: &DStream<(K, W)>) -> DStream<(K, (V, W))> {
        wide::join(self, other)
    }

    /// Like `join`, keeping left elements without a match (`None`).
    pub fn left_outer_join<W: Data>(
        &self,
        other: &DStream<(K, W)>,
    ) -> DStream<(K, (V, Option<W>))> {
        wide::left_outer_join(self, other)
    }

    /// `reduce_by_key` over a sliding window. With `inverse` (`a - b` for
    /// `a + b`), each batch adds the new batch and subtracts the one that
    /// left the window instead of recombining the whole window.
    pub fn reduce_by_key_and_window(
        &self,
        f: impl for<'a, 'b> Fn(V::View<'a>, V::View<'b>) -> V + Send + Sync + Clone + 'static,
        inverse: Option<InverseFn<V>>,
        length: std::time::Duration,
        slide: std::time::Duration,
    ) -> DStream<(K, V)> {
        window::reduce_by_key_and_window(self, f, inverse, length, slide)
    }

    /// Spark's `updateStateByKey`: every batch, `f` sees each key's new
    /// values and previous state (for every key with state, even without
    /// new values) and returns the new state, or `None` to drop the key.
    /// Emits every key's state.
    pub fn update_state_by_key<S: Data>(
        &self,
        f: impl for<'a> Fn(&[V::View<'a>], Option<S>) -> Option<S> + Send + Sync + 'static,
    ) -> DStream<(K, S)> {
        stateful::update_state_by_key(self, f)
    }

    /// Spark's `mapWithState`: `f` runs for each element in order, with its
    /// key's state, and pushes any outputs. With `timeout`, a key idle for
    /// that long is called once more with `None` and a timing-out state,
    /// then dropped.
    pub fn map_with_state<S: Data, M: Data>(
        &self,
        timeout: Option<std::time::Duration>,
        f: impl for<'a, 'e> Fn(K::View<'a>, Option<V::View<'a>>, &mut State<S>, &'e mut Emitter<M>)
        + Send
        + Sync
        + 'static,
    ) -> DStream<M> {
        stateful::map_with_state(self, timeout, f)
    }

    /// Upserts this batch's pairs into the result table `table` of the
    /// job's checkpoint, in the batch's atomic commit.
    pub fn save_to_table(&self, table: &str) {
        output::save(self, table, None::<fn(V::View<'_>, V::View<'_>) -> V>)
    }

    /// Folds this batch's pairs into the result table: a key's new value is
    /// `merge(old, new)` (just `new` for a new key), committed atomically
    /// with the offsets. Word count: `merge_into_table("counts", |a, b| a + b)`.
    pub fn merge_into_table(
        &self,
        table: &str,
        merge: impl for<'a, 'b> Fn(V::View<'a>, V::View<'b>) -> V + Send + Sync + 'static,
    ) {
        output::save(self, table, Some(merge))
    }

    /// `merge_into_table(table, |a, b| a + b)` for numbers, without reading
    /// the table: each key's sum of the batch is written as a RocksDB merge
    /// operand, which RocksDB adds to the committed value when a read or a
    /// compaction meets it. With millions of keys the reads are most of a
    /// merge's cost. Word count: `sum_into_table("counts")`.
    pub fn sum_into_table(&self, table: &str)
    where
        V: Summable,
    {
        output::save_sum(self, table)
    }
}

/// A source stream: records with Kafka's columns.
pub(crate) fn source_stream(graph_ref: &SharedGraph, source: Arc<dyn Source>) -> DStream<Record> {
    let name = source.name().to_owned();
    lock_graph(graph_ref).sources.push(source.clone());
    let info = NodeInfo::new(format!("source:{name}"), crate::source::source_schema());
    DStream::from_node(graph_ref.clone(), exec::source(info, source))
}
