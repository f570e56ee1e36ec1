//! `sluice wordcount` and `sluice demo wordcount`: word count as a
//! streaming job, with counts in the result table `<job>` of the job's
//! checkpoint.

use std::io::BufRead;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;

use super::common::{StoreArgs, open_store, stop_flag};
use super::job::{JobArgs, WorkersArgs};
use super::produce::EmbeddedProducer;
use crate::common::now_ms;
use crate::corpus::CorpusGenerator;
use crate::driver::StreamingContext;
use crate::log::TopicConfig;
use crate::plan::{DStream, Emitter};
use crate::producer::{Compression, UnkeyedStrategy};
use crate::source::Record;

#[derive(Debug, clap::Args)]
pub struct WordcountArgs {
    /// Topic to count the words of (record values, split on whitespace).
    #[arg(long, required_unless_present_any = ["socket", "files"])]
    pub topic: Option<String>,
    /// Count lines arriving on a TCP socket instead (Spark's
    /// socketTextStream, e.g. `nc -lk 9999`). Not replayable: lines that
    /// arrived but were not committed are lost if the job crashes.
    #[arg(long, value_name = "HOST:PORT", conflicts_with_all = ["topic", "files", "brokers", "data_dir"])]
    pub socket: Option<String>,
    /// Count the lines of new files in a directory instead (Spark's
    /// textFileStream; write files elsewhere and rename them in). Not
    /// replayable across restarts.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["topic", "socket", "brokers", "data_dir"])]
    pub files: Option<PathBuf>,
    /// Read through a Kafka broker (host:port) instead of the embedded store.
    #[arg(long, conflicts_with = "data_dir")]
    pub brokers: Option<String>,
    /// Data directory of the embedded store.
    #[arg(long, env = "SLUICE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Commit offsets to this consumer group (for lag monitors only; the
    /// job's own offsets live in its checkpoint). Kafka source only.
    #[arg(long)]
    pub group: Option<String>,
    /// Print each batch's top words.
    #[arg(long, default_value_t = 0)]
    pub top: usize,
    /// Count over a sliding window of this length instead of since the
    /// start (Spark's windowed word count, `reduceByKeyAndWindow`): the
    /// result table holds each word's count over the last window. A whole
    /// number of batch intervals.
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with_all = ["socket", "files"])]
    pub window: Option<Duration>,
    /// How often the window moves (default: every batch).
    #[arg(long, value_parser = humantime::parse_duration, requires = "window")]
    pub slide: Option<Duration>,
    #[command(flatten)]
    pub workers: WorkersArgs,
    #[command(flatten)]
    pub job: JobArgs,
}

/// The word-count job: split values on whitespace, count per batch, fold
/// into the result table `table`. Returns the per-batch counts.
pub fn wordcount(lines: &DStream<Record>, table: &str) -> DStream<(String, u64)> {
    let counts = lines
        .flat_map(|record, out: &mut Emitter<(String, u64)>| {
            for word in record.value_words() {
                out.push((word, 1u64));
            }
        })
        .reduce_by_key(|a, b| a + b);
    counts.sum_into_table(table);
    counts
}

/// Word count over a sliding window: each batch adds its counts and takes
/// off those of the batch that left the window, and the result table
/// `table` holds every word's count over the window (0 once it left).
/// Returns the windowed counts, every `slide`.
pub fn windowed_wordcount(
    lines: &DStream<Record>,
    table: &str,
    window: Duration,
    slide: Duration,
) -> DStream<(String, u64)> {
    let counts = lines
        .flat_map(|record, out: &mut Emitter<(String, u64)>| {
            for word in record.value_words() {
                out.push((word, 1u64));
            }
        })
        .reduce_by_key_and_window(
            |a, b| a + b,
            Some(Box::new(|total, left| total - left)),
            window,
            slide,
        );
    counts.save_to_table(table);
    counts
}

