//! IncrementalAlterConfigs and AlterConfigs: change a topic's configs by
//! their Kafka names (`kafka-configs --alter`, admin clients). Topic
//! resources only: the broker's own settings are its command line.
//! `validate_only` checks without changing anything.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::alter_configs_response::AlterConfigsResourceResponse as LegacyResult;
use kafka_protocol::messages::incremental_alter_configs_response::AlterConfigsResourceResponse as IncrementalResult;
use kafka_protocol::messages::{
    AlterConfigsRequest, AlterConfigsResponse, IncrementalAlterConfigsRequest,
    IncrementalAlterConfigsResponse,
};
use kafka_protocol::protocol::StrBytes;
use sluice_log::log::{CleanupPolicy, LogError, LogStore, TopicConfig};

use crate::blocking::logged_blocking;
use crate::error::code_for;
use crate::topics::Topics;
use crate::wire::str_bytes;

const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;

/// One change, as IncrementalAlterConfigs names them.
enum Change {
    Set(String, String),
    Reset(String),
    Append(String, String),
    Subtract(String, String),
}

fn apply(config: &mut TopicConfig, changes: &[Change]) -> Result<(), LogError> {
    for change in changes {
        match change {
            Change::Set(name, value) => config.set(name, value)?,
            Change::Reset(name) => config.reset(name)?,
            Change::Append(name, value) | Change::Subtract(name, value) => {
                if name != "cleanup.policy" {
                    return Err(LogError::InvalidConfig(format!(
                        "{name} is not a list: APPEND and SUBTRACT apply to cleanup.policy only"
                    )));
                }
                let item: CleanupPolicy = value.parse().map_err(LogError::InvalidConfig)?;
                let adding = matches!(change, Change::Append(..));
                let p = &mut config.cleanup_policy;
                if item.delete {
                    p.delete = adding;
                }
                if item.compact {
                    p.compact = adding;
                }
            }
        }
    }
    Ok(())
}

/// Applies `changes` to topic `name` (on top of its configs, or of the
/// defaults when `from_defaults`, as the legacy AlterConfigs replaces them
/// all).
fn alter(
    store: &LogStore,
    resource_type: i8,
    name: &str,
    changes: &[Change],
    from_defaults: bool,
    validate_only: bool,
) -> Result<(), (i16, String)> {
    match resource_type {
        RESOURCE_TOPIC => {}
        RESOURCE_BROKER => {
            return Err((
                ResponseError::InvalidConfig.code(),
                "broker configs are set on the command line of `sluice broker`".into(),
            ));
        }
        other => {
            return Err((
                ResponseError::InvalidRequest.code(),
                format!("resource type {other} cannot be altered (topics only)"),
            ));
        }
    }
    let edit = |config: &mut TopicConfig| {
        if from_defaults {
            *config = TopicConfig::default();
        }
        apply(config, changes)
    };
    let result = if validate_only {
        store.topic(name).and_then(|t| {
            let mut config = (*t.config()).clone();
            edit(&mut config)?;
            config.validate()
        })
    } else {
        store.alter_topic_config(name, edit).map(|_| ())
    };
    result.map_err(|e| (code_for(&e), e.to_string()))
}

/// A resource's error code and message in either API's answer.
fn error_fields(outcome: Result<(), (i16, String)>) -> (i16, Option<StrBytes>) {
    match outcome {
        Ok(()) => (0, None),
        Err((code, message)) => (code, Some(str_bytes(message))),
    }
}

pub(crate) async fn incremental_alter_configs(
    topics: &Topics,
    req: IncrementalAlterConfigsRequest,
    _version: i16,
) -> IncrementalAlterConfigsResponse {
    let store = topics.store.clone();
    let responses = logged_blocking("alter configs", move || {
        req.resources
            .into_iter()
            .map(|r| {
                let changes: Result<Vec<Change>, String> = r
                    .configs
                    .iter()
                    .map(|c| {
                        let name = c.name.to_string();
                        let value = c
                            .value
                            .as_ref()
                            .map(StrBytes::to_string)
                            .unwrap_or_default();
                        match c.config_operation {
                            0 => Ok(Change::Set(name, value)),
                            1 => Ok(Change::Reset(name)),
                            2 => Ok(Change::Append(name, value)),
                            3 => Ok(Change::Subtract(name, value)),
                            op => Err(format!("unknown config operation {op} for {name}")),
                        }
                    })
                    .collect();
                let outcome = match changes {
                    Ok(changes) => alter(
                        &store,
                        r.resource_type,
                        r.resource_name.as_str(),
                        &changes,
                        false,
                        req.validate_only,
                    ),
                    Err(message) => Err((ResponseError::InvalidRequest.code(), message)),
                };
                let (code, message) = error_fields(outcome);
                IncrementalResult::default()
                    .with_resource_type(r.resource_type)
                    .with_resource_name(r.resource_name)
                    .with_error_code(code)
                    .with_error_message(message)
            })
            .collect()
    })
    .await
    .unwrap_or_default();
    IncrementalAlterConfigsResponse::default().with_responses(responses)
}

pub(crate) async fn alter_configs(
    topics: &Topics,
    req: AlterConfigsRequest,
    _version: i16,
) -> AlterConfigsResponse {
    let store = topics.store.clone();
    let responses = logged_blocking("alter configs", move || {
        req.resources
            .into_iter()
            .map(|r| {
                let changes: Vec<Change> = r
                    .configs
                    .iter()
                    .map(|c| match &c.value {
                        Some(v) => Change::Set(c.name.to_string(), v.to_string()),
                        None => Change::Reset(c.name.to_string()),
                    })
                    .collect();
                let outcome = alter(
                    &store,
                    r.resource_type,
                    r.resource_name.as_str(),
                    &changes,
                    true,
                    req.validate_only,
                );
                let (code, message) = error_fields(outcome);
                LegacyResult::default()
                    .with_resource_type(r.resource_type)
                    .with_resource_name(r.resource_name)
                    .with_error_code(code)
                    .with_error_message(message)
            })
            .collect()
    })
    .await
    .unwrap_or_default();
    AlterConfigsResponse::default().with_responses(responses)
}
