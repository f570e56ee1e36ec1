//! ListGroups: every group this coordinator knows (with members, or only
//! with committed offsets), filtered by state (v4+) and type (v5+; every
//! group here is a classic group). Reads only.

use std::collections::BTreeMap;

use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::{GroupId, ListGroupsRequest, ListGroupsResponse};
use kafka_protocol::protocol::StrBytes;

use sluice_log::common::mutex;

use super::GroupCoordinator;
use super::group::GroupState;
use crate::wire::str_bytes;

impl GroupCoordinator {
    pub fn list_groups(&self, req: ListGroupsRequest, version: i16) -> ListGroupsResponse {
        let states: Vec<String> = if version >= 4 {
            req.states_filter
                .iter()
                .map(|s| s.as_str().to_ascii_lowercase())
                .collect()
        } else {
            Vec::new()
        };
        // Every group here is a classic group.
        let classic_wanted = version < 5
            || req.types_filter.is_empty()
            || req
                .types_filter
                .iter()
                .any(|t| t.as_str().eq_ignore_ascii_case("classic"));

        let mut listed: BTreeMap<String, (String, &'static str)> = BTreeMap::new();
        {
            let groups = mutex(&self.groups);
            for g in groups.values() {
                listed.insert(
                    g.id.clone(),
                    (g.protocol_type.clone().unwrap_or_default(), g.state.name()),
                );
            }
            for id in self.offsets.group_ids() {
                listed
                    .entry(id)
                    .or_insert_with(|| (String::new(), GroupState::Empty.name()));
            }
        }
        let groups = listed
            .into_iter()
            .filter(|_| classic_wanted)
            .filter(|(_, (_, state))| {
                states.is_empty() || states.contains(&state.to_ascii_lowercase())
            })
            .map(|(id, (protocol_type, state))| {
                let mut g = ListedGroup::default()
                    .with_group_id(GroupId(str_bytes(&id)))
                    .with_protocol_type(str_bytes(&protocol_type));
                if version >= 4 {
                    g = g.with_group_state(StrBytes::from_static_str(state));
                }
                if version >= 5 {
                    g = g.with_group_type(StrBytes::from_static_str("classic"));
                }
                g
            })
            .collect();
        ListGroupsResponse::default().with_groups(groups)
    }
}
