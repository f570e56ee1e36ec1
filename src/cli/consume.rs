//! `sluice consume`: prints a topic's records, one per line, like
//! `kafka-console-consumer` and `kcat -C`.

use std::io::{self, BufWriter, Write};
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{anyhow, bail};
use bytes::Bytes;
use clap::Args;
use kafka_protocol::records::RecordBatchDecoder;

use super::common::{StoreArgs, open_store, stop_flag};
use crate::log::{LogError, Partition};
use crate::units::parse_timestamp_ms;

#[derive(Debug, Args)]
pub struct ConsumeArgs {
    /// Topic to read.
    pub topic: String,
    /// Read only this partition (all partitions when absent).
    #[arg(long, short = 'p')]
    pub partition: Option<i32>,
    /// Start at each partition's log start offset (the default).
    #[arg(long, conflicts_with_all = ["offset", "from_time"])]
    pub from_beginning: bool,
    /// Start at this offset (needs --partition).
    #[arg(long, requires = "partition", allow_negative_numbers = true)]
    pub offset: Option<i64>,
    /// Start at the first record with a timestamp at or after this time
    /// (ms since the epoch, or e.g. 2026-11-21T10:00:00Z).
    #[arg(long, value_parser = parse_timestamp_ms)]
    pub from_time: Option<i64>,
    /// Stop after this many records.
    #[arg(long)]
    pub max: Option<u64>,
    /// Keep waiting for new records at the end instead of exiting.
    #[arg(long)]
    pub follow: bool,
    /// Print the key before the value.
    #[arg(long)]
    pub print_key: bool,
    /// Print the offset before the record.
    #[arg(long)]
    pub print_offset: bool,
    /// Print the partition before the record.
    #[arg(long)]
    pub print_partition: bool,
    /// Print the timestamp (ms) before the record.
    #[arg(long)]
    pub print_timestamp: bool,
    /// Separator between printed fields.
    #[arg(long, default_value = "\t")]
    pub field_sep: String,
    #[command(flatten)]
    pub store: StoreArgs,
}

pub fn run(args: ConsumeArgs) -> anyhow::Result<()> {
    let store = open_store(&args.store.data_dir, false)?;
    let topic = store.topic(&args.topic)?;
    let partitions = match args.partition {
        Some(p) => vec![topic.partition(p)?],
        None => topic.partitions(),
    };
    let mut positions = Vec::with_capacity(partitions.len());
    for p in &partitions {
        let start = if let Some(offset) = args.offset {
            p.check_offset(offset)?;
            offset
        } else if let Some(ts) = args.from_time {
            p.offset_for_time(ts)?
                .map_or(p.high_watermark(), |(o, _)| o)
        } else {
            p.log_start_offset()
        };
        positions.push(start);
    }
    let stop = if args.follow {
        Some(stop_flag()?)
    } else {
        None
    };
    let stdout = io::stdout();
    let mut out = BufWriter::with_capacity(1 << 16, stdout.lock());
    let mut printed = 0u64;
    let mut buf = Vec::with_capacity(1 << 20);
    let limit = args.max.unwrap_or(u64::MAX);
    let result = (|| -> anyhow::Result<()> {
        loop {
            let mut progressed = false;
            for (p, position) in partitions.iter().zip(positions.iter_mut()) {
                if printed >= limit {
                    return Ok(());
                }
                buf.clear();
                let info = match p.read_into(*position, 1 << 20, &mut buf) {
                    Ok(info) => info,
                    Err(LogError::OffsetOutOfRange { log_start, .. }) if *position < log_start => {
                        // Retention deleted what we were about to read.
                        eprintln!(
                            "warning: {}-{}: offsets {}..{} were deleted by retention; skipping ahead",
                            p.topic(),
                            p.id(),
                            position,
                            log_start
                        );
                        *position = log_start;
                        continue;
                    }
                    Err(e) => return Err(e.into()),
                };
                if info.bytes == 0 {
                    continue;
                }
                progressed = true;
                printed += print_batches(p, &buf, *position, limit - printed, &args, &mut out)?;
                *position = info.next_offset;
            }
            if printed >= limit {
                return Ok(());
            }
            if !progressed {
                match &stop {
                    Some(stop) if !stop.load(Ordering::Relaxed) => {
                        out.flush()?;
                        std::thread::sleep(Duration::from_millis(100));
                    }
                    _ => return Ok(()),
                }
            }
        }
    })();
    match result.and_then(|()| out.flush().map_err(Into::into)) {
        Err(e) if is_broken_pipe(&e) => Ok(()),
        other => other,
    }
}

fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.downcast_ref::<io::Error>()
        .is_some_and(|e| e.kind() == io::ErrorKind::BrokenPipe)
}

/// Decodes and prints the records at or after `from` in whole batches
/// `data`; returns how many were printed (at most `limit`).
fn print_batches(
    p: &Partition,
    data: &[u8],
    from: i64,
    limit: u64,
    args: &ConsumeArgs,
    out: &mut impl Write,
) -> anyhow::Result<u64> {
    let mut printed = 0;
    let mut pos = 0;
    while pos < data.len() && printed < limit {
        let (base, len) = crate::log::peek_frame(&data[pos..]).map_err(|e| anyhow!("{e}"))?;
        let mut batch = Bytes::copy_from_slice(&data[pos..pos + len]);
        let set = RecordBatchDecoder::decode(&mut batch).map_err(|e| {
            let place = p
                .locate(base)
                .ok()
                .flatten()
                .map(|(file, position)| format!("{} at byte {position}", file.display()))
                .unwrap_or_else(|| "an unknown segment".into());
            anyhow!(
                "corrupt batch at offset {base} of {}-{} in {place}: {e}",
                p.topic(),
                p.id()
            )
        })?;
        for r in set
            .records
            .iter()
            .filter(|r| !r.control && r.offset >= from)
        {
            if printed >= limit {
                break;
            }
            let sep = args.field_sep.as_bytes();
            if args.print_partition {
                write!(out, "{}", p.id())?;
                out.write_all(sep)?;
            }
            if args.print_offset {
                write!(out, "{}", r.offset)?;
                out.write_all(sep)?;
            }
            if args.print_timestamp {
                write!(out, "{}", r.timestamp)?;
                out.write_all(sep)?;
            }
            if args.print_key {
                out.write_all(r.key.as_deref().unwrap_or(b""))?;
                out.write_all(sep)?;
            }
            out.write_all(r.value.as_deref().unwrap_or(b""))?;
            out.write_all(b"\n")?;
            printed += 1;
        }
        pos += len;
    }
    if pos < data.len() && printed < limit {
        bail!(
            "trailing bytes after the last whole batch of {}-{}",
            p.topic(),
            p.id()
        );
    }
    Ok(printed)
}
