#!/usr/bin/env bash
# Installs what the project's scripts need, and nothing that is already
# there (a second run installs nothing and takes well under a second).
#
#   bash scripts/setup.sh [NEED...]     (default: test quickstart)
#   bash scripts/setup.sh --list        the needs and what each installs
#
# scripts/test.sh, scripts/quickstart.sh and the comparison scripts call it
# first with just what they need. Rust targets and components are added with
# rustup. Debian packages are installed with apt-get when running as root;
# otherwise, if any is missing, it prints the one `sudo apt-get install ...`
# line to run and exits with status 1 before installing anything.
#
# Needs:
#   lint        clippy; the thumbv7em-none-eabihf and aarch64-unknown-linux-gnu
#               targets (scripts/lint.sh lints the no_std and NEON code too)
#   no-std      the thumbv7em-none-eabihf target
#   models      python3-venv (scripts/fetch-models.sh builds a private venv)
#   c-example   build-essential (cc, make); the aarch64-unknown-linux-gnu target
#   x86-tiers   qemu-user (qemu-x86_64 -cpu Haswell)
#   mcu         qemu-system-arm; the thumbv7em-none-eabihf target
#   aarch64     gcc-aarch64-linux-gnu, libc6-dev-arm64-cross, qemu-user; the
#               aarch64-unknown-linux-gnu target
#   cuda        python3-venv (scripts/cuda-toolchain.sh installs nvcc from pip)
#   miri        the nightly toolchain with miri and rust-src ($MIRI_TOOLCHAIN)
#   llama-cpp   cmake, build-essential, python3-venv (llama.cpp built from
#               source; the models of scripts/fetch-models.sh)
#   test        everything scripts/test.sh runs: lint no-std models c-example
#               x86-tiers mcu aarch64 cuda miri
#   quickstart  models
set -euo pipefail
source "$(dirname "$0")/lib.sh"

MIRI_TOOLCHAIN=${MIRI_TOOLCHAIN:-nightly}

expand() { # NEED: the plain needs it stands for
    case $1 in
        test) echo lint no-std models c-example x86-tiers mcu aarch64 cuda miri ;;
        quickstart) echo models ;;
        lint | no-std | models | c-example | x86-tiers | mcu | aarch64 | cuda | miri | llama-cpp) echo "$1" ;;
        *) die "unknown need '$1' (bash scripts/setup.sh --list)" ;;
    esac
}

if [[ ${1:-} == --list ]]; then
    sed -n '/^# Needs:/,/^#   quickstart/p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
fi

# Everything below reports on stderr: callers read other scripts' stdout.
exec 1>&2

needs=()
for arg in "${@:-test quickstart}"; do
    for word in $arg; do
        # shellcheck disable=SC2207 # the needs are single words
        needs+=($(expand "$word"))
    done
done

packages=()
targets=()
components=()
miri=0
for need in "${needs[@]}"; do
    case $need in
        lint) components+=(clippy); targets+=(thumbv7em-none-eabihf aarch64-unknown-linux-gnu) ;;
        no-std) targets+=(thumbv7em-none-eabihf) ;;
        models | cuda) packages+=(python3-venv) ;;
        c-example) packages+=(build-essential); targets+=(aarch64-unknown-linux-gnu) ;;
        x86-tiers) packages+=(qemu-user) ;;
        mcu) packages+=(qemu-system-arm); targets+=(thumbv7em-none-eabihf) ;;
        aarch64) packages+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user); targets+=(aarch64-unknown-linux-gnu) ;;
        miri) miri=1 ;;
        llama-cpp) packages+=(cmake build-essential python3-venv) ;;
    esac
done

# present PACKAGE: whether what the scripts use of a Debian package is there
# (checked by the commands and files they use, so that a copy installed
# another way counts too).
present() {
    case $1 in
        qemu-user) command -v qemu-x86_64 && command -v qemu-aarch64 ;;
        qemu-system-arm) command -v qemu-system-arm ;;
        gcc-aarch64-linux-gnu) command -v aarch64-linux-gnu-gcc ;;
        libc6-dev-arm64-cross) [[ -e /usr/aarch64-linux-gnu/lib/crt1.o ]] ;;
        # Debian's python3.X-venv adds ensurepip to the standard library; the
        # file check spares starting Python on every run.
        python3-venv) compgen -G '/usr/lib/python3*/ensurepip/__init__.py' || python3 -c 'import venv, ensurepip' ;;
        cmake) command -v cmake ;;
        build-essential) command -v cc && command -v c++ && command -v make ;;
        *) die "no check for package $1" ;;
    esac >/dev/null 2>&1
}

missing_packages=()
for p in "${packages[@]}"; do
    if [[ " ${missing_packages[*]} " != *" $p "* ]] && ! present "$p"; then
        missing_packages+=("$p")
    fi
done

# Refuse before doing anything when packages are missing and cannot be installed.
if ((${#missing_packages[@]})); then
    if [[ $(id -u) != 0 ]]; then
        die "missing Debian packages: ${missing_packages[*]}. Install them with:
    sudo apt-get install -y ${missing_packages[*]}
then run this again."
    fi
    command -v apt-get >/dev/null || die "missing packages ${missing_packages[*]} (named as in Debian), and no apt-get to install them: install them with this system's package manager"
fi

if ((${#targets[@]} + ${#components[@]} + miri)) && ! command -v rustup >/dev/null; then
    die "rustup not found: install Rust with rustup (https://rustup.rs), then run this again"
fi

missing_targets=()
if ((${#targets[@]})); then
    installed=$(rustup target list --installed)
    for t in "${targets[@]}"; do
        if ! grep -qx "$t" <<<"$installed" && [[ " ${missing_targets[*]} " != *" $t "* ]]; then
            missing_targets+=("$t")
        fi
    done
fi

missing_components=()
if ((${#components[@]})); then
    installed=$(rustup component list --installed)
    for c in "${components[@]}"; do
        grep -q "^$c-" <<<"$installed" || missing_components+=("$c")
    done
fi

missing_miri=()
if ((miri)); then
    installed=$(rustup component list --installed --toolchain "$MIRI_TOOLCHAIN" 2>/dev/null || true)
    for c in miri rust-src; do
        grep -q "^$c" <<<"$installed" || missing_miri+=("$c")
    done
fi

if ((${#missing_packages[@]})); then
    step "apt-get install ${missing_packages[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing_packages[@]}"
    for p in "${missing_packages[@]}"; do
        present "$p" || die "$p was installed but what the scripts use of it is still missing"
    done
fi
if ((${#missing_targets[@]})); then
    step "rustup target add ${missing_targets[*]}"
    rustup target add "${missing_targets[@]}"
fi
if ((${#missing_components[@]})); then
    step "rustup component add ${missing_components[*]}"
    rustup component add "${missing_components[@]}"
fi
if ((${#missing_miri[@]})); then
    step "rustup: $MIRI_TOOLCHAIN with ${missing_miri[*]}"
    if rustup toolchain list | grep -q "^$MIRI_TOOLCHAIN"; then
        rustup component add --toolchain "$MIRI_TOOLCHAIN" "${missing_miri[@]}"
    else
        rustup toolchain install "$MIRI_TOOLCHAIN" --profile minimal --component miri,rust-src
    fi
fi
