//! Writing Ferrite files (feature `std`).
//!
//! [`FileWriter`] lays the file out from the tensor list up front, streams
//! each tensor's bytes in directory order, and writes the directory and
//! header (with checksums) last. [`TokenizerBuilder`] serializes a tokenizer
//! section. [`AlignedBytes`] holds a file in 64-byte aligned memory, for
//! tests and for reading without a memory map.

use std::collections::HashMap;
use std::io::{self, Seek, SeekFrom, Write};

use crate::tokenizer::{Merge, PreTokenizer, TokenType, TokenizerHeader, TokenizerKind};
use crate::{
    align_up, checksum, quant, DType, DirEntry, Header, ModelConfig, Role, ALIGN, DIR_ENTRY_SIZE, ENDIAN_CHECK,
    HEADER_SIZE, MAGIC, TOKENIZER_HEADER_SIZE, VERSION,
};

/// One tensor to be written: what it is and how it is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TensorSpec {
    /// Its role.
    pub role: Role,
    /// Storage type.
    pub dtype: DType,
    /// `[rows, cols]` (`cols` = 1 for vectors).
    pub shape: [u32; 2],
}

impl TensorSpec {
    /// Bytes of data.
    pub fn bytes(&self) -> u64 {
        self.dtype.tensor_bytes(self.shape[0] as u64, self.shape[1] as u64).unwrap_or(u64::MAX)
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// Streams a Ferrite file into a `Write + Seek` sink.
pub struct FileWriter<W: Write + Seek> {
    out: W,
    header: Header,
    config: ModelConfig,
    entries: Vec<DirEntry>,
    next: usize,
    written: u64,
    hasher: crc32fast::Hasher,
}

impl<W: Write + Seek> FileWriter<W> {
    /// Starts a file. `tensors` are sorted into directory (role) order; the
    /// caller then supplies each tensor's data with [`FileWriter::write_tensor`]
    /// in the order of [`FileWriter::order`].
    pub fn new(mut out: W, config: &ModelConfig, tokenizer: Option<&[u8]>, tensors: &[TensorSpec]) -> io::Result<Self> {
        config.validate().map_err(|e| invalid(format!("invalid model config: {e}")))?;
        let mut specs = tensors.to_vec();
        specs.sort_by_key(|s| s.role.sort_key());
        for w in specs.windows(2) {
            if w[0].role == w[1].role {
                return Err(invalid(format!("tensor {} given twice", w[0].role)));
            }
        }
        let dir_offset = (HEADER_SIZE + ModelConfig::SIZE) as u64;
        let dir_end = dir_offset + (specs.len() * DIR_ENTRY_SIZE) as u64;
        let a = ALIGN as u64;
        let overflow = || invalid("file too large".into());
        let (tok_offset, tok_size, tok_crc, after_tok) = match tokenizer {
            Some(t) if !t.is_empty() => {
                let off = align_up(dir_end, a).ok_or_else(overflow)?;
                (off, t.len() as u64, checksum(t), off + t.len() as u64)
            }
            _ => (0, 0, 0, dir_end),
        };
        let data_offset = align_up(after_tok, a).ok_or_else(overflow)?;
        let mut cursor = data_offset;
        let mut entries = Vec::with_capacity(specs.len());
        for s in &specs {
            let (kind, layer) = s.role.to_raw();
            let size = s.dtype.tensor_bytes(s.shape[0] as u64, s.shape[1] as u64).ok_or_else(overflow)?;
            entries.push(DirEntry {
                kind,
                layer,
                dtype: s.dtype as u32,
                n_dims: if s.role.is_vector() { 1 } else { 2 },
                rows: s.shape[0],
                cols: s.shape[1],
                offset: cursor,
                size,
                crc: 0,
                reserved: [0; 20],
            });
            cursor = align_up(cursor + size, a).ok_or_else(overflow)?;
        }
        let file_end = cursor.max(data_offset);
        let header = Header {
            magic: MAGIC,
            version: VERSION,
            endian: ENDIAN_CHECK,
            header_size: HEADER_SIZE as u32,
            config_size: ModelConfig::SIZE as u32,
            file_size: file_end,
            config_offset: HEADER_SIZE as u64,
            dir_offset,
            n_tensors: specs.len() as u32,
            dir_entry_size: DIR_ENTRY_SIZE as u32,
            tok_offset,
            tok_size,
            data_offset,
            data_size: file_end - data_offset,
            group_size: quant::GROUP as u32,
            tok_crc,
            reserved: [0; 28],
            meta_crc: 0,
        };
        // Placeholder header + config + directory, then the tokenizer.
        out.write_all(&[0u8; HEADER_SIZE])?;
        out.write_all(bytemuck::bytes_of(config))?;
        out.write_all(&vec![0u8; specs.len() * DIR_ENTRY_SIZE])?;
        let mut pos = dir_end;
        if let Some(t) = tokenizer.filter(|t| !t.is_empty()) {
            pad_to(&mut out, &mut pos, tok_offset)?;
            out.write_all(t)?;
            pos += t.len() as u64;
        }
        pad_to(&mut out, &mut pos, data_offset)?;
        Ok(FileWriter { out, header, config: *config, entries, next: 0, written: 0, hasher: crc32fast::Hasher::new() })
    }

    /// Roles in the order their data must be written.
    pub fn order(&self) -> Vec<Role> {
        self.entries.iter().filter_map(|e| e.role().ok()).collect()
    }

    /// The spec of the next tensor to write, if any remain.
    pub fn next_spec(&self) -> Option<TensorSpec> {
        let e = self.entries.get(self.next)?;
        Some(TensorSpec { role: e.role().ok()?, dtype: e.dtype().ok()?, shape: [e.rows, e.cols] })
    }

    /// Writes the next tensor's data in one piece; its length must be
    /// exactly the tensor's size.
    pub fn write_tensor(&mut self, data: &[u8]) -> io::Result<()> {
        self.write_chunk(data)?;
        self.end_tensor()
    }

    /// Appends bytes to the current tensor (for streaming large tensors).
    pub fn write_chunk(&mut self, data: &[u8]) -> io::Result<()> {
        let e = self.entries.get(self.next).ok_or_else(|| invalid("more tensors written than declared".into()))?;
        if self.written + data.len() as u64 > e.size {
            return Err(invalid(format!(
                "tensor {} overflows its declared {} bytes",
                e.role().map(|r| r.to_string()).unwrap_or_default(),
                e.size
            )));
        }
        self.hasher.update(data);
        self.written += data.len() as u64;
        self.out.write_all(data)
    }

    /// Ends the current tensor: checks its size, records its checksum and
    /// pads to the next tensor's alignment.
    pub fn end_tensor(&mut self) -> io::Result<()> {
        let e = self.entries.get_mut(self.next).ok_or_else(|| invalid("more tensors written than declared".into()))?;
        if self.written != e.size {
            return Err(invalid(format!(
                "tensor {} has {} bytes, expected {}",
                e.role().map(|r| r.to_string()).unwrap_or_default(),
                self.written,
                e.size
            )));
        }
        e.crc = std::mem::take(&mut self.hasher).finalize();
        self.written = 0;
        let mut pos = e.offset + e.size;
        let target = align_up(pos, ALIGN as u64).unwrap_or(pos);
        pad_to(&mut self.out, &mut pos, target)?;
        self.next += 1;
        Ok(())
    }

    /// Writes the directory and header (with checksums) and returns the sink.
    pub fn finish(mut self) -> io::Result<W> {
        if self.next != self.entries.len() {
            return Err(invalid(format!("only {} of {} tensors were written", self.next, self.entries.len())));
        }
        let dir_bytes: &[u8] = bytemuck::cast_slice(&self.entries);
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&bytemuck::bytes_of(&self.header)[..HEADER_SIZE - 4]);
        hasher.update(bytemuck::bytes_of(&self.config));
        hasher.update(dir_bytes);
        self.header.meta_crc = hasher.finalize();
        self.out.seek(SeekFrom::Start(0))?;
        self.out.write_all(bytemuck::bytes_of(&self.header))?;
        self.out.seek(SeekFrom::Start(self.header.dir_offset))?;
        self.out.write_all(dir_bytes)?;
        self.out.seek(SeekFrom::Start(self.header.file_size))?;
        self.out.flush()?;
        Ok(self.out)
    }
}

fn pad_to<W: Write>(out: &mut W, pos: &mut u64, target: u64) -> io::Result<()> {
    const ZEROS: [u8; ALIGN] = [0; ALIGN];
    while *pos < target {
        let n = ((target - *pos) as usize).min(ALIGN);
        out.write_all(&ZEROS[..n])?;
        *pos += n as u64;
    }
    Ok(())
}

/// One vocabulary entry for [`TokenizerBuilder`].
#[derive(Clone, Debug, PartialEq)]
pub struct TokenEntry {
    /// Raw bytes of the token.
    pub bytes: Vec<u8>,
    /// Its type.
    pub ty: TokenType,
    /// SentencePiece score (0 for BPE).
    pub score: f32,
}

/// Builds a tokenizer section.
#[derive(Clone, Debug)]
pub struct TokenizerBuilder {
    /// Model family.
    pub kind: TokenizerKind,
    /// Pre-tokenizer.
    pub pretokenizer: PreTokenizer,
    /// Vocabulary, indexed by id.
    pub tokens: Vec<TokenEntry>,
    /// Merge rules as `(left, right)` ids, highest priority first.
    pub merges: Vec<(u32, u32)>,
    /// The token of each byte ([`crate::tokenizer::NO_TOKEN`] if none).
    pub byte_tokens: [u32; 256],
    /// Ids of added tokens matched verbatim.
    pub specials: Vec<u32>,
    /// The chat template.
    pub chat_template: Option<String>,
    /// End-of-turn token.
    pub eot: Option<u32>,
    /// Unknown token.
    pub unk: Option<u32>,
    /// Whether scores are stored.
    pub has_scores: bool,
    /// SentencePiece byte fallback.
    pub byte_fallback: bool,
    /// Prefix space.
    pub add_prefix_space: bool,
    /// A chunk that is itself a token skips merging (HF's `ignore_merges`).
    pub ignore_merges: bool,
}

impl TokenizerBuilder {
    /// Serializes the section. Errors name the inconsistency (a merge whose
    /// concatenation is not in the vocabulary, duplicate tokens, ...).
    pub fn to_bytes(&self) -> Result<Vec<u8>, String> {
        self.to_bytes_ranked(None)
    }

