//! A directory of text files as a source, like Spark's `textFileStream`:
//! every new file in the directory contributes its lines as records of
//! partition 0 (value = the line without `\n` or `\r\n`, key null, a header
//! `file` with the file's name, timestamp = the file's modification time).
//!
//! This module owns an in-memory index of the files seen: each new file,
//! when first listed, is counted (one streaming pass, not loaded in memory)
//! and given the next consecutive range of offsets. Files found by the same
//! listing are ordered by (modification time, name). A read opens the files
//! of its range and reads just the lines it needs, starting from a sparse
//! line → byte-position mark taken while counting.
//!
//! It never writes, moves or deletes files, and never reads a file that is
//! not finished on purpose: names starting with `.` or `_` and ending in
//! `.tmp` or `.partial` are ignored, so writers should write under such a
//! name and rename into place. A file is indexed once, by name, at the size
//! it had then: lines appended later are never read, and a file renamed
//! over an indexed name is not read again.
//!
//! Not replayable ([`Source::replayable`] is false). After a restart the
//! index is rebuilt from the files present, all ordered by (modification
//! time, name), and [`Source::resume`] skips the first `committed` offsets
//! of it. That lines up with what was processed before the stop only if the
//! directory holds the same files with the same contents and the same
//! order. What breaks it:
//! - a processed file deleted, shortened or extended (or a file renamed
//!   out and back): offsets shift, so unprocessed lines are skipped (lost)
//!   or processed lines are read again;
//! - a file whose modification time sorts it before processed files (e.g.
//!   moved in with `mv`, which keeps the time it was written) or files of
//!   one listing tied on time and name order differing from discovery order
//!   before the stop: the same shifts;
//! - fewer lines present than committed: the next file starts at the
//!   committed offset and nothing older is read again.
//!
//! Memory: one index entry per file not yet fully read (older ones are
//! dropped when a later range is read) and one name per file ever seen.

use std::collections::{HashSet, VecDeque};
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::UNIX_EPOCH;

use arrow::array::RecordBatch;

use super::record::RecordColumns;
use super::{ChunkSink, PartitionInfo, Source, SourceError, source_schema};

const CHUNK_ROWS: usize = 8192;
/// A byte position is remembered every this many lines, so a read deep
/// into a large file seeks near its first line instead of scanning from the
/// start.
const MARK_EVERY: i64 = 65_536;

/// One indexed file.
#[derive(Debug)]
struct IndexedFile {
    /// The name, for the `file` header (lossy if not UTF-8).
    name: String,
    path: PathBuf,
    first: i64,
    lines: i64,
    /// Bytes indexed; anything appended later is not read.
    size: u64,
    modified_ms: i64,
    /// `marks[k]` is the byte position of line `(k + 1) * MARK_EVERY`.
    marks: Vec<u64>,
}

impl IndexedFile {
    fn end(&self) -> i64 {
        self.first + self.lines
    }
}

/// Held while listing and counting: files are discovered one listing at a
/// time.
struct Scanner {
    seen: HashSet<OsString>,
    /// The offset the next new file starts at.
    next: i64,
}

/// What reads and planning see; held briefly.
struct Index {
    files: VecDeque<Arc<IndexedFile>>,
    log_start: i64,
    high_watermark: i64,
    /// Set by the first read; `resume` applies only before it.
    read_started: bool,
}

/// New text files in a directory. See the module docs.
pub struct FileSource {
    name: String,
    dir: PathBuf,
    /// Lock order: `scanner`, then `index`.
    scanner: Mutex<Scanner>,
    index: Mutex<Index>,
}

/// Whether a file name is one to read (not hidden, not in progress).
fn eligible(name: &str) -> bool {
    !(name.starts_with('.')
        || name.starts_with('_')
        || name.ends_with(".tmp")
        || name.ends_with(".partial"))
}

/// Counts the lines in the first `size` bytes of `path` (a last line
/// without a newline counts) and takes the marks. Returns the lines, the
/// bytes actually there (less than `size` if the file shrank meanwhile) and
/// the marks.
fn count_lines(path: &Path, size: u64) -> io::Result<(i64, u64, Vec<u64>)> {
    let mut reader = BufReader::with_capacity(256 << 10, File::open(path)?.take(size));
    let mut lines = 0i64;
    let mut pos = 0u64;
    let mut marks = Vec::new();
    let mut ends_with_newline = true;
    loop {
        let buf = match reader.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if buf.is_empty() {
            break;
        }
        for (i, &b) in buf.iter().enumerate() {
            if b == b'\n' {
                lines += 1;
                if lines % MARK_EVERY == 0 {
                    marks.push(pos + i as u64 + 1);
                }
            }
        }
        ends_with_newline = buf.last() == Some(&b'\n');
        let n = buf.len();
        pos += n as u64;
        reader.consume(n);
    }
    if pos > 0 && !ends_with_newline {
        lines += 1;
    }
    Ok((lines, pos, marks))
}

