//! `sluice broker` driven by librdkafka through the `rdkafka` crate, the
//! client most Kafka users have: producing with every codec and both acks
//! settings, reading back by explicit assignment, watermarks and
//! offsets-for-times, consumer groups (rebalance on join and leave,
//! committed offsets surviving the members), the idempotent producer, long
//! polling, and the admin API (create with configs, describe, grow, delete,
//! refused replication factors).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use rdkafka::admin::{
    AdminClient, AdminOptions, NewPartitions, NewTopic, ResourceSpecifier, TopicReplication,
};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{Message, Timestamp};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use crate::common;
use crate::common::broker::TestBroker;

/// Every wait in these tests ends by then.
pub(crate) const DEADLINE: Duration = Duration::from_secs(30);
pub(crate) const OP_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) fn block_on<F: Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime")
        .block_on(f)
}

/// Set `SLUICE_TEST_RDKAFKA_DEBUG=cgrp,protocol` (librdkafka's `debug`
/// contexts) to see librdkafka's own log lines of the consumers on stderr.
const DEBUG_ENV: &str = "SLUICE_TEST_RDKAFKA_DEBUG";

/// The consumers' context: librdkafka's log lines go to stderr when
/// [`DEBUG_ENV`] is set, and nowhere otherwise.
pub(crate) struct TestContext;

impl ClientContext for TestContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        if std::env::var_os(DEBUG_ENV).is_some() {
            eprintln!("librdkafka {level:?} {fac}: {log_message}");
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if std::env::var_os(DEBUG_ENV).is_some() {
            eprintln!("librdkafka error {error}: {reason}");
        }
    }
}

impl ConsumerContext for TestContext {}

pub(crate) type TestConsumer = BaseConsumer<TestContext>;

pub(crate) fn client_config(broker: &TestBroker) -> ClientConfig {
    let mut c = ClientConfig::new();
    if let Ok(debug) = std::env::var(DEBUG_ENV) {
        c.set("debug", debug).set_log_level(RDKafkaLogLevel::Debug);
    }
    c.set("bootstrap.servers", broker.bootstrap())
        .set("broker.address.family", "v4")
        .set("socket.timeout.ms", "10000")
        .set("reconnect.backoff.ms", "50")
        .set("reconnect.backoff.max.ms", "500");
    c
}

fn admin(broker: &TestBroker) -> AdminClient<DefaultClientContext> {
    client_config(broker)
        .create()
        .expect("create an AdminClient")
}

fn admin_opts() -> AdminOptions {
    AdminOptions::new()
        .request_timeout(Some(OP_TIMEOUT))
        .operation_timeout(Some(OP_TIMEOUT))
}

pub(crate) fn create_topic(
    broker: &TestBroker,
    name: &str,
    partitions: i32,
    configs: &[(&str, &str)],
) {
    let mut t = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for (k, v) in configs {
        t = t.set(k, v);
    }
    let results = block_on(admin(broker).create_topics([&t], &admin_opts()))
        .unwrap_or_else(|e| panic!("CreateTopics {name}: {e}"));
    assert_eq!(results, vec![Ok(name.to_string())], "CreateTopics {name}");
}

pub(crate) fn producer(broker: &TestBroker, settings: &[(&str, &str)]) -> FutureProducer {
    let mut c = client_config(broker);
    c.set("linger.ms", "5").set("message.timeout.ms", "20000");
    for (k, v) in settings {
        c.set(*k, *v);
    }
    c.create().expect("create a FutureProducer")
}

/// A consumer for explicit assignments: it never joins its group
/// (librdkafka wants a group id for `assign()` all the same).
pub(crate) fn assign_consumer(broker: &TestBroker, settings: &[(&str, &str)]) -> TestConsumer {
    let mut c = client_config(broker);
    c.set("group.id", "assign-only")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "100");
    for (k, v) in settings {
        c.set(*k, *v);
    }
    c.create_with_context(TestContext)
        .expect("create a BaseConsumer")
}

pub(crate) fn group_consumer(broker: &TestBroker, group: &str) -> TestConsumer {
    let mut c = client_config(broker);
    c.set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        .set("partition.assignment.strategy", "range")
        .set("fetch.wait.max.ms", "100");
    c.create_with_context(TestContext)
        .expect("create a group consumer")
}

