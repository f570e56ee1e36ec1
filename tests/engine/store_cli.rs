//! The real `sluice` binary, end to end: topics, produce (stdin, file,
//! follow), consume, the demo, and every bad input with its message.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use sluice::producer::partition_for_key;

use crate::common::{self, Run};

fn sluice(data: &Path) -> Command {
    common::sluice_in(data)
}

fn ok(data: &Path, args: &[&str]) -> String {
    sluice(data).args(args).ok()
}

/// Runs a command that must fail and returns its stderr.
fn fails(data: &Path, args: &[&str]) -> String {
    sluice(data).args(args).fails()
}

fn produce_stdin(data: &Path, args: &[&str], input: &str) -> Output {
    let mut child = sluice(data)
        .arg("produce")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn topic_lifecycle_and_its_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(
        d,
        &[
            "topic",
            "create",
            "clicks",
            "--partitions",
            "3",
            "--retention-ms",
            "2d",
            "--flush",
            "always",
        ],
    );
    assert_eq!(ok(d, &["topic", "list"]), "clicks\n");
    let desc = ok(d, &["topic", "describe", "clicks"]);
    assert!(
        desc.contains("Partitions: 3") && desc.contains("Flush: always"),
        "{desc}"
    );
    assert!(desc.contains("retention.ms=172800000"), "{desc}");
    assert_eq!(
        desc.lines()
            .filter(|l| l.trim_start().starts_with(char::is_numeric))
            .count(),
        3
    );

    let e = fails(d, &["topic", "create", "clicks", "-p", "1"]);
    assert!(e.contains("topic \"clicks\" already exists"), "{e}");
    ok(
        d,
        &["topic", "create", "clicks", "-p", "1", "--if-not-exists"],
    );
    let e = fails(d, &["topic", "create", "no way", "-p", "1"]);
    assert!(
        e.contains("invalid topic name") && e.contains("' ' is not allowed"),
        "{e}"
    );
    let e = fails(d, &["topic", "create", &"x".repeat(250), "-p", "1"]);
    assert!(e.contains("longer than 249 characters"), "{e}");
    let e = fails(d, &["topic", "create", "t", "-p", "0"]);
    assert!(e.contains("at least one partition, got 0"), "{e}");
    let e = fails(d, &["topic", "create", "t", "-p", "-3"]);
    assert!(e.contains("at least one partition, got -3"), "{e}");
    let e = fails(
        d,
        &[
            "topic",
            "create",
            "t",
            "-p",
            "1",
            "--segment-bytes",
            "12 parsecs",
        ],
    );
    assert!(
        e.contains("--segment-bytes") && e.contains("unknown size unit"),
        "{e}"
    );
    let e = fails(
        d,
        &["topic", "create", "t", "-p", "1", "--flush", "sometimes"],
    );
    assert!(e.contains("bad flush policy"), "{e}");
    // Any Kafka topic config by name; compacted topics refuse keyless lines.
    ok(
        d,
        &[
            "topic",
            "create",
            "table",
            "-p",
            "1",
            "--config",
            "cleanup.policy=compact",
            "--config",
            "delete.retention.ms=3600000",
        ],
    );
    let desc = ok(d, &["topic", "describe", "table"]);
    assert!(
        desc.contains("cleanup.policy=compact") && desc.contains("delete.retention.ms=3600000"),
        "{desc}"
    );
    ok(
        d,
        &[
            "topic",
            "alter",
            "table",
            "--config",
            "min.cleanable.dirty.ratio=0.1",
        ],
    );
    let desc = ok(d, &["topic", "describe", "table"]);
    assert!(desc.contains("min.cleanable.dirty.ratio=0.1"), "{desc}");
    ok(
        d,
        &[
            "topic",
            "alter",
            "table",
            "--delete-config",
            "min.cleanable.dirty.ratio",
        ],
    );
    let desc = ok(d, &["topic", "describe", "table"]);
    assert!(desc.contains("min.cleanable.dirty.ratio=0.5"), "{desc}");
    let e = fails(
        d,
        &[
            "topic",
            "alter",
            "table",
            "--config",
            "min.cleanable.dirty.ratio=7",
        ],
    );
    assert!(e.contains("between 0 and 1"), "{e}");
    let e = fails(d, &["topic", "alter", "table"]);
    assert!(e.contains("nothing to alter"), "{e}");
    let out = produce_stdin(d, &["table"], "no key here\n");
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && e.contains("has no key"), "{e}");
    let e = fails(
        d,
        &[
            "topic",
            "create",
            "t",
            "-p",
            "1",
            "--config",
            "cleanup.policy=shred",
        ],
    );
    assert!(e.contains("unknown cleanup policy \"shred\""), "{e}");
    let e = fails(
        d,
        &["topic", "create", "t", "-p", "1", "--config", "compact"],
    );
    assert!(e.contains("expected NAME=VALUE"), "{e}");
    let e = fails(d, &["topic", "describe", "nope"]);
    assert!(e.contains("unknown topic \"nope\""), "{e}");
    let e = fails(d, &["consume", "nope"]);
    assert!(e.contains("unknown topic \"nope\""), "{e}");
    let e = fails(d, &["produce", "nope", "--file", "/dev/null"]);
    assert!(e.contains("unknown topic \"nope\""), "{e}");

    // Deleting records moves the log start; past the end is refused.
    ok(d, &["topic", "create", "purge", "-p", "2"]);
    let out = produce_stdin(d, &["purge", "--partition", "0"], "a\nb\nc\nd\n");
    assert!(out.status.success(), "{out:?}");
    let said = ok(
        d,
        &[
            "topic",
            "delete-records",
            "purge",
            "-p",
            "0",
            "--before",
            "3",
        ],
    );
    assert_eq!(said, "purge-0: log start offset 3\n");
    let said = ok(d, &["topic", "delete-records", "purge", "--before", "end"]);
    assert_eq!(
        said,
        "purge-0: log start offset 4\npurge-1: log start offset 0\n"
    );
    let e = fails(
        d,
        &[
            "topic",
            "delete-records",
            "purge",
            "-p",
            "1",
            "--before",
            "9",
        ],
    );
    assert!(e.contains("out of range"), "{e}");
    let e = fails(d, &["topic", "delete-records", "purge", "--before", "soon"]);
    assert!(e.contains("expected an offset"), "{e}");
    ok(d, &["topic", "delete", "purge"]);

    ok(d, &["topic", "delete", "clicks"]);
    ok(d, &["topic", "delete", "table"]);
    assert_eq!(ok(d, &["topic", "list"]), "");
    let e = fails(d, &["topic", "delete", "clicks"]);
    assert!(e.contains("unknown topic"), "{e}");
}

