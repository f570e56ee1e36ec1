//! Client-side producing for the CLI and tools: turning lines into
//! records, choosing partitions the way Kafka's Java client does, and
//! encoding RecordBatch v2 bytes.
//!
//! - [`lines`]: where lines come from (`tail -F`-style file following) and
//!   how a line splits into key and value.
//! - [`partitioner`]: Kafka's murmur2 partitioner and the sticky /
//!   round-robin strategies for unkeyed records.
//! - [`encode`]: one partition's records into one RecordBatch v2, with any
//!   of Kafka's codecs.
//!
//! This module never touches the log store's files: it hands encoded
//! batches to its caller, which decides where they go.

pub mod encode;
pub mod lines;
pub mod partitioner;

pub use encode::{
    BATCH_HEADER_BYTES, BatchBuilder, EncodeError, ParseCompressionError, parse_compression,
    uniform_batch,
};
pub use kafka_protocol::records::Compression;
pub use lines::{
    DEFAULT_MAX_LINE_BYTES, FollowStart, KeySeparatorError, LineFollower, parse_key_separator,
    split_key_value, trim_line_ending,
};
pub use partitioner::{Partitioner, UnkeyedStrategy, murmur2, partition_for_key, to_positive};
