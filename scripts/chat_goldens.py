#!/usr/bin/env python3
"""Goldens for chat-prompt tokenization (tests/chat_prompt.rs), from
transformers' apply_chat_template(tokenize=True) — no second BOS.

Run offline (not in CI), in a venv with transformers 5.24.0 and tokenizers
0.23.3 (no torch needed):

    python3 -m venv /tmp/hf && /tmp/hf/bin/pip install transformers==5.24.0 tokenizers==0.23.3
    /tmp/hf/bin/python scripts/chat_goldens.py ~/.cache/ferrite/smollm2-135m-f32 \\
        > tests/fixtures/chat-templates/goldens.json

Each case is SmolLM2-135M-Instruct's tokenizer.json with a chat template in
the style of a model family (ChatML as SmolLM2/Qwen2, Llama 3, Mistral) and
that family's add_bos_token; BOS is SmolLM2's `<|im_start|>`.
"""
import json
import shutil
import sys
import tempfile
from pathlib import Path

import tokenizers
import transformers
from transformers import AutoTokenizer

LLAMA3 = (
    "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + "
    "'<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)
MISTRAL = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ message['content'] + eos_token }}{% endif %}{% endfor %}"
)
CASES = [
    ("chatml", None, False),  # SmolLM2's own template
    ("llama3", LLAMA3, True),
    ("mistral", MISTRAL, True),
]
# One user turn each: what `ferrite run --chat -p TEXT` renders.
CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "  Name three colours, please. <|im_end|>"}],
]


def main():
    src = Path(sys.argv[1])
    out = {
        "generator": f"scripts/chat_goldens.py; transformers {transformers.__version__}, tokenizers {tokenizers.__version__}",
        "cases": [],
    }
    for name, template, add_bos in CASES:
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            shutil.copy(src / "tokenizer.json", tmp / "tokenizer.json")
            cfg = json.loads((src / "tokenizer_config.json").read_text())
            if template is not None:
                cfg["chat_template"] = template
            cfg["add_bos_token"] = add_bos
            (tmp / "tokenizer_config.json").write_text(json.dumps(cfg))
            tok = AutoTokenizer.from_pretrained(tmp)
            for messages in CONVERSATIONS:
                ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
                if isinstance(ids, dict) or hasattr(ids, "keys"):
                    ids = ids["input_ids"]
                out["cases"].append(
                    {
                        "style": name,
                        "chat_template": cfg["chat_template"],
                        "add_bos_token": add_bos,
                        "messages": messages,
                        "ids": list(map(int, ids)),
                    }
                )
    json.dump(out, sys.stdout, indent=1)
    print()


main()
