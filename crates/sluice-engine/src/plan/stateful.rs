//! Keyed state across batches: `update_state_by_key` and `map_with_state`.
//!
//! State lives in the operator's column family `state.<name>`:
//! `b's' + key → (deadline_ms, state)` and, with a timeout, an index
//! `b't' + deadline_ms + key → ()` so timed-out keys are found without
//! scanning all state. Reads see the last committed batch; writes join the
//! batch's atomic commit, so a replayed batch starts from the same state.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use hashbrown::HashTable;
use rocksdb::ColumnFamily;

use super::exec::{BatchCx, NodeInfo, Wide};
use super::wide::{bucket_of, partition_by_key, rayon_map};
use super::{DStream, Result};
use crate::checkpoint::{OperatorMeta, STATE_CF_PREFIX};
use crate::data::{Data, Emitter, Key, decode_all, hash_one};

const VALUE: u8 = b's';
const TIMEOUT: u8 = b't';
const NO_DEADLINE: i64 = i64::MAX;

/// A key's state as seen by a `map_with_state` function.
#[derive(Debug)]
pub struct State<S> {
    value: Option<S>,
    timing_out: bool,
    changed: bool,
}

impl<S> State<S> {
    pub fn exists(&self) -> bool {
        self.value.is_some()
    }
    pub fn get(&self) -> Option<&S> {
        self.value.as_ref()
    }
    /// Sets the state (not allowed while timing out: the key is dropped).
    pub fn update(&mut self, value: S) {
        if !self.timing_out {
            self.value = Some(value);
            self.changed = true;
        }
    }
    pub fn remove(&mut self) {
        self.value = None;
        self.changed = true;
    }
    /// True when called because the key was idle past the timeout.
    pub fn is_timing_out(&self) -> bool {
        self.timing_out
    }
}

fn value_key<K: Data>(k: K::View<'_>) -> Vec<u8> {
    let mut key = vec![VALUE];
    K::encode(k, true, &mut key);
    key
}

fn index_key(deadline: i64, encoded_value_key: &[u8]) -> Vec<u8> {
    let mut key = vec![TIMEOUT];
    i64::encode(deadline, false, &mut key);
    key.extend_from_slice(&encoded_value_key[1..]);
    key
}

/// What the checkpoint records for a keyed-state operator (the name is
/// filled in from the node's current name).
fn keyed_state<K: Data, S: Data>(kind: &str) -> OperatorMeta {
    OperatorMeta {
        name: String::new(),
        kind: kind.into(),
        key_type: K::type_name(),
        state_type: S::type_name(),
    }
}

fn cf<'a>(cx: &'a BatchCx, info: &NodeInfo) -> Result<&'a ColumnFamily> {
    Ok(cx
        .checkpoint
        .cf(&format!("{STATE_CF_PREFIX}{}", info.name()))?)
}

fn load<S: Data>(cx: &BatchCx, cf: &ColumnFamily, key: &[u8]) -> Result<Option<(i64, S)>> {
    match cx.checkpoint.db().get_cf(cf, key)? {
        Some(bytes) => Ok(Some(decode_all::<(i64, S)>(&bytes)?)),
        None => Ok(None),
    }
}

/// A key's state during one batch of `map_with_state`, by encoded key:
/// (its stored deadline, its current state, whether it changed).
type Slots<S> = HashMap<Vec<u8>, (Option<i64>, Option<S>, bool)>;

/// Per bucket, keys with their value-row key.
type ByBucket<K> = Vec<Vec<(Vec<u8>, K)>>;

/// Keys whose deadline is at or before this batch's time, by the bucket
/// their key hashes to (with the key's value-row key).
fn expired_keys<K: Key>(cx: &BatchCx, cf: &ColumnFamily, buckets: usize) -> Result<ByBucket<K>> {
    let mut expired: ByBucket<K> = vec![Vec::new(); buckets];
    for item in cx.checkpoint.db().prefix_iterator_cf(cf, [TIMEOUT]) {
        let (key, _) = item?;
        if key.first() != Some(&TIMEOUT) {
            break;
        }
        let mut rest = &key[1..];
        let deadline = i64::decode(&mut rest, false)?;
        if deadline > cx.batch_time_ms {
            break;
        }
        let k = decode_all::<K>(rest)?;
        let b = bucket_of(hash_one::<K>(k.view()), buckets);
        let mut vk = vec![VALUE];
        vk.extend_from_slice(rest);
        expired[b].push((vk, k));
    }
    Ok(expired)
}

