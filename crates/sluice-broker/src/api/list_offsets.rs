//! ListOffsets: a partition's earliest or latest offset, or the first
//! offset at or after a timestamp (from the log's time index). Reads only;
//! never waits for data. A read_committed client (isolation level 1) sees
//! the last stable offset as "latest", and no offset at or beyond it.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::list_offsets_request::ListOffsetsPartition;
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{ListOffsetsRequest, ListOffsetsResponse};

use crate::blocking::logged_blocking;
use crate::error::code_for;
use crate::topics::Topics;
use sluice_log::log::{LogError, Topic};

/// Kafka's special ListOffsets timestamps.
const LATEST: i64 = -1;
const EARLIEST: i64 = -2;
/// Kafka's isolation level for read_committed consumers.
const READ_COMMITTED: i8 = 1;

pub(crate) async fn list_offsets(
    topics: &Topics,
    req: ListOffsetsRequest,
    version: i16,
) -> ListOffsetsResponse {
    let t = topics.clone();
    let read_committed = req.isolation_level == READ_COMMITTED;
    let listed = logged_blocking("list offsets", move || {
        req.topics
            .into_iter()
            .map(|rt| {
                let topic = t.store.topic(rt.name.as_str());
                let partitions = rt
                    .partitions
                    .iter()
                    .map(|p| list_partition(&topic, p, version, read_committed))
                    .collect();
                ListOffsetsTopicResponse::default()
                    .with_name(rt.name)
                    .with_partitions(partitions)
            })
            .collect()
    })
    .await
    .unwrap_or_default();
    ListOffsetsResponse::default().with_topics(listed)
}

fn list_partition(
    topic: &Result<std::sync::Arc<Topic>, LogError>,
    p: &ListOffsetsPartition,
    version: i16,
    read_committed: bool,
) -> ListOffsetsPartitionResponse {
    let mut r = ListOffsetsPartitionResponse::default()
        .with_partition_index(p.partition_index)
        .with_timestamp(-1)
        .with_offset(-1);
    let partition = match topic {
        Ok(topic) => topic.partition(p.partition_index),
        Err(e) => return r.with_error_code(code_for(e)),
    };
    let partition = match partition {
        Ok(partition) => partition,
        Err(e) => return r.with_error_code(code_for(&e)),
    };
    if version >= 4 {
        r = r.with_leader_epoch(0);
    }
    let end = if read_committed {
        partition.last_stable_offset()
    } else {
        partition.high_watermark()
    };
    match p.timestamp {
        LATEST => r.with_offset(end),
        EARLIEST => r.with_offset(partition.log_start_offset()),
        ts if ts >= 0 => match partition.offset_for_time(ts) {
            Ok(Some((offset, found_ts))) if offset < end => {
                r.with_offset(offset).with_timestamp(found_ts)
            }
            Ok(Some(_)) => r,
            Ok(None) => r,
            Err(e) => r.with_error_code(code_for(&e)),
        },
        _ => r.with_error_code(ResponseError::UnsupportedVersion.code()),
    }
}
