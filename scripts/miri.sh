#!/usr/bin/env bash
# Runs the format reader's and the reference kernels' tests under Miri, the
# interpreter that detects undefined behaviour (issue #7, part 5).
#
#   cargo +nightly miri test -p ferrite-format --test reader_errors
#   cargo +nightly miri test -p ferrite-kernels --lib --features libm/force-soft-floats
#   MIRIFLAGS=-Zmiri-num-cpus=4 \
#     cargo +nightly miri test -p ferrite-runtime --lib --features libm/force-soft-floats -- pool:: parallel::
#
# Miri interprets code about a thousand times slower than it runs natively,
# so these tests do less under `cfg(miri)`, each saying so where it does:
# the robustness tests of reader_errors.rs try a spread-out sample of the
# truncations and a few dozen of the random mutations (`iters`, `sample`);
# its fixtures repeat their first rows' data and are built once per config;
# the kernels' property tests run 24 cases instead of 256. Every test still
# runs except the quantizer searches of reference.rs (`search_tests`: safe
# float code, far too slow interpreted), and the Matrix property tests run
# 6. The runtime's unsafe code (pool.rs, the session's worker threads, and
# parallel.rs, threads writing disjoint rows of one output) is checked too.
#
# Takes about 8 minutes on 2 cores (the first run also builds Miri's
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

# Miri interprets a test binary on one host thread: the format reader's
# tests (the longest, ~7 minutes) run beside the other two on the second
# core, in a target folder of their own (cargo locks its build folder for
# the whole of a `cargo test`). Their output is printed when they end.
step "miri: ferrite-format reader_errors (in the background, printed at the end)"
reader_log=$(mktemp)
CARGO_TARGET_DIR=target/miri-reader cargo "+$TOOLCHAIN" miri test -p ferrite-format --test reader_errors \
    >"$reader_log" 2>&1 &
reader_pid=$!
# If a foreground step fails, stop the background cargo and drop its log
# rather than leave it running after this script.
trap 'kill "$reader_pid" 2>/dev/null || true; rm -f "$reader_log"' EXIT

step "miri: ferrite-kernels (lib)"
cargo "+$TOOLCHAIN" miri test -p ferrite-kernels --lib "${SOFT_FLOATS[@]}"

# The session's thread pool (pool.rs: a job published through an atomic
# pointer, parts claimed by compare-exchange, a region's output written in
# disjoint pieces through a raw pointer) and the threaded matmul over it,
# with four CPUs so that the pool has workers.
step "miri: ferrite-runtime thread pool and parallel matmul (lib, pool:: parallel::)"
MIRIFLAGS="${MIRIFLAGS:-} -Zmiri-num-cpus=4" \
    cargo "+$TOOLCHAIN" miri test -p ferrite-runtime --lib "${SOFT_FLOATS[@]}" -- pool:: parallel::

step "miri: ferrite-format reader_errors (output)"
status=0
wait "$reader_pid" || status=$?
cat "$reader_log" >&2
((status == 0)) || die "reader_errors failed under Miri (status $status)"
