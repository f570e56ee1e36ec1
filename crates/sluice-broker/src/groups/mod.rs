//! Consumer-group coordinator of the single-node broker: Kafka's classic
//! group protocol (JoinGroup, SyncGroup, Heartbeat, LeaveGroup) and
//! committed offsets (OffsetCommit, OffsetFetch), plus ListGroups and
//! DescribeGroups. Node 0 coordinates every group.
//!
//! Owns group membership (in memory only, as the protocol allows: after a
//! restart every group is Empty and clients simply rejoin) and the durable
//! committed offsets in `<data-dir>/groups` (the `offsets` module). Never
//! touches topic data, never decides whether a partition exists (the caller
//! says so), never holds its lock across an `.await` or while fsyncing, and
//! never answers an OffsetCommit before it is on disk.
//!
//! Requests are answered the way Kafka 3.x's `GroupCoordinator` answers
//! them, error codes included. JoinGroup and SyncGroup may wait: a join
//! waits for the join phase (everybody rejoined, the rebalance timeout, or
//! the initial delay of an empty group), a follower's sync for the leader's
//! assignment. Their futures hold only a oneshot receiver; the state machine
//! (the `group` module) answers through the sender.
//! [`GroupCoordinator::run_timers`] drives every deadline.
//!
//! Not implemented: full static membership (KIP-345: a `group.instance.id`
//! is kept and echoed, and a join with a known instance id replaces the old
//! member and rebalances instead of taking over its assignment); offset
//! retention/expiry; `group.max.size`; Kafka's 5-minute join timeout for new
//! members; the KIP-848 consumer protocol; transactional offsets. Member ids
//! are `<client id>-<uuid>` (or `<instance id>-<uuid>`, or `member-<uuid>`
//! for clients without an id).

mod error;
mod group;
mod offsets;

pub(crate) use group::ClientIdentity;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{
    ApiKey, DescribeGroupsRequest, DescribeGroupsResponse, GroupId, HeartbeatRequest,
    HeartbeatResponse, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest, LeaveGroupResponse,
    ListGroupsRequest, ListGroupsResponse, OffsetCommitRequest, OffsetCommitResponse,
    OffsetFetchRequest, OffsetFetchResponse, SyncGroupRequest, SyncGroupResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use tokio::sync::{Notify, oneshot, watch};

use sluice_log::common::{mutex, now_ms};

pub use error::GroupError;
use group::{Group, GroupState, JoinWaiter, Member, join_error, sync_error};
use offsets::{CommittedOffset, OffsetEntry, OffsetStore};

/// Group coordinator settings, with Kafka's broker config names and defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupConfig {
    /// `group.initial.rebalance.delay.ms` (default 3 s): an Empty group
    /// waits this long for more members before its first rebalance completes.
    pub initial_rebalance_delay: Duration,
    /// `group.min.session.timeout.ms`, default 6 s.
    pub min_session_timeout: Duration,
    /// `group.max.session.timeout.ms`, default 30 min.
    pub max_session_timeout: Duration,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            initial_rebalance_delay: Duration::from_secs(3),
            min_session_timeout: Duration::from_secs(6),
            max_session_timeout: Duration::from_secs(30 * 60),
        }
    }
}

/// The request versions this module answers, per API: `(api, min, max)`.
/// The minimum of OffsetCommit (2) and OffsetFetch (1) is the oldest the
/// `kafka-protocol` crate can decode.
pub fn supported_versions() -> [(ApiKey, i16, i16); 8] {
    [
        (ApiKey::JoinGroup, 0, 9),
        (ApiKey::SyncGroup, 0, 5),
        (ApiKey::Heartbeat, 0, 4),
        (ApiKey::LeaveGroup, 0, 5),
        (ApiKey::OffsetCommit, 2, 8),
        (ApiKey::OffsetFetch, 1, 8),
        (ApiKey::ListGroups, 0, 5),
        (ApiKey::DescribeGroups, 0, 5),
    ]
}

