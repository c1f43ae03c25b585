"""Helpers for the end-to-end suites that run against a real OIDC provider.

They start panva's oidc-provider (tests/e2e/oidc/server.mjs) over HTTPS on loopback with a
throwaway CA, play the user's browser through the provider's own device-approval pages,
build the environment `qlam-hpc` runs in, and compute QLAM Core's credential file names.
Token values are never printed: helpers return them for assertions only, and the error
messages they raise redact them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import html
import html.parser
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterable, Mapping
from urllib.parse import urljoin

import requests

E2E_DIR = Path(__file__).resolve().parent
REPO_ROOT = E2E_DIR.parent.parent
OIDC_DIR = E2E_DIR / "oidc"

CLIENT_ID = "qlam-hpc-e2e"
INTROSPECTOR_ID = "e2e-introspector"
INTROSPECTOR_SECRET = "e2e-introspector-secret"
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
USER_SCOPE = "openid profile email offline_access"

# RFC 8628 §3.5: without an `interval` in the device response (oidc-provider sends none)
# a client polls every 5 seconds.
DEFAULT_DEVICE_INTERVAL = 5

# QLAM Core's credential file naming (qlam_core.auth.credentials.credentials_cache).
_CACHE_KEY_SAFE_RE = re.compile(r"[^A-Za-z0-9_.-]+")
_CACHE_KEY_READABLE_MAX = 64


class E2EError(AssertionError):
    """A step of the end-to-end machinery failed; the message says which and why."""


# ----------------------------------------------------------------------------------------
# Redaction


# Every token value the helpers have seen in this process. conftest.py scrubs them from
# failure reports and captured output, so an assertion that compares tokens never shows one.
_SECRETS: set[str] = set()


def register_secrets(*values: object) -> None:
    """Remember token values so that reports and helper messages redact them."""
    for value in values:
        if isinstance(value, str) and len(value) >= 8:
            _SECRETS.add(value)


def register_token_response(body: object) -> None:
    if isinstance(body, Mapping):
        register_secrets(*(body.get(k) for k in ("access_token", "refresh_token", "id_token",
                                                 "device_code")))


def known_secrets() -> list[str]:
    return sorted(_SECRETS, key=len, reverse=True)


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """Return `text` with every given or registered secret replaced by a placeholder."""
    register_secrets(*secrets)
    for secret in known_secrets():
        if secret in text:
            text = text.replace(secret, "<redacted>")
    return text


def scrub(text: str, min_fragment: int = 8) -> str:
    """Like redact, and also removes leading or trailing fragments of registered secrets
    (pytest shortens long strings in assertion messages to their two ends)."""
    text = redact(text)
    for secret in known_secrets():
        for n in range(len(secret) - 1, min_fragment - 1, -1):
            head, tail = secret[:n], secret[-n:]
            if head in text:
                text = text.replace(head, "<redacted>")
            if tail in text:
                text = text.replace(tail, "<redacted>")
    return text


def assert_no_secrets(text: str, secrets: Iterable[str | None], where: str) -> None:
    """Fail (without echoing the secret) if any secret occurs in `text`."""
    for i, secret in enumerate(s for s in secrets if s):
        if secret in text:
            raise AssertionError(f"a token value (secret #{i}) appears in {where}")


# ----------------------------------------------------------------------------------------
# Certificates


@dataclasses.dataclass(frozen=True)
class CertPaths:
    ca: Path
    cert: Path
    key: Path


def make_certs(directory: Path) -> CertPaths:
    """Create a throwaway CA and a server certificate for 127.0.0.1 and localhost.

    The server certificate is what rustls/webpki accepts: X.509 v3, not a CA, SAN with
    IP 127.0.0.1, ::1 and DNS localhost, serverAuth EKU, key identifiers.
    """
    openssl = shutil.which("openssl")
    if not openssl:
        raise E2EError("openssl is not installed: it is needed to make the test CA")
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca = directory / "ca.key", directory / "ca.pem"
    key, csr, cert = directory / "server.key", directory / "server.csr", directory / "server.pem"
    ext = directory / "server-ext.cnf"
    ext.write_text(
        "subjectAltName=IP:127.0.0.1,IP:::1,DNS:localhost\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature,keyEncipherment\n"
        "extendedKeyUsage=serverAuth\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid\n"
    )
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    steps = [
        [openssl, "req", "-x509", *ec, "-keyout", ca_key, "-out", ca, "-days", "2",
         "-subj", "/CN=qlam-hpc e2e throwaway CA",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign",
         "-addext", "subjectKeyIdentifier=hash"],
        [openssl, "req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=localhost"],
        [openssl, "x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key,
         "-CAcreateserial", "-out", cert, "-days", "2", "-extfile", ext],
    ]
    for cmd in steps:
        proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True)
        if proc.returncode != 0:
            raise E2EError(f"openssl failed ({' '.join(map(str, cmd[:3]))}): {proc.stderr.strip()}")
    for path in (ca_key, key):
        path.chmod(0o600)
    return CertPaths(ca=ca, cert=cert, key=key)


def make_signing_key(path: Path) -> Path:
    """An RSA-2048 private key (PEM, 0600) for the provider's RS256 ID tokens."""
    path.parent.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
                           "-out", str(path)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise E2EError(f"openssl genpkey failed: {proc.stderr.strip()}")
    path.chmod(0o600)
    return path


