//! `tokenizer.json` + `tokenizer_config.json` into a tokenizer section.

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
}

fn tok_err(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Tokenizer, format!("{}: {what}", path.display()))
}

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
        }
        _ => {}
    }
    Err(Error::new(
        ErrorKind::Unsupported,
        format!(
            "{}: pre-tokenizer {} is not supported yet (supported: ByteLevel with the GPT-2 regex, optionally after Digits(individual_digits))",
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
    if model.get("byte_fallback").and_then(Value::as_bool).unwrap_or(false) {
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!("{}: SentencePiece-style BPE (byte_fallback) is not supported yet", path.display()),
        ));
    }
    for flag in ["ignore_merges", "fuse_unk"] {
        if model.get(flag).and_then(Value::as_bool).unwrap_or(false) {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!("{}: BPE option `{flag}: true` is not supported yet", path.display()),
            ));
        }
    }
    let pre = json.get("pre_tokenizer").unwrap_or(&Value::Null);
    let pretokenizer = detect_pretokenizer(&path, pre)?;
    if let Some(norm) = json.get("normalizer").filter(|n| !n.is_null()) {
        return Err(Error::new(
            ErrorKind::Unsupported,
            format!("{}: normalizer {} is not supported yet", path.display(), norm),
        ));
    }

    let char_to_byte: HashMap<char, u8> = byte_to_char_table().iter().enumerate().map(|(b, &c)| (c, b as u8)).collect();
    let decode = |s: &str| -> Option<Vec<u8>> { s.chars().map(|c| char_to_byte.get(&c).copied()).collect() };

    let vocab = model
        .get("vocab")
        .and_then(Value::as_object)
        .ok_or_else(|| tok_err(&path, "`model.vocab` is missing or not an object"))?;
    let mut by_id: Vec<Option<TokenEntry>> = Vec::new();
    let mut str_to_id: HashMap<&str, u32> = HashMap::with_capacity(vocab.len());
    let put = |by_id: &mut Vec<Option<TokenEntry>>, id: u32, entry: TokenEntry| {
        let i = id as usize;
        if by_id.len() <= i {
            by_id.resize(i + 1, None);
        }
        by_id[i] = Some(entry);
    };
    for (s, id) in vocab {
        let id = id
            .as_u64()
            .and_then(|v| u32::try_from(v).ok())
            .ok_or_else(|| tok_err(&path, format!("vocab entry {s:?} has a bad id")))?;
        let bytes =
            decode(s).ok_or_else(|| tok_err(&path, format!("vocab entry {s:?} is not in the byte-level alphabet")))?;
        str_to_id.insert(s.as_str(), id);
        put(&mut by_id, id, TokenEntry { bytes, ty: TokenType::Normal, score: 0.0 });
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
            put(&mut by_id, id, TokenEntry { bytes: content.as_bytes().to_vec(), ty, score: 0.0 });
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
        let s = table[b].to_string();
        *slot = str_to_id.get(s.as_str()).copied().unwrap_or(NO_TOKEN);
    }
    let present = byte_tokens.iter().filter(|&&t| t != NO_TOKEN).count();
    if present < 128 {
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
            kind: TokenizerKind::ByteLevelBpe,
            pretokenizer,
            tokens,
            merges,
            byte_tokens,
            specials,
            chat_template,
            eot: eos,
            unk,
            has_scores: false,
            byte_fallback: false,
            add_prefix_space: false,
        },
        add_bos,
        eos,
        bos,
    }))
}
