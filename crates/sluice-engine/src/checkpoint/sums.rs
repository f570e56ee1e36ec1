//! Blind additions to result tables: the checkpoint's one RocksDB merge
//! operator, `sluice.sum`, installed on every column family.
//!
//! `sum_into_table` writes a merge operand per key and batch instead of
//! reading the key's committed value and putting the sum: with millions
//! of keys the read (an index seek, often a block from disk) costs more
//! than everything else the batch does per key. RocksDB folds operands
//! into the value when a read or a compaction meets them.
//!
//! An operand is a tag byte naming the number type followed by the
//! number's own encoding (`data`); a folded value is the plain encoding,
//! the same bytes `merge_into_table` would have written, so readers that
//! never merge (`sluice state`, the web console) see ordinary values.
//! The operator lives here, not with the plan, because every opener of a
//! checkpoint (the job, `sluice state`, a read-only look while it runs)
//! needs it to read a table that holds operands.

use rocksdb::{MergeOperands, Options};

use crate::data::Data;

/// The operator's name, recorded in RocksDB's OPTIONS file.
const OPERATOR_NAME: &str = "sluice.sum";

/// A number type whose values `sum_into_table` adds without reading them.
/// Integers wrap on overflow, as `a + b` in a release build does.
pub trait Summable: Data + Copy {
    /// Tags this type's operands (persisted: never change one).
    const SUM_TAG: u8;
    fn add(a: Self, b: Self) -> Self;
}

impl Summable for u64 {
    const SUM_TAG: u8 = b'u';
    fn add(a: u64, b: u64) -> u64 {
        a.wrapping_add(b)
    }
}

impl Summable for i64 {
    const SUM_TAG: u8 = b'i';
    fn add(a: i64, b: i64) -> i64 {
        a.wrapping_add(b)
    }
}

impl Summable for f64 {
    const SUM_TAG: u8 = b'f';
    fn add(a: f64, b: f64) -> f64 {
        a + b
    }
}

/// Appends the merge operand that adds `value`.
pub(crate) fn encode_operand<V: Summable>(value: V, out: &mut Vec<u8>) {
    out.push(V::SUM_TAG);
    V::encode(value.view(), true, out);
}

/// Installs the operator on `opts` (and so on every column family opened
/// or created with them).
pub fn install(opts: &mut Options) {
    opts.set_merge_operator(OPERATOR_NAME, full_merge, partial_merge);
}

/// The committed value (plain encoding) plus every operand, as a plain
/// value. `None` (RocksDB reports corruption) when the bytes are not
/// operands of one type.
fn full_merge(_key: &[u8], existing: Option<&[u8]>, operands: &MergeOperands) -> Option<Vec<u8>> {
    fold_by_tag(existing, operands, false)
}

/// Operands only: their sum as one operand.
fn partial_merge(
    _key: &[u8],
    _existing: Option<&[u8]>,
    operands: &MergeOperands,
) -> Option<Vec<u8>> {
    fold_by_tag(None, operands, true)
}

/// The number type is the first operand's tag.
fn fold_by_tag(
    existing: Option<&[u8]>,
    operands: &MergeOperands,
    as_operand: bool,
) -> Option<Vec<u8>> {
    match *operands.iter().next()?.first()? {
        b'u' => fold::<u64>(existing, operands, as_operand),
        b'i' => fold::<i64>(existing, operands, as_operand),
        b'f' => fold::<f64>(existing, operands, as_operand),
        _ => None,
    }
}

fn fold<V: Summable>(
    existing: Option<&[u8]>,
    operands: &MergeOperands,
    as_operand: bool,
) -> Option<Vec<u8>> {
    let mut sum = match existing {
        Some(bytes) => crate::data::decode_all::<V>(bytes).ok()?,
        None => V::default(),
    };
    for operand in operands {
        let (&tag, number) = operand.split_first()?;
        if tag != V::SUM_TAG {
            return None;
        }
        sum = V::add(sum, crate::data::decode_all::<V>(number).ok()?);
    }
    let mut out = Vec::with_capacity(9);
    if as_operand {
        encode_operand(sum, &mut out);
    } else {
        V::encode(sum.view(), true, &mut out);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::data::{decode_all, encode_to_vec};
    use rocksdb::{DB, WriteBatch};

    fn open(dir: &std::path::Path) -> DB {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        install(&mut opts);
        DB::open(&opts, dir).unwrap()
    }

    fn operand<V: Summable>(v: V) -> Vec<u8> {
        let mut out = Vec::new();
        encode_operand(v, &mut out);
        out
    }

    #[test]
    fn operands_add_to_a_put_value_and_to_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        db.put(b"old", encode_to_vec::<u64>(40)).unwrap();
        let mut batch = WriteBatch::default();
        for (key, n) in [(b"old", 1u64), (b"old", 1), (b"new", 7)] {
            batch.merge(key, operand(n));
        }
        db.write(batch).unwrap();
        let get = |k: &[u8]| decode_all::<u64>(&db.get(k).unwrap().unwrap()).unwrap();
        assert_eq!(get(b"old"), 42);
        assert_eq!(get(b"new"), 7);
        // Folded by a flush and a compaction: the stored bytes are plain.
        db.flush().unwrap();
        db.compact_range(None::<&[u8]>, None::<&[u8]>);
        assert_eq!(get(b"old"), 42);
        assert_eq!(db.get(b"new").unwrap().unwrap(), encode_to_vec::<u64>(7));
    }

    #[test]
    fn signed_and_float_sums_survive_partial_merges() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        for n in [-5i64, 3, -10] {
            db.merge(b"i", operand(n)).unwrap();
            db.flush().unwrap();
        }
        for x in [0.5f64, -2.25] {
            db.merge(b"f", operand(x)).unwrap();
        }
        db.compact_range(None::<&[u8]>, None::<&[u8]>);
        assert_eq!(
            decode_all::<i64>(&db.get(b"i").unwrap().unwrap()).unwrap(),
            -12
        );
        assert_eq!(
            decode_all::<f64>(&db.get(b"f").unwrap().unwrap()).unwrap(),
            -1.75
        );
    }

    #[test]
    fn an_operand_of_another_type_is_an_error_not_a_wrong_sum() {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path());
        db.merge(b"k", operand(1u64)).unwrap();
        db.merge(b"k", operand(1i64)).unwrap();
        let err = db.get(b"k").unwrap_err();
        assert!(err.to_string().to_lowercase().contains("merge"), "{err}");
    }
}
