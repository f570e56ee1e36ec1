//! One consumer group's membership state machine, as Kafka's classic group
//! protocol defines it (`GroupMetadata` and the membership half of
//! `GroupCoordinator` in Kafka).
//!
//! Owns members, generations, the leader, the join and sync phases and their
//! deadlines, and answering the join/sync requests that wait on them. Never
//! blocks, awaits or touches the committed offsets: the coordinator calls in
//! with its lock held and a timestamp, and pending requests are answered
//! through oneshot channels.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::{JoinGroupResponse, SyncGroupResponse};
use kafka_protocol::protocol::StrBytes;
use tokio::sync::oneshot;

use super::config::GroupConfig;
use crate::wire::str_bytes;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GroupState {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
}

impl GroupState {
    /// The state's name as Kafka spells it in DescribeGroups and ListGroups.
    pub(crate) fn name(self) -> &'static str {
        match self {
            GroupState::Empty => "Empty",
            GroupState::PreparingRebalance => "PreparingRebalance",
            GroupState::CompletingRebalance => "CompletingRebalance",
            GroupState::Stable => "Stable",
        }
    }
}

/// A JoinGroup request waiting for the join phase to end; the response is
/// shaped for the version it arrived with.
pub(crate) struct JoinWaiter {
    pub tx: oneshot::Sender<JoinGroupResponse>,
    pub version: i16,
}

/// Who a member is, for DescribeGroups: the request header's client id and
/// the connection's address.
#[derive(Debug, Clone, Default)]
pub(crate) struct ClientIdentity {
    pub client_id: String,
    pub client_host: String,
}

pub(crate) struct Member {
    pub id: String,
    pub client: ClientIdentity,
    pub instance_id: Option<String>,
    /// (name, metadata) in the member's order of preference.
    pub protocols: Vec<(String, Bytes)>,
    pub session_timeout: Duration,
    pub rebalance_timeout: Duration,
    pub assignment: Bytes,
    /// The member is removed if it has not been heard from by then (unless
    /// it is waiting in a join or sync, which other deadlines bound).
    pub session_deadline: Instant,
    join_waiter: Option<JoinWaiter>,
    sync_waiter: Option<oneshot::Sender<SyncGroupResponse>>,
    /// Got the join response of the current generation but has not sent
    /// SyncGroup yet.
    pending_sync: bool,
}

impl Member {
    pub(crate) fn new(
        id: String,
        instance_id: Option<String>,
        protocols: Vec<(String, Bytes)>,
        session_timeout: Duration,
        rebalance_timeout: Duration,
        now: Instant,
    ) -> Member {
        Member {
            id,
            client: ClientIdentity::default(),
            instance_id,
            protocols,
            session_timeout,
            rebalance_timeout,
            assignment: Bytes::new(),
            session_deadline: now + session_timeout,
            join_waiter: None,
            sync_waiter: None,
            pending_sync: false,
        }
    }

    pub(crate) fn with_client(mut self, client: ClientIdentity) -> Member {
        self.client = client;
        self
    }

    fn supports(&self, protocol: &str) -> bool {
        self.protocols.iter().any(|(name, _)| name == protocol)
    }

    pub(crate) fn metadata_for(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|(name, _)| name == protocol)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    }

    pub(crate) fn touch(&mut self, now: Instant) {
        self.session_deadline = now + self.session_timeout;
    }
}

pub(crate) struct Group {
    pub id: String,
    pub state: GroupState,
    pub generation: i32,
    /// Set by the first member to join an empty group; kept while Empty so
    /// ListGroups still shows what kind of group it was.
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader: Option<String>,
    /// In join order: the first member becomes leader when there is none.
    pub members: Vec<Member>,
    /// Member ids handed out with MEMBER_ID_REQUIRED (KIP-394) whose owners
    /// have not joined with them yet, and when they are given up on.
    pending: HashMap<String, Instant>,
    /// PreparingRebalance: when the join phase ends even if not everybody
    /// rejoined (rebalance timeout) or the current initial delay ends.
    join_deadline: Option<Instant>,
    /// `Some` while the join phase of a group that was Empty is in its
    /// initial delay: how much of the rebalance timeout is left for
    /// extending it. The join phase then never ends early.
    initial_delay_remaining: Option<Duration>,
    /// A member joined during the initial delay of a brand-new group, so the
    /// delay is extended once more (Kafka's `newMemberAdded`).
    new_member_added: bool,
    /// CompletingRebalance/Stable: members that have not sent SyncGroup by
    /// then are removed.
    sync_deadline: Option<Instant>,
    /// When the group last became Empty (idle groups are eventually dropped).
    pub empty_since: Option<Instant>,
}

