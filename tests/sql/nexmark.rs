//! Nexmark end to end with the real binary: `sluice nexmark generate`
//! loads 20,000 events, then `jobs/nexmark/q0.sql`, `q1.sql` and `q2.sql`
//! run over them with `sluice run --until-caught-up`. Each query's rows
//! (through a console sink in place of the blackhole) must equal the query
//! computed here from the generator itself; the job files as they are
//! (blackhole sink) must read every bid and count no bad record.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use sluice::nexmark::{Event, EventKind, Generator, NexmarkConfig};

use crate::common::{self, Run, sluice};
use crate::common_sql;

const EVENTS: u64 = 20_000;
const SEED: u64 = 7;

fn jobs() -> std::path::PathBuf {
    common::repo("jobs/nexmark")
}

/// `sluice nexmark generate` with the test's seed.
fn generate(data: &Path, extra: &[&str]) -> Command {
    let mut c = sluice();
    c.args([
        "nexmark",
        "generate",
        "--seed",
        &SEED.to_string(),
        "--data-dir",
    ])
    .arg(data)
    .args(extra);
    c
}

/// Runs a job file to the end of the topics, returning stdout.
fn run_job(file: &Path, data: &Path, checkpoint: &Path, extra: &[&str]) -> String {
    common::sluice_run(file, data, checkpoint)
        .arg("--quiet")
        .args(extra)
        .ok()
}

/// The rows of every table the console sink printed, as trimmed cells,
/// without the header rows.
fn console_rows(stdout: &str, header: &[&str]) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for cells in common_sql::console_cells(stdout) {
        if cells.iter().map(String::as_str).eq(header.iter().copied()) {
            continue;
        }
        assert_eq!(cells.len(), header.len(), "{cells:?}");
        rows.push(cells);
    }
    rows
}

