//! State that outgrows memory: a word count over a million distinct keys
//! under a small `--state-memory` counts every key exactly, cuts the
//! backlog into batches the budget allows, and stays under a peak RSS
//! bound that does not grow with the keys. Not a timing: the bound is on
//! memory, read from `wait4` when the job exits.

use std::path::Path;
use std::process::{Command, Stdio};

use sluice::log::{LogStore, TopicConfig};

use crate::common::{self, Run, sluice};

const KEYS: usize = 1_000_000;
/// Keys that come a second time (their count must reach 2).
const AGAIN: usize = 200_000;
const BUDGET: u64 = 32 << 20;

/// Runs `cmd` to its end; its peak RSS in bytes (it must succeed).
fn peak_rss(cmd: &mut Command, log: &Path) -> u64 {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("start sluice");
    let (status, usage) = reap(child);
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "sluice wordcount failed ({status}): {}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
    usage.ru_maxrss as u64 * 1024
}

/// Waits for `child` with `wait4`: its wait status and resource usage.
fn reap(child: std::process::Child) -> (i32, libc::rusage) {
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: wait4 on our own child with valid out-pointers.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    assert!(r == pid, "wait4: {}", std::io::Error::last_os_error());
    // Reaped above: dropping the handle must not wait again.
    std::mem::forget(child);
    (status, usage)
}

fn wordcount(data: &Path, checkpoint: &Path, progress: &Path) -> Command {
    let mut c = sluice();
    c.args(["wordcount", "--topic", "keys", "--job", "keys"])
        .args(["--until-caught-up", "--quiet", "--no-ui"])
        .args(["--state-memory", &BUDGET.to_string()])
        .arg("--data-dir")
        .arg(data)
        .arg("--checkpoint-dir")
        .arg(checkpoint)
        .arg("--progress-json")
        .arg(progress);
    c
}

#[test]
fn a_million_keys_count_exactly_in_a_small_state_budget() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let checkpoint = dir.path().join("checkpoint");
    let progress = dir.path().join("progress.jsonl");
    let store = LogStore::open(&data, common::quiet()).unwrap();
    let topic = store
        .create_topic("keys", 4, TopicConfig::default())
        .unwrap();
    let lines: Vec<String> = (0..KEYS).chain(0..AGAIN).map(|i| format!("w{i}")).collect();
    common::append_round_robin(&topic, 1000, &lines, 1_000);
    drop(topic);
    store.close().unwrap();
    drop(store);

    let peak = peak_rss(
        &mut wordcount(&data, &checkpoint, &progress),
        &dir.path().join("job.log"),
    );

    // Every batch within the budget's share of records (256 bytes each).
    let per_batch = BUDGET / 256;
    let mut batches = 0;
    let mut rows = 0;
    for line in std::fs::read_to_string(&progress).unwrap().lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let n = v["input_rows"].as_u64().unwrap();
        assert!(n <= per_batch, "a batch of {n} records, over {per_batch}");
        rows += n;
        batches += 1;
    }
    assert_eq!(rows, (KEYS + AGAIN) as u64);
    assert!(
        batches >= (KEYS + AGAIN) as u64 / per_batch,
        "{batches} batches"
    );

    let counts = common::state_scan(&checkpoint, "keys", None);
    assert_eq!(counts.len(), KEYS, "distinct keys in the result table");
    let mut wrong = 0;
    for (word, count) in &counts {
        let i: usize = word[1..].parse().unwrap();
        let want = if i < AGAIN { "2" } else { "1" };
        if count != want {
            wrong += 1;
        }
    }
    assert_eq!(wrong, 0, "keys with a wrong count");

    // The budget, a batch in flight, the binary and RocksDB's fixed costs
    // (111 MiB when written); a million keys held in memory at even 100
    // bytes each would cross it (they cost ~1 GB before the budget).
    let bound = 200 << 20;
    eprintln!("peak RSS {} MiB in {batches} batches", peak >> 20);
    assert!(
        peak < bound,
        "peak RSS {} MiB over the {} MiB bound",
        peak >> 20,
        bound >> 20
    );
}

#[test]
fn a_state_budget_below_the_smallest_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let stderr = sluice()
        .args(["wordcount", "--topic", "keys", "--state-memory", "1MiB"])
        .arg("--data-dir")
        .arg(dir.path())
        .fails();
    assert!(
        stderr.contains("--state-memory") && stderr.contains("smallest state budget"),
        "{stderr}"
    );
}
