//! What every SIMD tier's attention kernels share: the weighted sum of
//! value rows (`axpy_rows` over f32, f16 and int8 rows), written once as
//! [`axpy_rows_kernels!`] over a tier's vector vocabulary (its register
//! type, lane count and the few intrinsics the loop uses). A macro, not a
//! generic function: the loop must be compiled with the tier's
//! `#[target_feature]`s for its intrinsics to inline, and those differ by
//! tier.

/// Defines the tier's `axpy_rows`, `axpy_rows_f16` and `axpy_rows_q8`
/// (see `reference::axpy_rows`): per element `out[j] = fma(p[i], v[i][j],
/// out[j])` over rows in order (as `axpy` row by row), with 64-float chunks
/// of `out` held in registers across the rows, and the last
/// `hd % lanes` elements `out[j] += p[i] * v[i][j]` (not fused), row by row.
///
/// `$vec` is the register type of `$lanes` floats; `zero`, `splat(x)`,
/// `load(p)`/`store(p, v)` (unaligned f32), `load_f16(p)` (`$lanes` f16 as
/// f32), `fma(acc, a, b)` (`acc + a * b`, fused) and `load_q8(p, scale)`
/// (`$lanes` int8 values times `scale`) its operations, each an expression
/// in the named arguments.
#[allow(unused_macros)]
macro_rules! axpy_rows_kernels {
    (
        $vis:vis, feature: $feature:literal, cpu: $cpu:literal, vec: $vec:ty, lanes: $lanes:literal,
        zero: $zero:expr,
        splat: |$sx:ident| $splat:expr,
        load: |$lp:ident| $load:expr,
        store: |$sp:ident, $sv:ident| $store:expr,
        load_f16: |$hp:ident| $load_f16:expr,
        fma: |$fa:ident, $fb:ident, $fc:ident| $fma:expr,
        load_q8: $load_q8:path $(,)?
    ) => {
        /// Weighted sum of value rows: per element `out[j] = fma(p[i],
        /// v[i][j], out[j])` over rows in order (as `axpy` row by row),
        /// with 64-float chunks of `out` held in registers across the rows.
        ///
        /// # Safety
        #[doc = concat!("The CPU has ", $cpu, " (the tier's detection).")]
        #[target_feature(enable = $feature)]
        $vis unsafe fn axpy_rows(p: &[f32], v: &[f32], stride: usize, out: &mut [f32]) {
            // SAFETY: loads read `v[i * stride + j..+lanes]` with `j + lanes
            // <= hd` and `i < p.len()`, inside `v` (checked in
            // `axpy_rows_with`).
            unsafe {
                axpy_rows_with(p, stride, out, v.len(), |i, j| load(v.as_ptr().add(i * stride + j)), |i, j| {
                    v[i * stride + j]
                })
            }
        }

        /// [`axpy_rows`] over f16 values, in the same order.
        ///
        /// # Safety
        #[doc = concat!("The CPU has ", $cpu, " (the tier's detection).")]
        #[target_feature(enable = $feature)]
        $vis unsafe fn axpy_rows_f16(p: &[f32], v: &[half::f16], stride: usize, out: &mut [f32]) {
            // SAFETY: as in `axpy_rows` (`lanes` f16 read by `load_f16`).
            unsafe {
                axpy_rows_with(p, stride, out, v.len(), |i, j| load_f16(v.as_ptr().add(i * stride + j)), |i, j| {
                    v[i * stride + j].to_f32()
                })
            }
        }

        /// [`axpy_rows`] over int8 values (`q as f32 * scale`), in the
        /// same order.
        ///
        /// # Safety
        #[doc = concat!("The CPU has ", $cpu, " (the tier's detection).")]
        #[target_feature(enable = $feature)]
        $vis unsafe fn axpy_rows_q8(p: &[f32], v: $crate::Q8Rows<'_>, out: &mut [f32]) {
            assert!(v.holds(p.len(), out.len()), "value rows out of bounds");
            // SAFETY: loads read `v.qs[i * stride + j..+lanes]` with `j +
            // lanes <= hd` and `i < p.len()`, and scale `i * scale_stride`:
            // inside (checked above and in `axpy_rows_with`).
            unsafe {
                axpy_rows_with(
                    p,
                    v.stride,
                    out,
                    v.qs.len(),
                    |i, j| $load_q8(v.qs.as_ptr().add(i * v.stride + j), *v.scales.get_unchecked(i * v.scale_stride)),
                    |i, j| v.qs[i * v.stride + j] as f32 * v.scales[i * v.scale_stride],
                )
            }
        }

        /// One register of unaligned floats at `p`.
        ///
        /// # Safety
        /// A register's floats readable at `p`; the tier's features present.
        #[target_feature(enable = $feature)]
        #[inline]
        unsafe fn load($lp: *const f32) -> $vec {
            // SAFETY: the caller's guarantee.
            unsafe { $load }
        }

        /// One register's worth of f16 at `p`, as f32.
        ///
        /// # Safety
        /// That many f16 readable at `p`; the tier's features present.
        #[target_feature(enable = $feature)]
        #[inline]
        unsafe fn load_f16($hp: *const half::f16) -> $vec {
            // SAFETY: the caller's guarantee.
            unsafe { $load_f16 }
        }

        /// The loop of [`axpy_rows`] over rows whose register of values at
        /// `(row i, j)` is `load_n(i, j)` (one value: `load1`).
        ///
        /// # Safety
        /// `load_n(i, j)` must be sound for `i < p.len()`, `j + lanes <=
        /// out.len()` whenever `(p.len() - 1) * stride + out.len() <= v_len`;
        /// the tier's features present.
        #[target_feature(enable = $feature)]
        #[inline]
        unsafe fn axpy_rows_with(
            p: &[f32],
            stride: usize,
            out: &mut [f32],
            v_len: usize,
            load_n: impl Fn(usize, usize) -> $vec,
            load1: impl Fn(usize, usize) -> f32,
        ) {
            let hd = out.len();
            if p.is_empty() || hd == 0 {
                return;
            }
            let end = (p.len() - 1).checked_mul(stride).and_then(|e| e.checked_add(hd));
            assert!(end.is_some_and(|e| e <= v_len), "value rows out of bounds");
            let splat = |$sx: f32| $splat;
            let fma = |$fa: $vec, $fb: $vec, $fc: $vec| $fma;
            let full = hd / $lanes * $lanes;
            let mut j0 = 0;
            while j0 < full {
                let w = (full - j0).min(64) / $lanes;
                let mut acc = [$zero; 64 / $lanes];
                for (c, a) in acc.iter_mut().enumerate().take(w) {
                    // SAFETY: `j0 + lanes * (c + 1) <= full <= hd`.
                    *a = unsafe { load(out.as_ptr().add(j0 + $lanes * c)) };
                }
                for (i, &pi) in p.iter().enumerate() {
                    let pv = splat(pi);
                    for (c, a) in acc.iter_mut().enumerate().take(w) {
                        *a = fma(*a, pv, load_n(i, j0 + $lanes * c));
                    }
                }
                for (c, a) in acc.iter().enumerate().take(w) {
                    // SAFETY: as for the loads.
                    unsafe {
                        let ($sp, $sv) = (out.as_mut_ptr().add(j0 + $lanes * c), *a);
                        $store
                    };
                }
                j0 += $lanes * w;
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
