//! Parsing and validating a GGUF header, and reading tensor data (one slab
//! at a time, with positioned reads) as f32.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use half::f16;

use super::{bad, ggml_type_name, GgmlType, GgufFile, GgufTensor, Value, MAGIC};
use crate::error::{Error, Result};

/// Most memory the parsed metadata may take (the tokenizer of a 256k
/// vocabulary with its merges takes about 40 MiB of values): a bound on
/// what a file's declared counts can make the converter allocate.
const MAX_METADATA_BYTES: u64 = 256 << 20;

/// Deepest nesting of arrays accepted in metadata.
const MAX_ARRAY_DEPTH: u32 = 3;

/// A bounds-checked little-endian reader over the header, streamed from
/// the file (nothing is read ahead beyond a small buffer), that charges
/// every value it makes against [`MAX_METADATA_BYTES`].
struct Cursor<'a> {
    reader: std::io::BufReader<&'a File>,
    /// Bytes consumed from the start of the file.
    pos: u64,
    path: &'a Path,
    file_len: u64,
    /// Bytes of memory the metadata may still take.
    budget: u64,
}

impl<'a> Cursor<'a> {
    /// Checks that `n` more bytes exist in the file.
    fn need(&self, n: u64, what: &str) -> Result<()> {
        if self.pos.checked_add(n).is_none_or(|end| end > self.file_len) {
            return Err(bad(
                self.path,
                format!("truncated GGUF: {what} at byte {} needs {n} bytes, the file has {}", self.pos, self.file_len),
            ));
        }
        Ok(())
    }
    /// Charges `bytes` of memory to the metadata budget.
    fn charge(&mut self, bytes: u64, what: &str) -> Result<()> {
        self.budget = self.budget.checked_sub(bytes).ok_or_else(|| {
            bad(self.path, format!("GGUF metadata larger than {} MiB in memory (at {what})", MAX_METADATA_BYTES >> 20))
        })?;
        Ok(())
    }
    fn fill(&mut self, buf: &mut [u8], what: &str) -> Result<()> {
        use std::io::Read;
        self.need(buf.len() as u64, what)?;
        self.reader.read_exact(buf).map_err(|e| Error::io(self.path, e))?;
        self.pos += buf.len() as u64;
        Ok(())
    }
    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let mut a = [0u8; N];
        self.fill(&mut a, what)?;
        Ok(a)
    }
    fn take(&mut self, n: u64, what: &str) -> Result<Vec<u8>> {
        self.need(n, what)?;
        self.charge(n, what)?;
        let mut v = vec![0u8; n as usize];
        self.fill(&mut v, what)?;
        Ok(v)
    }
    fn remaining(&self) -> u64 {
        self.file_len - self.pos
    }
    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }
    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }
    fn string(&mut self, what: &str) -> Result<Vec<u8>> {
        let len = self.u64(what)?;
        self.take(len, what)
    }
    /// The `i`-th `what`, a string that must be UTF-8.
    fn utf8(&mut self, what: &str, i: u64) -> Result<String> {
        let b = self.string(what)?;
        String::from_utf8(b.to_vec()).map_err(|_| bad(self.path, format!("{what} #{i} is not UTF-8")))
    }
    fn value(&mut self, ty: u32, key: &str, depth: u32) -> Result<Value> {
        let int = |b: &[u8], signed: bool| -> i128 {
            let mut a = [0u8; 16];
            a[..b.len()].copy_from_slice(b);
            if signed && b.last().is_some_and(|&x| x & 0x80 != 0) {
                for x in &mut a[b.len()..] {
                    *x = 0xff;
                }
            }
            i128::from_le_bytes(a)
        };
        Ok(match ty {
            0 | 1 => Value::Int(int(&self.array::<1>(key)?, ty == 1)),
            2 | 3 => Value::Int(int(&self.array::<2>(key)?, ty == 3)),
            4 | 5 => Value::Int(int(&self.array::<4>(key)?, ty == 5)),
            10 | 11 => Value::Int(int(&self.array::<8>(key)?, ty == 11)),
            6 => Value::Float(f32::from_bits(self.u32(key)?) as f64),
            12 => Value::Float(f64::from_bits(self.u64(key)?)),
            7 => match self.array::<1>(key)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                other => return Err(bad(self.path, format!("metadata {key}: bool value {other} is not 0 or 1"))),
            },
            8 => Value::Str(self.string(key)?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(bad(self.path, format!("metadata {key}: arrays nested deeper than {MAX_ARRAY_DEPTH}")));
                }
                let elem = self.u32(key)?;
                let len = self.u64(key)?;
                // Every element takes at least one byte: a count beyond what
                // is left is corrupt (and must not size an allocation).
                if len > self.remaining() {
                    return Err(bad(
                        self.path,
                        format!("truncated or corrupt GGUF: metadata {key} claims {len} array elements"),
                    ));
                }
                // Each element is charged to the budget as it is made (the
                // vector grows with what the file really holds).
                let mut items = Vec::new();
                for _ in 0..len {
                    self.charge(core::mem::size_of::<Value>() as u64, key)?;
                    items.push(self.value(elem, key, depth + 1)?);
                }
                Value::Array(items)
            }
            other => return Err(bad(self.path, format!("metadata {key}: unknown value type {other}"))),
        })
    }
}

