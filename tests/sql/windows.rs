//! Event-time windows in SQL jobs: window results equal a batch query
//! over all input (update mode), append mode emits each window once after
//! the watermark passes it, late records are dropped and counted, and
//! closed windows leave no state behind.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use datafusion::arrow::array::{RecordBatch, StringArray, TimestampMillisecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use sluice::checkpoint::Checkpoint;
use sluice::log::{LogStore, TopicConfig};
use sluice::sql::Script;

use crate::common::{self, Run};
use crate::common_sql::{self, Reference};

/// Clicks as (partition, url, event time ms).
fn append_clicks(store: &LogStore, partitions: i32, clicks: &[(i32, &str, i64)]) {
    let topic = common::topic(store, "clicks", partitions.into());
    for (p, url, ts) in clicks {
        let value = format!(r#"{{"url": "{url}", "ts": {ts}}}"#);
        common::append_values(&topic, *p, [value], 1);
    }
}

const STREAM: &str = "CREATE STREAM clicks (url TEXT, ts TIMESTAMP,\n  WATERMARK FOR ts AS ts - INTERVAL '5' SECOND\n) WITH (topic = 'clicks', format = 'json');\n";

/// Seeded clicks over two minutes of event time, a few seconds out of
/// order within each partition.
fn clicks() -> Vec<(i32, &'static str, i64)> {
    let urls = ["/home", "/cart", "/buy", "/help"];
    let mut state = 42u64;
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as i64
    };
    (0..600)
        .map(|i| {
            let jitter = next() % 3_000;
            let url = urls[(next() % 4) as usize];
            ((i % 3) as i32, url, i * 200 + jitter)
        })
        .collect()
}

/// `url|window_start → count` by a plain DataFusion batch query, windows
/// computed with `date_bin` (independent of Sluice's window function).
fn reference(clicks: &[(i32, &str, i64)], size: &str) -> BTreeMap<String, String> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("url", DataType::Utf8, true),
        Field::new("ts", DataType::Timestamp(TimeUnit::Millisecond, None), true),
    ]));
    let batch = RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from(
                clicks.iter().map(|c| c.1).collect::<Vec<_>>(),
            )),
            Arc::new(TimestampMillisecondArray::from(
                clicks.iter().map(|c| c.2).collect::<Vec<_>>(),
            )),
        ],
    )
    .unwrap();
    Reference::new().batch("clicks", batch).pairs(&format!(
        "SELECT concat(url, '|', CAST(date_bin(INTERVAL '{size}', ts, TIMESTAMP '1970-01-01 00:00:00') AS VARCHAR)) AS k, count(*) AS n FROM clicks GROUP BY 1"
    ))
}

fn table(checkpoint: &Path, name: &str) -> BTreeMap<String, String> {
    common_sql::result_table(checkpoint, "windows", name)
}

/// Keys in the query's state that are window groups (tag byte 1).
fn window_groups_in_state(checkpoint: &Path, operator: &str) -> usize {
    keys_in_state(checkpoint, operator, 1)
}

/// Keys in the query's state with tag byte `tag`.
fn keys_in_state(checkpoint: &Path, operator: &str, tag: u8) -> usize {
    let cp = Checkpoint::open_read_only(checkpoint, "windows").unwrap();
    let cf = cp.cf(&format!("state.{operator}")).unwrap();
    cp.db()
        .iterator_cf(cf, rocksdb::IteratorMode::Start)
        .filter(|item| item.as_ref().is_ok_and(|(k, _)| k.first() == Some(&tag)))
        .count()
}

#[test]
fn tumbling_and_hopping_windows_equal_a_batch_query_across_batch_sizes() {
    let input = clicks();
    for (window, size) in [
        ("TUMBLE(clicks, ts, INTERVAL '10' SECOND)", "10 seconds"),
        // Every row in 3 windows; counting per window_start of a 15 s
        // window sliding by 5 s = three 5 s buckets summed, checked below.
        (
            "HOP(clicks, ts, INTERVAL '5' SECOND, INTERVAL '15' SECOND)",
            "5 seconds",
        ),
    ] {
        let script = format!(
            "{STREAM}CREATE SINK per_window WITH (type = 'table');\n\
             INSERT INTO per_window SELECT concat(url, '|', CAST(window_start AS VARCHAR)) AS k, count(*) AS n\n\
             FROM {window} GROUP BY url, window_start, window_end;"
        );
        let buckets = reference(&input, size);
        let expected: BTreeMap<String, String> = if window.starts_with("HOP") {
            // A 15 s hopping window starting at s covers the 5 s buckets
            // s, s+5 and s+10.
            let mut sums: BTreeMap<String, i64> = BTreeMap::new();
            for (k, n) in &buckets {
                let (url, start) = k.split_once('|').unwrap();
                let start = chrono_ms(start);
                for back in [0, 5_000, 10_000] {
                    *sums
                        .entry(format!("{url}|{}", ms_text(start - back)))
                        .or_default() += n.parse::<i64>().unwrap();
                }
            }
            sums.into_iter().map(|(k, v)| (k, v.to_string())).collect()
        } else {
            buckets
        };
        for batch in [1, 7, 10_000] {
            let dir = tempfile::tempdir().unwrap();
            let store = Arc::new(LogStore::open(dir.path().join("data"), common::quiet()).unwrap());
            append_clicks(&store, 3, &input);
            let cp = dir.path().join("cp");
            common_sql::run_sql(
                &store,
                &cp,
                "windows",
                &Script::parse(&script).unwrap(),
                Some(batch),
                None,
            );
            let got = table(&cp, "per_window");
            // The jitter (< 3 s) stays inside the watermark's delay (5 s)
            // and partitions advance together, so no record is late and
            // every batch size gives the batch query's answer.
            assert_eq!(got, expected, "{window}, batch size {batch}");
        }
    }
}

