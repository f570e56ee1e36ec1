//! Fuzzes the broker's request decoder (`sluice::broker::decode_request`)
//! with arbitrary bytes, with valid headers over random bodies, and with
//! mutations of well-formed requests. Whatever arrives, the decoder must
//! answer Ok or a rejection — never panic, never abort on a huge length
//! prefix, never hang. Bounded for CI: SLUICE_FUZZ_CASES (default 20000 per
//! strategy) changes it for longer runs.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{
    ApiKey, FetchRequest, MetadataRequest, ProduceRequest, RequestHeader, TopicName,
    fetch_request::{FetchPartition, FetchTopic},
    metadata_request::MetadataRequestTopic,
    produce_request::{PartitionProduceData, TopicProduceData},
};
use kafka_protocol::protocol::{Encodable, StrBytes};
use proptest::prelude::*;
use sluice::broker::{decode_request, supported_versions};

// The broker binary's allocator: without it, a hostile array count makes
// the decoder's `Vec::with_capacity` abort the process.
#[global_allocator]
static ALLOCATOR: sluice::alloc::LazyHugeAlloc = sluice::alloc::LazyHugeAlloc;

fn cases() -> u32 {
    crate::common::env_or("SLUICE_FUZZ_CASES", 20_000)
}

fn header_bytes(api: ApiKey, version: i16, correlation: i32) -> BytesMut {
    let mut buf = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(api as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation)
        .with_client_id(Some(StrBytes::from_static_str("fuzz")))
        .encode(&mut buf, api.request_header_version(version))
        .unwrap();
    buf
}

/// Well-formed requests of the APIs with the richest bodies.
fn valid_requests() -> Vec<Bytes> {
    let mut out = Vec::new();
    let topic = TopicName(StrBytes::from_static_str("t"));
    for (api, min, max) in supported_versions() {
        for version in min..=max {
            let mut buf = header_bytes(api, version, 7);
            let ok = match api {
                ApiKey::Metadata => MetadataRequest::default()
                    .with_topics(Some(vec![
                        MetadataRequestTopic::default().with_name(Some(topic.clone())),
                    ]))
                    .encode(&mut buf, version)
                    .is_ok(),
                ApiKey::Produce => ProduceRequest::default()
                    .with_acks(1)
                    .with_topic_data(vec![
                        TopicProduceData::default()
                            .with_name(topic.clone())
                            .with_partition_data(vec![
                                PartitionProduceData::default()
                                    .with_records(Some(Bytes::from_static(&[0u8; 70]))),
                            ]),
                    ])
                    .encode(&mut buf, version)
                    .is_ok(),
                ApiKey::Fetch => FetchRequest::default()
                    .with_max_wait_ms(10)
                    .with_topics(vec![
                        FetchTopic::default()
                            .with_topic(if version < 13 {
                                topic.clone()
                            } else {
                                Default::default()
                            })
                            .with_partitions(vec![FetchPartition::default()]),
                    ])
                    .encode(&mut buf, version)
                    .is_ok(),
                _ => false,
            };
            if ok {
                out.push(buf.freeze());
            }
        }
    }
    out
}

#[test]
fn valid_requests_decode() {
    let requests = valid_requests();
    assert!(
        requests.len() > 20,
        "too few seed requests: {}",
        requests.len()
    );
    for r in requests {
        let decoded = decode_request(r.clone());
        assert!(decoded.is_ok(), "seed request did not decode: {decoded:?}");
    }
}

#[test]
fn hostile_array_counts_are_rejected_without_aborting() {
    // Metadata v1: header, then a topics array claiming i32::MAX entries.
    for count in [i32::MAX, 1 << 30, 1 << 24] {
        let mut buf = header_bytes(ApiKey::Metadata, 1, 1);
        buf.put_i32(count);
        buf.put_i16(1);
        buf.put_u8(b'x');
        assert!(decode_request(buf.freeze()).is_err());
    }
    // Flexible (compact) arrays use an unsigned varint: 0xffff_ffff.
    let mut buf = header_bytes(ApiKey::Metadata, 12, 1);
    buf.put_slice(&[0xff, 0xff, 0xff, 0xff, 0x0f]);
    assert!(decode_request(buf.freeze()).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_request(Bytes::from(bytes));
    }

    #[test]
    fn valid_headers_with_random_bodies_never_panic(
        pick in any::<prop::sample::Index>(),
        version_pick in any::<prop::sample::Index>(),
        body in proptest::collection::vec(any::<u8>(), 0..256),
    ) {
        let apis = supported_versions();
        let (api, min, max) = apis[pick.index(apis.len())];
        let version = min + version_pick.index((max - min + 1) as usize) as i16;
        let mut buf = header_bytes(api, version, 1);
        buf.put_slice(&body);
        let _ = decode_request(buf.freeze());
    }

    #[test]
    fn mutated_valid_requests_never_panic(
        pick in any::<prop::sample::Index>(),
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
        cut in any::<prop::sample::Index>(),
    ) {
        let requests = valid_requests();
        let mut bytes = requests[pick.index(requests.len())].to_vec();
        for (at, value) in flips {
            let i = at.index(bytes.len());
            bytes[i] = value;
        }
        let keep = bytes.len() - cut.index(bytes.len() / 2 + 1);
        bytes.truncate(keep);
        let _ = decode_request(Bytes::from(bytes));
    }
}
