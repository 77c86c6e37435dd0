//! The i8mm tier's integer matrix product. Weights stay unsigned as
//! stored (q4 `q + 8`, q8 `q + 128`) and multiply signed activations, like
//! x86's `vpdpbusd`; each group's sums are corrected by
//! `- offset * sum(activations)` (exact in 32 bits):
//!
//! - a lone token (decode) uses `USDOT` by element, as the dotprod tier
//!   uses `SDOT`;
//! - pairs of tokens (prefill) use `USMMLA`, a 2×8 by 8×2 integer matrix
//!   product: zipping the 32-bit words of chunks `2s` and `2s + 1` of a
//!   tile gives, for two rows, their eight quants `8s..8s + 8` in a row,
//!   which is the instruction's left operand; the right one is the same
//!   eight activation quants of two tokens. Its four lanes are
//!   `[(row 0, token 0), (row 0, token 1), (row 1, token 0), (row 1, token 1)]`:
//!   16 instructions per group for 8 rows × 2 tokens, where `USDOT` needs 32.

use core::arch::aarch64::*;
use core::arch::asm;
use core::ops::Range;

use ferrite_format::quant::{self, GROUP, ROW_BLOCK};

use super::load_f16x8;
use super::matmul::{NeonKind, Q4, Q8};
use crate::tiles::{int_planes, store_rows, IntKind, Planes};
use crate::{Acts, Matrix, Out};

/// [`matmul_q_i8mm`] (safe: the i8mm table is only reachable after
/// `has_i8mm()`).
pub(super) fn matmul_q(m: &Matrix<'_>, rows: Range<usize>, acts: &Acts<'_>, n: usize, out: &mut Out<'_>) {
    // SAFETY: see above.
    unsafe { matmul_q_i8mm(m, rows, acts, n, out) }
}

/// `reference::matmul_q` with `USDOT`/`USMMLA`.
///
/// # Safety
/// The CPU has NEON and i8mm.
#[target_feature(enable = "neon,i8mm")]
unsafe fn matmul_q_i8mm(m: &Matrix<'_>, rows: Range<usize>, acts: &Acts<'_>, n: usize, out: &mut Out<'_>) {
    let Some((p, kind)) = int_planes(m, &rows, acts, n) else { return };
    // SAFETY: shapes checked by `int_planes`; features present (the caller's guarantee).
    unsafe {
        match kind {
            IntKind::Q4 => drive::<Q4>(&rows, n, out, p),
            IntKind::Q8 => drive::<Q8>(&rows, n, out, p),
            // The types without i8mm tiles yet: the dotprod tier's.
            _ => super::dotprod::matmul_q(m, rows, acts, n, out),
        }
    }
}

/// Every row block of `rows` × tokens in runs of 4 or 2 (`USMMLA`, the
/// tile unpacked once per run) and a lone last token (`USDOT`).
///
/// # Safety
/// Shapes checked by `check_shapes`; NEON and i8mm present.
#[target_feature(enable = "neon,i8mm")]
unsafe fn drive<K: NeonKind>(rows: &Range<usize>, n: usize, out: &mut Out<'_>, p: Planes<'_>) {
    for block in rows.start / ROW_BLOCK..rows.end.div_ceil(ROW_BLOCK) {
        let mut t0 = 0;
        while t0 < n {
            // SAFETY (the three calls): forwarded from the caller; the
            // tokens `t0 ..` used are below `n`.
            let used = match n - t0 {
                1 => {
                    let [l] = unsafe { usdot_tiles::<K, 1>(p, block, t0) };
                    store_rows(out, rows, t0, block, &l);
                    1
                }
                2 | 3 => {
                    let [[a, b]] = unsafe { mmla_tiles::<K, 1>(p, block, t0) };
                    store_rows(out, rows, t0, block, &a);
                    store_rows(out, rows, t0 + 1, block, &b);
                    2
                }
                _ => {
                    let pairs = unsafe { mmla_tiles::<K, 2>(p, block, t0) };
                    for (i, l) in pairs.iter().flatten().enumerate() {
                        store_rows(out, rows, t0 + i, block, l);
                    }
                    4
                }
            };
            t0 += used;
        }
    }
}

mla_asm!(
    /// `acc[i] += sum_k w[4i + k] * a[4L + k]`, `w` unsigned and `a` signed
    /// (`USDOT` by element).
    usdot<L>, "neon,i8mm", "usdot {acc:v}.4s, {w:v}.16b, {a:v}.4b[{l}]", uint8x16_t
);

mla_asm!(
    /// `acc += W · Aᵀ` for `W` two rows of eight unsigned bytes and `A` two
    /// rows of eight signed bytes: lanes `[w0·a0, w0·a1, w1·a0, w1·a1]`
    /// (`USMMLA`).
    usmmla, "neon,i8mm", "usmmla {acc:v}.4s, {w:v}.16b, {a:v}.16b", uint8x16_t
);

