//! SQL jobs: results after the stream is consumed equal the same query run
//! once as a batch query in DataFusion over all the input (differential
//! testing), across batch sizes and a restart; and queries that cannot run
//! incrementally are refused at submission with a message.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use sluice::checkpoint::Checkpoint;
use sluice::log::{LogStore, TopicConfig};
use sluice::sink::table::TableReader;
use sluice::sql::Script;

use crate::common;
use crate::common_sql::{self, Reference};

const WORDCOUNT: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/jobs/wordcount.sql"));

fn lines() -> Vec<String> {
    let mut g = sluice::corpus::CorpusGenerator::new(3)
        .with_vocabulary(300)
        .unwrap();
    let mut out: Vec<String> = (0..400)
        .map(|_| {
            let mut l = Vec::new();
            g.next_line(&mut l);
            String::from_utf8(l).unwrap()
        })
        .collect();
    out.push("  two  spaces ".into());
    out.push(String::new());
    out
}

fn load(store: &LogStore, lines: &[String]) {
    let topic = store
        .create_topic("lines", 3, TopicConfig::default())
        .unwrap();
    common::append_round_robin(&topic, 9, lines, 1);
}

/// The same query, once, over all lines.
fn batch_reference(lines: &[String]) -> BTreeMap<String, String> {
    let schema = Arc::new(Schema::new(vec![Field::new("line", DataType::Utf8, true)]));
    let batch =
        RecordBatch::try_new(schema, vec![Arc::new(StringArray::from(lines.to_vec()))]).unwrap();
    let query = WORDCOUNT
        .split("INSERT INTO counts")
        .nth(1)
        .unwrap()
        .trim()
        .trim_end_matches(';')
        // DataFusion's own string_to_array checks Sluice's split.
        .replace("split(line", "string_to_array(line");
    Reference::new().batch("lines", batch).pairs(&query)
}

fn run(store: &Arc<LogStore>, checkpoint: &Path, batch_records: u64, max_batches: Option<u64>) {
    let script = Script::parse(WORDCOUNT).unwrap();
    common_sql::run_sql(
        store,
        checkpoint,
        "wordcount",
        &script,
        Some(batch_records),
        max_batches,
    );
}

/// A result table's rows as `key=value`, in key order.
fn table_rows(cp: &Checkpoint, table: &str) -> Vec<String> {
    let reader = TableReader::open(cp, table).unwrap();
    let mut rows = Vec::new();
    reader
        .scan(None, |k, v| {
            rows.push(format!("{}={}", k.text, v.text));
            true
        })
        .unwrap();
    rows
}

fn table(checkpoint: &Path) -> BTreeMap<String, String> {
    common_sql::result_table(checkpoint, "wordcount", "counts")
}

#[test]
fn sql_wordcount_equals_one_batch_query_across_batch_sizes_and_a_restart() {
    let input = lines();
    let expected = batch_reference(&input);
    assert!(expected.len() > 50);
    for batch_records in [1, 7, 10_000] {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(LogStore::open(dir.path().join("data"), common::quiet()).unwrap());
        load(&store, &input);
        let checkpoint = dir.path().join("cp");
        if batch_records == 7 {
            // Stop half way, then resume on the same checkpoint.
            run(&store, &checkpoint, batch_records, Some(10));
        }
        run(&store, &checkpoint, batch_records, None);
        assert_eq!(table(&checkpoint), expected, "batch size {batch_records}");
    }
}

fn refused(sql: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(LogStore::open(dir.path().join("data"), common::quiet()).unwrap());
    load(&store, &["a b".to_string()]);
    common_sql::refused(
        &store,
        &format!("CREATE STREAM lines (line TEXT) WITH (topic = 'lines');\n{sql}"),
    )
}

