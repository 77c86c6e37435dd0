//! The dotprod tier's integer matrix product: the same signed tiles as the
//! plain NEON tier, multiplied with `SDOT` by element (four signed weights
//! of a row times four activations picked from a vector lane, summed into
//! a 32-bit lane), which needs neither the widening multiplies nor the
//! pairwise adds.

use core::arch::aarch64::*;
use core::arch::asm;
use core::ops::Range;

use half::f16;

use super::{check_shapes, drive, lanes, load_f16x8, planes, store_rows, unpack_tile_signed, GROUP, RB};
use crate::{Acts, Matrix, Out};

pub(super) fn matmul_q(m: &Matrix<'_>, rows: Range<usize>, acts: &Acts<'_>, n: usize, out: &mut Out<'_>) {
    // SAFETY: the dotprod table is only reachable after `has_dotprod()`.
    unsafe { matmul_q_sdot(m, rows, acts, n, out) }
}

#[target_feature(enable = "neon,dotprod")]
unsafe fn matmul_q_sdot(m: &Matrix<'_>, rows: Range<usize>, acts: &Acts<'_>, n: usize, out: &mut Out<'_>) {
    let Some((qs, scales, q4, tile)) = planes(m) else { return };
    let groups = m.cols.div_ceil(GROUP);
    check_shapes(qs, scales, tile, groups, &rows, acts, n);
    if q4 {
        // SAFETY: shapes checked above; features present (module invariant).
        unsafe { drive!(rows, n, out, 4, sdot_tiles, true, qs, scales, groups, acts) }
    } else {
        // SAFETY: as above.
        unsafe { drive!(rows, n, out, 4, sdot_tiles, false, qs, scales, groups, acts) }
    }
}

/// `acc[i] += sum_k w[4i + k] * a[4L + k]` (`SDOT` by element).
#[target_feature(enable = "neon,dotprod")]
#[inline]
fn sdot<const L: i32>(mut acc: int32x4_t, w: int8x16_t, a: int8x16_t) -> int32x4_t {
    // SAFETY: one register-only instruction (no memory, stack or flags);
    // this function enables `dotprod`, so it only runs where the table
    // checked the CPU has it.
    unsafe {
        asm!(
            "sdot {acc:v}.4s, {w:v}.16b, {a:v}.4b[{l}]",
            acc = inout(vreg) acc,
            w = in(vreg) w,
            a = in(vreg) a,
            l = const L,
            options(pure, nomem, nostack, preserves_flags)
        )
    };
    acc
}

/// One group's exact integer sums for 8 rows against the 32 activation
/// quants at `a`: 16 `SDOT`s into four accumulators (two per row half, to
/// overlap their latency). Returns rows 0..4 and rows 4..8.
///
/// # Safety
/// 32 bytes readable at `a`; NEON and dotprod present.
#[target_feature(enable = "neon,dotprod")]
#[inline]
unsafe fn group_dot_sdot(w: &[int8x16_t; 16], a: *const i8) -> (int32x4_t, int32x4_t) {
    // SAFETY: 32 readable bytes (the caller's guarantee).
    let (a0, a1) = unsafe { (vld1q_s8(a), vld1q_s8(a.add(16))) };
    let z = vdupq_n_s32(0);
    // Chunk c multiplies activation quants 4c..4c+4: lane c % 4 of a0 / a1.
    let lo0 = sdot::<2>(sdot::<0>(z, w[0], a0), w[4], a0);
    let lo1 = sdot::<3>(sdot::<1>(z, w[2], a0), w[6], a0);
    let hi0 = sdot::<2>(sdot::<0>(z, w[1], a0), w[5], a0);
    let hi1 = sdot::<3>(sdot::<1>(z, w[3], a0), w[7], a0);
    let lo0 = sdot::<2>(sdot::<0>(lo0, w[8], a1), w[12], a1);
    let lo1 = sdot::<3>(sdot::<1>(lo1, w[10], a1), w[14], a1);
    let hi0 = sdot::<2>(sdot::<0>(hi0, w[9], a1), w[13], a1);
    let hi1 = sdot::<3>(sdot::<1>(hi1, w[11], a1), w[15], a1);
    (vaddq_s32(lo0, lo1), vaddq_s32(hi0, hi1))
}

/// Rows `8 * block ..+8` × tokens `t0 ..+T` of a q4 (`Q4`) or q8 matrix:
/// each tile unpacked to signed quants once (16 registers) and multiplied
/// by [`group_dot_sdot`] for each token, then scaled per group as the
/// reference does.
///
/// # Safety
/// Shapes checked by `check_shapes` for these rows and tokens; NEON and
/// dotprod present.
#[target_feature(enable = "neon,dotprod")]
unsafe fn sdot_tiles<const T: usize, const Q4: bool>(
    block: usize,
    t0: usize,
    qs: &[u8],
    scales: &[f16],
    groups: usize,
    acts: &Acts<'_>,
) -> [[f32; 8]; T] {
    let tile_bytes = if Q4 { 128 } else { 256 };
    let mut acc = [[vdupq_n_f32(0.0); 2]; T];
    for g in 0..groups {
        let ti = block * groups + g;
        // SAFETY (loads below): `check_shapes` covered every tile of the row
        // blocks and every activation group of the tokens.
        let w = unsafe { unpack_tile_signed::<Q4>(qs.as_ptr().add(ti * tile_bytes)) };
        let (wd_lo, wd_hi) = unsafe { load_f16x8(scales.as_ptr().add(ti * RB)) };
        for (t, acc) in acc.iter_mut().enumerate() {
            let ag = (t0 + t) * groups + g;
            let (lo, hi) = unsafe { group_dot_sdot(&w, acts.qs.as_ptr().add(ag * GROUP)) };
            let ad = vdupq_n_f32(acts.d[ag]);
            acc[0] = vaddq_f32(acc[0], vmulq_f32(vcvtq_f32_s32(lo), vmulq_f32(wd_lo, ad)));
            acc[1] = vaddq_f32(acc[1], vmulq_f32(vcvtq_f32_s32(hi), vmulq_f32(wd_hi, ad)));
        }
    }
    let mut out = [[0f32; 8]; T];
    for (o, &[lo, hi]) in out.iter_mut().zip(&acc) {
        *o = lanes(lo, hi);
    }
    out
}
