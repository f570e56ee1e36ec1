//! Store-level tests: appends, reads, rolls, recovery, retention, errors.

use std::fs;

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

use super::*;
use crate::log::batch::tests::raw_batch;

fn quiet() -> StoreOptions {
    StoreOptions {
        background: false,
        ..Default::default()
    }
}

fn small_segments() -> TopicConfig {
    TopicConfig {
        segment_bytes: 4096,
        index_interval_bytes: 256,
        retention_ms: -1,
        ..Default::default()
    }
}

/// A real RecordBatch v2 with `n` records `"{tag}-{i}"` at `ts + i`.
fn encoded(tag: &str, n: usize, ts: i64, compression: Compression) -> BytesMut {
    let records: Vec<Record> = (0..n)
        .map(|i| Record {
            transactional: false,
            control: false,
            partition_leader_epoch: -1,
            producer_id: -1,
            producer_epoch: -1,
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            // `offset - sequence` must stay constant or the encoder starts a
            // new batch per record; i - 1 also makes the base sequence -1.
            sequence: i as i32 - 1,
            timestamp: ts + i as i64,
            key: Some(Bytes::from(format!("k{i}"))),
            value: Some(Bytes::from(format!("{tag}-{i}"))),
            headers: Default::default(),
            delete_horizon: false,
        })
        .collect();
    let mut buf = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut buf,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression,
        },
    )
    .unwrap();
    buf
}

fn values(bytes: Bytes) -> Vec<(i64, String)> {
    let mut b = bytes;
    RecordBatchDecoder::decode_all(&mut b)
        .unwrap()
        .into_iter()
        .flat_map(|s| s.records)
        .map(|r| {
            (
                r.offset,
                String::from_utf8(r.value.unwrap().to_vec()).unwrap(),
            )
        })
        .collect()
}

#[test]
fn appends_get_consecutive_offsets_and_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(dir.path(), quiet()).unwrap();
    store.create_topic("t", 2, TopicConfig::default()).unwrap();
    let p = store.partition("t", 1).unwrap();
    let a = p
        .append(&mut encoded("a", 3, 1000, Compression::None))
        .unwrap();
    let b = p
        .append(&mut encoded("b", 2, 2000, Compression::Zstd))
        .unwrap();
    assert_eq!((a.base_offset, a.last_offset), (0, 2));
    assert_eq!((b.base_offset, b.last_offset), (3, 4));
    assert_eq!(p.high_watermark(), 5);

    let (bytes, info) = p.read(0, 1 << 20).unwrap();
    assert_eq!(info.next_offset, 5);
    let got = values(bytes.clone());
    assert_eq!(
        got.iter().map(|(o, _)| *o).collect::<Vec<_>>(),
        vec![0, 1, 2, 3, 4]
    );
    assert_eq!(got[4].1, "b-1");
    // read_into appends after what the buffer holds, and only whole
    // batches; a read out of range leaves the buffer as it was.
    let mut appended = b"kept".to_vec();
    p.read_into(0, 1 << 20, &mut appended).unwrap();
    assert_eq!(&appended[..4], b"kept");
    assert_eq!(&appended[4..], &bytes[..]);
    assert!(p.read_into(6, 1 << 20, &mut appended).is_err());
    assert_eq!(appended.len(), 4 + bytes.len());
    // A read from the middle starts with the batch holding that offset.
    let (bytes, _) = p.read(4, 1 << 20).unwrap();
    assert_eq!(values(bytes)[0].0, 3);
    // At the high-water mark: nothing, and no error.
    let (bytes, info) = p.read(5, 1 << 20).unwrap();
    assert!(bytes.is_empty());
    assert_eq!(info.next_offset, 5);
}

#[test]
fn max_bytes_returns_whole_batches_and_at_least_one() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(dir.path(), quiet()).unwrap();
    store.create_topic("t", 1, TopicConfig::default()).unwrap();
    let p = store.partition("t", 0).unwrap();
    let batch_len = p
        .append(&mut raw_batch(1, 0, 0, &[7; 100]))
        .map(|_| 161)
        .unwrap();
    for _ in 0..9 {
        p.append(&mut raw_batch(1, 0, 0, &[7; 100])).unwrap();
    }
    let (bytes, info) = p.read(0, 3 * batch_len + 10).unwrap();
    assert_eq!(bytes.len(), 3 * batch_len);
    assert_eq!(info.next_offset, 3);
    let (bytes, info) = p.read(0, 1).unwrap();
    assert_eq!(
        bytes.len(),
        batch_len,
        "the first batch comes whole even past max_bytes"
    );
    assert_eq!(info.next_offset, 1);
}