    /// As [`TokenizerBuilder::to_bytes`], with merge `i` ranked `ranks[i]`
    /// instead of `i` (equal ranks are allowed: of equal-ranked pairs the
    /// leftmost merges first). `ranks` must be as long as `merges`, each
    /// below `merges.len()`.
    pub fn to_bytes_ranked(&self, ranks: Option<&[u32]>) -> Result<Vec<u8>, String> {
        if let Some(r) = ranks {
            if r.len() != self.merges.len() || r.iter().any(|&x| x as usize >= self.merges.len()) {
                return Err(format!(
                    "{} merge ranks for {} merges, or a rank out of range",
                    r.len(),
                    self.merges.len()
                ));
            }
        }
        let n = self.tokens.len();
        if n == 0 || n > u32::MAX as usize / 2 {
            return Err(format!("vocabulary of {n} tokens"));
        }
        let mut by_bytes: HashMap<&[u8], u32> = HashMap::with_capacity(n);
        for (id, t) in self.tokens.iter().enumerate() {
            if by_bytes.insert(&t.bytes, id as u32).is_some() {
                return Err(format!(
                    "two tokens have the bytes {:?} (second: id {id})",
                    String::from_utf8_lossy(&t.bytes)
                ));
            }
        }
        let mut merges = Vec::with_capacity(self.merges.len());
        for (rank, &(l, r)) in self.merges.iter().enumerate() {
            let (lb, rb) = match (self.tokens.get(l as usize), self.tokens.get(r as usize)) {
                (Some(a), Some(b)) => (&a.bytes, &b.bytes),
                _ => return Err(format!("merge #{rank} names a token id out of range")),
            };
            let joined = [lb.as_slice(), rb.as_slice()].concat();
            let result = *by_bytes.get(joined.as_slice()).ok_or_else(|| {
                format!(
                    "merge #{rank} ({:?} + {:?}) produces a token missing from the vocabulary",
                    String::from_utf8_lossy(lb),
                    String::from_utf8_lossy(rb)
                )
            })?;
            let rank = ranks.map_or(rank as u32, |r| r[rank]);
            merges.push(Merge { left: l, right: r, rank, result });
        }
        merges.sort_by_key(|m| (m.left, m.right));
        // Duplicate pairs: keep the first (lowest rank), as HF does.
        merges.dedup_by(|b, a| {
            if (a.left, a.right) == (b.left, b.right) {
                a.rank = a.rank.min(b.rank);
                true
            } else {
                false
            }
        });
        let mut sorted: Vec<u32> = (0..n as u32).collect();
        sorted.sort_by(|&a, &b| self.tokens[a as usize].bytes.cmp(&self.tokens[b as usize].bytes));

        let mut buf = vec![0u8; TOKENIZER_HEADER_SIZE];
        let put = |buf: &mut Vec<u8>, bytes: &[u8]| -> u32 {
            while !buf.len().is_multiple_of(4) {
                buf.push(0);
            }
            let off = buf.len() as u32;
            buf.extend_from_slice(bytes);
            off
        };
        let mut offsets = Vec::with_capacity(n + 1);
        let mut strings = Vec::new();
        offsets.push(0u32);
        for t in &self.tokens {
            strings.extend_from_slice(&t.bytes);
            offsets.push(strings.len() as u32);
        }
        let types: Vec<u8> = self.tokens.iter().map(|t| t.ty as u8).collect();
        let scores: Vec<f32> = self.tokens.iter().map(|t| t.score).collect();
        let template = self.chat_template.as_deref().unwrap_or("").as_bytes();

        let offsets_off = put(&mut buf, bytemuck::cast_slice(&offsets));
        let strings_off = put(&mut buf, &strings);
        let sorted_off = put(&mut buf, bytemuck::cast_slice(&sorted));
        let types_off = put(&mut buf, &types);
        let scores_off = if self.has_scores { put(&mut buf, bytemuck::cast_slice(&scores)) } else { 0 };
        let merges_off = put(&mut buf, bytemuck::cast_slice(&merges));
        let byte_tokens_off = put(&mut buf, bytemuck::cast_slice(&self.byte_tokens));
        let specials_off = put(&mut buf, bytemuck::cast_slice(&self.specials));
        let template_off = put(&mut buf, template);
        while !buf.len().is_multiple_of(4) {
            buf.push(0);
        }
        if buf.len() > u32::MAX as usize {
            return Err("tokenizer section exceeds 4 GiB".into());
        }
        let mut flags = 0;
        if self.byte_fallback {
            flags |= TokenizerHeader::FLAG_BYTE_FALLBACK;
        }
        if self.ignore_merges {
            flags |= TokenizerHeader::FLAG_IGNORE_MERGES;
        }
        if self.add_prefix_space {
            flags |= TokenizerHeader::FLAG_ADD_PREFIX_SPACE;
        }
        if self.has_scores {
            flags |= TokenizerHeader::FLAG_HAS_SCORES;
        }
        if self.eot.is_some() {
            flags |= TokenizerHeader::FLAG_HAS_EOT;
        }
        if self.unk.is_some() {
            flags |= TokenizerHeader::FLAG_HAS_UNK;
        }
        let header = TokenizerHeader {
            kind: self.kind as u32,
            pretokenizer: self.pretokenizer as u32,
            n_tokens: n as u32,
            n_merges: self.merges.len() as u32,
            flags,
            eot_id: self.eot.unwrap_or(0),
            unk_id: self.unk.unwrap_or(0),
            n_specials: self.specials.len() as u32,
            offsets_off,
            strings_off,
            strings_len: strings.len() as u32,
            sorted_off,
            types_off,
            scores_off,
            merges_off,
            byte_tokens_off,
            specials_off,
            template_off,
            template_len: template.len() as u32,
            section_size: buf.len() as u32,
            reserved: [0; 16],
        };
        // `n_merges` in the header counts the deduplicated table.
        let header = TokenizerHeader { n_merges: merges.len() as u32, ..header };
        buf[..TOKENIZER_HEADER_SIZE].copy_from_slice(bytemuck::bytes_of(&header));
        Ok(buf)
    }
}

/// Bytes held in 64-byte aligned memory, as [`crate::File::parse`] requires.
#[derive(Clone)]
pub struct AlignedBytes {
    blocks: Vec<Block>,
    len: usize,
}

#[repr(C, align(64))]
#[derive(Clone, Copy)]
struct Block([u8; ALIGN]);

// SAFETY: `Block` is a plain byte array with alignment padding that cannot
// exist (size == alignment), so every bit pattern is valid and it has no padding.
unsafe impl bytemuck::Zeroable for Block {}
// SAFETY: as above; `Block` is `Copy`, `repr(C)`, with no padding bytes.
unsafe impl bytemuck::Pod for Block {}

impl AlignedBytes {
    /// Copies `bytes` into aligned memory.
    pub fn new(bytes: &[u8]) -> Self {
        let mut blocks = vec![Block([0; ALIGN]); bytes.len().div_ceil(ALIGN)];
        bytemuck::cast_slice_mut::<Block, u8>(&mut blocks)[..bytes.len()].copy_from_slice(bytes);
        AlignedBytes { blocks, len: bytes.len() }
    }
    /// Reads a whole file into aligned memory.
    pub fn read(path: &std::path::Path) -> io::Result<Self> {
        let bytes = std::fs::read(path)?;
        Ok(Self::new(&bytes))
    }
    /// The bytes.
    pub fn as_slice(&self) -> &[u8] {
        &bytemuck::cast_slice::<Block, u8>(&self.blocks)[..self.len]
    }
    /// The bytes, mutably (for corruption tests).
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut bytemuck::cast_slice_mut::<Block, u8>(&mut self.blocks)[..self.len]
    }
}

impl std::ops::Deref for AlignedBytes {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}
