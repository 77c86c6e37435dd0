//! The NEON vector kernels: dot products and `axpy` (f32 and f16),
//! RMSNorm, softmax and SwiGLU with a polynomial `exp`.

// Scalar tails index like the vector code next to them.
#![allow(clippy::needless_range_loop)]

use core::arch::aarch64::*;

use super::v;
use crate::simd::vector_kernels;

vector_kernels!(pub(crate), feature: "neon", cpu: "NEON");

/// `exp(x)` on 4 lanes: `x = n ln2 + r` (`|r| <= ln2 / 2`, Cody-Waite
/// split), `exp(r)` by a degree-6 polynomial, `2^n` through the exponent
/// bits; the same constants and clamping as the x86 tiers. Relative error
/// within a few ulp of `expf` over the clamped range [-87.33, 88]; below it
/// (and for NaN) the result is 0, above it `exp(88)`.
#[target_feature(enable = "neon")]
#[inline]
fn exp(x: float32x4_t) -> float32x4_t {
    let lo = vdupq_n_f32(-87.33);
    // `FMAXNM`/`FMINNM`: a NaN becomes `lo`, then 0 below.
    let x = vminnmq_f32(vmaxnmq_f32(x, lo), vdupq_n_f32(88.0));
    let n = vrndnq_f32(vmulq_f32(x, vdupq_n_f32(core::f32::consts::LOG2_E)));
    let r = vfmsq_f32(x, n, vdupq_n_f32(0.693_359_4));
    let r = vfmsq_f32(r, n, vdupq_n_f32(-2.121_944_4e-4));
    let mut p = vdupq_n_f32(1.987_569_1e-4);
    p = vfmaq_f32(vdupq_n_f32(1.398_199_9e-3), p, r);
    p = vfmaq_f32(vdupq_n_f32(8.333_452e-3), p, r);
    p = vfmaq_f32(vdupq_n_f32(4.166_579_6e-2), p, r);
    p = vfmaq_f32(vdupq_n_f32(1.666_666_5e-1), p, r);
    p = vfmaq_f32(vdupq_n_f32(0.5), p, r);
    p = vfmaq_f32(vaddq_f32(r, vdupq_n_f32(1.0)), p, vmulq_f32(r, r));
    // `n` is a whole number in -126..=127: the biased exponent 1..=254.
    let bits = vshlq_n_s32::<23>(vaddq_s32(vcvtq_s32_f32(n), vdupq_n_s32(127)));
    let y = vmulq_f32(p, vreinterpretq_f32_s32(bits));
    // Flush what the clamp made tiny to an exact 0.
    vreinterpretq_f32_u32(vandq_u32(vreinterpretq_u32_f32(y), vcgtq_f32(x, lo)))
}

/// SiLU of `g` (with [`exp`]) times `u`, for `swiglu`.
#[target_feature(enable = "neon")]
#[inline]
fn swiglu_step(g: float32x4_t, u: float32x4_t) -> float32x4_t {
    vmulq_f32(vdivq_f32(g, vaddq_f32(vdupq_n_f32(1.0), exp(vnegq_f32(g)))), u)
}
