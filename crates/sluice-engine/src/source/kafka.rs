//! Any Kafka-compatible broker (`sluice broker` or a Kafka cluster) read
//! through librdkafka (`rdkafka`), in direct mode.
//!
//! This module owns the librdkafka clients of one source: a "meta" consumer
//! for metadata, watermarks, time lookups and the optional progress commit,
//! and one cached reader per partition. It must never decide positions: the
//! driver plans `[from, until)` and the checkpoint is the only record of
//! progress. So readers never subscribe (no group rebalancing can move a
//! partition), never auto-commit or store offsets, and fail instead of
//! jumping when a planned offset is gone (`auto.offset.reset=error`).
//! [`KafkaSource::commit_offsets`] only mirrors progress to the group
//! coordinator for lag monitors; nothing ever reads it back.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{Headers, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaErrorCode;

use super::record::RecordColumns;
use super::{ChunkSink, PartitionInfo, Source, SourceError, source_schema};

/// Metadata, watermark and time lookups: long enough for a loaded cluster,
/// short enough that a dead one fails a planning round visibly.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(15);
/// A read fails after this long without any progress (no record, no move
/// of the consumer's position).
const DEFAULT_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// One poll's wait: short, so the position and the progress timer are
/// checked often when the partition is quiet.
const POLL_INTERVAL: Duration = Duration::from_millis(100);
const CHUNK_ROWS: usize = 8192;
/// A chunk is also closed at this many key+value bytes, so large records do
/// not make 8192-row chunks of hundreds of megabytes.
const CHUNK_BYTES: usize = 16 << 20;

/// Settings the source decides itself because its correctness rests on
/// them; `extra` may repeat them with the same value but not change them.
const MANAGED: [(&str, &str); 5] = [
    // The checkpoint tracks offsets: the broker's copy is never the truth.
    ("enable.auto.commit", "false"),
    ("enable.auto.offset.store", "false"),
    // A planned range that retention removed must fail the batch, not
    // silently continue from another offset.
    ("auto.offset.reset", "error"),
    // The end of a partition is how a read learns that the last offsets of
    // its range are gaps (compaction, transaction markers).
    ("enable.partition.eof", "true"),
    // Committed data only: reads stop at the last stable offset and skip
    // aborted transactions, so a replayed range reads the same records
    // (and watermark lookups answer the last stable offset).
    ("isolation.level", "read_committed"),
];

/// Routes librdkafka's own logging to `tracing` at debug level: connection
/// retries would otherwise flood the job's log, and every failure that
/// matters surfaces as an error of `partitions` or `read`.
struct SourceContext {
    source_name: String,
}

impl ClientContext for SourceContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        tracing::debug!(source = %self.source_name, ?level, fac, "librdkafka: {log_message}");
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(source = %self.source_name, "librdkafka: {error}: {reason}");
    }
}

impl ConsumerContext for SourceContext {
    fn commit_callback(&self, result: KafkaResult<()>, _offsets: &TopicPartitionList) {
        if let Err(e) = result {
            tracing::warn!(
                source = %self.source_name,
                "committing progress to the consumer group failed (monitoring only): {e}"
            );
        }
    }
}

type KafkaConsumer = BaseConsumer<SourceContext>;

/// A cached per-partition consumer. `next` is the offset its queue will
/// deliver next when reads are contiguous, so the following batch continues
/// without a new fetch; `None` means it must be re-assigned.
struct Reader {
    consumer: KafkaConsumer,
    next: Option<i64>,
}

/// A topic of a Kafka-compatible broker.
pub struct KafkaSource {
    name: String,
    topic: String,
    brokers: String,
    group_id: Option<String>,
    /// The configuration every per-partition reader is created from.
    reader_config: ClientConfig,
    /// Metadata, watermarks, `offsets_for_times` and progress commits.
    meta: KafkaConsumer,
    /// One consumer per partition, kept across batches: creating one costs
    /// a connection and a fetch session. Taken out while a task reads, so
    /// tasks of different partitions never wait for each other.
    readers: Mutex<HashMap<i32, Reader>>,
    read_timeout: Duration,
}

