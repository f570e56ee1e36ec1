//! The durable journal under the broker's coordinator state: an append-only
//! file of CRC-framed records behind an 8-byte magic, fsynced per record
//! (or, where the owner says a record may wait, with the next fsynced one),
//! compacted by rewriting it whole. The committed-offsets store and the
//! transaction log each keep one.
//!
//! Owns the framing, the torn-tail cut on open, the rollback of a failed
//! append, the "broken after a failed fsync" rule and compaction by
//! temp file + rename. Never interprets a record's payload: its owner
//! decodes each one while the journal replays, and encodes them.
//!
//! ```text
//! file    := MAGIC (8 bytes) record*
//! record  := payload_len u32 LE | crc32c(payload) u32 LE | payload
//! ```
//! A record is either wholly durable or (torn tail) wholly absent after a
//! crash: on open, the first record that is incomplete or fails its CRC
//! ends the journal and it and everything after it are cut. A record whose
//! CRC is right but that its owner cannot decode was written by something
//! else, and opening fails rather than silently dropping acknowledged state.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

/// Bytes before each payload: length and CRC.
pub(crate) const RECORD_HEADER: u64 = 8;
/// Length of the magic that starts every journal.
pub(crate) const MAGIC_LEN: u64 = 8;

/// Which journal this is: its file names, its magic and what to call it in
/// messages.
#[derive(Debug)]
pub(crate) struct JournalSpec {
    /// What a user reads in errors, e.g. "committed-offsets journal".
    pub what: &'static str,
    pub file: &'static str,
    pub compaction_file: &'static str,
    pub magic: &'static [u8; 8],
}

#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    #[error("{action} {file}: {source}")]
    Io {
        action: &'static str,
        file: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error(
        "{file} is not a sluice {what} (it starts with {found:02x?}); move it out of the way if it does not belong there"
    )]
    NotAJournal {
        what: &'static str,
        file: PathBuf,
        found: Vec<u8>,
    },

    #[error(
        "corrupt {what} {file} at byte {position}: {reason} (the record's checksum is valid, so this is not a torn write; was it written by a newer sluice?)"
    )]
    Corrupt {
        what: &'static str,
        file: PathBuf,
        position: u64,
        reason: String,
    },

    #[error(
        "{what} {file} is unusable after an earlier failure ({reason}); restart the broker to recover it"
    )]
    Broken {
        what: &'static str,
        file: PathBuf,
        reason: String,
    },

    #[error("{what} {file} is closed")]
    Closed { what: &'static str, file: PathBuf },
}

impl JournalError {
    pub(crate) fn io(action: &'static str, file: impl Into<PathBuf>, source: io::Error) -> Self {
        JournalError::Io {
            action,
            file: file.into(),
            source,
        }
    }
}

/// Appends `len | crc | payload` to `out`.
pub(crate) fn frame(payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

pub(crate) fn put_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend_from_slice(&(s.len() as u32).to_le_bytes());
    buf.extend_from_slice(s.as_bytes());
}

/// Bounds-checked little-endian reader over one record's payload.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Reader<'a> {
        Reader { buf }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if self.buf.len() < n {
            return Err(format!(
                "record ends early (needed {n} more bytes, {} left)",
                self.buf.len()
            ));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    pub fn u8(&mut self) -> Result<u8, String> {
        Ok(self.array::<1>()?[0])
    }
    pub fn i16(&mut self) -> Result<i16, String> {
        Ok(i16::from_le_bytes(self.array()?))
    }
    pub fn u32(&mut self) -> Result<u32, String> {
        Ok(u32::from_le_bytes(self.array()?))
    }
    pub fn i32(&mut self) -> Result<i32, String> {
        Ok(i32::from_le_bytes(self.array()?))
    }
    pub fn i64(&mut self) -> Result<i64, String> {
        Ok(i64::from_le_bytes(self.array()?))
    }
    pub fn string(&mut self) -> Result<String, String> {
        let len = self.u32()? as usize;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| "string is not UTF-8".to_owned())
    }
    pub fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// Fails unless the whole payload was consumed.
    pub fn finish(&self) -> Result<(), String> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "{} unexpected bytes after the record",
                self.buf.len()
            ))
        }
    }
}

fn sync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| JournalError::io("syncing directory", dir, e))
}

fn open_append(path: &Path) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
}

/// The journal file and what is known about it.
#[derive(Debug)]
pub(crate) struct Journal {
    spec: &'static JournalSpec,
    dir: PathBuf,
    path: PathBuf,
    /// `None` once closed or broken.
    file: Option<File>,
    /// Bytes of valid journal; the file is cut back to this after a failed write.
    len: u64,
    /// Set when a write or fsync failed in a way that leaves the file's
    /// contents uncertain; every later append is refused until restart.
    broken: Option<String>,
    compact_min: u64,
    /// After a failed compaction, do not retry before the journal reaches
    /// this size (so a persistent problem does not cost a rewrite per append).
    compact_retry_at: u64,
}

