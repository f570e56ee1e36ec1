//! `sluice broker`: the bundled log store behind the Kafka wire protocol, so
//! that any Kafka client (librdkafka, kcat, kafka-python, the JVM client)
//! produces to it and consumes from it unchanged.
//!
//! One node (id 0) that leads every partition and coordinates every group
//! and transaction. The broker owns the network edge and the protocol state
//! that Kafka keeps next to the log: producer ids and sequence numbers
//! (idempotence), consumer groups and their committed offsets, transactions
//! (KIP-98, KIP-447). It never re-encodes records: produced batches are
//! validated (framing, CRC-32C) and stored as they arrived, and fetches send
//! the stored bytes back.
//!
//! Layout, top to bottom (a module imports only those below it):
//! - [`server`] — listener, startup, graceful shutdown;
//! - [`status`] — the read-only status snapshot the console and the
//!   Prometheus endpoint render, and the sampler behind its rates and
//!   consumer-lag windows;
//! - [`connection`] — one client: framing, in-order responses;
//! - [`dispatch`] — request header decoding, version negotiation, routing
//!   each request to its handler with the state that handler needs,
//!   response encoding ([`splice`] puts stored batches in by reference);
//! - [`api`] — one file per Kafka API outside the group coordinator
//!   (Metadata, CreateTopics, DeleteTopics, CreatePartitions,
//!   DescribeConfigs, FindCoordinator, Produce, InitProducerId, Fetch,
//!   ListOffsets, ApiVersions, OffsetCommit's bridge to the store);
//! - [`state`] — the state connections share and the node's identity;
//! - [`topics`] — the store as handlers see it: auto-creation, the append
//!   wake-up, topic error messages;
//! - [`groups`] — the consumer-group coordinator, one file per group
//!   request, and its offset journal;
//! - [`txn`] — the transaction coordinator, one file per transaction
//!   request, and its transaction log;
//! - [`journal`] — the CRC-framed, fsynced journal both coordinators
//!   keep their state in;
//! - [`producers`] — idempotent-producer ids and sequence state;
//! - [`metrics`] — request, byte, error and latency counters, logged
//!   periodically and read by [`status`];
//! - [`config`], [`error`], [`blocking`], [`wire`] — settings, errors and
//!   their Kafka codes, the blocking pool, protocol string helpers.
//!
//! Requests on one connection are handled one at a time, in order, as Kafka
//! does: that keeps produce order per connection and response order trivial.
//! Work that touches files runs on tokio's blocking pool, never on the async
//! threads.

mod api;
mod blocking;
mod config;
mod connection;
mod dispatch;
mod error;
pub mod groups;
mod journal;
mod metrics;
mod producers;
mod server;
mod splice;
mod state;
mod status;
mod topics;
mod txn;
mod wire;

pub use api::api_versions::supported_versions;
pub use config::{BrokerConfig, DEFAULT_MAX_REQUEST_BYTES};
pub use dispatch::{Rejection, decode_request};
pub use error::BrokerError;
pub use journal::JournalError;
pub use server::{Broker, ShutdownHandle};
pub use status::{
    ApiStatus, BrokerSnapshot, BrokerStatus, GroupPartition, GroupStatus, LagStatus, LatencyBucket,
    LatencyHistogram, MemberAssignment, MemberStatus, PartitionStatus, TopicStatus,
};
pub use txn::TxnConfig;
