//! Broker errors: what stops a broker from starting, and how log-store
//! errors map onto Kafka error codes (with the message clients may display).

use std::net::SocketAddr;
use std::path::PathBuf;

use kafka_protocol::error::ResponseError;

use crate::groups::GroupError;
use crate::journal::JournalError;
use sluice_log::log::{BatchError, LogError};

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("cannot listen on {addr}: {source} (is another broker running there? choose --listen)")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "cannot advertise the wildcard address {0}: clients need a reachable host; pass --advertised-host"
    )]
    WildcardAdvertised(SocketAddr),
    #[error(transparent)]
    Log(#[from] LogError),
    #[error(transparent)]
    Groups(#[from] GroupError),
    #[error(transparent)]
    Transactions(#[from] JournalError),
    #[error("broker state file {path}: {reason}")]
    State { path: PathBuf, reason: String },
    #[error("broker task failed: {0}")]
    Task(String),
}

/// The Kafka error code for a log-store error.
pub(crate) fn code_for(e: &LogError) -> i16 {
    match e {
        LogError::UnknownTopic(_) | LogError::UnknownPartition { .. } => {
            ResponseError::UnknownTopicOrPartition.code()
        }
        LogError::OffsetOutOfRange { .. } => ResponseError::OffsetOutOfRange.code(),
        LogError::InvalidBatch { source, .. } => match source {
            BatchError::TooLarge { .. } => ResponseError::MessageTooLarge.code(),
            BatchError::BadMagic(_) => ResponseError::UnsupportedForMessageFormat.code(),
            BatchError::ControlBatch(_) | BatchError::KeylessRecord { .. } => {
                ResponseError::InvalidRecord.code()
            }
            _ => ResponseError::CorruptMessage.code(),
        },
        LogError::InvalidTopicName { .. } => ResponseError::InvalidTopicException.code(),
        LogError::InvalidPartitionCount(_) => ResponseError::InvalidPartitions.code(),
        LogError::TopicExists(_) => ResponseError::TopicAlreadyExists.code(),
        LogError::InvalidConfig(_) => ResponseError::InvalidConfig.code(),
        LogError::DiskFull { .. }
        | LogError::PartitionOffline { .. }
        | LogError::CorruptSegment { .. }
        | LogError::Io { .. } => ResponseError::KafkaStorageError.code(),
        LogError::Closed => ResponseError::NotLeaderOrFollower.code(),
        LogError::DirectoryInUse { .. } => ResponseError::UnknownServerError.code(),
    }
}
