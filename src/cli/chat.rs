//! `ferrite chat`: a multi-turn REPL.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use ferrite_runtime::generate::{GenOptions, History};
use ferrite_runtime::Session;

use super::engine::{self, KvArg, Message};
use super::generate::{self, Output};
use super::CliResult;

/// Chat with a model: each line you type is a user turn; the model's reply
/// streams back. Commands: /reset (new conversation), /quit (or end of input).
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The .frt model file (it must hold a chat template).
    #[arg(short, long, value_name = "FILE")]
    model: PathBuf,
    /// System prompt (else the template's default, if any).
    #[arg(long)]
    system: Option<String>,
    /// Most tokens per reply.
    #[arg(short = 'n', long, default_value_t = 512)]
    n_predict: usize,
    #[command(flatten)]
    pub sampling: engine::SamplingArgs,
    /// Context size in tokens (capped at the model's trained context).
    #[arg(long, default_value_t = 4096)]
    ctx: usize,
    /// Threads for the matrix products [default: all available CPUs].
    #[arg(short = 't', long)]
    pub threads: Option<usize>,
    #[command(flatten)]
    pub stream: engine::StreamArgs,
    /// KV cache element type.
    #[arg(long, value_enum, default_value = "f16")]
    kv: KvArg,
}

pub fn run(args: Args) -> CliResult<ExitCode> {
    let threads = engine::threads(args.threads);
    let model = engine::open_model(&args.model)?;
    let tok = engine::tokenizer(&model, &args.model)?;
    if tok.view().chat_template().is_empty() {
        return Err(format!("{}: this model file has no chat template", args.model.display()).into());
    }
    let mut sampler = args.sampling.sampler()?;
    let mut cfg = engine::session_config(&model, args.ctx, args.kv, threads);
    args.stream.apply(&mut cfg);
    let plan = model.plan(&cfg)?;
    let mut arena = vec![0u8; plan.arena_bytes()];
    let mut session = Session::new(&model, &plan, &mut arena)?;
    let initial: Vec<Message> =
        args.system.iter().map(|s| Message { role: "system".into(), content: s.clone() }).collect();
    let mut messages = initial.clone();
    // Tokens whose keys/values are in the cache, in order.
    let mut fed: Vec<u32> = Vec::new();
    let mut history_buf = generate::history_buffer(&sampler);
    // The repetition penalty looks back across the whole conversation.
    let mut history = History::new(&mut history_buf);
    eprintln!("[ferrite] chat with {} — /reset starts over, /quit exits", args.model.display());
    let stdin = std::io::stdin();
    let mut lines = stdin.lock().lines();
    loop {
        print!("> ");
        std::io::stdout().flush()?;
        let Some(line) = lines.next() else { break };
        let line = line?;
        let input = line.trim();
        match input {
            "" => continue,
            "/quit" | "/exit" => break,
            "/reset" => {
                messages = initial.clone();
                fed.clear();
                history.clear();
                session.reset();
                eprintln!("[ferrite] conversation reset");
                continue;
            }
            _ => {}
        }
        messages.push(Message { role: "user".into(), content: input.to_string() });
        let text = engine::render_chat(&model, &tok, &messages, true)?;
        let ids = engine::encode_chat(&tok, &text)?;
        // Reuse the cache when the conversation so far is a prefix.
        let new = if ids.starts_with(&fed) && ids.len() > fed.len() {
            &ids[fed.len()..]
        } else {
            // The whole conversation is fed again: it is the history too.
            session.reset();
            fed.clear();
            history.clear();
            &ids[..]
        };
        let opts = GenOptions { max_new: args.n_predict, ignore_eos: false };
        let output = Output { text: true, ids: false, collect_ids: true };
        let g = match generate::generate(
            model.config(),
            &mut session,
            Some(&tok),
            &mut sampler,
            new,
            &opts,
            output,
            None,
            &mut history,
        ) {
            Ok(g) => g,
            Err(e) => {
                eprintln!("\n[ferrite] {e}; use /reset to start a new conversation");
                messages.pop();
                session.reset();
                fed.clear();
                continue;
            }
        };
        println!();
        if let Some(e) = g.error {
            eprintln!("[ferrite] {e}; use /reset to start a new conversation");
        }
        // Everything but the last sampled token went through the model.
        fed.extend_from_slice(new);
        fed.extend_from_slice(&g.ids[..g.ids.len().saturating_sub(1)]);
        let reply_ids: Vec<u32> = g.ids.iter().copied().filter(|&id| !model.config().is_stop(id)).collect();
        let mut buf = vec![0u8; reply_ids.iter().map(|&id| tok.token_bytes(id).map(<[u8]>::len).unwrap_or(0)).sum()];
        let n = tok.decode(&reply_ids, &mut buf)?;
        messages.push(Message { role: "assistant".into(), content: String::from_utf8_lossy(&buf[..n]).into_owned() });
    }
    Ok(ExitCode::SUCCESS)
}
