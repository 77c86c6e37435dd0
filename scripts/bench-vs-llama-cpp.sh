#!/usr/bin/env bash
# Ferrite vs llama.cpp, same machine, same run: pp512 and tg128 tokens/s at 1
# and 2 threads and peak RSS, on SmolLM2-135M-Instruct at the same bits per
# weight (q4, q8) and on Qwen2.5-Coder-1.5B-Instruct's own Q4_K_M GGUF
# (qwen: the very same weights on both sides, transcoded losslessly), with
# each row's decode bandwidth against this machine's measured read bandwidth.
#
# Usage: bash scripts/bench-vs-llama-cpp.sh [--rounds N] [-r R] [-t 1,2] [-p 512] [-n 128]
#                                           [--quants q4,q8] [--no-build] [--out FILE.md]
#                                           [--idle PCT] [--idle-wait S] [--report-only DIR]
#
#   --rounds N   rounds (default 3, at least 3 for a median worth reading); in
#                every round each configuration runs llama-bench and ferrite
#                bench back to back, the first of the two alternating by round
#   -r R         repetitions inside each llama-bench / ferrite bench call (default 5)
#   -t LIST      thread counts (default 1,2); -p / -n: prompt and generation lengths
#   --quants     q4 (llama.cpp Q4_0 vs Ferrite q4 + q8 table), q8 (Q8_0 vs q8),
#                qwen (the Qwen Q4_K_M GGUF vs `ferrite convert` of it);
#                default q4,q8,qwen
#   --no-build   use the ferrite binary already built (target/release/ferrite)
#   --out FILE   also write the markdown report there
#   --idle PCT   before each call, wait until other processes keep the CPUs at
#                most PCT % busy (measured over 2 s from /proc/stat; default 15),
#   --idle-wait S  but at most S seconds (default 120; 0: never wait); the
#                busy share seen before each call is reported
#   --report-only DIR  only print the report of the runs kept in DIR (e.g. an
#                interrupted session: give --rounds as many as it completed)
#
# What it does (everything cached under ${FERRITE_CACHE:-~/.cache/ferrite}):
#  1. builds `ferrite` (cargo build --release) and llama.cpp
#     (scripts/build-llama-cpp.sh, once);
#  2. makes smollm2-135m.Q4_0.gguf and .Q8_0.gguf in bench/ with
#     `llama-quantize --allow-requantize` from the shipped Q4_1 GGUF (its
#     log next to each: llama.cpp keeps the tied token_embd table at Q8_0
#     in the Q4_0 file, as 576 columns are not a multiple of 256);
#  3. converts the f32 HF folder (scripts/fetch-models.sh) to
#     smollm2-135m.q4.frt (--weights q4 --embed q8: the same 4.5 / 8.5 bits
#     per weight as Q4_0 / Q8_0) and smollm2-135m.q8.frt, and the Qwen GGUF
#     (scripts/fetch-models.sh qwen2.5-coder-1.5b) to qwen2.5-coder-1.5b.frt
#     (again whenever the ferrite binary is newer than the file); builds a
#     small AVX2 read-bandwidth probe (bench/bw-probe, C, with cc: the
#     threads each read their share of a 1 GiB buffer, best of 5 passes);
#  4. runs the rounds; each call is wrapped to record its peak RSS
#     (getrusage of the child, ru_maxrss) and the CPU time other processes
#     took meanwhile; before each call it waits for the machine to be quiet
#     (--idle) and records how busy it was;
#  4b. runs the probe at each thread count once per round;
#  5. prints (stdout) a markdown report: per configuration the median over
#     rounds of each tool's mean tok/s, the spread (min-max over rounds),
#     the ratio Ferrite / llama.cpp, and the median peak RSS of each; then
#     per configuration the bytes decode reads per token (every matrix
#     multiplied per token, from the Ferrite file's tensor sizes: all but
#     the embedding table where the output table is separate), each tool's
#     decode GB/s and share of the probe's bandwidth, the roof (probe /
#     bytes per token) and the decode goal min(1.25 x llama.cpp, 90 % of
#     the roof).
# Raw JSON of every call is kept in bench/runs-<timestamp>/.
# Progress goes to stderr. Not part of the test command (takes minutes).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

