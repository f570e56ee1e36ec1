//! Word count, written as a user of the `sluice` library would write it.
//!
//! ```text
//! cargo run --release --example wordcount -- --topic lines                 # embedded store in ./data
//! cargo run --release --example wordcount -- --topic lines --brokers 127.0.0.1:9092
//! ```
//! Counts are committed exactly once, with the offsets, into the result
//! table `counts`: `sluice state scan --job wordcount-example --table counts --top 10`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use sluice::driver::{JobConfig, StreamingContext};
use sluice::log::{LogStore, StoreOptions};
use sluice::plan::Emitter;
use sluice::source::kafka::KafkaSource;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    topic: String,
    /// A Kafka broker (`sluice broker` or Kafka); default: the embedded store.
    #[arg(long)]
    brokers: Option<String>,
    #[arg(long, default_value = "./data")]
    data_dir: PathBuf,
    #[arg(long, default_value = "wordcount-example")]
    job: String,
    /// Drain the topic, then stop.
    #[arg(long)]
    until_caught_up: bool,
    /// Where the web console and /metrics are served (the next free port
    /// when it is taken).
    #[arg(long, default_value = "127.0.0.1:4040")]
    ui: std::net::SocketAddr,
    /// Serve no console.
    #[arg(long)]
    no_ui: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut config = JobConfig::new(&args.job, Duration::from_secs(1));
    config.until_caught_up = args.until_caught_up;
    config.stop = Some(sluice::driver::stop_on_signals()?); // Ctrl-C: finish the batch, commit
    // The web console: kept up while the handle lives.
    let _console = if args.no_ui {
        None
    } else {
        let (console, url) = sluice::console::serve_job(&mut config, args.ui, 300)?;
        eprintln!("console: {url}");
        Some(console)
    };
    let ctx = StreamingContext::new(config);

    let lines = match &args.brokers {
        Some(brokers) => ctx.source(KafkaSource::new(
            &args.topic,
            brokers,
            &args.topic,
            None,
            vec![],
        )?),
        None => {
            let store = LogStore::open(&args.data_dir, StoreOptions::default())?;
            ctx.embedded(Arc::new(store), &args.topic)?
        }
    };

    // Words are borrowed from the record's bytes: no allocation per word.
    let counts = lines
        .flat_map(|record, out: &mut Emitter<(String, u64)>| {
            for word in record.value_str().split_whitespace() {
                out.push((word, 1u64));
            }
        })
        .reduce_by_key(|a, b| a + b);

    counts.sum_into_table("counts");
    counts.print(10);

    ctx.run()?;
    Ok(())
}
