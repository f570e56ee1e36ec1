//! The group coordinator's error type. Protocol-level problems (unknown
//! member, wrong generation, ...) are Kafka error codes in the responses, not
//! this type: it covers the committed-offset journal, whose errors name the
//! file they concern.

use crate::journal::JournalError;

#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    /// The committed-offsets journal.
    #[error(transparent)]
    Journal(#[from] JournalError),
}
