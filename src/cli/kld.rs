//! The KL-divergence base file of `ferrite perplexity --kl-divergence-base`.
//!
//! Little-endian, written and read as a stream (memory stays bounded by one
//! vocabulary row):
//!
//! | offset | type | field |
//! |---|---|---|
//! | 0 | `[u8; 8]` | magic `"FRTKLD\0\0"` |
//! | 8 | u32 | version (1) |
//! | 12 | u32 | `vocab`: logits per position |
//! | 16 | u32 | `ctx`: window size |
//! | 20 | u32 | `score`: 0 all, 1 second-half |
//! | 24 | u64 | `n_tokens`: tokens of the text |
//! | 32 | u64 | `n_scored`: scored positions |
//! | 40 | `[u32; n_tokens]` | the text's token ids |
//! | … | `[[f32; vocab]; n_scored]` | log-softmax of each scored position's logits, in order |
//!
//! The token ids let a comparison detect a different text or tokenizer;
//! `ctx` and `score` a different choice of positions.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use ferrite_runtime::eval::{self, Score};

use super::CliResult;

const MAGIC: [u8; 8] = *b"FRTKLD\0\0";
const VERSION: u32 = 1;
const HEADER: u64 = 40;

fn score_code(score: Score) -> u32 {
    match score {
        Score::All => 0,
        Score::SecondHalf => 1,
    }
}

fn score_name(code: u32) -> &'static str {
    match code {
        0 => "all",
        1 => "second-half",
        _ => "unknown",
    }
}

/// Writes a base file position by position.
pub struct BaseWriter {
    out: BufWriter<File>,
    path: PathBuf,
    row: Vec<f32>,
    bytes: Vec<u8>,
    written: u64,
    expected: u64,
}

impl BaseWriter {
    /// Creates `path` and writes the header and token ids.
    pub fn create(path: &Path, vocab: usize, ctx: usize, score: Score, tokens: &[u32]) -> CliResult<Self> {
        let err = |e: std::io::Error| format!("{}: {e}", path.display());
        let mut out = BufWriter::with_capacity(1 << 20, File::create(path).map_err(err)?);
        let expected = score.scored(tokens.len(), ctx) as u64;
        let mut head = Vec::with_capacity(HEADER as usize + tokens.len() * 4);
        head.extend_from_slice(&MAGIC);
        for v in [VERSION, vocab as u32, ctx as u32, score_code(score)] {
            head.extend_from_slice(&v.to_le_bytes());
        }
        head.extend_from_slice(&(tokens.len() as u64).to_le_bytes());
        head.extend_from_slice(&expected.to_le_bytes());
        for &t in tokens {
            head.extend_from_slice(&t.to_le_bytes());
        }
        out.write_all(&head).map_err(err)?;
        Ok(BaseWriter {
            out,
            path: path.to_path_buf(),
            row: vec![0.0; vocab],
            bytes: vec![0; vocab * 4],
            written: 0,
            expected,
        })
    }

    /// Appends one scored position's log-probabilities.
    pub fn push(&mut self, logits: &[f32]) -> std::io::Result<()> {
        eval::log_softmax(logits, &mut self.row);
        for (b, v) in self.bytes.chunks_exact_mut(4).zip(&self.row) {
            b.copy_from_slice(&v.to_le_bytes());
        }
        self.written += 1;
        self.out.write_all(&self.bytes)
    }

    /// Flushes; checks that every expected position was written.
    pub fn finish(mut self) -> CliResult<()> {
        self.out.flush().map_err(|e| format!("{}: {e}", self.path.display()))?;
        if self.written != self.expected {
            return Err(format!(
                "{}: wrote {} positions, expected {}",
                self.path.display(),
                self.written,
                self.expected
            )
            .into());
        }
        Ok(())
    }
}

/// Reads a base file position by position, after checking that it was
/// made from the same tokens, window size, scoring and vocabulary.
pub struct BaseReader {
    input: BufReader<File>,
    row: Vec<f32>,
    bytes: Vec<u8>,
}

