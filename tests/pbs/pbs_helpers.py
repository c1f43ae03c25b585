"""Helpers for the PBS suite: a site install of qlam-hpc under /tmp, test users, a test IdP,
logging users in, running the OpenPBS hook with the stand-in `pbs` module (as root, as
pbs_mom would) and the Torque scripts with their positional arguments.

Token values never appear in output: tokens are compared by fingerprint (`fp`), and
assertion messages go through `redact`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

import pytest

PBS_TESTS = Path(__file__).resolve().parent
REPO = PBS_TESTS.parents[1]
sys.path.insert(0, str(REPO / "tests" / "e2e"))

from idp import TestIdP, fp, redact, store_name  # noqa: E402
from oidc_helpers import QLAM_CORE_SCRIPT  # noqa: E402

HOOK = REPO / "pbs" / "qlam_hpc_hook.py"
TORQUE = REPO / "pbs" / "torque"
FAKE_PBS = PBS_TESTS / "fake_pbs"
RUN_HOOK = FAKE_PBS / "run_hook.py"
JOB_SH = REPO / "scripts" / "qlam-hpc-job.sh"
VENV = REPO / "tests" / ".work" / "venv"

CLIENT_ID = "qlam-hpc-test"
# QLAM Core refuses a device_code provider without a tenant; the test IdP ignores it.
TENANT = "e2e-org"
# QLAM Core counts a token as expired 300 s early: staged tokens must outlive that.
ACCESS_TTL = 900
STORE_NAME = store_name()
SHORT_HOST = socket.gethostname().split(".")[0]

# Test users of this suite only (other suites own qlamtest, qlamtest2).
USER_LOGGED_IN = "qlampbs"  # logs in once per session
USER_MUST_LOGIN = "qlampbs2"  # a QLAM user (~/.qsh/credentials exists) who never logged in
USER_NO_QLAM = "qlampbs3"  # no QLAM state at all
USER_SLOW = "qlampbs4"  # logged in; its login is spent by the slow-IdP test
ALL_USERS = (USER_LOGGED_IN, USER_MUST_LOGIN, USER_NO_QLAM, USER_SLOW)

_job_counter = itertools.count(1)


def new_job_id(server: str = "pbs-server.example") -> str:
    """A job id no earlier run used: <pid><n>.<server>, as PBS writes them."""
    return "%d%03d.%s" % (os.getpid(), next(_job_counter), server)


# ----------------------------------------------------------------------------------------
# Users


@dataclasses.dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int
    home: Path

    @property
    def qsh(self) -> Path:
        return self.home / ".qsh"

    @property
    def store(self) -> Path:
        return self.qsh / "credentials" / STORE_NAME

    def groups(self) -> list[int]:
        return os.getgrouplist(self.name, self.gid)


def ensure_user(name: str) -> User:
    """Create `name` (home /home/<name>, 0700) unless it exists; idempotent."""
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        subprocess.run(["useradd", "--create-home", "--home-dir", "/home/" + name,
                        "--shell", "/bin/sh", "--user-group", name],
                       check=True, capture_output=True, text=True, timeout=60)
        pw = pwd.getpwnam(name)
    home = Path(pw.pw_dir)
    if not home.is_dir():
        home.mkdir(parents=True, mode=0o700)
    os.chown(home, pw.pw_uid, pw.pw_gid)
    home.chmod(0o700)
    return User(name, pw.pw_uid, pw.pw_gid, home)


def reset_qlam_state(user: User) -> None:
    """Remove everything QLAM from the user's home."""
    shutil.rmtree(user.qsh, ignore_errors=True)
    shutil.rmtree(user.home / ".config" / "qlam-hpc", ignore_errors=True)
    shutil.rmtree(user.home / ".cache" / "qlam-hpc", ignore_errors=True)


def make_user_dirs(user: User, path: Path, mode: int = 0o700) -> None:
    """Create `path` and missing parents below the home, owned by the user."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        d.mkdir(mode=mode)
        d.chmod(mode)
        os.chown(d, user.uid, user.gid)


def read_store(user: User) -> dict:
    return json.loads(user.store.read_text())


def store_tokens(user: User) -> dict:
    """The user's token_data: for comparisons only, never for messages."""
    return read_store(user)["extra"]["token_data"]


