//! Transactions on the wire, by hand: every refusal Kafka defines for a
//! transactional request (unknown id, stale epoch, wrong producer id,
//! partition not added, timeout above the maximum, ending in the wrong
//! state) gets Kafka's error code and leaves the log and the transaction
//! unchanged; then the state machine through abort, the last stable offset,
//! read_committed fetches with their aborted-transaction list, and the
//! admin APIs.

use std::net::TcpStream;

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::add_partitions_to_txn_request::AddPartitionsToTxnTopic;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::txn_offset_commit_request::{
    TxnOffsetCommitRequestPartition, TxnOffsetCommitRequestTopic,
};
use kafka_protocol::messages::{
    AddOffsetsToTxnRequest, AddOffsetsToTxnResponse, AddPartitionsToTxnRequest,
    AddPartitionsToTxnResponse, ApiKey, BrokerId, DescribeTransactionsRequest,
    DescribeTransactionsResponse, EndTxnRequest, EndTxnResponse, FetchResponse, GroupId,
    InitProducerIdRequest, InitProducerIdResponse, ListOffsetsRequest, ListOffsetsResponse,
    ListTransactionsRequest, ListTransactionsResponse, ProduceRequest, ProduceResponse, ProducerId,
    TransactionalId, TxnOffsetCommitRequest, TxnOffsetCommitResponse,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

use crate::common::broker::TestBroker;
use crate::common::decode_batches;
use crate::protocol::{
    call, connect, create_topic, decode, fetch_request, frame, produce_request, producer_batch,
    topic_name,
};

const INVALID_PRODUCER_EPOCH: i16 = 47;
const INVALID_TXN_STATE: i16 = 48;
const INVALID_PRODUCER_ID_MAPPING: i16 = 49;
const INVALID_TRANSACTION_TIMEOUT: i16 = 50;
const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
const OPERATION_NOT_ATTEMPTED: i16 = 55;
const PRODUCER_FENCED: i16 = 90;
const TRANSACTIONAL_ID_NOT_FOUND: i16 = 105;
const INVALID_RECORD: i16 = 87;

fn txn_id(s: &str) -> TransactionalId {
    TransactionalId(StrBytes::from_string(s.to_owned()))
}

fn init(s: &mut TcpStream, id: &str, timeout_ms: i32) -> InitProducerIdResponse {
    let req = InitProducerIdRequest::default()
        .with_transactional_id(Some(txn_id(id)))
        .with_transaction_timeout_ms(timeout_ms)
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    call(s, ApiKey::InitProducerId, 4, 1, &req)
}

/// AddPartitionsToTxn at `version`; the error code of each partition.
fn add_partitions(
    s: &mut TcpStream,
    version: i16,
    id: &str,
    (producer_id, epoch): (i64, i16),
    topic: &str,
    partitions: &[i32],
) -> Vec<i16> {
    let req = AddPartitionsToTxnRequest::default()
        .with_v3_and_below_transactional_id(txn_id(id))
        .with_v3_and_below_producer_id(ProducerId(producer_id))
        .with_v3_and_below_producer_epoch(epoch)
        .with_v3_and_below_topics(vec![
            AddPartitionsToTxnTopic::default()
                .with_name(topic_name(topic))
                .with_partitions(partitions.to_vec()),
        ]);
    let resp: AddPartitionsToTxnResponse = call(s, ApiKey::AddPartitionsToTxn, version, 2, &req);
    resp.results_by_topic_v3_and_below[0]
        .results_by_partition
        .iter()
        .map(|p| p.partition_error_code)
        .collect()
}

fn end(s: &mut TcpStream, id: &str, (producer_id, epoch): (i64, i16), commit: bool) -> i16 {
    let req = EndTxnRequest::default()
        .with_transactional_id(txn_id(id))
        .with_producer_id(ProducerId(producer_id))
        .with_producer_epoch(epoch)
        .with_committed(commit);
    let resp: EndTxnResponse = call(s, ApiKey::EndTxn, 3, 3, &req);
    resp.error_code
}

/// One transactional batch of `count` records from `sequence`.
fn txn_batch(producer_id: i64, epoch: i16, sequence: i32, count: i32) -> Bytes {
    let values: Vec<String> = (0..count)
        .map(|i| format!("txn {}", sequence + i))
        .collect();
    producer_batch(
        (producer_id, epoch),
        sequence,
        true,
        &values,
        Compression::None,
    )
}

/// Produces a blob with a transactional id; (error code, base offset).
fn produce_txn(
    s: &mut TcpStream,
    id: &str,
    topic: &str,
    partition: i32,
    records: Bytes,
) -> (i16, i64) {
    let req: ProduceRequest =
        produce_request(topic, partition, records, -1).with_transactional_id(Some(txn_id(id)));
    let resp: ProduceResponse = call(s, ApiKey::Produce, 9, 4, &req);
    let p = &resp.responses[0].partition_responses[0];
    (p.error_code, p.base_offset)
}

/// ListOffsets latest of partition 0 at the given isolation level.
fn latest(s: &mut TcpStream, topic: &str, partition: i32, isolation: i8) -> i64 {
    let req = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_isolation_level(isolation)
        .with_topics(vec![
            ListOffsetsTopic::default()
                .with_name(topic_name(topic))
                .with_partitions(vec![
                    ListOffsetsPartition::default()
                        .with_partition_index(partition)
                        .with_timestamp(-1),
                ]),
        ]);
    let resp: ListOffsetsResponse = call(s, ApiKey::ListOffsets, 4, 5, &req);
    let p = &resp.topics[0].partitions[0];
    assert_eq!(p.error_code, 0, "ListOffsets {topic}-{partition}");
    p.offset
}

/// A read_committed fetch from `offset`: (records bytes, last stable
/// offset, aborted transactions as (producer id, first offset)).
fn fetch_committed(
    s: &mut TcpStream,
    topic: &str,
    partition: i32,
    offset: i64,
) -> (Bytes, i64, Vec<(i64, i64)>) {
    let req = fetch_request(topic, partition, offset, 0).with_isolation_level(1);
    let resp: FetchResponse = call(s, ApiKey::Fetch, 12, 6, &req);
    let p = &resp.responses[0].partitions[0];
    assert_eq!(p.error_code, 0, "read_committed fetch {topic}-{partition}");
    let aborted = p
        .aborted_transactions
        .iter()
        .flatten()
        .map(|a| (a.producer_id.0, a.first_offset))
        .collect();
    (
        p.records.clone().unwrap_or_default(),
        p.last_stable_offset,
        aborted,
    )
}

#[test]
fn transactional_requests_are_checked_as_kafka_checks_them() {
    let broker = TestBroker::start();
    let addr = broker.addr();
    create_topic(addr, "txp", 2);
    let mut s = connect(addr);

    // Above the 15-minute default maximum.
    let resp = init(&mut s, "bad-1", 2 * 3600 * 1000);
    assert_eq!(resp.error_code, INVALID_TRANSACTION_TIMEOUT);
    let resp = init(&mut s, "bad-1", 60_000);
    assert_eq!(resp.error_code, 0);
    let me = (resp.producer_id.0, resp.producer_epoch);
    assert_eq!(me.1, 0, "a new transactional id starts at epoch 0");

    // Not added to a transaction: refused, nothing stored.
    assert_eq!(
        produce_txn(&mut s, "bad-1", "txp", 0, txn_batch(me.0, me.1, 0, 2)).0,
        INVALID_TXN_STATE
    );
    assert_eq!(latest(&mut s, "txp", 0, 0), 0);

    // Stale or wrong producer: PRODUCER_FENCED from v2 on, INVALID_PRODUCER_EPOCH before.
    let stale = (me.0, me.1 + 1);
    assert_eq!(
        add_partitions(&mut s, 3, "bad-1", stale, "txp", &[0]),
        vec![PRODUCER_FENCED]
    );
    assert_eq!(
        add_partitions(&mut s, 1, "bad-1", stale, "txp", &[0]),
        vec![INVALID_PRODUCER_EPOCH]
    );
    assert_eq!(
        add_partitions(&mut s, 3, "bad-1", (me.0 + 1, me.1), "txp", &[0]),
        vec![INVALID_PRODUCER_ID_MAPPING]
    );
    assert_eq!(
        add_partitions(&mut s, 3, "never-initialised", me, "txp", &[0]),
        vec![INVALID_PRODUCER_ID_MAPPING]
    );
    // One unknown partition refuses the whole request.
    assert_eq!(
        add_partitions(&mut s, 3, "bad-1", me, "txp", &[0, 9]),
        vec![OPERATION_NOT_ATTEMPTED, UNKNOWN_TOPIC_OR_PARTITION]
    );
    // EndTxn with nothing open.
    assert_eq!(end(&mut s, "bad-1", me, true), INVALID_TXN_STATE);

    assert_eq!(add_partitions(&mut s, 3, "bad-1", me, "txp", &[0]), vec![0]);
    // Partition 1 was not added; a stale epoch is fenced; control batches
    // are never produced.
    assert_eq!(
        produce_txn(&mut s, "bad-1", "txp", 1, txn_batch(me.0, me.1, 0, 2)).0,
        INVALID_TXN_STATE
    );
    assert_eq!(
        produce_txn(&mut s, "bad-1", "txp", 0, txn_batch(me.0, me.1 + 1, 0, 2)).0,
        INVALID_PRODUCER_EPOCH
    );
    let mut control = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut control,
        &[Record {
            transactional: true,
            control: true,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: me.0,
            producer_epoch: me.1,
            timestamp_type: TimestampType::Creation,
            offset: 0,
            sequence: -1,
            timestamp: 1_700_000_000_000,
            key: Some(Bytes::from_static(&[0, 0, 0, 1])),
            value: Some(Bytes::from_static(&[0, 0, 0, 0, 0, 0])),
            headers: Default::default(),
        }],
        &RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        },
    )
    .expect("encode a control batch");
    assert_eq!(
        produce_txn(&mut s, "bad-1", "txp", 0, control.freeze()).0,
        INVALID_RECORD
    );
    assert_eq!(
        latest(&mut s, "txp", 0, 0),
        0,
        "refused appends stored nothing"
    );
    assert_eq!(latest(&mut s, "txp", 1, 0), 0);

    // The open transaction holds the last stable offset at its first record.
    assert_eq!(
        produce_txn(&mut s, "bad-1", "txp", 0, txn_batch(me.0, me.1, 0, 3)),
        (0, 0)
    );
    assert_eq!(latest(&mut s, "txp", 0, 0), 3, "read_uncommitted latest");
    assert_eq!(latest(&mut s, "txp", 0, 1), 0, "read_committed latest");
    let (records, lso, _) = fetch_committed(&mut s, "txp", 0, 0);
    assert!(records.is_empty(), "nothing is committed yet");
    assert_eq!(lso, 0);

    // Offsets without AddOffsetsToTxn are refused.
    let commit_offsets = |s: &mut TcpStream, who: (i64, i16)| -> i16 {
        let req = TxnOffsetCommitRequest::default()
            .with_transactional_id(txn_id("bad-1"))
            .with_group_id(GroupId(StrBytes::from_static_str("g-bad")))
            .with_producer_id(ProducerId(who.0))
            .with_producer_epoch(who.1)
            .with_generation_id(-1)
            .with_topics(vec![
                TxnOffsetCommitRequestTopic::default()
                    .with_name(topic_name("txp"))
                    .with_partitions(vec![
                        TxnOffsetCommitRequestPartition::default()
                            .with_partition_index(1)
                            .with_committed_offset(5)
                            .with_committed_leader_epoch(-1),
                    ]),
            ]);
        let resp: TxnOffsetCommitResponse = call(s, ApiKey::TxnOffsetCommit, 3, 7, &req);
        resp.topics[0].partitions[0].error_code
    };
    assert_eq!(commit_offsets(&mut s, me), INVALID_TXN_STATE);
    let add_offsets = AddOffsetsToTxnRequest::default()
        .with_transactional_id(txn_id("bad-1"))
        .with_producer_id(ProducerId(me.0))
        .with_producer_epoch(me.1)
        .with_group_id(GroupId(StrBytes::from_static_str("g-bad")));
    let resp: AddOffsetsToTxnResponse = call(&mut s, ApiKey::AddOffsetsToTxn, 3, 8, &add_offsets);
    assert_eq!(resp.error_code, 0);
    assert_eq!(commit_offsets(&mut s, me), 0);
    assert_eq!(commit_offsets(&mut s, stale), PRODUCER_FENCED);

    // Admin view of the open transaction.
    let describe = |s: &mut TcpStream, id: &str| {
        let req = DescribeTransactionsRequest::default().with_transactional_ids(vec![txn_id(id)]);
        let resp: DescribeTransactionsResponse = call(s, ApiKey::DescribeTransactions, 0, 9, &req);
        resp.transaction_states[0].clone()
    };
    let open = describe(&mut s, "bad-1");
    assert_eq!(open.error_code, 0);
    assert_eq!(open.transaction_state.as_str(), "Ongoing");
    assert_eq!(open.producer_id.0, me.0);
    assert_eq!(open.topics.len(), 1);
    assert_eq!(open.topics[0].partitions, vec![0]);
    assert_eq!(
        describe(&mut s, "nobody").error_code,
        TRANSACTIONAL_ID_NOT_FOUND
    );

    // Abort: a marker follows the records, the last stable offset passes
    // both, and read_committed fetches name the aborted transaction.
    assert_eq!(
        end(&mut s, "bad-1", (me.0 + 1, me.1), false),
        INVALID_PRODUCER_ID_MAPPING
    );
    assert_eq!(end(&mut s, "bad-1", me, false), 0);
    assert_eq!(
        end(&mut s, "bad-1", me, false),
        0,
        "a retried EndTxn succeeds"
    );
    assert_eq!(end(&mut s, "bad-1", me, true), INVALID_TXN_STATE);
    assert_eq!(latest(&mut s, "txp", 0, 0), 4, "three records and a marker");
    assert_eq!(latest(&mut s, "txp", 0, 1), 4);
    let (records, lso, aborted) = fetch_committed(&mut s, "txp", 0, 0);
    assert_eq!(lso, 4);
    assert_eq!(aborted, vec![(me.0, 0)]);
    let batches = decode_batches(&records, "read_committed fetch after abort");
    assert_eq!(batches.len(), 2, "the data batch and the ABORT marker");
    assert_eq!(
        describe(&mut s, "bad-1").transaction_state.as_str(),
        "CompleteAbort"
    );
    let listed: ListTransactionsResponse = call(
        &mut s,
        ApiKey::ListTransactions,
        1,
        10,
        &ListTransactionsRequest::default()
            .with_state_filters(vec![StrBytes::from_static_str("CompleteAbort")])
            .with_duration_filter(-1),
    );
    assert_eq!(listed.transaction_states.len(), 1);
    assert_eq!(
        listed.transaction_states[0].transactional_id.0.as_str(),
        "bad-1"
    );

    // A new InitProducerId bumps the epoch and fences the old one.
    let again = init(&mut s, "bad-1", 60_000);
    assert_eq!((again.producer_id.0, again.producer_epoch), (me.0, 1));
    assert_eq!(
        add_partitions(&mut s, 3, "bad-1", me, "txp", &[0]),
        vec![PRODUCER_FENCED]
    );
}

