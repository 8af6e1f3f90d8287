# The CSI driver's node data path on a real kernel (msnap.mode=csi; sourced by guest-init.sh,
# whose helpers it uses). multisnap-csi runs beside the agent, and csi-call makes the calls
# kubelet and the sidecars would: a filesystem volume staged and published through the kernel
# NBD client, then through ublk (the driver takes ublk once /dev/ublk-control exists), files
# written, a VolumeSnapshot taken, restored into a new volume that is staged and mounted and
# holds the old files, a raw block volume written and read at its target path, expansion of a
# staged filesystem; after unpublish and unstage no mount and no device remains.

CSI=/usr/bin/multisnap-csi
CSI_SOCKET=/tmp/csi.sock
KUBELET=/var/lib/kubelet
CALL="/usr/bin/csi-call --socket $CSI_SOCKET"

start_csi() {
  # util-linux's blkid and e2fsprogs first: busybox's applets of the same names in /bin take
  # other options.
  PATH=/usr/sbin:/usr/bin:/bin $CSI --csi-socket $CSI_SOCKET --agent-socket /data/grpc.sock --nbd-socket /data/nbd.sock \
    --node-name guest >>/tmp/csi.log 2>&1 &
  CSI_PID=$!
  i=0
  while [ ! -S $CSI_SOCKET ]; do
    i=$((i + 1))
    [ $i -gt 300 ] && { echo "the CSI driver did not come up"; cat /tmp/csi.log; return 1; }
    kill -0 $CSI_PID 2>/dev/null || { echo "the CSI driver exited"; cat /tmp/csi.log; return 1; }
    sleep 0.1
  done
}

# The device mounted at a path (a staged filesystem), or nothing.
mounted_device() { awk -v p="$1" '$2 == p { print $1 }' /proc/mounts; }

# call NAME ARGS...: one csi-call as a step; its stdout (an id) is left in /tmp/step.out.
call() { name=$1; shift; step "$name" $CALL "$@"; }
out() { cat /tmp/step.out; }

# Nothing under the kubelet directory of FRONTEND is mounted, and no device of that kind is
# attached: NBD devices have no connection (no pid), no ublk device is listed by the agent.
nothing_left() {
  if grep -q " $KUBELET/" /proc/mounts; then echo "mounts left:"; grep " $KUBELET/" /proc/mounts; return 1; fi
  for p in /sys/block/nbd*/pid; do
    [ -e "$p" ] && { echo "an NBD device is still connected: $p"; return 1; }
  done
  if [ "$1" = ublk ] && $CLI ublk list | grep -q ublkb; then $CLI ublk list; return 1; fi
  return 0
}

# The staged device of a filesystem volume is of the frontend's kind.
staged_on() { # FRONTEND STAGING
  dev=$(mounted_device "$2")
  echo "staged on $dev"
  case $1 in
    nbd) case $dev in /dev/nbd*) ;; *) return 1 ;; esac ;;
    ublk) case $dev in /dev/ublkb*) ;; *) return 1 ;; esac ;;
  esac
}

# The old files are all there and the changes are not.
restored_tree() { # DIR
  check_sums "$1" /tmp/csi-old.sums || { echo "files differ from the snapshot's"; return 1; }
  same_files "$1" /tmp/csi-old.sums || { echo "other files than the snapshot's"; return 1; }
}

# The filesystem of an agent volume, checked through a device of its own (not staged).
fsck_volume() { # FRONTEND AGENT_VOLUME
  dev=$(attach "$1" "$2") && [ -b "$dev" ] || { echo "cannot attach $2"; return 1; }
  $E2FSCK -f -n "$dev"
  rc=$?
  detach "$1" "$dev"
  return $rc
}

block_rw() { # TARGET
  dd if=/dev/urandom of=/tmp/blk.in bs=1M count=4 2>/dev/null
  dd if=/tmp/blk.in of="$1" bs=1M seek=3 conv=fsync 2>/dev/null || return 1
  dd if="$1" of=/tmp/blk.out bs=1M skip=3 count=4 iflag=direct 2>/dev/null || return 1
  cmp /tmp/blk.in /tmp/blk.out
}

