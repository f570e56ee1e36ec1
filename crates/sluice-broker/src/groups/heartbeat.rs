//! Heartbeat: keeps a member's session alive, and is how members learn
//! that a rebalance started (REBALANCE_IN_PROGRESS) and they must rejoin.
//! Never waits.

use std::time::Instant;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{HeartbeatRequest, HeartbeatResponse};

use super::GroupCoordinator;
use super::group::GroupState;

impl GroupCoordinator {
    pub fn heartbeat(&self, req: HeartbeatRequest, _version: i16) -> HeartbeatResponse {
        let error = self.heartbeat_error(&req);
        HeartbeatResponse::default().with_error_code(error.map_or(0, |e| e.code()))
    }

    fn heartbeat_error(&self, req: &HeartbeatRequest) -> Option<ResponseError> {
        let member_id = req.member_id.as_str();
        let now = Instant::now();
        let state = self.with_current_member(
            req.group_id.0.as_str(),
            member_id,
            req.group_instance_id.as_ref().map(|s| s.as_str()),
            req.generation_id,
            |group| {
                if let Some(m) = group.member_mut(member_id) {
                    m.touch(now);
                }
                group.state
            },
        );
        match state {
            Err(e) => Some(e),
            Ok(GroupState::Empty) => Some(ResponseError::UnknownMemberId),
            // How members learn that they must rejoin.
            Ok(GroupState::PreparingRebalance) => Some(ResponseError::RebalanceInProgress),
            // Members may heartbeat between their join response and sync.
            Ok(GroupState::CompletingRebalance | GroupState::Stable) => None,
        }
    }
}
