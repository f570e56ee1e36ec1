//! OffsetCommit: the bridge between the group coordinator, which stores
//! the offsets, and the log store, which alone knows whether a committed
//! partition exists. The commit is durable (fsynced) before it is
//! answered, so it runs on the blocking pool; a failed task closes the
//! connection.

use std::sync::Arc;

use kafka_protocol::messages::{OffsetCommitRequest, OffsetCommitResponse};

use crate::blocking::run_blocking;
use crate::groups::GroupCoordinator;
use crate::topics::Topics;

pub(crate) async fn offset_commit(
    groups: &Arc<GroupCoordinator>,
    topics: &Topics,
    req: OffsetCommitRequest,
    version: i16,
) -> Result<OffsetCommitResponse, String> {
    let (g, t) = (groups.clone(), topics.clone());
    run_blocking("offset commit", move || {
        let exists = |topic: &str, p: i32| t.store.partition(topic, p).is_ok();
        g.offset_commit(req, version, &exists)
    })
    .await
}
