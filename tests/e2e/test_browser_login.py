"""The browser login (authorization code + PKCE S256, DESIGN §4 and §9) and `logout --revoke`
against the real oidc-provider over HTTPS.

The user's browser is played with HTTP requests through the provider's own dev login and
consent pages (browser_play.py); the provider's redirect to QLAM Shell's redirect URI
`http://localhost:<redirect_port>/auth/callback` is delivered to qlam-hpc's loopback listener.
Each test uses its own free redirect port (user TOML), so tests can run in parallel; the
provider's native client accepts any loopback port (RFC 8252 §7.3).
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from pathlib import Path

from browser_play import (
    BrowserLogin, connects, deliver, free_port, listening_addresses, local_ipv4_addresses, query,
    set_redirect_port, walk_to_callback,
)
from oidc_helpers import (
    CLIENT_ID, assert_no_secrets, counter_delta, credentials_cache_path, qlam_core, read_store,
    redact, register_secrets, run_qlam, store_tokens,
)

EXIT_AUTH = 41


def _env(qlam_env_factory, oidc_server, name: str = "user") -> tuple[dict, int]:
    env = qlam_env_factory(oidc_server, name=name)
    port = free_port()
    set_redirect_port(env, port)
    return env, port


def _store(env) -> Path:
    return credentials_cache_path(env["QSH_CONFIG_DIR"])


def _tokens(env) -> dict:
    td = store_tokens(read_store(_store(env)))
    register_secrets(td.get("access_token"), td.get("refresh_token"), td.get("id_token"))
    return td


def _browser_login(env, port: int, ca: str, username: str = "e2e-browser-user") -> tuple[int, list, str]:
    """A whole browser login: start, walk the provider's pages, deliver, wait."""
    login = BrowserLogin(env)
    try:
        first = login.next_event()
        assert first["event"] == "authorization_request", first
        redirect_uri = f"http://localhost:{port}/auth/callback"
        location = walk_to_callback(first["url"], ca, redirect_uri, username=username)
        r = deliver(location, port)
        assert r.status_code == 200, f"listener answered {r.status_code}"
        return login.finish()
    finally:
        login.kill()


def test_browser_login_through_the_provider_pages(qlam_env_factory, oidc_server_factory):
    # Access tokens of 30 min: QLAM Core (read at the end) treats a token as expired 5 min early.
    oidc_server = oidc_server_factory(access_ttl=1800)
    env, port = _env(qlam_env_factory, oidc_server)
    # QLAM Core (read below) wants a tenant for the qsh config's device_code provider.
    env["QLAM_TENANT"] = "e2e-tenant"
    before = oidc_server.counters()
    login = BrowserLogin(env, "--browser", "--no-browser")
    try:
        first = login.next_event()
        assert first["event"] == "authorization_request", first
        assert set(first) == {"event", "url"}
        url = first["url"]

        # The authorization request: PKCE S256, state, QLAM Shell's redirect URI.
        disc = oidc_server.discovery_cached()
        assert url.split("?")[0] == disc["authorization_endpoint"]
        q = query(url)
        redirect_uri = f"http://localhost:{port}/auth/callback"
        assert q["redirect_uri"] == redirect_uri
        assert q["response_type"] == "code"
        assert q["client_id"] == CLIENT_ID
        assert q["code_challenge_method"] == "S256"
        assert len(q["code_challenge"]) == 43 and q["code_challenge"].replace("-", "").replace("_", "").isalnum()
        assert len(q["state"]) >= 22
        assert set(q["scope"].split()) >= {"openid", "offline_access"}
        assert q.get("organization") == "e2e-tenant"

        # The listener is on 127.0.0.1 only (DESIGN §9).
        v4, v6 = listening_addresses(port)
        assert v4 == ["0100007F"], f"listening sockets on {port}: {v4}"
        assert v6 == [], f"listening on IPv6 too: {v6}"
        assert not connects("127.0.0.2", port), "the listener accepts on 127.0.0.2"
        for addr in local_ipv4_addresses():
            assert not connects(addr, port), f"the listener accepts on {addr}"

        # The user signs in and consents at the provider; it redirects with code and state.
        location = walk_to_callback(url, oidc_server.ca, redirect_uri)
        back = query(location)
        assert back.get("state") == q["state"]
        assert back.get("code"), "the provider's redirect carries no code"
        register_secrets(back["code"])

        # A forged callback first: wrong state, answered 400, the login goes on.
        forged = location.replace(f"state={q['state']}", "state=forged-state")
        assert forged != location
        r = deliver(forged, port)
        assert r.status_code == 400
        assert "state" in r.text
        assert login.running(), "a forged callback ended the login"

        # The real one.
        r = deliver(location, port)
        assert r.status_code == 200
        assert "Logged in" in r.text
        code, events, stderr = login.finish()
    finally:
        login.kill()

    assert code == 0, f"login exited {code}: {redact(stderr)}"
    assert [e["event"] for e in events] == ["authorization_request", "logged_in"]
    assert isinstance(events[-1]["expires_at"], int)

    td = _tokens(env)
    assert td["refresh_token"], "no refresh token stored"
    info = oidc_server.introspect(td["access_token"])
    assert info["active"] is True
    assert info["client_id"] == CLIENT_ID
    assert info["sub"] == "e2e-browser-user"
    assert oidc_server.introspect(td["refresh_token"], "refresh_token")["active"] is True
    doc = read_store(_store(env))
    assert doc["extra"]["qlam_hpc"]["grant_type"] == "authorization_code"
    # logged_in.expires_at: when the access token expires (created_at + expires_in).
    assert abs(events[-1]["expires_at"] - (_unix(td["created_at"]) + td["expires_in"])) <= 1

    delta = counter_delta(before, oidc_server.counters())
    assert delta.get("token_requests.authorization_code") == 1, delta
    assert delta.get("grant_success.authorization_code") == 1, delta

    assert_no_secrets(stderr, [td["access_token"], td["refresh_token"], td.get("id_token"),
                               back["code"]], "login's stderr")
    assert_no_secrets("\n".join(str(e) for e in events), [td["refresh_token"], back["code"]],
                      "login's events")

    # The stored login serves the same token, and QLAM Core reads it.
    tok = run_qlam(env, "token")
    assert tok.stdout.strip() == td["access_token"]
    core = qlam_core(env)
    assert core["ok"], core
    assert core["token_sha256"] == hashlib.sha256(td["access_token"].encode()).hexdigest()


