#!/usr/bin/env python3
"""Goldens for the GGUF block types Ferrite imports: random valid blocks of
each type and their values as the `gguf` package dequantizes them
(gguf.quants.dequantize), for converter/src/convert/transcode.rs's test:

    ~/.cache/ferrite/venv/bin/python scripts/gguf_block_goldens.py

writes tests/fixtures/gguf-blocks/goldens.json: per type, `rows` rows of
`blocks` blocks as hex, and the f32 bit patterns of the dequantized values
(row-major). f16 fields are random finite values; every other byte is
uniform. A Q8_0 block holding -128 is kept (Ferrite requantizes those).
Needs gguf==0.19.0 and numpy (the venv of scripts/fetch-models.sh).
"""
import json
import os
from importlib.metadata import version

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "..", "tests", "fixtures", "gguf-blocks", "goldens.json")

# type: (elements per block, bytes per block, offsets of f16 fields)
TYPES = {
    "Q8_0": (T.Q8_0, 32, 34, [0]),
    "Q4_0": (T.Q4_0, 32, 18, [0]),
    "Q4_1": (T.Q4_1, 32, 20, [0, 2]),
    "Q5_0": (T.Q5_0, 32, 22, [0]),
    "Q5_1": (T.Q5_1, 32, 24, [0, 2]),
    "Q4_K": (T.Q4_K, 256, 144, [0, 2]),
    "Q5_K": (T.Q5_K, 256, 176, [0, 2]),
    "Q6_K": (T.Q6_K, 256, 210, [208]),
}


def main():
    rng = np.random.default_rng(20261203)
    out = {"made_by": "scripts/gguf_block_goldens.py", "gguf_package": f"gguf=={version('gguf')}", "types": {}}
    for name, (qt, block, nbytes, f16_at) in TYPES.items():
        rows, blocks = 3, 2
        raw = rng.integers(0, 256, size=(rows * blocks, nbytes), dtype=np.uint8)
        for off in f16_at:
            h = rng.normal(0, 0.05, size=rows * blocks).astype(np.float16)
            raw[:, off:off + 2] = h.view(np.uint8).reshape(-1, 2)
        data = raw.reshape(rows, blocks * nbytes)
        vals = np.ascontiguousarray(dequantize(data, qt), dtype="<f4").reshape(rows, blocks * block)
        out["types"][name] = {
            "rows": rows,
            "cols": blocks * block,
            "hex": data.tobytes().hex(),
            "f32_bits": [int(v) for v in vals.view("<u4").reshape(-1)],
        }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(out, f, separators=(",", ":"))
        f.write("\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
