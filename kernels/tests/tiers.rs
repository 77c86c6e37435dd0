//! Every kernel tier against the scalar reference (`reference.rs`) on
//! random shapes: row counts that are not a multiple of the 8-row tile,
//! columns with partial groups, k = 0 and 1, any row sub-range (as thread
//! splits give), 1..6 tokens. Integer paths (activation quantization and
//! q8/q4 products) must agree bit for bit; float paths within the bound
//! stated at each check.
//!
//! With `FERRITE_KERNELS` set, only that tier is checked (and it must be
//! supported: forcing a tier the CPU lacks fails); with
//! `FERRITE_EXPECT_TIER` set, the best tier detected must be that one
//! (scripts/aarch64-qemu.sh uses both under qemu's CPU models).

use ferrite_format::quant::{self, padded_rows, tile_rows};
use ferrite_format::DType;
use ferrite_kernels::reference::{self, Matrix, Weights};
use ferrite_kernels::{ActsMut, KernelError, Kernels, Out, Q8Rows, Tier};
use half::f16;
use proptest::prelude::*;

/// The tiers to check: the one `FERRITE_KERNELS` forces, or every tier
/// this CPU can run (the reference always).
fn tiers() -> Vec<&'static Kernels> {
    if let Some(forced) = ferrite_kernels::env_tier().expect("FERRITE_KERNELS names a tier") {
        return vec![Kernels::for_tier(forced).unwrap_or_else(|e| panic!("FERRITE_KERNELS={forced}: {e}"))];
    }
    let all: Vec<_> = Tier::ALL.into_iter().filter(|t| t.supported()).map(|t| Kernels::for_tier(t).unwrap()).collect();
    assert!(!all.is_empty());
    all
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 11
    }
    fn f32(&mut self, scale: f32) -> f32 {
        ((self.next() >> 29) as f32 / (1u64 << 24) as f32 - 0.5) * 2.0 * scale
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.f32(scale)).collect()
    }
}

/// A random quantized `[rows, cols]` matrix in the file's tiled layout.
fn quantized(dtype: DType, rows: usize, cols: usize, rng: &mut Rng) -> (Vec<u8>, Vec<f16>) {
    let groups = cols.div_ceil(32);
    let row_q = quant::row_quant_bytes(dtype, cols);
    let mut logical = vec![0u8; rows * row_q];
    let mut scales = vec![f16::ZERO; rows * groups];
    for r in 0..rows {
        let src = rng.vec(cols, 2.0);
        let (q, s) = (&mut logical[r * row_q..(r + 1) * row_q], &mut scales[r * groups..(r + 1) * groups]);
        if dtype == DType::Q4 {
            reference::quantize_row_q4(&src, q, s);
        } else {
            reference::quantize_row_q8(&src, q, s);
        }
    }
    let mut tiles = vec![0u8; padded_rows(rows) * row_q];
    let mut tile_scales = vec![f16::ZERO; padded_rows(rows) * groups];
    tile_rows(dtype, &logical, &scales, rows, groups, &mut tiles, &mut tile_scales);
    (tiles, tile_scales)
}

/// The q4 or q8 (`dtype`) `[rows, cols]` matrix over these planes.
fn int_matrix<'a>(dtype: DType, qs: &'a [u8], scales: &'a [f16], rows: usize, cols: usize) -> Matrix<'a> {
    let w = if dtype == DType::Q4 { Weights::Q4 { qs, scales } } else { Weights::Q8 { qs, scales } };
    Matrix::new(w, rows, cols).expect("matrix shape")
}

/// A random q4a `[rows, cols]` matrix in the file's tiled layout: quants,
/// scales, minimums.
fn quantized_q4a(rows: usize, cols: usize, rng: &mut Rng) -> (Vec<u8>, Vec<f16>, Vec<f16>) {
    let groups = cols.div_ceil(32);
    let row_q = quant::row_quant_bytes(DType::Q4A, cols);
    let (mut logical, mut scales, mut mins) =
        (vec![0u8; rows * row_q], vec![f16::ZERO; rows * groups], vec![f16::ZERO; rows * groups]);
    for r in 0..rows {
        let src: Vec<f32> = rng.vec(cols, 2.0).iter().map(|v| v + 0.5).collect();
        let g = r * groups..(r + 1) * groups;
        reference::quantize_row_q4a(
            &src,
            &mut logical[r * row_q..(r + 1) * row_q],
            &mut scales[g.clone()],
            &mut mins[g],
        );
    }
    let padded = padded_rows(rows);
    let (mut tiles, mut tile_scales, mut tile_mins) =
        (vec![0u8; padded * row_q], vec![f16::ZERO; padded * groups], vec![f16::ZERO; padded * groups]);
    tile_rows(DType::Q4A, &logical, &scales, rows, groups, &mut tiles, &mut tile_scales);
    let mut again = vec![0u8; padded * row_q];
    tile_rows(DType::Q4A, &logical, &mins, rows, groups, &mut again, &mut tile_mins);
    (tiles, tile_scales, tile_mins)
}