BENCH="$CACHE/bench"

ROUNDS=3
REPS=5
THREADS=1,2
PP=512
TG=128
QUANTS=q4,q8,qwen
BUILD=1
OUT=
IDLE=15
IDLE_WAIT=120
REPORT_ONLY=

while [[ $# -gt 0 ]]; do
    case "$1" in
        --rounds) ROUNDS=$2; shift 2 ;;
        -r) REPS=$2; shift 2 ;;
        -t) THREADS=$2; shift 2 ;;
        -p) PP=$2; shift 2 ;;
        -n) TG=$2; shift 2 ;;
        --quants) QUANTS=$2; shift 2 ;;
        --no-build) BUILD=0; shift ;;
        --out) OUT=$2; shift 2 ;;
        --idle) IDLE=$2; shift 2 ;;
        --idle-wait) IDLE_WAIT=$2; shift 2 ;;
        --report-only) REPORT_ONLY=$2; shift 2 ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "--rounds must be a positive integer"
[[ $REPS =~ ^[1-9][0-9]*$ ]] || die "-r must be a positive integer"
[[ $IDLE =~ ^[0-9]+$ && $IDLE_WAIT =~ ^[0-9]+$ ]] || die "--idle and --idle-wait take whole numbers"
command -v python3 >/dev/null || die "python3 is needed (JSON and medians)"
(( ROUNDS >= 3 )) || log "warning: fewer than 3 rounds: medians are weak"

cd "$REPO_ROOT"
if [[ -n $REPORT_ONLY ]]; then
    [[ -d $REPORT_ONLY ]] || die "--report-only: $REPORT_ONLY is not a folder"
    BUILD=0
fi
TARGET="${CARGO_TARGET_DIR:-$REPO_ROOT/target}"
FERRITE="$TARGET/release/ferrite"
if (( BUILD )); then
    log "building ferrite (release)"
    cargo build --release --bin ferrite >&2 || die "cargo build failed"
fi
[[ -x $FERRITE ]] || die "$FERRITE not found (drop --no-build)"
if [[ -z $REPORT_ONLY ]]; then
bash "$SCRIPT_DIR/setup.sh" llama-cpp
LLAMA_BIN=$(bash "$SCRIPT_DIR/build-llama-cpp.sh" | tail -1)
HF=$(bash "$SCRIPT_DIR/fetch-models.sh" | tail -1)
SRC_GGUF="$CACHE/smollm2-135m/SmolLM2-135M-Instruct.Q4_1.gguf"
[[ -f $SRC_GGUF ]] || die "$SRC_GGUF missing (scripts/fetch-models.sh makes it)"
mkdir -p "$BENCH"
fi

# --- model files -----------------------------------------------------------
QWEN_GGUF="$CACHE/qwen2.5-coder-1.5b/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
gguf_type() {
    case $1 in q4) echo Q4_0 ;; q8) echo Q8_0 ;; qwen) echo Q4_K_M ;; *) die "unknown quant $1 (q4, q8 or qwen)" ;; esac
}
gguf_of() { case $1 in qwen) echo "$QWEN_GGUF" ;; *) echo "$BENCH/smollm2-135m.$(gguf_type "$1").gguf" ;; esac; }
frt_of() { case $1 in qwen) echo "$BENCH/qwen2.5-coder-1.5b.frt" ;; *) echo "$BENCH/smollm2-135m.$1.frt" ;; esac; }
IFS=, read -r -a QLIST <<<"$QUANTS"
for q in "${QLIST[@]}"; do gguf_type "$q" >/dev/null; done
if [[ -z $REPORT_ONLY ]]; then
for q in "${QLIST[@]}"; do
    case $q in
        q4) gtype=Q4_0; conv=(--weights q4 --embed q8) ;;
        q8) gtype=Q8_0; conv=(--weights q8 --embed q8) ;;
        qwen) gtype=; conv=() ;;
    esac
    gguf=$(gguf_of "$q")
    if [[ $q == qwen ]]; then
        got=$(bash "$SCRIPT_DIR/fetch-models.sh" qwen2.5-coder-1.5b | tail -1)
        [[ $got == "$QWEN_GGUF" ]] || die "fetch-models.sh gave $got, expected $QWEN_GGUF"
    elif [[ ! -s $gguf ]]; then
        log "llama-quantize $gtype -> $gguf"
        "$LLAMA_BIN/llama-quantize" --allow-requantize "$SRC_GGUF" "$gguf.tmp" "$gtype" >"$gguf.log" 2>&1 \
            || { tail -20 "$gguf.log" >&2; die "llama-quantize failed (log: $gguf.log)"; }
        mv "$gguf.tmp" "$gguf"
    fi
    frt=$(frt_of "$q")
    src=$HF
    [[ $q == qwen ]] && src=$gguf
    if [[ ! -s $frt || $FERRITE -nt $frt ]]; then
        log "ferrite convert $(basename "$src") ${conv[*]} -> $frt"
        "$FERRITE" convert "$src" -o "$frt" "${conv[@]}" --quiet >&2 || die "ferrite convert failed"
    fi