/// One request over a connection the broker may drop at any moment (it is
/// being SIGKILLed): `None` when no whole response came back.
fn try_call<Q: kafka_protocol::protocol::Encodable, R: kafka_protocol::protocol::Decodable>(
    s: &mut TcpStream,
    api: ApiKey,
    version: i16,
    body: &Q,
) -> Option<R> {
    use std::io::{Read, Write};
    s.write_all(&frame(api, version, 77, body)).ok()?;
    let mut size = [0u8; 4];
    s.read_exact(&mut size).ok()?;
    let size = i32::from_be_bytes(size);
    assert!(
        (0..64 << 20).contains(&size),
        "implausible response size {size}"
    );
    let mut body = vec![0u8; size as usize];
    s.read_exact(&mut body).ok()?;
    Some(decode(api, version, 77, Bytes::from(body)))
}

/// How a transaction of the storm ended, as far as its client knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Known {
    Committed,
    Aborted,
    /// EndTxn was sent and no answer came back: all or nothing.
    InDoubt,
    /// The broker died before EndTxn was sent: the next producer with the
    /// same id aborts it.
    Open,
}

const STORM_PARTITIONS: i32 = 2;
const STORM_RECORDS: i32 = 3;

/// Runs transactions until the broker dies under them; records how each
/// one ended in `known`, labelled `r{round}t{n}`.
fn storm_round(
    addr: std::net::SocketAddr,
    round: usize,
    rng: &mut rand::rngs::SmallRng,
    known: &mut Vec<(String, Known)>,
) {
    use rand::Rng;
    let Ok(mut s) = TcpStream::connect(addr) else {
        return;
    };
    let _ = s.set_read_timeout(Some(std::time::Duration::from_secs(10)));
    let init_req = InitProducerIdRequest::default()
        .with_transactional_id(Some(txn_id("storm")))
        .with_transaction_timeout_ms(60_000)
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    let Some(resp): Option<InitProducerIdResponse> =
        try_call(&mut s, ApiKey::InitProducerId, 4, &init_req)
    else {
        return;
    };
    assert_eq!(resp.error_code, 0, "InitProducerId after a restart");
    let me = (resp.producer_id.0, resp.producer_epoch);
    let mut sequence = [0i32; STORM_PARTITIONS as usize];
    for n in 0.. {
        let label = format!("r{round}t{n}");
        let add = AddPartitionsToTxnRequest::default()
            .with_v3_and_below_transactional_id(txn_id("storm"))
            .with_v3_and_below_producer_id(ProducerId(me.0))
            .with_v3_and_below_producer_epoch(me.1)
            .with_v3_and_below_topics(vec![
                AddPartitionsToTxnTopic::default()
                    .with_name(topic_name("storm"))
                    .with_partitions((0..STORM_PARTITIONS).collect()),
            ]);
        let Some(added): Option<AddPartitionsToTxnResponse> =
            try_call(&mut s, ApiKey::AddPartitionsToTxn, 3, &add)
        else {
            return;
        };
        assert!(
            added.results_by_topic_v3_and_below[0]
                .results_by_partition
                .iter()
                .all(|p| p.partition_error_code == 0),
            "AddPartitionsToTxn: {added:?}"
        );
        known.push((label.clone(), Known::Open));
        for p in 0..STORM_PARTITIONS {
            let seq = &mut sequence[p as usize];
            let batch = labelled_batch(me, *seq, &label);
            *seq += STORM_RECORDS;
            let req =
                produce_request("storm", p, batch, -1).with_transactional_id(Some(txn_id("storm")));
            let Some(resp): Option<ProduceResponse> = try_call(&mut s, ApiKey::Produce, 9, &req)
            else {
                return;
            };
            assert_eq!(
                resp.responses[0].partition_responses[0].error_code, 0,
                "produce"
            );
        }
        let commit = rng.random_bool(0.5);
        let end_req = EndTxnRequest::default()
            .with_transactional_id(txn_id("storm"))
            .with_producer_id(ProducerId(me.0))
            .with_producer_epoch(me.1)
            .with_committed(commit);
        if let Some(last) = known.last_mut() {
            last.1 = Known::InDoubt;
        }
        let Some(ended): Option<EndTxnResponse> = try_call(&mut s, ApiKey::EndTxn, 3, &end_req)
        else {
            return;
        };
        assert_eq!(ended.error_code, 0, "EndTxn");
        if let Some(last) = known.last_mut() {
            last.1 = if commit {
                Known::Committed
            } else {
                Known::Aborted
            };
        }
    }
}

