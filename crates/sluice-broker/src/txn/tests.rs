//! The coordinator against a real store and group coordinator in a
//! temporary directory: the state machine, durability across reopening, a
//! crash between Prepare and Complete, unclaimed open transactions, the
//! timeout, and offsets that only a commit makes visible.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::txn_offset_commit_request::{
    TxnOffsetCommitRequestPartition, TxnOffsetCommitRequestTopic,
};
use kafka_protocol::messages::{
    EndTxnRequest, GroupId, ProducerId, TopicName, TransactionalId, TxnOffsetCommitRequest,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use tempfile::TempDir;

use super::*;
use crate::groups::GroupConfig;
use sluice_log::common::now_ms;
use sluice_log::log::{LogStore, StoreOptions, TopicConfig};

struct Fixture {
    dir: TempDir,
    topics: Topics,
    groups: Arc<GroupCoordinator>,
    ids: Arc<ProducerIds>,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = LogStore::open(
            dir.path().join("data"),
            StoreOptions {
                background: false,
                ..Default::default()
            },
        )
        .expect("store");
        store
            .create_topic("out", 2, TopicConfig::default())
            .expect("topic");
        let groups = GroupCoordinator::open(&dir.path().join("groups"), GroupConfig::default())
            .expect("groups");
        let ids = Arc::new(ProducerIds::open(dir.path()).expect("ids"));
        Fixture {
            topics: Topics::new(store, false, 1),
            groups,
            ids,
            dir,
        }
    }

    fn coordinator(&self, config: TxnConfig) -> Arc<TxnCoordinator> {
        TxnCoordinator::open(
            &self.dir.path().join("transactions"),
            config,
            self.topics.clone(),
            self.groups.clone(),
            self.ids.clone(),
        )
        .expect("coordinator")
    }

    /// Appends a transactional record to `out-p` directly to the store.
    fn append(&self, (pid, epoch): (i64, i16), partition: i32, seq: i32) {
        let record = Record {
            transactional: true,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: pid,
            producer_epoch: epoch,
            timestamp_type: TimestampType::Creation,
            offset: 0,
            sequence: seq,
            timestamp: 1_700_000_000_000,
            key: None,
            value: Some(Bytes::from_static(b"v")),
            headers: Default::default(),
        };
        let mut buf = BytesMut::new();
        RecordBatchEncoder::encode(
            &mut buf,
            [&record],
            &RecordEncodeOptions {
                version: 2,
                compression: Compression::None,
            },
        )
        .expect("encode");
        self.topics
            .store
            .partition("out", partition)
            .expect("partition")
            .append(&mut buf)
            .expect("append");
    }

    fn partition(&self, p: i32) -> Arc<sluice_log::log::Partition> {
        self.topics.store.partition("out", p).expect("partition")
    }
}

fn add_out(
    c: &TxnCoordinator,
    id: &str,
    who: (i64, i16),
    partitions: &[i32],
) -> Result<(), ResponseError> {
    c.add_to_transaction(id, who.0, who.1, ResponseError::ProducerFenced, |m| {
        m.partitions
            .extend(partitions.iter().map(|p| ("out".to_owned(), *p)));
        true
    })
}

fn end(c: &TxnCoordinator, id: &str, who: (i64, i16), commit: bool) -> Result<(), ResponseError> {
    c.end_txn_blocking(
        &EndTxnRequest::default()
            .with_transactional_id(TransactionalId(StrBytes::from_string(id.to_owned())))
            .with_producer_id(ProducerId(who.0))
            .with_producer_epoch(who.1)
            .with_committed(commit),
        3,
    )
}

fn state(c: &TxnCoordinator, id: &str) -> TxnState {
    mutex(&c.get(id).expect("known id")).state
}

#[test]
fn a_transaction_commits_with_markers_and_its_state_is_durable() {
    let f = Fixture::new();
    let c = f.coordinator(TxnConfig::default());
    let me = c.init_producer_id("a", 60_000, None, 4).expect("init");
    assert_eq!(me.1, 0);
    add_out(&c, "a", me, &[0, 1]).expect("add");
    f.append(me, 0, 0);
    f.append(me, 1, 0);
    assert_eq!(f.partition(0).last_stable_offset(), 0);
    end(&c, "a", me, true).expect("commit");
    for p in 0..2 {
        assert_eq!(f.partition(p).high_watermark(), 2, "record and marker");
        assert_eq!(f.partition(p).last_stable_offset(), 2);
    }
    assert_eq!(state(&c, "a"), TxnState::CompleteCommit);
    // A retried EndTxn succeeds; the other ending is refused.
    end(&c, "a", me, true).expect("retried commit");
    assert_eq!(end(&c, "a", me, false), Err(ResponseError::InvalidTxnState));
    c.close().expect("close");

    let c = f.coordinator(TxnConfig::default());
    assert_eq!(state(&c, "a"), TxnState::CompleteCommit);
    let again = c.init_producer_id("a", 60_000, None, 4).expect("init");
    assert_eq!(again, (me.0, 1), "same producer id, next epoch");
    assert_eq!(
        add_out(&c, "a", me, &[0]),
        Err(ResponseError::ProducerFenced)
    );
}

