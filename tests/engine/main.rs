//! The engine and the `sluice` command line: jobs stopped by SIGTERM and
//! SIGKILL, state and code evolution, and the store's commands (topics,
//! produce, consume) end to end.

#[path = "../common/mod.rs"]
mod common;

mod cli;
mod console;
mod crash;
mod evolution;
mod state_memory;
mod store_cli;
mod topic_output;
mod workers;
mod workers_run;
