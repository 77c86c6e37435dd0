//! Ferrite on a Cortex-M4F (QEMU's `mps2-an386`): a model file embedded in
//! flash, a session carved out of a `static` arena, a prefill and greedy
//! decode steps, and the generated ids reported over semihosting.
//!
//! `scripts/mcu-example.sh` converts the fixture, builds this binary, runs
//! it under `qemu-system-arm` and compares its report with the host CLI's
//! `ferrite run` on the same file. Report lines (stdout, one each):
//!
//! ```text
//! model: 172736 bytes, 2 layers, d_model 64, 4 heads (2 kv), ffn 176, vocab 512, weights Q8
//! config: max_ctx=64 kv=f16 max_batch=8
//! plan: 44224 bytes (kv 16384, activations 23424, scratch 3712, views 640), arena 49152
//! prompt: 1,57,311,92,4,480,230,17
//! ids: 339,390,403,...          the greedy ids
//! margins: 0.6946,0.3954,...    top-1 minus top-2 logit before each choice
//! logits-fnv: b8ceca43,...      FNV-1a of the f32 bits of each logits row
//! stack: 10248 bytes peak
//! ```
#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn)]

use core::cell::UnsafeCell;
use core::fmt::{self, Write as _};
use core::ops::ControlFlow;
use core::sync::atomic::{AtomicBool, Ordering};

use cortex_m_rt::{entry, exception, ExceptionFrame};
use cortex_m_semihosting::debug::{self, ExitStatus, EXIT_FAILURE, EXIT_SUCCESS};
use ferrite_runtime::format::{LayerRole, Role};
use ferrite_runtime::generate::{generate, End, GenBuffers, GenOptions, History, Observer};
use ferrite_runtime::sampler::{Sampler, SamplerConfig};
use ferrite_runtime::{KvType, Model, Session, SessionConfig};
use heapless::{String, Vec};

#[cfg(feature = "defmt")]
use defmt_semihosting as _; // the global logger

// ---------------------------------------------------------------------------
// What to run. The script reads `prompt:` and `config:` back from the report
// and gives the host CLI the same values.

/// Prompt token ids (the fixture has no tokenizer).
const PROMPT: [u32; 8] = [1, 57, 311, 92, 4, 480, 230, 17];
/// Tokens to generate greedily after the prompt.
const N_NEW: usize = 32;
/// KV cache capacity in tokens; the whole generation fits.
const MAX_CTX: usize = 64;
/// Prompt tokens per prefill batch: sets the size of the activation buffers.
const MAX_BATCH: usize = 8;
/// KV cache element type (f16: half the RAM of f32), and its spelling for
/// the host CLI's `--kv`.
const KV: (KvType, &str) = (KvType::F16, "f16");
/// Bytes of the static arena. A compile-time constant: checked against the
/// plan at run time, with a clear error when too small.
const ARENA_BYTES: usize = 48 * 1024;
/// Largest vocabulary the logits copy and the sampler scratch can hold.
const MAX_VOCAB: usize = 512;

/// Prompt and generated ids.
const HISTORY: usize = PROMPT.len() + N_NEW;
const _: () = assert!(
    HISTORY <= MAX_CTX,
    "prompt + generated tokens must fit in the KV cache"
);

/// Room for the repetition penalty's history: more than the sampler's window
/// (greedy's `repeat_last_n` is 64).
const RECENT: usize = 128;

// ---------------------------------------------------------------------------
// The model, in flash.

/// Forces the alignment the model reader needs of the buffer's start
/// ([`ferrite_runtime::format::ALIGN`], 64 bytes).
#[repr(C, align(64))]
struct Aligned<T: ?Sized>(T);

/// The Ferrite file, path given at build time (`.cargo/config.toml`
/// defaults it to `target/mcu/model.frt`, which the script writes).
static MODEL: &Aligned<[u8]> = &Aligned(*include_bytes!(env!("FERRITE_MCU_MODEL")));

// ---------------------------------------------------------------------------
// The arena, in .bss.

/// A zero-initialised, 64-byte aligned buffer in `.bss` that can be borrowed
/// mutably exactly once: a `static mut` without `static mut`.
#[repr(C, align(64))]
struct StaticArena<const N: usize> {
    bytes: UnsafeCell<[u8; N]>,
    taken: AtomicBool,
}

// SAFETY: the bytes are reachable only through `take`, which hands out at
// most one reference for the life of the program (guarded by `taken`).
unsafe impl<const N: usize> Sync for StaticArena<N> {}

impl<const N: usize> StaticArena<N> {
    const fn new() -> Self {
        StaticArena {
            bytes: UnsafeCell::new([0; N]),
            taken: AtomicBool::new(false),
        }
    }

