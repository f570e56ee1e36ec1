//! A read-only status snapshot of the running broker, for the web console's
//! `/api/broker` document and the Prometheus `/metrics` endpoint (both
//! rendered elsewhere): counters, per-API request latency, rates over the
//! last ~10 s, every topic's partitions, and every consumer group with its
//! lag and a Burrow-style status per committed partition.
//!
//! Owns the sampler that [`crate::server`] spawns next to its other
//! background tasks: every `status_sample_interval` it records the broker
//! counters, each partition's log end and fetched bytes (the rates are taken
//! between the oldest and newest of these samples), and a window of the last
//! [`COMMIT_WINDOW`] commits per group partition (what [`evaluate`] judges).
//! The request paths only bump the counters in [`crate::metrics`]; all
//! aggregation happens here, in the sampler and in
//! [`BrokerStatus::snapshot`].
//!
//! It never changes a topic, a group, an offset or a transaction, never
//! answers a request, and never holds a lock of its own while it reads the
//! store or the coordinator.

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;
use uuid::Uuid;

use sluice_log::common::{mutex, now_ms};

use crate::blocking::run_blocking;
use crate::groups::view::{GroupView, MemberView};
use crate::metrics::{self, HistogramCounts, KEYS, LATENCY_BOUNDS_NANOS};
use crate::state::Shared;

/// Rates are taken between samples at least this far apart (the oldest
/// sample is dropped only once the next one is this old).
const RATE_WINDOW: Duration = Duration::from_secs(10);
/// Burrow's default window: the last 10 commits of a group partition.
pub(crate) const COMMIT_WINDOW: usize = 10;
/// Bounds the samples kept when the sample interval is configured tiny.
const MAX_SAMPLES: usize = 1000;
/// `tokio::time::interval` refuses a zero period.
const MIN_SAMPLE_INTERVAL: Duration = Duration::from_millis(10);

