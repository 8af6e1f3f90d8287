"""fio in the soak: a client that checks its own data. Runs on a volume of its own (`fio`),
over the nbd engine against the agent's NBD socket, beside the soak's other clients, and is
killed with the agent. Each run writes one of SLOTS regions with `verify=crc32c` and
`verify_backlog` (reading back what it wrote as it goes) and flushes at its end; a run that
finished leaves its region to be checked with `--verify_only` after every later restart, a
run the kill cut leaves its region in doubt until a later run writes it whole again.
"""
import subprocess

SLOT_BYTES = 4 << 20
SLOTS = 4
BAD = ("verify: bad", "verify failed", "bad magic", "bad header")


class FioSoak:
    def __init__(self, agent):
        self.agent = agent
        self.done = {}  # slot -> randseed of the run that wrote it whole and flushed
        self.runs = 0
        self.cut = 0
        self.verifies = 0

    def ensure_volume(self):
        """The `fio` volume; False when the agent died under the call."""
        volumes = self.agent.call("VolumeService/ListVolumes", {})
        if volumes is None:
            return False
        if "fio" in {v["name"] for v in volumes.get("volumes", [])}:
            return True
        return self.agent.call("VolumeService/CreateVolume",
                               {"name": "fio", "size_bytes": SLOTS * SLOT_BYTES}) is not None

    def args(self, slot, seed):
        return ["fio", "--name=soak", "--ioengine=nbd", f"--uri={self.agent.uri('fio')}",
                "--rw=randwrite", "--bs=4k", f"--offset={slot * SLOT_BYTES}",
                f"--size={SLOT_BYTES}", "--iodepth=8", "--verify=crc32c", "--do_verify=1",
                "--verify_fatal=1", f"--randseed={seed}", "--end_fsync=1",
                "--verify_state_save=0"]

    def run(self, rng, agent_killed):
        """One run; `agent_killed()` says whether a failure is the kill's."""
        slot = rng.randrange(SLOTS)
        seed = rng.randrange(1, 1 << 30)
        self.done.pop(slot, None)
        out = subprocess.run(self.args(slot, seed) + ["--verify_backlog=64"],
                             capture_output=True, text=True)
        text = out.stdout + out.stderr
        if any(b in text for b in BAD):
            raise SystemExit(f"MISMATCH fio's own verify failed on slot {slot}:\n{text}")
        if out.returncode == 0:
            self.done[slot] = seed
            self.runs += 1
        elif agent_killed():
            self.cut += 1
        else:
            raise SystemExit(f"fio failed with the agent up:\n{text}")

    def verify_all(self):
        """After a restart: every region a finished run wrote reads as fio wrote it. Without
        `verify_backlog`: with it, fio 3.33's `--verify_only` reads the region and checks
        nothing (a block changed behind its back passed)."""
        for slot, seed in sorted(self.done.items()):
            out = subprocess.run(self.args(slot, seed) + ["--verify_only"],
                                 capture_output=True, text=True)
            if out.returncode != 0 or any(b in out.stdout + out.stderr for b in BAD):
                raise SystemExit(f"MISMATCH fio --verify_only of slot {slot} (seed {seed}):\n"
                                 f"{out.stdout}{out.stderr}")
            self.verifies += 1
