//! Splitting matrix products across threads (feature `std`, rayon).
//!
//! Rows of the weight matrix are split into `threads` contiguous ranges,
//! each computed by one thread with its own dequantization scratch row from
//! the arena. Every output element is computed by exactly the same code as
//! on one thread, so results are bit-identical for every thread count.
//! Splitting uses `rayon::join` only (no heap-allocated jobs).

use ferrite_kernels::reference::{self as k, Matrix};

/// `out[t][r] = dot(w[r], x[t])` for `n` tokens, on up to `threads` threads.
/// `scratch` holds `threads` rows of `row_len` floats.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul(
    threads: usize,
    m: &Matrix<'_>,
    x: &[f32],
    x_stride: usize,
    n: usize,
    out: &mut [f32],
    out_stride: usize,
    scratch: &mut [f32],
    row_len: usize,
) {
    #[cfg(feature = "std")]
    if threads > 1 && m.rows >= 2 * threads {
        // Every index written is `t * out_stride + r` with t < n, r < rows.
        let needed = if n == 0 { 0 } else { (n - 1) * out_stride + m.rows };
        assert!(out.len() >= needed && out_stride >= m.rows, "matmul output too small");
        let out = OutPtr(out.as_mut_ptr());
        split(0..m.rows, threads, scratch, row_len, &|rows, row| {
            for r in rows {
                m.dequantize_row(r, row);
                let w = &row[..m.cols];
                for t in 0..n {
                    let v = k::dot_f32(w, &x[t * x_stride..t * x_stride + m.cols]);
                    // SAFETY: `t * out_stride + r < out.len()` (asserted
                    // above), and row ranges are disjoint across threads, so
                    // no two threads write the same element and nothing
                    // reads `out` during the call (it is borrowed mutably).
                    unsafe { *out.get().add(t * out_stride + r) = v };
                }
            }
        });
        return;
    }
    let _ = threads;
    k::matmul(m, x, x_stride, n, out, out_stride, &mut scratch[..row_len]);
}

#[cfg(feature = "std")]
#[derive(Clone, Copy)]
struct OutPtr(*mut f32);

#[cfg(feature = "std")]
impl OutPtr {
    fn get(self) -> *mut f32 {
        self.0
    }
}

// SAFETY: the pointer is only used for disjoint writes (see `matmul`).
#[cfg(feature = "std")]
unsafe impl Send for OutPtr {}
// SAFETY: as above.
#[cfg(feature = "std")]
unsafe impl Sync for OutPtr {}

#[cfg(feature = "std")]
fn split(
    rows: core::ops::Range<usize>,
    parts: usize,
    scratch: &mut [f32],
    row_len: usize,
    f: &(dyn Fn(core::ops::Range<usize>, &mut [f32]) + Sync),
) {
    if parts <= 1 {
        f(rows, &mut scratch[..row_len]);
        return;
    }
    let left = parts / 2;
    let mid = rows.start + rows.len() * left / parts;
    let (s1, s2) = scratch.split_at_mut(row_len * left);
    rayon::join(|| split(rows.start..mid, left, s1, row_len, f), || split(mid..rows.end, parts - left, s2, row_len, f));
}

#[cfg(all(test, feature = "std"))]
mod tests {
    use ferrite_kernels::reference::{self as k, Matrix, Weights};

    use super::matmul;

    /// Split across threads, the product is the single-threaded one bit for
    /// bit, and nothing outside the output rows is written. Small enough for
    /// Miri (`scripts/miri.sh`), which checks the raw-pointer writes.
    #[test]
    fn threaded_matmul_equals_single_threaded_bit_for_bit() {
        let (rows, cols, n) = (13, 40, 3);
        let (x_stride, out_stride) = (cols + 1, rows + 2);
        let wave = |i: usize, f: f32| (i as f32 * f).sin() * 0.5;
        let w: Vec<f32> = (0..rows * cols).map(|i| wave(i, 0.37)).collect();
        let x: Vec<f32> = (0..n * x_stride).map(|i| wave(i, 1.3)).collect();
        let m = Matrix { w: Weights::F32(&w), rows, cols };
        let mut want = vec![f32::NAN; n * out_stride];
        k::matmul(&m, &x, x_stride, n, &mut want, out_stride, &mut vec![0.0; cols]);
        for threads in [1, 2, 3, 6] {
            let mut got = vec![f32::NAN; n * out_stride];
            let mut scratch = vec![0.0; threads * cols];
            matmul(threads, &m, &x, x_stride, n, &mut got, out_stride, &mut scratch, cols);
            let bits = |v: &[f32]| v.iter().map(|f| f.to_bits()).collect::<Vec<u32>>();
            assert_eq!(bits(&got), bits(&want), "{threads} threads");
        }
    }
}
