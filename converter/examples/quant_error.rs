//! The quantizer contest's measuring tool (`scripts/quant-error-vs-llama-cpp.sh`):
//! for every Q4_K, Q5_K or Q6_K tensor of `QUANTIZED.gguf` (what
//! `llama-quantize` made of `F32.gguf`), the squared error of llama.cpp's
//! blocks and of Ferrite's quantizer (the one `ferrite convert --weights
//! q4k|q5k|q6k` runs) against the same f32 values.
//!
//! Usage: `cargo run --release -p ferrite-converter --example quant_error -- F32.gguf QUANTIZED.gguf [NAME]`
//! (`NAME`: only the tensors whose names contain it).
//!
//! Prints one tab-separated line per tensor: name, type, elements, the sum
//! of squared values, llama.cpp's and Ferrite's sums of squared errors.

use std::path::Path;
use std::process::ExitCode;

use ferrite_converter::gguf::{GgmlType, GgufFile};
use ferrite_format::quant::SUPER;
use ferrite_kernels::quantize::{quantize_super_affine, quantize_super_q6k};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (f32_path, q_path, only) = match args.as_slice() {
        [a, b] => (a, b, ""),
        [a, b, c] => (a, b, c.as_str()),
        _ => {
            eprintln!("usage: quant_error F32.gguf QUANTIZED.gguf [NAME]");
            return ExitCode::from(2);
        }
    };
    match run(Path::new(f32_path), Path::new(q_path), only) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("quant_error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(f32_path: &Path, q_path: &Path, only: &str) -> Result<(), String> {
    let base = GgufFile::open(f32_path).map_err(|e| e.to_string())?;
    let quant = GgufFile::open(q_path).map_err(|e| e.to_string())?;
    let (mut scratch, mut want, mut theirs) = (Vec::new(), Vec::new(), Vec::new());
    for (name, t) in quant.tensors.iter().filter(|(n, _)| n.contains(only)) {
        let Some(ty) = t.ty.filter(|ty| matches!(ty, GgmlType::Q4_K | GgmlType::Q5_K | GgmlType::Q6_K)) else {
            continue;
        };
        let b = base.tensors.get(name).ok_or_else(|| format!("{}: no tensor {name}", f32_path.display()))?;
        if b.ty != Some(GgmlType::F32) || b.dims != t.dims {
            return Err(format!("{name}: the base must hold it as F32 of the same shape"));
        }
        let elems: u64 = t.dims.iter().product();
        let cols = t.dims[0] as usize;
        // A row block at a time: bounded memory for the large tables.
        let rows_per = (1 << 20) / cols;
        let rows = elems as usize / cols;
        let (mut sq, mut e_llama, mut e_ferrite) = (0f64, 0f64, 0f64);
        let mut row = 0;
        while row < rows {
            let n = rows_per.min(rows - row);
            base.read_f32(name, row * cols, n * cols, &mut scratch, &mut want).map_err(|e| e.to_string())?;
            quant.read_f32(name, row * cols, n * cols, &mut scratch, &mut theirs).map_err(|e| e.to_string())?;
            let mut back = [0f32; SUPER];
            for (x, y) in want.as_chunks::<SUPER>().0.iter().zip(theirs.chunks_exact(SUPER)) {
                match ty {
                    GgmlType::Q6_K => quantize_super_q6k(x).dequantize(&mut back),
                    GgmlType::Q5_K => quantize_super_affine(x, 31).dequantize(&mut back),
                    _ => quantize_super_affine(x, 15).dequantize(&mut back),
                }
                for ((&x, &y), &z) in x.iter().zip(y).zip(&back) {
                    let x = x as f64;
                    sq += x * x;
                    e_llama += (x - y as f64).powi(2);
                    e_ferrite += (x - z as f64).powi(2);
                }
            }
            row += n;
        }
        println!("{name}\t{}\t{elems}\t{sq:e}\t{e_llama:e}\t{e_ferrite:e}", ty.name());
    }
    Ok(())
}
