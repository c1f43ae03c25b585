#!/usr/bin/env python3
"""lockfs: a FUSE passthrough filesystem whose file locks can be refused.

It mirrors ROOT at MOUNTPOINT. With `--locks=refuse` every POSIX lock request
(fcntl F_SETLK/F_SETLKW/F_GETLK, classic or OFD) and every flock(2) fails with
ENOLCK, the way an NFS mount with broken or disabled lockd answers. That makes a
qlam-hpc store on the mount take the lease-file fallback of DESIGN §6 step 2.

Modes:
  --locks=refuse        POSIX locks and flock(2) fail with ENOLCK (default)
  --locks=refuse-posix  POSIX locks fail with ENOLCK, flock(2) works (node-local)
  --locks=local         no lock handlers: the kernel keeps locks locally

Run in the foreground (the test starts it in the background and unmounts with
`fusermount3 -u` or `umount`). Needs libfuse 3 (or 2) and mfusepy
(tests/e2e/requirements-fuse.txt); tests/e2e/setup-fuse.sh installs both.
"""

from __future__ import annotations

import argparse
import errno
import fcntl
import os
import sys
import threading
from typing import Any

import mfusepy as fuse


class LockFS(fuse.Operations):
    """Passthrough of ROOT; lock handlers are attached per mode in __init__."""

    use_ns = True

    def __init__(self, root: str, locks: str) -> None:
        self.root = os.path.realpath(root)
        self.locks = locks
        self.refused = 0
        self._count_lock = threading.Lock()
        # mfusepy registers a libfuse callback only for the methods an instance
        # has; libfuse asks the kernel for POSIX_LOCKS / FLOCK_LOCKS only when
        # the callback is registered. Without it the kernel locks locally.
        if locks in ("refuse", "refuse-posix"):
            self.lock = self._refuse_lock
        if locks == "refuse":
            self.flock = self._refuse_flock

    # -- locks ---------------------------------------------------------------

    def _refuse(self, kind: str, path: str) -> int:
        # One line per refusal on stderr: the tests count them to prove that the
        # program under test really tried a lock here and was refused.
        _uid, _gid, pid = fuse.fuse_get_context()
        with self._count_lock:
            self.refused += 1
            n = self.refused
        print(f"lockfs: refused {kind} #{n} pid={pid} path={path}", file=sys.stderr, flush=True)
        return -errno.ENOLCK

    def _refuse_lock(self, path: str, fh: int, cmd: int, lock: Any) -> int:
        # Unlocking what was never locked succeeds: libfuse sends an F_UNLCK on
        # every close (flush) once a lock handler exists.
        if lock and lock.contents.l_type == fcntl.F_UNLCK and cmd != fcntl.F_GETLK:
            return 0
        return self._refuse("posix-lock", path)

    def _refuse_flock(self, path: str, fh: int, op: int) -> int:
        if op & fcntl.LOCK_UN:
            return 0
        return self._refuse("flock", path)

    # -- passthrough ---------------------------------------------------------

    def _p(self, path: str) -> str:
        return self.root + path

    def access(self, path: str, amode: int) -> int:
        if not os.access(self._p(path), amode):
            raise fuse.FuseOSError(errno.EACCES)
        return 0

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        st = os.fstat(fh) if fh is not None else os.lstat(self._p(path))
        keys = ("st_atime_ns", "st_ctime_ns", "st_mtime_ns", "st_gid", "st_mode",
                "st_nlink", "st_size", "st_uid", "st_ino")
        return {k.removesuffix("_ns"): getattr(st, k) for k in keys}

    def statfs(self, path: str) -> dict[str, int]:
        sv = os.statvfs(self._p(path))
        keys = ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree",
                "f_files", "f_flag", "f_frsize", "f_namemax")
        return {k: getattr(sv, k) for k in keys}

    def readdir(self, path: str, fh: int) -> list[str]:
        return [".", "..", *os.listdir(self._p(path))]

    def readlink(self, path: str) -> str:
        return os.readlink(self._p(path))

    def mkdir(self, path: str, mode: int) -> int:
        os.mkdir(self._p(path), mode)
        return 0

    def rmdir(self, path: str) -> int:
        os.rmdir(self._p(path))
        return 0

    def unlink(self, path: str) -> int:
        os.unlink(self._p(path))
        return 0

    def symlink(self, target: str, source: str) -> int:
        os.symlink(source, self._p(target))
        return 0

    def link(self, target: str, source: str) -> int:
        os.link(self._p(source), self._p(target))
        return 0

    def rename(self, old: str, new: str) -> int:
        os.rename(self._p(old), self._p(new))
        return 0

    def chmod(self, path: str, mode: int) -> int:
        os.chmod(self._p(path), mode)
        return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        os.chown(self._p(path), uid, gid)
        return 0

    def truncate(self, path: str, length: int, fh: int | None = None) -> int:
        if fh is not None:
            os.ftruncate(fh, length)
        else:
            os.truncate(self._p(path), length)
        return 0

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        if times is None:
            os.utime(self._p(path))
        else:
            os.utime(self._p(path), ns=times)
        return 0

    def open(self, path: str, flags: int) -> int:
        return os.open(self._p(path), flags)

    def create(self, path: str, mode: int, flags: int) -> int:
        # Keep the caller's flags (O_EXCL matters: lease lock files rely on it).
        return os.open(self._p(path), flags | os.O_CREAT, mode)

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        return os.pread(fh, size, offset)

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        return os.pwrite(fh, data, offset)

    def flush(self, path: str, fh: int) -> int:
        return 0

    def fsync(self, path: str, datasync: int, fh: int) -> int:
        if datasync:
            os.fdatasync(fh)
        else:
            os.fsync(fh)
        return 0

    def release(self, path: str, fh: int) -> int:
        os.close(fh)
        return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root")
    ap.add_argument("mountpoint")
    ap.add_argument("--locks", choices=("refuse", "refuse-posix", "local"), default="refuse")
    ap.add_argument("--debug", action="store_true")
    args = ap.parse_args(argv)
    if not os.path.isdir(args.root):
        print(f"lockfs: root {args.root} is not a directory", file=sys.stderr)
        return 2
    fs = LockFS(args.root, args.locks)
    # Multithreaded: a herd of processes hits the mount at once.
    fuse.FUSE(fs, args.mountpoint, foreground=True, nothreads=False, debug=args.debug,
              fsname="lockfs", subtype="lockfs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
