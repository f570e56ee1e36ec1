//! Burrow's rules one by one, the latency histogram, the consumer
//! assignment decoder, the sampler's commit windows, and the snapshot of a
//! real broker served over TCP.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::consumer_protocol_assignment::TopicPartition;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ConsumerProtocolAssignment, FetchRequest, GroupId,
    JoinGroupRequest, OffsetCommitRequest, RequestHeader, SyncGroupRequest, TopicName,
};
use kafka_protocol::protocol::{Encodable, StrBytes};
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::*;
use crate::config::BrokerConfig;
use crate::server::Broker;
use sluice_log::log::TopicConfig;

fn c(offset: i64, timestamp_ms: i64, lag: i64) -> CommitSample {
    CommitSample {
        offset,
        timestamp_ms,
        lag,
    }
}

/// Ten commits a second apart (0 s to 9 s), from `(offset, lag)` pairs.
fn window(points: &[(i64, i64)]) -> Vec<CommitSample> {
    points
        .iter()
        .enumerate()
        .map(|(i, &(offset, lag))| c(offset, 1_000 * i as i64, lag))
        .collect()
}

/// Just after the last commit of [`window`].
const SOON: i64 = 9_500;

#[test]
fn zero_lag_anywhere_in_the_window_is_ok() {
    // Stuck, rewound and silent for a minute, but caught up once: OK.
    let w = window(&[(5, 3), (5, 0), (4, 4), (4, 9)]);
    assert_eq!(evaluate(&w, 60_000), LagStatus::Ok);
}

#[test]
fn an_offset_moving_backwards_is_a_rewind() {
    let w = window(&[(10, 5), (20, 4), (15, 9), (30, 3)]);
    assert_eq!(evaluate(&w, 3_500), LagStatus::Rewind);
    // Even when it has also stopped since.
    assert_eq!(evaluate(&w, 60_000), LagStatus::Rewind);
}

#[test]
fn no_commit_for_longer_than_the_window_spans_is_a_stop() {
    // Spans 0..9 s and catching up; silent since 9 s.
    let w = window(&[(10, 90), (20, 80), (30, 70), (40, 60), (50, 50)]);
    let last = w[4].timestamp_ms;
    assert_eq!(evaluate(&w, last + 4_000), LagStatus::Ok);
    assert_eq!(evaluate(&w, last + 4_001), LagStatus::Stop);
}

#[test]
fn the_same_offset_over_the_window_with_lag_is_a_stall() {
    let w = window(&[(7, 3); COMMIT_WINDOW]);
    assert_eq!(evaluate(&w, SOON), LagStatus::Stall);
    // Two commits are enough to see it.
    assert_eq!(evaluate(&w[..2], 1_500), LagStatus::Stall);
}

#[test]
fn moving_offsets_with_a_lag_that_never_shrinks_warn() {
    let w = window(&[(10, 5), (20, 5), (30, 8), (40, 8), (50, 12)]);
    assert_eq!(evaluate(&w, 4_500), LagStatus::Warn);
}

#[test]
fn moving_offsets_with_a_lag_that_shrinks_once_are_ok() {
    let w = window(&[(10, 5), (20, 6), (30, 4), (40, 8)]);
    assert_eq!(evaluate(&w, 3_500), LagStatus::Ok);
}

#[test]
fn fewer_than_two_commits_show_no_trend() {
    assert_eq!(evaluate(&[], 0), LagStatus::Ok);
    assert_eq!(evaluate(&[c(5, 0, 100)], 1_000_000), LagStatus::Ok);
}

#[test]
fn statuses_order_from_best_to_worst_and_serialize_as_burrow_spells_them() {
    let mut all = [
        LagStatus::Stop,
        LagStatus::Ok,
        LagStatus::Stall,
        LagStatus::Warn,
        LagStatus::Rewind,
    ];
    all.sort();
    let names: Vec<String> = all
        .iter()
        .map(|s| serde_json::to_string(s).expect("serialize"))
        .collect();
    assert_eq!(
        names,
        ["\"OK\"", "\"WARN\"", "\"REWIND\"", "\"STALL\"", "\"STOP\""]
    );
}

