//! `sluice-bench workers`: word count over a 16-partition topic of
//! `sluice broker`, in one process and as one job on 1, 2 and 4 worker
//! processes (`--workers-group`), all side by side in one run. Reports
//! words per CPU-second of the job's processes (the machine's cores are
//! shared by every worker, so wall time says little), the broker's CPU,
//! and what coordination costs per input byte: repartition bytes,
//! changelog records, transactions. Then the restore speed: a fresh
//! worker takes every task of a job whose state has `--restore-keys`
//! distinct keys and rebuilds it from the changelog.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::util::{BatchAppender, free_port};
use crate::wordcount::{Loaded, load_corpus_partitions, wait_with_usage};
use sluice::log::{LogStore, StoreOptions, TopicConfig};
use sluice::units::{format_bytes, parse_bytes};

const PARTITIONS: usize = 16;

#[derive(Debug, clap::Args)]
pub struct WorkersBenchArgs {
    /// Corpus size.
    #[arg(long, default_value = "200MB", value_parser = parse_bytes)]
    pub size: u64,
    /// Worker counts to run the job on, comma-separated.
    #[arg(long, default_value = "1,2,4", value_delimiter = ',')]
    pub workers: Vec<usize>,
    /// Runs of each configuration; the median job CPU is reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// Distinct keys of the restore measurement (0: skip it).
    #[arg(long, default_value_t = 2_000_000)]
    pub restore_keys: u64,
    /// Count over a sliding window of this length (`sluice wordcount
    /// --window`, every batch) in every run: on workers the job's stages
    /// run batch-aligned.
    #[arg(long)]
    pub window: Option<String>,
    /// Work directory (corpus, broker data, checkpoints).
    #[arg(long, default_value = "./bench-data/workers")]
    pub dir: PathBuf,
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

/// A `sluice broker` over the corpus's data directory.
struct Broker {
    child: Child,
    listen: String,
}

impl Broker {
    fn start(exe: &Path, data_dir: &Path) -> anyhow::Result<Broker> {
        let listen = format!("127.0.0.1:{}", free_port()?);
        let child = Command::new(exe)
            .args(["broker", "--listen", &listen, "--metrics-interval", "0s"])
            .args(["--group-initial-rebalance-delay", "100ms"])
            .args(["--group-min-session-timeout", "1s"])
            .arg("--data-dir")
            .arg(data_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start sluice broker")?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(&listen).is_err() {
            if Instant::now() > deadline {
                bail!("sluice broker did not start listening on {listen}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Broker { child, listen })
    }

    /// CPU seconds the broker has used so far.
    fn cpu_seconds(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // Fields after the command name: utime and stime are the 12th and
        // 13th (1-based 14 and 15 of the whole line).
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 = [11, 12]
            .iter()
            .filter_map(|i| fields.get(*i).and_then(|f| f.parse::<f64>().ok()))
            .sum();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
        ticks / hz
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What one run of the job cost.
#[derive(Default)]
struct Cost {
    wall: f64,
    job_cpu: f64,
    broker_cpu: f64,
    repartition_bytes: u64,
    changelog_records: u64,
    transactions: u64,
    restored_mib: f64,
    /// Restore time summed over the tasks (they restore in parallel, one
    /// per task thread).
    restore_task_secs: f64,
    restored_records: u64,
}

/// Where a run's workers keep their checkpoints.
#[derive(Clone, Copy)]
enum Dirs<'a> {
    /// Emptied first, named with this suffix.
    Fresh(&'a str),
    /// As an earlier run of the job left them (a worker restarting).
    Kept,
}

/// Runs the word count as `workers` processes (0: one process, no group)
/// until the topic is drained, with further arguments (`extra`).
#[allow(clippy::too_many_arguments)]
fn run_job(
    exe: &Path,
    broker: &Broker,
    work: &Path,
    topic: &str,
    job: &str,
    workers: usize,
    dirs: Dirs<'_>,
    extra: &[&str],
) -> anyhow::Result<Cost> {
    let broker_before = broker.cpu_seconds();
    let started = Instant::now();
    let mut children = Vec::new();
    for w in 0..workers.max(1) {
        let dir = match dirs {
            Dirs::Fresh(suffix) => {
                let dir = work.join(format!("{job}-{w}{suffix}"));
                let _ = std::fs::remove_dir_all(&dir);
                dir
            }
            Dirs::Kept => work.join(format!("{job}-{w}")),
        };
        std::fs::create_dir_all(&dir)?;
        let mut cmd = Command::new(exe);
        cmd.args(["wordcount", "--topic", topic, "--brokers", &broker.listen])
            .args(["--job", job, "--until-caught-up"])
            .arg("--checkpoint-dir")
            .arg(dir.join("checkpoint"))
            .arg("--progress-json")
            .arg(dir.join("progress.json"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.join("stderr"))?,
            );
        if workers > 0 {
            // Progress lines stay on (into the stderr file): the restore
            // lines are read from there.
            cmd.args(["--workers-group", job, "--session-timeout", "3s"]);
        } else {
            cmd.arg("--quiet");
        }
        cmd.args(extra);
        {
            use std::io::Write;
            let mut marker = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.join("stderr"))?;
            writeln!(marker, "== run {job} {}", started.elapsed().as_nanos())?;
        }
        children.push((cmd.spawn().context("cannot start sluice wordcount")?, dir));
    }
    let mut cost = Cost::default();
    for (child, dir) in children {
        let (status, _, cpu) = wait_with_usage(child)?;
        let log = std::fs::read_to_string(dir.join("stderr")).unwrap_or_default();
        // A kept directory's log holds earlier runs: this run's part only.
        let log = match log.rfind("== run ") {
            Some(at) => log[at..].to_owned(),
            None => log,
        };
        if !status.success() {
            bail!("sluice wordcount ({job}) failed ({status}): {}", log.trim());
        }
        cost.job_cpu += cpu;
        for line in log.lines() {
            // "task 1_3 restored 123 state records (4.5 MiB) from its
            // changelog in 0.41 s"
            let Some((head, rest)) = line.split_once(" state records (") else {
                continue;
            };
            let records = head.rsplit(' ').next().and_then(|n| n.parse::<u64>().ok());
            let mib = rest
                .split_once(" MiB)")
                .and_then(|(m, _)| m.parse::<f64>().ok());
            let secs = rest
                .rsplit_once(" in ")
                .and_then(|(_, s)| s.trim_end_matches(" s").parse::<f64>().ok());
            if let (Some(r), Some(m), Some(s)) = (records, mib, secs) {
                cost.restored_records += r;
                cost.restored_mib += m;
                cost.restore_task_secs += s;
            }
        }
        let progress = std::fs::read_to_string(dir.join("progress.json")).unwrap_or_default();
        for line in progress.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            let counter = |name: &str| v["counters"][name].as_u64().unwrap_or(0);
            cost.repartition_bytes += counter("repartition bytes");
            cost.changelog_records += counter("changelog records");
            cost.transactions += counter("transactions");
        }
    }
    cost.wall = started.elapsed().as_secs_f64();
    cost.broker_cpu = broker.cpu_seconds() - broker_before;
    Ok(cost)
}

/// A topic of `keys` distinct words (four per line) in the broker's store.
fn load_keys(data_dir: &Path, keys: u64) -> anyhow::Result<String> {
    let topic = format!("keys-{keys}");
    let store = LogStore::open(
        data_dir,
        StoreOptions {
            background: false,
            ..Default::default()
        },
    )?;
    if store.topic(&topic).is_ok() {
        store.close()?;
        return Ok(topic);
    }
    let t = store.create_topic(&topic, PARTITIONS as i64, TopicConfig::default())?;
    let mut appender = BatchAppender::new(&t);
    let mut line = String::new();
    for (n, first) in (0..keys).step_by(4).enumerate() {
        line.clear();
        for k in first..(first + 4).min(keys) {
            line.push_str(&format!("key-{k:012} "));
        }
        appender.push(n % PARTITIONS, line.as_bytes())?;
    }
    appender.finish()?;
    store.close()?;
    Ok(topic)
}

pub fn run(args: WorkersBenchArgs) -> anyhow::Result<()> {
    let exe = crate::util::sluice_exe()?;
    std::fs::create_dir_all(&args.dir)?;
    let Loaded {
        data_dir,
        words,
        bytes,
    } = load_corpus_partitions(&args.dir, args.size, args.seed, PARTITIONS)?;
    let keys_topic = if args.restore_keys > 0 {
        Some(load_keys(&data_dir, args.restore_keys)?)
    } else {
        None
    };
    let broker = Broker::start(&exe, &data_dir)?;
    let work = args.dir.join("runs");
    std::fs::create_dir_all(&work)?;
    let stamp = std::process::id();
    let window: Vec<&str> = match &args.window {
        Some(w) => vec!["--window", w.as_str()],
        None => Vec::new(),
    };
    println!(
        "word count{} of {} ({} words) over {PARTITIONS} partitions of sluice broker",
        args.window
            .as_ref()
            .map_or(String::new(), |w| format!(" over a {w} window")),
        format_bytes(bytes),
        words
    );
    println!(
        "{:>10}  {:>8}  {:>9}  {:>11}  {:>14}  {:>9}  {:>12}  {:>11}  {:>8}",
        "run",
        "wall s",
        "job CPU s",
        "broker CPU",
        "words/job-CPU-s",
        "vs 1 proc",
        "repart B/in B",
        "changelog/MB",
        "txns"
    );
    let single = median_of(args.runs, |r| {
        run_job(
            &exe,
            &broker,
            &work,
            "corpus",
            &format!("single-{stamp}-{r}"),
            0,
            Dirs::Fresh(""),
            &window,
        )
    })?;
    let single_rate = words as f64 / single.job_cpu;
    let row = |name: &str, c: &Cost| {
        let rate = words as f64 / c.job_cpu;
        println!(
            "{:>10}  {:>8.2}  {:>9.2}  {:>11.2}  {:>14.0}  {:>8.0}%  {:>12.4}  {:>11.1}  {:>8}",
            name,
            c.wall,
            c.job_cpu,
            c.broker_cpu,
            rate,
            100.0 * rate / single_rate,
            c.repartition_bytes as f64 / bytes as f64,
            c.changelog_records as f64 / (bytes as f64 / 1e6),
            c.transactions
        );
    };
    row("1 process", &single);
    let mut per_worker = Vec::new();
    for &w in &args.workers {
        let cost = median_of(args.runs, |r| {
            run_job(
                &exe,
                &broker,
                &work,
                "corpus",
                &format!("w{w}-{stamp}-{r}"),
                w,
                Dirs::Fresh(""),
                &window,
            )
        })?;
        row(
            &format!("{w} worker{}", if w == 1 { "" } else { "s" }),
            &cost,
        );
        per_worker.push((w, cost));
    }
    for (w, c) in &per_worker {
        println!(
            "{w} worker(s): {:.3} job CPU-s per million words ({:.3} in one process); with the broker's CPU {:.0}% of the one process's words per CPU-s",
            c.job_cpu / (words as f64 / 1e6),
            single.job_cpu / (words as f64 / 1e6),
            100.0 * (words as f64 / (c.job_cpu + c.broker_cpu))
                / (words as f64 / (single.job_cpu + single.broker_cpu))
        );
    }
    if let Some(topic) = keys_topic {
        let job = format!("restore-{stamp}");
        let built = run_job(&exe, &broker, &work, &topic, &job, 1, Dirs::Fresh(""), &[])?;
        // A new worker with no local state takes every task and rebuilds
        // the state from the changelog before it can find the job done.
        let fresh = run_job(
            &exe,
            &broker,
            &work,
            &topic,
            &job,
            1,
            Dirs::Fresh("-fresh"),
            &[],
        )?;
        let per_thread = fresh.restored_mib / fresh.restore_task_secs.max(1e-9);
        println!(
            "restore: {} distinct keys built in {:.1} s; a fresh worker restored {} records ({:.1} MiB) of state from the changelog in {:.2} s of task time ({:.2} s for the whole process, tasks restoring in parallel): {:.1} MiB/s per task thread = {:.0} s per GiB, {:.2} s per million records",
            args.restore_keys,
            built.wall,
            fresh.restored_records,
            fresh.restored_mib,
            fresh.restore_task_secs,
            fresh.wall,
            per_thread,
            1024.0 / per_thread.max(1e-9),
            fresh.restore_task_secs / (fresh.restored_records as f64 / 1e6).max(1e-9)
        );
        // Failover: two workers build the state, then one restarts alone
        // on its directory and takes every task over, restoring what its
        // local copies lack — with standby copies, only the last batches.
        for standby in ["0", "1"] {
            let job = format!("failover{standby}-{stamp}");
            let extra = ["--standby-replicas", standby];
            let both = Dirs::Fresh("");
            run_job(&exe, &broker, &work, &topic, &job, 2, both, &extra)?;
            let alone = run_job(&exe, &broker, &work, &topic, &job, 1, Dirs::Kept, &extra)?;
            println!(
                "failover with {standby} standby cop{}: the worker left alone restored {} records ({:.1} MiB) in {:.2} s of task time, running every task again {:.2} s after it started",
                if standby == "1" { "y" } else { "ies" },
                alone.restored_records,
                alone.restored_mib,
                alone.restore_task_secs,
                alone.wall
            );
        }
    }
    Ok(())
}

/// Runs a configuration `runs` times (`run` gets the run's index, to name
/// a fresh job) and keeps the run with the median job CPU.
fn median_of(runs: usize, run: impl Fn(usize) -> anyhow::Result<Cost>) -> anyhow::Result<Cost> {
    let mut all = (0..runs.max(1))
        .map(run)
        .collect::<anyhow::Result<Vec<_>>>()?;
    all.sort_by(|a, b| a.job_cpu.total_cmp(&b.job_cpu));
    let middle = all.len() / 2;
    Ok(all.swap_remove(middle))
}
