//! One worker's membership in its job's group, over Kafka's classic group
//! protocol (FindCoordinator, JoinGroup, SyncGroup, Heartbeat, LeaveGroup)
//! with Sluice's own protocol type and assignor: the broker — `sluice
//! broker` or any Kafka cluster — coordinates, the elected leader assigns
//! tasks with [`super::assignor`], and every member learns its tasks and
//! the generation it holds them in (what KIP-447's TxnOffsetCommit fences
//! zombies with).
//!
//! Why not librdkafka's consumer group: its assignors are built in (range,
//! round-robin, cooperative-sticky) and cannot carry a worker's tasks and
//! state offsets in their metadata, nor assign stages that are not topic
//! partitions; Kafka Streams has its own assignor on top of the Java
//! consumer for the same reason.
//!
//! Owns the coordinator connections, the join/sync dance with its retries,
//! and a heartbeat task that flags when the group rebalances. Never runs
//! tasks or decides what they are: the caller rejoins between batches when
//! [`GroupMember::needs_rejoin`] says so.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::{
    FindCoordinatorRequest, GroupId, HeartbeatRequest, JoinGroupRequest, JoinGroupResponse,
    LeaveGroupRequest, SyncGroupRequest,
};
use kafka_protocol::protocol::StrBytes;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::assignor::{self, MemberView, TaskId};
use super::wire::{Connection, WireError};

/// The group's protocol type: only Sluice workers join such a group.
pub const PROTOCOL_TYPE: &str = "sluice-workers";
/// The assignment protocol (its metadata format's version).
pub const PROTOCOL_NAME: &str = "sluice-tasks-v1";

/// How a worker joins its group.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// `host:port` of any broker of the cluster.
    pub bootstrap: String,
    /// The group: one per job (every worker of the job uses the same).
    pub group: String,
    /// Stable across restarts of this worker (names its local state).
    pub worker_id: String,
    /// Identifies the job's plan: workers of another version of the job
    /// are refused rather than given tasks they would run differently.
    pub job_fingerprint: String,
    /// A worker silent this long is out of the group (Kafka's
    /// `session.timeout.ms`).
    pub session_timeout: Duration,
    /// How long the group waits for members to rejoin in a rebalance
    /// (Kafka's `max.poll.interval.ms` plays this role for consumers).
    pub rebalance_timeout: Duration,
    pub heartbeat_interval: Duration,
    pub request_timeout: Duration,
    /// Standby copies of each stateful task the leader places (the
    /// leader's own setting counts, as in Kafka Streams).
    pub standby_replicas: u32,
}

impl WorkerConfig {
    pub fn new(bootstrap: &str, group: &str, worker_id: &str, job_fingerprint: &str) -> Self {
        WorkerConfig {
            bootstrap: bootstrap.to_string(),
            group: group.to_string(),
            worker_id: worker_id.to_string(),
            job_fingerprint: job_fingerprint.to_string(),
            session_timeout: Duration::from_secs(10),
            rebalance_timeout: Duration::from_secs(60),
            heartbeat_interval: Duration::from_secs(3),
            request_timeout: Duration::from_secs(30),
            standby_replicas: 0,
        }
    }
}

/// What a worker holds locally, reported when it joins.
#[derive(Debug, Clone, Default)]
pub struct LocalTasks {
    /// Tasks it ran in its last generation.
    pub owned: Vec<TaskId>,
    /// Changelog offset its local state of a task has reached.
    pub state: BTreeMap<TaskId, i64>,
}

/// This worker's share of one generation of the group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation {
    pub generation_id: i32,
    pub member_id: String,
    pub leader: bool,
    pub tasks: Vec<TaskId>,
    /// Tasks whose state this worker keeps warm for another's.
    pub standbys: Vec<TaskId>,
}

/// Why a worker is not (or no longer) in its group.
#[derive(Debug, thiserror::Error)]
pub enum WorkersError {
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("group {group}: {api} failed with {error:?}: {hint}")]
    Group {
        group: String,
        api: &'static str,
        error: ResponseError,
        hint: String,
    },
    #[error(
        "group {group} runs job {theirs}, this worker job {ours}: workers of one group must run the same job (stop the old workers first, or use another --workers-group)"
    )]
    JobMismatch {
        group: String,
        ours: String,
        theirs: String,
    },
    #[error("group {group}: {what} did not complete within {timeout:?}: {last}")]
    Timeout {
        group: String,
        what: &'static str,
        timeout: Duration,
        last: String,
    },
}

