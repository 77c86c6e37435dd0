//! Quantization of weight rows, as the converter does it: the per-group
//! scale searches (least squared error) of q8, q4 and the asymmetric q4a
//! (and, with levels `0..=31`, q5_1), the K-quant super-blocks
//! (`quantize/kquant.rs`), and the logical-row dequantizers the tests and
//! tools compare against.
//!
//! Only the converter (and tests) call these; the runtime reads the tiled
//! planes through [`crate::reference`]. Layouts are those of
//! [`ferrite_format::quant`].

use ferrite_format::quant::{self, GROUP, Q4_GROUP_BYTES, Q8_GROUP_BYTES};
use half::f16;

mod kquant;
pub use kquant::{quantize_super_affine, quantize_super_q6k, AffineSuper, Q6Super};

/// Quantizes one row of `src.len()` values to q8: `qs` receives
/// `groups * 32` bytes (zero-padded tail), `scales` one f16 per group.
///
/// Each group's scale is searched (see [`quantize_group_symmetric`]) to
/// minimise the group's squared error, starting from `max|x| / 127`, which
/// it never does worse than. Values are `round(x / scale)` clamped to
/// -127..=127, so every value inside the scale's range is within `scale / 2`.
///
/// # Panics
/// If `qs` or `scales` is shorter than the row needs.
pub fn quantize_row_q8(src: &[f32], qs: &mut [u8], scales: &mut [f16]) {
    let mut q = [0i8; GROUP];
    for (g, chunk) in src.chunks(GROUP).enumerate() {
        let amax = chunk.iter().fold(0.0f32, |m, &x| m.max(x.abs()));
        scales[g] = quantize_group_symmetric(chunk, -127, 127, f16::from_f32(amax / 127.0), &mut q);
        for (o, &v) in qs[g * Q8_GROUP_BYTES..(g + 1) * Q8_GROUP_BYTES].iter_mut().zip(&q) {
            *o = v as u8;
        }
    }
}

/// Quantizes one row to q4 (symmetric, 16 levels -8..=7). Each group's
/// scale is searched (see [`quantize_group_symmetric`]) to minimise the
/// group's squared error, over both signs (the value of largest magnitude
/// may land on -8 or on +7) and over a range of steps around `max|x| / 8`;
/// the old rule `m / -8` (`m` the value of largest magnitude) is one of the
/// candidates, so the error is never larger than with it. Values are
/// `round(x / scale)` clamped to -8..=7: every value inside the scale's range
/// is within `|scale| / 2`.
///
/// # Panics
/// If `qs` or `scales` is shorter than the row needs.
pub fn quantize_row_q4(src: &[f32], qs: &mut [u8], scales: &mut [f16]) {
    let mut q = [0i8; GROUP];
    for (g, chunk) in src.chunks(GROUP).enumerate() {
        let m = chunk.iter().fold(0.0f32, |m, &x| if x.abs() > m.abs() { x } else { m });
        scales[g] = quantize_group_symmetric(chunk, -8, 7, f16::from_f32(m / -8.0), &mut q);
        quant::q4_pack(&q, &mut qs[g * Q4_GROUP_BYTES..(g + 1) * Q4_GROUP_BYTES]);
    }
}

/// Dequantizes one q8 row into `dst` (`dst.len()` real elements).
pub fn dequantize_row_q8(qs: &[u8], scales: &[f16], dst: &mut [f32]) {
    for (g, chunk) in dst.chunks_mut(GROUP).enumerate() {
        let d = scales[g].to_f32();
        let q = &qs[g * Q8_GROUP_BYTES..];
        for (j, o) in chunk.iter_mut().enumerate() {
            *o = q[j] as i8 as f32 * d;
        }
    }
}

