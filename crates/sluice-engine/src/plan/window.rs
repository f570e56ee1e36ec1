//! Sliding windows over batches.
//!
//! Window length and slide are whole numbers of batch intervals, and
//! windows are numbered by batch id, not wall-clock time, so a replayed
//! batch computes the same window. A window operator stores each batch's
//! input (Arrow IPC) in its state column family under the batch id and
//! deletes it once it leaves the window; output appears every `slide`
//! (batches whose id is a multiple of the slide).
//!
//! On many workers batch ids follow the clock (the same id on every task,
//! see `driver::worker`), and a task that was stopped skips ids: a window
//! due at a skipped id fires at the next batch, and every stored batch
//! that left the window meanwhile leaves it then. A window over rows not
//! yet shuffled is a cut, so its state lives in a stage-1 task with a
//! changelog. It never runs in a task of another stage.

use std::io::Cursor;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;
use rocksdb::{ColumnFamily, Direction, IteratorMode};

use super::exec::{BatchCx, NodeInfo, Wide};
use super::wide::Aggregate;
use super::{DStream, PlanError, Result};
use crate::checkpoint::{OperatorMeta, STATE_CF_PREFIX};
use crate::data::{Data, Key, decode_all, encode_to_vec};

/// Buffer keys: b'w' + batch id; running aggregates: b'a' + key.
const BUFFER: u8 = b'w';
const RUNNING: u8 = b'a';

fn buffer_key(batch_id: u64) -> Vec<u8> {
    let mut k = vec![BUFFER];
    k.extend_from_slice(&batch_id.to_be_bytes());
    k
}

/// `(length, slide)` in batches, or an error naming the problem.
fn in_batches(
    interval_ms: i64,
    length: Duration,
    slide: Duration,
) -> std::result::Result<(u64, u64), String> {
    let interval_ns = interval_ms.max(0) as u128 * 1_000_000;
    let (len, sl) = (length.as_nanos(), slide.as_nanos());
    if interval_ns == 0 || len == 0 || sl == 0 || len % interval_ns != 0 || sl % interval_ns != 0 {
        return Err(format!(
            "window length {length:?} and slide {slide:?} must be positive multiples of the batch interval ({interval_ms} ms)"
        ));
    }
    if sl > len {
        return Err(format!(
            "window slide {slide:?} is longer than its length {length:?}"
        ));
    }
    Ok(((len / interval_ns) as u64, (sl / interval_ns) as u64))
}

fn state_cf<'a>(cx: &'a BatchCx, info: &NodeInfo) -> Result<&'a ColumnFamily> {
    Ok(cx
        .checkpoint
        .cf(&format!("{STATE_CF_PREFIX}{}", info.name()))?)
}

pub(crate) fn encode_ipc(schema: &SchemaRef, chunks: &[RecordBatch]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut writer = StreamWriter::try_new(&mut out, schema)?;
    for c in chunks {
        writer.write(c)?;
    }
    writer.finish()?;
    drop(writer);
    Ok(out)
}

pub(crate) fn decode_ipc(bytes: &[u8]) -> Result<Vec<RecordBatch>> {
    StreamReader::try_new(Cursor::new(bytes), None)?
        .map(|b| b.map_err(PlanError::from))
        .collect()
}

/// Stored batches with ids in `[first, last]`, oldest first.
fn stored_batches(
    cx: &BatchCx,
    cf: &ColumnFamily,
    first: u64,
    last: u64,
) -> Result<Vec<RecordBatch>> {
    let mut out = Vec::new();
    let start = buffer_key(first);
    for item in cx
        .checkpoint
        .db()
        .iterator_cf(cf, IteratorMode::From(&start, Direction::Forward))
    {
        let (key, value) = item?;
        if key.first() != Some(&BUFFER) || key.len() != 9 {
            break;
        }
        let id = u64::from_be_bytes(key[1..9].try_into().unwrap_or_default());
        if id > last {
            break;
        }
        out.extend(decode_ipc(&value)?);
    }
    Ok(out)
}

