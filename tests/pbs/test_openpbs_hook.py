"""pbs/qlam_hpc_hook.py run as pbs_mom runs a hook (root, a fresh interpreter, __name__
"builtins", the hook's configuration file and alarm), with a stand-in `pbs` module
(fake_pbs/), the real qlam-hpc binary and a real qlam-test-idp on loopback, for real
unprivileged users. No PBS server or MoM is involved: see pbs/README.md.
"""

from __future__ import annotations

import json
import os
import time

import pytest

from pbs_helpers import (
    ACCESS_TTL, STORE_NAME, age_token, assert_private_stage, fp, hook_config,
    new_job_id, qlam_core_token, run_as, run_hook, sha256, staged_token, store_tokens,
    user_processes, wait_for,
)

LAUNCH_KEYS = ("QSH_CONFIG_DIR", "QLAM_ACCESS_TOKEN_FILE", "QLAM_HPC_MESSAGE")


def secrets_of(user) -> list[str | None]:
    td = store_tokens(user)
    return [td.get("refresh_token"), td.get("id_token")]


def test_prologue_launch_epilogue_stage_and_clean_up(inst, user, work):
    job = new_job_id()
    cfg = hook_config(inst)
    before = store_tokens(user)

    pro = run_hook(work, "EXECJOB_PROLOGUE", job, user.name, walltime="00:10:00", config=cfg)
    assert pro.accepted, pro
    assert pro.elapsed < 30
    d = inst.job_dir(user, job)
    assert d.is_dir(), pro
    assert_private_stage(d, user, secrets_of(user) + [before.get("refresh_token")])
    # The staged token is the user's current access token (no refresh was due).
    assert fp(staged_token(d)) == fp(store_tokens(user)["access_token"])
    # A 10-minute job inside a 15-minute token needs no renewer.
    assert not (d / "renewer.pid").exists()
    # The binary's one line reaches the MoM log.
    assert "staged a token" in pro.log_text(), pro

    job_env = {"HOME": str(user.home), "PBS_JOBID": job, "PATH": "/usr/bin:/bin"}
    la = run_hook(work, "EXECJOB_LAUNCH", job, user.name, env=job_env, config=cfg)
    assert la.accepted, la
    assert la.env["QSH_CONFIG_DIR"] == str(d)
    assert la.env["QLAM_ACCESS_TOKEN_FILE"] == str(d / "access_token")
    assert "QLAM_HPC_MESSAGE" not in la.env
    # The job's own variables are untouched.
    for k, v in job_env.items():
        assert la.env[k] == v

    # A job script sourcing qlam-hpc-job.sh with that environment uses the staged copy
    # (QLAM_HPC_BIN=/bin/false: nothing else could give it a token).
    job_sh = ('. "%s" || exit $?; printf %%s "$QLAM_ACCESS_TOKEN" | sha256sum | cut -c1-64'
              % inst.job_sh)
    r = run_as(user, ["/bin/sh", "-c", job_sh],
               dict(la.env, PATH="/usr/bin:/bin", QLAM_HPC_BIN="/bin/false"))
    assert r.returncode == 0, r.why()
    assert r.stdout.strip() == sha256(staged_token(d))

    # QLAM Core in the job (as the user, QSH_CONFIG_DIR from the launch hook) reads the
    # staged credential: a valid token, and no refresh token to be had.
    core = qlam_core_token(user, d)
    assert core.get("ok") is True, core
    assert core["token_sha256"] == sha256(staged_token(d))
    assert core["refresh_token_sha256"] is None

    epi = run_hook(work, "EXECJOB_EPILOGUE", job, user.name, config=cfg)
    assert epi.accepted, epi
    assert not d.exists()
    # The user's login is unchanged.
    assert store_tokens(user)["refresh_token"] == before["refresh_token"]


def test_long_job_gets_a_renewer_that_the_epilogue_stops(inst, user, work):
    job = new_job_id()
    cfg = hook_config(inst)
    pro = run_hook(work, "EXECJOB_PROLOGUE", job, user.name, walltime="04:00:00", config=cfg)
    assert pro.accepted, pro
    d = inst.job_dir(user, job)
    pid = int((d / "renewer.pid").read_text())
    assert pid in user_processes(user.uid, "renew-as-user")
    epi = run_hook(work, "EXECJOB_EPILOGUE", job, user.name, config=cfg)
    assert epi.accepted, epi
    assert not d.exists()
    wait_for("the renewer to end", lambda: pid not in user_processes(user.uid, "renew-as-user"))


