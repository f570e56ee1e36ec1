//! Kafka transactions through librdkafka (`rdkafka`), a client we did not
//! write: commit and abort, a read_committed consumer seeing committed
//! records only, in order, and a read_uncommitted one seeing both; an open
//! transaction holding read_committed readers back; fencing by a second
//! producer with the same transactional id; consume-transform-produce with
//! `send_offsets_to_transaction`; the broker aborting a transaction that
//! outlives its timeout; and transaction state surviving a SIGKILL.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rdkafka::consumer::{Consumer, ConsumerGroupMetadata};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use crate::common::broker::{BrokerOpts, TestBroker};
use crate::rdkafka::{
    DEADLINE, OP_TIMEOUT, TestConsumer, assign_consumer, block_on, close_bounded, create_topic,
    group_consumer, producer,
};

/// (partition, offset, value) of one consumed record.
type Seen = (i32, i64, String);

fn txn_producer(broker: &TestBroker, id: &str, extra: &[(&str, &str)]) -> FutureProducer {
    let mut settings = vec![
        ("transactional.id", id),
        ("transaction.timeout.ms", "30000"),
    ];
    settings.extend_from_slice(extra);
    let p = producer(broker, &settings);
    p.init_transactions(OP_TIMEOUT)
        .unwrap_or_else(|e| panic!("init_transactions for {id}: {e}"));
    p
}

/// Sends `values` to `partition` inside the producer's open transaction and
/// waits for every delivery report.
fn send(p: &FutureProducer, topic: &str, partition: i32, values: &[String]) {
    let futures: Vec<_> = values
        .iter()
        .map(|v| {
            p.send_result(
                FutureRecord::<(), _>::to(topic)
                    .partition(partition)
                    .payload(v),
            )
            .unwrap_or_else(|(e, _)| panic!("enqueueing {v}: {e}"))
        })
        .collect();
    block_on(async {
        for (v, f) in values.iter().zip(futures) {
            tokio::time::timeout(DEADLINE, f)
                .await
                .unwrap_or_else(|_| panic!("no delivery report for {v}"))
                .expect("delivery future cancelled")
                .unwrap_or_else(|(e, _)| panic!("delivery of {v} failed: {e}"));
        }
    });
}

fn values(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i}")).collect()
}

fn consumer_at(broker: &TestBroker, isolation: &str, topic: &str, partitions: i32) -> TestConsumer {
    let c = assign_consumer(
        broker,
        &[
            ("isolation.level", isolation),
            ("enable.partition.eof", "true"),
        ],
    );
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, Offset::Beginning)
            .expect("assign");
    }
    c.assign(&tpl).expect("assign partitions");
    c
}

/// Everything a consumer reads for `quiet` after it last saw a record
/// (bounded by [`DEADLINE`]), in arrival order.
fn drain(c: &TestConsumer, quiet: Duration) -> Vec<Seen> {
    let mut out = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    let mut last = Instant::now();
    while last.elapsed() < quiet {
        assert!(
            Instant::now() < deadline,
            "the consumer kept reading for {DEADLINE:?}"
        );
        match c.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                out.push((
                    m.partition(),
                    m.offset(),
                    String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
                ));
                last = Instant::now();
            }
            Some(Err(KafkaError::PartitionEOF(_))) | None => {}
            Some(Err(e)) => panic!("consumer error: {e}"),
        }
    }
    out
}

fn read_all(broker: &TestBroker, isolation: &str, topic: &str, partitions: i32) -> Vec<Seen> {
    let c = consumer_at(broker, isolation, topic, partitions);
    let seen = drain(&c, Duration::from_millis(1500));
    close_bounded(c, "a reading consumer");
    seen
}

/// Values per partition, in offset order.
fn by_partition(seen: &[Seen]) -> BTreeMap<i32, Vec<String>> {
    let mut out: BTreeMap<i32, Vec<(i64, String)>> = BTreeMap::new();
    for (p, o, v) in seen {
        out.entry(*p).or_default().push((*o, v.clone()));
    }
    out.into_iter()
        .map(|(p, mut rows)| {
            let arrival: Vec<i64> = rows.iter().map(|r| r.0).collect();
            rows.sort();
            assert_eq!(
                arrival,
                rows.iter().map(|r| r.0).collect::<Vec<_>>(),
                "partition {p}: records arrived out of offset order"
            );
            (p, rows.into_iter().map(|r| r.1).collect())
        })
        .collect()
}

fn error_code(e: &KafkaError) -> Option<RDKafkaErrorCode> {
    match e {
        KafkaError::Transaction(t) => Some(t.code()),
        other => other.rdkafka_error_code(),
    }
}

