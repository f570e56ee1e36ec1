//! `sluice-bench broker`: produce and consume throughput of `sluice broker`
//! over the Kafka protocol, driven by librdkafka (the rdkafka crate), measured
//! side by side with a reference broker (tansu) in the same run.
//!
//! For every run, record size and `acks` setting, each broker under test is
//! started afresh as a child process on a free loopback port (sluice with an
//! empty data directory, tansu with in-memory storage); the topic is created
//! with the AdminClient; the records are produced and then read back twice
//! with an `assign()`ed consumer, once with librdkafka's default consumer
//! settings and once tuned. The brokers take turns, in alternating order from
//! run to run, so drift in the machine's load hits both alike.
//!
//! Each phase records wall-clock throughput and the CPU time (utime + stime)
//! of the broker process, from /proc/PID/stat, and of this process (the
//! client: librdkafka's threads and ours), from getrusage.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{BufRead, BufReader, Read};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::util::{free_port, median};
use sluice::units::parse_millis;

pub(crate) fn millis(text: &str) -> Result<Duration, String> {
    parse_millis(text).map(Duration::from_millis)
}

#[derive(Debug, clap::Args)]
pub struct BrokerBenchArgs {
    /// The sluice binary whose `broker` is measured (default: this executable).
    #[arg(long)]
    broker_bin: Option<PathBuf>,
    /// Path of a tansu binary: measure it too, as the reference, in the same runs.
    #[arg(long)]
    tansu: Option<PathBuf>,
    /// Runs per measurement; the median is reported.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Records of 100 bytes produced (and consumed) per run and acks setting.
    #[arg(long = "records-100b", default_value_t = 2_000_000)]
    records_100b: u64,
    /// Records of 1 KiB produced (and consumed) per run and acks setting.
    #[arg(long = "records-1k", default_value_t = 500_000)]
    records_1k: u64,
    /// Partitions of the benchmark topic.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(i32).range(1..=10_000))]
    partitions: i32,
    /// Directory for the brokers' data directories (emptied afterwards).
    #[arg(long, default_value = "./bench-broker-data")]
    dir: PathBuf,
    /// Producer acks settings to measure, comma-separated (0, 1, all).
    #[arg(long, default_value = "1,all", value_delimiter = ',', value_parser = parse_acks)]
    acks: Vec<Acks>,
    /// Ten times fewer records, for a quick smoke run.
    #[arg(long)]
    quick: bool,
    /// A broker that does not start, or a phase that makes no progress, for
    /// this long fails (and a phase fails after ten times this in total).
    #[arg(long, default_value = "120s", value_parser = millis)]
    timeout: Duration,
    /// A librdkafka producer setting KEY=VALUE added to (or replacing one of)
    /// the benchmark's; repeatable.
    #[arg(long = "producer-set", value_name = "KEY=VALUE", value_parser = parse_setting)]
    producer_set: Vec<(String, String)>,
    /// A librdkafka consumer setting KEY=VALUE for the tuned consume pass,
    /// added to (or replacing one of) the benchmark's; repeatable.
    #[arg(long = "tuned-consumer-set", value_name = "KEY=VALUE", value_parser = parse_setting)]
    tuned_consumer_set: Vec<(String, String)>,
}

fn parse_setting(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
        _ => Err(format!("{text:?} is not KEY=VALUE")),
    }
}

/// `defaults` with `overrides` applied in order (same key: replaced, new: appended).
fn merge_settings(
    defaults: &[(&str, &str)],
    overrides: &[(String, String)],
) -> Vec<(String, String)> {
    let mut merged: Vec<(String, String)> = defaults
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for (k, v) in overrides {
        match merged.iter_mut().find(|(mk, _)| mk == k) {
            Some(entry) => entry.1 = v.clone(),
            None => merged.push((k.clone(), v.clone())),
        }
    }
    merged
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acks {
    None,
    Leader,
    All,
}

fn parse_acks(text: &str) -> Result<Acks, String> {
    match text.trim() {
        "0" => Ok(Acks::None),
        "1" => Ok(Acks::Leader),
        "all" | "-1" => Ok(Acks::All),
        other => Err(format!("{other:?} is not an acks setting; use 0, 1 or all")),
    }
}

impl fmt::Display for Acks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Acks::None => "0",
            Acks::Leader => "1",
            Acks::All => "all",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Sluice,
    Tansu,
}

pub(crate) struct BrokerSpec {
    pub(crate) name: &'static str,
    pub(crate) kind: Kind,
    pub(crate) bin: PathBuf,
}

#[derive(Debug, Clone, Copy)]
struct Workload {
    size: usize,
    records: u64,
}

const PHASES: [&str; 3] = ["produce", "consume default", "consume tuned"];

// Producer settings, the same for every broker. One producer request carries
// batches of up to 1 MB (librdkafka's message.max.bytes; Kafka's and sluice's
// max.message.bytes is 1,048,588), so batch.size is the limit and
// batch.num.messages is set high enough never to be.
pub(crate) const PRODUCER_SETTINGS: &[(&str, &str)] = &[
    ("linger.ms", "5"),
    ("compression.type", "none"),
    ("batch.size", "1000000"),
    ("batch.num.messages", "100000"),
    ("queue.buffering.max.kbytes", "2097152"),
    ("enable.idempotence", "false"),
];

