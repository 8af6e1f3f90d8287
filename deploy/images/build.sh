#!/usr/bin/env bash
# Builds multisnap's container images from this checkout and saves each as an OCI archive:
#   localhost/multisnap-agent:<version>  FROM scratch: the static agent binary alone
#   localhost/multisnap-csi:<version>    a minimal Debian root filesystem with mkfs.ext4,
#                                        mkfs.xfs, mount, blkid and nbd-client, plus the static
#                                        CSI driver; built only when the workspace has the CSI
#                                        driver (services/multisnap-csi)
# <version> is the workspace version (Cargo.toml), the tag the Helm chart names by default.
#
#   bash deploy/images/build.sh            # as root (podman, debootstrap); x86_64 only
#
# Environment:
#   CONTAINER_TOOL     podman (default) or docker: the same Containerfile, classic builder
#   MULTISNAP_COMMIT   the commit the binaries report (default: git HEAD of this checkout)
#   STATIC_TARGET_DIR  cargo target dir of the static build (default: target/static), apart
#                      from the usual one because its RUSTFLAGS differ
#   AGENT_BIN          use this static agent binary instead of building one
#   CSI_BIN            the same for the CSI driver (builds the CSI image with it)
#   IMAGES_OUT         where the OCI archives go (default: target/images)
#   DEBIAN_MIRROR      debootstrap's mirror (default: http://deb.debian.org/debian)
#   NODE_BASE_FROM     debootstrap (default): the CSI image's base is Debian bookworm's minimal
#                      root (about 100 MB downloaded); host: made from this machine's own
#                      mkfs.ext4, mkfs.xfs, blkid, mount, umount, nbd-client, resize2fs and
#                      xfs_growfs and the libraries they load (deploy/images/node-root-from-host.sh,
#                      no download; what CI tests), so only as portable as this machine's system
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
tool=${CONTAINER_TOOL:-podman}
version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' "$root/Cargo.toml")
commit=${MULTISNAP_COMMIT:-$(git -C "$root" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)}
out=${IMAGES_OUT:-$root/target/images}
node_base_from=${NODE_BASE_FROM:-debootstrap}
case $node_base_from in
  debootstrap) node_base=localhost/multisnap-node-base:bookworm ;;
  host) node_base=localhost/multisnap-node-base:host ;;
  *) echo "error: NODE_BASE_FROM is debootstrap or host, not $node_base_from" >&2; exit 2 ;;
esac
has_csi=false
[ -f "$root/services/multisnap-csi/Cargo.toml" ] && has_csi=true

# A glibc binary linked statically (crt-static): the agent image has no libc to load.
static_build() {
  local packages=(-p multisnap-agent)
  $has_csi && packages+=(-p multisnap-csi)
  echo "building static binaries (${packages[*]}) at commit $commit" >&2
  (cd "$root" && MULTISNAP_COMMIT=$commit CARGO_TARGET_DIR=${STATIC_TARGET_DIR:-$root/target/static} \
    RUSTFLAGS="-C target-feature=+crt-static" \
    cargo build --release --locked --target x86_64-unknown-linux-gnu "${packages[@]}")
}

# Refuses a binary that needs a dynamic loader: in a FROM scratch image it would fail with a
# bare "no such file or directory".
require_static() {
  if readelf -d "$1" 2>/dev/null | grep -q '(NEEDED)'; then
    echo "error: $1 is dynamically linked; build it with RUSTFLAGS=\"-C target-feature=+crt-static\"" >&2
    exit 1
  fi
}

# Debian bookworm's minimal variant plus the tools NodeStageVolume runs, or those tools copied
# from this machine (NODE_BASE_FROM=host, made afresh each time), imported as an image.
node_base_image() {
  if [ "$node_base_from" = debootstrap ] && $tool image inspect "$node_base" >/dev/null 2>&1; then
    return
  fi
  local rootfs
  rootfs=$(mktemp -d)
  if [ "$node_base_from" = host ]; then
    bash "$here/node-root-from-host.sh" "$rootfs"
  else
    debootstrap --variant=minbase --include=e2fsprogs,xfsprogs,nbd-client,mount,util-linux \
      bookworm "$rootfs" "${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  fi
  tar -C "$rootfs" -c . | $tool import - "$node_base" >/dev/null
  rm -rf "$rootfs"
}

build_stage() { # build_stage STAGE IMAGE CONTEXT
  $tool build -q -f "$here/Containerfile" --target "$1" \
    --build-arg NODE_BASE="$node_base" \
    --label org.opencontainers.image.version="$version" \
    --label org.opencontainers.image.revision="$commit" \
    -t "$2" "$3" >/dev/null
  mkdir -p "$out"
  local archive=$out/${2##*/}
  archive=${archive/:/-}
  if [ "$tool" = podman ]; then
    archive=$archive.oci.tar
    rm -f "$archive"
    $tool save -q --format oci-archive -o "$archive" "$2"
  else
    # Docker 25 and later write an OCI image layout (oci-layout, index.json) in it; older
    # daemons, and podman's Docker API, a docker-archive.
    archive=$archive.tar
    rm -f "$archive"
    $tool save -o "$archive" "$2"
  fi
  echo "$2 ($(du -h "$archive" | cut -f1) archive: $archive)"
}

context=$(mktemp -d)
trap 'rm -rf "$context"' EXIT
agent=$context/agent/usr/local/bin/multisnap-agent
csi=$context/csi/usr/local/bin/multisnap-csi
mkdir -p "$(dirname "$agent")" "$(dirname "$csi")"
if [ -n "${AGENT_BIN:-}" ]; then
  cp "$AGENT_BIN" "$agent"
  [ -z "${CSI_BIN:-}" ] || cp "$CSI_BIN" "$csi"
else
  static_build
  bin_dir=${STATIC_TARGET_DIR:-$root/target/static}/x86_64-unknown-linux-gnu/release
  cp "$bin_dir/multisnap-agent" "$agent"
  $has_csi && cp "$bin_dir/multisnap-csi" "$csi"
fi
# Debug line tables stay out of the images (the release profile keeps them for profiling).
require_static "$agent"
strip --strip-debug "$agent"
build_stage agent "localhost/multisnap-agent:$version" "$context"
if [ -e "$csi" ]; then
  require_static "$csi"
  strip --strip-debug "$csi"
  node_base_image
  build_stage csi "localhost/multisnap-csi:$version" "$context"
else
  echo "multisnap-csi: not built (no CSI driver binary: no services/multisnap-csi in this workspace, or AGENT_BIN without CSI_BIN)" >&2
fi
