//! Reader validation tests: valid files built in memory parse and read back
//! exactly; every `Error` variant the reader can produce is reached by a
//! targeted corruption (with the checksums recomputed where the check sits
//! behind them); truncations and byte flips never panic.
//!
//! `Error::NoTokenizer` is not covered: the reader never returns it (a file
//! without a tokenizer parses, with `File::tokenizer()` = `None`); it exists
//! for callers that need one.
//!
//! Sections and tensors are packed (each at the next 64-byte boundary, the
//! data section ending the file at the last tensor's padded end), so a tensor
//! offset is either below its packed position (`TensorOrder`) or otherwise
//! wrong (`BadLayout { what: "tensor offset" }`). Some payloads of reachable
//! variants are therefore dead: `Misaligned { what: "tensor data" }` (a
//! misaligned offset is `BadLayout`), and `Overflow` for "tensor end",
//! "tensor offset", "data end", "tok_offset" and "data_offset" (every such sum
//! is bounded by the file size plus config-bounded tensor sizes). Corruptions
//! that add, drop or reorder tensors re-lay the file out with [`Parts`], so
//! only the intended fault remains.

use std::io::Cursor;
use std::sync::Mutex;

use bytemuck::Pod;
use ferrite_format::quant::{self, GROUP};
use ferrite_format::tokenizer::{Merge, PreTokenizer, TokenType, TokenizerHeader, TokenizerKind, NO_TOKEN};
use ferrite_format::writer::{AlignedBytes, FileWriter, TensorSpec, TokenEntry, TokenizerBuilder};
use ferrite_format::{
    checksum, Arch, DType, DirEntry, Error, File, Header, LayerRole, ModelConfig, Role, ALIGN, DIR_ENTRY_SIZE,
    ENDIAN_CHECK, HEADER_SIZE, VERSION,
};
use ferrite_test_support::rng::SplitMix64;
use half::f16;

// ---------------------------------------------------------------------------
// Deterministic pseudo-random numbers (SplitMix64, from ferrite-test-support).

type Rng = SplitMix64;

/// A byte in 1..=255.
fn nonzero_u8(rng: &mut Rng) -> u8 {
    1 + rng.below(255) as u8
}

// ---------------------------------------------------------------------------
// Building valid files.

const META_CRC_AT: usize = 124;
const TOK_CRC_AT: usize = 92;
const CONFIG_AT: usize = HEADER_SIZE;
const DIR_AT: usize = HEADER_SIZE + ModelConfig::SIZE;

/// `native` natively, `miri` under Miri (`scripts/miri.sh`), which
/// interprets the tests about a thousand times slower: there the fixtures
/// are narrower and the robustness tests try fewer cases, each saying so
/// where it does.
const fn by_target(native: usize, miri: usize) -> usize {
    if cfg!(miri) {
        miri
    } else {
        native
    }
}

// Widths of the fixtures. Building, checksumming and tiling a fixture's
// data is most of the time under Miri, so there they are narrower (the
// same kinds of tensor: every dtype, full and partial groups, 2 layers,
// GQA, the same tokenizer).
/// [`llama_config`]'s d_model.
const D: u32 = by_target(64, 32) as u32;
/// [`llama_config`]'s head width (4 query, 2 kv heads).
const HEAD_DIM: u32 = by_target(16, 8) as u32;
/// [`llama_config`]'s FFN width.
const FFN: u32 = by_target(96, 64) as u32;
/// [`odd_config`]'s d_model and FFN width (not multiples of the group),
/// and the groups of an FFN row.
const ODD_D: u32 = by_target(48, 40) as u32;
const ODD_FFN: u32 = by_target(100, 36) as u32;
const ODD_FFN_GROUPS: usize = by_target(4, 2);

/// A tiny Llama: 2 layers, d_model 64, 4 heads / 2 kv heads of 16, ffn 96,
/// vocab 40 (under Miri d_model 32, heads of 8, ffn 64).
fn llama_config() -> ModelConfig {
    let mut c: ModelConfig = bytemuck::Zeroable::zeroed();
    c.arch = Arch::Llama as u32;
    c.n_layers = 2;
    c.d_model = D;
    c.n_heads = 4;
    c.n_kv_heads = 2;
    c.head_dim = HEAD_DIM;
    c.ffn_dim = FFN;
    c.vocab_size = 40;
    c.trained_ctx = 256;
    c.rope_theta = 10_000.0;
    c.rope_scaling = 0;
    c.rope_factor = 1.0;
    c.norm_eps = 1e-5;
    c.activation = 0;
    c.flags = ModelConfig::FLAG_HAS_BOS | ModelConfig::FLAG_ADD_BOS;
    c.bos_id = 1;
    c.n_stop_ids = 1;
    c.stop_ids[0] = 2;
    c
}

fn tied_config() -> ModelConfig {
    let mut c = llama_config();
    c.flags |= ModelConfig::FLAG_TIED_EMBEDDINGS;
    c
}

fn qwen2_config() -> ModelConfig {
    let mut c = llama_config();
    c.arch = Arch::Qwen2 as u32;
    c.flags |= ModelConfig::FLAG_QKV_BIAS;
    c
}

/// Widths that are not multiples of the quantization group: 48 and 100
/// (under Miri 40 and 36).
fn odd_config() -> ModelConfig {
    let mut c = llama_config();
    c.d_model = ODD_D;
    c.n_heads = 3;
    c.n_kv_heads = 1;
    c.head_dim = 16;
    c.ffn_dim = ODD_FFN;
    c.vocab_size = 37;
    c
}

/// Config for a file with the test tokenizer (261 tokens), Llama 3 RoPE.
fn tok_config() -> ModelConfig {
    let mut c = llama_config();
    c.vocab_size = 264;
    c.stop_ids[0] = EOT;
    c.rope_scaling = 1;
    c.rope_factor = 8.0;
    c.rope_low_freq_factor = 1.0;
    c.rope_high_freq_factor = 4.0;
    c.rope_original_ctx = 64;
    c
}

/// `[rows, cols]` of a role, written out from the format's documentation
/// (independently of `Role::expected_shape`).
fn shape_of(role: Role, c: &ModelConfig) -> [u32; 2] {
    let q = c.n_heads * c.head_dim;
    let kv = c.n_kv_heads * c.head_dim;
    match role {
        Role::Embedding | Role::Output => [c.vocab_size, c.d_model],
        Role::OutputNorm => [c.d_model, 1],
        Role::Layer(_, r) => match r {
            LayerRole::AttnNorm | LayerRole::FfnNorm => [c.d_model, 1],
            LayerRole::AttnQ => [q, c.d_model],
            LayerRole::AttnK | LayerRole::AttnV => [kv, c.d_model],
            LayerRole::AttnO => [c.d_model, q],
            LayerRole::AttnQBias => [q, 1],
            LayerRole::AttnKBias | LayerRole::AttnVBias => [kv, 1],
            LayerRole::FfnGate | LayerRole::FfnUp => [c.ffn_dim, c.d_model],
            LayerRole::FfnDown => [c.d_model, c.ffn_dim],
        },
    }
}

fn is_vector(role: Role) -> bool {
    matches!(
        role,
        Role::OutputNorm
            | Role::Layer(
                _,
                LayerRole::AttnNorm
                    | LayerRole::FfnNorm
                    | LayerRole::AttnQBias
                    | LayerRole::AttnKBias
                    | LayerRole::AttnVBias
            )
    )
}

/// Every role the config requires, in directory order.
fn roles_for(c: &ModelConfig) -> Vec<Role> {
    let tied = c.flags & ModelConfig::FLAG_TIED_EMBEDDINGS != 0;
    let bias = c.flags & ModelConfig::FLAG_QKV_BIAS != 0;
    let mut roles = vec![Role::Embedding, Role::OutputNorm];
    if !tied {
        roles.push(Role::Output);
    }
    for layer in 0..c.n_layers {
        for r in LayerRole::ALL {
            let is_bias = matches!(r, LayerRole::AttnQBias | LayerRole::AttnKBias | LayerRole::AttnVBias);
            if !is_bias || bias {
                roles.push(Role::Layer(layer, r));
            }
        }
    }
    roles
}

/// How matrices are stored: all one type, or cycling through every type.
#[derive(Clone, Copy, PartialEq)]
enum Mix {
    All(DType),
    Cycle,
}

const CYCLE: [DType; 5] = [DType::F32, DType::F16, DType::Q8, DType::Q4, DType::Q4A];

fn specs_for(c: &ModelConfig, mix: Mix) -> Vec<TensorSpec> {
    let mut matrix = 0;
    roles_for(c)
        .into_iter()
        .map(|role| {
            let dtype = if is_vector(role) {
                DType::F32
            } else {
                matrix += 1;
                match mix {
                    Mix::All(d) => d,
                    Mix::Cycle => CYCLE[(matrix - 1) % CYCLE.len()],
                }
            };
            TensorSpec { role, dtype, shape: shape_of(role, c) }
        })
        .collect()
}

/// Rows of tensor data drawn under Miri; see [`tensor_data`].
const MIRI_DRAWN_ROWS: usize = 4;

/// Appends rows `drawn..rows` (`row_bytes` each) to `out`, which holds rows
/// `0..drawn`: row `r` repeats row `r % drawn`.
fn repeat_rows(out: &mut Vec<u8>, rows: usize, drawn: usize, row_bytes: usize) {
    for r in drawn..rows {
        let from = (r % drawn) * row_bytes;
        out.extend_from_within(from..from + row_bytes);
    }
}

/// Appends `rows` logical rows of `cols` quants to `out`: group by group,
/// `draw` for each element inside the row (the padding of a partial last
/// group stays zero), the group then packed by `pack`.
fn draw_quant_rows<T: Copy + Default>(
    out: &mut Vec<u8>,
    rows: usize,
    cols: usize,
    rng: &mut Rng,
    draw: impl Fn(&mut Rng) -> T,
    pack: impl Fn(&[T; GROUP], &mut Vec<u8>),
) {
    for _ in 0..rows {
        for g in 0..cols.div_ceil(GROUP) {
            let mut vals = [T::default(); GROUP];
            for (j, v) in vals.iter_mut().enumerate() {
                if g * GROUP + j < cols {
                    *v = draw(rng);
                }
            }
            pack(&vals, out);
        }
    }
}

/// `n` positive group scales.
fn draw_scales(n: usize, rng: &mut Rng) -> Vec<f16> {
    (0..n).map(|_| f16::from_f32(0.001 + 0.05 * (rng.unit() + 1.0) / 2.0)).collect()
}

/// The logical quant rows `logical` (`groups` groups of `group_bytes` a
/// row) and their per-group planes (the scales, then q4a's minimums) as
/// the file holds them (`quant` module documentation): the quants in 8-row
/// tiles, then each plane tiled likewise.
fn tiled(dtype: DType, logical: &[u8], planes: &[&[f16]], rows: usize, groups: usize, group_bytes: usize) -> Vec<u8> {
    let padded = quant::padded_rows(rows);
    let mut tiles = vec![0u8; padded * groups * group_bytes];
    let mut tiled_planes = Vec::new();
    for plane in planes {
        let mut tiled_plane = vec![f16::ZERO; padded * groups];
        quant::tile_rows(dtype, logical, plane, rows, groups, &mut tiles, &mut tiled_plane);
        tiled_planes.push(tiled_plane);
    }
    for plane in tiled_planes {
        tiles.extend(plane.iter().flat_map(|s| s.to_le_bytes()));
    }
    tiles
}

