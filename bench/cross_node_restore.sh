#!/bin/bash
# Restore on another node through the CSI drivers (docs/BENCHMARKS.md §6, README "Restoring on
# another node"): two release agents on 127.0.0.1 (A's gRPC on 50061 with mutual TLS), a
# multisnap-csi driver each (nodes `localhost` and `node-b`), a 1 GiB volume of random data on A
# snapshotted through A's driver, restored by B's driver (CreateVolume retried once a second as
# the external-provisioner does, printing each ABORTED progress answer), compared by sha256 of
# both NBD exports; then 10 MiB rewritten on A, a second snapshot, its restore on B. Prints B's
# driver's log lines for the pulls (bytes, seconds, MiB/s).
#
#   cargo build --release -p multisnap-agent -p multisnap-csi
#   bench/cross_node_restore.sh [SCRATCH_DIR]     # ~1 min, ~4 GiB of scratch
#   PEER_COMPRESSION=none bench/cross_node_restore.sh   # the stream without zstd
set -euo pipefail
BIN=${BIN:-target/release}
REPO=$(cd "$(dirname "$0")/.." && pwd)
D=$(mktemp -d "${1:-/tmp}/xnode.XXXX")
G="$REPO/.venv/bin/python $REPO/tests/grpc/grpcurl.py"
PIDS=()
trap 'kill "${PIDS[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$D"' EXIT
uptime
sh "$REPO/tests/tls/make-pki.sh" "$D/pki" >/dev/null 2>&1
"$BIN/multisnap-agent" --data-dir "$D/a" --grpc-listen 127.0.0.1:50061 \
  --nbd-listen 127.0.0.1:10861 --metrics-listen 127.0.0.1:9561 \
  --grpc-tls-cert "$D/pki/server-cert.pem" --grpc-tls-key "$D/pki/server-key.pem" \
  --grpc-tls-client-ca "$D/pki/ca-cert.pem" 2>"$D/agent-a.log" &
PIDS+=($!)
"$BIN/multisnap-agent" --data-dir "$D/b" --grpc-listen 127.0.0.1:50062 \
  --nbd-listen 127.0.0.1:10862 --metrics-listen 127.0.0.1:9562 2>"$D/agent-b.log" &
PIDS+=($!)
until [ -S "$D/a/grpc.sock" ] && [ -S "$D/b/grpc.sock" ]; do sleep 0.2; done
RUST_LOG=info "$BIN/multisnap-csi" --csi-socket "$D/a.sock" --agent-socket "$D/a/grpc.sock" \
  --nbd-socket "$D/a/nbd.sock" --node-name localhost 2>"$D/csi-a.log" &
PIDS+=($!)
RUST_LOG=info "$BIN/multisnap-csi" --csi-socket "$D/b.sock" --agent-socket "$D/b/grpc.sock" \
  --nbd-socket "$D/b/nbd.sock" --node-name node-b --peer-agent-endpoint 'https://{node}:50061' \
  --peer-tls-ca "$D/pki/ca-cert.pem" --peer-tls-cert "$D/pki/client-cert.pem" \
  --peer-tls-key "$D/pki/client-key.pem" 2>"$D/csi-b.log" &
PIDS+=($!)
until [ -S "$D/a.sock" ] && [ -S "$D/b.sock" ]; do sleep 0.2; done
CAP='"volume_capabilities":[{"block":{},"access_mode":{"mode":"SINGLE_NODE_WRITER"}}]'
field() { python3 -c "import json,sys; print(json.load(sys.stdin)$1)"; }
SRC=$($G "unix:$D/a.sock" call csi.v1.Controller/CreateVolume \
  "{\"name\":\"pvc-db\",\"capacity_range\":{\"required_bytes\":1073741824},$CAP}" | field '["volume"]["volume_id"]')
head -c 1G /dev/urandom > "$D/random.img"
nbdcopy "$D/random.img" "nbd+unix:///${SRC#*/}?socket=$D/a/nbd.sock"
rm "$D/random.img"
snapshot() { # NAME
  $G "unix:$D/a.sock" call csi.v1.Controller/CreateSnapshot \
    "{\"name\":\"$1\",\"source_volume_id\":\"$SRC\"}" | field '["snapshot"]["snapshot_id"]'
}
restore() { # NAME SNAPSHOT_ID; prints the answers, then the volume id last
  local out
  while true; do
    out=$($G "unix:$D/b.sock" call csi.v1.Controller/CreateVolume \
      "{\"name\":\"$1\",$CAP,\"volume_content_source\":{\"snapshot\":{\"snapshot_id\":\"$2\"}}}" || true)
    echo "$out" >&2
    echo "$out" | grep -q '"ABORTED"' || break
    sleep 1
  done
  echo "$out" | field '["volume"]["volume_id"]'
}
SNAP=$(snapshot snap-mon)
VB=$(restore pvc-db-copy "$SNAP")
echo "sha256 of A's snapshot and of B's restored volume:"
nbdcopy "nbd+unix:///${SNAP#*/}?socket=$D/a/nbd.sock" - | sha256sum
nbdcopy "nbd+unix:///${VB#*/}?socket=$D/b/nbd.sock" - | sha256sum
head -c 10M /dev/urandom > "$D/change.img"
qemu-io -f raw -c "write -s $D/change.img 536870912 10485760" \
  "nbd+unix:///${SRC#*/}?socket=$D/a/nbd.sock" >/dev/null
SNAP2=$(snapshot snap-tue)
restore pvc-db-tue "$SNAP2" >/dev/null
echo "B's driver:"
grep -E "pulling|pulled|replica snapshot|WARN" "$D/csi-b.log"