/// The client configuration of a source: `extra` first, then the managed
/// settings, which `extra` may not contradict.
fn client_config(
    brokers: &str,
    group_id: &str,
    extra: &[(String, String)],
) -> Result<ClientConfig, String> {
    let mut c = ClientConfig::new();
    // Defaults that `extra` may override. Every partition has its own
    // consumer, and each prefetches up to this much (librdkafka's default
    // is 64 MiB per consumer, too much times a hundred partitions).
    c.set("socket.timeout.ms", "10000");
    c.set("queued.max.messages.kbytes", "16384");
    // librdkafka ≥ 2.1 pauses fetching for a whole second once a queue
    // passes its thresholds; a task drains its queue as fast as it fills,
    // so a long pause only idles it (measured: 5× slower drains).
    c.set("fetch.queue.backoff.ms", "5");
    for (k, v) in extra {
        let k = k.trim();
        if k == "bootstrap.servers" || k == "group.id" {
            return Err(format!(
                "{k} is set by the source's own arguments, not as an extra setting"
            ));
        }
        if let Some((_, managed)) = MANAGED.iter().find(|(m, _)| *m == k)
            && v.trim() != *managed
        {
            return Err(format!(
                "{k}={v} is not allowed: the source needs {k}={managed} (the job's checkpoint tracks offsets)"
            ));
        }
        c.set(k, v.trim());
    }
    for (k, v) in MANAGED {
        c.set(k, v);
    }
    c.set("bootstrap.servers", brokers);
    c.set("group.id", group_id);
    Ok(c)
}

impl KafkaSource {
    /// Reads `topic` from the brokers in `brokers` (`host:port,…`); offsets
    /// are checkpointed under `name`. With `group_id`, progress is also
    /// committed to that consumer group by [`KafkaSource::commit_offsets`]
    /// (for lag monitoring only). `extra` are further librdkafka settings
    /// (security, fetch sizes, …).
    pub fn new(
        name: impl Into<String>,
        brokers: impl Into<String>,
        topic: impl Into<String>,
        group_id: Option<String>,
        extra: Vec<(String, String)>,
    ) -> Result<Self, SourceError> {
        let name = name.into();
        let brokers = brokers.into();
        let topic = topic.into();
        let unavailable = |message: String| SourceError::Unavailable {
            source_name: name.clone(),
            message,
        };
        if topic.is_empty() {
            return Err(unavailable("no topic given".into()));
        }
        if brokers.trim().is_empty() {
            return Err(unavailable("no brokers given".into()));
        }
        if group_id.as_deref().is_some_and(str::is_empty) {
            return Err(unavailable("the consumer group id is empty".into()));
        }
        // librdkafka only allows assign() to consumers with a group id. The
        // readers never join or commit to it, so without a user group a
        // fixed name per source does no harm.
        let reader_group = group_id
            .clone()
            .unwrap_or_else(|| format!("sluice-reader-{name}"));
        let reader_config = client_config(&brokers, &reader_group, &extra).map_err(unavailable)?;
        // The meta consumer only has a group when commits are wanted: a
        // group makes its drop wait for the group handle to close.
        let mut meta_config = reader_config.clone();
        if group_id.is_none() {
            meta_config.remove("group.id");
        }
        let meta = meta_config
            .create_with_context(SourceContext {
                source_name: name.clone(),
            })
            .map_err(|e| unavailable(format!("cannot create a Kafka client for {brokers}: {e}")))?;
        Ok(KafkaSource {
            name,
            topic,
            brokers,
            group_id,
            reader_config,
            meta,
            readers: Mutex::new(HashMap::new()),
            read_timeout: DEFAULT_READ_TIMEOUT,
        })
    }

    /// How long a read may go without progress before it fails (30 s).
    pub fn with_read_timeout(mut self, timeout: Duration) -> Self {
        self.read_timeout = timeout;
        self
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Best effort: commits `next_offsets` (partition, next offset to read)
    /// to the consumer group, if the source has one, so that lag monitors
    /// see the job's progress. Never used for recovery; failures are
    /// logged, not returned, and the call does not wait for the broker.
    pub fn commit_offsets(&self, next_offsets: &[(i32, i64)]) {
        if self.group_id.is_none() || next_offsets.is_empty() {
            return;
        }
        // Serve the results of earlier commits (logged by the context).
        self.drain_events();
        let mut tpl = TopicPartitionList::with_capacity(next_offsets.len());
        for &(partition, offset) in next_offsets {
            if let Err(e) = tpl.add_partition_offset(&self.topic, partition, Offset::Offset(offset))
            {
                tracing::warn!(source = %self.name, partition, offset, "cannot commit progress: {e}");
                return;
            }
        }
        if let Err(e) = self.meta.commit(&tpl, CommitMode::Async) {
            tracing::warn!(source = %self.name, "committing progress to the consumer group failed (monitoring only): {e}");
        }
    }

    /// The meta consumer is never polled for records; its queue only holds
    /// commit results and client errors, which are served here so they do
    /// not pile up. Bounded: a poll returns at most one event.
    fn drain_events(&self) {
        for _ in 0..64 {
            match self.meta.poll(Duration::ZERO) {
                None => break,
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    tracing::debug!(source = %self.name, "kafka client: {e}");
                }
            }
        }
    }

    fn unavailable(&self, message: String) -> SourceError {
        SourceError::Unavailable {
            source_name: self.name.clone(),
            message,
        }
    }