def user_processes(uid: int, word: str) -> list[int]:
    """PIDs of live processes of `uid` whose command line has `word` (e.g. renew-as-user)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            status = (entry / "status").read_text()
        except OSError:
            continue
        if word.encode() not in cmdline:
            continue
        state = re.search(r"^State:\s+(\S)", status, re.M)
        if state and state.group(1) in ("Z", "X"):
            continue
        m = re.search(r"^Uid:\s+(\d+)", status, re.M)
        if m and int(m.group(1)) == uid:
            pids.append(int(entry.name))
    return sorted(pids)


def kill_user_hooks(uid: int) -> None:
    """End the qlam-hpc hook processes of a test user (renewers) left by a failed test."""
    for word in ("renew-as-user", "stage-as-user", "unstage-as-user"):
        for pid in user_processes(uid, word):
            try:
                os.kill(pid, signal.SIGTERM)
            except OSError:
                pass


def wait_for(what: str, check, timeout: float = 20.0, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.0fs waiting for %s" % (timeout, what))
        time.sleep(interval)


# ----------------------------------------------------------------------------------------
# The site install


def _write_public(path: Path, text: str, mode: int = 0o644) -> Path:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.chmod(mode)
    os.replace(tmp, path)
    return path


def binary(name: str) -> Path:
    env = {"qlam-hpc": "QLAM_HPC_BIN", "qlam-test-idp": "QLAM_TEST_IDP_BIN"}[name]
    p = Path(os.environ[env]) if os.environ.get(env) else REPO / "target" / "debug" / name
    if not (p.is_file() and os.access(p, os.X_OK)):
        pytest.fail("%s not found at %s: cargo build -p qlam-hpc -p qlam-test-idp" % (name, p))
    return p


@dataclasses.dataclass
class Install:
    """qlam-hpc installed as a site would, under one /tmp directory readable by the users."""

    root: Path
    bin: Path
    job_sh: Path
    site_config: Path  # [defaults] + [hooks] stage_dir
    enforce_config: Path  # the same with [hooks] enforce = true
    stage_dir: Path
    hook_env: Path  # Torque's /etc/qlam-hpc/hook.env stand-in
    hook_env_enforce: Path
    idp_url: str = ""

    def write_site_configs(self, idp_url: str) -> None:
        self.idp_url = idp_url
        base = ("[defaults]\n"
                'auth_base_url = "%s"\n'
                'client_id = "%s"\n'
                'grant_type = "device_code"\n'
                'tenant = "%s"\n'
                "\n[hooks]\n"
                'stage_dir = "%s"\n') % (idp_url, CLIENT_ID, TENANT, self.stage_dir)
        _write_public(self.site_config, base)
        _write_public(self.enforce_config, base + "enforce = true\n")
        for path, site in ((self.hook_env, self.site_config),
                           (self.hook_env_enforce, self.enforce_config)):
            _write_public(path, "# qlam-hpc hook environment (test)\n"
                                "QLAM_HPC_BIN=%s\nQLAM_HPC_SITE_CONFIG=%s\n"
                                "NO_PROXY=127.0.0.1,localhost\n" % (self.bin, site))

    def job_dir(self, user: User, job_id: str, node: str = SHORT_HOST) -> Path:
        return self.stage_dir / str(user.uid) / ("%s-%s" % (job_id, node))

    def user_env(self, user: User, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """A login-like environment for the user (no proxies, no QLAM variables)."""
        env = {
            "HOME": str(user.home), "USER": user.name, "LOGNAME": user.name,
            "SHELL": "/bin/sh", "PATH": "/usr/local/bin:/usr/bin:/bin",
            "LANG": "C.UTF-8", "NO_COLOR": "1",
            "QLAM_HPC_SITE_CONFIG": str(self.site_config),
            "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost",
        }
        env.update(extra or {})
        return env


def make_install() -> Install:
    root = Path(tempfile.mkdtemp(prefix="qlam-pbs-test-", dir="/tmp"))
    root.chmod(0o755)
    (root / "bin").mkdir(mode=0o755)
    (root / "share").mkdir(mode=0o755)
    stage = root / "stage"
    stage.mkdir(mode=0o755)
    stage.chmod(0o755)
    bin_path = root / "bin" / "qlam-hpc"
    shutil.copyfile(binary("qlam-hpc"), bin_path)
    bin_path.chmod(0o755)
    job_sh = root / "share" / "qlam-hpc-job.sh"
    shutil.copyfile(JOB_SH, job_sh)
    job_sh.chmod(0o644)
    return Install(root=root, bin=bin_path, job_sh=job_sh,
                   site_config=root / "site.toml", enforce_config=root / "site-enforce.toml",
                   stage_dir=stage, hook_env=root / "hook.env",
                   hook_env_enforce=root / "hook-enforce.env")


# ----------------------------------------------------------------------------------------
# Running things as a user


class Run(subprocess.CompletedProcess):
    """A finished process whose repr (shown by pytest) hides its output."""

    def __repr__(self) -> str:
        return "Run(returncode=%r)" % (self.returncode,)

    def why(self) -> str:
        return "exit %s; stderr: %s; stdout: %s" % (self.returncode, redact(self.stderr),
                                                    redact(self.stdout))


def run_as(user: User, argv: list[str], env: Mapping[str, str], *, timeout: float = 60,
           input: str | None = None, cwd: str | None = None) -> Run:
    p = subprocess.run(argv, user=user.uid, group=user.gid, extra_groups=user.groups(),
                       env=dict(env), cwd=cwd or str(user.home), input=input,
                       stdin=None if input is not None else subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=timeout)
    return Run(p.args, p.returncode, p.stdout, p.stderr)


def login(inst: Install, user: User, *, timeout: float = 90) -> dict:
    """`qlam-hpc -o json login --device --no-qr` as the user against the auto-approving IdP.
    Returns the last JSON event."""
    reset_qlam_state(user)
    r = run_as(user, [str(inst.bin), "-o", "json", "login", "--device", "--no-qr"],
               inst.user_env(user), timeout=timeout)
    assert r.returncode == 0, "login as %s: %s" % (user.name, r.why())
    events = [json.loads(l) for l in r.stdout.splitlines() if l.strip()]
    assert events and events[-1].get("event") == "logged_in", [e.get("event") for e in events]
    td = store_tokens(user)
    assert td.get("refresh_token"), "login stored no refresh token"
    assert int(td["expires_in"]) == ACCESS_TTL
    return events[-1]


def make_must_login_user(user: User) -> None:
    """A QLAM user who has no login: an empty ~/.qsh/credentials."""
    reset_qlam_state(user)
    make_user_dirs(user, user.qsh / "credentials")


def age_token(user: User, seconds: float) -> None:
    """Make the stored access token `seconds` older, so that a refresh falls due; written as
    qlam-hpc writes (temporary file renamed over the store, the user's, 0600)."""
    from datetime import datetime, timedelta, timezone
    path = user.store
    doc = json.loads(path.read_text())
    td = doc["extra"]["token_data"]
    created = datetime.fromisoformat(td["created_at"].replace("Z", "+00:00"))
    if created.tzinfo is None:
        created = created.replace(tzinfo=timezone.utc)
    created -= timedelta(seconds=seconds)
    td["created_at"] = created.isoformat()
    doc["expires_at"] = (created.replace(second=0, microsecond=0)
                         + timedelta(seconds=int(td["expires_in"]))).isoformat()
    tmp = path.with_name(path.name + ".pbs-test.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(doc, fh, indent=2)
    os.chown(tmp, user.uid, user.gid)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------------------
# The OpenPBS hook through the stand-in pbs module


@dataclasses.dataclass
class HookResult:
    outcome: str  # accept | reject | exception | alarm
    reject_msg: str | None
    logs: list[dict]
    env: dict[str, str] | None
    elapsed: float
    wall: float
    raw: dict

    @property
    def accepted(self) -> bool:
        return self.outcome == "accept"

    def log_text(self) -> str:
        return "\n".join("%s %s" % (l["level"], l["msg"]) for l in self.logs)

    def __repr__(self) -> str:
        return "HookResult(outcome=%r, reject_msg=%r, logs=%s)" % (
            self.outcome, redact(self.reject_msg or ""), redact(self.log_text()))


def run_hook(work: Path, event_type: str, job_id: str, user: str, *,
             walltime: str | None = "00:10:00", nodename: str = SHORT_HOST,
             env: Mapping[str, str] | None = None, config: Mapping[str, Any] | None = None,
             alarm: float = 30, in_ms_mom: bool = True, hook: Path = HOOK,
             mom_env: Mapping[str, str] | None = None) -> HookResult:
    """Run the hook for one event as pbs_mom would: as root, in a fresh interpreter, with
    the hook's configuration file (PBS_HOOK_CONFIG_FILE) and its alarm."""
    work.mkdir(parents=True, exist_ok=True)
    tag = "%s-%s-%d" % (event_type.lower(), re.sub(r"[^A-Za-z0-9]+", "_", job_id),
                        time.monotonic_ns())
    job: dict[str, Any] = {"id": job_id, "euser": user, "egroup": user,
                           "in_ms_mom": in_ms_mom, "Resource_List": {}}
    if walltime is not None:
        job["Resource_List"]["walltime"] = walltime
    spec = {"type": event_type, "hook_name": "qlam_hpc", "job": job, "nodename": nodename,
            "alarm": alarm}
    if event_type == "EXECJOB_LAUNCH":
        spec["env"] = dict(env or {"HOME": "/home/" + user, "PBS_JOBID": job_id})
    event_path = work / (tag + ".event.json")
    event_path.write_text(json.dumps(spec))
    result_path = work / (tag + ".result.json")
    run_env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}
    if config is not None:
        cfg_path = work / (tag + ".config.json")
        cfg_path.write_text(json.dumps(config))
        run_env["PBS_HOOK_CONFIG_FILE"] = str(cfg_path)
    run_env.update(mom_env or {})
    t0 = time.monotonic()
    p = subprocess.run([sys.executable, str(RUN_HOOK), str(hook), str(event_path),
                        str(result_path)], env=run_env, stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=alarm + 30, cwd="/")
    wall = time.monotonic() - t0
    assert p.returncode == 0 and result_path.exists(), (
        "run_hook.py exited %d: %s" % (p.returncode, redact(p.stderr)))
    raw = json.loads(result_path.read_text())
    return HookResult(raw["outcome"], raw.get("reject_msg"), raw.get("logs", []),
                      raw.get("env"), raw["elapsed"], wall, raw)


def hook_config(inst: Install, **extra: Any) -> dict[str, Any]:
    cfg: dict[str, Any] = {"qlam_hpc": str(inst.bin), "alarm": 30,
                           "site_config": str(inst.site_config),
                           "env": {"NO_PROXY": "127.0.0.1,localhost"}}
    cfg.update(extra)
    return cfg


# ----------------------------------------------------------------------------------------
# Torque scripts


def run_torque(script: str, args: list[str], *, env: Mapping[str, str] | None = None,
               timeout: float = 120) -> Run:
    """Run pbs/torque/<script> as root the way pbs_mom does: positional arguments, an
    (almost) empty environment, stdin /dev/null, in mom_priv (here: /)."""
    p = subprocess.run([str(TORQUE / script), *args], env=dict(env or {}),
                       stdin=subprocess.DEVNULL, capture_output=True, text=True,
                       timeout=timeout, cwd="/")
    return Run(p.args, p.returncode, p.stdout, p.stderr)


def torque_prologue_args(job_id: str, user: User, walltime: str = "00:10:00") -> list[str]:
    return [job_id, user.name, user.name, "qlamjob", "neednodes=1,nodes=1,walltime=%s" % walltime,
            "batch", "acct1"]


def torque_epilogue_args(job_id: str, user: User, walltime: str = "00:10:00") -> list[str]:
    return [job_id, user.name, user.name, "qlamjob", "12345",
            "neednodes=1,nodes=1,walltime=%s" % walltime,
            "cput=00:00:01,mem=1024kb,vmem=2048kb,walltime=00:00:05", "batch", "acct1", "0"]


# ----------------------------------------------------------------------------------------
# Inspecting a staged directory and reading it with QLAM Core


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() or p.is_symlink())


