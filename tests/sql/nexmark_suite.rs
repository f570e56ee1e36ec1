//! Nexmark's queries as job files, differentially: the queries of
//! `jobs/nexmark/` run together in one `sluice run` over generated events
//! (each blackhole sink swapped for a JSON file sink, which writes every
//! batch exactly once), and the rows each sink wrote — for an updating
//! query, the last row per key — must equal the same `SELECT` run once by
//! plain DataFusion over all the events, decoded here from the generator
//! itself. At 10,000, 7 and 1 records per partition per batch, and when
//! the job is SIGKILLed mid-stream (in chosen batches and at a random
//! moment) and restarted on its checkpoint.
//!
//! (q13 reads `jobs/data/nexmark_side_input.csv`: the jobs run in the
//! repository's root.)
//!
//! Queries whose rows wait for the watermark (q5, q7, q8, q11) run on
//! their own (at the same batch sizes, and SIGKILLed), with one event an
//! hour later appended to every partition so
//! the watermark passes every generated window (q11's reference merges
//! sessions with window functions: a batch `SESSION` does not); q12's
//! windows are of processing time: its test checks what timing cannot
//! change. q14 runs in this process with its user function registered.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use serde_json::Value;
use sluice::nexmark::{EventKind, Generator, NexmarkConfig};

use crate::common::{self, Run};
use crate::common_sql::Reference;

const SEED: u64 = 7;
/// Events per second of event time: 3,000 events span 30 s, so q16's
/// minutes change within a run.
const RATE: u64 = 100;
const PARTITIONS: &str = "3";

/// A query of `jobs/nexmark/` and how its rows are compared: by its `key`
/// columns (the last row written per key counts: an updating query), or,
/// with no key, as a multiset (an append-only query); `compared` limits
/// the columns to those the query decides (q19's ranks of bids of one
/// price may hold either bid: arrival order across partitions is not the
/// generator's).
struct Case {
    query: &'static str,
    key: &'static [&'static str],
    compared: Option<&'static [&'static str]>,
}

const CASES: [Case; 14] = [
    Case {
        query: "q3",
        key: &[],
        compared: None,
    },
    Case {
        query: "q4",
        key: &["category"],
        compared: None,
    },
    Case {
        query: "q6",
        key: &["auction"],
        compared: None,
    },
    Case {
        query: "q9",
        key: &["id"],
        compared: None,
    },
    Case {
        query: "q10",
        key: &[],
        compared: None,
    },
    Case {
        query: "q13",
        key: &[],
        compared: None,
    },
    Case {
        query: "q15",
        key: &["day"],
        compared: None,
    },
    Case {
        query: "q16",
        key: &["channel", "day"],
        compared: None,
    },
    Case {
        query: "q17",
        key: &["auction", "day"],
        compared: None,
    },
    Case {
        query: "q18",
        key: &["bidder", "auction"],
        compared: None,
    },
    Case {
        query: "q19",
        key: &["auction", "rank_number"],
        compared: Some(&["auction", "rank_number", "price"]),
    },
    Case {
        query: "q20",
        key: &[],
        compared: None,
    },
    Case {
        query: "q21",
        key: &[],
        compared: None,
    },
    Case {
        query: "q22",
        key: &[],
        compared: None,
    },
];

/// Queries whose rows wait for the watermark: windows and sessions it
/// closes (q5, q7, q8, q11), the join's buffers it evicts (q8).
const WINDOWED: [Case; 4] = [
    Case {
        query: "q5",
        key: &[],
        compared: None,
    },
    Case {
        query: "q7",
        key: &[],
        compared: None,
    },
    Case {
        query: "q8",
        key: &[],
        compared: None,
    },
    Case {
        query: "q11",
        key: &[],
        compared: None,
    },
];

