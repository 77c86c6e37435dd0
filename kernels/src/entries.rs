//! How a SIMD tier builds its table: `tier!` takes the names of the
//! kernels the tier implements (each an `unsafe fn` of the same name and
//! signature as the [`Kernels`](crate::Kernels) field, in the module that
//! invokes it), generates their safe entry points (`entry!`, one arm per
//! kernel: the signatures are written here once) and the table, which
//! starts from the tier below and overrides only those entries (tract's
//! way of plugging kernels into an `Ops` table).
//!
//! The entry points are sound only because a tier's table is handed out by
//! [`Kernels::for_tier`](crate::Kernels::for_tier) after that tier's
//! detection said yes, and the wrapped functions need nothing beyond the
//! tier's CPU features (their `# Safety` sections).

/// `tier!(/// docs; pub(crate) const NAME = Tier::X, from BASE, mod m { kernel, ... })`.
#[allow(unused_macros)]
macro_rules! tier {
    ($(#[$doc:meta])* $vis:vis const $table:ident = $tier:expr, from $base:expr, mod $m:ident { $($name:ident),* $(,)? }) => {
        /// Safe entry points of this tier's kernels (see `tier!`).
        mod $m {
            $( entry!($name); )*
        }
        $(#[$doc])*
        #[allow(clippy::needless_update)]
        $vis const $table: $crate::Kernels = $crate::Kernels { tier: $tier, $($name: $m::$name,)* ..$base };
    };
}

/// One safe entry point: calls the enclosing module's `unsafe fn` of the
/// same name and arguments.
#[allow(unused_macros)]
macro_rules! wrap {
    ($name:ident($($arg:ident: $ty:ty),*) $(-> $ret:ty)?) => {
        pub(crate) fn $name($($arg: $ty),*) $(-> $ret)? {
            // SAFETY: only reachable through a table that `Kernels::for_tier`
            // hands out after detecting the tier's features, all that
            // `super::$name` needs (see `tier!`).
            unsafe { super::$name($($arg),*) }
        }
    };
}

/// The signature of each table entry.
#[allow(unused_macros)]
macro_rules! entry {
    (quantize_acts) => { wrap!(quantize_acts(x: &[f32], x_stride: usize, n: usize, cols: usize, acts: &mut $crate::ActsMut<'_>)); };
    (matmul_q) => {
        wrap!(matmul_q(m: &$crate::Matrix<'_>, rows: core::ops::Range<usize>, acts: &$crate::Acts<'_>, n: usize, out: &mut $crate::Out<'_>));
    };
    (matmul_f) => {
        wrap!(matmul_f(
            m: &$crate::Matrix<'_>,
            rows: core::ops::Range<usize>,
            x: &[f32],
            x_stride: usize,
            n: usize,
            out: &mut $crate::Out<'_>,
            row: &mut [f32]
        ));
    };
    (dot) => { wrap!(dot(a: &[f32], b: &[f32]) -> f32); };
    (dot_f16) => { wrap!(dot_f16(a: &[f32], b: &[half::f16]) -> f32); };
    (axpy) => { wrap!(axpy(a: f32, x: &[f32], y: &mut [f32])); };
    (axpy_f16) => { wrap!(axpy_f16(a: f32, x: &[half::f16], y: &mut [f32])); };
    (rmsnorm) => { wrap!(rmsnorm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32])); };
    (softmax) => { wrap!(softmax(x: &mut [f32])); };
    (swiglu) => { wrap!(swiglu(gate: &mut [f32], up: &[f32])); };
    (dot_rows) => { wrap!(dot_rows(q: &[f32], k: &[f32], stride: usize, scale: f32, out: &mut [f32])); };
    (dot_rows_f16) => { wrap!(dot_rows_f16(q: &[f32], k: &[half::f16], stride: usize, scale: f32, out: &mut [f32])); };
    (dot_rows_q8) => { wrap!(dot_rows_q8(q: &[f32], k: $crate::Q8Rows<'_>, scale: f32, out: &mut [f32])); };
    (axpy_rows) => { wrap!(axpy_rows(p: &[f32], v: &[f32], stride: usize, out: &mut [f32])); };
    (axpy_rows_f16) => { wrap!(axpy_rows_f16(p: &[f32], v: &[half::f16], stride: usize, out: &mut [f32])); };
    (axpy_rows_q8) => { wrap!(axpy_rows_q8(p: &[f32], v: $crate::Q8Rows<'_>, out: &mut [f32])); };
    (quantize_rows_q8) => { wrap!(quantize_rows_q8(src: &[f32], width: usize, dst: &mut [i8], scales: &mut [f32])); };
    (round_q8) => { wrap!(round_q8(x: &mut [f32], width: usize)); };
    (rope) => { wrap!(rope(head: &mut [f32], cs: &[f32])); };
    (to_f16) => { wrap!(to_f16(src: &[f32], dst: &mut [half::f16])); };
    (round_f16) => { wrap!(round_f16(x: &mut [f32])); };
}
