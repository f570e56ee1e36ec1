//! `sluice-bench`: the benchmark drivers, each measuring Sluice side by
//! side with a reference in the same run on the same machine (dd on the
//! same disk, another Kafka-compatible broker under the same librdkafka
//! client, Spark through `benches/wordcount.sh`). Drivers that time whole
//! processes run the `sluice` binary built next to this one.
//!
//!   cargo build --release --workspace --bins
//!   target/release/sluice-bench wordcount --sizes 100MB --runs 3

mod broker;
mod compaction;
mod console;
mod corpus;
mod keys;
mod latency;
mod log;
mod txn;
mod util;
mod wordcount;
mod workers;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sluice::units::parse_bytes;

#[derive(Debug, Parser)]
#[command(
    name = "sluice-bench",
    version,
    about = "Sluice's benchmarks, measured side by side with a reference on the same machine"
)]
struct Cli {
    #[command(subcommand)]
    command: BenchCommand,
}

#[derive(Debug, Subcommand)]
enum BenchCommand {
    /// Append and read throughput of the log store vs. dd on the same disk.
    Log {
        /// Directory for the benchmark's store and dd's file (on the disk to measure).
        #[arg(long, default_value = "./bench-data")]
        dir: PathBuf,
        /// Bytes written per run (per record size and mode).
        #[arg(long, default_value = "2GiB", value_parser = parse_bytes)]
        bytes: u64,
        /// Record value sizes to measure, comma-separated.
        #[arg(long, default_value = "100,1024", value_delimiter = ',')]
        record_sizes: Vec<usize>,
        /// Records per batch.
        #[arg(long, default_value_t = 1000)]
        batch_records: usize,
        /// Runs per measurement; the median is reported.
        #[arg(long, default_value_t = 3)]
        runs: usize,
        /// Bytes written in the flush-per-batch mode (an fsync per batch is slow).
        #[arg(long, default_value = "256MiB", value_parser = parse_bytes)]
        flush_per_batch_bytes: u64,
        /// Skip the dd reference.
        #[arg(long)]
        no_dd: bool,
    },
    /// Produce and consume throughput of `sluice broker` over the Kafka
    /// protocol (librdkafka), side by side with tansu when given.
    Broker(broker::BrokerBenchArgs),
    /// What Kafka transactions cost: transactional produce (one transaction
    /// per 10,000 and per 1,000 records) against idempotent produce on the
    /// same `sluice broker`.
    Txn(txn::TxnBenchArgs),
    /// The log cleaner: its throughput, what it keeps, and how much faster
    /// a changelog restores compacted than not.
    Compaction(compaction::CompactionBenchArgs),
    /// Write a seeded text corpus (the word-count benchmarks' input) to a file.
    Corpus(corpus::CorpusArgs),
    /// End-to-end word count over a pre-loaded corpus: words/s and peak RSS,
    /// in-process source and through `sluice broker`.
    Wordcount(wordcount::WordcountBenchArgs),
    /// State with millions of keys: the word count over N distinct words,
    /// as new keys and then as updated keys, records/s and peak RSS.
    Keys(keys::KeysBenchArgs),
    /// End-to-end latency (record appended → its batch committed), p50 and
    /// p99, per batch interval at 100,000 records/s.
    Latency(latency::LatencyBenchArgs),
    /// What the web console costs: the word count with the console on and
    /// polled, against `--no-ui`, alternating.
    Console(console::ConsoleBenchArgs),
    /// One job on many worker processes: words per CPU-second on 1, 2 and 4
    /// workers against one process, coordination bytes, restore speed.
    Workers(workers::WorkersBenchArgs),
}

fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Log {
            dir,
            bytes,
            record_sizes,
            batch_records,
            runs,
            flush_per_batch_bytes,
            no_dd,
        } => log::run(
            &dir,
            bytes,
            &record_sizes,
            batch_records,
            runs.max(1),
            flush_per_batch_bytes,
            no_dd,
        ),
        BenchCommand::Broker(args) => broker::run(args),
        BenchCommand::Txn(args) => txn::run(args),
        BenchCommand::Compaction(args) => compaction::run(args),
        BenchCommand::Corpus(args) => corpus::run(args),
        BenchCommand::Wordcount(args) => wordcount::run(args),
        BenchCommand::Keys(args) => keys::run(args),
        BenchCommand::Latency(args) => latency::latency(args),
        BenchCommand::Workers(args) => workers::run(args),
        BenchCommand::Console(args) => console::run(args),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    sluice::cli::init_tracing("warn");
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
