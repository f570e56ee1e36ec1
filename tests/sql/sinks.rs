//! SQL sinks and stream formats, through the real `sluice run` binary: a
//! topic sink's records equal the expected rows, and stay exactly once
//! when the job is SIGKILLed right after the sink wrote (failpoints) or at
//! random moments; a file sink's manifest lists each batch's files once
//! and the files read back (DataFusion) as the expected rows; CSV streams
//! skip bad rows and count them; dead letters keep the original record and
//! say why and where it came from; `on_error = 'fail'` names the record;
//! every bad option is refused with the sink or stream, the option and
//! what is accepted.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::Duration;

use arrow::array::RecordBatch;
use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::Int64Type;
use datafusion::prelude::{CsvReadOptions, JsonReadOptions, ParquetReadOptions};
use sluice::data::Data;
use sluice::log::{LogStore, TopicConfig};
use sluice::producer::{BatchBuilder, Compression};
use sluice::sink::file::{ManifestEntry, read_manifest};
use sluice::source::embedded::EmbeddedSource;
use sluice::source::{Record, Source};

use crate::common;
use crate::common::broker::{BrokerOpts, TestBroker, run_bounded};
use crate::common_sql::Reference;

const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// A record as the tests write or read it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Rec {
    partition: i32,
    key: Option<String>,
    value: Option<String>,
    headers: Vec<(String, String)>,
}

