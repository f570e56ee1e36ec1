//! The real `sluice broker` binary as a test fixture: started on a free
//! loopback port over a temporary data directory, its port learnt from the
//! `sluice broker listening on 127.0.0.1:PORT` line it prints on stdout, its
//! stderr kept in a file for diagnostics (printed when a test fails), and
//! stopped on drop (SIGTERM, then SIGKILL if it does not exit in time).
//!
//! Also: restarting on the same data directory, a graceful stop that
//! asserts exit code 0, bounded polling, and the checks that the external
//! clients (kcat, kafka-python) are installed.

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// How long a broker may take to print its listening line.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a SIGTERM'd broker may take to exit before it is SIGKILLed
/// (its own drain of in-flight requests is bounded at 30 s).
const STOP_TIMEOUT: Duration = Duration::from_secs(35);

/// Flags every test broker gets, so groups rebalance quickly and the
/// metrics line shows up in the diagnostics.
const FAST_FLAGS: [&str; 6] = [
    "--group-initial-rebalance-delay",
    "100ms",
    "--group-min-session-timeout",
    "1s",
    "--metrics-interval",
    "1s",
];

/// How a test broker is started.
#[derive(Debug, Clone, Default)]
pub struct BrokerOpts {
    pub auto_create_topics: bool,
    /// Further `sluice broker` flags, e.g. `["--max-request-bytes", "1MiB"]`.
    pub extra_args: Vec<String>,
}

impl BrokerOpts {
    pub fn auto_create() -> BrokerOpts {
        BrokerOpts {
            auto_create_topics: true,
            ..Default::default()
        }
    }

    pub fn arg(mut self, a: impl Into<String>) -> BrokerOpts {
        self.extra_args.push(a.into());
        self
    }
}

/// A running `sluice broker` process over its own temporary data directory.
pub struct TestBroker {
    child: Option<Child>,
    addr: SocketAddr,
    opts: BrokerOpts,
    /// Holds the data directory and the stderr files; removed on drop.
    root: tempfile::TempDir,
    /// One stderr file per start (restarts get their own).
    stderr_paths: Vec<PathBuf>,
}

impl TestBroker {
    /// Starts a broker without topic auto-creation.
    pub fn start() -> TestBroker {
        TestBroker::start_with(BrokerOpts::default())
    }

    pub fn start_with(opts: BrokerOpts) -> TestBroker {
        let root = tempfile::Builder::new()
            .prefix("sluice-broker-test")
            .tempdir()
            .expect("create a temporary directory");
        fs::create_dir_all(root.path().join("data")).expect("create the data directory");
        let mut broker = TestBroker {
            child: None,
            addr: "127.0.0.1:0".parse().unwrap(),
            opts,
            root,
            stderr_paths: Vec::new(),
        };
        broker.spawn("127.0.0.1:0");
        broker
    }

    /// `127.0.0.1:PORT` where the broker listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The address as a `bootstrap.servers` value.
    pub fn bootstrap(&self) -> String {
        self.addr.to_string()
    }

    pub fn data_dir(&self) -> PathBuf {
        self.root.path().join("data")
    }