// Consumer settings for the tuned pass (the default pass sets none of these).
// fetch.queue.backoff.ms=0 matters most: by default librdkafka pauses a
// partition's fetching for a second whenever its local queue is over
// queued.min.messages (100,000) or queued.max.messages.kbytes (64 MiB).
// Fetch sizes are 4× librdkafka's defaults only: with 16 MiB per partition
// and 64 MiB per response, client CPU per record doubled on the project
// machine (fresh buffers that large are page-faulted in on every response).
// A short fetch.wait.max.ms does not matter to a broker that answers as soon
// as data is there, but tansu 0.6 appears to hold fetches for the full wait,
// which then bounds its consume rate (the default pass, 500 ms, shows that).
const TUNED_CONSUMER_SETTINGS: &[(&str, &str)] = &[
    ("fetch.wait.max.ms", "10"),
    ("fetch.queue.backoff.ms", "0"),
    ("queued.min.messages", "1000000"),
    ("queued.max.messages.kbytes", "262144"),
    ("fetch.max.bytes", "16777216"),
    ("max.partition.fetch.bytes", "4194304"),
];

/// One phase of one run.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    pub(crate) records: u64,
    bytes: u64,
    secs: f64,
    broker_cpu: f64,
    client_cpu: f64,
    pub(crate) valid: bool,
}

impl Sample {
    pub(crate) fn records_per_sec(&self) -> f64 {
        self.records as f64 / self.secs
    }
    fn mb_per_sec(&self) -> f64 {
        self.bytes as f64 / self.secs / 1e6
    }
    pub(crate) fn broker_cpu_per_million(&self) -> f64 {
        self.broker_cpu / (self.records as f64 / 1e6)
    }
    fn client_cpu_per_million(&self) -> f64 {
        self.client_cpu / (self.records as f64 / 1e6)
    }
}

/// Medians over the valid runs of one (broker, size, acks, phase).
struct Summary {
    records_per_sec: f64,
    mb_per_sec: f64,
    broker_cpu_per_million: f64,
    client_cpu_per_million: f64,
    valid: usize,
    total: usize,
}

fn summarize(samples: &[Sample]) -> Option<Summary> {
    let valid: Vec<&Sample> = samples.iter().filter(|s| s.valid).collect();
    if valid.is_empty() {
        return None;
    }
    let by = |f: fn(&Sample) -> f64| median(valid.iter().map(|s| f(s)).collect());
    Some(Summary {
        records_per_sec: by(Sample::records_per_sec),
        mb_per_sec: by(Sample::mb_per_sec),
        broker_cpu_per_million: by(Sample::broker_cpu_per_million),
        client_cpu_per_million: by(Sample::client_cpu_per_million),
        valid: valid.len(),
        total: samples.len(),
    })
}

/// The two record sizes measured (1/10 of the records with `--quick`).
fn workloads(args: &BrokerBenchArgs) -> [Workload; 2] {
    let scale = if args.quick { 10 } else { 1 };
    [
        Workload {
            size: 100,
            records: (args.records_100b / scale).max(1),
        },
        Workload {
            size: 1024,
            records: (args.records_1k / scale).max(1),
        },
    ]
}

/// Every run's samples and what went wrong, by broker.
struct Tally {
    /// (broker, workload, acks, phase) → one sample per run.
    results: BTreeMap<(usize, usize, usize, usize), Vec<Sample>>,
    problems: Vec<String>,
    /// Per broker, why it was left out of the remaining runs.
    failed: Vec<Option<String>>,
}

impl Tally {
    /// Prints and keeps one job's samples, or leaves its broker out of the
    /// remaining runs if it failed.
    fn record(
        &mut self,
        (bi, wi, ai): (usize, usize, usize),
        label: &str,
        broker: &str,
        outcome: anyhow::Result<Vec<Sample>>,
    ) {
        match outcome {
            Ok(samples) => {
                for (pi, s) in samples.into_iter().enumerate() {
                    println!(
                        "{label} {:<16} {:>12} rec/s {:>8.1} MB/s  broker {:>6.2} s/M  client {:>6.2} s/M{}",
                        PHASES[pi],
                        sluice::units::format_count(s.records_per_sec()),
                        s.mb_per_sec(),
                        s.broker_cpu_per_million(),
                        s.client_cpu_per_million(),
                        if s.valid { "" } else { "  INVALID" }
                    );
                    self.results.entry((bi, wi, ai, pi)).or_default().push(s);
                }
            }
            Err(e) => {
                let msg = format!("{}: {e:#}", label.trim_end());
                println!("{msg}");
                println!("  ({broker} is left out of the remaining runs)");
                self.problems.push(msg.clone());
                self.failed[bi] = Some(msg);
            }
        }
    }
}

pub fn run(args: BrokerBenchArgs) -> anyhow::Result<()> {
    let runs = args.runs.max(1);
    if args.acks.is_empty() {
        bail!("--acks is empty; give at least one of 0, 1, all");
    }
    let workloads = workloads(&args);
    let brokers = brokers_under_test(&args)?;
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("cannot create {}", args.dir.display()))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .context("cannot start the async runtime for the admin client")?;
    let payload = payload_source();
    let producer_settings = merge_settings(PRODUCER_SETTINGS, &args.producer_set);
    let tuned_consumer_settings = merge_settings(TUNED_CONSUMER_SETTINGS, &args.tuned_consumer_set);

    print_header(
        &args,
        &brokers,
        &workloads,
        runs,
        &producer_settings,
        &tuned_consumer_settings,
    );

    let mut tally = Tally {
        results: BTreeMap::new(),
        problems: Vec::new(),
        failed: vec![None; brokers.len()],
    };
    for run in 0..runs {
        for (wi, w) in workloads.iter().enumerate() {
            for (ai, &acks) in args.acks.iter().enumerate() {
                let mut order: Vec<usize> = (0..brokers.len()).collect();
                if run % 2 == 1 {
                    order.reverse();
                }
                for bi in order {
                    if tally.failed[bi].is_some() {
                        continue;
                    }
                    let b = &brokers[bi];
                    let label = format!(
                        "run {}/{runs} {:<6} {:>6} acks={:<3}",
                        run + 1,
                        b.name,
                        size_label(w.size),
                        acks
                    );
                    let job = Job {
                        spec: b,
                        workload: *w,
                        acks,
                        partitions: args.partitions,
                        dir: &args.dir,
                        run,
                        timeout: args.timeout,
                        payload: &payload,
                        rt: &rt,
                        producer_settings: &producer_settings,
                        tuned_consumer_settings: &tuned_consumer_settings,
                    };
                    let outcome = job.run(&mut tally.problems);
                    tally.record((bi, wi, ai), &label, b.name, outcome);
                }
            }
        }
    }

    print_table(&brokers, &workloads, &args.acks, &tally.results, runs);
    print_problems(&tally.problems);
    let _ = std::fs::remove_dir(&args.dir);
    let failures: Vec<&str> = tally.failed.iter().flatten().map(String::as_str).collect();
    if !failures.is_empty() {
        bail!(
            "{} of {} brokers failed: {}",
            failures.len(),
            brokers.len(),
            failures.join("; ")
        );
    }
    Ok(())
}

