//! `sluice produce`: lines from stdin, a file, or a followed log file become
//! records, batched per partition and appended to the embedded store.

use std::fs::File;
use std::io::{self, BufRead, BufReader};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;

use super::common::{StoreArgs, open_store, stop_flag};
use crate::common::now_ms;
use crate::log::{LogStore, Partition, Topic};
use crate::producer::{
    BATCH_HEADER_BYTES, BatchBuilder, Compression, FollowStart, LineFollower, Partitioner,
    UnkeyedStrategy, parse_compression, parse_key_separator, split_key_value, trim_line_ending,
};

#[derive(Debug, Args)]
pub struct ProduceArgs {
    /// Topic to produce to.
    pub topic: String,
    /// Read lines from this file instead of stdin.
    #[arg(long, conflicts_with = "follow")]
    pub file: Option<PathBuf>,
    /// Follow a growing file like `tail -F`: keep reading as lines are
    /// appended, across truncation and rotation, until SIGINT/SIGTERM.
    #[arg(long)]
    pub follow: Option<PathBuf>,
    /// With --follow: skip what the file holds now and send only new lines.
    #[arg(long, requires = "follow")]
    pub from_end: bool,
    /// Split each line into key and value at the first occurrence of this
    /// character (\t for tab). Lines without it have no key.
    #[arg(long, value_parser = parse_key_separator)]
    pub key_sep: Option<char>,
    /// Send every record to this partition instead of partitioning.
    #[arg(long)]
    pub partition: Option<i32>,
    /// How unkeyed records are spread: sticky (a batch at a time, Kafka's
    /// default) or round-robin (record by record). Keyed records always go
    /// where Kafka's murmur2 partitioner puts them.
    #[arg(long, default_value = "sticky", value_parser = ["sticky", "round-robin"])]
    pub partitioner: String,
    /// Compression of produced batches: none, gzip, snappy, lz4, zstd.
    #[arg(long, default_value = "none", value_parser = parse_compression)]
    pub compression: Compression,
    /// Most records per batch.
    #[arg(long, default_value_t = 1000)]
    pub batch_records: usize,
    #[command(flatten)]
    pub store: StoreArgs,
}

/// Batches records per partition and appends them to the embedded store.
pub(crate) struct EmbeddedProducer {
    topic: Arc<Topic>,
    partitions: Vec<Arc<Partition>>,
    builders: Vec<BatchBuilder>,
    partitioner: Partitioner,
    fixed_partition: Option<u32>,
    batch_records: usize,
    batch_bytes: usize,
    /// Largest record that fits in a batch the topic accepts.
    max_record_bytes: usize,
    pub records: u64,
    pub bytes: u64,
    pub skipped: u64,
}

impl EmbeddedProducer {
    pub fn new(
        store: &LogStore,
        topic: &str,
        compression: Compression,
        strategy: UnkeyedStrategy,
        fixed_partition: Option<i32>,
        batch_records: usize,
    ) -> anyhow::Result<Self> {
        let topic = store.topic(topic)?;
        let partitions = topic.partitions();
        let fixed_partition = match fixed_partition {
            Some(p) => Some(topic.partition(p)?.id()),
            None => None,
        };
        let max_batch = topic.config().max_message_bytes as usize;
        Ok(EmbeddedProducer {
            builders: (0..partitions.len())
                .map(|_| BatchBuilder::new(compression))
                .collect(),
            topic,
            partitions,
            partitioner: Partitioner::new(strategy, 0),
            fixed_partition,
            batch_records: batch_records.max(1),
            batch_bytes: (max_batch - BATCH_HEADER_BYTES).min(1 << 20),
            max_record_bytes: max_batch.saturating_sub(BATCH_HEADER_BYTES + 64),
            records: 0,
            bytes: 0,
            skipped: 0,
        })
    }

    /// Queues one record; a full batch is appended at once.
    pub fn send(
        &mut self,
        key: Option<&[u8]>,
        value: &[u8],
        timestamp_ms: i64,
    ) -> anyhow::Result<()> {
        let size = value.len() + key.map_or(0, |k| k.len());
        if size > self.max_record_bytes {
            self.skipped += 1;
            tracing::error!(
                "skipping a record of {size} bytes: larger than the topic's max.message.bytes allows ({} bytes)",
                self.max_record_bytes
            );
            return Ok(());
        }
        let p = match self.fixed_partition {
            Some(p) => p,
            None => self
                .partitioner
                .partition(key, self.partitions.len() as u32),
        } as usize;
        let builder = &mut self.builders[p];
        if !builder.is_empty() && builder.size_bytes() + size > self.batch_bytes {
            self.flush_partition(p)?;
        }
        self.builders[p].push(key, value, timestamp_ms);
        if self.builders[p].len() >= self.batch_records {
            self.flush_partition(p)?;
        }
        Ok(())
    }

