//! The K-quant family's tiles on aarch64 (q5_0, q5_1, q4k, q5k, q6k): each
//! kind unpacks a group's tile into signed levels in q8 chunk order (the
//! nibbles of the quants plane plus the high plane's bits, the offset
//! removed) and its eight rows' factors; [`fold_k`] scales a group's two
//! half sums exactly as `reference::matmul_q` does (`Matrix::int_group`).
//! The plain NEON loop is `matmul::neon_k_tiles`, the `SDOT` one
//! `dotprod::sdot_k_tiles` (which the i8mm tier uses for these types too);
//! [`dequantize_planes_row`] is the f32-activation path's row unpack.
//!
//! Every level fits an `i8` once its offset is removed (q5_0 −16..=15, q6k
//! −32..=31, the unsigned kinds 0..=31), so one signed path serves them all
//! and the affine kinds add their minimum term per group.

use core::arch::aarch64::*;

use ferrite_format::quant::{self, ROW_BLOCK};

use super::load_f16x8;
use super::matmul::{NeonKind, Q4};
use crate::tiles::Planes;

/// The eight rows' factors of a group (rows 0..4 in `[0]`, 4..8 in `[1]`).
#[derive(Clone, Copy)]
pub(crate) struct KFactors {
    /// `IntGroup::scale`.
    pub(crate) scale: [float32x4_t; 2],
    /// `IntGroup::min` (affine kinds; zero otherwise).
    pub(crate) min: [float32x4_t; 2],
    /// `IntGroup::sub` of each half (q6k; unused otherwise).
    pub(crate) sub: [[int32x4_t; 2]; 2],
}

