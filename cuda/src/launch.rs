//! Host-side launch logic: the kernel table (module, name, parameter
//! kinds), argument packing and launch geometry. Everything here mirrors
//! `kernels/cuda/*.cu`; the tests read those sources and check that the
//! constants and signatures agree, so a mismatch fails without a GPU.

/// Kind of one kernel parameter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Param {
    /// A device pointer (any element type).
    Ptr,
    /// `u32` (`unsigned int`).
    U32,
    /// `float`.
    F32,
}

/// One kernel: its module (file stem under `kernels/cuda/`), its entry
/// name and its parameters in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelSpec {
    /// Module (PTX file) holding it.
    pub module: &'static str,
    /// Entry name (`extern "C"`).
    pub name: &'static str,
    /// Parameters.
    pub params: &'static [Param],
}

use Param::{Ptr as P, F32 as F, U32 as U};

/// Kernel modules, one PTX each.
pub const MODULES: [&str; 4] = ["gemv", "gemm", "attention", "elementwise"];

macro_rules! k {
    ($m:literal, $n:ident, [$($p:ident),*]) => {
        KernelSpec { module: $m, name: stringify!($n), params: &[$($p),*] }
    };
}

/// Every kernel the runtime launches.
pub const KERNELS: [KernelSpec; 25] = [
    k!("gemv", gemv_q4, [P, P, P, P, P, P, P, U, U]),
    k!("gemv", gemv_q8, [P, P, P, P, P, P, P, U, U]),
    k!("gemv", gemv_f16, [P, P, P, P, P, P, P, U, U]),
    k!("gemv", gemv_f32, [P, P, P, P, P, P, P, U, U]),
    k!("gemm", gemm_q4, [P, P, P, P, P, P, P, U, U, U]),
    k!("gemm", gemm_q8, [P, P, P, P, P, P, P, U, U, U]),
    k!("gemm", gemm_f16, [P, P, P, P, P, P, P, U, U, U]),
    k!("gemm", gemm_f32, [P, P, P, P, P, P, P, U, U, U]),
    k!("attention", attn_decode_f16, [P, P, P, P, P, U, U, U, U, U, U, F]),
    k!("attention", attn_decode_f32, [P, P, P, P, P, U, U, U, U, U, U, F]),
    k!("attention", attn_combine, [P, P, P, U, U]),
    k!("attention", attn_prefill_f16, [P, P, P, P, U, U, U, U, U, U, F]),
    k!("attention", attn_prefill_f32, [P, P, P, P, U, U, U, U, U, U, F]),
    k!("elementwise", rmsnorm_rows, [P, P, P, U, F]),
    k!("elementwise", rope_rows, [P, P, U, U, U]),
    k!("elementwise", swiglu, [P, P, U]),
    k!("elementwise", add, [P, P, U]),
    k!("elementwise", add_bias, [P, P, U, U]),
    k!("elementwise", kv_store_f32, [P, P, P, P, U, U, U]),
    k!("elementwise", kv_store_f16, [P, P, P, P, U, U, U]),
    k!("elementwise", quantize_acts, [P, P, P, P, U, U]),
    k!("elementwise", embed_q4, [P, P, P, P, U]),
    k!("elementwise", embed_q8, [P, P, P, P, U]),
    k!("elementwise", embed_f16, [P, P, P, P, U]),
    k!("elementwise", embed_f32, [P, P, P, P, U]),
];

/// The spec of kernel `name`.
pub fn kernel(name: &str) -> Option<&'static KernelSpec> {
    KERNELS.iter().find(|k| k.name == name)
}

/// One kernel argument.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Arg {
    /// A device pointer (0 for an unused pointer parameter).
    Ptr(u64),
    /// `unsigned int`.
    U32(u32),
    /// `float`.
    F32(f32),
}

