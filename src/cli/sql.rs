//! `sluice sql "…"` and `sluice run jobs/NAME.sql`: SQL jobs over streams.

use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;

use super::common::{open_store, stop_flag};
use super::job::{JobArgs, WorkersArgs};
use crate::driver::StreamingContext;
use crate::sql::script::StreamDecl;
use crate::sql::{Script, Topics};

/// Default records per partition in a SQL job's batch.
const SQL_MAX_RECORDS_PER_BATCH: u64 = 50_000;

#[derive(Debug, Clone, clap::Args)]
pub struct Where {
    /// Data directory of the embedded store.
    #[arg(long, env = "SLUICE_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Read topics through a Kafka broker (host:port) instead.
    #[arg(long)]
    pub brokers: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct SqlArgs {
    /// A query (or a script of statements separated by `;`). Topics of the
    /// embedded store are streams with a `value` text column and Kafka's
    /// `_topic`, `_partition`, `_offset`, `_timestamp`, `_key` columns.
    pub query: String,
    /// Output mode of the query: update (changed groups each batch),
    /// append (final rows only: closed windows), complete (every group).
    #[arg(long)]
    pub mode: Option<String>,
    #[command(flatten)]
    pub place: Where,
    #[command(flatten)]
    pub job: JobArgs,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The SQL job file; the job is named after its stem unless --job.
    pub file: PathBuf,
    #[command(flatten)]
    pub place: Where,
    #[command(flatten)]
    pub job: JobArgs,
    #[command(flatten)]
    pub workers: WorkersArgs,
}

/// Where the script's topics are; topics of the embedded store that no
/// `CREATE STREAM` declares become text streams.
fn topics_for(script: &mut Script, place: &Where) -> anyhow::Result<Topics> {
    Ok(match &place.brokers {
        Some(b) => Topics::Brokers(b.clone()),
        None => {
            let store = Arc::new(open_store(&place.data_dir, false)?);
            for topic in store.topics() {
                let name = topic.name().to_owned();
                if !script.streams.iter().any(|s| s.name == name) {
                    script.streams.push(StreamDecl {
                        name: name.clone(),
                        columns: Vec::new(),
                        options: [("topic".to_string(), name)].into_iter().collect(),
                        watermark: None,
                        proctime: None,
                    });
                }
            }
            Topics::Embedded(store)
        }
    })
}

fn run_script(
    mut script: Script,
    default_job: &str,
    place: &Where,
    job: &JobArgs,
    workers: Option<&WorkersArgs>,
) -> anyhow::Result<()> {
    let mut config = job.config(default_job);
    config.stop = Some(stop_flag()?);
    if let Some(w) = workers {
        w.apply(place.brokers.as_deref(), &mut config);
    }
    let topics = topics_for(&mut script, place)?;
    let console = job.console(&mut config)?;
    if let (Some(_), Some(monitor)) = (&console, &config.progress.monitor) {
        // The console shows the plan `sluice explain` prints.
        if let Ok(plan) = crate::sql::explain(&script, &topics) {
            monitor.set_plan(plan);
        }
    }
    let script_batch = script.max_records_per_batch;
    let mut ctx = StreamingContext::new(config);
    let built = crate::sql::build(&ctx, &script, &topics).map_err(|e| {
        if e.to_string().contains("Invalid function") {
            anyhow::anyhow!(
                "{e}\n(a function of your own is registered on the script by a Rust job: Script::register_udf, as jobs/nexmark_q14.rs does)"
            )
        } else {
            anyhow::Error::new(e)
        }
    })?;
    if job.max_records_per_batch.is_none() {
        if let Some(n) = script_batch {
            // The job file's own `SET 'max_records_per_batch'`.
            ctx.config_mut().max_records_per_batch = Some(n);
        } else if built.holds_whole_batches {
            // A query holds a whole batch (decoded, or its output): smaller
            // batches keep that under a few hundred MB. Aggregations that
            // read their batch as it arrives keep the engine's default.
            ctx.config_mut().max_records_per_batch = Some(SQL_MAX_RECORDS_PER_BATCH);
        }
    }
    ctx.run().context("the SQL job stopped")?;
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct ExplainArgs {
    /// The SQL job file.
    pub file: PathBuf,
    #[command(flatten)]
    pub place: Where,
}

/// `sluice explain FILE`: the incremental plan of each query.
pub fn explain(args: ExplainArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let mut script = Script::parse(&text).with_context(|| format!("in {}", args.file.display()))?;
    let topics = topics_for(&mut script, &args.place)?;
    let plan = crate::sql::explain(&script, &topics)
        .with_context(|| format!("in {}", args.file.display()))?;
    print!("{plan}");
    Ok(())
}

pub fn sql(args: SqlArgs) -> anyhow::Result<()> {
    let mut script = Script::parse(&args.query)?;
    script.console_mode = args.mode.clone();
    // The same query resumes its own checkpoint; another query gets another.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    args.query.trim().hash(&mut h);
    let job = format!("sql-{:08x}", h.finish() as u32);
    run_script(script, &job, &args.place, &args.job, None)
}

pub fn run(args: RunArgs) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let script = Script::parse(&text).with_context(|| format!("in {}", args.file.display()))?;
    let stem = args
        .file
        .file_stem()
        .and_then(|s| s.to_str())
        .unwrap_or("sql")
        .to_owned();
    run_script(script, &stem, &args.place, &args.job, Some(&args.workers))
        .with_context(|| format!("in {}", args.file.display()))
}