# ----------------------------------------------------------------------------------------
# The provider process


def _kill_group(proc: subprocess.Popen, grace: float = 5.0) -> None:
    """Stop a process started with start_new_session=True and everything in its group."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        pass


class OidcServer:
    """A running oidc-provider. Create with `OidcServer.start(...)`; `stop()` when done."""

    def __init__(self, proc: subprocess.Popen, issuer: str, certs: CertPaths, log: Path,
                 access_ttl: int):
        self.proc = proc
        self.issuer = issuer
        self.certs = certs
        self.ca = str(certs.ca)
        self.log = log
        self.access_ttl = access_ttl
        self._http = _session(self.ca)

    @classmethod
    def start(cls, work_dir: Path, *, access_ttl: int = 120, refresh_ttl: int | None = None,
              device_ttl: int | None = None, extra_clients: list[dict] | None = None,
              signing_key: Path | None = None, timeout: float = 90.0) -> "OidcServer":
        """Start server.mjs with a fresh CA and server certificate under `work_dir`.

        `timeout` is generous: on a loaded 2-core machine node takes seconds to start.
        """
        node = shutil.which("node")
        if not node:
            raise E2EError("node is not installed: run tests/e2e/setup-oidc.sh")
        if not (OIDC_DIR / "node_modules" / "oidc-provider").is_dir():
            raise E2EError("oidc-provider is not installed: run tests/e2e/setup-oidc.sh")
        work_dir.mkdir(parents=True, exist_ok=True)
        certs = make_certs(work_dir / "tls")
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(work_dir),
            "TLS_CERT": str(certs.cert),
            "TLS_KEY": str(certs.key),
            "HOST": "127.0.0.1",
            "PORT": "0",
            "ACCESS_TTL": str(access_ttl),
            "EXIT_ON_STDIN_EOF": "1",
            "NODE_ENV": "test",
        }
        # Key generation inside node was seen to stall for minutes on a loaded machine; the
        # openssl CLI makes the key instead (the session fixture makes one for all servers).
        env["SIGNING_KEY"] = str(signing_key or make_signing_key(work_dir / "signing.pem"))
        if refresh_ttl is not None:
            env["REFRESH_TTL"] = str(refresh_ttl)
        if device_ttl is not None:
            env["DEVICE_TTL"] = str(device_ttl)
        if extra_clients:
            clients_file = work_dir / "extra-clients.json"
            clients_file.write_text(json.dumps(extra_clients))
            env["EXTRA_CLIENTS"] = str(clients_file)
        log = work_dir / "oidc-server.log"
        with open(log, "wb") as log_fh:
            proc = subprocess.Popen(
                [node, str(OIDC_DIR / "server.mjs")],
                cwd=OIDC_DIR, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=log_fh, start_new_session=True,
            )
        try:
            issuer = cls._read_issuer(proc, log, timeout)
            server = cls(proc, issuer, certs, log, access_ttl)
            server._wait_healthy(timeout)
        except BaseException:
            _kill_group(proc)
            raise
        return server

    @staticmethod
    def _read_issuer(proc: subprocess.Popen, log: Path, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        buf = b""
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        while b"\n" not in buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise E2EError(f"oidc server printed no issuer within {timeout}s; log:\n{_tail(log)}")
            ready, _, _ = select.select([fd], [], [], min(remaining, 0.5))
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    raise E2EError(f"oidc server exited (status {proc.wait()}); log:\n{_tail(log)}")
                buf += chunk
            elif proc.poll() is not None:
                raise E2EError(f"oidc server exited (status {proc.returncode}); log:\n{_tail(log)}")
        issuer = buf.split(b"\n", 1)[0].decode().strip()
        if not issuer.startswith("https://"):
            raise E2EError(f"oidc server printed {issuer!r} instead of an https issuer URL")
        return issuer

    def _wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            try:
                r = self._http.get(f"{self.issuer}/_e2e/health", timeout=5)
                if r.ok:
                    return
            except requests.RequestException as exc:  # not up yet
                last = exc
            time.sleep(0.1)
        raise E2EError(f"oidc server at {self.issuer} is not healthy: {last}; log:\n{_tail(self.log)}")

    def stop(self) -> None:
        if self.proc.stdin:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        _kill_group(self.proc)
        self._http.close()

    def alive(self) -> bool:
        return self.proc.poll() is None

    # --- what the tests read -------------------------------------------------------------

    def discovery(self) -> dict:
        r = self._http.get(f"{self.issuer}/.well-known/openid-configuration", timeout=10)
        r.raise_for_status()
        return r.json()

    def counters(self) -> dict:
        """Token-endpoint and event counters (see server.mjs)."""
        r = self._http.get(f"{self.issuer}/_e2e/counters", timeout=10)
        r.raise_for_status()
        return r.json()

    def introspect(self, token: str, hint: str | None = None) -> dict:
        """RFC 7662 introspection at the provider's own endpoint (as a confidential client)."""
        data = {"token": token}
        if hint:
            data["token_type_hint"] = hint
        r = self._http.post(
            self.discovery_cached()["introspection_endpoint"], data=data,
            auth=(INTROSPECTOR_ID, INTROSPECTOR_SECRET), timeout=10,
        )
        if not r.ok:
            raise E2EError(f"introspection failed: HTTP {r.status_code}")
        return r.json()

    def token_state(self, token: str) -> dict:
        """What the provider's store holds for a token (kind, consumed, grant_active, ...).

        Unlike presenting it at the token endpoint, this never spends a refresh token, so it
        can check that an old refresh token is spent without revoking the login.
        """
        r = self._http.post(f"{self.issuer}/_e2e/token", json={"token": token}, timeout=10)
        r.raise_for_status()
        return r.json()

    def login_alive(self, refresh_token: str) -> bool:
        """True when the refresh token is unspent and its grant (the login) still exists."""
        state = self.token_state(refresh_token)
        return bool(state.get("found") and state.get("kind") == "RefreshToken" and state.get("valid"))

    _discovery: dict | None = None

    def discovery_cached(self) -> dict:
        if self._discovery is None:
            self._discovery = self.discovery()
        return self._discovery


