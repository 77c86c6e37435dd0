//! The K-quant quantizers: one super-block of 256 values to q4k/q5k
//! (levels `0..=15` / `0..=31` per group of 32, value
//! `(d · sc) · u − dmin · m` with 6-bit `sc` and `m` and f16 `d`, `dmin`)
//! or to q6k (levels `−32..=31` per half-group of 16, value
//! `(d · sc) · q` with an i8 `sc` and an f16 `d`), and the 5-bit group
//! types q5_0 and q5_1 they fall back to.
//!
//! The objective is the plain squared error of the dequantized values, the
//! quantity the converter reports and the contest with llama-quantize
//! measures. Three stages, all least squares:
//!
//! 1. each sub-block's best *continuous* factors: candidate steps that map
//!    its range onto the levels (from 1.25 levels inside to 2.25 outside,
//!    in quarter levels; lowest level on the lowest value, or centred),
//!    each refitted by the linear regression of the values on its levels,
//!    the best refit (by its closed-form error) refined twice more (q6k:
//!    the symmetric search of `quantize_group_symmetric`);
//! 2. the super-block's f16 `d` (and `dmin`) so that the largest factor
//!    is the largest 6-bit integer (q6k: 127 steps of a positive `d`, or
//!    −128 steps of a `d` of the opposite sign, as llama.cpp writes them,
//!    both tried); each sub-block then tries the
//!    integers on both sides of its factor (and of its minimum), with its
//!    levels recomputed for the exact f32 factors the dequantizer uses;
//! 3. one more round: the factors refitted for the chosen levels, the
//!    integers chosen again, kept only where the error falls.
//!
//! Stages 2 and 3 also run from the closed-form factors (each group's
//! range on the levels; for q6k the value of largest magnitude on −32),
//! and the super-block with the smaller error wins, so a search is never
//! worse than that rule. (`scripts/quant-error-vs-llama-cpp.sh` measures
//! it against llama-quantize's on the same tensors.)
//!
//! The exact error (the dequantizer's f32 arithmetic) decides every choice.
//! Values so large that a step overflows f16 give an infinite `d` or
//! `dmin`, which the caller refuses (the converter names the row).

use ferrite_format::quant::{GROUP, SUPER, SUPER_GROUPS};
use half::f16;

use super::{round_fast, symmetric_search};

/// Sub-blocks of 16 in a q6k super-block.
const Q6_SUBS: usize = SUPER / 16;

/// One q4k or q5k super-block.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AffineSuper {
    /// Levels `0..=15` (q4k) or `0..=31` (q5k), element order.
    pub levels: [u8; SUPER],
    /// Each group's scale, `0..=63`.
    pub scales: [u8; SUPER_GROUPS],
    /// Each group's minimum, `0..=63`.
    pub mins: [u8; SUPER_GROUPS],
    /// The scales' step.
    pub d: f16,
    /// The minimums' step.
    pub dmin: f16,
}

impl AffineSuper {
    /// The 256 values, as the kernels' reference dequantizes them.
    pub fn dequantize(&self, out: &mut [f32; SUPER]) {
        for (g, chunk) in out.chunks_exact_mut(GROUP).enumerate() {
            let [f0, f1] = affine_factors(self.d, self.dmin, self.scales[g], self.mins[g]);
            for (o, &u) in chunk.iter_mut().zip(&self.levels[g * GROUP..]) {
                *o = f0 * u as f32 - f1;
            }
        }
    }
}

/// One q6k super-block.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Q6Super {
    /// Stored levels `0..=63` (the value's level plus 32), element order.
    pub levels: [u8; SUPER],
    /// Each half-group's scale.
    pub scales: [i8; Q6_SUBS],
    /// The scales' step.
    pub d: f16,
}

impl Q6Super {
    /// The 256 values, as the kernels' reference dequantizes them.
    pub fn dequantize(&self, out: &mut [f32; SUPER]) {
        let d = self.d.to_f32();
        for (s, chunk) in out.chunks_exact_mut(16).enumerate() {
            let f = d * self.scales[s] as f32;
            for (o, &u) in chunk.iter_mut().zip(&self.levels[s * 16..]) {
                *o = f * (u as i32 - 32) as f32;
            }
        }
    }
}

/// `[d · sc, dmin · m]` in f32, as the dequantizer forms them.
#[inline]
fn affine_factors(d: f16, dmin: f16, sc: u8, m: u8) -> [f32; 2] {
    [d.to_f32() * sc as f32, dmin.to_f32() * m as f32]
}

