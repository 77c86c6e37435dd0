//! What every SIMD tier's vector kernels share: the loops of the dot
//! products, `axpy`, RMSNorm, softmax and SwiGLU, written once as
//! [`vector_kernels!`] over a tier's vector vocabulary, a module `v` (made
//! by [`vocabulary!`]) in scope where the macro is invoked:
//!
//! - `F`, the register of `N` f32 lanes; `zero()`, `splat(x)`;
//! - `load(p)`, `load_f16(p)` (`N` f16 as f32), `store(p, v)`: unaligned,
//!   `unsafe`;
//! - `add`, `sub`, `mul`, `max(a, b)` (the instruction's NaN rule), `fma(acc,
//!   a, b)` (`acc + a * b`, fused), `lanes(v)`;
//! - `hmax(v)`, `hsum(v)`, and `hsum_acc(&[F; 16 / N])`, the sum of the dot
//!   product's accumulators.
//!
//! Beside `v` the invoking module defines `exp(v)` (the tier's polynomial)
//! and `swiglu_step(gate, up)`. A macro, not a generic function: the loops
//! must be compiled with the tier's `#[target_feature]`s for the intrinsics
//! to inline, and those differ by tier. Each loop does per element the
//! same operations in the same order on every tier but for the register
//! width, which the tier tests pin against the reference.