#[test]
fn the_status_handle_can_go_to_any_thread_and_be_kept() {
    fn shareable<T: Clone + Send + Sync + 'static>() {}
    shareable::<BrokerStatus>();
    shareable::<BrokerSnapshot>();
}

#[test]
fn latencies_count_in_the_bucket_of_their_upper_bound_cumulatively() {
    let m = crate::metrics::Metrics::new();
    let key = ApiKey::Produce as i16;
    m.latency(key, Duration::from_micros(500)); // le 0.0005 exactly
    m.latency(key, Duration::from_nanos(500_001)); // le 0.001
    m.latency(key, Duration::from_millis(30)); // le 0.05
    m.latency(key, Duration::from_secs(10)); // le 10
    m.latency(key, Duration::from_secs(11)); // +Inf only
    m.latency(-1, Duration::from_secs(1)); // no such API: ignored
    let h = latency_histogram(&m.latency_of(key as usize));
    let bounds: Vec<f64> = h.buckets.iter().map(|b| b.le).collect();
    assert_eq!(
        bounds,
        [
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0
        ]
    );
    let counts: Vec<u64> = h.buckets.iter().map(|b| b.count).collect();
    assert_eq!(counts, [1, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 4]);
    assert_eq!(h.count, 5);
    assert!(
        (h.sum_seconds - 21.031_000_001).abs() < 1e-9,
        "{}",
        h.sum_seconds
    );
    assert_eq!(m.latency_of(ApiKey::Fetch as usize).count(), 0);
}

/// An assignment as a consumer group leader sends it: version, then the body.
fn encoded_assignment(version: i16, topics: &[(&str, &[i32])]) -> Bytes {
    let a = ConsumerProtocolAssignment::default()
        .with_assigned_partitions(
            topics
                .iter()
                .map(|(t, ps)| {
                    TopicPartition::default()
                        .with_topic(TopicName(StrBytes::from_string((*t).to_owned())))
                        .with_partitions(ps.to_vec())
                })
                .collect(),
        )
        .with_user_data(Some(Bytes::from_static(b"user")));
    let mut buf = BytesMut::new();
    buf.extend_from_slice(&version.to_be_bytes());
    a.encode(&mut buf, version).expect("encode");
    buf.freeze()
}

fn assigned(topic: &str, partitions: &[i32]) -> MemberAssignment {
    MemberAssignment {
        topic: topic.to_owned(),
        partitions: partitions.to_vec(),
    }
}

#[test]
fn consumer_assignments_decode_and_anything_else_does_not() {
    for version in [0, 1, 3] {
        let bytes = encoded_assignment(version, &[("a", &[0, 2]), ("b", &[])]);
        assert_eq!(
            decode_assignment(&bytes),
            Some(vec![assigned("a", &[0, 2]), assigned("b", &[])]),
            "v{version}"
        );
    }
    let bytes = encoded_assignment(0, &[("orders", &[1, 2, 3])]);
    for cut in 0..12 {
        assert_eq!(decode_assignment(&bytes[..cut]), None, "cut at {cut}");
    }
    assert_eq!(decode_assignment(&[0xff, 0xff, 0, 0, 0, 0]), None);
    // Claims two billion topics, then two billion partitions: refused
    // without reserving room for them.
    assert_eq!(decode_assignment(&[0, 0, 0x7f, 0xff, 0xff, 0xff]), None);
    let mut huge = vec![0, 0, 0, 0, 0, 1, 0, 1, b't'];
    huge.extend_from_slice(&i32::MAX.to_be_bytes());
    assert_eq!(decode_assignment(&huge), None);
    assert_eq!(
        decode_assignment(&[0, 0, 0, 0, 0, 1, 0, 2, 0xc3, 0x28]),
        None
    );
}

