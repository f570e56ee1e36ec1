//! The web console of a running job, as a person and a monitoring stack
//! see it: `sluice demo wordcount` rendered by a real headless browser
//! (charts with data points, lag, the top words equal to `sluice state
//! scan`), `/metrics` read by independent parsers, bad requests refused,
//! stalled clients that never slow the batch loop, and memory bounded by
//! `--ui-history`.

use std::fs;
use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use crate::common::broker::{eventually, wait_timeout};
use crate::common::console::{
    artifact, body_data, console_addr, get, get_json, rendered_dom, sample, scrape, send, table,
    tags_with,
};
use crate::common::{sluice, sluice_in};

const WAIT: Duration = Duration::from_secs(60);

/// Words with a skewed distribution (word k weighs 12 − k), so the top of
/// the table is stable.
fn corpus(lines: usize) -> String {
    let words = [
        "stream", "batch", "kafka", "offset", "window", "state", "commit", "record", "spark",
        "flink", "topic", "arrow",
    ];
    let total: usize = (1..=words.len()).sum();
    let mut text = String::new();
    for i in 0..lines {
        let mut line = Vec::new();
        for j in 0..6 {
            let mut x = (i * 7 + j * 13) % total;
            let mut k = 0;
            while x >= words.len() - k {
                x -= words.len() - k;
                k += 1;
            }
            line.push(words[k]);
        }
        text.push_str(&line.join(" "));
        text.push('\n');
    }
    text
}

/// A running `sluice demo wordcount` with its stderr in a file; killed on drop.
struct Demo {
    child: Child,
    stderr: std::path::PathBuf,
}

impl Demo {
    fn start(data: &Path, checkpoint: &Path, args: &[&str]) -> Demo {
        let stderr = checkpoint.with_extension("stderr");
        let child = sluice_in(data)
            .args(["demo", "wordcount", "--checkpoint-dir"])
            .arg(checkpoint)
            .args(args)
            .stdout(Stdio::null())
            .stderr(fs::File::create(&stderr).expect("stderr file"))
            .spawn()
            .expect("start sluice demo wordcount");
        Demo { child, stderr }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The console's address, from the line the demo prints first.
    fn console(&mut self) -> SocketAddr {
        eventually("the demo prints its console's URL", WAIT, || {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the demo exited ({status}): {}", self.log());
            }
            console_addr(&self.log())
        })
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = wait_timeout(&mut self.child, Duration::from_secs(10));
        if std::thread::panicking() {
            eprintln!("demo stderr:\n{}", self.log());
        }
    }
}

fn batches(job: &serde_json::Value) -> &Vec<serde_json::Value> {
    job["batches"].as_array().expect("batches")
}

