//! InitProducerId with a transactional id: the durable id → producer id
//! mapping. Each call bumps the epoch, which fences every older producer
//! with the same id; a transaction the old producer left open is aborted
//! first, one left prepared is finished first.

use std::sync::{Arc, Mutex};

use kafka_protocol::error::ResponseError;

use super::meta::{TxnMeta, TxnState};
use super::{FORGOTTEN, TxnCoordinator, fenced_code};
use sluice_log::common::{mutex, now_ms};

impl TxnCoordinator {
    /// Returns the producer id and epoch for `id`. `current` is the id and
    /// epoch a KIP-360 client already holds (v3+), if any. Blocking.
    pub fn init_producer_id(
        &self,
        id: &str,
        timeout_ms: i32,
        current: Option<(i64, i16)>,
        version: i16,
    ) -> Result<(i64, i16), ResponseError> {
        if self.is_closed() {
            return Err(ResponseError::CoordinatorNotAvailable);
        }
        let max = self.config.max_timeout.as_millis().min(i32::MAX as u128) as i32;
        if timeout_ms <= 0 || timeout_ms > max {
            tracing::debug!(
                transactional_id = id,
                timeout_ms,
                max,
                "refused transaction timeout"
            );
            return Err(ResponseError::InvalidTransactionTimeout);
        }
        let shared = match self.get(id) {
            Some(s) => s,
            None => return self.register(id, timeout_ms, current),
        };
        let mut meta = mutex(&shared);
        if meta.producer_id == FORGOTTEN {
            drop(meta);
            return self.register(id, timeout_ms, current);
        }
        if let Some((producer_id, epoch)) = current
            && (producer_id != meta.producer_id || epoch != meta.epoch)
        {
            return Err(fenced_code(version, 4));
        }
        match meta.state {
            TxnState::Ongoing => {
                // The new producer fences the old one; its transaction goes.
                self.prepare(&mut meta, TxnState::PrepareAbort, true)?;
                self.complete(&mut meta)?;
            }
            TxnState::PrepareCommit | TxnState::PrepareAbort => self.complete(&mut meta)?,
            _ => {}
        }
        let mut next = meta.clone();
        if next.epoch >= i16::MAX - 1 {
            // Epochs are exhausted: a fresh producer id starts at 0 (Kafka).
            next.producer_id = self.allocate_id()?;
            next.epoch = 0;
        } else {
            next.epoch += 1;
        }
        next.timeout_ms = timeout_ms;
        next.state = TxnState::Empty;
        next.update_ms = now_ms();
        self.persist(&next)?;
        *meta = next;
        Ok((meta.producer_id, meta.epoch))
    }

    /// A transactional id seen for the first time: a new producer id, epoch 0.
    fn register(
        &self,
        id: &str,
        timeout_ms: i32,
        current: Option<(i64, i16)>,
    ) -> Result<(i64, i16), ResponseError> {
        if current.is_some() {
            // A KIP-360 client claims a producer id this id never had.
            return Err(ResponseError::InvalidProducerIdMapping);
        }
        // The map stays locked across the write so two first calls for one
        // id cannot both register it.
        let mut txns = mutex(&self.txns);
        if txns.contains_key(id) {
            drop(txns);
            return self.init_producer_id(id, timeout_ms, None, 4);
        }
        let meta = TxnMeta::new(id.to_owned(), self.allocate_id()?, timeout_ms, now_ms());
        self.persist(&meta)?;
        let answer = (meta.producer_id, meta.epoch);
        txns.insert(id.to_owned(), Arc::new(Mutex::new(meta)));
        Ok(answer)
    }

    fn allocate_id(&self) -> Result<i64, ResponseError> {
        self.producer_ids.allocate().map_err(|e| {
            tracing::error!("{e}");
            ResponseError::CoordinatorNotAvailable
        })
    }
}
