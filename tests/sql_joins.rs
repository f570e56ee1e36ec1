//! Joins in SQL jobs: a stream joined with a static table equals the same
//! join run once as a batch query over all the input.

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::DataType;
use datafusion::prelude::{CsvReadOptions, SessionContext};
use sluice::log::{LogStore, TopicConfig};
use sluice::producer::{BatchBuilder, Compression};

fn sluice(dir: &std::path::Path, args: &[&str]) -> String {
    common::sluice_ok(dir, args).0
}

#[test]
fn enrich_clicks_job_equals_a_batch_join() {
    let repo = env!("CARGO_MANIFEST_DIR");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Users 0..120: 100..119 are not in the table (inner join drops them).
    let clicks: Vec<(i64, String)> = (0..2_000i64)
        .map(|i| ((i * 37) % 120, format!("/p{}", i % 9)))
        .collect();
    {
        let store = LogStore::open(&data, common::quiet()).unwrap();
        let topic = store
            .create_topic("clicks", 3, TopicConfig::default())
            .unwrap();
        for (i, chunk) in clicks.chunks(25).enumerate() {
            let mut b = BatchBuilder::new(Compression::None);
            for (user, url) in chunk {
                let v = format!(
                    r#"{{"user_id": {user}, "url": "{url}", "ts": "2026-11-21 10:00:00"}}"#
                );
                b.push(None, v.as_bytes(), 1);
            }
            let mut bytes = b.finish().unwrap();
            topic
                .partition((i % 3) as i32)
                .unwrap()
                .append(&mut bytes)
                .unwrap();
        }
    }
    for batch in ["7", "10000"] {
        let cp = dir.path().join(format!("cp-{batch}"));
        sluice(
            std::path::Path::new(repo),
            &[
                "run",
                "jobs/enrich_clicks.sql",
                "--data-dir",
                data.to_str().unwrap(),
                "--checkpoint-dir",
                cp.to_str().unwrap(),
                "--until-caught-up",
                "--interval",
                "1ms",
                "--max-records-per-batch",
                batch,
            ],
        );
        let table = sluice(
            std::path::Path::new(repo),
            &[
                "state",
                "scan",
                "--job",
                "enrich_clicks",
                "--table",
                "clicks_by_country",
                "--checkpoint-dir",
                cp.to_str().unwrap(),
            ],
        );
        // Values are (clicks, users); compare clicks per country.
        let got: BTreeMap<String, i64> = table
            .lines()
            .map(|l| {
                let (k, v) = l.split_once('\t').unwrap();
                let clicks = v.trim_start_matches('(').split(',').next().unwrap();
                (k.to_string(), clicks.trim().parse().unwrap())
            })
            .collect();
        // The same join, once, in DataFusion.
        let expected: BTreeMap<String, i64> = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(async {
                let ctx = SessionContext::new();
                ctx.register_csv(
                    "users",
                    &format!("{repo}/jobs/data/users.csv"),
                    CsvReadOptions::new(),
                )
                .await
                .unwrap();
                let values: Vec<String> = clicks
                    .iter()
                    .map(|(u, url)| format!("({u}, '{url}')"))
                    .collect();
                let sql = format!(
                    "SELECT u.country, count(*) FROM (VALUES {}) AS c(user_id, url) JOIN users u ON c.user_id = u.user_id GROUP BY u.country",
                    values.join(",")
                );
                let mut out = BTreeMap::new();
                for b in ctx.sql(&sql).await.unwrap().collect().await.unwrap() {
                    let k = datafusion::arrow::compute::cast(b.column(0), &DataType::Utf8).unwrap();
                    let k = k.as_string::<i32>();
                    let n = b
                        .column(1)
                        .as_primitive::<datafusion::arrow::datatypes::Int64Type>();
                    for i in 0..b.num_rows() {
                        out.insert(k.value(i).to_string(), n.value(i));
                    }
                }
                out
            });
        assert_eq!(got.len(), 6);
        assert_eq!(got, expected, "batch size {batch}");
    }
}

