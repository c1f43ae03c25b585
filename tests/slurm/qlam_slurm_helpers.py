"""qlam-hpc on the test Slurm cluster: install it where jobs and hooks can use it, run real
OIDC providers for it, log test users in, and inspect what the hooks stage.

Used by test_hooks.py and test_job_script.py (they import the fixtures from here):

- `qlam_install` (session): the binary, the Slurm scripts, the job scripts, a site config
  and a CA bundle, copied under `<cluster work dir>/qlam/` (0755 directories, readable by
  the test users; the checkout or pytest's temporary directories may not be).
- `oidc_long` / `oidc_short` (session): oidc-provider over HTTPS on loopback, access tokens
  of 600 s (QLAM Core counts a token as expired 300 s early, so staged tokens stay usable
  for it) and of 40 s (for jobs that outlive their token). Their CAs are in the bundle that
  the hooks, the jobs and the logins trust (`SSL_CERT_FILE`).
- `scrub_tokens` (session, autouse in the test modules): redacts every token value the
  helpers have seen from failure reports, as tests/e2e/conftest.py does for the e2e suites.
- `cancel_jobs`: a list to append job ids to; they are cancelled after the test, so a
  failing test leaves no job (nor its renewer) running.

Token values never appear in output: the helpers return them for assertions only.
"""

from __future__ import annotations

import atexit
import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Mapping

import pytest

SLURM_DIR = Path(__file__).resolve().parent
REPO = SLURM_DIR.parent.parent
sys.path.insert(0, str(REPO / "tests" / "e2e"))

import oidc_helpers  # noqa: E402
from oidc_helpers import OidcServer, approve_device, register_secrets  # noqa: E402
from slurm_cluster import SlurmCluster, SlurmError, TestUser, wait_for  # noqa: E402

VENV = REPO / "tests" / ".work" / "venv"
CLIENT_ID = oidc_helpers.CLIENT_ID
STORE_NAME = oidc_helpers.cache_file_name(oidc_helpers.cache_key("default", "qlam"))

TENANT = "e2e-org"
LONG_TTL = 600
SHORT_TTL = 40


# ----------------------------------------------------------------------------------------
# Installation


@dataclasses.dataclass(frozen=True)
class QlamInstall:
    """qlam-hpc as a site would install it, under `<cluster work dir>/qlam`."""

    root: Path
    bin: Path  # the qlam-hpc binary (0755)
    prolog: Path
    task_prolog: Path
    epilog: Path
    job_sh: Path  # share/qlam-hpc/qlam-hpc-job.sh
    job_csh: Path
    site_config: Path  # [defaults] and [hooks]
    ca_bundle: Path  # every test provider's CA
    stage_dir: Path  # [hooks] stage_dir (node-local on a real site; one host here)
    hook_log: Path  # [hooks] log_file: one line per Prolog/Epilog run

    def hook_log_lines(self, job_id: str | None = None) -> list[str]:
        """Lines of the hooks' log, optionally only those about one job."""
        try:
            lines = self.hook_log.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return []
        if job_id is not None:
            lines = [l for l in lines if f"job {job_id}:" in l]
        return [oidc_helpers.redact(l) for l in lines]

    def hook_env(self) -> dict[str, str]:
        """What the Prolog, TaskProlog and Epilog need (slurmd passes them nothing else)."""
        return {
            "QLAM_HPC_BIN": str(self.bin),
            "QLAM_HPC_SITE_CONFIG": str(self.site_config),
            "SSL_CERT_FILE": str(self.ca_bundle),
        }

    def user_env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """Variables for qlam-hpc run by a user (login, job scripts)."""
        env = {
            "QLAM_HPC_BIN": str(self.bin),
            "QLAM_HPC_SITE_CONFIG": str(self.site_config),
            "SSL_CERT_FILE": str(self.ca_bundle),
            "REQUESTS_CA_BUNDLE": str(self.ca_bundle),
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
            "NO_COLOR": "1",
        }
        env.update(extra or {})
        return env

    def use_hooks(self, cluster: SlurmCluster) -> None:
        """The project's scripts as Prolog, TaskProlog and Epilog."""
        cluster.reconfigure(prolog=self.prolog, task_prolog=self.task_prolog,
                            epilog=self.epilog, hook_env=self.hook_env())

    def write_site_config(self, issuer: str) -> None:
        text = (
            "[defaults]\n"
            f'auth_base_url = "{issuer}"\n'
            f'client_id = "{CLIENT_ID}"\n'
            'grant_type = "device_code"\n'
            # QLAM Core 0.10 refuses a device_code provider without a tenant; the provider
            # ignores the organization it adds.
            f'tenant = "{TENANT}"\n'
            "\n[hooks]\n"
            f'stage_dir = "{self.stage_dir}"\n'
            f'log_file = "{self.hook_log}"\n'
        )
        _write_public(self.site_config, text)

    def trust(self, server: OidcServer) -> None:
        """Add the provider's CA to the bundle (re-read by every run of qlam-hpc)."""
        ca = Path(server.ca).read_text()
        current = self.ca_bundle.read_text() if self.ca_bundle.exists() else ""
        if ca not in current:
            _write_public(self.ca_bundle, current + ca)

    def staged_job_dirs(self, user: TestUser) -> list[Path]:
        """The job directories (`<jobid>-<node>`) under `<stage_dir>/<uid>`."""
        user_dir = self.stage_dir / str(user.uid)
        return sorted(p for p in user_dir.iterdir()) if user_dir.is_dir() else []


