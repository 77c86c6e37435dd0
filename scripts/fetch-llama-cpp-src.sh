#!/usr/bin/env bash
# Fetch llama.cpp's sources as vendored in the PyPI sdist of
# llama-cpp-python==0.3.36 (the only route to them here: PyPI).
#
# Usage:  src=$(bash scripts/fetch-llama-cpp-src.sh | tail -1)
#
# Lands under ${FERRITE_CACHE:-$HOME/.cache/ferrite}/llama-cpp-python-0.3.36/;
# the last line of stdout is the llama.cpp source folder (vendor/llama.cpp).
# Used by the tokenizer test vectors (models/ggml-vocab-*.gguf + .inp/.out)
# and by scripts/build-llama-cpp.sh. A second run only prints the path.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

SPEC="llama-cpp-python==0.3.36"
DEST="$CACHE/llama-cpp-python-0.3.36"
SRC="$DEST/vendor/llama.cpp"
STAMP="$DEST/.extracted"
PYTHON="${PYTHON:-python3}"

mkdir -p "$CACHE"
exec 9>"$CACHE/.llama-cpp-src.lock"
command -v flock >/dev/null 2>&1 && flock 9

if [[ ! -f "$STAMP" ]]; then
    dl="$CACHE/sdists"
    mkdir -p "$dl"
    tarball="$dl/llama_cpp_python-0.3.36.tar.gz"
    if [[ ! -f "$tarball" ]]; then
        # `pip download --no-binary :all:` would build the sdist's build
        # dependencies (cmake from source) just to read its metadata, so the
        # file is taken from PyPI's simple index directly and its sha256
        # (the index's own) checked.
        log "downloading the $SPEC sdist from PyPI"
        "$PYTHON" - "$tarball" <<'PY' || die "download of $SPEC failed"
import hashlib, re, sys, urllib.request
want = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
page = urllib.request.urlopen("https://pypi.org/simple/llama-cpp-python/", timeout=120).read().decode()
urls = [u for u in re.findall(r'href="([^"]+)"', page) if "llama_cpp_python-0.3.36.tar.gz" in u]
if not urls:
    sys.exit("no llama_cpp_python-0.3.36.tar.gz on the index")
url = urls[0].split("#")[0]
data = urllib.request.urlopen(url, timeout=600).read()
got = hashlib.sha256(data).hexdigest()
if got != want:
    sys.exit(f"sha256 mismatch: {got} != {want}")
open(sys.argv[1] + ".part", "wb").write(data)
PY
        mv "$tarball.part" "$tarball"
    fi
    rm -rf "$DEST.tmp"
    mkdir -p "$DEST.tmp"
    tar -xzf "$tarball" -C "$DEST.tmp" --strip-components=1 || die "cannot extract $tarball"
    [[ -d "$DEST.tmp/vendor/llama.cpp/models" ]] || die "$tarball has no vendor/llama.cpp/models"
    rm -rf "$DEST"
    mv "$DEST.tmp" "$DEST"
    echo "$SPEC" >"$STAMP"
    log "extracted to $DEST"
fi
[[ -d "$SRC/models" ]] || die "$SRC is incomplete; delete $DEST and rerun"
echo "$SRC"
