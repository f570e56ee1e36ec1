//! One client connection to a Kafka broker (`sluice broker` or Kafka
//! itself), speaking the wire protocol through `kafka-protocol`: framing,
//! correlation ids, API version negotiation, timeouts. Requests on one
//! connection go one at a time; a member keeps a second connection for its
//! heartbeats so that a long JoinGroup never delays them.
//!
//! Never interprets a response's error codes (the caller does) and never
//! retries.

use std::collections::HashMap;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, ApiVersionsRequest, RequestHeader, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable, Request, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest response frame accepted: group responses carry every member's
/// metadata, never near this.
const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// Why a request did not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("cannot connect to {addr}: {reason}")]
    Connect { addr: String, reason: String },
    #[error("{api:?} to {addr}: {reason}")]
    Io {
        addr: String,
        api: ApiKey,
        reason: String,
    },
    #[error("{api:?} to {addr}: no answer within {timeout:?}")]
    Timeout {
        addr: String,
        api: ApiKey,
        timeout: Duration,
    },
    #[error(
        "the broker at {addr} does not serve {api:?} at any version this worker speaks ({ours_min}..={ours_max}; it serves {theirs:?})"
    )]
    Unsupported {
        addr: String,
        api: ApiKey,
        ours_min: i16,
        ours_max: i16,
        theirs: Option<(i16, i16)>,
    },
}

/// A connection with the broker's API versions learned at connect.
pub(crate) struct Connection {
    addr: String,
    stream: TcpStream,
    correlation_id: i32,
    versions: HashMap<i16, (i16, i16)>,
    client_id: StrBytes,
}

impl Connection {
    /// Connects and asks ApiVersions (v0: every broker answers it).
    pub async fn connect(
        addr: &str,
        client_id: &str,
        timeout: Duration,
    ) -> Result<Connection, WireError> {
        let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| WireError::Connect {
                addr: addr.to_string(),
                reason: format!("no answer within {timeout:?}"),
            })?
            .map_err(|e| WireError::Connect {
                addr: addr.to_string(),
                reason: e.to_string(),
            })?;
        let _ = stream.set_nodelay(true);
        let mut conn = Connection {
            addr: addr.to_string(),
            stream,
            correlation_id: 0,
            versions: HashMap::new(),
            client_id: StrBytes::from_string(client_id.to_string()),
        };
        let resp = conn
            .call(&ApiVersionsRequest::default(), 0, timeout)
            .await?;
        conn.versions = resp
            .api_keys
            .iter()
            .map(|k| (k.api_key, (k.min_version, k.max_version)))
            .collect();
        Ok(conn)
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The highest version of `R` both sides speak, within `ours`.
    pub fn version<R: Request>(&self, ours: (i16, i16)) -> Result<i16, WireError> {
        let api = api_key::<R>();
        let theirs = self.versions.get(&R::KEY).copied();
        let crate_range = api.valid_versions();
        let top = ours.1.min(crate_range.max);
        match theirs {
            Some((min, max)) if max.min(top) >= min.max(ours.0) => Ok(max.min(top)),
            _ => Err(WireError::Unsupported {
                addr: self.addr.clone(),
                api,
                ours_min: ours.0,
                ours_max: top,
                theirs,
            }),
        }
    }

    /// Sends `req` at `version` and waits for its response.
    pub async fn call<R: Request>(
        &mut self,
        req: &R,
        version: i16,
        timeout: Duration,
    ) -> Result<R::Response, WireError> {
        let api = api_key::<R>();
        let io = |reason: String| WireError::Io {
            addr: self.addr.clone(),
            api,
            reason,
        };
        self.correlation_id = self.correlation_id.wrapping_add(1);
        let correlation_id = self.correlation_id;
        let mut buf = BytesMut::new();
        buf.put_i32(0);
        RequestHeader::default()
            .with_request_api_key(R::KEY)
            .with_request_api_version(version)
            .with_correlation_id(correlation_id)
            .with_client_id(Some(self.client_id.clone()))
            .encode(&mut buf, api.request_header_version(version))
            .map_err(|e| io(format!("encoding the request header: {e:#}")))?;
        req.encode(&mut buf, version)
            .map_err(|e| io(format!("encoding the request: {e:#}")))?;
        let len = (buf.len() - 4) as i32;
        buf[..4].copy_from_slice(&len.to_be_bytes());
        let exchange = async {
            self.stream.write_all(&buf).await?;
            let size = self.stream.read_i32().await?;
            let size = usize::try_from(size)
                .ok()
                .filter(|&s| s <= MAX_RESPONSE_BYTES)
                .ok_or_else(|| {
                    std::io::Error::other(format!("implausible response size {size}"))
                })?;
            let mut body = vec![0u8; size];
            self.stream.read_exact(&mut body).await?;
            Ok::<_, std::io::Error>(Bytes::from(body))
        };
        let mut frame = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| WireError::Timeout {
                addr: self.addr.clone(),
                api,
                timeout,
            })?
            .map_err(|e| io(e.to_string()))?;
        let header = ResponseHeader::decode(&mut frame, api.response_header_version(version))
            .map_err(|e| io(format!("decoding the response header: {e:#}")))?;
        if header.correlation_id != correlation_id {
            return Err(io(format!(
                "response for correlation id {} while waiting for {correlation_id}",
                header.correlation_id
            )));
        }
        let resp = R::Response::decode(&mut frame, version)
            .map_err(|e| io(format!("decoding the response: {e:#}")))?;
        if frame.has_remaining() {
            return Err(io(format!(
                "{} bytes after the response",
                frame.remaining()
            )));
        }
        Ok(resp)
    }
}

fn api_key<R: Request>() -> ApiKey {
    ApiKey::try_from(R::KEY).expect("kafka-protocol requests have known API keys")
}
