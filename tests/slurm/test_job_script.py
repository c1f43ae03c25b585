"""The job scripts (scripts/qlam-hpc-job.sh and its csh twin, DESIGN §7) in real Slurm
batch jobs, on the cluster without any qlam-hpc hooks: sourced by the job, they ensure a
token valid for the job through the user's own store, export QLAM_ACCESS_TOKEN and
QLAM_TOKEN_EXPIRES_AT and define `qlam_token`; a user who must log in again gets the hint
and the job stops with status 41. With the hooks installed they use the staged copy. The
scripts are used as a site installs them
(`<prefix>/share/qlam-hpc/`, byte for byte the repository's), with qlam-hpc found through
QLAM_HPC_BIN.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from qlam_slurm_helpers import (  # noqa: F401  (fixtures are used by name)
    LONG_TTL, age_token, cancel_jobs, login, oidc_long, qlam_install, reset_qlam_home,
    revoke_login, scrub_tokens, sha16, store_path, store_tokens, token_left,
)
import oidc_helpers  # tests/e2e, on the path through qlam_slurm_helpers

SHELLS = ("sh", "bash", "tcsh")

# What every job prints after sourcing: fingerprints (never the token), the expiry, the time.
SH_JOB = r'''#!/bin/@SHELL@
. @JOB_SH@ || exit $?
echo "after-source"
echo "file=${QLAM_ACCESS_TOKEN_FILE:-unset}"
echo "fp=$(printf %s "$QLAM_ACCESS_TOKEN" | sha256sum | cut -c1-16)"
echo "expires=${QLAM_TOKEN_EXPIRES_AT:-unset}"
echo "now=$(date +%s)"
echo "fn=$(qlam_token | tr -d '\n' | sha256sum | cut -c1-16)"
'''

CSH_JOB = r'''#!/bin/tcsh
source @JOB_CSH@
echo "after-source"
if ( $?QLAM_ACCESS_TOKEN_FILE ) then
    echo "file=$QLAM_ACCESS_TOKEN_FILE"
else
    echo "file=unset"
endif
set fp = `printf '%s' "$QLAM_ACCESS_TOKEN" | sha256sum | cut -c1-16`
echo "fp=$fp"
if ( $?QLAM_TOKEN_EXPIRES_AT ) then
    echo "expires=$QLAM_TOKEN_EXPIRES_AT"
else
    echo "expires=unset"
endif
echo "now=`date +%s`"
set fn = `qlam_token | tr -d '\012' | sha256sum | cut -c1-16`
echo "fn=$fn"
'''


def tcsh_available() -> str | None:
    """tcsh's path, installing it (Debian, as root) when missing; None if that fails."""
    path = shutil.which("tcsh")
    if path or os.geteuid() != 0 or not shutil.which("apt-get"):
        return path
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "tcsh"],
                   env=env, capture_output=True, timeout=300)
    if not shutil.which("tcsh"):  # the package lists may be missing on a fresh machine
        subprocess.run(["apt-get", "update", "-qq"], env=env, capture_output=True, timeout=300)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", "tcsh"],
                       env=env, capture_output=True, timeout=300)
    return shutil.which("tcsh")


@pytest.fixture
def no_hooks(slurm_cluster):
    slurm_cluster.reconfigure()
    return slurm_cluster


def job_script(shell: str, inst) -> str:
    if shell == "tcsh":
        if tcsh_available() is None:
            pytest.skip("tcsh is not installed and `apt-get install tcsh` failed "
                        "(no package mirror reachable?): the csh job script is not tested")
        return CSH_JOB.replace("@JOB_CSH@", str(inst.job_csh))
    return SH_JOB.replace("@SHELL@", shell).replace("@JOB_SH@", str(inst.job_sh))


