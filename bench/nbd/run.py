#!/usr/bin/env python3
"""NBD-level benchmark: the same fio jobs against the raw file, `nbdkit file`, multisnap-agent
and qemu-nbd serving qcow2, with 0..N snapshots each. Python 3 standard library only.

    python3 bench/nbd/run.py --quick          # a few minutes
    python3 bench/nbd/run.py                  # the full run recorded in docs/BENCHMARKS.md

See docs/BENCHMARKS.md section 5 for the method. In short, for every repetition, for every
target, forward in even repetitions and backward in odd ones (so runs of different targets
alternate, no target always runs right after the same one, and machine drift spreads over all
of them):

1. the image is made from one seed file full of non-zero data (so copy-on-write really copies);
2. N snapshots are taken with the server stopped (`multisnap-agent snapshot create`,
   `qemu-img snapshot -c`), timed;
3. the server starts and the jobs run, each against its own region of the volume:
   - 4k-write-first: 4 KiB writes, iodepth 32, one in each 64 KiB block of its region (fio
     `rw=write:60k`), so each is the first write to its 64 KiB chunk/cluster since the
     snapshots: every write pays a copy-on-write;
   - 4k-write-over: the same writes again (already copied: no copy-on-write), pass after pass
     for a fixed time (--over-runtime); with N > 0 snapshots, multisnap's run alternates
     A B B A with the same job against a volume without snapshots (a second agent), which the
     target "overwrite >= 0.9x N = 0" is judged against;
   - seqwrite-1M: 1 MiB sequential writes, iodepth 32, first writes to their region;
   - each write job twice, with no flush and with a flush every 32 writes (`+fsync32`);
   - 4k-randwrite+fsync32: a database-like job, 4 KiB random writes over a span of its own
     (64 MiB, past the other regions: no other job writes there), a flush every 32 writes,
     iodepth 32, timed after a warm-up (10 s after 3 s); with N = 1 the snapshot was taken
     after the span was filled, so the run mixes first writes and overwrites;
   - randread-snap / randread-origin: 4 KiB random reads, iodepth 32, of the newest snapshot
     and of the origin, in A B B A order, each run after an untimed sequential pass over the
     same view (so both read from the page cache, whatever the host evicted meanwhile).
With --xfs (on by default where this machine can), multisnap and qemu-nbd at N = 0 and 1 run
the first-write, sequential and random flush jobs again with every image on an XFS made for
the run on a loop device (reflink on): what copy_file_range can share there, it shares.
Medians over the repetitions are reported with the ratios multisnap / qemu-nbd and
multisnap / nbdkit, pair by pair, and checked against the targets in docs/BENCHMARKS.md.
"""

import argparse
import json
import mmap
import os
import shutil
import shlex
import signal
import statistics
import subprocess
import sys
import time

KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
# 4 KiB writes land on distinct blocks of this size: qcow2's default cluster and multisnap's
# default chunk, so every "first" write pays one copy-on-write on both engines.
COW_GRAIN = 64 * KiB
QD = 32
SYNC_EVERY = 32
# The random flush-heavy job's span, past the regions of the other jobs.
RAND_SPAN = 64 * MiB

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.dirname(HERE))
from benchnet import free_port, wait_port  # noqa: E402  (bench/, one level up)


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def parse_size(s):
    s = s.strip().upper().removesuffix("IB").removesuffix("B")
    mult = {"K": KiB, "M": MiB, "G": GiB, "T": 1 << 40}
    if s and s[-1] in mult:
        return int(float(s[:-1]) * mult[s[-1]])
    return int(s)


def fmt_size(n):
    for unit, div in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= div and n % div == 0:
            return f"{n // div} {unit}"
    return f"{n} B"


def load1():
    return os.getloadavg()[0]


def run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({r.returncode}): {r.stderr.strip()}")
    return r


class Server:
    """A server process whose output goes to a log file; stopped with SIGTERM."""

    def __init__(self, cmd, logfile, port, what):
        self.what = what
        self.log = open(logfile, "ab")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=self.log, stdin=subprocess.DEVNULL)
        try:
            wait_port(port, self.proc, what)
        except Exception:
            self.stop()
            raise

    def rss_kib(self):
        """(VmRSS, VmHWM) in KiB, read from /proc."""
        out = {}
        try:
            with open(f"/proc/{self.proc.pid}/status") as f:
                for line in f:
                    k, _, v = line.partition(":")
                    if k in ("VmRSS", "VmHWM"):
                        out[k] = int(v.split()[0])
        except OSError:
            pass
        return out.get("VmRSS"), out.get("VmHWM")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=300)
            except subprocess.TimeoutExpired:
                # A full run once lost a qemu-nbd that took more than 120 s to exit (1,000
                # snapshots, writeback): say so, and let the run go on.
                log(f"WARNING: {self.what} still running 300 s after SIGTERM; killed")
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        # SIGTERM is the documented clean stop for all three servers.
        if self.proc.returncode not in (0, -signal.SIGTERM):
            log(f"WARNING: {self.what} exited with {self.proc.returncode} (see {self.log.name})")


# ---------------------------------------------------------------------------------------------
# Targets. Each makes its image from the seed, takes its snapshots, serves, and says how fio
# addresses the origin (and the newest snapshot).


class Target:
    kind = ""
    snaps = None  # number of snapshots, None where the target has no snapshots
    fs = "host"  # where its images live: the work directory's filesystem, or "xfs" (LoopXfs)

    def __init__(self, ctx):
        self.ctx = ctx
        base = ctx.xfs_work if self.fs == "xfs" else ctx.work
        self.dir = os.path.join(base, self.label().replace("/", "_").replace(" ", "_"))
        self.snap_seconds = None
        self.server = None
        self.peak_rss_kib = None

    def label(self):
        raise NotImplementedError

    def on_fs(self):
        """The label's suffix naming the filesystem, for targets on the run's XFS."""
        return " on xfs" if self.fs == "xfs" else ""

    def jobs(self):
        """The jobs run against this target: on XFS, only the ones whose copies it changes;
        only those of --jobs when given."""
        jobs = XFS_JOBS if self.fs == "xfs" else JOBS
        return [j for j in jobs if not self.ctx.args.jobs or j in self.ctx.args.jobs]

    def prepare(self):
        """Image from the seed and snapshots; server stopped."""

    def start(self):
        pass

    def stop(self):
        if self.server:
            _, hwm = self.server.rss_kib()
            if hwm:
                self.peak_rss_kib = max(self.peak_rss_kib or 0, hwm)
            self.server.stop()
            self.server = None

    def fio_target(self, view):
        """fio arguments addressing `view` ('origin' or 'snapshot')."""
        raise NotImplementedError

    def with_snapshot_view(self, fn):
        """Runs fn() while the newest snapshot is being served."""
        return fn()

    def has_reference(self):
        """Whether a volume without snapshots is served beside this one (multisnap only)."""
        return False

    def cleanup(self):
        shutil.rmtree(self.dir, ignore_errors=True)

    def copy_seed(self, dst):
        # A plain copy: the image starts fully allocated with the seed's non-zero bytes.
        shutil.copyfile(self.ctx.seed, dst)


