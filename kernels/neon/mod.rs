//! aarch64 kernels in three tiers, each function the twin of one in
//! `reference.rs`:
//!
//! - **neon** (ARMv8.0 Advanced SIMD, every aarch64 core): the integer dot
//!   products widen with `SMULL`/`SMLAL` and pairwise-add with `SADALP`.
//! - **dotprod** (FEAT_DotProd): `SDOT` by element ([`dotprod`]).
//! - **i8mm** (FEAT_I8MM): `USDOT` by element for one token and `USMMLA`
//!   for pairs of tokens ([`i8mm`]).
//!
//! The float kernels (activation quantization, f32/f16 products, `dot`,
//! `axpy`, RMSNorm, the int8 KV cache's) are plain NEON and shared by the
//! three tables; RoPE and the f16 conversions of the KV cache are the
//! reference's for now (scalar, bit-identical by definition). Files:
//! `matmul.rs` (activation quantization, the plain integer product, the
//! float product), `vector.rs`, `attention.rs`, and the other two tiers'
//! integer products in `dotprod.rs` and `i8mm.rs`. Every integer product
//! is one loop per instruction generic over a [`matmul::NeonKind`] (how a
//! weight type's tile is unpacked).
//!
//! The integer matrix product works on the 8-row tiles of the file format
//! (`ferrite_format::quant`): a 32-byte chunk holds four quants of each of
//! eight rows, i.e. two 16-byte vectors (rows 0..4 and rows 4..8), so one
//! 4-byte dot instruction against four broadcast activations leaves four
//! rows' partial sums in four lanes. Per group the exact integer sums are
//! converted to f32 and accumulated as `acc + isum * (wd * ad)` (multiply,
//! then add: never fused), exactly as `reference::matmul_q`, so every tier
//! gives the same bits. Activations are those of `quantize_acts`
//! (-127..=127), which keeps the 16-bit sums of the plain tier from
//! overflowing even for a file whose q8 bytes reach -128.
//!
//! Stable Rust does not expose the `SDOT`/`USDOT`/`USMMLA` intrinsics
//! (`stdarch_neon_dotprod`, `stdarch_neon_i8mm`) nor NEON's f16 vector type,
//! so those instructions (and `FCVTL` for f16 → f32) are one-instruction
//! `asm!` blocks inside functions that carry the matching
//! `#[target_feature]`.
//!
//! Every `unsafe fn` here is `#[target_feature]` code: callers reach it
//! only through the [`NEON`]/[`DOTPROD`]/[`I8MM`] tables, which
//! `Kernels::for_tier` hands out only after [`has_neon`]/[`has_dotprod`]/
//! [`has_i8mm`] said yes.

use core::arch::aarch64::*;
use core::arch::asm;

use half::f16;

use crate::simd::vocabulary;
use crate::{Kernels, Tier, REFERENCE};

