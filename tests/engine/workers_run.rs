//! Word count as one job on many `sluice wordcount --workers-group`
//! processes against `sluice broker`: three workers over an 8-partition
//! topic count exactly what the corpus holds; workers SIGKILLed at random
//! and replaced (≥ 20 times) neither lose nor double-count a word; the job
//! scales from one worker to four and down to two mid-stream, tasks moving
//! and their state restoring from the changelog.
//!
//! The result is the job's table changelog, `sluice-wc-table.wc-changelog`,
//! read read_committed: the last value of each word is its count.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use sluice::data::decode_all;

use crate::common;
use crate::common::broker::{TestBroker, wait_timeout};

const TOPIC: &str = "lines";
const PARTITIONS: i32 = 8;
const JOB: &str = "wc";
const CHANGELOG: &str = "sluice-wc-table.wc-changelog";

/// A deterministic corpus: Zipf-ish words from a small generator.
fn corpus(lines: usize, seed: u64) -> Vec<String> {
    let mut x = seed | 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..lines)
        .map(|_| {
            let words = 3 + (next() % 8) as usize;
            (0..words)
                .map(|_| {
                    // Skewed: small ids far more often.
                    let a = next() % 400;
                    let b = next() % (a + 1);
                    format!("w{b}")
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

fn counts(lines: &[String]) -> BTreeMap<String, u64> {
    let mut c = BTreeMap::new();
    for l in lines {
        for w in l.split_ascii_whitespace() {
            *c.entry(w.to_owned()).or_default() += 1;
        }
    }
    c
}

fn create_topic(broker: &TestBroker) {
    broker.create_topic(TOPIC, PARTITIONS);
}

fn producer(broker: &TestBroker) -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .expect("create a producer")
}

/// Sends `lines` spread over the partitions and waits for every ack.
fn produce(producer: &BaseProducer, lines: &[String], first_index: usize) {
    produce_to(producer, TOPIC, PARTITIONS, lines, first_index);
}

/// Sends `lines` to `topic` round-robin over its first `spread` partitions.
fn produce_to(
    producer: &BaseProducer,
    topic: &str,
    spread: i32,
    lines: &[String],
    first_index: usize,
) {
    for (i, line) in lines.iter().enumerate() {
        let partition = ((first_index + i) % spread as usize) as i32;
        let mut record = BaseRecord::<(), str>::to(topic)
            .partition(partition)
            .payload(line.as_str());
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((_, back)) => {
                    record = back;
                    producer.poll(Duration::from_millis(10));
                }
            }
        }
    }
    producer
        .flush(Duration::from_secs(30))
        .expect("every line acknowledged");
}

/// One worker process with its own checkpoint directory and stderr file.
struct Worker {
    child: Child,
    log: PathBuf,
}

fn start_worker(broker: &TestBroker, dir: &Path, extra: &[&str]) -> Worker {
    let job = [
        "wordcount",
        "--topic",
        TOPIC,
        "--workers-group",
        "wc-workers",
        "--job",
        JOB,
    ];
    start_job_worker(broker, dir, &job, extra)
}

/// A worker running `job` (a `sluice` command line without --brokers).
fn start_job_worker(broker: &TestBroker, dir: &Path, job: &[&str], extra: &[&str]) -> Worker {
    fs::create_dir_all(dir).expect("create the worker's directory");
    let n = fs::read_dir(dir).map(|d| d.count()).unwrap_or(0);
    let log = dir.join(format!("worker-{n}.stderr"));
    let child = common::sluice()
        .args(job)
        .args(["--brokers", &broker.bootstrap()])
        .args(["--session-timeout", "2s", "--interval", "200ms"])
        .arg("--checkpoint-dir")
        .arg(dir.join("checkpoint"))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).expect("create the worker's log"))
        .spawn()
        .expect("spawn sluice wordcount");
    Worker { child, log }
}

impl Worker {
    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM: the worker finishes its batch and leaves the group.
    fn stop(&mut self) {
        // SAFETY: kill(2) on a child this test spawned and has not reaped.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        let status = wait_timeout(&mut self.child, Duration::from_secs(60));
        assert!(
            status.is_some_and(|s| s.success()),
            "a stopped worker exits 0 ({status:?}); its log:\n{}",
            self.log()
        );
    }

    /// Panics with the log if the worker exited on its own.
    fn assert_running(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!(
                "a worker exited on its own ({status}); its log:\n{}",
                self.log()
            );
        }
    }
}

/// Waits for workers started with --until-caught-up to finish the job.
fn wait_all_done(workers: &mut [Worker]) {
    for w in workers {
        let status = wait_timeout(&mut w.child, Duration::from_secs(120));
        assert!(
            status.is_some_and(|s| s.success()),
            "a worker did not finish the job ({status:?}); its log:\n{}",
            w.log()
        );
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The job's result: the last value of each word in the table changelog,
/// read_committed, up to the end of every partition.
fn read_table(broker: &TestBroker) -> BTreeMap<String, u64> {
    read_changelog(broker, CHANGELOG)
        .into_iter()
        .map(|(k, v)| {
            (
                decode_all::<String>(&k).expect("a word key"),
                decode_all::<u64>(&v).expect("a count"),
            )
        })
        .collect()
}

/// The last value of each key of a changelog topic, read_committed, up to
/// the end of every partition; deleted keys are absent.
fn read_changelog(broker: &TestBroker, changelog: &str) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let mut table = BTreeMap::new();
    for (key, value) in read_records(broker, changelog) {
        let key = key.expect("changelog records have keys");
        match value {
            Some(v) => table.insert(key, v),
            None => table.remove(&key),
        };
    }
    table
}

/// Key and value of every record of `topic`, read_committed, in order
/// within each partition.
type Records = Vec<(Option<Vec<u8>>, Option<Vec<u8>>)>;

fn read_records(broker: &TestBroker, topic: &str) -> Records {
    let changelog = topic;
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", broker.bootstrap())
        .set("group.id", "wc-table-check")
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .create()
        .expect("create a consumer");
    let mut records = Vec::new();
    let metadata = consumer
        .fetch_metadata(Some(changelog), Duration::from_secs(10))
        .expect("the broker's metadata");
    let partitions = metadata
        .topics()
        .iter()
        .find(|t| t.name() == changelog && t.error().is_none())
        .map_or(0, |t| t.partitions().len() as i32);
    if partitions == 0 {
        // The first worker has not created the job's topics yet.
        return records;
    }
    let mut tpl = TopicPartitionList::new();
    let mut live = Vec::new();
    for p in 0..partitions {
        let (low, high) = consumer
            .fetch_watermarks(changelog, p, Duration::from_secs(10))
            .expect("changelog watermarks");
        if high > low {
            tpl.add_partition_offset(changelog, p, Offset::Beginning)
                .unwrap();
            live.push(p);
        }
    }
    if live.is_empty() {
        return records;
    }
    consumer.assign(&tpl).expect("assign the changelog");
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut done = std::collections::BTreeSet::new();
    while done.len() < live.len() {
        assert!(Instant::now() < deadline, "reading {topic} took over 60 s");
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                records.push((m.key().map(<[u8]>::to_vec), m.payload().map(<[u8]>::to_vec)));
            }
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                done.insert(p);
            }
            Some(Err(e)) => panic!("reading {topic}: {e}"),
            None => {}
        }
    }
    records
}