class RawTarget(Target):
    kind = "raw"

    def __init__(self, ctx, direct):
        self.direct = direct
        super().__init__(ctx)

    def label(self):
        return "raw file (io_uring, O_DIRECT)" if self.direct else "raw file (io_uring, buffered)"

    def prepare(self):
        os.makedirs(self.dir, exist_ok=True)
        self.path = os.path.join(self.dir, "raw.img")
        self.copy_seed(self.path)

    def fio_target(self, view):
        args = ["--ioengine=io_uring", f"--filename={self.path}", f"--direct={int(self.direct)}"]
        return args


class NbdkitTarget(Target):
    kind = "nbdkit"

    def label(self):
        return "nbdkit file"

    def prepare(self):
        os.makedirs(self.dir, exist_ok=True)
        self.path = os.path.join(self.dir, "raw.img")
        self.copy_seed(self.path)

    def start(self):
        self.port = free_port()
        # The file plugin's default cache mode: the page cache, like multisnap-agent.
        cmd = ["nbdkit", "-f", "--exit-with-parent", "-i", "127.0.0.1", "-p", str(self.port),
               "file", self.path]
        self.server = Server(cmd, os.path.join(self.dir, "nbdkit.log"), self.port, "nbdkit")

    def fio_target(self, view):
        return ["--ioengine=nbd", f"--uri=nbd://127.0.0.1:{self.port}/"]


class MultisnapTarget(Target):
    kind = "multisnap"

    def __init__(self, ctx, snaps, chunk, fs="host", copy_out="kernel", origin_cache="buffered"):
        self.snaps, self.chunk, self.fs, self.copy_out = snaps, chunk, fs, copy_out
        self.origin_cache = origin_cache
        self.ref_server = None
        super().__init__(ctx)

    def label(self):
        chunk = "" if self.chunk == COW_GRAIN and len(self.ctx.args.chunk_sizes) == 1 else f", chunk {fmt_size(self.chunk)}"
        # The agent's default (kernel) is unnamed, so labels match runs of older agents.
        copy = "" if self.copy_out == "kernel" else f", copy-out {self.copy_out}"
        # Likewise the default origin cache (buffered).
        cache = "" if self.origin_cache == "buffered" else f", origin {self.origin_cache}"
        return f"multisnap N={self.snaps}{chunk}{copy}{cache}{self.on_fs()}"

    def agent_cmd(self, *extra, data="data"):
        copy = [] if self.copy_out == "kernel" else ["--copy-out", self.copy_out]
        # Only the first start, which makes the volume, reads it; later starts ignore it.
        cache = [] if self.origin_cache == "buffered" else ["--default-origin-cache", self.origin_cache]
        return [self.ctx.agent, "--data-dir", os.path.join(self.dir, data), *copy, *cache, *extra]

    def has_reference(self):
        """With snapshots, a second agent serves a volume without any, made the same way, so
        the overwrite jobs can be run against both in A B B A order (see run_target)."""
        return bool(self.snaps) and self.ctx.args.overwrite_reference and "4k-write-over" in self.jobs()

    def make_volume(self, data):
        # The agent makes volume `default` (origin + store) on its first start.
        server = self.start_agent(data)
        server.stop()
        origin = os.path.join(self.dir, data, "volumes", "default", "origin.img")
        # With no snapshot yet, filling the origin offline is the same as writing it over NBD.
        self.copy_seed(origin)

    def prepare(self):
        os.makedirs(self.dir, exist_ok=True)
        self.make_volume("data")
        if self.has_reference():
            self.make_volume("ref")
        os.sync()
        t0 = time.monotonic()
        for i in range(1, self.snaps + 1):
            run(self.agent_cmd("snapshot", "create", "default", f"s{i}"),
                env={**os.environ, "RUST_LOG": "warn"})
        if self.snaps:
            self.snap_seconds = (time.monotonic() - t0) / self.snaps

    def start_agent(self, data):
        port = free_port()
        cmd = self.agent_cmd(
            "--nbd-listen", f"127.0.0.1:{port}",
            "--nbd-socket", os.path.join(self.dir, f"nbd-{data}.sock"),
            "--grpc-listen", f"127.0.0.1:{free_port()}",
            "--metrics-listen", f"127.0.0.1:{free_port()}",
            "--default-volume-size", str(self.ctx.image_size),
            "--default-chunk-size", str(self.chunk),
            data=data,
        )
        server = Server(cmd, os.path.join(self.dir, f"agent-{data}.log"), port, f"multisnap-agent ({data})")
        server.port = port
        return server

    def start(self):
        self.server = self.start_agent("data")
        self.port = self.server.port
        if self.has_reference():
            # Idle except while a reference job runs: it costs the measured agent nothing.
            self.ref_server = self.start_agent("ref")

    def stop(self):
        super().stop()
        if self.ref_server:
            self.ref_server.stop()
            self.ref_server = None

    def fio_target(self, view):
        if view == "reference":
            return ["--ioengine=nbd", f"--uri=nbd://127.0.0.1:{self.ref_server.port}/default"]
        export = "default" if view == "origin" else f"default@s{self.snaps}"
        return ["--ioengine=nbd", f"--uri=nbd://127.0.0.1:{self.port}/{export}"]


