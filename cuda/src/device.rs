//! The device side: the driver through `cudarc`, the weights on the GPU and
//! the forward pass as a sequence of kernel launches on one stream.

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, LaunchConfig, PushKernelArg};
use ferrite_format::{quant, DType, LayerRole, ModelConfig, Role, TensorView};
use ferrite_runtime::Model;

use crate::launch::{self, Arg, Launch};
use crate::CudaError;

macro_rules! ptx {
    ($m:literal) => {
        (
            $m,
            [
                include_str!(concat!(env!("OUT_DIR"), "/", $m, ".sm80.ptx")),
                include_str!(concat!(env!("OUT_DIR"), "/", $m, ".sm87.ptx")),
                include_str!(concat!(env!("OUT_DIR"), "/", $m, ".sm90.ptx")),
            ],
        )
    };
}

/// The PTX of every module for sm_80, sm_87 and sm_90 (built by `build.rs`).
pub const PTX: [(&str, [&str; 3]); 4] = [ptx!("gemv"), ptx!("gemm"), ptx!("attention"), ptx!("elementwise")];

fn driver(what: impl Into<String>) -> impl FnOnce(cudarc::driver::DriverError) -> CudaError {
    let what = what.into();
    move |e| CudaError::Driver { what, message: e.to_string() }
}

/// One GPU: a context, its default stream and every kernel loaded.
pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    functions: HashMap<&'static str, CudaFunction>,
    name: String,
    arch: u32,
}

/// A device allocation with its raw address.
pub struct Buf {
    slice: CudaSlice<u8>,
    ptr: u64,
}

impl Buf {
    /// The device address.
    pub fn ptr(&self) -> u64 {
        self.ptr
    }
    /// Address `bytes` past the start.
    pub(crate) fn at(&self, bytes: usize) -> u64 {
        self.ptr + bytes as u64
    }
    /// Size in bytes.
    pub fn len(&self) -> usize {
        self.slice.len()
    }
    /// Whether it is empty.
    pub fn is_empty(&self) -> bool {
        self.slice.len() == 0
    }
}

impl Gpu {
    /// Opens GPU `ordinal` and loads the kernels. Without a driver or a
    /// GPU this is an error ([`CudaError::NoDriver`], [`CudaError::NoDevice`]),
    /// never a crash.
    pub fn new(ordinal: usize) -> Result<Arc<Gpu>, CudaError> {
        // SAFETY: only tries to load libcuda by name (dlopen); cudarc would
        // panic later on a missing library, so its absence is checked first.
        if !unsafe { cudarc::driver::sys::is_culib_present() } {
            return Err(CudaError::NoDriver);
        }
        let count = CudaContext::device_count().map_err(driver("counting devices"))?;
        if count <= 0 || ordinal >= count as usize {
            return Err(CudaError::NoDevice);
        }
        let ctx = CudaContext::new(ordinal).map_err(driver("creating a context"))?;
        let name = ctx.name().map_err(driver("reading the device name"))?;
        let (major, minor) = ctx.compute_capability().map_err(driver("reading the compute capability"))?;
        let arch = launch::ptx_arch(major, minor).ok_or(CudaError::TooOld { name: name.clone(), major, minor })?;
        let which = match arch {
            90 => 2,
            87 => 1,
            _ => 0,
        };
        let mut functions = HashMap::new();
        for (module, ptx) in PTX {
            let m = ctx
                .load_module(cudarc::nvrtc::Ptx::from_src(ptx[which]))
                .map_err(driver(format!("loading the PTX of kernels/cuda/{module}.cu for sm_{arch}")))?;
            for spec in launch::KERNELS.iter().filter(|k| k.module == module) {
                let f = m.load_function(spec.name).map_err(driver(format!("loading kernel {}", spec.name)))?;
                functions.insert(spec.name, f);
            }
        }
        let stream = ctx.default_stream();
        Ok(Arc::new(Gpu { ctx, stream, functions, name, arch }))
    }

    /// The device's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The PTX target in use (80, 87 or 90).
    pub fn arch(&self) -> u32 {
        self.arch
    }

