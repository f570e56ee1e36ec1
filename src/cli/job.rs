//! Flags shared by every command that runs a streaming job.

use std::path::PathBuf;
use std::time::Duration;

use crate::driver::progress::ProgressSink;
use crate::driver::{JobConfig, OnDataLoss};

/// `--on-data-loss`: the CLI's spelling of [`OnDataLoss`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DataLossFlag {
    /// Stop with an error naming the partition and the lost range.
    Fail,
    /// Jump to the earliest offset still there and count the loss.
    Skip,
}

impl From<DataLossFlag> for OnDataLoss {
    fn from(flag: DataLossFlag) -> OnDataLoss {
        match flag {
            DataLossFlag::Fail => OnDataLoss::Fail,
            DataLossFlag::Skip => OnDataLoss::Skip,
        }
    }
}
use crate::source::StartingPosition;

#[derive(Debug, Clone, clap::Args)]
pub struct JobArgs {
    /// Job name: names its checkpoint (checkpoints/<job>/) and result table.
    #[arg(long)]
    pub job: Option<String>,
    /// Checkpoint directory (default: checkpoints/<job>).
    #[arg(long)]
    pub checkpoint_dir: Option<PathBuf>,
    /// Batch interval, e.g. 1s, 200ms.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// Where a new job starts: earliest, latest, timestamp:MS|RFC3339,
    /// offsets:P=O,P=O.
    #[arg(long, default_value = "earliest")]
    pub starting: StartingPosition,
    /// Most records per second per partition (Spark's maxRatePerPartition).
    #[arg(long)]
    pub max_rate_per_partition: Option<f64>,
    /// Adapt the rate to the processing speed (PID controller).
    #[arg(long)]
    pub backpressure: bool,
    /// With --backpressure: total records/s until the first measurement.
    #[arg(long, default_value_t = 10_000.0)]
    pub initial_rate: f64,
    /// Most records per partition in one batch (bounds a batch's memory;
    /// default 1,000,000, and 50,000 for SQL jobs, which hold a batch's
    /// decoded rows at once).
    #[arg(long)]
    pub max_records_per_batch: Option<u64>,
    /// Most records in one batch over all of a source's partitions,
    /// split evenly among them (Spark's maxOffsetsPerTrigger). Default: as
    /// many as keep a batch's state writes within one key per 256 bytes of
    /// --state-memory, judged by the keys per record earlier batches wrote.
    #[arg(long, value_name = "N")]
    pub max_offsets_per_batch: Option<u64>,
    /// Memory for the job's state, whatever its number of keys: RocksDB's
    /// block cache, memtables, index and filter blocks (three quarters)
    /// and result-table merges' hot values (one quarter). Also bounds the
    /// keys one batch writes unless --max-offsets-per-batch is given.
    #[arg(long, value_name = "BYTES", default_value = "256MiB", value_parser = parse_state_memory)]
    pub state_memory: u64,
    /// When retention deleted unread records: fail (default) or skip.
    #[arg(long, value_enum, default_value_t = DataLossFlag::Fail)]
    pub on_data_loss: DataLossFlag,
    /// Tasks per shuffle (default: number of cores).
    #[arg(long)]
    pub parallelism: Option<usize>,
    /// Drop all operator state (keeps offsets and result tables).
    #[arg(long)]
    pub reset_state: bool,
    /// Drain what is there at start-up, then stop.
    #[arg(long)]
    pub until_caught_up: bool,
    /// Stop after this many batches.
    #[arg(long)]
    pub max_batches: Option<u64>,
    /// Also write each batch's progress as a JSON line to this file.
    #[arg(long)]
    pub progress_json: Option<PathBuf>,
    /// No progress lines on stderr.
    #[arg(long)]
    pub quiet: bool,
    #[command(flatten)]
    pub ui: super::ui::UiArgs,
    /// Batches the console keeps and charts (its memory bound).
    #[arg(long, default_value_t = crate::driver::monitor::DEFAULT_HISTORY, value_name = "N")]
    pub ui_history: usize,
}

