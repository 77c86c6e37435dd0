#!/usr/bin/env bash
# Lints the library code with clippy, warnings as errors (issue #7, part 4).
#
# The library crates (format, kernels, runtime, converter) deny
# unwrap/expect/panic!/todo!/unimplemented!/unreachable! outside tests (see
# the `deny(clippy::...)` at the top of each lib.rs), so this is what keeps
# them free of panics on untrusted input. Only the `--lib` targets are
# linted: tests, examples and benches may unwrap.
#
# 1. Every library target of the workspace (the facade's C API included),
#    host build with default features.
# 2. The no_std crates as a Cortex-M4F builds them (no default features),
#    when that Rust target is installed (scripts/test.sh needs it anyway).
# 3. The kernels crate for aarch64 (its NEON tiers), with and without std,
#    when that Rust target is installed (.ci/run adds it).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*" >&2; }

if ! cargo clippy --version >/dev/null 2>&1; then
    step "installing clippy"
    rustup component add clippy
fi

step "cargo clippy --workspace --lib (host, default features)"
cargo clippy --workspace --lib --no-deps -- -D warnings

if rustup target list --installed 2>/dev/null | grep -qx thumbv7em-none-eabihf; then
    step "cargo clippy --lib for thumbv7em-none-eabihf (no_std)"
    cargo clippy -p ferrite-format -p ferrite-kernels -p ferrite-runtime --lib --no-deps \
        --target thumbv7em-none-eabihf --no-default-features -- -D warnings
else
    echo "(thumbv7em-none-eabihf not installed: skipping the no_std lint)" >&2
fi

if rustup target list --installed 2>/dev/null | grep -qx aarch64-unknown-linux-gnu; then
    step "cargo clippy -p ferrite-kernels --lib for aarch64-unknown-linux-gnu (NEON tiers; std and no_std)"
    cargo clippy -p ferrite-kernels --lib --no-deps --target aarch64-unknown-linux-gnu -- -D warnings
    cargo clippy -p ferrite-kernels --lib --no-deps --target aarch64-unknown-linux-gnu --no-default-features \
        -- -D warnings
else
    echo "(aarch64-unknown-linux-gnu not installed: skipping the aarch64 lint)" >&2
fi
