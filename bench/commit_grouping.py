#!/usr/bin/env python3
"""How well first writes share commits: an A/B of agent binaries.

For each binary, three times, alternated A B A B: a fresh 1 GiB volume whose first 384 MiB hold
non-zero data, one snapshot (offline), then 6,144 4 KiB first writes (one per 64 KiB chunk, fio's
nbd engine, iodepth 32). Prints IOPS, and from the agent's /metrics the copies, the commits
(writes per commit) and the time spent committing.

    python3 bench/commit_grouping.py before=PATH/multisnap-agent after=target/release/multisnap-agent

Data goes to /var/tmp/commit-ab. Standard library only; needs fio.
"""
import os, re, shutil, subprocess, sys, time, urllib.request

from benchnet import free_port, wait_port


def metric(text, name):
    m = re.search(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+]+)$", text, re.M)
    return float(m.group(1)) if m else float("nan")

def run(agent, d):
    shutil.rmtree(d, ignore_errors=True); os.makedirs(d)
    data = os.path.join(d, "data"); env = {**os.environ, "RUST_LOG": "warn"}
    nbd, grpc, met = free_port(), free_port(), free_port()
    cmd = [agent, "--data-dir", data, "--nbd-listen", f"127.0.0.1:{nbd}", "--nbd-socket", os.path.join(d, "s"),
           "--grpc-listen", f"127.0.0.1:{grpc}", "--metrics-listen", f"127.0.0.1:{met}", "--default-volume-size", str(1 << 30)]
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); wait_port(nbd, p)
    p.terminate(); p.wait()
    with open(os.path.join(data, "volumes", "default", "origin.img"), "r+b") as f:
        block = b"\x5a" * (1 << 20)
        for _ in range(384): f.write(block)
    os.sync()
    subprocess.run([agent, "--data-dir", data, "snapshot", "create", "default", "s1"], env=env, check=True, capture_output=True)
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); wait_port(nbd, p)
    try:
        out = subprocess.run(["fio", "--name=fw", "--ioengine=nbd", f"--uri=nbd://127.0.0.1:{nbd}/default", "--rw=write:60k",
                              "--bs=4k", "--iodepth=32", "--number_ios=6144", "--size=384m", "--output-format=terse",
                              "--terse-version=3"], check=True, capture_output=True, text=True).stdout
        iops = float(out.strip().split(";")[48])
        text = urllib.request.urlopen(f"http://127.0.0.1:{met}/metrics").read().decode()
    finally:
        p.terminate(); p.wait()
    commits = metric(text, "multisnap_commits_total"); copies = metric(text, "multisnap_cow_copies_total")
    secs = metric(text, "multisnap_commit_seconds_total")
    return iops, copies, commits, secs

if len(sys.argv) < 2 or any("=" not in a for a in sys.argv[1:]):
    raise SystemExit(__doc__)
bins = dict(a.split("=", 1) for a in sys.argv[1:])
rows = []
for rep in range(3):
    for name, path in bins.items():
        r = run(path, f"/var/tmp/commit-ab/{name}")
        rows.append((name, *r)); print(name, "IOPS %.0f copies %.0f commits %.0f (%.1f writes/commit) commit s %.2f (%.2f ms each)" % (r[0], r[1], r[2], r[1] / max(r[2], 1), r[3], 1000 * r[3] / max(r[2], 1)), flush=True)
