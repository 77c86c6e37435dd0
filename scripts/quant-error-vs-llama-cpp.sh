#!/usr/bin/env bash
# The K-quant quantizer contest: Ferrite's q4k/q5k/q6k quantizer (what
# `ferrite convert --weights q4k|q5k|q6k` runs) against `llama-quantize`'s
# Q4_K/Q5_K/Q6_K on the very same f32 tensors, by the squared error of the
# dequantized values. Every tensor whose rows are a multiple of 256 that
# `llama-quantize --pure` stores in the type is compared, per tensor.
#
# Usage:  bash scripts/quant-error-vs-llama-cpp.sh [--no-qwen]   # prints a Markdown table
#
# Sources (each an F32 GGUF that llama-quantize reads as a model):
#   smollm2   SmolLM2-135M-Instruct's dequantized Q4_1 weights (the
#             ffn_down tensors are its only ones with rows of 256 multiples)
#   gaussian  the same file with every ffn_down replaced by N(0, 0.02²)
#   student   ... by Student-t with 3 degrees of freedom, × 0.02 (heavy tails)
#   qwen      Qwen2.5-Coder-1.5B-Instruct's dequantized Q4_K_M weights
#             (all 197 matrices but token_embd; 6.2 GB of work files, about
#             15 minutes; --no-qwen skips it)
#
# Needs the models (scripts/fetch-models.sh), llama.cpp's tools
# (scripts/build-llama-cpp.sh) and the venv of scripts/setup.sh (the `gguf`
# package writes the random tensors). Work files go to
# ${FERRITE_CACHE:-~/.cache/ferrite}/quant-contest. Not part of the test
# command.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

QWEN=1
[[ ${1:-} == --no-qwen ]] && QWEN=0
WORK="$CACHE/quant-contest"
mkdir -p "$WORK"

bash "$REPO_ROOT/scripts/setup.sh" llama-cpp
bash "$REPO_ROOT/scripts/fetch-models.sh" >/dev/null
SMOL_GGUF="$CACHE/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf"
[[ -f "$SMOL_GGUF" ]] || die "$SMOL_GGUF missing (scripts/fetch-models.sh extracts it)"
BIN=$(bash "$REPO_ROOT/scripts/build-llama-cpp.sh" | tail -1)
export LD_LIBRARY_PATH="$BIN${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
PY="$CACHE/venv/bin/python"
[[ -x "$PY" ]] || die "$PY missing (bash scripts/setup.sh creates the venv)"

log "building the measuring tool (converter/examples/quant_error.rs)"
(cd "$REPO_ROOT" && cargo build --release --quiet -p ferrite-converter --example quant_error)
TOOL="${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release/examples/quant_error"

# quantize TYPE IN OUT: llama-quantize --pure (one type for every tensor).
quantize() {
    if [[ ! -s "$3" ]]; then
        log "llama-quantize $1 $(basename "$2")"
        "$BIN/llama-quantize" --pure --allow-requantize "$2" "$3.tmp" "$1" "$(nproc)" >"$3.log" 2>&1 \
            || die "llama-quantize $1 failed: $(tail -3 "$3.log")"
        mv "$3.tmp" "$3"
    fi
}

quantize F32 "$SMOL_GGUF" "$WORK/smollm2-F32.gguf"
for dist in gaussian student; do
    out="$WORK/$dist-F32.gguf"
    [[ -s "$out" ]] && continue
    log "writing $dist ffn_down tensors into a copy of smollm2-F32.gguf"
    cp "$WORK/smollm2-F32.gguf" "$out.tmp"
    "$PY" - "$out.tmp" "$dist" <<'EOF'
import sys
import numpy as np
from gguf import GGUFReader
path, dist = sys.argv[1:3]
reader = GGUFReader(path, "r+")
rng = np.random.default_rng(20261204 if dist == "gaussian" else 20261205)
for t in reader.tensors:
    if "ffn_down" in t.name:
        shape = t.data.shape
        x = rng.standard_normal(shape) if dist == "gaussian" else rng.standard_t(3, shape)
        t.data[...] = (0.02 * x).astype(np.float32)
reader.data.flush()
EOF
    mv "$out.tmp" "$out"
done
SOURCES=(smollm2 gaussian student)
if [[ $QWEN == 1 ]]; then
    QWEN_GGUF=$(bash "$REPO_ROOT/scripts/fetch-models.sh" qwen2.5-coder-1.5b | tail -1)
    # The F32 file of scripts/kld-vs-llama-cpp.sh --model qwen, if there is one.
    [[ -s "$WORK/qwen-F32.gguf" || ! -s "$CACHE/kld-qwen/llama-F32.gguf" ]] \
        || ln -sf "$CACHE/kld-qwen/llama-F32.gguf" "$WORK/qwen-F32.gguf"
    quantize F32 "$QWEN_GGUF" "$WORK/qwen-F32.gguf"
    SOURCES+=(qwen)
fi

ROWS="$WORK/rows.tsv"
: >"$ROWS"
for src in "${SOURCES[@]}"; do
    for t in Q4_K Q5_K Q6_K; do
        quantize "$t" "$WORK/$src-F32.gguf" "$WORK/$src-$t.gguf"
        out="$WORK/$src-$t.tsv"
        if ! [[ -s "$out" && "$out" -nt "$TOOL" && "$out" -nt "$WORK/$src-$t.gguf" ]]; then
            log "measuring $src $t"
            "$TOOL" "$WORK/$src-F32.gguf" "$WORK/$src-$t.gguf" >"$out.tmp" || die "quant_error $src $t failed"
            mv "$out.tmp" "$out"
        fi
        python3 - "$src" "$t" "$out" >>"$ROWS" <<'EOF'
import sys
src, t, path = sys.argv[1:4]
rows = [l.rstrip("\n").split("\t") for l in open(path)]
if not rows:
    sys.exit(f"quant-error-vs-llama-cpp: {path}: no {t} tensors")
sq = sum(float(r[3]) for r in rows)
el = sum(float(r[4]) for r in rows)
ef = sum(float(r[5]) for r in rows)
wins = sum(float(r[5]) <= float(r[4]) for r in rows)
# A tensor both quantize exactly (Qwen's own Q4_K tensors back to Q4_K)
# counts as a tie, 1.
def ratio(r):
    el, ef = float(r[4]), float(r[5])
    return ef / el if el > 0 else (1.0 if ef == 0 else float("inf"))
worst = max(ratio(r) for r in rows)
elems = sum(int(r[2]) for r in rows)
print("\t".join([src, t, str(len(rows)), f"{elems / 1e6:.1f} M", f"{el / sq:.3e}", f"{ef / sq:.3e}",
                 f"{ef / el:.3f}", f"{wins} / {len(rows)}", f"{worst:.3f}"]))
EOF
    done
done

echo "Squared error relative to Σx² (lower is better); $(date -u +%Y-%m-%d), llama.cpp from the llama-cpp-python 0.3.36 sdist, no imatrix."
echo
echo "| tensors of | type | tensors | elements | llama-quantize | Ferrite | Ferrite / llama.cpp | Ferrite ≤ llama.cpp | worst tensor ratio |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---:|"
awk -F'\t' '{ printf "| %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6, $7, $8, $9 }' "$ROWS"