/// A join response for an error: no generation, no leader.
pub(crate) fn join_error(version: i16, error: ResponseError, member_id: &str) -> JoinGroupResponse {
    let mut r = JoinGroupResponse::default()
        .with_error_code(error.code())
        .with_generation_id(-1)
        .with_member_id(StrBytes::from_string(member_id.to_owned()));
    // protocol_name became nullable in v7; before that it is a plain string.
    r.protocol_name = if version >= 7 {
        None
    } else {
        Some(StrBytes::new())
    };
    r
}

pub(crate) fn sync_error(error: ResponseError) -> SyncGroupResponse {
    SyncGroupResponse::default().with_error_code(error.code())
}

/// Sends a response to a waiter that may have gone away (the client
/// disconnected and its request future was dropped): nothing to do then.
fn send<T>(tx: oneshot::Sender<T>, value: T) {
    let _ = tx.send(value);
}

impl Group {
    pub(crate) fn new(id: String, now: Instant) -> Group {
        Group {
            id,
            state: GroupState::Empty,
            generation: 0,
            protocol_type: None,
            protocol_name: None,
            leader: None,
            members: Vec::new(),
            pending: HashMap::new(),
            join_deadline: None,
            initial_delay_remaining: None,
            new_member_added: false,
            sync_deadline: None,
            empty_since: Some(now),
        }
    }

    pub(crate) fn member(&self, id: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }

    pub(crate) fn member_mut(&mut self, id: &str) -> Option<&mut Member> {
        self.members.iter_mut().find(|m| m.id == id)
    }

    pub(crate) fn member_by_instance(&self, instance_id: &str) -> Option<&Member> {
        self.members
            .iter()
            .find(|m| m.instance_id.as_deref() == Some(instance_id))
    }

    pub(crate) fn is_leader(&self, id: &str) -> bool {
        self.leader.as_deref() == Some(id)
    }

    pub(crate) fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    pub(crate) fn is_pending(&self, id: &str) -> bool {
        self.pending.contains_key(id)
    }

    pub(crate) fn add_pending(&mut self, id: String, deadline: Instant) {
        self.pending.insert(id, deadline);
    }

    /// Forgets a pending member id (it joined with it, or left). A join
    /// phase that was only waiting for it may now end.
    pub(crate) fn remove_pending(&mut self, id: &str, now: Instant) -> bool {
        let removed = self.pending.remove(id).is_some();
        if removed {
            self.try_complete_join(now);
        }
        removed
    }

    /// Kafka's `supportsProtocols`: an empty group takes any non-empty
    /// protocol type and list; otherwise the type must match and at least
    /// one offered protocol must be supported by every current member.
    pub(crate) fn supports_protocols(
        &self,
        protocol_type: &str,
        protocols: &[(String, Bytes)],
    ) -> bool {
        if self.members.is_empty() {
            return !protocol_type.is_empty() && !protocols.is_empty();
        }
        self.protocol_type.as_deref() == Some(protocol_type)
            && protocols
                .iter()
                .any(|(name, _)| self.members.iter().all(|m| m.supports(name)))
    }

    /// The largest rebalance timeout among members: how long a join phase
    /// waits for everybody (and a sync phase for every SyncGroup).
    fn rebalance_timeout(&self) -> Duration {
        self.members
            .iter()
            .map(|m| m.rebalance_timeout)
            .max()
            .unwrap_or(Duration::ZERO)
    }