#[test]
fn demo_console_renders_charts_lag_and_the_top_words_state_scan_prints() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let checkpoint = dir.path().join("checkpoint");
    // A backlog drained in small batches: lag shows, then falls to zero.
    assert!(
        sluice_in(&data)
            .args(["topic", "create", "demo-wordcount", "--partitions", "4"])
            .status()
            .unwrap()
            .success()
    );
    let input = dir.path().join("lines.txt");
    fs::write(&input, corpus(20_000)).unwrap();
    assert!(
        sluice_in(&data)
            .args(["produce", "demo-wordcount", "--file"])
            .arg(&input)
            .status()
            .unwrap()
            .success()
    );
    let mut demo = Demo::start(
        &data,
        &checkpoint,
        &[
            "--rate",
            "0",
            "--interval",
            "200ms",
            "--max-records-per-batch",
            "700",
            "--ui",
            "127.0.0.1:0",
        ],
    );
    let addr = demo.console();
    let first_lines: Vec<String> = demo.log().lines().take(3).map(String::from).collect();
    assert!(
        first_lines
            .iter()
            .any(|l| l.starts_with("console: http://127.0.0.1:")),
        "the URL is among the demo's first lines: {first_lines:?}"
    );
    assert_eq!(get_json(addr, "/api/info")["kind"], "job");

    // Drained and idle: every partition at lag 0, the top words read at
    // the last commit.
    let job = eventually("the demo drains its backlog", WAIT, || {
        let job = get_json(addr, "/api/job");
        let last = batches(&job).last()?.clone();
        let drained = last["partitions"].as_array()?.iter().all(|p| p["lag"] == 0);
        let committed = job["checkpoint"]["last_committed_batch"].as_u64()?;
        let results = &job["results"][0];
        (drained && results["refreshed_batch"].as_u64() == Some(committed) && committed >= 10)
            .then_some(job)
    });
    let lag_seen = batches(&job)
        .iter()
        .flat_map(|b| b["partitions"].as_array().cloned().unwrap_or_default())
        .any(|p| p["lag"].as_i64() > Some(0));
    assert!(lag_seen, "early batches had lag: {job}");
    // Lag in time is only estimated once a partition's end was seen to
    // move (this backlog was there before the job); caught up, it is 0.
    let last = batches(&job).last().unwrap();
    assert!(
        last["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .all(|p| p["lag_ms"] == 0.0),
        "{last}"
    );
    let phases = &batches(&job).last().unwrap()["phases"];
    for phase in ["plan_ms", "compute_ms", "sink_ms", "commit_ms"] {
        assert!(phases[phase].as_f64().is_some(), "{phase} in {phases}");
    }
    assert!(
        job["plan"].as_str().unwrap().contains("table:wordcount"),
        "the job's graph: {}",
        job["plan"]
    );
    assert!(
        !job["printed"].as_array().unwrap().is_empty(),
        "the demo's printed top words are kept"
    );

    // The page, as chromium renders it after its scripts ran.
    let url = format!("http://{addr}/");
    let dom = rendered_dom(&url, 6000, Some(&artifact("job.png")));
    assert_eq!(body_data(&dom, "kind").as_deref(), Some("job"), "{dom}");
    assert_eq!(body_data(&dom, "ready").as_deref(), Some("1"), "{dom}");
    let charts = tags_with(&dom, "div", "data-points");
    assert!(
        charts.len() >= 6,
        "the job page draws its charts: {charts:?}"
    );
    for id in ["chart-lag", "chart-records"] {
        let points = charts
            .iter()
            .filter(|c| c.get("id").is_some_and(|i| i.starts_with(id)))
            .filter_map(|c| c["data-points"].parse::<u64>().ok())
            .max();
        assert!(
            points.is_some_and(|p| p >= 10),
            "chart {id}… has the batches' points: {charts:?}"
        );
    }
    let lag_rows = tags_with(table(&dom, "lag"), "tr", "data-partition");
    assert_eq!(lag_rows.len(), 4, "lag per partition: {lag_rows:?}");
    assert!(
        lag_rows.iter().all(|r| r["data-lag"] == "0"),
        "{lag_rows:?}"
    );

    // The top-words table equals `sluice state scan --top 20`, read from
    // the checkpoint while the job runs.
    let shown: Vec<(String, String)> =
        tags_with(table(&dom, "results-wordcount"), "tr", "data-key")
            .into_iter()
            .map(|r| (r["data-key"].clone(), r["data-value"].clone()))
            .collect();
    let out = sluice()
        .args([
            "state",
            "scan",
            "--job",
            "wordcount",
            "--top",
            "20",
            "--checkpoint-dir",
        ])
        .arg(&checkpoint)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let scanned: Vec<(String, String)> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once('\t'))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    assert_eq!(scanned.len(), 12, "every word of the corpus: {scanned:?}");
    assert_eq!(shown, scanned);

    // /metrics, read by two independent parsers, says what the page says.
    let samples = scrape(addr);
    let committed = job["checkpoint"]["last_committed_batch"].as_u64().unwrap() as f64;
    let batches_total = sample(
        &samples,
        "sluice_job_batches_total",
        &[("job", "wordcount")],
    )
    .expect("sluice_job_batches_total");
    assert!(batches_total >= committed, "{batches_total} < {committed}");
    assert_eq!(
        sample(
            &samples,
            "sluice_job_input_rows_total",
            &[("job", "wordcount")]
        ),
        Some(20_000.0)
    );
    for p in 0..4 {
        assert_eq!(
            sample(
                &samples,
                "sluice_job_lag_records",
                &[("topic", "demo-wordcount"), ("partition", &p.to_string())]
            ),
            Some(0.0)
        );
    }
    assert!(
        sample(
            &samples,
            "sluice_job_state_keys",
            &[("name", "wordcount"), ("kind", "table")]
        )
        .is_some_and(|k| k >= 1.0)
    );
    assert!(
        sample(
            &samples,
            "sluice_job_batch_phase_duration_seconds_count",
            &[("phase", "commit")]
        )
        .is_some_and(|n| n >= committed)
    );
}

