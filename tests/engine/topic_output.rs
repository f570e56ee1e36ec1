//! `DStream::save_to_topic`, a Rust job's topic sink: on the bundled store
//! (tagged records) and through `sluice broker` (one Kafka transaction per
//! batch), each element once, and a second run of the job writes only what
//! is new.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sluice::data::Data;
use sluice::driver::{JobConfig, RunSummary, StreamingContext};
use sluice::log::LogStore;
use sluice::sink::topic::{TopicTarget, TopicWriter, partition_of};
use sluice::source::embedded::EmbeddedSource;
use sluice::source::{Record, Source};

use crate::common::broker::TestBroker;
use crate::common::{self, append_round_robin};

fn config(checkpoint: &Path) -> JobConfig {
    let mut c = JobConfig::new("upper", Duration::from_millis(10));
    c.checkpoint_dir = Some(checkpoint.to_path_buf());
    c.until_caught_up = true;
    c.max_records_per_batch = Some(3);
    c.progress.lines = false;
    c
}

/// Upper-cases every record of `words` into topic `upper` at `target`
/// (created with 3 partitions), keyed by the word.
fn run_job(input: &Arc<LogStore>, checkpoint: &Path, target: &TopicTarget) -> RunSummary {
    let ctx = StreamingContext::new(config(checkpoint));
    let words = ctx.embedded(input.clone(), "words").expect("source");
    let writer = TopicWriter::open(target, "upper", 3, "topic upper").expect("writer");
    words
        .map(|r| r.value_str().to_uppercase())
        .save_to_topic(writer, |word: &str| {
            (
                Some(word.as_bytes().to_vec()),
                Some(format!("{word}!").into_bytes()),
            )
        });
    ctx.run().expect("the job runs")
}

/// (partition, key, value) of every record a read_committed reader of
/// `topic` in `store` gets.
fn committed_records(store: &Arc<LogStore>, topic: &str) -> Vec<(i32, String, String)> {
    let source = EmbeddedSource::new(store.clone(), topic).expect("topic");
    let mut out = Vec::new();
    for p in source.partitions().expect("partitions") {
        source
            .read(p.partition, p.log_start, p.high_watermark, &mut |b| {
                let reader = Record::reader(b.columns()).expect("schema");
                for i in 0..b.num_rows() {
                    let r = Record::get(&reader, i);
                    out.push((
                        r.partition,
                        String::from_utf8_lossy(r.key.unwrap_or_default()).into_owned(),
                        String::from_utf8_lossy(r.value.unwrap_or_default()).into_owned(),
                    ));
                }
                Ok(())
            })
            .expect("read");
    }
    out
}

/// Every word once, in its key's partition.
fn assert_each_once(records: &[(i32, String, String)], words: &[String]) {
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for (partition, key, value) in records {
        assert_eq!(*partition, partition_of(Some(key.as_bytes()), 3), "{key}");
        assert_eq!(value, &format!("{key}!"));
        *counts.entry(key).or_default() += 1;
    }
    let expected: BTreeMap<String, usize> = words.iter().map(|w| (w.to_uppercase(), 1)).collect();
    let got: BTreeMap<String, usize> = counts.into_iter().map(|(k, n)| (k.to_owned(), n)).collect();
    assert_eq!(got, expected);
}

fn words(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("word{i}")).collect()
}

#[test]
fn a_rust_job_writes_each_element_once_to_a_topic_of_its_store() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let checkpoint = dir.path().join("cp");
    let store = Arc::new(LogStore::open(&data, common::quiet()).unwrap());
    let topic = common::topic(&store, "words", 2);
    append_round_robin(&topic, 5, &words(0..40), 1_000);
    let first = run_job(&store, &checkpoint, &TopicTarget::Embedded(store.clone()));
    assert!(first.batches > 3, "the test needs several batches");
    append_round_robin(&topic, 5, &words(40..60), 2_000);
    run_job(&store, &checkpoint, &TopicTarget::Embedded(store.clone()));
    assert_each_once(&committed_records(&store, "upper"), &words(0..60));
}

#[test]
fn a_rust_job_writes_each_element_once_through_a_kafka_broker_in_transactions() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join("cp");
    let input = Arc::new(LogStore::open(dir.path().join("input"), common::quiet()).unwrap());
    let topic = common::topic(&input, "words", 2);
    append_round_robin(&topic, 5, &words(0..40), 1_000);
    let mut broker = TestBroker::start();
    let kafka = TopicTarget::Kafka(broker.bootstrap());
    let first = run_job(&input, &checkpoint, &kafka);
    assert!(first.batches > 3, "the test needs several batches");
    append_round_robin(&topic, 5, &words(40..60), 2_000);
    run_job(&input, &checkpoint, &kafka);
    broker.stop_gracefully();
    let store = Arc::new(LogStore::open(broker.data_dir(), common::quiet()).unwrap());
    assert_each_once(&committed_records(&store, "upper"), &words(0..60));
    // Written in transactions: every partition that holds records ends
    // with a commit marker.
    let mut markers = 0;
    for p in store.topic("upper").unwrap().partitions() {
        let (bytes, _) = p.read(0, 64 << 20).unwrap();
        markers += common::decode_batches(&bytes, "upper")
            .iter()
            .filter(|b| b.header.is_control())
            .count();
        assert_eq!(p.last_stable_offset(), p.high_watermark());
    }
    assert!(markers >= first.batches as usize, "{markers} markers");
}