/// Dequantizes one q4 row into `dst` (`dst.len()` real elements).
pub fn dequantize_row_q4(qs: &[u8], scales: &[f16], dst: &mut [f32]) {
    let mut full = [0f32; GROUP];
    for (g, chunk) in dst.chunks_mut(GROUP).enumerate() {
        let d = scales[g].to_f32();
        let q = &qs[g * Q4_GROUP_BYTES..(g + 1) * Q4_GROUP_BYTES];
        let (lo, hi) = full.split_at_mut(GROUP / 2);
        for ((l, h), &b) in lo.iter_mut().zip(hi.iter_mut()).zip(q) {
            *l = ((b & 0x0F) as i32 - 8) as f32 * d;
            *h = ((b >> 4) as i32 - 8) as f32 * d;
        }
        chunk.copy_from_slice(&full[..chunk.len()]);
    }
}

/// Rounds `v` clamped to `lo..=hi` (integers) to the nearest integer, ties
/// away from zero.
#[inline]
fn round_clamped(v: f32, lo: f32, hi: f32) -> f32 {
    libm::roundf(v.max(lo).min(hi))
}

/// `v` clamped to `lo..=hi` (|bounds| < 2^22) and rounded to the nearest
/// integer, ties to even: the float-add trick, which vectorizes (the
/// candidate search only needs some nearest level).
#[inline]
fn round_fast(v: f32, lo: f32, hi: f32) -> f32 {
    const MAGIC: f32 = 12_582_912.0; // 1.5 * 2^23
                                     // Comparisons rather than f32::max/min (whose NaN rules block
                                     // vectorization); a NaN `v` only makes a candidate's score NaN.
    let c = if v > hi { hi } else { v };
    let c = if c < lo { lo } else { c };
    (c + MAGIC) - MAGIC
}

/// Squared error of `x` against `q[j] * d` (f32 products, as the
/// dequantizers compute them; summed in f64).
fn sse_symmetric(x: &[f32], q: &[i8], d: f16) -> f64 {
    let d = d.to_f32();
    x.iter()
        .zip(q)
        .map(|(&x, &q)| {
            let e = x as f64 - (q as f32 * d) as f64;
            e * e
        })
        .sum()
}

/// Fills `q` with the nearest levels `lo..=hi` for scale `d` (0 beyond
/// `x.len()`, and everywhere when `d` is 0 or not finite).
fn levels_symmetric(x: &[f32], lo: i32, hi: i32, d: f16, q: &mut [i8; GROUP]) {
    let d = d.to_f32();
    let inv = if d != 0.0 && d.is_finite() { 1.0 / d } else { 0.0 };
    for (j, v) in q.iter_mut().enumerate() {
        let x = x.get(j).copied().unwrap_or(0.0);
        *v = round_clamped(x * inv, lo as f32, hi as f32) as i8;
    }
}

/// Quantizes one group (`x.len() <= 32` values; the rest of `q` is zero
/// padding) to signed levels `lo..=hi` with one f16 scale, searching for the
/// scale with the least squared error, and returns it.
///
/// Candidates: `baseline` itself (the caller's closed-form rule, so the
/// result is never worse than it), then for both signs of the scale (the
/// value `m` of largest magnitude near `lo` or near `hi`) the steps that map
/// `m` to `t` for `t` from half a level beyond the end of the range to 1.5
/// levels inside it, in tenths of a level (fifths for ranges of 64 levels or
/// more). Each candidate's levels are
/// refitted by least squares (`d = Σxq / Σq²`, the best scale for those
/// levels); the best refit is rounded to f16, the levels recomputed for it,
/// refitted once more, and the exact squared error (with the f16 scale, as
/// the dequantizer computes it) decides between these and the baseline.
pub fn quantize_group_symmetric(x: &[f32], lo: i32, hi: i32, baseline: f16, q: &mut [i8; GROUP]) -> f16 {
    levels_symmetric(x, lo, hi, baseline, q);
    let mut best = (sse_symmetric(x, q, baseline), baseline);
    let Some(mut d) = symmetric_search(x, lo, hi) else { return best.1 };
    let mut cand = [0i8; GROUP];
    for _ in 0..2 {
        let dh = f16::from_f32(d);
        if !dh.is_finite() || dh.to_f32() == 0.0 {
            break;
        }
        levels_symmetric(x, lo, hi, dh, &mut cand);
        let sse = sse_symmetric(x, &cand, dh);
        if sse < best.0 {
            best = (sse, dh);
            *q = cand;
        }
        let (sxq, sqq) = x.iter().zip(&cand).fold((0.0f32, 0.0f32), |(a, b), (&v, &l)| {
            let l = l as f32;
            (a + v * l, b + l * l)
        });
        if sqq == 0.0 {
            break;
        }
        d = sxq / sqq;
    }
    best.1
}