def parse_output(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


@pytest.fixture(scope="module")
def logged_in(slurm_cluster, slurm_user, qlam_install, oidc_long):
    """qlamtest, logged in once at the 600 s provider."""
    reset_qlam_home(slurm_user)
    login(slurm_cluster, qlam_install, slurm_user, oidc_long)
    return slurm_user


@pytest.fixture(scope="module")
def must_log_in(slurm_cluster, slurm_user2, qlam_install, oidc_long):
    """qlamtest2, whose login was revoked at the provider and whose access token expired."""
    user = slurm_user2
    reset_qlam_home(user)
    login(slurm_cluster, qlam_install, user, oidc_long)
    revoke_login(oidc_long, user)
    age_token(user, LONG_TTL + 120)
    assert token_left(user) < 0
    return user


@pytest.mark.parametrize("shell", SHELLS)
def test_job_script_gives_a_logged_in_user_a_token(shell, no_hooks, logged_in, qlam_install,
                                                   oidc_long, cancel_jobs):
    cluster, user, inst, server = no_hooks, logged_in, qlam_install, oidc_long
    script = job_script(shell, inst)
    # A refresh is due for a 10-minute job: the job's own qlam-hpc does it.
    age_token(user, LONG_TTL - 200)
    before_tokens = store_tokens(user)
    before = server.counters()
    job_dir = cluster.job_dir(f"jobscript-ok-{shell}", user)
    job = cluster.submit(script, "--time=10", "-o", "out", user=user, cwd=job_dir,
                         env=qlam_install.user_env())
    cancel_jobs.append(job)
    state = cluster.wait_job(job, timeout=90)
    text = (job_dir / "out").read_text()
    assert state == {job: "COMPLETED"}, oidc_helpers.redact(text)
    out = parse_output(text)

    now = store_tokens(user)
    token = now["access_token"]
    assert token != before_tokens["access_token"], "the due refresh did not happen"
    assert oidc_helpers.counter_delta(before, server.counters()).get("refreshes") == 1
    assert out["file"] == "unset"
    assert out["fp"] == sha16(token), "QLAM_ACCESS_TOKEN is not the store's token"
    assert out["fn"] == out["fp"], "qlam_token printed another token"
    assert server.introspect(token)["active"] is True
    expires, job_now = int(out["expires"]), int(out["now"])
    assert expires > job_now + 300, (expires, job_now)
    assert abs(expires - (time.time() + token_left(user))) <= 2
    assert server.login_alive(now["refresh_token"])
    assert "qlam-hpc" not in text.replace("after-source", "")  # no warning, no hint




@pytest.mark.parametrize("shell", ["sh", "bash", "tcsh"])
def test_job_script_stops_a_job_whose_user_must_log_in(shell, no_hooks, must_log_in,
                                                       qlam_install, oidc_long, cancel_jobs):
    cluster, user, inst = no_hooks, must_log_in, qlam_install
    script = job_script(shell, inst)
    job_dir = cluster.job_dir(f"jobscript-login-{shell}", user)
    job = cluster.submit(script, "--time=10", "-o", "out", user=user, cwd=job_dir,
                         env=inst.user_env())
    cancel_jobs.append(job)
    assert cluster.wait_job(job, timeout=90) == {job: "FAILED"}
    assert cluster.show_job(job)["ExitCode"] == "41:0"
    # The store is kept (DESIGN §6: never delete the file).
    assert store_path(user).is_file()
    text = (job_dir / "out").read_text()
    assert "after-source" not in text, "the job went on without a token"
    # qlam-hpc's own error (why), then the script's hint (what to do).
    assert "qlam-hpc: error:" in text and "revoked" in text, text
    assert "no QLAM token for this job (qlam-hpc exit 41)" in text, text
    assert "log in again with" in text and "qlam-hpc login" in text, text


@pytest.mark.parametrize("shell", ("sh", "tcsh"))
def test_job_script_uses_the_token_the_hooks_staged(shell, slurm_cluster, logged_in,
                                                    qlam_install, oidc_long, cancel_jobs):
    """With the site's hooks installed, the job scripts take the staged copy (no qlam-hpc
    run, no refresh) and export its expiry too."""
    cluster, user, inst, server = slurm_cluster, logged_in, qlam_install, oidc_long
    script = job_script(shell, inst)
    inst.use_hooks(cluster)
    try:
        job_dir = cluster.job_dir(f"jobscript-staged-{shell}", user)
        before = server.counters()
        job = cluster.submit(script, "--time=10", "-o", "out", user=user, cwd=job_dir,
                             env=inst.user_env())
        cancel_jobs.append(job)
        assert cluster.wait_job(job, timeout=90) == {job: "COMPLETED"}
    finally:
        cluster.reconfigure()
    out = parse_output((job_dir / "out").read_text())
    assert out["file"].startswith(f"{inst.stage_dir}/{user.uid}/{job}-")
    token = store_tokens(user)["access_token"]
    assert out["fp"] == sha16(token) == out["fn"]
    assert out["expires"] != "unset", "QLAM_TOKEN_EXPIRES_AT is not set"
    assert int(out["expires"]) > int(out["now"]) + 300
    assert abs(int(out["expires"]) - (time.time() + token_left(user))) <= 2
    assert oidc_helpers.counter_delta(before, server.counters()).get("token_requests_total", 0) == 0