/// The whole `/api/broker` document.
#[derive(Debug, Clone, Serialize)]
pub struct BrokerSnapshot {
    pub at_ms: i64,
    pub started_ms: i64,
    pub listen: String,
    pub cluster_id: String,
    pub connections_open: u64,
    pub connections_total: u64,
    pub protocol_errors: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub records_in: u64,
    pub bytes_in_per_s: f64,
    pub bytes_out_per_s: f64,
    pub records_in_per_s: f64,
    /// APIs with at least one request, by key.
    pub apis: Vec<ApiStatus>,
    /// Every topic, internal ones too, by name.
    pub topics: Vec<TopicStatus>,
    /// Every group the coordinator knows, by id.
    pub groups: Vec<GroupStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ApiStatus {
    /// The API key's name (`Produce`, `Fetch`, …).
    pub api: String,
    pub key: i16,
    pub requests: u64,
    /// Responses that carried at least one error code.
    pub errors: u64,
    pub requests_per_s: f64,
    pub latency: LatencyHistogram,
}

/// Request latency, from the decoded request to the encoded response.
#[derive(Debug, Clone, Serialize)]
pub struct LatencyHistogram {
    /// Requests measured (those that closed the connection are not): the
    /// `+Inf` bucket.
    pub count: u64,
    pub sum_seconds: f64,
    /// Cumulative, by increasing bound (0.0005 s to 10 s).
    pub buckets: Vec<LatencyBucket>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LatencyBucket {
    /// Upper bound in seconds, inclusive.
    pub le: f64,
    /// Requests that took at most `le`.
    pub count: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct TopicStatus {
    pub name: String,
    /// `delete`, `compact` or `compact,delete`.
    pub cleanup_policy: String,
    pub partitions: Vec<PartitionStatus>,
}

#[derive(Debug, Clone, Serialize)]
pub struct PartitionStatus {
    pub partition: i32,
    pub log_start: i64,
    /// The high-water mark.
    pub log_end: i64,
    pub last_stable: i64,
    pub bytes: u64,
    pub segments: u64,
    /// How fast the log end moved (transaction markers count as records).
    pub produced_records_per_s: f64,
    /// Record bytes fetch responses carried since the broker started.
    pub fetched_bytes: u64,
    pub fetched_bytes_per_s: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct GroupStatus {
    pub group: String,
    /// Kafka's names: `Empty`, `PreparingRebalance`, `CompletingRebalance`,
    /// `Stable`.
    pub state: String,
    /// Empty for a group known only by its committed offsets.
    pub protocol_type: String,
    /// The chosen assignor (`range`, …); empty until a join phase chose one.
    pub protocol: String,
    pub generation: i32,
    pub members: Vec<MemberStatus>,
    /// Sum of the partitions' lag.
    pub lag: i64,
    /// The worst partition status (OK when there is none).
    pub status: LagStatus,
    pub partitions: Vec<GroupPartition>,
}

#[derive(Debug, Clone, Serialize)]
pub struct MemberStatus {
    pub member_id: String,
    pub client_id: String,
    pub client_host: String,
    /// Decoded for `consumer` groups; empty when the group is of another
    /// protocol type, is mid-rebalance, or the bytes do not decode.
    pub assignment: Vec<MemberAssignment>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemberAssignment {
    pub topic: String,
    pub partitions: Vec<i32>,
}

/// One committed offset of a group.
#[derive(Debug, Clone, Serialize)]
pub struct GroupPartition {
    pub topic: String,
    pub partition: i32,
    pub committed: i64,
    /// The high-water mark; -1 when the partition no longer exists.
    pub log_end: i64,
    /// `max(0, log_end - committed)`; 0 when the partition no longer exists.
    pub lag: i64,
    /// When the commit was made.
    pub last_commit_ms: i64,
    /// The member whose assignment holds the partition.
    pub owner: Option<String>,
    pub status: LagStatus,
}

/// Burrow's partition status. Ordered from best to worst: a group shows its
/// worst partition's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum LagStatus {
    /// Keeping up, or catching up.
    Ok,
    /// Committing, but the lag is not shrinking.
    Warn,
    /// The committed offset went backwards (a reset or a replay).
    Rewind,
    /// Committing the same offset while lagging: alive but stuck.
    Stall,
    /// No commit for longer than the window spans, while lagging.
    Stop,
}

/// One commit as the sampler saw it: Burrow's stored offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CommitSample {
    pub offset: i64,
    /// The commit's own timestamp.
    pub timestamp_ms: i64,
    /// Log end minus offset when the sampler first saw the commit (never
    /// negative).
    pub lag: i64,
}

/// Burrow's evaluation of a partition's commit window (oldest first), at
/// `now_ms`. In order:
/// 1. lag 0 anywhere in the window: OK (the consumer caught up within it);
/// 2. an offset lower than the one before it: REWIND;
/// 3. no commit for longer than the window spans (newest − oldest): STOP;
/// 4. the same offset over the whole window: STALL;
/// 5. offsets moving, but the lag never shrinking: WARN;
/// 6. otherwise OK.
///
/// Rules 3–5 need a trend, so a window of fewer than two commits is OK
/// (with a single commit the span is zero and every later moment would be
/// a STOP). Burrow's exception for a consumer at the log end (not in error
/// whatever its window says) needs the current lag, so
/// [`BrokerStatus::snapshot`] applies it.
pub(crate) fn evaluate(window: &[CommitSample], now_ms: i64) -> LagStatus {
    if window.len() < 2 || window.iter().any(|c| c.lag == 0) {
        return LagStatus::Ok;
    }
    let pairs = || window.windows(2).map(|w| (w[0], w[1]));
    if pairs().any(|(a, b)| b.offset < a.offset) {
        return LagStatus::Rewind;
    }
    let (oldest, newest) = (window[0], window[window.len() - 1]);
    if now_ms - newest.timestamp_ms > newest.timestamp_ms - oldest.timestamp_ms {
        return LagStatus::Stop;
    }
    if pairs().all(|(a, b)| a.offset == b.offset) {
        return LagStatus::Stall;
    }
    if pairs().all(|(a, b)| b.lag >= a.lag) {
        return LagStatus::Warn;
    }
    LagStatus::Ok
}

/// What one sample records of a partition.
#[derive(Debug, Clone, Copy)]
struct PartitionCounters {
    log_end: i64,
    fetched: u64,
}

#[derive(Clone)]
struct Sample {
    at: Instant,
    metrics: metrics::Snapshot,
    /// By topic id and partition.
    partitions: HashMap<(Uuid, i32), PartitionCounters>,
}

/// (group, topic, partition)
type CommitKey = (String, String, i32);

/// What the sampler keeps between snapshots.
#[derive(Default)]
struct History {
    /// Oldest first, spanning a little over [`RATE_WINDOW`].
    samples: VecDeque<Sample>,
    /// The last [`COMMIT_WINDOW`] distinct commits of every committed group
    /// partition, oldest first.
    commits: HashMap<CommitKey, VecDeque<CommitSample>>,
}

/// Rates between the oldest and the newest sample.
struct Rates<'a> {
    span: Option<(&'a Sample, &'a Sample, f64)>,
}

impl<'a> Rates<'a> {
    fn new(samples: &'a VecDeque<Sample>) -> Rates<'a> {
        let span = samples
            .front()
            .zip(samples.back())
            .map(|(old, new)| (old, new, (new.at - old.at).as_secs_f64()))
            .filter(|(_, _, secs)| *secs > 0.0);
        Rates { span }
    }

    fn of(&self, value: impl Fn(&Sample) -> Option<u64>) -> f64 {
        self.span
            .map_or(0.0, |(old, new, secs)| match (value(old), value(new)) {
                (Some(a), Some(b)) => b.saturating_sub(a) as f64 / secs,
                _ => 0.0,
            })
    }

    fn of_partition(&self, key: (Uuid, i32), value: impl Fn(&PartitionCounters) -> u64) -> f64 {
        self.of(|s| s.partitions.get(&key).map(&value))
    }
}

/// A handle on the running broker's status: cheap to clone, usable from any
/// thread. After the broker stopped it still shows the last state, and it
/// keeps the broker's shared state (the closed store included) alive:
/// drop every clone before opening the data directory again in the same
/// process.
#[derive(Clone)]
pub struct BrokerStatus {
    shared: Arc<Shared>,
    history: Arc<Mutex<History>>,
    started_ms: i64,
    listen: SocketAddr,
}

impl BrokerStatus {
    pub(crate) fn new(shared: Arc<Shared>, listen: SocketAddr) -> BrokerStatus {
        BrokerStatus {
            shared,
            history: Arc::default(),
            started_ms: now_ms(),
            listen,
        }
    }

