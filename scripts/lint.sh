#!/usr/bin/env bash
# Lints the library code with clippy, warnings as errors (issue #7, part 4).
#
# The workspace lints (Cargo.toml, [workspace.lints]) forbid
# unwrap/expect/panic!/todo!/unimplemented!/unreachable! in library code;
# with -D warnings they are errors here, and this is what keeps the library
# crates free of panics on untrusted input. Only the `--lib` targets are
# linted: tests, examples and benches may unwrap.
#
# 1. Every library target of the workspace (the facade's C API included),
#    host build with default features.
# 2. The no_std crates as a Cortex-M4F builds them (no default features).
# 3. The kernels crate for aarch64 (its NEON tiers), with and without std.
#
# `scripts/setup.sh lint` (run first) installs clippy and both targets.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$(dirname "$0")/.."
bash scripts/setup.sh lint

step "cargo clippy --workspace --lib (host, default features)"
cargo clippy --workspace --lib --no-deps -- -D warnings

step "cargo clippy --lib for thumbv7em-none-eabihf (no_std)"
cargo clippy -p ferrite-format -p ferrite-kernels -p ferrite-runtime --lib --no-deps \
    --target thumbv7em-none-eabihf --no-default-features -- -D warnings

step "cargo clippy -p ferrite-kernels --lib for aarch64-unknown-linux-gnu (NEON tiers; std and no_std)"
cargo clippy -p ferrite-kernels --lib --no-deps --target aarch64-unknown-linux-gnu -- -D warnings
cargo clippy -p ferrite-kernels --lib --no-deps --target aarch64-unknown-linux-gnu --no-default-features \
    -- -D warnings
