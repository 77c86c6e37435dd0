#!/usr/bin/env bash
# Quantization fidelity of Ferrite and llama.cpp, each against its own f32
# model: perplexity, perplexity ratio, mean and 99th-percentile KL
# divergence and top-1 agreement over
# tests/fixtures/smollm2-135m/apache-2.0.txt, 512-token windows, second
# half of each scored (llama-perplexity's rule), f16 KV cache on both sides.
#
# Usage:  bash scripts/kld-vs-llama-cpp.sh [--model smollm2|qwen] [THREADS]
#         (prints a Markdown table)
#
#   smollm2 (default)  SmolLM2-135M-Instruct's f32 folder quantized by each
#                      tool: f16, q8/Q8_0, q4/Q4_0, q4a/Q4_1, and more.
#   qwen               the Qwen2.5-Coder-1.5B-Instruct Q4_K_M GGUF, the very
#                      same weights on both sides (Ferrite transcodes it
#                      losslessly), each tool against its own F32 run of the
#                      dequantized weights (`ferrite convert --weights f32`,
#                      `llama-quantize … F32`): what is left is each tool's
#                      activation quantization and arithmetic.
#
# Needs the model (scripts/fetch-models.sh) and llama.cpp's tools
# (scripts/build-llama-cpp.sh: about 10 minutes the first time). Work files
# go to ${FERRITE_CACHE:-~/.cache/ferrite}/kld (about 2 GB for smollm2,
# 14 GB for qwen). Takes about 10 minutes on 2 cores for smollm2, 25 for
# qwen. Not part of the test command.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

MODEL=smollm2
if [[ ${1:-} == --model ]]; then
    MODEL=${2:?--model needs smollm2 or qwen}
    shift 2
fi
[[ $MODEL == smollm2 || $MODEL == qwen ]] || die "unknown model $MODEL (smollm2 or qwen)"
THREADS="${1:-$(nproc)}"
WORK="$CACHE/kld"
[[ $MODEL == qwen ]] && WORK="$CACHE/kld-qwen"
TEXT="$REPO_ROOT/tests/fixtures/smollm2-135m/apache-2.0.txt"
CTX=512
mkdir -p "$WORK"

bash "$REPO_ROOT/scripts/setup.sh" llama-cpp
if [[ $MODEL == qwen ]]; then
    GGUF=$(bash "$REPO_ROOT/scripts/fetch-models.sh" qwen2.5-coder-1.5b | tail -1)
    SRC=$GGUF
else
    HF=$(bash "$REPO_ROOT/scripts/fetch-models.sh" | tail -1)
    GGUF="$CACHE/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf"
    SRC=$HF
fi
[[ -f "$GGUF" ]] || die "$GGUF missing (scripts/fetch-models.sh extracts it)"
BIN=$(bash "$REPO_ROOT/scripts/build-llama-cpp.sh" | tail -1)

log "building ferrite"
(cd "$REPO_ROOT" && cargo build --release --quiet --bin ferrite)
# A copy, so that rebuilding the repository during a run changes nothing.
FERRITE="$WORK/ferrite"
cmp -s "${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release/ferrite" "$FERRITE" \
    || cp "${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release/ferrite" "$FERRITE"

ROWS="$WORK/rows.tsv"
: >"$ROWS"

# --- Ferrite ---------------------------------------------------------------
# Results are reused while newer than the ferrite binary (a rebuild redoes them).
fresh() { [[ -s "$1" && "$1" -nt "$FERRITE" ]]; }
ferrite_model() { # NAME CONVERT-ARGS...
    local name=$1
    shift
    local out="$WORK/ferrite-$name.frt"
    if fresh "$out" && fresh "$WORK/ferrite-$name.bpw" && [[ "$(cat "$WORK/ferrite-$name.args" 2>/dev/null)" == "$*" ]]; then
        return 0
    fi
    rm -f "$WORK/ferrite-$name.json"
    log "ferrite convert $*"
    "$FERRITE" convert "$SRC" -o "$out" "$@" 2>"$WORK/ferrite-$name.convert.log" \
        || die "convert $name failed: $(tail -3 "$WORK/ferrite-$name.convert.log")"
    # "(… M parameters, X bits/weight overall)"
    sed -n 's/.* \([0-9.]*\) bits\/weight overall.*/\1/p' "$WORK/ferrite-$name.convert.log" >"$WORK/ferrite-$name.bpw"
    echo "$*" >"$WORK/ferrite-$name.args"
}
ferrite_ppl() { "$FERRITE" perplexity -f "$TEXT" --ctx $CTX --score second-half -t "$THREADS" --json "$@" 2>/dev/null; }

