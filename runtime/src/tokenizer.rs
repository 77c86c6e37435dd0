//! BPE tokenizers over the tokenizer section of a Ferrite file: byte-level
//! BPE (the GPT-2 family: SmolLM/SmolLM2, Llama 3, Qwen2, ...) and
//! SentencePiece-style BPE (Llama 2, TinyLlama, Mistral v0.1, Phi-3).
//!
//! Encoding follows Hugging Face `tokenizers` step by step, so that ids
//! match `Tokenizer::encode(text, add_special_tokens = false)` exactly:
//!
//! 1. added tokens ([`TokenizerView::specials`]) are cut out of the text
//!    verbatim, leftmost match first and the longest one at a position;
//! 2. byte-level BPE: the text between them is split by the pre-tokenizer:
//!    `Digits(individual_digits)` isolates every numeric character (Rust's
//!    [`char::is_numeric`], as HF does), then GPT-2's regex
//!    `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
//!    cuts chunks, matched here by hand ([`gpt2_match_len`]) with Unicode 16
//!    general categories, the version HF's bundled Oniguruma uses; Llama 3's
//!    and Qwen2's regexes likewise ([`llama3_match_len`]);
//! 3. each chunk's bytes become byte tokens (a byte without one becomes the
//!    unknown token, or is dropped when there is none, as in HF) and the
//!    adjacent pair with the lowest merge rank is merged (leftmost on ties)
//!    until no pair merges.
//!
//! SentencePiece-style BPE has no pre-tokenizer: the whole text between
//! added tokens (with a space prepended when the section says so) becomes
//! one token per character (token strings hold spaces where SentencePiece
//! writes `▁`), a character missing from the vocabulary becomes its UTF-8
//! bytes' `<0xXX>` tokens (byte fallback), and the same ranked merging runs
//! over the whole piece.
//!
//! Nothing allocates: BPE runs in place in the caller's output buffer, and
//! decoding writes into a caller's byte buffer or streams through
//! [`Utf8Stream`], which carries at most 3 bytes of an unfinished character.
//!
//! ```no_run
//! # fn demo(view: ferrite_format::TokenizerView<'_>) -> Result<(), ferrite_runtime::tokenizer::TokenizerError> {
//! use ferrite_runtime::tokenizer::{Tokenizer, Utf8Stream};
//! let tokenizer = Tokenizer::new(view)?;
//! let text = "Once upon a time";
//! let mut ids = [0u32; 64]; // `Tokenizer::max_tokens(text.len())` always suffices
//! let n = tokenizer.encode(text, &mut ids)?;
//! let mut stream = Utf8Stream::new();
//! for &id in &ids[..n] {
//!     stream.push(tokenizer.token_bytes(id)?, |s| print!("{s}"));
//! }
//! stream.finish(|s| print!("{s}"));
//! # Ok(()) }
//! ```

use core::fmt;

use ferrite_format::tokenizer::{PreTokenizer, TokenType, TokenizerKind};
use ferrite_format::TokenizerView;
use unicode_general_category::{get_general_category, GeneralCategory};

/// Tokens of a chunk merged on the stack (with their pair ranks) when the
/// caller's buffer has no room to merge in place: 2 × 64 × 4 = 512 bytes.
const STACK_TOKENS: usize = 64;

/// Rank of a pair that has no merge rule (validated ranks are below
/// `n_merges`, hence below this).
const NO_MERGE: u32 = u32::MAX;

/// Why the tokenizer refused. Never a panic.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TokenizerError {
    /// The output buffer cannot hold the result (see [`Tokenizer::encode`]
    /// for the room encoding needs).
    BufferTooSmall {
        /// Length of the buffer given.
        capacity: usize,
    },
    /// A token id is not in the vocabulary.
    BadToken {
        /// The id.
        id: u32,
        /// Number of tokens in the vocabulary.
        n_tokens: u32,
    },
    /// The tokenizer section asks for something this runtime does not
    /// implement yet.
    Unsupported {
        /// What it is.
        what: &'static str,
    },
}

impl fmt::Display for TokenizerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Self::BufferTooSmall { capacity } => {
                write!(f, "tokenizer output buffer too small ({capacity} slots)")
            }
            Self::BadToken { id, n_tokens } => {
                write!(f, "token id {id} is not in the vocabulary of {n_tokens} tokens")
            }
            Self::Unsupported { what } => write!(f, "unsupported tokenizer: {what}"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for TokenizerError {}

/// Each byte value, so a byte-fallback token can be handed out as a
/// one-byte slice.
static BYTE_VALUES: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = i as u8;
        i += 1;
    }
    table
};

/// A BPE tokenizer borrowing a validated tokenizer section.
#[derive(Clone, Copy, Debug)]
pub struct Tokenizer<'a> {
    view: TokenizerView<'a>,
}

impl<'a> Tokenizer<'a> {
    /// Wraps a validated section. Refuses what the encoder does not
    /// implement: byte fallback or a prefix space with byte-level BPE, a
    /// pre-tokenizer with SentencePiece.
    pub fn new(view: TokenizerView<'a>) -> Result<Self, TokenizerError> {
        match view.kind() {
            TokenizerKind::ByteLevelBpe => {
                if view.byte_fallback() {
                    return Err(TokenizerError::Unsupported { what: "byte fallback with byte-level BPE" });
                }
                if view.add_prefix_space() {
                    return Err(TokenizerError::Unsupported { what: "add_prefix_space with byte-level BPE" });
                }
            }
            TokenizerKind::SentencePiece => {
                if view.pretokenizer() != PreTokenizer::None {
                    return Err(TokenizerError::Unsupported { what: "a pre-tokenizer with SentencePiece" });
                }
            }
        }
        Ok(Self { view })
    }

    fn is_spm(&self) -> bool {
        self.view.kind() == TokenizerKind::SentencePiece
    }

