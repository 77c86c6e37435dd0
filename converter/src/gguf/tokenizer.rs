//! The tokenizer of a GGUF file (`tokenizer.ggml.*` metadata), as the
//! same [`HfTokenizer`] an HF folder's `tokenizer.json` gives.

use std::collections::HashMap;
use std::path::Path;

use ferrite_format::tokenizer::{PreTokenizer, TokenType, TokenizerKind, NO_TOKEN};
use ferrite_format::writer::{TokenEntry, TokenizerBuilder};

use super::{bad, GgufFile, Value};
use crate::error::{Error, ErrorKind, Result};
use crate::hf_tokenizer::{byte_to_char_table, spm_merges_by_score, HfTokenizer};

/// llama.cpp's token types (`tokenizer.ggml.token_type`).
fn token_type(path: &Path, id: usize, v: &Value) -> Result<TokenType> {
    Ok(match v {
        Value::Int(1) | Value::Int(5) => TokenType::Normal, // normal, unused
        Value::Int(2) => TokenType::Unknown,
        Value::Int(3) => TokenType::Special, // control
        Value::Int(4) => TokenType::Added,   // user-defined
        Value::Int(6) => TokenType::Byte,
        other => return Err(bad(path, format!("tokenizer.ggml.token_type[{id}] = {other:?} is not a token type"))),
    })
}

/// The byte-level pre-tokenizer of a `tokenizer.ggml.pre` name.
fn pretokenizer_of(pre: &str) -> Option<PreTokenizer> {
    Some(match pre {
        "gpt-2" | "gpt2" | "mpt" | "olmo" | "jais" => PreTokenizer::Gpt2,
        "smollm" | "starcoder" | "refact" | "command-r" | "codeshell" | "exaone" | "minerva-7b" => {
            PreTokenizer::Gpt2Digits
        }
        "llama-bpe" | "llama3" | "dbrx" | "smaug-bpe" => PreTokenizer::Llama3,
        "qwen2" | "stablelm2" => PreTokenizer::Qwen2,
        _ => return None,
    })
}

fn string_array<'a>(g: &'a GgufFile, key: &str) -> Result<Option<Vec<&'a [u8]>>> {
    match g.get(key) {
        None => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| match v {
                Value::Str(s) => Ok(s.as_slice()),
                _ => Err(g.err(format!("metadata {key} must be an array of strings"))),
            })
            .collect::<Result<Vec<_>>>()
            .map(Some),
        Some(_) => Err(g.err(format!("metadata {key} must be an array"))),
    }
}

