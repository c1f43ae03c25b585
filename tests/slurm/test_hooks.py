"""qlam-hpc's Slurm hooks on a real cluster (DESIGN §7): the project's slurm/prolog.sh,
task-prolog.sh and epilog.sh as Prolog, TaskProlog and Epilog, real test users who log in
through the device flow at a real OIDC provider over HTTPS, and jobs that use what the
hooks stage.

- A 200-task array whose token is due for a refresh costs the provider exactly one refresh;
  every task reads the same staged, access-token-only copy (QLAM Core too), the refresh
  token never enters the staging directory, the Epilogs leave nothing behind.
- A job that outlives its access token finds a renewed one staged; the renewer ends with
  the job.
- A QLAM user who must log in is told so in the job's output; a user without QLAM gets
  nothing; neither drains a node.
- Regressions: the renewer does not spin with tokens shorter than a minute; a job ending
  on a node does not remove what another job's Prolog just prepared there.

Each test sets the scripts it needs and the QLAM state of the users' homes it relies on
(qlam_slurm_helpers.py has the installation, the providers and the helpers).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import stat
import time
from datetime import datetime

import pytest

from qlam_slurm_helpers import (  # noqa: F401  (fixtures are used by name)
    LONG_TTL, SHORT_TTL, STORE_NAME, age_token, build_slow_chown, cancel_jobs, cpu_seconds,
    files_under, job_python, login, make_user_dir, oidc_long, oidc_short, outputs,
    qlam_install, qsh_dir,
    read_token_file, renewers, reset_qlam_home, running, scrub_tokens, sha16, started_at,
    store_path, store_tokens, token_left, user_processes, wait_gone,
)
import oidc_helpers  # tests/e2e, on the path through qlam_slurm_helpers
from slurm_cluster import FINISHED_STATES, NODES, SlurmError, wait_for

ARRAY_SIZE = 200
# Tasks that also run QLAM Core (a Python start each; all 200 would take long on 2 cores).
CORE_TASKS = tuple(range(0, ARRAY_SIZE, 25))


def hold_until_released(max_seconds: int) -> str:
    """Shell lines: mark this task ready, then wait for the test's `release` file."""
    return (
        'touch "ready.${SLURM_ARRAY_TASK_ID:-0}"\n'
        "i=0\n"
        f'while [ ! -e release ] && [ "$i" -lt {max_seconds} ]; do sleep 2; i=$((i+2)); done\n'
        'echo "released after ${i}s"\n'
    )


def wait_ready(cluster, job: str, job_dir, count: int, timeout: float) -> None:
    """Wait for `count` ready files; fail early (with the outputs) if a task finished."""
    def check():
        if len(list(job_dir.glob("ready.*"))) >= count:
            return True
        done = {t: s for t, s in cluster.job_states(job).items() if s in FINISHED_STATES}
        if done:
            outs = oidc_helpers.redact("\n".join(f"{k}: {v}" for k, v in
                                                 list(outputs(job_dir, "out*").items())[:5]))
            raise SlurmError(f"tasks of job {job} finished before all were ready: "
                             f"{dict(list(done.items())[:10])}; outputs:\n{outs}")
        return False
    wait_for(f"{count} tasks of job {job} to be ready", check, timeout, interval=1)


def parse_kv(line: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in line.split() if "=" in item)


ARRAY_SCRIPT = r'''#!/bin/sh
task=$SLURM_ARRAY_TASK_ID
f=${QLAM_ACCESS_TOKEN_FILE:-}
if [ -z "$f" ] || [ ! -s "$f" ]; then
    echo "task=$task error=no-staged-token file=${f:-unset} qsh=${QSH_CONFIG_DIR:-unset}"
    exit 3
fi
fp=$(tr -d '\n' < "$f" | sha256sum | cut -c1-16)
echo "task=$task node=$SLURMD_NODENAME fp=$fp qsh=${QSH_CONFIG_DIR:-unset} file=$f"
case " @CORE_TASKS@ " in
    *" $task "*)
        core=$("$QLAM_TEST_PYTHON" qlam_core_token.py token default qlam default 2>core.err.$task) \
            || { echo "core-exit=$?"; exit 4; }
        echo "core=$core" ;;
esac
'''


