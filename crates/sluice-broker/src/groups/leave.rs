//! LeaveGroup: members leave (v0-2 one, v3+ a batch, static members by
//! instance id alone) and the group rebalances without them. A member that
//! is not in the group gets UNKNOWN_MEMBER_ID for itself only; the others
//! in the batch still leave.

use std::time::Instant;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::{LeaveGroupRequest, LeaveGroupResponse};

use sluice_log::common::mutex;

use super::{GroupCoordinator, check_member};
use crate::wire::str_bytes;

impl GroupCoordinator {
    pub fn leave_group(&self, req: LeaveGroupRequest, version: i16) -> LeaveGroupResponse {
        // v0-2 name one member; v3+ a list, each with its own answer.
        let leaving: Vec<(String, Option<String>)> = if version <= 2 {
            vec![(req.member_id.to_string(), None)]
        } else {
            req.members
                .iter()
                .map(|m| {
                    (
                        m.member_id.to_string(),
                        m.group_instance_id.as_ref().map(|s| s.to_string()),
                    )
                })
                .collect()
        };
        let (top, answers) = self.leave_locked(req.group_id.0.as_str(), leaving);
        self.timer_wake.notify_one();
        if version <= 2 {
            let error = top.or_else(|| answers.iter().find_map(|(_, _, e)| *e));
            return LeaveGroupResponse::default().with_error_code(error.map_or(0, |e| e.code()));
        }
        LeaveGroupResponse::default()
            .with_error_code(top.map_or(0, |e| e.code()))
            .with_members(
                answers
                    .into_iter()
                    .map(|(member_id, instance_id, e)| {
                        MemberResponse::default()
                            .with_member_id(str_bytes(&member_id))
                            .with_group_instance_id(instance_id.as_deref().map(str_bytes))
                            .with_error_code(e.map_or(0, |e| e.code()))
                    })
                    .collect(),
            )
    }

    /// Returns the top-level error and, per leaving member, its error.
    #[allow(clippy::type_complexity)]
    fn leave_locked(
        &self,
        group_id: &str,
        leaving: Vec<(String, Option<String>)>,
    ) -> (
        Option<ResponseError>,
        Vec<(String, Option<String>, Option<ResponseError>)>,
    ) {
        if self.is_closed() {
            return (Some(ResponseError::CoordinatorNotAvailable), Vec::new());
        }
        if group_id.is_empty() {
            return (Some(ResponseError::InvalidGroupId), Vec::new());
        }
        let now = Instant::now();
        let mut groups = mutex(&self.groups);
        let Some(group) = groups.get_mut(group_id) else {
            let answers = leaving
                .into_iter()
                .map(|(m, i)| (m, i, Some(ResponseError::UnknownMemberId)))
                .collect();
            return (None, answers);
        };
        let answers = leaving
            .into_iter()
            .map(|(member_id, instance_id)| {
                let error = if member_id.is_empty() {
                    // A static member leaving by instance id alone.
                    match instance_id
                        .as_deref()
                        .and_then(|i| group.member_by_instance(i))
                        .map(|m| m.id.clone())
                    {
                        Some(id) => {
                            group.remove_member_and_update_group(
                                &id,
                                ResponseError::UnknownMemberId,
                                now,
                                &self.config,
                                "left the group",
                            );
                            None
                        }
                        None => Some(ResponseError::UnknownMemberId),
                    }
                } else if group.remove_pending(&member_id, now) {
                    None
                } else {
                    match check_member(group, &member_id, instance_id.as_deref()) {
                        Err(e) => Some(e),
                        Ok(()) => {
                            group.remove_member_and_update_group(
                                &member_id,
                                ResponseError::UnknownMemberId,
                                now,
                                &self.config,
                                "left the group",
                            );
                            None
                        }
                    }
                };
                (member_id, instance_id, error)
            })
            .collect();
        (None, answers)
    }
}
