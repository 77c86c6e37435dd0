//! The AVX2 tier's attention kernels: scores of a query over key rows and
//! weighted sums of value rows, over f32, f16 and int8 rows, and the int8
//! quantization of KV rows. Per row each kernel does exactly [`dot`]'s /
//! [`axpy`]'s arithmetic on the row's f32 values, so a key or value scores
//! and sums the same from the cache (f16 or int8) and from the batch's f32
//! buffers rounded to the cache's precision.
//!
//! [`dot`]: super::vector::dot
//! [`axpy`]: super::vector::axpy

use core::arch::x86_64::*;

use half::f16;

use super::{hsum, v};
use crate::rows::{axpy_rows_kernels, q8_rows_kernels};
use crate::Q8Rows;

/// Scores of one query over keys `stride` apart: per key exactly [`dot`]'s
/// arithmetic, four keys interleaved.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C (the tier's detection).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_rows(q: &[f32], k: &[f32], stride: usize, scale: f32, out: &mut [f32]) {
    // SAFETY: loads read `k[i * stride + j..+8]` with `j + 8 <= hd`, inside
    // `k` (checked in `dot_rows_with`).
    unsafe {
        dot_rows_with(
            q,
            stride,
            scale,
            out,
            k.len(),
            |i, j| v::load(k.as_ptr().add(i * stride + j)),
            |i, j| k[i * stride + j],
        )
    }
}

/// [`dot_rows`] over f16 keys: per key exactly [`dot_f16`]'s arithmetic.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C (the tier's detection).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_rows_f16(q: &[f32], k: &[f16], stride: usize, scale: f32, out: &mut [f32]) {
    // SAFETY: as in `dot_rows`; 8 f16 are 16 bytes.
    unsafe {
        dot_rows_with(
            q,
            stride,
            scale,
            out,
            k.len(),
            |i, j| v::load_f16(k.as_ptr().add(i * stride + j)),
            |i, j| k[i * stride + j].to_f32(),
        )
    }
}

/// The loop of [`dot_rows`] over rows whose 8 values at `(row i, j)` are
/// `load8(i, j)` (one value: `load1`).
///
/// # Safety
/// `load8(i, j)` must be sound for `i < out.len()`, `j + 8 <= q.len()`
/// whenever `(out.len() - 1) * stride + q.len() <= k_len`; the CPU has
/// AVX2, FMA and F16C.
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn dot_rows_with(
    q: &[f32],
    stride: usize,
    scale: f32,
    out: &mut [f32],
    k_len: usize,
    load8: impl Fn(usize, usize) -> __m256,
    load1: impl Fn(usize, usize) -> f32,
) {
    let hd = q.len();
    let n = out.len();
    if n == 0 {
        return;
    }
    let end = (n - 1).checked_mul(stride).and_then(|e| e.checked_add(hd));
    assert!(end.is_some_and(|e| e <= k_len), "key rows out of bounds");
    // SAFETY (q loads): `j + 8 <= hd`.
    let ql = |j: usize| unsafe { _mm256_loadu_ps(q.as_ptr().add(j)) };
    let one = |i: usize| {
        let mut acc = [_mm256_setzero_ps(); 2];
        let mut j = 0;
        while j + 16 <= hd {
            acc[0] = _mm256_fmadd_ps(ql(j), load8(i, j), acc[0]);
            acc[1] = _mm256_fmadd_ps(ql(j + 8), load8(i, j + 8), acc[1]);
            j += 16;
        }
        if j + 8 <= hd {
            acc[0] = _mm256_fmadd_ps(ql(j), load8(i, j), acc[0]);
            j += 8;
        }
        let mut s = hsum(_mm256_add_ps(acc[0], acc[1]));
        for jj in j..hd {
            s += q[jj] * load1(i, jj);
        }
        scale * s
    };
    let mut i = 0;
    while i + 4 <= n {
        let mut acc = [[_mm256_setzero_ps(); 2]; 4];
        let mut j = 0;
        while j + 16 <= hd {
            let (q0, q1) = (ql(j), ql(j + 8));
            for (r, a) in acc.iter_mut().enumerate() {
                a[0] = _mm256_fmadd_ps(q0, load8(i + r, j), a[0]);
                a[1] = _mm256_fmadd_ps(q1, load8(i + r, j + 8), a[1]);
            }
            j += 16;
        }
        if j + 8 <= hd {
            let q0 = ql(j);
            for (r, a) in acc.iter_mut().enumerate() {
                a[0] = _mm256_fmadd_ps(q0, load8(i + r, j), a[0]);
            }
            j += 8;
        }
        for (r, a) in acc.iter().enumerate() {
            let mut s = hsum(_mm256_add_ps(a[0], a[1]));
            for jj in j..hd {
                s += q[jj] * load1(i + r, jj);
            }
            out[i + r] = scale * s;
        }
        i += 4;
    }
    while i < n {
        out[i] = one(i);
        i += 1;
    }
}

axpy_rows_kernels!(pub(super), feature: "avx2,fma,f16c", cpu: "AVX2, FMA and F16C", load_q8: load_q8);