class QemuTarget(Target):
    kind = "qemu"

    def __init__(self, ctx, snaps, cache, fs="host"):
        self.snaps, self.cache, self.fs = snaps, cache, fs
        # io_uring where the page cache is bypassed (the configuration); with the page
        # cache, qemu's thread pool is its default and io_uring adds nothing to buffered I/O.
        self.aio = "io_uring" if cache == "none" else "threads"
        self.view = "origin"
        super().__init__(ctx)

    def label(self):
        return f"qemu-nbd N={self.snaps} cache={self.cache}{self.on_fs()}"

    def prepare(self):
        os.makedirs(self.dir, exist_ok=True)
        self.path = os.path.join(self.dir, "img.qcow2")
        # Every cluster allocated and holding the seed's data, like the other targets' images.
        run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", "-o",
             f"cluster_size={COW_GRAIN}", self.ctx.seed, self.path])
        os.sync()
        t0 = time.monotonic()
        for i in range(1, self.snaps + 1):
            run(["qemu-img", "snapshot", "-c", f"s{i}", self.path])
        if self.snaps:
            self.snap_seconds = (time.monotonic() - t0) / self.snaps

    def start(self, snapshot=None):
        self.port = free_port()
        # -t: fio's nbd engine connects twice (once to learn the size), so stay up.
        cmd = ["qemu-nbd", "-f", "qcow2", "-t", "-b", "127.0.0.1", "-p", str(self.port),
               "-x", "img", f"--cache={self.cache}", f"--aio={self.aio}"]
        if snapshot:
            cmd += ["-l", snapshot]
        cmd.append(self.path)
        self.server = Server(cmd, os.path.join(self.dir, "qemu-nbd.log"), self.port, "qemu-nbd")

    def with_snapshot_view(self, fn):
        # A qcow2 image open for writing cannot be opened a second time, so the snapshot is
        # served by its own read-only qemu-nbd (-l) while the writable one is stopped.
        self.stop()
        self.start(snapshot=f"s{self.snaps}")
        try:
            return fn()
        finally:
            self.stop()
            self.start()

    def fio_target(self, view):
        return ["--ioengine=nbd", f"--uri=nbd://127.0.0.1:{self.port}/img"]


# ---------------------------------------------------------------------------------------------
# Jobs


def regions(size, span=0):
    """Disjoint regions of the volume, so each write job writes where no job wrote since the
    snapshots: 3/8 of `size` for each strided-write variant, 1/8 for each sequential one, and
    the random flush job's `span` after `size`."""
    eighth = size // 8
    eighth -= eighth % MiB
    return {
        "rand": (0, 3 * eighth),
        "rand+fsync32": (3 * eighth, 3 * eighth),
        "seq": (6 * eighth, eighth),
        "seq+fsync32": (7 * eighth, eighth),
        "randspan": (size, span),
    }


def settle_before_write(ctx):
    """Before a write job: `sync`, then touch `--warm-memory` bytes of anonymous memory and free
    them.

    A VM that returns its free memory to the host (free page reporting, a balloon) pays a host
    fault on the first touch of every page it gets back, so a job that needs fresh page cache
    (copy-outs into the store, qcow2's new clusters) would measure that instead of the server:
    on machine C (docs/BENCHMARKS.md) 4 KiB first writes after a snapshot ran 2-5x faster with
    the memory touched first. Freed again at once, the pages stay backed until the guest reports
    them again (seconds later), long enough for a job to find them."""
    os.sync()
    size = ctx.warm_memory
    if not size:
        return
    m = mmap.mmap(-1, size)
    piece = b"\1" * MiB
    for at in range(0, size, MiB):
        n = min(MiB, size - at)
        m[at:at + n] = piece[:n]
    m.close()


def fio(ctx, target, view, name, job_args, direction):
    args = target.fio_target(view)
    out = os.path.join(target.dir, f"fio-{name}.json")
    cmd = ["fio", f"--name={name}", "--output-format=json", f"--output={out}",
           f"--iodepth={QD}", "--group_reporting", *args, *job_args]
    load = load1()
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"fio {name} on {target.label()} failed: {r.stderr.strip()[-2000:]}")
    with open(out) as f:
        job = json.load(f)["jobs"][0]
    if job.get("error"):
        raise RuntimeError(f"fio {name} on {target.label()}: error {job['error']}")
    d = job[direction]
    pct = d["clat_ns"].get("percentile", {})
    return {
        "iops": d["iops"],
        "mibs": d["bw_bytes"] / MiB,
        "p99_ms": pct.get("99.000000", 0) / 1e6,
        "ios": d["total_ios"],
        "runtime_ms": d.get("runtime", 0),
        "syncs": job.get("sync", {}).get("total_ios", 0),
        "load": load,
    }


def abba(rep, first, second, run_one):
    """Runs `run_one(view, i)` for the two views in A B B A order (which goes first alternates
    between repetitions); returns {view: [its two results]}. This machine's speed drifts by
    tens of percent over seconds, and A B B A cancels a drift that is linear over the four
    runs."""
    a, b = (first, second) if rep % 2 == 0 else (second, first)
    halves = {first: [], second: []}
    for i, view in enumerate((a, b, b, a)):
        halves[view].append(run_one(view, i))
    return halves


def combine_runs(runs):
    """One figure from runs of the same job: IOPS and MiB/s over their summed runtime, the
    worst p99."""
    secs = sum(r["runtime_ms"] for r in runs) / 1000 or None
    ios = sum(r["ios"] for r in runs)
    return {
        "iops": ios / secs if secs else statistics.mean(r["iops"] for r in runs),
        "mibs": sum(r["mibs"] * r["runtime_ms"] for r in runs) / 1000 / secs if secs
        else statistics.mean(r["mibs"] for r in runs),
        "p99_ms": max(r["p99_ms"] for r in runs),
        "ios": ios,
        "runtime_ms": sum(r["runtime_ms"] for r in runs),
        "syncs": 0,
        "load": runs[0]["load"],
        "parts": [r["iops"] for r in runs],
    }


