#!/usr/bin/env python3
"""Dequantize the Qwen2.5-Coder-1.5B-Instruct Q4_K_M GGUF into an f32 Hugging
Face Qwen2 folder (the reference weights of tests/fixtures/qwen2.5-coder-1.5b/).

Usage: qwen_to_hf.py GGUF_PATH OUT_DIR

    gguf=$(bash scripts/fetch-models.sh qwen2.5-coder-1.5b | tail -1)
    ~/.cache/ferrite/torch-venv/bin/python scripts/qwen_to_hf.py "$gguf" \\
        ~/.cache/ferrite/qwen2.5-coder-1.5b-f32

Writes into OUT_DIR (created; files there of the same names are replaced):

  model-0000K-of-0000N.safetensors, model.safetensors.index.json
      every GGUF tensor dequantized with `gguf.quants.dequantize` to float32
      (F32 tensors as they are), HF Qwen2 names, C-contiguous [out, in];
      `token_embd` -> model.embed_tokens.weight and `output` -> lm_head.weight
      (two tables: the embeddings are not tied). Q and K rows are taken as
      stored: llama.cpp's converter permutes them only for its `llama`
      architecture, Qwen2 uses the NEOX (rotate-half) RoPE that HF uses.
      Shards of at most ~2 GB, so that writing never holds more than one
      shard beside its serialization.
  config.json        Qwen2ForCausalLM, every geometry/RoPE/norm value from the
                     GGUF metadata, tie_word_embeddings false, float32.
  generation_config.json  bos/eos/pad ids only (no sampling defaults).
  tokenizer.json     rebuilt from the GGUF's byte-level BPE (`tokenizer.ggml.*`,
                     model gpt2, pre-tokenizer qwen2): NFC normalizer, Qwen2's
                     split regex then ByteLevel, the NORMAL tokens as the BPE
                     vocabulary, the merges in order, and the CONTROL (special)
                     and USER_DEFINED (not special) tokens as added tokens at
                     their GGUF ids. The UNUSED padding rows ([PAD151665]...)
                     are left out, as in Qwen's own tokenizer.json.
  tokenizer_config.json   the chat template (`tokenizer.chat_template`), BOS/EOS
                     from the metadata, add_bos_token from the metadata.

Needs gguf==0.19.0, numpy, safetensors, tokenizers (the torch venv). Prints
each shard's sha256 to stderr.
"""

import hashlib
import json
import os
import re
import sys

import numpy as np
from gguf import GGUFReader
from gguf.constants import GGMLQuantizationType
from gguf.quants import dequantize
from safetensors.numpy import save_file
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

ARCH = "qwen2"
SHARD_BYTES = 2 << 30

# llama.cpp's `qwen2` pre-tokenizer: Qwen2's split regex.
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# gguf token_type values (llama.cpp's llama_token_type).
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

LAYER_MAP = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
BLK_RE = re.compile(r"^blk\.(\d+)\.(.+)$")


def die(msg):
    print(f"qwen_to_hf.py: error: {msg}", file=sys.stderr)
    sys.exit(1)


def field(reader, key, required=True):
    f = reader.get_field(key)
    if f is None:
        if required:
            die(f"GGUF metadata {key} missing")
        return None
    return f.contents()


