//! The dotprod tier's integer matrix product: the same signed tiles as the
//! plain NEON tier, multiplied with `SDOT` by element (four signed weights
//! of a row times four activations picked from a vector lane, summed into
//! a 32-bit lane), which needs neither the widening multiplies nor the
//! pairwise adds.

use core::arch::aarch64::*;
use core::arch::asm;
use core::ops::Range;

use ferrite_format::quant::{self, GROUP, ROW_BLOCK};

use super::load_f16x8;
use super::matmul::{signed, NeonKind, Q4, Q8};
use crate::tiles::{drive_tiles, int_matmul};
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
    int_matmul!(m, rows, acts, n, out, sdot_tiles, { Q4 => Q4, Q8 => Q8 })
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
