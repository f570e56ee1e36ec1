//! One file per Kafka API that the broker answers outside the group
//! coordinator (whose requests live in [`crate::groups`], one file each).
//! Each handler takes the decoded request, its version and the state it
//! needs (topics, producer state, cluster identity, the coordinator), and
//! returns the response. Handlers never see the connection or the whole
//! server state, never import one another, and run file work on the
//! blocking pool ([`crate::blocking`]).

pub(crate) mod alter_configs;
pub(crate) mod api_versions;
pub(crate) mod create_partitions;
pub(crate) mod create_topics;
pub(crate) mod delete_records;
pub(crate) mod delete_topics;
pub(crate) mod describe_configs;
pub(crate) mod fetch;
pub(crate) mod find_coordinator;
pub(crate) mod init_producer_id;
pub(crate) mod list_offsets;
pub(crate) mod metadata;
pub(crate) mod offset_commit;
pub(crate) mod produce;
