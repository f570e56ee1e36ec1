//! Coordinator tests through the public API, with short real timeouts.
//! Every response is also encoded at the version it answers, so a field set
//! that the version cannot carry fails here rather than on a client.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_groups_response::DescribedGroup;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::{
    OffsetFetchRequestGroup, OffsetFetchRequestTopic, OffsetFetchRequestTopics,
};
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    ApiKey, DescribeGroupsRequest, GroupId, HeartbeatRequest, JoinGroupRequest, JoinGroupResponse,
    LeaveGroupRequest, ListGroupsRequest, OffsetCommitRequest, OffsetFetchRequest,
    SyncGroupRequest, SyncGroupResponse, TopicName,
};
use kafka_protocol::protocol::{Encodable, StrBytes};
use tempfile::TempDir;
use tokio::sync::watch;

use super::describe::GROUP_AUTHORIZED_OPERATIONS;
use super::offset_commit::MAX_METADATA_BYTES;
use super::*;

const NONE: i16 = 0;

fn code(e: ResponseError) -> i16 {
    e.code()
}

fn s(v: &str) -> StrBytes {
    StrBytes::from_string(v.to_owned())
}

fn gid(v: &str) -> GroupId {
    GroupId(s(v))
}

fn config() -> GroupConfig {
    GroupConfig {
        initial_rebalance_delay: Duration::ZERO,
        min_session_timeout: Duration::from_millis(10),
        max_session_timeout: Duration::from_secs(60),
    }
}

fn encodes<T: Encodable>(msg: &T, version: i16) {
    let mut buf = BytesMut::new();
    if let Err(e) = msg.encode(&mut buf, version) {
        panic!(
            "response does not encode at v{version}: {e}\n{:?}",
            std::any::type_name::<T>()
        );
    }
}

/// A coordinator in a temp dir with its timer task running.
struct Harness {
    _dir: TempDir,
    c: Arc<GroupCoordinator>,
    _shutdown: watch::Sender<bool>,
}

fn harness(config: GroupConfig) -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = GroupCoordinator::open(&dir.path().join("groups"), config).expect("open");
    let (tx, rx) = watch::channel(false);
    tokio::spawn(c.clone().run_timers(rx));
    Harness {
        _dir: dir,
        c,
        _shutdown: tx,
    }
}

/// Fails the test instead of hanging when a waiting request never returns.
async fn within<T>(f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), f)
        .await
        .expect("request did not complete within 5 s")
}

struct JoinArgs<'a> {
    group: &'a str,
    member: &'a str,
    session_ms: i32,
    rebalance_ms: i32,
    protocol_type: &'a str,
    protocols: Vec<(&'a str, &'a [u8])>,
}

fn args<'a>(group: &'a str, member: &'a str) -> JoinArgs<'a> {
    JoinArgs {
        group,
        member,
        session_ms: 10_000,
        rebalance_ms: 10_000,
        protocol_type: "consumer",
        protocols: vec![("range", b"range-meta"), ("roundrobin", b"rr-meta")],
    }
}

fn join_req(a: &JoinArgs) -> JoinGroupRequest {
    JoinGroupRequest::default()
        .with_group_id(gid(a.group))
        .with_member_id(s(a.member))
        .with_session_timeout_ms(a.session_ms)
        .with_rebalance_timeout_ms(a.rebalance_ms)
        .with_protocol_type(s(a.protocol_type))
        .with_protocols(
            a.protocols
                .iter()
                .map(|(n, m)| {
                    JoinGroupRequestProtocol::default()
                        .with_name(s(n))
                        .with_metadata(Bytes::copy_from_slice(m))
                })
                .collect(),
        )
}

async fn join(c: &GroupCoordinator, a: &JoinArgs<'_>, version: i16) -> JoinGroupResponse {
    let r = within(c.join_group(join_req(a), version, "test-client", "/127.0.0.1")).await;
    encodes(&r, version);
    r
}

/// A join from a task of its own, for joins that wait on other members.
fn spawn_join(
    c: &Arc<GroupCoordinator>,
    a: &JoinArgs<'_>,
    version: i16,
) -> tokio::task::JoinHandle<JoinGroupResponse> {
    let c = c.clone();
    let req = join_req(a);
    tokio::spawn(async move {
        let r = within(c.join_group(req, version, "test-client", "/127.0.0.1")).await;
        encodes(&r, version);
        r
    })
}

fn sync_req(
    group: &str,
    generation: i32,
    member: &str,
    assignments: &[(&str, &[u8])],
) -> SyncGroupRequest {
    SyncGroupRequest::default()
        .with_group_id(gid(group))
        .with_generation_id(generation)
        .with_member_id(s(member))
        .with_assignments(
            assignments
                .iter()
                .map(|(m, a)| {
                    SyncGroupRequestAssignment::default()
                        .with_member_id(s(m))
                        .with_assignment(Bytes::copy_from_slice(a))
                })
                .collect(),
        )
}

async fn sync(c: &GroupCoordinator, req: SyncGroupRequest, version: i16) -> SyncGroupResponse {
    let r = within(c.sync_group(req, version)).await;
    encodes(&r, version);
    r
}

fn spawn_sync(
    c: &Arc<GroupCoordinator>,
    req: SyncGroupRequest,
    version: i16,
) -> tokio::task::JoinHandle<SyncGroupResponse> {
    let c = c.clone();
    tokio::spawn(async move {
        let r = within(c.sync_group(req, version)).await;
        encodes(&r, version);
        r
    })
}

fn heartbeat(c: &GroupCoordinator, group: &str, generation: i32, member: &str) -> i16 {
    let version = 4;
    let r = c.heartbeat(
        HeartbeatRequest::default()
            .with_group_id(gid(group))
            .with_generation_id(generation)
            .with_member_id(s(member)),
        version,
    );
    encodes(&r, version);
    r.error_code
}

fn orders_exists(topic: &str, partition: i32) -> bool {
    topic == "orders" && (0..3).contains(&partition)
}