/// A printed `Timestamp(Millisecond)` cell (`2015-07-15T00:00:00.001`, or
/// without the fraction when it is zero) → ms since the epoch.
fn parse_ts(cell: &str) -> i64 {
    let t = humantime::parse_rfc3339_weak(cell).unwrap_or_else(|e| panic!("{cell:?}: {e}"));
    t.duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

/// The job file with a console sink instead of the blackhole.
fn with_console_sink(query: &str, dir: &Path) -> std::path::PathBuf {
    let text = std::fs::read_to_string(jobs().join(format!("{query}.sql"))).unwrap();
    assert_eq!(text.matches("type = 'blackhole'").count(), 1, "{query}");
    let path = dir.join(format!("{query}.sql"));
    std::fs::write(
        &path,
        text.replace("type = 'blackhole'", "type = 'console'"),
    )
    .unwrap();
    path
}

/// Rows as sorted keys → counts, so that batch order does not matter.
fn multiset<T: Ord>(rows: impl IntoIterator<Item = T>) -> BTreeMap<T, usize> {
    let mut m = BTreeMap::new();
    for r in rows {
        *m.entry(r).or_default() += 1;
    }
    m
}

#[test]
fn nexmark_queries_over_generated_events_equal_the_generator() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");

    // Load: the summary counts 1 : 3 : 46 per 50 events.
    let stdout = generate(&data, &["--events", &EVENTS.to_string()]).ok();
    assert!(
        stdout.contains("Created topics person, auction, bid"),
        "{stdout}"
    );
    for (topic, n) in [("person", "400"), ("auction", "1,200"), ("bid", "18,400")] {
        assert!(
            stdout
                .lines()
                .any(|l| l.split_whitespace().take(2).eq([topic, n])),
            "{topic} {n} in:\n{stdout}"
        );
    }
    // Loading again is refused, naming the topic and the way out.
    let err = generate(&data, &["--events", "10"]).fails();
    assert!(
        err.contains("topic person already holds 400 records"),
        "{err}"
    );
    assert!(err.contains("--append"), "{err}");

    let generator = Generator::new(NexmarkConfig {
        seed: SEED,
        ..NexmarkConfig::default()
    });
    let bids: Vec<_> = (0..EVENTS)
        .filter(|&n| EventKind::of(n) == EventKind::Bid)
        .map(|n| match generator.event(n) {
            Event::Bid(b) => b,
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(bids.len(), 18_400);

    // q0: every bid, unchanged.
    let file = with_console_sink("q0", dir.path());
    let out = run_job(&file, &data, &dir.path().join("cp-q0"), &[]);
    let header = ["auction", "bidder", "price", "date_time", "extra"];
    let got = multiset(console_rows(&out, &header).into_iter().map(|r| {
        (
            r[0].parse::<i64>().unwrap(),
            r[1].parse::<i64>().unwrap(),
            r[2].parse::<i64>().unwrap(),
            parse_ts(&r[3]),
            r[4].clone(),
        )
    }));
    let expected = multiset(
        bids.iter()
            .map(|b| (b.auction, b.bidder, b.price, b.date_time, b.extra.clone())),
    );
    assert_eq!(got.values().sum::<usize>(), 18_400);
    assert!(got == expected, "q0 rows differ from the generated bids");

    // q1: prices in euros.
    let file = with_console_sink("q1", dir.path());
    let out = run_job(&file, &data, &dir.path().join("cp-q1"), &[]);
    let rows = console_rows(&out, &header);
    assert_eq!(rows.len(), 18_400);
    let got = multiset(rows.iter().map(|r| {
        let euros: f64 = r[2].parse().unwrap();
        (
            r[0].parse::<i64>().unwrap(),
            r[1].parse::<i64>().unwrap(),
            euros.to_bits(),
            r[4].clone(),
        )
    }));
    let expected = multiset(bids.iter().map(|b| {
        (
            b.auction,
            b.bidder,
            (0.908 * b.price as f64).to_bits(),
            b.extra.clone(),
        )
    }));
    assert!(
        got == expected,
        "q1 rows differ from 0.908 × the generated prices"
    );

    // q2: the bids on every 123rd auction.
    let file = with_console_sink("q2", dir.path());
    let out = run_job(&file, &data, &dir.path().join("cp-q2"), &[]);
    let got = multiset(
        console_rows(&out, &["auction", "price"])
            .iter()
            .map(|r| (r[0].parse::<i64>().unwrap(), r[1].parse::<i64>().unwrap())),
    );
    let expected = multiset(
        bids.iter()
            .filter(|b| b.auction % 123 == 0)
            .map(|b| (b.auction, b.price)),
    );
    assert!(expected.values().sum::<usize>() > 20, "{expected:?}");
    assert_eq!(got, expected);

    // The job files as they are: every bid read, none undecodable.
    for query in ["q0", "q1", "q2"] {
        let progress = dir.path().join(format!("{query}.progress.jsonl"));
        let file = jobs().join(format!("{query}.sql"));
        let stdout = run_job(
            &file,
            &data,
            &dir.path().join(format!("cp-file-{query}")),
            &["--progress-json", progress.to_str().unwrap()],
        );
        assert!(stdout.is_empty(), "a blackhole prints nothing: {stdout}");
        let (mut rows, mut bad) = (0u64, 0u64);
        for line in std::fs::read_to_string(&progress).unwrap().lines() {
            let p: serde_json::Value = serde_json::from_str(line).unwrap();
            rows += p["input_rows"].as_u64().unwrap();
            bad += p["counters"]["bad records"].as_u64().unwrap_or(0);
        }
        assert_eq!((rows, bad), (18_400, 0), "{query}");
    }
}

#[test]
fn append_continues_the_stream_and_checks_the_parameters() {
    let dir = tempfile::tempdir().unwrap();
    let (whole, pieces) = (dir.path().join("whole"), dir.path().join("pieces"));
    generate(&whole, &["--events", "3000", "--partitions", "3"]).ok();
    generate(&pieces, &["--events", "1234", "--partitions", "3"]).ok();
    let out = generate(&pieces, &["--events", "1766", "--append"]).ok();
    assert!(out.contains("Events 1234..3000"), "{out}");

    // Another seed cannot continue these topics.
    let other = sluice()
        .args([
            "nexmark",
            "generate",
            "--events",
            "5",
            "--append",
            "--seed",
            "8",
            "--data-dir",
        ])
        .arg(&pieces)
        .fails();
    assert!(other.contains("--seed, --rate and --base-time"), "{other}");

    // Byte for byte the same records, as `sluice consume` prints them.
    for kind in EventKind::ALL {
        let consume = |data: &Path| {
            sluice()
                .args([
                    "consume",
                    kind.topic(),
                    "--from-beginning",
                    "--print-partition",
                ])
                .args(["--print-offset", "--data-dir"])
                .arg(data)
                .ok()
        };
        let (a, b) = (consume(&whole), consume(&pieces));
        assert_eq!(a.lines().count() as u64, kind.count_in(3000), "{kind:?}");
        assert!(a == b, "{kind:?} records differ after --append");
    }
}

#[test]
fn json_streams_decode_only_the_fields_each_query_uses() {
    // Regression: a stream read through a window function lost its
    // projection and decoded every field (q5 40 % slower).
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    generate(&data, &["--events", "100"]).ok();
    for (query, decoded) in [
        ("q5", "decoding auction, date_time)"),
        ("q7", "decoding auction, bidder, price, date_time, extra)"),
        ("q2", "decoding auction, price)"),
    ] {
        let out = sluice()
            .arg("explain")
            .arg(jobs().join(format!("{query}.sql")))
            .arg("--data-dir")
            .arg(&data)
            .ok();
        assert!(out.contains(decoded), "{query}:\n{out}");
    }
}
