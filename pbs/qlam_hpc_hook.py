# qlam_hpc_hook.py: the OpenPBS / PBS Pro hook of qlam-hpc (see pbs/README.md).
#
# One site hook for three execution-host events, run by pbs_mom on every host of a job:
#
#   execjob_prologue  stage a QLAM access token for the job's owner:
#                     `qlam-hpc hook pbs-prologue --job ID --user NAME --node NODE
#                      [--walltime HH:MM:SS]` (root; the binary drops to the user itself)
#   execjob_launch    put the staged copy into the job's environment (pbs.event().env):
#                     QSH_CONFIG_DIR and QLAM_ACCESS_TOKEN_FILE, or QLAM_HPC_MESSAGE when
#                     a QLAM user must log in again (`qlam-hpc hook pbs-launch ...`, run as
#                     the job's owner: it only reads the user's own staging directory)
#   execjob_epilogue  stop the renewer and remove the staged copy
#                     (`qlam-hpc hook pbs-epilogue ...`); execjob_end and execjob_abort,
#                     if the site adds them to the hook's events, clean up the same way
#
# Policy: an authentication problem never fails a job unless the site enforces it. The
# binary reads the site's `[hooks] enforce` and exits non-zero only then, so a non-zero
# exit status rejects the event with the binary's message. When the hook cannot get an
# answer from the binary at all (not installed, killed, or out of time) it accepts the
# event and logs why, unless the hook configuration file sets "enforce": true.
#
# The hook's alarm: pbs_mom kills a hook that runs longer than its `alarm` attribute (30 s
# by default) and rejects the event. The binary is therefore given a deadline strictly
# below the alarm (the alarm minus a margin of 25 %, at least 2 s, at most 10 s, counted
# from the start of the hook); when it passes, the hook kills the binary (root's process)
# and accepts the event. The step the binary runs as the job's user is left to finish on
# its own deadlines: killing it in the middle of a token refresh would lose the refresh
# token the IdP has just rotated, and with it the user's login. Tell the hook the alarm
# you set with qmgr through its configuration file ("alarm"), e.g.
# qmgr -c "set hook qlam_hpc alarm = 60" and {"alarm": 60}.
#
# Configuration (optional): a JSON object imported with
#   qmgr -c "import hook qlam_hpc application/x-config default qlam_hpc.json"
# Keys: "qlam_hpc" (path of the binary), "alarm" (seconds, as set with qmgr; default 30),
# "site_config" (passed as QLAM_HPC_SITE_CONFIG; default /etc/qlam-hpc/config.toml as the
# binary reads it), "env" (extra variables for the binary, e.g. SSL_CERT_FILE or
# HTTPS_PROXY), "enforce" (reject when the binary cannot be run or runs out of time;
# default false). The staging directory is the site config's `[hooks] stage_dir`.
#
# Token values never pass through this hook: the binary prints paths, not tokens.
#
# Requires the Python 3 of OpenPBS >= 20 / PBS Professional >= 2020.1 (3.6 or later).

import json
import os
import pwd
import signal
import subprocess
import tempfile
import time

import pbs

HOOK_START = time.monotonic()

# PBS's default hook alarm (pbs_hook_attributes(7B)).
DEFAULT_ALARM = 30.0
# The binary's deadline: the alarm minus a margin of this share of it, within these bounds.
MARGIN_SHARE = 0.25
MIN_MARGIN = 2.0
MAX_MARGIN = 10.0
# Below this many seconds left the binary is not started at all.
MIN_RUN = 0.5

DEFAULT_BINARIES = (
    "/usr/local/bin/qlam-hpc",
    "/usr/bin/qlam-hpc",
    "/opt/qlam-hpc/bin/qlam-hpc",
)
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# Variables of pbs_mom's environment the binary may need (TLS trust, proxies, site config).
PASSED_ENV = (
    "QLAM_HPC_SITE_CONFIG",
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "HTTPS_PROXY",
    "https_proxy",
    "NO_PROXY",
    "no_proxy",
)
# The only variables execjob_launch copies into the job's environment.
LAUNCH_KEYS = ("QSH_CONFIG_DIR", "QLAM_ACCESS_TOKEN_FILE", "QLAM_HPC_MESSAGE")
# Characters the binary accepts in path components made from job ids and node names.
SAFE_NAME_CHARS = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-[]")
# How much of the binary's output is read (it prints a few short lines).
MAX_OUTPUT = 64 * 1024