/// Defines `dot`, `dot_f16`, `dot_by`, `axpy`, `axpy_f16`, `rmsnorm`,
/// `softmax` and `swiglu` (visibility `$vis`, features `$feature`, `# Safety` naming
/// `$cpu`) over the vocabulary `v` (see the module docs).
#[allow(unused_macros)]
macro_rules! vector_kernels {
    ($vis:vis, feature: $feature:literal, cpu: $cpu:literal $(,)?) => {
        /// Dot product: `16 / N` FMA accumulators over 16-element blocks,
        /// one register at a time after that, scalar tail ([`dot_by`]):
        /// the same order as [`dot_f16`] and the attention kernels, so a
        /// key scores identically from an f32 batch buffer and from the f16
        /// or int8 cache.
        ///
        /// # Safety
        #[doc = concat!("The CPU has ", $cpu, " (the tier's detection).")]
        #[target_feature(enable = $feature)]
        $vis unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
            let n = a.len().min(b.len());
            // SAFETY: `dot_by` loads `b[j..j + N]` with `j + N <= n`.
            unsafe { dot_by(&a[..n], |j| v::load(b.as_ptr().add(j)), |j| b[j]) }
        }

        /// Dot product with `b` in f16, in [`dot`]'s order.
        ///
        /// # Safety
        #[doc = concat!("The CPU has ", $cpu, " (the tier's detection).")]
        #[target_feature(enable = $feature)]
        $vis unsafe fn dot_f16(a: &[f32], b: &[half::f16]) -> f32 {
            let n = a.len().min(b.len());
            // SAFETY: as in `dot` (`N` f16 read by `load_f16`).
            unsafe { dot_by(&a[..n], |j| v::load_f16(b.as_ptr().add(j)), |j| b[j].to_f32()) }
        }

        /// [`dot`]'s arithmetic over `a` and the values `load_n(j)` (a
        /// register at a time) or `load1(j)`.
        ///
        /// # Safety
        /// `load_n(j)` must be sound for `j + N <= a.len()`; the tier's
        /// features present.
        #[target_feature(enable = $feature)]
        #[inline]
        $vis unsafe fn dot_by(a: &[f32], load_n: impl Fn(usize) -> v::F, load1: impl Fn(usize) -> f32) -> f32 {
            let n = a.len();
            let pa = a.as_ptr();
            let mut acc = [v::zero(); 16 / v::N];
            let mut i = 0;
            // SAFETY (loads): `i + 16 <= n` / `i + N <= n`.
            while i + 16 <= n {
                for (k, acc) in acc.iter_mut().enumerate() {
                    *acc = v::fma(*acc, unsafe { v::load(pa.add(i + v::N * k)) }, load_n(i + v::N * k));
                }
                i += 16;
            }
            while i + v::N <= n {
                acc[0] = v::fma(acc[0], unsafe { v::load(pa.add(i)) }, load_n(i));
                i += v::N;
            }
            let mut s = v::hsum_acc(&acc);
            for j in i..n {
                s += a[j] * load1(j);
            }
            s
        }

        /// `y += a * x` (fused per element in the vector part).
        ///
        /// # Safety
        #[doc = concat!("The CPU has ", $cpu, " (the tier's detection).")]
        #[target_feature(enable = $feature)]
        $vis unsafe fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
            let n = x.len().min(y.len());
            // SAFETY: `axpy_by` loads `x[j..j + N]` with `j + N <= n`.
            unsafe { axpy_by(a, &mut y[..n], |j| v::load(x.as_ptr().add(j)), |j| x[j]) }
        }

        /// `y += a * x` with `x` in f16, in [`axpy`]'s arithmetic.
        ///
        /// # Safety
        #[doc = concat!("The CPU has ", $cpu, " (the tier's detection).")]
        #[target_feature(enable = $feature)]
        $vis unsafe fn axpy_f16(a: f32, x: &[half::f16], y: &mut [f32]) {
            let n = x.len().min(y.len());
            // SAFETY: as in `axpy` (`N` f16 read by `load_f16`).
            unsafe { axpy_by(a, &mut y[..n], |j| v::load_f16(x.as_ptr().add(j)), |j| x[j].to_f32()) }
        }

        /// `y += a * x` over the values `load_n(j)` / `load1(j)` of `x`:
        /// fused in the vector part, a product then a sum in the tail.
        ///
        /// # Safety
        /// `load_n(j)` must be sound for `j + N <= y.len()`; the tier's
        /// features present.
        #[target_feature(enable = $feature)]
        #[inline]
        unsafe fn axpy_by(a: f32, y: &mut [f32], load_n: impl Fn(usize) -> v::F, load1: impl Fn(usize) -> f32) {
            let n = y.len();
            let av = v::splat(a);
            let mut i = 0;
            while i + v::N <= n {
                // SAFETY: `i + N <= n`.
                unsafe {
                    let p = y.as_mut_ptr().add(i);
                    v::store(p, v::fma(v::load(p), av, load_n(i)));
                }
                i += v::N;
            }
            for j in i..n {
                y[j] += a * load1(j);
            }
        }

        /// RMSNorm with a vector sum of squares ([`dot`]); `w * (v *
        /// scale)` per element as the reference.
        ///
        /// # Safety
        #[doc = concat!("The CPU has ", $cpu, " (the tier's detection).")]
        #[target_feature(enable = $feature)]
        $vis unsafe fn rmsnorm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
            let n = x.len();
            // SAFETY: the tier's features present (the caller's guarantee).
            let ss = unsafe { dot(x, x) } / n as f32;
            let scale = 1.0 / libm::sqrtf(ss + eps);
            let len = n.min(weight.len()).min(out.len());
            let sv = v::splat(scale);
            let mut i = 0;
            // SAFETY: `i + N <= len` and the three slices have at least `len`.
            while i + v::N <= len {
                unsafe {
                    let xv = v::mul(v::load(x.as_ptr().add(i)), sv);
                    v::store(out.as_mut_ptr().add(i), v::mul(v::load(weight.as_ptr().add(i)), xv));
                }
                i += v::N;
            }
            for j in i..len {
                out[j] = weight[j] * (x[j] * scale);
            }
        }

        /// `softmax` with the tier's `exp`.
        ///
        /// # Safety
        #[doc = concat!("The CPU has ", $cpu, " (the tier's detection).")]
        #[target_feature(enable = $feature)]
        $vis unsafe fn softmax(x: &mut [f32]) {
            let n = x.len();
            if n == 0 {
                return;
            }
            let mut m = v::splat(f32::NEG_INFINITY);
            let mut i = 0;
            // SAFETY (loads/stores): `i + N <= n`.
            while i + v::N <= n {
                m = v::max(m, unsafe { v::load(x.as_ptr().add(i)) });
                i += v::N;
            }
            let mut max = v::hmax(m);
            for &y in &x[i..] {
                max = max.max(y);
            }
            let mv = v::splat(max);
            let mut sum = v::zero();
            i = 0;
            while i + v::N <= n {
                unsafe {
                    let p = x.as_mut_ptr().add(i);
                    let e = exp(v::sub(v::load(p), mv));
                    v::store(p, e);
                    sum = v::add(sum, e);
                }
                i += v::N;
            }
            let mut s = v::hsum(sum);
            if i < n {
                let mut tail = [f32::NEG_INFINITY; v::N];
                tail[..n - i].copy_from_slice(&x[i..]);
                let e = v::lanes(exp(v::sub(unsafe { v::load(tail.as_ptr()) }, mv)));
                x[i..].copy_from_slice(&e[..n - i]);
                s += e[..n - i].iter().sum::<f32>();
            }
            let inv = v::splat(1.0 / s);
            i = 0;
            while i + v::N <= n {
                unsafe {
                    let p = x.as_mut_ptr().add(i);
                    v::store(p, v::mul(v::load(p), inv));
                }
                i += v::N;
            }
            for y in &mut x[i..] {
                *y *= 1.0 / s;
            }
        }

        /// `gate = silu(gate) * up` with the tier's `swiglu_step`.
        ///
        /// # Safety
        #[doc = concat!("The CPU has ", $cpu, " (the tier's detection).")]
        #[target_feature(enable = $feature)]
        $vis unsafe fn swiglu(gate: &mut [f32], up: &[f32]) {
            let n = gate.len().min(up.len());
            let mut i = 0;
            // SAFETY (loads/stores): `i + N <= n` for both slices.
            while i + v::N <= n {
                unsafe {
                    let p = gate.as_mut_ptr().add(i);
                    v::store(p, swiglu_step(v::load(p), v::load(up.as_ptr().add(i))));
                }
                i += v::N;
            }
            if i < n {
                let (mut g, mut u) = ([0f32; v::N], [0f32; v::N]);
                g[..n - i].copy_from_slice(&gate[i..n]);
                u[..n - i].copy_from_slice(&up[i..n]);
                // SAFETY: `g` and `u` have `N` floats.
                let r = v::lanes(unsafe { swiglu_step(v::load(g.as_ptr()), v::load(u.as_ptr())) });
                gate[i..n].copy_from_slice(&r[..n - i]);
            }
        }
    };
}
#[allow(unused_imports)]
pub(crate) use vector_kernels;

