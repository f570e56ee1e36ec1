//! A join's batch: this batch's rows of each stream against the buffered
//! rows of the other with the same join key (and the other's new rows
//! once), then the new rows are buffered and those the bound, the
//! watermarks or the TTL have put out of reach are evicted (see
//! [`crate::join`] for the bound and the buffer's layout).

use datafusion::arrow::array::{Array, ArrayRef, RecordBatch};
use datafusion::arrow::compute::concat;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::logical_expr::ScalarUDF;
use datafusion::physical_plan::{ExecutionPlan, collect};
use rocksdb::{ColumnFamily, DB};
use sluice_engine::plan::BatchCx;

use crate::aggregation;
use crate::context::StaticTable;
use crate::context::session_over;
use crate::error::SqlError;
use crate::incremental::{self, Policy};
use crate::join::{self, Change, IntervalJoin, JoinBuffer, RowTime};
use crate::sinks::Changelog;
use crate::topn::{self, TopN};

/// One batch's rows of a stream, by table name.
type Rows = (String, Vec<RecordBatch>);

/// What a join query's batch needs of its query.
pub(super) struct JoinRun<'a> {
    pub sql: &'a str,
    pub line: usize,
    pub runtime: &'a tokio::runtime::Runtime,
    pub tables: &'a [StaticTable],
    pub functions: &'a [ScalarUDF],
    /// An aggregation runs over the join's matches.
    pub aggregating: bool,
    /// A top-N ranks the join's matches.
    pub top_n: Option<&'a TopN>,
    /// On many workers, the operator whose stage-2 cut takes the matches'
    /// partial aggregates (merged there, not here).
    pub partials_to: Option<&'a str>,
    pub policy: Policy,
    /// The two streams' decoded schemas.
    pub schemas: [SchemaRef; 2],
    pub join: &'a IntervalJoin,
}

