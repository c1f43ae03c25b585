"""The test cluster itself, without qlam-hpc: it runs jobs as the test users on all four
nodes, and its Prolog, TaskProlog and Epilog behave as the Slurm hooks of DESIGN §7 expect.

The environment tests pin down exactly what Slurm hands each script, since the hooks can
rely on nothing else: the node Prolog and Epilog get no array variables, no PATH, no HOME
and no time limit (the Prolog finds the limit with `scontrol show job`).
"""

from __future__ import annotations

import subprocess
import time
from datetime import datetime

import pytest

from slurm_cluster import NODES, RECORD_SCRIPTS, SlurmCluster, TestUser, wait_for

# What slurmd 22.05 (Debian 12, what CI runs) passes the node Prolog for a batch job without
# --account/--comment/-e/--constraint/GPUs (each of those adds SLURM_JOB_ACCOUNT,
# SLURM_JOB_COMMENT, SLURM_JOB_STDERR, SLURM_JOB_CONSTRAINTS, SLURM_JOB_GPUS). Nothing else.
PROLOG_ENV_22_05 = {
    "SLURMD_NODENAME", "SLURM_CONF", "SLURM_CLUSTER_NAME", "SLURM_JOB_ID", "SLURM_JOBID",
    "SLURM_JOB_UID", "SLURM_JOB_GID", "SLURM_JOB_USER", "SLURM_UID", "SLURM_JOB_WORK_DIR",
    "SLURM_NODELIST", "SLURM_SCRIPT_CONTEXT", "SLURM_JOB_CPUS_PER_NODE", "SLURM_JOB_NUM_NODES",
    "SLURM_JOB_PARTITION", "SLURM_JOB_RESTART_COUNT", "SLURM_JOB_STDIN", "SLURM_JOB_STDOUT",
}
# The Epilog gets the same plus the job's exit status.
EPILOG_EXTRA_22_05 = {"SLURM_JOB_DERIVED_EC", "SLURM_JOB_EXIT_CODE", "SLURM_JOB_EXIT_CODE2"}
# Present in every version the hooks may meet (slurm.conf(5), "Prolog and Epilog Scripts").
PROLOG_ENV_REQUIRED = {
    "SLURMD_NODENAME", "SLURM_CONF", "SLURM_JOB_ID", "SLURM_JOB_UID", "SLURM_JOB_USER",
    "SLURM_SCRIPT_CONTEXT",
}


def slurm_version() -> str:
    out = subprocess.run(["slurmd", "-V"], capture_output=True, text=True).stdout
    return out.split()[-1] if out.split() else ""


def read_outputs(directory, pattern: str) -> list[str]:
    return [line for path in sorted(directory.glob(pattern))
            for line in path.read_text().splitlines()]


def test_cluster_is_up_on_a_private_munge_socket(slurm_cluster: SlurmCluster, slurm_user: TestUser):
    assert slurm_cluster.node_states() == {node: "idle" for node in NODES}
    config = slurm_cluster.run("scontrol", "show", "config").stdout
    socket = slurm_cluster.work_dir / "munge" / "munge.socket"
    assert f"socket={socket}" in config
    # Client commands of an unprivileged user find the socket through SLURM_CONF alone.
    out = slurm_cluster.run_as(slurm_user, "sinfo", "-h", "-o", "%D %P").stdout.split()
    assert out == ["4", "all*"]


@pytest.mark.parametrize("user_fixture", ["slurm_user", "slurm_user2"])
def test_jobs_run_as_the_submitting_user(slurm_cluster: SlurmCluster, user_fixture: str, request):
    user: TestUser = request.getfixturevalue(user_fixture)
    slurm_cluster.reconfigure()
    job_dir = slurm_cluster.job_dir(f"whoami-{user.name}", user)
    job = slurm_cluster.submit('#!/bin/sh\necho "$(id -u) $(id -g) $HOME $USER"\n',
                               "--time=1", "-o", "out", user=user, cwd=job_dir)
    assert set(slurm_cluster.wait_job(job).values()) == {"COMPLETED"}
    assert (job_dir / "out").read_text().split() == [str(user.uid), str(user.gid),
                                                     str(user.home), user.name]
    assert (job_dir / "out").stat().st_uid == user.uid


