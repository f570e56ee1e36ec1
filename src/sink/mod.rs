//! Sinks: where a batch's results go.
//!
//! * [`console`] prints the first rows of every batch under a header (like
//!   Spark's `print()`); a batch replayed after a crash prints again.
//! * [`table`] writes key/value results into a RocksDB result table of the
//!   job's checkpoint, in the same atomic write as the batch's offsets and
//!   state, so the table always reflects exactly the committed batches.
//!   `sluice state get|scan` reads it while the job runs or after.
//!
//! Sinks never choose offsets or commit on their own; the driver commits.

pub mod console;
pub mod table;
