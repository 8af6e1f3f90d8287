#!/bin/bash
# In-process export/apply rates and replication between two agents on loopback, side by side
# in one run (docs/BENCHMARKS.md §6, "Compressed streams and the wire path").
#
#   cargo build --release -p multisnap-bench --bin delta_cost
#   cargo build --release -p multisnap-agent -p multisnap-cli
#   bench/replicate_wire.sh [SCRATCH_DIR]      # ~4 min, ~8 GiB of scratch
#
# First `delta_cost --volume-mib 1024` (export and apply in process, plain and zstd); then two
# release agents on 127.0.0.1 (gRPC ports 41051 and 42051), a 2 GiB volume holding 1 GiB of
# random bytes and 512 MiB of repeated text, snapshot s0, and `multisnap replicate` of its full
# stream to a new volume, plain and `--compress zstd`, twice each. For each transfer it prints
# the rate of data and of stream bytes and the CPU seconds of the source agent, the receiving
# agent and the CLI in the middle.
set -euo pipefail
BIN=${BIN:-target/release}
SCRATCH=${1:-$(mktemp -d)}
uptime
"$BIN/delta_cost" --volume-mib 1024 --dir "$SCRATCH"
rm -rf "${SCRATCH:?}"/*
D=$(mktemp -d "$SCRATCH/wire.XXXX")
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
start() { # name grpc-port nbd-port metrics-port
  "$BIN/multisnap-agent" --data-dir "$D/$1" --grpc-listen "127.0.0.1:$2" \
    --nbd-listen "127.0.0.1:$3" --metrics-listen "127.0.0.1:$4" \
    --default-volume-size $((2 << 30)) > "$D/$1.log" 2>&1 &
  echo $! > "$D/$1.pid"
}
start a 41051 41809 41090
start b 42051 42809 42090
trap 'kill $(cat "$D/a.pid") $(cat "$D/b.pid") 2>/dev/null || true' EXIT
sleep 3
MS=("$BIN/multisnap" --endpoint http://127.0.0.1:41051)
head -c $((1 << 30)) /dev/urandom > "$D/img"
yes "2026-12-06T15:00:00Z volume=default state=ok a log line that repeats" \
  | head -c $((512 << 20)) >> "$D/img" || true
nbdcopy "$D/img" nbd://127.0.0.1:41809/default
rm "$D/img"
"${MS[@]}" snapshot create default s0 > /dev/null
uptime
for way in plain zstd plain zstd; do
  extra=()
  [ "$way" = zstd ] && extra=(--compress zstd)
  a0=$(cpu_ticks "$(cat "$D/a.pid")"); b0=$(cpu_ticks "$(cat "$D/b.pid")")
  t0=$(date +%s.%N)
  out=$(/usr/bin/time -f "%U %S" -o "$D/cli.time" "${MS[@]}" --output json replicate default \
        --to http://127.0.0.1:42051 --to-volume "r-$way-$RANDOM" "${extra[@]}")
  t1=$(date +%s.%N)
  a1=$(cpu_ticks "$(cat "$D/a.pid")"); b1=$(cpu_ticks "$(cat "$D/b.pid")")
  bytes=$(echo "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["streamBytes"])')
  python3 -c "t = $t1 - $t0; s = $bytes / 2**20
print(f'replicate full $way: stream {s:.0f} MiB in {t:.2f} s, {1536 / t:.0f} MiB/s of data, {s / t:.0f} MiB/s of stream')"
  echo "  cpu s: source agent $(( (a1 - a0) ))e-2, receiver $(( (b1 - b0) ))e-2, cli (user sys) $(cat "$D/cli.time"); load $(cut -d' ' -f1 /proc/loadavg)"
done
