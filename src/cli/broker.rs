//! `sluice broker`: serve the data directory over the Kafka protocol until
//! SIGINT/SIGTERM, then stop gracefully (finish in-flight requests, flush,
//! close) and exit 0.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;

use super::common::StoreArgs;
use crate::broker::{Broker, BrokerConfig};
use crate::units::{parse_bytes, parse_millis};

fn millis(text: &str) -> Result<Duration, String> {
    parse_millis(text).map(Duration::from_millis)
}

#[derive(Debug, clap::Args)]
pub struct BrokerArgs {
    /// Address to listen on. Loopback by default; use 0.0.0.0:9092 together
    /// with --advertised-host to serve other machines.
    #[arg(long, default_value = "127.0.0.1:9092")]
    listen: SocketAddr,
    /// Host name clients are told to connect to (Metadata, FindCoordinator).
    #[arg(long)]
    advertised_host: Option<String>,
    /// Create unknown topics when clients produce to them or ask for their
    /// metadata (Kafka's auto.create.topics.enable).
    #[arg(long)]
    auto_create_topics: bool,
    /// Partitions of auto-created topics and of CreateTopics asking for the default.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(i32).range(1..=10_000))]
    default_partitions: i32,
    /// Largest request frame accepted (Kafka's socket.request.max.bytes).
    #[arg(long, default_value = "100MiB", value_parser = parse_bytes)]
    max_request_bytes: u64,
    /// How long an empty group waits for more members before its first
    /// rebalance completes (Kafka's group.initial.rebalance.delay.ms).
    #[arg(long, default_value = "3s", value_parser = millis)]
    group_initial_rebalance_delay: Duration,
    /// Smallest session timeout a consumer may ask for (group.min.session.timeout.ms).
    #[arg(long, default_value = "6s", value_parser = millis)]
    group_min_session_timeout: Duration,
    /// Longest transaction.timeout.ms a transactional producer may ask for
    /// (Kafka's transaction.max.timeout.ms); longer is refused with
    /// INVALID_TRANSACTION_TIMEOUT.
    #[arg(long, default_value = "15min", value_parser = millis)]
    transaction_max_timeout: Duration,
    /// How often open transactions are checked against their timeouts
    /// (Kafka's transaction.abort.timed.out.transaction.cleanup.interval.ms).
    #[arg(long, default_value = "10s", value_parser = millis)]
    transaction_check_interval: Duration,
    /// Pause between the log cleaner's passes over compacted topics
    /// (Kafka's log.cleaner.backoff.ms).
    #[arg(long, default_value = "15s", value_parser = millis)]
    log_cleaner_backoff: Duration,
    /// Most bytes per second the log cleaner reads plus writes
    /// (log.cleaner.io.max.bytes.per.second); 0 = unthrottled.
    #[arg(long, default_value = "128MiB", value_parser = parse_bytes)]
    log_cleaner_io_max_bytes_per_second: u64,
    /// Memory for the log cleaner's key map (log.cleaner.dedupe.buffer.size);
    /// a pass cleans as many segments as their keys fit in it.
    #[arg(long, default_value = "128MiB", value_parser = parse_bytes)]
    log_cleaner_dedupe_buffer_size: u64,
    /// How often request, byte and error counters are logged.
    #[arg(long, default_value = "60s", value_parser = millis)]
    metrics_interval: Duration,
    #[command(flatten)]
    store: StoreArgs,
    #[command(flatten)]
    ui: super::ui::UiArgs,
}

pub fn run(args: BrokerArgs) -> anyhow::Result<()> {
    let mut config = BrokerConfig::new(args.listen, &args.store.data_dir);
    config.advertised_host = args.advertised_host;
    config.auto_create_topics = args.auto_create_topics;
    config.default_partitions = args.default_partitions;
    config.max_request_bytes =
        usize::try_from(args.max_request_bytes).context("--max-request-bytes is too large")?;
    config.groups.initial_rebalance_delay = args.group_initial_rebalance_delay;
    config.groups.min_session_timeout = args.group_min_session_timeout;
    config.transactions.max_timeout = args.transaction_max_timeout;
    config.transactions.check_interval = args
        .transaction_check_interval
        .max(Duration::from_millis(10));
    config.metrics_interval = args.metrics_interval.max(Duration::from_millis(100));
    config.cleaner.backoff = args.log_cleaner_backoff.max(Duration::from_millis(100));
    config.cleaner.io_max_bytes_per_second = (args.log_cleaner_io_max_bytes_per_second > 0)
        .then_some(args.log_cleaner_io_max_bytes_per_second);
    config.cleaner.dedupe_buffer_bytes = usize::try_from(args.log_cleaner_dedupe_buffer_size)
        .context("--log-cleaner-dedupe-buffer-size is too large")?
        .max(1 << 20);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("sluice-broker")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let broker = Broker::bind(config)
            .await
            .with_context(|| format!("cannot start the broker on {}", args.listen))?;
        // Scripts and tests read this line to learn the port (e.g. with --listen 127.0.0.1:0).
        println!("sluice broker listening on {}", broker.local_addr());
        if let Some(console) = args.ui.bind_broker(broker.status())? {
            let url = console.url();
            eprintln!("console: {url} (metrics at {url}metrics)");
            // Served until the runtime ends with the broker.
            tokio::spawn(async move {
                if let Err(e) = console.serve(std::future::pending()).await {
                    tracing::warn!("{e}");
                }
            });
        }
        let stop = broker.shutdown_handle();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("signal received: shutting down");
            stop.shutdown();
        });
        broker.run().await.context("broker failed")
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        _ => {
            tracing::error!("cannot install signal handlers; stop the broker with SIGKILL");
            std::future::pending::<()>().await;
        }
    }
}
