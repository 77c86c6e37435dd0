//! The tokenizer section: vocabulary, merges, byte mapping, special tokens,
//! pre-tokenizer kind and chat template, as flat tables a `no_std` encoder
//! can search without hashing or allocating. See `SPEC.md` § Tokenizer.

use bytemuck::{Pod, Zeroable};

use crate::Error;

/// Marks a byte without a token in the byte table.
pub const NO_TOKEN: u32 = u32::MAX;

/// Size of [`TokenizerHeader`] in bytes.
pub const TOKENIZER_HEADER_SIZE: usize = 96;

stored_enum! {
    /// Tokenizer model family.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum TokenizerKind: u32 as "tokenizer kind" {
        /// GPT-2 style byte-level BPE: tokens are raw byte strings, every byte has
        /// a token, merges are ranked.
        ByteLevelBpe = 1,
        /// SentencePiece-style BPE (Llama 2, TinyLlama, Mistral v0.1): token
        /// strings hold spaces where SentencePiece writes `▁`, byte-fallback
        /// tokens `<0xXX>` (type [`TokenType::Byte`]) stand for the byte
        /// `byte_tokens` maps to them, BPE runs over characters on the whole text
        /// between added tokens (no pre-tokenizer), with a space prepended to each
        /// such piece when [`TokenizerHeader::FLAG_ADD_PREFIX_SPACE`] is set.
        SentencePiece = 2,
    }
}

stored_enum! {
    /// How text is split into chunks before BPE runs on each chunk.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum PreTokenizer: u32 as "pre-tokenizer" {
        /// No split: the whole text (between special tokens) is one chunk.
        None = 0,
        /// GPT-2's regex (`ByteLevel` with `use_regex`):
        /// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`.
        Gpt2 = 1,
        /// `Digits(individual_digits)` then GPT-2's regex (SmolLM/SmolLM2).
        Gpt2Digits = 2,
        /// Llama 3's regex (also DBRX, Smaug):
        /// `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`.
        Llama3 = 3,
        /// Qwen2's regex: Llama 3's with `\p{N}` (one numeric character) in
        /// place of `\p{N}{1,3}`.
        Qwen2 = 4,
    }
}

stored_enum! {
    /// Type of a vocabulary entry.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum TokenType: u8 {
        /// An ordinary token produced by BPE.
        Normal = 0,
        /// A special/control token (e.g. `<|im_start|>`): matched verbatim in
        /// input, skipped when decoding with specials hidden.
        Special = 1,
        /// A user-defined added token: matched verbatim, decoded as text.
        Added = 2,
        /// A byte-fallback token `<0xXX>` (SentencePiece).
        Byte = 3,
        /// The unknown token.
        Unknown = 4,
    }
}

/// Fixed header of the tokenizer section. Offsets are relative to the
/// section start; every table starts 4-byte aligned.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct TokenizerHeader {
    /// [`TokenizerKind`].
    pub kind: u32,
    /// [`PreTokenizer`].
    pub pretokenizer: u32,
    /// Vocabulary entries.
    pub n_tokens: u32,
    /// Merge rules.
    pub n_merges: u32,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// End-of-turn token (valid with [`TokenizerHeader::FLAG_HAS_EOT`]).
    pub eot_id: u32,
    /// Unknown token (valid with [`TokenizerHeader::FLAG_HAS_UNK`]).
    pub unk_id: u32,
    /// Number of added tokens matched verbatim in input.
    pub n_specials: u32,
    /// `[u32; n_tokens + 1]`: start of each token's bytes in the string blob.
    pub offsets_off: u32,
    /// The concatenated token byte strings.
    pub strings_off: u32,
    /// Length of the string blob.
    pub strings_len: u32,
    /// `[u32; n_tokens]`: token ids sorted by their byte strings.
    pub sorted_off: u32,
    /// `[u8; n_tokens]`: [`TokenType`] of each token.
    pub types_off: u32,
    /// `[f32; n_tokens]` scores (with [`TokenizerHeader::FLAG_HAS_SCORES`]), else 0.
    pub scores_off: u32,
    /// `[Merge; n_merges]` sorted by `(left, right)`.
    pub merges_off: u32,
    /// `[u32; 256]`: the token of each single byte, or [`NO_TOKEN`] for a
    /// byte the vocabulary lacks (HF drops such bytes when there is no
    /// unknown token).
    pub byte_tokens_off: u32,
    /// `[u32; n_specials]`: ids of added tokens.
    pub specials_off: u32,
    /// The chat template (UTF-8 Jinja source).
    pub template_off: u32,
    /// Length of the chat template; 0 if none.
    pub template_len: u32,
    /// Total section size (must equal the header's `tok_size`).
    pub section_size: u32,
    /// Reserved, zero.
    pub reserved: [u8; 16],
}

