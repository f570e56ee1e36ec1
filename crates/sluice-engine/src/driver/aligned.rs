//! Batch-aligned stages on many workers: the rows of one source batch meet
//! again as one batch after every shuffle.
//!
//! A job whose result depends on which rows share a batch (windows counted
//! in batches, per-batch joins) cannot let a stage-1 task batch whatever
//! its repartition topics hold when it looks: a source batch's rows reach
//! it through several topics and transactions, at different times. Spark
//! keeps such batches together with one driver; here the batches are
//! numbered by the clock instead (batch id = batch time / interval, alike
//! on every task), and the numbers travel with the rows:
//!
//! - every task of stage `s` tags the rows it sends with its batch id, and
//!   after them, in the same transaction, tells every bucket of the next
//!   stage how far it got (`progress`: all its rows up to that id are
//!   sent; `FINISHED` once its input is caught up and nothing more comes);
//! - a task of stage `s + 1` keeps what it reads in a changelogged column
//!   family of its own (the buffer) and runs batch `id` once every task of
//!   stage `s` reported at least `id`, over exactly the rows tagged `id`,
//!   as its own batch `id`, in its own transaction. It runs every id a
//!   task of stage `s` reported, rows or not, so all tasks of a stage run
//!   the same batches (a window's partial counts from every bucket meet in
//!   the same batch after the next shuffle).
//!
//! Rows tagged with an id already run (a task moved to a worker whose clock
//! is behind) join the next batch. This module owns the record and buffer
//! layouts and which batches are ready; `worker` runs them. It never talks
//! to Kafka.

use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Key prefix of a repartition record of batch-aligned rows (+ the batch
/// id, 8 bytes big-endian).
const ROWS_KEY: &[u8] = b"sluice.batch:";
/// Key of a record telling how far a task of the previous stage got
/// (value: its partition, 4 bytes, and the batch id, 8 bytes, big-endian).
pub(crate) const PROGRESS_KEY: &[u8] = b"sluice.batch-progress";
/// Progress of a task whose input is caught up (`--until-caught-up`): no
/// rows will follow.
pub(crate) const FINISHED: u64 = u64::MAX;

/// Buffer keys: rows `r` + batch id + offset + operator; progress `p` +
/// operator + 0 + partition; a batch id reported and not yet run `i` + id;
/// the last batch run; whether `FINISHED` was passed on.
const ROWS: u8 = b'r';
const PROGRESS: u8 = b'p';
const REPORTED: u8 = b'i';
const LAST_RUN: &[u8] = b"l";
const FINISHED_SENT: &[u8] = b"f";

/// The column family buffering stage `stage`'s input (its own per stage:
/// tasks of two stages share a partition number and changelog partition).
pub(crate) fn buffer_cf(stage: usize) -> String {
    format!("sluice.aligned-{stage}")
}

/// The clock's batch id of a batch starting at `batch_time_ms`.
pub(crate) fn batch_id_at(batch_time_ms: i64, interval_ms: i64) -> u64 {
    (batch_time_ms.max(0) / interval_ms.max(1)) as u64
}

pub(crate) fn rows_key(id: u64) -> Vec<u8> {
    let mut key = ROWS_KEY.to_vec();
    key.extend_from_slice(&id.to_be_bytes());
    key
}

/// The batch id of a repartition record's key, if it holds aligned rows.
pub(crate) fn parse_rows_key(key: &[u8]) -> Option<u64> {
    let id = key.strip_prefix(ROWS_KEY)?;
    Some(u64::from_be_bytes(id.try_into().ok()?))
}

pub(crate) fn progress_value(partition: u32, id: u64) -> [u8; 12] {
    let mut v = [0u8; 12];
    v[..4].copy_from_slice(&partition.to_be_bytes());
    v[4..].copy_from_slice(&id.to_be_bytes());
    v
}

pub(crate) fn parse_progress(value: &[u8]) -> Option<(u32, u64)> {
    if value.len() != 12 {
        return None;
    }
    let partition = u32::from_be_bytes(value[..4].try_into().ok()?);
    let id = u64::from_be_bytes(value[4..].try_into().ok()?);
    Some((partition, id))
}

/// Where a buffered repartition record is kept.
pub(crate) fn buffered_rows_key(id: u64, offset: i64, op: &str) -> Vec<u8> {
    let mut key = vec![ROWS];
    key.extend_from_slice(&id.to_be_bytes());
    key.extend_from_slice(&offset.to_be_bytes());
    key.extend_from_slice(op.as_bytes());
    key
}

pub(crate) fn buffered_progress_key(op: &str, partition: u32) -> Vec<u8> {
    let mut key = vec![PROGRESS];
    key.extend_from_slice(op.as_bytes());
    key.push(0);
    key.extend_from_slice(&partition.to_be_bytes());
    key
}

pub(crate) fn reported_key(id: u64) -> Vec<u8> {
    let mut key = vec![REPORTED];
    key.extend_from_slice(&id.to_be_bytes());
    key
}

pub(crate) fn last_run_key() -> &'static [u8] {
    LAST_RUN
}

