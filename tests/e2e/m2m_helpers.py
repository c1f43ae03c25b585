"""Helpers for the machine-to-machine (client credentials) suite against oidc-provider.

- Private keys made with the `openssl` CLI at test time (0600): EC P-256 and RSA 2048 in
  PKCS#8, RSA in PKCS#1 too; their public halves as JWKs (converted by node's crypto, which
  the provider needs anyway) for client registrations passed through EXTRA_CLIENTS.
- Client registrations for secret (client_secret_post / client_secret_basic) and
  private_key_jwt clients.
- `start_server`: an oidc-provider with extra environment (e.g. CLIENT_AUTH_METHODS, to make
  discovery offer only some client authentication methods), for what the session factory
  in conftest.py cannot configure. The caller stops it.
- `m2m_env`: qlam-hpc's environment for one M2M client, and checks that a secret, key
  material or a client assertion never appears where it must not.

Secret values are never printed: assertions say which secret leaked by index only.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import shutil
import subprocess
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterable, Mapping

from oidc_helpers import (
    CLIENT_ID, OIDC_DIR, E2EError, OidcServer, credentials_cache_path, make_certs, make_qlam_env,
    register_secrets,
)

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"

# A JWT: three base64url parts (the store's `data` field is standard base64 of JSON and
# starts with eyJ too, but has no dots).
_JWT_RE = re.compile(r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*")


# ----------------------------------------------------------------------------------------
# Keys


def _openssl(*args: str | os.PathLike) -> None:
    openssl = shutil.which("openssl")
    if not openssl:
        raise E2EError("openssl is not installed: it makes the test keys")
    proc = subprocess.run([openssl, *map(str, args)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise E2EError(f"openssl {args[0]} failed: {proc.stderr.strip()}")


def make_key(directory: Path, name: str, kind: str) -> Path:
    """A private key file (0600) under `directory`.

    kind: "ec" (P-256, PKCS#8), "ec-sec1" (P-256, SEC1 `EC PRIVATE KEY`), "rsa" (2048,
    PKCS#8), "rsa-pkcs1" (2048, PKCS#1 `RSA PRIVATE KEY`).
    """
    directory.mkdir(parents=True, exist_ok=True)
    out = directory / f"{name}.pem"
    raw = directory / f"{name}.raw.pem"
    if kind.startswith("ec"):
        _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", raw)
    elif kind.startswith("rsa"):
        _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", raw)
    else:
        raise ValueError(kind)
    if kind == "ec-sec1":
        _openssl("ec", "-in", raw, "-out", out)
        raw.unlink()
    elif kind == "rsa-pkcs1":
        _openssl("rsa", "-in", raw, "-traditional", "-out", out)
        raw.unlink()
    else:
        raw.rename(out)
    out.chmod(0o600)
    header = {"ec": "PRIVATE KEY", "rsa": "PRIVATE KEY", "ec-sec1": "EC PRIVATE KEY",
              "rsa-pkcs1": "RSA PRIVATE KEY"}[kind]
    if not out.read_text().startswith(f"-----BEGIN {header}-----"):
        raise E2EError(f"openssl made no {kind} key")
    register_key(out)
    return out


def convert_to_pkcs1(pkcs8: Path, out: Path) -> Path:
    """The same RSA key in PKCS#1 (`BEGIN RSA PRIVATE KEY`), 0600."""
    _openssl("rsa", "-in", pkcs8, "-traditional", "-out", out)
    out.chmod(0o600)
    if not out.read_text().startswith("-----BEGIN RSA PRIVATE KEY-----"):
        raise E2EError("openssl made no PKCS#1 key")
    register_key(out)
    return out


_KEY_MATERIAL: list[str] = []


def key_material(path: Path) -> list[str]:
    """The base64 lines of a PEM private key: none may ever appear outside the key file."""
    return [line for line in path.read_text().splitlines()
            if line and not line.startswith("-----") and len(line) >= 16]


def register_key(path: Path) -> None:
    lines = key_material(path)
    _KEY_MATERIAL.extend(lines)
    register_secrets(*lines)


def public_jwk(private_key: Path, *, alg: str, kid: str | None = None) -> dict:
    """The public half of a PEM private key as a JWK (node's crypto does the conversion)."""
    node = shutil.which("node")
    if not node:
        raise E2EError("node is not installed: run tests/e2e/setup-oidc.sh")
    script = ("const c = require('node:crypto'); const fs = require('node:fs');"
              "const k = c.createPublicKey(c.createPrivateKey(fs.readFileSync(process.argv[1])));"
              "process.stdout.write(JSON.stringify(k.export({format: 'jwk'})));")
    proc = subprocess.run([node, "-e", script, str(private_key)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise E2EError(f"node could not read the public key: {proc.stderr.strip()[-500:]}")
    jwk = json.loads(proc.stdout)
    if "d" in jwk or "p" in jwk:
        raise E2EError("the JWK holds private parts")
    jwk.update({"use": "sig", "alg": alg})
    if kid:
        jwk["kid"] = kid
    return jwk


# ----------------------------------------------------------------------------------------
# Client registrations (oidc-provider client metadata)


def secret_client(client_id: str, secret: str, method: str) -> dict:
    """A confidential client_credentials client that authenticates with `method` only."""
    return {"client_id": client_id, "client_secret": secret, "token_endpoint_auth_method": method,
            "grant_types": ["client_credentials"], "response_types": [], "redirect_uris": []}


def key_client(client_id: str, jwks: list[dict]) -> dict:
    """A private_key_jwt client_credentials client with these public keys."""
    return {"client_id": client_id, "token_endpoint_auth_method": "private_key_jwt",
            "jwks": {"keys": jwks},
            "grant_types": ["client_credentials"], "response_types": [], "redirect_uris": []}


def new_secret() -> str:
    value = "m2m-" + secrets.token_urlsafe(24)
    register_secrets(value)
    return value


# ----------------------------------------------------------------------------------------
# A provider with extra environment


def start_server(work_dir: Path, *, extra_clients: list[dict], extra_env: Mapping[str, str],
                 access_ttl: int = 300, signing_key: Path | None = None,
                 timeout: float = 90.0) -> OidcServer:
    """Start tests/e2e/oidc/server.mjs like OidcServer.start, plus `extra_env`
    (e.g. CLIENT_AUTH_METHODS). The caller must stop() it; it also exits when the test
    process goes away (its stdin closes)."""
    node = shutil.which("node")
    if not node or not (OIDC_DIR / "node_modules" / "oidc-provider").is_dir():
        raise E2EError("node or oidc-provider is missing: run tests/e2e/setup-oidc.sh")
    work_dir.mkdir(parents=True, exist_ok=True)
    certs = make_certs(work_dir / "tls")
    clients_file = work_dir / "extra-clients.json"
    clients_file.write_text(json.dumps(extra_clients))
    clients_file.chmod(0o600)
    if signing_key is None:
        signing_key = work_dir / "signing.pem"
        _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", signing_key)
        signing_key.chmod(0o600)
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
        "SIGNING_KEY": str(signing_key),
        "EXTRA_CLIENTS": str(clients_file),
        **extra_env,
    }
    log = work_dir / "oidc-server.log"
    with open(log, "wb") as log_fh:
        proc = subprocess.Popen([node, str(OIDC_DIR / "server.mjs")], cwd=OIDC_DIR, env=env,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log_fh,
                                start_new_session=True)
    try:
        issuer = OidcServer._read_issuer(proc, log, timeout)
        server = OidcServer(proc, issuer, certs, log, access_ttl)
        server._wait_healthy(timeout)
    except BaseException:
        from oidc_helpers import _kill_group
        _kill_group(proc)
        raise
    return server


# ----------------------------------------------------------------------------------------
# qlam-hpc's environment and what must never leak


def m2m_env(root: Path, server: OidcServer, client_id: str, *, secret: str | None = None,
            key: Path | None = None, alg: str | None = None, kid: str | None = None,
            **overrides: str) -> dict[str, str]:
    """qlam-hpc's environment for M2M client `client_id` against `server`: the secret in a
    0600 file (QLAM_CLIENT_SECRET_FILE), or the key (QLAM_PRIVATE_KEY_FILE/_ALG, QLAM_KEY_ID)."""
    root.mkdir(parents=True, exist_ok=True)
    env = make_qlam_env(root, server, QLAM_GRANT_TYPE="client_credentials", QLAM_CLIENT_ID=client_id)
    if secret is not None:
        path = root / "m2m.secret"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secret + "\n")
        env["QLAM_CLIENT_SECRET_FILE"] = str(path)
    if key is not None:
        env["QLAM_PRIVATE_KEY_FILE"] = str(key)
        env["QLAM_PRIVATE_KEY_ALG"] = alg or "RS256"
        if kid:
            env["QLAM_KEY_ID"] = kid
    env.update(overrides)
    assert env["QLAM_CLIENT_ID"] != CLIENT_ID
    return env


def store_path(env: Mapping[str, str]) -> Path:
    return credentials_cache_path(env["QSH_CONFIG_DIR"])


def ledger_path(env: Mapping[str, str]) -> Path:
    return Path(str(store_path(env)) + ".m2m-ledger.json")


def this_month() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m")


def ledger_count(env: Mapping[str, str]) -> int:
    path = ledger_path(env)
    if not path.exists():
        return 0
    return int(json.loads(path.read_text())["months"].get(this_month(), 0))


def assert_not_in(text: str, values: Iterable[str], where: str) -> None:
    for i, value in enumerate(v for v in values if v):
        if value in text:
            raise AssertionError(f"secret #{i} appears in {where}")


def never_shown(secret: str | None = None, keys: Iterable[Path] = ()) -> list[str]:
    """The values that must never leave qlam-hpc: the secret and every key's base64 lines."""
    out = [secret] if secret else []
    for key in keys:
        out += key_material(key)
    return out


def assert_clean_text(text: str, values: Iterable[str], where: str) -> None:
    """No secret, key material, private-key header or JWT (client assertion) in `text`."""
    assert_not_in(text, values, where)
    if "PRIVATE KEY" in text:
        raise AssertionError(f"{where} holds a private key")
    if _JWT_RE.search(text):
        raise AssertionError(f"{where} holds a JWT (a client assertion?)")


def assert_store_dir_clean(env: Mapping[str, str], values: Iterable[str]) -> None:
    """Store, ledger, lock and discovery cache hold no secret, key or assertion."""
    values = list(values)
    creds = Path(env["QSH_CONFIG_DIR"]) / "credentials"
    for path in sorted(creds.iterdir()):
        assert_clean_text(path.read_bytes().decode(errors="replace"), values, path.name)