/// A transactional batch whose records' values are `label/i`.
fn labelled_batch(producer: (i64, i16), sequence: i32, label: &str) -> Bytes {
    let values: Vec<String> = (0..STORM_RECORDS).map(|i| format!("{label}/{i}")).collect();
    producer_batch(producer, sequence, true, &values, Compression::None)
}

#[test]
fn every_transaction_ends_whole_across_repeated_sigkills() {
    use rand::{Rng, SeedableRng};
    let kills: usize = crate::common::env_or("SLUICE_TXN_KILLS", 8);
    let seed = crate::common::crash_seed();
    eprintln!("SLUICE_CRASH_SEED={seed} SLUICE_TXN_KILLS={kills}");
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let mut broker = TestBroker::start();
    create_topic(broker.addr(), "storm", STORM_PARTITIONS);
    let mut known: Vec<(String, Known)> = Vec::new();
    for round in 0..kills {
        let pid = broker.pid().expect("the broker runs") as i32;
        let delay = std::time::Duration::from_millis(rng.random_range(20..400));
        let killer = std::thread::spawn(move || {
            std::thread::sleep(delay);
            // SAFETY: signalling our own child process by its pid.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        });
        storm_round(broker.addr(), round, &mut rng, &mut known);
        killer.join().expect("killer thread");
        broker.kill();
        broker.restart();
    }
    // A last producer with the same id aborts whatever the last crash left
    // open; from then on no transaction is open anywhere.
    let mut s = connect(broker.addr());
    assert_eq!(init(&mut s, "storm", 60_000).error_code, 0);
    let mut seen: std::collections::BTreeMap<String, usize> = Default::default();
    for p in 0..STORM_PARTITIONS {
        assert_eq!(
            latest(&mut s, "storm", p, 1),
            latest(&mut s, "storm", p, 0),
            "partition {p}: the last stable offset must reach the high-water mark"
        );
        for value in committed_values(&mut s, "storm", p) {
            let label = value.split('/').next().unwrap_or_default().to_owned();
            *seen.entry(label).or_default() += 1;
        }
    }
    let whole = (STORM_PARTITIONS * STORM_RECORDS) as usize;
    for (label, how) in &known {
        let count = seen.remove(label).unwrap_or(0);
        match how {
            Known::Committed => assert_eq!(count, whole, "{label} committed: every record once"),
            Known::Aborted | Known::Open => assert_eq!(count, 0, "{label} {how:?}: no record"),
            Known::InDoubt => assert!(
                count == 0 || count == whole,
                "{label} in doubt: {count} records, not all or nothing"
            ),
        }
    }
    assert!(seen.is_empty(), "records of unknown transactions: {seen:?}");
    let committed = known.iter().filter(|(_, k)| *k == Known::Committed).count();
    eprintln!(
        "{} transactions over {kills} SIGKILLs, {committed} committed",
        known.len()
    );
    assert!(
        committed > 0,
        "the storm committed nothing: the test tested nothing"
    );
}

/// The values a read_committed reader of one partition is given, in
/// offset order: fetched with isolation level 1 and filtered by the
/// aborted-transaction list, as Kafka consumers do.
fn committed_values(s: &mut TcpStream, topic: &str, partition: i32) -> Vec<String> {
    let mut out = Vec::new();
    let mut next = 0i64;
    let mut aborted_pids = std::collections::BTreeSet::new();
    loop {
        let (records, lso, aborted) = fetch_committed(s, topic, partition, next);
        if records.is_empty() {
            assert_eq!(next, lso, "an empty read_committed fetch below the LSO");
            return out;
        }
        let mut pending: Vec<(i64, i64)> = aborted;
        pending.sort_by_key(|a| a.1);
        for b in decode_batches(&records, "read_committed storm fetch") {
            let h = &b.header;
            let last = h.last_offset();
            pending.retain(|&(pid, first)| {
                if first <= last {
                    aborted_pids.insert(pid);
                    false
                } else {
                    true
                }
            });
            if h.is_control() {
                aborted_pids.remove(&h.producer_id);
                next = next.max(last + 1);
                continue;
            }
            for r in &b.records {
                let aborted = h.is_transactional() && aborted_pids.contains(&h.producer_id);
                if r.offset >= next && !aborted {
                    out.push(String::from_utf8_lossy(&r.value).into_owned());
                }
            }
            next = next.max(last + 1);
        }
    }
}
