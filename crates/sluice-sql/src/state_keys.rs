//! The layout of a SQL query's state in its RocksDB column family: every
//! key starts with a tag byte, so each kind of entry is one key range and
//! the kinds never mix. Times inside keys are [`time_bytes`]: 8 bytes
//! whose byte order is time order, so "everything before T" is one range
//! scan.
//!
//! | tag    | key after the tag                          | value                                   | written by                  |
//! |--------|--------------------------------------------|-----------------------------------------|-----------------------------|
//! | `0x00` | `watermark/` stream name                   | the stream's watermark progress (JSON)  | watermark                   |
//! | `0x01` | [window end] group (Arrow row format)      | [last update time] accumulator states   | incremental (GROUP BY)      |
//! | `0x01` | group, session start                       | session end, accumulator states         | session_window              |
//! | `0x02` | side, newest event time, batch id, slice   | buffered rows (Arrow IPC stream): the layout before `0x07`, read once and moved | join |
//! | `0x03` | last update time, `0x01` group key         | empty: index of groups by last update   | incremental (`state_ttl`)   |
//! | `0x05` | session end, group, session start          | empty: index of open sessions by end    | session_window              |
//! | `0x06` | [window end] group, set (u16), value        | bits: which `count(DISTINCT …)` of the set (same argument) counted it | incremental (DISTINCT) |
//! | `0x07` | side, join key, newest time, batch id      | the batch's rows of that key (Arrow row format, each length-prefixed) | join |
//! | `0x08` | side, newest time, batch id, join key      | empty: index of `0x07` entries by time, for eviction | join |
//! | `0x09` | group (Arrow row format)                   | last update time, then the group's top N rows, best first: sort key and row (Arrow row format), each length-prefixed | top_n |
//! | `0x0a` | last update time, group                    | empty: index of top-N groups by last update, for `state_ttl` | top_n |
//! | `0x0b` | outer group (Arrow row format)             | the outer aggregates' states, their value counts and the group's row count | retraction (an aggregation over an updating one) |
//! | `0x0c` | outer group, aggregate (u16), value (row format) | how many of the group's rows have the value (i64 LE): a `min`/`max` over an updating aggregation | retraction |
//! | `0x0d` | partition, sort key (row format), slot     | the slot's row (Arrow row format): an OVER window's rows in its order | over |
//! | `0x0e` | slot (top-N group, rank u64 BE)            | the partition prefix's length (u32 LE), then the slot's `0x0d` key | over |
//! | `0x0f` | event time, prefix length (u32 BE), `0x0d` key | empty: a stream's OVER rows the watermark has not passed, by time | over |
//! | `0x10` | partition, sort key (row format), group   | the group's row as ranked (Arrow row format): a top-N over an aggregation | ranked |
//! | `0x11` | group (Arrow row format)                   | the partition prefix's length (u32 LE), then the group's `0x10` key | ranked |
//! | `0x12` | window end, group (Arrow row format)       | empty: a window top-N's groups by the end of their window, emitted and deleted when the watermark passes it | top_n |
//!
//! A query keeps one kind of aggregation, so `0x01` holds either
//! groups or sessions, never both. Tag `0x04` was never used.
//!
//! This module owns the bytes of keys; it never reads or writes RocksDB.

/// The query's own metadata (watermark progress).
const META_TAG: u8 = 0;
/// Groups of an aggregation, or sessions of a session window.
pub(crate) const GROUP_TAG: u8 = 1;
/// A join's buffered rows in slices by time (the layout before
/// [`JOIN_ROWS_TAG`]: read and moved by the first batch that finds them).
const JOIN_TAG: u8 = 2;
/// A join's buffered rows by join key.
const JOIN_ROWS_TAG: u8 = 7;
/// A join's buffered rows by time, for eviction.
const JOIN_TIME_TAG: u8 = 8;
/// A top-N's kept rows per group.
const TOP_N_TAG: u8 = 9;
/// A top-N's groups by last update, for `state_ttl`.
pub(crate) const TOP_N_TTL_TAG: u8 = 10;
/// Groups of an aggregation over an updating aggregation.
const OUTER_GROUP_TAG: u8 = 11;
/// Values held by the outer groups' `min`/`max`.
const EXTREME_TAG: u8 = 12;
/// An OVER window's rows, in its partitions' order.
const OVER_ROW_TAG: u8 = 13;
/// Where each slot's row is in [`OVER_ROW_TAG`].
const OVER_SLOT_TAG: u8 = 14;
/// A stream's OVER rows waiting for the watermark, by event time.
pub(crate) const OVER_PENDING_TAG: u8 = 15;
/// A top-N over an aggregation: every group's row, in its partition's
/// order.
const RANKED_ROW_TAG: u8 = 16;
/// Where each group's row is in [`RANKED_ROW_TAG`].
const RANKED_GROUP_TAG: u8 = 17;
/// A window top-N's groups by their window's end.
pub(crate) const TOP_N_WINDOW_TAG: u8 = 18;
/// Groups by last update, for `state_ttl`.
pub(crate) const TTL_TAG: u8 = 3;
/// Open sessions by end.
pub(crate) const SESSION_END_TAG: u8 = 5;