def _unix(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def test_cancel_at_the_provider_is_exit_41(qlam_env_factory, oidc_server):
    env, port = _env(qlam_env_factory, oidc_server)
    login = BrowserLogin(env)
    try:
        first = login.next_event()
        url = first["url"]
        redirect_uri = f"http://localhost:{port}/auth/callback"
        location = walk_to_callback(url, oidc_server.ca, redirect_uri, cancel=True)
        back = query(location)
        assert back.get("error") == "access_denied", back
        assert back.get("state") == query(url)["state"]
        r = deliver(location, port)
        assert r.status_code == 400
        code, events, stderr = login.finish()
    finally:
        login.kill()
    assert code == EXIT_AUTH, f"exit {code}: {redact(stderr)}"
    assert "access_denied" in stderr
    assert "hint:" in stderr
    assert [e["event"] for e in events] == ["authorization_request"]
    assert not _store(env).exists()


def test_logout_revoke_ends_the_login_at_the_provider(qlam_env_factory, oidc_server):
    env, port = _env(qlam_env_factory, oidc_server)
    code, _, stderr = _browser_login(env, port, oidc_server.ca)
    assert code == 0, redact(stderr)
    td = _tokens(env)
    store = _store(env)
    lock = Path(str(store) + ".lock")
    assert lock.is_file()
    assert oidc_server.login_alive(td["refresh_token"])

    before = oidc_server.counters()
    r = run_qlam(env, "-o", "json", "logout", "--revoke")
    assert '"revoked":true' in r.stdout.replace(" ", ""), r.stdout
    assert_no_secrets(r.stderr + r.stdout, [td["access_token"], td["refresh_token"]], "logout output")

    assert oidc_server.introspect(td["refresh_token"], "refresh_token")["active"] is False
    assert not oidc_server.login_alive(td["refresh_token"])
    assert oidc_server.introspect(td["access_token"])["active"] is False
    delta = counter_delta(before, oidc_server.counters())
    assert delta.get("revocation_requests") == 1, delta
    assert not store.exists(), "logout left the credentials file"
    assert lock.is_file(), "logout must keep the lock file"

    t = run_qlam(env, "token", check=False)
    assert t.returncode == EXIT_AUTH


def test_browser_login_picked_by_display(qlam_env_factory, oidc_server):
    """No grant type configured and a display: `login` (no flag) takes the browser flow."""
    env, port = _env(qlam_env_factory, oidc_server)
    env.pop("QLAM_GRANT_TYPE")
    env["DISPLAY"] = ":0"
    login = BrowserLogin(env, "--no-browser")
    try:
        first = login.next_event()
        assert first["event"] == "authorization_request", first
        location = walk_to_callback(first["url"], oidc_server.ca,
                                    f"http://localhost:{port}/auth/callback")
        assert deliver(location, port).status_code == 200
        code, events, stderr = login.finish()
    finally:
        login.kill()
    assert code == 0, redact(stderr)
    assert events[-1]["event"] == "logged_in"
