//! The `sluice` binary: parses the command line and reports errors. All the
//! work happens in the library (`sluice::cli` and below).

use std::process::ExitCode;

use clap::Parser;

// See `sluice::alloc`: a hostile length prefix must not abort the broker.
#[global_allocator]
static ALLOCATOR: sluice::alloc::LazyHugeAlloc = sluice::alloc::LazyHugeAlloc;

fn main() -> ExitCode {
    // Hitting a file-size limit must fail the write (EFBIG), which the log
    // store rolls back and reports, rather than kill the process (as
    // PostgreSQL does too).
    // SAFETY: setting a signal's disposition to SIG_IGN before any threads
    // start has no memory-safety preconditions.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
    sluice::alloc::tune_system_allocator();
    // Crash tests configure failpoints of the binary with FAILPOINTS
    // (e.g. `sink::topic::after_write=return(3)`); only in builds with the
    // `failpoints` feature.
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();
    let cli = sluice::cli::Cli::parse();
    if cli.prints_and_ends() {
        // Rust ignores SIGPIPE, so `sluice consume t | head` would panic
        // in println! once head exits; these commands die of it instead,
        // silently, like cat. (librdkafka sends with MSG_NOSIGNAL.)
        // SAFETY: no other thread runs yet; restoring a default signal
        // disposition has no memory-safety preconditions.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    sluice::cli::init_tracing(&cli.log_filter());
    match sluice::cli::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
