//! Per-batch progress: one compact line on stderr, JSON lines to a file,
//! and how far a bounded drain (`--until-caught-up`) has come.

use std::fs::File;
use std::io::{BufWriter, IsTerminal, Write};
use std::path::PathBuf;

use serde::Serialize;

use super::{DriverError, RunSummary};
use sluice_log::units::{format_bytes, format_count};

/// One partition's part in a batch.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionProgress {
    pub source: String,
    pub partition: i32,
    pub from: i64,
    pub until: i64,
    /// Records available after `until` when the batch was planned.
    pub lag: i64,
}

/// The progress record of one batch.
#[derive(Debug, Clone, Serialize)]
pub struct BatchProgress {
    pub batch_id: u64,
    pub batch_time_ms: i64,
    pub input_rows: u64,
    pub input_rows_per_s: f64,
    pub processing_ms: f64,
    pub scheduling_delay_ms: f64,
    pub total_delay_ms: f64,
    pub partitions: Vec<PartitionProgress>,
    pub state_bytes: u64,
    pub lost_records: u64,
    /// Counts operators reported for this batch (e.g. `late records`,
    /// `bad records`).
    pub counters: std::collections::BTreeMap<String, u64>,
    /// Re-run after a restart with the ranges planned before the crash.
    pub replayed: bool,
    pub estimated_rate: Option<f64>,
    /// With `--until-caught-up`: the share of the backlog drained.
    pub caught_up_fraction: Option<f64>,
}

/// Where progress goes.
#[derive(Debug, Clone)]
pub struct ProgressSink {
    /// One line per batch on stderr.
    pub lines: bool,
    /// JSON lines, one per batch.
    pub json: Option<PathBuf>,
}

impl Default for ProgressSink {
    fn default() -> Self {
        ProgressSink {
            lines: true,
            json: None,
        }
    }
}

impl ProgressSink {
    pub(crate) fn open(&self) -> Result<Progress, DriverError> {
        let json = match &self.json {
            Some(path) => Some(BufWriter::new(
                File::options()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| {
                        DriverError::Other(format!(
                            "cannot open progress file {}: {e}",
                            path.display()
                        ))
                    })?,
            )),
            None => None,
        };
        Ok(Progress {
            lines: self.lines,
            json,
            tty: std::io::stderr().is_terminal(),
        })
    }
}

pub(crate) struct Progress {
    lines: bool,
    json: Option<BufWriter<File>>,
    tty: bool,
}

fn bar(fraction: f64) -> String {
    let filled = (fraction * 20.0).round() as usize;
    format!(
        "[{}{}] {:>3.0}%",
        "#".repeat(filled),
        ".".repeat(20 - filled.min(20)),
        fraction * 100.0
    )
}

/// The compact line for one batch.
pub fn format_line(p: &BatchProgress) -> String {
    let lag: i64 = p.partitions.iter().map(|x| x.lag).sum();
    let time = sluice_log::units::format_time(p.batch_time_ms);
    let mut line = format!(
        "batch {} · {} · {} rows ({}/s) · processing {:.0} ms · delay {:.0} ms · lag {} · state {}",
        p.batch_id,
        time.get(11..).unwrap_or(&time),
        format_count(p.input_rows as f64),
        format_count(p.input_rows_per_s),
        p.processing_ms,
        p.scheduling_delay_ms,
        format_count(lag as f64),
        format_bytes(p.state_bytes),
    );
    if p.lost_records > 0 {
        line.push_str(&format!(
            " · LOST {} (retention)",
            format_count(p.lost_records as f64)
        ));
    }
    if p.replayed {
        line.push_str(" · replayed after restart");
    }
    for (name, n) in &p.counters {
        line.push_str(&format!(" · {} {name}", format_count(*n as f64)));
    }
    if let Some(f) = p.caught_up_fraction {
        line.push_str(&format!(" · {}", bar(f)));
    }
    line
}

impl Progress {
    pub fn note(&mut self, text: &str) {
        if self.lines {
            eprintln!("note: {text}");
        }
    }

    pub fn emit(&mut self, p: &BatchProgress) -> Result<(), DriverError> {
        if self.lines {
            let line = format_line(p);
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "{line}");
        }
        if let Some(json) = &mut self.json {
            let write = serde_json::to_writer(&mut *json, p)
                .map_err(std::io::Error::other)
                .and_then(|_| json.write_all(b"\n"))
                .and_then(|_| json.flush());
            write.map_err(|e| DriverError::Other(format!("cannot write progress: {e}")))?;
        }
        let _ = self.tty;
        Ok(())
    }

    pub fn finish(&mut self, summary: &RunSummary) {
        if self.lines {
            let secs = summary.elapsed.as_secs_f64().max(1e-9);
            eprintln!(
                "stopped after {} batches: {} records in {:.1}s ({}/s), last committed batch {}",
                summary.batches,
                format_count(summary.records as f64),
                secs,
                format_count(summary.records as f64 / secs),
                summary.last_batch_id
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_has_the_numbers() {
        let p = BatchProgress {
            batch_id: 12,
            batch_time_ms: 1_795_255_201_000,
            input_rows: 40_000,
            input_rows_per_s: 400_000.0,
            processing_ms: 100.0,
            scheduling_delay_ms: 3.0,
            total_delay_ms: 103.0,
            partitions: vec![PartitionProgress {
                source: "t".into(),
                partition: 0,
                from: 0,
                until: 40_000,
                lag: 1234,
            }],
            state_bytes: 2048,
            lost_records: 0,
            counters: [("late records".to_string(), 3)].into_iter().collect(),
            replayed: false,
            estimated_rate: None,
            caught_up_fraction: Some(0.5),
        };
        let line = format_line(&p);
        assert!(line.starts_with("batch 12 · "), "{line}");
        assert!(line.contains("40,000 rows (400,000/s)"), "{line}");
        assert!(line.contains("lag 1,234"), "{line}");
        assert!(line.contains("50%"), "{line}");
        assert!(line.contains("· 3 late records"), "{line}");
    }
}
