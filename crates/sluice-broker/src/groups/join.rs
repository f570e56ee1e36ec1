//! JoinGroup: a member joins (or rejoins) and waits for the join phase to
//! end — everybody rejoined, the rebalance timeout passed, or an empty
//! group's initial delay ran out. New members without an id first get one
//! (KIP-394); a static member's instance id replaces the member that had it.
//! The wait holds a oneshot receiver, never the group lock.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{JoinGroupRequest, JoinGroupResponse};
use tokio::sync::oneshot;

use sluice_log::common::mutex;

use super::config::GroupConfig;
use super::group::{ClientIdentity, Group, GroupState, JoinWaiter, Member, join_error};
use super::{GroupCoordinator, Outcome};

/// Prefix of generated member ids for clients that send no client id.
const MEMBER_ID_PREFIX: &str = "member";

/// A JoinGroup request that passed the checks every join must pass.
struct Join {
    version: i16,
    group_id: String,
    /// Empty for a member joining for the first time.
    member_id: String,
    instance_id: Option<String>,
    client: ClientIdentity,
    session_timeout: Duration,
    rebalance_timeout: Duration,
    protocol_type: String,
    protocols: Vec<(String, Bytes)>,
}

/// How the join phases answer a join that did not fail.
enum Joined {
    /// The member waits for the join phase; its response comes through the
    /// waiter.
    Waiting,
    Now(JoinGroupResponse),
}

impl Join {
    fn check(
        req: JoinGroupRequest,
        version: i16,
        client: ClientIdentity,
        config: &GroupConfig,
    ) -> Result<Join, ResponseError> {
        let group_id = req.group_id.0.to_string();
        if group_id.is_empty() {
            return Err(ResponseError::InvalidGroupId);
        }
        let session_timeout = match u64::try_from(req.session_timeout_ms) {
            Ok(ms)
                if (config.min_session_timeout..=config.max_session_timeout)
                    .contains(&Duration::from_millis(ms)) =>
            {
                Duration::from_millis(ms)
            }
            _ => return Err(ResponseError::InvalidSessionTimeout),
        };
        // v0 has no rebalance timeout: Kafka uses the session timeout.
        let rebalance_timeout = match u64::try_from(req.rebalance_timeout_ms) {
            Ok(ms) if version >= 1 => Duration::from_millis(ms),
            _ => session_timeout,
        };
        Ok(Join {
            version,
            group_id,
            member_id: req.member_id.to_string(),
            instance_id: req.group_instance_id.map(|s| s.to_string()),
            client,
            session_timeout,
            rebalance_timeout,
            protocol_type: req.protocol_type.to_string(),
            protocols: req
                .protocols
                .into_iter()
                .map(|p| (p.name.to_string(), p.metadata))
                .collect(),
        })
    }

    /// Kafka names members `<instance id or client id>-<uuid>`.
    fn new_member_id(&self) -> String {
        let prefix = self
            .instance_id
            .as_deref()
            .unwrap_or(if self.client.client_id.is_empty() {
                MEMBER_ID_PREFIX
            } else {
                &self.client.client_id
            });
        format!("{prefix}-{}", uuid::Uuid::new_v4())
    }

    /// Adds the joiner to `group` as member `id`; it waits for the join phase.
    fn add_to(
        self,
        group: &mut Group,
        id: String,
        waiter: JoinWaiter,
        now: Instant,
        config: &GroupConfig,
    ) {
        let member = Member::new(
            id,
            self.instance_id,
            self.protocols,
            self.session_timeout,
            self.rebalance_timeout,
            now,
        )
        .with_client(self.client);
        group.add_member_and_rebalance(member, &self.protocol_type, waiter, now, config);
    }
}

impl GroupCoordinator {
    /// `client_id` and `client_host` come from the request header and the
    /// connection; DescribeGroups reports them and member ids start with
    /// the client id, as in Kafka.
    pub async fn join_group(
        &self,
        req: JoinGroupRequest,
        version: i16,
        client_id: &str,
        client_host: &str,
    ) -> JoinGroupResponse {
        let member_id = req.member_id.to_string();
        let client = ClientIdentity {
            client_id: client_id.to_string(),
            client_host: client_host.to_string(),
        };
        let outcome = self.join_locked(req, version, client);
        // A join may have started a join phase or handed out a pending
        // member id: deadlines the timer task must see.
        self.timer_wake.notify_one();
        match outcome {
            Outcome::Now(r) => r,
            Outcome::Wait(rx) => rx.await.unwrap_or_else(|_| {
                join_error(version, ResponseError::CoordinatorNotAvailable, &member_id)
            }),
        }
    }

