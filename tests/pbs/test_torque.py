"""pbs/torque/{prologue,epilogue}{,.parallel} run as pbs_mom (Torque) runs them: as root,
with Torque's positional arguments, an empty environment (only QLAM_HPC_HOOK_ENV, to point
the scripts at this test's stand-in for /etc/qlam-hpc/hook.env), stdin /dev/null. A job
script then finds the staged copy at the documented path through scripts/qlam-hpc-job.sh.
No Torque server or MoM is involved: see pbs/README.md.
"""

from __future__ import annotations

import os
import re

from pbs_helpers import (
    SHORT_HOST, TORQUE, assert_private_stage, fp, new_job_id, run_as, run_torque,
    sha256, staged_token, store_tokens, torque_epilogue_args, torque_prologue_args,
    user_processes, wait_for,
)

SCRIPTS = ("prologue", "prologue.parallel", "epilogue", "epilogue.parallel")

# A job script: source the job helper, then report what it found (digests, not tokens).
JOB_SCRIPT = r'''
. "$QLAM_TEST_JOB_SH" || exit $?
printf 'QSH_CONFIG_DIR=%s\n' "${QSH_CONFIG_DIR:-unset}"
printf 'QLAM_ACCESS_TOKEN_FILE=%s\n' "${QLAM_ACCESS_TOKEN_FILE:-unset}"
printf 'token_sha256=%s\n' "$(printf %s "$QLAM_ACCESS_TOKEN" | sha256sum | cut -d' ' -f1)"
printf 'qlam_token_sha256=%s\n' "$(qlam_token | tr -d '\n' | sha256sum | cut -d' ' -f1)"
'''


def torque_env(path) -> dict[str, str]:
    return {"QLAM_HPC_HOOK_ENV": str(path)}


def parse(out: str) -> dict[str, str]:
    return dict(l.split("=", 1) for l in out.splitlines() if "=" in l)


def run_job(inst, user, job_id: str, **extra) -> dict[str, str]:
    env = inst.user_env(user, {"PBS_JOBID": job_id, "PBS_ENVIRONMENT": "PBS_BATCH",
                               "QLAM_HPC_STAGE_DIR": str(inst.stage_dir),
                               "QLAM_TEST_JOB_SH": str(inst.job_sh), **extra})
    r = run_as(user, ["/bin/sh", "-c", JOB_SCRIPT], env)
    assert r.returncode == 0, r.why()
    return parse(r.stdout)


def test_scripts_are_installable_as_torque_requires():
    for name in SCRIPTS:
        p = TORQUE / name
        assert p.is_file(), name
        assert p.read_text().startswith("#!/bin/sh\n"), name
        assert os.access(p, os.X_OK), name
    # The four share one body below their header (only `action=` and arguments differ).
    bodies = {name: (TORQUE / name).read_text().split("# --- the rest is the same")[1]
              for name in SCRIPTS}
    assert len(set(bodies.values())) == 1
    for name in SCRIPTS:
        action = re.search(r"^action=(\S+)$", (TORQUE / name).read_text(), re.M).group(1)
        assert action == ("pbs-prologue" if name.startswith("prologue") else "pbs-epilogue")


def test_prologue_stages_at_the_documented_path_and_the_job_finds_it(inst, user):
    job = new_job_id("torque-server")
    r = run_torque("prologue", torque_prologue_args(job, user, "00:10:00"),
                   env=torque_env(inst.hook_env))
    assert r.returncode == 0, r.why()
    d = inst.job_dir(user, job, SHORT_HOST)  # <stage_dir>/<uid>/<jobid>-<hostname -s>
    assert d.is_dir(), r.why()
    td = store_tokens(user)
    assert_private_stage(d, user, [td.get("refresh_token"), td.get("id_token")])
    assert "staged a token" in r.stderr

    # The job script: PBS_JOBID set, no QLAM_ACCESS_TOKEN_FILE; QLAM_HPC_BIN is /bin/false
    # so that only the staged copy can give it a token.
    seen = run_job(inst, user, job, QLAM_HPC_BIN="/bin/false")
    assert seen["QSH_CONFIG_DIR"] == str(d)
    assert seen["QLAM_ACCESS_TOKEN_FILE"] == str(d / "access_token")
    assert seen["token_sha256"] == sha256(staged_token(d))
    assert seen["qlam_token_sha256"] == sha256(staged_token(d))
    assert fp(staged_token(d)) == fp(store_tokens(user)["access_token"])

    r = run_torque("epilogue", torque_epilogue_args(job, user), env=torque_env(inst.hook_env))
    assert r.returncode == 0, r.why()
    assert not d.exists()