/// The candidate search of [`quantize_group_symmetric`] before any f16
/// rounding: the least-squares scale (f32) of the best candidate's levels
/// for `x` (at most 32 values, levels `lo..=hi`), or `None` when `x` is all
/// zero or not finite. The K-quant sub-block fits start from it.
pub(crate) fn symmetric_search(x: &[f32], lo: i32, hi: i32) -> Option<f32> {
    let m = x.iter().fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
    if m == 0.0 || !m.is_finite() {
        return None;
    }
    let (lo_f, hi_f) = (lo as f32, hi as f32);
    // Zero-padded to a whole group: padding adds nothing to the sums below,
    // and the fixed length lets the compiler vectorize the candidate loop.
    let mut padded = [0.0f32; GROUP];
    padded[..x.len()].copy_from_slice(x);
    // (score, refitted scale): score = (Σxq)² / Σq², the error reduction of
    // the least-squares scale for those levels; larger is better.
    let mut refit: Option<(f32, f32)> = None;
    for end in [lo_f, hi_f] {
        if end == 0.0 {
            continue;
        }
        for step in -5..=15 {
            // `t` runs from half a level outside the range to 1.5 inside,
            // in tenths of a level; with many levels (q8) in fifths, whose
            // gain is the same.
            if hi >= 64 && step % 2 != 0 {
                continue;
            }
            let t = end - end.signum() * step as f32 * 0.1;
            let iscale = t / m;
            // Eight lanes of partial sums, so the loop vectorizes.
            let (mut lanes_xq, mut lanes_qq) = ([0.0f32; 8], [0.0f32; 8]);
            for part in padded.chunks_exact(8) {
                for l in 0..8 {
                    let v = part[l];
                    let q = round_fast(v * iscale, lo_f, hi_f);
                    lanes_xq[l] += v * q;
                    lanes_qq[l] += q * q;
                }
            }
            let (sxq, sqq): (f32, f32) = (lanes_xq.iter().sum(), lanes_qq.iter().sum());
            if sqq > 0.0 {
                let score = sxq * sxq / sqq;
                if refit.is_none_or(|(s, _)| score > s) {
                    refit = Some((score, sxq / sqq));
                }
            }
        }
        if -lo == hi {
            break; // A symmetric range: the sign of the scale does not matter.
        }
    }
    refit.map(|(_, d)| d)
}

/// Squared error of `x` against `u[j] * d + m` (f32 arithmetic, as
/// [`dequantize_row_q4a`] computes it; summed in f64).
fn sse_q4a(x: &[f32], u: &[u8], d: f16, m: f16) -> f64 {
    let (d, m) = (d.to_f32(), m.to_f32());
    x.iter()
        .zip(u)
        .map(|(&x, &u)| {
            let e = x as f64 - (u as f32 * d + m) as f64;
            e * e
        })
        .sum()
}

/// Nearest levels 0..=top for `u * d + m` (0 beyond `x.len()`; all 0 when
/// `d` is 0 or not finite).
fn levels_affine(x: &[f32], top: f32, d: f16, m: f16, u: &mut [u8; GROUP]) {
    let (d, m) = (d.to_f32(), m.to_f32());
    let inv = if d != 0.0 && d.is_finite() { 1.0 / d } else { 0.0 };
    for (j, v) in u.iter_mut().enumerate() {
        *v = match x.get(j) {
            Some(&x) => round_clamped((x - m) * inv, 0.0, top) as u8,
            None => 0,
        };
    }
}