def _write_public(path: Path, text: str, mode: int = 0o644) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.chmod(mode)
    os.replace(tmp, path)


def _copy_public(src: Path, dst: Path, mode: int) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.parent.chmod(0o755)
    tmp = dst.with_name(dst.name + ".tmp")
    shutil.copyfile(src, tmp)
    tmp.chmod(mode)
    os.replace(tmp, dst)
    return dst


def install(cluster: SlurmCluster) -> QlamInstall:
    src_bin = Path(os.environ.get("QLAM_HPC_BIN") or REPO / "target" / "debug" / "qlam-hpc")
    if not (src_bin.is_file() and os.access(src_bin, os.X_OK)):
        pytest.fail(f"qlam-hpc binary not found at {src_bin} (build it with "
                    "`cargo build -p qlam-hpc`, or point QLAM_HPC_BIN at it)")
    root = cluster.work_dir / "qlam"
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(mode=0o755)
    root.chmod(0o755)
    share = root / "share" / "qlam-hpc"
    inst = QlamInstall(
        root=root,
        bin=_copy_public(src_bin, root / "bin" / "qlam-hpc", 0o755),
        prolog=_copy_public(REPO / "slurm" / "prolog.sh", root / "slurm" / "prolog.sh", 0o755),
        task_prolog=_copy_public(REPO / "slurm" / "task-prolog.sh",
                                 root / "slurm" / "task-prolog.sh", 0o755),
        epilog=_copy_public(REPO / "slurm" / "epilog.sh", root / "slurm" / "epilog.sh", 0o755),
        job_sh=_copy_public(REPO / "scripts" / "qlam-hpc-job.sh", share / "qlam-hpc-job.sh", 0o644),
        job_csh=_copy_public(REPO / "scripts" / "qlam-hpc-job.csh", share / "qlam-hpc-job.csh", 0o644),
        site_config=root / "site.toml",
        ca_bundle=root / "ca-bundle.pem",
        stage_dir=root / "stage",
        hook_log=root / "hooks.log",
    )
    return inst


# ----------------------------------------------------------------------------------------
# Providers (one per lifetime, shared by the test modules of a session)

_servers: dict[int, OidcServer] = {}
_server_root: list[Path] = []


def _stop_servers() -> None:
    while _servers:
        _servers.popitem()[1].stop()
    for root in _server_root:
        shutil.rmtree(root, ignore_errors=True)


atexit.register(_stop_servers)


def oidc_server(access_ttl: int) -> OidcServer:
    server = _servers.get(access_ttl)
    if server is not None and server.alive():
        return server
    if not _server_root:
        _server_root.append(Path(tempfile.mkdtemp(prefix="qlam-slurm-oidc-")))
    root = _server_root[0]
    key = root / "signing.pem"
    if not key.exists():
        oidc_helpers.make_signing_key(key)
    server = OidcServer.start(Path(tempfile.mkdtemp(prefix=f"ttl{access_ttl}-", dir=root)),
                              access_ttl=access_ttl, signing_key=key)
    _servers[access_ttl] = server
    return server


# ----------------------------------------------------------------------------------------
# Users' QLAM state