const _: () = assert!(core::mem::size_of::<TokenizerHeader>() == TOKENIZER_HEADER_SIZE);

impl TokenizerHeader {
    /// SentencePiece byte fallback: unknown characters become `<0xXX>` tokens.
    pub const FLAG_BYTE_FALLBACK: u32 = 1 << 0;
    /// A space is prepended to the input before splitting.
    pub const FLAG_ADD_PREFIX_SPACE: u32 = 1 << 1;
    /// The scores table is present.
    pub const FLAG_HAS_SCORES: u32 = 1 << 2;
    /// `eot_id` is valid.
    pub const FLAG_HAS_EOT: u32 = 1 << 3;
    /// `unk_id` is valid.
    pub const FLAG_HAS_UNK: u32 = 1 << 4;
    /// A pre-tokenized chunk that is itself a token becomes that token
    /// without merging (HF's `ignore_merges`: Llama 3).
    pub const FLAG_IGNORE_MERGES: u32 = 1 << 5;
    const KNOWN_FLAGS: u32 = 0b11_1111;
}

/// One merge rule: `left` followed by `right` becomes `result`; lower `rank`
/// merges first.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct Merge {
    /// Left token id.
    pub left: u32,
    /// Right token id.
    pub right: u32,
    /// Priority: position in the original merge list.
    pub rank: u32,
    /// The merged token id.
    pub result: u32,
}

/// The byte of a byte-fallback token's text `<0xHH>` (hex digits of
/// either case), or `None` if `text` is not of that form.
pub fn parse_byte_token(text: &[u8]) -> Option<u8> {
    let hex = |c: u8| (c as char).to_digit(16);
    match text {
        [b'<', b'0', b'x', hi, lo, b'>'] => Some((hex(*hi)? * 16 + hex(*lo)?) as u8),
        _ => None,
    }
}

/// A validated, zero-copy view of a tokenizer section.
#[derive(Clone, Copy, Debug)]
pub struct TokenizerView<'a> {
    header: TokenizerHeader,
    offsets: &'a [u32],
    strings: &'a [u8],
    sorted: &'a [u32],
    types: &'a [u8],
    scores: &'a [f32],
    merges: &'a [Merge],
    byte_tokens: &'a [u32],
    specials: &'a [u32],
    template: &'a [u8],
}

fn table<'a, T: Pod>(section: &'a [u8], what: &'static str, off: u32, count: u64) -> Result<&'a [T], Error> {
    let size = core::mem::size_of::<T>() as u64;
    let len = count.checked_mul(size).ok_or(Error::Overflow { what })?;
    let start = off as u64;
    let end = start.checked_add(len).ok_or(Error::Overflow { what })?;
    if start < TOKENIZER_HEADER_SIZE as u64 && len > 0 {
        return Err(Error::OutOfBounds { what, offset: start, len, limit: section.len() as u64 });
    }
    if end > section.len() as u64 {
        return Err(Error::OutOfBounds { what, offset: start, len, limit: section.len() as u64 });
    }
    let bytes = &section[start as usize..end as usize];
    bytemuck::try_cast_slice(bytes).map_err(|_| Error::Misaligned {
        what,
        address: bytes.as_ptr() as usize,
        required: core::mem::align_of::<T>(),
    })
}

