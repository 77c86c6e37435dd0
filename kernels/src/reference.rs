//! Scalar reference kernels: the definition of correct.
//!
//! Layouts of the quantized types are defined in [`ferrite_format::quant`].

use ferrite_format::quant::{self, GROUP, Q4_GROUP_BYTES, Q8_GROUP_BYTES};
use half::f16;

/// Quantizes one row of `src.len()` values to q8: `qs` receives
/// `groups * 32` bytes (zero-padded tail), `scales` one f16 per group.
///
/// Each group's scale is `max|x| / 127` rounded to f16; values are
/// `round(x / scale)`, so `|x - q * scale| <= scale / 2`.
///
/// # Panics
/// If `qs` or `scales` is shorter than the row needs.
pub fn quantize_row_q8(src: &[f32], qs: &mut [u8], scales: &mut [f16]) {
    for (g, chunk) in src.chunks(GROUP).enumerate() {
        let amax = chunk.iter().fold(0.0f32, |m, &x| m.max(x.abs()));
        let d = f16::from_f32(amax / 127.0);
        scales[g] = d;
        let inv = if d.to_f32() > 0.0 { 1.0 / d.to_f32() } else { 0.0 };
        let out = &mut qs[g * Q8_GROUP_BYTES..(g + 1) * Q8_GROUP_BYTES];
        for (j, o) in out.iter_mut().enumerate() {
            let x = chunk.get(j).copied().unwrap_or(0.0);
            *o = libm::roundf(x * inv).clamp(-127.0, 127.0) as i8 as u8;
        }
    }
}

/// Quantizes one row to q4 (symmetric): each group's scale is `max|x| / 7`
/// rounded to f16, values `round(x / scale)` clamped to -8..=7, so
/// `|x - q * scale| <= scale / 2`.
///
/// # Panics
/// If `qs` or `scales` is shorter than the row needs.
pub fn quantize_row_q4(src: &[f32], qs: &mut [u8], scales: &mut [f16]) {
    for (g, chunk) in src.chunks(GROUP).enumerate() {
        let amax = chunk.iter().fold(0.0f32, |m, &x| m.max(x.abs()));
        let d = f16::from_f32(amax / 7.0);
        scales[g] = d;
        let inv = if d.to_f32() > 0.0 { 1.0 / d.to_f32() } else { 0.0 };
        let mut q = [0i8; GROUP];
        for (j, v) in q.iter_mut().enumerate() {
            let x = chunk.get(j).copied().unwrap_or(0.0);
            *v = libm::roundf(x * inv).clamp(-8.0, 7.0) as i8;
        }
        quant::q4_pack(&q, &mut qs[g * Q4_GROUP_BYTES..(g + 1) * Q4_GROUP_BYTES]);
    }
}

/// Dequantizes one q8 row into `dst` (`dst.len()` real elements).
pub fn dequantize_row_q8(qs: &[u8], scales: &[f16], dst: &mut [f32]) {
    for (g, chunk) in dst.chunks_mut(GROUP).enumerate() {
        let d = scales[g].to_f32();
        let q = &qs[g * Q8_GROUP_BYTES..];
        for (j, o) in chunk.iter_mut().enumerate() {
            *o = q[j] as i8 as f32 * d;
        }
    }
}

/// Dequantizes one q4 row into `dst` (`dst.len()` real elements).
pub fn dequantize_row_q4(qs: &[u8], scales: &[f16], dst: &mut [f32]) {
    for (g, chunk) in dst.chunks_mut(GROUP).enumerate() {
        let d = scales[g].to_f32();
        let q = &qs[g * Q4_GROUP_BYTES..(g + 1) * Q4_GROUP_BYTES];
        for (j, o) in chunk.iter_mut().enumerate() {
            *o = quant::q4_get(q, j) as f32 * d;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn check(len: usize, seed: u64, q4: bool) {
        let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
        let src: Vec<f32> = (0..len)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 8.0
            })
            .collect();
        let groups = len.div_ceil(GROUP);
        let mut qs = vec![0u8; groups * if q4 { 16 } else { 32 }];
        let mut scales = vec![f16::ZERO; groups];
        let mut back = vec![0f32; len];
        if q4 {
            quantize_row_q4(&src, &mut qs, &mut scales);
            dequantize_row_q4(&qs, &scales, &mut back);
        } else {
            quantize_row_q8(&src, &mut qs, &mut scales);
            dequantize_row_q8(&qs, &scales, &mut back);
        }
        for (i, (&x, &y)) in src.iter().zip(&back).enumerate() {
            let d = scales[i / GROUP].to_f32();
            assert!((x - y).abs() <= d * 0.5 * (1.0 + 1e-5) + 1e-7, "elem {i}: {x} vs {y}, scale {d}");
        }
        // Padding quants are exactly zero.
        if len % GROUP != 0 {
            let pad = vec![0f32; GROUP - len % GROUP];
            let mut full = vec![0f32; groups * GROUP];
            if q4 {
                dequantize_row_q4(&qs, &scales, &mut full);
            } else {
                dequantize_row_q8(&qs, &scales, &mut full);
            }
            assert_eq!(&full[len..], &pad[..]);
        }
    }

    proptest! {
        #[test]
        fn q8_roundtrip_within_half_step(len in 0usize..200, seed in any::<u64>()) { check(len, seed, false) }
        #[test]
        fn q4_roundtrip_within_half_step(len in 0usize..200, seed in any::<u64>()) { check(len, seed, true) }
    }

    #[test]
    fn zero_group_has_zero_scale() {
        let mut qs = [0xFFu8; 16];
        let mut sc = [f16::ONE];
        quantize_row_q4(&[0.0; 32], &mut qs, &mut sc);
        assert_eq!(sc[0], f16::ZERO);
        assert!(qs.iter().all(|&b| b == 0x88));
    }
}