/// Running a job as one of many worker processes (`--workers-group`).
#[derive(Debug, Clone, clap::Args)]
pub struct WorkersArgs {
    /// Run as one of many worker processes sharing the job through the
    /// Kafka cluster at --brokers: start the same command on each machine.
    /// The workers join this group, split the tasks, shuffle through the
    /// job's repartition topics and keep result tables in their compacted
    /// changelog topics `sluice-<job>-table.<table>-changelog`.
    #[arg(long, value_name = "GROUP", requires = "brokers")]
    pub workers_group: Option<String>,
    /// Partitions of the job's repartition and changelog topics: the most
    /// reduce-side tasks the job can ever have. Fixed when the job is first
    /// started (default: the input topic's partition count).
    #[arg(long, value_name = "P", requires = "workers_group")]
    pub repartition_partitions: Option<u32>,
    /// With --workers-group: a worker silent this long loses its tasks to
    /// the others.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "10s")]
    pub session_timeout: Duration,
    /// With --workers-group: warm copies of each reduce-side task's state
    /// kept on other workers (Kafka Streams' num.standby.replicas), so a
    /// task taken over after a crash needs almost no restore. The group
    /// leader's value counts.
    #[arg(
        long,
        value_name = "N",
        default_value_t = 0,
        requires = "workers_group"
    )]
    pub standby_replicas: u32,
}

impl WorkersArgs {
    /// Sets `config` to run as a worker when --workers-group was given.
    pub fn apply(&self, brokers: Option<&str>, config: &mut JobConfig) {
        if let (Some(group), Some(brokers)) = (&self.workers_group, brokers) {
            let mut workers = crate::driver::WorkersOptions::new(brokers);
            workers.group = Some(group.clone());
            workers.partitions = self.repartition_partitions;
            workers.session_timeout = self.session_timeout;
            workers.standby_replicas = self.standby_replicas;
            config.workers = Some(workers);
        }
    }
}

impl JobArgs {
    pub fn config(&self, default_name: &str) -> JobConfig {
        let mut c = JobConfig::new(
            self.job.clone().unwrap_or_else(|| default_name.into()),
            self.interval,
        );
        c.checkpoint_dir = self.checkpoint_dir.clone();
        c.starting_position = self.starting.clone();
        c.max_rate_per_partition = self.max_rate_per_partition;
        c.backpressure = self.backpressure;
        c.initial_rate = self.initial_rate;
        c.max_records_per_batch = Some(self.max_records_per_batch.unwrap_or(1_000_000));
        c.max_offsets_per_batch = self.max_offsets_per_batch;
        c.state_memory = crate::checkpoint::StateMemory::new(self.state_memory);
        c.on_data_loss = self.on_data_loss.into();
        if let Some(p) = self.parallelism {
            c.parallelism = p;
        }
        c.reset_state = self.reset_state;
        c.until_caught_up = self.until_caught_up;
        c.max_batches = self.max_batches;
        c.progress = ProgressSink {
            lines: !self.quiet,
            json: self.progress_json.clone(),
            monitor: None,
        };
        c
    }

    /// Serves the console of the job `config` describes (unless --no-ui);
    /// keep the handle while the job runs.
    pub fn console(
        &self,
        config: &mut JobConfig,
    ) -> anyhow::Result<Option<crate::console::ConsoleThread>> {
        self.ui.serve_job(config, self.ui_history)
    }
}

/// `--state-memory`: a size no smaller than RocksDB's fixed costs.
fn parse_state_memory(text: &str) -> Result<u64, String> {
    let bytes = crate::units::parse_bytes(text)?;
    let min = crate::checkpoint::MIN_STATE_MEMORY;
    if bytes < min {
        return Err(format!(
            "{text} is below the smallest state budget, {} MiB",
            min >> 20
        ));
    }
    Ok(bytes)
}
