//! Scalar reference kernels: the definition of correct.
//!
//! Layouts of the quantized types are defined in [`ferrite_format::quant`].

use ferrite_format::quant::{self, GROUP, ROW_BLOCK};
use half::f16;

pub use crate::matrix::{Matrix, ShapeError, Weights};
use crate::{Acts, ActsMut, Out, Q8Rows};

pub use crate::quantize::{
    dequantize_row_q4, dequantize_row_q4a, dequantize_row_q8, quantize_group_q4a, quantize_group_symmetric,
    quantize_row_q4, quantize_row_q4a, quantize_row_q8,
};

/// The tile holding row `r`'s group `g` (tiles of `tile_bytes`, `cols`
/// wide), and that group's scale, as [`quant::tile_index`] and
/// [`quant::scale_index`] place them.
#[inline]
pub(crate) fn tile_of<'w>(
    qs: &'w [u8],
    scales: &[f16],
    tile_bytes: usize,
    cols: usize,
    r: usize,
    g: usize,
) -> (&'w [u8], f32) {
    let groups = cols.div_ceil(GROUP);
    let t = quant::tile_index(groups, r / ROW_BLOCK, g);
    (&qs[t * tile_bytes..(t + 1) * tile_bytes], scales[quant::scale_index(groups, r, g)].to_f32())
}