/// Values each `count(DISTINCT …)` of a group has seen.
pub(crate) const DISTINCT_TAG: u8 = 6;

/// Length of a [`ttl_key`]'s prefix before the group's key.
pub(crate) const TTL_PREFIX_LEN: usize = 9;

/// A time as 8 bytes whose byte order is time order (sign bit flipped,
/// big-endian).
pub(crate) fn time_bytes(ms: i64) -> [u8; 8] {
    ((ms as u64) ^ (1 << 63)).to_be_bytes()
}

/// The time [`time_bytes`] encoded (the first 8 bytes of `bytes`).
pub(crate) fn time_from_bytes(bytes: &[u8]) -> i64 {
    let mut t = [0u8; 8];
    t.copy_from_slice(&bytes[..8]);
    (u64::from_be_bytes(t) ^ (1 << 63)) as i64
}

/// A little-endian number stored in a value (its first 8 bytes, a shorter
/// value padded with zeros): distinct bits, value counts.
pub(crate) fn le_u64(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = bytes.len().min(8);
    b[..n].copy_from_slice(&bytes[..n]);
    u64::from_le_bytes(b)
}

/// `tag` followed by a time: the bound of a range scan over entries
/// keyed by time under `tag`.
pub(crate) fn tag_and_time(tag: u8, ms: i64) -> Vec<u8> {
    let mut key = Vec::with_capacity(9);
    key.push(tag);
    key.extend_from_slice(&time_bytes(ms));
    key
}

/// The key of a stream's watermark progress.
pub(crate) fn watermark_key(stream: &str) -> Vec<u8> {
    let mut key = vec![META_TAG];
    key.extend_from_slice(b"watermark/");
    key.extend_from_slice(stream.as_bytes());
    key
}

/// The key of an aggregation's group: windowed groups are ordered by
/// their window's end, so the windows a watermark closes are a prefix.
pub(crate) fn group_key(window_end: Option<i64>, group: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(9 + group.len());
    key.push(GROUP_TAG);
    if let Some(end) = window_end {
        key.extend_from_slice(&time_bytes(end));
    }
    key.extend_from_slice(group);
    key
}

/// The key of an outer group of an aggregation over an updating
/// aggregation (the group in Arrow's row format).
pub(crate) fn outer_group_key(group: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + group.len());
    key.push(OUTER_GROUP_TAG);
    key.extend_from_slice(group);
    key
}

/// The prefix of the values an outer group's `min`/`max` aggregate
/// (`aggregate`: its index) holds; each value's key adds its row format,
/// so the smallest is the first key and the largest the last. Aggregate
/// `aggregate + 1`'s prefix ends the range.
pub(crate) fn extreme_prefix(group: &[u8], aggregate: u16) -> Vec<u8> {
    let mut key = Vec::with_capacity(3 + group.len());
    key.push(EXTREME_TAG);
    key.extend_from_slice(group);
    key.extend_from_slice(&aggregate.to_be_bytes());
    key
}

/// The TTL index entry of a group key (a [`group_key`]) updated at `time`.
pub(crate) fn ttl_key(time: i64, group_key: &[u8]) -> Vec<u8> {
    let mut key = tag_and_time(TTL_TAG, time);
    key.extend_from_slice(group_key);
    key
}

/// The prefix of every value a group's `count(DISTINCT …)` aggregates
/// saw, from the group's [`group_key`]: the same window end and group
/// bytes, so the values of the windows a watermark closes are one range,
/// as their groups are. (Arrow's row format is self-delimiting, so no
/// group's bytes are a prefix of another's.)
pub(crate) fn distinct_prefix(group_key: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(group_key.len() + 2);
    key.push(DISTINCT_TAG);
    key.extend_from_slice(&group_key[1..]);
    key
}

/// The end (exclusive) of the range a [`distinct_prefix`] starts.
pub(crate) fn distinct_prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut key = prefix.to_vec();
    key.extend_from_slice(&[0xff, 0xff]);
    key
}

