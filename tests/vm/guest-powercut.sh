# Power cuts of the whole guest (tests/kernel_power_cut.rs); sourced by /init for
# msnap.mode=powercut (check what the last cut left, then work until the host kills qemu) and
# msnap.mode=powercut-check (check only, then power off cleanly).
#
# The agent's data directory is ext4 on a virtio disk the host keeps in a file, so a cut loses
# exactly what the guest kernel had not yet handed to its disk: page cache, unjournalled
# metadata, unsynced directories. The guest reports facts, the host judges them:
#   VMCUT ...    something that completed before the cut (printed after it returned);
#   VMCHECK ...  what the next boot finds.
# Raw volumes p*: the first 1 MiB is 16 regions of 64 KiB; every 4 KiB block of region r holds
# the 32-byte record "m VOL gGEN rR bB" 128 times, so a check can tell each block's generation,
# a zero block, or a torn or misplaced one. Volume fs holds ext4 written with fsync (FLUSH and
# FUA through the kernel nbd client). Volume rVOL is VOL's replica, fed delta streams.

PC_CYCLE=$(sed -n 's/.*msnap.cycle=\([0-9]*\).*/\1/p' /proc/cmdline)
PC_GEN=$((PC_CYCLE * 100000))
PC_NEXT_VOL=0

# A region's 64 KiB for generation $3: the record repeated to fill each 4 KiB block.
pc_region() { # VOL REGION GEN > file
  b=0
  while [ $b -lt 16 ]; do
    s=$(printf '%-32s' "m $1 g$3 r$2 b$b")
    s=$s$s s=$s$s s=$s$s s=$s$s s=$s$s s=$s$s s=$s$s
    printf '%s' "$s"
    b=$((b + 1))
  done
}

# The nbd device serving VOL (attached once per boot, kept in /tmp/dev.VOL).
pc_dev() { cat /tmp/dev.$1; }
pc_attach() { # VOL
  d=$(attach nbd "$1") && [ -b "$d" ] || return 1
  echo "$d" >/tmp/dev.$1
}

# A CLI call whose output (progress bars included) stays off the console unless it fails.
pc_cli() {
  $CLI "$@" >/tmp/cli.out 2>&1 && return 0
  sed 's/^/    cli| /' /tmp/cli.out
  return 1
}
pc_volumes() { $CLI -o json volume list | sed -n 's/.*"name": "\([^"]*\)".*/\1/p'; }
# Ready snapshots only: a deleted one stays listed (state DELETING) while its space is reclaimed.
pc_snapshots() {
  $CLI -o json snapshot list "$1" |
    awk -F'"' '/"name":/ { n = $4 } /"state":/ { if ($4 == "SNAPSHOT_STATE_READY") print n }'
}
pc_hash_1m() { dd if="$1" bs=64k count=16 2>/dev/null | sha256sum | cut -c1-64; }

# Each 4 KiB block of the dump of VOL's first 1 MiB: its generation, 0 for zeroes, X otherwise.
pc_blocks() { # VOL DUMP
  tr '\000' '.' <"$2" | fold -w 32 | awk -v vol="$1" '
    { blk = int((NR - 1) / 128); rec[blk] = (NR % 128 == 1) ? $0 : rec[blk]
      if ($0 != rec[blk]) bad[blk] = 1 }
    END { for (i = 0; i < 256; i++) {
        r = rec[i]; split(r, f, " ")
        if (bad[i]) t = "X"
        else if (r ~ /^\.+$/) t = "0"
        else if (f[1] == "m" && f[2] == vol && f[4] == "r" int(i / 16) && f[5] == "b" (i % 16)) t = substr(f[3], 2)
        else t = "X"
        printf "%s%s", (i ? " " : ""), t }
      printf "\n" }'
}

# Each ready snapshot of VOL, attached read-only, and the hash of its first 1 MiB.
pc_check_snapshots() { # VOL
  for s in $(pc_snapshots "$1"); do
    sd=$(attach nbd "$1" "$s") && [ -b "$sd" ] || { echo "VMCHECK snap-attach-failed $1 $s"; continue; }
    echo "VMCHECK snap $1 $s $(pc_hash_1m "$sd")"
    detach nbd "$sd" >/dev/null
  done
}

pc_check_raw() { # VOL
  pc_attach "$1" || { echo "VMCHECK attach-failed $1"; return; }
  dev=$(pc_dev "$1")
  dd if="$dev" of=/tmp/dump bs=64k count=16 2>/dev/null
  echo "VMCHECK blocks $1 $(pc_blocks "$1" /tmp/dump)"
  pc_check_snapshots "$1"
}