impl GgufFile {
    /// Opens and validates `path`: magic, version, metadata, tensor infos,
    /// and that every tensor of a known type lies inside the file.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| Error::io(path, e))?;
        let file_len = file.metadata().map_err(|e| Error::io(path, e))?.len();
        let reader = std::io::BufReader::with_capacity(64 << 10, &file);
        let mut c = Cursor { reader, pos: 0, path, file_len, budget: MAX_METADATA_BYTES };
        let magic = c.take(4, "magic")?;
        if magic != MAGIC {
            return Err(bad(path, format!("not a GGUF file (starts with {magic:02x?}, expected \"GGUF\")")));
        }
        let version = c.u32("version")?;
        if version != 3 && version != 2 {
            let hint = if version.swap_bytes() == 3 { " (a big-endian GGUF? only little-endian is read)" } else { "" };
            return Err(bad(path, format!("GGUF version {version} is not supported (only 2 and 3){hint}")));
        }
        let n_tensors = c.u64("tensor count")?;
        let n_kv = c.u64("metadata count")?;
        if n_kv > c.remaining() / 13 || n_tensors > c.remaining() / 24 {
            return Err(bad(
                path,
                format!("truncated or corrupt GGUF: {n_kv} metadata entries and {n_tensors} tensors cannot fit"),
            ));
        }
        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = c.utf8("metadata key", i)?;
            let ty = c.u32(&key)?;
            let value = c.value(ty, &key, 0)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(bad(path, format!("metadata key {key} appears twice")));
            }
        }
        let alignment = match metadata.get("general.alignment") {
            None => 32,
            Some(v) => match v.as_u32() {
                Some(a) if a.is_power_of_two() => a as u64,
                _ => return Err(bad(path, format!("general.alignment {v:?} is not a power of two"))),
            },
        };
        let mut infos = Vec::new();
        for i in 0..n_tensors {
            let name = c.utf8("tensor name", i)?;
            let n_dims = c.u32(&name)?;
            if !(1..=4).contains(&n_dims) {
                return Err(bad(path, format!("tensor {name}: {n_dims} dimensions (1 to 4 allowed)")));
            }
            c.charge(64 + 8 * u64::from(n_dims), &name)?;
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(c.u64(&name)?);
            }
            let type_id = c.u32(&name)?;
            let offset = c.u64(&name)?;
            infos.push((name, dims, type_id, offset));
        }
        let data_start = c.pos.div_ceil(alignment) * alignment;
        let mut tensors = BTreeMap::new();
        for (name, dims, type_id, offset) in infos {
            let elems = dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
            let elems = elems
                .filter(|&e| e > 0)
                .ok_or_else(|| bad(path, format!("tensor {name}: dimensions {dims:?} are zero or overflow")))?;
            if offset % alignment != 0 {
                return Err(bad(path, format!("tensor {name}: offset {offset} is not a multiple of {alignment}")));
            }
            let ty = GgmlType::from_u32(type_id);
            let start =
                data_start.checked_add(offset).ok_or_else(|| bad(path, format!("tensor {name}: offset overflows")))?;
            if let Some(t) = ty {
                let (block, block_bytes) = t.block();
                if dims[0] % block != 0 {
                    return Err(bad(
                        path,
                        format!(
                            "tensor {name}: row length {} is not a multiple of {}'s block of {block}",
                            dims[0],
                            t.name()
                        ),
                    ));
                }
                let size = (elems / block).checked_mul(block_bytes);
                let end = size.and_then(|s| start.checked_add(s));
                match end {
                    Some(end) if end <= file_len => {}
                    _ => {
                        return Err(bad(
                            path,
                            format!(
                                "truncated GGUF: tensor {name} ({} {dims:?}) runs past the end of the file ({file_len} bytes)",
                                t.name()
                            ),
                        ))
                    }
                }
            }
            let tensor = GgufTensor { dims, type_id, ty, start };
            if tensors.insert(name.clone(), tensor).is_some() {
                return Err(bad(path, format!("tensor {name} appears twice")));
            }
        }
        Ok(GgufFile { path: path.to_path_buf(), file, version, metadata, tensors })
    }

    /// Reads elements `[first, first + count)` of tensor `name` (row-major,
    /// rows of `dims[0]` elements; `first` and `count` whole rows) as f32
    /// into `out` (cleared first), dequantizing; `scratch` holds the raw
    /// bytes.
    pub fn read_f32(
        &self,
        name: &str,
        first: usize,
        count: usize,
        scratch: &mut Vec<u8>,
        out: &mut Vec<f32>,
    ) -> Result<()> {
        let t = self.tensors.get(name).ok_or_else(|| self.err(format!("no tensor {name}")))?;
        let ty =
            t.ty.ok_or_else(|| self.err(format!("tensor {name} has unsupported type {}", ggml_type_name(t.type_id))))?;
        let (block, block_bytes) = ty.block();
        let (first, count) = (first as u64, count as u64);
        if first % block != 0 || count % block != 0 || first + count > t.elems() {
            return Err(self.err(format!("tensor {name}: read of {count} elements at {first} is out of its bounds")));
        }
        let offset = first / block * block_bytes;
        let bytes = count / block * block_bytes;
        scratch.clear();
        scratch.resize(bytes as usize, 0);
        self.file
            .read_exact_at(scratch, t.start + offset)
            .map_err(|e| self.err(format!("reading tensor {name}: {e}")))?;
        out.clear();
        out.reserve(count as usize);
        dequantize(ty, scratch, out);
        Ok(())
    }

    /// Reads rows `[first, first + n)` of tensor `name` (rows of `dims[0]`
    /// elements) as the file stores them, whole blocks, into `out`.
    pub fn read_raw_rows(&self, name: &str, first: usize, n: usize, out: &mut Vec<u8>) -> Result<()> {
        let t = self.tensors.get(name).ok_or_else(|| self.err(format!("no tensor {name}")))?;
        let ty =
            t.ty.ok_or_else(|| self.err(format!("tensor {name} has unsupported type {}", ggml_type_name(t.type_id))))?;
        let (block, block_bytes) = ty.block();
        let row_bytes = t.dims[0] / block * block_bytes;
        let rows = t.elems() / t.dims[0];
        if (first + n) as u64 > rows {
            return Err(self.err(format!("tensor {name}: read of rows {first}..{} past its {rows} rows", first + n)));
        }
        out.clear();
        out.resize(n * row_bytes as usize, 0);
        self.file
            .read_exact_at(out, t.start + first as u64 * row_bytes)
            .map_err(|e| self.err(format!("reading tensor {name}: {e}")))
    }
}

