"""Lock fallback on a filesystem that refuses file locks (DESIGN §6 step 2).

The store lives on a FUSE mount (tests/e2e/fuse/lockfs.py --locks=refuse) that answers
every POSIX/OFD lock and flock(2) with ENOLCK, as an NFS mount without a working lock
manager does. qlam-hpc's `auto` lock method must fall back to the lease lock file and
still let exactly one process of a herd refresh; forcing `ofd` must fail with exit 60
and point at the lease method. FUSE problems fail these tests; they never skip.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from idp import E2E, hpc_factory, idp_factory, redact  # noqa: F401  (fixtures)

HERD = 100
LOCKFS = E2E / "fuse" / "lockfs.py"
F_OFD_SETLK = 37  # linux/fcntl.h


class LockFSMount:
    def __init__(self, root: Path, mnt: Path, log: Path, proc: subprocess.Popen) -> None:
        self.root, self.mnt, self.log, self.proc = root, mnt, log, proc

    def refusals(self) -> list[str]:
        return [ln for ln in self.log.read_text(errors="replace").splitlines()
                if ln.startswith("lockfs: refused")]


def _is_mounted(path: Path) -> bool:
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == str(path) for line in f if len(line.split()) > 1)


def _unmount(path: Path) -> None:
    for cmd in (["fusermount3", "-u", str(path)], ["fusermount", "-u", str(path)],
                ["umount", str(path)], ["umount", "-l", str(path)]):
        if not _is_mounted(path):
            return
        if shutil.which(cmd[0]):
            subprocess.run(cmd, capture_output=True, timeout=30)


@pytest.fixture
def lockfs(tmp_path: Path):
    """A lockfs mount refusing all locks; unmounted at teardown whatever happened."""
    if not os.path.exists("/dev/fuse"):
        pytest.fail("/dev/fuse is missing: FUSE cannot work here (run tests/e2e/setup-fuse.sh as root)")
    probe = subprocess.run([sys.executable, "-c", "import mfusepy"], capture_output=True, text=True,
                           timeout=60)
    if probe.returncode != 0:
        pytest.fail(f"mfusepy/libfuse not importable by {sys.executable}: {probe.stderr.strip()[-500:]}"
                    " (run tests/e2e/setup-fuse.sh)")
    root, mnt = tmp_path / "lower", tmp_path / "mnt"
    root.mkdir()
    mnt.mkdir()
    log = tmp_path / "lockfs.log"
    with open(log, "wb") as lf:
        proc = subprocess.Popen([sys.executable, str(LOCKFS), "--locks=refuse", str(root), str(mnt)],
                                stdin=subprocess.DEVNULL, stdout=lf, stderr=lf, start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while not _is_mounted(mnt):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"lockfs did not mount (exit {proc.poll()}): {log.read_text()[-2000:]}")
            time.sleep(0.05)
        yield LockFSMount(root, mnt, log, proc)
    finally:
        _unmount(mnt)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        assert not _is_mounted(mnt), f"could not unmount {mnt}"


def test_mount_refuses_locks(lockfs):
    p = lockfs.mnt / "probe"
    fd = os.open(p, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.write(fd, b"x")
        for name, take in [
            ("lockf", lambda: fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)),
            ("ofd", lambda: fcntl.fcntl(fd, F_OFD_SETLK, struct.pack("hhqqi", fcntl.F_WRLCK, 0, 0, 0, 0))),
            ("flock", lambda: fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)),
        ]:
            with pytest.raises(OSError) as ei:
                take()
            assert ei.value.errno == errno.ENOLCK, f"{name}: {ei.value}"
    finally:
        os.close(fd)
    # Plain file operations pass through; O_EXCL (the lease file's primitive) holds.
    assert (lockfs.root / "probe").read_bytes() == b"x"
    with pytest.raises(FileExistsError):
        os.open(p, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    os.rename(p, lockfs.mnt / "probe2")
    assert sorted(os.listdir(lockfs.root)) == ["probe2"]
    assert len(lockfs.refusals()) == 3


def _login_due(idp_factory, hpc_factory, lockfs):
    idp = idp_factory("--access-ttl", "60", "--refresh-ttl", "3600", "--device-interval", "1")
    idp.config(access_token_ttl=8)
    hpc = hpc_factory(idp, config_dir=lockfs.mnt / "qsh")
    hpc.login(idp)
    idp.config(access_token_ttl=60)
    hpc.check_store()
    hpc.wait_until_refresh_due()
    return idp, hpc


def test_herd_on_lockless_mount_uses_lease(idp_factory, hpc_factory, lockfs):
    idp, hpc = _login_due(idp_factory, hpc_factory, lockfs)
    assert str(hpc.store).startswith(str(lockfs.mnt))
    before = hpc.access_fp()
    idp.reset_counters()
    refused_before = len(lockfs.refusals())

    r = hpc.herd(HERD, "token", "--min-ttl", "2m", env={"QLAM_LOCK": "auto"})

    assert r.codes == [0] * HERD, r.summary()
    tokens = r.fps()
    assert len(tokens) == 1, f"{len(tokens)} distinct tokens: {r.summary()}"
    assert tokens != {before}, "the herd did not refresh"
    c = idp.counters()
    assert c["refresh_requests"] == 1, f"IdP counters {c}"
    assert c["families_revoked"] == 0, f"IdP counters {c}"
    assert len(lockfs.refusals()) > refused_before, "qlam-hpc never tried a file lock on the mount"
    hpc.check_store()
    # The lease file (`<lock file>.lease`) exists only while held; nothing else is left.
    assert hpc.leftovers() == [], f"files left in the credentials dir: {hpc.leftovers()}"
    # The lease is released: the next forced refresh does not wait for it to expire.
    t0 = time.monotonic()
    hpc.run("refresh", "--force", check=0, timeout=60)
    assert time.monotonic() - t0 < 15, "refresh waited for a stale lease"


def test_forced_ofd_on_lockless_mount_fails(idp_factory, hpc_factory, lockfs):
    idp = idp_factory("--access-ttl", "60", "--device-interval", "1")
    hpc = hpc_factory(idp, config_dir=lockfs.mnt / "qsh")
    hpc.login(idp)
    idp.reset_counters()
    p = hpc.run("refresh", "--force", env={"QLAM_LOCK": "ofd"}, timeout=120)
    assert p.returncode == 60, f"QLAM_LOCK=ofd exited {p.returncode}: {redact(p.stderr)}"
    assert "lease" in p.stderr.lower(), f"no hint at the lease method: {redact(p.stderr)}"
    assert idp.counters()["refresh_requests"] == 0, "refreshed without a lock"
    hpc.check_store()
