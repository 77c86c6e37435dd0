#!/usr/bin/env bash
# The Cortex-M4F example (examples/mcu) end to end:
#
# 1. builds the host CLI and converts a tiny fixture to q8 (target/mcu/model.frt);
# 2. builds the no_std binary for thumbv7em-none-eabihf with that file embedded;
# 3. runs it under qemu-system-arm (board mps2-an386) and reads its report;
# 4. runs the host `ferrite run` on the same file with the same prompt, context
#    and KV type, and fails unless the greedy ids are identical (it also
#    compares the bits of every logits row and says where they first differ);
# 5. prints the binary's flash and RAM use.
#
# Needs the thumbv7em-none-eabihf target and qemu-system-arm, which
# `scripts/setup.sh mcu` installs (run first), and python3.
#
# Environment:
#   FIXTURE=DIR    HF folder to convert (default tests/fixtures/tiny/llama-gqa)
#   MCU_DEFMT=1    build with the `defmt` feature and decode its output with
#                  defmt-print (cargo install defmt-print)
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# Binaries are looked up under ./target: a CARGO_TARGET_DIR elsewhere would hide them.
unset CARGO_TARGET_DIR
cd "$(dirname "$0")/.."
root=$PWD
out=$root/target/mcu
fixture=${FIXTURE:-tests/fixtures/tiny/llama-gqa}
elf=$out/thumbv7em-none-eabihf/release/ferrite-mcu-example

bash scripts/setup.sh mcu
command -v python3 >/dev/null || die "python3 not found"
features=()
if [[ ${MCU_DEFMT:-0} == 1 ]]; then
    command -v defmt-print >/dev/null || die "MCU_DEFMT=1 needs defmt-print (cargo install defmt-print)"
    features=(--features defmt)
fi
mkdir -p "$out"

step "host CLI (cargo build --release)"
cargo build --release --bin ferrite
ferrite=$root/target/release/ferrite

step "convert $fixture to q8"
"$ferrite" convert "$fixture" -o "$out/model.frt" --weights q8 --quiet
ls -l "$out/model.frt" >&2

step "build examples/mcu for thumbv7em-none-eabihf ${features[*]}"
# cargo reads .cargo/config.toml (target, linker scripts, runner) from the
# current directory.
(cd examples/mcu && FERRITE_MCU_MODEL="$out/model.frt" cargo build --release "${features[@]}")

step "run under qemu-system-arm -M mps2-an386"
qemu=(timeout 60 qemu-system-arm -M mps2-an386 -nographic
      -semihosting-config enable=on,target=native -kernel "$elf")
started=$(date +%s.%N)
set +e
if [[ ${MCU_DEFMT:-0} == 1 ]]; then
    "${qemu[@]}" 2>"$out/qemu.stderr" | defmt-print -e "$elf" --log-format '{L} {s}' >"$out/report.txt"
    rc=${PIPESTATUS[0]}
    # Report lines come through defmt::println (no level): keep them bare.
    sed -i -E 's/^ +//' "$out/report.txt"
else
    "${qemu[@]}" >"$out/report.txt" 2>"$out/qemu.stderr"
    rc=$?
fi
set -e
elapsed=$(python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.2f}')" "$started" "$(date +%s.%N)")
cat "$out/report.txt"
cat "$out/qemu.stderr" >&2
case $rc in
    0) echo "(qemu: exit 0 in ${elapsed} s)" >&2 ;;
    124) die "qemu timed out after 60 s (a fault without a semihosting exit?)" ;;
    *) die "the MCU binary failed (qemu exit $rc)" ;;
esac

field() { sed -n "s/^$1: //p" "$out/report.txt" | tail -1; }
prompt=$(field prompt)
mcu_ids=$(field ids)
config=$(field config)
[[ -n $prompt && -n $mcu_ids && -n $config ]] || die "incomplete report in $out/report.txt"
ctx=$(sed -E 's/.*max_ctx=([0-9]+).*/\1/' <<<"$config")
kv=$(sed -E 's/.*kv=([a-z0-9]+).*/\1/' <<<"$config")
n=$(tr ',' '\n' <<<"$mcu_ids" | wc -l)

step "host: FERRITE_KERNELS=reference ferrite run --prompt-ids $prompt -n $n --ctx $ctx --kv $kv --temp 0"
# The device runs the scalar reference kernels; so does the host here, and
# then every logits row must be bit-identical.
host=(env FERRITE_KERNELS=reference "$ferrite" run -m "$out/model.frt" --prompt-ids "$prompt" -n "$n" --temp 0 --ignore-eos
      --ctx "$ctx" --kv "$kv" --threads 1 --output ids)
host_ids=$("${host[@]}" 2>"$out/host.log") || { cat "$out/host.log" >&2; die "the host run failed"; }
"${host[@]}" --dump-logits "$out/host-logits.npy" >/dev/null 2>>"$out/host.log" \
    || { cat "$out/host.log" >&2; die "the host run (--dump-logits) failed"; }

step "compare"
python3 - "$out/report.txt" "$out/host-logits.npy" "$host_ids" <<'EOF'
import ast, struct, sys

