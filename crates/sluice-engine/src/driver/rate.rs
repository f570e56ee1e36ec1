//! How many records a batch may take from a partition: a fixed maximum
//! rate (Spark's `maxRatePerPartition`) and an optional backpressure
//! controller (Spark's PID rate estimator), which starts from an initial
//! rate until it has measured how fast the job processes records, so the
//! first batch of a job with a backlog cannot flood it.

/// Spark's `PIDRateEstimator`, with its default gains.
#[derive(Debug, Clone)]
pub struct PidEstimator {
    batch_interval_ms: f64,
    proportional: f64,
    integral: f64,
    derivative: f64,
    min_rate: f64,
    latest: Option<(f64, f64, f64)>, // (time ms, rate, error)
}

impl PidEstimator {
    pub fn new(batch_interval_ms: i64) -> Self {
        PidEstimator {
            batch_interval_ms: batch_interval_ms.max(1) as f64,
            proportional: 1.0,
            integral: 0.2,
            derivative: 0.0,
            min_rate: 100.0,
            latest: None,
        }
    }

    /// Feeds one completed batch; returns the new total rate (records/s)
    /// once there is a measurement to base it on.
    pub fn compute(
        &mut self,
        time_ms: f64,
        elements: u64,
        processing_ms: f64,
        scheduling_delay_ms: f64,
    ) -> Option<f64> {
        if elements == 0 || processing_ms <= 0.0 {
            return None;
        }
        let processing_rate = elements as f64 / processing_ms * 1000.0;
        match self.latest {
            None => {
                self.latest = Some((time_ms, processing_rate, 0.0));
                Some(processing_rate)
            }
            Some((latest_time, latest_rate, latest_error)) => {
                if time_ms <= latest_time {
                    return None;
                }
                let delay_since_update = (time_ms - latest_time) / 1000.0;
                let error = latest_rate - processing_rate;
                let historical_error =
                    scheduling_delay_ms * processing_rate / self.batch_interval_ms;
                let d_error = (error - latest_error) / delay_since_update;
                let new_rate = (latest_rate
                    - self.proportional * error
                    - self.integral * historical_error
                    - self.derivative * d_error)
                    .max(self.min_rate);
                self.latest = Some((time_ms, new_rate, error));
                Some(new_rate)
            }
        }
    }
}

/// Per-partition record limits for the next batch.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    pub max_rate_per_partition: Option<f64>,
    pub max_records_per_batch: Option<u64>,
    /// Cap over all of a source's partitions (maxOffsetsPerTrigger).
    pub max_offsets_per_batch: Option<u64>,
    /// Without that cap: the state writes one batch may stage (from the
    /// state memory budget), turned into records by the writes per record
    /// recent batches made — a word count over a small vocabulary writes
    /// few keys per record and may take large batches, one where every
    /// record is a new key gets batches the budget can hold.
    state_writes_per_batch: Option<u64>,
    writes_per_record: f64,
    pid: Option<PidEstimator>,
    /// Total rate from the controller (or the initial rate before it has
    /// measured anything).
    estimated_total: Option<f64>,
}

impl RateLimiter {
    pub fn new(
        max_rate_per_partition: Option<f64>,
        max_records_per_batch: Option<u64>,
        max_offsets_per_batch: Option<u64>,
        backpressure: Option<(i64, f64)>,
    ) -> Self {
        RateLimiter {
            max_rate_per_partition,
            max_records_per_batch,
            max_offsets_per_batch,
            state_writes_per_batch: None,
            writes_per_record: 1.0,
            estimated_total: backpressure.map(|(_, initial)| initial),
            pid: backpressure.map(|(interval, _)| PidEstimator::new(interval)),
        }
    }

    /// Limit per partition for a batch of `interval_ms` over `partitions`
    /// partitions with a backlog.
    pub fn limit(&self, interval_ms: i64, partitions: usize) -> Option<u64> {
        let secs = interval_ms.max(1) as f64 / 1000.0;
        let mut limit: Option<f64> = self.max_rate_per_partition.map(|r| r * secs);
        if let Some(total) = self.estimated_total {
            let per = total / partitions.max(1) as f64 * secs;
            limit = Some(limit.map_or(per, |l| l.min(per)));
        }
        let limit = limit.map(|l| l.max(1.0) as u64);
        let total = self
            .max_offsets_per_batch
            .or_else(|| {
                self.state_writes_per_batch
                    .map(|w| (w as f64 / self.writes_per_record.max(1e-4)) as u64)
            })
            .map(|t| (t / partitions.max(1) as u64).max(1));
        [limit, self.max_records_per_batch, total]
            .into_iter()
            .flatten()
            .min()
    }