    /// The underlying section.
    pub fn view(&self) -> &TokenizerView<'a> {
        &self.view
    }

    /// Number of tokens in the vocabulary.
    pub fn n_tokens(&self) -> u32 {
        self.view.n_tokens()
    }

    /// The end-of-turn token, if the section names one.
    pub fn eot(&self) -> Option<u32> {
        self.view.eot()
    }

    /// Output slots that always suffice for [`Tokenizer::encode`] of a text
    /// of `text_len` bytes: `2 * text_len + 2`. Byte-level BPE needs at most
    /// one per byte; SentencePiece at most 1.5 per byte (a prefix space
    /// before each piece between added tokens), and with this much room it
    /// merges a piece with its pair ranks cached in the spare slots instead
    /// of recomputing them every round.
    pub const fn max_tokens(text_len: usize) -> usize {
        text_len.saturating_mul(2).saturating_add(2)
    }

    /// Encodes `text` into `out` and returns the number of ids written.
    /// Added tokens (`<|im_start|>`, ...) found in the text become their
    /// ids, as in HF `encode(text, add_special_tokens=False)`.
    ///
    /// Merging happens in place in `out`, so besides the ids it needs room
    /// for the bytes of the chunk being merged; a chunk of up to 64 bytes is
    /// merged on the stack when `out` lacks that room. Hence
    /// [`TokenizerError::BufferTooSmall`] comes back when the ids do not
    /// fit, or (only for a chunk longer than 64 bytes) when its bytes do not
    /// fit in what is left; `out.len() >= text.len()` always suffices. Slots
    /// past the returned count are scratch: their contents are unspecified.
    pub fn encode(&self, text: &str, out: &mut [u32]) -> Result<usize, TokenizerError> {
        self.encode_inner(text, out, true)
    }

    /// As [`Tokenizer::encode`], but special (control) tokens are not
    /// matched: `<|im_end|>` in the text is encoded as the characters it is
    /// made of, while user-defined added tokens ([`TokenType::Added`]) still
    /// are. Use it for untrusted text (a chat user's message) that must not
    /// inject control tokens; it is HF's `encode_special_tokens = True`.
    pub fn encode_ordinary(&self, text: &str, out: &mut [u32]) -> Result<usize, TokenizerError> {
        self.encode_inner(text, out, false)
    }

    fn encode_inner(&self, text: &str, out: &mut [u32], specials: bool) -> Result<usize, TokenizerError> {
        let bytes = text.as_bytes();
        let first_bytes = self.added_first_bytes(specials);
        let mut n = 0;
        let mut start = 0;
        let mut pos = 0;
        while pos < bytes.len() {
            if first_bytes.contains(bytes[pos]) {
                if let Some((id, len)) = self.added_at(text, pos, specials) {
                    self.encode_text_into(str_slice(text, start, pos), out, &mut n)?;
                    push(out, &mut n, id)?;
                    pos += len;
                    start = pos;
                    continue;
                }
            }
            pos += 1;
        }
        self.encode_text_into(str_slice(text, start, bytes.len()), out, &mut n)?;
        Ok(n)
    }

    /// The bytes of token `id`: raw bytes for ordinary tokens (possibly an
    /// incomplete UTF-8 character: see [`Utf8Stream`]), the one byte a
    /// byte-fallback token `<0xXX>` stands for, the text of an added token.
    pub fn token_bytes(&self, id: u32) -> Result<&'a [u8], TokenizerError> {
        if let Some(b) = self.view.byte_value(id) {
            let b = b as usize;
            return Ok(&BYTE_VALUES[b..b + 1]);
        }
        self.view.token_bytes(id).ok_or(TokenizerError::BadToken { id, n_tokens: self.view.n_tokens() })
    }

    /// Whether `id` is a special (control) token such as `<|im_end|>` or
    /// the unknown token `<unk>`, the kind HF's `skip_special_tokens` hides.
    /// User-defined added tokens are not special.
    pub fn is_special(&self, id: u32) -> bool {
        matches!(self.view.token_type(id), Some(TokenType::Special | TokenType::Unknown))
    }

    /// Writes the bytes of `ids` into `out` and returns how many were
    /// written; special tokens are written as their text, as HF's
    /// `decode(ids, skip_special_tokens=False)`. Decoding what
    /// [`Tokenizer::encode`] gave returns the text's bytes exactly, less any
    /// byte the vocabulary has no token for (HF drops those); HF's string
    /// is `String::from_utf8_lossy` of the bytes.
    pub fn decode(&self, ids: &[u32], out: &mut [u8]) -> Result<usize, TokenizerError> {
        self.decode_inner(ids, out, false)
    }

    /// As [`Tokenizer::decode`] but leaves special tokens out, as HF's
    /// `decode(ids, skip_special_tokens=True)`.
    pub fn decode_skip_special(&self, ids: &[u32], out: &mut [u8]) -> Result<usize, TokenizerError> {
        self.decode_inner(ids, out, true)
    }

    fn decode_inner(&self, ids: &[u32], out: &mut [u8], skip_special: bool) -> Result<usize, TokenizerError> {
        let too_small = TokenizerError::BufferTooSmall { capacity: out.len() };
        // SentencePiece prepends a space when encoding; decoding drops one
        // leading space again (HF's `Strip` decoder).
        let strip_space = self.is_spm() && self.view.add_prefix_space();
        let mut n = 0usize;
        for &id in ids {
            let mut bytes = self.token_bytes(id)?;
            if skip_special && self.is_special(id) {
                continue;
            }
            if n == 0 && strip_space {
                if let Some(rest) = bytes.strip_prefix(b" ") {
                    bytes = rest;
                }
            }
            let dst = n.checked_add(bytes.len()).and_then(|end| out.get_mut(n..end)).ok_or(too_small)?;
            dst.copy_from_slice(bytes);
            n += bytes.len();
        }
        Ok(n)
    }

    /// Whether added token `id` is matched in input: all are, except
    /// special ones (control and unknown tokens) when `specials` is false.
    fn matched(&self, id: u32, specials: bool) -> bool {
        specials || !self.is_special(id)
    }

    /// Which bytes start a matched added token, so that most positions of
    /// the text are skipped without comparing strings.
    fn added_first_bytes(&self, specials: bool) -> ByteSet {
        let mut set = ByteSet::default();
        for &id in self.view.specials() {
            if let Some(&b) = self.view.token_bytes(id).and_then(|t| t.first()) {
                if self.matched(id, specials) {
                    set.insert(b);
                }
            }
        }
        set
    }

    /// The longest matched added token that starts at byte `pos` of
    /// `text`: `(id, byte length)`. Matches start and end on character
    /// boundaries (always true of a UTF-8 token, checked because the section
    /// is untrusted).
    fn added_at(&self, text: &str, pos: usize, specials: bool) -> Option<(u32, usize)> {
        if !text.is_char_boundary(pos) {
            return None;
        }
        let rest = text.as_bytes().get(pos..)?;
        let mut best: Option<(u32, usize)> = None;
        for &id in self.view.specials() {
            let Some(token) = self.view.token_bytes(id) else {
                continue;
            };
            let longer = token.len() > best.map_or(0, |(_, len)| len);
            if longer
                && rest.starts_with(token)
                && text.is_char_boundary(pos + token.len())
                && self.matched(id, specials)
            {
                best = Some((id, token.len()));
            }
        }
        best
    }

    /// Pre-tokenizes `text` (no added tokens in it) and appends each chunk's
    /// BPE tokens at `out[*n..]`.
    fn encode_text_into(&self, text: &str, out: &mut [u32], n: &mut usize) -> Result<(), TokenizerError> {
        if self.is_spm() {
            return self.encode_spm(text, out, n);
        }
        match self.view.pretokenizer() {
            PreTokenizer::None => self.encode_chunk(text.as_bytes(), out, n),
            PreTokenizer::Gpt2 => {
                for chunk in Gpt2Chunks::new(text) {
                    self.encode_chunk(chunk.as_bytes(), out, n)?;
                }
                Ok(())
            }
            PreTokenizer::Gpt2Digits => {
                for piece in DigitPieces::new(text) {
                    for chunk in Gpt2Chunks::new(piece) {
                        self.encode_chunk(chunk.as_bytes(), out, n)?;
                    }
                }
                Ok(())
            }
            PreTokenizer::Llama3 | PreTokenizer::Qwen2 => {
                let max_digits = if self.view.pretokenizer() == PreTokenizer::Llama3 { 3 } else { 1 };
                let mut rest = text;
                while !rest.is_empty() {
                    let len = llama3_match_len(rest, max_digits);
                    let Some((chunk, tail)) = rest.split_at_checked(len) else {
                        break;
                    };
                    self.encode_chunk(chunk.as_bytes(), out, n)?;
                    rest = tail;
                }
                Ok(())
            }
        }
    }

    /// SentencePiece-style BPE of `text` (no added tokens in it), appended
    /// at `out[*n..]`: a token per character (a space prepended when the
    /// section says so), byte fallback for characters without one, then
    /// ranked merging in place.
    fn encode_spm(&self, text: &str, out: &mut [u32], n: &mut usize) -> Result<(), TokenizerError> {
        if text.is_empty() {
            return Ok(());
        }
        let start = *n;
        if self.view.add_prefix_space() {
            self.push_spm_char(' ', out, n)?;
        }
        for c in text.chars() {
            self.push_spm_char(c, out, n)?;
        }
        let (tokens, tail) = out[start..].split_at_mut(*n - start);
        let merged = if tail.len() + 1 >= tokens.len() {
            self.merge_all(tokens, tail)
        } else if tokens.len() <= STACK_TOKENS {
            self.merge_all(tokens, &mut [0u32; STACK_TOKENS])
        } else {
            self.merge_all(tokens, &mut [])
        };
        *n = start + merged;
        Ok(())
    }

    /// The token of character `c`, or its bytes' byte-fallback tokens, or
    /// the unknown token; nothing if there is neither (as HF's BPE).
    fn push_spm_char(&self, c: char, out: &mut [u32], n: &mut usize) -> Result<(), TokenizerError> {
        let mut buf = [0u8; 4];
        let bytes = c.encode_utf8(&mut buf).as_bytes();
        if let Some(id) = self.view.find(bytes) {
            return push(out, n, id);
        }
        if self.view.byte_fallback() {
            for &b in bytes {
                if let Some(id) = self.view.byte_token(b).or(self.view.unk()) {
                    push(out, n, id)?;
                }
            }
            return Ok(());
        }
        match self.view.unk() {
            Some(id) => push(out, n, id),
            None => Ok(()),
        }
    }

    /// BPE of one pre-tokenized chunk, appended at `out[*n..]`.
    fn encode_chunk(&self, chunk: &[u8], out: &mut [u32], n: &mut usize) -> Result<(), TokenizerError> {
        if chunk.is_empty() {
            return Ok(());
        }
        if self.view.ignore_merges() {
            if let Some(id) = self.view.find(chunk) {
                return push(out, n, id);
            }
        }
        let too_small = TokenizerError::BufferTooSmall { capacity: out.len() };
        let free = out.get_mut(*n..).ok_or(too_small)?;
        if free.len() >= chunk.len() {
            // In place; the pair ranks live past the chunk when there is
            // room there, else on the stack, else they are recomputed.
            let (tokens, tail) = free.split_at_mut(chunk.len());
            let len = self.byte_tokens(chunk, tokens);
            let tokens = &mut tokens[..len];
            let merged = if tail.len() + 1 >= len {
                self.merge_all(tokens, tail)
            } else {
                self.merge_all(tokens, &mut [0u32; STACK_TOKENS])
            };
            *n += merged;
            return Ok(());
        }
        if chunk.len() > STACK_TOKENS {
            return Err(too_small);
        }
        let mut tokens = [0u32; STACK_TOKENS];
        let len = self.byte_tokens(chunk, &mut tokens);
        let merged = self.merge_all(&mut tokens[..len], &mut [0u32; STACK_TOKENS]);
        let dst = free.get_mut(..merged).ok_or(too_small)?;
        dst.copy_from_slice(&tokens[..merged]);
        *n += merged;
        Ok(())
    }

    /// The token of each byte of `chunk`, written to the front of `tokens`
    /// (as long as `chunk`); returns how many. A byte without a token
    /// becomes the unknown token, or is dropped if there is none, as HF's
    /// BPE does (without `fuse_unk`).
    fn byte_tokens(&self, chunk: &[u8], tokens: &mut [u32]) -> usize {
        let unk = self.view.unk();
        let mut len = 0;
        for &b in chunk {
            if let Some(id) = self.view.byte_token(b).or(unk) {
                if let Some(slot) = tokens.get_mut(len) {
                    *slot = id;
                    len += 1;
                }
            }
        }
        len
    }

    /// Rank of merging `left` then `right`, or [`NO_MERGE`].
    fn rank(&self, left: u32, right: u32) -> u32 {
        self.view.merge(left, right).map_or(NO_MERGE, |(rank, _)| rank)
    }

    /// Merges `tokens` in place: the adjacent pair with the lowest rank
    /// first, the leftmost of equal ones, until no pair has a rule. Returns
    /// the new length. `ranks` caches the rank of each pair when it holds
    /// `tokens.len() - 1` entries; otherwise ranks are recomputed each round.
    fn merge_all(&self, tokens: &mut [u32], ranks: &mut [u32]) -> usize {
        let mut len = tokens.len();
        if len < 2 {
            return len;
        }
        match ranks.get_mut(..len - 1) {
            Some(ranks) => {
                for (i, rank) in ranks.iter_mut().enumerate() {
                    *rank = self.rank(tokens[i], tokens[i + 1]);
                }
                while len >= 2 {
                    let (at, best) = lowest(&ranks[..len - 1]);
                    if best == NO_MERGE {
                        break;
                    }
                    let Some((_, result)) = self.view.merge(tokens[at], tokens[at + 1]) else {
                        break;
                    };
                    tokens[at] = result;
                    tokens.copy_within(at + 2..len, at + 1);
                    // Pair `at + 1` is gone; pairs after it move down by one.
                    if at + 2 < len {
                        ranks.copy_within(at + 2..len - 1, at + 1);
                    }
                    len -= 1;
                    if at > 0 {
                        ranks[at - 1] = self.rank(tokens[at - 1], tokens[at]);
                    }
                    if at + 1 < len {
                        ranks[at] = self.rank(tokens[at], tokens[at + 1]);
                    }
                }
            }
            None => {
                while len >= 2 {
                    let mut best = NO_MERGE;
                    let mut at = 0;
                    for i in 0..len - 1 {
                        let rank = self.rank(tokens[i], tokens[i + 1]);
                        if rank < best {
                            best = rank;
                            at = i;
                        }
                    }
                    if best == NO_MERGE {
                        break;
                    }
                    let Some((_, result)) = self.view.merge(tokens[at], tokens[at + 1]) else {
                        break;
                    };
                    tokens[at] = result;
                    tokens.copy_within(at + 2..len, at + 1);
                    len -= 1;
                }
            }
        }
        len
    }
}

