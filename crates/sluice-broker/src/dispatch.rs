//! One request in, one response out: reads the request header, checks the
//! API version against what this broker implements (advertised verbatim in
//! ApiVersions), decodes the body with `kafka-protocol`, routes it, and
//! encodes the response with the header version the API requires.
//!
//! A request that cannot be understood (unknown API key, a version that was
//! never advertised, a body that does not decode) closes that client's
//! connection with a logged reason, as Kafka does; it never reaches the
//! handlers and never affects other connections. ApiVersions is the
//! exception Kafka makes: an unsupported version is answered with
//! UNSUPPORTED_VERSION and the supported ranges, at version 0.

use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseHeader, ResponseKind};
use kafka_protocol::protocol::buf::ByteBufMut;
use kafka_protocol::protocol::{Decodable, Encodable};

use crate::api::api_versions::{api_versions, supported_range};
use crate::api::{
    alter_configs, create_partitions, create_topics, delete_records, delete_topics,
    describe_configs, fetch, find_coordinator, init_producer_id, list_offsets, metadata,
    offset_commit, produce,
};
use crate::splice::SplicingBuf;
use crate::state::Shared;

/// What the connection does after a request.
pub(crate) enum Outcome {
    /// Write these bytes (one size-prefixed response frame, possibly in pieces).
    Respond(Vec<Bytes>),
    /// Nothing to send (Produce with acks=0).
    Silent,
    /// Protocol violation: log the reason and close this connection.
    Close(String),
}

/// Why a frame is not a request this broker will serve.
#[derive(Debug)]
pub enum Rejection {
    /// ApiVersions at a version we lack: answered at v0 with UNSUPPORTED_VERSION.
    ApiVersionsUnsupported { correlation_id: i32 },
    /// Anything else: the reason the connection is closed.
    Close(String),
}

/// Decodes one request frame (without its size prefix): header, version
/// check, body. Pure and panic-free, so it can be fuzzed directly.
pub fn decode_request(mut frame: Bytes) -> Result<(i16, RequestHeader, RequestKind), Rejection> {
    if frame.len() < 8 {
        return Err(Rejection::Close(format!(
            "truncated request header ({} bytes; at least 8 needed)",
            frame.len()
        )));
    }
    let key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let correlation_id = i32::from_be_bytes([frame[4], frame[5], frame[6], frame[7]]);
    let Ok(api) = ApiKey::try_from(key) else {
        return Err(Rejection::Close(format!("unknown API key {key}")));
    };
    let Some((min, max)) = supported_range(api) else {
        return Err(Rejection::Close(format!(
            "API {api:?} (key {key}) is not implemented by sluice broker (see ApiVersions)"
        )));
    };
    if version < min || version > max {
        if api == ApiKey::ApiVersions {
            return Err(Rejection::ApiVersionsUnsupported { correlation_id });
        }
        return Err(Rejection::Close(format!(
            "{api:?} v{version} is not supported (this broker serves v{min}..=v{max}); the client should have negotiated with ApiVersions"
        )));
    }
    let header_version = api.request_header_version(version);
    // The decoder is third-party code fed with untrusted bytes: a panic in
    // it must cost this client its connection, not the broker its thread.
    let decoded = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let header = RequestHeader::decode(&mut frame, header_version)?;
        let body = RequestKind::decode(api, &mut frame, version)?;
        anyhow::Ok((header, body))
    }));
    match decoded {
        Ok(Ok((header, body))) => Ok((version, header, body)),
        Ok(Err(e)) => Err(Rejection::Close(format!(
            "malformed {api:?} v{version} request: {e:#}"
        ))),
        Err(_) => Err(Rejection::Close(format!(
            "malformed {api:?} v{version} request (the decoder panicked)"
        ))),
    }
}