/// Drops (closes) a consumer on another thread, bounded: a consumer whose
/// close hangs fails the test instead of hanging it.
pub(crate) fn close_bounded(consumer: TestConsumer, what: &str) {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        drop(consumer);
        let _ = tx.send(());
    });
    rx.recv_timeout(DEADLINE)
        .unwrap_or_else(|_| panic!("closing {what} did not finish within {DEADLINE:?}"));
}

/// What a test produced and where the broker said it went.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Produced {
    partition: i32,
    offset: i64,
    key: String,
    value: String,
}

/// Produces keyed records (partition chosen by the client unless given),
/// waits for every delivery report and returns them in send order.
fn produce_all(
    producer: &FutureProducer,
    topic: &str,
    records: &[(String, String)],
    partition: Option<i32>,
) -> Vec<Produced> {
    let futures: Vec<_> = records
        .iter()
        .map(|(k, v)| {
            let mut r = FutureRecord::to(topic).key(k).payload(v);
            if let Some(p) = partition {
                r = r.partition(p);
            }
            producer
                .send_result(r)
                .unwrap_or_else(|(e, _)| panic!("enqueueing {k}: {e}"))
        })
        .collect();
    block_on(async {
        let mut out = Vec::with_capacity(futures.len());
        for ((k, v), f) in records.iter().zip(futures) {
            let delivery = tokio::time::timeout(DEADLINE, f)
                .await
                .unwrap_or_else(|_| panic!("no delivery report for {k} within {DEADLINE:?}"))
                .expect("delivery future cancelled")
                .unwrap_or_else(|(e, _)| panic!("delivery of {k} failed: {e}"));
            out.push(Produced {
                partition: delivery.partition,
                offset: delivery.offset,
                key: k.clone(),
                value: v.clone(),
            });
        }
        out
    })
}

/// Checks delivery reports: per partition, offsets are `start..start+n`
/// exactly once (in any report order); returns the next offset per partition.
fn check_offsets(
    reports: &[Produced],
    start: &BTreeMap<i32, i64>,
    partitions: i32,
) -> BTreeMap<i32, i64> {
    let mut next = start.clone();
    for p in 0..partitions {
        let mut offsets: Vec<i64> = reports
            .iter()
            .filter(|r| r.partition == p)
            .map(|r| r.offset)
            .collect();
        offsets.sort_unstable();
        let from = start.get(&p).copied().unwrap_or(0);
        let expected: Vec<i64> = (from..from + offsets.len() as i64).collect();
        assert_eq!(offsets, expected, "partition {p}: delivery report offsets");
        next.insert(p, from + offsets.len() as i64);
    }
    assert!(
        reports
            .iter()
            .all(|r| (0..partitions).contains(&r.partition)),
        "a delivery report names a partition outside 0..{partitions}"
    );
    next
}

/// One consumed record.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Got {
    partition: i32,
    offset: i64,
    key: String,
    value: String,
}

fn got(m: &rdkafka::message::BorrowedMessage<'_>) -> Got {
    Got {
        partition: m.partition(),
        offset: m.offset(),
        key: String::from_utf8(m.key().expect("records have keys").to_vec()).unwrap(),
        value: String::from_utf8(m.payload().expect("records have values").to_vec()).unwrap(),
    }
}

/// Polls until `want` records arrived (bounded), then 500 ms more to catch
/// extras; returns them in arrival order.
fn consume_n(consumer: &TestConsumer, want: usize) -> Vec<Got> {
    let mut out = Vec::with_capacity(want);
    let deadline = Instant::now() + DEADLINE;
    while out.len() < want {
        assert!(
            Instant::now() < deadline,
            "consumed only {} of {want} records within {DEADLINE:?}",
            out.len()
        );
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => out.push(got(&m)),
            Some(Err(KafkaError::PartitionEOF(_))) => {}
            Some(Err(e)) => panic!("consumer error: {e}"),
            None => {}
        }
    }
    let quiet = Instant::now() + Duration::from_millis(500);
    while Instant::now() < quiet {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => panic!("an extra record after the expected {want}: {:?}", got(&m)),
            Some(Err(KafkaError::PartitionEOF(_))) | None => {}
            Some(Err(e)) => panic!("consumer error: {e}"),
        }
    }
    out
}