def test_array_of_200_tasks_shares_one_refresh(slurm_cluster, slurm_user, qlam_install,
                                               oidc_long, cancel_jobs):
    cluster, user, inst, server = slurm_cluster, slurm_user, qlam_install, oidc_long
    inst.use_hooks(cluster)
    reset_qlam_home(user)
    login(cluster, inst, user, server)
    at_login = store_tokens(user)
    assert at_login["expires_in"] == LONG_TTL
    # A refresh is due: less than half the IdP's lifetime (the cap of min_ttl) is left.
    age_token(user, LONG_TTL - 200)
    assert 150 < token_left(user) < LONG_TTL / 2

    python, python_env = job_python(cluster, user)
    job_dir = cluster.job_dir("hooks-array", user)
    core_script = job_dir / "qlam_core_token.py"
    core_script.write_text(oidc_helpers.QLAM_CORE_SCRIPT)
    os.chown(core_script, user.uid, user.gid)
    script = (ARRAY_SCRIPT.replace("@CORE_TASKS@", " ".join(map(str, CORE_TASKS)))
              + hold_until_released(600))

    # Not what this test is about: 200 Prologs at once race to create the stage directories
    # (test_concurrent_prologs_of_a_user_all_stage), so they are made first.
    before = server.counters()
    started = time.monotonic()
    job = cluster.submit(script, f"--array=0-{ARRAY_SIZE - 1}", "--time=15", "-o", "out.%a",
                         user=user, cwd=job_dir,
                         env=inst.user_env({"QLAM_TEST_PYTHON": python, **python_env}))
    cancel_jobs.append(job)
    wait_ready(cluster, job, job_dir, ARRAY_SIZE, timeout=400)
    ready_after = time.monotonic() - started

    # --- while every task is running --------------------------------------------------
    # The provider saw exactly one token request: one refresh for the whole array.
    delta = oidc_helpers.counter_delta(before, server.counters())
    assert delta.get("refreshes") == 1, delta
    assert delta.get("token_requests_total") == 1, delta

    now = store_tokens(user)
    assert now["access_token"] != at_login["access_token"], "the due refresh did not happen"
    assert now["refresh_token"] != at_login["refresh_token"], "the refresh token was not rotated"
    token = now["access_token"]
    assert server.introspect(token)["active"] is True

    # Every task saw the refreshed token through QLAM_ACCESS_TOKEN_FILE.
    outs = outputs(job_dir, "out.*")
    assert len(outs) == ARRAY_SIZE
    seen: dict[int, dict[str, str]] = {}
    for name, text in outs.items():
        first = parse_kv(text.splitlines()[0]) if text.strip() else {}
        assert "fp" in first, f"{name}: {oidc_helpers.redact(text)!r}"
        seen[int(first["task"])] = first
    assert sorted(seen) == list(range(ARRAY_SIZE))
    assert {t["fp"] for t in seen.values()} == {sha16(token)}, "tasks saw different tokens"
    assert {t["node"] for t in seen.values()} == set(NODES)
    # Each task's QSH_CONFIG_DIR is its own job's directory on its node.
    task_jobs = array_task_jobs(cluster, job)
    for t in seen.values():
        want = inst.stage_dir / str(user.uid) / f"{task_jobs[int(t['task'])]}-{t['node']}"
        assert t["qsh"] == str(want)
        assert t["file"] == f"{want}/access_token"

    # QLAM Core, pointed at the staged directory by the TaskProlog's QSH_CONFIG_DIR, loads
    # the staged credential: the same token, and no refresh token to be had.
    for task in CORE_TASKS:
        line = next(l for l in outs[f"out.{task}"].splitlines() if l.startswith("core="))
        core = json.loads(line[len("core="):])
        assert core.get("ok") is True, (task, core)
        assert core["token_sha256"] == oidc_helpers.sha256(token), task
        assert core["refresh_token_sha256"] is None, task

    # The staged directories: one per task and node, private, access token only.
    dirs = inst.staged_job_dirs(user)
    assert len(dirs) == ARRAY_SIZE, [d.name for d in dirs][:10]
    secrets = [at_login["refresh_token"], now["refresh_token"],
               at_login.get("id_token"), now.get("id_token")]
    for d in dirs:
        st = d.lstat()
        assert stat.S_ISDIR(st.st_mode) and st.st_uid == user.uid, d
        assert stat.S_IMODE(st.st_mode) == 0o700, (d, oct(st.st_mode))
        assert read_token_file(d / "access_token") == token, d
        staged = json.loads((d / "credentials" / STORE_NAME).read_text())
        td = staged["extra"]["token_data"]
        assert td["access_token"] == token
        assert td.get("refresh_token") is None and td.get("id_token") is None
        assert (d / "config.json").is_file()
    files = files_under(inst.stage_dir)
    assert len(files) >= 3 * ARRAY_SIZE
    for path in files:
        assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path
        oidc_helpers.assert_no_secrets(path.read_text(errors="replace"), secrets, str(path))
    # A renewer per task, since the job (15 min) may outlive the token (10 min).
    alive = renewers(user.uid)
    for d in dirs:
        pid = int((d / "renewer.pid").read_text())
        assert pid in alive, d

    # --- after the jobs ----------------------------------------------------------------
    (job_dir / "release").touch()
    states = cluster.wait_job(job, timeout=180)
    total = time.monotonic() - started
    assert len(states) == ARRAY_SIZE and set(states.values()) == {"COMPLETED"}, states
    for name, text in outputs(job_dir, "out.*").items():
        assert "released after" in text, name
    wait_gone("staged job directories to be removed", lambda: inst.staged_job_dirs(user), 30)
    wait_gone("the renewers to end", lambda: renewers(user.uid), 30)
    # The hooks' log: each task's Prolog staged, its Epilog removed the copy.
    for task_job in task_jobs.values():
        log = inst.hook_log_lines(task_job)
        assert [l for l in log if "slurm-prolog" in l and "staged a token" in l], log
        assert [l for l in log if "slurm-epilog" in l and "removed the staged token" in l], log
    assert cluster.drain_reasons() == {}
    assert set(cluster.node_states().values()) == {"idle"}
    # Still one refresh, and the login lives on.
    delta = oidc_helpers.counter_delta(before, server.counters())
    assert delta.get("refreshes") == 1 and delta.get("token_requests_total") == 1, delta
    assert store_tokens(user)["refresh_token"] == now["refresh_token"]
    assert server.login_alive(now["refresh_token"])
    print(f"200-task array: all ready after {ready_after:.0f}s, done after {total:.0f}s")


