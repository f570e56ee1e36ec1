//! Injected I/O failures in the log store (needs `--features failpoints`):
//! a full disk during an append (whole or after a partial write) and a
//! failed fsync under the `always` flush policy.
//!
//! Every test holds `fail::FailScenario` for its whole body, so the tests of
//! this file run one at a time even on a multi-threaded test runner.

use std::fs;
use std::path::Path;

use fail::FailScenario;
use sluice::log::{FlushPolicy, LogError, LogStore, Partition, TopicConfig};

use crate::common::{
    COMPRESSIONS, Rec, encode_batch, last_segment, quiet, read_all, segment_files,
};

fn recs(tag: &str, n: usize, ts: i64) -> Vec<Rec> {
    (0..n)
        .map(|i| Rec {
            key: (i % 2 == 0).then(|| format!("{tag}-k{i}").into_bytes()),
            value: format!("{tag}-{i}-{}", "v".repeat(i * 7 % 50)).into_bytes(),
            timestamp: ts + i as i64,
        })
        .collect()
}

fn config(policy: FlushPolicy, segment_bytes: u64) -> TopicConfig {
    let mut cfg = TopicConfig {
        segment_bytes,
        index_interval_bytes: 256,
        retention_ms: -1,
        ..TopicConfig::default()
    };
    cfg.set_flush_policy(policy);
    cfg
}

/// Appends `records` as one batch and records them in `model` on success.
fn append_ok(p: &Partition, model: &mut Vec<Rec>, records: Vec<Rec>, compression: usize) {
    let info = p
        .append(&mut encode_batch(
            &records,
            COMPRESSIONS[compression % COMPRESSIONS.len()],
        ))
        .unwrap_or_else(|e| panic!("append to {}-{} failed: {e}", p.topic(), p.id()));
    assert_eq!(
        info.base_offset,
        model.len() as i64,
        "offset of an acknowledged append"
    );
    model.extend(records);
}

/// The partition holds exactly `model`, at offsets 0.., and no more.
fn assert_holds(p: &Partition, model: &[Rec], what: &str) {
    assert_eq!(
        p.high_watermark(),
        model.len() as i64,
        "{what}: high-water mark"
    );
    let got = read_all(p);
    let got: Vec<Rec> = got.iter().map(|s| s.rec()).collect();
    assert_eq!(got.len(), model.len(), "{what}: record count");
    for (i, (g, m)) in got.iter().zip(model).enumerate() {
        assert_eq!(g, m, "{what}: record at offset {i}");
    }
}

fn file_len(path: &Path) -> u64 {
    fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .len()
}

