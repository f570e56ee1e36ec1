//! The broker's web console and `/metrics` as outsiders see them: a
//! consumer group's lag (log end − committed offset, kafka-lag-exporter's
//! metric) read by independent parsers and rendered by a real headless
//! browser, with its members and assignment.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};

use super::rdkafka::{block_on, create_topic, group_consumer, producer};
use crate::common::broker::{BrokerOpts, TestBroker, eventually};
use crate::common::console::{
    artifact, body_data, console_addr, get, get_json, rendered_dom, sample, scrape, table,
    tags_with,
};

const WAIT: Duration = Duration::from_secs(60);

#[test]
fn broker_console_and_metrics_show_a_groups_lag() {
    let broker = TestBroker::start_with(BrokerOpts::default().arg("--ui").arg("127.0.0.1:0"));
    let log = broker.wait_for_log("console: http://", WAIT);
    let addr = console_addr(&log).expect("the console's address");
    assert_eq!(get_json(addr, "/api/info")["kind"], "broker");
    assert_eq!(
        get(addr, "/api/job").status,
        404,
        "a broker has no job page"
    );

    create_topic(&broker, "clicks", 2, &[]);
    let p = producer(&broker, &[]);
    block_on(async {
        for i in 0..100 {
            let value = format!("click {i}");
            let record = FutureRecord::<(), _>::to("clicks")
                .partition(i % 2)
                .payload(&value);
            p.send(record, Duration::from_secs(20))
                .await
                .unwrap_or_else(|(e, _)| panic!("produce {i}: {e}"));
        }
    });

    // A live member of group "dashboards" that committed 30 and 10.
    let consumer = Arc::new(group_consumer(&broker, "dashboards"));
    consumer.subscribe(&["clicks"]).unwrap();
    eventually("the member gets both partitions", WAIT, || {
        let _ = consumer.poll(Duration::from_millis(100));
        (consumer.assignment().ok()?.count() == 2).then_some(())
    });
    let mut offsets = TopicPartitionList::new();
    offsets
        .add_partition_offset("clicks", 0, Offset::Offset(30))
        .unwrap();
    offsets
        .add_partition_offset("clicks", 1, Offset::Offset(10))
        .unwrap();
    consumer.commit(&offsets, CommitMode::Sync).unwrap();
    // Heartbeats keep the member in the group while the page loads.
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let (consumer, stop) = (consumer.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let _ = consumer.poll(Duration::from_millis(100));
            }
        })
    };

    let snapshot = eventually("the group's lag in /api/broker", WAIT, || {
        let s = get_json(addr, "/api/broker");
        let group = s["groups"]
            .as_array()?
            .iter()
            .find(|g| g["group"] == "dashboards")?
            .clone();
        (group["lag"] == 60 && !group["members"].as_array()?.is_empty()).then_some(s)
    });
    let topic = snapshot["topics"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "clicks")
        .expect("topic clicks");
    assert_eq!(topic["partitions"][0]["log_end"], 50);

    // /metrics: lag = end offset − committed offset, by two parsers.
    let samples = scrape(addr);
    for (partition, committed) in [("0", 30.0), ("1", 10.0)] {
        let at = [("topic", "clicks"), ("partition", partition)];
        let end = sample(&samples, "kafka_partition_latest_offset", &at).expect("latest offset");
        let group_at = [("group", "dashboards"), at[0], at[1]];
        assert_eq!(
            sample(&samples, "kafka_consumergroup_group_offset", &group_at),
            Some(committed)
        );
        assert_eq!(
            sample(&samples, "kafka_consumergroup_group_lag", &group_at),
            Some(end - committed),
            "lag of partition {partition}"
        );
    }
    assert_eq!(
        sample(
            &samples,
            "kafka_consumergroup_group_sum_lag",
            &[("group", "dashboards")]
        ),
        Some(60.0)
    );
    assert!(
        sample(
            &samples,
            "sluice_broker_requests_total",
            &[("api", "Produce")]
        )
        .is_some_and(|n| n >= 1.0)
    );
    assert!(
        sample(
            &samples,
            "sluice_broker_request_duration_seconds_count",
            &[("api", "OffsetCommit")]
        )
        .is_some_and(|n| n >= 1.0)
    );

    // The page, rendered.
    let dom = rendered_dom(
        &format!("http://{addr}/"),
        5000,
        Some(&artifact("broker.png")),
    );
    stop.store(true, Ordering::Relaxed);
    let _ = poller.join();
    assert_eq!(body_data(&dom, "kind").as_deref(), Some("broker"), "{dom}");
    assert_eq!(body_data(&dom, "ready").as_deref(), Some("1"), "{dom}");
    let groups = tags_with(table(&dom, "groups"), "tr", "data-group");
    let lag_of = |partition: &str| {
        groups
            .iter()
            .find(|r| {
                r["data-group"] == "dashboards"
                    && r["data-topic"] == "clicks"
                    && r["data-partition"] == partition
            })
            .map(|r| (r["data-committed"].clone(), r["data-lag"].clone()))
    };
    assert_eq!(lag_of("0"), Some(("30".into(), "20".into())), "{groups:?}");
    assert_eq!(lag_of("1"), Some(("10".into(), "40".into())), "{groups:?}");
    let topics = tags_with(table(&dom, "topics"), "tr", "data-topic");
    assert!(
        topics
            .iter()
            .any(|r| r["data-topic"] == "clicks" && r["data-log-end"] == "50"),
        "{topics:?}"
    );
}