/// The types with more planes than q4/q8: q5_0, q5_1, q4k, q5k, q6k.
const PLANE_TYPES: [DType; 5] = [DType::Q5_0, DType::Q5_1, DType::Q4K, DType::Q5K, DType::Q6K];

/// Random planes of a `dtype` (one of [`PLANE_TYPES`]) `[rows, cols]`
/// matrix, padding rows included: the level planes random bytes (`fill`
/// when given), the K types' 6-bit group scales and minimums in 0..64,
/// q6k's int8 scales any byte, the f16 planes finite values of either sign.
/// Stored as `u16` so the f16 planes are aligned.
fn plane_data(dtype: DType, rows: usize, cols: usize, fill: Option<u8>, rng: &mut Rng) -> Vec<Vec<u16>> {
    quant::planes(dtype)
        .iter()
        .map(|p| {
            let bytes = p.bytes(rows, cols).expect("plane size");
            let mut v = vec![0u16; bytes.div_ceil(2)];
            let b: &mut [u8] = bytemuck::cast_slice_mut(&mut v);
            let f16_plane = p.unit == 2 && !(dtype == DType::Q6K && p.name == "scales");
            if f16_plane {
                let h: &mut [f16] = bytemuck::cast_slice_mut(&mut v);
                for h in h.iter_mut() {
                    *h = f16::from_f32(rng.f32(0.05));
                }
            } else {
                for x in b.iter_mut() {
                    let r = rng.next() as u8;
                    *x = match p.name {
                        "quants" | "high" => fill.unwrap_or(r),
                        "scales" if dtype == DType::Q6K => fill.map_or(r, |f| if f & 1 == 0 { 0x80 } else { 0x7F }),
                        _ => r % 64,
                    };
                }
            }
            v
        })
        .collect()
}

/// The matrix over [`plane_data`]'s planes.
fn plane_matrix(dtype: DType, planes: &[Vec<u16>], rows: usize, cols: usize) -> Matrix<'_> {
    let mut p: [&[u8]; quant::MAX_PLANES] = [&[]; quant::MAX_PLANES];
    for (p, (v, plane)) in p.iter_mut().zip(planes.iter().zip(quant::planes(dtype))) {
        *p = &bytemuck::cast_slice(v)[..plane.bytes(rows, cols).unwrap()];
    }
    Matrix::new(Weights::from_planes(dtype, p).expect("planes"), rows, cols).expect("matrix shape")
}

fn quantize_acts(k: &Kernels, x: &[f32], stride: usize, n: usize, cols: usize) -> (Vec<i8>, Vec<f32>, Vec<i32>) {
    let g = cols.div_ceil(32);
    let (mut qs, mut d, mut sums) = (vec![99i8; n * g * 32], vec![f32::NAN; n * g], vec![-1i32; n * g]);
    (k.quantize_acts)(x, stride, n, cols, &mut ActsMut { qs: &mut qs, d: &mut d, sums: &mut sums });
    (qs, d, sums)
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|f| f.to_bits()).collect()
}

