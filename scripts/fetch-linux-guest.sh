#!/usr/bin/env bash
# Fetch and prepare the Linux guest kiln boots on real (VT-x / AMD-V) hosts, from Debian packages only.
#
#   bash scripts/fetch-linux-guest.sh [--refresh] [OUTDIR]
#
# OUTDIR defaults to build/linux/ under the repository root (whatever the cwd); an explicit relative OUTDIR is
# taken relative to the cwd. Produces:
#   OUTDIR/vmlinuz            bzImage from linux-image-cloud-amd64 (resolved to linux-image-<release>)
#   OUTDIR/vmlinux            uncompressed ELF extracted from that bzImage, checked for the PVH entry note
#   OUTDIR/initramfs.cpio.gz  static busybox + the kernel's virtio modules + /init (see docs/linux-guest.md)
#   OUTDIR/VERSION            key=value: package versions, PVH entry, paths; written last, it is the cache stamp
# Downloaded .debs are kept in OUTDIR/.cache/debs. Nothing is installed system-wide: apt-get download + dpkg -x.
#
# A run whose outputs are present (and whose VERSION was written by this same script) exits at once without
# touching apt or the network. --refresh (or KILN_LINUX_GUEST_REFRESH=1) re-resolves the kernel metapackage
# and rebuilds; .debs already in the cache are reused when the resolved versions match.
set -euo pipefail

PROG=fetch-linux-guest
say() { printf '%s: %s\n' "$PROG" "$*"; }
warn() { printf '%s: warning: %s\n' "$PROG" "$*" >&2; }
die() { printf '%s: error: %s\n' "$PROG" "$*" >&2; exit 1; }

# ------------------------------------------------------------------------------------------------ arguments
REFRESH=${KILN_LINUX_GUEST_REFRESH:-0}
OUTARG=
while [ $# -gt 0 ]; do
  case "$1" in
    --refresh) REFRESH=1 ;;
    -h | --help)
      sed -n '2,17p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
      exit 0 ;;
    -*) die "unknown option: $1 (usage: $0 [--refresh] [OUTDIR])" ;;
    *) [ -z "$OUTARG" ] || die "more than one OUTDIR given"; OUTARG=$1 ;;
  esac
  shift
done

SCRIPT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")
REPO_ROOT=$(cd "$(dirname "$SCRIPT")/.." && pwd)
OUTDIR=${OUTARG:-$REPO_ROOT/build/linux}
mkdir -p "$OUTDIR" || die "cannot create $OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)

VMLINUZ=$OUTDIR/vmlinuz
VMLINUX=$OUTDIR/vmlinux
INITRAMFS=$OUTDIR/initramfs.cpio.gz
VERSION_FILE=$OUTDIR/VERSION
CACHE=$OUTDIR/.cache
DEBS=$CACHE/debs

# The stamp ties the outputs to this script's content: edit the script and the next run rebuilds.
RECIPE=$(sha256sum "$SCRIPT" | cut -d' ' -f1)

up_to_date() {
  [ "$REFRESH" = 1 ] && return 1
  [ -s "$VMLINUZ" ] && [ -s "$VMLINUX" ] && [ -s "$INITRAMFS" ] && [ -s "$VERSION_FILE" ] || return 1
  grep -qx "recipe=$RECIPE" "$VERSION_FILE"
}

report_cached() {
  local kv
  kv=$(sed -n 's/^kernel_version=//p' "$VERSION_FILE")
  say "up to date in $OUTDIR (kernel $(sed -n 's/^kernel_package=//p' "$VERSION_FILE") $kv, nothing downloaded)"
}

# ------------------------------------------------------------------------------------------------ fast path
if up_to_date; then report_cached; exit 0; fi

if command -v flock >/dev/null 2>&1; then
  exec 9>"$OUTDIR/.lock"
  flock 9
  # Another run may have finished while this one waited for the lock.
  if up_to_date; then report_cached; exit 0; fi
fi