/// A job file's statements, `;`-terminated, comments dropped.
fn statements(query: &str) -> Vec<String> {
    let path = common::repo("jobs/nexmark").join(format!("{query}.sql"));
    let text = std::fs::read_to_string(&path).unwrap();
    let code: String = text
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect::<Vec<_>>()
        .join("\n");
    code.split(';')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The `SELECT` of a job file's `INSERT INTO`.
fn select_of(query: &str) -> String {
    let insert = statements(query)
        .into_iter()
        .find(|s| s.starts_with("INSERT INTO"))
        .unwrap_or_else(|| panic!("{query}.sql has no INSERT INTO"));
    let at = insert.find("SELECT").unwrap();
    insert[at..].to_owned()
}

/// `option = '…'` in `statement` set to `value`.
fn with_option(statement: &str, option: &str, value: &str) -> String {
    let start = format!("{option} = '");
    let at = statement
        .find(&start)
        .unwrap_or_else(|| panic!("no {option} in {statement}"))
        + start.len();
    let end = at + statement[at..].find('\'').unwrap();
    format!("{}{value}{}", &statement[..at], &statement[end..])
}

/// Every case's job file in one script: each stream declared once, each
/// sink (a blackhole, or q10's partitioned files) a JSON file sink under
/// `out/<query>`, plus `extra`.
fn combined_script(cases: &[Case], out: &Path, extra: &str) -> String {
    let mut streams: BTreeMap<String, String> = BTreeMap::new();
    let mut rest = String::new();
    for case in cases {
        for s in statements(case.query) {
            if s.starts_with("CREATE STREAM") {
                let name = s.split_whitespace().nth(2).unwrap().to_owned();
                streams.entry(name).or_insert(s);
            } else if s.contains("type = 'file'") {
                let dir = out.join(case.query);
                let s = with_option(&s, "path", &dir.display().to_string());
                rest.push_str(&with_option(&s, "format", "json"));
                rest.push_str(";\n");
            } else {
                assert_eq!(
                    s.matches("type = 'blackhole'").count(),
                    usize::from(s.starts_with("CREATE SINK")),
                    "{}: {s}",
                    case.query
                );
                let dir = out.join(case.query);
                rest.push_str(&s.replace(
                    "type = 'blackhole'",
                    &format!("type = 'file', format = 'json', path = '{}'", dir.display()),
                ));
                rest.push_str(";\n");
            }
        }
    }
    let mut script: String = streams.values().map(|s| format!("{s};\n")).collect();
    script.push_str(&rest);
    script.push_str(extra);
    script
}

/// The declared columns of the three streams, as the reference reads them.
fn schema(kind: EventKind) -> Arc<Schema> {
    let (int, text, ts) = (
        DataType::Int64,
        DataType::Utf8,
        DataType::Timestamp(TimeUnit::Millisecond, None),
    );
    let cols: Vec<(&str, DataType)> = match kind {
        EventKind::Person => vec![
            ("id", int),
            ("name", text.clone()),
            ("email_address", text.clone()),
            ("credit_card", text.clone()),
            ("city", text.clone()),
            ("state", text.clone()),
            ("date_time", ts),
            ("extra", text),
        ],
        EventKind::Auction => vec![
            ("id", int.clone()),
            ("item_name", text.clone()),
            ("description", text.clone()),
            ("initial_bid", int.clone()),
            ("reserve", int.clone()),
            ("date_time", ts.clone()),
            ("expires", ts),
            ("seller", int.clone()),
            ("category", int),
            ("extra", text),
        ],
        EventKind::Bid => vec![
            ("auction", int.clone()),
            ("bidder", int.clone()),
            ("price", int),
            ("channel", text.clone()),
            ("url", text.clone()),
            ("date_time", ts),
            ("extra", text),
        ],
    };
    Arc::new(Schema::new(
        cols.into_iter()
            .map(|(n, t)| Field::new(n, t, true))
            .collect::<Vec<_>>(),
    ))
}

/// The first `events` events of the generator as DataFusion tables.
fn reference(events: u64) -> Reference {
    let generator = Generator::new(NexmarkConfig {
        seed: SEED,
        rate: RATE,
        ..NexmarkConfig::default()
    });
    let mut lines: BTreeMap<EventKind, Vec<u8>> = BTreeMap::new();
    for n in 0..events {
        let out = lines.entry(EventKind::of(n)).or_default();
        sluice::nexmark::json::write_event(&generator.event(n), out);
        out.push(b'\n');
    }
    let reference = Reference::new();
    for f in sluice::sql::scalar_functions() {
        reference.ctx().register_udf(f);
    }
    let mut tables = std::collections::HashMap::new();
    for kind in EventKind::ALL {
        let bytes = lines.remove(&kind).unwrap_or_default();
        let reader = datafusion::arrow::json::ReaderBuilder::new(schema(kind))
            .build(Cursor::new(bytes))
            .unwrap();
        let batches: Vec<RecordBatch> = reader.collect::<Result<_, _>>().unwrap();
        let batch = datafusion::arrow::compute::concat_batches(&schema(kind), &batches).unwrap();
        tables.insert(kind.topic().to_owned(), vec![batch.clone()]);
        reference.batch(kind.topic(), batch);
    }
    // HOP and TUMBLE window the rows as a job's queries do.
    sluice::sql::register_window_functions(reference.ctx(), tables);
    // q13's side input, as its job file reads it.
    let side_input = Arc::new(Schema::new(vec![
        Field::new("key", DataType::Int64, true),
        Field::new("value", DataType::Utf8, true),
    ]));
    let options = datafusion::prelude::CsvReadOptions::new()
        .has_header(false)
        .schema(&side_input);
    let path = common::repo("jobs/data/nexmark_side_input.csv");
    reference
        .block_on(
            reference
                .ctx()
                .register_csv("side_input", path.to_str().unwrap(), options),
        )
        .unwrap();
    reference
}

/// Rows as JSON arrays in `columns` order (a missing field is NULL).
fn rows_of(objects: impl IntoIterator<Item = Value>, columns: &[String]) -> Vec<Vec<Value>> {
    objects
        .into_iter()
        .map(|o| {
            columns
                .iter()
                .map(|c| o.get(c).cloned().unwrap_or(Value::Null))
                .collect()
        })
        .collect()
}

/// The reference's rows of `case`, and its column names.
/// q11's sessions as a batch query computes them (DataFusion's `SESSION`
/// gives each row its own window; a job merges them): a bidder's bids in
/// time order, a new session wherever one comes 10 s or more after the
/// previous; a session spans its first bid to 10 s after its last.
const Q11_SESSIONS: &str = "
    SELECT bidder, count(*) AS bid_count, min(date_time) AS starttime,
           max(date_time) + INTERVAL '10' SECOND AS endtime
    FROM (
      SELECT bidder, date_time,
             sum(starts) OVER (PARTITION BY bidder ORDER BY date_time
                               ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS session
      FROM (
        SELECT bidder, date_time,
               CASE WHEN date_time - lag(date_time) OVER (PARTITION BY bidder ORDER BY date_time)
                         < INTERVAL '10' SECOND THEN 0 ELSE 1 END AS starts
        FROM bid))
    GROUP BY bidder, session";

fn expected(reference: &Reference, case: &Case) -> (Vec<Vec<Value>>, Vec<String>) {
    let sql = match case.query {
        "q11" => Q11_SESSIONS.to_owned(),
        query => select_of(query),
    };
    let batches = reference.rows(&sql);
    let columns: Vec<String> = match batches.first() {
        Some(b) => b
            .schema()
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .collect(),
        None => Vec::new(),
    };
    let mut w = datafusion::arrow::json::WriterBuilder::new()
        .with_explicit_nulls(true)
        .build::<_, datafusion::arrow::json::writer::LineDelimited>(Vec::new());
    for b in &batches {
        w.write(b).unwrap();
    }
    w.finish().unwrap();
    let text = String::from_utf8(w.into_inner()).unwrap();
    let objects = text.lines().map(|l| serde_json::from_str(l).unwrap());
    (rows_of(objects, &columns), columns)
}

/// A Hive partition value as the path holds it, decoded.
fn partition_value(escaped: &str) -> Value {
    if escaped == sluice::sink::file::DEFAULT_PARTITION {
        return Value::Null;
    }
    let bytes = escaped.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            out.push(u8::from_str_radix(&escaped[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Value::String(String::from_utf8(out).unwrap())
}

/// What a file sink wrote, in batch order; a partitioned sink's
/// partition columns come from the files' paths.
fn written(dir: &Path, columns: &[String]) -> Vec<Vec<Value>> {
    let mut objects = Vec::new();
    for entry in sluice::sink::file::read_manifest(dir).unwrap() {
        for f in entry.files {
            let text = std::fs::read_to_string(dir.join(&f.path)).unwrap();
            let segments: Vec<&str> = f.path.split('/').collect();
            let partitions: Vec<(&str, Value)> = segments[..segments.len() - 1]
                .iter()
                .map(|s| {
                    let (name, value) = s.split_once('=').unwrap();
                    (name, partition_value(value))
                })
                .collect();
            objects.extend(text.lines().map(|l| {
                let mut o = serde_json::from_str::<Value>(l).unwrap();
                for (name, value) in &partitions {
                    o[*name] = value.clone();
                }
                o
            }));
        }
    }
    rows_of(objects, columns)
}

/// Rows compared as the case says: the last row per key, or a multiset.
fn comparable(case: &Case, columns: &[String], rows: Vec<Vec<Value>>) -> BTreeMap<String, usize> {
    let at = |name: &str| {
        columns
            .iter()
            .position(|c| c == name)
            .unwrap_or_else(|| panic!("{}: no column {name} in {columns:?}", case.query))
    };
    let kept: Vec<usize> = match case.compared {
        Some(names) => names.iter().map(|n| at(n)).collect(),
        None => (0..columns.len()).collect(),
    };
    let shown = |r: &[Value]| {
        let kept: Vec<&Value> = kept.iter().map(|&i| &r[i]).collect();
        serde_json::to_string(&kept).unwrap()
    };
    let mut out = BTreeMap::new();
    if case.key.is_empty() {
        for r in rows {
            *out.entry(shown(&r)).or_default() += 1;
        }
        return out;
    }
    let key: Vec<usize> = case.key.iter().map(|n| at(n)).collect();
    let mut last: BTreeMap<String, String> = BTreeMap::new();
    for r in rows {
        let k: Vec<&Value> = key.iter().map(|&i| &r[i]).collect();
        last.insert(serde_json::to_string(&k).unwrap(), shown(&r));
    }
    last.into_values().map(|row| (row, 1)).collect()
}

/// Each case's written rows against the reference's.
fn check(cases: &[Case], how: &str, out: &Path, reference: &Reference, small: bool) {
    for case in cases {
        check_case(case, how, out, reference, small);
    }
}

/// One case's written rows (under `out/<query>`) against the reference's.
fn check_case(case: &Case, how: &str, out: &Path, reference: &Reference, small: bool) {
    {
        let (want, columns) = expected(reference, case);
        let got = written(&out.join(case.query), &columns);
        let (want, got) = (
            comparable(case, &columns, want),
            comparable(case, &columns, got),
        );
        assert!(
            want.len() > 1 || !case.key.is_empty() || small,
            "{}: the reference has too few rows to tell anything: {want:?}",
            case.query
        );
        if want != got {
            let missing: Vec<_> = want
                .keys()
                .filter(|k| !got.contains_key(*k))
                .take(5)
                .collect();
            let extra: Vec<_> = got
                .keys()
                .filter(|k| !want.contains_key(*k))
                .take(5)
                .collect();
            panic!(
                "{} {how}: {} rows expected, {} written\n  missing: {missing:#?}\n  unexpected: {extra:#?}",
                case.query,
                want.values().sum::<usize>(),
                got.values().sum::<usize>()
            );
        }
    }
}

/// Generates `events` events into `data`.
fn generate(data: &Path, events: u64) {
    common::sluice()
        .args(["nexmark", "generate", "--events", &events.to_string()])
        .args(["--seed", &SEED.to_string(), "--rate", &RATE.to_string()])
        .args(["--partitions", PARTITIONS, "--data-dir"])
        .arg(data)
        .ok();
}

/// Runs the combined job to the end of the topics at `per_batch` records
/// per partition per batch.
fn run_through(events: u64, per_batch: u64) {
    run_cases(&CASES, events, per_batch, false);
}

/// Runs `cases` as one job over `events` generated events (then, when
/// `closing`, the events an hour later that close every window) to the
/// end of the topics at `per_batch` records per partition per batch, and
/// checks each against the batch query.
fn run_cases(cases: &[Case], events: u64, per_batch: u64, closing: bool) {
    let dir = tempfile::tempdir().unwrap();
    let (data, out) = (dir.path().join("data"), dir.path().join("out"));
    generate(&data, events);
    if closing {
        flush(&data, events);
    }
    let job = dir.path().join("nexmark.sql");
    std::fs::write(&job, combined_script(cases, &out, "")).unwrap();
    common::sluice_run(&job, &data, &dir.path().join("cp"))
        .current_dir(common::repo(""))
        .args(["--interval", "1ms", "--quiet"])
        .args(["--max-records-per-batch", &per_batch.to_string()])
        .ok();
    let closed = if closing {
        " and their closed windows"
    } else {
        ""
    };
    check(
        cases,
        &format!("over {events} events{closed}, {per_batch} records per batch"),
        &out,
        &reference(events),
        events < 1_000,
    );
}

#[test]
fn nexmark_queries_equal_the_batch_query_ten_thousand_records_per_batch() {
    run_through(20_000, 10_000);
}

#[test]
fn nexmark_queries_equal_the_batch_query_seven_records_per_batch() {
    run_through(3_000, 7);
}

#[test]
fn nexmark_queries_equal_the_batch_query_one_record_per_batch() {
    run_through(400, 1);
}

/// Appends to every partition of the three topics one event an hour
/// after the last generated one: every stream's watermark then passes
/// every window of the generated events, which all close. The events
/// match nothing of them (ids -1 and -2), and their own windows stay open.
fn flush(data: &Path, events: u64) {
    let generator = Generator::new(NexmarkConfig {
        seed: SEED,
        rate: RATE,
        ..NexmarkConfig::default()
    });
    let later = sluice::nexmark::json::format_timestamp(generator.timestamp_ms(events) + 3_600_000);
    let store = sluice::log::LogStore::open(data, common::quiet()).unwrap();
    let records = [
        (
            "person",
            format!(
                r#"{{"id":-1,"name":"","email_address":"","credit_card":"","city":"","state":"","date_time":"{later}","extra":""}}"#
            ),
        ),
        (
            "auction",
            format!(
                r#"{{"id":-1,"item_name":"","description":"","initial_bid":0,"reserve":0,"date_time":"{later}","expires":"{later}","seller":-2,"category":-1,"extra":""}}"#
            ),
        ),
        (
            "bid",
            format!(
                r#"{{"auction":-1,"bidder":-1,"price":0,"channel":"","url":"","date_time":"{later}","extra":""}}"#
            ),
        ),
    ];
    for (topic, record) in records {
        let topic = store.topic(topic).unwrap();
        for partition in 0..PARTITIONS.parse::<i32>().unwrap() {
            common::append_values(&topic, partition, [record.as_bytes()], 0);
        }
    }
}

#[test]
fn windowed_nexmark_queries_equal_the_batch_query_over_their_closed_windows() {
    for (events, per_batch) in [(20_000, 10_000), (3_000, 7), (400, 1)] {
        run_cases(&WINDOWED, events, per_batch, true);
    }
}

#[test]
fn nexmark_queries_equal_the_batch_query_after_sigkills() {
    crash_cases(&CASES, false);
}

#[test]
fn windowed_nexmark_queries_equal_the_batch_query_after_sigkills() {
    crash_cases(&WINDOWED, true);
}

/// `cases` over 3,000 events (and with `closing`, the events an hour
/// later that close every window), SIGKILLed in chosen batches and at a
/// random moment, restarted on the checkpoint until caught up: the rows
/// written equal the batch query's.
fn crash_cases(cases: &[Case], closing: bool) {
    let events = 3_000;
    let dir = tempfile::tempdir().unwrap();
    let (data, out) = (dir.path().join("data"), dir.path().join("out"));
    generate(&data, events);
    if closing {
        flush(&data, events);
    }
    // The kill switch: a topic sink, whose failpoint SIGKILLs the process
    // after its write in a chosen batch.
    let job = dir.path().join("nexmark.sql");
    std::fs::write(
        &job,
        combined_script(
            cases,
            &out,
            "CREATE SINK kill_switch WITH (type = 'topic', topic = 'kill_switch');\nINSERT INTO kill_switch SELECT _offset AS o FROM bid;\n",
        ),
    )
    .unwrap();
    let cp = dir.path().join("cp");
    let seed = common::crash_seed();
    let kill_at = [3 + seed % 5, 20 + seed % 40];
    let random_kill_after = Duration::from_millis(300 + seed % 900);
    let command = || {
        let mut cmd = common::sluice_run(&job, &data, &cp);
        cmd.current_dir(common::repo(""))
            .args(["--interval", "1ms", "--quiet"])
            .args(["--max-records-per-batch", "7"]);
        cmd
    };
    crate::common_sql::crash_storm(
        &format!("nexmark, crash seed {seed}"),
        dir.path(),
        &command,
        &kill_at,
        random_kill_after,
        |_| {},
    );
    check(
        cases,
        &format!("after SIGKILLs (crash seed {seed}) and restarts"),
        &out,
        &reference(events),
        false,
    );
}

/// q14 calls `count_char`, which a Rust job registers: it runs in this
/// process, on the library, as `jobs/nexmark_q14.rs` runs it.
#[test]
fn q14_with_its_user_function_equals_the_batch_query() {
    let case = Case {
        query: "q14",
        key: &[],
        compared: None,
    };
    for (events, per_batch) in [(20_000, 10_000), (3_000, 7), (400, 1)] {
        let dir = tempfile::tempdir().unwrap();
        let (data, out) = (dir.path().join("data"), dir.path().join("out"));
        generate(&data, events);
        let text: String = statements(case.query)
            .iter()
            .map(|s| {
                let sink = format!(
                    "type = 'file', format = 'json', path = '{}'",
                    out.join(case.query).display()
                );
                format!("{};\n", s.replace("type = 'blackhole'", &sink))
            })
            .collect();
        let mut script = sluice::sql::Script::parse(&text).unwrap();
        script.register_udf(sluice::nexmark::udf::count_char());
        let store = Arc::new(sluice::log::LogStore::open(&data, common::quiet()).unwrap());
        crate::common_sql::run_sql(
            &store,
            &dir.path().join("cp"),
            "q14",
            &script,
            Some(per_batch),
            None,
        );
        let reference = reference(events);
        reference
            .ctx()
            .register_udf(sluice::nexmark::udf::count_char());
        check_case(
            &case,
            &format!("over {events} events, {per_batch} records per batch"),
            &out,
            &reference,
            events < 1_000,
        );
    }
}

/// q12's windows are of processing time, so which window a bid lands in
/// depends on when its batch ran; what cannot depend on it: in update
/// mode, each bidder's counts over all its windows add up to its bids,
/// and every window is 10 s of processing time, aligned.
#[test]
fn q12_counts_every_bid_once_in_processing_time_windows() {
    let events = 3_000;
    let dir = tempfile::tempdir().unwrap();
    let (data, out) = (dir.path().join("data"), dir.path().join("out"));
    generate(&data, events);
    let text: String = statements("q12")
        .iter()
        .map(|s| {
            if s.starts_with("CREATE SINK") {
                format!(
                    "CREATE SINK nexmark_q12 WITH (type = 'file', format = 'json', path = '{}', mode = 'update');\n",
                    out.display()
                )
            } else {
                format!("{s};\n")
            }
        })
        .collect();
    let job = dir.path().join("q12.sql");
    std::fs::write(&job, text).unwrap();
    common::sluice_run(&job, &data, &dir.path().join("cp"))
        .args(["--interval", "1ms", "--quiet"])
        .args(["--max-records-per-batch", "7"])
        .ok();
    let columns: Vec<String> = ["bidder", "bid_count", "starttime", "endtime"]
        .map(String::from)
        .to_vec();
    let mut per_bidder: BTreeMap<i64, i64> = BTreeMap::new();
    let ms = |v: &Value| {
        let t = humantime::parse_rfc3339_weak(v.as_str().unwrap()).unwrap();
        t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
    };
    // The last row of each (bidder, window).
    let mut last: BTreeMap<(i64, i64), i64> = BTreeMap::new();
    for row in written(&out, &columns) {
        let (start, end) = (ms(&row[2]), ms(&row[3]));
        assert_eq!((end - start, start % 10_000), (10_000, 0), "{row:?}");
        last.insert((row[0].as_i64().unwrap(), start), row[1].as_i64().unwrap());
    }
    assert!(!last.is_empty());
    for ((bidder, _), n) in last {
        *per_bidder.entry(bidder).or_default() += n;
    }
    let reference = reference(events);
    let want: BTreeMap<i64, i64> = reference
        .pairs("SELECT bidder, count(*) FROM bid GROUP BY bidder")
        .into_iter()
        .map(|(k, v)| (k.parse().unwrap(), v.parse().unwrap()))
        .collect();
    assert_eq!(per_bidder, want);
}

#[test]
fn count_char_counts_bytes_as_the_suites_function() {
    let reference = Reference::new();
    reference
        .ctx()
        .register_udf(sluice::nexmark::udf::count_char());
    let got = reference.pairs(
        "SELECT t, CAST(count_char(t, 'c') AS VARCHAR) FROM (VALUES ('accept'), ('xyz'), ('')) AS v(t)",
    );
    let want: BTreeMap<String, String> = [("accept", "2"), ("xyz", "0"), ("", "0")]
        .into_iter()
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .collect();
    assert_eq!(got, want);
    let nulls = reference.rows("SELECT count_char(CAST(NULL AS VARCHAR), 'c') AS n");
    assert_eq!(
        datafusion::arrow::util::pretty::pretty_format_batches(&nulls)
            .unwrap()
            .to_string()
            .matches("| 0 ")
            .count(),
        1
    );
    let e = reference
        .collect(reference.plan("SELECT count_char('abc', '')").unwrap())
        .unwrap_err();
    assert!(e.to_string().contains("the character is empty"), "{e}");
}

#[test]
fn every_job_file_explains_with_its_settings_state_and_outer_aggregation() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    generate(&data, 100);
    for case in &CASES {
        let out = common::sluice()
            .current_dir(common::repo(""))
            .arg("explain")
            .arg(common::repo("jobs/nexmark").join(format!("{}.sql", case.query)))
            .arg("--data-dir")
            .arg(&data)
            .ok();
        assert!(out.contains("query 1"), "{}: {out}", case.query);
        if case.query == "q15" {
            assert!(
                out.contains("distinct values: count(DISTINCT bid.bidder)"),
                "{out}"
            );
        }
        if case.query == "q4" {
            assert!(
                out.contains("SET 'max_records_per_batch' = '20000'")
                    && out.contains("outer aggregation: per outer group (category)"),
                "{out}"
            );
        }
    }
}