/// `1970-01-01T00:00:10` → ms.
fn chrono_ms(text: &str) -> i64 {
    let t = text.replace(' ', "T");
    let (date, time) = t.split_once('T').unwrap();
    assert_eq!(date, "1970-01-01", "test windows stay on day one");
    let mut parts = time.split(':');
    let h: i64 = parts.next().unwrap().parse().unwrap();
    let m: i64 = parts.next().unwrap().parse().unwrap();
    let s: f64 = parts.next().unwrap().parse().unwrap();
    ((h * 3600 + m * 60) * 1000) + (s * 1000.0) as i64
}

fn ms_text(ms: i64) -> String {
    let s = ms.div_euclid(1000);
    let text = format!(
        "1970-01-01T{:02}:{:02}:{:02}",
        s / 3600,
        (s / 60) % 60,
        s % 60
    );
    if ms < 0 {
        format!("1969-12-31T23:59:{:02}", 60 + s)
    } else {
        text
    }
}

/// Appends `input` to three partitions of `clicks`, then a click far
/// ahead on each: the watermark passes every window of the input.
fn clicks_then_far_ahead(data: &Path, input: &[(i32, &str, i64)]) {
    let store = LogStore::open(data, common::quiet()).unwrap();
    append_clicks(&store, 3, input);
    append_clicks(&store, 3, &FAR_AHEAD);
}

/// One click per partition far ahead of every other.
const FAR_AHEAD: [(i32, &str, i64); 3] = [
    (0, "/end", 10_000_000),
    (1, "/end", 10_000_000),
    (2, "/end", 10_000_000),
];

/// `sluice run JOB` until caught up (1 ms batches) over `data`, with its
/// checkpoint in `cp`, plus `extra` flags; (stdout, stderr).
fn run_job(job: &Path, data: &Path, cp: &Path, extra: &[&str]) -> (String, String) {
    common::sluice_run(job, data, cp)
        .args(["--interval", "1ms"])
        .args(extra)
        .ok_both()
}

/// A console job (`STREAM` then `sql`) run in phases: clicks appended to
/// one partition, then `sluice run` as job `windows` until caught up, its
/// checkpoint kept from phase to phase.
struct Phased {
    dir: tempfile::TempDir,
}

impl Phased {
    fn new(sql: &str) -> Phased {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("job.sql"), format!("{STREAM}{sql}")).unwrap();
        Phased { dir }
    }

    fn cp(&self) -> PathBuf {
        self.dir.path().join("cp")
    }

    fn append(&self, clicks: &[(i32, &str, i64)]) {
        let store = LogStore::open(self.dir.path().join("data"), common::quiet()).unwrap();
        append_clicks(&store, 1, clicks);
    }

    /// (stdout, stderr)
    fn run(&self) -> (String, String) {
        let dir = self.dir.path();
        run_job(
            &dir.join("job.sql"),
            &dir.join("data"),
            &self.cp(),
            &["--job", "windows"],
        )
    }
}

/// Data rows of the console's tables: `| a | b |` → "a,b".
fn console_rows(stdout: &str) -> Vec<String> {
    let mut rows: Vec<String> = common_sql::console_cells(stdout)
        .into_iter()
        .map(|cells| cells.join(","))
        .filter(|r| !r.starts_with("url,") && !r.starts_with("window_start,"))
        .collect();
    // Partitions of a batch finish in any order.
    rows.sort();
    rows
}

#[test]
fn append_mode_emits_each_window_once_drops_late_records_and_evicts_state() {
    let job = Phased::new(
        "CREATE SINK out WITH (type = 'console', mode = 'append');\n\
             INSERT INTO out SELECT url, window_start, count(*) AS n\n\
             FROM TUMBLE(clicks, ts, INTERVAL '10' SECOND) GROUP BY url, window_start, window_end;",
    );
    let run = || job.run();
    let phase = |clicks: &[(i32, &str, i64)]| job.append(clicks);
    // Phase 1: 0–29 s. The watermark ends at 29 − 5 = 24 s: windows
    // [0, 10) and [10, 20) close.
    phase(&[
        (0, "a", 1_000),
        (0, "b", 2_000),
        (0, "a", 9_999),
        (0, "a", 12_000),
        (0, "a", 25_000),
        (0, "b", 29_000),
    ]);
    let (out1, _) = run();
    let rows1 = console_rows(&out1);
    assert_eq!(
        rows1,
        vec![
            "a,1970-01-01T00:00:00,2",
            "a,1970-01-01T00:00:10,1",
            "b,1970-01-01T00:00:00,1",
        ],
        "{out1}"
    );
    // Phase 2: 5 s and 23 s are behind the watermark (24 s): late,
    // dropped, counted. 26 s joins [20, 30); 41 s moves the watermark to
    // 36 s, closing [20, 30).
    phase(&[
        (0, "a", 5_000),
        (0, "a", 23_000),
        (0, "a", 26_000),
        (0, "c", 41_000),
    ]);
    let (out2, err2) = run();
    assert_eq!(
        console_rows(&out2),
        vec!["a,1970-01-01T00:00:20,2", "b,1970-01-01T00:00:20,1"],
        "{out2}"
    );
    assert!(err2.contains("2 late records"), "{err2}");
    // Phase 3: a click far ahead closes [40, 50); only its own window
    // stays in state.
    phase(&[(0, "z", 1_000_000)]);
    let (out3, _) = run();
    assert_eq!(
        console_rows(&out3),
        vec!["c,1970-01-01T00:00:40,1"],
        "{out3}"
    );
    assert_eq!(window_groups_in_state(&job.cp(), "insert-out"), 1);
    // A restart with nothing new emits nothing again.
    let (out4, _) = run();
    assert!(console_rows(&out4).is_empty(), "{out4}");
}

