//! Cluster metadata and topic administration: Metadata, CreateTopics,
//! DeleteTopics, CreatePartitions, DescribeConfigs and FindCoordinator.
//!
//! The cluster is this one node: it leads every partition with leader epoch
//! 0, and its replica and ISR sets are `[0]`. Topics carry their stable UUID
//! (Metadata v10+), and requests may address them by id where the protocol
//! allows. Replication factors other than 1 are refused with a message that
//! says why, rather than silently ignored.

use std::sync::Arc;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_partitions_response::CreatePartitionsTopicResult;
use kafka_protocol::messages::create_topics_response::{
    CreatableTopicConfigs, CreatableTopicResult,
};
use kafka_protocol::messages::delete_topics_response::DeletableTopicResult;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::find_coordinator_response::Coordinator;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{
    BrokerId, CreatePartitionsRequest, CreatePartitionsResponse, CreateTopicsRequest,
    CreateTopicsResponse, DeleteTopicsRequest, DeleteTopicsResponse, DescribeConfigsRequest,
    DescribeConfigsResponse, FindCoordinatorRequest, FindCoordinatorResponse, MetadataRequest,
    MetadataResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use uuid::Uuid;

use super::error::code_for;
use super::server::Shared;
use sluice_log::log::{LogError, Topic, TopicConfig, validate_topic_name};

fn name_of(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

fn str_bytes(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

/// Runs blocking store work off the async threads.
async fn blocking<T: Send + 'static>(
    shared: &Arc<Shared>,
    f: impl FnOnce(&Shared) -> T + Send + 'static,
) -> Option<T> {
    let s = shared.clone();
    match tokio::task::spawn_blocking(move || f(&s)).await {
        Ok(v) => Some(v),
        Err(e) => {
            tracing::error!("admin task failed: {e}");
            None
        }
    }
}

pub(crate) fn topic_error_message(e: &LogError) -> String {
    match e {
        LogError::UnknownTopic(name) => format!(
            "unknown topic {name:?}: create it first (sluice topic create, or start the broker with --auto-create-topics)"
        ),
        other => other.to_string(),
    }
}

/// The topic a produce (or metadata) request names, created on the fly when
/// auto-creation is on.
pub(crate) fn resolve_for_write(shared: &Shared, name: &str) -> Result<Arc<Topic>, LogError> {
    match shared.store.topic(name) {
        Ok(t) => Ok(t),
        Err(LogError::UnknownTopic(_)) if shared.config.auto_create_topics => {
            validate_topic_name(name)?;
            match shared.store.create_topic(
                name,
                i64::from(shared.config.default_partitions),
                TopicConfig::default(),
            ) {
                Ok(topic) => {
                    tracing::info!(
                        "auto-created topic {name} with {} partition(s)",
                        shared.config.default_partitions
                    );
                    Ok(topic)
                }
                // Another request created it first.
                Err(LogError::TopicExists(_)) => shared.store.topic(name),
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(e),
    }
}

fn topic_by_id(shared: &Shared, id: Uuid) -> Option<Arc<Topic>> {
    shared.store.topics().into_iter().find(|t| t.id() == id)
}

fn topic_metadata(topic: &Topic, version: i16) -> MetadataResponseTopic {
    let partitions = (0..topic.partition_count() as i32)
        .map(|p| {
            let mut m = MetadataResponsePartition::default()
                .with_partition_index(p)
                .with_leader_id(BrokerId(super::NODE_ID))
                .with_replica_nodes(vec![BrokerId(super::NODE_ID)])
                .with_isr_nodes(vec![BrokerId(super::NODE_ID)]);
            if version >= 7 {
                m = m.with_leader_epoch(0);
            }
            m
        })
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(name_of(topic.name())))
        .with_topic_id(topic.id())
        .with_partitions(partitions)
}

fn topic_error(name: Option<TopicName>, id: Uuid, code: i16) -> MetadataResponseTopic {
    MetadataResponseTopic::default()
        .with_name(name)
        .with_topic_id(id)
        .with_error_code(code)
}

pub(crate) async fn metadata(
    shared: &Arc<Shared>,
    req: MetadataRequest,
    version: i16,
) -> MetadataResponse {
    let topics = blocking(shared, move |s| {
        // v0: an empty list means every topic; v1+: null means every topic.
        let all = match &req.topics {
            None => true,
            Some(t) => t.is_empty() && version == 0,
        };
        if all {
            return s
                .store
                .topics()
                .iter()
                .map(|t| topic_metadata(t, version))
                .collect();
        }
        let auto = version < 4 || req.allow_auto_topic_creation;
        req.topics
            .unwrap_or_default()
            .into_iter()
            .map(|rt| match rt.name {
                Some(name) => {
                    let resolved = if auto {
                        resolve_for_write(s, name.as_str())
                    } else {
                        s.store.topic(name.as_str())
                    };
                    match resolved {
                        Ok(t) => topic_metadata(&t, version),
                        Err(e) => topic_error(Some(name), Uuid::nil(), code_for(&e)),
                    }
                }
                None => match topic_by_id(s, rt.topic_id) {
                    Some(t) => topic_metadata(&t, version),
                    None => topic_error(None, rt.topic_id, ResponseError::UnknownTopicId.code()),
                },
            })
            .collect()
    })
    .await
    .unwrap_or_default();
    let mut resp = MetadataResponse::default()
        .with_brokers(vec![
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(shared.node_id))
                .with_host(str_bytes(shared.advertised_host.clone()))
                .with_port(shared.advertised_port),
        ])
        .with_controller_id(BrokerId(shared.node_id))
        .with_topics(topics);
    if version >= 2 {
        resp = resp.with_cluster_id(Some(str_bytes(shared.cluster_id.clone())));
    }
    resp
}

pub(crate) async fn create_topics(
    shared: &Arc<Shared>,
    req: CreateTopicsRequest,
    version: i16,
) -> CreateTopicsResponse {
    let names: Vec<TopicName> = req.topics.iter().map(|t| t.name.clone()).collect();
    let results = blocking(shared, move |s| {
        let mut seen = std::collections::HashSet::new();
        let duplicated: std::collections::HashSet<String> = req
            .topics
            .iter()
            .filter(|t| !seen.insert(t.name.as_str().to_string()))
            .map(|t| t.name.as_str().to_string())
            .collect();
        req.topics
            .into_iter()
            .map(|t| {
                let name = t.name.as_str().to_string();
                let fail = |code: i16, msg: String| {
                    let mut r = CreatableTopicResult::default()
                        .with_name(t.name.clone())
                        .with_error_code(code);
                    if version >= 1 {
                        r = r.with_error_message(Some(str_bytes(msg)));
                    }
                    r
                };
                if duplicated.contains(&name) {
                    return fail(
                        ResponseError::InvalidRequest.code(),
                        format!("topic {name:?} appears more than once in the request"),
                    );
                }
                if t.replication_factor != -1 && t.replication_factor != 1 {
                    return fail(
                        ResponseError::InvalidReplicationFactor.code(),
                        format!(
                            "replication factor {} is impossible on a single-node broker; use 1 (or -1 for the default)",
                            t.replication_factor
                        ),
                    );
                }
                if t.assignments.iter().any(|a| a.broker_ids.iter().any(|b| b.0 != super::NODE_ID)) {
                    return fail(
                        ResponseError::InvalidReplicaAssignment.code(),
                        format!("replica assignments may only name broker {}", super::NODE_ID),
                    );
                }
                let partitions = if !t.assignments.is_empty() {
                    t.assignments.len() as i64
                } else if t.num_partitions == -1 {
                    i64::from(s.config.default_partitions)
                } else {
                    i64::from(t.num_partitions)
                };
                let mut config = TopicConfig::default();
                for c in &t.configs {
                    let Some(value) = &c.value else { continue };
                    if let Err(e) = config.set(c.name.as_str(), value.as_str()) {
                        return fail(code_for(&e), e.to_string());
                    }
                }
                let created = if req.validate_only {
                    validate_topic_name(&name)
                        .and_then(|_| config.validate())
                        .and_then(|_| match s.store.topic(&name) {
                            Ok(_) => Err(LogError::TopicExists(name.clone())),
                            Err(_) if partitions < 1 => {
                                Err(LogError::InvalidPartitionCount(partitions))
                            }
                            Err(_) => Ok(()),
                        })
                } else {
                    s.store.create_topic(&name, partitions, config.clone()).map(|_| ())
                };
                if let Err(e) = created {
                    return fail(code_for(&e), e.to_string());
                }
                let id = s.store.topic(&name).map(|t| t.id()).unwrap_or_default();
                let mut r = CreatableTopicResult::default().with_name(t.name.clone());
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
                                        .with_config_source(5)
                                })
                                .collect(),
                        ));
                }
                if version >= 7 {
                    r = r.with_topic_id(id);
                }
                if !req.validate_only {
                    tracing::info!("created topic {name} with {partitions} partition(s)");
                }
                r
            })
            .collect()
    })
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

