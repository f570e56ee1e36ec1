//! Every example SQL job in `jobs/`, run through `sluice run` as shipped:
//! the result after the stream is consumed is the same with 1, 7 and
//! 10,000 records per partition per batch, and when the job is SIGKILLed
//! mid-stream and restarted (three kills at seeded moments). Each job's
//! own test (the queries, windows and joins modules) checks one batch
//! size against an independent reference; this one holds every size and
//! crashes to that answer.
//!
//! Table sinks are read back with `sluice state scan` and must be equal
//! exactly. Console sinks print as they go, so a batch replayed after a
//! kill prints again: there the rows printed across all runs, as a set,
//! must equal the uninterrupted run's (nothing lost, nothing invented).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use sluice::log::LogStore;

use crate::common::{self, Run};
use crate::common_sql;

/// Records of a topic: (partition, value).
type Rows = Vec<(i32, String)>;

fn root() -> PathBuf {
    common::repo("")
}

fn append(store: &LogStore, topic: &str, partitions: i32, rows: &[(i32, String)]) {
    let t = common::topic(store, topic, partitions.into());
    for (p, row) in rows {
        common::append_values(&t, *p, [row], 1);
    }
}

/// A seeded generator (no extra crates).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (self.0 >> 33) % below
    }
}

/// Clicks of users 0–99 (those of jobs/data/users.csv) on five pages,
/// every 500 ms for five minutes, up to 3 s out of order within a
/// partition; then a click far ahead on every partition, so every window
/// and session of the stream closes.
fn clicks() -> Rows {
    let mut rng = Lcg(5);
    let mut rows: Rows = (0..600u64)
        .map(|i| {
            let ts = i * 500 + rng.next(3_000);
            let user = rng.next(100);
            let url = ["/home", "/cart", "/buy", "/help", "/faq"][rng.next(5) as usize];
            (
                (i % 3) as i32,
                format!(r#"{{"user_id": {user}, "url": "{url}", "ts": {ts}}}"#),
            )
        })
        .collect();
    for p in 0..3 {
        rows.push((
            p,
            r#"{"user_id": 1, "url": "/end", "ts": 100000000}"#.to_string(),
        ));
    }
    rows
}

/// Orders every 100 ms; two in three paid 0–12 s later.
fn orders_and_payments() -> (Rows, Rows) {
    let orders = (0..400i64)
        .map(|id| {
            (
                (id % 2) as i32,
                format!(r#"{{"id": {id}, "ts": {}}}"#, id * 100),
            )
        })
        .collect();
    let mut payments: Vec<(i64, String)> = (0..400i64)
        .filter(|id| id % 3 != 0)
        .map(|id| {
            let ts = id * 100 + (id % 7) * 2_000;
            (
                ts,
                format!(r#"{{"order_id": {id}, "amount": {}, "ts": {ts}}}"#, id * 10),
            )
        })
        .collect();
    payments.sort_by_key(|p| p.0);
    let payments = payments
        .into_iter()
        .enumerate()
        .map(|(i, (_, row))| ((i % 2) as i32, row))
        .collect();
    (orders, payments)
}

/// `sluice run` of `job` (relative to the repository) until caught up,
/// `batch` records per partition per batch every `interval`.
fn run(job: &str, data: &Path, cp: &Path, batch: &str, interval: &str) -> Command {
    let mut c = common::sluice_run(Path::new(job), data, cp);
    c.current_dir(root())
        .args(["--interval", interval, "--max-records-per-batch", batch]);
    c
}

/// Runs the job, SIGKILLing it at three seeded moments, then to the end;
/// the stdout of every run, and how many kills landed mid-run.
fn run_with_kills(run: &mut Command, seed: u64) -> (String, usize) {
    let mut rng = Lcg(seed);
    let mut out = String::new();
    let mut landed = 0;
    for _ in 0..3 {
        let mut child = run
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(100 + rng.next(250)));
        if child.try_wait().unwrap().is_none() {
            landed += 1;
        }
        let _ = child.kill(); // SIGKILL
        let output = child.wait_with_output().unwrap();
        out.push_str(&String::from_utf8_lossy(&output.stdout));
    }
    out.push_str(&run.stdout(Stdio::piped()).stderr(Stdio::piped()).ok());
    (out, landed)
}

/// Data rows of console tables (`| a | b |` → "a,b"), without headers.
fn console_rows(stdout: &str, first_column: &str) -> BTreeSet<String> {
    common_sql::console_cells(stdout)
        .into_iter()
        .map(|cells| cells.join(","))
        .filter(|r| r.split(',').next() != Some(first_column))
        .collect()
}

fn table(cp: &Path, job: &str, table: &str) -> BTreeSet<String> {
    common::state_scan(cp, job, Some(table))
        .into_iter()
        .map(|(k, v)| format!("{k}\t{v}"))
        .collect()
}

/// What an example job leaves: its table or the rows it printed.
enum Output {
    Table(&'static str),
    Console(&'static str),
}

fn check_job(file: &str, topics: &[(&str, i32, Rows)], output: Output) {
    let job = format!("jobs/{file}.sql");
    let result = |dir: &Path, batch: &str, kills: Option<u64>| -> BTreeSet<String> {
        let data = dir.join("data");
        {
            let store = LogStore::open(&data, common::quiet()).unwrap();
            for (topic, partitions, rows) in topics {
                append(&store, topic, *partitions, rows);
            }
        }
        let cp = dir.join("cp");
        // Crash runs pace their batches (10 ms, one record per partition:
        // 2 s or more of batches), so the kills land mid-stream.
        let interval = if kills.is_some() { "10ms" } else { "1ms" };
        let mut run = run(&job, &data, &cp, batch, interval);
        let stdout = match kills {
            None => run.ok(),
            Some(seed) => {
                let (stdout, landed) = run_with_kills(&mut run, seed);
                eprintln!("{file}: {landed} of 3 kills landed mid-run");
                assert!(landed >= 1, "{file}: every kill came after the job ended");
                stdout
            }
        };
        match output {
            Output::Table(name) => table(&cp, file, name),
            Output::Console(first_column) => console_rows(&stdout, first_column),
        }
    };
    let dir = tempfile::tempdir().unwrap();
    let expected = result(dir.path(), "10000", None);
    assert!(expected.len() >= 5, "{file}: {expected:?}");
    for batch in ["1", "7"] {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            result(dir.path(), batch, None),
            expected,
            "{file}, batch size {batch}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(
        result(dir.path(), "1", Some(file.len() as u64)),
        expected,
        "{file}, SIGKILLed and restarted"
    );
}

#[test]
fn clicks_per_url() {
    check_job(
        "clicks_per_url",
        &[("clicks", 3, clicks())],
        Output::Console("window_start"),
    );
}

#[test]
fn user_sessions() {
    check_job(
        "user_sessions",
        &[("clicks", 3, clicks())],
        Output::Console("user_id"),
    );
}

#[test]
fn enrich_clicks() {
    check_job(
        "enrich_clicks",
        &[("clicks", 3, clicks())],
        Output::Table("clicks_by_country"),
    );
}

#[test]
fn user_activity() {
    check_job(
        "user_activity",
        &[("clicks", 3, clicks())],
        Output::Console("user_id"),
    );
}

#[test]
fn top_pages() {
    check_job(
        "top_pages",
        &[("clicks", 3, clicks())],
        Output::Table("top_pages"),
    );
}

#[test]
fn paid_orders() {
    let (orders, payments) = orders_and_payments();
    check_job(
        "paid_orders",
        &[("orders", 2, orders), ("payments", 2, payments)],
        Output::Table("paid"),
    );
}
