"""Fixtures for the Slurm suites: a real Slurm cluster on this machine.

- `slurm_cluster` (session): munged on a private socket, slurmctld and four slurmd (nodes
  n1..n4 on localhost), started by tests/slurm/cluster.sh under $QLAM_SLURM_DIR (default
  tests/.work/slurm) with no Prolog, TaskProlog or Epilog, and stopped at the end of the
  session, also when it fails or is interrupted (atexit). Tests set the scripts they need
  with `slurm_cluster.reconfigure(prolog=..., task_prolog=..., epilog=...)`.
- `slurm_user` / `slurm_user2`: the unprivileged accounts jobs run as (qlamtest, qlamtest2).
- `recording_cluster`: the cluster with the recording scripts of tests/slurm/scripts as
  Prolog, TaskProlog and Epilog, and an empty record directory.

Without root or without slurm-wlm and munge the suites fail with a hint, unless
QLAM_SLURM_ALLOW_MISSING=1 turns that into a skip.
"""

from __future__ import annotations

import atexit
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from slurm_cluster import SlurmCluster, TestUser, TEST_USERS, missing_requirements  # noqa: E402


@pytest.fixture(scope="session")
def slurm_cluster() -> SlurmCluster:
    problems = missing_requirements()
    if problems:
        reason = "; ".join(problems)
        if os.environ.get("QLAM_SLURM_ALLOW_MISSING") == "1":
            pytest.skip(reason)
        pytest.fail(reason + "; set QLAM_SLURM_ALLOW_MISSING=1 to skip these tests instead")
    cluster = SlurmCluster.start()
    atexit.register(cluster.stop)
    try:
        yield cluster
    finally:
        cluster.stop()
        atexit.unregister(cluster.stop)


@pytest.fixture(scope="session")
def slurm_user(slurm_cluster: SlurmCluster) -> TestUser:
    return slurm_cluster.user(TEST_USERS[0])


@pytest.fixture(scope="session")
def slurm_user2(slurm_cluster: SlurmCluster) -> TestUser:
    return slurm_cluster.user(TEST_USERS[1])


@pytest.fixture
def recording_cluster(slurm_cluster: SlurmCluster) -> SlurmCluster:
    slurm_cluster.use_record_scripts()
    slurm_cluster.clear_records()
    return slurm_cluster
