//! DeleteRecords: moves partitions' log start offsets forward (Kafka's
//! `kafka-delete-records`, and what Kafka Streams calls to purge its
//! repartition topics behind committed offsets). Readers lose the records
//! below at once; whole segments below go from the disk.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::{DeleteRecordsRequest, DeleteRecordsResponse};

use crate::blocking::logged_blocking;
use crate::error::code_for;
use crate::topics::Topics;

/// Kafka's "up to the high-water mark" in a DeleteRecords request.
const HIGH_WATERMARK: i64 = -1;

pub(crate) async fn delete_records(
    topics: &Topics,
    req: DeleteRecordsRequest,
    _version: i16,
) -> DeleteRecordsResponse {
    let store = topics.store.clone();
    let results = logged_blocking("delete records", move || {
        req.topics
            .into_iter()
            .map(|topic| {
                let partitions = topic
                    .partitions
                    .iter()
                    .map(|p| {
                        let r = DeleteRecordsPartitionResult::default()
                            .with_partition_index(p.partition_index)
                            .with_low_watermark(-1);
                        let before = match p.offset {
                            HIGH_WATERMARK => None,
                            o if o < 0 => {
                                return r.with_error_code(ResponseError::OffsetOutOfRange.code());
                            }
                            o => Some(o),
                        };
                        match store
                            .partition(topic.name.as_str(), p.partition_index)
                            .and_then(|part| part.delete_records(before))
                        {
                            Ok(low) => r.with_low_watermark(low),
                            Err(e) => {
                                tracing::debug!(
                                    "DeleteRecords {}-{} at {}: {e}",
                                    topic.name.as_str(),
                                    p.partition_index,
                                    p.offset
                                );
                                r.with_error_code(code_for(&e))
                            }
                        }
                    })
                    .collect();
                DeleteRecordsTopicResult::default()
                    .with_name(topic.name)
                    .with_partitions(partitions)
            })
            .collect()
    })
    .await
    .unwrap_or_default();
    DeleteRecordsResponse::default().with_topics(results)
}
