//! `sluice-bench corpus`: writes a seeded text corpus to a file, the shared
//! input of the word-count benchmarks (Sluice's and the Spark reference in
//! benches/spark/).
//!
//! The text comes from [`CorpusGenerator`]: lowercase words separated by
//! single spaces, lines ended by '\n'. The same seed and size give the same
//! bytes for a given build, so both engines of a comparison read one file.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use anyhow::Context;

use sluice::corpus::CorpusGenerator;
use sluice::units::parse_bytes;

#[derive(Debug, clap::Args)]
pub struct CorpusArgs {
    /// Bytes to write (at least; the last line may overshoot by less than a line).
    #[arg(long, default_value = "100MB", value_parser = parse_bytes)]
    size: u64,
    /// Seed of the generator: the same seed gives the same corpus.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// File to write (created or truncated; its directory must exist).
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: CorpusArgs) -> anyhow::Result<()> {
    let target = usize::try_from(args.size).context("--size is too large for this platform")?;
    let file =
        File::create(&args.out).with_context(|| format!("cannot create {}", args.out.display()))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let (lines, words) = CorpusGenerator::new(args.seed)
        .fill(target, &mut out)
        .and_then(|counts| out.flush().map(|()| counts))
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    let file = out
        .into_inner()
        .map_err(|e| e.into_error())
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    let bytes = file
        .metadata()
        .with_context(|| format!("cannot stat {}", args.out.display()))?
        .len();
    println!("lines {lines}");
    println!("words {words}");
    println!("bytes {bytes}");
    Ok(())
}
