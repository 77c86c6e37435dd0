//! `tokenizer.json` + `tokenizer_config.json` into a tokenizer section:
//! byte-level BPE (GPT-2 style) and SentencePiece-style BPE (`byte_fallback`,
//! `▁` for spaces: Llama 2, TinyLlama, Mistral v0.1).

use std::collections::HashMap;
use std::path::Path;

use ferrite_format::tokenizer::{PreTokenizer, TokenType, TokenizerKind, NO_TOKEN};
use ferrite_format::writer::{TokenEntry, TokenizerBuilder};
use serde_json::Value;

use crate::error::{Error, ErrorKind, Result};
use crate::hf_config::read_json;

/// GPT-2's reversible byte → printable character map used by byte-level BPE
/// vocabularies: printable Latin-1 bytes map to themselves, the other 68
/// bytes to U+0100.. in byte order.
pub fn byte_to_char_table() -> [char; 256] {
    let mut table = ['\0'; 256];
    let mut next = 256u32;
    for b in 0..256u32 {
        let printable = (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        let c = if printable {
            b
        } else {
            next += 1;
            next - 1
        };
        table[b as usize] = char::from_u32(c).unwrap_or('\0');
    }
    table
}

/// The tokenizer as read from the HF files.
#[derive(Debug)]
pub struct HfTokenizer {
    /// The section builder.
    pub builder: TokenizerBuilder,
    /// `add_bos_token` (from tokenizer_config.json or the post-processor).
    pub add_bos: Option<bool>,
    /// Id of the tokenizer's `eos_token` (the end-of-turn token of chat models).
    pub eos: Option<u32>,
    /// Id of `bos_token`.
    pub bos: Option<u32>,
    /// Ranks of `builder.merges` when they are not their positions (merges
    /// derived from SentencePiece scores, where equal scores share a rank).
    pub merge_ranks: Option<Vec<u32>>,
}

impl HfTokenizer {
    /// The serialized tokenizer section.
    pub fn section_bytes(&self) -> std::result::Result<Vec<u8>, String> {
        self.builder.to_bytes_ranked(self.merge_ranks.as_deref())
    }
}

/// Merge rules of a SentencePiece vocabulary that has scores but no merges:
/// every split of a normal token into two normal tokens, ranked by the
/// merged token's score (higher first; equal scores share a rank, so the
/// leftmost pair merges first, as SentencePiece and llama.cpp do). Returns
/// the merges and their ranks.
pub fn spm_merges_by_score(tokens: &[TokenEntry]) -> (Vec<(u32, u32)>, Vec<u32>) {
    let mut by_bytes: HashMap<&[u8], u32> = HashMap::with_capacity(tokens.len());
    for (id, t) in tokens.iter().enumerate() {
        if t.ty == TokenType::Normal {
            by_bytes.entry(t.bytes.as_slice()).or_insert(id as u32);
        }
    }
    // (score, merged id, left, right)
    let mut found: Vec<(f32, u32, u32, u32)> = Vec::new();
    for (id, t) in tokens.iter().enumerate() {
        if t.ty != TokenType::Normal || t.bytes.len() < 2 {
            continue;
        }
        let Ok(text) = std::str::from_utf8(&t.bytes) else { continue };
        for (k, _) in text.char_indices().skip(1) {
            let (a, b) = t.bytes.split_at(k);
            if let (Some(&l), Some(&r)) = (by_bytes.get(a), by_bytes.get(b)) {
                found.push((t.score, id as u32, l, r));
            }
        }
    }
    found.sort_by(|x, y| y.0.total_cmp(&x.0).then(x.1.cmp(&y.1)).then(x.2.cmp(&y.2)));
    let mut ranks = Vec::with_capacity(found.len());
    let mut rank = 0u32;
    for (i, f) in found.iter().enumerate() {
        if i > 0 && f.0 != found[i - 1].0 {
            rank = i as u32;
        }
        ranks.push(rank);
    }
    (found.iter().map(|&(_, _, l, r)| (l, r)).collect(), ranks)
}

/// How a SentencePiece-style `tokenizer.json` adds the leading `▁`: the
/// legacy `Prepend("▁")` + `Replace(" ", "▁")` normalizer (Llama 2,
/// TinyLlama, Mistral v0.1), or a `Metaspace` pre-tokenizer. Returns
/// whether a space is prepended to each piece.
fn spm_prefix_space(path: &Path, normalizer: &Value, pre: &Value) -> Result<bool> {
    let unsupported = |what: String| {
        Error::new(ErrorKind::Unsupported, format!("{}: SentencePiece-style tokenizer with {what}", path.display()))
    };
    let ty = |v: &Value| v.get("type").and_then(Value::as_str).map(str::to_string).unwrap_or_default();
    let is_replace_space = |v: &Value| {
        ty(v) == "Replace"
            && v.get("pattern").and_then(|p| p.get("String")).and_then(Value::as_str) == Some(" ")
            && v.get("content").and_then(Value::as_str) == Some("\u{2581}")
    };
    let is_prepend = |v: &Value| ty(v) == "Prepend" && v.get("prepend").and_then(Value::as_str) == Some("\u{2581}");
    if !normalizer.is_null() {
        if !pre.is_null() {
            return Err(unsupported(format!("both a normalizer and the pre-tokenizer {pre}")));
        }
        let items: Vec<&Value> = match ty(normalizer).as_str() {
            "Sequence" => {
                normalizer.get("normalizers").and_then(Value::as_array).map(|a| a.iter().collect()).unwrap_or_default()
            }
            _ => vec![normalizer],
        };
        return match items.as_slice() {
            [p, r] if is_prepend(p) && is_replace_space(r) => Ok(true),
            [r] if is_replace_space(r) => Ok(false),
            _ => Err(unsupported(format!("the normalizer {normalizer}"))),
        };
    }
    if ty(pre) == "Metaspace" {
        let replacement = pre.get("replacement").and_then(Value::as_str);
        let split = pre.get("split").and_then(Value::as_bool).unwrap_or(true);
        if replacement != Some("\u{2581}") || split {
            return Err(unsupported(format!("the pre-tokenizer {pre} (only replacement \"▁\" without split)")));
        }
        return match pre.get("prepend_scheme").and_then(Value::as_str) {
            Some("always") => Ok(true),
            Some("never") => Ok(false),
            None => Ok(pre.get("add_prefix_space").and_then(Value::as_bool).unwrap_or(true)),
            Some(other) => Err(unsupported(format!("Metaspace prepend_scheme `{other}` (supported: always, never)"))),
        };
    }
    Err(unsupported(format!("no ▁ normalizer and the pre-tokenizer {pre}")))
}

fn tok_err(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Tokenizer, format!("{}: {what}", path.display()))
}

