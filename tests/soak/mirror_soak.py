"""The soak's second agent: the source volume `default` is mirrored (MirrorService, which
streams each new snapshot as an incremental delta into the target's ApplyDelta and resumes a
cut transfer from the target's token) to a volume on a target agent with its own data
directory and gRPC socket. Either agent is killed at random moments, the target often while
an apply is in progress.

What must hold after every restart:
- every ready snapshot on the target reads exactly as the source snapshot of that name read
  when it was taken (for a writable snapshot: each block one of the versions it has held);
- the target holds no other snapshot: an interrupted apply leaves none half made;
- with no apply in progress, the target origin reads as its newest snapshot;
- `verify` passes on the target's data directory after each kill;
- the mirror gets in sync (checked every few cycles and at the end): a stuck mirror fails.

The source snapshot that is the mirror's base is deleted by hand now and then; the mirror then
stops (a documented divergence) and is set again to a fresh target volume (a full stream).
"""
import hashlib
import os
import threading
import time

import grpc
import nbd

READY = "SNAPSHOT_STATE_READY"
SYNC_TIMEOUT = 120


class Expect:
    """What a source snapshot read when taken: per block its version, and for a writable
    snapshot every version written to it since (its copy on the target may hold any)."""

    def __init__(self, versions, writable):
        self.versions = tuple(versions)
        self.writable = writable
        self.later = {}

    def wrote(self, block, version):
        self.later.setdefault(block, set()).add(version)


def read_all(uri, size):
    h = nbd.NBD()
    h.connect_uri(uri)
    try:
        return h.pread(size, 0)
    finally:
        h.shutdown()