def test_every_host_of_the_job_stages_its_own_copy(inst, user, work):
    """execjob_prologue/launch/epilogue run on the mother superior and on each sister."""
    job = new_job_id()
    cfg = hook_config(inst)
    hosts = {"pbsnode1": True, "pbsnode2.cluster.example": False}  # vnode: in_ms_mom
    dirs = {}
    for host, ms in hosts.items():
        r = run_hook(work, "EXECJOB_PROLOGUE", job, user.name, nodename=host, in_ms_mom=ms,
                     config=cfg)
        assert r.accepted, (host, r)
        short = host.split(".")[0]
        dirs[host] = inst.job_dir(user, job, short)
        assert dirs[host].is_dir(), host
    assert len(set(dirs.values())) == 2
    for host, ms in hosts.items():
        r = run_hook(work, "EXECJOB_LAUNCH", job, user.name, nodename=host, in_ms_mom=ms,
                     config=cfg)
        assert r.accepted and r.env["QSH_CONFIG_DIR"] == str(dirs[host]), (host, r)
    r = run_hook(work, "EXECJOB_EPILOGUE", job, user.name, nodename="pbsnode2.cluster.example",
                 in_ms_mom=False, config=cfg)
    assert r.accepted, r
    assert not dirs["pbsnode2.cluster.example"].exists()
    assert dirs["pbsnode1"].is_dir(), "one host's epilogue removed another host's copy"
    r = run_hook(work, "EXECJOB_EPILOGUE", job, user.name, nodename="pbsnode1", config=cfg)
    assert r.accepted and not dirs["pbsnode1"].exists(), r


def test_array_subjob_id(inst, user, work):
    job = new_job_id().replace(".", "[7].", 1)  # e.g. 1234001[7].pbs-server.example
    cfg = hook_config(inst)
    r = run_hook(work, "EXECJOB_PROLOGUE", job, user.name, config=cfg)
    assert r.accepted, r
    d = inst.job_dir(user, job)
    assert (d / "access_token").is_file(), r
    la = run_hook(work, "EXECJOB_LAUNCH", job, user.name, config=cfg)
    assert la.env["QLAM_ACCESS_TOKEN_FILE"] == str(d / "access_token"), la
    assert run_hook(work, "EXECJOB_EPILOGUE", job, user.name, config=cfg).accepted
    assert not d.exists()


def test_job_without_walltime(inst, user, work):
    job = new_job_id()
    cfg = hook_config(inst)
    r = run_hook(work, "EXECJOB_PROLOGUE", job, user.name, walltime=None, config=cfg)
    assert r.accepted, r
    d = inst.job_dir(user, job)
    assert (d / "access_token").is_file(), r
    assert run_hook(work, "EXECJOB_EPILOGUE", job, user.name, config=cfg).accepted
    assert not d.exists()


def test_user_who_must_log_in_is_accepted_and_told(inst, must_login_user, work):
    u = must_login_user
    job = new_job_id()
    cfg = hook_config(inst)
    pro = run_hook(work, "EXECJOB_PROLOGUE", job, u.name, config=cfg)
    assert pro.accepted, pro
    assert pro.reject_msg is None
    d = inst.job_dir(u, job)
    assert not (d / "access_token").exists()

    la = run_hook(work, "EXECJOB_LAUNCH", job, u.name, config=cfg,
                  env={"HOME": str(u.home), "PBS_JOBID": job})
    assert la.accepted, la
    assert "QSH_CONFIG_DIR" not in la.env and "QLAM_ACCESS_TOKEN_FILE" not in la.env, la.env
    msg = la.env.get("QLAM_HPC_MESSAGE", "")
    assert "log in" in msg.lower() or "login" in msg.lower(), la.env
    assert msg in la.log_text(), la

    epi = run_hook(work, "EXECJOB_EPILOGUE", job, u.name, config=cfg)
    assert epi.accepted, epi
    assert not d.exists()


def test_user_without_qlam_is_left_alone(inst, no_qlam_user, work):
    u = no_qlam_user
    job = new_job_id()
    cfg = hook_config(inst)
    pro = run_hook(work, "EXECJOB_PROLOGUE", job, u.name, config=cfg)
    assert pro.accepted, pro
    assert "no QLAM configuration" in pro.log_text(), pro
    assert not inst.job_dir(u, job).exists()
    la = run_hook(work, "EXECJOB_LAUNCH", job, u.name, config=cfg,
                  env={"HOME": str(u.home), "PBS_JOBID": job})
    assert la.accepted, la
    assert not set(LAUNCH_KEYS) & set(la.env), la.env
    assert run_hook(work, "EXECJOB_EPILOGUE", job, u.name, config=cfg).accepted