/// A batch of `n` records, as a non-transactional producer sends it.
fn batch(n: usize) -> BytesMut {
    let records: Vec<Record> = (0..n)
        .map(|i| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: -1,
            timestamp: 1_700_000_000_000,
            key: None,
            value: Some(Bytes::from_static(b"value")),
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        records.iter(),
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .expect("encode");
    buf
}

fn append(status: &BrokerStatus, topic: &str, partition: i32, n: usize) {
    status
        .shared
        .topics
        .store
        .partition(topic, partition)
        .expect("partition")
        .append(&mut batch(n))
        .expect("append");
}

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_owned())
}

/// Commits `(partition, offset)` of `topic` for `group`, as `member` of
/// `generation` (-1 and "" for a group without members).
fn commit(
    status: &BrokerStatus,
    group: &str,
    (generation, member): (i32, &str),
    topic: &str,
    offsets: &[(i32, i64)],
) {
    let req = OffsetCommitRequest::default()
        .with_group_id(GroupId(s(group)))
        .with_generation_id_or_member_epoch(generation)
        .with_member_id(s(member))
        .with_topics(vec![
            OffsetCommitRequestTopic::default()
                .with_name(TopicName(s(topic)))
                .with_partitions(
                    offsets
                        .iter()
                        .map(|&(p, o)| {
                            OffsetCommitRequestPartition::default()
                                .with_partition_index(p)
                                .with_committed_offset(o)
                        })
                        .collect(),
                ),
        ]);
    let store = status.shared.topics.store.clone();
    let exists = move |t: &str, p: i32| store.partition(t, p).is_ok();
    let r = status.shared.groups.offset_commit(req, 8, &exists);
    for p in r.topics.iter().flat_map(|t| &t.partitions) {
        assert_eq!(p.error_code, 0, "commit refused");
    }
}

fn config(dir: &std::path::Path) -> BrokerConfig {
    let mut config = BrokerConfig::new("127.0.0.1:0".parse().expect("addr"), dir);
    config.groups.initial_rebalance_delay = Duration::ZERO;
    config.status_sample_interval = Duration::from_millis(20);
    config
}

fn group<'a>(snap: &'a BrokerSnapshot, id: &str) -> &'a GroupStatus {
    snap.groups
        .iter()
        .find(|g| g.group == id)
        .unwrap_or_else(|| panic!("group {id} missing from {snap:#?}"))
}

#[tokio::test]
async fn the_sampler_keeps_the_last_ten_distinct_commits_and_burrow_judges_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::bind(config(dir.path())).await.expect("bind");
    // Not run: this test takes the samples itself.
    let status = broker.status();
    let store = status.shared.topics.store.clone();
    store
        .create_topic("t", 1, TopicConfig::default())
        .expect("topic");
    append(&status, "t", 0, 100);

    // Twelve commits catching up: the window keeps the last ten, once each.
    // They are spread out so that the window spans far longer than the
    // snapshot below follows the last one by (else it would be a STOP).
    for offset in 10..22 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        commit(&status, "g", (-1, ""), "t", &[(0, offset)]);
        status.sample();
        status.sample();
    }
    let window = |status: &BrokerStatus| -> Vec<CommitSample> {
        mutex(&status.history)
            .commits
            .get(&("g".to_owned(), "t".to_owned(), 0))
            .map(|w| w.iter().copied().collect())
            .unwrap_or_default()
    };
    let w = window(&status);
    assert_eq!(
        w.iter().map(|c| c.offset).collect::<Vec<_>>(),
        (12..22).collect::<Vec<_>>()
    );
    assert_eq!(w.iter().map(|c| c.lag).collect::<Vec<_>>(), {
        (12..22).map(|o| 100 - o).collect::<Vec<_>>()
    });
    let snap = status.snapshot();
    let g = group(&snap, "g");
    assert_eq!((g.lag, g.status), (79, LagStatus::Ok));

    // The same offset, committed again and again while lagging: STALL.
    for _ in 0..COMMIT_WINDOW {
        tokio::time::sleep(Duration::from_millis(10)).await;
        commit(&status, "g", (-1, ""), "t", &[(0, 21)]);
        status.sample();
    }
    let snap = status.snapshot();
    assert_eq!(
        group(&snap, "g").status,
        LagStatus::Stall,
        "{:?}",
        window(&status)
    );

    // Going back: REWIND, judged on the commit even before it is sampled.
    commit(&status, "g", (-1, ""), "t", &[(0, 3)]);
    let snap = status.snapshot();
    let g = group(&snap, "g");
    assert_eq!(
        (g.partitions[0].committed, g.status),
        (3, LagStatus::Rewind)
    );

    // At the log end nothing is in error, whatever the window says.
    commit(&status, "g", (-1, ""), "t", &[(0, 100)]);
    let snap = status.snapshot();
    assert_eq!(group(&snap, "g").status, LagStatus::Ok);

    // A deleted topic's offsets are forgotten, and so is their window.
    store.delete_topic("t").expect("delete");
    status.shared.groups.forget_topic("t");
    status.sample();
    assert!(mutex(&status.history).commits.is_empty());
    let snap = status.snapshot();
    assert!(
        snap.groups
            .iter()
            .all(|g| g.group != "g" || (g.partitions.is_empty() && g.lag == 0)),
        "{snap:#?}"
    );
}

