"""qlam-hpc against a real OpenID Connect provider (oidc-provider over HTTPS on loopback).

Written against DESIGN.md: §4 commands (login -o json events, token, refresh, status),
§5 token store (QLAM Core's file format, modes), §8 exit codes, §9 no token in any log.
The device login is approved by driving the provider's own pages (approve_device).
"""

from __future__ import annotations

import base64
import json
import re
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from oidc_helpers import (
    Run, assert_no_secrets, counter_delta, credentials_cache_path, login_device, read_store,
    redact, run_qlam, store_tokens,
)

STORE_KEYS = {"version", "plugin", "context", "created_at", "updated_at", "expires_at", "data", "extra"}
TOKEN_DATA_KEYS = {"access_token", "token_type", "expires_in", "refresh_token", "id_token", "scope",
                   "created_at"}
EXIT_LOGIN_REQUIRED = 41


def parse_time(value) -> float:
    """Unix seconds from a number or an ISO 8601 timestamp."""
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        if re.fullmatch(r"\d+(\.\d+)?", value):
            return float(value)
        dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        if dt.tzinfo is None:
            raise AssertionError(f"timestamp without a timezone: {value!r}")
        return dt.timestamp()
    raise AssertionError(f"not a timestamp: {value!r}")


class Cli:
    """Runs qlam-hpc in one environment and remembers every stderr and every token value
    the store ever held, to check at the end that no token reached a log."""

    def __init__(self, env: dict[str, str]):
        self.env = env
        self.store = credentials_cache_path(env["QSH_CONFIG_DIR"])
        self.stderrs: list[tuple[str, str]] = []
        self.secrets: set[str] = set()

    def run(self, *args: str, check: bool = True, timeout: float = 120) -> Run:
        self.snapshot()
        result = run_qlam(self.env, *args, check=False, timeout=timeout)
        self.stderrs.append((" ".join(args), result.stderr))
        self.snapshot()
        if check and result.returncode != 0:
            pytest.fail(f"qlam-hpc {' '.join(args)} exited {result.returncode}; stderr: "
                        f"{redact(result.stderr, self.secrets)[-3000:]}")
        return result

    def login(self):
        login = login_device(self.env)
        self.stderrs.append(("login", login.stderr))
        self.snapshot()
        return login

    def tokens(self) -> dict:
        return store_tokens(read_store(self.store))

    def snapshot(self) -> None:
        if self.store.exists():
            try:
                td = self.tokens()
            except (ValueError, AssertionError):
                return
            self.secrets.update(v for k, v in td.items()
                                if k in ("access_token", "refresh_token", "id_token") and v)

    def assert_no_tokens_in_stderr(self) -> None:
        self.snapshot()
        for cmd, stderr in self.stderrs:
            assert_no_secrets(stderr, self.secrets, f"stderr of `qlam-hpc {cmd}`")


@pytest.fixture
def cli(qlam_env) -> Cli:
    return Cli(qlam_env)


def token_line(result: Run) -> str:
    """`token` prints the access token and a newline, nothing else."""
    assert result.stdout.endswith("\n"), "token output must end with a newline"
    lines = result.stdout.split("\n")
    assert len(lines) == 2 and lines[1] == "", f"token must print exactly one line, got {len(lines) - 1}"
    token = lines[0]
    assert token and token == token.strip() and " " not in token
    return token


def generation(doc: dict):
    meta = (doc.get("extra") or {}).get("qlam_hpc")
    assert isinstance(meta, dict), "extra.qlam_hpc (qlam-hpc's metadata) is missing"
    assert isinstance(meta.get("generation"), int), "extra.qlam_hpc.generation must be an integer"
    return meta["generation"]


