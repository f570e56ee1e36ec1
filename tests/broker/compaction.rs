//! Compacted topics (`cleanup.policy=compact`) served by `sluice broker`,
//! read by librdkafka and kafka-python as Kafka's semantics say they must
//! be: created and described through the admin API; keyless records
//! refused with INVALID_RECORD; after the broker's background cleaner ran,
//! a reader from the beginning gets the last value of every key (deleted
//! keys gone), each record at the offset it was acknowledged at, offsets
//! with gaps, and nothing in the still-dirty tail lost; the same after a
//! restart; and the idempotent producer that wrote it carries on.

use std::collections::BTreeMap;
use std::process::Command;
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::Producer;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::Value;

use crate::common::broker::{
    BrokerOpts, TestBroker, client_script, require_kafka_python, run_bounded,
};
use crate::rdkafka::{
    DEADLINE, OP_TIMEOUT, assign_consumer, block_on, client_config, create_topic, producer,
};

const TOPIC: &str = "table-changelog";
const PARTITIONS: i32 = 2;
const KEYS: usize = 40;

/// partition → offset → (key, value or tombstone).
type Log = BTreeMap<i32, BTreeMap<i64, (String, Option<String>)>>;

/// Sends `records` in order (all enqueued, then every delivery awaited)
/// and records each at the offset it was acknowledged at.
fn send_all(p: &FutureProducer, records: Vec<(String, Option<String>)>, produced: &mut Log) {
    let futures: Vec<_> = records
        .iter()
        .map(|(key, value)| {
            let mut record = FutureRecord::<str, str>::to(TOPIC).key(key);
            if let Some(v) = value {
                record = record.payload(v);
            }
            p.send_result(record)
                .unwrap_or_else(|(e, _)| panic!("enqueueing {key}: {e}"))
        })
        .collect();
    block_on(async {
        for ((key, value), f) in records.into_iter().zip(futures) {
            let d = tokio::time::timeout(DEADLINE, f)
                .await
                .unwrap_or_else(|_| panic!("no delivery report for {key}"))
                .expect("delivery future cancelled")
                .unwrap_or_else(|(e, _)| panic!("delivery of {key} failed: {e}"));
            produced
                .entry(d.partition)
                .or_default()
                .insert(d.offset, (key, value));
        }
    });
}

/// Reads every partition from the beginning to its end offset with rdkafka.
fn read_rdkafka(broker: &TestBroker) -> Log {
    let consumer = assign_consumer(broker, &[("enable.partition.eof", "false")]);
    let mut tpl = TopicPartitionList::new();
    let mut end = BTreeMap::new();
    for p in 0..PARTITIONS {
        tpl.add_partition_offset(TOPIC, p, Offset::Beginning)
            .unwrap();
        let (_, high) = consumer
            .fetch_watermarks(TOPIC, p, OP_TIMEOUT)
            .expect("watermarks");
        end.insert(p, high);
    }
    consumer.assign(&tpl).expect("assign");
    let mut log = Log::new();
    let mut next: BTreeMap<i32, i64> = (0..PARTITIONS).map(|p| (p, 0)).collect();
    let deadline = Instant::now() + DEADLINE;
    while next.iter().any(|(p, n)| n < &end[p]) {
        assert!(
            Instant::now() < deadline,
            "rdkafka stuck before the end: at {next:?}, end {end:?}"
        );
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let key = String::from_utf8(m.key().expect("keyed").to_vec()).unwrap();
                let value = m.payload().map(|v| String::from_utf8(v.to_vec()).unwrap());
                let prev = log
                    .entry(m.partition())
                    .or_default()
                    .insert(m.offset(), (key, value));
                assert!(prev.is_none(), "offset {} read twice", m.offset());
                next.insert(m.partition(), m.offset() + 1);
            }
            Some(Err(e)) => panic!("consumer error: {e}"),
            None => {}
        }
    }
    log
}

