//! DescribeGroups: state, protocol and members of each named group, as
//! Kafka answers: unknown groups are Dead without an error, and protocol
//! data and assignments are shown only for Stable groups. Reads only.

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::{DescribeGroupsRequest, DescribeGroupsResponse};
use kafka_protocol::protocol::StrBytes;

use sluice_log::common::mutex;

use super::GroupCoordinator;
use super::group::GroupState;
use crate::wire::str_bytes;

/// Kafka's AclOperation bits for READ (3), DELETE (6) and DESCRIBE (8): what
/// anybody may do to a group on a broker without ACLs.
pub(super) const GROUP_AUTHORIZED_OPERATIONS: i32 = (1 << 3) | (1 << 6) | (1 << 8);

/// "Not requested" for `authorized_operations`.
const AUTHORIZED_OPERATIONS_OMITTED: i32 = i32::MIN;

/// Kafka's name for the state of a group it does not know.
const DEAD: &str = "Dead";

impl GroupCoordinator {
    pub fn describe_groups(
        &self,
        req: DescribeGroupsRequest,
        version: i16,
    ) -> DescribeGroupsResponse {
        let operations = if version >= 3 && req.include_authorized_operations {
            GROUP_AUTHORIZED_OPERATIONS
        } else {
            AUTHORIZED_OPERATIONS_OMITTED
        };
        let groups = mutex(&self.groups);
        let described = req
            .groups
            .into_iter()
            .map(|id| {
                let base = DescribedGroup::default().with_authorized_operations(operations);
                if id.0.is_empty() {
                    return base
                        .with_group_id(id)
                        .with_error_code(ResponseError::InvalidGroupId.code());
                }
                let Some(g) = groups.get(id.0.as_str()) else {
                    // Known only by its offsets: Empty. Unknown: Dead, and
                    // no error, as Kafka answers.
                    let state = if self.offsets.has_group(id.0.as_str()) {
                        GroupState::Empty.name()
                    } else {
                        DEAD
                    };
                    return base
                        .with_group_id(id)
                        .with_group_state(StrBytes::from_static_str(state));
                };
                // Kafka shows protocol, metadata and assignments only for
                // Stable groups; mid-rebalance they are in flux.
                let stable = g.state == GroupState::Stable;
                let protocol = if stable {
                    g.protocol_name.clone().unwrap_or_default()
                } else {
                    String::new()
                };
                let members = g
                    .members
                    .iter()
                    .map(|m| {
                        let (metadata, assignment) = if stable {
                            (m.metadata_for(&protocol), m.assignment.clone())
                        } else {
                            (Bytes::new(), Bytes::new())
                        };
                        DescribedGroupMember::default()
                            .with_member_id(str_bytes(&m.id))
                            .with_group_instance_id(m.instance_id.as_deref().map(str_bytes))
                            .with_client_id(str_bytes(&m.client.client_id))
                            .with_client_host(str_bytes(&m.client.client_host))
                            .with_member_metadata(metadata)
                            .with_member_assignment(assignment)
                    })
                    .collect();
                base.with_group_id(id)
                    .with_group_state(StrBytes::from_static_str(g.state.name()))
                    .with_protocol_type(str_bytes(g.protocol_type.as_deref().unwrap_or_default()))
                    .with_protocol_data(str_bytes(&protocol))
                    .with_members(members)
            })
            .collect();
        DescribeGroupsResponse::default().with_groups(described)
    }
}