/// Index and value of the smallest rank, the first of equal ones.
fn lowest(ranks: &[u32]) -> (usize, u32) {
    let mut best = NO_MERGE;
    let mut at = 0;
    for (i, &rank) in ranks.iter().enumerate() {
        if rank < best {
            best = rank;
            at = i;
        }
    }
    (at, best)
}

/// Appends `id` at `out[*n]`.
fn push(out: &mut [u32], n: &mut usize, id: u32) -> Result<(), TokenizerError> {
    let capacity = out.len();
    let slot = out.get_mut(*n).ok_or(TokenizerError::BufferTooSmall { capacity })?;
    *slot = id;
    *n += 1;
    Ok(())
}

/// `&text[start..end]`; the callers only pass character boundaries.
fn str_slice(text: &str, start: usize, end: usize) -> &str {
    text.get(start..end).unwrap_or_default()
}

/// A set of bytes.
#[derive(Clone, Copy, Default)]
struct ByteSet([u64; 4]);

impl ByteSet {
    fn insert(&mut self, b: u8) {
        self.0[(b >> 6) as usize] |= 1 << (b & 63);
    }
    fn contains(&self, b: u8) -> bool {
        self.0[(b >> 6) as usize] & (1 << (b & 63)) != 0
    }
}

/// The classes GPT-2's regex tells apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CharClass {
    /// `\p{L}`: general category Lu, Ll, Lt, Lm or Lo.
    Letter,
    /// `\p{N}`: Nd, Nl or No.
    Number,
    /// `\s`: the White_Space property.
    Space,
    /// Everything else: `[^\s\p{L}\p{N}]`.
    Other,
}