impl BaseReader {
    /// Opens `path` and checks it against this run's parameters.
    pub fn open(path: &Path, vocab: usize, ctx: usize, score: Score, tokens: &[u32]) -> CliResult<Self> {
        let p = path.display();
        let file = File::open(path).map_err(|e| format!("{p}: {e}"))?;
        let len = file.metadata().map_err(|e| format!("{p}: {e}"))?.len();
        let mut input = BufReader::with_capacity(1 << 20, file);
        let mut head = [0u8; HEADER as usize];
        input.read_exact(&mut head).map_err(|_| format!("{p}: not a KL-divergence base file (too short)"))?;
        if head[..8] != MAGIC {
            return Err(format!("{p}: not a KL-divergence base file (written by --kl-divergence-base)").into());
        }
        let u32_at = |o: usize| u32::from_le_bytes([head[o], head[o + 1], head[o + 2], head[o + 3]]);
        let u64_at = |o: usize| u64::from(u32_at(o)) | (u64::from(u32_at(o + 4)) << 32);
        let (version, base_vocab, base_ctx, base_score) = (u32_at(8), u32_at(12), u32_at(16), u32_at(20));
        let (n_tokens, n_scored) = (u64_at(24), u64_at(32));
        if version != VERSION {
            return Err(format!("{p}: base file version {version}, this ferrite reads {VERSION}").into());
        }
        if base_vocab as usize != vocab {
            return Err(format!("{p}: the base model has {base_vocab} logits per token, this model {vocab}").into());
        }
        if base_ctx as usize != ctx || base_score != score_code(score) {
            return Err(format!(
                "{p}: the base was computed with --ctx {base_ctx} --score {}, this run uses --ctx {ctx} --score {}",
                score_name(base_score),
                score_name(score_code(score))
            )
            .into());
        }
        if n_tokens != tokens.len() as u64 {
            return Err(format!(
                "{p}: the base text has {n_tokens} tokens, this one {} (a different text or tokenizer)",
                tokens.len()
            )
            .into());
        }
        let mut ids = vec![0u8; tokens.len() * 4];
        input.read_exact(&mut ids).map_err(|_| format!("{p}: truncated in the token ids"))?;
        for (i, (chunk, &t)) in ids.chunks_exact(4).zip(tokens).enumerate() {
            let base = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            if base != t {
                return Err(format!(
                    "{p}: token {i} differs (base {base}, this run {t}): a different text or tokenizer"
                )
                .into());
            }
        }
        let expected_scored = score.scored(tokens.len(), ctx) as u64;
        let expected_len = (n_tokens * 4)
            .checked_add(HEADER)
            .and_then(|h| expected_scored.checked_mul(vocab as u64 * 4)?.checked_add(h));
        if n_scored != expected_scored || Some(len) != expected_len {
            return Err(format!(
                "{p}: {len} bytes for {n_scored} positions; expected {} positions in {} bytes (truncated or damaged)",
                expected_scored,
                expected_len.unwrap_or(u64::MAX)
            )
            .into());
        }
        Ok(BaseReader { input, row: vec![0.0; vocab], bytes: vec![0; vocab * 4] })
    }

    /// The next position's log-probabilities.
    pub fn next_row(&mut self) -> std::io::Result<&[f32]> {
        self.input.read_exact(&mut self.bytes)?;
        for (v, b) in self.row.iter_mut().zip(self.bytes.chunks_exact(4)) {
            *v = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
        Ok(&self.row)
    }
}

/// Running totals of a comparison.
#[derive(Default)]
pub struct Totals {
    /// Per-position KL divergence, for percentiles.
    pub kld: Vec<f32>,
    /// Sum of the KL divergences (f64).
    pub kld_sum: f64,
    /// Positions where the top tokens agree.
    pub same_top: usize,
    /// The base model's summed NLL of the targets.
    pub base_nll_sum: f64,
}

impl Totals {
    /// Adds one position.
    pub fn add(&mut self, base_log_probs: &[f32], logits: &[f32], target: u32) {
        let d = eval::divergence(base_log_probs, logits);
        self.kld.push(d.kld as f32);
        self.kld_sum += d.kld;
        self.same_top += d.same_top as usize;
        self.base_nll_sum -= base_log_probs.get(target as usize).copied().unwrap_or(f32::NEG_INFINITY) as f64;
    }

