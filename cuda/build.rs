//! With feature `device`: compiles every `kernels/cuda/*.cu` to PTX with
//! nvcc, once per target architecture (compute_80: A100 and newer; compute_87:
//! Jetson Orin; compute_90: H100/H200), into `$OUT_DIR/<module>.sm<arch>.ptx`.
//! The runtime picks the newest PTX the device can run and the driver JITs it.
//!
//! nvcc is looked up as `$NVCC`, then `nvcc` on `PATH`, then the pip install
//! of `scripts/cuda-toolchain.sh` under `~/.cache/ferrite/cuda-venv`. Without
//! nvcc a `device` build fails, saying how to get it.
use std::path::{Path, PathBuf};
use std::process::Command;

/// Kernel modules (file stems under kernels/cuda/); src/launch.rs lists their kernels.
const MODULES: [&str; 4] = ["gemv", "gemm", "attention", "elementwise"];
/// PTX targets (compute capability x 10).
const ARCHS: [u32; 3] = [80, 87, 90];

fn main() {
    println!("cargo:rerun-if-env-changed=NVCC");
    println!("cargo:rerun-if-env-changed=FERRITE_CACHE");
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let src = manifest.join("../kernels/cuda");
    for entry in std::fs::read_dir(&src).into_iter().flatten().flatten() {
        println!("cargo:rerun-if-changed={}", entry.path().display());
    }
    if std::env::var_os("CARGO_FEATURE_DEVICE").is_none() {
        return;
    }
    let Some(nvcc) = find_nvcc() else {
        fail(
            "nvcc (CUDA 13.0) not found: the `cuda` feature compiles kernels/cuda/*.cu to PTX at build time.\n\
             Install it with `bash scripts/cuda-toolchain.sh` (pip, cached under ~/.cache/ferrite/cuda-venv,\n\
             found there automatically), or set NVCC=/path/to/nvcc, or put nvcc on PATH.",
        );
    };
    let out = PathBuf::from(std::env::var_os("OUT_DIR").unwrap_or_default());
    for module in MODULES {
        let cu = src.join(format!("{module}.cu"));
        for arch in ARCHS {
            let ptx = out.join(format!("{module}.sm{arch}.ptx"));
            let status = Command::new(&nvcc)
                .args(["-ptx", "-O3", "-std=c++17", "-lineinfo"])
                .arg(format!("-arch=compute_{arch}"))
                .arg("-I")
                .arg(&src)
                .arg("-o")
                .arg(&ptx)
                .arg(&cu)
                .status();
            match status {
                Ok(s) if s.success() => {}
                Ok(s) => fail(&format!("{} failed ({s}) on {}", nvcc.display(), cu.display())),
                Err(e) => fail(&format!("could not run {}: {e}", nvcc.display())),
            }
        }
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("error: ferrite-cuda: {msg}");
    std::process::exit(1);
}

fn runs(nvcc: &Path) -> bool {
    Command::new(nvcc).arg("--version").output().map(|o| o.status.success()).unwrap_or(false)
}

fn find_nvcc() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("NVCC") {
        let p = PathBuf::from(p);
        return runs(&p).then_some(p);
    }
    let on_path = PathBuf::from("nvcc");
    if runs(&on_path) {
        return Some(on_path);
    }
    let cache = std::env::var_os("FERRITE_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/ferrite")))?;
    let lib = cache.join("cuda-venv/lib");
    for py in std::fs::read_dir(&lib).ok()?.flatten() {
        let p = py.path().join("site-packages/nvidia/cu13/bin/nvcc");
        if runs(&p) {
            return Some(p);
        }
    }
    None
}
