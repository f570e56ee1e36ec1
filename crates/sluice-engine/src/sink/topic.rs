//! Topic sink: a batch's records appended to a topic of the bundled store
//! or of a Kafka broker, at most once per batch id.
//!
//! The driver runs outputs *before* its atomic commit, so after a crash
//! the batch runs again over identical input and produces the same
//! records. Through a Kafka broker the default is one transaction per
//! batch ([`Delivery::Transactional`], see [`super::transactional`]): the
//! batch id is committed with the records, so a replay knows whether they
//! are there, whoever else writes the topic; read_committed readers see
//! each record once. [`Delivery::Idempotent`] (for brokers without
//! transactions) and the bundled store use tags instead. To keep a reader of
//! the topic from seeing them twice, every record carries three headers:
//!
//! | header | value |
//! |---|---|
//! | `sluice.batch` | `<job>/<sink or stream>/<batch id>` |
//! | `sluice.index` | `<i>/<n>`: the record's place among the batch's `n` records in this partition |
//! | `sluice.run` | the creation time (ms) of the job's checkpoint, which tells a recreated job from the old one |
//!
//! Before the first batch a writer writes in a process (a replayed batch,
//! or the batch after a clean stop), it reads the last record of each
//! partition it is about to write ([`resume_at`]): a tag of the same job,
//! sink and run for a later batch, or for this batch with every record
//! present, skips the partition; a tag for this batch at record `i`
//! writes the remaining records `i+1..n`; anything else writes them all.
//! Partitions are written in ascending order, and a partition's records in
//! the batch's order, so a crash between or inside partitions leaves a
//! prefix that the replay completes. Later batches of the same process
//! need no look: nothing but this process wrote since.
//!
//! The guarantee: a reader of the topic sees each result record exactly
//! once, provided only this job's sink writes to the topic (another
//! writer's record at the end of a partition hides the tag) and retention
//! does not delete a partition's last record between a crash and the
//! restart. Records with a key go to Kafka's murmur2 partition of the key
//! among the partitions the topic had when the job started; records
//! without a key go to partition 0.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, DeliveryResult, Producer, ProducerContext};
use rdkafka::types::RDKafkaErrorCode;

use super::transactional::{InTxn, Transactions};
use super::{SinkError, WriterId, crash_point};
use crate::data::Data;
use crate::source::embedded::EmbeddedSource;
use crate::source::kafka::KafkaSource;
use crate::source::{ReadError, Record, Source, read_with};
use sluice_log::log::{LogError, LogStore, TopicConfig};
use sluice_log::producer::{BATCH_HEADER_BYTES, BatchBuilder, Compression, partition_for_key};

/// `<job>/<writer>/<batch id>` of the batch that wrote the record.
pub const BATCH_HEADER: &str = "sluice.batch";
/// `<i>/<n>`: the record is the i-th (from 0) of the batch's n records in
/// its partition.
pub const INDEX_HEADER: &str = "sluice.index";
/// Creation time (ms) of the writing job's checkpoint.
pub const RUN_HEADER: &str = "sluice.run";

/// Metadata and admin requests to a broker.
const KAFKA_TIMEOUT: Duration = Duration::from_secs(15);
/// How long the records of one batch may take to be acknowledged.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(90);

/// Where a topic lives.
#[derive(Clone)]
pub enum TopicTarget {
    /// The job's own bundled store.
    Embedded(Arc<LogStore>),
    /// A Kafka-compatible broker (`host:port,…`), through librdkafka.
    Kafka(String),
}

/// One record to write.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OutRecord {
    pub key: Option<Vec<u8>>,
    /// `None` is a tombstone.
    pub value: Option<Vec<u8>>,
    pub timestamp_ms: i64,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

/// The partition a record goes to: Kafka's murmur2 partition of its key,
/// or partition 0 without a key (deterministic, so a replay writes the
/// same records to the same partitions).
pub fn partition_of(key: Option<&[u8]>, partitions: u32) -> i32 {
    match key {
        Some(k) if partitions > 0 => partition_for_key(k, partitions) as i32,
        _ => 0,
    }
}

/// What the last record of a partition says about who wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    /// `<job>/<writer>`.
    pub writer: String,
    pub batch_id: u64,
    pub run: Option<String>,
    /// The record's index among its batch's records in the partition.
    pub index: Option<u64>,
}

impl Marker {
    /// The marker in a record's headers, if it has a well-formed one (the
    /// last value wins when a header repeats).
    pub fn from_headers<'a>(
        headers: impl Iterator<Item = (&'a str, Option<&'a [u8]>)>,
    ) -> Option<Marker> {
        let (mut tag, mut run, mut index) = (None, None, None);
        for (k, v) in headers {
            let text = v.and_then(|v| std::str::from_utf8(v).ok());
            match k {
                BATCH_HEADER => tag = text,
                RUN_HEADER => run = text,
                INDEX_HEADER => index = text,
                _ => {}
            }
        }
        let (writer, batch) = tag?.rsplit_once('/')?;
        Some(Marker {
            writer: writer.to_owned(),
            batch_id: batch.parse().ok()?,
            run: run.map(str::to_owned),
            index: index
                .and_then(|i| i.split('/').next())
                .and_then(|i| i.parse().ok()),
        })
    }
}

