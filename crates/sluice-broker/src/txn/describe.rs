//! DescribeTransactions and ListTransactions: what admin tools
//! (`kafka-transactions.sh`, AdminClient) show of the coordinator's state.
//! Read-only.

use std::collections::BTreeMap;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_transactions_response::{TopicData, TransactionState};
use kafka_protocol::messages::list_transactions_response::TransactionState as ListedTransaction;
use kafka_protocol::messages::{
    DescribeTransactionsRequest, DescribeTransactionsResponse, ListTransactionsRequest,
    ListTransactionsResponse, ProducerId, TransactionalId,
};
use kafka_protocol::protocol::StrBytes;

use super::TxnCoordinator;
use super::meta::TxnState;
use crate::wire::{str_bytes, topic_name};
use sluice_log::common::{mutex, now_ms};

impl TxnCoordinator {
    pub fn describe_transactions(
        &self,
        req: DescribeTransactionsRequest,
        _version: i16,
    ) -> DescribeTransactionsResponse {
        let states = req
            .transactional_ids
            .into_iter()
            .map(|id| {
                let Some(shared) = self.get(id.0.as_str()) else {
                    return TransactionState::default()
                        .with_transactional_id(id)
                        .with_error_code(ResponseError::TransactionalIdNotFound.code())
                        .with_transaction_state(StrBytes::from_static_str(""))
                        .with_producer_id(ProducerId(-1))
                        .with_producer_epoch(-1)
                        .with_transaction_start_time_ms(-1);
                };
                let meta = mutex(&shared);
                let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
                for (t, p) in &meta.partitions {
                    by_topic.entry(t).or_default().push(*p);
                }
                TransactionState::default()
                    .with_transactional_id(id)
                    .with_transaction_state(StrBytes::from_static_str(meta.state.name()))
                    .with_transaction_timeout_ms(meta.timeout_ms)
                    .with_transaction_start_time_ms(meta.start_ms)
                    .with_producer_id(ProducerId(meta.producer_id))
                    .with_producer_epoch(meta.epoch)
                    .with_topics(
                        by_topic
                            .into_iter()
                            .map(|(t, partitions)| {
                                TopicData::default()
                                    .with_topic(topic_name(t))
                                    .with_partitions(partitions)
                            })
                            .collect(),
                    )
            })
            .collect();
        DescribeTransactionsResponse::default().with_transaction_states(states)
    }

    pub fn list_transactions(
        &self,
        req: ListTransactionsRequest,
        version: i16,
    ) -> ListTransactionsResponse {
        let mut unknown = Vec::new();
        let mut states = Vec::new();
        for name in &req.state_filters {
            match TxnState::from_name(name.as_str()) {
                Some(s) => states.push(s),
                None => unknown.push(name.clone()),
            }
        }
        // v1 (KIP-994): only transactions open longer than this.
        let min_duration = if version >= 1 {
            req.duration_filter
        } else {
            -1
        };
        let now = now_ms();
        let mut listed: Vec<ListedTransaction> = self
            .all()
            .into_iter()
            .filter_map(|shared| {
                let meta = mutex(&shared);
                let keep = (states.is_empty() || states.contains(&meta.state))
                    && (req.producer_id_filters.is_empty()
                        || req
                            .producer_id_filters
                            .contains(&ProducerId(meta.producer_id)))
                    && (min_duration < 0
                        || (meta.start_ms >= 0 && now - meta.start_ms >= min_duration));
                keep.then(|| {
                    ListedTransaction::default()
                        .with_transactional_id(TransactionalId(str_bytes(
                            meta.transactional_id.clone(),
                        )))
                        .with_producer_id(ProducerId(meta.producer_id))
                        .with_transaction_state(StrBytes::from_static_str(meta.state.name()))
                })
            })
            .collect();
        listed.sort_by(|a, b| a.transactional_id.0.cmp(&b.transactional_id.0));
        ListTransactionsResponse::default()
            .with_unknown_state_filters(unknown)
            .with_transaction_states(listed)
    }
}
