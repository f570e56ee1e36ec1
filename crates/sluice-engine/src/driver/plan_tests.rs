//! Every DStream operator against a plain-Rust reference, on random inputs,
//! through real jobs: the driver, a RocksDB checkpoint in a temporary
//! directory, shuffles over two tasks.
//!
//! Inputs are small (≤ 3 partitions of ≤ 60 records) and cut into batches
//! of `k` ≤ 7 records per partition, so every operator is checked across
//! batch boundaries. All data is there when the job starts, so batch `i`
//! (ids start at 1) reads offsets `[(i-1)k, ik)` of every partition, clamped
//! to its length, and the job stops once every partition is drained.
//!
//! Outputs are compared per batch id as sorted multisets: the order of rows
//! inside a batch is not specified for wide operators, and partitions may
//! interleave for narrow ones.
//!
//! `PROPTEST_CASES` sets the number of cases (default 24); every case runs
//! real jobs.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::RangeInclusive;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::{AsArray, RecordBatch, UInt64Array};
use proptest::prelude::*;

/// `(key, (events, (timing_out, state_existed)))` rows of the timeout test.
type TimeoutRow = (Option<String>, (u64, (bool, bool)));

use super::{DriverError, JobConfig, RunSummary, StreamingContext};
use crate::plan::{BatchInfo, DStream, Data, Emitter, PlanError, State, schema_of};
use crate::source::RecordRef;
use crate::source::record::RecordColumns;
use crate::source::{ChunkSink, PartitionInfo, Record, Source, SourceError, source_schema};

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

/// The name of the source every job reads (also the records' topic).
const SOURCE: &str = "vec";

/// One record of a test source: key and value.
type Row = (Option<String>, String);
/// The records of each partition.
type Parts = Vec<Vec<Row>>;

/// A source over fixed in-memory partitions, all available at once.
struct VecSource {
    name: String,
    parts: Parts,
}

impl VecSource {
    fn new(name: &str, parts: &Parts) -> Self {
        VecSource {
            name: name.to_owned(),
            parts: parts.clone(),
        }
    }
}

impl Source for VecSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn partitions(&self) -> Result<Vec<PartitionInfo>, SourceError> {
        Ok(self
            .parts
            .iter()
            .enumerate()
            .map(|(p, rows)| PartitionInfo {
                partition: p as i32,
                log_start: 0,
                high_watermark: rows.len() as i64,
            })
            .collect())
    }

    fn offset_for_time(&self, _partition: i32, _timestamp_ms: i64) -> Result<i64, SourceError> {
        Ok(0)
    }

    fn read(
        &self,
        partition: i32,
        from: i64,
        until: i64,
        out: &mut ChunkSink<'_>,
    ) -> Result<(), SourceError> {
        let rows = &self.parts[partition as usize];
        let mut columns = RecordColumns::with_capacity((until - from).max(0) as usize);
        for offset in from..until {
            let (key, value) = &rows[offset as usize];
            columns.begin_row(&self.name, partition, offset, offset);
            columns.key.append_option(key.as_deref());
            columns.value.append_value(value);
            columns.end_row();
        }
        Ok(out(RecordBatch::try_new(
            source_schema(),
            columns.finish(),
        )?)?)
    }
}

/// Runs a job over `parts` in the checkpoint `dir`: batches of `k` records
/// per partition, until caught up (or `max_batches`), two tasks per wide
/// operator. `build` declares the job on the source stream.
fn run_in(
    dir: &Path,
    parts: &Parts,
    k: u64,
    max_batches: Option<u64>,
    build: impl FnOnce(&StreamingContext, DStream<Record>),
) -> Result<RunSummary, DriverError> {
    let mut config = JobConfig::new("t", Duration::from_millis(1));
    config.checkpoint_dir = Some(dir.to_path_buf());
    config.until_caught_up = true;
    config.max_records_per_batch = Some(k);
    config.max_batches = max_batches;
    config.progress.lines = false;
    config.parallelism = 2;
    let ctx = StreamingContext::new(config);
    let source = ctx.source(VecSource::new(SOURCE, parts));
    build(&ctx, source);
    ctx.run()
}

/// [`run_in`] with a fresh checkpoint.
fn run_job(
    parts: &Parts,
    k: u64,
    build: impl FnOnce(&StreamingContext, DStream<Record>),
) -> Result<RunSummary, DriverError> {
    let dir = tempfile::tempdir().expect("tempdir");
    run_in(dir.path(), parts, k, None, build)
}

/// [`run_job`], failing the test on an error.
fn run_ok(
    parts: &Parts,
    k: u64,
    build: impl FnOnce(&StreamingContext, DStream<Record>),
) -> RunSummary {
    run_job(parts, k, build).unwrap_or_else(|e| panic!("job failed: {e}"))
}

type Calls<U> = Arc<Mutex<Vec<(BatchInfo, Vec<U>)>>>;

/// What a `foreach_batch` output saw: one call per batch, rows decoded.
struct Sink<U> {
    calls: Calls<U>,
}

impl<U: Clone> Sink<U> {
    fn calls(&self) -> Vec<(BatchInfo, Vec<U>)> {
        self.calls.lock().unwrap().clone()
    }

    /// Ids and times of the batches the output ran in, in call order.
    fn batches(&self) -> Vec<(u64, i64)> {
        self.calls()
            .iter()
            .map(|(i, _)| (i.batch_id, i.batch_time_ms))
            .collect()
    }
}

impl<U: Clone + Ord + std::fmt::Debug> Sink<U> {
    /// Batch id → sorted rows, for batches with rows.
    fn by_batch(&self) -> BTreeMap<u64, Vec<U>> {
        let mut out = BTreeMap::new();
        for (info, mut rows) in self.calls() {
            rows.sort();
            assert!(
                out.insert(info.batch_id, rows).is_none(),
                "batch {} was output twice",
                info.batch_id
            );
        }
        out.retain(|_, rows: &mut Vec<U>| !rows.is_empty());
        out
    }
}

/// Collects `stream`'s rows, converted by `conv`.
fn collect_with<T: Data, U: Send + 'static>(
    stream: &DStream<T>,
    conv: impl Fn(T) -> U + Send + Sync + 'static,
) -> Sink<U> {
    let calls: Calls<U> = Default::default();
    let shared = calls.clone();
    stream.foreach_batch(move |info, chunks| {
        let mut rows = Vec::new();
        for chunk in chunks {
            let reader = T::reader(chunk.columns())?;
            for i in 0..chunk.num_rows() {
                rows.push(conv(T::to_owned_value(T::get(&reader, i))));
            }
        }
        shared.lock().unwrap().push((*info, rows));
        Ok(())
    });
    Sink { calls }
}

fn collect<T: Data>(stream: &DStream<T>) -> Sink<T> {
    collect_with(stream, |t| t)
}

/// A record as a comparable tuple: topic, partition, offset, timestamp,
/// key, value, number of headers.
type Rec = (String, i32, i64, i64, Option<String>, Option<String>, usize);

fn rec(r: Record) -> Rec {
    let text = |b: Vec<u8>| String::from_utf8(b).expect("utf-8");
    (
        r.topic,
        r.partition,
        r.offset,
        r.timestamp,
        r.key.map(text),
        r.value.map(text),
        r.headers.len(),
    )
}

/// One input record of the reference.
#[derive(Clone, Debug)]
struct In {
    topic: &'static str,
    partition: i32,
    offset: i64,
    key: Option<String>,
    value: String,
}

impl In {
    fn rec(&self) -> Rec {
        (
            self.topic.to_owned(),
            self.partition,
            self.offset,
            self.offset,
            self.key.clone(),
            Some(self.value.clone()),
            0,
        )
    }
    fn len(&self) -> u64 {
        self.value.len() as u64
    }
    fn words(&self) -> impl Iterator<Item = &str> {
        self.value.split(' ')
    }
}

/// Batches needed to drain `parts` at `k` records per partition.
fn batch_count(parts: &Parts, k: u64) -> usize {
    parts
        .iter()
        .map(|p| p.len().div_ceil(k as usize))
        .max()
        .unwrap_or(0)
}

/// The input of batches 1..=n (index 0 is batch 1) of source `topic`.
fn split(topic: &'static str, parts: &Parts, k: u64, n: usize) -> Vec<Vec<In>> {
    let k = k as usize;
    (0..n)
        .map(|i| {
            let mut batch = Vec::new();
            for (p, rows) in parts.iter().enumerate() {
                let (from, until) = ((i * k).min(rows.len()), ((i + 1) * k).min(rows.len()));
                for (offset, (key, value)) in rows.iter().enumerate().take(until).skip(from) {
                    batch.push(In {
                        topic,
                        partition: p as i32,
                        offset: offset as i64,
                        key: key.clone(),
                        value: value.clone(),
                    });
                }
            }
            batch
        })
        .collect()
}

fn batches(parts: &Parts, k: u64) -> Vec<Vec<In>> {
    split(SOURCE, parts, k, batch_count(parts, k))
}

/// Batch id → sorted rows, dropping batches without rows.
fn expect<U: Ord>(rows: impl IntoIterator<Item = (u64, Vec<U>)>) -> BTreeMap<u64, Vec<U>> {
    rows.into_iter()
        .filter(|(_, r)| !r.is_empty())
        .map(|(id, mut r)| {
            r.sort();
            (id, r)
        })
        .collect()
}

