"""`qlam-hpc doctor` on FUSE mounts whose file locks misbehave (DESIGN §4 doctor, §6 step 2).

tests/e2e/fuse/lockfs.py mirrors a directory; its modes:
- `--locks=refuse`: POSIX/OFD locks and flock(2) fail with ENOLCK (NFS without lockd);
- `--locks=refuse-posix`: POSIX/OFD locks fail, flock(2) works;
- `--locks=local`: the kernel keeps locks per mount, so two mounts of the same directory do
  not see each other's locks, as two nodes do on NFS `local_lock=all` or Lustre `localflock`.

doctor must say that lock calls fail and `auto` uses lease files on the first two, and with
`--peer-path` through a second `local` mount it must report that the lock is NOT coherent.
FUSE problems fail these tests; they never skip.
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from idp import E2E, Hpc, hpc_factory, idp_factory, redact  # noqa: F401  (fixtures)

LOCKFS = E2E / "fuse" / "lockfs.py"
F_OFD_SETLK = 37  # linux/fcntl.h


def _is_mounted(path: Path) -> bool:
    with open("/proc/self/mounts") as f:
        return any(len(l.split()) > 1 and l.split()[1] == str(path) for l in f)


def _unmount(path: Path) -> None:
    for cmd in (["fusermount3", "-u", str(path)], ["fusermount", "-u", str(path)],
                ["umount", str(path)], ["umount", "-l", str(path)]):
        if not _is_mounted(path):
            return
        if shutil.which(cmd[0]):
            subprocess.run(cmd, capture_output=True, timeout=30)


class Mount:
    def __init__(self, root: Path, mnt: Path, log: Path, proc: subprocess.Popen) -> None:
        self.root, self.mnt, self.log, self.proc = root, mnt, log, proc

    def refusals(self) -> int:
        return sum(1 for ln in self.log.read_text(errors="replace").splitlines()
                   if ln.startswith("lockfs: refused"))


@pytest.fixture
def lockfs_mount(tmp_path: Path):
    """`mount(root, mode)`: a lockfs mount of `root`; every mount is undone at teardown."""
    if not os.path.exists("/dev/fuse"):
        pytest.fail("/dev/fuse is missing: FUSE cannot work here (run tests/e2e/setup-fuse.sh as root)")
    probe = subprocess.run([sys.executable, "-c", "import mfusepy"], capture_output=True, text=True,
                           timeout=60)
    if probe.returncode != 0:
        pytest.fail(f"mfusepy/libfuse not importable by {sys.executable}: {probe.stderr.strip()[-500:]}"
                    " (run tests/e2e/setup-fuse.sh)")
    mounts: list[Mount] = []

    def mount(root: Path, mode: str) -> Mount:
        n = len(mounts)
        mnt = tmp_path / f"mnt{n}"
        mnt.mkdir()
        log = tmp_path / f"lockfs{n}.log"
        with open(log, "wb") as lf:
            proc = subprocess.Popen([sys.executable, str(LOCKFS), f"--locks={mode}", str(root), str(mnt)],
                                    stdin=subprocess.DEVNULL, stdout=lf, stderr=lf, start_new_session=True)
        m = Mount(root, mnt, log, proc)
        mounts.append(m)
        deadline = time.monotonic() + 20
        while not _is_mounted(mnt):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"lockfs did not mount (exit {proc.poll()}): {log.read_text()[-2000:]}")
            time.sleep(0.05)
        return m

    try:
        yield mount
    finally:
        for m in reversed(mounts):
            _unmount(m.mnt)
            try:
                m.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                m.proc.kill()
                m.proc.wait(timeout=10)
        for m in mounts:
            assert not _is_mounted(m.mnt), f"could not unmount {m.mnt}"


def _lines(out: str) -> dict[str, tuple[str, str]]:
    """`[level] name detail` lines of doctor's text report: name -> (level, detail)."""
    found = {}
    for line in out.splitlines():
        if line.startswith("[") and "] " in line:
            tag, rest = line[1:].split("] ", 1)
            found[rest[:15].strip()] = (tag.strip(), rest[15:])
    return found


