//! A job's code changes between runs: offsets and compatible state carry
//! over; an incompatible state type is refused with the documented error,
//! and `reset_state` restarts state while keeping offsets.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sluice::checkpoint::Checkpoint;
use sluice::driver::{DriverError, JobConfig, StreamingContext};
use sluice::log::{LogStore, StoreOptions, TopicConfig};
use sluice::plan::{Emitter, State};
use sluice::sink::table::TableReader;

use crate::common;

fn append(store: &LogStore, words: &[&str]) {
    let topic = store.topic("events").unwrap();
    for (i, w) in words.iter().enumerate() {
        common::append_values(&topic, (i % 2) as i32, [format!("  {w} ")], 1000 + i as i64);
    }
}

fn config(checkpoint: &Path, reset_state: bool) -> JobConfig {
    let mut c = JobConfig::new("evolving", Duration::from_millis(10));
    c.checkpoint_dir = Some(checkpoint.to_path_buf());
    c.until_caught_up = true;
    c.reset_state = reset_state;
    c.progress.lines = false;
    c
}

/// Version 1 counts each word once; version 2 (a changed map function,
/// same operator names) counts each new occurrence twice.
fn run_counting_job(
    store: &Arc<LogStore>,
    checkpoint: &Path,
    weight: u64,
    trim: bool,
) -> Result<(), DriverError> {
    let ctx = StreamingContext::new(config(checkpoint, false));
    let events = ctx.embedded(store.clone(), "events").unwrap();
    let words = events.map(move |r| {
        let text = if trim {
            r.value_str().trim()
        } else {
            r.value_str().trim_start().trim_end()
        };
        (text.to_owned(), weight)
    });
    words
        .map_with_state(
            None,
            |word, n: Option<u64>, state: &mut State<u64>, out: &mut Emitter<(String, u64)>| {
                let total = state.get().copied().unwrap_or(0) + n.unwrap_or(0);
                state.update(total);
                out.push((word, total));
            },
        )
        .named("totals")
        .save_to_table("totals");
    ctx.run().map(|_| ())
}

fn table(checkpoint: &Path) -> Vec<(String, String)> {
    let cp = Checkpoint::open_read_only(checkpoint, "evolving").unwrap();
    let reader = TableReader::open(&cp, "totals").unwrap();
    let mut rows = Vec::new();
    reader
        .scan(None, |k, v| {
            rows.push((k.text, v.text));
            true
        })
        .unwrap();
    rows
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[test]
fn code_change_keeps_offsets_and_state_and_refuses_incompatible_state() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        LogStore::open(
            dir.path().join("data"),
            StoreOptions {
                background: false,
                ..Default::default()
            },
        )
        .unwrap(),
    );
    store
        .create_topic("events", 2, TopicConfig::default())
        .unwrap();
    let checkpoint = dir.path().join("checkpoint");

    append(&store, &["a", "b", "a"]);
    run_counting_job(&store, &checkpoint, 1, false).unwrap();
    assert_eq!(table(&checkpoint), pairs(&[("a", "2"), ("b", "1")]));

    // New code: a different map function; old records are not re-read
    // (offsets kept) and the totals continue from the old state.
    append(&store, &["a", "c"]);
    run_counting_job(&store, &checkpoint, 2, true).unwrap();
    assert_eq!(
        table(&checkpoint),
        pairs(&[("a", "4"), ("b", "1"), ("c", "2")])
    );

    // Incompatible: the same operator now keeps a string.
    let incompatible = |reset: bool| {
        let ctx = StreamingContext::new(config(&checkpoint, reset));
        let events = ctx.embedded(store.clone(), "events").unwrap();
        events
            .map(|r| (r.value_str().trim().to_owned(), 1u64))
            .map_with_state(
                None,
                |word,
                 _n: Option<u64>,
                 state: &mut State<String>,
                 out: &mut Emitter<(String, u64)>| {
                    state.update(word.to_uppercase());
                    out.push((word, 1u64));
                },
            )
            .named("totals")
            .save_to_table("totals");
        ctx.run()
    };
    let err = incompatible(false).unwrap_err();
    let message = err.to_string();
    assert!(
        message.contains("operator \"totals\" changed incompatibly")
            && message.contains("state u64")
            && message.contains("state string")
            && message.contains("--reset-state"),
        "{message}"
    );
    // The refused start changed nothing.
    assert_eq!(
        table(&checkpoint),
        pairs(&[("a", "4"), ("b", "1"), ("c", "2")])
    );

    // --reset-state: state starts over, offsets stay (nothing re-read).
    append(&store, &["a"]);
    incompatible(true).unwrap();
    assert_eq!(
        table(&checkpoint),
        pairs(&[("a", "1"), ("b", "1"), ("c", "2")])
    );
}