def array_task_jobs(cluster, array_job: str) -> dict[int, str]:
    """{array task id: its job id} (each task is a job of its own to the Prolog)."""
    out = cluster.run("squeue", "-h", "-t", "all", "-j", array_job, "-o", "%K %A").stdout
    return {int(k): a for k, a in (line.split() for line in out.splitlines())}


LONG_JOB_SCRIPT = r'''#!/bin/sh
f=${QLAM_ACCESS_TOKEN_FILE:-}
[ -n "$f" ] && [ -s "$f" ] || { echo "error=no-staged-token"; exit 3; }
echo "start=$(tr -d '\n' < "$f" | sha256sum | cut -c1-16) at=$(date +%s)"
sleep @SLEEP@
[ -s "$f" ] || { echo "error=token-file-gone"; exit 4; }
echo "end=$(tr -d '\n' < "$f" | sha256sum | cut -c1-16) at=$(date +%s)"
'''


@pytest.fixture(scope="module")
def long_job(slurm_cluster, slurm_user2, qlam_install, oidc_short):
    """One job of qlamtest2 that sleeps past its 40 s access token, then reads the staged
    token again and waits to be released. What was seen while it was held and after its
    Epilog, for the tests below."""
    cluster, user, inst, server = slurm_cluster, slurm_user2, qlam_install, oidc_short
    inst.use_hooks(cluster)
    reset_qlam_home(user)
    # The user's own qsh config (written by login) names the short-lived provider.
    login(cluster, inst, user, server, pin_issuer=True)
    assert store_tokens(user)["expires_in"] == SHORT_TTL

    job_dir = cluster.job_dir("hooks-long", user)
    sleep = SHORT_TTL + 30
    script = LONG_JOB_SCRIPT.replace("@SLEEP@", str(sleep)) + hold_until_released(120)
    before = server.counters()
    job = cluster.submit(script, "--time=15", "-o", "out", user=user, cwd=job_dir,
                         env=inst.user_env())
    seen: dict = {"job": job}
    try:
        wait_ready(cluster, job, job_dir, 1, timeout=sleep + 60)
        lines = [parse_kv(l) for l in (job_dir / "out").read_text().splitlines()]
        seen["start"] = next(l for l in lines if "start" in l)
        seen["end"] = next(l for l in lines if "end" in l)
        [d] = inst.staged_job_dirs(user)
        seen["dir"] = d
        seen["token"] = token = read_token_file(d / "access_token")
        seen["active"] = server.introspect(token)["active"]
        staged = json.loads((d / "credentials" / STORE_NAME).read_text())
        td = staged["extra"]["token_data"]
        seen["staged_token"] = td["access_token"]
        created = datetime.fromisoformat(td["created_at"].replace("Z", "+00:00"))
        seen["staged_left"] = created.timestamp() + int(td["expires_in"]) - time.time()
        seen["store_token"] = store_tokens(user)["access_token"]
        seen["renewer"] = pid = int((d / "renewer.pid").read_text())
        seen["renewers"] = renewers(user.uid)
        seen["refreshes"] = oidc_helpers.counter_delta(before, server.counters()).get("refreshes", 0)
        seen["renewer_cpu"] = cpu_seconds(pid)
        seen["renewer_age"] = time.clock_gettime(time.CLOCK_BOOTTIME) - started_at(pid)
    finally:
        (job_dir / "release").touch()
        seen["states"] = cluster.wait_job(job, timeout=60)
    wait_gone("the renewer to end",
              lambda: renewers(user.uid) or running(seen.get("renewer", 0)), 30)
    wait_gone("the staged directory to be removed", lambda: inst.staged_job_dirs(user), 30)
    seen["drained"] = cluster.drain_reasons()
    return seen