    fn join_locked(
        &self,
        req: JoinGroupRequest,
        version: i16,
        client: ClientIdentity,
    ) -> Outcome<JoinGroupResponse> {
        let now = Instant::now();
        let member_id = req.member_id.to_string();
        let joined = if self.is_closed() {
            Err(ResponseError::CoordinatorNotAvailable)
        } else {
            Join::check(req, version, client, &self.config).and_then(|join| {
                let (tx, rx) = oneshot::channel();
                let waiter = JoinWaiter { tx, version };
                let mut groups = mutex(&self.groups);
                let joined = if join.member_id.is_empty() {
                    self.join_new_member(&mut groups, join, waiter, now)
                } else {
                    self.join_known_member(&mut groups, join, waiter, now)
                };
                joined.map(|j| match j {
                    Joined::Waiting => Outcome::Wait(rx),
                    Joined::Now(r) => Outcome::Now(r),
                })
            })
        };
        joined.unwrap_or_else(|e| Outcome::Now(join_error(version, e, &member_id)))
    }

    /// A member without an id: it gets one, and (before v4, or as a static
    /// member) joins at once.
    fn join_new_member(
        &self,
        groups: &mut HashMap<String, Group>,
        join: Join,
        waiter: JoinWaiter,
        now: Instant,
    ) -> Result<Joined, ResponseError> {
        let existed = groups.contains_key(&join.group_id);
        let group = groups
            .entry(join.group_id.clone())
            .or_insert_with(|| Group::new(join.group_id.clone(), now));
        if !group.supports_protocols(&join.protocol_type, &join.protocols) {
            if !existed {
                groups.remove(&join.group_id);
            }
            return Err(ResponseError::InconsistentGroupProtocol);
        }
        let new_id = join.new_member_id();
        if let Some(instance) = &join.instance_id {
            // Simplified static membership: the newcomer replaces the
            // member that had its instance id.
            if let Some(old) = group.member_by_instance(instance).map(|m| m.id.clone()) {
                group.remove_member_and_update_group(
                    &old,
                    ResponseError::FencedInstanceId,
                    now,
                    &self.config,
                    "replaced by a new member with its group.instance.id",
                );
            }
        } else if join.version >= 4 {
            // KIP-394: hand out the id and let the client come back with
            // it, so a client that times out before getting the response
            // does not leave a ghost member behind.
            group.add_pending(new_id.clone(), now + join.session_timeout);
            return Ok(Joined::Now(join_error(
                join.version,
                ResponseError::MemberIdRequired,
                &new_id,
            )));
        }
        join.add_to(group, new_id, waiter, now, &self.config);
        Ok(Joined::Waiting)
    }

    /// A member with an id: a pending one becomes a member, a known one
    /// rejoins (at once when nothing changed, else with a rebalance).
    fn join_known_member(
        &self,
        groups: &mut HashMap<String, Group>,
        join: Join,
        waiter: JoinWaiter,
        now: Instant,
    ) -> Result<Joined, ResponseError> {
        let group = groups
            .get_mut(&join.group_id)
            .ok_or(ResponseError::UnknownMemberId)?;
        if !group.supports_protocols(&join.protocol_type, &join.protocols) {
            return Err(ResponseError::InconsistentGroupProtocol);
        }
        let member_id = join.member_id.clone();
        if group.is_pending(&member_id) {
            // Added before the pending id is dropped, so a join phase
            // waiting for this id does not end without the member.
            join.add_to(group, member_id.clone(), waiter, now, &self.config);
            group.remove_pending(&member_id, now);
            return Ok(Joined::Waiting);
        }
        let member = group
            .member(&member_id)
            .ok_or(ResponseError::UnknownMemberId)?;
        if join.instance_id.is_some() && member.instance_id != join.instance_id {
            return Err(ResponseError::FencedInstanceId);
        }
        let unchanged = group.member_matches(&member_id, &join.protocols);
        let immediate = match group.state {
            GroupState::PreparingRebalance => false,
            // Same metadata: the member lost the join response; repeat it.
            GroupState::CompletingRebalance => unchanged,
            // The leader rejoining asks for a rebalance (e.g. topic metadata
            // changed); a follower with unchanged metadata just gets the
            // current generation.
            GroupState::Stable => unchanged && !group.is_leader(&member_id),
            GroupState::Empty => return Err(ResponseError::UnknownMemberId),
        };
        if immediate {
            if let Some(m) = group.member_mut(&member_id) {
                m.touch(now);
            }
            return Ok(Joined::Now(group.join_response(&member_id)));
        }
        group.update_member_and_rebalance(
            &member_id,
            join.protocols,
            join.session_timeout,
            join.rebalance_timeout,
            waiter,
            now,
            &self.config,
        );
        Ok(Joined::Waiting)
    }
}
