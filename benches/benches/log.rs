//! Criterion benchmarks of the log store's append and read paths: 100 B and
//! 1 KiB records in batches of 1,000, without flush and with an fsync per
//! batch, and sequential reads of page-cached segments. `sluice bench log`
//! measures the same paths side by side with `dd` for the README's ratios.

use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sluice::log::{FlushPolicy, LogStore, StoreOptions, TopicConfig};
use sluice::producer::uniform_batch;

const RECORDS_PER_BATCH: usize = 1000;

fn store() -> (tempfile::TempDir, LogStore) {
    let dir =
        tempfile::tempdir_in(std::env::var("SLUICE_BENCH_DIR").unwrap_or_else(|_| ".".into()))
            .expect("temp dir for the bench store");
    let store = LogStore::open(
        dir.path(),
        StoreOptions {
            background: false,
            ..Default::default()
        },
    )
    .expect("open store");
    (dir, store)
}

fn topic_config(policy: FlushPolicy) -> TopicConfig {
    let mut config = TopicConfig {
        retention_ms: -1,
        ..TopicConfig::default()
    };
    config.set_flush_policy(policy);
    config
}

/// Appends `iters` batches to a fresh topic per sample so disk use stays
/// bounded; only the appends are timed.
fn append_bench(c: &mut Criterion, value_bytes: usize, policy: FlushPolicy, name: &str) {
    let (_dir, store) = store();
    let batch = uniform_batch(RECORDS_PER_BATCH, value_bytes, 0).expect("encode");
    let mut group = c.benchmark_group("append");
    group.throughput(Throughput::Elements(RECORDS_PER_BATCH as u64));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(if policy == FlushPolicy::EveryAppend {
        10
    } else {
        4
    }));
    group.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let _ = store.delete_topic("bench");
            store
                .create_topic("bench", 1, topic_config(policy))
                .expect("create");
            let p = store.partition("bench", 0).expect("partition");
            let mut buf = batch.to_vec();
            let start = Instant::now();
            for _ in 0..iters {
                p.append(&mut buf).expect("append");
            }
            start.elapsed()
        })
    });
    group.finish();
}

fn appends(c: &mut Criterion) {
    append_bench(c, 100, FlushPolicy::Os, "100B/no-flush");
    append_bench(c, 1024, FlushPolicy::Os, "1KiB/no-flush");
    append_bench(c, 100, FlushPolicy::EveryAppend, "100B/fsync-per-batch");
    append_bench(c, 1024, FlushPolicy::EveryAppend, "1KiB/fsync-per-batch");
}

fn reads(c: &mut Criterion) {
    let (_dir, store) = store();
    store
        .create_topic("bench", 1, topic_config(FlushPolicy::Os))
        .expect("create");
    let p = store.partition("bench", 0).expect("partition");
    let mut batch = uniform_batch(RECORDS_PER_BATCH, 1024, 0)
        .expect("encode")
        .to_vec();
    for _ in 0..256 {
        p.append(&mut batch).expect("append");
    }
    let mut group = c.benchmark_group("read");
    let mut out = Vec::with_capacity(2 << 20);
    let mut offset = 0;
    // 1 MiB reads of ~1 MB batches return exactly one whole batch each.
    let chunk = 1 << 20;
    group.throughput(Throughput::Bytes(batch.len() as u64));
    group.bench_function("1KiB/page-cache/1MiB-reads", |b| {
        b.iter(|| {
            if offset >= p.high_watermark() {
                offset = 0;
            }
            out.clear();
            let info = p.read_into(offset, chunk, &mut out).expect("read");
            offset = info.next_offset;
            info.bytes
        })
    });
    group.finish();
}

criterion_group!(benches, appends, reads);
criterion_main!(benches);
