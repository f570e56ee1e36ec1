//! `sluice topic … --bootstrap host:port`: the topic commands against a
//! running broker (`sluice broker` or any Kafka cluster) instead of a data
//! directory, through librdkafka's admin API (`rdkafka`).

use std::time::Duration;

use anyhow::{Context, bail};
use rdkafka::ClientConfig;
use rdkafka::admin::{
    AdminClient, AdminOptions, NewPartitions, NewTopic, ResourceSpecifier, TopicReplication,
};
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};

use crate::log::TopicConfig;

const TIMEOUT: Duration = Duration::from_secs(15);

/// librdkafka logs every failed connection attempt many times over; a
/// one-shot command reports the final error once, with a hint, instead.
struct Quiet;

impl ClientContext for Quiet {
    fn log(&self, _level: RDKafkaLogLevel, _fac: &str, _log_message: &str) {}
    fn error(&self, _error: rdkafka::error::KafkaError, _reason: &str) {}
}

impl ConsumerContext for Quiet {}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn client_config(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap)
        .set("socket.timeout.ms", "10000")
        .set("log_level", "3");
    c
}

fn admin(bootstrap: &str) -> anyhow::Result<AdminClient<Quiet>> {
    client_config(bootstrap)
        .create_with_context(Quiet)
        .with_context(|| format!("cannot create a Kafka admin client for {bootstrap}"))
}

fn options() -> AdminOptions {
    AdminOptions::new().operation_timeout(Some(TIMEOUT))
}

fn unreachable_hint(bootstrap: &str) -> String {
    format!("is a broker running at {bootstrap}? (start one with `sluice broker`)")
}

pub fn create(
    bootstrap: &str,
    name: &str,
    partitions: i64,
    config: &TopicConfig,
    if_not_exists: bool,
) -> anyhow::Result<()> {
    let partitions = i32::try_from(partitions).context("--partitions is out of range")?;
    // Only what differs from the defaults is sent, so a real Kafka cluster
    // applies its own broker defaults to the rest.
    let defaults = TopicConfig::default().entries();
    let entries: Vec<(&str, String)> = config
        .entries()
        .into_iter()
        .filter(|(k, v)| !defaults.iter().any(|(dk, dv)| dk == k && dv == v))
        .collect();
    let mut topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
    for (k, v) in &entries {
        topic = topic.set(k, v);
    }
    let admin = admin(bootstrap)?;
    let results = runtime()?
        .block_on(admin.create_topics([&topic], &options()))
        .with_context(|| unreachable_hint(bootstrap))?;
    for r in results {
        match r {
            Ok(_) => println!("Created topic {name} with {partitions} partition(s)."),
            Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) if if_not_exists => {}
            Err((t, code)) => bail!("cannot create topic {t:?}: {code}"),
        }
    }
    Ok(())
}

pub fn delete(bootstrap: &str, name: &str) -> anyhow::Result<()> {
    let admin = admin(bootstrap)?;
    let results = runtime()?
        .block_on(admin.delete_topics(&[name], &options()))
        .with_context(|| unreachable_hint(bootstrap))?;
    for r in results {
        if let Err((t, code)) = r {
            bail!("cannot delete topic {t:?}: {code}");
        }
    }
    println!("Deleted topic {name}.");
    Ok(())
}

pub fn add_partitions(bootstrap: &str, name: &str, total: i64) -> anyhow::Result<()> {
    let total = usize::try_from(total).context("--partitions must be positive")?;
    let admin = admin(bootstrap)?;
    let results = runtime()?
        .block_on(admin.create_partitions([&NewPartitions::new(name, total)], &options()))
        .with_context(|| unreachable_hint(bootstrap))?;
    for r in results {
        if let Err((t, code)) = r {
            bail!("cannot grow topic {t:?} to {total} partitions: {code}");
        }
    }
    println!("Topic {name} now has {total} partitions.");
    Ok(())
}

/// A topic's configs as DescribeConfigs reports them.
fn topic_configs(
    rt: &tokio::runtime::Runtime,
    admin: &AdminClient<Quiet>,
    bootstrap: &str,
    name: &str,
) -> anyhow::Result<rdkafka::admin::ConfigResource> {
    rt.block_on(admin.describe_configs([&ResourceSpecifier::Topic(name)], &options()))
        .with_context(|| unreachable_hint(bootstrap))?
        .into_iter()
        .next()
        .context("DescribeConfigs answered nothing")?
        .map_err(|code| anyhow::anyhow!("cannot describe topic {name:?}: {code}"))
}

/// Changes a topic's configs through AlterConfigs, the API librdkafka's
/// admin client speaks. It replaces the topic's whole config set, so the
/// configs set on the topic now (DescribeConfigs, not defaults) are sent
/// along, minus `resets`, plus `sets`.
pub fn alter_configs(
    bootstrap: &str,
    name: &str,
    sets: &[(String, String)],
    resets: &[String],
) -> anyhow::Result<()> {
    let admin = admin(bootstrap)?;
    let rt = runtime()?;
    let resource = topic_configs(&rt, &admin, bootstrap, name)?;
    let mut entries: std::collections::BTreeMap<String, String> = resource
        .entries
        .iter()
        .filter(|e| !e.is_default && !e.is_read_only)
        .filter_map(|e| Some((e.name.clone(), e.value.clone()?)))
        .collect();
    for k in resets {
        entries.remove(k);
    }
    for (k, v) in sets {
        entries.insert(k.clone(), v.clone());
    }
    let mut change = rdkafka::admin::AlterConfig::new(ResourceSpecifier::Topic(name));
    for (k, v) in &entries {
        change = change.set(k, v);
    }
    let results = rt
        .block_on(admin.alter_configs([&change], &options()))
        .with_context(|| unreachable_hint(bootstrap))?;
    for r in results {
        if let Err((_, code)) = r {
            bail!("cannot alter the configs of topic {name:?}: {code}");
        }
    }
    // rust-rdkafka reports every resource of an AlterConfigs answer as a
    // success, whatever its error code: check that the change took.
    let now = topic_configs(&rt, &admin, bootstrap, name)?;
    for (k, v) in sets {
        let held = now
            .entries
            .iter()
            .find(|e| &e.name == k)
            .and_then(|e| e.value.clone())
            .unwrap_or_default();
        if !same_config_value(k, v, &held) {
            bail!(
                "cannot alter the configs of topic {name:?}: the broker kept {k}={held} instead of {v} (it refused the value; its log says why)"
            );
        }
    }
    println!("Altered the configs of topic {name}.");
    Ok(())
}

