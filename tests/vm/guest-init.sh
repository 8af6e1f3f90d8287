#!/bin/busybox sh
# /init of the kernel VM test's initramfs (tests/kernel_vm.rs builds it; see tests/vm/README.md).
# Runs the multisnap agent inside the guest and drives it the way a host would: the kernel's
# own block drivers (nbd, ublk) as the client, ext4 on top, the `multisnap` CLI for snapshots.
# Reports on the serial console, one line per step:
#   VMTEST ok STEP 1234ms | VMTEST FAIL STEP ... | VMTEST SKIP FRONTEND: why | VMTEST PASS
# Real tools are called by full path: busybox's shell would otherwise run its own applets.
/bin/busybox --install -s /bin
export PATH=/bin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /tmp /data /mnt/origin /mnt/snap /run/ublksrvd
mount -t tmpfs tmp /tmp
MODE=$(sed -n 's/.*msnap.mode=\([^ ]*\).*/\1/p' /proc/cmdline)
# The agent's data directory: the volumes' origin and store files live in guest memory (the
# power-cut modes put it on a virtio disk instead).
[ -n "$MODE" ] || mount -t tmpfs -o size=1800m data /data
ip link set lo up
# Keep kernel messages off the console (the test reads it); dmesg is printed where useful.
dmesg -n 1

MKE2FS=/usr/sbin/mke2fs
E2FSCK=/usr/sbin/e2fsck
NBD_CLIENT=/usr/sbin/nbd-client
AGENT=/usr/bin/multisnap-agent
CLI=/usr/bin/multisnap
export MULTISNAP_ENDPOINT=unix:/data/grpc.sock
FRONTENDS=$(sed -n 's/.*msnap.frontends=\([^ ]*\).*/\1/p' /proc/cmdline | tr , ' ')
[ -n "$FRONTENDS" ] || FRONTENDS=nbd
AGENT_PID=

now_ms() { awk '{ printf "%d", $1 * 1000 }' /proc/uptime; }

finish() {
  if [ "$1" = 0 ]; then echo "VMTEST PASS"; else
    echo "--- agent log (tail)"; tail -n 40 /tmp/agent.log 2>/dev/null
    echo "--- dmesg (tail)"; dmesg | tail -n 40
    echo "VMTEST FAIL"
  fi
  # Only the agent's data directory is synced, never every filesystem: a device left dead
  # by a failed step would hold a global sync (and so the power-off) forever.
  sync -f /data
  poweroff -f -n
}

# What every task waits on, for a step that hangs: user-space threads of the agent (its
# threads' kernel stacks say whether they wait on a lock, the store's files or the ublk
# driver), tasks in D state, the kernel's own list of blocked tasks, memory and block queues.
hang_report() {
  echo "VMTEST info hang: step $1 still running after $2 s"
  for t in /proc/[0-9]*/task/[0-9]*; do
    state=$(sed -n 's/^State:\s*//p' $t/status 2>/dev/null)
    comm=$(cat $t/comm 2>/dev/null)
    case "$state" in D*) ;; *) [ "${t#/proc/$AGENT_PID/}" != "$t" ] || continue ;; esac
    echo "    task ${t#/proc/} $comm $state wchan=$(cat $t/wchan 2>/dev/null)"
    sed 's/^/      /' $t/stack 2>/dev/null | head -n 16
  done
  for d in /sys/block/ublkb* /sys/block/nbd*; do
    [ -e $d/inflight ] && echo "    $d inflight: $(cat $d/inflight)"
  done
  grep -E '^(MemFree|Dirty|Writeback|Shmem):' /proc/meminfo | sed 's/^/    /'
  echo w >/proc/sysrq-trigger
  dmesg | tail -n 80 | sed 's/^/    dmesg| /'
  tail -n 20 /tmp/agent.log | sed 's/^/    agent| /'
}

# How long one step may take before the guest reports why it hangs and gives up (the
# slowest step, the 400 MiB crash write, takes well under a minute).
STEP_TIMEOUT=150

# step NAME CMD...: runs CMD, shows its output indented, reports time; any failure ends the run.
step() {
  name=$1; shift
  t0=$(now_ms)
  ( sleep $STEP_TIMEOUT; hang_report "$name" $STEP_TIMEOUT; echo "VMTEST FAIL $name (hung)"; echo "VMTEST FAIL"; poweroff -f -n ) &
  watchdog=$!
  # Not in a subshell: start_agent must set AGENT_PID here.
  "$@" >/tmp/step.out 2>&1
  rc=$?
  kill $watchdog 2>/dev/null
  sed 's/^/    | /' /tmp/step.out
  if [ $rc = 0 ]; then echo "VMTEST ok $name $(( $(now_ms) - t0 ))ms"; else
    echo "VMTEST FAIL $name (exit $rc)"; finish 1
  fi
}

