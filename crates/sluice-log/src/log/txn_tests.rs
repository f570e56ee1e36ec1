//! Transactions in the store: the last stable offset, markers, the
//! aborted-transaction index, read_committed filtering, and all of it
//! across clean and crashed restarts, rolls and retention.

use std::fs;

use bytes::{Bytes, BytesMut};
use kafka_protocol::records::{
    Compression, Record, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

use super::*;

fn quiet() -> StoreOptions {
    StoreOptions {
        background: false,
        ..Default::default()
    }
}

fn small_segments() -> TopicConfig {
    TopicConfig {
        segment_bytes: 2048,
        index_interval_bytes: 256,
        retention_ms: -1,
        ..Default::default()
    }
}

/// `n` records `"{tag}-{i}"`, transactional when `producer_id >= 0`.
fn batch(producer_id: i64, sequence: i32, tag: &str, n: usize) -> BytesMut {
    let records: Vec<Record> = (0..n)
        .map(|i| Record {
            transactional: producer_id >= 0,
            control: false,
            partition_leader_epoch: -1,
            producer_id,
            producer_epoch: if producer_id >= 0 { 0 } else { -1 },
            timestamp_type: TimestampType::Creation,
            offset: i as i64,
            sequence: if producer_id >= 0 {
                sequence + i as i32
            } else {
                i as i32 - 1
            },
            timestamp: 1_700_000_000_000 + i as i64,
            key: None,
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
            compression: Compression::None,
        },
    )
    .expect("encode");
    buf
}

/// What a read_committed reader gets: reads up to the last stable offset,
/// filtered by the aborted transactions of each read range.
fn read_committed(p: &Partition) -> Vec<String> {
    let lso = p.last_stable_offset();
    let mut out = Vec::new();
    let mut offset = p.log_start_offset();
    let mut filter = CommittedFilter::new(p.aborted_transactions(offset, lso));
    while offset < lso {
        let mut buf = Vec::new();
        let info = p
            .read_into_below(offset, lso, 1 << 20, &mut buf)
            .expect("read");
        assert!(info.bytes > 0, "no progress at {offset} below {lso}");
        let mut pos = 0;
        while pos < buf.len() {
            let h = BatchHeader::parse(&buf[pos..]).expect("header");
            let bytes = &buf[pos..pos + h.total_len()];
            if filter.keep(&h, bytes) {
                let mut b = Bytes::copy_from_slice(bytes);
                for set in RecordBatchDecoder::decode_all(&mut b).expect("decode") {
                    for r in set.records {
                        out.push(
                            String::from_utf8_lossy(&r.value.unwrap_or_default()).into_owned(),
                        );
                    }
                }
            }
            pos += h.total_len();
        }
        offset = info.next_offset;
    }
    out
}

/// Last stable offset, open transactions, aborted transactions, and what
/// a read_committed reader gets.
type TxnView = (i64, Vec<(i64, i64)>, Vec<AbortedTxn>, Vec<String>);

/// Everything transaction-related a partition exposes.
fn txn_view(p: &Partition) -> TxnView {
    (
        p.last_stable_offset(),
        p.ongoing_transactions(),
        p.aborted_transactions(p.log_start_offset(), p.high_watermark()),
        read_committed(p),
    )
}

#[test]
fn the_last_stable_offset_follows_open_transactions_and_markers() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = LogStore::open(dir.path(), quiet()).expect("open");
    store
        .create_topic("t", 1, TopicConfig::default())
        .expect("create");
    let p = store.partition("t", 0).expect("partition");
    assert_eq!(
        p.append(&mut batch(1, 0, "a", 2)).expect("a").base_offset,
        0
    );
    assert_eq!(
        p.append(&mut batch(-1, 0, "p", 1)).expect("p").base_offset,
        2
    );
    assert_eq!(
        p.append(&mut batch(2, 0, "b", 2)).expect("b").base_offset,
        3
    );
    assert_eq!(p.high_watermark(), 5);
    assert_eq!(
        p.last_stable_offset(),
        0,
        "held at the oldest open transaction"
    );
    assert_eq!(p.ongoing_transactions(), vec![(1, 0), (2, 3)]);
    assert!(read_committed(&p).is_empty());

    let commit = p
        .append_marker(1, 0, ControlType::Commit, 0)
        .expect("marker")
        .expect("producer 1 had a transaction open");
    assert_eq!(commit.base_offset, 5);
    assert_eq!(p.last_stable_offset(), 3);
    assert_eq!(read_committed(&p), ["a-0", "a-1", "p-0"]);

    let abort = p
        .append_marker(2, 0, ControlType::Abort, 0)
        .expect("marker")
        .expect("producer 2 had a transaction open");
    assert_eq!(abort.base_offset, 6);
    assert_eq!(p.last_stable_offset(), 7);
    assert_eq!(p.last_stable_offset(), p.high_watermark());
    assert_eq!(
        p.aborted_transactions(0, 7),
        vec![AbortedTxn {
            producer_id: 2,
            first_offset: 3,
            last_offset: 6
        }]
    );
    assert!(
        p.aborted_transactions(0, 3).is_empty(),
        "ends before it starts"
    );
    assert!(
        p.aborted_transactions(7, 9).is_empty(),
        "starts after its marker"
    );
    assert_eq!(read_committed(&p), ["a-0", "a-1", "p-0"]);
    // A repeated marker finds nothing open and appends nothing.
    assert_eq!(
        p.append_marker(2, 0, ControlType::Abort, 0)
            .expect("marker"),
        None
    );
    assert_eq!(p.high_watermark(), 7);

    // The same producer's next transaction commits: it is read again.
    p.append(&mut batch(2, 2, "c", 1)).expect("c");
    p.append_marker(2, 0, ControlType::Commit, 0)
        .expect("marker")
        .expect("open");
    assert_eq!(read_committed(&p), ["a-0", "a-1", "p-0", "c-0"]);
    // A read_uncommitted read returns every batch, markers included.
    let (bytes, _) = p.read(0, 1 << 20).expect("read");
    let mut all = bytes;
    assert_eq!(
        RecordBatchDecoder::decode_all(&mut all)
            .expect("decode")
            .len(),
        7
    );
}

