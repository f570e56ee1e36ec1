//! DeleteTopics, by name or (v6+) by id. A deleted topic's committed
//! offsets go with it, as in Kafka: the coordinator is told, never left
//! holding offsets for a topic that no longer exists.

use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::{DeleteTopicsRequest, DeleteTopicsResponse, TopicName};
use uuid::Uuid;

use crate::blocking::logged_blocking;
use crate::error::code_for;
use crate::groups::GroupCoordinator;
use crate::topics::Topics;
use crate::wire::{str_bytes, topic_name};

pub(crate) async fn delete_topics(
    topics: &Topics,
    groups: &Arc<GroupCoordinator>,
    req: DeleteTopicsRequest,
    version: i16,
) -> DeleteTopicsResponse {
    // v6 names topics (by name or id) in `topics`; older versions in `topic_names`.
    let targets: Vec<(Option<TopicName>, Uuid)> = if version >= 6 {
        req.topics
            .into_iter()
            .map(|t| (t.name, t.topic_id))
            .collect()
    } else {
        req.topic_names
            .into_iter()
            .map(|n| (Some(n), Uuid::nil()))
            .collect()
    };
    let (t, g) = (topics.clone(), groups.clone());
    let responses = logged_blocking("delete topics", move || {
        targets
            .into_iter()
            .map(|(name, id)| delete_one(&t, &g, name, id, version))
            .collect()
    })
    .await
    .unwrap_or_default();
    DeleteTopicsResponse::default().with_responses(responses)
}

fn delete_one(
    topics: &Topics,
    groups: &GroupCoordinator,
    name: Option<TopicName>,
    id: Uuid,
    version: i16,
) -> DeletableTopicResult {
    let topic = match &name {
        Some(n) => topics.store.topic(n.as_str()).ok(),
        None => topics.by_id(id),
    };
    let mut r = DeletableTopicResult::default().with_name(name.clone());
    if version >= 6 {
        r = r.with_topic_id(id);
    }
    let Some(topic) = topic else {
        let code = if name.is_some() {
            ResponseError::UnknownTopicOrPartition.code()
        } else {
            ResponseError::UnknownTopicId.code()
        };
        return r.with_error_code(code);
    };
    let name = topic.name().to_string();
    if version >= 6 {
        r = r
            .with_name(Some(topic_name(&name)))
            .with_topic_id(topic.id());
    }
    match topics.store.delete_topic(&name) {
        Ok(()) => {
            groups.forget_topic(&name);
            tracing::info!("deleted topic {name}");
            r
        }
        Err(e) => {
            if version >= 5 {
                r = r.with_error_message(Some(str_bytes(e.to_string())));
            }
            r.with_error_code(code_for(&e))
        }
    }
}