fn char_class(c: char) -> CharClass {
    if c.is_ascii_alphabetic() {
        return CharClass::Letter;
    }
    if c.is_ascii_digit() {
        return CharClass::Number;
    }
    // White_Space, as Oniguruma's `\s` (it includes U+000B and U+0085).
    if c.is_whitespace() {
        return CharClass::Space;
    }
    if c.is_ascii() {
        return CharClass::Other;
    }
    match get_general_category(c) {
        GeneralCategory::UppercaseLetter
        | GeneralCategory::LowercaseLetter
        | GeneralCategory::TitlecaseLetter
        | GeneralCategory::ModifierLetter
        | GeneralCategory::OtherLetter => CharClass::Letter,
        GeneralCategory::DecimalNumber | GeneralCategory::LetterNumber | GeneralCategory::OtherNumber => {
            CharClass::Number
        }
        _ => CharClass::Other,
    }
}

/// Byte length of the run of characters of class `class` at the start of `s`.
fn run_len(s: &str, class: CharClass) -> usize {
    s.chars().take_while(|&c| char_class(c) == class).map(char::len_utf8).sum()
}

/// GPT-2's contractions, in the regex's order (case-sensitive: `'S` is not one).
const CONTRACTIONS: [&[u8]; 7] = [b"s", b"t", b"re", b"ve", b"m", b"ll", b"d"];