pub(crate) fn finished_sent_key() -> &'static [u8] {
    FINISHED_SENT
}

/// One buffered repartition record.
pub(crate) struct BufferedRows {
    pub key: Vec<u8>,
    pub id: u64,
    pub op: String,
    pub payload: Vec<u8>,
}

/// What a stage's buffer holds.
#[derive(Default)]
pub(crate) struct Buffer {
    pub rows: Vec<BufferedRows>,
    /// (operator, partition of the previous stage) → the id it reported.
    pub progress: HashMap<(String, u32), u64>,
    /// Batch ids reported and not yet run.
    pub reported: BTreeSet<u64>,
    pub last_run: Option<u64>,
    pub finished_sent: bool,
}

impl Buffer {
    /// Reads a buffer back from its column family's entries, in key order.
    pub(crate) fn load(
        entries: impl Iterator<Item = (Box<[u8]>, Box<[u8]>)>,
    ) -> Result<Buffer, String> {
        let mut buffer = Buffer::default();
        for (key, value) in entries {
            buffer.apply(&key, &value)?;
        }
        Ok(buffer)
    }

    /// Takes in one entry written to the buffer's column family (after
    /// those with smaller keys of the same kind, as a load would).
    pub(crate) fn apply(&mut self, key: &[u8], value: &[u8]) -> Result<(), String> {
        match key.first() {
            Some(&ROWS) if key.len() >= 17 => {
                let id = u64::from_be_bytes(key[1..9].try_into().unwrap_or_default());
                let op = String::from_utf8_lossy(&key[17..]).into_owned();
                self.rows.push(BufferedRows {
                    key: key.to_vec(),
                    id,
                    op,
                    payload: value.to_vec(),
                });
            }
            Some(&PROGRESS) if key.len() >= 6 => {
                let split = key.len() - 5;
                let op = String::from_utf8_lossy(&key[1..split]).into_owned();
                let partition = u32::from_be_bytes(key[split + 1..].try_into().unwrap_or_default());
                self.progress.insert((op, partition), read_u64(value)?);
            }
            Some(&REPORTED) if key.len() == 9 => {
                self.reported.insert(read_u64(&key[1..])?);
            }
            _ if key == LAST_RUN => self.last_run = Some(read_u64(value)?),
            _ if key == FINISHED_SENT => self.finished_sent = true,
            _ => return Err(format!("unexpected key {key:?} in a batch-aligned buffer")),
        }
        Ok(())
    }

    /// The id up to which every task of the previous stage reported, over
    /// every operator the stage reads (`upstream` tasks each); `None` while
    /// one has not reported yet.
    pub(crate) fn complete(&self, ops: &[String], upstream: u32) -> Option<u64> {
        let mut complete = FINISHED;
        for op in ops {
            for partition in 0..upstream {
                complete = complete.min(*self.progress.get(&(op.clone(), partition))?);
            }
        }
        (!ops.is_empty()).then_some(complete)
    }

    /// The batches ready to run, in order: every id reported (or tagging
    /// rows) up to `complete`, each with the buffered rows and reported ids
    /// it takes, and the progress it passes on. Ids at or below the last
    /// batch run (a task moved to a worker whose clock is behind) count as
    /// the next one.
    pub(crate) fn ready(&self, complete: Option<u64>) -> Vec<Ready> {
        let Some(complete) = complete else {
            return Vec::new();
        };
        let floor = self.last_run.map_or(0, |l| l + 1);
        let due = |id: u64| complete == FINISHED || id.max(floor) <= complete;
        let mut runs: BTreeMap<u64, Ready> = BTreeMap::new();
        fn run(runs: &mut BTreeMap<u64, Ready>, id: u64) -> &mut Ready {
            runs.entry(id).or_insert_with(|| Ready {
                id,
                rows: Vec::new(),
                reported: Vec::new(),
                progress: id,
            })
        }
        for (i, r) in self.rows.iter().enumerate() {
            if due(r.id) {
                run(&mut runs, r.id.max(floor)).rows.push(i);
            }
        }
        for &id in &self.reported {
            if due(id) {
                run(&mut runs, id.max(floor)).reported.push(id);
            }
        }
        if complete == FINISHED && runs.is_empty() && !self.finished_sent {
            run(&mut runs, floor.max(1));
        }
        let mut ready: Vec<Ready> = runs.into_values().collect();
        if complete == FINISHED
            && let Some(last) = ready.last_mut()
        {
            last.progress = FINISHED;
        }
        ready
    }
}

/// A batch a stage-`s ≥ 1` task can run.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Ready {
    pub id: u64,
    /// Indices into `Buffer::rows`.
    pub rows: Vec<usize>,
    /// Reported ids it runs (their markers go).
    pub reported: Vec<u64>,
    /// What the batch reports to the next stage.
    pub progress: u64,
}

