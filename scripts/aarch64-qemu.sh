#!/usr/bin/env bash
# The aarch64 build under qemu-user (issue 6): proves the NEON, dotprod and
# i8mm kernel tiers and their run-time dispatch without an Arm machine.
#
# 1. Cross-builds (release, aarch64-unknown-linux-gnu) the `ferrite` binary,
#    the kernel tier tests (kernels/tests/tiers.rs), the tiny golden tests
#    (tests/golden_tiny.rs) and the SmolLM2 test (tests/golden_smollm2.rs).
# 2. -cpu cortex-a53 (ARMv8.0): detection must pick `neon`
#    (FERRITE_EXPECT_TIER); kernel and tiny golden tests pass.
#    -cpu cortex-a76 (ARMv8.2 + dotprod): detection must pick `dotprod`.
# 3. -cpu max (every extension): detection must pick `i8mm`; the kernel
#    tests (every tier against the reference) and the tiny golden tests (at
#    every tier), each tier in-process.
# 4. -cpu max, best tier: the SmolLM2-135M f32 check of both golden prompts
#    (logits within 2e-3 of transformers and all greedy ids).
# 5. `ferrite run` of a tiny q4 and q8 model: the greedy ids of every forced
#    tier equal the reference tier's (quantized products are bit-identical
#    across tiers), and FERRITE_KERNELS=i8mm on a cortex-a53 exits with
#    status 1 and a clear message, not SIGILL.
#
# Needs: the Rust target aarch64-unknown-linux-gnu, gcc-aarch64-linux-gnu
# with its libc (the linker, set in .cargo/config.toml) and qemu-user, which
# `scripts/setup.sh aarch64` installs (run first), and FERRITE_SMOLLM2_DIR
# (scripts/test.sh sets it; otherwise this script runs
# scripts/fetch-models.sh). Builds land in target/aarch64-unknown-linux-gnu
# (or under CARGO_TARGET_DIR; cached between runs). Timings under qemu say
# nothing about a real core: nothing here measures speed.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$(dirname "$0")/.."
root=$PWD
target=aarch64-unknown-linux-gnu
sysroot=${AARCH64_SYSROOT:-/usr/aarch64-linux-gnu}
out=$root/target/aarch64-qemu
tiers=(reference neon dotprod i8mm)

bash scripts/setup.sh aarch64
[[ -d $sysroot/lib ]] || die "no aarch64 libc at $sysroot (AARCH64_SYSROOT)"
if [[ -z ${FERRITE_SMOLLM2_DIR:-} ]]; then
    FERRITE_SMOLLM2_DIR=$(bash scripts/fetch-models.sh | tail -1)
    export FERRITE_SMOLLM2_DIR
fi
unset FERRITE_KERNELS FERRITE_EXPECT_TIER
mkdir -p "$out"

# `cargo test` runs the cross-built test binaries through this runner.
runner_var=CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER
# on CPU ENV=VALUE... -- CARGO TEST ARGS: cargo test under qemu -cpu CPU.
on() {
    local cpu=$1
    shift
    local envs=()
    while [[ $1 != -- ]]; do
        envs+=("$1")
        shift
    done
    shift
    env "${envs[@]}" "$runner_var=qemu-aarch64 -L $sysroot -cpu $cpu" \
        cargo test --release --target "$target" "$@"
}
kernel_tests=(-p ferrite-kernels --test tiers)
tiny_tests=(-p ferrite --test golden_tiny)

step "cross-build for $target (release): ferrite, kernel tests, golden tests"
cargo build --release --target "$target" --bin ferrite
cargo test --release --target "$target" --no-run "${kernel_tests[@]}"
cargo test --release --target "$target" --no-run -p ferrite --test golden_tiny --test golden_smollm2
ferrite=${CARGO_TARGET_DIR:-$root/target}/$target/release/ferrite

step "qemu-aarch64 -cpu cortex-a53 (ARMv8.0): detection picks neon; kernel and tiny golden tests"
on cortex-a53 FERRITE_EXPECT_TIER=neon -- "${kernel_tests[@]}"
on cortex-a53 FERRITE_EXPECT_TIER=neon -- "${tiny_tests[@]}"

step "qemu-aarch64 -cpu cortex-a76 (ARMv8.2 + dotprod): detection picks dotprod"
on cortex-a76 FERRITE_EXPECT_TIER=dotprod -- "${kernel_tests[@]}" detected_tier_is_expected

step "qemu-aarch64 -cpu max: detection picks i8mm; kernel and tiny golden tests at every tier"
on max FERRITE_EXPECT_TIER=i8mm -- "${kernel_tests[@]}"
on max -- "${tiny_tests[@]}"

step "qemu-aarch64 -cpu max (best tier: i8mm): SmolLM2-135M f32, both golden prompts"
on max FERRITE_EXPECT_TIER=i8mm -- -p ferrite --test golden_smollm2 -- --exact smollm2_f32_matches_transformers --nocapture

step "ferrite run: greedy ids of every tier equal the reference's (tiny q4 and q8 models, -cpu max)"
qemu=(qemu-aarch64 -L "$sysroot")
for weights in q4 q8; do
    model=$out/tiny-$weights.frt
    "${qemu[@]}" -cpu max "$ferrite" convert tests/fixtures/tiny/llama-gqa -o "$model" --weights "$weights" --quiet
    args=(run -m "$model" --prompt-ids 1,2,3,4,5,6,7,8,9,10,11 -n 16 --temp 0 --ignore-eos --output ids)
    want=
    for tier in "${tiers[@]}"; do
        got=$(FERRITE_KERNELS=$tier "${qemu[@]}" -cpu max "$ferrite" "${args[@]}" 2>"$out/run.log") \
            || { cat "$out/run.log" >&2; die "ferrite run ($weights, $tier) failed"; }
        printf '%s %-9s %s\n' "$weights" "$tier" "$got" >&2
        want=${want:-$got}
        [[ $got == "$want" ]] || die "$weights: tier $tier generated $got, the reference tier $want"
    done
done

step "ferrite run with FERRITE_KERNELS=i8mm on -cpu cortex-a53: status 1 and a clear error, not SIGILL"
"${qemu[@]}" -cpu cortex-a53 "$ferrite" "${args[@]}" >/dev/null 2>"$out/run.log" \
    || { cat "$out/run.log" >&2; die "ferrite run at the detected tier failed on cortex-a53"; }
grep -q '^\[ferrite\] kernels neon,' "$out/run.log" \
    || { cat "$out/run.log" >&2; die "ferrite run on cortex-a53 did not report the neon tier"; }
status=0
FERRITE_KERNELS=i8mm "${qemu[@]}" -cpu cortex-a53 "$ferrite" "${args[@]}" >/dev/null 2>"$out/run.log" || status=$?
cat "$out/run.log" >&2
[[ $status == 1 ]] || die "expected exit status 1, got $status (128 + n is signal n)"
grep -q "kernel tier i8mm needs CPU features this machine lacks" "$out/run.log" \
    || die "the error does not say that the CPU lacks the tier"

step "aarch64 under qemu: all checks passed"
