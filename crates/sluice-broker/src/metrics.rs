//! Broker counters: requests and errors per API, bytes in and out, records
//! produced and fetched, connections. Lock-free (relaxed atomics, updated on
//! every request) and logged with `tracing` every metrics interval as rates
//! since the previous line, plus totals at shutdown.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use kafka_protocol::messages::ApiKey;

/// API keys are small integers; Kafka's highest is below 100.
const KEYS: usize = 100;

pub(crate) struct Metrics {
    requests: [AtomicU64; KEYS],
    errors: [AtomicU64; KEYS],
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
    requests: Vec<u64>,
    errors: Vec<u64>,
    bytes_in: u64,
    bytes_out: u64,
    records_in: u64,
    protocol_errors: u64,
    at: Option<Instant>,
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics {
            requests: std::array::from_fn(|_| AtomicU64::new(0)),
            errors: std::array::from_fn(|_| AtomicU64::new(0)),
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
                    let name = ApiKey::try_from(k as i16)
                        .map(|a| format!("{a:?}"))
                        .unwrap_or_else(|_| format!("api{k}"));
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
