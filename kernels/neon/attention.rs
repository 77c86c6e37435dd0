//! The NEON attention kernels: scores of a query over key rows and
//! weighted sums of value rows, over f32, f16 and int8 rows, and the int8
//! quantization of KV rows. Per row each kernel does exactly [`dot`]'s /
//! [`axpy`]'s arithmetic on the row's f32 values, so a key or value scores
//! and sums the same from the cache and from the batch's f32 buffers
//! rounded to the cache's precision.

// Scalar tails index like the vector code next to them.
#![allow(clippy::needless_range_loop)]

use core::arch::aarch64::*;

use half::f16;

use super::v;
use super::vector::{dot, dot_by, dot_f16};
use crate::rows::{axpy_rows_kernels, q8_rows_kernels};
use crate::Q8Rows;

/// Scores of one query over keys `stride` apart: `scale * dot(q, key)`
/// with exactly [`dot`]'s arithmetic per key.
///
/// # Safety
/// The CPU has NEON (the tier's detection).
#[target_feature(enable = "neon")]
pub(crate) unsafe fn dot_rows(q: &[f32], k: &[f32], stride: usize, scale: f32, out: &mut [f32]) {
    let hd = q.len();
    for (i, o) in out.iter_mut().enumerate() {
        // SAFETY: NEON present (module invariant).
        *o = scale * unsafe { dot(q, &k[i * stride..i * stride + hd]) };
    }
}

/// [`dot_rows`] over f16 keys: [`dot_f16`] per key.
///
/// # Safety
/// The CPU has NEON (the tier's detection).
#[target_feature(enable = "neon")]
pub(crate) unsafe fn dot_rows_f16(q: &[f32], k: &[f16], stride: usize, scale: f32, out: &mut [f32]) {
    let hd = q.len();
    for (i, o) in out.iter_mut().enumerate() {
        // SAFETY: NEON present (module invariant).
        *o = scale * unsafe { dot_f16(q, &k[i * stride..i * stride + hd]) };
    }
}

axpy_rows_kernels!(pub(crate), feature: "neon", cpu: "NEON", load_q8: load_q8x4);

/// [`dot_rows`] over int8 keys: each key's values `q as f32 * scale`
/// (those [`round_q8`] gives fresh keys) in [`dot`]'s order.
///
/// # Safety
/// The CPU has NEON (the tier's detection).
#[target_feature(enable = "neon")]
pub(crate) unsafe fn dot_rows_q8(q: &[f32], k: Q8Rows<'_>, scale: f32, out: &mut [f32]) {
    let hd = q.len();
    assert!(k.holds(out.len(), hd), "key rows out of bounds");
    for (i, o) in out.iter_mut().enumerate() {
        let (row, s) = (&k.qs[i * k.stride..i * k.stride + hd], k.scales[i * k.scale_stride]);
        // SAFETY: `dot_by` loads `row[j..j + 4]` with `j + 4 <= hd`.
        *o = scale * unsafe { dot_by(q, |j| load_q8x4(row.as_ptr().add(j), s), |j| row[j] as f32 * s) };
    }
}

/// Four int8 values at `p` times `scale` (exact conversions, one f32
/// product each).
///
/// # Safety
/// 4 bytes readable at `p`; NEON present.
#[target_feature(enable = "neon")]
#[inline]
unsafe fn load_q8x4(p: *const i8, scale: f32) -> float32x4_t {
    // SAFETY: 4 readable bytes (the caller's guarantee).
    let w = unsafe { p.cast::<u32>().read_unaligned() };
    let b = vreinterpret_s8_u32(vdup_n_u32(w));
    vmulq_n_f32(vcvtq_f32_s32(vmovl_s16(vget_low_s16(vmovl_s8(b)))), scale)
}

/// `reference::quant_kv` on 4 lanes of `x * inv`: `FRINTA` (round half
/// away from zero, as `roundf`), clamped with `FMAX`/`FMIN` (a NaN stays
/// NaN), then converted (`FCVTZS`: exact; NaN gives 0, as `NaN as i8`).
#[target_feature(enable = "neon")]
#[inline]
fn quant_kv4(v: float32x4_t) -> int32x4_t {
    let r = vminq_f32(vmaxq_f32(vrndaq_f32(v), vdupq_n_f32(-127.0)), vdupq_n_f32(127.0));
    vcvtq_s32_f32(r)
}

/// A row's int8 scale and its inverse, as `reference::act_scale` (`FMAXNM`:
/// a NaN loses, as in `f32::max`).
///
/// # Safety
/// NEON present.
#[target_feature(enable = "neon")]
#[inline]
unsafe fn kv_scale(row: &[f32]) -> (f32, f32) {
    let full = row.len() / 4 * 4;
    let mut m = vdupq_n_f32(0.0);
    for j in (0..full).step_by(4) {
        // SAFETY: `j + 4 <= row.len()`.
        m = vmaxnmq_f32(m, vabsq_f32(unsafe { vld1q_f32(row.as_ptr().add(j)) }));
    }
    let amax = row[full..].iter().fold(vmaxnmvq_f32(m), |a, &x| a.max(x.abs()));
    crate::reference::int8_scale(amax)
}

q8_rows_kernels!(pub(crate), feature: "neon", cpu: "NEON");

/// The int8 levels of the 4 values at `x` times `inv` stored at `q`
/// (`reference::quant_kv`).
///
/// # Safety
/// 4 floats readable at `x`, 4 bytes writable at `q`; NEON present.
#[target_feature(enable = "neon")]
#[inline]
unsafe fn quantize_chunk(x: *const f32, inv: f32, q: *mut i8) {
    // SAFETY: 4 readable floats (the caller's guarantee).
    let v = quant_kv4(vmulq_n_f32(unsafe { vld1q_f32(x) }, inv));
    let b = vmovn_s16(vcombine_s16(vmovn_s32(v), vdup_n_s16(0)));
    // SAFETY: 4 writable bytes (the caller's guarantee): lane 0 of the
    // 32-bit view.
    unsafe { vst1_lane_s32::<0>(q.cast(), vreinterpret_s32_s8(b)) };
}

/// The 4 values at `p` rounded in place to their int8 levels (of `x *
/// inv`) times `d`.
///
/// # Safety
/// 4 floats readable and writable at `p`; NEON present.
#[target_feature(enable = "neon")]
#[inline]
unsafe fn round_chunk(p: *mut f32, inv: f32, d: f32) {
    // SAFETY: 4 readable and writable floats (the caller's guarantee).
    unsafe { vst1q_f32(p, vmulq_n_f32(vcvtq_f32_s32(quant_kv4(vmulq_n_f32(vld1q_f32(p), inv))), d)) };
}
