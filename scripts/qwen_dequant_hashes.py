#!/usr/bin/env python3
"""Reference hashes of gguf-py's dequantization of every tensor of the
Qwen2.5-Coder-1.5B-Instruct Q4_K_M GGUF, and a dump of its metadata, for the
K-quant tests (tests/fixtures/qwen2.5-coder-1.5b/):

    gguf=$(bash scripts/fetch-models.sh qwen2.5-coder-1.5b | tail -1)
    ~/.cache/ferrite/venv/bin/python scripts/qwen_dequant_hashes.py "$gguf"

writes, in OUT_DIR (second argument; default tests/fixtures/qwen2.5-coder-1.5b):

  dequant-sha256.json  per tensor, in file order: name, GGML type, ne (GGUF
                       order, ne[0] fastest) and the sha256 of
                       gguf.quants.dequantize(t.data, t.tensor_type) as
                       little-endian float32 in storage order (row-major,
                       fastest dimension ne[0]); for the first tensor of each
                       type also the sha256 and first values of its first row
                       (ne[0] values), dequantized separately from row 0's bytes.
  metadata.json        every metadata key in file order with its type and
                       value; arrays longer than 16 entries give only their
                       length and element type; then, read from those long
                       arrays, the text and token_type of each *_token_id,
                       the count of token_type values, and the sha256 of
                       tokenizer.chat_template (UTF-8).

Tensors are dequantized one at a time (the largest, token_embd, is ~0.9 GB
as f32). Prints a count of tensors by type to stderr. Needs gguf==0.19.0 and
numpy (the venv of scripts/fetch-models.sh).
"""
import hashlib
import json
import os
import sys
from collections import Counter
from importlib.metadata import version

import numpy as np
from gguf import GGUFReader, GGUFValueType
from gguf.quants import dequantize

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_OUT = os.path.normpath(os.path.join(HERE, "..", "tests", "fixtures", "qwen2.5-coder-1.5b"))
MAX_ARRAY = 16


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def f32_le(a):
    return np.ascontiguousarray(a, dtype="<f4")


def field_json(name, field):
    ty = field.types[0]
    out = {"key": name, "type": ty.name}
    if ty == GGUFValueType.ARRAY:
        sub = field.types[-1]
        out["element_type"] = sub.name
        out["length"] = len(field.data)
        if len(field.data) <= MAX_ARRAY:
            out["value"] = field.contents()
    else:
        out["value"] = field.contents()
    return out


def main():
    if len(sys.argv) not in (2, 3):
        sys.exit(__doc__)
    path = sys.argv[1]
    out_dir = sys.argv[2] if len(sys.argv) == 3 else DEFAULT_OUT
    os.makedirs(out_dir, exist_ok=True)
    pkg = f"gguf=={version('gguf')}"

    print(f"hashing {path} ...", file=sys.stderr)
    gguf_sha = file_sha256(path)
    gguf_bytes = os.path.getsize(path)
    r = GGUFReader(path)

    meta = [field_json(name, f) for name, f in r.fields.items()]
    tokens, token_types, special = None, None, {}
    if "tokenizer.ggml.tokens" in r.fields:
        tokens = r.fields["tokenizer.ggml.tokens"].contents()
    if "tokenizer.ggml.token_type" in r.fields:
        token_types = r.fields["tokenizer.ggml.token_type"].contents()
    for name, f in r.fields.items():
        if name.startswith("tokenizer.ggml.") and name.endswith("_token_id"):
            tid = f.contents()
            special[name] = {"id": tid,
                             "text": tokens[tid] if tokens else None,
                             "token_type": token_types[tid] if token_types else None}
    ct = r.fields.get("tokenizer.chat_template")
    meta_doc = {
        "gguf_sha256": gguf_sha,
        "gguf_bytes": gguf_bytes,
        "gguf_package": pkg,
        "made_by": "scripts/qwen_dequant_hashes.py",
        "max_array_listed": MAX_ARRAY,
        "fields": meta,
        "special_tokens": special,
        "token_type_counts": ({str(k): v for k, v in sorted(Counter(token_types).items())}
                              if token_types else None),
        "chat_template_sha256": (hashlib.sha256(ct.contents().encode("utf-8")).hexdigest()
                                 if ct else None),
    }

    tensors, counts, first_rows = [], Counter(), {}
    for i, t in enumerate(r.tensors):
        tname = t.tensor_type.name
        ne = [int(d) for d in t.shape]
        full = f32_le(dequantize(t.data, t.tensor_type))
        if full.size != t.n_elements or full.shape[-1] != ne[0]:
            sys.exit(f"{t.name}: dequantized shape {full.shape} does not fit ne {ne}")
        entry = {"name": t.name, "type": tname, "ne": ne,
                 "sha256": hashlib.sha256(full.tobytes()).hexdigest()}
        if tname not in first_rows:
            # Row 0 on its own, from its bytes alone: must equal the full tensor's first row.
            row_data = t.data.reshape(-1, t.data.shape[-1])[0]
            row = f32_le(dequantize(row_data, t.tensor_type)).reshape(-1)
            if row.shape != (ne[0],) or not np.array_equal(row.view("<u4"), full.reshape(-1)[: ne[0]].view("<u4")):
                sys.exit(f"{t.name}: row 0 dequantized alone differs from the full tensor's row 0")
            entry["first_row_sha256"] = hashlib.sha256(row.tobytes()).hexdigest()
            entry["first_row_first8"] = [float(x) for x in row[:8]]
            first_rows[tname] = t.name
        tensors.append(entry)
        counts[tname] += 1
        del full
        print(f"[{i + 1}/{len(r.tensors)}] {t.name} {tname} {ne}", file=sys.stderr)

    doc = {
        "gguf_sha256": gguf_sha,
        "gguf_bytes": gguf_bytes,
        "gguf_package": pkg,
        "made_by": "scripts/qwen_dequant_hashes.py",
        "hash_of": "little-endian float32 of gguf.quants.dequantize(t.data, t.tensor_type), "
                   "row-major, fastest dimension ne[0]",
        "type_counts": dict(counts),
        "first_row_tensor_by_type": first_rows,
        "tensors": tensors,
    }
    for name, d in (("dequant-sha256.json", doc), ("metadata.json", meta_doc)):
        p = os.path.join(out_dir, name)
        with open(p + ".tmp", "w") as f:
            json.dump(d, f, indent=1, ensure_ascii=False)
            f.write("\n")
        os.replace(p + ".tmp", p)
        print(f"wrote {p}", file=sys.stderr)
    print("tensors by type: " + ", ".join(f"{k} x{v}" for k, v in counts.items()), file=sys.stderr)
    odd = [(t["name"], t["type"], t["ne"][0]) for t in tensors if t["ne"][0] % 256]
    print(f"tensors with ne[0] % 256 != 0: {odd}", file=sys.stderr)


if __name__ == "__main__":
    main()