const ORDERS_PAYMENTS: &str = "CREATE STREAM orders (id BIGINT, ts TIMESTAMP,\n  WATERMARK FOR ts AS ts - INTERVAL '2' SECOND)\n  WITH (topic = 'orders', format = 'json');\n\
CREATE STREAM payments (order_id BIGINT, amount BIGINT, ts TIMESTAMP,\n  WATERMARK FOR ts AS ts - INTERVAL '2' SECOND)\n  WITH (topic = 'payments', format = 'json');\n\
CREATE SINK paid WITH (type = 'table');\n";

const PAID_QUERY: &str = "SELECT o.id, p.amount FROM orders o JOIN payments p\n  ON o.id = p.order_id AND p.ts BETWEEN o.ts AND o.ts + INTERVAL '10' SECOND";

/// `query` run once by DataFusion over all the orders `(id, ts)` and
/// payments `(order_id, amount, ts)`: first column → second, as text.
fn batch_join(
    orders: &[(i64, i64)],
    payments: &[(i64, i64, i64)],
    query: &str,
) -> BTreeMap<String, String> {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(async {
            let ctx = SessionContext::new();
            let o: Vec<String> = orders
                .iter()
                .map(|(id, ts)| format!("({id}, to_timestamp_millis({ts}))"))
                .collect();
            let p: Vec<String> = payments
                .iter()
                .map(|(id, a, ts)| format!("({id}, {a}, to_timestamp_millis({ts}))"))
                .collect();
            ctx.sql(&format!(
                "CREATE VIEW orders AS SELECT * FROM (VALUES {}) AS t(id, ts)",
                o.join(",")
            ))
            .await
            .unwrap();
            ctx.sql(&format!(
                "CREATE VIEW payments AS SELECT * FROM (VALUES {}) AS t(order_id, amount, ts)",
                p.join(",")
            ))
            .await
            .unwrap();
            let mut out = BTreeMap::new();
            for b in ctx.sql(query).await.unwrap().collect().await.unwrap() {
                let k = datafusion::arrow::compute::cast(b.column(0), &DataType::Utf8).unwrap();
                let v = datafusion::arrow::compute::cast(b.column(1), &DataType::Utf8).unwrap();
                for i in 0..b.num_rows() {
                    out.insert(
                        k.as_string::<i32>().value(i).to_string(),
                        v.as_string::<i32>().value(i).to_string(),
                    );
                }
            }
            out
        })
}

/// Rows the `paid` job's join keeps buffered (state keys tagged 2).
fn buffered_rows(checkpoint: &std::path::Path) -> usize {
    let cp = sluice::checkpoint::Checkpoint::open_read_only(checkpoint, "paid").unwrap();
    let cf = cp.cf("state.insert-paid").unwrap();
    cp.db()
        .iterator_cf(cf, rocksdb::IteratorMode::Start)
        .map(|item| item.unwrap())
        .filter(|(k, _)| k.first() == Some(&2))
        .map(|(_, v)| {
            datafusion::arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(v), None)
                .unwrap()
                .map(|b| b.unwrap().num_rows())
                .sum::<usize>()
        })
        .sum()
}

fn append_json(store: &LogStore, topic: &str, rows: &[String]) {
    let t = match store.topic(topic) {
        Ok(t) => t,
        Err(_) => store
            .create_topic(topic, 2, TopicConfig::default())
            .unwrap(),
    };
    for (i, chunk) in rows.chunks(5).enumerate() {
        let mut b = BatchBuilder::new(Compression::None);
        for r in chunk {
            b.push(None, r.as_bytes(), 1);
        }
        let mut bytes = b.finish().unwrap();
        t.partition((i % 2) as i32)
            .unwrap()
            .append(&mut bytes)
            .unwrap();
    }
}

