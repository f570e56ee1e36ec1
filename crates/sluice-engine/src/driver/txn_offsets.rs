//! A task's input offsets into its Kafka transaction with the generation
//! and member id its worker holds in the job's group (KIP-447).
//!
//! rust-rdkafka builds a transaction's group metadata only from one of its
//! own consumers, and a worker's group membership is its own
//! (`crate::workers`): without the generation the coordinator could not
//! tell a zombie's commit from a member's. librdkafka itself takes group
//! metadata built from a group id, generation and member id
//! (`rd_kafka_consumer_group_metadata_new_with_genid`), so this module
//! calls it directly. It owns nothing beyond that one call.

use std::ffi::{CStr, CString};
use std::time::Duration;

use rdkafka::bindings as rd;
use rdkafka::client::Client;
use rdkafka::producer::ProducerContext;
use rdkafka::topic_partition_list::TopicPartitionList;
use rdkafka::types::RDKafkaErrorCode;

/// Why a TxnOffsetCommit was refused.
#[derive(Debug)]
pub struct OffsetsRefused {
    pub code: RDKafkaErrorCode,
    pub message: String,
}

impl OffsetsRefused {
    /// The worker's membership is not the group's current one (another
    /// generation, a member the group no longer knows, a rebalance under
    /// way): its tasks are no longer its to commit.
    pub fn out_of_generation(&self) -> bool {
        matches!(
            self.code,
            RDKafkaErrorCode::IllegalGeneration
                | RDKafkaErrorCode::UnknownMemberId
                | RDKafkaErrorCode::FencedInstanceId
                | RDKafkaErrorCode::RebalanceInProgress
                | RDKafkaErrorCode::ProducerFenced
                | RDKafkaErrorCode::InvalidProducerEpoch
        )
    }
}

impl std::fmt::Display for OffsetsRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({:?})", self.message, self.code)
    }
}

/// Adds `offsets` to the producer's open transaction as committed by
/// member `member_id` of `group` in generation `generation`.
pub fn send_offsets<C: ProducerContext>(
    producer: &Client<C>,
    offsets: &TopicPartitionList,
    group: &str,
    generation: i32,
    member_id: &str,
    timeout: Duration,
) -> Result<(), OffsetsRefused> {
    let invalid = |what: &str| OffsetsRefused {
        code: RDKafkaErrorCode::InvalidArgument,
        message: format!("{what} holds a NUL byte"),
    };
    let group = CString::new(group).map_err(|_| invalid("the group id"))?;
    let member = CString::new(member_id).map_err(|_| invalid("the member id"))?;
    let timeout_ms = timeout.as_millis().min(i32::MAX as u128) as i32;
    // SAFETY: the strings outlive the call that copies them; the metadata
    // is destroyed once, after the call that borrows it; `producer` and
    // `offsets` are live handles owned by their Rust wrappers for the
    // whole call; the error, if any, is read and destroyed once.
    unsafe {
        let metadata = rd::rd_kafka_consumer_group_metadata_new_with_genid(
            group.as_ptr(),
            generation,
            member.as_ptr(),
            std::ptr::null(),
        );
        if metadata.is_null() {
            return Err(OffsetsRefused {
                code: RDKafkaErrorCode::Fail,
                message: "librdkafka could not build the group metadata".into(),
            });
        }
        let error = rd::rd_kafka_send_offsets_to_transaction(
            producer.native_ptr(),
            offsets.ptr(),
            metadata,
            timeout_ms,
        );
        rd::rd_kafka_consumer_group_metadata_destroy(metadata);
        if error.is_null() {
            return Ok(());
        }
        let code = RDKafkaErrorCode::from(rd::rd_kafka_error_code(error));
        let text = rd::rd_kafka_error_string(error);
        let message = if text.is_null() {
            format!("{code:?}")
        } else {
            CStr::from_ptr(text).to_string_lossy().into_owned()
        };
        rd::rd_kafka_error_destroy(error);
        Err(OffsetsRefused { code, message })
    }
}
