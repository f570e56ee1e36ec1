//! The engine from the command line and its edge cases: graceful stop on
//! SIGTERM, `demo wordcount --file`, `state get|scan`, and the data-loss
//! policy when retention deleted records a job had not read.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStderr, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use sluice::driver::{DriverError, JobConfig, OnDataLoss, StreamingContext};
use sluice::log::{LogStore, TopicConfig};
use sluice::plan::Emitter;

use crate::common;
use crate::common::broker::wait_timeout;
use crate::common::{Run, sluice};

fn append_lines(store: &LogStore, topic: &str, lines: &[String]) {
    common::append_round_robin(&store.topic(topic).unwrap(), 10, lines, 1_000);
}

/// A store in `dir` with topic `t` of `partitions` holding `lines`.
fn store_with(dir: &Path, partitions: i64, lines: &[String]) -> Arc<LogStore> {
    let store = Arc::new(LogStore::open(dir.join("data"), common::quiet()).unwrap());
    store
        .create_topic("t", partitions, TopicConfig::default())
        .unwrap();
    append_lines(&store, "t", lines);
    store
}

/// Starts `cmd` with stdout discarded; the child and its stderr, by line.
fn spawn_reading_stderr(cmd: &mut Command) -> (Child, BufReader<ChildStderr>) {
    let mut child = cmd
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    (child, stderr)
}

fn scan(checkpoint: &Path, job: &str) -> HashMap<String, u64> {
    common::state_scan(checkpoint, job, None)
        .into_iter()
        .map(|(k, v)| (k, v.parse().unwrap()))
        .collect()
}

#[test]
fn sigterm_finishes_the_batch_commits_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    {
        let store = LogStore::open(&data, common::quiet()).unwrap();
        store.create_topic("t", 2, TopicConfig::default()).unwrap();
        let lines: Vec<String> = (0..500).map(|i| format!("x y{} z", i % 5)).collect();
        append_lines(&store, "t", &lines);
        store.close().unwrap();
    }
    let checkpoint = dir.path().join("cp");
    let (mut child, mut stderr) = spawn_reading_stderr(
        sluice()
            .args([
                "wordcount",
                "--topic",
                "t",
                "--job",
                "wc",
                "--interval",
                "200ms",
                "--data-dir",
            ])
            .arg(&data)
            .arg("--checkpoint-dir")
            .arg(&checkpoint),
    );
    let mut line = String::new();
    // Wait for two committed batches, then ask it to stop.
    let mut batches = 0;
    while batches < 2 {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "job exited early");
        if line.starts_with("batch ") {
            batches += 1;
        }
    }
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status =
        wait_timeout(&mut child, Duration::from_secs(20)).expect("job did not stop on SIGTERM");
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert!(status.success(), "exit {status}: {rest}");
    assert!(rest.contains("stopped after"), "{rest}");
    let counts = scan(&checkpoint, "wc");
    assert_eq!(counts.get("x"), Some(&500));
    assert_eq!(counts.get("y3"), Some(&100));
}

#[test]
fn demo_wordcount_counts_a_file_and_state_get_reads_it() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("input.txt");
    std::fs::write(&input, "the cat\nthe dog the end\n\nünïcode the\n").unwrap();
    let run = || {
        sluice()
            .current_dir(dir.path())
            .args([
                "demo",
                "wordcount",
                "--file",
                "input.txt",
                "--interval",
                "100ms",
            ])
            .ok()
    };
    let printed = run();
    assert!(printed.contains("-------- Batch 1 · "), "{printed}");
    let get = |key: &str| {
        let out = sluice()
            .current_dir(dir.path())
            .args(["state", "get", "--job", "wordcount", key])
            .run();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(get("the").1, "4");
    assert_eq!(get("ünïcode").1, "1");
    let (ok, _, err) = get("absent");
    assert!(!ok && err.contains("no key \"absent\""), "{err}");
    // Again: the file is produced a second time and the job resumes, so
    // every count doubles (nothing re-read, nothing lost).
    run();
    assert_eq!(get("the").1, "8");
    let top = sluice()
        .current_dir(dir.path())
        .args(["state", "scan", "--job", "wordcount", "--top", "1"])
        .run();
    assert_eq!(String::from_utf8_lossy(&top.stdout).trim(), "the\t8");
    let missing = sluice()
        .current_dir(dir.path())
        .args(["state", "scan", "--job", "nosuchjob"])
        .fails();
    assert!(missing.contains("no checkpoint for job \"nosuchjob\""));
}

