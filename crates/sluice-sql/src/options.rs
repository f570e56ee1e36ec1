//! `WITH (key = 'value', …)` options of streams, tables and sinks: unknown
//! keys, choices among accepted values and topic names, each refused with
//! the statement's object, the option and what is accepted.
//!
//! This module checks option text only; it imports nothing of the crate
//! and knows no statement kind.

use std::collections::BTreeMap;

/// Fails with a message naming `what`, the unknown option and the
/// accepted ones, if `options` has a key not in `accepted`.
pub(crate) fn check_known(
    what: &str,
    options: &BTreeMap<String, String>,
    accepted: &[&str],
) -> Result<(), String> {
    match options.keys().find(|k| !accepted.contains(&k.as_str())) {
        None => Ok(()),
        Some(k) => Err(format!(
            "{what}: unknown option {k:?} (accepted: {})",
            accepted.join(", ")
        )),
    }
}

/// The value of option `key` among `accepted` (case-insensitive), or
/// `default` when it is not given.
pub(crate) fn choice<'a>(
    what: &str,
    options: &BTreeMap<String, String>,
    key: &str,
    accepted: &[&'a str],
    default: Option<&'a str>,
) -> Result<Option<&'a str>, String> {
    let Some(value) = options.get(key) else {
        return Ok(default);
    };
    accepted
        .iter()
        .find(|a| a.eq_ignore_ascii_case(value.trim()))
        .map(|a| Some(*a))
        .ok_or_else(|| {
            format!(
                "{what}: {key} = {value:?} is not supported (accepted: {})",
                accepted
                    .iter()
                    .map(|a| format!("'{a}'"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
}

/// A topic name option (`default` when absent), checked with Kafka's rules.
pub(crate) fn topic_option(
    what: &str,
    options: &BTreeMap<String, String>,
    key: &str,
    default: Option<&str>,
) -> Result<Option<String>, String> {
    let Some(topic) = options.get(key).map(String::as_str).or(default) else {
        return Ok(None);
    };
    sluice_log::log::validate_topic_name(topic).map_err(|e| {
        format!("{what}: {key} = {topic:?} is not a topic name: {e} (accepted: 1 to 249 characters of a-z, A-Z, 0-9, '.', '_' and '-')")
    })?;
    Ok(Some(topic.to_owned()))
}
