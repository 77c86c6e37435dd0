//! What every SIMD tier's attention kernels share: the weighted sum of
//! value rows (`axpy_rows` over f32, f16 and int8 rows), written once as
//! [`axpy_rows_kernels!`] over a tier's vector vocabulary (`crate::simd`),
//! and the loops of the int8 KV rows' quantization ([`q8_rows_kernels!`])
//! over the tier's per-register steps. Macros, not generic functions: the
//! loops must be compiled with the tier's `#[target_feature]`s for its
//! intrinsics to inline, and those differ by tier.

/// Defines the tier's `axpy_rows`, `axpy_rows_f16` and `axpy_rows_q8`
/// (see `reference::axpy_rows`) over the tier's vector vocabulary `v`
/// (`crate::simd`): per element `out[j] = fma(p[i], vals[i][j], out[j])` over
/// rows in order (as `axpy` row by row), with 64-float chunks of `out` held
/// in registers across the rows, and the last `hd % N` elements `out[j] +=
/// p[i] * vals[i][j]` (not fused), row by row. `$load_q8(p, scale)` gives a
/// register of int8 values at `p` times `scale`.
#[allow(unused_macros)]
macro_rules! axpy_rows_kernels {
    ($vis:vis, feature: $feature:literal, cpu: $cpu:literal, load_q8: $load_q8:path $(,)?) => {
        /// Weighted sum of value rows: per element `out[j] = fma(p[i],
        /// vals[i][j], out[j])` over rows in order (as `axpy` row by row),
        /// with 64-float chunks of `out` held in registers across the rows.
        ///
        /// # Safety
        #[doc = concat!("The CPU has ", $cpu, " (the tier's detection).")]
        #[target_feature(enable = $feature)]
        $vis unsafe fn axpy_rows(p: &[f32], vals: &[f32], stride: usize, out: &mut [f32]) {
            // SAFETY: loads read `vals[i * stride + j..+N]` with `j + N <= hd`
            // and `i < p.len()`, inside `vals` (checked in
            // `axpy_rows_with`).
            unsafe {
                axpy_rows_with(p, stride, out, vals.len(), |i, j| v::load(vals.as_ptr().add(i * stride + j)), |i, j| {
                    vals[i * stride + j]
                })
            }
        }

        /// [`axpy_rows`] over f16 values, in the same order.
        ///
        /// # Safety
        #[doc = concat!("The CPU has ", $cpu, " (the tier's detection).")]
        #[target_feature(enable = $feature)]
        $vis unsafe fn axpy_rows_f16(p: &[f32], vals: &[half::f16], stride: usize, out: &mut [f32]) {
            // SAFETY: as in `axpy_rows` (`N` f16 read by `load_f16`).
            unsafe {
                axpy_rows_with(p, stride, out, vals.len(), |i, j| v::load_f16(vals.as_ptr().add(i * stride + j)), |i, j| {
                    vals[i * stride + j].to_f32()
                })
            }
        }

        /// [`axpy_rows`] over int8 values (`q as f32 * scale`), in the
        /// same order.
        ///
        /// # Safety
        #[doc = concat!("The CPU has ", $cpu, " (the tier's detection).")]
        #[target_feature(enable = $feature)]
        $vis unsafe fn axpy_rows_q8(p: &[f32], vals: $crate::Q8Rows<'_>, out: &mut [f32]) {
            assert!(vals.holds(p.len(), out.len()), "value rows out of bounds");
            // SAFETY: loads read `vals.qs[i * stride + j..+N]` with `j + N <=
            // hd` and `i < p.len()`, and scale `i * scale_stride`:
            // inside (checked above and in `axpy_rows_with`).
            unsafe {
                axpy_rows_with(
                    p,
                    vals.stride,
                    out,
                    vals.qs.len(),
                    |i, j| $load_q8(vals.qs.as_ptr().add(i * vals.stride + j), *vals.scales.get_unchecked(i * vals.scale_stride)),
                    |i, j| vals.qs[i * vals.stride + j] as f32 * vals.scales[i * vals.scale_stride],
                )
            }
        }

        /// The loop of [`axpy_rows`] over rows whose register of values at
        /// `(row i, j)` is `load_n(i, j)` (one value: `load1`).
        ///
        /// # Safety
        /// `load_n(i, j)` must be sound for `i < p.len()`, `j + N <=
        /// out.len()` whenever `(p.len() - 1) * stride + out.len() <= v_len`;
        /// the tier's features present.
        #[target_feature(enable = $feature)]
        #[inline]
        unsafe fn axpy_rows_with(
            p: &[f32],
            stride: usize,
            out: &mut [f32],
            v_len: usize,
            load_n: impl Fn(usize, usize) -> v::F,
            load1: impl Fn(usize, usize) -> f32,
        ) {
            let hd = out.len();
            if p.is_empty() || hd == 0 {
                return;
            }
            let end = (p.len() - 1).checked_mul(stride).and_then(|e| e.checked_add(hd));
            assert!(end.is_some_and(|e| e <= v_len), "value rows out of bounds");
            let full = hd / v::N * v::N;
            let mut j0 = 0;
            while j0 < full {
                let w = (full - j0).min(64) / v::N;
                let mut acc = [v::zero(); 64 / v::N];
                for (c, a) in acc.iter_mut().enumerate().take(w) {
                    // SAFETY: `j0 + N * (c + 1) <= full <= hd`.
                    *a = unsafe { v::load(out.as_ptr().add(j0 + v::N * c)) };
                }
                for (i, &pi) in p.iter().enumerate() {
                    let pv = v::splat(pi);
                    for (c, a) in acc.iter_mut().enumerate().take(w) {
                        *a = v::fma(*a, pv, load_n(i, j0 + v::N * c));
                    }
                }
                for (c, a) in acc.iter().enumerate().take(w) {
                    // SAFETY: as for the loads.
                    unsafe { v::store(out.as_mut_ptr().add(j0 + v::N * c), *a) };
                }
                j0 += v::N * w;
            }
            for (i, &pi) in p.iter().enumerate() {
                for (j, o) in out.iter_mut().enumerate().skip(full) {
                    *o += pi * load1(i, j);
                }
            }
        }
    };
}
#[allow(unused_imports)]
pub(crate) use axpy_rows_kernels;