#[test]
fn segments_roll_by_size_and_reads_cross_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(dir.path(), quiet()).unwrap();
    store.create_topic("t", 1, small_segments()).unwrap();
    let p = store.partition("t", 0).unwrap();
    for i in 0..100 {
        p.append(&mut encoded(&format!("r{i}"), 5, i * 10, Compression::None))
            .unwrap();
    }
    assert!(
        p.info().segments >= 3,
        "4 KiB segments must roll: {:?}",
        p.info()
    );
    let (bytes, info) = p.read(0, 1 << 30).unwrap();
    assert_eq!(info.next_offset, 500);
    let got = values(bytes);
    assert_eq!(got.len(), 500);
    assert!(got.iter().enumerate().all(|(i, (o, _))| *o == i as i64));
    for offset in [0, 1, 123, 250, 499] {
        let (bytes, _) = p.read(offset, 1).unwrap();
        let first = values(bytes);
        assert!(first.iter().any(|(o, _)| *o == offset), "offset {offset}");
    }
    let names: Vec<_> = fs::read_dir(p.dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(names.contains(&"00000000000000000000.log".to_string()));
    assert!(names.contains(&"00000000000000000000.index".to_string()));
    assert!(names.contains(&"00000000000000000000.timeindex".to_string()));
}

#[test]
fn segments_roll_by_age() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(dir.path(), quiet()).unwrap();
    let cfg = TopicConfig {
        segment_ms: 1000,
        ..Default::default()
    };
    store.create_topic("t", 1, cfg).unwrap();
    let p = store.partition("t", 0).unwrap();
    let now = crate::common::now_ms();
    p.append_at(&mut raw_batch(1, now, now, b"x"), now).unwrap();
    p.append_at(&mut raw_batch(1, now, now, b"x"), now + 10)
        .unwrap();
    assert_eq!(p.info().segments, 1);
    p.append_at(&mut raw_batch(1, now, now, b"x"), now + 5000)
        .unwrap();
    assert_eq!(p.info().segments, 2);
}

#[test]
fn reopening_after_a_clean_close_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = LogStore::open(dir.path(), quiet()).unwrap();
        store.create_topic("t", 3, small_segments()).unwrap();
        for i in 0..60 {
            store
                .partition("t", i % 3)
                .unwrap()
                .append(&mut encoded("v", 4, 0, Compression::Lz4))
                .unwrap();
        }
        store.close().unwrap();
    }
    let store = LogStore::open(dir.path(), quiet()).unwrap();
    let t = store.topic("t").unwrap();
    assert_eq!(t.partition_count(), 3);
    for p in t.partitions() {
        assert_eq!(p.high_watermark(), 80);
        let (bytes, _) = p.read(0, 1 << 30).unwrap();
        assert_eq!(values(bytes).len(), 80);
        p.append(&mut encoded("w", 1, 0, Compression::None))
            .unwrap();
        assert_eq!(p.high_watermark(), 81);
    }
}

/// The inode of each of a partition's files, by name: a file rewritten
/// through a temporary file and a rename gets a new one.
fn inodes(dir: &std::path::Path) -> std::collections::BTreeMap<String, u64> {
    use std::os::unix::fs::MetadataExt;
    fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                e.metadata().unwrap().ino(),
            )
        })
        .collect()
}

