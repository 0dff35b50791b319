#!/usr/bin/env bash
# Build kiln's test guest: bash scripts/build-guest.sh [OUTDIR]   (default: <repo>/build/guest)
# Produces OUTDIR/guest.elf, a freestanding x86-64 PVH ELF (sources: test/guest/, docs: docs/test-guest.md).
# Does nothing when guest.elf is newer than every source file and this script.  Safe to run concurrently
# (flock on OUTDIR/.lock; the ELF is renamed into place).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SRC="$ROOT/test/guest"
OUT="${1:-$ROOT/build/guest}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
ELF="$OUT/guest.elf"

up_to_date() {
  [[ -f "$ELF" ]] || return 1
  [[ -z "$(find "$SRC" "$ROOT/scripts/build-guest.sh" -newer "$ELF" -print -quit)" ]]
}

up_to_date && exit 0

exec 9>"$OUT/.lock"
flock 9
up_to_date && exit 0

CC="${CC:-gcc}"
LD="${LD:-ld}"
CFLAGS=(-std=gnu11 -O2 -g0 -ffreestanding -nostdlib -nostdinc -fno-builtin -fno-pic -fno-pie -static
  -mno-red-zone -mgeneral-regs-only -fno-stack-protector -fno-asynchronous-unwind-tables
  -fno-unwind-tables -fno-tree-loop-distribute-patterns -fno-common -Wall -Wextra -Wno-unused-parameter
  -Werror=implicit-function-declaration -I "$SRC/include")
ASFLAGS=(-fno-pic -fno-pie -I "$SRC/include" -D__ASSEMBLY__)

TMP="$(mktemp -d "$OUT/.build.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT

mapfile -t SOURCES < <(cd "$SRC" && find . -name '*.c' -o -name '*.S' | sed 's|^\./||' | LC_ALL=C sort)
OBJS=()
PIDS=()
for rel in "${SOURCES[@]}"; do
  obj="$TMP/$(echo "$rel" | tr '/' '_').o"
  OBJS+=("$obj")
  case "$rel" in
    *.c) "$CC" "${CFLAGS[@]}" -c "$SRC/$rel" -o "$obj" & ;;
    *.S) "$CC" "${ASFLAGS[@]}" -c "$SRC/$rel" -o "$obj" & ;;
  esac
  PIDS+=($!)
done
fail=0
for pid in "${PIDS[@]}"; do wait "$pid" || fail=1; done
[[ $fail == 0 ]] || { echo "build-guest: compilation failed" >&2; exit 1; }

"$LD" -nostdlib -static -no-pie -z max-page-size=4096 -z noexecstack --no-warn-rwx-segments \
  -T "$SRC/guest.ld" -o "$TMP/guest.elf" "${OBJS[@]}"
mv -f "$TMP/guest.elf" "$ELF"
