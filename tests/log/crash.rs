//! Crash test with real processes: the test re-executes its own binary as a
//! child that appends to a store under the `always` flush policy and prints
//! one `ACK` line per acknowledged append, SIGKILLs it at a random moment,
//! then reopens the store (running recovery) and checks that every
//! acknowledged record survived at its offset, that offsets are contiguous
//! and that no torn batch is visible.
//!
//! Env: `SLUICE_CRASH_ITERATIONS` (default 50), `SLUICE_CRASH_SEED` (default:
//! from the clock; printed so a run can be repeated).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use sluice::log::{FlushPolicy, LogError, LogStore, TopicConfig};

use crate::common;
use crate::common::{COMPRESSIONS, Rec, Stored, encode_batch, log_bytes, quiet, read_all};

const TOPIC: &str = "crash";
const PARTITIONS: usize = 2;
/// Set (to the data directory) only in the child process.
const CHILD_DIR_ENV: &str = "SLUICE_CRASH_CHILD_DIR";
const CHILD_RUN_ENV: &str = "SLUICE_CRASH_CHILD_RUN";
const CHILD_SEED_ENV: &str = "SLUICE_CRASH_CHILD_SEED";
/// A child that was never killed gives up after this long.
const CHILD_MAX_LIFETIME: Duration = Duration::from_secs(30);
/// A child stops appending (and waits to be killed) after this many records.
const CHILD_MAX_RECORDS: u64 = 6_000;

fn topic_config() -> TopicConfig {
    let mut cfg = TopicConfig {
        segment_bytes: 64 * 1024,
        index_interval_bytes: 1024,
        retention_ms: -1,
        ..TopicConfig::default()
    };
    cfg.set_flush_policy(FlushPolicy::EveryAppend);
    cfg
}

/// The record with sequence number `seq` of child run `run`: everything in
/// it derives from `(run, seq)`, so any record found in the log can be
/// checked byte for byte, acknowledged or not. Some values are a few KiB of
/// incompressible bytes so that some batches span several pages (a SIGKILL
/// can then interrupt the write between pages and leave a torn batch).
fn expected_record(run: u64, seq: u64) -> Rec {
    let mut rng = SmallRng::seed_from_u64((run << 32) ^ seq ^ 0x5EED);
    let filler_len = if seq % 41 == 7 {
        2000 + (seq % 500) as usize
    } else {
        ((seq * 31 + run * 7) % 120) as usize
    };
    let filler: String = (0..filler_len)
        .map(|_| {
            char::from(
                b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
                    [rng.random_range(0..62)],
            )
        })
        .collect();
    Rec {
        key: (!seq.is_multiple_of(3)).then(|| format!("k{seq}").into_bytes()),
        value: format!("r{run}-s{seq}-{filler}").into_bytes(),
        timestamp: 1_700_000_000_000 + run as i64 * 1_000_000 + seq as i64,
    }
}

/// `r<run>-s<seq>-…` → `(run, seq)`.
fn parse_id(value: &[u8]) -> Option<(u64, u64)> {
    let s = std::str::from_utf8(value).ok()?;
    let mut it = s.splitn(3, '-');
    let run = it.next()?.strip_prefix('r')?.parse().ok()?;
    let seq = it.next()?.strip_prefix('s')?.parse().ok()?;
    it.next()?;
    Some((run, seq))
}

/// The child's test name as the harness knows it: `crash::child_appender`,
/// the module path without the binary's name.
fn child_test() -> String {
    let module = module_path!().split_once("::").map_or("", |(_, m)| m);
    format!("{module}::child_appender")
}

