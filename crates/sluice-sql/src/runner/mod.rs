//! Running a planned query every batch: decode each stream's slices (or
//! stream them through the query as they are read), drop late records and
//! move the watermark, run DataFusion's plan, merge aggregates or join
//! buffers with the stored state, and hand the output to the sink. Every
//! state change goes into the batch's commit.
//!
//! On many workers a query is cut at its GROUP BY: a stage-0 task runs
//! the partial aggregation and reports its partition's event time, a
//! stage-1 task moves the watermark from every partition's reports, drops
//! partial rows of windows already closed and merges the rest.
//!
//! The runner never chooses offsets or commits (the driver does), and
//! never plans: it runs what [`crate::planner`] decided.

mod join;
mod outer;

use join::JoinRun;

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, RecordBatch};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::logical_expr::ScalarUDF;
use datafusion::physical_plan::{ExecutionPlan, collect};
use datafusion::prelude::SessionContext;
use rocksdb::ColumnFamily;
use sluice_engine::checkpoint::{OperatorMeta, STATE_CF_PREFIX};
use sluice_engine::driver::StreamingContext;
use sluice_engine::plan::{BatchCx, DStream, OutputInputs, PlanError};
use sluice_engine::source::Record;

use crate::aggregation;
use crate::context::StaticTable;
use crate::context::{empty_streams, session_over};
use crate::error::SqlError;
use crate::incremental::{self, OutputMode, Policy};
use crate::join::IntervalJoin;
use crate::over;
use crate::pipeline;
use crate::planner::{QueryPlan, StreamInput};
use crate::retraction;
use crate::session_window;
use crate::sinks::{Changelog, Sink};
use crate::topics::{Topics, open_source};
use crate::topn::{self, TopN};
use crate::watermark;

/// What every query of a job shares.
pub(crate) struct Shared<'a> {
    pub ctx: &'a StreamingContext,
    pub topics: &'a Topics,
    pub runtime: &'a Arc<tokio::runtime::Runtime>,
    pub tables: &'a Arc<Vec<StaticTable>>,
    /// The script's own scalar functions.
    pub functions: &'a Arc<Vec<ScalarUDF>>,
    pub slices: usize,
    /// One source per topic, shared by the queries that read it.
    pub sources: HashMap<String, DStream<Record>>,
}