/// Sluice (this build's, or `--broker-bin`) and tansu when `--tansu` names
/// its binary.
fn brokers_under_test(args: &BrokerBenchArgs) -> anyhow::Result<Vec<BrokerSpec>> {
    let sluice_bin = match &args.broker_bin {
        Some(p) => p.clone(),
        None => crate::util::sluice_exe()?,
    };
    let mut brokers = vec![BrokerSpec {
        name: "sluice",
        kind: Kind::Sluice,
        bin: sluice_bin,
    }];
    if let Some(tansu) = &args.tansu {
        if !tansu.is_file() {
            bail!(
                "--tansu {}: no such file; build tansu first or leave out --tansu",
                tansu.display()
            );
        }
        brokers.push(BrokerSpec {
            name: "tansu",
            kind: Kind::Tansu,
            bin: tansu.clone(),
        });
    }
    for b in &brokers {
        if !b.bin.is_file() {
            bail!("{} binary {}: no such file", b.name, b.bin.display());
        }
    }
    Ok(brokers)
}

/// One broker, one record size, one acks setting, one run: start the broker,
/// create the topic, produce, consume twice, stop the broker.
struct Job<'a> {
    spec: &'a BrokerSpec,
    workload: Workload,
    acks: Acks,
    partitions: i32,
    dir: &'a Path,
    run: usize,
    timeout: Duration,
    payload: &'a [u8],
    rt: &'a tokio::runtime::Runtime,
    producer_settings: &'a [(String, String)],
    tuned_consumer_settings: &'a [(String, String)],
}

