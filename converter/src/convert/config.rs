//! Config resolution: the model record and the tokenizer section, from an
//! HF folder's `config.json` and `tokenizer.json` or from a GGUF file's
//! metadata, with the stop ids and BOS flags completed from the tokenizer
//! and the record validated.

use std::path::Path;

use ferrite_format::{ModelConfig, MAX_STOP_IDS};

use super::source::is_gguf;
use crate::error::{Error, ErrorKind, Result};
use crate::gguf::{self, GgufFile};
use crate::{hf_config, hf_tokenizer};

/// What the input says about the model, ready to be written.
pub(super) struct Resolved {
    /// The record, validated: stop ids are the configs' EOS ids then the
    /// tokenizer's end-of-turn token; BOS flags from the tokenizer where
    /// the config has none.
    pub(super) config: ModelConfig,
    /// The tokenizer section's bytes; `None` when the input has no
    /// tokenizer (reported in the warnings).
    pub(super) tokenizer: Option<Vec<u8>>,
    /// The GGUF file, opened, when the input is one (its tensors are read
    /// next).
    pub(super) gguf: Option<GgufFile>,
}

/// Reads and completes the model record and the tokenizer of `input` (an
/// HF folder or a GGUF file); non-fatal findings go to `warnings`.
pub(super) fn resolve(input: &Path, warnings: &mut Vec<String>) -> Result<Resolved> {
    let gguf_file = if is_gguf(input) { Some(GgufFile::open(input)?) } else { None };
    let (hf, tokenizer) = match &gguf_file {
        Some(g) => (gguf::read_config(g)?, gguf::read_tokenizer(g)?),
        None => (hf_config::read(input)?, hf_tokenizer::read(input)?),
    };
    let mut config = hf.config;
    // Files named in messages about the config and the tokenizer.
    let (config_path, tokenizer_path) = match &gguf_file {
        Some(_) => (input.to_path_buf(), input.to_path_buf()),
        None => (input.join("config.json"), input.join("tokenizer.json")),
    };

    // Stop ids: the configs' EOS ids, then the tokenizer's end-of-turn token.
    let mut stops = hf.eos_ids.clone();
    let mut section = None;
    match &tokenizer {
        None => warnings.push(format!(
            "{}: no tokenizer{}: the file will have no tokenizer (prompts must be given as token ids)",
            input.display(),
            if gguf_file.is_some() { " metadata" } else { ".json" }
        )),
        Some(t) => {
            if let Some(eot) = t.eos {
                if !stops.contains(&eot) {
                    stops.push(eot);
                }
            }
            if config.bos().is_none() {
                if let Some(bos) = t.bos.filter(|&b| b < config.vocab_size) {
                    config.flags |= ModelConfig::FLAG_HAS_BOS;
                    config.bos_id = bos;
                }
            }
            if t.add_bos == Some(true) && config.bos().is_some() {
                config.flags |= ModelConfig::FLAG_ADD_BOS;
            }
            let bytes = t
                .section_bytes()
                .map_err(|e| Error::new(ErrorKind::Tokenizer, format!("{}: {e}", tokenizer_path.display())))?;
            if t.builder.tokens.len() as u64 > config.vocab_size as u64 {
                return Err(Error::new(
                    ErrorKind::Tokenizer,
                    format!(
                        "{}: {} tokens but the model's vocab_size is {}",
                        tokenizer_path.display(),
                        t.builder.tokens.len(),
                        config.vocab_size
                    ),
                ));
            }
            section = Some(bytes);
        }
    }
    if stops.len() > MAX_STOP_IDS {
        warnings.push(format!("{} stop ids; keeping the first {MAX_STOP_IDS}", stops.len()));
        stops.truncate(MAX_STOP_IDS);
    }
    config.n_stop_ids = stops.len() as u32;
    config.stop_ids[..stops.len()].copy_from_slice(&stops);
    config.validate().map_err(|e| Error::new(ErrorKind::Config, format!("{}: {e}", config_path.display())))?;
    Ok(Resolved { config, tokenizer: section, gguf: gguf_file })
}
