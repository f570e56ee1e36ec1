//! `sluice-bench txn`: what Kafka transactions cost on `sluice broker`.
//!
//! One run produces the same records (100 B values, round-robin over the
//! partitions) three ways, each on a freshly started broker: with the
//! idempotent producer (acks=all, the baseline a transaction builds on),
//! and transactionally with one transaction per `--txn-records` (10,000 and
//! 1,000 by default). The modes take turns in a rotating order from run to
//! run so drift in the machine's load hits all alike; medians of
//! throughput and of the broker's CPU per record are reported, with each
//! transactional mode's ratio to the idempotent one.

use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use anyhow::{Context, bail};
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

use crate::broker::{
    BenchContext, BrokerProcess, BrokerSpec, Kind, PRODUCER_SETTINGS, PhaseClock, Sample, Watch,
    create_topic, millis, payload_source,
};
use crate::util::median;
use sluice::sink::topic::deliver_all;
use sluice::units::format_count;

#[derive(Debug, clap::Args)]
pub struct TxnBenchArgs {
    /// The sluice binary whose `broker` is measured (default: the one beside this executable).
    #[arg(long)]
    broker_bin: Option<PathBuf>,
    /// Runs per mode; the median is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Records of 100 bytes produced per run and mode.
    #[arg(long, default_value_t = 1_000_000)]
    records: u64,
    /// Records per transaction of each transactional mode, comma-separated.
    #[arg(long, default_value = "10000,1000", value_delimiter = ',')]
    txn_records: Vec<u64>,
    /// Partitions of the benchmark topic.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(i32).range(1..=10_000))]
    partitions: i32,
    /// Directory for the brokers' data directories (emptied afterwards).
    #[arg(long, default_value = "./bench-txn-data")]
    dir: PathBuf,
    /// A broker that does not start, or a phase without progress, for this long fails.
    #[arg(long, default_value = "120s", value_parser = millis)]
    timeout: Duration,
}

const VALUE_BYTES: usize = 100;

/// How the records are produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Idempotent,
    /// One transaction per this many records.
    Transactional(u64),
}

impl Mode {
    fn label(self) -> String {
        match self {
            Mode::Idempotent => "idempotent".into(),
            Mode::Transactional(n) => format!("txn/{}", format_count(n as f64)),
        }
    }
}

pub fn run(args: TxnBenchArgs) -> anyhow::Result<()> {
    if args.txn_records.contains(&0) {
        bail!("--txn-records must be positive record counts");
    }
    let spec = BrokerSpec {
        name: "sluice",
        kind: Kind::Sluice,
        bin: match &args.broker_bin {
            Some(p) => p.clone(),
            None => crate::util::sluice_exe()?,
        },
    };
    let modes: Vec<Mode> = std::iter::once(Mode::Idempotent)
        .chain(args.txn_records.iter().map(|&n| Mode::Transactional(n)))
        .collect();
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .context("cannot start the async runtime for the admin client")?;
    let payload = payload_source();
    println!(
        "{} records of {VALUE_BYTES} B over {} partitions, acks=all, {} run(s) per mode",
        format_count(args.records as f64),
        args.partitions,
        args.runs.max(1)
    );
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); modes.len()];
    for run in 0..args.runs.max(1) {
        for k in 0..modes.len() {
            let mi = (k + run) % modes.len();
            let mode = modes[mi];
            let data_dir = args.dir.join(format!("run{}-{}", run + 1, mi));
            let mut broker = BrokerProcess::start(&spec, &data_dir, args.timeout)?;
            let outcome = produce(&args, &rt, &mut broker, mode, &payload);
            let stopped = if outcome.is_ok() {
                broker.stop().map(|_| ())
            } else {
                broker.kill();
                Ok(())
            };
            let s = outcome.with_context(|| format!("run {} {}", run + 1, mode.label()))?;
            stopped.context("stopping the broker")?;
            println!(
                "run {} {:<12} {:>12} rec/s  broker {:>6.2} s/M{}",
                run + 1,
                mode.label(),
                format_count(s.records_per_sec()),
                s.broker_cpu_per_million(),
                if s.valid { "" } else { "  INVALID" }
            );
            samples[mi].push(s);
            let _ = std::fs::remove_dir_all(&data_dir);
        }
    }
    print_summary(&modes, &samples);
    Ok(())
}