/// `f` over every batch's input, by batch id.
fn per_batch<U: Ord>(
    batches: &[Vec<In>],
    mut f: impl FnMut(u64, &[In]) -> Vec<U>,
) -> BTreeMap<u64, Vec<U>> {
    expect(batches.iter().enumerate().map(|(i, b)| {
        let id = i as u64 + 1;
        (id, f(id, b.as_slice()))
    }))
}

/// The batch ids a window of `len` batches ending at `id` covers.
fn window_ids(id: u64, len: u64) -> RangeInclusive<u64> {
    (id + 1).saturating_sub(len).max(1)..=id
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

// ---------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(24);
    ProptestConfig {
        cases,
        failure_persistence: None,
        max_shrink_iters: 512,
        ..ProptestConfig::default()
    }
}

/// Keys include the empty string and a NUL byte (key encodings escape it
/// when a string is not last in a composite key).
const KEYS: &[&str] = &["a", "b", "c", "", "a\0", "é"];
/// Words include the empty word (two spaces in a row) and "fox", which
/// some state functions treat specially.
const WORDS: &[&str] = &["ant", "bee", "cat", "dog", "fox", "ü", ""];

fn row() -> impl Strategy<Value = Row> {
    (
        prop::option::weighted(0.85, prop::sample::select(KEYS)),
        prop::collection::vec(prop::sample::select(WORDS), 0..4),
    )
        .prop_map(|(k, words)| (k.map(str::to_owned), words.join(" ")))
}

fn parts() -> impl Strategy<Value = Parts> {
    prop::collection::vec(prop::collection::vec(row(), 0..=60), 1..=3)
}

/// Partitions and records per partition per batch.
fn input() -> impl Strategy<Value = (Parts, u64)> {
    (parts(), 1u64..=7)
}

/// Window length and slide in batches, slide ≤ length.
fn window_shape() -> impl Strategy<Value = (u64, u64)> {
    (1u64..=4).prop_flat_map(|len| (Just(len), 1..=len))
}

// ---------------------------------------------------------------------------
// Narrow operators
// ---------------------------------------------------------------------------

type Full = ((String, i32), (i64, (i64, (Option<String>, String))));

proptest! {
    #![proptest_config(config())]

    /// `map` to owned values: every record's columns arrive intact, once,
    /// in the batch of its offset.
    #[test]
    fn map_matches_reference((parts, k) in input()) {
        let mut sinks = None;
        run_ok(&parts, k, |_, src| {
            let full = src.map(|r| {
                (
                    (r.topic.to_owned(), r.partition),
                    (r.offset, (r.timestamp, (r.key_str().map(str::to_owned), r.value_str().to_owned()))),
                )
            });
            let lens = src.map(|r| r.value_str().len() as u64);
            sinks = Some((collect(&full), collect(&lens)));
        });
        let (full, lens) = sinks.unwrap();
        let input = batches(&parts, k);
        let want_full: BTreeMap<u64, Vec<Full>> = per_batch(&input, |_, b| {
            b.iter()
                .map(|i| ((SOURCE.to_owned(), i.partition), (i.offset, (i.offset, (i.key.clone(), i.value.clone())))))
                .collect()
        });
        prop_assert_eq!(full.by_batch(), want_full);
        prop_assert_eq!(lens.by_batch(), per_batch(&input, |_, b| b.iter().map(In::len).collect()));
    }

    /// `flat_map` pushing borrowed `&str`s (and `Option<&str>` keys), and
    /// one pushing nothing for some records (`extend`).
    #[test]
    fn flat_map_matches_reference((parts, k) in input()) {
        let mut sinks = None;
        run_ok(&parts, k, |_, src| {
            let words = src.flat_map(|r, out: &mut Emitter<(Option<String>, String)>| {
                for w in r.value_str().split(' ') {
                    out.push((r.key_str(), w));
                }
            });
            let some = src.flat_map(|r, out: &mut Emitter<String>| {
                if r.offset % 2 == 0 {
                    out.extend(r.value_str().split(' ').filter(|w| !w.is_empty()));
                }
            });
            sinks = Some((collect(&words), collect(&some)));
        });
        let (words, some) = sinks.unwrap();
        let input = batches(&parts, k);
        prop_assert_eq!(
            words.by_batch(),
            per_batch(&input, |_, b| b
                .iter()
                .flat_map(|i| i.words().map(|w| (i.key.clone(), w.to_owned())))
                .collect())
        );
        prop_assert_eq!(
            some.by_batch(),
            per_batch(&input, |_, b| b
                .iter()
                .filter(|i| i.offset % 2 == 0)
                .flat_map(|i| i.words().filter(|w| !w.is_empty()).map(str::to_owned))
                .collect())
        );
    }

    /// `filter` on records (whole records pass, columns intact) and on pairs.
    #[test]
    fn filter_matches_reference((parts, k) in input()) {
        let mut sinks = None;
        run_ok(&parts, k, |_, src| {
            let even = src.filter(|r| r.value_str().len() % 2 == 0);
            let pairs = src
                .map(|r| (r.key_str().map(str::to_owned), r.value_str().to_owned()))
                .filter(|(k, v)| k.is_some() && v.contains('a'));
            sinks = Some((collect_with(&even, rec), collect(&pairs)));
        });
        let (even, pairs) = sinks.unwrap();
        let input = batches(&parts, k);
        prop_assert_eq!(
            even.by_batch(),
            per_batch(&input, |_, b| b.iter().filter(|i| i.value.len() % 2 == 0).map(In::rec).collect())
        );
        prop_assert_eq!(
            pairs.by_batch(),
            per_batch(&input, |_, b| b
                .iter()
                .filter(|i| i.key.is_some() && i.value.contains('a'))
                .map(|i| (i.key.clone(), i.value.clone()))
                .collect())
        );
    }

    /// `map_values` keeps keys (including `None` keys) and maps values.
    #[test]
    fn map_values_matches_reference((parts, k) in input()) {
        let mut sinks = None;
        run_ok(&parts, k, |_, src| {
            let keyed = src.map(|r| (r.key_str().map(str::to_owned), r.value_str().to_owned()));
            let lens = keyed.map_values(|v| v.len() as u64);
            let tagged = keyed.map_values(|v| format!("<{v}>"));
            sinks = Some((collect(&lens), collect(&tagged)));
        });
        let (lens, tagged) = sinks.unwrap();
        let input = batches(&parts, k);
        prop_assert_eq!(lens.by_batch(), per_batch(&input, |_, b| b.iter().map(|i| (i.key.clone(), i.len())).collect()));
        prop_assert_eq!(
            tagged.by_batch(),
            per_batch(&input, |_, b| b.iter().map(|i| (i.key.clone(), format!("<{}>", i.value))).collect())
        );
    }

    /// `flat_map_values` repeats each key once per output, borrowed outputs.
    #[test]
    fn flat_map_values_matches_reference((parts, k) in input()) {
        let mut sinks = None;
        run_ok(&parts, k, |_, src| {
            let keyed = src.map(|r| (r.key_str().map(str::to_owned), r.value_str().to_owned()));
            let words = keyed.flat_map_values(|v, out: &mut Emitter<String>| {
                if v.len() > 3 {
                    for w in v.split(' ') {
                        out.push(w);
                    }
                }
            });
            sinks = Some(collect(&words));
        });
        let words = sinks.unwrap();
        let input = batches(&parts, k);
        prop_assert_eq!(
            words.by_batch(),
            per_batch(&input, |_, b| b
                .iter()
                .filter(|i| i.value.len() > 3)
                .flat_map(|i| i.words().map(|w| (i.key.clone(), w.to_owned())))
                .collect())
        );
    }

    /// `transform`: the identity on records, a recomputed column on pairs,
    /// a change of type, and a transform that drops all rows.
    #[test]
    fn transform_matches_reference((parts, k) in input()) {
        let mut sinks = None;
        run_ok(&parts, k, |_, src| {
            let same = src.transform::<Record>(|chunk| Ok(chunk.clone()));
            let pairs = src.map(|r| (r.value_str().to_owned(), 0u64));
            let recomputed = pairs.transform::<(String, u64)>(|chunk| {
                let values = chunk.column(0).as_string_view();
                let lens: UInt64Array = values.iter().map(|v| v.map(|v| v.len() as u64)).collect();
                Ok(RecordBatch::try_new(chunk.schema(), vec![chunk.column(0).clone(), Arc::new(lens)])?)
            });
            let only_lens = recomputed.transform::<u64>(|chunk| {
                Ok(RecordBatch::try_new(schema_of::<u64>(), vec![chunk.column(1).clone()])?)
            });
            let nothing = src.transform::<Record>(|chunk| Ok(chunk.slice(0, 0)));
            sinks = Some((collect_with(&same, rec), collect(&recomputed), collect(&only_lens), collect_with(&nothing, rec)));
        });
        let (same, recomputed, only_lens, nothing) = sinks.unwrap();
        let input = batches(&parts, k);
        prop_assert_eq!(same.by_batch(), per_batch(&input, |_, b| b.iter().map(In::rec).collect()));
        prop_assert_eq!(
            recomputed.by_batch(),
            per_batch(&input, |_, b| b.iter().map(|i| (i.value.clone(), i.len())).collect())
        );
        prop_assert_eq!(only_lens.by_batch(), per_batch(&input, |_, b| b.iter().map(In::len).collect()));
        prop_assert_eq!(nothing.by_batch(), BTreeMap::new());
        prop_assert_eq!(nothing.calls().len(), input.len());
    }

    /// `union` of two streams of one source, of a stream with itself, of
    /// two wide streams, and a wide operator after a union.
    #[test]
    fn union_matches_reference((parts, k) in input()) {
        let mut sinks = None;
        run_ok(&parts, k, |_, src| {
            let left = src.filter(|r| r.offset % 2 == 0).map(|r| r.value_str().to_owned());
            let right = src.flat_map(|r, out: &mut Emitter<String>| {
                for w in r.value_str().split(' ') {
                    out.push(w);
                }
            });
            let both = left.union(&right);
            let twice = right.union(&right);
            let counted = both.count_by_value();
            let counts = src.count().union(&src.filter(|r| r.offset % 3 == 0).count());
            sinks = Some((collect(&both), collect(&twice), collect(&counted), collect(&counts)));
        });
        let (both, twice, counted, counts) = sinks.unwrap();
        let input = batches(&parts, k);
        let left = |b: &[In]| -> Vec<String> { b.iter().filter(|i| i.offset % 2 == 0).map(|i| i.value.clone()).collect() };
        let right = |b: &[In]| -> Vec<String> { b.iter().flat_map(|i| i.words().map(str::to_owned)).collect() };
        prop_assert_eq!(both.by_batch(), per_batch(&input, |_, b| [left(b), right(b)].concat()));
        prop_assert_eq!(twice.by_batch(), per_batch(&input, |_, b| [right(b), right(b)].concat()));
        prop_assert_eq!(counted.by_batch(), per_batch(&input, |_, b| count_values([left(b), right(b)].concat())));
        prop_assert_eq!(
            counts.by_batch(),
            per_batch(&input, |_, b| vec![b.len() as u64, b.iter().filter(|i| i.offset % 3 == 0).count() as u64])
        );
    }
}