/// Where writing batch `batch_id`'s `records` records into a partition
/// starts, given the marker of the partition's last record: `records`
/// means the partition already holds them all.
pub fn resume_at(last: Option<&Marker>, me: &WriterId, batch_id: u64, records: usize) -> usize {
    let Some(m) = last else { return 0 };
    if m.writer != me.prefix() || m.run.as_deref() != Some(me.run.as_str()) {
        return 0;
    }
    match m.batch_id.cmp(&batch_id) {
        std::cmp::Ordering::Less => 0,
        std::cmp::Ordering::Greater => records,
        std::cmp::Ordering::Equal => m
            .index
            .map_or(records, |i| (i as usize).saturating_add(1))
            .min(records),
    }
}

/// What one batch's write did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteReport {
    pub written: usize,
    /// Records a replayed batch found already in the topic.
    pub skipped: usize,
}

/// The settings of every sink producer: idempotent (retries never duplicate
/// or reorder records within a partition, so a crash leaves a prefix),
/// acknowledged by all replicas, and never auto-creating a topic (the sink
/// creates it with its own partition count).
pub(crate) fn producer_config(brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "60000")
        .set("allow.auto.create.topics", "false");
    c
}

/// Waits until every record sent is acknowledged (or failed), serving the
/// delivery reports, and sends what `linger.ms` holds back at once.
///
/// Three things in rust-rdkafka would otherwise time the client instead
/// of the broker: its `flush` polls in 100 ms steps (100 ms on every batch
/// and every transaction whatever its size); it calls librdkafka's
/// `rd_kafka_flush` with no timeout, so the "flushing" flag that tells the
/// broker threads to skip `linger.ms` is down again before they wake (a
/// full linger on every batch); and `poll` with a timeout spins on the
/// clock for whatever is left of it after an event (measured: half a core
/// on a 2-core machine, taken from the broker next to it). librdkafka's
/// answer for producers whose delivery reports are events (rust-rdkafka's
/// are) is to block in `rd_kafka_flush` on one thread while another serves
/// the reports: done here with a scoped thread, serving them with
/// non-blocking polls 100 µs apart.
pub fn deliver_all<C: ProducerContext>(
    producer: &BaseProducer<C>,
    timeout: Duration,
) -> Result<(), String> {
    if producer.in_flight_count() == 0 {
        return Ok(());
    }
    let started = Instant::now();
    let client = FlushingClient(producer.client().native_ptr());
    let flush_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
    std::thread::scope(|scope| {
        scope.spawn(move || client.flush(flush_ms));
        while producer.in_flight_count() > 0 {
            if started.elapsed() > timeout {
                return Err(format!(
                    "{} record(s) still unacknowledged",
                    producer.in_flight_count()
                ));
            }
            producer.poll(Duration::ZERO);
            if producer.in_flight_count() > 0 {
                std::thread::sleep(Duration::from_micros(100));
            }
        }
        Ok(())
    })
}

/// Waits for every record of batch `batch_id` sent through `producer` to
/// be acknowledged; the first delivery failure, or a timeout, fails it.
pub(crate) fn acknowledged(
    producer: &BaseProducer<DeliveryErrors>,
    batch_id: u64,
) -> Result<(), String> {
    let flushed = deliver_all(producer, FLUSH_TIMEOUT);
    if let Some(e) = sluice_log::common::mutex(&producer.context().first).take() {
        return Err(format!("batch {batch_id}'s records were refused: {e}"));
    }
    flushed.map_err(|e| {
        format!("batch {batch_id}'s records were not acknowledged within {FLUSH_TIMEOUT:?}: {e}")
    })
}

/// The client handle the flushing thread of [`deliver_all`] holds.
struct FlushingClient(*mut rdkafka::bindings::rd_kafka_t);

// SAFETY: librdkafka's handle is thread-safe (rd_kafka_flush may be called
// from any thread), and the scope in `deliver_all` joins the thread before
// the producer owning the handle can be dropped.
unsafe impl Send for FlushingClient {}

impl FlushingClient {
    /// Returns when no message is in flight or after `timeout_ms`.
    fn flush(self, timeout_ms: i32) {
        // SAFETY: see the `Send` impl; the result only repeats what the
        // caller's own loop observes.
        unsafe {
            rdkafka::bindings::rd_kafka_flush(self.0, timeout_ms);
        }
    }
}

