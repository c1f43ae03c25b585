"""Thundering herds against the bundled test IdP (DESIGN §6).

Hundreds of `qlam-hpc token` processes start at the moment a refresh is due; exactly
one may talk to the IdP, the rest reuse its result: a new token, a rejected login, or
an outage. The store must come out of each herd intact.
"""

from __future__ import annotations

from idp import Hpc, TestIdP, fp, hpc_factory, idp_factory  # noqa: F401  (fixtures)

HERD = 300
LOGIN_TTL = 8      # the login's access token: a refresh is due LOGIN_TTL/2 s later
REFRESH_TTL = 60   # tokens the herd's refresh gets: fresh for the whole herd


def logged_in_due(idp_factory, hpc_factory) -> tuple[TestIdP, Hpc]:
    """An IdP (`--access-ttl 60`) and a login whose access token is due for refresh.

    The login itself gets a short-lived token (the IdP's admin config), so the wait
    is seconds, not half a minute; tokens from later refreshes live 60 s."""
    idp = idp_factory("--access-ttl", str(REFRESH_TTL), "--refresh-ttl", "3600",
                      "--device-interval", "1")
    idp.config(access_token_ttl=LOGIN_TTL)
    hpc = hpc_factory(idp)
    hpc.login(idp)
    idp.config(access_token_ttl=REFRESH_TTL)
    hpc.check_store()
    hpc.wait_until_refresh_due()
    return idp, hpc


def test_herd_refreshes_once(idp_factory, hpc_factory):
    idp, hpc = logged_in_due(idp_factory, hpc_factory)
    before = hpc.access_fp()
    gen_before = hpc.generation()
    idp.reset_counters()

    r = hpc.herd(HERD, "token", "--min-ttl", "2m")

    print(f"herd: {r.summary()}")
    assert r.codes == [0] * HERD, r.summary()
    tokens = r.fps()
    assert len(tokens) == 1, f"{len(tokens)} distinct tokens: {r.summary()}"
    assert all(o.endswith("\n") and o.count("\n") == 1 for o in r.outs), "stdout is not one line"
    (token,) = tokens
    assert token != before, "the herd did not refresh a token that was due"
    assert token == hpc.access_fp(), "printed token differs from the stored one"
    c = idp.counters()
    assert c["refresh_requests"] == 1, f"IdP counters {c}"
    assert c["refresh_ok"] == 1 and c["families_revoked"] == 0, f"IdP counters {c}"
    active = idp.introspect(r.outs[0].strip())
    assert active, "the herd's token is not active at the IdP"
    doc = hpc.check_store()
    if gen_before is not None:
        assert doc["extra"]["qlam_hpc"]["generation"] == gen_before + 1, "more than one store write"

    # The login is still alive: a forced refresh spends the rotated refresh token.
    hpc.run("refresh", "--force", check=0)
    assert hpc.access_fp() != token, "refresh --force did not change the token"
    c = idp.counters()
    assert c["refresh_ok"] == 2 and c["families_revoked"] == 0, f"IdP counters {c}"
    hpc.check_store()
    assert hpc.leftovers() == [], f"stray files in credentials dir: {hpc.leftovers()}"


def test_herd_rejected_refresh_token(idp_factory, hpc_factory):
    idp, hpc = logged_in_due(idp_factory, hpc_factory)
    # With the access token expired there is nothing left to serve: every process must
    # report the rejected login (qlam-hpc serves a still-valid token with a warning).
    hpc.wait_until_expired()
    rt_before = hpc.refresh_fp()
    idp.revoke_all()
    idp.reset_counters()

    r = hpc.herd(HERD, "token", "--min-ttl", "2m")

    assert r.codes == [41] * HERD, r.summary()
    assert all(o == "" for o in r.outs), "a failing `token` printed something on stdout"
    c = idp.counters()
    print(f"rejected herd: {r.summary()} idp_refresh_requests={c['refresh_requests']}")
    assert 1 <= c["refresh_requests"] <= 3, f"IdP counters {c}"
    assert hpc.store.is_file(), "the store file was deleted on invalid_grant"
    doc = hpc.check_store()
    assert fp(doc["extra"]["token_data"]["refresh_token"]) == rt_before, "refresh token changed"
    assert (doc["extra"].get("qlam_hpc") or {}).get("last_error"), "no last_error recorded"
    st = hpc.run("status")
    assert st.returncode == 41, f"status after rejection exited {st.returncode}"


def test_herd_idp_outage(idp_factory, hpc_factory):
    idp, hpc = logged_in_due(idp_factory, hpc_factory)
    hpc.wait_until_expired()  # else a still-valid token is served (exit 0), as it should be
    rt_before = hpc.refresh_fp()
    idp.fault({"status": 503})  # until cleared
    idp.reset_counters()

    r = hpc.herd(HERD, "token", "--min-ttl", "2m", timeout=300)

    assert set(r.codes) <= {50, 11}, r.summary()
    assert all(o == "" for o in r.outs), "a failing `token` printed something on stdout"
    c = idp.counters()
    calls = c["token_requests"]  # faulted requests included
    print(f"outage herd: {r.summary()} idp_token_requests={calls}")
    assert 1 <= calls <= 10, f"an outage cost the IdP {calls} requests: {c}"
    doc = hpc.check_store()
    assert fp(doc["extra"]["token_data"]["refresh_token"]) == rt_before, "outage changed the refresh token"

    # The login survived the outage: its refresh token is unspent and its family alive.
    idp.clear_faults()
    alive = idp.introspect(hpc.stored_refresh_token())
    assert alive, "the refresh token is no longer redeemable after the outage"
    c = idp.counters()
    assert c["families_revoked"] == 0 and c["refresh_ok"] == 0, f"IdP counters {c}"
    st = hpc.run("status")
    assert st.returncode == 0, f"status after the outage exited {st.returncode}"