def run_target(ctx, target, rep):
    """All jobs against one target; returns {job: result}."""
    res = {}
    regs = regions(ctx.size, ctx.rand_span)
    jobs = target.jobs()
    log(f"rep {rep + 1}: {target.label()}: preparing")
    target.prepare()
    target.start()
    try:
        # 4 KiB writes, one in each 64 KiB block of the region: each is the first write to its
        # chunk/cluster since the snapshots. Then the very same writes again (no copies now).
        done = {}
        paired = target.has_reference()
        for phase in ("first", "over"):
            for variant in ("rand", "rand+fsync32"):
                start, length = regs[variant]
                sync = variant.endswith("fsync32")
                name = f"4k-write-{phase}" + ("+fsync32" if sync else "")
                if name not in jobs:
                    continue
                base_args = [f"--rw=write:{COW_GRAIN - 4 * KiB}", "--bs=4k", f"--offset={start}"]
                if sync:
                    base_args.append(f"--fsync={SYNC_EVERY}")
                if phase == "first":
                    settle_before_write(ctx)
                    r = fio(ctx, target, "origin", name,
                            [*base_args, f"--size={length}", f"--runtime={ctx.runtime}"], "write")
                    res[name] = r
                    done.setdefault(variant, r["ios"])
                    if paired:
                        # The reference volume gets the same first pass (no copy: it has no
                        # snapshot), over the blocks the measured pass reached, so both then
                        # overwrite the same blocks, written once before.
                        settle_before_write(ctx)
                        fio(ctx, target, "reference", f"{name}-ref",
                            [*base_args, f"--size={done[variant] * COW_GRAIN}",
                             f"--runtime={ctx.runtime}"], "write")
                    continue
                # Exactly the blocks the first pass reached (it may stop at the runtime cap),
                # pass after pass for a fixed time: one pass takes well under a second at these
                # rates, too short to measure anything but start-up.
                job_args = [*base_args, f"--size={done[variant] * COW_GRAIN}", "--time_based",
                            f"--runtime={ctx.over_runtime}"]
                if not paired:
                    os.sync()
                    res[name] = fio(ctx, target, "origin", name, job_args, "write")
                    continue
                # The overwrite target compares N snapshots with none. Runs of different targets
                # minutes apart differ by up to 30% here (the N = 0 figure alone moved between
                # 39k and 52k in one run), so the volume with N snapshots and one without,
                # served by a second agent, are overwritten A B B A a few seconds apart, like
                # the read jobs; each figure is its two halves summed.

                def over(view, i, name=name, job_args=job_args):
                    os.sync()
                    return fio(ctx, target, view, f"{name}-{view}-{i}", job_args, "write")

                halves = abba(rep, "origin", "reference", over)
                res[name] = combine_runs(halves["origin"])
                res[name + "-ref"] = combine_runs(halves["reference"])
        if RANDOM_JOB in jobs:
            # Timed after a warm-up: with N = 1 the warm-up takes most of the copies (the span
            # has 1,024 chunks), and the figure is what a database sees once it runs.
            start, length = regs["randspan"]
            settle_before_write(ctx)
            res[RANDOM_JOB] = fio(ctx, target, "origin", RANDOM_JOB,
                                  ["--rw=randwrite", "--bs=4k", f"--offset={start}", f"--size={length}",
                                   f"--fsync={SYNC_EVERY}", "--time_based", f"--runtime={ctx.rand_runtime}",
                                   f"--ramp_time={ctx.rand_ramp}"], "write")
        for variant in ("seq", "seq+fsync32"):
            start, length = regs[variant]
            extra = [f"--fsync={SYNC_EVERY}"] if variant.endswith("fsync32") else []
            name = "seqwrite-1M" + ("+fsync32" if extra else "")
            if name not in jobs:
                continue
            settle_before_write(ctx)
            res[name] = fio(ctx, target, "origin", name,
                            ["--rw=write", "--bs=1M", f"--offset={start}", f"--size={length}",
                             f"--runtime={ctx.runtime}", *extra], "write")
        read_args = ["--rw=randread", "--bs=4k", f"--size={ctx.size}", "--time_based",
                     f"--runtime={ctx.read_runtime}"]

        def warm(view, name):
            # One untimed sequential pass first: the read jobs measure the engine from the page
            # cache, whatever the host's memory manager evicted while the writes ran (see
            # docs/BENCHMARKS.md: this machine pages out page cache unused for a minute).
            fio(ctx, target, view, f"warm-{name}",
                ["--rw=read", "--bs=1M", f"--size={ctx.size}"], "read")

        if "randread-origin" not in jobs:
            pass
        elif not target.snaps:
            os.sync()
            warm("origin", "randread-origin")
            res["randread-origin"] = fio(ctx, target, "origin", "randread-origin", read_args, "read")
        else:
            # The two read jobs A B B A (see `abba`), each figure the sum of its two halves.
            # Each run is warmed on the server that serves it (qemu-nbd serves the snapshot
            # from a server of its own, so its caches start cold each time).
            os.sync()

            def read(view, i):
                name = "randread-snap" if view == "snapshot" else "randread-origin"

                def job():
                    warm(view, f"{name}-{i}")
                    return fio(ctx, target, view, f"{name}-{i}", read_args, "read")

                return target.with_snapshot_view(job) if view == "snapshot" else job()

            halves = abba(rep, "snapshot", "origin", read)
            res["randread-snap"] = combine_runs(halves["snapshot"])
            res["randread-origin"] = combine_runs(halves["origin"])
    finally:
        target.stop()
        if not ctx.args.keep:
            target.cleanup()
    return res


RANDOM_JOB = "4k-randwrite+fsync32"
JOBS = [
    "4k-write-first", "4k-write-first+fsync32",
    "4k-write-over", "4k-write-over+fsync32",
    "seqwrite-1M", "seqwrite-1M+fsync32",
    RANDOM_JOB,
    "randread-snap", "randread-origin",
]
# On XFS: the jobs whose copy-on-write a shared extent changes.
XFS_JOBS = [
    "4k-write-first", "4k-write-first+fsync32",
    "seqwrite-1M", "seqwrite-1M+fsync32",
    RANDOM_JOB,
]


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


# ---------------------------------------------------------------------------------------------
# Report


def fnum(x, nd=0):
    if x is None:
        return "–"
    return f"{x:,.{nd}f}"


def ratio(a, b):
    if a is None or not b:
        return None
    return a / b


def paired_ratios(results, label, job_a, job_b):
    """job_a ÷ job_b IOPS of one target, repetition by repetition."""
    out = []
    for rr in results:
        runs = rr.get(label, {})
        if job_a in runs and job_b in runs:
            r = ratio(runs[job_a]["iops"], runs[job_b]["iops"])
            if r is not None:
                out.append(r)
    return out