impl Journal {
    /// Opens (creating if need be) the journal in `dir`, handing every intact
    /// record's payload to `apply` in order; a torn or corrupt tail is cut.
    /// `apply` returns why a payload does not decode.
    pub fn open(
        dir: &Path,
        spec: &'static JournalSpec,
        compact_min: u64,
        mut apply: impl FnMut(&[u8]) -> Result<(), String>,
    ) -> Result<Journal, JournalError> {
        fs::create_dir_all(dir).map_err(|e| JournalError::io("creating directory", dir, e))?;
        let path = dir.join(spec.file);
        // A temp file is only ever a compaction that did not reach its
        // rename; the journal itself is still complete.
        let tmp = dir.join(spec.compaction_file);
        if tmp.exists() {
            fs::remove_file(&tmp)
                .map_err(|e| JournalError::io("removing stale compaction file", &tmp, e))?;
        }
        let existed = path.exists();
        let mut file = open_append(&path).map_err(|e| JournalError::io("opening", &path, e))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)
            .map_err(|e| JournalError::io("reading", &path, e))?;

        let magic = &spec.magic[..];
        if bytes.len() < magic.len() {
            // Empty or a header torn while the journal was being created:
            // only a prefix of our magic counts as that, anything else is
            // someone else's file.
            if !magic.starts_with(&bytes) {
                return Err(JournalError::NotAJournal {
                    what: spec.what,
                    file: path,
                    found: bytes,
                });
            }
            let mut init = || -> io::Result<()> {
                file.set_len(0)?;
                file.write_all(magic)?;
                file.sync_all()
            };
            init().map_err(|e| JournalError::io("initialising", &path, e))?;
            if !existed {
                sync_dir(dir)?;
            }
            bytes = magic.to_vec();
        } else if &bytes[..magic.len()] != magic {
            return Err(JournalError::NotAJournal {
                what: spec.what,
                file: path,
                found: bytes[..magic.len()].to_vec(),
            });
        }