def test_array_of_200_tasks_runs_on_all_nodes(recording_cluster: SlurmCluster, slurm_user: TestUser):
    cluster = recording_cluster
    job_dir = cluster.job_dir("array", slurm_user)
    script = ('#!/bin/sh\n'
              'echo "$SLURM_ARRAY_TASK_ID $SLURMD_NODENAME $(id -u) FOO=${FOO-unset}"\n')
    started = time.monotonic()
    job = cluster.submit(script, "--array=0-199", "--time=5", "-o", "out.%a", cwd=job_dir)
    states = cluster.wait_job(job, timeout=150)
    elapsed = time.monotonic() - started
    assert len(states) == 200 and set(states.values()) == {"COMPLETED"}, states

    lines = [line.split() for line in read_outputs(job_dir, "out.*")]
    assert sorted(int(task) for task, *_ in lines) == list(range(200))
    assert {node for _, node, _, _ in lines} == set(NODES)
    assert {(uid, foo) for _, _, uid, foo in lines} == {(str(slurm_user.uid), "FOO=bar")}

    # Every task is a job of its own: the Prolog and Epilog run once per task, as root, and
    # know the task only by its own job id.
    task_job_ids = set(cluster.run("squeue", "-h", "-t", "all", "-j", job, "-o", "%A")
                       .stdout.split())
    assert len(task_job_ids) == 200
    for context in ("prolog", "epilog"):
        records = cluster.records(context=context)
        assert len(records) == 200, context
        assert {r.env["SLURM_JOB_ID"] for r in records} == task_job_ids
        assert {r.node for r in records} == set(NODES)
        for r in records:
            assert r.ids["uid"] == "0"
            assert r.env["SLURM_JOB_USER"] == slurm_user.name
            assert r.env["SLURM_JOB_UID"] == str(slurm_user.uid)
            assert not [k for k in r.env if k.startswith("SLURM_ARRAY_")], r.env
    # The TaskProlog (the job's own environment) does see the array variables.
    task_prologs = cluster.records(context="task-prolog")
    assert sorted(int(r.env["SLURM_ARRAY_TASK_ID"]) for r in task_prologs) == list(range(200))
    assert {r.env["SLURM_ARRAY_JOB_ID"] for r in task_prologs} == {job}
    assert elapsed < 150


def test_prolog_and_epilog_environment(recording_cluster: SlurmCluster, slurm_user: TestUser):
    cluster = recording_cluster
    cluster.set_record_flag("show-job")
    try:
        job = cluster.submit("#!/bin/sh\nexit 3\n", "--time=7", "-o", "out")
        cluster.wait_job(job)
    finally:
        cluster.set_record_flag("show-job", on=False)
    [prolog] = cluster.records(job, "prolog")
    [epilog] = cluster.records(job, "epilog")

    assert prolog.ids["uid"] == "0" and prolog.ids["gid"] == "0"
    assert prolog.env["SLURM_SCRIPT_CONTEXT"] == "prolog_slurmd"
    assert epilog.env["SLURM_SCRIPT_CONTEXT"] == "epilog_slurmd"
    assert prolog.env["SLURMD_NODENAME"] == prolog.node
    assert prolog.env["SLURM_JOB_USER"] == slurm_user.name
    assert prolog.env["SLURM_JOB_UID"] == str(slurm_user.uid)
    assert prolog.env["SLURM_JOB_GID"] == str(slurm_user.gid)
    assert prolog.env["SLURM_CONF"] == str(cluster.conf)
    assert epilog.env["SLURM_JOB_EXIT_CODE2"] == "3:0"
    assert PROLOG_ENV_REQUIRED <= set(prolog.env)
    # No search path, no home, and nothing about the time limit.
    for name in ("PATH", "HOME", "USER", "SLURM_JOB_END_TIME", "SLURM_JOB_START_TIME",
                 "SLURM_TIME_LIMIT", "SLURM_JOB_TIME_LIMIT"):
        assert name not in prolog.env, name
    if slurm_version().startswith("22.05."):
        assert set(prolog.env) == PROLOG_ENV_22_05
        assert set(epilog.env) == PROLOG_ENV_22_05 | EPILOG_EXTRA_22_05

    # With PrologFlags=Alloc the job is already RUNNING with a start time when the Prolog
    # runs, so `scontrol show job` gives the limit and the end time (local time, no zone).
    assert prolog.job_field("JobState") == "RUNNING"
    assert prolog.job_field("TimeLimit") == "00:07:00"
    start = datetime.fromisoformat(prolog.job_field("StartTime"))
    end = datetime.fromisoformat(prolog.job_field("EndTime"))
    assert (end - start).total_seconds() == 7 * 60