fn half_at(b: &[u8], i: usize) -> f32 {
    f16::from_le_bytes([b[i], b[i + 1]]).to_f32()
}

/// Appends the values of `raw` (whole blocks of `ty`) to `out`, as
/// llama.cpp's reference dequantization computes them in f32.
pub(crate) fn dequantize(ty: GgmlType, raw: &[u8], out: &mut Vec<f32>) {
    match ty {
        GgmlType::F32 => out.extend(raw.chunks_exact(4).map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))),
        GgmlType::F16 => out.extend(raw.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32())),
        GgmlType::BF16 => out.extend(raw.chunks_exact(2).map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32())),
        GgmlType::Q8_0 => {
            for b in raw.chunks_exact(34) {
                let d = half_at(b, 0);
                out.extend(b[2..].iter().map(|&q| d * (q as i8) as f32));
            }
        }
        GgmlType::Q4_0 => {
            for b in raw.chunks_exact(18) {
                let d = half_at(b, 0);
                let qs = &b[2..];
                out.extend(qs.iter().map(|&q| d * ((q & 0x0f) as i32 - 8) as f32));
                out.extend(qs.iter().map(|&q| d * ((q >> 4) as i32 - 8) as f32));
            }
        }
        GgmlType::Q4_1 => {
            for b in raw.chunks_exact(20) {
                let (d, m) = (half_at(b, 0), half_at(b, 2));
                let qs = &b[4..];
                out.extend(qs.iter().map(|&q| d * (q & 0x0f) as f32 + m));
                out.extend(qs.iter().map(|&q| d * (q >> 4) as f32 + m));
            }
        }
        GgmlType::Q5_0 | GgmlType::Q5_1 => {
            let asym = ty == GgmlType::Q5_1;
            for b in raw.chunks_exact(if asym { 24 } else { 22 }) {
                let d = half_at(b, 0);
                let (m, rest) = if asym { (half_at(b, 2), &b[4..]) } else { (0.0, &b[2..]) };
                let qh = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
                let qs = &rest[4..];
                for j in 0..32 {
                    let low = if j < 16 { qs[j] & 0x0f } else { qs[j - 16] >> 4 };
                    let level = low | (((qh >> j) & 1) as u8) << 4;
                    out.push(if asym { d * level as f32 + m } else { d * (level as i32 - 16) as f32 });
                }
            }
        }
        GgmlType::Q4_K | GgmlType::Q5_K => {
            for b in raw.chunks_exact(if ty == GgmlType::Q5_K { 176 } else { 144 }) {
                let (d, dmin) = (half_at(b, 0), half_at(b, 2));
                let mut scales = [0u8; 12];
                scales.copy_from_slice(&b[4..16]);
                for g in 0..8 {
                    let (sc, mn) = k_scale_min(&scales, g);
                    let (d1, m1) = (d * sc as f32, dmin * mn as f32);
                    out.extend(k_levels(ty, b, g).iter().map(|&l| d1 * l as f32 - m1));
                }
            }
        }
        GgmlType::Q6_K => {
            for b in raw.chunks_exact(210) {
                let (scales, d) = (&b[192..208], half_at(b, 208));
                for g in 0..8 {
                    for (j, &l) in k_levels(ty, b, g).iter().enumerate() {
                        out.push(d * scales[2 * g + j / 16] as i8 as f32 * (l as i32 - 32) as f32);
                    }
                }
            }
        }
    }
}