def assert_private_stage(dir_: Path, user: User, secrets: Iterable[str | None]) -> None:
    """The staged directory: the user's, 0700 (also credentials/), files 0600, access token
    only; none of `secrets` (refresh/ID tokens) in any file."""
    st = dir_.lstat()
    assert dir_.is_dir() and not dir_.is_symlink(), dir_
    assert (st.st_uid, st.st_gid) == (user.uid, user.gid), (dir_, st.st_uid, st.st_gid)
    assert st.st_mode & 0o777 == 0o700, (dir_, oct(st.st_mode))
    for sub in [p for p in dir_.rglob("*") if p.is_dir()]:
        s = sub.lstat()
        assert s.st_uid == user.uid and s.st_mode & 0o777 == 0o700, (sub, oct(s.st_mode))
    files = files_under(dir_)
    names = {p.relative_to(dir_).as_posix() for p in files}
    assert {"config.json", "access_token", "credentials/" + STORE_NAME} <= names, sorted(names)
    for p in files:
        s = p.lstat()
        assert not p.is_symlink(), p
        assert s.st_uid == user.uid and s.st_mode & 0o777 == 0o600, (p, oct(s.st_mode))
        data = p.read_bytes()
        for secret in secrets:
            if secret:
                assert secret.encode() not in data, "a refresh or ID token is in %s" % p
    staged = json.loads((dir_ / "credentials" / STORE_NAME).read_text())
    td = staged["extra"]["token_data"]
    assert td.get("refresh_token") is None and td.get("id_token") is None