/// Sent in JoinGroup: who this worker is and what it has.
#[derive(Debug, Serialize, Deserialize)]
struct MemberMetadata {
    worker: String,
    job: String,
    owned: Vec<TaskId>,
    state: Vec<(TaskId, i64)>,
}

/// Sent by the leader in SyncGroup to each member.
#[derive(Debug, Serialize, Deserialize)]
struct AssignmentMessage {
    tasks: Vec<TaskId>,
    #[serde(default)]
    standbys: Vec<TaskId>,
    /// Set instead of tasks when the member may not take part.
    error: Option<AssignmentError>,
}

#[derive(Debug, Serialize, Deserialize)]
enum AssignmentError {
    JobMismatch { group_job: String },
    BadMetadata { reason: String },
}

/// One worker's membership (see the module doc).
pub struct GroupMember {
    config: WorkerConfig,
    tasks: Vec<TaskId>,
    coordinator: Option<Connection>,
    member_id: String,
    generation: Option<Generation>,
    rejoin: Arc<AtomicBool>,
    heartbeat: Option<(JoinHandle<()>, watch::Sender<bool>)>,
}

/// Retriable coordinator errors: find the coordinator again and retry.
fn coordinator_moved(e: ResponseError) -> bool {
    matches!(
        e,
        ResponseError::NotCoordinator
            | ResponseError::CoordinatorNotAvailable
            | ResponseError::CoordinatorLoadInProgress
    )
}

impl GroupMember {
    /// A member that has not joined yet; `tasks` are all the job's tasks
    /// (what the leader assigns when this worker leads).
    pub fn new(config: WorkerConfig, tasks: Vec<TaskId>) -> GroupMember {
        GroupMember {
            config,
            tasks,
            coordinator: None,
            member_id: String::new(),
            generation: None,
            rejoin: Arc::new(AtomicBool::new(true)),
            heartbeat: None,
        }
    }

    /// The generation this worker holds its tasks in, once joined.
    pub fn generation(&self) -> Option<&Generation> {
        self.generation.as_ref()
    }

    /// True when the group is rebalancing or this member fell out of it:
    /// stop the tasks at a batch boundary and [`GroupMember::join`] again.
    pub fn needs_rejoin(&self) -> bool {
        self.rejoin.load(Ordering::Acquire)
    }

    /// Makes [`GroupMember::needs_rejoin`] true: the worker lost a task
    /// it thought it had and must learn the current assignment.
    pub fn request_rejoin(&self) {
        self.rejoin.store(true, Ordering::Release);
    }

    fn client_id(&self) -> String {
        format!("sluice-worker-{}", self.config.worker_id)
    }

    fn group_error(&self, api: &'static str, error: ResponseError, hint: &str) -> WorkersError {
        WorkersError::Group {
            group: self.config.group.clone(),
            api,
            error,
            hint: hint.to_string(),
        }
    }

    /// Connects to the group's coordinator (asking the bootstrap broker
    /// where it is).
    async fn coordinator(&mut self) -> Result<&mut Connection, WorkersError> {
        if self.coordinator.is_none() {
            let conn = find_coordinator(&self.config, &self.client_id()).await?;
            self.coordinator = Some(conn);
        }
        Ok(self.coordinator.as_mut().expect("just connected"))
    }

    /// Joins (or rejoins) the group and returns this worker's tasks for
    /// the new generation. Retries what Kafka says is retriable until the
    /// rebalance timeout; heartbeats run again once it returns.
    pub async fn join(&mut self, local: &LocalTasks) -> Result<Generation, WorkersError> {
        self.stop_heartbeats().await;
        self.rejoin.store(true, Ordering::Release);
        let timeout = self.config.rebalance_timeout + self.config.request_timeout;
        let deadline = Instant::now() + timeout;
        let mut last = String::from("nothing tried yet");
        while Instant::now() < deadline {
            match self.try_join(local).await {
                Ok(Some(generation)) => {
                    self.generation = Some(generation.clone());
                    self.rejoin.store(false, Ordering::Release);
                    self.start_heartbeats();
                    tracing::info!(
                        group = %self.config.group,
                        generation = generation.generation_id,
                        leader = generation.leader,
                        tasks = %generation.tasks.iter().map(ToString::to_string).collect::<Vec<_>>().join(","),
                        "joined the workers group"
                    );
                    return Ok(generation);
                }
                Ok(None) => last = "the group rebalanced again".into(),
                Err(WorkersError::Wire(e)) => {
                    // The coordinator moved or the connection broke.
                    last = e.to_string();
                    self.coordinator = None;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e),
            }
        }
        Err(WorkersError::Timeout {
            group: self.config.group.clone(),
            what: "joining",
            timeout,
            last,
        })
    }

