//! InitProducerId: a fresh producer id (epoch 0) for an idempotent
//! producer, or, for a transactional id, the transaction coordinator's
//! durable mapping with a bumped epoch. An id is never handed out twice,
//! even across restarts ([`crate::producers::ProducerIds`] reserves them
//! durably).

use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};

use crate::blocking::run_blocking;
use crate::producers::ProducerIds;
use crate::txn::TxnCoordinator;

fn refused(error: ResponseError) -> InitProducerIdResponse {
    InitProducerIdResponse::default()
        .with_error_code(error.code())
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1)
}

fn granted((id, epoch): (i64, i16)) -> InitProducerIdResponse {
    InitProducerIdResponse::default()
        .with_producer_id(ProducerId(id))
        .with_producer_epoch(epoch)
}

pub(crate) async fn init_producer_id(
    ids: &Arc<ProducerIds>,
    txns: &Arc<TxnCoordinator>,
    req: InitProducerIdRequest,
    version: i16,
) -> InitProducerIdResponse {
    if let Some(id) = &req.transactional_id {
        // Kafka: an empty transactional id is not a valid one.
        if id.0.is_empty() {
            return refused(ResponseError::InvalidRequest);
        }
        let (txns, id) = (txns.clone(), id.0.to_string());
        let current = (version >= 3 && req.producer_id.0 >= 0)
            .then_some((req.producer_id.0, req.producer_epoch));
        let timeout = req.transaction_timeout_ms;
        return match run_blocking("transactional producer id", move || {
            txns.init_producer_id(&id, timeout, current, version)
        })
        .await
        {
            Ok(Ok(answer)) => granted(answer),
            Ok(Err(code)) => refused(code),
            Err(e) => {
                tracing::error!("{e}");
                refused(ResponseError::UnknownServerError)
            }
        };
    }
    let ids = ids.clone();
    // A fresh id (epoch 0) also answers a KIP-360 epoch-bump request: the
    // client then starts new sequences, which the partitions accept.
    match run_blocking("producer id", move || ids.allocate()).await {
        Ok(Ok(id)) => granted((id, 0)),
        Ok(Err(e)) => {
            tracing::error!("{e}");
            refused(ResponseError::KafkaStorageError)
        }
        Err(e) => {
            tracing::error!("{e}");
            refused(ResponseError::UnknownServerError)
        }
    }
}