/// The 32 levels (unsigned, before Q6_K's offset of 32) of sub-block `g`
/// (0..8, elements `32g ..`) of one Q4_K, Q5_K or Q6_K super-block `b`:
/// Q4_K/Q5_K's low nibbles of bytes `32 (g / 2) ..` (low for even `g`),
/// Q5_K's bit `g` of its 32 high bytes; Q6_K's element `e` in half `h = e /
/// 128` has its low 4 bits in byte `64h + e % 64` of `ql` (high nibble for
/// `e % 128 >= 64`) and bits 4..6 in byte `32h + e % 32` of `qh`, shifted
/// by `2 ((e % 128) / 32)`.
pub(crate) fn k_levels(ty: GgmlType, b: &[u8], g: usize) -> [u8; 32] {
    let mut out = [0u8; 32];
    if ty == GgmlType::Q6_K {
        // Element 32g + j: half h = g / 4, r = 32 (g % 4) + j inside it.
        let (h, r0) = (g / 4, 32 * (g % 4));
        let ql = &b[64 * h + r0 % 64..][..32];
        let qh = &b[128 + 32 * h..][..32];
        let (low_shift, high_shift) = (4 * (r0 / 64), 2 * (r0 / 32));
        for ((o, &l), &hb) in out.iter_mut().zip(ql).zip(qh) {
            *o = ((l >> low_shift) & 0x0f) | ((hb >> high_shift) & 3) << 4;
        }
    } else {
        let five = ty == GgmlType::Q5_K;
        let qs = &b[if five { 48 } else { 16 } + 32 * (g / 2)..][..32];
        let low_shift = if g.is_multiple_of(2) { 0 } else { 4 };
        for (j, (o, &q)) in out.iter_mut().zip(qs).enumerate() {
            *o = (q >> low_shift) & 0x0f | if five { ((b[16 + j] >> g) & 1) << 4 } else { 0 };
        }
    }
    out
}

/// The 6-bit scale and minimum of sub-block `g` (0..8) of a Q4_K/Q5_K
/// super-block's 12 packed bytes: sub-blocks 0..4 in the low 6 bits of
/// bytes `g` and `g + 4`; 4..8 in the nibbles of byte `g + 4` with their
/// top 2 bits in the top bits of bytes `g - 4` and `g`.
pub(crate) fn k_scale_min(s: &[u8; 12], g: usize) -> (u8, u8) {
    if g < 4 {
        (s[g] & 63, s[g + 4] & 63)
    } else {
        ((s[g + 4] & 0x0f) | ((s[g - 4] >> 6) << 4), (s[g + 4] >> 4) | ((s[g] >> 6) << 4))
    }
}
