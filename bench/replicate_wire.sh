#!/bin/bash
# In-process export/apply rates and replication between two agents on loopback, side by side
# in one run (docs/BENCHMARKS.md §6, "Compressed streams and the wire path").
#
#   cargo build --release -p multisnap-bench --bin delta_cost
#   cargo build --release -p multisnap-agent -p multisnap-cli
#   bench/replicate_wire.sh [SCRATCH_DIR]      # ~5 min, ~8 GiB of scratch
#
# First `delta_cost --volume-mib 1024` (export and apply in process, plain and zstd); then two
# release agents on 127.0.0.1 (gRPC ports 41051 and 42051), a 2 GiB volume holding 1 GiB of
# random bytes and 512 MiB of repeated text, snapshot s0, and its full stream sent to a new
# volume on the second agent, plain and zstd, twice each, two ways:
#   cli     `multisnap replicate`: source agent -> CLI -> receiving agent
#   mirror  `multisnap mirror set`: the source agent sends to the receiving agent itself; timed
#           from the command to the source's "mirror synced" log line
# For each transfer it prints the rate of data and of stream bytes and the CPU seconds of the
# source agent, the receiving agent and (cli) the CLI in the middle. Each target volume is
# deleted after its transfer.
#
# Environment:
#   BIN    directory of multisnap-agent, multisnap and delta_cost (default target/release)
#   BINS   several such directories, taken in turn for every transfer, so a build before a
#          change and one after it are compared in one run (the agents restart on the same data)
#   MODES  "cli mirror" (default), or one of them
#   WAYS   "plain zstd plain zstd" (default)
#   SKIP_DELTA_COST=1  leave out the in-process part
#   PIN=1  one vCPU per side, as two nodes have: delta_cost and the source agent on CPU 0, the
#          receiving agent on CPU 1 (the CLI, in `cli` mode, on either); unpinned, the two
#          agents of a transfer share the vCPUs each in-process phase had to itself
#   WARM_MIB   touch and free this much memory before the in-process part and before every
#              transfer: on a VM that hands free memory back to its host, fresh page cache
#              (a SCRATCH_DIR on tmpfs, to take the disk out of the comparison) otherwise pays
#              a host fault per page (docs/BENCHMARKS.md §5, Method)
set -euo pipefail
BIN=${BIN:-target/release}
BINS=${BINS:-$BIN}
MODES=${MODES:-cli mirror}
WAYS=${WAYS:-plain zstd plain zstd}
SCRATCH=${1:-$(mktemp -d)}
read -r FIRST_BIN _ <<< "$BINS"
pinned() { # cpu: the command prefix that runs on that CPU alone when PIN=1, as PINNED
  PINNED=()
  if [ -n "${PIN:-}" ]; then PINNED=(taskset -c "$1"); fi
}
warm() {
  [ -n "${WARM_MIB:-}" ] || return 0
  python3 -c "import mmap,sys; n=int(sys.argv[1]) << 20; m=mmap.mmap(-1, n)
for at in range(0, n, 1 << 20): m[at:at + (1 << 20)] = b'\1' * (1 << 20)
m.close()" "$WARM_MIB"
}
uptime
if [ -z "${SKIP_DELTA_COST:-}" ]; then
  # Written back first, so the in-process figures do not pay for what ran before (they swung
  # 2-3x with and without on one machine); the transfers below start after a sync too.
  sync
  warm
  pinned 0
  "${PINNED[@]}" "$FIRST_BIN/delta_cost" --volume-mib 1024 --dir "$SCRATCH"
  rm -rf "${SCRATCH:?}"/*
fi
D=$(mktemp -d "$SCRATCH/wire.XXXX")
DATA_MIB=1536
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
minor_faults() { awk '{print $10}' "/proc/$1/stat"; }
mark() { # before|after: CPU ticks and minor page faults of both agents, as a_$1, fa_$1, ...
  local a b
  a=$(cat "$D/a.pid"); b=$(cat "$D/b.pid")
  printf -v "a_$1" %s "$(cpu_ticks "$a")"; printf -v "b_$1" %s "$(cpu_ticks "$b")"
  printf -v "fa_$1" %s "$(minor_faults "$a")"; printf -v "fb_$1" %s "$(minor_faults "$b")"
}
start() { # bin name grpc-port nbd-port metrics-port cpu
  pinned "$6"
  "${PINNED[@]}" "$1/multisnap-agent" --data-dir "$D/$2" --grpc-listen "127.0.0.1:$3" \
    --nbd-listen "127.0.0.1:$4" --metrics-listen "127.0.0.1:$5" \
    --default-volume-size $((2 << 30)) >> "$D/$2.log" 2>&1 &
  echo $! > "$D/$2.pid"
}
stop_agents() {
  for n in a b; do
    if [ -f "$D/$n.pid" ]; then
      kill "$(cat "$D/$n.pid")" 2>/dev/null || true
      while kill -0 "$(cat "$D/$n.pid")" 2>/dev/null; do sleep 0.1; done
      rm "$D/$n.pid"
    fi
  done
}
wait_ready() { # bin port
  for _ in $(seq 100); do
    "$1/multisnap" --endpoint "http://127.0.0.1:$2" volume list > /dev/null 2>&1 && return 0
    sleep 0.1
  done
  echo "agent on port $2 did not start" >&2
  exit 1
}
RUNNING=
use_bin() { # bin: (re)start both agents from it unless they already run it
  [ "$RUNNING" = "$1" ] && return 0
  stop_agents
  start "$1" a 41051 41809 41090 0
  start "$1" b 42051 42809 42090 1
  wait_ready "$1" 41051
  wait_ready "$1" 42051
  RUNNING=$1
}
trap stop_agents EXIT
use_bin "$FIRST_BIN"
head -c $((1 << 30)) /dev/urandom > "$D/img"
yes "2026-12-06T15:00:00Z volume=default state=ok a log line that repeats" \
  | head -c $((512 << 20)) >> "$D/img" || true
nbdcopy "$D/img" nbd://127.0.0.1:41809/default
rm "$D/img"
"$FIRST_BIN/multisnap" --endpoint http://127.0.0.1:41051 snapshot create default s0 > /dev/null
sync
uptime

report() { # bin mode way seconds stream-bytes [cli-cpu]; the agents' figures from `mark`
  python3 -c "t = $4; s = $5 / 2**20
print(f'$2 $3 [$1]: stream {s:.0f} MiB in {t:.2f} s, {$DATA_MIB / t:.0f} MiB/s of data, {s / t:.0f} MiB/s of stream')"
  echo "  cpu s: source agent $((a_after - a_before))e-2, receiver $((b_after - b_before))e-2${6:+, cli (user sys) $6}; load $(cut -d' ' -f1 /proc/loadavg)"
  echo "  page faults: source agent $((fa_after - fa_before)), receiver $((fb_after - fb_before))"
}

cli_transfer() { # bin way target-volume extra...
  local bin=$1 way=$2 to=$3
  shift 3
  mark before
  t0=$(date +%s.%N)
  out=$(/usr/bin/time -f "%U %S" -o "$D/cli.time" "$bin/multisnap" --endpoint http://127.0.0.1:41051 \
        --output json replicate default --to http://127.0.0.1:42051 --to-volume "$to" "$@")
  t1=$(date +%s.%N)
  mark after
  bytes=$(echo "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["streamBytes"])')
  report "$bin" cli "$way" "$t1 - $t0" "$bytes" "$(cat "$D/cli.time")"
}

mirror_transfer() { # bin way target-volume extra...
  local bin=$1 way=$2 to=$3
  shift 3
  local ms=("$bin/multisnap" --endpoint http://127.0.0.1:41051)
  synced=$(grep -c "mirror synced" "$D/a.log" || true)
  mark before
  t0=$(date +%s.%N)
  "${ms[@]}" mirror set default --to http://127.0.0.1:42051 --target-volume "$to" "$@" > /dev/null
  # Polled with grep and bash's own clock only: a python3 started every 50 ms took a fifth of
  # the two vCPUs the agents were measured on.
  local deadline=$((SECONDS + 300))
  until [ "$(grep -c "mirror synced" "$D/a.log" || true)" -gt "$synced" ]; do
    if [ "$SECONDS" -ge "$deadline" ]; then
      echo "the mirror did not sync in 300 s:" >&2
      "${ms[@]}" mirror show default >&2
      exit 1
    fi
    sleep 0.05
  done
  t1=$(date +%s.%N)
  mark after
  line=$(grep "mirror synced" "$D/a.log" | tail -n 1)
  bytes=$(echo "$line" | sed -E 's/.*stream_bytes[=":]+([0-9]+).*/\1/')
  report "$bin" mirror "$way" "$t1 - $t0" "$bytes"
  echo "  agent's own timing: $(echo "$line" | grep -oE 'seconds[=":]+[0-9.]+')"
  "${ms[@]}" mirror clear default > /dev/null
}

for way in $WAYS; do
  extra=()
  [ "$way" = zstd ] && extra=(--compress zstd)
  for mode in $MODES; do
    for bin in $BINS; do
      use_bin "$bin"
      to="r-$mode-$way-$RANDOM"
      sync
      warm
      "${mode}_transfer" "$bin" "$way" "$to" "${extra[@]}"
      "$bin/multisnap" --endpoint http://127.0.0.1:42051 volume delete "$to" --force > /dev/null
    done
  done
done