def test_job_outliving_its_token_gets_a_renewed_one(long_job):
    seen = long_job
    assert seen["states"] == {seen["job"]: "COMPLETED"}
    start, end = seen["start"], seen["end"]
    assert int(end["at"]) - int(start["at"]) >= SHORT_TTL + 20
    assert end["end"] != start["start"], "the job still saw its first token after it expired"
    # What the job read last is what is staged now: a valid, active token, the store's own.
    assert sha16(seen["token"]) == end["end"]
    assert seen["active"] is True
    assert seen["staged_left"] > 0
    assert seen["staged_token"] == seen["token"] == seen["store_token"]
    # One renewer did it, with one refresh per token lifetime or so, and it is gone now.
    assert seen["renewers"] == [seen["renewer"]]
    assert 1 <= seen["refreshes"] <= 4, seen["refreshes"]
    assert seen["drained"] == {}
    print(f"renewer: {seen['refreshes']} refreshes, {seen['renewer_cpu']:.1f}s CPU "
          f"in {seen['renewer_age']:.0f}s")


def test_renewer_sleeps_between_renewals(long_job):
    """With tokens shorter than a minute the renewer once spun between its wake-up point
    and the point where ensure() refreshes. Waking now and then and rewriting a few small
    files costs well under a second of CPU over the job's ~75 s."""
    assert long_job["renewer_cpu"] < 3.0, (
        f"the renewer used {long_job['renewer_cpu']:.1f}s CPU in {long_job['renewer_age']:.0f}s")