impl<'a> TokenizerView<'a> {
    /// Parses and fully validates a tokenizer section. `section` must start
    /// 4-byte aligned (it is 64-byte aligned inside a [`crate::File`]).
    /// `vocab_size` is the model's; the tokenizer may not name tokens beyond it.
    pub fn parse(section: &'a [u8], vocab_size: u32) -> Result<Self, Error> {
        if section.len() < TOKENIZER_HEADER_SIZE {
            return Err(Error::Truncated {
                what: "tokenizer header",
                needed: TOKENIZER_HEADER_SIZE as u64,
                available: section.len() as u64,
            });
        }
        let header: TokenizerHeader = bytemuck::pod_read_unaligned(&section[..TOKENIZER_HEADER_SIZE]);
        if header.section_size as u64 != section.len() as u64 {
            return Err(Error::BadLayout {
                what: "tokenizer section_size",
                found: header.section_size as u64,
                expected: section.len() as u64,
            });
        }
        if header.reserved.iter().any(|&b| b != 0) {
            return Err(Error::ReservedNotZero { what: "tokenizer header" });
        }
        TokenizerKind::from_u32(header.kind)?;
        PreTokenizer::from_u32(header.pretokenizer)?;
        if header.flags & !TokenizerHeader::KNOWN_FLAGS != 0 {
            return Err(Error::BadEnum { what: "tokenizer flags", value: header.flags });
        }
        let n = header.n_tokens;
        if n == 0 || n > vocab_size {
            return Err(Error::BadTokenizer { what: "n_tokens (zero or above vocab_size)", index: n });
        }
        let n64 = n as u64;
        let offsets: &[u32] = table(section, "tokenizer offsets", header.offsets_off, n64 + 1)?;
        let strings: &[u8] = table(section, "tokenizer strings", header.strings_off, header.strings_len as u64)?;
        let sorted: &[u32] = table(section, "tokenizer sorted ids", header.sorted_off, n64)?;
        let types: &[u8] = table(section, "tokenizer types", header.types_off, n64)?;
        let has_scores = header.flags & TokenizerHeader::FLAG_HAS_SCORES != 0;
        let scores: &[f32] = if has_scores { table(section, "tokenizer scores", header.scores_off, n64)? } else { &[] };
        let merges: &[Merge] = table(section, "tokenizer merges", header.merges_off, header.n_merges as u64)?;
        let byte_tokens: &[u32] = table(section, "tokenizer byte tokens", header.byte_tokens_off, 256)?;
        let specials: &[u32] = table(section, "tokenizer specials", header.specials_off, header.n_specials as u64)?;
        let template: &[u8] = table(section, "chat template", header.template_off, header.template_len as u64)?;

        // Offsets: start at 0, non-decreasing, end at the blob length.
        if offsets[0] != 0 {
            return Err(Error::BadTokenizer { what: "offsets", index: 0 });
        }
        for i in 0..n as usize {
            if offsets[i + 1] < offsets[i] {
                return Err(Error::BadTokenizer { what: "offsets", index: i as u32 + 1 });
            }
        }
        if offsets[n as usize] != header.strings_len {
            return Err(Error::BadTokenizer { what: "offsets (end != strings_len)", index: n });
        }
        for (i, &t) in types.iter().enumerate() {
            if TokenType::decode(t).is_none() {
                return Err(Error::BadTokenizer { what: "token type", index: i as u32 });
            }
        }
        let view_strings = |i: usize| &strings[offsets[i] as usize..offsets[i + 1] as usize];
        for (i, &t) in types.iter().enumerate() {
            if t == TokenType::Byte as u8 && parse_byte_token(view_strings(i)).is_none() {
                return Err(Error::BadTokenizer { what: "byte token (not `<0xHH>`)", index: i as u32 });
            }
        }
        if scores.iter().any(|s| !s.is_finite()) {
            return Err(Error::BadTokenizer { what: "scores (non-finite)", index: 0 });
        }
        let view =
            TokenizerView { header, offsets, strings, sorted, types, scores, merges, byte_tokens, specials, template };
        // Sorted ids: each in range and strictly ascending by bytes, which
        // also proves they are distinct, hence a permutation.
        for (i, &id) in sorted.iter().enumerate() {
            if id >= n {
                return Err(Error::BadTokenizer { what: "sorted ids (id out of range)", index: i as u32 });
            }
            if i > 0 && view.bytes_unchecked(sorted[i - 1]) >= view.bytes_unchecked(id) {
                return Err(Error::BadTokenizer { what: "sorted ids (not strictly ascending)", index: i as u32 });
            }
        }
        for (i, m) in merges.iter().enumerate() {
            if m.left >= n || m.right >= n || m.result >= n || m.rank >= header.n_merges {
                return Err(Error::BadTokenizer { what: "merge (id or rank out of range)", index: i as u32 });
            }
            if i > 0 {
                let p = &merges[i - 1];
                if (p.left, p.right) >= (m.left, m.right) {
                    return Err(Error::BadTokenizer { what: "merges (not sorted by pair)", index: i as u32 });
                }
            }
        }
        if let Some(i) = byte_tokens.iter().position(|&id| id >= n && id != NO_TOKEN) {
            return Err(Error::BadTokenizer { what: "byte tokens (id out of range)", index: i as u32 });
        }
        if let Some(i) = specials.iter().position(|&id| id >= n || view.bytes_unchecked(id).is_empty()) {
            return Err(Error::BadTokenizer { what: "specials (id out of range or empty)", index: i as u32 });
        }
        let flag_ok = |flag: u32, id: u32| header.flags & flag == 0 || id < n;
        if !flag_ok(TokenizerHeader::FLAG_HAS_EOT, header.eot_id) {
            return Err(Error::BadTokenizer { what: "eot id", index: header.eot_id });
        }
        if !flag_ok(TokenizerHeader::FLAG_HAS_UNK, header.unk_id) {
            return Err(Error::BadTokenizer { what: "unk id", index: header.unk_id });
        }
        Ok(view)
    }