def staged_token(dir_: Path) -> str:
    """The staged access token (compare with fp(), never print)."""
    return (dir_ / "access_token").read_text().strip()


def job_python(user: User) -> tuple[str, dict[str, str]]:
    """A Python with QLAM Core the user can run: the system python3 of the venv's version
    with the venv's site-packages (the venv's own interpreter may sit under a 0700 /root)."""
    candidates: list[tuple[str, dict[str, str]]] = [(str(VENV / "bin" / "python"), {})]
    site = sorted((VENV / "lib").glob("python3.*/site-packages"))
    if site:
        version = site[-1].parent.name
        for exe in ("/usr/bin/" + version, "/usr/local/bin/" + version, "/usr/bin/python3"):
            candidates.append((exe, {"PYTHONPATH": str(site[-1]), "PYTHONNOUSERSITE": "1"}))
    tried = []
    for exe, extra in candidates:
        if not Path(exe).exists():
            continue
        try:
            r = run_as(user, [exe, "-c", "import qlam_core.auth.registry"],
                       {"PATH": "/usr/bin:/bin", "HOME": str(user.home), **extra}, timeout=60)
        except OSError as exc:
            tried.append("%s: %s" % (exe, exc.strerror))
            continue
        if r.returncode == 0:
            return exe, extra
        tried.append("%s: exit %d" % (exe, r.returncode))
    pytest.fail("no Python with QLAM Core runs as %s (tests/e2e/setup-oidc.sh); tried %s"
                % (user.name, tried))


def qlam_core_token(user: User, qsh_config_dir: Path) -> dict:
    """Run QLAM Core as the user with QSH_CONFIG_DIR=<dir>: its token (digest) and the
    refresh token it sees (digest, or None)."""
    exe, extra = job_python(user)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(user.home), "QSH_CONFIG_DIR": str(qsh_config_dir),
           "NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost", **extra}
    r = run_as(user, [exe, "-c", QLAM_CORE_SCRIPT, "token", "default", "qlam", "named"], env,
               timeout=120)
    lines = [l for l in r.stdout.splitlines() if l.strip()]
    assert r.returncode == 0 and lines, "QLAM Core: %s" % r.why()
    return json.loads(lines[-1])


def sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()
