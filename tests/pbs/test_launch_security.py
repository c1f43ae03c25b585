"""execjob_launch reads a directory the job's user controls (<stage_dir>/<uid>/...). Nothing
the user puts there may make root read a file for them or add variables to the job."""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from pbs_helpers import USER_MUST_LOGIN, hook_config, new_job_id, run_hook

MARKER = "ROOT-ONLY-MARKER-4f1c"


def swap_loop(job_dir, target) -> str:
    """Shell for the user: swap not-staged.txt between a symlink to `target` and a file."""
    return ('cd "%s" || exit 1; while :; do ln -sf "%s" l && mv -f l not-staged.txt; '
            'echo harmless > f && mv -f f not-staged.txt; done') % (job_dir, target)


@pytest.fixture
def racing_user(inst, must_login_user, work):
    """A user with a not-staged.txt (they must log in), a root-only secret, and a loop run
    as the user that keeps swapping not-staged.txt for a symlink to the secret."""
    u = must_login_user
    job = new_job_id()
    cfg = hook_config(inst)
    assert run_hook(work, "EXECJOB_PROLOGUE", job, u.name, config=cfg).accepted
    d = inst.job_dir(u, job)
    assert (d / "not-staged.txt").is_file()
    secret = inst.root / ("root-secret-%s" % job)
    secret.write_text(MARKER + "\n")
    secret.chmod(0o600)
    racer = subprocess.Popen(["/bin/sh", "-c", swap_loop(d, secret)], user=u.uid, group=u.gid,
                             env={"PATH": "/usr/bin:/bin"}, stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    try:
        yield u, job, cfg
    finally:
        racer.kill()
        racer.wait(timeout=10)
        secret.unlink()
        run_hook(work, "EXECJOB_EPILOGUE", job, u.name, config=cfg)


def test_binary_as_root_does_not_read_through_a_swapped_symlink(inst, racing_user):
    """`qlam-hpc hook pbs-launch` run as root (as a site's own launch hook might) must not
    follow a symlink swapped in for not-staged.txt between its check and its read. (Found
    as a bug in pbs::launch_env, fixed: the reason is read without following symlinks.
    With the bug, a leak came after a few hundred runs, within seconds.)"""
    u, job, _cfg = racing_user
    env = {"PATH": "/usr/bin:/bin", "QLAM_HPC_SITE_CONFIG": str(inst.site_config)}
    deadline = time.monotonic() + 15
    runs = 0
    while time.monotonic() < deadline:
        r = subprocess.run([str(inst.bin), "hook", "pbs-launch", "--job=" + job,
                            "--user=" + u.name], env=env, capture_output=True, text=True,
                           timeout=30, stdin=subprocess.DEVNULL)
        runs += 1
        assert MARKER not in r.stdout, "a root-only file leaked after %d runs" % runs


def test_hook_launch_cannot_be_made_to_read_root_files(inst, racing_user, work):
    """The hook runs pbs-launch as the job's owner, so the race above cannot leak."""
    u, job, cfg = racing_user
    deadline = time.monotonic() + 12
    runs = 0
    while time.monotonic() < deadline:
        r = run_hook(work, "EXECJOB_LAUNCH", job, u.name, config=cfg)
        runs += 1
        assert r.accepted, r
        assert MARKER not in (r.env or {}).get("QLAM_HPC_MESSAGE", ""), runs
        assert MARKER not in r.log_text(), runs
    assert runs > 10


def test_reason_text_cannot_add_variables(inst, must_login_user, work):
    u = must_login_user
    job = new_job_id()
    cfg = hook_config(inst)
    assert run_hook(work, "EXECJOB_PROLOGUE", job, u.name, config=cfg).accepted
    d = inst.job_dir(u, job)
    try:
        subprocess.run(["/bin/sh", "-c", 'printf "%s\\n" "x" "QSH_CONFIG_DIR=/tmp/evil" '
                        '"LD_PRELOAD=/tmp/evil.so" > "$1/not-staged.txt"', "sh", str(d)],
                       user=u.uid, group=u.gid, check=True, timeout=30)
        r = run_hook(work, "EXECJOB_LAUNCH", job, u.name, config=cfg,
                     env={"HOME": str(u.home), "PBS_JOBID": job})
        assert r.accepted, r
        assert "QSH_CONFIG_DIR" not in r.env and "LD_PRELOAD" not in r.env, r.env
        assert "QSH_CONFIG_DIR=/tmp/evil" in r.env.get("QLAM_HPC_MESSAGE", ""), r.env
    finally:
        run_hook(work, "EXECJOB_EPILOGUE", job, u.name, config=cfg)


@pytest.fixture
def symlinked_job_dir(inst, must_login_user, no_qlam_user, work):
    """User A (no QLAM) makes their job directory a symlink to user B's job directory, which
    holds B's not-staged.txt (B must log in)."""
    b, a = must_login_user, no_qlam_user
    cfg = hook_config(inst)
    job_b, job_a = new_job_id(), new_job_id()
    assert run_hook(work, "EXECJOB_PROLOGUE", job_b, b.name, config=cfg).accepted
    assert run_hook(work, "EXECJOB_PROLOGUE", job_a, a.name, config=cfg).accepted
    dir_a, dir_b = inst.job_dir(a, job_a), inst.job_dir(b, job_b)
    assert dir_a.parent.is_dir() and (dir_b / "not-staged.txt").is_file()
    subprocess.run(["ln", "-s", str(dir_b), str(dir_a)], user=a.uid, group=a.gid, check=True,
                   timeout=30)
    try:
        yield a, job_a, cfg
    finally:
        dir_a.unlink()
        run_hook(work, "EXECJOB_EPILOGUE", job_b, b.name, config=cfg)


def test_binary_as_root_does_not_read_another_users_reason(inst, symlinked_job_dir):
    a, job_a, _cfg = symlinked_job_dir
    r = subprocess.run([str(inst.bin), "hook", "pbs-launch", "--job=" + job_a, "--user=" + a.name],
                       env={"PATH": "/usr/bin:/bin", "QLAM_HPC_SITE_CONFIG": str(inst.site_config)},
                       capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert USER_MUST_LOGIN not in r.stdout, "another user's reason text reached this job"


def test_hook_launch_does_not_read_another_users_reason(inst, symlinked_job_dir, work):
    a, job_a, cfg = symlinked_job_dir
    r = run_hook(work, "EXECJOB_LAUNCH", job_a, a.name, config=cfg,
                 env={"HOME": str(a.home), "PBS_JOBID": job_a})
    assert r.accepted, r
    assert USER_MUST_LOGIN not in json.dumps(r.env) and USER_MUST_LOGIN not in r.log_text(), r
