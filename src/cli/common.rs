//! What every subcommand shares: the store's flags, opening the store
//! with an error a person can act on, and the stop flag for Ctrl-C.
//!
//! It never parses a subcommand's own arguments and imports no other
//! file of the CLI.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::Context;

use crate::log::{LogStore, StoreOptions};

/// Where the embedded log store keeps its data.
#[derive(Debug, Clone, clap::Args)]
pub struct StoreArgs {
    /// Data directory of the embedded log store (created if missing).
    #[arg(long, env = "SLUICE_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
}

pub(crate) fn open_store(dir: &Path, background: bool) -> anyhow::Result<LogStore> {
    LogStore::open(
        dir,
        StoreOptions {
            background,
            ..Default::default()
        },
    )
    .with_context(|| format!("cannot open the log store in {}", dir.display()))
}

/// A flag set by SIGINT or SIGTERM, for commands that run until stopped.
pub(crate) fn stop_flag() -> anyhow::Result<Arc<AtomicBool>> {
    crate::driver::stop_on_signals().context("cannot install signal handler")
}
