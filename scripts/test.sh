#!/usr/bin/env bash
# The project's test command (README and .ci/run call it).
#
# 1. Builds the SmolLM2 f32 folder the model tests need (scripts/fetch-models.sh,
#    cached under ~/.cache/ferrite; a second run does nothing).
# 2. Checks that the no_std crates build for a Cortex-M4F (thumbv7em-none-eabihf).
# 3. Runs every test of the workspace in release mode (the model tests are
#    too slow unoptimized).
# 4. Builds libferrite.a and the C example, and compares its output with
#    `ferrite run` (scripts/c-example.sh).
# 5. Runs the Cortex-M4F example under qemu-system-arm and compares its greedy
#    ids with the host's (scripts/mcu-example.sh).
# 6. Cross-builds for aarch64 and runs the kernel tests, the tiny golden
#    tests and the SmolLM2 f32 check under qemu-aarch64 on an ARMv8.0 core
#    (detection must pick NEON) and once per forced NEON/dotprod/i8mm tier
#    (scripts/aarch64-qemu.sh).
# 7. Builds the CUDA backend with nvcc 13.0 from pip, checks a PTX for every
#    kernel and runs its host-side tests (scripts/cuda-build.sh; no GPU needed).
# Kernel tiers: scripts/x86-tiers.sh runs the kernel and tiny golden tests
# with each tier forced, and checks detection under qemu-x86_64 -cpu Haswell.
# Also: clippy with -D warnings on the library crates (scripts/lint.sh) and
# Miri over the format reader and the reference kernels (scripts/miri.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*" >&2; }

step "fetching SmolLM2-135M-Instruct (cached)"
FERRITE_SMOLLM2_DIR=$(bash scripts/fetch-models.sh | tail -1)
export FERRITE_SMOLLM2_DIR
# The GGUF that folder was made from (tests/gguf_import.rs).
FERRITE_SMOLLM2_GGUF="$(dirname "$FERRITE_SMOLLM2_DIR")/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf"
export FERRITE_SMOLLM2_GGUF

step "fetching llama.cpp's sources for its tokenizer test vectors (cached)"
FERRITE_LLAMA_CPP_SRC=$(bash scripts/fetch-llama-cpp-src.sh | tail -1)
export FERRITE_LLAMA_CPP_SRC

step "lints (clippy -D warnings on the library crates, host and no_std)"
bash scripts/lint.sh

step "no_std builds for thumbv7em-none-eabihf"
cargo build --release -p ferrite-format -p ferrite-kernels -p ferrite-runtime \
    --target thumbv7em-none-eabihf --no-default-features

step "cargo test --release --workspace"
cargo test --release --workspace

step "kernel tiers: each forced, and AVX2-only detection under qemu-x86_64"
bash scripts/x86-tiers.sh

step "C API: libferrite.a + examples/c vs ferrite run"
bash scripts/c-example.sh

step "Cortex-M4F example under QEMU vs the host"
bash scripts/mcu-example.sh

step "aarch64 under qemu-aarch64: NEON, dotprod and i8mm tiers"
bash scripts/aarch64-qemu.sh

step "CUDA backend: nvcc from pip, --features cuda, PTX for every kernel"
bash scripts/cuda-build.sh

step "Miri over the format reader, the reference kernels and the parallel matmul"
bash scripts/miri.sh
