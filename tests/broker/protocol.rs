//! `sluice broker` on the wire: hand-built Kafka frames over raw TCP.
//! Version negotiation (ApiVersions at v0, v3 and an unsupported version),
//! what closes a connection (garbage, short headers, undecodable bodies,
//! unknown APIs, unsupported versions, oversized frames) without hurting the
//! broker, produce errors (unknown topic, corrupt CRC), slow and vanishing
//! clients not stalling others, and a graceful SIGTERM that keeps every
//! acknowledged record across a restart.

use std::collections::BTreeSet;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, BrokerId, CreateTopicsRequest,
    CreateTopicsResponse, FetchRequest, FetchResponse, ListOffsetsRequest, ListOffsetsResponse,
    MetadataRequest, MetadataResponse, ProduceRequest, ProduceResponse, RequestHeader,
    ResponseHeader, TopicName,
};
use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use kafka_protocol::records::{
    Compression as WireCompression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use sluice::producer::Compression;

use crate::common::broker::{BrokerOpts, TestBroker};
use crate::common::{Rec, decode_batches, encode_batch};

const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Kafka error codes the tests expect.
const CORRUPT_MESSAGE: i16 = 2;
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const UNSUPPORTED_VERSION: i16 = 35;
const OUT_OF_ORDER_SEQUENCE_NUMBER: i16 = 45;

pub(crate) fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect_timeout(&addr, IO_TIMEOUT)
        .unwrap_or_else(|e| panic!("connect to the broker at {addr}: {e}"));
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

pub(crate) fn topic_name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

/// One request frame: size, header (the version the API requires), body.
pub(crate) fn frame<R: Encodable>(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &R,
) -> BytesMut {
    let mut buf = BytesMut::new();
    buf.put_i32(0);
    RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("sluice-protocol-test")))
        .encode(&mut buf, api.request_header_version(version))
        .expect("encode request header");
    body.encode(&mut buf, version).expect("encode request body");
    let len = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    buf
}

/// A frame whose payload is exactly `payload` (no header added).
fn raw_frame(payload: &[u8]) -> Vec<u8> {
    let mut v = (payload.len() as i32).to_be_bytes().to_vec();
    v.extend_from_slice(payload);
    v
}

/// Reads one response frame; `None` when the broker closed the connection.
fn read_frame(s: &mut TcpStream) -> Option<Bytes> {
    let mut size = [0u8; 4];
    match s.read_exact(&mut size) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::UnexpectedEof => return None,
        Err(e) if e.kind() == ErrorKind::ConnectionReset => return None,
        Err(e) => panic!("reading a response frame size: {e}"),
    }
    let size = i32::from_be_bytes(size);
    assert!(
        (0..64 << 20).contains(&size),
        "implausible response size {size}"
    );
    let mut body = vec![0u8; size as usize];
    s.read_exact(&mut body)
        .unwrap_or_else(|e| panic!("reading a {size}-byte response: {e}"));
    Some(Bytes::from(body))
}

/// Decodes a response frame: checks the correlation id, returns the body.
pub(crate) fn decode<R: Decodable>(
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    mut frame: Bytes,
) -> R {
    let header = ResponseHeader::decode(&mut frame, api.response_header_version(version))
        .unwrap_or_else(|e| panic!("{api:?} v{version} response header: {e:#}"));
    assert_eq!(
        header.correlation_id, correlation_id,
        "{api:?} v{version}: correlation id"
    );
    let body = R::decode(&mut frame, version)
        .unwrap_or_else(|e| panic!("{api:?} v{version} response body: {e:#}"));
    assert_eq!(
        frame.remaining(),
        0,
        "{api:?} v{version}: {} bytes left after the response body",
        frame.remaining()
    );
    body
}

/// Sends one request and decodes its response.
pub(crate) fn call<Q: Encodable, R: Decodable>(
    s: &mut TcpStream,
    api: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &Q,
) -> R {
    s.write_all(&frame(api, version, correlation_id, body))
        .unwrap_or_else(|e| panic!("sending {api:?} v{version}: {e}"));
    let resp = read_frame(s).unwrap_or_else(|| {
        panic!("the broker closed the connection instead of answering {api:?} v{version}")
    });
    decode(api, version, correlation_id, resp)
}