#[test]
fn committed_records_only_for_read_committed_consumers() {
    let broker = TestBroker::start();
    create_topic(&broker, "tx", 2, &[]);
    let p = txn_producer(&broker, "tx-commit-abort", &[]);

    p.begin_transaction().expect("begin");
    send(&p, "tx", 0, &values("c1-p0", 5));
    send(&p, "tx", 1, &values("c1-p1", 5));
    p.commit_transaction(OP_TIMEOUT).expect("commit");

    p.begin_transaction().expect("begin");
    send(&p, "tx", 0, &values("a-p0", 4));
    send(&p, "tx", 1, &values("a-p1", 4));
    p.abort_transaction(OP_TIMEOUT).expect("abort");

    p.begin_transaction().expect("begin");
    send(&p, "tx", 0, &values("c2-p0", 3));
    p.commit_transaction(OP_TIMEOUT).expect("commit");

    let committed = by_partition(&read_all(&broker, "read_committed", "tx", 2));
    let mut want0 = values("c1-p0", 5);
    want0.extend(values("c2-p0", 3));
    assert_eq!(
        committed.get(&0),
        Some(&want0),
        "read_committed partition 0"
    );
    assert_eq!(
        committed.get(&1),
        Some(&values("c1-p1", 5)),
        "read_committed partition 1"
    );

    let everything = by_partition(&read_all(&broker, "read_uncommitted", "tx", 2));
    let mut all0 = values("c1-p0", 5);
    all0.extend(values("a-p0", 4));
    all0.extend(values("c2-p0", 3));
    assert_eq!(
        everything.get(&0),
        Some(&all0),
        "read_uncommitted partition 0"
    );
    let mut all1 = values("c1-p1", 5);
    all1.extend(values("a-p1", 4));
    assert_eq!(
        everything.get(&1),
        Some(&all1),
        "read_uncommitted partition 1"
    );

    // No transaction is open: the last stable offset is the high-water mark.
    let c = consumer_at(&broker, "read_committed", "tx", 2);
    let (low, high) = c.fetch_watermarks("tx", 0, OP_TIMEOUT).expect("watermarks");
    // 5 + 4 + 3 records and three markers.
    assert_eq!((low, high), (0, 15));
    close_bounded(c, "watermark consumer");
    drop(p);
}

#[test]
fn an_open_transaction_holds_read_committed_readers_back() {
    let broker = TestBroker::start();
    create_topic(&broker, "held", 1, &[]);
    let txn = txn_producer(&broker, "tx-held", &[]);
    let plain = producer(&broker, &[]);

    txn.begin_transaction().expect("begin");
    send(&txn, "held", 0, &values("open", 3));
    // Plain records after the open transaction's first record.
    send(&plain, "held", 0, &values("plain", 2));

    let reader = consumer_at(&broker, "read_committed", "held", 1);
    assert!(
        drain(&reader, Duration::from_millis(1500)).is_empty(),
        "a read_committed reader must stop at the open transaction"
    );
    assert_eq!(read_all(&broker, "read_uncommitted", "held", 1).len(), 5);

    txn.commit_transaction(OP_TIMEOUT).expect("commit");
    let seen = by_partition(&drain(&reader, Duration::from_millis(1500)));
    let mut want = values("open", 3);
    want.extend(values("plain", 2));
    assert_eq!(
        seen.get(&0),
        Some(&want),
        "released in offset order once committed"
    );
    close_bounded(reader, "held reader");
}

#[test]
fn a_second_producer_fences_the_first_and_aborts_its_transaction() {
    let broker = TestBroker::start();
    create_topic(&broker, "fence", 1, &[]);
    let first = txn_producer(&broker, "tx-fence", &[]);
    first.begin_transaction().expect("begin");
    send(&first, "fence", 0, &values("zombie", 3));

    let second = txn_producer(&broker, "tx-fence", &[]);
    let err = first
        .commit_transaction(OP_TIMEOUT)
        .expect_err("the fenced producer must not commit");
    // librdkafka reports the broker's PRODUCER_FENCED as its local _FENCED.
    assert!(
        matches!(
            error_code(&err),
            Some(
                RDKafkaErrorCode::Fenced
                    | RDKafkaErrorCode::ProducerFenced
                    | RDKafkaErrorCode::InvalidProducerEpoch
            )
        ),
        "expected a fencing error, got {err}"
    );

    second.begin_transaction().expect("begin");
    send(&second, "fence", 0, &values("live", 2));
    second.commit_transaction(OP_TIMEOUT).expect("commit");
    let seen = by_partition(&read_all(&broker, "read_committed", "fence", 1));
    assert_eq!(seen.get(&0), Some(&values("live", 2)));
    drop(first);
}