/// Asserts per-partition arrival order: consecutive offsets.
fn assert_in_order(records: &[Got]) {
    let mut last: BTreeMap<i32, i64> = BTreeMap::new();
    for r in records {
        if let Some(prev) = last.insert(r.partition, r.offset) {
            assert_eq!(
                r.offset,
                prev + 1,
                "partition {}: offset {} followed {prev}",
                r.partition,
                r.offset
            );
        }
    }
}

#[test]
fn every_codec_and_acks_setting_round_trips_by_assignment() {
    let broker = TestBroker::start();
    let topic = "codecs";
    create_topic(&broker, topic, 4, &[]);

    let mut reports = Vec::new();
    let mut next: BTreeMap<i32, i64> = BTreeMap::new();
    let combos = [
        ("1", "none"),
        ("all", "gzip"),
        ("1", "snappy"),
        ("all", "lz4"),
        ("1", "zstd"),
        ("all", "none"),
        ("-1", "zstd"),
    ];
    for (round, (acks, codec)) in combos.iter().enumerate() {
        let p = producer(
            &broker,
            &[
                ("acks", acks),
                ("compression.type", codec),
                ("batch.num.messages", "37"),
            ],
        );
        let records: Vec<(String, String)> = (0..150)
            .map(|i| {
                (
                    format!("key-{}", i % 23),
                    format!(
                        "{codec}/acks={acks}/round {round}/record {i} {}",
                        "x".repeat(i % 50)
                    ),
                )
            })
            .collect();
        let r = produce_all(&p, topic, &records, None);
        next = check_offsets(&r, &next, 4);
        reports.extend(r);
        p.flush(OP_TIMEOUT).expect("flush");
    }
    let total = reports.len();
    assert_eq!(total, 150 * combos.len());
    // The same key always went to the same partition, and every partition got some.
    let mut by_key: BTreeMap<&str, BTreeSet<i32>> = BTreeMap::new();
    for r in &reports {
        by_key.entry(&r.key).or_default().insert(r.partition);
    }
    assert!(by_key.values().all(|ps| ps.len() == 1), "{by_key:?}");
    assert_eq!(
        reports.iter().map(|r| r.partition).collect::<BTreeSet<_>>(),
        (0..4).collect(),
        "23 keys over 4 partitions must reach every partition"
    );

    // Read back: partitions 0 and 1 from the beginning, 2 and 3 from an
    // explicit offset in their middle.
    let from: BTreeMap<i32, i64> = (0..4)
        .map(|p| (p, if p < 2 { 0 } else { next[&p] / 2 }))
        .collect();
    let consumer = assign_consumer(&broker, &[]);
    let mut tpl = TopicPartitionList::new();
    for (&p, &o) in &from {
        let offset = if p < 2 {
            Offset::Beginning
        } else {
            Offset::Offset(o)
        };
        tpl.add_partition_offset(topic, p, offset).unwrap();
    }
    consumer.assign(&tpl).expect("assign");
    let mut expected: Vec<Got> = reports
        .iter()
        .filter(|r| r.offset >= from[&r.partition])
        .map(|r| Got {
            partition: r.partition,
            offset: r.offset,
            key: r.key.clone(),
            value: r.value.clone(),
        })
        .collect();
    let mut consumed = consume_n(&consumer, expected.len());
    assert_in_order(&consumed);
    expected.sort();
    consumed.sort();
    assert_eq!(consumed.len(), expected.len());
    for (c, e) in consumed.iter().zip(&expected) {
        assert_eq!(c, e, "record read back differs from what was acknowledged");
    }
    for p in 2..4 {
        let first = consumed.iter().find(|g| g.partition == p).map(|g| g.offset);
        assert_eq!(
            first,
            Some(from[&p]),
            "partition {p} starts at the assigned offset"
        );
    }
}