#[test]
fn queries_that_cannot_run_incrementally_are_refused_at_submission() {
    let e = refused("SELECT line FROM lines ORDER BY line;");
    assert!(
        e.contains("line 2") && e.contains("ORDER BY over an unbounded stream"),
        "{e}"
    );
    let e = refused("SELECT line FROM lines LIMIT 3;");
    assert!(e.contains("LIMIT over an unbounded stream"), "{e}");
    let e = refused("SELECT avg(DISTINCT length(line)) FROM lines;");
    assert!(e.contains("only count(DISTINCT …) is incremental"), "{e}");
    // OVER windows: only a top-N per group runs.
    let ranked =
        "(SELECT line, row_number() OVER (PARTITION BY line ORDER BY _offset) AS rn FROM lines)";
    let e =
        refused("SELECT line, sum(_offset) OVER (PARTITION BY line ORDER BY _offset) FROM lines;");
    assert!(
        e.contains("line 2")
            && e.contains("runs in event time")
            && e.contains("declare WATERMARK FOR"),
        "{e}"
    );
    let e =
        refused("SELECT line, lag(_offset) OVER (PARTITION BY line ORDER BY _offset) FROM lines;");
    assert!(
        e.contains("only as a top-N per group") && e.contains("lag() is not"),
        "{e}"
    );
    let e = refused(
        "SELECT line, row_number() OVER (PARTITION BY line ORDER BY _offset) AS rn FROM lines;",
    );
    assert!(
        e.contains("ranks rows forever") && e.contains("WHERE rn <= N"),
        "{e}"
    );
    // A top-N that drops rows from its output deletes them: not into a
    // sink that only appends.
    let files =
        "CREATE SINK f WITH (type = 'file', format = 'json', path = 'out');\nINSERT INTO f ";
    let e = refused(&format!("{files}SELECT line FROM {ranked} WHERE rn <= 3;"));
    assert!(
        e.contains("top-3 without its rank in the output drops the row pushed out")
            && e.contains("a file sink only appends"),
        "{e}"
    );
    // Over a top-N's rows: aggregates over ROWS BETWEEN n PRECEDING AND
    // CURRENT ROW only.
    let top1 = "(SELECT line, _offset FROM (SELECT line, _offset, row_number() OVER (PARTITION BY line ORDER BY _offset) AS rn FROM lines) WHERE rn = 1)";
    let e = refused(&format!(
        "SELECT line, sum(_offset) OVER (PARTITION BY line ORDER BY _offset) FROM {top1};"
    ));
    assert!(
        e.contains("ROWS BETWEEN n PRECEDING AND CURRENT ROW")
            && e.contains("RANGE BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW"),
        "{e}"
    );
    let e = refused(&format!(
        "SELECT line, sum(_offset) OVER (PARTITION BY line ORDER BY _offset ROWS BETWEEN 1 PRECEDING AND 1 FOLLOWING) FROM {top1};"
    ));
    assert!(e.contains("reaching following rows"), "{e}");
    let e = refused(&format!(
        "SELECT line, lag(_offset) OVER (PARTITION BY line ORDER BY _offset) FROM {top1};"
    ));
    assert!(e.contains("lag() is not an aggregate function"), "{e}");
    let e = refused(&format!(
        "SELECT * FROM (SELECT line, sum(_offset) OVER (PARTITION BY line ORDER BY _offset ROWS BETWEEN 2 PRECEDING AND CURRENT ROW) AS s FROM {top1}) WHERE s > 3;"
    ));
    assert!(
        e.contains("keep only projections above the OVER window"),
        "{e}"
    );
    let e = refused(&format!("SELECT line FROM {ranked} WHERE rn > 3;"));
    assert!(e.contains("rn <= N") && e.contains("is not that"), "{e}");
    let e = refused(&format!(
        "{files}SELECT line FROM (SELECT line, _offset, row_number() OVER (PARTITION BY line ORDER BY _offset) AS rn FROM lines) WHERE rn = 1 AND _offset > 2;"
    ));
    assert!(
        e.contains("filter over a top-N's ranked rows") && e.contains("a file sink only appends"),
        "{e}"
    );
    let e = refused(&format!("SELECT count(*) FROM {ranked} WHERE rn = 1;"));
    assert!(e.contains("retractions"), "{e}");
    let e = refused(&format!(
        "CREATE SINK s WITH (type = 'console', mode = 'append');\nINSERT INTO s SELECT line FROM {ranked} WHERE rn = 1;"
    ));
    assert!(
        e.contains("update mode") && e.contains("mode = 'append'"),
        "{e}"
    );
    // RANK() keeps ties, final only once a window closes.
    let e = refused(
        "SELECT line FROM (SELECT line, rank() OVER (PARTITION BY line ORDER BY _offset) AS rn FROM lines) WHERE rn = 1;",
    );
    assert!(
        e.contains("RANK() keeps every row tied") && e.contains("window_start, window_end"),
        "{e}"
    );
    // An aggregation over an updating aggregation: only what can take a
    // changed row back, and only when no outer group can empty.
    let counts = "(SELECT line, length(line) AS len, count(*) AS n FROM lines GROUP BY line)";
    let e = refused(&format!(
        "SELECT len, median(n) FROM {counts} GROUP BY len;"
    ));
    assert!(
        e.contains("line 2")
            && e.contains("only count, sum, avg, min and max")
            && e.contains("median"),
        "{e}"
    );
    let e = refused(&format!(
        "CREATE SINK s WITH (type = 'file', path = 'out', format = 'json');\nINSERT INTO s SELECT len, sum(n) FROM {counts} WHERE n > 1 GROUP BY len;"
    ));
    assert!(
        e.contains("a filter between the two aggregations")
            && e.contains("deletes rows")
            && e.contains("a file sink only appends"),
        "{e}"
    );
    let e = refused(&format!(
        "SELECT len, count(DISTINCT n) FROM {counts} GROUP BY len;"
    ));
    assert!(e.contains("DISTINCT aggregate over an updating"), "{e}");
    let e = refused(&format!(
        "SELECT count(*) FROM (SELECT len, sum(n) AS s FROM {counts} GROUP BY len);"
    ));
    assert!(e.contains("only one aggregation"), "{e}");
    let e = refused(&format!(
        "CREATE SINK s WITH (type = 'console', mode = 'complete');\nINSERT INTO s SELECT len, sum(n) FROM {counts} GROUP BY len;"
    ));
    assert!(e.contains("set mode = 'update'"), "{e}");
    let e = refused("SELECT line, count(*) FROM lines GROUP BY ROLLUP(line);");
    assert!(e.contains("GROUPING SETS, CUBE and ROLLUP"), "{e}");
    let e = refused("SELECT nosuchcolumn FROM lines;");
    assert!(
        e.contains("line 2, column 8") && e.to_lowercase().contains("nosuchcolumn"),
        "{e}"
    );
    // INSERT INTO … with the query on later lines: the query's own line
    // and column.
    let e = refused(
        "CREATE SINK s WITH (type = 'console');\nINSERT INTO s\nSELECT line,\n       nosuchcolumn FROM lines;",
    );
    assert!(e.contains("line 5, column 8"), "{e}");
    let e = refused("INSERT INTO nowhere SELECT line FROM lines;");
    assert!(e.contains("no sink nowhere"), "{e}");
    let e = refused("SELEC line FROM lines;");
    assert!(e.contains("line 2"), "{e}");
}

