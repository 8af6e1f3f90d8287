"""Crash soak of the real agent: random writes, flushes, snapshot creates and deletes,
writable-snapshot writes, rollbacks (RevertVolume, merged in the background), clones of
snapshots (written, flushed and deleted while they hydrate), qemu-io pattern writes and fio
runs with verify (fio_soak.py) from real clients (libnbd, qemu-io and fio for data, grpcio by
reflection for the API), and the volume mirrored to a second agent (mirror_soak.py), with the
agents killed (SIGKILL) at random moments and restarted, for CYCLES cycles.

A model keeps what every image must read: per 4 KiB block a version number whose bytes are
derived from (block, version). A block must read as its version at the last completed flush
or as one written after it (a disk may lose writes it acknowledged but was never asked to
flush); a snapshot must read exactly what the origin held when it was taken; a write in
flight when the agent died may or may not have landed. After each restart every image is read
whole and compared (the model then takes what was read), and `multisnap-agent verify` runs
on the stopped data directory (of the target agent too when it was killed).

  soak.py AGENT_BIN DATA_DIR CYCLES SEED

Prints one line per cycle and a summary; exits non-zero with the first mismatch.
"""
import hashlib
import os

# protobuf's C extension (upb) crashed this process (SIGSEGV in _message.abi3.so) when the
# cycle's threads built messages at the same time, about once in 50-100 cycles; the pure-Python
# implementation is slower and has no such crash. Set before protobuf is first imported.
os.environ["PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION"] = "python"
import random
import signal
import socket
import subprocess
import sys
import threading
import time

import grpc
import nbd
from fio_soak import FioSoak
from google.protobuf import descriptor_pool, json_format
from google.protobuf.message_factory import GetMessageClass
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from mirror_soak import MirrorSoak

BLOCK = 4096
SIZE = 16 << 20
BLOCKS = SIZE // BLOCK
MAX_SNAPSHOTS = 5


# Versions written by qemu-io: their blocks hold one byte repeated (`write -P`).
PATTERNS = set()


def pattern_byte(version):
    return 1 + version % 255