def test_enforced_site_rejects_a_user_who_must_log_in(inst, must_login_user, work):
    u = must_login_user
    job = new_job_id()
    cfg = hook_config(inst, site_config=str(inst.enforce_config))
    pro = run_hook(work, "EXECJOB_PROLOGUE", job, u.name, config=cfg)
    assert pro.outcome == "reject", pro
    assert pro.raw.get("explicit") is True
    assert "qlam-hpc prologue failed" in (pro.reject_msg or ""), pro
    assert "log in" in pro.reject_msg.lower() or "login" in pro.reject_msg.lower(), pro
    assert run_hook(work, "EXECJOB_EPILOGUE", job, u.name, config=cfg).accepted
    assert not inst.job_dir(u, job).exists()


def test_enforced_site_accepts_users_without_qlam(inst, no_qlam_user, work):
    cfg = hook_config(inst, site_config=str(inst.enforce_config))
    r = run_hook(work, "EXECJOB_PROLOGUE", new_job_id(), no_qlam_user.name, config=cfg)
    assert r.accepted, r


def test_enforced_site_stages_for_a_logged_in_user(inst, user, work):
    job = new_job_id()
    cfg = hook_config(inst, site_config=str(inst.enforce_config))
    r = run_hook(work, "EXECJOB_PROLOGUE", job, user.name, config=cfg)
    assert r.accepted, r
    assert (inst.job_dir(user, job) / "access_token").is_file()
    assert run_hook(work, "EXECJOB_EPILOGUE", job, user.name, config=cfg).accepted


def test_slow_idp_hook_finishes_before_its_alarm(inst, idp, slow_user, work):
    """The IdP answers token requests after 8 s; the hook's alarm is 6 s. The hook stops
    qlam-hpc at its deadline (alarm - 2 s), accepts the job and logs why. The user-side
    step, in the middle of the refresh, is left to finish: the user keeps their login (the
    IdP rotates refresh tokens and revokes the login when an old one is used again)."""
    u = slow_user
    age_token(u, ACCESS_TTL - 200)  # a refresh is due, so the IdP is asked
    before = store_tokens(u)
    job = new_job_id()
    alarm = 6
    cfg = hook_config(inst, alarm=alarm)
    idp.fault({"latency_ms": 8000}, endpoint="token")
    try:
        r = run_hook(work, "EXECJOB_PROLOGUE", job, u.name, config=cfg, alarm=alarm)
        assert r.outcome == "accept", r
        assert r.raw.get("ended_after", 99) < alarm - 1, r.raw.get("ended_after")
        assert 3.0 < r.elapsed < alarm, r.elapsed
        assert "did not finish" in r.log_text(), r
        # The user-side step finishes once the IdP answers, and stores the rotated tokens.
        wait_for("the user-side step to finish",
                 lambda: not user_processes(u.uid, "stage-as-user"), timeout=30)
    finally:
        idp.clear_faults()
    after = store_tokens(u)
    assert fp(after["refresh_token"]) != fp(before["refresh_token"]), "the refresh was lost"
    assert idp.introspect(after["refresh_token"]), "the user's login was revoked"
    # Late, but staged; the epilogue cleans up.
    la = run_hook(work, "EXECJOB_LAUNCH", job, u.name, config=cfg, alarm=alarm)
    assert la.accepted, la
    epi = run_hook(work, "EXECJOB_EPILOGUE", job, u.name, config=cfg, alarm=alarm)
    assert epi.accepted, epi
    assert not inst.job_dir(u, job).exists()


def test_default_configuration_without_a_config_file(inst, user, work):
    """No hook configuration file: the binary is looked up in the standard places; here it
    is not installed there, so the job is accepted and the MoM log says why."""
    if any(os.access(p, os.X_OK) for p in ("/usr/local/bin/qlam-hpc", "/usr/bin/qlam-hpc",
                                            "/opt/qlam-hpc/bin/qlam-hpc")):
        pytest.skip("qlam-hpc is installed system-wide on this machine")
    r = run_hook(work, "EXECJOB_PROLOGUE", new_job_id(), user.name, config=None)
    assert r.accepted, r
    assert "qlam-hpc not found" in r.log_text(), r


def test_missing_binary_accepts_unless_the_hook_config_enforces(inst, user, work):
    cfg = hook_config(inst, qlam_hpc="/nonexistent/qlam-hpc")
    r = run_hook(work, "EXECJOB_PROLOGUE", new_job_id(), user.name, config=cfg)
    assert r.accepted and "not found" in r.log_text(), r
    cfg["enforce"] = True
    r = run_hook(work, "EXECJOB_PROLOGUE", new_job_id(), user.name, config=cfg)
    assert r.outcome == "reject" and "not found" in (r.reject_msg or ""), r
    # The epilogue never rejects.
    r = run_hook(work, "EXECJOB_EPILOGUE", new_job_id(), user.name, config=cfg)
    assert r.accepted, r


