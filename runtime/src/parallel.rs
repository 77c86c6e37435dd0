//! Matrix products through the kernel table, split across the session's
//! threads (feature `std`, [`crate::pool`]).
//!
//! Rows of the weight matrix are split into contiguous ranges on 8-row
//! tile boundaries, one per thread, each computed into its own rows of the
//! output (with its own scratch row from the arena). Every output element
//! is computed by exactly the same code whatever the split, so results are
//! bit-identical for every thread count. Handing the parts to the threads
//! allocates nothing.

use core::ops::Range;

#[cfg(feature = "std")]
use ferrite_kernels::SharedOut;
use ferrite_kernels::{Acts, Kernels, Matrix, Out};

#[cfg(feature = "std")]
use crate::pool::{Pool, Shards};

/// Where a parallel region runs: the session's pool, or (without `std`, or
/// with one thread) the calling thread alone.
#[derive(Clone, Copy)]
pub(crate) struct Par<'p> {
    #[cfg(feature = "std")]
    pool: Option<&'p Pool>,
    _pool: core::marker::PhantomData<&'p ()>,
}

impl<'p> Par<'p> {
    /// The calling thread alone.
    #[cfg_attr(feature = "std", allow(dead_code))]
    pub(crate) fn serial() -> Self {
        Par {
            #[cfg(feature = "std")]
            pool: None,
            _pool: core::marker::PhantomData,
        }
    }

    /// The threads of `pool`.
    #[cfg(feature = "std")]
    pub(crate) fn on(pool: Option<&'p Pool>) -> Self {
        Par { pool, _pool: core::marker::PhantomData }
    }

    /// Threads available.
    pub(crate) fn threads(&self) -> usize {
        #[cfg(feature = "std")]
        if let Some(p) = self.pool {
            return p.threads();
        }
        1
    }

    /// Runs `f(i)` for `i < parts`, in parallel where there are threads.
    #[cfg_attr(not(feature = "std"), allow(dead_code))]
    pub(crate) fn run(&self, parts: usize, f: &(dyn Fn(usize) + Sync)) {
        #[cfg(feature = "std")]
        if let Some(p) = self.pool {
            p.run(parts, f);
            return;
        }
        (0..parts).for_each(f);
    }
}

/// Part `p` of `parts` of `0..len`, with boundaries on multiples of `align`.
#[cfg_attr(not(feature = "std"), allow(dead_code))]
pub(crate) fn bounds(len: usize, parts: usize, p: usize, align: usize) -> Range<usize> {
    let at = |i: usize| if i >= parts { len } else { (len * i / parts).next_multiple_of(align).min(len) };
    at(p)..at(p + 1)
}

/// The input of a matrix product: f32 rows (`x`, row stride `stride`) and,
/// for quantized weights, the same rows quantized to int8 (`acts`, unless
/// the session multiplies with f32 activations).
#[derive(Clone, Copy)]
pub(crate) struct Input<'x> {
    pub x: &'x [f32],
    pub stride: usize,
    pub acts: Option<Acts<'x>>,
}

/// `out[t * out_stride + r] = dot(w[r], x[t])` for `n` tokens, on the
/// threads of `par`. `scratch` holds one row of `row_len` floats per thread.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul(
    par: Par<'_>,
    k: &Kernels,
    m: &Matrix<'_>,
    input: Input<'_>,
    n: usize,
    out: &mut [f32],
    out_stride: usize,
    scratch: &mut [f32],
    row_len: usize,
) {
    matmuls(par, k, [(m, out, out_stride)], input, n, scratch, row_len);
}

/// Several products of the same input (q/k/v, gate/up) in one parallel
/// region: each thread computes its share of the rows of every matrix, so
/// the threads meet once instead of once per matrix.
pub(crate) fn matmuls<const N: usize>(
    par: Par<'_>,
    k: &Kernels,
    jobs: [(&Matrix<'_>, &mut [f32], usize); N],
    input: Input<'_>,
    n: usize,
    scratch: &mut [f32],
    row_len: usize,
) {
    let ms: [&Matrix<'_>; N] = core::array::from_fn(|i| jobs[i].0);
    // Writers for rows 0..rows of each matrix.
    let outs = jobs.map(|(m, out, stride)| Out::new(out, stride).split_at_row(m.rows()).0);
    let run = |i: usize, rows: Range<usize>, out: &mut Out<'_>, row: &mut [f32]| {
        let m = ms[i];
        match (m.weights().is_quantized(), input.acts) {
            (true, Some(acts)) => (k.matmul_q)(m, rows, &acts, n, out),
            _ => (k.matmul_f)(m, rows, input.x, input.stride, n, out, row),
        }
    };
    let min_rows = ms.iter().map(|m| m.rows()).min().unwrap_or(0);
    let parts = if min_rows >= 16 { par.threads().min(min_rows / 8) } else { 1 };
    #[cfg(feature = "std")]
    if parts > 1 {
        let outs = outs.map(SharedOut::new);
        let scratch = Shards::new(scratch);
        par.run(parts, &|p| {
            // SAFETY: part `p` alone uses scratch row `p` and rows
            // `bounds(.., p)` of every output (the parts' ranges are
            // disjoint).
            let row = unsafe { scratch.piece(p * row_len..(p + 1) * row_len) };
            for (i, out) in outs.iter().enumerate() {
                let rows = bounds(ms[i].rows(), parts, p, 8);
                // SAFETY: as above.
                let mut w = unsafe { out.part(rows.clone()) };
                run(i, rows, &mut w, row);
            }
        });
        return;
    }
    let _ = parts;
    for (i, mut out) in outs.into_iter().enumerate() {
        let rows = out.rows();
        run(i, rows, &mut out, &mut scratch[..row_len]);
    }
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use ferrite_kernels::reference::{Matrix, Weights};
    use ferrite_kernels::Kernels;

    use super::{matmul, Input, Par};
    use crate::pool::Pool;

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
        let m = Matrix::new(Weights::F32(&w), rows, cols).unwrap();
        let k = Kernels::for_tier(ferrite_kernels::Tier::Reference).unwrap();
        let input = Input { x: &x, stride: x_stride, acts: None };
        let mut want = vec![f32::NAN; n * out_stride];
        matmul(Par::serial(), k, &m, input, n, &mut want, out_stride, &mut vec![0.0; cols], cols);
        for threads in [1, 2, 3, 6] {
            let pool = Pool::new(threads).expect("pool");
            let mut got = vec![f32::NAN; n * out_stride];
            let mut scratch = vec![0.0; threads * cols];
            matmul(Par::on(Some(&pool)), k, &m, input, n, &mut got, out_stride, &mut scratch, cols);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<u32>>();
            assert_eq!(bits(&got), bits(&want), "{threads} threads");
        }
    }
}
