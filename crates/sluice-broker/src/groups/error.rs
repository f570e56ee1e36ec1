//! The group coordinator's error type. Protocol-level problems (unknown
//! member, wrong generation, ...) are Kafka error codes in the responses, not
//! this type: it covers the committed-offset journal, and every variant
//! names the file it concerns.

use std::io;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    #[error("{action} {file}: {source}")]
    Io {
        action: &'static str,
        file: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(
        "{file} is not a sluice committed-offsets journal (it starts with {found:02x?}); move it out of the way if it does not belong there"
    )]
    NotAJournal { file: PathBuf, found: Vec<u8> },

    #[error(
        "corrupt committed-offsets journal {file} at byte {position}: {reason} (the record's checksum is valid, so this is not a torn write; was it written by a newer sluice?)"
    )]
    CorruptJournal {
        file: PathBuf,
        position: u64,
        reason: String,
    },

    #[error(
        "committed-offsets journal {file} is unusable after an earlier failure ({reason}); restart the broker to recover it"
    )]
    JournalBroken { file: PathBuf, reason: String },

    #[error("committed-offsets journal {file} is closed")]
    Closed { file: PathBuf },
}

impl GroupError {
    pub(crate) fn io(action: &'static str, file: impl Into<PathBuf>, source: io::Error) -> Self {
        GroupError::Io {
            action,
            file: file.into(),
            source,
        }
    }
}
