#!/usr/bin/env bash
# Runs the format reader's and the reference kernels' tests under Miri, the
# interpreter that detects undefined behaviour (issue #7, part 5).
#
#   cargo +nightly miri test -p ferrite-format --test reader_errors
#   cargo +nightly miri test -p ferrite-kernels --lib --features libm/force-soft-floats
#   MIRIFLAGS="-Zmiri-tree-borrows -Zmiri-ignore-leaks -Zmiri-num-cpus=4" \
#     cargo +nightly miri test -p ferrite-runtime --lib --features libm/force-soft-floats parallel::
#
# Miri interprets code about a thousand times slower than it runs natively,
# so these tests do less under `cfg(miri)`, each saying so where it does:
# the robustness tests of reader_errors.rs try a spread-out sample of the
# truncations and a few dozen of the random mutations (`iters`, `sample`);
# its fixtures repeat their first rows' data and are built once per config;
# the kernels' property tests run 24 cases instead of 256. Every test still
# runs except the quantizer searches of reference.rs (`search_tests`: safe
# float code, far too slow interpreted). The runtime's only unsafe code (parallel.rs: threads writing disjoint
# rows of one output through a raw pointer) is checked too.
#
# Takes about 10 minutes on 2 cores (the first run also builds Miri's
# sysroot). MIRIFLAGS passes options through, e.g.
# MIRIFLAGS=-Zmiri-tree-borrows bash scripts/miri.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$(dirname "$0")/.."

TOOLCHAIN=${MIRI_TOOLCHAIN:-nightly}
MIRI_TOOLCHAIN=$TOOLCHAIN bash scripts/setup.sh miri
cargo "+$TOOLCHAIN" miri setup

# libm computes sqrtf with inline assembly on x86_64, which Miri cannot run:
# its portable implementation (what a Cortex-M4F runs) is used instead.
SOFT_FLOATS=(--features libm/force-soft-floats)

step "miri: ferrite-kernels (lib)"
cargo "+$TOOLCHAIN" miri test -p ferrite-kernels --lib "${SOFT_FLOATS[@]}"

# Tree Borrows for this one: rayon's crossbeam-epoch breaks the (stricter,
# experimental) Stacked Borrows rules in its own code, a known limitation
# (crossbeam-rs/crossbeam#996, rayon-rs/rayon#1185; crossbeam's CI uses Tree
# Borrows too). Data races and out-of-bounds accesses are checked either way.
# rayon's global pool keeps its threads (and their memory) to the end of the
# process by design, hence -Zmiri-ignore-leaks; four CPUs give four workers.
step "miri: ferrite-runtime parallel matmul (lib, parallel::, Tree Borrows)"
MIRIFLAGS="${MIRIFLAGS:-} -Zmiri-tree-borrows -Zmiri-ignore-leaks -Zmiri-num-cpus=4" \
    cargo "+$TOOLCHAIN" miri test -p ferrite-runtime --lib "${SOFT_FLOATS[@]}" parallel::

step "miri: ferrite-format reader_errors"
cargo "+$TOOLCHAIN" miri test -p ferrite-format --test reader_errors