/// `offset.metadata.max.bytes`: longer commit metadata is refused.
const MAX_METADATA_BYTES: usize = 4096;

/// Prefix of generated member ids. Kafka uses the client id, which the
/// request bodies this module sees do not carry.
const MEMBER_ID_PREFIX: &str = "member";

/// An Empty group with no committed offsets is forgotten after this long
/// (Kafka drops such groups in its periodic offsets cleanup, every 10 min).
const IDLE_GROUP_TTL: Duration = Duration::from_secs(10 * 60);

/// The timer task re-checks at least this often even without a deadline due.
const MAX_TIMER_SLEEP: Duration = Duration::from_secs(1);

/// Kafka's AclOperation bits for READ (3), DELETE (6) and DESCRIBE (8): what
/// anybody may do to a group on a broker without ACLs.
const GROUP_AUTHORIZED_OPERATIONS: i32 = (1 << 3) | (1 << 6) | (1 << 8);

/// "Not requested" for `authorized_operations`.
const AUTHORIZED_OPERATIONS_OMITTED: i32 = i32::MIN;

/// Kafka's name for the state of a group it does not know.
const DEAD: &str = "Dead";

fn str_bytes(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_owned())
}

enum Outcome<T> {
    Now(T),
    Wait(oneshot::Receiver<T>),
}

pub struct GroupCoordinator {
    config: GroupConfig,
    /// Membership of every group with members, pending member ids or a
    /// recent history. Groups that only have committed offsets live in
    /// `offsets` alone and count as Empty. Lock order: `groups`, then the
    /// offset store's locks.
    groups: Mutex<HashMap<String, Group>>,
    offsets: OffsetStore,
    /// Wakes the timer task when a request created an earlier deadline.
    timer_wake: Notify,
    closed: AtomicBool,
}

impl GroupCoordinator {
    /// Opens (creating if needed) the durable committed-offset store in
    /// `dir` (the broker passes `<data-dir>/groups`), replaying it.
    pub fn open(dir: &Path, config: GroupConfig) -> Result<Arc<GroupCoordinator>, GroupError> {
        let offsets = OffsetStore::open(dir)?;
        Ok(Arc::new(GroupCoordinator::with_store(offsets, config)))
    }

