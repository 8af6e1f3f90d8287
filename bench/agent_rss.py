#!/usr/bin/env python3
"""Resident memory of multisnap-agent serving a volume with 10 million exceptions.

The store is built by `index_scale --keep` (docs/BENCHMARKS.md section 1: 10M exceptions over
1,000 snapshots, data chunks discarded, metadata real). This script puts that store into an
agent data directory, starts the release agent on it with a given node cache, and drives it
with Debian's fio through NBD:

1. random 4 KiB reads of many snapshots (each walks the on-disk index through the cache);
2. a new snapshot (taken offline before the start, with `multisnap-agent snapshot create`),
   then 4 KiB first writes to the origin, each copying a chunk and inserting an exception
   into the 10M-exception index.

It prints VmRSS and VmHWM (peak) of the agent after start, after the reads and after the
writes, and checks them against the target in docs/BENCHMARKS.md: at most the configured cache + 64 MiB.

    python3 bench/agent_rss.py --store-dir /var/tmp/rss10m/<kept dir> [--agent PATH]

Standard library only. The store directory is not modified except for the new snapshot and
the exceptions the writes add (the agent opens it in place through a hard link).
"""

import argparse
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

from benchnet import free_port, wait_port

MIB = 1 << 20


def rss_mib(pid):
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM"):
                out[k] = int(v.split()[0]) / 1024
    return out["VmRSS"], out["VmHWM"]


def fio(uri_jobs, rw, bs, ios, iodepth):
    """One fio run with a job per (name, uri); returns total IOPS."""
    cmd = ["fio", "--output-format=terse", "--terse-version=3", "--group_reporting"]
    for name, uri in uri_jobs:
        cmd += [f"--name={name}", "--ioengine=nbd", f"--uri={uri}", f"--rw={rw}", f"--bs={bs}",
                f"--iodepth={iodepth}", f"--number_ios={ios}", "--norandommap", "--randrepeat=0"]
    t0 = time.monotonic()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    took = time.monotonic() - t0
    return out, took


def main():
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--store-dir", required=True, help="directory kept by index_scale --keep (origin.img, store.img)")
    ap.add_argument("--agent", help="multisnap-agent binary (default: target/release/multisnap-agent)")
    ap.add_argument("--cache-mib", type=int, default=64)
    ap.add_argument("--read-snapshots", type=int, default=16, help="snapshots read, spread over all")
    ap.add_argument("--reads", type=int, default=200_000, help="4 KiB reads in all")
    ap.add_argument("--writes", type=int, default=8_000,
                    help="4 KiB first writes after the new snapshot (at most the origin's chunk count)")
    ap.add_argument("--work-dir", help="where the data directory goes (default: a temp dir next to the store)")
    args = ap.parse_args()

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    agent = args.agent or os.path.join(os.environ.get("CARGO_TARGET_DIR", os.path.join(root, "target")),
                                       "release", "multisnap-agent")
    store_img = os.path.join(args.store_dir, "store.img")
    if not os.path.exists(store_img):
        raise SystemExit(f"{store_img} not found: build it with index_scale --keep first")
    if shutil.which("fio") is None:
        raise SystemExit("fio not found (apt-get install fio)")

    work = args.work_dir or tempfile.mkdtemp(prefix="agent-rss-", dir=os.path.dirname(os.path.abspath(args.store_dir)))
    vol = os.path.join(work, "data", "volumes", "bench")
    os.makedirs(vol, exist_ok=True)
    link = os.path.join(vol, "store.msnap")
    if not os.path.exists(link):
        os.link(store_img, link)  # the store records its origin's absolute path
    data = os.path.join(work, "data")
    env = {**os.environ, "RUST_LOG": "warn"}

    listing = subprocess.run([agent, "--data-dir", data, "snapshot", "list", "bench"], check=True,
                             capture_output=True, text=True, env=env).stdout
    # Lines of `ID NAME STATE CREATED` after a header.
    names = [line.split()[1] for line in listing.splitlines()[1:] if len(line.split()) >= 2]
    snaps = [n for n in names if n.startswith("s") and n[1:].isdigit()]
    if not snaps:
        raise SystemExit(f"no snapshots listed:\n{listing}")
    probe = f"rss-probe-{int(time.time())}"
    subprocess.run([agent, "--data-dir", data, "snapshot", "create", "bench", probe], check=True, env=env)

    port = free_port()
    cmd = [agent, "--data-dir", data, "--cache-bytes", str(args.cache_mib * MIB),
           "--nbd-listen", f"127.0.0.1:{port}", "--nbd-socket", os.path.join(work, "nbd.sock"),
           "--grpc-listen", f"127.0.0.1:{free_port()}", "--metrics-listen", f"127.0.0.1:{free_port()}"]
    log = open(os.path.join(work, "agent.log"), "ab")
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL, env=env)
    rows = []
    try:
        wait_port(port, proc, timeout=120)
        rows.append(("after start (volume opened)", *rss_mib(proc.pid), f"{time.monotonic() - t0:.1f} s to listen"))

        rng = random.Random(7)
        picked = sorted(rng.sample(snaps, min(args.read_snapshots, len(snaps))), key=lambda n: int(n[1:]))
        per = max(1, args.reads // len(picked))
        jobs = [(n, f"nbd://127.0.0.1:{port}/bench@{n}") for n in picked]
        _, took = fio(jobs, "randread", "4k", per, 8)
        rows.append((f"after {per * len(picked):,} random 4 KiB reads of {len(picked)} snapshots",
                     *rss_mib(proc.pid), f"{per * len(picked) / took:,.0f} reads/s"))

        # One 4 KiB write per 64 KiB chunk (`write:60k` skips 60 KiB after each): every write is
        # the first to its chunk since the new snapshot, so each copies and inserts.
        _, took = fio([("firstwrite", f"nbd://127.0.0.1:{port}/bench")], "write:60k", "4k", args.writes, 16)
        rows.append((f"after {args.writes:,} 4 KiB first writes (copies into the 10M index)",
                     *rss_mib(proc.pid), f"{args.writes / took:,.0f} writes/s"))
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()

    limit = args.cache_mib + 64
    print(f"agent: {agent}\nstore: {store_img} ({len(snaps)} snapshots), node cache {args.cache_mib} MiB\n")
    print("| point | VmRSS | VmHWM (peak so far) | note |")
    print("|---|---:|---:|---|")
    for label, rss, hwm, note in rows:
        print(f"| {label} | {rss:.1f} MiB | {hwm:.1f} MiB | {note} |")
    peak = max(r[2] for r in rows)
    verdict = "met" if peak <= limit else "NOT met"
    print(f"\ntarget: resident memory <= cache + 64 MiB = {limit} MiB; peak {peak:.1f} MiB: {verdict}")
    print(f"data directory kept in {work} (remove it before deleting the store dir)")
    return 0 if peak <= limit else 1


if __name__ == "__main__":
    sys.exit(main())