/// How a replayed batch is kept from writing twice through a Kafka broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Delivery {
    /// One Kafka transaction per batch, the batch id committed with it.
    #[default]
    Transactional,
    /// Tags in headers, checked against each partition's last record on the
    /// first batch after a start (for brokers without transactions).
    Idempotent,
}

/// Remembers the first delivery failure of a batch.
pub(crate) struct DeliveryErrors {
    what: String,
    pub(crate) first: Mutex<Option<String>>,
    /// With [`DeliveryErrors::tracking_offsets`], the highest offset
    /// acknowledged per (topic, partition): where a task of a job on many
    /// workers left its changelogs.
    pub(crate) last_offsets: Mutex<std::collections::HashMap<(String, i32), i64>>,
    track_offsets: bool,
}

impl DeliveryErrors {
    pub(crate) fn new(what: &str) -> DeliveryErrors {
        DeliveryErrors {
            what: what.to_owned(),
            first: Mutex::new(None),
            last_offsets: Mutex::new(std::collections::HashMap::new()),
            track_offsets: false,
        }
    }

    /// Also records the last acknowledged offset of every partition.
    pub(crate) fn tracking_offsets(what: &str) -> DeliveryErrors {
        DeliveryErrors {
            track_offsets: true,
            ..DeliveryErrors::new(what)
        }
    }
}

impl ClientContext for DeliveryErrors {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        tracing::debug!(sink = %self.what, ?level, fac, "librdkafka: {message}");
    }
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::debug!(sink = %self.what, "librdkafka: {error}: {reason}");
    }
}

impl ProducerContext for DeliveryErrors {
    type DeliveryOpaque = ();
    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        use rdkafka::message::Message;
        match result {
            Ok(_) if !self.track_offsets => {}
            Ok(msg) => {
                let mut last = sluice_log::common::mutex(&self.last_offsets);
                match last.get_mut(&(msg.topic().to_owned(), msg.partition())) {
                    Some(o) => *o = (*o).max(msg.offset()),
                    None => {
                        last.insert((msg.topic().to_owned(), msg.partition()), msg.offset());
                    }
                }
            }
            Err((e, msg)) => {
                let mut first = sluice_log::common::mutex(&self.first);
                if first.is_none() {
                    *first = Some(format!(
                        "{} partition {}: {e}",
                        msg.topic(),
                        msg.partition()
                    ));
                }
            }
        }
    }
}

enum Backend {
    Embedded {
        store: Arc<LogStore>,
        /// Bytes of records per appended batch (below the topic's
        /// `max.message.bytes`).
        batch_bytes: usize,
        max_record_bytes: usize,
    },
    Kafka {
        brokers: String,
        producer: BaseProducer<DeliveryErrors>,
        delivery: Delivery,
    },
}

/// Appends batches of records to one topic, idempotently per batch id (see
/// the module docs).
pub struct TopicWriter {
    what: String,
    topic: String,
    partitions: u32,
    /// Reads the last record of a partition.
    reader: Box<dyn Source>,
    backend: Backend,
    /// The last batch this writer completed in this process.
    written_through: Mutex<Option<u64>>,
}

impl std::fmt::Debug for TopicWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TopicWriter")
            .field("what", &self.what)
            .field("topic", &self.topic)
            .field("partitions", &self.partitions)
            .finish()
    }
}

impl TopicWriter {
    /// Opens `topic` at `target`, creating it with `partitions` partitions
    /// if it does not exist. `what` names the writer in errors.
    /// Through a Kafka broker it writes one transaction per batch.
    pub fn open(
        target: &TopicTarget,
        topic: &str,
        partitions: u32,
        what: &str,
    ) -> Result<TopicWriter, SinkError> {
        Self::open_with(target, topic, partitions, what, Delivery::default())
    }

    /// [`TopicWriter::open`] with the delivery mode through a Kafka broker
    /// (the bundled store always uses tags: only its own process writes it).
    pub fn open_with(
        target: &TopicTarget,
        topic: &str,
        partitions: u32,
        what: &str,
        delivery: Delivery,
    ) -> Result<TopicWriter, SinkError> {
        match target {
            TopicTarget::Embedded(store) => Self::open_embedded(store, topic, partitions, what),
            TopicTarget::Kafka(brokers) => {
                Self::open_kafka(brokers, topic, partitions, what, delivery)
            }
        }
    }