# The kernel's size of the filesystem at a path, in 1 KiB blocks.
fs_kib() { df -k "$1" | awk 'NR == 2 { print $2 }'; }

csi_scenario() {
  fe=$1
  k=$KUBELET/$fe
  st=$k/staging/pvc-a pub=$k/pods/a/mount
  rst=$k/staging/pvc-r rpub=$k/pods/r/mount
  bst=$k/staging/pvc-b bpub=$k/pods/b/dev
  mkdir -p $k/pods/a $k/pods/r $k/pods/b
  MiB=1048576

  call csi.$fe.create-volume create-volume pvc-a-$fe $((256 * MiB)); vol=$(out)
  call csi.$fe.stage stage "$vol" $st
  step csi.$fe.staged-on-$fe staged_on $fe $st
  call csi.$fe.stage-again stage "$vol" $st
  call csi.$fe.publish publish "$vol" $st $pub
  step csi.$fe.write-tree write_tree $pub
  tree_sums $pub >/tmp/csi-old.sums
  call csi.$fe.stats stats "$vol" $pub
  used=$(awk '$1 == "bytes" { print $2 }' /tmp/step.out)
  [ "${used:-0}" -gt $((24 * MiB)) ] || fail "csi.$fe.stats: $used bytes used after writing 24 MiB"

  # A VolumeSnapshot of the volume in use (Kubernetes does not freeze it; the tree was synced).
  call csi.$fe.create-snapshot create-snapshot "$vol" snap-a-$fe; snap=$(out)
  step csi.$fe.change-tree change_tree $pub
  tree_sums $pub >/tmp/csi-new.sums
  cmp -s /tmp/csi-old.sums /tmp/csi-new.sums && fail "csi.$fe: the tree did not change"

  call csi.$fe.restore create-volume pvc-r-$fe $((256 * MiB)) --snapshot "$snap"; rvol=$(out)
  call csi.$fe.stage-restored stage "$rvol" $rst
  call csi.$fe.publish-restored publish "$rvol" $rst $rpub
  step csi.$fe.restored-holds-old-files restored_tree $rpub
  step csi.$fe.original-kept-changes check_sums $pub /tmp/csi-new.sums

  call csi.$fe.unpublish-restored unpublish "$rvol" $rpub
  call csi.$fe.unstage-restored unstage "$rvol" $rst
  call csi.$fe.unpublish unpublish "$vol" $pub
  call csi.$fe.unpublish-again unpublish "$vol" $pub
  call csi.$fe.unstage unstage "$vol" $st
  call csi.$fe.unstage-again unstage "$vol" $st
  step csi.$fe.nothing-left nothing_left $fe
  step csi.$fe.e2fsck-restored fsck_volume $fe "${rvol#guest/}"
  step csi.$fe.e2fsck-original fsck_volume $fe "${vol#guest/}"

  # Expansion is offline (the driver says so): the controller grows the unstaged volume, the
  # node grows its filesystem once staged again, as Kubernetes does for OFFLINE.
  call csi.$fe.controller-expand expand-volume "$vol" $((512 * MiB))
  call csi.$fe.restage stage "$vol" $st
  call csi.$fe.republish publish "$vol" $st $pub
  before=$(fs_kib $pub)
  call csi.$fe.node-expand node-expand "$vol" $pub $((512 * MiB))
  after=$(fs_kib $pub)
  echo "VMTEST info csi.$fe filesystem ${before} KiB -> ${after} KiB"
  [ "$after" -gt $((before + 200 * 1024)) ] || fail "csi.$fe.node-expand: ${before} KiB -> ${after} KiB"
  step csi.$fe.files-after-expand check_sums $pub /tmp/csi-new.sums
  if [ $fe = ublk ]; then
    # The agent cannot resize an origin a ublk device serves: refused, nothing changed.
    step csi.ublk.expand-while-staged-refused sh -c "! $CALL expand-volume $vol $((768 * MiB))"
  fi
  call csi.$fe.unpublish-expanded unpublish "$vol" $pub
  call csi.$fe.unstage-expanded unstage "$vol" $st

  # A raw block volume: the device itself at the target path.
  call csi.$fe.create-block --block create-volume pvc-b-$fe $((64 * MiB)); bvol=$(out)
  call csi.$fe.stage-block --block stage "$bvol" $bst
  call csi.$fe.publish-block --block publish "$bvol" $bst $bpub
  step csi.$fe.block-is-a-device test -b $bpub
  step csi.$fe.block-write-read block_rw $bpub
  call csi.$fe.unpublish-block unpublish "$bvol" $bpub
  step csi.$fe.block-target-removed test ! -e $bpub
  call csi.$fe.unstage-block unstage "$bvol" $bst
  # What was written is in the volume: staged again, the device reads it back.
  call csi.$fe.restage-block --block stage "$bvol" $bst
  call csi.$fe.republish-block --block publish "$bvol" $bst $bpub
  step csi.$fe.block-kept-data sh -c "dd if=$bpub of=/tmp/blk.again bs=1M skip=3 count=4 iflag=direct 2>/dev/null && cmp /tmp/blk.in /tmp/blk.again"
  call csi.$fe.unpublish-block-2 unpublish "$bvol" $bpub
  call csi.$fe.unstage-block-2 unstage "$bvol" $bst
  step csi.$fe.nothing-left-after-block nothing_left $fe

  call csi.$fe.delete-restored delete-volume "$rvol"
  call csi.$fe.delete-snapshot delete-snapshot "$snap"
  call csi.$fe.delete-volume delete-volume "$vol"
  call csi.$fe.delete-block delete-volume "$bvol"
}