#[test]
fn a_clean_close_rewrites_nothing_that_was_only_read_and_persists_what_changed() {
    let dir = tempfile::tempdir().unwrap();
    let pdir = {
        let store = LogStore::open(dir.path(), quiet()).unwrap();
        store.create_topic("t", 1, TopicConfig::default()).unwrap();
        let p = store.partition("t", 0).unwrap();
        for i in 0..20 {
            p.append(&mut encoded("x", 5, i, Compression::None))
                .unwrap();
        }
        store.close().unwrap();
        p.dir().to_path_buf()
    };
    // Opened and read, then closed: every file is the one written before.
    let written = inodes(&pdir);
    {
        let store = LogStore::open(dir.path(), quiet()).unwrap();
        let (bytes, _) = store.partition("t", 0).unwrap().read(0, 1 << 20).unwrap();
        assert_eq!(values(bytes).len(), 100);
        store.close().unwrap();
    }
    assert_eq!(inodes(&pdir), written);
    // An index that had to be rebuilt at open is written at close.
    let index = pdir.join("00000000000000000000.index");
    fs::remove_file(&index).unwrap();
    LogStore::open(dir.path(), quiet())
        .unwrap()
        .close()
        .unwrap();
    assert!(index.exists(), "the rebuilt index was not persisted");
    // An append after a clean open moves the recovery point.
    let before = inodes(&pdir);
    {
        let store = LogStore::open(dir.path(), quiet()).unwrap();
        store
            .partition("t", 0)
            .unwrap()
            .append(&mut encoded("y", 1, 0, Compression::None))
            .unwrap();
        store.close().unwrap();
    }
    assert_ne!(inodes(&pdir)["recovery-point"], before["recovery-point"]);
    let store = LogStore::open(dir.path(), quiet()).unwrap();
    assert_eq!(store.partition("t", 0).unwrap().high_watermark(), 101);
}

fn last_segment(p: &Partition) -> std::path::PathBuf {
    let mut logs: Vec<_> = fs::read_dir(p.dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    logs.sort();
    logs.pop().unwrap()
}

#[test]
fn a_torn_tail_is_cut_off_on_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let (seg, good_len) = {
        let store = LogStore::open(dir.path(), quiet()).unwrap();
        store.create_topic("t", 1, TopicConfig::default()).unwrap();
        let p = store.partition("t", 0).unwrap();
        for _ in 0..5 {
            p.append(&mut encoded("ok", 10, 0, Compression::None))
                .unwrap();
        }
        let seg = last_segment(&p);
        let good_len = fs::metadata(&seg).unwrap().len();
        // Half of a sixth batch reaches the file before the "crash".
        let half = encoded("torn", 10, 0, Compression::None);
        let mut f = fs::OpenOptions::new().append(true).open(&seg).unwrap();
        std::io::Write::write_all(&mut f, &half[..half.len() / 2]).unwrap();
        store.abandon_without_closing();
        (seg, good_len)
    };
    let store = LogStore::open(dir.path(), quiet()).unwrap();
    let p = store.partition("t", 0).unwrap();
    assert_eq!(p.high_watermark(), 50);
    assert_eq!(fs::metadata(&seg).unwrap().len(), good_len);
    assert_eq!(
        p.append(&mut encoded("new", 1, 0, Compression::None))
            .unwrap()
            .base_offset,
        50
    );
}

#[test]
fn a_corrupt_batch_after_the_recovery_point_is_cut_with_what_follows() {
    let dir = tempfile::tempdir().unwrap();
    let seg = {
        let store = LogStore::open(dir.path(), quiet()).unwrap();
        store.create_topic("t", 1, TopicConfig::default()).unwrap();
        let p = store.partition("t", 0).unwrap();
        let mut batch_len = 0;
        for _ in 0..4 {
            let mut b = encoded("x", 10, 0, Compression::None);
            batch_len = b.len();
            p.append(&mut b).unwrap();
        }
        let seg = last_segment(&p);
        store.abandon_without_closing();
        // Flip a byte inside the third batch's records.
        let mut bytes = fs::read(&seg).unwrap();
        bytes[2 * batch_len + 70] ^= 0x55;
        fs::write(&seg, bytes).unwrap();
        seg
    };
    let store = LogStore::open(dir.path(), quiet()).unwrap();
    let p = store.partition("t", 0).unwrap();
    assert_eq!(
        p.high_watermark(),
        20,
        "batches 3 and 4 are cut at the CRC failure"
    );
    assert!(fs::metadata(&seg).unwrap().len() > 0);
}