def test_task_prolog_exports_reach_every_task(recording_cluster: SlurmCluster, slurm_user: TestUser):
    cluster = recording_cluster
    job_dir = cluster.job_dir("multinode", slurm_user)
    script = ('#!/bin/sh\n'
              'echo "batch $SLURMD_NODENAME FOO=$FOO"\n'
              'srun --nodes=4 --ntasks=4 sh -c \'echo "task $SLURMD_NODENAME FOO=$FOO"\'\n')
    job = cluster.submit(script, "--nodes=4", "--time=2", "-o", "out", cwd=job_dir)
    assert set(cluster.wait_job(job).values()) == {"COMPLETED"}

    lines = sorted((job_dir / "out").read_text().splitlines())
    assert lines == ["batch n1 FOO=bar"] + [f"task {n} FOO=bar" for n in NODES]
    task_prologs = cluster.records(job, "task-prolog")
    assert len(task_prologs) == 5  # the batch step, then one per srun task
    for r in task_prologs:
        assert r.ids["uid"] == str(slurm_user.uid)
        assert r.env["SLURM_SCRIPT_CONTEXT"] == "prolog_task"
        assert "SLURM_TASK_PID" in r.env
    # PrologFlags=Alloc: the Prolog ran once on each node of the allocation, and so did
    # the Epilog.
    assert sorted(r.node for r in cluster.records(job, "prolog")) == list(NODES)
    assert sorted(r.node for r in cluster.records(job, "epilog")) == list(NODES)


def test_failing_prolog_drains_the_node(recording_cluster: SlurmCluster, slurm_user: TestUser):
    cluster = recording_cluster
    cluster.set_record_flag("fail-prolog.n3")
    job = None
    try:
        job = cluster.submit("#!/bin/sh\ntrue\n", "--nodelist=n3", "--time=1", "-o", "out")
        wait_for("n3 to drain", lambda: cluster.drain_reasons().get("n3") == "Prolog error", 30)
        assert cluster.node_states()["n3"] in {"drain", "drng"}
        # The job goes back to the queue, held.
        assert cluster.show_job(job)["Reason"] == "launch_failed_requeued_held"
        assert cluster.job_states(job) == {job: "PENDING"}
    finally:
        cluster.set_record_flag("fail-prolog.n3", on=False)
        if job is not None:
            cluster.run("scancel", job, check=False)
        cluster.resume("n3")
    assert cluster.drain_reasons() == {}
    assert cluster.node_states() == {node: "idle" for node in NODES}
    again = cluster.submit("#!/bin/sh\ntrue\n", "--nodelist=n3", "--time=1", "-o", "out")
    assert cluster.wait_job(again) == {again: "COMPLETED"}


def test_reconfigure_removes_the_scripts(slurm_cluster: SlurmCluster, slurm_user: TestUser):
    slurm_cluster.use_record_scripts()
    slurm_cluster.reconfigure()
    slurm_cluster.clear_records()
    job_dir = slurm_cluster.job_dir("no-scripts", slurm_user)
    job = slurm_cluster.submit('#!/bin/sh\necho "FOO=${FOO-unset}"\n', "--time=1", "-o", "out",
                               cwd=job_dir)
    assert slurm_cluster.wait_job(job) == {job: "COMPLETED"}
    assert (job_dir / "out").read_text().strip() == "FOO=unset"
    assert slurm_cluster.records() == []


def test_hook_env_reaches_every_script(slurm_cluster: SlurmCluster, slurm_user: TestUser):
    # slurmd builds the Prolog's environment itself; variables for the scripts under test
    # (QLAM_HPC_BIN, a site config path, ...) reach them only through the wrappers.
    value = "/opt/q lam/it's $HOME"
    slurm_cluster.reconfigure(**RECORD_SCRIPTS, hook_env={"QLAM_TEST_MARK": value})
    slurm_cluster.clear_records()
    job = slurm_cluster.submit("#!/bin/sh\ntrue\n", "--time=1", "-o", "out")
    assert slurm_cluster.wait_job(job) == {job: "COMPLETED"}
    records = slurm_cluster.records(job)
    assert sorted(r.context for r in records) == ["epilog", "prolog", "task-prolog"]
    for r in records:
        assert r.env["QLAM_TEST_MARK"] == value, r.context