def test_device_login_end_to_end(cli, oidc_server):
    before = oidc_server.counters()
    login = cli.login()

    auth = login.device_authorization
    assert auth["verification_uri"] == f"{oidc_server.issuer}/device"
    assert auth["verification_uri_complete"].startswith(f"{oidc_server.issuer}/device?user_code=")
    assert auth["user_code"] in auth["verification_uri_complete"].replace("%2D", "-")
    assert isinstance(auth["expires_in"], int) and 0 < auth["expires_in"] <= 600
    done = login.logged_in
    expires_at = parse_time(done["expires_at"])
    assert time.time() < expires_at <= time.time() + oidc_server.access_ttl + 5

    # The store: QLAM Core's file, at QLAM Core's path (DESIGN §5).
    assert cli.store.is_file(), f"no credential file at {cli.store}"
    doc = read_store(cli.store)
    assert set(doc) == STORE_KEYS
    assert doc["version"] == 1 and doc["plugin"] == "oauth" and doc["context"] == "default"
    assert set(doc["extra"]) <= {"token_data", "qlam_hpc"}, "QLAM Core rejects other extra keys"
    td = doc["extra"]["token_data"]
    assert set(td) == TOKEN_DATA_KEYS
    assert json.loads(base64.b64decode(doc["data"], validate=True)) == {"token": td["access_token"]}
    assert td["expires_in"] == oidc_server.access_ttl
    assert td["token_type"].lower() == "bearer"
    assert td["refresh_token"], "the device login must store a refresh token"
    assert "offline_access" in td["scope"].split()
    created = parse_time(td["created_at"])
    assert time.time() - 120 < created <= time.time()
    for key in ("created_at", "updated_at", "expires_at"):
        parse_time(doc[key])  # timezone-aware timestamps
    generation(doc)

    assert oidc_server.introspect(td["access_token"])["active"] is True
    assert oidc_server.login_alive(td["refresh_token"])
    delta = counter_delta(before, oidc_server.counters())
    assert delta.get("grant_success.device_code") == 1
    assert "invalid_grant" not in delta and "grant_revocations" not in delta

    cli.assert_no_tokens_in_stderr()


def test_store_file_and_directory_modes(cli):
    cli.login()
    assert oct(cli.store.stat().st_mode & 0o777) == "0o600"
    assert oct(cli.store.parent.stat().st_mode & 0o777) == "0o700"
    cli.run("refresh", "--force")
    assert oct(cli.store.stat().st_mode & 0o777) == "0o600"
    assert oct(cli.store.parent.stat().st_mode & 0o777) == "0o700"
    lock = Path(str(cli.store) + ".lock")
    if lock.exists():
        assert oct(lock.stat().st_mode & 0o777) == "0o600"
    temps = [p.name for p in cli.store.parent.iterdir() if p.name.endswith(".tmp")]
    assert not temps, f"temp files left behind: {temps}"
    cli.assert_no_tokens_in_stderr()


def test_token_prints_one_active_token(cli, oidc_server):
    cli.login()
    before = oidc_server.counters()
    token = token_line(cli.run("token", "--min-ttl", "10s"))
    assert token == cli.tokens()["access_token"]
    info = oidc_server.introspect(token)
    assert info["active"] is True and info["client_id"] == "qlam-hpc-e2e"
    # A fresh token is served from the store: no IdP request at all.
    delta = counter_delta(before, oidc_server.counters())
    assert not {k: v for k, v in delta.items() if k.startswith("token_requests")}, delta

    # Verbose logs: still one line on stdout, still no token in stderr.
    assert token_line(cli.run("-vvv", "token", "--min-ttl", "10s")) == token
    cli.assert_no_tokens_in_stderr()


def test_refresh_force_rotates_and_login_stays_alive(cli, oidc_server):
    cli.login()
    doc0 = read_store(cli.store)
    first = store_tokens(doc0)
    before = oidc_server.counters()

    cli.run("refresh", "--force")
    doc1 = read_store(cli.store)
    second = store_tokens(doc1)
    assert second["refresh_token"] != first["refresh_token"], "refresh must store the rotated refresh token"
    assert second["access_token"] != first["access_token"]
    assert generation(doc1) == generation(doc0) + 1
    old = oidc_server.token_state(first["refresh_token"])
    assert old["consumed"] is True, "the old refresh token is spent at the provider"
    assert oidc_server.login_alive(second["refresh_token"])

    # A second forced refresh uses the rotated token: the login is alive.
    cli.run("-vvv", "refresh", "--force")
    third = store_tokens(read_store(cli.store))
    assert third["refresh_token"] not in (first["refresh_token"], second["refresh_token"])
    assert oidc_server.token_state(second["refresh_token"])["consumed"] is True
    assert oidc_server.login_alive(third["refresh_token"])

    token = token_line(cli.run("token", "--min-ttl", "10s"))
    assert token == third["access_token"]
    assert oidc_server.introspect(token)["active"] is True

    delta = counter_delta(before, oidc_server.counters())
    assert delta.get("refreshes") == 2
    assert delta.get("token_requests.refresh_token") == 2
    assert "invalid_grant" not in delta and "grant_revocations" not in delta
    cli.assert_no_tokens_in_stderr()


