//! The NEON vector kernels: dot products and `axpy` (f32 and f16),
//! RMSNorm, softmax and SwiGLU with a polynomial `exp`.

// Scalar tails index like the vector code next to them.
#![allow(clippy::needless_range_loop)]

use core::arch::aarch64::*;

use half::f16;

use super::{hsum4, load_f16x4};

/// Dot product: four 4-lane FMA accumulators over 16-element blocks, one
/// 4-element block at a time after that, scalar tail ([`dot_by`]): the
/// same order as [`dot_f16`] and the attention kernels, so a key scores
/// identically from an f32 batch buffer and from the f16 or int8 cache.
///
/// # Safety
/// The CPU has NEON (the tier's detection).
#[target_feature(enable = "neon")]
pub(crate) unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    // SAFETY: `dot_by` loads `b[j..j + 4]` with `j + 4 <= n`.
    unsafe { dot_by(&a[..n], |j| vld1q_f32(b.as_ptr().add(j)), |j| b[j]) }
}

/// Dot product with `b` in f16, in [`dot`]'s order.
///
/// # Safety
/// The CPU has NEON (the tier's detection).
#[target_feature(enable = "neon")]
pub(crate) unsafe fn dot_f16(a: &[f32], b: &[f16]) -> f32 {
    let n = a.len().min(b.len());
    // SAFETY: as in `dot`; 4 f16 are 8 bytes.
    unsafe { dot_by(&a[..n], |j| load_f16x4(b.as_ptr().add(j)), |j| b[j].to_f32()) }
}

/// [`dot`]'s arithmetic over `a` and the values `load4(j)` (4 at a time)
/// or `load1(j)`.
///
/// # Safety
/// `load4(j)` must be sound for `j + 4 <= a.len()`; NEON present.
#[target_feature(enable = "neon")]
#[inline]
pub(crate) unsafe fn dot_by(a: &[f32], load4: impl Fn(usize) -> float32x4_t, load1: impl Fn(usize) -> f32) -> f32 {
    let n = a.len();
    let pa = a.as_ptr();
    let mut acc = [vdupq_n_f32(0.0); 4];
    let mut i = 0;
    // SAFETY (loads): `i + 16 <= n` / `i + 4 <= n`.
    while i + 16 <= n {
        for (k, acc) in acc.iter_mut().enumerate() {
            *acc = vfmaq_f32(*acc, unsafe { vld1q_f32(pa.add(i + 4 * k)) }, load4(i + 4 * k));
        }
        i += 16;
    }
    while i + 4 <= n {
        acc[0] = vfmaq_f32(acc[0], unsafe { vld1q_f32(pa.add(i)) }, load4(i));
        i += 4;
    }
    let mut s = hsum4(&acc);
    for j in i..n {
        s += a[j] * load1(j);
    }
    s
}

/// `y += a * x` (fused per element in the vector part).
///
/// # Safety
/// The CPU has NEON (the tier's detection).
#[target_feature(enable = "neon")]
pub(crate) unsafe fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    let n = x.len().min(y.len());
    // SAFETY: `axpy_by` loads `x[j..j + 4]` with `j + 4 <= n`.
    unsafe { axpy_by(a, &mut y[..n], |j| vld1q_f32(x.as_ptr().add(j)), |j| x[j]) }
}

/// `y += a * x` with `x` in f16, in [`axpy`]'s arithmetic.
///
/// # Safety
/// The CPU has NEON (the tier's detection).
#[target_feature(enable = "neon")]
pub(crate) unsafe fn axpy_f16(a: f32, x: &[f16], y: &mut [f32]) {
    let n = x.len().min(y.len());
    // SAFETY: as in `axpy`; 4 f16 are 8 bytes.
    unsafe { axpy_by(a, &mut y[..n], |j| load_f16x4(x.as_ptr().add(j)), |j| x[j].to_f32()) }
}

/// `y += a * x` over the values `load4(j)` / `load1(j)` of `x`: fused in
/// the vector part, a product then a sum in the tail.
///
/// # Safety
/// `load4(j)` must be sound for `j + 4 <= y.len()`; NEON present.
#[target_feature(enable = "neon")]
#[inline]
unsafe fn axpy_by(a: f32, y: &mut [f32], load4: impl Fn(usize) -> float32x4_t, load1: impl Fn(usize) -> f32) {
    let n = y.len();
    let av = vdupq_n_f32(a);
    let mut i = 0;
    while i + 4 <= n {
        // SAFETY: `i + 4 <= n`.
        unsafe {
            let p = y.as_mut_ptr().add(i);
            vst1q_f32(p, vfmaq_f32(vld1q_f32(p), av, load4(i)));
        }
        i += 4;
    }
    for j in i..n {
        y[j] += a * load1(j);
    }
}