/// The child: appends until killed, printing `ACK <partition> <base offset>
/// <count> <value of the first record>` after every acknowledged append.
/// Does nothing unless `SLUICE_CRASH_CHILD_DIR` is set, so it is harmless
/// in a normal test run.
#[test]
fn child_appender() {
    let Some(dir) = std::env::var_os(CHILD_DIR_ENV) else {
        return;
    };
    let run: u64 = std::env::var(CHILD_RUN_ENV).unwrap().parse().unwrap();
    let seed: u64 = std::env::var(CHILD_SEED_ENV).unwrap().parse().unwrap();
    let started = Instant::now();
    let store = LogStore::open(&dir, quiet()).expect("child: open store");
    let topic = match store.topic(TOPIC) {
        Ok(t) => t,
        Err(LogError::UnknownTopic(_)) => store
            .create_topic(TOPIC, PARTITIONS as i64, topic_config())
            .expect("child: create topic"),
        Err(e) => panic!("child: {e}"),
    };
    let parts = topic.partitions();
    assert_eq!(parts.len(), PARTITIONS);
    let mut rng = SmallRng::seed_from_u64(seed ^ run.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    // Start on a fresh line whatever the test harness printed before.
    writeln!(out, "\nREADY {run}").unwrap();
    out.flush().unwrap();
    let mut seq = 0u64;
    while started.elapsed() < CHILD_MAX_LIFETIME {
        if seq >= CHILD_MAX_RECORDS {
            // Keeps the parent's checks (which read the whole log after
            // every kill) bounded on machines with very fast fsyncs.
            std::thread::sleep(Duration::from_millis(5));
            continue;
        }
        let p = rng.random_range(0..PARTITIONS);
        let n = rng.random_range(1..=20u64);
        let recs: Vec<Rec> = (seq..seq + n).map(|s| expected_record(run, s)).collect();
        let compression = COMPRESSIONS[rng.random_range(0..COMPRESSIONS.len())];
        let mut bytes = encode_batch(&recs, compression);
        let info = parts[p].append(&mut bytes).expect("child: append");
        assert_eq!(info.record_count, n as i64);
        let line = format!(
            "ACK {p} {} {n} {}\n",
            info.base_offset,
            String::from_utf8(recs[0].value.clone()).unwrap()
        );
        out.write_all(line.as_bytes()).unwrap();
        out.flush().unwrap();
        seq += n;
    }
    // Never killed: leave without closing, like a crash.
    store.abandon_without_closing();
}

/// What one child run printed.
struct ChildOutput {
    acks: Vec<(usize, i64, u64, u64)>, // partition, base offset, count, first seq
    ready: bool,
    stderr: String,
}

fn run_child(exe: &Path, dir: &Path, run: u64, seed: u64, kill_after: Duration) -> ChildOutput {
    let mut child = Command::new(exe)
        .args(["--exact", &child_test(), "--nocapture", "--test-threads=1"])
        .env(CHILD_DIR_ENV, dir)
        .env(CHILD_RUN_ENV, run.to_string())
        .env(CHILD_SEED_ENV, seed.to_string())
        .env("RUST_BACKTRACE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning the child test binary");
    let stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    // Drain both pipes concurrently so the child never blocks on them.
    let out_reader = std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut lines = Vec::new();
        loop {
            let mut line = Vec::new();
            match r.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => lines.push(line),
            }
        }
        lines
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    std::thread::sleep(kill_after);
    let exited_early = child.try_wait().expect("try_wait").is_some();
    if !exited_early {
        // SIGKILL on Unix.
        child.kill().expect("killing the child");
    }
    let status = child.wait().expect("waiting for the child");
    let lines = out_reader.join().unwrap();
    let stderr = err_reader.join().unwrap();
    let mut stdout_text = String::new();
    let mut acks = Vec::new();
    let mut ready = false;
    for raw in &lines {
        let text = String::from_utf8_lossy(raw);
        stdout_text.push_str(&text);
        // A last line without its newline was cut by the kill: not an ack.
        if !raw.ends_with(b"\n") {
            continue;
        }
        let line = text.trim_end();
        if line.starts_with("READY ") {
            ready = true;
        }
        let Some(rest) = line.strip_prefix("ACK ") else {
            continue;
        };
        let f: Vec<&str> = rest.split(' ').collect();
        assert_eq!(f.len(), 4, "malformed ACK line {line:?}");
        let p: usize = f[0].parse().unwrap();
        let base: i64 = f[1].parse().unwrap();
        let count: u64 = f[2].parse().unwrap();
        let (r, first_seq) =
            parse_id(f[3].as_bytes()).unwrap_or_else(|| panic!("bad value in {line:?}"));
        assert_eq!(r, run, "ACK from another run: {line:?}");
        assert_eq!(
            f[3].as_bytes(),
            expected_record(run, first_seq).value.as_slice(),
            "ACK line's first value differs from the record the child built"
        );
        acks.push((p, base, count, first_seq));
    }
    assert!(
        !exited_early,
        "child run {run} exited by itself ({status}) before it was killed\nstdout:\n{stdout_text}\nstderr:\n{stderr}"
    );
    ChildOutput {
        acks,
        ready,
        stderr,
    }
}

