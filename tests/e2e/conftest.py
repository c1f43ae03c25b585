"""Fixtures for the end-to-end suites: a real OIDC provider and qlam-hpc's environment.

- `oidc_server`: one oidc-provider for the session (HTTPS on 127.0.0.1, access tokens of
  120 s). `oidc_server_factory(access_ttl=...)` starts (and caches) providers with other
  settings. Every provider process group is killed at the end of the session, and also
  when the session dies (atexit, and the provider exits when its stdin closes).
- `qlam_bin`: the binary under test: $QLAM_HPC_BIN, else <repo>/target/debug/qlam-hpc. A
  missing binary fails the test, unless QLAM_E2E_ALLOW_MISSING_BIN=1 turns that into a skip.
- `qlam_env`: the environment to run qlam-hpc in, against `oidc_server`, with a private
  HOME, XDG_CONFIG_HOME, QSH_CONFIG_DIR and no site config or scheduler variables.
  `qlam_env_factory(server, name=..., **overrides)` makes more (other server, second user).
"""

from __future__ import annotations

import atexit
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

import oidc_helpers  # noqa: E402
from oidc_helpers import OidcServer, make_qlam_env, qlam_bin as _qlam_bin_path  # noqa: E402

_started: list[OidcServer] = []


def _stop_all() -> None:
    while _started:
        _started.pop().stop()


atexit.register(_stop_all)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Scrub every token value the helpers have seen from failure reports and captured
    output: an assertion comparing two tokens must not print them."""
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


@pytest.fixture(scope="session")
def oidc_server_factory(tmp_path_factory):
    """`factory(access_ttl=120, refresh_ttl=None, device_ttl=None, extra_clients=None)`.

    Servers with the same settings are shared within the session; tests that count
    requests compare counters() snapshots taken before and after (see counter_delta).
    """
    cache: dict[tuple, OidcServer] = {}
    signing_key = oidc_helpers.make_signing_key(tmp_path_factory.mktemp("oidc-keys") / "signing.pem")

    def factory(access_ttl: int = 120, refresh_ttl: int | None = None,
                device_ttl: int | None = None, extra_clients: list[dict] | None = None,
                shared: bool = True) -> OidcServer:
        key = (access_ttl, refresh_ttl, device_ttl, repr(extra_clients))
        if shared and key in cache and cache[key].alive():
            return cache[key]
        server = OidcServer.start(tmp_path_factory.mktemp(f"oidc-ttl{access_ttl}-"),
                                  access_ttl=access_ttl, refresh_ttl=refresh_ttl,
                                  device_ttl=device_ttl, extra_clients=extra_clients,
                                  signing_key=signing_key)
        _started.append(server)
        if shared:
            cache[key] = server
        return server

    try:
        yield factory
    finally:
        for server in list(_started):
            server.stop()
            _started.remove(server)


@pytest.fixture(scope="session")
def oidc_server(oidc_server_factory) -> OidcServer:
    """The session's provider: HTTPS on 127.0.0.1, access tokens of 120 s."""
    return oidc_server_factory(access_ttl=120)


@pytest.fixture(scope="session")
def qlam_bin() -> Path:
    path = _qlam_bin_path()
    if path.is_file() and os.access(path, os.X_OK):
        return path
    reason = (f"qlam-hpc binary not found at {path} (build it with `cargo build -p qlam-hpc`, "
              "or point QLAM_HPC_BIN at it)")
    if os.environ.get("QLAM_E2E_ALLOW_MISSING_BIN") == "1":
        pytest.skip(reason)
    pytest.fail(reason + "; set QLAM_E2E_ALLOW_MISSING_BIN=1 to skip these tests instead")


@pytest.fixture
def qlam_env_factory(tmp_path, qlam_bin):
    """`factory(server, name="user", **overrides)`: a fresh environment under tmp_path/name."""
    def factory(server: OidcServer, name: str = "user", **overrides: str) -> dict[str, str]:
        root = tmp_path / name
        root.mkdir(parents=True, exist_ok=True)
        return make_qlam_env(root, server, **overrides)
    return factory


@pytest.fixture
def qlam_env(qlam_env_factory, oidc_server) -> dict[str, str]:
    return qlam_env_factory(oidc_server)


@pytest.fixture(scope="session")
def helpers():
    """The oidc_helpers module, for tests that prefer a fixture to an import."""
    return oidc_helpers