# kubelet gives up on a NodeStageVolume after its deadline and cancels it, then retries. A
# cancel after the device is attached must not leave it attached beside the one the retry
# stages: exactly one device serves the volume, and none after unstage.
cancelled_stage() { # FRONTEND
  fe=$1 k=$KUBELET/$1/cancel MiB=1048576
  call csi.$fe.cancel.create-volume create-volume pvc-c-$fe $((1024 * MiB)); cvol=$(out)
  t0=$(now_ms)
  $CALL --timeout-ms 700 stage "$cvol" $k/staging >/tmp/cancel.out 2>&1 &&
    echo "VMTEST info csi.$fe.cancel: the stage finished within its deadline (nothing cancelled)"
  sed 's/^/    | /' /tmp/cancel.out
  # The retry, as kubelet makes it: ABORTED while the first is still at work, then done.
  i=0
  until $CALL stage "$cvol" $k/staging >/tmp/cancel.out 2>&1; do
    i=$((i + 1)); [ $i -gt 100 ] && { cat /tmp/cancel.out; fail "csi.$fe.cancel: the retried stage never succeeded"; }
    sleep 0.3
  done
  echo "VMTEST info csi.$fe.cancel: staged $(( $(now_ms) - t0 ))ms after the first call, $i retries"
  step csi.$fe.cancel.one-device one_device_for $fe
  call csi.$fe.cancel.unstage unstage "$cvol" $k/staging
  step csi.$fe.cancel.nothing-left nothing_left $fe
  call csi.$fe.cancel.delete delete-volume "$cvol"
}

# Devices attached now, by kind: NBD devices with a connection, ublk devices the agent lists.
one_device_for() {
  case $1 in
    nbd) n=$(ls /sys/block/nbd*/pid 2>/dev/null | wc -l) ;;
    ublk) n=$($CLI ublk list | grep -c ublkb) ;;
  esac
  echo "$n $1 device(s) attached"
  [ "$n" = 1 ]
}

csi_main() {
  step agent.start start_agent
  step csi.start start_csi
  for fe in $FRONTENDS; do
    case $fe in
      nbd) step insmod.nbd insmod /lib/modules/nbd.ko nbds_max=8 ;;
      ublk)
        insmod /lib/modules/ublk_drv.ko 2>/tmp/insmod.err || fail "insmod.ublk_drv: $(cat /tmp/insmod.err)"
        [ -e /dev/ublk-control ] || fail "ublk: /dev/ublk-control missing after insmod" ;;
    esac
    csi_scenario $fe
    cancelled_stage $fe
  done
  step csi.agent-has-no-csi-volumes-left sh -c "! $CLI volume list | grep -q '^csi-'"
  kill -TERM $CSI_PID
  step agent.stop stop_agent
  step agent.verify $AGENT verify --data-dir /data
  finish 0
}
