//! A TCP text socket as a source, like Spark's `socketTextStream`: the
//! source connects as a client to `host:port` (e.g. `nc -lk 9999`) and every
//! newline-terminated line it receives becomes one record of partition 0.
//!
//! This module owns one background thread per source, which connects,
//! reads lines into an in-memory buffer and reconnects with backoff when the
//! connection drops, and the buffer itself. Each line gets the next offset;
//! the value is the line without its `\n` (and a `\r` before it), the key
//! is null, the timestamp is the arrival time in ms.
//!
//! What the socket source cannot do, and must never pretend to:
//! - Replay. Lines exist only in memory. A read of `[from, until)` drops the
//!   lines below `from`: the buffer keeps the current range (so a failed
//!   task can re-read it) and what has not been read yet, nothing older. A
//!   restarted job resumes numbering at its committed offset
//!   ([`Source::resume`]), but the lines that were buffered and not
//!   committed, and every line sent while the job was down, are lost: this
//!   source gives at-most-once input ([`Source::replayable`] is false).
//! - Grow without bound. When the unread lines reach the limits
//!   ([`SocketLimits`], by default 1M lines or 256 MiB) the thread stops
//!   reading the socket until a read consumes them, so the sender is slowed
//!   by TCP flow control instead of the job running out of memory. The
//!   range being read is kept on top of that, so the buffer holds at most
//!   about twice the limits.

use std::collections::VecDeque;
use std::io::{self, BufRead, BufReader, Read};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use sluice_log::common::now_ms;

use arrow::array::RecordBatch;

use super::record::RecordColumns;
use super::{ChunkSink, PartitionInfo, Source, SourceError, source_schema};

const CHUNK_ROWS: usize = 8192;
/// How often the blocked reader thread looks at the stop flag.
const STOP_CHECK: Duration = Duration::from_millis(200);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// A longer line is cut into pieces of this size (each its own record)
/// rather than buffered without end while no newline comes.
const MAX_LINE_BYTES: usize = 16 << 20;

/// Bounds on the lines received but not yet read by the job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketLimits {
    pub max_lines: usize,
    pub max_bytes: usize,
}

impl Default for SocketLimits {
    fn default() -> Self {
        SocketLimits {
            max_lines: 1_000_000,
            max_bytes: 256 << 20,
        }
    }
}

struct Line {
    timestamp: i64,
    bytes: Box<[u8]>,
}

/// The received lines: `lines[i]` has offset `first + i`.
struct Buffer {
    lines: VecDeque<Line>,
    first: i64,
    /// Lines below this offset were delivered by a read; only the lines at
    /// or after it count against the limits.
    read_until: i64,
    bytes_total: usize,
    /// Bytes of the buffered lines below `read_until`.
    bytes_read: usize,
    /// The last timestamp given, so arrival times never go backwards when
    /// the wall clock does (`offset_for_time` searches them).
    last_timestamp: i64,
    /// Set by the first read; `resume` may renumber only before it.
    read_started: bool,
}

impl Buffer {
    fn next(&self) -> i64 {
        self.first + self.lines.len() as i64
    }

    fn unread_lines(&self) -> usize {
        (self.next() - self.read_until.max(self.first)).max(0) as usize
    }

    fn is_full(&self, limits: &SocketLimits) -> bool {
        self.unread_lines() >= limits.max_lines
            || self.bytes_total - self.bytes_read >= limits.max_bytes
    }

    fn push(&mut self, bytes: Vec<u8>) {
        let timestamp = now_ms().max(self.last_timestamp);
        self.last_timestamp = timestamp;
        self.bytes_total += bytes.len();
        self.lines.push_back(Line {
            timestamp,
            bytes: bytes.into_boxed_slice(),
        });
    }

    /// Drops the lines below `offset`.
    fn trim_below(&mut self, offset: i64) {
        while self.first < offset {
            let Some(line) = self.lines.pop_front() else {
                break;
            };
            self.bytes_total -= line.bytes.len();
            if self.first < self.read_until {
                self.bytes_read -= line.bytes.len();
            }
            self.first += 1;
        }
    }

    /// Records that `[.., until)` was delivered.
    fn mark_read(&mut self, until: i64) {
        let start = self.read_until.max(self.first);
        let end = until.min(self.next());
        for o in start..end {
            self.bytes_read += self.lines[(o - self.first) as usize].bytes.len();
        }
        self.read_until = self.read_until.max(until);
    }
}