/// Sends one request and returns the response frame.
async fn request<T: Encodable>(
    conn: &mut TcpStream,
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &T,
) -> Bytes {
    let header = RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(s("status-test")));
    let mut buf = BytesMut::new();
    header
        .encode(&mut buf, api.request_header_version(version))
        .expect("header");
    body.encode(&mut buf, version).expect("body");
    let len = i32::try_from(buf.len()).expect("small");
    conn.write_all(&len.to_be_bytes()).await.expect("write");
    conn.write_all(&buf).await.expect("write");
    let mut size = [0u8; 4];
    conn.read_exact(&mut size).await.expect("read");
    let mut frame = vec![0u8; usize::try_from(i32::from_be_bytes(size)).expect("size")];
    conn.read_exact(&mut frame).await.expect("read");
    Bytes::from(frame)
}

/// Waits (at most about 2 s) until `done` holds for a snapshot.
async fn until(status: &BrokerStatus, done: impl Fn(&BrokerSnapshot) -> bool) -> BrokerSnapshot {
    for _ in 0..100 {
        let snap = status.snapshot();
        if done(&snap) {
            return snap;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("condition not met: {:#?}", status.snapshot());
}

fn keys(v: &serde_json::Value) -> Vec<&str> {
    let mut k: Vec<&str> = v
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    k.sort_unstable();
    k
}

fn sorted<'a>(k: &[&'a str]) -> Vec<&'a str> {
    let mut k = k.to_vec();
    k.sort_unstable();
    k
}

