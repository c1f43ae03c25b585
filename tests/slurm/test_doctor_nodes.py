"""`qlam-hpc doctor --nodes` inside a real two-node allocation: the cross-node lock test runs
one task per node with srun (task 0 holds an OFD lock on the store's lock file, task 1 must
see it) and the report says whether locks are coherent across the nodes. Here the four
slurmd share one host and one filesystem, so they must be."""

from __future__ import annotations

import pytest

from qlam_slurm_helpers import (  # noqa: F401 (fixtures)
    cancel_jobs, oidc_long, qlam_install, reset_qlam_home, scrub_tokens,
)


def test_doctor_nodes_tests_the_store_lock_across_two_nodes(slurm_cluster, slurm_user, qlam_install,
                                                            oidc_long, cancel_jobs):
    # oidc_long writes the site configuration (the IdP is not contacted: --offline).
    cluster, user, inst = slurm_cluster, slurm_user, qlam_install
    cluster.reconfigure()
    reset_qlam_home(user)
    script = f"""#!/bin/sh
"{inst.bin}" doctor --nodes --offline
echo "doctor-exit=$?"
"""
    job_dir = cluster.job_dir("doctor-nodes", user)
    job = cluster.submit(script, "-N2", "--ntasks-per-node=1", "--time=5", "-o", "out",
                         user=user, cwd=job_dir, env=inst.user_env())
    cancel_jobs.append(job)
    assert cluster.wait_job(job, timeout=120) == {job: "COMPLETED"}
    text = (job_dir / "out").read_text()
    assert "across nodes: coherent" in text, text
    assert "doctor-exit=0" in text, text
    # The store directory the test used exists now and stays private.
    creds = user.home / ".qsh" / "credentials"
    assert creds.is_dir()
    assert (creds.stat().st_mode & 0o077) == 0


def test_doctor_nodes_outside_an_allocation_says_how_to_get_one(slurm_cluster, slurm_user,
                                                               qlam_install):
    cluster, user, inst = slurm_cluster, slurm_user, qlam_install
    r = cluster.run_as(user, str(inst.bin), "doctor", "--nodes", "--offline",
                       env=inst.user_env(), check=False)
    assert r.returncode == 2, r
    assert "salloc -N2" in r.stderr
