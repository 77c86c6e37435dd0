#!/usr/bin/env bash
# The C API end to end (CI runs it). `scripts/setup.sh c-example` (run
# first) installs a C compiler, make and the aarch64 Rust target.
#
# 1. Builds libferrite.a without the converter and the CLI
#    (cargo build --release --no-default-features --features ffi), and for
#    aarch64-unknown-linux-gnu too.
# 2. Builds examples/c (ferrite-generate) against it with make.
# 3. Builds the ferrite CLI and converts a tiny fixture (llama-gqa, q8).
# 4. Runs the C program and `ferrite run --temp 0` with the same arguments
#    (a stop id reached or ignored, a streaming cache that wraps, a full
#    cache that is an error, no tokens at all) and fails unless both print
#    the same ids and exit with the same status.
# 5. When the SmolLM2 folder of scripts/fetch-models.sh is there
#    ($FERRITE_SMOLLM2_DIR, else ~/.cache/ferrite/smollm2-135m-f32), the same
#    with text prompts through the tokenizer, as ids and as text.
#
#   bash scripts/c-example.sh
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# Binaries are looked up under ./target: a CARGO_TARGET_DIR elsewhere would hide them.
unset CARGO_TARGET_DIR
cd "$(dirname "$0")/.."
bash scripts/setup.sh c-example

work=target/c-example
mkdir -p "$work"

step "libferrite.a (--no-default-features --features ffi)"
cargo build --release --no-default-features --features ffi
ls -l target/release/libferrite.a >&2
step "libferrite.a for aarch64-unknown-linux-gnu"
cargo build --release --no-default-features --features ffi --target aarch64-unknown-linux-gnu
ls -l target/aarch64-unknown-linux-gnu/release/libferrite.a >&2

step "examples/c: ferrite-generate"
make -C examples/c
# Keep the program: building the CLI next rewrites target/release/libferrite.a.
cp examples/c/ferrite-generate "$work/ferrite-generate"

step "the ferrite CLI"
cargo build --release
ferrite=target/release/ferrite

step "converting tests/fixtures/tiny/llama-gqa (q8)"
model="$work/llama-gqa-q8.frt"
"$ferrite" convert tests/fixtures/tiny/llama-gqa -o "$model" --weights q8 --quiet

failed=0
stopped=0

# compare MODEL ARGS...: runs both programs; prints one line; sets $c_out.
compare() {
    local model=$1 c_rc rust_rc rust_out shown
    shift
    shown="$*"
    shown=${shown//$'\n'/\\n}
    c_out=$("$work/ferrite-generate" -m "$model" "$@" 2>"$work/c.stderr") && c_rc=0 || c_rc=$?
    rust_out=$("$ferrite" run -m "$model" "$@" --temp 0 2>"$work/rust.stderr") && rust_rc=0 || rust_rc=$?
    if [[ "$c_out" == "$rust_out" && "$c_rc" == "$rust_rc" ]]; then
        printf 'same  %-62s exit %s  %s\n' "[$shown]" "$c_rc" "${c_out//$'\n'/\\n}"
    else
        failed=1
        printf 'DIFF  [%s]\n  C           (exit %s): %s\n  ferrite run (exit %s): %s\n' "$shown" "$c_rc" "$c_out" "$rust_rc" "$rust_out"
        sed 's/^/  C stderr: /' "$work/c.stderr"
        sed 's/^/  ferrite stderr: /' "$work/rust.stderr"
    fi
}

step "comparing the C program with ferrite run --temp 0 (tiny fixture)"
# A prompt whose greedy continuation ends on the stop id (2), found with
# ferrite run, so the stop path is exercised whatever the kernels compute.
stop_prompt=""
for a in $(seq 1 400); do
    out=$("$ferrite" run -m "$model" --prompt-ids "$a,1" -n 24 --temp 0 --output ids 2>/dev/null || true)
    if [[ "$out" == *,2 ]]; then stop_prompt="$a,1"; break; fi
done
[[ -n "$stop_prompt" ]] || { echo "no prompt a,1 (a <= 400) ends on the stop id within 24 tokens" >&2; exit 1; }
cases=(
    "--prompt-ids $stop_prompt -n 24"
    "--prompt-ids $stop_prompt -n 24 --ignore-eos"
    "--prompt-ids 1,2,3,4 -n 24"
    "--prompt-ids 1,2,3,4 -n 24 --ignore-eos"
    "--prompt-ids 5 -n 24"
    "--prompt-ids 5 -n 24 --ignore-eos"
    "--prompt-ids 3,1 -n 40 --ctx 16 --kv q8"
    "--prompt-ids 3,1 -n 40 --ctx 16 --kv f32 --no-streaming"
    "--prompt-ids 7 -n 0"
)
for args in "${cases[@]}"; do
    # shellcheck disable=SC2086 # the arguments are meant to split
    compare "$model" $args --output ids
    # The fixture's stop id is 2: make sure some case really ended on it.
    if [[ "$args" != *--ignore-eos* && "$c_out" == *,2 ]]; then stopped=1; fi
done
if [[ $stopped == 0 ]]; then
    echo "no case ended on the stop id: the stop path went untested (did the fixture change?)" >&2
    failed=1
fi

smollm2=${FERRITE_SMOLLM2_DIR:-${FERRITE_CACHE:-$HOME/.cache/ferrite}/smollm2-135m-f32}
if [[ -f "$smollm2/model.safetensors" && -f "$smollm2/tokenizer.json" ]]; then
    step "converting SmolLM2-135M ($smollm2, q4)"
    big="$work/smollm2-q4.frt"
    "$ferrite" convert "$smollm2" -o "$big" --weights q4 --quiet
    step "comparing the C program with ferrite run --temp 0 (SmolLM2, text prompts)"
    chat=$'<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n'
    for output in ids text; do
        compare "$big" -p "Once upon a time" -n 24 --output "$output"
        compare "$big" -p "$chat" -n 32 --kv q8 --output "$output"
    done
else
    echo "(no SmolLM2 folder at $smollm2: text prompts not compared; scripts/fetch-models.sh makes it)" >&2
fi

if [[ $failed != 0 ]]; then
    echo "FAILED: the C API and ferrite run disagree" >&2
    exit 1
fi
echo "ok: the C program and ferrite run print the same output" >&2