#[test]
fn a_produced_control_batch_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = LogStore::open(dir.path(), quiet()).expect("open");
    store
        .create_topic("t", 1, TopicConfig::default())
        .expect("create");
    let p = store.partition("t", 0).expect("partition");
    let mut marker = encode_control_batch(5, 0, ControlType::Commit, 0, 0);
    let err = p.append(&mut marker).expect_err("refused");
    assert!(err.to_string().contains("transaction coordinator"), "{err}");
    assert_eq!(p.high_watermark(), 0);
}

/// Many small transactions over small segments (so they roll), every third
/// aborted, the last one left open.
fn busy_partition(p: &Partition) {
    let mut seq = [0i32; 3];
    for t in 0..60 {
        let pid = (t % 3) as i64 + 10;
        p.append(&mut batch(pid, seq[t % 3], &format!("t{t}"), 3))
            .expect("append");
        seq[t % 3] += 3;
        p.append(&mut batch(-1, 0, &format!("plain{t}"), 1))
            .expect("plain");
        let control = if t % 3 == 0 {
            ControlType::Abort
        } else {
            ControlType::Commit
        };
        p.append_marker(pid, 0, control, 0)
            .expect("marker")
            .expect("open");
    }
    p.append(&mut batch(11, seq[1], "open", 2)).expect("open");
}

#[test]
fn transaction_state_survives_clean_and_crashed_restarts_across_rolls() {
    let dir = tempfile::tempdir().expect("tempdir");
    let before = {
        let store = LogStore::open(dir.path(), quiet()).expect("open");
        store
            .create_topic("t", 1, small_segments())
            .expect("create");
        let p = store.partition("t", 0).expect("partition");
        busy_partition(&p);
        assert!(p.segment_bases().len() > 3, "the test needs rolls");
        let view = txn_view(&p);
        assert_eq!(view.1.len(), 1, "one transaction left open");
        assert_eq!(view.2.len(), 20, "every third aborted");
        assert_eq!(
            view.3.len(),
            40 * 3 + 60,
            "committed and plain records below the LSO"
        );
        store.close().expect("close");
        view
    };
    {
        let store = LogStore::open(dir.path(), quiet()).expect("reopen");
        let p = store.partition("t", 0).expect("partition");
        assert_eq!(txn_view(&p), before, "after a clean close");
        // Appends continue the recovered state.
        p.append(&mut batch(12, 1000, "late", 1)).expect("append");
        p.append_marker(12, 0, ControlType::Abort, 0)
            .expect("marker")
            .expect("open");
        store.abandon_without_closing();
    }
    let store = LogStore::open(dir.path(), quiet()).expect("reopen after a crash");
    let p = store.partition("t", 0).expect("partition");
    let (lso, open, aborted, committed) = txn_view(&p);
    assert_eq!(lso, before.0);
    assert_eq!(open, before.1);
    assert_eq!(aborted.len(), before.2.len() + 1);
    assert_eq!(committed, before.3);
    // The still-open transaction commits: everything of it becomes readable.
    p.append_marker(11, 0, ControlType::Commit, 0)
        .expect("marker")
        .expect("the recovered open transaction");
    assert_eq!(p.last_stable_offset(), p.high_watermark());
    let all = read_committed(&p);
    assert!(
        all.ends_with(&["open-0".to_string(), "open-1".to_string()]),
        "{all:?}"
    );
    assert!(
        !dir_entries_with(&p, "txnindex").is_empty(),
        "sealed segments keep their aborted transactions on disk"
    );
}