/// The key of `value` (Arrow row format) seen by the group's distinct
/// aggregates of set `set` (named by its first aggregate's number).
/// Appended to `out`: a batch's keys share one buffer.
pub(crate) fn push_distinct_key(out: &mut Vec<u8>, prefix: &[u8], set: u16, value: &[u8]) {
    out.extend_from_slice(prefix);
    out.extend_from_slice(&set.to_be_bytes());
    out.extend_from_slice(value);
}

/// Where a session's state lives: sessions of one group are adjacent and
/// ordered by start.
pub(crate) fn session_key(group: &[u8], start: i64) -> Vec<u8> {
    let mut key = Vec::with_capacity(9 + group.len());
    key.push(GROUP_TAG);
    key.extend_from_slice(group);
    key.extend_from_slice(&time_bytes(start));
    key
}

/// The prefix every [`session_key`] of `group` starts with.
pub(crate) fn session_prefix(group: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + group.len());
    key.push(GROUP_TAG);
    key.extend_from_slice(group);
    key
}

/// A session (its [`session_key`]) in the index by end.
pub(crate) fn session_end_key(end: i64, session_key: &[u8]) -> Vec<u8> {
    let mut key = tag_and_time(SESSION_END_TAG, end);
    key.extend_from_slice(&session_key[1..]);
    key
}

/// The [`session_key`] an index entry by end points at.
pub(crate) fn session_of_end_key(index: &[u8]) -> Vec<u8> {
    let mut key = vec![GROUP_TAG];
    key.extend_from_slice(&index[9..]);
    key
}

/// The start of stream `side`'s buffered join rows keyed at `from` on
/// (all of them: `i64::MIN`).
pub(crate) fn join_from(side: u8, from: i64) -> Vec<u8> {
    let mut key = vec![JOIN_TAG, side];
    if from > i64::MIN {
        key.extend_from_slice(&time_bytes(from));
    }
    key
}

/// The end (exclusive) of all of stream `side`'s buffered join rows.
pub(crate) fn join_end(side: u8) -> Vec<u8> {
    vec![JOIN_TAG, side + 1]
}

/// The key of one slice of buffered join rows (the layout before
/// [`JOIN_ROWS_TAG`]).
#[cfg(test)]
pub(crate) fn join_key(side: u8, newest: i64, batch_id: u64, slice: u32) -> Vec<u8> {
    let mut key = vec![JOIN_TAG, side];
    key.extend_from_slice(&time_bytes(newest));
    key.extend_from_slice(&batch_id.to_be_bytes());
    key.extend_from_slice(&slice.to_be_bytes());
    key
}

/// The prefix of every entry of stream `side`'s buffered rows with join
/// key `key` (Arrow row format: self-delimiting, so no key's entries
/// share another's prefix; empty for a join without equalities).
pub(crate) fn join_rows_prefix(side: u8, key: &[u8]) -> Vec<u8> {
    let mut prefix = Vec::with_capacity(2 + key.len() + 16);
    prefix.extend_from_slice(&[JOIN_ROWS_TAG, side]);
    prefix.extend_from_slice(key);
    prefix
}

/// The entry of one batch's rows of stream `side` with join key `key`,
/// under their newest time.
pub(crate) fn join_rows_key(side: u8, key: &[u8], newest: i64, batch_id: u64) -> Vec<u8> {
    let mut k = join_rows_prefix(side, key);
    k.extend_from_slice(&time_bytes(newest));
    k.extend_from_slice(&batch_id.to_be_bytes());
    k
}

/// The time index entry of a [`join_rows_key`].
pub(crate) fn join_time_key(side: u8, newest: i64, batch_id: u64, key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(18 + key.len());
    k.extend_from_slice(&[JOIN_TIME_TAG, side]);
    k.extend_from_slice(&time_bytes(newest));
    k.extend_from_slice(&batch_id.to_be_bytes());
    k.extend_from_slice(key);
    k
}

/// The start of stream `side`'s time index at `from` (all of it:
/// `i64::MIN`).
pub(crate) fn join_time_from(side: u8, from: i64) -> Vec<u8> {
    let mut k = vec![JOIN_TIME_TAG, side];
    k.extend_from_slice(&time_bytes(from));
    k
}

/// The [`join_rows_key`] a time index entry points at.
pub(crate) fn join_rows_of_time_key(index: &[u8]) -> Vec<u8> {
    let (side, time, batch, key) = (index[1], &index[2..10], &index[10..18], &index[18..]);
    let mut k = Vec::with_capacity(index.len());
    k.extend_from_slice(&[JOIN_ROWS_TAG, side]);
    k.extend_from_slice(key);
    k.extend_from_slice(time);
    k.extend_from_slice(batch);
    k
}