fn check_case(rows: usize, cols: usize, n: usize, lo: usize, hi: usize, seed: u64) {
    let mut rng = Rng(seed);
    let hi = hi.min(rows);
    let lo = lo.min(hi);
    let stride = cols + 3;
    let x = rng.vec(n * stride, 3.0);
    let out_stride = rows + 1;
    let reference = Kernels::for_tier(Tier::Reference).unwrap();
    let want_acts = quantize_acts(reference, &x, stride, n, cols);
    for k in tiers() {
        // Activation quantization: exact.
        let got = quantize_acts(k, &x, stride, n, cols);
        assert_eq!(got.0, want_acts.0, "{} quants", k.tier);
        assert_eq!(bits(&got.1), bits(&want_acts.1), "{} scales", k.tier);
        assert_eq!(got.2, want_acts.2, "{} sums", k.tier);
    }
    let acts = ferrite_kernels::Acts { qs: &want_acts.0, d: &want_acts.1, sums: &want_acts.2 };
    for dtype in [DType::Q4, DType::Q8] {
        let (qs, scales) = quantized(dtype, rows, cols, &mut rng);
        let m = int_matrix(dtype, &qs, &scales, rows, cols);
        let run = |k: &Kernels| {
            let mut out = vec![f32::NAN; n * out_stride];
            let (_, part) = Out::new(&mut out, out_stride).split_at_row(lo);
            let (mut part, _) = part.split_at_row(hi);
            (k.matmul_q)(&m, lo..hi, &acts, n, &mut part);
            out
        };
        let want = run(reference);
        // The reference itself against a direct float formula.
        for t in 0..n {
            let mut row = vec![0f32; cols];
            for r in lo..hi {
                m.dequantize_row(r, &mut row);
                let g = cols.div_ceil(32);
                let mut exact = 0f64;
                for j in 0..cols {
                    let a = acts.qs[t * g * 32 + j] as f64 * acts.d[t * g + j / 32] as f64;
                    exact += row[j] as f64 * a;
                }
                let got = want[t * out_stride + r] as f64;
                assert!(
                    (got - exact).abs() <= 1e-3 * (1.0 + exact.abs()),
                    "reference {dtype:?} r{r} t{t}: {got} vs {exact}"
                );
            }
        }
        for k in tiers() {
            let got = run(k);
            assert_eq!(
                bits(&got),
                bits(&want),
                "{} {dtype:?} matmul_q rows {lo}..{hi} of {rows}, cols {cols}, n {n}",
                k.tier
            );
        }
        // Float path over quantized weights (f32 activations).
        check_float(&m, &x, stride, n, lo, hi, out_stride);
    }
    // The 5-bit and K types: integer paths bit for bit, and float paths.
    for dtype in PLANE_TYPES {
        let planes = plane_data(dtype, rows, cols, None, &mut rng);
        let m = plane_matrix(dtype, &planes, rows, cols);
        let run = |k: &Kernels| {
            let mut out = vec![f32::NAN; n * out_stride];
            let (_, part) = Out::new(&mut out, out_stride).split_at_row(lo);
            let (mut part, _) = part.split_at_row(hi);
            (k.matmul_q)(&m, lo..hi, &acts, n, &mut part);
            out
        };
        let want = run(reference);
        // The reference against the dequantized rows times the activations,
        // within f32 rounding of the magnitudes (the affine types subtract
        // their minimum's term).
        let g = cols.div_ceil(32);
        let mut row = vec![0f32; cols];
        for r in lo..hi {
            m.dequantize_row(r, &mut row);
            for t in 0..n {
                let (mut exact, mut mag) = (0f64, 0f64);
                for j in 0..cols {
                    let a = acts.qs[t * g * 32 + j] as f64 * acts.d[t * g + j / 32] as f64;
                    exact += row[j] as f64 * a;
                    mag += (row[j] as f64 * a).abs();
                }
                let got = want[t * out_stride + r] as f64;
                assert!((got - exact).abs() <= 1e-5 * mag + 1e-12, "reference {dtype:?} r{r} t{t}: {got} vs {exact}");
            }
        }
        for k in tiers() {
            assert_eq!(
                bits(&run(k)),
                bits(&want),
                "{} {dtype:?} matmul_q rows {lo}..{hi} of {rows}, cols {cols}, n {n}",
                k.tier
            );
        }
        check_float(&m, &x, stride, n, lo, hi, out_stride);
    }
    // q4a (always the float path).
    let (qs, scales, mins) = quantized_q4a(rows, cols, &mut rng);
    let m = Matrix::new(Weights::Q4A { qs: &qs, scales: &scales, mins: &mins }, rows, cols).expect("matrix shape");
    check_float(&m, &x, stride, n, lo, hi, out_stride);
    // f32 and f16 weights.
    let wf = rng.vec(rows * cols, 1.0);
    let wh: Vec<f16> = wf.iter().map(|&v| f16::from_f32(v)).collect();
    check_float(&Matrix::new(Weights::F32(&wf), rows, cols).expect("matrix shape"), &x, stride, n, lo, hi, out_stride);
    check_float(&Matrix::new(Weights::F16(&wh), rows, cols).expect("matrix shape"), &x, stride, n, lo, hi, out_stride);
}