T0=$(date +%s%N)
for tool in apt-get apt-cache dpkg dpkg-deb od gzip sha256sum; do
  command -v "$tool" >/dev/null 2>&1 || die "'$tool' not found (this script needs a Debian/Ubuntu host)"
done

mkdir -p "$DEBS"
WORK=$(mktemp -d "$CACHE/work.XXXXXX")
cleanup() { rm -rf "$WORK"; }
trap cleanup EXIT
rm -f "$VERSION_FILE" # the stamp comes back only when everything below succeeded

# ------------------------------------------------------------------------------------------------ apt helpers
APT_OPTS=(-q)
[ "$(id -u)" = 0 ] && APT_OPTS+=(-o APT::Sandbox::User=root) # root: download into our dir without the _apt notice
UPDATED=0

lists_fresh() {
  # Fresh = Packages indexes exist and apt-get update ran within a day. The index files themselves carry the
  # server's Last-Modified time (weeks old on a stable suite), but every apt-get update, even one where all
  # indexes are unchanged ("Hit:"), touches lists/partial/.
  [ -n "$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' 2>/dev/null | head -n1)" ] &&
    [ -n "$(find /var/lib/apt/lists/partial -maxdepth 0 -mmin -1440 2>/dev/null)" ]
}

apt_update() {
  [ "$UPDATED" = 1 ] && return 1
  UPDATED=1
  if [ "$(id -u)" != 0 ]; then
    warn "apt package lists are missing or stale and this is not root: run 'apt-get update' as root"
    return 1
  fi
  say "apt-get update"
  apt-get "${APT_OPTS[@]}" update >"$WORK/apt-update.log" 2>&1 || {
    cat "$WORK/apt-update.log" >&2
    die "apt-get update failed"
  }
  # apt-get update exits 0 when some indexes could not be fetched; show why, then carry on with what we have.
  grep -E '^(W|E): ' "$WORK/apt-update.log" >&2 || true
}

candidate_field() { # PACKAGE FIELD -> the field of the candidate version, empty if unknown
  apt-cache show --no-all-versions "$1" 2>/dev/null | sed -n "s/^$2: //p" | head -n1
}

deb_in_cache() { # PACKAGE VERSION -> path of a cached .deb with exactly that version, or nothing
  local f
  for f in "$DEBS/$1"_*.deb; do
    [ -f "$f" ] || continue
    if [ "$(dpkg-deb -f "$f" Package 2>/dev/null)" = "$1" ] && [ "$(dpkg-deb -f "$f" Version 2>/dev/null)" = "$2" ]; then
      echo "$f"; return 0
    fi
  done
  return 1
}

download() { # PACKAGE VERSION -> path of the .deb (from the cache, or fetched with apt-get download)
  local pkg=$1 ver=$2 f
  if f=$(deb_in_cache "$pkg" "$ver"); then echo "$f"; return 0; fi
  say "downloading $pkg $ver" >&2
  rm -f "$DEBS/$pkg"_*.deb # superseded versions
  (cd "$DEBS" && apt-get "${APT_OPTS[@]}" download "$pkg=$ver") >"$WORK/apt-download.log" 2>&1 || {
    cat "$WORK/apt-download.log" >&2
    return 1
  }
  deb_in_cache "$pkg" "$ver" || { warn "apt-get download $pkg=$ver left no matching .deb in $DEBS"; return 1; }
}

# ------------------------------------------------------------------------------------------------ resolve
KMETA=linux-image-cloud-amd64
resolve() {
  local deps
  deps=$(candidate_field "$KMETA" Depends)
  KPKG=$(printf '%s\n' "$deps" | tr ',|' '\n\n' | sed 's/^ *//; s/ .*//' | grep -E '^linux-image-[0-9].*-cloud-amd64$' | head -n1 || true)
  [ -n "$KPKG" ] || return 1
  KVER=$(candidate_field "$KPKG" Version)
  BBVER=$(candidate_field busybox-static Version)
  [ -n "$KVER" ] && [ -n "$BBVER" ]
}