/// Dot product of two equal-length f32 slices, accumulated in eight lanes
/// (so the compiler vectorizes it) and summed pairwise at the end.
#[inline]
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a, b) = (&a[..n], &b[..n]);
    let mut acc = [0.0f32; 8];
    let chunks = n / 8;
    for c in 0..chunks {
        let (x, y) = (&a[c * 8..c * 8 + 8], &b[c * 8..c * 8 + 8]);
        for l in 0..8 {
            acc[l] += x[l] * y[l];
        }
    }
    let mut tail = 0.0f32;
    for i in chunks * 8..n {
        tail += a[i] * b[i];
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// `out[t][r] = dot(w[r], x[t])` for `n` tokens: `x` is `[n, cols]`
/// (row stride `x_stride`), `out` is `[n, rows]` (row stride `out_stride`).
/// Each weight row is dequantized once into `row` (`>= cols` floats) and
/// used for every token, so weights are streamed once per batch.
pub fn matmul(
    m: &Matrix<'_>,
    x: &[f32],
    x_stride: usize,
    n: usize,
    out: &mut [f32],
    out_stride: usize,
    row: &mut [f32],
) {
    let cols = m.cols;
    for r in 0..m.rows {
        m.dequantize_row(r, row);
        let w = &row[..cols];
        for t in 0..n {
            out[t * out_stride + r] = dot_f32(w, &x[t * x_stride..t * x_stride + cols]);
        }
    }
}

/// Quantizes `n` activation rows (`x` is `[n, cols]` with row stride
/// `x_stride`) to int8 per group of 32, for [`matmul_q`]: for token `t`
/// and group `g` (`groups = cols.div_ceil(32)`), `acts.d[t * groups + g]`
/// is `max|x| / 127`, the quants `roundeven(x * (1 / d))` (0 for an
/// all-zero group) and `acts.sums` their sum. Padding quants are 0. Every
/// tier computes exactly these values (the scalar `d` and `1 / d`, one f32
/// product and round-to-nearest-even per element).
///
/// # Panics
/// If a buffer is shorter than the shapes say.
pub fn quantize_acts(x: &[f32], x_stride: usize, n: usize, cols: usize, acts: &mut ActsMut<'_>) {
    let groups = cols.div_ceil(GROUP);
    for t in 0..n {
        let row = &x[t * x_stride..t * x_stride + cols];
        for g in 0..groups {
            let src = &row[g * GROUP..((g + 1) * GROUP).min(cols)];
            let (d, id) = act_scale(src);
            let q = &mut acts.qs[(t * groups + g) * GROUP..(t * groups + g + 1) * GROUP];
            let mut sum = 0i32;
            for (j, o) in q.iter_mut().enumerate() {
                let v = src.get(j).map_or(0, |&x| quant_act(x, id));
                *o = v;
                sum += v as i32;
            }
            acts.d[t * groups + g] = d;
            acts.sums[t * groups + g] = sum;
        }
    }
}

/// A group's activation scale `max|x| / 127` and its inverse (0 for 0).
#[inline]
pub fn act_scale(src: &[f32]) -> (f32, f32) {
    int8_scale(src.iter().fold(0.0f32, |m, &x| m.max(x.abs())))
}

/// The int8 scale `amax / 127` of values of largest magnitude `amax`, and
/// its inverse (0 for 0): [`act_scale`]'s rule, which every tier's
/// activation and KV quantization follows.
#[inline]
pub(crate) fn int8_scale(amax: f32) -> (f32, f32) {
    let d = amax / 127.0;
    (d, if d > 0.0 { 1.0 / d } else { 0.0 })
}

/// One activation quantized with inverse scale `id` (see [`quantize_acts`]).
#[inline]
pub fn quant_act(x: f32, id: f32) -> i8 {
    libm::roundevenf(x * id).clamp(-127.0, 127.0) as i8
}

/// Integer matrix product with int8 activations, for the weight types
/// [`Weights::is_quantized`] names (q8, q4, q5_0, q5_1, q4k, q5k, q6k):
/// `out[t][r]` for the rows in `rows` and tokens `0..n` is the sum over
/// groups, in order, of what [`Matrix::int_group`] defines — for q8/q4
/// `acc = acc + (isum as f32) * (wd * ad)` with the exact integer `isum =
/// sum_j q[r][g][j] * a[t][g][j]`; q6k's `isum` weighs each half group by
/// its int8 sub-scale; the affine types (q5_1, q4k, q5k) add `((isum as
/// f32) * scale + (sum_a as f32) * min) * ad` (f32, never fused). The
/// integer sums are exact and every tier follows this order per (row,
/// token), so all tiers agree bit for bit. Other weights are [`matmul_f`]'s;
/// passing them here does nothing.
pub fn matmul_q(m: &Matrix<'_>, rows: core::ops::Range<usize>, acts: &Acts<'_>, n: usize, out: &mut Out<'_>) {
    m.check_rows(&rows);
    if !m.w.is_quantized() {
        return;
    }
    let groups = m.cols.div_ceil(GROUP);
    for r in rows {
        for t in 0..n {
            let mut acc = 0.0f32;
            for g in 0..groups {
                let Some(w) = m.int_group(r, g) else { return };
                let ag = t * groups + g;
                let a = &acts.qs[ag * GROUP..(ag + 1) * GROUP];
                let half = |h: usize| (16 * h..16 * h + 16).map(|j| w.w[j] * a[j] as i32).sum::<i32>();
                let isum = w.sub[0] * half(0) + w.sub[1] * half(1);
                let ad = acts.d[ag];
                acc = match w.min {
                    None => acc + isum as f32 * (w.scale * ad),
                    Some(min) => acc + ((isum as f32) * w.scale + (acts.sums[ag] as f32) * min) * ad,
                };
            }
            out.set(t, r, acc);
        }
    }
}

/// Float matrix product for rows `rows`: each weight row is dequantized into
/// `row` (`>= cols` floats) and dotted ([`dot_f32`]) with every token.
pub fn matmul_f(
    m: &Matrix<'_>,
    rows: core::ops::Range<usize>,
    x: &[f32],
    x_stride: usize,
    n: usize,
    out: &mut Out<'_>,
    row: &mut [f32],
) {
    m.check_rows(&rows);
    for r in rows {
        m.dequantize_row(r, row);
        let w = &row[..m.cols];
        for t in 0..n {
            out.set(t, r, dot_f32(w, &x[t * x_stride..t * x_stride + m.cols]));
        }
    }
}

/// `sum_i a[i] * b[i]` with `b` in f16, in [`dot_f32`]'s order.
pub fn dot_f16(a: &[f32], b: &[f16]) -> f32 {
    let n = a.len().min(b.len());
    dot_by(&a[..n], |i| b[i].to_f32())
}

/// [`dot_f32`]'s summation order over `a` and elements `b(i)`.
#[inline]
fn dot_by(a: &[f32], b: impl Fn(usize) -> f32) -> f32 {
    let n = a.len();
    let mut acc = [0.0f32; 8];
    let chunks = n / 8;
    for c in 0..chunks {
        for (l, acc) in acc.iter_mut().enumerate() {
            *acc += a[c * 8 + l] * b(c * 8 + l);
        }
    }
    let mut tail = 0.0f32;
    for (i, &x) in a.iter().enumerate().skip(chunks * 8) {
        tail += x * b(i);
    }
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7])) + tail
}

