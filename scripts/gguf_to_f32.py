#!/usr/bin/env python3
"""Rewrites a GGUF with every tensor dequantized to F32 (metadata kept):
a large GGUF for measuring the converter's memory on big inputs.

    ~/.cache/ferrite/venv/bin/python scripts/gguf_to_f32.py IN.gguf OUT.gguf

Needs the `gguf` and `numpy` packages (the venv of scripts/fetch-models.sh).
"""
import sys

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter
from gguf.quants import dequantize

src, dst = sys.argv[1], sys.argv[2]
r = GGUFReader(src)
arch = r.fields["general.architecture"]
arch = bytes(arch.parts[arch.data[0]]).decode()
w = GGUFWriter(dst, arch)
for name, field in r.fields.items():
    if name.startswith("GGUF.") or name == "general.architecture":
        continue
    ty = field.types[0]
    if ty == GGUFValueType.ARRAY:
        sub = field.types[1]
        if sub == GGUFValueType.STRING:
            value = [bytes(field.parts[i]).decode("utf-8", "surrogateescape") for i in field.data]
        else:
            value = [field.parts[i].tolist()[0] for i in field.data]
        w.add_array(name, value)
    elif ty == GGUFValueType.STRING:
        w.add_string(name, bytes(field.parts[field.data[0]]).decode())
    else:
        w.add_key_value(name, field.parts[field.data[0]].tolist()[0], ty)
for t in r.tensors:
    data = dequantize(t.data, t.tensor_type).astype(np.float32)
    w.add_tensor(t.name, data.reshape([int(d) for d in reversed(t.shape)]), raw_dtype=GGMLQuantizationType.F32)
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
