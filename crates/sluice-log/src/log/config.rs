//! Per-topic configuration, named and defaulted as Kafka names and defaults
//! them (`segment.bytes`, `retention.ms`, `flush.messages`, …) so that admin
//! tools and DescribeConfigs map one-to-one. Owns validation of values; never
//! touches files.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::{LogError, Result};
use crate::units::parse_millis;

/// Kafka's `segment.bytes` default: 1 GiB.
pub const DEFAULT_SEGMENT_BYTES: u64 = 1 << 30;
/// Kafka's `segment.ms` default: 7 days.
pub const DEFAULT_SEGMENT_MS: u64 = 7 * 24 * 3600 * 1000;
/// Kafka's `retention.ms` default: 7 days.
pub const DEFAULT_RETENTION_MS: i64 = 7 * 24 * 3600 * 1000;
/// Kafka's `index.interval.bytes` default.
pub const DEFAULT_INDEX_INTERVAL_BYTES: u32 = 4096;
/// Kafka's `max.message.bytes` default (the largest accepted batch).
pub const DEFAULT_MAX_MESSAGE_BYTES: u32 = 1_048_588;
/// Kafka's `delete.retention.ms` default: 1 day.
pub const DEFAULT_DELETE_RETENTION_MS: i64 = 24 * 3600 * 1000;
/// Kafka's `min.cleanable.dirty.ratio` default.
pub const DEFAULT_MIN_CLEANABLE_DIRTY_RATIO: f64 = 0.5;

/// Kafka's `cleanup.policy`: what happens to old segments. `delete` drops
/// whole segments by `retention.ms`/`retention.bytes`; `compact` keeps the
/// last record of every key (the log cleaner); both may be on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CleanupPolicy {
    pub delete: bool,
    pub compact: bool,
}

impl CleanupPolicy {
    pub const DELETE: CleanupPolicy = CleanupPolicy {
        delete: true,
        compact: false,
    };
    pub const COMPACT: CleanupPolicy = CleanupPolicy {
        delete: false,
        compact: true,
    };
}

impl Default for CleanupPolicy {
    fn default() -> Self {
        CleanupPolicy::DELETE
    }
}

impl FromStr for CleanupPolicy {
    type Err = String;

    /// `delete`, `compact`, or both comma-separated in any order (Kafka's list).
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let mut policy = CleanupPolicy {
            delete: false,
            compact: false,
        };
        for part in s.split(',').map(str::trim) {
            match part {
                "delete" => policy.delete = true,
                "compact" => policy.compact = true,
                other => {
                    return Err(format!(
                        "unknown cleanup policy {other:?}: expected delete, compact or compact,delete"
                    ));
                }
            }
        }
        Ok(policy)
    }
}

impl fmt::Display for CleanupPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match (self.compact, self.delete) {
            (true, true) => "compact,delete",
            (true, false) => "compact",
            _ => "delete",
        })
    }
}

impl Serialize for CleanupPolicy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for CleanupPolicy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Topic configuration as stored in `topic.json`. `-1` means "unlimited" for
/// the retention settings, as in Kafka.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct TopicConfig {
    #[serde(rename = "segment.bytes")]
    pub segment_bytes: u64,
    #[serde(rename = "segment.ms")]
    pub segment_ms: u64,
    #[serde(rename = "retention.ms")]
    pub retention_ms: i64,
    #[serde(rename = "retention.bytes")]
    pub retention_bytes: i64,
    /// Flush after this many records (1 = every append). `None` = never by count.
    #[serde(rename = "flush.messages")]
    pub flush_messages: Option<u64>,
    /// Flush when the oldest unflushed record is this old. `None` = never by time.
    #[serde(rename = "flush.ms")]
    pub flush_ms: Option<u64>,
    #[serde(rename = "index.interval.bytes")]
    pub index_interval_bytes: u32,
    #[serde(rename = "max.message.bytes")]
    pub max_message_bytes: u32,
    #[serde(rename = "cleanup.policy")]
    pub cleanup_policy: CleanupPolicy,
    /// How long tombstones stay after their segment was last written, so a
    /// reader that started before the delete still sees it.
    #[serde(rename = "delete.retention.ms")]
    pub delete_retention_ms: i64,
    /// Clean when the uncleaned share of the sealed log reaches this.
    #[serde(rename = "min.cleanable.dirty.ratio")]
    pub min_cleanable_dirty_ratio: f64,
    /// Records newer than this are never compacted.
    #[serde(rename = "min.compaction.lag.ms")]
    pub min_compaction_lag_ms: i64,
    /// Dirty records older than this are compacted whatever the dirty ratio.
    #[serde(rename = "max.compaction.lag.ms")]
    pub max_compaction_lag_ms: i64,
}