def _session(ca: str | os.PathLike) -> requests.Session:
    """A requests session that trusts only the test CA and ignores proxy/CA variables.

    (A Session's `verify` is otherwise overridden by REQUESTS_CA_BUNDLE/CURL_CA_BUNDLE.)
    """
    session = requests.Session()
    session.trust_env = False
    session.verify = str(ca)
    return session


def _tail(path: Path, limit: int = 4000) -> str:
    try:
        data = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return data[-limit:]


def counter_delta(before: Mapping[str, Any], after: Mapping[str, Any]) -> dict:
    """Per-key difference of two counters() snapshots (nested maps flattened with '.')."""
    def flat(d: Mapping[str, Any], prefix: str = "") -> dict[str, int]:
        out: dict[str, int] = {}
        for k, v in d.items():
            if isinstance(v, Mapping):
                out.update(flat(v, f"{prefix}{k}."))
            else:
                out[f"{prefix}{k}"] = int(v)
        return out
    b, a = flat(before), flat(after)
    return {k: a.get(k, 0) - b.get(k, 0) for k in sorted(set(a) | set(b)) if a.get(k, 0) != b.get(k, 0)}


# ----------------------------------------------------------------------------------------
# Playing the user's browser through oidc-provider's pages


@dataclasses.dataclass
class HtmlForm:
    action: str
    method: str
    id: str | None
    fields: dict[str, str]
    text_inputs: list[str]
    password_inputs: list[str]