impl Arg {
    /// The parameter kind this argument fills.
    pub fn kind(self) -> Param {
        match self {
            Arg::Ptr(_) => Param::Ptr,
            Arg::U32(_) => Param::U32,
            Arg::F32(_) => Param::F32,
        }
    }
    /// The argument as an 8-byte slot whose first bytes are the parameter
    /// (the driver copies `sizeof(param)` bytes from each slot: 8 for a
    /// pointer, 4 for `u32`/`float`, which sit in the low half, i.e. first
    /// on a little-endian host).
    pub fn slot(self) -> u64 {
        match self {
            Arg::Ptr(p) => p,
            Arg::U32(v) => u64::from(v),
            Arg::F32(v) => u64::from(v.to_bits()),
        }
    }
}

// The slot layout above holds on little-endian hosts only (x86-64, aarch64).
#[cfg(not(target_endian = "little"))]
compile_error!("ferrite-cuda packs kernel arguments for little-endian hosts");

/// Checks `args` against `spec`: same count, same kinds.
pub fn check_args(spec: &KernelSpec, args: &[Arg]) -> Result<(), String> {
    if spec.params.len() != args.len() {
        return Err(format!("kernel {}: {} arguments given, {} expected", spec.name, args.len(), spec.params.len()));
    }
    for (i, (p, a)) in spec.params.iter().zip(args).enumerate() {
        if *p != a.kind() {
            return Err(format!("kernel {}: argument {i} is {:?}, the kernel takes {p:?}", spec.name, a.kind()));
        }
    }
    Ok(())
}

/// Grid and block dimensions of one launch (no dynamic shared memory).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Launch {
    /// Blocks.
    pub grid: (u32, u32, u32),
    /// Threads per block.
    pub block: (u32, u32, u32),
}

/// GEMV: threads per block (`GEMV_THREADS`: 4 warps on one row block).
pub const GEMV_THREADS: u32 = 128;
/// GEMV: rows per block (`GEMV_ROWS`: one 8-row block of tiles).
pub const GEMV_ROWS: u32 = 8;
/// GEMM: rows per block tile (`GEMM_TR`).
pub const GEMM_TR: u32 = 64;
/// GEMM: tokens per block tile (`GEMM_TT`).
pub const GEMM_TT: u32 = 32;
/// GEMM: threads per block (`GEMM_THREADS`).
pub const GEMM_THREADS: u32 = 256;
/// Attention: threads per block (`ATT_THREADS`).
pub const ATT_THREADS: u32 = 128;
/// Decode attention: most keys per split (`ATT_MAX_CHUNK`).
pub const ATT_MAX_CHUNK: u32 = 256;
/// Decode attention: largest head_dim (`ATT_MAX_HD`).
pub const ATT_MAX_HD: u32 = 256;
/// Prefill attention: queries per block (`PF_QPB`).
pub const PF_QPB: u32 = 16;
/// Prefill attention: largest head_dim (`PF_MAX_HD`).
pub const PF_MAX_HD: u32 = 128;
/// Decode attention aims for at least this many splits per head before
/// chunks shrink to their minimum of 32 keys.
pub const DECODE_TARGET_SPLITS: u32 = 16;
/// Largest grid.y (and grid.z) of a launch.
pub const MAX_GRID_Y: u32 = 65_535;
/// Threads per block of the element-wise kernels.
pub const ELEMENTWISE_THREADS: u32 = 256;

fn blocks(n: u32, per: u32) -> u32 {
    n.div_ceil(per).max(1)
}

/// Activation quantization: groups per block (one warp each).
pub const QUANT_GROUPS_PER_BLOCK: u32 = 8;

/// `y = W x` for a `[rows, _]` matrix: one block per row block of 8.
pub fn gemv(rows: u32) -> Launch {
    Launch { grid: (blocks(rows, GEMV_ROWS), 1, 1), block: (GEMV_THREADS, 1, 1) }
}

