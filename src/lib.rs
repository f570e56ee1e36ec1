//! Sluice: a micro-batch stream-processing engine with a bundled,
//! Kafka-compatible log store, in one Rust library and one binary.
//!
//! This crate is the facade Rust jobs import and the `sluice` binary. The
//! work is done by the workspace's layer crates, re-exported here under
//! their old module names so a job writes `sluice::plan::DStream`:
//!
//! | module | crate | owns |
//! |---|---|---|
//! | [`log`], [`producer`], [`units`], [`common`] | `sluice-log` | the log store, producing, units, lock helpers |
//! | [`broker`] | `sluice-broker` | the Kafka wire protocol over the store |
//! | [`checkpoint`], [`source`], [`corpus`], [`data`], [`sink`], [`plan`], [`driver`] | `sluice-engine` | the micro-batch engine |
//! | [`sql`] | `sluice-sql` | streaming SQL on DataFusion |
//! | [`console`] | `sluice-console` | the web console and `/metrics` of a job or a broker |
//! | [`nexmark`], [`cli`], [`alloc`] | this crate | the Nexmark generator, the command line, the allocator |
//!
//! - [`nexmark`] — the Nexmark benchmark's events (people, auctions, bids)
//!   from a seed and an event number, loaded into the store as JSON.
//! - [`alloc`] — the binary's global allocator (lazy reservation of huge
//!   allocations, so a hostile length prefix cannot abort the broker).
//! - [`cli`] — the `sluice` command line: one file per subcommand. `main.rs`
//!   only parses arguments and reports errors.
//!
//! The benchmark drivers (`sluice-bench`) are a workspace member of their
//! own in `benches/`. `ARCHITECTURE.md` at the repository root describes
//! the crates, the data flow and the on-disk formats.

pub use sluice_broker as broker;
pub use sluice_console as console;
pub use sluice_engine::{checkpoint, corpus, data, driver, plan, sink, source, workers};
pub use sluice_log::{common, log, producer, units};
pub use sluice_sql as sql;

pub mod alloc;
pub mod cli;
pub mod nexmark;