    /// Records a sample every `status_sample_interval` until shutdown.
    pub(crate) async fn run_sampler(self, mut shutdown: watch::Receiver<bool>) {
        let period = self
            .shared
            .config
            .status_sample_interval
            .max(MIN_SAMPLE_INTERVAL);
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.wait_for(|stop| *stop) => return,
                _ = tick.tick() => {}
            }
            let status = self.clone();
            // A failed sample only leaves a gap in the rates.
            if let Err(e) = run_blocking("status sample", move || status.sample()).await {
                tracing::warn!("{e}");
            }
        }
    }

    /// One sample: counters, partition log ends and fetched bytes, and any
    /// new commit of every group partition. Reads partition offsets from
    /// memory (no file I/O) and takes the offset map's lock once.
    pub(crate) fn sample(&self) {
        let metrics = &self.shared.metrics;
        let counters = metrics.snapshot();
        let topics = self.shared.topics.store.topics();
        let mut partitions = HashMap::new();
        let mut log_ends: HashMap<(&str, i32), i64> = HashMap::new();
        for topic in &topics {
            for p in topic.partitions() {
                let index = partition_index(p.id());
                let log_end = p.high_watermark();
                partitions.insert(
                    (topic.id(), index),
                    PartitionCounters {
                        log_end,
                        fetched: metrics.fetched.get(topic.id(), index),
                    },
                );
                log_ends.insert((topic.name(), index), log_end);
            }
        }
        let live: HashSet<Uuid> = topics.iter().map(|t| t.id()).collect();
        metrics.fetched.retain_topics(|id| live.contains(&id));
        let commits = self.shared.groups.commit_points();

        let mut history = mutex(&self.history);
        let at = Instant::now();
        history.samples.push_back(Sample {
            at,
            metrics: counters,
            partitions,
        });
        // The oldest goes once the next one spans the window by itself.
        while history.samples.len() > MAX_SAMPLES
            || (history.samples.len() > 2
                && history
                    .samples
                    .get(1)
                    .is_some_and(|s| at - s.at >= RATE_WINDOW))
        {
            history.samples.pop_front();
        }
        let mut seen = HashSet::new();
        for (group, points) in commits {
            for point in points {
                let lag = log_ends
                    .get(&(point.topic.as_str(), point.partition))
                    .map_or(0, |end| (end - point.offset).max(0));
                let sample = CommitSample {
                    offset: point.offset,
                    timestamp_ms: point.commit_timestamp_ms,
                    lag,
                };
                let key = (group.clone(), point.topic, point.partition);
                let window = history.commits.entry(key.clone()).or_default();
                if window.back().is_none_or(|last| !same_commit(last, &sample)) {
                    window.push_back(sample);
                    if window.len() > COMMIT_WINDOW {
                        window.pop_front();
                    }
                }
                seen.insert(key);
            }
        }
        // Offsets of deleted topics are forgotten by the coordinator.
        history.commits.retain(|key, _| seen.contains(key));
    }