/// Levels of `x` for `s · u − m` (`u` in `0..=top`) into `u`, and the
/// squared error.
#[inline]
fn affine_levels(x: &[f32; GROUP], s: f32, m: f32, top: f32, u: &mut [u8; GROUP]) -> f32 {
    let inv = if s > 0.0 { 1.0 / s } else { 0.0 };
    let mut err = 0.0;
    for (l, &v) in u.iter_mut().zip(x) {
        let q = round_fast((v + m) * inv, 0.0, top);
        *l = q as u8;
        let e = s * q - m - v;
        err += e * e;
    }
    err
}

/// Sums of one group's values against levels `u`, for the least-squares
/// factors of those levels.
struct Sums {
    su: f64,
    suu: f64,
    sx: f64,
    sux: f64,
}

impl Sums {
    fn of(x: &[f32; GROUP], u: &[u8; GROUP]) -> Sums {
        let (mut su, mut suu, mut sx, mut sux) = (0.0f32, 0.0f32, 0.0f32, 0.0f32);
        for (&v, &l) in x.iter().zip(u) {
            let l = l as f32;
            su += l;
            suu += l * l;
            sx += v;
            sux += l * v;
        }
        Sums { su: su as f64, suu: suu as f64, sx: sx as f64, sux: sux as f64 }
    }

    /// The least-squares `(s, m)`, `m ≥ 0`, of `x ≈ s · u − m` for these
    /// levels, and how much below `Σx²` its squared error is (larger is
    /// better); `None` when the levels are all equal (no slope to fit).
    fn refit(&self) -> Option<(f32, f32, f64)> {
        let n = GROUP as f64;
        let det = n * self.suu - self.su * self.su;
        if det <= 0.0 {
            return None;
        }
        let s = (n * self.sux - self.su * self.sx) / det;
        let b = (self.sx - s * self.su) / n;
        // The offset cannot be positive (m ≥ 0): then the best slope alone.
        let (s, m, gain) = if b > 0.0 {
            (self.sux / self.suu, 0.0, self.sux * self.sux / self.suu)
        } else {
            let c = n * self.sux - self.su * self.sx;
            (s, -b, self.sx * self.sx / n + c * c / (n * det))
        };
        (s > 0.0 && s.is_finite()).then_some((s as f32, m as f32, gain))
    }
}

/// Stage 1: the best continuous `(s, m)` for one group. Candidates: steps
/// from 1.25 levels inside the values' range to 2.25 outside in quarter
/// levels, the lowest level on the lowest value or the levels centred on
/// the range; the best least-squares refit of their levels (by its
/// closed-form error) is refined by two more rounds.
fn affine_fit(x: &[f32; GROUP], top: f32) -> (f32, f32) {
    let lo = x.iter().fold(0.0f32, |a, &v| a.min(v));
    let hi = x.iter().fold(f32::NEG_INFINITY, |a, &v| a.max(v));
    if hi.partial_cmp(&lo) != Some(core::cmp::Ordering::Greater) || !(hi - lo).is_finite() {
        // Constant (≤ 0): every level 0, the minimum carries it.
        return (0.0, if lo.is_finite() { -lo } else { 0.0 });
    }
    let mut u = [0u8; GROUP];
    let mut start: Option<(f64, f32, f32)> = None;
    for k in 0..=14 {
        let steps = top - 1.25 + k as f32 * 0.25;
        let s = (hi - lo) / steps;
        for m in [-lo, ((top * s - lo - hi) * 0.5).max(0.0)] {
            affine_levels(x, s, m, top, &mut u);
            if let Some((s2, m2, gain)) = Sums::of(x, &u).refit() {
                if start.is_none_or(|(g, _, _)| gain > g) {
                    start = Some((gain, s2, m2));
                }
            }
        }
    }
    let (_, mut s, mut m) = start.unwrap_or((0.0, (hi - lo) / top, -lo));
    let mut best = (f32::INFINITY, s, m);
    for _ in 0..3 {
        let err = affine_levels(x, s, m, top, &mut u);
        if err < best.0 {
            best = (err, s, m);
        }
        let Some((s2, m2, _)) = Sums::of(x, &u).refit() else { break };
        (s, m) = (s2, m2);
    }
    (best.1, best.2)
}

/// The 6-bit integers on both sides of `v` (clamped to `0..=63`).
#[inline]
fn around(v: f32, max: i32) -> [i32; 2] {
    let f = if v.is_finite() { libm::floorf(v) as i32 } else { 0 };
    [f.clamp(0, max), (f + 1).clamp(0, max)]
}

