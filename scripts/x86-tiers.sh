#!/usr/bin/env bash
# Kernel tiers on x86-64 under emulation (part of scripts/test.sh).
#
# Every tier this CPU has is checked by the workspace tests, in-process:
# kernels/tests/tiers.rs compares each with the reference, and
# tests/golden_tiny.rs and tests/kernel_tiers.rs run the tiny models at each.
# What needs another CPU is done here, under qemu-x86_64 -cpu Haswell (AVX2,
# no AVX-512): detection must pick avx2, the kernel and tiny golden tests
# pass there, and forcing avx512 must end `ferrite run` with exit status 1
# and a clear message (never SIGILL).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$(dirname "$0")/.."

[[ "$(uname -m)" == x86_64 ]] || { log "not an x86-64 machine, nothing to do"; exit 0; }
bash scripts/setup.sh x86-tiers

exe() { # the test executable cargo built for `--test $1` of package $2
    cargo test --release -p "$2" --test "$1" --no-run 2>&1 | sed -n "s/.*Executable tests\/$1.rs (\(.*\))/\1/p" | tail -1
}
tiers_bin=$(exe tiers ferrite-kernels)
golden_bin=$(exe golden_tiny ferrite)
[[ -x "$tiers_bin" && -x "$golden_bin" ]] || die "test executables not found"
cargo build --release --bin ferrite
qemu=(qemu-x86_64 -cpu Haswell)

step "under ${qemu[*]}: detection picks avx2; kernel and tiny golden tests"
FERRITE_EXPECT_TIER=avx2 "${qemu[@]}" "$tiers_bin" 2>/dev/null
(cd . && "${qemu[@]}" "$golden_bin" 2>/dev/null)

step "under ${qemu[*]}: FERRITE_KERNELS=avx512 is a clear error, not a signal"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
target/release/ferrite convert tests/fixtures/tiny/llama-gqa -o "$tmp/m.frt" --weights q4 --quiet
set +e
FERRITE_KERNELS=avx512 "${qemu[@]}" target/release/ferrite run -m "$tmp/m.frt" --prompt-ids 1,2,3 -n 2 \
    --output ids >"$tmp/out" 2>"$tmp/err"
status=$?
set -e
grep -v '^qemu-x86_64: warning' "$tmp/err" >&2 || true
[[ $status -eq 1 ]] || die "expected exit status 1, got $status"
grep -q "kernel tier avx512 needs CPU features this machine lacks" "$tmp/err" || die "no clear error message"
log "all checks passed"