fn print_summary(modes: &[Mode], samples: &[Vec<Sample>]) {
    let medians: Vec<Option<(f64, f64)>> = samples
        .iter()
        .map(|runs| {
            let valid: Vec<&Sample> = runs.iter().filter(|s| s.valid).collect();
            (!valid.is_empty()).then(|| {
                (
                    median(valid.iter().map(|s| s.records_per_sec()).collect()),
                    median(valid.iter().map(|s| s.broker_cpu_per_million()).collect()),
                )
            })
        })
        .collect();
    println!("\nmedians (ratio to idempotent: throughput, broker CPU per record)");
    let base = medians[0];
    for (mode, m) in modes.iter().zip(&medians) {
        match (m, base) {
            (Some((rate, cpu)), Some((base_rate, base_cpu))) => println!(
                "{:<12} {:>12} rec/s  broker {:>6.2} s/M   {:.3}×  {:.3}×",
                mode.label(),
                format_count(*rate),
                cpu,
                rate / base_rate,
                cpu / base_cpu
            ),
            _ => println!("{:<12} no valid run", mode.label()),
        }
    }
}

/// Produces every record in `mode` on a fresh topic; the clock covers the
/// first send to the last acknowledgement (or commit).
fn produce(
    args: &TxnBenchArgs,
    rt: &tokio::runtime::Runtime,
    broker: &mut BrokerProcess,
    mode: Mode,
    payload: &[u8],
) -> anyhow::Result<Sample> {
    let topic = "bench-txn";
    create_topic(rt, &broker.bootstrap, topic, args.partitions, args.timeout)
        .context("creating the topic")?;
    let producer = producer(args, broker, topic, mode)?;
    let ctx = producer.context().clone();
    let records = args.records;
    let mut watch = Watch::new(args.timeout, "records sent + delivery reports", 2 * records);
    let clock = PhaseClock::start(broker)?;
    let per_txn = match mode {
        Mode::Idempotent => records,
        Mode::Transactional(n) => n,
    };
    let span = payload.len() - VALUE_BYTES;
    let mut sent = 0u64;
    while sent < records {
        if mode != Mode::Idempotent {
            producer.begin_transaction().context("begin_transaction")?;
        }
        let end = (sent + per_txn).min(records);
        for i in sent..end {
            let offset = (i as usize).wrapping_mul(7919) % span;
            let mut record = BaseRecord::<[u8], [u8]>::to(topic)
                .payload(&payload[offset..offset + VALUE_BYTES])
                .partition((i % args.partitions as u64) as i32);
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        record = r;
                        producer.poll(Duration::from_millis(5));
                        watch.tick(broker, i + ctx.done())?;
                    }
                    Err((e, _)) => bail!("send refused: {e}"),
                }
            }
            if i % 4096 == 4095 {
                producer.poll(Duration::ZERO);
                watch.tick(broker, i + ctx.done())?;
            }
        }
        sent = end;
        if mode != Mode::Idempotent {
            // Deliver first, past linger.ms, with short polls, as the
            // engine's sinks do: rust-rdkafka's commit_transaction flushes
            // in 100 ms polling steps and keeps linger.ms (see
            // `deliver_all`), which would time the client instead of the
            // broker.
            deliver_all(&producer, args.timeout).map_err(anyhow::Error::msg)?;
            watch.tick(broker, sent + ctx.done())?;
            producer
                .commit_transaction(args.timeout)
                .context("commit_transaction")?;
        }
    }
    while producer.in_flight_count() > 0 {
        producer.poll(Duration::from_millis(20));
        watch.tick(broker, sent + ctx.done())?;
    }
    let delivered = ctx.delivered.load(Relaxed);
    let valid = ctx.failed.load(Relaxed) == 0 && delivered == records;
    for e in ctx.take_events() {
        println!("  {}: {e}", mode.label());
    }
    clock.stop(broker, delivered, delivered * VALUE_BYTES as u64, valid)
}

fn producer(
    args: &TxnBenchArgs,
    broker: &BrokerProcess,
    topic: &str,
    mode: Mode,
) -> anyhow::Result<BaseProducer<BenchContext>> {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", &broker.bootstrap);
    for (k, v) in PRODUCER_SETTINGS {
        config.set(*k, *v);
    }
    config
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("queue.buffering.max.messages", "2000000");
    if let Mode::Transactional(_) = mode {
        config
            .set("transactional.id", "sluice-bench-txn")
            .set("transaction.timeout.ms", "60000");
    }
    let producer: BaseProducer<BenchContext> = config
        .create_with_context(BenchContext::default())
        .context("cannot create the producer")?;
    producer
        .client()
        .fetch_metadata(Some(topic), args.timeout)
        .context("no metadata for the topic")?;
    if let Mode::Transactional(_) = mode {
        producer
            .init_transactions(args.timeout)
            .context("init_transactions")?;
    }
    Ok(producer)
}