/// Asserts that the broker closes `s` (EOF or reset) within the read timeout,
/// without sending a response first.
fn assert_closed(s: &mut TcpStream, what: &str) {
    let mut buf = [0u8; 64];
    match s.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!(
            "{what}: expected the connection to be closed, got {n} bytes: {:?}",
            &buf[..n]
        ),
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        Err(e) => panic!(
            "{what}: expected the connection to be closed, got {e} (timeout = the broker kept it open)"
        ),
    }
}

fn supported() -> BTreeSet<(i16, i16, i16)> {
    sluice::broker::supported_versions()
        .into_iter()
        .map(|(api, min, max)| (api as i16, min, max))
        .collect()
}

fn advertised(resp: &ApiVersionsResponse) -> BTreeSet<(i16, i16, i16)> {
    resp.api_keys
        .iter()
        .map(|k| (k.api_key, k.min_version, k.max_version))
        .collect()
}

fn api_versions(s: &mut TcpStream, version: i16, correlation_id: i32) -> ApiVersionsResponse {
    let req = ApiVersionsRequest::default()
        .with_client_software_name(StrBytes::from_static_str("sluice-tests"))
        .with_client_software_version(StrBytes::from_static_str("1.0"));
    call(s, ApiKey::ApiVersions, version, correlation_id, &req)
}

/// A new connection gets ApiVersions and Metadata answered correctly.
fn assert_healthy(addr: SocketAddr) {
    let mut s = connect(addr);
    let v = api_versions(&mut s, 3, 77);
    assert_eq!(v.error_code, 0);
    assert_eq!(advertised(&v), supported());
    let m: MetadataResponse = call(
        &mut s,
        ApiKey::Metadata,
        12,
        78,
        &MetadataRequest::default(),
    );
    assert_eq!(m.brokers.len(), 1, "one broker in Metadata");
    assert_eq!(m.brokers[0].node_id, BrokerId(0));
    assert_eq!(m.brokers[0].host.as_str(), "127.0.0.1");
    assert_eq!(m.brokers[0].port, i32::from(addr.port()));
}

pub(crate) fn create_topic(addr: SocketAddr, name: &str, partitions: i32) {
    let mut s = connect(addr);
    let req = CreateTopicsRequest::default()
        .with_topics(vec![
            CreatableTopic::default()
                .with_name(topic_name(name))
                .with_num_partitions(partitions)
                .with_replication_factor(1),
        ])
        .with_timeout_ms(10_000);
    let resp: CreateTopicsResponse = call(&mut s, ApiKey::CreateTopics, 5, 1, &req);
    assert_eq!(resp.topics.len(), 1);
    assert_eq!(
        resp.topics[0].error_code, 0,
        "CreateTopics {name}: {:?}",
        resp.topics[0].error_message
    );
    assert_eq!(resp.topics[0].num_partitions, partitions);
}

pub(crate) fn produce_request(
    topic: &str,
    partition: i32,
    records: Bytes,
    acks: i16,
) -> ProduceRequest {
    ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(10_000)
        .with_topic_data(vec![
            TopicProduceData::default()
                .with_name(topic_name(topic))
                .with_partition_data(vec![
                    PartitionProduceData::default()
                        .with_index(partition)
                        .with_records(Some(records)),
                ]),
        ])
}

/// Produces one blob to one partition; returns (error code, base offset, message).
fn produce(
    s: &mut TcpStream,
    topic: &str,
    partition: i32,
    records: Bytes,
) -> (i16, i64, Option<String>) {
    let resp: ProduceResponse = call(
        s,
        ApiKey::Produce,
        9,
        11,
        &produce_request(topic, partition, records, 1),
    );
    assert_eq!(resp.responses.len(), 1);
    let t = &resp.responses[0];
    assert_eq!(t.name.as_str(), topic);
    assert_eq!(t.partition_responses.len(), 1);
    let p = &t.partition_responses[0];
    assert_eq!(p.index, partition);
    (
        p.error_code,
        p.base_offset,
        p.error_message.as_ref().map(|m| m.to_string()),
    )
}

/// ListOffsets with `timestamp` (-1 latest, -2 earliest) for each partition.
fn list_offsets(addr: SocketAddr, topic: &str, partitions: i32, timestamp: i64) -> Vec<(i16, i64)> {
    let mut s = connect(addr);
    let req = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(vec![
            ListOffsetsTopic::default()
                .with_name(topic_name(topic))
                .with_partitions(
                    (0..partitions)
                        .map(|p| {
                            ListOffsetsPartition::default()
                                .with_partition_index(p)
                                .with_timestamp(timestamp)
                        })
                        .collect(),
                ),
        ]);
    let resp: ListOffsetsResponse = call(&mut s, ApiKey::ListOffsets, 4, 21, &req);
    assert_eq!(resp.topics.len(), 1);
    let mut parts: Vec<_> = resp.topics[0]
        .partitions
        .iter()
        .map(|p| (p.partition_index, p.error_code, p.offset))
        .collect();
    parts.sort();
    assert_eq!(
        parts.iter().map(|p| p.0).collect::<Vec<_>>(),
        (0..partitions).collect::<Vec<_>>()
    );
    parts.into_iter().map(|(_, e, o)| (e, o)).collect()
}