/// Defines `$name(acc, w, a) -> acc`, one multiply-accumulate instruction
/// (`$insn`, an `asm!` template over `acc`, `w`, `a` and, with `<L>`, the
/// lane `l`) in a function that enables `$feature`: the intrinsics are not
/// stable in Rust yet. Sound to call: the instruction is register-only (no
/// memory, stack or flags), and the function only runs where a table
/// checked the CPU has the feature.
macro_rules! mla_asm {
    ($(#[$attr:meta])* $name:ident<L>, $feature:literal, $insn:literal, $w:ty) => {
        $(#[$attr])*
        #[target_feature(enable = $feature)]
        #[inline]
        fn $name<const L: i32>(mut acc: int32x4_t, w: $w, a: int8x16_t) -> int32x4_t {
            // SAFETY: see the macro.
            unsafe {
                asm!($insn, acc = inout(vreg) acc, w = in(vreg) w, a = in(vreg) a, l = const L,
                     options(pure, nomem, nostack, preserves_flags))
            };
            acc
        }
    };
    ($(#[$attr:meta])* $name:ident, $feature:literal, $insn:literal, $w:ty) => {
        $(#[$attr])*
        #[target_feature(enable = $feature)]
        #[inline]
        fn $name(mut acc: int32x4_t, w: $w, a: int8x16_t) -> int32x4_t {
            // SAFETY: see the macro.
            unsafe {
                asm!($insn, acc = inout(vreg) acc, w = in(vreg) w, a = in(vreg) a,
                     options(pure, nomem, nostack, preserves_flags))
            };
            acc
        }
    };
}

/// Defines `$name::<K, T>`: rows `8 * block ..+8` × tokens `t0 ..+T` of a
/// `K` matrix with a by-element 4-way dot instruction `$dot::<LANE>(acc,
/// w, a)`, 16 per group and token (chunk `c` of rows 0..4 and of rows 4..8
/// times lane `c % 4` of the activations' first or second 16 bytes), over
/// the tile unpacked once per group as `|$u| $prepare`; unless `$signed`,
/// the sums are corrected by `K::OFFSET * sum(activations)`. Then each
/// group is scaled as `reference::matmul_q` does. One loop for every
/// weight type and both by-element tiers (dotprod's `SDOT`, i8mm's
/// `USDOT`), each instantiated with its own target features.
macro_rules! by_element_tiles {
    ($(#[$attr:meta])* $name:ident, $feature:literal, $dot:ident, signed: $signed:literal, |$u:ident| $prepare:expr) => {
        $(#[$attr])*
        #[target_feature(enable = $feature)]
        unsafe fn $name<K: NeonKind, const T: usize>(p: $crate::tiles::Planes<'_>, block: usize, t0: usize) -> [[f32; 8]; T] {
            let $crate::tiles::Planes { qs, scales, groups, acts, .. } = p;
            let off = if $signed { 0 } else { K::OFFSET as i32 };
            let mut acc = [[vdupq_n_f32(0.0); 2]; T];
            for g in 0..groups {
                let ti = quant::tile_index(groups, block, g);
                // SAFETY (loads below): `check_shapes` covered every tile of
                // the row blocks and every activation group of the tokens.
                let $u = unsafe { K::unpack(qs.as_ptr().add(ti * K::BYTES)) };
                let w = $prepare;
                let (wd_lo, wd_hi) = unsafe { load_f16x8(scales.as_ptr().add(ti * ROW_BLOCK)) };
                for (t, acc) in acc.iter_mut().enumerate() {
                    let ag = (t0 + t) * groups + g;
                    let a = unsafe { acts.qs.as_ptr().add(ag * GROUP) };
                    let (a0, a1) = unsafe { (vld1q_s8(a), vld1q_s8(a.add(16))) };
                    let z = vdupq_n_s32(0);
                    // Two accumulators per row half, to overlap latency.
                    let lo0 = $dot::<2>($dot::<0>(z, w[0], a0), w[4], a0);
                    let lo1 = $dot::<3>($dot::<1>(z, w[2], a0), w[6], a0);
                    let hi0 = $dot::<2>($dot::<0>(z, w[1], a0), w[5], a0);
                    let hi1 = $dot::<3>($dot::<1>(z, w[3], a0), w[7], a0);
                    let lo0 = $dot::<2>($dot::<0>(lo0, w[8], a1), w[12], a1);
                    let lo1 = $dot::<3>($dot::<1>(lo1, w[10], a1), w[14], a1);
                    let hi0 = $dot::<2>($dot::<0>(hi0, w[9], a1), w[13], a1);
                    let hi1 = $dot::<3>($dot::<1>(hi1, w[11], a1), w[15], a1);
                    let corr = vdupq_n_s32(off * acts.sums[ag]);
                    let lo = vsubq_s32(vaddq_s32(lo0, lo1), corr);
                    let hi = vsubq_s32(vaddq_s32(hi0, hi1), corr);
                    super::fold_group(acc, [lo, hi], (wd_lo, wd_hi), acts.d[ag]);
                }
            }
            super::token_lanes(&acc)
        }
    };
}

mod attention;
mod dotprod;
mod i8mm;
mod kquant;
mod matmul;
mod vector;

use attention::*;
use matmul::*;
use vector::*;

/// Advanced SIMD (present on every aarch64 Linux system; checked anyway).
pub(crate) fn has_neon() -> bool {
    #[cfg(feature = "std")]
    {
        std::arch::is_aarch64_feature_detected!("neon")
    }
    #[cfg(not(feature = "std"))]
    {
        cfg!(target_feature = "neon")
    }
}

/// NEON and the dot-product instructions (`SDOT`/`UDOT`).
pub(crate) fn has_dotprod() -> bool {
    #[cfg(feature = "std")]
    {
        has_neon() && std::arch::is_aarch64_feature_detected!("dotprod")
    }
    #[cfg(not(feature = "std"))]
    {
        has_neon() && cfg!(target_feature = "dotprod")
    }
}

/// NEON and the int8 matrix multiplies (`USDOT`, `SMMLA`, `USMMLA`).
pub(crate) fn has_i8mm() -> bool {
    #[cfg(feature = "std")]
    {
        has_neon() && std::arch::is_aarch64_feature_detected!("i8mm")
    }
    #[cfg(not(feature = "std"))]
    {
        has_neon() && cfg!(target_feature = "i8mm")
    }
}

tier! {
    /// Plain NEON: every kernel but RoPE and the f16 conversions (the
    /// reference's).
    pub(crate) const NEON = Tier::Neon, from REFERENCE, mod neon {
        quantize_acts, matmul_q, matmul_f, dot, dot_f16, axpy, axpy_f16, rmsnorm, softmax, swiglu,
        dot_rows, dot_rows_f16, dot_rows_q8, axpy_rows, axpy_rows_f16, axpy_rows_q8, quantize_rows_q8, round_q8,
    }
}

/// NEON with `SDOT`'s integer product.
pub(crate) const DOTPROD: Kernels = Kernels { tier: Tier::Dotprod, matmul_q: dotprod::matmul_q, ..NEON };

/// NEON with `USDOT`/`USMMLA`'s integer product.
pub(crate) const I8MM: Kernels = Kernels { tier: Tier::I8mm, matmul_q: i8mm::matmul_q, ..NEON };

/// Eight f16 values at `p` as two f32 vectors (`FCVTL`/`FCVTL2`: exact).
///
/// # Safety
/// 16 bytes must be readable at `p`; NEON present.
#[target_feature(enable = "neon")]
#[inline]
pub(crate) unsafe fn load_f16x8(p: *const f16) -> (float32x4_t, float32x4_t) {
    // SAFETY: the caller guarantees 16 readable bytes.
    let h = unsafe { vld1q_u16(p.cast()) };
    let (lo, hi): (float32x4_t, float32x4_t);
    // SAFETY: register-only instructions of base ARMv8 (no memory or
    // stack; a signalling NaN may set FPSR's invalid-operation bit, so the
    // flags are not declared preserved); `out` (not `lateout`) keeps `lo`
    // from sharing `h`'s register, which the second instruction still reads.
    unsafe {
        asm!(
            "fcvtl {lo:v}.4s, {h:v}.4h",
            "fcvtl2 {hi:v}.4s, {h:v}.8h",
            h = in(vreg) h,
            lo = out(vreg) lo,
            hi = out(vreg) hi,
            options(pure, nomem, nostack)
        )
    };
    (lo, hi)
}

/// Four f16 values at `p` as f32 (`FCVTL`: exact).
///
/// # Safety
/// 8 bytes must be readable at `p`; NEON present.
#[target_feature(enable = "neon")]
#[inline]
pub(crate) unsafe fn load_f16x4(p: *const f16) -> float32x4_t {
    // SAFETY: the caller guarantees 8 readable bytes.
    let h = unsafe { vld1_u16(p.cast()) };
    let v: float32x4_t;
    // SAFETY: a register-only instruction of base ARMv8 (flags: as in
    // `load_f16x8`).
    unsafe { asm!("fcvtl {v:v}.4s, {h:v}.4h", h = in(vreg) h, v = out(vreg) v, options(pure, nomem, nostack)) };
    v
}

/// The eight lanes of two vectors.
#[target_feature(enable = "neon")]
#[inline]
pub(crate) fn lanes(lo: float32x4_t, hi: float32x4_t) -> [f32; 8] {
    let mut o = [0f32; 8];
    // SAFETY: `o` has 8 floats.
    unsafe {
        vst1q_f32(o.as_mut_ptr(), lo);
        vst1q_f32(o.as_mut_ptr().add(4), hi);
    }
    o
}

/// One group's exact sums of rows 0..4 and 4..8 (`isum`) folded into a
/// token's accumulators as `reference::matmul_q` does: `acc + isum as f32 *
/// (wd * ad)`, not fused (`wd`: the rows' scales, `ad`: the token's).
#[target_feature(enable = "neon")]
#[inline]
pub(crate) fn fold_group(acc: &mut [float32x4_t; 2], isum: [int32x4_t; 2], wd: (float32x4_t, float32x4_t), ad: f32) {
    let ad = vdupq_n_f32(ad);
    acc[0] = vaddq_f32(acc[0], vmulq_f32(vcvtq_f32_s32(isum[0]), vmulq_f32(wd.0, ad)));
    acc[1] = vaddq_f32(acc[1], vmulq_f32(vcvtq_f32_s32(isum[1]), vmulq_f32(wd.1, ad)));
}

/// Each token's two accumulators as the 8 rows' lanes.
#[target_feature(enable = "neon")]
#[inline]
pub(crate) fn token_lanes<const T: usize>(acc: &[[float32x4_t; 2]; T]) -> [[f32; 8]; T] {
    let mut out = [[0f32; 8]; T];
    for (o, &[lo, hi]) in out.iter_mut().zip(acc) {
        *o = lanes(lo, hi);
    }
    out
}

/// The four lanes of `v`.
#[target_feature(enable = "neon")]
#[inline]
fn lanes4(v: float32x4_t) -> [f32; 4] {
    let mut o = [0f32; 4];
    // SAFETY: `o` has 4 floats.
    unsafe { vst1q_f32(o.as_mut_ptr(), v) };
    o
}

/// Sums four accumulators' lanes.
#[target_feature(enable = "neon")]
#[inline]
pub(crate) fn hsum4(acc: &[float32x4_t; 4]) -> f32 {
    vaddvq_f32(vaddq_f32(vaddq_f32(acc[0], acc[1]), vaddq_f32(acc[2], acc[3])))
}

vocabulary! {
    /// The tier's vector vocabulary for the loops every SIMD tier shares
    /// (`crate::simd`): 4 f32 lanes in a `float32x4_t`.
    feature: "neon", F = float32x4_t, N = 4;
    uses {
        use core::arch::aarch64::*;
        use half::f16;
    }
    fns {
        fn zero() -> F = vdupq_n_f32(0.0);
        fn splat(x: f32) -> F = vdupq_n_f32(x);
        fn add(a: F, b: F) -> F = vaddq_f32(a, b);
        fn sub(a: F, b: F) -> F = vsubq_f32(a, b);
        fn mul(a: F, b: F) -> F = vmulq_f32(a, b);
        /// `max(a, b)` (`FMAX`: NaN when either is).
        fn max(a: F, b: F) -> F = vmaxq_f32(a, b);
        /// `acc + a * b`, fused.
        fn fma(acc: F, a: F, b: F) -> F = vfmaq_f32(acc, a, b);
        fn lanes(v: F) -> [f32; N] = super::lanes4(v);
        /// The largest lane (`FMAXV`).
        fn hmax(v: F) -> f32 = vmaxvq_f32(v);
        fn hsum(v: F) -> f32 = vaddvq_f32(v);
        /// The sum of `dot`'s accumulators.
        fn hsum_acc(acc: &[F; 16 / N]) -> f32 = super::hsum4(acc);
    }
    unsafe_fns {
        fn load(p: *const f32) -> F = vld1q_f32(p);
        /// 4 f16 (8 bytes) as f32.
        fn load_f16(p: *const f16) -> F = super::load_f16x4(p);
        fn store(p: *mut f32, v: F) = vst1q_f32(p, v);
    }
}