    fn partition_error(&self, partition: i32, message: String) -> SourceError {
        SourceError::Partition {
            source_name: self.name.clone(),
            partition,
            message,
        }
    }

    fn watermarks(&self, partition: i32) -> Result<(i64, i64), SourceError> {
        self.meta
            .fetch_watermarks(&self.topic, partition, LOOKUP_TIMEOUT)
            .map_err(|e| {
                self.partition_error(
                    partition,
                    format!(
                        "cannot read the offsets of {}-{partition} at {}: {e}",
                        self.topic, self.brokers
                    ),
                )
            })
    }

    /// A reader for `partition`: the cached one, or a new one.
    fn take_reader(&self, partition: i32) -> Result<Reader, SourceError> {
        if let Some(r) = sluice_log::common::mutex(&self.readers).remove(&partition) {
            return Ok(r);
        }
        let consumer = self
            .reader_config
            .create_with_context(SourceContext {
                source_name: self.name.clone(),
            })
            .map_err(|e| {
                self.partition_error(
                    partition,
                    format!("cannot create a Kafka consumer for {}: {e}", self.brokers),
                )
            })?;
        Ok(Reader {
            consumer,
            next: None,
        })
    }

    /// Puts a reader back after a successful read. If another task cached
    /// one for the same partition meanwhile (a retried task), one is kept.
    fn return_reader(&self, partition: i32, reader: Reader) {
        let mut readers = sluice_log::common::mutex(&self.readers);
        readers.entry(partition).or_insert(reader);
    }

    fn position(&self, consumer: &KafkaConsumer, partition: i32) -> Option<i64> {
        let tpl = consumer.position().ok()?;
        match tpl.find_partition(&self.topic, partition)?.offset() {
            Offset::Offset(o) => Some(o),
            _ => None,
        }
    }

    /// Polls `reader` until every offset of `[from, until)` has been seen.
    /// The reader is only valid for reuse if this returns `Ok`.
    fn read_range(
        &self,
        reader: &mut Reader,
        partition: i32,
        from: i64,
        until: i64,
        out: &mut ChunkSink<'_>,
    ) -> Result<(), SourceError> {
        if reader.next != Some(from) {
            self.seek(reader, partition, from)?;
        }
        reader.next = None;
        let mut tracker = RangeTracker::new(from, until);
        let mut chunk = Chunk::new(until - from);
        let mut stall = Stall {
            last_progress: Instant::now(),
            last_error: None,
        };
        // Whether the consumer's queue holds exactly the records after the
        // range: false once a record past `until` has been taken from it.
        let mut queue_continues = true;
        while !tracker.done() {
            let check_position = match reader.consumer.poll(POLL_INTERVAL) {
                Some(Ok(msg)) => {
                    if msg.partition() == partition {
                        stall.last_progress = Instant::now();
                        match tracker.deliver(msg.offset()) {
                            Step::Skip => {}
                            Step::Past => queue_continues = false,
                            Step::Keep => chunk.push(&self.topic, &msg, out)?,
                        }
                    }
                    false
                }
                Some(Err(KafkaError::PartitionEOF(_))) => {
                    self.at_partition_end(reader, partition, &mut tracker, from, until)?;
                    true
                }
                Some(Err(e)) => {
                    if is_fatal(&e) {
                        return Err(self.partition_error(
                            partition,
                            format!("cannot read offsets {from}..{until} of {}: {e}", self.topic),
                        ));
                    }
                    // Transport errors and the like: librdkafka retries on
                    // its own; the progress timeout bounds the wait.
                    stall.last_error = Some(e.to_string());
                    true
                }
                None => true,
            };
            if check_position && !tracker.done() {
                self.check_progress(reader, partition, &mut tracker, &mut stall, from, until)?;
            }
        }
        chunk.flush(out)?;
        if queue_continues {
            reader.next = Some(until);
        }
        Ok(())
    }

    /// Points the reader at `from`. assign() replaces the whole assignment
    /// and discards what the consumer had prefetched for an earlier position.
    fn seek(&self, reader: &mut Reader, partition: i32, from: i64) -> Result<(), SourceError> {
        let mut tpl = TopicPartitionList::with_capacity(1);
        tpl.add_partition_offset(&self.topic, partition, Offset::Offset(from))
            .and_then(|()| reader.consumer.assign(&tpl))
            .map_err(|e| {
                self.partition_error(
                    partition,
                    format!("cannot start reading at offset {from}: {e}"),
                )
            })
    }

