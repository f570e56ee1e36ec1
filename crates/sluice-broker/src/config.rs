//! How a broker is started: the settings `sluice broker` takes on its
//! command line. Owns their defaults (Kafka's where Kafka has one); never
//! reads files or the environment, and never changes once the broker runs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use sluice_log::log::CleanerOptions;

use crate::groups::GroupConfig;
use crate::txn::TxnConfig;

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
    /// How often the status sampler ([`crate::BrokerStatus`]) records
    /// counters, log ends and committed offsets: the resolution of the
    /// status rates (over about 10 s) and of the consumer-lag windows.
    pub status_sample_interval: Duration,
    pub groups: GroupConfig,
    pub transactions: TxnConfig,
    /// Compaction of `cleanup.policy=compact` topics (Kafka's `log.cleaner.*`).
    pub cleaner: CleanerOptions,
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
            status_sample_interval: Duration::from_secs(1),
            groups: GroupConfig::default(),
            transactions: TxnConfig::default(),
            cleaner: CleanerOptions::default(),
        }
    }
}