/// Defines the tier's `quantize_rows_q8` and `round_q8` (see
/// `reference::quantize_rows_q8`, `reference::round_q8`): per row of
/// `width` values the scale from the enclosing module's `kv_scale(row) ->
/// (d, inv)`, then a register (`v::N` values) at a time through its
/// `quantize_chunk(x, inv, q)` (int8 levels of `x * inv` stored at `q`) or
/// `round_chunk(p, inv, d)` (the levels times `d`, in place), the rest with
/// the reference's scalar code.
#[allow(unused_macros)]
macro_rules! q8_rows_kernels {
    ($vis:vis, feature: $feature:literal, cpu: $cpu:literal $(,)?) => {
        /// `reference::quantize_rows_q8`, a register of values at a time.
        ///
        /// # Safety
        #[doc = concat!("The CPU has ", $cpu, " (the tier's detection).")]
        #[target_feature(enable = $feature)]
        $vis unsafe fn quantize_rows_q8(src: &[f32], width: usize, dst: &mut [i8], scales: &mut [f32]) {
            if width == 0 {
                return;
            }
            let rows = src.len() / width;
            assert!(dst.len() >= rows * width && scales.len() >= rows, "int8 rows out of bounds");
            let full = width / v::N * v::N;
            for (i, x) in src.chunks_exact(width).enumerate() {
                // SAFETY: the tier's features present (the caller's guarantee).
                let (d, inv) = unsafe { kv_scale(x) };
                let q = &mut dst[i * width..(i + 1) * width];
                for j in (0..full).step_by(v::N) {
                    // SAFETY: `j + N <= width`, the length of `x` and `q`.
                    unsafe { quantize_chunk(x.as_ptr().add(j), inv, q.as_mut_ptr().add(j)) };
                }
                for (q, &x) in q.iter_mut().zip(x).skip(full) {
                    *q = $crate::reference::quant_kv(x, inv) as i8;
                }
                scales[i] = d;
            }
        }

        /// `reference::round_q8`, a register of values at a time.
        ///
        /// # Safety
        #[doc = concat!("The CPU has ", $cpu, " (the tier's detection).")]
        #[target_feature(enable = $feature)]
        $vis unsafe fn round_q8(x: &mut [f32], width: usize) {
            if width == 0 {
                return;
            }
            let full = width / v::N * v::N;
            for row in x.chunks_exact_mut(width) {
                // SAFETY: the tier's features present (the caller's guarantee).
                let (d, inv) = unsafe { kv_scale(row) };
                for j in (0..full).step_by(v::N) {
                    // SAFETY: `j + N <= width`, the length of `row`.
                    unsafe { round_chunk(row.as_mut_ptr().add(j), inv, d) };
                }
                for v in &mut row[full..] {
                    *v = ($crate::reference::quant_kv(*v, inv) as i8) as f32 * d;
                }
            }
        }
    };
}
#[allow(unused_imports)]
pub(crate) use q8_rows_kernels;