/// The tokenizer from `tokenizer.ggml.*` metadata and `tokenizer.chat_template`;
/// `Ok(None)` when the file has none.
pub fn read_tokenizer(g: &GgufFile) -> Result<Option<HfTokenizer>> {
    let tok_err = |what: String| Error::new(ErrorKind::Tokenizer, format!("{}: {what}", g.path.display()));
    let Some(model) = g.str_key("tokenizer.ggml.model")? else {
        return Ok(None);
    };
    let strings =
        string_array(g, "tokenizer.ggml.tokens")?.ok_or_else(|| tok_err("tokenizer.ggml.tokens is missing".into()))?;
    let types: Vec<TokenType> = match g.get("tokenizer.ggml.token_type") {
        Some(Value::Array(items)) if items.len() == strings.len() => {
            items.iter().enumerate().map(|(i, v)| token_type(&g.path, i, v)).collect::<Result<_>>()?
        }
        Some(_) => return Err(tok_err("tokenizer.ggml.token_type is not an array as long as the tokens".into())),
        None => vec![TokenType::Normal; strings.len()],
    };
    let scores: Option<Vec<f32>> = match g.get("tokenizer.ggml.scores") {
        Some(Value::Array(items)) if items.len() == strings.len() => Some(
            items
                .iter()
                .map(|v| v.as_f64().map(|f| f as f32).filter(|f| f.is_finite()))
                .collect::<Option<_>>()
                .ok_or_else(|| tok_err("tokenizer.ggml.scores holds a non-number or a non-finite value".into()))?,
        ),
        Some(_) => return Err(tok_err("tokenizer.ggml.scores is not an array as long as the tokens".into())),
        None => None,
    };
    let n = strings.len();
    let utf8 = |id: usize| std::str::from_utf8(strings[id]).map_err(|_| tok_err(format!("token {id} is not UTF-8")));
    let specials: Vec<u32> = (0..n)
        .filter(|&i| matches!(types[i], TokenType::Special | TokenType::Added | TokenType::Unknown))
        .filter(|&i| !strings[i].is_empty())
        .map(|i| i as u32)
        .collect();
    let mut tokens = Vec::with_capacity(n);
    let mut byte_tokens = [NO_TOKEN; 256];
    // llama.cpp skips merging a chunk that is a token for Llama 3's vocabulary.
    let mut ignore_merges = false;
    let (kind, pretokenizer, merges, ranks, byte_fallback, add_prefix_space) = match model {
        "gpt2" => {
            let pre = g.str_key("tokenizer.ggml.pre")?.unwrap_or("default");
            ignore_merges = matches!(pre, "llama-bpe" | "llama3");
            let pretokenizer = pretokenizer_of(pre).ok_or_else(|| {
                Error::new(
                    ErrorKind::Unsupported,
                    format!(
                        "{}: byte-level BPE pre-tokenizer `{pre}` (tokenizer.ggml.pre) is not supported \
                         (supported: gpt-2, smollm, starcoder, refact, command-r, llama-bpe, dbrx, smaug-bpe, qwen2, stablelm2)",
                        g.path.display()
                    ),
                )
            })?;
            let char_to_byte: HashMap<char, u8> =
                byte_to_char_table().iter().enumerate().map(|(b, &c)| (c, b as u8)).collect();
            let mut str_to_id: HashMap<&[u8], u32> = HashMap::with_capacity(n);
            for id in 0..n {
                let bytes = match types[id] {
                    // Added tokens are stored as their literal text.
                    TokenType::Special | TokenType::Added => strings[id].to_vec(),
                    _ => utf8(id)?
                        .chars()
                        .map(|c| char_to_byte.get(&c).copied())
                        .collect::<Option<Vec<u8>>>()
                        .ok_or_else(|| {
                            tok_err(format!(
                                "token {id} {:?} is not in the byte-level alphabet",
                                utf8(id).unwrap_or("")
                            ))
                        })?,
                };
                str_to_id.entry(strings[id]).or_insert(id as u32);
                tokens.push(TokenEntry { bytes, ty: types[id], score: scores.as_ref().map_or(0.0, |s| s[id]) });
            }
            let table = byte_to_char_table();
            for (b, slot) in byte_tokens.iter_mut().enumerate() {
                let s = table[b].to_string();
                *slot = str_to_id.get(s.as_bytes()).copied().unwrap_or(NO_TOKEN);
            }
            let merge_strings = string_array(g, "tokenizer.ggml.merges")?
                .ok_or_else(|| tok_err("tokenizer.ggml.merges is missing".into()))?;
            let mut merges = Vec::with_capacity(merge_strings.len());
            for (i, m) in merge_strings.iter().enumerate() {
                let text = std::str::from_utf8(m).map_err(|_| tok_err(format!("merge #{i} is not UTF-8")))?;
                let (a, b) =
                    text.split_once(' ').ok_or_else(|| tok_err(format!("merge #{i} {text:?} has no space")))?;
                let id = |s: &str| {
                    str_to_id
                        .get(s.as_bytes())
                        .copied()
                        .ok_or_else(|| tok_err(format!("merge #{i} names unknown token {s:?}")))
                };
                merges.push((id(a)?, id(b)?));
            }
            (TokenizerKind::ByteLevelBpe, pretokenizer, merges, None, false, false)
        }
        "llama" => {
            for id in 0..n {
                let text = utf8(id)?;
                let bytes = match types[id] {
                    TokenType::Normal => text.replace('\u{2581}', " ").into_bytes(),
                    // llama.cpp writes user-defined tokens with spaces already.
                    _ => text.as_bytes().to_vec(),
                };
                if types[id] == TokenType::Byte {
                    let b = ferrite_format::tokenizer::parse_byte_token(text.as_bytes())
                        .ok_or_else(|| tok_err(format!("byte token {id} {text:?} is not <0xHH>")))?;
                    byte_tokens[b as usize] = id as u32;
                }
                tokens.push(TokenEntry { bytes, ty: types[id], score: scores.as_ref().map_or(0.0, |s| s[id]) });
            }
            if scores.is_none() {
                return Err(tok_err("a SentencePiece vocabulary (tokenizer.ggml.model = llama) without scores".into()));
            }
            let (merges, ranks) = spm_merges_by_score(&tokens);
            let add_prefix_space = match g.get("tokenizer.ggml.add_space_prefix") {
                None => true,
                Some(v) => {
                    v.as_bool().ok_or_else(|| tok_err("tokenizer.ggml.add_space_prefix is not a bool".into()))?
                }
            };
            let byte_fallback = byte_tokens.iter().any(|&t| t != NO_TOKEN);
            (TokenizerKind::SentencePiece, PreTokenizer::None, merges, Some(ranks), byte_fallback, add_prefix_space)
        }
        other => {
            return Err(Error::new(
                ErrorKind::Unsupported,
                format!(
                    "{}: tokenizer model `{other}` (tokenizer.ggml.model) is not supported (supported: gpt2, llama)",
                    g.path.display()
                ),
            ))
        }
    };
    let id_key = |k: &str| -> Result<Option<u32>> { Ok(g.u32_key(k)?.filter(|&id| (id as usize) < n)) };
    let eos = id_key("tokenizer.ggml.eot_token_id")?.or(id_key("tokenizer.ggml.eos_token_id")?);
    let bos = id_key("tokenizer.ggml.bos_token_id")?;
    // Byte-level BPE: llama.cpp's converter writes `unknown_token_id` from
    // the special-tokens map even when the BPE model has no `unk_token`
    // (SmolLM2); HF then drops a byte the vocabulary lacks, which is what no
    // unknown token means here. SentencePiece keeps it.
    let unk = match kind {
        TokenizerKind::SentencePiece => id_key("tokenizer.ggml.unknown_token_id")?,
        TokenizerKind::ByteLevelBpe => None,
    };
    let add_bos = match g.get("tokenizer.ggml.add_bos_token") {
        Some(v) => Some(v.as_bool().ok_or_else(|| tok_err("tokenizer.ggml.add_bos_token is not a bool".into()))?),
        // llama.cpp's defaults: SentencePiece adds BOS, byte-level BPE does not.
        None => Some(kind == TokenizerKind::SentencePiece),
    };
    let chat_template = g.str_key("tokenizer.chat_template")?.map(str::to_string);
    Ok(Some(HfTokenizer {
        builder: TokenizerBuilder {
            kind,
            pretokenizer,
            tokens,
            merges,
            byte_tokens,
            specials,
            chat_template,
            eot: eos,
            unk,
            has_scores: scores.is_some(),
            byte_fallback,
            add_prefix_space,
            ignore_merges,
        },
        merge_ranks: ranks,
        add_bos,
        eos,
        bos,
    }))
}
