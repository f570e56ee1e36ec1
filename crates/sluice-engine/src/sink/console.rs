//! The console sink: `-------- Batch 12 · 2026-11-21 10:00:01 --------`
//! then up to `n` rows (the plan's `print` output formats them).

use std::io::Write;

/// The header line printed before a batch's rows.
pub fn header(batch_id: u64, batch_time_ms: i64) -> String {
    format!(
        "-------- Batch {batch_id} · {} --------",
        sluice_log::units::format_time(batch_time_ms)
    )
}

/// Writes one batch's text to stdout. A closed stdout (`| head`) must not
/// fail the job, so write errors are ignored.
pub fn write(text: &str) {
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
}