pc_check_fs() {
  pc_attach fs || { echo "VMCHECK attach-failed fs"; return; }
  dev=$(pc_dev fs)
  # A disk whose writer lost power: journal replay and repair are allowed (exit 1), once.
  $E2FSCK -f -y "$dev" >/tmp/fsck.out 2>&1
  rc=$?
  $E2FSCK -f -n "$dev" >/tmp/fsck2.out 2>&1
  echo "VMCHECK fsck fs $rc $?"
  [ $rc -le 1 ] || { sed 's/^/    fsck| /' /tmp/fsck.out | tail -n 20; return; }
  mount -t ext4 "$dev" /mnt/origin || { echo "VMCHECK mount-failed fs"; return; }
  for f in /mnt/origin/f*; do
    [ -f "$f" ] && echo "VMCHECK file ${f##*/} $(sha256sum <"$f" | cut -c1-64)"
  done
  umount /mnt/origin
}

pc_check() {
  vols=$(pc_volumes)
  echo "VMCHECK volumes" $vols
  for v in $vols; do
    case $v in
      p*) pc_check_raw "$v" ;;
      r*) pc_check_replica "$v" ;;
      fs) pc_check_fs ;;
    esac
  done
  for v in $vols; do [ -e /tmp/dev.$v ] && detach nbd "$(pc_dev $v)" >/dev/null && rm /tmp/dev.$v; done
  stop_agent
  $AGENT verify --data-dir /data >/tmp/verify.out 2>&1
  rc=$?
  echo "VMCHECK verify $rc"
  [ $rc = 0 ] || sed 's/^/    verify| /' /tmp/verify.out | tail -n 20
}

pc_new_volume() {
  v=p$((PC_CYCLE * 100 + PC_NEXT_VOL))
  PC_NEXT_VOL=$((PC_NEXT_VOL + 1))
  echo "VMCUT precreate $v"
  pc_cli volume create "$v" --size 8M --chunk-size 16K || return 1
  echo "VMCUT created $v"
  pc_attach "$v"
}

# 1 to 3 regions of one volume, each a new generation, then one fsync of the device (its
# dirty pages, then FLUSH): every region written is acknowledged by that fsync.
pc_write() { # VOL
  dev=$(pc_dev "$1") n=$((1 + RANDOM % 3)) done=
  while [ $n -gt 0 ]; do
    r=$((RANDOM % 16)) PC_GEN=$((PC_GEN + 1))
    pc_region "$1" $r $PC_GEN >/tmp/region
    dd if=/tmp/region of="$dev" bs=64k seek=$r count=1 conv=notrunc 2>/dev/null || return 1
    done="$done $r:$PC_GEN"
    n=$((n - 1))
  done
  dd if=/dev/null of="$dev" conv=fsync,notrunc 2>/dev/null || return 1
  echo "VMCUT wrote $1$done"
}

pc_snapshot() { # VOL
  s=s$PC_GEN
  PC_GEN=$((PC_GEN + 1))
  echo "VMCUT presnap $1 $s $(pc_hash_1m "$(pc_dev "$1")")"
  pc_cli snapshot create "$1" "$s" || return 1
  echo "VMCUT snap $1 $s"
}