    /// L2 cache size in bytes.
    pub fn l2_bytes(&self) -> Result<usize, CudaError> {
        let v = self
            .ctx
            .attribute(cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE)
            .map_err(driver("reading the L2 size"))?;
        Ok(v.max(0) as usize)
    }

    /// Zeroed device memory.
    pub fn alloc(&self, bytes: usize) -> Result<Buf, CudaError> {
        let slice = self.stream.alloc_zeros::<u8>(bytes.max(1)).map_err(driver(format!("allocating {bytes} bytes")))?;
        let ptr = {
            let (ptr, _sync) = slice.device_ptr(&self.stream);
            ptr
        };
        Ok(Buf { ptr, slice })
    }

    /// Device memory holding `bytes`.
    pub fn upload(&self, bytes: &[u8]) -> Result<Buf, CudaError> {
        let mut buf = self.alloc(bytes.len())?;
        self.write(&mut buf, 0, bytes)?;
        Ok(buf)
    }

    /// Copies `bytes` to `buf` at byte `offset`.
    pub fn write(&self, buf: &mut Buf, offset: usize, bytes: &[u8]) -> Result<(), CudaError> {
        if bytes.is_empty() {
            return Ok(());
        }
        let end = offset.checked_add(bytes.len()).filter(|&e| e <= buf.len());
        let Some(end) = end else {
            return Err(CudaError::Unsupported(format!("write of {} bytes at {offset} past a buffer", bytes.len())));
        };
        let mut view = buf.slice.slice_mut(offset..end);
        self.stream.memcpy_htod(bytes, &mut view).map_err(driver("copying to the device"))
    }

    /// Copies f32 values from `buf` at byte `offset` into `out`.
    pub fn read_f32(&self, buf: &Buf, offset: usize, out: &mut [f32]) -> Result<(), CudaError> {
        let n = out.len() * 4;
        let end = offset.checked_add(n).filter(|&e| e <= buf.len());
        let Some(end) = end else {
            return Err(CudaError::Unsupported(format!("read of {n} bytes at {offset} past a buffer")));
        };
        let mut bytes = vec![0u8; n];
        self.stream
            .memcpy_dtoh(&buf.slice.slice(offset..end), &mut bytes[..])
            .map_err(driver("copying to the host"))?;
        for (o, c) in out.iter_mut().zip(bytes.chunks_exact(4)) {
            *o = f32::from_le_bytes([c[0], c[1], c[2], c[3]]);
        }
        Ok(())
    }

    /// Waits for every launch so far.
    pub fn sync(&self) -> Result<(), CudaError> {
        self.stream.synchronize().map_err(driver("waiting for the GPU"))
    }

    /// Launches kernel `name` (arguments checked against its spec).
    pub fn launch(&self, name: &str, geometry: Launch, args: &[Arg]) -> Result<(), CudaError> {
        let spec = launch::kernel(name).ok_or_else(|| CudaError::Unsupported(format!("no kernel named {name}")))?;
        launch::check_args(spec, args).map_err(CudaError::Unsupported)?;
        let f = self.functions.get(spec.name).ok_or_else(|| CudaError::Unsupported(format!("{name} not loaded")))?;
        let slots: Vec<u64> = args.iter().map(|a| a.slot()).collect();
        let mut builder = self.stream.launch_builder(f);
        for s in &slots {
            builder.arg(s);
        }
        let cfg = LaunchConfig { grid_dim: geometry.grid, block_dim: geometry.block, shared_mem_bytes: 0 };
        // SAFETY: the argument count and kinds match the kernel's signature
        // (checked above against the table that tests compare with the .cu
        // sources); every slot holds its parameter in its low bytes
        // (little-endian) and lives until the launch is queued; pointers
        // come from live allocations whose sizes the callers checked.
        unsafe { builder.launch(cfg) }.map_err(driver(format!("launching {name}")))?;
        Ok(())
    }
}

