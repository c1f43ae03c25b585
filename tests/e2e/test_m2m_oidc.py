"""qlam-hpc's machine-to-machine support against a real OIDC provider (oidc-provider 9 over
HTTPS on loopback; tests/e2e/oidc).

DESIGN §1 (client credentials with a secret or a private key), §3 (`client_secret_file`,
`private_key_file`, `private_key_alg`, `key_id`, `token_endpoint_auth_method`, discovery),
§6 (one mint for a herd, the monthly ledger and budget), §8 (exit codes), §9 (secrets, keys
and client assertions never in argv, logs or the store; private_key_jwt).

The provider enforces each client's registered authentication method, so a client
registered for `client_secret_post` proves the secret went in the form, one registered for
`client_secret_basic` that it went in the Authorization header, and a private_key_jwt client
that the assertion verified against its registered JWKS. Every token qlam-hpc prints is
checked active by the provider's own introspection endpoint. Keys are made with openssl at
test time (0600); their public JWKs are registered through EXTRA_CLIENTS.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from m2m_helpers import (
    assert_clean_text, assert_store_dir_clean, convert_to_pkcs1, key_client,
    ledger_count, ledger_path, m2m_env, make_key, never_shown, new_secret, public_jwk,
    secret_client, start_server, store_path, this_month,
)
from oidc_helpers import counter_delta, qlam_bin, read_store, register_secrets, run_qlam

EXIT_CONFIG = 40
EXIT_BUDGET = 62
ACCESS_TTL = 300

POST_ID, BASIC_ID, ES256_ID, RS256_ID = "m2m-post", "m2m-basic", "m2m-es256", "m2m-rs256"


class Keys:
    """Keys for the module: EC P-256 and RSA in PKCS#8, the RSA key in PKCS#1 too, and an
    EC key the provider does not know."""

    def __init__(self, directory: Path):
        self.es256 = make_key(directory, "es256", "ec")
        self.rs256 = make_key(directory, "rs256", "rsa")
        self.rs256_pkcs1 = convert_to_pkcs1(self.rs256, directory / "rs256-pkcs1.pem")
        self.stranger = make_key(directory, "stranger", "ec")
        self.all = [self.es256, self.rs256, self.rs256_pkcs1, self.stranger]


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> Keys:
    return Keys(tmp_path_factory.mktemp("m2m-keys"))


@pytest.fixture(scope="module")
def secrets_() -> dict[str, str]:
    return {POST_ID: new_secret(), BASIC_ID: new_secret()}


@pytest.fixture(scope="module")
def m2m_server(oidc_server_factory, keys, secrets_):
    """The provider with four M2M clients: post, basic, ES256 and RS256 private_key_jwt."""
    clients = [
        secret_client(POST_ID, secrets_[POST_ID], "client_secret_post"),
        secret_client(BASIC_ID, secrets_[BASIC_ID], "client_secret_basic"),
        key_client(ES256_ID, [public_jwk(keys.es256, alg="ES256", kid="es-1")]),
        key_client(RS256_ID, [public_jwk(keys.rs256, alg="RS256", kid="rs-1")]),
    ]
    return oidc_server_factory(access_ttl=ACCESS_TTL, extra_clients=clients)


@pytest.fixture(scope="module")
def basic_only_server(tmp_path_factory, secrets_):
    """A provider whose discovery offers client_secret_basic but not client_secret_post
    (server.mjs's CLIENT_AUTH_METHODS), with the basic client registered."""
    server = start_server(
        tmp_path_factory.mktemp("oidc-basic-only"),
        extra_clients=[secret_client(BASIC_ID, secrets_[BASIC_ID], "client_secret_basic")],
        extra_env={"CLIENT_AUTH_METHODS": "client_secret_basic,private_key_jwt,none"},
        access_ttl=ACCESS_TTL,
    )
    try:
        yield server
    finally:
        server.stop()


def cc_delta(before: dict, after: dict) -> dict:
    """Client-credentials requests, tokens issued, and how the client authenticated (the
    server's token_client_auth counter: client_secret_basic / client_secret_post /
    client_assertion / none), between two counters() snapshots."""
    d = counter_delta(before, after)
    prefix = "token_client_auth.client_credentials."
    return {"requests": d.get("token_requests.client_credentials", 0),
            "ok": d.get("grant_success.client_credentials", 0),
            "auth": {k[len(prefix):]: v for k, v in d.items() if k.startswith(prefix)}}


def token(env):
    r = run_qlam(env, "token")
    register_secrets(r.stdout.strip())
    return r


def assert_active(server, value: str, client_id: str) -> None:
    info = server.introspect(value)
    assert info["active"] is True, "the provider does not call the token active"
    assert info["client_id"] == client_id
    assert info["exp"] - info["iat"] == ACCESS_TTL


def check_runs(runs, values) -> None:
    for r in runs:
        assert_clean_text(r.stderr, values, f"stderr of qlam-hpc {' '.join(r.args)}")


# ---- client secrets ----------------------------------------------------------------------


def test_secret_post_chosen_from_discovery(tmp_path, m2m_server, secrets_):
    """Method unset: discovery offers client_secret_post, so the secret goes in the form;
    the provider (which accepts only post for this client) issues an active token once."""
    env = m2m_env(tmp_path, m2m_server, POST_ID, secret=secrets_[POST_ID])
    before = m2m_server.counters()
    first = run_qlam(env, "-vv", "token")
    tok = first.stdout.strip()
    register_secrets(tok)
    assert first.stdout == tok + "\n"
    assert_active(m2m_server, tok, POST_ID)
    again = [run_qlam(env, "token") for _ in range(3)]
    assert {r.stdout for r in again} == {first.stdout}, "later calls serve the stored token"
    d = cc_delta(before, m2m_server.counters())
    assert d["requests"] == 1 and d["ok"] == 1, d
    assert d["auth"] == {"client_secret_post": 1}, d
    assert ledger_count(env) == 1
    doc = read_store(store_path(env))
    assert doc["extra"]["token_data"]["refresh_token"] is None
    assert doc["extra"]["token_data"]["expires_in"] == ACCESS_TTL
    values = never_shown(secrets_[POST_ID])
    check_runs([first, *again], values)
    assert_store_dir_clean(env, values)


def test_secret_post_configured(tmp_path, m2m_server, secrets_):
    env = m2m_env(tmp_path, m2m_server, POST_ID, secret=secrets_[POST_ID],
                  QLAM_TOKEN_ENDPOINT_AUTH_METHOD="client_secret_post")
    before = m2m_server.counters()
    tok = token(env).stdout.strip()
    assert_active(m2m_server, tok, POST_ID)
    assert cc_delta(before, m2m_server.counters())["auth"] == {"client_secret_post": 1}


def test_secret_basic_configured_in_env(tmp_path, m2m_server, secrets_):
    env = m2m_env(tmp_path, m2m_server, BASIC_ID, secret=secrets_[BASIC_ID],
                  QLAM_TOKEN_ENDPOINT_AUTH_METHOD="client_secret_basic")
    before = m2m_server.counters()
    r = run_qlam(env, "-vv", "token", check=False)
    check_runs([r], never_shown(secrets_[BASIC_ID]))
    assert r.returncode == 0, f"exit {r.returncode}: {r.stderr[-600:]}"
    assert_active(m2m_server, r.stdout.strip(), BASIC_ID)
    assert cc_delta(before, m2m_server.counters())["auth"] == {"client_secret_basic": 1}


def test_secret_basic_configured_in_toml(tmp_path, m2m_server, secrets_):
    env = m2m_env(tmp_path, m2m_server, BASIC_ID, secret=secrets_[BASIC_ID])
    cfg = Path(env["XDG_CONFIG_HOME"]) / "qlam-hpc" / "config.toml"
    cfg.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text('[providers.qlam]\ntoken_endpoint_auth_method = "client_secret_basic"\n')
    before = m2m_server.counters()
    r = run_qlam(env, "token", check=False)
    check_runs([r], never_shown(secrets_[BASIC_ID]))
    assert r.returncode == 0, f"exit {r.returncode}: {r.stderr[-600:]}"
    assert_active(m2m_server, r.stdout.strip(), BASIC_ID)
    assert cc_delta(before, m2m_server.counters())["auth"] == {"client_secret_basic": 1}


def test_secret_basic_chosen_from_discovery(tmp_path, basic_only_server, secrets_):
    """Method unset, discovery offers client_secret_basic and not post: HTTP Basic."""
    server = basic_only_server
    methods = server.discovery()["token_endpoint_auth_methods_supported"]
    assert "client_secret_basic" in methods and "client_secret_post" not in methods, methods
    env = m2m_env(tmp_path, server, BASIC_ID, secret=secrets_[BASIC_ID])
    before = server.counters()
    r = run_qlam(env, "-vv", "token")
    tok = r.stdout.strip()
    register_secrets(tok)
    assert_active(server, tok, BASIC_ID)
    d = cc_delta(before, server.counters())
    assert d["requests"] == 1 and d["ok"] == 1, d
    assert d["auth"] == {"client_secret_basic": 1}, d
    values = never_shown(secrets_[BASIC_ID])
    check_runs([r], values)
    assert_store_dir_clean(env, values)


def test_wrong_secret_is_a_config_error(tmp_path, m2m_server, secrets_):
    wrong = new_secret()
    env = m2m_env(tmp_path, m2m_server, POST_ID, secret=wrong)
    r = run_qlam(env, "-vv", "token", check=False)
    assert r.returncode == EXIT_CONFIG, r.returncode
    assert "invalid_client" in r.stderr and "hint:" in r.stderr
    check_runs([r], never_shown(wrong) + never_shown(secrets_[POST_ID]))
    assert ledger_count(env) == 0, "a refused mint is not counted"
    assert not store_path(env).exists()


def test_group_readable_secret_file_is_refused(tmp_path, m2m_server, secrets_):
    env = m2m_env(tmp_path, m2m_server, POST_ID, secret=secrets_[POST_ID])
    path = Path(env["QLAM_CLIENT_SECRET_FILE"])
    path.chmod(0o640)
    before = m2m_server.counters()
    r = run_qlam(env, "token", check=False)
    assert r.returncode == 60, r.returncode
    assert f"chmod 600 {path}" in r.stderr
    assert cc_delta(before, m2m_server.counters())["requests"] == 0


# ---- private_key_jwt ---------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["ES256-pkcs8", "RS256-pkcs8", "RS256-pkcs1"])
def test_private_key_jwt(tmp_path, m2m_server, keys, variant):
    alg, form = variant.split("-")
    key = {"ES256-pkcs8": keys.es256, "RS256-pkcs8": keys.rs256,
           "RS256-pkcs1": keys.rs256_pkcs1}[variant]
    client = ES256_ID if alg == "ES256" else RS256_ID
    kid = "es-1" if alg == "ES256" else "rs-1"
    head = key.read_text().splitlines()[0]
    assert head == ("-----BEGIN RSA PRIVATE KEY-----" if form == "pkcs1" else "-----BEGIN PRIVATE KEY-----")
    env = m2m_env(tmp_path, m2m_server, client, key=key, alg=alg, kid=kid)
    before = m2m_server.counters()
    r = run_qlam(env, "-vv", "token")
    tok = r.stdout.strip()
    register_secrets(tok)
    assert_active(m2m_server, tok, client)
    d = cc_delta(before, m2m_server.counters())
    assert d["requests"] == 1 and d["ok"] == 1, d
    assert d["auth"] == {"client_assertion": 1}, d
    assert ledger_count(env) == 1
    # Forced: a fresh assertion (a reused jti would be refused by the provider).
    r2 = run_qlam(env, "-vv", "refresh", "--force")
    tok2 = read_store(store_path(env))["extra"]["token_data"]["access_token"]
    register_secrets(tok2)
    assert tok2 != tok
    assert_active(m2m_server, tok2, client)
    assert cc_delta(before, m2m_server.counters())["ok"] == 2
    assert ledger_count(env) == 2
    values = never_shown(keys=keys.all)
    check_runs([r, r2], values)
    assert_store_dir_clean(env, values)


def test_private_key_jwt_without_kid(tmp_path, m2m_server, keys):
    env = m2m_env(tmp_path, m2m_server, ES256_ID, key=keys.es256, alg="ES256")
    assert_active(m2m_server, token(env).stdout.strip(), ES256_ID)


def test_unregistered_key_is_refused(tmp_path, m2m_server, keys):
    env = m2m_env(tmp_path, m2m_server, ES256_ID, key=keys.stranger, alg="ES256", kid="es-1")
    r = run_qlam(env, "-vv", "token", check=False)
    assert r.returncode == EXIT_CONFIG, r.returncode
    assert "invalid_client" in r.stderr and "hint:" in r.stderr
    check_runs([r], never_shown(keys=keys.all))
    assert ledger_count(env) == 0


def test_sec1_key_for_es256_gives_the_conversion_hint(tmp_path, m2m_server, keys):
    sec1 = make_key(tmp_path / "keys", "sec1", "ec-sec1")
    env = m2m_env(tmp_path, m2m_server, ES256_ID, key=sec1, alg="ES256")
    before = m2m_server.counters()
    r = run_qlam(env, "token", check=False)
    assert r.returncode == EXIT_CONFIG, r.returncode
    assert "SEC1" in r.stderr and "PKCS#8" in r.stderr
    assert f"openssl pkcs8 -topk8 -nocrypt -in {sec1} -out {sec1}.pk8" in r.stderr
    assert cc_delta(before, m2m_server.counters())["requests"] == 0
    check_runs([r], never_shown(keys=[sec1]))


def test_group_readable_key_is_refused(tmp_path, m2m_server, keys):
    key = tmp_path / "es256-copy.pem"
    key.write_bytes(keys.es256.read_bytes())
    key.chmod(0o644)
    env = m2m_env(tmp_path, m2m_server, ES256_ID, key=key, alg="ES256")
    r = run_qlam(env, "token", check=False)
    assert r.returncode == 60, r.returncode
    assert f"chmod 600 {key}" in r.stderr
    key.chmod(0o600)
    assert_active(m2m_server, token(env).stdout.strip(), ES256_ID)


# ---- herd, budget ------------------------------------------------------------------------


def test_herd_mints_once(tmp_path, m2m_server, keys):
    """100 concurrent `token` with no cached token: one mint at the provider, one token."""
    n = 100
    env = m2m_env(tmp_path, m2m_server, RS256_ID, key=keys.rs256, alg="RS256", kid="rs-1")
    before = m2m_server.counters()
    procs = [subprocess.Popen([str(qlam_bin()), "token"], env={**env, "SLURM_JOB_ID": "99",
                                                                 "SLURM_ARRAY_TASK_ID": str(i)},
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
             for i in range(n)]
    deadline = time.monotonic() + 180
    results = []
    for p in procs:
        out, err = p.communicate(timeout=max(1, deadline - time.monotonic()))
        results.append((p.returncode, out.decode(), err.decode()))
    outs = {out for _, out, _ in results}
    for _, out, _ in results:
        register_secrets(out.strip())
    assert [code for code, _, _ in results] == [0] * n
    assert len(outs) == 1, f"{len(outs)} distinct tokens"
    values = never_shown(keys=keys.all)
    for _, _, err in results:
        assert_clean_text(err, values, "a task's stderr")
    d = cc_delta(before, m2m_server.counters())
    assert d["requests"] == 1 and d["ok"] == 1, d
    assert_active(m2m_server, outs.pop().strip(), RS256_ID)
    assert ledger_count(env) == 1
    assert_store_dir_clean(env, values)


def test_budget(tmp_path, m2m_server, secrets_):
    """Budget 2: two mints (the second warns), the third is refused with exit 62 before the
    provider sees it, the cached token is still served, status shows count and budget."""
    env = m2m_env(tmp_path, m2m_server, POST_ID, secret=secrets_[POST_ID],
                  QLAM_M2M_MONTHLY_BUDGET="2")
    before = m2m_server.counters()
    r1 = run_qlam(env, "token")
    assert "warning" not in r1.stderr
    r2 = run_qlam(env, "refresh", "--force")
    assert "warning" in r2.stderr and "2 of 2" in r2.stderr, r2.stderr
    r3 = run_qlam(env, "refresh", "--force", check=False)
    assert r3.returncode == EXIT_BUDGET, r3.returncode
    assert "budget" in r3.stderr
    assert cc_delta(before, m2m_server.counters())["requests"] == 2
    cached = read_store(store_path(env))["extra"]["token_data"]["access_token"]
    r4 = run_qlam(env, "token")
    assert r4.stdout.strip() == cached
    assert_active(m2m_server, cached, POST_ID)
    status = json.loads(run_qlam(env, "-o", "json", "status").stdout)
    assert status["m2m_mints_this_month"] == 2 and status["m2m_monthly_budget"] == 2, status
    ledger = json.loads(ledger_path(env).read_text())
    assert ledger["months"] == {this_month(): 2}, ledger
    check_runs([r1, r2, r3, r4], never_shown(secrets_[POST_ID]))


def test_scope_audience_and_tenant_are_accepted(tmp_path, m2m_server, secrets_):
    """Auth0's `audience` and `organization` (tenant) are sent; this provider ignores them
    (the test IdP suite checks their values) but must still issue a token."""
    env = m2m_env(tmp_path, m2m_server, POST_ID, secret=secrets_[POST_ID],
                  QLAM_AUDIENCE="https://api.qlam.example/", QLAM_TENANT="org_e2e")
    assert_active(m2m_server, token(env).stdout.strip(), POST_ID)


def test_no_secret_in_argv_while_minting(tmp_path, m2m_server, secrets_, keys):
    """While qlam-hpc mints (over HTTPS to a real provider) no process's argv holds the
    secret or key material."""
    values = never_shown(secrets_[POST_ID], keys.all)
    for env in (m2m_env(tmp_path / "s", m2m_server, POST_ID, secret=secrets_[POST_ID]),
                m2m_env(tmp_path / "k", m2m_server, ES256_ID, key=keys.es256, alg="ES256")):
        proc = subprocess.Popen([str(qlam_bin()), "-vv", "token"], env=env,
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        while proc.poll() is None:
            for entry in Path("/proc").iterdir():
                if not entry.name.isdigit():
                    continue
                try:
                    argv = (entry / "cmdline").read_bytes().decode(errors="replace")
                except OSError:
                    continue
                assert_clean_text(argv, values, f"argv of pid {entry.name}")
        out, err = proc.communicate(timeout=60)
        register_secrets(out.decode().strip())
        assert proc.returncode == 0, err.decode()[-500:]
        assert_clean_text(err.decode(), values, "stderr")