impl Rec {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// `n` click events as JSON, `{"user":"u<i%7>","ms":i}`.
fn clicks(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!(r#"{{"user":"u{}","ms":{i}}}"#, i % 7))
        .collect()
}

/// A record to load: key, value, headers.
type Input<'a> = (Option<&'a str>, &'a str, Vec<(&'a str, &'a str)>);

/// Writes `values` (with optional keys and headers) into a new topic,
/// round-robin over its partitions in batches of 7.
fn load(data: &Path, topic: &str, partitions: i64, records: &[Input<'_>]) {
    let store = LogStore::open(data, common::quiet()).unwrap();
    let t = store
        .create_topic(topic, partitions, TopicConfig::default())
        .unwrap();
    for (i, chunk) in records.chunks(7).enumerate() {
        let mut b = BatchBuilder::new(Compression::None);
        for (k, v, h) in chunk {
            let headers: Vec<(&str, Option<&[u8]>)> =
                h.iter().map(|(k, v)| (*k, Some(v.as_bytes()))).collect();
            b.push_with_headers(
                k.map(str::as_bytes),
                v.as_bytes(),
                1_000 + i as i64,
                &headers,
            );
        }
        let mut bytes = b.finish().unwrap();
        t.partition((i as i64 % partitions) as i32)
            .unwrap()
            .append(&mut bytes)
            .unwrap();
    }
    store.close().unwrap();
}

fn load_values(data: &Path, topic: &str, partitions: i64, values: &[String]) {
    let records: Vec<_> = values
        .iter()
        .map(|v| (None, v.as_str(), Vec::new()))
        .collect();
    load(data, topic, partitions, &records);
}

/// Every record of `topic`, partition by partition, in offset order.
fn read_topic(data: &Path, topic: &str) -> Vec<Rec> {
    let store = Arc::new(LogStore::open(data, common::quiet()).unwrap());
    let source = EmbeddedSource::new(store.clone(), topic).unwrap();
    let mut out = Vec::new();
    for p in source.partitions().unwrap() {
        source
            .read(p.partition, p.log_start, p.high_watermark, &mut |b| {
                let reader = Record::reader(b.columns()).expect("the source schema");
                for i in 0..b.num_rows() {
                    let r = Record::get(&reader, i);
                    out.push(Rec {
                        partition: r.partition,
                        key: r.key.map(|k| String::from_utf8_lossy(k).into_owned()),
                        value: r.value.map(|v| String::from_utf8_lossy(v).into_owned()),
                        headers: r
                            .headers()
                            .map(|(k, v)| {
                                (
                                    k.to_owned(),
                                    String::from_utf8_lossy(v.unwrap_or_default()).into_owned(),
                                )
                            })
                            .collect(),
                    });
                }
                Ok(())
            })
            .unwrap();
    }
    drop(source);
    store.close().unwrap();
    out
}

/// A working directory with the store's data and the jobs' files.
struct Work {
    dir: tempfile::TempDir,
}

impl Work {
    fn new() -> Work {
        Work {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn data(&self) -> PathBuf {
        self.path().join("data")
    }

    /// `sluice run JOB.sql` until caught up, with `where_` (the data dir by
    /// default) and `FAILPOINTS=failpoints` when given.
    fn command(&self, job: &str, sql: &str, where_: &[&str], failpoints: Option<&str>) -> Command {
        let file = self.path().join(format!("{job}.sql"));
        std::fs::write(&file, sql).unwrap();
        let mut c = common::sluice();
        c.current_dir(self.path())
            .arg("run")
            .arg(&file)
            .args(["--until-caught-up", "--interval", "10ms", "--quiet"])
            .args(["--max-records-per-batch", "20", "--checkpoint-dir"])
            .arg(self.path().join(format!("cp-{job}")))
            .arg("--progress-json")
            .arg(self.path().join(format!("{job}.progress")));
        if where_.is_empty() {
            c.arg("--data-dir").arg(self.data());
        } else {
            c.args(where_);
        }
        if let Some(f) = failpoints {
            c.env("FAILPOINTS", f);
        }
        c
    }

    fn run(&self, job: &str, sql: &str) -> Output {
        run_bounded(&mut self.command(job, sql, &[], None), RUN_TIMEOUT)
    }

    /// Runs the job with the failpoint `fp`, which must SIGKILL it.
    #[cfg(feature = "failpoints")]
    fn run_killed(&self, job: &str, sql: &str, where_: &[&str], fp: &str) {
        let out = run_bounded(&mut self.command(job, sql, where_, Some(fp)), RUN_TIMEOUT);
        assert_killed(&out, fp);
    }

    fn run_ok(&self, job: &str, sql: &str) {
        let out = self.run(job, sql);
        assert!(
            out.status.success(),
            "job {job} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The sum of a progress counter over the batches of the job's runs.
    fn counter(&self, job: &str, name: &str) -> u64 {
        let text = std::fs::read_to_string(self.path().join(format!("{job}.progress")))
            .unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v["counters"][name].as_u64())
            .sum()
    }
}

/// The rows a reader of the topic sees, as sorted (key, value) pairs, after
/// checking the batch tags: within each partition and batch, the indexes
/// `i/n` are 0..n exactly once, in order.
fn rows_checked(records: &[Rec], writer: &str) -> Vec<(Option<String>, String)> {
    let mut per_batch: BTreeMap<(i32, String), Vec<(usize, usize)>> = BTreeMap::new();
    for r in records {
        let tag = r.header("sluice.batch").expect("every record is tagged");
        assert!(
            tag.starts_with(&format!("{writer}/")),
            "tag {tag} of {writer}"
        );
        let (i, n) = r.header("sluice.index").unwrap().split_once('/').unwrap();
        per_batch
            .entry((r.partition, tag.to_owned()))
            .or_default()
            .push((i.parse().unwrap(), n.parse().unwrap()));
    }
    for ((p, tag), indexes) in &per_batch {
        let n = indexes[0].1;
        assert_eq!(
            indexes,
            &(0..n).map(|i| (i, n)).collect::<Vec<_>>(),
            "partition {p}, batch {tag}: every record once, in order"
        );
    }
    let mut rows: Vec<_> = records
        .iter()
        .map(|r| (r.key.clone(), r.value.clone().unwrap_or_default()))
        .collect();
    rows.sort();
    rows
}

/// What a stateless `SELECT user, ms FROM clicks` writes as JSON, keyed by
/// user.
fn expected_click_rows(n: usize) -> Vec<(Option<String>, String)> {
    let mut rows: Vec<_> = (0..n)
        .map(|i| {
            let user = format!("u{}", i % 7);
            (
                Some(user.clone()),
                format!(r#"{{"user":"{user}","ms":{i}}}"#),
            )
        })
        .collect();
    rows.sort();
    rows
}

const CLICKS: &str =
    "CREATE STREAM clicks (user TEXT, ms BIGINT) WITH (topic = 'clicks', format = 'json');\n";

#[test]
fn topic_sink_rows_equal_the_expected_rows_json_keyed_and_text() {
    let work = Work::new();
    load_values(&work.data(), "clicks", 2, &clicks(300));

    // JSON rows keyed by user, over 3 partitions.
    work.run_ok(
        "keyed",
        &format!(
            "{CLICKS}CREATE SINK out WITH (type = 'topic', topic = 'out', key = 'user', partitions = 3);\n\
             INSERT INTO out SELECT user, ms FROM clicks;"
        ),
    );
    let out = read_topic(&work.data(), "out");
    assert_eq!(rows_checked(&out, "keyed/out"), expected_click_rows(300));
    let partitions: BTreeSet<i32> = out.iter().map(|r| r.partition).collect();
    assert_eq!(partitions.len(), 3, "7 users spread over 3 partitions");
    for r in &out {
        let key = r.key.as_deref().unwrap();
        assert_eq!(
            r.partition as u32,
            sluice::producer::partition_for_key(key.as_bytes(), 3),
            "{key} goes where Kafka's partitioner puts it"
        );
    }

    // Text rows without a key: one column, all in partition 0; the topic
    // is named after the sink.
    work.run_ok(
        "lines",
        &format!(
            "{CLICKS}CREATE SINK evens WITH (type = 'topic', format = 'text');\n\
             INSERT INTO evens SELECT user || '=' || CAST(ms AS VARCHAR) AS line FROM clicks WHERE ms % 2 = 0;"
        ),
    );
    let out = read_topic(&work.data(), "evens");
    let mut expected: Vec<_> = (0..300)
        .filter(|i| i % 2 == 0)
        .map(|i| (None, format!("u{}={i}", i % 7)))
        .collect();
    expected.sort();
    assert_eq!(rows_checked(&out, "lines/evens"), expected);
    assert!(out.iter().all(|r| r.partition == 0));

    // An aggregate in update mode: the last record of each key is its
    // total, and a key appears at most once per batch.
    work.run_ok(
        "totals",
        &format!(
            "{CLICKS}CREATE SINK totals WITH (type = 'topic', key = 'user', partitions = 2);\n\
             INSERT INTO totals SELECT user, sum(ms) AS total, count(*) AS n FROM clicks GROUP BY user;"
        ),
    );
    let out = read_topic(&work.data(), "totals");
    check_totals(&out, "totals/totals", 300);
}

/// Checks an update-mode aggregate's records: every key once per batch,
/// and the last value of each key is the total over all `n` clicks.
fn check_totals(out: &[Rec], writer: &str, n: usize) {
    rows_checked(out, writer);
    let mut seen = BTreeSet::new();
    let mut last = BTreeMap::new();
    for r in out {
        let key = r.key.clone().unwrap();
        assert!(
            seen.insert((r.header("sluice.batch").unwrap().to_owned(), key.clone())),
            "{key} twice in one batch"
        );
        last.insert(key, r.value.clone().unwrap());
    }
    let mut expected = BTreeMap::new();
    for u in 0..7 {
        let ms: Vec<usize> = (0..n).filter(|i| i % 7 == u).collect();
        expected.insert(
            format!("u{u}"),
            format!(
                r#"{{"user":"u{u}","total":{},"n":{}}}"#,
                ms.iter().sum::<usize>(),
                ms.len()
            ),
        );
    }
    assert_eq!(last, expected);
}

#[cfg(feature = "failpoints")]
fn assert_killed(out: &Output, what: &str) {
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGKILL),
        "{what}: the failpoint must kill the job; stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[cfg(feature = "failpoints")]
#[test]
fn topic_sink_is_exactly_once_across_sigkills_after_the_write() {
    use rand::{Rng, SeedableRng};

    let work = Work::new();
    load_values(&work.data(), "clicks", 2, &clicks(400));
    let keyed = format!(
        "{CLICKS}CREATE SINK out WITH (type = 'topic', topic = 'out', key = 'user', partitions = 3);\n\
         INSERT INTO out SELECT user, ms FROM clicks;"
    );
    // Killed between the partitions of batch 2, then after all of batch 4
    // was written but before its commit: both batches are replayed.
    for fp in [
        "sink::topic::after_partition=return(2)",
        "sink::topic::after_write=return(4)",
    ] {
        work.run_killed("keyed", &keyed, &[], fp);
    }
    // SIGKILLs at random moments.
    let mut rng = rand::rngs::SmallRng::seed_from_u64(7);
    for _ in 0..3 {
        let mut child = work.command("keyed", &keyed, &[], None).spawn().unwrap();
        std::thread::sleep(Duration::from_millis(rng.random_range(30..200)));
        let _ = child.kill();
        let _ = child.wait();
    }
    work.run_ok("keyed", &keyed);
    let out = read_topic(&work.data(), "out");
    assert_eq!(rows_checked(&out, "keyed/out"), expected_click_rows(400));
    assert!(
        work.counter("keyed", "already in topic out") > 0,
        "the replays found records already written"
    );

    // An aggregate, killed mid-batch: its replay writes the same rows in
    // the same order, so the resumed batch has every key once.
    let totals = format!(
        "{CLICKS}CREATE SINK totals WITH (type = 'topic', key = 'user', partitions = 3);\n\
         INSERT INTO totals SELECT user, sum(ms) AS total, count(*) AS n FROM clicks GROUP BY user;"
    );
    for fp in [
        "sink::topic::after_partition=return(3)",
        "sink::topic::after_write=return(5)",
    ] {
        work.run_killed("totals", &totals, &[], fp);
    }
    work.run_ok("totals", &totals);
    check_totals(&read_topic(&work.data(), "totals"), "totals/totals", 400);
}

#[test]
fn topic_sink_and_dead_letters_through_a_kafka_broker() {
    // Auto-creation on: the sink must still create its topic with its own
    // partition count (2), not the broker's default (1).
    let mut broker = TestBroker::start_with(BrokerOpts::auto_create());
    broker.kill();
    let mut input: Vec<String> = clicks(120);
    input.insert(30, "not json".into());
    input.insert(90, r#"{"user":"u1","ms":"NaN"}"#.into());
    load_values(&broker.data_dir(), "clicks", 2, &input);
    broker.restart();
    let work = Work::new();
    let bootstrap = broker.bootstrap();
    let sql = "CREATE STREAM clicks (user TEXT, ms BIGINT) WITH (topic = 'clicks', format = 'json', dead_letter_topic = 'clicks-dlq');\n\
               CREATE SINK out WITH (type = 'topic', key = 'user', partitions = 2);\n\
               INSERT INTO out SELECT user, ms FROM clicks;";
    #[cfg(feature = "failpoints")]
    {
        // Killed after batch 2's transaction committed, before its
        // checkpoint: the replay finds the batch id recorded with the
        // transaction and skips.
        let fp = "sink::topic::after_commit=return(2)";
        work.run_killed("kafka", sql, &["--brokers", &bootstrap], fp);
    }
    let out = run_bounded(
        &mut work.command("kafka", sql, &["--brokers", &bootstrap], None),
        RUN_TIMEOUT,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    broker.stop_gracefully();
    let out = read_topic(&broker.data_dir(), "out");
    assert_eq!(rows_checked(&out, "kafka/out"), expected_click_rows(120));
    let partitions: BTreeSet<i32> = out.iter().map(|r| r.partition).collect();
    assert_eq!(partitions, BTreeSet::from([0, 1]));
    let dlq = read_topic(&broker.data_dir(), "clicks-dlq");
    let values: Vec<_> = dlq.iter().map(|r| r.value.clone().unwrap()).collect();
    assert_eq!(values, ["not json", r#"{"user":"u1","ms":"NaN"}"#]);
    assert!(
        dlq[0]
            .header("sluice.source")
            .unwrap()
            .starts_with("clicks/")
    );
    assert_eq!(work.counter("kafka", "bad records"), 2);
    #[cfg(feature = "failpoints")]
    assert!(
        work.counter("kafka", "already in topic out") > 0,
        "the replayed batch found its transaction committed"
    );
}

/// A SQL job writing a topic sink and a dead-letter topic to `sluice
/// broker` in one transaction per batch, SIGKILLed at random moments
/// (`SLUICE_ENGINE_KILLS`, 20 in CI) and once inside a transaction (its
/// records stored, not committed), then run to the end: a read_committed
/// reader of either topic sees every result row and every bad record
/// exactly once, although the killed runs left aborted records in the log;
/// and the killed transaction held the batch's dead letters and sink rows
/// together (one producer's open transaction in both topics).
#[test]
fn transactional_topic_sink_is_exactly_once_under_sigkill() {
    use rand::{Rng, SeedableRng};
    let kills: usize = common::env_or("SLUICE_ENGINE_KILLS", 20);
    let seed = common::crash_seed();
    eprintln!("SLUICE_CRASH_SEED={seed} SLUICE_ENGINE_KILLS={kills}");
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let mut broker = TestBroker::start();
    broker.kill();
    // A bad record among every ten: every batch (20 records) has dead
    // letters and sink rows.
    let mut input = clicks(600);
    let bad: Vec<String> = (0..60).map(|i| format!("not json {i}")).collect();
    for (i, b) in bad.iter().enumerate().rev() {
        input.insert(i * 10, b.clone());
    }
    load_values(&broker.data_dir(), "clicks", 2, &input);
    broker.restart();
    let work = Work::new();
    let bootstrap = broker.bootstrap();
    let at_broker = ["--brokers", bootstrap.as_str()];
    let sql = "CREATE STREAM clicks (user TEXT, ms BIGINT) WITH (topic = 'clicks', format = 'json', dead_letter_topic = 'clicks-dlq');\n\
               CREATE SINK out WITH (type = 'topic', key = 'user', partitions = 3);\n\
               INSERT INTO out SELECT user, ms FROM clicks;";
    #[cfg(feature = "failpoints")]
    {
        work.run_killed(
            "txn",
            sql,
            &at_broker,
            "sink::topic::before_commit=return(4)",
        );
        broker.kill();
        let open_in = |topic: &str| -> BTreeSet<i64> {
            let store = LogStore::open(broker.data_dir(), common::quiet()).unwrap();
            let producers = store
                .topic(topic)
                .unwrap()
                .partitions()
                .iter()
                .flat_map(|p| p.ongoing_transactions())
                .map(|(producer_id, _)| producer_id)
                .collect();
            store.close().unwrap();
            producers
        };
        let (sink_open, dlq_open) = (open_in("out"), open_in("clicks-dlq"));
        assert_eq!(sink_open.len(), 1, "one open transaction in the sink topic");
        assert_eq!(
            sink_open, dlq_open,
            "the batch's dead letters are in the sink rows' transaction"
        );
        broker.restart();
    }
    for _ in 0..kills {
        let mut child = work
            .command("txn", sql, &at_broker, None)
            .spawn()
            .expect("start the job");
        std::thread::sleep(Duration::from_millis(rng.random_range(150..1500)));
        let _ = child.kill();
        let _ = child.wait();
    }
    let out = run_bounded(&mut work.command("txn", sql, &at_broker, None), RUN_TIMEOUT);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    broker.stop_gracefully();
    // `read_topic` reads committed records only, as read_committed readers do.
    let committed = read_topic(&broker.data_dir(), "out");
    assert_eq!(
        rows_checked(&committed, "txn/out"),
        expected_click_rows(600)
    );
    let dead = read_topic(&broker.data_dir(), "clicks-dlq");
    let mut expected_dead: Vec<(Option<String>, String)> =
        bad.iter().map(|b| (None, b.clone())).collect();
    expected_dead.sort();
    assert_eq!(rows_checked(&dead, "txn/clicks"), expected_dead);
    #[cfg(feature = "failpoints")]
    {
        // The run killed inside a transaction left records that only the
        // aborted-transaction index keeps from readers.
        let store = LogStore::open(broker.data_dir(), common::quiet()).unwrap();
        for (topic, visible) in [("out", committed.len()), ("clicks-dlq", dead.len())] {
            let mut stored = 0;
            for p in store.topic(topic).unwrap().partitions() {
                let (bytes, _) = p.read(0, 64 << 20).unwrap();
                stored += common::decode_batches(&bytes, topic)
                    .iter()
                    .filter(|b| !b.header.is_control())
                    .map(|b| b.records.len())
                    .sum::<usize>();
            }
            assert!(
                stored > visible,
                "{topic}: {stored} records stored, {visible} committed: no transaction was aborted"
            );
        }
    }
}

/// Reads the files the manifest lists with DataFusion, as a reader would;
/// returns `(user, ms)` rows sorted by ms.
fn read_listed(dir: &Path, manifest: &[ManifestEntry], format: &str) -> Vec<(String, i64)> {
    let files: Vec<String> = manifest
        .iter()
        .flat_map(|e| &e.files)
        .map(|f| dir.join(&f.path).to_string_lossy().into_owned())
        .collect();
    let reference = Reference::new();
    let batches: Vec<RecordBatch> = reference.block_on(async {
        let ctx = reference.ctx();
        let df = match format {
            "parquet" => ctx.read_parquet(files, ParquetReadOptions::default()).await,
            "json" => {
                ctx.read_json(files, JsonReadOptions::default().file_extension(".json"))
                    .await
            }
            _ => {
                ctx.read_csv(files, CsvReadOptions::new().has_header(true))
                    .await
            }
        }
        .unwrap();
        df.sort_by(vec![datafusion::prelude::col("ms")])
            .unwrap()
            .collect()
            .await
            .unwrap()
    });
    let mut rows = Vec::new();
    for b in batches {
        let users = datafusion::arrow::compute::cast(
            b.column_by_name("user").unwrap(),
            &arrow::datatypes::DataType::Utf8,
        )
        .unwrap();
        let ms = b.column_by_name("ms").unwrap().as_primitive::<Int64Type>();
        for i in 0..b.num_rows() {
            rows.push((users.as_string::<i32>().value(i).to_owned(), ms.value(i)));
        }
    }
    rows
}

/// The manifest lists each batch once, every `part-` file in the
/// directory is listed, and the counts add up.
fn check_manifest(dir: &Path, job: &str) -> Vec<ManifestEntry> {
    let manifest = read_manifest(dir).unwrap();
    let ids: Vec<u64> = manifest.iter().map(|e| e.batch_id).collect();
    let unique: BTreeSet<u64> = ids.iter().copied().collect();
    assert_eq!(ids.len(), unique.len(), "each batch once: {ids:?}");
    assert!(manifest.len() > 3, "several batches: {ids:?}");
    let listed: BTreeSet<String> = manifest
        .iter()
        .flat_map(|e| e.files.iter().map(|f| f.path.clone()))
        .collect();
    let on_disk: BTreeSet<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("part-"))
        .collect();
    assert_eq!(listed, on_disk, "no part file outside the manifest");
    for e in &manifest {
        assert_eq!(e.job, job);
        assert!(e.rows > 0, "batches without rows have no entry");
        assert_eq!(e.rows, e.files.iter().map(|f| f.rows).sum::<u64>());
        assert_eq!(
            e.schema.iter().map(|f| f.name.as_str()).collect::<Vec<_>>(),
            ["user", "ms"]
        );
        for f in &e.files {
            assert!(f.path.starts_with(&format!("part-{:020}-", e.batch_id)));
            assert_eq!(std::fs::metadata(dir.join(&f.path)).unwrap().len(), f.bytes);
        }
    }
    manifest
}

#[test]
fn file_sink_manifest_lists_each_batch_once_and_files_read_back() {
    let work = Work::new();
    load_values(&work.data(), "clicks", 2, &clicks(200));
    let expected: Vec<(String, i64)> = (0..200)
        .filter(|i| i % 3 != 0)
        .map(|i| (format!("u{}", i % 7), i as i64))
        .collect();
    for format in ["parquet", "json", "csv"] {
        let job = format!("files_{format}");
        let sql = format!(
            "{CLICKS}CREATE SINK f WITH (type = 'file', path = 'out/{format}', format = '{format}');\n\
             INSERT INTO f SELECT user, ms FROM clicks WHERE ms % 3 <> 0;"
        );
        #[cfg(feature = "failpoints")]
        for fp in [
            "sink::file::before_manifest=return(2)",
            "sink::file::after_manifest=return(3)",
        ] {
            work.run_killed(&job, &sql, &[], fp);
        }
        work.run_ok(&job, &sql);
        let dir = work.path().join("out").join(format);
        let manifest = check_manifest(&dir, &job);
        assert_eq!(
            read_listed(&dir, &manifest, format),
            expected,
            "{format} files read back"
        );
    }
}

#[test]
fn csv_stream_skips_bad_rows_and_counts_them() {
    let work = Work::new();
    let rows = [
        "a,1,true",
        "b,x,false",      // not a number
        "c,3",            // a field short
        "\"d,e\",4,",     // quoted delimiter, empty flag is NULL
        "",               // empty
        "f,6,true,extra", // a field too many
        "g,7,TRUE",
    ];
    load_values(
        &work.data(),
        "rows",
        1,
        &rows.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
    );
    work.run_ok(
        "csv",
        "CREATE STREAM rows (name TEXT, n BIGINT, flag BOOLEAN) WITH (topic = 'rows', format = 'csv');\n\
         CREATE SINK out WITH (type = 'topic', format = 'text');\n\
         INSERT INTO out SELECT name || '|' || CAST(n AS VARCHAR) || '|' || COALESCE(CAST(flag AS VARCHAR), 'null') AS line FROM rows;",
    );
    let out: Vec<String> = read_topic(&work.data(), "out")
        .into_iter()
        .map(|r| r.value.unwrap())
        .collect();
    assert_eq!(out, ["a|1|true", "d,e|4|null", "g|7|true"]);
    assert_eq!(work.counter("csv", "bad records"), 4);

    // Another delimiter; BYTEA columns take the field's bytes.
    load_values(&work.data(), "tabs", 1, &["k1\t42\tpayload".to_string()]);
    work.run_ok(
        "tabs",
        "CREATE STREAM tabs (k TEXT, n INT, raw BYTEA) WITH (topic = 'tabs', format = 'csv', delimiter = '\\t');\n\
         CREATE SINK out2 WITH (type = 'topic', format = 'json');\n\
         INSERT INTO out2 SELECT k, n + 1 AS n, CAST(raw AS VARCHAR) AS raw FROM tabs;",
    );
    let out: Vec<String> = read_topic(&work.data(), "out2")
        .into_iter()
        .map(|r| r.value.unwrap())
        .collect();
    assert_eq!(out, [r#"{"k":"k1","n":43,"raw":"payload"}"#]);
}

#[test]
fn dead_letter_topic_receives_bad_records_with_their_headers() {
    let work = Work::new();
    let good = clicks(40);
    let mut records: Vec<Input<'_>> = good
        .iter()
        .map(|v| (None, v.as_str(), Vec::new()))
        .collect();
    records.insert(3, (Some("k-bad"), "{broken", vec![("trace", "t-1")]));
    records.insert(25, (None, r#"{"user": 5, "ms": "x"}"#, Vec::new()));
    load(&work.data(), "clicks", 1, &records);
    let sql = "CREATE STREAM clicks (user TEXT, ms BIGINT) WITH (topic = 'clicks', format = 'json', on_error = 'dead_letter', dead_letter_topic = 'bad');\n\
               CREATE SINK out WITH (type = 'topic', key = 'user');\n\
               INSERT INTO out SELECT user, ms FROM clicks;";
    #[cfg(feature = "failpoints")]
    {
        // The dead letters of batch 1 are written before the sink's rows:
        // killed right after them, the replay must not write them again.
        let fp = "sink::topic::after_write=return(1)";
        work.run_killed("dlq", sql, &[], fp);
    }
    work.run_ok("dlq", sql);
    let bad = read_topic(&work.data(), "bad");
    assert_eq!(bad.len(), 2, "each bad record once: {bad:?}");
    let first = &bad[0];
    assert_eq!(first.key.as_deref(), Some("k-bad"));
    assert_eq!(first.value.as_deref(), Some("{broken"));
    assert_eq!(first.header("trace"), Some("t-1"), "original headers kept");
    assert_eq!(first.header("sluice.source"), Some("clicks/0/3"));
    let error = first.header("sluice.error").unwrap();
    assert!(
        error.contains("stream clicks") && error.contains("JSON"),
        "{error}"
    );
    assert_eq!(first.header("sluice.batch"), Some("dlq/clicks/1"));
    assert_eq!(bad[1].header("sluice.source"), Some("clicks/0/25"));
    assert!(
        bad[1]
            .header("sluice.error")
            .unwrap()
            .contains("field 'user'"),
        "{:?}",
        bad[1]
    );
    // The good rows all reached the sink, once.
    assert_eq!(
        rows_checked(&read_topic(&work.data(), "out"), "dlq/out"),
        expected_click_rows(40)
    );
    assert_eq!(work.counter("dlq", "bad records"), 2);
}

#[test]
fn on_error_fail_names_the_record_and_what_to_do() {
    let work = Work::new();
    let mut input = clicks(10);
    input.insert(5, "{oops".into());
    load_values(&work.data(), "clicks", 1, &input);
    let out = work.run(
        "strict",
        "CREATE STREAM clicks (user TEXT, ms BIGINT) WITH (topic = 'clicks', format = 'json', on_error = 'fail');\n\
         CREATE SINK t WITH (type = 'table');\n\
         INSERT INTO t SELECT user, count(*) AS n FROM clicks GROUP BY user;",
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "source clicks, partition 0",
        "the record at offset 5 does not decode as JSON for stream clicks",
        "on_error = 'fail'",
        "set on_error = 'skip'",
        "on_error = 'dead_letter' with dead_letter_topic",
        "resumes with this batch",
    ] {
        assert!(err.contains(needle), "{needle:?} missing from: {err}");
    }
}

/// `sluice run` of `CLICKS` + `sql` must fail with every needle in stderr.
/// An aggregation over an updating aggregation whose outer groups can
/// empty (how many users have clicked n times): a group left empty is a
/// tombstone for its key in a keyed topic sink; sinks that cannot delete,
/// or cannot name the group, are refused at submission.
#[test]
fn a_group_left_empty_is_a_tombstone_in_a_keyed_topic_sink() {
    let work = Work::new();
    // 20 users click once, then again, then the first 10 a third time; the
    // job reads 20 clicks per batch.
    let clicks: Vec<String> = (0..50)
        .map(|i| format!(r#"{{"user":"u{}","ms":{i}}}"#, i % 20))
        .collect();
    load_values(&work.data(), "clicks", 1, &clicks);
    let histogram = "SELECT n, count(*) AS users FROM (SELECT user, count(*) AS n FROM clicks GROUP BY user) GROUP BY n;";
    work.run_ok(
        "histogram",
        &format!(
            "{CLICKS}CREATE SINK s WITH (type = 'topic', topic = 'histogram', key = 'n');\nINSERT INTO s {histogram}"
        ),
    );
    let records = read_topic(&work.data(), "histogram");
    let mut last: BTreeMap<String, Option<String>> = BTreeMap::new();
    for r in &records {
        last.insert(r.key.clone().unwrap(), r.value.clone());
    }
    assert_eq!(
        last,
        BTreeMap::from([
            ("1".to_string(), None),
            ("2".to_string(), Some(r#"{"n":2,"users":10}"#.to_string())),
            ("3".to_string(), Some(r#"{"n":3,"users":10}"#.to_string())),
        ]),
        "{records:?}"
    );
    assert_eq!(
        records.iter().filter(|r| r.value.is_none()).count(),
        1,
        "one tombstone: {records:?}"
    );
    let why = "depends on what the inner aggregation computes";
    refused(
        &work,
        &format!("CREATE SINK s WITH (type = 'topic', topic = 'h2');\nINSERT INTO s {histogram}"),
        &[why, "its topic sink has no key"],
    );
    refused(
        &work,
        &format!(
            "CREATE SINK s WITH (type = 'file', path = 'out', format = 'json');\nINSERT INTO s {histogram}"
        ),
        &[why, "a file sink only appends"],
    );
    refused(
        &work,
        "CREATE SINK s WITH (type = 'table');\nINSERT INTO s SELECT count(*) AS users, n FROM (SELECT user, count(*) AS n FROM clicks GROUP BY user) GROUP BY n;",
        &[why, "not an outer GROUP BY column"],
    );
    refused(
        &work,
        &format!(
            "CREATE SINK s WITH (type = 'table');\nINSERT INTO s {}",
            histogram.replace(";", " HAVING count(*) > 1;")
        ),
        &[why, "HAVING"],
    );
}

fn refused(work: &Work, sql: &str, needles: &[&str]) {
    let out = work.run("refused", &format!("{CLICKS}{sql}"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted: {sql}");
    for needle in needles {
        assert!(err.contains(needle), "{needle:?} missing for {sql}: {err}");
    }
}

#[test]
fn every_bad_option_is_refused_with_the_sink_or_stream_the_option_and_the_accepted_values() {
    let work = Work::new();
    load_values(&work.data(), "clicks", 1, &clicks(3));
    let q = "\nINSERT INTO s SELECT user, ms FROM clicks;";
    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            format!("CREATE SINK s WITH (type = 'kafka');{q}"),
            vec![
                "line 2",
                "sink s: type = \"kafka\" is not supported",
                "'console', 'table', 'blackhole', 'topic', 'file'",
            ],
        ),
        (
            format!("CREATE SINK s WITH (type = 'topic', fromat = 'json');{q}"),
            vec![
                "line 2",
                "topic sink s: unknown option \"fromat\"",
                "accepted: type, topic, format, key, brokers, partitions",
            ],
        ),
        (
            format!("CREATE SINK s WITH (type = 'topic', format = 'avro');{q}"),
            vec![
                "topic sink s: format = \"avro\" is not supported",
                "'json', 'text'",
            ],
        ),
        (
            format!("CREATE SINK s WITH (type = 'topic', partitions = 0);{q}"),
            vec![
                "topic sink s: partitions = \"0\" is not a partition count",
                "from 1 to 10000",
            ],
        ),
        (
            format!("CREATE SINK s WITH (type = 'topic', partitions = 'many');{q}"),
            vec!["partitions = \"many\""],
        ),
        (
            format!("CREATE SINK s WITH (type = 'topic', topic = 'a b');{q}"),
            vec![
                "topic sink s: topic = \"a b\" is not a topic name",
                "1 to 249 characters",
            ],
        ),
        (
            format!("CREATE SINK s WITH (type = 'topic', brokers = '');{q}"),
            vec!["topic sink s: brokers = '' is empty", "host:port"],
        ),
        (
            format!("CREATE SINK s WITH (type = 'topic', key = ' ');{q}"),
            vec!["topic sink s: key = '' names no column"],
        ),
        (
            format!("CREATE SINK s WITH (type = 'topic', key = 'nope');{q}"),
            vec![
                "line 3",
                "topic sink s: key = \"nope\" is not a column of the query (columns: user, ms)",
            ],
        ),
        (
            format!("CREATE SINK s WITH (type = 'topic', format = 'text');{q}"),
            vec![
                "line 3",
                "topic sink s: format = 'text' writes one column as the record value, but the query has columns user, ms",
                "or use format = 'json'",
            ],
        ),
        (
            format!("CREATE SINK s WITH (type = 'file');{q}"),
            vec!["file sink s: option path is required"],
        ),
        (
            format!("CREATE SINK s WITH (type = 'file', path = 'o', format = 'orc');{q}"),
            vec![
                "file sink s: format = \"orc\" is not supported",
                "'parquet', 'json', 'csv'",
            ],
        ),
        (
            format!("CREATE SINK s WITH (type = 'file', path = 'o', compression = 'gzip');{q}"),
            vec![
                "file sink s: unknown option \"compression\"",
                "accepted: type, path, format",
            ],
        ),
        (
            "CREATE SINK s WITH (type = 'file', path = 'o', format = 'csv');\n\
             INSERT INTO s SELECT user, make_array(ms, ms) AS pair FROM clicks;"
                .to_string(),
            vec![
                "line 3",
                "file sink s: column pair has type List",
                "CSV cannot hold",
            ],
        ),
        (
            format!("CREATE SINK s WITH (type = 'file', path = 'o', partition_by = 'day');{q}"),
            vec![
                "line 3",
                "file sink s: partition_by names day, which the query does not return (its columns: user, ms)",
            ],
        ),
        (
            format!(
                "CREATE SINK s WITH (type = 'file', path = 'o', partition_by = 'user, ms');{q}"
            ),
            vec!["partition_by takes every column of the query, so the files would hold none"],
        ),
        (
            format!(
                "CREATE SINK s WITH (type = 'file', path = 'o', partition_by = 'user,user');{q}"
            ),
            vec!["file sink s: partition_by names user twice"],
        ),
        (
            format!("CREATE SINK s WITH (type = 'table', topic = 'x');{q}"),
            vec!["table sink s: unknown option \"topic\"", "accepted: type"],
        ),
        (
            format!(
                "CREATE SINK s WITH (type = 'topic');{q}\nINSERT INTO s SELECT user, ms FROM clicks;"
            ),
            vec![
                "line 4",
                "sink s is written by the queries at lines 3 and 4",
                "takes one query",
            ],
        ),
    ];
    for (sql, needles) in &cases {
        refused(&work, sql, needles);
    }
    let select = "\nSELECT * FROM c;";
    let stream_cases: Vec<(&str, Vec<&str>)> = vec![
        (
            "CREATE STREAM c (a TEXT) WITH (topic = 'clicks', format = 'xml');",
            vec![
                "line 2",
                "stream c: format = \"xml\" is not supported",
                "'text', 'raw', 'json', 'csv'",
            ],
        ),
        (
            "CREATE STREAM c (a TEXT) WITH (topic = 'clicks', on_eror = 'skip');",
            vec![
                "stream c: unknown option \"on_eror\"",
                "accepted: topic, format, on_error, dead_letter_topic, delimiter",
            ],
        ),
        (
            "CREATE STREAM c (a TEXT) WITH (topic = 'clicks', format = 'json', on_error = 'ignore');",
            vec![
                "stream c: on_error = \"ignore\" is not supported",
                "'skip', 'fail', 'dead_letter'",
            ],
        ),
        (
            "CREATE STREAM c (a TEXT) WITH (topic = 'clicks', format = 'json', on_error = 'dead_letter');",
            vec!["stream c: on_error = 'dead_letter' needs dead_letter_topic = 'NAME'"],
        ),
        (
            "CREATE STREAM c (a TEXT) WITH (topic = 'clicks', format = 'json', on_error = 'fail', dead_letter_topic = 'd');",
            vec!["stream c: dead_letter_topic is set but on_error = 'fail'"],
        ),
        (
            "CREATE STREAM c (a TEXT) WITH (topic = 'clicks', format = 'json', dead_letter_topic = 'no/slash');",
            vec!["stream c: dead_letter_topic = \"no/slash\" is not a topic name"],
        ),
        (
            "CREATE STREAM c (a TEXT) WITH (topic = 'clicks', format = 'json', delimiter = ';');",
            vec!["stream c: option delimiter applies to format = 'csv' only"],
        ),
        (
            "CREATE STREAM c (a TEXT) WITH (topic = 'clicks', format = 'csv', delimiter = '::');",
            vec![
                "stream c: delimiter = \"::\" is not supported",
                "one ASCII character",
            ],
        ),
        (
            "CREATE STREAM c WITH (topic = 'clicks', format = 'csv');",
            vec![
                "line 3",
                "stream c: format = 'csv' needs the columns in their order",
            ],
        ),
        (
            "CREATE STREAM c (a TEXT) WITH (topic = 'bad topic');",
            vec!["stream c: topic = \"bad topic\" is not a topic name"],
        ),
    ];
    for (stream, needles) in &stream_cases {
        refused(&work, &format!("{stream}{select}"), needles);
    }
}