/// Stores this batch's chunks and forgets the ones that left the window.
fn buffer_batch(
    cx: &BatchCx,
    info: &NodeInfo,
    schema: &SchemaRef,
    chunks: &[RecordBatch],
    keep: u64,
) -> Result<()> {
    let cf = state_cf(cx, info)?;
    let bytes = encode_ipc(schema, chunks)?;
    let oldest_kept = buffer_key((cx.batch_id + 1).saturating_sub(keep));
    // Key by key, not as a range: on many workers every state write is
    // also a changelog record.
    let mut leaving = Vec::new();
    for item in cx
        .checkpoint
        .db()
        .iterator_cf(cf, IteratorMode::From(&buffer_key(0), Direction::Forward))
    {
        let (key, _) = item?;
        if key.first() != Some(&BUFFER) || key.as_ref() >= oldest_kept.as_slice() {
            break;
        }
        leaving.push(key);
    }
    cx.write(|w| {
        w.put_cf(cf, buffer_key(cx.batch_id), bytes);
        for key in &leaving {
            w.delete_cf(cf, key);
        }
    });
    Ok(())
}

/// On many workers, whether this task runs the stage where the window's
/// state lives (earlier stages only send its input on).
fn in_own_stage(cx: &BatchCx, info: &NodeInfo) -> bool {
    cx.task_stage().is_none_or(|stage| stage == info.level())
}

pub(crate) fn window<T: Data>(
    stream: &DStream<T>,
    length: Duration,
    slide: Duration,
) -> DStream<T> {
    let (len_b, slide_b) = match in_batches(stream.interval_ms(), length, slide) {
        Ok(v) => v,
        Err(e) => {
            stream.invalid(e);
            (1, 1)
        }
    };
    let parent = stream.node.clone();
    stream.derive("window", move |info| {
        Arc::new(Wide {
            pure: false,
            state: Some(OperatorMeta {
                name: String::new(),
                kind: format!("window({len_b},{slide_b})"),
                key_type: "batch".into(),
                state_type: T::type_name(),
            }),
            info,
            compute: move |cx: &BatchCx, info: &NodeInfo| {
                let current = match (cx.on_workers(), info.cut_level("")) {
                    (true, Some(level)) => super::wide::spread(cx, &info.name(), level, &parent)?,
                    _ => cx.collect(&parent)?,
                };
                if !in_own_stage(cx, info) {
                    return Ok(vec![Vec::new()]);
                }
                buffer_batch(cx, info, &info.schema, &current, len_b.saturating_sub(1))?;
                if !cx.passes_multiple_of(slide_b) {
                    return Ok(vec![Vec::new()]);
                }
                let first = (cx.batch_id + 1).saturating_sub(len_b);
                let mut all = stored_batches(cx, state_cf(cx, info)?, first, cx.batch_id - 1)?;
                all.extend(current);
                Ok(vec![all])
            },
        })
    })
}

/// The key of a key's running value in `reduce_by_key_and_window`'s state.
fn running_key<K: Key>(k: K::View<'_>) -> Vec<u8> {
    let mut key = vec![RUNNING];
    K::encode(k, true, &mut key);
    key
}

/// Every key's running value: the stored ones overlaid with this batch's
/// updates (which are not committed yet).
fn emit_running<K: Key, V: Data>(
    cx: &BatchCx,
    cf: &rocksdb::ColumnFamily,
    updated: &std::collections::BTreeMap<Vec<u8>, V>,
    schema: &arrow::datatypes::SchemaRef,
) -> Result<Vec<Vec<RecordBatch>>> {
    let mut agg = Aggregate::<K, V>::new();
    let keep_new = |_a: V::View<'_>, b: V::View<'_>| V::to_owned_value(b);
    for item in cx.checkpoint.db().prefix_iterator_cf(cf, [RUNNING]) {
        let (key, value) = item?;
        if key.first() != Some(&RUNNING) {
            break;
        }
        if updated.contains_key(key.as_ref()) {
            continue;
        }
        let k = decode_all::<K>(&key[1..])?;
        let v = decode_all::<V>(&value)?;
        agg.add(k.view(), v.view(), &keep_new);
    }
    for (key, v) in updated {
        let k = decode_all::<K>(&key[1..])?;
        agg.add(k.view(), v.view(), &keep_new);
    }
    Ok(vec![
        agg.into_buckets(1, schema)?.into_iter().flatten().collect(),
    ])
}