ferrite_model f32 --weights f32
if ! fresh "$WORK/ferrite-f32.json" || ! [[ "$WORK/ferrite-base.kld" -nt "$WORK/ferrite-f32.frt" ]]; then
    log "ferrite perplexity f32 (base)"
    ferrite_ppl -m "$WORK/ferrite-f32.frt" --kl-divergence-base "$WORK/ferrite-base.kld" >"$WORK/ferrite-f32.json"
fi
# q4, q4a and q4-mix keep the default q8 embedding table (llama.cpp keeps
# SmolLM2's tied table at 8 bits too, see the BPW column); the last two rows
# put it in 4 bits as well.
if [[ $MODEL == qwen ]]; then
    SPECS=("q4_k_m transcoded:")
    F32ACTS=(q4_k_m_transcoded)
    LTYPES=(Q4_K_M)
else
    SPECS=("f16:--weights f16" "q8:--weights q8" "q4:--weights q4" "q4a:--weights q4a" "q4-mix:--weights q4-mix"
        "q4, q4 table:--weights q4 --embed q4" "q4a, q4a table:--weights q4a --embed q4a")
    F32ACTS=(q8 q4)
    LTYPES=(F16 Q8_0 Q4_0 Q4_1)
fi
for spec in "${SPECS[@]}"; do
    name=${spec%%:*}
    args=${spec#*:}
    file=$(echo "$name" | tr -c 'a-z0-9-\n' '_')
    # shellcheck disable=SC2086
    ferrite_model "$file" $args
    if ! fresh "$WORK/ferrite-$file.json" || ! [[ "$WORK/ferrite-$file.json" -nt "$WORK/ferrite-base.kld" ]]; then
        log "ferrite perplexity $name"
        ferrite_ppl -m "$WORK/ferrite-$file.frt" --kl-divergence "$WORK/ferrite-base.kld" >"$WORK/ferrite-$file.json"
    fi
    python3 - "$name" "$args" "$WORK/ferrite-$file.json" "$(cat "$WORK/ferrite-$file.bpw")" >>"$ROWS" <<'EOF'
import json, sys
name, args, path, bpw = sys.argv[1:5]
j = json.load(open(path))
how = f"`{args}`" if args else "`ferrite convert`, no options"
print("\t".join(["Ferrite " + name, how, f"{float(bpw):.2f}", f"{j['perplexity']:.4f}", f"{j['ppl_ratio']:.4f}",
                 f"{j['kld_mean']:.5f}", f"{j['kld_p99']:.4f}", f"{100 * j['top1_agreement']:.1f} %"]))
EOF
done

# The same q8 and q4 files (qwen: the transcoded file) with f32
# activations (the int8 activations' share of the divergence).
for name in "${F32ACTS[@]}"; do
    out="$WORK/ferrite-$name-f32acts.json"
    if ! fresh "$out" || ! [[ "$out" -nt "$WORK/ferrite-base.kld" && "$out" -nt "$WORK/ferrite-$name.frt" ]]; then
        log "ferrite perplexity $name --f32-activations"
        ferrite_ppl -m "$WORK/ferrite-$name.frt" --f32-activations --kl-divergence "$WORK/ferrite-base.kld" >"$out"
    fi
    python3 - "$name" "$out" "$(cat "$WORK/ferrite-$name.bpw")" "$(cat "$WORK/ferrite-$name.args")" >>"$ROWS" <<'EOF'
import json, sys
name, path, bpw, args = sys.argv[1:5]
j = json.load(open(path))
how = (args + " " if args else "") + "--f32-activations"
print("\t".join(["Ferrite " + name.replace("_transcoded", " transcoded") + ", f32 activations", f"`{how}`", f"{float(bpw):.2f}",
                 f"{j['perplexity']:.4f}", f"{j['ppl_ratio']:.4f}", f"{j['kld_mean']:.5f}", f"{j['kld_p99']:.4f}",
                 f"{100 * j['top1_agreement']:.1f} %"]))
EOF
done

# --- llama.cpp -------------------------------------------------------------
export LD_LIBRARY_PATH="$BIN${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
quantize() { # TYPE FROM
    local out="$WORK/llama-$1.gguf"
    if [[ ! -f "$out" ]]; then
        log "llama-quantize $1"
        "$BIN/llama-quantize" --allow-requantize "$2" "$out.tmp" "$1" "$THREADS" >"$WORK/llama-$1.quantize.log" 2>&1 \
            || die "llama-quantize $1 failed: $(tail -3 "$WORK/llama-$1.quantize.log")"
        mv "$out.tmp" "$out"
    fi
}
quantize F32 "$GGUF"
if [[ $MODEL == qwen ]]; then
    ln -sf "$GGUF" "$WORK/llama-Q4_K_M.gguf" # the very file, not requantized
else
    for t in "${LTYPES[@]}"; do quantize "$t" "$WORK/llama-F32.gguf"; done
fi

# Logs are reused while newer than their model and the base.
if ! [[ -s "$WORK/llama-base.kld" && "$WORK/llama-base.kld" -nt "$WORK/llama-F32.gguf" ]]; then
    log "llama-perplexity F32 (base)"
    "$BIN/llama-perplexity" -m "$WORK/llama-F32.gguf" -f "$TEXT" -c $CTX -t "$THREADS" \
        --kl-divergence-base "$WORK/llama-base.kld" >"$WORK/llama-F32.log" 2>&1 || die "llama-perplexity F32 failed"
fi
for t in "${LTYPES[@]}"; do
    if ! [[ -s "$WORK/llama-$t.log" && "$WORK/llama-$t.log" -nt "$WORK/llama-base.kld" \
        && "$WORK/llama-$t.log" -nt "$WORK/llama-$t.gguf" ]] || ! grep -q "Same top p" "$WORK/llama-$t.log"; then
        log "llama-perplexity $t"
        "$BIN/llama-perplexity" -m "$WORK/llama-$t.gguf" -f "$TEXT" -c $CTX -t "$THREADS" \
            --kl-divergence-base "$WORK/llama-base.kld" --kl-divergence >"$WORK/llama-$t.log" 2>&1 \
            || die "llama-perplexity $t failed: $(tail -3 "$WORK/llama-$t.log")"
    fi
    python3 - "$t" "$WORK/llama-$t.log" "$WORK/llama-$t.quantize.log" "$WORK/llama-F32.quantize.log" >>"$ROWS" <<'EOF'
import os, re, sys
t, path, qpath, fpath = sys.argv[1:5]
log = open(path, errors="replace").read()
# The BPW of a requantized file from llama-quantize's log ("quant size");
# of the GGUF itself (qwen) from the log of its requantization to F32
# ("model size", the input's).
qlog = open(qpath, errors="replace").read() if os.path.exists(qpath) else ""
flog = open(fpath, errors="replace").read()
def num(pattern, text=log, where=path):
    m = re.search(pattern, text)
    if not m:
        sys.exit(f"kld-vs-llama-cpp: {where}: no match for {pattern!r}")
    return float(m.group(1))
if qlog:
    bpw = num(r"quant size\s*=\s*[0-9.]+ [MG]iB \(([0-9.]+) BPW\)", qlog, qpath)
else:
    bpw = num(r"model size\s*=\s*[0-9.]+ [MG]iB \(([0-9.]+) BPW\)", flog, fpath)
ppl = num(r"Mean PPL\(Q\)\s*:\s*([0-9.]+)")
ratio = num(r"Mean PPL\(Q\)/PPL\(base\)\s*:\s*([0-9.]+)")
kld = num(r"Mean\s+KLD:\s*(-?[0-9.]+)")
p99 = num(r"99\.0%\s+KLD:\s*(-?[0-9.]+)")
top = num(r"Same top p:\s*([0-9.]+)")
how = "the GGUF as published" if not qlog else f"`llama-quantize … {t}`"
print("\t".join([f"llama.cpp {t}", how, f"{bpw:.2f}", f"{ppl:.4f}", f"{ratio:.4f}",
                 f"{kld:.5f}", f"{p99:.4f}", f"{top:.1f} %"]))
EOF
done

# --- table -----------------------------------------------------------------
fbase=$(python3 -c 'import json,sys; print("%.4f" % json.load(open(sys.argv[1]))["perplexity"])' "$WORK/ferrite-f32.json")
lbase=$(sed -n 's/.*Final estimate: PPL = \([0-9.]*\).*/\1/p' "$WORK/llama-F32.log" | head -1)
echo "Base perplexity (f32): Ferrite $fbase, llama.cpp $lbase; $(date -u +%Y-%m-%d), $(nproc) CPUs, $THREADS threads."
echo
echo "| model | how | bits/weight | PPL | PPL ratio | mean KLD | 99 % KLD | top-1 |"
echo "|---|---|---|---|---|---|---|---|"
awk -F'\t' '{ printf "| %s | %s | %s | %s | %s | %s | %s | %s |\n", $1, $2, $3, $4, $5, $6, $7, $8 }' "$ROWS"