by_element_tiles!(
    /// The tile's stored (unsigned) quants, `USDOT` for each token (only
    /// lone tokens come here).
    ///
    /// # Safety
    /// `check_shapes` passed for these rows and tokens; NEON and i8mm
    /// present.
    usdot_tiles, "neon,i8mm", usdot, signed: false, |u| u
);

/// Rows `8 * block ..+8` × tokens `t0 ..+2P` with `USMMLA`, as `P` pairs
/// of tokens' lanes.
///
/// # Safety
/// As [`drive`], for tokens `t0 .. t0 + 2P`.
#[target_feature(enable = "neon,i8mm")]
unsafe fn mmla_tiles<K: NeonKind, const P: usize>(p: Planes<'_>, block: usize, t0: usize) -> [[[f32; 8]; 2]; P] {
    let Planes { qs, scales, groups, acts, .. } = p;
    let off = K::OFFSET as i32;
    // acc[p][rp]: rows 2rp, 2rp + 1 × tokens t0 + 2p, t0 + 2p + 1.
    let mut acc = [[vdupq_n_f32(0.0); 4]; P];
    for g in 0..groups {
        let ti = quant::tile_index(groups, block, g);
        // SAFETY (loads below): `check_shapes` covered every tile of the row
        // blocks and every activation group of the tokens.
        let u = unsafe { K::unpack(qs.as_ptr().add(ti * K::BYTES)) };
        // m[s][rp]: rows 2rp, 2rp + 1, quants 8s..8s + 8 (chunks 2s, 2s + 1).
        let mut m = [[vdupq_n_u8(0); 4]; 4];
        for (s, m) in m.iter_mut().enumerate() {
            let [r01, r23] = zip_words(u[4 * s], u[4 * s + 2]);
            let [r45, r67] = zip_words(u[4 * s + 1], u[4 * s + 3]);
            *m = [r01, r23, r45, r67];
        }
        let (wd_lo, wd_hi) = unsafe { load_f16x8(scales.as_ptr().add(ti * ROW_BLOCK)) };
        // Each row pair's scales, one per lane: [wd0, wd0, wd1, wd1], ...
        let wd =
            [vzip1q_f32(wd_lo, wd_lo), vzip2q_f32(wd_lo, wd_lo), vzip1q_f32(wd_hi, wd_hi), vzip2q_f32(wd_hi, wd_hi)];
        for (p, acc) in acc.iter_mut().enumerate() {
            let (ga, gb) = ((t0 + 2 * p) * groups + g, (t0 + 2 * p + 1) * groups + g);
            let (pa, pb) = unsafe { (acts.qs.as_ptr().add(ga * GROUP), acts.qs.as_ptr().add(gb * GROUP)) };
            let mut isum = [vdupq_n_s32(0); 4];
            for (s, m) in m.iter().enumerate() {
                let a = unsafe { vcombine_s8(vld1_s8(pa.add(8 * s)), vld1_s8(pb.add(8 * s))) };
                for (isum, &w) in isum.iter_mut().zip(m) {
                    *isum = usmmla(*isum, w, a);
                }
            }
            let (sa, sb) = (off * acts.sums[ga], off * acts.sums[gb]);
            let (corr, ad) = ([sa, sb, sa, sb], [acts.d[ga], acts.d[gb], acts.d[ga], acts.d[gb]]);
            // SAFETY: both arrays have 4 elements.
            let (corr, ad) = unsafe { (vld1q_s32(corr.as_ptr()), vld1q_f32(ad.as_ptr())) };
            for ((acc, isum), wd) in acc.iter_mut().zip(isum).zip(wd) {
                let isum = vsubq_s32(isum, corr);
                *acc = vaddq_f32(*acc, vmulq_f32(vcvtq_f32_s32(isum), vmulq_f32(wd, ad)));
            }
        }
    }
    let mut out = [[[0f32; 8]; 2]; P];
    for (l, acc) in out.iter_mut().zip(&acc) {
        for (rp, v) in acc.iter().enumerate() {
            let mut x = [0f32; 4];
            // SAFETY: `x` has 4 floats.
            unsafe { vst1q_f32(x.as_mut_ptr(), *v) };
            l[0][2 * rp] = x[0];
            l[1][2 * rp] = x[1];
            l[0][2 * rp + 1] = x[2];
            l[1][2 * rp + 1] = x[3];
        }
    }
    out
}

/// The 32-bit words of `x` and `y` interleaved: `[x0, y0, x1, y1]` and
/// `[x2, y2, x3, y3]`.
#[target_feature(enable = "neon")]
#[inline]
fn zip_words(x: uint8x16_t, y: uint8x16_t) -> [uint8x16_t; 2] {
    let (x, y) = (vreinterpretq_u32_u8(x), vreinterpretq_u32_u8(y));
    [vreinterpretq_u8_u32(vzip1q_u32(x, y)), vreinterpretq_u8_u32(vzip2q_u32(x, y))]
}
