#!/usr/bin/env bash
# Installs nvcc 13.0 from PyPI into a private venv cached under
# ${FERRITE_CACHE:-$HOME/.cache/ferrite}/cuda-venv and prints its bin folder
# (the last line of stdout). A second run only checks and prints.
#
# The whole toolchain is pinned to 13.0: nvcc, the runtime headers, CCCL, the
# NVVM back end and the CRT headers. An unpinned nvvm writes PTX of a newer
# ISA version, which the lent GPUs' CUDA 13.0 driver refuses to load.
#
# Usage:  PATH="$(bash scripts/cuda-toolchain.sh | tail -1):$PATH"
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

VENV="$CACHE/cuda-venv"
PKGS=("nvidia-cuda-nvcc==13.0.*" "nvidia-cuda-runtime==13.0.*" "nvidia-cuda-cccl==13.0.*"
    "nvidia-nvvm==13.0.*" "nvidia-cuda-crt==13.0.*")
STAMP="$VENV/.ferrite-pins"
WANT="${PKGS[*]}"

find_bin() {
    local nvcc
    nvcc=$(find "$VENV" -path '*/nvidia/cu13/bin/nvcc' -type f 2>/dev/null | head -1)
    [ -n "$nvcc" ] && dirname "$nvcc"
}

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$WANT" ] && bin=$(find_bin) && "$bin/nvcc" --version >/dev/null 2>&1; then
    echo "$bin"
    exit 0
fi

mkdir -p "$CACHE"
exec 9>"$CACHE/.cuda-venv.lock"
command -v flock >/dev/null 2>&1 && flock 9
log "installing ${PKGS[*]} into $VENV"
rm -rf "$VENV"
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check "${PKGS[@]}" >&2
bin=$(find_bin) || { log "ERROR: nvcc not found under $VENV after the install"; exit 1; }
"$bin/nvcc" --version >&2
echo "$WANT" >"$STAMP"
echo "$bin"
