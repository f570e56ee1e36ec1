//! OffsetCommit: validates the committing member (Kafka's
//! `validateOffsetCommit`) and stores the offsets durably before answering.
//! Never decides by itself whether a partition exists (the caller says so),
//! and never holds the group lock while fsyncing.

use std::time::Instant;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::{OffsetCommitRequest, OffsetCommitResponse};

use sluice_log::common::{mutex, now_ms};

use super::group::{Group, GroupState};
use super::offsets::{CommittedOffset, OffsetEntry};
use super::{GroupCoordinator, GroupError, check_member};

/// `offset.metadata.max.bytes`: longer commit metadata is refused.
pub(crate) const MAX_METADATA_BYTES: usize = 4096;

/// One answer per requested partition, in request order (topic, then
/// partition); `None` means "stored" (or, before storing, "store it").
type Answers = Vec<Vec<Option<ResponseError>>>;

impl GroupCoordinator {
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
        let mut answers: Answers = req
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
            false,
        );
        let (entries, stored) = entries_to_store(&req, &mut answers, group_error);
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
        commit_response(&req, answers)
    }

    /// Kafka's `validateOffsetCommit` and the state check after it: an error
    /// for every partition of the request, or `None` to store them. The
    /// transaction coordinator asks the same of a TxnOffsetCommit (KIP-447).
    pub(crate) fn validate_commit(
        &self,
        group_id: &str,
        generation: i32,
        member_id: &str,
        instance_id: Option<&str>,
        transactional: bool,
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
            // Once a group has members, only members may commit — except
            // through a transaction: TxnOffsetCommit before v3 (and
            // producers that fence by transactional id rather than by
            // generation, Kafka Streams' first exactly-once mode) carry no
            // member, and Kafka accepts them.
            if !transactional {
                return Some(ResponseError::UnknownMemberId);
            }
            return None;
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
}

impl GroupCoordinator {
    /// Stores offsets a committed transaction carried, as
    /// `(topic, partition, offset, leader epoch, metadata)`; the transaction
    /// coordinator validated them when they were sent. Durable on return.
    pub(crate) fn commit_offsets(
        &self,
        group: &str,
        offsets: Vec<(String, i32, i64, i32, String)>,
    ) -> Result<(), GroupError> {
        let commit_timestamp_ms = now_ms();
        let entries = offsets
            .into_iter()
            .map(
                |(topic, partition, offset, leader_epoch, metadata)| OffsetEntry {
                    topic,
                    partition,
                    committed: CommittedOffset {
                        offset,
                        leader_epoch,
                        metadata,
                        commit_timestamp_ms,
                    },
                },
            )
            .collect();
        self.offsets.commit(group, entries)
    }
}

/// The offsets to store, and where each one's answer is in `answers`;
/// partitions refused (group error, metadata too large) get their answer.
fn entries_to_store(
    req: &OffsetCommitRequest,
    answers: &mut Answers,
    group_error: Option<ResponseError>,
) -> (Vec<OffsetEntry>, Vec<(usize, usize)>) {
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
    (entries, stored)
}

fn commit_response(req: &OffsetCommitRequest, answers: Answers) -> OffsetCommitResponse {
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