pub(crate) fn fetch_request(
    topic: &str,
    partition: i32,
    offset: i64,
    max_wait_ms: i32,
) -> FetchRequest {
    FetchRequest::default()
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(16 << 20)
        .with_topics(vec![
            FetchTopic::default()
                .with_topic(topic_name(topic))
                .with_partitions(vec![
                    FetchPartition::default()
                        .with_partition(partition)
                        .with_fetch_offset(offset)
                        .with_partition_max_bytes(8 << 20),
                ]),
        ])
}

/// Every record of one partition, fetched from offset 0 (several fetches if needed).
fn fetch_all(addr: SocketAddr, topic: &str, partition: i32) -> Vec<(i64, Vec<u8>)> {
    let mut s = connect(addr);
    let mut out: Vec<(i64, Vec<u8>)> = Vec::new();
    let mut next = 0i64;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(
            Instant::now() < deadline,
            "fetching {topic}-{partition} took too long"
        );
        let resp: FetchResponse = call(
            &mut s,
            ApiKey::Fetch,
            12,
            31,
            &fetch_request(topic, partition, next, 0),
        );
        let p = &resp.responses[0].partitions[0];
        assert_eq!(p.error_code, 0, "fetch {topic}-{partition} at {next}");
        let records = p.records.clone().unwrap_or_default();
        if records.is_empty() {
            assert_eq!(
                next, p.high_watermark,
                "an empty fetch below the high-water mark"
            );
            return out;
        }
        for b in decode_batches(&records, &format!("fetch {topic}-{partition} at {next}")) {
            for r in b.records {
                if r.offset < next {
                    continue; // the batch holding `next` may start before it
                }
                assert_eq!(
                    r.offset, next,
                    "{topic}-{partition}: offsets must be consecutive"
                );
                out.push((r.offset, r.value));
                next += 1;
            }
        }
    }
}

fn recs(prefix: &str, range: std::ops::Range<usize>) -> Vec<Rec> {
    range
        .map(|i| Rec {
            key: Some(format!("k{i}").into_bytes()),
            value: format!("{prefix}-{i}").into_bytes(),
            timestamp: 1_700_000_000_000 + i as i64,
        })
        .collect()
}

#[test]
fn api_versions_v0_v3_and_unsupported_version() {
    let broker = TestBroker::start();
    let mut s = connect(broker.addr());

    // v3: flexible request header v2, response header v0 (Kafka's exception).
    let v3 = api_versions(&mut s, 3, 1);
    assert_eq!(v3.error_code, 0);
    assert_eq!(advertised(&v3), supported(), "ApiVersions v3 list");
    let keys: BTreeSet<i16> = v3.api_keys.iter().map(|k| k.api_key).collect();
    for api in [
        ApiKey::Produce,
        ApiKey::Fetch,
        ApiKey::Metadata,
        ApiKey::ApiVersions,
    ] {
        assert!(keys.contains(&(api as i16)), "{api:?} must be advertised");
    }

    // v0 on the same connection.
    let v0 = api_versions(&mut s, 0, 2);
    assert_eq!(v0.error_code, 0);
    assert_eq!(advertised(&v0), supported(), "ApiVersions v0 list");

    // v99: answered at v0 with UNSUPPORTED_VERSION and the list, as Kafka does
    // (new clients start with their newest version and fall back).
    let mut req = BytesMut::new();
    req.put_i16(ApiKey::ApiVersions as i16);
    req.put_i16(99);
    req.put_i32(3);
    req.put_i16(4);
    req.put_slice(b"test");
    req.put_u8(0); // header tagged fields
    req.put_u8(1); // empty compact string
    req.put_u8(1);
    req.put_u8(0);
    s.write_all(&raw_frame(&req)).unwrap();
    let resp = read_frame(&mut s).expect("ApiVersions v99 must be answered, not closed");
    let unsupported: ApiVersionsResponse = decode(ApiKey::ApiVersions, 0, 3, resp);
    assert_eq!(unsupported.error_code, UNSUPPORTED_VERSION);
    assert_eq!(advertised(&unsupported), supported());

    // The connection keeps serving.
    let again = api_versions(&mut s, 3, 4);
    assert_eq!(again.error_code, 0);
    assert_eq!(advertised(&again), supported());
    let m: MetadataResponse = call(&mut s, ApiKey::Metadata, 1, 5, &MetadataRequest::default());
    assert_eq!(m.brokers.len(), 1);
    assert_eq!(m.brokers[0].port, i32::from(broker.addr().port()));
}

