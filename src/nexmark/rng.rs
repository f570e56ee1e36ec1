//! The random numbers behind every generated field: one small stream per
//! event, seeded from (seed, stream, event number), and the string and
//! price helpers of Nexmark's `StringsGenerator` / `PriceGenerator`.
//!
//! The stream is SplitMix64, written out here rather than taken from
//! `rand`, whose `SmallRng` may change algorithm between versions: the same
//! seed must give the same events on every build and platform.

/// Nexmark's shortest random string (`StringsGenerator.MIN_STRING_LENGTH`).
const MIN_STRING_LENGTH: u64 = 3;

/// Keeps the streams of different uses of the same number apart.
#[derive(Debug, Clone, Copy)]
pub(super) enum Stream {
    Event = 1,
    ChannelUrl = 2,
    HotUrl = 3,
}

/// SplitMix64's output function: a bijection on `u64` that mixes every bit.
fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A SplitMix64 stream.
#[derive(Debug, Clone)]
pub(super) struct Rng(u64);

impl Rng {
    /// The stream for `number` (an event number, a channel number…) of
    /// `stream` under `seed`. Distinct inputs give unrelated streams.
    pub(super) fn new(seed: u64, stream: Stream, number: u64) -> Rng {
        Rng(mix64(
            mix64(seed ^ (stream as u64).wrapping_mul(0xd6e8_feb8_6659_fd93)) ^ number,
        ))
    }

    pub(super) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix64(self.0)
    }

    /// Uniform in `[0, n)` (Lemire's multiply-shift; the bias is below
    /// 2^-40 for every `n` used here). `n` must be positive.
    pub(super) fn below(&mut self, n: u64) -> u64 {
        debug_assert!(n > 0);
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    /// Uniform in `[0, 1)` with 53 random bits.
    pub(super) fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// `StringsGenerator.nextString(random, max, special)`: 3 to `max - 1`
    /// characters, each `special` with probability 1/13 and otherwise a
    /// lowercase letter; leading and trailing spaces trimmed (as Java's
    /// `trim`, which only matters when `special` is a space).
    pub(super) fn string(&mut self, max: u64, special: u8, out: &mut String) {
        let start = out.len();
        let len = MIN_STRING_LENGTH + self.below(max - MIN_STRING_LENGTH);
        for _ in 0..len {
            let c = if self.below(13) == 0 {
                special
            } else {
                b'a' + self.below(26) as u8
            };
            out.push(char::from(c));
        }
        let trimmed = out[start..].trim_matches(' ');
        if trimmed.len() != len as usize {
            let kept = trimmed.to_owned();
            out.truncate(start);
            out.push_str(&kept);
        }
    }

    /// `StringsGenerator.nextExactString`: exactly `len` lowercase letters,
    /// 13 from each 64-bit draw (26^13 < 2^64).
    pub(super) fn exact_string(&mut self, len: usize, out: &mut String) {
        out.reserve(len);
        let mut left = len;
        while left > 0 {
            let mut bits = self.next_u64();
            for _ in 0..left.min(13) {
                out.push(char::from(b'a' + (bits % 26) as u8));
                bits /= 26;
            }
            left -= left.min(13);
        }
    }

    /// `StringsGenerator.nextExtra`: padding such that `current + len` is
    /// `average` on average (uniform within ±20 %); empty when the fixed
    /// fields already reach the average.
    pub(super) fn extra(&mut self, current: usize, average: usize) -> String {
        let mut out = String::new();
        if current > average {
            return out;
        }
        let wanted = average - current;
        let delta = (wanted as f64 * 0.2).round() as usize;
        let len = wanted - delta
            + if delta == 0 {
                0
            } else {
                self.below(2 * delta as u64) as usize
            };
        self.exact_string(len, &mut out);
        out
    }

    /// `PriceGenerator.nextPrice`: `round(10^(u * 6) * 100)` cents for a
    /// uniform `u`, so prices spread evenly over six decades ($1 to $1M).
    pub(super) fn price(&mut self) -> i64 {
        (10f64.powf(self.unit() * 6.0) * 100.0).round() as i64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_distinct() {
        let draw = |seed, stream, n| {
            let mut r = Rng::new(seed, stream, n);
            (0..4).map(|_| r.next_u64()).collect::<Vec<_>>()
        };
        assert_eq!(draw(1, Stream::Event, 7), draw(1, Stream::Event, 7));
        assert_ne!(draw(1, Stream::Event, 7), draw(1, Stream::Event, 8));
        assert_ne!(draw(1, Stream::Event, 7), draw(2, Stream::Event, 7));
        assert_ne!(draw(1, Stream::Event, 7), draw(1, Stream::ChannelUrl, 7));
        // Pinned (computed independently): the stream must not change
        // between builds, or stored events could no longer be appended to.
        let mut r = Rng::new(42, Stream::Event, 0);
        assert_eq!(r.next_u64(), 0xc9c7_89c2_f0db_50d1);
        assert_eq!(r.next_u64(), 0x5910_639c_2362_9e18);
    }

    #[test]
    fn below_stays_in_range_and_covers_it() {
        let mut r = Rng::new(3, Stream::Event, 0);
        let mut seen = [0u32; 13];
        for _ in 0..13_000 {
            seen[r.below(13) as usize] += 1;
        }
        assert!(seen.iter().all(|&c| (800..1200).contains(&c)), "{seen:?}");
        assert!((0..1000).all(|_| r.below(1) == 0));
    }

    #[test]
    fn strings_have_nexmark_lengths_and_alphabet() {
        let mut r = Rng::new(5, Stream::Event, 0);
        for _ in 0..2000 {
            let mut s = String::new();
            r.string(20, b' ', &mut s);
            assert!(s.len() <= 19, "{s:?}");
            assert!(!s.starts_with(' ') && !s.ends_with(' '), "{s:?}");
            assert!(s.bytes().all(|b| b == b' ' || b.is_ascii_lowercase()));
            let mut u = String::from("prefix/");
            r.string(5, b'_', &mut u);
            let tail = &u["prefix/".len()..];
            assert!((3..=4).contains(&tail.len()), "{u:?}");
            assert!(tail.bytes().all(|b| b == b'_' || b.is_ascii_lowercase()));
        }
        for len in [0, 1, 12, 13, 14, 26, 100] {
            let mut s = String::new();
            r.exact_string(len, &mut s);
            assert_eq!(s.len(), len);
            assert!(s.bytes().all(|b| b.is_ascii_lowercase()));
        }
    }

    #[test]
    fn extra_pads_to_the_average_within_twenty_percent() {
        let mut r = Rng::new(9, Stream::Event, 0);
        let lens: Vec<usize> = (0..5000).map(|_| r.extra(32, 100).len()).collect();
        // wanted 68, delta 14: lengths in [54, 82).
        assert!(lens.iter().all(|l| (54..82).contains(l)), "{lens:?}");
        let mean = lens.iter().sum::<usize>() as f64 / lens.len() as f64;
        assert!((66.0..69.0).contains(&mean), "{mean}");
        assert!(r.extra(300, 200).is_empty());
    }

    #[test]
    fn prices_span_one_dollar_to_a_million() {
        let mut r = Rng::new(11, Stream::Event, 0);
        let prices: Vec<i64> = (0..10_000).map(|_| r.price()).collect();
        assert!(prices.iter().all(|p| (100..=100_000_000).contains(p)));
        // log-uniform: a sixth of the prices in each decade.
        let below_10_dollars = prices.iter().filter(|&&p| p < 1000).count();
        assert!(
            (1400..1950).contains(&below_10_dollars),
            "{below_10_dollars}"
        );
    }
}