/// How one K-family tile is unpacked (the twin of `Matrix::int_group`).
pub(crate) trait NeonK {
    /// Whether the kind adds a minimum term (q5_1, q4k, q5k).
    const AFFINE: bool;
    /// Whether each half group has its own integer scale (q6k).
    const SUB: bool;
    /// Tile `ti`'s levels as multiplied, 16 vectors: vector `2c` holds
    /// elements `4c..4c+4` of rows 0..4, vector `2c + 1` of rows 4..8.
    ///
    /// # Safety
    /// The planes hold tile `ti` (`int_planes` checked the shapes); NEON
    /// present.
    unsafe fn levels(p: &Planes<'_>, ti: usize) -> [int8x16_t; 16];
    /// The factors of row block `block`'s group `g` (tile `ti`).
    ///
    /// # Safety
    /// As [`NeonK::levels`].
    unsafe fn factors(p: &Planes<'_>, block: usize, g: usize, ti: usize) -> KFactors;
}

/// The nibbles of tile `ti` of the quants plane in chunk order (a q4
/// tile's: [`NeonKind::unpack`] of `Q4`).
///
/// # Safety
/// As [`NeonK::levels`].
#[target_feature(enable = "neon")]
#[inline]
unsafe fn nibbles(p: &Planes<'_>, ti: usize) -> [uint8x16_t; 16] {
    // SAFETY: tile `ti` of the quants plane (the caller's guarantee).
    unsafe { <Q4 as NeonKind>::unpack(p.qs.as_ptr().add(ti * quant::Q4_TILE_BYTES)) }
}

/// Adds bit 4 of the levels from the 1-bit high plane (one 32-byte chunk
/// per tile: row `r`'s word at `4r`, bit `k` of its byte `i` for element
/// `4k + i`): chunk `k` takes bit `k` of each byte, moved to bit 4.
///
/// # Safety
/// As [`NeonK::levels`].
#[target_feature(enable = "neon")]
#[inline]
unsafe fn add_high1(p: &Planes<'_>, ti: usize, w: &mut [uint8x16_t; 16]) {
    // SAFETY: tile `ti` of the high plane (the caller's guarantee).
    let (lo, hi) = unsafe {
        let h = p.qh.as_ptr().add(ti * quant::CHUNK_BYTES);
        (vld1q_u8(h), vld1q_u8(h.add(16)))
    };
    let bit = vdupq_n_u8(0x10);
    for k in 0..8 {
        let s = vdupq_n_s8(4 - k as i8);
        w[2 * k] = vorrq_u8(w[2 * k], vandq_u8(vshlq_u8(lo, s), bit));
        w[2 * k + 1] = vorrq_u8(w[2 * k + 1], vandq_u8(vshlq_u8(hi, s), bit));
    }
}

/// Adds bits 4..6 of q6k's levels from the 2-bit high plane (two chunks
/// per tile: for chunk `k`, word `k / 4` of each row, bits `2 (k % 4)` and
/// up of each byte).
///
/// # Safety
/// As [`NeonK::levels`].
#[target_feature(enable = "neon")]
#[inline]
unsafe fn add_high2(p: &Planes<'_>, ti: usize, w: &mut [uint8x16_t; 16]) {
    let base = p.qh.as_ptr().wrapping_add(ti * 2 * quant::CHUNK_BYTES);
    let bits = vdupq_n_u8(0x30);
    for h in 0..2 {
        // SAFETY: chunk `h` of tile `ti` of the high plane (the caller's guarantee).
        let (lo, hi) = unsafe {
            let c = base.add(h * quant::CHUNK_BYTES);
            (vld1q_u8(c), vld1q_u8(c.add(16)))
        };
        for m in 0..4 {
            let (k, s) = (4 * h + m, vdupq_n_s8(4 - 2 * m as i8));
            w[2 * k] = vorrq_u8(w[2 * k], vandq_u8(vshlq_u8(lo, s), bits));
            w[2 * k + 1] = vorrq_u8(w[2 * k + 1], vandq_u8(vshlq_u8(hi, s), bits));
        }
    }
}

/// Stored levels less `offset`, as signed bytes.
#[target_feature(enable = "neon")]
#[inline]
fn less(w: [uint8x16_t; 16], offset: u8) -> [int8x16_t; 16] {
    let off = vdupq_n_u8(offset);
    let mut s = [vdupq_n_s8(0); 16];
    for (s, &w) in s.iter_mut().zip(&w) {
        *s = vreinterpretq_s8_u8(vsubq_u8(w, off));
    }
    s
}

/// Eight bytes at `p` (unsigned) as two f32 vectors.
///
/// # Safety
/// 8 bytes readable at `p`; NEON present.
#[target_feature(enable = "neon")]
#[inline]
unsafe fn u8x8(p: *const u8) -> [float32x4_t; 2] {
    // SAFETY: the caller's guarantee.
    let h = vmovl_u8(unsafe { vld1_u8(p) });
    [vcvtq_f32_u32(vmovl_u16(vget_low_u16(h))), vcvtq_f32_u32(vmovl_high_u16(h))]
}

/// A group's f16 factors of tile `ti` in `plane` (8 rows).
///
/// # Safety
/// As [`NeonK::levels`], for `plane`.
#[target_feature(enable = "neon")]
#[inline]
unsafe fn f16_rows(plane: &[half::f16], ti: usize) -> [float32x4_t; 2] {
    // SAFETY: the caller's guarantee.
    let (lo, hi) = unsafe { load_f16x8(plane.as_ptr().add(ti * ROW_BLOCK)) };
    [lo, hi]
}

/// Factors with only a scale.
#[target_feature(enable = "neon")]
#[inline]
fn scale_only(scale: [float32x4_t; 2]) -> KFactors {
    let z = vdupq_n_s32(0);
    KFactors { scale, min: [vdupq_n_f32(0.0); 2], sub: [[z; 2]; 2] }
}

/// q4k's and q5k's factors: `d * sc` and `-(dmin * m)`, one f32 product
/// each (the reference's).
///
/// # Safety
/// As [`NeonK::levels`].
#[target_feature(enable = "neon")]
#[inline]
unsafe fn k_factors(p: &Planes<'_>, block: usize, g: usize, ti: usize) -> KFactors {
    let at = p.super_at(block, g);
    // SAFETY: the caller's guarantee.
    unsafe {
        let (d, dmin) = (load_f16x8(p.d.as_ptr().add(at)), load_f16x8(p.dmin.as_ptr().add(at)));
        let (sc, m) = (u8x8(p.sub.as_ptr().add(ti * ROW_BLOCK)), u8x8(p.sub_mins.as_ptr().add(ti * ROW_BLOCK)));
        let mut f = scale_only([vmulq_f32(d.0, sc[0]), vmulq_f32(d.1, sc[1])]);
        f.min = [vnegq_f32(vmulq_f32(dmin.0, m[0])), vnegq_f32(vmulq_f32(dmin.1, m[1]))];
        f
    }
}

/// q5_0 tiles: levels `q + 16`, a group scale.
pub(crate) struct Q5_0;
/// q5_1 tiles: unsigned 5-bit levels, a group scale and minimum.
pub(crate) struct Q5_1;
/// q4k tiles: unsigned nibbles, the K factors.
pub(crate) struct Q4K;
/// q5k tiles: unsigned 5-bit levels, the K factors.
pub(crate) struct Q5K;
/// q6k tiles: levels `q + 32`, the super-block's `d` and int8 half-group
/// scales.
pub(crate) struct Q6K;

/// `impl NeonK for $kind`: its flags, its levels (`|p, ti| ...`, an
/// expression of `nibbles`, the high planes and `less`) and its factors
/// (`|p, block, g, ti| ...`).
macro_rules! neon_k {
    ($kind:ty, affine: $affine:literal, sub: $sub:literal,
     |$p:ident, $ti:ident| $levels:expr, |$fp:ident, $block:ident, $g:ident, $fti:ident| $factors:expr) => {
        impl NeonK for $kind {
            const AFFINE: bool = $affine;
            const SUB: bool = $sub;

            #[target_feature(enable = "neon")]
            #[inline]
            unsafe fn levels($p: &Planes<'_>, $ti: usize) -> [int8x16_t; 16] {
                // SAFETY: the caller's guarantee.
                unsafe { $levels }
            }

            #[target_feature(enable = "neon")]
            #[inline]
            #[allow(unused_variables)]
            unsafe fn factors($fp: &Planes<'_>, $block: usize, $g: usize, $fti: usize) -> KFactors {
                // SAFETY: the caller's guarantee (q5_1 has a mins plane).
                unsafe { $factors }
            }
        }
    };
}

/// Nibbles plus the 1-bit high plane, less `offset`.
///
/// # Safety
/// As [`NeonK::levels`].
#[target_feature(enable = "neon")]
#[inline]
unsafe fn five_bit(p: &Planes<'_>, ti: usize, offset: u8) -> [int8x16_t; 16] {
    // SAFETY: the caller's guarantee.
    unsafe {
        let mut w = nibbles(p, ti);
        add_high1(p, ti, &mut w);
        less(w, offset)
    }
}

neon_k!(Q5_0, affine: false, sub: false, |p, ti| five_bit(p, ti, quant::Q5_OFFSET as u8),
        |p, block, g, ti| scale_only(f16_rows(p.scales, ti)));
neon_k!(Q5_1, affine: true, sub: false, |p, ti| five_bit(p, ti, 0), |p, block, g, ti| {
    let mut f = scale_only(f16_rows(p.scales, ti));
    f.min = f16_rows(p.mins, ti);
    f
});
neon_k!(Q4K, affine: true, sub: false, |p, ti| less(nibbles(p, ti), 0), |p, block, g, ti| k_factors(p, block, g, ti));
neon_k!(Q5K, affine: true, sub: false, |p, ti| five_bit(p, ti, 0), |p, block, g, ti| k_factors(p, block, g, ti));
neon_k!(Q6K, affine: false, sub: true, |p, ti| {
    let mut w = nibbles(p, ti);
    add_high2(p, ti, &mut w);
    less(w, quant::Q6_OFFSET as u8)
}, |p, block, g, ti| q6_factors(p, block, g, ti));

/// q6k's factors: `d` per row, and the two int8 scales of each row (16
/// bytes per tile: row `r`'s at `2r`, `2r + 1`) deinterleaved into the
/// halves.
///
/// # Safety
/// As [`NeonK::levels`].
#[target_feature(enable = "neon")]
#[inline]
unsafe fn q6_factors(p: &Planes<'_>, block: usize, g: usize, ti: usize) -> KFactors {
    let at = p.super_at(block, g);
    // SAFETY: the caller's guarantee.
    unsafe {
        let (d_lo, d_hi) = load_f16x8(p.d.as_ptr().add(at));
        let pair = vld2_s8(p.sub.as_ptr().add(ti * 2 * ROW_BLOCK).cast());
        let widen = |v: int8x8_t| {
            let h = vmovl_s8(v);
            [vmovl_s16(vget_low_s16(h)), vmovl_high_s16(h)]
        };
        let mut f = scale_only([d_lo, d_hi]);
        f.sub = [widen(pair.0), widen(pair.1)];
        f
    }
}

/// Folds one group's exact half sums (elements 0..16 in `h0`, 16..32 in
/// `h1`; rows 0..4 and 4..8 each) into a token's accumulators as
/// `reference::matmul_q` does: `isum` is `sub0 * h0 + sub1 * h1` (q6k) or
/// `h0 + h1`; then `acc + isum * (scale * ad)`, or for the affine kinds
/// `acc + (isum * scale + s * min) * ad` (`s`: the activations' sum),
/// every step a separate f32 operation.
#[target_feature(enable = "neon")]
#[inline]
pub(crate) fn fold_k<K: NeonK>(
    acc: &mut [float32x4_t; 2],
    h0: [int32x4_t; 2],
    h1: [int32x4_t; 2],
    f: &KFactors,
    ad: f32,
    s: i32,
) {
    let adv = vdupq_n_f32(ad);
    for i in 0..2 {
        let isum = if K::SUB {
            vaddq_s32(vmulq_s32(f.sub[0][i], h0[i]), vmulq_s32(f.sub[1][i], h1[i]))
        } else {
            vaddq_s32(h0[i], h1[i])
        };
        let x = vcvtq_f32_s32(isum);
        acc[i] = if K::AFFINE {
            let t = vaddq_f32(vmulq_f32(x, f.scale[i]), vmulq_f32(vdupq_n_f32(s as f32), f.min[i]));
            vaddq_f32(acc[i], vmulq_f32(t, adv))
        } else {
            vaddq_f32(acc[i], vmulq_f32(x, vmulq_f32(f.scale[i], adv)))
        };
    }
}

/// Row `r` of a q5_0, q5_1, q4k, q5k or q6k matrix into `dst` (`cols`
/// floats), the values of `Matrix::dequantize_row` (the f32-activation
/// path): per group the row's four nibble words (low nibbles are elements
/// 0..16, high ones 16..32) and its high-plane word(s) give the 32 levels
/// in two vectors (a level's high bits found with `CMTST` against a byte
/// mask: 1-bit plane, byte `j % 4` bit `j / 4`; 2-bit plane, word `j / 16`,
/// byte `j % 4`, bits `2 ((j / 4) % 4)` and up), then the reference's
/// factors (`Matrix::factors`) and its float operations per element (no
/// fused multiply-add). Other types are left alone.
///
/// # Panics
/// If the planes do not hold row `r` (callers validate shapes).
///
/// # Safety
/// NEON present.
#[target_feature(enable = "neon")]
pub(crate) unsafe fn dequantize_planes_row(m: &crate::Matrix<'_>, r: usize, dst: &mut [f32]) {
    use crate::Weights;
    use ferrite_format::quant::GROUP;
    let (qs, qh, high_bits) = match m.w {
        Weights::Q5_0 { qs, qh, .. } | Weights::Q5_1 { qs, qh, .. } | Weights::Q5K { qs, qh, .. } => (qs, qh, 1),
        Weights::Q6K { qs, qh, .. } => (qs, qh, 2),
        Weights::Q4K { qs, .. } => (qs, &[][..], 0),
        _ => return,
    };
    let groups = m.cols.div_ceil(GROUP);
    let (block, rr) = (r / ROW_BLOCK, r % ROW_BLOCK);
    let word = |t: &[u8], at: usize| u32::from_le_bytes([t[at], t[at + 1], t[at + 2], t[at + 3]]);
    let bytes = |b: [u8; 16]| {
        // SAFETY: `b` holds 16 bytes.
        unsafe { vld1q_u8(b.as_ptr()) }
    };
    // Masks for elements 0..16 and 16..32.
    let bit1 = [bytes(core::array::from_fn(|j| 1 << (j / 4))), bytes(core::array::from_fn(|j| 1 << (4 + j / 4)))];
    let bit2 = bytes(core::array::from_fn(|j| 1 << (2 * ((j / 4) % 4))));
    let is_set = |v: uint8x16_t, mask: uint8x16_t, to: u8| vandq_u8(vtstq_u8(v, mask), vdupq_n_u8(to));
    let mut full = [0f32; GROUP];
    for (g, chunk) in dst.chunks_mut(GROUP).enumerate() {
        let ti = quant::tile_index(groups, block, g);
        let tile = &qs[ti * quant::Q4_TILE_BYTES..(ti + 1) * quant::Q4_TILE_BYTES];
        let w: [u32; 4] = core::array::from_fn(|c| word(tile, quant::tile_byte(c, rr, 0)));
        // SAFETY: `w` holds 16 bytes.
        let b = unsafe { vld1q_u8(w.as_ptr().cast()) };
        let mut levels = [vandq_u8(b, vdupq_n_u8(0x0F)), vshrq_n_u8::<4>(b)];
        if high_bits == 1 {
            let h = vreinterpretq_u8_u32(vdupq_n_u32(word(qh, ti * quant::CHUNK_BYTES + 4 * rr)));
            for (l, mask) in levels.iter_mut().zip(bit1) {
                *l = vorrq_u8(*l, is_set(h, mask, 0x10));
            }
        } else if high_bits == 2 {
            let at = ti * 2 * quant::CHUNK_BYTES + 4 * rr;
            for (half, l) in levels.iter_mut().enumerate() {
                let h = vreinterpretq_u8_u32(vdupq_n_u32(word(qh, at + half * quant::CHUNK_BYTES)));
                *l = vorrq_u8(*l, vorrq_u8(is_set(h, bit2, 0x10), is_set(h, vaddq_u8(bit2, bit2), 0x20)));
            }
        }
        let [f0, f1] = m.factors(r, g);
        let (f0v, f1v) = (vdupq_n_f32(f0), vdupq_n_f32(f1));
        for (half, &l) in levels.iter().enumerate() {
            let wide = [vmovl_u8(vget_low_u8(l)), vmovl_high_u8(l)];
            for (k, &h) in wide.iter().enumerate() {
                for (q, u) in [vmovl_u16(vget_low_u16(h)), vmovl_high_u16(h)].into_iter().enumerate() {
                    let i = vreinterpretq_s32_u32(u);
                    let v = match m.w {
                        Weights::Q5_0 { .. } => {
                            vmulq_f32(vcvtq_f32_s32(vsubq_s32(i, vdupq_n_s32(quant::Q5_OFFSET))), f0v)
                        }
                        Weights::Q5_1 { .. } => vaddq_f32(vmulq_f32(vcvtq_f32_s32(i), f0v), f1v),
                        Weights::Q6K { .. } => vmulq_f32(
                            if half == 0 { f0v } else { f1v },
                            vcvtq_f32_s32(vsubq_s32(i, vdupq_n_s32(quant::Q6_OFFSET))),
                        ),
                        _ => vsubq_f32(vmulq_f32(f0v, vcvtq_f32_s32(i)), f1v),
                    };
                    // SAFETY: `full` holds 32 floats, `16 half + 8k + 4q + 4 <= 32`.
                    unsafe { vst1q_f32(full.as_mut_ptr().add(16 * half + 8 * k + 4 * q), v) };
                }
            }
        }
        chunk.copy_from_slice(&full[..chunk.len()]);
    }
}