    /// On the bundled store: the topic, created with `partitions` if it is
    /// missing; batches sized below its `max.message.bytes`.
    fn open_embedded(
        store: &Arc<LogStore>,
        topic: &str,
        partitions: u32,
        what: &str,
    ) -> Result<TopicWriter, SinkError> {
        let err = |m: String| SinkError::new(what, m);
        let t = match store.topic(topic) {
            Ok(t) => t,
            Err(LogError::UnknownTopic(_)) => {
                match store.create_topic(topic, partitions as i64, TopicConfig::default()) {
                    Ok(t) => {
                        tracing::info!(
                            "{what}: created topic {topic} with {partitions} partition(s)"
                        );
                        t
                    }
                    Err(LogError::TopicExists(_)) => store
                        .topic(topic)
                        .map_err(|e| err(format!("cannot open topic {topic}: {e}")))?,
                    Err(e) => return Err(err(format!("cannot create topic {topic}: {e}"))),
                }
            }
            Err(e) => return Err(err(format!("cannot open topic {topic}: {e}"))),
        };
        let max_batch = t.config().max_message_bytes as usize;
        let reader = EmbeddedSource::new(store.clone(), topic)
            .map_err(|e| err(format!("cannot read topic {topic}: {e}")))?;
        Ok(TopicWriter {
            what: what.to_owned(),
            topic: topic.to_owned(),
            partitions: t.partition_count() as u32,
            reader: Box::new(reader),
            backend: Backend::Embedded {
                store: store.clone(),
                batch_bytes: max_batch.saturating_sub(BATCH_HEADER_BYTES).min(1 << 20),
                max_record_bytes: max_batch.saturating_sub(BATCH_HEADER_BYTES + 64),
            },
            written_through: Mutex::new(None),
        })
    }

    /// Through rdkafka: an idempotent producer (a crash leaves a prefix of
    /// each partition's records) and a source to read back what is there.
    fn open_kafka(
        brokers: &str,
        topic: &str,
        partitions: u32,
        what: &str,
        delivery: Delivery,
    ) -> Result<TopicWriter, SinkError> {
        let err = |m: String| SinkError::new(what, m);
        let producer: BaseProducer<DeliveryErrors> = producer_config(brokers)
            .create_with_context(DeliveryErrors::new(what))
            .map_err(|e| err(format!("cannot create a Kafka producer for {brokers}: {e}")))?;
        let partitions = kafka_partitions(&producer, brokers, topic, partitions).map_err(err)?;
        let reader = KafkaSource::new(
            format!("sluice-sink-{topic}"),
            brokers.to_owned(),
            topic,
            None,
            Vec::new(),
        )
        .map_err(|e| err(e.to_string()))?
        .with_read_timeout(KAFKA_TIMEOUT);
        Ok(TopicWriter {
            what: what.to_owned(),
            topic: topic.to_owned(),
            partitions,
            reader: Box::new(reader),
            backend: Backend::Kafka {
                brokers: brokers.to_owned(),
                producer,
                delivery,
            },
            written_through: Mutex::new(None),
        })
    }

    /// Partitions of the topic when it was opened.
    pub fn partitions(&self) -> u32 {
        self.partitions
    }

    /// Whether its writes join a Kafka transaction (a Kafka broker with
    /// transactional delivery), which is how a job on many workers writes.
    pub fn transactional(&self) -> bool {
        matches!(
            self.backend,
            Backend::Kafka {
                delivery: Delivery::Transactional,
                ..
            }
        )
    }

    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Writes batch `batch_id`'s records, by partition, unless the topic
    /// already holds them (a replay). Through a Kafka broker with
    /// transactional delivery they go into the job's transaction of the
    /// batch (`txns`), which the driver commits with the batch.
    pub fn write(
        &self,
        txns: &Transactions,
        id: &WriterId,
        batch_id: u64,
        records: &BTreeMap<i32, Vec<OutRecord>>,
    ) -> Result<WriteReport, SinkError> {
        let mut through = sluice_log::common::mutex(&self.written_through);
        let look = through.is_none_or(|t| t.checked_add(1) != Some(batch_id));
        *through = None;
        if let Backend::Kafka {
            delivery: Delivery::Transactional,
            brokers,
            ..
        } = &self.backend
        {
            let report = txns.write(brokers, id, batch_id, |txn| {
                self.write_transactional(txn, id, batch_id, records, look)
            })?;
            *through = Some(batch_id);
            return Ok(report);
        }
        let ends = if look && !records.is_empty() {
            self.reader.partitions().map_err(|e| {
                self.error(format!("cannot read the end of topic {}: {e}", self.topic))
            })?
        } else {
            Vec::new()
        };
        let mut report = WriteReport::default();
        for (&partition, recs) in records {
            if partition < 0 || partition as u32 >= self.partitions {
                return Err(self.error(format!(
                    "partition {partition} does not exist (the topic has {})",
                    self.partitions
                )));
            }
            let start = if look {
                resume_at(
                    self.last_marker(&ends, partition)?.as_ref(),
                    id,
                    batch_id,
                    recs.len(),
                )
            } else {
                0
            };
            if start > 0 {
                tracing::info!(
                    "{}: batch {batch_id} replayed: partition {partition} of {} already holds {start} of its {} records",
                    self.what,
                    self.topic,
                    recs.len()
                );
            }
            report.skipped += start;
            if start < recs.len() {
                self.append(partition, id, batch_id, recs, start..recs.len())?;
                report.written += recs.len() - start;
            }
            crash_point("sink::topic::after_partition", batch_id);
        }
        if let Backend::Kafka {
            producer, brokers, ..
        } = &self.backend
        {
            acknowledged(producer, batch_id).map_err(|m| self.error(format!("{brokers}: {m}")))?;
        }
        crash_point("sink::topic::after_write", batch_id);
        *through = Some(batch_id);
        Ok(report)
    }