#[test]
fn count_distinct_per_window_is_exact_and_its_values_leave_with_the_window() {
    let job = Phased::new(
        "CREATE SINK out WITH (type = 'console', mode = 'append');\n\
             INSERT INTO out SELECT window_start, count(DISTINCT url) AS urls,\n\
             count(DISTINCT url) FILTER (WHERE url <> 'a') AS not_a, count(*) AS n\n\
             FROM TUMBLE(clicks, ts, INTERVAL '10' SECOND) GROUP BY window_start, window_end;",
    );
    // The watermark ends at 24 s: [0, 10) and [10, 20) close.
    job.append(&[
        (0, "a", 1_000),
        (0, "b", 2_000),
        (0, "a", 3_000),
        (0, "a", 12_000),
        (0, "b", 29_000),
    ]);
    let (out1, _) = job.run();
    assert_eq!(
        console_rows(&out1),
        vec!["1970-01-01T00:00:00,2,1,3", "1970-01-01T00:00:10,1,0,1"],
        "{out1}"
    );
    // [20, 30) saw b in the first run: a value seen in an earlier batch
    // counts once. 41 s closes it.
    job.append(&[
        (0, "b", 25_000),
        (0, "a", 26_000),
        (0, "c", 27_000),
        (0, "a", 28_000),
        (0, "z", 41_000),
    ]);
    let (out2, _) = job.run();
    assert_eq!(
        console_rows(&out2),
        vec!["1970-01-01T00:00:20,3,2,5"],
        "{out2}"
    );
    // Only the open window [40, 50) keeps its group and its one value.
    assert_eq!(window_groups_in_state(&job.cp(), "insert-out"), 1);
    assert_eq!(
        keys_in_state(&job.cp(), "insert-out", 6),
        1,
        "z, one key for both count(DISTINCT url) aggregates (with and without FILTER)"
    );
}

