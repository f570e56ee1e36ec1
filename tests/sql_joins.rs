//! Joins in SQL jobs: a stream joined with a static table equals the same
//! join run once as a batch query over all the input.

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use datafusion::arrow::array::AsArray;
use datafusion::arrow::datatypes::DataType;
use datafusion::prelude::{CsvReadOptions, SessionContext};
use sluice::log::{LogStore, TopicConfig};
use sluice::producer::{BatchBuilder, Compression};

fn sluice(dir: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .current_dir(dir)
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "sluice {args:?}: {stderr}");
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn enrich_clicks_job_equals_a_batch_join() {
    let repo = env!("CARGO_MANIFEST_DIR");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    // Users 0..120: 100..119 are not in the table (inner join drops them).
    let clicks: Vec<(i64, String)> = (0..2_000i64)
        .map(|i| ((i * 37) % 120, format!("/p{}", i % 9)))
        .collect();
    {
        let store = LogStore::open(&data, common::quiet()).unwrap();
        let topic = store
            .create_topic("clicks", 3, TopicConfig::default())
            .unwrap();
        for (i, chunk) in clicks.chunks(25).enumerate() {
            let mut b = BatchBuilder::new(Compression::None);
            for (user, url) in chunk {
                let v = format!(
                    r#"{{"user_id": {user}, "url": "{url}", "ts": "2026-11-21 10:00:00"}}"#
                );
                b.push(None, v.as_bytes(), 1);
            }
            let mut bytes = b.finish().unwrap();
            topic
                .partition((i % 3) as i32)
                .unwrap()
                .append(&mut bytes)
                .unwrap();
        }
    }
    for batch in ["7", "10000"] {
        let cp = dir.path().join(format!("cp-{batch}"));
        sluice(
            std::path::Path::new(repo),
            &[
                "run",
                "jobs/enrich_clicks.sql",
                "--data-dir",
                data.to_str().unwrap(),
                "--checkpoint-dir",
                cp.to_str().unwrap(),
                "--until-caught-up",
                "--interval",
                "1ms",
                "--max-records-per-batch",
                batch,
            ],
        );
        let table = sluice(
            std::path::Path::new(repo),
            &[
                "state",
                "scan",
                "--job",
                "enrich_clicks",
                "--table",
                "clicks_by_country",
                "--checkpoint-dir",
                cp.to_str().unwrap(),
            ],
        );
        // Values are (clicks, users); compare clicks per country.
        let got: BTreeMap<String, i64> = table
            .lines()
            .map(|l| {
                let (k, v) = l.split_once('\t').unwrap();
                let clicks = v.trim_start_matches('(').split(',').next().unwrap();
                (k.to_string(), clicks.trim().parse().unwrap())
            })
            .collect();
        // The same join, once, in DataFusion.
        let expected: BTreeMap<String, i64> = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(async {
                let ctx = SessionContext::new();
                ctx.register_csv(
                    "users",
                    &format!("{repo}/jobs/data/users.csv"),
                    CsvReadOptions::new(),
                )
                .await
                .unwrap();
                let values: Vec<String> = clicks
                    .iter()
                    .map(|(u, url)| format!("({u}, '{url}')"))
                    .collect();
                let sql = format!(
                    "SELECT u.country, count(*) FROM (VALUES {}) AS c(user_id, url) JOIN users u ON c.user_id = u.user_id GROUP BY u.country",
                    values.join(",")
                );
                let mut out = BTreeMap::new();
                for b in ctx.sql(&sql).await.unwrap().collect().await.unwrap() {
                    let k = datafusion::arrow::compute::cast(b.column(0), &DataType::Utf8).unwrap();
                    let k = k.as_string::<i32>();
                    let n = b
                        .column(1)
                        .as_primitive::<datafusion::arrow::datatypes::Int64Type>();
                    for i in 0..b.num_rows() {
                        out.insert(k.value(i).to_string(), n.value(i));
                    }
                }
                out
            });
        assert_eq!(got.len(), 6);
        assert_eq!(got, expected, "batch size {batch}");
    }
}
