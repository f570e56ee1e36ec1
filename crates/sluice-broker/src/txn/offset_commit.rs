//! TxnOffsetCommit: a consume-transform-produce loop's input offsets,
//! committed inside its transaction. They are kept with the transaction
//! (durably) and reach the group's committed offsets only when the
//! transaction commits; an abort drops them. The committing member is
//! checked against the group as an OffsetCommit's would be (KIP-447: a
//! zombie of an older generation cannot commit).

use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::{TxnOffsetCommitRequest, TxnOffsetCommitResponse};

use super::meta::{PendingOffset, TxnMeta, TxnState};
use super::{Claim, TxnCoordinator, fenced_code};
use crate::blocking::run_blocking;
use crate::groups::MAX_METADATA_BYTES;
use sluice_log::common::now_ms;

impl TxnCoordinator {
    pub async fn txn_offset_commit(
        self: &Arc<Self>,
        req: TxnOffsetCommitRequest,
        version: i16,
    ) -> TxnOffsetCommitResponse {
        let this = self.clone();
        let answers = run_blocking("transactional offset commit", move || {
            let answers = this.txn_offset_commit_blocking(&req, version);
            (req, answers)
        })
        .await;
        let (req, answers) = match answers {
            Ok(a) => a,
            Err(e) => {
                tracing::error!("{e}");
                return TxnOffsetCommitResponse::default();
            }
        };
        let topics = req
            .topics
            .iter()
            .zip(answers)
            .map(|(t, codes)| {
                TxnOffsetCommitResponseTopic::default()
                    .with_name(t.name.clone())
                    .with_partitions(
                        t.partitions
                            .iter()
                            .zip(codes)
                            .map(|(p, code)| {
                                TxnOffsetCommitResponsePartition::default()
                                    .with_partition_index(p.partition_index)
                                    .with_error_code(code)
                            })
                            .collect(),
                    )
            })
            .collect();
        TxnOffsetCommitResponse::default().with_topics(topics)
    }

    /// One error code per requested partition, in request order.
    pub(super) fn txn_offset_commit_blocking(
        &self,
        req: &TxnOffsetCommitRequest,
        version: i16,
    ) -> Vec<Vec<i16>> {
        let mut codes: Vec<Vec<i16>> = req
            .topics
            .iter()
            .map(|t| {
                t.partitions
                    .iter()
                    .map(|p| {
                        if self
                            .topics
                            .store
                            .partition(t.name.0.as_str(), p.partition_index)
                            .is_err()
                        {
                            ResponseError::UnknownTopicOrPartition.code()
                        } else if p.committed_metadata.as_ref().map_or(0, |m| m.len())
                            > MAX_METADATA_BYTES
                        {
                            ResponseError::OffsetMetadataTooLarge.code()
                        } else {
                            0
                        }
                    })
                    .collect()
            })
            .collect();
        if let Err(e) = self.store_pending(req, &codes, version) {
            for code in codes.iter_mut().flatten() {
                if *code == 0 {
                    *code = e.code();
                }
            }
        }
        codes
    }

    fn store_pending(
        &self,
        req: &TxnOffsetCommitRequest,
        codes: &[Vec<i16>],
        version: i16,
    ) -> Result<(), ResponseError> {
        let group = req.group_id.0.to_string();
        let claim = Claim {
            id: req.transactional_id.0.as_str(),
            producer_id: req.producer_id.0,
            epoch: req.producer_epoch,
            fenced: fenced_code(version, 2),
        };
        self.with_producer(claim, |meta| {
            self.add_pending(meta, req, codes, group, version)
        })
    }

    fn add_pending(
        &self,
        meta: &mut TxnMeta,
        req: &TxnOffsetCommitRequest,
        codes: &[Vec<i16>],
        group: String,
        version: i16,
    ) -> Result<(), ResponseError> {
        // Offsets only ride on an open transaction that added this group.
        if meta.state != TxnState::Ongoing || !meta.groups.contains_key(&group) {
            return Err(ResponseError::InvalidTxnState);
        }
        if version >= 3
            && let Some(e) = self.groups.validate_commit(
                &group,
                req.generation_id,
                req.member_id.as_str(),
                req.group_instance_id.as_ref().map(|s| s.as_str()),
                true,
            )
        {
            return Err(e);
        }
        let mut next = meta.clone();
        let pending = next.groups.entry(group).or_default();
        for (t, topic_codes) in req.topics.iter().zip(codes) {
            for (p, code) in t.partitions.iter().zip(topic_codes) {
                if *code != 0 {
                    continue;
                }
                pending.insert(
                    (t.name.0.to_string(), p.partition_index),
                    PendingOffset {
                        offset: p.committed_offset,
                        leader_epoch: p.committed_leader_epoch,
                        metadata: p
                            .committed_metadata
                            .as_ref()
                            .map(|m| m.to_string())
                            .unwrap_or_default(),
                    },
                );
            }
        }
        next.update_ms = now_ms();
        self.persist(&next)?;
        *meta = next;
        Ok(())
    }
}