/// Whether two spellings of a config's value mean the same (`delete,compact`
/// and `compact,delete`); configs Sluice does not know compare as text.
fn same_config_value(name: &str, a: &str, b: &str) -> bool {
    let parse = |v: &str| {
        let mut c = TopicConfig::default();
        c.set(name, v).ok()?;
        c.entries()
            .into_iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
    };
    match (parse(a), parse(b)) {
        (Some(x), Some(y)) => x == y,
        _ => a.trim() == b.trim(),
    }
}

/// DeleteRecords through the admin API: each partition's new log start.
pub fn delete_records(
    bootstrap: &str,
    name: &str,
    partitions: &[i32],
    before: super::topic::Before,
) -> anyhow::Result<()> {
    let ids: Vec<i32> = if partitions.is_empty() {
        let md = consumer(bootstrap)?
            .fetch_metadata(Some(name), TIMEOUT)
            .with_context(|| unreachable_hint(bootstrap))?;
        let topic = md
            .topics()
            .iter()
            .find(|t| t.name() == name)
            .filter(|t| t.error().is_none())
            .with_context(|| format!("unknown topic {name:?}"))?;
        topic.partitions().iter().map(|p| p.id()).collect()
    } else {
        partitions.to_vec()
    };
    let offset = match before {
        super::topic::Before::Offset(o) => rdkafka::Offset::Offset(o),
        super::topic::Before::End => rdkafka::Offset::End,
    };
    let mut tpl = rdkafka::TopicPartitionList::new();
    for &id in &ids {
        tpl.add_partition_offset(name, id, offset)
            .with_context(|| format!("partition {id}"))?;
    }
    let result = runtime()?
        .block_on(admin(bootstrap)?.delete_records(&tpl, &options()))
        .with_context(|| unreachable_hint(bootstrap))?;
    let mut failed = Vec::new();
    for e in result.elements() {
        match (e.error(), e.offset()) {
            (Ok(()), rdkafka::Offset::Offset(start)) => {
                println!("{name}-{}: log start offset {start}", e.partition())
            }
            (Ok(()), other) => println!("{name}-{}: log start offset {other:?}", e.partition()),
            (Err(err), _) => failed.push(format!("{name}-{}: {err}", e.partition())),
        }
    }
    if !failed.is_empty() {
        bail!("cannot delete records of {}", failed.join("; "));
    }
    Ok(())
}

fn consumer(bootstrap: &str) -> anyhow::Result<BaseConsumer<Quiet>> {
    client_config(bootstrap)
        .set("group.id", "sluice-cli")
        .create_with_context(Quiet)
        .with_context(|| format!("cannot create a Kafka client for {bootstrap}"))
}

pub fn list(bootstrap: &str) -> anyhow::Result<()> {
    let md = consumer(bootstrap)?
        .fetch_metadata(None, TIMEOUT)
        .with_context(|| unreachable_hint(bootstrap))?;
    let mut names: Vec<&str> = md.topics().iter().map(|t| t.name()).collect();
    names.sort_unstable();
    for n in names {
        println!("{n}");
    }
    Ok(())
}

pub fn describe(bootstrap: &str, name: &str) -> anyhow::Result<()> {
    let consumer = consumer(bootstrap)?;
    let md = consumer
        .fetch_metadata(Some(name), TIMEOUT)
        .with_context(|| unreachable_hint(bootstrap))?;
    let Some(topic) = md.topics().iter().find(|t| t.name() == name) else {
        bail!("unknown topic {name:?} at {bootstrap}");
    };
    if let Some(e) = topic.error() {
        bail!("cannot describe topic {name:?}: {:?}", e);
    }
    println!(
        "Topic: {name}  Partitions: {}  (broker {bootstrap})",
        topic.partitions().len()
    );
    let admin = admin(bootstrap)?;
    let configs = runtime()?
        .block_on(admin.describe_configs([&ResourceSpecifier::Topic(name)], &options()))
        .with_context(|| unreachable_hint(bootstrap))?;
    for c in configs.into_iter().flatten() {
        let mut entries: Vec<String> = c
            .entries
            .iter()
            .map(|e| format!("{}={}", e.name, e.value.as_deref().unwrap_or("")))
            .collect();
        entries.sort();
        println!("Configs: {}", entries.join(" "));
    }
    println!(
        "{:>9}  {:>12}  {:>12}  {:>12}  {:>6}",
        "Partition", "LogStart", "LogEnd", "Records", "Leader"
    );
    for p in topic.partitions() {
        let (low, high) = consumer
            .fetch_watermarks(name, p.id(), TIMEOUT)
            .with_context(|| format!("cannot read the offsets of {name}-{}", p.id()))?;
        println!(
            "{:>9}  {:>12}  {:>12}  {:>12}  {:>6}",
            p.id(),
            low,
            high,
            high - low,
            p.leader()
        );
    }
    Ok(())
}
