"""Drive the throwaway Slurm cluster of tests/slurm/cluster.sh from Python.

`SlurmCluster.start()` runs `cluster.sh start` (munged on a private socket, slurmctld, slurmd
for nodes n1..n4 on localhost) and `stop()` ends exactly those processes. Jobs are submitted
as an unprivileged test user (`submit(..., user="qlamtest")`: sbatch runs with that user's
uid, gid and groups and a small, known environment). `records()` reads what the recording
Prolog/TaskProlog/Epilog (tests/slurm/scripts/record-env.sh) saw.
"""

from __future__ import annotations

import dataclasses
import os
import pwd
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Callable, Mapping, TypeVar

SLURM_DIR = Path(__file__).resolve().parent
REPO_ROOT = SLURM_DIR.parent.parent
CLUSTER_SH = SLURM_DIR / "cluster.sh"
SCRIPTS = SLURM_DIR / "scripts"
DEFAULT_WORK_DIR = REPO_ROOT / "tests" / ".work" / "slurm"

NODES = ("n1", "n2", "n3", "n4")
TEST_USERS = ("qlamtest", "qlamtest2")

# The recording scripts, by slurm.conf key.
RECORD_SCRIPTS = {
    "prolog": SCRIPTS / "record-prolog.sh",
    "task_prolog": SCRIPTS / "record-task-prolog.sh",
    "epilog": SCRIPTS / "record-epilog.sh",
}

# Job states after which a job does nothing more (squeue -t all %T).
FINISHED_STATES = frozenset({
    "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
    "DEADLINE", "OUT_OF_MEMORY",
})

T = TypeVar("T")


class SlurmError(AssertionError):
    """A Slurm command or the cluster failed; the message says which and why."""


