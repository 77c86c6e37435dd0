#!/usr/bin/env bash
# Fuzzes Ferrite with cargo-fuzz (issue #7 item 1).
#
#   scripts/fuzz.sh [RUNS] [TARGET...]
#
# RUNS: executions per target (default 2500000); TARGETs default to all of
# format_reader session tokenizer converter_ingest gguf_reader hf_json
# session_ring. Environment:
#   MAX_TOTAL_TIME  seconds per target, passed as -max_total_time (optional)
#   JOBS            parallel fuzzing jobs per target (default 1)
#   SANITIZER       cargo-fuzz sanitizer (default address; `none` is faster)
#   FUZZ_ARGS       extra `cargo fuzz run` options, e.g. "--no-trace-compares
#                   --target-dir fuzz/target/notc" (the tokenizer target's BPE
#                   merge loop runs ~4x faster without compare tracing)
# Seed corpora are made under fuzz/corpus/<target> (git-ignored); crashes
# land in fuzz/artifacts/<target>. Once a crash is fixed, copy its input to
# fuzz/regressions/<target>/ so `cargo test --test fuzz_regressions` replays it.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$(dirname "$0")/.."

RUNS=${1:-2500000}
shift || true
TARGETS=("$@")
[ ${#TARGETS[@]} -gt 0 ] || TARGETS=(format_reader session tokenizer converter_ingest gguf_reader hf_json session_ring)
SANITIZER=${SANITIZER:-address}
JOBS=${JOBS:-1}

# (grep without -q: with pipefail, -q's early exit can fail the pipeline)
rustup toolchain list | grep '^nightly' >/dev/null || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

max_len() {
    case $1 in
        format_reader) echo 262144 ;;
        session) echo 262144 ;;      # the tiny q8/q4 seeds are ~100-200 KiB
        tokenizer) echo 1024 ;;
        converter_ingest) echo 16384 ;;
        gguf_reader) echo 16384 ;;
        hf_json) echo 8192 ;;
        session_ring) echo 128 ;;    # 3 header bytes + the 8 x 12 ids it reads
    esac
}

seed() {
    local dir=fuzz/corpus/$1
    mkdir -p "$dir"
    case $1 in
        format_reader|session)
            if [ ! -e fuzz/corpus/session/gqa-q8.frt ] || [ ! -e fuzz/corpus/format_reader/gqa-q4.frt ]; then
                cargo build --release --quiet
                local tmp
                tmp=$(mktemp -d)
                mkdir -p fuzz/corpus/session fuzz/corpus/format_reader
                for w in q8 q4; do
                    target/release/ferrite convert tests/fixtures/tiny/llama-gqa -o "$tmp/gqa-$w.frt" --weights $w --quiet
                    # session: byte 0 is the mode (bit 0: reseal the meta CRC).
                    { printf '\x00'; cat "$tmp/gqa-$w.frt"; } > fuzz/corpus/session/gqa-$w.frt
                    { printf '\x01'; cat "$tmp/gqa-$w.frt"; } > fuzz/corpus/session/gqa-$w-reseal.frt
                    { printf '\x07'; cat "$tmp/gqa-$w.frt"; } > fuzz/corpus/session/gqa-$w-reseal-4ids.frt
                done
                # format_reader: the whole q4 and q8 files, and the q4 file's
                # head (header, config, directory) alone.
                head -c 4096 "$tmp/gqa-q4.frt" > fuzz/corpus/format_reader/gqa-q4-head.frt
                cp "$tmp/gqa-q4.frt" "$tmp/gqa-q8.frt" fuzz/corpus/format_reader/
                rm -rf "$tmp"
            fi ;;
        tokenizer)
            printf 'Hello, world!' > "$dir/hello"
            printf '<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n' > "$dir/chat"
            printf 'caf\xc3\xa9 \xf0\x9f\xa4\x96  \t\r\n 123456 don'"'"'t' > "$dir/unicode"
            printf '\x00\x01\x00\x00\xff\xff\xff\xff\x10\x27\x00\x00' > "$dir/ids" ;;
        converter_ingest)
            # byte 0: weights (q8, q4, f16, f32); u16 LE config length;
            # config.json; safetensors header JSON.
            local cfg=tests/fixtures/tiny/llama-gqa/config.json
            local st=tests/fixtures/tiny/llama-gqa/model.safetensors
            local clen hlen
            clen=$(stat -c %s $cfg)
            hlen=$(od -An -t u8 -N 8 $st | tr -d ' ')
            for w in 0 1; do
                {
                    printf "\\x$(printf %02x $w)\\x$(printf %02x $((clen & 255)))\\x$(printf %02x $((clen >> 8)))"
                    cat $cfg
                    head -c $((8 + hlen)) $st | tail -c +9
                } > "$dir/gqa-$w"
            done ;;
        gguf_reader|hf_json|session_ring)
            # Seeds built in code (fuzz/src/targets.rs).
            FERRITE_FUZZ_CORPUS=$PWD/fuzz/corpus cargo test --release --quiet --test fuzz_regressions \
                -- --ignored write_seed_corpus >/dev/null ;;
    esac
}

for t in "${TARGETS[@]}"; do
    seed "$t"
    extra=()
    [ -n "${MAX_TOTAL_TIME:-}" ] && extra+=("-max_total_time=$MAX_TOTAL_TIME")
    [ "$JOBS" -gt 1 ] && extra+=("-jobs=$JOBS" "-workers=$JOBS")
    echo "== $t: $RUNS runs"
    # shellcheck disable=SC2086 # FUZZ_ARGS is a list of options
    cargo +nightly fuzz run --fuzz-dir fuzz --sanitizer "$SANITIZER" ${FUZZ_ARGS:-} "$t" "fuzz/corpus/$t" -- \
        -runs="$RUNS" -max_len="$(max_len "$t")" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 "${extra[@]}"
done