#[test]
fn damage_to_fsynced_data_is_refused_with_file_and_position() {
    let dir = tempfile::tempdir().unwrap();
    let first = {
        let store = LogStore::open(dir.path(), quiet()).unwrap();
        store.create_topic("t", 1, small_segments()).unwrap();
        let p = store.partition("t", 0).unwrap();
        for _ in 0..50 {
            p.append(&mut encoded("x", 10, 0, Compression::None))
                .unwrap();
        }
        store.close().unwrap();
        p.dir().join("00000000000000000000.log")
    };
    // Break the framing of a sealed segment's second batch.
    let mut bytes = fs::read(&first).unwrap();
    let len = i32::from_be_bytes(bytes[8..12].try_into().unwrap()) as usize + 12;
    bytes[len + 16] = 9; // magic
    fs::write(&first, bytes).unwrap();
    fs::remove_file(first.with_extension("index")).unwrap();
    let err = LogStore::open(dir.path(), quiet())
        .err()
        .expect("must refuse");
    let msg = err.to_string();
    assert!(
        msg.contains("00000000000000000000.log") && msg.contains(&format!("byte {len}")),
        "{msg}"
    );
}

#[test]
fn missing_or_damaged_indexes_are_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let pdir = {
        let store = LogStore::open(dir.path(), quiet()).unwrap();
        store.create_topic("t", 1, small_segments()).unwrap();
        let p = store.partition("t", 0).unwrap();
        for i in 0..80 {
            p.append(&mut encoded("x", 5, i, Compression::None))
                .unwrap();
        }
        store.close().unwrap();
        p.dir().to_path_buf()
    };
    let mut damaged = 0;
    for e in fs::read_dir(&pdir).unwrap() {
        let path = e.unwrap().path();
        match path.extension().and_then(|e| e.to_str()) {
            Some("index") if damaged % 2 == 0 => {
                fs::remove_file(&path).unwrap();
                damaged += 1;
            }
            Some("index") => {
                fs::write(&path, b"garbage").unwrap();
                damaged += 1;
            }
            _ => {}
        }
    }
    assert!(damaged >= 2);
    let store = LogStore::open(dir.path(), quiet()).unwrap();
    let p = store.partition("t", 0).unwrap();
    for offset in [0, 37, 211, 399] {
        let (bytes, _) = p.read(offset, 1).unwrap();
        assert!(values(bytes).iter().any(|(o, _)| *o == offset));
    }
}

#[test]
fn offsets_for_times_find_the_first_record_at_or_after() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(dir.path(), quiet()).unwrap();
    store.create_topic("t", 1, small_segments()).unwrap();
    let p = store.partition("t", 0).unwrap();
    // Batch i holds 10 records at timestamps 1000*i + 0..10.
    for i in 0..40 {
        p.append(&mut encoded("x", 10, 1000 * i, Compression::Snappy))
            .unwrap();
    }
    assert_eq!(p.offset_for_time(0).unwrap(), Some((0, 0)));
    assert_eq!(p.offset_for_time(5005).unwrap(), Some((55, 5005)));
    assert_eq!(p.offset_for_time(5010).unwrap(), Some((60, 6000)));
    assert_eq!(p.offset_for_time(39_009).unwrap(), Some((399, 39_009)));
    assert_eq!(p.offset_for_time(39_010).unwrap(), None);
}

#[test]
fn retention_by_size_and_time_deletes_whole_old_segments() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(dir.path(), quiet()).unwrap();
    let cfg = TopicConfig {
        retention_bytes: 10_000,
        ..small_segments()
    };
    store.create_topic("sized", 1, cfg).unwrap();
    let p = store.partition("sized", 0).unwrap();
    let now = crate::common::now_ms();
    for _ in 0..300 {
        p.append(&mut encoded("x", 5, now, Compression::None))
            .unwrap();
    }
    let before = p.info();
    let out = p.enforce_retention(now).unwrap();
    let after = p.info();
    assert!(out.segments_deleted > 0);
    assert!(after.size_bytes <= 10_000 + 4096, "{after:?}");
    assert!(after.size_bytes >= 10_000 - 4096, "{after:?}");
    assert_eq!(after.log_start_offset, out.log_start_offset);
    assert!(after.log_start_offset > 0);
    assert_eq!(after.high_watermark, before.high_watermark);
    let err = p.read(0, 100).unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("{}..=1500", after.log_start_offset)),
        "{err}"
    );

    // Time: everything older than retention.ms goes, including the active
    // segment, which is rolled so the log start can reach the end.
    let cfg = TopicConfig {
        retention_ms: 60_000,
        ..small_segments()
    };
    store.create_topic("timed", 1, cfg).unwrap();
    let p = store.partition("timed", 0).unwrap();
    for _ in 0..50 {
        p.append(&mut encoded("x", 5, now - 120_000, Compression::None))
            .unwrap();
    }
    p.enforce_retention(now).unwrap();
    let info = p.info();
    assert_eq!(info.log_start_offset, 250);
    assert_eq!(info.high_watermark, 250);
    assert_eq!(
        p.append(&mut encoded("x", 1, now, Compression::None))
            .unwrap()
            .base_offset,
        250
    );
}