pc_delete_snapshot() { # VOL: the oldest, once there are three
  set -- "$1" $(pc_snapshots "$1")
  [ $# -ge 4 ] || return 0
  echo "VMCUT predelete $1 $2"
  pc_cli snapshot delete "$1" "$2" || return 1
  echo "VMCUT deleted $1 $2"
}

pc_delete_volume() { # VOL
  detach nbd "$(pc_dev "$1")" >/dev/null && rm /tmp/dev.$1
  echo "VMCUT predelvol $1"
  pc_cli volume delete "$1" --force || return 1
  echo "VMCUT delvol $1"
}

# The newest snapshot of VOL to its replica rVOL with a delta from the newest one both hold
# (a full stream into a new volume the first time), applied atomically by the agent.
pc_replicate() { # VOL
  r=r$1
  target=$(pc_snapshots "$1" | tail -n 1)
  [ -n "$target" ] || return 0
  if pc_volumes | grep -qx "$r"; then
    have=$(pc_snapshots "$r")
    base=
    for s in $(pc_snapshots "$1"); do echo "$have" | grep -qx "$s" && base=$s; done
    [ "$base" = "$target" ] && return 0
    [ -n "$base" ] || return 0
    pc_cli delta export "$1" --base "$base" --target "$target" -f /tmp/delta || return 1
  else
    echo "VMCUT precreate $r"
    pc_cli volume create "$r" --size 8M --chunk-size 16K || return 1
    echo "VMCUT created $r"
    pc_cli delta export "$1" --target "$target" -f /tmp/delta || return 1
  fi
  echo "VMCUT preapply $r $1 $target"
  pc_cli delta apply "$r" -f /tmp/delta || return 1
  echo "VMCUT applied $r $1 $target"
}

pc_check_replica() { # rVOL: its origin and each snapshot
  pc_attach "$1" || { echo "VMCHECK attach-failed $1"; return; }
  echo "VMCHECK origin $1 $(pc_hash_1m "$(pc_dev "$1")")"
  pc_check_snapshots "$1"
}

pc_file() {
  f=f$PC_GEN
  PC_GEN=$((PC_GEN + 1))
  dd if=/dev/urandom of=/tmp/file bs=4k count=$((1 + RANDOM % 24)) 2>/dev/null
  dd if=/tmp/file of=/mnt/fs/$f conv=fsync 2>/dev/null || return 1
  echo "VMCUT file $f $(sha256sum </tmp/file | cut -c1-64)"
}

# Until the host cuts the power: writes, snapshots, deletes, volumes come and go, files on
# ext4. Any failed call is a failure of the run (the host sees VMTEST FAIL).
pc_workload() {
  raw=$(pc_volumes | grep '^p')
  for v in $raw; do pc_attach "$v" || fail "powercut: attach $v"; done
  [ -n "$raw" ] || { pc_new_volume && pc_new_volume; } || fail "powercut: first volumes"
  if ! pc_volumes | grep -qx fs; then
    echo "VMCUT precreate fs"
    pc_cli volume create fs --size 64M || fail "powercut: create fs"
    echo "VMCUT created fs"
    pc_attach fs && $MKE2FS -t ext4 -F -q "$(pc_dev fs)" || fail "powercut: mkfs fs"
    echo "VMCUT mkfs fs"
  else
    pc_attach fs || fail "powercut: attach fs"
  fi
  mkdir -p /mnt/fs
  if ! mount -t ext4 "$(pc_dev fs)" /mnt/fs 2>/dev/null; then
    # Only a cut during the first mkfs leaves no filesystem (the host checks which).
    $MKE2FS -t ext4 -F -q "$(pc_dev fs)" || fail "powercut: mkfs fs again"
    echo "VMCUT mkfs fs"
    mount -t ext4 "$(pc_dev fs)" /mnt/fs || fail "powercut: mount fs"
  fi
  echo "VMCUT start"
  while :; do
    set -- $(ls /tmp | sed -n 's/^dev\.\(p.*\)/\1/p')
    shift $((RANDOM % $#))
    v=$1 k=$((RANDOM % 100))
    if [ $k -lt 45 ]; then pc_write "$v" || fail "powercut: write $v"
    elif [ $k -lt 60 ]; then pc_snapshot "$v" || fail "powercut: snapshot $v"
    elif [ $k -lt 70 ]; then pc_delete_snapshot "$v" || fail "powercut: delete snapshot of $v"
    elif [ $k -lt 85 ]; then pc_file || fail "powercut: file"
    elif [ $k -lt 90 ]; then
      [ $(ls /tmp | grep -c '^dev\.p') -lt 4 ] && { pc_new_volume || fail "powercut: create volume"; }
    elif [ $k -lt 93 ]; then
      [ $(ls /tmp | grep -c '^dev\.p') -gt 2 ] && { pc_delete_volume "$v" || fail "powercut: delete $v"; }
    elif [ $k -lt 100 ]; then pc_replicate "$v" || fail "powercut: replicate $v"
    fi
  done
}

powercut_main() {
  insmod /lib/modules/virtio_blk.ko 2>/dev/null
  insmod /lib/modules/nbd.ko nbds_max=16
  i=0
  while [ ! -b /dev/vda ] && [ $i -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
  [ -b /dev/vda ] || fail "powercut: no /dev/vda"
  # The host made the filesystem; after a cut ext4 replays its journal here.
  mount -t ext4 /dev/vda /data || fail "powercut: mount /dev/vda"
  echo "VMCUT boot cycle $PC_CYCLE"
  step agent.start start_agent
  pc_check
  echo "VMCHECK done"
  [ "$1" = check ] && finish 0
  step agent.restart start_agent
  pc_workload
}