#[test]
fn a_transaction_prepared_before_a_crash_is_finished_on_open() {
    let f = Fixture::new();
    let c = f.coordinator(TxnConfig::default());
    let me = c.init_producer_id("p", 60_000, None, 4).expect("init");
    add_out(&c, "p", me, &[0]).expect("add");
    f.append(me, 0, 0);
    {
        // The crash: PrepareAbort is durable, no marker was written.
        let shared = c.get("p").expect("known");
        let mut meta = mutex(&shared);
        c.prepare(&mut meta, TxnState::PrepareAbort, false)
            .expect("prepare");
    }
    drop(c);
    assert_eq!(f.partition(0).last_stable_offset(), 0, "still open");
    let c = f.coordinator(TxnConfig::default());
    assert_eq!(state(&c, "p"), TxnState::CompleteAbort);
    let p = f.partition(0);
    assert_eq!(p.high_watermark(), 2, "the ABORT marker was written");
    assert_eq!(p.last_stable_offset(), 2);
    assert_eq!(p.aborted_transactions(0, 2).len(), 1);
}

#[test]
fn open_transactions_no_id_claims_are_aborted_on_open() {
    let f = Fixture::new();
    f.append((999, 0), 1, 0);
    assert_eq!(f.partition(1).last_stable_offset(), 0);
    let _c = f.coordinator(TxnConfig::default());
    let p = f.partition(1);
    assert_eq!(p.last_stable_offset(), p.high_watermark());
    assert_eq!(p.aborted_transactions(0, p.high_watermark()).len(), 1);
}

#[test]
fn a_transaction_past_its_timeout_is_aborted_and_its_producer_fenced() {
    let f = Fixture::new();
    let c = f.coordinator(TxnConfig::default());
    assert_eq!(
        c.init_producer_id("t", 16 * 60 * 1000, None, 4),
        Err(ResponseError::InvalidTransactionTimeout)
    );
    let me = c.init_producer_id("t", 1_000, None, 4).expect("init");
    add_out(&c, "t", me, &[0]).expect("add");
    f.append(me, 0, 0);
    assert_eq!(c.check_timeouts(now_ms()), 0, "not yet");
    assert_eq!(c.check_timeouts(now_ms() + 5_000), 1);
    assert_eq!(state(&c, "t"), TxnState::CompleteAbort);
    assert_eq!(f.partition(0).last_stable_offset(), 2);
    assert_eq!(end(&c, "t", me, true), Err(ResponseError::ProducerFenced));
    // An idle id is forgotten after the expiration, durably.
    let expire = TxnConfig {
        id_expiration: std::time::Duration::from_secs(1),
        ..TxnConfig::default()
    };
    drop(c);
    let c = f.coordinator(expire.clone());
    c.check_timeouts(now_ms() + 10_000);
    assert!(c.get("t").is_none());
    drop(c);
    assert!(f.coordinator(expire).get("t").is_none());
}

#[test]
fn offsets_committed_in_a_transaction_appear_only_when_it_commits() {
    let f = Fixture::new();
    let c = f.coordinator(TxnConfig::default());
    let me = c.init_producer_id("o", 60_000, None, 4).expect("init");
    let commit_offsets = |offset: i64| {
        let req = TxnOffsetCommitRequest::default()
            .with_transactional_id(TransactionalId(StrBytes::from_static_str("o")))
            .with_group_id(GroupId(StrBytes::from_static_str("g")))
            .with_producer_id(ProducerId(me.0))
            .with_producer_epoch(me.1)
            .with_generation_id(-1)
            .with_topics(vec![
                TxnOffsetCommitRequestTopic::default()
                    .with_name(TopicName(StrBytes::from_static_str("out")))
                    .with_partitions(vec![
                        TxnOffsetCommitRequestPartition::default()
                            .with_partition_index(0)
                            .with_committed_offset(offset),
                    ]),
            ]);
        c.txn_offset_commit_blocking(&req, 3)
    };
    let add_group = || {
        c.add_to_transaction("o", me.0, me.1, ResponseError::ProducerFenced, |m| {
            m.groups.entry("g".into()).or_default();
            true
        })
    };
    assert_eq!(
        commit_offsets(5),
        vec![vec![ResponseError::InvalidTxnState.code()]]
    );
    add_group().expect("add offsets");
    assert_eq!(commit_offsets(5), vec![vec![0]]);
    assert_eq!(
        f.groups.committed_offset("g", "out", 0),
        None,
        "pending until commit"
    );
    end(&c, "o", me, false).expect("abort");
    assert_eq!(
        f.groups.committed_offset("g", "out", 0),
        None,
        "aborted offsets vanish"
    );
    add_group().expect("add offsets");
    assert_eq!(commit_offsets(7), vec![vec![0]]);
    end(&c, "o", me, true).expect("commit");
    assert_eq!(f.groups.committed_offset("g", "out", 0), Some(7));
}

#[test]
fn a_transaction_is_fsynced_when_one_of_its_partitions_fsyncs_every_append() {
    let f = Fixture::new();
    let mut durable = TopicConfig::default();
    durable.set_flush_policy(sluice_log::log::FlushPolicy::EveryAppend);
    f.topics
        .store
        .create_topic("ledger", 1, durable)
        .expect("topic");
    let c = f.coordinator(TxnConfig::default());
    let mut meta = TxnMeta::new("tx".into(), 7, 60_000, now_ms());
    assert!(
        c.needs_sync(&meta),
        "no partition: producer-id records are fsynced"
    );
    meta.partitions.insert(("out".into(), 0));
    assert!(!c.needs_sync(&meta), "page-cache partitions only");
    meta.partitions.insert(("ledger".into(), 0));
    assert!(c.needs_sync(&meta), "one flush.messages=1 partition");
}