#[test]
fn protocol_violations_close_only_that_connection() {
    let mut broker = TestBroker::start();
    let addr = broker.addr();
    // A long-lived connection that must survive everything below.
    let mut bystander = connect(addr);
    assert_eq!(api_versions(&mut bystander, 3, 1).error_code, 0);

    // Each case: bytes to send, what the broker must log as the reason.
    let mut metadata_bad_body = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(ApiKey::Metadata as i16)
        .with_request_api_version(1)
        .with_correlation_id(9)
        .with_client_id(Some(StrBytes::from_static_str("bad")))
        .encode(
            &mut metadata_bad_body,
            ApiKey::Metadata.request_header_version(1),
        )
        .unwrap();
    metadata_bad_body.put_i32(5); // five topics announced, none follows
    let mut unknown_api = BytesMut::new();
    unknown_api.put_i16(9999);
    unknown_api.put_i16(0);
    unknown_api.put_i32(10);
    unknown_api.put_i16(-1);
    // Produce v1 (the crate cannot encode it; the broker must refuse it
    // from the header alone).
    let mut produce_v1 = BytesMut::new();
    produce_v1.put_i16(ApiKey::Produce as i16);
    produce_v1.put_i16(1);
    produce_v1.put_i32(12);
    produce_v1.put_i16(-1);
    produce_v1.put_i16(1); // acks
    produce_v1.put_i32(1000); // timeout
    produce_v1.put_i32(0); // no topics
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "garbage (an HTTP request)",
            b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec(),
            "exceeds --max-request-bytes",
        ),
        (
            "a negative frame size",
            vec![0xff, 0xff, 0xff, 0xf0, 1, 2, 3],
            "negative frame size",
        ),
        (
            "a 5-byte header",
            raw_frame(&[0, 3, 0, 1, 0]),
            "truncated request header (5 bytes",
        ),
        (
            "a body that does not decode",
            raw_frame(&metadata_bad_body),
            "malformed Metadata v1 request",
        ),
        (
            "unknown API key 9999",
            raw_frame(&unknown_api),
            "unknown API key 9999",
        ),
        (
            "Produce v1 (below the supported range)",
            raw_frame(&produce_v1),
            "Produce v1 is not supported",
        ),
    ];
    for (what, bytes, reason) in &cases {
        let mut s = connect(addr);
        s.write_all(bytes)
            .unwrap_or_else(|e| panic!("{what}: write: {e}"));
        assert_closed(&mut s, what);
        let line = broker.wait_for_log(reason, Duration::from_secs(5));
        assert!(
            line.contains("closing connection from 127.0.0.1"),
            "{what}: {line}"
        );
        // A fresh connection is served normally after each.
        assert_healthy(broker.addr());
    }

    // A request that stops mid-frame (the client disconnects).
    let mut s = connect(addr);
    let full = frame(ApiKey::ApiVersions, 3, 5, &ApiVersionsRequest::default());
    s.write_all(&full[..full.len() - 3]).unwrap();
    drop(s);
    broker.wait_for_log("connection closed mid-frame", Duration::from_secs(5));

    // The bystander never noticed.
    assert_eq!(api_versions(&mut bystander, 0, 2).error_code, 0);
    broker.assert_running();
    assert_healthy(broker.addr());
}

fn vm_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