class MirrorSoak:
    def __init__(self, source, target, block_bytes, block, size):
        self.source, self.target = source, target
        self.block_bytes, self.block, self.size = block_bytes, block, size
        self.expect = {}  # source snapshot name -> Expect
        self.volumes_made = 0
        self.retired = set()  # target volumes of earlier mirrors, to delete
        self.applied = set()  # (target volume, snapshot) seen ready on the target
        self.reseeds = 0
        self.target_kills = 0
        self.kills_mid_apply = 0
        self.syncs_checked = 0
        self.current = ""  # the mirror's target volume, as last seen
        self.rng = None  # set by the soak: thinning while waiting for a sync
        self.versions_so_far = lambda: 0  # set by the soak: the newest version written

    # --- the model's side

    def taken(self, name, versions, writable):
        self.expect[name] = Expect(versions, writable)

    def wrote(self, name, block, version):
        if name in self.expect:
            self.expect[name].wrote(block, version)

    def base(self):
        """The snapshot the mirror holds as its base, or None (also when the agent is gone)."""
        m = self.get()
        return None if m is None else m.get("status", {}).get("last_replicated_snapshot")

    # --- the mirror

    def endpoint(self):
        return "unix:" + os.path.join(self.target.data, "grpc.sock")

    def get(self):
        try:
            return self.source.call("MirrorService/GetMirror", {"volume": "default"})
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return {}
            raise

    def ensure(self):
        """After a restart: a mirror is set, and one stopped because its base was deleted here
        is set again to a fresh target volume. Any other divergence is a failure."""
        m = self.get()
        if m is None:
            return
        if m:
            self.current = m["target"]["volume"]
        status = m.get("status", {})
        if m and status.get("state") != "MIRROR_STATE_STOPPED_DIVERGED":
            return
        if m:
            why = status.get("last_error", "")
            if "deleted on this volume" not in why:
                raise SystemExit(f"MISMATCH mirror diverged: {why}")
            self.retired.add(m["target"]["volume"])
            self.reseeds += 1
            # A volume may have several mirrors, so the stopped one is cleared before the new
            # one is set; a kill in between leaves no mirror, which the next call sets.
            if self.source.call("MirrorService/ClearMirror", {
                    "volume": "default", "endpoint": m["target"]["endpoint"],
                    "target_volume": m["target"]["volume"]}) is None:
                return
        self.volumes_made += 1
        name = f"m{self.volumes_made}"
        # Made here rather than by the mirror, with a store that holds a few full deltas.
        try:
            self.target.call("VolumeService/CreateVolume", {
                "name": name, "size_bytes": self.size, "chunk_size_bytes": 65536,
                "store_size_bytes": 4 * self.size})
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise
        # Every other target volume gets zstd-compressed streams.
        compression = ["DELTA_COMPRESSION_NONE", "DELTA_COMPRESSION_ZSTD"][self.volumes_made % 2]
        self.current = name
        self.source.call("MirrorService/SetMirror", {
            "volume": "default",
            "target": {"endpoint": self.endpoint(), "volume": name,
                       "compression": compression}})

    def retire(self):
        """Deletes the target volumes of earlier mirrors (retried after a kill)."""
        for name in sorted(self.retired):
            try:
                if self.target.call("VolumeService/DeleteVolume",
                                    {"name": name, "force": True}) is None:
                    return
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.NOT_FOUND:
                    raise
            self.retired.discard(name)

    # --- checks

    def snapshots(self, volume):
        """The target volume's snapshots; none before the mirror made it."""
        try:
            return self.target.call("SnapshotService/ListSnapshots",
                                    {"volume": volume}).get("snapshots", [])
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.NOT_FOUND:
                return []
            raise

    def apply_state(self, volume):
        return self.target.call("DeltaService/GetApplyState", {"volume": volume})

    def check_snapshot(self, volume, name):
        want = self.expect.get(name)
        if want is None:
            raise SystemExit(f"MISMATCH target {volume} holds {name}, never taken on the source")
        data = read_all(self.target.uri(f"{volume}@{name}"), self.size)
        for b, v in enumerate(want.versions):
            got = data[b * self.block:(b + 1) * self.block]
            if got == self.block_bytes(b, v):
                continue
            if any(got == self.block_bytes(b, w) for w in want.later.get(b, ())):
                continue
            raise SystemExit(f"MISMATCH target {volume}@{name} block {b}: not as the source "
                             f"snapshot read (version {v} or one written to it since); "
                             f"it reads as {self.identify(b, got)}")
        return hashlib.sha256(data).digest()

    def identify(self, block, data):
        """What a wrong block holds, for the report: the version it is, if any."""
        if data == bytes(self.block):
            return "zeros"
        for v in range(1, self.versions_so_far() + 1):
            if data == self.block_bytes(block, v):
                return f"version {v}"
        return "no version ever written to it"

    def check(self, source_names):
        """Checks every target volume of a mirror; both agents are up. `source_names`: the
        snapshots the source may hold."""
        volumes = {v["name"] for v in self.target.call("VolumeService/ListVolumes", {})
                   .get("volumes", [])} - {"default"}
        held = set(source_names)
        for volume in sorted(volumes):
            before = self.apply_state(volume)
            listed = self.snapshots(volume)
            held |= {s["name"] for s in listed}
            if before.get("in_progress"):
                held.add(before["snapshot_name"])
            for s in listed:
                if s["state"] not in (READY, "SNAPSHOT_STATE_DELETING"):
                    raise SystemExit(f"MISMATCH target {volume}@{s['name']} is {s['state']}")
            ready = sorted((int(s["id"]), s["name"]) for s in listed if s["state"] == READY)
            digest = None
            for _, name in ready:
                digest = self.check_snapshot(volume, name)
                self.applied.add((volume, name))
            if not ready:
                continue
            origin = hashlib.sha256(read_all(self.target.uri(volume), self.size)).digest()
            after = self.apply_state(volume)
            newest_after = max((int(s["id"]), s["name"]) for s in self.snapshots(volume)
                               if s["state"] == READY)
            quiet = not before.get("in_progress") and not after.get("in_progress")
            if quiet and newest_after == ready[-1] and origin != digest:
                raise SystemExit(f"MISMATCH target {volume}: its origin is not its newest "
                                 f"snapshot {ready[-1][1]} with no apply in progress")
        self.forget_older_than(held)

    def forget_older_than(self, held):
        """Drops what snapshots read that neither agent holds and that are older than every
        snapshot either holds (the mirror sends only the newest: they cannot appear again)."""
        if not held:
            return
        oldest = min(int(n[1:]) for n in held)
        for name in [n for n in self.expect if int(n[1:]) < oldest - 50]:
            del self.expect[name]

    def thin(self, rng, keep=2):
        """Deletes the target's older snapshots by hand (never the newest: the next base), as
        its store holds a few (a full store is refused with a clear error, and waited out)."""
        m = self.get()
        if not m:
            return
        volume = m["target"]["volume"]
        ready = sorted((int(s["id"]), s["name"]) for s in self.snapshots(volume)
                       if s["state"] == READY)
        for _, name in ready[:-keep]:
            if rng.random() < 0.8:
                if self.target.call("SnapshotService/DeleteSnapshot",
                                    {"volume": volume, "name": name}) is None:
                    return

    def wait_in_sync(self):
        """Waits until the target holds the source's newest snapshot; fails if it never does."""
        deadline = time.time() + SYNC_TIMEOUT
        last = None
        while time.time() < deadline:
            self.ensure()
            m = self.get()
            newest = [s for s in self.source.call("SnapshotService/ListSnapshots",
                                                  {"volume": "default"}).get("snapshots", [])
                      if s["state"] == READY]
            status = m.get("status", {}) if m else {}
            last = status
            if "store is full" in status.get("last_error", ""):
                self.thin(self.rng, keep=1)
            if not newest or (status.get("state") == "MIRROR_STATE_IN_SYNC"
                              and status.get("last_replicated_snapshot")
                              == max(newest, key=lambda s: int(s["id"]))["name"]):
                self.syncs_checked += 1
                return
            time.sleep(0.1)
        raise SystemExit(f"MIRROR STUCK for {SYNC_TIMEOUT} s: {last}")

    # --- killing the target

    def killer(self, rng, stop):
        """A thread that kills the target at a random moment, or as soon as it sees an apply
        in progress; returns the thread and a list that says whether it killed."""
        killed = []
        mid_apply = rng.random() < 0.5
        deadline = time.time() + rng.uniform(0.1, 1.5)

        def run():
            while not stop.is_set() and time.time() < deadline:
                if mid_apply and self.applying():
                    time.sleep(rng.uniform(0, 0.02))
                    killed.append("mid-apply")
                    self.target.kill()
                    return
                time.sleep(0.005)
            if not stop.is_set() or rng.random() < 0.5:
                killed.append("random")
                self.target.kill()

        t = threading.Thread(target=run)
        t.start()
        return t, killed

    def applying(self):
        """Whether the target applies a delta to the mirror's volume now. Asked of the target,
        whose API object nothing else uses during a cycle: protobuf's C extension crashed
        (SIGSEGV) when two threads built messages through one reflection pool."""
        try:
            state = self.target.call("DeltaService/GetApplyState", {"volume": self.current})
        except grpc.RpcError:
            return False
        return bool(state and state.get("in_progress"))