#[test]
fn interval_join_of_two_streams_equals_a_batch_join_and_evicts_its_state() {
    // Orders every 100 ms; most are paid 0–12 s later (those after 10 s do
    // not match); payments arrive in event-time order.
    let orders: Vec<(i64, i64)> = (0..600i64).map(|id| (id, id * 100)).collect();
    let mut payments: Vec<(i64, i64, i64)> = orders
        .iter()
        .filter(|(id, _)| id % 3 != 0)
        .map(|(id, ts)| (*id, id * 10, ts + (id % 7) * 2_000))
        .collect();
    payments.sort_by_key(|p| p.2);
    let order_rows: Vec<String> = orders
        .iter()
        .map(|(id, ts)| format!(r#"{{"id": {id}, "ts": {ts}}}"#))
        .collect();
    let payment_rows: Vec<String> = payments
        .iter()
        .map(|(id, amount, ts)| format!(r#"{{"order_id": {id}, "amount": {amount}, "ts": {ts}}}"#))
        .collect();
    // The same join, once, in DataFusion.
    let expected = batch_join(&orders, &payments, PAID_QUERY);
    assert!(
        expected.len() > 200 && expected.len() < 400,
        "{}",
        expected.len()
    );
    for batch in ["1", "7", "10000"] {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        {
            let store = LogStore::open(&data, common::quiet()).unwrap();
            append_json(&store, "orders", &order_rows);
            append_json(&store, "payments", &payment_rows);
        }
        let job = dir.path().join("paid.sql");
        std::fs::write(
            &job,
            format!("{ORDERS_PAYMENTS}INSERT INTO paid {PAID_QUERY};"),
        )
        .unwrap();
        let got = run_paid(dir.path(), &job, batch);
        let cp = dir.path().join("cp");
        assert_eq!(got, expected, "batch size {batch}");
        // Buffered rows are evicted as the watermarks pass them: of the
        // 1,000 rows, only the last ~12 s of orders (the bound plus the
        // delay) and ~2 s of payments remain. (A single batch of
        // everything evicts in the batch after.)
        let buffered = buffered_rows(&cp);
        if batch != "10000" {
            assert!(
                (100..=250).contains(&buffered),
                "batch size {batch}: {buffered} rows buffered"
            );
        }
    }
}

#[test]
fn stream_joins_that_cannot_be_bounded_are_refused() {
    let refuse = |query: &str, streams: &str| -> String {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        {
            let store = LogStore::open(&data, common::quiet()).unwrap();
            append_json(&store, "orders", &[r#"{"id": 1, "ts": 1}"#.to_string()]);
            append_json(
                &store,
                "payments",
                &[r#"{"order_id": 1, "amount": 1, "ts": 1}"#.to_string()],
            );
        }
        let job = dir.path().join("bad.sql");
        std::fs::write(&job, format!("{streams}{query};")).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args([
                "run",
                job.to_str().unwrap(),
                "--data-dir",
                data.to_str().unwrap(),
                "--until-caught-up",
            ])
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(!out.status.success());
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    let e = refuse(
        "INSERT INTO paid SELECT o.id, p.amount FROM orders o JOIN payments p ON o.id = p.order_id",
        ORDERS_PAYMENTS,
    );
    assert!(e.contains("needs a time bound on both sides"), "{e}");
    let e = refuse(
        "INSERT INTO paid SELECT o.id, p.amount FROM orders o JOIN payments p ON o.id = p.order_id AND p.ts >= o.ts",
        ORDERS_PAYMENTS,
    );
    assert!(e.contains("needs a time bound on both sides"), "{e}");
    let e = refuse(
        "INSERT INTO paid SELECT o.window_end, count(*) FROM TUMBLE(orders, ts, INTERVAL '10' SECOND) o JOIN payments p ON o.id = p.order_id AND p.ts BETWEEN o.ts AND o.ts + INTERVAL '10' SECOND GROUP BY o.window_start, o.window_end",
        ORDERS_PAYMENTS,
    );
    assert!(
        e.contains("windowed aggregation over a join of two streams"),
        "{e}"
    );
    let e = refuse(
        "INSERT INTO paid SELECT o.id, p.amount FROM orders o LEFT JOIN payments p ON o.id = p.order_id AND p.ts BETWEEN o.ts AND o.ts + INTERVAL '10' SECOND",
        ORDERS_PAYMENTS,
    );
    assert!(e.contains("use an inner JOIN"), "{e}");
    let no_watermark = ORDERS_PAYMENTS.replace(
        ",\n  WATERMARK FOR ts AS ts - INTERVAL '2' SECOND)\n  WITH (topic = 'payments'",
        ")\n  WITH (topic = 'payments'",
    );
    let e = refuse(&format!("INSERT INTO paid {PAID_QUERY}"), &no_watermark);
    assert!(
        e.contains("declare WATERMARK FOR … in CREATE STREAM payments"),
        "{e}"
    );
    assert!(e.contains("or set state_ttl = '1h' on the sink"), "{e}");
    let with_ttl = ORDERS_PAYMENTS.replace(
        "CREATE SINK paid WITH (type = 'table');",
        "CREATE SINK paid WITH (type = 'table', state_ttl = '1h');",
    );
    let e = refuse(&format!("INSERT INTO paid {PAID_QUERY}"), &with_ttl);
    assert!(e.contains("already bounded by its ON clause"), "{e}");
    let e = refuse(
        "INSERT INTO paid SELECT o.id, p.amount FROM orders o LEFT JOIN payments p ON o.id = p.order_id",
        &with_ttl,
    );
    assert!(e.contains("use an inner JOIN"), "{e}");
}

const UNBOUNDED_STREAMS: &str = "CREATE STREAM orders (id BIGINT) WITH (topic = 'orders', format = 'json');\n\
CREATE STREAM payments (order_id BIGINT, amount BIGINT) WITH (topic = 'payments', format = 'json');\n";

/// Runs `job` until caught up with `batch` records per partition per
/// batch; the result table `paid` as `id → amount`.
fn run_paid(dir: &std::path::Path, job: &std::path::Path, batch: &str) -> BTreeMap<String, String> {
    let data = dir.join("data");
    let cp = dir.join("cp");
    sluice(
        dir,
        &[
            "run",
            job.to_str().unwrap(),
            "--data-dir",
            data.to_str().unwrap(),
            "--checkpoint-dir",
            cp.to_str().unwrap(),
            "--until-caught-up",
            "--interval",
            "1ms",
            "--max-records-per-batch",
            batch,
        ],
    );
    let table = sluice(
        dir,
        &[
            "state",
            "scan",
            "--job",
            "paid",
            "--table",
            "paid",
            "--checkpoint-dir",
            cp.to_str().unwrap(),
        ],
    );
    table
        .lines()
        .map(|l| {
            let (k, v) = l.split_once('\t').unwrap();
            (k.to_string(), v.to_string())
        })
        .collect()
}

#[test]
fn a_join_without_time_bound_runs_with_a_state_ttl_and_forgets_rows_after_it() {
    // Every order paid once, payments arriving in any order relative to
    // the orders (no event time at all): what Flink's regular join with a
    // state TTL covers.
    let order_rows: Vec<String> = (0..300).map(|id| format!(r#"{{"id": {id}}}"#)).collect();
    let payment_rows: Vec<String> = (0..300)
        .rev()
        .filter(|id| id % 4 != 0)
        .map(|id| format!(r#"{{"order_id": {id}, "amount": {}}}"#, id * 3))
        .collect();
    let expected: BTreeMap<String, String> = (0..300)
        .filter(|id| id % 4 != 0)
        .map(|id| (id.to_string(), (id * 3).to_string()))
        .collect();
    let query = "INSERT INTO paid SELECT o.id, p.amount FROM orders o JOIN payments p ON o.id = p.order_id;";
    for batch in ["1", "7", "10000"] {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = LogStore::open(dir.path().join("data"), common::quiet()).unwrap();
            append_json(&store, "orders", &order_rows);
            append_json(&store, "payments", &payment_rows);
        }
        let job = dir.path().join("paid.sql");
        std::fs::write(
            &job,
            format!("{UNBOUNDED_STREAMS}CREATE SINK paid WITH (type = 'table', state_ttl = '1h');\n{query}"),
        )
        .unwrap();
        assert_eq!(
            run_paid(dir.path(), &job, batch),
            expected,
            "batch size {batch}"
        );
    }
    // With a TTL of 1 ms, rows are gone by the next batch: payments that
    // arrive in a later run find no order.
    let dir = tempfile::tempdir().unwrap();
    {
        let store = LogStore::open(dir.path().join("data"), common::quiet()).unwrap();
        append_json(&store, "orders", &order_rows);
        append_json(&store, "payments", &[]);
    }
    let job = dir.path().join("paid.sql");
    std::fs::write(
        &job,
        format!(
            "{UNBOUNDED_STREAMS}CREATE SINK paid WITH (type = 'table', state_ttl = '1ms');\n{query}"
        ),
    )
    .unwrap();
    assert!(run_paid(dir.path(), &job, "7").is_empty());
    {
        let store = LogStore::open(dir.path().join("data"), common::quiet()).unwrap();
        append_json(&store, "payments", &payment_rows);
    }
    assert!(run_paid(dir.path(), &job, "7").is_empty());
    // Only the last batch's rows are still buffered (≤ 7 per partition of
    // each stream).
    let buffered = buffered_rows(&dir.path().join("cp"));
    assert!(buffered <= 14, "{buffered} rows buffered");
}

#[test]
fn an_aggregation_over_an_interval_join_equals_the_batch_query() {
    // Orders every 100 ms, paid 0–12 s later (after 10 s: no match).
    let orders: Vec<(i64, i64)> = (0..400i64).map(|id| (id, id * 100)).collect();
    let mut payments: Vec<(i64, i64, i64)> = orders
        .iter()
        .filter(|(id, _)| id % 5 != 0)
        .map(|(id, ts)| (*id, id % 9, ts + (id % 7) * 2_000))
        .collect();
    payments.sort_by_key(|p| p.2);
    let query = "SELECT CAST(o.id % 10 AS VARCHAR) AS k, CAST(sum(p.amount) AS VARCHAR) || ',' || CAST(count(*) AS VARCHAR) AS v\n  FROM orders o JOIN payments p\n  ON o.id = p.order_id AND p.ts BETWEEN o.ts AND o.ts + INTERVAL '10' SECOND\n  GROUP BY o.id % 10";
    let expected = batch_join(&orders, &payments, query);
    // Orders with id % 5 == 0 are never paid: keys 0 and 5 have no row.
    assert_eq!(expected.len(), 8);
    for batch in ["1", "7", "10000"] {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = LogStore::open(dir.path().join("data"), common::quiet()).unwrap();
            append_json(
                &store,
                "orders",
                &orders
                    .iter()
                    .map(|(id, ts)| format!(r#"{{"id": {id}, "ts": {ts}}}"#))
                    .collect::<Vec<_>>(),
            );
            append_json(
                &store,
                "payments",
                &payments
                    .iter()
                    .map(|(id, a, ts)| {
                        format!(r#"{{"order_id": {id}, "amount": {a}, "ts": {ts}}}"#)
                    })
                    .collect::<Vec<_>>(),
            );
        }
        let job = dir.path().join("paid.sql");
        std::fs::write(&job, format!("{ORDERS_PAYMENTS}INSERT INTO paid {query};")).unwrap();
        assert_eq!(
            run_paid(dir.path(), &job, batch),
            expected,
            "batch size {batch}"
        );
    }
}