class _PageParser(html.parser.HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.forms: list[HtmlForm] = []
        self.title = ""
        self._in_title = False
        self._form: HtmlForm | None = None
        self._skip = 0  # inside <script>/<style>
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: (v if v is not None else "") for k, v in attrs}
        if tag in ("script", "style"):
            self._skip += 1
        elif tag == "title":
            self._in_title = True
        elif tag == "form":
            self._form = HtmlForm(action=a.get("action", ""), method=a.get("method", "get").lower(),
                                  id=a.get("id"), fields={}, text_inputs=[], password_inputs=[])
            self.forms.append(self._form)
        elif tag == "input" and self._form is not None:
            name = a.get("name")
            if not name:
                return
            kind = a.get("type", "text").lower()
            if kind in ("submit", "button", "image", "reset"):
                return
            if kind == "password":
                self._form.password_inputs.append(name)
            elif kind in ("text", "email"):
                self._form.text_inputs.append(name)
            self._form.fields[name] = a.get("value", "")

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style") and self._skip:
            self._skip -= 1
        elif tag == "title":
            self._in_title = False
        elif tag == "form":
            self._form = None

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title += data
        if not self._skip and data.strip():
            self.text.append(data.strip())


def parse_page(body: str) -> _PageParser:
    parser = _PageParser()
    parser.feed(body)
    parser.close()
    return parser


def _page_summary(resp: requests.Response, page: _PageParser, secrets: Iterable[str]) -> str:
    text = " ".join(page.text)
    return redact(f"HTTP {resp.status_code} {resp.url} title={page.title.strip()!r}: {text[:1500]}", secrets)


def approve_device(issuer: str, user_code: str, ca: str | os.PathLike, *,
                   username: str = "e2e-user", password: str = "any-password",
                   verification_uri: str | None = None, max_steps: int = 12,
                   timeout: float = 15.0) -> None:
    """Approve a pending device authorization the way a user does in a browser.

    Goes through oidc-provider's own pages: the device page (`/device`), entering the user
    code, the device confirmation, the development login interaction (any username), the
    consent, and the success page. Each form is parsed from the HTML (hidden inputs such as
    `xsrf` included), never hard-coded. Raises E2EError with the page text if a step fails.
    """
    session = _session(ca)
    start = verification_uri or f"{issuer.rstrip('/')}/device"
    seen: list[str] = []
    try:
        resp = session.get(start, timeout=timeout)
        for _ in range(max_steps):
            page = parse_page(resp.text)
            title = page.title.strip()
            seen.append(title or "?")
            if resp.status_code >= 400 or "something went wrong" in title.lower():
                raise E2EError(f"device approval failed after {seen}: {_page_summary(resp, page, [user_code])}")
            if title == "Sign-in Success":
                return
            body_text = " ".join(page.text)
            if "code you entered is incorrect" in body_text or "error processing your request" in body_text \
                    or "interrupted" in body_text:
                raise E2EError(f"device approval rejected after {seen}: {_page_summary(resp, page, [])}")
            form = _choose_form(page)
            if form is None:
                raise E2EError(f"device approval: no form to submit after {seen}: "
                               f"{_page_summary(resp, page, [user_code])}")
            data = dict(form.fields)
            if "user_code" in data or "user_code" in form.text_inputs:
                data["user_code"] = data.get("user_code") or user_code
            if data.get("prompt") == "login":
                for name in form.text_inputs:
                    data[name] = username
                for name in form.password_inputs:
                    data[name] = password
            action = urljoin(resp.url, form.action or resp.url)
            if form.method == "post":
                resp = session.post(action, data=data, timeout=timeout)
            else:
                resp = session.get(action, params=data, timeout=timeout)
        raise E2EError(f"device approval did not finish within {max_steps} pages: {seen}")
    except requests.RequestException as exc:
        raise E2EError(f"device approval: HTTP request failed after {seen}: {exc}") from None
    finally:
        session.close()