def report(ctx, results, targets, meta):
    """Markdown: per-job tables, ratios, target checks."""
    out = []
    w = out.append
    # Targets that never ran (the XFS variant where this machine cannot make one) have no rows.
    targets = [t for t in targets if any(t.label() in rr for rr in results)]
    w(f"Run: {meta['date']}, `{meta['command']}`")
    w("")
    if meta.get("xfs"):
        w(f"XFS variant: {meta['xfs']}")
        w("")
    w(f"Volume {fmt_size(ctx.size)}; write regions: random {fmt_size(regions(ctx.size)['rand'][1])} "
      f"each ({regions(ctx.size)['rand'][1] // COW_GRAIN:,} blocks of 64 KiB), sequential "
      f"{fmt_size(regions(ctx.size)['seq'][1])} each, random flush job {fmt_size(ctx.rand_span)} "
      f"({ctx.rand_runtime} s after {ctx.rand_ramp} s); write runtime cap {ctx.runtime} s, overwrites "
      f"{ctx.over_runtime} s, reads {ctx.read_runtime} s; iodepth {QD}; memory touched before each write job "
      f"{fmt_size(ctx.warm_memory) if ctx.warm_memory else 'none'}; {ctx.reps} repetition(s), medians shown. "
      f"Load average (1 min) at start {fnum(meta.get('load_start'), 2)}, end {fnum(meta.get('load_end'), 2)}; "
      f"per-job load is the median of the 1-min load when each run started.")
    w("")
    labels = [t.label() for t in targets]
    med_of = {}
    for lab in labels:
        for job in JOBS:
            runs = [r[lab][job] for r in results if lab in r and job in r[lab]]
            if runs:
                med_of[(lab, job)] = {
                    k: med([x[k] for x in runs]) for k in ("iops", "mibs", "p99_ms", "load")
                } | {"n": len(runs)}
    for job in JOBS:
        rows = [(lab, med_of[(lab, job)]) for lab in labels if (lab, job) in med_of]
        if not rows:
            continue
        w(f"**{job}**")
        w("")
        w("| target | IOPS | MiB/s | p99 ms | runs | load |")
        w("|---|---:|---:|---:|---:|---:|")
        for lab, m in rows:
            w(f"| {lab} | {fnum(m['iops'])} | {fnum(m['mibs'], 1)} | {fnum(m['p99_ms'], 2)} | {m['n']} | {fnum(m['load'], 2)} |")
        w("")

    def iops(lab, job):
        m = med_of.get((lab, job))
        return m["iops"] if m else None

    ms = [t for t in targets if t.kind == "multisnap"]
    qemus = [t for t in targets if t.kind == "qemu"]
    nbdkit = next((t for t in targets if t.kind == "nbdkit"), None)
    w("**Ratios of median IOPS, pair by pair (same N, same job)**")
    w("")
    peers = [(f"÷ qemu {c}", lambda t, c=c: next(
        (q for q in qemus if q.snaps == t.snaps and q.cache == c and q.fs == t.fs), None))
             for c in ctx.args.qemu_cache]
    if nbdkit:
        peers.append(("÷ nbdkit", lambda t: nbdkit if t.fs == nbdkit.fs else None))
    w("| multisnap | job | " + " | ".join(p for p, _ in peers) + " |")
    w("|---|---|" + "---:|" * len(peers))
    for t in ms:
        for job in JOBS:
            cells = []
            for _, peer in peers:
                p = peer(t)
                cells.append(fnum(ratio(iops(t.label(), job), iops(p.label(), job) if p else None), 2))
            if any(c != "–" for c in cells):
                w(f"| {t.label()} | {job} | " + " | ".join(cells) + " |")
    w("")

    # The targets of docs/BENCHMARKS.md.
    w("**Targets**")
    w("")
    w("| target | measured | met? |")
    w("|---|---|---|")
    checks = []
    by_chunk = {}
    for t in ms:
        by_chunk.setdefault((t.chunk, t.fs, t.copy_out, t.origin_cache), {})[t.snaps] = t
    chunks = {c for c, _, _, _ in by_chunk}
    copy_modes = {m for _, _, m, _ in by_chunk}
    cache_modes = {m for _, _, _, m in by_chunk}
    for (chunk, fs, copy_out, origin_cache), by_n in by_chunk.items():
        cs = "" if len(chunks) == 1 else f" (chunk {fmt_size(chunk)})"
        cs += "" if len(copy_modes) == 1 else f" (copy-out {copy_out})"
        cs += "" if len(cache_modes) == 1 else f" (origin {origin_cache})"
        cs += " on xfs" if fs == "xfs" else ""
        first = len(checks)
        peers_of = lambda n: [q for q in qemus if q.snaps == n and q.fs == fs]  # noqa: E731
        base = by_n.get(0)
        for n, t in sorted(by_n.items()):
            if n == 0:
                continue
            for v in ("", "+fsync32"):
                job = "4k-write-over" + v
                of_medians = ratio(iops(t.label(), job), iops(base.label(), job)) if base else None
                paired = paired_ratios(results, t.label(), job, job + "-ref")
                if paired:
                    # Judged, like the reads, on the volume without snapshots overwritten in the
                    # same repetition a few seconds apart (A B B A); the ratio to the N = 0
                    # target's median, run minutes away, is shown beside it.
                    r = med(paired)
                    how = (f"median of {len(paired)} per-repetition ratios, {min(paired):.2f}–{max(paired):.2f}, "
                           if len(paired) > 1 else "")
                    beside = ("" if of_medians is None
                              else f"; ÷ the N=0 target's median {fnum(of_medians, 2)}×")
                    detail = f" ({how}÷ a volume without snapshots overwritten alongside{beside})"
                elif of_medians is not None:
                    r, detail = of_medians, ""
                else:
                    continue
                checks.append((f"overwrite{v} N={n} ≥ 0.9× N=0{cs}", r, 0.9, detail))
        if 1 in by_n and 1000 in by_n:
            for v in ("", "+fsync32"):
                r = ratio(iops(by_n[1000].label(), "4k-write-first" + v), iops(by_n[1].label(), "4k-write-first" + v))
                checks.append((f"first-write{v} N=1000 ≥ 0.9× N=1{cs}", r, 0.9))
        for n, t in sorted(by_n.items()):
            if n in (1, 16, 1000) and base:
                # What a copy-out costs: first writes after a snapshot against the same job on
                # a volume without snapshots, which copies nothing.
                for v in ("", "+fsync32"):
                    job = "4k-write-first" + v
                    r = ratio(iops(t.label(), job), iops(base.label(), job))
                    checks.append((f"first-write{v} N={n} ≥ 0.25× N=0{cs}", r, 0.25))
        for n in (1, 16, 64):
            if n not in by_n:
                continue
            t = by_n[n]
            for q in peers_of(n):
                for job in JOBS[:4]:
                    if job not in t.jobs():
                        continue
                    r = ratio(iops(t.label(), job), iops(q.label(), job))
                    checks.append((f"{job} N={n} ≥ 1.5× qemu cache={q.cache}{cs}", r, 1.5))
                if n == 1:
                    # qcow2 redirects a first write; multisnap copies the old chunk out first.
                    # Where the copy shares extents (XFS) it should cost next to nothing.
                    need = 0.9 if fs == "xfs" else 0.65
                    r = ratio(iops(t.label(), "seqwrite-1M"), iops(q.label(), "seqwrite-1M"))
                    checks.append((f"seqwrite-1M N=1 ≥ {need}× qemu cache={q.cache}{cs}", r, need))
        for n in (0, 1):
            if n in by_n:
                for q in peers_of(n):
                    r = ratio(iops(by_n[n].label(), RANDOM_JOB), iops(q.label(), RANDOM_JOB))
                    checks.append((f"{RANDOM_JOB} N={n} ≥ 1.5× qemu cache={q.cache}{cs}", r, 1.5))
        for n, t in sorted(by_n.items()):
            if n:
                # Judged on the paired ratio: both reads of one repetition run against the same
                # server a few seconds apart, so they share the machine's state of the moment;
                # a ratio of medians may pair an origin run with a snapshot run from another
                # repetition. The ratio of medians and the spread are shown beside it.
                paired = paired_ratios(results, t.label(), "randread-snap", "randread-origin")
                r = med(paired)
                of_medians = ratio(iops(t.label(), "randread-snap"), iops(t.label(), "randread-origin"))
                detail = ""
                if len(paired) > 1:
                    detail = (f" (median of {len(paired)} per-repetition ratios, "
                              f"{min(paired):.2f}–{max(paired):.2f}; ratio of medians {fnum(of_medians, 2)}×)")
                checks.append((f"snapshot read N={n} ≥ 0.9× origin read{cs}", r, 0.9, detail))
        if fs == "xfs":
            # The XFS variant runs a few jobs only: no row for the ones it does not run.
            checks[first:] = [c for c in checks[first:] if c[1] is not None]
    for what, r, need, *detail in checks:
        w(f"| {what} | {fnum(r, 2)}×{''.join(detail)} | {'–' if r is None else ('yes' if r >= need else '**no**')} |")
    w("")

    w("**Snapshot creation (server stopped) and server memory**")
    w("")
    w("| target | time per snapshot (ms, median) | peak RSS (MiB, max over runs) |")
    w("|---|---:|---:|")
    for t in targets:
        if t.kind in ("multisnap", "qemu", "nbdkit"):
            snap = med([m["snap_seconds"] for m in meta["per_target"].get(t.label(), []) if m["snap_seconds"]])
            rss = [m["peak_rss_kib"] for m in meta["per_target"].get(t.label(), []) if m["peak_rss_kib"]]
            w(f"| {t.label()} | {fnum(snap * 1000 if snap else None, 1)} | {fnum(max(rss) / 1024 if rss else None, 1)} |")
    w("")
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------