/// [`dot_rows`] over int8 keys: each key's 8 values at a time are
/// `q as f32 * scale` (the values [`round_q8`] gives fresh keys).
///
/// # Safety
/// The CPU has AVX2, FMA and F16C (the tier's detection).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_rows_q8(q: &[f32], k: Q8Rows<'_>, scale: f32, out: &mut [f32]) {
    assert!(k.holds(out.len(), q.len()), "key rows out of bounds");
    // SAFETY: loads read `k.qs[i * stride + j..+8]` with `j + 8 <= hd` and
    // `i < out.len()`, inside `k.qs` (checked above and in
    // `dot_rows_with`), and scale `i * scale_stride`, inside `k.scales`
    // (checked above).
    unsafe {
        dot_rows_with(
            q,
            k.stride,
            scale,
            out,
            k.qs.len(),
            |i, j| load_q8(k.qs.as_ptr().add(i * k.stride + j), *k.scales.get_unchecked(i * k.scale_stride)),
            |i, j| k.qs[i * k.stride + j] as f32 * k.scales[i * k.scale_stride],
        )
    }
}

/// Eight int8 values at `p` times `scale` (exact conversions, one f32
/// product each).
///
/// # Safety
/// 8 bytes readable at `p`; the CPU has AVX2.
#[target_feature(enable = "avx2")]
#[inline]
unsafe fn load_q8(p: *const i8, scale: f32) -> __m256 {
    // SAFETY: 8 readable bytes (the caller's guarantee).
    let b = unsafe { _mm_loadl_epi64(p.cast()) };
    _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(b)), _mm256_set1_ps(scale))
}

/// `reference::quant_kv` on 8 lanes of `x * inv`: round half away from
/// zero (truncate, then step away where the dropped part is at least one
/// half; both exact), clamp to -127..=127; a NaN stays NaN, a zero keeps
/// its sign.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn quant_kv8(v: __m256) -> __m256 {
    let sign = _mm256_set1_ps(-0.0);
    let t = _mm256_round_ps::<{ _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC }>(v);
    let dropped = _mm256_andnot_ps(sign, _mm256_sub_ps(v, t));
    let away = _mm256_cmp_ps::<_CMP_GE_OQ>(dropped, _mm256_set1_ps(0.5));
    let stepped = _mm256_add_ps(t, _mm256_or_ps(_mm256_and_ps(v, sign), _mm256_set1_ps(1.0)));
    let r = _mm256_blendv_ps(t, stepped, away);
    // `max(a, b)`/`min(a, b)` return `b` when either is NaN.
    _mm256_min_ps(_mm256_set1_ps(127.0), _mm256_max_ps(_mm256_set1_ps(-127.0), r))
}

/// A row's int8 scale and its inverse, as `reference::act_scale`: the max
/// of `|x|` from 0 (`max(|x|, acc)` keeps `acc` for a NaN, as `f32::max`).
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn kv_scale(row: &[f32]) -> (f32, f32) {
    let abs = _mm256_castsi256_ps(_mm256_set1_epi32(0x7FFF_FFFF));
    let mut m = _mm256_setzero_ps();
    let full = row.len() / 8 * 8;
    for j in (0..full).step_by(8) {
        // SAFETY: `j + 8 <= row.len()`.
        m = _mm256_max_ps(_mm256_and_ps(unsafe { _mm256_loadu_ps(row.as_ptr().add(j)) }, abs), m);
    }
    let amax = super::lanes(m).iter().chain(&row[full..]).fold(0.0f32, |a, &x| a.max(x.abs()));
    crate::reference::int8_scale(amax)
}

q8_rows_kernels!(pub(super), feature: "avx2,fma,f16c", cpu: "AVX2, FMA and F16C");

/// The int8 levels of the 8 values at `x` times `inv` stored at `q`
/// (`reference::quant_kv`; a NaN stored as 0, as `NaN as i8`).
///
/// # Safety
/// 8 floats readable at `x`, 8 bytes writable at `q`; the CPU has AVX2 and
/// FMA.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn quantize_chunk(x: *const f32, inv: f32, q: *mut i8) {
    // SAFETY: 8 readable floats (the caller's guarantee).
    let r = quant_kv8(_mm256_mul_ps(unsafe { _mm256_loadu_ps(x) }, _mm256_set1_ps(inv)));
    // NaN converts to i32::MIN: stored as 0, as `NaN as i8`.
    let ord = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_ORD_Q>(r, r));
    let v = _mm256_and_si256(_mm256_cvtps_epi32(r), ord);
    let w = _mm_packs_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    // SAFETY: 8 writable bytes (the caller's guarantee).
    unsafe { _mm_storel_epi64(q.cast(), _mm_packs_epi16(w, w)) };
}

/// The 8 values at `p` rounded in place to their int8 levels (of `x *
/// inv`) times `d`.
///
/// # Safety
/// 8 floats readable and writable at `p`; the CPU has AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn round_chunk(p: *mut f32, inv: f32, d: f32) {
    // SAFETY: 8 readable and writable floats (the caller's guarantee).
    unsafe {
        let r = quant_kv8(_mm256_mul_ps(_mm256_loadu_ps(p), _mm256_set1_ps(inv)));
        // The stored level as f32: +0 for a zero level, 0 for NaN.
        let r = _mm256_and_ps(_mm256_add_ps(r, _mm256_setzero_ps()), _mm256_cmp_ps::<_CMP_ORD_Q>(r, r));
        _mm256_storeu_ps(p, _mm256_mul_ps(r, _mm256_set1_ps(d)));
    }
}