#[test]
fn window_and_mode_mistakes_are_refused_at_submission() {
    let refuse = |stream: &str, sink: &str, query: &str| -> String {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(LogStore::open(dir.path().join("data"), common::quiet()).unwrap());
        append_clicks(&store, 1, &[(0, "a", 1)]);
        common_sql::refused(
            &store,
            &format!("{stream}CREATE SINK out WITH (type = 'console'{sink});\n{query}"),
        )
    };
    let refused = |stream: &str, sink: &str, query: &str, needles: &[&str]| {
        let e = refuse(stream, sink, query);
        for needle in needles {
            assert!(e.contains(needle), "{e}");
        }
    };
    let no_watermark =
        "CREATE STREAM clicks (url TEXT, ts TIMESTAMP) WITH (topic = 'clicks', format = 'json');\n";
    let tumble = "INSERT INTO out SELECT url, window_end, count(*) FROM TUMBLE(clicks, ts, INTERVAL '10' SECOND) GROUP BY url, window_start, window_end;";
    refused(
        no_watermark,
        ", mode = 'append'",
        tumble,
        &["append mode needs a watermark"],
    );
    refused(
        STREAM,
        ", mode = 'append'",
        "INSERT INTO out SELECT url, count(*) FROM clicks GROUP BY url;",
        &["never finalizes"],
    );
    refused(
        STREAM,
        ", mode = 'complete'",
        "INSERT INTO out SELECT url FROM clicks;",
        &["complete mode needs an aggregation"],
    );
    refused(
        STREAM,
        "",
        "INSERT INTO out SELECT window_end, max(n) FROM (SELECT url, count(*) AS n, window_start, window_end FROM TUMBLE(clicks, ts, INTERVAL '10' SECOND) GROUP BY url, window_start, window_end) GROUP BY window_end;",
        &["complete only in append mode"],
    );
    refused(
        STREAM,
        ", mode = 'sometimes'",
        tumble,
        &["'update', 'append', 'complete'"],
    );
    refused(
        STREAM,
        "",
        "INSERT INTO out SELECT url, count(*) FROM TUMBLE(clicks, url, INTERVAL '10' SECOND) GROUP BY url, window_end;",
        &["windows need a TIMESTAMP column"],
    );
    refused(
        STREAM,
        "",
        "INSERT INTO out SELECT count(*) FROM HOP(clicks, ts, INTERVAL '20' SECOND, INTERVAL '10' SECOND) GROUP BY window_end;",
        &["longer than the size"],
    );
    refused(
        "CREATE STREAM clicks (url TEXT, ts TIMESTAMP, WATERMARK FOR url AS url) WITH (topic = 'clicks', format = 'json');\n",
        "",
        tumble,
        &["must be a TIMESTAMP"],
    );
    refused(
        "CREATE STREAM clicks (url TEXT, ts TIMESTAMP, WATERMARK FOR ts AS ts + 5) WITH (topic = 'clicks', format = 'json');\n",
        "",
        tumble,
        &["expected ts or ts - INTERVAL"],
    );
    refused(
        STREAM,
        "",
        "INSERT INTO out SELECT url, sum(DISTINCT length(url)) FROM clicks GROUP BY url;",
        &["only count(DISTINCT …) is incremental"],
    );
    refused(
        STREAM,
        ", mode = 'append'",
        "INSERT INTO out SELECT url, window_end, count(DISTINCT url) FROM SESSION(clicks, ts, INTERVAL '3' SECOND) GROUP BY url, window_start, window_end;",
        &["over session windows is not incremental"],
    );
    // OVER over a stream: ordered by its event time, bounded frames.
    refused(
        STREAM,
        "",
        "INSERT INTO out SELECT url, count(*) OVER (PARTITION BY url ORDER BY url ROWS BETWEEN 2 PRECEDING AND CURRENT ROW) FROM clicks;",
        &["must be ORDER BY ts", "watermark"],
    );
    refused(
        STREAM,
        "",
        "INSERT INTO out SELECT url, count(*) OVER (PARTITION BY url ORDER BY ts) FROM clicks;",
        &["without a bound before the current row would keep every row forever"],
    );
    refused(
        STREAM,
        "",
        "INSERT INTO out SELECT url, count(*) OVER (PARTITION BY url ORDER BY ts ROWS BETWEEN 2 PRECEDING AND 1 FOLLOWING) FROM clicks;",
        &["reaching following rows"],
    );
    // OVER over a windowed aggregation: whole windows, in append mode.
    let counts = "(SELECT url, count(*) AS n, window_start, window_end FROM TUMBLE(clicks, ts, INTERVAL '10' SECOND) GROUP BY url, window_start, window_end)";
    refused(
        STREAM,
        ", mode = 'update'",
        &format!(
            "INSERT INTO out SELECT url, n, RANK() OVER (PARTITION BY window_start, window_end ORDER BY n DESC) AS r FROM {counts};"
        ),
        &["once the window closes", "mode = 'append'"],
    );
    refused(
        STREAM,
        ", mode = 'append'",
        &format!(
            "INSERT INTO out SELECT url, n, RANK() OVER (PARTITION BY url ORDER BY n DESC) AS r FROM {counts};"
        ),
        &["must be PARTITION BY the window", "windows still open"],
    );
    refused(
        STREAM,
        "",
        "INSERT INTO out SELECT url, n, RANK() OVER (ORDER BY n DESC) AS r FROM (SELECT url, count(*) AS n FROM clicks GROUP BY url);",
        &[
            "ranks rows that change",
            "PARTITION BY window_start, window_end",
        ],
    );
    let session = "INSERT INTO out SELECT url, window_start, window_end, count(*) FROM SESSION(clicks, ts, INTERVAL '3' SECOND) GROUP BY url, window_start, window_end;";
    refused(
        STREAM,
        "",
        session,
        &["session windows grow and merge", "mode = 'append'"],
    );
    refused(
        STREAM,
        ", mode = 'append'",
        "INSERT INTO out SELECT url, count(*) FROM SESSION(clicks, ts, INTERVAL '3' SECOND) GROUP BY url, window_end;",
        &["GROUP BY both window_start and window_end"],
    );
    refused(
        no_watermark,
        ", mode = 'append'",
        session,
        &["append mode needs a watermark"],
    );
}

/// Session clicks: (partition, user, event time ms). Bursts per user with
/// pauses of random length, so some gaps are shorter than the session gap
/// and some longer; up to 2 s out of order within a partition, so a late
/// (but on-time) click can bridge two sessions already stored.
fn session_clicks() -> Vec<(i32, &'static str, i64)> {
    let users = ["u1", "u2", "u3", "u4", "u5", "u6"];
    let mut state = 7u64;
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as i64
    };
    let mut clicks: Vec<(i32, &str, i64)> = (0..480)
        .map(|i| {
            let user = users[(next() % 6) as usize];
            (((i / 7) % 3) as i32, user, i * 300 + next() % 2_000)
        })
        .collect();
    // Far ahead on every partition: the watermark passes every session
    // above, which all close; these stay open.
    for p in 0..3 {
        clicks.push((p, "flush", 10_000_000));
    }
    clicks
}

/// `user|start|end → count,first,last` of sessions with `gap_ms` whose end
/// the final watermark (flush − 5 s) has passed: a click joins a session
/// if it comes before the session's end (last click + gap).
fn session_reference(clicks: &[(i32, &str, i64)], gap_ms: i64) -> BTreeMap<String, String> {
    let mut by_user: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for (_, user, ts) in clicks {
        by_user.entry(user).or_default().push(*ts);
    }
    let watermark = 10_000_000 - 5_000;
    let mut out = BTreeMap::new();
    for (user, mut times) in by_user {
        times.sort();
        let mut sessions: Vec<Vec<i64>> = Vec::new();
        for t in times {
            match sessions.last_mut() {
                Some(s) if t < s.last().unwrap() + gap_ms => s.push(t),
                _ => sessions.push(vec![t]),
            }
        }
        for s in sessions {
            let (first, last) = (s[0], *s.last().unwrap());
            if last + gap_ms <= watermark {
                out.insert(
                    format!("{user}|{first}|{}", last + gap_ms),
                    format!("{},{first},{last}", s.len()),
                );
            }
        }
    }
    out
}