/// Registers a planned query as an output of the job: its sources (opened
/// once per topic), its sink, and the runner called every batch.
pub(crate) fn attach(shared: &mut Shared, plan: QueryPlan) -> Result<(), SqlError> {
    let line = plan.query.line;
    let mut records = Vec::with_capacity(plan.inputs.len());
    for input in &plan.inputs {
        let stream = match shared.sources.get(&input.topic) {
            Some(s) => s.clone(),
            None => {
                let s =
                    open_source(shared.ctx, shared.topics, &input.topic).map_err(|message| {
                        SqlError::Plan {
                            line,
                            message: format!("stream {}: {message}", input.shape.name),
                        }
                    })?;
                shared.sources.insert(input.topic.clone(), s.clone());
                s
            }
        };
        records.push(stream);
    }
    let output_schema = plan.plan.schema();
    let sink = match plan.sink {
        None => Sink::Console,
        Some(decl) => Sink::new(decl, &output_schema, shared.topics, line)?,
    };
    if let Some(outer) = plan.aggregation.as_ref().and_then(|a| a.outer.as_ref())
        && let Some(why) = &outer.may_empty
    {
        let refusal = sink
            .deletes_refusal()
            .map(str::to_owned)
            .or_else(|| retraction::deletes_refusal(&plan.plan, outer, &sink.key_columns()));
        if let Some(refusal) = refusal {
            return Err(SqlError::Unsupported {
                line,
                message: format!("{why}, so the query deletes rows; but {refusal}"),
            });
        }
    }
    if let Some(why) = plan.top_n.as_ref().and_then(|t| t.deletes.as_ref())
        && let Some(refusal) = sink.deletes_refusal()
    {
        return Err(SqlError::Unsupported {
            line,
            message: format!("{why}, so the query deletes rows; but {refusal}"),
        });
    }
    let having_deletes = having_deletes(&plan, &sink);
    let table = sink.table_meta();
    let mut state: Vec<OperatorMeta> = plan.state.iter().cloned().collect();
    // On many workers an aggregation over a join's matches is a second
    // cut: stage 1 joins (its buffers in the operator's column family),
    // stage 2 merges the partial aggregates into groups of their own.
    let mut groups_cf = None;
    let mut outer_cf = None;
    match on_workers_refusal(&plan, &sink) {
        None => {
            if plan.join.is_some() {
                for side in 0..2 {
                    shared
                        .ctx
                        .exchange_on_workers(&join_side(&plan.operator, side));
                }
                if plan.aggregation.is_some() && shared.ctx.config().workers.is_some() {
                    shared.ctx.exchange_on_workers_at(&plan.operator, 2);
                    groups_cf = stage_two_state(&plan, "groups", &mut state);
                }
            } else if plan.aggregation.is_none() {
                if matches!(sink, Sink::Table(..)) {
                    shared.ctx.exchange_on_workers(&plan.operator);
                }
            } else {
                shared.ctx.exchange_on_workers(&plan.operator);
                if plan.aggregation.as_ref().is_some_and(|a| a.nested)
                    && shared.ctx.config().workers.is_some()
                {
                    // The closed windows go on to stage 2, where the outer
                    // aggregation sees each whole.
                    shared
                        .ctx
                        .exchange_on_workers_at(&outer::outer_op(&plan.operator), 2);
                    outer_cf = stage_two_state(&plan, "closed", &mut state);
                }
            }
            if plan.inputs.iter().any(|i| i.watermark.is_some()) {
                // Windows close as the watermark moves, also on idle input.
                shared.ctx.reduce_every_batch_on_workers();
            }
        }
        Some(why) => shared.ctx.refuse_on_workers(format!(
            "the query at line {line} cannot run on many workers yet: {why}"
        )),
    }
    let operator = plan.operator.clone();
    let runner = Arc::new(QueryRunner {
        sql: plan.query.sql.clone(),
        line,
        inputs: plan.inputs,
        runtime: shared.runtime.clone(),
        operator: plan.operator,
        aggregating: plan.aggregation.is_some(),
        join: plan.join,
        // A top-N deletes what leaves its output by the sink's key.
        over: plan.over,
        top_n: plan.top_n.map(|top| TopN {
            delete_key: sink.key_columns(),
            ..top
        }),
        mode: plan.mode,
        state_ttl_ms: plan.state_ttl_ms,
        slices: shared.slices,
        streaming: plan.streaming,
        tables: shared.tables.clone(),
        functions: shared.functions.clone(),
        groups_cf,
        outer_cf,
        having_deletes,
        output_schema,
        sink,
    });
    DStream::output_with_context(&records, operator, state, table, move |cx, inputs| {
        runner.run(cx, inputs).map_err(PlanError::from)
    });
    Ok(())
}

/// Whether an update-mode aggregation (without windows) has a filter
/// above it (HAVING) that can drop a group whose row its sink holds, and
/// the sink deletes by key columns the group decides: then a group that
/// stops passing is deleted from the sink (a table's key, a keyed topic's
/// tombstone). Other sinks keep the group's last row, as before.
fn having_deletes(plan: &QueryPlan, sink: &Sink) -> bool {
    let Some(agg) = plan.aggregation.as_ref() else {
        return false;
    };
    if plan.mode != OutputMode::Update || agg.window.is_some() || agg.outer.is_some() {
        return false;
    }
    let groups: std::collections::HashSet<usize> =
        (0..agg.partial().group_expr().expr().len()).collect();
    let key = sink.key_columns();
    match retraction::derived_columns(&plan.plan, agg.top(), &groups) {
        Ok((columns, true)) => {
            sink.deletes_refusal().is_none()
                && !key.is_empty()
                && key.iter().all(|k| columns.contains(k))
        }
        _ => false,
    }
}

