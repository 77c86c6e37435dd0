//! The layers over a batch and the output head.

use ferrite_kernels::reference as k;
use ferrite_kernels::{ActsMut, Kernels};

use super::attention::Attention;
use super::Session;
use crate::kv::KvShape;
use crate::parallel::{self, Input};

impl Session<'_, '_> {
    /// Final norm and output projection of batch rows `first..first + n`
    /// into `logits` (`n × vocab`), as one matrix product.
    pub(super) fn head_rows(&mut self, first: usize, n: usize) {
        let c = *self.model.config();
        let d = c.d_model as usize;
        let w = self.weights;
        let kern = self.kern;
        norm_rows(kern, &self.x[first * d..(first + n) * d], w.out_norm, c.norm_eps, &mut self.xn[..n * d]);
        let f32_acts = self.plan.cfg.f32_activations || !w.output.weights().is_quantized();
        let input = prepare(kern, &self.xn[..n * d], d, n, &mut self.acts, f32_acts);
        let (par, row_len) = (super::par(&self.pool), self.plan.layout.row);
        parallel::matmul(par, kern, &w.output, input, n, self.logits, w.output.rows(), self.row, row_len);
    }

    /// Runs the layers over `tokens` (valid ids, at most `max_batch`),
    /// appending their keys and values to the cache. Leaves the final
    /// hidden states in `x`.
    pub(super) fn forward(&mut self, tokens: &[u32]) {
        let c = *self.model.config();
        let n = tokens.len();
        let d = c.d_model as usize;
        let q_dim = c.q_dim() as usize;
        let kv_dim = c.kv_dim() as usize;
        let ffn = c.ffn_dim as usize;
        let hd = c.head_dim as usize;
        let max_ctx = self.plan.cfg.max_ctx;
        let kern = self.kern;
        let par = super::par(&self.pool);
        let row_len = self.plan.layout.row;
        let f32_acts = self.plan.cfg.f32_activations;
        let shape = KvShape { kv_dim, head_dim: hd };
        for t in 0..n {
            k::rope_table((self.pos + t) as i64, self.inv_freq, &mut self.rope[t * hd..(t + 1) * hd]);
        }
        for (t, &id) in tokens.iter().enumerate() {
            self.weights.embed.dequantize_row(id as usize, &mut self.x[t * d..(t + 1) * d]);
        }
        let layers = self.layers;
        for (layer, w) in layers.iter().enumerate() {
            norm_rows(kern, &self.x[..n * d], w.attn_norm, c.norm_eps, &mut self.xn[..n * d]);
            let float = f32_acts || ![&w.wq, &w.wk, &w.wv].iter().any(|m| m.weights().is_quantized());
            let input = prepare(kern, &self.xn[..n * d], d, n, &mut self.acts, float);
            let jobs =
                [(&w.wq, &mut self.q[..], q_dim), (&w.wk, &mut self.k[..], kv_dim), (&w.wv, &mut self.v[..], kv_dim)];
            parallel::matmuls(par, kern, jobs, input, n, self.row, row_len);
            if let Some([bq, bk, bv]) = w.qkv_bias {
                for t in 0..n {
                    add(&mut self.q[t * q_dim..(t + 1) * q_dim], bq);
                    add(&mut self.k[t * kv_dim..(t + 1) * kv_dim], bk);
                    add(&mut self.v[t * kv_dim..(t + 1) * kv_dim], bv);
                }
            }
            // RoPE at absolute positions (tables made once per batch); keys
            // are cached already rotated.
            for t in 0..n {
                let cs = &self.rope[t * hd..(t + 1) * hd];
                for h in self.q[t * q_dim..(t + 1) * q_dim].chunks_exact_mut(hd) {
                    (kern.rope)(h, cs);
                }
                for h in self.k[t * kv_dim..(t + 1) * kv_dim].chunks_exact_mut(hd) {
                    (kern.rope)(h, cs);
                }
            }
            // Attention. Keys and values of this batch come from `k`/`v`
            // (rounded to the cache's precision first, so batching never
            // changes results); earlier ones from the cache, in runs of
            // consecutive slots. The batch is written to the cache
            // afterwards, so a wrapping ring never overwrites a key a token
            // of the same batch still needs.
            self.kv.round_trip(kern, &mut self.k[..n * kv_dim], shape);
            self.kv.round_trip(kern, &mut self.v[..n * kv_dim], shape);
            let layer_row = layer * max_ctx;
            let n0 = self.pos;
            let attn = Attention::new(
                &c,
                kern,
                &self.kv,
                &self.plan,
                [&self.q[..n * q_dim], &self.k[..n * kv_dim], &self.v[..n * kv_dim]],
                self.inv_freq,
                layer_row,
                n0,
            );
            attn.run(n, &mut self.att[..n * q_dim], self.scores, par);
            let ring = attn.ring;
            for t in 0..n {
                let row = layer_row + ring.slot(n0 + t);
                let (keys, values) = (&self.k[t * kv_dim..(t + 1) * kv_dim], &self.v[t * kv_dim..(t + 1) * kv_dim]);
                self.kv.write(kern, row, keys, values, shape);
            }
            let float = f32_acts || !w.wo.weights().is_quantized();
            let input = prepare(kern, &self.att[..n * q_dim], q_dim, n, &mut self.acts, float);
            parallel::matmul(par, kern, &w.wo, input, n, self.xn, d, self.row, row_len);
            add(&mut self.x[..n * d], &self.xn[..n * d]);

            norm_rows(kern, &self.x[..n * d], w.ffn_norm, c.norm_eps, &mut self.xn[..n * d]);
            let float = f32_acts || !(w.wg.weights().is_quantized() || w.wu.weights().is_quantized());
            let input = prepare(kern, &self.xn[..n * d], d, n, &mut self.acts, float);
            let jobs = [(&w.wg, &mut self.gate[..], ffn), (&w.wu, &mut self.up[..], ffn)];
            parallel::matmuls(par, kern, jobs, input, n, self.row, row_len);
            (kern.swiglu)(&mut self.gate[..n * ffn], &self.up[..n * ffn]);
            let float = f32_acts || !w.wd.weights().is_quantized();
            let input = prepare(kern, &self.gate[..n * ffn], ffn, n, &mut self.acts, float);
            parallel::matmul(par, kern, &w.wd, input, n, self.xn, d, self.row, row_len);
            add(&mut self.x[..n * d], &self.xn[..n * d]);
        }
        self.pos += n;
    }
}

/// RMSNorm of each `weight.len()`-wide row of `x` into the same row of `out`.
fn norm_rows(kern: &Kernels, x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let d = weight.len();
    for (row, dst) in x.chunks_exact(d).zip(out.chunks_exact_mut(d)) {
        (kern.rmsnorm)(row, weight, eps, dst);
    }
}

/// The input of the matrix products over `x` (`n` rows of `cols`): `x`
/// itself, and its int8 quantization in `acts` unless `f32_acts` (asked
/// for, or no matrix reading this input is q8/q4).
fn prepare<'x>(
    kern: &Kernels,
    x: &'x [f32],
    cols: usize,
    n: usize,
    acts: &'x mut ActsMut<'_>,
    f32_acts: bool,
) -> Input<'x> {
    if f32_acts {
        return Input { x, stride: cols, acts: None };
    }
    (kern.quantize_acts)(x, cols, n, cols, acts);
    Input { x, stride: cols, acts: Some(acts.as_acts()) }
}

fn add(dst: &mut [f32], src: &[f32]) {
    for (o, &s) in dst.iter_mut().zip(src) {
        *o += s;
    }
}