    /// One JoinGroup + SyncGroup round; `None` when it must be repeated.
    async fn try_join(&mut self, local: &LocalTasks) -> Result<Option<Generation>, WorkersError> {
        let metadata = serde_json::to_vec(&MemberMetadata {
            worker: self.config.worker_id.clone(),
            job: self.config.job_fingerprint.clone(),
            owned: local.owned.clone(),
            state: local.state.iter().map(|(t, o)| (*t, *o)).collect(),
        })
        .expect("metadata serializes");
        let req = JoinGroupRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(self.config.group.clone())))
            .with_session_timeout_ms(millis(self.config.session_timeout))
            .with_rebalance_timeout_ms(millis(self.config.rebalance_timeout))
            .with_member_id(StrBytes::from_string(self.member_id.clone()))
            .with_protocol_type(StrBytes::from_static_str(PROTOCOL_TYPE))
            .with_protocols(vec![
                JoinGroupRequestProtocol::default()
                    .with_name(StrBytes::from_static_str(PROTOCOL_NAME))
                    .with_metadata(Bytes::from(metadata)),
            ]);
        let timeout = self.config.rebalance_timeout + self.config.request_timeout;
        let conn = self.coordinator().await?;
        let version = conn.version::<JoinGroupRequest>((2, 9))?;
        let resp = conn.call(&req, version, timeout).await?;
        match ResponseError::try_from_code(resp.error_code) {
            None => {}
            Some(ResponseError::MemberIdRequired) => {
                self.member_id = resp.member_id.to_string();
                return Ok(None);
            }
            Some(ResponseError::UnknownMemberId) => {
                self.member_id.clear();
                return Ok(None);
            }
            Some(ResponseError::RebalanceInProgress) => return Ok(None),
            Some(e) if coordinator_moved(e) => {
                self.coordinator = None;
                tokio::time::sleep(Duration::from_millis(100)).await;
                return Ok(None);
            }
            Some(e @ ResponseError::InconsistentGroupProtocol) => {
                return Err(self.group_error(
                    "JoinGroup",
                    e,
                    "the group is used by clients that are not Sluice workers of this version (pick another --workers-group)",
                ));
            }
            Some(e) => return Err(self.group_error("JoinGroup", e, "cannot join")),
        }
        self.member_id = resp.member_id.to_string();
        let leader = resp.leader == resp.member_id;
        let assignments = if leader {
            self.assign(&resp)
        } else {
            Vec::new()
        };
        let sync = SyncGroupRequest::default()
            .with_group_id(GroupId(StrBytes::from_string(self.config.group.clone())))
            .with_generation_id(resp.generation_id)
            .with_member_id(resp.member_id.clone())
            .with_protocol_type(Some(StrBytes::from_static_str(PROTOCOL_TYPE)))
            .with_protocol_name(Some(StrBytes::from_static_str(PROTOCOL_NAME)))
            .with_assignments(assignments);
        let request_timeout = timeout;
        let conn = self.coordinator().await?;
        let version = conn.version::<SyncGroupRequest>((1, 5))?;
        let synced = conn.call(&sync, version, request_timeout).await?;
        match ResponseError::try_from_code(synced.error_code) {
            None => {}
            Some(ResponseError::RebalanceInProgress) | Some(ResponseError::IllegalGeneration) => {
                return Ok(None);
            }
            Some(ResponseError::UnknownMemberId) => {
                self.member_id.clear();
                return Ok(None);
            }
            Some(e) if coordinator_moved(e) => {
                self.coordinator = None;
                return Ok(None);
            }
            Some(e) => return Err(self.group_error("SyncGroup", e, "cannot get an assignment")),
        }
        let message: AssignmentMessage =
            serde_json::from_slice(&synced.assignment).map_err(|e| {
                self.group_error(
                    "SyncGroup",
                    ResponseError::InconsistentGroupProtocol,
                    &format!("the leader's assignment is unreadable: {e}"),
                )
            })?;
        match message.error {
            None => Ok(Some(Generation {
                generation_id: resp.generation_id,
                member_id: self.member_id.clone(),
                leader,
                tasks: message.tasks,
                standbys: message.standbys,
            })),
            Some(AssignmentError::JobMismatch { group_job }) => Err(WorkersError::JobMismatch {
                group: self.config.group.clone(),
                ours: self.config.job_fingerprint.clone(),
                theirs: group_job,
            }),
            Some(AssignmentError::BadMetadata { reason }) => Err(self.group_error(
                "SyncGroup",
                ResponseError::InconsistentGroupProtocol,
                &format!("the leader could not read this worker's metadata: {reason}"),
            )),
        }
    }

    /// The leader's work: every member's tasks from their metadata.
    fn assign(&self, resp: &JoinGroupResponse) -> Vec<SyncGroupRequestAssignment> {
        let mut views = Vec::new();
        let mut refused: Vec<(StrBytes, AssignmentError)> = Vec::new();
        for m in &resp.members {
            match serde_json::from_slice::<MemberMetadata>(&m.metadata) {
                Ok(meta) if meta.job == self.config.job_fingerprint => views.push(MemberView {
                    member_id: m.member_id.to_string(),
                    owned: meta.owned,
                    state: meta.state.into_iter().collect(),
                }),
                Ok(meta) => {
                    tracing::warn!(
                        group = %self.config.group,
                        member = %m.member_id.as_str(),
                        worker = %meta.worker,
                        "refusing a worker of another job ({} here, {} there)",
                        self.config.job_fingerprint,
                        meta.job
                    );
                    refused.push((
                        m.member_id.clone(),
                        AssignmentError::JobMismatch {
                            group_job: self.config.job_fingerprint.clone(),
                        },
                    ));
                }
                Err(e) => refused.push((
                    m.member_id.clone(),
                    AssignmentError::BadMetadata {
                        reason: e.to_string(),
                    },
                )),
            }
        }
        let plan = assignor::assign(&self.tasks, &views);
        // Stage 0 keeps no state; every later stage does.
        let stateful: Vec<TaskId> = self.tasks.iter().copied().filter(|t| t.stage > 0).collect();
        let mut standbys =
            assignor::assign_standbys(&plan, &stateful, &views, self.config.standby_replicas);
        let encode =
            |m: &AssignmentMessage| Bytes::from(serde_json::to_vec(m).expect("serializes"));
        plan.into_iter()
            .map(|(member, tasks)| {
                let standbys = standbys.remove(&member).unwrap_or_default();
                SyncGroupRequestAssignment::default()
                    .with_member_id(StrBytes::from_string(member))
                    .with_assignment(encode(&AssignmentMessage {
                        tasks,
                        standbys,
                        error: None,
                    }))
            })
            .chain(refused.into_iter().map(|(member, error)| {
                SyncGroupRequestAssignment::default()
                    .with_member_id(member)
                    .with_assignment(encode(&AssignmentMessage {
                        tasks: Vec::new(),
                        standbys: Vec::new(),
                        error: Some(error),
                    }))
            }))
            .collect()
    }

    fn start_heartbeats(&mut self) {
        let Some(generation) = self.generation.clone() else {
            return;
        };
        let (stop_tx, stop) = watch::channel(false);
        let task = tokio::spawn(heartbeat_loop(
            self.config.clone(),
            self.client_id(),
            generation,
            self.rejoin.clone(),
            stop,
        ));
        self.heartbeat = Some((task, stop_tx));
    }

    async fn stop_heartbeats(&mut self) {
        if let Some((task, stop)) = self.heartbeat.take() {
            let _ = stop.send(true);
            let _ = task.await;
        }
    }

    /// Leaves the group at once (its tasks move without waiting for the
    /// session timeout). Best effort: a worker that cannot reach the
    /// coordinator is dropped by the session timeout anyway.
    pub async fn leave(&mut self) {
        self.stop_heartbeats().await;
        if self.member_id.is_empty() {
            return;
        }
        let member_id = StrBytes::from_string(std::mem::take(&mut self.member_id));
        let group = GroupId(StrBytes::from_string(self.config.group.clone()));
        let timeout = self.config.request_timeout;
        let Ok(conn) = self.coordinator().await else {
            return;
        };
        let Ok(version) = conn.version::<LeaveGroupRequest>((1, 5)) else {
            return;
        };
        let req = if version >= 3 {
            LeaveGroupRequest::default()
                .with_group_id(group)
                .with_members(vec![MemberIdentity::default().with_member_id(member_id)])
        } else {
            LeaveGroupRequest::default()
                .with_group_id(group)
                .with_member_id(member_id)
        };
        if let Err(e) = conn.call(&req, version, timeout).await {
            tracing::warn!(group = %self.config.group, "leaving the group: {e}");
        }
        self.generation = None;
    }
}