fn read_kafka_python(broker: &TestBroker) -> Log {
    require_kafka_python();
    let out = run_bounded(
        Command::new("python3")
            .arg(client_script("compacted_read.py"))
            .args([
                broker.bootstrap(),
                TOPIC.to_string(),
                PARTITIONS.to_string(),
            ])
            .env("PYTHONUNBUFFERED", "1"),
        Duration::from_secs(60),
    );
    assert!(
        out.status.success(),
        "compacted_read.py failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("compacted_read.py prints JSON");
    let mut log = Log::new();
    for r in v["records"].as_array().expect("records") {
        log.entry(r[0].as_i64().unwrap() as i32)
            .or_default()
            .insert(
                r[1].as_i64().unwrap(),
                (
                    r[2].as_str().unwrap().to_string(),
                    r[3].as_str().map(str::to_string),
                ),
            );
    }
    log
}

fn replay(log: &Log) -> BTreeMap<String, String> {
    let mut table = BTreeMap::new();
    for records in log.values() {
        for (key, value) in records.values() {
            match value {
                Some(v) => table.insert(key.clone(), v.clone()),
                None => table.remove(key),
            };
        }
    }
    table
}

fn records(log: &Log) -> usize {
    log.values().map(BTreeMap::len).sum()
}

/// Every record read is the one acknowledged at its offset.
fn assert_subset(read: &Log, produced: &Log, who: &str) {
    for (p, records) in read {
        for (offset, kv) in records {
            assert_eq!(
                produced.get(p).and_then(|r| r.get(offset)),
                Some(kv),
                "{who}: partition {p} offset {offset} is not what was acknowledged there"
            );
        }
    }
}

/// A broker whose cleaner passes every 200 ms, unthrottled.
fn compacting_broker() -> TestBroker {
    TestBroker::start_with(
        BrokerOpts::default()
            .arg("--log-cleaner-backoff")
            .arg("200ms")
            .arg("--log-cleaner-io-max-bytes-per-second")
            .arg("0"),
    )
}

/// A compacted topic that rolls often and is cleaned at once, tombstones
/// and markers included.
const CHANGELOG_CONFIGS: &[(&str, &str)] = &[
    ("cleanup.policy", "compact"),
    ("segment.bytes", "4096"),
    ("min.cleanable.dirty.ratio", "0.01"),
    ("delete.retention.ms", "0"),
];

#[test]
fn compacted_topics_keep_the_last_value_per_key_for_rdkafka_and_kafka_python() {
    let mut broker = compacting_broker();
    create_topic(&broker, TOPIC, PARTITIONS, CHANGELOG_CONFIGS);
    let admin: AdminClient<DefaultClientContext> = client_config(&broker).create().unwrap();
    let opts = AdminOptions::new().request_timeout(Some(OP_TIMEOUT));
    let described = block_on(admin.describe_configs([&ResourceSpecifier::Topic(TOPIC)], &opts))
        .expect("DescribeConfigs");
    let entries = described[0].as_ref().expect("describe").entry_map();
    assert_eq!(entries["cleanup.policy"].value.as_deref(), Some("compact"));
    assert!(!entries["cleanup.policy"].is_default);

    // A keyless record cannot go to a compacted topic.
    let plain = producer(&broker, &[]);
    let err = block_on(plain.send(
        FutureRecord::<str, str>::to(TOPIC).payload("no key"),
        OP_TIMEOUT,
    ))
    .expect_err("a keyless record is refused");
    assert!(
        matches!(
            err.0,
            KafkaError::MessageProduction(RDKafkaErrorCode::InvalidRecord)
        ),
        "{:?}",
        err.0
    );

    // Many updates of few keys, some keys deleted at the end, through the
    // idempotent producer (its batches carry producer ids and sequences),
    // gzip-compressed (the codec kafka-python reads without extra packages).
    let idempotent = producer(
        &broker,
        &[("enable.idempotence", "true"), ("compression.type", "gzip")],
    );
    let mut produced = Log::new();
    let updates = (0..1_500)
        .map(|i| {
            (
                format!("key-{}", i % KEYS),
                Some(format!("value-{i}-{}", "x".repeat(i % 40))),
            )
        })
        .collect();
    send_all(&idempotent, updates, &mut produced);
    let deletes = (0..6).map(|k| (format!("key-{k}"), None)).collect();
    send_all(&idempotent, deletes, &mut produced);
    // Dirty again after a first clean: overwrite half the keys once more.
    let late = (0..KEYS / 2)
        .map(|i| (format!("key-{i}"), Some(format!("late-{i}"))))
        .collect();
    send_all(&idempotent, late, &mut produced);
    let total: usize = records(&produced);
    let expected = replay(&produced);

    // The cleaner works in the background; wait until readers see it.
    let deadline = Instant::now() + DEADLINE;
    let compacted = loop {
        let log = read_rdkafka(&broker);
        if records(&log) < total / 3 {
            break log;
        }
        assert!(
            Instant::now() < deadline,
            "the cleaner did not compact within {DEADLINE:?}: {} of {total} records left",
            records(&log)
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_subset(&compacted, &produced, "rdkafka");
    assert_eq!(
        replay(&compacted),
        expected,
        "rdkafka: the table from the compacted log"
    );
    assert!(
        broker.log().contains("log cleaner compacted the partition"),
        "no cleaner line in the broker's log"
    );

    let python = read_kafka_python(&broker);
    assert_subset(&python, &produced, "kafka-python");
    assert_eq!(
        replay(&python),
        expected,
        "kafka-python: the table from the compacted log"
    );

    // The same after a restart, and the idempotent producer goes on.
    broker.restart();
    let after = read_rdkafka(&broker);
    assert_subset(&after, &produced, "rdkafka after restart");
    assert_eq!(replay(&after), expected, "rdkafka after restart");
    let idempotent = producer(
        &broker,
        &[("enable.idempotence", "true"), ("compression.type", "gzip")],
    );
    let mut more = Log::new();
    send_all(
        &idempotent,
        vec![("key-1".into(), Some("after-restart".into()))],
        &mut more,
    );
    let (&partition, records) = more.iter().next().unwrap();
    let offset = *records.keys().next().unwrap();
    let end = produced[&partition].keys().next_back().copied().unwrap();
    assert_eq!(offset, end + 1, "offsets go on where the log ended");
}

/// Everything a read_committed consumer reads from the beginning of
/// partition 0 of `topic` until it reaches the end: (offset, key, value).
fn read_committed(broker: &TestBroker, topic: &str) -> Vec<(i64, String, String)> {
    let consumer = assign_consumer(
        broker,
        &[
            ("isolation.level", "read_committed"),
            ("enable.partition.eof", "true"),
        ],
    );
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    loop {
        assert!(
            Instant::now() < deadline,
            "read_committed never reached the end: {} records so far",
            out.len()
        );
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => out.push((
                m.offset(),
                String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
                String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
            )),
            Some(Err(KafkaError::PartitionEOF(_))) => return out,
            Some(Err(e)) => panic!("consumer error: {e}"),
            None => {}
        }
    }
}

/// A changelog written by a transactional producer (one transaction per
/// batch, some aborted), as the engine's sinks write it: after the cleaner
/// ran, a read_committed reader gets exactly the committed table, never an
/// aborted value, and reaches the end (no marker left dangling).
#[test]
fn a_transactional_changelog_compacts_to_its_committed_table() {
    const TOPIC_TXN: &str = "txn-changelog";
    let broker = compacting_broker();
    create_topic(&broker, TOPIC_TXN, 1, CHANGELOG_CONFIGS);
    let p = producer(
        &broker,
        &[
            ("transactional.id", "changelog-writer"),
            ("transaction.timeout.ms", "30000"),
        ],
    );
    p.init_transactions(OP_TIMEOUT).expect("init_transactions");
    let mut committed: BTreeMap<String, String> = BTreeMap::new();
    let mut written = 0usize;
    for txn in 0..60 {
        p.begin_transaction().expect("begin");
        let abort = txn % 4 == 3;
        let records: Vec<(String, String)> = (0..5)
            .map(|i| {
                let value = if abort {
                    format!("aborted-{txn}-{i}")
                } else {
                    format!("v{txn}-{i}")
                };
                (format!("key-{}", (txn * 5 + i) % 9), value)
            })
            .collect();
        let futures: Vec<_> = records
            .iter()
            .map(|(k, v)| {
                p.send_result(FutureRecord::to(TOPIC_TXN).partition(0).key(k).payload(v))
                    .unwrap_or_else(|(e, _)| panic!("enqueueing {k}: {e}"))
            })
            .collect();
        block_on(async {
            for f in futures {
                f.await
                    .expect("delivery")
                    .unwrap_or_else(|(e, _)| panic!("delivery: {e}"));
            }
        });
        written += records.len();
        if abort {
            p.abort_transaction(OP_TIMEOUT).expect("abort");
        } else {
            p.commit_transaction(OP_TIMEOUT).expect("commit");
            committed.extend(records);
        }
    }
    let deadline = Instant::now() + DEADLINE;
    let seen = loop {
        let seen = read_committed(&broker, TOPIC_TXN);
        if seen.len() < written / 4 {
            break seen;
        }
        assert!(
            Instant::now() < deadline,
            "not compacted within {DEADLINE:?}: {} records",
            seen.len()
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    assert!(
        seen.iter().all(|(_, _, v)| !v.starts_with("aborted")),
        "an aborted value reached a read_committed reader: {seen:?}"
    );
    let mut table = BTreeMap::new();
    for (_, k, v) in &seen {
        table.insert(k.clone(), v.clone());
    }
    assert_eq!(
        table, committed,
        "the committed table from the compacted changelog"
    );
    assert!(
        seen.windows(2).all(|w| w[0].0 < w[1].0),
        "offsets go up: {seen:?}"
    );
    let markers_removed: u64 = broker
        .log()
        .split("markers_removed=")
        .skip(1)
        .filter_map(|rest| rest.split_whitespace().next()?.parse::<u64>().ok())
        .sum();
    assert!(
        markers_removed > 0,
        "the cleaner removed no transaction marker:\n{}",
        broker.log()
    );
}