def _const(name):
    """A pbs module constant, or None where this PBS version lacks it."""
    return getattr(pbs, name, None)


def log(level_name, text):
    level = getattr(pbs, level_name, None)
    if level is None:
        level = getattr(pbs, "LOG_DEBUG")
    pbs.logmsg(level, "qlam_hpc: %s" % text)


def log_job(job_id, level_name, text):
    """A line for the MoM log that tracejob also shows, where pbs.logjobmsg exists."""
    logjobmsg = getattr(pbs, "logjobmsg", None)
    if job_id and callable(logjobmsg) and level_name == "LOG_DEBUG":
        try:
            logjobmsg(job_id, "qlam_hpc: %s" % text)
            return
        except Exception:
            pass
    log(level_name, "job %s: %s" % (job_id or "?", text))


# --------------------------------------------------------------------------------------
# Configuration


class Config(object):
    def __init__(self):
        self.binary = None
        self.alarm = DEFAULT_ALARM
        self.site_config = None
        self.env = {}
        self.enforce = False
        self.problems = []


def config_path():
    getter = getattr(pbs, "get_hook_config_file", None)
    if callable(getter):
        try:
            path = getter()
            if path:
                return path
        except Exception:
            pass
    path = getattr(pbs, "hook_config_filename", None)
    if path:
        return path
    return os.environ.get("PBS_HOOK_CONFIG_FILE") or None