def _choose_form(page: _PageParser) -> HtmlForm | None:
    forms = [f for f in page.forms if f.method in ("post", "get")]
    if not forms:
        return None
    # oidc-provider's pages carry one form each; prefer the one that moves the flow on.
    for wanted in ("op.deviceConfirmForm", "op.deviceInputForm"):
        for form in forms:
            if form.id == wanted:
                return form
    for form in forms:
        if form.fields.get("prompt") in ("login", "consent") or "user_code" in form.fields:
            return form
    return forms[0]


# ----------------------------------------------------------------------------------------
# Plain OAuth calls (what a client does), for the infrastructure tests


def device_authorization(server: OidcServer, *, client_id: str = CLIENT_ID,
                         scope: str = USER_SCOPE, **extra: str) -> dict:
    r = server._http.post(server.discovery_cached()["device_authorization_endpoint"],
                      data={"client_id": client_id, "scope": scope, **extra},
                      verify=server.ca, timeout=10)
    if r.status_code != 200:
        raise E2EError(f"device authorization failed: HTTP {r.status_code} {r.text[:300]}")
    return r.json()


def token_request(server: OidcServer, data: Mapping[str, str]) -> requests.Response:
    register_secrets(data.get("refresh_token"), data.get("device_code"))
    r = server._http.post(server.discovery_cached()["token_endpoint"], data=dict(data),
                          verify=server.ca, timeout=10)
    try:
        register_token_response(r.json())
    except ValueError:
        pass
    return r