    fn error(&self, message: String) -> SinkError {
        SinkError::new(self.what.clone(), message)
    }

    /// Sends the batch's records in the job's transaction of the batch;
    /// on the first batch after a start, the recording group says whether
    /// a replayed batch already committed them.
    fn write_transactional(
        &self,
        txn: &mut InTxn<'_>,
        id: &WriterId,
        batch_id: u64,
        records: &BTreeMap<i32, Vec<OutRecord>>,
        look: bool,
    ) -> Result<WriteReport, SinkError> {
        let total: usize = records.values().map(Vec::len).sum();
        if look {
            let committed = txn
                .committed_batch(&self.topic)
                .map_err(|m| self.error(m))?;
            if committed.is_some_and(|c| c >= batch_id) {
                tracing::info!(
                    "{}: batch {batch_id} replayed: its transaction had committed to {}",
                    self.what,
                    self.topic
                );
                return Ok(WriteReport {
                    written: 0,
                    skipped: total,
                });
            }
        }
        if total == 0 {
            return Ok(WriteReport::default());
        }
        let producer = txn.join(&self.topic).map_err(|m| self.error(m))?;
        let tags = Tags {
            batch: id.batch_tag(batch_id),
            run: &id.run,
            of: 0,
        };
        for (&partition, recs) in records {
            if partition < 0 || partition as u32 >= self.partitions {
                return Err(self.error(format!(
                    "partition {partition} does not exist (the topic has {})",
                    self.partitions
                )));
            }
            let tags = Tags {
                of: recs.len(),
                ..tags.clone()
            };
            self.append_kafka(producer, partition, &tags, recs, 0..recs.len())?;
            crash_point("sink::topic::after_partition", batch_id);
        }
        // Sent, not yet acknowledged: the commit waits for that.
        crash_point("sink::topic::after_write", batch_id);
        Ok(WriteReport {
            written: total,
            skipped: 0,
        })
    }

    /// The marker of `partition`'s last record, if it has one; `ends` are
    /// the topic's partitions as the write began.
    fn last_marker(
        &self,
        ends: &[crate::source::PartitionInfo],
        partition: i32,
    ) -> Result<Option<Marker>, SinkError> {
        let Some(info) = ends.iter().find(|i| i.partition == partition) else {
            return Ok(None);
        };
        if info.high_watermark <= info.log_start {
            return Ok(None);
        }
        let mut marker = None;
        read_with(
            &*self.reader,
            partition,
            info.high_watermark - 1,
            info.high_watermark,
            |batch: RecordBatch| {
                let reader = Record::reader(batch.columns())?;
                if let Some(last) = batch.num_rows().checked_sub(1) {
                    marker = Marker::from_headers(Record::get(&reader, last).headers());
                }
                Ok(())
            },
        )
        .map_err(|e: ReadError<crate::data::SchemaError>| {
            let why = match e {
                ReadError::Source(e) => e.to_string(),
                ReadError::Consumer(e) => e.to_string(),
            };
            self.error(format!(
                "cannot read the last record of {} partition {partition}: {why}",
                self.topic
            ))
        })?;
        Ok(marker)
    }

    /// Writes `recs[range]` to `partition`, each tagged with the writer,
    /// the batch and its index in the batch.
    fn append(
        &self,
        partition: i32,
        id: &WriterId,
        batch_id: u64,
        recs: &[OutRecord],
        range: std::ops::Range<usize>,
    ) -> Result<(), SinkError> {
        let tags = Tags {
            batch: id.batch_tag(batch_id),
            run: &id.run,
            of: recs.len(),
        };
        match &self.backend {
            Backend::Embedded {
                store,
                batch_bytes,
                max_record_bytes,
            } => self.append_embedded(
                store,
                (*batch_bytes, *max_record_bytes),
                partition,
                &tags,
                recs,
                range,
            ),
            Backend::Kafka { producer, .. } => {
                self.append_kafka(producer, partition, &tags, recs, range)
            }
        }
    }