/// Quantizes one group (`x.len() <= 32` values; the rest of `u` is zero
/// padding) to q4a: unsigned levels 0..=15 with an f16 scale `d` and an f16
/// minimum `m`, value `u * d + m`. Returns `(d, m)`.
///
/// Starts from the group's range (`m = min`, `d = (max - min) / 15`, which
/// is itself a candidate, so the result is never worse than it) and from
/// narrower steps (`(max - min) / (15 + k/2)`, `k` in 1..=4, centred), then
/// alternates: levels for `(d, m)`, then the least-squares `(d, m)` for those
/// levels (linear regression of `x` on the levels), three rounds each; the
/// exact squared error with f16 `d` and `m` decides.
pub fn quantize_group_q4a(x: &[f32], u: &mut [u8; GROUP]) -> (f16, f16) {
    quantize_group_affine(x, 15, u)
}

/// [`quantize_group_q4a`] for levels `0..=top` (15: q4a; 31: q5_1).
pub fn quantize_group_affine(x: &[f32], top: u8, u: &mut [u8; GROUP]) -> (f16, f16) {
    let top_f = top as f32;
    let (min, max) = x.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
    if x.is_empty() || max.partial_cmp(&min) != Some(core::cmp::Ordering::Greater) || !(max - min).is_finite() {
        let m = if x.is_empty() || !min.is_finite() { f16::ZERO } else { f16::from_f32(min) };
        *u = [0; GROUP];
        return (f16::ZERO, m);
    }
    let (d0, m0) = (f16::from_f32((max - min) / top_f), f16::from_f32(min));
    levels_affine(x, top_f, d0, m0, u);
    let mut best = (sse_q4a(x, u, d0, m0), d0, m0);
    let n = x.len() as f32;
    let mut cand = [0u8; GROUP];
    for k in 0..=4 {
        let range = max - min;
        let steps = top_f + k as f32 * 0.5;
        let (mut d, mut m) = (range / steps, min - (steps - top_f) * 0.5 * range / steps);
        for _ in 0..3 {
            let (dh, mh) = (f16::from_f32(d), f16::from_f32(m));
            if dh.to_f32().partial_cmp(&0.0) != Some(core::cmp::Ordering::Greater) || !dh.is_finite() || !mh.is_finite()
            {
                break;
            }
            levels_affine(x, top_f, dh, mh, &mut cand);
            let sse = sse_q4a(x, &cand, dh, mh);
            if sse < best.0 {
                best = (sse, dh, mh);
                *u = cand;
            }
            // Least squares of x ≈ d·u + m over the real elements.
            let (mut su, mut suu, mut sx, mut sux) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
            for (&v, &l) in x.iter().zip(&cand) {
                let (v, l) = (v as f64, l as f64);
                su += l;
                suu += l * l;
                sx += v;
                sux += l * v;
            }
            let det = n as f64 * suu - su * su;
            if det <= 0.0 {
                break;
            }
            let dn = (n as f64 * sux - su * sx) / det;
            if dn <= 0.0 {
                break;
            }
            d = dn as f32;
            m = ((sx - dn * su) / n as f64) as f32;
        }
    }
    (best.1, best.2)
}

/// Quantizes one row to q4a (see [`quantize_group_q4a`]): `qs` receives
/// `groups * 16` bytes (zero-padded tail), `scales` and `mins` one f16 per
/// group.
///
/// # Panics
/// If `qs`, `scales` or `mins` is shorter than the row needs.
pub fn quantize_row_q4a(src: &[f32], qs: &mut [u8], scales: &mut [f16], mins: &mut [f16]) {
    let mut u = [0u8; GROUP];
    for (g, chunk) in src.chunks(GROUP).enumerate() {
        let (d, m) = quantize_group_q4a(chunk, &mut u);
        scales[g] = d;
        mins[g] = m;
        quant::q4a_pack(&u, &mut qs[g * Q4_GROUP_BYTES..(g + 1) * Q4_GROUP_BYTES]);
    }
}