class Geometry:
    def __init__(self, reader):
        arch = field(reader, "general.architecture")
        if arch != ARCH:
            die(f"general.architecture is {arch!r}, expected {ARCH!r}")
        g = lambda k, req=True: field(reader, f"{ARCH}.{k}", req)  # noqa: E731
        self.n_layers = g("block_count")
        self.d_model = g("embedding_length")
        self.ffn = g("feed_forward_length")
        self.n_heads = g("attention.head_count")
        self.n_kv_heads = g("attention.head_count_kv")
        self.ctx = g("context_length")
        self.rope_theta = g("rope.freq_base")
        self.rms_eps = g("attention.layer_norm_rms_epsilon")
        self.head_dim = self.d_model // self.n_heads
        if g("rope.dimension_count", False) not in (None, self.head_dim):
            die("partial RoPE is not handled")
        if g("rope.scaling.type", False) not in (None, "none"):
            die("RoPE scaling is not handled")
        self.vocab = len(field(reader, "tokenizer.ggml.tokens"))

    def shapes(self):
        """Every HF tensor name with its [out, in] / [n] shape."""
        d, q, kv, f = self.d_model, self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim, self.ffn
        per_layer = {
            "input_layernorm.weight": (d,),
            "self_attn.q_proj.weight": (q, d),
            "self_attn.q_proj.bias": (q,),
            "self_attn.k_proj.weight": (kv, d),
            "self_attn.k_proj.bias": (kv,),
            "self_attn.v_proj.weight": (kv, d),
            "self_attn.v_proj.bias": (kv,),
            "self_attn.o_proj.weight": (d, q),
            "post_attention_layernorm.weight": (d,),
            "mlp.gate_proj.weight": (f, d),
            "mlp.up_proj.weight": (f, d),
            "mlp.down_proj.weight": (d, f),
        }
        out = {
            "model.embed_tokens.weight": (self.vocab, d),
            "model.norm.weight": (d,),
            "lm_head.weight": (self.vocab, d),
        }
        for i in range(self.n_layers):
            for k, s in per_layer.items():
                out[f"model.layers.{i}.{k}"] = s
        return out


def hf_name(gguf_name):
    if gguf_name == "token_embd.weight":
        return "model.embed_tokens.weight"
    if gguf_name == "output.weight":
        return "lm_head.weight"
    if gguf_name == "output_norm.weight":
        return "model.norm.weight"
    m = BLK_RE.match(gguf_name)
    if m and m.group(2) in LAYER_MAP:
        return f"model.layers.{int(m.group(1))}.{LAYER_MAP[m.group(2)]}"
    die(f"unexpected GGUF tensor {gguf_name!r}")


def tensor_f32(t):
    if t.tensor_type == GGMLQuantizationType.F32:
        arr = np.array(t.data, dtype=np.float32)
    else:
        arr = dequantize(t.data, t.tensor_type)
    if arr.dtype != np.float32:
        die(f"{t.name}: dequantized to {arr.dtype}, expected float32")
    # GGUF lists dims innermost-first; numpy order is the reverse.
    return np.ascontiguousarray(arr.reshape(tuple(int(x) for x in reversed(t.shape))))


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def write_weights(reader, geo, out_dir):
    shapes = geo.shapes()
    by_name = {}
    for t in reader.tensors:
        name = hf_name(t.name)
        if name in by_name:
            die(f"duplicate tensor {name}")
        by_name[name] = t
    if set(by_name) != set(shapes):
        die(f"tensor set differs: missing {sorted(set(shapes) - set(by_name))[:4]}, "
            f"extra {sorted(set(by_name) - set(shapes))[:4]}")
    # Shards in a fixed order (embeddings, layers in order, norm, head),
    # assigned before any is written so that names carry the shard count.
    order = ["model.embed_tokens.weight"]
    order += [n for n in shapes if n.startswith("model.layers.")]
    order += ["model.norm.weight", "lm_head.weight"]
    shards, size = [[]], 0
    for name in order:
        nbytes = 4 * int(np.prod(shapes[name]))
        if shards[-1] and size + nbytes > SHARD_BYTES:
            shards.append([])
            size = 0
        shards[-1].append(name)
        size += nbytes
    weight_map, total = {}, 0
    for k, names in enumerate(shards):
        fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = {}
        for name in names:
            arr = tensor_f32(by_name[name])
            if arr.shape != shapes[name]:
                die(f"{by_name[name].name} -> {name}: shape {arr.shape}, expected {shapes[name]}")
            tensors[name] = arr
            weight_map[name] = fname
            total += arr.nbytes
        path = os.path.join(out_dir, fname)
        save_file(tensors, path, metadata={"format": "pt"})
        del tensors
        print(f"qwen_to_hf.py: {fname}: {len(names)} tensors, sha256 {file_sha256(path)}", file=sys.stderr)
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f, indent=2)
        f.write("\n")
    return total // 4