def test_users_without_a_token_get_a_hint_and_the_node_stays_up(
        slurm_cluster, slurm_user, slurm_user2, qlam_install, oidc_long, cancel_jobs):
    cluster, inst = slurm_cluster, qlam_install
    inst.use_hooks(cluster)
    # qlamtest uses QLAM (a credentials directory) but never logged in; qlamtest2 has no
    # QLAM setup at all.
    never, none = slurm_user, slurm_user2
    for user in (never, none):
        reset_qlam_home(user)
    make_user_dir(never, qsh_dir(never) / "credentials")
    script = (
        "#!/bin/sh\n"
        'd="@STAGE@/$(id -u)/$SLURM_JOB_ID-$SLURMD_NODENAME"\n'
        'echo "job ran qsh=${QSH_CONFIG_DIR:-unset} file=${QLAM_ACCESS_TOKEN_FILE:-unset}"\n'
        'if [ -e "$d/access_token" ]; then echo "staged=yes"; else echo "staged=no"; fi\n'
    ).replace("@STAGE@", str(inst.stage_dir))
    jobs = {}
    for user in (never, none):
        job_dir = cluster.job_dir(f"hooks-nologin-{user.name}", user)
        jobs[user.name] = (cluster.submit(script, "--time=5", "-o", "out", user=user,
                                          cwd=job_dir, env=inst.user_env()), job_dir)
        cancel_jobs.append(jobs[user.name][0])
    for name, (job, _) in jobs.items():
        assert cluster.wait_job(job, timeout=60) == {job: "COMPLETED"}, name

    out = (jobs[never.name][1] / "out").read_text().splitlines()
    hints = [l for l in out if l.startswith("qlam-hpc:")]
    assert len(hints) == 1, out
    assert "no QLAM token was staged" in hints[0] and "qlam-hpc login" in hints[0], hints
    assert [l for l in out if not l.startswith("qlam-hpc:")] == [
        "job ran qsh=unset file=unset", "staged=no"]

    out = (jobs[none.name][1] / "out").read_text().splitlines()
    assert out == ["job ran qsh=unset file=unset", "staged=no"]

    # What the Prologs logged: why nothing was staged.
    log = inst.hook_log_lines(jobs[never.name][0])
    assert [l for l in log if "slurm-prolog" in l and "not logged in" in l], log
    log = inst.hook_log_lines(jobs[none.name][0])
    assert [l for l in log if "slurm-prolog" in l and "no QLAM configuration" in l], log

    for user in (never, none):
        wait_gone(f"{user.name}'s staged directories to be removed",
                  lambda: inst.staged_job_dirs(user), 30)
        assert renewers(user.uid) == []
    assert cluster.drain_reasons() == {}
    assert set(cluster.node_states().values()) == {"idle"}


RACE_SCRIPT = r'''#!/bin/sh
f=${QLAM_ACCESS_TOKEN_FILE:-}
if [ -n "$f" ] && [ -s "$f" ]; then
    echo "fp=$(tr -d '\n' < "$f" | sha256sum | cut -c1-16)"
else
    echo "fp=none"
fi
'''