    /// Appends to the bundled store in batches of at most `batch_bytes`.
    fn append_embedded(
        &self,
        store: &LogStore,
        (batch_bytes, max_record_bytes): (usize, usize),
        partition: i32,
        tags: &Tags<'_>,
        recs: &[OutRecord],
        range: std::ops::Range<usize>,
    ) -> Result<(), SinkError> {
        let (tag, n) = (&tags.batch, tags.of);
        let id_run = tags.run;
        let part = store.partition(&self.topic, partition).map_err(|e| {
            self.error(format!(
                "cannot open {} partition {partition}: {e}",
                self.topic
            ))
        })?;
        let mut builder = BatchBuilder::new(Compression::None);
        let flush = |builder: &mut BatchBuilder| -> Result<(), SinkError> {
            if builder.is_empty() {
                return Ok(());
            }
            let mut bytes = builder
                .finish()
                .map_err(|e| self.error(format!("cannot encode records: {e}")))?;
            part.append(&mut bytes).map_err(|e| {
                self.error(format!(
                    "cannot append to {} partition {partition}: {e}",
                    self.topic
                ))
            })?;
            Ok(())
        };
        for (i, r) in recs.iter().enumerate().take(range.end).skip(range.start) {
            let index = format!("{i}/{n}");
            let mut headers: Vec<(&str, Option<&[u8]>)> = r
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_deref()))
                .collect();
            headers.push((BATCH_HEADER, Some(tag.as_bytes())));
            headers.push((INDEX_HEADER, Some(index.as_bytes())));
            headers.push((RUN_HEADER, Some(id_run.as_bytes())));
            let size = r.key.as_ref().map_or(0, Vec::len)
                + r.value.as_ref().map_or(0, Vec::len)
                + headers
                    .iter()
                    .map(|(k, v)| k.len() + v.map_or(0, <[u8]>::len))
                    .sum::<usize>();
            if size > max_record_bytes {
                return Err(self.error(format!(
                    "a record of {size} bytes is larger than topic {}'s max.message.bytes allows ({max_record_bytes} bytes)",
                    self.topic
                )));
            }
            if builder.size_bytes() + size + 32 > batch_bytes {
                flush(&mut builder)?;
            }
            builder.push_record(
                r.key.as_deref(),
                r.value.as_deref(),
                r.timestamp_ms,
                &headers,
            );
        }
        flush(&mut builder)
    }

    /// Sends through rdkafka, waiting out a full local queue.
    fn append_kafka(
        &self,
        producer: &BaseProducer<DeliveryErrors>,
        partition: i32,
        tags: &Tags<'_>,
        recs: &[OutRecord],
        range: std::ops::Range<usize>,
    ) -> Result<(), SinkError> {
        let (tag, n) = (&tags.batch, tags.of);
        let id_run = tags.run;
        for (i, r) in recs.iter().enumerate().take(range.end).skip(range.start) {
            let index = format!("{i}/{n}");
            let mut headers = OwnedHeaders::new_with_capacity(r.headers.len() + 3);
            for (k, v) in &r.headers {
                headers = headers.insert(Header {
                    key: k.as_str(),
                    value: v.as_deref(),
                });
            }
            for (k, v) in [
                (BATCH_HEADER, tag.as_bytes()),
                (INDEX_HEADER, index.as_bytes()),
                (RUN_HEADER, id_run.as_bytes()),
            ] {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(v),
                });
            }
            let mut record = BaseRecord::<[u8], [u8]>::to(&self.topic)
                .partition(partition)
                .timestamp(r.timestamp_ms)
                .headers(headers);
            if let Some(k) = &r.key {
                record = record.key(k.as_slice());
            }
            if let Some(v) = &r.value {
                record = record.payload(v.as_slice());
            }
            let started = Instant::now();
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r))
                        if started.elapsed() < FLUSH_TIMEOUT =>
                    {
                        record = r;
                        producer.poll(Duration::from_millis(10));
                    }
                    Err((e, _)) => {
                        return Err(self.error(format!(
                            "cannot send a record to {} partition {partition}: {e}",
                            self.topic
                        )));
                    }
                }
            }
        }
        producer.poll(Duration::ZERO);
        Ok(())
    }
}

/// What every record of a batch carries: the batch tag, the writer's run
/// and the batch's record count (for the index header).
#[derive(Clone)]
struct Tags<'a> {
    batch: String,
    run: &'a str,
    of: usize,
}

/// The partition count of `topic` at `brokers`, creating the topic with
/// `partitions` partitions (and the brokers' default replication) if it
/// does not exist.
fn kafka_partitions(
    producer: &BaseProducer<DeliveryErrors>,
    brokers: &str,
    topic: &str,
    partitions: u32,
) -> Result<u32, String> {
    kafka_topic_partitions(producer, brokers, topic, partitions, &[])
}