pub(crate) async fn delete_topics(
    shared: &Arc<Shared>,
    req: DeleteTopicsRequest,
    version: i16,
) -> DeleteTopicsResponse {
    let responses = blocking(shared, move |s| {
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
        targets
            .into_iter()
            .map(|(name, id)| {
                let topic = match &name {
                    Some(n) => s.store.topic(n.as_str()).ok(),
                    None => topic_by_id(s, id),
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
                let topic_name = topic.name().to_string();
                if version >= 6 {
                    r = r
                        .with_name(Some(name_of(&topic_name)))
                        .with_topic_id(topic.id());
                }
                match s.store.delete_topic(&topic_name) {
                    Ok(()) => {
                        s.groups.forget_topic(&topic_name);
                        tracing::info!("deleted topic {topic_name}");
                        r
                    }
                    Err(e) => {
                        let code = code_for(&e);
                        if version >= 5 {
                            r = r.with_error_message(Some(str_bytes(e.to_string())));
                        }
                        r.with_error_code(code)
                    }
                }
            })
            .collect()
    })
    .await
    .unwrap_or_default();
    DeleteTopicsResponse::default().with_responses(responses)
}

pub(crate) async fn create_partitions(
    shared: &Arc<Shared>,
    req: CreatePartitionsRequest,
    _version: i16,
) -> CreatePartitionsResponse {
    let results = blocking(shared, move |s| {
        req.topics
            .into_iter()
            .map(|t| {
                let r = CreatePartitionsTopicResult::default().with_name(t.name.clone());
                let fail = |code: i16, msg: String| {
                    r.clone()
                        .with_error_code(code)
                        .with_error_message(Some(str_bytes(msg)))
                };
                let topic = match s.store.topic(t.name.as_str()) {
                    Ok(topic) => topic,
                    Err(e) => return fail(code_for(&e), e.to_string()),
                };
                let current = topic.partition_count() as i32;
                if t.count <= current {
                    return fail(
                        ResponseError::InvalidPartitions.code(),
                        format!(
                            "topic {} already has {current} partition(s); the new count must be larger (partitions can only be added)",
                            topic.name()
                        ),
                    );
                }
                if req.validate_only {
                    return r;
                }
                match s.store.add_partitions(topic.name(), i64::from(t.count)) {
                    Ok(()) => {
                        tracing::info!("topic {} grew to {} partitions", topic.name(), t.count);
                        r
                    }
                    Err(e) => fail(code_for(&e), e.to_string()),
                }
            })
            .collect()
    })
    .await
    .unwrap_or_default();
    CreatePartitionsResponse::default().with_results(results)
}

/// Kafka's ConfigResource types.
const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;
/// Kafka's ConfigSource values.
const SOURCE_TOPIC: i8 = 1;
const SOURCE_STATIC_BROKER: i8 = 4;
const SOURCE_DEFAULT: i8 = 5;
/// Kafka's ConfigType values.
const TYPE_BOOLEAN: i8 = 1;
const TYPE_STRING: i8 = 2;
const TYPE_INT: i8 = 3;
const TYPE_LONG: i8 = 5;

/// Says where a config's value comes from (Kafka's ConfigSource).
type SourceOf = Box<dyn Fn(&str, &str) -> i8>;

fn config_type(name: &str) -> i8 {
    match name {
        "index.interval.bytes" | "max.message.bytes" | "num.partitions" => TYPE_INT,
        "auto.create.topics.enable" => TYPE_BOOLEAN,
        "advertised.listeners" | "log.dirs" | "cleanup.policy" => TYPE_STRING,
        _ => TYPE_LONG,
    }
}

pub(crate) fn describe_configs(
    shared: &Arc<Shared>,
    req: DescribeConfigsRequest,
    version: i16,
) -> DescribeConfigsResponse {
    let results = req
        .resources
        .into_iter()
        .map(|res| {
            let base = DescribeConfigsResult::default()
                .with_resource_type(res.resource_type)
                .with_resource_name(res.resource_name.clone());
            let (entries, source_of): (Vec<(String, String)>, SourceOf) =
                match res.resource_type {
                    RESOURCE_TOPIC => match shared.store.topic(res.resource_name.as_str()) {
                        Ok(t) => {
                            let defaults = TopicConfig::default().entries();
                            let mut entries: Vec<(String, String)> = t
                                .config()
                                .entries()
                                .into_iter()
                                .map(|(k, v)| (k.to_string(), v))
                                .collect();
                            entries.push(("cleanup.policy".into(), "delete".into()));
                            let source = move |k: &str, v: &str| {
                                if defaults.iter().any(|(dk, dv)| *dk == k && dv != v) {
                                    SOURCE_TOPIC
                                } else {
                                    SOURCE_DEFAULT
                                }
                            };
                            (entries, Box::new(source))
                        }
                        Err(e) => {
                            return base
                                .with_error_code(code_for(&e))
                                .with_error_message(Some(str_bytes(e.to_string())));
                        }
                    },
                    RESOURCE_BROKER
                        if res.resource_name.is_empty()
                            || res.resource_name.as_str() == shared.node_id.to_string() =>
                    {
                        let c = &shared.config;
                        let entries = vec![
                            (
                                "advertised.listeners".to_string(),
                                format!(
                                    "PLAINTEXT://{}:{}",
                                    shared.advertised_host, shared.advertised_port
                                ),
                            ),
                            (
                                "auto.create.topics.enable".into(),
                                c.auto_create_topics.to_string(),
                            ),
                            ("num.partitions".into(), c.default_partitions.to_string()),
                            (
                                "socket.request.max.bytes".into(),
                                c.max_request_bytes.to_string(),
                            ),
                            (
                                "group.initial.rebalance.delay.ms".into(),
                                c.groups.initial_rebalance_delay.as_millis().to_string(),
                            ),
                            ("log.dirs".into(), c.data_dir.display().to_string()),
                        ];
                        (entries, Box::new(|_: &str, _: &str| SOURCE_STATIC_BROKER))
                    }
                    other => {
                        return base
                            .with_error_code(ResponseError::InvalidRequest.code())
                            .with_error_message(Some(str_bytes(format!(
                                "unsupported resource type {other} or unknown broker {:?} (this broker is node {})",
                                res.resource_name.as_str(),
                                shared.node_id
                            ))));
                    }
                };
            let wanted = res.configuration_keys.as_ref();
            let configs = entries
                .into_iter()
                .filter(|(k, _)| wanted.is_none_or(|w| w.iter().any(|x| x.as_str() == k)))
                .map(|(k, v)| {
                    let mut r = DescribeConfigsResourceResult::default()
                        .with_name(str_bytes(k.clone()))
                        .with_value(Some(str_bytes(v.clone())))
                        .with_config_source(source_of(&k, &v));
                    if version >= 3 {
                        r = r.with_config_type(config_type(&k));
                    }
                    r
                })
                .collect();
            base.with_configs(configs)
        })
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}

pub(crate) fn find_coordinator(
    shared: &Arc<Shared>,
    req: FindCoordinatorRequest,
    version: i16,
) -> FindCoordinatorResponse {
    let host = str_bytes(shared.advertised_host.clone());
    let answer = |key_type: i8| -> (i16, Option<StrBytes>) {
        match key_type {
            0 => (0, None),
            _ => (
                ResponseError::CoordinatorNotAvailable.code(),
                Some(str_bytes(
                    "sluice broker coordinates consumer groups only; transactions are not supported yet",
                )),
            ),
        }
    };
    if version >= 4 {
        let coordinators = req
            .coordinator_keys
            .into_iter()
            .map(|key| {
                let (code, message) = answer(req.key_type);
                let c = Coordinator::default().with_key(key).with_error_code(code);
                if code == 0 {
                    c.with_node_id(BrokerId(shared.node_id))
                        .with_host(host.clone())
                        .with_port(shared.advertised_port)
                } else {
                    c.with_node_id(BrokerId(-1))
                        .with_port(-1)
                        .with_error_message(message)
                }
            })
            .collect();
        return FindCoordinatorResponse::default().with_coordinators(coordinators);
    }
    let (code, message) = answer(req.key_type);
    let mut r = FindCoordinatorResponse::default().with_error_code(code);
    if code == 0 {
        r = r
            .with_node_id(BrokerId(shared.node_id))
            .with_host(host)
            .with_port(shared.advertised_port);
    } else {
        r = r.with_node_id(BrokerId(-1)).with_port(-1);
    }
    if version >= 1 {
        r = r.with_error_message(message);
    }
    r
}
