"""Fixtures and helpers for the stress suites: the bundled test IdP and qlam-hpc.

`TestIdP` starts `qlam-test-idp` on loopback and drives its admin endpoints;
`Hpc` is one throwaway qlam-hpc environment (HOME, QSH_CONFIG_DIR, ...) with helpers
to log in, run one command, run a herd of concurrent commands, and read the store.

Test modules import what they need explicitly, e.g.
`from idp import idp_factory, hpc_factory, Hpc, TestIdP`. Nothing here prints a token:
tokens are compared, never shown (assertion messages use `redact`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import select
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable

import pytest

__all__ = [
    "REPO",
    "E2E",
    "VENV_PYTHON",
    "STORE_KEYS",
    "TEMP_FILE_RE",
    "TOKEN_DATA_KEYS",
    "TestIdP",
    "Hpc",
    "HerdResult",
    "bin_path",
    "fp",
    "redact",
    "store_name",
    "idp_factory",
    "hpc_factory",
    "qlam_core_load",
]

E2E = Path(__file__).resolve().parent
REPO = E2E.parents[1]
VENV_PYTHON = REPO / "tests" / ".work" / "venv" / "bin" / "python"

# QLAM Core's credentials file: these and only these top-level keys (DESIGN §5).
STORE_KEYS = {"version", "plugin", "context", "created_at", "updated_at", "expires_at", "data", "extra"}
TOKEN_DATA_KEYS = {"access_token", "token_type", "expires_in", "refresh_token", "id_token", "scope",
                   "created_at"}

DISCOVERY_CACHE_RE = re.compile(r"^qlam-hpc-discovery-[A-Za-z0-9_-]+\.json$")
# A temp file of fsutil::write_atomic: `.<name>.tmp.<pid>.<8 hex>`.
TEMP_FILE_RE = re.compile(r"^\.(?P<name>.+)\.tmp\.(?P<pid>\d+)\.[0-9a-f]{8}$")

# Every child process and HTTP call here is bounded.
HTTP_TIMEOUT = 10.0
START_TIMEOUT = 20.0


def bin_path(name: str) -> Path:
    """The binary to test: $QLAM_HPC_BIN / $QLAM_TEST_IDP_BIN, else target/debug/<name>.

    A missing binary fails the test loudly (never a silent skip)."""
    env = {"qlam-hpc": "QLAM_HPC_BIN", "qlam-test-idp": "QLAM_TEST_IDP_BIN"}[name]
    p = Path(os.environ[env]) if os.environ.get(env) else REPO / "target" / "debug" / name
    if not (p.is_file() and os.access(p, os.X_OK)):
        pytest.fail(f"{name} binary not found at {p}: build it (cargo build -p {name}) or set {env}")
    return p


def redact(s: str | bytes | None) -> str:
    """Text safe for an assertion message: token-looking words replaced."""
    if s is None:
        return ""
    if isinstance(s, bytes):
        s = s.decode("utf-8", "replace")
    out = []
    for word in s.split(" "):
        if word.startswith(("at_", "rt_", "eyJ")) or (len(word) > 40 and " " not in word
                                                       and not word.startswith(("/", "http"))):
            out.append("<redacted>")
        else:
            out.append(word)
    return " ".join(out)[-2000:]


def fp(token: str | None) -> str:
    """A token's fingerprint, safe to show in assertions (pytest prints compared values)."""
    if token is None:
        return "<none>"
    token = token.strip()
    return f"{token[:3]}#{hashlib.sha256(token.encode()).hexdigest()[:12]}" if token else "<empty>"


def store_name(context: str = "default", provider: str = "qlam") -> str:
    """QLAM Core's credentials file name for (context, provider) (DESIGN §5)."""
    key = f"oauth_{context}_{provider}"
    prefix = re.sub(r"[^A-Za-z0-9_.-]+", "_", key).strip("._")[:64] or "default"
    return f"cache_{prefix}_{hashlib.sha256(key.encode()).hexdigest()}.json"