/// Stage 2 for one group: the integer scale and minimum near `(s, m)` for
/// steps `d`, `dmin` with the least error; their levels go to `u`.
fn affine_pick(x: &[f32; GROUP], top: f32, s: f32, m: f32, d: f16, dmin: f16, u: &mut [u8; GROUP]) -> (f32, u8, u8) {
    let (df, mf) = (d.to_f32(), dmin.to_f32());
    let sc_c = if df > 0.0 { around(s / df, 63) } else { [0, 0] };
    let m_c = if mf > 0.0 { around(m / mf, 63) } else { [0, 0] };
    let mut cand = [0u8; GROUP];
    let mut best = (f32::INFINITY, 0u8, 0u8);
    for sc in sc_c {
        for mn in m_c {
            let [f0, f1] = affine_factors(d, dmin, sc as u8, mn as u8);
            let err = affine_levels(x, f0, f1, top, &mut cand);
            if err < best.0 {
                best = (err, sc as u8, mn as u8);
                *u = cand;
            }
        }
    }
    best
}

/// Squared error of `x` against `back` (f64 sums).
fn sse(x: &[f32; SUPER], back: &[f32; SUPER]) -> f64 {
    x.iter()
        .zip(back)
        .map(|(&a, &b)| {
            let e = a as f64 - b as f64;
            e * e
        })
        .sum()
}

/// The closed-form factors the searches must beat: each group's range on
/// the levels (`s = (max − min) / top`, `m = −min`, the minimum at most 0).
fn affine_range(x: &[f32; GROUP], top: f32) -> (f32, f32) {
    let lo = x.iter().fold(0.0f32, |a, &v| a.min(v));
    let hi = x.iter().fold(0.0f32, |a, &v| a.max(v));
    ((hi - lo) / top, -lo)
}

/// Quantizes 256 values to q4k (`top` 15) or q5k (`top` 31): the stages
/// of the module documentation from the searched factors, and from each
/// group's closed-form range ([`affine_range`]); the super-block with the
/// smaller squared error is returned, so the result is never worse than
/// the closed-form rule's.
///
/// # Panics
/// If `top` is neither 15 nor 31.
pub fn quantize_super_affine(x: &[f32; SUPER], top: u8) -> AffineSuper {
    assert!(top == 15 || top == 31, "q4k/q5k levels are 0..=15 or 0..=31");
    let top = top as f32;
    let (chunks, _) = x.as_chunks::<GROUP>();
    let groups: [&[f32; GROUP]; SUPER_GROUPS] = core::array::from_fn(|g| &chunks[g]);
    let mut back = [0f32; SUPER];
    let searched = affine_super(&groups, top, groups.map(|g| affine_fit(g, top)));
    searched.dequantize(&mut back);
    let e_searched = sse(x, &back);
    let closed = affine_super(&groups, top, groups.map(|g| affine_range(g, top)));
    closed.dequantize(&mut back);
    if sse(x, &back) < e_searched {
        closed
    } else {
        searched
    }
}

/// Stages 2 and 3 for the groups' continuous factors `fits`.
fn affine_super(groups: &[&[f32; GROUP]; SUPER_GROUPS], top: f32, fits: [(f32, f32); SUPER_GROUPS]) -> AffineSuper {
    let smax = fits.iter().fold(0.0f32, |a, f| a.max(f.0));
    let mmax = fits.iter().fold(0.0f32, |a, f| a.max(f.1));
    let step = |v: f32| f16::from_f32(v / 63.0);
    let mut out = AffineSuper {
        levels: [0; SUPER],
        scales: [0; SUPER_GROUPS],
        mins: [0; SUPER_GROUPS],
        d: step(smax),
        dmin: step(mmax),
    };
    let mut u = [0u8; GROUP];
    for (g, x) in groups.iter().enumerate() {
        let (s, m) = fits[g];
        let (err, mut sc, mut mn) = affine_pick(x, top, s, m, out.d, out.dmin, &mut u);
        // Stage 3: refit the factors to the chosen levels, pick again.
        if let Some((s2, m2, _)) = Sums::of(x, &u).refit() {
            let mut u2 = [0u8; GROUP];
            let (e2, sc2, mn2) = affine_pick(x, top, s2, m2, out.d, out.dmin, &mut u2);
            if e2 < err {
                (sc, mn, u) = (sc2, mn2, u2);
            }
        }
        out.scales[g] = sc;
        out.mins[g] = mn;
        out.levels[g * GROUP..(g + 1) * GROUP].copy_from_slice(&u);
    }
    out
}

