//! A deterministic, seeded generator of English-like text for demos and
//! benchmarks.
//!
//! [`CorpusGenerator`] makes a vocabulary of distinct lowercase words (3–10
//! ASCII letters, 50,000 by default) and writes lines of 4–12 words (8 on
//! average) drawn from a Zipf distribution, so word counts have the long
//! tail and hot keys of real text. The same seed, vocabulary size and
//! exponent always give the same bytes for a given build; the random number
//! generator is `rand`'s `SmallRng`, whose algorithm may change between
//! `rand` versions or platforms, so corpora are not meant to be stored as
//! golden files across upgrades. Regenerate them instead.
//!
//! This module only generates bytes; it owns no files and never reads the
//! clock or any other source of nondeterminism.

use std::collections::HashSet;
use std::io::{self, Write};

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// Vocabulary size used by [`CorpusGenerator::new`].
pub const DEFAULT_VOCABULARY: usize = 50_000;
/// Largest vocabulary accepted; beyond this the tables cost hundreds of MB.
pub const MAX_VOCABULARY: usize = 1 << 22;
/// Zipf exponent used by [`CorpusGenerator::new`]: word of rank `k` (from 1)
/// is drawn with probability proportional to `1 / k^exponent`.
pub const DEFAULT_EXPONENT: f64 = 1.0;

const MIN_WORD_LEN: usize = 3;
const MAX_WORD_LEN: usize = 10;
const MIN_WORDS_PER_LINE: usize = 4;
const MAX_WORDS_PER_LINE: usize = 12;
/// Decorrelates the vocabulary's random stream from the sampling stream.
const VOCABULARY_STREAM: u64 = 0x9e37_79b9_7f4a_7c15;
/// `fill` writes to its sink in chunks of about this size.
const WRITE_CHUNK_BYTES: usize = 64 * 1024;

/// Invalid generator parameters.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GenError {
    #[error("vocabulary size must be at least 1")]
    EmptyVocabulary,
    #[error("vocabulary size {requested} is larger than the maximum {max}")]
    VocabularyTooLarge { requested: usize, max: usize },
    #[error("Zipf exponent must be finite and non-negative, got {0}")]
    InvalidExponent(f64),
}

/// Generates lines of Zipf-distributed words from a seed. See the module
/// docs for the shape of the output.
#[derive(Debug, Clone)]
pub struct CorpusGenerator {
    seed: u64,
    exponent: f64,
    /// Words by rank: index 0 is the most frequent.
    words: Vec<String>,
    sampler: AliasTable,
    rng: SmallRng,
}

impl CorpusGenerator {
    /// A generator with [`DEFAULT_VOCABULARY`] words and exponent
    /// [`DEFAULT_EXPONENT`].
    pub fn new(seed: u64) -> Self {
        Self::build(seed, DEFAULT_VOCABULARY, DEFAULT_EXPONENT)
    }

    /// The same generator with a vocabulary of `size` words. The output
    /// depends only on (seed, size, exponent), not on the order in which the
    /// `with_*` methods are called.
    ///
    /// # Errors
    ///
    /// If `size` is 0 or above [`MAX_VOCABULARY`].
    pub fn with_vocabulary(self, size: usize) -> Result<Self, GenError> {
        if size == 0 {
            return Err(GenError::EmptyVocabulary);
        }
        if size > MAX_VOCABULARY {
            return Err(GenError::VocabularyTooLarge {
                requested: size,
                max: MAX_VOCABULARY,
            });
        }
        Ok(Self::build(self.seed, size, self.exponent))
    }

    /// The same generator with Zipf exponent `exponent` (0 is uniform).
    ///
    /// # Errors
    ///
    /// If `exponent` is negative, infinite or NaN.
    pub fn with_exponent(mut self, exponent: f64) -> Result<Self, GenError> {
        if !exponent.is_finite() || exponent < 0.0 {
            return Err(GenError::InvalidExponent(exponent));
        }
        self.exponent = exponent;
        self.sampler = AliasTable::zipf(self.words.len(), exponent);
        self.rng = SmallRng::seed_from_u64(self.seed);
        Ok(self)
    }

    fn build(seed: u64, size: usize, exponent: f64) -> Self {
        Self {
            seed,
            exponent,
            words: vocabulary(seed, size),
            sampler: AliasTable::zipf(size, exponent),
            rng: SmallRng::seed_from_u64(seed),
        }
    }

    /// The seed this generator was built from.
    pub fn seed(&self) -> u64 {
        self.seed
    }

    /// The Zipf exponent.
    pub fn exponent(&self) -> f64 {
        self.exponent
    }

    /// The vocabulary by rank: index 0 is the most frequent word.
    pub fn vocabulary(&self) -> &[String] {
        &self.words
    }

    /// Draws one word.
    pub fn next_word(&mut self) -> &str {
        let rank = self.sampler.sample(&mut self.rng);
        &self.words[rank]
    }