/// Float products agree within `1e-5 * sum |w * x|` (summation order
/// only), and each tier's equals its own `dot` over the reference's
/// dequantized rows bit for bit (SIMD dequantization changes no value).
fn check_float(m: &Matrix<'_>, x: &[f32], stride: usize, n: usize, lo: usize, hi: usize, out_stride: usize) {
    let reference = Kernels::for_tier(Tier::Reference).unwrap();
    let run = |k: &Kernels| {
        let mut out = vec![f32::NAN; n * out_stride];
        let mut row = vec![0f32; m.cols() + 1];
        let (_, part) = Out::new(&mut out, out_stride).split_at_row(lo);
        let (mut part, _) = part.split_at_row(hi);
        (k.matmul_f)(m, lo..hi, x, stride, n, &mut part, &mut row);
        out
    };
    let want = run(reference);
    let mut row = vec![0f32; m.cols()];
    for k in tiers() {
        let got = run(k);
        for t in 0..n {
            for r in 0..m.rows() {
                let (g, w) = (got[t * out_stride + r], want[t * out_stride + r]);
                if !(lo..hi).contains(&r) {
                    assert!(g.is_nan() && w.is_nan(), "{} wrote row {r} outside {lo}..{hi}", k.tier);
                    continue;
                }
                m.dequantize_row(r, &mut row);
                let own = (k.dot)(&row, &x[t * stride..t * stride + m.cols()]);
                assert_eq!(g.to_bits(), own.to_bits(), "{} {:?} r{r} t{t}: matmul_f vs dot", k.tier, m.weights());
                let mag: f32 = row.iter().zip(&x[t * stride..]).map(|(a, b)| (a * b).abs()).sum();
                assert!(
                    (g - w).abs() <= 1e-5 * mag + 1e-30,
                    "{} {:?} r{r} t{t}: {g} vs {w}",
                    k.tier,
                    m.weights().is_quantized()
                );
            }
        }
    }
}

fn check_vector_ops(len: usize, seed: u64) {
    let mut rng = Rng(seed);
    let a = rng.vec(len, 2.0);
    let b = rng.vec(len, 2.0);
    let bh: Vec<f16> = b.iter().map(|&v| f16::from_f32(v)).collect();
    let bf: Vec<f32> = bh.iter().map(|v| v.to_f32()).collect();
    let weight = rng.vec(len, 1.0);
    let r = Kernels::for_tier(Tier::Reference).unwrap();
    let mag: f32 = a.iter().zip(&b).map(|(x, y)| (x * y).abs()).sum::<f32>() + 1e-30;
    for k in tiers() {
        let tol = 1e-5 * mag;
        assert!(((k.dot)(&a, &b) - (r.dot)(&a, &b)).abs() <= tol, "{} dot len {len}", k.tier);
        assert!(((k.dot_f16)(&a, &bh) - (r.dot_f16)(&a, &bh)).abs() <= tol, "{} dot_f16 len {len}", k.tier);
        // The f32 dot over f16-rounded values equals the f16 dot bit for bit
        // within a tier (batch keys score like cached ones).
        assert_eq!((k.dot)(&a, &bf).to_bits(), (k.dot_f16)(&a, &bh).to_bits(), "{} dot vs dot_f16", k.tier);
        let (mut y1, mut y2, mut y3) = (b.clone(), b.clone(), b.clone());
        (k.axpy)(0.37, &a, &mut y1);
        (r.axpy)(0.37, &a, &mut y2);
        for (i, (p, q)) in y1.iter().zip(&y2).enumerate() {
            assert!((p - q).abs() <= 1e-6 * (1.0 + p.abs()), "{} axpy [{i}]", k.tier);
        }
        (k.axpy_f16)(0.37, &bh, &mut y3);
        let mut y4 = b.clone();
        (k.axpy)(0.37, &bf, &mut y4);
        assert_eq!(bits(&y3), bits(&y4), "{} axpy_f16 vs axpy", k.tier);
        let (mut o1, mut o2) = (vec![0f32; len], vec![0f32; len]);
        (k.rmsnorm)(&a, &weight, 1e-5, &mut o1);
        (r.rmsnorm)(&a, &weight, 1e-5, &mut o2);
        for (p, q) in o1.iter().zip(&o2) {
            assert!((p - q).abs() <= 1e-5 * (1.0 + q.abs()), "{} rmsnorm", k.tier);
        }
    }
}

