//! The coordinator's clock: aborts transactions open longer than their
//! `transaction.timeout.ms` (fencing their producer with a bumped epoch, as
//! Kafka does), retries endings a failed marker write left prepared, and
//! forgets ids idle longer than `transactional.id.expiration.ms`.

use std::sync::Arc;

use tokio::sync::watch;

use super::TxnCoordinator;
use super::meta::TxnState;
use crate::blocking::run_blocking;
use sluice_log::common::{mutex, now_ms};

impl TxnCoordinator {
    /// Runs until shutdown.
    pub async fn run_timers(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(self.config.check_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = shutdown.wait_for(|stop| *stop) => return,
            }
            let this = self.clone();
            // A failed pass is retried at the next tick.
            let _ = run_blocking("transaction timeouts", move || {
                this.check_timeouts(now_ms())
            })
            .await;
        }
    }

    /// One pass over every id; returns how many transactions it aborted.
    pub(crate) fn check_timeouts(&self, now: i64) -> usize {
        let expiry = self.config.id_expiration.as_millis() as i64;
        let mut aborted = 0;
        for shared in self.all() {
            let mut meta = mutex(&shared);
            let id = meta.transactional_id.clone();
            let state = meta.state;
            match state {
                TxnState::Ongoing if now - meta.start_ms > i64::from(meta.timeout_ms) => {
                    tracing::info!(
                        transactional_id = %id,
                        producer_id = meta.producer_id,
                        timeout_ms = meta.timeout_ms,
                        "aborting a transaction that exceeded its timeout"
                    );
                    let ended = self
                        .prepare(&mut meta, TxnState::PrepareAbort, true)
                        .and_then(|()| self.complete(&mut meta));
                    match ended {
                        Ok(()) => aborted += 1,
                        Err(e) => {
                            tracing::warn!(transactional_id = %id, error = ?e, "timed-out transaction not aborted yet; retrying")
                        }
                    }
                }
                TxnState::PrepareCommit | TxnState::PrepareAbort => {
                    if let Err(e) = self.complete(&mut meta) {
                        tracing::warn!(transactional_id = %id, error = ?e, "transaction still not ended; retrying");
                    }
                }
                TxnState::Empty | TxnState::CompleteCommit | TxnState::CompleteAbort
                    if now - meta.update_ms > expiry && self.forget(&mut meta).is_ok() =>
                {
                    tracing::info!(transactional_id = %id, "forgot an idle transactional id");
                }
                _ => {}
            }
        }
        aborted
    }
}
