"""The hook's own logic against stand-in binaries (shell scripts), independent of qlam-hpc:
what it passes, how it reads pbs-launch's output, its exit-status policy, its deadline
below the alarm, and the stand-in pbs module's own behaviour. Runs as root, no IdP."""

from __future__ import annotations

import importlib
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from pbs_helpers import FAKE_PBS, HOOK, USER_NO_QLAM, ensure_user, new_job_id, run_hook


def fake_binary(tmp_path: Path, body: str) -> str:
    """A stand-in qlam-hpc: records its arguments, environment and ids, then runs `body`."""
    p = tmp_path / "fake-qlam-hpc"
    p.write_text("#!/bin/sh\n"
                 'printf "%%s\\n" "$@" > "%s/args"\n'
                 'env > "%s/env"\n'
                 'printf "%%s %%s %%s\\n" "$(id -u)" "$(id -g)" "$(id -G)" > "%s/ids"\n'
                 % (tmp_path, tmp_path, tmp_path) + body + "\n")
    p.chmod(0o755)
    return str(p)


@pytest.fixture
def public_dir(tmp_path_factory):
    """A directory any user can reach and write (tmp_path sits under a 0700 directory)."""
    import tempfile
    d = Path(tempfile.mkdtemp(prefix="qlam-pbs-contract-", dir="/tmp"))
    d.chmod(0o1777)
    yield d
    import shutil
    shutil.rmtree(d, ignore_errors=True)


def test_launch_runs_as_the_job_owner_prologue_and_epilogue_as_root(public_dir, tmp_path):
    u = ensure_user(USER_NO_QLAM)
    b = fake_binary(public_dir, "exit 0")
    for event, ids in (("EXECJOB_LAUNCH", (u.uid, u.gid)), ("EXECJOB_PROLOGUE", (0, 0)),
                       ("EXECJOB_EPILOGUE", (0, 0))):
        r = run_hook(tmp_path, event, "1.srv", u.name, config=cfg_for(b))
        assert r.accepted, (event, r)
        uid, gid, groups = (public_dir / "ids").read_text().split(" ", 2)
        assert (int(uid), int(gid)) == ids, event
        if event == "EXECJOB_LAUNCH":
            assert sorted(int(g) for g in groups.split()) == sorted(set(u.groups()))
            env = dict(l.split("=", 1) for l in (public_dir / "env").read_text().splitlines()
                       if "=" in l)
            assert env["HOME"] == str(u.home) and env["USER"] == u.name


def test_launch_for_an_unknown_user_is_accepted(tmp_path):
    b = fake_binary(tmp_path, "exit 0")
    r = run_hook(tmp_path, "EXECJOB_LAUNCH", "1.srv", "no-such-user-qlam", config=cfg_for(b))
    assert r.accepted and "no password entry" in r.log_text(), r
    assert not (tmp_path / "args").exists()


def cfg_for(binary: str, **extra):
    cfg = {"qlam_hpc": binary, "alarm": 30}
    cfg.update(extra)
    return cfg


def test_arguments_and_environment_passed_to_the_binary(tmp_path):
    b = fake_binary(tmp_path, "exit 0")
    job = new_job_id()
    r = run_hook(tmp_path, "EXECJOB_PROLOGUE", job, "alice", walltime="26:03:04",
                 nodename="node7.cluster.example",
                 config=cfg_for(b, site_config="/etc/site.toml", env={"SSL_CERT_FILE": "/ca.pem"}),
                 mom_env={"HTTPS_PROXY": "http://proxy:3128", "SECRET_OF_MOM": "x"})
    assert r.accepted, r
    args = (tmp_path / "args").read_text().splitlines()
    assert args == ["hook", "pbs-prologue", "--job=" + job, "--user=alice", "--node=node7",
                    "--walltime=26:03:04"]
    env = dict(l.split("=", 1) for l in (tmp_path / "env").read_text().splitlines() if "=" in l)
    assert env["QLAM_HPC_SITE_CONFIG"] == "/etc/site.toml"
    assert env["SSL_CERT_FILE"] == "/ca.pem"
    assert env["HTTPS_PROXY"] == "http://proxy:3128"
    assert "SECRET_OF_MOM" not in env and "PBS_HOOK_CONFIG_FILE" not in env
    assert "/usr/bin" in env["PATH"]


@pytest.mark.parametrize("event,hook", [("EXECJOB_LAUNCH", "pbs-launch"),
                                        ("EXECJOB_EPILOGUE", "pbs-epilogue"),
                                        ("EXECJOB_END", "pbs-epilogue")])
