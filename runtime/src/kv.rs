//! KV cache storage: f32, f16 or int8 rows, addressed by `(layer, slot)`.
//!
//! A slot holds one token's keys and values for every KV head. Keys are
//! stored already rotated (RoPE at their absolute position). int8 rows keep
//! one f32 scale per head row (`max|x| / 127`).

use ferrite_kernels::reference as k;
use ferrite_kernels::Kernels;
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

fn quantize_head(src: &[f32], dst: &mut [i8]) -> f32 {
    let amax = src.iter().fold(0.0f32, |m, &x| m.max(x.abs()));
    let scale = amax / 127.0;
    let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
    for (o, &x) in dst.iter_mut().zip(src) {
        *o = libm::roundf(x * inv).clamp(-127.0, 127.0) as i8;
    }
    scale
}

/// [`k::dot_f32`]'s summation order over `q` and elements `elem(i)`.
#[inline]
fn dot_with(q: &[f32], elem: impl Fn(usize) -> f32) -> f32 {
    let n = q.len();
    let mut acc = [0.0f32; 8];
    let chunks = n / 8;
    for c in 0..chunks {
        for (l, a) in acc.iter_mut().enumerate() {
            *a += q[c * 8 + l] * elem(c * 8 + l);
        }
    }
    let mut tail = 0.0f32;
    for (i, &qi) in q.iter().enumerate().skip(chunks * 8) {
        tail += qi * elem(i);
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

type DotRowsFn = fn(&[f32], &[f32], usize, f32, &mut [f32]);
type AxpyRowsFn = fn(&[f32], &[f32], usize, &mut [f32]);

impl KvStore<'_> {
    /// Rounds rows of fresh keys or values to the cache's precision in place,
    /// so a token attends to the same numbers whether its neighbours come
    /// from the cache or from the same batch.
    pub fn round_trip(&self, kern: &Kernels, rows: &mut [f32], s: KvShape) {
        match self {
            KvStore::F32 { .. } => {}
            KvStore::F16 { .. } => (kern.round_f16)(rows),
            KvStore::Q8 { .. } => {
                for head in rows.chunks_exact_mut(s.head_dim) {
                    // Exactly what `write` then a read back would give.
                    let amax = head.iter().fold(0.0f32, |m, &x| m.max(x.abs()));
                    let scale = amax / 127.0;
                    let inv = if scale > 0.0 { 1.0 / scale } else { 0.0 };
                    for x in head.iter_mut() {
                        *x = libm::roundf(*x * inv).clamp(-127.0, 127.0) * scale;
                    }
                }
            }
        }
    }

    /// The dot product and `y += a * x` for keys and values of the current
    /// batch (f32, already rounded to the cache's precision) that match
    /// [`KvStore::dot_key`] and [`KvStore::add_value`] bit for bit.
    pub fn batch_ops(&self, kern: &Kernels) -> (DotRowsFn, AxpyRowsFn) {
        match self {
            KvStore::Q8 { .. } => (k::dot_rows, k::axpy_rows),
            _ => (kern.dot_rows, kern.axpy_rows),
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
                for h in 0..heads {
                    let r = at + h * s.head_dim..at + (h + 1) * s.head_dim;
                    let src = h * s.head_dim..(h + 1) * s.head_dim;
                    ks[row * heads + h] = quantize_head(&keys[src.clone()], &mut k[r.clone()]);
                    vs[row * heads + h] = quantize_head(&values[src], &mut v[r]);
                }
            }
        }
    }

    /// Scores `out[i] = scale * dot(q, key)` of KV head `kvh` for the `out.len()`
    /// consecutive rows from `row`, each exactly as [`KvStore::dot_key`].
    #[allow(clippy::too_many_arguments)]
    pub fn dot_keys(&self, kern: &Kernels, row: usize, kvh: usize, q: &[f32], scale: f32, out: &mut [f32], s: KvShape) {
        let n = out.len();
        if n == 0 {
            return;
        }
        let at = row * s.kv_dim + kvh * s.head_dim;
        let end = at + (n - 1) * s.kv_dim + s.head_dim;
        match self {
            KvStore::F32 { k, .. } => (kern.dot_rows)(q, &k[at..end], s.kv_dim, scale, out),
            KvStore::F16 { k, .. } => (kern.dot_rows_f16)(q, &k[at..end], s.kv_dim, scale, out),
            KvStore::Q8 { .. } => {
                for (i, o) in out.iter_mut().enumerate() {
                    *o = scale * self.dot_key(kern, row + i, kvh, q, s);
                }
            }
        }
    }

    /// `out += sum_i p[i] * value` of KV head `kvh` for the `p.len()`
    /// consecutive rows from `row`, each exactly as [`KvStore::add_value`].
    pub fn add_values(&self, kern: &Kernels, row: usize, kvh: usize, p: &[f32], out: &mut [f32], s: KvShape) {
        let n = p.len();
        if n == 0 {
            return;
        }
        let at = row * s.kv_dim + kvh * s.head_dim;
        let end = at + (n - 1) * s.kv_dim + s.head_dim;
        match self {
            KvStore::F32 { v, .. } => (kern.axpy_rows)(p, &v[at..end], s.kv_dim, out),
            KvStore::F16 { v, .. } => (kern.axpy_rows_f16)(p, &v[at..end], s.kv_dim, out),
            KvStore::Q8 { .. } => {
                for (i, &pi) in p.iter().enumerate() {
                    self.add_value(kern, row + i, kvh, pi, out, s);
                }
            }
        }
    }

    /// `dot(q, key)` for KV head `kvh` of `row`, summed in exactly the
    /// order of [`KvStore::batch_ops`]'s dot over the dequantized key, so a key
    /// read from the cache scores exactly like the same key fresh from its
    /// batch.
    pub fn dot_key(&self, kern: &Kernels, row: usize, kvh: usize, q: &[f32], s: KvShape) -> f32 {
        let at = row * s.kv_dim + kvh * s.head_dim;
        let hd = s.head_dim;
        match self {
            KvStore::F32 { k, .. } => (kern.dot)(q, &k[at..at + hd]),
            KvStore::F16 { k, .. } => (kern.dot_f16)(q, &k[at..at + hd]),
            KvStore::Q8 { k, ks, .. } => {
                let scale = ks[row * (s.kv_dim / hd) + kvh];
                dot_with(q, |i| k[at + i] as f32 * scale)
            }
        }
    }

    /// `out += p * value` for KV head `kvh` of `row` (dequantized value, as
    /// for a fresh one).
    pub fn add_value(&self, kern: &Kernels, row: usize, kvh: usize, p: f32, out: &mut [f32], s: KvShape) {
        let at = row * s.kv_dim + kvh * s.head_dim;
        let hd = s.head_dim;
        match self {
            KvStore::F32 { v, .. } => (kern.axpy)(p, &v[at..at + hd], out),
            KvStore::F16 { v, .. } => (kern.axpy_f16)(p, &v[at..at + hd], out),
            KvStore::Q8 { v, vs, .. } => {
                let scale = vs[row * (s.kv_dim / hd) + kvh];
                for (o, &x) in out.iter_mut().zip(&v[at..at + hd]) {
                    *o += p * (x as f32 * scale);
                }
            }
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