/// A tier's vector vocabulary (see the module docs): `mod v` with the
/// register type `F` of `N` lanes and, compiled with `$feature`, inlined,
/// one function per line, safe (`fns`) or `unsafe` (`unsafe_fns`: loads
/// and stores, whose pointer must hold the register's lanes).
#[allow(unused_macros)]
macro_rules! vocabulary {
    (
        $(#[$doc:meta])* feature: $feature:literal, F = $f:ty, N = $n:literal;
        uses { $($use:item)* }
        fns { $($(#[$m:meta])* fn $name:ident($($a:ident: $t:ty),*) $(-> $r:ty)? = $body:expr;)* }
        unsafe_fns { $($(#[$um:meta])* fn $uname:ident($($ua:ident: $ut:ty),*) $(-> $ur:ty)? = $ubody:expr;)* }
    ) => {
        $(#[$doc])*
        mod v {
            $($use)*

            /// One register of floats.
            pub(super) type F = $f;
            /// Its lanes.
            pub(super) const N: usize = $n;

            $(
                $(#[$m])*
                #[target_feature(enable = $feature)]
                #[inline]
                pub(super) fn $name($($a: $t),*) $(-> $r)? {
                    $body
                }
            )*

            $(
                $(#[$um])*
                ///
                /// # Safety
                /// The register's lanes readable (loads) or writable
                /// (stores) at the pointer; the tier's features present.
                #[target_feature(enable = $feature)]
                #[inline]
                pub(super) unsafe fn $uname($($ua: $ut),*) $(-> $ur)? {
                    // SAFETY: the caller's guarantee.
                    unsafe { $ubody }
                }
            )*
        }
    };
}
#[allow(unused_imports)]
pub(crate) use vocabulary;
