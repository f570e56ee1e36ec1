//! OffsetFetch: a group's committed offsets, for the partitions asked
//! (or all of them); partitions without a commit answer offset -1. v8+
//! asks for several groups at once. Reads only: never creates a group.

use std::collections::BTreeMap;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestGroup;
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{OffsetFetchRequest, OffsetFetchResponse, TopicName};

use super::GroupCoordinator;
use super::offsets::CommittedOffset;
use crate::wire::{str_bytes, topic_name};

/// A group's committed offsets by topic, as answered.
type Committed = Vec<(TopicName, Vec<(i32, CommittedOffset)>)>;

impl GroupCoordinator {
    pub fn offset_fetch(&self, req: OffsetFetchRequest, version: i16) -> OffsetFetchResponse {
        if version >= 8 {
            let groups = req
                .groups
                .into_iter()
                .map(|g| self.fetch_group_v8(g))
                .collect();
            return OffsetFetchResponse::default().with_groups(groups);
        }
        let requested = req.topics.clone();
        let result = self.fetch_group(
            req.group_id.0.as_str(),
            req.topics.map(|ts| {
                ts.into_iter()
                    .map(|t| (t.name, t.partition_indexes))
                    .collect()
            }),
        );
        let partition = |p: i32, c: &CommittedOffset, error: i16| {
            OffsetFetchResponsePartition::default()
                .with_partition_index(p)
                .with_committed_offset(c.offset)
                .with_committed_leader_epoch(c.leader_epoch)
                .with_metadata(Some(str_bytes(&c.metadata)))
                .with_error_code(error)
        };
        let topic = |name: TopicName, partitions: Vec<OffsetFetchResponsePartition>| {
            OffsetFetchResponseTopic::default()
                .with_name(name)
                .with_partitions(partitions)
        };
        match result {
            Ok(topics) => OffsetFetchResponse::default().with_topics(
                topics
                    .into_iter()
                    .map(|(name, parts)| {
                        topic(
                            name,
                            parts.iter().map(|(p, c)| partition(*p, c, 0)).collect(),
                        )
                    })
                    .collect(),
            ),
            // v2+ has a top-level error; v1 can only say it per partition.
            Err(e) if version >= 2 => OffsetFetchResponse::default().with_error_code(e.code()),
            Err(e) => OffsetFetchResponse::default().with_topics(
                requested
                    .unwrap_or_default()
                    .into_iter()
                    .map(|t| {
                        let parts = t
                            .partition_indexes
                            .iter()
                            .map(|p| partition(*p, &no_offset(), e.code()))
                            .collect();
                        topic(t.name, parts)
                    })
                    .collect(),
            ),
        }
    }

    /// One group of a v8+ request, with its own error.
    fn fetch_group_v8(&self, g: OffsetFetchRequestGroup) -> OffsetFetchResponseGroup {
        let topics = g.topics.map(|ts| {
            ts.into_iter()
                .map(|t| (t.name, t.partition_indexes))
                .collect()
        });
        let group = OffsetFetchResponseGroup::default();
        let topics = match self.fetch_group(g.group_id.0.as_str(), topics) {
            Ok(topics) => topics,
            Err(e) => return group.with_group_id(g.group_id).with_error_code(e.code()),
        };
        let topics = topics
            .into_iter()
            .map(|(name, parts)| {
                let partitions = parts
                    .into_iter()
                    .map(|(p, c)| {
                        OffsetFetchResponsePartitions::default()
                            .with_partition_index(p)
                            .with_committed_offset(c.offset)
                            .with_committed_leader_epoch(c.leader_epoch)
                            .with_metadata(Some(str_bytes(&c.metadata)))
                    })
                    .collect();
                OffsetFetchResponseTopics::default()
                    .with_name(name)
                    .with_partitions(partitions)
            })
            .collect();
        group.with_group_id(g.group_id).with_topics(topics)
    }

    /// The committed offsets of `topics` (`None`: every committed partition)
    /// for one group; partitions without a commit answer offset -1.
    fn fetch_group(
        &self,
        group_id: &str,
        topics: Option<Vec<(TopicName, Vec<i32>)>>,
    ) -> Result<Committed, ResponseError> {
        if group_id.is_empty() {
            return Err(ResponseError::InvalidGroupId);
        }
        Ok(match topics {
            Some(topics) => topics
                .into_iter()
                .map(|(name, partitions)| {
                    let parts = partitions
                        .into_iter()
                        .map(|p| {
                            let c = self
                                .offsets
                                .get(group_id, name.0.as_str(), p)
                                .unwrap_or_else(no_offset);
                            (p, c)
                        })
                        .collect();
                    (name, parts)
                })
                .collect(),
            None => {
                let mut by_topic: BTreeMap<String, Vec<(i32, CommittedOffset)>> = BTreeMap::new();
                for (t, p, c) in self.offsets.group_offsets(group_id) {
                    by_topic.entry(t).or_default().push((p, c));
                }
                by_topic
                    .into_iter()
                    .map(|(t, parts)| (topic_name(&t), parts))
                    .collect()
            }
        })
    }
}

/// What OffsetFetch answers for a partition without a committed offset.
fn no_offset() -> CommittedOffset {
    CommittedOffset {
        offset: -1,
        leader_epoch: -1,
        metadata: String::new(),
        commit_timestamp_ms: -1,
    }
}
