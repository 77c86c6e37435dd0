#!/usr/bin/env python3
"""Transformers goldens for Qwen2.5-Coder-1.5B-Instruct (tests/golden_qwen.rs).

Usage: qwen_goldens.py HF_DIR OUT_SAFETENSORS

    ~/.cache/ferrite/torch-venv/bin/python scripts/qwen_goldens.py \\
        ~/.cache/ferrite/qwen2.5-coder-1.5b-f32 \\
        tests/fixtures/qwen2.5-coder-1.5b/golden.safetensors

HF_DIR is the f32 folder `scripts/qwen_to_hf.py` makes from the Q4_K_M GGUF.
Runs offline on the CPU with one torch thread (about 2.5 minutes; 16 GB of
memory at the f64 step). Three cases:

  prompt0  a code prompt, tokenized as is (no BOS: the tokenizer adds none);
  prompt1  a longer English prompt, likewise;
  chat     one user turn through apply_chat_template(add_generation_prompt=True)
           (the template inserts Qwen's default system prompt).

For each case CASE, golden.safetensors holds:

  CASE_ids        int64 [n]        the prompt ids
  CASE_positions  int64 [k]        the prompt positions whose logits are stored
                                   (prompts: 0 and the last 4; chat: the last)
  CASE_logits     float32 [k, V]   logits there, from one full forward of the
                                   prompt (use_cache=False, no attention mask)
  CASE_greedy     int64 [32]       model.generate(do_sample=False,
                                   max_new_tokens=32, eos_token_id=None): does
                                   not stop at EOS
  CASE_margins    float32 [32]     top1 - top2 logit at each greedy step, from
                                   one no-cache forward of prompt + greedy
                                   (whose argmaxes must equal CASE_greedy)

and `__metadata__["fixture_info"]`, a JSON string with the versions, the
prompt texts, the f32-vs-f64 max |logit| difference over every prompt
position of each case (the scale of float32 rounding noise), each greedy
path's smallest margin, the decoded continuations, and a check of the Q/K
row order (mean NLL of each prompt's tokens, f64, with the rows as stored
vs. with llama.cpp's LLaMA permutation undone). Prints fixture_info to stdout.
"""

import json
import platform
import sys

import numpy as np
import safetensors
import tokenizers
import torch
import transformers
from safetensors.numpy import save_file
from transformers import AutoTokenizer, Qwen2ForCausalLM

PROMPT0 = 'def fibonacci(n):\n    """Return the n-th Fibonacci number."""\n'
PROMPT1 = (
    "The Rust programming language helps you write faster, more reliable software. "
    "Rust's ownership model, introduced in 2015, means that every value has a single owner, "
    "and the borrow checker makes sure that references never outlive the data they point to."
)
CHAT_USER = "Write a Python function that reverses a string."
N_NEW = 32
LAST = 4


def forward(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids]), use_cache=False).logits[0]


def greedy(model, ids):
    x = torch.tensor([ids])
    with torch.no_grad():
        out = model.generate(
            x,
            attention_mask=torch.ones_like(x),
            do_sample=False,
            max_new_tokens=N_NEW,
            min_new_tokens=N_NEW,
            eos_token_id=None,
            use_cache=True,
        )
    new = out[0, len(ids):].tolist()
    if len(new) != N_NEW:
        sys.exit(f"generate gave {len(new)} new tokens, expected {N_NEW}")
    return new


def rederive(model, ids, new):
    """Argmax and top1-top2 margin at each greedy step, from one no-cache forward."""
    logits = forward(model, ids + new[:-1])[len(ids) - 1:]
    top2 = torch.topk(logits, 2, dim=-1)
    if top2.indices[:, 0].tolist() != new:
        sys.exit("greedy path re-derived without the cache differs from generate()")
    return (top2.values[:, 0] - top2.values[:, 1]).numpy().astype(np.float32)


def mean_nll(model, ids):
    logits = forward(model, ids).double()
    lp = torch.log_softmax(logits[:-1], dim=-1)
    return float(-lp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].mean())


