//! Consumer-group coordinator (temporary compile stub; replaced by the real module).
#![allow(unused)]
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use kafka_protocol::messages::*;

#[derive(Debug, Clone)]
pub struct GroupConfig {
    pub initial_rebalance_delay: Duration,
    pub min_session_timeout: Duration,
    pub max_session_timeout: Duration,
}
impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig { initial_rebalance_delay: Duration::from_secs(3), min_session_timeout: Duration::from_secs(6), max_session_timeout: Duration::from_secs(1800) }
    }
}
#[derive(Debug, thiserror::Error)]
#[error("group error")]
pub struct GroupError;
pub struct GroupCoordinator;
impl GroupCoordinator {
    pub fn open(dir: &Path, config: GroupConfig) -> Result<Arc<GroupCoordinator>, GroupError> { Ok(Arc::new(GroupCoordinator)) }
    pub async fn join_group(&self, req: JoinGroupRequest, version: i16, client_id: &str, client_host: &str) -> JoinGroupResponse { Default::default() }
    pub async fn sync_group(&self, req: SyncGroupRequest, version: i16) -> SyncGroupResponse { Default::default() }
    pub fn heartbeat(&self, req: HeartbeatRequest, version: i16) -> HeartbeatResponse { Default::default() }
    pub fn leave_group(&self, req: LeaveGroupRequest, version: i16) -> LeaveGroupResponse { Default::default() }
    pub fn offset_commit(&self, req: OffsetCommitRequest, version: i16, partition_exists: &dyn Fn(&str, i32) -> bool) -> OffsetCommitResponse { Default::default() }
    pub fn offset_fetch(&self, req: OffsetFetchRequest, version: i16) -> OffsetFetchResponse { Default::default() }
    pub fn list_groups(&self, req: ListGroupsRequest, version: i16) -> ListGroupsResponse { Default::default() }
    pub fn describe_groups(&self, req: DescribeGroupsRequest, version: i16) -> DescribeGroupsResponse { Default::default() }
    pub fn forget_topic(&self, topic: &str) {}
    pub async fn run_timers(self: Arc<Self>, mut shutdown: tokio::sync::watch::Receiver<bool>) { let _ = shutdown.wait_for(|s| *s).await; }
    pub fn close(&self) -> Result<(), GroupError> { Ok(()) }
}