    /// A scratch directory that lives as long as the broker (for input files).
    pub fn scratch(&self) -> &Path {
        self.root.path()
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Everything the current (latest) broker process wrote to stderr.
    pub fn log(&self) -> String {
        self.stderr_paths
            .last()
            .map(|p| fs::read_to_string(p).unwrap_or_default())
            .unwrap_or_default()
    }

    /// Everything every process of this fixture wrote to stderr, in order.
    pub fn all_logs(&self) -> String {
        let mut out = String::new();
        for (i, p) in self.stderr_paths.iter().enumerate() {
            out.push_str(&format!("---- broker start #{} stderr ----\n", i + 1));
            out.push_str(&fs::read_to_string(p).unwrap_or_default());
        }
        out
    }

    /// Polls the broker's stderr until a line contains `needle` (bounded).
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log();
            if let Some(line) = log.lines().find(|l| l.contains(needle)) {
                return line.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "the broker did not log {needle:?} within {timeout:?}; its stderr:\n{log}"
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Panics if the broker process has exited.
    pub fn assert_running(&mut self) {
        let child = self.child.as_mut().expect("the broker is not started");
        if let Some(status) = child.try_wait().expect("poll the broker process") {
            panic!(
                "the broker exited unexpectedly ({status}); its stderr:\n{}",
                self.log()
            );
        }
    }

    /// Stops the broker with SIGTERM and asserts that it exits with code 0
    /// and logs its clean stop.
    /// Creates `topic` with `partitions` partitions through `sluice topic
    /// create --bootstrap`.
    pub fn create_topic(&self, topic: &str, partitions: i32) {
        let status = super::sluice()
            .args([
                "topic",
                "create",
                topic,
                "--partitions",
                &partitions.to_string(),
            ])
            .arg("--bootstrap")
            .arg(self.bootstrap())
            .status()
            .expect("run sluice topic create");
        assert!(status.success(), "topic create failed:\n{}", self.log());
    }

    pub fn stop_gracefully(&mut self) {
        let status = self.stop();
        assert!(
            status.success(),
            "SIGTERM must stop the broker with exit code 0, got {status}; its stderr:\n{}",
            self.log()
        );
        let log = self.log();
        assert!(
            log.contains("broker stopped cleanly"),
            "a graceful stop logs 'broker stopped cleanly'; its stderr:\n{log}"
        );
    }

    /// Sends SIGTERM and waits (bounded) for the exit, SIGKILLing the
    /// process if it does not exit in time (and then panicking).
    pub fn stop(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("the broker is not running");
        signal(&child, libc::SIGTERM);
        match wait_timeout(&mut child, STOP_TIMEOUT) {
            Some(status) => status,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the broker did not exit within {STOP_TIMEOUT:?} of SIGTERM (killed); its stderr:\n{}",
                    self.log()
                );
            }
        }
    }

    /// Kills the broker with SIGKILL (no chance to flush or close).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops the broker gracefully (asserting exit 0) and starts it again on
    /// the same data directory, on the same port when that port is still
    /// free (else on a new one: use [`TestBroker::addr`] afterwards).
    pub fn restart(&mut self) {
        if self.child.is_some() {
            self.stop_gracefully();
        }
        let same = format!("127.0.0.1:{}", self.addr.port());
        if !self.try_spawn(&same) {
            self.spawn("127.0.0.1:0");
        }
    }

    fn command(&self, listen: &str) -> Command {
        let mut c = super::sluice();
        c.arg("broker")
            .arg("--listen")
            .arg(listen)
            .arg("--data-dir")
            .arg(self.data_dir());
        if self.opts.auto_create_topics {
            c.arg("--auto-create-topics");
        }
        c.args(FAST_FLAGS).args(&self.opts.extra_args);
        c
    }

    fn spawn(&mut self, listen: &str) {
        assert!(
            self.try_spawn(listen),
            "the broker did not start; its stderr:\n{}",
            self.log()
        );
    }

    /// Starts the process and waits for its listening line; false when it
    /// exited before printing it (e.g. the port was taken).
    fn try_spawn(&mut self, listen: &str) -> bool {
        let stderr_path = self
            .root
            .path()
            .join(format!("broker-{}.stderr", self.stderr_paths.len() + 1));
        let stderr = fs::File::create(&stderr_path).expect("create the stderr file");
        self.stderr_paths.push(stderr_path);
        let mut child = self
            .command(listen)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn sluice broker");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel::<String>();
        // Reads stdout to its end, so the broker never blocks on a full pipe.
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                // Nobody listens after the first line: keep draining.
                let _ = tx.send(line);
            }
        });
        let deadline = Instant::now() + START_TIMEOUT;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left.min(Duration::from_millis(100))) {
                Ok(line) => {
                    if let Some(addr) = line.strip_prefix("sluice broker listening on ") {
                        self.addr = addr.trim().parse().unwrap_or_else(|e| {
                            panic!("cannot parse the broker's address from {line:?}: {e}")
                        });
                        self.child = Some(child);
                        return true;
                    }
                    seen.push(line);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    // stdout closed: the process is exiting.
                    let status = wait_timeout(&mut child, Duration::from_secs(10));
                    if status.is_none() {
                        let _ = child.kill();
                        let _ = child.wait();
                    }
                    eprintln!(
                        "sluice broker --listen {listen} exited ({status:?}) before listening; stdout: {seen:?}; stderr:\n{}",
                        self.log()
                    );
                    return false;
                }
            }
            if let Ok(Some(status)) = child.try_wait() {
                eprintln!(
                    "sluice broker --listen {listen} exited ({status}) before listening; stdout: {seen:?}; stderr:\n{}",
                    self.log()
                );
                return false;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "sluice broker did not print 'sluice broker listening on ...' within {START_TIMEOUT:?} (killed it); stdout: {seen:?}; stderr:\n{}",
                    self.log()
                );
            }
        }
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, libc::SIGTERM);
            if wait_timeout(&mut child, Duration::from_secs(10)).is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        if thread::panicking() {
            // Shown by the test harness next to the failure.
            eprintln!("{}", self.all_logs());
        }
    }
}

fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: kill(2) on the pid of a child this fixture spawned and has
    // not yet reaped, so the pid cannot have been reused.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, sig) };
    assert!(
        rc == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH),
        "kill({}, {sig}) failed: {}",
        child.id(),
        std::io::Error::last_os_error()
    );
}

/// Waits for a child to exit, at most `timeout`.
pub fn wait_timeout(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() >= deadline => return None,
            Ok(None) => thread::sleep(Duration::from_millis(20)),
            Err(e) => panic!("waiting for pid {}: {e}", child.id()),
        }
    }
}

/// Polls `f` until it returns `Some`, at most `timeout`; panics with `what`.
pub fn eventually<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?}: {what}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

const DEPS_HINT: &str = "run `bash .ci/deps` to install the test clients";

/// The path of `kcat`; FAILS (never skips) when it is not installed.
pub fn require_kcat() -> PathBuf {
    for dir in ["/usr/bin", "/usr/local/bin", "/bin"] {
        let p = Path::new(dir).join("kcat");
        if p.is_file() {
            return p;
        }
    }
    let found = Command::new("sh")
        .args(["-c", "command -v kcat"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty());
    match found {
        Some(p) => PathBuf::from(p),
        None => panic!("kcat is not installed (the Debian package `kcat`): {DEPS_HINT}"),
    }
}

/// Checks that `python3` can import kafka-python; FAILS (never skips) when not.
pub fn require_kafka_python() {
    let out = Command::new("python3")
        .args(["-c", "import kafka; print(kafka.__version__)"])
        .output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "python3 cannot import kafka-python ({}): {DEPS_HINT}",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => panic!("python3 is not available ({e}): {DEPS_HINT}"),
    }
}

/// Where `.ci/deps` installs KafkaJS (`SLUICE_NODE_DIR`, default
/// `~/.cache/sluice-node`): its `node_modules`.
pub fn kafkajs_modules() -> PathBuf {
    let dir = std::env::var_os("SLUICE_NODE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/sluice-node")))
        .unwrap_or_else(|| PathBuf::from(".cache/sluice-node"));
    dir.join("node_modules")
}

/// Checks that `node` can load KafkaJS; FAILS (never skips) when not.
pub fn require_kafkajs() {
    let out = Command::new("node")
        .env("NODE_PATH", kafkajs_modules())
        .args(["-e", "require('kafkajs')"])
        .output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "node cannot load kafkajs from {} ({}): {DEPS_HINT}",
            kafkajs_modules().display(),
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => panic!("node is not available ({e}): {DEPS_HINT}"),
    }
}

/// `tests/clients/NAME`, the kafka-python and KafkaJS scripts.
pub fn client_script(name: &str) -> PathBuf {
    super::repo("tests/clients").join(name)
}

/// Runs a command with a time limit, capturing its output; panics when it
/// does not finish in time (after killing it).
pub fn run_bounded(cmd: &mut Command, timeout: Duration) -> std::process::Output {
    let what = format!("{cmd:?}");
    let dir = tempfile::tempdir().expect("temporary directory");
    let out_path = dir.path().join("stdout");
    let err_path = dir.path().join("stderr");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out_path).expect("stdout file"))
        .stderr(fs::File::create(&err_path).expect("stderr file"))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let status = match wait_timeout(&mut child, timeout) {
        Some(s) => s,
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what} did not finish within {timeout:?} (killed); stdout:\n{}\nstderr:\n{}",
                fs::read_to_string(&out_path).unwrap_or_default(),
                fs::read_to_string(&err_path).unwrap_or_default()
            );
        }
    };
    std::process::Output {
        status,
        stdout: fs::read(&out_path).unwrap_or_default(),
        stderr: fs::read(&err_path).unwrap_or_default(),
    }
}