/// `out[i] = scale * dot(q, k[i * stride..][..q.len()])` for `i < out.len()`
/// ([`dot_f32`] per key): attention scores of one query head over keys
/// `stride` floats apart.
pub fn dot_rows(q: &[f32], k: &[f32], stride: usize, scale: f32, out: &mut [f32]) {
    let hd = q.len();
    for (i, o) in out.iter_mut().enumerate() {
        *o = scale * dot_f32(q, &k[i * stride..i * stride + hd]);
    }
}

/// [`dot_rows`] over f16 keys ([`dot_f16`] per key).
pub fn dot_rows_f16(q: &[f32], k: &[f16], stride: usize, scale: f32, out: &mut [f32]) {
    let hd = q.len();
    for (i, o) in out.iter_mut().enumerate() {
        *o = scale * dot_f16(q, &k[i * stride..i * stride + hd]);
    }
}

/// `out += sum_i p[i] * v[i * stride..][..out.len()]`, one [`axpy`] per
/// value row in order: attention's weighted sum of values.
pub fn axpy_rows(p: &[f32], v: &[f32], stride: usize, out: &mut [f32]) {
    let hd = out.len();
    for (i, &pi) in p.iter().enumerate() {
        axpy(pi, &v[i * stride..i * stride + hd], out);
    }
}

/// [`axpy_rows`] over f16 values ([`axpy_f16`] per row).
pub fn axpy_rows_f16(p: &[f32], v: &[f16], stride: usize, out: &mut [f32]) {
    let hd = out.len();
    for (i, &pi) in p.iter().enumerate() {
        axpy_f16(pi, &v[i * stride..i * stride + hd], out);
    }
}

/// One value of an int8 KV row with inverse scale `inv`: `x * inv` rounded
/// to the nearest integer (ties away from zero, `roundf`), clamped to
/// -127..=127 (see [`quantize_rows_q8`]).
#[inline]
pub fn quant_kv(x: f32, inv: f32) -> f32 {
    libm::roundf(x * inv).clamp(-127.0, 127.0)
}

/// Quantizes the rows of `width` floats of `src` to int8 (the KV cache):
/// row `i`'s scale `scales[i]` is `max|x| / 127` ([`act_scale`]), its quants
/// `dst[i * width..][..width]` are [`quant_kv`] of each value. Every tier
/// computes exactly these values.
///
/// # Panics
/// If `dst` or `scales` is shorter than `src` needs.
pub fn quantize_rows_q8(src: &[f32], width: usize, dst: &mut [i8], scales: &mut [f32]) {
    if width == 0 {
        return;
    }
    for (i, x) in src.chunks_exact(width).enumerate() {
        let (d, inv) = act_scale(x);
        for (o, &v) in dst[i * width..(i + 1) * width].iter_mut().zip(x) {
            *o = quant_kv(v, inv) as i8;
        }
        scales[i] = d;
    }
}

/// Rounds rows of `width` floats to exactly what [`quantize_rows_q8`] and a
/// read back give, in place: `x = (quant_kv(x, inv) as i8) as f32 * scale`
/// (the f32 product, as [`Q8Rows`] values are; a zero level is +0 and a
/// NaN stored as 0), so fresh keys and values score and sum like cached
/// ones bit for bit.
pub fn round_q8(x: &mut [f32], width: usize) {
    if width == 0 {
        return;
    }
    for row in x.chunks_exact_mut(width) {
        let (d, inv) = act_scale(row);
        for v in row.iter_mut() {
            *v = (quant_kv(*v, inv) as i8) as f32 * d;
        }
    }
}

