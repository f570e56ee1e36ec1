//! The web console and `/metrics` of a running Sluice process: a read-only
//! view of a job (its [`JobMonitor`]) or of a broker (its
//! [`BrokerStatus`]) over HTTP, on loopback unless told otherwise.
//!
//! It owns the HTTP edge: binding (the next free port when the asked one
//! is taken, as Spark's UI does from 4040), routing ([`routes`]), request
//! limits, the page and its assets compiled into the binary ([`assets`]),
//! and the Prometheus text ([`metrics`]). It must never change a job, a
//! topic or a group, and never run on a job's batch threads: requests are
//! served by tokio (the broker's runtime, or one thread of its own in a
//! job), snapshots are taken and encoded on tokio's blocking pool, and a
//! slow or stalled browser holds only its own connection.

mod assets;
pub mod metrics;
mod routes;

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

pub use sluice_broker::BrokerStatus;
pub use sluice_engine::driver::monitor::JobMonitor;

/// Spark's UI port: what people type first.
pub const DEFAULT_PORT: u16 = 4040;
/// Ports tried after a taken one (Spark's `spark.port.maxRetries`).
pub const PORT_ATTEMPTS: u16 = 16;

/// What the console shows.
#[derive(Clone)]
pub enum Watched {
    Job(Arc<JobMonitor>),
    Broker(BrokerStatus),
}

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error(
        "cannot serve the console on {addr} or the {attempts} ports after it: {source}. Pick another with --ui HOST:PORT, or turn it off with --no-ui"
    )]
    Bind {
        addr: SocketAddr,
        attempts: u16,
        source: std::io::Error,
    },
    #[error("the console stopped: {0}")]
    Serve(std::io::Error),
}

/// A console bound to its address, not yet serving.
pub struct Console {
    listener: TcpListener,
    watched: Watched,
}

impl Console {
    /// Binds `addr`, or the next free port after it (up to
    /// [`PORT_ATTEMPTS`]) when it is taken. Port 0 takes any free port.
    pub fn bind(addr: SocketAddr, watched: Watched) -> Result<Console, ConsoleError> {
        let attempts = if addr.port() == 0 { 1 } else { PORT_ATTEMPTS };
        let mut last = None;
        for i in 0..attempts {
            let Some(port) = addr.port().checked_add(i) else {
                break;
            };
            match TcpListener::bind(SocketAddr::new(addr.ip(), port)) {
                Ok(listener) => {
                    listener
                        .set_nonblocking(true)
                        .map_err(ConsoleError::Serve)?;
                    return Ok(Console { listener, watched });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => last = Some(e),
                Err(source) => {
                    return Err(ConsoleError::Bind {
                        addr,
                        attempts: 0,
                        source,
                    });
                }
            }
        }
        Err(ConsoleError::Bind {
            addr,
            attempts: attempts.saturating_sub(1),
            source: last.unwrap_or_else(|| std::io::Error::other("no port left to try")),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// The address to open in a browser.
    pub fn url(&self) -> String {
        let addr = self.local_addr();
        let host = if addr.ip().is_unspecified() {
            "127.0.0.1".to_owned()
        } else {
            addr.ip().to_string()
        };
        let host = if addr.is_ipv6() && !addr.ip().is_unspecified() {
            format!("[{host}]")
        } else {
            host
        };
        format!("http://{host}:{}/", addr.port())
    }

    /// Serves on the caller's tokio runtime until `shutdown` completes.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ConsoleError> {
        let listener =
            tokio::net::TcpListener::from_std(self.listener).map_err(ConsoleError::Serve)?;
        axum::serve(listener, routes::router(self.watched))
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(ConsoleError::Serve)
    }

    /// Serves from a thread of its own (one async thread, plus tokio's
    /// blocking pool for snapshots), for processes without a runtime: a
    /// job's batch loop never shares its threads with the console. The
    /// console stops when the handle is dropped.
    pub fn spawn(self) -> Result<ConsoleThread, ConsoleError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .max_blocking_threads(2)
            .thread_name("sluice-console")
            .build()
            .map_err(ConsoleError::Serve)?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("sluice-console".into())
            .spawn(move || {
                let served = runtime.block_on(self.serve(async {
                    let _ = stopped.await;
                }));
                if let Err(e) = served {
                    tracing::warn!("{e}");
                }
            })
            .map_err(ConsoleError::Serve)?;
        Ok(ConsoleThread {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}

/// A console serving from its own thread; dropping it stops the console.
pub struct ConsoleThread {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for ConsoleThread {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        // Graceful shutdown waits for open connections; a stalled browser
        // must not keep a finished job from exiting, so do not join.
        drop(self.thread.take());
    }
}

/// Gives the job `config` describes a monitor and serves its console from
/// a thread of its own: what `sluice run`, `sluice wordcount` and Rust jobs
/// written against the library call before `StreamingContext::new`. Keep
/// the returned handle for as long as the console should stay up.
pub fn serve_job(
    config: &mut sluice_engine::driver::JobConfig,
    addr: SocketAddr,
    history: usize,
) -> Result<(ConsoleThread, String), ConsoleError> {
    let monitor = config
        .progress
        .monitor
        .get_or_insert_with(|| JobMonitor::new(config.name.clone(), history))
        .clone();
    let console = Console::bind(addr, Watched::Job(monitor))?;
    let url = console.url();
    Ok((console.spawn()?, url))
}
