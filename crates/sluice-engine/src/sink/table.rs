//! Result tables: key/value results in the checkpoint's column family
//! `table.<name>`, written in the batch's atomic commit (the plan's
//! `save_to_table`/`merge_into_table` outputs stage the writes), and read
//! back for `sluice state get|scan` by the type names the checkpoint
//! records.

use crate::checkpoint::{Checkpoint, CheckpointError, OperatorMeta, TABLE_CF_PREFIX};
use crate::data::{CodecError, Data, encode_to_vec};

/// Reading a result table failed; each names what is wrong and where.
#[derive(Debug, thiserror::Error)]
pub enum TableError {
    /// The table or key does not exist or cannot be typed as asked.
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("state store: {0}")]
    Rocks(#[from] rocksdb::Error),
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
    entries: Entries<'a>,
    pub meta: OperatorMeta,
}

/// Where a table's entries are.
enum Entries<'a> {
    /// A job's checkpoint (one process).
    Checkpoint(&'a Checkpoint),
    /// Read whole from elsewhere (a job on many workers: its changelog).
    Loaded(std::collections::BTreeMap<Vec<u8>, Vec<u8>>),
}

impl<'a> TableReader<'a> {
    pub fn open(checkpoint: &'a Checkpoint, table: &str) -> Result<Self, TableError> {
        let tables = checkpoint.tables()?;
        let meta = tables
            .iter()
            .find(|t| t.name == table)
            .cloned()
            .ok_or_else(|| {
                let names: Vec<&str> = tables.iter().map(|t| t.name.as_str()).collect();
                TableError::Invalid(format!(
                    "no result table {table:?} in {} (tables: {})",
                    checkpoint.path().display(),
                    if names.is_empty() {
                        "none".to_string()
                    } else {
                        names.join(", ")
                    }
                ))
            })?;
        Ok(TableReader {
            entries: Entries::Checkpoint(checkpoint),
            meta,
        })
    }

    /// A table whose entries (encoded key → encoded value) were read whole,
    /// e.g. from the changelog topic of a job on many workers.
    pub fn loaded(
        meta: OperatorMeta,
        entries: std::collections::BTreeMap<Vec<u8>, Vec<u8>>,
    ) -> TableReader<'static> {
        TableReader {
            entries: Entries::Loaded(entries),
            meta,
        }
    }

    fn cf<'c>(
        &self,
        checkpoint: &'c Checkpoint,
    ) -> Result<&'c rocksdb::ColumnFamily, CheckpointError> {
        checkpoint.cf(&format!("{TABLE_CF_PREFIX}{}", self.meta.name))
    }

    /// The value of one key, given as text (string keys) or as the key's
    /// display form for numeric keys.
    pub fn get(&self, key: &str) -> Result<Option<Shown>, TableError> {
        let encoded = encode_text_key(&self.meta.key_type, key)?;
        let found = match &self.entries {
            Entries::Checkpoint(c) => c.db().get_cf(self.cf(c)?, encoded)?,
            Entries::Loaded(map) => map.get(&encoded).cloned(),
        };
        match found {
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
    ) -> Result<(), TableError> {
        let start = match prefix {
            Some(p) => encode_text_key(&self.meta.key_type, p)?,
            None => Vec::new(),
        };
        let mut visit = |k: &[u8], v: &[u8]| -> Result<bool, TableError> {
            if !k.starts_with(&start) {
                return Ok(false);
            }
            Ok(each(
                show(&self.meta.key_type, k)?,
                show(&self.meta.state_type, v)?,
            ))
        };
        match &self.entries {
            Entries::Checkpoint(c) => {
                let iter = c.db().iterator_cf(
                    self.cf(c)?,
                    rocksdb::IteratorMode::From(&start, rocksdb::Direction::Forward),
                );
                for item in iter {
                    let (k, v) = item?;
                    if !visit(&k, &v)? {
                        break;
                    }
                }
            }
            Entries::Loaded(map) => {
                for (k, v) in map.range(start.clone()..) {
                    if !visit(k, v)? {
                        break;
                    }
                }
            }
        }
        Ok(())
    }
}

impl TableReader<'_> {
    /// The `n` entries with the largest numeric values (largest first, ties
    /// by key), among keys starting with `prefix`; kept in a bounded heap,
    /// since tables can be big.
    pub fn top(&self, n: usize, prefix: Option<&str>) -> Result<Vec<(Shown, Shown)>, TableError> {
        let mut heap = std::collections::BinaryHeap::new();
        self.scan(prefix, |key, value| {
            heap.push(std::cmp::Reverse(Ranked { key, value }));
            if heap.len() > n {
                heap.pop();
            }
            true
        })?;
        let mut rows: Vec<Ranked> = heap.into_iter().map(|r| r.0).collect();
        rows.sort_by(|a, b| b.cmp(a));
        Ok(rows.into_iter().map(|r| (r.key, r.value)).collect())
    }
}

/// An entry ranked by its numeric value (non-numbers last), then by key,
/// smaller keys ranking higher among equal values.
struct Ranked {
    key: Shown,
    value: Shown,
}

impl Ranked {
    fn score(&self) -> f64 {
        self.value.number.unwrap_or(f64::NEG_INFINITY)
    }
}

impl PartialEq for Ranked {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == std::cmp::Ordering::Equal
    }
}
impl Eq for Ranked {}
impl PartialOrd for Ranked {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Ranked {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.score()
            .total_cmp(&other.score())
            .then_with(|| other.key.text.cmp(&self.key.text))
    }
}

/// Encodes a key typed on the command line.
fn encode_text_key(key_type: &str, text: &str) -> Result<Vec<u8>, TableError> {
    let bad = || TableError::Invalid(format!("{text:?} is not a key of type {key_type}"));
    Ok(match key_type {
        "string" => text.as_bytes().to_vec(),
        "bytes" => text.as_bytes().to_vec(),
        "u64" => encode_to_vec::<u64>(text.parse().map_err(|_| bad())?),
        "u32" => encode_to_vec::<u32>(text.parse().map_err(|_| bad())?),
        "i64" => encode_to_vec::<i64>(text.parse().map_err(|_| bad())?),
        "i32" => encode_to_vec::<i32>(text.parse().map_err(|_| bad())?),
        _ => {
            return Err(TableError::Invalid(format!(
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