def test_bad_config_file_is_logged_and_defaults_apply(inst, user, work):
    cfg = hook_config(inst, alarm="soon", colour="blue")
    r = run_hook(work, "EXECJOB_PROLOGUE", new_job_id(), user.name, config=cfg)
    assert r.accepted, r
    text = r.log_text()
    assert "alarm='soon'" in text and "colour='blue'" in text, r


def test_other_events_are_accepted_untouched(inst, user, work):
    r = run_hook(work, "EXECJOB_BEGIN", new_job_id(), user.name, config=hook_config(inst))
    assert r.accepted and r.raw.get("explicit") is True, r


def test_end_and_abort_events_clean_up_too(inst, user, work):
    cfg = hook_config(inst)
    for event in ("EXECJOB_END", "EXECJOB_ABORT"):
        job = new_job_id()
        assert run_hook(work, "EXECJOB_PROLOGUE", job, user.name, config=cfg).accepted
        assert inst.job_dir(user, job).is_dir()
        r = run_hook(work, event, job, user.name, config=cfg)
        assert r.accepted, (event, r)
        assert not inst.job_dir(user, job).exists(), event


def test_prologue_twice_on_one_host_is_harmless(inst, user, work):
    """pbs_mom may run the prologue again for a requeued job with the same id."""
    job = new_job_id()
    cfg = hook_config(inst)
    assert run_hook(work, "EXECJOB_PROLOGUE", job, user.name, config=cfg).accepted
    r = run_hook(work, "EXECJOB_PROLOGUE", job, user.name, config=cfg)
    assert r.accepted, r
    d = inst.job_dir(user, job)
    assert (d / "access_token").is_file()
    assert run_hook(work, "EXECJOB_EPILOGUE", job, user.name, config=cfg).accepted
    assert not d.exists()


def test_stage_dir_layout_matches_qlam_core(inst, user, work):
    job = new_job_id()
    cfg = hook_config(inst)
    assert run_hook(work, "EXECJOB_PROLOGUE", job, user.name, config=cfg).accepted
    d = inst.job_dir(user, job)
    try:
        conf = json.loads((d / "config.json").read_text())
        assert conf["current_context"] == "default"
        provider = conf["contexts"][0]["auth_providers"][0]
        assert provider["auth_base_url"] == inst.idp_url
        staged = json.loads((d / "credentials" / STORE_NAME).read_text())
        assert fp(staged["extra"]["token_data"]["access_token"]) == fp(staged_token(d))
    finally:
        assert run_hook(work, "EXECJOB_EPILOGUE", job, user.name, config=cfg).accepted


def test_epilogue_of_one_job_does_not_break_staging_of_another(inst, idp, slow_user, work):
    """Two jobs of one user on one host: job A ends while job B's prologue is still
    refreshing the token. A's epilogue removes A's directory; B must still get its staged
    copy. (Found as a bug: the epilogue also removed the momentarily empty per-user
    directory <stage_dir>/<uid> that B's prologue had prepared, and B's staging failed
    with exit 60; fixed: per-user directories are kept.)"""
    import threading

    u = slow_user
    cfg = hook_config(inst)
    job_a, job_b = new_job_id(), new_job_id()
    assert run_hook(work, "EXECJOB_PROLOGUE", job_a, u.name, config=cfg).accepted
    assert inst.job_dir(u, job_a).is_dir()
    age_token(u, ACCESS_TTL - 200)  # B's prologue must refresh, which the IdP makes slow
    idp.fault({"latency_ms": 3000}, endpoint="token")
    results = {}
    try:
        t = threading.Thread(target=lambda: results.update(
            b=run_hook(work, "EXECJOB_PROLOGUE", job_b, u.name, config=cfg)))
        t.start()
        time.sleep(1.0)
        epi = run_hook(work, "EXECJOB_EPILOGUE", job_a, u.name, config=cfg)
        t.join(timeout=60)
    finally:
        idp.clear_faults()
    assert epi.accepted, epi
    assert not inst.job_dir(u, job_a).exists()
    b = results["b"]
    assert b.accepted, b
    try:
        assert (inst.job_dir(u, job_b) / "access_token").is_file(), b
    finally:
        run_hook(work, "EXECJOB_EPILOGUE", job_b, u.name, config=cfg)
