//! The AVX2 tier's vector kernels: dot products and `axpy` (f32 and f16),
//! RMSNorm, softmax and SwiGLU with a polynomial `exp`, RoPE and the f16
//! conversions.

use core::arch::x86_64::*;

use half::f16;

use super::{hsum, lanes};

/// Dot product: two 8-lane FMA accumulators over 16-element blocks, one
/// 8-element block, scalar tail ([`dot_by`]): the same order as
/// [`dot_f16`] and the attention kernels, so a key scores identically from
/// an f32 batch buffer and from the f16 or int8 cache.
///
/// # Safety
/// The CPU has avx2, fma (the tier's detection).
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    // SAFETY: `dot_by` loads `b[j..j + 8]` with `j + 8 <= n`.
    unsafe { dot_by(&a[..n], |j| _mm256_loadu_ps(b.as_ptr().add(j)), |j| b[j]) }
}

/// Dot product with `b` in f16 (F16C), in [`dot`]'s order.
///
/// # Safety
/// The CPU has avx2, fma, f16c (the tier's detection).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn dot_f16(a: &[f32], b: &[f16]) -> f32 {
    let n = a.len().min(b.len());
    // SAFETY: as in `dot`; 8 f16 are 16 bytes.
    unsafe { dot_by(&a[..n], |j| _mm256_cvtph_ps(_mm_loadu_si128(b.as_ptr().add(j).cast())), |j| b[j].to_f32()) }
}

/// [`dot`]'s arithmetic over `a` and the values `load8(j)` (8 at a time)
/// or `load1(j)`.
///
/// # Safety
/// `load8(j)` must be sound for `j + 8 <= a.len()`; the CPU has AVX2 and
/// FMA.
#[target_feature(enable = "avx2,fma")]
#[inline]
pub(super) unsafe fn dot_by(a: &[f32], load8: impl Fn(usize) -> __m256, load1: impl Fn(usize) -> f32) -> f32 {
    let n = a.len();
    let pa = a.as_ptr();
    let mut acc = [_mm256_setzero_ps(); 2];
    let mut i = 0;
    // SAFETY (loads): `i + 16 <= n` / `i + 8 <= n`.
    while i + 16 <= n {
        for (k, acc) in acc.iter_mut().enumerate() {
            *acc = _mm256_fmadd_ps(unsafe { _mm256_loadu_ps(pa.add(i + 8 * k)) }, load8(i + 8 * k), *acc);
        }
        i += 16;
    }
    while i + 8 <= n {
        acc[0] = _mm256_fmadd_ps(unsafe { _mm256_loadu_ps(pa.add(i)) }, load8(i), acc[0]);
        i += 8;
    }
    let mut s = hsum(_mm256_add_ps(acc[0], acc[1]));
    for j in i..n {
        s += a[j] * load1(j);
    }
    s
}

/// `y += a * x`.
///
/// # Safety
/// The CPU has avx2, fma (the tier's detection).
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    let n = x.len().min(y.len());
    // SAFETY: `axpy_by` loads `x[j..j + 8]` with `j + 8 <= n`.
    unsafe { axpy_by(a, &mut y[..n], |j| _mm256_loadu_ps(x.as_ptr().add(j)), |j| x[j]) }
}

/// `y += a * x` with `x` in f16, in [`axpy`]'s arithmetic.
///
/// # Safety
/// The CPU has avx2, fma, f16c (the tier's detection).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn axpy_f16(a: f32, x: &[f16], y: &mut [f32]) {
    let n = x.len().min(y.len());
    // SAFETY: as in `axpy`; 8 f16 are 16 bytes.
    unsafe {
        axpy_by(a, &mut y[..n], |j| _mm256_cvtph_ps(_mm_loadu_si128(x.as_ptr().add(j).cast())), |j| x[j].to_f32())
    }
}

/// `y += a * x` over the values `load8(j)` / `load1(j)` of `x`: fused in
/// the vector part, a product then a sum in the tail.
///
/// # Safety
/// `load8(j)` must be sound for `j + 8 <= y.len()`; the CPU has AVX2 and
/// FMA.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn axpy_by(a: f32, y: &mut [f32], load8: impl Fn(usize) -> __m256, load1: impl Fn(usize) -> f32) {
    let n = y.len();
    let av = _mm256_set1_ps(a);
    let mut i = 0;
    while i + 8 <= n {
        // SAFETY: `i + 8 <= n`.
        unsafe {
            let p = y.as_mut_ptr().add(i);
            _mm256_storeu_ps(p, _mm256_fmadd_ps(av, load8(i), _mm256_loadu_ps(p)));
        }
        i += 8;
    }
    for j in i..n {
        y[j] += a * load1(j);
    }
}