/// A weight matrix (or vector) on the device, in the file's layout.
#[derive(Clone, Copy, Debug)]
pub struct DevMatrix {
    /// Storage type.
    pub dtype: DType,
    /// Rows.
    pub rows: u32,
    /// Columns (unpadded).
    pub cols: u32,
    /// Address of the data (the quants plane for q4/q8).
    pub ptr: u64,
    /// Address of the f16 scales (q4/q8), else 0.
    pub scales: u64,
}

pub(crate) fn suffix(dtype: DType) -> &'static str {
    match dtype {
        DType::Q4 => "q4",
        DType::Q8 => "q8",
        DType::F16 => "f16",
        DType::F32 => "f32",
        // Refused when the model is uploaded (`CudaModel::new`).
        other => other.name(),
    }
}

/// Device buffers of int8 activations (as `reference::quantize_acts`
/// writes them): for token `t` and group `g` of `groups(cols)`, 32 quants at
/// `q + (t * groups + g) * 32`, the f32 scale at `d` and the i32 sum at
/// `sums`, index `t * groups + g`.
#[derive(Clone, Copy, Debug)]
pub struct DevActs {
    /// `[n, groups * 32]` i8.
    pub q: u64,
    /// `[n, groups]` f32.
    pub d: u64,
    /// `[n, groups]` i32.
    pub sums: u64,
}

impl DevActs {
    /// Quantizes `n` rows of `x` (`[n, cols]` f32) into these buffers (the
    /// caller sized them for `n` rows of `cols`).
    pub fn quantize(&self, gpu: &Gpu, x: u64, cols: u32, n: u32) -> Result<(), CudaError> {
        let args = [Arg::Ptr(x), Arg::Ptr(self.q), Arg::Ptr(self.d), Arg::Ptr(self.sums), Arg::U32(cols), Arg::U32(n)];
        gpu.launch("quantize_acts", launch::quantize_acts(cols, n), &args)
    }
}

impl DevMatrix {
    /// Whether products with it read int8 activations (q4/q8) rather than f32.
    pub fn is_quantized(&self) -> bool {
        matches!(self.dtype, DType::Q4 | DType::Q8)
    }

    /// `out = x W^T` for `n` rows (`[n, cols]` -> `[n, rows]` f32): the GEMV
    /// kernel for one row, the tiled GEMM otherwise. q4/q8 weights read the
    /// int8 activations `acts` of x (quantized first with
    /// [`DevActs::quantize`]), f16/f32 weights read `x` itself.
    pub fn matmul(&self, gpu: &Gpu, x: u64, acts: &DevActs, out: u64, n: u32) -> Result<(), CudaError> {
        let t = suffix(self.dtype);
        let mut args = vec![
            Arg::Ptr(self.ptr),
            Arg::Ptr(self.scales),
            Arg::Ptr(x),
            Arg::Ptr(acts.q),
            Arg::Ptr(acts.d),
            Arg::Ptr(acts.sums),
            Arg::Ptr(out),
            Arg::U32(self.rows),
            Arg::U32(self.cols),
        ];
        if n == 1 {
            gpu.launch(&format!("gemv_{t}"), launch::gemv(self.rows), &args)
        } else {
            args.push(Arg::U32(n));
            gpu.launch(&format!("gemm_{t}"), launch::gemm(self.rows, n), &args)
        }
    }
}

pub(crate) struct Layer {
    pub(crate) attn_norm: DevMatrix,
    pub(crate) wq: DevMatrix,
    pub(crate) wk: DevMatrix,
    pub(crate) wv: DevMatrix,
    pub(crate) bias: Option<[DevMatrix; 3]>,
    pub(crate) wo: DevMatrix,
    pub(crate) ffn_norm: DevMatrix,
    pub(crate) gate: DevMatrix,
    pub(crate) up: DevMatrix,
    pub(crate) down: DevMatrix,
}

/// A model's weights on the GPU, uploaded once (tied tensors once).
pub struct CudaModel {
    pub(crate) gpu: Arc<Gpu>,
    pub(crate) config: ModelConfig,
    pub(crate) _bufs: Vec<Buf>,
    pub(crate) embedding: DevMatrix,
    pub(crate) layers: Vec<Layer>,
    pub(crate) output_norm: DevMatrix,
    pub(crate) output: DevMatrix,
    pub(crate) inv_freq: Vec<f32>,
    pub(crate) weight_bytes: usize,
}