impl Default for TopicConfig {
    fn default() -> Self {
        TopicConfig {
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            segment_ms: DEFAULT_SEGMENT_MS,
            retention_ms: DEFAULT_RETENTION_MS,
            retention_bytes: -1,
            flush_messages: None,
            flush_ms: None,
            index_interval_bytes: DEFAULT_INDEX_INTERVAL_BYTES,
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            cleanup_policy: CleanupPolicy::DELETE,
            delete_retention_ms: DEFAULT_DELETE_RETENTION_MS,
            min_cleanable_dirty_ratio: DEFAULT_MIN_CLEANABLE_DIRTY_RATIO,
            min_compaction_lag_ms: 0,
            max_compaction_lag_ms: i64::MAX,
        }
    }
}

impl TopicConfig {
    /// Checks every value once, at topic creation or load.
    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(LogError::InvalidConfig(m));
        // Index entries store 32-bit file positions, as Kafka's do.
        if self.segment_bytes < 1024 || self.segment_bytes > i32::MAX as u64 {
            return bad(format!(
                "segment.bytes must be between 1024 and {} (2 GiB - 1), got {}",
                i32::MAX,
                self.segment_bytes
            ));
        }
        if self.segment_ms == 0 {
            return bad("segment.ms must be positive".into());
        }
        if self.retention_ms < -1 {
            return bad(format!(
                "retention.ms must be -1 (unlimited) or >= 0, got {}",
                self.retention_ms
            ));
        }
        if self.retention_bytes < -1 {
            return bad(format!(
                "retention.bytes must be -1 (unlimited) or >= 0, got {}",
                self.retention_bytes
            ));
        }
        if self.flush_messages == Some(0) {
            return bad("flush.messages must be at least 1".into());
        }
        if self.flush_ms == Some(0) {
            return bad("flush.ms must be positive".into());
        }
        if self.index_interval_bytes == 0 {
            return bad("index.interval.bytes must be positive".into());
        }
        if self.max_message_bytes < 64 {
            return bad("max.message.bytes must be at least 64".into());
        }
        if !(self.cleanup_policy.delete || self.cleanup_policy.compact) {
            return bad("cleanup.policy must name delete, compact or both".into());
        }
        if self.delete_retention_ms < 0 {
            return bad(format!(
                "delete.retention.ms must be >= 0, got {}",
                self.delete_retention_ms
            ));
        }
        if !(0.0..=1.0).contains(&self.min_cleanable_dirty_ratio) {
            return bad(format!(
                "min.cleanable.dirty.ratio must be between 0 and 1, got {}",
                self.min_cleanable_dirty_ratio
            ));
        }
        if self.min_compaction_lag_ms < 0 || self.max_compaction_lag_ms < 1 {
            return bad(format!(
                "min.compaction.lag.ms must be >= 0 and max.compaction.lag.ms >= 1, got {} and {}",
                self.min_compaction_lag_ms, self.max_compaction_lag_ms
            ));
        }
        if self.min_compaction_lag_ms > self.max_compaction_lag_ms {
            return bad(format!(
                "min.compaction.lag.ms ({}) must not exceed max.compaction.lag.ms ({})",
                self.min_compaction_lag_ms, self.max_compaction_lag_ms
            ));
        }
        Ok(())
    }

    pub fn flush_policy(&self) -> FlushPolicy {
        match (self.flush_messages, self.flush_ms) {
            (Some(1), _) => FlushPolicy::EveryAppend,
            (Some(n), _) => FlushPolicy::Messages(n),
            (None, Some(ms)) => FlushPolicy::Interval(Duration::from_millis(ms)),
            (None, None) => FlushPolicy::Os,
        }
    }

    pub fn set_flush_policy(&mut self, policy: FlushPolicy) {
        (self.flush_messages, self.flush_ms) = match policy {
            FlushPolicy::EveryAppend => (Some(1), None),
            FlushPolicy::Messages(n) => (Some(n), None),
            FlushPolicy::Interval(d) => (None, Some(d.as_millis() as u64)),
            FlushPolicy::Os => (None, None),
        };
    }

    /// Sets one config by its Kafka name, as CreateTopics and
    /// `--config name=value` give it. Unknown names and configs Sluice does
    /// not implement are refused by name rather than silently ignored.
    pub fn set(&mut self, name: &str, value: &str) -> Result<()> {
        let bad = |why: &str| LogError::InvalidConfig(format!("{name}={value:?}: {why}"));
        let int = |v: &str| v.trim().parse::<i64>().map_err(|_| bad("not an integer"));
        let unsigned = |v: &str| {
            int(v).and_then(|n| u64::try_from(n).map_err(|_| bad("must not be negative")))
        };
        // Kafka spells "never" as Long.MAX_VALUE for the flush settings.
        let flush_limit = |v: &str| unsigned(v).map(|n| (n < i64::MAX as u64).then_some(n));
        match name {
            "segment.bytes" => self.segment_bytes = unsigned(value)?,
            "segment.ms" => self.segment_ms = unsigned(value)?,
            "retention.ms" => self.retention_ms = int(value)?,
            "retention.bytes" => self.retention_bytes = int(value)?,
            "flush.messages" => self.flush_messages = flush_limit(value)?,
            "flush.ms" => self.flush_ms = flush_limit(value)?,
            "index.interval.bytes" => {
                self.index_interval_bytes =
                    u32::try_from(unsigned(value)?).map_err(|_| bad("too large"))?
            }
            "max.message.bytes" => {
                self.max_message_bytes =
                    u32::try_from(unsigned(value)?).map_err(|_| bad("too large"))?
            }
            "cleanup.policy" => self.cleanup_policy = value.parse().map_err(|e: String| bad(&e))?,
            "delete.retention.ms" => self.delete_retention_ms = int(value)?,
            "min.cleanable.dirty.ratio" => {
                self.min_cleanable_dirty_ratio = value
                    .trim()
                    .parse::<f64>()
                    .ok()
                    .filter(|r| r.is_finite())
                    .ok_or_else(|| bad("not a number"))?
            }
            "min.compaction.lag.ms" => self.min_compaction_lag_ms = int(value)?,
            "max.compaction.lag.ms" => self.max_compaction_lag_ms = int(value)?,
            // Single-node store: these are trivially satisfied.
            "min.insync.replicas" | "unclean.leader.election.enable" => {}
            _ => {
                return Err(LogError::InvalidConfig(format!(
                    "unknown or unsupported topic config {name:?} (supported: {})",
                    Self::default()
                        .entries()
                        .iter()
                        .map(|(k, _)| *k)
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
        }
        Ok(())
    }

    /// Puts one config back to its default (Kafka's DELETE operation of
    /// IncrementalAlterConfigs). Unknown names are refused as by [`set`].
    ///
    /// [`set`]: TopicConfig::set
    pub fn reset(&mut self, name: &str) -> Result<()> {
        let default = TopicConfig::default();
        let value = default
            .entries()
            .into_iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v)
            .ok_or_else(|| {
                LogError::InvalidConfig(format!("unknown or unsupported topic config {name:?}"))
            })?;
        self.set(name, &value)
    }

    /// The configs as Kafka name → value strings, e.g. for `topic describe`.
    pub fn entries(&self) -> Vec<(&'static str, String)> {
        let opt = |v: Option<u64>| v.map_or("9223372036854775807".to_string(), |v| v.to_string());
        vec![
            ("segment.bytes", self.segment_bytes.to_string()),
            ("segment.ms", self.segment_ms.to_string()),
            ("retention.ms", self.retention_ms.to_string()),
            ("retention.bytes", self.retention_bytes.to_string()),
            ("flush.messages", opt(self.flush_messages)),
            ("flush.ms", opt(self.flush_ms)),
            (
                "index.interval.bytes",
                self.index_interval_bytes.to_string(),
            ),
            ("max.message.bytes", self.max_message_bytes.to_string()),
            ("cleanup.policy", self.cleanup_policy.to_string()),
            ("delete.retention.ms", self.delete_retention_ms.to_string()),
            (
                "min.cleanable.dirty.ratio",
                self.min_cleanable_dirty_ratio.to_string(),
            ),
            (
                "min.compaction.lag.ms",
                self.min_compaction_lag_ms.to_string(),
            ),
            (
                "max.compaction.lag.ms",
                self.max_compaction_lag_ms.to_string(),
            ),
        ]
    }
}

/// When appended data is forced to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushPolicy {
    /// fsync before an append returns (Kafka `flush.messages=1`). Appends that
    /// arrive while a flush runs share the next one (group commit).
    EveryAppend,
    /// fsync once this many records have accumulated.
    Messages(u64),
    /// fsync when the oldest unflushed data is this old.
    Interval(Duration),
    /// Leave write-back to the operating system (Kafka's default).
    Os,
}

impl FromStr for FlushPolicy {
    type Err = String;

    /// `always` | `os` | `messages:N` | `interval:DURATION` (e.g. `interval:1s`).
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let s = s.trim();
        let usage = "expected always, os, messages:N or interval:DURATION (e.g. interval:500ms)";
        match s {
            "always" | "every-append" => return Ok(FlushPolicy::EveryAppend),
            "os" | "never" => return Ok(FlushPolicy::Os),
            _ => {}
        }
        match s.split_once(':') {
            Some(("messages", n)) => match n.trim().parse::<u64>() {
                Ok(0) | Err(_) => Err(format!(
                    "bad flush policy {s:?}: N must be a positive integer"
                )),
                Ok(1) => Ok(FlushPolicy::EveryAppend),
                Ok(n) => Ok(FlushPolicy::Messages(n)),
            },
            Some(("interval", d)) => match parse_millis(d)? {
                0 => Err(format!(
                    "bad flush policy {s:?}: the interval must be positive"
                )),
                ms => Ok(FlushPolicy::Interval(Duration::from_millis(ms))),
            },
            _ => Err(format!("bad flush policy {s:?}: {usage}")),
        }
    }
}

