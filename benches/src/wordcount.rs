//! `sluice-bench wordcount`: end-to-end word count over a pre-loaded corpus
//! (4-partition topic), drained from offset 0 with `--until-caught-up`,
//! through the in-process source and through `sluice broker` + rdkafka.
//! Each run is a child process, so its peak RSS is its own (`wait4`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::util::{BatchAppender, free_port, median};
use sluice::corpus::CorpusGenerator;
use sluice::log::{LogStore, StoreOptions, TopicConfig};
use sluice::units::{format_bytes, parse_bytes};

#[derive(Debug, clap::Args)]
pub struct WordcountBenchArgs {
    /// Corpus sizes, comma-separated.
    #[arg(long, default_value = "100MB,500MB", value_delimiter = ',', value_parser = parse_bytes)]
    pub sizes: Vec<u64>,
    /// What to measure: embedded (the Rust job, in-process source), broker
    /// (the Rust job through `sluice broker` + rdkafka), sql
    /// (jobs/wordcount.sql through `sluice run`, in-process source),
    /// sql-broker (the same through `sluice broker`, table sink), sql-topic
    /// (the same with a topic sink at the broker: one transaction per batch).
    #[arg(long, default_value = "embedded,broker,sql", value_delimiter = ',')]
    pub sources: Vec<String>,
    /// Runs per measurement; the median is reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Work directory (corpus topics and checkpoints).
    #[arg(long, default_value = "./bench-data/wordcount")]
    pub dir: PathBuf,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

pub(crate) struct Loaded {
    pub data_dir: PathBuf,
    pub words: u64,
    pub bytes: u64,
}

fn load_corpus(dir: &Path, size: u64, seed: u64) -> anyhow::Result<Loaded> {
    load_corpus_partitions(dir, size, seed, 4)
}

/// Writes (once) `size` bytes of generated text into topic `corpus` of a
/// store under `dir`, lines spread round-robin over `partitions`.
pub(crate) fn load_corpus_partitions(
    dir: &Path,
    size: u64,
    seed: u64,
    partitions: usize,
) -> anyhow::Result<Loaded> {
    let data_dir = if partitions == 4 {
        dir.join(format!("corpus-{size}-{seed}"))
    } else {
        dir.join(format!("corpus-{size}-{seed}-p{partitions}"))
    };
    let marker = data_dir.join("words");
    if let Ok(text) = std::fs::read_to_string(&marker)
        && let Some((words, bytes)) = text.trim().split_once(' ')
    {
        return Ok(Loaded {
            data_dir,
            words: words.parse()?,
            bytes: bytes.parse()?,
        });
    }
    let _ = std::fs::remove_dir_all(&data_dir);
    let store = LogStore::open(
        &data_dir,
        StoreOptions {
            background: false,
            ..Default::default()
        },
    )?;
    let topic = store.create_topic("corpus", partitions as i64, TopicConfig::default())?;
    let mut appender = BatchAppender::new(&topic);
    let mut generator = CorpusGenerator::new(seed);
    let (mut written, mut words, mut line_no) = (0u64, 0u64, 0usize);
    let mut line = Vec::with_capacity(256);
    while written < size {
        line.clear();
        words += generator.next_line(&mut line) as u64;
        written += line.len() as u64 + 1;
        appender.push(line_no % partitions, &line)?;
        line_no += 1;
    }
    appender.finish()?;
    store.close()?;
    std::fs::write(&marker, format!("{words} {written}"))?;
    Ok(Loaded {
        data_dir,
        words,
        bytes: written,
    })
}

/// Waits for a child, returning its exit status and peak RSS in bytes.
fn wait_with_rss(child: Child) -> anyhow::Result<(std::process::ExitStatus, u64)> {
    let (status, rss, _) = wait_with_usage(child)?;
    Ok((status, rss))
}

/// Waits for a child: its exit status, peak RSS in bytes and CPU seconds
/// (user + system).
pub(crate) fn wait_with_usage(
    child: Child,
) -> anyhow::Result<(std::process::ExitStatus, u64, f64)> {
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: plain wait4 on our own child; `usage` is a valid out-pointer.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    if r < 0 {
        bail!("wait4 failed: {}", std::io::Error::last_os_error());
    }
    std::mem::forget(child); // reaped above
    use std::os::unix::process::ExitStatusExt;
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok((
        std::process::ExitStatus::from_raw(status),
        usage.ru_maxrss as u64 * 1024,
        secs(usage.ru_utime) + secs(usage.ru_stime),
    ))
}

fn run_once(
    exe: &Path,
    loaded: &Loaded,
    source: &str,
    work: &Path,
    run: usize,
) -> anyhow::Result<(f64, u64)> {
    let checkpoint = work.join(format!("checkpoint-{source}-{run}"));
    let _ = std::fs::remove_dir_all(&checkpoint);
    let mut broker = None;
    let mut cmd = Command::new(exe);
    if source.starts_with("sql") {
        // The shipped job, reading the corpus topic; `sql-topic` writes its
        // counts to a topic of the broker instead of the result table.
        let job = work.join("wordcount.sql");
        let mut text =
            include_str!("../../jobs/wordcount.sql").replace("topic = 'lines'", "topic = 'corpus'");
        if source == "sql-topic" {
            text = text.replace(
                "CREATE SINK counts WITH (type = 'table');",
                "CREATE SINK counts WITH (type = 'topic', topic = 'counts', key = 'word', partitions = 4);",
            );
        }
        std::fs::write(&job, text)?;
        // The Rust job's batch size (SQL jobs default to smaller batches
        // to bound memory): the same batches, side by side.
        cmd.arg("run")
            .arg(&job)
            .args(["--max-records-per-batch", "1000000"]);
    } else {
        cmd.args(["wordcount", "--topic", "corpus"]);
    }
    cmd.args(["--job", "bench", "--until-caught-up", "--quiet"])
        .arg("--checkpoint-dir")
        .arg(&checkpoint)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(work.join("wordcount.log"))?);
    match source {
        "embedded" | "sql" => {
            cmd.arg("--data-dir").arg(&loaded.data_dir);
        }
        "broker" | "sql-broker" | "sql-topic" => {
            let port = free_port()?;
            let listen = format!("127.0.0.1:{port}");
            let child = Command::new(exe)
                .args(["broker", "--listen", &listen, "--metrics-interval", "0s"])
                .arg("--data-dir")
                .arg(&loaded.data_dir)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("cannot start sluice broker")?;
            broker = Some(child);
            let deadline = Instant::now() + Duration::from_secs(20);
            while std::net::TcpStream::connect(&listen).is_err() {
                if Instant::now() > deadline {
                    bail!("sluice broker did not start listening on {listen}");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            cmd.args(["--brokers", &listen]);
        }
        other => {
            bail!("unknown source {other:?}: use embedded, broker, sql, sql-broker or sql-topic")
        }
    }
    let started = Instant::now();
    let child = cmd.spawn().context("cannot start sluice wordcount")?;
    let (status, rss) = wait_with_rss(child)?;
    let secs = started.elapsed().as_secs_f64();
    if let Some(mut b) = broker {
        let _ = b.kill();
        let _ = b.wait();
    }
    if !status.success() {
        let log = std::fs::read_to_string(work.join("wordcount.log")).unwrap_or_default();
        bail!("sluice wordcount failed ({status}): {}", log.trim());
    }
    let _ = std::fs::remove_dir_all(&checkpoint);
    Ok((secs, rss))
}

pub fn run(args: WordcountBenchArgs) -> anyhow::Result<()> {
    let exe = crate::util::sluice_exe()?;
    std::fs::create_dir_all(&args.dir)?;
    println!(
        "{:>8}  {:>9}  {:>12}  {:>8}  {:>14}  {:>10}",
        "corpus", "source", "words", "seconds", "words/s", "peak RSS"
    );
    for &size in &args.sizes {
        let loaded = load_corpus(&args.dir, size, args.seed)?;
        let mut rates: Vec<(String, f64)> = Vec::new();
        for source in &args.sources {
            let mut secs = Vec::new();
            let mut rss = Vec::new();
            for run in 0..args.runs.max(1) {
                let (s, r) = run_once(&exe, &loaded, source, &args.dir, run)?;
                secs.push(s);
                rss.push(r as f64);
            }
            let s = median(secs);
            println!(
                "{:>8}  {:>9}  {:>12}  {:>8.2}  {:>14.0}  {:>10}",
                format_bytes(loaded.bytes),
                source,
                loaded.words,
                s,
                loaded.words as f64 / s,
                format_bytes(median(rss) as u64)
            );
            rates.push((source.clone(), loaded.words as f64 / s));
        }
        let rate = |name: &str| rates.iter().find(|(n, _)| n == name).map(|(_, r)| *r);
        if let (Some(rust), Some(sql)) = (rate("embedded"), rate("sql")) {
            println!(
                "{:>8}  SQL job at {:.2}x the Rust job's words/s (Rust {:.2}x faster)",
                format_bytes(loaded.bytes),
                sql / rust,
                rust / sql
            );
        }
        if let (Some(table), Some(topic)) = (rate("sql-broker"), rate("sql-topic")) {
            println!(
                "{:>8}  SQL job with a transactional topic sink at {:.2}x the words/s of its table sink",
                format_bytes(loaded.bytes),
                topic / table
            );
        }
    }
    Ok(())
}