fail() { echo "VMTEST FAIL $*"; finish 1; }

start_agent() {
  $AGENT --data-dir /data --nbd-listen 127.0.0.1:10809 --grpc-listen 127.0.0.1:50051 \
    --metrics-listen 127.0.0.1:9500 --hydration-bytes-per-sec 2097152 >>/tmp/agent.log 2>&1 &
  AGENT_PID=$!
  i=0
  while [ ! -S /data/grpc.sock ] || [ ! -S /data/nbd.sock ] || ! $CLI volume list >/dev/null 2>&1; do
    i=$((i + 1))
    [ $i -gt 600 ] && { echo "agent did not come up"; return 1; }
    kill -0 $AGENT_PID 2>/dev/null || { echo "agent exited"; return 1; }
    sleep 0.1
  done
}

stop_agent() {
  kill -TERM $AGENT_PID
  wait $AGENT_PID
}

# Files of a tree with their hashes, sorted by name (lost+found left out).
tree_sums() { (cd "$1" && find . -type f ! -path './lost+found/*' | sort | xargs sha256sum); }

write_tree() {
  mkdir -p "$1/docs" "$1/data"
  i=0
  while [ $i -lt 100 ]; do echo "document $i of the first tree" >"$1/docs/d$i.txt"; i=$((i + 1)); done
  dd if=/dev/urandom of="$1/data/big" bs=1M count=24 2>/dev/null
  dd if=/dev/urandom of="$1/data/small" bs=4k count=3 2>/dev/null
  sync -f "$1"
}

change_tree() {
  rm -f "$1"/docs/d1*.txt
  echo "changed after the snapshot" >"$1/docs/d0.txt"
  dd if=/dev/urandom of="$1/data/big" bs=1M seek=4 count=8 conv=notrunc 2>/dev/null
  dd if=/dev/urandom of="$1/data/new" bs=1M count=6 2>/dev/null
  sync -f "$1"
}

# A snapshot of a mounted filesystem: freeze it (ext4 writes back and marks its journal
# clean), snapshot, thaw.
snapshot_mounted() {
  fsfreeze --freeze "$1" || return 1
  $CLI snapshot create "$2" "$3"
  rc=$?
  fsfreeze --unfreeze "$1"
  return $rc
}

check_sums() { (cd "$1" && sha256sum -c -s "$2"); }
same_files() { tree_sums "$1" | awk '{print $2}' >/tmp/have; awk '{print $2}' "$2" | cmp -s - /tmp/have; }

# The first nbd device with no connection (attach runs in a subshell: no counters).
free_nbd() {
  i=0
  while [ -e /sys/block/nbd$i/pid ]; do i=$((i + 1)); done
  echo /dev/nbd$i
}

# Frontend plumbing: attach prints the device node.
attach() { # FRONTEND VOLUME [SNAPSHOT]
  case $1 in
    nbd)
      dev=$(free_nbd)
      if [ -n "$3" ]; then
        $NBD_CLIENT -N "$2@$3" -u /data/nbd.sock "$dev" -readonly -b 4096 >&2 || return 1
      else
        $NBD_CLIENT -N "$2" -u /data/nbd.sock "$dev" -b 4096 >&2 || return 1
      fi
      echo "$dev" ;;
    ublk)
      if [ -n "$3" ]; then $CLI -o json ublk attach "$2" --snapshot "$3"; else $CLI -o json ublk attach "$2"; fi |
        sed -n 's/.*"device": *"\([^"]*\)".*/\1/p' ;;
  esac
}
detach() { # FRONTEND DEVICE
  case $1 in
    nbd) $NBD_CLIENT -d "$2" ;;
    ublk) $CLI ublk detach "$2" ;;
  esac
}