done

# --- read bandwidth probe ---------------------------------------------------
# bw-probe THREADS prints GB/s (1e9 bytes/s): the threads each read their
# contiguous share of a 1 GiB buffer with 32-byte AVX2 loads, best of 5
# passes (the buffer is written first, so every page is mapped).
PROBE="$BENCH/bw-probe"
if [[ ! -x $PROBE || $0 -nt $PROBE ]]; then
    log "building the bandwidth probe -> $PROBE"
    cat >"$PROBE.c" <<'PROBE_C'
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#define BYTES (1ul << 30)
static unsigned char *buf;
static int nthreads;
static pthread_barrier_t bar;
static double best = 1e30;
static volatile long long sink;
static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + 1e-9 * t.tv_nsec;
}
static void *reader(void *arg) {
    long id = (long)arg;
    size_t share = BYTES / nthreads / 128 * 128, lo = id * share;
    for (int pass = 0; pass < 5; pass++) {
        pthread_barrier_wait(&bar);
        double t0 = now();
        __m256i a = _mm256_setzero_si256(), b = a, c = a, d = a;
        for (size_t i = lo; i < lo + share; i += 128) {
            a = _mm256_add_epi64(a, _mm256_load_si256((const __m256i *)(buf + i)));
            b = _mm256_add_epi64(b, _mm256_load_si256((const __m256i *)(buf + i + 32)));
            c = _mm256_add_epi64(c, _mm256_load_si256((const __m256i *)(buf + i + 64)));
            d = _mm256_add_epi64(d, _mm256_load_si256((const __m256i *)(buf + i + 96)));
        }
        __m256i s = _mm256_add_epi64(_mm256_add_epi64(a, b), _mm256_add_epi64(c, d));
        sink += _mm256_extract_epi64(s, 0);
        pthread_barrier_wait(&bar);
        double t = now() - t0;
        if (id == 0 && t < best) best = t;
    }
    return 0;
}
int main(int argc, char **argv) {
    nthreads = argc > 1 ? atoi(argv[1]) : 1;
    if (nthreads < 1 || nthreads > 256) {
        fprintf(stderr, "usage: bw-probe THREADS (1..256)\n");
        return 2;
    }
    buf = aligned_alloc(4096, BYTES);
    if (!buf) {
        perror("aligned_alloc");
        return 1;
    }
    memset(buf, 1, BYTES);
    pthread_barrier_init(&bar, 0, nthreads);
    pthread_t th[256];
    for (long i = 0; i < nthreads; i++) pthread_create(&th[i], 0, reader, (void *)i);
    for (int i = 0; i < nthreads; i++) pthread_join(th[i], 0);
    printf("%.2f\n", (double)(BYTES / nthreads / 128 * 128) * nthreads / best / 1e9);
    return 0;
}
PROBE_C
    cc -O2 -mavx2 -pthread "$PROBE.c" -o "$PROBE" || die "building the bandwidth probe failed (needs cc)"
fi
fi