#[test]
fn watermarks_and_offsets_for_times() {
    let broker = TestBroker::start();
    let topic = "times";
    create_topic(&broker, topic, 2, &[]);
    let p = producer(&broker, &[("acks", "1"), ("compression.type", "lz4")]);
    let base = 1_700_000_000_000i64;
    // Partition 0: 100 records at base + 10*i ms, batched several per batch.
    let futures: Vec<_> = (0..100i64)
        .map(|i| {
            let key = format!("k{i}");
            let value = format!("v{i}");
            p.send_result(
                FutureRecord::to(topic)
                    .partition(0)
                    .key(&key)
                    .payload(&value)
                    .timestamp(base + 10 * i),
            )
            .unwrap_or_else(|(e, _)| panic!("enqueue: {e}"))
        })
        .collect();
    block_on(async {
        for (i, f) in futures.into_iter().enumerate() {
            let d = tokio::time::timeout(DEADLINE, f)
                .await
                .expect("delivery in time")
                .unwrap()
                .unwrap_or_else(|(e, _)| panic!("delivery: {e}"));
            assert_eq!((d.partition, d.offset), (0, i as i64));
        }
    });
    // Partition 1: 7 records.
    let seven: Vec<(String, String)> = (0..7).map(|i| (format!("k{i}"), format!("w{i}"))).collect();
    produce_all(&p, topic, &seven, Some(1));

    let c = assign_consumer(&broker, &[]);
    assert_eq!(c.fetch_watermarks(topic, 0, OP_TIMEOUT).unwrap(), (0, 100));
    assert_eq!(c.fetch_watermarks(topic, 1, OP_TIMEOUT).unwrap(), (0, 7));

    let lookup = |p: i32, ts: i64| -> Offset {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(topic, p, Offset::Offset(ts))
            .unwrap();
        let r = c
            .offsets_for_times(tpl, OP_TIMEOUT)
            .expect("offsets_for_times");
        let e = r.find_partition(topic, p).expect("partition in the answer");
        e.error()
            .unwrap_or_else(|e| panic!("offsets_for_times {p}@{ts}: {e}"));
        e.offset()
    };
    assert_eq!(lookup(0, 0), Offset::Offset(0), "before the first record");
    assert_eq!(lookup(0, base), Offset::Offset(0));
    assert_eq!(
        lookup(0, base + 500),
        Offset::Offset(50),
        "an exact timestamp"
    );
    assert_eq!(
        lookup(0, base + 555),
        Offset::Offset(56),
        "between two timestamps"
    );
    assert_eq!(lookup(0, base + 990), Offset::Offset(99), "the last record");
    assert_eq!(lookup(0, base + 991), Offset::End, "after the last record");

    // The consumer also sees the timestamps it asked for.
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Offset(56))
        .unwrap();
    c.assign(&tpl).unwrap();
    let deadline = Instant::now() + DEADLINE;
    loop {
        assert!(Instant::now() < deadline, "no record from offset 56");
        if let Some(m) = c.poll(Duration::from_millis(100)) {
            let m = m.expect("consume");
            assert_eq!(m.offset(), 56);
            assert_eq!(m.timestamp(), Timestamp::CreateTime(base + 560));
            assert_eq!(m.payload(), Some(&b"v56"[..]));
            break;
        }
    }
}

/// Polls each consumer once; consumed records go to `seen` (checked for
/// duplicates) and are committed synchronously before the next poll.
fn poll_and_commit(consumers: &[(&str, &TestConsumer)], seen: &mut BTreeMap<(i32, i64), String>) {
    for (name, c) in consumers {
        match c.poll(Duration::from_millis(50)) {
            Some(Ok(m)) => {
                let g = got(&m);
                let assigned = c.assignment().unwrap();
                assert!(
                    assigned.find_partition("grp", g.partition).is_some(),
                    "{name} got a record of partition {} outside its assignment {:?}",
                    g.partition,
                    assigned.to_topic_map()
                );
                if let Some(first) = seen.insert((g.partition, g.offset), name.to_string()) {
                    panic!(
                        "record {}@{} consumed twice: first by {first}, again by {name}",
                        g.partition, g.offset
                    );
                }
                assert_eq!(g.value, format!("p{}-{}", g.partition, g.offset));
                c.commit_consumer_state(CommitMode::Sync)
                    .unwrap_or_else(|e| panic!("{name}: synchronous commit failed: {e}"));
            }
            Some(Err(KafkaError::PartitionEOF(_))) | None => {}
            Some(Err(e)) => panic!("{name}: consumer error: {e}"),
        }
    }
}

fn assigned(c: &TestConsumer) -> BTreeSet<i32> {
    c.assignment()
        .expect("assignment")
        .elements()
        .iter()
        .map(|e| e.partition())
        .collect()
}

