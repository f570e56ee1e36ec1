//! Exactly-once under crashes: `sluice wordcount` over a known corpus of
//! more than 1,000,000 words is SIGKILLed at random moments and restarted
//! until it has drained the topic; the result table must then equal the
//! counts computed directly from the corpus, word for word. Once with the
//! in-process source (embedded store), once with the rdkafka source
//! against `sluice broker`, and once as the SQL job `jobs/wordcount.sql`
//! (`sluice run`), whose aggregate state is DataFusion's accumulators'.
//!
//! Env: `SLUICE_ENGINE_KILLS` (default 20), `SLUICE_CRASH_SEED`.

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sluice::corpus::CorpusGenerator;
use sluice::log::{LogStore, TopicConfig};
use sluice::producer::{BatchBuilder, Compression};

use crate::common;
use crate::common::broker::{TestBroker, wait_timeout};

const TOPIC: &str = "corpus";
const PARTITIONS: usize = 4;
const WORDS_WANTED: u64 = 1_000_000;

fn kills() -> usize {
    common::env_or("SLUICE_ENGINE_KILLS", 20)
}

/// Writes the corpus into a 4-partition topic (lines round-robin, small
/// batches so ranges cut through them) and returns the expected counts.
fn load_corpus(data_dir: &Path) -> HashMap<String, u64> {
    let store = LogStore::open(data_dir, common::quiet()).unwrap();
    let topic = store
        .create_topic(TOPIC, PARTITIONS as i64, TopicConfig::default())
        .unwrap();
    let mut generator = CorpusGenerator::new(7);
    let mut expected: HashMap<String, u64> = HashMap::new();
    let mut builders: Vec<BatchBuilder> = (0..PARTITIONS)
        .map(|_| BatchBuilder::new(Compression::None))
        .collect();
    let (mut words, mut line_no) = (0u64, 0usize);
    let mut line = Vec::new();
    while words < WORDS_WANTED {
        line.clear();
        words += generator.next_line(&mut line) as u64;
        for w in std::str::from_utf8(&line).unwrap().split_whitespace() {
            *expected.entry(w.to_owned()).or_default() += 1;
        }
        let p = line_no % PARTITIONS;
        builders[p].push(None, &line, 1_000 + line_no as i64);
        if builders[p].len() == 97 {
            let mut bytes = builders[p].finish().unwrap();
            topic
                .partition(p as i32)
                .unwrap()
                .append(&mut bytes)
                .unwrap();
            builders[p] = BatchBuilder::new(if line_no % 3 == 0 {
                Compression::Lz4
            } else {
                Compression::None
            });
        }
        line_no += 1;
    }
    for (p, b) in builders.iter_mut().enumerate() {
        if !b.is_empty() {
            let mut bytes = b.finish().unwrap();
            topic
                .partition(p as i32)
                .unwrap()
                .append(&mut bytes)
                .unwrap();
        }
    }
    store.close().unwrap();
    expected
}

fn read_table(checkpoint: &Path, table: &str) -> HashMap<String, u64> {
    common::state_scan(checkpoint, "wc", Some(table))
        .into_iter()
        .map(|(w, n)| (w, n.parse().unwrap()))
        .collect()
}