def load_config():
    cfg = Config()
    path = config_path()
    if not path:
        return cfg
    try:
        with open(path) as fh:
            doc = json.load(fh)
    except (OSError, IOError, ValueError) as exc:
        cfg.problems.append("cannot read the hook configuration %s: %s" % (path, exc))
        return cfg
    if not isinstance(doc, dict):
        cfg.problems.append("the hook configuration %s is not a JSON object" % path)
        return cfg
    for key in sorted(doc):
        value = doc[key]
        if key == "qlam_hpc" and isinstance(value, str) and value:
            cfg.binary = value
        elif key == "alarm" and isinstance(value, (int, float)) and not isinstance(
                value, bool) and value > 0:
            cfg.alarm = float(value)
        elif key == "site_config" and isinstance(value, str) and value:
            cfg.site_config = value
        elif key == "env" and isinstance(value, dict) and all(
                isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            cfg.env = dict(value)
        elif key == "enforce" and isinstance(value, bool):
            cfg.enforce = value
        elif key.startswith("_") or key == "comment":
            pass
        else:
            cfg.problems.append("ignoring the hook configuration's %s=%r" % (key, value))
    return cfg


def find_binary(cfg):
    if cfg.binary:
        return cfg.binary if os.access(cfg.binary, os.X_OK) else None
    for path in DEFAULT_BINARIES:
        if os.access(path, os.X_OK):
            return path
    return None


def margin(cfg):
    """How long before the alarm the binary must have finished."""
    m = min(MAX_MARGIN, max(MIN_MARGIN, cfg.alarm * MARGIN_SHARE))
    if m >= cfg.alarm:
        m = cfg.alarm / 2.0
    return m


def deadline(cfg):
    """The monotonic time by which the binary must have finished."""
    return HOOK_START + cfg.alarm - margin(cfg)


def binary_env(cfg):
    env = {"PATH": DEFAULT_PATH, "NO_COLOR": "1"}
    for name in PASSED_ENV:
        if os.environ.get(name):
            env[name] = os.environ[name]
    if cfg.site_config:
        env["QLAM_HPC_SITE_CONFIG"] = cfg.site_config
    env.update(cfg.env)
    return env


# --------------------------------------------------------------------------------------
# Running the binary


class Outcome(object):
    """What one run of the binary gave: `status` is "exit" (with `code`), "timeout",
    "signal", "missing" or "error"."""

    def __init__(self, status, code=None, stdout="", stderr="", detail=""):
        self.status = status
        self.code = code
        self.stdout = stdout
        self.stderr = stderr
        self.detail = detail

    def last_line(self):
        lines = [l.strip() for l in self.stderr.splitlines() if l.strip()]
        return lines[-1] if lines else ""

    def describe(self):
        if self.status == "exit":
            line = self.last_line()
            return "exit %d%s" % (self.code, (": " + line) if line else "")
        return self.detail or self.status


def _read(fh):
    fh.seek(0)
    return fh.read(MAX_OUTPUT).decode("utf-8", "replace")


def user_identity(name):
    """(uid, gid, groups, home) of a user, or None."""
    try:
        pw = pwd.getpwnam(name)
    except (KeyError, TypeError):
        return None
    try:
        groups = os.getgrouplist(name, pw.pw_gid)
    except OSError:
        groups = [pw.pw_gid]
    return pw.pw_uid, pw.pw_gid, groups, pw.pw_dir


def _drop_to(uid, gid, groups):
    def drop():
        os.setgroups(groups)
        os.setgid(gid)
        os.setuid(uid)
    return drop


def run_binary(cfg, args, as_user=None):
    """Run `qlam-hpc ARGS` before the deadline. With `as_user`, the binary runs as that
    user (groups, gid, uid set before exec) instead of root."""
    binary = find_binary(cfg)
    if binary is None:
        where = cfg.binary or " or ".join(DEFAULT_BINARIES)
        return Outcome("missing", detail="qlam-hpc not found or not executable at %s" % where)
    env = binary_env(cfg)
    preexec = None
    if as_user is not None and os.geteuid() == 0:
        ident = user_identity(as_user)
        if ident is None:
            return Outcome("error", detail="user %r has no password entry on this host"
                                           % (as_user,))
        uid, gid, groups, home = ident
        preexec = _drop_to(uid, gid, groups)
        env.update(HOME=home, USER=as_user, LOGNAME=as_user)
    left = deadline(cfg) - time.monotonic()
    if left < MIN_RUN:
        return Outcome("timeout", detail="no time left before the hook alarm (%gs)" % cfg.alarm)
    # Output goes to files, not pipes: a process that outlives the binary (the user-side
    # step after a deadline, the renewer) must never keep the hook waiting.
    out = tempfile.TemporaryFile()
    err = tempfile.TemporaryFile()
    try:
        try:
            # A session of its own: if pbs_mom kills this hook anyway, the binary's work
            # (a refresh in flight) is not killed with it.
            proc = subprocess.Popen([binary] + args, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=err, env=env, cwd="/", close_fds=True,
                                    start_new_session=True, preexec_fn=preexec)
        except (OSError, ValueError) as exc:
            return Outcome("error", detail="cannot run %s: %s" % (binary, exc))
        try:
            code = proc.wait(timeout=left)
        except subprocess.TimeoutExpired:
            # Only the binary itself (root's process) is killed. Its user-side child may be
            # in the middle of a refresh: it finishes on the binary's own deadlines
            # (refresh_deadline, lock_timeout) and updates the user's store.
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except OSError:
                pass
            try:
                proc.wait(timeout=max(0.1, min(1.0, margin(cfg) / 2.0)))
            except subprocess.TimeoutExpired:
                pass
            return Outcome("timeout", stdout=_read(out), stderr=_read(err),
                           detail="qlam-hpc did not finish within %.1fs (hook alarm %gs); "
                                  "stopped it, its user-side step may still finish"
                                  % (left, cfg.alarm))
        if code < 0:
            return Outcome("signal", stdout=_read(out), stderr=_read(err),
                           detail="qlam-hpc was killed by signal %d" % -code)
        return Outcome("exit", code=code, stdout=_read(out), stderr=_read(err))
    finally:
        out.close()
        err.close()


# --------------------------------------------------------------------------------------
# The job


def job_id(job):
    return str(getattr(job, "id", "") or "")


def job_user(job):
    user = getattr(job, "euser", None)
    if user:
        return str(user)
    owner = getattr(job, "Job_Owner", None)
    if owner:
        return str(owner).split("@", 1)[0]
    return ""


def node_name():
    """This MoM's natural vnode name up to the first dot (usually `hostname -s`)."""
    try:
        name = str(pbs.get_local_nodename() or "")
    except Exception:
        return None
    name = name.split(".", 1)[0]
    if name and all(c in SAFE_NAME_CHARS for c in name):
        return name
    return None


def walltime_seconds(job):
    try:
        value = job.Resource_List["walltime"]
    except Exception:
        return None
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        pass
    try:
        total = 0
        for part in str(value).split(":"):
            total = total * 60 + int(float(part))
        return total
    except ValueError:
        return None


def hms(seconds):
    return "%d:%02d:%02d" % (seconds // 3600, seconds % 3600 // 60, seconds % 60)


def job_args(hook, job, node, walltime=False):
    args = ["hook", hook, "--job=%s" % job_id(job), "--user=%s" % job_user(job)]
    if node:
        args.append("--node=%s" % node)
    if walltime:
        seconds = walltime_seconds(job)
        if seconds and seconds > 0:
            args.append("--walltime=%s" % hms(seconds))
    return args


# --------------------------------------------------------------------------------------
# The events


class Decision(object):
    def __init__(self, accept=True, message=""):
        self.accept = accept
        self.message = message


def verdict(cfg, jid, what, outcome, may_reject=True):
    """Accept or reject after a run of the binary, and log it."""
    if outcome.status == "exit" and outcome.code == 0:
        line = outcome.last_line()
        if line:
            log_job(jid, "LOG_DEBUG", line)
        return Decision(True)
    if outcome.status == "exit":
        # The binary fails only when the site enforces (`[hooks] enforce = true`).
        msg = "qlam-hpc %s failed: %s" % (what, outcome.describe())
        log_job(jid, "LOG_ERROR", msg)
        if may_reject:
            return Decision(False, msg)
        return Decision(True)
    msg = "qlam-hpc %s did not run: %s" % (what, outcome.describe())
    if may_reject and cfg.enforce:
        log_job(jid, "LOG_ERROR", msg + " (the hook configuration enforces: rejecting)")
        return Decision(False, msg)
    log_job(jid, "LOG_WARNING", msg + " (job accepted)")
    return Decision(True)


def prologue(cfg, event):
    job = event.job
    args = job_args("pbs-prologue", job, node_name(), walltime=True)
    return verdict(cfg, job_id(job), "prologue", run_binary(cfg, args))


def launch(cfg, event):
    job = event.job
    jid = job_id(job)
    # pbs-launch only reads the user's own staging directory: it runs as the job's owner,
    # so that nothing the user can put there makes root read a file for the job.
    outcome = run_binary(cfg, job_args("pbs-launch", job, node_name()),
                         as_user=job_user(job))
    decision = verdict(cfg, jid, "launch", outcome)
    if outcome.status != "exit" or outcome.code != 0:
        return decision
    for line in outcome.stdout.splitlines():
        line = line.rstrip("\r\n")
        if "=" not in line:
            continue
        key, value = line.split("=", 1)
        if key not in LAUNCH_KEYS:
            if key.strip():
                log_job(jid, "LOG_WARNING", "ignoring %s from qlam-hpc pbs-launch" % key)
            continue
        event.env[key] = value
        if key == "QLAM_HPC_MESSAGE":
            log_job(jid, "LOG_DEBUG", value)
    return decision


def epilogue(cfg, event):
    job = event.job
    outcome = run_binary(cfg, job_args("pbs-epilogue", job, node_name()))
    return verdict(cfg, job_id(job), "epilogue", outcome, may_reject=False)


def handler_for(event_type):
    table = (
        ("EXECJOB_PROLOGUE", prologue),
        ("EXECJOB_LAUNCH", launch),
        ("EXECJOB_EPILOGUE", epilogue),
        ("EXECJOB_END", epilogue),
        ("EXECJOB_ABORT", epilogue),
    )
    for name, handler in table:
        value = _const(name)
        if value is not None and event_type == value:
            return handler
    return None


def decide(event):
    cfg = load_config()
    for problem in cfg.problems:
        log("LOG_WARNING", problem)
    handler = handler_for(event.type)
    if handler is None:
        log("LOG_DEBUG", "nothing to do for event type %r" % (event.type,))
        return Decision(True)
    if not job_id(event.job) or not job_user(event.job):
        log("LOG_WARNING", "the event has no job id or job owner; nothing done")
        return Decision(True)
    try:
        return handler(cfg, event)
    except Exception as exc:
        # A bug here must not fail jobs (an unhandled exception would reject the event).
        msg = "internal error: %s: %s" % (type(exc).__name__, exc)
        log("LOG_ERROR", msg)
        if cfg.enforce and handler is not epilogue:
            return Decision(False, "qlam-hpc hook " + msg)
        return Decision(True)


def main():
    event = pbs.event()
    decision = decide(event)
    if decision.accept:
        event.accept()
    else:
        event.reject(decision.message)


# PBS runs a hook script with __name__ set to "builtins" (Python 3) or "__builtin__".
if __name__ in ("builtins", "__builtin__"):
    main()