# Keys of `status -o json` that carry each item DESIGN §4 lists; the names are not fixed
# by the contract, so each item is recognised by a pattern over the (nested) key path.
STATUS_ITEMS = {
    "who": r"who|user|subject|\bsub\b|account|identity|email",
    "access-token expiry": r"access.*expir|expir.*access|token.*expir|expires_at",
    "login age": r"login",
    "refresh-token expiry": r"refresh.*expir|expir.*refresh|refresh_token.*(until|valid|end)",
    "last refresh": r"last.*refresh|refreshed|last_refresh",
    "store path": r"store|path|credential",
    "lock method": r"lock",
    "M2M mints": r"m2m|mint",
    "M2M budget": r"budget",
}


def flatten(obj, prefix: str = "") -> dict[str, object]:
    out: dict[str, object] = {}
    if isinstance(obj, dict):
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}{k}."))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out.update(flatten(v, f"{prefix}{i}."))
    else:
        out[prefix.rstrip(".")] = obj
    return out


def test_status_json(cli, oidc_server):
    fresh = cli.run("-o", "json", "status", check=False)
    assert fresh.returncode == EXIT_LOGIN_REQUIRED, "status before any login: exit 41 (login needed)"

    cli.login()
    cli.run("refresh", "--force")  # so there is a last refresh to report
    result = cli.run("-o", "json", "status")
    lines = [l for l in result.stdout.splitlines() if l.strip()]
    assert len(lines) == 1, "status -o json prints one object"
    status = json.loads(lines[0])
    assert isinstance(status, dict)
    flat = flatten(status)
    keys = " ".join(flat).lower()
    missing = [item for item, pattern in STATUS_ITEMS.items()
               if not re.search(pattern, keys)]
    assert not missing, f"status -o json lacks {missing}; keys: {sorted(flat)}"
    values = [str(v) for v in flat.values()]
    assert any("e2e-user" in v for v in values), "status does not say who is logged in"
    assert str(cli.store) in values or str(cli.store.parent) in values, "status does not give the store path"
    assert any(v in ("ofd", "flock", "lease", "auto") for v in values), "status does not give the lock method"
    cli.assert_no_tokens_in_stderr()
    assert_no_secrets(result.stdout, cli.secrets, "status -o json output")


def test_token_near_expiry_refreshes_exactly_once(qlam_env_factory, oidc_server_factory):
    server = oidc_server_factory(access_ttl=40)
    cli = Cli(qlam_env_factory(server, name="short-ttl"))
    cli.login()
    first = cli.tokens()
    assert first["expires_in"] == 40
    # Wait until at most 10 s are left (by the exact expiry, so also by QLAM Core's earlier
    # minute-truncated one): with --min-ttl 30s (capped at half of 40 s: 20 s) a refresh is due.
    due = parse_time(first["created_at"]) + 30
    time.sleep(max(0.0, due - time.time()))
    before = server.counters()

    token = token_line(cli.run("token", "--min-ttl", "30s"))

    delta = counter_delta(before, server.counters())
    assert delta.get("token_requests.refresh_token") == 1, f"expected exactly one refresh request: {delta}"
    assert delta.get("refreshes") == 1
    assert delta.get("token_requests_total") == 1
    assert "invalid_grant" not in delta
    second = cli.tokens()
    assert token == second["access_token"] != first["access_token"]
    assert second["refresh_token"] != first["refresh_token"]
    assert server.introspect(token)["active"] is True
    assert server.login_alive(second["refresh_token"])
    cli.assert_no_tokens_in_stderr()


def test_no_token_in_stderr_of_any_command(cli, oidc_server):
    cli.login()
    commands = [
        ("token",), ("-v", "token"), ("-vvv", "token", "--min-ttl", "1s"),
        ("refresh",), ("-vvv", "refresh", "--force"),
        ("status",), ("-vvv", "-o", "json", "status"),
        ("env",), ("-vvv", "env", "--shell", "sh"),
    ]
    for args in commands:
        cli.run(*args)
    cli.assert_no_tokens_in_stderr()
    assert oidc_server.login_alive(cli.tokens()["refresh_token"])
