"""qlam-hpc and QLAM Core 0.10 (the Python library, from the e2e venv) share one store.

QLAM Core runs as a separate Python process with the same QSH_CONFIG_DIR and the test CA
(SSL_CERT_FILE for httpx, REQUESTS_CA_BUNDLE for requests). It finds the provider through
the qsh config.json that `qlam-hpc login` writes when none exists (DESIGN §3), reads the
credential qlam-hpc wrote, refreshes and writes its own file, and qlam-hpc carries on with
that file: the refresh token QLAM Core rotated is the live one.

Access tokens here live 1800 s: QLAM Core treats a token as expired 300 s before its
(minute-truncated) expiry, so shorter tokens would always look expired to it.
"""

from __future__ import annotations

import json

import pytest

from oidc_helpers import (
    assert_no_secrets, counter_delta, credentials_cache_path, login_device, qlam_core,
    read_store, run_qlam, sha256, store_tokens, write_qsh_config,
)

TENANT = "e2e-org"
INTEROP_ACCESS_TTL = 1800


@pytest.fixture
def interop(oidc_server_factory, qlam_env_factory):
    server = oidc_server_factory(access_ttl=INTEROP_ACCESS_TTL)
    # QLAM Core 0.10 refuses a device_code provider without a tenant, so one is set; the
    # provider ignores the organization scope/parameter it adds.
    env = qlam_env_factory(server, name="interop", QLAM_TENANT=TENANT)
    return server, env


def qlam_token(env) -> str:
    out = run_qlam(env, "token").stdout
    lines = out.split("\n")
    assert len(lines) == 2 and lines[1] == "" and lines[0], "token prints one line"
    return lines[0]


def core_ok(result: dict) -> dict:
    assert result.get("ok"), f"QLAM Core failed: {result.get('error')}: {result.get('message')}"
    return result


def test_login_writes_a_qsh_config_qlam_core_accepts(interop):
    server, env = interop
    login_device(env)
    path = credentials_cache_path(env["QSH_CONFIG_DIR"]).parent.parent / "config.json"
    assert path.is_file(), "login writes a minimal qsh config.json when none exists"
    doc = json.loads(path.read_text())
    from qlam_core.config.config_models import QshClientConfig  # the e2e venv has QLAM Core

    config = QshClientConfig.model_validate(doc)
    contexts = {c.name: c for c in config.contexts}
    assert "default" in contexts and (config.current_context in (None, "default"))
    providers = {p.name: p for p in contexts["default"].auth_providers or []}
    assert "qlam" in providers
    qlam = providers["qlam"]
    assert qlam.provider == "oauth"
    assert str(qlam.auth_base_url).rstrip("/") == server.issuer
    assert qlam.client_id == "qlam-hpc-e2e"
    assert qlam.grant_type.value == "device_code"
    assert qlam.tenant == TENANT
    tokens = store_tokens(read_store(credentials_cache_path(env["QSH_CONFIG_DIR"])))
    assert_no_secrets(path.read_text(), [tokens["access_token"], tokens["refresh_token"],
                                         tokens["id_token"]], "the qsh config.json")

    # QLAM Core finds the provider by name and as the context's default (Bloqade's way).
    token = qlam_token(env)
    assert core_ok(qlam_core(env, "token"))["token_sha256"] == sha256(token)
    result = core_ok(qlam_core(env, "token", resolve="default"))
    assert result["token_sha256"] == sha256(token)
    assert result["cache_key"] == "oauth_default_qlam"


def test_login_leaves_an_existing_qsh_config_alone(interop, tmp_path):
    server, env = interop
    qsh = credentials_cache_path(env["QSH_CONFIG_DIR"]).parent.parent
    path = write_qsh_config(qsh, issuer=server.issuer, tenant=TENANT)
    doc = json.loads(path.read_text())
    doc["contexts"].append({"name": "other", "qpu": "other-qpu"})
    path.write_text(json.dumps(doc, indent=2))
    original = path.read_bytes()

    login_device(env)
    assert path.read_bytes() == original, "the qsh config is read, never rewritten"
    assert core_ok(qlam_core(env, "token"))["token_sha256"] == sha256(qlam_token(env))


def test_qlam_core_and_qlam_hpc_share_the_store(interop):
    server, env = interop
    store = credentials_cache_path(env["QSH_CONFIG_DIR"])
    login_device(env)
    start = server.counters()
    seen: set[str] = set()

    def remember():
        td = store_tokens(read_store(store))
        seen.update(v for k, v in td.items() if k in ("access_token", "refresh_token", "id_token") and v)
        return td

    # 1. QLAM Core reads what qlam-hpc wrote.
    first = remember()
    token = qlam_token(env)
    assert token == first["access_token"]
    assert core_ok(qlam_core(env, "token"))["token_sha256"] == sha256(token)

    # 2. After qlam-hpc rotates, QLAM Core reads the new token.
    run_qlam(env, "refresh", "--force")
    second = remember()
    assert second["refresh_token"] != first["refresh_token"]
    token = qlam_token(env)
    assert token == second["access_token"] != first["access_token"]
    core = core_ok(qlam_core(env, "token"))
    assert core["token_sha256"] == sha256(token)
    assert core["refresh_token_sha256"] == sha256(second["refresh_token"])

    # 3. QLAM Core refreshes and writes its own file; qlam-hpc serves that token.
    core = core_ok(qlam_core(env, "refresh"))
    assert core["refreshed"] is True
    third = remember()
    assert third["refresh_token"] != second["refresh_token"]
    assert core["token_sha256"] == sha256(third["access_token"])
    assert server.token_state(second["refresh_token"])["consumed"] is True
    token = qlam_token(env)
    assert sha256(token) == core["token_sha256"]
    assert server.introspect(token)["active"] is True

    # 4. qlam-hpc refreshes with the refresh token QLAM Core rotated: it is the live one.
    run_qlam(env, "refresh", "--force")
    fourth = remember()
    assert fourth["refresh_token"] not in (first["refresh_token"], second["refresh_token"],
                                           third["refresh_token"])
    assert server.token_state(third["refresh_token"])["consumed"] is True
    token = qlam_token(env)
    assert token == fourth["access_token"]
    assert core_ok(qlam_core(env, "token"))["token_sha256"] == sha256(token)

    # The login is alive at the provider and was never put at risk.
    assert server.login_alive(fourth["refresh_token"])
    assert server.introspect(token)["active"] is True
    delta = counter_delta(start, server.counters())
    assert delta.get("refreshes") == 3
    assert "invalid_grant" not in delta and "grant_revocations" not in delta

    # QLAM Core's file is still one qlam-hpc can read and QLAM Core can read back.
    doc = read_store(store)
    assert set(doc["extra"]) <= {"token_data", "qlam_hpc"}
    assert oct(store.stat().st_mode & 0o777) == "0o600"
    result = run_qlam(env, "-vvv", "token")
    assert_no_secrets(result.stderr, seen, "stderr of qlam-hpc -vvv token")