# --------------------------------------------------------------------------------------
# The test IdP


class TestIdP:
    """One running qlam-test-idp process, stopped by `stop()` (or the fixture)."""

    __test__ = False  # not a pytest test class

    def __init__(self, *args: str, log_dir: Path, name: str = "idp") -> None:
        self.args = list(args)
        self.log_path = log_dir / f"{name}.stderr"
        cmd = [str(bin_path("qlam-test-idp")), "--bind", "127.0.0.1:0", "--exit-on-stdin-close", *args]
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._log, start_new_session=True)
        self.url = self._read_url()

    def _read_url(self) -> str:
        deadline = time.monotonic() + START_TIMEOUT
        buf = b""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        while time.monotonic() < deadline:
            r, _, _ = select.select([fd], [], [], 0.2)
            if r:
                chunk = os.read(fd, 4096)
                if not chunk:
                    break
                buf += chunk
                for line in buf.decode("utf-8", "replace").splitlines():
                    if line.startswith("listening "):
                        return line.split(" ", 1)[1].strip().rstrip("/")
            elif self.proc.poll() is not None:
                break
        self.stop()
        pytest.fail(f"qlam-test-idp did not start: stdout={buf!r} stderr={self.stderr()}")

    def stderr(self) -> str:
        try:
            return redact(self.log_path.read_bytes()[-4000:])
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()  # --exit-on-stdin-close
            except Exception:
                pass
            try:
                self.proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=5)
        for f in (self.proc.stdout, self._log):
            try:
                f.close()
            except Exception:
                pass

    # -- admin API -------------------------------------------------------------------

    def _req(self, method: str, path: str, *, form: dict | None = None, body: Any = None,
             timeout: float = HTTP_TIMEOUT) -> Any:
        data = None
        headers = {}
        if form is not None:
            data = urllib.parse.urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        elif body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        elif method == "POST":
            data = b""
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                raw = r.read()
        except urllib.error.HTTPError as e:
            raise AssertionError(f"{method} {path} -> HTTP {e.code}: {redact(e.read())}") from None
        if not raw:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            return raw.decode("utf-8", "replace")

    def counters(self) -> dict[str, int]:
        return self._req("GET", "/admin/counters")

    def reset_counters(self) -> None:
        self._req("POST", "/admin/reset-counters")

    def approve(self, user_code: str) -> None:
        self._req("POST", "/admin/approve", form={"user_code": user_code})

    def pending(self) -> Any:
        return self._req("GET", "/admin/pending")

    def fault(self, fault: Any, *, endpoint: str = "token", times: int | None = None) -> None:
        """Inject `fault` at `endpoint`; times=None means until cleared."""
        body: dict[str, Any] = {"endpoint": endpoint, "fault": fault}
        if times is not None:
            body["times"] = times
        self._req("POST", "/admin/faults", body=body)

    def clear_faults(self) -> None:
        self._req("POST", "/admin/clear-faults")

    def config(self, **kw: Any) -> None:
        self._req("POST", "/admin/config", body=kw)

    def revoke_all(self) -> None:
        self._req("POST", "/admin/revoke-all")

    def introspect(self, token: str) -> bool:
        return bool(self._req("POST", "/admin/introspect", form={"token": token}).get("active"))


# --------------------------------------------------------------------------------------
# qlam-hpc


@dataclass
class HerdResult:
    """Outcome of N concurrent qlam-hpc processes."""

    codes: list[int]
    outs: list[str]
    errs: list[str]
    wall: float

    def fps(self) -> set[str]:
        """Fingerprints of the distinct stdout contents."""
        return {fp(o) for o in self.outs}

    def code_counts(self) -> dict[int, int]:
        c: dict[int, int] = {}
        for x in self.codes:
            c[x] = c.get(x, 0) + 1
        return c

    def summary(self) -> str:
        """Exit-code histogram plus a few distinct (redacted) stderr lines: safe to show."""
        errs = sorted({redact(e.strip().splitlines()[-1]) for e in self.errs if e.strip()})[:5]
        distinct = len(set(self.outs))
        return f"codes={self.code_counts()} distinct_stdout={distinct} wall={self.wall:.1f}s stderr={errs}"