/// [`dot_rows`] over int8 keys: `out[i] = scale * dot(q, key i)` with each
/// key's values `q as f32 * key scale` in [`dot_f32`]'s order.
///
/// # Panics
/// If `k` does not hold `out.len()` rows of `q.len()`.
pub fn dot_rows_q8(q: &[f32], k: Q8Rows<'_>, scale: f32, out: &mut [f32]) {
    let hd = q.len();
    for (i, o) in out.iter_mut().enumerate() {
        let (row, s) = (&k.qs[i * k.stride..i * k.stride + hd], k.scales[i * k.scale_stride]);
        *o = scale * dot_by(q, |j| row[j] as f32 * s);
    }
}

/// [`axpy_rows`] over int8 values: `out += p[i] * (q as f32 * scale)` per
/// row in order, not fused.
///
/// # Panics
/// If `v` does not hold `p.len()` rows of `out.len()`.
pub fn axpy_rows_q8(p: &[f32], v: Q8Rows<'_>, out: &mut [f32]) {
    let hd = out.len();
    for (i, &pi) in p.iter().enumerate() {
        let (row, s) = (&v.qs[i * v.stride..i * v.stride + hd], v.scales[i * v.scale_stride]);
        for (o, &x) in out.iter_mut().zip(row) {
            *o += pi * (x as f32 * s);
        }
    }
}

/// `dst[i] = f16(src[i])` (round to nearest even).
pub fn to_f16(src: &[f32], dst: &mut [f16]) {
    for (o, &x) in dst.iter_mut().zip(src) {
        *o = f16::from_f32(x);
    }
}

/// Rounds every value to f16 precision in place: `x = f32(f16(x))`.
pub fn round_f16(x: &mut [f32]) {
    for v in x.iter_mut() {
        *v = f16::from_f32(*v).to_f32();
    }
}

/// `y += a * x`.
pub fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    for (o, &v) in y.iter_mut().zip(x) {
        *o += a * v;
    }
}

/// `y += a * x` with `x` in f16.
pub fn axpy_f16(a: f32, x: &[f16], y: &mut [f32]) {
    for (o, &v) in y.iter_mut().zip(x) {
        *o += a * v.to_f32();
    }
}

/// RMSNorm: `out = x / sqrt(mean(x^2) + eps) * weight`.
pub fn rmsnorm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let n = x.len();
    let ss = dot_f32(x, x) / n as f32;
    let scale = 1.0 / libm::sqrtf(ss + eps);
    for ((o, &v), &w) in out.iter_mut().zip(x).zip(weight) {
        *o = w * (v * scale);
    }
}

