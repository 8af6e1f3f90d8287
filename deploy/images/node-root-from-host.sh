#!/usr/bin/env bash
# Fills DIR with a root filesystem for the CSI image's base (NODE_BASE) made from this machine's
# own tools, with no download: the programs NodeStageVolume and NodeExpandVolume run (mkfs.ext4,
# mkfs.xfs, blkid, mount, umount, nbd-client, resize2fs, xfs_growfs), each at the path it has
# here, with the loader and the libraries `ldd` names, and /etc/mke2fs.conf. It is what the CI
# test imports (`podman import`) to build the csi stage, and what build.sh uses with
# NODE_BASE_FROM=host. The tools and libraries are this machine's (glibc x86_64 Linux), so the
# image is only as portable as this machine's distribution; debootstrap's base is the default.
#
#   bash deploy/images/node-root-from-host.sh DIR
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 DIR" >&2; exit 2; }
root=$1
tools=(mkfs.ext4 mkfs.xfs blkid mount umount nbd-client resize2fs xfs_growfs)

# Copies FILE to the same absolute path under $root, the content of what a symlink names under
# the symlink's own name (mkfs.ext4 is a link to mke2fs, and mke2fs reads its name from argv[0];
# the loader asks for a library by its soname, a link too).
copy_in() {
  mkdir -p "$root$(dirname "$1")"
  cp -L "$1" "$root$1"
}

for tool in "${tools[@]}"; do
  path=$(PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin command -v "$tool") || {
    echo "error: $tool is not installed on this machine (bash .ci/install-deps installs it)" >&2
    exit 1
  }
  copy_in "$path"
  # `ldd` lines: "libx.so => /lib/.../libx.so (0x...)", or "/lib64/ld-linux-x86-64.so.2 (0x...)"
  # for the loader; vdso lines name no file.
  if ldd "$path" | grep -q 'not found'; then
    echo "error: $path needs a library this machine lacks: $(ldd "$path" | grep 'not found')" >&2
    exit 1
  fi
  ldd "$path" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' |
    while read -r lib; do copy_in "$lib"; done
done
copy_in /etc/mke2fs.conf
# Mount points and the directories the tools expect to exist (blkid's cache in /run, mkfs's
# temporary files); the container runtime mounts /proc, /sys and /dev over the first three.
mkdir -p "$root"/{proc,sys,dev,run,tmp}
chmod 1777 "$root/tmp"