    /// The status now. Takes the store's and the coordinator's locks
    /// briefly and reads each partition's segment list (no file I/O); run
    /// it on a blocking thread.
    pub fn snapshot(&self) -> BrokerSnapshot {
        let at_ms = now_ms();
        let metrics = &self.shared.metrics;
        let now = metrics.snapshot();
        // Copy what the rates and the lag windows need, so that the store
        // and the coordinator are read without the history locked.
        let (edges, windows) = {
            let history = mutex(&self.history);
            let edges: VecDeque<Sample> = history
                .samples
                .front()
                .into_iter()
                .chain(history.samples.back().filter(|_| history.samples.len() > 1))
                .cloned()
                .collect();
            (edges, history.commits.clone())
        };
        let rates = Rates::new(&edges);
        let apis = (0..KEYS)
            .filter(|&k| now.requests.get(k).is_some_and(|&n| n > 0))
            .map(|k| ApiStatus {
                api: metrics::api_name(k),
                key: i16::try_from(k).unwrap_or(i16::MAX),
                requests: now.requests[k],
                errors: now.errors.get(k).copied().unwrap_or(0),
                requests_per_s: rates.of(|s| s.metrics.requests.get(k).copied()),
                latency: latency_histogram(&metrics.latency_of(k)),
            })
            .collect();
        let topics = self.topics(&rates);
        let groups = self.groups(&windows, at_ms);
        BrokerSnapshot {
            at_ms,
            started_ms: self.started_ms,
            listen: self.listen.to_string(),
            cluster_id: self.shared.cluster.cluster_id.clone(),
            connections_open: metrics.connections_open.load(Relaxed),
            connections_total: metrics.connections_total.load(Relaxed),
            protocol_errors: now.protocol_errors,
            bytes_in: now.bytes_in,
            bytes_out: now.bytes_out,
            records_in: now.records_in,
            bytes_in_per_s: rates.of(|s| Some(s.metrics.bytes_in)),
            bytes_out_per_s: rates.of(|s| Some(s.metrics.bytes_out)),
            records_in_per_s: rates.of(|s| Some(s.metrics.records_in)),
            apis,
            topics,
            groups,
        }
    }

    fn topics(&self, rates: &Rates<'_>) -> Vec<TopicStatus> {
        let fetched = &self.shared.metrics.fetched;
        let mut topics = self.shared.topics.store.topics();
        topics.sort_by(|a, b| a.name().cmp(b.name()));
        topics
            .iter()
            .map(|topic| {
                let id = topic.id();
                let partitions = topic
                    .partitions()
                    .iter()
                    .map(|p| {
                        let info = p.info();
                        let index = partition_index(info.partition);
                        let key = (id, index);
                        PartitionStatus {
                            partition: index,
                            log_start: info.log_start_offset,
                            log_end: info.high_watermark,
                            last_stable: p.last_stable_offset(),
                            bytes: info.size_bytes,
                            segments: info.segments as u64,
                            produced_records_per_s: rates
                                .of_partition(key, |c| c.log_end.max(0) as u64),
                            fetched_bytes: fetched.get(id, index),
                            fetched_bytes_per_s: rates.of_partition(key, |c| c.fetched),
                        }
                    })
                    .collect();
                TopicStatus {
                    name: topic.name().to_owned(),
                    cleanup_policy: topic.config().cleanup_policy.to_string(),
                    partitions,
                }
            })
            .collect()
    }