/// On many workers, the column family of a query's stage-2 state
/// (`state.<op>.<what>`), registered with the query's own signature: each
/// column family is written by one stage only.
fn stage_two_state(plan: &QueryPlan, what: &str, state: &mut Vec<OperatorMeta>) -> Option<String> {
    let meta = plan.state.as_ref()?;
    let name = format!("{}.{what}", plan.operator);
    let cf = format!("{STATE_CF_PREFIX}{name}");
    state.push(OperatorMeta {
        name,
        kind: format!("{} ({what}, on workers)", meta.kind),
        ..meta.clone()
    });
    Some(cf)
}

/// Why a query cannot run on many workers, where it is cut at its GROUP
/// BY (stage 0 runs the partial aggregation per input partition, stage 1
/// merges the partials of its groups into the state and the sink) or its
/// join; a query doing neither runs in stage 0, cut before its sink only
/// when that is a table (keyed by its first column).
fn on_workers_refusal(plan: &QueryPlan, sink: &Sink) -> Option<&'static str> {
    if plan.top_n.is_some() {
        return Some("it keeps a top-N per group, which runs in one process for now");
    }
    if plan.over.is_some() {
        return Some("it runs an OVER window over a stream, which runs in one process for now");
    }
    if plan.aggregation.as_ref().is_some_and(|a| a.ranked) {
        return Some(
            "it runs OVER windows over each closed window's rows, which runs in one process for now",
        );
    }
    if plan.aggregation.as_ref().is_some_and(|a| a.outer.is_some()) {
        return Some(
            "it aggregates an updating aggregation (retractions), which runs in one process for now",
        );
    }
    if plan
        .join
        .as_ref()
        .is_some_and(|j| j.windowed.contains(&true))
    {
        return Some(
            "it windows an aggregation over a join of streams, which runs in one process for now",
        );
    }
    if plan.join.is_some() {
        return sink_refusal(sink);
    }
    let Some(agg) = plan.aggregation.as_ref() else {
        return sink_refusal(sink);
    };
    if agg.window.is_none() && plan.inputs.iter().any(|i| i.watermark.is_some()) {
        return Some(
            "it drops late records without a window (on many workers lateness is judged per window)",
        );
    }
    sink_refusal(sink)
}

/// Why a query's sink cannot be written by many workers.
fn sink_refusal(sink: &Sink) -> Option<&'static str> {
    match sink {
        Sink::File(..) => Some("it writes files (use a table or topic sink)"),
        Sink::Topic(t) if !t.transactional() => Some(
            "its topic sink is not transactional (delivery = 'idempotent'): on many workers a topic sink writes inside each task's Kafka transaction",
        ),
        _ => None,
    }
}

/// The operator whose repartition topic carries one side of a join of
/// streams on many workers.
fn join_side(operator: &str, side: usize) -> String {
    format!("{operator}-side{side}")
}