/// Llama 3's pre-tokenizer regex as its `tokenizer.json` writes it.
const LLAMA3_REGEX: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's (Llama 3's with single digits).
const QWEN2_REGEX: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn detect_pretokenizer(path: &Path, pre: &Value) -> Result<PreTokenizer> {
    let ty = pre.get("type").and_then(Value::as_str).unwrap_or("");
    let is_byte_level = |v: &Value| {
        v.get("type").and_then(Value::as_str) == Some("ByteLevel")
            && v.get("use_regex").and_then(Value::as_bool).unwrap_or(true)
            && !v.get("add_prefix_space").and_then(Value::as_bool).unwrap_or(false)
    };
    match ty {
        "ByteLevel" if is_byte_level(pre) => return Ok(PreTokenizer::Gpt2),
        "Sequence" => {
            let items = pre.get("pretokenizers").and_then(Value::as_array).map(Vec::as_slice).unwrap_or(&[]);
            if let [digits, bl] = items {
                if digits.get("type").and_then(Value::as_str) == Some("Digits")
                    && digits.get("individual_digits").and_then(Value::as_bool) == Some(true)
                    && is_byte_level(bl)
                {
                    return Ok(PreTokenizer::Gpt2Digits);
                }
            }
            if let [bl] = items {
                if is_byte_level(bl) {
                    return Ok(PreTokenizer::Gpt2);
                }
            }
            // Llama 3 / Qwen2: the regex split, then ByteLevel without its own regex.
            if let [split, bl] = items {
                let regex = split.get("pattern").and_then(|p| p.get("Regex")).and_then(Value::as_str);
                let plain_byte_level = bl.get("type").and_then(Value::as_str) == Some("ByteLevel")
                    && bl.get("use_regex").and_then(Value::as_bool) == Some(false)
                    && !bl.get("add_prefix_space").and_then(Value::as_bool).unwrap_or(false);
                let isolated = split.get("type").and_then(Value::as_str) == Some("Split")
                    && split.get("behavior").and_then(Value::as_str) == Some("Isolated")
                    && !split.get("invert").and_then(Value::as_bool).unwrap_or(false);
                if plain_byte_level && isolated {
                    match regex {
                        Some(LLAMA3_REGEX) => return Ok(PreTokenizer::Llama3),
                        Some(QWEN2_REGEX) => return Ok(PreTokenizer::Qwen2),
                        _ => {}
                    }
                }
            }
        }
        _ => {}
    }
    Err(Error::new(
        ErrorKind::Unsupported,
        format!(
            "{}: pre-tokenizer {} is not supported yet (supported: ByteLevel with the GPT-2 regex, optionally after Digits(individual_digits); Llama 3's or Qwen2's regex Split then ByteLevel)",
            path.display(),
            serde_json::to_string(pre).unwrap_or_default()
        ),
    ))
}