def make_seed(path, size):
    """A file of `size` non-zero, non-repeating-per-MiB bytes (no zero detection can skip it)."""
    block = bytearray(os.urandom(MiB))
    with open(path, "wb") as f:
        for i in range(size // MiB):
            block[:8] = i.to_bytes(8, "little")
            f.write(block)
        rest = size % MiB
        if rest:
            f.write(block[:rest])


def build_agent():
    log("building multisnap-agent (release)")
    subprocess.run(["cargo", "build", "--release", "-q", "-p", "multisnap-agent"], cwd=REPO, check=True)
    meta = json.loads(run(["cargo", "metadata", "--format-version", "1", "--no-deps"], cwd=REPO).stdout)
    return os.path.join(meta["target_directory"], "release", "multisnap-agent")


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small volume, short runs, N in 0,1,64,1000, 1 repetition: a few minutes")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, N in 0,1: checks the harness works (CI)")
    ap.add_argument("--size", type=parse_size, help="volume size (default 1G; quick 512M)")
    ap.add_argument("--runtime", type=int, help="cap on each write job, seconds (default 10; quick 5)")
    ap.add_argument("--read-runtime", type=int, help="each read job, seconds (default 5; quick 3)")
    ap.add_argument("--over-runtime", type=int,
                    help="each overwrite job, seconds, repeating the first pass's writes (default 5; quick 3)")
    ap.add_argument("--reps", type=int, help="repetitions (default 3; quick 1); medians are reported")
    ap.add_argument("--snapshots", help="comma-separated snapshot counts (default 0,1,16,64,1000)")
    ap.add_argument("--chunk-sizes", default="64K", help="multisnap chunk sizes to run, comma-separated (default 64K)")
    ap.add_argument("--qemu-snapshots",
                    help="snapshot counts at which qemu-nbd runs, comma-separated (default: those of "
                         "--snapshots; no target needs qemu-nbd at 1000, where it takes minutes to exit)")
    ap.add_argument("--no-overwrite-reference", dest="overwrite_reference", action="store_false",
                    help="judge overwrites at N snapshots against the N=0 target's median only, without "
                         "a volume without snapshots overwritten alongside (A B B A)")
    ap.add_argument("--qemu-cache", help="qemu-nbd cache modes, comma-separated: writeback,none (default both; quick writeback)")
    ap.add_argument("--targets", default="raw,raw-direct,nbdkit,multisnap,qemu", help="which targets to run")
    ap.add_argument("--xfs", choices=("auto", "off", "only"), default="auto",
                    help="the XFS variant: multisnap and qemu-nbd again with their images on an XFS made on a "
                         "loop device (auto: where this machine can, else the report says why not; only: "
                         "nothing else)")
    ap.add_argument("--copy-out", default="kernel",
                    help="the agent's --copy-out modes to run, comma-separated: kernel (its default: "
                         "copy_file_range where origin and store share a filesystem), memory (read and "
                         "write); both side by side compare them in one run")
    ap.add_argument("--origin-cache", default="buffered",
                    help="how the agent's volume opens its origin, comma-separated: buffered (the default) "
                         "or direct (O_DIRECT, like qemu-nbd cache=none)")
    ap.add_argument("--direct-snapshots",
                    help="snapshot counts at which --origin-cache direct runs, comma-separated (default: "
                         "every count of the run); the buffered origin runs at all of them")
    ap.add_argument("--jobs", help="run only these jobs, comma-separated (an overwrite job brings its "
                                   "first-write pass along)")
    ap.add_argument("--xfs-snapshots",
                    help="snapshot counts of the XFS variant, comma-separated (default 0,1; smoke 1)")
    ap.add_argument("--rand-span", type=parse_size, help="the random flush job's span (default 64M; smoke 8M)")
    ap.add_argument("--rand-runtime", type=int, help="the random flush job's timed seconds (default 10; quick 5)")
    ap.add_argument("--rand-ramp", type=int, help="its untimed warm-up before, seconds (default 3; quick 2)")
    ap.add_argument("--warm-memory", type=parse_size,
                    help="anonymous memory touched and freed before every write job, so its fresh page "
                         "cache does not pay a VM's host faults (default: twice the image size; 0: none)")
    ap.add_argument("--agent", help="multisnap-agent binary (default: cargo build --release)")
    ap.add_argument("--work-dir", help="where images go (default: a new dir under /var/tmp)")
    ap.add_argument("--keep", action="store_true", help="keep images and fio outputs")
    ap.add_argument("--out-md", help="also write the Markdown report here")
    ap.add_argument("--out-json", help="write every run's figures here")
    ap.add_argument("--report-from", metavar="JSON",
                    help="run nothing: print the report of an earlier run's --out-json file (also of an "
                         "interrupted run), with this version's tables and target checks")
    args = ap.parse_args(argv)

    if args.smoke:
        dflt = dict(size=32 * MiB, runtime=1, read_runtime=1, over_runtime=1, reps=1, snapshots="0,1", qemu_cache="writeback",
                    rand_span=8 * MiB, rand_runtime=1, rand_ramp=0, xfs_snapshots="1")
    elif args.quick:
        dflt = dict(size=512 * MiB, runtime=5, read_runtime=3, over_runtime=3, reps=1, snapshots="0,1,64,1000", qemu_cache="writeback",
                    rand_span=RAND_SPAN, rand_runtime=5, rand_ramp=2, xfs_snapshots="0,1")
    else:
        dflt = dict(size=1 * GiB, runtime=10, read_runtime=5, over_runtime=5, reps=3, snapshots="0,1,16,64,1000", qemu_cache="writeback,none",
                    rand_span=RAND_SPAN, rand_runtime=10, rand_ramp=3, xfs_snapshots="0,1")
    for k, v in dflt.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.snapshots = [int(x) for x in args.snapshots.split(",")]
    args.qemu_snapshots = (args.snapshots if args.qemu_snapshots is None
                           else [int(x) for x in args.qemu_snapshots.split(",")])
    args.chunk_sizes = [parse_size(x) for x in args.chunk_sizes.split(",")]
    args.xfs_snapshots = [int(x) for x in args.xfs_snapshots.split(",")]
    args.copy_out = [x.strip() for x in args.copy_out.split(",") if x.strip()]
    if not args.copy_out or any(x not in ("kernel", "memory") for x in args.copy_out):
        ap.error("--copy-out takes kernel, memory or both")
    args.origin_cache = [x.strip() for x in args.origin_cache.split(",") if x.strip()]
    if not args.origin_cache or any(x not in ("buffered", "direct") for x in args.origin_cache):
        ap.error("--origin-cache takes buffered, direct or both")
    if args.direct_snapshots is not None:
        args.direct_snapshots = {int(x) for x in args.direct_snapshots.split(",") if x.strip()}
    if args.jobs:
        args.jobs = {x.strip() for x in args.jobs.split(",") if x.strip()}
        unknown = args.jobs - set(JOBS)
        if unknown:
            ap.error(f"--jobs: unknown {', '.join(sorted(unknown))}; the jobs are {', '.join(JOBS)}")
        args.jobs |= {j.replace("-over", "-first") for j in args.jobs if "-over" in j}
    args.qemu_cache = [x.strip() for x in args.qemu_cache.split(",") if x.strip()]
    if args.size % (8 * MiB):
        ap.error("--size must be a multiple of 8 MiB")
    if args.rand_span % MiB or args.rand_span <= 0:
        ap.error("--rand-span must be a positive multiple of 1 MiB")
    return args