#[test]
fn oversized_frames_are_refused_before_allocation() {
    let mut broker =
        TestBroker::start_with(BrokerOpts::default().arg("--max-request-bytes").arg("1MiB"));
    let addr = broker.addr();
    let pid = broker.pid().unwrap();
    assert_healthy(broker.addr());
    let rss_before = vm_kib(pid, "VmRSS:");

    // 512 MiB announced, nothing else sent: closed at once (EOF, not a timeout).
    let mut s = connect(addr);
    s.write_all(&(512i32 << 20).to_be_bytes()).unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 16];
    match s.read(&mut buf) {
        Ok(0) => {}
        other => panic!("expected EOF after announcing 512 MiB, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the oversized frame was refused only after {:?}",
        started.elapsed()
    );
    broker.wait_for_log(
        "frame of 536870912 bytes exceeds --max-request-bytes (1048576)",
        Duration::from_secs(5),
    );

    // Just over the limit, with the bytes actually sent: refused too.
    let mut s = connect(addr);
    let mut big = ((1 << 20) + 1i32).to_be_bytes().to_vec();
    big.extend(std::iter::repeat_n(0u8, 64 * 1024));
    let _ = s.write_all(&big); // the broker may close while we write
    assert_closed(&mut s, "a frame of 1 MiB + 1 byte");

    // A frame just within the limit is served: a 900 KiB record.
    assert_healthy(broker.addr());
    create_topic(addr, "big", 1);
    let big_record = Rec {
        key: None,
        value: vec![b'x'; 900 << 10],
        timestamp: 1_700_000_000_000,
    };
    let batch = encode_batch(&[big_record], Compression::None).freeze();
    let mut s = connect(addr);
    let (code, base, msg) = produce(&mut s, "big", 0, batch);
    assert_eq!(
        (code, base),
        (0, 0),
        "a 900 KiB produce under a 1 MiB limit: {msg:?}"
    );
    // A sanity bound only (an allocation nobody writes to would not show in
    // RSS): the real check is the immediate EOF above.
    let peak = vm_kib(pid, "VmHWM:");
    assert!(
        peak < rss_before + 128 * 1024,
        "broker peak RSS {peak} KiB (was {rss_before} KiB before the 512 MiB announcement)"
    );
    broker.assert_running();
}

#[test]
fn produce_errors_unknown_topic_and_corrupt_crc() {
    let broker = TestBroker::start(); // no --auto-create-topics
    let addr = broker.addr();
    let mut s = connect(addr);
    let batch = encode_batch(&recs("v", 0..5), Compression::None).freeze();

    let (code, base, message) = produce(&mut s, "nope", 0, batch.clone());
    assert_eq!(
        code, UNKNOWN_TOPIC_OR_PARTITION,
        "produce to an unknown topic: {message:?}"
    );
    assert_eq!(base, -1);
    let message = message.expect("Produce v9 carries an error message");
    assert!(message.contains("unknown topic"), "{message}");
    // ... and it was not created on the way.
    let m: MetadataResponse = call(
        &mut s,
        ApiKey::Metadata,
        12,
        2,
        &MetadataRequest::default().with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(topic_name("nope"))),
        ])),
    );
    assert_eq!(m.topics.len(), 1);
    assert_eq!(m.topics[0].error_code, UNKNOWN_TOPIC_OR_PARTITION);

    create_topic(addr, "crc", 2);
    // Unknown partition of a known topic.
    let (code, _, _) = produce(&mut s, "crc", 7, batch.clone());
    assert_eq!(
        code, UNKNOWN_TOPIC_OR_PARTITION,
        "produce to partition 7 of 2"
    );

    // One flipped bit in the last record: CRC-32C mismatch.
    let mut corrupt = batch.to_vec();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0x01;
    let (code, base, message) = produce(&mut s, "crc", 0, Bytes::from(corrupt.clone()));
    assert_eq!(code, CORRUPT_MESSAGE, "corrupt CRC: {message:?}");
    assert_eq!(base, -1);
    // A good batch followed by a corrupt one in the same blob: nothing stored.
    let mut blob = batch.to_vec();
    blob.extend_from_slice(&corrupt);
    let (code, _, message) = produce(&mut s, "crc", 0, Bytes::from(blob));
    assert_eq!(code, CORRUPT_MESSAGE, "good + corrupt batch: {message:?}");
    // Garbage that is not even a batch header.
    let (code, _, _) = produce(&mut s, "crc", 0, Bytes::from_static(b"not a record batch"));
    assert_eq!(code, CORRUPT_MESSAGE, "garbage records");
    assert_eq!(
        list_offsets(addr, "crc", 2, -1),
        vec![(0, 0), (0, 0)],
        "nothing appended"
    );

    // The connection still works, and a good batch lands at offset 0.
    let (code, base, _) = produce(&mut s, "crc", 0, batch.clone());
    assert_eq!((code, base), (0, 0));
    let (code, base, _) = produce(&mut s, "crc", 0, batch);
    assert_eq!((code, base), (0, 5));
    assert_eq!(list_offsets(addr, "crc", 2, -1), vec![(0, 10), (0, 0)]);
    assert_eq!(list_offsets(addr, "crc", 2, -2), vec![(0, 0), (0, 0)]);
    let values: Vec<String> = fetch_all(addr, "crc", 0)
        .into_iter()
        .map(|(_, v)| String::from_utf8(v).unwrap())
        .collect();
    let expected: Vec<String> = (0..2)
        .flat_map(|_| (0..5).map(|i| format!("v-{i}")))
        .collect();
    assert_eq!(values, expected);
}