def block_bytes(block, version):
    if version == 0:
        return bytes(BLOCK)
    if version in PATTERNS:
        return bytes([pattern_byte(version)]) * BLOCK
    seed = hashlib.sha256(f"{block}:{version}".encode()).digest()
    return seed * (BLOCK // len(seed))


class Image:
    """What one image (the origin or a snapshot) must read."""

    def __init__(self, versions):
        self.versions = list(versions)
        # Blocks written since the last flush: every version each may read after a crash
        # (the one it had at that flush, and each written since, in flight or acknowledged).
        self.unflushed = {}
        # After a crash: the versions each such block may read.
        self.maybe = {}

    def copy(self):
        return Image(self.versions)

    def writing(self, block, version):
        self.unflushed.setdefault(block, {self.versions[block]}).add(version)

    def flushed(self):
        self.unflushed.clear()

    def crashed(self):
        self.maybe = self.unflushed
        self.unflushed = {}


class Model:
    def __init__(self):
        self.origin = Image([0] * BLOCKS)
        self.snapshots = {}  # name -> (Image, writable)
        # name -> (Image, writable): created or deleted when the agent died, so either way.
        self.maybe_snapshots = {}
        self.next_version = 1
        self.counter = 0
        self.reverts = 0
        self.patterns = PATTERNS
        # Clones of a snapshot of `default`: volume name -> Image (the snapshot's contents, then
        # the clone's own writes, flushed on the clone's own connection).
        self.clones = {}
        # name -> Image: CreateVolume or DeleteVolume was under way when the agent died.
        self.maybe_clones = {}
        self.clones_made = 0
        self.mirror = None  # MirrorSoak: what the target agent must hold

    def images(self):
        return [self.origin] + [img for img, _ in self.snapshots.values()]

    def crashed(self):
        """The agent died: unflushed writes may or may not be there."""
        for img in (self.images() + [img for img, _ in self.maybe_snapshots.values()]
                    + list(self.clones.values()) + list(self.maybe_clones.values())):
            img.crashed()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Api:
    """The agent's gRPC API learnt by reflection, as a user's script would."""

    def __init__(self, addr):
        self.channel = grpc.insecure_channel(addr)
        self.pool = descriptor_pool.DescriptorPool(ProtoReflectionDescriptorDatabase(self.channel))

    def call(self, method, body):
        service, name = method.rsplit("/", 1)
        m = self.pool.FindServiceByName(service).FindMethodByName(name)
        stub = self.channel.unary_unary(
            f"/{service}/{name}", request_serializer=lambda r: r.SerializeToString(),
            response_deserializer=GetMessageClass(m.output_type).FromString)
        reply = stub(json_format.ParseDict(body, GetMessageClass(m.input_type)()), timeout=60)
        return json_format.MessageToDict(reply, preserving_proto_field_name=True)


class Agent:
    def __init__(self, binary, data, log="agent.log"):
        self.binary, self.data, self.log = binary, data, log
        self.proc = None
        self.api = None

    def start(self):
        self.grpc = f"127.0.0.1:{free_port()}"
        self.api = None
        args = [self.binary, "--data-dir", self.data, "--nbd-listen", "none",
                "--grpc-listen", self.grpc, "--metrics-listen", "none",
                "--default-volume-size", str(SIZE), "--default-chunk-size", "65536",
                "--journal-bytes", str(1 << 20)]
        log = open(os.path.join(os.path.dirname(self.data), self.log), "a")
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log)
        sock = os.path.join(self.data, "nbd.sock")
        deadline = time.time() + 30
        while time.time() < deadline:
            if os.path.exists(sock) and self.call("VolumeService/ListVolumes", {}) is not None:
                return
            time.sleep(0.05)
        raise SystemExit("agent did not start")

    def uri(self, export):
        return f"nbd+unix:///{export}?socket={os.path.join(self.data, 'nbd.sock')}"

    def call(self, method, body):
        """The reply as a dict, or None when the agent is not there (dead or starting)."""
        try:
            if self.api is None:
                self.api = Api(self.grpc)
            return self.api.call("multisnap.v1." + method, body)
        except grpc.RpcError as e:
            if e.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                self.api = None
                return None
            raise

    def kill(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        if self.proc.wait(timeout=60) != 0:
            raise SystemExit("agent did not stop cleanly")


def check_image(h, image, what):
    data = h.pread(SIZE, 0)
    for b in range(BLOCKS):
        got = data[b * BLOCK:(b + 1) * BLOCK]
        want = block_bytes(b, image.versions[b])
        if got == want:
            continue
        others = sorted(image.maybe.get(b, ()))
        match = next((v for v in others if got == block_bytes(b, v)), None)
        if match is not None:
            image.versions[b] = match
            continue
        raise SystemExit(f"MISMATCH {what} block {b}: want version {image.versions[b]}"
                         f" (or one of {others}), got something else")
    image.maybe = {}


def check_all(agent, model):
    listed = agent.call("SnapshotService/ListSnapshots", {"volume": "default"})
    names = {s["name"] for s in listed.get("snapshots", [])}
    for name, entry in list(model.maybe_snapshots.items()):
        if name in names:
            model.snapshots[name] = entry
        else:
            model.snapshots.pop(name, None)
    model.maybe_snapshots.clear()
    if set(model.snapshots) != names:
        raise SystemExit(f"MISMATCH snapshots: model {sorted(model.snapshots)}, agent {sorted(names)}")
    volumes = {v["name"] for v in agent.call("VolumeService/ListVolumes", {}).get("volumes", [])}
    for name, image in list(model.maybe_clones.items()):
        if name in volumes:
            model.clones[name] = image
        else:
            model.clones.pop(name, None)
    model.maybe_clones.clear()
    if set(model.clones) != volumes - {"default", "fio"}:
        raise SystemExit(f"MISMATCH clones: model {sorted(model.clones)}, agent {sorted(volumes)}")
    for export, image in [("default", model.origin)] + [
            (f"default@{n}", img) for n, (img, _) in model.snapshots.items()] + [
            (n, img) for n, img in model.clones.items()]:
        h = nbd.NBD()
        h.connect_uri(agent.uri(export))
        check_image(h, image, export)
        h.shutdown()


def target_name(model, image):
    return next(n for n, (img, _) in model.snapshots.items() if img is image)


def revert(agent, name):
    """RevertVolume; None when the agent died. A snapshot being merged back cannot be the
    target of another rollback while that one runs: retried once the merge has ended."""
    while True:
        try:
            return agent.call("SnapshotService/RevertVolume", {"volume": "default", "snapshot": name})
        except grpc.RpcError as e:
            if e.code() != grpc.StatusCode.FAILED_PRECONDITION:
                raise
            time.sleep(0.05)


def clone_step(agent, model, rng, clones):
    """A clone of a read-only snapshot (at most two at once), a write to a clone, a flush of
    one, or a clone deleted. The clone hydrates in the background while the agent is killed.
    False when the agent died."""
    k = rng.random()
    if k < 0.3 and len(model.clones) < 2:
        names = [n for n, (_, w) in model.snapshots.items() if not w]
        if not names:
            return True
        snap = rng.choice(names)
        model.clones_made += 1
        name = f"c{model.clones_made}"
        model.maybe_clones[name] = model.snapshots[snap][0].copy()
        if agent.call("VolumeService/CreateVolume",
                      {"name": name, "source": {"volume": "default", "snapshot": snap}}) is None:
            return False
        model.clones[name] = model.maybe_clones.pop(name)
    elif k < 0.85 and model.clones:
        name = rng.choice(sorted(model.clones))
        img = model.clones[name]
        if name not in clones:
            clones[name] = nbd.NBD()
            clones[name].connect_uri(agent.uri(name))
        if k < 0.7:
            b = rng.randrange(BLOCKS)
            version = model.next_version
            model.next_version += 1
            img.writing(b, version)
            clones[name].pwrite(block_bytes(b, version), b * BLOCK)
            img.versions[b] = version
        else:
            clones[name].flush()
            img.flushed()
    elif model.clones:
        name = rng.choice(sorted(model.clones))
        if name in clones:
            clones.pop(name).shutdown()
        model.maybe_clones[name] = model.clones.pop(name)
        if agent.call("VolumeService/DeleteVolume", {"name": name, "force": True}) is None:
            return False
        del model.maybe_clones[name]
    return True


def workload(agent, model, rng, stop):
    """Runs random operations until the agent dies or `stop` is set."""
    h = nbd.NBD()
    h.connect_uri(agent.uri("default"))
    writable = {}
    clones = {}  # clone name -> its NBD connection
    while not stop.is_set():
        op = rng.random()
        if op < 0.6:
            start = rng.randrange(BLOCKS)
            count = min(rng.randrange(1, 17), BLOCKS - start)
            version = model.next_version
            model.next_version += 1
            for b in range(start, start + count):
                model.origin.writing(b, version)
            h.pwrite(b"".join(block_bytes(b, version) for b in range(start, start + count)),
                     start * BLOCK)
            for b in range(start, start + count):
                model.origin.versions[b] = version
        elif op < 0.7:
            # One flush makes every image of the volume durable.
            h.flush()
            for img in model.images():
                img.flushed()
        elif op < 0.8 and len(model.snapshots) < MAX_SNAPSHOTS:
            model.counter += 1
            name = f"s{model.counter}"
            want_writable = rng.random() < 0.3
            # Nothing else writes while this runs, so the snapshot is the origin now.
            model.maybe_snapshots[name] = (model.origin.copy(), want_writable)
            model.mirror.taken(name, model.origin.versions, want_writable)
            r = agent.call("SnapshotService/CreateSnapshot",
                           {"volume": "default", "name": name, "writable": want_writable})
            if r is None:
                return
            # Taking a snapshot flushes the origin first.
            model.origin.flushed()
            model.snapshots[name] = model.maybe_snapshots.pop(name)
        elif op < 0.88 and model.snapshots:
            name = rng.choice(sorted(model.snapshots))
            # The mirror's base is kept as a policy keeps it, but now and then deleted by
            # hand: the mirror then stops and is set again to a fresh target volume.
            if rng.random() < 0.9 and name == model.mirror.base():
                continue
            model.maybe_snapshots[name] = model.snapshots[name]
            try:
                gone = agent.call("SnapshotService/DeleteSnapshot",
                                  {"volume": "default", "name": name})
            except grpc.RpcError as e:
                # The snapshot a rollback is still merging back stays until the merge ends.
                if e.code() != grpc.StatusCode.FAILED_PRECONDITION:
                    raise
                del model.maybe_snapshots[name]
                continue
            if gone is None:
                return
            writable.pop(name, None)
            model.snapshots.pop(name)
            del model.maybe_snapshots[name]
        elif op < 0.91:
            # Roll the origin back to a read-only snapshot: from the reply on, the origin
            # reads as the snapshot (one commit); if the agent dies first, either state.
            names = [n for n, (_, w) in model.snapshots.items() if not w]
            if not names:
                continue
            target = model.snapshots[rng.choice(names)][0]
            for b, v in enumerate(target.versions):
                model.origin.writing(b, v)
            if revert(agent, target_name(model, target)) is None:
                return
            model.origin.versions = list(target.versions)
            model.origin.flushed()
            model.reverts += 1
        elif op < 0.94:
            # qemu-io, a client nobody here wrote: a pattern written and flushed when it closes.
            start = rng.randrange(BLOCKS)
            count = min(rng.randrange(1, 9), BLOCKS - start)
            version = model.next_version
            model.next_version += 1
            model.patterns.add(version)
            for b in range(start, start + count):
                model.origin.writing(b, version)
            out = subprocess.run(
                ["qemu-io", "-f", "raw", agent.uri("default"), "-c",
                 f"write -P {pattern_byte(version)} {start * BLOCK} {count * BLOCK}"],
                capture_output=True, text=True)
            if out.returncode != 0 or "wrote" not in out.stdout:
                return  # the agent died under it; the blocks stay in doubt
            for b in range(start, start + count):
                model.origin.versions[b] = version
            # qemu-io flushes the image when it closes it: everything written so far is durable.
            for img in model.images():
                img.flushed()
        elif op < 0.97:
            if not clone_step(agent, model, rng, clones):
                return
        else:
            names = [n for n, (_, w) in model.snapshots.items() if w]
            if not names:
                continue
            name = rng.choice(names)
            img = model.snapshots[name][0]
            if name not in writable:
                writable[name] = nbd.NBD()
                writable[name].connect_uri(agent.uri(f"default@{name}"))
            b = rng.randrange(BLOCKS)
            version = model.next_version
            model.next_version += 1
            img.writing(b, version)
            model.mirror.wrote(name, b, version)
            writable[name].pwrite(block_bytes(b, version), b * BLOCK)
            img.versions[b] = version


def verify(binary, data, what):
    out = subprocess.run([binary, "--data-dir", data, "verify"], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"verify of {what} failed:\n{out.stdout}{out.stderr}")


def restart(agent, target, model, fio, rng, cycle):
    """Starts whichever agent is down and checks everything both hold."""
    if not target.running():
        target.start()
    agent.start()
    check_all(agent, model)
    fio.verify_all()
    model.mirror.ensure()
    model.mirror.retire()
    if cycle % 5 == 4:
        model.mirror.wait_in_sync()
    model.mirror.check(set(model.snapshots) | set(model.maybe_snapshots))
    model.mirror.thin(rng)
    if not fio.ensure_volume():
        raise SystemExit("the agent died with nobody killing it")


def resumed_transfers(data):
    try:
        with open(os.path.join(os.path.dirname(data), "agent.log")) as f:
            return sum(1 for line in f if "mirror sending" in line and "resumed=true" in line)
    except OSError:
        return 0


def main():
    binary, data, cycles, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    rng = random.Random(seed)
    model = Model()
    agent = Agent(binary, data)
    target = Agent(binary, os.path.join(os.path.dirname(data), "target"), "target.log")
    model.mirror = MirrorSoak(agent, target, block_bytes, BLOCK, SIZE)
    model.mirror.rng = random.Random(rng.random())
    model.mirror.versions_so_far = lambda: model.next_version - 1
    fio = FioSoak(agent)
    try:
        run_cycles(binary, data, cycles, rng, model, agent, target, fio)
    finally:
        kill_all([agent, target])


def run_cycles(binary, data, cycles, rng, model, agent, target, fio):
    started = time.time()
    for cycle in range(cycles):
        restart(agent, target, model, fio, rng, cycle)
        stop = threading.Event()
        errors = []

        def guarded(body):
            def run():
                try:
                    body()
                except nbd.Error:
                    pass  # the agent died under it
                except BaseException as e:  # noqa: BLE001
                    errors.append(e)
            t = threading.Thread(target=run)
            t.start()
            return t

        threads = [guarded(lambda: workload(agent, model, random.Random(rng.random()), stop))]
        if rng.random() < 0.5:
            fio_rng = random.Random(rng.random())
            threads.append(guarded(lambda: fio.run(fio_rng, stop.is_set)))
        killer, target_killed = None, []
        if rng.random() < 0.5:
            killer, target_killed = model.mirror.killer(random.Random(rng.random()), stop)
        time.sleep(rng.uniform(0.2, 1.5))
        stop.set()
        agent.kill()
        for t in threads + ([killer] if killer else []):
            t.join()
        if errors:
            raise errors[0]
        model.crashed()
        verify(binary, data, f"the source after cycle {cycle + 1}")
        if target_killed:
            model.mirror.target_kills += 1
            model.mirror.kills_mid_apply += target_killed[0] == "mid-apply"
            verify(binary, target.data, f"the target after cycle {cycle + 1}")
        print(f"cycle {cycle + 1}: {len(model.snapshots)} snapshots, "
              f"{model.next_version - 1} writes so far, "
              f"{len(model.mirror.applied)} snapshots on the target so far", flush=True)
    restart(agent, target, model, fio, rng, 4)
    agent.stop()
    target.stop()
    m = model.mirror
    print(f"SOAK OK: {cycles} kill -9 cycles, {model.next_version - 1} acknowledged writes "
          f"({len(model.patterns)} by qemu-io), {model.counter} snapshots made, "
          f"{model.reverts} rollbacks, {model.clones_made} clones, "
          f"{len(m.applied)} deltas applied on the target ({resumed_transfers(data)} resumed, "
          f"{m.reseeds} mirrors set anew after their base was deleted, "
          f"{m.target_kills} target kills, {m.kills_mid_apply} during an apply, "
          f"{m.syncs_checked} in-sync checks), "
          f"{fio.runs} fio runs with verify ({fio.cut} cut by a kill), "
          f"{fio.verifies} fio verify_only passes, 0 lost, 0 changed, 0 verify findings, "
          f"in {time.time() - started:.0f} s")


def kill_all(agents):
    """A failed run leaves no agent behind."""
    for a in agents:
        if a.running():
            a.kill()


if __name__ == "__main__":
    main()
