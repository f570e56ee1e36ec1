//! Broker counters: requests, errors and latency per API, bytes in and out,
//! records produced, bytes fetched per partition, connections. Updated on
//! every request with relaxed atomics (the per-partition fetch counters
//! behind a read lock that is only written the first time a partition is
//! fetched); logged with `tracing` every metrics interval as rates since the
//! previous line, plus totals at shutdown, and read by [`crate::status`].
//! Never aggregates anything on the request path.

use std::collections::HashMap;
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use kafka_protocol::messages::ApiKey;
use sluice_log::common::{read_lock, write_lock};
use uuid::Uuid;

/// API keys are small integers; Kafka's highest is below 100.
pub(crate) const KEYS: usize = 100;

/// Upper bounds of the request-latency buckets, in nanoseconds: 0.5 ms to
/// 10 s, the spread between an ApiVersions and a long-polling Fetch or a
/// JoinGroup waiting for a rebalance. Integers, so that recording compares
/// integers and never rounds.
pub(crate) const LATENCY_BOUNDS_NANOS: [u64; 14] = [
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    25_000_000,
    50_000_000,
    100_000_000,
    250_000_000,
    500_000_000,
    1_000_000_000,
    2_500_000_000,
    5_000_000_000,
    10_000_000_000,
];

/// One API's request latencies: a count per bucket (not cumulative, so a
/// recording touches one bucket), the last one for everything above 10 s.
pub(crate) struct Histogram {
    buckets: [AtomicU64; LATENCY_BOUNDS_NANOS.len() + 1],
    sum_nanos: AtomicU64,
}

/// A histogram as read at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct HistogramCounts {
    /// Per bucket, not cumulative; the last is above the largest bound.
    pub buckets: Vec<u64>,
    pub sum_seconds: f64,
}

impl HistogramCounts {
    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }
}

impl Histogram {
    fn new() -> Histogram {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_nanos: AtomicU64::new(0),
        }
    }

    pub fn record(&self, elapsed: Duration) {
        let nanos = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        // A bucket holds latencies up to and including its bound ("le").
        let i = LATENCY_BOUNDS_NANOS.partition_point(|&bound| bound < nanos);
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_nanos.fetch_add(nanos, Relaxed);
    }

    pub fn load(&self) -> HistogramCounts {
        HistogramCounts {
            buckets: self.buckets.iter().map(|b| b.load(Relaxed)).collect(),
            sum_seconds: self.sum_nanos.load(Relaxed) as f64 / 1e9,
        }
    }
}

/// Bytes that fetch responses carried, per partition. Keyed by topic id, so
/// a topic deleted and created again under its name starts at zero. The
/// write lock is taken only the first time a partition is fetched from.
#[derive(Default)]
pub(crate) struct FetchedBytes(RwLock<HashMap<(Uuid, i32), AtomicU64>>);

impl FetchedBytes {
    /// Adds one fetch response's bytes, `(topic id, partition, bytes)`.
    pub fn add(&self, fetched: &[(Uuid, i32, u64)]) {
        let mut unseen = Vec::new();
        {
            let counters = read_lock(&self.0);
            for &(topic, partition, bytes) in fetched.iter().filter(|f| f.2 > 0) {
                match counters.get(&(topic, partition)) {
                    Some(c) => {
                        c.fetch_add(bytes, Relaxed);
                    }
                    None => unseen.push((topic, partition, bytes)),
                }
            }
        }
        if !unseen.is_empty() {
            let mut counters = write_lock(&self.0);
            for (topic, partition, bytes) in unseen {
                counters
                    .entry((topic, partition))
                    .or_default()
                    .fetch_add(bytes, Relaxed);
            }
        }
    }

    pub fn get(&self, topic: Uuid, partition: i32) -> u64 {
        read_lock(&self.0)
            .get(&(topic, partition))
            .map_or(0, |c| c.load(Relaxed))
    }

    /// Forgets the counters of topics that no longer exist. Looks first
    /// under the read lock, so that fetches wait only when a topic went.
    pub fn retain_topics(&self, live: impl Fn(Uuid) -> bool) {
        if read_lock(&self.0).keys().all(|(topic, _)| live(*topic)) {
            return;
        }
        write_lock(&self.0).retain(|(topic, _), _| live(*topic));
    }
}