/// Distinct values with their counts.
fn count_values<T: Ord>(values: impl IntoIterator<Item = T>) -> Vec<(T, u64)> {
    let mut counts: BTreeMap<T, u64> = BTreeMap::new();
    for v in values {
        *counts.entry(v).or_default() += 1;
    }
    counts.into_iter().collect()
}

/// Values combined per key with `f`.
fn reduce_values<K: Ord, V>(
    pairs: impl IntoIterator<Item = (K, V)>,
    f: impl Fn(V, V) -> V,
) -> Vec<(K, V)> {
    let mut acc: BTreeMap<K, V> = BTreeMap::new();
    for (k, v) in pairs {
        let new = match acc.remove(&k) {
            Some(old) => f(old, v),
            None => v,
        };
        acc.insert(k, new);
    }
    acc.into_iter().collect()
}

/// A transform that returns columns of the wrong type fails the batch with
/// an error naming the operator.
#[test]
fn transform_with_wrong_schema_fails_naming_the_operator() {
    let parts: Parts = vec![vec![
        (None, "ant bee".into()),
        (Some("a".into()), "cat".into()),
    ]];
    let err = run_job(&parts, 1, |_, src| {
        let wrong = src.transform::<String>(|chunk| Ok(chunk.clone()));
        collect(&wrong);
    })
    .expect_err("a transform returning records as strings must fail");
    match &err {
        DriverError::Batch {
            batch_id,
            error: PlanError::Operator { operator, message },
        } => {
            assert_eq!(*batch_id, 1, "{err}");
            assert_eq!(operator, "transform-1", "{err}");
            assert!(message.contains("transform returned columns"), "{err}");
        }
        other => panic!("expected an operator error, got {other:?}"),
    }
    assert!(err.to_string().contains("transform-1"), "{err}");
}

/// The same, for a transform given a name with `named`: the error must name
/// the operator by the name the job gave it.
#[test]
fn transform_with_wrong_schema_names_the_given_name() {
    let parts: Parts = vec![vec![(None, "ant bee".into())]];
    let err = run_job(&parts, 1, |_, src| {
        let wrong = src
            .transform::<u64>(|chunk| Ok(chunk.clone()))
            .named("lengths");
        collect(&wrong);
    })
    .expect_err("a transform returning records as u64 must fail");
    let text = err.to_string();
    assert!(
        text.contains("lengths"),
        "error does not name the operator \"lengths\": {text}"
    );
}

// ---------------------------------------------------------------------------
// Wide operators (per batch)
// ---------------------------------------------------------------------------

/// A `flat_map` read only by `reduce_by_key` runs inside its combine (rows
/// counted as they are cut); read by two operators it builds its columns
/// once. Both give the reference counts: with short (inline) and long
/// keys, and with a first batch of nearly all-distinct words, where the
/// combine steps aside after its trial rows and keeps rows for the shuffle.
#[test]
fn fused_flat_map_counts_like_the_columns_path() {
    let distinct = 3 * 64 * 1024;
    let mut part = Vec::new();
    for i in 0..distinct {
        let extra = if i % 50 == 0 {
            " a-word-longer-than-twelve bee"
        } else {
            ""
        };
        part.push((None, format!("w{i}{extra}")));
    }
    for i in 0..1000 {
        part.push((None, format!("bee w{} a-word-longer-than-twelve", i * 7)));
    }
    let parts: Parts = vec![part];
    let words = |r: RecordRef<'_>, out: &mut Emitter<(String, u64)>| {
        for w in r.value_str().split(' ') {
            out.push((w, 1u64));
        }
    };
    let mut sinks = None;
    run_ok(&parts, (distinct + 1000) as u64, |_, src| {
        let fused = src.flat_map(words).reduce_by_key(|a, b| a + b);
        let shared = src.flat_map(words);
        let unfused = shared.reduce_by_key(|a, b| a + b);
        let _second_reader = collect(&shared);
        sinks = Some((collect(&fused), collect(&unfused)));
    });
    let (fused, unfused) = sinks.unwrap();
    let mut want: BTreeMap<String, u64> = BTreeMap::new();
    for (_, value) in &parts[0] {
        for w in value.split(' ') {
            *want.entry(w.to_owned()).or_default() += 1;
        }
    }
    let want: Vec<(String, u64)> = want.into_iter().collect();
    assert_eq!(want.len(), distinct + 2);
    assert_eq!(fused.by_batch(), BTreeMap::from([(1, want.clone())]));
    assert_eq!(unfused.by_batch(), BTreeMap::from([(1, want)]));
}

