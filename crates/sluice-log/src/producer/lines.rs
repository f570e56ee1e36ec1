//! Line sources for `sluice produce`: splitting a line into key and value,
//! and following a growing log file the way `tail -F` does.
//!
//! [`LineFollower`] only reads the followed file; it never writes, moves or
//! deletes it, and never blocks waiting for data: the caller polls and
//! decides how long to sleep.

use std::fs::File;
use std::io::{self, BufRead, BufReader, Seek, SeekFrom};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Read buffer for followed files: large enough that a busy log is read in
/// few system calls.
const READ_BUFFER_BYTES: usize = 256 * 1024;

/// Default longest line [`LineFollower`] holds back while waiting for its
/// newline (see [`LineFollower::with_max_line_bytes`]).
pub const DEFAULT_MAX_LINE_BYTES: usize = 8 * 1024 * 1024;

/// A `--key-sep` value that is not exactly one character.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("key separator must be exactly one character (or \\t), got {0:?}")]
pub struct KeySeparatorError(pub String);

/// Parses a `--key-sep` argument: exactly one character, or the two
/// characters `\t` for a tab, since a literal tab is awkward in a shell.
///
/// # Errors
///
/// An empty string or more than one character.
pub fn parse_key_separator(s: &str) -> Result<char, KeySeparatorError> {
    if s == "\\t" {
        return Ok('\t');
    }
    let mut chars = s.chars();
    match (chars.next(), chars.next()) {
        (Some(c), None) => Ok(c),
        _ => Err(KeySeparatorError(s.to_owned())),
    }
}

/// Splits `line` into `(key, value)` at the first occurrence of `sep`.
///
/// The separator itself belongs to neither part, and later occurrences stay
/// in the value. A line without the separator (or `sep == None`) has no key
/// and the whole line is the value; an empty key (`sep` first) is `Some(b"")`,
/// which Kafka distinguishes from no key.
pub fn split_key_value(line: &[u8], sep: Option<char>) -> (Option<&[u8]>, &[u8]) {
    let Some(sep) = sep else {
        return (None, line);
    };
    let mut utf8 = [0u8; 4];
    let sep = sep.encode_utf8(&mut utf8).as_bytes();
    let found = if let [b] = sep {
        line.iter().position(|c| c == b)
    } else {
        line.windows(sep.len()).position(|w| w == sep)
    };
    match found {
        Some(i) => (Some(&line[..i]), &line[i + sep.len()..]),
        None => (None, line),
    }
}

/// Removes one trailing `"\n"` or `"\r\n"` (or a lone trailing `'\r'`).
pub fn trim_line_ending(mut line: &[u8]) -> &[u8] {
    if let [rest @ .., b'\n'] = line {
        line = rest;
    }
    if let [rest @ .., b'\r'] = line {
        line = rest;
    }
    line
}

/// Where to start reading a file that exists when following begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FollowStart {
    /// Read the existing contents first (`tail -n +1 -F`).
    Beginning,
    /// Only lines appended from now on (`tail -n 0 -F`). If the file ends in
    /// the middle of a line, the rest of that line arrives as a line.
    End,
}

/// The file currently being read.
#[derive(Debug)]
struct Current {
    reader: BufReader<File>,
    dev: u64,
    ino: u64,
    /// Bytes consumed from the start of the file.
    pos: u64,
}

/// Follows a path like `tail -F`: across truncation, rotation and the path
/// disappearing for a while.
///
/// - **Truncation** (the file is now shorter than what we have read): read
///   the same file again from offset 0. A truncation followed by regrowth
///   past our position before the next poll cannot be seen (as with `tail`).
/// - **Rotation** (the path names a different file, e.g. after
///   `mv app.log app.log.1` and a new `app.log`): the old file is read to its
///   end first, then the new one from its beginning. Bytes written to the
///   old file after we switched are lost, as with `tail -F`.
/// - **Missing path**: keep waiting, warn once; a file that appears later is
///   read from its beginning. While the path is missing after a rename, the
///   old file handle keeps being read.
/// - **Partial last line**: held back until its newline arrives; on rotation
///   or truncation the held bytes are emitted as a line of their own, since
///   nothing will ever complete them.
///
/// Lines longer than the limit are emitted in pieces of that many bytes, so
/// a file without newlines cannot make us buffer without bound.
#[derive(Debug)]
pub struct LineFollower {
    path: PathBuf,
    current: Option<Current>,
    /// Bytes of an incomplete last line.
    partial: Vec<u8>,
    max_line_bytes: usize,
    /// Whether we already warned that the path is missing; reset once it
    /// exists again so a later disappearance is reported too.
    warned_missing: bool,
}