    /// Adds a member whose JoinGroup waits for the join phase, starting a
    /// rebalance if none is in progress.
    pub(crate) fn add_member_and_rebalance(
        &mut self,
        mut member: Member,
        protocol_type: &str,
        waiter: JoinWaiter,
        now: Instant,
        config: &GroupConfig,
    ) {
        // Only a brand-new group keeps extending its initial delay for late
        // joiners; a rebalance of an emptied older group does not.
        if self.state == GroupState::PreparingRebalance && self.generation == 0 {
            self.new_member_added = true;
        }
        if self.members.is_empty() {
            self.protocol_type = Some(protocol_type.to_owned());
        }
        if self.leader.is_none() {
            self.leader = Some(member.id.clone());
        }
        tracing::debug!(group = %self.id, member = %member.id, "member joining");
        member.join_waiter = Some(waiter);
        self.members.push(member);
        if self.state == GroupState::PreparingRebalance {
            self.try_complete_join(now);
        } else {
            self.prepare_rebalance(now, config, "member joined");
        }
    }

    /// A known member rejoins with (possibly new) protocols: it waits for the
    /// join phase, and a rebalance starts if none is in progress.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn update_member_and_rebalance(
        &mut self,
        member_id: &str,
        protocols: Vec<(String, Bytes)>,
        session_timeout: Duration,
        rebalance_timeout: Duration,
        waiter: JoinWaiter,
        now: Instant,
        config: &GroupConfig,
    ) {
        let Some(member) = self.member_mut(member_id) else {
            send(
                waiter.tx,
                join_error(waiter.version, ResponseError::UnknownMemberId, member_id),
            );
            return;
        };
        member.protocols = protocols;
        member.session_timeout = session_timeout;
        member.rebalance_timeout = rebalance_timeout;
        member.touch(now);
        // A second JoinGroup from a member already waiting replaces the
        // first; the client gave up on that one, tell it to retry anyway.
        if let Some(old) = member.join_waiter.replace(waiter) {
            send(
                old.tx,
                join_error(old.version, ResponseError::RebalanceInProgress, member_id),
            );
        }
        if self.state == GroupState::PreparingRebalance {
            self.try_complete_join(now);
        } else {
            self.prepare_rebalance(now, config, "member rejoined");
        }
    }

    /// Does this member's protocol list equal `protocols` (names, order and
    /// metadata)? Then its rejoin changes nothing.
    pub(crate) fn member_matches(&self, member_id: &str, protocols: &[(String, Bytes)]) -> bool {
        self.member(member_id)
            .is_some_and(|m| m.protocols.as_slice() == protocols)
    }

    /// The join response of the current generation for `member_id` (the
    /// leader gets every member's metadata for the chosen protocol).
    pub(crate) fn join_response(&self, member_id: &str) -> JoinGroupResponse {
        let protocol = self.protocol_name.clone().unwrap_or_default();
        let members = if self.is_leader(member_id) {
            self.members
                .iter()
                .map(|m| {
                    JoinGroupResponseMember::default()
                        .with_member_id(str_bytes(&m.id))
                        .with_group_instance_id(m.instance_id.as_deref().map(str_bytes))
                        .with_metadata(m.metadata_for(&protocol))
                })
                .collect()
        } else {
            Vec::new()
        };
        JoinGroupResponse::default()
            .with_generation_id(self.generation)
            .with_protocol_type(self.protocol_type.as_deref().map(str_bytes))
            .with_protocol_name(Some(str_bytes(&protocol)))
            .with_leader(str_bytes(self.leader.as_deref().unwrap_or_default()))
            .with_member_id(str_bytes(member_id))
            .with_members(members)
    }

    /// Starts a join phase (Kafka's `prepareRebalance`): members waiting in
    /// SyncGroup are told to rejoin; an Empty group waits the initial delay,
    /// any other group up to the rebalance timeout for everybody to rejoin.
    pub(crate) fn prepare_rebalance(&mut self, now: Instant, config: &GroupConfig, reason: &str) {
        if self.state == GroupState::CompletingRebalance {
            self.reset_and_propagate_assignment_error(ResponseError::RebalanceInProgress);
        }
        self.sync_deadline = None;
        for m in &mut self.members {
            m.pending_sync = false;
        }
        let rebalance_timeout = self.rebalance_timeout();
        let initial = config.initial_rebalance_delay;
        if self.state == GroupState::Empty && !initial.is_zero() {
            self.join_deadline = Some(now + initial);
            self.initial_delay_remaining = Some(rebalance_timeout.saturating_sub(initial));
        } else {
            self.join_deadline = Some(now + rebalance_timeout);
            self.initial_delay_remaining = None;
        }
        self.new_member_added = false;
        tracing::info!(
            group = %self.id,
            generation = self.generation,
            from = self.state.name(),
            reason,
            "preparing to rebalance group"
        );
        self.state = GroupState::PreparingRebalance;
        self.empty_since = None;
        self.try_complete_join(now);
    }

    /// Starts a rebalance unless one is already in its join phase.
    fn maybe_prepare_rebalance(&mut self, now: Instant, config: &GroupConfig, reason: &str) {
        if self.state != GroupState::PreparingRebalance {
            self.prepare_rebalance(now, config, reason);
        }
    }

    /// Ends the join phase early once every member (and every pending member
    /// id) has rejoined, except during an initial delay.
    fn try_complete_join(&mut self, now: Instant) {
        if self.state == GroupState::PreparingRebalance
            && self.initial_delay_remaining.is_none()
            && self.pending.is_empty()
            && self.members.iter().all(|m| m.join_waiter.is_some())
        {
            self.complete_join(now);
        }
    }

    /// Ends the join phase (Kafka's `onCompleteJoin`): members that did not
    /// rejoin are removed, the generation advances, a protocol is chosen and
    /// every waiting JoinGroup is answered.
    fn complete_join(&mut self, now: Instant) {
        let (joined, gone): (Vec<Member>, Vec<Member>) = std::mem::take(&mut self.members)
            .into_iter()
            .partition(|m| m.join_waiter.is_some());
        self.members = joined;
        for m in gone {
            tracing::info!(group = %self.id, member = %m.id, "removing member that did not rejoin in time");
            self.answer_removed(m, ResponseError::UnknownMemberId);
        }
        if !self
            .leader
            .as_deref()
            .is_some_and(|l| self.members.iter().any(|m| m.id == l))
        {
            self.leader = self.members.first().map(|m| m.id.clone());
        }
        self.generation = self.generation.checked_add(1).unwrap_or(1);
        self.join_deadline = None;
        self.initial_delay_remaining = None;
        self.new_member_added = false;
        if self.members.is_empty() {
            self.state = GroupState::Empty;
            self.protocol_name = None;
            self.leader = None;
            self.sync_deadline = None;
            self.empty_since = Some(now);
            tracing::info!(group = %self.id, generation = self.generation, "group is empty");
            return;
        }
        self.protocol_name = self.select_protocol();
        self.state = GroupState::CompletingRebalance;
        self.sync_deadline = Some(now + self.rebalance_timeout());
        let responses: Vec<(usize, JoinGroupResponse)> = self
            .members
            .iter()
            .enumerate()
            .filter_map(|(i, m)| {
                m.join_waiter
                    .as_ref()
                    .map(|_| (i, self.join_response(&m.id)))
            })
            .collect();
        for (i, response) in responses {
            let m = &mut self.members[i];
            m.touch(now);
            m.pending_sync = true;
            if let Some(w) = m.join_waiter.take() {
                send(w.tx, response);
            }
        }
        tracing::info!(
            group = %self.id,
            generation = self.generation,
            members = self.members.len(),
            leader = self.leader.as_deref().unwrap_or_default(),
            protocol = self.protocol_name.as_deref().unwrap_or_default(),
            "join phase complete"
        );
    }

    /// Kafka's vote: among the protocols every member supports, each member
    /// votes for the first in its own preference order; most votes wins
    /// (ties go to the first member's preference).
    fn select_protocol(&self) -> Option<String> {
        let first = self.members.first()?;
        let candidates: Vec<&str> = first
            .protocols
            .iter()
            .map(|(name, _)| name.as_str())
            .filter(|name| self.members.iter().all(|m| m.supports(name)))
            .collect();
        let mut best: Option<(&str, usize)> = None;
        for candidate in &candidates {
            let votes = self
                .members
                .iter()
                .filter(|m| {
                    m.protocols
                        .iter()
                        .find(|(name, _)| candidates.contains(&name.as_str()))
                        .is_some_and(|(name, _)| name == candidate)
                })
                .count();
            if best.is_none_or(|(_, most)| votes > most) {
                best = Some((candidate, votes));
            }
        }
        match best {
            Some((name, _)) => Some(name.to_owned()),
            None => {
                // Joins are only admitted while a common protocol exists, so
                // this is a bug; the leader's favourite keeps the group going.
                tracing::warn!(group = %self.id, "no protocol common to all members");
                first.protocols.first().map(|(name, _)| name.clone())
            }
        }
    }

    /// Answers whatever a removed member still has waiting.
    fn answer_removed(&self, mut member: Member, error: ResponseError) {
        if let Some(w) = member.join_waiter.take() {
            send(w.tx, join_error(w.version, error, &member.id));
        }
        if let Some(tx) = member.sync_waiter.take() {
            send(tx, sync_error(error));
        }
    }

    /// Removes a member (answering its waiting requests with `error`) and
    /// moves the group on: a rebalance for the rest, or, mid join phase, a
    /// check whether everybody left has now rejoined.
    pub(crate) fn remove_member_and_update_group(
        &mut self,
        member_id: &str,
        error: ResponseError,
        now: Instant,
        config: &GroupConfig,
        reason: &str,
    ) -> bool {
        let Some(idx) = self.members.iter().position(|m| m.id == member_id) else {
            return false;
        };
        let member = self.members.remove(idx);
        tracing::info!(group = %self.id, member = %member.id, reason, "removing member");
        self.answer_removed(member, error);
        if self.is_leader(member_id) {
            self.leader = self.members.first().map(|m| m.id.clone());
        }
        match self.state {
            GroupState::Stable | GroupState::CompletingRebalance => {
                self.maybe_prepare_rebalance(now, config, reason)
            }
            GroupState::PreparingRebalance => self.try_complete_join(now),
            GroupState::Empty => {}
        }
        true
    }

    /// SyncGroup from a current member while CompletingRebalance: it waits
    /// for the leader's assignment; the leader's own SyncGroup distributes it
    /// and makes the group Stable.
    pub(crate) fn sync_completing(
        &mut self,
        member_id: &str,
        assignments: Vec<(String, Bytes)>,
        tx: oneshot::Sender<SyncGroupResponse>,
        now: Instant,
    ) {
        let Some(member) = self.member_mut(member_id) else {
            send(tx, sync_error(ResponseError::UnknownMemberId));
            return;
        };
        member.pending_sync = false;
        member.touch(now);
        if let Some(old) = member.sync_waiter.replace(tx) {
            send(old, sync_error(ResponseError::RebalanceInProgress));
        }
        if !self.members.iter().any(|m| m.pending_sync) {
            self.sync_deadline = None;
        }
        if !self.is_leader(member_id) {
            return;
        }
        // Members the leader left out get an empty assignment, as in Kafka.
        let mut by_member: HashMap<String, Bytes> = assignments.into_iter().collect();
        for m in &mut self.members {
            m.assignment = by_member.remove(&m.id).unwrap_or_default();
        }
        self.state = GroupState::Stable;
        tracing::info!(group = %self.id, generation = self.generation, "group is stable");
        let response = |m: &Member, g: &Group| {
            SyncGroupResponse::default()
                .with_protocol_type(g.protocol_type.as_deref().map(str_bytes))
                .with_protocol_name(g.protocol_name.as_deref().map(str_bytes))
                .with_assignment(m.assignment.clone())
        };
        let responses: Vec<(usize, SyncGroupResponse)> = self
            .members
            .iter()
            .enumerate()
            .filter(|(_, m)| m.sync_waiter.is_some())
            .map(|(i, m)| (i, response(m, self)))
            .collect();
        for (i, r) in responses {
            let m = &mut self.members[i];
            m.touch(now);
            if let Some(tx) = m.sync_waiter.take() {
                send(tx, r);
            }
        }
    }

    /// SyncGroup from a current member of a Stable group (a retry): its
    /// assignment, straight away.
    pub(crate) fn sync_stable(&mut self, member_id: &str, now: Instant) -> SyncGroupResponse {
        let protocol_type = self.protocol_type.as_deref().map(str_bytes);
        let protocol_name = self.protocol_name.as_deref().map(str_bytes);
        let Some(member) = self.member_mut(member_id) else {
            return sync_error(ResponseError::UnknownMemberId);
        };
        member.pending_sync = false;
        member.touch(now);
        let assignment = member.assignment.clone();
        if !self.members.iter().any(|m| m.pending_sync) {
            self.sync_deadline = None;
        }
        SyncGroupResponse::default()
            .with_protocol_type(protocol_type)
            .with_protocol_name(protocol_name)
            .with_assignment(assignment)
    }

    /// Clears assignments and answers members waiting in SyncGroup with
    /// `error` (a new rebalance superseded the one they were syncing).
    fn reset_and_propagate_assignment_error(&mut self, error: ResponseError) {
        for m in &mut self.members {
            m.assignment = Bytes::new();
            if let Some(tx) = m.sync_waiter.take() {
                send(tx, sync_error(error));
            }
        }
    }

    /// Answers every waiting request with `error` (the coordinator is
    /// shutting down).
    pub(crate) fn fail_all_waiters(&mut self, error: ResponseError) {
        for m in &mut self.members {
            if let Some(w) = m.join_waiter.take() {
                send(w.tx, join_error(w.version, error, &m.id));
            }
            if let Some(tx) = m.sync_waiter.take() {
                send(tx, sync_error(error));
            }
        }
    }

    /// Applies every deadline that has passed at `now`; returns the next
    /// deadline, if any.
    pub(crate) fn expire(&mut self, now: Instant, config: &GroupConfig) -> Option<Instant> {
        // Member ids handed out with MEMBER_ID_REQUIRED that were never used.
        let pending_before = self.pending.len();
        self.pending.retain(|_, deadline| *deadline > now);
        if self.pending.len() != pending_before {
            tracing::debug!(group = %self.id, expired = pending_before - self.pending.len(), "pending member ids expired");
            self.try_complete_join(now);
        }

        // Members that went silent. Members waiting in a join or sync are
        // bounded by the join and sync deadlines instead.
        let silent: Vec<String> = self
            .members
            .iter()
            .filter(|m| {
                m.join_waiter.is_none() && m.sync_waiter.is_none() && m.session_deadline <= now
            })
            .map(|m| m.id.clone())
            .collect();
        self.remove_members(silent, now, config, "session timed out");

        if self.state == GroupState::PreparingRebalance
            && self.join_deadline.is_some_and(|d| d <= now)
        {
            match self.initial_delay_remaining {
                Some(remaining) if self.new_member_added && !remaining.is_zero() => {
                    // More members arrived during the delay: wait once more
                    // for stragglers, within the rebalance timeout.
                    let delay = config.initial_rebalance_delay.min(remaining);
                    self.new_member_added = false;
                    self.initial_delay_remaining = Some(remaining - delay);
                    self.join_deadline = Some(now + delay);
                }
                _ => self.complete_join(now),
            }
        }

        if matches!(
            self.state,
            GroupState::CompletingRebalance | GroupState::Stable
        ) && self.sync_deadline.is_some_and(|d| d <= now)
        {
            self.sync_deadline = None;
            let laggards: Vec<String> = self
                .members
                .iter()
                .filter(|m| m.pending_sync)
                .map(|m| m.id.clone())
                .collect();
            self.remove_members(
                laggards,
                now,
                config,
                "did not send SyncGroup within the rebalance timeout",
            );
        }

        self.next_deadline()
    }

    /// Removes members the coordinator gave up on; their waiting requests
    /// are answered UNKNOWN_MEMBER_ID.
    fn remove_members(
        &mut self,
        ids: Vec<String>,
        now: Instant,
        config: &GroupConfig,
        reason: &str,
    ) {
        for id in ids {
            self.remove_member_and_update_group(
                &id,
                ResponseError::UnknownMemberId,
                now,
                config,
                reason,
            );
        }
    }

    fn next_deadline(&self) -> Option<Instant> {
        let sessions = self
            .members
            .iter()
            .filter(|m| m.join_waiter.is_none() && m.sync_waiter.is_none())
            .map(|m| m.session_deadline);
        let join = if self.state == GroupState::PreparingRebalance {
            self.join_deadline
        } else {
            None
        };
        sessions
            .chain(self.pending.values().copied())
            .chain(join)
            .chain(self.sync_deadline)
            .min()
    }
}