fn modified_ms(meta: &fs::Metadata) -> i64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as i64)
}

impl FileSource {
    /// Watches `dir`; offsets are checkpointed under `name`. The files
    /// present now are indexed at once (so a job starting from `latest`
    /// skips them).
    pub fn new(name: impl Into<String>, dir: impl Into<PathBuf>) -> Result<Self, SourceError> {
        let source = FileSource {
            name: name.into(),
            dir: dir.into(),
            scanner: Mutex::new(Scanner {
                seen: HashSet::new(),
                next: 0,
            }),
            index: Mutex::new(Index {
                files: VecDeque::new(),
                log_start: 0,
                high_watermark: 0,
                read_started: false,
            }),
        };
        source.scan(&mut sluice_log::common::mutex(&source.scanner))?;
        Ok(source)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn unavailable(&self, message: String) -> SourceError {
        SourceError::Unavailable {
            source_name: self.name.clone(),
            message,
        }
    }

    fn partition_error(&self, message: String) -> SourceError {
        SourceError::Partition {
            source_name: self.name.clone(),
            partition: 0,
            message,
        }
    }

    /// Lists the directory and indexes the files not seen before.
    fn scan(&self, scanner: &mut Scanner) -> Result<(), SourceError> {
        let listing = fs::read_dir(&self.dir)
            .map_err(|e| self.unavailable(format!("cannot list {}: {e}", self.dir.display())))?;
        let mut found = Vec::new();
        for entry in listing {
            let entry = entry.map_err(|e| {
                self.unavailable(format!("cannot list {}: {e}", self.dir.display()))
            })?;
            let file_name = entry.file_name();
            if scanner.seen.contains(&file_name) {
                continue;
            }
            let name = file_name.to_string_lossy().into_owned();
            if !eligible(&name) {
                continue;
            }
            let path = entry.path();
            let meta = match fs::metadata(&path) {
                Ok(m) => m,
                // Renamed or deleted since the listing: not there.
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(self.unavailable(format!("cannot read {}: {e}", path.display())));
                }
            };
            if !meta.is_file() {
                continue;
            }
            found.push((modified_ms(&meta), name, file_name, path, meta.len()));
        }
        found.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
        let mut indexed = Vec::with_capacity(found.len());
        for (modified_ms, name, file_name, path, size) in found {
            let (lines, size, marks) = match count_lines(&path, size) {
                Ok(counted) => counted,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                // A file that cannot be read fails planning visibly rather
                // than being skipped without a trace.
                Err(e) => {
                    return Err(self.unavailable(format!("cannot read {}: {e}", path.display())));
                }
            };
            scanner.seen.insert(file_name);
            if lines == 0 {
                continue;
            }
            tracing::debug!(source = %self.name, file = %name, lines, first = scanner.next, "new file");
            indexed.push(Arc::new(IndexedFile {
                name,
                path,
                first: scanner.next,
                lines,
                size,
                modified_ms,
                marks,
            }));
            scanner.next += lines;
        }
        let mut index = sluice_log::common::mutex(&self.index);
        index.files.extend(indexed);
        index.high_watermark = scanner.next;
        Ok(())
    }

