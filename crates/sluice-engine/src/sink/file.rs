//! File sink: each batch's rows as Parquet, JSON-lines or CSV files in a
//! directory, published by a manifest entry (as Spark's `_spark_metadata`).
//!
//! ```text
//! DIR/part-<batch id, 20 digits>-<n, 5 digits>.<parquet|json|csv>
//! DIR/_sluice_manifest/<batch id, 20 digits>.json
//! ```
//!
//! Partitioned by columns (`partitioned_by`, Hive's layout as Spark's
//! `partitionBy` and Flink's `PARTITIONED BY`), a batch's rows go to one
//! directory per combination of the columns' values, which leave the
//! files (a reader takes them from the path):
//!
//! ```text
//! DIR/dt=2015-07-15/hm=00%3A00/part-<batch id>-<n>.<ext>
//! ```
//!
//! Values are written as text, with Hive's escapes (`%3A` for `:`, `%2F`
//! for `/`, …); NULL and the empty text are `__HIVE_DEFAULT_PARTITION__`.
//!
//! A batch's files are written under a hidden temporary name
//! (`.part-….tmp`), fsynced and renamed; then the manifest entry — the
//! batch's files with their row counts and sizes, and the schema — is
//! written the same way. The entry is what publishes the batch: readers
//! take only the files listed in the manifest, so they never see a partial
//! batch, and a batch is listed once. A replayed batch whose entry exists
//! is skipped; one without an entry is written again under the same names
//! (processing is deterministic), replacing what a crash left. A batch
//! with no rows writes no file and no entry, so an idle stream does not
//! fill the directory; batch ids in the manifest may therefore have gaps.
//!
//! Files hold at most [`ROWS_PER_FILE`] rows each. Parquet files are
//! Snappy-compressed; JSON files have one object per line with explicit
//! nulls; CSV files have a header line. Names starting with `.` or `_` are
//! ignored by Spark, pandas/pyarrow and DataFusion when they list a
//! directory, but only the manifest says which `part-` files are complete.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use arrow::array::{Array, RecordBatch};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};

use super::{SinkError, WriterId, crash_point};

/// The manifest's directory inside the sink's directory.
pub const MANIFEST_DIR: &str = "_sluice_manifest";
/// Most rows per file; a larger batch is split into several files.
pub const ROWS_PER_FILE: usize = 1_000_000;
/// Version of the manifest entry's layout.
pub const MANIFEST_VERSION: u32 = 1;

/// How rows are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FileFormat {
    Parquet,
    Json,
    Csv,
}

impl FileFormat {
    pub fn extension(self) -> &'static str {
        match self {
            FileFormat::Parquet => "parquet",
            FileFormat::Json => "json",
            FileFormat::Csv => "csv",
        }
    }
}

/// One data file of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestFile {
    /// Relative to the sink's directory.
    pub path: String,
    pub rows: u64,
    pub bytes: u64,
}

/// One column of the batch's schema.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestField {
    pub name: String,
    /// Arrow's name of the type (`Int64`, `Utf8`, `Timestamp(ms)`, …).
    #[serde(rename = "type")]
    pub data_type: String,
    pub nullable: bool,
}

/// `_sluice_manifest/<batch id>.json`: a committed batch's files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    pub version: u32,
    pub job: String,
    pub sink: String,
    /// The creation time (ms) of the job's checkpoint that wrote it.
    pub run: String,
    pub batch_id: u64,
    pub batch_time_ms: i64,
    pub format: FileFormat,
    pub rows: u64,
    pub files: Vec<ManifestFile>,
    /// The columns of the files.
    pub schema: Vec<ManifestField>,
    /// The columns in the files' paths (`name=value/…`), outermost first.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partition_columns: Vec<ManifestField>,
}

/// What writing a batch did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileOutcome {
    /// Files written and listed in a new manifest entry.
    Written(ManifestEntry),
    /// The manifest already lists this batch (a replay).
    AlreadyWritten,
    /// The batch has no rows: nothing written.
    Empty,
}

