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
//! One file per request: [`join`], [`sync`], [`heartbeat`], [`leave`],
//! [`offset_commit`], [`offset_fetch`], [`list`], [`describe`]; [`timers`]
//! for the deadlines, [`group`] for one group's state machine, [`offsets`]
//! for the journal, [`view`] for what the broker's status snapshot reads.
//! This file holds what they share: the coordinator, its config, and the
//! member checks.
//!
//! Not implemented: full static membership (KIP-345: a `group.instance.id`
//! is kept and echoed, and a join with a known instance id replaces the old
//! member and rebalances instead of taking over its assignment); offset
//! retention/expiry; `group.max.size`; Kafka's 5-minute join timeout for new
//! members; the KIP-848 consumer protocol; transactional offsets. Member ids
//! are `<client id>-<uuid>` (or `<instance id>-<uuid>`, or `member-<uuid>`
//! for clients without an id).

mod config;
mod describe;
mod error;
mod group;
mod heartbeat;
mod join;
mod leave;
mod list;
mod offset_commit;
mod offset_fetch;
mod offsets;
mod sync;
mod timers;
pub(crate) mod view;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::ApiKey;
use tokio::sync::{Notify, oneshot};

use sluice_log::common::mutex;

pub use config::GroupConfig;
pub use error::GroupError;
use group::Group;
pub(crate) use offset_commit::MAX_METADATA_BYTES;
use offsets::OffsetStore;

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

/// A request answered at once, or one waiting for a join or sync phase
/// (answered through the sender the group keeps).
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
        Ok(Arc::new(GroupCoordinator {
            config,
            groups: Mutex::new(HashMap::new()),
            offsets,
            timer_wake: Notify::new(),
            closed: AtomicBool::new(false),
        }))
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Runs `f` on the group of a member that claims to be in `generation`
    /// (SyncGroup, Heartbeat), under the group lock; or the error Kafka
    /// answers when it is not.
    fn with_current_member<T>(
        &self,
        group_id: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        f: impl FnOnce(&mut Group) -> T,
    ) -> Result<T, ResponseError> {
        if self.is_closed() {
            return Err(ResponseError::CoordinatorNotAvailable);
        }
        let mut groups = mutex(&self.groups);
        let group =
            current_member_group(&mut groups, group_id, member_id, instance_id, generation)?;
        Ok(f(group))
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

    /// The committed offset of one partition (tests of other modules).
    #[cfg(test)]
    pub(crate) fn committed_offset(&self, group: &str, topic: &str, partition: i32) -> Option<i64> {
        self.offsets.get(group, topic, partition).map(|c| c.offset)
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

/// Kafka's `validateCurrentMember`: the member must be in the group, and a
/// static member's instance id must be the one it joined with.
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