#[test]
fn consumer_group_rebalances_and_resumes_from_commits() {
    let broker = TestBroker::start();
    create_topic(&broker, "grp", 4, &[]);
    let p = producer(&broker, &[("acks", "all")]);
    for part in 0..4 {
        let records: Vec<(String, String)> = (0..100)
            .map(|i| (format!("k{i}"), format!("p{part}-{i}")))
            .collect();
        let r = produce_all(&p, "grp", &records, Some(part));
        assert_eq!(r.last().unwrap().offset, 99);
    }
    let all: BTreeSet<i32> = (0..4).collect();
    let mut seen: BTreeMap<(i32, i64), String> = BTreeMap::new();

    // A alone: gets all four partitions, consumes and commits some.
    let a = group_consumer(&broker, "g1");
    a.subscribe(&["grp"]).unwrap();
    let deadline = Instant::now() + DEADLINE;
    while assigned(&a) != all || seen.len() < 60 {
        assert!(
            Instant::now() < deadline,
            "A alone: assignment {:?}, {} records",
            assigned(&a),
            seen.len()
        );
        poll_and_commit(&[("A", &a)], &mut seen);
    }

    // B joins: the partitions are split between A and B.
    let b = group_consumer(&broker, "g1");
    b.subscribe(&["grp"]).unwrap();
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (pa, pb) = (assigned(&a), assigned(&b));
        if !pa.is_empty()
            && !pb.is_empty()
            && pa.is_disjoint(&pb)
            && pa.union(&pb).copied().collect::<BTreeSet<_>>() == all
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no split of 4 partitions after B joined: A {pa:?}, B {pb:?}"
        );
        poll_and_commit(&[("A", &a), ("B", &b)], &mut seen);
    }
    // Both consume in the split state.
    let before = seen.len();
    let deadline = Instant::now() + DEADLINE;
    while seen.len() < before + 80 {
        assert!(Instant::now() < deadline, "no progress while split");
        poll_and_commit(&[("A", &a), ("B", &b)], &mut seen);
    }
    let by_b = seen.values().filter(|n| *n == "B").count();
    assert!(by_b > 0, "B consumed nothing after the split");

    // B leaves: A gets every partition back.
    close_bounded(b, "consumer B");
    let deadline = Instant::now() + DEADLINE;
    while assigned(&a) != all {
        assert!(
            Instant::now() < deadline,
            "A did not get all partitions back after B left: {:?}",
            assigned(&a)
        );
        poll_and_commit(&[("A", &a)], &mut seen);
    }
    let before = seen.len();
    let deadline = Instant::now() + DEADLINE;
    while seen.len() < before + 20 {
        assert!(Instant::now() < deadline, "A made no progress after B left");
        poll_and_commit(&[("A", &a)], &mut seen);
    }
    let consumed_before_c = seen.len();
    assert!(consumed_before_c < 400, "the test must leave records for C");
    close_bounded(a, "consumer A");

    // C, a new member of the group, resumes exactly from the commits.
    let c = group_consumer(&broker, "g1");
    c.subscribe(&["grp"]).unwrap();
    let deadline = Instant::now() + DEADLINE;
    while seen.len() < 400 {
        assert!(
            Instant::now() < deadline,
            "C: {} of 400 records consumed in all; missing e.g. {:?}",
            seen.len(),
            (0..4)
                .flat_map(|p| (0..100).map(move |o| (p, o)))
                .find(|k| !seen.contains_key(k))
        );
        poll_and_commit(&[("C", &c)], &mut seen);
    }
    let by_c = seen.values().filter(|n| *n == "C").count();
    assert_eq!(
        by_c,
        400 - consumed_before_c,
        "C consumed exactly the uncommitted rest"
    );
    // Nothing more arrives, and the group's commits are at the end.
    let quiet = Instant::now() + Duration::from_millis(700);
    while Instant::now() < quiet {
        poll_and_commit(&[("C", &c)], &mut seen);
    }
    assert_eq!(seen.len(), 400);
    close_bounded(c, "consumer C");

    // The group's committed offsets are at the end of every partition, as
    // another client of the group reads them (OffsetFetch). (Asked of a
    // consumer that is not subscribed: librdkafka's close of a subscribed
    // consumer that called committed() never completes.)
    let probe = group_consumer(&broker, "g1");
    let mut tpl = TopicPartitionList::new();
    for part in 0..4 {
        tpl.add_partition("grp", part);
    }
    let committed = probe
        .committed_offsets(tpl, OP_TIMEOUT)
        .expect("committed offsets");
    let offsets: BTreeMap<i32, Offset> = committed
        .elements()
        .iter()
        .map(|e| (e.partition(), e.offset()))
        .collect();
    assert_eq!(
        offsets,
        (0..4).map(|p| (p, Offset::Offset(100))).collect(),
        "committed offsets"
    );
    close_bounded(probe, "the offset probe");
}