def qsh_dir(user: TestUser) -> Path:
    return user.home / ".qsh"


def store_path(user: TestUser) -> Path:
    return qsh_dir(user) / "credentials" / STORE_NAME


def reset_qlam_home(user: TestUser) -> None:
    """Remove everything QLAM from the user's home: no qsh config, no credentials."""
    shutil.rmtree(qsh_dir(user), ignore_errors=True)
    shutil.rmtree(user.home / ".config" / "qlam-hpc", ignore_errors=True)


def make_user_dir(user: TestUser, path: Path, mode: int = 0o700) -> None:
    """Create `path` (and parents below the home) owned by the user."""
    missing = []
    p = path
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        d.mkdir(mode=mode)
        d.chmod(mode)
        os.chown(d, user.uid, user.gid)


def read_store(user: TestUser) -> dict:
    """The user's store file (root reads it), its token values registered for redaction."""
    doc = oidc_helpers.read_store(store_path(user))
    oidc_helpers.store_tokens(doc)
    return doc


def store_tokens(user: TestUser) -> dict:
    return oidc_helpers.store_tokens(read_store(user))


def age_token(user: TestUser, seconds: float) -> None:
    """Make the user's stored access token `seconds` older (created_at and expires_at), so
    that a refresh falls due without waiting. Written as qlam-hpc writes: a temporary file
    in the same directory, renamed over the old one, owned by the user, 0600."""
    path = store_path(user)
    doc = oidc_helpers.read_store(path)
    td = doc["extra"]["token_data"]
    created = datetime.fromisoformat(td["created_at"].replace("Z", "+00:00"))
    if created.tzinfo is None:
        created = created.replace(tzinfo=timezone.utc)
    created -= timedelta(seconds=seconds)
    td["created_at"] = created.isoformat()
    if td.get("expires_in") is not None:
        doc["expires_at"] = (created.replace(second=0, microsecond=0)
                             + timedelta(seconds=int(td["expires_in"]))).isoformat()
    tmp = path.with_name(path.name + ".qlam-test.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(doc, fh, indent=2)
        fh.flush()
        os.fsync(fh.fileno())
    os.chown(tmp, user.uid, user.gid)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def token_left(user: TestUser) -> float:
    """Seconds left on the user's stored access token (qlam-hpc's reckoning)."""
    td = store_tokens(user)
    created = datetime.fromisoformat(td["created_at"].replace("Z", "+00:00"))
    if created.tzinfo is None:
        created = created.replace(tzinfo=timezone.utc)
    return created.timestamp() + int(td["expires_in"]) - time.time()


def login(cluster: SlurmCluster, inst: QlamInstall, user: TestUser, server: OidcServer,
          *, pin_issuer: bool = False, timeout: float = 90.0) -> dict:
    """`qlam-hpc -o json login --device --no-qr` run as the user (their HOME, the site
    config, the CA bundle), approved through the provider's pages. Returns the last event.

    pin_issuer: log in against `server` even if the site config names another provider
    (QLAM_AUTH_BASE_URL); the qsh config.json that login writes then keeps that provider
    for the user, as a QLAM Shell user's own config does.
    """
    extra = {"QLAM_AUTH_BASE_URL": server.issuer} if pin_issuer else {}
    env = cluster.user_env(user, inst.user_env(extra))
    proc = subprocess.Popen(
        [str(inst.bin), "-o", "json", "login", "--device", "--no-qr"],
        user=user.uid, group=user.gid, extra_groups=list(user.groups), env=env,
        cwd=str(user.home), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, start_new_session=True,
    )
    try:
        first = oidc_helpers._read_line(proc, timeout=30)
        event = json.loads(first)
        if event.get("event") != "device_authorization":
            raise SlurmError(f"login as {user.name}: first event is {event.get('event')!r}")
        approve_device(server.issuer, event["user_code"], server.ca, username=user.name)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise SlurmError(f"login as {user.name} did not finish within {timeout}s") from None
        if proc.returncode != 0:
            raise SlurmError(f"login as {user.name} exited {proc.returncode}: "
                             f"{oidc_helpers.redact(err.decode(errors='replace'))[-3000:]}")
        events = [json.loads(line) for line in out.decode().splitlines() if line.strip()]
        td = store_tokens(user)  # registers the new tokens for redaction
        assert td.get("refresh_token"), "login stored no refresh token"
        return events[-1] if events else event
    finally:
        if proc.poll() is None:
            oidc_helpers._kill_group(proc, grace=2)


def revoke_login(server: OidcServer, user: TestUser) -> None:
    """End the user's login at the provider: the stored refresh token is spent by a
    refresh the store never sees, then presented again, which revokes the grant."""
    rt = store_tokens(user)["refresh_token"]
    first = oidc_helpers.refresh_grant(server, rt)
    assert first.status_code == 200, f"refresh with the stored refresh token: HTTP {first.status_code}"
    again = oidc_helpers.refresh_grant(server, rt)
    assert again.status_code == 400 and again.json().get("error") == "invalid_grant"
    assert not server.login_alive(rt)


# ----------------------------------------------------------------------------------------
# Jobs and processes


def sha16(value: str) -> str:
    return oidc_helpers.sha256(value)[:16]


def read_token_file(path: Path) -> str:
    token = path.read_text().strip()
    register_secrets(token)
    return token


def renewers(uid: int) -> list[int]:
    """PIDs of the renewers (`qlam-hpc ... renew-as-user`) running as `uid`."""
    return user_processes(uid, "renew-as-user")


def user_processes(uid: int, step: str) -> list[int]:
    """PIDs of qlam-hpc processes running the user-side hook step `step` (e.g.
    `renew-as-user`, started as `qlam-hpc __internal renew-as-user ...`) as `uid`."""
    want = step.encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            status = (entry / "status").read_text()
        except OSError:
            continue
        if want not in cmdline or not cmdline[0].endswith(b"qlam-hpc"):
            continue
        m = re.search(r"^Uid:\s+(\d+)", status, re.M)
        if m and int(m.group(1)) == uid:
            pids.append(int(entry.name))
    return sorted(pids)


def running(pid: int) -> bool:
    """Whether the process exists and has not exited (a zombie waiting to be reaped has)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def started_at(pid: int) -> float:
    """When the process started, on time.monotonic()'s clock (CLOCK_MONOTONIC, as /proc)."""
    ticks = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    return ticks / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def files_under(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink())


def job_python(cluster: SlurmCluster, user: TestUser) -> tuple[str, dict[str, str]]:
    """A Python with QLAM Core that the job's user can run, and the variables it needs.

    The venv's interpreter may link to one the user cannot reach (e.g. pyenv under a 0700
    /root); the system python3 of the same version with the venv's site-packages on
    PYTHONPATH then does.
    """
    probe = "import qlam_core.auth.registry, qlam_core.config.config"
    candidates: list[tuple[str, dict[str, str]]] = [(str(VENV / "bin" / "python"), {})]
    site = sorted((VENV / "lib").glob("python3.*/site-packages"))
    if site:
        version = site[-1].parent.name  # python3.11
        for exe in (f"/usr/bin/{version}", "/usr/bin/python3", "/usr/local/bin/python3"):
            candidates.append((exe, {"PYTHONPATH": str(site[-1]), "PYTHONNOUSERSITE": "1"}))
    tried = []
    for exe, env in candidates:
        if not Path(exe).exists():
            continue
        try:
            proc = cluster.run_as(user, exe, "-c", probe, env=env, check=False)
        except OSError as exc:  # e.g. the interpreter is under a directory the user cannot enter
            tried.append(f"{exe}: {exc.strerror}")
            continue
        if proc.returncode == 0:
            return exe, env
        tried.append(f"{exe}: {proc.stderr.strip().splitlines()[-1:] or proc.returncode}")
    pytest.fail("no Python with QLAM Core runs as the test user (run tests/e2e/setup-oidc.sh); "
                f"tried: {tried}")


def outputs(directory: Path, pattern: str) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(directory.glob(pattern))}