    fn with_store(offsets: OffsetStore, config: GroupConfig) -> GroupCoordinator {
        GroupCoordinator {
            config,
            groups: Mutex::new(HashMap::new()),
            offsets,
            timer_wake: Notify::new(),
            closed: AtomicBool::new(false),
        }
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

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
        let group_id = req.group_id.0.to_string();
        let member_id = req.member_id.to_string();
        let fail = |e: ResponseError| Outcome::Now(join_error(version, e, &member_id));
        if self.is_closed() {
            return fail(ResponseError::CoordinatorNotAvailable);
        }
        if group_id.is_empty() {
            return fail(ResponseError::InvalidGroupId);
        }
        let session_timeout = match u64::try_from(req.session_timeout_ms) {
            Ok(ms)
                if (self.config.min_session_timeout..=self.config.max_session_timeout)
                    .contains(&Duration::from_millis(ms)) =>
            {
                Duration::from_millis(ms)
            }
            _ => return fail(ResponseError::InvalidSessionTimeout),
        };
        // v0 has no rebalance timeout: Kafka uses the session timeout.
        let rebalance_timeout = match u64::try_from(req.rebalance_timeout_ms) {
            Ok(ms) if version >= 1 => Duration::from_millis(ms),
            _ => session_timeout,
        };
        let protocol_type = req.protocol_type.to_string();
        let protocols: Vec<(String, Bytes)> = req
            .protocols
            .into_iter()
            .map(|p| (p.name.to_string(), p.metadata))
            .collect();
        let instance_id = req.group_instance_id.map(|s| s.to_string());
        let (tx, rx) = oneshot::channel();
        let waiter = JoinWaiter { tx, version };

        let mut groups = mutex(&self.groups);
        if member_id.is_empty() {
            let existed = groups.contains_key(&group_id);
            let group = groups
                .entry(group_id.clone())
                .or_insert_with(|| Group::new(group_id.clone(), now));
            if !group.supports_protocols(&protocol_type, &protocols) {
                if !existed {
                    groups.remove(&group_id);
                }
                return fail(ResponseError::InconsistentGroupProtocol);
            }
            let prefix = instance_id
                .as_deref()
                .unwrap_or(if client.client_id.is_empty() {
                    MEMBER_ID_PREFIX
                } else {
                    &client.client_id
                });
            let new_id = format!("{prefix}-{}", uuid::Uuid::new_v4());
            if let Some(instance) = &instance_id {
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
            } else if version >= 4 {
                // KIP-394: hand out the id and let the client come back with
                // it, so a client that times out before getting the response
                // does not leave a ghost member behind.
                group.add_pending(new_id.clone(), now + session_timeout);
                return Outcome::Now(join_error(
                    version,
                    ResponseError::MemberIdRequired,
                    &new_id,
                ));
            }
            let member = Member::new(
                new_id,
                instance_id,
                protocols,
                session_timeout,
                rebalance_timeout,
                now,
            )
            .with_client(client);
            group.add_member_and_rebalance(member, &protocol_type, waiter, now, &self.config);
            return Outcome::Wait(rx);
        }

        let Some(group) = groups.get_mut(&group_id) else {
            return fail(ResponseError::UnknownMemberId);
        };
        if !group.supports_protocols(&protocol_type, &protocols) {
            return fail(ResponseError::InconsistentGroupProtocol);
        }
        if group.is_pending(&member_id) {
            let member = Member::new(
                member_id.clone(),
                instance_id,
                protocols,
                session_timeout,
                rebalance_timeout,
                now,
            )
            .with_client(client);
            // Added before the pending id is dropped, so a join phase
            // waiting for this id does not end without the member.
            group.add_member_and_rebalance(member, &protocol_type, waiter, now, &self.config);
            group.remove_pending(&member_id, now);
            return Outcome::Wait(rx);
        }
        let Some(member) = group.member(&member_id) else {
            return fail(ResponseError::UnknownMemberId);
        };
        if instance_id.is_some() && member.instance_id != instance_id {
            return fail(ResponseError::FencedInstanceId);
        }
        let unchanged = group.member_matches(&member_id, &protocols);
        let immediate = match group.state {
            GroupState::PreparingRebalance => false,
            // Same metadata: the member lost the join response; repeat it.
            GroupState::CompletingRebalance => unchanged,
            // The leader rejoining asks for a rebalance (e.g. topic metadata
            // changed); a follower with unchanged metadata just gets the
            // current generation.
            GroupState::Stable => unchanged && !group.is_leader(&member_id),
            GroupState::Empty => return fail(ResponseError::UnknownMemberId),
        };
        if immediate {
            if let Some(m) = group.member_mut(&member_id) {
                m.touch(now);
            }
            return Outcome::Now(group.join_response(&member_id));
        }
        group.update_member_and_rebalance(
            &member_id,
            protocols,
            session_timeout,
            rebalance_timeout,
            waiter,
            now,
            &self.config,
        );
        Outcome::Wait(rx)
    }

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
        let fail = |e: ResponseError| Outcome::Now(sync_error(e));
        if self.is_closed() {
            return fail(ResponseError::CoordinatorNotAvailable);
        }
        let member_id = req.member_id.as_str();
        let mut groups = mutex(&self.groups);
        let group = match current_member_group(
            &mut groups,
            req.group_id.0.as_str(),
            member_id,
            req.group_instance_id.as_ref().map(|s| s.as_str()),
            req.generation_id,
        ) {
            Ok(group) => group,
            Err(e) => return fail(e),
        };
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
            return fail(ResponseError::InconsistentGroupProtocol);
        }
        match group.state {
            GroupState::Empty => fail(ResponseError::UnknownMemberId),
            GroupState::PreparingRebalance => fail(ResponseError::RebalanceInProgress),
            GroupState::CompletingRebalance => {
                let assignments = req
                    .assignments
                    .into_iter()
                    .map(|a| (a.member_id.to_string(), a.assignment))
                    .collect();
                let (tx, rx) = oneshot::channel();
                group.sync_completing(member_id, assignments, tx, now);
                Outcome::Wait(rx)
            }
            GroupState::Stable => Outcome::Now(group.sync_stable(member_id, now)),
        }
    }

    pub fn heartbeat(&self, req: HeartbeatRequest, _version: i16) -> HeartbeatResponse {
        let error = self.heartbeat_error(&req);
        HeartbeatResponse::default().with_error_code(error.map_or(0, |e| e.code()))
    }

    fn heartbeat_error(&self, req: &HeartbeatRequest) -> Option<ResponseError> {
        if self.is_closed() {
            return Some(ResponseError::CoordinatorNotAvailable);
        }
        let member_id = req.member_id.as_str();
        let now = Instant::now();
        let mut groups = mutex(&self.groups);
        let group = match current_member_group(
            &mut groups,
            req.group_id.0.as_str(),
            member_id,
            req.group_instance_id.as_ref().map(|s| s.as_str()),
            req.generation_id,
        ) {
            Ok(group) => group,
            Err(e) => return Some(e),
        };
        let state = group.state;
        if let Some(m) = group.member_mut(member_id) {
            m.touch(now);
        }
        match state {
            GroupState::Empty => Some(ResponseError::UnknownMemberId),
            // How members learn that they must rejoin.
            GroupState::PreparingRebalance => Some(ResponseError::RebalanceInProgress),
            // Members may heartbeat between their join response and sync.
            GroupState::CompletingRebalance | GroupState::Stable => None,
        }
    }

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

    /// `partition_exists(topic, partition)` lets the coordinator answer
    /// UNKNOWN_TOPIC_OR_PARTITION. Durable (fsync) before returning: it is
    /// called from a blocking thread.
    pub fn offset_commit(
        &self,
        req: OffsetCommitRequest,
        _version: i16,
        partition_exists: &dyn Fn(&str, i32) -> bool,
    ) -> OffsetCommitResponse {
        let group_id = req.group_id.0.to_string();
        // One answer per requested partition, in request order; `None` means
        // "store it".
        let mut answers: Vec<Vec<Option<ResponseError>>> = req
            .topics
            .iter()
            .map(|t| {
                t.partitions
                    .iter()
                    .map(|p| {
                        (!partition_exists(t.name.0.as_str(), p.partition_index))
                            .then_some(ResponseError::UnknownTopicOrPartition)
                    })
                    .collect()
            })
            .collect();

        let group_error = self.validate_commit(
            &group_id,
            req.generation_id_or_member_epoch,
            req.member_id.as_str(),
            req.group_instance_id.as_ref().map(|s| s.as_str()),
        );

        let commit_ms = now_ms();
        let mut entries = Vec::new();
        let mut stored = Vec::new();
        for (ti, topic) in req.topics.iter().enumerate() {
            for (pi, p) in topic.partitions.iter().enumerate() {
                let answer = &mut answers[ti][pi];
                if answer.is_some() {
                    continue;
                }
                if let Some(e) = group_error {
                    *answer = Some(e);
                    continue;
                }
                let metadata = p
                    .committed_metadata
                    .as_ref()
                    .map(|m| m.to_string())
                    .unwrap_or_default();
                if metadata.len() > MAX_METADATA_BYTES {
                    *answer = Some(ResponseError::OffsetMetadataTooLarge);
                    continue;
                }
                entries.push(OffsetEntry {
                    topic: topic.name.0.to_string(),
                    partition: p.partition_index,
                    committed: CommittedOffset {
                        offset: p.committed_offset,
                        leader_epoch: p.committed_leader_epoch,
                        metadata,
                        commit_timestamp_ms: commit_ms,
                    },
                });
                stored.push((ti, pi));
            }
        }

        // The group lock is not held here: the fsync must not stall
        // heartbeats. (Kafka has the same window between validating and
        // appending a commit.)
        if !entries.is_empty()
            && let Err(e) = self.offsets.commit(&group_id, entries)
        {
            tracing::error!(group = %group_id, error = %e, "committing offsets failed");
            for (ti, pi) in stored {
                answers[ti][pi] = Some(ResponseError::CoordinatorNotAvailable);
            }
        }

        OffsetCommitResponse::default().with_topics(
            req.topics
                .iter()
                .zip(answers)
                .map(|(t, errors)| {
                    OffsetCommitResponseTopic::default()
                        .with_name(t.name.clone())
                        .with_partitions(
                            t.partitions
                                .iter()
                                .zip(errors)
                                .map(|(p, e)| {
                                    OffsetCommitResponsePartition::default()
                                        .with_partition_index(p.partition_index)
                                        .with_error_code(e.map_or(0, |e| e.code()))
                                })
                                .collect(),
                        )
                })
                .collect(),
        )
    }

    /// Kafka's `validateOffsetCommit` and the state check after it: an error
    /// for every partition of the request, or `None` to store them.
    fn validate_commit(
        &self,
        group_id: &str,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
    ) -> Option<ResponseError> {
        if self.is_closed() {
            return Some(ResponseError::CoordinatorNotAvailable);
        }
        if group_id.is_empty() {
            return Some(ResponseError::InvalidGroupId);
        }
        let now = Instant::now();
        let mut groups = mutex(&self.groups);
        if !groups.contains_key(group_id) {
            // A group that only has committed offsets (e.g. after a restart)
            // exists and is Empty; an unknown one is created for a "simple"
            // commit from a client not using group management, and anything
            // else is a commit from a generation long gone.
            if generation >= 0 && !self.offsets.has_group(group_id) {
                return Some(ResponseError::IllegalGeneration);
            }
            groups.insert(group_id.to_owned(), Group::new(group_id.to_owned(), now));
        }
        let group = groups.get_mut(group_id)?;
        if generation >= 0 || !member_id.is_empty() || instance_id.is_some() {
            if let Err(e) = check_member(group, member_id, instance_id) {
                return Some(e);
            }
            if generation != group.generation {
                return Some(ResponseError::IllegalGeneration);
            }
        } else if group.state != GroupState::Empty {
            // Once a group has members, only members may commit.
            return Some(ResponseError::UnknownMemberId);
        }
        match group.state {
            GroupState::Empty => None,
            // Commits are still allowed while the group prepares a
            // rebalance; heartbeats tell the member to rejoin.
            GroupState::Stable | GroupState::PreparingRebalance => {
                if let Some(m) = group.member_mut(member_id) {
                    m.touch(now);
                }
                None
            }
            // The member has the new generation but not yet its assignment.
            GroupState::CompletingRebalance => Some(ResponseError::RebalanceInProgress),
        }
    }

    pub fn offset_fetch(&self, req: OffsetFetchRequest, version: i16) -> OffsetFetchResponse {
        if version >= 8 {
            let groups = req
                .groups
                .into_iter()
                .map(|g| {
                    let topics = g.topics.map(|ts| {
                        ts.into_iter()
                            .map(|t| (t.name, t.partition_indexes))
                            .collect()
                    });
                    match self.fetch_group(g.group_id.0.as_str(), topics) {
                        Ok(topics) => OffsetFetchResponseGroup::default()
                            .with_group_id(g.group_id)
                            .with_topics(
                                topics
                                    .into_iter()
                                    .map(|(name, parts)| {
                                        OffsetFetchResponseTopics::default()
                                            .with_name(name)
                                            .with_partitions(
                                                parts
                                                    .into_iter()
                                                    .map(|(p, c)| {
                                                        OffsetFetchResponsePartitions::default()
                                                            .with_partition_index(p)
                                                            .with_committed_offset(c.offset)
                                                            .with_committed_leader_epoch(
                                                                c.leader_epoch,
                                                            )
                                                            .with_metadata(Some(str_bytes(
                                                                &c.metadata,
                                                            )))
                                                    })
                                                    .collect(),
                                            )
                                    })
                                    .collect(),
                            ),
                        Err(e) => OffsetFetchResponseGroup::default()
                            .with_group_id(g.group_id)
                            .with_error_code(e.code()),
                    }
                })
                .collect();
            return OffsetFetchResponse::default().with_groups(groups);
        }

        let requested = req.topics.clone();
        let result = self.fetch_group(
            req.group_id.0.as_str(),
            req.topics.map(|ts| {
                ts.into_iter()
                    .map(|t| (t.name, t.partition_indexes))
                    .collect()
            }),
        );
        let partition = |p: i32, c: &CommittedOffset, error: i16| {
            OffsetFetchResponsePartition::default()
                .with_partition_index(p)
                .with_committed_offset(c.offset)
                .with_committed_leader_epoch(c.leader_epoch)
                .with_metadata(Some(str_bytes(&c.metadata)))
                .with_error_code(error)
        };
        match result {
            Ok(topics) => OffsetFetchResponse::default().with_topics(
                topics
                    .into_iter()
                    .map(|(name, parts)| {
                        OffsetFetchResponseTopic::default()
                            .with_name(name)
                            .with_partitions(
                                parts.iter().map(|(p, c)| partition(*p, c, 0)).collect(),
                            )
                    })
                    .collect(),
            ),
            // v2+ has a top-level error; v1 can only say it per partition.
            Err(e) if version >= 2 => OffsetFetchResponse::default().with_error_code(e.code()),
            Err(e) => OffsetFetchResponse::default().with_topics(
                requested
                    .unwrap_or_default()
                    .into_iter()
                    .map(|t| {
                        OffsetFetchResponseTopic::default()
                            .with_partitions(
                                t.partition_indexes
                                    .iter()
                                    .map(|p| partition(*p, &no_offset(), e.code()))
                                    .collect(),
                            )
                            .with_name(t.name)
                    })
                    .collect(),
            ),
        }
    }

    /// The committed offsets of `topics` (`None`: every committed partition)
    /// for one group; partitions without a commit answer offset -1.
    #[allow(clippy::type_complexity)]
    fn fetch_group(
        &self,
        group_id: &str,
        topics: Option<Vec<(TopicName, Vec<i32>)>>,
    ) -> Result<Vec<(TopicName, Vec<(i32, CommittedOffset)>)>, ResponseError> {
        if group_id.is_empty() {
            return Err(ResponseError::InvalidGroupId);
        }
        Ok(match topics {
            Some(topics) => topics
                .into_iter()
                .map(|(name, partitions)| {
                    let parts = partitions
                        .into_iter()
                        .map(|p| {
                            let c = self
                                .offsets
                                .get(group_id, name.0.as_str(), p)
                                .unwrap_or_else(no_offset);
                            (p, c)
                        })
                        .collect();
                    (name, parts)
                })
                .collect(),
            None => {
                let mut by_topic: BTreeMap<String, Vec<(i32, CommittedOffset)>> = BTreeMap::new();
                for (t, p, c) in self.offsets.group_offsets(group_id) {
                    by_topic.entry(t).or_default().push((p, c));
                }
                by_topic
                    .into_iter()
                    .map(|(t, parts)| (TopicName(str_bytes(&t)), parts))
                    .collect()
            }
        })
    }

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

    /// Drops committed offsets of a deleted topic (Kafka does the same).
    pub fn forget_topic(&self, topic: &str) {
        match self.offsets.forget_topic(topic) {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                topic,
                entries = n,
                "dropped committed offsets of deleted topic"
            ),
            Err(e) => {
                tracing::error!(topic, error = %e, "could not drop committed offsets of deleted topic")
            }
        }
    }

    /// Background task: expires members whose session timed out, completes
    /// joins whose rebalance timeout passed, completes the initial-delay
    /// join phase. Runs until `shutdown` fires.
    pub async fn run_timers(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            if *shutdown.borrow() {
                break;
            }
            let now = Instant::now();
            let next = self.expire(now);
            let sleep = next
                .map(|d| d.saturating_duration_since(now))
                .unwrap_or(MAX_TIMER_SLEEP)
                .min(MAX_TIMER_SLEEP);
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {}
                _ = self.timer_wake.notified() => {}
                changed = shutdown.changed() => {
                    // A dropped sender can never say "run on": stop too.
                    if changed.is_err() {
                        break;
                    }
                }
            }
        }
        tracing::debug!("group coordinator timers stopped");
    }

    /// One pass over every group's deadlines; returns the next one.
    fn expire(&self, now: Instant) -> Option<Instant> {
        let mut groups = mutex(&self.groups);
        let mut next: Option<Instant> = None;
        for group in groups.values_mut() {
            if let Some(d) = group.expire(now, &self.config) {
                next = Some(next.map_or(d, |n| n.min(d)));
            }
        }
        groups.retain(|id, g| {
            let idle = g.state == GroupState::Empty
                && g.members.is_empty()
                && !g.has_pending()
                && g.empty_since
                    .is_some_and(|t| now.duration_since(t) >= IDLE_GROUP_TTL);
            !idle || self.offsets.has_group(id)
        });
        next
    }

    /// Flushes/closes the offset store (called on graceful shutdown).
    /// Requests still waiting are answered COORDINATOR_NOT_AVAILABLE, so
    /// clients look for the coordinator again once the broker is back.
    pub fn close(&self) -> Result<(), GroupError> {
        self.closed.store(true, Ordering::Release);
        for g in mutex(&self.groups).values_mut() {
            g.fail_all_waiters(ResponseError::CoordinatorNotAvailable);
        }
        self.timer_wake.notify_one();
        self.offsets.close()
    }
}