fn commit_req(
    group: &str,
    generation: i32,
    member: &str,
    parts: &[(&str, i32, i64, Option<&str>)],
) -> OffsetCommitRequest {
    let mut topics: Vec<OffsetCommitRequestTopic> = Vec::new();
    for (topic, partition, offset, metadata) in parts {
        let p = OffsetCommitRequestPartition::default()
            .with_partition_index(*partition)
            .with_committed_offset(*offset)
            .with_committed_leader_epoch(7)
            .with_committed_metadata(metadata.map(s));
        match topics.iter_mut().find(|t| t.name.0.as_str() == *topic) {
            Some(t) => t.partitions.push(p),
            None => topics.push(
                OffsetCommitRequestTopic::default()
                    .with_name(TopicName(s(topic)))
                    .with_partitions(vec![p]),
            ),
        }
    }
    OffsetCommitRequest::default()
        .with_group_id(gid(group))
        .with_generation_id_or_member_epoch(generation)
        .with_member_id(s(member))
        .with_topics(topics)
}

/// Commits and returns the error codes in request order.
fn commit(c: &GroupCoordinator, req: OffsetCommitRequest, version: i16) -> Vec<i16> {
    let r = c.offset_commit(req, version, &orders_exists);
    encodes(&r, version);
    r.topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(|p| p.error_code))
        .collect()
}

/// OffsetFetch v1-7: (topic, partition, offset, metadata, error) and the
/// top-level error.
#[allow(clippy::type_complexity)]
fn fetch(
    c: &GroupCoordinator,
    group: &str,
    topics: Option<&[(&str, &[i32])]>,
    version: i16,
) -> (Vec<(String, i32, i64, String, i16)>, i16) {
    let req = OffsetFetchRequest::default()
        .with_group_id(gid(group))
        .with_topics(topics.map(|ts| {
            ts.iter()
                .map(|(t, ps)| {
                    OffsetFetchRequestTopic::default()
                        .with_name(TopicName(s(t)))
                        .with_partition_indexes(ps.to_vec())
                })
                .collect()
        }));
    let r = c.offset_fetch(req, version);
    encodes(&r, version);
    let rows = r
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(move |p| {
                (
                    t.name.0.to_string(),
                    p.partition_index,
                    p.committed_offset,
                    p.metadata
                        .as_ref()
                        .map(|m| m.to_string())
                        .unwrap_or_default(),
                    p.error_code,
                )
            })
        })
        .collect();
    (rows, r.error_code)
}

fn describe(c: &GroupCoordinator, group: &str, version: i16) -> DescribedGroup {
    let r = c.describe_groups(
        DescribeGroupsRequest::default()
            .with_groups(vec![gid(group)])
            .with_include_authorized_operations(version >= 3),
        version,
    );
    encodes(&r, version);
    r.groups.into_iter().next().expect("one group described")
}

fn list(c: &GroupCoordinator, states: &[&str], version: i16) -> Vec<(String, String, String)> {
    let r = c.list_groups(
        ListGroupsRequest::default().with_states_filter(states.iter().map(|x| s(x)).collect()),
        version,
    );
    encodes(&r, version);
    r.groups
        .iter()
        .map(|g| {
            (
                g.group_id.0.to_string(),
                g.protocol_type.to_string(),
                g.group_state.to_string(),
            )
        })
        .collect()
}

/// Joins one member with JoinGroup v3 (no KIP-394 round trip) and syncs it:
/// returns its member id and generation.
async fn lone_stable_member(c: &GroupCoordinator, group: &str) -> (String, i32) {
    let r = join(c, &args(group, ""), 3).await;
    assert_eq!(r.error_code, NONE);
    let id = r.member_id.to_string();
    let a: &[u8] = b"all";
    let sr = sync(c, sync_req(group, r.generation_id, &id, &[(&id, a)]), 3).await;
    assert_eq!(sr.error_code, NONE);
    (id, r.generation_id)
}