impl Drop for GroupMember {
    fn drop(&mut self) {
        if let Some((task, _)) = self.heartbeat.take() {
            task.abort();
        }
    }
}

fn millis(d: Duration) -> i32 {
    i32::try_from(d.as_millis()).unwrap_or(i32::MAX)
}

/// Asks the bootstrap broker for the group's coordinator and connects to it.
async fn find_coordinator(
    config: &WorkerConfig,
    client_id: &str,
) -> Result<Connection, WorkersError> {
    let timeout = config.request_timeout;
    let mut boot = Connection::connect(&config.bootstrap, client_id, timeout).await?;
    let version = boot.version::<FindCoordinatorRequest>((1, 6))?;
    let group = StrBytes::from_string(config.group.clone());
    let req = if version >= 4 {
        FindCoordinatorRequest::default()
            .with_key_type(0)
            .with_coordinator_keys(vec![group])
    } else {
        FindCoordinatorRequest::default()
            .with_key_type(0)
            .with_key(group)
    };
    let resp = boot.call(&req, version, timeout).await?;
    let (code, host, port, message) = match resp.coordinators.first() {
        Some(c) if version >= 4 => (
            c.error_code,
            c.host.to_string(),
            c.port,
            c.error_message.clone(),
        ),
        _ => (
            resp.error_code,
            resp.host.to_string(),
            resp.port,
            resp.error_message.clone(),
        ),
    };
    if let Some(e) = ResponseError::try_from_code(code) {
        return Err(WorkersError::Wire(WireError::Connect {
            addr: config.bootstrap.clone(),
            reason: format!(
                "FindCoordinator for group {}: {e:?}{}",
                config.group,
                message.map(|m| format!(" ({m})")).unwrap_or_default()
            ),
        }));
    }
    let addr = format!("{host}:{port}");
    if addr == boot.addr() {
        return Ok(boot);
    }
    Ok(Connection::connect(&addr, client_id, timeout).await?)
}

