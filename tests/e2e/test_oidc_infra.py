"""The end-to-end machinery itself, without qlam-hpc: the provider, the device-approval
driver, refresh-token rotation and reuse detection, QLAM Core against the provider.

Run: tests/.work/venv/bin/pytest tests/e2e -k infra
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from oidc_helpers import (
    CLIENT_ID, DEVICE_GRANT, E2EError, OidcServer, approve_device, assert_no_secrets,
    cache_file_name, counter_delta, credentials_cache_path, device_authorization,
    make_qlam_env, poll_device_token, qlam_core, read_store, refresh_grant, register_token_response, sha256,
    store_tokens, token_request, write_qsh_config, write_store_file,
)

# Fields QLAM Core 0.10's OIDCConfiguration requires from discovery (a missing one makes
# its discovery fail).
QLAM_CORE_DISCOVERY_FIELDS = [
    "issuer", "authorization_endpoint", "token_endpoint", "device_authorization_endpoint",
    "userinfo_endpoint", "jwks_uri", "revocation_endpoint", "end_session_endpoint",
    "scopes_supported", "response_types_supported", "code_challenge_methods_supported",
    "token_endpoint_auth_methods_supported",
]


def device_login(server: OidcServer, scope: str = "openid profile email offline_access") -> dict:
    """A complete device flow with plain requests, approved through the provider's pages."""
    auth = device_authorization(server, scope=scope)
    pending = token_request(server, {"grant_type": DEVICE_GRANT, "device_code": auth["device_code"],
                                     "client_id": CLIENT_ID})
    assert pending.status_code == 400 and pending.json()["error"] == "authorization_pending"
    approve_device(server.issuer, auth["user_code"], server.ca)
    return poll_device_token(server, auth["device_code"], interval=1, timeout=30)


def test_infra_discovery_matches_what_clients_need(oidc_server):
    meta = oidc_server.discovery()
    assert meta["issuer"] == oidc_server.issuer
    assert not meta["issuer"].endswith("/"), "oidc-provider's issuer has no trailing slash"
    assert oidc_server.issuer.startswith("https://127.0.0.1:")
    for field in QLAM_CORE_DISCOVERY_FIELDS:
        assert field in meta, f"discovery lacks {field}, QLAM Core would reject it"
    assert DEVICE_GRANT in meta["grant_types_supported"]
    assert "refresh_token" in meta["grant_types_supported"]
    assert "none" in meta["token_endpoint_auth_methods_supported"]
    assert "offline_access" in meta["scopes_supported"]
    assert meta["introspection_endpoint"].startswith(oidc_server.issuer)