#[test]
fn keyed_records_land_where_kafkas_partitioner_puts_them() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(d, &["topic", "create", "users", "-p", "5"]);
    let input: String = (0..500).map(|i| format!("user{i}:event {i}\n")).collect();
    let out = produce_stdin(
        d,
        &["users", "--key-sep", ":", "--compression", "zstd"],
        &input,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let printed = ok(d, &["consume", "users", "--print-partition", "--print-key"]);
    let mut seen = 0;
    for line in printed.lines() {
        let fields: Vec<&str> = line.split('\t').collect();
        let (partition, key, value) = (fields[0], fields[1], fields[2]);
        assert_eq!(
            partition.parse::<u32>().unwrap(),
            partition_for_key(key.as_bytes(), 5),
            "{line}"
        );
        assert_eq!(value, format!("event {}", &key[4..]));
        seen += 1;
    }
    assert_eq!(seen, 500);
}

#[test]
fn consume_positions_and_their_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(d, &["topic", "create", "t", "-p", "2"]);
    let file = d.join("in.txt");
    fs::write(
        &file,
        (0..100).map(|i| format!("line {i}\n")).collect::<String>(),
    )
    .unwrap();
    ok(
        d,
        &[
            "produce",
            "t",
            "--file",
            file.to_str().unwrap(),
            "--partition",
            "1",
            "--batch-records",
            "7",
        ],
    );
    let all = ok(d, &["consume", "t", "-p", "1", "--print-offset"]);
    assert_eq!(all.lines().count(), 100);
    assert_eq!(all.lines().nth(42).unwrap(), "42\tline 42");
    let from = ok(d, &["consume", "t", "-p", "1", "--offset", "95"]);
    assert_eq!(from, "line 95\nline 96\nline 97\nline 98\nline 99\n");
    assert_eq!(ok(d, &["consume", "t", "-p", "1", "--offset", "100"]), "");
    assert_eq!(ok(d, &["consume", "t", "--max", "3"]).lines().count(), 3);
    let e = fails(d, &["consume", "t", "-p", "1", "--offset", "101"]);
    assert!(
        e.contains("offset 101 is out of range for t-1: valid offsets are 0..=100"),
        "{e}"
    );
    let e = fails(d, &["consume", "t", "-p", "1", "--offset", "-1"]);
    assert!(e.contains("valid offsets are 0..=100"), "{e}");
    let e = fails(d, &["consume", "t", "-p", "7"]);
    assert!(
        e.contains("topic \"t\" has no partition 7 (it has 2)"),
        "{e}"
    );
    let e = fails(d, &["consume", "t", "--offset", "3"]);
    assert!(e.contains("--partition"), "{e}");
    // Everything was produced just now: a time in the future finds nothing,
    // one in the past finds the start.
    assert_eq!(
        ok(
            d,
            &[
                "consume",
                "t",
                "-p",
                "1",
                "--from-time",
                "2999-01-01T00:00:00Z"
            ]
        ),
        ""
    );
    assert_eq!(
        ok(d, &["consume", "t", "-p", "1", "--from-time", "0"])
            .lines()
            .count(),
        100
    );
    let e = fails(d, &["consume", "t", "--from-time", "yesterday-ish"]);
    assert!(e.contains("is not a timestamp"), "{e}");
}