impl LineFollower {
    /// Starts following `path`. A missing path is not an error: it is waited
    /// for, and read from its beginning once it appears.
    ///
    /// # Errors
    ///
    /// Any error opening or seeking the file other than it not existing
    /// (e.g. permission denied).
    pub fn open(path: impl AsRef<Path>, start: FollowStart) -> io::Result<Self> {
        let mut follower = Self {
            path: path.as_ref().to_path_buf(),
            current: None,
            partial: Vec::new(),
            max_line_bytes: DEFAULT_MAX_LINE_BYTES,
            warned_missing: false,
        };
        match follower.open_path()? {
            Some(mut cur) => {
                if start == FollowStart::End {
                    cur.pos = cur.reader.seek(SeekFrom::End(0))?;
                }
                follower.current = Some(cur);
            }
            None => follower.warn_missing(),
        }
        Ok(follower)
    }

    /// Sets the longest line held back waiting for its newline (at least 1).
    pub fn with_max_line_bytes(mut self, max: usize) -> Self {
        self.max_line_bytes = max.max(1);
        self
    }

    /// The followed path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends to `out` up to `max` complete lines that were written since
    /// the last call, without their `"\n"` / `"\r\n"`, and returns how many.
    /// Never blocks: 0 means nothing new, and the caller should sleep a
    /// little (~100 ms) before polling again.
    ///
    /// # Errors
    ///
    /// Read, seek and stat errors other than the path not existing. The
    /// follower stays usable; polling again retries.
    pub fn poll_lines(&mut self, out: &mut Vec<Vec<u8>>, max: usize) -> io::Result<usize> {
        let mut emitted = 0;
        while emitted < max {
            if self.current.is_none() {
                match self.open_path()? {
                    Some(cur) => self.current = Some(cur),
                    None => {
                        self.warn_missing();
                        break;
                    }
                }
            }
            emitted += self.read_lines(out, max - emitted)?;
            if emitted == max || !self.switch_if_rotated_or_truncated(out, &mut emitted)? {
                break;
            }
        }
        Ok(emitted)
    }

