//! The dotprod tier's integer matrix product: the same signed tiles as the
//! plain NEON tier, multiplied with `SDOT` by element (four signed weights
//! of a row times four activations picked from a vector lane, summed into
//! a 32-bit lane), which needs neither the widening multiplies nor the
//! pairwise adds.

use core::arch::aarch64::*;
use core::arch::asm;
use core::ops::Range;

use ferrite_format::quant::{self, GROUP, ROW_BLOCK};

use super::kquant::{self, fold_k, NeonK};
use super::load_f16x8;
use super::matmul::{signed, NeonKind, Q4, Q8};
use crate::tiles::{drive_tiles, int_matmul, Planes};
use crate::{Acts, Matrix, Out};

/// [`matmul_q_sdot`] (safe: the dotprod table is only reachable after
/// `has_dotprod()`).
pub(super) fn matmul_q(m: &Matrix<'_>, rows: Range<usize>, acts: &Acts<'_>, n: usize, out: &mut Out<'_>) {
    // SAFETY: see above.
    unsafe { matmul_q_sdot(m, rows, acts, n, out) }
}

/// `reference::matmul_q` with `SDOT`.
///
/// # Safety
/// The CPU has NEON and dotprod.
#[target_feature(enable = "neon,dotprod")]
unsafe fn matmul_q_sdot(m: &Matrix<'_>, rows: Range<usize>, acts: &Acts<'_>, n: usize, out: &mut Out<'_>) {
    int_matmul!(m, rows, acts, n, out, sdot_tiles, { Q4 => Q4, Q8 => Q8 }, sdot_k_tiles, {
        Q5_0 => kquant::Q5_0, Q5_1 => kquant::Q5_1, Q4K => kquant::Q4K, Q5K => kquant::Q5K, Q6K => kquant::Q6K,
    })
}

/// Rows `8 * block ..+8` × tokens `t0 ..+T` of a K-family matrix
/// ([`NeonK`]) with `SDOT` by element: chunks 0..4 (elements 0..16, the
/// activations' first 16 bytes) and 4..8 summed apart for [`fold_k`]. The
/// i8mm tier uses it too.
///
/// # Safety
/// `check_shapes` passed for these rows and tokens; NEON and dotprod
/// present.
#[target_feature(enable = "neon,dotprod")]
unsafe fn sdot_k_tiles<K: NeonK, const T: usize>(p: Planes<'_>, block: usize, t0: usize) -> [[f32; 8]; T] {
    let (groups, acts) = (p.groups, p.acts);
    let mut acc = [[vdupq_n_f32(0.0); 2]; T];
    for g in 0..groups {
        let ti = quant::tile_index(groups, block, g);
        // SAFETY (below): `check_shapes` covered every tile of the row
        // blocks and every activation group of the tokens.
        let (w, f) = unsafe { (K::levels(&p, ti), K::factors(&p, block, g, ti)) };
        for (t, acc) in acc.iter_mut().enumerate() {
            let ag = (t0 + t) * groups + g;
            let a = unsafe { acts.qs.as_ptr().add(ag * GROUP) };
            let (a0, a1) = unsafe { (vld1q_s8(a), vld1q_s8(a.add(16))) };
            let z = vdupq_n_s32(0);
            // Half `h`: chunks `4h..4h + 4` against the activations' lanes
            // 0..4 of `a_h`, two accumulators per row half.
            let half = |w: &[int8x16_t], a: int8x16_t| {
                let lo =
                    vaddq_s32(sdot::<1>(sdot::<0>(z, w[0], a), w[2], a), sdot::<3>(sdot::<2>(z, w[4], a), w[6], a));
                let hi =
                    vaddq_s32(sdot::<1>(sdot::<0>(z, w[1], a), w[3], a), sdot::<3>(sdot::<2>(z, w[5], a), w[7], a));
                [lo, hi]
            };
            fold_k::<K>(acc, half(&w[..8], a0), half(&w[8..], a1), &f, acts.d[ag], acts.sums[ag]);
        }
    }
    super::token_lanes(&acc)
}

mla_asm!(
    /// `acc[i] += sum_k w[4i + k] * a[4L + k]` (`SDOT` by element).
    sdot<L>, "neon,dotprod", "sdot {acc:v}.4s, {w:v}.16b, {a:v}.4b[{l}]", int8x16_t
);

by_element_tiles!(
    /// The tile as signed quants (16 registers), `SDOT` for each token.
    ///
    /// # Safety
    /// `check_shapes` passed for these rows and tokens; NEON and dotprod
    /// present.
    sdot_tiles, "neon,dotprod", sdot, signed: true, |u| signed(u, K::OFFSET)
);
