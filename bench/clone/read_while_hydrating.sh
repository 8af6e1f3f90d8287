#!/bin/bash
# Reads of a hydrating clone against reads of its source snapshot, alternating, fio over NBD
# (docs/BENCHMARKS.md §8). Usage: read_while_hydrating.sh AGENT_BIN CLI_BIN
set -e
A=$1 C=$2
D=$(mktemp -d)
$A --data-dir $D --nbd-listen none --grpc-listen none --metrics-listen none --hydration-bytes-per-sec 1048576 --default-volume-size 1073741824 > $D.log 2>&1 &
AP=$!
sleep 2
export MULTISNAP_ENDPOINT=unix:$D/grpc.sock
# 512 MiB of data in the source, then a snapshot
fio --name=fill --ioengine=nbd --uri="nbd+unix:///default?socket=$D/nbd.sock" --rw=write --bs=1M --size=512M --iodepth=8 >/dev/null 2>&1
$C snapshot create default s >/dev/null
$C volume create c --from default@s >/dev/null
run() { fio --name=r --ioengine=nbd --uri="nbd+unix:///$1?socket=$D/nbd.sock" --rw=randread --bs=4k --size=512M --iodepth=32 --runtime=8 --time_based --output-format=json 2>/dev/null | sed -n '/^{/,$p' | python3 -c 'import json,sys; print(round(json.load(sys.stdin)["jobs"][0]["read"]["iops"]))'; }
for i in 1 2 3; do
  s=$(run "default@s"); c=$(run c)
  echo "round $i: snapshot $s IOPS, hydrating clone $c IOPS, ratio $(python3 -c "print(round($c/$s,2))")"
done
$C volume show c | grep "clone hydration"
kill $AP; wait $AP 2>/dev/null || true
rm -rf $D