fn token_content(v: &Value) -> Option<&str> {
    match v {
        Value::String(s) => Some(s),
        Value::Object(o) => o.get("content").and_then(Value::as_str),
        _ => None,
    }
}

/// Reads `dir/tokenizer.json` (and `tokenizer_config.json` if present).
/// Returns `Ok(None)` when the folder has no `tokenizer.json`.
pub fn read(dir: &Path) -> Result<Option<HfTokenizer>> {
    let path = dir.join("tokenizer.json");
    if !path.exists() {
        return Ok(None);
    }
    let json = read_json(&path).map_err(|e| Error::new(ErrorKind::Tokenizer, e.message().to_string()))?;
    let model = json.get("model").ok_or_else(|| tok_err(&path, "key `model` is missing"))?;
    let model_type = model.get("type").and_then(Value::as_str).unwrap_or("BPE");
    if model_type != "BPE" {
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!("{}: tokenizer model `{model_type}` is not supported (only BPE)", path.display()),
        ));
    }
    let spm = model.get("byte_fallback").and_then(Value::as_bool).unwrap_or(false);
    // `fuse_unk` only matters when a character becomes the unknown token,
    // which byte fallback prevents when every byte has a token (checked below).
    let refused: &[&str] = if spm { &[] } else { &["fuse_unk"] };
    let ignore_merges = model.get("ignore_merges").and_then(Value::as_bool).unwrap_or(false);
    for &flag in refused {
        if model.get(flag).and_then(Value::as_bool).unwrap_or(false) {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!("{}: BPE option `{flag}: true` is not supported yet", path.display()),
            ));
        }
    }
    let pre = json.get("pre_tokenizer").unwrap_or(&Value::Null);
    let normalizer = json.get("normalizer").unwrap_or(&Value::Null);
    let (pretokenizer, add_prefix_space) = if spm {
        (PreTokenizer::None, spm_prefix_space(&path, normalizer, pre)?)
    } else {
        if !normalizer.is_null() {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!("{}: normalizer {} is not supported yet", path.display(), normalizer),
            ));
        }
        (detect_pretokenizer(&path, pre)?, false)
    };

    let char_to_byte: HashMap<char, u8> = byte_to_char_table().iter().enumerate().map(|(b, &c)| (c, b as u8)).collect();
    let decode = |s: &str| -> Option<Vec<u8>> {
        if spm {
            Some(s.replace('\u{2581}', " ").into_bytes())
        } else {
            s.chars().map(|c| char_to_byte.get(&c).copied()).collect()
        }
    };

    let vocab = model
        .get("vocab")
        .and_then(Value::as_object)
        .ok_or_else(|| tok_err(&path, "`model.vocab` is missing or not an object"))?;
    let mut by_id: Vec<Option<TokenEntry>> = Vec::new();
    let mut str_to_id: HashMap<&str, u32> = HashMap::with_capacity(vocab.len());
    // Ids must be contiguous, so none can reach the number of entries the
    // file holds: that bounds the table whatever ids it claims.
    let n_entries = vocab.len() + json.get("added_tokens").and_then(Value::as_array).map_or(0, Vec::len);
    let put = |by_id: &mut Vec<Option<TokenEntry>>, id: u32, entry: TokenEntry| -> Result<()> {
        let i = id as usize;
        if i >= n_entries {
            return Err(tok_err(
                &path,
                format!("token id {id} is beyond the {n_entries} tokens the file defines (ids must be contiguous)"),
            ));
        }
        if by_id.len() <= i {
            by_id.resize(i + 1, None);
        }
        by_id[i] = Some(entry);
        Ok(())
    };
    for (s, id) in vocab {
        let id = id
            .as_u64()
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| tok_err(&path, format!("vocab entry {s:?} has a bad id")))?;
        let bytes =
            decode(s).ok_or_else(|| tok_err(&path, format!("vocab entry {s:?} is not in the byte-level alphabet")))?;
        str_to_id.insert(s.as_str(), id);
        let is_byte = spm && ferrite_format::tokenizer::parse_byte_token(s.as_bytes()).is_some();
        let ty = if is_byte { TokenType::Byte } else { TokenType::Normal };
        put(&mut by_id, id, TokenEntry { bytes, ty, score: 0.0 })?;
    }
    let mut specials = Vec::new();
    let mut content_to_id: HashMap<String, u32> = HashMap::new();
    if let Some(added) = json.get("added_tokens").and_then(Value::as_array) {
        for t in added {
            let id = t
                .get("id")
                .and_then(Value::as_u64)
                .and_then(|v| u32::try_from(v).ok())
                .ok_or_else(|| tok_err(&path, "added token without a valid id"))?;
            let content = t
                .get("content")
                .and_then(Value::as_str)
                .ok_or_else(|| tok_err(&path, format!("added token {id} without content")))?;
            if content.is_empty() {
                return Err(tok_err(&path, format!("added token {id} has empty content")));
            }
            let special = t.get("special").and_then(Value::as_bool).unwrap_or(false);
            for flag in ["lstrip", "rstrip", "single_word"] {
                if t.get(flag).and_then(Value::as_bool).unwrap_or(false) {
                    return Err(Error::new(
                        ErrorKind::Unsupported,
                        format!(
                            "{}: added token {content:?} uses `{flag}`, which is not supported yet",
                            path.display()
                        ),
                    ));
                }
            }
            let ty = if special { TokenType::Special } else { TokenType::Added };
            put(&mut by_id, id, TokenEntry { bytes: content.as_bytes().to_vec(), ty, score: 0.0 })?;
            content_to_id.insert(content.to_string(), id);
            specials.push(id);
        }
    }
    let tokens: Vec<TokenEntry> = by_id
        .into_iter()
        .enumerate()
        .map(|(id, t)| {
            t.ok_or_else(|| tok_err(&path, format!("token id {id} is not defined (ids must be contiguous)")))
        })
        .collect::<Result<_>>()?;

    let merges_json =
        model.get("merges").and_then(Value::as_array).ok_or_else(|| tok_err(&path, "`model.merges` is missing"))?;
    let mut merges = Vec::with_capacity(merges_json.len());
    for (i, m) in merges_json.iter().enumerate() {
        let (a, b) = match m {
            Value::String(s) => {
                s.split_once(' ').ok_or_else(|| tok_err(&path, format!("merge #{i} {s:?} has no space")))?
            }
            Value::Array(pair) if pair.len() == 2 => match (pair[0].as_str(), pair[1].as_str()) {
                (Some(a), Some(b)) => (a, b),
                _ => return Err(tok_err(&path, format!("merge #{i} is not a pair of strings"))),
            },
            _ => return Err(tok_err(&path, format!("merge #{i} is neither \"a b\" nor [a, b]"))),
        };
        let id = |s: &str| {
            str_to_id.get(s).copied().ok_or_else(|| tok_err(&path, format!("merge #{i} names unknown token {s:?}")))
        };
        merges.push((id(a)?, id(b)?));
    }
    let table = byte_to_char_table();
    let mut byte_tokens = [0u32; 256];
    for (b, slot) in byte_tokens.iter_mut().enumerate() {
        let s = if spm { format!("<0x{b:02X}>") } else { table[b].to_string() };
        *slot = str_to_id.get(s.as_str()).copied().unwrap_or(NO_TOKEN);
    }
    let present = byte_tokens.iter().filter(|&&t| t != NO_TOKEN).count();
    if spm && present < 256 && model.get("fuse_unk").and_then(Value::as_bool).unwrap_or(false) {
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!("{}: BPE option `fuse_unk: true` with only {present} of 256 byte tokens", path.display()),
        ));
    }
    if !spm && present < 128 {
        return Err(tok_err(
            &path,
            format!("only {present} of 256 bytes have a token: not a byte-level BPE vocabulary"),
        ));
    }

    // tokenizer_config.json: chat template, eos/bos tokens, add_bos_token.
    let mut chat_template = None;
    let mut add_bos = None;
    let mut eos = None;
    let mut bos = None;
    let tc_path = dir.join("tokenizer_config.json");
    let lookup = |s: &str| content_to_id.get(s).copied().or_else(|| str_to_id.get(s).copied());
    if tc_path.exists() {
        let tc = read_json(&tc_path).map_err(|e| Error::new(ErrorKind::Tokenizer, e.message().to_string()))?;
        chat_template = match tc.get("chat_template") {
            Some(Value::String(s)) => Some(s.clone()),
            Some(Value::Array(list)) => list
                .iter()
                .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                .and_then(|t| t.get("template").and_then(Value::as_str))
                .map(str::to_string),
            _ => None,
        };
        add_bos = tc.get("add_bos_token").and_then(Value::as_bool);
        eos = tc.get("eos_token").and_then(token_content).and_then(lookup);
        bos = tc.get("bos_token").and_then(token_content).and_then(lookup);
    }
    let jinja = dir.join("chat_template.jinja");
    if chat_template.is_none() && jinja.exists() {
        chat_template = Some(std::fs::read_to_string(&jinja).map_err(|e| Error::io(&jinja, e))?);
    }
    if add_bos.is_none() {
        // A TemplateProcessing post-processor that starts with a special
        // token prepends BOS; ByteLevel or none does not.
        let pp = json.get("post_processor").unwrap_or(&Value::Null);
        if pp.get("type").and_then(Value::as_str) == Some("TemplateProcessing") {
            let first = pp.get("single").and_then(Value::as_array).and_then(|a| a.first());
            add_bos = Some(first.is_some_and(|f| f.get("SpecialToken").is_some()));
        }
    }
    let unk = model.get("unk_token").and_then(Value::as_str).and_then(lookup);

    Ok(Some(HfTokenizer {
        builder: TokenizerBuilder {
            kind: if spm { TokenizerKind::SentencePiece } else { TokenizerKind::ByteLevelBpe },
            pretokenizer,
            tokens,
            merges,
            byte_tokens,
            specials,
            chat_template,
            eot: eos,
            unk,
            has_scores: false,
            byte_fallback: spm,
            add_prefix_space,
            ignore_merges,
        },
        add_bos,
        eos,
        bos,
        merge_ranks: None,
    }))
}