/// RMSNorm with a vector sum of squares.
///
/// # Safety
/// The CPU has avx2, fma (the tier's detection).
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn rmsnorm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let n = x.len();
    // SAFETY: AVX2/FMA present (module invariant).
    let ss = unsafe { dot(x, x) } / n as f32;
    let scale = 1.0 / libm::sqrtf(ss + eps);
    for ((o, &v), &w) in out.iter_mut().zip(x).zip(weight) {
        *o = w * (v * scale);
    }
}

/// `exp(x)` on 8 lanes: `x = n ln2 + r` (`|r| <= ln2 / 2`, Cody-Waite
/// split), `exp(r)` by a degree-6 polynomial, `2^n` through the exponent
/// bits. Relative error within a few ulp of `expf` over the clamped range
/// [-87.3, 88]; below it the result is 0 (softmax weights of far-off
/// keys), above it `exp(88)` (SiLU of inputs below -88 is then -0).
#[target_feature(enable = "avx2,fma")]
#[inline]
fn exp8(x: __m256) -> __m256 {
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

/// `softmax` with [`exp8`].
///
/// # Safety
/// The CPU has avx2, fma (the tier's detection).
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn softmax(x: &mut [f32]) {
    let n = x.len();
    if n == 0 {
        return;
    }
    let mut m = _mm256_set1_ps(f32::NEG_INFINITY);
    let mut i = 0;
    // SAFETY (loads/stores): `i + 8 <= n`.
    while i + 8 <= n {
        m = _mm256_max_ps(m, unsafe { _mm256_loadu_ps(x.as_ptr().add(i)) });
        i += 8;
    }
    let mut max = lanes(m).iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b));
    for &v in &x[i..] {
        max = max.max(v);
    }
    let mv = _mm256_set1_ps(max);
    let mut sum = _mm256_setzero_ps();
    i = 0;
    while i + 8 <= n {
        unsafe {
            let p = x.as_mut_ptr().add(i);
            let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(p), mv));
            _mm256_storeu_ps(p, e);
            sum = _mm256_add_ps(sum, e);
        }
        i += 8;
    }
    let mut s = hsum(sum);
    if i < n {
        let mut tail = [f32::NEG_INFINITY; 8];
        tail[..n - i].copy_from_slice(&x[i..]);
        let e = lanes(exp8(_mm256_sub_ps(unsafe { _mm256_loadu_ps(tail.as_ptr()) }, mv)));
        x[i..].copy_from_slice(&e[..n - i]);
        s += e[..n - i].iter().sum::<f32>();
    }
    let inv = _mm256_set1_ps(1.0 / s);
    i = 0;
    while i + 8 <= n {
        unsafe {
            let p = x.as_mut_ptr().add(i);
            _mm256_storeu_ps(p, _mm256_mul_ps(_mm256_loadu_ps(p), inv));
        }
        i += 8;
    }
    for v in &mut x[i..] {
        *v *= 1.0 / s;
    }
}

/// `gate = silu(gate) * up` with [`exp8`].
///
/// # Safety
/// The CPU has avx2, fma (the tier's detection).
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn swiglu(gate: &mut [f32], up: &[f32]) {
    let n = gate.len().min(up.len());
    let one = _mm256_set1_ps(1.0);
    let mut i = 0;
    let step = |g: __m256, u: __m256| {
        let e = exp8(_mm256_sub_ps(_mm256_setzero_ps(), g));
        _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(one, e)), u)
    };
    // SAFETY (loads/stores): `i + 8 <= n` for both slices.
    while i + 8 <= n {
        unsafe {
            let p = gate.as_mut_ptr().add(i);
            _mm256_storeu_ps(p, step(_mm256_loadu_ps(p), _mm256_loadu_ps(up.as_ptr().add(i))));
        }
        i += 8;
    }
    if i < n {
        let (mut g, mut u) = ([0f32; 8], [0f32; 8]);
        g[..n - i].copy_from_slice(&gate[i..n]);
        u[..n - i].copy_from_slice(&up[i..n]);
        let r = lanes(unsafe { step(_mm256_loadu_ps(g.as_ptr()), _mm256_loadu_ps(u.as_ptr())) });
        gate[i..n].copy_from_slice(&r[..n - i]);
    }
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