    /// Appends one line of space-separated words to `out`, without a
    /// newline, and returns how many words it has.
    pub fn next_line(&mut self, out: &mut Vec<u8>) -> usize {
        let n = self
            .rng
            .random_range(MIN_WORDS_PER_LINE..=MAX_WORDS_PER_LINE);
        for i in 0..n {
            if i > 0 {
                out.push(b' ');
            }
            let rank = self.sampler.sample(&mut self.rng);
            out.extend_from_slice(self.words[rank].as_bytes());
        }
        n
    }

    /// Appends the line numbered `index` of an endless, randomly accessible
    /// stream of lines: the same (generator, index) always gives the same
    /// line, in any order of calls. Replayable sources use this so a re-run
    /// batch sees exactly the lines of its first run.
    pub fn line_at(&self, index: u64, out: &mut Vec<u8>) -> usize {
        let mut rng = SmallRng::seed_from_u64(
            self.seed ^ index.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15),
        );
        let n = rng.random_range(MIN_WORDS_PER_LINE..=MAX_WORDS_PER_LINE);
        for i in 0..n {
            if i > 0 {
                out.push(b' ');
            }
            let rank = self.sampler.sample(&mut rng);
            out.extend_from_slice(self.words[rank].as_bytes());
        }
        n
    }

    /// Writes newline-terminated lines to `out` until at least
    /// `target_bytes` bytes were written (overshooting by less than one
    /// line), and returns `(lines, words)` written.
    ///
    /// # Errors
    ///
    /// Whatever `out` returns; lines written before the error stay written.
    pub fn fill(&mut self, target_bytes: usize, out: &mut impl Write) -> io::Result<(u64, u64)> {
        let mut buf = Vec::with_capacity(WRITE_CHUNK_BYTES + 256);
        let (mut written, mut lines, mut words) = (0usize, 0u64, 0u64);
        while written < target_bytes {
            let before = buf.len();
            words += self.next_line(&mut buf) as u64;
            buf.push(b'\n');
            lines += 1;
            written += buf.len() - before;
            if buf.len() >= WRITE_CHUNK_BYTES {
                out.write_all(&buf)?;
                buf.clear();
            }
        }
        out.write_all(&buf)?;
        Ok((lines, words))
    }
}

/// `size` distinct random words, in the order generated (which becomes
/// their frequency rank).
fn vocabulary(seed: u64, size: usize) -> Vec<String> {
    let mut rng = SmallRng::seed_from_u64(seed ^ VOCABULARY_STREAM);
    let mut seen = HashSet::with_capacity(size);
    let mut words = Vec::with_capacity(size);
    while words.len() < size {
        let len = rng.random_range(MIN_WORD_LEN..=MAX_WORD_LEN);
        let word: String = (0..len)
            .map(|_| char::from(rng.random_range(b'a'..=b'z')))
            .collect();
        // Short words collide now and then (there are only 17,576 of three
        // letters); drawing again keeps the vocabulary distinct.
        if seen.insert(word.clone()) {
            words.push(word);
        }
    }
    words
}

/// Walker/Vose alias table: O(1) sampling from a fixed discrete
/// distribution with one random number per draw.
#[derive(Debug, Clone)]
struct AliasTable {
    /// Probability of keeping column `i` rather than taking `alias[i]`.
    keep: Vec<f64>,
    alias: Vec<u32>,
}

impl AliasTable {
    /// The table for P(rank k) ∝ 1 / (k + 1)^exponent, k in 0..n.
    fn zipf(n: usize, exponent: f64) -> Self {
        let weights: Vec<f64> = (1..=n).map(|k| (k as f64).powf(-exponent)).collect();
        let total: f64 = weights.iter().sum();
        // Scale so the average column holds exactly 1.
        let mut scaled: Vec<f64> = weights.iter().map(|w| w * n as f64 / total).collect();
        let mut keep = vec![1.0; n];
        let mut alias: Vec<u32> = (0..n as u32).collect();
        let (mut small, mut large): (Vec<u32>, Vec<u32>) =
            (0..n as u32).partition(|&i| scaled[i as usize] < 1.0);
        while let (Some(&s), Some(&l)) = (small.last(), large.last()) {
            small.pop();
            keep[s as usize] = scaled[s as usize];
            alias[s as usize] = l;
            scaled[l as usize] -= 1.0 - scaled[s as usize];
            if scaled[l as usize] < 1.0 {
                large.pop();
                small.push(l);
            }
        }
        // Whatever is left is 1 up to rounding error: keep it whole.
        Self { keep, alias }
    }