# The whole scenario through one frontend, on its own volume.
scenario() {
  fe=$1 vol=$2
  origin=$(attach $fe $vol) && [ -b "$origin" ] || fail "$fe: attach origin of $vol"
  echo "VMTEST info $fe origin of $vol is $origin"
  q=/sys/block/${origin#/dev/}/queue
  echo "VMTEST info $fe queue limits: discard_max_bytes=$(cat $q/discard_max_bytes) write_zeroes_max_bytes=$(cat $q/write_zeroes_max_bytes) write_cache=\"$(cat $q/write_cache)\" fua=$(cat $q/fua) max_sectors_kb=$(cat $q/max_sectors_kb) nr_requests=$(cat $q/nr_requests)"
  step "$fe.mkfs" $MKE2FS -t ext4 -F -q "$origin"
  step "$fe.mount" mount -t ext4 "$origin" /mnt/origin
  step "$fe.write-tree" write_tree /mnt/origin
  tree_sums /mnt/origin >/tmp/old.sums
  step "$fe.snapshot-create" snapshot_mounted /mnt/origin $vol before
  step "$fe.change-tree" change_tree /mnt/origin
  # Free space handed back to the device: DISCARD (a no-op for the store, like NBD TRIM).
  step "$fe.fstrim" fstrim -v /mnt/origin
  echo "VMTEST info $fe diskstats after fstrim (discards completed, sectors): $(awk '{print $12, $14}' $q/../stat)"
  [ $fe = ublk ] && wget -qO- http://127.0.0.1:9500/metrics | grep '^multisnap_ublk_requests_total' | sed 's/^/    | /'
  tree_sums /mnt/origin >/tmp/new.sums
  cmp -s /tmp/old.sums /tmp/new.sums && fail "$fe: the tree did not change"
  step "$fe.umount-origin" umount /mnt/origin
  step "$fe.e2fsck-origin" $E2FSCK -f -n "$origin"

  snap=$(attach $fe $vol before) && [ -b "$snap" ] || fail "$fe: attach snapshot $vol@before"
  echo "VMTEST info $fe snapshot $vol@before is $snap"
  [ $fe = ublk ] && step ublk.list $CLI ublk list
  if [ $fe = ublk ]; then
    # What a kernel device serves cannot be deleted under it.
    step ublk.delete-served-snapshot-refused sh -c "! $CLI snapshot delete $vol before"
    step ublk.delete-served-volume-refused sh -c "! $CLI volume delete $vol --force"
  fi
  step "$fe.e2fsck-snapshot" $E2FSCK -f -n "$snap"
  step "$fe.mount-snapshot" mount -t ext4 -o ro "$snap" /mnt/snap
  step "$fe.snapshot-holds-old-tree" check_sums /mnt/snap /tmp/old.sums
  step "$fe.snapshot-has-old-file-list" same_files /mnt/snap /tmp/old.sums
  step "$fe.snapshot-write-refused" sh -c "! touch /mnt/snap/x 2>/dev/null && ! dd if=/dev/zero of=$snap bs=4k count=1 oflag=direct 2>/dev/null"
  umount /mnt/snap

  step "$fe.mount-origin" mount -t ext4 "$origin" /mnt/origin
  step "$fe.origin-holds-new-tree" check_sums /mnt/origin /tmp/new.sums
  step "$fe.origin-has-new-file-list" same_files /mnt/origin /tmp/new.sums
  if check_sums /mnt/origin /tmp/old.sums 2>/dev/null; then fail "$fe: origin still matches the old tree"; fi
  umount /mnt/origin
  if [ $fe = ublk ]; then
    # The frontend's request series, scraped the way Prometheus would.
    step ublk.metrics sh -c "wget -qO- http://127.0.0.1:9500/metrics | grep -E '^multisnap_ublk_(requests_total|request_bytes_total)\\{volume=\"$vol\",view=\"(origin|snapshot)\",op=\"(read|write|flush|discard|write_zeroes)\"\\} [1-9]'"
  fi
  step "$fe.detach-snapshot" detach $fe "$snap"
  step "$fe.detach-origin" detach $fe "$origin"

  # Roll the origin back to the snapshot: it reads as the old tree at once, while the merge
  # copies the snapshot's chunks back in the background (nbd reads during the merge; ublk
  # waits for it to end).
  if [ $fe = nbd ]; then step nbd.revert $CLI snapshot revert $vol before
  else step ublk.revert $CLI snapshot revert $vol before --wait; fi
  origin=$(attach $fe $vol) && [ -b "$origin" ] || fail "$fe: attach origin of $vol after the rollback"
  step "$fe.e2fsck-reverted" $E2FSCK -f -n "$origin"
  step "$fe.mount-reverted" mount -t ext4 -o ro "$origin" /mnt/origin
  step "$fe.reverted-holds-old-tree" check_sums /mnt/origin /tmp/old.sums
  step "$fe.reverted-has-old-file-list" same_files /mnt/origin /tmp/old.sums
  umount /mnt/origin
  step "$fe.detach-reverted" detach $fe "$origin"
  [ $fe = nbd ] && clone_scenario $vol
}

# A clone of the snapshot, checked while its data is still being copied (the agent copies at
# most 2 MiB/s here) and again once the copy has ended.
clone_done() { ! $CLI volume show "$1" | grep -q '^clone hydration: *from'; }
wait_clone() {
  i=0
  until clone_done "$1"; do i=$((i + 1)); [ $i -gt 300 ] && return 1; sleep 1; done
}
clone_scenario() {
  vol=$1
  step clone.create $CLI volume create c1 --from $vol@before
  step clone.hydrating sh -c "$CLI volume show c1 | grep '^clone hydration: *from'"
  step clone.source-delete-refused sh -c "! $CLI snapshot delete $vol before"
  clone=$(attach nbd c1) && [ -b "$clone" ] || fail "clone: attach c1"
  step clone.e2fsck-while-hydrating $E2FSCK -f -n "$clone"
  step clone.mount-while-hydrating mount -t ext4 -o ro "$clone" /mnt/snap
  step clone.holds-old-tree-while-hydrating check_sums /mnt/snap /tmp/old.sums
  umount /mnt/snap
  step clone.still-hydrating sh -c "$CLI volume show c1 | grep '^clone hydration: *from'"
  step clone.hydration-ends wait_clone c1
  step clone.mount-hydrated mount -t ext4 -o ro "$clone" /mnt/snap
  step clone.holds-old-tree-hydrated check_sums /mnt/snap /tmp/old.sums
  step clone.has-old-file-list same_files /mnt/snap /tmp/old.sums
  umount /mnt/snap
  step clone.detach detach nbd "$clone"
}

# crash_writer_ends PID: waits for the crash scenario's writer, whose writes fail once its
# device is gone; says how it ended.
crash_writer_ends() {
  wait "$1"
  echo "crash: writer exit $?: $(tail -n 1 /tmp/dd.err)"
}

# write_ends PID: waits for a write started in the background; fails if it failed.
write_ends() {
  wait "$1" || { echo "the write failed (exit $?)"; return 1; }
}

# kill -9 the agent while the kernel writes through nbd; after a restart the snapshot must
# still be clean and hold the old tree, and the origin's filesystem must be repairable.
crash_scenario() {
  vol=$1
  origin=$(attach nbd $vol) || fail "crash: attach origin"
  step crash.mount mount -t ext4 "$origin" /mnt/origin
  dd if=/dev/urandom of=/mnt/origin/data/crash bs=1M count=400 conv=fsync 2>/tmp/dd.err &
  DD=$!
  sleep 3
  # The agent stops answering for a second before it dies (a hung agent an operator kills),
  # so the kernel has requests sent and never answered when the connection drops.
  kill -STOP $AGENT_PID
  sleep 1
  t0=$(now_ms)
  kill -9 $AGENT_PID
  wait $AGENT_PID 2>/dev/null
  echo "VMTEST info crash: agent stopped, then killed with SIGKILL, during a 400 MiB write ($(( $(now_ms) - t0 ))ms)"
  # Disconnect first, then wait for the writer, then unmount. Requests sent to the dead server
  # stay in flight (the device has no request timeout) until a disconnect fails them: the
  # writer's fsync waits on them (the guest hung here once, waiting for the writer before the
  # disconnect), and an unmount first waits on them forever, holding the filesystem's
  # superblock and with it every later global sync (CI's ublk steps hung so, twice in a row).
  step crash.disconnect-dead detach nbd "$origin"
  step crash.writer-ends crash_writer_ends $DD
  step crash.umount-dead umount /mnt/origin
  step crash.restart-agent start_agent
  snap=$(attach nbd $vol before) && [ -b "$snap" ] || fail "crash: attach snapshot after restart"
  step crash.e2fsck-snapshot $E2FSCK -f -n "$snap"
  step crash.mount-snapshot mount -t ext4 -o ro "$snap" /mnt/snap
  step crash.snapshot-holds-old-tree check_sums /mnt/snap /tmp/old.sums
  umount /mnt/snap
  detach nbd "$snap" >/dev/null
  origin=$(attach nbd $vol) || fail "crash: attach origin after restart"
  # The origin is a disk whose writer died: journal replay and repair are allowed (exit 1).
  t0=$(now_ms)
  $E2FSCK -f -y "$origin" >/tmp/fsck.out 2>&1
  rc=$?
  sed 's/^/    | /' /tmp/fsck.out
  [ $rc -le 1 ] || fail "crash.e2fsck-origin: exit $rc"
  echo "VMTEST ok crash.e2fsck-origin-repair $(( $(now_ms) - t0 ))ms (exit $rc)"
  step crash.e2fsck-origin-clean $E2FSCK -f -n "$origin"
  detach nbd "$origin" >/dev/null
}

# ublk user recovery: kill -9 the agent under a mounted ext4 on /dev/ublkbN while a write
# waits; the kernel holds the device's I/O; the restarted agent takes the device over and the
# write completes; the filesystem is clean and holds everything written.
ublk_recovery_scenario() {
  vol=$1
  origin=$(attach ublk $vol) && [ -b "$origin" ] || fail "recovery: attach origin of $vol"
  step recovery.mount mount -t ext4 "$origin" /mnt/origin
  dd if=/dev/urandom of=/tmp/before bs=1M count=8 2>/dev/null
  dd if=/dev/urandom of=/tmp/during bs=1M count=8 2>/dev/null
  step recovery.write-before cp /tmp/before /mnt/origin/before
  sync -f /mnt/origin
  kill -9 $AGENT_PID
  wait $AGENT_PID 2>/dev/null
  echo "VMTEST info recovery: agent killed with SIGKILL, $origin mounted"
  t0=$(now_ms)
  (cp /tmp/during /mnt/origin/during && sync -f /mnt/origin) &
  W=$!
  sleep 2
  kill -0 $W 2>/dev/null && echo "VMTEST info recovery: write held while no agent runs"
  step recovery.restart-agent start_agent
  # Under the step watchdog: a device the agent failed to take over holds the write forever.
  step recovery.write-ends write_ends $W
  echo "VMTEST ok recovery.write-across-restart $(( $(now_ms) - t0 ))ms"
  step recovery.device-listed sh -c "$CLI ublk list | grep -q '$origin'"
  # Taken over (START/END_USER_RECOVERY), not a new device that happens to have its name.
  step recovery.agent-recovered-device grep 'ublk device recovered' /tmp/agent.log
  step recovery.files-intact sh -c "cmp /tmp/before /mnt/origin/before && cmp /tmp/during /mnt/origin/during"
  step recovery.umount umount /mnt/origin
  step recovery.e2fsck $E2FSCK -f -n "$origin"
  step recovery.detach detach ublk "$origin"
}

echo "VMTEST info kernel $(uname -r), $(nproc) cpu(s), frontends: $FRONTENDS"
for m in crc16 mbcache jbd2 crc32c_generic ext4; do
  step "insmod.$m" insmod /lib/modules/$m.ko
done
case $MODE in
  powercut) . /powercut.sh; powercut_main run ;;
  powercut-check) . /powercut.sh; powercut_main check ;;
  csi) . /csi.sh; csi_main ;;
