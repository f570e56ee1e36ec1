//! `sluice state get|scan`: read a job's result tables from its checkpoint,
//! while the job runs (a read-only view of the last commit) or after.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;

use crate::checkpoint::Checkpoint;
use crate::sink::table::TableReader;

#[derive(Debug, clap::Args)]
pub struct TableArgs {
    /// The job whose checkpoint to read.
    #[arg(long)]
    pub job: String,
    /// Checkpoint directory (default: checkpoints/<job>).
    #[arg(long)]
    pub checkpoint_dir: Option<PathBuf>,
    /// Result table (default: the job's only table, or the one named like the job).
    #[arg(long)]
    pub table: Option<String>,
    /// Read the table of a job run on many workers (`--workers-group`)
    /// from its changelog topic at this Kafka broker instead of a
    /// checkpoint.
    #[arg(long, conflicts_with = "checkpoint_dir")]
    pub brokers: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum StateCommand {
    /// Print the value of one key.
    Get {
        #[command(flatten)]
        table: TableArgs,
        key: String,
    },
    /// Print entries in key order, or the largest values with --top.
    Scan {
        #[command(flatten)]
        table: TableArgs,
        /// Only keys starting with this.
        #[arg(long)]
        prefix: Option<String>,
        /// The N entries with the largest numeric values.
        #[arg(long)]
        top: Option<usize>,
        /// At most this many entries (key order).
        #[arg(long)]
        limit: Option<usize>,
    },
}

/// Runs `f` over the table to read: from its changelog at --brokers (a
/// job on many workers), or from the job's checkpoint.
fn with_table<T>(
    args: &TableArgs,
    f: impl FnOnce(&TableReader) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    if let Some(brokers) = &args.brokers {
        let (meta, entries) =
            crate::driver::worker::read_table(brokers, &args.job, args.table.as_deref())
                .with_context(|| format!("cannot read job {}'s table at {brokers}", args.job))?;
        return f(&TableReader::loaded(meta, entries));
    }
    let (checkpoint, name) = open(args)?;
    f(&TableReader::open(&checkpoint, &name)?)
}

fn open(args: &TableArgs) -> anyhow::Result<(Checkpoint, String)> {
    let path = args
        .checkpoint_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("checkpoints").join(&args.job));
    let checkpoint = Checkpoint::open_read_only(&path, &args.job)
        .with_context(|| format!("cannot read the checkpoint of job {}", args.job))?;
    let table = match &args.table {
        Some(t) => t.clone(),
        None => {
            let tables = checkpoint.tables()?;
            match tables
                .iter()
                .find(|t| t.name == args.job)
                .or(if tables.len() == 1 {
                    tables.first()
                } else {
                    None
                }) {
                Some(t) => t.name.clone(),
                None => anyhow::bail!(
                    "job {} has {} result tables; choose one with --table ({})",
                    args.job,
                    tables.len(),
                    tables
                        .iter()
                        .map(|t| t.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            }
        }
    };
    Ok((checkpoint, table))
}

pub fn run(cmd: StateCommand) -> anyhow::Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match cmd {
        StateCommand::Get { table, key } => with_table(&table, |reader| {
            match reader.get(&key)? {
                Some(v) => writeln!(out, "{}", v.text)?,
                None => anyhow::bail!("no key {key:?} in table {:?}", reader.meta.name),
            }
            Ok(())
        })?,
        StateCommand::Scan {
            table,
            prefix,
            top,
            limit,
        } => with_table(&table, |reader| {
            if let Some(n) = top {
                for (k, v) in reader.top(n, prefix.as_deref())? {
                    writeln!(out, "{}\t{}", k.text, v.text)?;
                }
            } else {
                let mut left = limit.unwrap_or(usize::MAX);
                let mut failed = None;
                reader.scan(prefix.as_deref(), |k, v| {
                    if left == 0 {
                        return false;
                    }
                    left -= 1;
                    if let Err(e) = writeln!(out, "{}\t{}", k.text, v.text) {
                        failed = Some(e);
                        return false;
                    }
                    true
                })?;
                if let Some(e) = failed
                    && e.kind() != std::io::ErrorKind::BrokenPipe
                {
                    return Err(e.into());
                }
            }
            Ok(())
        })?,
    }
    Ok(())
}
