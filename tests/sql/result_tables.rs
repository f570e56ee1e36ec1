//! Result tables as join sides: `CREATE TABLE … WITH (type = 'result')`.
//! A stream joined with a table a `table` sink writes sees, in each
//! batch, the table as of the last committed batch — of its own job, or of
//! another job that is running at the same time. The expected rows are
//! computed here from the input and the batches the driver plans (a fixed
//! number of records per partition per batch), not by the engine.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use sluice::checkpoint::Checkpoint;
use sluice::driver::{JobConfig, StreamingContext};
use sluice::log::LogStore;
use sluice::sql::{Script, Topics};

use crate::common;
use crate::common_sql;

const PARTITIONS: usize = 2;

/// A payment `(user, amount)` or a click `(id, user)`, per partition in
/// offset order.
type Rows = Vec<Vec<(i64, i64)>>;

/// Appends `rows` (one JSON object per record, fields `a` and `b` named by
/// `fields`) to `topic`, creating it with [`PARTITIONS`] partitions.
fn append(store: &LogStore, topic: &str, fields: [&str; 2], rows: &Rows) {
    let t = common::topic(store, topic, PARTITIONS as _);
    for (p, rows) in rows.iter().enumerate() {
        if rows.is_empty() {
            continue;
        }
        let json = rows
            .iter()
            .map(|(a, v)| format!(r#"{{"{}": {a}, "{}": {v}}}"#, fields[0], fields[1]));
        common::append_values(&t, p as i32, json, 1);
    }
}

/// `n` rows spread over the partitions, `row(i)` for the i-th.
fn rows(n: i64, row: impl Fn(i64) -> (i64, i64)) -> Rows {
    let mut out = vec![Vec::new(); PARTITIONS];
    for i in 0..n {
        out[i as usize % PARTITIONS].push(row(i));
    }
    out
}

fn concat(a: &Rows, b: &Rows) -> Rows {
    a.iter()
        .zip(b)
        .map(|(a, b)| a.iter().chain(b).copied().collect())
        .collect()
}

/// The ranges `[from, until)` the driver plans, batch by batch, for
/// topics whose partitions hold `ends` records and were read up to
/// `from`, at `n` records per partition per batch (a job run until
/// caught up): `[batch][topic][partition]`.
fn planned(from: &[Vec<usize>], ends: &[Vec<usize>], n: usize) -> Vec<Vec<Vec<(usize, usize)>>> {
    let mut at: Vec<Vec<usize>> = from.to_vec();
    let mut batches = Vec::new();
    while at
        .iter()
        .zip(ends)
        .any(|(a, e)| a.iter().zip(e).any(|(a, e)| a < e))
    {
        let mut batch = Vec::new();
        for (a, e) in at.iter_mut().zip(ends) {
            batch.push(
                a.iter_mut()
                    .zip(e)
                    .map(|(a, e)| {
                        let range = (*a, (*a + n).min(*e));
                        *a = range.1;
                        range
                    })
                    .collect(),
            );
        }
        batches.push(batch);
    }
    batches
}

fn lens(rows: &Rows) -> Vec<usize> {
    rows.iter().map(Vec::len).collect()
}

/// Every entry of result table `table` of the job in `checkpoint`, as
/// (key, value) text the way `sluice state scan` prints them.
fn table(checkpoint: &Path, job: &str, table: &str) -> BTreeMap<String, String> {
    common_sql::result_table(checkpoint, job, table)
}

const SAME_JOB: &str = "
CREATE STREAM payments (user_id BIGINT, amount BIGINT) WITH (topic = 'payments', format = 'json');
CREATE STREAM clicks (id BIGINT, user_id BIGINT) WITH (topic = 'clicks', format = 'json');
CREATE SINK per_user WITH (type = 'table');
CREATE SINK enriched WITH (type = 'table');
CREATE TABLE totals WITH (type = 'result', table = 'per_user');
-- Reads the table the query below writes: as of the last committed batch.
INSERT INTO enriched
SELECT c.id, c.user_id, t.total FROM clicks c JOIN totals t ON c.user_id = t.user_id;
INSERT INTO per_user
SELECT user_id, sum(amount) AS total FROM payments GROUP BY user_id;
";

/// Adds to `expected` the joined rows (click id → `(user, total)`) of a
/// run of [`SAME_JOB`] that starts at offsets `from` (payments, clicks)
/// with `n` records per partition per batch: each batch's clicks see the
/// totals of the payments of the batches before it. Returns the totals
/// after the run.
fn expect_joined(
    expected: &mut BTreeMap<String, String>,
    payments: &Rows,
    clicks: &Rows,
    from: [Vec<usize>; 2],
    n: usize,
) -> BTreeMap<i64, i64> {
    let batches = planned(&from, &[lens(payments), lens(clicks)], n);
    assert!(batches.len() > 5, "{} batches", batches.len());
    let mut seen: BTreeMap<i64, i64> = BTreeMap::new();
    for (p, rows) in payments.iter().enumerate() {
        for (user, amount) in &rows[..from[0][p]] {
            *seen.entry(*user).or_default() += amount;
        }
    }
    for batch in batches {
        for (p, &(from, until)) in batch[1].iter().enumerate() {
            for (id, user) in &clicks[p][from..until] {
                if let Some(total) = seen.get(user) {
                    expected.insert(id.to_string(), format!("({user}, {total})"));
                }
            }
        }
        for (p, &(from, until)) in batch[0].iter().enumerate() {
            for (user, amount) in &payments[p][from..until] {
                *seen.entry(*user).or_default() += amount;
            }
        }
    }
    seen
}

#[test]
fn a_query_joins_the_table_another_query_of_its_job_writes_as_of_the_last_commit() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(LogStore::open(dir.path().join("data"), common::quiet()).unwrap());
    let cp = dir.path().join("cp");
    let script = Script::parse(SAME_JOB).unwrap();
    const N: usize = 7;
    // Users 20..24 click but never pay: an inner join drops their clicks.
    let pay = |i: i64| ((i * 7) % 20, (i * 13) % 50 + 1);
    let click = |i: i64| (i, (i * 3) % 25);
    let payments1 = rows(300, pay);
    let clicks1 = rows(200, click);
    let payments2 = rows(100, |i| pay(i + 300));
    let clicks2 = rows(80, |i| click(i + 200));
    append(&store, "payments", ["user_id", "amount"], &payments1);
    append(&store, "clicks", ["id", "user_id"], &clicks1);
    let mut expected: BTreeMap<String, String> = BTreeMap::new();
    let started = Instant::now();
    common_sql::run_sql(&store, &cp, "spend", &script, Some(N as u64), None);
    let totals = expect_joined(
        &mut expected,
        &payments1,
        &clicks1,
        [vec![0; PARTITIONS], vec![0; PARTITIONS]],
        N,
    );
    assert_eq!(table(&cp, "spend", "enriched"), expected, "first run");
    // A restart continues from the committed table.
    append(&store, "payments", ["user_id", "amount"], &payments2);
    append(&store, "clicks", ["id", "user_id"], &clicks2);
    common_sql::run_sql(&store, &cp, "spend", &script, Some(N as u64), None);
    let totals2 = expect_joined(
        &mut expected,
        &concat(&payments1, &payments2),
        &concat(&clicks1, &clicks2),
        [lens(&payments1), lens(&clicks1)],
        N,
    );
    eprintln!("two runs: {:?}", started.elapsed());
    assert_eq!(table(&cp, "spend", "enriched"), expected, "after a restart");
    assert!(totals2.len() == 20 && totals2 != totals);
    let per_user: BTreeMap<String, String> = totals2
        .iter()
        .map(|(u, t)| (u.to_string(), t.to_string()))
        .collect();
    assert_eq!(table(&cp, "spend", "per_user"), per_user);
    // Clicks of users 20..24 and those before any payment of their user
    // are dropped; most clicks match.
    assert!(
        expected.len() > 180 && expected.len() < 280,
        "{}",
        expected.len()
    );
}

const WRITER: &str = "
CREATE STREAM payments (user_id BIGINT, amount BIGINT) WITH (topic = 'payments', format = 'json');
CREATE SINK per_user WITH (type = 'table');
INSERT INTO per_user SELECT user_id, sum(amount) AS total FROM payments GROUP BY user_id;
";

/// The reading job's script: another job's table, with declared columns
/// (the total read as DOUBLE).
fn reader_script(writer_checkpoint: &Path) -> Script {
    Script::parse(&format!(
        "
CREATE STREAM clicks (id BIGINT, user_id BIGINT) WITH (topic = 'clicks', format = 'json');
CREATE TABLE totals (user_id BIGINT, total DOUBLE)
  WITH (type = 'result', table = 'per_user', job = 'spend', checkpoint_dir = '{}');
CREATE SINK enriched WITH (type = 'table');
INSERT INTO enriched SELECT c.id, t.total FROM clicks c JOIN totals t ON c.user_id = t.user_id;
-- An aggregation over the join: its state merges across batches.
CREATE SINK per_total WITH (type = 'table');
INSERT INTO per_total
SELECT t.user_id, count(*) AS clicks, max(t.total) AS total
FROM clicks c JOIN totals t ON c.user_id = t.user_id GROUP BY t.user_id;
",
        writer_checkpoint.display()
    ))
    .unwrap()
}

/// Waits until the job in `checkpoint` has committed every record of
/// `topic` (`ends` per partition).
fn wait_for_commit(checkpoint: &Path, job: &str, topic: &str, ends: &[usize]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done = Checkpoint::open_read_only(checkpoint, job)
            .ok()
            .and_then(|cp| cp.committed().ok().flatten())
            .is_some_and(|c| {
                ends.iter().enumerate().all(|(p, e)| {
                    c.offsets.get(topic).and_then(|o| o.get(&(p as i32))) == Some(&(*e as i64))
                })
            });
        if done {
            return;
        }
        assert!(Instant::now() < deadline, "job {job} did not catch up");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What the reading job writes: each joined click's total, and per user
/// the joined clicks and the largest total they saw.
#[derive(Debug, Default, PartialEq)]
struct Joined {
    enriched: BTreeMap<String, f64>,
    per_total: BTreeMap<String, (i64, f64)>,
}

impl Joined {
    /// Adds the rows of a run over `clicks` while the totals are those of
    /// `payments` (clicks of users without payments are dropped).
    fn add(&mut self, payments: &Rows, clicks: &Rows) {
        let mut totals: BTreeMap<i64, i64> = BTreeMap::new();
        for (user, amount) in payments.iter().flatten() {
            *totals.entry(*user).or_default() += amount;
        }
        for (id, user) in clicks.iter().flatten() {
            if let Some(&t) = totals.get(user) {
                self.enriched.insert(id.to_string(), t as f64);
                let (n, max) = self.per_total.entry(user.to_string()).or_default();
                *n += 1;
                *max = max.max(t as f64);
            }
        }
    }

    /// What the job in `checkpoint` wrote.
    fn read(checkpoint: &Path) -> Joined {
        Joined {
            enriched: table(checkpoint, "enrich", "enriched")
                .into_iter()
                .map(|(k, v)| (k, v.parse().unwrap()))
                .collect(),
            per_total: table(checkpoint, "enrich", "per_total")
                .into_iter()
                .map(|(k, v)| {
                    let (n, max) = v
                        .trim_start_matches('(')
                        .trim_end_matches(')')
                        .split_once(", ")
                        .unwrap();
                    (k, (n.parse().unwrap(), max.parse().unwrap()))
                })
                .collect(),
        }
    }
}

#[test]
fn a_job_joins_the_table_of_another_job_while_that_job_runs() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(LogStore::open(dir.path().join("data"), common::quiet()).unwrap());
    let writer_cp = dir.path().join("spend");
    let reader_cp = dir.path().join("enrich");
    let pay = |i: i64| ((i * 7) % 20, (i * 13) % 50 + 1);
    let click = |i: i64| (i, (i * 3) % 25);
    let payments1 = rows(300, pay);
    let payments2 = rows(120, |i| pay(i + 300));
    let clicks1 = rows(200, click);
    let clicks2 = rows(90, |i| click(i + 200));
    append(&store, "payments", ["user_id", "amount"], &payments1);
    append(
        &store,
        "clicks",
        ["id", "user_id"],
        &vec![Vec::new(); PARTITIONS],
    );
    // Both jobs run all along: the writer holds its checkpoint's lock, and
    // the reader's batches catch up with the writer's commits.
    let writer = Running::start(&store, &writer_cp, "spend", Script::parse(WRITER).unwrap());
    wait_for_commit(&writer_cp, "spend", "payments", &lens(&payments1));
    let reader = Running::start(&store, &reader_cp, "enrich", reader_script(&writer_cp));
    let started = Instant::now();
    append(&store, "clicks", ["id", "user_id"], &clicks1);
    wait_for_commit(&reader_cp, "enrich", "clicks", &lens(&clicks1));
    let mut expected = Joined::default();
    expected.add(&payments1, &clicks1);
    assert_eq!(Joined::read(&reader_cp), expected, "first totals");
    append(&store, "payments", ["user_id", "amount"], &payments2);
    let all_payments = concat(&payments1, &payments2);
    wait_for_commit(&writer_cp, "spend", "payments", &lens(&all_payments));
    append(&store, "clicks", ["id", "user_id"], &clicks2);
    wait_for_commit(
        &reader_cp,
        "enrich",
        "clicks",
        &lens(&concat(&clicks1, &clicks2)),
    );
    expected.add(&all_payments, &clicks2);
    assert_eq!(
        Joined::read(&reader_cp),
        expected,
        "totals after the writer's new commits"
    );
    eprintln!("reader batches: {:?}", started.elapsed());
    reader.stop();
    writer.stop();
}

/// A job running on its own thread until stopped.
struct Running {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Running {
    fn start(store: &Arc<LogStore>, checkpoint: &Path, job: &str, script: Script) -> Running {
        let stop = Arc::new(AtomicBool::new(false));
        let mut config = JobConfig::new(job, Duration::from_millis(20));
        config.checkpoint_dir = Some(checkpoint.to_path_buf());
        config.max_records_per_batch = Some(50);
        config.progress.lines = false;
        config.stop = Some(stop.clone());
        let store = store.clone();
        let thread = std::thread::spawn(move || {
            let ctx = StreamingContext::new(config);
            sluice::sql::build(&ctx, &script, &Topics::Embedded(store)).unwrap();
            ctx.run().unwrap();
        });
        Running { stop, thread }
    }

    fn stop(self) {
        assert!(!self.thread.is_finished(), "the job stopped on its own");
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap();
    }
}

/// The error building `text` as job `job` gives (parsing or submission).
fn refusal(store: &Arc<LogStore>, dir: &Path, job: &str, text: &str) -> String {
    let mut config = JobConfig::new(job, Duration::from_millis(1));
    config.checkpoint_dir = Some(dir.join(format!("cp-{job}")));
    common_sql::refusal(store, config, text)
}

#[test]
fn result_tables_that_cannot_be_read_are_refused_before_any_record_is() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(LogStore::open(dir.path().join("data"), common::quiet()).unwrap());
    append(
        &store,
        "payments",
        ["user_id", "amount"],
        &rows(10, |i| (i % 3, i)),
    );
    append(
        &store,
        "clicks",
        ["id", "user_id"],
        &rows(10, |i| (i, i % 3)),
    );
    // A writing job with a checkpoint to point at.
    let spend_cp = dir.path().join("spend");
    common_sql::run_sql(
        &store,
        &spend_cp,
        "spend",
        &Script::parse(WRITER).unwrap(),
        None,
        None,
    );
    let streams = "CREATE STREAM payments (user_id BIGINT, amount BIGINT) WITH (topic = 'payments', format = 'json');\n\
CREATE STREAM clicks (id BIGINT, user_id BIGINT) WITH (topic = 'clicks', format = 'json');\n\
CREATE SINK per_user WITH (type = 'table');\n\
CREATE SINK out WITH (type = 'console');\n";
    let join =
        "INSERT INTO out SELECT c.id, t.* FROM clicks c JOIN totals t ON c.user_id = t.user_id;\n";
    let writes = "INSERT INTO per_user SELECT user_id, sum(amount) AS total FROM payments GROUP BY user_id;\n";
    let cases: Vec<(String, &str)> = vec![
        (
            format!(
                "{streams}CREATE TABLE totals WITH (type = 'result', table = 'per_user', path = 'x.csv');\n{join}{writes}"
            ),
            "line 5: result table totals: unknown option \"path\" (accepted: type, table, job, checkpoint_dir)",
        ),
        (
            format!("{streams}CREATE TABLE totals WITH (type = 'rocksdb');\n{join}"),
            "line 5: table totals: type = \"rocksdb\" is not supported (accepted: 'file', 'result')",
        ),
        (
            format!("{streams}CREATE TABLE totals WITH (type = 'result', table = '');\n{join}"),
            "result table totals: table = '' is empty",
        ),
        (
            format!(
                "{streams}CREATE TABLE totals WITH (type = 'result', checkpoint_dir = 'cp');\n{join}"
            ),
            "result table totals: checkpoint_dir says where another job keeps its checkpoint: name that job with job = '…'",
        ),
        (
            format!(
                "{streams}CREATE TABLE totals (user_id BIGINT) WITH (path = 'x.csv', table = 'per_user');\n{join}"
            ),
            "table totals: unknown option \"table\" (accepted: type, path, format, header)",
        ),
        (
            format!(
                "{streams}CREATE TABLE totals WITH (type = 'result', table = 'per_usr');\n{join}{writes}"
            ),
            "line 5: result table totals: this job has no table sink per_usr (its table sinks: per_user); name one with table = '…', or add job = '…' to read another job's table",
        ),
        (
            format!(
                "{streams}CREATE TABLE totals WITH (type = 'result', table = 'out');\n{join}{writes}"
            ),
            "result table totals: sink out is not a table sink, so it keeps no table to read: declare it CREATE SINK out WITH (type = 'table')",
        ),
        (
            format!(
                "{streams}CREATE TABLE totals WITH (type = 'result', table = 'per_user');\n{join}"
            ),
            "result table totals: no query writes table sink per_user: add INSERT INTO per_user SELECT …",
        ),
        (
            format!(
                "{streams}CREATE TABLE totals (user_id BIGINT) WITH (type = 'result', table = 'per_user');\n{join}{writes}"
            ),
            "result table totals: result table per_user of this job has 2 columns (user_id BIGINT, total BIGINT), but CREATE TABLE declares 1: declare 2, or none to take them as they are",
        ),
        (
            format!(
                "{streams}CREATE TABLE totals (user_id TEXT, total BIGINT) WITH (type = 'result', table = 'per_user');\n{join}{writes}"
            ),
            "result table totals: column user_id is declared TEXT, but result table per_user of this job stores BIGINT there (its column user_id): declare it BIGINT",
        ),
        (
            format!(
                "{streams}CREATE TABLE totals WITH (type = 'result', table = 'per_user', job = 'ghost', checkpoint_dir = '{}');\n{join}",
                dir.path().join("nowhere").display()
            ),
            "result table totals: job ghost has no checkpoint in ",
        ),
        (
            format!(
                "{streams}CREATE TABLE totals WITH (type = 'result', table = 'per_user', job = 'ghost');\n{join}"
            ),
            "result table totals: job ghost has no checkpoint in checkpoints/ghost: run job ghost first, or set checkpoint_dir = '…' to the directory it keeps its checkpoint in (its --checkpoint-dir)",
        ),
        (
            format!(
                "{streams}CREATE TABLE totals WITH (type = 'result', table = 'per_usr', job = 'spend', checkpoint_dir = '{}');\n{join}",
                spend_cp.display()
            ),
            "result table totals: job spend has no result table per_usr (its tables: per_user): name one with table = '…'",
        ),
        (
            format!(
                "{streams}CREATE TABLE totals WITH (type = 'result', table = 'per_user', job = 'spent', checkpoint_dir = '{}');\n{join}",
                spend_cp.display()
            ),
            "belongs to job spend, not spent: set job = 'spend', or point checkpoint_dir at job spent's checkpoint",
        ),
        (
            format!(
                "{streams}CREATE TABLE totals (user_id BIGINT, total BOOLEAN) WITH (type = 'result', table = 'per_user', job = 'spend', checkpoint_dir = '{}');\n{join}",
                spend_cp.display()
            ),
            "column total is declared BOOLEAN, but result table per_user of job spend",
        ),
        (
            format!(
                "{streams}CREATE TABLE totals WITH (type = 'result', table = 'per_user', job = 'reader', checkpoint_dir = '{}');\n{join}{writes}",
                spend_cp.display()
            ),
            "result table totals: job = 'reader' is this job, whose tables are read from its own checkpoint: leave checkpoint_dir out",
        ),
    ];
    for (text, message) in &cases {
        let got = refusal(&store, dir.path(), "reader", text);
        assert!(
            got.contains(message),
            "expected {message:?}\n     got {got:?}"
        );
    }
    // Refused while building, before the job ran: it made no checkpoint.
    assert!(!dir.path().join("cp-reader").exists());
    // Explaining plans the table's scan without reading it (this job has
    // no checkpoint yet).
    let explained = sluice::sql::explain(
        &Script::parse(&format!(
            "{streams}CREATE TABLE totals WITH (type = 'result', table = 'per_user');\n{join}{writes}"
        ))
        .unwrap(),
        &Topics::Embedded(store.clone()),
    )
    .unwrap();
    assert!(
        explained.contains(
            "ResultTableExec: result table per_user of this job, projection=[user_id, total]"
        ),
        "{explained}"
    );
}
