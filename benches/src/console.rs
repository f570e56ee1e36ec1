//! `sluice-bench console`: what the web console costs a job. The word count
//! drains the same corpus with `--no-ui` and with the console on while a
//! poller plays a browser (the job's JSON and `/metrics`, every
//! `--poll`), the two alternating run by run; medians of wall time, CPU
//! time and peak RSS, and the ratio on/off.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::util::{free_port, median};
use crate::wordcount::{load_corpus_partitions, wait_with_usage};
use sluice::units::{format_bytes, parse_bytes};

#[derive(Debug, clap::Args)]
pub struct ConsoleBenchArgs {
    /// Corpus size.
    #[arg(long, default_value = "100MB", value_parser = parse_bytes)]
    pub size: u64,
    /// Runs with the console and runs without, alternating.
    #[arg(long, default_value_t = 7)]
    pub runs: usize,
    /// How often the poller asks for the job's JSON and /metrics.
    #[arg(long, default_value = "100ms", value_parser = humantime::parse_duration)]
    pub poll: Duration,
    /// Records per partition per batch: smaller batches mean more batches
    /// for the console to record.
    #[arg(long, default_value_t = 50_000)]
    pub max_records_per_batch: u64,
    #[arg(long, default_value = "./bench-data/wordcount")]
    pub dir: PathBuf,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

/// One GET whose answer is read whole; false when nothing answered.
fn fetch(addr: &str, path: &str) -> bool {
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if s.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut body = Vec::new();
    s.read_to_end(&mut body).is_ok() && body.starts_with(b"HTTP/1.1 200")
}

struct Run {
    secs: f64,
    cpu: f64,
    rss: u64,
    polls: u64,
}

fn run_once(
    args: &ConsoleBenchArgs,
    data_dir: &std::path::Path,
    console: bool,
) -> anyhow::Result<Run> {
    let exe = crate::util::sluice_exe()?;
    let checkpoint = args.dir.join(format!("checkpoint-console-{console}"));
    let _ = std::fs::remove_dir_all(&checkpoint);
    let mut cmd = Command::new(exe);
    cmd.args([
        "wordcount",
        "--topic",
        "corpus",
        "--job",
        "bench",
        "--until-caught-up",
        "--quiet",
    ])
    .arg("--max-records-per-batch")
    .arg(args.max_records_per_batch.to_string())
    .arg("--data-dir")
    .arg(data_dir)
    .arg("--checkpoint-dir")
    .arg(&checkpoint)
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(std::fs::File::create(args.dir.join("console.log"))?);
    let addr = format!("127.0.0.1:{}", free_port()?);
    if console {
        cmd.args(["--ui", &addr]);
    } else {
        cmd.arg("--no-ui");
    }
    let stop = Arc::new(AtomicBool::new(false));
    let polls = Arc::new(AtomicU64::new(0));
    let poller = console.then(|| {
        let (stop, polls, addr, every) = (stop.clone(), polls.clone(), addr.clone(), args.poll);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                if fetch(&addr, "/api/job") && fetch(&addr, "/metrics") {
                    polls.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(every);
            }
        })
    });
    let started = Instant::now();
    let child = cmd.spawn().context("cannot start sluice wordcount")?;
    let (status, rss, cpu) = wait_with_usage(child)?;
    let secs = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    if let Some(p) = poller {
        let _ = p.join();
    }
    if !status.success() {
        let log = std::fs::read_to_string(args.dir.join("console.log")).unwrap_or_default();
        bail!("sluice wordcount failed ({status}): {}", log.trim());
    }
    let _ = std::fs::remove_dir_all(&checkpoint);
    Ok(Run {
        secs,
        cpu,
        rss,
        polls: polls.load(Ordering::Relaxed),
    })
}

pub fn run(args: ConsoleBenchArgs) -> anyhow::Result<()> {
    std::fs::create_dir_all(&args.dir)?;
    let loaded = load_corpus_partitions(&args.dir, args.size, args.seed, 4)?;
    println!(
        "word count over {} ({} words), {} records per partition per batch, {} runs each, alternating",
        format_bytes(loaded.bytes),
        loaded.words,
        args.max_records_per_batch,
        args.runs
    );
    // A first, unmeasured run warms the page cache.
    run_once(&args, &loaded.data_dir, false)?;
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for _ in 0..args.runs.max(1) {
        off.push(run_once(&args, &loaded.data_dir, false)?);
        on.push(run_once(&args, &loaded.data_dir, true)?);
    }
    let summary = |runs: &[Run]| {
        (
            median(runs.iter().map(|r| r.secs).collect()),
            median(runs.iter().map(|r| r.cpu).collect()),
            median(runs.iter().map(|r| r.rss as f64).collect()),
            runs.iter().map(|r| r.polls).sum::<u64>(),
        )
    };
    let (off_s, off_cpu, off_rss, _) = summary(&off);
    let (on_s, on_cpu, on_rss, polls) = summary(&on);
    println!(
        "{:>12}  {:>10}  {:>10}  {:>10}  {:>12}",
        "console", "wall s", "CPU s", "peak RSS", "polls"
    );
    println!(
        "{:>12}  {off_s:>10.3}  {off_cpu:>10.3}  {:>10}  {:>12}",
        "off",
        format_bytes(off_rss as u64),
        "-"
    );
    println!(
        "{:>12}  {on_s:>10.3}  {on_cpu:>10.3}  {:>10}  {:>12}",
        "on, polled",
        format_bytes(on_rss as u64),
        polls
    );
    println!(
        "on ÷ off: wall {:.3}, CPU {:.3} (target: at most 1.02)",
        on_s / off_s,
        on_cpu / off_cpu
    );
    Ok(())
}