lists_fresh || apt_update || true
if ! resolve; then
  apt_update || true
  resolve || die "cannot resolve $KMETA / busybox-static from the apt package lists (is deb.debian.org bookworm in sources.list and 'apt-get update' done?)"
fi
say "kernel: $KMETA -> $KPKG $KVER"
say "busybox: busybox-static $BBVER"

fetch_all() {
  KDEB=$(download "$KPKG" "$KVER") && BBDEB=$(download busybox-static "$BBVER")
}
if ! fetch_all; then
  # The lists may name versions the mirror no longer carries: refresh them once and re-resolve.
  [ "$UPDATED" = 1 ] && die "apt-get download failed right after apt-get update (network or mirror problem?)"
  apt_update || die "apt-get download failed and the package lists could not be refreshed"
  resolve || die "cannot resolve $KMETA after apt-get update"
  say "kernel after apt-get update: $KPKG $KVER"
  fetch_all || die "apt-get download failed (see messages above)"
fi

# ------------------------------------------------------------------------------------------------ unpack
say "unpacking $(basename "$KDEB")"
dpkg -x "$KDEB" "$WORK/kernel" || die "dpkg -x $KDEB failed"
dpkg -x "$BBDEB" "$WORK/busybox" || die "dpkg -x $BBDEB failed"

KREL=${KPKG#linux-image-}
SRC_VMLINUZ=$WORK/kernel/boot/vmlinuz-$KREL
MODDIR=$WORK/kernel/lib/modules/$KREL
[ -f "$SRC_VMLINUZ" ] || die "$KPKG has no /boot/vmlinuz-$KREL"
[ -d "$MODDIR" ] || die "$KPKG has no /lib/modules/$KREL"
BUSYBOX=$WORK/busybox/bin/busybox
[ -x "$BUSYBOX" ] || die "busybox-static has no /bin/busybox"
"$BUSYBOX" true 2>/dev/null || die "cannot run $BUSYBOX on this host"

# ------------------------------------------------------------------------------------------------ byte readers
u8() { od -An -tu1 -j "$2" -N1 "$1" | tr -d ' \n'; }
u16() { od -An -tu2 -j "$2" -N2 "$1" | tr -d ' \n'; }
u32() { od -An -tu4 -j "$2" -N4 "$1" | tr -d ' \n'; }
u64() { od -An -tu8 -j "$2" -N8 "$1" | tr -d ' \n'; }
hexbytes() { od -An -tx1 -j "$2" -N "$3" "$1" | tr -d ' \n'; }

# ------------------------------------------------------------------------------------------------ vmlinuz
[ "$(hexbytes "$SRC_VMLINUZ" $((0x202)) 4)" = 48647253 ] || die "$SRC_VMLINUZ is not a bzImage (no HdrS at 0x202)"
cp "$SRC_VMLINUZ" "$WORK/vmlinuz"

# ------------------------------------------------------------------------------------------------ vmlinux
SETUP_SECTS=$(u8 "$SRC_VMLINUZ" $((0x1f1)))
[ "$SETUP_SECTS" = 0 ] && SETUP_SECTS=4
PAYLOAD_OFFSET=$(u32 "$SRC_VMLINUZ" $((0x248)))
PAYLOAD_LENGTH=$(u32 "$SRC_VMLINUZ" $((0x24c)))
PAYLOAD_START=$(( (SETUP_SECTS + 1) * 512 + PAYLOAD_OFFSET ))
ZSIZE=$(stat -c %s "$SRC_VMLINUZ")
[ "$PAYLOAD_LENGTH" -gt 4 ] && [ $((PAYLOAD_START + PAYLOAD_LENGTH)) -le "$ZSIZE" ] ||
  die "bzImage payload out of range (setup_sects=$SETUP_SECTS offset=$PAYLOAD_OFFSET length=$PAYLOAD_LENGTH size=$ZSIZE)"
payload() { dd if="$SRC_VMLINUZ" iflag=skip_bytes,count_bytes skip="$PAYLOAD_START" count="$1" bs=1M status=none; }

LZ4=
find_lz4() {
  if command -v lz4 >/dev/null 2>&1; then LZ4=$(command -v lz4); return 0; fi
  local ver deb dir=$CACHE/tools/lz4
  if [ -x "$dir/usr/bin/lz4" ] && "$dir/usr/bin/lz4" -V >/dev/null 2>&1; then LZ4=$dir/usr/bin/lz4; return 0; fi
  say "no lz4 on PATH: using Debian's lz4 package unpacked in $dir" >&2
  ver=$(candidate_field lz4 Version)
  [ -n "$ver" ] || die "lz4 is not in the apt package lists"
  deb=$(download lz4 "$ver") || die "apt-get download lz4 failed"
  rm -rf "$dir"; mkdir -p "$dir"
  dpkg -x "$deb" "$dir" || die "dpkg -x $deb failed"
  LZ4=$dir/usr/bin/lz4
  "$LZ4" -V >/dev/null 2>&1 || die "$LZ4 does not run here (is liblz4-1 installed?)"
}

MAGIC=$(hexbytes "$SRC_VMLINUZ" "$PAYLOAD_START" 6)
case "$MAGIC" in
  02214c18*) # LZ4 legacy frame; the kernel build appends the uncompressed size (4 bytes): drop it
    COMP=lz4; find_lz4
    payload $((PAYLOAD_LENGTH - 4)) | "$LZ4" -dc >"$WORK/vmlinux" ;;
  fd377a585a00) # xz (+ 4-byte size)
    COMP=xz; command -v xz >/dev/null || die "the payload is xz-compressed and xz is not installed"
    payload $((PAYLOAD_LENGTH - 4)) | xz -dc >"$WORK/vmlinux" ;;
  28b52ffd*) # zstd (+ 4-byte size)
    COMP=zstd; command -v zstd >/dev/null || die "the payload is zstd-compressed and zstd is not installed"
    payload $((PAYLOAD_LENGTH - 4)) | zstd -dc >"$WORK/vmlinux" ;;
  1f8b*) # gzip (no size appended: gzip's trailer carries it)
    COMP=gzip
    payload "$PAYLOAD_LENGTH" | gzip -dc >"$WORK/vmlinux" ;;
  *) die "unsupported bzImage payload compression (magic $MAGIC at offset $PAYLOAD_START)" ;;