/// Waits until the job's table equals `want`, checking that workers stay up.
fn wait_for_table(
    broker: &TestBroker,
    workers: &mut [Worker],
    want: &BTreeMap<String, u64>,
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    let mut last = BTreeMap::new();
    while Instant::now() < deadline {
        for w in workers.iter_mut() {
            w.assert_running();
        }
        last = read_table(broker);
        if &last == want {
            return;
        }
        assert!(
            last.iter()
                .all(|(w, n)| want.get(w).is_some_and(|m| n <= m)),
            "a word was counted more often than the corpus holds it: {:?}",
            last.iter()
                .filter(|(w, n)| want.get(*w).is_none_or(|m| *n > m))
                .take(5)
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    let missing: Vec<_> = want
        .iter()
        .filter(|(w, n)| last.get(*w) != Some(n))
        .take(10)
        .map(|(w, n)| (w.clone(), *n, last.get(w).copied()))
        .collect();
    let logs: Vec<String> = workers.iter().map(|w| w.log()).collect();
    panic!(
        "the table did not reach the corpus counts within {timeout:?}; first differences (word, want, got): {missing:?}\nworker logs:\n{}",
        logs.join("\n----\n")
    );
}

/// A broker whose lines topic holds a corpus of `lines` lines (`seed`),
/// the lines, and a directory for the workers.
fn with_corpus(lines: usize, seed: u64) -> (TestBroker, Vec<String>, tempfile::TempDir) {
    let broker = TestBroker::start();
    create_topic(&broker);
    let lines = corpus(lines, seed);
    produce(&producer(&broker), &lines, 0);
    (broker, lines, tempfile::tempdir().unwrap())
}

#[test]
fn three_workers_count_what_one_process_counts() {
    let (broker, lines, root) = with_corpus(20_000, 7);
    let mut workers: Vec<Worker> = (0..3)
        .map(|i| {
            start_worker(
                &broker,
                &root.path().join(format!("w{i}")),
                &["--until-caught-up"],
            )
        })
        .collect();
    wait_all_done(&mut workers);
    assert_eq!(
        read_table(&broker),
        counts(&lines),
        "three workers count every word exactly once"
    );
    // The CLI reads the table of a job on many workers from its changelog.
    let bootstrap = broker.bootstrap();
    let scanned = scan_counts(&["--job", JOB, "--brokers", &bootstrap], None);
    assert_eq!(
        scanned,
        counts(&lines),
        "state scan --brokers shows the counts"
    );
    let logs: Vec<String> = workers.iter().map(Worker::log).collect();
    assert!(
        logs.iter()
            .filter(|l| l.contains("this worker's tasks:"))
            .count()
            == 3,
        "every worker joined the group: {logs:?}"
    );

    // The same job in one process over the same topic: the same counts.
    let single_dir = root.path().join("single");
    run_single(&broker, &["wordcount", "--topic", TOPIC], &single_dir, &[]);
    let single_counts = scan_counts(&["--job", "single", "--table", "single"], Some(&single_dir));
    assert_eq!(
        single_counts,
        read_table(&broker),
        "many workers and one process agree"
    );
}

/// `sluice state scan <args>` as word → count.
fn scan_counts(args: &[&str], checkpoint_dir: Option<&Path>) -> BTreeMap<String, u64> {
    let mut cmd = common::sluice();
    cmd.args(["state", "scan"]).args(args);
    if let Some(dir) = checkpoint_dir {
        cmd.arg("--checkpoint-dir").arg(dir);
    }
    let scan = cmd.output().expect("run sluice state scan");
    assert!(
        scan.status.success(),
        "{}",
        String::from_utf8_lossy(&scan.stderr)
    );
    String::from_utf8_lossy(&scan.stdout)
        .lines()
        .map(|line| {
            let (word, count) = line.split_once('\t').expect("word<TAB>count");
            (word.to_owned(), count.parse::<u64>().expect("a count"))
        })
        .collect()
}

/// The raw entries of a result table in a single-process job's checkpoint.
fn checkpoint_table(dir: &Path, job: &str, table: &str) -> BTreeMap<Vec<u8>, Vec<u8>> {
    let checkpoint =
        sluice::checkpoint::Checkpoint::open_read_only(dir, job).expect("open the checkpoint");
    let cf = checkpoint
        .cf(&format!("table.{table}"))
        .expect("the table's column family");
    checkpoint
        .db()
        .iterator_cf(cf, rocksdb::IteratorMode::Start)
        .map(|e| {
            let (k, v) = e.expect("read the table");
            (k.to_vec(), v.to_vec())
        })
        .collect()
}

#[test]
fn the_sql_word_count_on_three_workers_equals_one_process() {
    let (broker, lines, root) = with_corpus(20_000, 5);
    let script = root.path().join("wordcount.sql");
    fs::write(&script, include_str!("../../jobs/wordcount.sql")).unwrap();
    let script = script.to_str().unwrap().to_owned();
    let job = [
        "run",
        script.as_str(),
        "--workers-group",
        "sql-workers",
        "--job",
        "wcsql",
    ];
    run_workers_until_caught_up(&broker, root.path(), &job, 3);
    let on_workers = read_changelog(&broker, "sluice-wcsql-table.counts-changelog");

    let single_dir = root.path().join("single");
    run_single(&broker, &["run", script.as_str()], &single_dir, &[]);
    let single_counts = scan_counts(&["--job", "single", "--table", "counts"], Some(&single_dir));
    assert_eq!(
        single_counts,
        counts(&lines),
        "the single-process SQL job counts the corpus"
    );
    assert_eq!(
        on_workers,
        checkpoint_table(&single_dir, "single", "counts"),
        "the SQL job on three workers leaves the same table, byte for byte"
    );
}

/// Kills from `SLUICE_WORKER_KILLS`, or `default`.
fn kills_or(default: usize) -> usize {
    std::env::var("SLUICE_WORKER_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn workers_killed_at_random_neither_lose_nor_double_count() {
    kill_workers_at_random(&[], kills_or(20), 30_000);
}

/// The windowed word count (batch-aligned stages, window state and the
/// buffers of batches not yet run in changelogs): a window longer than the
/// run ends holding every word of the corpus once.
#[test]
fn workers_of_a_windowed_count_killed_at_random_neither_lose_nor_double_count() {
    kill_workers_at_random(&["--window", "20m"], kills_or(8), 12_000);
}

/// Three word-count workers (`extra` arguments each), one killed with
/// SIGKILL and replaced every second or two, `kills` times, while `lines`
/// lines are produced: the table ends equal to the corpus counts.
fn kill_workers_at_random(extra: &[&str], kills: usize, lines: usize) {
    let broker = TestBroker::start();
    create_topic(&broker);
    let lines = corpus(lines, 11);
    let chunk = lines.len() / (kills + 1);
    let producer = producer(&broker);
    let root = tempfile::tempdir().unwrap();
    let dirs: Vec<PathBuf> = (0..3).map(|i| root.path().join(format!("w{i}"))).collect();
    let mut workers: Vec<Worker> = dirs
        .iter()
        .map(|d| start_worker(&broker, d, extra))
        .collect();
    let mut rng: u64 = 0x5eed_1234_abcd_0001;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut sent = 0;
    for k in 0..kills {
        let upto = (sent + chunk).min(lines.len());
        produce(&producer, &lines[sent..upto], sent);
        sent = upto;
        std::thread::sleep(Duration::from_millis(600 + next() % 1400));
        for w in workers.iter_mut() {
            w.assert_running();
        }
        let victim = (next() % 3) as usize;
        workers[victim].kill();
        // Every fourth replacement starts on a new machine: no local state,
        // all of it restored from the changelogs.
        let dir = if k % 4 == 3 {
            root.path().join(format!("w{victim}-fresh-{k}"))
        } else {
            dirs[victim].clone()
        };
        workers[victim] = start_worker(&broker, &dir, extra);
    }
    produce(&producer, &lines[sent..], sent);
    wait_for_table(
        &broker,
        &mut workers,
        &counts(&lines),
        Duration::from_secs(180),
    );
    for w in &mut workers {
        w.stop();
    }
}

#[test]
fn scaling_from_one_worker_to_four_and_down_to_two_keeps_counts_exact() {
    let broker = TestBroker::start();
    create_topic(&broker);
    let lines = corpus(24_000, 23);
    let third = lines.len() / 3;
    let producer = producer(&broker);
    let root = tempfile::tempdir().unwrap();
    let mut workers = vec![start_worker(&broker, &root.path().join("w0"), &[])];
    produce(&producer, &lines[..third], 0);
    wait_for_table(
        &broker,
        &mut workers,
        &counts(&lines[..third]),
        Duration::from_secs(90),
    );

    for i in 1..4 {
        workers.push(start_worker(
            &broker,
            &root.path().join(format!("w{i}")),
            &[],
        ));
    }
    produce(&producer, &lines[third..2 * third], third);
    wait_for_table(
        &broker,
        &mut workers,
        &counts(&lines[..2 * third]),
        Duration::from_secs(90),
    );

    // Down to two: the first worker and one newcomer leave.
    let mut gone = workers.remove(0);
    gone.stop();
    let mut gone = workers.remove(0);
    gone.stop();
    produce(&producer, &lines[2 * third..], 2 * third);
    wait_for_table(
        &broker,
        &mut workers,
        &counts(&lines),
        Duration::from_secs(90),
    );

    let logs: Vec<String> = workers.iter().map(Worker::log).collect();
    assert!(
        logs.iter().any(|l| l.contains("restored")),
        "tasks that moved restored their state from the changelog:\n{}",
        logs.join("\n----\n")
    );
    for w in &mut workers {
        w.stop();
    }
}

#[test]
fn what_cannot_run_on_many_workers_is_refused_with_the_reason() {
    let broker = TestBroker::start();
    create_topic(&broker);
    let root = tempfile::tempdir().unwrap();

    // A watermark without a window: one process drops each record behind
    // it, workers could only judge lateness per window.
    let late = root.path().join("late.sql");
    fs::write(
        &late,
        "CREATE STREAM clicks (url TEXT, ts TIMESTAMP, WATERMARK FOR ts AS ts - INTERVAL '5' SECOND) WITH (topic = 'lines', format = 'json');\n\
         CREATE SINK per_url WITH (type = 'table');\n\
         INSERT INTO per_url SELECT url, count(*) AS clicks FROM clicks GROUP BY url;\n",
    )
    .unwrap();
    let out = common::sluice()
        .arg("run")
        .arg(&late)
        .args([
            "--brokers",
            &broker.bootstrap(),
            "--workers-group",
            "clicks",
        ])
        .arg("--checkpoint-dir")
        .arg(root.path().join("clicks"))
        .output()
        .expect("run sluice run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a watermark without a window is refused on workers"
    );
    assert!(
        stderr.contains("cannot run on many workers yet: it drops late records without a window"),
        "the refusal names the reason: {stderr}"
    );

    // The partition count of the internal topics is fixed at creation.
    let lines = corpus(500, 3);
    produce(&producer(&broker), &lines, 0);
    let dir = root.path().join("wc");
    let mut first = start_worker(&broker, &dir, &["--until-caught-up"]);
    let status = wait_timeout(&mut first.child, Duration::from_secs(60));
    assert!(status.is_some_and(|s| s.success()), "{}", first.log());
    let mut again = start_worker(
        &broker,
        &dir,
        &["--until-caught-up", "--repartition-partitions", "4"],
    );
    let status = wait_timeout(&mut again.child, Duration::from_secs(60));
    assert!(
        status.is_some_and(|s| !s.success()),
        "another partition count is refused"
    );
    assert!(
        again
            .log()
            .contains("the job was created with 8 partitions for its internal topics"),
        "the refusal says why: {}",
        again.log()
    );
}

#[test]
fn workers_ride_out_a_broker_restart_with_exact_counts() {
    let mut broker = TestBroker::start();
    create_topic(&broker);
    let lines = corpus(12_000, 31);
    let half = lines.len() / 2;
    let root = tempfile::tempdir().unwrap();
    let mut workers: Vec<Worker> = (0..2)
        .map(|i| start_worker(&broker, &root.path().join(format!("w{i}")), &[]))
        .collect();
    produce(&producer(&broker), &lines[..half], 0);
    wait_for_table(
        &broker,
        &mut workers,
        &counts(&lines[..half]),
        Duration::from_secs(90),
    );

    // Stopped and started on the same port: the workers' transactions,
    // offset lookups and heartbeats fail meanwhile; they retry from their
    // last commits instead of ending.
    broker.restart();
    produce(&producer(&broker), &lines[half..], half);
    wait_for_table(
        &broker,
        &mut workers,
        &counts(&lines),
        Duration::from_secs(120),
    );
    for w in &mut workers {
        w.stop();
    }
}

#[test]
fn a_sql_topic_sink_on_workers_writes_inside_each_tasks_transaction() {
    let (broker, lines, root) = with_corpus(15_000, 13);
    let script = root.path().join("wordcount.sql");
    fs::write(
        &script,
        include_str!("../../jobs/wordcount.sql").replace(
            "CREATE SINK counts WITH (type = 'table');",
            "CREATE SINK counts WITH (type = 'topic', topic = 'counts', key = 'word', partitions = 4);",
        ),
    )
    .unwrap();
    let script = script.to_str().unwrap().to_owned();
    let job = [
        "run",
        script.as_str(),
        "--workers-group",
        "sql-topic-workers",
        "--job",
        "wctopic",
    ];
    run_workers_until_caught_up(&broker, root.path(), &job, 3);
    // Each record is a group's count after a batch: the last one of each
    // word, read_committed, is its total.
    let mut got = BTreeMap::new();
    for (key, value) in read_changelog(&broker, "counts") {
        let row: serde_json::Value = serde_json::from_slice(&value).expect("a JSON row");
        got.insert(
            String::from_utf8(key).expect("a word"),
            row["n"].as_u64().expect("a count"),
        );
    }
    assert_eq!(
        got,
        counts(&lines),
        "the topic sink holds every count once committed"
    );
}

/// Clicks with event times rising 60 ms per click over 20 minutes, spread
/// round-robin over the partitions: no click is late in one process or on
/// workers, so both close the same windows with the same counts.
fn clicks(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| {
            let ms = 60 * i;
            let secs = ms / 1000;
            format!(
                r#"{{"user_id": {}, "url": "/p{}", "ts": "2026-11-18 10:{:02}:{:02}.{:03}"}}"#,
                (i * 7919) % 97,
                (i * 31) % 23,
                secs / 60,
                secs % 60,
                ms % 1000
            )
        })
        .collect()
}

/// `jobs/clicks_per_url.sql` writing its closed windows to `sink_topic`.
fn clicks_script(dir: &Path, sink_topic: &str, idle_timeout: &str) -> String {
    let template = include_str!("../../jobs/clicks_per_url.sql").replace(
        "idle_timeout = '30s'",
        &format!("idle_timeout = '{idle_timeout}'"),
    );
    with_topic_sink(dir, &template, "per_minute", sink_topic)
}

/// A script of `jobs/` whose console sink `sink` (append mode) writes to
/// the topic `sink_topic` instead, saved in `dir`.
fn with_topic_sink(dir: &Path, template: &str, sink: &str, sink_topic: &str) -> String {
    let console = format!("CREATE SINK {sink} WITH (type = 'console', mode = 'append');");
    assert!(template.contains(&console), "{sink} is a console sink");
    let path = dir.join(format!("{sink_topic}.sql"));
    fs::write(
        &path,
        template.replace(
            &console,
            &format!(
                "CREATE SINK {sink} WITH (type = 'topic', topic = '{sink_topic}', mode = 'append', partitions = 4);"
            ),
        ),
    )
    .unwrap();
    path.to_str().unwrap().to_owned()
}

/// Runs `job` (a `sluice` command line without --brokers) as `n` workers
/// in `root/w<i>` until they have caught up.
fn run_workers_until_caught_up(broker: &TestBroker, root: &Path, job: &[&str], n: usize) {
    let mut workers: Vec<Worker> = (0..n)
        .map(|i| {
            start_job_worker(
                broker,
                &root.join(format!("w{i}")),
                job,
                &["--until-caught-up"],
            )
        })
        .collect();
    wait_all_done(&mut workers);
}

/// Runs `job` (a `sluice` command line without --brokers) in one process
/// as job `single` in `dir` until it has caught up.
fn run_single(broker: &TestBroker, job: &[&str], dir: &Path, extra: &[&str]) {
    let out = common::sluice()
        .args(job)
        .args(["--brokers", &broker.bootstrap()])
        .args(["--job", "single", "--until-caught-up", "--quiet"])
        .args(extra)
        .arg("--checkpoint-dir")
        .arg(dir)
        .output()
        .expect("run the single-process job");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The rows a topic sink wrote (JSON values), sorted.
fn sink_rows(broker: &TestBroker, topic: &str) -> Vec<String> {
    let mut rows: Vec<String> = read_records(broker, topic)
        .into_iter()
        .map(|(_, v)| String::from_utf8(v.expect("a row")).expect("UTF-8 JSON"))
        .collect();
    rows.sort();
    rows
}

/// Waits (120 s at most) until the topic sink `topic` holds `at_least`
/// rows, never more than `most`, the workers running all along.
fn wait_for_rows(
    broker: &TestBroker,
    workers: &mut [Worker],
    topic: &str,
    at_least: usize,
    most: usize,
) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        for w in workers.iter_mut() {
            w.assert_running();
        }
        let rows = sink_rows(broker, topic);
        assert!(rows.len() <= most, "more rows than expected: {rows:?}");
        if rows.len() >= at_least {
            return rows;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {at_least} rows after 120 s; logs:\n{}",
            rows.len(),
            workers
                .iter()
                .map(Worker::log)
                .collect::<Vec<_>>()
                .join("\n----\n")
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// An aggregation over a windowed aggregation (per minute, the busiest
/// URL's clicks and how many URLs were clicked) on three workers, one
/// SIGKILLed mid-stream and replaced on a fresh directory (its stage-2
/// tasks restore the windows waiting for every stage-1 task from the
/// changelog): stage 1 closes each URL's minute, stage 2 aggregates a
/// minute once every stage-1 task has closed it, and the rows equal one
/// process's, each once.
#[test]
fn an_aggregation_over_windows_on_workers_across_a_kill_emits_what_one_process_emits() {
    let broker = TestBroker::start();
    broker.create_topic("clicks", PARTITIONS);
    let clicks = clicks(20_000);
    let half = clicks.len() / 2;
    let producer = producer(&broker);
    produce_to(&producer, "clicks", PARTITIONS, &clicks[..half], 0);
    let root = tempfile::tempdir().unwrap();
    let inner = "SELECT window_start, window_end, url, count(*) AS clicks, count(DISTINCT user_id) AS users\nFROM TUMBLE(clicks, ts, INTERVAL '1' MINUTE)\nGROUP BY window_start, window_end, url;";
    let template = include_str!("../../jobs/clicks_per_url.sql");
    assert!(template.contains(inner), "the template's query");
    let template = template.replace(
        inner,
        "SELECT window_end, max(clicks) AS busiest, count(*) AS urls FROM (SELECT url, count(*) AS clicks, window_start, window_end FROM TUMBLE(clicks, ts, INTERVAL '1' MINUTE) GROUP BY url, window_start, window_end) GROUP BY window_end;",
    );
    let on_workers = with_topic_sink(root.path(), &template, "per_minute", "busiest_workers");
    let job = [
        "run",
        on_workers.as_str(),
        "--workers-group",
        "busiest",
        "--job",
        "busiest",
    ];
    let start = |dir: &str| start_job_worker(&broker, &root.path().join(dir), &job, &[]);
    let mut workers: Vec<Worker> = ["w0", "w1", "w2"].into_iter().map(start).collect();
    // 20 minutes of clicks: the last watermark closes the first 19.
    let closed = 19;
    let wait_rows = |workers: &mut [Worker], at_least: usize| {
        wait_for_rows(&broker, workers, "busiest_workers", at_least, closed)
    };
    wait_rows(&mut workers, 3);
    workers[0].kill();
    workers[0] = start("w0-fresh");
    produce_to(&producer, "clicks", PARTITIONS, &clicks[half..], half);
    let got = wait_rows(&mut workers, closed);
    for w in &mut workers {
        w.stop();
    }
    let single = with_topic_sink(root.path(), &template, "per_minute", "busiest_single");
    run_single(
        &broker,
        &["run", single.as_str()],
        &root.path().join("single"),
        &["--max-records-per-batch", "1000"],
    );
    let want = sink_rows(&broker, "busiest_single");
    assert_eq!(want.len(), closed, "{want:?}");
    assert_eq!(
        got, want,
        "the workers emit each minute once, with one process's values"
    );
    assert_eq!(
        sink_rows(&broker, "busiest_workers"),
        want,
        "and nothing more once stopped"
    );
}

#[test]
fn event_time_windows_on_workers_close_as_in_one_process_across_a_kill() {
    let broker = TestBroker::start();
    broker.create_topic("clicks", PARTITIONS);
    let mut clicks = clicks(20_000);
    // Late by ten minutes, after the watermark closed its window: dropped
    // in one process (behind the watermark) and on workers (its window is
    // closed), never emitted.
    clicks.push(r#"{"user_id": 1, "url": "/late", "ts": "2026-11-18 10:00:30.000"}"#.into());
    let half = clicks.len() / 2;
    let producer = producer(&broker);
    produce_to(&producer, "clicks", PARTITIONS, &clicks[..half], 0);
    let root = tempfile::tempdir().unwrap();
    let script_for = |sink_topic: &str| clicks_script(root.path(), sink_topic, "30s");
    let on_workers = script_for("per_minute_workers");
    let job = [
        "run",
        on_workers.as_str(),
        "--workers-group",
        "clicks-workers",
        "--job",
        "clicks",
    ];
    let start = |i: usize| start_job_worker(&broker, &root.path().join(format!("w{i}")), &job, &[]);
    let mut workers: Vec<Worker> = (0..3).map(start).collect();
    // 20 minutes of clicks: the watermark (newest click - 5 s) closes the
    // first 19 windows, 23 URLs each.
    let closed = 19 * 23;
    let wait_rows = |workers: &mut [Worker], at_least: usize| {
        wait_for_rows(&broker, workers, "per_minute_workers", at_least, closed)
    };
    // Some windows closed: a worker dies holding open windows and the
    // watermark in its tasks' state, which a replacement restores.
    wait_rows(&mut workers, 5 * 23);
    workers[0].kill();
    workers[0] = start(3);
    produce_to(&producer, "clicks", PARTITIONS, &clicks[half..], half);
    let got = wait_rows(&mut workers, closed);
    for w in &mut workers {
        w.stop();
    }

    let single = script_for("per_minute_single");
    // Batches of 500 clicks per partition: the watermark has moved on by
    // the time the late click is read.
    let batches = ["--max-records-per-batch", "500"];
    run_single(
        &broker,
        &["run", single.as_str()],
        &root.path().join("single"),
        &batches,
    );
    let want = sink_rows(&broker, "per_minute_single");
    assert_eq!(
        want.len(),
        closed,
        "one row per closed window and URL: {want:?}"
    );
    assert_eq!(
        got, want,
        "the workers emit every closed window once, with one process's counts"
    );
    assert_eq!(
        sink_rows(&broker, "per_minute_workers"),
        want,
        "and nothing more once stopped"
    );
}

#[test]
fn on_workers_a_silent_partition_stops_holding_windows_back_after_its_idle_timeout() {
    let broker = TestBroker::start();
    broker.create_topic("clicks", PARTITIONS);
    // Partition 7 never gets a click: it holds the watermark back until it
    // has been idle for 2 s, long after the last click was read. The
    // stage-1 tasks must run without input to see the time pass.
    produce_to(
        &producer(&broker),
        "clicks",
        PARTITIONS - 1,
        &clicks(6_000),
        0,
    );
    let root = tempfile::tempdir().unwrap();
    let script = clicks_script(root.path(), "idle_windows", "2s");
    let job = [
        "run",
        script.as_str(),
        "--workers-group",
        "idle",
        "--job",
        "idle",
    ];
    let mut workers: Vec<Worker> = (0..2)
        .map(|i| start_job_worker(&broker, &root.path().join(format!("w{i}")), &job, &[]))
        .collect();
    // 6 minutes of clicks: 5 windows close, 23 URLs each.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut rows = Vec::new();
    while rows.len() < 5 * 23 {
        for w in &mut workers {
            w.assert_running();
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} window rows after 90 s: the idle partition still holds the watermark",
            rows.len(),
            5 * 23
        );
        std::thread::sleep(Duration::from_millis(300));
        rows = sink_rows(&broker, "idle_windows");
    }
    assert_eq!(rows.len(), 5 * 23, "each closed window once: {rows:?}");
    for w in &mut workers {
        w.stop();
    }
}

#[test]
fn a_standby_copy_takes_a_killed_workers_tasks_over_without_a_restore() {
    let broker = TestBroker::start();
    create_topic(&broker);
    let lines = corpus(16_000, 17);
    let half = lines.len() / 2;
    produce(&producer(&broker), &lines[..half], 0);
    let root = tempfile::tempdir().unwrap();
    let mut workers: Vec<Worker> = (0..2)
        .map(|i| {
            start_worker(
                &broker,
                &root.path().join(format!("w{i}")),
                &["--standby-replicas", "1"],
            )
        })
        .collect();
    wait_for_table(
        &broker,
        &mut workers,
        &counts(&lines[..half]),
        Duration::from_secs(90),
    );
    // Each keeps a copy of the other's reduce-side tasks, caught up every
    // batch (200 ms): a few batches after the input ran dry, the copies
    // hold every committed state change.
    std::thread::sleep(Duration::from_secs(3));
    let survivor_log = workers[1].log();
    assert!(
        survivor_log.contains("standby copies: 1_"),
        "the survivor keeps standby copies: {survivor_log}"
    );
    let mark = survivor_log.len();
    workers[0].kill();
    produce(&producer(&broker), &lines[half..], half);
    wait_for_table(
        &broker,
        &mut workers[1..],
        &counts(&lines),
        Duration::from_secs(90),
    );
    let after = workers[1].log()[mark..].to_owned();
    assert!(
        after.contains("this worker's tasks: 0_0,0_1"),
        "the survivor took every task over: {after}"
    );
    // Without standby copies: "task 1_4 restored 50 state records …".
    assert!(
        !after.contains("restored"),
        "the survivor's copies were warm: no task replayed its changelog: {after}"
    );
    workers[1].stop();
}

/// `2026-11-18 10:00:00` plus `ms`, as the JSON streams write times.
fn at(ms: usize) -> String {
    let secs = ms / 1000;
    format!(
        "2026-11-18 {:02}:{:02}:{:02}.{:03}",
        10 + secs / 3600,
        (secs / 60) % 60,
        secs % 60,
        ms % 1000
    )
}

/// Writes `sql` to `root/<job>.sql` and runs it as three workers of the
/// group and job named `job` until they have caught up.
fn run_sql_on_three_workers(broker: &TestBroker, root: &Path, job: &str, sql: &str) {
    let script = root.join(format!("{job}.sql"));
    fs::write(&script, sql).unwrap();
    let script = script.to_str().unwrap().to_owned();
    let args = ["run", script.as_str(), "--workers-group", job, "--job", job];
    run_workers_until_caught_up(broker, root, &args, 3);
}

/// A broker holding [`orders_and_payments`] of `n` orders, and a
/// directory for the workers.
fn with_orders_and_payments(n: usize) -> (TestBroker, tempfile::TempDir) {
    let broker = TestBroker::start();
    orders_and_payments(&broker, n);
    (broker, tempfile::tempdir().unwrap())
}

/// Orders `0..n` at 100 ms steps into `orders` (8 partitions) and their
/// payments 5 s later into `payments` (4 partitions): two in three pay
/// order `i` `10 * i`, the rest pay an order that does not exist. Times
/// rise in every partition, so nothing is late in any run.
fn orders_and_payments(broker: &TestBroker, n: usize) {
    // Different partition counts: stage-0 task p reads partition p of each
    // topic that has one.
    broker.create_topic("orders", PARTITIONS);
    broker.create_topic("payments", 4);
    let orders: Vec<String> = (0..n)
        .map(|i| format!(r#"{{"id": {i}, "ts": "{}"}}"#, at(100 * i)))
        .collect();
    let payments: Vec<String> = (0..n)
        .map(|i| {
            let order = if i % 3 == 0 { i + 1_000_000 } else { i };
            format!(
                r#"{{"order_id": {order}, "amount": {}, "ts": "{}"}}"#,
                10 * i,
                at(100 * i + 5_000)
            )
        })
        .collect();
    let producer = producer(broker);
    produce_to(&producer, "orders", PARTITIONS, &orders, 0);
    produce_to(&producer, "payments", 4, &payments, 0);
}

/// A result table keyed by a BIGINT with one nullable BIGINT value, read
/// from its changelog.
fn bigint_table(broker: &TestBroker, changelog: &str) -> BTreeMap<i64, Option<i64>> {
    read_changelog(broker, changelog)
        .into_iter()
        .map(|(k, v)| {
            (
                decode_all::<i64>(&k).expect("a BIGINT key"),
                decode_all::<Option<i64>>(&v).expect("a BIGINT value"),
            )
        })
        .collect()
}

/// The orders of [`orders_and_payments`] that were paid, with the amount.
fn paid_orders(n: usize) -> BTreeMap<i64, Option<i64>> {
    (0..n as i64)
        .filter(|i| i % 3 != 0)
        .map(|i| (i, Some(10 * i)))
        .collect()
}

#[test]
fn an_interval_join_of_two_topics_on_three_workers_finds_every_match_once() {
    let n = 3_000;
    let (broker, root) = with_orders_and_payments(n);
    let sql = include_str!("../../jobs/paid_orders.sql");
    run_sql_on_three_workers(&broker, root.path(), "paid", sql);
    // The table's key is the first column (BIGINT), its value the nullable
    // amount.
    let got = bigint_table(&broker, "sluice-paid-table.paid-changelog");
    let want = paid_orders(n);
    assert_eq!(got.len(), want.len(), "one row per paid order");
    assert_eq!(got, want, "every paid order, with its amount");
}

/// An aggregation over an interval join's matches, grouped by another
/// key than the join's, on three workers: stage 1 joins, stage 2 merges
/// the matches' partial sums into its groups.
#[test]
fn an_aggregation_over_a_join_on_three_workers_sums_every_match_once() {
    let n = 3_000;
    let (broker, root) = with_orders_and_payments(n);
    let sql = include_str!("../../jobs/paid_orders.sql")
        .replace(
            "SELECT o.id, p.amount FROM orders o JOIN payments p",
            "SELECT o.id % 10 AS digit, sum(p.amount) AS paid FROM orders o JOIN payments p",
        )
        .replace(
            "o.ts + INTERVAL '10' SECOND;",
            "o.ts + INTERVAL '10' SECOND GROUP BY o.id % 10;",
        );
    run_sql_on_three_workers(&broker, root.path(), "digits", &sql);
    let got = bigint_table(&broker, "sluice-digits-table.paid-changelog");
    let mut want: BTreeMap<i64, Option<i64>> = BTreeMap::new();
    for i in (0..n as i64).filter(|i| i % 3 != 0) {
        let sum = want.entry(i % 10).or_insert(Some(0));
        *sum = sum.map(|s| s + 10 * i);
    }
    assert_eq!(
        got, want,
        "each digit's paid orders, every match summed once"
    );
}

/// Queries without state on three workers: a filter into a table (cut
/// before the sink by the table's key) and a filter into a topic (written
/// by the stage-0 tasks in their transactions) hold each row once.
#[test]
fn queries_without_state_on_three_workers_write_each_row_once() {
    let n = 2_000;
    let (broker, root) = with_orders_and_payments(n);
    let script = |big: &str| {
        format!(
            "CREATE STREAM orders (id BIGINT, ts TIMESTAMP) WITH (topic = 'orders', format = 'json');\n\
             CREATE STREAM payments (order_id BIGINT, amount BIGINT, ts TIMESTAMP) WITH (topic = 'payments', format = 'json');\n\
             CREATE SINK even WITH (type = 'table');\n\
             CREATE SINK big WITH (type = 'topic', topic = '{big}', partitions = 4);\n\
             INSERT INTO even SELECT id, id * 10 AS tenfold FROM orders WHERE id % 2 = 0;\n\
             INSERT INTO big SELECT order_id, amount FROM payments WHERE amount >= 15000;\n"
        )
    };
    run_sql_on_three_workers(&broker, root.path(), "filters", &script("big_workers"));
    let single = root.path().join("single.sql");
    fs::write(&single, script("big_single")).unwrap();
    run_single(
        &broker,
        &["run", single.to_str().unwrap()],
        &root.path().join("single"),
        &[],
    );
    let got = bigint_table(&broker, "sluice-filters-table.even-changelog");
    let want: BTreeMap<i64, Option<i64>> = (0..n as i64)
        .filter(|i| i % 2 == 0)
        .map(|i| (i, Some(10 * i)))
        .collect();
    assert_eq!(got, want, "every even order once, in the table");
    let big = sink_rows(&broker, "big_workers");
    assert_eq!(
        big.len(),
        n - 1_500,
        "payments of 15000 and more, each once"
    );
    assert_eq!(
        big,
        sink_rows(&broker, "big_single"),
        "the rows one process writes"
    );
}

/// A join whose condition compares computed values cannot be split by
/// key: on three workers both streams go to one task, which finds the
/// matches one process finds.
#[test]
fn a_join_on_computed_values_on_three_workers_meets_in_one_task() {
    let n = 1_500;
    let (broker, root) = with_orders_and_payments(n);
    let template = include_str!("../../jobs/paid_orders.sql");
    assert!(template.contains("ON o.id = p.order_id"));
    let sql = template.replace("ON o.id = p.order_id", "ON o.id + 1 = p.order_id + 1");
    run_sql_on_three_workers(&broker, root.path(), "computed", &sql);
    let got = bigint_table(&broker, "sluice-computed-table.paid-changelog");
    assert_eq!(got, paid_orders(n), "every paid order, with its amount");
}

/// A result table of counts by TEXT key, read from its changelog.
fn count_table(broker: &TestBroker, changelog: &str) -> BTreeMap<String, u64> {
    read_changelog(broker, changelog)
        .into_iter()
        .map(|(k, v)| {
            (
                decode_all::<String>(&k).expect("a TEXT key"),
                decode_all::<u64>(&v).expect("a count"),
            )
        })
        .collect()
}

/// A Rust job as worker `i` of group `rust-jobs` (in-process: a thread
/// per worker, each with its own checkpoint directory), reading the lines
/// topic of `brokers`.
fn rust_worker(
    brokers: &str,
    dir: PathBuf,
    i: usize,
) -> (
    sluice::driver::StreamingContext,
    sluice::plan::DStream<sluice::source::record::Record>,
) {
    use sluice::driver::{JobConfig, StreamingContext, WorkersOptions};
    let mut config = JobConfig::new("rustjob", Duration::from_millis(200));
    config.checkpoint_dir = Some(dir);
    config.until_caught_up = true;
    let mut workers = WorkersOptions::new(brokers);
    workers.group = Some("rust-jobs".into());
    workers.worker_id = Some(format!("w{i}"));
    workers.session_timeout = Duration::from_secs(2);
    config.workers = Some(workers);
    let ctx = StreamingContext::new(config);
    let source = sluice::source::kafka::KafkaSource::new(TOPIC, brokers, TOPIC, None, Vec::new())
        .expect("a Kafka source");
    let lines = ctx.source(source);
    (ctx, lines)
}

/// Runs a Rust job (`build` over the lines stream) as three in-process
/// workers until they have caught up.
fn run_rust_workers(
    broker: &TestBroker,
    root: &Path,
    build: impl Fn(&sluice::plan::DStream<sluice::source::record::Record>) + Send + Sync + 'static,
) {
    let build = std::sync::Arc::new(build);
    let workers: Vec<_> = (0..3)
        .map(|i| {
            let brokers = broker.bootstrap();
            let dir = root.join(format!("w{i}"));
            let build = build.clone();
            std::thread::spawn(move || -> Result<(), String> {
                let (ctx, lines) = rust_worker(&brokers, dir, i);
                build(&lines);
                ctx.run().map(|_| ()).map_err(|e| e.to_string())
            })
        })
        .collect();
    for w in workers {
        w.join()
            .expect("a worker thread")
            .expect("a worker ran the job");
    }
}

/// The values of a `u64` stream's chunks.
fn u64_values(chunks: &[arrow::array::RecordBatch]) -> Vec<u64> {
    chunks
        .iter()
        .flat_map(|c| {
            c.column(0)
                .as_any()
                .downcast_ref::<arrow::array::UInt64Array>()
                .expect("a count")
                .iter()
                .flatten()
                .collect::<Vec<_>>()
        })
        .collect()
}

/// `(word, 1)` for every word of every line.
fn word_ones(
    lines: &sluice::plan::DStream<sluice::source::record::Record>,
) -> sluice::plan::DStream<(String, u64)> {
    lines.flat_map(|r, out: &mut sluice::plan::Emitter<(String, u64)>| {
        for w in r.value_str().split_ascii_whitespace() {
            out.push((w, 1u64));
        }
    })
}

/// A Rust job on three in-process workers: a global count, a second level
/// of shuffle (word counts regrouped by initial: a third stage), and a
/// union of streams from two stages.
#[test]
fn a_rust_job_with_a_global_count_and_two_shuffle_levels_on_three_workers() {
    use sluice::plan::Emitter;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    let (broker, lines, root) = with_corpus(6_000, 23);

    let counted = Arc::new(AtomicU64::new(0));
    let total = counted.clone();
    run_rust_workers(&broker, root.path(), move |lines| {
        word_ones(lines)
            .reduce_by_key(|a, b| a + b)
            .flat_map(|(w, n), out: &mut Emitter<(String, u64)>| out.push((&w[..1], n)))
            .reduce_by_key(|a, b| a + b)
            // On workers a sum table reads and puts (a changelog record
            // carries the key's value, never an operand).
            .sum_into_table("initials");
        // A union of streams from different stages: the words (stage 0)
        // meet their counts (stage 1) there.
        let ones = word_ones(lines);
        ones.union(&ones.reduce_by_key(|a, b| a + b))
            .reduce_by_key(|a, b| a + b)
            .merge_into_table("twice", |a, b| a + b);
        let total = total.clone();
        lines.count().foreach_batch(move |_, chunks| {
            total.fetch_add(u64_values(chunks).iter().sum::<u64>(), Ordering::Relaxed);
            Ok(())
        });
    });
    let got: BTreeMap<String, u64> =
        count_table(&broker, "sluice-rustjob-table.initials-changelog");
    let mut want: BTreeMap<String, u64> = BTreeMap::new();
    for (w, n) in counts(&lines) {
        *want.entry(w[..1].to_owned()).or_default() += n;
    }
    assert_eq!(got, want, "words per initial, regrouped in a third stage");
    let twice: BTreeMap<String, u64> = count_table(&broker, "sluice-rustjob-table.twice-changelog");
    let want: BTreeMap<String, u64> = counts(&lines)
        .into_iter()
        .map(|(w, n)| (w, 2 * n))
        .collect();
    assert_eq!(twice, want, "each word's ones and its count, unioned");
    assert_eq!(
        counted.load(Ordering::Relaxed),
        lines.len() as u64,
        "the global count, merged by bucket 0's task, counts every line once"
    );
}

/// The Rust engine's per-batch join and windows counted in batches on
/// three in-process workers, which run their stages batch-aligned: each
/// word joined with the distinct words of its own batch finds itself once
/// (both sides of a batch meet again after their shuffles), and windows
/// longer than the run end holding the whole corpus, per word and in all.
#[test]
fn rust_per_batch_joins_and_batch_windows_on_three_workers() {
    use sluice::plan::Emitter;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    let (broker, lines, root) = with_corpus(3_000, 31);
    let long = Duration::from_secs(600);
    let slide = Duration::from_millis(200);
    // The largest windowed line count any batch reported.
    let windowed_lines = Arc::new(AtomicU64::new(0));
    let largest = windowed_lines.clone();
    run_rust_workers(&broker, root.path(), move |lines| {
        let words = word_ones(lines);
        let distinct = words.reduce_by_key(|a, _| a);
        words
            .join(&distinct)
            .flat_map(|(w, (n, _)), out: &mut Emitter<(String, u64)>| out.push((w, n)))
            .reduce_by_key(|a, b| a + b)
            .merge_into_table("joined", |a, b| a + b);
        words
            .reduce_by_key_and_window(|a, b| a + b, Some(Box::new(|a, b| a - b)), long, slide)
            .save_to_table("windowed");
        let largest = largest.clone();
        lines
            .window(long, slide)
            .count()
            .foreach_batch(move |_, chunks| {
                for n in u64_values(chunks) {
                    largest.fetch_max(n, Ordering::Relaxed);
                }
                Ok(())
            });
    });
    let table =
        |name: &str| count_table(&broker, &format!("sluice-rustjob-table.{name}-changelog"));
    let want = counts(&lines);
    assert_eq!(
        table("joined"),
        want,
        "every word met the distinct words of its own batch, once"
    );
    assert_eq!(
        table("windowed"),
        want,
        "the last window (longer than the run) holds every word once"
    );
    assert_eq!(
        windowed_lines.load(Ordering::Relaxed),
        lines.len() as u64,
        "the window over unshuffled lines, counted from every bucket, holds every line once"
    );
}

#[test]
fn session_windows_on_three_workers_close_as_in_one_process() {
    let broker = TestBroker::start();
    broker.create_topic("clicks", PARTITIONS);
    // An hour of clicks, one a second round-robin over the partitions (so
    // times rise in each): user u clicks every 20 s in alternate quarter
    // hours, so its sessions (10-minute gap) span a quarter hour each.
    let clicks: Vec<String> = (0..3_600usize)
        .filter_map(|i| {
            let user = i % 20;
            let active = ((i / 900) + user) % 2 == 0;
            active.then(|| {
                format!(
                    r#"{{"user_id": {user}, "url": "/p{}", "ts": "{}"}}"#,
                    i % 7,
                    at(1_000 * i)
                )
            })
        })
        .collect();
    produce_to(&producer(&broker), "clicks", PARTITIONS, &clicks, 0);
    let root = tempfile::tempdir().unwrap();
    let template = include_str!("../../jobs/user_sessions.sql");
    let script_for = |topic: &str| with_topic_sink(root.path(), template, "sessions", topic);
    let on_workers = script_for("sessions_workers");
    let job = [
        "run",
        on_workers.as_str(),
        "--workers-group",
        "sessions",
        "--job",
        "sessions",
    ];
    run_workers_until_caught_up(&broker, root.path(), &job, 3);
    let single = script_for("sessions_single");
    let batches = ["--max-records-per-batch", "100"];
    run_single(
        &broker,
        &["run", single.as_str()],
        &root.path().join("single"),
        &batches,
    );
    let want = sink_rows(&broker, "sessions_single");
    // Closed by the last watermark (10:59:54): the even users' first and
    // third quarter-hour sessions, the odd users' second.
    assert_eq!(want.len(), 30, "{want:?}");
    assert_eq!(
        sink_rows(&broker, "sessions_workers"),
        want,
        "three workers close the same sessions with the same counts"
    );
}