/// Byte length of the match of GPT-2's regex
/// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
/// at the start of `s`; 0 only if `s` is empty. Every character is in one
/// of the classes, so a match always starts at the first character and the
/// chunks tile the text.
fn gpt2_match_len(s: &str) -> usize {
    let Some(first) = s.chars().next() else {
        return 0;
    };
    if first == '\'' {
        let after = s.as_bytes().get(1..).unwrap_or_default();
        if let Some(suffix) = CONTRACTIONS.iter().find(|suffix| after.starts_with(suffix)) {
            return 1 + suffix.len();
        }
    }
    // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`: one optional space, then a
    // run of one class.
    let (prefix, body) = if first == ' ' { (1, s.get(1..).unwrap_or_default()) } else { (0, s) };
    if let Some(c) = body.chars().next() {
        let class = char_class(c);
        if class != CharClass::Space {
            return prefix + run_len(body, class);
        }
    }
    // Whitespace. `\s+(?!\S)`: the whole run if it ends the text, else the
    // run less its last character (which then leads the next chunk, e.g.
    // " word"); if that leaves nothing, `\s+` takes the single character.
    let run = run_len(s, CharClass::Space);
    if run == s.len() {
        return run;
    }
    let last = s.get(..run).and_then(|r| r.chars().next_back()).map_or(0, char::len_utf8);
    if run > last {
        run - last
    } else {
        run
    }
}

/// Byte length of the match of Llama 3's regex
/// `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
/// at the start of `s` (with `max_digits` = 3; Qwen2's regex is the same
/// with 1); 0 only if `s` is empty. As with GPT-2's, some alternative
/// always matches at the first character, so the chunks tile the text.
fn llama3_match_len(s: &str, max_digits: usize) -> usize {
    let Some(first) = s.chars().next() else {
        return 0;
    };
    let is_newline = |c: char| c == '\r' || c == '\n';
    // `(?i:'s|'t|'re|'ve|'m|'ll|'d)`.
    if first == '\'' {
        let after = s.as_bytes().get(1..).unwrap_or_default();
        let hit = CONTRACTIONS
            .iter()
            .find(|suffix| after.get(..suffix.len()).is_some_and(|a| a.eq_ignore_ascii_case(suffix)));
        if let Some(suffix) = hit {
            return 1 + suffix.len();
        }
    }
    let class = char_class(first);
    let rest = s.get(first.len_utf8()..).unwrap_or_default();
    // `[^\r\n\p{L}\p{N}]?\p{L}+`.
    if class == CharClass::Letter {
        return run_len(s, CharClass::Letter);
    }
    if class != CharClass::Number
        && !is_newline(first)
        && rest.chars().next().map(char_class) == Some(CharClass::Letter)
    {
        return first.len_utf8() + run_len(rest, CharClass::Letter);
    }
    // `\p{N}{1,3}`.
    if class == CharClass::Number {
        return s
            .chars()
            .take(max_digits)
            .take_while(|&c| char_class(c) == CharClass::Number)
            .map(char::len_utf8)
            .sum();
    }
    // ` ?[^\s\p{L}\p{N}]+[\r\n]*`.
    let (prefix, body) = if first == ' ' { (1, rest) } else { (0, s) };
    if body.chars().next().map(char_class) == Some(CharClass::Other) {
        let len = prefix + run_len(body, CharClass::Other);
        let newlines = s.get(len..).unwrap_or_default().bytes().take_while(|&b| b == b'\r' || b == b'\n').count();
        return len + newlines;
    }
    // Whitespace. `\s*[\r\n]+`: up to the run's last CR/LF.
    let run = run_len(s, CharClass::Space);
    let run_text = s.get(..run).unwrap_or_default();
    if let Some(last) = run_text.rfind(is_newline) {
        return last + 1;
    }
    // `\s+(?!\S)`, then `\s+`, as in GPT-2's regex.
    if run == s.len() {
        return run;
    }
    let last = run_text.chars().next_back().map_or(0, char::len_utf8);
    if run > last {
        run - last
    } else {
        run
    }
}

/// The chunks of GPT-2's regex over a text.
struct Gpt2Chunks<'t> {
    rest: &'t str,
}

impl<'t> Gpt2Chunks<'t> {
    fn new(text: &'t str) -> Self {
        Self { rest: text }
    }
}

impl<'t> Iterator for Gpt2Chunks<'t> {
    type Item = &'t str;
    fn next(&mut self) -> Option<&'t str> {
        let len = gpt2_match_len(self.rest);
        if len == 0 {
            return None;
        }
        let (chunk, rest) = self.rest.split_at_checked(len)?;
        self.rest = rest;
        Some(chunk)
    }
}

/// HF's `Digits(individual_digits = true)`: every numeric character
/// ([`char::is_numeric`]) alone, the text between them as one piece.
struct DigitPieces<'t> {
    rest: &'t str,
}

impl<'t> DigitPieces<'t> {
    fn new(text: &'t str) -> Self {
        Self { rest: text }
    }
}

impl<'t> Iterator for DigitPieces<'t> {
    type Item = &'t str;
    fn next(&mut self) -> Option<&'t str> {
        let first = self.rest.chars().next()?;
        let len = if first.is_numeric() {
            first.len_utf8()
        } else {
            self.rest.chars().take_while(|c| !c.is_numeric()).map(char::len_utf8).sum()
        };
        let (piece, rest) = self.rest.split_at_checked(len)?;
        self.rest = rest;
        Some(piece)
    }
}

/// Turns a stream of token bytes into text, carrying an unfinished UTF-8
/// character (at most 3 bytes) from one token to the next, so a CLI can
/// print token by token. Invalid bytes become U+FFFD exactly as
/// `String::from_utf8_lossy` would replace them in the whole stream.
///
/// ```
/// use ferrite_runtime::tokenizer::Utf8Stream;
/// let mut text = String::new();
/// let mut stream = Utf8Stream::new();
/// for bytes in [&b"caf\xc3"[..], b"\xa9!"] {
///     stream.push(bytes, |s| text.push_str(s));
/// }
/// stream.finish(|s| text.push_str(s));
/// assert_eq!(text, "café!");
/// ```
#[derive(Clone, Copy, Debug, Default)]
pub struct Utf8Stream {
    carry: [u8; 4],
    len: usize,
}

impl Utf8Stream {
    /// An empty stream.
    pub const fn new() -> Self {
        Self { carry: [0; 4], len: 0 }
    }

    /// Bytes of an unfinished character held back so far (0 to 3).
    pub fn pending(&self) -> usize {
        self.len
    }