esac

step agent.start start_agent

for fe in $FRONTENDS; do
  case $fe in
    nbd)
      step insmod.nbd insmod /lib/modules/nbd.ko nbds_max=8
      scenario nbd default
      crash_scenario default
      ;;
    ublk)
      insmod /lib/modules/ublk_drv.ko 2>/tmp/insmod.err || fail "insmod.ublk_drv: $(cat /tmp/insmod.err)"
      [ -e /dev/ublk-control ] || fail "ublk: /dev/ublk-control missing after insmod"
      step ublk.volume-create $CLI volume create u --size 512M
      scenario ublk u
      ublk_recovery_scenario u
      # The CLI's human output, and detach refusing a mounted device.
      # (Volume default holds the ext4 the nbd scenario made.)
      step ublk.attach-table $CLI ublk attach default --queues 2 --depth 32
      dev=$(sed -n 's/^device: *//p' /tmp/step.out)
      step ublk.mount-default mount -t ext4 "$dev" /mnt/origin
      step ublk.detach-mounted-refused sh -c "! $CLI ublk detach $dev"
      step ublk.umount-default umount /mnt/origin
      step ublk.detach-table $CLI ublk detach "$dev"
      ;;
  esac
done

step agent.stop stop_agent
step agent.verify $AGENT verify --data-dir /data
finish 0
