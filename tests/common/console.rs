//! Talking to a process's web console as outsiders do: raw HTTP/1.1 over
//! TCP, a real headless browser (Debian's chromium) for the rendered page,
//! and independent checkers of `/metrics` (the `prometheus_client` Python
//! package's OpenMetrics parser and `promtool check metrics`).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use super::broker::run_bounded;

const DEPS_HINT: &str = "run `bash .ci/deps` to install the test clients";

/// The console address in a `console: http://HOST:PORT/ …` line of `log`.
pub fn console_addr(log: &str) -> Option<SocketAddr> {
    let rest = log.split("console: http://").nth(1)?;
    rest.split('/').next()?.parse().ok()
}

/// One HTTP response: status code, headers (lower-case names), body.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

/// Sends `request` (raw bytes) and reads the whole response (the server
/// closes: requests say `Connection: close`).
pub fn send(addr: SocketAddr, request: &[u8]) -> Response {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .unwrap_or_else(|e| panic!("cannot connect to the console at {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream
        .set_write_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    // A server may answer and close before reading all of a huge request.
    let _ = stream.write_all(request);
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status line in {text:?}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    Response {
        status,
        headers,
        body: body.to_owned(),
    }
}

pub fn get(addr: SocketAddr, path: &str) -> Response {
    get_with(addr, path, "")
}

/// `GET path` with extra header lines (each ending in `\r\n`).
pub fn get_with(addr: SocketAddr, path: &str, headers: &str) -> Response {
    send(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n{headers}Connection: close\r\n\r\n")
            .as_bytes(),
    )
}

/// `/metrics` in both formats, each checked by an independent tool (see
/// [`parse_metrics`]); the samples of the OpenMetrics one.
pub fn scrape(addr: SocketAddr) -> Vec<Sample> {
    let open = get_with(
        addr,
        "/metrics",
        "Accept: application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5\r\n",
    );
    assert_eq!(open.status, 200, "{}", open.body);
    assert!(
        open.headers["content-type"].starts_with("application/openmetrics-text"),
        "{:?}",
        open.headers
    );
    let classic = get(addr, "/metrics");
    assert_eq!(classic.status, 200, "{}", classic.body);
    assert!(
        classic.headers["content-type"].starts_with("text/plain; version=0.0.4"),
        "{:?}",
        classic.headers
    );
    parse_metrics(&open.body, &classic.body)
}

/// `GET path`, which must answer 200 with JSON.
pub fn get_json(addr: SocketAddr, path: &str) -> serde_json::Value {
    let r = get(addr, path);
    assert_eq!(r.status, 200, "GET {path}: {}", r.body);
    serde_json::from_str(&r.body)
        .unwrap_or_else(|e| panic!("GET {path} is not JSON ({e}): {}", r.body))
}

/// The path of Debian's `chromium`; FAILS (never skips) when missing.
pub fn require_chromium() -> PathBuf {
    for p in ["/usr/bin/chromium", "/usr/bin/chromium-browser"] {
        if Path::new(p).is_file() {
            return PathBuf::from(p);
        }
    }
    panic!("chromium is not installed (the Debian package `chromium`): {DEPS_HINT}")
}

/// Loads `url` in headless chromium, lets its scripts run for
/// `budget_ms` of virtual time (polls and renders included), and returns
/// the DOM as rendered; with `screenshot`, also writes a PNG of the page.
pub fn rendered_dom(url: &str, budget_ms: u32, screenshot: Option<&Path>) -> String {
    let chromium = require_chromium();
    let profile = tempfile::tempdir().expect("browser profile directory");
    let base = |c: &mut Command| {
        c.arg("--headless")
            .arg("--no-sandbox")
            .arg("--disable-gpu")
            .arg("--disable-dev-shm-usage")
            .arg("--no-first-run")
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(format!("--virtual-time-budget={budget_ms}"));
    };
    let mut dump = Command::new(&chromium);
    base(&mut dump);
    dump.arg("--dump-dom").arg(url);
    let out = run_bounded(&mut dump, Duration::from_secs(120));
    assert!(
        out.status.success(),
        "chromium failed on {url}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    if let Some(path) = screenshot {
        let mut shot = Command::new(&chromium);
        base(&mut shot);
        shot.arg("--hide-scrollbars")
            .arg("--window-size=1400,2200")
            .arg(format!("--screenshot={}", path.display()))
            .arg(url);
        let out = run_bounded(&mut shot, Duration::from_secs(120));
        assert!(
            out.status.success() && path.is_file(),
            "chromium could not take a screenshot of {url}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!("screenshot of {url}: {}", path.display());
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Where tests leave screenshots (kept after the run).
pub fn artifact(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot directory");
    dir.join(name)
}

/// The attributes of every `<tag …>` start tag of `html` that has
/// attribute `marker` (e.g. `data-key`), in document order.
pub fn tags_with(html: &str, tag: &str, marker: &str) -> Vec<BTreeMap<String, String>> {
    let open = format!("<{tag} ");
    html.split(&open)
        .skip(1)
        .filter_map(|rest| {
            let inside = rest.split('>').next()?;
            let attrs = attributes(inside);
            attrs.contains_key(marker).then_some(attrs)
        })
        .collect()
}

/// The text between `<table id="ID"` and its `</table>`.
pub fn table<'a>(html: &'a str, id: &str) -> &'a str {
    let start = html
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no element with id {id:?} in the rendered page"));
    let rest = &html[start..];
    &rest[..rest.find("</table>").unwrap_or(rest.len())]
}

fn attributes(inside: &str) -> BTreeMap<String, String> {
    let mut attrs = BTreeMap::new();
    let mut rest = inside;
    while let Some(eq) = rest.find("=\"") {
        let name = rest[..eq]
            .rsplit(|c: char| c.is_whitespace())
            .next()
            .unwrap_or("")
            .to_owned();
        let after = &rest[eq + 2..];
        let end = after.find('"').unwrap_or(after.len());
        let value = after[..end]
            .replace("&quot;", "\"")
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&amp;", "&");
        attrs.insert(name, value);
        rest = &after[(end + 1).min(after.len())..];
    }
    attrs
}

/// The value of `<body data-NAME="…">` in a rendered page.
pub fn body_data(html: &str, name: &str) -> Option<String> {
    tags_with(html, "body", &format!("data-{name}"))
        .first()
        .and_then(|a| a.get(&format!("data-{name}")).cloned())
}

/// One sample of `/metrics` as the independent parser read it.
#[derive(Debug, Clone)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

const PARSE_METRICS: &str = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        print(json.dumps({"name": s.name, "labels": s.labels, "value": s.value}))
"#;

/// OpenMetrics `text` parsed by `prometheus_client`'s OpenMetrics parser
/// (strict: it fails on anything the format does not allow) and the
/// classic text checked by `promtool check metrics`; FAILS when either
/// rejects its input.
pub fn parse_metrics(text: &str, classic: &str) -> Vec<Sample> {
    let parsed = pipe(Command::new("python3").args(["-c", PARSE_METRICS]), text);
    assert!(
        parsed.status.success(),
        "prometheus_client rejects /metrics: {}\n{text}",
        String::from_utf8_lossy(&parsed.stderr)
    );
    let promtool = pipe(Command::new("promtool").args(["check", "metrics"]), classic);
    assert!(
        promtool.status.success(),
        "promtool check metrics rejects /metrics: {}{}\n{classic}",
        String::from_utf8_lossy(&promtool.stdout),
        String::from_utf8_lossy(&promtool.stderr)
    );
    String::from_utf8_lossy(&parsed.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            Sample {
                name: v["name"].as_str().unwrap_or_default().to_owned(),
                labels: v["labels"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                            .collect()
                    })
                    .unwrap_or_default(),
                value: v["value"].as_f64().unwrap_or(f64::NAN),
            }
        })
        .collect()
}

fn pipe(cmd: &mut Command, input: &str) -> std::process::Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?} ({e}): {DEPS_HINT}"));
    let mut stdin = child.stdin.take().expect("stdin");
    let input = input.to_owned();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().expect("wait for the checker");
    let _ = writer.join();
    out
}

/// The value of the sample `name` whose labels include `labels`.
pub fn sample(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|s| s.value)
}