#[test]
fn a_click_between_two_stored_sessions_merges_them_and_the_session_is_emitted_once() {
    let job = Phased::new(
        "CREATE SINK out WITH (type = 'console', mode = 'append');\n\
             INSERT INTO out SELECT url, window_start, window_end, count(*) AS n\n\
             FROM SESSION(clicks, ts, INTERVAL '3' SECOND) GROUP BY url, window_start, window_end;",
    );
    let run = || job.run();
    let phase = |clicks: &[(i32, &str, i64)]| job.append(clicks);
    // Two sessions of u: [1, 4) s and [6, 9) s; the watermark (1 s)
    // closes neither.
    phase(&[(0, "u", 1_000), (0, "u", 6_000)]);
    let (out1, _) = run();
    assert!(console_rows(&out1).is_empty(), "{out1}");
    // 3.5 s falls in the first and reaches the second: one session
    // [1, 9) s. 0.5 s is behind the watermark: late.
    phase(&[(0, "u", 3_500), (0, "u", 500)]);
    let (out2, err2) = run();
    assert!(console_rows(&out2).is_empty(), "{out2}");
    assert!(err2.contains("1 late records"), "{err2}");
    // 20 s moves the watermark to 15 s: the merged session closes.
    phase(&[(0, "v", 20_000)]);
    let (out3, _) = run();
    assert_eq!(
        console_rows(&out3),
        vec!["u,1970-01-01T00:00:01,1970-01-01T00:00:09,3"],
        "{out3}"
    );
    let (out4, _) = run();
    assert!(console_rows(&out4).is_empty(), "{out4}");
}

#[test]
fn user_sessions_job_prints_each_session_once_with_the_references_counts() {
    // Five users clicking every few seconds, with pauses longer than the
    // job's 10-minute gap now and then; each partition in time order.
    let users = ["1", "2", "3", "4", "5"];
    let mut state = 11u64;
    let mut next = || {
        state = state
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (state >> 33) as i64
    };
    let mut t = 0i64;
    let mut clicks: Vec<(i32, &str, i64)> = (0..400)
        .map(|i| {
            t += if next() % 40 == 0 {
                12 * 60_000
            } else {
                1_000 + next() % 4_000
            };
            (i / 5 % 3, users[(next() % 5) as usize], t)
        })
        .collect();
    assert!(t < 9_000_000, "the clicks must end before the flush");
    for p in 0..3 {
        clicks.push((p, "0", 10_000_000));
    }
    let expected: BTreeMap<String, String> = session_reference(&clicks, 600_000)
        .into_iter()
        .map(|(k, v)| (k, v.split(',').next().unwrap().to_string()))
        .collect();
    assert!(expected.len() > 10, "{expected:?}");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    {
        let store = LogStore::open(&data, common::quiet()).unwrap();
        let topic = store
            .create_topic("clicks", 3, TopicConfig::default())
            .unwrap();
        for (p, user, ts) in &clicks {
            let value = format!(
                r#"{{"user_id": {user}, "url": "/p{}", "ts": {ts}}}"#,
                ts % 7
            );
            common::append_values(&topic, *p, [value], 1);
        }
    }
    let (out, _) = run_job(
        &common::repo("jobs/user_sessions.sql"),
        &data,
        &dir.path().join("cp"),
        &["--max-records-per-batch", "25"],
    );
    // Rows: user_id, window_start, window_end, clicks, pages.
    let mut got: BTreeMap<String, String> = BTreeMap::new();
    for row in console_rows(&out) {
        let cols: Vec<&str> = row.split(',').collect();
        if cols[0] == "user_id" {
            continue;
        }
        let key = format!("{}|{}|{}", cols[0], chrono_ms(cols[1]), chrono_ms(cols[2]));
        let pages: i64 = cols[4].parse().unwrap();
        assert!((1..=7).contains(&pages), "{row}");
        assert!(
            got.insert(key.clone(), cols[3].to_string()).is_none(),
            "{key} printed twice:\n{out}"
        );
    }
    assert_eq!(got, expected, "{out}");
}

#[test]
fn session_windows_equal_a_reference_across_batch_sizes_and_a_restart() {
    let input = session_clicks();
    let expected = session_reference(&input, 3_000);
    // The data has both: several sessions per user, and sessions of
    // more than one click.
    assert!(expected.len() > 30, "{}", expected.len());
    assert!(expected.values().any(|v| !v.starts_with("1,")));
    let script = format!(
        "{}CREATE SINK sessions WITH (type = 'table', mode = 'append');\n\
         INSERT INTO sessions SELECT concat(url, '|', CAST(CAST(window_start AS BIGINT) AS VARCHAR), '|', CAST(CAST(window_end AS BIGINT) AS VARCHAR)) AS k,\n\
         concat(CAST(count(*) AS VARCHAR), ',', CAST(CAST(min(ts) AS BIGINT) AS VARCHAR), ',', CAST(CAST(max(ts) AS BIGINT) AS VARCHAR)) AS v\n\
         FROM SESSION(clicks, ts, INTERVAL '3' SECOND) GROUP BY url, window_start, window_end;",
        STREAM
    );
    let script = Script::parse(&script).unwrap();
    // (records per partition per batch, batches before a restart)
    for (batch, stop_after) in [(1, None), (7, None), (10_000, None), (7, Some(9))] {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(LogStore::open(dir.path().join("data"), common::quiet()).unwrap());
        append_clicks(&store, 3, &input);
        let cp = dir.path().join("cp");
        if stop_after.is_some() {
            common_sql::run_sql(&store, &cp, "windows", &script, Some(batch), stop_after);
        }
        common_sql::run_sql(&store, &cp, "windows", &script, Some(batch), None);
        let got = table(&cp, "sessions");
        assert_eq!(
            got, expected,
            "batch size {batch}, restart after {stop_after:?}"
        );
        // Only the flush clicks' sessions (one user, overlapping: one
        // session) remain, with their entry in the index by end.
        let cpr = Checkpoint::open_read_only(&cp, "windows").unwrap();
        let cf = cpr.cf("state.insert-sessions").unwrap();
        let tags: Vec<u8> = cpr
            .db()
            .iterator_cf(cf, rocksdb::IteratorMode::Start)
            .map(|item| item.unwrap().0[0])
            .filter(|tag| *tag != 0)
            .collect();
        assert_eq!(tags, vec![1, 5], "batch size {batch}");
    }
}