    /// Feeds `bytes`; `emit` receives every complete piece of text (it may
    /// be called several times, or not at all).
    pub fn push(&mut self, mut bytes: &[u8], mut emit: impl FnMut(&str)) {
        // Finish the carried character first, byte by byte.
        while self.len > 0 {
            let Some((&b, rest)) = bytes.split_first() else {
                return;
            };
            self.carry[self.len % 4] = b;
            match core::str::from_utf8(&self.carry[..self.len + 1]) {
                Ok(s) => {
                    emit(s);
                    self.len = 0;
                    bytes = rest;
                }
                // Still a valid prefix: keep it.
                Err(e) if e.error_len().is_none() && self.len < 3 => {
                    self.len += 1;
                    bytes = rest;
                }
                // `b` cannot continue the carried prefix: the prefix is one
                // ill-formed sequence and `b` starts afresh below.
                Err(_) => {
                    emit(char::REPLACEMENT_CHARACTER.encode_utf8(&mut [0; 4]));
                    self.len = 0;
                }
            }
        }
        loop {
            match core::str::from_utf8(bytes) {
                Ok(s) => {
                    if !s.is_empty() {
                        emit(s);
                    }
                    return;
                }
                Err(e) => {
                    let (valid, after) = bytes.split_at(e.valid_up_to());
                    if let Ok(s) = core::str::from_utf8(valid) {
                        if !s.is_empty() {
                            emit(s);
                        }
                    }
                    match e.error_len() {
                        Some(bad) => {
                            emit(char::REPLACEMENT_CHARACTER.encode_utf8(&mut [0; 4]));
                            bytes = after.get(bad..).unwrap_or_default();
                        }
                        None => {
                            // An unfinished character ends the input (1 to 3 bytes).
                            let keep = after.len().min(3);
                            self.carry[..keep].copy_from_slice(&after[..keep]);
                            self.len = keep;
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Ends the stream: an unfinished character left over is emitted as
    /// U+FFFD. The stream is empty afterwards and may be reused.
    pub fn finish(&mut self, mut emit: impl FnMut(&str)) {
        if self.len > 0 {
            emit(char::REPLACEMENT_CHARACTER.encode_utf8(&mut [0; 4]));
            self.len = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::string::String;
    use std::vec::Vec;
    use std::{format, vec};

    use ferrite_format::tokenizer::{PreTokenizer, TokenType, TokenizerKind, NO_TOKEN};
    use ferrite_format::writer::{AlignedBytes, TokenEntry, TokenizerBuilder};

    use super::*;

    /// A small byte-level vocabulary: the 256 bytes (ids = byte values),
    /// 256 "ab", 257 "abc", 258 "aa" (merged in that order), 259 `<|end|>`
    /// (special) and 260 `<|end|>x` (added).
    fn builder() -> TokenizerBuilder {
        let mut tokens: Vec<TokenEntry> =
            (0..=255u8).map(|b| TokenEntry { bytes: vec![b], ty: TokenType::Normal, score: 0.0 }).collect();
        for (bytes, ty) in [
            (&b"ab"[..], TokenType::Normal),
            (b"abc", TokenType::Normal),
            (b"aa", TokenType::Normal),
            (b"<|end|>", TokenType::Special),
            (b"<|end|>x", TokenType::Added),
        ] {
            tokens.push(TokenEntry { bytes: bytes.to_vec(), ty, score: 0.0 });
        }
        let mut byte_tokens = [0u32; 256];
        for (b, t) in byte_tokens.iter_mut().enumerate() {
            *t = b as u32;
        }
        TokenizerBuilder {
            kind: TokenizerKind::ByteLevelBpe,
            pretokenizer: PreTokenizer::Gpt2Digits,
            tokens,
            merges: vec![(b'a' as u32, b'b' as u32), (256, b'c' as u32), (b'a' as u32, b'a' as u32)],
            byte_tokens,
            specials: vec![259, 260],
            chat_template: None,
            eot: Some(259),
            unk: None,
            has_scores: false,
            byte_fallback: false,
            add_prefix_space: false,
            ignore_merges: false,
        }
    }

    fn section() -> AlignedBytes {
        AlignedBytes::new(&builder().to_bytes().unwrap())
    }

    fn with_tokenizer(f: impl FnOnce(Tokenizer<'_>)) {
        let bytes = section();
        let view = TokenizerView::parse(&bytes, 261).unwrap();
        f(Tokenizer::new(view).unwrap());
    }

    fn encode(t: &Tokenizer<'_>, text: &str) -> Vec<u32> {
        let mut out = vec![0u32; Tokenizer::max_tokens(text.len())];
        let n = t.encode(text, &mut out).unwrap();
        out.truncate(n);
        out
    }

    #[test]
    fn merges_lowest_rank_leftmost() {
        with_tokenizer(|t| {
            assert_eq!(encode(&t, "abc"), [257]);
            assert_eq!(encode(&t, "aaa"), [258, b'a' as u32]);
            assert_eq!(encode(&t, "aab"), [b'a' as u32, 256]);
            assert_eq!(encode(&t, ""), [] as [u32; 0]);
            // Longest added token wins; added tokens split words.
            assert_eq!(encode(&t, "ab<|end|>xab<|end|>"), [256, 260, 256, 259]);
            assert_eq!(encode(&t, "<|end"), [b'<' as u32, b'|' as u32, 101, 110, 100]);
            // Specials as text; added (non-special) tokens still matched.
            let mut out = [0u32; 16];
            let n = t.encode_ordinary("<|end|>", &mut out).unwrap();
            assert_eq!(&out[..n], b"<|end|>".map(u32::from));
            let n = t.encode_ordinary("<|end|>x", &mut out).unwrap();
            assert_eq!(&out[..n], [260]);
        });
    }

    #[test]
    fn buffer_too_small() {
        with_tokenizer(|t| {
            let mut out = [0u32; 2];
            assert_eq!(t.encode("ab ab ab", &mut out), Err(TokenizerError::BufferTooSmall { capacity: 2 }));
            assert_eq!(
                t.encode("<|end|><|end|><|end|>", &mut out),
                Err(TokenizerError::BufferTooSmall { capacity: 2 })
            );
            // The ids fit though the chunk's bytes do not: merged on the stack.
            let mut one = [0u32; 1];
            assert_eq!(t.encode("abc", &mut one), Ok(1));
            assert_eq!(one, [257]);
            let mut none: [u32; 0] = [];
            assert_eq!(t.encode("a", &mut none), Err(TokenizerError::BufferTooSmall { capacity: 0 }));
            assert_eq!(t.encode("", &mut none), Ok(0));
            // A chunk longer than the stack scratch needs its bytes' room.
            let long = "x".repeat(STACK_TOKENS + 1);
            let mut short = vec![0u32; STACK_TOKENS];
            assert!(matches!(t.encode(&long, &mut short), Err(TokenizerError::BufferTooSmall { .. })));

            let mut bytes = [0u8; 4];
            assert_eq!(t.decode(&[257, 256], &mut bytes), Err(TokenizerError::BufferTooSmall { capacity: 4 }));
            assert_eq!(t.decode(&[257, 261], &mut bytes), Err(TokenizerError::BadToken { id: 261, n_tokens: 261 }));
            assert_eq!(t.decode(&[257], &mut bytes), Ok(3));
            let mut buf = [0u8; 16];
            let n = t.decode(&[256, 259, 256], &mut buf).unwrap();
            assert_eq!(&buf[..n], b"ab<|end|>ab");
            let n = t.decode_skip_special(&[256, 259, 260], &mut buf).unwrap();
            assert_eq!(&buf[..n], b"ab<|end|>x");
        });
    }

    #[test]
    fn merge_paths_agree() {
        // Cached ranks in the tail, on the stack, and recomputed: same result.
        with_tokenizer(|t| {
            for text in ["aaaaabcabcaab", "aabcaaaabaaaaaaab", &"ab".repeat(50), &"a".repeat(101)] {
                let expected = encode(&t, text);
                let mut tokens: Vec<u32> = text.bytes().map(u32::from).collect();
                let n = t.merge_all(&mut tokens, &mut []);
                assert_eq!(&tokens[..n], expected, "{text}");
                let mut exact = vec![0u32; text.len()];
                let n = t.encode(text, &mut exact).unwrap();
                assert_eq!(&exact[..n], expected, "{text}");
            }
        });
    }

    #[test]
    fn gpt2_chunks() {
        fn chunks(s: &str) -> Vec<&str> {
            Gpt2Chunks::new(s).collect()
        }
        assert_eq!(chunks("Hello world"), ["Hello", " world"]);
        assert_eq!(chunks("it's I'M we'll"), ["it", "'s", " I", "'", "M", " we", "'ll"]);
        assert_eq!(chunks("a   b\t\tc  "), ["a", "  ", " b", "\t", "\t", "c", "  "]);
        assert_eq!(chunks("x \n\ny"), ["x", " \n", "\n", "y"]);
        assert_eq!(chunks(" 42!? é"), [" 42", "!?", " é"]);
        assert_eq!(chunks("'''s"), ["'''", "s"]);
        assert_eq!(chunks("\u{3000}\u{3000}日本"), ["\u{3000}", "\u{3000}", "日本"]);
        fn digits(s: &str) -> Vec<&str> {
            DigitPieces::new(s).collect()
        }
        assert_eq!(digits("ab 12c٣"), ["ab ", "1", "2", "c", "٣"]);
    }

    fn stream(pieces: &[&[u8]]) -> String {
        let mut text = String::new();
        let mut s = Utf8Stream::new();
        for p in pieces {
            s.push(p, |t| text.push_str(t));
        }
        s.finish(|t| text.push_str(t));
        text
    }

    #[test]
    fn utf8_stream_split_characters() {
        // "é" (2 bytes), "日" (3), "😀" (4) split across tokens at every point.
        let text = "é日😀";
        let bytes = text.as_bytes();
        for cut1 in 0..=bytes.len() {
            for cut2 in cut1..=bytes.len() {
                let got = stream(&[&bytes[..cut1], &bytes[cut1..cut2], &bytes[cut2..]]);
                assert_eq!(got, text, "cuts {cut1} {cut2}");
            }
        }
        // One byte per token.
        let single: Vec<&[u8]> = bytes.chunks(1).collect();
        assert_eq!(stream(&single), text);
    }

    #[test]
    fn utf8_stream_matches_lossy() {
        let cases: [&[u8]; 9] = [
            b"\xf0\x9f\x98",
            b"a\xf0\x9fb",
            b"\xe6\x97\xa5\xff\xe6",
            b"\xc3",
            b"\xed\xa0\x80x",
            b"\xf4\x90\x80\x80",
            b"\xe0\x80\xaf",
            b"\xc3\xc3\xa9",
            b"\x80\x80\xf0\x9f\x98\x80",
        ];
        for case in cases {
            let expected = String::from_utf8_lossy(case).into_owned();
            for cut in 0..=case.len() {
                let (a, b) = case.split_at(cut);
                assert_eq!(stream(&[a, b]), expected, "{case:?} cut at {cut}");
            }
            let single: Vec<&[u8]> = case.chunks(1).collect();
            assert_eq!(stream(&single), expected, "{case:?} byte by byte");
        }
    }

    #[test]
    fn bytes_without_a_token() {
        // HF's BPE: a character missing from the vocabulary becomes the unknown
        // token, or is dropped when there is none.
        for unk in [None, Some(b'?' as u32)] {
            let mut builder = builder();
            builder.byte_tokens[b'z' as usize] = NO_TOKEN;
            builder.unk = unk;
            let bytes = AlignedBytes::new(&builder.to_bytes().unwrap());
            let t = Tokenizer::new(TokenizerView::parse(&bytes, 261).unwrap()).unwrap();
            let mut out = [0u32; 8];
            let n = t.encode("azb", &mut out).unwrap();
            match unk {
                // Dropped, so "a" and "b" are neighbours and merge (as in HF).
                None => assert_eq!(&out[..n], [256]),
                Some(u) => assert_eq!(&out[..n], [b'a' as u32, u, b'b' as u32]),
            }
        }
    }

    #[test]
    fn refuses_unsupported() {
        let mut b = builder();
        b.add_prefix_space = true;
        let bytes = AlignedBytes::new(&b.to_bytes().unwrap());
        let view = TokenizerView::parse(&bytes, 261).unwrap();
        assert_eq!(
            Tokenizer::new(view).err(),
            Some(TokenizerError::Unsupported { what: "add_prefix_space with byte-level BPE" })
        );
        let mut b = spm_builder();
        b.pretokenizer = PreTokenizer::Gpt2;
        let bytes = AlignedBytes::new(&b.to_bytes().unwrap());
        let view = TokenizerView::parse(&bytes, 300).unwrap();
        assert_eq!(
            Tokenizer::new(view).err(),
            Some(TokenizerError::Unsupported { what: "a pre-tokenizer with SentencePiece" })
        );
        let msg = format!("{}", TokenizerError::Unsupported { what: "byte fallback" });
        assert!(msg.contains("byte fallback"));
    }

    #[test]
    fn llama3_and_qwen2_chunks() {
        fn chunks(s: &str, max_digits: usize) -> Vec<&str> {
            let mut rest = s;
            let mut v = Vec::new();
            while !rest.is_empty() {
                let len = llama3_match_len(rest, max_digits);
                assert!(len > 0);
                v.push(&rest[..len]);
                rest = &rest[len..];
            }
            v
        }
        assert_eq!(chunks("Hello world", 3), ["Hello", " world"]);
        assert_eq!(chunks("it's I'M we'LL", 3), ["it", "'s", " I", "'M", " we", "'LL"]);
        assert_eq!(chunks("12345 x", 3), ["123", "45", " x"]);
        assert_eq!(chunks("12345 x", 1), ["1", "2", "3", "4", "5", " x"]);
        assert_eq!(chunks("a  \n\n  b\t\tc  ", 3), ["a", "  \n\n", " ", " b", "\t", "\tc", "  "]);
        assert_eq!(chunks("!abc !!x ...\n\nd", 3), ["!abc", " !!", "x", " ...\n\n", "d"]);
        assert_eq!(chunks(" 42", 3), [" ", "42"]);
    }

    /// A SentencePiece-style vocabulary: `<unk>` (0), `<s>` (1, special),
    /// the 256 byte tokens `<0xXX>` (2..258), then " ", "a", "b", " a",
    /// " ab", "ab" (258..264), merged " "+"a", "a"+"b", " a"+"b".
    fn spm_builder() -> TokenizerBuilder {
        let mut tokens = vec![
            TokenEntry { bytes: b"<unk>".to_vec(), ty: TokenType::Unknown, score: 0.0 },
            TokenEntry { bytes: b"<s>".to_vec(), ty: TokenType::Special, score: 0.0 },
        ];
        let mut byte_tokens = [0u32; 256];
        for b in 0..=255u8 {
            byte_tokens[b as usize] = tokens.len() as u32;
            tokens.push(TokenEntry { bytes: format!("<0x{b:02X}>").into_bytes(), ty: TokenType::Byte, score: 0.0 });
        }
        for t in [" ", "a", "b", " a", " ab", "ab"] {
            tokens.push(TokenEntry { bytes: t.as_bytes().to_vec(), ty: TokenType::Normal, score: 0.0 });
        }
        TokenizerBuilder {
            kind: TokenizerKind::SentencePiece,
            pretokenizer: PreTokenizer::None,
            tokens,
            merges: vec![(258, 259), (259, 260), (261, 260)],
            byte_tokens,
            specials: vec![0, 1],
            chat_template: None,
            eot: None,
            unk: Some(0),
            has_scores: false,
            byte_fallback: true,
            add_prefix_space: true,
            ignore_merges: false,
        }
    }

    #[test]
    fn sentencepiece_prefix_byte_fallback_and_decode() {
        let bytes = AlignedBytes::new(&spm_builder().to_bytes().unwrap());
        let t = Tokenizer::new(TokenizerView::parse(&bytes, 300).unwrap()).unwrap();
        // " ab" merges first (" "+"a" has the lowest rank, then " a"+"b").
        assert_eq!(encode(&t, "ab"), [262]);
        assert_eq!(encode(&t, "ab ab"), [262, 262]);
        // "é" has no token: its two UTF-8 bytes' tokens.
        assert_eq!(encode(&t, "aé"), [261, 2 + 0xC3, 2 + 0xA9]);
        // A space is prepended after every added token, and only to non-empty pieces.
        assert_eq!(encode(&t, "<s>a<s>"), [1, 261, 1]);
        assert_eq!(encode(&t, ""), [] as [u32; 0]);
        let mut out = [0u32; 8];
        let n = t.encode_ordinary("<unk>", &mut out).unwrap();
        assert_eq!(
            &out[..n],
            [258, 2 + b'<' as u32, 2 + b'u' as u32, 2 + b'n' as u32, 2 + b'k' as u32, 2 + b'>' as u32]
        );
        // Decoding: byte tokens become their bytes, one leading space is dropped.
        assert_eq!(t.token_bytes(2 + 0x41).unwrap(), b"A");
        let mut buf = [0u8; 16];
        let n = t.decode(&[262, 2 + 0xC3, 2 + 0xA9, 261], &mut buf).unwrap();
        assert_eq!(&buf[..n], "abé a".as_bytes());
        let n = t.decode(&[1, 262], &mut buf).unwrap();
        assert_eq!(&buf[..n], b"<s> ab");
        let n = t.decode_skip_special(&[1, 262], &mut buf).unwrap();
        assert_eq!(&buf[..n], b"ab");
        // Every path of the merge agrees, with room for the rank cache or not.
        let text = "ab a ab ba aab ".repeat(9);
        let expected = encode(&t, &text);
        for room in [expected.len(), text.len() + 1, Tokenizer::max_tokens(text.len())] {
            let mut out = vec![0u32; room.max(text.len() + 1)];
            let n = t.encode(&text, &mut out).unwrap();
            assert_eq!(&out[..n], expected);
        }
    }
}