/// Decodes, routes and encodes one request frame.
pub(crate) async fn handle(shared: &Shared, frame: Bytes, peer: SocketAddr) -> Outcome {
    if frame.len() >= 2 {
        shared
            .metrics
            .request(i16::from_be_bytes([frame[0], frame[1]]));
    }
    let (version, header, body) = match decode_request(frame) {
        Ok(decoded) => decoded,
        Err(Rejection::ApiVersionsUnsupported { correlation_id }) => {
            shared.metrics.error(ApiKey::ApiVersions as i16);
            let resp = api_versions(ResponseError::UnsupportedVersion.code());
            return encode(
                ApiKey::ApiVersions,
                0,
                correlation_id,
                ResponseKind::ApiVersions(resp),
            );
        }
        Err(Rejection::Close(reason)) => return Outcome::Close(reason),
    };
    let key = header.request_api_key;
    let Ok(api) = ApiKey::try_from(key) else {
        return Outcome::Close(format!("unknown API key {key}"));
    };
    let client = header
        .client_id
        .as_ref()
        .map_or("", |c| c.as_str())
        .to_string();
    let decoded = Instant::now();
    let response = route(shared, api, body, version, &client, peer).await;
    let outcome = match response {
        Ok(Some(resp)) => {
            if response_has_error(&resp) {
                shared.metrics.error(key);
            }
            encode(api, version, header.correlation_id, resp)
        }
        Ok(None) => Outcome::Silent,
        Err(reason) => Outcome::Close(reason),
    };
    // A request that closed the connection was never answered: no latency.
    if !matches!(outcome, Outcome::Close(_)) {
        shared.metrics.latency(key, decoded.elapsed());
    }
    outcome
}

/// Hands each handler the state it needs; `Ok(None)` sends nothing, `Err`
/// closes the connection.
async fn route(
    shared: &Shared,
    api: ApiKey,
    body: RequestKind,
    version: i16,
    client: &str,
    peer: SocketAddr,
) -> Result<Option<ResponseKind>, String> {
    use RequestKind as Rq;
    use ResponseKind as Rs;
    let Shared {
        config,
        cluster,
        topics,
        groups,
        txns,
        producer_ids,
        producer_states,
        metrics,
        shutdown,
    } = shared;
    Ok(Some(match body {
        Rq::ApiVersions(_) => Rs::ApiVersions(api_versions(0)),
        Rq::Metadata(r) => Rs::Metadata(metadata::metadata(topics, cluster, r, version).await),
        Rq::CreateTopics(r) => {
            Rs::CreateTopics(create_topics::create_topics(topics, r, version).await)
        }
        Rq::DeleteTopics(r) => {
            Rs::DeleteTopics(delete_topics::delete_topics(topics, groups, r, version).await)
        }
        Rq::CreatePartitions(r) => {
            Rs::CreatePartitions(create_partitions::create_partitions(topics, r, version).await)
        }
        Rq::IncrementalAlterConfigs(r) => Rs::IncrementalAlterConfigs(
            alter_configs::incremental_alter_configs(topics, r, version).await,
        ),
        Rq::AlterConfigs(r) => {
            Rs::AlterConfigs(alter_configs::alter_configs(topics, r, version).await)
        }
        Rq::DeleteRecords(r) => {
            Rs::DeleteRecords(delete_records::delete_records(topics, r, version).await)
        }
        Rq::DescribeConfigs(r) => Rs::DescribeConfigs(describe_configs::describe_configs(
            topics, cluster, config, r, version,
        )),
        Rq::FindCoordinator(r) => {
            Rs::FindCoordinator(find_coordinator::find_coordinator(cluster, r, version))
        }
        Rq::Produce(r) => {
            match produce::produce(topics, producer_states, txns, metrics, r, version).await {
                Some(resp) => Rs::Produce(resp),
                None => return Ok(None),
            }
        }
        Rq::InitProducerId(r) => Rs::InitProducerId(
            init_producer_id::init_producer_id(producer_ids, txns, r, version).await,
        ),
        Rq::Fetch(r) => Rs::Fetch(fetch::fetch(topics, shutdown, metrics, r, version).await?),
        Rq::ListOffsets(r) => Rs::ListOffsets(list_offsets::list_offsets(topics, r, version).await),
        Rq::JoinGroup(r) => Rs::JoinGroup(
            groups
                .join_group(r, version, client, &peer.ip().to_string())
                .await,
        ),
        Rq::SyncGroup(r) => Rs::SyncGroup(groups.sync_group(r, version).await),
        Rq::Heartbeat(r) => Rs::Heartbeat(groups.heartbeat(r, version)),
        Rq::LeaveGroup(r) => Rs::LeaveGroup(groups.leave_group(r, version)),
        Rq::OffsetCommit(r) => {
            Rs::OffsetCommit(offset_commit::offset_commit(groups, topics, r, version).await?)
        }
        Rq::OffsetFetch(r) => Rs::OffsetFetch(groups.offset_fetch(r, version)),
        Rq::ListGroups(r) => Rs::ListGroups(groups.list_groups(r, version)),
        Rq::DescribeGroups(r) => Rs::DescribeGroups(groups.describe_groups(r, version)),
        Rq::AddPartitionsToTxn(r) => Rs::AddPartitionsToTxn(txns.add_partitions(r, version).await),
        Rq::AddOffsetsToTxn(r) => Rs::AddOffsetsToTxn(txns.add_offsets(r, version).await),
        Rq::EndTxn(r) => Rs::EndTxn(txns.end_txn(r, version).await),
        Rq::TxnOffsetCommit(r) => Rs::TxnOffsetCommit(txns.txn_offset_commit(r, version).await),
        Rq::DescribeTransactions(r) => {
            Rs::DescribeTransactions(txns.describe_transactions(r, version))
        }
        Rq::ListTransactions(r) => Rs::ListTransactions(txns.list_transactions(r, version)),
        // decode_request only lets advertised APIs through.
        _ => return Err(format!("{api:?} is not implemented by sluice broker")),
    }))
}

