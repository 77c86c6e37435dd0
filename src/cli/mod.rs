//! Subcommands of the `ferrite` tool.

mod bench;
mod chat;
mod convert;
mod engine;
mod generate;
mod inspect;
mod kld;
mod perplexity;
mod run;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Errors a subcommand reports: a message, printed as `error: ...`.
pub type CliResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Ferrite: an edge LLM inference runtime.
///
/// Convert Hugging Face checkpoints into one memory-mappable .frt file
/// (int4/int8/f16/f32 weights, config and tokenizer inside) and inspect it.
#[derive(Parser, Debug)]
#[command(name = "ferrite", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Convert a Hugging Face safetensors folder or a GGUF file into a Ferrite file.
    Convert(convert::Args),
    /// Show a Ferrite file's config, tokenizer and tensors; verify checksums.
    Inspect(inspect::Args),
    /// Generate text from a prompt.
    Run(run::Args),
    /// Chat with a model in a multi-turn REPL.
    Chat(chat::Args),
    /// Measure perplexity on a text file.
    Perplexity(perplexity::Args),
    /// Measure prefill and decode speed (tokens/s), like llama-bench.
    #[command(long_about = bench::LONG_ABOUT)]
    Bench(bench::Args),
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> CliResult<ExitCode> {
    match cli.command {
        Command::Convert(args) => convert::run(args),
        Command::Inspect(args) => inspect::run(args),
        Command::Run(args) => run::run(args),
        Command::Chat(args) => chat::run(args),
        Command::Perplexity(args) => perplexity::run(args),
        Command::Bench(args) => bench::run(args),
    }
}

/// A Ferrite file mapped into memory (page-aligned, zero-copy).
pub struct MappedFile {
    map: memmap2::Mmap,
}

impl MappedFile {
    /// Maps `path` read-only.
    pub fn open(path: &std::path::Path) -> CliResult<Self> {
        let file = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
        // SAFETY: the map is read-only. Ferrite files are not modified in
        // place by Ferrite (the converter writes a new file and renames it);
        // another process truncating the file while mapped is the usual
        // mmap hazard, accepted as by every mmap-based loader.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(MappedFile { map })
    }
    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.map
    }
}

/// Writes `text` to stdout; a closed pipe (`| head`) is not an error.
pub fn print_stdout(text: &str) -> CliResult<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}