class Ctx:
    def __init__(self, args):
        self.args = args
        self.size, self.runtime, self.read_runtime, self.reps = args.size, args.runtime, args.read_runtime, args.reps
        self.over_runtime = args.over_runtime
        self.rand_span, self.rand_runtime, self.rand_ramp = args.rand_span, args.rand_runtime, args.rand_ramp
        # Every image holds the volume and, past it, the random flush job's span.
        self.image_size = self.size + self.rand_span
        self.warm_memory = 2 * self.image_size if args.warm_memory is None else args.warm_memory
        self.work = args.work_dir or os.path.join("/var/tmp", f"multisnap-nbd-bench-{os.getpid()}")
        self.seed = os.path.join(self.work, "seed.img")
        self.xfs_work = os.path.join(self.work, "xfs-mnt")


def make_targets(ctx):
    """Every target of the run, in the order each repetition runs them."""
    args = ctx.args
    wanted = {x.strip() for x in args.targets.split(",")}
    targets = []
    host = args.xfs != "only"
    if "raw" in wanted and host:
        targets.append(RawTarget(ctx, direct=False))
    if "raw-direct" in wanted and host:
        targets.append(RawTarget(ctx, direct=True))
    if "nbdkit" in wanted and host:
        targets.append(NbdkitTarget(ctx))
    filesystems = (["host"] if host else []) + (["xfs"] if args.xfs != "off" else [])
    for fs in filesystems:
        for n in args.snapshots if fs == "host" else args.xfs_snapshots:
            if "multisnap" in wanted:
                for c in args.chunk_sizes:
                    for copy_out in args.copy_out:
                        for cache in args.origin_cache:
                            if (cache == "direct" and args.direct_snapshots is not None
                                    and n not in args.direct_snapshots):
                                continue
                            targets.append(MultisnapTarget(ctx, n, c, fs, copy_out, cache))
            if "qemu" in wanted and (n in args.qemu_snapshots or fs == "xfs"):
                for c in args.qemu_cache:
                    targets.append(QemuTarget(ctx, n, c, fs))
    return targets


