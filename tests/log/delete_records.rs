//! DeleteRecords in the store: the log start moves to any offset (inside a
//! segment too), readers below it get "out of range", whole segments below
//! it go from the disk, and the new log start survives a restart and a
//! crash.

use sluice::log::{LogError, LogStore, TopicConfig};

use crate::common::COMPRESSIONS;
use crate::common::{Rec, encode_batch, quiet, read_all, segment_files};

fn config() -> TopicConfig {
    TopicConfig {
        segment_bytes: 2048,
        index_interval_bytes: 256,
        retention_ms: -1,
        ..TopicConfig::default()
    }
}

fn fill(p: &sluice::log::Partition, batches: usize) {
    for i in 0..batches {
        let recs: Vec<Rec> = (0..5)
            .map(|j| Rec {
                key: Some(format!("k{j}").into_bytes()),
                value: format!("value-{i}-{j}-{}", "x".repeat(30)).into_bytes(),
                timestamp: 1_700_000_000_000 + i as i64,
            })
            .collect();
        p.append(&mut encode_batch(
            &recs,
            COMPRESSIONS[i % COMPRESSIONS.len()],
        ))
        .unwrap();
    }
}

#[test]
fn deleting_records_moves_the_log_start_and_survives_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(dir.path(), quiet()).unwrap();
    store.create_topic("purge", 1, config()).unwrap();
    let p = store.partition("purge", 0).unwrap();
    fill(&p, 60);
    let hw = p.high_watermark();
    let segments = segment_files(p.dir()).len();
    assert!(segments > 4, "{segments} segments");

    // Inside a batch, past a few segments.
    let start = 137;
    assert_eq!(p.delete_records(Some(start)).unwrap(), start);
    assert_eq!(p.log_start_offset(), start);
    assert!(
        segment_files(p.dir()).len() < segments,
        "segments below the start are deleted"
    );
    assert!(matches!(
        p.read(start - 1, 1 << 20),
        Err(LogError::OffsetOutOfRange { log_start, .. }) if log_start == start
    ));
    let visible: Vec<i64> = read_all(&p)
        .into_iter()
        .map(|r| r.offset)
        .filter(|&o| o >= start)
        .collect();
    assert_eq!(visible, (start..hw).collect::<Vec<_>>());

    // Backwards changes nothing; past the end is refused; nothing was lost.
    assert_eq!(p.delete_records(Some(10)).unwrap(), start);
    assert!(matches!(
        p.delete_records(Some(hw + 1)),
        Err(LogError::OffsetOutOfRange { .. })
    ));
    assert_eq!(p.high_watermark(), hw);

    // A crash keeps it; appends go on at the end.
    drop(p);
    store.abandon_without_closing();
    let store = LogStore::open(dir.path(), quiet()).unwrap();
    let p = store.partition("purge", 0).unwrap();
    assert_eq!(p.log_start_offset(), start);
    fill(&p, 2);
    assert_eq!(p.high_watermark(), hw + 10);

    // Everything: the log start is the high-water mark, appends still work.
    let end = p.high_watermark();
    assert_eq!(p.delete_records(None).unwrap(), end);
    assert_eq!(
        segment_files(p.dir()).len(),
        1,
        "only the active segment stays"
    );
    fill(&p, 1);
    assert_eq!(p.log_start_offset(), end);
    store.close().unwrap();
    drop((p, store));
    let store = LogStore::open(dir.path(), quiet()).unwrap();
    let p = store.partition("purge", 0).unwrap();
    assert_eq!((p.log_start_offset(), p.high_watermark()), (end, end + 5));
    assert_eq!(read_all(&p).len(), 5);
}
