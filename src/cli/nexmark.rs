//! `sluice nexmark generate`: the Nexmark benchmark's events (people,
//! auctions, bids) as JSON records in the topics `person`, `auction` and
//! `bid` of the embedded store, for `jobs/nexmark/*.sql` and
//! `benches/nexmark.sh`. See `crate::nexmark` for what is generated.

use std::time::Instant;

use anyhow::Context;
use clap::Subcommand;

use super::common::{StoreArgs, open_store};
use crate::nexmark::json::format_timestamp;
use crate::nexmark::{DEFAULT_RATE, DEFAULT_SEED, EventKind, Generator, NexmarkConfig, load};
use crate::units::parse_timestamp_ms;
use crate::units::{format_bytes, format_count};

#[derive(Debug, Subcommand)]
pub enum NexmarkCommand {
    /// Generate Nexmark events into the topics person, auction and bid
    /// (JSON, one event per record; 1 person, 3 auctions and 46 bids in
    /// every 50 events). The same flags give the same records.
    Generate(GenerateArgs),
}

#[derive(Debug, clap::Args)]
pub struct GenerateArgs {
    /// Events to generate, all kinds together.
    #[arg(long)]
    pub events: u64,
    /// Partitions of the topics it creates [default: 4]; if given, existing
    /// topics must have this many.
    #[arg(long, value_parser = clap::value_parser!(i64).range(1..=100_000))]
    pub partitions: Option<i64>,
    /// Events per second of event time: event n happens at base time +
    /// n × 1000 / rate ms (the Flink Nexmark suite's TPS).
    #[arg(long, default_value_t = DEFAULT_RATE, value_parser = clap::value_parser!(u64).range(1..))]
    pub rate: u64,
    /// Seed of every random choice.
    #[arg(long, default_value_t = DEFAULT_SEED)]
    pub seed: u64,
    /// Event time of event 0: milliseconds since the epoch or RFC 3339;
    /// the default is Beam Nexmark's.
    #[arg(long, default_value = "2015-07-15T00:00:00Z", value_parser = parse_timestamp_ms)]
    pub base_time: i64,
    /// Continue after the events the topics already hold (same --seed,
    /// --rate and --base-time as the run that wrote them).
    #[arg(long)]
    pub append: bool,
    #[command(flatten)]
    pub store: StoreArgs,
}

pub fn run(cmd: NexmarkCommand) -> anyhow::Result<()> {
    match cmd {
        NexmarkCommand::Generate(args) => generate(args),
    }
}

fn generate(args: GenerateArgs) -> anyhow::Result<()> {
    let config = NexmarkConfig {
        seed: args.seed,
        rate: args.rate,
        base_time_ms: args.base_time,
    };
    let store = open_store(&args.store.data_dir, false)?;
    let generator = Generator::new(config);
    let target = load::prepare(&store, &generator, args.partitions, args.append)
        .with_context(|| format!("in {}", args.store.data_dir.display()))?;
    if !target.created.is_empty() {
        println!(
            "Created topics {} in {} ({} partitions, retention.ms=-1)",
            target.created.join(", "),
            args.store.data_dir.display(),
            args.partitions.unwrap_or(load::DEFAULT_PARTITIONS)
        );
    }
    let started = Instant::now();
    let summary =
        load::write(&generator, &target, args.events).context("generating Nexmark events")?;
    let write_secs = started.elapsed().as_secs_f64().max(1e-9);
    store
        .close()
        .context("cannot close the log store cleanly")?;
    let total_secs = started.elapsed().as_secs_f64().max(1e-9);

    let events = summary.to - summary.from;
    let bytes: u64 = summary.bytes.iter().sum();
    println!(
        "Events {}..{} (seed {}, {} events/s of event time):",
        summary.from,
        summary.to,
        config.seed,
        format_count(config.rate as f64)
    );
    for kind in EventKind::ALL {
        let k = kind as usize;
        println!(
            "  {:<8} {:>14} records {:>11}",
            kind.topic(),
            format_count(summary.records[k] as f64),
            format_bytes(summary.bytes[k])
        );
    }
    println!(
        "  {:<8} {:>14} events  {:>11} in {write_secs:.2} s ({} events/s, {}/s); {:.2} s with the final fsync",
        "total",
        format_count(events as f64),
        format_bytes(bytes),
        format_count(events as f64 / write_secs),
        format_bytes((bytes as f64 / write_secs) as u64),
        total_secs
    );
    if events > 0 {
        println!(
            "Event time {} .. {} UTC. Next: sluice run jobs/nexmark/q0.sql --data-dir {} --until-caught-up",
            format_timestamp(generator.timestamp_ms(summary.from)),
            format_timestamp(generator.timestamp_ms(summary.to - 1)),
            args.store.data_dir.display()
        );
    }
    Ok(())
}