def build_tokenizer(reader):
    if field(reader, "tokenizer.ggml.model") != "gpt2":
        die("tokenizer.ggml.model is not gpt2 (byte-level BPE)")
    if field(reader, "tokenizer.ggml.pre") != "qwen2":
        die("tokenizer.ggml.pre is not qwen2")
    tokens = field(reader, "tokenizer.ggml.tokens")
    types = field(reader, "tokenizer.ggml.token_type")
    merges = field(reader, "tokenizer.ggml.merges")
    vocab, added = {}, []
    for i, (text, ty) in enumerate(zip(tokens, types)):
        if ty == NORMAL:
            if added:
                die(f"NORMAL token {i} after an added token: ids would not match")
            vocab[text] = i
        elif ty in (CONTROL, USER_DEFINED):
            added.append((i, text, ty == CONTROL))
        elif ty != UNUSED:
            die(f"token {i} {text!r}: token_type {ty} not handled")
    if len(vocab) != max(vocab.values()) + 1:
        die("NORMAL tokens are not ids 0..n-1 with distinct texts")
    pairs = []
    for m in merges:
        a, sep, b = m.partition(" ")
        if not sep or " " in b:
            die(f"merge {m!r} is not two tokens")
        pairs.append((a, b))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=pairs, fuse_unk=False, byte_fallback=False, ignore_merges=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    # Added tokens get the next free ids in order: those of the GGUF.
    for i, text, special in added:
        t = AddedToken(text, special=special, normalized=False, lstrip=False, rstrip=False, single_word=False)
        if special:
            tok.add_special_tokens([t])
        else:
            tok.add_tokens([t])
        if tok.token_to_id(text) != i:
            die(f"added token {text!r} got id {tok.token_to_id(text)}, GGUF id {i}")
    return tok, tokens, added


def main(argv):
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    src, out_dir = argv[1], argv[2]
    os.makedirs(out_dir, exist_ok=True)
    reader = GGUFReader(src)
    geo = Geometry(reader)

    tok, tokens, added = build_tokenizer(reader)
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    bos_id = field(reader, "tokenizer.ggml.bos_token_id", False)
    eos_id = field(reader, "tokenizer.ggml.eos_token_id")
    pad_id = field(reader, "tokenizer.ggml.padding_token_id", False)
    add_bos = bool(field(reader, "tokenizer.ggml.add_bos_token", False) or False)
    text_of = lambda i: None if i is None else tokens[i]  # noqa: E731
    tok_config = {
        "add_bos_token": add_bos,
        "add_prefix_space": False,
        "bos_token": text_of(bos_id),
        "eos_token": text_of(eos_id),
        "pad_token": text_of(pad_id),
        "unk_token": None,
        "additional_special_tokens": [text for _, text, special in added if special],
        "chat_template": field(reader, "tokenizer.chat_template"),
        "clean_up_tokenization_spaces": False,
        "errors": "replace",
        "model_max_length": geo.ctx,
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
    }
    config = {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "vocab_size": geo.vocab,
        "hidden_size": geo.d_model,
        "intermediate_size": geo.ffn,
        "num_hidden_layers": geo.n_layers,
        "num_attention_heads": geo.n_heads,
        "num_key_value_heads": geo.n_kv_heads,
        "head_dim": geo.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": geo.ctx,
        # The GGUF holds float32 values; the decimal that rounds to them.
        "rms_norm_eps": float(np.format_float_positional(np.float32(geo.rms_eps), unique=True)),
        "rope_theta": float(geo.rope_theta),
        "rope_scaling": None,
        "attention_dropout": 0.0,
        "use_sliding_window": False,
        "sliding_window": None,
        "tie_word_embeddings": False,
        "bos_token_id": bos_id,
        "eos_token_id": eos_id,
        "use_cache": True,
        "torch_dtype": "float32",
    }
    gen_config = {"bos_token_id": bos_id, "eos_token_id": eos_id, "pad_token_id": pad_id}
    for name, obj in (("config.json", config), ("generation_config.json", gen_config),
                      ("tokenizer_config.json", tok_config)):
        with open(os.path.join(out_dir, name), "w") as f:
            json.dump(obj, f, indent=2, ensure_ascii=False)
            f.write("\n")

    n_params = write_weights(reader, geo, out_dir)
    print(f"qwen_to_hf.py: wrote {n_params} parameters, config and tokenizer to {out_dir}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
