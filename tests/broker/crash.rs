//! Crash test of the broker: an idempotent librdkafka producer with
//! acks=all writes numbered records while the broker is killed with SIGKILL
//! and restarted on the same port and data directory, again and again.
//! Afterwards every acknowledged record must be in its partition exactly
//! once and in the order it was produced; records that were in flight at a
//! kill may be there too, but never twice.
//!
//! Iterations: SLUICE_BROKER_CRASH_ITERATIONS (default 8 in CI).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

use crate::common;
use crate::common::broker::{BrokerOpts, TestBroker};

const TOPIC: &str = "crash";
const PARTITIONS: i32 = 2;

fn iterations() -> usize {
    common::env_or("SLUICE_BROKER_CRASH_ITERATIONS", 8)
}

/// Sequence numbers acknowledged per partition, and delivery failures.
#[derive(Default)]
struct Acks {
    acked: HashMap<i32, Vec<u64>>,
    failed: Vec<String>,
}

struct Recorder(Arc<Mutex<Acks>>);

impl ClientContext for Recorder {}

impl ProducerContext for Recorder {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let mut acks = self.0.lock().unwrap();
        match result {
            Ok(m) => {
                let seq = parse_seq(m.payload().unwrap_or_default());
                acks.acked.entry(m.partition()).or_default().push(seq);
            }
            Err((e, m)) => acks.failed.push(format!(
                "record {} of partition {}: {e}",
                parse_seq(m.payload().unwrap_or_default()),
                m.partition()
            )),
        }
    }
}

fn parse_seq(payload: &[u8]) -> u64 {
    std::str::from_utf8(payload)
        .ok()
        .and_then(|s| s.split_once(':'))
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or(u64::MAX)
}

fn create_topic(broker: &TestBroker) {
    broker.create_topic(TOPIC, PARTITIONS);
}

/// Reads every record of `partition` from the beginning to the high-water mark.
fn read_all(bootstrap: &str, partition: i32) -> Vec<u64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "crash-check")
        .set("enable.auto.commit", "false")
        .create()
        .expect("create consumer");
    let (_, high) = consumer
        .fetch_watermarks(TOPIC, partition, Duration::from_secs(10))
        .expect("watermarks");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(TOPIC, partition, Offset::Beginning)
        .unwrap();
    consumer.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let mut next = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while next < high {
        assert!(
            Instant::now() < deadline,
            "reading {TOPIC}-{partition} stalled at offset {next} of {high}"
        );
        if let Some(m) = consumer.poll(Duration::from_millis(200)) {
            let m = m.expect("consume");
            assert_eq!(m.offset(), next, "offsets must be consecutive");
            next = m.offset() + 1;
            out.push(parse_seq(m.payload().unwrap_or_default()));
        }
    }
    out
}

#[test]
fn acknowledged_records_survive_sigkill_once_and_in_order() {
    let mut broker = TestBroker::start_with(BrokerOpts::default());
    create_topic(&broker);
    let acks = Arc::new(Mutex::new(Acks::default()));
    let producer: ThreadedProducer<Recorder> = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "120000")
        .set("reconnect.backoff.ms", "20")
        .set("reconnect.backoff.max.ms", "200")
        .create_with_context(Recorder(acks.clone()))
        .expect("create producer");

    let mut sent: HashMap<i32, u64> = HashMap::new();
    let mut send_for = |producer: &ThreadedProducer<Recorder>, d: Duration| {
        let until = Instant::now() + d;
        while Instant::now() < until {
            for p in 0..PARTITIONS {
                let seq = sent.entry(p).or_default();
                let value = format!("{p}:{seq}");
                let record = BaseRecord::<(), _>::to(TOPIC).partition(p).payload(&value);
                match producer.send(record) {
                    Ok(()) => *seq += 1,
                    // Queue full while the broker is down: wait a little.
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        }
    };

    let n = iterations();
    for i in 0..n {
        send_for(&producer, Duration::from_millis(300 + 97 * (i as u64 % 5)));
        let port = broker.addr().port();
        broker.kill();
        send_for(&producer, Duration::from_millis(50));
        broker.restart();
        assert_eq!(
            broker.addr().port(),
            port,
            "the broker must come back on the producer's port"
        );
    }
    send_for(&producer, Duration::from_millis(300));
    producer
        .flush(Duration::from_secs(120))
        .expect("every record is acknowledged or failed within 2 minutes");

    let acks = acks.lock().unwrap();
    assert!(
        acks.failed.is_empty(),
        "deliveries failed: {:?}\nbroker log:\n{}",
        &acks.failed[..acks.failed.len().min(10)],
        broker.all_logs()
    );
    let mut total_acked = 0;
    for p in 0..PARTITIONS {
        let stored = read_all(&broker.bootstrap(), p);
        // Once and in order: strictly increasing sequence numbers.
        for w in stored.windows(2) {
            assert!(
                w[0] < w[1],
                "{TOPIC}-{p}: record {} followed by {} (duplicate or reordered)",
                w[0],
                w[1]
            );
        }
        let acked = acks.acked.get(&p).cloned().unwrap_or_default();
        total_acked += acked.len();
        let stored_set: std::collections::HashSet<u64> = stored.iter().copied().collect();
        let missing: Vec<u64> = acked
            .iter()
            .copied()
            .filter(|s| !stored_set.contains(s))
            .collect();
        assert!(
            missing.is_empty(),
            "{TOPIC}-{p}: {} acknowledged records missing after {n} SIGKILLs, e.g. {:?}",
            missing.len(),
            &missing[..missing.len().min(10)]
        );
        // Every record was sent, so with the producer flushed nothing may be
        // absent either: all sent sequence numbers are stored.
        assert_eq!(
            stored.len() as u64,
            sent[&p],
            "{TOPIC}-{p}: stored {} of {} sent records",
            stored.len(),
            sent[&p]
        );
    }
    eprintln!(
        "{n} SIGKILLs: {total_acked} records acknowledged, {} sent, all stored once and in order",
        sent.values().sum::<u64>()
    );
    assert!(total_acked > 0, "nothing was acknowledged");
}