/// A hash of each row's group key that every worker computes alike: the
/// key in Arrow's row format (byte-comparable, independent of the machine)
/// through FNV-1a and a final mix.
fn group_hashes(groups: &[ArrayRef], rows: usize) -> Result<Vec<u64>, SqlError> {
    if groups.is_empty() {
        // No key (a global aggregate, a session over the whole stream):
        // one bucket holds every row.
        return Ok(vec![0; rows]);
    }
    let converter = RowConverter::new(
        groups
            .iter()
            .map(|c| SortField::new(c.data_type().clone()))
            .collect(),
    )?;
    let rows = converter.convert_columns(groups)?;
    Ok(rows
        .iter()
        .map(|row| {
            let mut h: u64 = 0xcbf2_9ce4_8422_2325;
            for b in row.as_ref() {
                h ^= u64::from(*b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
            // splitmix64's finaliser: the bucket is taken from high bits.
            h ^= h >> 30;
            h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
            h ^= h >> 27;
            h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
            h ^ (h >> 31)
        })
        .collect())
}

struct QueryRunner {
    sql: String,
    line: usize,
    inputs: Vec<StreamInput>,
    runtime: Arc<tokio::runtime::Runtime>,
    operator: String,
    aggregating: bool,
    join: Option<IntervalJoin>,
    top_n: Option<TopN>,
    /// An OVER aggregate over the stream's own rows.
    over: Option<over::StreamOver>,
    mode: OutputMode,
    /// Groups not updated for this long (batch time) are forgotten.
    state_ttl_ms: Option<i64>,
    /// Slices a batch is cut into (DataFusion partitions).
    slices: usize,
    /// The batch flows through the query as it is read (`pipeline`)
    /// instead of being decoded whole first.
    streaming: bool,
    /// Static tables the query may join.
    tables: Arc<Vec<StaticTable>>,
    functions: Arc<Vec<ScalarUDF>>,
    /// On many workers, where an aggregation over a join keeps its groups
    /// (stage 2; the join's buffers stay in stage 1's column family).
    groups_cf: Option<String>,
    /// On many workers, where an aggregation over a windowed aggregation
    /// keeps the closed windows' rows until every stage-1 task closed them
    /// (stage 2; see `outer`).
    outer_cf: Option<String>,
    /// A HAVING can drop a group the sink holds, and the sink deletes by
    /// a key its group decides (see [`having_deletes`]).
    having_deletes: bool,
    /// The query's rows.
    output_schema: datafusion::arrow::datatypes::SchemaRef,
    sink: Sink,
}

impl QueryRunner {
    fn run(&self, cx: &BatchCx, inputs: &OutputInputs) -> Result<(), SqlError> {
        if let Some(outer) = &self.outer_cf
            && cx.task_stage() == Some(2)
        {
            return self.run_outer(cx, outer);
        }
        let state_cf = if self.aggregating || self.join.is_some() || self.over.is_some() {
            Some(
                cx.checkpoint
                    .cf(&format!("{STATE_CF_PREFIX}{}", self.operator))
                    .map_err(PlanError::from)?,
            )
        } else {
            None
        };
        if self.streaming {
            return self.run_streaming(cx, inputs, state_cf);
        }
        let chunks = (0..self.inputs.len())
            .map(|i| inputs.collect(i))
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(top) = self
            .top_n
            .as_ref()
            .filter(|_| self.join.is_none() && !self.aggregating)
        {
            return self.run_top_n(cx, top, &chunks);
        }
        if let (Some(over), Some(cf)) = (&self.over, state_cf) {
            return self.run_over(cx, over, cf, &chunks);
        }
        if let (Some(j), Some(cf)) = (&self.join, state_cf)
            && cx.on_workers()
        {
            return self.join_on_workers(cx, cf, j, &chunks);
        }
        let mut streams = Vec::with_capacity(self.inputs.len());
        let mut watermarks = Vec::with_capacity(self.inputs.len());
        // On a stage-1 task: windows ending at or before it already closed.
        let mut closed = None;
        for (input, chunks) in self.inputs.iter().zip(&chunks) {
            // Decoded in parallel slices: each is a partition of the table
            // DataFusion scans.
            let mut parts = input.shape.decode(cx, chunks, self.slices)?;
            // Stateful queries drop late records and move the watermark.
            let mut watermark = None;
            let name = &input.shape.name;
            if let (Some(spec), Some(cf)) = (&input.watermark, state_cf) {
                if cx.in_map_stage() {
                    watermark::report(self.line, name, spec, cx, &self.operator, &parts)?;
                    streams.push((name.clone(), parts));
                    watermarks.push(None);
                    continue;
                }
                if let Some(progress) = cx.received_progress(&self.operator) {
                    let sources = cx.source_partitions(&input.topic).unwrap_or(0);
                    let moved =
                        watermark::received(self.line, name, spec, cx, cf, progress, sources)?;
                    closed = moved.before;
                    if let Some(w) = moved.after {
                        cx.watermark(name, w);
                    }
                    streams.push((name.clone(), parts));
                    watermarks.push(moved.after);
                    continue;
                }
                let on_time = self.on_time(cx, cf, input, spec, parts)?;
                parts = on_time.rows;
                watermark = on_time.watermark;
            }
            streams.push((input.shape.name.clone(), parts));
            watermarks.push(watermark);
        }
        if let (Some(j), Some(cf)) = (&self.join, state_cf) {
            let output = self.join_run(j).run(cx, cf, streams, &watermarks)?;
            return self.sink.apply(cx, &output);
        }
        let watermark = watermarks.first().copied().flatten();
        let (session, _) = session_over(streams, &self.tables, &self.functions)?;
        let output = self
            .runtime
            .block_on(self.execute(session, cx, state_cf, watermark, closed))?;
        self.deliver(cx, output)
    }

    /// A top-N's batch: every record counts (a rank has no window to be
    /// late for), the groups' kept rows are in the query's state. A
    /// window top-N emitted as its windows close (`top.closing`) drops
    /// late records and moves the watermark first.
    fn run_top_n(
        &self,
        cx: &BatchCx,
        top: &TopN,
        chunks: &[Vec<RecordBatch>],
    ) -> Result<(), SqlError> {
        let cf = cx
            .checkpoint
            .cf(&format!("{STATE_CF_PREFIX}{}", self.operator))
            .map_err(PlanError::from)?;
        let mut streams = Vec::with_capacity(self.inputs.len());
        let mut watermark = None;
        for (input, chunks) in self.inputs.iter().zip(chunks) {
            let mut parts = input.shape.decode(cx, chunks, self.slices)?;
            let name = &input.shape.name;
            if let (true, Some(spec)) = (top.closing, &input.watermark) {
                let on_time = self.on_time(cx, cf, input, spec, parts)?;
                parts = on_time.rows;
                watermark = on_time.watermark;
            }
            streams.push((name.clone(), parts));
        }
        let (session, _) = session_over(streams, &self.tables, &self.functions)?;
        let output = self
            .runtime
            .block_on(topn::run(&session, &self.sql, top, cx, cf, watermark))?;
        self.sink.apply(cx, &output)
    }

    /// An OVER aggregate's batch over its stream: late records dropped
    /// and the watermark moved, then the rows the watermark passes
    /// emitted over the stored rows before them.
    fn run_over(
        &self,
        cx: &BatchCx,
        over: &over::StreamOver,
        cf: &ColumnFamily,
        chunks: &[Vec<RecordBatch>],
    ) -> Result<(), SqlError> {
        let input = &self.inputs[0];
        let name = &input.shape.name;
        let parts = input.shape.decode(cx, &chunks[0], self.slices)?;
        let spec = input.watermark.as_ref().ok_or_else(|| SqlError::State {
            message: format!("stream {name} lost its watermark"),
        })?;
        let on_time = self.on_time(cx, cf, input, spec, parts)?;
        let (session, _) = session_over(
            vec![(name.clone(), on_time.rows)],
            &self.tables,
            &self.functions,
        )?;
        let output = self.runtime.block_on(over::run_stream(
            &session,
            &self.sql,
            over,
            cx,
            cf,
            on_time.watermark,
        ))?;
        self.sink.write(cx, &output)
    }

    /// `input`'s rows of this batch without its late records (counted),
    /// its watermark moved (and shown in the batch's progress).
    fn on_time(
        &self,
        cx: &BatchCx,
        cf: &ColumnFamily,
        input: &StreamInput,
        spec: &crate::watermark::Watermark,
        parts: Vec<RecordBatch>,
    ) -> Result<watermark::OnTime, SqlError> {
        let name = &input.shape.name;
        let on_time =
            watermark::drop_late_and_advance(self.line, name, &input.topic, spec, cx, cf, parts)?;
        cx.count("late records", on_time.late);
        if let Some(w) = on_time.watermark {
            cx.watermark(name, w);
        }
        Ok(on_time)
    }

    /// Writes a batch's rows to the sink. On many workers, a query without
    /// state into a table is cut before the sink: stage 0 sends its rows by
    /// a hash of their key (the first column) and the stage-1 task owning
    /// the key writes them, so a key's rows land in one task's table in
    /// order.
    fn deliver(&self, cx: &BatchCx, output: Changelog) -> Result<(), SqlError> {
        let stateless = !self.aggregating && self.join.is_none();
        if !(stateless && cx.on_workers() && matches!(self.sink, Sink::Table(..))) {
            return self.sink.apply(cx, &output);
        }
        // A stateless query only upserts.
        if cx.in_map_stage() {
            for batch in output.upserts.into_iter().filter(|b| b.num_rows() > 0) {
                let hashes = group_hashes(&[batch.column(0).clone()], batch.num_rows())?;
                sluice_engine::plan::exchange(cx, &self.operator, batch, &hashes)?;
            }
            return Ok(());
        }
        let empty = RecordBatch::new_empty(self.output_schema.clone());
        let mine = sluice_engine::plan::exchange(cx, &self.operator, empty, &[])?;
        self.sink.write(cx, &mine)
    }

    fn join_run<'a>(&'a self, join: &'a IntervalJoin) -> JoinRun<'a> {
        JoinRun {
            sql: &self.sql,
            line: self.line,
            runtime: &self.runtime,
            tables: &self.tables,
            functions: &self.functions,
            aggregating: self.aggregating,
            top_n: self.top_n.as_ref(),
            partials_to: self.groups_cf.as_ref().map(|_| self.operator.as_str()),
            policy: self.policy(None),
            schemas: [
                self.inputs[0].shape.schema.clone(),
                self.inputs[1].shape.schema.clone(),
            ],
            join,
        }
    }

    /// A join of streams on many workers, cut before the join: a stage-0
    /// task sends each stream's rows by the hash of their join key to
    /// that side's repartition topic (and its partition's event time
    /// after them); a stage-1 task receives the rows of its keys from
    /// both sides, drops those behind their stream's watermark, moves the
    /// watermarks and joins them against its buffers as one process does.
    fn join_on_workers(
        &self,
        cx: &BatchCx,
        cf: &ColumnFamily,
        join: &IntervalJoin,
        chunks: &[Vec<RecordBatch>],
    ) -> Result<(), SqlError> {
        if let Some(groups) = &self.groups_cf
            && cx.task_stage() == Some(2)
        {
            return self.merge_join_groups(cx, groups);
        }
        if cx.in_map_stage() {
            // A join without an equality of columns (or comparing computed
            // values) meets in one task: bucket 0.
            let by_columns = !join.keys[0].is_empty()
                && self.inputs.iter().zip(&join.keys).all(|(input, keys)| {
                    keys.iter()
                        .all(|k| input.shape.schema.field_with_name(k).is_ok())
                });
            for (side, (input, chunks)) in self.inputs.iter().zip(chunks).enumerate() {
                let op = join_side(&self.operator, side);
                let parts = input.shape.decode(cx, chunks, self.slices)?;
                if let Some(spec) = &input.watermark {
                    watermark::report(self.line, &input.shape.name, spec, cx, &op, &parts)?;
                }
                for part in parts.into_iter().filter(|p| p.num_rows() > 0) {
                    let keys = if by_columns {
                        join.keys[side]
                            .iter()
                            .map(|k| {
                                crate::join::key_column(part.column(part.schema().index_of(k)?))
                            })
                            .collect::<Result<Vec<_>, SqlError>>()?
                    } else {
                        Vec::new()
                    };
                    let hashes = group_hashes(&keys, part.num_rows())?;
                    sluice_engine::plan::exchange(cx, &op, part, &hashes)?;
                }
            }
            return Ok(());
        }
        let mut streams = Vec::with_capacity(2);
        let mut watermarks = Vec::with_capacity(2);
        for (side, input) in self.inputs.iter().enumerate() {
            let op = join_side(&self.operator, side);
            let empty = RecordBatch::new_empty(input.shape.schema.clone());
            let mut rows = sluice_engine::plan::exchange(cx, &op, empty, &[])?;
            let mut watermark = None;
            if let Some(spec) = &input.watermark {
                let progress = cx.received_progress(&op).unwrap_or_default();
                let sources = cx.source_partitions(&input.topic).unwrap_or(0);
                let name = &input.shape.name;
                let moved = watermark::received(self.line, name, spec, cx, cf, progress, sources)?;
                let sifted = watermark::sift(spec, rows, moved.before)?;
                cx.count("late records", sifted.late);
                rows = sifted.rows;
                watermark = moved.after;
                if let Some(w) = watermark {
                    cx.watermark(name, w);
                }
            }
            // The query scans at least one (empty) slice of each stream.
            let rows = crate::join::or_empty(rows, &input.shape.schema);
            streams.push((input.shape.name.clone(), rows));
            watermarks.push(watermark);
        }
        let output = self.join_run(join).run(cx, cf, streams, &watermarks)?;
        if self.groups_cf.is_some() {
            // The matches' partial aggregates went on to stage 2.
            return Ok(());
        }
        self.sink.apply(cx, &output)
    }

    /// The query planned over empty streams, and its aggregation: what a
    /// task that receives only partial or closed rows (a later stage)
    /// merges and finishes them with.
    fn planned_over_nothing(
        &self,
        event_time: Option<&str>,
    ) -> Result<
        (
            SessionContext,
            Arc<dyn ExecutionPlan>,
            aggregation::Aggregation,
        ),
        SqlError,
    > {
        let shapes: Vec<_> = self.inputs.iter().map(|i| i.shape.clone()).collect();
        let (session, _) = session_over(empty_streams(&shapes, 1), &self.tables, &self.functions)?;
        let plan: Arc<dyn ExecutionPlan> = self
            .runtime
            .block_on(async { session.sql(&self.sql).await?.create_physical_plan().await })?;
        let agg = aggregation::expect(&plan, event_time, self.line)?;
        Ok((session, plan, agg))
    }

    /// Stage 2 of an aggregation over a windowed aggregation on many
    /// workers: the outer aggregation over every window all stage-1 tasks
    /// have closed.
    fn run_outer(&self, cx: &BatchCx, outer_cf: &str) -> Result<(), SqlError> {
        let event_time = match self.inputs.as_slice() {
            [only] => only.watermark.as_ref().map(|w| w.column.as_str()),
            _ => None,
        };
        let (session, plan, agg) = self.planned_over_nothing(event_time)?;
        let op = outer::outer_op(&self.operator);
        let empty = RecordBatch::new_empty(agg.top.schema());
        let rows = sluice_engine::plan::exchange_at(cx, &op, 2, empty, &[])?;
        let progress = cx.received_progress(&op).unwrap_or_default().to_vec();
        let cf = cx.checkpoint.cf(outer_cf).map_err(PlanError::from)?;
        let ready = outer::closed_everywhere(cx, cf, &agg, rows, &progress)?;
        let parts = ready.into_iter().map(|b| b.columns().to_vec()).collect();
        let output = self
            .runtime
            .block_on(incremental::run_rest(&session, &plan, &agg, parts))?;
        self.sink.write(cx, &output)
    }

    /// Stage 2 of an aggregation over a join on many workers: the partial
    /// aggregates stage-1 tasks computed over their matches, merged into
    /// the groups this task owns, as one process merges its own.
    fn merge_join_groups(&self, cx: &BatchCx, groups: &str) -> Result<(), SqlError> {
        let (session, plan, agg) = self.planned_over_nothing(None)?;
        let schema = agg.partial().schema();
        let empty = RecordBatch::new_empty(schema.clone());
        let mine = sluice_engine::plan::exchange_at(cx, &self.operator, 2, empty, &[])?;
        let columns = incremental::concat_columns(&schema, &mine)?;
        let cf = cx.checkpoint.cf(groups).map_err(PlanError::from)?;
        let output = self.runtime.block_on(incremental::merge_batch(
            &session,
            &plan,
            &agg,
            self.policy(None),
            cx,
            cf,
            columns,
        ))?;
        self.sink.apply(cx, &output)
    }

    /// Runs the query over its one stream as the batch is read: see
    /// `pipeline`.
    fn run_streaming(
        &self,
        cx: &BatchCx,
        inputs: &OutputInputs,
        state_cf: Option<&ColumnFamily>,
    ) -> Result<(), SqlError> {
        let input = &self.inputs[0];
        let streamed = pipeline::streamed(&input.shape, self.slices, cx.batch_time_ms)?;
        // Planned over empty slices (for the partition count), then the
        // stream's name points at the channels.
        let empty = empty_streams(std::slice::from_ref(&input.shape), self.slices);
        let (session, _) = session_over(empty, &self.tables, &self.functions)?;
        session.deregister_table(input.shape.name.as_str())?;
        session.register_table(input.shape.name.as_str(), streamed.table.clone())?;
        // The session goes with this closure: once it returns nothing
        // holds the channels, so a reader waiting on them stops.
        let (output, bad) = streamed.run(inputs, 0, move || {
            self.runtime
                .block_on(self.execute(session, cx, state_cf, None, None))
        })?;
        cx.count("bad records", bad);
        self.deliver(cx, output)
    }

    /// Plans the query over the batch's tables in `session` and runs it;
    /// an aggregation is merged with its stored state (`cf`), closing the
    /// windows `watermark` has passed. On a stage-1 task, partial rows of
    /// windows that ended at or before `closed` are late.
    async fn execute(
        &self,
        session: SessionContext,
        cx: &BatchCx<'_>,
        state_cf: Option<&ColumnFamily>,
        watermark: Option<i64>,
        closed: Option<i64>,
    ) -> Result<Changelog, SqlError> {
        let plan: Arc<dyn ExecutionPlan> =
            session.sql(&self.sql).await?.create_physical_plan().await?;
        let Some(cf) = state_cf else {
            return Ok(collect(plan, session.task_ctx()).await?.into());
        };
        let event_time = match self.inputs.as_slice() {
            [only] => only.watermark.as_ref().map(|w| w.column.as_str()),
            _ => None,
        };
        let agg = aggregation::expect(&plan, event_time, self.line)?;
        let session_bounds = agg.window.and_then(|w| w.session);
        let columns = incremental::partial_columns(&session, &agg).await?;
        // Sessions of one key meet in one task whatever their bounds.
        let groups = agg.partial().group_expr().expr().len();
        let key: Vec<usize> = (0..groups)
            .filter(|i| session_bounds.is_none_or(|b| *i != b.start && *i != b.end))
            .collect();
        let columns = self.exchange(cx, &agg, columns, &key)?;
        let (columns, late) = incremental::drop_closed_windows(&agg, columns, closed)?;
        cx.count("late partial aggregates", late as u64);
        if self.outer_cf.is_some() && cx.task_stage() == Some(1) {
            let parts =
                incremental::merge_into_state(&agg, self.policy(watermark), cx, cf, columns)?;
            let op = outer::outer_op(&self.operator);
            outer::send_closed(cx, &op, &agg, parts, (closed, watermark))?;
            return Ok(Changelog::default());
        }
        if let Some(bounds) = session_bounds {
            return Ok(session_window::merge_partials(
                &session, &plan, &agg, bounds, watermark, cx, cf, columns,
            )
            .await?
            .into());
        }
        if let Some(top) = self.top_n.as_ref().filter(|_| agg.ranked_groups) {
            return crate::ranked::run(
                &session,
                &plan,
                &agg,
                self.policy(watermark),
                top,
                cx,
                cf,
                columns,
            )
            .await;
        }
        incremental::merge_batch(
            &session,
            &plan,
            &agg,
            self.policy(watermark),
            cx,
            cf,
            columns,
        )
        .await
    }

    /// On many workers, sends the batch's partial aggregates to the tasks
    /// owning their groups (by the group columns `key`) and takes this
    /// task's (see [`sluice_engine::plan::exchange`]); in one process,
    /// nothing moves.
    fn exchange(
        &self,
        cx: &BatchCx,
        agg: &aggregation::Aggregation,
        columns: Vec<ArrayRef>,
        key: &[usize],
    ) -> Result<Vec<ArrayRef>, SqlError> {
        if !cx.on_workers() {
            return Ok(columns);
        }
        let schema = agg.partial().schema();
        let batch = RecordBatch::try_new(schema.clone(), columns)?;
        let key: Vec<ArrayRef> = key.iter().map(|&i| batch.column(i).clone()).collect();
        let hashes = group_hashes(&key, batch.num_rows())?;
        let mine = sluice_engine::plan::exchange(cx, &self.operator, batch, &hashes)?;
        incremental::concat_columns(&schema, &mine)
    }

    fn policy(&self, watermark: Option<i64>) -> Policy {
        Policy {
            mode: self.mode,
            watermark,
            ttl: self.state_ttl_ms,
            deletes: self.having_deletes,
        }
    }
}
