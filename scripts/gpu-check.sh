#!/usr/bin/env bash
# The GPU checks of the CUDA backend (issue 9), prepared here and run on a
# lent GPU machine through the device tool (x86-64, CUDA 13 driver, no Rust,
# no network; each call carries at most 64 MiB: the git tree, ~17 MiB, plus
# the paths named in `carry`).
#
# 1. Here (x86-64):   bash scripts/gpu-check.sh prepare
#    Builds the GPU test binary (tests/cuda.rs) and `ferrite` with
#    --features cuda (the PTX is inside both), strips and gzips them, converts
#    SmolLM2-135M to q4 (q4 embedding table too: 74 MiB) and splits it in two:
#      .gpu/a/  binaries + model part 1   (~40 MiB)
#      .gpu/b/  model part 2 + sha256     (~37 MiB)
#    (.gpu/ is git-ignored: it travels only when a call names it in carry.)
# 2. Device call 1:   run(command="bash scripts/gpu-check.sh device-a", carry=[".gpu/a"], timeout_s=420)
#    Unpacks to /tmp/ferrite-gpu (kept while the machine stays warm) and runs
#    the kernel tests, the tiny goldens and the q4 GEMV bandwidth benchmark.
# 3. Device call 2, at once (the machine goes back after ~30 s idle):
#                     run(command="bash scripts/gpu-check.sh device-b", carry=[".gpu/b"], timeout_s=420)
#    Reassembles the q4 file (sha256-checked), runs the SmolLM2 test (GPU
#    greedy ids == CPU greedy ids on both golden prompts, decode tok/s) and
#    `ferrite run --device cuda`. If the machine went cold in between,
#    device-b says so: run both calls again.
# Both calls write their log to $OUT/gpu-check-{a,b}.log; the figures are the
# lines starting with RESULT.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$(dirname "$0")/.."

STAGE=/tmp/ferrite-gpu

prepare() {
    export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$PWD/target}"
    local nvcc_bin
    nvcc_bin=$(bash scripts/cuda-toolchain.sh | tail -1)
    export PATH="$nvcc_bin:$PATH"
    step "building the GPU tests and ferrite with --features cuda"
    local tests
    tests=$(cargo test --release --features cuda --test cuda --no-run --message-format=json 2>/dev/null |
        python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "cuda" and m.get("executable"):
        print(m["executable"])' | tail -1)
    [ -x "$tests" ] || { echo "gpu-check: test binary not found" >&2; exit 1; }
    cargo build --release --features cuda
    rm -rf .gpu && mkdir -p .gpu/a .gpu/b
    grep -qx '/.gpu/' .gitignore || { echo "gpu-check: .gpu/ must be git-ignored" >&2; exit 1; }
    strip -o .gpu/a/cuda-tests "$tests"
    strip -o .gpu/a/ferrite "$CARGO_TARGET_DIR/release/ferrite"
    gzip -9 .gpu/a/cuda-tests .gpu/a/ferrite
    step "SmolLM2-135M -> q4 .frt, in two parts"
    local hf
    hf=$(bash scripts/fetch-models.sh | tail -1)
    "$CARGO_TARGET_DIR/release/ferrite" convert -q --weights q4 --embed q4 -o .gpu/smollm2-q4.frt "$hf"
    local size half
    size=$(stat -c %s .gpu/smollm2-q4.frt)
    half=$(((size + 1) / 2))
    head -c "$half" .gpu/smollm2-q4.frt >.gpu/a/model.part1
    tail -c +"$((half + 1))" .gpu/smollm2-q4.frt >.gpu/b/model.part2
    (cd .gpu && sha256sum smollm2-q4.frt >b/model.sha256)
    rm .gpu/smollm2-q4.frt
    du -sh .gpu/a .gpu/b >&2
    echo "prepared: now device-a (carry .gpu/a), then at once device-b (carry .gpu/b)" >&2
}

device_a() {
    local log="${OUT:-/tmp}/gpu-check-a.log"
    {
        nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
        rm -rf "$STAGE" && mkdir -p "$STAGE"
        cp .gpu/a/model.part1 "$STAGE/"
        gunzip -c .gpu/a/cuda-tests.gz >"$STAGE/cuda-tests"
        gunzip -c .gpu/a/ferrite.gz >"$STAGE/ferrite"
        chmod +x "$STAGE/cuda-tests" "$STAGE/ferrite"
        step "kernel tests, tiny goldens, q4 GEMV bandwidth"
        "$STAGE/cuda-tests" --test-threads 1 --nocapture \
            --skip smollm2_q4_greedy_ids_equal_the_cpu
    } 2>&1 | tee "$log"
    return "${PIPESTATUS[0]}"
}

device_b() {
    local log="${OUT:-/tmp}/gpu-check-b.log"
    {
        [ -f "$STAGE/model.part1" ] && [ -x "$STAGE/cuda-tests" ] || {
            echo "gpu-check: $STAGE is gone (the machine went cold after device-a): run device-a and device-b again" >&2
            exit 1
        }
        cat "$STAGE/model.part1" .gpu/b/model.part2 >"$STAGE/smollm2-q4.frt"
        (cd "$STAGE" && sha256sum -c "$OLDPWD/.gpu/b/model.sha256")
        step "SmolLM2 q4: GPU greedy ids vs the CPU, decode tok/s"
        FERRITE_SMOLLM2_Q4="$STAGE/smollm2-q4.frt" "$STAGE/cuda-tests" --test-threads 1 --nocapture \
            smollm2_q4_greedy_ids_equal_the_cpu
        step "ferrite run --device cuda"
        "$STAGE/ferrite" run -m "$STAGE/smollm2-q4.frt" -p "The capital of France is" -n 64 --temp 0 --device cuda
        "$STAGE/ferrite" run -m "$STAGE/smollm2-q4.frt" -p "The capital of France is" -n 64 --temp 0 --device cpu
    } 2>&1 | tee "$log"
    return "${PIPESTATUS[0]}"
}

case "${1:-}" in
prepare) prepare ;;
device-a) device_a ;;
device-b) device_b ;;
*)
    echo "usage: bash scripts/gpu-check.sh prepare|device-a|device-b (see the comment at the top)" >&2
    exit 2
    ;;
esac