esac || die "decompressing the $COMP payload of $SRC_VMLINUZ failed"

# Check the ELF and find the PVH entry: a PT_NOTE holding a "Xen" note of type 18 (XEN_ELFNOTE_PHYS32_ENTRY).
[ "$(hexbytes "$WORK/vmlinux" 0 6)" = 7f454c460201 ] || die "decompressed payload is not a 64-bit little-endian ELF"
[ "$(u16 "$WORK/vmlinux" 18)" = 62 ] || die "vmlinux is not an x86-64 ELF"
ELF_ENTRY=$(u64 "$WORK/vmlinux" 24)
PHOFF=$(u64 "$WORK/vmlinux" 32)
PHENTSIZE=$(u16 "$WORK/vmlinux" 54)
PHNUM=$(u16 "$WORK/vmlinux" 56)
PVH_ENTRY=
for ((i = 0; i < PHNUM; i++)); do
  ph=$((PHOFF + i * PHENTSIZE))
  [ "$(u32 "$WORK/vmlinux" "$ph")" = 4 ] || continue # PT_NOTE
  off=$(u64 "$WORK/vmlinux" $((ph + 8)))
  size=$(u64 "$WORK/vmlinux" $((ph + 32)))
  read -r -a w <<<"$(od -An -v -tu4 -j "$off" -N "$size" "$WORK/vmlinux" | tr '\n' ' ')"
  k=0
  while [ $((k + 3)) -le ${#w[@]} ]; do
    namesz=${w[k]} descsz=${w[k + 1]} type=${w[k + 2]}
    name_words=$(((namesz + 3) / 4)) desc_words=$(((descsz + 3) / 4))
    d=$((k + 3 + name_words))
    # "Xen\0" is the little-endian word 0x006e6558 = 7234904
    if [ "$type" = 18 ] && [ "$namesz" = 4 ] && [ "${w[k + 3]}" = 7234904 ] && [ "$descsz" -ge 4 ]; then
      lo=${w[d]} hi=0
      [ "$descsz" -ge 8 ] && hi=${w[d + 1]}
      PVH_ENTRY=$(printf '0x%08x' $(((hi << 32) | lo)))
    fi
    k=$((d + desc_words))
  done
done
[ -n "$PVH_ENTRY" ] || die "vmlinux has no XEN_ELFNOTE_PHYS32_ENTRY (type 18) note: no PVH entry"
ELF_ENTRY_HEX=$(printf '0x%x' "$ELF_ENTRY")
say "vmlinux: $COMP payload, ELF entry $ELF_ENTRY_HEX, PVH entry (note 18) $PVH_ENTRY"

# ------------------------------------------------------------------------------------------------ modules
WANTED_MODULES=(virtio_ring virtio virtio_mmio virtio_pci_modern_dev virtio_pci_legacy_dev virtio_pci
  virtio_blk failover net_failover virtio_net)

declare -A MODPATH=() MODDEPS=() STATE=()
while IFS= read -r f; do
  n=$(basename "$f"); n=${n%%.ko*}; n=${n//-/_}
  MODPATH[$n]=$f
done < <(find "$MODDIR/kernel" -name '*.ko' -o -name '*.ko.xz' -o -name '*.ko.zst' -o -name '*.ko.gz')

mod_plain() { # MODULE DEST -> uncompressed .ko at DEST
  local src=${MODPATH[$1]}
  case "$src" in
    *.ko) cp "$src" "$2" ;;
    *.ko.xz) if command -v xz >/dev/null; then xz -dc "$src" >"$2"; else "$BUSYBOX" xz -dc "$src" >"$2"; fi ;;
    *.ko.gz) gzip -dc "$src" >"$2" ;;
    *.ko.zst) command -v zstd >/dev/null || die "$src is zstd-compressed and zstd is not installed"
      zstd -qdc "$src" >"$2" ;;
  esac || die "cannot decompress $src"
}