/// Levels `−32..=31` of `x` (16 values) for factor `f`, stored plus 32, and
/// the squared error.
#[inline]
fn q6_levels(x: &[f32], f: f32, u: &mut [u8; 16]) -> f32 {
    let inv = if f != 0.0 { 1.0 / f } else { 0.0 };
    let mut err = 0.0;
    for (l, &v) in u.iter_mut().zip(x) {
        let q = round_fast(v * inv, -32.0, 31.0);
        *l = (q + 32.0) as u8;
        let e = f * q - v;
        err += e * e;
    }
    err
}

/// The best i8 scale near `s / d` for one half-group; its levels go to `u`.
fn q6_pick(x: &[f32], s: f32, d: f16, u: &mut [u8; 16]) -> (f32, i8) {
    let df = d.to_f32();
    let c = if df != 0.0 && s.is_finite() { libm::floorf(s / df) as i32 } else { 0 };
    let mut cand = [0u8; 16];
    let mut best = (f32::INFINITY, 0i8);
    for sc in [c.clamp(-128, 127), (c + 1).clamp(-128, 127)] {
        let err = q6_levels(x, df * sc as f32, &mut cand);
        if err < best.0 {
            best = (err, sc as i8);
            *u = cand;
        }
    }
    best
}

/// Quantizes 256 values to q6k: the stages of the module documentation
/// from each half-group's searched scale and from the closed-form one (the
/// value of largest magnitude on −32), each with the largest scale on 127
/// or on −128 integer steps; the super-block with the smallest squared
/// error is returned.
pub fn quantize_super_q6k(x: &[f32; SUPER]) -> Q6Super {
    let halves = |s: usize| &x[s * 16..(s + 1) * 16];
    let searched: [f32; Q6_SUBS] = core::array::from_fn(|s| symmetric_search(halves(s), -32, 31).unwrap_or(0.0));
    let closed: [f32; Q6_SUBS] =
        core::array::from_fn(|s| halves(s).iter().fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m }) / -32.0);
    // The largest scale on 127 steps of a positive `d`, or on -128 steps
    // of a `d` of its sign's opposite: llama.cpp's choice, so the values of
    // its files are found again.
    let mut best = (f64::INFINITY, q6_super(x, searched, 127.0));
    let mut back = [0f32; SUPER];
    for (fits, top) in [(searched, 127.0), (searched, -128.0), (closed, 127.0), (closed, -128.0)] {
        let b = q6_super(x, fits, top);
        b.dequantize(&mut back);
        let e = sse(x, &back);
        if e < best.0 {
            best = (e, b);
        }
    }
    best.1
}