#[test]
fn offsets_sent_to_a_transaction_commit_with_it_and_only_with_it() {
    let broker = TestBroker::start();
    create_topic(&broker, "ctp-in", 1, &[]);
    create_topic(&broker, "ctp-out", 1, &[]);
    send_plain(&broker, "ctp-in", &values("in", 10));

    let consumer = group_consumer(&broker, "ctp");
    consumer.subscribe(&["ctp-in"]).expect("subscribe");
    let input = drain_until(&consumer, 10);
    let group: ConsumerGroupMetadata = consumer.group_metadata().expect("group metadata");
    let p = txn_producer(&broker, "tx-ctp", &[]);
    let mut offsets = TopicPartitionList::new();
    offsets
        .add_partition_offset("ctp-in", 0, Offset::Offset(10))
        .expect("offset");

    // One consume-transform-produce round, left open for its ending.
    let transform = || {
        p.begin_transaction().expect("begin");
        let upper: Vec<String> = input.iter().map(|v| v.to_uppercase()).collect();
        send(&p, "ctp-out", 0, &upper);
        p.send_offsets_to_transaction(&offsets, &group, OP_TIMEOUT)
            .expect("send offsets");
    };

    // Aborted: neither the output nor the offsets count.
    transform();
    p.abort_transaction(OP_TIMEOUT).expect("abort");
    assert_eq!(
        committed_offset(&consumer),
        None,
        "aborted offsets must not be committed"
    );

    transform();
    p.commit_transaction(OP_TIMEOUT).expect("commit");
    assert_eq!(committed_offset(&consumer), Some(10));
    let out = by_partition(&read_all(&broker, "read_committed", "ctp-out", 1));
    assert_eq!(
        out.get(&0),
        Some(&values("IN", 10)),
        "the committed transaction's output, once"
    );
    close_bounded(consumer, "ctp consumer");
}

fn send_plain(broker: &TestBroker, topic: &str, vals: &[String]) {
    let p = producer(broker, &[]);
    send(&p, topic, 0, vals);
}

fn drain_until(c: &TestConsumer, want: usize) -> Vec<String> {
    let mut out = Vec::new();
    let deadline = Instant::now() + DEADLINE;
    while out.len() < want {
        assert!(Instant::now() < deadline, "read {} of {want}", out.len());
        if let Some(Ok(m)) = c.poll(Duration::from_millis(100)) {
            out.push(String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned());
        }
    }
    out
}

fn committed_offset(c: &TestConsumer) -> Option<i64> {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition("ctp-in", 0);
    let got = c
        .committed_offsets(tpl, OP_TIMEOUT)
        .expect("committed offsets");
    match got.find_partition("ctp-in", 0).map(|e| e.offset()) {
        Some(Offset::Offset(o)) => Some(o),
        _ => None,
    }
}

#[test]
fn the_broker_aborts_transactions_that_outlive_their_timeout() {
    let broker = TestBroker::start_with(
        BrokerOpts::default()
            .arg("--transaction-check-interval")
            .arg("100ms")
            .arg("--transaction-max-timeout")
            .arg("60s"),
    );
    create_topic(&broker, "slow", 1, &[]);

    // Longer than the broker's maximum: refused at init.
    let refused = producer(
        &broker,
        &[
            ("transactional.id", "tx-too-long"),
            ("transaction.timeout.ms", "120000"),
        ],
    );
    let err = refused
        .init_transactions(OP_TIMEOUT)
        .expect_err("a timeout above --transaction-max-timeout is refused");
    assert_eq!(
        error_code(&err),
        Some(RDKafkaErrorCode::InvalidTransactionTimeout),
        "{err}"
    );

    // librdkafka wants its socket and message timeouts within the
    // transaction's.
    let p = txn_producer(
        &broker,
        "tx-slow",
        &[
            ("transaction.timeout.ms", "2000"),
            ("socket.timeout.ms", "2000"),
            ("message.timeout.ms", "2000"),
        ],
    );
    p.begin_transaction().expect("begin");
    send(&p, "slow", 0, &values("late", 2));
    // The broker aborts it; the LSO moves past it without the producer.
    let reader = consumer_at(&broker, "read_committed", "slow", 1);
    let deadline = Instant::now() + DEADLINE;
    loop {
        let (_, high) = reader
            .fetch_watermarks("slow", 0, OP_TIMEOUT)
            .expect("watermarks");
        if high == 3 {
            break; // two records and the ABORT marker
        }
        assert!(
            Instant::now() < deadline,
            "the timed-out transaction was not aborted"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(drain(&reader, Duration::from_millis(500)).is_empty());
    assert!(
        p.commit_transaction(OP_TIMEOUT).is_err(),
        "the timed-out producer was fenced"
    );
    close_bounded(reader, "slow reader");
}

#[test]
fn transactions_survive_a_broker_crash() {
    let mut broker = TestBroker::start();
    create_topic(&broker, "crashy", 1, &[]);
    let zombie = txn_producer(&broker, "tx-crash", &[]);
    zombie.begin_transaction().expect("begin");
    send(&zombie, "crashy", 0, &values("done", 3));
    zombie.commit_transaction(OP_TIMEOUT).expect("commit");
    zombie.begin_transaction().expect("begin");
    send(&zombie, "crashy", 0, &values("open", 2));
    broker.kill();
    broker.restart();
    // The open transaction's producer is gone; a new one with the same id
    // fences it and aborts its transaction.
    let p = txn_producer(&broker, "tx-crash", &[]);
    p.begin_transaction().expect("begin");
    send(&p, "crashy", 0, &values("after", 1));
    p.commit_transaction(OP_TIMEOUT).expect("commit");
    let seen = by_partition(&read_all(&broker, "read_committed", "crashy", 1));
    let mut want = values("done", 3);
    want.extend(values("after", 1));
    assert_eq!(seen.get(&0), Some(&want));
    drop(zombie);
}