#[test]
fn bad_input_gets_named_errors() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(dir.path(), quiet()).unwrap();
    assert!(matches!(
        store.create_topic("bad/name", 1, TopicConfig::default()),
        Err(LogError::InvalidTopicName { .. })
    ));
    assert!(matches!(
        store.create_topic("t", 0, TopicConfig::default()),
        Err(LogError::InvalidPartitionCount(0))
    ));
    store.create_topic("t", 1, TopicConfig::default()).unwrap();
    assert!(matches!(
        store.create_topic("t", 1, TopicConfig::default()),
        Err(LogError::TopicExists(_))
    ));
    assert!(matches!(
        store.topic("nope"),
        Err(LogError::UnknownTopic(_))
    ));
    assert!(matches!(
        store.partition("t", 3),
        Err(LogError::UnknownPartition { .. })
    ));
    let p = store.partition("t", 0).unwrap();
    p.append(&mut raw_batch(2, 0, 0, b"ab")).unwrap();
    let err = p.read(7, 10).unwrap_err();
    assert_eq!(
        err.to_string(),
        "offset 7 is out of range for t-0: valid offsets are 0..=2 (log start to log end)"
    );
    let mut bad = raw_batch(1, 0, 0, b"zz");
    let n = bad.len();
    bad[n - 1] ^= 1;
    let err = p.append(&mut bad).unwrap_err();
    assert!(err.to_string().contains("CRC-32C mismatch"), "{err}");
    assert_eq!(p.high_watermark(), 2, "nothing appended");
}

#[test]
fn a_second_open_of_the_same_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let _store = LogStore::open(dir.path(), quiet()).unwrap();
    let err = LogStore::open(dir.path(), quiet()).err().unwrap();
    assert!(matches!(err, LogError::DirectoryInUse { .. }));
    assert!(
        err.to_string()
            .contains(&format!("pid {}", std::process::id())),
        "{err}"
    );
}

#[test]
fn topics_can_be_deleted_and_grown_durably() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = LogStore::open(dir.path(), quiet()).unwrap();
        store.create_topic("a", 1, TopicConfig::default()).unwrap();
        store.create_topic("b", 2, TopicConfig::default()).unwrap();
        store.add_partitions("b", 5).unwrap();
        let a = store.partition("a", 0).unwrap();
        store.delete_topic("a").unwrap();
        assert!(matches!(
            a.append(&mut raw_batch(1, 0, 0, b"x")),
            Err(LogError::UnknownTopic(_))
        ));
        assert!(matches!(
            store.add_partitions("b", 3),
            Err(LogError::InvalidPartitionCount(3))
        ));
    }
    let store = LogStore::open(dir.path(), quiet()).unwrap();
    let names: Vec<_> = store
        .topics()
        .iter()
        .map(|t| t.name().to_string())
        .collect();
    assert_eq!(names, vec!["b"]);
    assert_eq!(store.topic("b").unwrap().partition_count(), 5);
}

#[test]
fn every_append_policy_publishes_only_after_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::open(dir.path(), quiet()).unwrap();
    let mut cfg = TopicConfig::default();
    cfg.set_flush_policy(FlushPolicy::EveryAppend);
    store.create_topic("t", 1, cfg).unwrap();
    let p = store.partition("t", 0).unwrap();
    std::thread::scope(|s| {
        for _ in 0..4 {
            s.spawn(|| {
                for _ in 0..25 {
                    p.append(&mut raw_batch(2, 0, 0, b"ab")).unwrap();
                }
            });
        }
    });
    assert_eq!(p.high_watermark(), 200);
    let (bytes, info) = p.read(0, 1 << 20).unwrap();
    assert_eq!(info.next_offset, 200);
    assert_eq!(bytes.len(), 100 * (HEADER_LEN + 2));
}