#[test]
fn clicks_per_url_job_prints_each_minute_once_with_the_batch_querys_counts() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Ten minutes of clicks with text timestamps, then one far ahead so
    // every minute closes.
    let mut lines = Vec::new();
    let mut expected: BTreeMap<String, i64> = BTreeMap::new();
    let mut users_of: BTreeMap<String, std::collections::BTreeSet<i64>> = BTreeMap::new();
    for i in 0..600i64 {
        let url = ["/home", "/cart", "/buy"][(i % 3) as usize];
        let ms = i * 1_000 + (i * 7919) % 900;
        let text = format!(
            "2026-11-21 10:{:02}:{:02}.{:03}",
            ms / 60_000,
            (ms / 1000) % 60,
            ms % 1000
        );
        lines.push(format!(
            r#"{{"user_id": {}, "url": "{url}", "ts": "{text}"}}"#,
            i % 17
        ));
        let key = format!("2026-11-21T10:{:02}:00,{url}", ms / 60_000);
        *expected.entry(key.clone()).or_default() += 1;
        users_of.entry(key).or_default().insert(i % 17);
    }
    {
        let store = LogStore::open(&data, common::quiet()).unwrap();
        let topic = store
            .create_topic("clicks", 2, TopicConfig::default())
            .unwrap();
        common::append_round_robin(&topic, 50, &lines, 1);
        // The watermark is the slowest partition's: end both far ahead.
        for p in 0..2 {
            let end = r#"{"user_id": 1, "url": "/end", "ts": "2026-11-21 11:00:00"}"#;
            common::append_values(&topic, p, [end], 1);
        }
    }
    let (out, _) = run_job(
        &common::repo("jobs/clicks_per_url.sql"),
        &data,
        &dir.path().join("cp"),
        &["--max-records-per-batch", "40"],
    );
    // Rows: window_start, window_end, url, clicks, users.
    let mut got: BTreeMap<String, i64> = BTreeMap::new();
    for row in console_rows(&out) {
        let cols: Vec<&str> = row.split(',').collect();
        if cols[0] == "window_start" {
            continue;
        }
        let key = format!("{},{}", cols[0], cols[2]);
        assert!(
            got.insert(key.clone(), cols[3].parse().unwrap()).is_none(),
            "{key} printed twice:\n{out}"
        );
        // Exact distinct users, whichever batches brought the clicks.
        let users: usize = cols[4].parse().unwrap();
        assert_eq!(users, users_of[&key].len(), "{row}");
    }
    assert_eq!(got, expected, "{out}");
}

#[test]
fn an_aggregation_over_closed_windows_sees_each_window_whole() {
    // Top URL per 10 s window, as Nexmark q5: count per (url, window) is
    // merged across batches; the outer max runs on closed windows only.
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let input = clicks();
    // Close every window: each partition far ahead.
    clicks_then_far_ahead(&data, &input);
    let job = dir.path().join("top.sql");
    std::fs::write(
        &job,
        format!(
            "{STREAM}CREATE SINK out WITH (type = 'console', mode = 'append');\n\
             INSERT INTO out SELECT window_start, max(n) AS top FROM (\n\
               SELECT url, count(*) AS n, window_start, window_end\n\
               FROM TUMBLE(clicks, ts, INTERVAL '10' SECOND) GROUP BY url, window_start, window_end\n\
             ) GROUP BY window_start, window_end;"
        ),
    )
    .unwrap();
    let (out, _) = run_job(
        &job,
        &data,
        &dir.path().join("cp"),
        &["--max-records-per-batch", "13"],
    );
    let mut per_window: BTreeMap<i64, BTreeMap<&str, i64>> = BTreeMap::new();
    for (_, url, ts) in &input {
        *per_window
            .entry(ts.div_euclid(10_000) * 10_000)
            .or_default()
            .entry(url)
            .or_default() += 1;
    }
    let mut expected: Vec<String> = per_window
        .iter()
        .map(|(start, urls)| format!("{},{}", ms_text(*start), urls.values().max().unwrap()))
        .collect();
    expected.sort();
    let got: Vec<String> = console_rows(&out)
        .into_iter()
        .filter(|r| !r.starts_with("window_start"))
        .collect();
    assert_eq!(got, expected, "{out}");
}