/// Kafka's `validateCurrentMember`: the member must be in the group, and a
/// static member's instance id must be the one it joined with.
/// The group of a member that claims to be in `generation` (SyncGroup,
/// Heartbeat), or the error Kafka answers when it is not.
fn current_member_group<'a>(
    groups: &'a mut HashMap<String, Group>,
    group_id: &str,
    member_id: &str,
    instance_id: Option<&str>,
    generation: i32,
) -> Result<&'a mut Group, ResponseError> {
    if group_id.is_empty() {
        return Err(ResponseError::InvalidGroupId);
    }
    let group = groups
        .get_mut(group_id)
        .ok_or(ResponseError::UnknownMemberId)?;
    check_member(group, member_id, instance_id)?;
    if generation != group.generation {
        return Err(ResponseError::IllegalGeneration);
    }
    Ok(group)
}

fn check_member(
    group: &Group,
    member_id: &str,
    instance_id: Option<&str>,
) -> Result<(), ResponseError> {
    match group.member(member_id) {
        None => Err(ResponseError::UnknownMemberId),
        Some(m) if instance_id.is_some() && m.instance_id.as_deref() != instance_id => {
            Err(ResponseError::FencedInstanceId)
        }
        Some(_) => Ok(()),
    }
}

/// What OffsetFetch answers for a partition without a committed offset.
fn no_offset() -> CommittedOffset {
    CommittedOffset {
        offset: -1,
        leader_epoch: -1,
        metadata: String::new(),
        commit_timestamp_ms: -1,
    }
}
