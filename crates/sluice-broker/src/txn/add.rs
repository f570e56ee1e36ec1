//! AddPartitionsToTxn and AddOffsetsToTxn: what an open transaction writes
//! to. Registration is durable before it is acknowledged, so after a crash
//! the coordinator still knows every partition that needs a marker. Adding
//! opens the transaction (Ongoing) and starts its timeout clock.

use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::{
    AddOffsetsToTxnRequest, AddOffsetsToTxnResponse, AddPartitionsToTxnRequest,
    AddPartitionsToTxnResponse,
};

use super::meta::{TxnMeta, TxnState};
use super::{Claim, TxnCoordinator, fenced_code};
use crate::blocking::run_blocking;
use sluice_log::common::now_ms;

impl TxnCoordinator {
    pub async fn add_partitions(
        self: &Arc<Self>,
        req: AddPartitionsToTxnRequest,
        version: i16,
    ) -> AddPartitionsToTxnResponse {
        let this = self.clone();
        let answers = run_blocking("add partitions to transaction", move || {
            this.add_partitions_blocking(&req, version)
        })
        .await
        .unwrap_or_else(|e| {
            tracing::error!("{e}");
            Vec::new()
        });
        AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(answers)
    }

    fn add_partitions_blocking(
        &self,
        req: &AddPartitionsToTxnRequest,
        version: i16,
    ) -> Vec<AddPartitionsToTxnTopicResult> {
        let wanted: Vec<(String, i32)> = req
            .v3_and_below_topics
            .iter()
            .flat_map(|t| t.partitions.iter().map(|p| (t.name.0.to_string(), *p)))
            .collect();
        // Kafka refuses the whole request when one partition is unknown:
        // that one gets UNKNOWN_TOPIC_OR_PARTITION, the others
        // OPERATION_NOT_ATTEMPTED.
        let unknown: Vec<bool> = wanted
            .iter()
            .map(|(t, p)| self.topics.store.partition(t, *p).is_err())
            .collect();
        let outcome = if unknown.iter().any(|u| *u) {
            Err(ResponseError::OperationNotAttempted)
        } else {
            self.register_partitions(req, &wanted, version)
        };
        let mut unknown = unknown.into_iter();
        req.v3_and_below_topics
            .iter()
            .map(|t| {
                let results = t
                    .partitions
                    .iter()
                    .map(|p| {
                        let code = match (&outcome, unknown.next().unwrap_or(false)) {
                            (_, true) => ResponseError::UnknownTopicOrPartition.code(),
                            (Ok(()), false) => 0,
                            (Err(e), false) => e.code(),
                        };
                        AddPartitionsToTxnPartitionResult::default()
                            .with_partition_index(*p)
                            .with_partition_error_code(code)
                    })
                    .collect();
                AddPartitionsToTxnTopicResult::default()
                    .with_name(t.name.clone())
                    .with_results_by_partition(results)
            })
            .collect()
    }

    fn register_partitions(
        &self,
        req: &AddPartitionsToTxnRequest,
        wanted: &[(String, i32)],
        version: i16,
    ) -> Result<(), ResponseError> {
        self.add_to_transaction(
            req.v3_and_below_transactional_id.0.as_str(),
            req.v3_and_below_producer_id.0,
            req.v3_and_below_producer_epoch,
            fenced_code(version, 2),
            |next| {
                let before = next.partitions.len();
                next.partitions.extend(wanted.iter().cloned());
                next.partitions.len() != before
            },
        )
    }

    pub async fn add_offsets(
        self: &Arc<Self>,
        req: AddOffsetsToTxnRequest,
        version: i16,
    ) -> AddOffsetsToTxnResponse {
        let this = self.clone();
        let code = run_blocking("add offsets to transaction", move || {
            if req.group_id.0.is_empty() {
                return Err(ResponseError::InvalidGroupId);
            }
            let group = req.group_id.0.to_string();
            this.add_to_transaction(
                req.transactional_id.0.as_str(),
                req.producer_id.0,
                req.producer_epoch,
                fenced_code(version, 2),
                |next| {
                    if next.groups.contains_key(&group) {
                        return false;
                    }
                    next.groups.insert(group, Default::default());
                    true
                },
            )
        })
        .await
        .unwrap_or_else(|e| {
            tracing::error!("{e}");
            Err(ResponseError::UnknownServerError)
        });
        AddOffsetsToTxnResponse::default().with_error_code(code.err().map_or(0, |e| e.code()))
    }

    /// Checks the producer, applies `add` to the open (or newly opened)
    /// transaction and makes it durable; `add` says whether it changed
    /// anything (a retried add writes nothing).
    pub(super) fn add_to_transaction(
        &self,
        id: &str,
        producer_id: i64,
        epoch: i16,
        fenced: ResponseError,
        add: impl FnOnce(&mut TxnMeta) -> bool,
    ) -> Result<(), ResponseError> {
        let claim = Claim {
            id,
            producer_id,
            epoch,
            fenced,
        };
        self.with_producer(claim, |meta| self.open_with(meta, add))
    }

    /// Opens the transaction if need be and applies `add` durably.
    fn open_with(
        &self,
        meta: &mut TxnMeta,
        add: impl FnOnce(&mut TxnMeta) -> bool,
    ) -> Result<(), ResponseError> {
        if meta.state.is_prepared() {
            // The previous transaction is still being ended.
            return Err(ResponseError::ConcurrentTransactions);
        }
        let mut next = meta.clone();
        let opens = next.state != TxnState::Ongoing;
        if opens {
            next.state = TxnState::Ongoing;
            next.start_ms = now_ms();
            next.partitions.clear();
            next.groups.clear();
        }
        if !add(&mut next) && !opens {
            return Ok(());
        }
        next.update_ms = now_ms();
        self.persist(&next)?;
        *meta = next;
        Ok(())
    }
}