/// The running values of a windowed reduction with an inverse, as a batch
/// changes them: read from the checkpoint once, then kept here.
struct Running<'a, K, V> {
    db: &'a rocksdb::DB,
    cf: &'a ColumnFamily,
    /// Key (as stored) → its new running value.
    updated: std::collections::BTreeMap<Vec<u8>, V>,
    operator: &'a NodeInfo,
    _key: std::marker::PhantomData<K>,
}

impl<K: Key, V: Data> Running<'_, K, V> {
    /// Folds each (key, value) row of `chunks` into its key's running
    /// value with `step` (which gets `None` for a key with no value yet;
    /// a `None` result is a row leaving the window for a key that has no
    /// running value).
    fn fold(
        &mut self,
        chunks: &[RecordBatch],
        step: impl for<'v> Fn(Option<V>, V::View<'v>) -> Option<V>,
    ) -> Result<()> {
        for c in chunks {
            let rows = <(K, V)>::reader(c.columns())?;
            for i in 0..c.num_rows() {
                let (k, v) = <(K, V)>::get(&rows, i);
                let key = running_key::<K>(k);
                let old = match self.updated.remove(&key) {
                    Some(v) => Some(v),
                    None => match self.db.get_cf(self.cf, &key)? {
                        Some(bytes) => Some(decode_all::<V>(&bytes)?),
                        None => None,
                    },
                };
                let Some(new) = step(old, v) else {
                    return Err(PlanError::Operator {
                        operator: self.operator.name(),
                        message: "a batch left the window with a key that has no running value (state was reset mid-window?)".into(),
                    });
                };
                self.updated.insert(key, new);
            }
        }
        Ok(())
    }
}

pub(crate) fn reduce_by_key_and_window<K: Key, V: Data>(
    stream: &DStream<(K, V)>,
    f: impl for<'a, 'b> Fn(V::View<'a>, V::View<'b>) -> V + Send + Sync + Clone + 'static,
    inverse: Option<super::InverseFn<V>>,
    length: Duration,
    slide: Duration,
) -> DStream<(K, V)> {
    let Some(inverse) = inverse else {
        return stream
            .reduce_by_key(f.clone())
            .window(length, slide)
            .reduce_by_key(f);
    };
    let (len_b, slide_b) = match in_batches(stream.interval_ms(), length, slide) {
        Ok(v) => v,
        Err(e) => {
            stream.invalid(e);
            (1, 1)
        }
    };
    let partial = stream.reduce_by_key(f.clone());
    let parent = partial.node.clone();
    partial.derive("reduce_by_key_and_window", move |info| {
        Arc::new(Wide {
            pure: false,
            state: Some(OperatorMeta {
                name: String::new(),
                kind: format!("reduce_by_key_and_window({len_b},{slide_b})"),
                key_type: K::type_name(),
                state_type: V::type_name(),
            }),
            info,
            compute: move |cx: &BatchCx, info: &NodeInfo| {
                let current = cx.collect(&parent)?;
                if !in_own_stage(cx, info) {
                    return Ok(vec![Vec::new()]);
                }
                let cf = state_cf(cx, info)?;
                buffer_batch(cx, info, &info.schema, &current, len_b)?;
                // Every batch that left the window since the last one run
                // (one, unless the task skipped batch ids).
                let first_leaving = (cx.previous_batch_id + 1).saturating_sub(len_b).max(1);
                let leaving = match cx.batch_id.checked_sub(len_b) {
                    Some(last) if last >= first_leaving => {
                        stored_batches(cx, cf, first_leaving, last)?
                    }
                    _ => Vec::new(),
                };
                let mut running = Running::<K, V> {
                    db: cx.checkpoint.db(),
                    cf,
                    updated: Default::default(),
                    operator: info,
                    _key: std::marker::PhantomData,
                };
                running.fold(&current, |o, v| match o {
                    Some(o) => Some(f(o.view(), v)),
                    None => Some(V::to_owned_value(v)),
                })?;
                running.fold(&leaving, |o, v| o.map(|o| inverse(o.view(), v)))?;
                let updated = running.updated;
                cx.write(|w| {
                    for (k, v) in &updated {
                        w.put_cf(cf, k, encode_to_vec::<V>(v.view()));
                    }
                });
                if !cx.passes_multiple_of(slide_b) {
                    return Ok(vec![Vec::new()]);
                }
                emit_running::<K, V>(cx, cf, &updated, &info.schema)
            },
        })
    })
}