impl Job<'_> {
    fn run(&self, problems: &mut Vec<String>) -> anyhow::Result<Vec<Sample>> {
        let name = self.spec.name;
        let where_ = format!(
            "{name} run {} {} acks={}",
            self.run + 1,
            size_label(self.workload.size),
            self.acks
        );
        let data_dir = self.dir.join(format!(
            "{name}-run{}-{}b-acks{}",
            self.run + 1,
            self.workload.size,
            self.acks
        ));
        let mut broker = BrokerProcess::start(self.spec, &data_dir, self.timeout)?;
        let outcome = self.phases(&mut broker, problems);
        // A failed phase may have left the broker hung: no grace period then.
        let stopped = if outcome.is_ok() {
            broker.stop()
        } else {
            broker.kill();
            Ok(None)
        };
        // Whatever the broker said on stderr is a problem worth reading,
        // whether or not the phases succeeded; so is sluice's stdout beyond
        // its ready line, and tansu's stdout beyond its start-up banner.
        let log = broker.output.lock().map(|l| l.clone()).unwrap_or_default();
        for line in log
            .lines
            .iter()
            .filter(|l| is_problem_line(self.spec.kind, l))
        {
            problems.push(format!("{where_}: broker output: {line}"));
        }
        if log.dropped > 0 {
            problems.push(format!(
                "{where_}: broker output: … {} more lines not kept",
                log.dropped
            ));
        }
        match stopped {
            Ok(None) => {}
            Ok(Some(note)) => problems.push(format!("{where_}: {note}")),
            Err(e) => problems.push(format!("{where_}: stopping the broker: {e:#}")),
        }
        outcome.map_err(|e| {
            let tail = log.tail(20);
            if tail.is_empty() || format!("{e:#}").contains(&tail) {
                e
            } else {
                anyhow!("{e:#}; {name}'s last output lines:\n{tail}")
            }
        })
    }

    fn phases(
        &self,
        broker: &mut BrokerProcess,
        problems: &mut Vec<String>,
    ) -> anyhow::Result<Vec<Sample>> {
        let name = broker.name;
        let topic = format!("bench-{}b-acks{}", self.workload.size, self.acks);
        let where_ = format!(
            "{name} run {} {} acks={}",
            self.run + 1,
            size_label(self.workload.size),
            self.acks
        );
        let events = create_topic(
            self.rt,
            &broker.bootstrap,
            &topic,
            self.partitions,
            self.timeout,
        )
        .with_context(|| format!("{name}: creating topic {topic}"))?;
        note_events(problems, &where_, "create topic", &events);

        let (produced, delivered, events) = self
            .produce(broker, &topic)
            .with_context(|| format!("{name}: produce phase"))?;
        note_events(problems, &where_, "produce", &events);
        if !produced.valid {
            problems.push(format!(
                "{where_}: produce: only {delivered} of {} records delivered (run invalid)",
                self.workload.records
            ));
        }
        let mut samples = vec![produced];
        for (phase, tuned) in [("consume default", false), ("consume tuned", true)] {
            let (mut sample, events) = self
                .consume(broker, &topic, delivered, tuned)
                .with_context(|| format!("{name}: {phase} phase"))?;
            note_events(problems, &where_, phase, &events);
            sample.valid &= produced.valid;
            samples.push(sample);
        }
        Ok(samples)
    }

    fn produce(
        &self,
        broker: &mut BrokerProcess,
        topic: &str,
    ) -> anyhow::Result<(Sample, u64, Vec<String>)> {
        let Workload { size, records } = self.workload;
        let producer = self.producer(broker, topic)?;
        let ctx = producer.context().clone();
        let mut watch = Watch::new(self.timeout, "records sent + delivery reports", 2 * records);
        let clock = PhaseClock::start(broker)?;
        let span = self.payload.len() - size;
        let mut refused = 0u64;
        let mut sent = 0u64;
        for i in 0..records {
            // Records differ from each other (a sliding window over random
            // bytes) and are spread round-robin over the partitions.
            let offset = (i as usize).wrapping_mul(7919) % span;
            let value = &self.payload[offset..offset + size];
            let mut record = BaseRecord::<[u8], [u8]>::to(topic)
                .payload(value)
                .partition((i % self.partitions as u64) as i32);
            loop {
                match producer.send(record) {
                    Ok(()) => {
                        sent += 1;
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                        record = r;
                        producer.poll(Duration::from_millis(5));
                        watch.tick(broker, sent + ctx.done())?;
                    }
                    Err((e, _)) => {
                        refused += 1;
                        ctx.note(format!("send refused: {e}"));
                        break;
                    }
                }
            }
            if i % 4096 == 4095 {
                producer.poll(Duration::ZERO);
                watch.tick(broker, sent + ctx.done())?;
            }
        }
        // Every delivery report, success or failure, before the clock stops.
        while producer.in_flight_count() > 0 {
            producer.poll(Duration::from_millis(20));
            watch.tick(broker, sent + ctx.done())?;
        }
        let delivered = ctx.delivered.load(Relaxed);
        let failed = ctx.failed.load(Relaxed);
        let mut events = ctx.take_events();
        if failed > 0 || refused > 0 {
            events.push(format!(
                "{failed} delivery failures, {refused} records refused by the client"
            ));
        }
        let valid = failed == 0 && refused == 0 && delivered == records;
        let sample = clock.stop(broker, delivered, delivered * size as u64, valid)?;
        Ok((sample, delivered, events))
    }

    /// A producer connected to `broker` that knows the topic's leaders, so
    /// connecting is not timed.
    fn producer(
        &self,
        broker: &BrokerProcess,
        topic: &str,
    ) -> anyhow::Result<BaseProducer<BenchContext>> {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &broker.bootstrap)
            .set("acks", self.acks.to_string())
            .set(
                "queue.buffering.max.messages",
                self.workload
                    .records
                    .clamp(100_000, 2_000_000_000)
                    .to_string(),
            );
        for (k, v) in self.producer_settings {
            config.set(k, v);
        }
        let producer: BaseProducer<BenchContext> = config
            .create_with_context(BenchContext::default())
            .context("cannot create the producer")?;
        producer
            .client()
            .fetch_metadata(Some(topic), self.timeout)
            .context("no metadata for the topic")?;
        Ok(producer)
    }

    /// A consumer of every partition of the topic from the beginning
    /// (assigned, not yet started), with the tuned settings if `tuned`.
    fn consumer(
        &self,
        broker: &BrokerProcess,
        topic: &str,
        tuned: bool,
    ) -> anyhow::Result<(BaseConsumer<BenchContext>, TopicPartitionList)> {
        let mut config = ClientConfig::new();
        // assign() needs a group id; nothing is committed and no group is joined.
        config
            .set("bootstrap.servers", &broker.bootstrap)
            .set("group.id", "sluice-bench")
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false");
        if tuned {
            for (k, v) in self.tuned_consumer_settings {
                config.set(k, v);
            }
        }
        let consumer: BaseConsumer<BenchContext> = config
            .create_with_context(BenchContext::default())
            .context("cannot create the consumer")?;
        consumer
            .fetch_metadata(Some(topic), self.timeout)
            .context("no metadata for the topic")?;
        let mut assignment = TopicPartitionList::new();
        for p in 0..self.partitions {
            assignment
                .add_partition_offset(topic, p, Offset::Beginning)
                .context("cannot build the assignment")?;
        }
        Ok((consumer, assignment))
    }

    fn consume(
        &self,
        broker: &mut BrokerProcess,
        topic: &str,
        target: u64,
        tuned: bool,
    ) -> anyhow::Result<(Sample, Vec<String>)> {
        let (consumer, assignment) = self.consumer(broker, topic, tuned)?;
        let mut watch = Watch::new(self.timeout, "records consumed", target);
        let clock = PhaseClock::start(broker)?;
        consumer
            .assign(&assignment)
            .context("cannot assign the partitions")?;
        let size = self.workload.size;
        let (mut count, mut bytes, mut errors, mut wrong_size) = (0u64, 0u64, 0u64, 0u64);
        while count < target {
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(m)) => {
                    count += 1;
                    let len = m.payload_len();
                    bytes += len as u64;
                    if len != size {
                        wrong_size += 1;
                    }
                    if count % 4096 == 0 {
                        watch.tick(broker, count)?;
                    }
                }
                Some(Err(e)) => {
                    errors += 1;
                    consumer.context().note(format!("consumer error: {e}"));
                    watch.tick(broker, count)?;
                }
                None => watch.tick(broker, count)?,
            }
        }
        let mut events = consumer.context().take_events();
        if wrong_size > 0 {
            events.push(format!(
                "{wrong_size} records had a value size other than {size} (run invalid)"
            ));
        }
        if errors > 0 {
            events.push(format!("{errors} consumer errors (run invalid)"));
        }
        let sample = clock.stop(broker, count, bytes, errors == 0 && wrong_size == 0)?;
        Ok((sample, events))
    }
}