/// `sluice topic describe t | head`: when the reader goes away the command
/// ends quietly (SIGPIPE, as cat does), not with a panic on stderr.
#[test]
fn printing_into_a_closed_pipe_ends_quietly() {
    use std::io::Read;
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A row per partition: more than a pipe holds.
    ok(d, &["topic", "create", "wide", "-p", "1500"]);
    let mut child = sluice(d)
        .args(["topic", "describe", "wide"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 16];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap();
    // The reader is gone (the pipe's read end dropped).
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(
        out.status.success() || out.status.signal() == Some(libc::SIGPIPE),
        "{:?}: {stderr}",
        out.status
    );
}

#[test]
fn a_data_directory_in_use_is_refused_with_the_holders_pid() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(d, &["topic", "create", "t", "-p", "1"]);
    let log = d.join("app.log");
    fs::write(&log, "").unwrap();
    let mut holder = follow(d, "t", &log);
    wait_for(|| follower_started(&mut holder, d), "follower start");
    let e = fails(d, &["topic", "list"]);
    assert!(
        e.contains("is already in use by another process")
            && e.contains(&format!("pid {}", holder.id())),
        "{e}"
    );
    stop(holder);
    ok(d, &["topic", "list"]);
}

fn follow(d: &Path, topic: &str, file: &Path) -> Child {
    sluice(d)
        .args(["produce", topic, "--follow", file.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// The follower has the store open once its pid is in the lock file.
fn follower_started(child: &mut Child, data: &Path) -> bool {
    assert!(child.try_wait().unwrap().is_none(), "follower exited early");
    let lock = fs::read_to_string(data.join(".lock")).unwrap_or_default();
    lock.trim() == format!("pid {}", child.id())
}

fn wait_for(mut cond: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stop(child: Child) -> Output {
    // SAFETY: sending a signal to our own child process.
    unsafe {
        libc::kill(child.id() as i32, libc::SIGTERM);
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "follower failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn append(path: &Path, text: &str) {
    let mut f = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap();
    f.write_all(text.as_bytes()).unwrap();
}

#[test]
fn follow_survives_rotation_and_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(d, &["topic", "create", "logs", "-p", "2"]);
    let log = d.join("app.log");
    append(&log, "old 1\nold 2\n");
    let mut child = follow(d, "logs", &log);
    wait_for(|| follower_started(&mut child, d), "follower start");
    append(&log, "a 1\na 2\n");
    std::thread::sleep(Duration::from_millis(400));
    // Rotation: the old file moves away and a new one takes its name.
    fs::rename(&log, d.join("app.log.1")).unwrap();
    append(&d.join("app.log.1"), "a 3 written after the move\n");
    append(&log, "b 1\n");
    std::thread::sleep(Duration::from_millis(400));
    append(&log, "b 2\n");
    std::thread::sleep(Duration::from_millis(400));
    // Truncation in place (copytruncate-style rotation).
    fs::write(&log, "").unwrap();
    std::thread::sleep(Duration::from_millis(400));
    append(&log, "c 1\nc 2 no newline yet");
    std::thread::sleep(Duration::from_millis(400));
    append(&log, " and now one\n");
    std::thread::sleep(Duration::from_millis(400));
    stop(child);

    let mut got: Vec<String> = ok(d, &["consume", "logs"])
        .lines()
        .map(String::from)
        .collect();
    got.sort();
    let mut want = vec![
        "old 1",
        "old 2",
        "a 1",
        "a 2",
        "a 3 written after the move",
        "b 1",
        "b 2",
        "c 1",
        "c 2 no newline yet and now one",
    ];
    want.sort();
    assert_eq!(got, want);
}

#[test]
fn a_full_disk_fails_the_append_and_loses_nothing_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(d, &["topic", "create", "t", "-p", "1"]);
    let file = d.join("big.txt");
    let lines: Vec<String> = (0..40_000)
        .map(|i| format!("record number {i:08} {}", "x".repeat(60)))
        .collect();
    fs::write(&file, lines.join("\n") + "\n").unwrap();
    // A 1 MiB file-size limit stands in for a full disk: writes past it
    // fail with EFBIG exactly where ENOSPC would.
    let out = common::sluice_under(&["prlimit", "--fsize=1048576"])
        .args([
            "produce",
            "t",
            "--file",
            file.to_str().unwrap(),
            "--batch-records",
            "100",
        ])
        .env("SLUICE_DATA_DIR", d)
        .run();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("no space left on device")
            && stderr.contains("00000000000000000000.log")
            && stderr.contains("nothing was stored"),
        "{stderr}"
    );
    // What was acknowledged before the failure is intact and in order.
    let stored: Vec<String> = ok(d, &["consume", "t"]).lines().map(String::from).collect();
    assert!(!stored.is_empty() && stored.len() < lines.len());
    assert_eq!(stored[..], lines[..stored.len()]);
    // With room again, appends continue at the next offset.
    ok(d, &["produce", "t", "--file", file.to_str().unwrap()]);
    let after = ok(d, &["consume", "t", "--print-offset"]);
    let last = after.lines().last().unwrap();
    assert!(
        last.starts_with(&format!("{}\t", stored.len() + lines.len() - 1)),
        "{last}"
    );
}

#[test]
fn a_corrupt_segment_is_reported_with_file_and_position() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(
        d,
        &["topic", "create", "t", "-p", "1", "--segment-bytes", "4KiB"],
    );
    let input: String = (0..300).map(|i| format!("value {i}\n")).collect();
    let out = produce_stdin(d, &["t", "--batch-records", "10"], &input);
    assert!(out.status.success());
    let seg = d.join("topics/t/0/00000000000000000000.log");
    let mut bytes = fs::read(&seg).unwrap();
    let first_len = i32::from_be_bytes(bytes[8..12].try_into().unwrap()) as usize + 12;
    // Damage a record inside the second batch of the first (sealed) segment.
    bytes[first_len + 70] ^= 0xff;
    fs::write(&seg, bytes).unwrap();
    let e = fails(d, &["consume", "t"]);
    assert!(
        e.contains("corrupt batch at offset 10")
            && e.contains("00000000000000000000.log")
            && e.contains(&format!("at byte {first_len}")),
        "{e}"
    );
}

#[test]
fn retention_on_demand_advances_the_log_start() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(
        d,
        &[
            "topic",
            "create",
            "t",
            "-p",
            "1",
            "--segment-bytes",
            "2KiB",
            "--retention-bytes",
            "4KiB",
        ],
    );
    let input: String = (0..1000).map(|i| format!("value {i:05}\n")).collect();
    assert!(
        produce_stdin(d, &["t", "--batch-records", "20"], &input)
            .status
            .success()
    );
    let report = ok(d, &["topic", "retention"]);
    assert!(report.contains("t-0: deleted"), "{report}");
    let first = ok(d, &["consume", "t", "--max", "1", "--print-offset"]);
    let start: i64 = first.split('\t').next().unwrap().parse().unwrap();
    assert!(start > 0);
    let e = fails(d, &["consume", "t", "-p", "0", "--offset", "0"]);
    assert!(
        e.contains(&format!("valid offsets are {start}..=1000")),
        "{e}"
    );
}

#[test]
fn the_log_demo_reads_back_everything_it_produced() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let first = ok(d, &["demo", "log", "--lines", "20000"]);
    assert!(
        first.contains("OK: every produced record was read back exactly once"),
        "{first}"
    );
    // A second run appends after the first.
    let second = ok(d, &["demo", "log", "--lines", "1000"]);
    // Sticky partitioning sends one full batch to one partition, as Kafka's
    // producer does: partition 0 gets the 1,000 new lines after its 5,000.
    assert!(
        second.contains("5000..6000") && second.contains("Consumed 1000 records"),
        "{second}"
    );
}
