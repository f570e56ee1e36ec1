//! Nexmark, the standard streaming benchmark (an online auction), as a
//! seeded event generator and a loader into the log store.
//!
//! # What it owns
//! - [`Generator`]: event number `n` → one [`Event`], a pure function of
//!   ([`NexmarkConfig`], `n`). Events interleave as in the Flink / Beam
//!   Nexmark generator (`NexmarkGenerator`, `GeneratorConfig`): of every 50
//!   events, `n % 50 == 0` is a person, `1..=3` auctions and `4..=49` bids.
//!   Person and auction ids follow from `n` (the first of each is 1000); a
//!   bid names a "hot" auction (the first of the last batch of 100) with
//!   probability 1/2, otherwise one of the last 100 auctions plus a lead of
//!   10 not yet created; bidders (hot: 3/4) and sellers (hot: 3/4) come
//!   from the last 1,000 people plus a lead of 10. Prices are
//!   `round(10^(u·6)·100)` cents, categories 10..=14, names, cities and
//!   states from Nexmark's lists, `extra` pads a person, auction and bid to
//!   200, 500 and 100 bytes on average. Event time is
//!   `base_time + floor(n · 1000 / rate)` ms: at the default 10,000,000
//!   events/s (the Flink suite's TPS) 10 M events span one second.
//! - [`json`]: an event as one JSON object with RisingWave's snake_case
//!   field names and `"YYYY-MM-DD HH:MM:SS.mmm"` (UTC) timestamps.
//! - [`load`]: writing events `[from, to)` into the topics `person`,
//!   `auction` and `bid`, generated and encoded on all cores.
//! - [`udf`]: the suite's user function `count_char` (q14), for a job to
//!   register on its script.
//!
//! Because every event depends only on (config, n), a range can be cut
//! into pieces generated on different threads, and `--append` continues a
//! stream exactly where an earlier run stopped.
//!
//! An auction lasts on average as long as the next 100 auctions take to
//! appear (`nextAuctionLengthMs`): 1,667 events, which at 10 M events/s is
//! under a millisecond, so auctions expire 1 ms after they open (a few ms
//! in Flink's suite at that rate, whose 8 generators each run at 1/8 of
//! it). Lower `rate` for longer auctions.
//!
//! Where this differs from Flink's generator, on purpose: it draws from an
//! unseeded `java.util.Random`, so its events differ on every run; here
//! each event has its own SplitMix64 stream seeded by (seed, n). Bidder
//! ids get `FIRST_PERSON_ID` added once (Flink's `BidGenerator` with
//! channels adds it twice, so its bidders are 1000 above any person id). Random letters are
//! always `a..=z` (Flink's `nextExactString` can produce punctuation from a
//! negative `int`). Out-of-order groups, rate shapes and several generator
//! timelines are not modelled: events are in event-time order.
//!
//! # What it must never do
//! Read the clock, the environment or any other source of nondeterminism;
//! touch files except through [`crate::log`].

mod generator;
pub mod json;
pub mod load;
mod rng;
pub mod udf;

pub use generator::*;
