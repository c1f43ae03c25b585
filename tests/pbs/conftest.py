"""Fixtures for the PBS suite (see tests/pbs/README.md).

- `inst` (session): qlam-hpc installed under /tmp/qlam-pbs-test-*/ (binary, job script,
  site configs naming the test IdP, a 0755 staging root), removed at the end.
- `idp` (session): qlam-test-idp on loopback, auto-approving device logins, access tokens
  of 900 s (QLAM Core counts tokens as expired 300 s early).
- `user` (session): qlampbs, logged in once through the device flow.
- `must_login_user`: qlampbs2, a QLAM user (~/.qsh/credentials) who never logged in.
- `no_qlam_user`: qlampbs3, no QLAM state at all.
- `slow_user`: qlampbs4, freshly logged in (its login is spent by the slow-IdP test).
- `work`: a per-test directory for event and result files.

Needs root (the hooks drop to the job's user), useradd, and the binaries
(cargo build -p qlam-hpc -p qlam-test-idp).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from pbs_helpers import (  # noqa: E402
    ACCESS_TTL, ALL_USERS, USER_LOGGED_IN, USER_MUST_LOGIN, USER_NO_QLAM, USER_SLOW,
    Install, TestIdP, User, binary, ensure_user, kill_user_hooks, login, make_install,
    make_must_login_user, reset_qlam_state,
)


@pytest.fixture(scope="session")
def inst() -> Install:
    if os.geteuid() != 0:
        pytest.fail("the PBS suite must run as root (the hooks drop to the job's user)")
    binary("qlam-test-idp")
    install = make_install()
    try:
        yield install
    finally:
        for name in ALL_USERS:
            try:
                kill_user_hooks(ensure_user(name).uid)
            except Exception:
                pass
        if os.environ.get("QLAM_PBS_KEEP") != "1":
            shutil.rmtree(install.root, ignore_errors=True)


@pytest.fixture(scope="session")
def idp(inst: Install) -> TestIdP:
    server = TestIdP("--auto-approve", "--access-ttl", str(ACCESS_TTL), "--device-interval", "1",
                     log_dir=inst.root, name="idp")
    inst.write_site_configs(server.url)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def _users() -> dict[str, User]:
    return {name: ensure_user(name) for name in ALL_USERS}


@pytest.fixture(scope="session")
def user(inst: Install, idp: TestIdP, _users) -> User:
    u = _users[USER_LOGGED_IN]
    kill_user_hooks(u.uid)
    login(inst, u)
    return u


@pytest.fixture
def must_login_user(inst: Install, idp: TestIdP, _users) -> User:
    u = _users[USER_MUST_LOGIN]
    make_must_login_user(u)
    return u


@pytest.fixture
def no_qlam_user(inst: Install, idp: TestIdP, _users) -> User:
    u = _users[USER_NO_QLAM]
    reset_qlam_state(u)
    return u


@pytest.fixture
def slow_user(inst: Install, idp: TestIdP, _users) -> User:
    u = _users[USER_SLOW]
    kill_user_hooks(u.uid)
    login(inst, u)
    return u


@pytest.fixture
def work(tmp_path: Path) -> Path:
    return tmp_path
