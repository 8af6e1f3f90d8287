#!/usr/bin/env bash
# Builds the kernel VM test's initramfs: busybox-static, the kernel modules, the host's
# mke2fs/e2fsck, nbd-client, the multisnap agent and CLI, each dynamic binary with the shared
# libraries ldd finds for it, and tests/vm/guest-init.sh as /init.
# With CSI_BINARY and CSI_CALL_BINARY, also the CSI driver, its test client and the tools the
# driver's node service runs (util-linux blkid, mkfs.ext4, resize2fs) for msnap.mode=csi.
# Usage: build-initramfs.sh OUT.cpio AGENT_BINARY CLI_BINARY [CSI_BINARY CSI_CALL_BINARY]
# Expects the VM_* variables tests/vm/fetch.sh prints in the environment.
set -euo pipefail
out=$1 agent=$2 cli=$3 csi=${4:-} csi_call=${5:-}
here=$(cd "$(dirname "$0")" && pwd)
: "${VM_BUSYBOX:?run tests/vm/fetch.sh first}" "${VM_MODULES:?}" "${VM_NBD_CLIENT:?}" "${VM_LIBRARY_PATH:?}"
stage=$(mktemp -d "${TMPDIR:-/tmp}/multisnap-initramfs.XXXXXX")
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage"/{bin,usr/bin,usr/sbin,lib/modules,lib64,lib/x86_64-linux-gnu,etc,proc,sys,dev,tmp}

install -m 0755 "$VM_BUSYBOX" "$stage/bin/busybox"
install -m 0755 "$here/guest-init.sh" "$stage/init"
install -m 0644 "$here/guest-powercut.sh" "$stage/powercut.sh"
install -m 0644 "$here/guest-csi.sh" "$stage/csi.sh"
cp "$VM_MODULES"/*.ko "$stage/lib/modules/"
# Debug info is of no use in the guest and would make the image several times larger.
strip -o "$stage/usr/bin/multisnap-agent" "$agent"
strip -o "$stage/usr/bin/multisnap" "$cli"
install -m 0755 "$(command -v mke2fs || echo /sbin/mke2fs)" "$stage/usr/sbin/mke2fs"
install -m 0755 "$(command -v e2fsck || echo /sbin/e2fsck)" "$stage/usr/sbin/e2fsck"
install -m 0755 "$VM_NBD_CLIENT" "$stage/usr/sbin/nbd-client"
[ -e /etc/mke2fs.conf ] && cp /etc/mke2fs.conf "$stage/etc/"
if [ -n "$csi" ]; then
  strip -o "$stage/usr/bin/multisnap-csi" "$csi"
  strip -o "$stage/usr/bin/csi-call" "$csi_call"
  # The driver runs these by name; busybox's blkid does not take util-linux's options.
  ln -s mke2fs "$stage/usr/sbin/mkfs.ext4"
  install -m 0755 "$(command -v blkid || echo /sbin/blkid)" "$stage/usr/sbin/blkid"
  install -m 0755 "$(command -v resize2fs || echo /sbin/resize2fs)" "$stage/usr/sbin/resize2fs"
fi
echo "root:x:0:0:root:/:/bin/sh" >"$stage/etc/passwd"

# Shared libraries, resolved the way the guest's loader will find them.
for b in "$stage/usr/bin/"* "$stage/usr/sbin/"*; do
  LD_LIBRARY_PATH=$VM_LIBRARY_PATH ldd "$b" | awk '/=> \// {print $3} /^\t\/lib64\// {print $1}'
done | sort -u | while read -r lib; do
  case "$lib" in
    /lib64/*) cp -L "$lib" "$stage/lib64/" ;;
    *) cp -L "$lib" "$stage/lib/x86_64-linux-gnu/" ;;
  esac
done
missing=$(for b in "$stage/usr/bin/"* "$stage/usr/sbin/"*; do
  LD_LIBRARY_PATH=$VM_LIBRARY_PATH ldd "$b" | grep 'not found' || true; done)
[ -z "$missing" ] || { echo "build-initramfs: missing libraries: $missing" >&2; exit 1; }

(cd "$stage" && find . -mindepth 1 | "$VM_BUSYBOX" cpio -o -H newc 2>/dev/null) >"$out.tmp"
mv "$out.tmp" "$out"
echo "build-initramfs: $out ($(du -h "$out" | cut -f1))" >&2