class Run(subprocess.CompletedProcess):
    """A finished qlam-hpc run whose repr (shown by pytest in failed asserts) hides output."""

    def __repr__(self) -> str:
        return f"Run({' '.join(map(str, self.args[1:]))!r}, returncode={self.returncode})"


class Hpc:
    """One isolated qlam-hpc environment (DESIGN §3 variables), against one IdP."""

    def __init__(self, root: Path, idp_url: str | None, *, config_dir: Path | None = None,
                 extra_env: dict[str, str] | None = None) -> None:
        self.root = root
        self.home = root / "home"
        self.qsh = config_dir or (root / "qsh")
        for d in (self.home, root / "cfg", self.qsh, root / "herd"):
            d.mkdir(parents=True, exist_ok=True)
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("SLURM_", "PBS_", "QLAM_", "QSH_", "XDG_"))}
        env.update({
            "HOME": str(self.home),
            "XDG_CONFIG_HOME": str(root / "cfg"),
            "QSH_CONFIG_DIR": str(self.qsh),
            "QLAM_HPC_SITE_CONFIG": str(root / "none.toml"),
            "QLAM_CLIENT_ID": "qlam-hpc-test",
            "QLAM_GRANT_TYPE": "device_code",
            "NO_PROXY": "127.0.0.1,localhost",
        })
        for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
            env.pop(k, None)
        if idp_url:
            env["QLAM_AUTH_BASE_URL"] = idp_url
        if extra_env:
            env.update(extra_env)
        self.env = env
        self.bin = str(bin_path("qlam-hpc"))

    # -- paths -----------------------------------------------------------------------

    @property
    def cred_dir(self) -> Path:
        return self.qsh / "credentials"

    @property
    def store(self) -> Path:
        return self.cred_dir / store_name()

    @property
    def lock(self) -> Path:
        return Path(str(self.store) + ".lock")

    # -- running -----------------------------------------------------------------------

    def run(self, *args: str, timeout: float = 60, env: dict[str, str] | None = None,
            check: int | None = None) -> Run:
        e = dict(self.env, **(env or {}))
        c = subprocess.run([self.bin, *args], env=e, stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=timeout)
        p = Run(c.args, c.returncode, c.stdout, c.stderr)
        if check is not None:
            assert p.returncode == check, (
                f"qlam-hpc {' '.join(args)} exited {p.returncode}, expected {check}: "
                f"stderr={redact(p.stderr)}")
        return p

    def popen(self, *args: str, env: dict[str, str] | None = None, **kw: Any) -> subprocess.Popen:
        e = dict(self.env, **(env or {}))
        kw.setdefault("stdin", subprocess.DEVNULL)
        return subprocess.Popen([self.bin, *args], env=e, **kw)

    def login(self, idp: TestIdP | None = None, *, timeout: float = 60) -> dict:
        """Device login; approves through the IdP's admin API unless it auto-approves.

        Returns the last JSON event (`logged_in`)."""
        p = self.popen("-o", "json", "login", "--device", "--no-qr",
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        assert p.stdout is not None and p.stderr is not None
        events: list[dict] = []
        deadline = time.monotonic() + timeout
        buf = b""
        approved = False
        try:
            fd = p.stdout.fileno()
            while time.monotonic() < deadline:
                r, _, _ = select.select([fd], [], [], 0.2)
                if r:
                    chunk = os.read(fd, 65536)
                    if not chunk:
                        break
                    buf += chunk
                    *lines, rest = buf.split(b"\n")
                    buf = rest
                    for line in lines:
                        if line.strip():
                            events.append(json.loads(line))
                    if events and not approved and idp is not None:
                        first = events[0]
                        assert first.get("event") == "device_authorization", f"first event {first.get('event')}"
                        idp.approve(first["user_code"])
                        approved = True
                elif p.poll() is not None:
                    break
            p.wait(timeout=max(1.0, deadline - time.monotonic()))
            # The last event may have been written just before the process exited, after the
            # last select: read what is left.
            buf += p.stdout.read()
            for line in buf.split(b"\n"):
                if line.strip():
                    events.append(json.loads(line))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=5)
        err = p.stderr.read().decode("utf-8", "replace")
        p.stdout.close()
        p.stderr.close()
        assert p.returncode == 0, f"login exited {p.returncode}: {redact(err)}"
        assert events and events[-1].get("event") == "logged_in", f"events={[e.get('event') for e in events]}"
        assert self.store.is_file(), "login wrote no store file"
        return events[-1]

    def herd(self, n: int, *args: str, timeout: float = 180, env: dict[str, str] | None = None,
             tag: str = "herd") -> HerdResult:
        """Start n `qlam-hpc ARGS` at once (all Popen first, then wait), bounded by timeout."""
        d = self.root / "herd" / tag
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        procs = []
        t0 = time.monotonic()
        try:
            for i in range(n):
                with open(d / f"{i}.out", "wb") as o, open(d / f"{i}.err", "wb") as e:
                    procs.append(self.popen(*args, env=env, stdout=o, stderr=e))
            deadline = t0 + timeout
            codes = []
            for p in procs:
                try:
                    codes.append(p.wait(timeout=max(0.1, deadline - time.monotonic())))
                except subprocess.TimeoutExpired:
                    codes.append(-999)
            wall = time.monotonic() - t0
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                    p.wait(timeout=10)
        outs = [(d / f"{i}.out").read_text(errors="replace") for i in range(n)]
        errs = [(d / f"{i}.err").read_text(errors="replace") for i in range(n)]
        return HerdResult(codes, outs, errs, wall)

    # -- the store -------------------------------------------------------------------

    def read_store(self) -> dict:
        return json.loads(self.store.read_text())

    def check_store(self) -> dict:
        """Assert the store is QLAM Core's format (DESIGN §5); return it."""
        doc = self.read_store()
        assert set(doc) == STORE_KEYS, f"top-level keys {sorted(doc)}"
        assert doc["version"] == 1 and doc["plugin"] == "oauth", (doc["version"], doc["plugin"])
        data = json.loads(base64.b64decode(doc["data"], validate=True))
        assert set(data) == {"token"}, f"data keys {sorted(data)}"
        td = doc["extra"]["token_data"]
        assert set(td) == TOKEN_DATA_KEYS, f"token_data keys {sorted(td)}"
        assert data["token"] == td["access_token"], "data.token differs from token_data.access_token"
        extra_keys = set(doc["extra"]) - {"token_data", "qlam_hpc"}
        assert not extra_keys, f"unexpected extra keys {sorted(extra_keys)}"
        mode = self.store.stat().st_mode & 0o777
        assert mode == 0o600, f"store mode {oct(mode)}"
        return doc

    def access_token(self) -> str:
        """The raw stored access token: never put it in an assert; compare `fp()`s."""
        return self.read_store()["extra"]["token_data"]["access_token"]

    def access_fp(self) -> str:
        return fp(self.access_token())

    def refresh_fp(self) -> str:
        return fp(self.read_store()["extra"]["token_data"].get("refresh_token"))

    def generation(self) -> int | None:
        return (self.read_store()["extra"].get("qlam_hpc") or {}).get("generation")

    def seconds_left(self) -> float:
        """Seconds until the stored token expires, precisely: `token_data.created_at` plus
        `expires_in` (the top-level `expires_at` is QLAM Core's, truncated to the minute)."""
        td = self.read_store()["extra"]["token_data"]
        created = datetime.fromisoformat(td["created_at"].replace("Z", "+00:00"))
        if created.tzinfo is None:
            created = created.replace(tzinfo=timezone.utc)
        return created.timestamp() + float(td["expires_in"]) - time.time()

    def wait_until_refresh_due(self, *, margin: float = 0.5, limit: float = 120) -> None:
        """Sleep until less than half the IdP's last `expires_in` is left on the token,
        the point where qlam-hpc's capped min_ttl makes a refresh due (DESIGN §6 step 1)."""
        doc = self.read_store()
        expires_in = float(doc["extra"]["token_data"]["expires_in"])
        wait = self.seconds_left() - expires_in / 2 + margin
        assert wait < limit, f"refresh due only in {wait:.0f}s"
        if wait > 0:
            time.sleep(wait)

    def wait_until_expired(self, *, margin: float = 0.3, limit: float = 120) -> None:
        """Sleep until the stored access token has expired (no still-valid token to serve)."""
        wait = self.seconds_left() + margin
        assert wait < limit, f"token expires only in {wait:.0f}s"
        if wait > 0:
            time.sleep(wait)

    def stored_refresh_token(self) -> str | None:
        """The raw stored refresh token: never put it in an assert."""
        return self.read_store()["extra"]["token_data"].get("refresh_token")

    def leftovers(self, allowed: Iterable[str] = ()) -> list[str]:
        """Files in the credentials dir other than the documented ones: the store, its lock
        file, the discovery cache (`qlam-hpc-discovery-<fp>.json`) and `allowed` names."""
        keep = {self.store.name, self.lock.name, *allowed}
        if not self.cred_dir.is_dir():
            return []
        return sorted(n for n in os.listdir(self.cred_dir)
                      if n not in keep and not DISCOVERY_CACHE_RE.match(n))


