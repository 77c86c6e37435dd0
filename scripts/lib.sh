# Helpers shared by the scripts in scripts/. Each script sources it first:
#
#   source "$(dirname "$0")/lib.sh"
#
# Messages go to stderr, prefixed with the script's name (`x86-tiers: ...`),
# so that a script's stdout stays what it prints for its caller (a path, a
# table).

# The scripts' folder and the repository root, as absolute paths.
SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
REPO_ROOT=$(cd -- "$SCRIPT_DIR/.." && pwd)

# Where fetched models, built tools and work files go.
CACHE="${FERRITE_CACHE:-$HOME/.cache/ferrite}"

# The name of the script that sourced this file, without `.sh`.
script_name=$(basename "${BASH_SOURCE[1]:-$0}" .sh)

# step TEXT: announces the next stage of a script.
step() { printf '\n==> %s\n' "$*" >&2; }

# log TEXT: a progress or information line.
log() { printf '%s: %s\n' "$script_name" "$*" >&2; }

# die TEXT: reports an error and exits with status 1.
die() { printf '%s: ERROR: %s\n' "$script_name" "$*" >&2; exit 1; }

# has_rust_target TRIPLE: whether rustup has the standard library of TRIPLE.
has_rust_target() { rustup target list --installed 2>/dev/null | grep -qx "$1"; }