/// Runs one append that must hit the injected full disk, and checks the
/// error and that nothing of it is left: same high-water mark, same segment
/// file length, same readable records.
fn append_hits_full_disk(p: &Partition, model: &[Rec], blob: &mut [u8], action: &str, what: &str) {
    let seg = last_segment(p.dir());
    let len_before = file_len(&seg);
    let size_before = p.info().size_bytes;
    fail::cfg("segment::write", action).unwrap();
    let result = p.append(blob);
    fail::remove("segment::write");
    let err = match result {
        Err(e) => e,
        Ok(info) => panic!("{what}: append succeeded on a full disk: {info:?}"),
    };
    // The append may have rolled to a new segment before the write failed.
    let seg_now = last_segment(p.dir());
    match &err {
        LogError::DiskFull { file } => assert_eq!(
            file, &seg_now,
            "{what}: DiskFull must name the segment file"
        ),
        other => panic!("{what}: expected DiskFull, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains(&seg_now.display().to_string()),
        "{what}: message must name the file: {msg}"
    );
    assert!(
        msg.contains("nothing was stored"),
        "{what}: message must say nothing was stored: {msg}"
    );
    assert!(msg.contains("no space left"), "{what}: {msg}");
    if seg_now == seg {
        assert_eq!(
            file_len(&seg),
            len_before,
            "{what}: the partial bytes must be cut off {}",
            seg.display()
        );
    } else {
        assert_eq!(
            file_len(&seg),
            len_before,
            "{what}: the rolled segment must keep its length"
        );
        assert_eq!(
            file_len(&seg_now),
            0,
            "{what}: the new segment must be empty again"
        );
    }
    assert_eq!(
        p.info().size_bytes,
        size_before,
        "{what}: info().size_bytes"
    );
    assert_holds(p, model, what);
}

/// (a) A full disk during an append: `DiskFull` naming the file, nothing
/// stored (not even the half that reached the file), the next append gets the
/// next offset, and after a crash and a clean reopen everything acknowledged
/// is intact and nothing else appeared.
#[test]
fn full_disk_during_append_is_rolled_back_and_reported() {
    let scenario = FailScenario::setup();
    for policy in [FlushPolicy::Os, FlushPolicy::EveryAppend] {
        let what = |s: &str| format!("{policy}: {s}");
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(dir.path(), quiet()).unwrap();
        store.create_topic("full", 1, config(policy, 4096)).unwrap();
        let p = store.partition("full", 0).unwrap();
        let mut model = Vec::new();
        for i in 0..3 {
            append_ok(
                &p,
                &mut model,
                recs(&format!("a{i}"), 5, 1000 * i),
                i as usize,
            );
        }

        // Half the batch reaches the file, then the disk is full.
        let mut blob = encode_batch(&recs("partial", 8, 5000), COMPRESSIONS[0]);
        append_hits_full_disk(
            &p,
            &model,
            &mut blob,
            "return(partial)",
            &what("partial write"),
        );
        // Nothing reaches the file.
        let mut blob = encode_batch(&recs("nothing", 8, 5000), COMPRESSIONS[2]);
        append_hits_full_disk(&p, &model, &mut blob, "return", &what("failed write"));
        // A blob of two batches whose first half holds the whole first batch.
        let mut blob = encode_batch(&recs("small", 1, 6000), COMPRESSIONS[0]);
        blob.extend_from_slice(&encode_batch(&recs("big", 30, 6001), COMPRESSIONS[0]));
        append_hits_full_disk(
            &p,
            &model,
            &mut blob,
            "return(partial)",
            &what("two-batch blob"),
        );

        // The disk has room again: the next append takes the next offset.
        append_ok(&p, &mut model, recs("after", 4, 7000), 3);
        assert_holds(&p, &model, &what("after the disk had room again"));

        // A full disk right after a roll to a new segment.
        while segment_files(p.dir()).len() < 2 {
            append_ok(&p, &mut model, recs("fill", 10, 8000), 4);
        }
        let segs = segment_files(p.dir()).len();
        let mut i = 0;
        loop {
            // Find the append that rolls: try it against a full disk.
            let mut blob = encode_batch(&recs(&format!("roll{i}"), 10, 9000), COMPRESSIONS[0]);
            let seg = last_segment(p.dir());
            let room = 4096 - file_len(&seg);
            if (blob.len() as u64) > room {
                append_hits_full_disk(
                    &p,
                    &model,
                    &mut blob,
                    "return(partial)",
                    &what("first write after a roll"),
                );
                assert_eq!(
                    segment_files(p.dir()).len(),
                    segs + 1,
                    "{}",
                    what("the append rolled")
                );
                break;
            }
            append_ok(&p, &mut model, recs(&format!("roll{i}"), 10, 9000), 0);
            i += 1;
        }
        append_ok(&p, &mut model, recs("into-new-segment", 3, 10_000), 1);
        assert_holds(
            &p,
            &model,
            &what("after the failed first write of a segment"),
        );
        let hw = p.high_watermark();
        drop(p);

        // Crash, then reopen: recovery finds exactly what was acknowledged.
        store.abandon_without_closing();
        let store = LogStore::open(dir.path(), quiet()).unwrap();
        let p = store.partition("full", 0).unwrap();
        assert_eq!(
            p.high_watermark(),
            hw,
            "{}",
            what("high-water mark after a crash")
        );
        assert_holds(&p, &model, &what("after a crash"));
        append_ok(&p, &mut model, recs("after-crash", 2, 11_000), 2);
        drop(p);
        store.close().unwrap();
        drop(store);

        let store = LogStore::open(dir.path(), quiet()).unwrap();
        let p = store.partition("full", 0).unwrap();
        assert_holds(&p, &model, &what("after a clean reopen"));
        drop(p);
        store.close().unwrap();
    }
    scenario.teardown();
}

/// (b) A failed fsync under the `always` policy: the append fails, the
/// partition goes offline (later appends get `PartitionOffline` telling the
/// operator to restart), other partitions keep working, readers still read
/// what was published, and after a restart the partition is writable again
/// with every acknowledged record.
#[test]
fn fsync_failure_takes_the_partition_offline_until_restart() {
    let scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(dir.path(), quiet()).unwrap();
    store
        .create_topic("sync", 2, config(FlushPolicy::EveryAppend, 64 * 1024))
        .unwrap();
    let p = store.partition("sync", 0).unwrap();
    let other = store.partition("sync", 1).unwrap();
    let mut model = Vec::new();
    let mut other_model = Vec::new();
    for i in 0..4 {
        append_ok(
            &p,
            &mut model,
            recs(&format!("ok{i}"), 6, 100 * i),
            i as usize,
        );
    }
    append_ok(&other, &mut other_model, recs("other", 3, 0), 0);

    fail::cfg("segment::sync", "return").unwrap();
    let lost = recs("unsynced", 5, 900);
    let err = p
        .append(&mut encode_batch(&lost, COMPRESSIONS[0]))
        .expect_err("an append whose fsync fails must not be acknowledged");
    assert!(
        matches!(
            &err,
            LogError::Io {
                context: "syncing",
                ..
            }
        ),
        "expected the fsync error, got {err:?}"
    );
    assert!(err.to_string().contains("injected fsync failure"), "{err}");
    fail::remove("segment::sync");

    // Offline: appends are refused with a message that says to restart.
    let err = p
        .append(&mut encode_batch(
            &recs("refused", 1, 1000),
            COMPRESSIONS[0],
        ))
        .expect_err("an offline partition must refuse appends");
    match &err {
        LogError::PartitionOffline {
            topic, partition, ..
        } => {
            assert_eq!((topic.as_str(), *partition), ("sync", 0));
        }
        other => panic!("expected PartitionOffline, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("restart"),
        "the message must say to restart: {msg}"
    );
    assert!(
        msg.contains("sync-0"),
        "the message must name the partition: {msg}"
    );
    assert!(
        msg.contains("injected fsync failure"),
        "the message must carry the cause: {msg}"
    );

    // Readers still see exactly what was published before the failure.
    assert_holds(&p, &model, "offline partition");
    assert_eq!(p.offset_for_time(0).unwrap(), Some((0, 0)));
    assert_eq!(
        p.offset_for_time(900).unwrap(),
        None,
        "the unsynced batch is not visible"
    );
    // The failure is the partition's, not the store's.
    append_ok(&other, &mut other_model, recs("other-after", 2, 10), 1);
    assert_holds(&other, &other_model, "the other partition");
    drop((p, other));

    // Restart. The failed append's bytes are still in the page cache, so
    // recovery may keep them: they may appear after the acknowledged
    // records, whole, and nothing else may.
    let _ = store.close();
    drop(store);
    let store = LogStore::open(dir.path(), quiet()).unwrap();
    let p = store.partition("sync", 0).unwrap();
    let got: Vec<Rec> = read_all(&p).iter().map(|s| s.rec()).collect();
    assert!(
        got.len() >= model.len(),
        "acknowledged records lost: {} of {}",
        got.len(),
        model.len()
    );
    assert_eq!(
        &got[..model.len()],
        &model[..],
        "acknowledged records after restart"
    );
    let extra = &got[model.len()..];
    assert!(
        extra.is_empty() || extra == &lost[..],
        "only the unacknowledged batch may follow the acknowledged records: {extra:?}"
    );
    model.extend_from_slice(extra);
    append_ok(&p, &mut model, recs("after-restart", 3, 2000), 4);
    assert_holds(&p, &model, "after restart");
    let other = store.partition("sync", 1).unwrap();
    assert_holds(&other, &other_model, "the other partition after restart");
    drop((p, other));
    store.close().unwrap();
    scenario.teardown();
}

/// A partition taken offline by a failed fsync must not later treat the
/// unsynced bytes as durable: the module's own reasoning ("after a failed
/// fsync the page cache can no longer be trusted to reach the disk") means a
/// later fsync that happens to succeed proves nothing about them. So neither
/// a flush (`Partition::flush`, `LogStore::flush`, the `flush.ms` timer) nor
/// a clean close may publish the failed append to readers or record a
/// recovery point past the last position known to be on disk.
#[test]
fn offline_partition_does_not_publish_or_checkpoint_unsynced_bytes() {
    let scenario = FailScenario::setup();
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(dir.path(), quiet()).unwrap();
    store
        .create_topic("fsyncgate", 1, config(FlushPolicy::EveryAppend, 64 * 1024))
        .unwrap();
    let p = store.partition("fsyncgate", 0).unwrap();
    let mut model = Vec::new();
    for i in 0..3 {
        append_ok(
            &p,
            &mut model,
            recs(&format!("ok{i}"), 4, 10 * i),
            i as usize,
        );
    }
    let durable_len = file_len(&last_segment(p.dir()));

    fail::cfg("segment::sync", "return").unwrap();
    p.append(&mut encode_batch(
        &recs("unsynced", 5, 900),
        COMPRESSIONS[0],
    ))
    .expect_err("the fsync fails");
    // The disk "recovers": the next fsync succeeds, as it does on Linux
    // after the kernel has dropped the failed pages' error.
    fail::remove("segment::sync");
    assert!(matches!(
        p.append(&mut encode_batch(&recs("refused", 1, 0), COMPRESSIONS[0])),
        Err(LogError::PartitionOffline { .. })
    ));

    let mut problems = Vec::new();
    let flushed = store.flush();
    if p.high_watermark() != model.len() as i64 {
        problems.push(format!(
            "LogStore::flush() returned {flushed:?} and published the append whose fsync failed: \
             high-water mark {} but only {} records were acknowledged",
            p.high_watermark(),
            model.len()
        ));
    }
    let visible = read_all(&p).len();
    if visible != model.len() {
        problems.push(format!(
            "readers of the offline partition see {visible} records, {} acknowledged",
            model.len()
        ));
    }
    drop(p);

    let _ = store.close();
    drop(store);
    let text = fs::read_to_string(dir.path().join("topics/fsyncgate/0/recovery-point"))
        .unwrap_or_default();
    let pos: u64 = text
        .split_whitespace()
        .nth(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    if pos > durable_len {
        problems.push(format!(
            "closing the offline partition wrote recovery point {:?}, past {durable_len}, the last byte known \
             to be on disk: the next open skips CRC validation of bytes whose fsync failed",
            text.trim()
        ));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    scenario.teardown();
}

/// A cleaning pass that fails (as a crash would stop it) after writing its
/// `.cleaned` file, before renaming it over the segment, and between the
/// log's rename and the index's: readers keep seeing a whole log, and after
/// a crash and a reopen the log is the old one or a valid compaction of it,
/// with no `.cleaned` file left; the next pass finishes the job.
#[test]
fn a_cleaning_pass_stopped_at_any_step_leaves_a_valid_log() {
    use crate::compaction::{Kv, TOPIC, check, config, encode, read_log};
    let scenario = FailScenario::setup();
    for fp in [
        "cleaner::after_write",
        "cleaner::before_rename",
        "cleaner::after_rename",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let store = LogStore::open(dir.path(), quiet()).unwrap();
        store.create_topic(TOPIC, 1, config(0, 0.5)).unwrap();
        let p = store.partition(TOPIC, 0).unwrap();
        let mut model = Vec::new();
        for i in 0..60usize {
            let batch: Vec<Kv> = (0..4)
                .map(|j| Kv {
                    key: format!("k{}", (i * 4 + j) % 9).into_bytes(),
                    value: ((i + j) % 11 != 0).then(|| format!("v{i}-{j}").into_bytes()),
                })
                .collect();
            p.append(&mut encode(&batch, COMPRESSIONS[i % COMPRESSIONS.len()]))
                .unwrap();
            model.extend(batch);
        }
        assert!(
            segment_files(p.dir()).len() > 3,
            "{fp}: the log must span segments"
        );
        // A first pass leaves small cleaned segments, which the failing pass
        // below merges: the swap of a group of segments is what fails.
        store.clean_now().unwrap();
        for i in 60..90usize {
            let batch: Vec<Kv> = (0..4)
                .map(|j| Kv {
                    key: format!("k{}", (i * 4 + j) % 9).into_bytes(),
                    value: Some(format!("w{i}-{j}").into_bytes()),
                })
                .collect();
            p.append(&mut encode(&batch, COMPRESSIONS[i % COMPRESSIONS.len()]))
                .unwrap();
            model.extend(batch);
        }
        let files_before = segment_files(p.dir()).len();
        let before = read_log(&p);
        fail::cfg(fp, "return").unwrap();
        let err = store
            .clean_now()
            .expect_err("the injected failure surfaces");
        fail::remove(fp);
        assert!(err.to_string().contains("injected"), "{fp}: {err}");
        assert_eq!(read_log(&p), before, "{fp}: readers after the failed pass");
        drop(p);
        store.abandon_without_closing();

        let store = LogStore::open(dir.path(), quiet()).unwrap();
        let p = store.partition(TOPIC, 0).unwrap();
        let leftovers: Vec<String> = fs::read_dir(p.dir())
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".cleaned"))
            .collect();
        assert!(
            leftovers.is_empty(),
            "{fp}: left after reopen: {leftovers:?}"
        );
        let recovered = check(&p, &model, &format!("{fp}: after the crash"));
        if fp != "cleaner::after_rename" {
            assert_eq!(recovered, before, "{fp}: the old segments stay whole");
        }
        store.clean_now().unwrap();
        let cleaned = check(&p, &model, &format!("{fp}: the next pass"));
        assert!(
            cleaned.len() < before.len(),
            "{fp}: the next pass compacted nothing"
        );
        assert!(
            segment_files(p.dir()).len() < files_before,
            "{fp}: the next pass merged no segments"
        );
        store.close().unwrap();
    }
    scenario.teardown();
}