#[test]
fn stateless_query_and_json_stream_with_bad_records() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(LogStore::open(dir.path().join("data"), common::quiet()).unwrap());
    let topic = store
        .create_topic("clicks", 1, TopicConfig::default())
        .unwrap();
    let values = [
        r#"{"user": "a", "ms": 5}"#,
        "not json",
        r#"{"user": "b", "ms": 7}"#,
        r#"{"user": "a", "ms": 1}"#,
    ];
    common::append_values(&topic, 0, values, 1);
    let script = Script::parse(
        "CREATE STREAM clicks (user TEXT, ms BIGINT) WITH (topic = 'clicks', format = 'json');\n\
         CREATE SINK per_user WITH (type = 'table');\n\
         INSERT INTO per_user SELECT user, sum(ms) AS total, count(*) AS n FROM clicks GROUP BY user;",
    )
    .unwrap();
    common_sql::run_sql(
        &store,
        &dir.path().join("cp"),
        "clicks",
        &script,
        Some(2),
        None,
    );
    let cp = Checkpoint::open_read_only(&dir.path().join("cp"), "clicks").unwrap();
    let rows = table_rows(&cp, "per_user");
    assert_eq!(rows, vec!["a=(6, 2)", "b=(7, 1)"]);
}

#[test]
fn json_chunks_larger_than_the_decoders_batch_decode_whole() {
    // arrow-json's decoder stops at its batch size (1,024 rows by
    // default); a chunk of 3,000 records must still decode every one.
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(LogStore::open(dir.path().join("data"), common::quiet()).unwrap());
    let topic = store
        .create_topic("big", 1, TopicConfig::default())
        .unwrap();
    let values = (0..3_000).map(|i| format!(r#"{{"k": "k{}", "v": {i}}}"#, i % 3));
    common::append_values(&topic, 0, values, 1);
    let script = Script::parse(
        "CREATE STREAM big (k TEXT, v BIGINT) WITH (topic = 'big', format = 'json');\n\
         CREATE SINK t WITH (type = 'table');\n\
         INSERT INTO t SELECT k, count(*) AS n, sum(v) AS total FROM big GROUP BY k;\n\
         CREATE SINK everything WITH (type = 'table');\n\
         INSERT INTO everything SELECT 'all' AS k, count(*) AS n FROM big;",
    )
    .unwrap();
    common_sql::run_sql(&store, &dir.path().join("cp"), "big", &script, None, None);
    let cp = Checkpoint::open_read_only(&dir.path().join("cp"), "big").unwrap();
    let rows = table_rows(&cp, "t");
    let total = |r: i64| (0..3_000i64).filter(|i| i % 3 == r).sum::<i64>();
    assert_eq!(
        rows,
        vec![
            format!("k0=(1000, {})", total(0)),
            format!("k1=(1000, {})", total(1)),
            format!("k2=(1000, {})", total(2)),
        ]
    );
    // A global aggregate (no GROUP BY) is one group.
    let rows = table_rows(&cp, "everything");
    assert_eq!(rows, vec!["all=3000"]);
}

/// `statements` over topic `ev` read as a raw stream (its text `value`,
/// as `sluice sql` declares a topic nobody declared).
fn over_ev(statements: &str) -> Script {
    let mut script = Script::parse(statements).unwrap();
    script.streams.push(sluice::sql::script::StreamDecl {
        name: "ev".into(),
        columns: Vec::new(),
        options: [("topic".to_string(), "ev".to_string())]
            .into_iter()
            .collect(),
        watermark: None,
        proctime: None,
    });
    script
}

/// Runs `statements` over a one-partition stream `ev` once per step,
/// each time as a restarted job after appending the step's records, and
/// checks the rows of the table sink `table` after each step.
fn table_after_each_step(table: &str, statements: &str, steps: &[(&[&str], &[&str])]) {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(LogStore::open(dir.path().join("data"), common::quiet()).unwrap());
    let topic = store.create_topic("ev", 1, TopicConfig::default()).unwrap();
    let script = over_ev(statements);
    let cp = dir.path().join("cp");
    for (records, want) in steps {
        common::append_values(&topic, 0, *records, 1);
        common_sql::run_sql(&store, &cp, "steps", &script, None, None);
        let checkpoint = Checkpoint::open_read_only(&cp, "steps").unwrap();
        assert_eq!(table_rows(&checkpoint, table), *want, "after {records:?}");
    }
}

/// An aggregation over an updating aggregation (Nexmark q4's shape): each
/// inner group's changed value is taken back from its outer group and the
/// new one added; a sum, count and average that lose their last value are
/// NULL, 0 and NULL again, as over no values.
#[test]
fn an_aggregation_over_an_updating_aggregation_takes_changed_rows_back() {
    // Per key and id, the number of records, NULL when it is exactly 2;
    // per key count(v), sum(v), avg(v), count(*) (concat_ws skips NULLs).
    table_after_each_step(
        "per_key",
        "CREATE SINK per_key WITH (type = 'table');\n\
         INSERT INTO per_key SELECT k, concat_ws(',', count(v), sum(v), avg(v), count(*)) AS summary FROM (\
           SELECT split_part(value, ':', 1) AS k, nullif(count(*), 2) AS v FROM ev \
           GROUP BY split_part(value, ':', 1), split_part(value, ':', 2)) GROUP BY k;",
        &[
            (&["a:1"], &["a=1,1,1.0,1"]),
            // a:1's value went to NULL.
            (&["a:1"], &["a=0,1"]),
            (
                &["a:2", "a:2", "a:2", "b:1"],
                &["a=1,3,3.0,2", "b=1,1,1.0,1"],
            ),
            (&["a:1", "b:1", "b:2"], &["a=2,6,3.0,2", "b=1,1,1.0,2"]),
            (&["a:2"], &["a=2,7,3.5,2", "b=1,1,1.0,2"]),
        ],
    );
}

/// An aggregation over an updating aggregation whose outer groups empty
/// (how many values were seen n times): a table sink deletes the row of
/// a group left empty.
#[test]
fn an_outer_group_left_empty_is_deleted_from_a_table_sink() {
    table_after_each_step(
        "histogram",
        "CREATE SINK histogram WITH (type = 'table');\n\
         INSERT INTO histogram SELECT n, count(*) AS values_seen FROM (\
           SELECT value, count(*) AS n FROM ev GROUP BY value) GROUP BY n;",
        &[
            (&["a", "b"], &["1=2"]),
            (&["a"], &["1=1", "2=1"]),
            (&["b"], &["2=2"]),
            (&["a", "c"], &["1=1", "2=1", "3=1"]),
        ],
    );
}

/// A HAVING that a group stops passing deletes the group's row from a
/// table sink (update mode), instead of leaving its last row behind.
#[test]
fn a_group_that_stops_passing_its_having_is_deleted_from_a_table_sink() {
    table_after_each_step(
        "rare",
        "CREATE SINK rare WITH (type = 'table');\n\
         INSERT INTO rare SELECT value, count(*) AS n FROM ev GROUP BY value HAVING count(*) < 3;",
        &[
            (&["a", "b"], &["a=1", "b=1"]),
            (&["a", "a"], &["b=1"]),
            (&["b"], &["b=2"]),
            (&["c", "a"], &["b=2", "c=1"]),
            (&["b"], &["c=1"]),
        ],
    );
}

/// `min` and `max` over an updating aggregation keep every value of their
/// outer group: a value taken back leaves the next one stored.
#[test]
fn min_and_max_over_an_updating_aggregation_fall_back_to_the_values_left() {
    // Each step: the records, then every key's "min,max" (v per id is its
    // count of records, NULL at 2).
    table_after_each_step(
        "ranges",
        "CREATE SINK ranges WITH (type = 'table');\n\
         INSERT INTO ranges SELECT k, concat_ws(',', min(v), max(v)) AS range FROM (\
           SELECT split_part(value, ':', 1) AS k, nullif(count(*), 2) AS v FROM ev \
           GROUP BY split_part(value, ':', 1), split_part(value, ':', 2)) GROUP BY k;",
        &[
            (&["a:1"], &["a=1,1"]),
            (&["a:1"], &["a="]),
            (&["a:2", "a:2", "a:2", "b:1"], &["a=3,3", "b=1,1"]),
            (&["a:1", "b:1", "b:2"], &["a=3,3", "b=1,1"]),
            (&["a:2"], &["a=3,4", "b=1,1"]),
            (&["a:3"], &["a=1,4", "b=1,1"]),
            (&["a:2"], &["a=1,5", "b=1,1"]),
            (&["a:3"], &["a=3,5", "b=1,1"]),
            (&["a:2", "a:1"], &["a=4,6", "b=1,1"]),
        ],
    );
}

/// A top-N over an aggregation's groups (Flink's Top-N over a GROUP BY):
/// counts change every batch, and the ranks follow them — a group rises
/// into the top, another falls out and is deleted.
#[test]
fn a_top_n_over_an_aggregation_follows_the_groups() {
    // The two most frequent values, with their rank as the table's key.
    table_after_each_step(
        "top",
        "CREATE SINK top WITH (type = 'table');\n\
         INSERT INTO top SELECT rn, concat_ws(',', item, n) AS v FROM (\
           SELECT item, n, row_number() OVER (ORDER BY n DESC, item) AS rn FROM (\
             SELECT value AS item, count(*) AS n FROM ev GROUP BY value)) WHERE rn <= 2;",
        &[
            (&["a", "b", "b"], &["1=b,2", "2=a,1"]),
            (&["c", "c", "c"], &["1=c,3", "2=b,2"]),
            (&["a", "a", "a"], &["1=a,4", "2=c,3"]),
            (&["b", "b", "b", "d"], &["1=b,5", "2=a,4"]),
        ],
    );
    // Per category its two most frequent items, keyed by item (no rank:
    // an item that falls out is deleted); a HAVING drops a group that
    // reaches 3, and the next one comes in.
    table_after_each_step(
        "best",
        "CREATE SINK best WITH (type = 'table');\n\
         INSERT INTO best SELECT item, concat_ws(',', cat, n) AS v FROM (\
           SELECT cat, item, n, row_number() OVER (PARTITION BY cat ORDER BY n DESC, item) AS rn FROM (\
             SELECT split_part(value, ':', 1) AS cat, split_part(value, ':', 2) AS item, count(*) AS n \
             FROM ev GROUP BY split_part(value, ':', 1), split_part(value, ':', 2) HAVING count(*) < 3)) \
         WHERE rn <= 2;",
        &[
            (&["x:a", "x:b", "x:b"], &["a=x,1", "b=x,2"]),
            (&["x:c", "x:c"], &["b=x,2", "c=x,2"]),
            (&["y:e", "x:b"], &["a=x,1", "c=x,2", "e=y,1"]),
        ],
    );
}

/// A top-N without its rank in the output deletes the row pushed out of
/// the top N from a table sink (keyed by the row's first column).
#[test]
fn a_row_pushed_out_of_a_top_n_is_deleted_from_a_table_sink() {
    // Records are group:item:price; each group's two highest prices.
    table_after_each_step(
        "best",
        "CREATE SINK best WITH (type = 'table');\n\
         INSERT INTO best SELECT item, concat_ws(',', grp, price) AS v FROM (\
           SELECT split_part(value, ':', 1) AS grp, split_part(value, ':', 2) AS item, \
                  CAST(split_part(value, ':', 3) AS BIGINT) AS price, \
                  row_number() OVER (PARTITION BY split_part(value, ':', 1) \
                                     ORDER BY CAST(split_part(value, ':', 3) AS BIGINT) DESC) AS rn \
           FROM ev) WHERE rn <= 2;",
        &[
            (&["g:a:5", "g:b:3"], &["a=g,5", "b=g,3"]),
            (&["g:c:4"], &["a=g,5", "c=g,4"]),
            (&["g:d:9", "h:e:1"], &["a=g,5", "d=g,9", "e=h,1"]),
            (&["h:f:0"], &["a=g,5", "d=g,9", "e=h,1", "f=h,0"]),
            (&["g:b:6", "h:a:2"], &["a=h,2", "b=g,6", "d=g,9", "e=h,1"]),
        ],
    );
}

/// A filter over a top-N's ranked rows: a rank whose new row does not
/// pass is deleted from the sink (keyed by the rank), instead of keeping
/// the row it replaced.
#[test]
fn a_ranked_row_that_stops_passing_a_filter_is_deleted() {
    table_after_each_step(
        "ranked",
        "CREATE SINK ranked WITH (type = 'table');\n\
         INSERT INTO ranked SELECT rn, concat_ws(',', item, price) AS v FROM (\
           SELECT split_part(value, ':', 1) AS item, CAST(split_part(value, ':', 2) AS BIGINT) AS price, \
                  row_number() OVER (ORDER BY CAST(split_part(value, ':', 2) AS BIGINT) DESC) AS rn \
           FROM ev) WHERE rn <= 2 AND item <> 'x';",
        &[
            (&["a:5", "c:4"], &["1=a,5", "2=c,4"]),
            // x ranks first: rank 1 is deleted, a moves to rank 2.
            (&["x:7"], &["2=a,5"]),
            (&["d:9"], &["1=d,9"]),
            (&["e:8"], &["1=d,9", "2=e,8"]),
        ],
    );
}

/// A bounded OVER aggregate over a top-1 (Nexmark q6's shape): when an
/// item's best bid changes, its row moves in its seller's order (or to
/// another seller), and the rows whose frame changed are updated.
#[test]
fn an_over_window_over_a_top_n_updates_the_rows_whose_frame_changed() {
    // Records are seller:item:price; each item's highest price wins, and
    // per seller each item's winning price is summed with the one before
    // it in price order. Table rows: item=seller,sum.
    table_after_each_step(
        "running",
        "CREATE SINK running WITH (type = 'table');\n\
         INSERT INTO running SELECT item, concat_ws(',', seller, \
           sum(price) OVER (PARTITION BY seller ORDER BY price, item \
                            ROWS BETWEEN 1 PRECEDING AND CURRENT ROW)) AS s FROM (\
           SELECT item, seller, price FROM (\
             SELECT split_part(value, ':', 1) AS seller, split_part(value, ':', 2) AS item, \
                    CAST(split_part(value, ':', 3) AS BIGINT) AS price, \
                    row_number() OVER (PARTITION BY split_part(value, ':', 2) \
                                       ORDER BY CAST(split_part(value, ':', 3) AS BIGINT) DESC) AS rn \
             FROM ev) WHERE rn = 1);",
        &[
            (&["s:a:5", "s:b:3"], &["a=s,8", "b=s,3"]),
            (&["s:c:4"], &["a=s,9", "b=s,3", "c=s,7"]),
            // b's best price moves it last: c now starts the order.
            (&["s:b:10"], &["a=s,9", "b=s,15", "c=s,4"]),
            // a leaves seller s for seller t.
            (&["t:a:6"], &["a=t,6", "b=s,14", "c=s,4"]),
            // Not better than c's 4: nothing changes.
            (&["s:c:2"], &["a=t,6", "b=s,14", "c=s,4"]),
            (
                &["t:d:1", "t:e:7", "s:f:1"],
                &["a=t,7", "b=s,14", "c=s,5", "d=t,1", "e=t,13", "f=s,1"],
            ),
        ],
    );
    // Without PARTITION BY: one order over every item.
    table_after_each_step(
        "overall",
        "CREATE SINK overall WITH (type = 'table');\n\
         INSERT INTO overall SELECT item, \
           sum(price) OVER (ORDER BY price, item ROWS BETWEEN 1 PRECEDING AND CURRENT ROW) AS s FROM (\
           SELECT item, price FROM (\
             SELECT split_part(value, ':', 2) AS item, CAST(split_part(value, ':', 3) AS BIGINT) AS price, \
                    row_number() OVER (PARTITION BY split_part(value, ':', 2) \
                                       ORDER BY CAST(split_part(value, ':', 3) AS BIGINT) DESC) AS rn \
             FROM ev) WHERE rn = 1);",
        &[
            (&["s:a:5", "s:b:3"], &["a=8", "b=3"]),
            (&["s:c:4"], &["a=9", "b=3", "c=7"]),
            (&["t:b:10"], &["a=9", "b=15", "c=4"]),
        ],
    );
}

#[test]
fn state_ttl_forgets_groups_not_updated_for_that_long() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(LogStore::open(dir.path().join("data"), common::quiet()).unwrap());
    let topic = store.create_topic("ev", 1, TopicConfig::default()).unwrap();
    let append = |values: &[&str]| common::append_values(&topic, 0, values, 1);
    let script = over_ev(
        "CREATE SINK n WITH (type = 'table', state_ttl = '3s');\n\
         INSERT INTO n SELECT value, count(*) AS n FROM ev GROUP BY value;",
    );
    let run = || {
        common_sql::run_sql(&store, &dir.path().join("cp"), "ttl", &script, None, None);
    };
    let table = || {
        let cp = Checkpoint::open_read_only(&dir.path().join("cp"), "ttl").unwrap();
        table_rows(&cp, "n")
    };
    append(&["a", "a", "b"]);
    run();
    assert_eq!(table(), vec!["a=2", "b=1"]);
    // Within the TTL the count goes on.
    append(&["a"]);
    run();
    assert_eq!(table(), vec!["a=3", "b=1"]);
    // After it, a starts afresh (the table keeps the last value written
    // for b: the TTL bounds state, not results).
    std::thread::sleep(Duration::from_millis(3_200));
    append(&["a"]);
    run();
    assert_eq!(table(), vec!["a=1", "b=1"]);
    let cp = Checkpoint::open_read_only(&dir.path().join("cp"), "ttl").unwrap();
    let cf = cp.cf("state.insert-n").unwrap();
    let groups = cp
        .db()
        .iterator_cf(cf, rocksdb::IteratorMode::Start)
        .filter(|item| item.as_ref().is_ok_and(|(k, _)| k.first() == Some(&1)))
        .count();
    assert_eq!(groups, 1, "b expired from state");
}

#[test]
fn a_top_n_with_state_ttl_forgets_groups_not_changed_for_that_long() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(LogStore::open(dir.path().join("data"), common::quiet()).unwrap());
    let topic = store.create_topic("ev", 1, TopicConfig::default()).unwrap();
    let append = |values: &[&str]| common::append_values(&topic, 0, values, 1);
    // Each value's first offset (deduplication keeping the first row).
    let script = over_ev(
        "CREATE SINK firsts WITH (type = 'table', state_ttl = '3s');\n\
         INSERT INTO firsts SELECT value, _offset FROM (SELECT value, _offset, row_number() OVER (PARTITION BY value ORDER BY _offset) AS rn FROM ev) WHERE rn = 1;",
    );
    let run = || common_sql::run_sql(&store, &dir.path().join("cp"), "ttl", &script, None, None);
    let table = || {
        let cp = Checkpoint::open_read_only(&dir.path().join("cp"), "ttl").unwrap();
        table_rows(&cp, "firsts")
    };
    append(&["a", "a", "b"]);
    run();
    assert_eq!(table(), vec!["a=0", "b=2"]);
    // Within the TTL the first row stays first.
    append(&["a"]);
    run();
    assert_eq!(table(), vec!["a=0", "b=2"]);
    // After it, a starts afresh: its next row is its first.
    std::thread::sleep(Duration::from_millis(3_200));
    append(&["a"]);
    run();
    assert_eq!(table(), vec!["a=4", "b=2"]);
    let cp = Checkpoint::open_read_only(&dir.path().join("cp"), "ttl").unwrap();
    let cf = cp.cf("state.insert-firsts").unwrap();
    let tags: Vec<u8> = cp
        .db()
        .iterator_cf(cf, rocksdb::IteratorMode::Start)
        .map(|item| item.unwrap().0[0])
        .filter(|tag| *tag == 9 || *tag == 10)
        .collect();
    assert_eq!(
        tags,
        vec![9, 10],
        "b expired from state: a's group and its TTL entry are left"
    );
}