#[test]
fn slow_and_vanishing_clients_do_not_stall_others() {
    let broker = TestBroker::start();
    let addr = broker.addr();

    // A client that disconnects mid-request.
    let mut gone = connect(addr);
    let full = frame(ApiKey::Metadata, 12, 1, &MetadataRequest::default());
    gone.write_all(&full[..full.len() / 2]).unwrap();
    drop(gone);

    // A slow client: one byte every 200 ms for its first 10 bytes, then the
    // rest; it must be answered in the end.
    let slow_frame = frame(ApiKey::ApiVersions, 3, 42, &ApiVersionsRequest::default());
    let slow = thread::spawn(move || {
        let mut s = connect(addr);
        for b in &slow_frame[..10] {
            s.write_all(&[*b]).unwrap();
            thread::sleep(Duration::from_millis(200));
        }
        s.write_all(&slow_frame[10..]).unwrap();
        let resp = read_frame(&mut s).expect("the slow client is answered");
        let v: ApiVersionsResponse = decode(ApiKey::ApiVersions, 3, 42, resp);
        v.error_code
    });

    // Meanwhile, other connections are answered promptly, again and again.
    thread::sleep(Duration::from_millis(300));
    let mut s = connect(addr);
    let started = Instant::now();
    let mut round = 0;
    while started.elapsed() < Duration::from_millis(1500) {
        round += 1;
        let t = Instant::now();
        let v = api_versions(&mut s, 3, round);
        assert_eq!(v.error_code, 0);
        let m: MetadataResponse = call(
            &mut s,
            ApiKey::Metadata,
            12,
            round,
            &MetadataRequest::default(),
        );
        assert_eq!(m.brokers.len(), 1);
        // A fresh connection too.
        let mut fresh = connect(addr);
        assert_eq!(api_versions(&mut fresh, 0, round).error_code, 0);
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "round {round} took {:?} while a slow client was dribbling",
            t.elapsed()
        );
        thread::sleep(Duration::from_millis(100));
    }
    assert!(round >= 3, "only {round} rounds in 1.5 s");
    assert_eq!(slow.join().expect("slow client thread"), 0);
}

#[test]
fn sigterm_stops_cleanly_and_keeps_acknowledged_records() {
    let mut broker = TestBroker::start();
    let addr = broker.addr();
    create_topic(addr, "durable", 2);
    let mut s = connect(addr);
    let mut expected: Vec<Vec<String>> = vec![Vec::new(), Vec::new()];
    for round in 0..10usize {
        for (p, codec) in [(0, Compression::None), (1, Compression::Lz4)] {
            let batch = recs(&format!("p{p}r{round}"), 0..20);
            let (code, base, msg) =
                produce(&mut s, "durable", p, encode_batch(&batch, codec).freeze());
            assert_eq!(code, 0, "{msg:?}");
            assert_eq!(base, (round * 20) as i64);
            expected[p as usize].extend(
                batch
                    .iter()
                    .map(|r| String::from_utf8(r.value.clone()).unwrap()),
            );
        }
    }
    // A consumer long-polling at the end of partition 0 while SIGTERM comes:
    // it is answered (empty) rather than cut off, and does not delay the exit.
    let mut poller = connect(addr);
    poller
        .write_all(&frame(
            ApiKey::Fetch,
            12,
            99,
            &fetch_request("durable", 0, 200, 20_000),
        ))
        .unwrap();
    thread::sleep(Duration::from_millis(300));
    let t = Instant::now();
    broker.stop_gracefully();
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "graceful stop took {:?} with a long poll in flight",
        t.elapsed()
    );
    let resp = read_frame(&mut poller)
        .expect("a fetch in flight at SIGTERM must be answered before the connection closes");
    let f: FetchResponse = decode(ApiKey::Fetch, 12, 99, resp);
    let p = &f.responses[0].partitions[0];
    assert_eq!(p.error_code, 0);
    assert_eq!(p.high_watermark, 200);
    assert!(p.records.as_ref().is_none_or(|r| r.is_empty()));
    assert!(
        read_frame(&mut poller).is_none(),
        "then the connection is closed"
    );

    broker.restart();
    let addr = broker.addr();
    assert_eq!(
        list_offsets(addr, "durable", 2, -1),
        vec![(0, 200), (0, 200)]
    );
    for p in 0..2 {
        let got = fetch_all(addr, "durable", p);
        assert_eq!(
            got.iter().map(|(o, _)| *o).collect::<Vec<_>>(),
            (0..200).collect::<Vec<_>>()
        );
        let values: Vec<String> = got
            .into_iter()
            .map(|(_, v)| String::from_utf8(v).unwrap())
            .collect();
        assert_eq!(
            values, expected[p as usize],
            "partition {p} after the restart"
        );
    }
    // And it still takes writes where it left off.
    let mut s = connect(addr);
    let (code, base, _) = produce(
        &mut s,
        "durable",
        1,
        encode_batch(&recs("after", 0..3), Compression::Zstd).freeze(),
    );
    assert_eq!((code, base), (0, 200));
    broker.stop_gracefully();
}

