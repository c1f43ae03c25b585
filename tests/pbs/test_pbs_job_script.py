"""scripts/qlam-hpc-job.sh in a PBS job on a site without the qlam-hpc hooks: PBS_JOBID and
PBS_WALLTIME set (as OpenPBS/Torque set them for a job), no staged copy, no qstat on PATH.
The script must get a token through the user's own store, valid for the job (capped at
what the IdP issues)."""

from __future__ import annotations

import shutil

import pytest

from pbs_helpers import fp, run_as, sha256, store_tokens

JOB = r'''
. "$QLAM_TEST_JOB_SH" || exit $?
printf 'token_sha256=%s\n' "$(printf %s "$QLAM_ACCESS_TOKEN" | sha256sum | cut -d' ' -f1)"
printf 'expires_at=%s\n' "${QLAM_TOKEN_EXPIRES_AT:-unset}"
printf 'file=%s\n' "${QLAM_ACCESS_TOKEN_FILE:-unset}"
printf 'later_sha256=%s\n' "$(qlam_token | tr -d '\n' | sha256sum | cut -d' ' -f1)"
'''


@pytest.mark.parametrize("walltime", ["600", "7200"])
def test_job_script_without_hooks_gets_a_token(inst, user, walltime):
    assert shutil.which("qstat", path="/usr/local/bin:/usr/bin:/bin") is None
    env = inst.user_env(user, {
        "PBS_JOBID": "4242%s.pbs-server.example" % walltime,
        "PBS_WALLTIME": walltime,
        "PBS_ENVIRONMENT": "PBS_BATCH",
        "QLAM_HPC_BIN": str(inst.bin),
        "QLAM_HPC_STAGE_DIR": str(inst.stage_dir),  # nothing staged there for this job
        "QLAM_TEST_JOB_SH": str(inst.job_sh),
    })
    r = run_as(user, ["/bin/sh", "-c", JOB], env, timeout=120)
    assert r.returncode == 0, r.why()
    seen = dict(l.split("=", 1) for l in r.stdout.splitlines() if "=" in l)
    assert seen["file"] == "unset"
    assert seen["expires_at"] != "unset"
    current = store_tokens(user)["access_token"]
    assert seen["token_sha256"] == sha256(current), "the job's token is not the stored one"
    assert seen["later_sha256"] == sha256(current)
    assert fp(current)  # (fingerprints only in messages)