        let (valid_len, cut_reason) = replay(&bytes, |position, payload| {
            apply(payload).map_err(|reason| JournalError::Corrupt {
                what: spec.what,
                file: path.clone(),
                position,
                reason,
            })
        })?;
        if let Some(reason) = &cut_reason {
            tracing::warn!(
                file = %path.display(),
                position = valid_len,
                cut_bytes = bytes.len() as u64 - valid_len,
                reason = %reason,
                "cutting torn or corrupt tail of the {}", spec.what
            );
            file.set_len(valid_len)
                .and_then(|()| file.sync_all())
                .map_err(|e| JournalError::io("truncating torn tail of", &path, e))?;
        }
        tracing::debug!(file = %path.display(), bytes = valid_len, "replayed the {}", spec.what);
        Ok(Journal {
            spec,
            dir: dir.to_path_buf(),
            path,
            file: Some(file),
            len: valid_len,
            broken: None,
            compact_min,
            compact_retry_at: 0,
        })
    }

    #[cfg(test)]
    pub fn path(&self) -> &Path {
        &self.path
    }

    #[cfg(test)]
    pub fn len(&self) -> u64 {
        self.len
    }

    fn usable(&mut self) -> Result<&mut File, JournalError> {
        if let Some(reason) = &self.broken {
            return Err(JournalError::Broken {
                what: self.spec.what,
                file: self.path.clone(),
                reason: reason.clone(),
            });
        }
        let (what, path) = (self.spec.what, self.path.clone());
        self.file
            .as_mut()
            .ok_or(JournalError::Closed { what, file: path })
    }

    /// Appends one record (framed here) and fsyncs it.
    pub fn append(&mut self, payload: &[u8]) -> Result<(), JournalError> {
        self.append_with(payload, true)
    }

    /// Appends one record, fsynced if `sync` (otherwise it survives a
    /// killed process, and the next fsynced record or [`Journal::close`]
    /// makes it durable with everything before it).
    pub fn append_with(&mut self, payload: &[u8], sync: bool) -> Result<(), JournalError> {
        let mut record = Vec::with_capacity(payload.len() + RECORD_HEADER as usize);
        frame(payload, &mut record);
        let old_len = self.len;
        let file = self.usable()?;
        if let Err(e) = file.write_all(&record) {
            // Roll back a partial write so the next record starts clean; if
            // even that fails the tail is unknown and the journal is unusable.
            if let Err(e2) = file.set_len(old_len) {
                self.broken = Some(format!(
                    "a failed append ({e}) could not be rolled back ({e2})"
                ));
                self.file = None;
            }
            return Err(JournalError::io("appending to", &self.path, e));
        }
        if sync && let Err(e) = file.sync_data() {
            // After a failed fsync the kernel may have dropped the dirty pages
            // and cleared the error: nothing written since the last good fsync
            // can be trusted, so stop accepting appends.
            self.broken = Some(format!("fsync failed: {e}"));
            self.file = None;
            return Err(JournalError::io("syncing", &self.path, e));
        }
        self.len += record.len() as u64;
        Ok(())
    }

    /// Whether a journal of `len` bytes holding `live_bytes` of live state
    /// should be rewritten: small journals are not worth the rewrite, large
    /// ones must not grow without bound.
    pub fn needs_compaction(&self, live_bytes: u64) -> bool {
        self.len > self.compact_min.max(live_bytes.saturating_mul(4))
            && self.len >= self.compact_retry_at
    }

    /// Rewrites the journal as exactly `payloads` (the live state), logging
    /// the outcome; a failure leaves the old journal in use.
    pub fn compact(&mut self, payloads: impl IntoIterator<Item = Vec<u8>>) {
        let mut image = self.spec.magic.to_vec();
        for p in payloads {
            frame(&p, &mut image);
        }
        let before = self.len;
        match self.replace_with(&image) {
            Ok(()) => tracing::info!(
                file = %self.path.display(),
                before,
                after = self.len,
                "compacted the {}", self.spec.what
            ),
            Err(e) => {
                self.compact_retry_at = self.len.saturating_mul(2);
                tracing::warn!(error = %e, "compacting the {} failed", self.spec.what);
            }
        }
    }

    /// Replaces the journal with `image`: temp file, fsync, rename, fsync
    /// directory, reopen.
    fn replace_with(&mut self, image: &[u8]) -> Result<(), JournalError> {
        let tmp = self.dir.join(self.spec.compaction_file);
        let write = || -> io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(image)?;
            f.sync_all()
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp);
            return Err(JournalError::io("writing compacted journal", &tmp, e));
        }
        if let Err(e) = fs::rename(&tmp, &self.path) {
            let _ = fs::remove_file(&tmp);
            return Err(JournalError::io(
                "renaming compacted journal onto",
                &self.path,
                e,
            ));
        }
        // From here the new file is the journal: failing to make the rename
        // durable or to reopen leaves us unable to append safely.
        let reopen = sync_dir(&self.dir).and_then(|()| {
            open_append(&self.path).map_err(|e| JournalError::io("reopening", &self.path, e))
        });
        match reopen {
            Ok(f) => {
                self.file = Some(f);
                self.len = image.len() as u64;
                Ok(())
            }
            Err(e) => {
                self.broken = Some(format!("compaction could not be completed: {e}"));
                self.file = None;
                Err(e)
            }
        }
    }

    /// Syncs and closes the file; later appends fail with `Closed`.
    pub fn close(&mut self) -> Result<(), JournalError> {
        match self.file.take() {
            Some(f) => f
                .sync_all()
                .map_err(|e| JournalError::io("syncing", &self.path, e)),
            None => Ok(()),
        }
    }
}

/// Walks the framed records after the magic, handing each intact payload
/// (with its byte position) to `apply`; returns the length of valid journal
/// and why the tail after it was cut, if it was.
fn replay(
    bytes: &[u8],
    mut apply: impl FnMut(u64, &[u8]) -> Result<(), JournalError>,
) -> Result<(u64, Option<String>), JournalError> {
    let mut pos = MAGIC_LEN as usize;
    let header = RECORD_HEADER as usize;
    while pos < bytes.len() {
        let rest = &bytes[pos..];
        if rest.len() < header {
            return Ok((
                pos as u64,
                Some(format!("incomplete record header ({} bytes)", rest.len())),
            ));
        }
        let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
        let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
        // A zero-filled tail (a crash after the file grew but before the data
        // reached the disk) reads as an empty record whose CRC matches.
        if len == 0 {
            return Ok((
                pos as u64,
                Some("zero-length record (zero-filled tail)".to_owned()),
            ));
        }
        if len > rest.len() - header {
            return Ok((
                pos as u64,
                Some(format!(
                    "record of {len} bytes runs past the end of the file ({} bytes left)",
                    rest.len() - header
                )),
            ));
        }
        let payload = &rest[header..header + len];
        if crc32c::crc32c(payload) != crc {
            return Ok((pos as u64, Some("CRC-32C mismatch".to_owned())));
        }
        apply(pos as u64, payload)?;
        pos += header + len;
    }
    Ok((pos as u64, None))
}