fn response_has_error(resp: &ResponseKind) -> bool {
    use ResponseKind as Rs;
    match resp {
        Rs::Produce(r) => r
            .responses
            .iter()
            .any(|t| t.partition_responses.iter().any(|p| p.error_code != 0)),
        Rs::Fetch(r) => {
            r.error_code != 0
                || r.responses
                    .iter()
                    .any(|t| t.partitions.iter().any(|p| p.error_code != 0))
        }
        Rs::Metadata(r) => r.topics.iter().any(|t| t.error_code != 0),
        Rs::CreateTopics(r) => r.topics.iter().any(|t| t.error_code != 0),
        Rs::IncrementalAlterConfigs(r) => r.responses.iter().any(|r| r.error_code != 0),
        Rs::AlterConfigs(r) => r.responses.iter().any(|r| r.error_code != 0),
        Rs::DeleteRecords(r) => r
            .topics
            .iter()
            .any(|t| t.partitions.iter().any(|p| p.error_code != 0)),
        Rs::JoinGroup(r) => r.error_code != 0,
        Rs::SyncGroup(r) => r.error_code != 0,
        Rs::Heartbeat(r) => r.error_code != 0,
        Rs::ApiVersions(r) => r.error_code != 0,
        Rs::InitProducerId(r) => r.error_code != 0,
        Rs::EndTxn(r) => r.error_code != 0,
        Rs::AddOffsetsToTxn(r) => r.error_code != 0,
        Rs::AddPartitionsToTxn(r) => r.results_by_topic_v3_and_below.iter().any(|t| {
            t.results_by_partition
                .iter()
                .any(|p| p.partition_error_code != 0)
        }),
        Rs::TxnOffsetCommit(r) => r
            .topics
            .iter()
            .any(|t| t.partitions.iter().any(|p| p.error_code != 0)),
        _ => false,
    }
}

fn encode(api: ApiKey, version: i16, correlation_id: i32, resp: ResponseKind) -> Outcome {
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    let header_version = api.response_header_version(version);
    let chunks = match resp {
        // Stored record batches are spliced into the frame by reference.
        ResponseKind::Fetch(f) => {
            let sources = f
                .responses
                .iter()
                .flat_map(|t| t.partitions.iter())
                .filter_map(|p| p.records.clone())
                .filter(|r| !r.is_empty())
                .collect();
            let mut buf = SplicingBuf::new(sources);
            buf.put_i32(0);
            header
                .encode(&mut buf, header_version)
                .and_then(|_| f.encode(&mut buf, version))
                .map(|_| {
                    let len = (buf.offset() - 4) as i32;
                    buf.patch(0, &len.to_be_bytes());
                    buf.into_chunks()
                })
        }
        other => {
            let mut buf = BytesMut::with_capacity(256);
            buf.put_i32(0);
            header
                .encode(&mut buf, header_version)
                .and_then(|_| other.encode(&mut buf, version))
                .map(|_| {
                    let len = (buf.len() - 4) as i32;
                    buf[..4].copy_from_slice(&len.to_be_bytes());
                    vec![buf.freeze()]
                })
        }
    };
    match chunks {
        Ok(chunks) => Outcome::Respond(chunks),
        Err(e) => {
            // A bug on our side (a field set that this version lacks): say
            // so loudly; the client sees a closed connection and retries.
            tracing::error!("cannot encode {api:?} v{version} response: {e:#}");
            Outcome::Close(format!(
                "internal error encoding {api:?} v{version} response"
            ))
        }
    }
}