    /// Passes the lines `[from, until)` of `file` (offsets, not line
    /// numbers) on, adding to `columns` and flushing full chunks.
    fn read_file(
        &self,
        file: &IndexedFile,
        from: i64,
        until: i64,
        columns: &mut RecordColumns,
        out: &mut ChunkSink<'_>,
    ) -> Result<(), SourceError> {
        let changed = |what: String| {
            self.partition_error(format!(
                "{}: {what} (was the file changed after it was indexed? files must be complete when renamed into place)",
                file.path.display()
            ))
        };
        let start = from - file.first;
        let wanted = until - from;
        // Start at the last mark at or before the first wanted line.
        let k = (start / MARK_EVERY) as usize;
        let (mut line_no, pos) = match k.checked_sub(1).and_then(|i| file.marks.get(i)) {
            Some(&pos) => (k as i64 * MARK_EVERY, pos),
            None => (0, 0),
        };
        let mut f = File::open(&file.path).map_err(|e| changed(format!("cannot open: {e}")))?;
        f.seek(SeekFrom::Start(pos))
            .map_err(|e| changed(format!("cannot seek: {e}")))?;
        let mut reader = BufReader::with_capacity(256 << 10, f.take(file.size - pos));
        let mut line = Vec::with_capacity(256);
        let mut emitted = 0i64;
        while emitted < wanted {
            line.clear();
            let n = reader
                .read_until(b'\n', &mut line)
                .map_err(|e| changed(format!("cannot read: {e}")))?;
            if n == 0 {
                return Err(changed(format!(
                    "line {} is missing: it had {} lines",
                    line_no + 1,
                    file.lines
                )));
            }
            if line_no >= start {
                if line.last() == Some(&b'\n') {
                    line.pop();
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                }
                columns.begin_row(&self.name, 0, from + emitted, file.modified_ms);
                columns.key.append_null();
                columns.value.append_value(&line);
                columns.push_header("file", Some(file.name.as_bytes()));
                columns.end_row();
                emitted += 1;
                if columns.len() >= CHUNK_ROWS {
                    let full = std::mem::replace(columns, RecordColumns::with_capacity(CHUNK_ROWS));
                    out(RecordBatch::try_new(source_schema(), full.finish())?)?;
                }
            }
            line_no += 1;
        }
        Ok(())
    }
}