/// The command that starts `spec`'s broker on `data_dir`, and the port it
/// will listen on when it does not say (tansu); sluice picks its own and
/// prints it.
fn broker_command(spec: &BrokerSpec, data_dir: &Path) -> anyhow::Result<(Command, Option<u16>)> {
    let mut cmd = Command::new(&spec.bin);
    let port = match spec.kind {
        Kind::Sluice => {
            cmd.arg("broker")
                .arg("--listen")
                .arg("127.0.0.1:0")
                .arg("--data-dir")
                .arg(data_dir)
                .args(["--log", "warn"])
                .env_remove("SLUICE_LOG")
                .env_remove("SLUICE_DATA_DIR");
            None
        }
        Kind::Tansu => {
            let port = free_port()?;
            let url = format!("tcp://127.0.0.1:{port}");
            cmd.arg("broker")
                .args(["--storage-engine", "memory://tansu/"])
                .arg("--listener-url")
                .arg(&url)
                .arg("--advertised-listener-url")
                .arg(&url)
                .current_dir(data_dir);
            if std::env::var_os("RUST_LOG").is_none() {
                cmd.env("RUST_LOG", "warn");
            }
            Some(port)
        }
    };
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: prctl is async-signal-safe; the child dies with us even if
    // we are killed without running destructors.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    Ok((cmd, port))
}

/// Wall clock and CPU time (the broker's and this process's) of one phase.
pub(crate) struct PhaseClock {
    broker_cpu: f64,
    client_cpu: f64,
    started: Instant,
}

impl PhaseClock {
    pub(crate) fn start(broker: &BrokerProcess) -> anyhow::Result<PhaseClock> {
        Ok(PhaseClock {
            broker_cpu: broker.cpu_secs()?,
            client_cpu: self_cpu_secs(),
            started: Instant::now(),
        })
    }

    /// The phase's sample, from what it moved and whether it was valid.
    pub(crate) fn stop(
        self,
        broker: &BrokerProcess,
        records: u64,
        bytes: u64,
        valid: bool,
    ) -> anyhow::Result<Sample> {
        let secs = self.started.elapsed().as_secs_f64();
        Ok(Sample {
            records,
            bytes,
            secs,
            broker_cpu: broker.cpu_secs()? - self.broker_cpu,
            client_cpu: self_cpu_secs() - self.client_cpu,
            valid,
        })
    }
}

fn note_events(problems: &mut Vec<String>, where_: &str, phase: &str, events: &[String]) {
    for e in dedup_counted(events) {
        problems.push(format!("{where_}: {phase}: client: {e}"));
    }
}

/// Identical lines once, with a count.
fn dedup_counted(lines: &[String]) -> Vec<String> {
    let mut seen: Vec<(String, usize)> = Vec::new();
    for l in lines {
        match seen.iter_mut().find(|(s, _)| s == l) {
            Some((_, n)) => *n += 1,
            None => seen.push((l.clone(), 1)),
        }
    }
    seen.into_iter()
        .map(|(l, n)| if n > 1 { format!("{l} (×{n})") } else { l })
        .collect()
}

/// Fails a phase that makes no progress for `stall`, that runs longer than
/// ten times that in total, or whose broker dies.
pub(crate) struct Watch {
    stall: Duration,
    started: Instant,
    last_progress: u64,
    last_change: Instant,
    last_check: Instant,
    what: &'static str,
    total: u64,
}

impl Watch {
    pub(crate) fn new(stall: Duration, what: &'static str, total: u64) -> Watch {
        let now = Instant::now();
        Watch {
            stall,
            started: now,
            last_progress: 0,
            last_change: now,
            last_check: now,
            what,
            total,
        }
    }

    pub(crate) fn tick(&mut self, broker: &mut BrokerProcess, progress: u64) -> anyhow::Result<()> {
        let now = Instant::now();
        if progress != self.last_progress {
            self.last_progress = progress;
            self.last_change = now;
        }
        if now.duration_since(self.last_check) < Duration::from_millis(250) {
            return Ok(());
        }
        self.last_check = now;
        broker.check_alive()?;
        if now.duration_since(self.last_change) > self.stall {
            bail!(
                "stalled: no progress for {:.0} s ({} {} of {})",
                self.stall.as_secs_f64(),
                self.what,
                self.last_progress,
                self.total
            );
        }
        if now.duration_since(self.started) > self.stall * 10 {
            bail!(
                "did not finish within {:.0} s ({} {} of {})",
                (self.stall * 10).as_secs_f64(),
                self.what,
                self.last_progress,
                self.total
            );
        }
        Ok(())
    }
}

/// librdkafka callbacks: delivery reports are counted; warnings and errors
/// are kept to be reported.
#[derive(Default)]
pub(crate) struct BenchContext {
    pub(crate) delivered: AtomicU64,
    pub(crate) failed: AtomicU64,
    events: Mutex<Vec<String>>,
}

impl BenchContext {
    pub(crate) fn done(&self) -> u64 {
        self.delivered.load(Relaxed) + self.failed.load(Relaxed)
    }
    pub(crate) fn note(&self, event: String) {
        if let Ok(mut events) = self.events.lock()
            && events.len() < 1000
        {
            events.push(event);
        }
    }
    pub(crate) fn take_events(&self) -> Vec<String> {
        self.events
            .lock()
            .map(|mut e| std::mem::take(&mut *e))
            .unwrap_or_default()
    }
}

impl ClientContext for BenchContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error
            | RDKafkaLogLevel::Warning => {
                self.note(format!("librdkafka {level:?} {fac}: {message}"))
            }
            _ => {}
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.note(format!("librdkafka error: {error}: {reason}"));
    }
}

impl ConsumerContext for BenchContext {}

impl ProducerContext for BenchContext {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => {
                self.delivered.fetch_add(1, Relaxed);
            }
            Err((e, _)) => {
                if self.failed.fetch_add(1, Relaxed) < 10 {
                    self.note(format!("delivery failed: {e}"));
                }
            }
        }
    }
}