    /// The buffer, the first time; `None` afterwards.
    // The `&mut` out of `&self` is the point: `taken` makes it unique.
    #[allow(clippy::mut_from_ref)]
    fn take(&'static self) -> Option<&'static mut [u8]> {
        if self.taken.swap(true, Ordering::AcqRel) {
            return None;
        }
        // SAFETY: `taken` was false and is now true, so this is the only
        // reference to the bytes ever created.
        Some(unsafe { &mut *self.bytes.get() })
    }
}

static ARENA: StaticArena<ARENA_BYTES> = StaticArena::new();

// ---------------------------------------------------------------------------
// Output: report lines on stdout (semihosting, or defmt frames with the
// `defmt` feature), errors on stderr.

/// One report line, built in a fixed buffer and sent whole.
type Line = String<512>;

macro_rules! report {
    ($($arg:tt)*) => {{
        let mut line = Line::new();
        if write!(line, $($arg)*).is_err() {
            fail("report", &"line longer than its buffer");
        }
        emit(&line);
    }};
}

/// Progress logs: defmt with the `defmt` feature, nothing without.
macro_rules! info {
    ($($arg:tt)*) => {{
        #[cfg(feature = "defmt")]
        defmt::info!($($arg)*);
    }};
}

fn emit(line: &str) {
    #[cfg(not(feature = "defmt"))]
    cortex_m_semihosting::hprintln!("{}", line);
    #[cfg(feature = "defmt")]
    defmt::println!("{=str}", line);
}

fn fail(what: &str, err: &dyn fmt::Display) -> ! {
    #[cfg(not(feature = "defmt"))]
    cortex_m_semihosting::heprintln!("error: {}: {}", what, err);
    #[cfg(feature = "defmt")]
    defmt::error!("{=str}: {}", what, defmt::Display2Format(err));
    exit(EXIT_FAILURE)
}

/// Ends the QEMU session with `status` (the exit code of qemu-system-arm).
fn exit(status: ExitStatus) -> ! {
    debug::exit(status);
    // Only reached without a debugger/emulator to take the semihosting call.
    loop {
        cortex_m::asm::wfi();
    }
}

/// Comma-separated values.
struct Csv<'a, T>(&'a [T], fn(&T, &mut fmt::Formatter<'_>) -> fmt::Result);

impl<T> fmt::Display for Csv<'_, T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, v) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            (self.1)(v, f)?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------

#[entry]
fn main() -> ! {
    let model = Model::from_bytes(&MODEL.0).unwrap_or_else(|e| fail("model", &e));
    let c = *model.config();
    let weights = model
        .file()
        .tensor(Role::Layer(0, LayerRole::AttnQ))
        .map(|t| t.dtype)
        .unwrap_or_else(|e| fail("model", &e));
    report!(
        "model: {} bytes, {} layers, d_model {}, {} heads ({} kv), ffn {}, vocab {}, weights {:?}",
        MODEL.0.len(),
        c.n_layers,
        c.d_model,
        c.n_heads,
        c.n_kv_heads,
        c.ffn_dim,
        c.vocab_size,
        weights
    );
    let vocab = c.vocab_size as usize;
    if vocab > MAX_VOCAB {
        fail(
            "model",
            &"vocabulary larger than MAX_VOCAB: raise it in examples/mcu/src/main.rs",
        );
    }

    let cfg = SessionConfig {
        max_ctx: MAX_CTX,
        kv: KV.0,
        max_batch: MAX_BATCH,
        threads: 1,
        ..Default::default()
    };
    let plan = model.plan(&cfg).unwrap_or_else(|e| fail("plan", &e));
    let parts = plan.parts();
    report!(
        "config: max_ctx={} kv={} max_batch={}",
        MAX_CTX,
        KV.1,
        MAX_BATCH
    );
    report!(
        "plan: {} bytes (kv {}, activations {}, scratch {}, views {}), arena {}",
        plan.arena_bytes(),
        parts.kv_cache,
        parts.activations,
        parts.scratch,
        parts.views,
        ARENA_BYTES
    );
    if plan.arena_bytes() > ARENA_BYTES {
        struct TooSmall(usize);
        impl fmt::Display for TooSmall {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(
                    f,
                    "the plan needs {} bytes but ARENA_BYTES is {}: raise ARENA_BYTES in examples/mcu/src/main.rs",
                    self.0, ARENA_BYTES
                )
            }
        }
        fail("arena too small", &TooSmall(plan.arena_bytes()));
    }
    let arena = ARENA
        .take()
        .unwrap_or_else(|| fail("arena", &"already taken"));
    let mut session = Session::new(&model, &plan, arena).unwrap_or_else(|e| fail("session", &e));
    let mut sampler = Sampler::new(SamplerConfig::greedy()).unwrap_or_else(|e| fail("sampler", &e));
    report!("prompt: {}", Csv(&PROMPT, |v, f| write!(f, "{v}")));
    info!(
        "session ready: arena {=usize} of {=usize} bytes",
        plan.arena_bytes(),
        ARENA_BYTES
    );

    // Fixed-capacity buffers: nothing here allocates.
    let mut logits = [0f32; MAX_VOCAB];
    let mut scratch = [0u32; MAX_VOCAB];
    let mut recent = [0u32; RECENT];
    let mut history = History::new(&mut recent);
    let mut seen = Seen {
        ids: Vec::new(),
        margins: Vec::new(),
        row_hashes: Vec::new(),
    };
    // The runtime's generation loop: as the host's, the last id is
    // reported, not fed back.
    let options = GenOptions {
        max_new: N_NEW,
        ignore_eos: true,
    };
    let buffers = GenBuffers {
        logits: &mut logits[..vocab],
        scratch: &mut scratch[..vocab],
    };
    let done = generate(
        &mut session,
        model.config(),
        None,
        &mut sampler,
        &PROMPT,
        &options,
        buffers,
        &mut history,
        &mut seen,
    )
    .unwrap_or_else(|e| fail("generate", &e));
    if let End::Backend(e) = done.end {
        fail("step", &e);
    }
    if done.generated != N_NEW || seen.ids.len() != N_NEW {
        fail("buffers", &"capacity exceeded");
    }
    let Seen {
        ids,
        margins,
        row_hashes,
    } = seen;

    report!("ids: {}", Csv(&ids, |v, f| write!(f, "{v}")));
    report!("margins: {}", Csv(&margins, |v, f| write!(f, "{v:.4}")));
    report!(
        "logits-fnv: {}",
        Csv(&row_hashes, |v, f| write!(f, "{v:08x}"))
    );
    report!("stack: {} bytes peak", stack_peak_bytes());
    exit(EXIT_SUCCESS)
}

/// What the report shows of the generation.
struct Seen {
    ids: Vec<u32, N_NEW>,
    margins: Vec<f32, N_NEW>,
    row_hashes: Vec<u32, N_NEW>,
}

impl Observer for Seen {
    fn next_logits(&mut self, index: usize, logits: &[f32]) {
        info!("step {=usize}", index);
        // Before the sampler overwrites the row; a full buffer is reported
        // after the loop (the count check).
        let _ = self.margins.push(greedy_margin(logits));
        let _ = self.row_hashes.push(fnv1a(logits));
    }
    fn token(&mut self, id: u32) -> ControlFlow<()> {
        match self.ids.push(id) {
            Ok(()) => ControlFlow::Continue(()),
            Err(_) => ControlFlow::Break(()),
        }
    }
}

/// Top-1 minus top-2 logit: how far the greedy choice is from a tie.
fn greedy_margin(logits: &[f32]) -> f32 {
    let (mut best, mut second) = (f32::NEG_INFINITY, f32::NEG_INFINITY);
    for &l in logits {
        if l > best {
            second = best;
            best = l;
        } else if l > second {
            second = l;
        }
    }
    best - second
}

/// 32-bit FNV-1a over the little-endian bytes of each f32: equal hashes mean
/// bit-identical rows (the script hashes the host's logits the same way).
fn fnv1a(values: &[f32]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for v in values {
        for b in v.to_le_bytes() {
            h ^= u32::from(b);
            h = h.wrapping_mul(0x0100_0193);
        }
    }
    h
}

/// Peak stack use: cortex-m-rt (feature `paint-stack`) fills the stack with
/// a pattern at reset; the lowest word no longer holding it marks the peak.
fn stack_peak_bytes() -> usize {
    extern "C" {
        static _stack_start: u32;
        static _stack_end: u32;
    }
    // Addresses only: the linker script's bounds of the stack region.
    let top = core::ptr::addr_of!(_stack_start) as usize;
    let bottom = core::ptr::addr_of!(_stack_end) as usize;
    let mut addr = bottom;
    while addr < top {
        // SAFETY: `addr` is a word-aligned address inside RAM (between the
        // linker's `_stack_end` and `_stack_start`), and a volatile read of
        // it has no side effects; the words below the live stack hold only
        // the paint or dead frames.
        if unsafe { core::ptr::read_volatile(addr as *const u32) } != cortex_m_rt::STACK_PAINT_VALUE
        {
            break;
        }
        addr += 4;
    }
    top - addr
}

#[exception]
unsafe fn HardFault(frame: &ExceptionFrame) -> ! {
    struct Frame<'a>(&'a ExceptionFrame);
    impl fmt::Display for Frame<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "pc {:#010x}, lr {:#010x}", self.0.pc(), self.0.lr())
        }
    }
    fail("hard fault", &Frame(frame))
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    fail("panic", info)
}
