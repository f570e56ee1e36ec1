//! The coordinator's settings, with Kafka's broker config names and
//! defaults. Plain data: read by the coordinator and the group state
//! machine, never changed while the broker runs.

use std::time::Duration;

/// Group coordinator settings, with Kafka's broker config names and defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupConfig {
    /// `group.initial.rebalance.delay.ms` (default 3 s): an Empty group
    /// waits this long for more members before its first rebalance completes.
    pub initial_rebalance_delay: Duration,
    /// `group.min.session.timeout.ms`, default 6 s.
    pub min_session_timeout: Duration,
    /// `group.max.session.timeout.ms`, default 30 min.
    pub max_session_timeout: Duration,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            initial_rebalance_delay: Duration::from_secs(3),
            min_session_timeout: Duration::from_secs(6),
            max_session_timeout: Duration::from_secs(30 * 60),
        }
    }
}