/// [`kafka_partitions`] with topic configs for a topic it creates.
pub(crate) fn kafka_topic_partitions<C: ProducerContext>(
    producer: &BaseProducer<C>,
    brokers: &str,
    topic: &str,
    partitions: u32,
    configs: &[(&str, &str)],
) -> Result<u32, String> {
    let lookup = || -> Result<Option<u32>, String> {
        let md = producer
            .client()
            .fetch_metadata(Some(topic), KAFKA_TIMEOUT)
            .map_err(|e| {
                format!("cannot read the metadata of topic {topic} from {brokers}: {e} (is the broker running?)")
            })?;
        let Some(t) = md.topics().iter().find(|t| t.name() == topic) else {
            return Ok(None);
        };
        match t.error().map(RDKafkaErrorCode::from) {
            None if !t.partitions().is_empty() => Ok(Some(t.partitions().len() as u32)),
            None
            | Some(RDKafkaErrorCode::UnknownTopicOrPartition)
            | Some(RDKafkaErrorCode::UnknownTopic)
            | Some(RDKafkaErrorCode::LeaderNotAvailable) => Ok(None),
            Some(code) => Err(format!("cannot read the metadata of topic {topic}: {code}")),
        }
    };
    if let Some(n) = lookup()? {
        return Ok(n);
    }
    let admin: AdminClient<_> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .map_err(|e| format!("cannot create a Kafka admin client for {brokers}: {e}"))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start a runtime for the admin client: {e}"))?;
    let mut new_topic = NewTopic::new(topic, partitions as i32, TopicReplication::Fixed(-1));
    for (k, v) in configs {
        new_topic = new_topic.set(k, v);
    }
    let results = runtime
        .block_on(admin.create_topics(
            [&new_topic],
            &AdminOptions::new().operation_timeout(Some(KAFKA_TIMEOUT)),
        ))
        .map_err(|e| format!("cannot create topic {topic} at {brokers}: {e}"))?;
    for r in results {
        match r {
            Ok(_) => {
                tracing::info!("created topic {topic} with {partitions} partition(s) at {brokers}")
            }
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => {
                return Err(format!("cannot create topic {topic} at {brokers}: {code}"));
            }
        }
    }
    let deadline = Instant::now() + KAFKA_TIMEOUT;
    loop {
        if let Some(n) = lookup()? {
            return Ok(n);
        }
        if Instant::now() > deadline {
            return Err(format!(
                "topic {topic} was created at {brokers} but its partitions did not appear within {KAFKA_TIMEOUT:?}"
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_log::log::StoreOptions;

    fn me(name: &str, run: &str) -> WriterId {
        WriterId {
            job: "job".into(),
            run: run.into(),
            name: name.into(),
        }
    }

    fn marker(writer: &str, batch_id: u64, run: &str, index: Option<u64>) -> Marker {
        Marker {
            writer: writer.into(),
            batch_id,
            run: Some(run.into()),
            index,
        }
    }

    #[test]
    fn resume_point_decisions() {
        let id = me("out", "7");
        // Nothing there, another writer, another run of the job.
        assert_eq!(resume_at(None, &id, 5, 3), 0);
        assert_eq!(
            resume_at(Some(&marker("job/other", 9, "7", Some(2))), &id, 5, 3),
            0
        );
        assert_eq!(
            resume_at(Some(&marker("job/out", 9, "6", Some(2))), &id, 5, 3),
            0
        );
        // An earlier batch: write all; a later one: skip all.
        assert_eq!(
            resume_at(Some(&marker("job/out", 4, "7", Some(0))), &id, 5, 3),
            0
        );
        assert_eq!(
            resume_at(Some(&marker("job/out", 6, "7", Some(0))), &id, 5, 3),
            3
        );
        // This batch: complete it.
        assert_eq!(
            resume_at(Some(&marker("job/out", 5, "7", Some(0))), &id, 5, 3),
            1
        );
        assert_eq!(
            resume_at(Some(&marker("job/out", 5, "7", Some(2))), &id, 5, 3),
            3
        );
        assert_eq!(
            resume_at(Some(&marker("job/out", 5, "7", Some(9))), &id, 5, 3),
            3
        );
        assert_eq!(
            resume_at(Some(&marker("job/out", 5, "7", None)), &id, 5, 3),
            3
        );
    }

    #[test]
    fn markers_parse_from_headers() {
        let h: Vec<(&str, Option<&[u8]>)> = vec![
            ("user", Some(b"x")),
            (BATCH_HEADER, Some(b"my/job/out/12")),
            (INDEX_HEADER, Some(b"3/10")),
            (RUN_HEADER, Some(b"99")),
        ];
        assert_eq!(
            Marker::from_headers(h.into_iter()),
            Some(Marker {
                writer: "my/job/out".into(),
                batch_id: 12,
                run: Some("99".into()),
                index: Some(3),
            })
        );
        let bad: Vec<(&str, Option<&[u8]>)> = vec![(BATCH_HEADER, Some(b"no-batch"))];
        assert_eq!(Marker::from_headers(bad.into_iter()), None);
        assert_eq!(Marker::from_headers(std::iter::empty()), None);
    }

    fn records(n: usize, keyed: bool) -> Vec<OutRecord> {
        (0..n)
            .map(|i| OutRecord {
                key: keyed.then(|| format!("k{i}").into_bytes()),
                value: Some(format!("v{i}").into_bytes()),
                timestamp_ms: 1000,
                headers: vec![("h".into(), Some(b"x".to_vec()))],
            })
            .collect()
    }

    fn read_all(store: &Arc<LogStore>, topic: &str, partition: i32) -> Vec<(String, Marker)> {
        let source = EmbeddedSource::new(store.clone(), topic).unwrap();
        let hw = source.partitions().unwrap()[partition as usize].high_watermark;
        let mut out = Vec::new();
        source
            .read(partition, 0, hw, &mut |b: RecordBatch| {
                let reader = Record::reader(b.columns()).expect("the source schema");
                for i in 0..b.num_rows() {
                    let r = Record::get(&reader, i);
                    let headers: Vec<_> = r.headers().collect();
                    assert_eq!(headers[0], ("h", Some(&b"x"[..])));
                    out.push((
                        r.value_str().to_owned(),
                        Marker::from_headers(headers.into_iter()).unwrap(),
                    ));
                }
                Ok(())
            })
            .unwrap();
        out
    }

    #[test]
    fn replays_complete_a_partial_batch_and_skip_a_whole_one() {
        let dir = tempfile::tempdir().unwrap();
        let options = StoreOptions {
            background: false,
            ..Default::default()
        };
        let store = Arc::new(LogStore::open(dir.path(), options).unwrap());
        let target = TopicTarget::Embedded(store.clone());
        let open = || TopicWriter::open(&target, "out", 2, "topic sink out").unwrap();
        let id = me("out", "1");
        let batch2 = BTreeMap::from([(0, records(4, false)), (1, records(1, false))]);

        // Batch 1 whole, then a crash in batch 2 after 2 of partition 0's
        // 4 records.
        let first = open();
        assert_eq!(first.partitions(), 2);
        let batch1 = BTreeMap::from([(0, records(3, false)), (1, records(2, false))]);
        first
            .write(&Transactions::default(), &id, 1, &batch1)
            .unwrap();
        first.append(0, &id, 2, &batch2[&0], 0..2).unwrap();
        drop(first);

        // The restarted process completes partition 0 and writes partition 1.
        let report = open()
            .write(&Transactions::default(), &id, 2, &batch2)
            .unwrap();
        assert_eq!(
            report,
            WriteReport {
                written: 3,
                skipped: 2
            }
        );
        let p0: Vec<String> = read_all(&store, "out", 0)
            .into_iter()
            .map(|r| r.0)
            .collect();
        assert_eq!(p0, ["v0", "v1", "v2", "v0", "v1", "v2", "v3"]);
        let p0_markers: Vec<Option<u64>> = read_all(&store, "out", 0)
            .into_iter()
            .map(|r| r.1.index)
            .collect();
        assert_eq!(
            p0_markers,
            [0, 1, 2, 0, 1, 2, 3].map(Some),
            "indexes continue where the crash left off"
        );

        // The same batch again (a crash after the write): nothing written.
        let again = open();
        let report = again
            .write(&Transactions::default(), &id, 2, &batch2)
            .unwrap();
        assert_eq!(
            report,
            WriteReport {
                written: 0,
                skipped: 5
            }
        );
        // The next batch of the same process does not look.
        let report = again
            .write(
                &Transactions::default(),
                &id,
                3,
                &BTreeMap::from([(1, records(1, false))]),
            )
            .unwrap();
        assert_eq!(
            report,
            WriteReport {
                written: 1,
                skipped: 0
            }
        );
        let p1 = read_all(&store, "out", 1);
        assert_eq!(
            p1.iter().map(|r| r.1.batch_id).collect::<Vec<_>>(),
            [1, 1, 2, 3]
        );
        assert_eq!(p1[2].1.writer, "job/out");

        // A recreated job (another run of the checkpoint) at batch 1 writes.
        let report = open()
            .write(
                &Transactions::default(),
                &me("out", "2"),
                1,
                &BTreeMap::from([(1, records(1, false))]),
            )
            .unwrap();
        assert_eq!(report.written, 1);

        // The topic exists now: a writer asking for 5 partitions gets 2.
        assert_eq!(
            TopicWriter::open(&target, "out", 5, "x")
                .unwrap()
                .partitions(),
            2
        );
        let err = TopicWriter::open(&target, "bad name!", 1, "topic sink s").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("topic sink s: cannot create topic bad name!"),
            "{err}"
        );
    }

    #[test]
    fn keyed_records_spread_by_murmur2_and_unkeyed_go_to_partition_0() {
        assert_eq!(partition_of(None, 4), 0);
        assert_eq!(
            partition_of(Some(b"k1"), 4),
            partition_for_key(b"k1", 4) as i32
        );
        let spread: std::collections::BTreeSet<i32> = (0..50)
            .map(|i| partition_of(Some(format!("key{i}").as_bytes()), 4))
            .collect();
        assert_eq!(spread.len(), 4);
    }
}
