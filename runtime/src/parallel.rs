//! Matrix products through the kernel table, split across threads (feature
//! `std`, rayon).
//!
//! Rows of the weight matrix are split into `threads` contiguous ranges on
//! 8-row tile boundaries, each computed by one thread into its own
//! [`Out`] rows (with its own scratch row from the arena). Every output
//! element is computed by exactly the same code whatever the split, so
//! results are bit-identical for every thread count. Splitting uses
//! `rayon::join` only (no heap-allocated jobs).

use ferrite_kernels::{Acts, Kernels, Matrix, Out};

/// The input of a matrix product: f32 rows (`x`, row stride `stride`) and,
/// for quantized weights, the same rows quantized to int8 (`acts`, unless
/// the session multiplies with f32 activations).
#[derive(Clone, Copy)]
pub(crate) struct Input<'x> {
    pub x: &'x [f32],
    pub stride: usize,
    pub acts: Option<Acts<'x>>,
}

/// `out[t * out_stride + r] = dot(w[r], x[t])` for `n` tokens, on up to
/// `threads` threads. `scratch` holds `threads` rows of `row_len` floats.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul(
    threads: usize,
    k: &Kernels,
    m: &Matrix<'_>,
    input: Input<'_>,
    n: usize,
    out: &mut [f32],
    out_stride: usize,
    scratch: &mut [f32],
    row_len: usize,
) {
    let out = Out::new(out, out_stride);
    let run = |rows: core::ops::Range<usize>, mut out: Out<'_>, row: &mut [f32]| match (m.w.is_quantized(), input.acts)
    {
        (true, Some(acts)) => (k.matmul_q)(m, rows, &acts, n, &mut out),
        _ => (k.matmul_f)(m, rows, input.x, input.stride, n, &mut out, row),
    };
    #[cfg(feature = "std")]
    if threads > 1 && m.rows >= 16 {
        split(0..m.rows, threads.min(m.rows / 8), out, scratch, row_len, &run);
        return;
    }
    let _ = threads;
    run(0..m.rows, out, &mut scratch[..row_len]);
}

#[cfg(feature = "std")]
fn split<F>(rows: core::ops::Range<usize>, parts: usize, out: Out<'_>, scratch: &mut [f32], row_len: usize, f: &F)
where
    F: Fn(core::ops::Range<usize>, Out<'_>, &mut [f32]) + Sync,
{
    if parts <= 1 {
        f(rows, out, &mut scratch[..row_len]);
        return;
    }
    let left = parts / 2;
    // Split on a tile boundary (8 rows), so no tile is computed twice.
    let mid = (rows.start + rows.len() * left / parts).next_multiple_of(8).min(rows.end);
    let (o1, o2) = out.split_at_row(mid);
    let (s1, s2) = scratch.split_at_mut(row_len * left);
    rayon::join(
        || split(rows.start..mid, left, o1, s1, row_len, f),
        || split(mid..rows.end, parts - left, o2, s2, row_len, f),
    );
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use ferrite_kernels::reference::{Matrix, Weights};
    use ferrite_kernels::Kernels;

    use super::{matmul, Input};

    /// Split across threads, the product is the single-threaded one bit for
    /// bit, and nothing outside the output rows is written. Small enough for
    /// Miri (`scripts/miri.sh`), which checks the raw-pointer writes.
    #[test]
    fn threaded_matmul_equals_single_threaded_bit_for_bit() {
        let (rows, cols, n) = (37, 40, 3);
        let (x_stride, out_stride) = (cols + 1, rows + 2);
        let wave = |i: usize, f: f32| (i as f32 * f).sin() * 0.5;
        let w: Vec<f32> = (0..rows * cols).map(|i| wave(i, 0.37)).collect();
        let x: Vec<f32> = (0..n * x_stride).map(|i| wave(i, 1.3)).collect();
        let m = Matrix { w: Weights::F32(&w), rows, cols };
        let k = Kernels::for_tier(ferrite_kernels::Tier::Reference).unwrap();
        let input = Input { x: &x, stride: x_stride, acts: None };
        let mut want = vec![f32::NAN; n * out_stride];
        matmul(1, k, &m, input, n, &mut want, out_stride, &mut vec![0.0; cols], cols);
        for threads in [1, 2, 3, 6] {
            let mut got = vec![f32::NAN; n * out_stride];
            let mut scratch = vec![0.0; threads * cols];
            matmul(threads, k, &m, input, n, &mut got, out_stride, &mut scratch, cols);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<u32>>();
            assert_eq!(bits(&got), bits(&want), "{threads} threads");
        }
    }
}