    /// Bounds batches by the state writes they stage (unless an explicit
    /// `max_offsets_per_batch` does).
    pub fn with_state_writes_per_batch(mut self, writes: u64) -> Self {
        self.state_writes_per_batch = Some(writes.max(1));
        self
    }

    /// A batch of `records` staged `writes` state writes: the next batch
    /// is sized by it. A job whose keys turn from few to many in one batch
    /// gets one batch sized for few (still within the per-partition cap).
    pub fn on_state_writes(&mut self, records: u64, writes: u64) {
        if records > 0 {
            self.writes_per_record = writes as f64 / records as f64;
        }
    }

    pub fn on_batch_completed(
        &mut self,
        time_ms: f64,
        elements: u64,
        processing_ms: f64,
        scheduling_delay_ms: f64,
    ) {
        if let Some(pid) = &mut self.pid
            && let Some(rate) = pid.compute(time_ms, elements, processing_ms, scheduling_delay_ms)
        {
            self.estimated_total = Some(rate);
        }
    }

    pub fn estimated_rate(&self) -> Option<f64> {
        self.estimated_total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_converges_towards_processing_rate() {
        let mut pid = PidEstimator::new(1000);
        // First measurement: the processing rate itself.
        assert_eq!(pid.compute(1000.0, 10_000, 500.0, 0.0), Some(20_000.0));
        // Slower processing lowers the rate; a scheduling delay lowers it more.
        let r1 = pid.compute(2000.0, 10_000, 1000.0, 0.0).unwrap();
        assert!((10_000.0..20_000.0).contains(&r1), "{r1}");
        let r2 = pid.compute(3000.0, 10_000, 1000.0, 2000.0).unwrap();
        assert!(r2 < r1, "{r2} < {r1}");
        assert!(
            pid.compute(3000.0, 10, 1.0, 0.0).is_none(),
            "time must advance"
        );
        assert!(
            pid.compute(4000.0, 0, 1.0, 0.0).is_none(),
            "empty batches teach nothing"
        );
    }

    #[test]
    fn initial_rate_applies_until_measured() {
        let mut limiter =
            RateLimiter::new(Some(5_000.0), Some(1_000_000), None, Some((1000, 400.0)));
        assert_eq!(limiter.limit(1000, 4), Some(100));
        limiter.on_batch_completed(1000.0, 100, 10.0, 0.0); // 10,000/s
        assert_eq!(limiter.limit(1000, 4), Some(2_500));
        let fixed = RateLimiter::new(Some(5_000.0), None, None, None);
        assert_eq!(fixed.limit(200, 4), Some(1_000));
        assert_eq!(
            RateLimiter::new(None, None, None, None).limit(1000, 4),
            None
        );
    }

    #[test]
    fn a_total_cap_is_split_among_partitions() {
        let capped = RateLimiter::new(None, Some(1_000_000), Some(1_000_000), None);
        assert_eq!(capped.limit(1000, 4), Some(250_000));
        assert_eq!(capped.limit(1000, 1), Some(1_000_000));
        let per_partition = RateLimiter::new(None, Some(100), Some(1_000_000), None);
        assert_eq!(per_partition.limit(1000, 4), Some(100));
        assert_eq!(
            RateLimiter::new(None, None, Some(3), None).limit(1000, 4),
            Some(1)
        );
    }

    #[test]
    fn state_writes_size_batches_from_what_records_wrote() {
        let mut limiter = RateLimiter::new(None, Some(1_000_000), None, None)
            .with_state_writes_per_batch(400_000);
        // Until measured, a record is taken to write a key.
        assert_eq!(limiter.limit(1000, 4), Some(100_000));
        // A word count over a small vocabulary: 20 records per write.
        limiter.on_state_writes(400_000, 20_000);
        assert_eq!(limiter.limit(1000, 4), Some(1_000_000));
        // Every record a new key: at once back to the budget.
        limiter.on_state_writes(4_000_000, 4_000_000);
        assert_eq!(limiter.limit(1000, 4), Some(100_000));
        // Batches without writes (a stateless job) are bounded by the rest.
        limiter.on_state_writes(400_000, 0);
        assert_eq!(limiter.limit(1000, 4), Some(1_000_000));
        limiter.on_state_writes(0, 0);
        assert_eq!(limiter.limit(1000, 4), Some(1_000_000));
        // An explicit cap wins.
        let explicit = RateLimiter::new(None, None, Some(8), None).with_state_writes_per_batch(1);
        assert_eq!(explicit.limit(1000, 4), Some(2));
    }
}