    /// Reads complete lines from the current file until `max` lines or the
    /// end of the file.
    fn read_lines(&mut self, out: &mut Vec<Vec<u8>>, max: usize) -> io::Result<usize> {
        let Some(cur) = self.current.as_mut() else {
            return Ok(0);
        };
        let mut emitted = 0;
        while emitted < max {
            let buf = cur.reader.fill_buf()?;
            if buf.is_empty() {
                break;
            }
            let room = self.max_line_bytes.saturating_sub(self.partial.len());
            let (used, line_done) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) if i <= room => (i + 1, true),
                // No newline within the limit: take what fits, and emit it
                // as a line once we can see that more than fits follows (so
                // a line of exactly the limit still ends at its newline).
                _ => (buf.len().min(room), buf.len() > room),
            };
            self.partial.extend_from_slice(&buf[..used]);
            cur.reader.consume(used);
            cur.pos += used as u64;
            if line_done {
                let mut line = std::mem::take(&mut self.partial);
                let trimmed = trim_line_ending(&line).len();
                line.truncate(trimmed);
                out.push(line);
                emitted += 1;
            }
        }
        Ok(emitted)
    }

    /// At the end of the current file, checks whether the path was rotated
    /// or the file truncated and, if so, moves on. Returns whether there may
    /// be more to read now.
    fn switch_if_rotated_or_truncated(
        &mut self,
        out: &mut Vec<Vec<u8>>,
        emitted: &mut usize,
    ) -> io::Result<bool> {
        let Some(cur) = self.current.as_mut() else {
            return Ok(false);
        };
        match std::fs::metadata(&self.path) {
            Ok(meta) if (meta.dev(), meta.ino()) != (cur.dev, cur.ino) => {
                // Rotated: we are at the old file's end, so switch.
                tracing::info!(path = %self.path.display(), "followed file was rotated; reading the new file");
                self.flush_partial(out, emitted);
                self.current = None;
                self.warned_missing = false;
                Ok(true)
            }
            Ok(_) => {
                let len = cur.reader.get_ref().metadata()?.len();
                if len < cur.pos {
                    tracing::info!(path = %self.path.display(), "followed file was truncated; reading it from the start");
                    cur.reader.seek(SeekFrom::Start(0))?;
                    cur.pos = 0;
                    self.flush_partial(out, emitted);
                    Ok(true)
                } else {
                    Ok(false)
                }
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // Moved away and not yet replaced: keep the old handle, the
                // writer may still be appending to it.
                self.warn_missing();
                Ok(false)
            }
            Err(e) => Err(e),
        }
    }

    /// Emits a held partial line that nothing will complete any more.
    fn flush_partial(&mut self, out: &mut Vec<Vec<u8>>, emitted: &mut usize) {
        if !self.partial.is_empty() {
            let mut line = std::mem::take(&mut self.partial);
            let trimmed = trim_line_ending(&line).len();
            line.truncate(trimmed);
            out.push(line);
            *emitted += 1;
        }
    }

    /// Opens the path, or `None` if it does not exist.
    fn open_path(&mut self) -> io::Result<Option<Current>> {
        let file = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        // Identity from the handle, not the path, so a rename between open
        // and stat cannot pair one file's handle with another's inode.
        let meta = file.metadata()?;
        self.warned_missing = false;
        Ok(Some(Current {
            reader: BufReader::with_capacity(READ_BUFFER_BYTES, file),
            dev: meta.dev(),
            ino: meta.ino(),
            pos: 0,
        }))
    }

    fn warn_missing(&mut self) {
        if !self.warned_missing {
            self.warned_missing = true;
            tracing::warn!(path = %self.path.display(), "followed file does not exist; waiting for it to appear");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::fs::{self, OpenOptions};
    use std::io::Write;

    use super::*;

    fn append(path: &Path, data: &[u8]) {
        let mut f = OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap();
        f.write_all(data).unwrap();
    }

    fn poll(f: &mut LineFollower) -> Vec<String> {
        let mut out = Vec::new();
        let n = f.poll_lines(&mut out, usize::MAX).unwrap();
        assert_eq!(n, out.len());
        out.into_iter()
            .map(|l| String::from_utf8(l).unwrap())
            .collect()
    }

    #[test]
    fn splits_at_first_separator_only() {
        assert_eq!(
            split_key_value(b"k:v:w", Some(':')),
            (Some(&b"k"[..]), &b"v:w"[..])
        );
        assert_eq!(
            split_key_value(b"no sep", Some(':')),
            (None, &b"no sep"[..])
        );
        assert_eq!(
            split_key_value(b":v", Some(':')),
            (Some(&b""[..]), &b"v"[..])
        );
        assert_eq!(split_key_value(b"k:v", None), (None, &b"k:v"[..]));
        assert_eq!(
            split_key_value("kéy→v".as_bytes(), Some('→')),
            (Some("kéy".as_bytes()), &b"v"[..])
        );
        assert_eq!(parse_key_separator(","), Ok(','));
        assert_eq!(parse_key_separator("\\t"), Ok('\t'));
        assert!(parse_key_separator("").is_err());
        assert!(parse_key_separator("ab").is_err());
    }

    #[test]
    fn trims_line_endings() {
        assert_eq!(trim_line_ending(b"a\r\n"), b"a");
        assert_eq!(trim_line_ending(b"a\n"), b"a");
        assert_eq!(trim_line_ending(b"a\n\n"), b"a\n");
        assert_eq!(trim_line_ending(b"a"), b"a");
    }

    #[test]
    fn reads_new_lines_and_respects_start_and_max() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.log");
        append(&path, b"old1\nold2\n");

        let mut from_end = LineFollower::open(&path, FollowStart::End).unwrap();
        let mut from_start = LineFollower::open(&path, FollowStart::Beginning).unwrap();
        assert!(poll(&mut from_end).is_empty());
        append(&path, b"new1\r\nnew2\n");
        assert_eq!(poll(&mut from_end), ["new1", "new2"]);
        assert!(poll(&mut from_end).is_empty());

        let mut out = Vec::new();
        assert_eq!(from_start.poll_lines(&mut out, 3).unwrap(), 3);
        assert_eq!(poll(&mut from_start), ["new2"]);
    }

    #[test]
    fn truncation_restarts_from_zero() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.log");
        append(&path, b"a long first line\nanother line\n");
        let mut f = LineFollower::open(&path, FollowStart::Beginning).unwrap();
        assert_eq!(poll(&mut f).len(), 2);

        OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        append(&path, b"after\n");
        assert_eq!(poll(&mut f), ["after"]);
        append(&path, b"more\n");
        assert_eq!(poll(&mut f), ["more"]);
    }

    #[test]
    fn rotation_finishes_old_file_then_reads_new_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.log");
        let rotated = dir.path().join("app.log.1");
        append(&path, b"one\n");
        let mut f = LineFollower::open(&path, FollowStart::Beginning).unwrap();
        assert_eq!(poll(&mut f), ["one"]);

        // The writer still has the old file open after the rename.
        append(&path, b"two\nthr");
        fs::rename(&path, &rotated).unwrap();
        append(&rotated, b"ee\nfour\n");
        // Path missing: the old handle is still read.
        assert_eq!(poll(&mut f), ["two", "three", "four"]);

        append(&rotated, b"partial");
        append(&path, b"new1\nnew2\n");
        // Old file to its end (its partial line emitted), then the new file.
        assert_eq!(poll(&mut f), ["partial", "new1", "new2"]);
        append(&path, b"new3\n");
        assert_eq!(poll(&mut f), ["new3"]);
    }

    #[test]
    fn waits_for_a_missing_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("later.log");
        // FollowStart::End does not apply to a file that appears later.
        let mut f = LineFollower::open(&path, FollowStart::End).unwrap();
        assert!(f.warned_missing);
        assert!(poll(&mut f).is_empty());
        assert!(poll(&mut f).is_empty());

        append(&path, b"first\nsecond\n");
        assert_eq!(poll(&mut f), ["first", "second"]);
        assert!(!f.warned_missing);

        // Deleted and recreated: also followed.
        fs::remove_file(&path).unwrap();
        assert!(poll(&mut f).is_empty());
        append(&path, b"third\n");
        assert_eq!(poll(&mut f), ["third"]);
    }

    #[test]
    fn partial_line_is_held_until_its_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.log");
        append(&path, b"done\nhalf");
        let mut f = LineFollower::open(&path, FollowStart::Beginning).unwrap();
        assert_eq!(poll(&mut f), ["done"]);
        assert!(poll(&mut f).is_empty());
        append(&path, b" and more");
        assert!(poll(&mut f).is_empty());
        append(&path, b" and the end\r\n");
        assert_eq!(poll(&mut f), ["half and more and the end"]);
    }

    #[test]
    fn overlong_lines_are_split_at_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("app.log");
        append(&path, b"abcdefghij\nxy\n");
        let mut f = LineFollower::open(&path, FollowStart::Beginning)
            .unwrap()
            .with_max_line_bytes(4);
        assert_eq!(poll(&mut f), ["abcd", "efgh", "ij", "xy"]);
    }

    #[test]
    fn many_lines_across_buffer_boundaries() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("big.log");
        let mut data = Vec::new();
        for i in 0..50_000 {
            writeln!(data, "line number {i} with some padding to cross buffers").unwrap();
        }
        append(&path, &data);
        let mut f = LineFollower::open(&path, FollowStart::Beginning).unwrap();
        let lines = poll(&mut f);
        assert_eq!(lines.len(), 50_000);
        assert_eq!(
            lines[12_345],
            "line number 12345 with some padding to cross buffers"
        );
    }
}