/// Writes batches into one directory (see the module docs).
#[derive(Debug)]
pub struct FileWriter {
    what: String,
    dir: PathBuf,
    format: FileFormat,
    /// Columns whose values name the directories, outermost first.
    partition_by: Vec<String>,
}

/// The partition directory's value for NULL or an empty text (Hive's).
pub const DEFAULT_PARTITION: &str = "__HIVE_DEFAULT_PARTITION__";

/// `value` escaped as Hive escapes a partition value in a path.
pub fn escape_partition_value(value: &str) -> String {
    if value.is_empty() {
        return DEFAULT_PARTITION.to_owned();
    }
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        let escape = matches!(
            c,
            '\u{01}'
                ..='\u{1f}'
                    | '"'
                    | '#'
                    | '%'
                    | '\''
                    | '*'
                    | '/'
                    | ':'
                    | '='
                    | '?'
                    | '\\'
                    | '\u{7f}'
                    | '{'
                    | '['
                    | ']'
                    | '^'
        );
        if escape {
            out.push_str(&format!("%{:02X}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}

fn io_error(what: &str, action: &str, path: &Path, e: std::io::Error) -> SinkError {
    SinkError::new(what, format!("cannot {action} {}: {e}", path.display()))
}

fn sync_dir(what: &str, dir: &Path) -> Result<(), SinkError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| io_error(what, "sync directory", dir, e))
}

/// Writes `bytes` to `path` through a temporary file, fsync and rename.
fn write_atomically(what: &str, path: &Path, bytes: &[u8]) -> Result<(), SinkError> {
    let tmp = temp_name(path);
    let mut f = File::create(&tmp).map_err(|e| io_error(what, "create", &tmp, e))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(|e| io_error(what, "write", &tmp, e))?;
    fs::rename(&tmp, path).map_err(|e| io_error(what, "rename", &tmp, e))
}

/// `dir/.name.tmp` for `dir/name`.
fn temp_name(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp"))
}

impl FileWriter {
    /// Writes into `dir` (created if missing). `what` names the sink in
    /// errors.
    pub fn open(dir: &Path, format: FileFormat, what: &str) -> Result<FileWriter, SinkError> {
        let manifest = dir.join(MANIFEST_DIR);
        fs::create_dir_all(&manifest).map_err(|e| io_error(what, "create", &manifest, e))?;
        Ok(FileWriter {
            what: what.to_owned(),
            dir: dir.to_path_buf(),
            format,
            partition_by: Vec::new(),
        })
    }

    /// Writes each batch's rows under one directory per combination of
    /// these columns' values (which leave the files).
    pub fn partitioned_by(mut self, columns: Vec<String>) -> FileWriter {
        self.partition_by = columns;
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn entry_path(&self, batch_id: u64) -> PathBuf {
        self.dir
            .join(MANIFEST_DIR)
            .join(format!("{batch_id:020}.json"))
    }

    /// Writes one batch's rows, unless the manifest already lists the batch.
    ///
    /// # Errors
    ///
    /// I/O errors, and a manifest entry for this batch id written by
    /// another job, sink or run (the job's checkpoint was recreated while
    /// the directory kept the old run's output).
    pub fn write(
        &self,
        id: &WriterId,
        batch_id: u64,
        batch_time_ms: i64,
        batches: &[RecordBatch],
    ) -> Result<FileOutcome, SinkError> {
        let entry_path = self.entry_path(batch_id);
        if let Some(existing) = read_entry(&entry_path).map_err(|m| self.error(m))? {
            if existing.job == id.job && existing.sink == id.name && existing.run == id.run {
                return Ok(FileOutcome::AlreadyWritten);
            }
            return Err(self.error(format!(
                "{} already lists batch {batch_id} of job {} sink {} (checkpoint created at {}), but this is job {} sink {} (checkpoint created at {}): the directory holds another run's output. Write to a new path, or move the old files away",
                entry_path.display(),
                existing.job,
                existing.sink,
                existing.run,
                id.job,
                id.name,
                id.run
            )));
        }
        let rows: usize = batches.iter().map(RecordBatch::num_rows).sum();
        let Some(first) = batches.first() else {
            return Ok(FileOutcome::Empty);
        };
        if rows == 0 {
            return Ok(FileOutcome::Empty);
        }
        let schema = first.schema();
        let all = arrow::compute::concat_batches(&schema, batches)
            .map_err(|e| self.error(format!("cannot assemble batch {batch_id}'s rows: {e}")))?;
        let (parts, partition_columns) = self.partitions(batch_id, &all)?;
        let mut files = Vec::new();
        let mut file_schema = schema.clone();
        for (subdir, rows_of_part) in parts {
            let dir = self.dir.join(&subdir);
            if !subdir.is_empty() {
                self.create_dirs(&subdir)?;
            }
            file_schema = rows_of_part.schema();
            let n = rows_of_part.num_rows();
            let mut offset = 0;
            while offset < n {
                let len = ROWS_PER_FILE.min(n - offset);
                let name = format!(
                    "part-{batch_id:020}-{:05}.{}",
                    files.len(),
                    self.format.extension()
                );
                let bytes = self.write_file(&dir.join(&name), &rows_of_part.slice(offset, len))?;
                files.push(ManifestFile {
                    path: if subdir.is_empty() {
                        name
                    } else {
                        format!("{subdir}/{name}")
                    },
                    rows: len as u64,
                    bytes,
                });
                offset += len;
            }
            sync_dir(&self.what, &dir)?;
        }
        crash_point("sink::file::before_manifest", batch_id);
        let entry = ManifestEntry {
            version: MANIFEST_VERSION,
            job: id.job.clone(),
            sink: id.name.clone(),
            run: id.run.clone(),
            batch_id,
            batch_time_ms,
            format: self.format,
            rows: rows as u64,
            files,
            schema: manifest_fields(file_schema.fields().iter().map(|f| f.as_ref())),
            partition_columns,
        };
        let json = serde_json::to_vec_pretty(&entry).expect("manifest entries serialize");
        write_atomically(&self.what, &entry_path, &json)?;
        sync_dir(&self.what, &self.dir.join(MANIFEST_DIR))?;
        crash_point("sink::file::after_manifest", batch_id);
        Ok(FileOutcome::Written(entry))
    }

    fn error(&self, message: String) -> SinkError {
        SinkError::new(self.what.clone(), message)
    }

    /// The batch's rows cut by the partition columns: each part's
    /// directory (relative, `name=value/…`; empty when not partitioned)
    /// and its rows without those columns, in the directories' order so
    /// a replay names its files as the first run did.
    #[allow(clippy::type_complexity)]
    fn partitions(
        &self,
        batch_id: u64,
        all: &RecordBatch,
    ) -> Result<(Vec<(String, RecordBatch)>, Vec<ManifestField>), SinkError> {
        if self.partition_by.is_empty() {
            return Ok((vec![(String::new(), all.clone())], Vec::new()));
        }
        let schema = all.schema();
        let mut keys: Vec<usize> = Vec::new();
        for name in &self.partition_by {
            let (i, _) = schema.column_with_name(name).ok_or_else(|| {
                self.error(format!(
                    "batch {batch_id} has no column {name} to partition by"
                ))
            })?;
            keys.push(i);
        }
        let texts = keys
            .iter()
            .map(|&i| arrow::compute::cast(all.column(i), &arrow::datatypes::DataType::Utf8))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.error(format!("cannot write a partition column as text: {e}")))?;
        // Rows by their partition values (Arrow's row format: bytes per
        // row, no string built per row), then each group's directory once.
        let converter = arrow::row::RowConverter::new(
            texts
                .iter()
                .map(|t| arrow::row::SortField::new(t.data_type().clone()))
                .collect(),
        )
        .map_err(|e| self.error(format!("cannot group by the partition columns: {e}")))?;
        let values = converter
            .convert_columns(&texts)
            .map_err(|e| self.error(format!("cannot group by the partition columns: {e}")))?;
        let mut by_values: std::collections::HashMap<&[u8], Vec<u32>> = Default::default();
        for row in 0..all.num_rows() {
            by_values
                .entry(values.row(row).data())
                .or_default()
                .push(row as u32);
        }
        let names: Vec<String> = self
            .partition_by
            .iter()
            .map(|n| escape_partition_value(n))
            .collect();
        let mut groups: std::collections::BTreeMap<String, Vec<u32>> = Default::default();
        for rows in by_values.into_values() {
            let first = rows[0] as usize;
            let subdir = texts
                .iter()
                .zip(&names)
                .map(|(text, name)| {
                    let text = text.as_any().downcast_ref::<arrow::array::StringArray>();
                    let value = match text {
                        Some(t) if !t.is_null(first) => escape_partition_value(t.value(first)),
                        _ => DEFAULT_PARTITION.to_owned(),
                    };
                    format!("{name}={value}")
                })
                .collect::<Vec<_>>()
                .join("/");
            // NULL and '' share the default directory.
            groups.entry(subdir).or_default().extend(rows);
        }
        // Rows in batch order within each file, as they arrived.
        groups.values_mut().for_each(|rows| rows.sort_unstable());
        let data_columns: Vec<usize> = (0..schema.fields().len())
            .filter(|i| !keys.contains(i))
            .collect();
        let data = all
            .project(&data_columns)
            .map_err(|e| self.error(format!("cannot drop the partition columns: {e}")))?;
        let mut parts = Vec::with_capacity(groups.len());
        for (subdir, rows) in groups {
            let indices = arrow::array::UInt32Array::from(rows);
            let columns = data
                .columns()
                .iter()
                .map(|c| arrow::compute::take(c.as_ref(), &indices, None))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| self.error(format!("cannot cut batch {batch_id}: {e}")))?;
            let part = RecordBatch::try_new(data.schema(), columns)
                .map_err(|e| self.error(format!("cannot cut batch {batch_id}: {e}")))?;
            parts.push((subdir, part));
        }
        let partition_columns = manifest_fields(keys.iter().map(|&i| schema.field(i)));
        Ok((parts, partition_columns))
    }

    /// Creates `subdir`'s directories under the sink's, each made durable
    /// in its parent.
    fn create_dirs(&self, subdir: &str) -> Result<(), SinkError> {
        let mut dir = self.dir.clone();
        for piece in subdir.split('/') {
            let parent = dir.clone();
            dir.push(piece);
            if !dir.is_dir() {
                fs::create_dir_all(&dir).map_err(|e| io_error(&self.what, "create", &dir, e))?;
                sync_dir(&self.what, &parent)?;
            }
        }
        Ok(())
    }

    /// Writes one file through a temporary name; returns its size.
    fn write_file(&self, path: &Path, batch: &RecordBatch) -> Result<u64, SinkError> {
        let tmp = temp_name(path);
        let file = File::create(&tmp).map_err(|e| io_error(&self.what, "create", &tmp, e))?;
        let encode = |e: String| self.error(format!("cannot write {}: {e}", tmp.display()));
        let file = match self.format {
            FileFormat::Parquet => {
                let props = WriterProperties::builder()
                    .set_compression(Compression::SNAPPY)
                    .build();
                let mut w = ArrowWriter::try_new(BufWriter::new(file), batch.schema(), Some(props))
                    .map_err(|e| encode(e.to_string()))?;
                w.write(batch).map_err(|e| encode(e.to_string()))?;
                w.into_inner().map_err(|e| encode(e.to_string()))?
            }
            FileFormat::Json => {
                let mut w = arrow::json::WriterBuilder::new()
                    .with_explicit_nulls(true)
                    .build::<_, arrow::json::writer::LineDelimited>(BufWriter::new(file));
                w.write(batch).map_err(|e| encode(e.to_string()))?;
                w.finish().map_err(|e| encode(e.to_string()))?;
                w.into_inner()
            }
            FileFormat::Csv => {
                let mut w = arrow::csv::WriterBuilder::new()
                    .with_header(true)
                    .build(BufWriter::new(file));
                w.write(batch).map_err(|e| encode(e.to_string()))?;
                w.into_inner()
            }
        };
        let file = file
            .into_inner()
            .map_err(|e| io_error(&self.what, "write", &tmp, e.into_error()))?;
        file.sync_all()
            .map_err(|e| io_error(&self.what, "sync", &tmp, e))?;
        let bytes = file
            .metadata()
            .map_err(|e| io_error(&self.what, "stat", &tmp, e))?
            .len();
        fs::rename(&tmp, path).map_err(|e| io_error(&self.what, "rename", &tmp, e))?;
        Ok(bytes)
    }
}

fn read_entry(path: &Path) -> Result<Option<ManifestEntry>, String> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| format!("manifest entry {} is unreadable: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(format!("cannot read {}: {e}", path.display())),
    }
}