/// Two members, A the leader, both synced: (a, b, generation).
async fn two_member_group(
    c: &Arc<GroupCoordinator>,
    group: &str,
    b_args: JoinArgs<'_>,
) -> (String, String, i32) {
    let (a, generation) = lone_stable_member(c, group).await;
    let b_join = spawn_join(c, &JoinArgs { group, ..b_args }, 3);
    // A learns about the rebalance from its heartbeat.
    let deadline = Instant::now() + Duration::from_secs(5);
    while heartbeat(c, group, generation, &a) != code(ResponseError::RebalanceInProgress) {
        assert!(
            Instant::now() < deadline,
            "A never saw REBALANCE_IN_PROGRESS"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let ra = join(c, &args(group, &a), 3).await;
    let rb = b_join.await.expect("join task");
    assert_eq!((ra.error_code, rb.error_code), (NONE, NONE));
    assert_eq!(ra.generation_id, generation + 1);
    assert_eq!(rb.generation_id, generation + 1);
    let b = rb.member_id.to_string();
    let g = ra.generation_id;
    let b_sync = spawn_sync(c, sync_req(group, g, &b, &[]), 3);
    let assignments: [(&str, &[u8]); 2] = [(&a, b"for-a"), (&b, b"for-b")];
    let sa = sync(c, sync_req(group, g, &a, &assignments), 3).await;
    let sb = b_sync.await.expect("sync task");
    assert_eq!(sa.assignment.as_ref(), b"for-a");
    assert_eq!(sb.assignment.as_ref(), b"for-b");
    (a, b, g)
}

// Long: one scenario whose steps build on each other; split, it would not read as one story.
#[tokio::test]
async fn single_member_join_sync_heartbeat_commit_fetch() {
    let h = harness(config());
    let c = &h.c;

    // v4+: the first join only hands out a member id (KIP-394).
    let r = join(c, &args("g", ""), 5).await;
    assert_eq!(r.error_code, code(ResponseError::MemberIdRequired));
    let id = r.member_id.to_string();
    assert!(id.starts_with("test-client-"), "{id}");

    let r = join(c, &args("g", &id), 5).await;
    assert_eq!(r.error_code, NONE);
    assert_eq!(r.generation_id, 1);
    assert_eq!(r.leader.as_str(), id);
    assert_eq!(r.member_id.as_str(), id);
    assert_eq!(r.protocol_name.as_ref().map(|p| p.as_str()), Some("range"));
    assert_eq!(r.members.len(), 1);
    assert_eq!(r.members[0].metadata.as_ref(), b"range-meta");
    assert_eq!(
        describe(c, "g", 5).group_state.as_str(),
        "CompletingRebalance"
    );

    // Heartbeats between join and sync are fine.
    assert_eq!(heartbeat(c, "g", 1, &id), NONE);

    let a: &[u8] = b"partitions 0-2";
    let sr = sync(
        c,
        sync_req("g", 1, &id, &[(&id, a)])
            .with_protocol_type(Some(s("consumer")))
            .with_protocol_name(Some(s("range"))),
        5,
    )
    .await;
    assert_eq!(sr.error_code, NONE);
    assert_eq!(sr.assignment.as_ref(), a);
    assert_eq!(sr.protocol_name.as_ref().map(|p| p.as_str()), Some("range"));
    assert_eq!(
        sr.protocol_type.as_ref().map(|p| p.as_str()),
        Some("consumer")
    );

    assert_eq!(heartbeat(c, "g", 1, &id), NONE);

    // A repeated sync in Stable returns the assignment again.
    let sr = sync(c, sync_req("g", 1, &id, &[]), 5).await;
    assert_eq!(sr.assignment.as_ref(), a);

    let errors = commit(
        c,
        commit_req(
            "g",
            1,
            &id,
            &[("orders", 0, 42, Some("m0")), ("orders", 2, 7, None)],
        ),
        8,
    );
    assert_eq!(errors, vec![NONE, NONE]);

    let (rows, top) = fetch(c, "g", Some(&[("orders", &[0, 1, 2])]), 7);
    assert_eq!(top, NONE);
    assert_eq!(
        rows,
        vec![
            ("orders".into(), 0, 42, "m0".into(), NONE),
            ("orders".into(), 1, -1, "".into(), NONE),
            ("orders".into(), 2, 7, "".into(), NONE),
        ]
    );
    // v5+ carries the leader epoch.
    let r = c.offset_fetch(
        OffsetFetchRequest::default()
            .with_group_id(gid("g"))
            .with_topics(Some(vec![
                OffsetFetchRequestTopic::default()
                    .with_name(TopicName(s("orders")))
                    .with_partition_indexes(vec![0]),
            ])),
        5,
    );
    assert_eq!(r.topics[0].partitions[0].committed_leader_epoch, 7);
    // Null topics: everything the group committed.
    let (rows, _) = fetch(c, "g", None, 2);
    assert_eq!(
        rows.iter().map(|r| (r.1, r.2)).collect::<Vec<_>>(),
        vec![(0, 42), (2, 7)]
    );
    // v1 still answers per partition.
    let (rows, _) = fetch(c, "g", Some(&[("orders", &[0])]), 1);
    assert_eq!(rows[0].2, 42);

    // v8: a groups array.
    let r = c.offset_fetch(
        OffsetFetchRequest::default().with_groups(vec![
            OffsetFetchRequestGroup::default()
                .with_group_id(gid("g"))
                .with_topics(Some(vec![
                    OffsetFetchRequestTopics::default()
                        .with_name(TopicName(s("orders")))
                        .with_partition_indexes(vec![0, 1]),
                ])),
            OffsetFetchRequestGroup::default()
                .with_group_id(gid("g"))
                .with_topics(None),
            OffsetFetchRequestGroup::default().with_group_id(gid("")),
        ]),
        8,
    );
    encodes(&r, 8);
    assert_eq!(r.groups.len(), 3);
    let offsets: Vec<i64> = r.groups[0].topics[0]
        .partitions
        .iter()
        .map(|p| p.committed_offset)
        .collect();
    assert_eq!(offsets, vec![42, -1]);
    assert_eq!(r.groups[1].topics[0].partitions.len(), 2);
    assert_eq!(r.groups[2].error_code, code(ResponseError::InvalidGroupId));

    let d = describe(c, "g", 5);
    assert_eq!(d.error_code, NONE);
    assert_eq!(d.group_state.as_str(), "Stable");
    assert_eq!(d.protocol_type.as_str(), "consumer");
    assert_eq!(d.protocol_data.as_str(), "range");
    assert_eq!(d.members.len(), 1);
    assert_eq!(d.members[0].member_id.as_str(), id);
    assert_eq!(d.members[0].member_metadata.as_ref(), b"range-meta");
    assert_eq!(d.members[0].member_assignment.as_ref(), a);
    assert_eq!(d.authorized_operations, GROUP_AUTHORIZED_OPERATIONS);

    assert_eq!(
        list(c, &[], 4),
        vec![("g".into(), "consumer".into(), "Stable".into())]
    );
}

// Long: one scenario whose steps build on each other; split, it would not read as one story.
#[tokio::test]
async fn second_member_rebalances_and_leader_assignment_reaches_both() {
    let h = harness(config());
    let c = &h.c;
    let (a, generation) = lone_stable_member(c, "g").await;
    assert_eq!(generation, 1);

    // B prefers roundrobin, A range: A (first member) breaks the tie.
    let b_args = JoinArgs {
        protocols: vec![("roundrobin", b"rr-b"), ("range", b"range-b")],
        ..args("g", "")
    };
    let b_join = spawn_join(c, &b_args, 3);
    let deadline = Instant::now() + Duration::from_secs(5);
    while heartbeat(c, "g", 1, &a) != code(ResponseError::RebalanceInProgress) {
        assert!(
            Instant::now() < deadline,
            "A never saw REBALANCE_IN_PROGRESS"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        describe(c, "g", 0).group_state.as_str(),
        "PreparingRebalance"
    );
    // Syncing the old generation now is refused.
    let sr = sync(c, sync_req("g", 1, &a, &[]), 0).await;
    assert_eq!(sr.error_code, code(ResponseError::RebalanceInProgress));

    let ra = join(c, &args("g", &a), 3).await;
    let rb = b_join.await.expect("join task");
    assert_eq!((ra.error_code, rb.error_code), (NONE, NONE));
    assert_eq!((ra.generation_id, rb.generation_id), (2, 2));
    assert_eq!(ra.leader.as_str(), a);
    assert_eq!(rb.leader.as_str(), a);
    let b = rb.member_id.to_string();
    assert_ne!(a, b);
    let b_rejoin = JoinArgs {
        protocols: b_args.protocols.clone(),
        ..args("g", &b)
    };
    assert_eq!(ra.protocol_name.as_ref().map(|p| p.as_str()), Some("range"));
    // Only the leader gets the member list, with each member's metadata.
    assert!(rb.members.is_empty());
    let members: Vec<(String, Vec<u8>)> = ra
        .members
        .iter()
        .map(|m| (m.member_id.to_string(), m.metadata.to_vec()))
        .collect();
    assert_eq!(
        members,
        vec![
            (a.clone(), b"range-meta".to_vec()),
            (b.clone(), b"range-b".to_vec())
        ]
    );

    // A repeated join with unchanged metadata while CompletingRebalance
    // repeats the generation instead of starting another rebalance.
    let again = join(c, &b_rejoin, 3).await;
    assert_eq!((again.error_code, again.generation_id), (NONE, 2));
    // Committing before the assignment arrived: Kafka says rebalance.
    let errors = commit(c, commit_req("g", 2, &b, &[("orders", 0, 1, None)]), 8);
    assert_eq!(errors, vec![code(ResponseError::RebalanceInProgress)]);

    // The follower's sync waits for the leader's.
    let b_sync = spawn_sync(c, sync_req("g", 2, &b, &[]), 3);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(
        !b_sync.is_finished(),
        "follower sync returned before the leader's"
    );
    let assignments: [(&str, &[u8]); 2] = [(&a, b"p0"), (&b, b"p1 p2")];
    let sa = sync(c, sync_req("g", 2, &a, &assignments), 3).await;
    let sb = b_sync.await.expect("sync task");
    assert_eq!((sa.error_code, sb.error_code), (NONE, NONE));
    assert_eq!(sa.assignment.as_ref(), b"p0");
    assert_eq!(sb.assignment.as_ref(), b"p1 p2");
    assert_eq!(heartbeat(c, "g", 2, &a), NONE);
    assert_eq!(heartbeat(c, "g", 2, &b), NONE);
    // The old generation is gone.
    assert_eq!(
        heartbeat(c, "g", 1, &b),
        code(ResponseError::IllegalGeneration)
    );

    // A follower rejoining with unchanged metadata in Stable just gets the
    // current generation; the leader rejoining starts a rebalance.
    let again = join(c, &b_rejoin, 3).await;
    assert_eq!((again.error_code, again.generation_id), (NONE, 2));
    assert_eq!(describe(c, "g", 0).group_state.as_str(), "Stable");
    let leader_rejoin = spawn_join(c, &args("g", &a), 3);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(
        describe(c, "g", 0).group_state.as_str(),
        "PreparingRebalance"
    );
    assert_eq!(
        heartbeat(c, "g", 2, &b),
        code(ResponseError::RebalanceInProgress)
    );
    let rb = join(c, &b_rejoin, 3).await;
    let ra = leader_rejoin.await.expect("join task");
    assert_eq!((ra.generation_id, rb.generation_id), (3, 3));
}

// Long: one scenario whose steps build on each other; split, it would not read as one story.
#[tokio::test]
async fn leave_rebalances_the_remaining_member_and_the_last_leave_empties_the_group() {
    let h = harness(config());
    let c = &h.c;
    let (a, b, generation) = two_member_group(c, "g", args("g", "")).await;

    // v0: a single member id.
    let r = c.leave_group(
        LeaveGroupRequest::default()
            .with_group_id(gid("g"))
            .with_member_id(s(&a)),
        0,
    );
    encodes(&r, 0);
    assert_eq!(r.error_code, NONE);
    assert_eq!(
        heartbeat(c, "g", generation, &a),
        code(ResponseError::UnknownMemberId)
    );
    assert_eq!(
        heartbeat(c, "g", generation, &b),
        code(ResponseError::RebalanceInProgress)
    );
    let rb = join(c, &args("g", &b), 3).await;
    assert_eq!(rb.error_code, NONE);
    assert_eq!(rb.generation_id, generation + 1);
    // The leader left: B leads now.
    assert_eq!(rb.leader.as_str(), b);
    assert_eq!(rb.members.len(), 1);

    // v3: a members array with an answer per member.
    let r = c.leave_group(
        LeaveGroupRequest::default()
            .with_group_id(gid("g"))
            .with_members(vec![
                MemberIdentity::default().with_member_id(s(&b)),
                MemberIdentity::default().with_member_id(s("nobody")),
            ]),
        3,
    );
    encodes(&r, 3);
    assert_eq!(r.error_code, NONE);
    let answers: Vec<(String, i16)> = r
        .members
        .iter()
        .map(|m| (m.member_id.to_string(), m.error_code))
        .collect();
    assert_eq!(
        answers,
        vec![
            (b.clone(), NONE),
            ("nobody".into(), code(ResponseError::UnknownMemberId))
        ]
    );
    let d = describe(c, "g", 0);
    assert_eq!(d.group_state.as_str(), "Empty");
    assert!(d.members.is_empty());

    // Leaving a group that does not exist.
    let r = c.leave_group(
        LeaveGroupRequest::default()
            .with_group_id(gid("nope"))
            .with_member_id(s("x")),
        1,
    );
    encodes(&r, 1);
    assert_eq!(r.error_code, code(ResponseError::UnknownMemberId));
    let r = c.leave_group(
        LeaveGroupRequest::default()
            .with_group_id(gid("nope"))
            .with_members(vec![MemberIdentity::default().with_member_id(s("x"))]),
        5,
    );
    encodes(&r, 5);
    assert_eq!(r.error_code, NONE);
    assert_eq!(
        r.members[0].error_code,
        code(ResponseError::UnknownMemberId)
    );
    let r = c.leave_group(
        LeaveGroupRequest::default()
            .with_group_id(gid(""))
            .with_member_id(s("x")),
        2,
    );
    assert_eq!(r.error_code, code(ResponseError::InvalidGroupId));
}

#[tokio::test]
async fn a_silent_member_is_expired_after_its_session_timeout() {
    let h = harness(config());
    let c = &h.c;
    let b_args = JoinArgs {
        session_ms: 300,
        ..args("g", "")
    };
    let (a, b, generation) = two_member_group(c, "g", b_args).await;

    // A keeps heartbeating; B says nothing.
    let start = Instant::now();
    loop {
        let e = heartbeat(c, "g", generation, &a);
        if e == code(ResponseError::RebalanceInProgress) {
            break;
        }
        assert_eq!(e, NONE);
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "B was never expired"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        start.elapsed() >= Duration::from_millis(250),
        "expired too early: {:?}",
        start.elapsed()
    );
    assert_eq!(
        heartbeat(c, "g", generation, &b),
        code(ResponseError::UnknownMemberId)
    );
    let ra = join(c, &args("g", &a), 3).await;
    assert_eq!(ra.generation_id, generation + 1);
    assert_eq!(ra.members.len(), 1);
}

#[tokio::test]
async fn a_member_that_does_not_rejoin_is_removed_at_the_rebalance_timeout() {
    let h = harness(config());
    let c = &h.c;
    let quick = |member| JoinArgs {
        rebalance_ms: 300,
        ..args("g", member)
    };
    let (a, generation) = {
        let r = join(c, &quick(""), 3).await;
        let id = r.member_id.to_string();
        assert_eq!(
            sync(c, sync_req("g", 1, &id, &[]), 3).await.error_code,
            NONE
        );
        (id, r.generation_id)
    };
    // B joins; A, which never heartbeats, does not rejoin in time.
    let start = Instant::now();
    let rb = join(c, &quick(""), 3).await;
    assert!(
        start.elapsed() >= Duration::from_millis(250),
        "join ended early: {:?}",
        start.elapsed()
    );
    assert_eq!(rb.error_code, NONE);
    assert_eq!(rb.generation_id, generation + 1);
    let b = rb.member_id.to_string();
    assert_eq!(rb.leader.as_str(), b);
    assert_eq!(rb.members.len(), 1);
    assert_eq!(
        heartbeat(c, "g", generation, &a),
        code(ResponseError::UnknownMemberId)
    );
}

#[tokio::test]
async fn a_member_that_never_syncs_is_removed_at_the_rebalance_timeout() {
    let h = harness(config());
    let c = &h.c;
    let r = join(
        c,
        &JoinArgs {
            rebalance_ms: 200,
            ..args("g", "")
        },
        3,
    )
    .await;
    let id = r.member_id.to_string();
    // Heartbeats keep the session alive but are no substitute for SyncGroup.
    let start = Instant::now();
    loop {
        let e = heartbeat(c, "g", r.generation_id, &id);
        if e == code(ResponseError::UnknownMemberId) {
            break;
        }
        assert_eq!(e, NONE);
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "member was never removed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(describe(c, "g", 0).group_state.as_str(), "Empty");
}

#[tokio::test]
async fn the_initial_delay_gathers_members_before_the_first_generation() {
    let h = harness(GroupConfig {
        initial_rebalance_delay: Duration::from_millis(200),
        ..config()
    });
    let c = &h.c;
    let start = Instant::now();
    let a = spawn_join(c, &args("g", ""), 3);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let b = spawn_join(c, &args("g", ""), 3);
    let (ra, rb) = (a.await.expect("join"), b.await.expect("join"));
    // B arrived during the delay of a new group, so it was extended once.
    assert!(
        start.elapsed() >= Duration::from_millis(380),
        "ended after {:?}",
        start.elapsed()
    );
    assert_eq!((ra.error_code, rb.error_code), (NONE, NONE));
    assert_eq!((ra.generation_id, rb.generation_id), (1, 1));
    assert_eq!(ra.leader, rb.leader);
    assert_eq!(ra.leader, ra.member_id);
    assert_eq!(ra.members.len(), 2);
}

#[tokio::test]
async fn an_unused_pending_member_id_expires_after_the_session_timeout() {
    let h = harness(config());
    let c = &h.c;
    let r = join(
        c,
        &JoinArgs {
            session_ms: 150,
            ..args("g", "")
        },
        4,
    )
    .await;
    assert_eq!(r.error_code, code(ResponseError::MemberIdRequired));
    // The join phase waits for the pending id until it expires.
    let start = Instant::now();
    let rb = join(c, &args("g", ""), 3).await;
    assert!(
        start.elapsed() >= Duration::from_millis(100),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(
        (rb.error_code, rb.generation_id, rb.members.len()),
        (NONE, 1, 1)
    );
    // The expired id is of no use any more.
    let late = join(c, &args("g", r.member_id.as_str()), 4).await;
    assert_eq!(late.error_code, code(ResponseError::UnknownMemberId));
}

#[tokio::test]
async fn join_errors() {
    let h = harness(config());
    let c = &h.c;
    for version in [0, 4, 7, 9] {
        let r = join(c, &args("", ""), version).await;
        assert_eq!(
            r.error_code,
            code(ResponseError::InvalidGroupId),
            "v{version}"
        );
    }
    let too_short = JoinArgs {
        session_ms: 5,
        ..args("g", "")
    };
    assert_eq!(
        join(c, &too_short, 3).await.error_code,
        code(ResponseError::InvalidSessionTimeout)
    );
    let too_long = JoinArgs {
        session_ms: 61_000,
        ..args("g", "")
    };
    assert_eq!(
        join(c, &too_long, 3).await.error_code,
        code(ResponseError::InvalidSessionTimeout)
    );
    let no_type = JoinArgs {
        protocol_type: "",
        ..args("g", "")
    };
    assert_eq!(
        join(c, &no_type, 3).await.error_code,
        code(ResponseError::InconsistentGroupProtocol)
    );
    let no_protocols = JoinArgs {
        protocols: vec![],
        ..args("g", "")
    };
    assert_eq!(
        join(c, &no_protocols, 3).await.error_code,
        code(ResponseError::InconsistentGroupProtocol)
    );
    // Failed joins do not leave a group behind.
    assert!(list(c, &[], 0).is_empty());
    // A known member id in a group that does not exist.
    assert_eq!(
        join(c, &args("g", "ghost"), 3).await.error_code,
        code(ResponseError::UnknownMemberId)
    );

    let (a, _) = lone_stable_member(c, "g").await;
    let other_type = JoinArgs {
        protocol_type: "connect",
        ..args("g", "")
    };
    assert_eq!(
        join(c, &other_type, 3).await.error_code,
        code(ResponseError::InconsistentGroupProtocol)
    );
    let no_common = JoinArgs {
        protocols: vec![("sticky", b"")],
        ..args("g", "")
    };
    assert_eq!(
        join(c, &no_common, 3).await.error_code,
        code(ResponseError::InconsistentGroupProtocol)
    );
    assert_eq!(
        join(c, &args("g", "ghost"), 3).await.error_code,
        code(ResponseError::UnknownMemberId)
    );
    // None of that disturbed the group.
    assert_eq!(heartbeat(c, "g", 1, &a), NONE);
    assert_eq!(describe(c, "g", 0).group_state.as_str(), "Stable");
}

#[tokio::test]
async fn sync_and_heartbeat_errors() {
    let h = harness(config());
    let c = &h.c;
    assert_eq!(
        sync(c, sync_req("", 1, "m", &[]), 0).await.error_code,
        code(ResponseError::InvalidGroupId)
    );
    assert_eq!(
        sync(c, sync_req("g", 1, "m", &[]), 0).await.error_code,
        code(ResponseError::UnknownMemberId)
    );
    assert_eq!(
        heartbeat(c, "", 1, "m"),
        code(ResponseError::InvalidGroupId)
    );
    assert_eq!(
        heartbeat(c, "g", 1, "m"),
        code(ResponseError::UnknownMemberId)
    );

    let (a, generation) = lone_stable_member(c, "g").await;
    assert_eq!(
        sync(c, sync_req("g", generation, "m", &[]), 1)
            .await
            .error_code,
        code(ResponseError::UnknownMemberId)
    );
    assert_eq!(
        sync(c, sync_req("g", generation + 1, &a, &[]), 2)
            .await
            .error_code,
        code(ResponseError::IllegalGeneration)
    );
    let wrong_protocol =
        sync_req("g", generation, &a, &[]).with_protocol_name(Some(s("roundrobin")));
    assert_eq!(
        sync(c, wrong_protocol, 5).await.error_code,
        code(ResponseError::InconsistentGroupProtocol)
    );
    let wrong_type = sync_req("g", generation, &a, &[]).with_protocol_type(Some(s("connect")));
    assert_eq!(
        sync(c, wrong_type, 5).await.error_code,
        code(ResponseError::InconsistentGroupProtocol)
    );
    assert_eq!(
        heartbeat(c, "g", generation, "m"),
        code(ResponseError::UnknownMemberId)
    );
    assert_eq!(
        heartbeat(c, "g", generation - 1, &a),
        code(ResponseError::IllegalGeneration)
    );
    assert_eq!(heartbeat(c, "g", generation, &a), NONE);

    // Every error response also encodes at every version.
    for version in 0..=5 {
        let r = sync(c, sync_req("", 0, "", &[]), version).await;
        assert_eq!(r.error_code, code(ResponseError::InvalidGroupId));
    }
}

// Long: one scenario whose steps build on each other; split, it would not read as one story.
#[tokio::test]
async fn offset_commit_errors() {
    let h = harness(config());
    let c = &h.c;
    assert_eq!(
        commit(c, commit_req("", -1, "", &[("orders", 0, 1, None)]), 2),
        vec![code(ResponseError::InvalidGroupId)]
    );
    // A generation for a group that does not exist: a zombie.
    assert_eq!(
        commit(c, commit_req("g", 3, "m", &[("orders", 0, 1, None)]), 2),
        vec![code(ResponseError::IllegalGeneration)]
    );
    // A "simple" commit (no group management) creates the group, Empty.
    let big = "x".repeat(MAX_METADATA_BYTES + 1);
    let ok = "y".repeat(MAX_METADATA_BYTES);
    let errors = commit(
        c,
        commit_req(
            "simple",
            -1,
            "",
            &[
                ("orders", 0, 10, Some(ok.as_str())),
                ("orders", 1, 11, Some(big.as_str())),
                ("orders", 9, 12, None),
                ("gone", 0, 13, None),
            ],
        ),
        3,
    );
    assert_eq!(
        errors,
        vec![
            NONE,
            code(ResponseError::OffsetMetadataTooLarge),
            code(ResponseError::UnknownTopicOrPartition),
            code(ResponseError::UnknownTopicOrPartition),
        ]
    );
    let (rows, _) = fetch(c, "simple", None, 3);
    assert_eq!(rows, vec![("orders".into(), 0, 10, ok.clone(), NONE)]);
    assert_eq!(
        list(c, &["empty"], 4),
        vec![("simple".into(), "".into(), "Empty".into())]
    );

    // Once the group has members, only members may commit.
    let (a, generation) = lone_stable_member(c, "g").await;
    let one = [("orders", 0, 5, None)];
    assert_eq!(
        commit(c, commit_req("g", -1, "", &one), 8),
        vec![code(ResponseError::UnknownMemberId)]
    );
    assert_eq!(
        commit(c, commit_req("g", generation, "m", &one), 8),
        vec![code(ResponseError::UnknownMemberId)]
    );
    assert_eq!(
        commit(c, commit_req("g", generation + 1, &a, &one), 8),
        vec![code(ResponseError::IllegalGeneration)]
    );
    assert_eq!(
        commit(c, commit_req("g", generation, &a, &one), 8),
        vec![NONE]
    );
    // Unknown partitions are reported even when the group check fails.
    assert_eq!(
        commit(c, commit_req("g", -1, "", &[("orders", 7, 1, None)]), 8),
        vec![code(ResponseError::UnknownTopicOrPartition)]
    );

    // During PreparingRebalance the old generation may still commit.
    let b = spawn_join(c, &args("g", ""), 3);
    let deadline = Instant::now() + Duration::from_secs(5);
    while describe(c, "g", 0).group_state.as_str() != "PreparingRebalance" {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(
        commit(
            c,
            commit_req("g", generation, &a, &[("orders", 0, 6, None)]),
            8
        ),
        vec![NONE]
    );
    join(c, &args("g", &a), 3).await;
    b.await.expect("join");
    assert_eq!(fetch(c, "g", Some(&[("orders", &[0])]), 6).0[0].2, 6);
}

#[tokio::test]
async fn offset_fetch_for_unknown_and_invalid_groups() {
    let h = harness(config());
    let c = &h.c;
    let (rows, top) = fetch(c, "nobody", Some(&[("orders", &[0, 1])]), 4);
    assert_eq!(top, NONE);
    assert_eq!(
        rows,
        vec![
            ("orders".into(), 0, -1, "".into(), NONE),
            ("orders".into(), 1, -1, "".into(), NONE)
        ]
    );
    assert!(fetch(c, "nobody", None, 7).0.is_empty());
    // v2+: a top-level error; v1: one per partition.
    let (rows, top) = fetch(c, "", Some(&[("orders", &[0])]), 2);
    assert_eq!((rows.len(), top), (0, code(ResponseError::InvalidGroupId)));
    let (rows, _) = fetch(c, "", Some(&[("orders", &[0])]), 1);
    assert_eq!(
        rows,
        vec![(
            "orders".into(),
            0,
            -1,
            "".into(),
            code(ResponseError::InvalidGroupId)
        )]
    );
}

#[tokio::test]
async fn describe_and_list_groups() {
    let h = harness(config());
    let c = &h.c;
    for version in 0..=5 {
        let d = describe(c, "nobody", version);
        assert_eq!(
            (d.error_code, d.group_state.as_str()),
            (NONE, "Dead"),
            "v{version}"
        );
        let d = describe(c, "", version);
        assert_eq!(
            d.error_code,
            code(ResponseError::InvalidGroupId),
            "v{version}"
        );
    }
    lone_stable_member(c, "stable").await;
    commit(
        c,
        commit_req("offsets-only", -1, "", &[("orders", 0, 1, None)]),
        2,
    );
    // "preparing" has a second member joining and A not rejoined yet.
    let (a, _) = lone_stable_member(c, "preparing").await;
    let b = spawn_join(c, &args("preparing", ""), 3);
    let deadline = Instant::now() + Duration::from_secs(5);
    while describe(c, "preparing", 0).group_state.as_str() != "PreparingRebalance" {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let d = describe(c, "preparing", 4);
    // Mid-rebalance: members listed without protocol, metadata or assignment.
    assert_eq!(d.protocol_data.as_str(), "");
    assert!(
        d.members
            .iter()
            .all(|m| m.member_metadata.is_empty() && m.member_assignment.is_empty())
    );

    assert_eq!(
        list(c, &[], 3),
        vec![
            ("offsets-only".into(), "".into(), "".into()),
            ("preparing".into(), "consumer".into(), "".into()),
            ("stable".into(), "consumer".into(), "".into()),
        ]
    );
    assert_eq!(
        list(c, &["STABLE"], 4),
        vec![("stable".into(), "consumer".into(), "Stable".into())]
    );
    assert_eq!(
        list(c, &["PreparingRebalance", "Empty"], 4),
        vec![
            ("offsets-only".into(), "".into(), "Empty".into()),
            (
                "preparing".into(),
                "consumer".into(),
                "PreparingRebalance".into()
            ),
        ]
    );
    let r = c.list_groups(
        ListGroupsRequest::default().with_types_filter(vec![s("consumer")]),
        5,
    );
    encodes(&r, 5);
    assert!(r.groups.is_empty());
    let r = c.list_groups(
        ListGroupsRequest::default().with_types_filter(vec![s("Classic")]),
        5,
    );
    assert_eq!(r.groups.len(), 3);
    assert_eq!(r.groups[0].group_type.as_str(), "classic");
    assert_eq!(join(c, &args("preparing", &a), 3).await.error_code, NONE);
    assert_eq!(b.await.expect("join").error_code, NONE);
}

#[tokio::test]
async fn offsets_survive_reopen_and_deleted_topics_are_forgotten() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("groups");
    {
        let c = GroupCoordinator::open(&path, config()).expect("open");
        let (a, generation) = lone_stable_member(&c, "g").await;
        let both = |t: &str, _: i32| t == "orders" || t == "audit";
        let r = c.offset_commit(
            commit_req(
                "g",
                generation,
                &a,
                &[("orders", 0, 100, Some("meta")), ("audit", 0, 5, None)],
            ),
            8,
            &both,
        );
        assert!(
            r.topics
                .iter()
                .all(|t| t.partitions.iter().all(|p| p.error_code == NONE))
        );
        c.close().expect("close");
        // Closed: commits are refused, not lost silently.
        let r = c.offset_commit(commit_req("g", -1, "", &[("orders", 0, 1, None)]), 8, &both);
        assert_eq!(
            r.topics[0].partitions[0].error_code,
            code(ResponseError::CoordinatorNotAvailable)
        );
    }
    {
        let c = GroupCoordinator::open(&path, config()).expect("reopen");
        let (rows, _) = fetch(&c, "g", None, 7);
        assert_eq!(
            rows,
            vec![
                ("audit".into(), 0, 5, "".into(), NONE),
                ("orders".into(), 0, 100, "meta".into(), NONE)
            ]
        );
        // After a restart the group is Empty: members rejoin, simple commits work.
        assert_eq!(describe(&c, "g", 0).group_state.as_str(), "Empty");
        assert_eq!(
            heartbeat(&c, "g", 1, "anyone"),
            code(ResponseError::UnknownMemberId)
        );
        assert_eq!(
            commit(
                &c,
                commit_req("g", 1, "anyone", &[("orders", 1, 1, None)]),
                8
            ),
            vec![code(ResponseError::UnknownMemberId)]
        );
        c.forget_topic("audit");
        c.forget_topic("never-committed");
    }
    let c = GroupCoordinator::open(&path, config()).expect("reopen");
    let (rows, _) = fetch(&c, "g", None, 7);
    assert_eq!(rows, vec![("orders".into(), 0, 100, "meta".into(), NONE)]);
}

#[tokio::test]
async fn close_answers_waiting_joins() {
    let h = harness(GroupConfig {
        initial_rebalance_delay: Duration::from_secs(30),
        ..config()
    });
    let r = join(&h.c, &args("g", ""), 7).await;
    assert_eq!(r.error_code, code(ResponseError::MemberIdRequired));
    let waiting = spawn_join(&h.c, &args("g", r.member_id.as_str()), 7);
    tokio::time::sleep(Duration::from_millis(20)).await;
    h.c.close().expect("close");
    let r = waiting.await.expect("join");
    assert_eq!(r.error_code, code(ResponseError::CoordinatorNotAvailable));
    assert_eq!(
        join(&h.c, &args("g", ""), 7).await.error_code,
        code(ResponseError::CoordinatorNotAvailable)
    );
}

#[tokio::test]
async fn timers_stop_on_shutdown() {
    let dir = tempfile::tempdir().expect("tempdir");
    let c = GroupCoordinator::open(dir.path(), config()).expect("open");
    let (tx, rx) = watch::channel(false);
    let task = tokio::spawn(c.clone().run_timers(rx));
    tx.send(true).expect("send");
    within(task).await.expect("timer task");
}

#[test]
fn supported_versions_are_within_what_the_protocol_crate_decodes() {
    use kafka_protocol::protocol::Message;
    for (api, min, max) in supported_versions() {
        let range = match api {
            ApiKey::JoinGroup => JoinGroupRequest::VERSIONS,
            ApiKey::SyncGroup => SyncGroupRequest::VERSIONS,
            ApiKey::Heartbeat => HeartbeatRequest::VERSIONS,
            ApiKey::LeaveGroup => LeaveGroupRequest::VERSIONS,
            ApiKey::OffsetCommit => OffsetCommitRequest::VERSIONS,
            ApiKey::OffsetFetch => OffsetFetchRequest::VERSIONS,
            ApiKey::ListGroups => ListGroupsRequest::VERSIONS,
            ApiKey::DescribeGroups => DescribeGroupsRequest::VERSIONS,
            other => panic!("unexpected api {other:?}"),
        };
        assert!(
            range.min <= min && max <= range.max,
            "{api:?} {min}..={max} vs {range:?}"
        );
    }
}

#[tokio::test]
async fn a_second_join_from_a_waiting_member_supersedes_the_first() {
    let h = harness(config());
    let c = &h.c;
    let (a, b, generation) = two_member_group(c, "g", args("g", "")).await;
    let first = spawn_join(c, &args("g", &a), 3);
    tokio::time::sleep(Duration::from_millis(20)).await;
    let second = spawn_join(c, &args("g", &a), 3);
    let first = first.await.expect("join");
    assert_eq!(first.error_code, code(ResponseError::RebalanceInProgress));
    let rb = join(c, &args("g", &b), 3).await;
    let second = second.await.expect("join");
    assert_eq!((rb.error_code, second.error_code), (NONE, NONE));
    assert_eq!(
        (rb.generation_id, second.generation_id),
        (generation + 1, generation + 1)
    );
    assert_eq!(second.members.len(), 2);
}

#[tokio::test]
async fn a_static_member_rejoining_with_its_instance_id_replaces_the_old_one() {
    let h = harness(config());
    let c = &h.c;
    let static_join = |member: &'static str| {
        join_req(&args("g", member)).with_group_instance_id(Some(s("instance-1")))
    };
    // Static members get their id straight away, even on v5.
    let r = within(c.join_group(static_join(""), 5, "test-client", "/127.0.0.1")).await;
    encodes(&r, 5);
    assert_eq!(r.error_code, NONE);
    let old = r.member_id.to_string();
    assert!(old.starts_with("instance-1-"), "{old}");
    assert_eq!(
        r.members[0].group_instance_id.as_ref().map(|i| i.as_str()),
        Some("instance-1")
    );
    assert_eq!(
        sync(c, sync_req("g", 1, &old, &[]), 5).await.error_code,
        NONE
    );

    // The same instance restarts: the old member is fenced out.
    let r = within(c.join_group(static_join(""), 5, "test-client", "/127.0.0.1")).await;
    assert_eq!(r.error_code, NONE);
    let new = r.member_id.to_string();
    assert_ne!(old, new);
    // (Simplified static membership: a rebalance rather than a takeover.)
    let generation = r.generation_id;
    assert!(generation > 1);
    assert_eq!(
        heartbeat(c, "g", generation, &old),
        code(ResponseError::UnknownMemberId)
    );
    let wrong_instance = c.heartbeat(
        HeartbeatRequest::default()
            .with_group_id(gid("g"))
            .with_generation_id(generation)
            .with_member_id(s(&new))
            .with_group_instance_id(Some(s("instance-2"))),
        4,
    );
    assert_eq!(
        wrong_instance.error_code,
        code(ResponseError::FencedInstanceId)
    );

    // v3+ LeaveGroup by instance id alone.
    let r = c.leave_group(
        LeaveGroupRequest::default()
            .with_group_id(gid("g"))
            .with_members(vec![
                MemberIdentity::default().with_group_instance_id(Some(s("instance-1"))),
            ]),
        4,
    );
    encodes(&r, 4);
    assert_eq!(r.members[0].error_code, NONE);
    assert_eq!(describe(c, "g", 4).group_state.as_str(), "Empty");
}
