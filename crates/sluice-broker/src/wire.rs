//! Small conversions into `kafka-protocol`'s string types, shared by the
//! handlers and the group coordinator. Owns nothing else: no state, no
//! protocol decisions.

use kafka_protocol::messages::TopicName;
use kafka_protocol::protocol::StrBytes;

pub(crate) fn str_bytes(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

pub(crate) fn topic_name(s: &str) -> TopicName {
    TopicName(str_bytes(s))
}