#[test]
fn retention_takes_a_segments_aborted_transactions_with_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = LogStore::open(dir.path(), quiet()).expect("open");
    let cfg = TopicConfig {
        retention_bytes: 4096,
        ..small_segments()
    };
    store.create_topic("t", 1, cfg).expect("create");
    let p = store.partition("t", 0).expect("partition");
    busy_partition(&p);
    let before = p.aborted_transactions(0, p.high_watermark()).len();
    let out = p
        .enforce_retention(crate::common::now_ms())
        .expect("retention");
    assert!(out.segments_deleted > 0);
    let start = p.log_start_offset();
    let after = p.aborted_transactions(start, p.high_watermark());
    assert!(after.len() < before, "{} of {before} remain", after.len());
    assert!(after.iter().all(|a| a.last_offset >= start));
    for entry in fs::read_dir(p.dir()).expect("list") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|x| x == "txnindex") {
            let stem = path
                .file_stem()
                .and_then(|s| s.to_str())
                .unwrap_or_default();
            assert!(
                path.with_file_name(format!("{stem}.log")).exists(),
                "{} outlived its segment",
                path.display()
            );
        }
    }
    // The LSO stays within the log.
    assert!(p.last_stable_offset() >= start);
    assert_eq!(
        p.append_marker(11, 0, ControlType::Commit, 0)
            .expect("marker")
            .map(|_| ()),
        Some(())
    );
}

#[test]
fn a_torn_tail_that_cuts_a_marker_reopens_its_transaction() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log_file = {
        let store = LogStore::open(dir.path(), quiet()).expect("open");
        store
            .create_topic("t", 1, TopicConfig::default())
            .expect("create");
        let p = store.partition("t", 0).expect("partition");
        p.append(&mut batch(-1, 0, "plain", 1)).expect("plain");
        p.append(&mut batch(7, 0, "txn", 2)).expect("transactional");
        p.append_marker(7, 0, ControlType::Abort, 0)
            .expect("marker")
            .expect("open");
        assert_eq!(p.ongoing_transactions(), []);
        assert_eq!(p.last_stable_offset(), 4);
        let log_file = dir_entries_with(&p, "log").pop().expect("one segment");
        store.abandon_without_closing();
        log_file
    };
    // The marker never reached the disk: the crash tore it off.
    let marker_len = txn::encode_control_batch(7, 0, ControlType::Abort, 0, 0).len() as u64;
    let file = fs::OpenOptions::new()
        .write(true)
        .open(&log_file)
        .expect("segment");
    let len = file.metadata().expect("metadata").len();
    file.set_len(len - marker_len).expect("truncate");
    drop(file);

    let store = LogStore::open(dir.path(), quiet()).expect("reopen");
    let p = store.partition("t", 0).expect("partition");
    assert_eq!(p.high_watermark(), 3);
    assert_eq!(
        p.ongoing_transactions(),
        [(7, 1)],
        "the transaction is open again, from its first offset"
    );
    assert_eq!(p.last_stable_offset(), 1);
    assert_eq!(p.aborted_transactions(0, 3), []);
    assert_eq!(read_committed(&p), ["plain-0"]);
    // Its coordinator ends it again: the marker is written anew.
    p.append_marker(7, 0, ControlType::Abort, 0)
        .expect("marker")
        .expect("open again");
    assert_eq!(p.last_stable_offset(), 4);
    assert_eq!(read_committed(&p), ["plain-0"]);
}

/// The partition's files with extension `ext`, sorted.
fn dir_entries_with(p: &Partition, ext: &str) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = fs::read_dir(p.dir())
        .expect("list")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|path| path.extension().is_some_and(|x| x == ext))
        .collect();
    files.sort();
    files
}