#[test]
fn idempotent_producer_stores_each_record_once() {
    let broker = TestBroker::start();
    let topic = "idem";
    create_topic(&broker, topic, 3, &[]);
    let p = producer(
        &broker,
        &[
            ("enable.idempotence", "true"),
            ("compression.type", "snappy"),
            ("batch.num.messages", "50"),
        ],
    );
    let records: Vec<(String, String)> = (0..600)
        .map(|i| (format!("user-{}", i % 31), format!("event-{i}")))
        .collect();
    let reports = produce_all(&p, topic, &records, None);
    check_offsets(&reports, &BTreeMap::new(), 3);
    p.flush(OP_TIMEOUT).expect("flush");
    assert_eq!(
        p.client().fatal_error(),
        None,
        "the idempotent producer hit a fatal error (InitProducerId or sequence handling)"
    );
    // A second batch of sends through the same producer continues the sequences.
    let more: Vec<(String, String)> = (600..700)
        .map(|i| (format!("user-{}", i % 31), format!("event-{i}")))
        .collect();
    let more_reports = produce_all(&p, topic, &more, None);
    assert_eq!(p.client().fatal_error(), None);
    drop(p);

    let c = assign_consumer(&broker, &[]);
    let mut tpl = TopicPartitionList::new();
    for part in 0..3 {
        tpl.add_partition_offset(topic, part, Offset::Beginning)
            .unwrap();
    }
    c.assign(&tpl).unwrap();
    let consumed = consume_n(&c, 700);
    assert_in_order(&consumed);
    let mut values: Vec<String> = consumed.iter().map(|g| g.value.clone()).collect();
    values.sort();
    let mut expected: Vec<String> = (0..700).map(|i| format!("event-{i}")).collect();
    expected.sort();
    assert_eq!(values, expected, "every record exactly once");
    let mut all_reports = reports;
    all_reports.extend(more_reports);
    for g in &consumed {
        let r = all_reports
            .iter()
            .find(|r| r.value == g.value)
            .expect("a report for every record");
        assert_eq!(
            (g.partition, g.offset, &g.key),
            (r.partition, r.offset, &r.key)
        );
    }
    for part in 0..3 {
        let (lo, hi) = c.fetch_watermarks(topic, part, OP_TIMEOUT).unwrap();
        let n = consumed.iter().filter(|g| g.partition == part).count() as i64;
        assert_eq!((lo, hi), (0, n), "partition {part} holds no duplicates");
    }
    drop(c);

    // On disk, the batches carry the producer id the broker handed out and
    // consecutive sequences.
    let mut broker = broker;
    broker.stop_gracefully();
    let store = sluice::log::LogStore::open(broker.data_dir(), common::quiet()).unwrap();
    let mut producer_ids = BTreeSet::new();
    for part in 0..3 {
        let partition = store.partition(topic, part).unwrap();
        let (bytes, _) = partition.read(0, 16 << 20).unwrap();
        let batches = common::decode_batches(&bytes, &format!("{topic}-{part}"));
        assert!(!batches.is_empty());
        let mut next_seq = 0;
        for b in &batches {
            assert!(
                b.header.producer_id >= 0,
                "batch without a producer id: {:?}",
                b.header
            );
            assert_eq!(b.header.producer_epoch, 0);
            assert_eq!(
                b.header.base_sequence, next_seq,
                "{topic}-{part}: sequence gap"
            );
            next_seq += b.header.records_count;
            producer_ids.insert(b.header.producer_id);
        }
    }
    assert_eq!(producer_ids.len(), 1, "one producer id: {producer_ids:?}");
    store.close().unwrap();
}