/// Where a top-N keeps group `group`'s rows.
pub(crate) fn top_n_key(group: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + group.len());
    key.push(TOP_N_TAG);
    key.extend_from_slice(group);
    key
}

/// The TTL index entry of a top-N group updated at `time`.
pub(crate) fn top_n_ttl_key(time: i64, group: &[u8]) -> Vec<u8> {
    let mut key = tag_and_time(TOP_N_TTL_TAG, time);
    key.extend_from_slice(group);
    key
}

/// The [`top_n_key`] a TTL index entry points at.
pub(crate) fn top_n_of_ttl_key(index: &[u8]) -> Vec<u8> {
    top_n_key(&index[9..])
}

/// The index entry of a window top-N's group whose window ends at `end`.
pub(crate) fn top_n_window_key(end: i64, group: &[u8]) -> Vec<u8> {
    let mut key = tag_and_time(TOP_N_WINDOW_TAG, end);
    key.extend_from_slice(group);
    key
}

/// The [`top_n_key`] a window index entry points at.
pub(crate) fn top_n_of_window_key(index: &[u8]) -> Vec<u8> {
    top_n_key(&index[9..])
}

/// Where an OVER window keeps partition `partition`'s rows: every row of
/// the partition has this prefix (the partition's row format is
/// self-delimiting), and no other row has it.
pub(crate) fn over_prefix(partition: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + partition.len());
    key.push(OVER_ROW_TAG);
    key.extend_from_slice(partition);
    key
}

/// A row of an OVER window: its partition's prefix, its sort key (byte
/// order is the ORDER BY's), and its slot, which breaks ties.
pub(crate) fn over_row_key(prefix: &[u8], sort: &[u8], slot: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + sort.len() + slot.len());
    key.extend_from_slice(prefix);
    key.extend_from_slice(sort);
    key.extend_from_slice(slot);
    key
}

/// The index entry saying where a slot's row is.
pub(crate) fn over_slot_key(slot: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + slot.len());
    key.push(OVER_SLOT_TAG);
    key.extend_from_slice(slot);
    key
}

/// An [`over_slot_key`]'s value: the row's key and how long its
/// partition's prefix is.
pub(crate) fn over_slot_value(prefix_len: usize, row_key: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(4 + row_key.len());
    value.extend_from_slice(&(prefix_len as u32).to_le_bytes());
    value.extend_from_slice(row_key);
    value
}

/// The (partition prefix, row key) an [`over_slot_value`] holds.
pub(crate) fn over_slot_target(value: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let len = u32::from_le_bytes(value.get(..4)?.try_into().ok()?) as usize;
    let key = value.get(4..)?;
    Some((key.get(..len)?.to_vec(), key.to_vec()))
}

/// Where a top-N over an aggregation keeps partition `partition`'s rows
/// (laid out as [`over_row_key`]s, the group breaking ties).
pub(crate) fn ranked_prefix(partition: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + partition.len());
    key.push(RANKED_ROW_TAG);
    key.extend_from_slice(partition);
    key
}

/// The index entry saying where a ranked group's row is (its value an
/// [`over_slot_value`]).
pub(crate) fn ranked_group_key(group: &[u8]) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + group.len());
    key.push(RANKED_GROUP_TAG);
    key.extend_from_slice(group);
    key
}

/// The index entry of a stream's OVER row at `key` (its partition's
/// prefix `prefix_len` bytes long) that waits for the watermark to pass
/// `time`.
pub(crate) fn over_pending_key(time: i64, prefix_len: usize, key: &[u8]) -> Vec<u8> {
    let mut index = tag_and_time(OVER_PENDING_TAG, time);
    index.extend_from_slice(&(prefix_len as u32).to_be_bytes());
    index.extend_from_slice(key);
    index
}

/// The (time, partition prefix, row key) an [`over_pending_key`] holds.
pub(crate) fn over_pending_target(index: &[u8]) -> Option<(i64, Vec<u8>, Vec<u8>)> {
    let time = time_from_bytes(index.get(1..9)?);
    let len = u32::from_be_bytes(index.get(9..13)?.try_into().ok()?) as usize;
    let key = index.get(13..)?;
    Some((time, key.get(..len)?.to_vec(), key.to_vec()))
}

