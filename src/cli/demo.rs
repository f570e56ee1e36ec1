//! `sluice demo …`: self-contained demos on the embedded log store.
//!
//! `demo log` produces generated text into a 4-partition topic and reads it
//! back, counting records and words per partition — the log store end to
//! end with nothing to start. (The engine's `demo wordcount` builds on it.)

use std::collections::HashMap;
use std::time::Instant;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::Subcommand;
use kafka_protocol::records::RecordBatchDecoder;

use super::common::{StoreArgs, open_store};
use super::produce::EmbeddedProducer;
use crate::common::now_ms;
use crate::corpus::CorpusGenerator;
use crate::log::{LogStore, Topic, TopicConfig};
use crate::producer::{Compression, UnkeyedStrategy, parse_compression};
use crate::units::format_bytes;

#[derive(Debug, Subcommand)]
pub enum DemoCommand {
    /// A live word count on the embedded store: generated text (or --file,
    /// or stdin with --file -) into a 4-partition topic, counted in
    /// 1-second batches, exactly once. Ctrl-C stops; run again to resume.
    Wordcount(Box<super::wordcount::DemoWordcountArgs>),
    /// Produce generated lines into a topic of the embedded store, then
    /// consume them back and count records and words per partition.
    Log {
        /// Lines to produce.
        #[arg(long, default_value_t = 500_000)]
        lines: u64,
        /// Topic to use (created with --partitions if missing).
        #[arg(long, default_value = "demo-lines")]
        topic: String,
        #[arg(long, default_value_t = 4)]
        partitions: i64,
        /// Seed of the text generator.
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Compression of produced batches: none, gzip, snappy, lz4, zstd.
        #[arg(long, default_value = "lz4", value_parser = parse_compression)]
        compression: Compression,
        #[command(flatten)]
        store: StoreArgs,
    },
}

pub fn run(cmd: DemoCommand) -> anyhow::Result<()> {
    match cmd {
        DemoCommand::Wordcount(args) => super::wordcount::demo(*args),
        DemoCommand::Log {
            lines,
            topic,
            partitions,
            seed,
            compression,
            store,
        } => demo_log(lines, &topic, partitions, seed, compression, &store),
    }
}

fn demo_log(
    lines: u64,
    topic_name: &str,
    partitions: i64,
    seed: u64,
    compression: Compression,
    store_args: &StoreArgs,
) -> anyhow::Result<()> {
    let store = open_store(&store_args.data_dir, false)?;
    let topic = match store.topic(topic_name) {
        Ok(t) => t,
        Err(_) => {
            println!(
                "Creating topic {topic_name} with {partitions} partitions in {}",
                store_args.data_dir.display()
            );
            store.create_topic(topic_name, partitions, TopicConfig::default())?
        }
    };
    let starts: Vec<i64> = topic
        .partitions()
        .iter()
        .map(|p| p.high_watermark())
        .collect();

    let words = produce_lines(&store, topic_name, lines, seed, compression)?;
    let (total_records, total_words, counts) = read_back(&topic, &starts)?;
    let mut top: Vec<(&Vec<u8>, &u64)> = counts.iter().collect();
    top.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
    let top: Vec<String> = top
        .iter()
        .take(8)
        .map(|(w, c)| format!("{} {c}", String::from_utf8_lossy(w)))
        .collect();
    println!("Top words: {}", top.join(", "));
    if total_records != lines || total_words != words {
        bail!(
            "read back {total_records} records / {total_words} words, but produced {lines} / {words}"
        );
    }
    println!(
        "OK: every produced record was read back exactly once. Try `sluice consume {topic_name} --max 5 --print-offset`, or run the demo again to append more."
    );
    store.close()?;
    Ok(())
}

/// The demo's produce phase: `lines` seeded lines through the embedded
/// producer, flushed. Returns the words written.
fn produce_lines(
    store: &LogStore,
    topic_name: &str,
    lines: u64,
    seed: u64,
    compression: Compression,
) -> anyhow::Result<u64> {
    let mut generator = CorpusGenerator::new(seed);
    let mut producer = EmbeddedProducer::new(
        store,
        topic_name,
        compression,
        UnkeyedStrategy::Sticky,
        None,
        1000,
    )?;
    let mut line = Vec::with_capacity(256);
    let (mut words, mut text_bytes) = (0u64, 0u64);
    let started = Instant::now();
    for _ in 0..lines {
        line.clear();
        words += generator.next_line(&mut line) as u64;
        text_bytes += line.len() as u64;
        producer.send(None, &line, now_ms())?;
    }
    producer.flush()?;
    store.flush().context("cannot flush the log store")?;
    let produce_secs = started.elapsed().as_secs_f64().max(1e-9);
    println!(
        "Produced {lines} lines ({words} words, {} of text, {} stored with {compression:?}) in {produce_secs:.2}s: {:.0} records/s",
        format_bytes(text_bytes),
        format_bytes(producer.bytes),
        lines as f64 / produce_secs
    );

    Ok(words)
}

/// The demo's consume phase: every record this run produced, partition by
/// partition from `starts`, with a row per partition. Returns the records,
/// the words and the count of each word.
#[allow(clippy::type_complexity)]
fn read_back(topic: &Topic, starts: &[i64]) -> anyhow::Result<(u64, u64, HashMap<Vec<u8>, u64>)> {
    let started = Instant::now();
    let mut counts: HashMap<Vec<u8>, u64> = HashMap::new();
    let mut buf = Vec::with_capacity(1 << 20);
    let (mut total_records, mut total_words) = (0u64, 0u64);
    println!(
        "{:>9}  {:>10}  {:>10}  {:>12}",
        "Partition", "Offsets", "Records", "Words"
    );
    for (p, &start) in topic.partitions().iter().zip(starts) {
        let (mut position, mut records, mut part_words) = (start, 0u64, 0u64);
        while position < p.high_watermark() {
            buf.clear();
            let info = p.read_into(position, 1 << 20, &mut buf)?;
            let mut data = Bytes::copy_from_slice(&buf);
            for set in
                RecordBatchDecoder::decode_all(&mut data).context("cannot decode a stored batch")?
            {
                for r in set.records.iter().filter(|r| r.offset >= position) {
                    records += 1;
                    for w in r
                        .value
                        .as_deref()
                        .unwrap_or(b"")
                        .split(|&b| b == b' ')
                        .filter(|w| !w.is_empty())
                    {
                        part_words += 1;
                        match counts.get_mut(w) {
                            Some(c) => *c += 1,
                            None => {
                                counts.insert(w.to_vec(), 1);
                            }
                        }
                    }
                }
            }
            position = info.next_offset;
        }
        println!(
            "{:>9}  {:>10}  {:>10}  {:>12}",
            p.id(),
            format!("{start}..{position}"),
            records,
            part_words
        );
        total_records += records;
        total_words += part_words;
    }
    let consume_secs = started.elapsed().as_secs_f64().max(1e-9);
    println!(
        "Consumed {total_records} records ({total_words} words) in {consume_secs:.2}s: {:.0} records/s",
        total_records as f64 / consume_secs
    );
    Ok((total_records, total_words, counts))
}