/// Stages the batch's state changes: new values with their new deadline
/// (and its index entry), removals, and the old index entries' deletion.
fn stage_slots<S: Data>(
    cx: &BatchCx,
    cf: &ColumnFamily,
    slots: &Slots<S>,
    timeout_ms: Option<i64>,
) {
    let new_deadline = timeout_ms.map_or(NO_DEADLINE, |t| cx.batch_time_ms.saturating_add(t));
    cx.write(|w| {
        for (key, (old_deadline, value, changed)) in slots {
            if !changed && timeout_ms.is_none() {
                continue;
            }
            if let Some(d) = old_deadline.filter(|d| *d != NO_DEADLINE) {
                w.delete_cf(cf, index_key(d, key));
            }
            match value {
                Some(s) => {
                    let mut bytes = Vec::new();
                    <(i64, S)>::encode((new_deadline, s.view()), true, &mut bytes);
                    w.put_cf(cf, key, bytes);
                    if new_deadline != NO_DEADLINE {
                        w.put_cf(cf, index_key(new_deadline, key), []);
                    }
                }
                None => w.delete_cf(cf, key),
            }
        }
    });
}

pub(crate) fn map_with_state<K: Key, V: Data, S: Data, M: Data>(
    stream: &DStream<(K, V)>,
    timeout: Option<Duration>,
    f: impl for<'a, 'e> Fn(K::View<'a>, Option<V::View<'a>>, &mut State<S>, &'e mut Emitter<M>)
    + Send
    + Sync
    + 'static,
) -> DStream<M> {
    let parent = stream.node.clone();
    let timeout_ms = timeout.map(|t| t.as_millis() as i64);
    stream.derive("map_with_state", move |info| {
        Arc::new(Wide {
            pure: false,
            state: Some(keyed_state::<K, S>("map_with_state")),
            info,
            compute: move |cx: &BatchCx, info: &NodeInfo| {
                let cf = cf(cx, info)?;
                let buckets = partition_by_key::<K>(cx, &info.name(), info.cut_level(""), &parent)?;
                let expired = if timeout_ms.is_some() {
                    expired_keys::<K>(cx, cf, buckets.len())?
                } else {
                    vec![Vec::new(); buckets.len()]
                };
                let work: Vec<_> = buckets.into_iter().zip(expired).collect();
                rayon_map(work, |(chunks, expired)| {
                    let mut out = Emitter::<M>::with_capacity(1024);
                    // Encoded key -> (old deadline, current state, changed).
                    let mut slots: Slots<S> = HashMap::new();
                    for c in &chunks {
                        let rows = <(K, V)>::reader(c.columns())?;
                        for i in 0..c.num_rows() {
                            let (k, v) = <(K, V)>::get(&rows, i);
                            let key = value_key::<K>(k);
                            if !slots.contains_key(&key) {
                                let stored = load::<S>(cx, cf, &key)?;
                                let (deadline, value) = match stored {
                                    Some((d, s)) => (Some(d), Some(s)),
                                    None => (None, None),
                                };
                                slots.insert(key.clone(), (deadline, value, false));
                            }
                            let Some(slot) = slots.get_mut(&key) else {
                                continue;
                            };
                            let mut state = State {
                                value: slot.1.take(),
                                timing_out: false,
                                changed: false,
                            };
                            f(k, Some(v), &mut state, &mut out);
                            slot.1 = state.value;
                            slot.2 |= state.changed;
                        }
                    }
                    for (key, k) in &expired {
                        if slots.contains_key(key) {
                            continue; // touched this batch: its deadline moved
                        }
                        if let Some((deadline, s)) = load::<S>(cx, cf, key)? {
                            let mut state = State {
                                value: Some(s),
                                timing_out: true,
                                changed: false,
                            };
                            f(k.view(), None, &mut state, &mut out);
                            slots.insert(key.clone(), (Some(deadline), None, true));
                        }
                    }
                    stage_slots(cx, cf, &slots, timeout_ms);
                    Ok(out.into_batches(&info.schema)?)
                })
            },
        })
    })
}

/// Every key's stored state, by the bucket its key hashes to. Spark's
/// semantics: every key with state is updated every batch, so the whole
/// state is read once per batch.
fn stored_states<K: Key, S: Data>(
    cx: &BatchCx,
    cf: &ColumnFamily,
    buckets: usize,
) -> Result<Vec<Vec<(K, S)>>> {
    let mut existing: Vec<Vec<(K, S)>> = vec![Vec::new(); buckets];
    for item in cx.checkpoint.db().prefix_iterator_cf(cf, [VALUE]) {
        let (key, value) = item?;
        if key.first() != Some(&VALUE) {
            break;
        }
        let k = decode_all::<K>(&key[1..])?;
        let (_, s) = decode_all::<(i64, S)>(&value)?;
        existing[bucket_of(hash_one::<K>(k.view()), buckets)].push((k, s));
    }
    Ok(existing)
}

/// This batch's values grouped by key, keys in order of first arrival and
/// values in arrival order.
#[allow(clippy::type_complexity)]
fn group_by_key<'a, K: Key, V: Data>(
    chunks: &[RecordBatch],
    readers: &[<(K, V) as Data>::Reader<'a>],
) -> Vec<(K::View<'a>, Vec<V::View<'a>>)> {
    let mut index: HashTable<(u64, usize)> = HashTable::new();
    let mut groups: Vec<(K::View<'a>, Vec<V::View<'a>>)> = Vec::new();
    for (c, r) in chunks.iter().zip(readers) {
        for i in 0..c.num_rows() {
            let (k, v) = <(K, V)>::get(r, i);
            let h = hash_one::<K>(k);
            match index.find(h, |&(eh, g)| eh == h && K::eq_view(groups[g].0, k)) {
                Some(&(_, g)) => groups[g].1.push(v),
                None => {
                    index.insert_unique(h, (h, groups.len()), |e| e.0);
                    groups.push((k, vec![v]));
                }
            }
        }
    }
    groups
}

pub(crate) fn update_state_by_key<K: Key, V: Data, S: Data>(
    stream: &DStream<(K, V)>,
    f: impl for<'a> Fn(&[V::View<'a>], Option<S>) -> Option<S> + Send + Sync + 'static,
) -> DStream<(K, S)> {
    let parent = stream.node.clone();
    stream.derive("update_state_by_key", move |info| {
        Arc::new(Wide {
            pure: false,
            state: Some(keyed_state::<K, S>("update_state_by_key")),
            info,
            compute: move |cx: &BatchCx, info: &NodeInfo| {
                let cf = cf(cx, info)?;
                let buckets = partition_by_key::<K>(cx, &info.name(), info.cut_level(""), &parent)?;
                let existing = stored_states::<K, S>(cx, cf, buckets.len())?;
                let work: Vec<_> = buckets.into_iter().zip(existing).collect();
                rayon_map(work, |(chunks, existing)| {
                    let readers = chunks
                        .iter()
                        .map(|c| <(K, V)>::reader(c.columns()))
                        .collect::<std::result::Result<Vec<_>, _>>()?;
                    let groups = group_by_key::<K, V>(&chunks, &readers);
                    let mut previous: HashMap<Vec<u8>, S> = existing
                        .into_iter()
                        .map(|(k, s)| (value_key::<K>(k.view()), s))
                        .collect();
                    let capacity = groups.len() + previous.len();
                    let (mut keys_out, mut states_out) = (
                        Emitter::<K>::with_capacity(capacity),
                        Emitter::<S>::with_capacity(capacity),
                    );
                    let mut writes: Vec<(Vec<u8>, Option<Vec<u8>>)> = Vec::new();
                    {
                        let mut settle = |k: K::View<'_>, key: Vec<u8>, new: Option<S>| match new {
                            Some(s) => {
                                keys_out.push_view(k);
                                states_out.push_view(s.view());
                                let mut bytes = Vec::new();
                                <(i64, S)>::encode((NO_DEADLINE, s.view()), true, &mut bytes);
                                writes.push((key, Some(bytes)));
                            }
                            None => writes.push((key, None)),
                        };
                        for (k, values) in &groups {
                            let key = value_key::<K>(*k);
                            let old = previous.remove(&key);
                            let new = f(values, old);
                            settle(*k, key, new);
                        }
                        let mut rest: Vec<_> = previous.into_iter().collect();
                        rest.sort_by(|a, b| a.0.cmp(&b.0));
                        for (key, s) in rest {
                            let k = decode_all::<K>(&key[1..])?;
                            let new = f(&[], Some(s));
                            settle(k.view(), key, new);
                        }
                    }
                    cx.write(|w| {
                        for (key, value) in &writes {
                            match value {
                                Some(v) => w.put_cf(cf, key, v),
                                None => w.delete_cf(cf, key),
                            }
                        }
                    });
                    if keys_out.len() == 0 {
                        return Ok(Vec::new());
                    }
                    let mut columns = keys_out.finish();
                    columns.extend(states_out.finish());
                    Ok(vec![RecordBatch::try_new(info.schema.clone(), columns)?])
                })
            },
        })
    })
}