    fn flush_partition(&mut self, p: usize) -> anyhow::Result<()> {
        if self.builders[p].is_empty() {
            return Ok(());
        }
        let n = self.builders[p].len() as u64;
        let mut batch = self.builders[p]
            .finish()
            .context("cannot encode a record batch")?;
        let partition = &self.partitions[p];
        partition
            .append(&mut batch)
            .with_context(|| format!("cannot append to {}-{}", self.topic.name(), p))?;
        self.records += n;
        self.bytes += batch.len() as u64;
        // Sticky partitioning moves on once a batch is sent, as Kafka's does.
        self.partitioner.on_batch_complete();
        Ok(())
    }

    /// Appends every partly filled batch.
    pub fn flush(&mut self) -> anyhow::Result<()> {
        for p in 0..self.builders.len() {
            self.flush_partition(p)?;
        }
        Ok(())
    }
}

pub fn run(args: ProduceArgs) -> anyhow::Result<()> {
    let strategy = match args.partitioner.as_str() {
        "round-robin" => UnkeyedStrategy::RoundRobin,
        _ => UnkeyedStrategy::Sticky,
    };
    let following = args.follow.is_some();
    let store = open_store(&args.store.data_dir, following)?;
    let mut producer = EmbeddedProducer::new(
        &store,
        &args.topic,
        args.compression,
        strategy,
        args.partition,
        args.batch_records,
    )?;
    let started = Instant::now();
    if let Some(path) = &args.follow {
        follow(&mut producer, path, args.from_end, args.key_sep)?;
    } else {
        let input: Box<dyn BufRead> = match &args.file {
            Some(path) => Box::new(BufReader::with_capacity(
                1 << 20,
                File::open(path).with_context(|| format!("cannot open {}", path.display()))?,
            )),
            None => Box::new(BufReader::with_capacity(1 << 20, io::stdin().lock())),
        };
        produce_lines(&mut producer, input, args.key_sep)?;
    }
    producer.flush()?;
    store
        .close()
        .context("cannot close the log store cleanly")?;
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    eprintln!(
        "Produced {} records ({} bytes) to {} in {:.2}s ({:.0} records/s).",
        producer.records,
        producer.bytes,
        args.topic,
        secs,
        producer.records as f64 / secs
    );
    if producer.skipped > 0 {
        bail!(
            "{} record(s) were larger than the topic's max.message.bytes and were not produced",
            producer.skipped
        );
    }
    Ok(())
}

fn produce_lines(
    producer: &mut EmbeddedProducer,
    mut input: impl BufRead,
    key_sep: Option<char>,
) -> anyhow::Result<()> {
    let mut line = Vec::with_capacity(4096);
    loop {
        line.clear();
        let n = input
            .read_until(b'\n', &mut line)
            .context("cannot read input")?;
        if n == 0 {
            return Ok(());
        }
        let text = trim_line_ending(&line);
        let (key, value) = split_key_value(text, key_sep);
        producer.send(key, value, now_ms())?;
    }
}

fn follow(
    producer: &mut EmbeddedProducer,
    path: &PathBuf,
    from_end: bool,
    key_sep: Option<char>,
) -> anyhow::Result<()> {
    let stop = stop_flag()?;
    let start = if from_end {
        FollowStart::End
    } else {
        FollowStart::Beginning
    };
    let mut follower = LineFollower::open(path, start)
        .with_context(|| format!("cannot follow {}", path.display()))?;
    let mut lines = Vec::new();
    eprintln!("Following {} (Ctrl-C to stop)…", path.display());
    loop {
        let stopping = stop.load(Ordering::Relaxed);
        lines.clear();
        let n = follower
            .poll_lines(&mut lines, 10_000)
            .with_context(|| format!("cannot read {}", path.display()))?;
        for line in &lines {
            let (key, value) = split_key_value(line, key_sep);
            producer.send(key, value, now_ms())?;
        }
        if n == 0 {
            // Idle: send what is pending rather than holding it (linger).
            producer.flush()?;
            if stopping {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}
