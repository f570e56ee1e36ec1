//! `/metrics`: a job's or a broker's numbers in the OpenMetrics text format
//! Prometheus scrapes, encoded by `prometheus-client` from one snapshot per
//! scrape. Names follow Prometheus's conventions (`_total` counters,
//! `_seconds` histograms); consumer-group lag uses kafka-lag-exporter's
//! names where the meaning is the same, so its dashboards and alerts
//! carry over.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;

use sluice_broker::{BrokerSnapshot, LagStatus};
use sluice_engine::driver::monitor::{DurationHistogram, JobSnapshot};

type Labels = Vec<(&'static str, String)>;
type Encoded = Result<(), std::fmt::Error>;

fn gauges(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Labels, f64)>,
) -> Encoded {
    let mut metric = enc.encode_descriptor(name, help, None, MetricType::Gauge)?;
    for (labels, value) in samples {
        ConstGauge::new(value).encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A counter family; `name` without `_total`, which the encoder adds.
fn counters(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Labels, u64)>,
) -> Encoded {
    let mut metric = enc.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in samples {
        ConstCounter::new(value).encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// A histogram family from cumulative `(upper bound, count)` buckets.
fn histograms(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (Labels, f64, u64, Vec<(f64, u64)>)>,
) -> Encoded {
    let mut metric = enc.encode_descriptor(name, help, None, MetricType::Histogram)?;
    for (labels, sum, count, cumulative) in samples {
        // The encoder sums the buckets itself: hand it each bucket's own
        // count, and the rest to +Inf.
        let mut below = 0;
        let mut buckets: Vec<(f64, u64)> = cumulative
            .iter()
            .map(|&(le, n)| {
                let own = n.saturating_sub(below);
                below = below.max(n);
                (le, own)
            })
            .collect();
        // The encoder writes `f64::MAX` as `+Inf`.
        buckets.push((f64::MAX, count.saturating_sub(below)));
        metric
            .encode_family(&labels)?
            .encode_histogram::<prometheus_client::encoding::NoLabelSet>(
                sum, count, &buckets, None,
            )?;
    }
    Ok(())
}

fn duration(labels: Labels, h: &DurationHistogram) -> (Labels, f64, u64, Vec<(f64, u64)>) {
    (labels, h.sum_seconds, h.count, h.cumulative())
}

/// The exposition formats `/metrics` speaks: OpenMetrics to scrapers that
/// ask for it (Prometheus does), the classic text format to the rest
/// (curl, promtool), as Prometheus's own client libraries negotiate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    OpenMetrics,
    Classic,
}

impl Format {
    /// From a request's `Accept` header.
    pub fn negotiate(accept: Option<&str>) -> Format {
        match accept {
            Some(a) if a.contains("application/openmetrics-text") => Format::OpenMetrics,
            _ => Format::Classic,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Format::OpenMetrics => "application/openmetrics-text; version=1.0.0; charset=utf-8",
            Format::Classic => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// OpenMetrics text as the classic format: a counter's `HELP` and `TYPE`
/// name its `_total` samples, and there is no `# EOF`.
fn classic(open_metrics: &str) -> String {
    let mut counters = std::collections::HashSet::new();
    for line in open_metrics.lines() {
        if let Some(name) = line
            .strip_prefix("# TYPE ")
            .and_then(|rest| rest.strip_suffix(" counter"))
        {
            counters.insert(name.to_owned());
        }
    }
    let mut out = String::with_capacity(open_metrics.len());
    for line in open_metrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let described = ["# HELP ", "# TYPE "].iter().find_map(|prefix| {
            let rest = line.strip_prefix(prefix)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{prefix}{name}_total {tail}"))
        });
        out.push_str(described.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// Encodes a registry holding one collector.
fn render(collector: impl Collector, format: Format) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(collector));
    let mut text = String::new();
    // Writing into a String cannot fail; a collector's own error would be
    // a bug in this module, shown to the scraper rather than hidden.
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &registry) {
        text = format!("# encoding failed: {e}\n# EOF\n");
    }
    match format {
        Format::OpenMetrics => text,
        Format::Classic => classic(&text),
    }
}

#[derive(Debug)]
struct JobMetrics(JobSnapshot);

/// The job's metrics: totals since the process started and the last
/// batch's gauges.
pub fn job_text(snapshot: JobSnapshot, format: Format) -> String {
    render(JobMetrics(snapshot), format)
}

impl Collector for JobMetrics {
    fn encode(&self, mut enc: DescriptorEncoder) -> Encoded {
        let s = &self.0;
        let t = &s.totals;
        let job = || vec![("job", s.job.clone())];
        counters(
            &mut enc,
            "sluice_job_batches",
            "Batches committed since the process started.",
            [(job(), t.batches)],
        )?;
        counters(
            &mut enc,
            "sluice_job_replayed_batches",
            "Batches re-run after a restart with the ranges planned before the crash.",
            [(job(), t.replayed_batches)],
        )?;
        counters(
            &mut enc,
            "sluice_job_input_rows",
            "Input records read by committed batches.",
            [(job(), t.input_rows)],
        )?;
        counters(
            &mut enc,
            "sluice_job_operator_records",
            "Records operators counted (late, bad, dead-lettered, ...), by what they counted.",
            t.counters
                .iter()
                .map(|(what, n)| (vec![("job", s.job.clone()), ("counted", what.clone())], *n)),
        )?;
        counters(
            &mut enc,
            "sluice_job_errors",
            "Errors the job reported (retried tasks, the error it stopped with).",
            [(job(), t.errors)],
        )?;
        histograms(
            &mut enc,
            "sluice_job_batch_duration_seconds",
            "Processing time of a batch, plan to commit.",
            [duration(job(), &t.processing)],
        )?;
        histograms(
            &mut enc,
            "sluice_job_batch_phase_duration_seconds",
            "Time of each phase of a batch (plan, compute, sink, commit).",
            t.phases.iter().map(|(phase, h)| {
                duration(
                    vec![("job", s.job.clone()), ("phase", (*phase).to_owned())],
                    h,
                )
            }),
        )?;
        histograms(
            &mut enc,
            "sluice_job_scheduling_delay_seconds",
            "How late a batch started after its scheduled time.",
            [duration(job(), &t.scheduling_delay)],
        )?;
        let Some(last) = s.batches.last() else {
            return Ok(());
        };
        gauges(
            &mut enc,
            "sluice_job_last_batch_id",
            "Id of the last committed batch.",
            [(job(), last.batch_id as f64)],
        )?;
        let partition = |source: &str, p: i32| {
            vec![
                ("job", s.job.clone()),
                ("topic", source.to_owned()),
                ("partition", p.to_string()),
            ]
        };
        gauges(
            &mut enc,
            "sluice_job_lag_records",
            "Records in each source partition after the last batch's range, when it was planned.",
            last.partitions
                .iter()
                .map(|p| (partition(&p.source, p.partition), p.lag as f64)),
        )?;
        gauges(
            &mut enc,
            "sluice_job_lag_seconds",
            "How long ago the first record not yet read arrived, estimated per partition.",
            last.partitions.iter().filter_map(|p| {
                p.lag_ms
                    .map(|ms| (partition(&p.source, p.partition), ms / 1000.0))
            }),
        )?;
        let operator = |name: &str, kind: &str| {
            vec![
                ("job", s.job.clone()),
                ("name", name.to_owned()),
                ("kind", kind.to_owned()),
            ]
        };
        gauges(
            &mut enc,
            "sluice_job_state_keys",
            "Keys of each result table and operator state (RocksDB's estimate).",
            last.state
                .iter()
                .map(|st| (operator(&st.name, st.kind), st.keys as f64)),
        )?;
        gauges(
            &mut enc,
            "sluice_job_state_bytes",
            "Bytes of each result table and operator state (live data and memtables).",
            last.state
                .iter()
                .map(|st| (operator(&st.name, st.kind), st.bytes as f64)),
        )?;
        let stream = |name: &str| vec![("job", s.job.clone()), ("stream", name.to_owned())];
        gauges(
            &mut enc,
            "sluice_job_watermark_seconds",
            "Event-time watermark of each stream, Unix seconds.",
            last.watermarks
                .iter()
                .map(|w| (stream(&w.stream), w.watermark_ms as f64 / 1000.0)),
        )?;
        gauges(
            &mut enc,
            "sluice_job_watermark_gap_seconds",
            "How far each stream's watermark trails the batch time.",
            last.watermarks
                .iter()
                .map(|w| (stream(&w.stream), w.gap_ms as f64 / 1000.0)),
        )?;
        Ok(())
    }
}

#[derive(Debug)]
struct BrokerMetrics(BrokerSnapshot);

/// The broker's metrics: request counters and latencies, bytes, every
/// partition's offsets and every group's lag.
pub fn broker_text(snapshot: BrokerSnapshot, format: Format) -> String {
    render(BrokerMetrics(snapshot), format)
}

/// Burrow's statuses, as exposed: one series per status, 1 for the current.
const STATUSES: [(LagStatus, &str); 5] = [
    (LagStatus::Ok, "OK"),
    (LagStatus::Warn, "WARN"),
    (LagStatus::Stall, "STALL"),
    (LagStatus::Stop, "STOP"),
    (LagStatus::Rewind, "REWIND"),
];

impl Collector for BrokerMetrics {
    fn encode(&self, mut enc: DescriptorEncoder) -> Encoded {
        let s = &self.0;
        let none = Labels::new;
        let api = |name: &str| vec![("api", name.to_owned())];
        counters(
            &mut enc,
            "sluice_broker_requests",
            "Requests handled, by Kafka API.",
            s.apis.iter().map(|a| (api(&a.api), a.requests)),
        )?;
        counters(
            &mut enc,
            "sluice_broker_request_errors",
            "Responses carrying an error code, by Kafka API.",
            s.apis.iter().map(|a| (api(&a.api), a.errors)),
        )?;
        histograms(
            &mut enc,
            "sluice_broker_request_duration_seconds",
            "Time from a request decoded to its response ready, by Kafka API (a Fetch's long poll included).",
            s.apis.iter().map(|a| {
                (
                    api(&a.api),
                    a.latency.sum_seconds,
                    a.latency.count,
                    a.latency.buckets.iter().map(|b| (b.le, b.count)).collect(),
                )
            }),
        )?;
        counters(
            &mut enc,
            "sluice_broker_bytes_in",
            "Request bytes received.",
            [(none(), s.bytes_in)],
        )?;
        counters(
            &mut enc,
            "sluice_broker_bytes_out",
            "Response bytes sent.",
            [(none(), s.bytes_out)],
        )?;
        counters(
            &mut enc,
            "sluice_broker_records_in",
            "Records produced.",
            [(none(), s.records_in)],
        )?;
        counters(
            &mut enc,
            "sluice_broker_connections",
            "Connections accepted.",
            [(none(), s.connections_total)],
        )?;
        counters(
            &mut enc,
            "sluice_broker_protocol_errors",
            "Connections closed for protocol violations.",
            [(none(), s.protocol_errors)],
        )?;
        gauges(
            &mut enc,
            "sluice_broker_connections_open",
            "Connections open now.",
            [(none(), s.connections_open as f64)],
        )?;
        let partition =
            |topic: &str, p: i32| vec![("topic", topic.to_owned()), ("partition", p.to_string())];
        let partitions = || {
            s.topics
                .iter()
                .flat_map(|t| t.partitions.iter().map(move |p| (t.name.as_str(), p)))
        };
        gauges(
            &mut enc,
            "kafka_partition_latest_offset",
            "Log end offset (high-water mark) of each partition.",
            partitions().map(|(t, p)| (partition(t, p.partition), p.log_end as f64)),
        )?;
        gauges(
            &mut enc,
            "kafka_partition_earliest_offset",
            "Log start offset of each partition.",
            partitions().map(|(t, p)| (partition(t, p.partition), p.log_start as f64)),
        )?;
        gauges(
            &mut enc,
            "sluice_partition_last_stable_offset",
            "Last stable offset (read_committed readers stop there).",
            partitions().map(|(t, p)| (partition(t, p.partition), p.last_stable as f64)),
        )?;
        gauges(
            &mut enc,
            "sluice_partition_bytes",
            "Bytes of each partition's segments.",
            partitions().map(|(t, p)| (partition(t, p.partition), p.bytes as f64)),
        )?;
        gauges(
            &mut enc,
            "sluice_partition_segments",
            "Segments of each partition.",
            partitions().map(|(t, p)| (partition(t, p.partition), p.segments as f64)),
        )?;
        let group_partitions = || {
            s.groups
                .iter()
                .flat_map(|g| g.partitions.iter().map(move |p| (g.group.as_str(), p)))
        };
        let group_partition = |group: &str, topic: &str, p: i32| {
            vec![
                ("group", group.to_owned()),
                ("topic", topic.to_owned()),
                ("partition", p.to_string()),
            ]
        };
        gauges(
            &mut enc,
            "kafka_consumergroup_group_offset",
            "Last committed offset of each group's partition.",
            group_partitions().map(|(g, p)| {
                (
                    group_partition(g, &p.topic, p.partition),
                    p.committed as f64,
                )
            }),
        )?;
        gauges(
            &mut enc,
            "kafka_consumergroup_group_lag",
            "Log end offset minus the group's committed offset, per partition.",
            group_partitions()
                .map(|(g, p)| (group_partition(g, &p.topic, p.partition), p.lag as f64)),
        )?;
        let group = |g: &str| vec![("group", g.to_owned())];
        gauges(
            &mut enc,
            "kafka_consumergroup_group_sum_lag",
            "Sum of a group's lag over its partitions.",
            s.groups.iter().map(|g| (group(&g.group), g.lag as f64)),
        )?;
        gauges(
            &mut enc,
            "kafka_consumergroup_group_max_lag",
            "Largest lag of a group's partitions.",
            s.groups.iter().map(|g| {
                let max = g.partitions.iter().map(|p| p.lag).max().unwrap_or(0);
                (group(&g.group), max as f64)
            }),
        )?;
        gauges(
            &mut enc,
            "sluice_consumergroup_members",
            "Members of each group.",
            s.groups
                .iter()
                .map(|g| (group(&g.group), g.members.len() as f64)),
        )?;
        gauges(
            &mut enc,
            "sluice_consumergroup_status",
            "Burrow's evaluation of each group over its last commits: 1 for the current status.",
            s.groups.iter().flat_map(|g| {
                STATUSES.iter().map(move |(status, name)| {
                    (
                        vec![("group", g.group.clone()), ("status", (*name).to_owned())],
                        f64::from(u8::from(g.status == *status)),
                    )
                })
            }),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_text_names_counters_by_their_samples() {
        let open = "# HELP a_requests Requests.\n# TYPE a_requests counter\na_requests_total 3\n# HELP b Bytes.\n# TYPE b gauge\nb 1\n# EOF\n";
        assert_eq!(
            classic(open),
            "# HELP a_requests_total Requests.\n# TYPE a_requests_total counter\na_requests_total 3\n# HELP b Bytes.\n# TYPE b gauge\nb 1\n"
        );
    }

    #[test]
    fn histogram_buckets_are_exposed_cumulative_once() {
        #[derive(Debug)]
        struct One;
        impl Collector for One {
            fn encode(&self, mut enc: DescriptorEncoder) -> Encoded {
                histograms(
                    &mut enc,
                    "d_seconds",
                    "D.",
                    [(Labels::new(), 1.5, 5, vec![(0.1, 2), (1.0, 4)])],
                )
            }
        }
        let text = render(One, Format::Classic);
        assert!(text.contains("d_seconds_bucket{le=\"0.1\"} 2\n"), "{text}");
        assert!(text.contains("d_seconds_bucket{le=\"1.0\"} 4\n"), "{text}");
        assert!(text.contains("d_seconds_bucket{le=\"+Inf\"} 5\n"), "{text}");
        assert!(text.contains("d_seconds_count{} 5\n"), "{text}");
    }
}
