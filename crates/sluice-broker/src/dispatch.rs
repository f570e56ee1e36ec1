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
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, RequestHeader, RequestKind, ResponseHeader, ResponseKind,
};
use kafka_protocol::protocol::buf::ByteBufMut;
use kafka_protocol::protocol::{Decodable, Encodable};

use super::server::Shared;
use super::splice::SplicingBuf;
use super::{admin, fetch, groups, produce};

/// What the connection does after a request.
pub(crate) enum Outcome {
    /// Write these bytes (one size-prefixed response frame, possibly in pieces).
    Respond(Vec<Bytes>),
    /// Nothing to send (Produce with acks=0).
    Silent,
    /// Protocol violation: log the reason and close this connection.
    Close(String),
}

/// The API versions this broker implements, as `(api, min, max)`. This is
/// exactly what ApiVersions advertises; the minimums are those the
/// `kafka-protocol` crate can decode (Kafka 4.0's baseline).
pub fn supported_versions() -> Vec<(ApiKey, i16, i16)> {
    use ApiKey::*;
    let ours = [
        (Produce, 3, 11),
        (Fetch, 4, 16),
        (ListOffsets, 1, 6),
        (Metadata, 0, 12),
        (FindCoordinator, 0, 4),
        (ApiVersions, 0, 3),
        (CreateTopics, 2, 7),
        (DeleteTopics, 1, 6),
        (InitProducerId, 0, 4),
        (DescribeConfigs, 1, 4),
        (CreatePartitions, 0, 3),
    ];
    ours.into_iter()
        .chain(groups::supported_versions())
        .map(|(api, min, max)| {
            let crate_range = api.valid_versions();
            (api, min.max(crate_range.min), max.min(crate_range.max))
        })
        .collect()
}

fn supported_range(api: ApiKey) -> Option<(i16, i16)> {
    supported_versions()
        .into_iter()
        .find(|(a, _, _)| *a == api)
        .map(|(_, min, max)| (min, max))
}

pub(crate) fn api_versions_response(error_code: i16) -> ApiVersionsResponse {
    ApiVersionsResponse::default()
        .with_error_code(error_code)
        .with_api_keys(
            supported_versions()
                .into_iter()
                .map(|(api, min, max)| {
                    ApiVersion::default()
                        .with_api_key(api as i16)
                        .with_min_version(min)
                        .with_max_version(max)
                })
                .collect(),
        )
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

pub(crate) async fn handle(shared: &Arc<Shared>, frame: Bytes, peer: SocketAddr) -> Outcome {
    if frame.len() >= 2 {
        shared
            .metrics
            .request(i16::from_be_bytes([frame[0], frame[1]]));
    }
    let (version, header, body) = match decode_request(frame) {
        Ok(decoded) => decoded,
        Err(Rejection::ApiVersionsUnsupported { correlation_id }) => {
            shared.metrics.error(ApiKey::ApiVersions as i16);
            let resp = api_versions_response(ResponseError::UnsupportedVersion.code());
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
    let response = route(shared, api, body, version, &client, peer).await;
    match response {
        Ok(Some(resp)) => {
            if response_has_error(&resp) {
                shared.metrics.error(key);
            }
            encode(api, version, header.correlation_id, resp)
        }
        Ok(None) => Outcome::Silent,
        Err(reason) => Outcome::Close(reason),
    }
}

async fn route(
    shared: &Arc<Shared>,
    api: ApiKey,
    body: RequestKind,
    version: i16,
    client: &str,
    peer: SocketAddr,
) -> Result<Option<ResponseKind>, String> {
    use RequestKind as Rq;
    use ResponseKind as Rs;
    let g = &shared.groups;
    Ok(Some(match body {
        Rq::ApiVersions(_) => Rs::ApiVersions(api_versions_response(0)),
        Rq::Metadata(r) => Rs::Metadata(admin::metadata(shared, r, version).await),
        Rq::CreateTopics(r) => Rs::CreateTopics(admin::create_topics(shared, r, version).await),
        Rq::DeleteTopics(r) => Rs::DeleteTopics(admin::delete_topics(shared, r, version).await),
        Rq::CreatePartitions(r) => {
            Rs::CreatePartitions(admin::create_partitions(shared, r, version).await)
        }
        Rq::DescribeConfigs(r) => Rs::DescribeConfigs(admin::describe_configs(shared, r, version)),
        Rq::FindCoordinator(r) => Rs::FindCoordinator(admin::find_coordinator(shared, r, version)),
        Rq::Produce(r) => match produce::produce(shared, r, version).await {
            Some(resp) => Rs::Produce(resp),
            None => return Ok(None),
        },
        Rq::InitProducerId(r) => {
            Rs::InitProducerId(produce::init_producer_id(shared, r, version).await)
        }
        Rq::Fetch(r) => Rs::Fetch(fetch::fetch(shared, r, version).await?),
        Rq::ListOffsets(r) => Rs::ListOffsets(fetch::list_offsets(shared, r, version).await),
        Rq::JoinGroup(r) => Rs::JoinGroup(
            g.join_group(r, version, client, &peer.ip().to_string())
                .await,
        ),
        Rq::SyncGroup(r) => Rs::SyncGroup(g.sync_group(r, version).await),
        Rq::Heartbeat(r) => Rs::Heartbeat(g.heartbeat(r, version)),
        Rq::LeaveGroup(r) => Rs::LeaveGroup(g.leave_group(r, version)),
        Rq::OffsetCommit(r) => {
            let s = shared.clone();
            let resp = tokio::task::spawn_blocking(move || {
                let exists = |topic: &str, p: i32| s.store.partition(topic, p).is_ok();
                s.groups.offset_commit(r, version, &exists)
            })
            .await
            .map_err(|e| format!("offset commit task failed: {e}"))?;
            Rs::OffsetCommit(resp)
        }
        Rq::OffsetFetch(r) => Rs::OffsetFetch(g.offset_fetch(r, version)),
        Rq::ListGroups(r) => Rs::ListGroups(g.list_groups(r, version)),
        Rq::DescribeGroups(r) => Rs::DescribeGroups(g.describe_groups(r, version)),
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
        Rs::JoinGroup(r) => r.error_code != 0,
        Rs::SyncGroup(r) => r.error_code != 0,
        Rs::Heartbeat(r) => r.error_code != 0,
        Rs::ApiVersions(r) => r.error_code != 0,
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
