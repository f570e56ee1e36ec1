//! CreatePartitions: grows a topic's partition count (partitions can only
//! be added, never removed), or with `validate_only` checks that it could.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::{CreatePartitionsRequest, CreatePartitionsResponse};

use crate::blocking::logged_blocking;
use crate::error::code_for;
use crate::topics::Topics;
use crate::wire::str_bytes;

pub(crate) async fn create_partitions(
    topics: &Topics,
    req: CreatePartitionsRequest,
    _version: i16,
) -> CreatePartitionsResponse {
    let t = topics.clone();
    let validate_only = req.validate_only;
    let results = logged_blocking("create partitions", move || {
        req.topics
            .into_iter()
            .map(|topic| {
                let r = CreatePartitionsTopicResult::default().with_name(topic.name.clone());
                match grow(&t, &topic, validate_only) {
                    Ok(()) => r,
                    Err((code, message)) => r
                        .with_error_code(code)
                        .with_error_message(Some(str_bytes(message))),
                }
            })
            .collect()
    })
    .await
    .unwrap_or_default();
    CreatePartitionsResponse::default().with_results(results)
}

fn grow(
    topics: &Topics,
    t: &CreatePartitionsTopic,
    validate_only: bool,
) -> Result<(), (i16, String)> {
    let topic = topics
        .store
        .topic(t.name.as_str())
        .map_err(|e| (code_for(&e), e.to_string()))?;
    let current = topic.partition_count() as i32;
    if t.count <= current {
        return Err((
            ResponseError::InvalidPartitions.code(),
            format!(
                "topic {} already has {current} partition(s); the new count must be larger (partitions can only be added)",
                topic.name()
            ),
        ));
    }
    if validate_only {
        return Ok(());
    }
    topics
        .store
        .add_partitions(topic.name(), i64::from(t.count))
        .map_err(|e| (code_for(&e), e.to_string()))?;
    tracing::info!("topic {} grew to {} partitions", topic.name(), t.count);
    Ok(())
}