    fn groups(
        &self,
        windows: &HashMap<CommitKey, VecDeque<CommitSample>>,
        at_ms: i64,
    ) -> Vec<GroupStatus> {
        let store = &self.shared.topics.store;
        self.shared
            .groups
            .view()
            .into_iter()
            .map(|g| {
                let members: Vec<MemberStatus> =
                    g.members.iter().map(|m| member_status(&g, m)).collect();
                let owners: HashMap<(&str, i32), &str> = members
                    .iter()
                    .flat_map(|m| {
                        m.assignment.iter().flat_map(move |a| {
                            a.partitions
                                .iter()
                                .map(move |&p| ((a.topic.as_str(), p), m.member_id.as_str()))
                        })
                    })
                    .collect();
                let partitions: Vec<GroupPartition> = g
                    .offsets
                    .iter()
                    .map(|c| {
                        let log_end = store
                            .partition(&c.topic, c.partition)
                            .map_or(-1, |p| p.high_watermark());
                        let lag = if log_end < 0 {
                            0
                        } else {
                            (log_end - c.offset).max(0)
                        };
                        // The sampler may not have seen the latest commit
                        // yet: judge it too, with its lag as of now.
                        let newest = CommitSample {
                            offset: c.offset,
                            timestamp_ms: c.commit_timestamp_ms,
                            lag,
                        };
                        let mut window: Vec<CommitSample> = windows
                            .get(&(g.id.clone(), c.topic.clone(), c.partition))
                            .map(|w| w.iter().copied().collect())
                            .unwrap_or_default();
                        if window.last().is_none_or(|last| !same_commit(last, &newest)) {
                            window.push(newest);
                        }
                        let skip = window.len().saturating_sub(COMMIT_WINDOW);
                        // Burrow: a consumer at the log end is never in
                        // error, whatever its window says.
                        let status = if lag == 0 {
                            LagStatus::Ok
                        } else {
                            evaluate(&window[skip..], at_ms)
                        };
                        GroupPartition {
                            topic: c.topic.clone(),
                            partition: c.partition,
                            committed: c.offset,
                            log_end,
                            lag,
                            last_commit_ms: c.commit_timestamp_ms,
                            owner: owners
                                .get(&(c.topic.as_str(), c.partition))
                                .map(|m| (*m).to_owned()),
                            status,
                        }
                    })
                    .collect();
                GroupStatus {
                    lag: partitions.iter().map(|p| p.lag).sum(),
                    status: partitions
                        .iter()
                        .map(|p| p.status)
                        .max()
                        .unwrap_or(LagStatus::Ok),
                    group: g.id.clone(),
                    state: g.state.to_owned(),
                    protocol_type: g.protocol_type.clone(),
                    protocol: g.protocol.clone(),
                    generation: g.generation,
                    members,
                    partitions,
                }
            })
            .collect()
    }
}

/// A second sample of the same commit (Burrow stores a commit once).
fn same_commit(a: &CommitSample, b: &CommitSample) -> bool {
    a.offset == b.offset && a.timestamp_ms == b.timestamp_ms
}

/// Partition ids are stored unsigned but Kafka's are `i32`; the store
/// creates at most `i32::MAX` of them.
fn partition_index(id: u32) -> i32 {
    i32::try_from(id).unwrap_or(i32::MAX)
}

fn latency_histogram(h: &HistogramCounts) -> LatencyHistogram {
    let mut cumulative = 0;
    let buckets = LATENCY_BOUNDS_NANOS
        .iter()
        .zip(&h.buckets)
        .map(|(&bound, &n)| {
            cumulative += n;
            LatencyBucket {
                le: bound as f64 / 1e9,
                count: cumulative,
            }
        })
        .collect();
    LatencyHistogram {
        count: h.count(),
        sum_seconds: h.sum_seconds,
        buckets,
    }
}

fn member_status(group: &GroupView, m: &MemberView) -> MemberStatus {
    let assignment = if group.protocol_type == "consumer" {
        decode_assignment(&m.assignment).unwrap_or_default()
    } else {
        Vec::new()
    };
    MemberStatus {
        member_id: m.id.clone(),
        client_id: m.client_id.clone(),
        client_host: m.client_host.clone(),
        assignment,
    }
}

/// The consumer protocol's assignment (Kafka's `ConsumerProtocolAssignment`:
/// version, then topics with their partitions, then user data), or `None`
/// when the bytes are not one. Read by hand rather than with
/// `kafka-protocol`'s decoder, which reserves room for as many elements as
/// the bytes claim: these bytes are whatever a group leader sent, and a
/// claimed count of two billion must not become an allocation. Every
/// version (0–3, and later ones, which only append fields) starts the same.
fn decode_assignment(bytes: &[u8]) -> Option<Vec<MemberAssignment>> {
    let mut r = bytes;
    if take_i16(&mut r)? < 0 {
        return None;
    }
    let topics = usize::try_from(take_i32(&mut r)?).ok()?;
    let mut out = Vec::new();
    for _ in 0..topics {
        let len = usize::try_from(take_i16(&mut r)?).ok()?;
        let topic = std::str::from_utf8(take(&mut r, len)?).ok()?.to_owned();
        let count = usize::try_from(take_i32(&mut r)?).ok()?;
        // Each partition takes four bytes: what is left bounds the count.
        let mut partitions = Vec::with_capacity(count.min(r.len() / 4));
        for _ in 0..count {
            partitions.push(take_i32(&mut r)?);
        }
        out.push(MemberAssignment { topic, partitions });
    }
    Some(out)
}

fn take<'a>(r: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
    if r.len() < n {
        return None;
    }
    let (head, tail) = r.split_at(n);
    *r = tail;
    Some(head)
}

fn take_i16(r: &mut &[u8]) -> Option<i16> {
    take(r, 2).map(|b| i16::from_be_bytes([b[0], b[1]]))
}

fn take_i32(r: &mut &[u8]) -> Option<i32> {
    take(r, 4).map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

#[cfg(test)]
mod tests;
