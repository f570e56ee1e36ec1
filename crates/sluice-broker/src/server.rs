//! The listener: accepts clients and gives each its own task
//! ([`crate::connection`]). Owns startup (opening the store, the group
//! coordinator and the broker's state files, building the shared state) and
//! graceful shutdown: stop accepting, let in-flight requests finish, flush
//! and close. A failed accept is retried, never fatal; it never handles a
//! request itself.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::blocking::run_blocking;
use crate::config::BrokerConfig;
use crate::connection::serve_connection;
use crate::error::BrokerError;
use crate::groups::GroupCoordinator;
use crate::metrics::Metrics;
use crate::producers::{ProducerIds, ProducerStates};
use crate::state::{Cluster, NODE_ID, Shared};
use crate::status::BrokerStatus;
use crate::topics::Topics;
use crate::txn::TxnCoordinator;
use sluice_log::log::{LogStore, StoreOptions, write_atomically};

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
    status: BrokerStatus,
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
        let txn_config = config.transactions.clone();
        let store_options = StoreOptions {
            cleaner: config.cleaner.clone(),
            ..StoreOptions::default()
        };
        let (auto_create, default_partitions) =
            (config.auto_create_topics, config.default_partitions);
        // Recovery reads files: keep it off the async threads.
        let opened = run_blocking("startup", move || -> Result<_, BrokerError> {
            let store = LogStore::open(&data_dir, store_options)?;
            let state_dir = data_dir.join("broker");
            std::fs::create_dir_all(&state_dir).map_err(|e| BrokerError::State {
                path: state_dir.clone(),
                reason: e.to_string(),
            })?;
            let cluster_id = cluster_id(&state_dir)?;
            let producer_ids = ProducerIds::open(&state_dir)?;
            let producer_ids = Arc::new(producer_ids);
            let groups = GroupCoordinator::open(&data_dir.join("groups"), group_config)?;
            let topics = Topics::new(store, auto_create, default_partitions);
            // After the store and the groups: finishing transactions a crash
            // left prepared writes markers and offsets.
            let txns = TxnCoordinator::open(
                &data_dir.join("transactions"),
                txn_config,
                topics.clone(),
                groups.clone(),
                producer_ids.clone(),
            )?;
            Ok((topics, cluster_id, producer_ids, groups, txns))
        })
        .await
        .map_err(BrokerError::Task)??;
        let (topics, cluster_id, producer_ids, groups, txns) = opened;
        let shared = Arc::new(Shared {
            config,
            cluster: Cluster {
                node_id: NODE_ID,
                cluster_id,
                advertised_host,
                advertised_port: i32::from(local.port()),
            },
            topics,
            groups,
            txns,
            producer_ids,
            producer_states: Arc::new(ProducerStates::default()),
            metrics: Metrics::new(),
            shutdown,
        });
        let status = BrokerStatus::new(shared.clone(), local);
        Ok(Broker {
            shared,
            listener,
            shutdown_tx: Arc::new(shutdown_tx),
            status,
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

    /// A handle for reading the broker's status (the console, `/metrics`);
    /// take it before [`Broker::run`], which samples the rates and the
    /// consumer-lag windows behind it.
    pub fn status(&self) -> BrokerStatus {
        self.status.clone()
    }

    /// Serves until the shutdown handle fires, then drains and closes.
    pub async fn run(self) -> Result<(), BrokerError> {
        let Broker {
            shared,
            listener,
            shutdown_tx,
            status,
        } = self;
        let mut shutdown = shared.shutdown.clone();
        let started = shared.metrics.snapshot();
        let mut background = JoinSet::new();
        background.spawn(shared.groups.clone().run_timers(shared.shutdown.clone()));
        background.spawn(shared.txns.clone().run_timers(shared.shutdown.clone()));
        background.spawn(maintenance(shared.clone()));
        background.spawn(status.run_sampler(shared.shutdown.clone()));
        let mut connections = JoinSet::new();
        tracing::info!(
            "sluice broker listening on {} (advertised as {}:{}), data in {}",
            listener
                .local_addr()
                .map_or_else(|_| "?".into(), |a| a.to_string()),
            shared.cluster.advertised_host,
            shared.cluster.advertised_port,
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
        run_blocking("shutdown", move || -> Result<(), BrokerError> {
            shared2.txns.close()?;
            shared2.groups.close()?;
            shared2.topics.store.close()?;
            Ok(())
        })
        .await
        .map_err(BrokerError::Task)??;
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
        let states = shared.producer_states.clone();
        // A failed expiry pass is retried at the next tick.
        let _ = run_blocking("producer expiry", move || {
            states.expire(sluice_log::common::now_ms());
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
