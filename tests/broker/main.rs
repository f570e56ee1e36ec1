//! The broker's integration tests: the Kafka wire protocol by hand, real
//! clients (rdkafka, kcat, kafka-python), transactions, SIGKILL crashes and
//! a fuzzer of the request decoder.

#[path = "../common/mod.rs"]
mod common;

mod clients;
mod compaction;
mod console;
mod crash;
mod fuzz;
mod protocol;
mod rdkafka;
mod transactions;
mod txn_protocol;