proptest! {
    #![proptest_config(config())]

    /// `reduce_by_key` with sums (`Option<String>` keys, map-side combine
    /// over two tasks) and a string maximum.
    #[test]
    fn reduce_by_key_matches_reference((parts, k) in input()) {
        let mut sinks = None;
        run_ok(&parts, k, |_, src| {
            let nums = src.map(|r| (r.key_str().map(str::to_owned), r.value_str().len() as u64));
            let sums = nums.reduce_by_key(|a, b| a + b);
            let keyed = src.map(|r| (r.key_str().unwrap_or("-").to_owned(), r.value_str().to_owned()));
            let maxima = keyed.reduce_by_key(|a, b| if a >= b { a.to_owned() } else { b.to_owned() });
            sinks = Some((collect(&sums), collect(&maxima)));
        });
        let (sums, maxima) = sinks.unwrap();
        let input = batches(&parts, k);
        prop_assert_eq!(
            sums.by_batch(),
            per_batch(&input, |_, b| reduce_values(b.iter().map(|i| (i.key.clone(), i.len())), |a, b| a + b))
        );
        prop_assert_eq!(
            maxima.by_batch(),
            per_batch(&input, |_, b| reduce_values(
                b.iter().map(|i| (i.key.clone().unwrap_or_else(|| "-".into()), i.value.clone())),
                std::cmp::max
            ))
        );
    }

    /// `count_by_value` of strings (words, including the empty word),
    /// optional strings and pairs.
    #[test]
    fn count_by_value_matches_reference((parts, k) in input()) {
        let mut sinks = None;
        run_ok(&parts, k, |_, src| {
            let words = src.flat_map(|r, out: &mut Emitter<String>| {
                for w in r.value_str().split(' ') {
                    out.push(w);
                }
            });
            let keys = src.map(|r| r.key_str().map(str::to_owned));
            let pairs = src.map(|r| (r.key_str().map(str::to_owned), r.value_str().to_owned()));
            sinks = Some((collect(&words.count_by_value()), collect(&keys.count_by_value()), collect(&pairs.count_by_value())));
        });
        let (words, keys, pairs) = sinks.unwrap();
        let input = batches(&parts, k);
        prop_assert_eq!(
            words.by_batch(),
            per_batch(&input, |_, b| count_values(b.iter().flat_map(|i| i.words().map(str::to_owned))))
        );
        prop_assert_eq!(keys.by_batch(), per_batch(&input, |_, b| count_values(b.iter().map(|i| i.key.clone()))));
        prop_assert_eq!(
            pairs.by_batch(),
            per_batch(&input, |_, b| count_values(b.iter().map(|i| (i.key.clone(), i.value.clone()))))
        );
    }

    /// `count`: one row in every batch, 0 included (a filter that keeps
    /// nothing still counts 0).
    #[test]
    fn count_matches_reference((parts, k) in input()) {
        let mut sinks = None;
        run_ok(&parts, k, |_, src| {
            let all = src.count();
            let some = src.filter(|r| r.offset % 3 == 0).count();
            let none = src.filter(|_| false).count();
            sinks = Some((collect(&all), collect(&some), collect(&none)));
        });
        let (all, some, none) = sinks.unwrap();
        let input = batches(&parts, k);
        prop_assert_eq!(all.by_batch(), per_batch(&input, |_, b| vec![b.len() as u64]));
        prop_assert_eq!(
            some.by_batch(),
            per_batch(&input, |_, b| vec![b.iter().filter(|i| i.offset % 3 == 0).count() as u64])
        );
        prop_assert_eq!(none.by_batch(), per_batch(&input, |_, _| vec![0u64]));
    }

    /// `reduce`: a sum, and an associative but not commutative
    /// concatenation, which must follow partition order then offset order
    /// ("all of the batch's data, partitions in order"). Empty batches
    /// (after a filter) give no row.
    #[test]
    fn reduce_matches_reference((parts, k) in input()) {
        let mut sinks = None;
        run_ok(&parts, k, |_, src| {
            let sum = src.map(|r| r.value_str().len() as u64).reduce(|a, b| a + b);
            let concat = src.map(|r| r.value_str().to_owned()).reduce(|a, b| format!("{a}|{b}"));
            let sparse = src.filter(|r| r.offset % 4 == 1).map(|r| r.offset as u64).reduce(|a, b| a.max(b));
            sinks = Some((collect(&sum), collect(&concat), collect(&sparse)));
        });
        let (sum, concat, sparse) = sinks.unwrap();
        let input = batches(&parts, k);
        let nonempty = |b: &[In], v| if b.is_empty() { Vec::new() } else { vec![v] };
        prop_assert_eq!(sum.by_batch(), per_batch(&input, |_, b| nonempty(b, b.iter().map(In::len).sum::<u64>())));
        prop_assert_eq!(
            concat.by_batch(),
            per_batch(&input, |_, b| if b.is_empty() {
                Vec::new()
            } else {
                vec![b.iter().map(|i| i.value.as_str()).collect::<Vec<_>>().join("|")]
            })
        );
        prop_assert_eq!(
            sparse.by_batch(),
            per_batch(&input, |_, b| b.iter().filter(|i| i.offset % 4 == 1).map(|i| i.offset as u64).max().into_iter().collect())
        );
    }

    /// `join` and `left_outer_join` of two streams of one source
    /// (`Option<String>` keys: `None` matches `None`), and a self-join.
    #[test]
    fn join_matches_reference((parts, k) in input()) {
        let mut sinks = None;
        run_ok(&parts, k, |_, src| {
            let left = src
                .filter(|r| r.offset % 2 == 0)
                .map(|r| (r.key_str().map(str::to_owned), r.value_str().to_owned()));
            let right = src
                .filter(|r| r.offset % 3 != 0)
                .map(|r| (r.key_str().map(str::to_owned), r.value_str().len() as u64));
            let inner = left.join(&right);
            let outer = left.left_outer_join(&right);
            let own = right.join(&right);
            sinks = Some((collect(&inner), collect(&outer), collect(&own)));
        });
        let (inner, outer, own) = sinks.unwrap();
        let input = batches(&parts, k);
        let left = |b: &[In]| -> Vec<(Option<String>, String)> {
            b.iter().filter(|i| i.offset % 2 == 0).map(|i| (i.key.clone(), i.value.clone())).collect()
        };
        let right = |b: &[In]| -> Vec<(Option<String>, u64)> {
            b.iter().filter(|i| i.offset % 3 != 0).map(|i| (i.key.clone(), i.len())).collect()
        };
        prop_assert_eq!(inner.by_batch(), per_batch(&input, |_, b| join_ref(&left(b), &right(b))));
        prop_assert_eq!(outer.by_batch(), per_batch(&input, |_, b| left_outer_join_ref(&left(b), &right(b))));
        prop_assert_eq!(own.by_batch(), per_batch(&input, |_, b| join_ref(&right(b), &right(b))));
    }

    /// `join` and `left_outer_join` of two sources with their own
    /// partitions and lengths (the job runs until both are drained).
    #[test]
    fn join_of_two_sources_matches_reference((parts, k) in input(), other in parts()) {
        let mut sinks = None;
        run_ok(&parts, k, |ctx, src| {
            let left = src.map(|r| (r.key_str().map(str::to_owned), r.value_str().to_owned()));
            let right = ctx
                .source(VecSource::new("other", &other))
                .map(|r| (r.key_str().map(str::to_owned), (r.partition, r.offset)));
            sinks = Some((collect(&left.join(&right)), collect(&left.left_outer_join(&right))));
        });
        let (inner, outer) = sinks.unwrap();
        let n = batch_count(&parts, k).max(batch_count(&other, k));
        let ls = split(SOURCE, &parts, k, n);
        let rs = split("other", &other, k, n);
        let left = |id: u64| -> Vec<(Option<String>, String)> {
            ls[id as usize - 1].iter().map(|i| (i.key.clone(), i.value.clone())).collect()
        };
        let right = |id: u64| -> Vec<(Option<String>, (i32, i64))> {
            rs[id as usize - 1].iter().map(|i| (i.key.clone(), (i.partition, i.offset))).collect()
        };
        prop_assert_eq!(inner.by_batch(), per_batch(&ls, |id, _| join_ref(&left(id), &right(id))));
        prop_assert_eq!(outer.by_batch(), per_batch(&ls, |id, _| left_outer_join_ref(&left(id), &right(id))));
    }
}

fn join_ref<K: Clone + Eq, V: Clone, W: Clone>(
    left: &[(K, V)],
    right: &[(K, W)],
) -> Vec<(K, (V, W))> {
    let mut out = Vec::new();
    for (k, v) in left {
        for (rk, w) in right {
            if rk == k {
                out.push((k.clone(), (v.clone(), w.clone())));
            }
        }
    }
    out
}