def unpermute_llama(w, n_head):
    """Inverse of llama.cpp's LLaMA Q/K row permutation (rows per head from
    interleaved pairs back to rotate-half halves), on weights or biases."""
    shape = w.shape
    return w.reshape(n_head, shape[0] // n_head // 2, 2, *shape[1:]).transpose(1, 2).reshape(shape)


def main(argv):
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    hf_dir, out = argv[1], argv[2]
    torch.set_num_threads(1)
    tok = AutoTokenizer.from_pretrained(hf_dir)
    model = Qwen2ForCausalLM.from_pretrained(hf_dir, dtype=torch.float32, attn_implementation="eager")
    model.eval()
    gc = model.generation_config
    for key in ("repetition_penalty", "temperature", "top_k", "top_p"):
        v = getattr(gc, key, None)
        if v not in (None, 1.0) and not (key == "top_k" and v in (0, 50)):
            sys.exit(f"generation_config.{key} = {v}: HF_DIR's generation_config.json is not the plain one")
    cfg = model.config
    assert not cfg.tie_word_embeddings
    assert not torch.equal(model.lm_head.weight, model.model.embed_tokens.weight)

    msgs = [{"role": "user", "content": CHAT_USER}]
    chat_text = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=False)
    chat_ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
    if hasattr(chat_ids, "keys"):
        chat_ids = chat_ids["input_ids"]
    chat_ids = list(chat_ids)
    if tok(chat_text, add_special_tokens=False)["input_ids"] != chat_ids:
        sys.exit("chat ids differ from the rendered text's ids")
    cases = {
        "prompt0": (PROMPT0, tok(PROMPT0)["input_ids"]),
        "prompt1": (PROMPT1, tok(PROMPT1)["input_ids"]),
        "chat": (chat_text, chat_ids),
    }
    for name, (_, ids) in cases.items():
        if tok.bos_token_id is not None and ids[0] == tok.bos_token_id:
            sys.exit(f"{name}: the tokenizer added BOS")

    tensors, info_cases, f32_logits = {}, {}, {}
    for name, (text, ids) in cases.items():
        n = len(ids)
        positions = [n - 1] if name == "chat" else [0] + list(range(n - LAST, n))
        logits = forward(model, ids)
        f32_logits[name] = logits.clone()
        new = greedy(model, ids)
        margins = rederive(model, ids, new)
        step = int(np.argmin(margins))
        eos = tok.convert_tokens_to_ids("<|im_end|>")
        last = logits[n - 1]
        top5 = torch.topk(last, 5)
        tensors[f"{name}_ids"] = np.array(ids, dtype=np.int64)
        tensors[f"{name}_positions"] = np.array(positions, dtype=np.int64)
        tensors[f"{name}_logits"] = np.ascontiguousarray(logits[positions].numpy(), dtype=np.float32)
        tensors[f"{name}_greedy"] = np.array(new, dtype=np.int64)
        tensors[f"{name}_margins"] = margins
        info_cases[name] = {
            "text": text,
            "ids": ids,
            "positions": positions,
            "greedy": new,
            "greedy_text": tok.decode(new, skip_special_tokens=False),
            "first_eos_index": new.index(eos) if eos in new else None,
            "min_margin": float(margins[step]),
            "min_margin_step": step,
            "last_top5": [[int(i), round(float(v), 4)] for i, v in zip(top5.indices, top5.values)],
            "max_abs_logit": float(logits.abs().max()),
        }
        print(f"{name}: {n} ids, min margin {margins[step]:.4f} at step {step}", file=sys.stderr)

    # float32 rounding noise: the same weights in float64.
    model = model.to(torch.float64)
    for name, (_, ids) in cases.items():
        d = (forward(model, ids) - f32_logits[name].double()).abs().max()
        info_cases[name]["f32_vs_f64_max_abs_diff"] = float(d)
        print(f"{name}: f32 vs f64 max |diff| {float(d):.3e}", file=sys.stderr)

    # Q/K row order: as stored (llama.cpp permutes Q/K rows only for its
    # `llama` architecture; Qwen2 uses NEOX RoPE, HF's rotate-half) vs. with
    # the LLaMA permutation undone. Mean NLL of each prompt's own tokens
    # (not of the greedy tokens, which favour the weights that made them);
    # the English and code prompts must prefer the rows as stored. The chat
    # prompt (a system prompt after a special token) is recorded, not
    # checked: its first tokens are unpredictable either way.
    nll_stored = {name: mean_nll(model, ids) for name, (_, ids) in cases.items()}
    with torch.no_grad():
        for layer in model.model.layers:
            a = layer.self_attn
            for proj, heads in ((a.q_proj, cfg.num_attention_heads), (a.k_proj, cfg.num_key_value_heads)):
                proj.weight.copy_(unpermute_llama(proj.weight, heads))
                proj.bias.copy_(unpermute_llama(proj.bias, heads))
    nll_unpermuted = {name: mean_nll(model, ids) for name, (_, ids) in cases.items()}
    print(f"mean NLL as stored {nll_stored}, LLaMA-unpermuted {nll_unpermuted}", file=sys.stderr)
    for name in ("prompt0", "prompt1"):
        if not nll_stored[name] < nll_unpermuted[name]:
            sys.exit(f"{name}: Q/K rows as stored do not predict better than unpermuted")

    info = {
        "generator": "scripts/qwen_goldens.py",
        "model_class": "Qwen2ForCausalLM",
        "attn_implementation": "eager",
        "compute_dtype": "float32",
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "tokenizers": tokenizers.__version__,
            "safetensors": safetensors.__version__,
            "numpy": np.__version__,
        },
        "chat_user_message": CHAT_USER,
        "greedy": f"generate(do_sample=False, max_new_tokens={N_NEW}, eos_token_id=None): does not stop at EOS",
        "qk_order_mean_nll": {"as_stored": nll_stored, "llama_unpermuted": nll_unpermuted},
        "cases": info_cases,
    }
    save_file(tensors, out, metadata={"fixture_info": json.dumps(info, sort_keys=True)})
    json.dump(info, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
