//! Nexmark q14 as a Rust job: `jobs/nexmark/q14.sql` calls `count_char`,
//! the suite's user function, which Flink's q14 brings in with `CREATE
//! FUNCTION … AS 'com.github.nexmark.flink.udf.CountChar'`. Sluice loads
//! no code from a script: this job parses the script, registers the
//! function on it and runs it like `sluice run` would.
//!
//! ```text
//! sluice nexmark generate --events 10000000
//! cargo run --release --example nexmark_q14 -- --until-caught-up
//! ```
//!
//! Any user function works the same way: a DataFusion `ScalarUDF`
//! (`sluice::sql::datafusion::logical_expr::create_udf`, or a
//! `ScalarUDFImpl`) handed to `Script::register_udf`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use sluice::driver::{JobConfig, StreamingContext};
use sluice::log::{LogStore, StoreOptions};
use sluice::sql::{Script, Topics};

#[derive(Parser)]
struct Args {
    /// The job file.
    #[arg(long, default_value = "jobs/nexmark/q14.sql")]
    file: PathBuf,
    #[arg(long, default_value = "./data")]
    data_dir: PathBuf,
    #[arg(long, default_value = "nexmark-q14")]
    job: String,
    /// Checkpoint directory (default: checkpoints/<job>).
    #[arg(long)]
    checkpoint_dir: Option<PathBuf>,
    /// Stop once every partition is read to its end.
    #[arg(long)]
    until_caught_up: bool,
    /// Records per partition in a batch.
    #[arg(long, default_value_t = 50_000)]
    max_records_per_batch: u64,
    /// Also write each batch's progress as a JSON line here.
    #[arg(long)]
    progress_json: Option<PathBuf>,
    /// No progress line per batch on stderr.
    #[arg(long)]
    quiet: bool,
}

fn main() -> anyhow::Result<()> {
    // What the `sluice` binary does first: batch-sized buffers reuse the
    // heap's pages instead of being mapped afresh each batch.
    sluice::alloc::tune_system_allocator();
    let args = Args::parse();
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let mut script = Script::parse(&text).with_context(|| format!("in {}", args.file.display()))?;
    script.register_udf(sluice::nexmark::udf::count_char());

    let mut config = JobConfig::new(&args.job, Duration::from_secs(1));
    config.stop = Some(sluice::driver::stop_on_signals()?); // Ctrl-C: finish the batch, commit
    config.checkpoint_dir = args.checkpoint_dir;
    config.until_caught_up = args.until_caught_up;
    config.max_records_per_batch = Some(args.max_records_per_batch);
    config.progress.lines = !args.quiet;
    config.progress.json = args.progress_json;
    let ctx = StreamingContext::new(config);
    let store = Arc::new(LogStore::open(&args.data_dir, StoreOptions::default())?);
    sluice::sql::build(&ctx, &script, &Topics::Embedded(store))
        .with_context(|| format!("in {}", args.file.display()))?;
    ctx.run().context("the job stopped")?;
    Ok(())
}
