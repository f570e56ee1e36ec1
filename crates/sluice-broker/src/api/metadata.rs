//! Metadata: the brokers (this one node), the cluster id and, per topic,
//! its id and partitions. The node leads every partition with leader epoch
//! 0, and its replica and ISR sets are `[0]`. Topics may be named or (v10+)
//! addressed by id. Never creates a topic unless auto-creation is on and the
//! request allows it.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{BrokerId, MetadataRequest, MetadataResponse, TopicName};
use uuid::Uuid;

use crate::blocking::logged_blocking;
use crate::error::code_for;
use crate::state::{Cluster, NODE_ID};
use crate::topics::Topics;
use crate::wire::{str_bytes, topic_name};
use sluice_log::log::Topic;

pub(crate) async fn metadata(
    topics: &Topics,
    cluster: &Cluster,
    req: MetadataRequest,
    version: i16,
) -> MetadataResponse {
    let t = topics.clone();
    let listed = logged_blocking("metadata", move || describe_topics(&t, req, version))
        .await
        .unwrap_or_default();
    let mut resp = MetadataResponse::default()
        .with_brokers(vec![
            MetadataResponseBroker::default()
                .with_node_id(BrokerId(cluster.node_id))
                .with_host(str_bytes(cluster.advertised_host.clone()))
                .with_port(cluster.advertised_port),
        ])
        .with_controller_id(BrokerId(cluster.node_id))
        .with_topics(listed);
    if version >= 2 {
        resp = resp.with_cluster_id(Some(str_bytes(cluster.cluster_id.clone())));
    }
    resp
}

/// Every topic, or those the request names (by name or id).
fn describe_topics(
    topics: &Topics,
    req: MetadataRequest,
    version: i16,
) -> Vec<MetadataResponseTopic> {
    // v0: an empty list means every topic; v1+: null means every topic.
    let all = match &req.topics {
        None => true,
        Some(t) => t.is_empty() && version == 0,
    };
    if all {
        return topics
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
                    topics.resolve_for_write(name.as_str())
                } else {
                    topics.store.topic(name.as_str())
                };
                match resolved {
                    Ok(t) => topic_metadata(&t, version),
                    Err(e) => topic_error(Some(name), Uuid::nil(), code_for(&e)),
                }
            }
            None => match topics.by_id(rt.topic_id) {
                Some(t) => topic_metadata(&t, version),
                None => topic_error(None, rt.topic_id, ResponseError::UnknownTopicId.code()),
            },
        })
        .collect()
}

fn topic_metadata(topic: &Topic, version: i16) -> MetadataResponseTopic {
    let partitions = (0..topic.partition_count() as i32)
        .map(|p| {
            let mut m = MetadataResponsePartition::default()
                .with_partition_index(p)
                .with_leader_id(BrokerId(NODE_ID))
                .with_replica_nodes(vec![BrokerId(NODE_ID)])
                .with_isr_nodes(vec![BrokerId(NODE_ID)]);
            if version >= 7 {
                m = m.with_leader_epoch(0);
            }
            m
        })
        .collect();
    MetadataResponseTopic::default()
        .with_name(Some(topic_name(topic.name())))
        .with_topic_id(topic.id())
        .with_partitions(partitions)
}

fn topic_error(name: Option<TopicName>, id: Uuid, code: i16) -> MetadataResponseTopic {
    MetadataResponseTopic::default()
        .with_name(name)
        .with_topic_id(id)
        .with_error_code(code)
}
