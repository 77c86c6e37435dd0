//! KV cache storage: f32, f16 or int8 rows, addressed by `(layer, slot)`.
//!
//! A slot holds one token's keys and values for every KV head. Keys are
//! stored already rotated (RoPE at their absolute position). int8 rows keep
//! one f32 scale per head row (`max|x| / 127`). The numbers (conversions,
//! int8 quantization, scores, weighted sums) are the kernel table's; this
//! file only stores and addresses them.

use ferrite_kernels::{Kernels, Q8Rows};
use half::f16;

/// Element type of the KV cache.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum KvType {
    /// f32 (exact comparisons).
    F32,
    /// f16 (half the memory).
    #[default]
    F16,
    /// int8 with one f32 scale per head row (about a quarter of f32).
    Q8,
}

impl KvType {
    /// Bytes of one slot (one token, one layer, keys and values) for
    /// `n_kv_heads` heads of `head_dim`.
    pub fn slot_bytes(self, n_kv_heads: usize, head_dim: usize) -> Option<usize> {
        let elems = n_kv_heads.checked_mul(head_dim)?;
        let one = match self {
            KvType::F32 => elems.checked_mul(4)?,
            KvType::F16 => elems.checked_mul(2)?,
            KvType::Q8 => elems.checked_add(n_kv_heads.checked_mul(4)?)?,
        };
        one.checked_mul(2)
    }
    /// Stable code used in saved session states.
    pub(crate) fn code(self) -> u32 {
        match self {
            KvType::F32 => 0,
            KvType::F16 => 1,
            KvType::Q8 => 2,
        }
    }
}

pub(crate) enum KvStore<'a> {
    F32 { k: &'a mut [f32], v: &'a mut [f32] },
    F16 { k: &'a mut [f16], v: &'a mut [f16] },
    Q8 { k: &'a mut [i8], v: &'a mut [i8], ks: &'a mut [f32], vs: &'a mut [f32] },
}

/// Geometry of the cache: `rows` = layers × slots, each `kv_dim` wide.
#[derive(Clone, Copy, Debug)]
pub(crate) struct KvShape {
    pub kv_dim: usize,
    pub head_dim: usize,
}

impl KvShape {
    /// The elements of a plane that the `n` (at least one) rows of KV head
    /// `kvh` from `row` span: the first row's head to the last row's.
    fn head_span(self, row: usize, kvh: usize, n: usize) -> core::ops::Range<usize> {
        let at = row * self.kv_dim + kvh * self.head_dim;
        at..at + (n - 1) * self.kv_dim + self.head_dim
    }
}