/// `out = x W^T` for a `[rows, _]` matrix and `n` tokens.
pub fn gemm(rows: u32, n: u32) -> Launch {
    Launch { grid: (blocks(rows, GEMM_TR), blocks(n, GEMM_TT), 1), block: (GEMM_THREADS, 1, 1) }
}

/// int8 quantization of `n` activation rows of `cols`: one warp per
/// (group, token).
pub fn quantize_acts(cols: u32, n: u32) -> Launch {
    Launch {
        grid: (blocks(cols.div_ceil(32), QUANT_GROUPS_PER_BLOCK), n.max(1), 1),
        block: (32 * QUANT_GROUPS_PER_BLOCK, 1, 1),
    }
}

/// Flash-decoding split of `n_keys` keys: `(splits, chunk)` with
/// `splits * chunk >= n_keys`, chunk a multiple of 32 in 32..=256, and as
/// many as [`DECODE_TARGET_SPLITS`] splits once there are enough keys.
pub fn decode_splits(n_keys: u32) -> (u32, u32) {
    let chunk = n_keys.div_ceil(DECODE_TARGET_SPLITS).div_ceil(32).clamp(1, ATT_MAX_CHUNK / 32) * 32;
    (blocks(n_keys, chunk), chunk)
}

/// The most splits [`decode_splits`] gives for up to `max_keys` keys.
pub fn max_decode_splits(max_keys: u32) -> u32 {
    // Splits grow with the key count (up to 16 while chunks are short, then
    // max_keys / 256): the largest count decides.
    decode_splits(max_keys).0.max(DECODE_TARGET_SPLITS.min(max_keys.max(1)))
}

/// Decode attention over `splits` chunks for `n_heads` heads.
pub fn attn_decode(n_heads: u32, splits: u32) -> Launch {
    Launch { grid: (n_heads, splits, 1), block: (ATT_THREADS, 1, 1) }
}

/// Merging the decode chunks.
pub fn attn_combine(n_heads: u32) -> Launch {
    Launch { grid: (n_heads, 1, 1), block: (ATT_THREADS, 1, 1) }
}

/// Causal prefill attention of `n` queries.
pub fn attn_prefill(n_heads: u32, n: u32) -> Launch {
    Launch { grid: (n_heads, blocks(n, PF_QPB), 1), block: (ATT_THREADS, 1, 1) }
}

/// One block per row.
pub fn rows(n: u32) -> Launch {
    Launch { grid: (n.max(1), 1, 1), block: (256, 1, 1) }
}

/// RoPE over `n` rows of `heads` heads of `head_dim`.
pub fn rope(n: u32, heads: u32, head_dim: u32) -> Launch {
    Launch { grid: (n.max(1), heads.max(1), 1), block: ((head_dim / 2).div_ceil(32).max(1) * 32, 1, 1) }
}

/// One thread per element.
pub fn elementwise(len: u32) -> Launch {
    Launch { grid: (blocks(len, ELEMENTWISE_THREADS), 1, 1), block: (ELEMENTWISE_THREADS, 1, 1) }
}