    fn sample(&self, rng: &mut SmallRng) -> usize {
        // One 64-bit draw: the high half picks the column by
        // multiply-shift (bias below n / 2^32, irrelevant here), the low
        // half is the coin.
        let x: u64 = rng.random();
        let column = (((x >> 32) * self.keep.len() as u64) >> 32) as usize;
        let coin = (x & 0xffff_ffff) as f64 * (1.0 / 4_294_967_296.0);
        if coin < self.keep[column] {
            column
        } else {
            self.alias[column] as usize
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus(g: &mut CorpusGenerator, bytes: usize) -> Vec<u8> {
        let mut out = Vec::new();
        g.fill(bytes, &mut out).unwrap();
        out
    }

    #[test]
    fn same_seed_same_output_different_seed_different_output() {
        let a = corpus(&mut CorpusGenerator::new(7), 200_000);
        let b = corpus(&mut CorpusGenerator::new(7), 200_000);
        let c = corpus(&mut CorpusGenerator::new(8), 200_000);
        assert_eq!(a, b);
        assert_ne!(a, c);
        // Builder order does not matter.
        let d = CorpusGenerator::new(7)
            .with_exponent(1.2)
            .unwrap()
            .with_vocabulary(1000)
            .unwrap();
        let e = CorpusGenerator::new(7)
            .with_vocabulary(1000)
            .unwrap()
            .with_exponent(1.2)
            .unwrap();
        assert_eq!(
            corpus(&mut d.clone(), 50_000),
            corpus(&mut e.clone(), 50_000)
        );
        assert_eq!(d.vocabulary(), e.vocabulary());
    }

    #[test]
    fn vocabulary_is_distinct_lowercase_words_of_3_to_10_letters() {
        let g = CorpusGenerator::new(1);
        let words = g.vocabulary();
        assert_eq!(words.len(), DEFAULT_VOCABULARY);
        let distinct: HashSet<&String> = words.iter().collect();
        assert_eq!(distinct.len(), words.len());
        for w in words {
            assert!((3..=10).contains(&w.len()), "{w}");
            assert!(w.bytes().all(|b| b.is_ascii_lowercase()), "{w}");
        }
    }

    #[test]
    fn fill_writes_whole_lines_with_about_eight_words() {
        let mut g = CorpusGenerator::new(3);
        let out = corpus(&mut g, 1_000_000);
        assert!(out.len() >= 1_000_000 && out.len() < 1_000_000 + 200);
        assert_eq!(out.last(), Some(&b'\n'));

        let mut again = Vec::new();
        let (lines, words) = CorpusGenerator::new(3).fill(1_000_000, &mut again).unwrap();
        assert_eq!(again, out);
        let text = std::str::from_utf8(&out).unwrap();
        assert_eq!(text.lines().count() as u64, lines);
        let counted: usize = text.lines().map(|l| l.split(' ').count()).sum();
        assert_eq!(counted as u64, words);
        for line in text.lines() {
            assert!((4..=12).contains(&line.split(' ').count()), "{line}");
        }
        let mean = words as f64 / lines as f64;
        assert!((7.8..8.2).contains(&mean), "mean words per line {mean}");
    }

    #[test]
    fn words_follow_zipf() {
        let mut g = CorpusGenerator::new(11);
        let index: std::collections::HashMap<String, usize> = g
            .vocabulary()
            .iter()
            .enumerate()
            .map(|(i, w)| (w.clone(), i))
            .collect();
        let mut counts = vec![0u32; g.vocabulary().len()];
        let draws = 500_000;
        for _ in 0..draws {
            counts[index[g.next_word()]] += 1;
        }
        // P(rank 1) = 1 / H(50,000) ≈ 1 / 11.397 ≈ 0.0877.
        let top = f64::from(counts[0]) / draws as f64;
        assert!((0.083..0.093).contains(&top), "top word share {top}");
        // Rank 2 is drawn about half as often as rank 1.
        let ratio = f64::from(counts[1]) / f64::from(counts[0]);
        assert!((0.45..0.55).contains(&ratio), "rank 2 / rank 1 = {ratio}");
        let mut sorted = counts.clone();
        sorted.sort_unstable_by(|a, b| b.cmp(a));
        let median = sorted[sorted.len() / 2].max(1);
        assert!(
            sorted[0] > 1000 * median,
            "top {} median {median}",
            sorted[0]
        );
    }

    #[test]
    fn exponent_zero_is_uniform_and_bad_parameters_are_rejected() {
        let mut g = CorpusGenerator::new(5)
            .with_vocabulary(10)
            .unwrap()
            .with_exponent(0.0)
            .unwrap();
        let mut counts = [0u32; 10];
        for _ in 0..100_000 {
            let w = g.next_word().to_owned();
            let i = g.vocabulary().iter().position(|v| *v == w).unwrap();
            counts[i] += 1;
        }
        assert!(
            counts.iter().all(|&c| (9_000..11_000).contains(&c)),
            "{counts:?}"
        );

        let g = || CorpusGenerator::new(5).with_vocabulary(10).unwrap();
        assert_eq!(
            g().with_vocabulary(0).unwrap_err(),
            GenError::EmptyVocabulary
        );
        assert!(g().with_vocabulary(MAX_VOCABULARY + 1).is_err());
        assert!(g().with_exponent(-1.0).is_err());
        assert!(g().with_exponent(f64::NAN).is_err());
    }
}