    /// At the end of the partition with offsets still missing: either they
    /// are gaps (then the position moved past them) or the log is shorter
    /// than planned, which only a truncated log explains. Asks the broker
    /// which.
    fn at_partition_end(
        &self,
        reader: &Reader,
        partition: i32,
        tracker: &mut RangeTracker,
        from: i64,
        until: i64,
    ) -> Result<(), SourceError> {
        if let Some(p) = self.position(&reader.consumer, partition) {
            tracker.position(p);
        }
        if !tracker.done() {
            let (_, high) = self.watermarks(partition)?;
            if high < until {
                return Err(self.partition_error(
                    partition,
                    format!(
                        "offsets {from}..{until} of {} were planned but the partition ends at {high}",
                        self.topic
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Moves the tracker to the consumer's position (gaps are skipped
    /// there) and fails once nothing moved for the read timeout.
    fn check_progress(
        &self,
        reader: &Reader,
        partition: i32,
        tracker: &mut RangeTracker,
        stall: &mut Stall,
        from: i64,
        until: i64,
    ) -> Result<(), SourceError> {
        if let Some(p) = self.position(&reader.consumer, partition)
            && tracker.position(p)
        {
            stall.last_progress = Instant::now();
        }
        if !tracker.done() && stall.last_progress.elapsed() >= self.read_timeout {
            return Err(self.partition_error(
                partition,
                format!(
                    "reading offsets {from}..{until} of {} made no progress for {:?} (next offset {}){}",
                    self.topic,
                    self.read_timeout,
                    tracker.next(),
                    stall
                        .last_error
                        .as_ref()
                        .map(|e| format!("; last error: {e}"))
                        .unwrap_or_default()
                ),
            ));
        }
        Ok(())
    }
}

/// When a read last moved, and the last transient error on the way.
struct Stall {
    last_progress: Instant,
    last_error: Option<String>,
}

/// The records of a read being gathered into Arrow chunks of bounded rows
/// and bytes.
struct Chunk {
    columns: RecordColumns,
    bytes: usize,
}

impl Chunk {
    fn new(expected_rows: i64) -> Chunk {
        Chunk {
            columns: RecordColumns::with_capacity(CHUNK_ROWS.min(expected_rows.max(0) as usize)),
            bytes: 0,
        }
    }

    fn push(
        &mut self,
        topic: &str,
        msg: &rdkafka::message::BorrowedMessage<'_>,
        out: &mut ChunkSink<'_>,
    ) -> Result<(), SourceError> {
        let timestamp = msg.timestamp().to_millis().unwrap_or(-1);
        let columns = &mut self.columns;
        columns.begin_row(topic, msg.partition(), msg.offset(), timestamp);
        columns.key.append_option(msg.key());
        columns.value.append_option(msg.payload());
        self.bytes += msg.key_len() + msg.payload_len();
        if let Some(headers) = msg.headers() {
            for h in headers.iter() {
                columns.push_header(h.key, h.value);
            }
        }
        columns.end_row();
        if columns.len() >= CHUNK_ROWS || self.bytes >= CHUNK_BYTES {
            let full = std::mem::replace(columns, RecordColumns::with_capacity(CHUNK_ROWS));
            self.bytes = 0;
            out(RecordBatch::try_new(source_schema(), full.finish())?)?;
        }
        Ok(())
    }

    /// Passes on what is left.
    fn flush(self, out: &mut ChunkSink<'_>) -> Result<(), SourceError> {
        if !self.columns.is_empty() {
            out(RecordBatch::try_new(
                source_schema(),
                self.columns.finish(),
            )?)?;
        }
        Ok(())
    }
}

/// Errors after which polling on cannot deliver the range.
fn is_fatal(e: &KafkaError) -> bool {
    match e {
        KafkaError::MessageConsumptionFatal(_) => true,
        KafkaError::MessageConsumption(code) => matches!(
            code,
            RDKafkaErrorCode::AutoOffsetReset
                | RDKafkaErrorCode::OffsetOutOfRange
                | RDKafkaErrorCode::UnknownPartition
                | RDKafkaErrorCode::UnknownTopic
                | RDKafkaErrorCode::UnknownTopicOrPartition
                | RDKafkaErrorCode::TopicAuthorizationFailed
                | RDKafkaErrorCode::GroupAuthorizationFailed
                | RDKafkaErrorCode::ClusterAuthorizationFailed
                | RDKafkaErrorCode::Authentication
                | RDKafkaErrorCode::Fatal
        ),
        _ => false,
    }
}

/// What to do with a delivered record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// In the range: copy it.
    Keep,
    /// Before the range (a stale prefetch): ignore it.
    Skip,
    /// At or after `until`: ignore it; the range is complete.
    Past,
}

/// Decides when a range is complete. Offsets may have gaps (compaction,
/// transaction markers), so it compares offsets, never counts records: the
/// range is done once a record at or after `until - 1` was delivered or the
/// consumer's position reached `until`.
#[derive(Debug, Clone, Copy)]
struct RangeTracker {
    from: i64,
    until: i64,
    /// Every offset below this has been seen (delivered or skipped over).
    next: i64,
}

impl RangeTracker {
    fn new(from: i64, until: i64) -> Self {
        RangeTracker {
            from,
            until,
            next: from,
        }
    }

    fn done(&self) -> bool {
        self.next >= self.until
    }

    fn next(&self) -> i64 {
        self.next
    }

    fn deliver(&mut self, offset: i64) -> Step {
        if offset < self.from || offset < self.next {
            return Step::Skip;
        }
        self.next = offset + 1;
        if offset >= self.until {
            Step::Past
        } else {
            Step::Keep
        }
    }

    /// The consumer's position (the next offset it will deliver); returns
    /// whether it moved the range forward.
    fn position(&mut self, position: i64) -> bool {
        if position > self.next {
            self.next = position;
            true
        } else {
            false
        }
    }
}

impl Source for KafkaSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn kafka_topic(&self) -> Option<&str> {
        Some(&self.topic)
    }

    fn committed(&self, next: &[(i32, i64)]) {
        self.commit_offsets(next);
    }

    fn partitions(&self) -> Result<Vec<PartitionInfo>, SourceError> {
        self.drain_events();
        // A fresh Metadata request every time: partitions added while the
        // job runs show up at the next planning round.
        let md = self
            .meta
            .fetch_metadata(Some(&self.topic), LOOKUP_TIMEOUT)
            .map_err(|e| {
                self.unavailable(format!(
                    "cannot read the metadata of topic {} from {}: {e} (is the broker running?)",
                    self.topic, self.brokers
                ))
            })?;
        let Some(topic) = md.topics().iter().find(|t| t.name() == self.topic) else {
            return Err(self.unavailable(format!(
                "topic {} does not exist at {}",
                self.topic, self.brokers
            )));
        };
        if let Some(e) = topic.error() {
            let code = RDKafkaErrorCode::from(e);
            return Err(self.unavailable(match code {
                RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic => {
                    format!("topic {} does not exist at {}", self.topic, self.brokers)
                }
                _ => format!("cannot read the metadata of topic {}: {code}", self.topic),
            }));
        }
        if topic.partitions().is_empty() {
            return Err(self.unavailable(format!(
                "topic {} does not exist at {} (no partitions)",
                self.topic, self.brokers
            )));
        }
        let mut ids: Vec<i32> = topic.partitions().iter().map(|p| p.id()).collect();
        ids.sort_unstable();
        ids.into_iter()
            .map(|partition| {
                let (log_start, high_watermark) = self.watermarks(partition)?;
                Ok(PartitionInfo {
                    partition,
                    log_start,
                    high_watermark,
                })
            })
            .collect()
    }

    fn offset_for_time(&self, partition: i32, timestamp_ms: i64) -> Result<i64, SourceError> {
        let lookup_error = |e: KafkaError| {
            self.partition_error(
                partition,
                format!("cannot look up the offset for time {timestamp_ms}: {e}"),
            )
        };
        // The query carries timestamps where offsets usually go.
        let mut tpl = TopicPartitionList::with_capacity(1);
        tpl.add_partition_offset(&self.topic, partition, Offset::Offset(timestamp_ms))
            .map_err(lookup_error)?;
        let lookup = self
            .meta
            .offsets_for_times(tpl, LOOKUP_TIMEOUT)
            .map_err(lookup_error)?;
        let Some(elem) = lookup.find_partition(&self.topic, partition) else {
            return Err(self.partition_error(
                partition,
                format!("no answer for the offset at time {timestamp_ms}"),
            ));
        };
        elem.error().map_err(lookup_error)?;
        match elem.offset() {
            Offset::Offset(o) if o >= 0 => Ok(o),
            // Kafka answers -1 when no record is that recent.
            Offset::End | Offset::Offset(_) => Ok(self.watermarks(partition)?.1),
            other => Err(self.partition_error(
                partition,
                format!("unexpected answer {other:?} for the offset at time {timestamp_ms}"),
            )),
        }
    }

    fn read(
        &self,
        partition: i32,
        from: i64,
        until: i64,
        out: &mut ChunkSink<'_>,
    ) -> Result<(), SourceError> {
        if from >= until {
            return Ok(());
        }
        if from < 0 {
            return Err(self.partition_error(partition, format!("invalid range {from}..{until}")));
        }
        let mut reader = self.take_reader(partition)?;
        // On any error the reader is dropped rather than cached: its queue
        // is somewhere inside the range and its state is unknown.
        self.read_range(&mut reader, partition, from, until, out)?;
        self.return_reader(partition, reader);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn extra(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn config_forces_the_managed_settings() {
        let c = client_config(
            "127.0.0.1:9092",
            "g",
            &extra(&[
                ("fetch.max.bytes", "1000000"),
                ("enable.auto.commit", "false"),
                ("queued.max.messages.kbytes", "1024"),
            ]),
        )
        .unwrap();
        assert_eq!(c.get("queued.max.messages.kbytes"), Some("1024"));
        let defaults = client_config("b:9092", "g", &[]).unwrap();
        assert_eq!(defaults.get("queued.max.messages.kbytes"), Some("16384"));
        assert_eq!(c.get("bootstrap.servers"), Some("127.0.0.1:9092"));
        assert_eq!(c.get("group.id"), Some("g"));
        assert_eq!(c.get("enable.auto.commit"), Some("false"));
        assert_eq!(c.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(c.get("auto.offset.reset"), Some("error"));
        assert_eq!(c.get("enable.partition.eof"), Some("true"));
        assert_eq!(c.get("fetch.max.bytes"), Some("1000000"));
    }

    #[test]
    fn config_refuses_contradicting_extras() {
        for (k, v) in [
            ("enable.auto.commit", "true"),
            ("auto.offset.reset", "earliest"),
            ("enable.auto.offset.store", "true"),
            ("group.id", "other"),
            ("bootstrap.servers", "elsewhere:9092"),
        ] {
            let err = client_config("b:9092", "g", &extra(&[(k, v)])).unwrap_err();
            assert!(err.contains(k), "{err}");
        }
    }

    #[test]
    fn new_validates_arguments_and_bad_settings() {
        assert!(KafkaSource::new("s", "127.0.0.1:1", "", None, vec![]).is_err());
        assert!(KafkaSource::new("s", " ", "t", None, vec![]).is_err());
        assert!(KafkaSource::new("s", "127.0.0.1:1", "t", Some(String::new()), vec![]).is_err());
        let err = KafkaSource::new(
            "s",
            "127.0.0.1:1",
            "t",
            None,
            extra(&[("no.such.setting", "1")]),
        )
        .err()
        .unwrap();
        assert!(err.to_string().contains("source s"), "{err}");
        let ok = KafkaSource::new("s", "127.0.0.1:1", "t", Some("g".into()), vec![]).unwrap();
        assert_eq!(ok.name(), "s");
        assert_eq!(ok.topic(), "t");
    }

    #[test]
    fn range_tracker_compares_offsets_not_counts() {
        // Contiguous.
        let mut t = RangeTracker::new(3, 7);
        for o in 3..6 {
            assert_eq!(t.deliver(o), Step::Keep);
            assert!(!t.done());
        }
        assert_eq!(t.deliver(6), Step::Keep);
        assert!(t.done());

        // Stale records before the range are skipped.
        let mut t = RangeTracker::new(3, 7);
        assert_eq!(t.deliver(1), Step::Skip);
        assert_eq!(t.deliver(3), Step::Keep);
        assert_eq!(
            t.deliver(3),
            Step::Skip,
            "a duplicate is not delivered twice"
        );

        // A gap inside the range (compaction): fewer records, still done.
        let mut t = RangeTracker::new(0, 10);
        assert_eq!(t.deliver(0), Step::Keep);
        assert_eq!(t.deliver(5), Step::Keep);
        assert_eq!(t.deliver(9), Step::Keep);
        assert!(t.done());

        // A gap at the end: the next record is past the range.
        let mut t = RangeTracker::new(0, 10);
        assert_eq!(t.deliver(8), Step::Keep);
        assert!(!t.done());
        assert_eq!(t.deliver(12), Step::Past);
        assert!(t.done());

        // A gap at the end seen through the position (transaction markers).
        let mut t = RangeTracker::new(0, 10);
        assert_eq!(t.deliver(7), Step::Keep);
        assert!(!t.position(8), "the position after 7 is no news");
        assert!(t.position(10));
        assert!(t.done());
        assert_eq!(t.next(), 10);
    }

    #[test]
    fn fatal_errors_are_told_apart_from_transient_ones() {
        assert!(is_fatal(&KafkaError::MessageConsumption(
            RDKafkaErrorCode::AutoOffsetReset
        )));
        assert!(is_fatal(&KafkaError::MessageConsumption(
            RDKafkaErrorCode::UnknownTopicOrPartition
        )));
        assert!(!is_fatal(&KafkaError::MessageConsumption(
            RDKafkaErrorCode::BrokerTransportFailure
        )));
        assert!(!is_fatal(&KafkaError::MessageConsumption(
            RDKafkaErrorCode::AllBrokersDown
        )));
        assert!(!is_fatal(&KafkaError::PartitionEOF(0)));
    }

    /// The real broker, in process, on a loopback port.
    mod broker {
        use std::net::SocketAddr;
        use std::thread::JoinHandle;

        use rdkafka::message::{Header, OwnedHeaders};
        use rdkafka::producer::{BaseProducer, BaseRecord, Producer};

        use super::*;
        use crate::data::Data;
        use crate::source::Record;
        use sluice_broker::{Broker, BrokerConfig, ShutdownHandle};
        use sluice_log::log::{LogStore, StoreOptions, TopicConfig};

        struct InProcessBroker {
            addr: SocketAddr,
            shutdown: ShutdownHandle,
            thread: Option<JoinHandle<()>>,
            _dir: tempfile::TempDir,
        }

        impl InProcessBroker {
            /// Starts a broker whose store already holds `topics`.
            fn start(topics: &[(&str, i64)]) -> InProcessBroker {
                let dir = tempfile::tempdir().unwrap();
                let data = dir.path().join("data");
                let store = LogStore::open(&data, StoreOptions::default()).unwrap();
                for &(t, n) in topics {
                    store.create_topic(t, n, TopicConfig::default()).unwrap();
                }
                store.close().unwrap();
                // The directory lock goes with the store itself.
                drop(store);
                let config = BrokerConfig::new("127.0.0.1:0".parse().unwrap(), &data);
                let (tx, rx) = std::sync::mpsc::channel();
                let thread = std::thread::spawn(move || {
                    let rt = tokio::runtime::Builder::new_multi_thread()
                        .worker_threads(2)
                        .enable_all()
                        .build()
                        .unwrap();
                    rt.block_on(async move {
                        let broker = Broker::bind(config).await.unwrap();
                        tx.send((broker.local_addr(), broker.shutdown_handle()))
                            .unwrap();
                        broker.run().await.unwrap();
                    });
                });
                let (addr, shutdown) = rx.recv_timeout(Duration::from_secs(20)).unwrap();
                InProcessBroker {
                    addr,
                    shutdown,
                    thread: Some(thread),
                    _dir: dir,
                }
            }

            fn bootstrap(&self) -> String {
                self.addr.to_string()
            }
        }

        impl Drop for InProcessBroker {
            fn drop(&mut self) {
                self.shutdown.shutdown();
                if let Some(t) = self.thread.take() {
                    let _ = t.join();
                }
            }
        }

        fn produce(bootstrap: &str, topic: &str, partition: i32, records: &[(i64, &str)]) {
            let producer: BaseProducer = ClientConfig::new()
                .set("bootstrap.servers", bootstrap)
                .set("linger.ms", "0")
                .create()
                .unwrap();
            for (i, &(ts, value)) in records.iter().enumerate() {
                let key = format!("k{i}");
                let headers = OwnedHeaders::new().insert(Header {
                    key: "h",
                    value: Some(value.as_bytes()),
                });
                producer
                    .send(
                        BaseRecord::to(topic)
                            .partition(partition)
                            .key(&key)
                            .payload(value)
                            .timestamp(ts)
                            .headers(headers),
                    )
                    .map_err(|(e, _)| e)
                    .unwrap();
            }
            producer.flush(Duration::from_secs(20)).unwrap();
        }

        /// (offset, timestamp, key, value, first header value) of every row.
        type Row = (i64, i64, Option<String>, String, Option<String>);

        fn read(source: &KafkaSource, partition: i32, from: i64, until: i64) -> Vec<Row> {
            let mut rows = Vec::new();
            source
                .read(partition, from, until, &mut |batch: RecordBatch| {
                    assert_eq!(batch.schema(), source_schema());
                    let reader = Record::reader(batch.columns()).expect("the source schema");
                    for i in 0..batch.num_rows() {
                        let r = Record::get(&reader, i);
                        let headers: Vec<_> = r.headers().collect();
                        let first_header = headers.first().map(|&(k, v)| {
                            assert_eq!(k, "h");
                            String::from_utf8_lossy(v.unwrap_or_default()).into_owned()
                        });
                        rows.push((
                            r.offset,
                            r.timestamp,
                            r.key_str().map(str::to_owned),
                            r.value_str().to_owned(),
                            first_header,
                        ));
                    }
                    Ok(())
                })
                .unwrap();
            rows
        }

        fn offsets(rows: &[Row]) -> Vec<i64> {
            rows.iter().map(|r| r.0).collect()
        }

        #[test]
        fn reads_exact_ranges_from_the_real_broker() {
            let broker = InProcessBroker::start(&[("events", 2)]);
            let bootstrap = broker.bootstrap();
            let base = 1_700_000_000_000i64;
            let values: Vec<String> = (0..10).map(|i| format!("v{i}")).collect();
            let records: Vec<(i64, &str)> = values
                .iter()
                .enumerate()
                .map(|(i, v)| (base + 1000 * i as i64, v.as_str()))
                .collect();
            produce(&bootstrap, "events", 0, &records);

            let source = KafkaSource::new(
                "events-src",
                &bootstrap,
                "events",
                Some("sluice-test".into()),
                vec![],
            )
            .unwrap()
            .with_read_timeout(Duration::from_secs(10));
            let parts = source.partitions().unwrap();
            assert_eq!(
                parts,
                vec![
                    PartitionInfo {
                        partition: 0,
                        log_start: 0,
                        high_watermark: 10
                    },
                    PartitionInfo {
                        partition: 1,
                        log_start: 0,
                        high_watermark: 0
                    },
                ]
            );

            // Contiguous ranges: the second continues on the cached reader.
            let a = read(&source, 0, 0, 3);
            assert_eq!(offsets(&a), vec![0, 1, 2]);
            assert_eq!(
                a[1],
                (
                    1,
                    base + 1000,
                    Some("k1".into()),
                    "v1".into(),
                    Some("v1".into())
                )
            );
            let b = read(&source, 0, 3, 7);
            assert_eq!(offsets(&b), vec![3, 4, 5, 6]);
            assert_eq!(
                b.iter().map(|r| r.3.as_str()).collect::<Vec<_>>(),
                ["v3", "v4", "v5", "v6"]
            );
            // Backwards (a re-run batch), a single record, a jump forward,
            // the end of the log, and an empty range.
            assert_eq!(offsets(&read(&source, 0, 1, 2)), vec![1]);
            assert_eq!(offsets(&read(&source, 0, 2, 5)), vec![2, 3, 4]);
            assert_eq!(offsets(&read(&source, 0, 8, 10)), vec![8, 9]);
            assert_eq!(
                offsets(&read(&source, 0, 0, 10)),
                (0..10).collect::<Vec<_>>()
            );
            assert!(read(&source, 0, 10, 10).is_empty());

            // A range past the end of the log fails (it is never silently
            // cut short).
            let err = source
                .read(0, 8, 12, &mut |_| Ok(()))
                .expect_err("a range past the log end must fail");
            assert!(
                err.to_string().contains("partition 0") && err.to_string().contains("8..12"),
                "{err}"
            );
            // And the source still works afterwards.
            assert_eq!(offsets(&read(&source, 0, 5, 6)), vec![5]);

            // Time lookups.
            assert_eq!(source.offset_for_time(0, base).unwrap(), 0);
            assert_eq!(source.offset_for_time(0, base + 2500).unwrap(), 3);
            assert_eq!(source.offset_for_time(0, base + 1_000_000).unwrap(), 10);

            // Progress commits reach the group coordinator.
            source.commit_offsets(&[(0, 7)]);
            let check: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .set("group.id", "sluice-test")
                .create()
                .unwrap();
            let mut tpl = TopicPartitionList::new();
            tpl.add_partition("events", 0);
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let committed = check
                    .committed_offsets(tpl.clone(), Duration::from_secs(5))
                    .unwrap();
                let offset = committed.find_partition("events", 0).unwrap().offset();
                if offset == Offset::Offset(7) {
                    break;
                }
                assert!(Instant::now() < deadline, "commit not visible: {offset:?}");
                std::thread::sleep(Duration::from_millis(100));
                source.commit_offsets(&[(0, 7)]);
            }
            drop(check);

            // Partitions added while the job runs show up at the next call.
            let admin: rdkafka::admin::AdminClient<_> = ClientConfig::new()
                .set("bootstrap.servers", &bootstrap)
                .create()
                .unwrap();
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let grown = runtime
                .block_on(admin.create_partitions(
                    [&rdkafka::admin::NewPartitions::new("events", 3)],
                    &rdkafka::admin::AdminOptions::new(),
                ))
                .unwrap();
            assert!(grown.iter().all(Result::is_ok), "{grown:?}");
            drop(admin);
            let parts = source.partitions().unwrap();
            assert_eq!(
                parts.iter().map(|p| p.partition).collect::<Vec<_>>(),
                [0, 1, 2]
            );
            assert_eq!(parts[2].high_watermark, 0);
            produce(&bootstrap, "events", 2, &[(base, "p2")]);
            let rows = read(&source, 2, 0, 1);
            assert_eq!(rows.len(), 1);
            assert_eq!(rows[0].3, "p2");

            // A missing topic is a clear error.
            let missing = KafkaSource::new("m", &bootstrap, "no-such-topic", None, vec![]).unwrap();
            let err = missing.partitions().unwrap_err().to_string();
            assert!(
                err.contains("no-such-topic") && err.contains("does not exist"),
                "{err}"
            );
            drop(missing);
            drop(source);
        }
    }
}
