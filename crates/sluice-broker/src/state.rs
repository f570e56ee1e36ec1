//! The state every connection shares, and the node's identity. Built once
//! by [`crate::server`] at startup; the dispatcher hands each handler only
//! the pieces it needs (topics, producer state, group and transaction
//! coordinators, cluster
//! identity, metrics), never the whole. Holds no request logic and never
//! does I/O itself.

use std::sync::Arc;

use tokio::sync::watch;

use crate::config::BrokerConfig;
use crate::groups::GroupCoordinator;
use crate::metrics::Metrics;
use crate::producers::{ProducerIds, ProducerStates};
use crate::topics::Topics;
use crate::txn::TxnCoordinator;

/// The single node's id.
pub(crate) const NODE_ID: i32 = 0;

/// Who this node is to clients: what Metadata, FindCoordinator and
/// DescribeConfigs report.
pub(crate) struct Cluster {
    pub node_id: i32,
    pub cluster_id: String,
    pub advertised_host: String,
    pub advertised_port: i32,
}

/// State shared by every connection.
pub(crate) struct Shared {
    pub config: BrokerConfig,
    pub cluster: Cluster,
    pub topics: Topics,
    pub groups: Arc<GroupCoordinator>,
    pub txns: Arc<TxnCoordinator>,
    pub producer_ids: Arc<ProducerIds>,
    pub producer_states: Arc<ProducerStates>,
    pub metrics: Metrics,
    pub shutdown: watch::Receiver<bool>,
}
