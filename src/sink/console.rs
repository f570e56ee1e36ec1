//! The console sink: `-------- Batch 12 · 2026-11-21 10:00:01 --------`
//! then up to `n` rows.

use std::io::Write;
use std::sync::Arc;

use crate::plan::{BatchCx, DStream, Data, Output};

/// Formats a batch time as UTC `YYYY-MM-DD HH:MM:SS`.
pub fn format_time(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    let s = humantime::format_rfc3339_seconds(t).to_string();
    s.trim_end_matches('Z').replacen('T', " ", 1)
}

/// The header line printed before a batch's rows.
pub fn header(batch_id: u64, batch_time_ms: i64) -> String {
    format!(
        "-------- Batch {batch_id} · {} --------",
        format_time(batch_time_ms)
    )
}

pub(crate) fn print<T: Data>(stream: &DStream<T>, n: usize) {
    let node = stream.node.clone();
    node.info().add_consumer();
    let name = format!("print-{}", node.info().name());
    crate::log::mutex(&stream.graph)
        .outputs
        .push(Arc::new(Output {
            name,
            table: None,
            state: None,
            run: Box::new(move |cx: &BatchCx| {
                let chunks = cx.collect(&node)?;
                let mut text = header(cx.batch_id, cx.batch_time_ms);
                text.push('\n');
                let mut shown = 0;
                let total: usize = chunks.iter().map(|c| c.num_rows()).sum();
                'outer: for c in &chunks {
                    let reader = T::reader(c.columns())?;
                    for i in 0..c.num_rows() {
                        if shown == n {
                            break 'outer;
                        }
                        text.push_str(&format!("{:?}\n", T::get(&reader, i)));
                        shown += 1;
                    }
                }
                if total > shown {
                    text.push_str(&format!("… {} more\n", total - shown));
                }
                text.push('\n');
                // A closed stdout (`| head`) must not fail the job.
                let _ = std::io::stdout().lock().write_all(text.as_bytes());
                Ok(())
            }),
        }));
}