def wait_gone(what: str, check, timeout: float = 30) -> None:
    wait_for(what, lambda: not check(), timeout)


def prepare_stage_dirs(inst: QlamInstall, user: TestUser) -> None:
    """Make `<stage_dir>` (root's, 0755) and `<stage_dir>/<uid>` (the user's, 0700) as the
    first Prolog of the user on the node does (they stay afterwards). The first Prologs of a
    user that start together race to create them (see
    test_hooks.py::test_concurrent_prologs_of_a_user_all_stage); tests about other things
    that start many jobs at once make them first."""
    inst.stage_dir.mkdir(mode=0o755, exist_ok=True)
    user_dir = inst.stage_dir / str(user.uid)
    user_dir.mkdir(mode=0o700, exist_ok=True)
    os.chown(user_dir, user.uid, user.gid)
    user_dir.chmod(0o700)


SLOW_CHOWN_C = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

/* lchown() that first sleeps QLAM_TEST_SLOW_CHOWN_SECONDS when the path contains
   QLAM_TEST_SLOW_CHOWN: widens the window between a directory's mkdir and its chown. */
int lchown(const char *path, uid_t owner, gid_t group) {
    const char *match = getenv("QLAM_TEST_SLOW_CHOWN");
    const char *secs = getenv("QLAM_TEST_SLOW_CHOWN_SECONDS");
    if (match && *match && path && strstr(path, match))
        sleep(secs ? (unsigned) atoi(secs) : 5);
    int (*real)(const char *, uid_t, gid_t) =
        (int (*)(const char *, uid_t, gid_t)) dlsym(RTLD_NEXT, "lchown");
    return real(path, owner, group);
}
"""


def build_slow_chown(directory: Path) -> Path | None:
    """An LD_PRELOAD library slowing lchown() down (see SLOW_CHOWN_C); None without a C
    compiler."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return None
    directory.mkdir(parents=True, exist_ok=True)
    src, lib = directory / "slow_chown.c", directory / "slow_chown.so"
    src.write_text(SLOW_CHOWN_C)
    proc = subprocess.run([cc, "-shared", "-fPIC", "-O2", "-o", str(lib), str(src), "-ldl"],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SlurmError(f"cannot build {lib}: {proc.stderr.strip()}")
    lib.chmod(0o755)
    return lib


# ----------------------------------------------------------------------------------------
# Fixtures (imported by the test modules)


class _ScrubPlugin:
    """Redact registered token values from reports (cf. tests/e2e/conftest.py)."""

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_makereport(self, item, call):
        outcome = yield
        report = outcome.get_result()
        if not oidc_helpers.known_secrets():
            return
        if report.failed and report.longrepr is not None and not isinstance(report.longrepr, tuple):
            text = str(report.longrepr)
            clean = oidc_helpers.scrub(text)
            if clean != text:
                report.longrepr = clean
        report.sections = [(name, oidc_helpers.redact(content)) for name, content in report.sections]


@pytest.fixture(scope="session", autouse=True)
def scrub_tokens(request):
    if not request.config.pluginmanager.has_plugin("qlam-slurm-scrub"):
        request.config.pluginmanager.register(_ScrubPlugin(), "qlam-slurm-scrub")


_installed: list[QlamInstall] = []


@pytest.fixture(scope="session")
def qlam_install(slurm_cluster: SlurmCluster) -> QlamInstall:
    if not _installed or not _installed[0].root.is_dir():
        _installed[:] = [install(slurm_cluster)]
    return _installed[0]


@pytest.fixture(scope="session")
def oidc_long(qlam_install: QlamInstall) -> OidcServer:
    server = oidc_server(LONG_TTL)
    qlam_install.trust(server)
    qlam_install.write_site_config(server.issuer)
    return server


@pytest.fixture(scope="session")
def oidc_short(qlam_install: QlamInstall, oidc_long: OidcServer) -> OidcServer:
    server = oidc_server(SHORT_TTL)
    qlam_install.trust(server)
    return server


@pytest.fixture
def cancel_jobs(slurm_cluster: SlurmCluster):
    jobs: list[str] = []
    yield jobs
    for job in jobs:
        slurm_cluster.run("scancel", job, check=False)
    for job in jobs:
        try:
            slurm_cluster.wait_job(job, timeout=60)
        except SlurmError:
            pass


__all__ = [
    "LONG_TTL", "SHORT_TTL", "STORE_NAME", "TENANT", "QlamInstall", "age_token",
    "build_slow_chown", "cancel_jobs", "cpu_seconds", "files_under", "job_python", "login",
    "make_user_dir", "oidc_long", "oidc_short", "outputs", "prepare_stage_dirs",
    "qlam_install", "qsh_dir", "read_store", "read_token_file", "renewers",
    "reset_qlam_home", "revoke_login", "running", "scrub_tokens", "sha16", "started_at",
    "store_path", "store_tokens", "token_left", "user_processes", "wait_gone",
]
