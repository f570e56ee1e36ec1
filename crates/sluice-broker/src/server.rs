//! The listener and the connections: accepts clients, reads size-prefixed
//! frames (refusing oversized ones before allocating), hands each request to
//! [`super::dispatch`] and writes responses back in order. Owns startup
//! (opening the store, the group coordinator and the broker's state files)
//! and graceful shutdown: stop accepting, let in-flight requests finish,
//! flush and close.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, watch};
use tokio::task::JoinSet;

use super::dispatch::{self, Outcome};
use super::error::BrokerError;
use super::groups::GroupCoordinator;
use super::metrics::Metrics;
use super::producers::{ProducerIds, ProducerStates};
use super::{BrokerConfig, NODE_ID};
use sluice_log::log::{LogStore, StoreOptions, write_atomically};

/// State shared by every connection.
pub(crate) struct Shared {
    pub config: BrokerConfig,
    pub store: LogStore,
    pub groups: Arc<GroupCoordinator>,
    pub producer_ids: ProducerIds,
    pub producer_states: ProducerStates,
    pub cluster_id: String,
    pub advertised_host: String,
    pub advertised_port: i32,
    pub node_id: i32,
    /// Woken after every append, so long-polling fetches answer at once.
    pub data_ready: Notify,
    pub metrics: Metrics,
    pub shutdown: watch::Receiver<bool>,
}

/// Stops a running broker gracefully (what SIGINT/SIGTERM do).
#[derive(Clone)]
pub struct ShutdownHandle(Arc<watch::Sender<bool>>);

impl ShutdownHandle {
    pub fn shutdown(&self) {
        self.0.send_replace(true);
    }
}

/// A bound, not yet serving broker.
pub struct Broker {
    shared: Arc<Shared>,
    listener: TcpListener,
    shutdown_tx: Arc<watch::Sender<bool>>,
}