def test_a_job_ending_does_not_unstage_one_starting_on_the_node(
        slurm_cluster, slurm_user, qlam_install, oidc_long, cancel_jobs):
    """Job A ends on n1 while job B's Prolog on n1 waits for the store lock (a refresh is
    due): A's Epilog must not take away what B's Prolog prepared. (It once removed the
    empty <stage_dir>/<uid>; B then ran without a token and without the hint.)"""
    cluster, user, inst, server = slurm_cluster, slurm_user, qlam_install, oidc_long
    inst.use_hooks(cluster)
    reset_qlam_home(user)
    login(cluster, inst, user, server)

    dir_a = cluster.job_dir("hooks-race-a", user)
    job_a = cluster.submit(RACE_SCRIPT + hold_until_released(120), "--time=5", "-w", "n1",
                           "-o", "out", user=user, cwd=dir_a, env=inst.user_env())
    cancel_jobs.append(job_a)
    wait_ready(cluster, job_a, dir_a, 1, timeout=60)
    assert len(inst.staged_job_dirs(user)) == 1

    # B's Prolog will need a refresh, and waits for the lock that this test holds.
    age_token(user, LONG_TTL - 200)
    lock_path = store_path(user).with_name(store_path(user).name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        os.fchown(fd, user.uid, user.gid)
        fcntl.lockf(fd, fcntl.LOCK_EX)  # a POSIX lock: conflicts with qlam-hpc's OFD lock
        dir_b = cluster.job_dir("hooks-race-b", user)
        job_b = cluster.submit(RACE_SCRIPT, "--time=5", "-w", "n1", "-o", "out", user=user,
                               cwd=dir_b, env=inst.user_env())
        cancel_jobs.append(job_b)
        wait_for("job B's Prolog to wait for the store lock",
                 lambda: user_processes(user.uid, "stage-as-user"), 30)
        # Now A ends: its Epilog removes A's directory, and B's Prolog is still waiting.
        (dir_a / "release").touch()
        assert cluster.wait_job(job_a, timeout=60) == {job_a: "COMPLETED"}
        assert user_processes(user.uid, "stage-as-user"), "B's Prolog stopped waiting"
    finally:
        os.close(fd)  # releases the lock
    assert cluster.wait_job(job_b, timeout=60) == {job_b: "COMPLETED"}
    assert cluster.drain_reasons() == {}
    fp = parse_kv((dir_b / "out").read_text().splitlines()[0])["fp"]
    assert fp == sha16(store_tokens(user)["access_token"]), "job B got no staged token"


class MissingStagedToken(AssertionError):
    """The product bug below, as opposed to any other failure of the test."""


def test_concurrent_prologs_of_a_user_all_stage(slurm_cluster, slurm_user, qlam_install,
                                                oidc_long, cancel_jobs):
    cluster, user, inst, server = slurm_cluster, slurm_user, qlam_install, oidc_long
    shim = build_slow_chown(inst.root / "testlib")
    if shim is None:
        pytest.skip("no C compiler (cc) to build the lchown shim that widens the race window")
    # The user's first jobs on the node: no <stage_dir>/<uid> yet (it stays once made).
    wait_gone("earlier jobs' directories to be removed", lambda: inst.staged_job_dirs(user), 30)
    user_dir = inst.stage_dir / str(user.uid)
    shutil.rmtree(user_dir, ignore_errors=True)
    inst.stage_dir.mkdir(mode=0o755, exist_ok=True)
    cluster.reconfigure(prolog=inst.prolog, task_prolog=inst.task_prolog, epilog=inst.epilog,
                        hook_env={**inst.hook_env(), "LD_PRELOAD": str(shim),
                                  "QLAM_TEST_SLOW_CHOWN": str(user_dir),
                                  "QLAM_TEST_SLOW_CHOWN_SECONDS": "6"})
    try:
        reset_qlam_home(user)
        login(cluster, inst, user, server)
        job_dir = cluster.job_dir("hooks-concurrent", user)
        # Two tasks of an array, on one node, start together: two Prologs at once.
        job = cluster.submit(RACE_SCRIPT, "--array=0-1", "-w", "n1", "--time=5", "-o", "out.%a",
                             user=user, cwd=job_dir, env=inst.user_env())
        cancel_jobs.append(job)
        states = cluster.wait_job(job, timeout=90)
    finally:
        inst.use_hooks(cluster)
    assert set(states.values()) == {"COMPLETED"}, states
    assert cluster.drain_reasons() == {}
    token_fp = sha16(store_tokens(user)["access_token"])
    fps = {name: parse_kv(text.splitlines()[0])["fp"]
           for name, text in outputs(job_dir, "out.*").items()}
    if fps != {"out.0": token_fp, "out.1": token_fp}:
        log = [l for j in array_task_jobs(cluster, job).values() for l in inst.hook_log_lines(j)]
        raise MissingStagedToken(f"a task got no staged token: {fps}; hook log: {log}")
