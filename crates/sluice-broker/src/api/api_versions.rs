//! ApiVersions, and the table of API versions this broker implements that
//! the dispatcher checks every request against. The table is the single
//! source: what is advertised is exactly what is served. Never decodes or
//! routes a request itself.

use kafka_protocol::messages::ApiKey;
use kafka_protocol::messages::ApiVersionsResponse;
use kafka_protocol::messages::api_versions_response::ApiVersion;

use crate::{groups, txn};

/// The API versions this broker implements, as `(api, min, max)`. This is
/// exactly what ApiVersions advertises; the minimums are those the
/// `kafka-protocol` crate can decode (Kafka 4.0's baseline).
pub fn supported_versions() -> Vec<(ApiKey, i16, i16)> {
    use ApiKey::*;
    let ours = [
        (Produce, 3, 11),
        (Fetch, 4, 16),
        (ListOffsets, 1, 6),
        (Metadata, 0, 12),
        (FindCoordinator, 0, 4),
        (ApiVersions, 0, 3),
        (CreateTopics, 2, 7),
        (DeleteTopics, 1, 6),
        (DeleteRecords, 0, 2),
        (InitProducerId, 0, 4),
        (DescribeConfigs, 1, 4),
        (AlterConfigs, 0, 2),
        (IncrementalAlterConfigs, 0, 1),
        (CreatePartitions, 0, 3),
    ];
    ours.into_iter()
        .chain(groups::supported_versions())
        .chain(txn::supported_versions())
        .map(|(api, min, max)| {
            let crate_range = api.valid_versions();
            (api, min.max(crate_range.min), max.min(crate_range.max))
        })
        .collect()
}

/// The `(min, max)` versions served for `api`; `None` when it is not served.
pub(crate) fn supported_range(api: ApiKey) -> Option<(i16, i16)> {
    supported_versions()
        .into_iter()
        .find(|(a, _, _)| *a == api)
        .map(|(_, min, max)| (min, max))
}

/// The answer to ApiVersions; `error_code` is non-zero only when the
/// client asked at a version this broker lacks.
pub(crate) fn api_versions(error_code: i16) -> ApiVersionsResponse {
    ApiVersionsResponse::default()
        .with_error_code(error_code)
        .with_api_keys(
            supported_versions()
                .into_iter()
                .map(|(api, min, max)| {
                    ApiVersion::default()
                        .with_api_key(api as i16)
                        .with_min_version(min)
                        .with_max_version(max)
                })
                .collect(),
        )
}