fn left_outer_join_ref<K: Clone + Eq, V: Clone, W: Clone>(
    left: &[(K, V)],
    right: &[(K, W)],
) -> Vec<(K, (V, Option<W>))> {
    let mut out = Vec::new();
    for (k, v) in left {
        let matches: Vec<&W> = right
            .iter()
            .filter(|(rk, _)| rk == k)
            .map(|(_, w)| w)
            .collect();
        if matches.is_empty() {
            out.push((k.clone(), (v.clone(), None)));
        }
        for w in matches {
            out.push((k.clone(), (v.clone(), Some(w.clone()))));
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Windows
// ---------------------------------------------------------------------------

/// Rows of the windows of `len` batches at every `slide`: at batch ids that
/// are multiples of the slide, the rows of batches `max(1, id-len+1)..=id`.
fn windows<U: Ord + Clone>(rows: &[Vec<U>], len: u64, slide: u64) -> BTreeMap<u64, Vec<U>> {
    expect(
        (1..=rows.len() as u64)
            .filter(|id| id % slide == 0)
            .map(|id| {
                let all: Vec<U> = window_ids(id, len)
                    .flat_map(|j| rows[j as usize - 1].clone())
                    .collect();
                (id, all)
            }),
    )
}

proptest! {
    #![proptest_config(config())]

    /// `window` over records (buffered as Arrow IPC in RocksDB) and over
    /// pairs.
    #[test]
    fn window_matches_reference((parts, k) in input(), (len, slide) in window_shape()) {
        let mut sinks = None;
        run_ok(&parts, k, |_, src| {
            let records = src.window(ms(len), ms(slide));
            let pairs = src
                .map(|r| (r.key_str().map(str::to_owned), r.value_str().len() as u64))
                .window(ms(len), ms(slide));
            sinks = Some((collect_with(&records, rec), collect(&pairs)));
        });
        let (records, pairs) = sinks.unwrap();
        let input = batches(&parts, k);
        let recs: Vec<Vec<Rec>> = input.iter().map(|b| b.iter().map(In::rec).collect()).collect();
        let kv: Vec<Vec<(Option<String>, u64)>> =
            input.iter().map(|b| b.iter().map(|i| (i.key.clone(), i.len())).collect()).collect();
        prop_assert_eq!(records.by_batch(), windows(&recs, len, slide));
        prop_assert_eq!(pairs.by_batch(), windows(&kv, len, slide));
        // Output runs every batch; rows only at multiples of the slide.
        prop_assert!(records.calls().iter().all(|(i, rows)| rows.is_empty() || i.batch_id % slide == 0));
    }

    /// `count_by_window`: at every slide, one row with the number of
    /// records in the window (0 included).
    #[test]
    fn count_by_window_matches_reference((parts, k) in input(), (len, slide) in window_shape()) {
        let mut sinks = None;
        run_ok(&parts, k, |_, src| {
            let all = src.count_by_window(ms(len), ms(slide));
            let none = src.filter(|_| false).count_by_window(ms(len), ms(slide));
            sinks = Some((collect(&all), collect(&none)));
        });
        let (all, none) = sinks.unwrap();
        let input = batches(&parts, k);
        let n = input.len() as u64;
        let want: BTreeMap<u64, Vec<u64>> = (1..=n)
            .filter(|id| id % slide == 0)
            .map(|id| (id, vec![window_ids(id, len).map(|j| input[j as usize - 1].len() as u64).sum()]))
            .collect();
        prop_assert_eq!(all.by_batch(), want);
        let zeros: BTreeMap<u64, Vec<u64>> = (1..=n).filter(|id| id % slide == 0).map(|id| (id, vec![0])).collect();
        prop_assert_eq!(none.by_batch(), zeros);
    }

    /// `reduce_by_key_and_window` without an inverse: at every slide, each
    /// key with values in the window and their sum.
    #[test]
    fn reduce_by_key_and_window_matches_reference((parts, k) in input(), (len, slide) in window_shape()) {
        let mut sinks = None;
        run_ok(&parts, k, |_, src| {
            let nums = src.map(|r| (r.key_str().map(str::to_owned), r.value_str().len() as u64));
            sinks = Some(collect(&nums.reduce_by_key_and_window(|a, b| a + b, None, ms(len), ms(slide))));
        });
        let sums = sinks.unwrap();
        let input = batches(&parts, k);
        let n = input.len() as u64;
        let want = expect((1..=n).filter(|id| id % slide == 0).map(|id| {
            let pairs = window_ids(id, len).flat_map(|j| input[j as usize - 1].iter().map(|i| (i.key.clone(), i.len())));
            (id, reduce_values(pairs, |a, b| a + b))
        }));
        prop_assert_eq!(sums.by_batch(), want);
    }

    /// `reduce_by_key_and_window` with an inverse: the operator keeps a
    /// running value per key and never drops one, so at every slide it
    /// emits every key seen in batches `1..=id` with its windowed sum, keys
    /// whose window is now empty included (value 0).
    #[test]
    fn reduce_by_key_and_window_with_inverse_matches_reference(
        (parts, k) in input(),
        (len, slide) in window_shape(),
    ) {
        let mut sinks = None;
        run_ok(&parts, k, |_, src| {
            let nums = src.map(|r| (r.key_str().map(str::to_owned), r.value_str().len() as u64));
            let inverse: Box<dyn Fn(u64, u64) -> u64 + Send + Sync> = Box::new(|a, b| a - b);
            sinks = Some(collect(&nums.reduce_by_key_and_window(|a, b| a + b, Some(inverse), ms(len), ms(slide))));
        });
        let sums = sinks.unwrap();
        let input = batches(&parts, k);
        let n = input.len() as u64;
        let want = expect((1..=n).filter(|id| id % slide == 0).map(|id| {
            let mut keys: BTreeMap<Option<String>, u64> = input[..id as usize]
                .iter()
                .flatten()
                .map(|i| (i.key.clone(), 0))
                .collect();
            for j in window_ids(id, len) {
                for i in &input[j as usize - 1] {
                    *keys.get_mut(&i.key).unwrap() += i.len();
                }
            }
            (id, keys.into_iter().collect::<Vec<_>>())
        }));
        prop_assert_eq!(sums.by_batch(), want);
    }
}

/// Window lengths and slides must be positive multiples of the interval,
/// with slide ≤ length; the job refuses to start otherwise.
#[test]
fn window_rejects_bad_durations() {
    let parts: Parts = vec![vec![(None, "ant".into())]];
    for (len, slide) in [
        (Duration::from_millis(2), Duration::from_millis(3)),
        (Duration::from_millis(2), Duration::ZERO),
    ] {
        let err = run_job(&parts, 1, |_, src| {
            collect(&src.count().window(len, slide));
        })
        .expect_err("bad window must be refused");
        assert!(
            matches!(err, DriverError::InvalidJob { .. }) && err.to_string().contains("window"),
            "{len:?}/{slide:?}: {err}"
        );
    }
}

/// A window length that is not a whole number of batch intervals (1.5 ms
/// with a 1 ms interval) is refused rather than silently rounded.
#[test]
fn window_rejects_length_not_multiple_of_interval() {
    let parts: Parts = vec![vec![(None, "ant".into())]];
    let result = run_job(&parts, 1, |_, src| {
        collect(
            &src.count()
                .window(Duration::from_micros(1500), Duration::from_millis(1)),
        );
    });
    match result {
        Err(DriverError::InvalidJob { errors, .. }) => {
            assert!(errors.iter().any(|e| e.contains("window")), "{errors:?}")
        }
        other => panic!("a 1.5 ms window over 1 ms batches must be refused, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// Stateful operators
// ---------------------------------------------------------------------------

/// State of `update_state_by_key` tests: (total, batches without values).
/// A key is dropped after two idle batches or when its total is 3 mod 5.
fn update_fn(values: &[u64], old: Option<(u64, u64)>) -> Option<(u64, u64)> {
    let (mut total, mut idle) = old.unwrap_or((0, 0));
    if values.is_empty() {
        idle += 1;
        if idle >= 2 {
            return None;
        }
    } else {
        idle = 0;
        total += values.iter().sum::<u64>();
        if total % 5 == 3 {
            return None;
        }
    }
    Some((total, idle))
}

type UsKey = (Option<String>, bool);

proptest! {
    #![proptest_config(config())]

    /// `update_state_by_key` with Spark's semantics: every batch, `f` runs
    /// for every key with new values or with state, and the output is every
    /// key's new state; `None` drops the key. Keys put a string before a
    /// bool, so the string's key encoding is the escaped one.
    #[test]
    fn update_state_by_key_matches_reference((parts, k) in input()) {
        let mut sinks = None;
        run_ok(&parts, k, |_, src| {
            let nums = src.map(|r| ((r.key_str().map(str::to_owned), r.offset % 2 == 0), r.value_str().len() as u64));
            sinks = Some(collect(&nums.update_state_by_key(update_fn)));
        });
        let states = sinks.unwrap();
        let input = batches(&parts, k);
        let mut state: BTreeMap<UsKey, (u64, u64)> = BTreeMap::new();
        let want = per_batch(&input, |_, b| {
            let mut values: BTreeMap<UsKey, Vec<u64>> = BTreeMap::new();
            for i in b {
                values.entry((i.key.clone(), i.offset % 2 == 0)).or_default().push(i.len());
            }
            let keys: BTreeSet<UsKey> = values.keys().chain(state.keys()).cloned().collect();
            let mut out = Vec::new();
            for key in keys {
                let new = update_fn(values.get(&key).map_or(&[][..], |v| v.as_slice()), state.remove(&key));
                if let Some(s) = new {
                    state.insert(key.clone(), s);
                    out.push((key, s));
                }
            }
            out
        });
        prop_assert_eq!(states.by_batch(), want);
        prop_assert_eq!(states.calls().len(), input.len());
    }

    /// `map_with_state` called per element, in offset order per key (keys
    /// are per partition here, so the order is fully specified); the state
    /// persists across batches, may be left unchanged, and `remove` drops
    /// it.
    #[test]
    fn map_with_state_in_order_matches_reference((parts, k) in input()) {
        let mut sinks = None;
        run_ok(&parts, k, |_, src| {
            let keyed = src.map(|r| ((r.partition, r.key_str().map(str::to_owned)), r.value_str().to_owned()));
            let out = keyed.map_with_state(
                None,
                |key, value, state: &mut State<String>, out: &mut Emitter<((i32, Option<String>), String)>| {
                    let Some(v) = value else {
                        out.push((key, "<called without a value>"));
                        return;
                    };
                    if v.contains("fox") {
                        let old = state.get().cloned().unwrap_or_default();
                        state.remove();
                        out.push((key, format!("<removed {old}>")));
                    } else if v.is_empty() {
                        out.push((key, format!("<kept {}>", state.get().map_or("-", |s| s.as_str()))));
                    } else {
                        let new = format!("{}/{v}", state.get().map_or("", |s| s.as_str()));
                        state.update(new.clone());
                        out.push((key, new));
                    }
                },
            );
            sinks = Some(collect(&out));
        });
        let outputs = sinks.unwrap();
        let input = batches(&parts, k);
        let mut state: BTreeMap<(i32, Option<String>), String> = BTreeMap::new();
        let want = per_batch(&input, |_, b| {
            let mut out = Vec::new();
            for i in b {
                let key = (i.partition, i.key.clone());
                let v = i.value.as_str();
                if v.contains("fox") {
                    let old = state.remove(&key).unwrap_or_default();
                    out.push((key, format!("<removed {old}>")));
                } else if v.is_empty() {
                    out.push((key.clone(), format!("<kept {}>", state.get(&key).map_or("-", |s| s.as_str()))));
                } else {
                    let new = format!("{}/{v}", state.get(&key).map_or("", |s| s.as_str()));
                    state.insert(key.clone(), new.clone());
                    out.push((key, new));
                }
            }
            out
        });
        prop_assert_eq!(outputs.by_batch(), want);
    }

    /// `map_with_state` with keys shared by partitions: a per-key counter,
    /// so a batch emits `old+1..=old+n` for a key with `n` elements,
    /// whatever their order across partitions.
    #[test]
    fn map_with_state_shared_keys_matches_reference((parts, k) in input()) {
        let mut sinks = None;
        run_ok(&parts, k, |_, src| {
            let keyed = src.map(|r| (r.key_str().map(str::to_owned), r.value_str().len() as u64));
            let out = keyed.map_with_state(
                None,
                |key, _value: Option<u64>, state: &mut State<u64>, out: &mut Emitter<(Option<String>, u64)>| {
                    let n = state.get().copied().unwrap_or(0) + 1;
                    state.update(n);
                    out.push((key, n));
                },
            );
            sinks = Some(collect(&out));
        });
        let outputs = sinks.unwrap();
        let input = batches(&parts, k);
        let mut counts: BTreeMap<Option<String>, u64> = BTreeMap::new();
        let want = per_batch(&input, |_, b| {
            b.iter()
                .map(|i| {
                    let c = counts.entry(i.key.clone()).or_default();
                    *c += 1;
                    (i.key.clone(), *c)
                })
                .collect()
        });
        prop_assert_eq!(outputs.by_batch(), want);
    }

    /// `map_with_state` with a timeout of 0–2 ms. Batch times come from the
    /// wall clock, so the reference replays the batch times the job
    /// reported: a key untouched in a batch whose time reached its deadline
    /// (last touch + timeout) is called once with `None` and a timing-out
    /// state holding its last value, then dropped (an `update` while timing
    /// out is ignored); it starts afresh when it comes back.
    #[test]
    fn map_with_state_timeout_matches_reference((parts, k) in input(), timeout in 0u64..=2) {
        let mut sinks = None;
        run_ok(&parts, k, |_, src| {
            let keyed = src.map(|r| (r.key_str().map(str::to_owned), r.value_str().len() as u64));
            let out = keyed.map_with_state(
                Some(ms(timeout)),
                |key, value: Option<u64>, state: &mut State<u64>, out: &mut Emitter<TimeoutRow>| {
                    match value {
                        Some(_) => {
                            let n = state.get().copied().unwrap_or(0) + 1;
                            state.update(n);
                            out.push((key, (n, (false, state.is_timing_out()))));
                        }
                        None => {
                            let n = state.get().copied().unwrap_or(u64::MAX);
                            out.push((key, (n, (true, state.is_timing_out()))));
                            state.update(1_000_000); // ignored: the key is dropped
                        }
                    }
                },
            );
            sinks = Some(collect(&out));
        });
        let outputs = sinks.unwrap();
        let input = batches(&parts, k);
        let times = outputs.batches();
        let ids: Vec<u64> = times.iter().map(|(id, _)| *id).collect();
        prop_assert_eq!(ids, (1..=input.len() as u64).collect::<Vec<_>>());
        // key -> (deadline, count)
        let mut state: BTreeMap<Option<String>, (i64, u64)> = BTreeMap::new();
        let want = per_batch(&input, |id, b| {
            let now = times[id as usize - 1].1;
            let mut out = Vec::new();
            let touched: BTreeSet<Option<String>> = b.iter().map(|i| i.key.clone()).collect();
            let expired: Vec<Option<String>> = state
                .iter()
                .filter(|(key, (deadline, _))| *deadline <= now && !touched.contains(*key))
                .map(|(key, _)| key.clone())
                .collect();
            for key in expired {
                let (_, n) = state.remove(&key).unwrap();
                out.push((key, (n, (true, true))));
            }
            for i in b {
                let slot = state.entry(i.key.clone()).or_insert((0, 0));
                slot.1 += 1;
                out.push((i.key.clone(), (slot.1, (false, false))));
            }
            for key in &touched {
                state.get_mut(key).unwrap().0 = now + timeout as i64;
            }
            out
        });
        prop_assert_eq!(outputs.by_batch(), want, "batch times {:?}", times);
    }
}

/// A key that stops receiving data is called once with `None` while timing
/// out, then dropped; a long timeout never fires in a short job. Batches
/// are forced ≥ 3 ms apart (the output sleeps), so with a 1 ms timeout
/// every key untouched in a batch has expired.
#[test]
fn map_with_state_timeout_drops_idle_keys() {
    let keys = ["idle", "busy", "busy", "idle", "busy", "busy"];
    let parts: Parts = vec![
        keys.iter()
            .map(|k| (Some(k.to_string()), "x".to_string()))
            .collect(),
    ];
    type Out = (String, (u64, (bool, bool)));
    let job = |timeout: Duration| {
        let mut sink = None;
        run_ok(&parts, 1, |_, src| {
            let keyed = src.map(|r| (r.key_str().unwrap_or("").to_owned(), 1u64));
            let out = keyed.map_with_state(
                Some(timeout),
                |key, value: Option<u64>, state: &mut State<u64>, out: &mut Emitter<Out>| {
                    let old = state.get().copied();
                    match value {
                        Some(v) => {
                            state.update(old.unwrap_or(0) + v);
                            out.push((key, (old.unwrap_or(0) + v, (false, state.is_timing_out()))));
                        }
                        None => {
                            assert!(state.exists(), "a timed-out key has its state");
                            out.push((key, (old.unwrap_or(0), (true, state.is_timing_out()))));
                        }
                    }
                },
            );
            out.foreach_batch(|_, _| {
                std::thread::sleep(Duration::from_millis(3));
                Ok(())
            });
            sink = Some(collect(&out));
        });
        sink.unwrap()
    };

    let short = job(Duration::from_millis(1)).by_batch();
    let row = |k: &str, n: u64, timed_out: bool| (k.to_owned(), (n, (timed_out, timed_out)));
    let want = expect([
        (1, vec![row("idle", 1, false)]),
        (2, vec![row("busy", 1, false), row("idle", 1, true)]),
        (3, vec![row("busy", 2, false)]),
        (4, vec![row("idle", 1, false), row("busy", 2, true)]),
        (5, vec![row("busy", 1, false), row("idle", 1, true)]),
        (6, vec![row("busy", 2, false)]),
    ]);
    assert_eq!(short, want);

    let long = job(Duration::from_secs(600)).by_batch();
    let want = expect([
        (1, vec![row("idle", 1, false)]),
        (2, vec![row("busy", 1, false)]),
        (3, vec![row("busy", 2, false)]),
        (4, vec![row("idle", 2, false)]),
        (5, vec![row("busy", 3, false)]),
        (6, vec![row("busy", 4, false)]),
    ]);
    assert_eq!(long, want);
}

// ---------------------------------------------------------------------------
// Outputs and restarts
// ---------------------------------------------------------------------------

proptest! {
    #![proptest_config(config())]

    /// `foreach_batch` runs once per batch, ids consecutive from 1, with
    /// non-decreasing batch times and all of the batch's data; the run
    /// summary agrees.
    #[test]
    fn foreach_batch_sees_every_batch_once((parts, k) in input()) {
        let mut sinks = None;
        let summary = run_ok(&parts, k, |_, src| sinks = Some(collect_with(&src, rec)));
        let sink = sinks.unwrap();
        let input = batches(&parts, k);
        let n = input.len() as u64;
        let seen = sink.batches();
        let ids: Vec<u64> = seen.iter().map(|(id, _)| *id).collect();
        prop_assert_eq!(ids, (1..=n).collect::<Vec<_>>());
        prop_assert!(seen.windows(2).all(|w| w[0].1 <= w[1].1), "batch times go back: {:?}", seen);
        prop_assert_eq!(sink.by_batch(), per_batch(&input, |_, b| b.iter().map(In::rec).collect()));
        prop_assert_eq!(summary.batches, n);
        prop_assert_eq!(summary.last_batch_id, n);
        prop_assert_eq!(summary.records, parts.iter().map(|p| p.len() as u64).sum::<u64>());
    }

    /// A stateful job stopped after some batches and restarted on the same
    /// checkpoint (new context, same job) gives exactly the outputs of one
    /// uninterrupted run, batch by batch, and the final state of the
    /// reference: state, window buffers and running values survive the
    /// restart exactly once.
    #[test]
    fn restart_continues_state_exactly_once((parts, k) in input(), cut in 0.0f64..=1.0) {
        let n = batch_count(&parts, k) as u64;
        let first = (n as f64 * cut).floor() as u64;

        let whole_dir = tempfile::tempdir().unwrap();
        let mut whole = None;
        run_in(whole_dir.path(), &parts, k, None, |_, src| whole = Some(restart_job(src)))
            .unwrap_or_else(|e| panic!("uninterrupted run: {e}"));
        let whole = whole.unwrap();

        let dir = tempfile::tempdir().unwrap();
        let mut before = None;
        let s1 = run_in(dir.path(), &parts, k, Some(first), |_, src| before = Some(restart_job(src)))
            .unwrap_or_else(|e| panic!("first run: {e}"));
        prop_assert_eq!(s1.batches, first);
        let mut after = None;
        let s2 = run_in(dir.path(), &parts, k, None, |_, src| after = Some(restart_job(src)))
            .unwrap_or_else(|e| panic!("restarted run: {e}"));
        prop_assert_eq!(s2.batches, n - first);
        let (before, after) = (before.unwrap(), after.unwrap());

        prop_assert_eq!(joined(before.0.by_batch(), after.0.by_batch()), whole.0.by_batch());
        prop_assert_eq!(joined(before.1.by_batch(), after.1.by_batch()), whole.1.by_batch());
        prop_assert_eq!(joined(before.2.by_batch(), after.2.by_batch()), whole.2.by_batch());
        prop_assert_eq!(joined(before.3.by_batch(), after.3.by_batch()), whole.3.by_batch());

        // The final state against the reference.
        let input = batches(&parts, k);
        let totals = reduce_values(input.iter().flatten().map(|i| (i.key.clone(), i.len())), |a, b| a + b);
        let last = whole.1.by_batch().into_iter().next_back().map(|(_, rows)| rows).unwrap_or_default();
        prop_assert_eq!(last, totals);
    }
}

/// The outputs of two runs, by batch id (a batch must not run in both).
fn joined<U>(a: BTreeMap<u64, Vec<U>>, b: BTreeMap<u64, Vec<U>>) -> BTreeMap<u64, Vec<U>> {
    let mut all = a;
    for (id, rows) in b {
        assert!(
            all.insert(id, rows).is_none(),
            "batch {id} ran in both runs"
        );
    }
    all
}

type RestartSinks = (
    Sink<(Option<String>, u64)>,
    Sink<(Option<String>, u64)>,
    Sink<(Option<String>, u64)>,
    Sink<Rec>,
);

/// The job of the restart test: running sums with `map_with_state` and
/// `update_state_by_key`, a windowed sum with an inverse, and a window.
fn restart_job(src: DStream<Record>) -> RestartSinks {
    let nums = src.map(|r| (r.key_str().map(str::to_owned), r.value_str().len() as u64));
    let running = nums.map_with_state(
        None,
        |key,
         value: Option<u64>,
         state: &mut State<u64>,
         out: &mut Emitter<(Option<String>, u64)>| {
            let sum = state.get().copied().unwrap_or(0) + value.unwrap_or(0);
            state.update(sum);
            out.push((key, sum));
        },
    );
    let totals = nums.update_state_by_key(|values: &[u64], old: Option<u64>| {
        Some(old.unwrap_or(0) + values.iter().sum::<u64>())
    });
    let inverse: Box<dyn Fn(u64, u64) -> u64 + Send + Sync> = Box::new(|a, b| a - b);
    let windowed = nums.reduce_by_key_and_window(|a, b| a + b, Some(inverse), ms(3), ms(2));
    let window = src.window(ms(2), ms(1));
    (
        collect(&running),
        collect(&totals),
        collect(&windowed),
        collect_with(&window, rec),
    )
}

/// `print` runs in every batch (it writes to stdout) next to another output.
#[test]
fn print_runs() {
    let parts: Parts = vec![
        (0..5)
            .map(|i| (Some(format!("k{i}")), format!("v{i}")))
            .collect(),
        vec![(None, "ant bee".into())],
    ];
    let mut sink = None;
    let summary = run_ok(&parts, 2, |_, src| {
        let values = src.map(|r| r.value_str().to_owned());
        values.print(2);
        src.print(1);
        sink = Some(collect(&values));
    });
    assert_eq!(summary.batches, 3);
    assert_eq!(sink.unwrap().batches().len(), 3);
}

/// A job without outputs is refused; `run` reports it.
#[test]
fn job_without_output_is_refused() {
    let parts: Parts = vec![vec![(None, "ant".into())]];
    let err = run_job(&parts, 1, |_, src| {
        let _ = src.map(|r| r.offset as u64);
    })
    .expect_err("no outputs");
    assert!(matches!(err, DriverError::InvalidJob { .. }), "{err}");
}

/// A merge table folds each key's values in the order they arrived, also
/// when a batch holds a key several times and when the keys outgrow the
/// smallest budget's cache of hot values (its generations turn over, so
/// committed values come back from RocksDB): checked against a fold with
/// a merge that is not commutative.
#[test]
fn merge_tables_fold_each_keys_values_in_order_past_a_small_cache() {
    const KEYS: usize = 40_000;
    const RECORDS: usize = 120_000;
    // Keys repeat within a batch (every 40,000 records) and across them.
    let parts: Parts = vec![
        (0..RECORDS)
            .map(|i| (Some(format!("key-{:06}", (i * 7919) % KEYS)), i.to_string()))
            .collect(),
    ];
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = JobConfig::new("t", Duration::from_millis(1));
    config.checkpoint_dir = Some(dir.path().to_path_buf());
    config.until_caught_up = true;
    config.max_records_per_batch = Some(50_000);
    config.progress.lines = false;
    config.parallelism = 2;
    config.state_memory = crate::checkpoint::StateMemory::new(crate::checkpoint::MIN_STATE_MEMORY);
    let ctx = StreamingContext::new(config);
    let source = ctx.source(VecSource::new(SOURCE, &parts));
    source
        .map(|r| {
            (
                r.key_str().unwrap_or("-").to_owned(),
                r.value_str().to_owned(),
            )
        })
        .merge_into_table("folded", |old, new| format!("{old},{new}"));
    let summary = ctx.run().unwrap_or_else(|e| panic!("job failed: {e}"));
    assert_eq!(summary.batches, 3);

    let mut want: BTreeMap<String, String> = BTreeMap::new();
    for (key, value) in &parts[0] {
        want.entry(key.clone().unwrap())
            .and_modify(|v| {
                v.push(',');
                v.push_str(value);
            })
            .or_insert_with(|| value.clone());
    }
    let checkpoint = crate::checkpoint::Checkpoint::open_read_only(dir.path(), "t").unwrap();
    let db = checkpoint.db();
    let cf = checkpoint.cf("table.folded").unwrap();
    let mut got: BTreeMap<String, String> = BTreeMap::new();
    for item in db.iterator_cf(cf, rocksdb::IteratorMode::Start) {
        let (k, v) = item.unwrap();
        got.insert(
            crate::data::decode_all::<String>(&k).unwrap(),
            crate::data::decode_all::<String>(&v).unwrap(),
        );
    }
    assert_eq!(got.len(), KEYS);
    assert!(
        got == want,
        "a merged value differs from the fold in arrival order"
    );
}

/// `sum_into_table` adds without reading (merge operands), and a table
/// can switch between it and `merge_into_table` from one run to the next:
/// each run resumes the last one's offsets and adds only the new records,
/// and a read-only open (as `sluice state` does) folds the operands.
#[test]
fn sum_tables_add_blindly_and_a_job_may_switch_to_merging_and_back() {
    const KEYS: u64 = 10_000;
    let records = |n: u64| -> Parts {
        vec![
            (0..n)
                .map(|i| (Some(format!("key-{:05}", (i * 7919) % KEYS)), i.to_string()))
                .collect(),
        ]
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let run = |parts: &Parts, blind: bool| {
        let mut config = JobConfig::new("t", Duration::from_millis(1));
        config.checkpoint_dir = Some(dir.path().to_path_buf());
        config.until_caught_up = true;
        config.max_records_per_batch = Some(7_000);
        config.progress.lines = false;
        config.parallelism = 2;
        let ctx = StreamingContext::new(config);
        let pairs = ctx
            .source(VecSource::new(SOURCE, parts))
            .map(|r| {
                (
                    r.key_str().unwrap_or("-").to_owned(),
                    r.value_str().parse::<u64>().unwrap_or(0),
                )
            })
            .reduce_by_key(|a, b| a + b);
        if blind {
            pairs.sum_into_table("sums");
        } else {
            pairs.merge_into_table("sums", |a, b| a + b);
        }
        ctx.run().unwrap_or_else(|e| panic!("job failed: {e}"))
    };
    for (n, blind) in [(25_000, true), (40_000, false), (60_000, true)] {
        let summary = run(&records(n), blind);
        assert!(
            summary.batches >= 2,
            "{n} records in {} batches",
            summary.batches
        );
        if n == 25_000 {
            // The blind run wrote operands: reading them takes a fold by
            // the checkpoint's operator (a counting stand-in here).
            static FOLDS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
            let counting = |_: &[u8], _: Option<&[u8]>, ops: &rocksdb::MergeOperands| {
                FOLDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                ops.iter().last().map(<[u8]>::to_vec)
            };
            let mut opts = rocksdb::Options::default();
            opts.set_merge_operator_associative("sluice.sum", counting);
            let names = rocksdb::DB::list_cf(&opts, dir.path()).unwrap();
            let db = rocksdb::DB::open_cf_with_opts_for_read_only(
                &opts,
                dir.path(),
                names.iter().map(|n| (n, opts.clone())),
                false,
            )
            .unwrap();
            let cf = db.cf_handle("table.sums").unwrap();
            let key = crate::data::encode_to_vec::<String>("key-00042");
            assert!(db.get_cf(cf, &key).unwrap().is_some());
            assert!(
                FOLDS.load(std::sync::atomic::Ordering::Relaxed) > 0,
                "no merge operand was written"
            );
        }
    }

    let mut want: BTreeMap<String, u64> = BTreeMap::new();
    for (key, value) in &records(60_000)[0] {
        *want.entry(key.clone().unwrap()).or_default() += value.parse::<u64>().unwrap();
    }
    let checkpoint = crate::checkpoint::Checkpoint::open_read_only(dir.path(), "t").unwrap();
    let cf = checkpoint.cf("table.sums").unwrap();
    let mut got: BTreeMap<String, u64> = BTreeMap::new();
    for item in checkpoint
        .db()
        .iterator_cf(cf, rocksdb::IteratorMode::Start)
    {
        let (k, v) = item.unwrap();
        got.insert(
            crate::data::decode_all::<String>(&k).unwrap(),
            crate::data::decode_all::<u64>(&v).unwrap(),
        );
    }
    assert_eq!(got.len(), KEYS as usize);
    assert!(got == want, "a key's sum differs from the records' sum");
    // A clean stop flushed the memtables: nothing is replayed from the log.
    let in_memtable = checkpoint
        .db()
        .property_int_value_cf(cf, "rocksdb.num-entries-active-mem-table")
        .unwrap();
    assert_eq!(
        in_memtable,
        Some(0),
        "the last run's writes came back from the log"
    );
    // A point read folds operands too.
    let key = crate::data::encode_to_vec::<String>("key-00042");
    let value = checkpoint.db().get_cf(cf, key).unwrap().unwrap();
    assert_eq!(
        crate::data::decode_all::<u64>(&value).unwrap(),
        want["key-00042"]
    );
}

/// A job run again and again until caught up: each clean stop flushes a
/// level-0 file, and closing the database would abort the compaction the
/// open had started, so level 0 (and the disk) grew run after run. The
/// stop now lets compactions finish: level 0 stays under RocksDB's
/// trigger, and the folded sums are exact.
#[test]
fn short_runs_leave_the_state_compacted() {
    const KEYS: u64 = 3_000;
    const PER_RUN: u64 = 2_000;
    const TRIGGER: u64 = crate::checkpoint::LEVEL0_COMPACTION_TRIGGER as u64;
    let records = |n: u64| -> Parts {
        vec![
            (0..n)
                .map(|i| (Some(format!("k{}", (i * 7919) % KEYS)), "1".to_string()))
                .collect(),
        ]
    };
    let dir = tempfile::tempdir().expect("tempdir");
    for run in 1..=TRIGGER + 4 {
        let mut config = JobConfig::new("t", Duration::from_millis(1));
        config.checkpoint_dir = Some(dir.path().to_path_buf());
        config.until_caught_up = true;
        config.progress.lines = false;
        let ctx = StreamingContext::new(config);
        ctx.source(VecSource::new(SOURCE, &records(run * PER_RUN)))
            .map(|r| (r.key_str().unwrap_or("-").to_owned(), 1u64))
            .reduce_by_key(|a, b| a + b)
            .sum_into_table("sums");
        ctx.run()
            .unwrap_or_else(|e| panic!("run {run} failed: {e}"));

        let checkpoint = crate::checkpoint::Checkpoint::open_read_only(dir.path(), "t").unwrap();
        let cf = checkpoint.cf("table.sums").unwrap();
        let level0 = checkpoint
            .db()
            .property_int_value_cf(cf, "rocksdb.num-files-at-level0")
            .unwrap()
            .unwrap();
        assert!(
            level0 < TRIGGER,
            "after run {run}, {level0} files wait in level 0"
        );
        let mut total = 0;
        for item in checkpoint
            .db()
            .iterator_cf(cf, rocksdb::IteratorMode::Start)
        {
            let (_, v) = item.unwrap();
            total += crate::data::decode_all::<u64>(&v).unwrap();
        }
        assert_eq!(total, run * PER_RUN, "after run {run}");
    }
}

/// A job catching up computes each next batch's pure operators (source,
/// maps, shuffles, per-batch reduces) while the batch before commits, and
/// only those: a shuffle below a stateful operator waits for the state the
/// commit writes. Every batch's outputs are still exactly the reference's.
#[test]
fn pure_operators_run_ahead_while_the_batch_before_commits() {
    let parts: Parts = (0..3)
        .map(|p| {
            (0..40)
                .map(|i| (Some(format!("k{}", (i * 7 + p) % 6)), "x".repeat(1 + i % 4)))
                .collect()
        })
        .collect();
    let k = 5;
    let mut sinks = None;
    let summary = run_ok(&parts, k, |_, src| {
        let nums = src.map(|r| (r.key_str().map(str::to_owned), r.value_str().len() as u64));
        let sums = nums.reduce_by_key(|a, b| a + b);
        // Below the state: totals per key, then a shuffle of their parity.
        let totals = sums
            .map(|(k, v)| ((k.map(str::to_owned), false), v))
            .update_state_by_key(update_fn);
        let parity = totals
            .map(|((_, _), (total, _))| (total % 2, 1u64))
            .reduce_by_key(|a, b| a + b);
        sinks = Some((collect(&sums), collect(&totals), collect(&parity)));
    });
    let (sums, totals, parity) = sinks.unwrap();
    let input = batches(&parts, k);
    assert_eq!(summary.batches, input.len() as u64);
    assert_eq!(
        summary.computed_ahead,
        summary.batches - 1,
        "every batch after the first was computed ahead"
    );
    assert_eq!(
        sums.by_batch(),
        per_batch(&input, |_, b| reduce_values(
            b.iter().map(|i| (i.key.clone(), i.len())),
            |a, b| a + b
        ))
    );
    let mut state: BTreeMap<UsKey, (u64, u64)> = BTreeMap::new();
    let mut want_parity = BTreeMap::new();
    let want_totals = per_batch(&input, |id, b| {
        let mut values: BTreeMap<UsKey, Vec<u64>> = BTreeMap::new();
        for (key, sum) in reduce_values(b.iter().map(|i| (i.key.clone(), i.len())), |a, b| a + b) {
            values.entry((key, false)).or_default().push(sum);
        }
        let keys: BTreeSet<UsKey> = values.keys().chain(state.keys()).cloned().collect();
        let mut out = Vec::new();
        for key in keys {
            let new = update_fn(
                values.get(&key).map_or(&[][..], |v| v.as_slice()),
                state.remove(&key),
            );
            if let Some(s) = new {
                state.insert(key.clone(), s);
                out.push((key, s));
            }
        }
        let counts = count_values(out.iter().map(|(_, (total, _))| total % 2));
        if !counts.is_empty() {
            want_parity.insert(id, counts);
        }
        out
    });
    assert_eq!(totals.by_batch(), want_totals);
    assert_eq!(parity.by_batch(), want_parity);
}

/// A source that cannot replay a range (a socket) is read when its batch
/// runs, never ahead of it.
#[test]
fn a_source_that_cannot_replay_is_not_read_ahead() {
    struct Once(VecSource);
    impl Source for Once {
        fn name(&self) -> &str {
            self.0.name()
        }
        fn replayable(&self) -> bool {
            false
        }
        fn partitions(&self) -> Result<Vec<PartitionInfo>, SourceError> {
            self.0.partitions()
        }
        fn offset_for_time(&self, p: i32, t: i64) -> Result<i64, SourceError> {
            self.0.offset_for_time(p, t)
        }
        fn read(
            &self,
            partition: i32,
            from: i64,
            until: i64,
            out: &mut ChunkSink<'_>,
        ) -> Result<(), SourceError> {
            self.0.read(partition, from, until, out)
        }
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = JobConfig::new("t", Duration::from_millis(1));
    config.checkpoint_dir = Some(dir.path().to_path_buf());
    config.until_caught_up = true;
    let summary = count_30_keys_in_3_batches(config, |parts| Once(VecSource::new(SOURCE, parts)));
    assert_eq!(summary.computed_ahead, 0);
}

/// A key count over 30 records, 10 per batch, from the source `source`
/// makes of them: three batches, every record counted once.
fn count_30_keys_in_3_batches<S: Source + 'static>(
    mut config: JobConfig,
    source: impl FnOnce(&Parts) -> S,
) -> RunSummary {
    let parts: Parts = vec![
        (0..30)
            .map(|i| (Some(format!("k{}", i % 4)), "v".into()))
            .collect(),
    ];
    config.max_records_per_batch = Some(10);
    config.progress.lines = false;
    let ctx = StreamingContext::new(config);
    let counts = ctx
        .source(source(&parts))
        .map(|r| (r.key_str().unwrap_or("-").to_owned(), 1u64))
        .reduce_by_key(|a, b| a + b);
    let sink = collect(&counts);
    let summary = ctx.run().unwrap_or_else(|e| panic!("job failed: {e}"));
    assert_eq!(summary.batches, 3);
    let total: u64 = sink.by_batch().values().flatten().map(|(_, n)| n).sum();
    assert_eq!(total, 30);
    summary
}

/// A job that keeps up with its batch interval plans each batch at its
/// time, after the wait: nothing is computed ahead, which would leave out
/// what arrives during the wait.
#[test]
fn a_job_keeping_up_plans_each_batch_at_its_time() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = JobConfig::new("t", Duration::from_millis(150));
    config.checkpoint_dir = Some(dir.path().to_path_buf());
    config.max_batches = Some(3);
    let summary = count_30_keys_in_3_batches(config, |parts| VecSource::new(SOURCE, parts));
    assert_eq!(summary.computed_ahead, 0);
}