impl CudaModel {
    /// Uploads the weights of `model` to `gpu`.
    pub fn new(gpu: Arc<Gpu>, model: &Model<'_>) -> Result<CudaModel, CudaError> {
        let config = *model.config();
        let file = model.file();
        let mut bufs: Vec<Buf> = Vec::new();
        let mut by_index: HashMap<u32, DevMatrix> = HashMap::new();
        let mut weight_bytes = 0usize;
        let mut get = |role: Role| -> Result<DevMatrix, CudaError> {
            let t: TensorView<'_> = file.tensor(role)?;
            if let Some(m) = by_index.get(&t.index) {
                return Ok(*m);
            }
            if !matches!(t.dtype, DType::F32 | DType::F16 | DType::Q4 | DType::Q8) {
                return Err(CudaError::Unsupported(format!(
                    "{role:?} is {}, which the CUDA kernels do not read yet; convert with --weights q4 or q8",
                    t.dtype.name()
                )));
            }
            let buf = gpu.upload(t.data)?;
            let scales = match t.dtype {
                DType::Q4 | DType::Q8 => buf.at(quant::scales_offset(t.dtype, t.rows as usize, t.cols as usize)),
                _ => 0,
            };
            let m = DevMatrix { dtype: t.dtype, rows: t.rows, cols: t.cols, ptr: buf.ptr(), scales };
            weight_bytes += buf.len();
            bufs.push(buf);
            by_index.insert(t.index, m);
            Ok(m)
        };
        let vector = |m: DevMatrix, role: Role| -> Result<DevMatrix, CudaError> {
            if m.dtype != DType::F32 {
                return Err(CudaError::Unsupported(format!("{role:?} is {:?}; norms and biases must be f32", m.dtype)));
            }
            Ok(m)
        };
        let embedding = get(Role::Embedding)?;
        let mut layers = Vec::with_capacity(config.n_layers as usize);
        for l in 0..config.n_layers {
            let r = |lr| Role::Layer(l, lr);
            let bias = if config.qkv_bias() {
                Some([
                    vector(get(r(LayerRole::AttnQBias))?, r(LayerRole::AttnQBias))?,
                    vector(get(r(LayerRole::AttnKBias))?, r(LayerRole::AttnKBias))?,
                    vector(get(r(LayerRole::AttnVBias))?, r(LayerRole::AttnVBias))?,
                ])
            } else {
                None
            };
            layers.push(Layer {
                attn_norm: vector(get(r(LayerRole::AttnNorm))?, r(LayerRole::AttnNorm))?,
                wq: get(r(LayerRole::AttnQ))?,
                wk: get(r(LayerRole::AttnK))?,
                wv: get(r(LayerRole::AttnV))?,
                bias,
                wo: get(r(LayerRole::AttnO))?,
                ffn_norm: vector(get(r(LayerRole::FfnNorm))?, r(LayerRole::FfnNorm))?,
                gate: get(r(LayerRole::FfnGate))?,
                up: get(r(LayerRole::FfnUp))?,
                down: get(r(LayerRole::FfnDown))?,
            });
        }
        let output_norm = vector(get(Role::OutputNorm)?, Role::OutputNorm)?;
        let output = get(Role::Output)?;
        let mut inv_freq = vec![0f32; config.head_dim as usize / 2];
        model.rope_inv_freq(&mut inv_freq);
        gpu.sync()?;
        Ok(CudaModel { gpu, config, _bufs: bufs, embedding, layers, output_norm, output, inv_freq, weight_bytes })
    }

    /// The model configuration.
    pub fn config(&self) -> &ModelConfig {
        &self.config
    }

    /// The GPU holding it.
    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    /// Bytes of weights on the device.
    pub fn weight_bytes(&self) -> usize {
        self.weight_bytes
    }
}
