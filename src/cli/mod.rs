//! The `sluice` command line: argument definitions (clap derive) and one
//! file per subcommand. This is the edge where library errors get context a
//! person can act on; nothing here owns data or formats on disk.

mod broker;
mod common;
mod consume;
mod demo;
mod job;
mod nexmark;
mod produce;
mod remote;
mod sql;
mod state;
mod topic;
mod ui;
mod wordcount;

pub use common::StoreArgs;
pub use wordcount::wordcount;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "sluice",
    version,
    about = "Micro-batch stream processing with a bundled, Kafka-compatible log store",
    propagate_version = true
)]
pub struct Cli {
    /// Log level filter for diagnostics on stderr (error, warn, info, debug,
    /// trace). Default: info for `broker`, warn otherwise.
    #[arg(long, global = true, env = "SLUICE_LOG")]
    pub log: Option<String>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create, list, describe and delete topics.
    #[command(subcommand)]
    Topic(topic::TopicCommand),
    /// Produce records from stdin, a file, or a growing log file (tail -F).
    Produce(produce::ProduceArgs),
    /// Print records of a topic.
    Consume(consume::ConsumeArgs),
    /// Serve the data directory to Kafka clients over the Kafka protocol.
    Broker(broker::BrokerArgs),
    /// Self-contained demos on the embedded store; no servers to start.
    #[command(subcommand)]
    Demo(demo::DemoCommand),
    /// Count the words of a topic with a streaming job (exactly once).
    Wordcount(wordcount::WordcountArgs),
    /// Run a streaming SQL query over topics (results per batch).
    Sql(sql::SqlArgs),
    /// Run a SQL job file (CREATE STREAM / CREATE SINK / INSERT INTO …).
    Run(sql::RunArgs),
    /// Show a SQL job's incremental plan: what runs per slice, where the
    /// shuffle is, which state is kept and how it is evicted.
    Explain(sql::ExplainArgs),
    /// The Nexmark benchmark: generate its events into topics.
    #[command(subcommand)]
    Nexmark(nexmark::NexmarkCommand),
    /// Read a job's result tables from its checkpoint.
    #[command(subcommand)]
    State(state::StateCommand),
}

impl Cli {
    /// The diagnostics filter: `--log`, or the command's default (a broker
    /// reports its metrics at info level).
    pub fn log_filter(&self) -> String {
        match (&self.log, &self.command) {
            (Some(filter), _) => filter.clone(),
            (None, Command::Broker(_)) => "info".into(),
            (None, _) => "warn".into(),
        }
    }
}

impl Cli {
    /// Commands that only print (records, descriptions, tables) and end:
    /// when their reader goes away (`| head`) they should end quietly, as
    /// Unix tools do, rather than fail a write. Servers and jobs are not
    /// among them: a closed client socket must never end a broker.
    pub fn prints_and_ends(&self) -> bool {
        matches!(
            self.command,
            Command::Consume(_) | Command::Topic(_) | Command::State(_) | Command::Explain(_)
        )
    }
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Topic(cmd) => topic::run(cmd),
        Command::Produce(args) => produce::run(args),
        Command::Consume(args) => consume::run(args),
        Command::Broker(args) => broker::run(args),
        Command::Demo(cmd) => demo::run(cmd),
        Command::Wordcount(args) => wordcount::run(args),
        Command::State(cmd) => state::run(cmd),
        Command::Sql(args) => sql::sql(args),
        Command::Run(args) => sql::run(args),
        Command::Explain(args) => sql::explain(args),
        Command::Nexmark(cmd) => nexmark::run(cmd),
    }
}

/// Diagnostics go to stderr so that stdout carries only data.
pub fn init_tracing(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr)
        .with_target(false)
        .try_init();
}
