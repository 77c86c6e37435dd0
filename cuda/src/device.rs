//! The device side: the driver through `cudarc`, the weights on the GPU and
//! the forward pass as a sequence of kernel launches on one stream.

use std::collections::HashMap;
use std::sync::Arc;

use cudarc::driver::{CudaContext, CudaFunction, CudaSlice, CudaStream, DevicePtr, LaunchConfig, PushKernelArg};
use ferrite_format::{quant, DType, LayerRole, ModelConfig, Role, TensorView};
use ferrite_runtime::backend::{Backend, Limits, RowSink};
use ferrite_runtime::{KvType, Model};

use crate::launch::{self, Arg, Launch};
use crate::plan::{CudaConfig, DevicePlan};
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
    fn at(&self, bytes: usize) -> u64 {
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

fn suffix(dtype: DType) -> &'static str {
    match dtype {
        DType::Q4 => "q4",
        DType::Q8 => "q8",
        DType::F16 => "f16",
        DType::F32 => "f32",
        // Refused when the model is uploaded (`CudaModel::new`).
        DType::Q4A => "q4a",
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

struct Layer {
    attn_norm: DevMatrix,
    wq: DevMatrix,
    wk: DevMatrix,
    wv: DevMatrix,
    bias: Option<[DevMatrix; 3]>,
    wo: DevMatrix,
    ffn_norm: DevMatrix,
    gate: DevMatrix,
    up: DevMatrix,
    down: DevMatrix,
}

/// A model's weights on the GPU, uploaded once (tied tensors once).
pub struct CudaModel {
    gpu: Arc<Gpu>,
    config: ModelConfig,
    _bufs: Vec<Buf>,
    embedding: DevMatrix,
    layers: Vec<Layer>,
    output_norm: DevMatrix,
    output: DevMatrix,
    inv_freq: Vec<f32>,
    weight_bytes: usize,
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
            if t.dtype == DType::Q4A {
                return Err(CudaError::Unsupported(format!(
                    "{role:?} is q4a, which the CUDA kernels do not read yet; convert with --weights q4 or q8"
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

/// A session on the GPU: KV cache and activations in device memory; only
/// token ids go up and the logits of one position come back. Products with
/// q4/q8 weights read int8 activations (one `quantize_acts` per product
/// input), as the CPU session's default (`f32_activations: false`).
pub struct CudaSession<'m> {
    model: &'m CudaModel,
    cfg: CudaConfig,
    plan: DevicePlan,
    x: Buf,
    xn: Buf,
    q: Buf,
    att: Buf,
    k: Buf,
    v: Buf,
    gate: Buf,
    up: Buf,
    logits_dev: Buf,
    acts_q: Buf,
    acts_d: Buf,
    acts_sums: Buf,
    ids: Buf,
    inv_freq: Buf,
    part_o: Buf,
    part_ml: Buf,
    kc: Vec<Buf>,
    vc: Vec<Buf>,
    pos: usize,
    logits: Vec<f32>,
}

impl<'m> CudaSession<'m> {
    /// Allocates a session's device memory (see [`DevicePlan`]).
    pub fn new(model: &'m CudaModel, cfg: &CudaConfig) -> Result<Self, CudaError> {
        let plan = DevicePlan::new(&model.config, cfg)?;
        let gpu = &model.gpu;
        let mut inv_freq = gpu.alloc(plan.inv_freq)?;
        let bytes: Vec<u8> = model.inv_freq.iter().flat_map(|f| f.to_le_bytes()).collect();
        gpu.write(&mut inv_freq, 0, &bytes)?;
        let mut kc = Vec::with_capacity(plan.n_layers);
        let mut vc = Vec::with_capacity(plan.n_layers);
        for _ in 0..plan.n_layers {
            kc.push(gpu.alloc(plan.kv_layer)?);
            vc.push(gpu.alloc(plan.kv_layer)?);
        }
        Ok(CudaSession {
            model,
            cfg: *cfg,
            x: gpu.alloc(plan.x)?,
            xn: gpu.alloc(plan.x)?,
            q: gpu.alloc(plan.q)?,
            att: gpu.alloc(plan.q)?,
            k: gpu.alloc(plan.kv_rows)?,
            v: gpu.alloc(plan.kv_rows)?,
            gate: gpu.alloc(plan.ffn)?,
            up: gpu.alloc(plan.ffn)?,
            logits_dev: gpu.alloc(plan.logits)?,
            acts_q: gpu.alloc(plan.acts_q)?,
            acts_d: gpu.alloc(plan.acts_d)?,
            acts_sums: gpu.alloc(plan.acts_d)?,
            ids: gpu.alloc(plan.ids)?,
            inv_freq,
            part_o: gpu.alloc(plan.part_o)?,
            part_ml: gpu.alloc(plan.part_ml)?,
            kc,
            vc,
            plan,
            pos: 0,
            logits: vec![0f32; model.config.vocab_size as usize],
        })
    }

    /// The device memory plan.
    pub fn plan(&self) -> &DevicePlan {
        &self.plan
    }

    /// Tokens in the cache.
    pub fn pos(&self) -> usize {
        self.pos
    }

    /// Forgets every token (the cache is overwritten from position 0).
    pub fn reset(&mut self) {
        self.pos = 0;
    }

    /// Processes a prompt in batches and returns the logits after its last token.
    pub fn prefill(&mut self, tokens: &[u32]) -> Result<&[f32], CudaError> {
        Backend::prefill(self, tokens)
    }

    /// Like [`CudaSession::prefill`], passing the logits of every prompt
    /// position to `each(index_in_prompt, logits)`.
    pub fn prefill_all(&mut self, tokens: &[u32], each: &mut dyn FnMut(usize, &[f32])) -> Result<(), CudaError> {
        Backend::prefill_all(self, tokens, each)
    }

    /// Feeds one token and returns the logits for the next.
    pub fn step(&mut self, token: u32) -> Result<&[f32], CudaError> {
        Backend::step(self, token)
    }

    /// The logits of the last processed token.
    pub fn logits(&self) -> &[f32] {
        &self.logits
    }

    /// The int8 activation buffers.
    fn acts(&self) -> DevActs {
        DevActs { q: self.acts_q.ptr(), d: self.acts_d.ptr(), sums: self.acts_sums.ptr() }
    }

    /// Final norm and output projection of batch row `t` into the host logits.
    fn head_row(&mut self, t: usize) -> Result<(), CudaError> {
        let m = self.model;
        let gpu = &*m.gpu;
        let d = m.config.d_model;
        let row = self.x.at(t * d as usize * 4);
        let norm = [Arg::Ptr(row), Arg::Ptr(m.output_norm.ptr), Arg::Ptr(self.xn.ptr()), Arg::U32(d)];
        gpu.launch(
            "rmsnorm_rows",
            launch::rows(1),
            &[norm[0], norm[1], norm[2], norm[3], Arg::F32(m.config.norm_eps)],
        )?;
        let acts = self.acts();
        if m.output.is_quantized() {
            acts.quantize(gpu, self.xn.ptr(), d, 1)?;
        }
        m.output.matmul(gpu, self.xn.ptr(), &acts, self.logits_dev.ptr(), 1)?;
        gpu.read_f32(&self.logits_dev, 0, &mut self.logits)?;
        Ok(())
    }

    /// Runs the layers over `tokens` (at most `max_batch`), appending their
    /// keys and values to the cache; leaves the hidden states in `x`.
    fn forward(&mut self, tokens: &[u32]) -> Result<(), CudaError> {
        let m = self.model;
        let gpu = &*m.gpu;
        let c = m.config;
        let n = tokens.len() as u32;
        let (d, q_dim, kv_dim, ffn, hd) = (c.d_model, c.q_dim(), c.kv_dim(), c.ffn_dim, c.head_dim);
        let group = c.n_heads / c.n_kv_heads;
        let scale = 1.0 / (hd as f32).sqrt();
        let window = c.sliding_window().unwrap_or(0);
        let pos0 = self.pos as u32;
        let ids: Vec<u8> = tokens.iter().flat_map(|t| t.to_le_bytes()).collect();
        gpu.write(&mut self.ids, 0, &ids)?;
        let e = m.embedding;
        gpu.launch(
            &format!("embed_{}", suffix(e.dtype)),
            launch::rows(n),
            &[Arg::Ptr(self.ids.ptr()), Arg::Ptr(e.ptr), Arg::Ptr(e.scales), Arg::Ptr(self.x.ptr()), Arg::U32(d)],
        )?;
        let (x, xn, q, att, k, v) =
            (self.x.ptr(), self.xn.ptr(), self.q.ptr(), self.att.ptr(), self.k.ptr(), self.v.ptr());
        let (gate, up) = (self.gate.ptr(), self.up.ptr());
        let acts = self.acts();
        // The int8 activations of `src` ([n, cols]) when one of `ws` reads them.
        let quantize = |src: u64, cols: u32, ws: &[&DevMatrix]| -> Result<(), CudaError> {
            if ws.iter().any(|w| w.is_quantized()) {
                acts.quantize(gpu, src, cols, n)?;
            }
            Ok(())
        };
        let kv_suffix = if self.cfg.kv == KvType::F32 { "f32" } else { "f16" };
        let norm = |src: u64, w: &DevMatrix, dst: u64| {
            gpu.launch(
                "rmsnorm_rows",
                launch::rows(n),
                &[Arg::Ptr(src), Arg::Ptr(w.ptr), Arg::Ptr(dst), Arg::U32(d), Arg::F32(c.norm_eps)],
            )
        };
        let add = |dst: u64, src: u64, len: u32| {
            gpu.launch("add", launch::elementwise(len), &[Arg::Ptr(dst), Arg::Ptr(src), Arg::U32(len)])
        };
        for (li, layer) in m.layers.iter().enumerate() {
            norm(x, &layer.attn_norm, xn)?;
            quantize(xn, d, &[&layer.wq, &layer.wk, &layer.wv])?;
            layer.wq.matmul(gpu, xn, &acts, q, n)?;
            layer.wk.matmul(gpu, xn, &acts, k, n)?;
            layer.wv.matmul(gpu, xn, &acts, v, n)?;
            if let Some([bq, bk, bv]) = &layer.bias {
                for (buf, b, w) in [(q, bq, q_dim), (k, bk, kv_dim), (v, bv, kv_dim)] {
                    gpu.launch(
                        "add_bias",
                        launch::elementwise(n * w),
                        &[Arg::Ptr(buf), Arg::Ptr(b.ptr), Arg::U32(w), Arg::U32(n * w)],
                    )?;
                }
            }
            for (buf, w) in [(q, q_dim), (k, kv_dim)] {
                gpu.launch(
                    "rope_rows",
                    launch::rope(n, w / hd, hd),
                    &[Arg::Ptr(buf), Arg::Ptr(self.inv_freq.ptr()), Arg::U32(w), Arg::U32(hd), Arg::U32(pos0)],
                )?;
            }
            // Keys and values go to the cache first (rounded to its type);
            // attention then reads every key, this batch's included, from it.
            let (kc, vc) = (self.kc[li].ptr(), self.vc[li].ptr());
            gpu.launch(
                &format!("kv_store_{kv_suffix}"),
                launch::elementwise(n * kv_dim),
                &[Arg::Ptr(k), Arg::Ptr(v), Arg::Ptr(kc), Arg::Ptr(vc), Arg::U32(kv_dim), Arg::U32(pos0), Arg::U32(n)],
            )?;
            if n == 1 {
                let key_hi = pos0 + 1;
                let key_lo = if window > 0 { key_hi.saturating_sub(window) } else { 0 };
                let (splits, chunk) = launch::decode_splits(key_hi - key_lo);
                gpu.launch(
                    &format!("attn_decode_{kv_suffix}"),
                    launch::attn_decode(c.n_heads, splits),
                    &[
                        Arg::Ptr(q),
                        Arg::Ptr(kc),
                        Arg::Ptr(vc),
                        Arg::Ptr(self.part_o.ptr()),
                        Arg::Ptr(self.part_ml.ptr()),
                        Arg::U32(group),
                        Arg::U32(hd),
                        Arg::U32(kv_dim),
                        Arg::U32(key_lo),
                        Arg::U32(key_hi),
                        Arg::U32(chunk),
                        Arg::F32(scale),
                    ],
                )?;
                gpu.launch(
                    "attn_combine",
                    launch::attn_combine(c.n_heads),
                    &[
                        Arg::Ptr(self.part_o.ptr()),
                        Arg::Ptr(self.part_ml.ptr()),
                        Arg::Ptr(att),
                        Arg::U32(hd),
                        Arg::U32(splits),
                    ],
                )?;
            } else {
                gpu.launch(
                    &format!("attn_prefill_{kv_suffix}"),
                    launch::attn_prefill(c.n_heads, n),
                    &[
                        Arg::Ptr(q),
                        Arg::Ptr(kc),
                        Arg::Ptr(vc),
                        Arg::Ptr(att),
                        Arg::U32(n),
                        Arg::U32(pos0),
                        Arg::U32(group),
                        Arg::U32(hd),
                        Arg::U32(kv_dim),
                        Arg::U32(window),
                        Arg::F32(scale),
                    ],
                )?;
            }
            quantize(att, q_dim, &[&layer.wo])?;
            layer.wo.matmul(gpu, att, &acts, xn, n)?;
            add(x, xn, n * d)?;
            norm(x, &layer.ffn_norm, xn)?;
            quantize(xn, d, &[&layer.gate, &layer.up])?;
            layer.gate.matmul(gpu, xn, &acts, gate, n)?;
            layer.up.matmul(gpu, xn, &acts, up, n)?;
            gpu.launch("swiglu", launch::elementwise(n * ffn), &[Arg::Ptr(gate), Arg::Ptr(up), Arg::U32(n * ffn)])?;
            quantize(gate, ffn, &[&layer.down])?;
            layer.down.matmul(gpu, gate, &acts, xn, n)?;
            add(x, xn, n * d)?;
        }
        self.pos += tokens.len();
        Ok(())
    }
}

/// The checks and batching of a forward call are the runtime's
/// ([`Backend::run`]); the session provides the layers and the head. The
/// device cache does not stream: a full context is an error.
impl Backend for CudaSession<'_> {
    type Error = CudaError;

    fn limits(&self) -> Limits {
        Limits {
            vocab: self.model.config.vocab_size,
            max_ctx: self.cfg.max_ctx,
            max_batch: self.cfg.max_batch,
            streaming: false,
        }
    }

    fn position(&self) -> usize {
        self.pos
    }

    fn reset(&mut self) {
        self.pos = 0;
    }

    fn forward_batch(&mut self, batch: &[u32]) -> Result<(), CudaError> {
        self.forward(batch)
    }

    fn head(&mut self, rows: core::ops::Range<usize>, mut sink: Option<RowSink<'_>>) -> Result<(), CudaError> {
        for t in rows {
            self.head_row(t)?;
            if let Some(f) = sink.as_mut() {
                f(t, &self.logits);
            }
        }
        Ok(())
    }

    fn logits(&self) -> &[f32] {
        &self.logits
    }
}
