//! What the broker's status snapshot ([`crate::status`]) reads of the
//! coordinator: every group's membership and committed offsets, copied out.
//! Reads only, and holds the group lock just long enough to copy; the
//! offsets are copied after it is released, under the offset map's lock
//! alone.

use std::collections::BTreeMap;

use bytes::Bytes;

use sluice_log::common::mutex;

use super::GroupCoordinator;
use super::group::GroupState;
use super::offsets::CommitPoint;

/// One group as the status snapshot shows it.
#[derive(Debug, Clone)]
pub(crate) struct GroupView {
    pub id: String,
    pub state: &'static str,
    /// Empty for a group known only by its committed offsets.
    pub protocol_type: String,
    /// Empty until a join phase chose one.
    pub protocol: String,
    pub generation: i32,
    pub members: Vec<MemberView>,
    /// Ordered by topic and partition.
    pub offsets: Vec<CommitPoint>,
}

#[derive(Debug, Clone)]
pub(crate) struct MemberView {
    pub id: String,
    pub client_id: String,
    pub client_host: String,
    /// As the leader sent it in SyncGroup (empty mid-rebalance).
    pub assignment: Bytes,
}

impl GroupCoordinator {
    /// Every group with members, a recent history or committed offsets,
    /// ordered by id.
    pub(crate) fn view(&self) -> Vec<GroupView> {
        let mut views: BTreeMap<String, GroupView> = mutex(&self.groups)
            .values()
            .map(|g| {
                let view = GroupView {
                    id: g.id.clone(),
                    state: g.state.name(),
                    protocol_type: g.protocol_type.clone().unwrap_or_default(),
                    protocol: g.protocol_name.clone().unwrap_or_default(),
                    generation: g.generation,
                    members: g
                        .members
                        .iter()
                        .map(|m| MemberView {
                            id: m.id.clone(),
                            client_id: m.client.client_id.clone(),
                            client_host: m.client.client_host.clone(),
                            assignment: m.assignment.clone(),
                        })
                        .collect(),
                    offsets: Vec::new(),
                };
                (g.id.clone(), view)
            })
            .collect();
        for (group, offsets) in self.offsets.commit_points() {
            views
                .entry(group.clone())
                .or_insert_with(|| GroupView {
                    id: group,
                    state: GroupState::Empty.name(),
                    protocol_type: String::new(),
                    protocol: String::new(),
                    generation: 0,
                    members: Vec::new(),
                    offsets: Vec::new(),
                })
                .offsets = offsets;
        }
        views.into_values().collect()
    }

    /// Every group's committed offsets, without membership: what the status
    /// sampler records each interval.
    pub(crate) fn commit_points(&self) -> Vec<(String, Vec<CommitPoint>)> {
        self.offsets.commit_points()
    }
}
