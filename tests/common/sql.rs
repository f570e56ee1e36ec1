//! Helpers of the SQL tests only, kept out of `common/mod.rs` so that the
//! binaries of the lower layers (the log's above all) do not link
//! DataFusion: the reference (the same query run once by plain DataFusion
//! over all the input, to compare a job's results with), running a SQL job
//! in process, and reading a result table back.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::future::Future;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{AsArray, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::DataType;

use datafusion::error::Result;
use datafusion::prelude::{CsvReadOptions, DataFrame, SessionContext};
use sluice::checkpoint::Checkpoint;
use sluice::driver::{JobConfig, StreamingContext};
use sluice::log::LogStore;
use sluice::sink::table::TableReader;
use sluice::sql::{Script, Topics};

/// A plain DataFusion session over the test's input, with the runtime
/// that drives it: register the input (batches, literal rows, CSV files),
/// then run the query once over all of it.
pub struct Reference {
    rt: tokio::runtime::Runtime,
    ctx: SessionContext,
}

impl Reference {
    pub fn new() -> Reference {
        Reference {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
            ctx: SessionContext::new(),
        }
    }

    /// The session, for what the helpers below do not cover.
    pub fn ctx(&self) -> &SessionContext {
        &self.ctx
    }

    pub fn block_on<F: Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    /// Registers `batch` as the table `name`.
    pub fn batch(&self, name: &str, batch: RecordBatch) -> &Reference {
        self.ctx.register_batch(name, batch).unwrap();
        self
    }

    /// Registers the view `name` over literal rows: `columns` names them
    /// (`"id, ts"`), each row is a tuple's SQL text (`"(1, 'a')"`).
    pub fn values(
        &self,
        name: &str,
        columns: &str,
        rows: impl IntoIterator<Item = String>,
    ) -> &Reference {
        let rows: Vec<String> = rows.into_iter().collect();
        self.plan(&format!(
            "CREATE VIEW {name} AS SELECT * FROM (VALUES {}) AS t({columns})",
            rows.join(",")
        ))
        .unwrap();
        self
    }

    /// Registers the CSV file at `path` (with a header) as the table `name`.
    pub fn csv(&self, name: &str, path: &str) -> &Reference {
        self.block_on(self.ctx.register_csv(name, path, CsvReadOptions::new()))
            .unwrap();
        self
    }

    /// Plans `sql` (DDL runs here).
    pub fn plan(&self, sql: &str) -> Result<DataFrame> {
        self.block_on(self.ctx.sql(sql))
    }

    /// Runs a planned query to its end.
    pub fn collect(&self, df: DataFrame) -> Result<Vec<RecordBatch>> {
        self.block_on(df.collect())
    }

    /// Plans and runs `sql`, which must succeed.
    pub fn rows(&self, sql: &str) -> Vec<RecordBatch> {
        let df = self
            .plan(sql)
            .unwrap_or_else(|e| panic!("reference {sql}: {e}"));
        self.collect(df)
            .unwrap_or_else(|e| panic!("reference {sql}: {e}"))
    }

    /// `sql`'s result as its first column → its second, both as text (a
    /// key seen twice keeps its last value).
    pub fn pairs(&self, sql: &str) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for b in self.rows(sql) {
            let k = cast(b.column(0), &DataType::Utf8).unwrap();
            let v = cast(b.column(1), &DataType::Utf8).unwrap();
            let (k, v) = (k.as_string::<i32>(), v.as_string::<i32>());
            for i in 0..b.num_rows() {
                out.insert(k.value(i).to_string(), v.value(i).to_string());
            }
        }
        out
    }
}

/// Runs a SQL job in process over the embedded `store` until caught up (1
/// ms batches, no progress lines): job `job`, checkpoint `checkpoint`, at
/// most `batch_records` records per partition per batch (None: the
/// engine's default) and `max_batches` batches.
pub fn run_sql(
    store: &std::sync::Arc<sluice::log::LogStore>,
    checkpoint: &Path,
    job: &str,
    script: &sluice::sql::Script,
    batch_records: Option<u64>,
    max_batches: Option<u64>,
) {
    let mut config = sluice::driver::JobConfig::new(job, std::time::Duration::from_millis(1));
    config.checkpoint_dir = Some(checkpoint.to_path_buf());
    config.until_caught_up = true;
    if batch_records.is_some() {
        config.max_records_per_batch = batch_records;
    }
    config.max_batches = max_batches;
    config.progress.lines = false;
    let ctx = sluice::driver::StreamingContext::new(config);
    sluice::sql::build(&ctx, script, &sluice::sql::Topics::Embedded(store.clone())).unwrap();
    ctx.run().unwrap();
}