/// Creates the topic and waits until its metadata shows every partition
/// with a leader. Returns the client's warnings.
pub(crate) fn create_topic(
    rt: &tokio::runtime::Runtime,
    bootstrap: &str,
    topic: &str,
    partitions: i32,
    timeout: Duration,
) -> anyhow::Result<Vec<String>> {
    let admin: AdminClient<BenchContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create_with_context(BenchContext::default())
        .context("cannot create the admin client")?;
    let new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let options = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(30)))
        .request_timeout(Some(timeout));
    let results = rt
        .block_on(async {
            tokio::time::timeout(timeout, admin.create_topics([&new_topic], &options)).await
        })
        .map_err(|_| {
            anyhow!(
                "no CreateTopics answer within {:.0} s",
                timeout.as_secs_f64()
            )
        })?
        .context("CreateTopics failed")?;
    for result in results {
        if let Err((name, code)) = result {
            bail!("CreateTopics refused {name}: {code}");
        }
    }
    let deadline = Instant::now() + timeout;
    loop {
        let state = match admin
            .inner()
            .fetch_metadata(Some(topic), Duration::from_secs(5))
        {
            Ok(md) => match md.topics().iter().find(|t| t.name() == topic) {
                Some(t) if t.error().is_some() => format!("topic error {:?}", t.error()),
                Some(t) if t.partitions().len() != partitions as usize => {
                    format!("{} partitions", t.partitions().len())
                }
                Some(t) => match t
                    .partitions()
                    .iter()
                    .find(|p| p.leader() < 0 || p.error().is_some())
                {
                    Some(p) => format!(
                        "partition {} leader {} error {:?}",
                        p.id(),
                        p.leader(),
                        p.error()
                    ),
                    None => return Ok(admin.inner().context().take_events()),
                },
                None => "topic missing from metadata".into(),
            },
            Err(e) => format!("metadata request failed: {e}"),
        };
        if Instant::now() > deadline {
            bail!(
                "topic {topic} not ready {:.0} s after it was created: {state}",
                timeout.as_secs_f64()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What a broker child printed; the first lines are kept.
#[derive(Default, Clone)]
struct OutputLog {
    lines: Vec<String>,
    dropped: usize,
}

const KEPT_OUTPUT_LINES: usize = 200;

impl OutputLog {
    fn push(&mut self, line: String) {
        if self.lines.len() < KEPT_OUTPUT_LINES {
            self.lines.push(line);
        } else {
            self.dropped += 1;
        }
    }
    fn tail(&self, n: usize) -> String {
        let start = self.lines.len().saturating_sub(n);
        self.lines[start..].join("\n")
    }
}

/// A broker running as a child process; killed when dropped.
pub(crate) struct BrokerProcess {
    name: &'static str,
    child: Child,
    pid: i32,
    pub(crate) bootstrap: String,
    output: Arc<Mutex<OutputLog>>,
    data_dir: PathBuf,
    stopped: bool,
}

impl BrokerProcess {
    pub(crate) fn start(
        spec: &BrokerSpec,
        data_dir: &Path,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        let name = spec.name;
        if data_dir.exists() {
            std::fs::remove_dir_all(data_dir)
                .with_context(|| format!("cannot empty {}", data_dir.display()))?;
        }
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("cannot create {}", data_dir.display()))?;
        let (mut cmd, port) = broker_command(spec, data_dir)?;
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name} ({})", spec.bin.display()))?;
        let pid = i32::try_from(child.id()).context("pid out of range")?;
        let output = Arc::new(Mutex::new(OutputLog::default()));
        let (lines_tx, lines_rx) = mpsc::channel();
        let stdout = child.stdout.take().context("no stdout pipe")?;
        let stderr = child.stderr.take().context("no stderr pipe")?;
        forward_lines(stdout, output.clone(), STDOUT_TAG, Some(lines_tx));
        forward_lines(stderr, output.clone(), STDERR_TAG, None);
        let mut broker = BrokerProcess {
            name,
            child,
            pid,
            bootstrap: String::new(),
            output,
            data_dir: data_dir.to_path_buf(),
            stopped: false,
        };
        let ready = match port {
            None => broker.wait_for_listening_line(&lines_rx, timeout),
            Some(port) => broker
                .wait_for_port(port, timeout)
                .map(|()| format!("127.0.0.1:{port}")),
        };
        let addr = ready.map_err(|e| {
            let tail = broker.output_tail(20);
            if tail.is_empty() {
                anyhow!("{e:#} ({name} printed nothing)")
            } else {
                anyhow!("{e:#}; {name}'s output:\n{tail}")
            }
        })?;
        broker.bootstrap = addr;
        Ok(broker)
    }

    /// sluice prints `sluice broker listening on ADDR` once it serves.
    fn wait_for_listening_line(
        &mut self,
        lines: &Receiver<String>,
        timeout: Duration,
    ) -> anyhow::Result<String> {
        const PREFIX: &str = "sluice broker listening on ";
        let deadline = Instant::now() + timeout;
        loop {
            match lines.recv_timeout(Duration::from_millis(100)) {
                Ok(line) => {
                    if let Some(addr) = line.trim().strip_prefix(PREFIX) {
                        return Ok(addr.to_string());
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                // stdout closed: the process is exiting; check_alive says how.
                Err(RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(Duration::from_millis(50))
                }
            }
            self.check_alive().context("while starting")?;
            if Instant::now() > deadline {
                bail!(
                    "{} did not print {PREFIX:?} within {:.0} s",
                    self.name,
                    timeout.as_secs_f64()
                );
            }
        }
    }

    /// tansu is ready when its port accepts connections.
    fn wait_for_port(&mut self, port: u16, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let addr = ([127, 0, 0, 1], port).into();
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            self.check_alive().context("while starting")?;
            if Instant::now() > deadline {
                bail!(
                    "{} did not accept connections on 127.0.0.1:{port} within {:.0} s",
                    self.name,
                    timeout.as_secs_f64()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn output_tail(&self, lines: usize) -> String {
        self.output
            .lock()
            .map(|l| l.tail(lines))
            .unwrap_or_default()
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => {
                self.stopped = true;
                // Let the readers catch the last lines.
                std::thread::sleep(Duration::from_millis(100));
                let tail = self.output_tail(20);
                let said = if tail.is_empty() {
                    " and printed nothing".to_string()
                } else {
                    format!("; its last output lines:\n{tail}")
                };
                Err(anyhow!(
                    "{} (pid {}) exited unexpectedly ({status}){said}",
                    self.name,
                    self.pid
                ))
            }
            Err(e) => Err(anyhow!(
                "cannot check on {} (pid {}): {e}",
                self.name,
                self.pid
            )),
        }
    }

    fn cpu_secs(&self) -> anyhow::Result<f64> {
        proc_cpu_secs(self.pid).with_context(|| {
            format!(
                "cannot read the CPU time of {} (pid {})",
                self.name, self.pid
            )
        })
    }

    pub(crate) fn kill(&mut self) {
        self.stopped = true;
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then SIGKILL if it has not exited within 20 s. Returns a
    /// note when the stop was not clean.
    pub(crate) fn stop(&mut self) -> anyhow::Result<Option<String>> {
        if self.stopped {
            return Ok(None);
        }
        self.stopped = true;
        if let Some(status) = self.child.try_wait()? {
            return Ok(Some(format!("{} had already exited ({status})", self.name)));
        }
        // SAFETY: signalling our own child, which has not been reaped.
        unsafe {
            libc::kill(self.pid, libc::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Ok((!status.success())
                    .then(|| format!("{} exited with {status} after SIGTERM", self.name)));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        Ok(Some(format!(
            "{} did not exit within 20 s of SIGTERM; killed",
            self.name
        )))
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        if !self.stopped {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

const STDOUT_TAG: &str = "[stdout] ";
const STDERR_TAG: &str = "[stderr] ";

fn is_problem_line(kind: Kind, line: &str) -> bool {
    let Some(text) = line.strip_prefix(STDOUT_TAG) else {
        return !line
            .strip_prefix(STDERR_TAG)
            .unwrap_or(line)
            .trim()
            .is_empty();
    };
    if text.trim().is_empty() {
        return false;
    }
    match kind {
        Kind::Sluice => true,
        Kind::Tansu => {
            let lower = text.to_ascii_lowercase();
            ["warn", "error", "panic", "fail"]
                .iter()
                .any(|w| lower.contains(w))
        }
    }
}

/// Reads a child's output line by line into `log`, each line tagged with
/// `tag` (and sends it untagged to `tx`, if given).
fn forward_lines(
    stream: impl Read + Send + 'static,
    log: Arc<Mutex<OutputLog>>,
    tag: &'static str,
    tx: Option<mpsc::Sender<String>>,
) {
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stream);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf).trim_end().to_string();
                    let is_ready_line = line.starts_with("sluice broker listening on ");
                    if let Some(tx) = &tx {
                        let _ = tx.send(line.clone());
                    }
                    if !is_ready_line && let Ok(mut log) = log.lock() {
                        log.push(format!("{tag}{line}"));
                    }
                }
            }
        }
    });
}

fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// utime + stime of a process (all its threads), in seconds.
fn proc_cpu_secs(pid: i32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name, in parentheses, may contain spaces: count fields
    // after the last ')'. Field 3 (state) is the first there; utime and
    // stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')').context("malformed /proc/PID/stat")? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .context("short /proc/PID/stat")?
            .parse()
            .context("malformed /proc/PID/stat")
    };
    Ok((field(11)? + field(12)?) as f64 / clock_ticks_per_sec())
}

/// CPU time of this process: the client side (librdkafka's threads and ours).
fn self_cpu_secs() -> f64 {
    // SAFETY: getrusage writes into the zeroed struct we pass.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// 1 MiB of seeded pseudo-random bytes (plus room for the largest record):
/// values are windows into it, so they differ and do not compress.
pub(crate) fn payload_source() -> Vec<u8> {
    let mut buf = vec![0u8; (1 << 20) + 1024 + 1];
    SmallRng::seed_from_u64(0x51_1CE).fill(&mut buf[..]);
    buf
}

fn size_label(size: usize) -> String {
    if size >= 1024 && size.is_multiple_of(1024) {
        format!("{} KiB", size / 1024)
    } else {
        format!("{size} B")
    }
}

fn read_machine() -> (usize, String, String) {
    let nproc = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == "model name").then(|| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            let line = m.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
            Some(format!("{:.1} GiB RAM", kib as f64 / (1024.0 * 1024.0)))
        })
        .unwrap_or_default();
    (nproc, model, mem)
}

fn shell_quote(arg: &str) -> String {
    let plain = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@%+".contains(c));
    if plain {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', r"'\''"))
    }
}

fn print_header(
    args: &BrokerBenchArgs,
    brokers: &[BrokerSpec],
    workloads: &[Workload],
    runs: usize,
    producer_settings: &[(String, String)],
    tuned_consumer_settings: &[(String, String)],
) {
    let (nproc, model, mem) = read_machine();
    let command: Vec<String> = std::env::args().map(|a| shell_quote(&a)).collect();
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    println!("sluice-bench broker");
    println!("command:   {}", command.join(" "));
    println!(
        "machine:   {nproc} CPUs ({model}), {mem}, Linux {}",
        kernel.trim()
    );
    println!(
        "client:    librdkafka {}",
        rdkafka::util::get_rdkafka_version().1
    );
    for b in brokers {
        let how = match b.kind {
            Kind::Sluice => "broker --listen 127.0.0.1:0 --data-dir DIR --log warn",
            Kind::Tansu => {
                "broker --storage-engine memory://tansu/ --listener-url/--advertised-listener-url tcp://127.0.0.1:PORT"
            }
        };
        println!("broker:    {} = {} {how}", b.name, b.bin.display());
    }
    println!("workload:  {}", workload_line(args, workloads, runs));
    let queue_default = if producer_settings
        .iter()
        .any(|(k, _)| k == "queue.buffering.max.messages")
    {
        ""
    } else {
        ", queue.buffering.max.messages=max(records,100000)"
    };
    println!(
        "producer:  BaseProducer, {}{queue_default}",
        settings_line(producer_settings)
    );
    println!(
        "consumer:  BaseConsumer assign() from the beginning; default = librdkafka defaults; tuned = {}",
        settings_line(tuned_consumer_settings)
    );
    println!(
        "measures:  wall clock per phase (produce: first send to last delivery report; consume: assign to last record); \
MB/s of values; CPU s per million records (broker: /proc/PID/stat utime+stime; client: this process)"
    );
    println!();
}

/// What each run moves, on how many partitions, with which acks.
fn workload_line(args: &BrokerBenchArgs, workloads: &[Workload], runs: usize) -> String {
    let sizes: Vec<String> = workloads
        .iter()
        .map(|w| {
            format!(
                "{} × {}",
                sluice::units::format_count(w.records as f64),
                size_label(w.size)
            )
        })
        .collect();
    let acks: Vec<String> = args.acks.iter().map(|a| a.to_string()).collect();
    format!(
        "{} ; {} partitions, round-robin, no keys; acks {} ; median of {runs} runs{}",
        sizes.join(", "),
        args.partitions,
        acks.join(","),
        if args.quick {
            " (--quick: 1/10 of the records)"
        } else {
            ""
        }
    )
}

fn settings_line(settings: &[(String, String)]) -> String {
    settings
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn print_table(
    brokers: &[BrokerSpec],
    workloads: &[Workload],
    acks: &[Acks],
    results: &BTreeMap<(usize, usize, usize, usize), Vec<Sample>>,
    runs: usize,
) {
    println!();
    println!("medians of {runs} runs (valid runs only)");
    println!(
        "{:<7} {:>6} {:>4}  {:<16} {:>12} {:>9} {:>14} {:>14} {:>6}",
        "broker",
        "record",
        "acks",
        "phase",
        "records/s",
        "MB/s",
        "broker CPU s/M",
        "client CPU s/M",
        "valid"
    );
    for (wi, w) in workloads.iter().enumerate() {
        for (ai, a) in acks.iter().enumerate() {
            for (pi, phase) in PHASES.iter().enumerate() {
                for (bi, b) in brokers.iter().enumerate() {
                    let Some(samples) = results.get(&(bi, wi, ai, pi)) else {
                        println!(
                            "{:<7} {:>6} {:>4}  {:<16} {:>12}",
                            b.name,
                            size_label(w.size),
                            a,
                            phase,
                            "failed"
                        );
                        continue;
                    };
                    match summarize(samples) {
                        Some(s) => println!(
                            "{:<7} {:>6} {:>4}  {:<16} {:>12} {:>9.1} {:>14.3} {:>14.3} {:>6}",
                            b.name,
                            size_label(w.size),
                            a,
                            phase,
                            sluice::units::format_count(s.records_per_sec),
                            s.mb_per_sec,
                            s.broker_cpu_per_million,
                            s.client_cpu_per_million,
                            format!("{}/{}", s.valid, s.total)
                        ),
                        None => println!(
                            "{:<7} {:>6} {:>4}  {:<16} {:>12} {:>9} {:>14} {:>14} {:>6}",
                            b.name,
                            size_label(w.size),
                            a,
                            phase,
                            "INVALID",
                            "",
                            "",
                            "",
                            format!("0/{}", samples.len())
                        ),
                    }
                }
            }
        }
    }
    if brokers.len() >= 2 {
        print_ratios(workloads, acks, results);
    }
}

/// The first broker's medians over the second's (sluice / tansu).
fn print_ratios(
    workloads: &[Workload],
    acks: &[Acks],
    results: &BTreeMap<(usize, usize, usize, usize), Vec<Sample>>,
) {
    println!();
    println!(
        "sluice / tansu (ratio of medians; records/s > 1 and broker CPU per record < 1 favour sluice)"
    );
    println!(
        "{:>6} {:>4}  {:<16} {:>10} {:>18}",
        "record", "acks", "phase", "records/s", "broker CPU/record"
    );
    for (wi, w) in workloads.iter().enumerate() {
        for (ai, a) in acks.iter().enumerate() {
            for (pi, phase) in PHASES.iter().enumerate() {
                let get = |bi| results.get(&(bi, wi, ai, pi)).and_then(|s| summarize(s));
                let (Some(s), Some(t)) = (get(0), get(1)) else {
                    println!(
                        "{:>6} {:>4}  {:<16} {:>10}",
                        size_label(w.size),
                        a,
                        phase,
                        "n/a"
                    );
                    continue;
                };
                println!(
                    "{:>6} {:>4}  {:<16} {:>9.2}× {:>17.2}×",
                    size_label(w.size),
                    a,
                    phase,
                    s.records_per_sec / t.records_per_sec,
                    s.broker_cpu_per_million / t.broker_cpu_per_million
                );
            }
        }
    }
}

fn print_problems(problems: &[String]) {
    println!();
    if problems.is_empty() {
        println!("problems: none (no broker output on stderr, no client warnings or errors)");
        return;
    }
    let lines = dedup_counted(problems);
    println!("problems observed ({} distinct):", lines.len());
    for line in lines.iter().take(200) {
        println!("  {line}");
    }
    if lines.len() > 200 {
        println!("  … {} more", lines.len() - 200);
    }
}