/// Prints the batch's most frequent words.
fn print_top(counts: &DStream<(String, u64)>, n: usize) {
    counts.print_with(move |info, chunks| {
        // Borrowed words, and only the top n sorted: a demo batch changes
        // ~26 k words, and owning and sorting them all was 3.7 ms of it.
        let readers = chunks
            .iter()
            .map(|c| <(String, u64) as crate::plan::Data>::reader(c.columns()))
            .collect::<Result<Vec<_>, _>>()?;
        let mut rows: Vec<(u64, &str)> = Vec::new();
        for (reader, c) in readers.iter().zip(chunks) {
            for i in 0..c.num_rows() {
                let (w, k) = <(String, u64) as crate::plan::Data>::get(reader, i);
                rows.push((k, w));
            }
        }
        let order = |a: &(u64, &str), b: &(u64, &str)| b.0.cmp(&a.0).then_with(|| a.1.cmp(b.1));
        if rows.len() > n && n > 0 {
            rows.select_nth_unstable_by(n - 1, order);
        }
        rows.truncate(n.max(1));
        rows.sort_by(order);
        let mut text = crate::sink::console::header(info.batch_id, info.batch_time_ms);
        text.push('\n');
        for (count, word) in rows.iter().take(n) {
            text.push_str(&format!("{word:>12}  {count}\n"));
        }
        if rows.is_empty() {
            text.push_str("(no words in this batch)\n");
        }
        Ok(text)
    });
}

