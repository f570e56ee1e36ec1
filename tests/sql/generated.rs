//! Differential testing of SQL jobs over generated queries: after the
//! stream is consumed, each query's result table must equal the same
//! query run once by plain DataFusion over all the input — with 1, 7 and
//! 10,000 records per partition per batch, when the job stops mid-stream
//! and resumes on its checkpoint, and when `sluice run` is SIGKILLed
//! mid-stream and restarted.
//!
//! A seeded grammar generates the queries: stateless projections (over the
//! stream or a window), `GROUP BY` one or two key expressions with
//! aggregates that merge incrementally, global aggregates, `SELECT
//! DISTINCT` (also keyed by the event time, which the watermark evicts),
//! `TUMBLE`/`HOP` windowed aggregations in every output mode (exact
//! `count(DISTINCT …)` among the aggregates), and an
//! aggregation over closed windows — with predicates (comparisons,
//! AND/OR/NOT, IS NULL, LIKE, IN, BETWEEN, CASE), scalar functions and
//! casts. All queries run in one job (one sink each), which keeps the
//! number of batches, and so the runtime, independent of their number.
//!
//! Env: `SLUICE_GEN_SEED` (default fixed, so CI is reproducible; every
//! assertion message names the seed), `SLUICE_GEN_QUERIES` (default 30).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float64Array, Int32Array, Int64Array, RecordBatch,
    StringArray, TimestampMillisecondArray,
};
use datafusion::arrow::datatypes::{
    DataType, Field, Float64Type, Int32Type, Int64Type, Schema, TimeUnit, UInt32Type, UInt64Type,
};
use sluice::checkpoint::Checkpoint;
use sluice::log::{LogStore, TopicConfig};
use sluice::producer::BatchBuilder;
use sluice::sink::table::TableReader;
use sluice::sql::{Script, Topics};

use crate::common;
use crate::common_sql::{self, Reference};

const DEFAULT_SEED: u64 = 20_261_121;
const DEFAULT_QUERIES: usize = 30;
/// Records before the closing ones (one per partition).
const RECORDS: usize = 420;
/// With one record per partition per batch every batch runs every query:
/// fewer records keep that run's time in line with the others.
const RECORDS_ONE_PER_BATCH: usize = 240;
const PARTITIONS: i32 = 3;
/// 2026-11-21 10:00:00 UTC: event times start here.
const BASE_MS: i64 = 1_795_255_200_000;
/// Records are 150 ms apart in event time, each shifted up to this much
/// later, so a partition is out of order by less than the watermark's
/// delay (5 s): no record is late, and every batching must give the batch
/// query's answer.
const JITTER_MS: u64 = 3_000;
/// The last record of each partition is an hour on: the watermark then
/// passes every window of the others, so append mode emits them all.
const CLOSE_MS: i64 = BASE_MS + 3_600_000;
/// Windows before this are closed at the end (append-mode queries keep
/// to them: the closing records' own windows never close).
const CUTOFF_MS: i64 = BASE_MS + 1_800_000;

/// `idle_timeout = '1h'`: a partition that has run out of records must
/// keep holding the watermark back however slow the run is, or the other
/// partitions' records would turn late and results would depend on timing.
const STREAM: &str = "CREATE STREAM clicks (\n  user_id BIGINT, url TEXT, amount DOUBLE, qty BIGINT, ok BOOLEAN, ts TIMESTAMP,\n  WATERMARK FOR ts AS ts - INTERVAL '5' SECOND\n) WITH (topic = 'clicks', format = 'json', idle_timeout = '1h');\n";

const URLS: [&str; 8] = [
    "/home",
    "/cart",
    "/buy",
    "/help",
    "/search?q=a_b",
    "/Cart",
    "/ünï/cödé",
    "",
];

fn seed() -> u64 {
    common::env_or("SLUICE_GEN_SEED", DEFAULT_SEED)
}

fn query_count() -> usize {
    common::env_or("SLUICE_GEN_QUERIES", DEFAULT_QUERIES)
}

/// A linear congruential generator, as `clicks()` in windows.rs.
struct Lcg(u64);

impl Lcg {
    fn new(seed: u64) -> Lcg {
        // splitmix64: nearby seeds give unrelated streams.
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        Lcg(z ^ (z >> 31))
    }

    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    /// In `lo..=hi`.
    fn range(&mut self, lo: i64, hi: i64) -> i64 {
        lo + self.below((hi - lo + 1) as u64) as i64
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

// ---------------------------------------------------------------- input

#[derive(Debug, Clone)]
struct Click {
    user_id: Option<i64>,
    url: Option<&'static str>,
    amount: Option<f64>,
    qty: Option<i64>,
    ok: Option<bool>,
    ts: i64,
    partition: i32,
    offset: i64,
}

/// The input, in each partition's offset order. Amounts are multiples of
/// 0.25 (exact in binary), so sums and averages of them do not depend on
/// the order of addition, which batching changes.
fn clicks(seed: u64, records: usize) -> Vec<Click> {
    let mut rng = Lcg::new(seed ^ 0xda7a);
    let mut offsets = [0i64; PARTITIONS as usize];
    let mut out = Vec::with_capacity(records + PARTITIONS as usize);
    for i in 0..records + PARTITIONS as usize {
        let closing = i >= records;
        let partition = if closing {
            (i - records) as i32
        } else {
            rng.below(PARTITIONS as u64) as i32
        };
        let ts = if closing {
            CLOSE_MS + i64::from(partition)
        } else {
            BASE_MS + i as i64 * 150 + rng.below(JITTER_MS) as i64
        };
        let mut maybe = |percent_null: u64| !rng.chance(percent_null);
        let (has_user, has_url, has_amount, has_qty, has_ok) =
            (maybe(10), maybe(8), maybe(10), maybe(10), maybe(15));
        let offset = offsets[partition as usize];
        offsets[partition as usize] += 1;
        out.push(Click {
            user_id: has_user.then(|| rng.range(-3, 12)),
            url: has_url.then(|| *rng.pick(&URLS)),
            amount: has_amount.then(|| rng.range(-40, 400) as f64 * 0.25),
            qty: has_qty.then(|| rng.range(0, 9)),
            ok: has_ok.then(|| rng.chance(50)),
            ts,
            partition,
            offset,
        });
    }
    out
}

/// `1795255200000` → `2026-11-21 10:00:00.000` (UTC).
fn ts_text(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let milli = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02}.{milli:03}",
        sod / 3600,
        sod / 60 % 60,
        sod % 60
    )
}