fn counting_job(
    store: &Arc<LogStore>,
    checkpoint: &Path,
    policy: OnDataLoss,
) -> Result<u64, DriverError> {
    let mut config = JobConfig::new("lossy", Duration::from_millis(10));
    config.checkpoint_dir = Some(checkpoint.to_path_buf());
    config.until_caught_up = true;
    config.on_data_loss = policy;
    config.progress.lines = false;
    let ctx = StreamingContext::new(config);
    let lines = ctx.embedded(store.clone(), "t").unwrap();
    lines
        .flat_map(|r, out: &mut Emitter<(String, u64)>| {
            out.push(("lines", r.value.map_or(0, |_| 1u64)))
        })
        .reduce_by_key(|a, b| a + b)
        .merge_into_table("lines", |a, b| a + b);
    ctx.run().map(|s| s.records)
}

#[test]
fn retention_below_the_committed_offset_fails_or_skips_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(LogStore::open(dir.path().join("data"), common::quiet()).unwrap());
    let config = TopicConfig {
        segment_bytes: 2048,
        retention_bytes: 4096,
        retention_ms: -1,
        ..TopicConfig::default()
    };
    store.create_topic("t", 1, config).unwrap();
    let checkpoint = dir.path().join("cp");
    let batch: Vec<String> = (0..40)
        .map(|i| format!("line {i} with some padding text"))
        .collect();
    append_lines(&store, "t", &batch);
    assert_eq!(
        counting_job(&store, &checkpoint, OnDataLoss::Fail).unwrap(),
        40
    );
    // Much more data, then retention deletes old segments the job never read.
    for _ in 0..10 {
        append_lines(&store, "t", &batch);
    }
    store.enforce_retention().unwrap();
    let log_start = store.partition("t", 0).unwrap().log_start_offset();
    assert!(
        log_start > 40,
        "retention should have deleted unread records (log start {log_start})"
    );
    let err = counting_job(&store, &checkpoint, OnDataLoss::Fail)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("data lost in t partition 0: offsets 40..")
            && err.contains("--on-data-loss skip"),
        "{err}"
    );
    let read = counting_job(&store, &checkpoint, OnDataLoss::Skip).unwrap();
    assert_eq!(read as i64, 440 - log_start);
    let cp = sluice::checkpoint::Checkpoint::open_read_only(&checkpoint, "lossy").unwrap();
    let committed = cp.committed().unwrap().unwrap();
    assert_eq!(committed.lost_records as i64, log_start - 40);
    assert_eq!(committed.offsets["t"][&0], 440);
}

#[test]
fn rate_limit_bounds_batches_and_new_partitions_are_picked_up() {
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<String> = (0..300).map(|i| format!("w{}", i % 7)).collect();
    let store = store_with(dir.path(), 1, &lines);
    let progress = dir.path().join("progress.jsonl");
    let mut config = JobConfig::new("rated", Duration::from_millis(20));
    config.checkpoint_dir = Some(dir.path().join("cp"));
    config.max_rate_per_partition = Some(2_500.0); // 50 records per 20 ms batch
    config.max_batches = Some(40);
    config.progress.lines = false;
    config.progress.json = Some(progress.clone());
    let sizes = Arc::new(std::sync::Mutex::new(Vec::new()));
    let ctx = StreamingContext::new(config);
    let records = ctx.embedded(store.clone(), "t").unwrap();
    let seen = sizes.clone();
    records.count().foreach_batch(move |_, chunks| {
        let reader = <u64 as sluice::plan::Data>::reader(chunks[0].columns())?;
        seen.lock()
            .unwrap()
            .push(<u64 as sluice::plan::Data>::get(&reader, 0));
        Ok(())
    });
    // A partition added while the job runs is read from its start.
    let adder = {
        let store = store.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(150));
            store.add_partitions("t", 2).unwrap();
            common::append_values(&store.topic("t").unwrap(), 1, [b"late"; 30], 1);
        })
    };
    let summary = ctx.run().unwrap();
    adder.join().unwrap();
    let sizes = sizes.lock().unwrap().clone();
    assert!(
        sizes.iter().all(|&n| n <= 100),
        "a batch exceeded the rate: {sizes:?}"
    );
    assert_eq!(summary.records, 330, "{sizes:?}");
    let text = std::fs::read_to_string(&progress).unwrap();
    let last: serde_json::Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    assert_eq!(last["partitions"].as_array().unwrap().len(), 2);
    for field in [
        "batch_id",
        "input_rows",
        "input_rows_per_s",
        "processing_ms",
        "scheduling_delay_ms",
        "total_delay_ms",
        "state_bytes",
    ] {
        assert!(last.get(field).is_some(), "progress lacks {field}: {last}");
    }
}

