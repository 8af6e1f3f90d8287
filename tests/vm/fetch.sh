#!/usr/bin/env bash
# Fetches what the kernel VM test boots, from Debian's own packages, downloaded with
# `apt-get download` and unpacked — never installed (qemu-system-x86 would replace the
# machine's newer qemu-utils):
#   - the bookworm-backports kernel (6.12: nbd.ko, ublk_drv.ko and virtio_blk.ko), its modules decompressed;
#   - qemu-system-x86 7.2 with its TCG module and firmware, and any of its libraries the machine lacks;
#   - busybox-static and nbd-client (with its libraries) for the guest.
# Needs no root: apt runs on a private state directory (same mirror as the machine's own
# bookworm source, plus bookworm-backports). Everything lands in the cache directory, keyed
# by package version, so a second run downloads nothing.
# Prints KEY=VALUE lines (VM_QEMU, VM_LIBRARY_PATH, VM_QEMU_MODULE_DIR, VM_FIRMWARE, VM_KERNEL, VM_MODULES,
# VM_KERNEL_VERSION, VM_BUSYBOX, VM_NBD_CLIENT, VM_ROOT) on stdout; progress on stderr.
set -euo pipefail
CACHE=${MULTISNAP_VM_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/multisnap-vm}
APT=$CACHE/apt
mkdir -p "$APT/lists/partial" "$APT/cache/archives/partial" "$CACHE/debs"
log() { echo "vm-fetch: $*" >&2; }
# Changes whenever the set of files unpacked changes (v2: virtio_blk for the power-cut test),
# so a cache made by an older script is unpacked again.
LAYOUT=v2
# One fetch at a time per cache (two test runs may start together).
exec 9>"$CACHE/.lock"
flock 9

# The machine's own Debian mirror, as its apt configuration names it.
mirror=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE) $(IDENTIFIER)' 2>/dev/null |
  awk '$2=="bookworm" && $3=="Packages" {print $1; exit}')
if [ -z "$mirror" ]; then
  mirror=$(grep -rhoE '(https?|file)://[^ ]*debian/?' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null |
    grep -v security | head -n1 || true)
fi
[ -n "$mirror" ] || { log "no bookworm Debian mirror in this machine's apt sources"; exit 3; }
printf 'deb %s bookworm main\ndeb %s bookworm-backports main\n' "$mirror" "$mirror" >"$APT/sources.list"
# Packages a 32-bit foreign architecture would add are not wanted here.
aptopts=(-o "Dir::State::Lists=$APT/lists" -o "Dir::Etc::SourceList=$APT/sources.list"
  -o "Dir::Etc::SourceParts=/nonexistent" -o "Dir::Cache=$APT/cache"
  -o "APT::Architectures::=amd64" -o "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false"
  -o "Debug::NoLocking=1" -o "APT::Sandbox::User=$(id -un)")

update() {
  log "apt-get update (private lists in $APT)"
  apt-get "${aptopts[@]}" update -qq >&2
}
# Refresh the lists once a day (a superseded kernel disappears from the mirror).
if [ -z "$(find "$APT/lists" -maxdepth 1 -name '*backports*Packages*' -mtime -1 2>/dev/null)" ]; then
  update
elif [ -s "$CACHE/vm.env" ] && grep -qx "VM_LAYOUT=$LAYOUT" "$CACHE/vm.env" &&
  [ -e "$(sed -n 's/^VM_ROOT=//p' "$CACHE/vm.env")/.complete" ]; then
  # Lists still fresh and what they name already unpacked: nothing to ask apt.
  cat "$CACHE/vm.env"
  exit 0
fi

# The newest 6.12 kernel image package in bookworm-backports.
kpkg() {
  apt-cache "${aptopts[@]}" show 'linux-image-amd64/bookworm-backports' 2>/dev/null |
    sed -n 's/^Depends: \(linux-image-[^ ,]*\).*/\1/p' | head -n1
}
KPKG=$(kpkg)
[ -n "$KPKG" ] || { update; KPKG=$(kpkg); }
[ -n "$KPKG" ] || { log "bookworm-backports has no linux-image-amd64"; exit 3; }

# Library dependencies of the unpacked tools that this machine does not have installed, direct
# or not: a fresh Debian lacks libelf1, which qemu-system-x86 needs only through another library.
missing_libs() {
  for p in $(apt-cache "${aptopts[@]}" depends --recurse --no-recommends --no-suggests \
    --no-conflicts --no-breaks --no-replaces --no-enhances "$@" 2>/dev/null |
    sed -n 's/^ *Depends: \(lib[^ <]*\)$/\1/p' | sort -u); do
    dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q 'install ok installed' || echo "$p"
  done
}
want=(qemu-system-x86 qemu-system-common qemu-system-data seabios busybox-static nbd-client "$KPKG")
want+=($(missing_libs qemu-system-x86 nbd-client))