/// One record's JSON: nulls written as `null` or left out, event times as
/// epoch milliseconds or text, so the decoder's variants are all used.
fn json(c: &Click, rng: &mut Lcg) -> String {
    let mut fields = Vec::new();
    let mut field = |name: &str, value: Option<String>, rng: &mut Lcg| match value {
        Some(v) => fields.push(format!("\"{name}\": {v}")),
        None if rng.chance(50) => fields.push(format!("\"{name}\": null")),
        None => {}
    };
    field("user_id", c.user_id.map(|v| v.to_string()), rng);
    field("url", c.url.map(|v| format!("\"{v}\"")), rng);
    field("amount", c.amount.map(|v| v.to_string()), rng);
    field("qty", c.qty.map(|v| v.to_string()), rng);
    field("ok", c.ok.map(|v| v.to_string()), rng);
    let ts = if rng.chance(25) {
        format!("\"{}\"", ts_text(c.ts))
    } else {
        c.ts.to_string()
    };
    field("ts", Some(ts), rng);
    format!("{{{}}}", fields.join(", "))
}

/// Appends the clicks to topic `clicks`, each partition's in offset
/// order, in producer batches of 1–8 records with mixed compression.
fn load(store: &LogStore, clicks: &[Click], seed: u64) {
    let mut rng = Lcg::new(seed ^ 0x10ad);
    let topic = store
        .create_topic("clicks", PARTITIONS.into(), TopicConfig::default())
        .unwrap();
    for p in 0..PARTITIONS {
        let mine: Vec<&Click> = clicks.iter().filter(|c| c.partition == p).collect();
        let mut rest = mine.as_slice();
        while !rest.is_empty() {
            let n = (rng.range(1, 8) as usize).min(rest.len());
            let mut b = BatchBuilder::new(*rng.pick(&common::COMPRESSIONS));
            for c in &rest[..n] {
                b.push(None, json(c, &mut rng).as_bytes(), c.ts);
            }
            let mut bytes = b.finish().unwrap();
            let info = topic.partition(p).unwrap().append(&mut bytes).unwrap();
            assert_eq!(info.base_offset, rest[0].offset, "offsets as generated");
            rest = &rest[n..];
        }
    }
}

/// The input as one batch with the stream's schema (Kafka columns
/// included), built from the generated values, not by decoding JSON.
fn input_batch(clicks: &[Click]) -> RecordBatch {
    let ts_type = DataType::Timestamp(TimeUnit::Millisecond, None);
    let schema = Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::Int64, true),
        Field::new("url", DataType::Utf8, true),
        Field::new("amount", DataType::Float64, true),
        Field::new("qty", DataType::Int64, true),
        Field::new("ok", DataType::Boolean, true),
        Field::new("ts", ts_type.clone(), true),
        Field::new("_topic", DataType::Utf8, false),
        Field::new("_partition", DataType::Int32, false),
        Field::new("_offset", DataType::Int64, false),
        Field::new("_timestamp", ts_type, false),
        Field::new("_key", DataType::Utf8, true),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter(clicks.iter().map(|c| c.user_id))),
        Arc::new(StringArray::from_iter(clicks.iter().map(|c| c.url))),
        Arc::new(Float64Array::from_iter(clicks.iter().map(|c| c.amount))),
        Arc::new(Int64Array::from_iter(clicks.iter().map(|c| c.qty))),
        Arc::new(BooleanArray::from_iter(clicks.iter().map(|c| c.ok))),
        Arc::new(TimestampMillisecondArray::from_iter_values(
            clicks.iter().map(|c| c.ts),
        )),
        Arc::new(StringArray::from_iter_values(
            clicks.iter().map(|_| "clicks"),
        )),
        Arc::new(Int32Array::from_iter_values(
            clicks.iter().map(|c| c.partition),
        )),
        Arc::new(Int64Array::from_iter_values(
            clicks.iter().map(|c| c.offset),
        )),
        Arc::new(TimestampMillisecondArray::from_iter_values(
            clicks.iter().map(|c| c.ts),
        )),
        Arc::new(StringArray::from_iter(clicks.iter().map(|_| None::<&str>))),
    ];
    RecordBatch::try_new(schema, columns).unwrap()
}

// -------------------------------------------------------------- queries

/// What a query reads: the stream, or a window table function over it
/// (the reference computes windows with `date_bin` instead).
#[derive(Debug, Clone, Copy)]
enum Source {
    Stream,
    Tumble { size: i64 },
    Hop { slide: i64, size: i64 },
}

impl Source {
    fn stream(self) -> String {
        match self {
            Source::Stream => "clicks".into(),
            Source::Tumble { size } => format!("TUMBLE(clicks, ts, INTERVAL '{size}' SECOND)"),
            Source::Hop { slide, size } => {
                format!("HOP(clicks, ts, INTERVAL '{slide}' SECOND, INTERVAL '{size}' SECOND)")
            }
        }
    }