mod_depends() { # MODULE -> its .modinfo depends= list, space-separated
  local tmp=$WORK/modinfo.ko
  mod_plain "$1" "$tmp"
  tr '\0' '\n' <"$tmp" | sed -n 's/^depends=//p' | head -n1 | tr ',' ' '
}

ORDER=()
visit() { # depth-first topological sort over depends=
  local m=$1 d
  case "${STATE[$m]:-}" in done) return 0 ;; active) die "module dependency cycle at $m" ;; esac
  [ -n "${MODPATH[$m]:-}" ] || die "module $m not found in $KPKG"
  STATE[$m]=active
  MODDEPS[$m]=$(mod_depends "$m")
  for d in ${MODDEPS[$m]}; do visit "${d//-/_}"; done
  STATE[$m]=done
  ORDER+=("$m")
}
for m in "${WANTED_MODULES[@]}"; do visit "$m"; done
say "modules (load order): ${ORDER[*]}"

# ------------------------------------------------------------------------------------------------ initramfs
ROOT=$WORK/initramfs
mkdir -p "$ROOT"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,run,root,etc,mnt} "$ROOT/lib/modules/$KREL"
cp "$BUSYBOX" "$ROOT/bin/busybox"
while IFS= read -r applet; do
  [ -n "$applet" ] && [ "$applet" != bin/busybox ] || continue
  case "$applet" in
    */*/*) target=../../bin/busybox ;; # usr/bin/x, usr/sbin/x
    bin/*) target=busybox ;;
    */*) target=../bin/busybox ;;      # sbin/x
    *) target=bin/busybox ;;           # linuxrc
  esac
  case "$applet" in */*) [ -d "$ROOT/${applet%/*}" ] || mkdir -p "$ROOT/${applet%/*}" ;; esac
  ln -s "$target" "$ROOT/$applet"
done < <("$BUSYBOX" --list-full)
[ -L "$ROOT/bin/sh" ] || die "busybox has no sh applet"
for m in "${ORDER[@]}"; do mod_plain "$m" "$ROOT/lib/modules/$KREL/$m.ko"; done
printf '%s\n' "${ORDER[@]}" >"$ROOT/lib/modules/$KREL/load-order"
# The kernel's built-in initramfs already supplies /dev/console; add the node too when we may (root).
mknod -m 600 "$ROOT/dev/console" c 5 1 2>/dev/null || true

cat >"$ROOT/init" <<EOF
#!/bin/sh
# kiln Linux guest /init, generated by scripts/fetch-linux-guest.sh for $KPKG $KVER
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
echo "KILN-LINUX-INIT start"
mount -t proc proc /proc || echo "KILN-LINUX-INIT: mounting /proc failed"
mount -t sysfs sysfs /sys || echo "KILN-LINUX-INIT: mounting /sys failed"
mount -t devtmpfs devtmpfs /dev || echo "KILN-LINUX-INIT: mounting devtmpfs on /dev failed"
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts 2>/dev/null
moddir=/lib/modules/$KREL
loaded=
for m in \$(cat \$moddir/load-order); do
  if insmod \$moddir/\$m.ko; then loaded="\$loaded \$m"; else echo "KILN-LINUX-INIT: insmod \$m failed (continuing)"; fi
done
echo "KILN-LINUX-INIT modules:\$loaded"
echo "KILN-LINUX-INIT ok"
uname -a
case " \$(cat /proc/cmdline 2>/dev/null) " in
  *" kiln.poweroff "*) echo "KILN-LINUX-INIT poweroff (kiln.poweroff)"; exec poweroff -f ;;
esac
setsid cttyhack sh
echo "KILN-LINUX-INIT shell exited, powering off"
exec poweroff -f
EOF
chmod 755 "$ROOT/init"

# Reproducible archive: fixed mtimes and owners, sorted names, renumbered inodes, no gzip timestamp.
find "$ROOT" -exec touch -h -d @0 {} + 2>/dev/null || true
(cd "$ROOT" && find . -mindepth 1 | LC_ALL=C sort |
  "$BUSYBOX" cpio -o -H newc -R 0:0 --ignore-devno --renumber-inodes) >"$WORK/initramfs.cpio" ||
  die "busybox cpio failed"
gzip -9 -n <"$WORK/initramfs.cpio" >"$WORK/initramfs.cpio.gz" || die "gzip failed"

# ------------------------------------------------------------------------------------------------ install
mv -f "$WORK/vmlinuz" "$VMLINUZ"
mv -f "$WORK/vmlinux" "$VMLINUX"
mv -f "$WORK/initramfs.cpio.gz" "$INITRAMFS"
cat >"$WORK/VERSION" <<EOF
kernel_version=$KVER
kernel_package=$KPKG
kernel_release=$KREL
kernel_metapackage=$KMETA
busybox_version=$BBVER
payload_compression=$COMP
elf_entry=$ELF_ENTRY_HEX
pvh_entry=$PVH_ENTRY
modules=${ORDER[*]}
vmlinuz=$VMLINUZ
vmlinux=$VMLINUX
initramfs=$INITRAMFS
recipe=$RECIPE
EOF
mv -f "$WORK/VERSION" "$VERSION_FILE"

T1=$(date +%s%N)
size() { numfmt --to=iec --suffix=B "$(stat -c %s "$1")" 2>/dev/null || stat -c %s "$1"; }
say "vmlinuz            $(size "$VMLINUZ")  $VMLINUZ"
say "vmlinux            $(size "$VMLINUX")  $VMLINUX (PVH entry $PVH_ENTRY)"
say "initramfs.cpio.gz  $(size "$INITRAMFS")  $INITRAMFS"
say "done: $KPKG $KVER in $(( (T1 - T0) / 1000000 )) ms"