/// Heartbeats on a connection of its own until stopped; flags a rejoin
/// when the group rebalances or forgot this member.
async fn heartbeat_loop(
    config: WorkerConfig,
    client_id: String,
    generation: Generation,
    rejoin: Arc<AtomicBool>,
    mut stop: watch::Receiver<bool>,
) {
    let mut conn: Option<Connection> = None;
    let mut last_ok = Instant::now();
    let req = HeartbeatRequest::default()
        .with_group_id(GroupId(StrBytes::from_string(config.group.clone())))
        .with_generation_id(generation.generation_id)
        .with_member_id(StrBytes::from_string(generation.member_id.clone()));
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tokio::time::sleep(config.heartbeat_interval) => {}
        }
        if conn.is_none() {
            conn = find_coordinator(&config, &client_id).await.ok();
        }
        let Some(c) = conn.as_mut() else {
            if last_ok.elapsed() > config.session_timeout {
                // The coordinator has surely dropped this member by now.
                rejoin.store(true, Ordering::Release);
            }
            continue;
        };
        let result = match c.version::<HeartbeatRequest>((0, 4)) {
            Ok(v) => c.call(&req, v, config.request_timeout).await,
            Err(e) => Err(e),
        };
        match result {
            Ok(resp) => match ResponseError::try_from_code(resp.error_code) {
                None => last_ok = Instant::now(),
                Some(ResponseError::RebalanceInProgress) => {
                    last_ok = Instant::now();
                    rejoin.store(true, Ordering::Release);
                }
                Some(e) if coordinator_moved(e) => conn = None,
                Some(e) => {
                    tracing::info!(group = %config.group, "heartbeat answered {e:?}: rejoining");
                    rejoin.store(true, Ordering::Release);
                    return;
                }
            },
            Err(e) => {
                tracing::debug!(group = %config.group, "heartbeat failed: {e}");
                conn = None;
            }
        }
    }
}