def test_parallel_scripts_on_a_sister(inst, user):
    job = new_job_id("torque-server")
    r = run_torque("prologue.parallel", torque_prologue_args(job, user),
                   env=torque_env(inst.hook_env))
    assert r.returncode == 0, r.why()
    d = inst.job_dir(user, job)
    assert (d / "access_token").is_file(), r.why()
    r = run_torque("epilogue.parallel", torque_epilogue_args(job, user),
                   env=torque_env(inst.hook_env))
    assert r.returncode == 0, r.why()
    assert not d.exists()


def test_long_job_renewer_is_stopped_by_the_epilogue(inst, user):
    job = new_job_id("torque-server")
    r = run_torque("prologue", torque_prologue_args(job, user, "10:00:00"),
                   env=torque_env(inst.hook_env))
    assert r.returncode == 0, r.why()
    d = inst.job_dir(user, job)
    pid = int((d / "renewer.pid").read_text())
    assert pid in user_processes(user.uid, "renew-as-user")
    r = run_torque("epilogue", torque_epilogue_args(job, user, "10:00:00"),
                   env=torque_env(inst.hook_env))
    assert r.returncode == 0, r.why()
    assert not d.exists()
    wait_for("the renewer to end", lambda: pid not in user_processes(user.uid, "renew-as-user"))


def test_prologue_exits_0_for_a_user_who_must_log_in(inst, must_login_user):
    u = must_login_user
    job = new_job_id("torque-server")
    r = run_torque("prologue", torque_prologue_args(job, u), env=torque_env(inst.hook_env))
    assert r.returncode == 0, r.why()
    # Torque connects the prologue's stderr to the job's error file: the user reads this.
    assert "log in" in r.stderr.lower() or "login" in r.stderr.lower(), r.why()
    assert not (inst.job_dir(u, job) / "access_token").exists()
    # The job script says so too and fails with 41 (login required) instead of hanging.
    env = inst.user_env(u, {"PBS_JOBID": job, "QLAM_HPC_STAGE_DIR": str(inst.stage_dir),
                            "QLAM_HPC_BIN": str(inst.bin), "QLAM_TEST_JOB_SH": str(inst.job_sh)})
    j = run_as(u, ["/bin/sh", "-c", JOB_SCRIPT], env)
    assert j.returncode == 41, j.why()
    assert "log in" in j.stderr.lower() or "login" in j.stderr.lower(), j.why()
    r = run_torque("epilogue", torque_epilogue_args(job, u), env=torque_env(inst.hook_env))
    assert r.returncode == 0, r.why()
    assert not inst.job_dir(u, job).exists()


def test_prologue_exits_0_for_a_user_without_qlam(inst, no_qlam_user):
    u = no_qlam_user
    job = new_job_id("torque-server")
    r = run_torque("prologue", torque_prologue_args(job, u), env=torque_env(inst.hook_env))
    assert r.returncode == 0, r.why()
    assert not inst.job_dir(u, job).exists()
    r = run_torque("epilogue", torque_epilogue_args(job, u), env=torque_env(inst.hook_env))
    assert r.returncode == 0, r.why()


def test_enforced_site_aborts_the_job_of_a_user_who_must_log_in(inst, must_login_user):
    u = must_login_user
    job = new_job_id("torque-server")
    r = run_torque("prologue", torque_prologue_args(job, u), env=torque_env(inst.hook_env_enforce))
    assert r.returncode == 1, r.why()
    assert "enforced" in r.stderr, r.why()
    r = run_torque("epilogue", torque_epilogue_args(job, u), env=torque_env(inst.hook_env_enforce))
    assert r.returncode == 0, r.why()