#[test]
fn long_poll_wakes_up_when_a_record_arrives() {
    let broker = TestBroker::start();
    let topic = "wake";
    create_topic(&broker, topic, 1, &[]);
    let p = producer(&broker, &[("acks", "1"), ("linger.ms", "0")]);
    let c = assign_consumer(&broker, &[("fetch.wait.max.ms", "5000")]);
    // A first record, so the consumer's first fetch returns at once; its
    // next fetch (at offset 1, the end) then parks in the broker's long poll.
    produce_all(&p, topic, &[("k".to_string(), "primer".to_string())], None);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .unwrap();
    c.assign(&tpl).unwrap();
    let deadline = Instant::now() + DEADLINE;
    loop {
        assert!(Instant::now() < deadline, "the first record never arrived");
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                assert_eq!((m.offset(), m.payload()), (0, Some(&b"primer"[..])));
                break;
            }
            Some(Err(e)) => panic!("consumer error: {e}"),
            None => {}
        }
    }
    for round in 1..=3i64 {
        // Let the consumer's fetch at the end settle into the long poll.
        let settle = Instant::now() + Duration::from_millis(600);
        while Instant::now() < settle {
            if let Some(m) = c.poll(Duration::from_millis(100)) {
                panic!("unexpected consumer event: {:?}", m.map(|m| m.offset()));
            }
        }
        let value = format!("wake-{round}");
        let produced = produce_all(&p, topic, &[("k".to_string(), value.clone())], None);
        let sent = Instant::now();
        assert_eq!(produced[0].offset, round);
        loop {
            let waited = sent.elapsed();
            assert!(
                waited < Duration::from_secs(2),
                "round {round}: the record was not delivered within {waited:?} of being produced (fetch.wait.max.ms=5000): the long poll was not woken"
            );
            match c.poll(Duration::from_millis(50)) {
                Some(Ok(m)) => {
                    assert_eq!(m.offset(), round);
                    assert_eq!(m.payload(), Some(value.as_bytes()));
                    break;
                }
                Some(Err(e)) => panic!("consumer error: {e}"),
                None => {}
            }
        }
    }
}

#[test]
fn admin_create_describe_grow_delete_and_refusals() {
    let broker = TestBroker::start();
    let admin = admin(&broker);
    let opts = admin_opts();
    create_topic(
        &broker,
        "adm",
        2,
        &[("retention.ms", "3600000"), ("segment.bytes", "1048576")],
    );

    // DescribeConfigs returns what CreateTopics set.
    let described = block_on(admin.describe_configs([&ResourceSpecifier::Topic("adm")], &opts))
        .expect("DescribeConfigs");
    assert_eq!(described.len(), 1);
    let resource = described[0].as_ref().expect("describe adm");
    let entries = resource.entry_map();
    assert_eq!(
        entries.get("retention.ms").and_then(|e| e.value.as_deref()),
        Some("3600000"),
        "{entries:?}"
    );
    assert_eq!(
        entries
            .get("segment.bytes")
            .and_then(|e| e.value.as_deref()),
        Some("1048576")
    );
    assert!(
        !entries["retention.ms"].is_default,
        "retention.ms was set on the topic"
    );

    // CreatePartitions grows it; shrinking is refused.
    let results =
        block_on(admin.create_partitions([&NewPartitions::new("adm", 5)], &opts)).unwrap();
    assert_eq!(results, vec![Ok("adm".to_string())]);
    let md = admin
        .inner()
        .fetch_metadata(Some("adm"), OP_TIMEOUT)
        .expect("metadata");
    assert_eq!(md.topics().len(), 1);
    assert_eq!(
        md.topics()[0].partitions().len(),
        5,
        "adm has 5 partitions after growing"
    );
    let results =
        block_on(admin.create_partitions([&NewPartitions::new("adm", 3)], &opts)).unwrap();
    assert_eq!(
        results,
        vec![Err((
            "adm".to_string(),
            RDKafkaErrorCode::InvalidPartitions
        ))]
    );
    // The grown topic takes writes on its new partitions.
    let p = producer(&broker, &[("acks", "all")]);
    let r = produce_all(&p, "adm", &[("k".into(), "v".into())], Some(4));
    assert_eq!((r[0].partition, r[0].offset), (4, 0));
    drop(p);

    // A second create of the same topic, and a replication factor of 3.
    let dup = NewTopic::new("adm", 1, TopicReplication::Fixed(1));
    let results = block_on(admin.create_topics([&dup], &opts)).unwrap();
    assert_eq!(
        results,
        vec![Err((
            "adm".to_string(),
            RDKafkaErrorCode::TopicAlreadyExists
        ))]
    );
    let rf3 = NewTopic::new("rf3", 1, TopicReplication::Fixed(3));
    let results = block_on(admin.create_topics([&rf3], &opts)).unwrap();
    match &results[..] {
        [Err((name, code))] => {
            assert_eq!(name, "rf3");
            assert_eq!(*code, RDKafkaErrorCode::InvalidReplicationFactor);
            assert!(
                code.to_string().to_lowercase().contains("replication"),
                "the error mentions replication: {code}"
            );
        }
        other => panic!("replication factor 3 must fail, got {other:?}"),
    }

    // DeleteTopics removes it: metadata no longer lists it.
    let results = block_on(admin.delete_topics(&["adm"], &opts)).unwrap();
    assert_eq!(results, vec![Ok("adm".to_string())]);
    let md = admin
        .inner()
        .fetch_metadata(None, OP_TIMEOUT)
        .expect("metadata");
    let names: Vec<&str> = md.topics().iter().map(|t| t.name()).collect();
    assert!(
        !names.contains(&"adm"),
        "adm still listed after deletion: {names:?}"
    );
    assert!(
        !names.contains(&"rf3"),
        "rf3 must not have been created: {names:?}"
    );
    let results = block_on(admin.delete_topics(&["adm"], &opts)).unwrap();
    assert_eq!(
        results,
        vec![Err((
            "adm".to_string(),
            RDKafkaErrorCode::UnknownTopicOrPartition
        ))]
    );
}

