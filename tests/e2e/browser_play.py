"""Helpers for test_browser_login.py: run `qlam-hpc login --browser` and play the user's
browser with plain HTTP requests (python `requests`, never a real browser).

- `BrowserLogin` starts `qlam-hpc -o json login --browser --no-browser` and reads its JSON
  events without ever blocking for good;
- `walk_to_callback` follows the `authorization_request` URL through oidc-provider's own
  interaction pages (dev login with any username, consent; or "Cancel") and stops at the
  redirect to qlam-hpc's loopback redirect URI, which it returns without following;
- `deliver` sends that redirect to the listener on 127.0.0.1, as the browser would.

Nothing here prints a token or an authorization code: error messages show page titles and
redacted text only.
"""

from __future__ import annotations

import json
import os
import re
import select
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Mapping
from urllib.parse import parse_qs, urljoin, urlsplit

import requests

from oidc_helpers import E2EError, parse_page, qlam_bin, redact

PROC_TCP = Path("/proc/net/tcp")
PROC_TCP6 = Path("/proc/net/tcp6")


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def set_redirect_port(env: Mapping[str, str], port: int) -> Path:
    """Write the user TOML (`$XDG_CONFIG_HOME/qlam-hpc/config.toml`) with `redirect_port`."""
    path = Path(env["XDG_CONFIG_HOME"]) / "qlam-hpc" / "config.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"[defaults]\nredirect_port = {port}\n")
    return path


def query(url: str) -> dict[str, str]:
    """The query parameters of `url` (first value of each)."""
    return {k: v[0] for k, v in parse_qs(urlsplit(url).query, keep_blank_values=True).items()}


class BrowserLogin:
    """A running `qlam-hpc -o json login ARGS`; `finish()` waits for it, `kill()` ends it."""

    def __init__(self, env: Mapping[str, str], *args: str) -> None:
        self.args = ["-o", "json", "login", *(args or ("--browser", "--no-browser"))]
        self.proc = subprocess.Popen([str(qlam_bin()), *self.args], env=dict(env),
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, start_new_session=True)
        self.lines: list[str] = []
        self._buf = b""

    def next_event(self, timeout: float = 60.0) -> dict:
        """The next JSON line on stdout."""
        assert self.proc.stdout is not None
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                self.kill()
                raise E2EError(f"qlam-hpc login printed no event within {timeout}s")
            ready, _, _ = select.select([fd], [], [], min(remaining, 0.5))
            if ready:
                chunk = os.read(fd, 65536)
                if not chunk:
                    rc = self.proc.wait(timeout=30)
                    err = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr else ""
                    raise E2EError(f"qlam-hpc login exited {rc} before the next event; "
                                   f"stderr: {redact(err)[-3000:]}")
                self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        text = line.decode()
        self.lines.append(text)
        try:
            return json.loads(text)
        except ValueError:
            raise E2EError(f"login -o json printed a non-JSON line: {text[:200]!r}") from None

    def running(self) -> bool:
        return self.proc.poll() is None

    def finish(self, timeout: float = 60.0) -> tuple[int, list[dict], str]:
        """Wait for the exit: (exit code, every event printed, stderr)."""
        try:
            rest, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise E2EError(f"qlam-hpc login did not finish within {timeout}s") from None
        text = (self._buf + rest).decode()
        self._buf = b""
        self.lines += [l for l in text.splitlines() if l.strip()]
        events = []
        for line in self.lines:
            try:
                events.append(json.loads(line))
            except ValueError:
                raise E2EError(f"login -o json printed a non-JSON line: {line[:200]!r}") from None
        return self.proc.returncode, events, err.decode(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=10)


def _session(ca: str) -> requests.Session:
    s = requests.Session()
    s.trust_env = False  # no proxies, no CA variables
    s.verify = ca
    return s


def _summary(resp: requests.Response) -> str:
    page = parse_page(resp.text)
    text = " ".join(page.text)[:1200]
    return redact(f"HTTP {resp.status_code} {resp.url.split('?')[0]} title={page.title.strip()!r}: {text}")