def test_other_events_pass_no_walltime(public_dir, tmp_path, event, hook):
    u = ensure_user(USER_NO_QLAM)
    b = fake_binary(public_dir, "exit 0")
    r = run_hook(tmp_path, event, "1.srv", u.name, walltime="01:00:00", nodename="n1",
                 config=cfg_for(b))
    assert r.accepted, r
    assert (public_dir / "args").read_text().splitlines() == [
        "hook", hook, "--job=1.srv", "--user=" + u.name, "--node=n1"]


def test_unusual_node_name_is_left_to_the_binary(tmp_path):
    b = fake_binary(tmp_path, "exit 0")
    r = run_hook(tmp_path, "EXECJOB_PROLOGUE", "1.srv", "bob", nodename="bad/name",
                 config=cfg_for(b))
    assert r.accepted, r
    assert not any(a.startswith("--node") for a in (tmp_path / "args").read_text().splitlines())


def test_launch_copies_only_its_variables_verbatim(public_dir, tmp_path):
    u = ensure_user(USER_NO_QLAM)
    b = fake_binary(public_dir, r'''cat <<'EOF'
QSH_CONFIG_DIR=/run/qlam-hpc/1000/1.srv-n1
QLAM_ACCESS_TOKEN_FILE=/run/qlam-hpc/1000/1.srv-n1/access_token
LD_PRELOAD=/tmp/evil.so
PATH=/tmp
not a variable
QLAM_HPC_MESSAGE=a, b; c="d" = e
EOF''')
    r = run_hook(tmp_path, "EXECJOB_LAUNCH", "1.srv", u.name, config=cfg_for(b),
                 env={"PATH": "/usr/bin:/bin", "HOME": "/home/bob"})
    assert r.accepted, r
    assert r.env == {"PATH": "/usr/bin:/bin", "HOME": "/home/bob",
                     "QSH_CONFIG_DIR": "/run/qlam-hpc/1000/1.srv-n1",
                     "QLAM_ACCESS_TOKEN_FILE": "/run/qlam-hpc/1000/1.srv-n1/access_token",
                     "QLAM_HPC_MESSAGE": 'a, b; c="d" = e'}
    assert "ignoring LD_PRELOAD" in r.log_text() and "ignoring PATH" in r.log_text()


@pytest.mark.parametrize("event", ["EXECJOB_PROLOGUE", "EXECJOB_LAUNCH"])
def test_non_zero_exit_rejects_with_the_binary_message(public_dir, tmp_path, event):
    u = ensure_user(USER_NO_QLAM)
    b = fake_binary(public_dir, 'echo "qlam-hpc hook: job 1.srv: login required (enforced)" >&2\n'
                                "exit 1")
    r = run_hook(tmp_path, event, "1.srv", u.name, config=cfg_for(b))
    assert r.outcome == "reject", r
    assert "login required (enforced)" in r.reject_msg and "exit 1" in r.reject_msg
    assert r.env is None or "QSH_CONFIG_DIR" not in r.env


def test_epilogue_never_rejects(tmp_path):
    b = fake_binary(tmp_path, "echo boom >&2; exit 1")
    r = run_hook(tmp_path, "EXECJOB_EPILOGUE", "1.srv", "bob", config=cfg_for(b, enforce=True))
    assert r.accepted and "boom" in r.log_text(), r


def test_binary_killed_by_a_signal_is_not_a_verdict(tmp_path):
    b = fake_binary(tmp_path, "kill -9 $$")
    r = run_hook(tmp_path, "EXECJOB_PROLOGUE", "1.srv", "bob", config=cfg_for(b))
    assert r.accepted and "signal 9" in r.log_text(), r
    r = run_hook(tmp_path, "EXECJOB_PROLOGUE", "1.srv", "bob", config=cfg_for(b, enforce=True))
    assert r.outcome == "reject" and "signal 9" in r.reject_msg, r


@pytest.mark.parametrize("alarm", [3, 5, 8])
def test_deadline_below_the_alarm_stops_the_binary(tmp_path, alarm):
    """A binary that hangs, with a child (standing for its user-side step) holding its
    stdout open: the hook still ends before the alarm; the binary is killed, the child is
    left to finish on its own (killing a refresh in flight would cost the user's login)."""
    marker = tmp_path / "pids"
    b = fake_binary(tmp_path, '(sleep 300; echo late) &\necho $! >> "%s"\necho $$ >> "%s"\n'
                              "sleep 300" % (marker, marker))
    t0 = time.monotonic()
    r = run_hook(tmp_path, "EXECJOB_PROLOGUE", "1.srv", "bob", config=cfg_for(b, alarm=alarm),
                 alarm=alarm)
    try:
        assert r.outcome == "accept", r
        margin = min(10.0, max(2.0, alarm * 0.25))
        assert alarm - margin - 0.5 < r.raw["ended_after"] < alarm - margin / 2 + 0.5, r.raw
        assert time.monotonic() - t0 < alarm + 5
        assert "did not finish" in r.log_text(), r
        child, binary_pid = (int(p) for p in marker.read_text().split())
        assert not alive(binary_pid), "the binary survived its deadline"
        assert alive(child), "the binary's child was killed too"
    finally:
        for pid in marker.read_text().split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except OSError:
                pass