impl JoinRun<'_> {
    /// The batch's new matches (or, aggregating, the groups they
    /// changed); stages the buffer's changes in the batch's commit.
    pub(super) fn run(
        &self,
        cx: &BatchCx,
        cf: &ColumnFamily,
        streams: Vec<Rows>,
        watermarks: &[Option<i64>],
    ) -> Result<Changelog, SqlError> {
        let db = cx.checkpoint.db();
        let [(n0, new0), (n1, new1)]: [Rows; 2] =
            streams.try_into().map_err(|_| SqlError::Plan {
                line: self.line,
                message: "a join reads two streams".into(),
            })?;
        let [schema0, schema1] = &self.schemas;
        // With a TTL, rows brought by batches more than the TTL ago match
        // nothing (they are deleted below).
        let from = self.join.ttl_ms.map_or(i64::MIN, |ttl| {
            cx.batch_time_ms.saturating_sub(ttl).saturating_add(1)
        });
        let buffer = JoinBuffer::new(self.join, self.schemas.clone())?;
        let mut writes = Vec::new();
        // Only the buffered rows whose key a new row of the other stream
        // carries can match it.
        let mut old0 = buffer.matching(db, cf, 0, &new1, from)?;
        let mut old1 = buffer.matching(db, cf, 1, &new0, from)?;
        // Rows an older Sluice buffered in slices by time join as they are
        // and move into the keyed layout in this commit.
        for (side, old) in [&mut old0, &mut old1].into_iter().enumerate() {
            for (rows, newest, batch_id) in
                join::take_legacy(db, cf, side as u8, from, &mut writes)?
            {
                let time = RowTime::Fixed(newest);
                buffer.store(
                    &mut writes,
                    side,
                    batch_id,
                    std::slice::from_ref(&rows),
                    time,
                    self.line,
                )?;
                old.push(rows);
            }
        }
        old1.extend(new1.iter().cloned());
        let runs = [
            vec![
                (n0.clone(), new0.clone()),
                (n1.clone(), join::or_empty(old1, schema1)),
            ],
            vec![(n0, join::or_empty(old0, schema0)), (n1, new1.clone())],
        ];
        let output = self.new_matches(cx, cf, runs, self.join.matches_watermark(watermarks))?;
        self.buffer(
            &buffer,
            db,
            cf,
            cx,
            [&new0, &new1],
            from,
            watermarks,
            &mut writes,
        )?;
        cx.write(|w| {
            for (key, value) in writes {
                match value {
                    Some(v) => w.put_cf(cf, key, v),
                    None => w.delete_cf(cf, key),
                }
            }
        });
        Ok(output)
    }

    /// Runs the query over `new0 × all1` and `old0 × new1`. An
    /// aggregation over the join merges both runs' partial aggregates
    /// once with the stored groups; windowed, it closes the windows the
    /// matches' watermark (`closing`) has passed. No match of this batch
    /// falls in a window an earlier batch closed (see
    /// [`IntervalJoin::matches_watermark`]).
    fn new_matches(
        &self,
        cx: &BatchCx,
        cf: &ColumnFamily,
        runs: [Vec<Rows>; 2],
        closing: Option<i64>,
    ) -> Result<Changelog, SqlError> {
        if let Some(top) = self.top_n {
            return self.rank_matches(cx, cf, runs, top);
        }
        let mut output = Vec::new();
        let mut partials: Vec<Vec<ArrayRef>> = Vec::new();
        let mut last = None;
        for streams in runs {
            let (session, _) = session_over(streams, self.tables, self.functions)?;
            let plan = self
                .runtime
                .block_on(async { session.sql(self.sql).await?.create_physical_plan().await })?;
            if self.aggregating {
                let agg = aggregation::expect(&plan, None, self.line)?;
                partials.push(
                    self.runtime
                        .block_on(incremental::partial_columns(&session, &agg))?,
                );
                last = Some((session, plan, agg));
            } else {
                output.extend(self.runtime.block_on(collect(plan, session.task_ctx()))?);
            }
        }
        let Some((session, plan, agg)) = last else {
            return Ok(output.into());
        };
        let columns = (0..partials[0].len())
            .map(|i| {
                let parts: Vec<&dyn Array> = partials.iter().map(|p| p[i].as_ref()).collect();
                concat(&parts)
            })
            .collect::<Result<Vec<_>, _>>()?;
        if let Some(op) = self.partials_to {
            let batch =
                RecordBatch::try_new(ExecutionPlan::schema(agg.partial().as_ref()), columns)?;
            let groups = agg.partial().group_expr().expr().len();
            let key: Vec<ArrayRef> = (0..groups).map(|i| batch.column(i).clone()).collect();
            let hashes = super::group_hashes(&key, batch.num_rows())?;
            sluice_engine::plan::exchange_at(cx, op, 2, batch, &hashes)?;
            return Ok(Changelog::default());
        }
        let policy = Policy {
            watermark: closing,
            ..self.policy
        };
        self.runtime.block_on(incremental::merge_batch(
            &session, &plan, &agg, policy, cx, cf, columns,
        ))
    }

    /// Ranks both runs' new matches into the top-N's groups.
    fn rank_matches(
        &self,
        cx: &BatchCx,
        cf: &ColumnFamily,
        runs: [Vec<Rows>; 2],
        top: &TopN,
    ) -> Result<Changelog, SqlError> {
        let mut matches = Vec::new();
        let mut last = None;
        for streams in runs {
            let (session, _) = session_over(streams, self.tables, self.functions)?;
            let plan = self.runtime.block_on(topn::planned(&session, self.sql))?;
            matches.extend(self.runtime.block_on(topn::input_rows(&session, &plan))?);
            last = Some((session, plan));
        }
        let Some((session, plan)) = last else {
            return Ok(Changelog::default());
        };
        self.runtime
            .block_on(topn::rank(&session, &plan, top, cx, cf, matches, None))
    }

    /// Buffers the batch's new rows of both streams and evicts the rows
    /// nothing to come can match.
    #[allow(clippy::too_many_arguments)]
    fn buffer(
        &self,
        buffer: &JoinBuffer,
        db: &DB,
        cf: &ColumnFamily,
        cx: &BatchCx,
        new: [&[RecordBatch]; 2],
        from: i64,
        watermarks: &[Option<i64>],
        writes: &mut Vec<Change>,
    ) -> Result<(), SqlError> {
        let j = self.join;
        if j.ttl_ms.is_some() {
            // Kept for the TTL after the batch that brought them.
            for (side, rows) in new.into_iter().enumerate() {
                let time = RowTime::Fixed(cx.batch_time_ms);
                buffer.store(writes, side, cx.batch_id, rows, time, self.line)?;
            }
            join::evict(db, writes, cf, 0, from)?;
            join::evict(db, writes, cf, 1, from)?;
            return Ok(());
        }
        // Each key's rows under their newest event time.
        for (side, rows) in new.into_iter().enumerate() {
            let time = RowTime::Column(&j.columns[side]);
            buffer.store(writes, side, cx.batch_id, rows, time, self.line)?;
        }
        // A row of stream 0 at t0 can still match a stream-1 row to
        // come (t1 ≥ W1) only if t0 ≥ W1 + lo; one of stream 1 only if
        // t1 ≥ W0 − hi.
        if let Some(w1) = watermarks[1] {
            join::evict(db, writes, cf, 0, w1.saturating_add(j.lo_ms))?;
        }
        if let Some(w0) = watermarks[0] {
            join::evict(db, writes, cf, 1, w0.saturating_sub(j.hi_ms))?;
        }
        Ok(())
    }
}