/// Connections that never finish their request, and ones that ask for
/// the job's JSON and never read it: the batch loop goes on regardless.
#[test]
fn console_refuses_bad_requests_and_stalled_browsers_never_slow_the_batch_loop() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let checkpoint = dir.path().join("checkpoint");
    let progress = dir.path().join("progress.jsonl");
    let mut demo = Demo::start(
        &data,
        &checkpoint,
        &[
            "--rate",
            "2000",
            "--interval",
            "100ms",
            "--ui-history",
            "5",
            "--ui",
            "127.0.0.1:0",
            "--progress-json",
            progress.to_str().unwrap(),
        ],
    );
    let addr = demo.console();

    let r = get(addr, "/no/such/page");
    assert_eq!(r.status, 404);
    assert!(r.body.contains("/no/such/page"), "{}", r.body);
    assert_eq!(get(addr, "/assets/../../etc/passwd").status, 404);
    assert_eq!(
        get(addr, "/api/broker").status,
        404,
        "a job has no broker page"
    );
    let post = send(
        addr,
        format!("POST /api/job HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}").as_bytes(),
    );
    assert_eq!(post.status, 405, "{}", post.body);
    let body = send(
        addr,
        format!("GET /api/job HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello").as_bytes(),
    );
    assert_eq!(body.status, 413, "{}", body.body);
    let huge = format!(
        "GET / HTTP/1.1\r\nHost: {addr}\r\nX-Huge: {}\r\nConnection: close\r\n\r\n",
        "a".repeat(1 << 20)
    );
    let r = send(addr, huge.as_bytes());
    assert!(
        matches!(r.status, 431 | 400),
        "a 1 MiB header is refused: {}",
        r.status
    );
    let r = send(addr, b"NOT HTTP AT ALL\r\n\r\n");
    assert_eq!(r.status, 400, "a malformed request is refused");

    // Twenty half-sent requests and three responses nobody reads.
    let mut stalled = Vec::new();
    for _ in 0..20 {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(b"GET /api/job HTTP/1.1\r\nHost: x\r\n")
            .unwrap();
        stalled.push(s);
    }
    for _ in 0..3 {
        let mut s = TcpStream::connect(addr).unwrap();
        for _ in 0..50 {
            s.write_all(b"GET /api/job HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
        }
        stalled.push(s);
    }
    let lines = |p: &Path| fs::read_to_string(p).map_or(0, |t| t.lines().count());
    let before = lines(&progress);
    eventually("batches go on while browsers stall", WAIT, || {
        (lines(&progress) >= before + 20).then_some(())
    });
    // The console still answers, and keeps only --ui-history batches.
    let job = get_json(addr, "/api/job");
    assert_eq!(batches(&job).len(), 5, "memory bounded by --ui-history");
    assert_eq!(job["history"], 5);
    drop(stalled);
    let _ = demo.child.kill();
}

#[test]
fn console_binds_loopback_unless_told_otherwise() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let checkpoint = dir.path().join("checkpoint");
    let mut demo = Demo::start(&data, &checkpoint, &["--rate", "0", "--max-batches", "3"]);
    let log = eventually("the demo says where its console is", WAIT, || {
        let log = demo.log();
        (log.contains("console: http://") || log.contains("running without a console"))
            .then_some(log)
    });
    if let Some(addr) = console_addr(&log) {
        assert!(addr.ip().is_loopback(), "default console address: {addr}");
        assert!((4040..4056).contains(&addr.port()), "Spark's ports: {addr}");
    } else {
        // Every default port was taken by other tests' processes: the job
        // runs anyway and says so.
        assert!(log.contains("4040"), "{log}");
    }
    let status = wait_timeout(&mut demo.child, WAIT).expect("the demo ends after 3 batches");
    assert!(status.success(), "{}", demo.log());

    // --no-ui serves nothing.
    let quiet = sluice_in(&data)
        .args([
            "demo",
            "wordcount",
            "--rate",
            "0",
            "--max-batches",
            "1",
            "--no-ui",
        ])
        .arg("--checkpoint-dir")
        .arg(&checkpoint)
        .output()
        .unwrap();
    assert!(quiet.status.success());
    assert!(!String::from_utf8_lossy(&quiet.stderr).contains("console:"));
}

/// A browser polling while the job ends: the job's database closes with
/// the job, never under a read of the console's (which once aborted the
/// process at exit).
#[test]
fn a_job_ends_cleanly_while_its_console_is_polled() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    for round in 0..3 {
        let checkpoint = dir.path().join(format!("checkpoint-{round}"));
        let mut demo = Demo::start(
            &data,
            &checkpoint,
            &[
                "--rate",
                "5000",
                "--interval",
                "50ms",
                "--max-batches",
                "30",
                "--ui",
                "127.0.0.1:0",
            ],
        );
        let addr = demo.console();
        let polling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let poller = {
            let polling = polling.clone();
            std::thread::spawn(move || {
                while polling.load(std::sync::atomic::Ordering::Relaxed) {
                    // The process may be gone: only the job's exit matters.
                    if let Ok(mut s) = TcpStream::connect(addr) {
                        let _ = s.write_all(
                            b"GET /api/job HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                        );
                        let _ = std::io::Read::read_to_end(&mut s, &mut Vec::new());
                    }
                }
            })
        };
        let status = wait_timeout(&mut demo.child, WAIT).expect("the demo ends after 30 batches");
        polling.store(false, std::sync::atomic::Ordering::Relaxed);
        let _ = poller.join();
        assert!(status.success(), "round {round}: {status}\n{}", demo.log());
    }
}