# --- rounds ----------------------------------------------------------------
RUNS="${REPORT_ONLY:-$BENCH/runs-$(date -u +%Y%m%dT%H%M%SZ)}"
mkdir -p "$RUNS"
IFS=, read -r -a TLIST <<<"$THREADS"

# measured BASE CMD...: runs CMD with stdout into BASE.json; writes the
# child's peak RSS in bytes into BASE.rss and into BASE.other the share (%)
# of the machine's CPU time that other processes used while it ran (all
# CPUs' busy time from /proc/stat minus the child's own user+system time).
measured() {
    local base=$1; shift
    python3 - "$base" "$@" <<'EOF'
import os, resource, subprocess, sys, time
base, cmd = sys.argv[1], sys.argv[2:]
def busy():
    f = [int(x) for x in open("/proc/stat").readline().split()[1:9]]
    return (sum(f) - f[3] - f[4]) / os.sysconf("SC_CLK_TCK")
b0, t0 = busy(), time.monotonic()
with open(base + ".json", "wb") as out:
    rc = subprocess.run(cmd, stdout=out).returncode
b1, wall = busy(), time.monotonic() - t0
ru = resource.getrusage(resource.RUSAGE_CHILDREN)
with open(base + ".rss", "w") as f:
    f.write(str(ru.ru_maxrss * 1024))
others = max(0.0, (b1 - b0) - (ru.ru_utime + ru.ru_stime))
with open(base + ".other", "w") as f:
    f.write(f"{100 * others / (wall * (os.cpu_count() or 1)):.1f}")
sys.exit(rc)
EOF
}

