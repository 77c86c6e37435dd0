#!/usr/bin/env bash
# CI for the CUDA backend on a machine without a GPU (scripts/test.sh runs it).
#
# 1. nvcc 13.0 from PyPI (scripts/cuda-toolchain.sh, cached under ~/.cache/ferrite).
# 2. `cargo build --release --features cuda`: build.rs compiles every
#    kernels/cuda/*.cu to PTX for sm_80, sm_87 and sm_90.
# 3. Checks that a PTX exists for every module and architecture and that it
#    defines every kernel of the table in cuda/src/launch.rs.
#    ptxas (from the same pip toolchain) assembles each PTX for its GPU, so a
#    PTX the driver would refuse fails here; the GEMV/GEMM kernels must not
#    spill registers.
# 4. The host-side unit tests (launch geometry, buffer planning, kernel table
#    vs the .cu sources, the q4/q8 tile indexing mirrored and checked against
#    the reference kernels) with the device code built, and clippy
#    -D warnings on ferrite-cuda's device code.
# 5. Builds the GPU test binary (tests/cuda.rs) and checks that, with no GPU
#    here, it fails saying it needs one (scripts/gpu-check.sh runs it on a GPU).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$(dirname "$0")/.."

step "nvcc 13.0 (pip, cached)"
NVCC_BIN=$(bash scripts/cuda-toolchain.sh | tail -1)
export PATH="$NVCC_BIN:$PATH"
nvcc --version | tail -2

step "cargo build --release --features cuda"
cargo build --release --features cuda

step "a PTX for every kernel"
target="${CARGO_TARGET_DIR:-target}"
missing=0
for module in gemv gemm attention elementwise; do
    for arch in 80 87 90; do
        ptx=$(ls -t "$target"/release/build/ferrite-cuda-*/out/"$module.sm$arch.ptx" 2>/dev/null | head -1 || true)
        if [ -z "$ptx" ]; then
            echo "missing: $module.sm$arch.ptx" >&2
            missing=1
            continue
        fi
        grep -q "^\.target sm_$arch" "$ptx" || { echo "$ptx: not an sm_$arch PTX" >&2; missing=1; }
        for kernel in $(grep -o "k!(\"$module\", [a-z0-9_]*" cuda/src/launch.rs | awk '{print $2}'); do
            grep -q "^\.visible \.entry $kernel(" "$ptx" || { echo "$ptx: no entry $kernel" >&2; missing=1; }
        done
    done
done
[ "$missing" = 0 ] || { echo "cuda-build: PTX check failed" >&2; exit 1; }
echo "PTX: 4 modules x 3 architectures, $(grep -c 'k!(' cuda/src/launch.rs) kernels found in each" >&2

step "ptxas: every PTX assembles for its GPU; no spills in gemv/gemm"
for module in gemv gemm attention elementwise; do
    for arch in 80 87 90; do
        ptx=$(ls -t "$target"/release/build/ferrite-cuda-*/out/"$module.sm$arch.ptx" | head -1)
        if ! info=$(ptxas -arch=sm_$arch -v -o /dev/null "$ptx" 2>&1); then
            printf '%s\n' "$info" >&2
            echo "cuda-build: ptxas rejects $ptx" >&2
            exit 1
        fi
        if [ "$module" = gemv ] || [ "$module" = gemm ]; then
            if grep -qE '[1-9][0-9]* bytes spill' <<<"$info"; then
                printf '%s\n' "$info" >&2
                echo "cuda-build: $module spills registers on sm_$arch" >&2
                exit 1
            fi
        fi
    done
done
echo "ptxas: 12 PTX assembled" >&2

step "host-side tests of ferrite-cuda (device code built) and clippy"
cargo test --release -p ferrite-cuda --features device
cargo clippy -p ferrite-cuda --features device --lib --no-deps -- -D warnings

step "GPU tests: built; without a GPU they must fail saying so"
set +e
out=$(cargo test --release --features cuda --test cuda -- --test-threads 1 2>&1)
rc=$?
set -e
if [ "$rc" = 0 ] || ! grep -q "the CUDA tests need an NVIDIA GPU" <<<"$out"; then
    printf '%s\n' "$out" | tail -20 >&2
    echo "cuda-build: expected the GPU tests to fail for want of a GPU here" >&2
    exit 1
fi
echo "GPU tests fail without a GPU, as they should (run them with scripts/gpu-check.sh)" >&2