def qlam_core_load(paths: Iterable[Path]) -> list[str]:
    """Load each credentials file with QLAM Core's strict loader (one interpreter for all).

    Returns one line per file: "ok" or the error. Needs qlam-core in the test venv."""
    paths = [str(p) for p in paths]
    if not paths:
        return []
    py = str(VENV_PYTHON) if VENV_PYTHON.exists() else sys.executable
    code = (
        "import sys, json\n"
        "from pathlib import Path\n"
        "from qlam_core.auth.credentials.credentials_cache import CredentialsCache\n"
        "for p in json.loads(sys.stdin.read()):\n"
        "    try:\n"
        "        c = CredentialsCache._load_cache_file_strict(Path(p))\n"
        "        td = (c.extra or {}).get('token_data') if c else None\n"
        "        ok = c is not None and bool(c.data.get('token')) and td is not None\n"
        "        print('ok' if ok else 'empty')\n"
        "    except Exception as e:\n"
        "        print('error: %s: %s' % (type(e).__name__, e))\n"
    )
    p = subprocess.run([py, "-c", code], input=json.dumps(paths), capture_output=True, text=True,
                       timeout=120, env={k: v for k, v in os.environ.items() if not k.startswith("QSH_")})
    assert p.returncode == 0, f"QLAM Core loader failed: {redact(p.stderr)}"
    return p.stdout.splitlines()


# --------------------------------------------------------------------------------------
# fixtures


@pytest.fixture
def idp_factory(tmp_path: Path):
    """Start IdPs: `idp_factory("--access-ttl", "60")`; all stopped at teardown."""
    started: list[TestIdP] = []

    def make(*args: str) -> TestIdP:
        i = TestIdP(*args, log_dir=tmp_path, name=f"idp{len(started)}")
        started.append(i)
        return i

    yield make
    for i in started:
        i.stop()


@pytest.fixture
def hpc_factory(tmp_path: Path):
    """Make isolated qlam-hpc environments: `hpc_factory(idp, config_dir=..., extra_env=...)`."""
    n = [0]

    def make(idp: TestIdP | None, **kw: Any) -> Hpc:
        n[0] += 1
        return Hpc(tmp_path / f"hpc{n[0]}", idp.url if idp else None, **kw)

    return make