/// One batch of an idempotent producer: `count` records from `sequence`.
fn idempotent_batch(producer_id: i64, epoch: i16, sequence: i32, count: i32) -> Bytes {
    let values: Vec<String> = (0..count)
        .map(|i| format!("seq {}", sequence + i))
        .collect();
    producer_batch(
        (producer_id, epoch),
        sequence,
        false,
        &values,
        WireCompression::Gzip,
    )
}

/// One batch of `values` from producer (id, epoch), numbered from
/// `sequence`, transactional or not.
pub(crate) fn producer_batch(
    (producer_id, epoch): (i64, i16),
    sequence: i32,
    transactional: bool,
    values: &[String],
    compression: WireCompression,
) -> Bytes {
    let records: Vec<Record> = values
        .iter()
        .enumerate()
        .map(|(i, v)| Record {
            transactional,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id,
            producer_epoch: epoch,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: sequence + i as i32,
            timestamp: 1_700_000_000_000,
            key: None,
            value: Some(Bytes::from(v.clone())),
            headers: Default::default(),
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )
    .expect("encode a producer's batch");
    buf.freeze()
}

#[test]
fn idempotent_retries_are_answered_with_the_original_offset() {
    let broker = TestBroker::start();
    let addr = broker.addr();
    create_topic(addr, "idem", 1);
    let mut s = connect(addr);
    let init: InitProducerIdResponse = call(
        &mut s,
        ApiKey::InitProducerId,
        4,
        1,
        &InitProducerIdRequest::default()
            .with_transactional_id(None)
            .with_transaction_timeout_ms(60_000)
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1),
    );
    assert_eq!(init.error_code, 0);
    let (pid, epoch) = (init.producer_id.0, init.producer_epoch);
    assert!(pid >= 0, "a producer id: {pid}");
    assert_eq!(epoch, 0);

    let first = idempotent_batch(pid, epoch, 0, 3);
    assert_eq!(produce(&mut s, "idem", 0, first.clone()).0, 0);
    // The same batch again (a retry after a lost response): the original
    // offset, nothing appended.
    let (code, base, msg) = produce(&mut s, "idem", 0, first);
    assert_eq!((code, base), (0, 0), "retried batch: {msg:?}");
    assert_eq!(list_offsets(addr, "idem", 1, -1), vec![(0, 3)]);
    // The next sequence is appended after it.
    let (code, base, _) = produce(&mut s, "idem", 0, idempotent_batch(pid, epoch, 3, 2));
    assert_eq!((code, base), (0, 3));
    // A gap in the sequence is refused.
    let (code, _, msg) = produce(&mut s, "idem", 0, idempotent_batch(pid, epoch, 9, 1));
    assert_eq!(
        code, OUT_OF_ORDER_SEQUENCE_NUMBER,
        "a sequence gap: {msg:?}"
    );
    assert_eq!(list_offsets(addr, "idem", 1, -1), vec![(0, 5)]);
    let values: Vec<String> = fetch_all(addr, "idem", 0)
        .into_iter()
        .map(|(_, v)| String::from_utf8(v).unwrap())
        .collect();
    assert_eq!(
        values,
        (0..5).map(|i| format!("seq {i}")).collect::<Vec<_>>()
    );
}