/// Stages 2 and 3 of q6k for the half-groups' continuous scales `fits`:
/// `top` 127, `d = max |fit| / 127`; `top` -128, `d = -m / 128` for the
/// fit `m` of largest magnitude (which becomes the integer -128).
fn q6_super(x: &[f32; SUPER], fits: [f32; Q6_SUBS], top: f32) -> Q6Super {
    let m = fits.iter().fold(0.0f32, |a, &f| if f.abs() > a.abs() { f } else { a });
    let d = f16::from_f32(if top > 0.0 { m.abs() / top } else { m / top });
    let mut out = Q6Super { levels: [32; SUPER], scales: [0; Q6_SUBS], d };
    let mut u = [0u8; 16];
    for (s, x) in x.chunks_exact(16).enumerate() {
        let (err, mut sc) = q6_pick(x, fits[s], d, &mut u);
        // Refit the scale to the chosen levels (Σxq / Σq²), pick again.
        let (sxq, sqq) = x.iter().zip(&u).fold((0.0f32, 0.0f32), |(a, b), (&v, &l)| {
            let q = l as f32 - 32.0;
            (a + v * q, b + q * q)
        });
        if sqq > 0.0 {
            let mut u2 = [0u8; 16];
            let (e2, sc2) = q6_pick(x, sxq / sqq, d, &mut u2);
            if e2 < err {
                (sc, u) = (sc2, u2);
            }
        }
        out.scales[s] = sc;
        out.levels[s * 16..(s + 1) * 16].copy_from_slice(&u);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A 64-bit LCG's next value in `[0, 1)`.
    fn unit(s: &mut u64) -> f32 {
        *s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (*s >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Box–Muller normal deviate.
    fn normal(s: &mut u64) -> f32 {
        let (a, b) = (unit(s).max(1e-9), unit(s));
        libm::sqrtf(-2.0 * libm::logf(a)) * libm::cosf(core::f32::consts::TAU * b)
    }

    fn sse_of(x: &[f32; SUPER], deq: impl Fn(&mut [f32; SUPER])) -> f64 {
        let mut back = [0f32; SUPER];
        deq(&mut back);
        sse(x, &back)
    }

    /// The three quantizers' squared error relative to Σx² on 200
    /// super-blocks of N(0, 1): what they achieve (measured 2026-12-04:
    /// q4k 4.874e-3, q5k 1.198e-3, q6k 2.837e-4; llama-quantize on the
    /// Gaussian tensors of `scripts/quant-error-vs-llama-cpp.sh` gives
    /// 5.09e-3, 1.30e-3, 3.15e-4) plus about 1 %.
    #[test]
    #[cfg_attr(miri, ignore = "statistical: 200 super-blocks take minutes under Miri")]
    fn gaussian_errors_stay_where_they_are() {
        let mut s = 12345u64;
        let (mut e4, mut e5, mut e6, mut sq) = (0f64, 0f64, 0f64, 0f64);
        for _ in 0..200 {
            let x: [f32; SUPER] = core::array::from_fn(|_| normal(&mut s));
            e4 += sse_of(&x, |b| quantize_super_affine(&x, 15).dequantize(b));
            e5 += sse_of(&x, |b| quantize_super_affine(&x, 31).dequantize(b));
            e6 += sse_of(&x, |b| quantize_super_q6k(&x).dequantize(b));
            sq += x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>();
        }
        let (r4, r5, r6) = (e4 / sq, e5 / sq, e6 / sq);
        assert!(r4 <= 4.93e-3, "q4k {r4:e}");
        assert!(r5 <= 1.21e-3, "q5k {r5:e}");
        assert!(r6 <= 2.87e-4, "q6k {r6:e}");
    }

    /// A super-block of one of several shapes: Gaussian, uniform, all
    /// positive, sparse with outliers, or groups that are constant.
    fn block(kind: u8, scale: f32, seed: u64) -> [f32; SUPER] {
        let mut s = seed | 1;
        core::array::from_fn(|i| {
            scale
                * match kind {
                    0 => normal(&mut s),
                    1 => unit(&mut s) * 2.0 - 1.0,
                    2 => unit(&mut s) + 0.5,
                    3 if unit(&mut s) < 0.05 => normal(&mut s) * 40.0,
                    3 => 0.0,
                    _ => -((i / GROUP) as f32),
                }
        })
    }

    proptest! {
        #![proptest_config(crate::quantize::tests::proptest_config())]

        /// Every stored value is in its range, and the squared error is
        /// never worse than the closed-form rule's.
        #[test]
        fn k_blocks_are_valid_and_beat_the_closed_form(
            kind in 0u8..5, exp in -12i32..10, seed in any::<u64>(),
        ) {
            let x = block(kind, libm::exp2f(exp as f32), seed);
            let groups: [&[f32; GROUP]; SUPER_GROUPS] =
                core::array::from_fn(|g| x[g * GROUP..(g + 1) * GROUP].try_into().unwrap());
            for top in [15u8, 31] {
                let b = quantize_super_affine(&x, top);
                prop_assert!(b.levels.iter().all(|&l| l <= top));
                prop_assert!(b.scales.iter().chain(&b.mins).all(|&v| v <= 63));
                prop_assert!(b.d.is_finite() && b.dmin.is_finite());
                let closed = affine_super(&groups, top as f32, groups.map(|g| affine_range(g, top as f32)));
                let (e, e_closed) = (sse_of(&x, |o| b.dequantize(o)), sse_of(&x, |o| closed.dequantize(o)));
                prop_assert!(e <= e_closed, "top {}: {} > closed-form {}", top, e, e_closed);
            }
            let b = quantize_super_q6k(&x);
            prop_assert!(b.levels.iter().all(|&l| l <= 63));
            prop_assert!(b.d.is_finite());
            let closed = q6_super(&x, core::array::from_fn(|s| {
                x[s * 16..(s + 1) * 16].iter().fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m }) / -32.0
            }), 127.0);
            let (e, e_closed) = (sse_of(&x, |o| b.dequantize(o)), sse_of(&x, |o| closed.dequantize(o)));
            prop_assert!(e <= e_closed, "q6k: {} > closed-form {}", e, e_closed);
        }
    }
}