def alive(pid: int) -> bool:
    try:
        state = Path("/proc/%d/stat" % pid).read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def test_alarm_too_short_to_run_anything(tmp_path):
    b = fake_binary(tmp_path, "exit 0")
    r = run_hook(tmp_path, "EXECJOB_PROLOGUE", "1.srv", "bob", config=cfg_for(b, alarm=0.6),
                 alarm=5)
    assert r.accepted and "no time left" in r.log_text(), r
    assert not (tmp_path / "args").exists()


def test_no_job_owner_is_a_no_op(tmp_path):
    b = fake_binary(tmp_path, "exit 1")
    r = run_hook(tmp_path, "EXECJOB_PROLOGUE", "1.srv", "", config=cfg_for(b))
    assert r.accepted and "no job id or job owner" in r.log_text(), r


def test_hook_parses_as_python_3_6():
    """pbs_python on EL8 is Python 3.6: the hook must not use newer syntax."""
    import ast
    ast.parse(HOOK.read_text(), filename=str(HOOK), feature_version=(3, 6))


def test_unparsable_config_file(tmp_path):
    cfg = tmp_path / "broken.json"
    cfg.write_text("{not json")
    r = run_hook(tmp_path, "EXECJOB_BEGIN", "1.srv", "bob", config=None,
                 mom_env={"PBS_HOOK_CONFIG_FILE": str(cfg)})
    assert r.accepted and "cannot read the hook configuration" in r.log_text(), r


# ----------------------------------------------------------------------------------------
# The hook's functions, imported with the stand-in pbs module (not run as a hook)


@pytest.fixture
def hook_module(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(FAKE_PBS))
    event = tmp_path / "event.json"
    event.write_text(json.dumps({"type": "EXECJOB_PROLOGUE", "job": {"id": "1.s", "euser": "u"}}))
    monkeypatch.setenv("QLAM_FAKE_PBS_EVENT", str(event))
    for name in ("pbs", "qlam_hpc_hook"):
        sys.modules.pop(name, None)
    monkeypatch.syspath_prepend(str(HOOK.parent))
    mod = importlib.import_module("qlam_hpc_hook")  # __name__ is not "builtins": no main()
    yield mod
    for name in ("pbs", "qlam_hpc_hook"):
        sys.modules.pop(name, None)


@pytest.mark.parametrize("alarm,budget", [(30, 22.5), (60, 50.0), (120, 110.0), (8, 6.0),
                                          (5, 3.0), (2, 1.0), (1, 0.5)])
def test_deadline_is_strictly_below_the_alarm(hook_module, alarm, budget):
    cfg = hook_module.Config()
    cfg.alarm = float(alarm)
    got = hook_module.deadline(cfg) - hook_module.HOOK_START
    assert got == pytest.approx(budget)
    assert got < alarm


def test_default_alarm_is_pbs_default(hook_module):
    assert hook_module.Config().alarm == 30.0


def test_walltime_forms(hook_module):
    pbs = sys.modules["pbs"]

    class J:
        def __init__(self, wt):
            self.Resource_List = pbs.pbs_resource()
            if wt is not None:
                self.Resource_List["walltime"] = wt

    assert hook_module.walltime_seconds(J(pbs.duration("01:02:03"))) == 3723
    assert hook_module.walltime_seconds(J(pbs.duration(90))) == 90
    assert hook_module.walltime_seconds(J("10:00")) == 600
    assert hook_module.walltime_seconds(J(None)) is None
    assert hook_module.hms(3723) == "1:02:03"
    assert hook_module.hms(100 * 3600) == "100:00:00"


def test_fake_pbs_accept_and_reject_end_the_hook(hook_module):
    pbs = sys.modules["pbs"]
    e = pbs.event()
    assert e is pbs.event() and e.type == pbs.EXECJOB_PROLOGUE
    with pytest.raises(SystemExit):
        e.accept()
    with pytest.raises(SystemExit):
        e.reject("no")
    assert pbs.RESULT["accepted"] is False and pbs.RESULT["reject_msg"] == "no"
    with pytest.raises(pbs.EventIncompatibleError):
        e.env  # only execjob_launch has env
    assert str(pbs.duration("1:00:00")) == "01:00:00" and int(pbs.duration("1:00:00")) == 3600
    assert e.job.Resource_List["walltime"] is None