/// OVER aggregates over a stream's rows (Flink's OVER aggregation): each
/// row comes out once, when the watermark passes it, with its frame of
/// the rows before it in event time — across a restart between two
/// halves of the input, in batches of 13 records.
#[test]
fn over_aggregates_over_a_stream_emit_each_row_once_with_its_frame() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let input = clicks();
    let job = dir.path().join("over.sql");
    std::fs::write(
        &job,
        format!(
            "{STREAM}SELECT url, CAST(ts AS BIGINT) AS ms,\n\
               count(*) OVER (PARTITION BY url ORDER BY ts ROWS BETWEEN 2 PRECEDING AND CURRENT ROW) AS last3,\n\
               count(*) OVER (PARTITION BY url ORDER BY ts RANGE BETWEEN INTERVAL '3' SECOND PRECEDING AND CURRENT ROW) AS within3s\n\
             FROM clicks;"
        ),
    )
    .unwrap();
    let cp = dir.path().join("cp");
    let (first, second) = input.split_at(input.len() / 2);
    let mut got = Vec::new();
    for (i, part) in [first, second].into_iter().enumerate() {
        {
            let store = LogStore::open(&data, common::quiet()).unwrap();
            append_clicks(&store, 3, part);
            if i == 1 {
                // Every partition far ahead: the watermark passes every row.
                append_clicks(&store, 3, &FAR_AHEAD);
            }
        }
        let (out, _) = run_job(
            &job,
            &data,
            &cp,
            &["--max-records-per-batch", "13", "--job", "over"],
        );
        got.extend(console_rows(&out));
    }
    got.sort();
    // The watermark evicted what no later frame reaches: each url's last
    // two rows (ROWS 2 PRECEDING) and the three rows it has not passed.
    let checkpoint = Checkpoint::open_read_only(&cp, "over").unwrap();
    let cf = checkpoint.cf("state.query-1").unwrap();
    let count = |tag: u8| {
        checkpoint
            .db()
            .iterator_cf(cf, rocksdb::IteratorMode::Start)
            .filter(|item| item.as_ref().is_ok_and(|(k, _)| k.first() == Some(&tag)))
            .count()
    };
    assert_eq!(
        (count(0x0d), count(0x0f)),
        (4 * 2 + 3, 3),
        "rows kept, rows waiting"
    );
    let mut per_url: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for (_, url, ts) in &input {
        per_url.entry(url).or_default().push(*ts);
    }
    let mut expected = Vec::new();
    for (url, times) in &mut per_url {
        times.sort_unstable();
        for (i, t) in times.iter().enumerate() {
            let within = times
                .iter()
                .filter(|u| **u >= t - 3_000 && **u <= *t)
                .count();
            expected.push(format!("{url},{t},{},{within}", (i + 1).min(3)));
        }
    }
    expected.sort();
    assert_eq!(got.len(), input.len(), "every row once");
    assert_eq!(got, expected);
}

/// RANK() within each closed window of a windowed aggregation (Nexmark
/// q5, Flink's window Top-N): every url tied for a window's most clicks
/// comes out, once, when the window closes.
#[test]
fn a_rank_within_closed_windows_keeps_every_tie() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let input = clicks();
    clicks_then_far_ahead(&data, &input);
    let job = dir.path().join("top.sql");
    std::fs::write(
        &job,
        format!(
            "{STREAM}CREATE SINK out WITH (type = 'console', mode = 'append');\n\
             INSERT INTO out SELECT window_start, url, n FROM (\n\
               SELECT url, n, window_start, RANK() OVER (PARTITION BY window_start, window_end ORDER BY n DESC) AS r FROM (\n\
                 SELECT url, count(*) AS n, window_start, window_end\n\
                 FROM TUMBLE(clicks, ts, INTERVAL '5' SECOND) GROUP BY url, window_start, window_end)\n\
             ) WHERE r = 1;"
        ),
    )
    .unwrap();
    let (out, _) = run_job(
        &job,
        &data,
        &dir.path().join("cp"),
        &["--max-records-per-batch", "13"],
    );
    let mut per_window: BTreeMap<i64, BTreeMap<&str, i64>> = BTreeMap::new();
    for (_, url, ts) in &input {
        *per_window
            .entry(ts.div_euclid(5_000) * 5_000)
            .or_default()
            .entry(url)
            .or_default() += 1;
    }
    let mut expected = Vec::new();
    for (start, urls) in &per_window {
        let top = urls.values().max().unwrap();
        for (url, n) in urls.iter().filter(|(_, n)| *n == top) {
            expected.push(format!("{},{url},{n}", ms_text(*start)));
        }
    }
    expected.sort();
    assert!(
        expected.len() > per_window.len(),
        "no window has a tie: the test shows nothing"
    );
    let mut got: Vec<String> = console_rows(&out)
        .into_iter()
        .filter(|r| !r.starts_with("window_start"))
        .collect();
    got.sort();
    assert_eq!(got, expected, "{out}");
}

