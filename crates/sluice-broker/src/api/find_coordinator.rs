//! FindCoordinator: this node coordinates every consumer group and every
//! transactional id. Other key types (share groups) are refused with a
//! message naming what is served.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::{BrokerId, FindCoordinatorRequest, FindCoordinatorResponse};
use kafka_protocol::protocol::StrBytes;

use crate::state::Cluster;
use crate::wire::str_bytes;

/// Kafka's CoordinatorType for consumer groups.
const KEY_TYPE_GROUP: i8 = 0;
/// Kafka's CoordinatorType for transactional ids.
const KEY_TYPE_TRANSACTION: i8 = 1;

pub(crate) fn find_coordinator(
    cluster: &Cluster,
    req: FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    let host = str_bytes(cluster.advertised_host.clone());
    let (code, message): (i16, Option<StrBytes>) = match req.key_type {
        KEY_TYPE_GROUP | KEY_TYPE_TRANSACTION => (0, None),
        other => (
            ResponseError::CoordinatorNotAvailable.code(),
            Some(str_bytes(format!(
                "sluice broker coordinates consumer groups and transactions, not coordinator type {other}"
            ))),
        ),
    };
    if version >= 4 {
        let coordinators = req
            .coordinator_keys
            .into_iter()
            .map(|key| {
                let c = Coordinator::default().with_key(key).with_error_code(code);
                if code == 0 {
                    c.with_node_id(BrokerId(cluster.node_id))
                        .with_host(host.clone())
                        .with_port(cluster.advertised_port)
                } else {
                    c.with_node_id(BrokerId(-1))
                        .with_port(-1)
                        .with_error_message(message.clone())
                }
            })
            .collect();
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    let mut r = FindCoordinatorResponse::default().with_error_code(code);
    if code == 0 {
        r = r
            .with_node_id(BrokerId(cluster.node_id))
            .with_host(host)
            .with_port(cluster.advertised_port);
    } else {
        r = r.with_node_id(BrokerId(-1)).with_port(-1);
    }
    if version >= 1 {
        r = r.with_error_message(message);
    }
    r
}
