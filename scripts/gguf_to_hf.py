#!/usr/bin/env python3
"""Dequantize the SmolLM2-135M-Instruct GGUF into an f32 Hugging Face safetensors file.

Usage: gguf_to_hf.py GGUF_PATH OUT_SAFETENSORS

Follows tests/fixtures/smollm2-135m/README.md ("Rebuilding the f32 HF folder"):
  * every GGUF tensor read with the `gguf` package and dequantized with
    `gguf.quants.dequantize` to float32 (F32 tensors taken as they are);
  * GGUF names mapped to HF Llama names (no output.weight: embeddings are tied);
  * attn_q / attn_k rows un-permuted from llama.cpp's interleaved RoPE order
    back to HF's rotate-half order;
  * saved with safetensors.numpy.save_file(..., metadata={"format": "pt"}),
    all float32, C-contiguous [out, in].

Needs: gguf==0.19.0, numpy, safetensors (scripts/fetch-models.sh installs them
into a private venv). Writes OUT_SAFETENSORS directly; the caller is expected to
pass a temporary name and rename it after verifying the checksum.
"""

import re
import sys

import numpy as np
from gguf import GGUFReader
from gguf.constants import GGMLQuantizationType
from gguf.quants import dequantize
from safetensors.numpy import save_file

# SmolLM2-135M geometry (also checked against the GGUF metadata below).
HIDDEN = 576
N_LAYERS = 30
N_HEAD = 9
N_HEAD_KV = 3
HEAD_DIM = HIDDEN // N_HEAD  # 64
VOCAB = 49152
FFN = 1536

LAYER_MAP = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}

EXPECTED_SHAPES = {
    "self_attn.q_proj": (N_HEAD * HEAD_DIM, HIDDEN),
    "self_attn.k_proj": (N_HEAD_KV * HEAD_DIM, HIDDEN),
    "self_attn.v_proj": (N_HEAD_KV * HEAD_DIM, HIDDEN),
    "self_attn.o_proj": (HIDDEN, N_HEAD * HEAD_DIM),
    "input_layernorm": (HIDDEN,),
    "post_attention_layernorm": (HIDDEN,),
    "mlp.gate_proj": (FFN, HIDDEN),
    "mlp.up_proj": (FFN, HIDDEN),
    "mlp.down_proj": (HIDDEN, FFN),
}

BLK_RE = re.compile(r"^blk\.(\d+)\.([a-z_]+)\.weight$")


def die(msg):
    print(f"gguf_to_hf.py: error: {msg}", file=sys.stderr)
    sys.exit(1)


def hf_name(gguf_name):
    if gguf_name == "token_embd.weight":
        return "model.embed_tokens.weight", (VOCAB, HIDDEN)
    if gguf_name == "output_norm.weight":
        return "model.norm.weight", (HIDDEN,)
    m = BLK_RE.match(gguf_name)
    if m and m.group(2) in LAYER_MAP:
        suffix = LAYER_MAP[m.group(2)]
        return f"model.layers.{int(m.group(1))}.{suffix}.weight", EXPECTED_SHAPES[suffix]
    die(f"unexpected GGUF tensor {gguf_name!r} (only tied-embedding Llama tensors are handled)")


def unpermute(w, n_head):
    """Inverse of llama.cpp's convert_hf_to_gguf LlamaModel.permute.

    llama.cpp stores each head's rows as [head_dim/2, 2] (interleaved pairs);
    HF's rotate-half layout is [2, head_dim/2].
    """
    out, d = w.shape
    return w.reshape(n_head, out // n_head // 2, 2, d).swapaxes(1, 2).reshape(out, d)


def field_int(reader, key):
    f = reader.get_field(key)
    if f is None:
        return None
    return int(f.parts[f.data[0]][0])


def main(argv):
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    src, dst = argv[1], argv[2]

    reader = GGUFReader(src)
    for key, want in (
        ("llama.embedding_length", HIDDEN),
        ("llama.block_count", N_LAYERS),
        ("llama.attention.head_count", N_HEAD),
        ("llama.attention.head_count_kv", N_HEAD_KV),
        ("llama.feed_forward_length", FFN),
    ):
        got = field_int(reader, key)
        if got != want:
            die(f"GGUF metadata {key} = {got}, expected {want} (not SmolLM2-135M?)")

    tensors = {}
    for t in reader.tensors:
        name, want_shape = hf_name(t.name)
        if t.tensor_type == GGMLQuantizationType.F32:
            arr = np.array(t.data, dtype=np.float32)
        else:
            arr = dequantize(t.data, t.tensor_type)
        # GGUF lists dims innermost-first; numpy order is the reverse.
        arr = arr.reshape(tuple(int(x) for x in reversed(t.shape)))
        if arr.dtype != np.float32:
            die(f"{t.name}: dequantized to {arr.dtype}, expected float32")
        if t.name.endswith(".attn_q.weight"):
            arr = unpermute(arr, N_HEAD)
        elif t.name.endswith(".attn_k.weight"):
            arr = unpermute(arr, N_HEAD_KV)
        if arr.shape != want_shape:
            die(f"{t.name} -> {name}: shape {arr.shape}, expected {want_shape}")
        if name in tensors:
            die(f"duplicate tensor {name}")
        tensors[name] = np.ascontiguousarray(arr, dtype=np.float32)

    want_count = 2 + N_LAYERS * len(LAYER_MAP)
    if len(tensors) != want_count:
        die(f"got {len(tensors)} tensors, expected {want_count}")

    save_file(tensors, dst, metadata={"format": "pt"})
    n_params = sum(a.size for a in tensors.values())
    print(f"gguf_to_hf.py: wrote {len(tensors)} tensors ({n_params} parameters) to {dst}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