class LoopXfs:
    """An XFS with reflink on, made for the run on a loop device over a sparse file in the work
    directory and mounted at `ctx.xfs_work`; `unavailable()` says why this machine cannot."""

    def __init__(self, ctx):
        self.mnt = ctx.xfs_work
        self.image = os.path.join(ctx.work, "xfs.img")
        # Room for the largest target at once: a multisnap origin and store beside a reference
        # volume's, with the store filled by copies (XFS refuses less than 300 MB).
        self.size = max(512 * MiB, 5 * ctx.image_size)
        self.dev = None

    @staticmethod
    def unavailable():
        if os.geteuid() != 0:
            return "making a loop device needs root"
        missing = [t for t in ("losetup", "mkfs.xfs", "mount", "umount") if not shutil.which(t)]
        if missing:
            return f"{', '.join(missing)} not installed (bash .ci/install-deps installs xfsprogs)"
        if not os.path.exists("/dev/loop-control"):
            return "no loop device support here (/dev/loop-control is missing)"
        return None

    def mount(self):
        """Makes and mounts the filesystem; returns why not, or None."""
        why = self.unavailable()
        if why:
            return why
        with open(self.image, "wb") as f:
            f.truncate(self.size)
        try:
            self.dev = run(["losetup", "--find", "--show", self.image]).stdout.strip()
            run(["mkfs.xfs", "-q", "-f", "-m", "reflink=1", self.dev])
            os.makedirs(self.mnt, exist_ok=True)
            run(["mount", self.dev, self.mnt])
        except RuntimeError as e:
            self.unmount()
            return f"could not make it ({e})"
        return None

    def unmount(self):
        if self.dev:
            subprocess.run(["umount", self.mnt], capture_output=True)
            subprocess.run(["losetup", "-d", self.dev], capture_output=True)
            self.dev = None


def report_from(path, out_md):
    """The report of a saved run, rebuilt from the arguments it recorded."""
    with open(path) as f:
        data = json.load(f)
    if not isinstance(data, dict) or "meta" not in data or "runs" not in data:
        raise SystemExit(f"{path}: not a file written by --out-json (no meta and runs)")
    meta = data["meta"]
    # Runs saved before "argv" was recorded have only the command line.
    argv = meta.get("argv") or shlex.split(meta["command"])[2:]
    ctx = Ctx(parse_args(argv))
    md = report(ctx, data["runs"], make_targets(ctx), meta)
    print(md)
    if out_md:
        with open(out_md, "w") as f:
            f.write(md + "\n")
    return 0


def main():
    args = parse_args(sys.argv[1:])
    if args.report_from:
        return report_from(args.report_from, args.out_md)

    missing = [t for t in ("fio", "nbdkit", "qemu-nbd", "qemu-img") if not shutil.which(t)]
    if missing:
        print(f"SKIP: {', '.join(missing)} not installed (bash .ci/install-deps installs them)")
        return 0

    ctx = Ctx(args)
    ctx.agent = args.agent or build_agent()
    os.makedirs(ctx.work, exist_ok=True)
    targets = make_targets(ctx)

    cmdline = "python3 bench/nbd/run.py " + " ".join(sys.argv[1:])
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "command": cmdline.strip(), "argv": sys.argv[1:],
            "load_start": load1(), "per_target": {}}
    log(f"seed image {fmt_size(ctx.image_size)} in {ctx.work}")
    make_seed(ctx.seed, ctx.image_size)
    results = []
    xfs = LoopXfs(ctx)
    if any(t.fs == "xfs" for t in targets):
        why = xfs.mount()
        if why:
            log(f"SKIP the XFS variant: {why}")
            meta["xfs"] = f"skipped: {why}"
            targets = [t for t in targets if t.fs != "xfs"]
        else:
            meta["xfs"] = f"an XFS of {fmt_size(xfs.size)} (reflink=1) on {xfs.dev}, mounted for the run"
    try:
        for rep in range(ctx.reps):
            rr = {}
            results.append(rr)
            # Forward in even repetitions, backward in odd ones: a target's position in the run
            # (right after nbdkit, or after a long qemu-nbd run) is spread over both ends, and
            # a drift over the whole run cancels between pairs of repetitions.
            for t in (targets if rep % 2 == 0 else targets[::-1]):
                try:
                    rr[t.label()] = run_target(ctx, t, rep)
                except Exception as e:  # one broken run must not throw away the others
                    log(f"ERROR: rep {rep + 1}, {t.label()}: {e}")
                    if args.smoke:
                        raise
                    continue
                meta["per_target"].setdefault(t.label(), []).append(
                    {"snap_seconds": t.snap_seconds, "peak_rss_kib": t.peak_rss_kib})
                t.peak_rss_kib = None
                r = rr[t.label()]
                log("  " + ", ".join(f"{j} {r[j]['iops']:,.0f}" for j in JOBS if j in r))
                if args.out_json:
                    # Written after every target, so an interrupted run keeps what it measured.
                    with open(args.out_json, "w") as f:
                        json.dump({"meta": meta, "runs": results}, f, indent=1)
    finally:
        xfs.unmount()
        if not args.keep:
            shutil.rmtree(ctx.work, ignore_errors=True)
    meta["load_end"] = load1()
    md = report(ctx, results, targets, meta)
    print(md)
    if args.out_md:
        with open(args.out_md, "w") as f:
            f.write(md + "\n")
    if args.out_json:
        with open(args.out_json, "w") as f:
            json.dump({"meta": meta, "runs": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
