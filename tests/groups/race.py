"""Writers racing group snapshot cuts, over NBD with libnbd.

Usage: race.py CLI ENDPOINT NBD_SOCKET VOL1 VOL2 ROUNDS

Each writer thread owns SLOTS slots of 8 bytes, one per 64 KiB chunk (so the writes keep
copying chunks out for the snapshots), and writes increasing sequence numbers: seq n goes to
slot n % SLOTS of VOL1, acknowledged, then to the same slot of VOL2, acknowledged, then n+1.
Meanwhile the group `race-N` of VOL1 and VOL2 is cut with the `multisnap` CLI at a random
moment. Reading both members back over NBD, for every writer, with s1 and s2 the highest
sequence number in VOL1's and VOL2's member:

    acked_before <= s2 <= s1 <= s2 + 1 <= started_by_return + 1

acked_before: the last seq acknowledged on VOL2 before the call was issued (it must be in
every member); started_by_return: the last seq whose VOL1 write had started when the call
returned (nothing later may be in any member). s1 == s2 + 1 is the cut falling between a
seq's two writes, the one write in flight the order allows. Each round's group is deleted
after it is checked. Prints one JSON line of counts; exits 1 on the first violation.
"""

import json
import random
import struct
import subprocess
import sys
import threading
import time

import nbd

CHUNK = 64 * 1024
SLOTS = 64
WRITERS = 2


def uri(socket, export):
    return f"nbd+unix:///{export}?socket={socket}"


class Writer(threading.Thread):
    def __init__(self, index, socket, vol1, vol2):
        super().__init__(daemon=True)
        self.base = index * SLOTS * CHUNK
        self.h1, self.h2 = nbd.NBD(), nbd.NBD()
        self.h1.connect_uri(uri(socket, vol1))
        self.h2.connect_uri(uri(socket, vol2))
        self.lock = threading.Lock()
        self.started = 0  # highest seq whose VOL1 write has begun
        self.acked = 0  # highest seq acknowledged on both volumes
        self.stop = threading.Event()
        self.seq = 0

    def offset(self, seq):
        return self.base + (seq % SLOTS) * CHUNK

    def run(self):
        while not self.stop.is_set():
            self.seq += 1
            data = struct.pack("<Q", self.seq) * 64
            with self.lock:
                self.started = self.seq
            self.h1.pwrite(data, self.offset(self.seq))
            self.h2.pwrite(data, self.offset(self.seq))
            with self.lock:
                self.acked = self.seq

    def snapshot(self):
        with self.lock:
            return self.started, self.acked


def highest(socket, export, writer_index):
    h = nbd.NBD()
    h.connect_uri(uri(socket, export))
    base = writer_index * SLOTS * CHUNK
    top = 0
    for slot in range(SLOTS):
        (seq,) = struct.unpack("<Q", h.pread(8, base + slot * CHUNK))
        top = max(top, seq)
    h.shutdown()
    return top


def main():
    cli, endpoint, socket, vol1, vol2, rounds = sys.argv[1:7]
    rounds = int(rounds)
    rng = random.Random(2026)
    writers = [Writer(i, socket, vol1, vol2) for i in range(WRITERS)]
    for w in writers:
        w.start()
    counts = {"rounds": 0, "checks": 0, "in_flight": 0, "equal": 0, "cut_ms_max": 0.0}
    for r in range(rounds):
        time.sleep(rng.uniform(0.002, 0.05))
        before = [w.snapshot()[1] for w in writers]
        name = f"race-{r}"
        t0 = time.monotonic()
        out = subprocess.run(
            [cli, "--endpoint", endpoint, "snapshot", "group", "create", name, vol1, vol2],
            capture_output=True, text=True,
        )
        counts["cut_ms_max"] = max(counts["cut_ms_max"], (time.monotonic() - t0) * 1000)
        after = [w.snapshot()[0] for w in writers]
        if out.returncode != 0:
            print(f"group create failed: {out.stderr}", file=sys.stderr)
            sys.exit(1)
        for i in range(WRITERS):
            s1 = highest(socket, f"{vol1}@{name}", i)
            s2 = highest(socket, f"{vol2}@{name}", i)
            ok = before[i] <= s2 <= s1 <= s2 + 1 and s1 <= after[i]
            if not ok:
                print(
                    f"round {r} writer {i}: acked_before={before[i]} s2={s2} s1={s1} "
                    f"started_by_return={after[i]}",
                    file=sys.stderr,
                )
                sys.exit(1)
            counts["checks"] += 1
            counts["in_flight" if s1 == s2 + 1 else "equal"] += 1
        subprocess.run(
            [cli, "--endpoint", endpoint, "snapshot", "group", "delete", name],
            check=True, capture_output=True,
        )
        counts["rounds"] += 1
    for w in writers:
        w.stop.set()
    for w in writers:
        w.join()
    counts["seqs_written"] = sum(w.seq for w in writers)
    print(json.dumps(counts))


if __name__ == "__main__":
    main()