#[tokio::test]
async fn a_running_broker_shows_its_topics_groups_requests_and_rates() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = Broker::bind(config(dir.path())).await.expect("bind");
    let status = broker.status();
    let addr = broker.local_addr();
    let shutdown = broker.shutdown_handle();
    let store = status.shared.topics.store.clone();
    store
        .create_topic("orders", 2, TopicConfig::default())
        .expect("topic");
    let compacted = TopicConfig {
        cleanup_policy: sluice_log::log::CleanupPolicy::COMPACT,
        ..TopicConfig::default()
    };
    store
        .create_topic("__internal", 1, compacted)
        .expect("topic");
    append(&status, "orders", 0, 5);
    append(&status, "orders", 1, 2);

    // A consumer group with one member that owns partition 0.
    let groups = status.shared.groups.clone();
    let joined = groups
        .join_group(
            JoinGroupRequest::default()
                .with_group_id(GroupId(s("readers")))
                .with_session_timeout_ms(30_000)
                .with_rebalance_timeout_ms(30_000)
                .with_protocol_type(s("consumer"))
                .with_protocols(vec![
                    JoinGroupRequestProtocol::default()
                        .with_name(s("range"))
                        .with_metadata(Bytes::new()),
                ]),
            3,
            "reader-client",
            "127.0.0.1",
        )
        .await;
    assert_eq!(joined.error_code, 0);
    let member = joined.member_id.to_string();
    let synced = groups
        .sync_group(
            SyncGroupRequest::default()
                .with_group_id(GroupId(s("readers")))
                .with_generation_id(joined.generation_id)
                .with_member_id(s(&member))
                .with_assignments(vec![
                    SyncGroupRequestAssignment::default()
                        .with_member_id(s(&member))
                        .with_assignment(encoded_assignment(0, &[("orders", &[0])])),
                ]),
            3,
        )
        .await;
    assert_eq!(synced.error_code, 0);
    commit(
        &status,
        "readers",
        (joined.generation_id, &member),
        "orders",
        &[(0, 3), (1, 2)],
    );

    // `run` holds a watch guard across an await, so it is not `Send`: it
    // runs beside the checks in this task rather than spawned.
    let checks = async {
        // Requests and appends after the first sample show in the rates.
        until(&status, |_| !mutex(&status.history).samples.is_empty()).await;
        let mut conn = TcpStream::connect(addr).await.expect("connect");
        request(
            &mut conn,
            ApiKey::ApiVersions,
            3,
            1,
            &ApiVersionsRequest::default(),
        )
        .await;
        let fetch = FetchRequest::default()
            .with_replica_id(kafka_protocol::messages::BrokerId(-1))
            .with_max_wait_ms(0)
            .with_min_bytes(0)
            .with_max_bytes(1 << 20)
            .with_topics(vec![
                FetchTopic::default()
                    .with_topic(TopicName(s("orders")))
                    .with_partitions(vec![
                        FetchPartition::default()
                            .with_partition(0)
                            .with_fetch_offset(0)
                            .with_partition_max_bytes(1 << 20),
                    ]),
            ]);
        request(&mut conn, ApiKey::Fetch, 12, 2, &fetch).await;
        append(&status, "orders", 0, 3);

        let snap = until(&status, |s| {
            s.bytes_in_per_s > 0.0
                && s.topics.iter().any(|t| {
                    t.name == "orders"
                        && t.partitions[0].produced_records_per_s > 0.0
                        && t.partitions[0].fetched_bytes_per_s > 0.0
                })
        })
        .await;

        assert_eq!(snap.listen, addr.to_string());
        assert!(!snap.cluster_id.is_empty());
        assert!(snap.started_ms <= snap.at_ms);
        assert_eq!((snap.connections_open, snap.connections_total), (1, 1));
        assert!(snap.bytes_in > 0 && snap.bytes_out > 0);

        let apis: Vec<(&str, i16, u64, u64)> = snap
            .apis
            .iter()
            .map(|a| (a.api.as_str(), a.key, a.requests, a.latency.count))
            .collect();
        assert_eq!(apis, [("Fetch", 1, 1, 1), ("ApiVersions", 18, 1, 1)]);
        for a in &snap.apis {
            assert_eq!(a.latency.buckets.len(), 14);
            assert!(
                a.latency
                    .buckets
                    .windows(2)
                    .all(|w| w[0].count <= w[1].count)
            );
            assert!(a.latency.buckets[13].count <= a.latency.count);
        }

        let names: Vec<&str> = snap.topics.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["__internal", "orders"]);
        assert_eq!(snap.topics[0].cleanup_policy, "compact");
        let orders = &snap.topics[1];
        assert_eq!(orders.cleanup_policy, "delete");
        let offsets: Vec<(i32, i64, i64, i64, u64)> = orders
            .partitions
            .iter()
            .map(|p| {
                (
                    p.partition,
                    p.log_start,
                    p.log_end,
                    p.last_stable,
                    p.segments,
                )
            })
            .collect();
        assert_eq!(offsets, [(0, 0, 8, 8, 1), (1, 0, 2, 2, 1)]);
        assert!(orders.partitions.iter().all(|p| p.bytes > 0));
        // The fetch returned partition 0's first batch, nothing of partition 1.
        let first_batch = batch(5).len() as u64;
        assert_eq!(orders.partitions[0].fetched_bytes, first_batch);
        assert_eq!(orders.partitions[1].fetched_bytes, 0);

        let g = group(&snap, "readers");
        assert_eq!(
            (
                g.state.as_str(),
                g.protocol_type.as_str(),
                g.protocol.as_str()
            ),
            ("Stable", "consumer", "range")
        );
        assert_eq!(g.generation, joined.generation_id);
        assert_eq!(g.members.len(), 1);
        assert_eq!(g.members[0].member_id, member);
        assert_eq!(g.members[0].client_id, "reader-client");
        assert_eq!(g.members[0].client_host, "127.0.0.1");
        assert_eq!(g.members[0].assignment, [assigned("orders", &[0])]);
        let parts: Vec<(i32, i64, i64, i64, Option<&str>)> = g
            .partitions
            .iter()
            .map(|p| {
                (
                    p.partition,
                    p.committed,
                    p.log_end,
                    p.lag,
                    p.owner.as_deref(),
                )
            })
            .collect();
        assert_eq!(
            parts,
            [(0, 3, 8, 5, Some(member.as_str())), (1, 2, 2, 0, None)]
        );
        assert_eq!(g.lag, 5);
        assert!(g.partitions.iter().all(|p| p.last_commit_ms > 0));

        // The JSON has exactly the contract's fields.
        let json = serde_json::to_value(&snap).expect("json");
        assert_eq!(
            keys(&json),
            sorted(&[
                "at_ms",
                "started_ms",
                "listen",
                "cluster_id",
                "connections_open",
                "connections_total",
                "protocol_errors",
                "bytes_in",
                "bytes_out",
                "records_in",
                "bytes_in_per_s",
                "bytes_out_per_s",
                "records_in_per_s",
                "apis",
                "topics",
                "groups",
            ])
        );
        assert_eq!(
            keys(&json["apis"][0]),
            sorted(&[
                "api",
                "key",
                "requests",
                "errors",
                "requests_per_s",
                "latency"
            ])
        );
        assert_eq!(
            keys(&json["apis"][0]["latency"]),
            sorted(&["count", "sum_seconds", "buckets"])
        );
        assert_eq!(json["apis"][0]["latency"]["buckets"][0]["le"], 0.0005);
        assert_eq!(
            keys(&json["topics"][1]),
            sorted(&["name", "cleanup_policy", "partitions"])
        );
        assert_eq!(
            keys(&json["topics"][1]["partitions"][0]),
            sorted(&[
                "partition",
                "log_start",
                "log_end",
                "last_stable",
                "bytes",
                "segments",
                "produced_records_per_s",
                "fetched_bytes",
                "fetched_bytes_per_s",
            ])
        );
        let g = &json["groups"][0];
        assert_eq!(
            keys(g),
            sorted(&[
                "group",
                "state",
                "protocol_type",
                "protocol",
                "generation",
                "members",
                "lag",
                "status",
                "partitions",
            ])
        );
        assert_eq!(
            keys(&g["members"][0]),
            sorted(&["member_id", "client_id", "client_host", "assignment"])
        );
        assert_eq!(
            g["members"][0]["assignment"],
            serde_json::json!([{"topic": "orders", "partitions": [0]}])
        );
        assert_eq!(
            keys(&g["partitions"][0]),
            sorted(&[
                "topic",
                "partition",
                "committed",
                "log_end",
                "lag",
                "last_commit_ms",
                "owner",
                "status",
            ])
        );
        assert_eq!(g["status"], "OK");
        assert_eq!(g["partitions"][1]["owner"], serde_json::Value::Null);

        drop(conn);
        shutdown.shutdown();
    };
    let (run, ()) = tokio::join!(broker.run(), checks);
    run.expect("run");
}