    /// Mean KL divergence.
    pub fn mean(&self) -> f64 {
        self.kld_sum / self.kld.len().max(1) as f64
    }

    /// Percentile `fraction` of the KL divergences, interpolated linearly
    /// between neighbours of the sorted values at `fraction * (n - 1)` (as
    /// llama-perplexity reports them).
    pub fn percentile(&self, fraction: f64) -> f64 {
        let mut v = self.kld.clone();
        v.sort_by(f32::total_cmp);
        percentile_of_sorted(&v, fraction)
    }
}

fn percentile_of_sorted(v: &[f32], fraction: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    let p = fraction.clamp(0.0, 1.0) * (v.len() - 1) as f64;
    let i = p as usize;
    let t = p - i as f64;
    (1.0 - t) * v[i] as f64 + t * v[(i + 1).min(v.len() - 1)] as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate_like_llama_perplexity() {
        let v: Vec<f32> = (0..101).map(|i| i as f32).collect();
        assert_eq!(percentile_of_sorted(&v, 0.99), 99.0);
        let v = [0.0f32, 10.0];
        assert!((percentile_of_sorted(&v, 0.99) - 9.9).abs() < 1e-9);
        assert_eq!(percentile_of_sorted(&[3.0], 0.99), 3.0);
        assert_eq!(percentile_of_sorted(&[], 0.99), 0.0);
    }

    #[test]
    fn base_file_round_trip_and_mismatches() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("base.kld");
        let tokens: Vec<u32> = (0..10).collect();
        let (vocab, ctx) = (5, 4);
        let mut w = BaseWriter::create(&path, vocab, ctx, Score::SecondHalf, &tokens).unwrap();
        let n = Score::SecondHalf.scored(tokens.len(), ctx);
        assert_eq!(n, 2);
        for i in 0..n {
            w.push(&[i as f32, 0.0, 1.0, 2.0, 3.0]).unwrap();
        }
        w.finish().unwrap();
        let mut r = BaseReader::open(&path, vocab, ctx, Score::SecondHalf, &tokens).unwrap();
        let row = r.next_row().unwrap().to_vec();
        let mut want = [0f32; 5];
        eval::log_softmax(&[0.0, 0.0, 1.0, 2.0, 3.0], &mut want);
        assert_eq!(row, want);
        let msg = |r: CliResult<BaseReader>| r.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg(BaseReader::open(&path, 6, ctx, Score::SecondHalf, &tokens)).contains("logits per token"));
        assert!(msg(BaseReader::open(&path, vocab, 8, Score::SecondHalf, &tokens)).contains("--ctx 4"));
        assert!(msg(BaseReader::open(&path, vocab, ctx, Score::All, &tokens)).contains("--score second-half"));
        assert!(msg(BaseReader::open(&path, vocab, ctx, Score::SecondHalf, &tokens[..9])).contains("different text"));
        let mut other = tokens.clone();
        other[7] = 99;
        assert!(msg(BaseReader::open(&path, vocab, ctx, Score::SecondHalf, &other)).contains("token 7 differs"));
        // Truncated.
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        assert!(msg(BaseReader::open(&path, vocab, ctx, Score::SecondHalf, &tokens)).contains("truncated"));
        std::fs::write(&path, b"hello").unwrap();
        assert!(msg(BaseReader::open(&path, vocab, ctx, Score::SecondHalf, &tokens)).contains("not a KL"));
        // A writer that gets too few positions says so.
        let w = BaseWriter::create(&path, vocab, ctx, Score::SecondHalf, &tokens).unwrap();
        assert!(w.finish().is_err());
    }
}