fn read_u64(value: &[u8]) -> Result<u64, String> {
    Ok(u64::from_be_bytes(value.try_into().map_err(|_| {
        format!("a batch-aligned buffer holds a {}-byte number", value.len())
    })?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A buffer holding rows tagged `rows`, the previous stage's tasks'
    /// `progress` (each also reported, with `reported`), after `last_run`.
    fn buffer(
        rows: &[u64],
        progress: &[(u32, u64)],
        reported: &[u64],
        last_run: Option<u64>,
    ) -> Buffer {
        Buffer {
            rows: rows
                .iter()
                .enumerate()
                .map(|(i, id)| BufferedRows {
                    key: buffered_rows_key(*id, i as i64, "op"),
                    id: *id,
                    op: "op".into(),
                    payload: Vec::new(),
                })
                .collect(),
            progress: progress
                .iter()
                .map(|(p, id)| (("op".to_owned(), *p), *id))
                .collect(),
            reported: reported
                .iter()
                .chain(progress.iter().map(|(_, id)| id))
                .copied()
                .filter(|id| *id != FINISHED)
                .collect(),
            last_run,
            finished_sent: false,
        }
    }

    fn ops() -> Vec<String> {
        vec!["op".into()]
    }

    fn runs(b: &Buffer, upstream: u32) -> Vec<(u64, Vec<usize>, u64)> {
        b.ready(b.complete(&ops(), upstream))
            .into_iter()
            .map(|r| (r.id, r.rows, r.progress))
            .collect()
    }

    #[test]
    fn a_batch_waits_for_every_task_of_the_previous_stage() {
        let b = buffer(&[10, 11], &[(0, 11), (1, 10)], &[], None);
        assert_eq!(b.complete(&ops(), 3), None, "partition 2 has not reported");
        assert_eq!(b.complete(&ops(), 2), Some(10));
        assert_eq!(runs(&b, 2), vec![(10, vec![0], 10)]);
    }

    #[test]
    fn every_reported_batch_runs_in_order_up_to_the_complete_id() {
        let b = buffer(
            &[12, 10, 14, 12],
            &[(0, 13), (1, 15)],
            &[10, 11, 12, 14],
            Some(9),
        );
        assert_eq!(
            runs(&b, 2),
            vec![
                (10, vec![1], 10),
                (11, vec![], 11),
                (12, vec![0, 3], 12),
                (13, vec![], 13)
            ]
        );
    }

    #[test]
    fn rows_of_a_batch_already_run_join_the_next_one() {
        let b = buffer(&[7, 20], &[(0, 21)], &[20], Some(15));
        assert_eq!(
            runs(&b, 1),
            vec![(16, vec![0], 16), (20, vec![1], 20), (21, vec![], 21)]
        );
        // Nothing new reported and nothing late: nothing runs.
        let mut idle = buffer(&[], &[(0, 15)], &[], Some(15));
        idle.reported.clear();
        assert!(runs(&idle, 1).is_empty());
    }

    #[test]
    fn finished_input_runs_what_is_left_and_passes_finished_on_once() {
        let b = buffer(
            &[30, 31],
            &[(0, FINISHED), (1, FINISHED)],
            &[30, 31],
            Some(20),
        );
        assert_eq!(
            runs(&b, 2),
            vec![(30, vec![0], 30), (31, vec![1], FINISHED)]
        );
        let mut empty = buffer(&[], &[(0, FINISHED)], &[], Some(20));
        assert_eq!(runs(&empty, 1), vec![(21, vec![], FINISHED)]);
        empty.finished_sent = true;
        assert!(runs(&empty, 1).is_empty());
    }

    #[test]
    fn records_and_buffer_keys_read_back() {
        assert_eq!(parse_rows_key(&rows_key(42)), Some(42));
        assert_eq!(parse_rows_key(b"sluice.progress"), None);
        assert_eq!(parse_progress(&progress_value(3, 99)), Some((3, 99)));
        let entries = vec![
            (buffered_rows_key(5, 77, "join-1-left"), b"rows".to_vec()),
            (reported_key(5), Vec::new()),
            (last_run_key().to_vec(), 4u64.to_be_bytes().to_vec()),
            (
                buffered_progress_key("join-1-left", 2),
                9u64.to_be_bytes().to_vec(),
            ),
        ];
        let b = Buffer::load(
            entries
                .into_iter()
                .map(|(k, v)| (k.into_boxed_slice(), v.into_boxed_slice())),
        )
        .unwrap();
        assert_eq!((b.rows[0].id, b.rows[0].op.as_str()), (5, "join-1-left"));
        assert_eq!(b.progress.get(&("join-1-left".to_owned(), 2)), Some(&9));
        assert_eq!(b.reported.iter().copied().collect::<Vec<_>>(), vec![5]);
        assert_eq!(b.last_run, Some(4));
    }
}