/// Runs the job, killing it `kills()` times at random moments, then lets
/// it finish. Returns how many kills landed while it was running.
fn run_with_kills(job_args: &[String], checkpoint: &Path, work: &Path) -> usize {
    let seed = common::crash_seed();
    eprintln!("SLUICE_CRASH_SEED={seed}");
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut landed = 0;
    let deadline = Instant::now() + Duration::from_secs(600);
    for attempt in 0.. {
        assert!(
            Instant::now() < deadline,
            "the job did not finish in 10 minutes"
        );
        let mut child = common::sluice()
            .args(job_args)
            .arg("--checkpoint-dir")
            .arg(checkpoint)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(work.join(format!("run-{attempt}.log"))).unwrap())
            .spawn()
            .unwrap();
        let log_path = work.join(format!("run-{attempt}.log"));
        if landed < kills() {
            // Short enough that every kill lands before a fast job
            // drains (20..250 ms let the in-process job finish first).
            let after = Duration::from_millis(rng.random_range(10..120));
            match wait_timeout(&mut child, after) {
                Some(status) => {
                    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                    assert!(status.success(), "run {attempt} failed: {log}");
                    return landed; // drained before the next kill
                }
                None => {
                    let _ = child.kill(); // SIGKILL
                    let _ = child.wait();
                    landed += 1;
                }
            }
        } else {
            let status =
                wait_timeout(&mut child, Duration::from_secs(300)).expect("final run hangs");
            let log = std::fs::read_to_string(&log_path).unwrap_or_default();
            assert!(status.success(), "final run failed: {log}");
            return landed;
        }
    }
    unreachable!()
}

fn job_args(job: &[&str], source: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = job.iter().map(|s| s.to_string()).collect();
    args.extend(
        [
            "--job",
            "wc",
            "--until-caught-up",
            "--interval",
            "50ms",
            "--max-records-per-batch",
            "200",
            "--quiet",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    args.extend(source.iter().map(|s| s.to_string()));
    args
}

fn assert_counts(expected: &HashMap<String, u64>, got: &HashMap<String, u64>) {
    let total_expected: u64 = expected.values().sum();
    let total_got: u64 = got.values().sum();
    assert_eq!(
        got.len(),
        expected.len(),
        "distinct words differ (got {total_got} words, expected {total_expected})"
    );
    for (word, n) in expected {
        assert_eq!(got.get(word), Some(n), "count of {word:?}");
    }
    assert!(total_expected >= WORDS_WANTED);
}

/// Kills and restarts the job over `source` until drained, then checks the
/// result table against the corpus.
fn check_exactly_once(
    job: &[&str],
    table: &str,
    source: &[&str],
    expected: &HashMap<String, u64>,
    work: &Path,
) {
    let checkpoint = work.join("checkpoint");
    let landed = run_with_kills(&job_args(job, source), &checkpoint, work);
    eprintln!("{landed} kills landed");
    assert!(
        landed >= kills(),
        "only {landed} kills landed before the job finished"
    );
    assert_counts(expected, &read_table(&checkpoint, table));
}

#[test]
fn wordcount_is_exactly_once_under_sigkill_in_process_source() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let expected = load_corpus(&data);
    let data_arg = data.to_string_lossy().to_string();
    check_exactly_once(
        &["wordcount", "--topic", TOPIC],
        "wc",
        &["--data-dir", &data_arg],
        &expected,
        work.path(),
    );
}

#[test]
fn sql_wordcount_is_exactly_once_under_sigkill() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    let expected = load_corpus(&data);
    let data_arg = data.to_string_lossy().to_string();
    let job = work.path().join("wordcount.sql");
    std::fs::write(
        &job,
        include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/jobs/wordcount.sql"))
            .replace("topic = 'lines'", "topic = 'corpus'"),
    )
    .unwrap();
    let job = job.to_string_lossy().to_string();
    check_exactly_once(
        &["run", &job],
        "counts",
        &["--data-dir", &data_arg],
        &expected,
        work.path(),
    );
}

#[test]
fn wordcount_is_exactly_once_under_sigkill_rdkafka_source() {
    let work = tempfile::tempdir().unwrap();
    let mut broker = TestBroker::start();
    // Load the corpus into the broker's data directory while it is down.
    broker.kill();
    let expected = load_corpus(&broker.data_dir());
    broker.restart();
    let bootstrap = broker.bootstrap();
    check_exactly_once(
        &["wordcount", "--topic", TOPIC],
        "wc",
        &["--brokers", &bootstrap],
        &expected,
        work.path(),
    );
}
