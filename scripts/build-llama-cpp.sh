#!/usr/bin/env bash
# Build llama.cpp (CPU, native) from the llama-cpp-python==0.3.36 sdist into
# ${FERRITE_CACHE:-$HOME/.cache/ferrite}/llama.cpp-build, once.
#
# Usage:  bin=$(bash scripts/build-llama-cpp.sh | tail -1)   # folder with llama-bench etc.
#
# Needs cmake, a C++ compiler and make (`scripts/setup.sh llama-cpp`); about
# 10 minutes on 2 cores. Only for comparisons (scripts/bench-vs-llama-cpp.sh,
# the KL-divergence table); never part of the test command.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

BUILD="$CACHE/llama.cpp-build"
BIN="$BUILD/bin"
TARGETS=(llama-bench llama-quantize llama-perplexity llama-completion)

have_all() { for t in "${TARGETS[@]}"; do [[ -x "$BIN/$t" ]] || return 1; done; }

if ! have_all; then
    bash "$SCRIPT_DIR/setup.sh" llama-cpp
    SRC=$(bash "$SCRIPT_DIR/fetch-llama-cpp-src.sh" | tail -1)
    log "configuring $SRC into $BUILD"
    cmake -S "$SRC" -B "$BUILD" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DGGML_CUDA=OFF \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF \
        -DCMAKE_RUNTIME_OUTPUT_DIRECTORY="$BIN" >&2 || die "cmake configure failed"
    log "building ${TARGETS[*]} (about 10 minutes on 2 cores)"
    cmake --build "$BUILD" -j "$(nproc)" --target "${TARGETS[@]}" >&2 || die "build failed"
    have_all || die "build finished but binaries are missing in $BIN"
fi
echo "$BIN"