/// Deterministic contents for a tensor: finite floats, or quant planes with
/// zero quants in the padding of a partial last group and positive scales.
///
/// Under Miri (`scripts/miri.sh`) only the first [`MIRI_DRAWN_ROWS`] rows'
/// elements are drawn and later rows repeat them (drawing every element
/// dominated the run time there); scales are all drawn. Natively every
/// element is drawn, and every tensor gets its own data (under Miri see
/// [`shared_tensor_data`]).
fn tensor_data(dtype: DType, rows: u32, cols: u32, rng: &mut Rng) -> Vec<u8> {
    let (rows, cols) = (rows as usize, cols as usize);
    let drawn = if cfg!(miri) { rows.min(MIRI_DRAWN_ROWS) } else { rows };
    let mut out = Vec::new();
    match dtype {
        DType::F32 => {
            for _ in 0..drawn * cols {
                out.extend_from_slice(&rng.unit().to_le_bytes());
            }
            repeat_rows(&mut out, rows, drawn, cols * 4);
        }
        DType::F16 => {
            for _ in 0..drawn * cols {
                out.extend_from_slice(&f16::from_f32(rng.unit()).to_le_bytes());
            }
            repeat_rows(&mut out, rows, drawn, cols * 2);
        }
        DType::Q4A => {
            let groups = cols.div_ceil(GROUP);
            draw_quant_rows(
                &mut out,
                drawn,
                cols,
                rng,
                |rng| rng.below(16) as u8,
                |vals, out| {
                    let mut packed = [0u8; quant::Q4_GROUP_BYTES];
                    quant::q4a_pack(vals, &mut packed);
                    out.extend_from_slice(&packed);
                },
            );
            repeat_rows(&mut out, rows, drawn, groups * quant::Q4_GROUP_BYTES);
            let scales = draw_scales(rows * groups, rng);
            let mins: Vec<f16> = (0..rows * groups).map(|_| f16::from_f32(-0.4 * (rng.unit() + 1.0))).collect();
            // The minimums tile like the scales.
            out = tiled(dtype, &out, &[&scales, &mins], rows, groups, quant::Q4_GROUP_BYTES);
        }
        DType::Q8 | DType::Q4 => {
            let groups = cols.div_ceil(GROUP);
            let draw = |rng: &mut Rng| {
                if dtype == DType::Q8 {
                    (rng.below(255) as i16 - 127) as i8 // -127..=127
                } else {
                    rng.below(16) as i8 - 8
                }
            };
            draw_quant_rows(&mut out, drawn, cols, rng, draw, |vals, out| {
                if dtype == DType::Q8 {
                    out.extend(vals.iter().map(|&v| v as u8));
                } else {
                    let mut packed = [0u8; quant::Q4_GROUP_BYTES];
                    quant::q4_pack(vals, &mut packed);
                    out.extend_from_slice(&packed);
                }
            });
            let group_bytes = if dtype == DType::Q8 { quant::Q8_GROUP_BYTES } else { quant::Q4_GROUP_BYTES };
            repeat_rows(&mut out, rows, drawn, groups * group_bytes);
            let scales = draw_scales(rows * groups, rng);
            out = tiled(dtype, &out, &[&scales], rows, groups, group_bytes);
        }
        // The fixtures' mixes draw only the types above.
        other => panic!("no fixture data for {}", other.name()),
    }
    assert_eq!(out.len() as u64, dtype.tensor_bytes(rows as u64, cols as u64).unwrap());
    out
}

const HE: u32 = 256;
const LL: u32 = 257;
const HELL: u32 = 258;
const HELLO: u32 = 259;
const EOT: u32 = 260;
const TEMPLATE: &str = "{% for m in messages %}{{ m.role }}: {{ m.content }}<|eot|>\n{% endfor %}";

/// Byte-level BPE: all 256 single bytes (id = byte), four merges building
/// "hello", and a special end-of-turn token.
fn tokenizer_builder() -> TokenizerBuilder {
    let mut tokens: Vec<TokenEntry> =
        (0..=255u8).map(|b| TokenEntry { bytes: vec![b], ty: TokenType::Normal, score: 0.0 }).collect();
    for s in ["he", "ll", "hell", "hello"] {
        tokens.push(TokenEntry { bytes: s.as_bytes().to_vec(), ty: TokenType::Normal, score: 0.0 });
    }
    tokens.push(TokenEntry { bytes: b"<|eot|>".to_vec(), ty: TokenType::Special, score: 0.0 });
    let mut byte_tokens = [0u32; 256];
    for (b, t) in byte_tokens.iter_mut().enumerate() {
        *t = b as u32;
    }
    TokenizerBuilder {
        kind: TokenizerKind::ByteLevelBpe,
        pretokenizer: PreTokenizer::Gpt2,
        tokens,
        merges: vec![(b'h' as u32, b'e' as u32), (b'l' as u32, b'l' as u32), (HE, LL), (HELL, b'o' as u32)],
        byte_tokens,
        specials: vec![EOT],
        chat_template: Some(TEMPLATE.to_string()),
        eot: Some(EOT),
        unk: None,
        has_scores: false,
        byte_fallback: false,
        add_prefix_space: false,
        ignore_merges: false,
    }
}

/// A built file and everything that went into it.
#[derive(Clone)]
struct Fixture {
    bytes: Vec<u8>,
    config: ModelConfig,
    /// Specs in directory order.
    specs: Vec<TensorSpec>,
    /// Tensor contents in directory order.
    data: Vec<Vec<u8>>,
    tokenizer: Option<Vec<u8>>,
}

/// What a fixture is built from: the config's bytes, the mix, the
/// tokenizer section and the seed.
type FixtureKey = (Vec<u8>, Mix, Option<Vec<u8>>, u64);

/// A valid file of `config`, its matrices stored as `mix` says, its data
/// drawn from `seed`.
///
/// Each fixture is built once per test process and cloned after that
/// (building is deterministic). Building dominates the run time under Miri
/// (`scripts/miri.sh`), so there the seed is ignored as well: fixtures that
/// differ only in their seed are one file, built once. No test depends on
/// two fixtures' data differing.
fn build(config: ModelConfig, mix: Mix, tokenizer: Option<TokenizerBuilder>, seed: u64) -> Fixture {
    static BUILT: Mutex<Vec<(FixtureKey, Fixture)>> = Mutex::new(Vec::new());
    let seed = if cfg!(miri) { 0 } else { seed };
    let tok = tokenizer.map(|t| t.to_bytes().expect("tokenizer builds"));
    let key: FixtureKey = (bytemuck::bytes_of(&config).to_vec(), mix, tok, seed);
    if let Some((_, fx)) = BUILT.lock().unwrap().iter().find(|(k, _)| *k == key) {
        return fx.clone();
    }
    let fx = build_uncached(config, mix, key.2.clone(), seed);
    BUILT.lock().unwrap().push((key, fx.clone()));
    fx
}

/// Under Miri: the data of every `dtype` tensor of this shape, drawn once
/// per test process (its own generator seeded by the shape), so that
/// fixtures and tensors of one dtype and shape share it. No test depends on
/// two tensors' data differing, only on each tensor's checksum covering it.
fn shared_tensor_data(dtype: DType, shape: [u32; 2]) -> Vec<u8> {
    type Key = (DType, [u32; 2]);
    static DRAWN: Mutex<Vec<(Key, Vec<u8>)>> = Mutex::new(Vec::new());
    let key = (dtype, shape);
    if let Some((_, data)) = DRAWN.lock().unwrap().iter().find(|(k, _)| *k == key) {
        return data.clone();
    }
    let mut rng = Rng::new(((dtype as u64) << 40) ^ ((shape[0] as u64) << 20) ^ shape[1] as u64);
    let data = tensor_data(dtype, shape[0], shape[1], &mut rng);
    DRAWN.lock().unwrap().push((key, data.clone()));
    data
}

fn build_uncached(config: ModelConfig, mix: Mix, tok: Option<Vec<u8>>, seed: u64) -> Fixture {
    let mut rng = Rng::new(seed);
    let specs = specs_for(&config, mix);
    let data: Vec<Vec<u8>> = specs
        .iter()
        .map(|s| {
            if cfg!(miri) {
                shared_tensor_data(s.dtype, s.shape)
            } else {
                tensor_data(s.dtype, s.shape[0], s.shape[1], &mut rng)
            }
        })
        .collect();
    // Hand the writer the specs in reverse to check it sorts them.
    let reversed: Vec<TensorSpec> = specs.iter().rev().copied().collect();
    let mut w = FileWriter::new(Cursor::new(Vec::new()), &config, tok.as_deref(), &reversed).expect("writer");
    let order = w.order();
    assert_eq!(order, specs.iter().map(|s| s.role).collect::<Vec<_>>(), "writer order = directory order");
    for (i, role) in order.iter().enumerate() {
        assert_eq!(specs[i].role, *role);
        w.write_tensor(&data[i]).expect("write tensor");
    }
    let bytes = w.finish().expect("finish").into_inner();
    Fixture { bytes, config, specs, data, tokenizer: tok }
}

fn small() -> Fixture {
    build(llama_config(), Mix::Cycle, None, 1)
}

fn with_tok() -> Fixture {
    build(tok_config(), Mix::Cycle, Some(tokenizer_builder()), 2)
}

fn rd<T: Pod>(b: &[u8], at: usize) -> T {
    bytemuck::pod_read_unaligned(&b[at..at + core::mem::size_of::<T>()])
}

fn edit<T: Pod>(b: &mut [u8], at: usize, f: impl FnOnce(&mut T)) {
    let mut v: T = rd(b, at);
    f(&mut v);
    b[at..at + core::mem::size_of::<T>()].copy_from_slice(bytemuck::bytes_of(&v));
}

fn edit_header(b: &mut [u8], f: impl FnOnce(&mut Header)) {
    edit(b, 0, f)
}

fn edit_config(b: &mut [u8], f: impl FnOnce(&mut ModelConfig)) {
    edit(b, CONFIG_AT, f)
}

fn edit_entry(b: &mut [u8], i: usize, f: impl FnOnce(&mut DirEntry)) {
    edit(b, DIR_AT + i * DIR_ENTRY_SIZE, f)
}

fn entry(b: &[u8], i: usize) -> DirEntry {
    rd(b, DIR_AT + i * DIR_ENTRY_SIZE)
}

fn header(b: &[u8]) -> Header {
    rd(b, 0)
}

