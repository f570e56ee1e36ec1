//! `sluice broker`: the bundled log store behind the Kafka wire protocol, so
//! that any Kafka client (librdkafka, kcat, kafka-python, the JVM client)
//! produces to it and consumes from it unchanged.
//!
//! One node (id 0) that leads every partition and coordinates every group.
//! The broker owns the network edge and the protocol state that Kafka keeps
//! next to the log: producer ids and sequence numbers (idempotence), consumer
//! groups and their committed offsets. It never re-encodes records: produced
//! batches are validated (framing, CRC-32C) and stored as they arrived, and
//! fetches send the stored bytes back.
//!
//! Layout:
//! - [`server`] — listener, connections, framing, graceful shutdown;
//! - [`dispatch`] — request header decoding, version negotiation, routing;
//! - [`admin`] — Metadata, CreateTopics, DeleteTopics, CreatePartitions,
//!   DescribeConfigs, FindCoordinator;
//! - [`produce`] — Produce and InitProducerId; [`producers`] keeps sequence
//!   state; [`fetch`] — Fetch (long polling) and ListOffsets;
//! - [`groups`] — the consumer-group coordinator and its offset journal;
//! - [`metrics`] — request, byte and error counters logged periodically.
//!
//! Requests on one connection are handled one at a time, in order, as Kafka
//! does: that keeps produce order per connection and response order trivial.
//! Work that touches files runs on tokio's blocking pool, never on the async
//! threads.

mod admin;
mod dispatch;
mod error;
mod fetch;
pub mod groups;
mod metrics;
mod produce;
mod producers;
mod server;
mod splice;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

pub use dispatch::{Rejection, decode_request, supported_versions};
pub use error::BrokerError;
pub use server::{Broker, ShutdownHandle};

use groups::GroupConfig;

/// Kafka's `socket.request.max.bytes`.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 100 * 1024 * 1024;

/// How a broker is started (`sluice broker` flags).
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    /// Host name given to clients in Metadata and FindCoordinator; defaults
    /// to the listen address (which must then not be 0.0.0.0).
    pub advertised_host: Option<String>,
    /// Create unknown topics on Metadata/Produce, as Kafka's
    /// `auto.create.topics.enable` (off by default here: typos should fail).
    pub auto_create_topics: bool,
    pub default_partitions: i32,
    /// Frames larger than this are refused and the connection closed, before
    /// any memory is allocated for them.
    pub max_request_bytes: usize,
    /// Connections idle this long are closed (Kafka's `connections.max.idle.ms`).
    pub idle_timeout: Duration,
    /// How often the metrics line is logged.
    pub metrics_interval: Duration,
    pub groups: GroupConfig,
}

impl BrokerConfig {
    pub fn new(listen: SocketAddr, data_dir: impl Into<PathBuf>) -> BrokerConfig {
        BrokerConfig {
            listen,
            data_dir: data_dir.into(),
            advertised_host: None,
            auto_create_topics: false,
            default_partitions: 1,
            max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
            idle_timeout: Duration::from_secs(600),
            metrics_interval: Duration::from_secs(60),
            groups: GroupConfig::default(),
        }
    }
}

/// The single node's id.
pub(crate) const NODE_ID: i32 = 0;
