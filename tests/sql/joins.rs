//! Joins in SQL jobs: a stream joined with a static table equals the same
//! join run once as a batch query over all the input.

use std::collections::BTreeMap;
use std::path::Path;

use sluice::log::{LogStore, TopicConfig};

use crate::common::{self, Run};
use crate::common_sql::Reference;

#[test]
fn enrich_clicks_job_equals_a_batch_join() {
    let repo = common::repo("");
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
        let rows: Vec<String> = clicks
            .iter()
            .map(|(user, url)| {
                format!(r#"{{"user_id": {user}, "url": "{url}", "ts": "2026-11-21 10:00:00"}}"#)
            })
            .collect();
        common::append_round_robin(&topic, 25, &rows, 1);
    }
    // The same join, once, in DataFusion.
    let expected: BTreeMap<String, i64> = Reference::new()
        .csv("users", repo.join("jobs/data/users.csv").to_str().unwrap())
        .values(
            "clicks",
            "user_id, url",
            clicks.iter().map(|(u, url)| format!("({u}, '{url}')")),
        )
        .pairs("SELECT u.country, count(*) FROM clicks c JOIN users u ON c.user_id = u.user_id GROUP BY u.country")
        .into_iter()
        .map(|(k, n)| (k, n.parse().unwrap()))
        .collect();
    for batch in ["7", "10000"] {
        let cp = dir.path().join(format!("cp-{batch}"));
        common::sluice_run(Path::new("jobs/enrich_clicks.sql"), &data, &cp)
            .current_dir(&repo)
            .args(["--interval", "1ms", "--max-records-per-batch", batch])
            .ok();
        // Values are (clicks, users); compare clicks per country.
        let got: BTreeMap<String, i64> =
            common::state_scan(&cp, "enrich_clicks", Some("clicks_by_country"))
                .into_iter()
                .map(|(k, v)| {
                    let clicks = v.trim_start_matches('(').split(',').next().unwrap();
                    (k, clicks.trim().parse().unwrap())
                })
                .collect();
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
    Reference::new()
        .values(
            "orders",
            "id, ts",
            orders
                .iter()
                .map(|(id, ts)| format!("({id}, to_timestamp_millis({ts}))")),
        )
        .values(
            "payments",
            "order_id, amount, ts",
            payments
                .iter()
                .map(|(id, a, ts)| format!("({id}, {a}, to_timestamp_millis({ts}))")),
        )
        .pairs(query)
}

/// Rows the `paid` job's join keeps buffered: state keys tagged 7 hold a
/// key's rows of one batch, each prefixed by its length (u32, LE).
fn buffered_rows(checkpoint: &Path) -> usize {
    let cp = sluice::checkpoint::Checkpoint::open_read_only(checkpoint, "paid").unwrap();
    let cf = cp.cf("state.insert-paid").unwrap();
    cp.db()
        .iterator_cf(cf, rocksdb::IteratorMode::Start)
        .map(|item| item.unwrap())
        .filter(|(k, _)| k.first() == Some(&7))
        .map(|(_, v)| {
            let (mut rows, mut at) = (0, 0);
            while at + 4 <= v.len() {
                at += 4 + u32::from_le_bytes(v[at..at + 4].try_into().unwrap()) as usize;
                rows += 1;
            }
            assert_eq!(at, v.len(), "a buffered entry ends with its last row");
            rows
        })
        .sum()
}

/// Appends `rows` to `topic` (created with 2 partitions), 5 a batch.
fn append_json(store: &LogStore, topic: &str, rows: &[String]) {
    common::append_round_robin(&common::topic(store, topic, 2), 5, rows, 1);
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
    // The same join, once, in DataFusion.
    let expected = batch_join(&orders, &payments, PAID_QUERY);
    assert!(
        expected.len() > 200 && expected.len() < 400,
        "{}",
        expected.len()
    );
    for batch in ["1", "7", "10000"] {
        let dir = tempfile::tempdir().unwrap();
        load_paid(dir.path(), &order_rows(&orders), &payment_rows(&payments));
        let got = run_paid(
            dir.path(),
            &format!("{ORDERS_PAYMENTS}INSERT INTO paid {PAID_QUERY};"),
            batch,
        );
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
        load_paid(
            dir.path(),
            &order_rows(&[(1, 1)]),
            &payment_rows(&[(1, 1, 1)]),
        );
        let job = dir.path().join("bad.sql");
        std::fs::write(&job, format!("{streams}{query};")).unwrap();
        common::sluice()
            .args([
                "run",
                job.to_str().unwrap(),
                "--data-dir",
                data.to_str().unwrap(),
                "--until-caught-up",
            ])
            .current_dir(dir.path())
            .fails()
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
        "INSERT INTO paid SELECT o.window_end, count(*) FROM SESSION(orders, ts, INTERVAL '10' SECOND) o JOIN payments p ON o.id = p.order_id AND p.ts BETWEEN o.ts AND o.ts + INTERVAL '10' SECOND GROUP BY o.window_start, o.window_end",
        ORDERS_PAYMENTS,
    );
    assert!(e.contains("session windows over a join"), "{e}");
    // Without a bound, nothing says when a window of matches is complete.
    let e = refuse(
        "INSERT INTO paid SELECT o.window_end, count(*) FROM TUMBLE(orders, ts, INTERVAL '10' SECOND) o JOIN payments p ON o.id = p.order_id GROUP BY o.window_start, o.window_end",
        &ORDERS_PAYMENTS.replace("(type = 'table')", "(type = 'table', state_ttl = '1h')"),
    );
    assert!(
        e.contains("state_ttl cannot say when a window is complete"),
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

/// Orders `(id, ts)` as JSON records.
fn order_rows(orders: &[(i64, i64)]) -> Vec<String> {
    orders
        .iter()
        .map(|(id, ts)| format!(r#"{{"id": {id}, "ts": {ts}}}"#))
        .collect()
}

/// Payments `(order_id, amount, ts)` as JSON records.
fn payment_rows(payments: &[(i64, i64, i64)]) -> Vec<String> {
    payments
        .iter()
        .map(|(id, amount, ts)| format!(r#"{{"order_id": {id}, "amount": {amount}, "ts": {ts}}}"#))
        .collect()
}

/// Appends `orders` and `payments` to the store in `dir/data`.
fn load_paid(dir: &Path, orders: &[String], payments: &[String]) {
    let store = LogStore::open(dir.join("data"), common::quiet()).unwrap();
    append_json(&store, "orders", orders);
    append_json(&store, "payments", payments);
}

/// Runs the job `sql` (written to `dir/paid.sql`) over `dir/data` until
/// caught up with `batch` records per partition per batch; the result
/// table `paid` as `id → amount`.
fn run_paid(dir: &Path, sql: &str, batch: &str) -> BTreeMap<String, String> {
    let job = dir.join("paid.sql");
    std::fs::write(&job, sql).unwrap();
    let cp = dir.join("cp");
    common::sluice_run(&job, &dir.join("data"), &cp)
        .current_dir(dir)
        .args(["--interval", "1ms", "--max-records-per-batch", batch])
        .ok();
    common::state_scan(&cp, "paid", Some("paid"))
        .into_iter()
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
        load_paid(dir.path(), &order_rows, &payment_rows);
        let sql = format!(
            "{UNBOUNDED_STREAMS}CREATE SINK paid WITH (type = 'table', state_ttl = '1h');\n{query}"
        );
        assert_eq!(
            run_paid(dir.path(), &sql, batch),
            expected,
            "batch size {batch}"
        );
    }
    // With a TTL of 1 ms, rows are gone by the next batch: payments that
    // arrive in a later run find no order.
    let dir = tempfile::tempdir().unwrap();
    load_paid(dir.path(), &order_rows, &[]);
    let sql = format!(
        "{UNBOUNDED_STREAMS}CREATE SINK paid WITH (type = 'table', state_ttl = '1ms');\n{query}"
    );
    assert!(run_paid(dir.path(), &sql, "7").is_empty());
    load_paid(dir.path(), &[], &payment_rows);
    assert!(run_paid(dir.path(), &sql, "7").is_empty());
    // Only the last batch's rows are still buffered (≤ 7 per partition of
    // each stream).
    let buffered = buffered_rows(&dir.path().join("cp"));
    assert!(buffered <= 14, "{buffered} rows buffered");
}

/// An order `(id, ts)`.
type Order = (i64, i64);
/// A payment `(order_id, amount, ts)`.
type Payment = (i64, i64, i64);

/// 400 orders `(id, ts)` every 100 ms; each order whose id is not a
/// multiple of 5 paid `(order_id, amount, ts)` 0–12 s later (after 10 s:
/// no match), payments in event-time order.
fn orders_paid_later() -> (Vec<Order>, Vec<Payment>) {
    let orders: Vec<(i64, i64)> = (0..400i64).map(|id| (id, id * 100)).collect();
    let mut payments: Vec<(i64, i64, i64)> = orders
        .iter()
        .filter(|(id, _)| id % 5 != 0)
        .map(|(id, ts)| (*id, id % 9, ts + (id % 7) * 2_000))
        .collect();
    payments.sort_by_key(|p| p.2);
    (orders, payments)
}

#[test]
fn an_aggregation_over_an_interval_join_equals_the_batch_query() {
    // Orders every 100 ms, paid 0–12 s later (after 10 s: no match).
    let (orders, payments) = orders_paid_later();
    let query = "SELECT CAST(o.id % 10 AS VARCHAR) AS k, CAST(sum(p.amount) AS VARCHAR) || ',' || CAST(count(*) AS VARCHAR) AS v\n  FROM orders o JOIN payments p\n  ON o.id = p.order_id AND p.ts BETWEEN o.ts AND o.ts + INTERVAL '10' SECOND\n  GROUP BY o.id % 10";
    let expected = batch_join(&orders, &payments, query);
    // Orders with id % 5 == 0 are never paid: keys 0 and 5 have no row.
    assert_eq!(expected.len(), 8);
    for batch in ["1", "7", "10000"] {
        let dir = tempfile::tempdir().unwrap();
        load_paid(dir.path(), &order_rows(&orders), &payment_rows(&payments));
        assert_eq!(
            run_paid(
                dir.path(),
                &format!("{ORDERS_PAYMENTS}INSERT INTO paid {query};"),
                batch
            ),
            expected,
            "batch size {batch}"
        );
    }
}

#[test]
fn a_windowed_aggregation_over_an_interval_join_emits_each_window_once_when_no_match_can_come() {
    // Orders every 100 ms over 40 s, paid 0–12 s later (after 10 s: no
    // match), counted per 5-second window of the order's time.
    let (orders, payments) = orders_paid_later();
    let query = |start: &str, from: &str| {
        format!(
            "SELECT CAST({start} AS VARCHAR) AS k, CAST(sum(p.amount) AS VARCHAR) || ',' || CAST(count(*) AS VARCHAR) AS v\n  FROM {from} JOIN payments p\n  ON o.id = p.order_id AND p.ts BETWEEN o.ts AND o.ts + INTERVAL '10' SECOND\n  GROUP BY {start}"
        )
    };
    let expected = batch_join(
        &orders,
        &payments,
        &query("date_bin(INTERVAL '5' SECOND, o.ts)", "orders o"),
    );
    assert_eq!(expected.len(), 8, "{expected:?}");
    let streaming = query(
        "o.window_start",
        "TUMBLE(orders, ts, INTERVAL '5' SECOND) o",
    )
    .replace(
        "GROUP BY o.window_start",
        "GROUP BY o.window_start, o.window_end",
    );
    // An order and a payment an hour later on each partition, matching
    // nothing: both watermarks pass every window.
    let far = 3_600_000;
    let far_orders = [
        format!(r#"{{"id": -1, "ts": {far}}}"#),
        format!(r#"{{"id": -2, "ts": {far}}}"#),
    ];
    let far_payments = [
        format!(r#"{{"order_id": -3, "amount": 1, "ts": {far}}}"#),
        format!(r#"{{"order_id": -4, "amount": 1, "ts": {far}}}"#),
    ];
    for batch in ["1", "7", "10000"] {
        let dir = tempfile::tempdir().unwrap();
        load_paid(dir.path(), &order_rows(&orders), &payment_rows(&payments));
        let store = LogStore::open(dir.path().join("data"), common::quiet()).unwrap();
        for (topic, rows) in [("orders", &far_orders), ("payments", &far_payments)] {
            let topic = common::topic(&store, topic, 2);
            for (partition, row) in rows.iter().enumerate() {
                common::append_values(&topic, partition as i32, [row], 1);
            }
        }
        drop(store);
        let job = dir.path().join("paid.sql");
        std::fs::write(
            &job,
            format!(
                "{}INSERT INTO out {streaming};",
                ORDERS_PAYMENTS.replace(
                    "CREATE SINK paid WITH (type = 'table');",
                    "CREATE SINK out WITH (type = 'console', mode = 'append');"
                )
            ),
        )
        .unwrap();
        let cp = dir.path().join("cp");
        let stdout = common::sluice_run(&job, &dir.path().join("data"), &cp)
            .current_dir(dir.path())
            .args(["--interval", "1ms", "--max-records-per-batch", batch])
            .ok();
        // Append mode: each window comes out once, complete.
        let rows: Vec<(String, String)> = crate::common_sql::console_cells(&stdout)
            .into_iter()
            .filter(|cells| cells.first().is_some_and(|c| c != "k"))
            .map(|cells| (cells[0].clone(), cells[1].clone()))
            .collect();
        let got: BTreeMap<String, String> = rows.iter().cloned().collect();
        assert_eq!(
            rows.len(),
            got.len(),
            "batch size {batch}: a window emitted twice: {rows:?}"
        );
        assert_eq!(got, expected, "batch size {batch}");
        // The closed windows' groups are gone; the join keeps only rows
        // the far-ahead ones might still meet.
        let cp = sluice::checkpoint::Checkpoint::open_read_only(&cp, "paid").unwrap();
        let cf = cp.cf("state.insert-out").unwrap();
        let groups = cp
            .db()
            .iterator_cf(cf, rocksdb::IteratorMode::Start)
            .map(|item| item.unwrap())
            .filter(|(k, _)| k.first() == Some(&1))
            .count();
        assert_eq!(groups, 0, "batch size {batch}: open windows left in state");
    }
}