# Download what is not cached yet (apt names files NAME_VERSION_ARCH.deb, %-escaped).
debs=()
for p in "${want[@]}"; do
  ver=$(apt-cache "${aptopts[@]}" policy "$p" | sed -n 's/^ *Candidate: //p')
  if [ "$p" = "$KPKG" ] || [ -z "$ver" ] || [ "$ver" = "(none)" ]; then
    ver=$(apt-cache "${aptopts[@]}" show "$p" | sed -n 's/^Version: //p' | head -n1)
  fi
  [ -n "$ver" ] || { log "no version of $p"; exit 3; }
  # The version without its epoch; + and ~ may be escaped in the file name.
  pat=$(echo "${ver#*:}" | sed 's/[+~]/?/g')
  f=$(ls "$CACHE/debs/${p}_"*${pat}_*.deb 2>/dev/null | head -n1 || true)
  if [ -z "$f" ]; then
    log "downloading $p $ver"
    (cd "$CACHE/debs" && apt-get "${aptopts[@]}" download -qq "$p=$ver" >&2)
    f=$(ls -t "$CACHE/debs/${p}_"*.deb | head -n1)
  fi
  debs+=("$f")
done

# Unpack into a directory named after the exact set of packages.
key=$(printf '%s\n' "${debs[@]##*/}" "layout-$LAYOUT" | sort | sha256sum | cut -c1-16)
ROOT=$CACHE/root-$key
if [ ! -e "$ROOT/.complete" ]; then
  log "unpacking ${#debs[@]} packages into $ROOT"
  rm -rf "$ROOT" && mkdir -p "$ROOT"
  for d in "${debs[@]}"; do
    case "${d##*/}" in
      linux-image-*)
        # Only the kernel and the modules the guest loads.
        dpkg-deb --fsys-tarfile "$d" | tar -x -C "$ROOT" --wildcards './boot/vmlinuz-*' \
          '*/drivers/block/nbd.ko*' '*/drivers/block/ublk_drv.ko*' '*/drivers/block/virtio_blk.ko*' \
          '*/fs/ext4/ext4.ko*' \
          '*/fs/jbd2/jbd2.ko*' '*/fs/mbcache.ko*' '*/lib/crc16.ko*' '*/crypto/crc32c_generic.ko*'
        ;;
      *) dpkg-deb -x "$d" "$ROOT" ;;
    esac
  done
  mkdir -p "$ROOT/modules"
  for m in $(find "$ROOT/lib/modules" "$ROOT/usr/lib/modules" -name '*.ko*' 2>/dev/null); do
    b=${m##*/}
    case "$b" in
      *.ko.xz) xz -dc "$m" >"$ROOT/modules/${b%.xz}" ;;
      *.ko.zst) zstd -qdc "$m" >"$ROOT/modules/${b%.zst}" ;;
      *) cp "$m" "$ROOT/modules/$b" ;;
    esac
  done
  touch "$ROOT/.complete"
fi

libpath=$ROOT/usr/lib/x86_64-linux-gnu:$ROOT/lib/x86_64-linux-gnu
kernel=$(ls "$ROOT"/boot/vmlinuz-* | head -n1)
{
  echo "VM_LAYOUT=$LAYOUT"
  echo "VM_ROOT=$ROOT"
  echo "VM_QEMU=$ROOT/usr/bin/qemu-system-x86_64"
  echo "VM_LIBRARY_PATH=$libpath"
  echo "VM_QEMU_MODULE_DIR=$ROOT/usr/lib/x86_64-linux-gnu/qemu"
  echo "VM_FIRMWARE=$ROOT/usr/share/qemu:$ROOT/usr/share/seabios"
  echo "VM_KERNEL=$kernel"
  echo "VM_KERNEL_VERSION=${kernel##*/vmlinuz-}"
  echo "VM_MODULES=$ROOT/modules"
  echo "VM_BUSYBOX=$ROOT/bin/busybox"
  echo "VM_NBD_CLIENT=$ROOT/sbin/nbd-client"
} >"$CACHE/vm.env.tmp"
mv "$CACHE/vm.env.tmp" "$CACHE/vm.env"
cat "$CACHE/vm.env"