fn check_attention_ops(hd: usize, n: usize, seed: u64) {
    let mut rng = Rng(seed);
    let stride = hd + 5;
    let q = rng.vec(hd, 1.0);
    let kf = rng.vec(n * stride + hd, 1.0);
    let kh: Vec<f16> = kf.iter().map(|&v| f16::from_f32(v)).collect();
    let kr: Vec<f32> = kh.iter().map(|v| v.to_f32()).collect();
    let p = rng.vec(n, 1.0);
    let r = Kernels::for_tier(Tier::Reference).unwrap();
    for k in tiers() {
        let (mut a, mut b, mut c) = (vec![0f32; n], vec![0f32; n], vec![0f32; n]);
        (k.dot_rows)(&q, &kf, stride, 0.125, &mut a);
        (r.dot_rows)(&q, &kf, stride, 0.125, &mut c);
        for i in 0..n {
            // Each score is the tier's own dot, scaled.
            assert_eq!(a[i].to_bits(), (0.125 * (k.dot)(&q, &kf[i * stride..i * stride + hd])).to_bits());
            let mag: f32 = q.iter().zip(&kf[i * stride..]).map(|(x, y)| (x * y).abs()).sum::<f32>() * 0.125;
            assert!((a[i] - c[i]).abs() <= 1e-5 * mag + 1e-30, "{} dot_rows", k.tier);
        }
        // f16 keys score exactly like their f32 values.
        (k.dot_rows_f16)(&q, &kh, stride, 0.125, &mut b);
        (k.dot_rows)(&q, &kr, stride, 0.125, &mut a);
        assert_eq!(bits(&a), bits(&b), "{} dot_rows_f16 vs dot_rows", k.tier);
        let (mut o1, mut o2, mut o3) = (vec![0.5f32; hd], vec![0.5f32; hd], vec![0.5f32; hd]);
        (k.axpy_rows)(&p, &kr, stride, &mut o1);
        (k.axpy_rows_f16)(&p, &kh, stride, &mut o2);
        assert_eq!(bits(&o1), bits(&o2), "{} axpy_rows_f16 vs axpy_rows", k.tier);
        (r.axpy_rows)(&p, &kr, stride, &mut o3);
        for (x, y) in o1.iter().zip(&o3) {
            assert!((x - y).abs() <= 1e-5 * (1.0 + n as f32), "{} axpy_rows", k.tier);
        }
    }
}