struct Shared {
    buffer: Mutex<Buffer>,
    /// Signalled when a read frees room in the buffer.
    room: Condvar,
    stop: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Buffer> {
        sluice_log::common::mutex(&self.buffer)
    }

    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// Lines from a TCP server, read as a client. See the module docs.
pub struct SocketSource {
    name: String,
    addr: String,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl SocketSource {
    /// Connects to `addr` (`host:port`) in the background, with the default
    /// [`SocketLimits`]; offsets are checkpointed under `name`.
    pub fn new(name: impl Into<String>, addr: impl Into<String>) -> Result<Self, SourceError> {
        Self::with_limits(name, addr, SocketLimits::default())
    }

    pub fn with_limits(
        name: impl Into<String>,
        addr: impl Into<String>,
        limits: SocketLimits,
    ) -> Result<Self, SourceError> {
        let name = name.into();
        let addr = addr.into();
        let unavailable = |message: String| SourceError::Unavailable {
            source_name: name.clone(),
            message,
        };
        // Syntax only: the host need not resolve yet, the thread retries.
        match addr.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {}
            _ => return Err(unavailable(format!("{addr:?} is not host:port"))),
        }
        if limits.max_lines == 0 || limits.max_bytes == 0 {
            return Err(unavailable("the buffer limits must be positive".into()));
        }
        let shared = Arc::new(Shared {
            buffer: Mutex::new(Buffer {
                lines: VecDeque::new(),
                first: 0,
                read_until: 0,
                bytes_total: 0,
                bytes_read: 0,
                last_timestamp: 0,
                read_started: false,
            }),
            room: Condvar::new(),
            stop: AtomicBool::new(false),
        });
        let thread = {
            let shared = shared.clone();
            let (name, addr) = (name.clone(), addr.clone());
            std::thread::Builder::new()
                .name(format!("socket-{name}"))
                .spawn(move || receive(&shared, &name, &addr, &limits))
                .map_err(|e| unavailable(format!("cannot start the reader thread: {e}")))?
        };
        Ok(SocketSource {
            name,
            addr,
            shared,
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    fn partition_error(&self, message: String) -> SourceError {
        SourceError::Partition {
            source_name: self.name.clone(),
            partition: 0,
            message,
        }
    }
}

impl Drop for SocketSource {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.room.notify_all();
        // Bounded: the thread checks the flag at least every STOP_CHECK
        // (and after at most one CONNECT_TIMEOUT).
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Sleeps `d`, waking early when the source is dropped.
fn sleep_unless_stopped(shared: &Shared, d: Duration) {
    let mut left = d;
    while !left.is_zero() && !shared.stopping() {
        let step = left.min(STOP_CHECK);
        std::thread::sleep(step);
        left -= step;
    }
}

/// The reader thread: connect, read, reconnect with backoff, until stopped.
fn receive(shared: &Shared, name: &str, addr: &str, limits: &SocketLimits) {
    let mut backoff = MIN_BACKOFF;
    let mut failures = 0u32;
    while !shared.stopping() {
        match connect(addr) {
            Ok(stream) => {
                tracing::info!(source = name, "connected to {addr}");
                failures = 0;
                let (lines, result) = read_lines(shared, stream, name, limits);
                if lines > 0 {
                    backoff = MIN_BACKOFF;
                }
                match result {
                    _ if shared.stopping() => break,
                    Ok(()) => tracing::warn!(
                        source = name,
                        "{addr} closed the connection after {lines} line(s); reconnecting (lines sent until we are back are lost)"
                    ),
                    Err(e) => tracing::warn!(
                        source = name,
                        "connection to {addr} failed after {lines} line(s): {e}; reconnecting (lines sent until we are back are lost)"
                    ),
                }
            }
            Err(e) => {
                // Once at warn, then quietly: a server that is not up yet
                // would otherwise fill the log.
                if failures == 0 {
                    tracing::warn!(source = name, "cannot connect to {addr}: {e}; retrying");
                } else {
                    tracing::debug!(source = name, "cannot connect to {addr}: {e}; retrying");
                }
                failures = failures.saturating_add(1);
            }
        }
        sleep_unless_stopped(shared, backoff);
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

fn connect(addr: &str) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the address resolved to nothing");
    for a in addr.to_socket_addrs()? {
        match TcpStream::connect_timeout(&a, CONNECT_TIMEOUT) {
            Ok(s) => return Ok(s),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Waits until the buffer has room (or the source is stopping).
fn wait_for_room(shared: &Shared, name: &str, limits: &SocketLimits) {
    let mut buffer = shared.lock();
    let mut logged = false;
    while buffer.is_full(limits) && !shared.stopping() {
        if !logged {
            tracing::debug!(
                source = name,
                "buffer full ({} unread lines); pausing the socket until the job reads",
                buffer.unread_lines()
            );
            logged = true;
        }
        buffer = match shared.room.wait_timeout(buffer, STOP_CHECK) {
            Ok((b, _)) => b,
            Err(poisoned) => poisoned.into_inner().0,
        };
    }
}

/// Reads lines from one connection until it ends; returns how many.
fn read_lines(
    shared: &Shared,
    stream: TcpStream,
    name: &str,
    limits: &SocketLimits,
) -> (u64, io::Result<()>) {
    let mut count = 0u64;
    // A read timeout lets the thread notice a stop while the peer is quiet.
    if let Err(e) = stream.set_read_timeout(Some(STOP_CHECK)) {
        return (0, Err(e));
    }
    let max_line = MAX_LINE_BYTES.min(limits.max_bytes).max(1);
    let mut reader = BufReader::with_capacity(64 << 10, stream);
    let mut line = Vec::new();
    loop {
        if shared.stopping() {
            return (count, Ok(()));
        }
        wait_for_room(shared, name, limits);
        // `take` bounds a line; bytes read before an error or timeout stay
        // in `line` and the next call continues the same line.
        let budget = (max_line + 1).saturating_sub(line.len()) as u64;
        match (&mut reader).take(budget).read_until(b'\n', &mut line) {
            Ok(0) if budget > 0 => {
                // End of stream: a last line without a newline still counts
                // (the sender is done with it).
                if !line.is_empty() {
                    shared.lock().push(std::mem::take(&mut line));
                    count += 1;
                }
                return (count, Ok(()));
            }
            Ok(_) => {
                if line.last() == Some(&b'\n') {
                    line.pop();
                    if line.last() == Some(&b'\r') {
                        line.pop();
                    }
                } else if line.len() >= max_line {
                    tracing::warn!(
                        source = name,
                        "a line longer than {max_line} bytes was cut into pieces"
                    );
                    let rest = line.split_off(max_line);
                    shared.lock().push(std::mem::replace(&mut line, rest));
                    count += 1;
                    continue;
                } else {
                    // Stopped short of a newline: the stream ended; the next
                    // call returns 0 and flushes the partial line.
                    continue;
                }
                shared.lock().push(std::mem::take(&mut line));
                count += 1;
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) => {}
            // A broken connection: the partial line is incomplete; drop it.
            Err(e) => return (count, Err(e)),
        }
    }
}

impl Source for SocketSource {
    fn name(&self) -> &str {
        &self.name
    }

    fn replayable(&self) -> bool {
        false
    }

    /// Offsets continue from the committed one: the lines buffered since
    /// this source started are numbered from there. Meant to come before
    /// the driver plans with `partitions`; once a range was read it is
    /// ignored, since renumbering lines already read would break ranges.
    fn resume(&self, committed: &[(i32, i64)]) {
        let Some(&(_, offset)) = committed.iter().find(|(p, _)| *p == 0) else {
            return;
        };
        let mut b = self.shared.lock();
        if b.read_started {
            tracing::warn!(
                source = %self.name,
                "resume({offset}) after the first read is ignored"
            );
            return;
        }
        b.first = offset.max(0);
        b.read_until = b.first;
        b.bytes_read = 0;
    }

    fn partitions(&self) -> Result<Vec<PartitionInfo>, SourceError> {
        let b = self.shared.lock();
        Ok(vec![PartitionInfo {
            partition: 0,
            log_start: b.first,
            high_watermark: b.next(),
        }])
    }

    fn offset_for_time(&self, partition: i32, timestamp_ms: i64) -> Result<i64, SourceError> {
        if partition != 0 {
            return Err(self.partition_error("a socket source has only partition 0".into()));
        }
        let b = self.shared.lock();
        // Arrival times never decrease, so a binary search finds the first.
        let i = b.lines.partition_point(|l| l.timestamp < timestamp_ms);
        Ok(b.first + i as i64)
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
                "a socket source has only partition 0, not {partition}"
            )));
        }
        if from >= until {
            return Ok(());
        }
        {
            let mut b = self.shared.lock();
            b.read_started = true;
            if from < b.first {
                return Err(self
                    .partition_error(format!(
                        "lines {from}..{} are gone: a socket source keeps only the range being read and newer lines, so an older range cannot be read again",
                        b.first
                    )));
            }
            if until > b.next() {
                return Err(self.partition_error(format!(
                    "lines {from}..{until} were planned but only lines up to {} have arrived",
                    b.next()
                )));
            }
            b.trim_below(from);
        }
        self.shared.room.notify_all();
        let mut offset = from;
        while offset < until {
            let end = until.min(offset + CHUNK_ROWS as i64);
            // Copy one chunk under the lock; the sink runs without it so the
            // reader thread is not held up by downstream work.
            let columns = {
                let b = self.shared.lock();
                if offset < b.first {
                    return Err(self.partition_error(format!(
                        "lines {offset}..{until} were dropped by a concurrent read of a later range"
                    )));
                }
                let mut columns = RecordColumns::with_capacity((end - offset) as usize);
                for (o, line) in (offset..end).zip(b.lines.range((offset - b.first) as usize..)) {
                    columns.begin_row(&self.name, 0, o, line.timestamp);
                    columns.key.append_null();
                    columns.value.append_value(&line.bytes);
                    columns.end_row();
                }
                columns
            };
            out(RecordBatch::try_new(source_schema(), columns.finish())?)?;
            offset = end;
        }
        self.shared.lock().mark_read(until);
        self.shared.room.notify_all();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::net::TcpListener;
    use std::time::Instant;

    use super::*;
    use crate::data::Data;
    use crate::source::Record;

    fn collect(source: &dyn Source, from: i64, until: i64) -> Result<Vec<Record>, SourceError> {
        let mut rows = Vec::new();
        source.read(0, from, until, &mut |batch: RecordBatch| {
            assert_eq!(batch.schema(), source_schema());
            assert!(batch.num_rows() <= CHUNK_ROWS);
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

    /// Waits (bounded) until the high-water mark is `hw`.
    fn wait_for_hw(source: &SocketSource, hw: i64) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let now = source.partitions().unwrap()[0].high_watermark;
            if now == hw {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "high-water mark stuck at {now}, wanted {hw}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn listener() -> (TcpListener, String) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        (l, addr)
    }

    #[test]
    fn lines_become_records_and_old_ranges_are_dropped() {
        let (listener, addr) = listener();
        let source = SocketSource::new("sock", &addr).unwrap();
        assert!(!source.replayable());
        let (mut conn, _) = listener.accept().unwrap();
        conn.write_all(b"alpha\nbeta\r\n\ngam").unwrap();
        conn.write_all(b"ma\n").unwrap();
        wait_for_hw(&source, 4);

        let rows = collect(&source, 0, 4).unwrap();
        assert_eq!(values(&rows), ["alpha", "beta", "", "gamma"]);
        assert_eq!(
            rows.iter().map(|r| r.offset).collect::<Vec<_>>(),
            [0, 1, 2, 3]
        );
        assert!(
            rows.iter()
                .all(|r| r.key.is_none() && r.partition == 0 && r.topic == "sock")
        );
        assert!(rows.windows(2).all(|w| w[0].timestamp <= w[1].timestamp));

        // The current range can be re-read (a retried task), a later one
        // drops what is below it, and then the older range is gone.
        assert_eq!(
            values(&collect(&source, 0, 4).unwrap()),
            ["alpha", "beta", "", "gamma"]
        );
        assert_eq!(values(&collect(&source, 2, 4).unwrap()), ["", "gamma"]);
        assert_eq!(source.partitions().unwrap()[0].log_start, 2);
        let err = collect(&source, 1, 3).unwrap_err().to_string();
        assert!(err.contains("partition 0") && err.contains("gone"), "{err}");
        // Nothing beyond what arrived.
        assert!(collect(&source, 2, 9).is_err());
        assert!(collect(&source, 4, 4).unwrap().is_empty());
        assert!(source.read(1, 0, 1, &mut |_| Ok(())).is_err());

        // Time lookups over the buffer.
        let ts = rows[3].timestamp;
        assert!(source.offset_for_time(0, ts).unwrap() <= 3);
        assert_eq!(source.offset_for_time(0, ts + 60_000).unwrap(), 4);
    }

    #[test]
    fn reconnects_after_the_server_closes() {
        let (listener, addr) = listener();
        let source = SocketSource::new("sock", &addr).unwrap();
        let (mut conn, _) = listener.accept().unwrap();
        // A last line without a newline is kept when the peer closes.
        conn.write_all(b"one\ntwo").unwrap();
        drop(conn);
        wait_for_hw(&source, 2);
        let (mut conn, _) = listener.accept().unwrap();
        conn.write_all(b"three\n").unwrap();
        wait_for_hw(&source, 3);
        assert_eq!(
            values(&collect(&source, 0, 3).unwrap()),
            ["one", "two", "three"]
        );
    }

    #[test]
    fn a_full_buffer_pauses_the_socket_until_the_job_reads() {
        let (listener, addr) = listener();
        let limits = SocketLimits {
            max_lines: 10,
            max_bytes: 1 << 20,
        };
        let source = SocketSource::with_limits("sock", &addr, limits).unwrap();
        let (mut conn, _) = listener.accept().unwrap();
        let all: String = (0..35).map(|i| format!("line{i}\n")).collect();
        conn.write_all(all.as_bytes()).unwrap();
        wait_for_hw(&source, 10);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(
            source.partitions().unwrap()[0].high_watermark,
            10,
            "the limit holds"
        );

        let mut from = 0;
        let mut seen = Vec::new();
        while from < 35 {
            let hw = (from + 10).min(35);
            wait_for_hw(&source, hw);
            seen.extend(values(&collect(&source, from, hw).unwrap()));
            from = hw;
        }
        let expected: Vec<String> = (0..35).map(|i| format!("line{i}")).collect();
        assert_eq!(seen, expected);
    }

    #[test]
    fn byte_limit_also_pauses_the_socket() {
        let (listener, addr) = listener();
        let limits = SocketLimits {
            max_lines: 1000,
            max_bytes: 100,
        };
        let source = SocketSource::with_limits("sock", &addr, limits).unwrap();
        let (mut conn, _) = listener.accept().unwrap();
        // 10 lines of 40 bytes: room for 3 before the limit is reached.
        let line = format!("{}\n", "x".repeat(40));
        for _ in 0..10 {
            conn.write_all(line.as_bytes()).unwrap();
        }
        wait_for_hw(&source, 3);
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(source.partitions().unwrap()[0].high_watermark, 3);
        assert_eq!(collect(&source, 0, 3).unwrap().len(), 3);
        wait_for_hw(&source, 6);
    }

    #[test]
    fn resume_continues_from_the_committed_offset() {
        let (listener, addr) = listener();
        let source = SocketSource::new("sock", &addr).unwrap();
        source.resume(&[(0, 100)]);
        assert_eq!(
            source.partitions().unwrap(),
            vec![PartitionInfo {
                partition: 0,
                log_start: 100,
                high_watermark: 100
            }]
        );
        let (mut conn, _) = listener.accept().unwrap();
        conn.write_all(b"a\nb\n").unwrap();
        wait_for_hw(&source, 102);
        let rows = collect(&source, 100, 102).unwrap();
        assert_eq!(
            rows.iter().map(|r| r.offset).collect::<Vec<_>>(),
            [100, 101]
        );
        assert_eq!(values(&rows), ["a", "b"]);
        // Too late once reading started.
        source.resume(&[(0, 500)]);
        assert_eq!(source.partitions().unwrap()[0].high_watermark, 102);
    }

    #[test]
    fn bad_addresses_are_refused_and_drop_does_not_hang() {
        assert!(SocketSource::new("s", "no-port").is_err());
        assert!(SocketSource::new("s", ":9999").is_err());
        // Nobody listens: the source keeps retrying in the background and
        // still stops promptly.
        let (listener, addr) = listener();
        drop(listener);
        let source = SocketSource::new("s", &addr).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(source.partitions().unwrap()[0].high_watermark, 0);
        let started = Instant::now();
        drop(source);
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