#[derive(Default)]
struct Totals {
    acked_records: u64,
    acked_appends: u64,
    killed_before_ready: u64,
    unacked_survivors: u64,
    bytes_cut: u64,
    recoveries_that_cut: u64,
}

/// Reopens the store after a kill and checks everything against the acks
/// and against what the previous check saw.
fn verify(
    dir: &Path,
    run: u64,
    acked: &[BTreeMap<i64, (u64, u64)>],
    seen: &mut [Vec<Stored>],
    totals: &mut Totals,
) {
    let part_dir = |p: usize| dir.join("topics").join(TOPIC).join(p.to_string());
    let before: Vec<u64> = (0..PARTITIONS)
        .map(|p| {
            if part_dir(p).exists() {
                log_bytes(&part_dir(p))
            } else {
                0
            }
        })
        .collect();
    let store = LogStore::open(dir, quiet()).unwrap_or_else(|e| {
        panic!("after run {run}: reopening the killed child's store failed: {e}")
    });
    let topic = match store.topic(TOPIC) {
        Ok(t) => t,
        Err(e) => {
            assert!(
                acked.iter().all(|a| a.is_empty()),
                "after run {run}: the topic is gone but appends were acknowledged: {e}"
            );
            store.close().unwrap();
            return;
        }
    };
    assert_eq!(topic.partition_count(), PARTITIONS);
    for p in 0..PARTITIONS {
        let after = log_bytes(&part_dir(p));
        if before[p] > after {
            totals.bytes_cut += before[p] - after;
            totals.recoveries_that_cut += 1;
        }
        let what = format!("after run {run}, partition {p}");
        let part = topic.partition(p as i32).unwrap();
        assert_eq!(part.log_start_offset(), 0, "{what}: log start");
        // Contiguity, whole batches, CRCs and decoding are checked here.
        let log = read_all(&part);
        assert_eq!(
            log.len() as i64,
            part.high_watermark(),
            "{what}: records vs high-water mark"
        );
        // What an earlier check saw is never rewritten or lost later. (That
        // check verified those records' contents and the acks they hold, so
        // only the records added since are checked one by one below.)
        let prev = &seen[p];
        assert!(
            prev.len() <= log.len(),
            "{what}: the log shrank from {} to {} records",
            prev.len(),
            log.len()
        );
        if log[..prev.len()] != prev[..] {
            let (a, b) = prev.iter().zip(&log).find(|(a, b)| a != b).unwrap();
            panic!(
                "{what}: offset {} changed since the previous check: was {a:?}, now {b:?}",
                a.offset
            );
        }
        let mut last_id: Option<(u64, u64)> = prev.last().and_then(|r| parse_id(&r.value));
        let mut this_run = 0u64;
        for (i, r) in log.iter().enumerate().skip(prev.len()) {
            assert_eq!(
                r.offset, i as i64,
                "{what}: offsets must run from 0 without gaps"
            );
            let (rr, seq) = parse_id(&r.value).unwrap_or_else(|| {
                panic!(
                    "{what}: offset {} holds a record no child wrote: {r:?}",
                    r.offset
                )
            });
            assert_eq!(
                r.rec(),
                expected_record(rr, seq),
                "{what}: offset {} holds a damaged record r{rr}-s{seq}",
                r.offset
            );
            assert!(
                rr <= run,
                "{what}: offset {} holds a record of a future run",
                r.offset
            );
            if let Some(prev) = last_id {
                assert!(
                    (rr, seq) > prev,
                    "{what}: offset {} (r{rr}-s{seq}) is out of order after r{}-s{}",
                    r.offset,
                    prev.0,
                    prev.1
                );
            }
            last_id = Some((rr, seq));
            this_run += u64::from(rr == run);
        }
        // Acks of earlier runs lie in the prefix checked above.
        let mut acked_this_run = 0u64;
        for (&offset, &(rr, seq)) in acked[p].range(prev.len() as i64..) {
            let got = log.get(offset as usize).unwrap_or_else(|| {
                panic!(
                    "{what}: acknowledged record r{rr}-s{seq} at offset {offset} is lost (high-water mark {})",
                    log.len()
                )
            });
            assert_eq!(
                parse_id(&got.value),
                Some((rr, seq)),
                "{what}: offset {offset} should hold acknowledged record r{rr}-s{seq}"
            );
            assert_eq!(
                rr, run,
                "{what}: an earlier run's ack at offset {offset} was not in the earlier log"
            );
            acked_this_run += 1;
        }
        totals.unacked_survivors += this_run - acked_this_run;
        seen[p] = log;
        // Appends continue right after the recovered end.
        assert_eq!(part.high_watermark(), seen[p].len() as i64);
    }
    store
        .close()
        .unwrap_or_else(|e| panic!("after run {run}: close failed: {e}"));
}

