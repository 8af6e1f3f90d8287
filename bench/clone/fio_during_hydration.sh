#!/bin/bash
# What a clone's hydration costs another volume's I/O: fio 4 KiB random writes with a flush every
# 32 (iodepth 32, 8 s) on volume `default`, alone and while a clone of a 2 GiB snapshot hydrates
# as fast as it can, alternating, three rounds (docs/BENCHMARKS.md §8).
# Usage: fio_during_hydration.sh AGENT_BIN CLI_BIN
set -e
A=$1 C=$2
D=$(mktemp -d)
$A --data-dir $D --nbd-listen none --grpc-listen none --metrics-listen none > $D.log 2>&1 &
AP=$!
trap 'kill $AP 2>/dev/null; wait $AP 2>/dev/null; rm -rf $D $D.log' EXIT
sleep 2
export MULTISNAP_ENDPOINT=unix:$D/grpc.sock
sock=$D/nbd.sock
$C volume create src --size 2G >/dev/null
fio --name=fill --ioengine=nbd --uri="nbd+unix:///src?socket=$sock" --rw=write --bs=1M --size=2G --iodepth=8 >/dev/null 2>&1
$C snapshot create src s >/dev/null
job() {
  fio --name=j --ioengine=nbd --uri="nbd+unix:///default?socket=$sock" --rw=randwrite --bs=4k \
    --size=256M --iodepth=32 --fsync=32 --runtime=8 --time_based --output-format=json 2>/dev/null |
    sed -n '/^{/,$p' | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["jobs"][0]["write"]["iops"]))'
}
for i in 1 2 3; do
  alone=$(job)
  $C volume create c$i --from src@s >/dev/null
  during=$(job)
  left=$($C volume show c$i | sed -n 's/^clone hydration: *//p')
  echo "round $i: alone $alone IOPS, during hydration $during IOPS, ratio $(python3 -c "print(round($during/$alone,2))"); clone after the job: $left"
  $C volume delete c$i --force >/dev/null
done