    fn bytes_unchecked(&self, id: u32) -> &'a [u8] {
        let i = id as usize;
        &self.strings[self.offsets[i] as usize..self.offsets[i + 1] as usize]
    }

    /// The raw header.
    pub fn header(&self) -> &TokenizerHeader {
        &self.header
    }
    /// Tokenizer family.
    pub fn kind(&self) -> TokenizerKind {
        // Validated in `parse`.
        TokenizerKind::from_u32(self.header.kind).unwrap_or(TokenizerKind::ByteLevelBpe)
    }
    /// Pre-tokenizer.
    pub fn pretokenizer(&self) -> PreTokenizer {
        PreTokenizer::from_u32(self.header.pretokenizer).unwrap_or(PreTokenizer::None)
    }
    /// Vocabulary entries.
    pub fn n_tokens(&self) -> u32 {
        self.header.n_tokens
    }
    /// Number of merge rules.
    pub fn n_merges(&self) -> u32 {
        self.header.n_merges
    }
    /// Byte string of token `id` (raw bytes; byte-level BPE's unicode
    /// mapping is already undone), or `None` if out of range.
    pub fn token_bytes(&self, id: u32) -> Option<&'a [u8]> {
        (id < self.header.n_tokens).then(|| self.bytes_unchecked(id))
    }
    /// Type of token `id`.
    pub fn token_type(&self, id: u32) -> Option<TokenType> {
        self.types.get(id as usize).and_then(|&t| TokenType::decode(t))
    }
    /// Score of token `id` (SentencePiece), if the table is present.
    pub fn score(&self, id: u32) -> Option<f32> {
        self.scores.get(id as usize).copied()
    }
    /// The byte a byte-fallback token ([`TokenType::Byte`], text `<0xHH>`)
    /// stands for; `None` for other tokens.
    pub fn byte_value(&self, id: u32) -> Option<u8> {
        if self.token_type(id)? != TokenType::Byte {
            return None;
        }
        parse_byte_token(self.bytes_unchecked(id))
    }
    /// The token whose bytes are exactly `bytes` (binary search, no hashing).
    pub fn find(&self, bytes: &[u8]) -> Option<u32> {
        self.sorted.binary_search_by(|&id| self.bytes_unchecked(id).cmp(bytes)).ok().map(|i| self.sorted[i])
    }
    /// The merge of `left` then `right`: `(rank, result)`.
    pub fn merge(&self, left: u32, right: u32) -> Option<(u32, u32)> {
        self.merges
            .binary_search_by(|m| (m.left, m.right).cmp(&(left, right)))
            .ok()
            .map(|i| (self.merges[i].rank, self.merges[i].result))
    }
    /// The token of a single byte, if the vocabulary has one.
    pub fn byte_token(&self, byte: u8) -> Option<u32> {
        let id = self.byte_tokens[byte as usize];
        (id != NO_TOKEN).then_some(id)
    }
    /// Ids of the added tokens matched verbatim in input text.
    pub fn specials(&self) -> &'a [u32] {
        self.specials
    }
    /// The chat template (UTF-8 Jinja source), empty if none.
    pub fn chat_template(&self) -> &'a [u8] {
        self.template
    }
    /// The end-of-turn token, if any.
    pub fn eot(&self) -> Option<u32> {
        (self.header.flags & TokenizerHeader::FLAG_HAS_EOT != 0).then_some(self.header.eot_id)
    }
    /// The unknown token, if any.
    pub fn unk(&self) -> Option<u32> {
        (self.header.flags & TokenizerHeader::FLAG_HAS_UNK != 0).then_some(self.header.unk_id)
    }
    /// Whether SentencePiece byte fallback is on.
    pub fn byte_fallback(&self) -> bool {
        self.header.flags & TokenizerHeader::FLAG_BYTE_FALLBACK != 0
    }
    /// Whether a chunk that is itself a token skips merging.
    pub fn ignore_merges(&self) -> bool {
        self.header.flags & TokenizerHeader::FLAG_IGNORE_MERGES != 0
    }
    /// Whether a prefix space is added.
    pub fn add_prefix_space(&self) -> bool {
        self.header.flags & TokenizerHeader::FLAG_ADD_PREFIX_SPACE != 0
    }
}