impl Source for FileSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn replayable(&self) -> bool {
        false
    }

    /// Skips the first `committed` offsets of the index built at start
    /// (see the module docs for when that is not what was processed).
    fn resume(&self, committed: &[(i32, i64)]) {
        let Some(&(_, committed)) = committed.iter().find(|(p, _)| *p == 0) else {
            return;
        };
        let committed = committed.max(0);
        let mut scanner = sluice_log::common::mutex(&self.scanner);
        let mut index = sluice_log::common::mutex(&self.index);
        if index.read_started {
            tracing::warn!(source = %self.name, "resume({committed}) after the first read is ignored");
            return;
        }
        if committed > scanner.next {
            tracing::warn!(
                source = %self.name,
                "the job committed offset {committed} but the files in {} hold only {} lines: files processed before the stop were removed or shortened; new files start at {committed}",
                self.dir.display(),
                scanner.next
            );
            scanner.next = committed;
            index.high_watermark = committed;
        }
        index.log_start = committed;
        while index.files.front().is_some_and(|f| f.end() <= committed) {
            index.files.pop_front();
        }
    }

    fn partitions(&self) -> Result<Vec<PartitionInfo>, SourceError> {
        self.scan(&mut sluice_log::common::mutex(&self.scanner))?;
        let index = sluice_log::common::mutex(&self.index);
        Ok(vec![PartitionInfo {
            partition: 0,
            log_start: index.log_start,
            high_watermark: index.high_watermark,
        }])
    }

    /// The first file (in offset order) modified at or after the time.
    fn offset_for_time(&self, partition: i32, timestamp_ms: i64) -> Result<i64, SourceError> {
        if partition != 0 {
            return Err(self.partition_error("a file source has only partition 0".into()));
        }
        let index = sluice_log::common::mutex(&self.index);
        Ok(index
            .files
            .iter()
            .find(|f| f.modified_ms >= timestamp_ms)
            .map_or(index.high_watermark, |f| f.first.max(index.log_start)))
    }

    fn read(
        &self,
        partition: i32,
        from: i64,
        until: i64,
        out: &mut ChunkSink<'_>,
    ) -> Result<(), SourceError> {
        if partition != 0 {
            return Err(self.partition_error(format!(
                "a file source has only partition 0, not {partition}"
            )));
        }
        if from >= until {
            return Ok(());
        }
        let files: Vec<Arc<IndexedFile>> = {
            let mut index = sluice_log::common::mutex(&self.index);
            index.read_started = true;
            if from < index.log_start || until > index.high_watermark {
                return Err(self.partition_error(format!(
                    "offsets {from}..{until} are outside the indexed {}..{}",
                    index.log_start, index.high_watermark
                )));
            }
            // Keep the current range only: files wholly below it are done.
            while index.files.front().is_some_and(|f| f.end() <= from) {
                index.files.pop_front();
            }
            let front = index.files.front().map_or(from, |f| f.first.min(from));
            index.log_start = index.log_start.max(front);
            index
                .files
                .iter()
                .skip_while(|f| f.end() <= from)
                .take_while(|f| f.first < until)
                .cloned()
                .collect()
        };
        let mut columns = RecordColumns::with_capacity(CHUNK_ROWS.min((until - from) as usize));
        let mut offset = from;
        for file in &files {
            if file.first > offset {
                break;
            }
            let end = until.min(file.end());
            self.read_file(file, offset, end, &mut columns, out)?;
            offset = end;
        }
        if offset < until {
            return Err(
                self.partition_error(format!("no indexed file holds offsets {offset}..{until}"))
            );
        }
        if !columns.is_empty() {
            out(RecordBatch::try_new(source_schema(), columns.finish())?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::data::Data;
    use crate::source::Record;

    const T0: u64 = 1_700_000_000;

    fn write(dir: &Path, name: &str, contents: &str, mtime_s: u64) {
        let path = dir.join(name);
        let mut f = File::create(&path).unwrap();
        f.write_all(contents.as_bytes()).unwrap();
        f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(mtime_s))
            .unwrap();
    }

    fn collect(source: &FileSource, from: i64, until: i64) -> Result<Vec<Record>, SourceError> {
        let mut rows = Vec::new();
        source.read(0, from, until, &mut |batch: RecordBatch| {
            assert_eq!(batch.schema(), source_schema());
            assert!(batch.num_rows() > 0 && batch.num_rows() <= CHUNK_ROWS);
            let reader = Record::reader(batch.columns()).expect("the source schema");
            for i in 0..batch.num_rows() {
                rows.push(Record::to_owned_value(Record::get(&reader, i)));
            }
            Ok(())
        })?;
        Ok(rows)
    }

    fn values(rows: &[Record]) -> Vec<String> {
        rows.iter()
            .map(|r| String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned())
            .collect()
    }

    fn file_header(r: &Record) -> String {
        assert_eq!(r.headers.len(), 1);
        assert_eq!(r.headers[0].0, "file");
        String::from_utf8_lossy(r.headers[0].1.as_deref().unwrap()).into_owned()
    }

    fn hw(source: &FileSource) -> (i64, i64) {
        let p = source.partitions().unwrap();
        assert_eq!(p.len(), 1);
        (p[0].log_start, p[0].high_watermark)
    }

    #[test]
    fn new_files_become_consecutive_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // b is older than a: order is by modification time, then name.
        write(d, "a.txt", "a1\na2\r\na3\n", T0 + 10);
        write(d, "b.txt", "b1\nb2", T0);
        write(d, "c.txt", "", T0 + 1);
        write(d, ".hidden", "x\n", T0);
        write(d, "_SUCCESS", "x\n", T0);
        write(d, "d.tmp", "x\n", T0);
        write(d, "e.partial", "x\n", T0);
        fs::create_dir(d.join("sub")).unwrap();
        let source = FileSource::new("files", d).unwrap();
        assert!(!source.replayable());
        assert_eq!(hw(&source), (0, 5));

        let rows = collect(&source, 0, 5).unwrap();
        assert_eq!(values(&rows), ["b1", "b2", "a1", "a2", "a3"]);
        assert_eq!(
            rows.iter().map(|r| r.offset).collect::<Vec<_>>(),
            [0, 1, 2, 3, 4]
        );
        assert_eq!(
            rows.iter().map(file_header).collect::<Vec<_>>(),
            ["b.txt", "b.txt", "a.txt", "a.txt", "a.txt"]
        );
        assert!(rows.iter().all(|r| r.key.is_none() && r.partition == 0));
        assert_eq!(rows[0].timestamp, T0 as i64 * 1000);
        assert_eq!(rows[2].timestamp, (T0 as i64 + 10) * 1000);

        // A range across the two files, and one inside a file.
        assert_eq!(values(&collect(&source, 1, 4).unwrap()), ["b2", "a1", "a2"]);
        assert_eq!(values(&collect(&source, 3, 4).unwrap()), ["a2"]);

        // A file renamed in later comes after, even with an older time.
        write(d, "z.tmp", "z1\nz2\n", T0 - 100);
        assert_eq!(hw(&source).1, 5, "in progress");
        fs::rename(d.join("z.tmp"), d.join("z.txt")).unwrap();
        assert_eq!(hw(&source).1, 7);
        let rows = collect(&source, 4, 7).unwrap();
        assert_eq!(values(&rows), ["a3", "z1", "z2"]);
        assert_eq!(file_header(&rows[1]), "z.txt");

        // b was wholly below the last range: dropped from the index.
        assert_eq!(hw(&source), (2, 7));
        assert!(collect(&source, 0, 2).is_err());
        assert!(collect(&source, 5, 8).is_err(), "past the end");
        assert!(source.read(1, 0, 1, &mut |_| Ok(())).is_err());

        // Time lookups: the first file (in offset order) at or after it.
        assert_eq!(
            source.offset_for_time(0, (T0 as i64 + 5) * 1000).unwrap(),
            2
        );
        assert_eq!(
            source.offset_for_time(0, (T0 as i64 + 50) * 1000).unwrap(),
            7
        );
    }

    #[test]
    fn large_files_are_read_lazily_in_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let n = 3 * MARK_EVERY + 123;
        let body: String = (0..n).map(|i| format!("line {i}\n")).collect();
        write(dir.path(), "big.txt", &body, T0);
        let source = FileSource::new("files", dir.path()).unwrap();
        assert_eq!(hw(&source), (0, n));

        let mut chunks = 0;
        let mut count = 0i64;
        source
            .read(0, 10, 20_000, &mut |batch: RecordBatch| {
                chunks += 1;
                let reader = Record::reader(batch.columns()).expect("the source schema");
                for i in 0..batch.num_rows() {
                    let r = Record::get(&reader, i);
                    assert_eq!(r.offset, 10 + count);
                    assert_eq!(r.value_str(), format!("line {}", 10 + count));
                    count += 1;
                }
                Ok(())
            })
            .unwrap();
        assert_eq!(count, 19_990);
        assert_eq!(chunks, 3, "8192-row chunks");

        // Around and past the marks.
        for (from, until) in [
            (MARK_EVERY - 2, MARK_EVERY + 2),
            (2 * MARK_EVERY, 2 * MARK_EVERY + 1),
            (3 * MARK_EVERY + 100, n),
        ] {
            let rows = collect(&source, from, until).unwrap();
            let expected: Vec<String> = (from..until).map(|i| format!("line {i}")).collect();
            assert_eq!(values(&rows), expected);
        }
    }

    #[test]
    fn resume_skips_what_was_committed_and_changes_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        write(d, "1.txt", "a\nb\n", T0);
        write(d, "2.txt", "c\nd\ne\n", T0 + 1);

        // Restarted after offset 3: the rest of 2.txt only.
        let source = FileSource::new("files", d).unwrap();
        source.resume(&[(0, 3)]);
        assert_eq!(hw(&source), (3, 5));
        assert_eq!(values(&collect(&source, 3, 5).unwrap()), ["d", "e"]);
        assert!(collect(&source, 0, 3).is_err());

        // Committed past the files present (some were removed).
        let source = FileSource::new("files", d).unwrap();
        source.resume(&[(0, 100)]);
        assert_eq!(hw(&source), (100, 100));
        write(d, "3.txt", "f\n", T0 + 2);
        assert_eq!(hw(&source), (100, 101));
        assert_eq!(values(&collect(&source, 100, 101).unwrap()), ["f"]);

        // Appended lines are not read: the file counts as indexed.
        let source = FileSource::new("files", d).unwrap();
        fs::write(d.join("1.txt"), "a\nb\nmore\n").unwrap();
        assert_eq!(values(&collect(&source, 0, 2).unwrap()), ["a", "b"]);
        assert_eq!(hw(&source).1, 6);
        // A file truncated after it was indexed fails the read, naming it.
        fs::write(d.join("2.txt"), "c\n").unwrap();
        let err = collect(&source, 2, 5).unwrap_err().to_string();
        assert!(
            err.contains("2.txt") && err.contains("partition 0"),
            "{err}"
        );
    }

    #[test]
    fn a_missing_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = FileSource::new("files", dir.path().join("nope"))
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains("source files") && err.contains("nope"),
            "{err}"
        );
    }

    #[test]
    fn counting_handles_missing_final_newlines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        for (contents, lines) in [
            ("", 0),
            ("\n", 1),
            ("a", 1),
            ("a\n", 1),
            ("a\nb", 2),
            ("\n\n", 2),
        ] {
            fs::write(&p, contents).unwrap();
            let (n, size, _) = count_lines(&p, contents.len() as u64).unwrap();
            assert_eq!((n, size), (lines, contents.len() as u64), "{contents:?}");
        }
        // Only the indexed size counts.
        fs::write(&p, "a\nb\nc\n").unwrap();
        assert_eq!(count_lines(&p, 4).unwrap().0, 2);
    }
}