def walk_to_callback(url: str, ca: str, redirect_uri: str, *, username: str = "e2e-browser-user",
                     password: str = "any-password", cancel: bool = False,
                     max_steps: int = 20, timeout: float = 15.0) -> str:
    """Follow the authorization URL through the provider's pages until it redirects to
    `redirect_uri`; return that redirect (not followed). Signs in as `username` and grants
    consent; with `cancel`, presses the pages' "Cancel" link (access_denied) instead of
    granting consent. Forms are parsed from the HTML, never hard-coded."""
    session = _session(ca)
    titles: list[str] = []
    try:
        resp = session.get(url, allow_redirects=False, timeout=timeout)
        for _ in range(max_steps):
            if resp.status_code in (301, 302, 303, 307, 308):
                location = urljoin(resp.url, resp.headers["Location"])
                if location.split("?")[0] == redirect_uri:
                    return location
                resp = session.get(location, allow_redirects=False, timeout=timeout)
                continue
            page = parse_page(resp.text)
            titles.append(page.title.strip() or "?")
            if resp.status_code != 200 or "went wrong" in page.title.lower():
                raise E2EError(f"authorization failed after {titles}: {_summary(resp)}")
            forms = [f for f in page.forms if f.fields.get("prompt") in ("login", "consent")]
            if not forms:
                raise E2EError(f"no login or consent form after {titles}: {_summary(resp)}")
            form = forms[0]
            if cancel and form.fields.get("prompt") == "consent":
                m = re.search(r'href="([^"]*/abort)"', resp.text)
                if not m:
                    raise E2EError(f"no Cancel link on the consent page: {_summary(resp)}")
                resp = session.get(urljoin(resp.url, m.group(1)), allow_redirects=False, timeout=timeout)
                continue
            data = dict(form.fields)
            if data.get("prompt") == "login":
                for name in form.text_inputs:
                    data[name] = username
                for name in form.password_inputs:
                    data[name] = password
            action = urljoin(resp.url, form.action or resp.url)
            resp = session.post(action, data=data, allow_redirects=False, timeout=timeout)
        raise E2EError(f"no redirect to {redirect_uri} within {max_steps} steps: {titles}")
    except requests.RequestException as exc:
        raise E2EError(f"authorization: HTTP request failed after {titles}: {exc}") from None
    finally:
        session.close()


def deliver(location: str, port: int, timeout: float = 15.0) -> requests.Response:
    """GET `location` (http://localhost:<port>/...) from the listener on 127.0.0.1, as a
    browser does when it follows the IdP's redirect."""
    parts = urlsplit(location)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    with requests.Session() as s:
        s.trust_env = False
        return s.get(f"http://127.0.0.1:{port}{target}", headers={"Host": f"localhost:{port}"},
                     allow_redirects=False, timeout=timeout)


def listening_addresses(port: int) -> tuple[list[str], list[str]]:
    """Local addresses (hex, as in /proc/net/tcp*) of the sockets listening on `port`."""
    def scan(path: Path) -> list[str]:
        try:
            lines = path.read_text().splitlines()[1:]
        except OSError:
            return []
        out = []
        for line in lines:
            f = line.split()
            addr, _, p = f[1].rpartition(":")
            if int(p, 16) == port and f[3] == "0A":
                out.append(addr)
        return out
    return scan(PROC_TCP), scan(PROC_TCP6)


def local_ipv4_addresses() -> list[str]:
    """This machine's IPv4 addresses outside 127/8 (from `ip`), possibly none."""
    try:
        out = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True,
                             timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return []
    addrs = re.findall(r"\binet (\d+\.\d+\.\d+\.\d+)/", out)
    return [a for a in addrs if not a.startswith("127.")]


def connects(host: str, port: int) -> bool:
    """Whether a TCP connection to host:port is accepted (these are this machine's own
    addresses: nothing leaves the host)."""
    try:
        with socket.create_connection((host, port), timeout=3):
            return True
    except OSError:
        return False
