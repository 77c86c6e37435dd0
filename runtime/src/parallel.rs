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
    matmuls(threads, k, [(m, out, out_stride)], input, n, scratch, row_len);
}

/// Several products of the same input (q/k/v, gate/up) in one parallel
/// region: each thread computes its share of the rows of every matrix, so
/// the threads meet once instead of once per matrix.
pub(crate) fn matmuls<const N: usize>(
    threads: usize,
    k: &Kernels,
    jobs: [(&Matrix<'_>, &mut [f32], usize); N],
    input: Input<'_>,
    n: usize,
    scratch: &mut [f32],
    row_len: usize,
) {
    let ms: [&Matrix<'_>; N] = core::array::from_fn(|i| jobs[i].0);
    // Writers for rows 0..rows of each matrix.
    let outs = jobs.map(|(m, out, stride)| Out::new(out, stride).split_at_row(m.rows).0);
    let run = |i: usize, rows: core::ops::Range<usize>, out: &mut Out<'_>, row: &mut [f32]| {
        let m = ms[i];
        match (m.w.is_quantized(), input.acts) {
            (true, Some(acts)) => (k.matmul_q)(m, rows, &acts, n, out),
            _ => (k.matmul_f)(m, rows, input.x, input.stride, n, out, row),
        }
    };
    #[cfg(feature = "std")]
    {
        let min_rows = ms.iter().map(|m| m.rows).min().unwrap_or(0);
        if threads > 1 && min_rows >= 16 {
            split(threads.min(min_rows / 8), outs, scratch, row_len, &run);
            return;
        }
    }
    let _ = threads;
    for (i, mut out) in outs.into_iter().enumerate() {
        let rows = out.rows();
        run(i, rows, &mut out, &mut scratch[..row_len]);
    }
}

#[cfg(feature = "std")]
fn split<F, const N: usize>(parts: usize, outs: [Out<'_>; N], scratch: &mut [f32], row_len: usize, f: &F)
where
    F: Fn(usize, core::ops::Range<usize>, &mut Out<'_>, &mut [f32]) + Sync,
{
    if parts <= 1 {
        for (i, mut out) in outs.into_iter().enumerate() {
            let rows = out.rows();
            f(i, rows, &mut out, &mut scratch[..row_len]);
        }
        return;
    }
    let left = parts / 2;
    // Each matrix splits on a tile boundary (8 rows), so no tile is
    // computed twice.
    let halves = outs.map(|out| {
        let rows = out.rows();
        let mid = (rows.start + rows.len() * left / parts).next_multiple_of(8).min(rows.end);
        out.split_at_row(mid)
    });
    let mut lo: [Option<Out<'_>>; N] = [const { None }; N];
    let mut hi: [Option<Out<'_>>; N] = [const { None }; N];
    for (i, (a, b)) in halves.into_iter().enumerate() {
        lo[i] = Some(a);
        hi[i] = Some(b);
    }
    let (lo, hi) = (lo.map(take), hi.map(take));
    let (s1, s2) = scratch.split_at_mut(row_len * left);
    rayon::join(|| split(left, lo, s1, row_len, f), || split(parts - left, hi, s2, row_len, f));
}

/// Unwraps a slot filled just before (never empty).
#[cfg(feature = "std")]
fn take(o: Option<Out<'_>>) -> Out<'_> {
    o.unwrap_or_else(|| Out::new(&mut [], 0))
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