impl Broker {
    /// Opens the data directory (running log recovery) and binds the listener.
    pub async fn bind(config: BrokerConfig) -> Result<Broker, BrokerError> {
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| BrokerError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let local = listener.local_addr().map_err(|source| BrokerError::Bind {
            addr: config.listen,
            source,
        })?;
        let advertised_host = match &config.advertised_host {
            Some(h) => h.clone(),
            None if local.ip().is_unspecified() => {
                return Err(BrokerError::WildcardAdvertised(local));
            }
            None => local.ip().to_string(),
        };
        let (shutdown_tx, shutdown) = watch::channel(false);
        let data_dir = config.data_dir.clone();
        let group_config = config.groups.clone();
        // Recovery reads files: keep it off the async threads.
        let opened = tokio::task::spawn_blocking(move || -> Result<_, BrokerError> {
            let store = LogStore::open(&data_dir, StoreOptions::default())?;
            let state_dir = data_dir.join("broker");
            std::fs::create_dir_all(&state_dir).map_err(|e| BrokerError::State {
                path: state_dir.clone(),
                reason: e.to_string(),
            })?;
            let cluster_id = cluster_id(&state_dir)?;
            let producer_ids = ProducerIds::open(&state_dir)?;
            let groups = GroupCoordinator::open(&data_dir.join("groups"), group_config)?;
            Ok((store, cluster_id, producer_ids, groups))
        })
        .await
        .map_err(|e| BrokerError::Task(e.to_string()))??;
        let (store, cluster_id, producer_ids, groups) = opened;
        let shared = Arc::new(Shared {
            config,
            store,
            groups,
            producer_ids,
            producer_states: ProducerStates::default(),
            cluster_id,
            advertised_host,
            advertised_port: i32::from(local.port()),
            node_id: NODE_ID,
            data_ready: Notify::new(),
            metrics: Metrics::new(),
            shutdown,
        });
        Ok(Broker {
            shared,
            listener,
            shutdown_tx: Arc::new(shutdown_tx),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .unwrap_or(self.shared.config.listen)
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        ShutdownHandle(self.shutdown_tx.clone())
    }

    /// Serves until the shutdown handle fires, then drains and closes.
    pub async fn run(self) -> Result<(), BrokerError> {
        let Broker {
            shared,
            listener,
            shutdown_tx,
        } = self;
        let mut shutdown = shared.shutdown.clone();
        let started = shared.metrics.snapshot();
        let mut background = JoinSet::new();
        background.spawn(shared.groups.clone().run_timers(shared.shutdown.clone()));
        background.spawn(maintenance(shared.clone()));
        let mut connections = JoinSet::new();
        tracing::info!(
            "sluice broker listening on {} (advertised as {}:{}), data in {}",
            listener
                .local_addr()
                .map_or_else(|_| "?".into(), |a| a.to_string()),
            shared.advertised_host,
            shared.advertised_port,
            shared.config.data_dir.display()
        );
        loop {
            tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => break,
                accepted = listener.accept() => match accepted {
                    Ok((stream, peer)) => {
                        connections.spawn(serve_connection(shared.clone(), stream, peer));
                    }
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!("accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
        drop(listener);
        tracing::info!(
            "shutting down: finishing {} connection(s)",
            connections.len()
        );
        // Connections finish their current request and stop; a client stuck
        // mid-frame does not hold the shutdown hostage.
        let drained = tokio::time::timeout(Duration::from_secs(30), async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            connections.abort_all();
        }
        background.abort_all();
        let shared2 = shared.clone();
        tokio::task::spawn_blocking(move || -> Result<(), BrokerError> {
            shared2.groups.close()?;
            shared2.store.close()?;
            Ok(())
        })
        .await
        .map_err(|e| BrokerError::Task(e.to_string()))??;
        shared.metrics.log_since(&started, "totals since start");
        drop(shutdown_tx);
        tracing::info!("broker stopped cleanly");
        Ok(())
    }
}

/// Periodic work: the metrics line and forgetting long-silent producers.
async fn maintenance(shared: Arc<Shared>) {
    let mut last = shared.metrics.snapshot();
    let mut tick = tokio::time::interval(shared.config.metrics_interval);
    tick.tick().await;
    loop {
        tick.tick().await;
        last = shared.metrics.log_since(&last, "last interval");
        let s = shared.clone();
        let _ = tokio::task::spawn_blocking(move || {
            s.producer_states.expire(sluice_log::common::now_ms());
        })
        .await;
    }
}

/// The cluster id clients see in Metadata: made once, kept in `broker/cluster-id`.
fn cluster_id(state_dir: &Path) -> Result<String, BrokerError> {
    let path = state_dir.join("cluster-id");
    match std::fs::read_to_string(&path) {
        Ok(id) if !id.trim().is_empty() => Ok(id.trim().to_string()),
        Ok(_) | Err(_) => {
            let id = uuid::Uuid::new_v4().simple().to_string();
            write_atomically(&path, id.as_bytes()).map_err(|e| BrokerError::State {
                path,
                reason: e.to_string(),
            })?;
            Ok(id)
        }
    }
}

/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
enum FrameError {
    #[error("frame of {0} bytes exceeds --max-request-bytes ({1})")]
    TooLarge(i64, usize),
    #[error("negative frame size {0}")]
    Negative(i32),
    #[error("connection closed mid-frame after {0} of {1} bytes")]
    Truncated(usize, usize),
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

/// Reads one size-prefixed frame; `None` at a clean end of stream. The
/// buffer grows as bytes arrive, so a client announcing a large frame and
/// sending nothing holds no memory.
async fn read_frame(
    reader: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
    max: usize,
) -> Result<Option<Bytes>, FrameError> {
    let mut size = [0u8; 4];
    match reader.read(&mut size[..1]).await? {
        0 => return Ok(None),
        _ => reader.read_exact(&mut size[1..]).await?,
    };
    let size = i32::from_be_bytes(size);
    if size < 0 {
        return Err(FrameError::Negative(size));
    }
    let size = size as usize;
    if size > max {
        return Err(FrameError::TooLarge(size as i64, max));
    }
    let mut buf = BytesMut::with_capacity(size.min(64 * 1024));
    while buf.len() < size {
        if buf.capacity() == buf.len() {
            buf.reserve((size - buf.len()).min(1 << 20));
        }
        let want = size - buf.len();
        let n = reader.read_buf(&mut (&mut buf).limit(want)).await?;
        if n == 0 {
            return Err(FrameError::Truncated(buf.len(), size));
        }
    }
    Ok(Some(buf.freeze()))
}

/// Writes a frame given in pieces with vectored writes.
async fn write_chunks(
    write: &mut tokio::net::tcp::OwnedWriteHalf,
    mut chunks: Vec<Bytes>,
) -> std::io::Result<()> {
    let mut first = 0;
    while first < chunks.len() {
        let slices: Vec<std::io::IoSlice<'_>> = chunks[first..]
            .iter()
            .take(64)
            .map(|c| std::io::IoSlice::new(c))
            .collect();
        let mut n = write.write_vectored(&slices).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        while n > 0 {
            let c = &mut chunks[first];
            if n >= c.len() {
                n -= c.len();
                first += 1;
            } else {
                bytes::Buf::advance(c, n);
                n = 0;
            }
        }
        while first < chunks.len() && chunks[first].is_empty() {
            first += 1;
        }
    }
    Ok(())
}

async fn serve_connection(shared: Arc<Shared>, stream: TcpStream, peer: SocketAddr) {
    shared.metrics.connections_open.fetch_add(1, Relaxed);
    shared.metrics.connections_total.fetch_add(1, Relaxed);
    let _ = stream.set_nodelay(true);
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::with_capacity(64 * 1024, read);
    let mut shutdown = shared.shutdown.clone();
    let idle = shared.config.idle_timeout;
    loop {
        let frame = tokio::select! {
            _ = shutdown.wait_for(|stop| *stop) => break,
            _ = tokio::time::sleep(idle) => {
                tracing::debug!("closing idle connection from {peer}");
                break;
            }
            frame = read_frame(&mut reader, shared.config.max_request_bytes) => frame,
        };
        let frame = match frame {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(FrameError::Io(e)) => {
                tracing::debug!("connection from {peer} failed: {e}");
                break;
            }
            Err(e) => {
                shared.metrics.protocol_errors.fetch_add(1, Relaxed);
                tracing::warn!("closing connection from {peer}: {e}");
                break;
            }
        };
        shared
            .metrics
            .bytes_in
            .fetch_add(frame.len() as u64 + 4, Relaxed);
        match dispatch::handle(&shared, frame, peer).await {
            Outcome::Respond(chunks) => {
                let len: usize = chunks.iter().map(|c| c.len()).sum();
                shared.metrics.bytes_out.fetch_add(len as u64, Relaxed);
                if let Err(e) = write_chunks(&mut write, chunks).await {
                    tracing::debug!("writing to {peer} failed: {e}");
                    break;
                }
            }
            Outcome::Silent => {}
            Outcome::Close(reason) => {
                shared.metrics.protocol_errors.fetch_add(1, Relaxed);
                tracing::warn!("closing connection from {peer}: {reason}");
                break;
            }
        }
    }
    let _ = write.shutdown().await;
    shared.metrics.connections_open.fetch_sub(1, Relaxed);
}
