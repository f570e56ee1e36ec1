//! What every benchmark driver shares: medians, free loopback ports, the
//! `sluice` binary under test, and opening a store.

use std::net::TcpListener;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use sluice::log::{LogStore, StoreOptions};

/// The middle value of `values` (the upper one of an even count).
pub fn median(values: Vec<f64>) -> f64 {
    median_by(values, |v| *v)
}

/// The item whose `key` is the median of the items' keys.
pub fn median_by<T>(mut items: Vec<T>, key: impl Fn(&T) -> f64) -> T {
    items.sort_by(|a, b| key(a).total_cmp(&key(b)));
    let middle = items.len() / 2;
    items.swap_remove(middle)
}

/// A loopback port nothing listens on right now.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    Ok(listener.local_addr()?.port())
}

/// The `sluice` binary measured by the drivers that run whole processes:
/// `$SLUICE_BIN`, else the one cargo built next to this executable.
pub fn sluice_exe() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("SLUICE_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let me = std::env::current_exe().context("cannot find this executable")?;
    let sibling = me.with_file_name("sluice");
    if !sibling.is_file() {
        bail!(
            "no sluice binary at {}: build it first (cargo build --release --bins) or set SLUICE_BIN",
            sibling.display()
        );
    }
    Ok(sibling)
}

/// Opens the embedded store in `dir` (without background flushing, so the
/// benchmark controls every flush).
pub fn open_store(dir: &Path, background: bool) -> anyhow::Result<LogStore> {
    LogStore::open(
        dir,
        StoreOptions {
            background,
            ..Default::default()
        },
    )
    .with_context(|| format!("cannot open the log store in {}", dir.display()))
}

/// Appends unkeyed values to a topic's partitions in uncompressed batches
/// of 1,000 records (the loaders of the word-count, workers and keys
/// benchmarks).
pub struct BatchAppender {
    partitions: Vec<std::sync::Arc<sluice::log::Partition>>,
    builders: Vec<sluice::producer::BatchBuilder>,
}

impl BatchAppender {
    pub fn new(topic: &sluice::log::Topic) -> Self {
        let partitions = topic.partitions();
        let builders = partitions.iter().map(|_| Self::builder()).collect();
        BatchAppender {
            partitions,
            builders,
        }
    }

    fn builder() -> sluice::producer::BatchBuilder {
        sluice::producer::BatchBuilder::new(sluice::producer::Compression::None)
    }

    /// Adds `value` to partition `p`'s batch, appending it when full.
    pub fn push(&mut self, p: usize, value: &[u8]) -> anyhow::Result<()> {
        self.builders[p].push(None, value, 0);
        if self.builders[p].len() == 1000 {
            let mut bytes = std::mem::replace(&mut self.builders[p], Self::builder()).finish()?;
            self.partitions[p].append(&mut bytes)?;
        }
        Ok(())
    }

    /// Appends what is left.
    pub fn finish(mut self) -> anyhow::Result<()> {
        for (p, b) in self.builders.iter_mut().enumerate() {
            if !b.is_empty() {
                let mut bytes = b.finish()?;
                self.partitions[p].append(&mut bytes)?;
            }
        }
        Ok(())
    }
}