def poll_device_token(server: OidcServer, device_code: str, *, client_id: str = CLIENT_ID,
                      interval: float = DEFAULT_DEVICE_INTERVAL, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        r = token_request(server, {"grant_type": DEVICE_GRANT, "device_code": device_code,
                                   "client_id": client_id})
        body = r.json()
        if r.status_code == 200:
            return body
        if body.get("error") not in ("authorization_pending", "slow_down"):
            raise E2EError(f"device token polling failed: HTTP {r.status_code} error={body.get('error')}")
        if body.get("error") == "slow_down":
            interval += 5
        if time.monotonic() + interval > deadline:
            raise E2EError("device token polling timed out")
        time.sleep(interval)


def refresh_grant(server: OidcServer, refresh_token: str, *, client_id: str = CLIENT_ID) -> requests.Response:
    return token_request(server, {"grant_type": "refresh_token", "refresh_token": refresh_token,
                                  "client_id": client_id})


# ----------------------------------------------------------------------------------------
# QLAM Core's store layout (DESIGN §5)


def cache_key(context: str = "default", provider: str = "qlam") -> str:
    return f"oauth_{context}_{provider}"


def cache_file_name(key: str) -> str:
    """`cache_<prefix>_<sha256hex(key)>.json`, exactly as QLAM Core 0.10 names it."""
    sanitized = _CACHE_KEY_SAFE_RE.sub("_", key).strip("._") or "default"
    prefix = sanitized[:_CACHE_KEY_READABLE_MAX]
    return f"cache_{prefix}_{hashlib.sha256(key.encode('utf-8')).hexdigest()}.json"


def credentials_cache_path(qsh_config_dir: str | os.PathLike, key: str = "oauth_default_qlam") -> Path:
    return Path(qsh_config_dir) / "credentials" / cache_file_name(key)


def read_store(path: str | os.PathLike) -> dict:
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def store_tokens(doc: Mapping[str, Any]) -> dict:
    """The token_data of a store file (access_token, refresh_token, expires_in, created_at...)."""
    extra = doc.get("extra") or {}
    token_data = extra.get("token_data")
    if not isinstance(token_data, dict):
        raise E2EError("store file has no extra.token_data")
    register_token_response(token_data)
    return token_data


# ----------------------------------------------------------------------------------------
# Running qlam-hpc


def qlam_bin() -> Path:
    return Path(os.environ.get("QLAM_HPC_BIN") or REPO_ROOT / "target" / "debug" / "qlam-hpc")


_SCHEDULER_VAR = re.compile(r"^(SLURM_|PBS_|SBATCH_|SALLOC_|SRUN_)")


def make_qlam_env(tmp: Path, server: OidcServer, **overrides: str) -> dict[str, str]:
    """Environment for running qlam-hpc against `server` with everything under `tmp`."""
    home = tmp / "home"
    (home / ".config").mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items()
           if not _SCHEDULER_VAR.match(k) and not k.startswith(("QLAM_", "QSH_"))
           and k not in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_DIR")}
    env.update({
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "QSH_CONFIG_DIR": str(tmp / "qsh"),
        "QLAM_HPC_SITE_CONFIG": str(tmp / "site.toml"),  # absent: no site config
        "QLAM_AUTH_BASE_URL": server.issuer,
        "QLAM_CLIENT_ID": CLIENT_ID,
        "QLAM_GRANT_TYPE": "device_code",
        "SSL_CERT_FILE": server.ca,
        "REQUESTS_CA_BUNDLE": server.ca,
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "NO_COLOR": "1",
    })
    for k in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        env.pop(k, None)
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    env.update(overrides)
    return env


@dataclasses.dataclass
class Run:
    args: list[str]
    returncode: int
    stdout: str
    stderr: str


def run_qlam(env: Mapping[str, str], *args: str, timeout: float = 120.0,
             check: bool = True) -> Run:
    """Run qlam-hpc; with check, fail (output redacted of store tokens) on a non-zero exit."""
    cmd = [str(qlam_bin()), *args]
    proc = subprocess.run(cmd, env=dict(env), capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    _register_printed_tokens(args, proc.stdout)
    run = Run(list(args), proc.returncode, proc.stdout, proc.stderr)
    if check and proc.returncode != 0:
        secrets = _store_secrets(env)
        raise E2EError(f"qlam-hpc {' '.join(args)} exited {proc.returncode}\n"
                       f"stdout: {redact(proc.stdout, secrets)[-2000:]}\n"
                       f"stderr: {redact(proc.stderr, secrets)[-4000:]}")
    return run


def _register_printed_tokens(args: Iterable[str], stdout: str) -> None:
    """`token` prints a token; `env` and `exec` carry one in QLAM_ACCESS_TOKEN."""
    args = list(args)
    if "token" in args and len(stdout.split()) == 1:
        register_secrets(stdout.strip())
    for match in re.finditer(r"QLAM_ACCESS_TOKEN[= ]['\"]?([^'\"\s;]+)", stdout):
        register_secrets(match.group(1))


def _store_secrets(env: Mapping[str, str]) -> list[str]:
    """Token values currently in the store of `env`, for redacting failure output."""
    qsh = env.get("QSH_CONFIG_DIR")
    if not qsh:
        return []
    secrets = []
    creds = Path(qsh) / "credentials"
    for path in creds.glob("cache_*.json") if creds.is_dir() else []:
        try:
            td = store_tokens(read_store(path))
        except (OSError, ValueError, E2EError):
            continue
        secrets += [td.get("access_token"), td.get("refresh_token"), td.get("id_token")]
    return [s for s in secrets if s]


@dataclasses.dataclass
class Login:
    events: list[dict]
    stderr: str
    returncode: int

    @property
    def device_authorization(self) -> dict:
        return self.events[0]

    @property
    def logged_in(self) -> dict:
        return self.events[-1]


def login_device(env: Mapping[str, str], *, username: str = "e2e-user",
                 timeout: float = 90.0) -> Login:
    """Run `qlam-hpc -o json login --device --no-qr`, approve it in the 'browser', wait.

    The first stdout line must be the device_authorization event; it is approved through
    the provider's pages; qlam-hpc must then exit 0 with a logged_in event last.
    """
    issuer = env["QLAM_AUTH_BASE_URL"]
    ca = env["SSL_CERT_FILE"]
    proc = subprocess.Popen([str(qlam_bin()), "-o", "json", "login", "--device", "--no-qr"],
                            env=dict(env), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True)
    try:
        first = _read_line(proc, timeout=30)
        try:
            event = json.loads(first)
        except ValueError:
            raise E2EError(f"login -o json: first stdout line is not JSON: {first[:200]!r}") from None
        if event.get("event") != "device_authorization":
            raise E2EError(f"login -o json: first event is {event.get('event')!r}, "
                           "expected 'device_authorization'")
        for field in ("verification_uri", "verification_uri_complete", "user_code", "expires_in"):
            if field not in event:
                raise E2EError(f"device_authorization event lacks {field!r}")
        approve_device(issuer, event["user_code"], ca, username=username)
        try:
            rest, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise E2EError(f"qlam-hpc login did not finish within {timeout}s after approval") from None
        out_lines = [first] + [l for l in rest.decode().splitlines() if l.strip()]
        stderr = err.decode(errors="replace")
        if proc.returncode != 0:
            raise E2EError(f"qlam-hpc login exited {proc.returncode}; stderr: "
                           f"{redact(stderr, _store_secrets(env))[-4000:]}")
        events = []
        for line in out_lines:
            try:
                events.append(json.loads(line))
            except ValueError:
                raise E2EError(f"login -o json printed a non-JSON stdout line: {line[:200]!r}") from None
        if events[-1].get("event") != "logged_in" or "expires_at" not in events[-1]:
            raise E2EError(f"login -o json: last event is {events[-1].get('event')!r}, expected logged_in")
        _store_secrets(env)  # registers the new tokens for redaction
        return Login(events=events, stderr=stderr, returncode=proc.returncode)
    finally:
        if proc.poll() is None:
            _kill_group(proc, grace=2)


def _read_line(proc: subprocess.Popen, timeout: float) -> str:
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    buf = b""
    while b"\n" not in buf:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise E2EError(f"qlam-hpc printed no line within {timeout}s")
        ready, _, _ = select.select([fd], [], [], min(remaining, 0.5))
        if ready:
            chunk = os.read(fd, 1)  # byte by byte: the rest stays in the pipe for communicate()
            if not chunk:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise E2EError(f"qlam-hpc exited ({proc.wait()}) before printing a line; stderr: {err[-2000:]}")
            buf += chunk
        elif proc.poll() is not None and not select.select([fd], [], [], 0)[0]:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise E2EError(f"qlam-hpc exited ({proc.returncode}) before printing a line; stderr: {err[-2000:]}")
    return buf.decode().rstrip("\n")


def venv_python() -> Path:
    """The Python of the e2e venv (QLAM Core installed), else the current interpreter."""
    candidate = REPO_ROOT / "tests" / ".work" / "venv" / "bin" / "python"
    return candidate if candidate.exists() else Path(sys.executable)


# ----------------------------------------------------------------------------------------
# QLAM Core (from the venv), run as a separate Python process against the same store

# Runs inside the venv's Python with QSH_CONFIG_DIR and the CA variables set. Loads the qsh
# config.json strictly (QLAM Core's Config.load would silently fall back to defaults on a
# bad file), builds the provider through QLAM Core's own registry, and prints one JSON
# object. Token values never leave the process: only their SHA-256 digests do.
QLAM_CORE_SCRIPT = r'''
import hashlib, json, sys, traceback

def digest(value):
    return hashlib.sha256(value.encode()).hexdigest() if value else None

def main(action, context, provider_name, resolve):
    from qlam_core.config.config import Config
    from qlam_core.config.config_models import QshClientConfig
    from qlam_core.auth.registry import auth_registry

    path = Config.get_config_path()
    if not path.exists():
        return {"ok": False, "error": "NoConfig", "message": f"no qsh config at {path}"}
    QshClientConfig.model_validate(json.loads(path.read_text()))  # strict: raise on a bad file
    config = Config.load(context)
    if resolve == "default":
        from qlam_core.common.context import AppContext
        from qlam_core.clients.http.resolver import ClientConfigResolver
        ctx = AppContext(context_name=context, cached_config=config)
        provider = ClientConfigResolver(ctx).resolve_auth_provider()
    else:
        entries = [p for p in (config.current_context.auth_providers or []) if p.name == provider_name]
        if not entries:
            return {"ok": False, "error": "NoProvider",
                    "message": f"context {config.context_name!r} has no auth provider {provider_name!r}"}
        provider = auth_registry.create_from_settings_strict(
            entries[0].provider, context_name=config.context_name,
            provider_name=provider_name, provider_config=entries[0])
    out = {"ok": True, "context": config.context_name, "provider_class": type(provider).__name__,
           "cache_key": getattr(getattr(provider, "flow", None), "cache_key", None)}
    if action == "refresh":
        out["refreshed"] = bool(provider.refresh_credentials(force=True))
    token = provider.token()
    out["token_sha256"] = digest(token)
    cached = provider.flow.load_cached_token()
    out["refresh_token_sha256"] = digest(cached.refresh_token if cached else None)
    out["expires_at"] = cached.expires_at.isoformat() if cached and cached.expires_at else None
    return out

try:
    result = main(*sys.argv[1:5])
except Exception as exc:
    result = {"ok": False, "error": type(exc).__name__, "message": str(exc),
              "code": getattr(exc, "error_code", None)}
print(json.dumps(result))
'''


def qlam_core(env: Mapping[str, str], action: str = "token", *, context: str = "default",
              provider: str = "qlam", resolve: str = "named", timeout: float = 120.0) -> dict:
    """Run QLAM Core against the store of `env`: action "token" or "refresh" (forced).

    resolve="named" builds provider `provider` from the qsh config through QLAM Core's
    registry; resolve="default" lets QLAM Core pick the context's default provider, as
    Bloqade does. Returns the script's JSON (token digests, never token values).
    """
    run_env = dict(env)
    run_env["REQUESTS_CA_BUNDLE"] = env["SSL_CERT_FILE"]
    run_env.pop("CURL_CA_BUNDLE", None)
    proc = subprocess.run([str(venv_python()), "-c", QLAM_CORE_SCRIPT, action, context, provider, resolve],
                          env=run_env, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    secrets = _store_secrets(env)
    lines = [l for l in proc.stdout.splitlines() if l.strip()]
    if proc.returncode != 0 or not lines:
        raise E2EError(f"QLAM Core script exited {proc.returncode}; stderr: "
                       f"{redact(proc.stderr, secrets)[-3000:]}")
    result = json.loads(lines[-1])
    if "message" in result:
        result["message"] = redact(result["message"], secrets)
    result["stderr"] = redact(proc.stderr, secrets)
    return result


def sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def write_qsh_config(qsh_dir: Path, *, issuer: str, client_id: str = CLIENT_ID,
                     grant_type: str = "device_code", tenant: str | None = None,
                     context: str = "default", provider: str = "qlam") -> Path:
    """A minimal qsh config.json that QLAM Core 0.10 accepts (its schema forbids extras)."""
    entry: dict[str, Any] = {"name": provider, "provider": "oauth", "auth_base_url": issuer,
                             "client_id": client_id, "grant_type": grant_type}
    if tenant:
        entry["tenant"] = tenant
    doc = {"current_context": context, "contexts": [{
        "name": context, "qpu": "default",
        "defaults": {"auth_provider": provider},
        "auth_providers": [entry],
    }]}
    qsh_dir.mkdir(parents=True, exist_ok=True)
    path = qsh_dir / "config.json"
    path.write_text(json.dumps(doc, indent=2))
    path.chmod(0o600)
    return path


def write_store_file(path: Path, token_response: Mapping[str, Any], *, context: str = "default",
                     created_at: "datetime | None" = None) -> None:
    """Write a credential file in QLAM Core's format (DESIGN §5), as qlam-hpc does."""
    import base64
    from datetime import datetime, timedelta, timezone
    created = created_at or datetime.now(timezone.utc)
    expires_in = token_response.get("expires_in")
    expires_at = (created.replace(second=0, microsecond=0) + timedelta(seconds=expires_in)
                  if expires_in is not None else None)
    token_data = {
        "access_token": token_response["access_token"],
        "token_type": token_response.get("token_type", "Bearer"),
        "expires_in": expires_in,
        "refresh_token": token_response.get("refresh_token"),
        "id_token": token_response.get("id_token"),
        "scope": token_response.get("scope"),
        "created_at": created.isoformat(),
    }
    now = datetime.now(timezone.utc).isoformat()
    doc = {
        "version": 1, "plugin": "oauth", "context": context,
        "created_at": now, "updated_at": now,
        "expires_at": expires_at.isoformat() if expires_at else None,
        "data": base64.b64encode(json.dumps({"token": token_response["access_token"]}).encode()).decode(),
        "extra": {"token_data": token_data},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.parent.chmod(0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(doc, fh, indent=2)
    os.replace(tmp, path)
