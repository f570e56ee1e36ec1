//! The Kafka-protocol broker in front of the bundled log store
//! (`sluice broker`). Work in progress.

pub mod groups;
