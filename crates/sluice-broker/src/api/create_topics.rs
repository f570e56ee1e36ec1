//! CreateTopics (and its `validate_only` dry run). Replication factors and
//! replica assignments that a single node cannot honour are refused with a
//! message that says why, never silently ignored; a name that appears twice
//! in one request fails both times, as in Kafka.

use std::collections::HashSet;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_topics_request::CreatableTopic;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::{CreateTopicsRequest, CreateTopicsResponse, TopicName};

use crate::blocking::logged_blocking;
use crate::error::code_for;
use crate::state::NODE_ID;
use crate::topics::Topics;
use crate::wire::str_bytes;
use sluice_log::log::{LogError, TopicConfig, validate_topic_name};

/// Kafka's ConfigSource for a default value.
const SOURCE_DEFAULT: i8 = 5;

/// Why one topic of the request is not created: an error code and message.
type Refusal = (i16, String);

pub(crate) async fn create_topics(
    topics: &Topics,
    req: CreateTopicsRequest,
    version: i16,
) -> CreateTopicsResponse {
    let names: Vec<TopicName> = req.topics.iter().map(|t| t.name.clone()).collect();
    let t = topics.clone();
    let results = logged_blocking("create topics", move || create_all(&t, req, version))
        .await
        .unwrap_or_else(|| {
            names
                .into_iter()
                .map(|n| {
                    CreatableTopicResult::default()
                        .with_name(n)
                        .with_error_code(ResponseError::UnknownServerError.code())
                })
                .collect()
        });
    CreateTopicsResponse::default().with_topics(results)
}

fn create_all(
    topics: &Topics,
    req: CreateTopicsRequest,
    version: i16,
) -> Vec<CreatableTopicResult> {
    let mut seen = HashSet::new();
    let duplicated: HashSet<String> = req
        .topics
        .iter()
        .filter(|t| !seen.insert(t.name.as_str().to_string()))
        .map(|t| t.name.as_str().to_string())
        .collect();
    let validate_only = req.validate_only;
    req.topics
        .into_iter()
        .map(|t| {
            let name = t.name.clone();
            let created = if duplicated.contains(name.as_str()) {
                Err((
                    ResponseError::InvalidRequest.code(),
                    format!(
                        "topic {:?} appears more than once in the request",
                        name.as_str()
                    ),
                ))
            } else {
                create_one(topics, &t, validate_only)
            };
            match created {
                Ok((partitions, config)) => {
                    created_result(topics, name, partitions, &config, version)
                }
                Err((code, message)) => {
                    let mut r = CreatableTopicResult::default()
                        .with_name(name)
                        .with_error_code(code);
                    if version >= 1 {
                        r = r.with_error_message(Some(str_bytes(message)));
                    }
                    r
                }
            }
        })
        .collect()
}

/// Checks one topic of the request and creates it (or, `validate_only`,
/// checks that it could be); returns its partition count and config.
fn create_one(
    topics: &Topics,
    t: &CreatableTopic,
    validate_only: bool,
) -> Result<(i64, TopicConfig), Refusal> {
    let name = t.name.as_str();
    let partitions = partition_count(topics, t)?;
    let mut config = TopicConfig::default();
    for c in &t.configs {
        let Some(value) = &c.value else { continue };
        config
            .set(c.name.as_str(), value.as_str())
            .map_err(|e| refusal(&e))?;
    }
    if validate_only {
        validate_topic_name(name)
            .and_then(|_| config.validate())
            .and_then(|_| match topics.store.topic(name) {
                Ok(_) => Err(LogError::TopicExists(name.to_string())),
                Err(_) if partitions < 1 => Err(LogError::InvalidPartitionCount(partitions)),
                Err(_) => Ok(()),
            })
            .map_err(|e| refusal(&e))?;
    } else {
        topics
            .store
            .create_topic(name, partitions, config.clone())
            .map_err(|e| refusal(&e))?;
        tracing::info!("created topic {name} with {partitions} partition(s)");
    }
    Ok((partitions, config))
}

/// The partition count a topic asks for, refusing what one node cannot host.
fn partition_count(topics: &Topics, t: &CreatableTopic) -> Result<i64, Refusal> {
    if t.replication_factor != -1 && t.replication_factor != 1 {
        return Err((
            ResponseError::InvalidReplicationFactor.code(),
            format!(
                "replication factor {} is impossible on a single-node broker; use 1 (or -1 for the default)",
                t.replication_factor
            ),
        ));
    }
    if t.assignments
        .iter()
        .any(|a| a.broker_ids.iter().any(|b| b.0 != NODE_ID))
    {
        return Err((
            ResponseError::InvalidReplicaAssignment.code(),
            format!("replica assignments may only name broker {NODE_ID}"),
        ));
    }
    Ok(if !t.assignments.is_empty() {
        t.assignments.len() as i64
    } else if t.num_partitions == -1 {
        i64::from(topics.default_partitions)
    } else {
        i64::from(t.num_partitions)
    })
}

fn refusal(e: &LogError) -> Refusal {
    (code_for(e), e.to_string())
}

/// The answer for a topic created (or that could be): v5+ echo its
/// partitions and configs, v7+ its id.
fn created_result(
    topics: &Topics,
    name: TopicName,
    partitions: i64,
    config: &TopicConfig,
    version: i16,
) -> CreatableTopicResult {
    let id = topics
        .store
        .topic(name.as_str())
        .map(|t| t.id())
        .unwrap_or_default();
    let mut r = CreatableTopicResult::default().with_name(name);
    if version >= 5 {
        r = r
            .with_num_partitions(partitions as i32)
            .with_replication_factor(1)
            .with_configs(Some(
                config
                    .entries()
                    .into_iter()
                    .map(|(k, v)| {
                        CreatableTopicConfigs::default()
                            .with_name(str_bytes(k))
                            .with_value(Some(str_bytes(v)))
                            .with_config_source(SOURCE_DEFAULT)
                    })
                    .collect(),
            ));
    }
    if version >= 7 {
        r = r.with_topic_id(id);
    }
    r
}
