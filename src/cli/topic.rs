//! `sluice topic create|list|describe|alter|delete|retention`, on a data
//! directory or, with `--bootstrap host:port`, on a running broker.

use anyhow::Context;
use clap::Subcommand;

use super::common::{StoreArgs, open_store};
use super::remote;
use crate::log::{FlushPolicy, LogStore, TopicConfig};
use crate::units::{format_bytes, parse_bytes, parse_millis};

#[derive(Debug, Subcommand)]
pub enum TopicCommand {
    /// Create a topic.
    Create {
        name: String,
        /// Number of partitions.
        #[arg(long, short = 'p', allow_negative_numbers = true)]
        partitions: i64,
        /// Delete segments older than this (ms, or 7d, 12h…; -1 keeps forever). Default 7 days.
        #[arg(long, allow_hyphen_values = true)]
        retention_ms: Option<String>,
        /// Delete old segments beyond this many bytes per partition (1GiB…; -1 = unlimited, the default).
        #[arg(long, allow_hyphen_values = true)]
        retention_bytes: Option<String>,
        /// Roll to a new segment at this size (default 1GiB).
        #[arg(long)]
        segment_bytes: Option<String>,
        /// Roll to a new segment after this long (default 7d).
        #[arg(long)]
        segment_ms: Option<String>,
        /// When appends reach the disk: always (fsync before acknowledging),
        /// messages:N, interval:DURATION, or os (the default, as in Kafka).
        #[arg(long)]
        flush: Option<FlushPolicy>,
        /// Any topic config by its Kafka name, repeatable, as kafka-topics
        /// takes it: `--config cleanup.policy=compact --config delete.retention.ms=3600000`.
        #[arg(long = "config", value_name = "NAME=VALUE")]
        configs: Vec<String>,
        /// Succeed without changes if the topic already exists.
        #[arg(long)]
        if_not_exists: bool,
        /// Talk to a running broker (sluice or Kafka) at host:port instead of opening --data-dir.
        #[arg(long, env = "SLUICE_BOOTSTRAP")]
        bootstrap: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// List topics.
    List {
        /// Talk to a running broker (sluice or Kafka) at host:port instead of opening --data-dir.
        #[arg(long, env = "SLUICE_BOOTSTRAP")]
        bootstrap: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Show a topic's partitions (log start/end offsets, segments, bytes) and configs.
    Describe {
        name: String,
        /// Talk to a running broker (sluice or Kafka) at host:port instead of opening --data-dir.
        #[arg(long, env = "SLUICE_BOOTSTRAP")]
        bootstrap: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Add partitions to a topic (partitions can only be added, as in Kafka).
    Alter {
        name: String,
        /// The new total number of partitions.
        #[arg(long, short = 'p')]
        partitions: Option<i64>,
        /// Set a topic config by its Kafka name, repeatable
        /// (`--config cleanup.policy=compact`).
        #[arg(long = "config", value_name = "NAME=VALUE")]
        configs: Vec<String>,
        /// Put a topic config back to its default, repeatable.
        #[arg(long = "delete-config", value_name = "NAME")]
        delete_configs: Vec<String>,
        /// Talk to a running broker (sluice or Kafka) at host:port instead of opening --data-dir.
        #[arg(long, env = "SLUICE_BOOTSTRAP")]
        bootstrap: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Delete a topic and all its data.
    Delete {
        name: String,
        /// Talk to a running broker (sluice or Kafka) at host:port instead of opening --data-dir.
        #[arg(long, env = "SLUICE_BOOTSTRAP")]
        bootstrap: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Delete the records before an offset (Kafka's kafka-delete-records):
    /// the log start moves there, whole segments below it are removed.
    DeleteRecords {
        name: String,
        /// Only this partition (repeatable); every partition when not given.
        #[arg(long, short = 'p')]
        partition: Vec<i32>,
        /// The new log start: an offset, or `end` for everything so far.
        #[arg(long, value_parser = parse_before)]
        before: Before,
        /// Talk to a running broker (sluice or Kafka) at host:port instead of opening --data-dir.
        #[arg(long, env = "SLUICE_BOOTSTRAP")]
        bootstrap: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Apply retention now (it also runs every 5 minutes while a store is open).
    Retention {
        #[command(flatten)]
        store: StoreArgs,
    },
}

fn signed_size(text: &str) -> Result<i64, String> {
    if text.trim() == "-1" {
        return Ok(-1);
    }
    parse_bytes(text).map(|b| b as i64)
}

fn signed_millis(text: &str) -> Result<i64, String> {
    if text.trim() == "-1" {
        return Ok(-1);
    }
    parse_millis(text).map(|b| b as i64)
}

/// Where `topic delete-records` moves the log start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Before {
    Offset(i64),
    End,
}

fn parse_before(text: &str) -> Result<Before, String> {
    match text.trim() {
        "end" => Ok(Before::End),
        t => t
            .parse::<i64>()
            .ok()
            .filter(|o| *o >= 0)
            .map(Before::Offset)
            .ok_or_else(|| format!("expected an offset (0 or more) or `end`, got {t:?}")),
    }
}

pub fn run(cmd: TopicCommand) -> anyhow::Result<()> {
    match cmd {
        TopicCommand::Create {
            name,
            partitions,
            retention_ms,
            retention_bytes,
            segment_bytes,
            segment_ms,
            flush,
            configs,
            if_not_exists,
            bootstrap,
            store,
        } => {
            let mut config = topic_config(
                retention_ms,
                retention_bytes,
                segment_bytes,
                segment_ms,
                flush,
            )?;
            for entry in &configs {
                let (k, v) = entry.split_once('=').with_context(|| {
                    format!("--config {entry:?}: expected NAME=VALUE, e.g. cleanup.policy=compact")
                })?;
                config
                    .set(k.trim(), v)
                    .with_context(|| format!("--config {entry:?}"))?;
            }
            config.validate().context("invalid topic config")?;
            if let Some(bootstrap) = bootstrap {
                return remote::create(&bootstrap, &name, partitions, &config, if_not_exists);
            }
            let store = open_store(&store.data_dir, false)?;
            create(&store, &name, partitions, config, if_not_exists)
        }
        TopicCommand::List { bootstrap, store } => {
            if let Some(bootstrap) = bootstrap {
                return remote::list(&bootstrap);
            }
            let store = open_store(&store.data_dir, false)?;
            for t in store.topics() {
                println!("{}", t.name());
            }
            Ok(())
        }
        TopicCommand::Describe {
            name,
            bootstrap,
            store,
        } => {
            if let Some(bootstrap) = bootstrap {
                return remote::describe(&bootstrap, &name);
            }
            describe(&open_store(&store.data_dir, false)?, &name)
        }
        TopicCommand::Alter {
            name,
            partitions,
            configs,
            delete_configs,
            bootstrap,
            store,
        } => {
            let sets = configs
                .iter()
                .map(|entry| {
                    entry
                        .split_once('=')
                        .map(|(k, v)| (k.trim().to_string(), v.to_string()))
                        .with_context(|| {
                            format!("--config {entry:?}: expected NAME=VALUE, e.g. cleanup.policy=compact")
                        })
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            if partitions.is_none() && sets.is_empty() && delete_configs.is_empty() {
                anyhow::bail!(
                    "nothing to alter: give --partitions, --config NAME=VALUE or --delete-config NAME"
                );
            }
            if let Some(bootstrap) = bootstrap {
                if let Some(total) = partitions {
                    remote::add_partitions(&bootstrap, &name, total)?;
                }
                if !(sets.is_empty() && delete_configs.is_empty()) {
                    remote::alter_configs(&bootstrap, &name, &sets, &delete_configs)?;
                }
                return Ok(());
            }
            let store = open_store(&store.data_dir, false)?;
            if let Some(total) = partitions {
                grow(&store, &name, total)?;
            }
            if !(sets.is_empty() && delete_configs.is_empty()) {
                alter_configs(&store, &name, &sets, &delete_configs)?;
            }
            Ok(())
        }
        TopicCommand::Delete {
            name,
            bootstrap,
            store,
        } => {
            if let Some(bootstrap) = bootstrap {
                return remote::delete(&bootstrap, &name);
            }
            delete(&open_store(&store.data_dir, false)?, &name)
        }
        TopicCommand::DeleteRecords {
            name,
            partition,
            before,
            bootstrap,
            store,
        } => {
            if let Some(bootstrap) = bootstrap {
                return remote::delete_records(&bootstrap, &name, &partition, before);
            }
            delete_records(
                &open_store(&store.data_dir, false)?,
                &name,
                &partition,
                before,
            )
        }
        TopicCommand::Retention { store } => retention(&open_store(&store.data_dir, false)?),
    }
}

/// `topic delete-records` on the embedded store.
fn delete_records(
    store: &LogStore,
    name: &str,
    partitions: &[i32],
    before: Before,
) -> anyhow::Result<()> {
    let topic = store.topic(name)?;
    let ids: Vec<i32> = if partitions.is_empty() {
        (0..topic.partition_count() as i32).collect()
    } else {
        partitions.to_vec()
    };
    for id in ids {
        let p = topic.partition(id)?;
        let offset = match before {
            Before::Offset(o) => Some(o),
            Before::End => None,
        };
        let start = p
            .delete_records(offset)
            .with_context(|| format!("cannot delete records of {name}-{id}"))?;
        println!("{name}-{id}: log start offset {start}");
    }
    Ok(())
}

/// `topic alter --config/--delete-config` on the embedded store.
fn alter_configs(
    store: &LogStore,
    name: &str,
    sets: &[(String, String)],
    resets: &[String],
) -> anyhow::Result<()> {
    store
        .alter_topic_config(name, |config| {
            for (k, v) in sets {
                config.set(k, v)?;
            }
            for k in resets {
                config.reset(k)?;
            }
            Ok(())
        })
        .with_context(|| format!("cannot alter the configs of topic {name:?}"))?;
    println!("Altered the configs of topic {name}.");
    Ok(())
}

fn grow(store: &LogStore, name: &str, partitions: i64) -> anyhow::Result<()> {
    store
        .add_partitions(name, partitions)
        .with_context(|| format!("cannot grow topic {name:?} to {partitions} partitions"))?;
    println!("Topic {name} now has {partitions} partitions.");
    Ok(())
}

fn delete(store: &LogStore, name: &str) -> anyhow::Result<()> {
    store
        .delete_topic(name)
        .with_context(|| format!("cannot delete topic {name:?}"))?;
    println!("Deleted topic {name}.");
    Ok(())
}

/// A topic's configs from the create flags (Kafka's defaults for the rest).
fn topic_config(
    retention_ms: Option<String>,
    retention_bytes: Option<String>,
    segment_bytes: Option<String>,
    segment_ms: Option<String>,
    flush: Option<FlushPolicy>,
) -> anyhow::Result<TopicConfig> {
    let mut config = TopicConfig::default();
    let flag = |f: &str, e: String| anyhow::anyhow!("--{f}: {e}");
    if let Some(v) = retention_ms {
        config.retention_ms = signed_millis(&v).map_err(|e| flag("retention-ms", e))?;
    }
    if let Some(v) = retention_bytes {
        config.retention_bytes = signed_size(&v).map_err(|e| flag("retention-bytes", e))?;
    }
    if let Some(v) = segment_bytes {
        config.segment_bytes = parse_bytes(&v).map_err(|e| flag("segment-bytes", e))?;
    }
    if let Some(v) = segment_ms {
        config.segment_ms = parse_millis(&v).map_err(|e| flag("segment-ms", e))?;
    }
    if let Some(policy) = flush {
        config.set_flush_policy(policy);
    }
    Ok(config)
}

/// `topic create` on the embedded store.
fn create(
    store: &LogStore,
    name: &str,
    partitions: i64,
    config: TopicConfig,
    if_not_exists: bool,
) -> anyhow::Result<()> {
    if if_not_exists && store.topic(name).is_ok() {
        return Ok(());
    }
    store
        .create_topic(name, partitions, config)
        .with_context(|| format!("cannot create topic {name:?}"))?;
    println!("Created topic {name} with {partitions} partition(s).");
    Ok(())
}

/// `topic describe` on the embedded store: configs, then one row per
/// partition.
fn describe(store: &LogStore, name: &str) -> anyhow::Result<()> {
    let topic = store.topic(name)?;
    let config = topic.config();
    println!(
        "Topic: {}  Id: {}  Partitions: {}  Flush: {}",
        topic.name(),
        topic.id(),
        topic.partition_count(),
        config.flush_policy()
    );
    let configs: Vec<String> = config
        .entries()
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    println!("Configs: {}", configs.join(" "));
    println!(
        "{:>9}  {:>12}  {:>12}  {:>12}  {:>8}  {:>10}",
        "Partition", "LogStart", "LogEnd", "Records", "Segments", "Size"
    );
    for p in topic.partitions() {
        let i = p.info();
        println!(
            "{:>9}  {:>12}  {:>12}  {:>12}  {:>8}  {:>10}",
            i.partition,
            i.log_start_offset,
            i.high_watermark,
            i.high_watermark - i.log_start_offset,
            i.segments,
            format_bytes(i.size_bytes)
        );
    }
    Ok(())
}

/// `topic retention`: applies retention now and says what it deleted.
fn retention(store: &LogStore) -> anyhow::Result<()> {
    let deleted = store.enforce_retention()?;
    if deleted.is_empty() {
        println!("Nothing to delete.");
    }
    for (topic, partition, o) in deleted {
        println!(
            "{topic}-{partition}: deleted {} segment(s), {}; log start is now {}",
            o.segments_deleted,
            format_bytes(o.bytes_deleted),
            o.log_start_offset
        );
    }
    Ok(())
}