/// The int8 KV kernels of every tier: quantization and the round trip of
/// fresh rows exact against the reference (and the round trip equal to
/// quantizing then reading back); scores and weighted sums over int8 rows
/// `stride` apart (scales `scale_stride` apart, both from an unaligned
/// start `pad`) bit-identical to the tier's own f32 kernels over the
/// round-tripped rows (a key scores alike from the cache and the batch),
/// and within `1e-5` of the reference relative to the sum of |products|.
fn check_q8_kv(src: &[f32], hd: usize, pad: usize, seed: u64) {
    let mut rng = Rng(seed);
    let n = if hd == 0 { 0 } else { src.len() / hd };
    let (stride, scale_stride) = (hd + 3, 2);
    let q = rng.vec(hd, 1.0);
    let p = rng.vec(n, 1.0);
    let r = Kernels::for_tier(Tier::Reference).unwrap();
    let quantize = |k: &Kernels| {
        let (mut qs, mut scales) = (vec![99i8; n * hd], vec![f32::NAN; n]);
        (k.quantize_rows_q8)(src, hd, &mut qs, &mut scales);
        (qs, scales)
    };
    let (want_q, want_s) = quantize(r);
    let mut want_rt = src.to_vec();
    (r.round_q8)(&mut want_rt, hd);
    for i in 0..n * hd {
        assert_eq!(want_rt[i].to_bits(), (want_q[i] as f32 * want_s[i / hd]).to_bits(), "round trip [{i}]");
    }
    let mut qs = vec![0i8; pad + n * stride];
    let mut scales = vec![0f32; pad + n * scale_stride];
    let mut kf = vec![0f32; n * stride];
    for i in 0..n {
        qs[pad + i * stride..pad + i * stride + hd].copy_from_slice(&want_q[i * hd..(i + 1) * hd]);
        scales[pad + i * scale_stride] = want_s[i];
        kf[i * stride..i * stride + hd].copy_from_slice(&want_rt[i * hd..(i + 1) * hd]);
    }
    let rows = Q8Rows { qs: &qs[pad..], scales: &scales[pad..], stride, scale_stride };
    let (mut want_dot, mut want_sum) = (vec![0f32; n], vec![0.25f32; hd]);
    (r.dot_rows_q8)(&q, rows, 0.125, &mut want_dot);
    (r.axpy_rows_q8)(&p, rows, &mut want_sum);
    for k in tiers() {
        let (got_q, got_s) = quantize(k);
        assert_eq!(got_q, want_q, "{} quantize_rows_q8 quants", k.tier);
        assert_eq!(bits(&got_s), bits(&want_s), "{} quantize_rows_q8 scales", k.tier);
        let mut rt = src.to_vec();
        (k.round_q8)(&mut rt, hd);
        assert_eq!(bits(&rt), bits(&want_rt), "{} round_q8", k.tier);
        if src.iter().any(|v| !v.is_finite()) {
            continue;
        }
        let (mut a, mut b) = (vec![f32::NAN; n], vec![f32::NAN; n]);
        (k.dot_rows_q8)(&q, rows, 0.125, &mut a);
        (k.dot_rows)(&q, &kf, stride, 0.125, &mut b);
        assert_eq!(bits(&a), bits(&b), "{} dot_rows_q8 vs dot_rows", k.tier);
        for i in 0..n {
            let mag: f32 = q.iter().zip(&kf[i * stride..]).map(|(x, y)| (x * y).abs()).sum::<f32>() * 0.125;
            assert!((a[i] - want_dot[i]).abs() <= 1e-5 * mag + 1e-30, "{} dot_rows_q8 [{i}]", k.tier);
        }
        let (mut o1, mut o2) = (vec![0.25f32; hd], vec![0.25f32; hd]);
        (k.axpy_rows_q8)(&p, rows, &mut o1);
        (k.axpy_rows)(&p, &kf, stride, &mut o2);
        assert_eq!(bits(&o1), bits(&o2), "{} axpy_rows_q8 vs axpy_rows", k.tier);
        for j in 0..hd {
            let mag: f32 = 0.25 + (0..n).map(|i| (p[i] * kf[i * stride + j]).abs()).sum::<f32>();
            assert!((o1[j] - want_sum[j]).abs() <= 1e-5 * mag, "{} axpy_rows_q8 [{j}]", k.tier);
        }
    }
}

fn check_rope_and_f16(half: usize, seed: u64) {
    let mut rng = Rng(seed);
    let head = rng.vec(2 * half, 3.0);
    let inv: Vec<f32> = (0..half).map(|i| 1.0 / 10000f32.powf(2.0 * i as f32 / (2 * half) as f32)).collect();
    let mut cs = vec![0f32; 2 * half];
    reference::rope_table(17 + (seed % 1000) as i64, &inv, &mut cs);
    // Wide values, subnormals and overflow to inf for the f16 conversions.
    let mut x = rng.vec(3 * half + 5, 70000.0);
    x.extend([0.0, -0.0, 1e-8, 65504.0, 65520.0, -1e30, 6.1e-5]);
    let r = Kernels::for_tier(Tier::Reference).unwrap();
    for k in tiers() {
        let (mut a, mut b) = (head.clone(), head.clone());
        (k.rope)(&mut a, &cs);
        (r.rope)(&mut b, &cs);
        assert_eq!(bits(&a), bits(&b), "{} rope", k.tier);
        let (mut ha, mut hb) = (vec![f16::ZERO; x.len()], vec![f16::ZERO; x.len()]);
        (k.to_f16)(&x, &mut ha);
        (r.to_f16)(&x, &mut hb);
        assert!(ha.iter().zip(&hb).all(|(p, q)| p.to_bits() == q.to_bits()), "{} to_f16", k.tier);
        let (mut ra, mut rb) = (x.clone(), x.clone());
        (k.round_f16)(&mut ra);
        (r.round_f16)(&mut rb);
        assert_eq!(bits(&ra), bits(&rb), "{} round_f16", k.tier);
    }
}