/// The newest time and batch id of a legacy ([`JOIN_TAG`]) slice key.
pub(crate) fn legacy_join_slice(key: &[u8]) -> (i64, u64) {
    let mut batch = [0u8; 8];
    batch.copy_from_slice(&key[10..18]);
    (time_from_bytes(&key[2..]), u64::from_be_bytes(batch))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_bytes_sort_as_times() {
        let times = [i64::MIN, -5, -1, 0, 1, 1_700_000_000_000, i64::MAX];
        for pair in times.windows(2) {
            assert!(time_bytes(pair[0]) < time_bytes(pair[1]), "{pair:?}");
        }
        for t in times {
            assert_eq!(time_from_bytes(&time_bytes(t)), t);
        }
    }

    #[test]
    fn a_session_and_its_index_entry_point_at_each_other() {
        let key = session_key(b"user-7", 1_000);
        assert!(key.starts_with(&session_prefix(b"user-7")));
        let index = session_end_key(5_000, &key);
        assert_eq!(index[0], SESSION_END_TAG);
        assert_eq!(time_from_bytes(&index[1..]), 5_000);
        assert_eq!(session_of_end_key(&index), key);
    }

    #[test]
    fn a_groups_distinct_values_are_one_range_ordered_by_window_end() {
        let early = distinct_prefix(&group_key(Some(1_000), b"g"));
        let late = distinct_prefix(&group_key(Some(2_000), b"a"));
        let mut value = Vec::new();
        push_distinct_key(&mut value, &early, 3, b"v");
        assert!(value.starts_with(&early));
        assert!(early.as_slice() < value.as_slice());
        assert!(value < distinct_prefix_end(&early));
        assert!(distinct_prefix_end(&early) < late);
        // Everything of windows ending at 1 000 is before this bound.
        assert!(distinct_prefix_end(&early) <= tag_and_time(DISTINCT_TAG, 1_001));
        assert!(late >= tag_and_time(DISTINCT_TAG, 1_001));
    }

    #[test]
    fn kinds_of_entries_never_share_a_range() {
        let tags = [
            watermark_key("s")[0],
            group_key(Some(1), b"g")[0],
            join_key(0, 1, 1, 0)[0],
            join_rows_key(0, b"k", 1, 1)[0],
            join_time_key(0, 1, 1, b"k")[0],
            top_n_key(b"g")[0],
            top_n_ttl_key(1, b"g")[0],
            ttl_key(1, &group_key(None, b"g"))[0],
            session_end_key(1, &session_key(b"g", 0))[0],
            distinct_prefix(&group_key(None, b"g"))[0],
            outer_group_key(b"g")[0],
            over_prefix(b"p")[0],
            over_slot_key(b"s")[0],
            over_pending_key(0, 0, b"k")[0],
            ranked_prefix(b"p")[0],
            ranked_group_key(b"g")[0],
        ];
        let mut sorted = tags.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), tags.len());
        assert!(join_from(0, i64::MIN) < join_end(0));
        assert!(join_key(0, i64::MAX, u64::MAX, u32::MAX) < join_end(0));
    }

    #[test]
    fn an_over_slot_points_at_its_row_and_partition() {
        let prefix = over_prefix(b"seller-7");
        let row = over_row_key(&prefix, b"sort", b"slot");
        assert!(row.starts_with(&prefix));
        let value = over_slot_value(prefix.len(), &row);
        assert_eq!(over_slot_target(&value), Some((prefix, row)));
        assert_eq!(over_slot_target(&value[..3]), None);
        assert_eq!(over_slot_target(&[9, 0, 0, 0, 1]), None);
        let pending = over_pending_key(-5, 9, &value[4..]);
        assert!(tag_and_time(OVER_PENDING_TAG, -6) < pending);
        assert!(pending < tag_and_time(OVER_PENDING_TAG, -4));
        let (time, prefix, key) = over_pending_target(&pending).unwrap();
        assert_eq!(
            (time, prefix.as_slice(), key.as_slice()),
            (-5, &value[4..13], &value[4..])
        );
        assert_eq!(over_pending_target(&pending[..12]), None);
    }

    #[test]
    fn a_join_rows_time_index_entry_points_at_its_rows() {
        let rows = join_rows_key(1, b"auction-7", -30, 12);
        assert!(rows.starts_with(&join_rows_prefix(1, b"auction-7")));
        let index = join_time_key(1, -30, 12, b"auction-7");
        assert_eq!(join_rows_of_time_key(&index), rows);
        assert!(join_time_from(1, i64::MIN) <= index);
        assert!(index < join_time_from(1, -29));
        assert!(join_time_from(1, -30) <= index);
        let legacy = join_key(0, -30, 12, 3);
        assert_eq!(legacy_join_slice(&legacy), (-30, 12));
    }
}
