//! InitProducerId: hands out a fresh producer id (epoch 0) for idempotent
//! producers. Transactional ids are refused (transactions are not
//! implemented); an id is never handed out twice, even across restarts
//! ([`crate::producers::ProducerIds`] reserves them durably).

use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};

use crate::blocking::run_blocking;
use crate::producers::ProducerIds;

fn refused(error: ResponseError) -> InitProducerIdResponse {
    InitProducerIdResponse::default()
        .with_error_code(error.code())
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1)
}

pub(crate) async fn init_producer_id(
    ids: &Arc<ProducerIds>,
    req: InitProducerIdRequest,
    _version: i16,
) -> InitProducerIdResponse {
    if let Some(id) = &req.transactional_id {
        // Kafka: an empty transactional id is not a valid one.
        if id.0.is_empty() {
            return refused(ResponseError::InvalidRequest);
        }
        tracing::warn!(
            "refused InitProducerId for transactional id {:?}: transactions are not supported yet",
            id.as_str()
        );
        return refused(ResponseError::TransactionalIdAuthorizationFailed);
    }
    let ids = ids.clone();
    // A fresh id (epoch 0) also answers a KIP-360 epoch-bump request: the
    // client then starts new sequences, which the partitions accept.
    match run_blocking("producer id", move || ids.allocate()).await {
        Ok(Ok(id)) => InitProducerIdResponse::default()
            .with_producer_id(ProducerId(id))
            .with_producer_epoch(0),
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
