//! One job on many workers: the membership of a job's worker processes in
//! a Kafka consumer group of their own, and the assignment of the job's
//! tasks — one per (stage, partition) — among them.
//!
//! Kafka is the distributed engine, as for Kafka Streams: the group
//! coordinator of `sluice broker` or of a Kafka cluster elects a leader and
//! hands out the generations; the leader assigns with a sticky, state-aware
//! assignor ([`assignor`]); every member learns its tasks and the
//! generation id and member id that KIP-447's TxnOffsetCommit checks. No
//! controller of Sluice's own.
//!
//! - [`assignor`] — the pure assignment: balanced, sticky, toward local state.
//! - [`member`] — one worker's membership: join/sync with retries, heartbeats,
//!   rebalance detection, leaving.
//! - `wire` — a minimal Kafka client connection (framing, correlation,
//!   version negotiation) over `kafka-protocol`.
//!
//! This module never runs tasks, reads partitions or touches state: the
//! driver does, between batches, when a member says the group rebalanced.

pub mod assignor;
pub mod member;
mod wire;

pub use assignor::{MemberView, TaskId, assign};
pub use member::{Generation, GroupMember, LocalTasks, WorkerConfig, WorkersError};
pub use wire::WireError;