#[test]
fn wordcount_reads_a_socket_like_spark_socket_text_stream() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let sender = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        for _ in 0..100 {
            conn.write_all(b"a b a\n").unwrap();
        }
        conn.flush().unwrap();
        // Keep the connection open until the job has stopped.
        std::thread::sleep(Duration::from_secs(3));
    });
    let checkpoint = dir.path().join("cp");
    let (mut child, mut stderr) = spawn_reading_stderr(
        sluice()
            .args([
                "wordcount",
                "--socket",
                &addr,
                "--job",
                "sock",
                "--interval",
                "100ms",
                "--checkpoint-dir",
            ])
            .arg(&checkpoint),
    );
    let (mut rows, mut line, mut notes) = (0u64, String::new(), String::new());
    while rows < 100 {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "job exited early");
        if let Some(rest) = line.strip_prefix("batch ") {
            let n = rest
                .split(" · ")
                .nth(2)
                .and_then(|r| r.split(' ').next())
                .unwrap()
                .replace(',', "");
            rows += n.parse::<u64>().unwrap();
        } else {
            notes.push_str(&line);
        }
    }
    assert!(
        notes.contains("cannot replay a batch after a crash"),
        "{notes}"
    );
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = wait_timeout(&mut child, Duration::from_secs(20)).expect("job did not stop");
    assert!(status.success());
    let counts = scan(&checkpoint, "sock");
    assert_eq!(counts.get("a"), Some(&200));
    assert_eq!(counts.get("b"), Some(&100));
    sender.join().unwrap();
}

#[test]
fn backpressure_starts_at_the_initial_rate_then_follows_processing_speed() {
    let dir = tempfile::tempdir().unwrap();
    let lines: Vec<String> = (0..20_000).map(|i| format!("w{}", i % 7)).collect();
    let store = store_with(dir.path(), 1, &lines);
    let mut config = JobConfig::new("pid", Duration::from_millis(100));
    config.checkpoint_dir = Some(dir.path().join("cp"));
    config.backpressure = true;
    config.initial_rate = 1_000.0; // 100 records in the first 100 ms batch
    config.max_batches = Some(4);
    config.progress.lines = false;
    let sizes = Arc::new(std::sync::Mutex::new(Vec::new()));
    let ctx = StreamingContext::new(config);
    let seen = sizes.clone();
    ctx.embedded(store.clone(), "t")
        .unwrap()
        .count()
        .foreach_batch(move |_, chunks| {
            let reader = <u64 as sluice::plan::Data>::reader(chunks[0].columns())?;
            seen.lock()
                .unwrap()
                .push(<u64 as sluice::plan::Data>::get(&reader, 0));
            Ok(())
        });
    ctx.run().unwrap();
    let sizes = sizes.lock().unwrap().clone();
    assert_eq!(
        sizes[0], 100,
        "the first batch must not flood the job: {sizes:?}"
    );
    // Counting a few hundred records takes far less than the interval, so
    // the controller raises the rate.
    assert!(sizes[1] > sizes[0], "{sizes:?}");
}
