//! Per-user sessions with `map_with_state` and a timeout: records are
//! events keyed by user id; a user's session ends after `--gap` without
//! events. Each batch updates the event count of each user's latest session
//! (table `latest_session`) and, when a session times out, adds one to the
//! user's completed sessions (table `sessions`).
//!
//! ```text
//! sluice topic create clicks --partitions 4
//! printf 'alice:click\nbob:view\n' | sluice produce clicks --key-sep ':'
//! cargo run --release --example sessions -- --topic clicks --gap 10s
//! sluice state scan --job sessions --table sessions
//! ```

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use sluice::driver::{JobConfig, StreamingContext};
use sluice::log::{LogStore, StoreOptions};
use sluice::plan::{Emitter, State};

#[derive(Parser)]
struct Args {
    #[arg(long)]
    topic: String,
    #[arg(long, default_value = "./data")]
    data_dir: PathBuf,
    /// Inactivity that ends a session.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    gap: Duration,
    #[arg(long, default_value = "sessions")]
    job: String,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut config = JobConfig::new(&args.job, Duration::from_secs(1));
    config.stop = Some(sluice::driver::stop_on_signals()?); // Ctrl-C: finish the batch, commit
    let ctx = StreamingContext::new(config);
    let store = Arc::new(LogStore::open(&args.data_dir, StoreOptions::default())?);
    let events = ctx.embedded(store, &args.topic)?;

    // (user, 1) per event; records without a key are anonymous.
    let by_user = events.map(|r| (r.key_str().unwrap_or("anonymous").to_owned(), 1u64));

    // State: events in the user's open session. Output: (user, events, ended).
    let sessions = by_user
        .map_with_state(
            Some(args.gap),
            |user,
             event: Option<u64>,
             state: &mut State<u64>,
             out: &mut Emitter<(String, (u64, bool))>| {
                let events = state.get().copied().unwrap_or(0);
                match event {
                    Some(n) => {
                        state.update(events + n);
                        out.push((user, (events + n, false)));
                    }
                    None => out.push((user, (events, true))), // timed out: session over
                }
            },
        )
        .named("user-sessions");

    sessions
        .filter(|(_, (_, ended))| !ended)
        .map(|(user, (events, _))| (user.to_owned(), events))
        .save_to_table("latest_session");
    sessions
        .filter(|(_, (_, ended))| ended)
        .map(|(user, _)| (user.to_owned(), 1u64))
        .sum_into_table("sessions");

    ctx.run()?;
    Ok(())
}