impl fmt::Display for FlushPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FlushPolicy::EveryAppend => f.write_str("always"),
            FlushPolicy::Messages(n) => write!(f, "messages:{n}"),
            FlushPolicy::Interval(d) => write!(f, "interval:{}ms", d.as_millis()),
            FlushPolicy::Os => f.write_str("os"),
        }
    }
}

/// Kafka's topic-name rules: 1..=249 characters from `[a-zA-Z0-9._-]`, and
/// not `.` or `..` (they would escape the data directory).
pub fn validate_topic_name(name: &str) -> Result<()> {
    let bad = |reason: &str| {
        Err(LogError::InvalidTopicName {
            name: name.to_string(),
            reason: reason.to_string(),
        })
    };
    if name.is_empty() {
        return bad("the name is empty");
    }
    if name.len() > 249 {
        return bad("longer than 249 characters");
    }
    if name == "." || name == ".." {
        return bad("'.' and '..' are not allowed");
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(LogError::InvalidTopicName {
            name: name.to_string(),
            reason: format!(
                "character {c:?} is not allowed; use ASCII letters, digits, '.', '_' and '-'"
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_names_follow_kafka_rules() {
        for ok in ["a", "clicks", "my_topic.v2-x", &"x".repeat(249)] {
            validate_topic_name(ok).unwrap();
        }
        for bad in ["", ".", "..", "a b", "a/b", "ü", &"x".repeat(250)] {
            assert!(
                validate_topic_name(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
    }

    #[test]
    fn flush_policies_parse_and_round_trip_through_kafka_configs() {
        for (text, policy) in [
            ("always", FlushPolicy::EveryAppend),
            ("os", FlushPolicy::Os),
            ("messages:500", FlushPolicy::Messages(500)),
            ("interval:1s", FlushPolicy::Interval(Duration::from_secs(1))),
        ] {
            let parsed: FlushPolicy = text.parse().unwrap();
            assert_eq!(parsed, policy);
            let mut cfg = TopicConfig::default();
            cfg.set_flush_policy(parsed);
            assert_eq!(cfg.flush_policy(), policy);
        }
        assert!("sometimes".parse::<FlushPolicy>().is_err());
        assert!("messages:0".parse::<FlushPolicy>().is_err());
    }

    #[test]
    fn validation_rejects_nonsense() {
        let cfg = TopicConfig {
            segment_bytes: 10,
            ..Default::default()
        };
        assert!(cfg.validate().is_err());
        let cfg = TopicConfig {
            retention_ms: -5,
            ..Default::default()
        };
        assert!(cfg.validate().is_err());
        TopicConfig::default().validate().unwrap();
    }

    #[test]
    fn cleanup_policies_parse_as_kafka_lists_and_round_trip() {
        for (text, policy, shown) in [
            ("delete", CleanupPolicy::DELETE, "delete"),
            ("compact", CleanupPolicy::COMPACT, "compact"),
            (
                "delete, compact",
                CleanupPolicy {
                    delete: true,
                    compact: true,
                },
                "compact,delete",
            ),
        ] {
            let mut cfg = TopicConfig::default();
            cfg.set("cleanup.policy", text).unwrap();
            assert_eq!(cfg.cleanup_policy, policy);
            assert_eq!(cfg.cleanup_policy.to_string(), shown);
            let json = serde_json::to_string(&cfg).unwrap();
            let back: TopicConfig = serde_json::from_str(&json).unwrap();
            assert_eq!(back, cfg);
        }
        let mut cfg = TopicConfig::default();
        let err = cfg.set("cleanup.policy", "shred").unwrap_err().to_string();
        assert!(err.contains("shred"), "{err}");
        cfg.set("min.cleanable.dirty.ratio", "1.5").unwrap();
        assert!(cfg.validate().is_err());
        // Topics written before compaction existed read as delete.
        let old: TopicConfig = serde_json::from_str(r#"{"segment.bytes": 4096}"#).unwrap();
        assert_eq!(old.cleanup_policy, CleanupPolicy::DELETE);
    }
}