/// RMSNorm with a vector sum of squares; `w * (v * scale)` per element as
/// the reference.
///
/// # Safety
/// The CPU has NEON (the tier's detection).
#[target_feature(enable = "neon")]
pub(crate) unsafe fn rmsnorm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let n = x.len();
    // SAFETY: NEON present (module invariant).
    let ss = unsafe { dot(x, x) } / n as f32;
    let scale = 1.0 / libm::sqrtf(ss + eps);
    let len = n.min(weight.len()).min(out.len());
    let sv = vdupq_n_f32(scale);
    let mut i = 0;
    // SAFETY: `i + 4 <= len` and the three slices have at least `len`.
    while i + 4 <= len {
        unsafe {
            let v = vmulq_f32(vld1q_f32(x.as_ptr().add(i)), sv);
            vst1q_f32(out.as_mut_ptr().add(i), vmulq_f32(vld1q_f32(weight.as_ptr().add(i)), v));
        }
        i += 4;
    }
    for j in i..len {
        out[j] = weight[j] * (x[j] * scale);
    }
}

/// `exp(x)` on 4 lanes: `x = n ln2 + r` (`|r| <= ln2 / 2`, Cody-Waite
/// split), `exp(r)` by a degree-6 polynomial, `2^n` through the exponent
/// bits; the same constants and clamping as the x86 tiers. Relative error
/// within a few ulp of `expf` over the clamped range [-87.33, 88]; below it
/// (and for NaN) the result is 0, above it `exp(88)`.
#[target_feature(enable = "neon")]
#[inline]
fn exp4(x: float32x4_t) -> float32x4_t {
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

/// `softmax` with [`exp4`].
///
/// # Safety
/// The CPU has NEON (the tier's detection).
#[target_feature(enable = "neon")]
pub(crate) unsafe fn softmax(x: &mut [f32]) {
    let n = x.len();
    if n == 0 {
        return;
    }
    let mut m = vdupq_n_f32(f32::NEG_INFINITY);
    let mut i = 0;
    // SAFETY (loads/stores): `i + 4 <= n`.
    while i + 4 <= n {
        m = vmaxq_f32(m, unsafe { vld1q_f32(x.as_ptr().add(i)) });
        i += 4;
    }
    let mut max = vmaxvq_f32(m);
    for &v in &x[i..] {
        max = max.max(v);
    }
    let mv = vdupq_n_f32(max);
    let mut sum = vdupq_n_f32(0.0);
    i = 0;
    while i + 4 <= n {
        unsafe {
            let p = x.as_mut_ptr().add(i);
            let e = exp4(vsubq_f32(vld1q_f32(p), mv));
            vst1q_f32(p, e);
            sum = vaddq_f32(sum, e);
        }
        i += 4;
    }
    let mut s = vaddvq_f32(sum);
    if i < n {
        let mut tail = [f32::NEG_INFINITY; 4];
        tail[..n - i].copy_from_slice(&x[i..]);
        let mut e = [0f32; 4];
        // SAFETY: `tail` and `e` have 4 floats.
        unsafe { vst1q_f32(e.as_mut_ptr(), exp4(vsubq_f32(vld1q_f32(tail.as_ptr()), mv))) };
        x[i..].copy_from_slice(&e[..n - i]);
        s += e[..n - i].iter().sum::<f32>();
    }
    let inv = vdupq_n_f32(1.0 / s);
    i = 0;
    while i + 4 <= n {
        unsafe {
            let p = x.as_mut_ptr().add(i);
            vst1q_f32(p, vmulq_f32(vld1q_f32(p), inv));
        }
        i += 4;
    }
    for v in &mut x[i..] {
        *v *= 1.0 / s;
    }
}

/// `gate = silu(gate) * up` with [`exp4`].
///
/// # Safety
/// The CPU has NEON (the tier's detection).
#[target_feature(enable = "neon")]
pub(crate) unsafe fn swiglu(gate: &mut [f32], up: &[f32]) {
    let n = gate.len().min(up.len());
    let one = vdupq_n_f32(1.0);
    let step = |g: float32x4_t, u: float32x4_t| vmulq_f32(vdivq_f32(g, vaddq_f32(one, exp4(vnegq_f32(g)))), u);
    let mut i = 0;
    // SAFETY (loads/stores): `i + 4 <= n` for both slices.
    while i + 4 <= n {
        unsafe {
            let p = gate.as_mut_ptr().add(i);
            vst1q_f32(p, step(vld1q_f32(p), vld1q_f32(up.as_ptr().add(i))));
        }
        i += 4;
    }
    if i < n {
        let (mut g, mut u, mut r) = ([0f32; 4], [0f32; 4], [0f32; 4]);
        g[..n - i].copy_from_slice(&gate[i..n]);
        u[..n - i].copy_from_slice(&up[i..n]);
        // SAFETY: the three arrays have 4 floats.
        unsafe { vst1q_f32(r.as_mut_ptr(), step(vld1q_f32(g.as_ptr()), vld1q_f32(u.as_ptr()))) };
        gate[i..n].copy_from_slice(&r[..n - i]);
    }
}