/// Recomputes `meta_crc`: header bytes 0..124, the config, the directory.
fn reseal_meta(b: &mut [u8]) {
    let n = u32::from_le_bytes(b[48..52].try_into().unwrap()) as usize;
    let dir_end = (DIR_AT + n * DIR_ENTRY_SIZE).min(b.len());
    let mut meta = Vec::with_capacity(dir_end);
    meta.extend_from_slice(&b[..META_CRC_AT]);
    meta.extend_from_slice(&b[CONFIG_AT..CONFIG_AT + ModelConfig::SIZE]);
    meta.extend_from_slice(&b[DIR_AT..dir_end]);
    let crc = checksum(&meta);
    b[META_CRC_AT..META_CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Recomputes `tok_crc` over the tokenizer section (then `meta_crc`).
fn reseal_tok(b: &mut [u8]) {
    let h = header(b);
    let (off, size) = (h.tok_offset as usize, h.tok_size as usize);
    let crc = checksum(&b[off..off + size]);
    b[TOK_CRC_AT..TOK_CRC_AT + 4].copy_from_slice(&crc.to_le_bytes());
    reseal_meta(b);
}

impl Fixture {
    fn aligned(&self) -> AlignedBytes {
        AlignedBytes::new(&self.bytes)
    }
    fn header(&self) -> Header {
        header(&self.bytes)
    }
    fn index_of(&self, role: Role) -> usize {
        self.specs.iter().position(|s| s.role == role).expect("role in fixture")
    }
    fn tok_range(&self) -> std::ops::Range<usize> {
        let h = self.header();
        h.tok_offset as usize..(h.tok_offset + h.tok_size) as usize
    }
    fn dir_end(&self) -> usize {
        DIR_AT + self.specs.len() * DIR_ENTRY_SIZE
    }
    /// A copy changed by `f` (anywhere), with `meta_crc` recomputed.
    fn mutated(&self, f: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut b = self.bytes.clone();
        f(&mut b);
        reseal_meta(&mut b);
        b
    }
    /// A copy whose tokenizer section is changed by `f`, both checksums recomputed.
    fn mutated_tok(&self, f: impl FnOnce(&mut [u8])) -> Vec<u8> {
        let mut b = self.bytes.clone();
        let r = self.tok_range();
        f(&mut b[r]);
        reseal_tok(&mut b);
        b
    }
}

/// Where [`Parts::pack_with_gap`] leaves [`GAP`] extra bytes that the packed
/// layout does not allow.
#[derive(Clone, Copy, PartialEq)]
enum Gap {
    None,
    BeforeTokenizer,
    BeforeData,
    /// Before the data of the tensor at this directory index.
    BeforeTensor(usize),
    /// After the last tensor's padded end (inside the data section).
    AfterData,
}

const GAP: u64 = ALIGN as u64;

/// A file taken apart, to be laid out again by [`Parts::pack`]: corruptions
/// that add, drop or reorder tensors go through here so that every offset,
/// size and checksum stays consistent and only the intended fault remains.
struct Parts {
    header: Header,
    config: ModelConfig,
    /// Directory entries with their data, in directory order (each entry's
    /// checksum is its data's).
    tensors: Vec<(DirEntry, Vec<u8>)>,
    tokenizer: Option<Vec<u8>>,
}

impl Parts {
    fn of(b: &[u8]) -> Parts {
        let header = header(b);
        let tensors = (0..header.n_tensors as usize)
            .map(|i| {
                let e = entry(b, i);
                (e, b[e.offset as usize..(e.offset + e.size) as usize].to_vec())
            })
            .collect();
        let tokenizer = (header.tok_size != 0)
            .then(|| b[header.tok_offset as usize..(header.tok_offset + header.tok_size) as usize].to_vec());
        Parts { header, config: rd(b, CONFIG_AT), tensors, tokenizer }
    }

    /// The packed layout the format requires (each section and tensor at the
    /// next 64-byte boundary, the file ending at the last tensor's padded
    /// end), with every offset, size and checksum recomputed.
    fn pack(&self) -> Vec<u8> {
        self.pack_with_gap(Gap::None)
    }

    /// [`Parts::pack`], with [`GAP`] zero bytes inserted at `gap`; every
    /// other field stays consistent (file_size and data_size included).
    fn pack_with_gap(&self, gap: Gap) -> Vec<u8> {
        let align = |n: u64| n.div_ceil(ALIGN as u64) * ALIGN as u64;
        let extra = |g: Gap| if gap == g { GAP } else { 0 };
        let mut h = self.header;
        h.n_tensors = self.tensors.len() as u32;
        let mut cursor = (DIR_AT + self.tensors.len() * DIR_ENTRY_SIZE) as u64;
        match &self.tokenizer {
            Some(t) => {
                h.tok_offset = align(cursor) + extra(Gap::BeforeTokenizer);
                h.tok_size = t.len() as u64;
                h.tok_crc = checksum(t);
                cursor = h.tok_offset + h.tok_size;
            }
            None => (h.tok_offset, h.tok_size, h.tok_crc) = (0, 0, 0),
        }
        h.data_offset = align(cursor) + extra(Gap::BeforeData);
        cursor = h.data_offset;
        let mut entries = Vec::new();
        for (i, (e, data)) in self.tensors.iter().enumerate() {
            let mut e = *e;
            e.offset = cursor + extra(Gap::BeforeTensor(i));
            e.size = data.len() as u64;
            // `e.crc` is the entry's own: [`Parts`] moves, drops or adds
            // whole tensors, it never edits their data.
            cursor = align(e.offset + e.size);
            entries.push(e);
        }
        cursor += extra(Gap::AfterData);
        h.data_size = cursor - h.data_offset;
        h.file_size = cursor;
        let mut b = vec![0u8; cursor as usize];
        b[..HEADER_SIZE].copy_from_slice(bytemuck::bytes_of(&h));
        b[CONFIG_AT..DIR_AT].copy_from_slice(bytemuck::bytes_of(&self.config));
        for (i, e) in entries.iter().enumerate() {
            edit_entry(&mut b, i, |x| *x = *e);
        }
        if let Some(t) = &self.tokenizer {
            b[h.tok_offset as usize..][..t.len()].copy_from_slice(t);
        }
        for (e, (_, data)) in entries.iter().zip(&self.tensors) {
            b[e.offset as usize..][..data.len()].copy_from_slice(data);
        }
        reseal_meta(&mut b);
        b
    }
}

#[test]
fn repacking_a_valid_file_reproduces_it() {
    // The helper the layout corruptions rely on lays out exactly as the writer does.
    let tied = build(tied_config(), Mix::Cycle, None, 3);
    let odd = build(odd_config(), Mix::Cycle, None, 6);
    for fx in [small(), with_tok(), tied, odd] {
        assert!(Parts::of(&fx.bytes).pack() == fx.bytes);
    }
}

fn tok_header(section: &[u8]) -> TokenizerHeader {
    rd(section, 0)
}

fn edit_tok_header(section: &mut [u8], f: impl FnOnce(&mut TokenizerHeader)) {
    edit(section, 0, f)
}

fn set_u32(section: &mut [u8], table_off: u32, index: usize, value: u32) {
    let at = table_off as usize + 4 * index;
    section[at..at + 4].copy_from_slice(&value.to_le_bytes());
}

fn get_u32(section: &[u8], table_off: u32, index: usize) -> u32 {
    rd(section, table_off as usize + 4 * index)
}

fn edit_merge(section: &mut [u8], index: usize, f: impl FnOnce(&mut Merge)) {
    let off = tok_header(section).merges_off as usize;
    edit(section, off + index * core::mem::size_of::<Merge>(), f)
}

/// Parses `bytes` (copied to aligned memory), expecting an error whose
/// message is non-empty.
#[track_caller]
fn parse_err(bytes: &[u8]) -> Error {
    let a = AlignedBytes::new(bytes);
    let e = match File::parse(&a) {
        Ok(_) => panic!("corrupted file parsed"),
        Err(e) => e,
    };
    assert!(!e.to_string().is_empty(), "empty Display for {e:?}");
    e
}

macro_rules! assert_err {
    ($bytes:expr, $($pat:tt)+) => {{
        let e = parse_err(&$bytes);
        assert!(matches!(e, $($pat)+), "expected `{}`, got {e:?}", stringify!($($pat)+));
        e
    }};
}

// ---------------------------------------------------------------------------
// Valid files.

/// Checks everything a parsed file should say about a fixture.
fn check_fixture(fx: &Fixture) {
    let a = fx.aligned();
    let file = File::parse(&a).expect("valid file parses");
    assert_eq!(*file.config(), fx.config);
    assert_eq!(file.n_tensors(), fx.specs.len());
    assert_eq!(file.bytes().len(), fx.bytes.len());
    let h = file.header();
    assert_eq!(h.version, VERSION);
    assert_eq!(h.endian, ENDIAN_CHECK);
    assert_eq!(h.file_size as usize, fx.bytes.len());
    assert_eq!(h.n_tensors as usize, fx.specs.len());
    assert_eq!(h.data_offset % ALIGN as u64, 0);
    for (i, (spec, data)) in fx.specs.iter().zip(&fx.data).enumerate() {
        let t = file.tensor(spec.role).expect("tensor by role");
        assert_eq!(t.index as usize, i);
        assert_eq!(t.role, spec.role);
        assert_eq!(t.dtype, spec.dtype, "{}", spec.role);
        assert_eq!([t.rows, t.cols], spec.shape, "{}", spec.role);
        assert_eq!(t.len(), (spec.shape[0] * spec.shape[1]) as usize);
        assert!(!t.is_empty());
        assert_eq!(t.data.len() as u64, spec.dtype.tensor_bytes(spec.shape[0] as u64, spec.shape[1] as u64).unwrap());
        assert_eq!(t.data, &data[..], "{} data", spec.role);
        assert_eq!(t.data.as_ptr() as usize % ALIGN, 0, "{} data aligned", spec.role);
        // The stored checksum is the data's: `verify` recomputes it (under
        // Miri only that, checksumming being much of the run time there).
        if !cfg!(miri) {
            assert_eq!(t.crc, checksum(data));
        }
        t.verify().expect("tensor verifies");
        let at = file.tensor_at(i).expect("tensor by index");
        assert_eq!((at.index, at.role, at.data.as_ptr()), (t.index, t.role, t.data.as_ptr()));
        match spec.dtype {
            DType::F32 => {
                let v = t.as_f32().expect("f32 view");
                assert_eq!(v.len(), t.len());
                assert!(v.iter().all(|x| x.is_finite()));
                assert_eq!(bytemuck::cast_slice::<f32, u8>(v), &data[..]);
                assert!(t.as_f16().is_none() && t.quant_planes().is_none());
            }
            DType::F16 => {
                let v = t.as_f16().expect("f16 view");
                assert_eq!(v.len(), t.len());
                assert!(v.iter().all(|x| x.is_finite()));
                assert!(t.as_f32().is_none() && t.quant_planes().is_none());
            }
            DType::Q4A => {
                assert!(t.as_f32().is_none() && t.as_f16().is_none());
                let (qs, scales) = t.quant_planes().expect("quant planes");
                let mins = t.mins().expect("mins plane");
                let (rows, cols) = (t.rows as usize, t.cols as usize);
                let groups = cols.div_ceil(GROUP);
                let padded = quant::padded_rows(rows);
                assert_eq!(qs.len(), padded * groups * quant::Q4_GROUP_BYTES);
                assert_eq!(qs.len(), quant::scales_offset(spec.dtype, rows, cols));
                assert_eq!((scales.len(), mins.len()), (padded * groups, padded * groups));
                assert_eq!(quant::mins_offset(rows, cols), qs.len() + 2 * padded * groups);
                assert_eq!(qs, &data[..qs.len()]);
                assert_eq!(bytemuck::cast_slice::<f16, u8>(scales), &data[qs.len()..quant::mins_offset(rows, cols)]);
                assert_eq!(bytemuck::cast_slice::<f16, u8>(mins), &data[quant::mins_offset(rows, cols)..]);
                // Back to logical rows.
                let gq = quant::Q4_GROUP_BYTES;
                let mut logical = vec![0u8; padded * groups * gq];
                let (mut ls, mut lm) = (vec![f16::ZERO; padded * groups], vec![f16::ZERO; padded * groups]);
                let mut scratch = vec![0u8; groups * gq];
                for r in 0..padded {
                    let row = &mut logical[r * groups * gq..(r + 1) * groups * gq];
                    quant::untile_row(spec.dtype, qs, scales, r, groups, row, &mut ls[r * groups..(r + 1) * groups]);
                    quant::untile_row(
                        spec.dtype,
                        qs,
                        mins,
                        r,
                        groups,
                        &mut scratch,
                        &mut lm[r * groups..(r + 1) * groups],
                    );
                }
                assert!(ls[..rows * groups].iter().all(|s| s.is_finite() && s.to_f32() > 0.0));
                assert!(lm[..rows * groups].iter().all(|m| m.is_finite() && m.to_f32() <= 0.0));
                assert!(ls[rows * groups..].iter().chain(&lm[rows * groups..]).all(|s| s.to_bits() == 0));
                assert!(logical[rows * groups * gq..].iter().all(|&b| b == 0));
                if cols % GROUP != 0 {
                    for r in 0..rows {
                        let last = &logical[(r * groups + groups - 1) * gq..][..gq];
                        for j in cols % GROUP..GROUP {
                            assert_eq!(quant::q4a_get(last, j), 0, "{} row {r} pad {j}", spec.role);
                        }
                    }
                }
            }
            DType::Q8 | DType::Q4 => {
                assert!(t.mins().is_none());
                assert!(t.as_f32().is_none() && t.as_f16().is_none());
                let (qs, scales) = t.quant_planes().expect("quant planes");
                let (rows, cols) = (t.rows as usize, t.cols as usize);
                let groups = cols.div_ceil(GROUP);
                let gq = if spec.dtype == DType::Q8 { quant::Q8_GROUP_BYTES } else { quant::Q4_GROUP_BYTES };
                let padded = quant::padded_rows(rows);
                assert_eq!(qs.len(), padded * groups * gq);
                assert_eq!(qs.len(), quant::scales_offset(spec.dtype, rows, cols));
                assert_eq!(scales.len(), padded * groups);
                assert_eq!(qs, &data[..qs.len()]);
                assert_eq!(bytemuck::cast_slice::<f16, u8>(scales), &data[qs.len()..]);
                // Back to logical rows: real rows have positive scales,
                // padding rows zero quants and zero scales.
                let mut logical = vec![0u8; padded * groups * gq];
                let mut lscales = vec![f16::ZERO; padded * groups];
                for r in 0..padded {
                    quant::untile_row(
                        spec.dtype,
                        qs,
                        scales,
                        r,
                        groups,
                        &mut logical[r * groups * gq..(r + 1) * groups * gq],
                        &mut lscales[r * groups..(r + 1) * groups],
                    );
                }
                assert!(lscales[..rows * groups].iter().all(|s| s.is_finite() && s.to_f32() > 0.0));
                assert!(lscales[rows * groups..].iter().all(|s| s.to_bits() == 0));
                let zero = if spec.dtype == DType::Q8 { 0u8 } else { 0x88 };
                assert!(logical[rows * groups * gq..].iter().all(|&b| b == zero));
                let qs = &logical[..];
                // Padding of a partial last group holds zero quants.
                if cols % GROUP != 0 {
                    for r in 0..rows {
                        let row = &qs[r * groups * gq..(r + 1) * groups * gq];
                        let last = &row[(groups - 1) * gq..];
                        for j in cols % GROUP..GROUP {
                            let q = if spec.dtype == DType::Q8 { last[j] as i8 } else { quant::q4_get(last, j) };
                            assert_eq!(q, 0, "{} row {r} pad {j}", spec.role);
                        }
                    }
                }
            }
            other => panic!("no fixture has {}", other.name()),
        }
    }
    // Output resolves to the embedding exactly when tied.
    let out = file.tensor(Role::Output).expect("output");
    let emb = file.tensor(Role::Embedding).expect("embedding");
    if fx.config.flags & ModelConfig::FLAG_TIED_EMBEDDINGS != 0 {
        assert_eq!(out.index, emb.index);
        assert_eq!(out.role, Role::Embedding);
        assert!(fx.specs.iter().all(|s| s.role != Role::Output));
    } else {
        assert_eq!(out.role, Role::Output);
        assert_ne!(out.index, emb.index);
    }
    file.verify_tensors().expect("tensors verify");
    assert_eq!(file.tokenizer().is_some(), fx.tokenizer.is_some());
}

#[test]
fn valid_llama_with_every_dtype_parses() {
    let fx = small();
    let dtypes: Vec<DType> = fx.specs.iter().map(|s| s.dtype).collect();
    for d in CYCLE {
        assert!(dtypes.contains(&d), "fixture lacks {}", d.name());
    }
    check_fixture(&fx);
}

#[test]
fn valid_files_of_one_dtype_parse() {
    // Under Miri every other dtype (f32, q8, q4a: each kind of plane).
    for (i, d) in CYCLE.into_iter().enumerate().step_by(by_target(1, 2)) {
        check_fixture(&build(llama_config(), Mix::All(d), None, 10 + i as u64));
    }
}

#[test]
fn valid_tied_output_resolves_to_embedding() {
    let fx = build(tied_config(), Mix::Cycle, None, 3);
    assert!(!fx.specs.iter().any(|s| s.role == Role::Output));
    check_fixture(&fx);
}

#[test]
fn valid_qwen2_with_biases() {
    let fx = build(qwen2_config(), Mix::Cycle, None, 4);
    assert!(fx.specs.iter().any(|s| s.role == Role::Layer(1, LayerRole::AttnVBias)));
    check_fixture(&fx);
    let a = fx.aligned();
    let file = File::parse(&a).unwrap();
    let kb = file.tensor(Role::Layer(0, LayerRole::AttnKBias)).unwrap();
    assert_eq!((kb.rows, kb.cols, kb.dtype), (2 * HEAD_DIM, 1, DType::F32));
}

/// A q4a tensor read with the size of a q4 one (its mins plane missing)
/// or of a larger type is refused: the size follows the type exactly.
#[test]
fn err_q4a_tensor_size_follows_its_type() {
    let fx = build(llama_config(), Mix::All(DType::Q4A), None, 21);
    check_fixture(&fx);
    let i = fx.index_of(Role::Layer(0, LayerRole::AttnQ));
    let entry = fx.specs[i];
    let [rows, cols] = [entry.shape[0] as u64, entry.shape[1] as u64];
    let q4a = DType::Q4A.tensor_bytes(rows, cols).unwrap();
    assert_eq!(q4a, rows * cols.div_ceil(32) * 20);
    // Another type id on the same bytes: the size no longer matches.
    for other in [DType::Q4, DType::Q8] {
        let b = fx.mutated(|b| edit_entry(b, i, |e| e.dtype = other as u32));
        let want = other.tensor_bytes(rows, cols).unwrap();
        assert_err!(b, Error::BadLayout { what: "tensor size", found, expected } if found == q4a && expected == want);
    }
}

#[test]
fn valid_odd_widths_pad_quantized_rows() {
    // Under Miri q4a only (its planes are the q4 ones plus the mins).
    for d in [DType::Q8, DType::Q4, DType::Q4A].into_iter().skip(by_target(0, 2)) {
        let fx = build(odd_config(), Mix::All(d), None, 5);
        check_fixture(&fx);
        let a = fx.aligned();
        let file = File::parse(&a).unwrap();
        let down = file.tensor(Role::Layer(0, LayerRole::FfnDown)).unwrap();
        assert_eq!([down.rows, down.cols], [ODD_D, ODD_FFN]);
        let gb = match d {
            DType::Q8 => 34,
            DType::Q4 => 18,
            _ => 20,
        };
        assert_eq!(down.data.len(), ODD_D as usize * ODD_FFN_GROUPS * gb); // 100 cols -> 4 groups
        let q = file.tensor(Role::Layer(1, LayerRole::AttnQ)).unwrap();
        assert_eq!(q.data.len(), 48 * 2 * gb); // 48 (40) cols -> 2 groups
    }
    check_fixture(&build(odd_config(), Mix::Cycle, None, 6));
}

#[test]
fn valid_mistral_sliding_window() {
    let mut c = llama_config();
    c.arch = Arch::Mistral as u32;
    c.flags |= ModelConfig::FLAG_SLIDING_WINDOW;
    c.sliding_window = 128;
    let fx = build(c, Mix::Cycle, None, 7);
    check_fixture(&fx);
    let a = fx.aligned();
    let file = File::parse(&a).unwrap();
    assert_eq!(file.config().sliding_window(), Some(128));
    assert_eq!(file.config().arch().unwrap(), Arch::Mistral);
}

#[test]
fn valid_tokenizer_lookups() {
    let fx = with_tok();
    check_fixture(&fx);
    let a = fx.aligned();
    let file = File::parse(&a).unwrap();
    assert_eq!(file.config().rope_scaling().unwrap(), ferrite_format::RopeScaling::Llama3);
    let tok = file.tokenizer().expect("tokenizer");
    assert_eq!(tok.kind(), TokenizerKind::ByteLevelBpe);
    assert_eq!(tok.pretokenizer(), PreTokenizer::Gpt2);
    assert_eq!(tok.n_tokens(), 261);
    assert_eq!(tok.n_merges(), 4);
    for b in 0..=255u8 {
        assert_eq!(tok.byte_token(b), Some(b as u32));
        assert_eq!(tok.find(&[b]), Some(b as u32));
        assert_eq!(tok.token_bytes(b as u32), Some(&[b][..]));
    }
    for (s, id) in [("he", HE), ("ll", LL), ("hell", HELL), ("hello", HELLO), ("<|eot|>", EOT)] {
        assert_eq!(tok.find(s.as_bytes()), Some(id), "{s}");
        assert_eq!(tok.token_bytes(id), Some(s.as_bytes()));
    }
    for missing in [&b""[..], b"hel", b"helloo", b"<|eot|", b"zz"] {
        assert_eq!(tok.find(missing), None);
    }
    assert_eq!(tok.merge(b'h' as u32, b'e' as u32), Some((0, HE)));
    assert_eq!(tok.merge(b'l' as u32, b'l' as u32), Some((1, LL)));
    assert_eq!(tok.merge(HE, LL), Some((2, HELL)));
    assert_eq!(tok.merge(HELL, b'o' as u32), Some((3, HELLO)));
    assert_eq!(tok.merge(b'e' as u32, b'h' as u32), None);
    assert_eq!(tok.merge(HELLO, HELLO), None);
    assert_eq!(tok.specials(), &[EOT]);
    assert_eq!(tok.token_type(EOT), Some(TokenType::Special));
    assert_eq!(tok.token_type(HE), Some(TokenType::Normal));
    assert_eq!(tok.token_type(261), None);
    assert_eq!(tok.token_bytes(261), None);
    assert_eq!(tok.chat_template(), TEMPLATE.as_bytes());
    assert_eq!(tok.eot(), Some(EOT));
    assert_eq!(tok.unk(), None);
    assert_eq!(tok.score(0), None);
    assert!(!tok.byte_fallback() && !tok.add_prefix_space());
    assert!(file.config().is_stop(EOT));
}

#[test]
fn valid_tokenizer_with_scores_and_missing_byte() {
    let mut t = tokenizer_builder();
    t.has_scores = true;
    t.unk = Some(0);
    for (i, tok) in t.tokens.iter_mut().enumerate() {
        tok.score = -(i as f32);
    }
    t.byte_tokens[0xFF] = NO_TOKEN;
    t.chat_template = None;
    let fx = build(tok_config(), Mix::All(DType::Q4), Some(t), 8);
    check_fixture(&fx);
    let a = fx.aligned();
    let file = File::parse(&a).unwrap();
    let tok = file.tokenizer().unwrap();
    assert_eq!(tok.score(HELLO), Some(-(HELLO as f32)));
    assert_eq!(tok.byte_token(0xFF), None);
    assert_eq!(tok.unk(), Some(0));
    assert!(tok.chat_template().is_empty());
}

// ---------------------------------------------------------------------------
// One test per error variant.

#[test]
fn err_truncated() {
    let fx = with_tok();
    for len in [0, 1, 64, HEADER_SIZE - 1] {
        assert_err!(fx.bytes[..len], Error::Truncated { what: "header", needed: 128, available } if available == len as u64);
    }
    let n = fx.bytes.len();
    for len in [HEADER_SIZE, DIR_AT, n / 2, n - 1] {
        assert_err!(fx.bytes[..len], Error::Truncated { needed, available, .. } if needed == n as u64 && available == len as u64);
    }
    // A tokenizer section shorter than its own header.
    let b = fx.mutated(|b| {
        edit_header(b, |h| h.tok_size = 64);
        reseal_tok(b);
    });
    assert_err!(b, Error::Truncated { what: "tokenizer header", needed: 96, available: 64 });
}

#[test]
fn err_bad_magic() {
    let fx = small();
    let mut b = fx.bytes.clone();
    b[7] = 1;
    assert_err!(b, Error::BadMagic);
    let mut b = fx.bytes.clone();
    b[..8].copy_from_slice(b"GGUF\0\0\0\0");
    assert_err!(b, Error::BadMagic);
    // Still a bad magic with every later check satisfied.
    let b = fx.mutated(|b| b[0] = b'f');
    assert_err!(b, Error::BadMagic);
}

#[test]
fn err_bad_endianness() {
    let fx = small();
    let swapped = ENDIAN_CHECK.swap_bytes();
    let b = fx.mutated(|b| edit_header(b, |h| h.endian = swapped));
    let e = assert_err!(b, Error::BadEndianness { found } if found == swapped);
    assert!(e.to_string().contains("endian"));
    let b = fx.mutated(|b| edit_header(b, |h| h.endian = 0));
    assert_err!(b, Error::BadEndianness { found: 0 });
}

#[test]
fn err_unsupported_version() {
    let fx = small();
    let b = fx.mutated(|b| edit_header(b, |h| h.version = VERSION + 1));
    let e = assert_err!(b, Error::UnsupportedVersion { found, supported: VERSION } if found == VERSION + 1);
    assert!(e.to_string().contains("newer"));
    let b = fx.mutated(|b| edit_header(b, |h| h.version = 0));
    let e = assert_err!(b, Error::UnsupportedVersion { found: 0, supported: VERSION });
    assert!(e.to_string().contains("older"));
    let b = fx.mutated(|b| edit_header(b, |h| h.version = u32::MAX));
    assert_err!(b, Error::UnsupportedVersion { found: u32::MAX, .. });
}

#[test]
fn err_misaligned() {
    let fx = with_tok();
    // The buffer start, off by 1..63 bytes.
    for pad in [1usize, 2, 4, 8, 32, 63] {
        let mut v = vec![0u8; pad];
        v.extend_from_slice(&fx.bytes);
        let a = AlignedBytes::new(&v);
        let slice = &a[pad..];
        let e = File::parse(slice).unwrap_err();
        assert!(!e.to_string().is_empty());
        assert!(
            matches!(e, Error::Misaligned { what: "model buffer start", address, required: 64 }
                if address == slice.as_ptr() as usize),
            "{e:?}"
        );
    }
    // A tensor offset that is not a multiple of 64 is no longer `Misaligned`:
    // tensors are packed, so any offset past the next 64-byte boundary after
    // the previous tensor is a layout error.
    let i = fx.index_of(Role::Layer(0, LayerRole::AttnQ));
    let at = entry(&fx.bytes, i).offset;
    let b = fx.mutated(|b| edit_entry(b, i, |e| e.offset += 4));
    assert_err!(b, Error::BadLayout { what: "tensor offset", found, expected } if found == at + 4 && expected == at);
    // A tokenizer table off its element alignment.
    let b = fx.mutated_tok(|s| edit_tok_header(s, |t| t.sorted_off += 1));
    assert_err!(b, Error::Misaligned { what: "tokenizer sorted ids", required: 4, .. });
}

#[test]
fn err_bad_layout() {
    let fx = with_tok();
    let h = fx.header();
    type Edit = fn(&mut Header);
    let cases: [(&str, Edit); 8] = [
        ("header_size", |h| h.header_size = 256),
        ("config_size", |h| h.config_size = 255),
        ("dir_entry_size", |h| h.dir_entry_size = 32),
        ("config_offset", |h| h.config_offset = 0),
        ("dir_offset", |h| h.dir_offset += 64),
        ("group_size", |h| h.group_size = 64),
        ("tok_offset", |h| h.tok_offset += 1),
        ("data_offset", |h| h.data_offset -= 64),
    ];
    for (what, f) in cases {
        let b = fx.mutated(|b| edit_header(b, f));
        assert_err!(b, Error::BadLayout { what: w, .. } if w == what);
    }
    // tok_offset before the end of the directory.
    let b = fx.mutated(|b| edit_header(b, |h| h.tok_offset -= 64));
    assert_err!(b, Error::BadLayout { what: "tok_offset", .. });
    // data_offset not aligned.
    let b = fx.mutated(|b| edit_header(b, |h| h.data_offset += 8));
    assert_err!(b, Error::BadLayout { what: "data_offset", .. });
    // The buffer is longer than file_size.
    let mut b = fx.bytes.clone();
    b.extend_from_slice(&[0; 64]);
    let n = fx.bytes.len() as u64;
    assert_err!(b, Error::BadLayout { what: "file_size", found, expected } if found == n && expected == n + 64);
    // A tensor whose size field disagrees with its shape and type.
    let b = fx.mutated(|b| edit_entry(b, 0, |e| e.size -= 4));
    assert_err!(b, Error::BadLayout { what: "tensor size", .. });
    // Tokenizer section_size disagreeing with tok_size.
    let b = fx.mutated_tok(|s| edit_tok_header(s, |t| t.section_size += 4));
    assert_err!(b, Error::BadLayout { what: "tokenizer section_size", found, expected }
        if found == h.tok_size + 4 && expected == h.tok_size);
    // A file without a tokenizer may not name an offset or checksum for one.
    let plain = small();
    let b = plain.mutated(|b| edit_header(b, |h| h.tok_offset = 448));
    assert_err!(b, Error::BadLayout { what: "tok_offset (no tokenizer)", .. });
    let b = plain.mutated(|b| edit_header(b, |h| h.tok_crc = 1));
    assert_err!(b, Error::BadLayout { what: "tok_crc (no tokenizer)", .. });
}

#[test]
fn err_out_of_bounds() {
    let fx = with_tok();
    let n = fx.bytes.len() as u64;
    // A directory that runs past the file (checked before the checksum).
    let b = fx.mutated(|b| edit_header(b, |h| h.n_tensors = 100_000));
    assert_err!(b, Error::OutOfBounds { what: "directory", offset: 384, len: 6_400_000, limit } if limit == n);
    let b = fx.mutated(|b| edit_header(b, |h| h.tok_size = n));
    assert_err!(b, Error::OutOfBounds { what: "tokenizer section", .. });
    let b = fx.mutated(|b| edit_header(b, |h| h.data_size += 64));
    assert_err!(b, Error::OutOfBounds { what: "data section", limit, .. } if limit == n);
    // A data section that is not the rest of the file is a layout error now.
    let b = fx.mutated(|b| edit_header(b, |h| h.data_size -= 128));
    assert_err!(b, Error::BadLayout { what: "data_size", found, expected } if found == n - 128 && expected == n);
    // A data section too short for its last tensor: the file cut inside that
    // tensor, with file_size and data_size patched to match.
    let last = fx.specs.len() - 1;
    let e = entry(&fx.bytes, last);
    for len in [e.offset + e.size - 1, e.offset + 1, e.offset] {
        let mut b = fx.bytes[..len as usize].to_vec();
        edit_header(&mut b, |h| {
            h.file_size = len;
            h.data_size = len - h.data_offset;
        });
        reseal_meta(&mut b);
        assert_err!(b, Error::OutOfBounds { what: "tensor data", offset, len: l, limit }
            if offset == e.offset && l == e.size && limit == len);
    }
    // Tokenizer tables past the section or over its header.
    let b = fx.mutated_tok(|s| edit_tok_header(s, |t| t.strings_len += 100_000));
    assert_err!(b, Error::OutOfBounds { what: "tokenizer strings", .. });
    let b = fx.mutated_tok(|s| edit_tok_header(s, |t| t.merges_off = 0));
    assert_err!(b, Error::OutOfBounds { what: "tokenizer merges", offset: 0, .. });
    let b = fx.mutated_tok(|s| edit_tok_header(s, |t| t.template_off = u32::MAX - 3));
    assert_err!(b, Error::OutOfBounds { what: "chat template", .. });
}

#[test]
fn err_overflow() {
    let fx = with_tok();
    let b = fx.mutated(|b| edit_header(b, |h| h.tok_size = u64::MAX));
    assert_err!(b, Error::Overflow { what: "tokenizer section" });
    let b = fx.mutated(|b| edit_header(b, |h| h.data_size = u64::MAX - 63));
    assert_err!(b, Error::Overflow { what: "data section" });
    // Exactly at the boundary: offset + size = 2^64 overflows, 2^64 - 1 does not.
    let h = fx.header();
    let b = fx.mutated(|b| edit_header(b, |h| h.tok_size = u64::MAX - h.tok_offset + 1));
    assert_err!(b, Error::Overflow { what: "tokenizer section" });
    let b = fx.mutated(|b| edit_header(b, |h| h.tok_size = u64::MAX - h.tok_offset));
    assert_err!(b, Error::OutOfBounds { what: "tokenizer section", offset, .. } if offset == h.tok_offset);
    let b = fx.mutated(|b| edit_header(b, |h| h.data_size = u64::MAX - h.data_offset + 1));
    assert_err!(b, Error::Overflow { what: "data section" });
    let b = fx.mutated(|b| edit_header(b, |h| h.data_size = u64::MAX - h.data_offset));
    assert_err!(b, Error::OutOfBounds { what: "data section", offset, .. } if offset == h.data_offset);
    // A hostile tensor offset can no longer overflow "tensor end": an offset
    // must equal the packed position (at most the file size), so it is
    // rejected as a layout error first; sizes are bounded by the config.
    let last = fx.specs.len() - 1;
    let at = entry(&fx.bytes, last).offset;
    let b = fx.mutated(|b| edit_entry(b, last, |e| e.offset = !63u64));
    assert_err!(b, Error::BadLayout { what: "tensor offset", found, expected } if found == !63u64 && expected == at);
}

#[test]
fn err_meta_checksum() {
    let fx = with_tok();
    let stored = fx.header().meta_crc;
    // Config, directory, and the checksum field itself.
    for at in [CONFIG_AT + 8, CONFIG_AT + 200, DIR_AT, fx.dir_end() - 1, META_CRC_AT] {
        let mut b = fx.bytes.clone();
        b[at] ^= 0x10;
        let e = assert_err!(b, Error::MetaChecksum { .. });
        if let Error::MetaChecksum { stored: s, computed } = e {
            assert_ne!(s, computed);
            if at != META_CRC_AT {
                assert_eq!(s, stored);
            }
        }
    }
    // A header field with no structural check of its own (tok_crc is checked
    // against the section only after the meta checksum).
    let mut b = fx.bytes.clone();
    b[TOK_CRC_AT] ^= 1;
    assert_err!(b, Error::MetaChecksum { stored: s, .. } if s == stored);
}

#[test]
fn err_tokenizer_checksum() {
    let fx = with_tok();
    let stored = fx.header().tok_crc;
    let r = fx.tok_range();
    for at in [r.start, r.start + 200, r.end - 1] {
        let mut b = fx.bytes.clone();
        b[at] ^= 0x01;
        assert_err!(b, Error::TokenizerChecksum { stored: s, computed } if s == stored && computed != s);
    }
}

#[test]
fn err_tensor_checksum() {
    let fx = with_tok();
    for (role, at) in [
        (Role::Embedding, 0usize),
        (Role::Layer(0, LayerRole::AttnK), 5),
        (Role::Layer(1, LayerRole::FfnNorm), 17),
        (Role::Layer(1, LayerRole::FfnDown), usize::MAX), // last byte: a scale
    ] {
        let i = fx.index_of(role);
        let e = entry(&fx.bytes, i);
        let off = at.min(e.size as usize - 1);
        let mut b = fx.bytes.clone();
        b[e.offset as usize + off] ^= 0x40;
        let a = AlignedBytes::new(&b);
        let file = File::parse(&a).expect("a data flip still parses");
        let err = file.verify_tensors().unwrap_err();
        assert!(!err.to_string().is_empty());
        assert!(
            matches!(err, Error::TensorChecksum { index, stored, computed }
                if index as usize == i && stored == e.crc && computed != stored),
            "{role}: {err:?}"
        );
        let err = file.tensor(role).unwrap().verify().unwrap_err();
        assert!(matches!(err, Error::TensorChecksum { index, .. } if index as usize == i));
        // Other tensors still verify.
        for j in (0..file.n_tensors()).filter(|&j| j != i) {
            file.tensor_at(j).unwrap().verify().unwrap();
        }
    }
    // A wrong stored checksum (directory resealed) is found the same way.
    let b = small().mutated(|b| edit_entry(b, 3, |e| e.crc ^= 1));
    let a = AlignedBytes::new(&b);
    let file = File::parse(&a).unwrap();
    assert!(matches!(file.verify_tensors(), Err(Error::TensorChecksum { index: 3, .. })));
}

#[test]
fn err_bad_enum() {
    let fx = with_tok();
    let q = fx.index_of(Role::Layer(0, LayerRole::AttnQ));
    let l1 = fx.index_of(Role::Layer(1, LayerRole::AttnNorm));
    // Directory fields.
    for v in [10, 255, u32::MAX] {
        let b = fx.mutated(|b| edit_entry(b, q, |e| e.dtype = v));
        assert_err!(b, Error::BadEnum { what: "tensor dtype", value } if value == v);
    }
    for kind in [3, 15, 28, u32::MAX] {
        let b = fx.mutated(|b| edit_entry(b, q, |e| e.kind = kind));
        assert_err!(b, Error::BadEnum { what: "tensor role", value } if value == kind);
    }
    let b = fx.mutated(|b| edit_entry(b, 1, |e| e.layer = 1)); // OutputNorm in layer 1
    assert_err!(b, Error::BadEnum { what: "global role layer", value: 1 });
    let b = fx.mutated(|b| edit_entry(b, l1, |e| e.layer = 2)); // only 2 layers
    assert_err!(b, Error::BadEnum { what: "tensor layer", value: 2 });
    // Config fields.
    type Edit = fn(&mut ModelConfig);
    let cases: [(&str, u32, Edit); 6] = [
        ("architecture", 0, |c| c.arch = 0),
        ("architecture", 4, |c| c.arch = 4),
        ("rope scaling", 3, |c| c.rope_scaling = 3),
        ("activation", 1, |c| c.activation = 1),
        ("config flags", 1 << 5, |c| c.flags = 1 << 5),
        ("config flags", u32::MAX, |c| c.flags = u32::MAX),
    ];
    for (what, value, f) in cases {
        let b = fx.mutated(|b| edit_config(b, f));
        assert_err!(b, Error::BadEnum { what: w, value: v } if w == what && v == value);
    }
    // Tokenizer header fields.
    type TokEdit = fn(&mut TokenizerHeader);
    let cases: [(&str, u32, TokEdit); 4] = [
        ("tokenizer kind", 0, |t| t.kind = 0),
        ("tokenizer kind", 3, |t| t.kind = 3),
        ("pre-tokenizer", 5, |t| t.pretokenizer = 5),
        ("tokenizer flags", 1 << 6, |t| t.flags |= 1 << 6),
    ];
    for (what, value, f) in cases {
        let b = fx.mutated_tok(|s| edit_tok_header(s, f));
        assert_err!(b, Error::BadEnum { what: w, value: v } if w == what && v & value == value);
    }
    // Through the API: a directory index past the end.
    let a = fx.aligned();
    let file = File::parse(&a).unwrap();
    let n = file.n_tensors();
    assert!(matches!(file.tensor_at(n), Err(Error::BadEnum { what: "tensor index", value }) if value as usize == n));
}

#[test]
fn err_bad_config() {
    let fx = small();
    type Edit = fn(&mut ModelConfig);
    /// Llama 3.1 RoPE scaling by 8 with these frequency factors and original
    /// context.
    fn llama3_rope(c: &mut ModelConfig, low_freq_factor: f32, high_freq_factor: f32, original_ctx: u32) {
        c.rope_scaling = 1;
        c.rope_factor = 8.0;
        c.rope_low_freq_factor = low_freq_factor;
        c.rope_high_freq_factor = high_freq_factor;
        c.rope_original_ctx = original_ctx;
    }
    let cases: Vec<(&str, Edit)> = vec![
        ("n_layers", |c| c.n_layers = 0),
        ("d_model", |c| c.d_model = 0),
        ("n_heads", |c| c.n_heads = 0),
        ("n_kv_heads", |c| c.n_kv_heads = 0),
        ("head_dim", |c| c.head_dim = 0),
        ("ffn_dim", |c| c.ffn_dim = 0),
        ("vocab_size", |c| c.vocab_size = 0),
        ("d_model", |c| c.d_model = (1 << 20) + 1),
        ("vocab_size", |c| c.vocab_size = u32::MAX),
        ("n_layers", |c| c.n_layers = 4097),
        ("n_kv_heads", |c| c.n_kv_heads = 3),
        ("n_kv_heads", |c| c.n_kv_heads = 8),
        ("head_dim", |c| c.head_dim = 15),
        ("n_heads * head_dim", |c| {
            c.n_heads = 1 << 10;
            c.head_dim = 1 << 11;
        }),
        ("rope_theta", |c| c.rope_theta = 1.0),
        ("rope_theta", |c| c.rope_theta = f32::NAN),
        ("rope_theta", |c| c.rope_theta = f32::INFINITY),
        ("norm_eps", |c| c.norm_eps = 0.0),
        ("norm_eps", |c| c.norm_eps = -1e-5),
        ("norm_eps", |c| c.norm_eps = f32::NAN),
        ("rope_factor", |c| {
            c.rope_scaling = 2;
            c.rope_factor = 0.0;
        }),
        ("rope_factor", |c| {
            c.rope_scaling = 1;
            c.rope_factor = f32::INFINITY;
        }),
        ("rope_low/high_freq_factor", |c| llama3_rope(c, 4.0, 1.0, 64)),
        ("rope_original_ctx", |c| llama3_rope(c, 1.0, 4.0, 0)),
        ("bos_id", |c| c.bos_id = 40),
        ("flags", |c| c.flags = ModelConfig::FLAG_ADD_BOS),
        ("sliding_window", |c| {
            c.flags |= ModelConfig::FLAG_SLIDING_WINDOW;
            c.sliding_window = 0;
        }),
        ("n_stop_ids", |c| c.n_stop_ids = 9),
        ("stop_ids", |c| {
            c.n_stop_ids = 2;
            c.stop_ids[1] = 40;
        }),
    ];
    for (what, f) in cases {
        let b = fx.mutated(|b| edit_config(b, f));
        let e = assert_err!(b, Error::BadConfig { what: w, .. } if w == what);
        assert!(e.to_string().contains(what), "{e}");
    }
    // The writer refuses the same configs.
    let mut c = llama_config();
    c.head_dim = 15;
    assert!(FileWriter::new(Cursor::new(Vec::new()), &c, None, &[]).is_err());
}

#[test]
fn err_bad_shape() {
    let fx = small();
    let q = fx.index_of(Role::Layer(1, LayerRole::AttnQ));
    let b = fx.mutated(|b| edit_entry(b, q, |e| e.rows += 1));
    let q_dim = 4 * HEAD_DIM;
    assert_err!(b, Error::BadShape { index, expected, found } if index as usize == q && expected == [q_dim, D] && found == [q_dim + 1, D]);
    // Transposed.
    let down = fx.index_of(Role::Layer(0, LayerRole::FfnDown));
    let b = fx.mutated(|b| edit_entry(b, down, |e| std::mem::swap(&mut e.rows, &mut e.cols)));
    assert_err!(b, Error::BadShape { expected: [D, FFN], found: [FFN, D], .. });
    // A vector recorded as a matrix.
    let b = fx.mutated(|b| edit_entry(b, 1, |e| e.n_dims = 2));
    assert_err!(b, Error::BadShape { index: 1, .. });
    let b = fx.mutated(|b| edit_entry(b, 0, |e| e.n_dims = 1));
    assert_err!(b, Error::BadShape { index: 0, .. });
    // The config changed under the tensors: the first tensor using ffn_dim.
    let gate = fx.index_of(Role::Layer(0, LayerRole::FfnGate));
    let b = fx.mutated(|b| edit_config(b, |c| c.ffn_dim = 128));
    assert_err!(b, Error::BadShape { index, expected: [128, D], found: [FFN, D] } if index as usize == gate);
    let b = fx.mutated(|b| edit_config(b, |c| c.vocab_size = 41));
    assert_err!(b, Error::BadShape { index: 0, expected: [41, D], found: [40, D] });
}

#[test]
fn err_bad_dtype() {
    let fx = build(qwen2_config(), Mix::Cycle, None, 20);
    for (role, dtype) in [
        (Role::OutputNorm, DType::F16),
        (Role::Layer(0, LayerRole::AttnNorm), DType::Q8),
        (Role::Layer(1, LayerRole::FfnNorm), DType::Q4),
        (Role::Layer(0, LayerRole::AttnQBias), DType::Q8),
        (Role::Layer(1, LayerRole::AttnVBias), DType::F16),
        (Role::Layer(1, LayerRole::AttnNorm), DType::Q4A),
        (Role::Layer(0, LayerRole::FfnNorm), DType::Q5_0),
        // K types on rows that are not whole super-blocks of 256.
        (Role::Layer(0, LayerRole::AttnQ), DType::Q4K),
        (Role::Layer(1, LayerRole::FfnUp), DType::Q5K),
        (Role::Layer(1, LayerRole::FfnDown), DType::Q6K),
    ] {
        let i = fx.index_of(role);
        let b = fx.mutated(|b| edit_entry(b, i, |e| e.dtype = dtype as u32));
        assert_err!(b, Error::BadDType { index, dtype: d } if index as usize == i && d == dtype as u32);
    }
}

#[test]
fn err_directory_order() {
    let fx = small();
    // OutputNorm and Output swapped, data and all (the file re-laid out, so
    // every offset is the packed one).
    let mut p = Parts::of(&fx.bytes);
    p.tensors.swap(1, 2);
    assert_err!(p.pack(), Error::DirectoryOrder { index: 2 });
    // The same in a file with a tokenizer, swapping two layer tensors.
    let tok = with_tok();
    let k = tok.index_of(Role::Layer(1, LayerRole::AttnK));
    let mut p = Parts::of(&tok.bytes);
    p.tensors.swap(k, k + 1);
    assert_err!(p.pack(), Error::DirectoryOrder { index } if index as usize == k + 1);
    // A role named twice (the second copy of layer 0's attn_norm).
    let b = fx.mutated(|b| {
        let first = entry(b, 3);
        edit_entry(b, 4, |e| {
            e.kind = first.kind;
            e.layer = first.layer;
        });
    });
    assert_err!(b, Error::DirectoryOrder { index: 4 });
    // Layer 1 before layer 0.
    let i = fx.index_of(Role::Layer(0, LayerRole::FfnDown));
    let b = fx.mutated(|b| edit_entry(b, i, |e| e.layer = 1));
    assert_err!(b, Error::DirectoryOrder { index } if index as usize == i + 1);
}

#[test]
fn err_missing_tensor() {
    let fx = small();
    // The directory one entry short: the last role is missing. The file is
    // re-laid out without that tensor (directory, data offsets, data_size,
    // file_size and checksums all consistent).
    let mut p = Parts::of(&fx.bytes);
    p.tensors.pop();
    assert_err!(p.pack(), Error::MissingTensor { kind: 27, layer: 1 });
    // A tensor missing from the middle, in a file with a tokenizer (which
    // moves up with the shorter directory).
    let tok = with_tok();
    for role in [Role::OutputNorm, Role::Layer(0, LayerRole::AttnK), Role::Layer(1, LayerRole::FfnUp)] {
        let mut p = Parts::of(&tok.bytes);
        p.tensors.remove(tok.index_of(role));
        let (kind, layer) = role.to_raw();
        assert_err!(p.pack(), Error::MissingTensor { kind: k, layer: l } if k == kind && l == layer);
    }
    // A config that requires more than the directory holds.
    let b = fx.mutated(|b| edit_config(b, |c| c.n_layers = 3));
    assert_err!(b, Error::MissingTensor { kind: 16, layer: 2 });
    let b = fx.mutated(|b| edit_config(b, |c| c.flags |= ModelConfig::FLAG_QKV_BIAS));
    assert_err!(b, Error::MissingTensor { kind: 21, layer: 0 });
    let tied = build(tied_config(), Mix::Cycle, None, 21);
    let b = tied.mutated(|b| edit_config(b, |c| c.flags &= !ModelConfig::FLAG_TIED_EMBEDDINGS));
    assert_err!(b, Error::MissingTensor { kind: 2, layer: 0 });
    // Through the API: a role that is not in the file.
    let a = fx.aligned();
    let file = File::parse(&a).unwrap();
    let e = file.tensor(Role::Layer(0, LayerRole::AttnQBias)).unwrap_err();
    assert!(matches!(e, Error::MissingTensor { kind: 21, layer: 0 }), "{e:?}");
    let e = file.tensor(Role::Layer(7, LayerRole::AttnQ)).unwrap_err();
    assert!(matches!(e, Error::MissingTensor { kind: 17, layer: 7 }), "{e:?}");
}

#[test]
fn err_unexpected_tensor() {
    let fx = small();
    // Tied config, but an output table is present.
    let b = fx.mutated(|b| edit_config(b, |c| c.flags |= ModelConfig::FLAG_TIED_EMBEDDINGS));
    assert_err!(b, Error::UnexpectedTensor { index: 2 });
    // Biases without the bias flag.
    let qwen = build(qwen2_config(), Mix::Cycle, None, 22);
    let first_bias = qwen.index_of(Role::Layer(0, LayerRole::AttnQBias));
    let b = qwen.mutated(|b| edit_config(b, |c| c.flags &= !ModelConfig::FLAG_QKV_BIAS));
    assert_err!(b, Error::UnexpectedTensor { index } if index as usize == first_bias);
}

#[test]
fn err_tensor_order() {
    let fx = small();
    // Overlapping the previous tensor.
    let b = fx.mutated(|b| {
        let prev = entry(b, 4).offset;
        edit_entry(b, 5, |e| e.offset = prev);
    });
    assert_err!(b, Error::TensorOrder { index: 5 });
    // Starting before the data section.
    let b = fx.mutated(|b| {
        let data = header(b).data_offset;
        edit_entry(b, 0, |e| e.offset = data - 64);
    });
    assert_err!(b, Error::TensorOrder { index: 0 });
    // Pointing back into an earlier tensor, or at the header.
    let b = fx.mutated(|b| {
        let earlier = entry(b, 2).offset;
        edit_entry(b, 6, |e| e.offset = earlier);
    });
    assert_err!(b, Error::TensorOrder { index: 6 });
    let b = fx.mutated(|b| edit_entry(b, 3, |e| e.offset = 0));
    assert_err!(b, Error::TensorOrder { index: 3 });
    // One byte short of the packed position (also misaligned): an overlap.
    let b = fx.mutated(|b| edit_entry(b, 5, |e| e.offset -= 1));
    assert_err!(b, Error::TensorOrder { index: 5 });
    // Data in reverse order of the directory: the first entry to deviate from
    // the packed layout points past its position, which is a layout error
    // (not `TensorOrder`, which is only an offset below the packed position).
    let (e3, e4) = (entry(&fx.bytes, 3), entry(&fx.bytes, 4));
    let b = fx.mutated(|b| {
        edit_entry(b, 3, |e| e.offset = e4.offset);
        edit_entry(b, 4, |e| e.offset = e3.offset);
    });
    assert_err!(b, Error::BadLayout { what: "tensor offset", found, expected }
        if found == e4.offset && expected == e3.offset);
}

// ---------------------------------------------------------------------------
// The packed layout and the config's unused fields.

#[test]
fn strict_gap_between_tensors() {
    for fx in [small(), with_tok()] {
        let p = Parts::of(&fx.bytes);
        // A 64-byte gap before a tensor (the first one included: it must start
        // at data_offset), with every later offset, data_size and file_size
        // moved to match. Still aligned, still in bounds: only the gap is wrong.
        for i in [0, 1, 4, fx.specs.len() - 1] {
            let e = entry(&fx.bytes, i);
            let b = p.pack_with_gap(Gap::BeforeTensor(i));
            assert_err!(b, Error::BadLayout { what: "tensor offset", found, expected }
                if found == e.offset + GAP && expected == e.offset);
        }
    }
}

#[test]
fn strict_gap_between_sections() {
    let fx = with_tok();
    let h = fx.header();
    let p = Parts::of(&fx.bytes);
    // Between the directory and the tokenizer.
    let b = p.pack_with_gap(Gap::BeforeTokenizer);
    assert_err!(b, Error::BadLayout { what: "tok_offset", found, expected }
        if found == h.tok_offset + GAP && expected == h.tok_offset);
    // Between the tokenizer and the data.
    let b = p.pack_with_gap(Gap::BeforeData);
    assert_err!(b, Error::BadLayout { what: "data_offset", found, expected }
        if found == h.data_offset + GAP && expected == h.data_offset);
    // Between the directory and the data, without a tokenizer.
    let plain = small();
    let d = plain.header().data_offset;
    let b = Parts::of(&plain.bytes).pack_with_gap(Gap::BeforeData);
    assert_err!(b, Error::BadLayout { what: "data_offset", found, expected } if found == d + GAP && expected == d);
}

#[test]
fn strict_trailing_bytes_after_data() {
    for fx in [small(), with_tok()] {
        let n = fx.bytes.len() as u64;
        // Counted in data_size and file_size: the data section runs past the
        // last tensor's padded end.
        let b = Parts::of(&fx.bytes).pack_with_gap(Gap::AfterData);
        assert_err!(b, Error::BadLayout { what: "data section end", found, expected }
            if found == n + GAP && expected == n);
        for extra in [1u64, 63, 64, 4096] {
            let mut b = fx.bytes.clone();
            b.resize((n + extra) as usize, 0);
            edit_header(&mut b, |h| {
                h.file_size += extra;
                h.data_size += extra;
            });
            reseal_meta(&mut b);
            assert_err!(b, Error::BadLayout { what: "data section end", found, expected }
                if found == n + extra && expected == n);
            // Counted in file_size only: the data section stops short of the file end.
            edit_header(&mut b, |h| h.data_size -= extra);
            reseal_meta(&mut b);
            assert_err!(b, Error::BadLayout { what: "data_size", found, expected }
                if found == n && expected == n + extra);
        }
    }
}

#[test]
fn strict_config_unused_fields() {
    let fx = small();
    type Edit = fn(&mut ModelConfig);
    let cases: [(&str, &str, Edit); 8] = [
        ("trained_ctx", "positive", |c| c.trained_ctx = 0),
        ("sliding_window", "flag is off", |c| c.sliding_window = 128),
        ("sliding_window", "flag is off", |c| c.sliding_window = u32::MAX),
        // BOS flags cleared, bos_id (1) left behind.
        ("bos_id", "flag is off", |c| c.flags &= !(ModelConfig::FLAG_HAS_BOS | ModelConfig::FLAG_ADD_BOS)),
        // Nonzero entries past n_stop_ids (1), valid ids or not.
        ("stop_ids", "unused", |c| c.stop_ids[1] = 3),
        ("stop_ids", "unused", |c| c.stop_ids[7] = u32::MAX),
        // n_stop_ids lowered, the old id left behind.
        ("stop_ids", "unused", |c| c.n_stop_ids = 0),
        ("stop_ids", "unused", |c| {
            c.n_stop_ids = 7;
            c.stop_ids = [2, 3, 4, 5, 6, 7, 8, 9];
        }),
    ];
    for (what, why, f) in cases {
        let b = fx.mutated(|b| edit_config(b, f));
        let e = assert_err!(b, Error::BadConfig { what: w, why: y } if w == what && y.contains(why));
        assert!(e.to_string().contains(what), "{e}");
        // The writer refuses the same config.
        let mut c = fx.config;
        f(&mut c);
        assert!(FileWriter::new(Cursor::new(Vec::new()), &c, None, &[]).is_err(), "writer accepted {what}");
    }
    // The same fields in their valid forms still parse.
    let valid: [Edit; 4] = [
        |c| {
            c.flags = 0;
            c.bos_id = 0;
        },
        |c| {
            c.n_stop_ids = 0;
            c.stop_ids = [0; 8];
        },
        |c| {
            c.n_stop_ids = 8;
            c.stop_ids = [2, 3, 4, 5, 6, 7, 8, 39];
        },
        |c| {
            c.flags |= ModelConfig::FLAG_SLIDING_WINDOW;
            c.sliding_window = 1;
        },
    ];
    for f in valid {
        let b = fx.mutated(|b| edit_config(b, f));
        let a = AlignedBytes::new(&b);
        File::parse(&a).expect("valid config edit parses");
    }
}

#[test]
fn err_bad_tokenizer() {
    let fx = with_tok();
    let th = tok_header(&fx.tokenizer.clone().unwrap());
    let n = th.n_tokens;
    let check = |b: Vec<u8>, what: &str, index: u32| {
        let e = parse_err(&b);
        assert!(
            matches!(e, Error::BadTokenizer { what: w, index: i } if w.starts_with(what) && i == index),
            "expected BadTokenizer {{ {what}, {index} }}, got {e:?}"
        );
    };
    // Token count.
    check(fx.mutated_tok(|s| edit_tok_header(s, |t| t.n_tokens = 0)), "n_tokens", 0);
    check(fx.mutated_tok(|s| edit_tok_header(s, |t| t.n_tokens = 265)), "n_tokens", 265);
    // Offsets: first not 0, decreasing, end not the blob length.
    check(fx.mutated_tok(|s| set_u32(s, th.offsets_off, 0, 1)), "offsets", 0);
    check(fx.mutated_tok(|s| set_u32(s, th.offsets_off, 5, 0)), "offsets", 5);
    check(fx.mutated_tok(|s| set_u32(s, th.offsets_off, n as usize, th.strings_len - 1)), "offsets (end", n);
    // Token type.
    check(fx.mutated_tok(|s| s[th.types_off as usize + 3] = 9), "token type", 3);
    // Sorted ids: out of range, unsorted, duplicated.
    check(fx.mutated_tok(|s| set_u32(s, th.sorted_off, 0, n)), "sorted ids (id out of range)", 0);
    check(
        fx.mutated_tok(|s| {
            let (a, b) = (get_u32(s, th.sorted_off, 10), get_u32(s, th.sorted_off, 11));
            set_u32(s, th.sorted_off, 10, b);
            set_u32(s, th.sorted_off, 11, a);
        }),
        "sorted ids (not strictly ascending)",
        11,
    );
    check(
        fx.mutated_tok(|s| {
            let a = get_u32(s, th.sorted_off, 10);
            set_u32(s, th.sorted_off, 11, a);
        }),
        "sorted ids (not strictly ascending)",
        11,
    );
    // Merges: ids or rank out of range, unsorted.
    check(fx.mutated_tok(|s| edit_merge(s, 0, |m| m.result = n)), "merge (id or rank out of range)", 0);
    check(fx.mutated_tok(|s| edit_merge(s, 1, |m| m.left = u32::MAX)), "merge (id or rank out of range)", 1);
    check(fx.mutated_tok(|s| edit_merge(s, 2, |m| m.rank = 4)), "merge (id or rank out of range)", 2);
    check(
        fx.mutated_tok(|s| {
            let off = th.merges_off as usize;
            let (a, b) = s[off..off + 32].split_at_mut(16);
            a.swap_with_slice(b);
        }),
        "merges (not sorted by pair)",
        1,
    );
    // Byte table, specials, eot, unk.
    check(fx.mutated_tok(|s| set_u32(s, th.byte_tokens_off, 65, n)), "byte tokens", 65);
    check(fx.mutated_tok(|s| set_u32(s, th.specials_off, 0, n + 100)), "specials", 0);
    check(fx.mutated_tok(|s| edit_tok_header(s, |t| t.eot_id = n)), "eot id", n);
    check(
        fx.mutated_tok(|s| {
            edit_tok_header(s, |t| {
                t.flags |= TokenizerHeader::FLAG_HAS_UNK;
                t.unk_id = n + 1;
            })
        }),
        "unk id",
        n + 1,
    );
    // A special token with no bytes (built, since the sorted table must stay valid).
    let mut t = tokenizer_builder();
    t.tokens.push(TokenEntry { bytes: Vec::new(), ty: TokenType::Special, score: 0.0 });
    t.specials.push(261);
    let bad = build(tok_config(), Mix::Cycle, Some(t), 23);
    check(bad.bytes.clone(), "specials", 1);
    // Non-finite scores.
    let mut t = tokenizer_builder();
    t.has_scores = true;
    let scored = build(tok_config(), Mix::Cycle, Some(t), 24);
    let sh = tok_header(scored.tokenizer.as_ref().unwrap());
    for v in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
        check(scored.mutated_tok(|s| set_u32(s, sh.scores_off, 7, v.to_bits())), "scores (non-finite)", 0);
    }
    // A NO_TOKEN byte entry is allowed.
    let b = fx.mutated_tok(|s| set_u32(s, th.byte_tokens_off, 65, NO_TOKEN));
    let a = AlignedBytes::new(&b);
    assert_eq!(File::parse(&a).unwrap().tokenizer().unwrap().byte_token(65), None);
}

#[test]
fn err_reserved_not_zero() {
    let fx = with_tok();
    let b = fx.mutated(|b| edit_header(b, |h| h.reserved[27] = 1));
    assert_err!(b, Error::ReservedNotZero { what: "header" });
    let b = fx.mutated(|b| edit_config(b, |c| c.reserved[0] = 0x80));
    assert_err!(b, Error::ReservedNotZero { what: "config" });
    let b = fx.mutated(|b| edit_entry(b, 5, |e| e.reserved[19] = 1));
    assert_err!(b, Error::ReservedNotZero { what: "directory entry" });
    let b = fx.mutated_tok(|s| edit_tok_header(s, |t| t.reserved[8] = 3));
    assert_err!(b, Error::ReservedNotZero { what: "tokenizer header" });
}

// ---------------------------------------------------------------------------
// Robustness.

/// Touches everything a parsed file exposes and checks the invariants a
/// successful parse promises.
fn exercise(file: &File<'_>) {
    let c = *file.config();
    for i in 0..file.n_tensors() {
        let t = file.tensor_at(i).expect("tensor_at of a parsed file");
        assert_eq!(t.data.len() as u64, t.dtype.tensor_bytes(t.rows as u64, t.cols as u64).unwrap());
        assert_eq!(t.data.as_ptr() as usize % ALIGN, 0);
        let _ = (t.as_f32(), t.as_f16(), t.len(), t.verify());
        if t.dtype.is_quantized() {
            let (qs, scales) = t.quant_planes().expect("quant planes");
            let mins = t.mins().map_or(0, |m| m.len());
            assert_eq!(mins, if t.dtype == DType::Q4A { scales.len() } else { 0 });
            assert_eq!(qs.len() + 2 * scales.len() + 2 * mins, t.data.len());
        }
    }
    for role in roles_for(&c).into_iter().take(20_000) {
        file.tensor(role).expect("every required role resolves");
    }
    let _ = file.tensor(Role::Output).expect("output resolves");
    let _ = file.verify_tensors();
    if let Some(tok) = file.tokenizer() {
        for id in 0..tok.n_tokens() {
            let bytes = tok.token_bytes(id).expect("token bytes");
            assert_eq!(tok.find(bytes), Some(id), "find(token_bytes(id)) = id");
            let _ = (tok.token_type(id), tok.score(id));
        }
        for b in 0..=255u8 {
            if let Some(id) = tok.byte_token(b) {
                assert!(id < tok.n_tokens());
            }
        }
        for &id in tok.specials() {
            assert!(tok.token_bytes(id).is_some_and(|b| !b.is_empty()));
        }
        let _ = (tok.find(b"hello"), tok.find(b""), tok.merge(HE, LL), tok.chat_template(), tok.eot(), tok.unk());
        let _ = (tok.kind(), tok.pretokenizer(), tok.n_merges(), tok.header());
    }
}

/// Every `step`-th length of `lens`, and the last one. Miri
/// (`scripts/miri.sh`) interprets each parse about a thousand times slower
/// than native code, so the robustness tests below run a spread-out sample
/// there (`step` > 1) and everything natively (`step` = 1).
fn sample(lens: std::ops::Range<usize>, step: usize) -> impl Iterator<Item = usize> {
    let last = lens.end.checked_sub(1).filter(|&l| step > 1 && l >= lens.start);
    lens.step_by(step.max(1)).chain(last)
}

#[test]
fn robust_every_truncation() {
    for fx in [with_tok(), build(odd_config(), Mix::Cycle, None, 30)] {
        let a = fx.aligned();
        let n = fx.bytes.len();
        // Plain truncation: every length (under Miri every 499th, which
        // still lands in every section: header, directory, tokenizer, data).
        for len in sample(0..n, by_target(1, 499)) {
            let e = File::parse(&a[..len]).expect_err("truncated file parsed");
            assert!(matches!(e, Error::Truncated { .. }), "len {len}: {e:?}");
        }
        // Truncation with file_size (and data_size) patched to match and the
        // meta checksum recomputed, so the deeper bounds checks run.
        let last_end = {
            let e = entry(&fx.bytes, fx.specs.len() - 1);
            (e.offset + e.size) as usize
        };
        let h = fx.header();
        let mut b = fx.aligned();
        // ~3000 lengths over the file, every one through the directory and
        // around the last tensor's end; under Miri ~12, every 97th and 23rd
        // (each accepted length verifies every tensor).
        let step = (n / by_target(3000, 12)).max(1);
        let lens = (HEADER_SIZE..n)
            .step_by(step)
            .chain(sample(HEADER_SIZE..fx.dir_end() + 200, by_target(1, 97)))
            .chain(sample(last_end - 70..n, by_target(1, 23)));
        for len in lens {
            {
                let s = b.as_mut_slice();
                edit_header(s, |hh| {
                    hh.file_size = len as u64;
                    hh.data_size = (len as u64).saturating_sub(h.data_offset).min(h.data_size);
                });
                reseal_meta(s);
            }
            match File::parse(&b[..len]) {
                Ok(file) => {
                    assert!(len >= last_end, "len {len} < {last_end} parsed");
                    exercise(&file);
                    file.verify_tensors().unwrap();
                }
                Err(e) => {
                    assert!(!e.to_string().is_empty());
                    assert!(len < last_end, "len {len}: {e:?}");
                }
            }
        }
    }
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Region {
    Header,
    Meta,
    Tokenizer,
    Tensor(usize),
    Padding,
}

fn region_of(fx: &Fixture, at: usize) -> Region {
    if at < META_CRC_AT {
        return Region::Header;
    }
    if at < fx.dir_end() {
        return Region::Meta;
    }
    if fx.tokenizer.is_some() && fx.tok_range().contains(&at) {
        return Region::Tokenizer;
    }
    for i in 0..fx.specs.len() {
        let e = entry(&fx.bytes, i);
        if (e.offset..e.offset + e.size).contains(&(at as u64)) {
            return Region::Tensor(i);
        }
    }
    Region::Padding
}

#[test]
fn robust_single_byte_flips() {
    let fx = with_tok();
    let mut rng = Rng::new(0x5eed);
    let mut b = fx.aligned();
    let n = fx.bytes.len();
    let data_offset = fx.header().data_offset as usize;
    let mut seen = [0usize; 5];
    // One flip in each checksummed region first, so that the short run under
    // Miri covers them all too.
    let first = [7, CONFIG_AT + 8, fx.tok_range().start + 40, data_offset + 3];
    for round in 0..iters(6000) {
        // Two thirds uniform over the file, one third over the metadata and tokenizer.
        let at = match first.get(round) {
            Some(&at) => at,
            None if round % 3 == 0 => rng.below(data_offset),
            None => rng.below(n),
        };
        let x = nonzero_u8(&mut rng);
        b.as_mut_slice()[at] ^= x;
        let region = region_of(&fx, at);
        let result = File::parse(&b);
        match region {
            Region::Header => {
                seen[0] += 1;
                let e = result.expect_err("header flip accepted");
                assert!(!e.to_string().is_empty());
            }
            Region::Meta => {
                seen[1] += 1;
                let e = result.expect_err("meta flip accepted");
                assert!(matches!(e, Error::MetaChecksum { .. }), "flip at {at}: {e:?}");
            }
            Region::Tokenizer => {
                seen[2] += 1;
                let e = result.expect_err("tokenizer flip accepted");
                assert!(matches!(e, Error::TokenizerChecksum { .. }), "flip at {at}: {e:?}");
            }
            Region::Tensor(i) => {
                seen[3] += 1;
                let file = result.expect("data flip parses");
                let e = file.verify_tensors().expect_err("data flip verifies");
                assert!(matches!(e, Error::TensorChecksum { index, .. } if index as usize == i), "{e:?}");
            }
            Region::Padding => {
                // Alignment padding is covered by no checksum; the file must
                // still read and its tensors verify.
                seen[4] += 1;
                let file = result.expect("padding flip parses");
                file.verify_tensors().unwrap();
            }
        }
        b.as_mut_slice()[at] ^= x;
    }
    eprintln!("flips per region (header, meta, tokenizer, tensor, padding): {seen:?}");
    assert!(seen[..4].iter().all(|&k| k > by_target(10, 0)), "coverage {seen:?}");
    File::parse(&b).unwrap().verify_tensors().unwrap();
}

/// `base` iterations, times `FERRITE_FUZZ_SCALE` (default 1) for longer local
/// runs. Under Miri (`scripts/miri.sh`) 1/300 of `base` (at least 8): each
/// round is interpreted about a thousand times slower and verifies every
/// tensor.
fn iters(base: usize) -> usize {
    if cfg!(miri) {
        return (base / 300).max(8);
    }
    let scale = std::env::var("FERRITE_FUZZ_SCALE").ok().and_then(|v| v.parse().ok()).unwrap_or(1usize);
    base * scale.max(1)
}

/// Values worth writing into size, offset and count fields.
fn interesting_u32(rng: &mut Rng, n: usize) -> u32 {
    match rng.below(10) {
        0 => 0,
        1 => 1,
        2 => u32::MAX,
        3 => u32::MAX - rng.below(64) as u32,
        4 => 1 << rng.below(32),
        5 => (rng.below(n) as u32) & !63,
        6 => rng.below(n) as u32,
        7 => rng.below(300) as u32,
        _ => rng.next_u64() as u32,
    }
}

/// Changes one 4-byte `word`: half the time one byte flipped, otherwise an
/// [`interesting_u32`] for a file or section of `n` bytes written over it.
fn mutate_word(word: &mut [u8], rng: &mut Rng, n: usize) {
    if rng.below(2) == 0 {
        word[rng.below(4)] ^= nonzero_u8(rng);
    } else {
        let v = interesting_u32(rng, n);
        word.copy_from_slice(&v.to_le_bytes());
    }
}

/// Parses a mutated file: never a panic, an error with a message, or a file
/// that holds up to [`exercise`]. Whether it was accepted.
fn parses_soundly(bytes: &[u8]) -> bool {
    match File::parse(bytes) {
        Ok(file) => {
            exercise(&file);
            true
        }
        Err(e) => {
            assert!(!e.to_string().is_empty());
            false
        }
    }
}

#[test]
fn robust_resealed_metadata_mutations() {
    // Past the checksum: random edits to the header, config and directory
    // with meta_crc recomputed. Never a panic; anything accepted is sound.
    for (k, fx) in [with_tok(), build(qwen2_config(), Mix::Cycle, None, 40)].into_iter().enumerate() {
        let mut rng = Rng::new(0xfee1 + k as u64);
        let meta_end = fx.dir_end();
        let mut accepted = 0;
        let n = iters(3000);
        let mut b = fx.aligned();
        for _ in 0..n {
            let s = b.as_mut_slice();
            s[..meta_end].copy_from_slice(&fx.bytes[..meta_end]);
            for _ in 0..1 + rng.below(3) {
                let at = rng.below(meta_end) & !3;
                if at == META_CRC_AT {
                    continue;
                }
                mutate_word(&mut s[at..at + 4], &mut rng, fx.bytes.len());
            }
            reseal_meta(s);
            accepted += usize::from(parses_soundly(&b));
        }
        eprintln!("metadata mutations: {accepted} of {n} accepted");
        assert!(accepted < n, "nothing rejected?");
    }
}

#[test]
fn robust_resealed_tokenizer_mutations() {
    let fx = with_tok();
    let mut rng = Rng::new(0x70c);
    let r = fx.tok_range();
    let mut accepted = 0;
    let meta_end = fx.dir_end();
    let n = iters(3000);
    let mut b = fx.aligned();
    for _ in 0..n {
        let s = b.as_mut_slice();
        s[..meta_end].copy_from_slice(&fx.bytes[..meta_end]);
        s[r.clone()].copy_from_slice(&fx.bytes[r.clone()]);
        for _ in 0..1 + rng.below(3) {
            // Half the edits hit the tokenizer header's fields.
            let at = (if rng.below(2) == 0 { r.start + rng.below(96) } else { rng.below(r.len()) + r.start }) & !3;
            mutate_word(&mut s[at..at + 4], &mut rng, r.len());
        }
        reseal_tok(s);
        accepted += usize::from(parses_soundly(&b));
    }
    eprintln!("tokenizer mutations: {accepted} of {n} accepted");
    assert!(accepted < n);
}
