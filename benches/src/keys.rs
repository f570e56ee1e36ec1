//! `sluice-bench keys`: the word count when every word is a new key — a
//! 4-partition topic of N lines `w1` … `wN` drained with
//! `--until-caught-up` (N new keys), then the same N lines appended and
//! drained again (N updated keys), `--updates` times: a later update pass
//! pays for the compactions an earlier one left behind. Records/s, CPU, peak RSS (each job is
//! a child process, `wait4`) and the state's bytes on disk, for the
//! `sluice` under test and, alternating run by run on the same input, a
//! baseline binary.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{Context, bail};

use crate::util::{BatchAppender, median_by, open_store};
use crate::wordcount::wait_with_usage;
use sluice::log::TopicConfig;
use sluice::units::{format_bytes, parse_bytes};

#[derive(Debug, clap::Args)]
pub struct KeysBenchArgs {
    /// Distinct keys (lines) per pass, comma-separated.
    #[arg(long, default_value = "5000000", value_delimiter = ',')]
    pub keys: Vec<u64>,
    /// Runs per binary; the median run is reported.
    #[arg(long, default_value_t = 1)]
    pub runs: usize,
    /// A previous `sluice` binary, measured alternately on the same input.
    #[arg(long)]
    pub baseline: Option<PathBuf>,
    /// `--state-memory` for the binary under test (the baseline runs with
    /// its defaults, as it may not know the flag).
    #[arg(long, value_parser = parse_bytes)]
    pub state_memory: Option<u64>,
    /// Update passes after the first (new keys) pass. More than one shows
    /// the steady state: RocksDB compacts in the background, and work one
    /// pass leaves behind is paid by the next.
    #[arg(long, default_value_t = 2)]
    pub updates: usize,
    /// Work directory (a store and a checkpoint per run, removed after).
    #[arg(long, default_value = "./bench-data/keys")]
    pub dir: PathBuf,
}

const PARTITIONS: usize = 4;

/// One drain: wall seconds, CPU seconds, peak RSS and checkpoint bytes.
#[derive(Debug, Clone, Copy)]
struct Drain {
    secs: f64,
    cpu: f64,
    rss: u64,
    disk: u64,
}

/// Appends lines `w1` … `wN`, round-robin over the partitions.
fn append_lines(data_dir: &Path, keys: u64) -> anyhow::Result<()> {
    let store = open_store(data_dir, false)?;
    let topic = match store.topic("keys") {
        Ok(t) => t,
        Err(_) => store.create_topic("keys", PARTITIONS as i64, TopicConfig::default())?,
    };
    let mut appender = BatchAppender::new(&topic);
    let mut line = Vec::with_capacity(16);
    for i in 1..=keys {
        line.clear();
        line.push(b'w');
        line.extend_from_slice(i.to_string().as_bytes());
        appender.push((i as usize - 1) % PARTITIONS, &line)?;
    }
    appender.finish()?;
    store.close()?;
    Ok(())
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

fn drain(
    exe: &Path,
    data_dir: &Path,
    checkpoint: &Path,
    state_memory: Option<u64>,
    log: &Path,
) -> anyhow::Result<Drain> {
    let mut cmd = Command::new(exe);
    cmd.args(["wordcount", "--topic", "keys", "--job", "keys"])
        .args(["--until-caught-up", "--quiet", "--no-ui"])
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--checkpoint-dir")
        .arg(checkpoint)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log)?);
    if let Some(bytes) = state_memory {
        cmd.args(["--state-memory", &bytes.to_string()]);
    }
    let started = Instant::now();
    let child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", exe.display()))?;
    let (status, rss, cpu) = wait_with_usage(child)?;
    let secs = started.elapsed().as_secs_f64();
    if !status.success() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        bail!("{} failed ({status}): {}", exe.display(), text.trim());
    }
    Ok(Drain {
        secs,
        cpu,
        rss,
        disk: dir_bytes(checkpoint),
    })
}

/// Every pass of one binary (new keys, then `updates` times the same
/// keys) on a fresh store and checkpoint.
fn run_passes(
    exe: &Path,
    keys: u64,
    updates: usize,
    state_memory: Option<u64>,
    work: &Path,
) -> anyhow::Result<Vec<Drain>> {
    let data_dir = work.join("data");
    let checkpoint = work.join("checkpoint");
    let _ = std::fs::remove_dir_all(&data_dir);
    let _ = std::fs::remove_dir_all(&checkpoint);
    let log = work.join("job.log");
    let mut passes = Vec::with_capacity(updates + 1);
    for _ in 0..=updates {
        append_lines(&data_dir, keys)?;
        passes.push(drain(exe, &data_dir, &checkpoint, state_memory, &log)?);
    }
    let _ = std::fs::remove_dir_all(&data_dir);
    let _ = std::fs::remove_dir_all(&checkpoint);
    Ok(passes)
}

pub fn run(args: KeysBenchArgs) -> anyhow::Result<()> {
    let exe = crate::util::sluice_exe()?;
    std::fs::create_dir_all(&args.dir)?;
    let mut binaries: Vec<(&str, PathBuf, Option<u64>)> = Vec::new();
    if let Some(b) = &args.baseline {
        binaries.push(("baseline", b.clone(), None));
    }
    binaries.push(("sluice", exe, args.state_memory));
    println!(
        "{:>9}  {:>10}  {:>7}  {:>8}  {:>11}  {:>7}  {:>10}  {:>10}",
        "binary", "keys", "pass", "time", "records/s", "CPU s", "peak RSS", "on disk"
    );
    for &keys in &args.keys {
        let mut results: Vec<Vec<Vec<Drain>>> = vec![Vec::new(); binaries.len()];
        for _ in 0..args.runs.max(1) {
            for (i, (label, exe, memory)) in binaries.iter().enumerate() {
                let passes = run_passes(exe, keys, args.updates, *memory, &args.dir)
                    .with_context(|| format!("{label}, {keys} keys"))?;
                results[i].push(passes);
            }
        }
        for ((label, _, _), runs) in binaries.iter().zip(results) {
            let passes = median_by(runs, |p| p.iter().map(|d| d.secs).sum());
            for (n, d) in passes.into_iter().enumerate() {
                let pass = match n {
                    0 => "new".to_string(),
                    n => format!("updated{n}"),
                };
                println!(
                    "{:>9}  {:>10}  {:>7}  {:>7.2}s  {:>11.0}  {:>7.1}  {:>10}  {:>10}",
                    label,
                    keys,
                    pass,
                    d.secs,
                    keys as f64 / d.secs,
                    d.cpu,
                    format_bytes(d.rss),
                    format_bytes(d.disk)
                );
            }
        }
    }
    Ok(())
}