def test_infra_certificate_is_strict_x509_for_127_0_0_1(oidc_server):
    certs = oidc_server.certs
    proc = subprocess.run(["openssl", "verify", "-x509_strict", "-purpose", "sslserver",
                           "-CAfile", str(certs.ca), str(certs.cert)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = subprocess.run(["openssl", "x509", "-in", str(certs.cert), "-noout", "-ext", "subjectAltName"],
                          capture_output=True, text=True, check=True).stdout
    assert "IP Address:127.0.0.1" in text and "DNS:localhost" in text
    assert oct(certs.key.stat().st_mode & 0o777) == "0o600"


def test_infra_device_flow_approved_through_provider_pages(oidc_server):
    before = oidc_server.counters()
    auth = device_authorization(oidc_server)
    assert "interval" not in auth, "oidc-provider sends no interval: clients must default to 5 s"
    assert auth["verification_uri"] == f"{oidc_server.issuer}/device"
    assert auth["verification_uri_complete"].startswith(f"{oidc_server.issuer}/device?user_code=")
    assert isinstance(auth["expires_in"], int) and auth["expires_in"] > 0

    pending = token_request(oidc_server, {"grant_type": DEVICE_GRANT, "device_code": auth["device_code"],
                                          "client_id": CLIENT_ID})
    assert pending.status_code == 400 and pending.json()["error"] == "authorization_pending"

    approve_device(oidc_server.issuer, auth["user_code"], oidc_server.ca, username="alice")
    tokens = poll_device_token(oidc_server, auth["device_code"], interval=1, timeout=30)

    assert tokens["token_type"] == "Bearer"
    assert tokens["expires_in"] == 120
    assert tokens.get("refresh_token"), "device flow must issue a refresh token"
    assert tokens.get("id_token")
    assert set(tokens["scope"].split()) == {"openid", "profile", "email", "offline_access"}

    info = oidc_server.introspect(tokens["access_token"])
    assert info["active"] is True
    assert info["sub"] == "alice" and info["client_id"] == CLIENT_ID
    assert info["iss"] == oidc_server.issuer
    assert oidc_server.introspect(tokens["refresh_token"])["active"] is True
    assert oidc_server.login_alive(tokens["refresh_token"])

    delta = counter_delta(before, oidc_server.counters())
    assert delta["device_authorizations"] == 1
    assert delta["token_requests.device_code"] == 2
    assert delta["grant_success.device_code"] == 1
    assert delta["grant_errors.authorization_pending"] == 1
    assert "invalid_grant" not in delta


def test_infra_device_flow_via_verification_uri_complete(oidc_server):
    auth = device_authorization(oidc_server)
    approve_device(oidc_server.issuer, auth["user_code"], oidc_server.ca,
                   verification_uri=auth["verification_uri_complete"])
    tokens = poll_device_token(oidc_server, auth["device_code"], interval=1, timeout=30)
    assert oidc_server.introspect(tokens["access_token"])["active"] is True


def test_infra_device_flow_with_unknown_scopes_and_params(oidc_server):
    """What qlam-hpc sends with a tenant/audience: Auth0's organization scope and audience
    parameter. oidc-provider ignores both (unknown scope dropped from the grant)."""
    auth = device_authorization(oidc_server, scope="openid profile email offline_access organization:e2e-org",
                                audience="https://api.example.test")
    approve_device(oidc_server.issuer, auth["user_code"], oidc_server.ca)
    tokens = poll_device_token(oidc_server, auth["device_code"], interval=1, timeout=30)
    assert "organization:e2e-org" not in tokens["scope"].split()
    r = token_request(oidc_server, {"grant_type": "refresh_token", "refresh_token": tokens["refresh_token"],
                                    "client_id": CLIENT_ID, "organization": "e2e-org"})
    assert r.status_code == 200, r.json().get("error")


def test_infra_wrong_user_code_is_reported(oidc_server):
    with pytest.raises(E2EError, match="rejected|went wrong|incorrect"):
        approve_device(oidc_server.issuer, "BCDF-GHJK", oidc_server.ca)


def test_infra_refresh_rotation_and_replay_revokes_grant(oidc_server):
    tokens = device_login(oidc_server)
    rt1, at1 = tokens["refresh_token"], tokens["access_token"]
    before = oidc_server.counters()

    r = refresh_grant(oidc_server, rt1)
    assert r.status_code == 200
    second = r.json()
    rt2, at2 = second["refresh_token"], second["access_token"]
    assert rt2 != rt1, "every refresh must return a new refresh token"
    assert at2 != at1
    state = oidc_server.token_state(rt1)
    assert state["consumed"] is True and state["valid"] is False and state["grant_active"] is True
    assert oidc_server.login_alive(rt2)
    assert oidc_server.introspect(rt1)["active"] is False

    r = refresh_grant(oidc_server, rt2)
    assert r.status_code == 200
    rt3, at3 = r.json()["refresh_token"], r.json()["access_token"]
    assert rt3 not in (rt1, rt2)
    assert oidc_server.introspect(at3)["active"] is True

    # Presenting a spent refresh token revokes the whole login.
    r = refresh_grant(oidc_server, rt1)
    assert r.status_code == 400
    assert r.json()["error"] == "invalid_grant"
    assert_no_secrets(r.text, [rt1, rt2, rt3], "the invalid_grant response")

    assert not oidc_server.login_alive(rt3)
    assert oidc_server.token_state(rt3) == {"found": False}
    assert oidc_server.introspect(at3)["active"] is False
    assert oidc_server.introspect(at2)["active"] is False
    r = refresh_grant(oidc_server, rt3)
    assert r.status_code == 400 and r.json()["error"] == "invalid_grant"

    delta = counter_delta(before, oidc_server.counters())
    assert delta["refreshes"] == 2
    assert delta["token_requests.refresh_token"] == 4
    assert delta["token_responses.refresh_token.200"] == 2
    assert delta["token_responses.refresh_token.400"] == 2
    assert delta["refresh_token_consumed"] == 2
    assert delta["refresh_token_reuse"] == 1
    assert delta["invalid_grant"] == 2
    assert delta["grant_revocations"] == 1


def test_infra_revocation_of_refresh_token_ends_the_login(oidc_server):
    """What `logout --revoke` relies on: a public client revokes its refresh token, and
    oidc-provider revokes the whole grant with it."""
    tokens = device_login(oidc_server)
    before = oidc_server.counters()
    r = oidc_server._http.post(oidc_server.discovery_cached()["revocation_endpoint"],
                               data={"token": tokens["refresh_token"], "token_type_hint": "refresh_token",
                                     "client_id": CLIENT_ID}, timeout=10)
    assert r.status_code == 200
    assert not oidc_server.login_alive(tokens["refresh_token"])
    assert oidc_server.introspect(tokens["access_token"])["active"] is False
    delta = counter_delta(before, oidc_server.counters())
    assert delta["revocation_requests"] == 1 and delta["grant_revocations"] == 1


def test_infra_extra_m2m_client(oidc_server_factory):
    """Clients can be added (EXTRA_CLIENTS): a confidential client_credentials client."""
    m2m = {"client_id": "e2e-m2m", "client_secret": "e2e-m2m-secret",
           "token_endpoint_auth_method": "client_secret_basic",
           "grant_types": ["client_credentials"], "response_types": [], "redirect_uris": []}
    server = oidc_server_factory(access_ttl=300, extra_clients=[m2m])
    before = server.counters()
    r = server._http.post(server.discovery_cached()["token_endpoint"],
                          data={"grant_type": "client_credentials", "audience": "https://api.example.test"},
                          auth=(m2m["client_id"], m2m["client_secret"]), timeout=10)
    assert r.status_code == 200
    body = r.json()
    register_token_response(body)
    assert body["expires_in"] == 300 and "refresh_token" not in body
    info = server.introspect(body["access_token"])
    assert info["active"] is True and info["client_id"] == "e2e-m2m"
    delta = counter_delta(before, server.counters())
    assert delta["token_requests.client_credentials"] == 1
    assert delta["grant_success.client_credentials"] == 1


def test_infra_short_access_ttl_server(oidc_server_factory):
    server = oidc_server_factory(access_ttl=40)
    tokens = device_login(server)
    assert tokens["expires_in"] == 40
    info = server.introspect(tokens["access_token"])
    assert info["active"] is True and info["exp"] - info["iat"] == 40


def test_infra_cache_file_name_matches_qlam_core(tmp_path, monkeypatch):
    from qlam_core.auth.credentials.credentials_cache import CredentialsCache

    monkeypatch.setenv("QSH_CONFIG_DIR", str(tmp_path / "qsh"))
    keys = ["oauth_default_qlam", "oauth_dev/us_main_m2m", "oauth_..__", "oauth_" + "x" * 100,
            "oauth_ctx with spaces_é"]
    for key in keys:
        expected = CredentialsCache._get_cache_file_path(key)
        assert credentials_cache_path(tmp_path / "qsh", key) == expected
        assert cache_file_name(key) == expected.name


def test_infra_qlam_core_reads_and_refreshes_against_provider(oidc_server_factory, tmp_path):
    """QLAM Core (from the venv) against the provider, on a store written in its format:
    reads the token, refreshes (rotating the refresh token), and the login stays alive."""
    server = oidc_server_factory(access_ttl=1800)
    tokens = device_login(server, scope="openid profile email offline_access organization:e2e-org")
    env = make_qlam_env(tmp_path, server, QLAM_TENANT="e2e-org")
    qsh = tmp_path / "qsh"
    write_qsh_config(qsh, issuer=server.issuer, tenant="e2e-org")
    store = credentials_cache_path(qsh)
    write_store_file(store, tokens)

    result = qlam_core(env, "token")
    assert result["ok"], result
    assert result["cache_key"] == "oauth_default_qlam"
    assert result["token_sha256"] == sha256(tokens["access_token"])

    result = qlam_core(env, "token", resolve="default")
    assert result["ok"], result
    assert result["token_sha256"] == sha256(tokens["access_token"])

    before = server.counters()
    result = qlam_core(env, "refresh")
    assert result["ok"], result
    assert result["refreshed"] is True
    doc = read_store(store)
    new = store_tokens(doc)
    assert result["token_sha256"] == sha256(new["access_token"]) != sha256(tokens["access_token"])
    assert new["refresh_token"] != tokens["refresh_token"]
    assert set(doc) == {"version", "plugin", "context", "created_at", "updated_at", "expires_at",
                        "data", "extra"}
    assert oct(store.stat().st_mode & 0o777) == "0o600"
    assert server.token_state(tokens["refresh_token"])["consumed"] is True
    assert server.login_alive(new["refresh_token"])
    assert server.introspect(new["access_token"])["active"] is True
    delta = counter_delta(before, server.counters())
    assert delta.get("refreshes") == 1 and "invalid_grant" not in delta
    assert_no_secrets(result["stderr"], [tokens["access_token"], tokens["refresh_token"],
                                         new["access_token"], new["refresh_token"]], "QLAM Core's stderr")


def test_infra_server_process_group_is_killed(tmp_path):
    server = OidcServer.start(tmp_path / "srv", access_ttl=60)
    pid = server.proc.pid
    assert server.alive()
    server.stop()
    assert not server.alive()
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)


def test_infra_server_exits_when_stdin_closes(tmp_path):
    """If the test runner dies without cleanup, the provider goes away by itself."""
    server = OidcServer.start(tmp_path / "srv", access_ttl=60)
    try:
        server.proc.stdin.close()
        deadline = time.monotonic() + 10
        while server.alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not server.alive()
    finally:
        server.stop()