    fn reference(self) -> String {
        let bin = |s: i64| {
            format!("date_bin(INTERVAL '{s} seconds', ts, TIMESTAMP '1970-01-01 00:00:00')")
        };
        match self {
            Source::Stream => "clicks".into(),
            Source::Tumble { size } => format!(
                "(SELECT *, {b} AS window_start, {b} + INTERVAL '{size} seconds' AS window_end FROM clicks) AS w",
                b = bin(size)
            ),
            // A row is in the windows starting at its slide's bin and the
            // size/slide − 1 slides before it (size is a multiple of slide).
            Source::Hop { slide, size } => {
                let parts: Vec<String> = (0..size / slide)
                    .map(|j| {
                        format!(
                            "SELECT *, {b} - INTERVAL '{back} seconds' AS window_start, {b} - INTERVAL '{back} seconds' + INTERVAL '{size} seconds' AS window_end FROM clicks",
                            b = bin(slide),
                            back = j * slide
                        )
                    })
                    .collect();
                format!("({}) AS w", parts.join(" UNION ALL "))
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Stateless,
    Grouped,
    Global,
    Distinct,
    Windowed,
    OverWindows,
}

/// The kinds in turn, so every seed covers each of them.
const KINDS: [Kind; 10] = [
    Kind::Stateless,
    Kind::Grouped,
    Kind::Windowed,
    Kind::Distinct,
    Kind::Grouped,
    Kind::Windowed,
    Kind::Stateless,
    Kind::Global,
    Kind::Grouped,
    Kind::OverWindows,
];

#[derive(Debug, Clone)]
struct Query {
    kind: Kind,
    /// The SELECT with `{FROM}` where its source goes.
    sql: String,
    source: Source,
    /// The table sink's `mode` option, if set.
    mode: Option<&'static str>,
    /// The bug a pinned query once exposed (fixed; named if it returns).
    regression: Option<&'static str>,
}

impl Query {
    fn stream_sql(&self) -> String {
        self.sql.replace("{FROM}", &self.source.stream())
    }

    fn reference_sql(&self) -> String {
        self.sql.replace("{FROM}", &self.source.reference())
    }

    fn describe(&self) -> String {
        format!(
            "{}{:?}, mode {}:\n    {}\n  reference: {}",
            self.regression
                .map(|b| format!("{b}\n  "))
                .unwrap_or_default(),
            self.kind,
            self.mode.unwrap_or("(default)"),
            self.stream_sql(),
            self.reference_sql()
        )
    }
}

/// Types of generated scalar expressions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ty {
    Int,
    /// `approx_distinct`'s UInt64: DataFusion widens its arithmetic with
    /// signed integers to a decimal, which tables do not store.
    Unsigned,
    Float,
    Text,
    Bool,
}

/// A row's key as one text: injective over the parts (no generated text
/// holds `|` or `~`), never NULL.
fn composite(parts: &[String]) -> String {
    let parts: Vec<String> = parts
        .iter()
        .map(|p| format!("coalesce(CAST({p} AS VARCHAR), '~')"))
        .collect();
    format!("concat_ws('|', {})", parts.join(", "))
}

fn window_key(windows: &[&str], extra: Option<&str>) -> String {
    let mut parts: Vec<String> = windows.iter().map(|w| w.to_string()).collect();
    parts.extend(extra.map(str::to_owned));
    composite(&parts)
}

struct Gen {
    rng: Lcg,
}

impl Gen {
    fn cmp(&mut self) -> &'static str {
        const OPS: [&str; 6] = ["=", "<>", "<", "<=", ">", ">="];
        OPS[self.rng.below(OPS.len() as u64) as usize]
    }

    fn int(&mut self, depth: u32) -> String {
        if depth == 0 || self.rng.chance(35) {
            return self
                .rng
                .pick(&[
                    "user_id",
                    "qty",
                    "char_length(url)",
                    "_partition",
                    "user_id",
                    "qty",
                ])
                .to_string();
        }
        let d = depth - 1;
        match self.rng.below(10) {
            0 => format!("({} + {})", self.int(d), self.int(d)),
            1 => format!("({} - {})", self.int(d), self.rng.range(-3, 9)),
            2 => format!("({} * {})", self.int(d), self.int(d)),
            3 => format!("({} % {})", self.int(d), self.rng.range(2, 5)),
            4 => format!("abs({})", self.int(d)),
            5 => format!("coalesce({}, {})", self.int(d), self.rng.range(-1, 3)),
            6 => format!(
                "CASE WHEN {} THEN {} ELSE {} END",
                self.pred(d),
                self.int(d),
                self.int(d)
            ),
            7 => format!("CAST({} AS BIGINT)", self.float(d, false)),
            8 => format!("({} / {})", self.int(d), self.rng.range(2, 4)),
            _ => format!("char_length({})", self.text(d)),
        }
    }

    /// `exact`: only operations that keep values multiples of 1/8, whose
    /// sums do not depend on the order of addition.
    fn float(&mut self, depth: u32, exact: bool) -> String {
        if depth == 0 || self.rng.chance(35) {
            return self
                .rng
                .pick(&["amount", "amount", "CAST(qty AS DOUBLE)"])
                .to_string();
        }
        let d = depth - 1;
        match self.rng.below(if exact { 8 } else { 11 }) {
            0 => format!("({} * 2)", self.float(d, exact)),
            1 => format!("({} * 0.5)", self.float(d, exact)),
            2 => format!("({} + {})", self.float(d, exact), self.int(d)),
            3 => format!("({} - {})", self.float(d, exact), self.float(d, exact)),
            4 => format!("abs({})", self.float(d, exact)),
            5 => format!("round({})", self.float(d, exact)),
            6 => format!("coalesce({}, 1.5)", self.float(d, exact)),
            7 => format!(
                "CASE WHEN {} THEN {} ELSE {} END",
                self.pred(d),
                self.float(d, exact),
                self.float(d, exact)
            ),
            8 => format!("round({}, 1)", self.float(d, exact)),
            9 => format!("({} / 3)", self.float(d, exact)),
            _ => format!("sqrt(abs({}))", self.float(d, exact)),
        }
    }

    fn text(&mut self, depth: u32) -> String {
        if depth == 0 || self.rng.chance(35) {
            return self
                .rng
                .pick(&["url", "url", "CAST(user_id AS VARCHAR)"])
                .to_string();
        }
        let d = depth - 1;
        match self.rng.below(11) {
            0 => format!("upper({})", self.text(d)),
            1 => format!("lower({})", self.text(d)),
            2 => format!(
                "substr({}, {}, {})",
                self.text(d),
                self.rng.range(1, 3),
                self.rng.range(1, 4)
            ),
            3 => format!("concat({}, '-', CAST({} AS VARCHAR))", self.text(d), self.int(d)),
            4 => format!("coalesce({}, 'none')", self.text(d)),
            5 => format!(
                "CASE WHEN {} THEN {} ELSE 'other' END",
                self.pred(d),
                self.text(d)
            ),
            6 => format!("replace({}, '/', '_')", self.text(d)),
            7 => format!("left({}, {})", self.text(d), self.rng.range(1, 3)),
            8 => format!("reverse({})", self.text(d)),
            9 => format!("({} || '!')", self.text(d)),
            _ => "CASE WHEN amount > 50 THEN 'big' WHEN amount IS NULL THEN 'unknown' ELSE 'small' END".into(),
        }
    }

    fn pred(&mut self, depth: u32) -> String {
        if depth > 0 && self.rng.chance(40) {
            let d = depth - 1;
            return match self.rng.below(4) {
                0 => format!("({} AND {})", self.pred(d), self.pred(d)),
                1 => format!("({} OR {})", self.pred(d), self.pred(d)),
                2 => format!("NOT ({})", self.pred(d)),
                _ => format!(
                    "CASE WHEN {} THEN {} ELSE {} END",
                    self.pred(d),
                    self.pred(d),
                    self.pred(d)
                ),
            };
        }
        let d = depth.min(1);
        match self.rng.below(13) {
            0 => format!("{} {} {}", self.int(d), self.cmp(), self.rng.range(-2, 10)),
            1 => format!(
                "{} {} {}",
                self.float(d, false),
                self.cmp(),
                self.rng.range(-20, 200) as f64 * 0.5
            ),
            2 => format!("{} {} '{}'", self.text(d), self.cmp(), self.rng.pick(&URLS)),
            3 => format!(
                "url {}LIKE '{}'",
                if self.rng.chance(30) { "NOT " } else { "" },
                self.rng
                    .pick(&["/c%", "%a%", "/%", "/b_y", "%ü%", "_", "%?%", "/Cart", "%e"])
            ),
            4 => format!("url ILIKE '{}'", self.rng.pick(&["/c%", "%ART", "/h_lp"])),
            5 => format!(
                "{} IS {}NULL",
                self.rng
                    .pick(&["user_id", "url", "amount", "qty", "ok", "_key"]),
                if self.rng.chance(50) { "NOT " } else { "" }
            ),
            6 => {
                let n = self.rng.range(1, 4);
                let list: Vec<String> =
                    (0..n).map(|_| self.rng.range(-3, 12).to_string()).collect();
                format!(
                    "{} {}IN ({})",
                    self.rng.pick(&["user_id", "qty"]),
                    if self.rng.chance(30) { "NOT " } else { "" },
                    list.join(", ")
                )
            }
            7 => {
                let n = self.rng.range(1, 3);
                let list: Vec<String> = (0..n)
                    .map(|_| format!("'{}'", self.rng.pick(&URLS)))
                    .collect();
                format!("url IN ({})", list.join(", "))
            }
            8 => self
                .rng
                .pick(&[
                    "ok",
                    "NOT ok",
                    "ok IS NOT FALSE",
                    "ok IS TRUE",
                    "ok = (qty > 4)",
                ])
                .to_string(),
            9 => {
                let lo = self.rng.range(-10, 60);
                format!("amount BETWEEN {lo} AND {}", lo + self.rng.range(0, 50))
            }
            10 => format!(
                "{} {} TIMESTAMP '{}'",
                self.rng.pick(&["ts", "ts", "_timestamp"]),
                self.cmp(),
                ts_text(BASE_MS + self.rng.below(66_000) as i64)
            ),
            11 => format!(
                "starts_with({}, '{}')",
                self.text(d),
                self.rng.pick(&["/", "/c", "/h", "/s"])
            ),
            _ => format!("{} > {}", self.int(d), self.int(d)),
        }
    }

    /// A scalar value column of any storable type.
    fn value(&mut self) -> String {
        match self.rng.below(4) {
            0 => self.int(2),
            1 => self.float(2, false),
            2 => self.text(2),
            _ => self.pred(1),
        }
    }

    /// One aggregate call and its type.
    fn aggregate(&mut self) -> (String, Ty) {
        let (call, ty, cast) = match self.rng.below(14) {
            0 | 1 => ("count(*)".to_string(), Ty::Int, false),
            2 => {
                let any = self.value();
                (format!("count({any})"), Ty::Int, false)
            }
            3 => (format!("sum({})", self.int(2)), Ty::Int, false),
            4 => (format!("sum({})", self.float(2, true)), Ty::Float, false),
            5 => {
                let f = self.rng.pick(&["min", "max"]);
                (format!("{f}({})", self.int(2)), Ty::Int, false)
            }
            6 => {
                let f = self.rng.pick(&["min", "max"]);
                (format!("{f}({})", self.float(2, false)), Ty::Float, false)
            }
            7 => {
                let f = self.rng.pick(&["min", "max"]);
                (format!("{f}({})", self.text(2)), Ty::Text, false)
            }
            8 => (format!("avg({})", self.int(2)), Ty::Float, false),
            9 => (format!("avg({})", self.float(2, true)), Ty::Float, false),
            10 => {
                let arg = if self.rng.chance(50) {
                    self.int(1)
                } else {
                    self.text(1)
                };
                if self.rng.chance(50) {
                    (format!("count(DISTINCT {arg})"), Ty::Int, false)
                } else {
                    (format!("approx_distinct({arg})"), Ty::Unsigned, false)
                }
            }
            11 => {
                let f = self.rng.pick(&["bool_and", "bool_or"]);
                (format!("{f}({})", self.pred(1)), Ty::Bool, false)
            }
            12 => {
                // A table cannot store timestamps: the cast goes outside.
                let f = self.rng.pick(&["min", "max"]);
                (format!("{f}(ts)"), Ty::Text, true)
            }
            _ => {
                let f = self
                    .rng
                    .pick(&["max(_offset)", "min(_offset)", "max(_partition)"]);
                (f.to_string(), Ty::Int, false)
            }
        };
        let call = if self.rng.chance(15) {
            format!("{call} FILTER (WHERE {})", self.pred(1))
        } else {
            call
        };
        if cast {
            (format!("CAST({call} AS VARCHAR)"), ty)
        } else {
            (call, ty)
        }
    }

    /// An output column over aggregates: one as is, or a scalar
    /// expression over one or two of them.
    fn aggregate_value(&mut self) -> String {
        let (a, ty) = self.aggregate();
        if self.rng.chance(50) {
            return a;
        }
        let (a, ty) = match ty {
            Ty::Unsigned => (format!("CAST({a} AS BIGINT)"), Ty::Int),
            _ => (a, ty),
        };
        match ty {
            Ty::Int | Ty::Float => match self.rng.below(6) {
                0 => format!("({a} * 2)"),
                1 => {
                    let (b, bty) = self.aggregate();
                    if bty == Ty::Unsigned {
                        format!("({a} + CAST({b} AS BIGINT))")
                    } else if matches!(bty, Ty::Int | Ty::Float) {
                        format!("({a} + {b})")
                    } else {
                        format!("concat(CAST({a} AS VARCHAR), '/', {b})")
                    }
                }
                2 => format!("coalesce({a}, 0)"),
                3 => format!(
                    "CASE WHEN {a} > {} THEN 'hi' ELSE 'lo' END",
                    self.rng.range(0, 40)
                ),
                4 => format!("CAST({a} AS VARCHAR)"),
                _ if ty == Ty::Float => format!("round({a}, 2)"),
                _ => format!("abs({a})"),
            },
            Ty::Text => match self.rng.below(3) {
                0 => format!("upper({a})"),
                1 => format!("coalesce({a}, '-')"),
                _ => format!("char_length({a})"),
            },
            Ty::Bool => format!("CASE WHEN {a} THEN 'yes' ELSE 'no' END"),
            Ty::Unsigned => unreachable!("cast above"),
        }
    }

    /// A predicate over aggregates that, once true for a group, stays true
    /// as rows arrive (in update mode a group that stops passing keeps its
    /// last row, which a batch query would not have).
    fn monotone_having(&mut self) -> String {
        match self.rng.below(5) {
            0 => format!("count(*) >= {}", self.rng.range(1, 6)),
            1 => format!(
                "count({}) > {}",
                self.rng.pick(&["url", "amount", "ok"]),
                self.rng.range(0, 4)
            ),
            2 => format!("max(qty) > {}", self.rng.range(2, 8)),
            3 => format!("min(amount) < {}", self.rng.range(0, 60)),
            _ => format!("sum(qty) >= {}", self.rng.range(3, 30)),
        }
    }

    /// Any predicate over aggregates.
    fn any_having(&mut self) -> String {
        match self.rng.below(4) {
            0 => format!("count(*) < {}", self.rng.range(2, 8)),
            1 => format!(
                "avg(qty) BETWEEN {} AND {}",
                self.rng.range(0, 4),
                self.rng.range(4, 9)
            ),
            2 => format!("min(url) <> '{}'", self.rng.pick(&URLS)),
            _ => "NOT bool_or(ok)".into(),
        }
    }

    /// A GROUP BY key expression; whether it can be the table's key as is
    /// (a table key is text, an integer, a double or a boolean).
    fn group_key(&mut self) -> (String, bool) {
        match self.rng.below(14) {
            0 => ("user_id".into(), true),
            1 => ("url".into(), true),
            2 => ("ok".into(), true),
            3 => ("qty".into(), true),
            4 => ("upper(url)".into(), true),
            5 => ("(user_id % 3)".into(), true),
            6 => ("char_length(url)".into(), true),
            7 => (
                "CASE WHEN amount > 20 THEN 'hi' WHEN amount IS NULL THEN 'none' ELSE 'lo' END"
                    .into(),
                true,
            ),
            8 => ("round(amount / 10)".into(), true),
            9 => ("_partition".into(), true),
            // The event-time column: groups the watermark has passed are
            // evicted from state.
            10 => ("ts".into(), false),
            11 => (self.int(1), true),
            12 => (self.text(1), true),
            _ => ("coalesce(url, 'none')".into(), true),
        }
    }

    fn group_keys(&mut self, max: i64) -> Vec<(String, bool)> {
        let n = self.rng.range(1, max);
        let mut keys: Vec<(String, bool)> = Vec::new();
        for _ in 0..n {
            let k = self.group_key();
            if !keys.iter().any(|(e, _)| *e == k.0) {
                keys.push(k);
            }
        }
        keys
    }

    fn where_clause(&mut self, percent: u64) -> String {
        if self.rng.chance(percent) {
            format!(" WHERE {}", self.pred(2))
        } else {
            String::new()
        }
    }

    fn window(&mut self) -> Source {
        if self.rng.chance(60) {
            Source::Tumble {
                size: *self.rng.pick(&[1, 2, 3, 5, 10]),
            }
        } else {
            let slide = *self.rng.pick(&[1, 2, 5]);
            Source::Hop {
                slide,
                size: slide * self.rng.range(2, 3),
            }
        }
    }

    fn values(&mut self, min: i64, max: i64, each: impl Fn(&mut Gen) -> String) -> String {
        let n = self.rng.range(min, max);
        (0..n)
            .map(|i| format!(", {} AS v{i}", each(self)))
            .collect()
    }

    fn query(&mut self, kind: Kind) -> Query {
        let cutoff = format!("ts < TIMESTAMP '{}'", ts_text(CUTOFF_MS));
        let (sql, source, mode) = match kind {
            Kind::Stateless => {
                let source = if self.rng.chance(25) {
                    self.window()
                } else {
                    Source::Stream
                };
                let key = match source {
                    Source::Stream if self.rng.chance(50) => "(_offset * 3 + _partition)".into(),
                    Source::Stream => {
                        "concat(CAST(_partition AS VARCHAR), '/', CAST(_offset AS VARCHAR))".into()
                    }
                    // A hopping window repeats each row: the window is part
                    // of the key.
                    _ => composite(&["_partition".into(), "_offset".into(), "window_start".into()]),
                };
                let mut values = self.values(0, 3, |g| g.value());
                if !matches!(source, Source::Stream) {
                    values.push_str(", CAST(window_end AS VARCHAR) AS w");
                }
                let filter = self.where_clause(70);
                let mode = *self.rng.pick(&[None, Some("update"), Some("append")]);
                (
                    format!("SELECT {key} AS k{values} FROM {{FROM}}{filter}"),
                    source,
                    mode,
                )
            }
            Kind::Grouped => {
                let keys = self.group_keys(2);
                let exprs: Vec<String> = keys.iter().map(|(e, _)| e.clone()).collect();
                let raw = keys.len() == 1 && keys[0].1 && self.rng.chance(40);
                let filter = self.where_clause(60);
                let having = if self.rng.chance(20) {
                    format!(" HAVING {}", self.monotone_having())
                } else {
                    String::new()
                };
                let mode = *self.rng.pick(&[None, Some("update"), Some("complete")]);
                let sql = if self.rng.chance(30) {
                    // The aggregation in a subquery; the outer projection
                    // runs over the merged groups.
                    let inner_keys: Vec<String> = exprs
                        .iter()
                        .enumerate()
                        .map(|(i, e)| format!("{e} AS g{i}"))
                        .collect();
                    let names: Vec<String> = (0..exprs.len()).map(|i| format!("g{i}")).collect();
                    let n = self.rng.range(1, 3);
                    let aggs: Vec<(String, Ty)> = (0..n).map(|_| self.aggregate()).collect();
                    let inner_aggs: String = aggs
                        .iter()
                        .enumerate()
                        .map(|(i, (a, _))| format!(", {a} AS a{i}"))
                        .collect();
                    let outer: String = aggs
                        .iter()
                        .enumerate()
                        .map(|(i, (_, ty))| match ty {
                            Ty::Int | Ty::Float if self.rng.chance(50) => {
                                format!(", (a{i} * 3) AS v{i}")
                            }
                            Ty::Text if self.rng.chance(50) => format!(", lower(a{i}) AS v{i}"),
                            _ => format!(", a{i} AS v{i}"),
                        })
                        .collect();
                    let key = if raw {
                        "g0".to_string()
                    } else {
                        composite(&names)
                    };
                    format!(
                        "SELECT {key} AS k{outer} FROM (SELECT {}{inner_aggs} FROM {{FROM}}{filter} GROUP BY {}{having}) AS t",
                        inner_keys.join(", "),
                        exprs.join(", ")
                    )
                } else {
                    let key = if raw {
                        exprs[0].clone()
                    } else {
                        composite(&exprs)
                    };
                    let values = self.values(1, 3, |g| g.aggregate_value());
                    format!(
                        "SELECT {key} AS k{values} FROM {{FROM}}{filter} GROUP BY {}{having}",
                        exprs.join(", ")
                    )
                };
                (sql, Source::Stream, mode)
            }
            Kind::Global => {
                let values = self.values(1, 3, |g| g.aggregate_value());
                let filter = self.where_clause(60);
                let having = if self.rng.chance(20) {
                    format!(" HAVING {}", self.monotone_having())
                } else {
                    String::new()
                };
                let mode = *self.rng.pick(&[None, Some("complete")]);
                (
                    format!("SELECT 'all' AS k{values} FROM {{FROM}}{filter}{having}"),
                    Source::Stream,
                    mode,
                )
            }
            Kind::Distinct => {
                let filter = self.where_clause(50);
                let mode = *self.rng.pick(&[None, Some("update"), Some("complete")]);
                let sql = match self.rng.below(4) {
                    0 => {
                        let keys = self.group_keys(2);
                        let exprs: Vec<String> = keys.iter().map(|(e, _)| e.clone()).collect();
                        // The first key again as a value: distinct over
                        // (k, v) is distinct over the keys.
                        let value = if keys[0].1 && self.rng.chance(50) {
                            format!(", {} AS v", exprs[0])
                        } else {
                            String::new()
                        };
                        format!(
                            "SELECT DISTINCT {} AS k{value} FROM {{FROM}}{filter}",
                            composite(&exprs)
                        )
                    }
                    1 => {
                        let keys = self.group_keys(2);
                        let exprs: Vec<String> = keys.iter().map(|(e, _)| e.clone()).collect();
                        format!(
                            "SELECT {} AS k FROM {{FROM}}{filter} GROUP BY {}",
                            composite(&exprs),
                            exprs.join(", ")
                        )
                    }
                    2 => {
                        // Keyed by the event time: the watermark evicts
                        // keys it has passed.
                        let e = self.group_key().0;
                        format!(
                            "SELECT {} AS k FROM (SELECT DISTINCT ts, {e} AS e FROM {{FROM}}{filter}) AS d",
                            composite(&["ts".into(), "e".into()])
                        )
                    }
                    _ => {
                        let e = self
                            .rng
                            .pick(&["user_id", "url", "qty", "upper(url)", "ok"]);
                        format!("SELECT DISTINCT {e} AS k FROM {{FROM}}{filter}")
                    }
                };
                (sql, Source::Stream, mode)
            }
            Kind::Windowed => {
                let source = self.window();
                let extra = if self.rng.chance(60) {
                    let (k, _) = self.group_key();
                    // ts with its window would make every group one row.
                    Some(if k == "ts" { "url".to_string() } else { k })
                } else {
                    None
                };
                let mode =
                    *self
                        .rng
                        .pick(&[None, Some("update"), Some("complete"), Some("append")]);
                let filter = match (mode, self.rng.chance(50)) {
                    (Some("append"), true) => format!(" WHERE {cutoff} AND {}", self.pred(2)),
                    (Some("append"), false) => format!(" WHERE {cutoff}"),
                    (_, true) => format!(" WHERE {}", self.pred(2)),
                    _ => String::new(),
                };
                let having = match (mode, self.rng.chance(20)) {
                    // Append mode emits each window once, complete: any
                    // condition on its aggregates holds or not for good.
                    (Some("append"), true) => format!(" HAVING {}", self.any_having()),
                    (_, true) => format!(" HAVING {}", self.monotone_having()),
                    _ => String::new(),
                };
                let values = self.values(1, 3, |g| g.aggregate_value());
                // Either bound identifies the window (the start by the
                // window's size, which the column carries).
                let windows: &[&str] = match self.rng.below(6) {
                    0 => &["window_end"],
                    1 => &["window_start"],
                    _ => &["window_start", "window_end"],
                };
                let mut group = windows.join(", ");
                if let Some(e) = &extra {
                    write!(group, ", {e}").unwrap();
                }
                (
                    format!(
                        "SELECT {} AS k{values} FROM {{FROM}}{filter} GROUP BY {group}{having}",
                        window_key(windows, extra.as_deref())
                    ),
                    source,
                    mode,
                )
            }
            Kind::OverWindows => {
                // Nexmark q5's shape: per window, over the per-key counts.
                let source = self.window();
                let (k, _) = self.group_key();
                let k = if k == "ts" { "url".to_string() } else { k };
                let filter = if self.rng.chance(50) {
                    format!(" WHERE {cutoff} AND {}", self.pred(1))
                } else {
                    format!(" WHERE {cutoff}")
                };
                let inner_agg = self.rng.pick(&["count(*)", "sum(qty)", "max(amount)"]);
                (
                    format!(
                        "SELECT {} AS k, max(n) AS top, count(*) AS keys, sum(n) AS total FROM (SELECT {k} AS g, {inner_agg} AS n, window_start, window_end FROM {{FROM}}{filter} GROUP BY {k}, window_start, window_end) AS per_key GROUP BY window_start, window_end",
                        window_key(&["window_start", "window_end"], None)
                    ),
                    source,
                    Some("append"),
                )
            }
        };
        let q = Query {
            kind,
            sql,
            source,
            mode,
            regression: None,
        };
        // `--` would start a comment in the script.
        assert!(!q.stream_sql().contains("--"), "{}", q.describe());
        q
    }
}

/// The first query is fixed: its count shows how far a run got.
fn sentinel() -> Query {
    Query {
        kind: Kind::Global,
        sql: "SELECT 'all' AS k, count(*) AS n, sum(qty) AS q FROM {FROM}".into(),
        source: Source::Stream,
        mode: None,
        regression: None,
    }
}

/// Generated queries that exposed bugs, minimized and pinned so they stay
/// fixed (the grammar still generates their shapes).
fn known_bugs() -> Vec<Query> {
    vec![
        Query {
            kind: Kind::Global,
            sql: "SELECT 'all' AS k, count(*) AS n FROM {FROM}".into(),
            source: Source::Stream,
            mode: None,
            regression: Some(
                "REGRESSION: a global aggregate of only count/min/max was answered by DataFusion from a batch's exact \
                 row-count statistics (no AggregateExec left), so it ran stateless and kept the last batch's count",
            ),
        },
        Query {
            kind: Kind::Global,
            sql: "SELECT 'all' AS k, avg(qty) AS a FROM {FROM} WHERE qty > 100".into(),
            source: Source::Stream,
            mode: None,
            regression: Some(
                "REGRESSION: avg over no rows was NaN (the per-group accumulator's 0 / 0); SQL says NULL",
            ),
        },
    ]
}

/// Exact `count(DISTINCT …)` in each shape it is kept in: one group for
/// the whole stream, a group per key, and windows the watermark closes
/// (their values deleted with them), with and without `FILTER`.
fn exact_distinct() -> Vec<Query> {
    let cutoff = format!("ts < TIMESTAMP '{}'", ts_text(CUTOFF_MS));
    let windowed = |mode| Query {
        kind: Kind::Windowed,
        sql: format!(
            "SELECT {} AS k, count(DISTINCT user_id) AS u, count(DISTINCT url) FILTER (WHERE qty > 2) AS f, count(*) AS n FROM {{FROM}} WHERE {cutoff} GROUP BY user_id % 3, window_start, window_end",
            window_key(&["window_end"], Some("user_id % 3"))
        ),
        source: Source::Tumble { size: 20 },
        mode,
        regression: None,
    };
    vec![
        Query {
            kind: Kind::Global,
            sql: "SELECT 'all' AS k, count(DISTINCT user_id) AS u, count(DISTINCT url) FILTER (WHERE ok) AS f, count(DISTINCT qty) AS q FROM {FROM}".into(),
            source: Source::Stream,
            mode: None,
            regression: None,
        },
        Query {
            kind: Kind::Grouped,
            sql: "SELECT url AS k, count(DISTINCT user_id) AS u, count(DISTINCT user_id) FILTER (WHERE amount > 2) AS f FROM {FROM} GROUP BY url".into(),
            source: Source::Stream,
            mode: None,
            regression: None,
        },
        windowed(Some("append")),
        windowed(Some("update")),
    ]
}

/// The queries and each one's result run once by DataFusion over all the
/// input. A generated query DataFusion cannot plan (its simplifier can
/// make two aggregates one, with a duplicate name) is generated afresh.
fn generate(seed: u64, n: usize, clicks: &[Click]) -> (Vec<Query>, Vec<BTreeMap<String, String>>) {
    let mut g = Gen {
        rng: Lcg::new(seed ^ 0x9e7),
    };
    let reference = Reference::new();
    reference.batch("clicks", input_batch(clicks));
    let mut queries = Vec::new();
    let mut expected = Vec::new();
    // None: the next generated kind.
    let wanted = std::iter::once(Some(sentinel()))
        .chain((0..n).map(|_| None))
        .chain(known_bugs().into_iter().map(Some))
        .chain(exact_distinct().into_iter().map(Some));
    for (i, fixed) in wanted.enumerate() {
        let mut attempts = 0;
        let (q, df) = loop {
            let q = match &fixed {
                Some(q) => q.clone(),
                None => g.query(KINDS[(i - 1) % KINDS.len()]),
            };
            match reference.plan(&q.reference_sql()) {
                Ok(df) => break (q, df),
                Err(e) => {
                    attempts += 1;
                    assert!(
                        attempts < 10 && fixed.is_none(),
                        "SLUICE_GEN_SEED={seed}: DataFusion cannot plan {}: {e}",
                        q.describe()
                    );
                }
            }
        };
        let batches = reference.collect(df).unwrap_or_else(|e| {
            panic!(
                "SLUICE_GEN_SEED={seed}, q{i}: the batch query fails: {e}\n  {}",
                q.describe()
            )
        });
        expected.push(
            as_table(&batches).unwrap_or_else(|e| {
                panic!("SLUICE_GEN_SEED={seed}, q{i}: {e}\n  {}", q.describe())
            }),
        );
        queries.push(q);
    }
    (queries, expected)
}

/// The job: the stream, then a table sink `q<i>` per query.
fn script(queries: &[Query], extra: &str) -> String {
    let mut s = STREAM.to_string();
    for (i, q) in queries.iter().enumerate() {
        let mode = q
            .mode
            .map(|m| format!(", mode = '{m}'"))
            .unwrap_or_default();
        writeln!(s, "CREATE SINK q{i} WITH (type = 'table'{mode});").unwrap();
        writeln!(s, "INSERT INTO q{i} {};", q.stream_sql()).unwrap();
    }
    s.push_str(extra);
    s
}

// ------------------------------------------------------------ reference

/// A cell as the table reader shows it (`null` for NULL).
fn cell(array: &ArrayRef, row: usize) -> Result<String, String> {
    if array.is_null(row) {
        return Ok("null".into());
    }
    Ok(match array.data_type() {
        DataType::Utf8 => array.as_string::<i32>().value(row).to_owned(),
        DataType::LargeUtf8 => array.as_string::<i64>().value(row).to_owned(),
        DataType::Utf8View => array.as_string_view().value(row).to_owned(),
        DataType::Int64 => array.as_primitive::<Int64Type>().value(row).to_string(),
        DataType::Int32 => array.as_primitive::<Int32Type>().value(row).to_string(),
        DataType::UInt64 => array.as_primitive::<UInt64Type>().value(row).to_string(),
        DataType::UInt32 => array.as_primitive::<UInt32Type>().value(row).to_string(),
        DataType::Float64 => array.as_primitive::<Float64Type>().value(row).to_string(),
        DataType::Boolean => array.as_boolean().value(row).to_string(),
        other => {
            return Err(format!(
                "a column of type {other}, which tables do not store"
            ));
        }
    })
}

/// Result rows as a table sink keeps them: keyed by the first column
/// (NULL keys are not stored), the others as `(a, (b, c))`.
fn as_table(batches: &[RecordBatch]) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for b in batches {
        for row in 0..b.num_rows() {
            if b.column(0).is_null(row) {
                continue;
            }
            let key = cell(b.column(0), row)?;
            let values: Vec<String> = (1..b.num_columns())
                .map(|c| cell(b.column(c), row))
                .collect::<Result<_, _>>()?;
            let value = match values.split_last() {
                None => "true".to_string(),
                Some((last, rest)) => rest
                    .iter()
                    .rev()
                    .fold(last.clone(), |acc, v| format!("({v}, {acc})")),
            };
            if let Some(old) = out.insert(key.clone(), value.clone()) {
                return Err(format!(
                    "the batch query gives key {key:?} twice ({old} and {value})"
                ));
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------- runs

/// Every query's result table in the checkpoint.
fn results(checkpoint: &Path, job: &str, n: usize) -> Vec<BTreeMap<String, String>> {
    (0..n)
        .map(|i| common_sql::result_table(checkpoint, job, &format!("q{i}")))
        .collect()
}

/// How many records the sentinel query has counted.
fn counted(checkpoint: &Path, job: &str) -> u64 {
    let cp = Checkpoint::open_read_only(checkpoint, job).unwrap();
    let reader = TableReader::open(&cp, "q0").unwrap();
    reader.get("all").unwrap().map_or(0, |v| {
        v.text
            .trim_start_matches('(')
            .split(',')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    })
}

/// Up to 8 differing keys, as `-` expected and `+` got.
fn diff(expected: &BTreeMap<String, String>, got: &BTreeMap<String, String>) -> String {
    let mut keys: Vec<&String> = expected.keys().chain(got.keys()).collect();
    keys.sort();
    keys.dedup();
    let differing: Vec<&String> = keys
        .into_iter()
        .filter(|k| expected.get(*k) != got.get(*k))
        .collect();
    let mut out = format!(
        "    {} of {} expected rows differ ({} rows in the table):\n",
        differing.len(),
        expected.len(),
        got.len()
    );
    for k in differing.iter().take(8) {
        if let Some(v) = expected.get(*k) {
            writeln!(out, "    - {k} = {v}").unwrap();
        }
        if let Some(v) = got.get(*k) {
            writeln!(out, "    + {k} = {v}").unwrap();
        }
    }
    out
}

fn check(
    what: &str,
    seed: u64,
    queries: &[Query],
    expected: &[BTreeMap<String, String>],
    got: &[BTreeMap<String, String>],
) {
    let mut failures = String::new();
    let mut differ = 0;
    for (i, q) in queries.iter().enumerate() {
        if got[i] != expected[i] {
            differ += 1;
            writeln!(
                failures,
                "q{i}: {}\n{}",
                q.describe(),
                diff(&expected[i], &got[i])
            )
            .unwrap();
        }
    }
    assert!(
        failures.is_empty(),
        "SLUICE_GEN_SEED={seed}, {what}: {differ} of {} queries differ from the batch query:\n{failures}",
        queries.len()
    );
}

/// The generated case of a test: input, queries, their references, and a
/// store holding the input.
struct Case {
    seed: u64,
    clicks: Vec<Click>,
    queries: Vec<Query>,
    expected: Vec<BTreeMap<String, String>>,
    dir: tempfile::TempDir,
}

impl Case {
    fn new(records: usize) -> Case {
        let seed = seed();
        let clicks = clicks(seed, records);
        let (queries, expected) = generate(seed, query_count(), &clicks);
        // A generator that filters everything away tests nothing.
        let nonempty = expected.iter().filter(|e| !e.is_empty()).count();
        assert!(
            nonempty * 4 >= expected.len() * 3,
            "SLUICE_GEN_SEED={seed}: only {nonempty} of {} queries have rows",
            expected.len()
        );
        Case {
            seed,
            clicks,
            queries,
            expected,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// Creates the store of the case's directory and loads the input.
    fn store(&self) -> Arc<LogStore> {
        let store =
            Arc::new(LogStore::open(self.dir.path().join("data"), common::quiet()).unwrap());
        load(&store, &self.clicks, self.seed);
        store
    }

    /// Runs the job in process at `batch` records per partition per batch,
    /// stopping after each of `stops` batches on the way (a restart on the
    /// same checkpoint each time), then to the end; checks every table.
    fn run(&self, batch: u64, stops: &[u64]) {
        let store = self.store();
        let text = script(&self.queries, "");
        let script = Script::parse(&text)
            .unwrap_or_else(|e| panic!("SLUICE_GEN_SEED={}: {e}\n{}", self.seed, numbered(&text)));
        // Refusals name a line: the script is shown to find the query.
        if let Err(e) = sluice::sql::explain(&script, &Topics::Embedded(store.clone())) {
            panic!(
                "SLUICE_GEN_SEED={}: the job is refused: {e}\n{}",
                self.seed,
                numbered(&text)
            );
        }
        let cp = self.dir.path().join(format!("cp-{batch}"));
        let job = "generated";
        let total = self.clicks.len() as u64;
        let mut before = 0;
        for &stop in stops {
            common_sql::run_sql(&store, &cp, job, &script, Some(batch), Some(stop));
            let now = counted(&cp, job);
            assert!(
                before < now && now < total,
                "SLUICE_GEN_SEED={}: a stop after {stop} batches of {batch} should be mid-stream: {before} then {now} of {total} records counted",
                self.seed
            );
            before = now;
        }
        common_sql::run_sql(&store, &cp, job, &script, Some(batch), None);
        let what = if stops.is_empty() {
            format!("{batch} records per partition per batch")
        } else {
            format!(
                "{batch} records per partition per batch, stopped and restarted after {stops:?} batches"
            )
        };
        check(
            &what,
            self.seed,
            &self.queries,
            &self.expected,
            &results(&cp, job, self.queries.len()),
        );
    }
}

fn numbered(text: &str) -> String {
    text.lines()
        .enumerate()
        .map(|(i, l)| format!("{:4} {l}\n", i + 1))
        .collect()
}

/// Regression: DataFusion's simplifier turns a filter no row can pass into
/// an empty relation without a scan, and Sluice refused the job as one
/// that "reads no declared stream" (generated, e.g., as `url IN ('',
/// '/help') AND url IN ('/home', '/buy')`).
#[test]
fn a_filter_no_row_can_pass_is_accepted_and_writes_nothing() {
    let seed = seed();
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(LogStore::open(dir.path().join("data"), common::quiet()).unwrap());
    load(&store, &clicks(seed, RECORDS), seed);
    let query = Query {
        kind: Kind::Stateless,
        sql: "SELECT url AS k, qty AS v FROM {FROM} WHERE url = '/home' AND url = '/buy'".into(),
        source: Source::Stream,
        mode: None,
        regression: None,
    };
    let script = Script::parse(&script(&[query], "")).unwrap();
    if let Err(e) = sluice::sql::explain(&script, &Topics::Embedded(store.clone())) {
        panic!("a query whose filter no row passes is refused: {e}");
    }
    let cp = dir.path().join("cp");
    common_sql::run_sql(&store, &cp, "generated", &script, Some(7), None);
    assert_eq!(results(&cp, "generated", 1), vec![BTreeMap::new()]);
}

#[test]
fn event_time_text_is_utc() {
    assert_eq!(ts_text(BASE_MS), "2026-11-21 10:00:00.000");
    assert_eq!(ts_text(CLOSE_MS + 1), "2026-11-21 11:00:00.001");
    assert_eq!(ts_text(0), "1970-01-01 00:00:00.000");
}

#[test]
fn generated_queries_equal_the_batch_query_in_one_batch() {
    let case = Case::new(RECORDS);
    case.run(10_000, &[]);
}

#[test]
fn generated_queries_equal_the_batch_query_seven_records_per_batch_with_restarts() {
    let case = Case::new(RECORDS);
    case.run(7, &[4, 5]);
}

#[test]
fn generated_queries_equal_the_batch_query_one_record_per_batch() {
    let case = Case::new(RECORDS_ONE_PER_BATCH);
    case.run(1, &[40]);
}

/// Kills `sluice run` twice right after a sink wrote (before the batch
/// commits) and once at a random moment, then lets it finish: every table
/// must still equal the batch query's.
#[test]
fn generated_queries_equal_the_batch_query_after_sigkills_of_sluice_run() {
    let case = Case::new(RECORDS);
    let seed = case.seed;
    let data = case.dir.path().join("data");
    case.store().close().unwrap();
    // The kill switch: a topic sink, whose failpoint SIGKILLs the process
    // after its write in a chosen batch (table sinks have none: their
    // rows go into the batch's commit).
    let job = case.dir.path().join("generated.sql");
    std::fs::write(
        &job,
        script(
            &case.queries,
            "CREATE SINK kill_switch WITH (type = 'topic', topic = 'kill_switch');\nINSERT INTO kill_switch SELECT _offset AS o FROM clicks;\n",
        ),
    )
    .unwrap();
    let cp = case.dir.path().join("cp");
    let total = case.clicks.len() as u64;
    let mut rng = Lcg::new(seed ^ 0x6b11);
    let kill_at = [rng.range(2, 6) as u64, rng.range(8, 16) as u64];
    let random_kill_after = Duration::from_millis(rng.range(100, 900) as u64);
    let command = || {
        let mut cmd = common::sluice_run(&job, &data, &cp);
        cmd.args(["--interval", "1ms", "--quiet"])
            .args(["--max-records-per-batch", "5"]);
        cmd
    };
    let mut before = 0;
    common_sql::crash_storm(
        &format!("SLUICE_GEN_SEED={seed}"),
        case.dir.path(),
        &command,
        &kill_at,
        random_kill_after,
        |batch| {
            let now = counted(&cp, "generated");
            assert!(
                before <= now && now < total,
                "SLUICE_GEN_SEED={seed}: killed in batch {batch}, {now} of {total} records counted (before: {before})"
            );
            before = now;
        },
    );
    check(
        "after SIGKILLs and restarts of sluice run (5 records per partition per batch)",
        seed,
        &case.queries,
        &case.expected,
        &results(&cp, "generated", case.queries.len()),
    );
}
