#!/usr/bin/python3
"""A passthrough FUSE filesystem that fails chosen operations, for the agent's disk-fault
tests. Everything under MOUNTPOINT is BACKING_DIR, except that reads, writes and fsyncs of
files whose name is a fault's `file` fail with the fault's errno once `after` of them passed,
`times` times (-1: until the rules change).

  faultfs.py BACKING_DIR MOUNTPOINT RULES_FILE

RULES_FILE holds a JSON list, read again whenever it changes, e.g.
  [{"file": "origin.img", "op": "fsync", "errno": "EIO", "after": 0, "times": 1}]
Each rule's count of hits is written beside it to RULES_FILE + ".hits" (a JSON list).
Mounted with direct_io, so every read and write reaches this process (no page cache between).
Runs in the foreground until unmounted. Needs Debian's python3-fusepy (libfuse2).
"""
import errno
import json
import os
import sys
import threading

import fusepy


class Rules:
    def __init__(self, path):
        self.path = path
        self.lock = threading.Lock()
        self.mtime = None
        self.rules = []

    def _reload(self):
        try:
            mtime = os.stat(self.path).st_mtime_ns
        except FileNotFoundError:
            mtime = None
        if mtime == self.mtime:
            return
        self.mtime = mtime
        rules = []
        if mtime is not None:
            with open(self.path) as f:
                text = f.read().strip()
            rules = json.loads(text) if text else []
        for r in rules:
            r["seen"] = 0
            r["hits"] = 0
        self.rules = rules

    def check(self, path, op):
        """Raises the errno of the first rule that fires for `op` on `path`."""
        name = os.path.basename(path)
        with self.lock:
            self._reload()
            for r in self.rules:
                if r["file"] != name or r["op"] != op:
                    continue
                r["seen"] += 1
                if r["seen"] <= r.get("after", 0):
                    continue
                times = r.get("times", 1)
                if times >= 0 and r["hits"] >= times:
                    continue
                r["hits"] += 1
                with open(self.path + ".hits", "w") as f:
                    json.dump([x["hits"] for x in self.rules], f)
                raise fusepy.FuseOSError(getattr(errno, r["errno"]))


class FaultFs(fusepy.Operations):
    def __init__(self, backing, rules):
        self.backing = backing
        self.rules = rules

    def _real(self, path):
        return os.path.join(self.backing, path.lstrip("/"))

    # Namespace: straight through to the backing directory.
    def getattr(self, path, fh=None):
        st = os.lstat(self._real(path))
        keys = ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_atime", "st_mtime",
                "st_ctime", "st_blocks", "st_blksize", "st_ino")
        return {k: getattr(st, k) for k in keys}

    def readdir(self, path, fh):
        return [".", ".."] + os.listdir(self._real(path))

    def access(self, path, mode):
        if not os.access(self._real(path), mode):
            raise fusepy.FuseOSError(errno.EACCES)

    def mkdir(self, path, mode):
        os.mkdir(self._real(path), mode)

    def rmdir(self, path):
        os.rmdir(self._real(path))

    def unlink(self, path):
        os.unlink(self._real(path))

    def rename(self, old, new):
        os.rename(self._real(old), self._real(new))

    def chmod(self, path, mode):
        os.chmod(self._real(path), mode)

    def chown(self, path, uid, gid):
        os.chown(self._real(path), uid, gid)

    def utimens(self, path, times=None):
        os.utime(self._real(path), times)

    def readlink(self, path):
        return os.readlink(self._real(path))

    def symlink(self, target, source):
        os.symlink(source, self._real(target))

    def statfs(self, path):
        st = os.statvfs(self._real(path))
        keys = ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree", "f_files",
                "f_flag", "f_frsize", "f_namemax")
        return {k: getattr(st, k) for k in keys}

    def truncate(self, path, length, fh=None):
        os.truncate(self._real(path), length)

    # Data: where the faults are.
    def open(self, path, flags):
        return os.open(self._real(path), flags)

    def create(self, path, mode, fi=None):
        return os.open(self._real(path), os.O_RDWR | os.O_CREAT | os.O_EXCL, mode)

    def read(self, path, size, offset, fh):
        self.rules.check(path, "read")
        return os.pread(fh, size, offset)

    def write(self, path, data, offset, fh):
        self.rules.check(path, "write")
        return os.pwrite(fh, data, offset)

    def fsync(self, path, datasync, fh):
        self.rules.check(path, "fsync")
        if datasync:
            os.fdatasync(fh)
        else:
            os.fsync(fh)
        return 0

    def fsyncdir(self, path, datasync, fh):
        fd = os.open(self._real(path), os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return 0

    def flush(self, path, fh):
        return 0

    def release(self, path, fh):
        os.close(fh)
        return 0


def main():
    backing, mountpoint, rules = sys.argv[1:4]
    fusepy.FUSE(FaultFs(backing, Rules(rules)), mountpoint, foreground=True, direct_io=True,
                nothreads=False, fsname="faultfs")


if __name__ == "__main__":
    main()