def wait_for(what: str, check: Callable[[], T | None], timeout: float, interval: float = 0.2) -> T:
    """Call `check` until it returns something truthy; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise SlurmError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


@dataclasses.dataclass(frozen=True)
class TestUser:
    """An unprivileged account jobs run as (created by cluster.sh)."""

    __test__ = False  # not a pytest test class

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    home: Path

    @classmethod
    def lookup(cls, name: str) -> "TestUser":
        pw = pwd.getpwnam(name)
        groups = tuple(sorted({pw.pw_gid, *os.getgrouplist(name, pw.pw_gid)}))
        return cls(name, pw.pw_uid, pw.pw_gid, groups, Path(pw.pw_dir))


@dataclasses.dataclass(frozen=True)
class Record:
    """What one run of a recording script saw."""

    context: str  # prolog, task-prolog or epilog
    job_id: str
    node: str
    env: dict[str, str]  # the environment exactly as Slurm exec'd the script
    ids: dict[str, str]  # uid, gid, groups, cwd, argc, argv
    job: str | None  # `scontrol show job -o` from the Prolog, if asked for

    def job_field(self, name: str) -> str:
        """A field of the recorded `scontrol show job -o` line, e.g. "TimeLimit"."""
        if self.job is None:
            raise SlurmError(f"no `scontrol show job` was recorded for job {self.job_id}")
        match = re.search(rf"(?:^|\s){re.escape(name)}=(\S*)", self.job)
        if not match:
            raise SlurmError(f"{name} missing from `scontrol show job`: {self.job!r}")
        return match.group(1)


class SlurmCluster:
    """One running cluster (cluster.sh) and the commands to use it."""

    def __init__(self, work_dir: Path, env: dict[str, str]) -> None:
        self.work_dir = work_dir
        self.conf = Path(env["SLURM_CONF"])
        # The environment for Slurm client commands run by root from the tests.
        self.env = {**os.environ, **env}
        self.record_dir = work_dir / "record"
        self.jobs_dir = work_dir / "jobs"
        self.log_dir = work_dir / "log"
        # What reconfigure() last applied: cluster.sh's variables and the hook environment.
        self._applied: tuple = (_scripts_env(None, None, None), ())

    # ------------------------------------------------------------------------------------
    # Lifecycle

    @classmethod
    def start(cls, work_dir: Path | None = None, timeout: float = 120) -> "SlurmCluster":
        """Start a cluster with no Prolog, TaskProlog or Epilog (see reconfigure)."""
        work_dir = Path(work_dir or os.environ.get("QLAM_SLURM_DIR") or DEFAULT_WORK_DIR)
        proc = subprocess.run(
            ["bash", str(CLUSTER_SH), "start"],
            env={**os.environ, "QLAM_SLURM_DIR": str(work_dir),
                 **_scripts_env(None, None, None), "QLAM_TEST_HOOK_ENV": ""},
            capture_output=True, text=True, timeout=timeout,
        )
        if proc.returncode != 0:
            raise SlurmError(f"cluster.sh start failed ({proc.returncode}):\n{proc.stderr}")
        exported = dict(re.findall(r"^export ([A-Z_]+)=(.*)$", proc.stdout, re.M))
        if "SLURM_CONF" not in exported:
            raise SlurmError(f"cluster.sh start printed no SLURM_CONF:\n{proc.stdout}")
        return cls(work_dir, exported)

    def stop(self) -> None:
        subprocess.run(["bash", str(CLUSTER_SH), "stop"],
                       env={**os.environ, "QLAM_SLURM_DIR": str(self.work_dir)},
                       capture_output=True, text=True, timeout=120)

    def reconfigure(self, *, prolog: Path | None = None, task_prolog: Path | None = None,
                    epilog: Path | None = None, hook_env: Mapping[str, str] | None = None) -> None:
        """Set Prolog, TaskProlog and Epilog (None: none) and apply them to every daemon.

        `hook_env`: variables the scripts get on top of what Slurm passes (they run through
        wrappers that export them; slurmd's own environment never reaches a Prolog). Does
        nothing when all this is already so. Jobs submitted afterwards use the new scripts.
        """
        hook_items = tuple(sorted((hook_env or {}).items()))
        if any("\n" in k or "\n" in v for k, v in hook_items):
            raise ValueError("hook_env names and values must be single lines")
        scripts = _scripts_env(prolog, task_prolog, epilog)
        if (scripts, hook_items) == self._applied:
            return
        env_file = ""
        if hook_items:
            path = self.work_dir / "etc" / "hook.env"
            path.write_text("".join(f"{k}={v}\n" for k, v in hook_items))
            env_file = str(path)
        proc = subprocess.run(
            ["bash", str(CLUSTER_SH), "reconfigure"],
            env={**os.environ, "QLAM_SLURM_DIR": str(self.work_dir), **scripts,
                 "QLAM_TEST_HOOK_ENV": env_file},
            capture_output=True, text=True, timeout=120,
        )
        if proc.returncode != 0:
            raise SlurmError(f"cluster.sh reconfigure failed ({proc.returncode}):\n{proc.stderr}")
        self._applied = (scripts, hook_items)

    def use_record_scripts(self) -> None:
        """Prolog, TaskProlog and Epilog: the recording scripts (record-env.sh)."""
        self.reconfigure(**RECORD_SCRIPTS)

    # ------------------------------------------------------------------------------------
    # Commands

    def run(self, *args: str, check: bool = True, timeout: float = 60,
            env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run a Slurm client command as root against this cluster."""
        proc = subprocess.run(list(args), env={**self.env, **(env or {})},
                              capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise SlurmError(f"{' '.join(args)} exited {proc.returncode}: {proc.stderr.strip()}")
        return proc

    def user(self, user: TestUser | str = TEST_USERS[0]) -> TestUser:
        """A test user, by name (or passed through)."""
        return user if isinstance(user, TestUser) else TestUser.lookup(user)

    def user_env(self, user: TestUser, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        """A small, known environment for commands run as `user`.

        sbatch copies its environment into the job (--export=ALL is the default), so this is
        also what the job and its TaskProlog start from.
        """
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin",
            "HOME": str(user.home),
            "USER": user.name,
            "LOGNAME": user.name,
            "SHELL": "/bin/sh",
            "LANG": "C.UTF-8",
            "SLURM_CONF": str(self.conf),
        }
        env.update(extra or {})
        return env

    def run_as(self, user: TestUser | str, *args: str, check: bool = True, timeout: float = 60,
               cwd: Path | None = None, env: Mapping[str, str] | None = None,
               input: str | None = None) -> subprocess.CompletedProcess:
        """Run a command with the user's uid, gid and supplementary groups."""
        user = self.user(user)
        proc = subprocess.run(
            list(args), user=user.uid, group=user.gid, extra_groups=list(user.groups),
            env=self.user_env(user, env), cwd=str(cwd or user.home), input=input,
            capture_output=True, text=True, timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise SlurmError(f"{' '.join(args)} as {user.name} exited {proc.returncode}: "
                             f"{proc.stderr.strip()}")
        return proc

    def job_dir(self, name: str, user: TestUser | str = TEST_USERS[0]) -> Path:
        """A fresh directory under the work dir, owned by `user`, for a job's files."""
        user = self.user(user)
        path = self.jobs_dir / name
        if path.exists():
            shutil.rmtree(path)
        path.mkdir(parents=True)
        os.chown(path, user.uid, user.gid)
        return path

    def submit(self, script: str, *sbatch_args: str, user: TestUser | str = TEST_USERS[0],
               cwd: Path | None = None, env: Mapping[str, str] | None = None) -> str:
        """Submit a batch script (its text) as `user`; returns the job id.

        The job's working directory is `cwd` (default: a fresh job_dir); relative
        -o/-e paths land there.
        """
        user = self.user(user)
        if cwd is None:
            cwd = self.job_dir(f"job-{time.monotonic_ns()}", user)
        proc = self.run_as(user, "sbatch", "--parsable", *sbatch_args,
                           cwd=cwd, env=env, input=script)
        job_id = proc.stdout.strip().split(";")[0]
        if not job_id.isdigit():
            raise SlurmError(f"sbatch printed no job id: {proc.stdout!r}")
        return job_id

    # ------------------------------------------------------------------------------------
    # Queries

    def job_states(self, job_id: str) -> dict[str, str]:
        """{job or array task id: state} for everything slurmctld still knows of `job_id`."""
        proc = self.run("squeue", "-h", "-t", "all", "-j", job_id, "-o", "%i %T", check=False)
        states = {}
        for line in proc.stdout.splitlines():
            task, _, state = line.partition(" ")
            states[task] = state.strip()
        return states

    def wait_job(self, job_id: str, timeout: float = 60) -> dict[str, str]:
        """Wait until every task of the job has finished; returns its states."""
        def finished() -> dict[str, str] | None:
            states = self.job_states(job_id)
            if states and all(s in FINISHED_STATES for s in states.values()):
                return states
            return None
        try:
            return wait_for(f"job {job_id} to finish", finished, timeout, interval=0.5)
        except SlurmError as err:
            counts: dict[str, int] = {}
            for state in self.job_states(job_id).values():
                counts[state] = counts.get(state, 0) + 1
            raise SlurmError(f"{err}; states now: {counts}") from None

    def show_job(self, job_id: str) -> dict[str, str]:
        """`scontrol show job -o` as a dict (first record; values without spaces)."""
        out = self.run("scontrol", "show", "job", "-o", job_id).stdout.splitlines()[0]
        return dict(re.findall(r"(\S+?)=(\S*)", out))

    def node_states(self) -> dict[str, str]:
        """{node: short state}, e.g. {"n1": "idle", "n3": "drain"}."""
        out = self.run("sinfo", "-h", "-N", "-o", "%N %t").stdout
        return dict(line.split() for line in out.splitlines() if line.strip())

    def drain_reasons(self) -> dict[str, str]:
        """{node: reason} from `sinfo -R` for nodes that are down or drained."""
        out = self.run("sinfo", "-h", "-R", "-N", "-o", "%N|%E").stdout
        return dict(line.split("|", 1) for line in out.splitlines() if "|" in line)

    def resume(self, node: str) -> None:
        self.run("scontrol", "update", f"nodename={node}", "state=resume")
        wait_for(f"{node} to be idle", lambda: self.node_states().get(node) == "idle", 30)

    def wait_idle(self, timeout: float = 30) -> None:
        wait_for("all nodes idle",
                 lambda: all(s == "idle" for s in self.node_states().values()), timeout)

    # ------------------------------------------------------------------------------------
    # Records of the recording scripts

    def clear_records(self) -> None:
        for path in self.record_dir.iterdir():
            if path.is_file():
                path.unlink()

    def records(self, job_id: str | None = None, context: str | None = None) -> list[Record]:
        """Records of finished script runs, optionally for one job id and/or context."""
        out = []
        for env_file in sorted(self.record_dir.glob("*.env")):
            ctx, jid, node, _pid = env_file.name[:-len(".env")].split(".", 3)
            if (job_id is not None and jid != job_id) or (context is not None and ctx != context):
                continue
            base = env_file.with_suffix("")
            env = dict(item.split("=", 1) for item in
                       env_file.read_bytes().decode().split("\0") if "=" in item)
            id_file = base.with_name(base.name + ".id")
            ids = dict(line.split("=", 1) for line in id_file.read_text().splitlines()
                       if "=" in line) if id_file.exists() else {}
            job_file = base.with_name(base.name + ".job")
            job = job_file.read_text().strip() if job_file.exists() else None
            out.append(Record(ctx, jid, node, env, ids, job))
        return out

    def set_record_flag(self, name: str, on: bool = True) -> None:
        """Flags read by record-env.sh: "show-job", "fail-prolog.<node>"."""
        path = self.record_dir / name
        if on:
            path.touch()
        else:
            path.unlink(missing_ok=True)


def _scripts_env(prolog: Path | None, task_prolog: Path | None,
                 epilog: Path | None) -> dict[str, str]:
    return {
        "QLAM_TEST_PROLOG": str(prolog or ""),
        "QLAM_TEST_TASK_PROLOG": str(task_prolog or ""),
        "QLAM_TEST_EPILOG": str(epilog or ""),
    }


def missing_requirements() -> list[str]:
    """Why this machine cannot run the cluster (empty: it can)."""
    problems = []
    if os.geteuid() != 0:
        problems.append("the Slurm suites need root (the daemons and the Prolog run as root)")
    for tool in ("munged", "slurmctld", "slurmd", "sbatch"):
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
            problems.append(f"{tool} is not installed (run tests/slurm/setup-slurm.sh)")
    return problems


__all__ = [
    "CLUSTER_SH", "DEFAULT_WORK_DIR", "FINISHED_STATES", "NODES", "RECORD_SCRIPTS", "Record",
    "SlurmCluster", "SlurmError", "TEST_USERS", "TestUser", "missing_requirements", "wait_for",
]