/// DeleteRecords through librdkafka's admin API: the low watermark moves
/// (inside a batch too), a consumer from the beginning starts there, an
/// offset past the end and an unknown topic are refused per partition.
#[test]
fn delete_records_moves_the_low_watermark() {
    let broker = TestBroker::start();
    create_topic(&broker, "purged", 2, &[("segment.bytes", "4096")]);
    let p = producer(&broker, &[]);
    let records: Vec<(String, String)> = (0..300)
        .map(|i| (format!("k{}", i % 7), format!("v{i}-{}", "x".repeat(20))))
        .collect();
    let reports = produce_all(&p, "purged", &records, None);
    let end = check_offsets(&reports, &BTreeMap::new(), 2);
    let admin = admin(&broker);
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset("purged", 0, Offset::Offset(37))
        .unwrap();
    tpl.add_partition_offset("purged", 1, Offset::End).unwrap();
    let result = block_on(admin.delete_records(&tpl, &admin_opts())).expect("DeleteRecords");
    let low: BTreeMap<i32, Offset> = result
        .elements()
        .iter()
        .map(|e| {
            e.error()
                .unwrap_or_else(|err| panic!("partition {}: {err}", e.partition()));
            (e.partition(), e.offset())
        })
        .collect();
    assert_eq!(low[&0], Offset::Offset(37));
    assert_eq!(low[&1], Offset::Offset(end[&1]));

    let consumer = assign_consumer(&broker, &[]);
    let (lo, hi) = consumer
        .fetch_watermarks("purged", 0, OP_TIMEOUT)
        .expect("watermarks");
    assert_eq!((lo, hi), (37, end[&0]));
    let mut from_start = TopicPartitionList::new();
    from_start
        .add_partition_offset("purged", 0, Offset::Beginning)
        .unwrap();
    consumer.assign(&from_start).unwrap();
    let got = consume_n(&consumer, (end[&0] - 37) as usize);
    assert_eq!(got.first().map(|g| g.offset), Some(37));

    let mut bad = TopicPartitionList::new();
    bad.add_partition_offset("purged", 0, Offset::Offset(end[&0] + 5))
        .unwrap();
    bad.add_partition_offset("no-such-topic", 0, Offset::Offset(1))
        .unwrap();
    let result = block_on(admin.delete_records(&bad, &admin_opts()));
    let errors: Vec<String> = match result {
        Ok(tpl) => tpl
            .elements()
            .iter()
            .map(|e| format!("{}: {:?}", e.topic(), e.error().err()))
            .collect(),
        Err(e) => vec![e.to_string()],
    };
    assert!(
        errors.iter().any(|e| e.contains("OffsetOutOfRange")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.contains("UnknownTopicOrPartition")),
        "{errors:?}"
    );
}
