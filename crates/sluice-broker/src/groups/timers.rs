//! The coordinator's deadlines: session timeouts, rebalance timeouts, the
//! initial rebalance delay, pending member ids, and forgetting idle groups.
//! One background task drives them all; it holds the group lock only for a
//! pass over the groups, never across a sleep.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use sluice_log::common::mutex;

use super::GroupCoordinator;
use super::group::GroupState;

/// An Empty group with no committed offsets is forgotten after this long
/// (Kafka drops such groups in its periodic offsets cleanup, every 10 min).
const IDLE_GROUP_TTL: Duration = Duration::from_secs(10 * 60);

/// The timer task re-checks at least this often even without a deadline due.
const MAX_TIMER_SLEEP: Duration = Duration::from_secs(1);

impl GroupCoordinator {
    /// Background task: expires members whose session timed out, completes
    /// joins whose rebalance timeout passed, completes the initial-delay
    /// join phase. Runs until `shutdown` fires.
    pub async fn run_timers(self: Arc<Self>, mut shutdown: watch::Receiver<bool>) {
        loop {
            if *shutdown.borrow() {
                break;
            }
            let now = Instant::now();
            let next = self.expire(now);
            let sleep = next
                .map(|d| d.saturating_duration_since(now))
                .unwrap_or(MAX_TIMER_SLEEP)
                .min(MAX_TIMER_SLEEP);
            tokio::select! {
                _ = tokio::time::sleep(sleep) => {}
                _ = self.timer_wake.notified() => {}
                changed = shutdown.changed() => {
                    // A dropped sender can never say "run on": stop too.
                    if changed.is_err() {
                        break;
                    }
                }
            }
        }
        tracing::debug!("group coordinator timers stopped");
    }

    /// One pass over every group's deadlines; returns the next one.
    fn expire(&self, now: Instant) -> Option<Instant> {
        let mut groups = mutex(&self.groups);
        let mut next: Option<Instant> = None;
        for group in groups.values_mut() {
            if let Some(d) = group.expire(now, &self.config) {
                next = Some(next.map_or(d, |n| n.min(d)));
            }
        }
        groups.retain(|id, g| {
            let idle = g.state == GroupState::Empty
                && g.members.is_empty()
                && !g.has_pending()
                && g.empty_since
                    .is_some_and(|t| now.duration_since(t) >= IDLE_GROUP_TTL);
            !idle || self.offsets.has_group(id)
        });
        next
    }
}
