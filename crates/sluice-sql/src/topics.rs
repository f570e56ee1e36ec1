//! Where a SQL job's topics live: the embedded store or a Kafka cluster.
//!
//! Owns opening a topic's source for the driver; it never decodes records
//! (streams do) and never writes (sinks do).

use std::sync::Arc;

use sluice_engine::driver::StreamingContext;
use sluice_engine::plan::DStream;
use sluice_engine::source::Record;
use sluice_log::log::LogStore;

/// How a SQL job reaches its topics.
pub enum Topics {
    Embedded(Arc<LogStore>),
    Brokers(String),
}

/// The source of a topic.
pub(crate) fn open_source(
    ctx: &StreamingContext,
    topics: &Topics,
    topic: &str,
) -> Result<DStream<Record>, String> {
    match topics {
        Topics::Embedded(store) => ctx
            .embedded(store.clone(), topic)
            .map_err(|e| e.to_string()),
        Topics::Brokers(brokers) => Ok(ctx.source(
            sluice_engine::source::kafka::KafkaSource::new(
                topic.to_owned(),
                brokers.clone(),
                topic,
                None,
                Vec::new(),
            )
            .map_err(|e| e.to_string())?,
        )),
    }
}
