//! x86-64 kernels: an AVX2 tier (AVX2 + FMA + F16C) and an AVX-512 tier
//! (AVX-512 F/BW/VL + VNNI), each function the twin of one in
//! `reference.rs`.
//!
//! - `matmul.rs`: activation quantization and the matrix products. The
//!   integer product works on the 8-row tiles of the file format
//!   (`ferrite_format::quant`): one 32-byte load holds four quants of each
//!   of eight rows, so one `pmaddubsw` (AVX2) or `vpdpbusd` (VNNI)
//!   multiplies them by four broadcast activations and leaves eight rows'
//!   partial sums in eight lanes; no horizontal sums. Per group, the lanes
//!   are corrected for the unsigned storage (`- offset * sum(activations)`),
//!   converted to f32 and scaled exactly as `reference::matmul_q` does, so
//!   every tier gives the same bits. One tile loop serves every weight
//!   type: a type is a [`matmul::TileKind`] (how a tile is unpacked).
//! - `vector.rs`: dot products, `axpy`, RMSNorm, softmax/SwiGLU with a
//!   polynomial `exp`, RoPE and the f16 conversions.
//! - `attention.rs`: scores and weighted sums over f32, f16 and int8 KV
//!   rows, and the int8 quantization of KV rows.
//! - `avx512.rs`: the AVX-512 tier's integer product (VNNI); its table is
//!   the AVX2 one with that entry replaced.
//!
//! Every `unsafe fn` here is `#[target_feature]` code: callers reach it
//! only through the [`AVX2`]/[`AVX512`] tables, which `Kernels::for_tier`
//! hands out only after [`has_avx2`]/[`has_avx512`] said yes.

// Scalar tails index like the vector code next to them.
#![allow(clippy::needless_range_loop)]

use core::arch::x86_64::*;

use crate::simd::vocabulary;
use crate::{Kernels, Tier, REFERENCE};

mod attention;
mod avx512;
mod matmul;
mod vector;

use attention::*;
use matmul::*;
use vector::*;

/// AVX2, FMA and F16C.
pub(crate) fn has_avx2() -> bool {
    #[cfg(feature = "std")]
    {
        std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(feature = "std"))]
    {
        cfg!(all(target_feature = "avx2", target_feature = "fma", target_feature = "f16c"))
    }
}

/// The AVX2 tier plus AVX-512 F/BW/VL and VNNI.
pub(crate) fn has_avx512() -> bool {
    #[cfg(feature = "std")]
    {
        has_avx2()
            && std::is_x86_feature_detected!("avx512f")
            && std::is_x86_feature_detected!("avx512bw")
            && std::is_x86_feature_detected!("avx512vl")
            && std::is_x86_feature_detected!("avx512vnni")
    }
    #[cfg(not(feature = "std"))]
    {
        has_avx2()
            && cfg!(all(
                target_feature = "avx512f",
                target_feature = "avx512bw",
                target_feature = "avx512vl",
                target_feature = "avx512vnni"
            ))
    }
}

tier! {
    /// AVX2 + FMA + F16C: every kernel.
    pub(crate) const AVX2 = Tier::Avx2, from REFERENCE, mod avx2 {
        quantize_acts, matmul_q, matmul_f, dot, dot_f16, axpy, axpy_f16, rmsnorm, softmax, swiglu,
        dot_rows, dot_rows_f16, dot_rows_q8, axpy_rows, axpy_rows_f16, axpy_rows_q8, quantize_rows_q8, round_q8,
        rope, to_f16, round_f16,
    }
}

/// AVX-512: the AVX2 tier with VNNI's integer product and a q4/q4a float
/// product over zmm table lookups (the other float kernels measured no
/// faster in zmm on the memory-bound decode path).
pub(crate) const AVX512: Kernels =
    Kernels { tier: Tier::Avx512, matmul_q: avx512::matmul_q, matmul_f: avx512::matmul_f, ..AVX2 };

/// The 8 lanes of `v`.
#[target_feature(enable = "avx2")]
#[inline]
pub(crate) fn lanes(v: __m256) -> [f32; 8] {
    let mut o = [0f32; 8];
    // SAFETY: `o` has 8 floats.
    unsafe { _mm256_storeu_ps(o.as_mut_ptr(), v) };
    o
}

/// Horizontal sum of 8 lanes.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn hsum(v: __m256) -> f32 {
    let lo = _mm256_castps256_ps128(v);
    let hi = _mm256_extractf128_ps::<1>(v);
    let s = _mm_add_ps(lo, hi);
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s));
    _mm_cvtss_f32(s)
}

vocabulary! {
    /// The tier's vector vocabulary for the loops every SIMD tier shares
    /// (`crate::simd`): 8 f32 lanes in a `__m256`.
    feature: "avx2,fma,f16c", F = __m256, N = 8;
    uses {
        use core::arch::x86_64::*;
        use half::f16;
    }
    fns {
        fn zero() -> F = _mm256_setzero_ps();
        fn splat(x: f32) -> F = _mm256_set1_ps(x);
        fn add(a: F, b: F) -> F = _mm256_add_ps(a, b);
        fn sub(a: F, b: F) -> F = _mm256_sub_ps(a, b);
        fn mul(a: F, b: F) -> F = _mm256_mul_ps(a, b);
        /// `max(a, b)` (`b` when either is NaN).
        fn max(a: F, b: F) -> F = _mm256_max_ps(a, b);
        /// `acc + a * b`, fused.
        fn fma(acc: F, a: F, b: F) -> F = _mm256_fmadd_ps(a, b, acc);
        fn lanes(v: F) -> [f32; N] = super::lanes(v);
        /// The largest lane, from -inf (`f32::max`: a NaN lane loses).
        fn hmax(v: F) -> f32 = lanes(v).iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
        fn hsum(v: F) -> f32 = super::hsum(v);
        /// The sum of `dot`'s accumulators.
        fn hsum_acc(acc: &[F; 16 / N]) -> f32 = hsum(add(acc[0], acc[1]));
    }
    unsafe_fns {
        fn load(p: *const f32) -> F = _mm256_loadu_ps(p);
        /// 8 f16 (16 bytes) as f32.
        fn load_f16(p: *const f16) -> F = _mm256_cvtph_ps(_mm_loadu_si128(p.cast()));
        fn store(p: *mut f32, v: F) = _mm256_storeu_ps(p, v);
    }
}
