//! Quantizing f32 rows into the logical planes of the plane types (q5_0,
//! q5_1, q4k, q5k, q6k; layouts in `format/src/quant.rs`), in the same
//! order as a transcoded GGUF's blocks (`transcode.rs`), so that both tile
//! and write the same way. The searches are the kernels' quantizers
//! (`ferrite_kernels::quantize`, `kernels/src/quantize/kquant.rs`).

use ferrite_format::quant::{self, GROUP, SUPER};
use ferrite_format::DType;
use ferrite_kernels::quantize::{
    quantize_group_affine, quantize_group_symmetric, quantize_super_affine, quantize_super_q6k,
};
use half::f16;
use rayon::prelude::*;

use super::transcode::{push_levels, Logical};

/// Appends the logical units of `values` (whole rows of `cols` elements)
/// quantized as `dtype` to `out`. Returns the index of the first row whose
/// scale (or minimum, or super-block step) overflows f16, if any.
///
/// Other types append nothing. A K type needs `cols` a multiple of 256
/// (the plan falls back to q5_0/q5_1/q8 otherwise; a partial super-block
/// would be left out).
///
/// Runs on rayon's pool, a few rows per task (each row's search is
/// independent of the others; the parts are appended in row order, so the
/// result is the same on any number of threads).
pub(super) fn quantize_rows(dtype: DType, values: &[f32], cols: usize, out: &mut Logical) -> Result<(), usize> {
    /// Rows per task: about 10 µs to 1 ms of work each.
    const ROWS: usize = 8;
    if cols == 0 {
        return Ok(());
    }
    let parts: Vec<Result<Logical, usize>> = values
        .par_chunks(cols * ROWS)
        .enumerate()
        .map(|(i, rows)| {
            let mut part = Logical::default();
            quantize_some(dtype, rows, cols, &mut part).map(|()| part).map_err(|r| i * ROWS + r)
        })
        .collect();
    for part in parts {
        for (o, p) in out.iter_mut().zip(part?) {
            o.extend_from_slice(&p);
        }
    }
    Ok(())
}

/// [`quantize_rows`] on the calling thread.
fn quantize_some(dtype: DType, values: &[f32], cols: usize, out: &mut Logical) -> Result<(), usize> {
    let finite = |h: &[f16]| h.iter().all(|h| h.is_finite());
    for (r, row) in values.chunks_exact(cols).enumerate() {
        let ok = match dtype {
            DType::Q5_0 | DType::Q5_1 => row.chunks(GROUP).all(|x| {
                let mut levels = [0u8; GROUP];
                let five_0 = dtype == DType::Q5_0;
                let factors = if five_0 {
                    let m = x.iter().fold(0.0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
                    let mut q = [0i8; GROUP];
                    let d = quantize_group_symmetric(x, -16, 15, f16::from_f32(m / -16.0), &mut q);
                    levels = q.map(|q| (q as i32 + quant::Q5_OFFSET) as u8);
                    [d, f16::ZERO]
                } else {
                    let (d, m) = quantize_group_affine(x, 31, &mut levels);
                    [d, m]
                };
                push_levels(&levels, 4, out);
                out[2].extend_from_slice(&factors[0].to_le_bytes());
                if !five_0 {
                    out[3].extend_from_slice(&factors[1].to_le_bytes());
                }
                finite(&factors)
            }),
            DType::Q4K | DType::Q5K => row.as_chunks::<SUPER>().0.iter().all(|x| {
                let five = dtype == DType::Q5K;
                let b = quantize_super_affine(x, if five { 31 } else { 15 });
                let at = usize::from(five);
                for (g, levels) in b.levels.as_chunks::<GROUP>().0.iter().enumerate() {
                    push_levels(levels, if five { 4 } else { 0 }, out);
                    out[1 + at].push(b.scales[g]);
                    out[2 + at].push(b.mins[g]);
                }
                out[3 + at].extend_from_slice(&b.d.to_le_bytes());
                out[4 + at].extend_from_slice(&b.dmin.to_le_bytes());
                finite(&[b.d, b.dmin])
            }),
            DType::Q6K => row.as_chunks::<SUPER>().0.iter().all(|x| {
                let b = quantize_super_q6k(x);
                for (g, levels) in b.levels.as_chunks::<GROUP>().0.iter().enumerate() {
                    push_levels(levels, 8, out);
                    out[2].extend(b.scales[2 * g..2 * g + 2].iter().map(|&s| s as u8));
                }
                out[3].extend_from_slice(&b.d.to_le_bytes());
                finite(&[b.d])
            }),
            // Not a plane type: the encoder's own paths store them.
            _ => return Ok(()),
        };
        if !ok {
            return Err(r);
        }
    }
    Ok(())
}
