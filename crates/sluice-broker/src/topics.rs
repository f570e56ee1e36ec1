//! The topics as the handlers see them: the log store, the auto-creation
//! policy (`--auto-create-topics`, `--default-partitions`), the wake-up that
//! follows every append, and the message a client gets for a topic it
//! cannot use. Sits below the handlers and above the log store; it never
//! decodes or answers a request and never blocks on anything but the store.

use std::sync::Arc;

use tokio::sync::Notify;
use uuid::Uuid;

use sluice_log::log::{LogError, LogStore, Topic, TopicConfig, validate_topic_name};

/// Cheap to clone, so blocking tasks can own one.
#[derive(Clone)]
pub(crate) struct Topics {
    pub store: LogStore,
    /// Kafka's `auto.create.topics.enable`.
    auto_create: bool,
    /// Kafka's `num.partitions`: for auto-created topics and CreateTopics
    /// with `num_partitions = -1`.
    pub default_partitions: i32,
    /// Woken after every append, so long-polling fetches answer at once.
    appended: Arc<Notify>,
}

impl Topics {
    pub fn new(store: LogStore, auto_create: bool, default_partitions: i32) -> Topics {
        Topics {
            store,
            auto_create,
            default_partitions,
            appended: Arc::new(Notify::new()),
        }
    }

    /// Wakes every fetch waiting for data.
    pub fn notify_appended(&self) {
        self.appended.notify_waiters();
    }

    /// The wake-up a long-polling fetch waits on.
    pub fn appended(&self) -> &Notify {
        &self.appended
    }

    pub fn by_id(&self, id: Uuid) -> Option<Arc<Topic>> {
        self.store.topics().into_iter().find(|t| t.id() == id)
    }

    /// The topic a produce (or metadata) request names, created on the fly
    /// when auto-creation is on.
    pub fn resolve_for_write(&self, name: &str) -> Result<Arc<Topic>, LogError> {
        match self.store.topic(name) {
            Err(LogError::UnknownTopic(_)) if self.auto_create => self.auto_create(name),
            other => other,
        }
    }

    fn auto_create(&self, name: &str) -> Result<Arc<Topic>, LogError> {
        validate_topic_name(name)?;
        let partitions = i64::from(self.default_partitions);
        match self
            .store
            .create_topic(name, partitions, TopicConfig::default())
        {
            Ok(topic) => {
                tracing::info!("auto-created topic {name} with {partitions} partition(s)");
                Ok(topic)
            }
            // Another request created it first.
            Err(LogError::TopicExists(_)) => self.store.topic(name),
            Err(e) => Err(e),
        }
    }
}

/// What a client is told when a topic cannot be used; an unknown topic
/// says how to create it.
pub(crate) fn topic_error_message(e: &LogError) -> String {
    match e {
        LogError::UnknownTopic(name) => format!(
            "unknown topic {name:?}: create it first (sluice topic create, or start the broker with --auto-create-topics)"
        ),
        other => other.to_string(),
    }
}