fn manifest_fields<'a>(
    fields: impl Iterator<Item = &'a arrow::datatypes::Field>,
) -> Vec<ManifestField> {
    fields
        .map(|f| ManifestField {
            name: f.name().clone(),
            data_type: f.data_type().to_string(),
            nullable: f.is_nullable(),
        })
        .collect()
}

/// Every manifest entry of a sink's directory, in batch order: what a
/// reader should read (the files they list, and nothing else).
pub fn read_manifest(dir: &Path) -> Result<Vec<ManifestEntry>, String> {
    let manifest = dir.join(MANIFEST_DIR);
    let listing =
        fs::read_dir(&manifest).map_err(|e| format!("cannot list {}: {e}", manifest.display()))?;
    let mut entries = Vec::new();
    for item in listing {
        let item = item.map_err(|e| format!("cannot list {}: {e}", manifest.display()))?;
        let name = item.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !name.ends_with(".json") {
            continue;
        }
        if let Some(entry) = read_entry(&item.path())? {
            entries.push(entry);
        }
    }
    entries.sort_by_key(|e| e.batch_id);
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Int64Array, StringArray};
    use arrow::datatypes::{DataType, Field, Schema};

    use super::*;

    fn batch(words: &[&str]) -> RecordBatch {
        nullable_batch(&words.iter().copied().map(Some).collect::<Vec<_>>())
    }

    /// Rows `(word, n)`, n counting from 0.
    fn nullable_batch(words: &[Option<&str>]) -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("word", DataType::Utf8, true),
            Field::new("n", DataType::Int64, true),
        ]));
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from(words.to_vec())),
                Arc::new(Int64Array::from(
                    (0..words.len() as i64).map(Some).collect::<Vec<_>>(),
                )),
            ],
        )
        .unwrap()
    }

    fn id(run: &str) -> WriterId {
        WriterId {
            job: "j".into(),
            run: run.into(),
            name: "files".into(),
        }
    }

    #[test]
    fn a_batch_is_listed_once_and_a_replay_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        for format in [FileFormat::Parquet, FileFormat::Json, FileFormat::Csv] {
            let out = dir.path().join(format.extension());
            let w = FileWriter::open(&out, format, "file sink files").unwrap();
            let b = batch(&["a", "b", "c"]);
            let FileOutcome::Written(entry) = w
                .write(&id("1"), 7, 1000, std::slice::from_ref(&b))
                .unwrap()
            else {
                panic!("not written");
            };
            assert_eq!(entry.rows, 3);
            assert_eq!(
                entry.files[0].path,
                format!("part-00000000000000000007-00000.{}", format.extension())
            );
            assert_eq!(entry.schema[0].name, "word");
            assert_eq!(entry.schema[1].data_type, "Int64");
            assert_eq!(
                w.write(&id("1"), 7, 1000, std::slice::from_ref(&b))
                    .unwrap(),
                FileOutcome::AlreadyWritten
            );
            assert_eq!(
                w.write(&id("1"), 8, 1000, &[batch(&[])]).unwrap(),
                FileOutcome::Empty
            );
            let err = w.write(&id("2"), 7, 1000, &[b]).unwrap_err().to_string();
            assert!(
                err.starts_with("file sink files: ") && err.contains("another run's output"),
                "{err}"
            );
            let manifest = read_manifest(&out).unwrap();
            assert_eq!(manifest, vec![entry.clone()]);
            let listed: Vec<String> = fs::read_dir(&out)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("part-"))
                .collect();
            assert_eq!(listed, vec![entry.files[0].path.clone()]);
            assert_eq!(
                fs::metadata(out.join(&entry.files[0].path)).unwrap().len(),
                entry.files[0].bytes
            );
        }
        let csv =
            fs::read_to_string(dir.path().join("csv/part-00000000000000000007-00000.csv")).unwrap();
        assert_eq!(csv, "word,n\na,0\nb,1\nc,2\n");
        let json = fs::read_to_string(dir.path().join("json/part-00000000000000000007-00000.json"))
            .unwrap();
        assert_eq!(
            json,
            "{\"word\":\"a\",\"n\":0}\n{\"word\":\"b\",\"n\":1}\n{\"word\":\"c\",\"n\":2}\n"
        );
    }

    #[test]
    fn a_batch_without_an_entry_is_rewritten_under_the_same_names() {
        let dir = tempfile::tempdir().unwrap();
        let w = FileWriter::open(dir.path(), FileFormat::Csv, "file sink files").unwrap();
        // What a crash before the manifest leaves: a stale file, a temp.
        let stale = dir.path().join("part-00000000000000000003-00000.csv");
        fs::write(&stale, "garbage").unwrap();
        fs::write(
            dir.path().join(".part-00000000000000000003-00000.csv.tmp"),
            "x",
        )
        .unwrap();
        let FileOutcome::Written(entry) = w.write(&id("1"), 3, 0, &[batch(&["z"])]).unwrap() else {
            panic!("not written");
        };
        assert_eq!(entry.files.len(), 1);
        assert_eq!(fs::read_to_string(&stale).unwrap(), "word,n\nz,0\n");
        assert!(
            !dir.path()
                .join(".part-00000000000000000003-00000.csv.tmp")
                .exists()
        );
    }

    #[test]
    fn partitioned_rows_go_to_one_directory_per_value_without_the_column() {
        let dir = tempfile::tempdir().unwrap();
        let w = FileWriter::open(dir.path(), FileFormat::Csv, "file sink files")
            .unwrap()
            .partitioned_by(vec!["word".into()]);
        let input = nullable_batch(&[Some("a/b"), Some("12:30"), Some("a/b"), None, Some("")]);
        let FileOutcome::Written(entry) = w
            .write(&id("1"), 7, 0, std::slice::from_ref(&input))
            .unwrap()
        else {
            panic!("not written");
        };
        let paths: Vec<(&str, u64)> = entry
            .files
            .iter()
            .map(|f| (f.path.as_str(), f.rows))
            .collect();
        assert_eq!(
            paths,
            vec![
                ("word=12%3A30/part-00000000000000000007-00000.csv", 1),
                (
                    "word=__HIVE_DEFAULT_PARTITION__/part-00000000000000000007-00001.csv",
                    2
                ),
                ("word=a%2Fb/part-00000000000000000007-00002.csv", 2),
            ]
        );
        // The column is in the path, not in the files.
        assert_eq!(
            fs::read_to_string(dir.path().join(paths[2].0)).unwrap(),
            "n\n0\n2\n"
        );
        let names: Vec<&str> = entry.schema.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, vec!["n"]);
        assert_eq!(entry.partition_columns[0].name, "word");
        assert_eq!(read_manifest(dir.path()).unwrap(), vec![entry]);
        // A replay of the batch is skipped, as unpartitioned.
        assert_eq!(
            w.write(&id("1"), 7, 0, &[input]).unwrap(),
            FileOutcome::AlreadyWritten
        );
    }

    #[test]
    fn partition_values_are_escaped_as_hive_escapes_them() {
        assert_eq!(escape_partition_value("2015-07-15"), "2015-07-15");
        assert_eq!(escape_partition_value("00:00"), "00%3A00");
        assert_eq!(escape_partition_value("a=b/c%d"), "a%3Db%2Fc%25d");
        assert_eq!(escape_partition_value("ünï code"), "ünï code");
        assert_eq!(escape_partition_value(""), DEFAULT_PARTITION);
    }
}