impl KvStore<'_> {
    /// Rounds rows of fresh keys or values to the cache's precision in place
    /// (exactly what `write` then a read back would give), so a token
    /// attends to the same numbers whether its neighbours come from the
    /// cache or from the same batch: the tier's f32 `dot_rows`/`axpy_rows`
    /// over rounded rows equal its cache kernels bit for bit.
    pub fn round_trip(&self, kern: &Kernels, rows: &mut [f32], s: KvShape) {
        match self {
            KvStore::F32 { .. } => {}
            KvStore::F16 { .. } => (kern.round_f16)(rows),
            KvStore::Q8 { .. } => (kern.round_q8)(rows, s.head_dim),
        }
    }

    /// Stores one token's keys and values (each `kv_dim` floats) in `row`
    /// (= layer × max_ctx + slot).
    pub fn write(&mut self, kern: &Kernels, row: usize, keys: &[f32], values: &[f32], s: KvShape) {
        let at = row * s.kv_dim;
        match self {
            KvStore::F32 { k, v } => {
                k[at..at + s.kv_dim].copy_from_slice(keys);
                v[at..at + s.kv_dim].copy_from_slice(values);
            }
            KvStore::F16 { k, v } => {
                (kern.to_f16)(keys, &mut k[at..at + s.kv_dim]);
                (kern.to_f16)(values, &mut v[at..at + s.kv_dim]);
            }
            KvStore::Q8 { k, v, ks, vs } => {
                let heads = s.kv_dim / s.head_dim;
                let scales = row * heads..(row + 1) * heads;
                (kern.quantize_rows_q8)(keys, s.head_dim, &mut k[at..at + s.kv_dim], &mut ks[scales.clone()]);
                (kern.quantize_rows_q8)(values, s.head_dim, &mut v[at..at + s.kv_dim], &mut vs[scales]);
            }
        }
    }

    /// The `n` rows of KV head `kvh` from `row` of an int8 plane.
    fn q8_rows<'q>(qs: &'q [i8], scales: &'q [f32], row: usize, kvh: usize, n: usize, s: KvShape) -> Q8Rows<'q> {
        let heads = s.kv_dim / s.head_dim;
        let first = row * heads + kvh;
        Q8Rows {
            qs: &qs[s.head_span(row, kvh, n)],
            scales: &scales[first..first + (n - 1) * heads + 1],
            stride: s.kv_dim,
            scale_stride: heads,
        }
    }

    /// Scores `out[i] = scale * dot(q, key)` of KV head `kvh` for the
    /// `out.len()` consecutive rows from `row`.
    #[allow(clippy::too_many_arguments)]
    pub fn dot_keys(&self, kern: &Kernels, row: usize, kvh: usize, q: &[f32], scale: f32, out: &mut [f32], s: KvShape) {
        let n = out.len();
        if n == 0 {
            return;
        }
        let span = s.head_span(row, kvh, n);
        match self {
            KvStore::F32 { k, .. } => (kern.dot_rows)(q, &k[span], s.kv_dim, scale, out),
            KvStore::F16 { k, .. } => (kern.dot_rows_f16)(q, &k[span], s.kv_dim, scale, out),
            KvStore::Q8 { k, ks, .. } => (kern.dot_rows_q8)(q, Self::q8_rows(k, ks, row, kvh, n, s), scale, out),
        }
    }

    /// `out += sum_i p[i] * value` of KV head `kvh` for the `p.len()`
    /// consecutive rows from `row`.
    pub fn add_values(&self, kern: &Kernels, row: usize, kvh: usize, p: &[f32], out: &mut [f32], s: KvShape) {
        let n = p.len();
        if n == 0 {
            return;
        }
        let span = s.head_span(row, kvh, n);
        match self {
            KvStore::F32 { v, .. } => (kern.axpy_rows)(p, &v[span], s.kv_dim, out),
            KvStore::F16 { v, .. } => (kern.axpy_rows_f16)(p, &v[span], s.kv_dim, out),
            KvStore::Q8 { v, vs, .. } => (kern.axpy_rows_q8)(p, Self::q8_rows(v, vs, row, kvh, n, s), out),
        }
    }

    /// The raw bytes of `rows` consecutive rows starting at `row`, as
    /// `(keys, values, key scales, value scales)` (scales empty unless int8).
    pub fn row_bytes(&self, row: usize, rows: usize, s: KvShape) -> [&[u8]; 4] {
        let (a, b) = (row * s.kv_dim, (row + rows) * s.kv_dim);
        let heads = s.kv_dim / s.head_dim;
        match self {
            KvStore::F32 { k, v } => [bytemuck::cast_slice(&k[a..b]), bytemuck::cast_slice(&v[a..b]), &[], &[]],
            KvStore::F16 { k, v } => [bytemuck::cast_slice(&k[a..b]), bytemuck::cast_slice(&v[a..b]), &[], &[]],
            KvStore::Q8 { k, v, ks, vs } => [
                bytemuck::cast_slice(&k[a..b]),
                bytemuck::cast_slice(&v[a..b]),
                bytemuck::cast_slice(&ks[row * heads..(row + rows) * heads]),
                bytemuck::cast_slice(&vs[row * heads..(row + rows) * heads]),
            ],
        }
    }

    /// Mutable twin of [`KvStore::row_bytes`].
    pub fn row_bytes_mut(&mut self, row: usize, rows: usize, s: KvShape) -> [&mut [u8]; 4] {
        let (a, b) = (row * s.kv_dim, (row + rows) * s.kv_dim);
        let heads = s.kv_dim / s.head_dim;
        match self {
            KvStore::F32 { k, v } => {
                [bytemuck::cast_slice_mut(&mut k[a..b]), bytemuck::cast_slice_mut(&mut v[a..b]), &mut [], &mut []]
            }
            KvStore::F16 { k, v } => {
                [bytemuck::cast_slice_mut(&mut k[a..b]), bytemuck::cast_slice_mut(&mut v[a..b]), &mut [], &mut []]
            }
            KvStore::Q8 { k, v, ks, vs } => [
                bytemuck::cast_slice_mut(&mut k[a..b]),
                bytemuck::cast_slice_mut(&mut v[a..b]),
                bytemuck::cast_slice_mut(&mut ks[row * heads..(row + rows) * heads]),
                bytemuck::cast_slice_mut(&mut vs[row * heads..(row + rows) * heads]),
            ],
        }
    }
}
