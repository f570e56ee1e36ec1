//! `--ui` / `--no-ui`: where a long-running command serves its web console
//! and `/metrics` (loopback, Spark's port 4040 or the next free one).

use std::net::SocketAddr;

use anyhow::Context;

use crate::console::{self, Console, ConsoleThread, Watched};
use crate::driver::JobConfig;

#[derive(Debug, Clone, clap::Args)]
pub struct UiArgs {
    /// Serve the web console and /metrics on this address. Default:
    /// 127.0.0.1:4040, or the next free port up to 4055 (printed at start);
    /// without a free one the command runs without a console. An address
    /// given here must be served, or the command stops.
    #[arg(long, value_name = "HOST:PORT", env = "SLUICE_UI")]
    pub ui: Option<SocketAddr>,
    /// Serve no console.
    #[arg(long, conflicts_with = "ui")]
    pub no_ui: bool,
}

impl UiArgs {
    fn address(&self) -> Option<(SocketAddr, bool)> {
        if self.no_ui {
            return None;
        }
        Some(match self.ui {
            Some(addr) => (addr, true),
            None => (
                SocketAddr::from(([127, 0, 0, 1], console::DEFAULT_PORT)),
                false,
            ),
        })
    }

    /// Serves the console of the job `config` describes; `None` with
    /// `--no-ui`, or when the default ports are all taken (said on stderr).
    pub fn serve_job(
        &self,
        config: &mut JobConfig,
        history: usize,
    ) -> anyhow::Result<Option<ConsoleThread>> {
        let Some((addr, asked)) = self.address() else {
            return Ok(None);
        };
        match console::serve_job(config, addr, history) {
            Ok((thread, url)) => {
                eprintln!("console: {url} (metrics at {url}metrics)");
                Ok(Some(thread))
            }
            Err(e) if !asked => {
                eprintln!("note: running without a console: {e}");
                Ok(None)
            }
            Err(e) => Err(e).context("cannot start the console"),
        }
    }

    /// Binds the broker's console; the caller serves it on its runtime.
    pub fn bind_broker(&self, status: console::BrokerStatus) -> anyhow::Result<Option<Console>> {
        let Some((addr, asked)) = self.address() else {
            return Ok(None);
        };
        match Console::bind(addr, Watched::Broker(status)) {
            Ok(console) => Ok(Some(console)),
            Err(e) if !asked => {
                eprintln!("note: running without a console: {e}");
                Ok(None)
            }
            Err(e) => Err(e).context("cannot start the console"),
        }
    }
}
