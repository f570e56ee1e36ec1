//! The bottom layer of Sluice: the bundled log store and what every layer
//! above shares.
//!
//! - [`log`] — topics, partitions, segments of Kafka RecordBatch v2 bytes
//!   with a sparse offset/time index, retention, flush policies and crash
//!   recovery. Synchronous; the only owner of data files.
//! - [`producer`] — client-side producing: Kafka's murmur2 partitioner,
//!   RecordBatch v2 encoding (with compression), line sources including a
//!   `tail -F` follower.
//! - [`units`] — human sizes, durations and timestamps for flags, configs
//!   and output.
//! - [`common`] — lock guards that survive poisoning, and the wall clock.
//!
//! Nothing here knows about the network, Arrow, jobs or SQL: the broker and
//! the engine build on this crate, never the other way round.

pub mod common;
pub mod log;
pub mod producer;
pub mod units;