/// An API's name as the metrics line and the status snapshot print it
/// (`Produce`, `Fetch`), or `api<key>` for a key this broker has no name for.
pub(crate) fn api_name(key: usize) -> String {
    i16::try_from(key)
        .ok()
        .and_then(|k| ApiKey::try_from(k).ok())
        .map_or_else(|| format!("api{key}"), |a| format!("{a:?}"))
}

pub(crate) struct Metrics {
    requests: [AtomicU64; KEYS],
    errors: [AtomicU64; KEYS],
    /// Time from a decoded request to its encoded response, per API.
    latency: Box<[Histogram]>,
    pub fetched: FetchedBytes,
    pub bytes_in: AtomicU64,
    pub bytes_out: AtomicU64,
    pub records_in: AtomicU64,
    pub connections_open: AtomicU64,
    pub connections_total: AtomicU64,
    /// Connections closed for protocol violations (malformed, oversized, unknown API).
    pub protocol_errors: AtomicU64,
}

#[derive(Clone, Default)]
pub(crate) struct Snapshot {
    /// Indexed by API key.
    pub requests: Vec<u64>,
    pub errors: Vec<u64>,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub records_in: u64,
    pub protocol_errors: u64,
    at: Option<Instant>,
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics {
            requests: std::array::from_fn(|_| AtomicU64::new(0)),
            errors: std::array::from_fn(|_| AtomicU64::new(0)),
            latency: (0..KEYS).map(|_| Histogram::new()).collect(),
            fetched: FetchedBytes::default(),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            records_in: AtomicU64::new(0),
            connections_open: AtomicU64::new(0),
            connections_total: AtomicU64::new(0),
            protocol_errors: AtomicU64::new(0),
        }
    }

    pub fn request(&self, key: i16) {
        if let Some(c) = usize::try_from(key).ok().and_then(|k| self.requests.get(k)) {
            c.fetch_add(1, Relaxed);
        }
    }

    /// Counts a response that carried at least one non-zero error code.
    pub fn error(&self, key: i16) {
        if let Some(c) = usize::try_from(key).ok().and_then(|k| self.errors.get(k)) {
            c.fetch_add(1, Relaxed);
        }
    }

    /// Counts one request's latency: from decoded to response ready.
    pub fn latency(&self, key: i16, elapsed: Duration) {
        if let Some(h) = usize::try_from(key).ok().and_then(|k| self.latency.get(k)) {
            h.record(elapsed);
        }
    }

    pub fn latency_of(&self, key: usize) -> HistogramCounts {
        self.latency
            .get(key)
            .map(Histogram::load)
            .unwrap_or_default()
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            requests: self.requests.iter().map(|c| c.load(Relaxed)).collect(),
            errors: self.errors.iter().map(|c| c.load(Relaxed)).collect(),
            bytes_in: self.bytes_in.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            records_in: self.records_in.load(Relaxed),
            protocol_errors: self.protocol_errors.load(Relaxed),
            at: Some(Instant::now()),
        }
    }

    /// One log line with what happened since `prev`; returns the new snapshot.
    pub fn log_since(&self, prev: &Snapshot, label: &str) -> Snapshot {
        let now = self.snapshot();
        let secs = prev
            .at
            .zip(now.at)
            .map_or(0.0, |(a, b)| (b - a).as_secs_f64())
            .max(1e-9);
        let per_api: Vec<String> = (0..KEYS)
            .filter_map(|k| {
                let n = now.requests[k] - prev.requests.get(k).copied().unwrap_or(0);
                let e = now.errors[k] - prev.errors.get(k).copied().unwrap_or(0);
                (n > 0).then(|| {
                    let name = api_name(k);
                    if e > 0 {
                        format!("{name}={n} ({e} with errors)")
                    } else {
                        format!("{name}={n}")
                    }
                })
            })
            .collect();
        tracing::info!(
            "broker metrics ({label}, {secs:.0} s): requests [{}]; in {:.1} MB/s, out {:.1} MB/s, {:.0} records/s produced; connections {} open, {} total; {} closed for protocol errors",
            per_api.join(", "),
            (now.bytes_in - prev.bytes_in) as f64 / secs / 1e6,
            (now.bytes_out - prev.bytes_out) as f64 / secs / 1e6,
            (now.records_in - prev.records_in) as f64 / secs,
            self.connections_open.load(Relaxed),
            self.connections_total.load(Relaxed),
            now.protocol_errors - prev.protocol_errors,
        );
        now
    }
}