#[test]
fn a_window_top_n_emits_each_windows_best_rows_once_when_it_closes() {
    let input = clicks();
    // Per 5-second window, the urls in ascending order.
    let mut per_window: BTreeMap<i64, Vec<&str>> = BTreeMap::new();
    for (_, url, ts) in &input {
        per_window
            .entry(ts.div_euclid(5_000) * 5_000)
            .or_default()
            .push(url);
    }
    for urls in per_window.values_mut() {
        urls.sort();
    }
    let cases = [
        // RANK(): every click tied with the second-best url too, each
        // with the rank of the first of its ties.
        (
            "RANK() OVER (PARTITION BY window_start, window_end ORDER BY url)",
            2,
        ),
        // ROW_NUMBER(): exactly one row, the greatest url.
        (
            "ROW_NUMBER() OVER (PARTITION BY window_end, window_start ORDER BY url DESC)",
            1,
        ),
    ];
    for (function, n) in cases {
        let mut expected = Vec::new();
        for (start, urls) in &per_window {
            if function.starts_with("RANK") {
                for url in urls {
                    let rank = urls.iter().position(|u| u == url).unwrap() + 1;
                    if rank <= n {
                        expected.push(format!("{},{url},{rank}", ms_text(*start)));
                    }
                }
            } else {
                expected.push(format!("{},{},1", ms_text(*start), urls.last().unwrap()));
            }
        }
        expected.sort();
        for batch in ["13", "10000"] {
            let dir = tempfile::tempdir().unwrap();
            let data = dir.path().join("data");
            clicks_then_far_ahead(&data, &input);
            let job = dir.path().join("top.sql");
            std::fs::write(
                &job,
                format!(
                    "{STREAM}CREATE SINK out WITH (type = 'console', mode = 'append');\n\
                     INSERT INTO out SELECT window_start, url, r FROM (\n\
                       SELECT url, window_start, {function} AS r\n\
                       FROM TUMBLE(clicks, ts, INTERVAL '5' SECOND)\n\
                     ) WHERE r <= {n};"
                ),
            )
            .unwrap();
            let cp = dir.path().join("cp");
            let (out, _) = run_job(&job, &data, &cp, &["--max-records-per-batch", batch]);
            let got: Vec<String> = console_rows(&out);
            assert_eq!(got, expected, "{function}, {batch} per batch:\n{out}");
            // Only the far-ahead window's group is left in state.
            let cp = sluice::checkpoint::Checkpoint::open_read_only(&cp, "top").unwrap();
            let cf = cp.cf("state.insert-out").unwrap();
            let tags: Vec<u8> = cp
                .db()
                .iterator_cf(cf, rocksdb::IteratorMode::Start)
                .map(|item| item.unwrap().0[0])
                .filter(|tag| *tag != 0)
                .collect();
            assert_eq!(tags, [9, 18], "{function}, {batch} per batch");
        }
    }
    assert!(
        per_window
            .values()
            .any(|urls| urls.iter().filter(|u| **u == urls[0]).count() > 1),
        "no window has a tie: the test shows nothing"
    );
}

/// Every one of `parts` is in `text`.
fn mentions_all(text: &str, parts: &[&str]) {
    for part in parts {
        assert!(text.contains(part), "missing {part:?} in:\n{text}");
    }
}

#[test]
fn explain_shows_where_each_part_runs_and_what_state_is_kept() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let explain = |job: &str| {
        common::sluice()
            .arg("explain")
            .arg(common::repo(&format!("jobs/{job}")))
            .args(["--data-dir", data.to_str().unwrap()])
            .ok()
    };
    let q5 = explain("nexmark/q5.sql");
    mentions_all(
        &q5,
        &[
            "reads stream bid ← topic bid (json, decoding auction, date_time), watermark date_time − 4000 ms",
            "[per slice: partial aggregate]",
            "[shuffle: partial aggregates meet by group key]",
            "[merge: partial states of all slices + stored state, by group key]",
            "[per batch, over the emitted groups]",
            "state: CF state.insert-nexmark_q5",
            "(auction, window_start, window_end)",
            "emitted once and deleted",
            "append mode",
        ],
    );
    let join = explain("paid_orders.sql");
    assert!(
        join.contains("bounds orders.ts − payments.ts to [-10000 ms, 0 ms]"),
        "{join}"
    );
    let q7 = explain("nexmark/q7.sql");
    mentions_all(
        &q7,
        &[
            "its top 1 rows and every row tied with the last (RANK)",
            "emits nothing until the watermark passes a window's end",
            "records behind a stream's watermark are dropped",
        ],
    );
    let q8 = explain("nexmark/q8.sql");
    assert!(
        q8.contains("windows over the matches: no match to come has person.date_time below min(person's watermark, auction's watermark -10000 ms)"),
        "{q8}"
    );
    let wc = explain("wordcount.sql");
    assert!(wc.contains("eviction: none (not windowed)"), "{wc}");
}

#[test]
fn select_distinct_deduplicates_and_forgets_keys_behind_the_watermark() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cp = dir.path().join("cp");
    let job = dir.path().join("dedup.sql");
    std::fs::write(
        &job,
        format!(
            "{STREAM}CREATE SINK out WITH (type = 'console');\n\
             INSERT INTO out SELECT DISTINCT url, ts FROM clicks;"
        ),
    )
    .unwrap();
    let run = || {
        run_job(
            &job,
            &data,
            &cp,
            &["--job", "windows", "--max-records-per-batch", "2"],
        )
        .0
    };
    let phase = |clicks: &[(i32, &str, i64)]| {
        let store = LogStore::open(&data, common::quiet()).unwrap();
        append_clicks(&store, 1, clicks);
    };
    // Duplicates within a batch, across batches and across a restart.
    phase(&[
        (0, "a", 1_000),
        (0, "a", 1_000),
        (0, "b", 1_000),
        (0, "a", 2_000),
        (0, "a", 1_000),
        (0, "b", 3_000),
    ]);
    let first = console_rows(&run());
    assert_eq!(
        first,
        vec![
            "a,1970-01-01T00:00:01",
            "a,1970-01-01T00:00:02",
            "b,1970-01-01T00:00:01",
            "b,1970-01-01T00:00:03",
        ]
    );
    phase(&[(0, "b", 3_000), (0, "c", 20_000), (0, "b", 3_000)]);
    let second = console_rows(&run());
    // b@3s is a duplicate (and, after c@20s, behind the watermark: late).
    assert_eq!(second, vec!["c,1970-01-01T00:00:20"]);
    // Keys behind the watermark (20 s − 5 s) were forgotten: only c@20s
    // is still kept.
    assert_eq!(window_groups_in_state(&cp, "insert-out"), 1);
}