def _doctor(hpc: Hpc, *args: str, env: dict | None = None) -> tuple[int, str, dict]:
    """doctor's text report and its JSON report (same arguments): (exit, text, json)."""
    text = hpc.run("doctor", "--offline", *args, env=env, timeout=120)
    js = hpc.run("-o", "json", "doctor", "--offline", *args, env=env, timeout=120)
    assert js.returncode == text.returncode, f"text exit {text.returncode}, json exit {js.returncode}"
    if hpc.store.is_file():
        for secret in (hpc.access_token(), hpc.stored_refresh_token()):
            assert not secret or secret not in text.stdout + js.stdout, "doctor printed a token"
    return text.returncode, text.stdout, json.loads(js.stdout)


def _check(report: dict, name: str) -> dict | None:
    return next((c for c in report["checks"] if c["name"] == name), None)


def _ofd_lock(path: Path) -> int:
    """Open `path` and take an OFD write lock on it; returns the fd (close it to unlock)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.fcntl(fd, F_OFD_SETLK, struct.pack("hhqqi", fcntl.F_WRLCK, 0, 0, 0, 0))
    return fd


def _ofd_try(path: Path) -> bool:
    """Whether an OFD write lock on `path` can be taken now (released at once)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.fcntl(fd, F_OFD_SETLK, struct.pack("hhqqi", fcntl.F_WRLCK, 0, 0, 0, 0))
        return True
    except BlockingIOError:
        return False
    except OSError as e:
        if e.errno in (11, 13):  # EAGAIN, EACCES
            return False
        raise
    finally:
        os.close(fd)


@pytest.mark.parametrize("mode", ["refuse", "refuse-posix"])
def test_doctor_on_a_mount_that_refuses_locks(idp_factory, hpc_factory, lockfs_mount, tmp_path, mode):
    root = tmp_path / "lower"
    root.mkdir()
    m = lockfs_mount(root, mode)
    idp = idp_factory("--device-interval", "1")
    hpc = hpc_factory(idp, config_dir=m.mnt / "qsh")
    hpc.login(idp)
    refused_before = m.refusals()

    code, out, report = _doctor(hpc)
    assert code == 0, f"doctor exited {code}: {redact(out)}"
    lines = _lines(out)
    level, calls = lines["lock calls"]
    assert level == "ok", out
    assert "OFD fcntl fails" in calls, out
    assert "lease file works" in calls, out
    assert ("flock fails" if mode == "refuse" else "flock works") in calls, out
    # With OFD locks failing there is no fcntl coherence to test.
    assert "lock coherence" not in lines, out
    level, fs = lines["filesystem"]
    assert "fuse" in fs and str(m.mnt) in fs, out
    assert 'lock = "auto" uses: lease (OFD locks fail here' in out, out
    assert report["auto_lock_method"] == "lease", report
    assert "OFD locks fail" in report["auto_lock_reason"]
    assert _check(report, "lock calls")["level"] == "ok"
    assert m.refusals() > refused_before, "doctor never tried a lock on the mount"
    # The probes leave nothing behind (no lease file, no temp file).
    assert hpc.leftovers() == [], hpc.leftovers()
    # And `auto` really works here afterwards.
    hpc.run("refresh", "--force", check=0, timeout=120)