/// SIGKILLs a child appender at random moments (at least 50 times unless
/// `SLUICE_CRASH_ITERATIONS` says otherwise) and checks after each kill
/// that recovery kept every acknowledged record and showed no torn batch.
#[test]
fn sigkill_during_appends_loses_no_acknowledged_record() {
    if std::env::var_os(CHILD_DIR_ENV).is_some() {
        return;
    }
    let iterations: u64 = common::env_or("SLUICE_CRASH_ITERATIONS", 50);
    let seed = common::crash_seed();
    println!(
        "crash test: seed {seed} (SLUICE_CRASH_SEED={seed} repeats the kill times), {iterations} iterations"
    );
    let mut rng = SmallRng::seed_from_u64(seed);
    let exe = std::env::current_exe().expect("current_exe");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let started = Instant::now();

    // partition → offset → (run, seq) of every acknowledged record.
    let mut acked: Vec<BTreeMap<i64, (u64, u64)>> = vec![BTreeMap::new(); PARTITIONS];
    let mut seen: Vec<Vec<Stored>> = vec![Vec::new(); PARTITIONS];
    let mut totals = Totals::default();
    for run in 0..iterations {
        let kill_after = Duration::from_millis(rng.random_range(20..=300));
        let out = run_child(&exe, dir, run, seed, kill_after);
        if !out.ready {
            totals.killed_before_ready += 1;
        }
        if !out.stderr.trim().is_empty() && out.stderr.contains("panicked") {
            panic!("child run {run} panicked:\n{}", out.stderr);
        }
        for &(p, base, count, first_seq) in &out.acks {
            assert!(p < PARTITIONS);
            for i in 0..count {
                let prev = acked[p].insert(base + i as i64, (run, first_seq + i));
                assert!(
                    prev.is_none(),
                    "run {run}: offset {} of partition {p} acknowledged twice ({prev:?}, now r{run}-s{})",
                    base + i as i64,
                    first_seq + i
                );
            }
            totals.acked_records += count;
            totals.acked_appends += 1;
        }
        verify(dir, run, &acked, &mut seen, &mut totals);
    }
    let records: usize = seen.iter().map(Vec::len).sum();
    let segments: usize = (0..PARTITIONS)
        .map(|p| common::segment_files(&dir.join("topics").join(TOPIC).join(p.to_string())).len())
        .sum();
    println!(
        "crash test: {iterations} kills in {:.1?}; {} appends / {} records acknowledged; {records} records in the log \
         ({} appended but killed before their ACK); {segments} segments; {} children killed before opening the store; \
         recovery cut {} bytes in {} partition recoveries",
        started.elapsed(),
        totals.acked_appends,
        totals.acked_records,
        totals.unacked_survivors,
        totals.killed_before_ready,
        totals.bytes_cut,
        totals.recoveries_that_cut,
    );
    assert!(
        totals.acked_records > 0,
        "no child ever acknowledged an append: the test tested nothing"
    );
}
