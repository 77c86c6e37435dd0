//! The AVX2 tier's vector kernels: dot products and `axpy` (f32 and f16),
//! RMSNorm, softmax and SwiGLU with a polynomial `exp`, RoPE and the f16
//! conversions.

use core::arch::x86_64::*;

use half::f16;

use super::v;
use crate::simd::vector_kernels;

vector_kernels!(pub(super), feature: "avx2,fma,f16c", cpu: "AVX2, FMA and F16C");

/// `exp(x)` on 8 lanes: `x = n ln2 + r` (`|r| <= ln2 / 2`, Cody-Waite
/// split), `exp(r)` by a degree-6 polynomial, `2^n` through the exponent
/// bits. Relative error within a few ulp of `expf` over the clamped range
/// [-87.3, 88]; below it the result is 0 (softmax weights of far-off
/// keys), above it `exp(88)` (SiLU of inputs below -88 is then -0).
#[target_feature(enable = "avx2,fma")]
#[inline]
fn exp(x: __m256) -> __m256 {
    let lo = _mm256_set1_ps(-87.33);
    let x = _mm256_min_ps(_mm256_max_ps(x, lo), _mm256_set1_ps(88.0));
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        x,
        _mm256_set1_ps(core::f32::consts::LOG2_E),
    ));
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_359_4), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.121_944_4e-4), r);
    let mut p = _mm256_set1_ps(1.987_569_1e-4);
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.398_199_9e-3));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(8.333_452e-3));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(4.166_579_6e-2));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.666_666_5e-1));
    p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(0.5));
    p = _mm256_fmadd_ps(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, _mm256_set1_ps(1.0)));
    let bits = _mm256_slli_epi32::<23>(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)));
    let y = _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
    // Flush what the clamp made tiny to an exact 0.
    _mm256_and_ps(y, _mm256_cmp_ps::<_CMP_GT_OQ>(x, lo))
}

/// SiLU of `g` (with [`exp`]) times `u`, for `swiglu`.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn swiglu_step(g: __m256, u: __m256) -> __m256 {
    let e = exp(_mm256_sub_ps(_mm256_setzero_ps(), g));
    _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(_mm256_set1_ps(1.0), e)), u)
}

/// `reference::rope_with`, 8 pairs at a time (the same products and
/// differences, not fused).
///
/// # Safety
/// The CPU has avx2, fma (the tier's detection).
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn rope(head: &mut [f32], cs: &[f32]) {
    let half = cs.len() / 2;
    assert!(head.len() >= 2 * half, "head shorter than the table");
    let mut i = 0;
    // SAFETY (loads/stores): `i + 8 <= half`, and `head`/`cs` hold `2 * half`.
    while i + 8 <= half {
        unsafe {
            let (c, s) = (_mm256_loadu_ps(cs.as_ptr().add(i)), _mm256_loadu_ps(cs.as_ptr().add(half + i)));
            let (pa, pb) = (head.as_mut_ptr().add(i), head.as_mut_ptr().add(half + i));
            let (a, b) = (_mm256_loadu_ps(pa), _mm256_loadu_ps(pb));
            _mm256_storeu_ps(pa, _mm256_sub_ps(_mm256_mul_ps(a, c), _mm256_mul_ps(b, s)));
            _mm256_storeu_ps(pb, _mm256_add_ps(_mm256_mul_ps(b, c), _mm256_mul_ps(a, s)));
        }
        i += 8;
    }
    for j in i..half {
        let (c, s) = (cs[j], cs[half + j]);
        let (a, b) = (head[j], head[j + half]);
        head[j] = a * c - b * s;
        head[j + half] = b * c + a * s;
    }
}

/// f32 to f16 with F16C (round to nearest even, as `half`).
///
/// # Safety
/// The CPU has avx2, f16c (the tier's detection).
#[target_feature(enable = "avx2,f16c")]
pub(super) unsafe fn to_f16(src: &[f32], dst: &mut [f16]) {
    let n = src.len().min(dst.len());
    let mut i = 0;
    // SAFETY: `i + 8 <= n` for both slices; 8 f16 are 16 bytes.
    while i + 8 <= n {
        unsafe {
            let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(src.as_ptr().add(i)));
            _mm_storeu_si128(dst.as_mut_ptr().add(i).cast(), h);
        }
        i += 8;
    }
    for j in i..n {
        dst[j] = f16::from_f32(src[j]);
    }
}

/// Rounds to f16 precision in place with F16C.
///
/// # Safety
/// The CPU has avx2, f16c (the tier's detection).
#[target_feature(enable = "avx2,f16c")]
pub(super) unsafe fn round_f16(x: &mut [f32]) {
    let n = x.len();
    let mut i = 0;
    // SAFETY: `i + 8 <= n`.
    while i + 8 <= n {
        unsafe {
            let p = x.as_mut_ptr().add(i);
            let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(p));
            _mm256_storeu_ps(p, _mm256_cvtph_ps(h));
        }
        i += 8;
    }
    for v in &mut x[i..] {
        *v = f16::from_f32(*v).to_f32();
    }
}