def test_doctor_peer_path_through_a_second_mount_is_not_coherent(idp_factory, hpc_factory,
                                                                   lockfs_mount, tmp_path):
    root = tmp_path / "lower"
    root.mkdir()
    a = lockfs_mount(root, "local")
    b = lockfs_mount(root, "local")
    idp = idp_factory("--device-interval", "1")
    hpc = hpc_factory(idp, config_dir=a.mnt / "qsh")
    hpc.login(idp)
    peer = b.mnt / "qsh" / "credentials"
    assert (peer / hpc.store.name).is_file(), "the second mount does not show the store"

    # The premise, checked without qlam-hpc: a lock held through one mount is invisible
    # through the other, and visible through the same one.
    fd = _ofd_lock(hpc.lock)
    try:
        assert _ofd_try(peer / hpc.lock.name), "the two lockfs mounts share locks: premise broken"
        assert not _ofd_try(hpc.lock), "OFD locks do not conflict on one mount: premise broken"
    finally:
        os.close(fd)

    # One mount, no peer path: coherent.
    code, out, report = _doctor(hpc)
    assert code == 0, redact(out)
    level, detail = _lines(out)["lock coherence"]
    assert level == "ok" and "sees the lock held" in detail, out
    assert _check(report, "lock coherence")["level"] == "ok"
    assert report["auto_lock_method"] == "ofd", report
    assert _check(report, "lock calls")["level"] == "ok"

    # The same mount as its own peer: coherent too.
    code, out, report = _doctor(hpc, "--peer-path", str(hpc.cred_dir))
    assert code == 0, redact(out)
    assert _check(report, "lock coherence")["level"] == "ok", report

    # Through the second mount: NOT coherent, a failure, with the lease advice.
    code, out, report = _doctor(hpc, "--peer-path", str(peer))
    assert code == 1, f"doctor exited {code}: {redact(out)}"
    level, detail = _lines(out)["lock coherence"]
    assert level == "FAIL", out
    assert "not coherent" in detail and str(peer) in detail, out
    c = _check(report, "lock coherence")
    assert c["level"] == "fail", report
    assert "lease" in (c["advice"] or ""), c
    assert "lease" in out.split("lock coherence", 1)[1], "the text report gives the advice too"
    # doctor released its lock: a refresh through either mount is not blocked.
    hpc.run("refresh", "--force", check=0, timeout=120)


def test_doctor_peer_path_after_following_the_lease_advice(idp_factory, hpc_factory, lockfs_mount,
                                                           tmp_path):
    root = tmp_path / "lower"
    root.mkdir()
    a = lockfs_mount(root, "local")
    b = lockfs_mount(root, "local")
    idp = idp_factory("--device-interval", "1")
    hpc = hpc_factory(idp, config_dir=a.mnt / "qsh")
    hpc.login(idp)
    peer = b.mnt / "qsh" / "credentials"
    code, out, report = _doctor(hpc, "--peer-path", str(peer), env={"QLAM_LOCK": "lease"})
    assert 'lock = "lease"' in report["auto_lock_reason"], report
    assert code == 0, f"doctor exited {code} with lock = lease configured: {redact(out)}"


def test_doctor_against_the_real_provider(qlam_env):
    """Not FUSE: doctor's network checks against oidc-provider over HTTPS (the test IdP of
    the Rust suite sends no Date header, so the clock check is only exercised here)."""
    from oidc_helpers import run_qlam

    r = run_qlam(qlam_env, "doctor", check=False)
    assert r.returncode == 0, redact(r.stdout + r.stderr)
    lines = _lines(r.stdout)
    level, idp = lines["idp"]
    assert level == "ok" and qlam_env["QLAM_AUTH_BASE_URL"] in idp, r.stdout
    level, clock = lines["clock"]
    assert level == "ok", r.stdout
    assert "from the IdP's" in clock, r.stdout
    # An untrusted CA is a failed IdP check with advice, not a crash.
    env = dict(qlam_env)
    env.pop("SSL_CERT_FILE")
    env.pop("REQUESTS_CA_BUNDLE", None)
    r = run_qlam(env, "-o", "json", "doctor", check=False)
    assert r.returncode == 1, redact(r.stdout + r.stderr)
    report = json.loads(r.stdout)
    c = _check(report, "idp")
    assert c["level"] == "fail" and c["advice"], c