def test_missing_binary_never_holds_a_job(inst, user, tmp_path):
    env_file = tmp_path / "hook.env"
    env_file.write_text("QLAM_HPC_BIN=/nonexistent/qlam-hpc\n")
    env_file.chmod(0o644)
    for script, args in (("prologue", torque_prologue_args(new_job_id(), user)),
                         ("epilogue", torque_epilogue_args(new_job_id(), user))):
        r = run_torque(script, args, env=torque_env(env_file))
        assert r.returncode == 0, (script, r.why())
        assert "not found" in r.stderr, (script, r.why())


def test_hook_env_writable_by_others_is_ignored(inst, user, tmp_path):
    env_file = tmp_path / "hook.env"
    env_file.write_text("QLAM_HPC_BIN=%s\nQLAM_HPC_SITE_CONFIG=%s\n"
                        % (inst.bin, inst.enforce_config))
    env_file.chmod(0o666)
    job = new_job_id("torque-server")
    r = run_torque("prologue", torque_prologue_args(job, user), env=torque_env(env_file))
    assert r.returncode == 0, r.why()
    assert "ignoring" in r.stderr and "not writable by others" in r.stderr, r.why()
    assert not inst.job_dir(user, job).exists()


def test_hook_env_only_sets_known_variables(inst, user, tmp_path):
    marker = tmp_path / "ran"
    env_file = tmp_path / "hook.env"
    env_file.write_text("QLAM_HPC_BIN=%s\nQLAM_HPC_SITE_CONFIG=%s\n"
                        "PATH=/nonexistent\nBASH_ENV=%s\nQLAM_HPC_BIN_EXTRA=$(touch %s)\n"
                        "SSL_CERT_DIR=$(touch %s)\nNO_PROXY=127.0.0.1,localhost\n"
                        % (inst.bin, inst.site_config, marker, marker, marker))
    env_file.chmod(0o644)
    job = new_job_id("torque-server")
    r = run_torque("prologue", torque_prologue_args(job, user), env=torque_env(env_file))
    assert r.returncode == 0, r.why()
    assert not marker.exists()
    assert (inst.job_dir(user, job) / "access_token").is_file(), r.why()
    r = run_torque("epilogue", torque_epilogue_args(job, user), env=torque_env(env_file))
    assert r.returncode == 0 and not inst.job_dir(user, job).exists(), r.why()


def test_no_arguments_is_a_no_op(inst):
    for script in SCRIPTS:
        r = run_torque(script, [], env=torque_env(inst.hook_env))
        assert r.returncode == 0, (script, r.why())
        assert "nothing done" in r.stderr, (script, r.why())


def test_walltime_in_seconds_and_without_walltime(inst, user):
    for limits in ("nodes=1,walltime=600", "neednodes=1,nodes=1", ""):
        job = new_job_id("torque-server")
        args = torque_prologue_args(job, user)
        args[4] = limits
        r = run_torque("prologue", args, env=torque_env(inst.hook_env))
        assert r.returncode == 0, (limits, r.why())
        assert (inst.job_dir(user, job) / "access_token").is_file(), (limits, r.why())
        r = run_torque("epilogue", torque_epilogue_args(job, user), env=torque_env(inst.hook_env))
        assert r.returncode == 0 and not inst.job_dir(user, job).exists(), (limits, r.why())


def test_scripts_do_not_need_any_environment(inst, user, tmp_path):
    """Torque gives the scripts no PATH at all; with the binary on the default PATH they
    work from an empty environment (a /usr/local/bin stand-in is not possible here, so the
    check is that PATH gets a default and the script reaches the binary lookup)."""
    r = run_torque("prologue", torque_prologue_args(new_job_id(), user), env={})
    assert r.returncode == 0, r.why()
    if not any(os.access(p, os.X_OK) for p in ("/usr/local/bin/qlam-hpc", "/usr/bin/qlam-hpc")):
        assert "qlam-hpc not found" in r.stderr, r.why()