/// IncrementalAlterConfigs by hand: SET, DELETE (back to the default),
/// APPEND to the cleanup.policy list, validate_only, and the refusals —
/// an unknown config, a bad value, the broker's own configs, an unknown
/// topic — each with its code and a message naming the problem.
#[test]
fn incremental_alter_configs_sets_resets_appends_and_refuses() {
    use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
    use kafka_protocol::messages::incremental_alter_configs_request::{
        AlterConfigsResource, AlterableConfig,
    };
    use kafka_protocol::messages::{
        DescribeConfigsRequest, DescribeConfigsResponse, IncrementalAlterConfigsRequest,
        IncrementalAlterConfigsResponse,
    };

    let broker = TestBroker::start();
    create_topic(broker.addr(), "alterable", 1);
    let mut s = connect(broker.addr());
    let mut correlation = 100;
    let mut alter =
        |resource_type: i8, name: &str, ops: &[(&str, i8, Option<&str>)], validate_only: bool| {
            correlation += 1;
            let req = IncrementalAlterConfigsRequest::default()
                .with_validate_only(validate_only)
                .with_resources(vec![
                    AlterConfigsResource::default()
                        .with_resource_type(resource_type)
                        .with_resource_name(StrBytes::from_string(name.to_string()))
                        .with_configs(
                            ops.iter()
                                .map(|(k, op, v)| {
                                    AlterableConfig::default()
                                        .with_name(StrBytes::from_string(k.to_string()))
                                        .with_config_operation(*op)
                                        .with_value(v.map(|v| StrBytes::from_string(v.to_string())))
                                })
                                .collect(),
                        ),
                ]);
            let resp: IncrementalAlterConfigsResponse = call(
                &mut s,
                ApiKey::IncrementalAlterConfigs,
                1,
                correlation,
                &req,
            );
            let r = &resp.responses[0];
            (
                r.error_code,
                r.error_message
                    .as_ref()
                    .map(|m| m.to_string())
                    .unwrap_or_default(),
            )
        };
    let (set, delete, append) = (0i8, 1i8, 2i8);
    assert_eq!(
        alter(
            2,
            "alterable",
            &[
                ("cleanup.policy", set, Some("compact")),
                ("retention.ms", set, Some("1000"))
            ],
            false
        ),
        (0, String::new())
    );
    assert_eq!(
        alter(2, "alterable", &[("retention.ms", delete, None)], false).0,
        0
    );
    assert_eq!(
        alter(
            2,
            "alterable",
            &[("cleanup.policy", append, Some("delete"))],
            false
        )
        .0,
        0
    );
    // validate_only changes nothing, but refuses what is wrong.
    assert_eq!(
        alter(
            2,
            "alterable",
            &[("segment.bytes", set, Some("65536"))],
            true
        )
        .0,
        0
    );
    let (code, message) = alter(2, "alterable", &[("segment.bytes", set, Some("10"))], true);
    assert_eq!(code, 40, "INVALID_CONFIG: {message}");
    assert!(message.contains("segment.bytes"), "{message}");
    let (code, message) = alter(2, "alterable", &[("colour", set, Some("blue"))], false);
    assert_eq!(code, 40, "{message}");
    assert!(message.contains("colour"), "{message}");
    let (code, message) = alter(4, "0", &[("log.retention.ms", set, Some("1"))], false);
    assert_eq!(code, 40, "{message}");
    assert!(message.contains("command line"), "{message}");
    assert_eq!(
        alter(
            2,
            "no-such-topic",
            &[("retention.ms", set, Some("1"))],
            false
        )
        .0,
        3
    );

    let describe = DescribeConfigsRequest::default().with_resources(vec![
        DescribeConfigsResource::default()
            .with_resource_type(2)
            .with_resource_name(StrBytes::from_static_str("alterable"))
            .with_configuration_keys(None),
    ]);
    let resp: DescribeConfigsResponse = call(&mut s, ApiKey::DescribeConfigs, 4, 999, &describe);
    let value = |name: &str| {
        resp.results[0]
            .configs
            .iter()
            .find(|c| c.name.as_str() == name)
            .and_then(|c| c.value.as_ref().map(|v| v.to_string()))
    };
    assert_eq!(
        value("cleanup.policy").as_deref(),
        Some("compact,delete"),
        "{resp:?}"
    );
    assert_eq!(
        value("retention.ms").as_deref(),
        Some("604800000"),
        "reset to the default"
    );
    assert_eq!(
        value("segment.bytes").as_deref(),
        Some("1073741824"),
        "validate_only changed nothing"
    );
    assert_healthy(broker.addr());
}