pub fn run(args: WordcountArgs) -> anyhow::Result<()> {
    let mut config = args.job.config("wordcount");
    config.stop = Some(stop_flag()?);
    args.workers.apply(args.brokers.as_deref(), &mut config);
    let _console = args.job.console(&mut config)?;
    let on_workers = config.workers.is_some();
    let table = config.name.clone();
    let interval = config.batch_interval;
    let ctx = StreamingContext::new(config);
    let lines = if let Some(addr) = &args.socket {
        ctx.source(
            crate::source::socket::SocketSource::new("socket", addr.clone())
                .with_context(|| format!("cannot read lines from {addr}"))?,
        )
    } else if let Some(dir) = &args.files {
        ctx.source(
            crate::source::files::FileSource::new("files", dir.clone())
                .with_context(|| format!("cannot watch {}", dir.display()))?,
        )
    } else {
        let topic = args.topic.clone().unwrap_or_default();
        match &args.brokers {
            Some(brokers) => ctx.source(
                crate::source::kafka::KafkaSource::new(
                    topic.clone(),
                    brokers,
                    &topic,
                    args.group.clone(),
                    Vec::new(),
                )
                .with_context(|| format!("cannot read topic {topic} from {brokers}"))?,
            ),
            None => {
                let dir = args
                    .data_dir
                    .clone()
                    .unwrap_or_else(|| PathBuf::from("./data"));
                let store = Arc::new(open_store(&dir, false)?);
                ctx.embedded(store, &topic)
                    .with_context(|| format!("cannot read topic {topic} in {}", dir.display()))?
            }
        }
    };
    let counts = match args.window {
        Some(window) => windowed_wordcount(&lines, &table, window, args.slide.unwrap_or(interval)),
        None => wordcount(&lines, &table),
    };
    if args.top > 0 {
        print_top(&counts, args.top);
    }
    let summary = ctx.run().context("the word-count job stopped")?;
    if on_workers {
        eprintln!(
            "counts are in result table {table:?}, kept in the compacted topic {}: sluice state scan --job {table} --brokers {} --top 10",
            crate::driver::worker::changelog_topic(&table, &format!("table.{table}")),
            args.brokers.as_deref().unwrap_or_default()
        );
        return Ok(());
    }
    eprintln!(
        "counts are in result table {table:?}: sluice state scan --job {table} --top 10 (last batch {})",
        summary.last_batch_id
    );
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct DemoWordcountArgs {
    /// Count the lines of this file instead of generated text ("-": stdin).
    #[arg(long)]
    pub file: Option<PathBuf>,
    /// Generated lines per second (all partitions); 0 generates nothing
    /// and counts what the topic holds and what others produce to it.
    #[arg(long, default_value_t = 20_000)]
    pub rate: u64,
    /// Stop after this long (default: until Ctrl-C).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Topic in the embedded store (4 partitions).
    #[arg(long, default_value = "demo-wordcount")]
    pub topic: String,
    /// Words shown per batch.
    #[arg(long, default_value_t = 5)]
    pub top: usize,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    #[command(flatten)]
    pub store: StoreArgs,
    #[command(flatten)]
    pub job: JobArgs,
}

/// The README's first command: a live word count over the embedded store,
/// fed by the text generator (or a file, or stdin).
pub fn demo(args: DemoWordcountArgs) -> anyhow::Result<()> {
    let stop = stop_flag()?;
    let store = Arc::new(open_store(&args.store.data_dir, true)?);
    if store.topic(&args.topic).is_err() {
        store
            .create_topic(&args.topic, 4, TopicConfig::default())
            .with_context(|| format!("cannot create topic {}", args.topic))?;
    }
    let mut config = args.job.config("wordcount");
    config.stop = Some(stop.clone());
    let bounded_input = args.file.is_some();
    if bounded_input {
        // Produce first, then drain: the job ends when it has counted all.
        produce_file(
            &store,
            &args.topic,
            args.file.as_deref().unwrap_or(std::path::Path::new("-")),
        )?;
        config.until_caught_up = true;
    }
    let table = config.name.clone();
    eprintln!(
        "word count over topic {} in {} · checkpoint {} · Ctrl-C stops; run again to resume",
        args.topic,
        args.store.data_dir.display(),
        config.checkpoint_path().display()
    );
    let _console = args.job.console(&mut config)?;
    let feeder = if bounded_input || args.rate == 0 {
        None
    } else {
        let (store, topic, stop, rate, seed) = (
            store.clone(),
            args.topic.clone(),
            stop.clone(),
            args.rate,
            args.seed,
        );
        Some(std::thread::spawn(move || {
            feed_generated(&store, &topic, &stop, rate, seed)
        }))
    };
    if let Some(d) = args.duration {
        let stop = stop.clone();
        std::thread::spawn(move || {
            std::thread::sleep(d);
            stop.store(true, Ordering::Relaxed);
        });
    }
    let ctx = StreamingContext::new(config);
    let lines = ctx.embedded(store.clone(), &args.topic)?;
    let counts = wordcount(&lines, &table);
    print_top(&counts, args.top);
    let result = ctx.run();
    stop.store(true, Ordering::Relaxed);
    if let Some(f) = feeder {
        f.join()
            .map_err(|_| anyhow::anyhow!("the generator thread panicked"))??;
    }
    store.close().context("cannot close the log store")?;
    result.context("the word-count job stopped")?;
    eprintln!("totals: sluice state scan --job {table} --top 10");
    Ok(())
}

fn feed_generated(
    store: &crate::log::LogStore,
    topic: &str,
    stop: &std::sync::atomic::AtomicBool,
    rate: u64,
    seed: u64,
) -> anyhow::Result<()> {
    // The same vocabulary on every run; the line stream continues where
    // the topic ends, so a resumed demo keeps counting the same words.
    let generator = CorpusGenerator::new(seed);
    let mut index: u64 = store
        .topic(topic)?
        .partitions()
        .iter()
        .map(|p| p.high_watermark() as u64)
        .sum();
    let mut producer = round_robin_producer(store, topic, 500)?;
    let mut line = Vec::with_capacity(256);
    let tick = Duration::from_millis(100);
    let per_tick = (rate / 10).max(1);
    while !stop.load(Ordering::Relaxed) {
        let started = std::time::Instant::now();
        for _ in 0..per_tick {
            line.clear();
            generator.line_at(index, &mut line);
            index += 1;
            producer.send(None, &line, now_ms())?;
        }
        producer.flush()?;
        if let Some(rest) = tick.checked_sub(started.elapsed()) {
            std::thread::sleep(rest);
        }
    }
    producer.flush()
}

fn produce_file(
    store: &crate::log::LogStore,
    topic: &str,
    path: &std::path::Path,
) -> anyhow::Result<()> {
    let mut producer = round_robin_producer(store, topic, 1000)?;
    let reader: Box<dyn BufRead> = if path.as_os_str() == "-" {
        Box::new(std::io::stdin().lock())
    } else {
        Box::new(std::io::BufReader::new(
            std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?,
        ))
    };
    for line in reader.split(b'\n') {
        let line = line.context("cannot read input")?;
        producer.send(None, &line, now_ms())?;
    }
    producer.flush()?;
    store.flush().context("cannot flush the log store")?;
    eprintln!("produced {} lines into {topic}", producer.records);
    Ok(())
}

/// The demo's producer: uncompressed batches of `batch_records`, lines
/// spread round-robin over the partitions.
fn round_robin_producer(
    store: &crate::log::LogStore,
    topic: &str,
    batch_records: usize,
) -> anyhow::Result<EmbeddedProducer> {
    EmbeddedProducer::new(
        store,
        topic,
        Compression::None,
        UnkeyedStrategy::RoundRobin,
        None,
        batch_records,
    )
}
