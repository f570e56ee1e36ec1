//! SyncGroup: the leader hands in the assignment, every member gets its
//! own. A sync during CompletingRebalance waits for the leader's
//! assignment; in Stable it is answered at once with the current one. The
//! wait holds a oneshot receiver, never the group lock.

use std::time::Instant;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{SyncGroupRequest, SyncGroupResponse};
use tokio::sync::oneshot;

use super::group::{GroupState, sync_error};
use super::{GroupCoordinator, Outcome};

impl GroupCoordinator {
    pub async fn sync_group(&self, req: SyncGroupRequest, _version: i16) -> SyncGroupResponse {
        let outcome = self.sync_locked(req);
        self.timer_wake.notify_one();
        match outcome {
            Outcome::Now(r) => r,
            Outcome::Wait(rx) => rx
                .await
                .unwrap_or_else(|_| sync_error(ResponseError::CoordinatorNotAvailable)),
        }
    }

    fn sync_locked(&self, req: SyncGroupRequest) -> Outcome<SyncGroupResponse> {
        let now = Instant::now();
        let member_id = req.member_id.as_str();
        let synced = self.with_current_member(
            req.group_id.0.as_str(),
            member_id,
            req.group_instance_id.as_ref().map(|s| s.as_str()),
            req.generation_id,
            |group| {
                // v5 clients say which protocol they think the group runs.
                if req
                    .protocol_type
                    .as_ref()
                    .is_some_and(|t| group.protocol_type.as_deref() != Some(t.as_str()))
                    || req
                        .protocol_name
                        .as_ref()
                        .is_some_and(|n| group.protocol_name.as_deref() != Some(n.as_str()))
                {
                    return Err(ResponseError::InconsistentGroupProtocol);
                }
                match group.state {
                    GroupState::Empty => Err(ResponseError::UnknownMemberId),
                    GroupState::PreparingRebalance => Err(ResponseError::RebalanceInProgress),
                    GroupState::CompletingRebalance => {
                        let assignments = req
                            .assignments
                            .iter()
                            .map(|a| (a.member_id.to_string(), a.assignment.clone()))
                            .collect();
                        let (tx, rx) = oneshot::channel();
                        group.sync_completing(member_id, assignments, tx, now);
                        Ok(Outcome::Wait(rx))
                    }
                    GroupState::Stable => Ok(Outcome::Now(group.sync_stable(member_id, now))),
                }
            },
        );
        synced
            .and_then(|r| r)
            .unwrap_or_else(|e| Outcome::Now(sync_error(e)))
    }
}