# busy_pct: percent of all CPUs' time spent busy over the next 2 s (others'
# load: nothing of ours runs meanwhile).
busy_pct() {
    local a b
    read -r -a a < <(head -1 /proc/stat)
    sleep 2
    read -r -a b < <(head -1 /proc/stat)
    local total=0 idle i
    for ((i = 1; i < 9 && i < ${#a[@]}; i++)); do total=$((total + b[i] - a[i])); done
    idle=$((b[4] - a[4] + b[5] - a[5]))
    echo $(( total > 0 ? 100 * (total - idle) / total : 0 ))
}

# quiet BASE: waits (at most --idle-wait s) until the CPUs are at most --idle %
# busy; writes the last busy share into BASE.load.
quiet() {
    local waited=0 busy
    busy=$(busy_pct)
    while (( busy > IDLE && waited < IDLE_WAIT )); do
        (( waited == 0 )) && log "  machine ${busy}% busy: waiting for <= ${IDLE}% (at most ${IDLE_WAIT} s)"
        sleep 3
        waited=$((waited + 5))
        busy=$(busy_pct)
    done
    echo "$busy" >"$1.load"
}

run_llama() { # quant threads round
    local base="$RUNS/llama-$1-t$2-r$3"
    quiet "$base"
    measured "$base" "$LLAMA_BIN/llama-bench" -m "$(gguf_of "$1")" -p "$PP" -n "$TG" \
        -t "$2" -r "$REPS" -o json 2>"$base.err" || { tail "$base.err" >&2; die "llama-bench failed"; }
}
run_ferrite() {
    local base="$RUNS/ferrite-$1-t$2-r$3"
    quiet "$base"
    measured "$base" "$FERRITE" bench -m "$(frt_of "$1")" -p "$PP" -n "$TG" \
        -t "$2" -r "$REPS" --json 2>"$base.err" || { tail "$base.err" >&2; die "ferrite bench failed"; }
}

for ((round = 1; round <= ROUNDS && ${#REPORT_ONLY} == 0; round++)); do
    for t in "${TLIST[@]}"; do
        quiet "$RUNS/bw-t$t-r$round"
        "$PROBE" "$t" >"$RUNS/bw-t$t-r$round.gbs" || die "the bandwidth probe failed"
    done
    for q in "${QLIST[@]}"; do
        for t in "${TLIST[@]}"; do
            log "round $round/$ROUNDS: $q, $t thread(s)"
            if (( round % 2 )); then
                run_llama "$q" "$t" "$round"; run_ferrite "$q" "$t" "$round"
            else
                run_ferrite "$q" "$t" "$round"; run_llama "$q" "$t" "$round"
            fi
        done
    done
done

# --- report ----------------------------------------------------------------
for q in "${QLIST[@]}"; do
    [[ -s $RUNS/files-$q ]] || printf '%s\n%s\n' "$(gguf_of "$q")" "$(frt_of "$q")" >"$RUNS/files-$q"
done
REPORT=$(FERRITE="$FERRITE" python3 - "$RUNS" "$ROUNDS" "$REPS" "$PP" "$TG" "$QUANTS" "$THREADS" "$BENCH" "$IDLE" <<'EOF'
import json, os, statistics, sys
runs, rounds, reps, pp, tg, quants, threads, bench, idle = sys.argv[1:10]
files = {}
for q in quants.split(","):
    with open(os.path.join(runs, f"files-{q}")) as f:
        files[q] = f.read().split("\n")[:2]
rounds = int(rounds)
quants, threads = quants.split(","), [int(t) for t in threads.split(",")]
pp_name, tg_name = f"pp{pp}", f"tg{tg}"

def load(tool, q, t, r):
    base = os.path.join(runs, f"{tool}-{q}-t{t}-r{r}")
    with open(base + ".json") as f:
        data = json.load(f)
    with open(base + ".rss") as f:
        rss = int(f.read())
    with open(base + ".load") as f:
        load = float(f.read())
    if os.path.exists(base + ".other"):
        with open(base + ".other") as f:
            others.append(float(f.read()))
    out = {}
    for o in data:
        if tool == "llama":
            name = f"pp{o['n_prompt']}" if o["n_gen"] == 0 else f"tg{o['n_gen']}"
            out[name] = o["avg_ts"]
            out["_size"], out["_params"] = o["model_size"], o["model_n_params"]
        else:
            out[o["test"]] = o["tok_s_mean"]
            out["_size"], out["_params"], out["_kernels"] = o["model_bytes"], o["model_params"], o["kernels"]
    return out, rss, load

def tensors(frt):
    import subprocess
    return json.loads(subprocess.run([os.environ["FERRITE"], "inspect", frt, "--json"], capture_output=True,
                                     check=True).stdout)["tensors"]

def weight_bytes(frt):
    # Tensor bytes of a Ferrite file (what llama-bench's model_size is for a GGUF).
    return sum(t["bytes"] for t in tensors(frt))

def decode_bytes(frt):
    # Bytes of every matrix multiplied per token: all matrices but the
    # embedding table when the file has a separate output table (the table
    # is then only gathered, one row per token).
    ts = tensors(frt)
    separate = any(t["role"] == "output" for t in ts)
    return sum(t["bytes"] for t in ts
               if t["rows"] > 1 and t["cols"] > 1 and not (separate and t["role"] == "embedding"))

def med(v):
    return statistics.median(v)

mib = lambda b: b / (1 << 20)
rows, sizes, loads, kernels, others = [], {}, [], set(), []
for q in quants:
    for t in threads:
        cell = {}
        for tool in ("llama", "ferrite"):
            res = [load(tool, q, t, r) for r in range(1, rounds + 1)]
            loads.extend(l for _, _, l in res)
            sizes[(tool, q)] = (res[0][0]["_size"], res[0][0]["_params"])
            if tool == "ferrite":
                kernels.add(res[0][0]["_kernels"])
            for test in (pp_name, tg_name):
                vals = [o[test] for o, _, _ in res if test in o]
                cell[(tool, test)] = (med(vals), min(vals), max(vals)) if vals else None
            cell[(tool, "rss")] = med([rss for _, rss, _ in res])
        rows.append((q, t, cell))

def fmt(c):
    return "n/a" if c is None else f"{c[0]:.1f} ({c[1]:.0f}–{c[2]:.0f})"

def ratio(cell, test):
    a, b = cell[("ferrite", test)], cell[("llama", test)]
    return "n/a" if a is None or b is None else f"**{a[0] / b[0]:.2f}**"

gname = {"q4": "SmolLM2 Q4_0 / q4", "q8": "SmolLM2 Q8_0 / q8", "qwen": "Qwen2.5-Coder-1.5B Q4_K_M / same"}
print(f"| quant (llama.cpp / Ferrite) | threads | llama.cpp {pp_name} | Ferrite {pp_name} | ratio {pp_name} "
      f"| llama.cpp {tg_name} | Ferrite {tg_name} | ratio {tg_name} | peak RSS llama.cpp | peak RSS Ferrite |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
for q, t, c in rows:
    print(f"| {gname[q]} | {t} | {fmt(c[('llama', pp_name)])} | {fmt(c[('ferrite', pp_name)])} | {ratio(c, pp_name)} "
          f"| {fmt(c[('llama', tg_name)])} | {fmt(c[('ferrite', tg_name)])} | {ratio(c, tg_name)} "
          f"| {mib(c[('llama', 'rss')]):.0f} MiB | {mib(c[('ferrite', 'rss')]):.0f} MiB |")
print()
print(f"tok/s: median over {rounds} rounds of each call's mean of {reps} repetitions (min–max over rounds in "
      f"parentheses); ratio = Ferrite / llama.cpp. Peak RSS: median over rounds of each process's ru_maxrss. "
      f"Ferrite kernels: {', '.join(sorted(kernels))}.")
print()
print("| file | file bytes | weight bytes | params | bits/weight (weights) |")
print("| --- | ---: | ---: | ---: | ---: |")
for q in quants:
    for tool, path in (("llama", files[q][0]), ("ferrite", files[q][1])):
        size, params = sizes[(tool, q)]
        weights = size if tool == "llama" else weight_bytes(path)
        print(f"| {os.path.basename(path)} | {os.path.getsize(path)} | {weights} | {params} "
              f"| {8 * weights / params:.3f} |")
print()
bw = {t: med([float(open(os.path.join(runs, f"bw-t{t}-r{r}.gbs")).read()) for r in range(1, rounds + 1)])
      for t in threads}
print(f"| model | threads | bytes/token | read bandwidth (probe) | roof {tg_name} | llama.cpp GB/s (share) "
      f"| Ferrite GB/s (share) | goal min(1.25 × llama.cpp, 90 % roof) | Ferrite / goal |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
per_token = {q: decode_bytes(files[q][1]) for q in quants}
for q, t, c in rows:
    b = per_token[q]
    roof = bw[t] * 1e9 / b
    cells = []
    for tool in ("llama", "ferrite"):
        v = c[(tool, tg_name)]
        cells.append("n/a" if v is None else f"{v[0] * b / 1e9:.1f} ({100 * v[0] * b / 1e9 / bw[t]:.0f} %)")
    lv, fv = c[("llama", tg_name)], c[("ferrite", tg_name)]
    goal = None if lv is None else min(1.25 * lv[0], 0.9 * roof)
    print(f"| {gname[q]} | {t} | {b / 1e9:.3f} GB | {bw[t]:.1f} GB/s | {roof:.1f} tok/s | {cells[0]} | {cells[1]} "
          f"| {'n/a' if goal is None else f'{goal:.1f} tok/s'} "
          f"| {'n/a' if goal is None or fv is None else f'**{fv[0] / goal:.2f}**'} |")
print()
print(f"Bandwidth: median over {rounds} rounds of the probe's best of 5 passes (GB = 1e9 bytes); decode GB/s = "
      f"{tg_name} tok/s × bytes/token (the Ferrite file's, for both tools: the same weights; llama.cpp's Q4_K "
      f"rows are 2.7 % smaller, their sub-block scales packed in 6 bits, Ferrite's in bytes).")
print()
print(f"Noise: other processes kept the CPUs {min(loads):.0f}–{max(loads):.0f} % busy (median {med(loads):.0f} %) "
      f"in the 2 s before each call (--idle {idle})"
      + (f"; during the calls they used {min(others):.0f}–{max(others):.0f} % of the CPU time "
         f"(median {med(others):.0f} %)" if others else "") + f". Raw results: {runs}.")
EOF
)
printf '%s\n' "$REPORT"
if [[ -n $OUT ]]; then printf '%s\n' "$REPORT" >"$OUT"; log "report written to $OUT"; fi