#[test]
fn first_row_per_key_by_event_time_equals_the_batch_query_across_batch_sizes() {
    // Visits of 20 users in no particular order: each user's first page by
    // event time, whichever batch brings it (deduplication keeping the
    // first row per key, as Flink's ROW_NUMBER() … = 1 over event time).
    let visits: Vec<(i64, String, i64)> = (0..300i64)
        .map(|i| {
            let scrambled = (i * 7919) % 300;
            (
                scrambled % 20,
                format!("/p{}", i % 13),
                1_000 + scrambled * 37,
            )
        })
        .collect();
    let query = "SELECT CAST(user_id AS VARCHAR) AS k, first_value(page ORDER BY ts) AS page FROM visits GROUP BY user_id";
    let expected = Reference::new()
        .values(
            "visits",
            "user_id, page, ts",
            visits
                .iter()
                .map(|(u, p, ts)| format!("({u}, '{p}', to_timestamp_millis({ts}))")),
        )
        .pairs(query);
    assert_eq!(expected.len(), 20);
    let script = Script::parse(&format!(
        "CREATE STREAM visits (user_id BIGINT, page TEXT, ts TIMESTAMP) WITH (topic = 'visits', format = 'json');\n\
         CREATE SINK first WITH (type = 'table');\n\
         INSERT INTO first {query};"
    ))
    .unwrap();
    for batch in [1, 7, 10_000] {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(LogStore::open(dir.path().join("data"), common::quiet()).unwrap());
        let topic = store
            .create_topic("visits", 2, TopicConfig::default())
            .unwrap();
        for (i, (u, p, ts)) in visits.iter().enumerate() {
            let value = format!(r#"{{"user_id": {u}, "page": "{p}", "ts": {ts}}}"#);
            common::append_values(&topic, (i % 2) as i32, [value], 1);
        }
        let cp = dir.path().join("cp");
        common_sql::run_sql(&store, &cp, "first", &script, Some(batch), None);
        let cp = Checkpoint::open_read_only(&cp, "first").unwrap();
        let got: BTreeMap<String, String> = table_rows(&cp, "first")
            .into_iter()
            .map(|row| {
                let (k, v) = row.split_once('=').unwrap();
                (k.to_string(), v.to_string())
            })
            .collect();
        assert_eq!(got, expected, "batch size {batch}");
    }
}