/// The PTX target to load on a device of compute capability
/// `major.minor`: the newest of sm_90, sm_87, sm_80 it can run (the driver
/// JITs PTX for any newer device), or `None` below 8.0.
pub fn ptx_arch(major: i32, minor: i32) -> Option<u32> {
    let cc = major.checked_mul(10)?.checked_add(minor)?;
    [90u32, 87, 80].into_iter().find(|&a| cc >= a as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOURCES: [(&str, &str); 4] = [
        ("gemv", include_str!("../../kernels/cuda/gemv.cu")),
        ("gemm", include_str!("../../kernels/cuda/gemm.cu")),
        ("attention", include_str!("../../kernels/cuda/attention.cu")),
        ("elementwise", include_str!("../../kernels/cuda/elementwise.cu")),
    ];

    /// `(name, params)` of every `extern "C"` kernel of a source.
    fn entries(src: &str) -> Vec<(String, Vec<Param>)> {
        let mut out = vec![];
        for (at, _) in src.match_indices("extern \"C\" __global__") {
            let rest = &src[at..];
            let mut rest = rest[rest.find(" void").expect("void") + 5..].trim_start();
            if let Some(after) = rest.strip_prefix("__launch_bounds__") {
                rest = &after[after.find(')').expect(")") + 1..];
            }
            let open = rest.find('(').expect("(");
            let head = &rest[..open];
            let name = head.split_whitespace().last().expect("name").to_string();
            let close = rest.find(')').expect(")");
            let params = rest[open + 1..close]
                .split(',')
                .map(|p| {
                    if p.contains('*') {
                        Param::Ptr
                    } else if p.contains("u32") {
                        Param::U32
                    } else if p.contains("float") {
                        Param::F32
                    } else {
                        panic!("unknown parameter type in {name}: {p}")
                    }
                })
                .collect();
            out.push((name, params));
        }
        out
    }

    #[test]
    fn table_matches_the_cuda_sources() {
        let mut found = 0;
        for (module, src) in SOURCES {
            for (name, params) in entries(src) {
                let spec = kernel(&name).unwrap_or_else(|| panic!("{module}.cu: kernel {name} missing from KERNELS"));
                assert_eq!(spec.module, module, "{name}");
                assert_eq!(spec.params, &params[..], "{name}: parameters differ from the .cu signature");
                found += 1;
            }
        }
        assert_eq!(found, KERNELS.len(), "KERNELS lists a kernel no .cu file defines");
        assert_eq!(MODULES.to_vec(), SOURCES.iter().map(|s| s.0).collect::<Vec<_>>());
        // Every .cu file in kernels/cuda is a module.
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../kernels/cuda");
        let mut cu: Vec<String> = std::fs::read_dir(dir)
            .expect("kernels/cuda")
            .filter_map(|e| e.ok()?.file_name().to_str()?.strip_suffix(".cu").map(String::from))
            .collect();
        cu.sort();
        let mut modules: Vec<String> = MODULES.iter().map(|m| m.to_string()).collect();
        modules.sort();
        assert_eq!(cu, modules);
    }

    fn define(src: &str, name: &str) -> u32 {
        let key = format!("#define {name} ");
        let line = src.lines().find(|l| l.starts_with(&key)).unwrap_or_else(|| panic!("{name} not defined"));
        let value = line[key.len()..].trim();
        value.parse().unwrap_or_else(|_| panic!("{name} = {value}"))
    }

    #[test]
    fn constants_match_the_cuda_sources() {
        let src = |m: &str| SOURCES.iter().find(|s| s.0 == m).expect("module").1;
        assert_eq!(define(src("gemv"), "GEMV_THREADS"), GEMV_THREADS);
        assert_eq!(define(src("gemv"), "GEMV_ROWS"), GEMV_ROWS);
        assert_eq!(define(src("gemm"), "GEMM_TR"), GEMM_TR);
        assert_eq!(define(src("gemm"), "GEMM_TT"), GEMM_TT);
        assert_eq!(define(src("gemm"), "GEMM_THREADS"), GEMM_THREADS);
        assert_eq!(define(src("attention"), "ATT_THREADS"), ATT_THREADS);
        assert_eq!(define(src("attention"), "ATT_MAX_CHUNK"), ATT_MAX_CHUNK);
        assert_eq!(define(src("attention"), "ATT_MAX_HD"), ATT_MAX_HD);
        assert_eq!(define(src("attention"), "PF_QPB"), PF_QPB);
        assert_eq!(define(src("attention"), "PF_MAX_HD"), PF_MAX_HD);
        assert_eq!(define(src("attention"), "PF_QPW") * ATT_THREADS / 32, PF_QPB, "4 warps x PF_QPW queries");
    }

    #[test]
    fn args_pack_into_little_endian_slots() {
        assert_eq!(Arg::Ptr(0x1234_5678_9abc_def0).slot(), 0x1234_5678_9abc_def0);
        assert_eq!(Arg::U32(7).slot().to_le_bytes()[..4], 7u32.to_le_bytes());
        assert_eq!(Arg::F32(1.5).slot().to_le_bytes()[..4], 1.5f32.to_le_bytes());
        assert_eq!(Arg::F32(-0.25).slot() >> 32, 0);
        let spec = kernel("swiglu").expect("swiglu");
        assert!(check_args(spec, &[Arg::Ptr(1), Arg::Ptr(2), Arg::U32(3)]).is_ok());
        let e = check_args(spec, &[Arg::Ptr(1), Arg::Ptr(2)]).expect_err("count");
        assert!(e.contains("2 arguments given, 3 expected"), "{e}");
        let e = check_args(spec, &[Arg::Ptr(1), Arg::F32(2.0), Arg::U32(3)]).expect_err("kind");
        assert!(e.contains("argument 1 is F32"), "{e}");
    }

    #[test]
    fn geometry_covers_every_output() {
        for rows in [1u32, 31, 32, 33, 576, 49152] {
            let l = gemv(rows);
            assert!(l.grid.0 * GEMV_ROWS >= rows && (l.grid.0 - 1) * GEMV_ROWS < rows, "gemv {rows}");
            assert_eq!(l.block.0, GEMV_THREADS);
            for n in [2u32, 31, 32, 33, 100] {
                let g = gemm(rows, n);
                assert!(g.grid.0 * GEMM_TR >= rows && (g.grid.0 - 1) * GEMM_TR < rows);
                assert!(g.grid.1 * GEMM_TT >= n && (g.grid.1 - 1) * GEMM_TT < n);
            }
        }
        assert_eq!(attn_prefill(9, 33).grid, (9, 3, 1));
        assert_eq!(rope(5, 9, 64).block.0, 32);
        assert_eq!(rope(5, 9, 128).block.0, 64);
        assert_eq!(rope(5, 9, 16).block.0, 32);
        let e = elementwise(1000);
        assert!(e.grid.0 * e.block.0 >= 1000 && (e.grid.0 - 1) * e.block.0 < 1000);
        assert_eq!(elementwise(0).grid.0, 1);
    }

    #[test]
    fn decode_splits_cover_the_keys_within_bounds() {
        let mut most = 0;
        for n_keys in 1u32..=5000 {
            let (splits, chunk) = decode_splits(n_keys);
            assert!(chunk % 32 == 0 && (32..=ATT_MAX_CHUNK).contains(&chunk), "{n_keys}: chunk {chunk}");
            assert!(splits * chunk >= n_keys, "{n_keys}: keys left over");
            assert!((splits - 1) * chunk < n_keys, "{n_keys}: an empty split");
            assert!(splits <= max_decode_splits(5000), "{n_keys}: {splits} splits");
            most = most.max(splits);
            if n_keys >= 512 {
                assert!(splits >= DECODE_TARGET_SPLITS.min(n_keys.div_ceil(ATT_MAX_CHUNK)).max(2), "{n_keys}");
            }
        }
        assert_eq!(most, max_decode_splits(5000));
        assert_eq!(decode_splits(1), (1, 32));
        assert_eq!(decode_splits(4096), (16, 256));
        assert_eq!(decode_splits(8192), (32, 256));
    }

    #[test]
    fn ptx_arch_picks_the_newest_runnable_target() {
        assert_eq!(ptx_arch(9, 0), Some(90));
        assert_eq!(ptx_arch(10, 0), Some(90));
        assert_eq!(ptx_arch(8, 7), Some(87));
        assert_eq!(ptx_arch(8, 9), Some(87));
        assert_eq!(ptx_arch(8, 6), Some(80));
        assert_eq!(ptx_arch(8, 0), Some(80));
        assert_eq!(ptx_arch(7, 5), None);
    }
}