/// In-place softmax.
pub fn softmax(x: &mut [f32]) {
    let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    let mut sum = 0.0f32;
    for v in x.iter_mut() {
        *v = libm::expf(*v - max);
        sum += *v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// SwiGLU in place: `gate[i] = silu(gate[i]) * up[i]`.
pub fn swiglu(gate: &mut [f32], up: &[f32]) {
    for (g, &u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + libm::expf(-*g)) * u;
    }
}

/// Rotates one head in place (HF "rotate half" pairing: element `i` with
/// `i + head_dim/2`) by angles `pos * inv_freq[i]`.
pub fn rope(head: &mut [f32], pos: i64, inv_freq: &[f32]) {
    let half = inv_freq.len();
    for (i, &f) in inv_freq.iter().enumerate() {
        let (sin, cos) = rope_angle(pos, f);
        let (a, b) = (head[i], head[i + half]);
        head[i] = a * cos - b * sin;
        head[i + half] = b * cos + a * sin;
    }
}

/// The sine and cosine of `pos * inv_freq`, exact to f32 at every position:
/// the product is formed in f64 (exact while `|pos| < 2^29`: `inv_freq` has
/// 24 significant bits) and `libm`'s f64 `sin`/`cos` reduce the argument
/// exactly, so precision does not decay as positions grow (in f32, by
/// position 10^6 the angle itself is off by ~0.06 rad, and near 2^24
/// neighbouring positions get the same angle).
#[inline]
pub fn rope_angle(pos: i64, inv_freq: f32) -> (f32, f32) {
    let angle = pos as f64 * inv_freq as f64;
    (libm::sin(angle) as f32, libm::cos(angle) as f32)
}

/// The cosines and sines [`rope`] uses at position `pos` (negative: a
/// rotation back): `cs[i] = cos`, `cs[half + i] = sin` of
/// `pos * inv_freq[i]` ([`rope_angle`]; `cs` has `2 * half`).
pub fn rope_table(pos: i64, inv_freq: &[f32], cs: &mut [f32]) {
    let half = inv_freq.len();
    for (i, &f) in inv_freq.iter().enumerate() {
        let (sin, cos) = rope_angle(pos, f);
        cs[i] = cos;
        cs[half + i] = sin;
    }
}

/// [`rope`] with a precomputed [`rope_table`]: the same values.
pub fn rope_with(head: &mut [f32], cs: &[f32]) {
    let half = cs.len() / 2;
    for i in 0..half {
        let (cos, sin) = (cs[i], cs[half + i]);
        let (a, b) = (head[i], head[i + half]);
        head[i] = a * cos - b * sin;
        head[i + half] = b * cos + a * sin;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ferrite_format::quant::{Q4_GROUP_BYTES, Q8_GROUP_BYTES};
    use ferrite_test_support::rng::values;

    /// `matmul` over every storage type, widths around the group size and
    /// strides wider than the rows (the padding must never be read), against
    /// a naive f64 loop over the dequantized rows: within 1e-5 relative to
    /// the sum of |products|, the f32 accumulation's error bound for these
    /// lengths. Small enough for Miri (`scripts/miri.sh`).
    #[test]
    fn matmul_matches_a_naive_loop_for_every_storage_type() {
        for (case, &cols) in [1usize, 7, 31, 32, 33, 64, 70].iter().enumerate() {
            let (rows, n, x_stride, out_stride) = (3, 2, cols + 5, 3 + 2);
            let src = values(rows * cols, case as u64, 2.0);
            let x = values(n * x_stride, 100 + case as u64, 1.0);
            let groups = cols.div_ceil(GROUP);
            let f16s: Vec<f16> = src.iter().map(|&v| f16::from_f32(v)).collect();
            let (mut q8, mut q4) =
                (vec![0u8; rows * groups * Q8_GROUP_BYTES], vec![0u8; rows * groups * Q4_GROUP_BYTES]);
            let (mut s8, mut s4) = (vec![f16::ZERO; rows * groups], vec![f16::ZERO; rows * groups]);
            for r in 0..rows {
                let row = &src[r * cols..(r + 1) * cols];
                let g = r * groups..(r + 1) * groups;
                quantize_row_q8(
                    row,
                    &mut q8[r * groups * Q8_GROUP_BYTES..][..groups * Q8_GROUP_BYTES],
                    &mut s8[g.clone()],
                );
                quantize_row_q4(row, &mut q4[r * groups * Q4_GROUP_BYTES..][..groups * Q4_GROUP_BYTES], &mut s4[g]);
            }
            // The file's 8-row tiles.
            let padded = quant::padded_rows(rows);
            let (mut t8, mut t4) =
                (vec![0u8; padded * groups * Q8_GROUP_BYTES], vec![0u8; padded * groups * Q4_GROUP_BYTES]);
            let (mut ts8, mut ts4) = (vec![f16::ZERO; padded * groups], vec![f16::ZERO; padded * groups]);
            quant::tile_rows(ferrite_format::DType::Q8, &q8, &s8, rows, groups, &mut t8, &mut ts8);
            quant::tile_rows(ferrite_format::DType::Q4, &q4, &s4, rows, groups, &mut t4, &mut ts4);
            let all = [
                Weights::F32(&src),
                Weights::F16(&f16s),
                Weights::Q8 { qs: &t8, scales: &ts8 },
                Weights::Q4 { qs: &t4, scales: &ts4 },
            ];
            for w in all {
                let m = Matrix { w, rows, cols };
                // A tiled row dequantizes exactly like its logical row.
                for r in 0..rows {
                    let (mut a, mut b) = (vec![0f32; cols], vec![f32::NAN; cols]);
                    m.dequantize_row(r, &mut a);
                    let gs = r * groups..(r + 1) * groups;
                    match w {
                        Weights::Q8 { .. } => dequantize_row_q8(&q8[r * groups * 32..], &s8[gs], &mut b),
                        Weights::Q4 { .. } => dequantize_row_q4(&q4[r * groups * 16..], &s4[gs], &mut b),
                        _ => b.copy_from_slice(&a),
                    }
                    assert_eq!(a, b, "{w:?} row {r}");
                }
                let mut out = vec![f32::NAN; n * out_stride];
                let mut row = vec![0f32; cols + 3];
                matmul(&m, &x, x_stride, n, &mut out, out_stride, &mut row);
                for r in 0..rows {
                    let mut deq = vec![0f32; cols];
                    m.dequantize_row(r, &mut deq);
                    for t in 0..n {
                        let xs = &x[t * x_stride..t * x_stride + cols];
                        let exact: f64 = deq.iter().zip(xs).map(|(&a, &b)| a as f64 * b as f64).sum();
                        let magnitude: f64 = deq.iter().zip(xs).map(|(&a, &b)| (a as f64 * b as f64).abs()).sum();
                        let got = out[t * out_stride + r] as f64;
                        assert!(
                            (got - exact).abs() <= 1e-5 * magnitude + 1e-12,
                            "{w:?} cols {cols} r {r} t {t}: {got} vs {exact}"
                        );
                    }
                }
                // Columns of `out` past `rows` are not written.
                for t in 0..n {
                    assert!(out[t * out_stride + rows..(t + 1) * out_stride].iter().all(|v| v.is_nan()));
                }
            }
        }
    }

    /// The element-wise kernels against their formulas, in f64.
    #[test]
    fn elementwise_kernels_match_their_formulas() {
        for n in [1usize, 2, 9, 16, 33] {
            let x = values(n, n as u64, 3.0);
            let weight = values(n, 50 + n as u64, 1.5);
            let close = |a: f32, b: f64, what: &str| {
                assert!((a as f64 - b).abs() <= 1e-5 * b.abs().max(1.0), "{what} n {n}: {a} vs {b}");
            };
            // rmsnorm
            let mut out = vec![0f32; n];
            rmsnorm(&x, &weight, 1e-5, &mut out);
            let ms = x.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / n as f64;
            for i in 0..n {
                close(out[i], weight[i] as f64 * x[i] as f64 / (ms + 1e-5).sqrt(), "rmsnorm");
            }
            // softmax
            let mut p = x.clone();
            softmax(&mut p);
            let max = x.iter().fold(f64::NEG_INFINITY, |m, &v| m.max(v as f64));
            let z: f64 = x.iter().map(|&v| (v as f64 - max).exp()).sum();
            for i in 0..n {
                close(p[i], (x[i] as f64 - max).exp() / z, "softmax");
            }
            // swiglu
            let mut g = x.clone();
            swiglu(&mut g, &weight);
            for i in 0..n {
                let v = x[i] as f64;
                close(g[i], v / (1.0 + (-v).exp()) * weight[i] as f64, "swiglu");
            }
            // rope (even lengths only: pairs i, i + n/2)
            if n % 2 == 0 {
                let inv_freq: Vec<f32> = (0..n / 2).map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / n as f32)).collect();
                let mut h = x.clone();
                let pos = 5;
                rope(&mut h, pos, &inv_freq);
                for (i, &f) in inv_freq.iter().enumerate() {
                    let angle = pos as f64 * f as f64;
                    let (a, b) = (x[i] as f64, x[i + n / 2] as f64);
                    close(h[i], a * angle.cos() - b * angle.sin(), "rope");
                    close(h[i + n / 2], b * angle.cos() + a * angle.sin(), "rope");
                }
            }
        }
    }
}