/// Dequantizes one q4a row into `dst` (`dst.len()` real elements):
/// `u * scale + min`.
pub fn dequantize_row_q4a(qs: &[u8], scales: &[f16], mins: &[f16], dst: &mut [f32]) {
    let mut full = [0f32; GROUP];
    for (g, chunk) in dst.chunks_mut(GROUP).enumerate() {
        let (d, m) = (scales[g].to_f32(), mins[g].to_f32());
        let q = &qs[g * Q4_GROUP_BYTES..(g + 1) * Q4_GROUP_BYTES];
        let (lo, hi) = full.split_at_mut(GROUP / 2);
        for ((l, h), &b) in lo.iter_mut().zip(hi.iter_mut()).zip(q) {
            *l = (b & 0x0F) as f32 * d + m;
            *h = (b >> 4) as f32 * d + m;
        }
        chunk.copy_from_slice(&full[..chunk.len()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn check(len: usize, seed: u64, q4: bool) {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        let src: Vec<f32> = (0..len)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 8.0
            })
            .collect();
        let groups = len.div_ceil(GROUP);
        let mut qs = vec![0u8; groups * if q4 { 16 } else { 32 }];
        let mut scales = vec![f16::ZERO; groups];
        let mut back = vec![0f32; len];
        super::tests::round_trip(&src, q4, &mut qs, &mut scales, &mut back);
        let (lo, hi) = if q4 { (-8.0f32, 7.0f32) } else { (-127.0, 127.0) };
        for (g, chunk) in src.chunks(GROUP).enumerate() {
            let d = scales[g].to_f32();
            let got = &back[g * GROUP..g * GROUP + chunk.len()];
            // The searched scale is never worse than the closed-form one.
            let sse: f64 = chunk.iter().zip(got).map(|(&x, &y)| (x as f64 - y as f64).powi(2)).sum();
            let base = baseline_sse(chunk, q4);
            // (1e-12 relative: Miri perturbs float results by an ulp.)
            assert!(sse <= base * (1.0 + 1e-12), "group {g}: searched SSE {sse} > closed-form {base}");
            for (j, (&x, &y)) in chunk.iter().zip(got).enumerate() {
                // Values inside the scale's range are within half a step
                // (plus the f32 product's rounding); clipped ones within the
                // group's total error.
                let level = if d != 0.0 { x / d } else { 0.0 };
                let bound = if level >= lo - 0.5 && level <= hi + 0.5 { d.abs() * 0.5 } else { base.sqrt() as f32 };
                assert!((x - y).abs() <= bound * (1.0 + 1e-5) + 1e-7, "elem {}: {x} vs {y}, scale {d}", g * GROUP + j);
            }
        }
        // Padding quants are exactly zero.
        if len % GROUP != 0 {
            let pad = vec![0f32; GROUP - len % GROUP];
            let mut full = vec![0f32; groups * GROUP];
            if q4 {
                dequantize_row_q4(&qs, &scales, &mut full);
            } else {
                dequantize_row_q8(&qs, &scales, &mut full);
            }
            assert_eq!(&full[len..], &pad[..]);
        }
    }

    /// `src` quantized to q4 (`q4`) or q8 into `qs`/`scales`, then
    /// dequantized into `back`.
    pub(super) fn round_trip(src: &[f32], q4: bool, qs: &mut [u8], scales: &mut [f16], back: &mut [f32]) {
        if q4 {
            quantize_row_q4(src, qs, scales);
            dequantize_row_q4(qs, scales, back);
        } else {
            quantize_row_q8(src, qs, scales);
            dequantize_row_q8(qs, scales, back);
        }
    }

    /// Squared error of the closed-form rules the search starts from: q8
    /// `max|x| / 127`, q4 `m / -8` (`m` the value of largest magnitude).
    pub(super) fn baseline_sse(x: &[f32], q4: bool) -> f64 {
        let (d, lo, hi) = if q4 {
            let m = x.iter().fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
            (f16::from_f32(m / -8.0).to_f32(), -8.0, 7.0)
        } else {
            (f16::from_f32(x.iter().fold(0.0f32, |m, &v| m.max(v.abs())) / 127.0).to_f32(), -127.0, 127.0)
        };
        let inv = if d != 0.0 { 1.0 / d } else { 0.0 };
        x.iter().map(|&v| (v as f64 - (libm::roundf(v * inv).clamp(lo, hi) * d) as f64).powi(2)).sum()
    }

    /// 256 cases per property; under Miri (`scripts/miri.sh`) 24, since
    /// every case is interpreted about a thousand times slower, and no
    /// failure file (Miri's isolation forbids file access; a failing case
    /// is printed either way).
    pub(super) fn proptest_config() -> ProptestConfig {
        let mut config = ProptestConfig::default();
        if cfg!(miri) {
            config.cases = 24;
            config.failure_persistence = None;
        }
        config
    }

    proptest! {
        #![proptest_config(proptest_config())]

        #[test]
        fn q8_roundtrip_within_half_step(len in 0usize..200, seed in any::<u64>()) { check(len, seed, false) }
        #[test]
        fn q4_roundtrip_within_half_step(len in 0usize..200, seed in any::<u64>()) { check(len, seed, true) }
    }

    #[test]
    fn zero_group_has_zero_scale() {
        let mut qs = [0xFFu8; 16];
        let mut sc = [f16::ONE];
        quantize_row_q4(&[0.0; 32], &mut qs, &mut sc);
        assert_eq!(sc[0], f16::ZERO);
        assert!(qs.iter().all(|&b| b == 0x88));
    }
}

/// The squared-error searches and the asymmetric q4a type. Safe float code
/// only, and thousands of searches per property: not run under Miri
/// (`scripts/miri.sh`), which checks the unsafe code; `q4a_roundtrip`
/// failed there (2026-11-28) and is still to be understood.
#[cfg(all(test, not(miri)))]
mod search_tests {
    use super::*;
    use crate::{Matrix, Weights};
    use proptest::prelude::*;

    /// Draws `n` values of one of several shapes: uniform, roughly normal
    /// (sum of four uniforms), normal with one large outlier, all positive
    /// (the case an asymmetric type exists for), or a few distinct values.
    fn group(n: usize, kind: u8, seed: u64, scale: f32) -> Vec<f32> {
        let mut s = seed | 1;
        let mut unit = move || {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        };
        let mut v: Vec<f32> = (0..n)
            .map(|_| match kind % 5 {
                0 => unit(),
                1 | 2 => unit() + unit() + unit() + unit(),
                3 => unit() + 0.6,
                _ => (unit() * 6.0).round() / 6.0,
            })
            .map(|x| x * scale)
            .collect();
        if kind % 5 == 2 && n > 0 {
            v[(seed as usize) % n] *= 6.0;
        }
        v
    }

    fn sse(a: &[f32], b: &[f32]) -> f64 {
        a.iter().zip(b).map(|(&x, &y)| (x as f64 - y as f64).powi(2)).sum()
    }

    /// Squared error of llama.cpp-style Q4_1 rounding, `m = min`,
    /// `d = (max - min) / 15`, both f16.
    fn minmax_sse(x: &[f32]) -> f64 {
        let (min, max) = x.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
        let (d, m) = (f16::from_f32((max - min) / 15.0).to_f32(), f16::from_f32(min).to_f32());
        let inv = if d != 0.0 { 1.0 / d } else { 0.0 };
        x.iter().map(|&v| (v as f64 - (libm::roundf((v - m) * inv).clamp(0.0, 15.0) * d + m) as f64).powi(2)).sum()
    }

    fn roundtrip_q4a(src: &[f32]) -> (Vec<f32>, Vec<u8>, Vec<f16>, Vec<f16>) {
        let groups = src.len().div_ceil(GROUP);
        let (mut qs, mut scales, mut mins) =
            (vec![0xAAu8; groups * 16], vec![f16::NAN; groups], vec![f16::NAN; groups]);
        quantize_row_q4a(src, &mut qs, &mut scales, &mut mins);
        let mut back = vec![f32::NAN; src.len()];
        dequantize_row_q4a(&qs, &scales, &mins, &mut back);
        (back, qs, scales, mins)
    }

    proptest! {
        #![proptest_config(super::tests::proptest_config())]

        /// The searched q4 and q8 scales are never worse (squared error)
        /// than the closed-form ones, on groups of every shape; and on
        /// normal-like groups the q4 search gains on average.
        #[test]
        fn searched_scales_never_lose_to_closed_form(
            n in 1usize..=32, kind in 0u8..5, seed in any::<u64>(), scale in 1e-3f32..10.0,
        ) {
            let x = group(n, kind, seed, scale);
            for q4 in [true, false] {
                let mut qs = [0u8; 32];
                let mut sc = [f16::ZERO];
                let mut back = vec![0f32; n];
                super::tests::round_trip(&x, q4, &mut qs, &mut sc, &mut back);
                let base = super::tests::baseline_sse(&x, q4);
                prop_assert!(sse(&x, &back) <= base, "q4 {}: {} > {}", q4, sse(&x, &back), base);
            }
        }

        /// q4a round trip: padding quants zero, values inside the range
        /// within half a step, and the squared error never above the
        /// min/max rule's.
        #[test]
        fn q4a_roundtrip(len in 0usize..200, kind in 0u8..5, seed in any::<u64>(), scale in 1e-3f32..10.0) {
            let src = group(len, kind, seed, scale);
            let (back, qs, scales, mins) = roundtrip_q4a(&src);
            for (g, chunk) in src.chunks(GROUP).enumerate() {
                let (d, m) = (scales[g].to_f32(), mins[g].to_f32());
                prop_assert!(d >= 0.0 && d.is_finite() && m.is_finite());
                let got = &back[g * GROUP..g * GROUP + chunk.len()];
                let base = minmax_sse(chunk);
                prop_assert!(sse(chunk, got) <= base * (1.0 + 1e-12), "group {}: {} > {}", g, sse(chunk, got), base);
                for (&x, &y) in chunk.iter().zip(got) {
                    let level = if d > 0.0 { (x - m) / d } else { 0.0 };
                    let bound = if d == 0.0 {
                        // A constant group: the minimum's f16 rounding.
                        x.abs() / 2048.0 + 6e-8
                    } else if (-0.5..=15.5).contains(&level) {
                        d * 0.5
                    } else {
                        base.sqrt() as f32
                    };
                    prop_assert!((x - y).abs() <= bound * (1.0 + 1e-5) + 1e-6 * x.abs() + 1e-7, "{} vs {}", x, y);
                }
                for j in chunk.len()..GROUP {
                    prop_assert_eq!(quant::q4a_get(&qs[g * 16..(g + 1) * 16], j), 0);
                }
            }
        }
    }

    /// On 2 000 normal-like groups the search lowers the total squared
    /// error by at least 8 % (it measures 11.7 % for q4, 15.3 % for q8).
    #[test]
    fn search_gains_on_normal_groups() {
        for q4 in [true, false] {
            let (mut searched, mut base) = (0.0, 0.0);
            for seed in 0..2000u64 {
                let x = group(32, 1, seed * 7 + 3, 1.0);
                let mut qs = [0u8; 32];
                let mut sc = [f16::ZERO];
                let mut back = [0f32; 32];
                super::tests::round_trip(&x, q4, &mut qs, &mut sc, &mut back);
                searched += sse(&x, &back);
                base += super::tests::baseline_sse(&x, q4);
            }
            let gain = 1.0 - searched / base;
            eprintln!("q4 {q4}: squared error {searched:.5} vs closed-form {base:.5} ({:.1} % less)", gain * 100.0);
            assert!(gain > 0.08, "q4 {q4}: gain {gain}");
        }
    }

    /// Groups that are exactly `u * d + m` with f16 `d`, `m` and both end
    /// levels used (what llama.cpp's Q4_1 stores) come back bit for bit.
    #[test]
    fn q4a_reproduces_q4_1_groups_exactly() {
        let mut s = 12345u64;
        for case in 0..500 {
            let mut next = || {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (s >> 33) as u32
            };
            let d = f16::from_f32((next() % 1000 + 1) as f32 * 1e-5).to_f32();
            let m = f16::from_f32(-((next() % 1000) as f32) * 1e-4).to_f32();
            let mut u: Vec<u8> = (0..32).map(|_| (next() % 16) as u8).collect();
            u[(case % 32) as usize] = 0;
            u[((case + 5) % 32) as usize] = 15;
            let x: Vec<f32> = u.iter().map(|&u| u as f32 * d + m).collect();
            let (back, ..) = roundtrip_q4a(&x);
            assert_eq!(x, back, "case {case}: d {d} m {m}");
        }
    }

    #[test]
    fn q4a_constant_and_empty_groups() {
        let (back, _, scales, mins) = roundtrip_q4a(&[0.25; 40]);
        assert!(back.iter().all(|&v| v == 0.25));
        assert_eq!((scales[0], mins[0]), (f16::ZERO, f16::from_f32(0.25)));
        let (back, ..) = roundtrip_q4a(&[0.0; 7]);
        assert!(back.iter().all(|&v| v == 0.0));
        let (back, ..) = roundtrip_q4a(&[]);
        assert!(back.is_empty());
    }

    /// `Matrix::dequantize_row` on q4a planes equals the row function.
    #[test]
    fn q4a_matrix_rows() {
        let (rows, cols) = (3, 70);
        let src = group(rows * cols, 1, 9, 0.5);
        let groups = cols.div_ceil(GROUP);
        let (mut qs, mut scales, mut mins) =
            (vec![0u8; rows * groups * 16], vec![f16::ZERO; rows * groups], vec![f16::ZERO; rows * groups]);
        for r in 0..rows {
            quantize_row_q4a(
                &src[r * cols..(r + 1) * cols],
                &mut qs[r * groups * 16..(r + 1) * groups * 16],
                &mut scales[r * groups..(r + 1) * groups],
                &mut mins[r * groups..(r + 1) * groups],
            );
        }
        let padded = quant::padded_rows(rows);
        let (mut tq, mut ts, mut tm) =
            (vec![0u8; padded * groups * 16], vec![f16::ZERO; padded * groups], vec![f16::ZERO; padded * groups]);
        quant::tile_rows(ferrite_format::DType::Q4A, &qs, &scales, rows, groups, &mut tq, &mut ts);
        let mut scratch = vec![0u8; padded * groups * 16];
        quant::tile_rows(ferrite_format::DType::Q4A, &qs, &mins, rows, groups, &mut scratch, &mut tm);
        let m = Matrix { w: Weights::Q4A { qs: &tq, scales: &ts, mins: &tm }, rows, cols };
        for r in 0..rows {
            let mut a = vec![0f32; cols];
            let mut b = vec![0f32; cols];
            m.dequantize_row(r, &mut a);
            dequantize_row_q4a(
                &qs[r * groups * 16..],
                &scales[r * groups..(r + 1) * groups],
                &mins[r * groups..(r + 1) * groups],
                &mut b,
            );
            assert_eq!(a, b);
            assert!(sse(&a, &src[r * cols..(r + 1) * cols]) < 1e-2 * cols as f64);
        }
    }
}