fn check_exp_ops(len: usize, scale: f32, seed: u64) {
    let mut rng = Rng(seed);
    let x = rng.vec(len, scale);
    let up = rng.vec(len, 1.0);
    let r = Kernels::for_tier(Tier::Reference).unwrap();
    for k in tiers() {
        let (mut a, mut b) = (x.clone(), x.clone());
        (k.softmax)(&mut a);
        (r.softmax)(&mut b);
        for (i, (p, q)) in a.iter().zip(&b).enumerate() {
            assert!((p - q).abs() <= 2e-6 * q + 1e-30, "{} softmax [{i}] of {len}: {p} vs {q}", k.tier);
        }
        if len > 0 {
            assert!((a.iter().sum::<f32>() - 1.0).abs() < 1e-5);
        }
        let (mut a, mut b) = (x.clone(), x.clone());
        (k.swiglu)(&mut a, &up);
        (r.swiglu)(&mut b, &up);
        for (i, (p, q)) in a.iter().zip(&b).enumerate() {
            assert!((p - q).abs() <= 2e-6 * q.abs() + 1e-30, "{} swiglu [{i}] x {}: {p} vs {q}", k.tier, x[i]);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn matmuls_match_reference(rows in 1usize..40, cols in 0usize..200, n in 1usize..12,
                               lo in 0usize..40, span in 0usize..40, seed in any::<u64>()) {
        check_case(rows, cols, n, lo, lo + span, seed);
    }

    #[test]
    fn attention_ops_match_reference(hd in 1usize..80, n in 0usize..40, seed in any::<u64>()) {
        check_attention_ops(hd, n, seed);
    }

    #[test]
    fn softmax_and_swiglu_match_reference(len in 0usize..300, scale in 0.01f32..100.0, seed in any::<u64>()) {
        check_exp_ops(len, scale, seed);
    }

    #[test]
    fn q8_kv_ops_match_reference(hd in 1usize..100, n in 0usize..24, pad in 0usize..5, scale in 0.01f32..100.0,
                                 seed in any::<u64>()) {
        let src = Rng(seed ^ 0x5EED).vec(n * hd, scale);
        check_q8_kv(&src, hd, pad, seed);
    }

    #[test]
    fn rope_and_f16_conversions_are_exact(half in 0usize..70, seed in any::<u64>()) {
        check_rope_and_f16(half, seed);
    }

    #[test]
    fn vector_ops_match_reference(len in 0usize..300, seed in any::<u64>()) {
        check_vector_ops(len, seed);
    }
}

#[test]
fn edge_shapes() {
    // (512 and 768 columns: several K super-blocks.)
    for (rows, cols, n) in
        [(1, 0, 1), (1, 1, 1), (8, 32, 1), (9, 33, 5), (16, 64, 4), (7, 31, 6), (24, 96, 9), (9, 512, 3), (16, 768, 1)]
    {
        check_case(rows, cols, n, 0, rows, rows as u64 * 31 + cols as u64);
    }
}

/// The largest integer sums a file can ask for: every stored byte at its
/// extreme (q8 byte 0 is -128, which the converter never writes but a file
/// may hold; q4 nibbles 0 and 15) against activations of ±127, so no tier's
/// narrow intermediate (the 16-bit pair sums of plain NEON, `pmaddubsw`'s
/// saturating 16 bits) may overflow: still bit-identical to the reference.
#[test]
fn extreme_quants_match_reference() {
    let (rows, cols, n) = (16, 96, 5);
    let groups = cols / 32;
    let reference = Kernels::for_tier(Tier::Reference).unwrap();
    // Activations: all +1, all -1, alternating, and two mixed patterns: quants ±127.
    let x: Vec<f32> = (0..n * cols)
        .map(|i| {
            let (t, j) = (i / cols, i % cols);
            match t {
                0 => 1.0,
                1 => -1.0,
                2 => [1.0, -1.0][j % 2],
                3 => [-1.0, -1.0, 1.0][j % 3],
                _ => [1.0, 1.0, 1.0, -1.0][j % 4],
            }
        })
        .collect();
    let acts = quantize_acts(reference, &x, cols, n, cols);
    assert!(acts.0.iter().all(|&q| q == 127 || q == -127));
    let acts = ferrite_kernels::Acts { qs: &acts.0, d: &acts.1, sums: &acts.2 };
    for (dtype, byte) in
        [(DType::Q8, 0x00u8), (DType::Q8, 0xFF), (DType::Q4, 0x00), (DType::Q4, 0xFF), (DType::Q4, 0x0F)]
    {
        let tile = if dtype == DType::Q4 { 128 } else { 256 };
        let qs: Vec<u8> = (0..rows / 8 * groups * tile).map(|i| if i % 7 == 3 { !byte } else { byte }).collect();
        let scales = vec![f16::from_f32(0.01); rows * groups];
        let m = int_matrix(dtype, &qs, &scales, rows, cols);
        let run = |k: &Kernels| {
            let mut out = vec![f32::NAN; n * rows];
            (k.matmul_q)(&m, 0..rows, &acts, n, &mut Out::new(&mut out, rows));
            out
        };
        let want = run(reference);
        for k in tiers() {
            assert_eq!(bits(&run(k)), bits(&want), "{} {dtype:?} byte {byte:#04x}", k.tier);
        }
    }
    // Every level at its extreme (q5: 0 and 31, q6k: 0 and 63, i.e. -32
    // and 31), q6k's scales at -128 and 127.
    let mut rng = Rng(11);
    let cols = 512;
    let acts = quantize_acts(reference, &x.iter().cycle().take(n * cols).copied().collect::<Vec<_>>(), cols, n, cols);
    let acts = ferrite_kernels::Acts { qs: &acts.0, d: &acts.1, sums: &acts.2 };
    for dtype in PLANE_TYPES {
        for fill in [0x00u8, 0xFF] {
            let planes = plane_data(dtype, rows, cols, Some(fill), &mut rng);
            let m = plane_matrix(dtype, &planes, rows, cols);
            let run = |k: &Kernels| {
                let mut out = vec![f32::NAN; n * rows];
                (k.matmul_q)(&m, 0..rows, &acts, n, &mut Out::new(&mut out, rows));
                out
            };
            let want = run(reference);
            for k in tiers() {
                assert_eq!(bits(&run(k)), bits(&want), "{} {dtype:?} fill {fill:#04x}", k.tier);
            }
        }
    }
}

/// int8 KV rows with what the random ones rarely hold: all zeros, signed
/// zeros, halves that `roundf` rounds away from zero (a row of max 127 has
/// scale 1), values that clamp, NaN and infinities.
#[test]
fn q8_kv_special_values() {
    let hd = 19;
    let mut src = vec![0f32; hd];
    src.extend((0..hd).map(|j| if j % 2 == 0 { -0.0 } else { 0.0 }));
    src.extend((0..hd).map(|j| [127.0, 2.5, -2.5, 0.5, -0.5, 126.5, -1.5][j % 7]));
    src.extend((0..hd).map(|j| [1e30, -1e-30, 3.0, 1e-38][j % 4]));
    src.extend((0..hd).map(|j| [1.0, f32::NAN, -2.0][j % 3]));
    src.extend((0..hd).map(|j| [1.0, f32::INFINITY, -2.0, f32::NEG_INFINITY][j % 4]));
    check_q8_kv(&src, hd, 1, 7);
    // The same rows at widths that take the vector paths.
    for hd in [8, 16, 32, 64] {
        let src: Vec<f32> = (0..4 * hd).map(|i| [127.0, 2.5, -2.5, -0.0, 0.5, -126.5, 0.0, 64.5][i % 8]).collect();
        check_q8_kv(&src, hd, 0, hd as u64);
    }
}

/// Detection picks the tier `FERRITE_EXPECT_TIER` names (when set), and
/// `select` without a request follows `FERRITE_KERNELS` or detection.
#[test]
fn detected_tier_is_expected() {
    let best = Tier::best();
    let supported: Vec<_> = Tier::ALL.into_iter().filter(|t| t.supported()).map(Tier::name).collect();
    eprintln!("best kernel tier: {best} (supported: {})", supported.join(", "));
    if let Ok(want) = std::env::var("FERRITE_EXPECT_TIER") {
        let want = Tier::from_name(&want).unwrap_or_else(|| panic!("FERRITE_EXPECT_TIER={want} names no tier"));
        assert_eq!(best, want, "detected {best}, expected {want}");
    }
    let selected = ferrite_kernels::select(None).unwrap().tier;
    assert_eq!(selected, ferrite_kernels::env_tier().unwrap().unwrap_or(best));
}

#[test]
fn unsupported_or_unknown_tiers_are_errors_not_crashes() {
    for t in Tier::ALL {
        match Kernels::for_tier(t) {
            Ok(k) => assert!(t.supported() && k.tier == t),
            Err(e) => assert_eq!(e, KernelError::Unsupported { tier: t, best: Tier::best() }),
        }
    }
    assert_eq!(Tier::from_name("bogus"), None);
    assert!(KernelError::UnknownName.to_string().contains("reference"));
    assert!(Tier::best().supported());
    // scripts/x86-tiers.sh (qemu with a given CPU) says which tier detection
    // must pick there.
    if let Ok(want) = std::env::var("FERRITE_EXPECT_TIER") {
        assert_eq!(Tier::best().name(), want, "detected tier");
    }
}
