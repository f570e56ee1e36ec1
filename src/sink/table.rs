//! Result tables: key/value results in the checkpoint's column family
//! `table.<name>`, written in the batch's atomic commit, and read back for
//! `sluice state get|scan` by the type names the checkpoint records.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, OnceLock};

/// Hot values kept in memory per merge task (a cache of committed values;
/// RocksDB stays the truth).
const CACHE_ENTRIES_PER_TASK: usize = 1 << 20;

/// One merge task's cache: encoded key → committed value.
type HotValues<V> = Mutex<HashMap<Vec<u8>, V>>;

use crate::checkpoint::{Checkpoint, CheckpointError, OperatorMeta, TABLE_CF_PREFIX};
use crate::plan::data::{CodecError, Data, Key, decode_all, encode_to_vec};
use crate::plan::{BatchCx, DStream, Output, PlanError};

pub(crate) fn save<K: Key, V: Data, F>(stream: &DStream<(K, V)>, table: &str, merge: Option<F>)
where
    F: for<'a, 'b> Fn(V::View<'a>, V::View<'b>) -> V + Send + Sync + 'static,
{
    let node = stream.node.clone();
    node.info().add_consumer();
    let caches: OnceLock<Vec<HotValues<V>>> = OnceLock::new();
    let table = table.to_owned();
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
    let mut graph = crate::log::mutex(&stream.graph);
    if graph
        .outputs
        .iter()
        .any(|o| o.table.as_ref().is_some_and(|t| t.name == table))
    {
        graph
            .errors
            .push(format!("two outputs write result table {table:?}"));
    }
    graph.outputs.push(Arc::new(Output {
        name: format!("table:{table}"),
        table: Some(meta),
        state: None,
        run: Box::new(move |cx: &BatchCx| {
            let cf = cx.checkpoint.cf(&cf_name)?;
            let Some(merge) = &merge else {
                let chunks = cx.collect(&node)?;
                let mut puts = Vec::new();
                for c in &chunks {
                    let rows = <(K, V)>::reader(c.columns())?;
                    for i in 0..c.num_rows() {
                        let (k, v) = <(K, V)>::get(&rows, i);
                        puts.push((encode_to_vec::<K>(k), encode_to_vec::<V>(v)));
                    }
                }
                cx.write(|w| puts.iter().for_each(|(k, v)| w.put_cf(cf, k, v)));
                return Ok(());
            };
            // Merging reads the committed value: each key must be handled
            // by one task, so the pairs are shuffled by key first.
            let buckets = crate::plan::wide_partition_by_key::<K>(cx, &node)?;
            let caches = caches.get_or_init(|| {
                (0..cx.parallelism)
                    .map(|_| Mutex::new(HashMap::new()))
                    .collect()
            });
            let db = cx.checkpoint.db();
            crate::plan::wide_rayon_map(
                buckets.into_iter().enumerate().collect(),
                |(b, chunks)| {
                    // Keys go to the same bucket every batch, so this task owns
                    // its bucket's cache of hot values.
                    let mut cache = crate::log::mutex(&caches[b % caches.len()]);
                    let mut misses: Vec<Vec<u8>> = Vec::new();
                    let mut seen: HashSet<Vec<u8>> = HashSet::new();
                    for c in &chunks {
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
                        .zip(db.batched_multi_get_cf(cf, &misses, false))
                    {
                        if let Some(bytes) = found? {
                            loaded.insert(key.clone(), decode_all::<V>(&bytes)?);
                        }
                    }
                    let mut merged: HashMap<Vec<u8>, V> = HashMap::new();
                    for c in &chunks {
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
                    cx.write(|w| {
                        for (k, v) in &merged {
                            w.put_cf(cf, k, encode_to_vec::<V>(v.view()));
                        }
                    });
                    // The batch either commits these values or the job stops
                    // (and the cache with it), so caching them now is safe.
                    if cache.len() + merged.len() > CACHE_ENTRIES_PER_TASK {
                        cache.clear();
                    }
                    cache.extend(merged);
                    Ok(())
                },
            )?;
            Ok(())
        }),
    }));
}

/// A stored value rendered for people, with a number to sort by when it
/// has one.
#[derive(Debug, Clone, PartialEq)]
pub struct Shown {
    pub text: String,
    pub number: Option<f64>,
}

/// Decodes bytes written as `type_name` (see `Data::type_name`).
pub fn show(type_name: &str, bytes: &[u8]) -> Result<Shown, CodecError> {
    let mut input = bytes;
    let shown = show_one(type_name.trim(), &mut input, true)?;
    if !input.is_empty() {
        return Err(CodecError {
            type_name: "value",
            reason: "trailing bytes",
        });
    }
    Ok(shown)
}

/// Splits `(a,b)` at its top-level comma.
fn split_pair(inner: &str) -> Option<(&str, &str)> {
    let mut depth = 0;
    for (i, c) in inner.char_indices() {
        match c {
            '(' | '<' => depth += 1,
            ')' | '>' => depth -= 1,
            ',' if depth == 0 => return Some((&inner[..i], &inner[i + 1..])),
            _ => {}
        }
    }
    None
}

fn show_one(ty: &str, input: &mut &[u8], last: bool) -> Result<Shown, CodecError> {
    fn num(text: String, n: f64) -> Shown {
        Shown {
            text,
            number: Some(n),
        }
    }
    fn txt(text: String) -> Shown {
        Shown { text, number: None }
    }
    Ok(match ty {
        "u64" => {
            let v = u64::decode(input, last)?;
            num(v.to_string(), v as f64)
        }
        "u32" => {
            let v = u32::decode(input, last)?;
            num(v.to_string(), v as f64)
        }
        "i64" => {
            let v = i64::decode(input, last)?;
            num(v.to_string(), v as f64)
        }
        "i32" => {
            let v = i32::decode(input, last)?;
            num(v.to_string(), v as f64)
        }
        "f64" => {
            let v = f64::decode(input, last)?;
            num(v.to_string(), v)
        }
        "bool" => txt(bool::decode(input, last)?.to_string()),
        "string" => txt(String::decode(input, last)?),
        "bytes" => txt(String::from_utf8_lossy(&Vec::<u8>::decode(input, last)?).into_owned()),
        _ => {
            if let Some(inner) = ty.strip_prefix("option<").and_then(|t| t.strip_suffix('>')) {
                let present = bool::decode(input, false)?;
                return if present {
                    show_one(inner, input, last)
                } else {
                    Ok(txt("null".into()))
                };
            }
            if let Some((a, b)) = ty
                .strip_prefix('(')
                .and_then(|t| t.strip_suffix(')'))
                .and_then(split_pair)
            {
                let a = show_one(a, input, false)?;
                let b = show_one(b, input, last)?;
                return Ok(txt(format!("({}, {})", a.text, b.text)));
            }
            return Err(CodecError {
                type_name: "value",
                reason: "unknown type name in the checkpoint",
            });
        }
    })
}

/// A result table opened for reading.
pub struct TableReader<'a> {
    checkpoint: &'a Checkpoint,
    pub meta: OperatorMeta,
}

impl<'a> TableReader<'a> {
    pub fn open(checkpoint: &'a Checkpoint, table: &str) -> Result<Self, PlanError> {
        let tables = checkpoint.tables()?;
        let meta = tables
            .iter()
            .find(|t| t.name == table)
            .cloned()
            .ok_or_else(|| {
                let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
                PlanError::Invalid(format!(
                    "no result table {table:?} in {} (tables: {})",
                    checkpoint.path().display(),
                    if names.is_empty() {
                        "none".to_string()
                    } else {
                        names.join(", ")
                    }
                ))
            })?;
        Ok(TableReader { checkpoint, meta })
    }

    fn cf(&self) -> Result<&rocksdb::ColumnFamily, CheckpointError> {
        self.checkpoint
            .cf(&format!("{TABLE_CF_PREFIX}{}", self.meta.name))
    }

    /// The value of one key, given as text (string keys) or as the key's
    /// display form for numeric keys.
    pub fn get(&self, key: &str) -> Result<Option<Shown>, PlanError> {
        let encoded = encode_text_key(&self.meta.key_type, key)?;
        match self.checkpoint.db().get_cf(self.cf()?, encoded)? {
            Some(bytes) => Ok(Some(show(&self.meta.state_type, &bytes)?)),
            None => Ok(None),
        }
    }

    /// All entries whose encoded key starts with `prefix`'s encoding, in
    /// key order.
    pub fn scan(
        &self,
        prefix: Option<&str>,
        mut each: impl FnMut(Shown, Shown) -> bool,
    ) -> Result<(), PlanError> {
        let start = match prefix {
            Some(p) => encode_text_key(&self.meta.key_type, p)?,
            None => Vec::new(),
        };
        let iter = self.checkpoint.db().iterator_cf(
            self.cf()?,
            rocksdb::IteratorMode::From(&start, rocksdb::Direction::Forward),
        );
        for item in iter {
            let (k, v) = item?;
            if !k.starts_with(&start) {
                break;
            }
            if !each(
                show(&self.meta.key_type, &k)?,
                show(&self.meta.state_type, &v)?,
            ) {
                break;
            }
        }
        Ok(())
    }
}

/// Encodes a key typed on the command line.
fn encode_text_key(key_type: &str, text: &str) -> Result<Vec<u8>, PlanError> {
    let bad = || PlanError::Invalid(format!("{text:?} is not a key of type {key_type}"));
    Ok(match key_type {
        "string" => text.as_bytes().to_vec(),
        "bytes" => text.as_bytes().to_vec(),
        "u64" => encode_to_vec::<u64>(text.parse().map_err(|_| bad())?),
        "u32" => encode_to_vec::<u32>(text.parse().map_err(|_| bad())?),
        "i64" => encode_to_vec::<i64>(text.parse().map_err(|_| bad())?),
        "i32" => encode_to_vec::<i32>(text.parse().map_err(|_| bad())?),
        _ => {
            return Err(PlanError::Invalid(format!(
                "keys of type {key_type} cannot be typed on the command line; use `sluice state scan`"
            )));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shows_values_by_type_name() {
        let bytes = encode_to_vec::<(String, Option<u64>)>(("ab", Some(7)));
        let shown = show("(string,option<u64>)", &bytes).unwrap();
        assert_eq!(shown.text, "(ab, 7)");
        assert_eq!(
            show("u64", &encode_to_vec::<u64>(42)).unwrap().number,
            Some(42.0)
        );
        assert!(show("nonsense", &[1]).is_err());
    }
}