/// Why the job `text` is refused at submission over `store` under
/// `config` (its parse or its planning error); panics if it is accepted.
pub fn refusal(store: &Arc<LogStore>, config: JobConfig, text: &str) -> String {
    let script = match Script::parse(text) {
        Ok(s) => s,
        Err(e) => return e.to_string(),
    };
    let ctx = StreamingContext::new(config);
    match sluice::sql::build(&ctx, &script, &Topics::Embedded(store.clone())) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e.to_string(),
    }
}

/// [`refusal`] as a job named `refused` with 1 ms batches.
pub fn refused(store: &Arc<LogStore>, text: &str) -> String {
    refusal(
        store,
        JobConfig::new("refused", Duration::from_millis(1)),
        text,
    )
}

/// The rows of every table a console sink printed (`| a | b |`), as
/// trimmed cells, header rows included.
pub fn console_cells(stdout: &str) -> Vec<Vec<String>> {
    stdout
        .lines()
        .filter(|l| l.starts_with('|'))
        .map(|l| {
            l.trim_matches('|')
                .split('|')
                .map(|c| c.trim().to_owned())
                .collect()
        })
        .collect()
}

/// Every entry of the result table `table` of job `job` in `checkpoint`,
/// as (key, value) text the way `sluice state scan` prints them.
pub fn result_table(checkpoint: &Path, job: &str, table: &str) -> BTreeMap<String, String> {
    let cp = Checkpoint::open_read_only(checkpoint, job).unwrap();
    let reader = TableReader::open(&cp, table).unwrap();
    let mut out = BTreeMap::new();
    reader
        .scan(None, |k, v| {
            out.insert(k.text, v.text);
            true
        })
        .unwrap();
    out
}

pub fn crash_storm(
    what: &str,
    logs: &Path,
    command: &dyn Fn() -> std::process::Command,
    kill_at: &[u64],
    random_kill_after: Duration,
    mut after_kill: impl FnMut(u64),
) {
    use std::os::unix::process::ExitStatusExt;

    use crate::common::broker::wait_timeout;

    let spawn = |attempt: usize, failpoints: Option<String>| {
        let log = logs.join(format!("run-{attempt}.log"));
        let mut cmd = command();
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        if let Some(f) = failpoints {
            cmd.env("FAILPOINTS", f);
        }
        (cmd.spawn().unwrap(), log)
    };
    let log_of = |path: &Path| std::fs::read_to_string(path).unwrap_or_default();
    let mut attempt = 0;
    for &batch in kill_at {
        let (mut child, log) = spawn(
            attempt,
            Some(format!("sink::topic::after_write=return({batch})")),
        );
        let status = wait_timeout(&mut child, Duration::from_secs(300)).unwrap_or_else(|| {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: run {attempt} hangs: {}", log_of(&log))
        });
        assert_eq!(
            status.signal(),
            Some(libc::SIGKILL),
            "{what}: run {attempt} should die by the failpoint in batch {batch}: {status:?}\n{}",
            log_of(&log)
        );
        after_kill(batch);
        attempt += 1;
    }
    // One kill at a moment no failpoint chose: anywhere in a batch, or in
    // the commit itself.
    let (mut child, log) = spawn(attempt, None);
    let started = std::time::Instant::now();
    let landed = match wait_timeout(&mut child, random_kill_after) {
        Some(status) => {
            assert!(
                status.success(),
                "{what}: run {attempt} failed: {}",
                log_of(&log)
            );
            false
        }
        None => {
            let _ = child.kill(); // SIGKILL
            let _ = child.wait();
            true
        }
    };
    eprintln!(
        "{what}: random kill after {:?}: {}",
        started.elapsed(),
        if landed {
            "landed"
        } else {
            "the run had finished"
        }
    );
    attempt += 1;
    let (mut child, log) = spawn(attempt, None);
    let status = wait_timeout(&mut child, Duration::from_secs(600)).unwrap_or_else(|| {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{what}: the final run hangs: {}", log_of(&log))
    });
    assert!(
        status.success(),
        "{what}: the final run failed: {}",
        log_of(&log)
    );
}
