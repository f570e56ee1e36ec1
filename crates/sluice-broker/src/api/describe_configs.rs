//! DescribeConfigs for topics (their settings, marked as set or default)
//! and for this broker (the static settings it was started with). Read
//! only: nothing here changes a config, and unknown resources get an error
//! per resource, never a failed request.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::describe_configs_response::{
    DescribeConfigsResourceResult, DescribeConfigsResult,
};
use kafka_protocol::messages::{DescribeConfigsRequest, DescribeConfigsResponse};

use crate::config::BrokerConfig;
use crate::error::code_for;
use crate::state::Cluster;
use crate::topics::Topics;
use crate::wire::str_bytes;
use sluice_log::log::TopicConfig;

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

/// A resource's configs and where each comes from, or why there are none.
type Described = Result<(Vec<(String, String)>, SourceOf), DescribeConfigsResult>;

fn config_type(name: &str) -> i8 {
    match name {
        "index.interval.bytes" | "max.message.bytes" | "num.partitions" => TYPE_INT,
        "auto.create.topics.enable" => TYPE_BOOLEAN,
        "advertised.listeners" | "log.dirs" | "cleanup.policy" => TYPE_STRING,
        _ => TYPE_LONG,
    }
}

pub(crate) fn describe_configs(
    topics: &Topics,
    cluster: &Cluster,
    config: &BrokerConfig,
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
            let described = match res.resource_type {
                RESOURCE_TOPIC => topic_configs(topics, &res, base.clone()),
                RESOURCE_BROKER
                    if res.resource_name.is_empty()
                        || res.resource_name.as_str() == cluster.node_id.to_string() =>
                {
                    Ok(broker_configs(cluster, config))
                }
                other => Err(base
                    .clone()
                    .with_error_code(ResponseError::InvalidRequest.code())
                    .with_error_message(Some(str_bytes(format!(
                        "unsupported resource type {other} or unknown broker {:?} (this broker is node {})",
                        res.resource_name.as_str(),
                        cluster.node_id
                    ))))),
            };
            match described {
                Ok((entries, source_of)) => {
                    base.with_configs(listed(entries, &source_of, &res, version))
                }
                Err(failed) => failed,
            }
        })
        .collect();
    DescribeConfigsResponse::default().with_results(results)
}

/// A topic's settings; those differing from the defaults are marked as set
/// on the topic.
fn topic_configs(
    topics: &Topics,
    res: &DescribeConfigsResource,
    base: DescribeConfigsResult,
) -> Described {
    let t = topics
        .store
        .topic(res.resource_name.as_str())
        .map_err(|e| {
            base.with_error_code(code_for(&e))
                .with_error_message(Some(str_bytes(e.to_string())))
        })?;
    let defaults = TopicConfig::default().entries();
    let entries: Vec<(String, String)> = t
        .config()
        .entries()
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
    let source = move |k: &str, v: &str| {
        if defaults.iter().any(|(dk, dv)| *dk == k && dv != v) {
            SOURCE_TOPIC
        } else {
            SOURCE_DEFAULT
        }
    };
    Ok((entries, Box::new(source)))
}

/// The static settings this broker was started with.
fn broker_configs(cluster: &Cluster, c: &BrokerConfig) -> (Vec<(String, String)>, SourceOf) {
    let entries = vec![
        (
            "advertised.listeners".to_string(),
            format!(
                "PLAINTEXT://{}:{}",
                cluster.advertised_host, cluster.advertised_port
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

/// The entries the request asked for (all when it names none).
fn listed(
    entries: Vec<(String, String)>,
    source_of: &SourceOf,
    res: &DescribeConfigsResource,
    version: i16,
) -> Vec<DescribeConfigsResourceResult> {
    let wanted = res.configuration_keys.as_ref();
    entries
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
        .collect()
}