report_path, npy_path, host_line = sys.argv[1:4]
report = {}
for line in open(report_path):
    key, sep, value = line.rstrip("\n").partition(": ")
    if sep:
        report[key] = value
prompt = [int(v) for v in report["prompt"].split(",")]
mcu = [int(v) for v in report["ids"].split(",")]
host = [int(v) for v in host_line.strip().split(",")]
margins = [float(v) for v in report["margins"].split(",")]
mcu_hashes = [int(v, 16) for v in report["logits-fnv"].split(",")]

# The host's logits: prompt rows, then one per id fed back ([P + n - 1, vocab] f32).
blob = open(npy_path, "rb").read()
header_len = struct.unpack("<H", blob[8:10])[0]
rows, vocab = ast.literal_eval(blob[10 : 10 + header_len].decode())["shape"]
data = blob[10 + header_len :]
def row(r):
    return data[r * vocab * 4 : (r + 1) * vocab * 4]
def fnv1a(bs):
    h = 0x811C9DC5
    for b in bs:
        h = ((h ^ b) * 0x01000193) & 0xFFFFFFFF
    return h
def margin(r):
    vals = sorted(struct.unpack(f"<{vocab}f", row(r)), reverse=True)
    return vals[0] - vals[1]
# The logits each greedy choice was made from: last prompt row, then each step.
host_rows = list(range(len(prompt) - 1, rows))
host_hashes = [fnv1a(row(r)) for r in host_rows]

print("mcu  ids:", ",".join(map(str, mcu)))
print("host ids:", ",".join(map(str, host)))
ok = mcu == host
if ok:
    print(f"greedy ids identical ({len(mcu)} tokens after a {len(prompt)}-token prompt); "
          f"smallest top-1/top-2 margin {min(margins):.4f}")
else:
    step = next((i for i, (a, b) in enumerate(zip(mcu, host)) if a != b), min(len(mcu), len(host)))
    print(f"MISMATCH: greedy ids differ first at step {step} "
          f"(mcu {mcu[step] if step < len(mcu) else '-'}, host {host[step] if step < len(host) else '-'})")
    if step < len(margins):
        print(f"  logit margin at that step: mcu {margins[step]:.6f}"
              + (f", host {margin(host_rows[step]):.6f}" if step < len(host_rows) else ""))
diff = next((i for i, (a, b) in enumerate(zip(mcu_hashes, host_hashes)) if a != b), None)
if diff is None and len(mcu_hashes) == len(host_hashes):
    print(f"logits bit-identical on all {len(mcu_hashes)} rows (FNV-1a of the f32 bits)")
else:
    ok = False
    if diff is None:
        print(f"MISMATCH: {len(mcu_hashes)} logits rows on the device, {len(host_hashes)} on the host")
    else:
        print(f"MISMATCH: logits rows differ in their bits from step {diff} "
              f"(margin there: mcu {margins[diff]:.6f}, host {margin(host_rows[diff]):.6f})")
sys.exit(0 if ok else 1)
EOF

step "size"
llvm_size=$(command -v llvm-size || ls "$(rustc --print sysroot)"/lib/rustlib/*/bin/llvm-size 2>/dev/null | head -1 || true)
if [[ -n $llvm_size ]]; then
    "$llvm_size" -A "$elf" | grep -vE '^\.(debug|comment|ARM)'
fi
python3 - "$elf" "$out/model.frt" "$out/report.txt" <<'EOF'
import os, re, struct, sys

elf_path, model_path, report_path = sys.argv[1:4]
elf = open(elf_path, "rb").read()
assert elf[:4] == b"\x7fELF" and elf[4] == 1 and elf[5] == 1, "expected a 32-bit little-endian ELF"
shoff, = struct.unpack_from("<I", elf, 0x20)
shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x2E)
sections = [struct.unpack_from("<IIIIII", elf, shoff + i * shentsize) for i in range(shnum)]
strtab_off = sections[shstrndx][4]
def name(s):
    start = strtab_off + s[0]
    return elf[start : elf.index(b"\0", start)].decode()
SHF_ALLOC, SHT_NOBITS, RAM = 0x2, 8, 0x2000_0000
flash = ram = 0
for s in sections:
    _, kind, flags, addr, _, size = s
    if not flags & SHF_ALLOC or size == 0:
        continue
    if kind != SHT_NOBITS:
        flash += size            # .vector_table, .text, .rodata, .data's image
    if addr >= RAM:
        ram += size              # .data, .bss, .uninit
report = open(report_path).read()
arena = re.search(r"arena (\d+)", report)
stack = re.search(r"stack: (\d+)", report)
model = os.path.getsize(model_path)
print(f"flash: {flash} bytes ({flash / 1024:.1f} KiB), of which the model {model} ({model / 1024:.1f} KiB)"
      f" and code + other data {flash - model} ({(flash - model) / 1024:.1f} KiB)")
print(f"RAM:   {ram} bytes static ({ram / 1024:.1f} KiB), of which the arena {arena.group(1) if arena else '?'}"
      f"; stack peak {stack.group(1) if stack else '?'} bytes")
EOF
