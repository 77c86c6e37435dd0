#!/usr/bin/env bash
# The project's test command (README and .ci/run call it).
#
#   bash scripts/test.sh                  every step, in order
#   bash scripts/test.sh --list           the steps' names and what each does
#   bash scripts/test.sh --only NAME[,NAME...]   just those steps
#
# It first installs what the chosen steps need (scripts/setup.sh: rustup
# targets and components, Debian packages), then runs:
#
#   lint       clippy -D warnings on the library crates, host, no_std and
#              aarch64 (scripts/lint.sh)
#   no-std     the no_std crates build for a Cortex-M4F (thumbv7em-none-eabihf)
#   workspace  every test of the workspace in release mode (the model tests
#              are too slow unoptimized), with the SmolLM2 f32 folder
#              and the Qwen2.5-Coder-1.5B Q4_K_M GGUF (scripts/fetch-models.sh,
#              cached under ~/.cache/ferrite) and
#              llama.cpp's tokenizer test vectors (scripts/fetch-llama-cpp-src.sh)
#   x86-tiers  detection and the kernel and tiny golden tests under
#              qemu-x86_64 -cpu Haswell, no SIGILL when a tier is missing
#              (scripts/x86-tiers.sh; the workspace tests already check every
#              tier this CPU has)
#   c-example  libferrite.a and examples/c against `ferrite run`
#              (scripts/c-example.sh)
#   mcu        the Cortex-M4F example under qemu-system-arm against the host
#              (scripts/mcu-example.sh)
#   aarch64    cross-built for aarch64: kernel tests, tiny golden tests and the
#              SmolLM2 f32 check under qemu-aarch64, detection and every forced
#              NEON/dotprod/i8mm tier (scripts/aarch64-qemu.sh)
#   cuda       the CUDA backend built with nvcc 13.0 from pip, a PTX for every
#              kernel, its host-side tests; no GPU needed (scripts/cuda-build.sh)
#   miri       Miri over the format reader, the reference kernels and the
#              parallel matmul (scripts/miri.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

# name|setup needs|description (the description is the one --list prints)
STEPS=(
    "lint|lint|clippy -D warnings on the library crates (host, no_std, aarch64)"
    "no-std|no-std|no_std builds for thumbv7em-none-eabihf"
    "workspace|models|cargo test --release --workspace (with SmolLM2 and llama.cpp's tokenizer vectors)"
    "x86-tiers|x86-tiers|AVX2-only detection and tests under qemu-x86_64 -cpu Haswell"
    "c-example|c-example models|C API: libferrite.a + examples/c vs ferrite run"
    "mcu|mcu|Cortex-M4F example under QEMU vs the host"
    "aarch64|aarch64 models|aarch64 under qemu-aarch64: NEON, dotprod and i8mm tiers"
    "cuda|cuda|CUDA backend: nvcc from pip, --features cuda, PTX for every kernel"
    "miri|miri|Miri over the format reader, the reference kernels and the parallel matmul"
)
field() { # N STEP: field N (1 name, 2 needs, 3 description) of a STEPS entry
    cut -d'|' -f"$1" <<<"$2"
}

only=()
while (($#)); do
    case $1 in
        --list)
            for s in "${STEPS[@]}"; do printf '%-10s %s\n' "$(field 1 "$s")" "$(field 3 "$s")"; done
            exit 0
            ;;
        --only)
            [[ $# -ge 2 ]] || die "--only needs a step name (bash scripts/test.sh --list)"
            IFS=, read -ra names <<<"$2"
            only+=("${names[@]}")
            shift 2
            ;;
        --only=*)
            IFS=, read -ra names <<<"${1#--only=}"
            only+=("${names[@]}")
            shift
            ;;
        *) die "unknown argument '$1' (usage: bash scripts/test.sh [--list | --only NAME[,NAME...]])" ;;
    esac
done

chosen=()
if ((${#only[@]})); then
    for name in "${only[@]}"; do
        found=0
        for s in "${STEPS[@]}"; do [[ $(field 1 "$s") == "$name" ]] && found=1; done
        ((found)) || die "no step named '$name' (bash scripts/test.sh --list)"
    done
    for s in "${STEPS[@]}"; do
        [[ " ${only[*]} " == *" $(field 1 "$s") "* ]] && chosen+=("$s")
    done
else
    chosen=("${STEPS[@]}")
fi

needs=()
for s in "${chosen[@]}"; do
    # shellcheck disable=SC2207 # needs are single words
    needs+=($(field 2 "$s"))
done
step "set-up: bash scripts/setup.sh ${needs[*]}"
bash scripts/setup.sh "${needs[@]}"

models_fetched=0
fetch_models() { # sets FERRITE_SMOLLM2_DIR, FERRITE_SMOLLM2_GGUF, FERRITE_QWEN_GGUF (once)
    ((models_fetched)) && return
    step "fetching SmolLM2-135M-Instruct (cached)"
    FERRITE_SMOLLM2_DIR=$(bash scripts/fetch-models.sh | tail -1)
    export FERRITE_SMOLLM2_DIR
    # The GGUF that folder was made from (tests/gguf_import.rs).
    FERRITE_SMOLLM2_GGUF="$(dirname "$FERRITE_SMOLLM2_DIR")/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf"
    export FERRITE_SMOLLM2_GGUF
    step "fetching Qwen2.5-Coder-1.5B-Instruct Q4_K_M (cached)"
    FERRITE_QWEN_GGUF=$(bash scripts/fetch-models.sh qwen2.5-coder-1.5b | tail -1)
    export FERRITE_QWEN_GGUF
    models_fetched=1
}

run_step() { # NAME
    case $1 in
        lint) bash scripts/lint.sh ;;
        no-std)
            cargo build --release -p ferrite-format -p ferrite-kernels -p ferrite-runtime \
                --target thumbv7em-none-eabihf --no-default-features
            ;;
        workspace)
            fetch_models
            step "fetching llama.cpp's sources for its tokenizer test vectors (cached)"
            FERRITE_LLAMA_CPP_SRC=$(bash scripts/fetch-llama-cpp-src.sh | tail -1)
            export FERRITE_LLAMA_CPP_SRC
            step "cargo test --release --workspace"
            cargo test --release --workspace
            ;;
        x86-tiers) bash scripts/x86-tiers.sh ;;
        c-example) fetch_models && bash scripts/c-example.sh ;;
        mcu) bash scripts/mcu-example.sh ;;
        aarch64) fetch_models && bash scripts/aarch64-qemu.sh ;;
        cuda) bash scripts/cuda-build.sh ;;
        miri) bash scripts/miri.sh ;;
        *) die "step $1 has no command" ;;
    esac
}

times=()
for s in "${chosen[@]}"; do
    step "[$(field 1 "$s")] $(field 3 "$s")"
    started=$SECONDS
    run_step "$(field 1 "$s")"
    times+=("$(field 1 "$s") $((SECONDS - started))s")
done
step "test.sh: passed in $((SECONDS / 60)) min $((SECONDS % 60)) s (set-up included): ${times[*]}"
