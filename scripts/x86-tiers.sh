#!/usr/bin/env bash
# Kernel tiers on x86-64 (part of scripts/test.sh):
#
# 1. The kernel tests (kernels/tests/tiers.rs compares every supported tier
#    with the reference) and the tiny golden tests with each tier this CPU
#    has forced through FERRITE_KERNELS.
# 2. Under qemu-x86_64 -cpu Haswell (AVX2, no AVX-512): detection must pick
#    avx2, the kernel and tiny golden tests pass there, and forcing avx512
#    must end `ferrite run` with exit status 1 and a clear message (never
#    SIGILL).
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n==> %s\n' "$*" >&2; }
die() { printf 'x86-tiers: ERROR: %s\n' "$*" >&2; exit 1; }

[[ "$(uname -m)" == x86_64 ]] || { echo "x86-tiers: not an x86-64 machine, nothing to do" >&2; exit 0; }

flags=$(grep -m1 '^flags' /proc/cpuinfo)
has() { [[ " $flags " == *" $1 "* ]]; }
tiers=(reference)
has avx2 && has fma && has f16c && tiers+=(avx2)
has avx512f && has avx512bw && has avx512vl && has avx512_vnni && tiers+=(avx512)

for tier in "${tiers[@]}"; do
    step "kernel and tiny golden tests with FERRITE_KERNELS=$tier"
    FERRITE_KERNELS=$tier cargo test --release -p ferrite-kernels --test tiers -p ferrite --test golden_tiny
done

command -v qemu-x86_64 >/dev/null 2>&1 || die "qemu-x86_64 not found (Debian: apt-get install qemu-user)"
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
echo "x86-tiers: all checks passed" >&2
